//! Log and room-stream entries: what a stream entry holds, and what it is to the hub.

use redis::streams::StreamId;

use crate::hub::relay::{Announcement, Delivery, NoticeEntry, Origin};
use crate::hub::MemberId;
use crate::protocol::{ChatEvent, Notice};

/// Reads one room-stream entry (`{id}-0` with username, message, timestamp, action).
pub(super) fn room_entry(room: &str, entry: &StreamId) -> Option<ChatEvent> {
    let id = entry.id.split('-').next()?.parse().ok()?;
    Some(ChatEvent {
        id,
        room: room.to_owned(),
        username: entry.get("username")?,
        message: entry.get::<String>("message")?.into(),
        timestamp: entry.get("timestamp")?,
        to: None,
        private: false,
        action: entry.get::<String>("action").is_some_and(|a| a == "1"),
        history: false,
        replayed: Default::default(),
    })
}

/// Reads one log entry (a room message, a private message or a notice), for instance `me`.
/// `here` says whether a post of `me` (by its serial) was delivered to its members already.
pub(super) fn log_entry(
    me: &str,
    entry: &StreamId,
    here: impl FnOnce(Option<u64>) -> bool,
) -> Option<Delivery> {
    let room: String = entry.get("room")?;
    let instance: String = entry.get("instance").unwrap_or_default();
    let mine = instance == me;
    let here = || {
        let flagged = entry.get::<String>("local").is_some_and(|l| l == "1");
        // Only asked of this instance's own posts (the serials are per instance).
        mine && (here(entry.get("serial")) || flagged)
    };
    let member = || entry.get::<u64>("member").map(MemberId::from_raw);
    let kind: Option<String> = entry.get("kind");
    if kind.as_deref() == Some("notice") {
        let notice = match entry.get::<String>("event")?.as_str() {
            "join" => Notice::Join,
            "leave" => Notice::Leave,
            "rename" => Notice::Rename,
            _ => return None,
        };
        let counts: String = entry.get("counts").unwrap_or_default();
        let mut local = 0;
        let mut others = 0;
        for part in counts.split_whitespace() {
            let (id, n) = part.split_once('=')?;
            let n: usize = n.parse().ok()?;
            if id == me {
                local = n;
            } else {
                others += n;
            }
        }
        let origin = Origin {
            member: member()?,
            reference: None,
            delivered_locally: here(),
        };
        let announcement = Announcement {
            room,
            notice,
            name: entry.get("name")?,
            message: entry.get("message")?,
            timestamp: entry.get("timestamp")?,
            local,
            origin,
        };
        return Some(Delivery::Notice(NoticeEntry {
            announcement,
            others,
            mine: mine.then_some(origin),
        }));
    }
    let to: Option<String> = entry.get("to");
    let private = kind.as_deref() == Some("private");
    let message = ChatEvent {
        id: if private { 0 } else { entry.get("id")? },
        room,
        username: entry.get("username")?,
        message: entry.get::<String>("message")?.into(),
        timestamp: entry.get("timestamp")?,
        to: if private { Some(to?) } else { None },
        private,
        action: entry.get::<String>("action").is_some_and(|a| a == "1"),
        history: false,
        replayed: Default::default(),
    };
    let origin = if mine {
        Some(Origin {
            member: member()?,
            reference: entry.get::<String>("ref").and_then(|r| r.parse().ok()),
            delivered_locally: here(),
        })
    } else {
        None
    };
    Some(if private {
        // Only the instance that held the target's name when the log took the message (any
        // that has the name, for an entry that does not say).
        let holder: String = entry.get("holder").unwrap_or_default();
        Delivery::Private(message, origin, holder.is_empty() || holder == me)
    } else {
        Delivery::Chat(message, origin)
    })
}

pub(super) fn flag(on: bool) -> &'static str {
    if on {
        "1"
    } else {
        "0"
    }
}
