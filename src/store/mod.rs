//! Chat history: where a room's messages are kept, behind one trait with three implementations.
//!
//! - [`MemoryStore`] (the default): the last `keep` messages of each room, in memory.
//! - [`SqliteStore`] (`--db FILE`): the same in-memory window in front of a SQLite file that
//!   keeps everything, durable across restarts and crashes.
//! - [`RedisStore`] (`--redis URL`): the same in-memory window, filled from the Redis streams
//!   that several instances share (see `crate::cluster`).
//!
//! The hub calls a store while holding its lock, so its methods answer from memory: durable
//! writes happen on the store's own thread, in batches, and report back through the
//! `on_durable` callback (the hub acknowledges a message only then), and `prepare`, called off
//! the lock before the hub is asked about a room, loads the room's window and reads ahead
//! what the client about to enter needs beyond it (a resume from further back, or history the
//! window no longer holds). Only what was not read ahead (the window trimmed again in
//! between) is read from disk under the lock, with SQLite.
//!
//! Every store keeps its window within a byte budget shared by all rooms (`--keep-bytes`):
//! past it, the rooms written longest ago lose their oldest messages from memory first. The
//! SQLite store's window lets a message go only once it is on disk, so the two together never
//! miss one.

mod memory;
mod older;
mod redis_store;
mod sqlite;

pub use memory::MemoryStore;
pub use redis_store::RedisStore;
pub use sqlite::SqliteStore;

use crate::protocol::ChatEvent;

/// How much history a store keeps in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keep {
    /// Messages per room (at least 1).
    pub messages: usize,
    /// Bytes of messages across all rooms (see `--keep-bytes`); past it, the least recently
    /// written rooms lose their oldest messages first.
    pub bytes: usize,
}

impl Keep {
    /// `messages` per room, with no byte budget.
    pub fn messages(messages: usize) -> Keep {
        Keep {
            messages,
            bytes: usize::MAX,
        }
    }
}

/// What a store holds in memory, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Kept {
    pub messages: usize,
    pub bytes: usize,
    /// Messages dropped from memory to stay within the byte budget, since the start.
    pub evicted: u64,
    /// Messages that could not be stored (and were not acknowledged), since the start.
    pub unstored: u64,
}

/// Called once a message is stored as durably as the store can (`Ok`), or once it is known
/// that it never will be (`Err`, with the cause).
pub type OnDurable = Box<dyn FnOnce(Result<(), String>) + Send>;

/// Messages a resuming client gets: how many it missed that are no longer kept, then the rest.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Since {
    pub missed: u64,
    pub messages: Vec<ChatEvent>,
}

/// A new history identity: 16 random hex digits.
pub fn new_epoch() -> String {
    format!("{:016x}", fastrand::u64(..))
}

pub trait Store: Send + Sync + 'static {
    /// The identity of `room`'s history: ids mean the same messages only within one epoch.
    /// New for every in-memory start (and for a room whose history memory gave up for the
    /// byte budget); kept in the file with `--db`.
    fn epoch(&self, room: &str) -> String;
    /// Nobody is in `room` on this instance any more: a store that can read it again later
    /// lets it go from memory.
    fn idle(&self, _room: &str) {}
    /// Id of the latest message of `room` (0 if none).
    fn last_id(&self, room: &str) -> u64;
    /// Records a message; `on_durable` runs once it is stored (at once for memory).
    fn append(&self, message: ChatEvent, on_durable: Option<OnDurable>);
    /// The latest `limit` messages of `room`, oldest first.
    fn recent(&self, room: &str, limit: usize) -> Vec<ChatEvent>;
    /// The messages after `id`, oldest first, at most `limit`.
    fn since(&self, room: &str, id: u64, limit: usize) -> Since;
    /// What is held in memory across all rooms (for metrics).
    fn kept(&self) -> Kept;
    /// Makes `room` ready to be read at memory speed for the client about to enter it: a
    /// durable store loads the room's window, and reads ahead what the window lacks of the
    /// messages after `since` (at most `limit`), or without `since`, of the latest `limit`.
    /// Called before the hub is asked about the room, off the hub's lock; it may block.
    fn prepare(&self, _room: &str, _since: Option<u64>, _limit: usize) {}
    /// Whether [`prepare`](Self::prepare) does anything (callers skip the blocking thread
    /// otherwise).
    fn reads_ahead(&self) -> bool {
        false
    }
    /// Whether the store can take messages: `Err` with the cause while its writes fail (a
    /// full disk); it recovers by itself once they succeed again.
    fn health(&self) -> Result<(), String> {
        Ok(())
    }
    /// Writes everything pending and stops writing. Called once at shutdown.
    fn close(&self) {}
}

#[cfg(test)]
mod tests;
