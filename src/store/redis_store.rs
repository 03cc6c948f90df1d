//! History shared through Redis (`--redis URL`), answered from memory.
//!
//! Every instance keeps the same bounded window per room as [`MemoryStore`], filled from two
//! places, both written by `crate::cluster` outside the hub's lock:
//! - the tail of the shared log: every message any instance posted, in the log's order, through
//!   [`Hub::deliver`](crate::hub::Hub::deliver) and [`Store::append`];
//! - the room's own Redis stream, read the first time a room is used on this instance
//!   ([`RedisStore::load`]) and, for a client resuming from further back than the window, the
//!   older part it asks for ([`RedisStore::add_older`]).
//!
//! A message reaches this store only after Redis has it (the log assigned its id), so
//! `append` is durable at once, as Redis is configured to be (see docs/scaling.md).

use std::collections::HashSet;
use std::sync::Mutex;

use super::memory::MemoryStore;
use super::older::Older;
use super::{Keep, Kept, OnDurable, Since, Store};
use crate::protocol::ChatEvent;
use crate::sync::lock;

pub struct RedisStore {
    window: MemoryStore,
    /// Rooms whose window was loaded from Redis (others only hold what the tail delivered).
    loaded: Mutex<HashSet<String>>,
    /// Messages older than the window, fetched for resuming clients.
    older: Older,
}

impl RedisStore {
    /// A store keeping the last `window.messages` messages of each room in memory, within
    /// `window.bytes`.
    pub fn new(window: Keep) -> RedisStore {
        RedisStore {
            window: MemoryStore::in_front(window),
            loaded: Mutex::new(HashSet::new()),
            // Read ahead within a quarter of the window's budget, plus the latest read.
            older: Older::new(window.bytes / 4),
        }
    }

    /// Whether `room`'s window was loaded from Redis, and has not lost messages to the byte
    /// budget since (it is then loaded again).
    pub fn is_loaded(&self, room: &str) -> bool {
        lock(&self.loaded).contains(room)
            && self.window.knows(room)
            && !self.window.is_trimmed(room)
    }

    /// Merges what Redis holds for `room` (its latest id and latest messages, read together)
    /// with what the tail already delivered.
    pub fn load(&self, room: &str, last_id: u64, messages: Vec<ChatEvent>) {
        self.window.merge(room, last_id, messages);
        lock(&self.loaded).insert(room.to_owned());
    }

    /// The oldest id in `room`'s window, if it holds any message.
    pub fn oldest(&self, room: &str) -> Option<u64> {
        self.window.oldest(room)
    }

    /// Keeps messages older than the window (read for a resuming client, who is served
    /// next).
    pub fn add_older(&self, room: &str, messages: Vec<ChatEvent>) {
        self.older.add(room, messages);
    }
}

impl Store for RedisStore {
    /// Ids come from Redis and never go back, whichever instance restarts (see
    /// `crate::cluster`): one history for as long as the shared rooms exist.
    fn epoch(&self, _room: &str) -> String {
        "redis".to_owned()
    }

    /// Read again from Redis when someone enters it.
    fn idle(&self, room: &str) {
        if self.window.drop_if_durable(room) {
            lock(&self.loaded).remove(room);
        }
    }

    fn last_id(&self, room: &str) -> u64 {
        self.window.last_id(room)
    }

    fn append(&self, message: ChatEvent, on_durable: Option<OnDurable>) {
        // The same message may arrive twice: loaded with the room, then from the log's tail.
        if message.id > self.window.last_id(&message.room) {
            self.window.append(message, None);
        }
        if let Some(done) = on_durable {
            done(Ok(()));
        }
    }

    fn recent(&self, room: &str, limit: usize) -> Vec<ChatEvent> {
        self.window.recent(room, limit)
    }

    fn since(&self, room: &str, id: u64, limit: usize) -> Since {
        let Some(oldest) = self.window.oldest(room).filter(|&o| o > id + 1) else {
            return self.window.since(room, id, limit);
        };
        let before = self.older.range(room, id, oldest, limit);
        let (Some(first), Some(last)) = (before.first(), before.last()) else {
            return self.window.since(room, id, limit);
        };
        let (first, last) = (first.id, last.id);
        // Older messages must join the window without a hole; otherwise report a gap.
        let complete = before.len() as u64 == last - first + 1;
        if !complete || (last + 1 < oldest && before.len() < limit) {
            return self.window.since(room, id, limit);
        }
        let rest = self
            .window
            .since(room, last, limit - before.len().min(limit));
        let mut messages = before;
        messages.extend(rest.messages);
        Since {
            missed: first.saturating_sub(id + 1),
            messages,
        }
    }

    fn kept(&self) -> Kept {
        self.window.kept()
    }
}
