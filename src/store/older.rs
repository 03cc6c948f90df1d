//! Messages older than a room's window, read ahead from a durable store (SQLite, Redis) for
//! the client about to be served, so the hub finds them in memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use super::memory::cost;
use crate::protocol::ChatEvent;

/// Most messages kept across all rooms.
const MAX_MESSAGES: usize = 10_000;

pub(super) struct Older {
    /// Bytes the messages may take, across all rooms.
    max_bytes: usize,
    rooms: Mutex<HashMap<String, BTreeMap<u64, ChatEvent>>>,
}

impl Older {
    pub fn new(max_bytes: usize) -> Older {
        Older {
            max_bytes,
            rooms: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, BTreeMap<u64, ChatEvent>>> {
        // Every mutation completes before anything that could panic: a poisoned lock still
        // guards consistent data.
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `messages` of `room` for the client served next. Other rooms' messages make
    /// room first, then this room's oldest.
    pub fn add(&self, room: &str, messages: Vec<ChatEvent>) {
        if messages.is_empty() {
            return;
        }
        let mut rooms = self.lock();
        rooms
            .entry(room.to_owned())
            .or_default()
            .extend(messages.into_iter().map(|m| (m.id, m)));
        let kept = rooms.values().flat_map(BTreeMap::values);
        let (mut count, mut bytes) = (kept.clone().count(), kept.map(cost).sum::<usize>());
        while count > MAX_MESSAGES || bytes > self.max_bytes {
            let other = rooms.keys().find(|r| *r != room).cloned();
            let last_room = other.is_none();
            let dropped: Vec<ChatEvent> = match other {
                Some(other) => rooms
                    .remove(&other)
                    .into_iter()
                    .flat_map(BTreeMap::into_values)
                    .collect(),
                None => rooms
                    .get_mut(room)
                    .and_then(BTreeMap::pop_first)
                    .map(|(_, m)| m)
                    .into_iter()
                    .collect(),
            };
            if dropped.is_empty() && last_room {
                break;
            }
            count -= dropped.len();
            bytes -= dropped.iter().map(cost).sum::<usize>();
        }
    }

    /// The messages of `room` kept after `id` and before `before`, at most `limit`, whether
    /// or not some are missing.
    pub fn range(&self, room: &str, id: u64, before: u64, limit: usize) -> Vec<ChatEvent> {
        if before <= id + 1 {
            return Vec::new();
        }
        self.lock().get(room).map_or_else(Vec::new, |kept| {
            kept.range(id + 1..before)
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
        older.add("a", some("a", 1..=4));
        // Another room's client comes first: "a" makes room.
        older.add("b", some("b", 1..=3));
        assert_eq!(ids(older.after("a", 0, 5, 10)), None);
        assert_eq!(ids(older.after("b", 0, 4, 10)), Some(vec![1, 2, 3]));
        // Alone over the budget, a room keeps its newest.
        older.add("b", some("b", 4..=8));
        assert_eq!(ids(older.after("b", 3, 9, 10)), Some(vec![4, 5, 6, 7, 8]));
        assert_eq!(ids(older.after("b", 2, 9, 10)), None);
    }
}
