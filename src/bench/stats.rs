//! Counting receipts: which sequence numbers a receiver has seen from each publisher, and the
//! per-receiver tally that adds up to the run's delivery figures.

use tokio::time::Instant;

/// How a message's arrival relates to what its receiver had already seen from its publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// First receipt, after everything earlier from this publisher.
    InOrder,
    /// First receipt, but a later message from the same publisher came before it.
    OutOfOrder,
    /// Seen before.
    Duplicate,
}

/// The sequence numbers one receiver has seen from one publisher: a bitmap, so memory is one
/// bit per message sent, and duplicates and reordering are exact.
#[derive(Debug, Clone, Default)]
pub struct Track {
    seen: Vec<u64>,
    highest: Option<u64>,
}

impl Track {
    /// Records `seq`. The caller checks it is below the publisher's sent count, which bounds
    /// the bitmap by what was really sent.
    pub fn arrive(&mut self, seq: u64) -> Arrival {
        let word = usize::try_from(seq / 64).unwrap_or(usize::MAX);
        let bit = 1u64 << (seq % 64);
        if word >= self.seen.len() {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & bit != 0 {
            return Arrival::Duplicate;
        }
        self.seen[word] |= bit;
        match self.highest {
            Some(highest) if seq < highest => Arrival::OutOfOrder,
            _ => {
                self.highest = Some(seq);
                Arrival::InOrder
            }
        }
    }
}

/// What one receiver counted. Tallies add up to the run's figures.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// First receipts of messages from publishers of the receiver's room.
    pub unique: u64,
    pub duplicated: u64,
    /// First receipts that came after a later message from the same publisher.
    pub out_of_order: u64,
    /// Tokens that should not have reached this receiver (another room's publisher) or that
    /// name a message never sent.
    pub unexpected: u64,
    /// Frames without a token: notices, welcomes, other clients' text.
    pub other_frames: u64,
    /// Why the connection ended before the run did, if it did.
    pub closed: Option<String>,
    /// When the last first receipt arrived.
    pub last_delivery: Option<Instant>,
}

impl Tally {
    pub fn add(&mut self, other: &Tally) {
        self.unique += other.unique;
        self.duplicated += other.duplicated;
        self.out_of_order += other.out_of_order;
        self.unexpected += other.unexpected;
        self.other_frames += other.other_frames;
        if self.closed.is_none() {
            self.closed.clone_from(&other.closed);
        }
        self.last_delivery = match (self.last_delivery, other.last_delivery) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_are_classified() {
        let mut track = Track::default();
        assert_eq!(track.arrive(0), Arrival::InOrder);
        assert_eq!(track.arrive(1), Arrival::InOrder);
        assert_eq!(track.arrive(1), Arrival::Duplicate);
        // 2 and 3 skipped, then arrive late.
        assert_eq!(track.arrive(200), Arrival::InOrder);
        assert_eq!(track.arrive(3), Arrival::OutOfOrder);
        assert_eq!(track.arrive(2), Arrival::OutOfOrder);
        assert_eq!(track.arrive(3), Arrival::Duplicate);
        assert_eq!(track.arrive(201), Arrival::InOrder);
        assert_eq!(track.arrive(0), Arrival::Duplicate);
    }

    #[test]
    fn tallies_add_up() {
        let now = Instant::now();
        let mut total = Tally::default();
        total.add(&Tally {
            unique: 3,
            duplicated: 1,
            last_delivery: Some(now),
            ..Tally::default()
        });
        total.add(&Tally {
            unique: 2,
            out_of_order: 1,
            closed: Some("gone".into()),
            ..Tally::default()
        });
        assert_eq!(total.unique, 5);
        assert_eq!(total.duplicated, 1);
        assert_eq!(total.out_of_order, 1);
        assert_eq!(total.closed.as_deref(), Some("gone"));
        assert_eq!(total.last_delivery, Some(now));
    }
}
