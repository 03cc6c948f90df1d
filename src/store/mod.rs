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
//! `on_durable` callback (the hub acknowledges a message only then), and a room's window is
//! loaded by `prepare` before the hub is asked about the room. One exception remains: with
//! SQLite, resuming from a position older than the window reads the disk under the lock.

mod memory;
mod redis_store;
mod sqlite;

pub use memory::MemoryStore;
pub use redis_store::RedisStore;
pub use sqlite::SqliteStore;

use crate::protocol::ChatEvent;

/// Called once a message is stored as durably as the store can.
pub type OnDurable = Box<dyn FnOnce() + Send>;

/// Messages a resuming client gets: how many it missed that are no longer kept, then the rest.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Since {
    pub missed: u64,
    pub messages: Vec<ChatEvent>,
}

pub trait Store: Send + Sync + 'static {
    /// Id of the latest message of `room` (0 if none).
    fn last_id(&self, room: &str) -> u64;
    /// Records a message; `on_durable` runs once it is stored (at once for memory).
    fn append(&self, message: ChatEvent, on_durable: Option<OnDurable>);
    /// The latest `limit` messages of `room`, oldest first.
    fn recent(&self, room: &str, limit: usize) -> Vec<ChatEvent>;
    /// The messages after `id`, oldest first, at most `limit`.
    fn since(&self, room: &str, id: u64, limit: usize) -> Since;
    /// Number of messages kept across all rooms (for metrics).
    fn kept(&self) -> usize;
    /// Makes `room` ready to be read at memory speed (a durable store loads its recent
    /// window). Called before the hub is asked about the room, off the hub's lock; it may block.
    fn prepare(&self, _room: &str) {}
    /// Writes everything pending and stops writing. Called once at shutdown.
    fn close(&self) {}
}

#[cfg(test)]
mod tests;
