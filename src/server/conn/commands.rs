//! What a connection does with each frame in JSON mode: chat, names, rooms, `who`; with
//! `serve --redis`, what must be global (names, room moves, `who`, `rooms`, private messages
//! to other instances) is done in Redis first.

use std::collections::BTreeSet;

use tokio_tungstenite::tungstenite::Message;

use super::register::Seat;
use crate::hub::directory::Directory;
use crate::hub::{ChatError, JoinError, MemberId, Post};
use crate::metrics::Metrics;
use crate::protocol::{self, DecodeError, Event, Inbound, WhoEvent};
use crate::server::Shared;

/// Handles one JSON-mode text frame; returns the reply for the sender, if any.
pub(crate) fn handle_text(shared: &Shared, id: MemberId, text: &str) -> Option<Message> {
    handle(shared, id, protocol::decode(text))
}

/// Handles one decoded client frame (or why it could not be decoded).
pub(crate) fn handle(
    shared: &Shared,
    id: MemberId,
    decoded: Result<Inbound, DecodeError>,
) -> Option<Message> {
    let hub = &shared.hub;
    match decoded {
        Ok(Inbound::Chat {
            content,
            reference,
            to,
            action,
        }) => {
            if content.trim().is_empty() {
                return Some(Event::error("empty_message", "empty message", reference).to_frame());
            }
            // Bounded as the server will send it, not as it came: escaping can make a message
            // six times larger, and every frame the server makes must stay within its limits.
            let encoded = protocol::escaped_len(&content);
            let limit = shared.config.max_message_bytes;
            if encoded > limit {
                Metrics::inc(&shared.metrics.too_large);
                let why = format!(
                    "message too large: {encoded} bytes once encoded, the limit is {limit}; send less, or fewer control characters"
                );
                return Some(Event::error("too_large", why, reference).to_frame());
            }
            let post = Post {
                content,
                to,
                action,
                reference,
            };
            match hub.chat(id, post) {
                Ok(()) => None,
                Err(ChatError::NoSuchMember(name)) => Some(
                    Event::error(
                        "no_such_member",
                        format!("nobody is called '{name}'"),
                        reference,
                    )
                    .to_frame(),
                ),
                // This member was just evicted; its connection is closing.
                Err(ChatError::Gone) => None,
            }
        }
        Ok(Inbound::SetName { name }) => hub
            .rename(id, &name)
            .err()
            .map(|e| Event::error(e.code(), e.to_string(), None).to_frame()),
        Ok(Inbound::Join { room }) => hub
            .move_to(id, &room)
            .err()
            .map(|e| Event::error(e.code(), e.to_string(), None).to_frame()),
        Ok(Inbound::Rooms) => Some(hub.rooms()),
        Ok(Inbound::Who { after }) => Some(Event::Who(hub.who(id, after.as_deref())).to_frame()),
        Err(e) => Some(Event::error(e.code(), e.to_string(), None).to_frame()),
    }
}

/// Handles a text frame, doing in Redis what must be global (names, room moves, `who`);
/// everything else is handled as without Redis.
pub(crate) async fn handle_shared_text(
    shared: &Shared,
    id: MemberId,
    seat: &mut Seat,
    text: &str,
) -> Option<Message> {
    let hub = &shared.hub;
    let directory = seat.directory.clone();
    let error = |e: JoinError| Some(Event::error(e.code(), e.to_string(), None).to_frame());
    match protocol::decode(text) {
        Ok(Inbound::SetName { name }) if !seat.quiet && name != seat.name => {
            if let Err(why) = protocol::validate_name(&name) {
                return error(JoinError::InvalidName(why));
            }
            if !directory.claim_name(&name).await {
                return error(JoinError::NameTaken(name));
            }
            directory.enter(&seat.room, &name).await;
            match hub.rename(id, &name) {
                Ok(()) => {
                    let old = std::mem::replace(&mut seat.name, name);
                    directory.exit(&seat.room, &old).await;
                    directory.release_name(&old).await;
                    None
                }
                Err(e) => {
                    directory.exit(&seat.room, &name).await;
                    directory.release_name(&name).await;
                    error(e)
                }
            }
        }
        Ok(Inbound::Join { room }) if room != seat.room => {
            if let Err(why) = protocol::validate_room(&room) {
                return error(JoinError::InvalidRoom(why));
            }
            directory.prepare_room(&room, None, 0).await;
            if !seat.quiet {
                directory.census(&room).await;
                directory.enter(&room, &seat.name).await;
            }
            match hub.move_to(id, &room) {
                Ok(()) => {
                    let old = std::mem::replace(&mut seat.room, room);
                    if !seat.quiet {
                        directory.exit(&old, &seat.name).await;
                    }
                    None
                }
                Err(e) => {
                    if !seat.quiet {
                        directory.exit(&room, &seat.name).await;
                    }
                    error(e)
                }
            }
        }
        Ok(Inbound::Who { after }) => {
            // A member who looks may have noticed an instance gone: its members' leave is
            // announced (through the log), and the room counted again (a changed count reaches
            // the room as a presence event, before this answer).
            directory.reap_room(&seat.room).await;
            directory.census(&seat.room).await;
            let here = hub.who(id, after.as_deref());
            let Some(members) = directory.who(&seat.room).await else {
                // Redis is away: this instance's members only.
                return Some(Event::Who(here).to_frame());
            };
            let names: BTreeSet<String> = members.into_iter().collect();
            let (members, next) = crate::hub::names_page(&names, after.as_deref());
            Some(
                Event::Who(WhoEvent {
                    room: seat.room.clone(),
                    members,
                    total: names.len() + here.quiet.len(),
                    quiet: here.quiet,
                    next,
                })
                .to_frame(),
            )
        }
        Ok(Inbound::Rooms) => Some(rooms(shared, &*directory).await),
        Ok(Inbound::Chat {
            to: Some(to),
            reference,
            ..
        }) if !hub.has_name(&to) => match directory.is_held(&to).await {
            // The hub sends it through the log to the instance that has the member.
            Ok(true) => handle_text(shared, id, text),
            Ok(false) => Some(
                Event::error(
                    "no_such_member",
                    format!("nobody is called '{to}'"),
                    reference,
                )
                .to_frame(),
            ),
            Err(e) => {
                tracing::debug!("private message not sent: {e:#}");
                Some(
                    Event::error(
                        "unavailable",
                        "members of other instances cannot be reached right now; try again",
                        reference,
                    )
                    .to_frame(),
                )
            }
        },
        decoded => handle(shared, id, decoded),
    }
}

/// Every room with members on some instance, with its count of all instances; this instance's
/// rooms only while Redis is away.
async fn rooms(shared: &Shared, directory: &dyn Directory) -> Message {
    let Some(mut rooms) = directory.rooms().await else {
        return shared.hub.rooms();
    };
    for (room, here) in shared.hub.local_rooms() {
        *rooms.entry(room).or_default() += here;
    }
    crate::hub::rooms_event(rooms.into_iter().collect())
}
