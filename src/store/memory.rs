//! History in memory: a bounded window of recent messages per room.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use super::{OnDurable, Since, Store};
use crate::protocol::ChatEvent;

/// The last `keep` messages of every room. Rooms with no members keep their window, so ids
/// keep increasing and a client can resume; nothing else of an empty room is kept.
pub struct MemoryStore {
    keep: usize,
    /// Separate from the hub's lock so the store can also be used on its own (tests, the
    /// SQLite cache); it is only ever taken for in-memory work.
    rooms: Mutex<HashMap<String, Window>>,
}

#[derive(Default)]
pub(super) struct Window {
    pub last_id: u64,
    pub messages: VecDeque<ChatEvent>,
}

impl MemoryStore {
    pub fn new(keep: usize) -> MemoryStore {
        MemoryStore {
            keep: keep.max(1),
            rooms: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Window>> {
        // Every mutation completes before anything that could panic; a poisoned lock still
        // guards consistent data.
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this store holds a window for `room` (the SQLite store loads it otherwise).
    pub(super) fn knows(&self, room: &str) -> bool {
        self.lock().contains_key(room)
    }

    /// Installs a window loaded from elsewhere, unless one appeared meanwhile.
    pub(super) fn seed(&self, room: &str, last_id: u64, messages: Vec<ChatEvent>) {
        let mut rooms = self.lock();
        rooms.entry(room.to_owned()).or_insert_with(|| Window {
            last_id,
            messages: messages.into(),
        });
    }

    /// Adds messages loaded from elsewhere to `room`'s window (creating it), keeping ids
    /// unique and in order and the window bounded; `last_id` only ever grows.
    pub(super) fn merge(&self, room: &str, last_id: u64, messages: Vec<ChatEvent>) {
        let mut rooms = self.lock();
        let window = rooms.entry(room.to_owned()).or_default();
        let newest = messages.iter().map(|m| m.id).max().unwrap_or(0);
        window.last_id = window.last_id.max(last_id).max(newest);
        let mut all: std::collections::BTreeMap<u64, ChatEvent> =
            messages.into_iter().map(|m| (m.id, m)).collect();
        all.extend(window.messages.drain(..).map(|m| (m.id, m)));
        window.messages = all.into_values().collect();
        while window.messages.len() > self.keep {
            window.messages.pop_front();
        }
    }

    /// The oldest id the window holds for `room`, if any.
    pub(super) fn oldest(&self, room: &str) -> Option<u64> {
        self.lock()
            .get(room)
            .and_then(|w| w.messages.front().map(|m| m.id))
    }
}

impl Store for MemoryStore {
    fn last_id(&self, room: &str) -> u64 {
        self.lock().get(room).map_or(0, |w| w.last_id)
    }

    fn append(&self, message: ChatEvent, on_durable: Option<OnDurable>) {
        {
            let mut rooms = self.lock();
            let window = rooms.entry(message.room.clone()).or_default();
            window.last_id = window.last_id.max(message.id);
            window.messages.push_back(message);
            while window.messages.len() > self.keep {
                window.messages.pop_front();
            }
        }
        if let Some(done) = on_durable {
            done();
        }
    }

    fn recent(&self, room: &str, limit: usize) -> Vec<ChatEvent> {
        let rooms = self.lock();
        let Some(window) = rooms.get(room) else {
            return Vec::new();
        };
        let skip = window.messages.len().saturating_sub(limit);
        window.messages.iter().skip(skip).cloned().collect()
    }

    fn since(&self, room: &str, id: u64, limit: usize) -> Since {
        let rooms = self.lock();
        let Some(window) = rooms.get(room) else {
            return Since::default();
        };
        let first_kept = window.messages.front().map_or(window.last_id + 1, |m| m.id);
        let missed = first_kept.saturating_sub(id + 1);
        let messages = window
            .messages
            .iter()
            .filter(|m| m.id > id)
            .take(limit)
            .cloned()
            .collect();
        Since { missed, messages }
    }

    fn kept(&self) -> usize {
        self.lock().values().map(|w| w.messages.len()).sum()
    }
}
