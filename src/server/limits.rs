//! Per-connection and per-server limits: the message rate, and connection counts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// A token bucket for one connection's messages. Over the rate, the connection is read more
/// slowly (its messages wait in TCP, as IRC servers delay a fast talker); a sender that stays
/// over the rate for longer than `flood_timeout` without a break is disconnected.
#[derive(Debug)]
pub struct RateLimit {
    /// Messages per second; 0 disables the limit.
    rate: f64,
    burst: f64,
    flood_timeout: Duration,
    tokens: f64,
    updated: Instant,
    /// When the current stretch of throttling began.
    throttled_since: Option<Instant>,
}

/// What to do with a message under the rate limit.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Pass,
    /// Handle it, then read nothing more for this long.
    Delay(Duration),
    /// Over the rate for too long: disconnect.
    Disconnect,
}

impl RateLimit {
    pub fn new(rate: f64, burst: u32, flood_timeout: Duration, now: Instant) -> RateLimit {
        let burst = f64::from(burst.max(1));
        RateLimit {
            rate,
            burst,
            flood_timeout,
            tokens: burst,
            updated: now,
            throttled_since: None,
        }
    }

    /// Takes a token for one message.
    pub fn take(&mut self, now: Instant) -> Verdict {
        if self.rate <= 0.0 {
            return Verdict::Pass;
        }
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.updated = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst) - 1.0;
        if self.tokens >= 0.0 {
            self.throttled_since = None;
            return Verdict::Pass;
        }
        let since = *self.throttled_since.get_or_insert(now);
        if now.saturating_duration_since(since) > self.flood_timeout {
            Verdict::Disconnect
        } else {
            Verdict::Delay(Duration::from_secs_f64(-self.tokens / self.rate))
        }
    }
}

/// Counts open connections, in all and per client address.
pub struct Capacity {
    max_total: usize,
    max_per_ip: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// A held connection slot; released on drop.
pub struct Slot {
    capacity: Arc<Capacity>,
    ip: IpAddr,
}

impl Capacity {
    /// `0` means no limit.
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Capacity> {
        Arc::new(Capacity {
            max_total,
            max_per_ip,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// Takes a slot for a connection from `ip`, or says which limit is reached.
    pub fn acquire(self: &Arc<Capacity>, ip: IpAddr) -> Result<Slot, &'static str> {
        // Held only for a few map operations, never across an await.
        let mut open = crate::sync::lock(&self.open);
        if self.max_total > 0 && open.0 >= self.max_total {
            return Err("the server is full (--max-clients)");
        }
        let per_ip = open.1.get(&ip).copied().unwrap_or(0);
        if self.max_per_ip > 0 && per_ip >= self.max_per_ip {
            return Err("too many connections from this address (--max-per-ip)");
        }
        open.0 += 1;
        open.1.insert(ip, per_ip + 1);
        Ok(Slot {
            capacity: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = crate::sync::lock(&self.capacity.open);
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                // No entry outlives its last connection.
                open.1.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_passes_a_burst_then_delays_then_disconnects() {
        let start = Instant::now();
        let flood = Duration::from_secs(2);
        let mut limit = RateLimit::new(10.0, 5, flood, start);
        for _ in 0..5 {
            assert_eq!(limit.take(start), Verdict::Pass);
        }
        assert!(matches!(limit.take(start), Verdict::Delay(d) if d.as_millis() == 100));
        // A sender read at exactly the allowed pace stays throttled...
        let mut now = start;
        for _ in 0..20 {
            now += Duration::from_millis(100);
            assert!(matches!(limit.take(now), Verdict::Delay(_)), "{now:?}");
        }
        // ...and is cut off once that lasts longer than the flood timeout.
        now += Duration::from_millis(100);
        assert_eq!(limit.take(now), Verdict::Disconnect);
        // A sender that pauses gets its burst back and a clean slate.
        now += Duration::from_secs(5);
        assert_eq!(limit.take(now), Verdict::Pass);
        // Time refills the bucket.
        let mut limit = RateLimit::new(10.0, 5, flood, start);
        for i in 0..100 {
            assert_eq!(
                limit.take(start + Duration::from_millis(100 * i)),
                Verdict::Pass
            );
        }
        let mut off = RateLimit::new(0.0, 1, flood, start);
        assert!((0..1000).all(|_| off.take(start) == Verdict::Pass));
    }

    #[test]
    fn capacity_counts_total_and_per_address() {
        let capacity = Capacity::new(3, 2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let a1 = capacity.acquire(a).unwrap();
        let _a2 = capacity.acquire(a).unwrap();
        assert!(capacity.acquire(a).is_err());
        let _b1 = capacity.acquire(b).unwrap();
        assert!(capacity.acquire(b).is_err(), "total reached");
        drop(a1);
        assert!(capacity.acquire(a).is_ok());
        let unlimited = Capacity::new(0, 0);
        let slots: Vec<_> = (0..100).map(|_| unlimited.acquire(a).unwrap()).collect();
        drop(slots);
        assert!(unlimited.open.lock().unwrap().1.is_empty());
    }
}
