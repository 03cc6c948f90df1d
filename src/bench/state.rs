//! What publishers, receivers and the run's driver share: per-publisher counters, the phase
//! signals and the latency histogram.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hdrhistogram::Histogram;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Highest latency the histogram holds, in microseconds (one hour); larger ones saturate.
const MAX_LATENCY_MICROS: u64 = 3_600_000_000;

/// One publisher, as every receiver sees it. Counters are `Relaxed`: each is a plain count,
/// read for progress, the send window and the final figures, never to order other memory.
pub struct PublisherState {
    pub room: usize,
    /// Receivers in `room`: each message should reach this many.
    pub audience: u64,
    /// Messages handed to the socket so far. A token's sequence number is below this.
    pub sent: AtomicU64,
    /// First receipts of this publisher's messages, all receivers together.
    pub delivered: AtomicU64,
    /// Receivers that have heard this publisher's probe: it stops probing at `audience`.
    pub heard: AtomicU64,
}

pub struct Run {
    /// Send times in tokens are nanoseconds since this instant.
    pub epoch: Instant,
    pub publishers: Vec<PublisherState>,
    /// (receiver, publisher of its room) pairs in which the receiver has heard a probe.
    pub ready: AtomicU64,
    /// How many such pairs there are.
    pub ready_target: u64,
    /// Cancelled when the last pair becomes ready.
    pub all_ready: CancellationToken,
    /// Cancelled when the measurement starts: publishers stop probing and send.
    pub go: CancellationToken,
    /// Cancelled when receivers should stop reading and hand in their counts.
    pub stop: CancellationToken,
    /// Cancelled on Ctrl-C / SIGTERM: every phase ends early.
    pub interrupted: CancellationToken,
    /// End-to-end latency of every first receipt, in microseconds. Receivers add to it in
    /// batches, so the lock is taken once per batch, never across an `.await`.
    pub latency: Mutex<Histogram<u64>>,
}

impl Run {
    /// `rooms[i]` is receiver `i`'s room; `publisher_rooms[p]` publisher `p`'s.
    pub fn new(receiver_rooms: &[usize], publisher_rooms: &[usize]) -> anyhow::Result<Run> {
        let audience = |room: usize| receiver_rooms.iter().filter(|&&r| r == room).count() as u64;
        let publishers: Vec<PublisherState> = publisher_rooms
            .iter()
            .map(|&room| PublisherState {
                room,
                audience: audience(room),
                sent: AtomicU64::new(0),
                delivered: AtomicU64::new(0),
                heard: AtomicU64::new(0),
            })
            .collect();
        let ready_target = publishers.iter().map(|p| p.audience).sum();
        Ok(Run {
            epoch: Instant::now(),
            publishers,
            ready: AtomicU64::new(0),
            ready_target,
            all_ready: CancellationToken::new(),
            go: CancellationToken::new(),
            stop: CancellationToken::new(),
            interrupted: CancellationToken::new(),
            latency: Mutex::new(Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, 3)?),
        })
    }

    /// Nanoseconds since the epoch: the send time a token carries.
    pub fn now_nanos(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Records that a receiver heard a probe from publisher `p` of its room, for the first time.
    pub fn mark_ready(&self, p: usize) {
        if let Some(publisher) = self.publishers.get(p) {
            publisher.heard.fetch_add(1, Ordering::Relaxed);
        }
        if self.ready.fetch_add(1, Ordering::Relaxed) + 1 >= self.ready_target {
            self.all_ready.cancel();
        }
    }

    pub fn sent(&self) -> u64 {
        self.publishers
            .iter()
            .map(|p| p.sent.load(Ordering::Relaxed))
            .sum()
    }

    pub fn delivered(&self) -> u64 {
        self.publishers
            .iter()
            .map(|p| p.delivered.load(Ordering::Relaxed))
            .sum()
    }

    /// Deliveries the messages sent so far call for.
    pub fn expected(&self) -> u64 {
        self.publishers
            .iter()
            .map(|p| p.sent.load(Ordering::Relaxed) * p.audience)
            .sum()
    }

    /// Adds a batch of latencies (microseconds) to the histogram.
    pub fn record_latencies(&self, micros: &[u64]) {
        // A panic while recording leaves counts, not broken invariants: use the histogram.
        let mut histogram = crate::sync::lock(&self.latency);
        for &value in micros {
            histogram.saturating_record(value.max(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audiences_and_expectations_follow_rooms() {
        // Receivers 0..5 in rooms 0,1,0,1,0; publishers in rooms 0 and 1.
        let run = Run::new(&[0, 1, 0, 1, 0], &[0, 1]).unwrap();
        assert_eq!(run.publishers[0].audience, 3);
        assert_eq!(run.publishers[1].audience, 2);
        assert_eq!(run.ready_target, 5);
        run.publishers[0].sent.store(10, Ordering::Relaxed);
        run.publishers[1].sent.store(4, Ordering::Relaxed);
        assert_eq!(run.sent(), 14);
        assert_eq!(run.expected(), 38);
        for _ in 0..3 {
            run.mark_ready(0);
        }
        run.mark_ready(1);
        assert_eq!(run.publishers[0].heard.load(Ordering::Relaxed), 3);
        assert!(!run.all_ready.is_cancelled());
        run.mark_ready(1);
        assert!(run.all_ready.is_cancelled());
    }
}
