//! Messages older than a room's window, read ahead from a durable store (SQLite, Redis) for
//! the client about to be served, so the hub finds them in memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use super::memory::cost;
use crate::protocol::ChatEvent;

/// Most messages kept across all rooms (beyond what one read ahead brings).
const MAX_MESSAGES: usize = 100_000;

pub(super) struct Older {
    /// Bytes the messages may take across all rooms (beyond what one read ahead brings).
    max_bytes: usize,
    kept: Mutex<ReadAhead>,
}

#[derive(Default)]
struct ReadAhead {
    rooms: HashMap<String, RoomRead>,
    /// Rooms by the clock of their last read ahead, least recent first.
    by_age: BTreeMap<u64, String>,
    clock: u64,
    count: usize,
    bytes: usize,
}

#[derive(Default)]
struct RoomRead {
    messages: BTreeMap<u64, ChatEvent>,
    /// The clock of its last read ahead.
    added: u64,
}

impl ReadAhead {
    /// Forgets the room read ahead least recently.
    fn drop_oldest_room(&mut self) -> bool {
        let Some((_, name)) = self.by_age.pop_first() else {
            return false;
        };
        if let Some(room) = self.rooms.remove(&name) {
            self.count -= room.messages.len();
            self.bytes -= room.messages.values().map(cost).sum::<usize>();
        }
        true
    }

    /// Drops `room`'s messages outside `keep`, oldest first, while `over` says so.
    fn drop_outside(
        &mut self,
        room: &str,
        keep: std::ops::RangeInclusive<u64>,
        over: impl Fn(&ReadAhead) -> bool,
    ) {
        while over(self) {
            let Some(kept) = self.rooms.get_mut(room) else {
                return;
            };
            let dropped = match kept.messages.first_key_value() {
                Some((&id, _)) if id < *keep.start() => kept.messages.pop_first(),
                _ => match kept.messages.last_key_value() {
                    Some((&id, _)) if id > *keep.end() => kept.messages.pop_last(),
                    _ => return,
                },
            };
            if let Some((_, m)) = dropped {
                self.count -= 1;
                self.bytes -= cost(&m);
            }
        }
    }
}

impl Older {
    pub fn new(max_bytes: usize) -> Older {
        Older {
            max_bytes,
            kept: Mutex::new(ReadAhead::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReadAhead> {
        // Every mutation completes before anything that could panic: a poisoned lock still
        // guards consistent data.
        crate::sync::lock(&self.kept)
    }

    /// Keeps `messages` of `room` (one read, in order) for the client served next. To stay
    /// within bounds, the rooms read ahead least recently are forgotten first, then what this
    /// room kept from earlier reads; this read is kept whole, as the client needs all of it.
    pub fn add(&self, room: &str, messages: Vec<ChatEvent>) {
        let (Some(first), Some(last)) = (messages.first(), messages.last()) else {
            return;
        };
        let read = first.id..=last.id;
        let mut kept = self.lock();
        let kept = &mut *kept;
        kept.clock += 1;
        let clock = kept.clock;
        let entry = kept.rooms.entry(room.to_owned()).or_default();
        if entry.added != 0 {
            kept.by_age.remove(&entry.added);
        }
        entry.added = clock;
        kept.by_age.insert(clock, room.to_owned());
        for m in messages {
            kept.count += 1;
            kept.bytes += cost(&m);
            if let Some(replaced) = entry.messages.insert(m.id, m) {
                kept.count -= 1;
                kept.bytes -= cost(&replaced);
            }
        }
        let over = |k: &ReadAhead| k.count > MAX_MESSAGES || k.bytes > self.max_bytes;
        // This room, read ahead last, is the last of `by_age`.
        while over(kept) && kept.by_age.len() > 1 {
            kept.drop_oldest_room();
        }
        kept.drop_outside(room, read, over);
    }

    /// The messages of `room` kept after `id` and before `before`, at most `limit`, whether
    /// or not some are missing.
    pub fn range(&self, room: &str, id: u64, before: u64, limit: usize) -> Vec<ChatEvent> {
        if before <= id + 1 {
            return Vec::new();
        }
        self.lock().rooms.get(room).map_or_else(Vec::new, |kept| {
            kept.messages
                .range(id + 1..before)
                .map(|(_, m)| m.clone())
                .take(limit)
                .collect()
        })
    }

    /// The messages of `room` after `id` and before `before`, at most `limit`, if they are
    /// all kept: none may be missing between `id` and the last one returned, and unless
    /// `limit` were found, none up to `before`. `None` otherwise.
    pub fn after(&self, room: &str, id: u64, before: u64, limit: usize) -> Option<Vec<ChatEvent>> {
        if before <= id + 1 || limit == 0 {
            return Some(Vec::new());
        }
        let found = self.range(room, id, before, limit);
        let contiguous = found
            .iter()
            .zip(id + 1..)
            .all(|(m, expected)| m.id == expected);
        let last = found.last().map_or(id, |m| m.id);
        (contiguous && (found.len() == limit || last + 1 == before)).then_some(found)
    }

    /// The latest `count` messages of `room` before `before`, if they are all kept (or all
    /// there are, back to the room's first message). `None` otherwise.
    pub fn latest_before(&self, room: &str, before: u64, count: usize) -> Option<Vec<ChatEvent>> {
        let first = before.saturating_sub(count as u64).max(1);
        self.after(room, first - 1, before, count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(room: &str, id: u64) -> ChatEvent {
        ChatEvent {
            id,
            room: room.into(),
            username: "bob".into(),
            message: "m".into(),
            timestamp: "2026-11-22T00:00:00.000Z".into(),
            to: None,
            private: false,
            action: false,
            history: false,
            replayed: Default::default(),
        }
    }

    fn some(room: &str, ids: std::ops::RangeInclusive<u64>) -> Vec<ChatEvent> {
        ids.map(|id| message(room, id)).collect()
    }

    fn ids(messages: Option<Vec<ChatEvent>>) -> Option<Vec<u64>> {
        messages.map(|m| m.iter().map(|m| m.id).collect())
    }

    #[test]
    fn answers_only_what_it_holds_without_holes() {
        let older = Older::new(usize::MAX);
        older.add("a", some("a", 3..=6));
        assert_eq!(ids(older.after("a", 2, 7, 100)), Some(vec![3, 4, 5, 6]));
        assert_eq!(ids(older.after("a", 2, 7, 2)), Some(vec![3, 4]));
        assert_eq!(ids(older.after("a", 1, 7, 100)), None, "2 is missing");
        assert_eq!(
            ids(older.after("a", 2, 9, 100)),
            None,
            "7 and 8 are missing"
        );
        assert_eq!(ids(older.after("a", 6, 7, 100)), Some(vec![]));
        assert_eq!(ids(older.after("b", 0, 5, 100)), None);
        assert_eq!(ids(older.latest_before("a", 7, 2)), Some(vec![5, 6]));
        assert_eq!(
            ids(older.latest_before("a", 5, 10)),
            None,
            "1 and 2 are missing"
        );
        older.add("a", some("a", 1..=2));
        assert_eq!(ids(older.latest_before("a", 5, 10)), Some(vec![1, 2, 3, 4]));
    }

    #[test]
    fn stays_within_its_budget_across_rooms() {
        let older = Older::new(5 * cost(&message("a", 1)));
        older.add("a", some("a", 1..=2));
        older.add("b", some("b", 1..=2));
        older.add("a", some("a", 3..=4));
        // A third room's client comes next: "b", read ahead least recently, makes room first.
        older.add("c", some("c", 1..=1));
        assert_eq!(ids(older.after("b", 0, 3, 10)), None);
        assert_eq!(ids(older.after("a", 0, 5, 10)), Some(vec![1, 2, 3, 4]));
        assert_eq!(ids(older.after("c", 0, 2, 10)), Some(vec![1]));
        // A read larger than the budget is kept whole: its client needs all of it.
        older.add("b", some("b", 10..=17));
        assert_eq!(
            ids(older.after("b", 9, 18, 10)),
            Some((10..=17).collect::<Vec<_>>())
        );
        assert_eq!(ids(older.after("a", 0, 5, 10)), None);
        assert_eq!(ids(older.after("c", 0, 2, 10)), None);
    }

    #[test]
    fn a_room_read_ahead_again_keeps_its_latest_read_first() {
        let older = Older::new(6 * cost(&message("a", 1)));
        older.add("a", some("a", 1..=4));
        // The next client resumes from further on: the earlier read makes room, oldest first.
        older.add("a", some("a", 5..=8));
        assert_eq!(ids(older.after("a", 4, 9, 10)), Some(vec![5, 6, 7, 8]));
        assert_eq!(
            ids(older.after("a", 2, 9, 10)),
            Some(vec![3, 4, 5, 6, 7, 8])
        );
        assert_eq!(ids(older.after("a", 1, 9, 10)), None);
    }
}
