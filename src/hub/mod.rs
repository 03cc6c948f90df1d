//! The broadcast core: rooms, members, names, message ids and fan-out. No sockets, no I/O.
//!
//! A member is known to the hub only as a bounded outbox of already-encoded frames. Every event
//! is encoded once and the same bytes are queued for every recipient. An outbox that is full
//! belongs to a slow consumer: the member is evicted (its connection is told to close with
//! [`close::SLOW_CONSUMER`]) rather than allowed to stall the room or grow memory.
//!
//! - this file: the hub's API and state: members, names, joining, leaving, posting;
//! - [`room`]: one room's members, its fan-out, presence and `who`;
//! - [`replay`]: the history a member gets on entering a room;
//! - [`remote`]: what other instances send through the relay's log;
//! - [`relay`]: the trait by which the hub shares its rooms with other instances;
//! - [`directory`]: the trait by which the server asks them about names, presence and history.

pub mod directory;
pub mod relay;
mod remote;
mod replay;
mod room;

pub use room::{names_page, COALESCE_ABOVE};

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

use crate::metrics::Metrics;
use crate::outbox;
use crate::protocol::{
    self, close, AckEvent, ChatEvent, Event, Limits, Notice, RoomInfo, RoomsEvent, SystemEvent,
    WhoEvent,
};
use crate::store::Store;

use relay::{Announcement, Handover, Origin, Relay};
use replay::Replay;
use room::{Member, Room};

/// Identifies one connection for its whole life in the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MemberId(u64);

impl MemberId {
    /// The number behind the id (unique within this process), for a relay to carry around.
    pub fn raw(self) -> u64 {
        self.0
    }

    pub fn from_raw(raw: u64) -> MemberId {
        MemberId(raw)
    }
}

/// How the hub reaches a member: its frame queue, and a one-shot to ask its connection to close.
pub struct Link {
    pub frames: outbox::Sender,
    pub evict: oneshot::Sender<u16>,
}

/// What a connection asks for when it joins.
#[derive(Debug, Clone, Default)]
pub struct JoinRequest {
    pub room: String,
    /// `None` gets a generated `guest-N` name.
    pub name: Option<String>,
    /// A quiet member (a one-shot sender, a silent reader) is counted but never announced, and
    /// holds no name.
    pub quiet: bool,
    /// Resume: replay every message after this id (or say what is missing).
    pub since: Option<u64>,
    /// Replay this many recent messages (default: the hub's `history` for visible members,
    /// none for quiet ones).
    pub history: Option<usize>,
    /// The history `since` is a position in (from a welcome or `synced`); a resume in
    /// another one gets this history from its start.
    pub epoch: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinError {
    NameTaken(String),
    InvalidName(String),
    InvalidRoom(String),
}

impl JoinError {
    /// The error event code for this refusal.
    pub fn code(&self) -> &'static str {
        match self {
            JoinError::NameTaken(_) => "name_taken",
            JoinError::InvalidName(_) => "invalid_name",
            JoinError::InvalidRoom(_) => "invalid_room",
        }
    }
}

impl std::fmt::Display for JoinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JoinError::NameTaken(n) => write!(f, "the name '{n}' is already taken"),
            JoinError::InvalidName(why) => write!(f, "invalid name: {why}"),
            JoinError::InvalidRoom(why) => write!(f, "invalid room: {why}"),
        }
    }
}

/// Why a chat message was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatError {
    /// A private message to a name nobody holds.
    NoSuchMember(String),
    /// The sender is no longer a member (it was just evicted).
    Gone,
}

/// A chat message to post.
#[derive(Debug, Clone, Default)]
pub struct Post {
    pub content: String,
    /// Private: only this member (and the sender) get it.
    pub to: Option<String>,
    pub action: bool,
    /// Acknowledge with this `ref` once the message is stored.
    pub reference: Option<u64>,
}

/// Hub settings fixed at start.
#[derive(Debug, Clone, Copy)]
pub struct HubConfig {
    /// Send each message back to its sender too.
    pub echo: bool,
    /// Messages replayed to a visible member on join.
    pub history: usize,
    /// The connection limits, stated in each welcome.
    pub limits: Option<Limits>,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            echo: false,
            history: 50,
            limits: None,
        }
    }
}

pub struct Hub {
    config: HubConfig,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    /// Several instances as one chat: room messages go through the relay's shared log and
    /// come back through [`Hub::deliver`].
    relay: Option<Arc<dyn Relay>>,
    next_member: AtomicU64,
    /// One std mutex for all rooms. It is never held across an `.await` (the hub has none):
    /// fan-out under it is a loop of non-blocking `try_send`s, and the store answers from
    /// memory, so it is held briefly.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Rooms by name; a member's entry in `rooms_by_member` shares the name's bytes.
    rooms: HashMap<Arc<str>, Room>,
    /// Which room each member is in.
    rooms_by_member: HashMap<MemberId, Arc<str>>,
    /// Names held by visible members, server-wide, by [`protocol::name_key`]: names that look
    /// alike are one name.
    names: HashMap<String, MemberId>,
    /// Whether fan-outs write straight through to idle sockets now.
    through: outbox::WriteThrough,
}

impl State {
    /// A connected member, by id.
    fn member(&self, id: MemberId) -> Option<&Member> {
        let room = self.rooms_by_member.get(&id)?;
        self.rooms.get(room)?.members.get(&id)
    }

    /// A visible member, by name.
    fn member_named(&self, name: &str) -> Option<&Member> {
        self.member(*self.names.get(&protocol::name_key(name))?)
    }
}

impl Hub {
    pub fn new(config: HubConfig, store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Hub {
        Hub {
            config,
            store,
            metrics,
            relay: None,
            next_member: AtomicU64::new(1),
            state: Mutex::new(State::default()),
        }
    }

    /// Sends room messages through `relay` instead of fanning them out here.
    pub fn with_relay(mut self, relay: Arc<dyn Relay>) -> Hub {
        self.relay = Some(relay);
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock would leave the state as it was between two whole
        // operations (every mutation below is completed before anything can panic), so a
        // poisoned lock is still consistent and is used as is.
        crate::sync::lock(&self.state)
    }

    /// Adds a member to a room. A visible member gets a welcome, then the room's recent
    /// history (or, resuming, what it missed) and a `synced` marker, all queued before any
    /// later message can reach it; the room gets a join notice and a presence count.
    pub fn join(&self, req: JoinRequest, link: Link) -> Result<(MemberId, String), JoinError> {
        protocol::validate_room(&req.room).map_err(JoinError::InvalidRoom)?;
        let id = MemberId(self.next_member.fetch_add(1, Ordering::Relaxed));
        let generated = req.name.is_none();
        let name = match req.name {
            Some(n) => {
                protocol::validate_name(&n).map_err(JoinError::InvalidName)?;
                n
            }
            None => format!("guest-{}", id.0),
        };
        let mut guard = self.lock();
        let state = &mut *guard;
        let mut name = name;
        let mut suffix = 2;
        while generated && state.names.contains_key(&protocol::name_key(&name)) {
            // Someone chose this guest name for themselves: pick another.
            name = format!("guest-{}-{suffix}", id.0);
            suffix += 1;
        }
        if !req.quiet {
            let key = protocol::name_key(&name);
            if state.names.contains_key(&key) {
                return Err(JoinError::NameTaken(name));
            }
            state.names.insert(key, id);
        }
        let member = Member {
            name: Arc::from(name.as_str()),
            quiet: req.quiet,
            frames: link.frames,
            evict: Some(link.evict),
        };
        let replay = Replay {
            since: req.since,
            epoch: req.epoch,
            history: req.history.or((!req.quiet).then_some(self.config.history)),
        };
        let slow = self.enter(state, id, member, &req.room, replay);
        self.evict_all(state, slow);
        Ok((id, name))
    }

    /// Puts a member into a room and does the greeting: welcome, history, notices.
    fn enter(
        &self,
        state: &mut State,
        id: MemberId,
        member: Member,
        room_name: &str,
        replay: Replay,
    ) -> Vec<MemberId> {
        let key = match state.rooms.get_key_value(room_name) {
            Some((key, _)) => key.clone(),
            None => Arc::from(room_name),
        };
        state.rooms_by_member.insert(id, key.clone());
        let room = state.rooms.entry(key).or_insert_with(|| Room {
            last_id: self.store.last_id(room_name),
            ..Room::default()
        });
        let (quiet, frames) = (member.quiet, member.frames.clone());
        let name = member.name.to_string();
        if !quiet {
            room.names.insert(member.name.clone());
        }
        room.members.insert(id, member);
        room.others = self.relay.as_ref().map_or(0, |r| r.others(room_name));
        if quiet {
            room.quiet += 1;
        } else {
            let count = room.count();
            let others = if count == 1 {
                "you are the only one here".to_owned()
            } else {
                format!("{count} people here")
            };
            let welcome = Event::System(SystemEvent {
                message: format!("Welcome to wschat, {name}! You are in {room_name}; {others}."),
                timestamp: protocol::timestamp(),
                event: Notice::Welcome,
                room: room_name.to_owned(),
                name: Some(name.clone()),
                count: Some(count),
                epoch: Some(self.store.epoch(room_name)),
                limits: self.config.limits,
            });
            let _ = frames.try_send(welcome.to_frame());
        }
        // A member whose greeting does not fit is too slow already: evicted, it can resume.
        let greeted = self.replay(&frames, room_name, room.last_id, replay);
        let mine = if greeted { Vec::new() } else { vec![id] };
        if quiet {
            return mine;
        }
        let message = format!("{name} joined the chat");
        let mut slow = self.notify(room, room_name, Notice::Join, name, message, id);
        slow.extend(mine);
        slow
    }

    /// Tells a room that `about` joined, left or was renamed: through the relay's log when
    /// there is one (every instance's members then hear it, with the count of all instances),
    /// here at once otherwise or while the log is away. Returns the members found slow.
    fn notify(
        &self,
        room: &mut Room,
        room_name: &str,
        notice: Notice,
        name: String,
        message: String,
        about: MemberId,
    ) -> Vec<MemberId> {
        let announcement = Announcement {
            room: room_name.to_owned(),
            notice,
            name,
            message,
            timestamp: protocol::timestamp(),
            local: room.visible(),
            origin: Origin {
                member: about,
                reference: None,
                delivered_locally: false,
            },
        };
        if let Some(relay) = &self.relay {
            match relay.announce(announcement.clone()) {
                Handover::Queued => return Vec::new(),
                // Away or full: at least this instance's members hear it.
                Handover::QueuedDeliverLocally | Handover::Refused => {}
            }
        }
        room.announce_here(&announcement, true)
    }

    /// Moves a member to another room: a leave notice in the old one, a full greeting in the new.
    pub fn move_to(&self, id: MemberId, room: &str) -> Result<(), JoinError> {
        protocol::validate_room(room).map_err(JoinError::InvalidRoom)?;
        let mut guard = self.lock();
        let state = &mut *guard;
        if state.rooms_by_member.get(&id).is_some_and(|r| **r == *room) {
            return Ok(());
        }
        let Some((member, mut slow)) = self.take(state, id) else {
            return Ok(());
        };
        let replay = Replay {
            since: None,
            epoch: None,
            history: (!member.quiet).then_some(self.config.history),
        };
        if !member.quiet {
            // `take` released the name; the member keeps it.
            state.names.insert(protocol::name_key(&member.name), id);
        }
        slow.extend(self.enter(state, id, member, room, replay));
        self.evict_all(state, slow);
        Ok(())
    }

    /// Removes a member (a no-op if it was already evicted) and tells its room.
    pub fn leave(&self, id: MemberId) {
        let mut guard = self.lock();
        if let Some((_, slow)) = self.take(&mut guard, id) {
            self.evict_all(&mut guard, slow);
        }
    }

    /// Posts a chat message from `from`: to its room, or privately to one member.
    pub fn chat(&self, from: MemberId, post: Post) -> Result<(), ChatError> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let room_name = state
            .rooms_by_member
            .get(&from)
            .ok_or(ChatError::Gone)?
            .clone();
        let room = state.rooms.get_mut(&room_name).ok_or(ChatError::Gone)?;
        let sender = room.members.get(&from).ok_or(ChatError::Gone)?;
        let sender_frames = sender.frames.clone();
        let reference = post.reference;
        let message = posted(&room_name, &sender.name, post);
        if message.private {
            return self.private(state, from, message, reference);
        }
        if let Some(relay) = &self.relay {
            let origin = Origin {
                member: from,
                reference,
                delivered_locally: false,
            };
            match relay.publish(message.clone(), origin) {
                Handover::Queued => {}
                Handover::Refused => {
                    let refusal = Event::error(
                        "unavailable",
                        "the server cannot take more messages right now; try again",
                        reference,
                    );
                    let _ = sender_frames.try_send(refusal.to_frame());
                }
                Handover::QueuedDeliverLocally => {
                    // The shared log is unreachable: local members get it now, without an id
                    // (it gets one, and reaches the other instances, once the log is back).
                    let frame = Event::Chat(message).to_frame();
                    let skip = (!self.config.echo).then_some(from);
                    let (_, slow) = self.counted(room.fan_out(&frame, skip, &mut state.through));
                    self.evict_all(state, slow);
                }
            }
            return Ok(());
        }
        if let Err(why) = self.store.health() {
            // Not broadcast: nobody may see as sent what a restart would lose.
            Metrics::inc(&self.metrics.unavailable);
            let why = format!("not sent: history cannot be stored ({why}); try again later");
            let refusal = Event::error("unavailable", why, reference);
            let _ = sender_frames.try_send(refusal.to_frame());
            return Ok(());
        }
        room.last_id += 1;
        let id = room.last_id;
        let event = ChatEvent { id, ..message };
        let frame = Event::Chat(event.clone()).to_frame();
        let skip = (!self.config.echo).then_some(from);
        let (delivered, slow) = self.counted(room.fan_out(&frame, skip, &mut state.through));
        let on_durable = reference
            .map(|reference| self.answer_when_stored(sender_frames, reference, id, delivered));
        self.store.append(event, on_durable);
        self.evict_all(state, slow);
        Ok(())
    }

    /// What the sender of message `id` (its `reference`) is told once the store has it: an
    /// ack, or why it could not be stored.
    fn answer_when_stored(
        &self,
        frames: outbox::Sender,
        reference: u64,
        id: u64,
        delivered: usize,
    ) -> crate::store::OnDurable {
        let metrics = self.metrics.clone();
        Box::new(move |stored: Result<(), String>| {
            let answer = match stored {
                Ok(()) => Event::Ack(AckEvent {
                    reference,
                    id,
                    delivered,
                }),
                Err(why) => Event::error("unavailable", why, Some(reference)),
            };
            // A full outbox here means the sender is being evicted as slow anyway.
            let sent = frames.try_send(answer.to_frame()).is_ok();
            if sent && matches!(answer, Event::Ack(_)) {
                Metrics::inc(&metrics.acks);
            }
        })
    }

    /// Whether a visible member called `name` is connected to this instance.
    pub fn has_name(&self, name: &str) -> bool {
        self.lock().names.contains_key(&protocol::name_key(name))
    }

    /// Delivers a private message to the member called `to`, and a copy to the sender; with a
    /// relay, a target that is not a member here is reached through the log.
    fn private(
        &self,
        state: &mut State,
        from: MemberId,
        message: ChatEvent,
        reference: Option<u64>,
    ) -> Result<(), ChatError> {
        let to = message.to.clone().unwrap_or_default();
        let to = to.as_str();
        let frame = Event::Chat(message.clone()).to_frame();
        let Some(target) = state.member_named(to) else {
            let Some(relay) = &self.relay else {
                return Err(ChatError::NoSuchMember(to.to_owned()));
            };
            // For a member of another instance (the caller checked that one holds the name):
            // the log takes it there, and brings the sender's acknowledgement back here.
            let origin = Origin {
                member: from,
                reference,
                delivered_locally: false,
            };
            let reply = match relay.publish(message, origin) {
                Handover::Queued | Handover::QueuedDeliverLocally => frame,
                Handover::Refused => Event::error(
                    "unavailable",
                    "the server cannot take more messages right now; try again",
                    reference,
                )
                .to_frame(),
            };
            if let Some(sender) = state.member(from) {
                let _ = sender.frames.try_send(reply);
            }
            return Ok(());
        };
        // To oneself: the sender's copy is the delivery (one copy, not two).
        let to_self = state.names.get(&protocol::name_key(to)) == Some(&from);
        let delivered = !to_self && target.frames.try_send(frame.clone()).is_ok();
        if let Some(sender) = state.member(from) {
            let copied = sender.frames.try_send(frame).is_ok();
            let delivered = usize::from(delivered || (to_self && copied));
            if let Some(reference) = reference {
                let ack = Event::Ack(AckEvent {
                    reference,
                    id: 0,
                    delivered,
                });
                let _ = sender.frames.try_send(ack.to_frame());
            }
        }
        Ok(())
    }

    /// Relays a frame unchanged to the sender's room (raw mode). Returns how many accepted it.
    pub fn relay(&self, from: MemberId, frame: Message) -> usize {
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(room) = state
            .rooms_by_member
            .get(&from)
            .and_then(|r| state.rooms.get(r))
        else {
            return 0;
        };
        let skip = (!self.config.echo).then_some(from);
        let (delivered, slow) = self.counted(room.fan_out(&frame, skip, &mut state.through));
        self.evict_all(state, slow);
        delivered
    }

    /// Gives a member a new name and tells its room (the member included).
    pub fn rename(&self, id: MemberId, new: &str) -> Result<(), JoinError> {
        protocol::validate_name(new).map_err(JoinError::InvalidName)?;
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(room_name) = state.rooms_by_member.get(&id).cloned() else {
            return Ok(());
        };
        let Some(member) = state.rooms.get(&room_name).and_then(|r| r.members.get(&id)) else {
            return Ok(());
        };
        let (old, quiet) = (member.name.clone(), member.quiet);
        if *old == *new {
            return Ok(());
        }
        if !quiet {
            // Held by another member, or by a name that looks the same.
            let key = protocol::name_key(new);
            if state.names.get(&key).is_some_and(|&holder| holder != id) {
                return Err(JoinError::NameTaken(new.to_owned()));
            }
            state.names.remove(&protocol::name_key(&old));
            state.names.insert(key, id);
        }
        let Some(room) = state.rooms.get_mut(&room_name) else {
            return Ok(());
        };
        let new_name: Arc<str> = Arc::from(new);
        if let Some(member) = room.members.get_mut(&id) {
            member.name = new_name.clone();
        }
        if !quiet {
            room.names.remove(&old);
            room.names.insert(new_name);
        }
        if quiet {
            return Ok(());
        }
        let message = format!("{old} is now known as {new}");
        let slow = self.notify(
            room,
            &room_name,
            Notice::Rename,
            new.to_owned(),
            message,
            id,
        );
        self.evict_all(state, slow);
        Ok(())
    }

    /// The rooms in use (the most populous [`protocol::LIST_MAX`]), with how many there are
    /// in all.
    pub fn rooms(&self) -> Message {
        let state = self.lock();
        let rooms = state
            .rooms
            .iter()
            .map(|(name, r)| (name.to_string(), r.count()));
        rooms_event(rooms.collect())
    }

    /// The rooms that have visible members on this instance, with their number.
    pub fn local_rooms(&self) -> Vec<(String, usize)> {
        let state = self.lock();
        state
            .rooms
            .iter()
            .filter(|(_, r)| r.visible() > 0)
            .map(|(name, r)| (name.to_string(), r.visible()))
            .collect()
    }

    /// A page of the members of `id`'s room: the visible ones named after `after` (at most
    /// [`protocol::LIST_MAX`]), the quiet ones, and how many in all.
    pub fn who(&self, id: MemberId, after: Option<&str>) -> WhoEvent {
        let state = self.lock();
        let room = state
            .rooms_by_member
            .get(&id)
            .cloned()
            .unwrap_or_else(|| "".into());
        match state.rooms.get(&room) {
            Some(r) => r.who(&room, after),
            None => WhoEvent {
                room: room.to_string(),
                ..WhoEvent::default()
            },
        }
    }

    /// Sends each large room the summary of who came and went since the last one (see
    /// [`COALESCE_ABOVE`]). The server calls it on a timer; the hub keeps no clock.
    pub fn flush_presence(&self) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let mut slow = Vec::new();
        for (name, room) in &mut state.rooms {
            if let Some(summary) = room.summary(name) {
                slow.extend(room.fan_out(&summary, None, &mut state.through).slow);
            }
        }
        self.evict_all(state, slow);
    }

    /// Number of members in a room, quiet ones included.
    pub fn members(&self, room: &str) -> usize {
        self.lock().rooms.get(room).map_or(0, |r| r.members.len())
    }

    /// Connections and rooms, for metrics and logs.
    pub fn counts(&self) -> (usize, usize) {
        let state = self.lock();
        (state.rooms_by_member.len(), state.rooms.len())
    }
}

/// A message as `username` posted it in `room`: to the room, or privately to `post.to`. Its id
/// is given when it is stored (private messages have none).
fn posted(room: &str, username: &str, post: Post) -> ChatEvent {
    ChatEvent {
        id: 0,
        room: room.to_owned(),
        username: username.to_owned(),
        message: post.content.into(),
        timestamp: protocol::timestamp(),
        private: post.to.is_some(),
        to: post.to,
        action: post.action,
        history: false,
        replayed: Default::default(),
    }
}

/// The `rooms` reply: the most populous [`protocol::LIST_MAX`] rooms, by name.
pub fn rooms_event(mut rooms: Vec<(String, usize)>) -> Message {
    rooms.retain(|(_, count)| *count > 0);
    let total = rooms.len();
    if total > protocol::LIST_MAX {
        rooms.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        rooms.truncate(protocol::LIST_MAX);
    }
    rooms.sort_by(|a, b| a.0.cmp(&b.0));
    let rooms = rooms
        .into_iter()
        .map(|(name, count)| RoomInfo { name, count })
        .collect();
    Event::Rooms(RoomsEvent { rooms, total }).to_frame()
}

impl Hub {
    /// Takes a member out of its room, announcing it; returns the member and any members found
    /// slow while announcing. `None` if it was not there.
    fn take(&self, state: &mut State, id: MemberId) -> Option<(Member, Vec<MemberId>)> {
        let room_name = state.rooms_by_member.remove(&id)?;
        let room = state.rooms.get_mut(&room_name)?;
        let member = room.members.remove(&id)?;
        let mut slow = Vec::new();
        if member.quiet {
            room.quiet -= 1;
        } else {
            room.names.remove(&member.name);
            let key = protocol::name_key(&member.name);
            if state.names.get(&key) == Some(&id) {
                state.names.remove(&key);
            }
            // Announced even when nobody is left here: other instances may share the room.
            let message = format!("{} left the chat", member.name);
            let name = member.name.to_string();
            slow = self.notify(room, &room_name, Notice::Leave, name, message, id);
        }
        if room.members.is_empty() {
            // An empty room leaves nothing behind here (its history is the store's, which
            // may let it go from memory too).
            state.rooms.remove(&room_name);
            self.store.idle(&room_name);
        }
        Some((member, slow))
    }

    /// Counts a chat message's deliveries; returns how many there were, and the members found
    /// slow.
    fn counted(&self, reach: room::Reach) -> (usize, Vec<MemberId>) {
        Metrics::add(&self.metrics.deliveries, reach.delivered as u64);
        Metrics::add(&self.metrics.deliveries_written, reach.written as u64);
        (reach.delivered, reach.slow)
    }

    /// Evicts slow members; announcing their departure may find more, so this runs to a
    /// fixpoint. Each round removes at least one member, so it ends.
    fn evict_all(&self, state: &mut State, mut slow: Vec<MemberId>) {
        while let Some(id) = slow.pop() {
            let evict = state
                .rooms_by_member
                .get(&id)
                .and_then(|r| state.rooms.get_mut(r))
                .and_then(|room| room.members.get_mut(&id))
                .and_then(|m| m.evict.take());
            if let Some(evict) = evict {
                let _ = evict.send(close::SLOW_CONSUMER);
            }
            if let Some((_, more)) = self.take(state, id) {
                slow.extend(more);
            }
        }
    }
}

#[cfg(test)]
mod tests;
