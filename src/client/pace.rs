//! Keeping to the server's pace: the limits it states (`x-wschat-limits`, the welcome's
//! `limits`) as a token bucket, so that `send`, `join` and `replay` are never closed for
//! sending too fast.

use std::time::Duration;

use tokio::time::Instant;

use crate::protocol::Limits;

/// The share of the server's rate a client uses: a little under it, so that jitter on the way
/// never makes the server see a sender over its limit for long.
const PACE_MARGIN: f64 = 0.95;

/// Keeps a sender within the server's limits: the same token bucket as the server's (a full
/// burst at once, then `rate` per second), a little slower.
#[derive(Debug)]
pub struct Pacer {
    rate: f64,
    burst: f64,
    tokens: f64,
    updated: Instant,
}

impl Pacer {
    /// `None` when the server states no limit.
    pub fn new(limits: Option<Limits>, now: Instant) -> Option<Pacer> {
        let limits = limits.filter(|l| l.rate > 0.0)?;
        let burst = f64::from(limits.burst.max(1));
        Some(Pacer {
            rate: limits.rate * PACE_MARGIN,
            burst,
            tokens: burst,
            updated: now,
        })
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.updated = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
    }

    /// When the next message may go: `now` when a token is there.
    pub fn ready_at(&mut self, now: Instant) -> Instant {
        self.refill(now);
        if self.tokens >= 1.0 {
            now
        } else {
            now + Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
        }
    }

    /// Takes the token for one message (call once `ready_at` has come).
    pub fn take(&mut self, now: Instant) {
        self.refill(now);
        self.tokens -= 1.0;
    }

    /// The rate the server allows, messages per second.
    pub fn server_rate(&self) -> f64 {
        self.rate / PACE_MARGIN
    }

    /// How long `messages` more take at this pace, from now.
    pub fn time_for(&self, messages: usize) -> Duration {
        let waiting = (messages as f64 - self.tokens.max(0.0)).max(0.0);
        Duration::from_secs_f64(waiting / self.rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pacer_allows_a_burst_then_a_little_under_the_rate() {
        let start = Instant::now();
        let limits = Limits {
            rate: 10.0,
            burst: 3,
            max_message_bytes: 1024,
        };
        let mut pacer = Pacer::new(Some(limits), start).unwrap();
        for _ in 0..3 {
            assert_eq!(pacer.ready_at(start), start);
            pacer.take(start);
        }
        let next = pacer.ready_at(start);
        let gap = next - start;
        assert!(
            gap > Duration::from_millis(100) && gap < Duration::from_millis(110),
            "{gap:?}"
        );
        pacer.take(next);
        assert!(pacer.time_for(10) > Duration::from_secs(1));
        assert!(Pacer::new(None, start).is_none());
        assert!(Pacer::new(
            Some(Limits {
                rate: 0.0,
                ..limits
            }),
            start
        )
        .is_none());
    }
}
