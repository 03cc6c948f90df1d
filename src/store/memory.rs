//! History in memory: a bounded window of recent messages per room, within a byte budget
//! shared by every room.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use super::{Keep, Kept, OnDurable, Since, Store};
use crate::protocol::{self, ChatEvent};

/// The last `keep.messages` messages of every room, and at most `keep.bytes` bytes of messages
/// in all: past that, the least recently written rooms lose their oldest messages first. The
/// room written last always keeps its newest message, however large. Rooms with no members
/// keep their window, so ids keep increasing and a client can resume; a room whose messages
/// were all dropped still keeps its last id.
///
/// In front of a durable store ([`MemoryStore::until_durable`]) a message is only dropped
/// once the store reports it durable: the window may then hold more than `keep` for as long
/// as the disk is behind, and memory and disk together never miss a message.
pub struct MemoryStore {
    keep: Keep,
    /// New for every store: what it holds does not outlive the process.
    epoch: String,
    /// Separate from the hub's lock so the store can also be used on its own (tests, the
    /// SQLite cache); it is only ever taken for in-memory work.
    rooms: Mutex<Rooms>,
}

#[derive(Default)]
struct Rooms {
    windows: HashMap<String, Window>,
    /// Windows given up whole for the byte budget, since the start: a window made after that
    /// is another history of its room (see [`Window::generation`]).
    generation: u64,
    ages: Ages,
    /// Messages are dropped only once durable (see [`Window::durable`]).
    until_durable: bool,
    /// In front of a store that holds each room's history (SQLite, Redis): a room's window
    /// is given up only when the room is idle, never for the budget, since its absence must
    /// not look like a room with nothing in it while the room is in use.
    in_front: bool,
}

/// What the byte budget needs: how much is held, and which rooms were written longest ago.
#[derive(Default)]
struct Ages {
    /// Bytes of every message held (see [`cost`]).
    bytes: usize,
    /// Messages held.
    messages: usize,
    /// Messages dropped to stay within the byte budget, since the start.
    evicted: u64,
    /// Counts writes; a window remembers the count at its last write.
    clock: u64,
    /// Rooms holding messages, least recently written first, by the clock of their last write.
    by_age: BTreeMap<u64, String>,
}

#[derive(Default)]
struct Window {
    last_id: u64,
    messages: VecDeque<ChatEvent>,
    /// The clock at its last write; 0 while it holds no message.
    written: u64,
    /// Lost messages to the byte budget, while another room was written, since it was last
    /// filled by `merge` or `seed`.
    trimmed: bool,
    /// How many windows had been given up when this one was made: part of the room's epoch,
    /// since a room given up and made again starts its ids over.
    generation: u64,
    /// The latest id stored durably (for a store that drops messages only once durable).
    durable: u64,
}

impl Window {
    /// Whether the oldest message may be dropped: it is durable, or nothing else keeps it.
    fn may_drop_oldest(&self, until_durable: bool) -> bool {
        self.messages
            .front()
            .is_some_and(|m| !until_durable || m.id <= self.durable)
    }
}

/// What a message costs the budget: its text, the event that holds it, and its encoding for
/// history replays (counted whether made yet or not, so the budget holds once it is).
pub(super) fn cost(message: &ChatEvent) -> usize {
    let names = message.room.len() + message.username.len() + message.timestamp.len();
    std::mem::size_of::<ChatEvent>()
        + names
        + message.message.len()
        + message.to.as_ref().map_or(0, String::len)
        + protocol::escaped_len(&message.message)
        + names
        + REPLAY_FIELDS
}

/// Bytes of a replayed chat event besides its names and text: field names, id, quotes.
const REPLAY_FIELDS: usize = 112;

/// What a room's window costs the budget besides its messages: the window and its entry in
/// the map of rooms.
pub(super) fn room_cost(room: &str) -> usize {
    std::mem::size_of::<Window>() + std::mem::size_of::<String>() + 16 + room.len()
}

impl Ages {
    /// Marks `window` as the most recently written (or as holding nothing, if empty).
    fn touch(&mut self, window: &mut Window) {
        if window.written != 0 && window.written == self.clock && !window.messages.is_empty() {
            return; // already the newest: the common case of one busy room
        }
        if window.written != 0 {
            self.by_age.remove(&window.written);
            window.written = 0;
        }
        // Every message of a window carries its room's name.
        if let Some(newest) = window.messages.back() {
            self.clock += 1;
            window.written = self.clock;
            self.by_age.insert(self.clock, newest.room.clone());
        }
    }

    /// Drops `window`'s oldest message; false if it holds none.
    fn drop_oldest(&mut self, window: &mut Window) -> bool {
        let Some(dropped) = window.messages.pop_front() else {
            return false;
        };
        self.bytes -= cost(&dropped);
        self.messages -= 1;
        if window.messages.is_empty() && window.written != 0 {
            self.by_age.remove(&window.written);
            window.written = 0;
        }
        // The budget counts messages, not the room a window keeps for them: a window the
        // budget emptied (or mostly emptied) gives its buffer back, or rooms written once long
        // ago would each hold a full window's worth of memory for good.
        let len = window.messages.len();
        if len == 0 {
            window.messages = VecDeque::new();
        } else if len <= window.messages.capacity() / 4 {
            window.messages.shrink_to(len * 2);
        }
        true
    }
}

impl Rooms {
    /// Keeps `room` within `keep.messages`, then every room within `keep.bytes`, taking from
    /// the least recently written rooms first.
    fn trim(&mut self, room: &str, keep: Keep) {
        if let Some(window) = self.windows.get_mut(room) {
            while window.messages.len() > keep.messages
                && window.may_drop_oldest(self.until_durable)
            {
                self.ages.drop_oldest(window);
            }
        }
        self.trim_bytes(keep.bytes);
    }

    /// Drops the oldest messages of the least recently written rooms while over `budget`, up
    /// to what must stay: a message not yet durable (in the least recently written room still
    /// holding any), and the newest message of the room written last.
    fn trim_bytes(&mut self, budget: usize) {
        while self.ages.bytes > budget {
            let Some((written, oldest)) = self.ages.by_age.pop_first() else {
                break;
            };
            // Every room in `by_age` has a window holding a message.
            let Some(window) = self.windows.get_mut(oldest.as_str()) else {
                continue;
            };
            let written_last = written == self.ages.clock;
            if !window.may_drop_oldest(self.until_durable)
                || (written_last && window.messages.len() <= 1)
            {
                // Stop rather than look further (which would cost a pass over every room on
                // each write while the disk is behind); `durable` trims again once it is not.
                self.ages.by_age.insert(written, oldest);
                break;
            }
            if self.ages.drop_oldest(window) {
                self.ages.evicted += 1;
                // The room just written is trimmed by its own growth: filling it again
                // would not make it fit.
                window.trimmed |= !written_last;
            }
            if !window.messages.is_empty() {
                self.ages.by_age.insert(written, oldest);
            } else if !written_last && !self.in_front {
                // Still over: the room itself goes, so that rooms written once long ago cost
                // nothing (a durable store reads it again; in memory, its history starts over
                // under another epoch).
                self.drop_window(&oldest);
            }
        }
    }

    /// `room`'s window and what the budget needs, the window made (and counted) if it has none.
    fn window(&mut self, room: &str) -> (&mut Window, &mut Ages) {
        let generation = self.generation;
        let window = self.windows.entry(room.to_owned()).or_insert_with(|| {
            self.ages.bytes += room_cost(room);
            Window {
                generation,
                ..Window::default()
            }
        });
        (window, &mut self.ages)
    }

    /// Gives up `room`'s window, and its messages with it.
    fn drop_window(&mut self, room: &str) {
        let Some(window) = self.windows.remove(room) else {
            return;
        };
        let held: usize = window.messages.iter().map(cost).sum();
        self.ages.bytes -= held + room_cost(room);
        self.ages.messages -= window.messages.len();
        if window.written != 0 {
            self.ages.by_age.remove(&window.written);
        }
        self.generation += 1;
    }

    /// Replaces `room`'s messages, keeping the byte count right.
    fn replace(&mut self, room: &str, last_id: u64, messages: VecDeque<ChatEvent>) {
        let (window, ages) = self.window(room);
        let old: usize = window.messages.iter().map(cost).sum();
        let new: usize = messages.iter().map(cost).sum();
        ages.messages = ages.messages - window.messages.len() + messages.len();
        window.last_id = window.last_id.max(last_id);
        window.messages = messages;
        window.trimmed = false;
        ages.bytes = ages.bytes - old + new;
        ages.touch(window);
    }
}

impl MemoryStore {
    pub fn new(keep: Keep) -> MemoryStore {
        MemoryStore {
            keep: Keep {
                messages: keep.messages.max(1),
                bytes: keep.bytes,
            },
            rooms: Mutex::new(Rooms::default()),
            epoch: super::new_epoch(),
        }
    }

    /// A window in front of a durable store: it drops a message only after
    /// [`durable`](Self::durable) reported it stored, so that what the window no longer
    /// holds can always be read from the store.
    pub(super) fn until_durable(keep: Keep) -> MemoryStore {
        let store = MemoryStore::in_front(keep);
        store.lock().until_durable = true;
        store
    }

    /// A window in front of a store that holds each room's history: rooms leave memory only
    /// when idle ([`drop_if_durable`](Self::drop_if_durable)).
    pub(super) fn in_front(keep: Keep) -> MemoryStore {
        let store = MemoryStore::new(keep);
        store.lock().in_front = true;
        store
    }

    /// Records that `room`'s messages up to `id` are stored durably, and drops from memory
    /// what was kept only for want of that.
    pub(super) fn durable(&self, room: &str, id: u64) {
        let mut rooms = self.lock();
        let Some(window) = rooms.windows.get_mut(room) else {
            return;
        };
        window.durable = window.durable.max(id);
        rooms.trim(room, self.keep);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rooms> {
        // Every mutation completes before anything that could panic; a poisoned lock still
        // guards consistent data.
        crate::sync::lock(&self.rooms)
    }

    /// Whether this store holds a window for `room` (a durable store loads it otherwise).
    pub(super) fn knows(&self, room: &str) -> bool {
        self.lock().windows.contains_key(room)
    }

    /// Installs a window loaded from elsewhere, unless one appeared meanwhile.
    pub(super) fn seed(&self, room: &str, last_id: u64, messages: Vec<ChatEvent>) {
        let mut rooms = self.lock();
        if rooms.windows.contains_key(room) {
            return;
        }
        rooms.replace(room, last_id, messages.into());
        if let Some(window) = rooms.windows.get_mut(room) {
            window.durable = last_id; // read from where it is durable
        }
        rooms.trim(room, self.keep);
    }

    /// Whether `room`'s window lost messages to the byte budget since it was last filled by
    /// [`merge`](Self::merge): a durable store then fills it again when the room is used.
    pub(super) fn is_trimmed(&self, room: &str) -> bool {
        self.lock().windows.get(room).is_some_and(|w| w.trimmed)
    }

    /// Adds messages loaded from elsewhere to `room`'s window (creating it), keeping ids
    /// unique and in order and the window bounded; `last_id` only ever grows.
    pub(super) fn merge(&self, room: &str, last_id: u64, messages: Vec<ChatEvent>) {
        let mut rooms = self.lock();
        let newest = messages.iter().map(|m| m.id).max().unwrap_or(0);
        let mut all: BTreeMap<u64, ChatEvent> = messages.into_iter().map(|m| (m.id, m)).collect();
        if let Some(window) = rooms.windows.get(room) {
            all.extend(window.messages.iter().map(|m| (m.id, m.clone())));
        }
        rooms.replace(room, last_id.max(newest), all.into_values().collect());
        rooms.trim(room, self.keep);
    }

    /// How many messages `room`'s window has room for without growing.
    #[cfg(test)]
    pub(super) fn capacity(&self, room: &str) -> usize {
        self.lock()
            .windows
            .get(room)
            .map_or(0, |w| w.messages.capacity())
    }

    /// Takes the message `id` of `room` out of the window (it could not be stored): history
    /// no longer serves it, and a resume over it counts it missed.
    pub(super) fn forget(&self, room: &str, id: u64) {
        let mut rooms = self.lock();
        let rooms = &mut *rooms;
        let Some(window) = rooms.windows.get_mut(room) else {
            return;
        };
        let Ok(at) = window.messages.binary_search_by_key(&id, |m| m.id) else {
            return;
        };
        if let Some(forgotten) = window.messages.remove(at) {
            rooms.ages.bytes -= cost(&forgotten);
            rooms.ages.messages -= 1;
        }
        if window.messages.is_empty() && window.written != 0 {
            rooms.ages.by_age.remove(&window.written);
            window.written = 0;
        }
    }

    /// Gives up `room`'s window if a durable store holds everything in it (it is read again
    /// when the room is used); says whether it did.
    pub(super) fn drop_if_durable(&self, room: &str) -> bool {
        let mut rooms = self.lock();
        let all_durable = rooms.windows.get(room).is_some_and(|w| {
            w.messages.back().is_none_or(|m| m.id <= w.durable) || !rooms.until_durable
        });
        if all_durable {
            rooms.drop_window(room);
        }
        all_durable
    }

    /// The oldest id the window holds for `room`, if any.
    pub(super) fn oldest(&self, room: &str) -> Option<u64> {
        self.lock()
            .windows
            .get(room)
            .and_then(|w| w.messages.front().map(|m| m.id))
    }
}

impl Store for MemoryStore {
    fn epoch(&self, room: &str) -> String {
        let rooms = self.lock();
        let generation = rooms
            .windows
            .get(room)
            .map_or(rooms.generation, |w| w.generation);
        if generation == 0 {
            self.epoch.clone()
        } else {
            format!("{}.{generation}", self.epoch)
        }
    }

    fn last_id(&self, room: &str) -> u64 {
        self.lock().windows.get(room).map_or(0, |w| w.last_id)
    }

    fn append(&self, message: ChatEvent, on_durable: Option<OnDurable>) {
        {
            let mut rooms = self.lock();
            let rooms = &mut *rooms;
            let until_durable = rooms.until_durable;
            let (window, ages) = rooms.window(&message.room);
            ages.bytes += cost(&message);
            ages.messages += 1;
            window.last_id = window.last_id.max(message.id);
            window.messages.push_back(message);
            while window.messages.len() > self.keep.messages
                && window.may_drop_oldest(until_durable)
            {
                ages.drop_oldest(window);
            }
            ages.touch(window);
            rooms.trim_bytes(self.keep.bytes);
        }
        if let Some(done) = on_durable {
            done(Ok(()));
        }
    }

    fn recent(&self, room: &str, limit: usize) -> Vec<ChatEvent> {
        let rooms = self.lock();
        let Some(window) = rooms.windows.get(room) else {
            return Vec::new();
        };
        let skip = window.messages.len().saturating_sub(limit);
        window.messages.iter().skip(skip).cloned().collect()
    }

    fn since(&self, room: &str, id: u64, limit: usize) -> Since {
        let rooms = self.lock();
        let Some(window) = rooms.windows.get(room) else {
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

    fn kept(&self) -> Kept {
        let rooms = self.lock();
        Kept {
            messages: rooms.ages.messages,
            bytes: rooms.ages.bytes,
            evicted: rooms.ages.evicted,
            unstored: 0,
        }
    }
}
