//! The broadcast core: rooms, members, names, message ids and fan-out. No sockets, no I/O.
//!
//! A member is known to the hub only as a bounded outbox of already-encoded frames. Every event
//! is encoded once and the same bytes are queued for every recipient. An outbox that is full
//! belongs to a slow consumer: the member is evicted (its connection is told to close with
//! [`close::SLOW_CONSUMER`]) rather than allowed to stall the room or grow memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use crate::protocol::{self, close, ChatEvent, Event, Notice, SystemEvent};

/// Identifies one connection for its whole life in the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MemberId(u64);

/// How the hub reaches a member: its frame queue, and a one-shot to ask its connection to close.
pub struct Outbox {
    pub frames: mpsc::Sender<Message>,
    pub evict: oneshot::Sender<u16>,
}

/// What a connection asks for when it joins.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub room: String,
    /// `None` gets a generated `guest-N` name.
    pub name: Option<String>,
    /// A quiet member (a one-shot sender) is not announced, not counted, and holds no name.
    pub quiet: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinError {
    NameTaken(String),
    InvalidName(String),
}

impl std::fmt::Display for JoinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JoinError::NameTaken(n) => write!(f, "the name '{n}' is already taken"),
            JoinError::InvalidName(why) => write!(f, "invalid name: {why}"),
        }
    }
}

/// A chat message the hub accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Posted {
    pub id: u64,
    /// Members the message was queued for.
    pub delivered: usize,
}

/// Hub settings fixed at start.
#[derive(Debug, Clone, Copy, Default)]
pub struct HubConfig {
    /// Send each message back to its sender too.
    pub echo: bool,
}

pub struct Hub {
    config: HubConfig,
    next_member: AtomicU64,
    /// One std mutex for all rooms. It is never held across an `.await` (the hub has none):
    /// fan-out under it is a loop of non-blocking `try_send`s, so contention stays short.
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

#[derive(Default)]
struct Room {
    members: HashMap<MemberId, Member>,
    /// Id of the last chat message in this room.
    last_id: u64,
}

struct Member {
    name: String,
    quiet: bool,
    frames: mpsc::Sender<Message>,
    evict: Option<oneshot::Sender<u16>>,
}

impl Room {
    fn visible(&self) -> usize {
        self.members.values().filter(|m| !m.quiet).count()
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
                Err(mpsc::error::TrySendError::Full(_)) => slow.push(id),
                // The connection is already ending; it removes itself.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        (delivered, slow)
    }
}

fn system(event: Notice, room: &str, name: &str, message: String, count: usize) -> Message {
    Event::System(SystemEvent {
        message,
        timestamp: protocol::timestamp(),
        event,
        room: room.to_owned(),
        name: Some(name.to_owned()),
        count: Some(count),
    })
    .to_frame()
}

impl Hub {
    pub fn new(config: HubConfig) -> Hub {
        Hub {
            config,
            next_member: AtomicU64::new(1),
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock would leave the state as it was between two whole
        // operations (every mutation below is completed before anything can panic), so a
        // poisoned lock is still consistent and is used as is.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a member to a room. A visible member gets a welcome and the room a join notice,
    /// both queued before any later message can reach the new member.
    pub fn join(&self, req: JoinRequest, outbox: Outbox) -> Result<(MemberId, String), JoinError> {
        let id = MemberId(self.next_member.fetch_add(1, Ordering::Relaxed));
        let name = match req.name {
            Some(n) => {
                protocol::validate_name(&n).map_err(JoinError::InvalidName)?;
                n
            }
            None => format!("guest-{}", id.0),
        };
        let mut guard = self.lock();
        let state = &mut *guard;
        if !req.quiet {
            if state.names.contains_key(&name) {
                return Err(JoinError::NameTaken(name));
            }
            state.names.insert(name.clone(), id);
        }
        state.rooms_by_member.insert(id, req.room.clone());
        let room = state.rooms.entry(req.room.clone()).or_default();
        room.members.insert(
            id,
            Member {
                name: name.clone(),
                quiet: req.quiet,
                frames: outbox.frames.clone(),
                evict: Some(outbox.evict),
            },
        );
        if !req.quiet {
            let count = room.visible();
            let others = if count == 1 {
                "you are the only one here".to_owned()
            } else {
                format!("{count} people here")
            };
            let welcome = system(
                Notice::Welcome,
                &req.room,
                &name,
                format!("Welcome to wschat, {name}! {others}."),
                count,
            );
            // A fresh outbox has room for its first frame; if not, the member is already gone.
            let _ = outbox.frames.try_send(welcome);
            let notice = system(
                Notice::Join,
                &req.room,
                &name,
                format!("{name} joined the chat"),
                count,
            );
            let (_, slow) = room.fan_out(&notice, Some(id));
            evict_all(state, slow);
        }
        Ok((id, name))
    }

    /// Removes a member (a no-op if it was already evicted) and tells its room.
    pub fn leave(&self, id: MemberId) {
        let mut guard = self.lock();
        if let Some(slow) = remove(&mut guard, id) {
            evict_all(&mut guard, slow);
        }
    }

    /// Posts a chat message from `from` to its room. `None` if `from` is no longer a member.
    pub fn chat(&self, from: MemberId, content: String) -> Option<Posted> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let room_name = state.rooms_by_member.get(&from)?.clone();
        let room = state.rooms.get_mut(&room_name)?;
        let username = room.members.get(&from)?.name.clone();
        room.last_id += 1;
        let id = room.last_id;
        let frame = Event::Chat(ChatEvent {
            id,
            room: room_name,
            username,
            message: content,
            timestamp: protocol::timestamp(),
        })
        .to_frame();
        let skip = (!self.config.echo).then_some(from);
        let (delivered, slow) = room.fan_out(&frame, skip);
        evict_all(state, slow);
        Some(Posted { id, delivered })
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
        evict_all(state, slow);
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
        let notice = system(
            Notice::Rename,
            &room_name,
            new,
            format!("{old} is now known as {new}"),
            room.visible(),
        );
        let (_, slow) = room.fan_out(&notice, None);
        evict_all(state, slow);
        Ok(())
    }

    /// Number of members in a room, quiet ones included.
    pub fn members(&self, room: &str) -> usize {
        self.lock().rooms.get(room).map_or(0, |r| r.members.len())
    }
}

/// Removes a member, returning the members found slow while announcing it; `None` if absent.
fn remove(state: &mut State, id: MemberId) -> Option<Vec<MemberId>> {
    let room_name = state.rooms_by_member.remove(&id)?;
    let room = state.rooms.get_mut(&room_name)?;
    let member = room.members.remove(&id)?;
    if !member.quiet && state.names.get(&member.name) == Some(&id) {
        state.names.remove(&member.name);
    }
    let mut slow = Vec::new();
    if room.members.is_empty() {
        // An empty room leaves nothing behind.
        state.rooms.remove(&room_name);
    } else if !member.quiet {
        let name = &member.name;
        let notice = system(
            Notice::Leave,
            &room_name,
            name,
            format!("{name} left the chat"),
            room.visible(),
        );
        slow = room.fan_out(&notice, None).1;
    }
    Some(slow)
}

/// Evicts slow members; announcing their departure may find more, so this runs to a fixpoint.
/// Each round removes at least one member, so it ends.
fn evict_all(state: &mut State, mut slow: Vec<MemberId>) {
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
        if let Some(more) = remove(state, id) {
            slow.extend(more);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TestMember {
        id: MemberId,
        name: String,
        rx: mpsc::Receiver<Message>,
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
        let (tx, rx) = mpsc::channel(cap);
        let (etx, erx) = oneshot::channel();
        let req = JoinRequest {
            room: room.into(),
            name: name.map(Into::into),
            quiet,
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
        let hub = Hub::new(HubConfig::default());
        let mut a = join(&hub, "lobby", Some("alice"), false, 16);
        let mut b = join(&hub, "lobby", Some("bob"), false, 16);
        let mut c = join(&hub, "lobby", Some("carol"), false, 16);
        let posted = hub.chat(b.id, "hi".into()).unwrap();
        assert_eq!(
            posted,
            Posted {
                id: 1,
                delivered: 2
            }
        );
        assert_eq!(chats(&mut a), vec![("bob".into(), "hi".into())]);
        assert_eq!(chats(&mut c), vec![("bob".into(), "hi".into())]);
        assert!(chats(&mut b).is_empty());
        assert_eq!(hub.chat(a.id, "again".into()).unwrap().id, 2);
    }

    #[test]
    fn echo_sends_back_to_the_sender() {
        let hub = Hub::new(HubConfig { echo: true });
        let mut a = join(&hub, "lobby", Some("alice"), false, 16);
        assert_eq!(hub.chat(a.id, "me".into()).unwrap().delivered, 1);
        assert_eq!(chats(&mut a), vec![("alice".into(), "me".into())]);
    }

    #[test]
    fn rooms_are_separate_and_empty_rooms_vanish() {
        let hub = Hub::new(HubConfig::default());
        let a = join(&hub, "one", Some("alice"), false, 16);
        let mut b = join(&hub, "two", Some("bob"), false, 16);
        assert_eq!(hub.chat(a.id, "x".into()).unwrap().delivered, 0);
        assert!(chats(&mut b).is_empty());
        hub.leave(a.id);
        assert_eq!(hub.members("one"), 0);
        assert!(!hub.lock().rooms.contains_key("one"));
    }

    #[test]
    fn welcome_join_leave_and_rename_notices() {
        let hub = Hub::new(HubConfig::default());
        let mut a = join(&hub, "lobby", Some("alice"), false, 16);
        let welcome = events(&mut a);
        assert!(
            matches!(&welcome[..], [Event::System(s)] if s.event == Notice::Welcome && s.count == Some(1))
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
        let hub = Hub::new(HubConfig::default());
        let mut a = join(&hub, "lobby", Some("alice"), false, 16);
        events(&mut a);
        let q = join(&hub, "lobby", Some("alice"), true, 16);
        assert_eq!(q.name, "alice");
        hub.chat(q.id, "scripted".into());
        hub.leave(q.id);
        assert_eq!(chats(&mut a), vec![("alice".into(), "scripted".into())]);
        assert!(events(&mut a).is_empty());
    }

    #[test]
    fn names_are_unique_and_validated() {
        let hub = Hub::new(HubConfig::default());
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
        let hub = Hub::new(HubConfig::default());
        let mut fast = join(&hub, "lobby", Some("fast"), false, 64);
        let mut slow = join(&hub, "lobby", Some("slow"), false, 2);
        let sender = join(&hub, "lobby", Some("sender"), true, 64);
        events(&mut fast);
        for i in 0..10 {
            hub.chat(sender.id, format!("m{i}"));
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
        let hub = Hub::new(HubConfig::default());
        let a = join(&hub, "lobby", Some("alice"), false, 16);
        hub.leave(a.id);
        hub.leave(a.id);
        assert!(hub.chat(a.id, "ghost".into()).is_none());
        assert_eq!(hub.relay(a.id, Message::text("x")), 0);
    }
}
