//! The broadcast core: rooms, members, names, message ids and fan-out. No sockets, no I/O.
//!
//! A member is known to the hub only as a bounded outbox of already-encoded frames. Every event
//! is encoded once and the same bytes are queued for every recipient. An outbox that is full
//! belongs to a slow consumer: the member is evicted (its connection is told to close with
//! [`close::SLOW_CONSUMER`]) rather than allowed to stall the room or grow memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

use crate::metrics::Metrics;
use crate::outbox;
use crate::protocol::{
    self, close, AckEvent, ChatEvent, Event, GapEvent, Limits, Notice, PresenceEvent, RoomInfo,
    RoomsEvent, SyncedEvent, SystemEvent, WhoEvent,
};
use crate::relay::{Announcement, Delivery, Handover, NoticeEntry, Origin, Relay};
use crate::store::Store;

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
pub struct Outbox {
    pub frames: outbox::Sender,
    pub evict: oneshot::Sender<u16>,
}

/// What a connection asks for when it joins.
#[derive(Debug, Clone, Default)]
pub struct JoinRequest {
    pub room: String,
    /// `None` gets a generated `guest-N` name.
    pub name: Option<String>,
    /// A quiet member (a one-shot sender) is not announced, not counted, and holds no name.
    pub quiet: bool,
    /// Resume: replay every message after this id (or say what is missing).
    pub since: Option<u64>,
    /// Replay this many recent messages (default: the hub's `history` for visible members,
    /// none for quiet ones).
    pub history: Option<usize>,
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
    rooms: HashMap<String, Room>,
    /// Which room each member is in.
    rooms_by_member: HashMap<MemberId, String>,
    /// Names held by visible members, server-wide.
    names: HashMap<String, MemberId>,
}

impl State {
    /// A connected member, by id.
    fn member(&self, id: MemberId) -> Option<&Member> {
        let room = self.rooms_by_member.get(&id)?;
        self.rooms.get(room)?.members.get(&id)
    }

    /// A visible member, by name.
    fn member_named(&self, name: &str) -> Option<&Member> {
        self.member(*self.names.get(name)?)
    }
}

#[derive(Default)]
struct Room {
    members: HashMap<MemberId, Member>,
    /// Members that are not quiet.
    visible: usize,
    /// Visible members on other instances (with a relay), as counted at the last join here.
    others: usize,
    /// Id of the last chat message in this room.
    last_id: u64,
}

struct Member {
    name: String,
    quiet: bool,
    frames: outbox::Sender,
    evict: Option<oneshot::Sender<u16>>,
}

impl Room {
    /// Visible members, on every instance.
    fn count(&self) -> usize {
        self.visible + self.others
    }

    /// Queues `frame` for every member but `skip`. Returns how many accepted it and the members
    /// whose outbox was full.
    fn fan_out(&self, frame: &Message, skip: Option<MemberId>) -> (usize, Vec<MemberId>) {
        let mut delivered = 0;
        let mut slow = Vec::new();
        for (&id, member) in &self.members {
            if Some(id) == skip {
                continue;
            }
            match member.frames.try_send(frame.clone()) {
                Ok(()) => delivered += 1,
                Err(outbox::TrySendError::Full(_)) => slow.push(id),
                // The connection is already ending; it removes itself.
                Err(outbox::TrySendError::Closed(_)) => {}
            }
        }
        (delivered, slow)
    }

    /// Tells this instance's members of the room that someone joined, left or was renamed,
    /// with the room's count (and a presence event for a join or leave). A join notice skips
    /// the member who joined, when it is a member here (`mine`). Returns the members found slow.
    fn announce_here(&self, a: &Announcement, mine: bool) -> Vec<MemberId> {
        let count = self.count();
        let skip = (mine && a.notice == Notice::Join).then_some(a.origin.member);
        let notice = system(
            a.notice,
            &a.room,
            &a.name,
            a.message.clone(),
            a.timestamp.clone(),
            count,
        );
        let (_, mut slow) = self.fan_out(&notice, skip);
        if a.notice != Notice::Rename {
            slow.extend(self.fan_out(&presence(&a.room, count), skip).1);
        }
        slow
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .members
            .values()
            .filter(|m| !m.quiet)
            .map(|m| m.name.clone())
            .collect();
        names.sort();
        names
    }
}

fn system(
    event: Notice,
    room: &str,
    name: &str,
    message: String,
    timestamp: String,
    count: usize,
) -> Message {
    Event::System(system_event(event, room, name, message, timestamp, count)).to_frame()
}

fn system_event(
    event: Notice,
    room: &str,
    name: &str,
    message: String,
    timestamp: String,
    count: usize,
) -> SystemEvent {
    SystemEvent {
        message,
        timestamp,
        event,
        room: room.to_owned(),
        name: Some(name.to_owned()),
        count: Some(count),
        limits: None,
    }
}

fn presence(room: &str, count: usize) -> Message {
    Event::Presence(PresenceEvent {
        room: room.to_owned(),
        count,
    })
    .to_frame()
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
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a member to a room. A visible member gets a welcome, then the room's recent
    /// history (or, resuming, what it missed) and a `synced` marker, all queued before any
    /// later message can reach it; the room gets a join notice and a presence count.
    pub fn join(&self, req: JoinRequest, outbox: Outbox) -> Result<(MemberId, String), JoinError> {
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
        while generated && state.names.contains_key(&name) {
            // Someone chose this guest name for themselves: pick another.
            name = format!("guest-{}-{suffix}", id.0);
            suffix += 1;
        }
        if !req.quiet {
            if state.names.contains_key(&name) {
                return Err(JoinError::NameTaken(name));
            }
            state.names.insert(name.clone(), id);
        }
        let member = Member {
            name: name.clone(),
            quiet: req.quiet,
            frames: outbox.frames,
            evict: Some(outbox.evict),
        };
        let replay = Replay {
            since: req.since,
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
        state.rooms_by_member.insert(id, room_name.to_owned());
        let room = state
            .rooms
            .entry(room_name.to_owned())
            .or_insert_with(|| Room {
                last_id: self.store.last_id(room_name),
                ..Room::default()
            });
        let (quiet, name, frames) = (member.quiet, member.name.clone(), member.frames.clone());
        room.members.insert(id, member);
        room.others = self.relay.as_ref().map_or(0, |r| r.others(room_name));
        if !quiet {
            room.visible += 1;
            let count = room.count();
            let others = if count == 1 {
                "you are the only one here".to_owned()
            } else {
                format!("{count} people here")
            };
            let welcome = format!("Welcome to wschat, {name}! You are in {room_name}; {others}.");
            let timestamp = protocol::timestamp();
            let mut welcome =
                system_event(Notice::Welcome, room_name, &name, welcome, timestamp, count);
            welcome.limits = self.config.limits;
            let _ = frames.try_send(Event::System(welcome).to_frame());
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
        room: &Room,
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
            local: room.visible,
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

    /// Queues history for a member that just entered a room. What does not fit in the
    /// outbox is announced as a gap, never dropped silently.
    fn replay(&self, frames: &outbox::Sender, room: &str, last_id: u64, replay: Replay) -> bool {
        // Leave room in the outbox for the live messages that follow.
        let fits = frames.capacity().saturating_sub(8).max(1);
        let mut note = None;
        let mut messages = match (replay.since, replay.history) {
            (Some(since), _) if since > last_id => {
                // A position from a history this server no longer has (an in-memory server
                // restarted): say so, then catch the client up as a newcomer.
                let why = "the server's history restarted; recent messages follow";
                note = Some((0, why.to_owned()));
                self.store.recent(room, self.config.history.min(fits))
            }
            (Some(since), _) => {
                // More than fits: the latest, skipping older ones.
                let mut messages = if last_id - since > fits as u64 {
                    self.store.recent(room, fits)
                } else {
                    self.store.since(room, since, fits).messages
                };
                // Counted as below: only what is between `since` and `last_id`.
                messages.retain(|m| m.id > since && m.id <= last_id);
                // Every id after `since` is either here or missing (skipped, lost to a failed
                // write, or no longer kept), wherever the holes are.
                let missed = (last_id - since).saturating_sub(messages.len() as u64);
                if missed > 0 {
                    let why = format!("missed {missed} message(s) that are no longer kept");
                    note = Some((missed, why));
                }
                messages
            }
            (None, Some(n)) if n > 0 => self.store.recent(room, n.min(fits)),
            (None, Some(_)) => Vec::new(),
            (None, None) => return true,
        };
        // A store may have loaded messages the log's tail has not delivered here yet: those
        // arrive live, not twice.
        messages.retain(|m| m.id <= last_id);
        // Every frame must go in: a replay with a hole would be a silent loss.
        let mut complete = true;
        let mut push = |event: Event| complete &= frames.try_send(event.to_frame()).is_ok();
        if let Some((missed, message)) = note {
            push(Event::Gap(GapEvent {
                room: room.to_owned(),
                missed,
                message,
            }));
        }
        for mut message in messages {
            message.history = true;
            push(Event::Chat(message));
        }
        push(Event::Synced(SyncedEvent {
            room: room.to_owned(),
            id: last_id,
        }));
        complete
    }

    /// Moves a member to another room: a leave notice in the old one, a full greeting in the new.
    pub fn move_to(&self, id: MemberId, room: &str) -> Result<(), JoinError> {
        protocol::validate_room(room).map_err(JoinError::InvalidRoom)?;
        let mut guard = self.lock();
        let state = &mut *guard;
        if state.rooms_by_member.get(&id).is_some_and(|r| r == room) {
            return Ok(());
        }
        let Some((member, mut slow)) = self.take(state, id) else {
            return Ok(());
        };
        let replay = Replay {
            since: None,
            history: (!member.quiet).then_some(self.config.history),
        };
        if !member.quiet {
            // `take` released the name; the member keeps it.
            state.names.insert(member.name.clone(), id);
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
        let username = sender.name.clone();
        let sender_frames = sender.frames.clone();
        if let Some(to) = post.to {
            return self.private(
                state,
                from,
                &room_name,
                username,
                &to,
                post.content,
                post.action,
                post.reference,
            );
        }
        if let Some(relay) = &self.relay {
            let message = ChatEvent {
                id: 0,
                room: room_name,
                username,
                message: post.content,
                timestamp: protocol::timestamp(),
                to: None,
                private: false,
                action: post.action,
                history: false,
            };
            let origin = Origin {
                member: from,
                reference: post.reference,
                delivered_locally: false,
            };
            match relay.publish(message.clone(), origin) {
                Handover::Queued => {}
                Handover::Refused => {
                    let refusal = Event::error(
                        "unavailable",
                        "the server cannot take more messages right now; try again",
                        post.reference,
                    );
                    let _ = sender_frames.try_send(refusal.to_frame());
                }
                Handover::QueuedDeliverLocally => {
                    // The shared log is unreachable: local members get it now, without an id
                    // (it gets one, and reaches the other instances, once the log is back).
                    let frame = Event::Chat(message).to_frame();
                    let skip = (!self.config.echo).then_some(from);
                    let (delivered, slow) = room.fan_out(&frame, skip);
                    Metrics::add(&self.metrics.deliveries, delivered as u64);
                    self.evict_all(state, slow);
                }
            }
            return Ok(());
        }
        room.last_id += 1;
        let id = room.last_id;
        let event = ChatEvent {
            id,
            room: room_name,
            username,
            message: post.content,
            timestamp: protocol::timestamp(),
            to: None,
            private: false,
            action: post.action,
            history: false,
        };
        let frame = Event::Chat(event.clone()).to_frame();
        let skip = (!self.config.echo).then_some(from);
        let (delivered, slow) = room.fan_out(&frame, skip);
        Metrics::add(&self.metrics.deliveries, delivered as u64);
        let on_durable = post.reference.map(|reference| {
            let ack = Event::Ack(AckEvent {
                reference,
                id,
                delivered,
            })
            .to_frame();
            let metrics = self.metrics.clone();
            Box::new(move || {
                // A full outbox here means the sender is being evicted as slow anyway.
                if sender_frames.try_send(ack).is_ok() {
                    Metrics::inc(&metrics.acks);
                }
            }) as crate::store::OnDurable
        });
        self.store.append(event, on_durable);
        self.evict_all(state, slow);
        Ok(())
    }

    /// Hands what came back from the relay's log to this instance's members.
    pub fn deliver(&self, delivery: Delivery) {
        let mut guard = self.lock();
        let state = &mut *guard;
        match delivery {
            Delivery::Chat(event, origin) => self.deliver_chat(state, event, origin),
            Delivery::Private(event, origin) => self.deliver_private(state, event, origin),
            Delivery::Notice(entry) => self.deliver_notice(state, entry),
            Delivery::Census { room, others } => self.deliver_census(state, &room, others),
            Delivery::Refused(origin) => self.refused(state, origin),
        }
    }

    /// A room message with its id: fans it out to this instance's members of the room
    /// (skipping its sender unless `--echo`, and skipping everyone if they already got it),
    /// records it in the store, and acknowledges it to its sender when that sender is a member
    /// here. A message this instance already has (its id is not past the room's last) is only
    /// acknowledged. The ack's `delivered` adds the room's members on the other instances,
    /// which the same log entry reaches.
    fn deliver_chat(&self, state: &mut State, event: ChatEvent, origin: Option<Origin>) {
        let id = event.id;
        let sender = origin.and_then(|o| {
            let room = state.rooms_by_member.get(&o.member)?;
            let member = state.rooms.get(room)?.members.get(&o.member)?;
            Some((o, member.frames.clone()))
        });
        let mut delivered = 0;
        let mut fresh = true;
        if let Some(room) = state.rooms.get_mut(&event.room) {
            delivered = room.others;
            fresh = id > room.last_id;
            if fresh {
                room.last_id = id;
                if !origin.is_some_and(|o| o.delivered_locally) {
                    let frame = Event::Chat(event.clone()).to_frame();
                    let skip = origin.filter(|_| !self.config.echo).map(|o| o.member);
                    let (here, slow) = room.fan_out(&frame, skip);
                    delivered += here;
                    Metrics::add(&self.metrics.deliveries, here as u64);
                    self.evict_all(state, slow);
                }
            }
        }
        let on_durable = sender.and_then(|(origin, frames)| {
            let reference = origin.reference?;
            let ack = Event::Ack(AckEvent {
                reference,
                id,
                delivered,
            })
            .to_frame();
            let metrics = self.metrics.clone();
            Some(Box::new(move || {
                if frames.try_send(ack).is_ok() {
                    Metrics::inc(&metrics.acks);
                }
            }) as crate::store::OnDurable)
        });
        if fresh {
            self.store.append(event, on_durable);
        } else if let Some(ack) = on_durable {
            ack();
        }
    }

    /// A post the log refused for good: its sender gets an error instead of an ack.
    fn refused(&self, state: &State, origin: Origin) {
        let (Some(reference), Some(sender)) = (origin.reference, state.member(origin.member))
        else {
            return;
        };
        let why = "not stored: the shared log refused it; try again";
        let error = Event::error("unavailable", why, Some(reference));
        let _ = sender.frames.try_send(error.to_frame());
    }

    /// A private message through the log: to its target if it is a member here, and the
    /// sender's acknowledgement if the sender is (the sender had its copy when it posted).
    fn deliver_private(&self, state: &mut State, event: ChatEvent, origin: Option<Origin>) {
        let target = event.to.as_deref().and_then(|to| state.member_named(to));
        let delivered = match target {
            Some(target) => {
                let frame = Event::Chat(event).to_frame();
                usize::from(target.frames.try_send(frame).is_ok())
            }
            // Someone else's: only the instance that has the target delivers it.
            None if origin.is_none() => return,
            // Posted here for a member of another instance, which delivers it.
            None => 1,
        };
        let Some(origin) = origin else { return };
        let Some(reference) = origin.reference else {
            return;
        };
        if let Some(sender) = state.member(origin.member) {
            let ack = Event::Ack(AckEvent {
                reference,
                id: 0,
                delivered,
            });
            if sender.frames.try_send(ack.to_frame()).is_ok() {
                Metrics::inc(&self.metrics.acks);
            }
        }
    }

    /// A join, leave or rename notice through the log: the count of the other instances is
    /// brought up to date, and this instance's members of the room hear it (unless they did
    /// already, while the log was away).
    fn deliver_notice(&self, state: &mut State, entry: NoticeEntry) {
        let Some(room) = state.rooms.get_mut(&entry.announcement.room) else {
            return;
        };
        room.others = entry.others;
        if entry.mine.is_some_and(|o| o.delivered_locally) {
            return;
        }
        let slow = room.announce_here(&entry.announcement, entry.mine.is_some());
        self.evict_all(state, slow);
    }

    /// A fresh count of the other instances' members: if it changed, the room hears the new
    /// total in a presence event.
    fn deliver_census(&self, state: &mut State, room_name: &str, others: usize) {
        let Some(room) = state.rooms.get_mut(room_name) else {
            return;
        };
        if room.others == others {
            return;
        }
        room.others = others;
        if room.visible == 0 {
            return;
        }
        let (_, slow) = room.fan_out(&presence(room_name, room.count()), None);
        self.evict_all(state, slow);
    }

    /// Whether a visible member called `name` is connected to this instance.
    pub fn has_name(&self, name: &str) -> bool {
        self.lock().names.contains_key(name)
    }

    /// Delivers a private message to the member called `to`, and a copy to the sender; with a
    /// relay, a target that is not a member here is reached through the log.
    #[allow(clippy::too_many_arguments)]
    fn private(
        &self,
        state: &mut State,
        from: MemberId,
        room: &str,
        username: String,
        to: &str,
        content: String,
        action: bool,
        reference: Option<u64>,
    ) -> Result<(), ChatError> {
        let message = ChatEvent {
            id: 0,
            room: room.to_owned(),
            username,
            message: content,
            timestamp: protocol::timestamp(),
            to: Some(to.to_owned()),
            private: true,
            action,
            history: false,
        };
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
        let delivered = usize::from(target.frames.try_send(frame.clone()).is_ok());
        if let Some(sender) = state.member(from) {
            let _ = sender.frames.try_send(frame);
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
        let (delivered, slow) = room.fan_out(&frame, skip);
        Metrics::add(&self.metrics.deliveries, delivered as u64);
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
        if old == new {
            return Ok(());
        }
        if !quiet {
            if state.names.contains_key(new) {
                return Err(JoinError::NameTaken(new.to_owned()));
            }
            state.names.remove(&old);
            state.names.insert(new.to_owned(), id);
        }
        let Some(room) = state.rooms.get_mut(&room_name) else {
            return Ok(());
        };
        if let Some(member) = room.members.get_mut(&id) {
            member.name = new.to_owned();
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

    /// The rooms that have visible members, with their counts, by name.
    pub fn rooms(&self) -> Message {
        let state = self.lock();
        let mut rooms: Vec<RoomInfo> = state
            .rooms
            .iter()
            .filter(|(_, r)| r.visible > 0)
            .map(|(name, r)| RoomInfo {
                name: name.clone(),
                count: r.count(),
            })
            .collect();
        rooms.sort_by(|a, b| a.name.cmp(&b.name));
        Event::Rooms(RoomsEvent { rooms }).to_frame()
    }

    /// The rooms that have visible members on this instance, with their number.
    pub fn local_rooms(&self) -> Vec<(String, usize)> {
        let state = self.lock();
        state
            .rooms
            .iter()
            .filter(|(_, r)| r.visible > 0)
            .map(|(name, r)| (name.clone(), r.visible))
            .collect()
    }

    /// The visible members of `id`'s room.
    pub fn who(&self, id: MemberId) -> Message {
        let state = self.lock();
        let room = state.rooms_by_member.get(&id).cloned().unwrap_or_default();
        let members = state.rooms.get(&room).map(Room::names).unwrap_or_default();
        Event::Who(WhoEvent { room, members }).to_frame()
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

/// What history a member gets on entering a room.
#[derive(Debug, Clone, Copy)]
struct Replay {
    since: Option<u64>,
    history: Option<usize>,
}

impl Hub {
    /// Takes a member out of its room, announcing it; returns the member and any members found
    /// slow while announcing. `None` if it was not there.
    fn take(&self, state: &mut State, id: MemberId) -> Option<(Member, Vec<MemberId>)> {
        let room_name = state.rooms_by_member.remove(&id)?;
        let room = state.rooms.get_mut(&room_name)?;
        let member = room.members.remove(&id)?;
        let mut slow = Vec::new();
        if !member.quiet {
            room.visible -= 1;
            if state.names.get(&member.name) == Some(&id) {
                state.names.remove(&member.name);
            }
            // Announced even when nobody is left here: other instances may share the room.
            let message = format!("{} left the chat", member.name);
            let name = member.name.clone();
            slow = self.notify(room, &room_name, Notice::Leave, name, message, id);
        }
        if room.members.is_empty() {
            // An empty room leaves nothing behind here (its history is the store's).
            state.rooms.remove(&room_name);
        }
        Some((member, slow))
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
mod tests {
    use super::*;
    use crate::store::{Keep, MemoryStore};

    fn hub(config: HubConfig) -> Hub {
        Hub::new(
            config,
            Arc::new(MemoryStore::new(Keep::messages(100))),
            Arc::default(),
        )
    }

    fn say(hub: &Hub, from: &TestMember, text: &str) -> Result<(), ChatError> {
        hub.chat(
            from.id,
            Post {
                content: text.into(),
                ..Post::default()
            },
        )
    }

    struct TestMember {
        id: MemberId,
        name: String,
        rx: outbox::Receiver,
        evicted: oneshot::Receiver<u16>,
    }

    fn join(hub: &Hub, room: &str, name: Option<&str>, quiet: bool, cap: usize) -> TestMember {
        try_join(hub, room, name, quiet, cap).unwrap()
    }

    fn try_join(
        hub: &Hub,
        room: &str,
        name: Option<&str>,
        quiet: bool,
        cap: usize,
    ) -> Result<TestMember, JoinError> {
        let (tx, rx) = outbox::channel(cap);
        let (etx, erx) = oneshot::channel();
        let req = JoinRequest {
            room: room.into(),
            name: name.map(Into::into),
            quiet,
            ..JoinRequest::default()
        };
        let (id, name) = hub.join(
            req,
            Outbox {
                frames: tx,
                evict: etx,
            },
        )?;
        Ok(TestMember {
            id,
            name,
            rx,
            evicted: erx,
        })
    }

    fn events(m: &mut TestMember) -> Vec<Event> {
        let mut out = Vec::new();
        while let Ok(Message::Text(t)) = m.rx.try_recv() {
            out.push(serde_json::from_str(&t).unwrap());
        }
        out
    }

    fn chats(m: &mut TestMember) -> Vec<(String, String)> {
        events(m)
            .into_iter()
            .filter_map(|e| match e {
                Event::Chat(c) => Some((c.username, c.message)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn chat_reaches_everyone_but_the_sender() {
        let hub = hub(HubConfig::default());
        let mut a = join(&hub, "lobby", Some("alice"), false, 16);
        let mut b = join(&hub, "lobby", Some("bob"), false, 16);
        let mut c = join(&hub, "lobby", Some("carol"), false, 16);
        hub.chat(
            b.id,
            Post {
                content: "hi".into(),
                reference: Some(9),
                ..Post::default()
            },
        )
        .unwrap();
        let acks: Vec<AckEvent> = events(&mut b)
            .into_iter()
            .filter_map(|e| match e {
                Event::Ack(a) => Some(a),
                _ => None,
            })
            .collect();
        assert_eq!(
            acks,
            vec![AckEvent {
                reference: 9,
                id: 1,
                delivered: 2
            }]
        );
        assert_eq!(chats(&mut a), vec![("bob".into(), "hi".into())]);
        assert_eq!(chats(&mut c), vec![("bob".into(), "hi".into())]);
        assert!(chats(&mut b).is_empty());
        say(&hub, &a, "again").unwrap();
        let ids: Vec<u64> = events(&mut b)
            .into_iter()
            .filter_map(|e| match e {
                Event::Chat(c) => Some(c.id),
                _ => None,
            })
            .collect();
        assert_eq!(ids, vec![2]);
    }

    #[test]
    fn echo_sends_back_to_the_sender() {
        let hub = hub(HubConfig {
            echo: true,
            history: 50,
            ..HubConfig::default()
        });
        let mut a = join(&hub, "lobby", Some("alice"), false, 16);
        say(&hub, &a, "me").unwrap();
        assert_eq!(chats(&mut a), vec![("alice".into(), "me".into())]);
    }

    #[test]
    fn rooms_are_separate_and_empty_rooms_vanish() {
        let hub = hub(HubConfig::default());
        let a = join(&hub, "one", Some("alice"), false, 16);
        let mut b = join(&hub, "two", Some("bob"), false, 16);
        say(&hub, &a, "x").unwrap();
        assert!(chats(&mut b).is_empty());
        hub.leave(a.id);
        assert_eq!(hub.members("one"), 0);
        assert!(!hub.lock().rooms.contains_key("one"));
    }

    #[test]
    fn welcome_join_leave_and_rename_notices() {
        let hub = hub(HubConfig::default());
        let mut a = join(&hub, "lobby", Some("alice"), false, 16);
        let welcome = events(&mut a);
        assert!(
            matches!(&welcome[..], [Event::System(s), Event::Synced(_)] if s.event == Notice::Welcome && s.count == Some(1))
        );
        let b = join(&hub, "lobby", Some("bob"), false, 16);
        hub.rename(b.id, "robert").unwrap();
        hub.leave(b.id);
        let notices: Vec<String> = events(&mut a)
            .into_iter()
            .filter_map(|e| match e {
                Event::System(s) => Some(s.message),
                _ => None,
            })
            .collect();
        assert_eq!(
            notices,
            vec![
                "bob joined the chat",
                "bob is now known as robert",
                "robert left the chat"
            ]
        );
        // The old and the new name are both free again.
        join(&hub, "lobby", Some("bob"), false, 16);
        join(&hub, "lobby", Some("robert"), false, 16);
    }

    #[test]
    fn quiet_members_are_silent_and_hold_no_name() {
        let hub = hub(HubConfig::default());
        let mut a = join(&hub, "lobby", Some("alice"), false, 16);
        events(&mut a);
        let q = join(&hub, "lobby", Some("alice"), true, 16);
        assert_eq!(q.name, "alice");
        say(&hub, &q, "scripted").unwrap();
        hub.leave(q.id);
        assert_eq!(chats(&mut a), vec![("alice".into(), "scripted".into())]);
        assert!(events(&mut a).is_empty());
    }

    #[test]
    fn names_are_unique_and_validated() {
        let hub = hub(HubConfig::default());
        let _a = join(&hub, "lobby", Some("alice"), false, 16);
        assert_eq!(
            try_join(&hub, "other", Some("alice"), false, 16).err(),
            Some(JoinError::NameTaken("alice".into()))
        );
        assert!(matches!(
            try_join(&hub, "lobby", Some("bad name"), false, 16),
            Err(JoinError::InvalidName(_))
        ));
        let b = join(&hub, "lobby", Some("bob"), false, 16);
        assert_eq!(
            hub.rename(b.id, "alice"),
            Err(JoinError::NameTaken("alice".into()))
        );
        let g = join(&hub, "lobby", None, false, 16);
        assert!(g.name.starts_with("guest-"));
    }

    #[test]
    fn a_full_outbox_evicts_only_that_member() {
        let hub = hub(HubConfig::default());
        let mut fast = join(&hub, "lobby", Some("fast"), false, 64);
        let mut slow = join(&hub, "lobby", Some("slow"), false, 2);
        let sender = join(&hub, "lobby", Some("sender"), true, 64);
        events(&mut fast);
        for i in 0..10 {
            say(&hub, &sender, &format!("m{i}")).unwrap();
        }
        assert_eq!(slow.evicted.try_recv(), Ok(close::SLOW_CONSUMER));
        let got = chats(&mut fast);
        assert_eq!(got.len(), 10);
        assert_eq!(hub.members("lobby"), 2);
        // The slow member's queue holds only what fitted; nothing grew.
        assert!(slow.rx.len() <= 2);
    }

    #[test]
    fn leaving_twice_is_harmless() {
        let hub = hub(HubConfig::default());
        let a = join(&hub, "lobby", Some("alice"), false, 16);
        hub.leave(a.id);
        hub.leave(a.id);
        assert_eq!(say(&hub, &a, "ghost"), Err(ChatError::Gone));
        assert_eq!(hub.relay(a.id, Message::text("x")), 0);
    }

    fn history_of(m: &mut TestMember) -> (Vec<String>, Vec<Event>) {
        let mut texts = Vec::new();
        let mut others = Vec::new();
        for e in events(m) {
            match e {
                Event::Chat(c) if c.history => texts.push(c.message),
                Event::System(_) => {}
                other => others.push(other),
            }
        }
        (texts, others)
    }

    fn join_with(hub: &Hub, req: JoinRequest, cap: usize) -> TestMember {
        let (tx, rx) = outbox::channel(cap);
        let (etx, erx) = oneshot::channel();
        let (id, name) = hub
            .join(
                req,
                Outbox {
                    frames: tx,
                    evict: etx,
                },
            )
            .unwrap();
        TestMember {
            id,
            name,
            rx,
            evicted: erx,
        }
    }

    #[test]
    fn joiners_get_recent_history_then_synced() {
        let hub = hub(HubConfig {
            echo: false,
            history: 2,
            ..HubConfig::default()
        });
        let a = join(&hub, "lobby", Some("alice"), false, 16);
        for i in 1..=3 {
            say(&hub, &a, &format!("m{i}")).unwrap();
        }
        let mut b = join(&hub, "lobby", Some("bob"), false, 16);
        let (texts, others) = history_of(&mut b);
        assert_eq!(texts, vec!["m2", "m3"]);
        assert_eq!(
            others,
            vec![Event::Synced(SyncedEvent {
                room: "lobby".into(),
                id: 3
            })]
        );
        // A quiet sender gets no history unless it asks.
        let mut q = join(&hub, "lobby", Some("q"), true, 16);
        assert!(events(&mut q).is_empty());
    }

    #[test]
    fn resume_replays_exactly_what_was_missed_or_reports_a_gap() {
        let store = Arc::new(MemoryStore::new(Keep::messages(3)));
        let hub = Hub::new(HubConfig::default(), store, Arc::default());
        let a = join(&hub, "lobby", Some("alice"), false, 16);
        for i in 1..=5 {
            say(&hub, &a, &format!("m{i}")).unwrap();
        }
        let resume = |since, name: &str| JoinRequest {
            room: "lobby".into(),
            name: Some(name.into()),
            since: Some(since),
            ..JoinRequest::default()
        };
        let mut b = join_with(&hub, resume(3, "bob"), 16);
        assert_eq!(history_of(&mut b).0, vec!["m4", "m5"]);
        // Only m3..m5 are kept: resuming after m1 misses m2, and is told so.
        let mut c = join_with(&hub, resume(1, "carol"), 16);
        let (texts, others) = history_of(&mut c);
        assert_eq!(texts, vec!["m3", "m4", "m5"]);
        assert!(matches!(&others[0], Event::Gap(g) if g.missed == 1));
        // Up to date: nothing replayed, no gap.
        let mut d = join_with(&hub, resume(5, "dave"), 16);
        let (texts, others) = history_of(&mut d);
        assert!(texts.is_empty());
        assert_eq!(others.len(), 1);
    }

    #[test]
    fn a_resume_larger_than_the_outbox_is_cut_with_a_gap() {
        let hub = hub(HubConfig::default());
        let a = join(&hub, "lobby", Some("alice"), false, 64);
        for i in 1..=40 {
            say(&hub, &a, &format!("m{i}")).unwrap();
        }
        let req = JoinRequest {
            room: "lobby".into(),
            name: Some("bob".into()),
            since: Some(0),
            ..JoinRequest::default()
        };
        let mut b = join_with(&hub, req, 20);
        let (texts, others) = history_of(&mut b);
        // 20 frames: welcome, gap, 12 messages... whatever fits, the newest, and a gap first.
        let Event::Gap(gap) = &others[0] else {
            panic!("{others:?}")
        };
        assert_eq!(gap.missed as usize + texts.len(), 40);
        assert_eq!(texts.last().map(String::as_str), Some("m40"));
    }

    #[test]
    fn private_messages_reach_only_their_target() {
        let hub = hub(HubConfig::default());
        let mut a = join(&hub, "one", Some("alice"), false, 16);
        let mut b = join(&hub, "two", Some("bob"), false, 16);
        let mut c = join(&hub, "one", Some("carol"), false, 16);
        events(&mut a);
        events(&mut b);
        events(&mut c);
        let post = Post {
            content: "psst".into(),
            to: Some("bob".into()),
            ..Post::default()
        };
        hub.chat(a.id, post.clone()).unwrap();
        let got = |m: &mut TestMember| -> Vec<ChatEvent> {
            events(m)
                .into_iter()
                .filter_map(|e| match e {
                    Event::Chat(c) => Some(c),
                    _ => None,
                })
                .collect()
        };
        let to_bob = got(&mut b);
        assert_eq!(to_bob.len(), 1);
        assert!(to_bob[0].private && to_bob[0].to.as_deref() == Some("bob"));
        assert_eq!(got(&mut a).len(), 1, "the sender gets its copy");
        assert!(got(&mut c).is_empty());
        let to_nobody = Post {
            to: Some("zed".into()),
            ..post
        };
        assert_eq!(
            hub.chat(a.id, to_nobody),
            Err(ChatError::NoSuchMember("zed".into()))
        );
    }

    #[test]
    fn moving_rooms_rooms_and_who() {
        let hub = hub(HubConfig::default());
        let mut a = join(&hub, "lobby", Some("alice"), false, 32);
        let _b = join(&hub, "lobby", Some("bob"), false, 32);
        hub.move_to(a.id, "dev").unwrap();
        assert!(hub.move_to(a.id, "bad room").is_err());
        let Message::Text(rooms) = hub.rooms() else {
            panic!()
        };
        let rooms: Event = serde_json::from_str(&rooms).unwrap();
        assert_eq!(
            rooms,
            Event::Rooms(RoomsEvent {
                rooms: vec![
                    RoomInfo {
                        name: "dev".into(),
                        count: 1
                    },
                    RoomInfo {
                        name: "lobby".into(),
                        count: 1
                    }
                ]
            })
        );
        let Message::Text(who) = hub.who(a.id) else {
            panic!()
        };
        assert!(who.contains(r#""members":["alice"]"#), "{who}");
        // The name moved with its holder.
        assert!(try_join(&hub, "x", Some("alice"), false, 4).is_err());
        let welcomes = events(&mut a)
            .into_iter()
            .filter(|e| matches!(e, Event::System(s) if s.event == Notice::Welcome))
            .count();
        assert_eq!(welcomes, 2);
    }
}
