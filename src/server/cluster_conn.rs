//! What a connection does differently when this server is one of several sharing Redis
//! (`serve --redis`): before the hub hears of a member (before the handshake is answered), its
//! room's history is made ready and its name is claimed across instances (both async, outside
//! the hub's lock); `who` and `rooms` ask Redis; a private message to a member of another
//! instance is checked there; and what the member holds in Redis is given back when it leaves.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio_tungstenite::tungstenite::Message;

use super::conn::{self, Params, Registration};
use super::Shared;
use crate::cluster::Cluster;
use crate::hub::{JoinError, MemberId};
use crate::protocol::{self, Event, Inbound, WhoEvent};

/// What one connection holds in Redis: its room (presence) and name, unless quiet.
pub(super) struct Seat {
    cluster: Arc<Cluster>,
    room: String,
    name: String,
    quiet: bool,
}

impl Seat {
    /// Gives back the name and presence entry (each Redis call is bounded in time).
    pub(super) async fn release(self) {
        if self.quiet {
            return;
        }
        self.cluster.exit(&self.room, &self.name).await;
        self.cluster.release_name(&self.name).await;
    }
}

/// Makes the tail of the shared log deliver to this server's hub.
pub(super) fn connect_hub(cluster: &Cluster, shared: &Arc<Shared>) {
    let shared = Arc::downgrade(shared);
    cluster.set_sink(Arc::new(move |delivery| {
        if let Some(shared) = shared.upgrade() {
            shared.hub.deliver(delivery);
        }
    }));
}

/// Registers a connection in the hub as [`Registration::new`] does, after preparing the
/// room's history and claiming the name in Redis when the server shares rooms. Runs before the
/// handshake is answered, like the registration itself.
pub(super) async fn register(
    shared: &Shared,
    params: &Params,
    authorized: bool,
    peer: SocketAddr,
) -> Registration {
    if authorized && !shared.config.raw {
        // No more than the hub can send it (its outbox).
        let limit = match params.since {
            Some(_) => shared.config.outbox_frames,
            None => params.history.unwrap_or(shared.config.history),
        };
        let limit = limit.min(shared.config.outbox_frames);
        conn::prepare_history(shared, &params.room, params.since, limit).await;
    }
    let Some(cluster) = shared.config.cluster.clone() else {
        return Registration::new(shared, params, authorized, peer);
    };
    let raw = shared.config.raw;
    // Refused connections and invalid names or rooms are answered by the hub as usual;
    // nothing to claim for them.
    if !authorized
        || protocol::validate_room(&params.room).is_err()
        || params
            .name
            .as_deref()
            .is_some_and(|n| protocol::validate_name(n).is_err())
    {
        return Registration::new(shared, params, authorized, peer);
    }
    let quiet = params.quiet || raw;
    let limit = shared.config.outbox_frames;
    cluster
        .prepare_room(&params.room, params.since.filter(|_| !raw), limit)
        .await;
    let mut params = params.clone();
    let name = if quiet {
        params.name.clone().unwrap_or_default()
    } else {
        match claim(&cluster, params.name.as_deref()).await {
            Ok(name) => name,
            Err(e) => return Registration::refused(shared, &e, peer),
        }
    };
    // The other instances' members, counted before the hub hears of this one: they are in
    // its welcome and in the acks of what it sends (`send --min-recipients`), quiet or not.
    cluster.census(&params.room).await;
    if !quiet {
        params.name = Some(name.clone());
        // Before the hub: once the member sees its welcome, `who` anywhere lists it.
        cluster.enter(&params.room, &name).await;
    }
    let seat = Seat {
        cluster,
        room: params.room.clone(),
        name,
        quiet,
    };
    let registration = Registration::new(shared, &params, authorized, peer);
    if registration.is_member() {
        registration.with_seat(seat)
    } else {
        seat.release().await;
        registration
    }
}

/// Claims `name` (or a new guest name) across instances.
async fn claim(cluster: &Cluster, name: Option<&str>) -> Result<String, JoinError> {
    if let Some(name) = name {
        return if cluster.claim_name(name).await {
            Ok(name.to_owned())
        } else {
            Err(JoinError::NameTaken(name.to_owned()))
        };
    }
    // Guest numbers are per instance, so guests get a random suffix instead.
    let mut guest = String::new();
    for _ in 0..8 {
        guest = format!("guest-{:06x}", fastrand::u32(..0x100_0000));
        if cluster.claim_name(&guest).await {
            return Ok(guest);
        }
    }
    Err(JoinError::NameTaken(guest))
}

/// Handles a text frame, doing in Redis what must be global (names, room moves, `who`);
/// everything else is handled as without Redis.
pub(super) async fn handle_text(
    shared: &Shared,
    id: MemberId,
    seat: &mut Seat,
    text: &str,
) -> Option<Message> {
    let hub = &shared.hub;
    let cluster = seat.cluster.clone();
    let error = |e: JoinError| Some(Event::error(e.code(), e.to_string(), None).to_frame());
    match protocol::decode(text) {
        Ok(Inbound::SetName { name }) if !seat.quiet && name != seat.name => {
            if let Err(why) = protocol::validate_name(&name) {
                return error(JoinError::InvalidName(why));
            }
            if !cluster.claim_name(&name).await {
                return error(JoinError::NameTaken(name));
            }
            cluster.enter(&seat.room, &name).await;
            match hub.rename(id, &name) {
                Ok(()) => {
                    let old = std::mem::replace(&mut seat.name, name);
                    cluster.exit(&seat.room, &old).await;
                    cluster.release_name(&old).await;
                    None
                }
                Err(e) => {
                    cluster.exit(&seat.room, &name).await;
                    cluster.release_name(&name).await;
                    error(e)
                }
            }
        }
        Ok(Inbound::Join { room }) if room != seat.room => {
            if let Err(why) = protocol::validate_room(&room) {
                return error(JoinError::InvalidRoom(why));
            }
            cluster.prepare_room(&room, None, 0).await;
            if !seat.quiet {
                cluster.census(&room).await;
                cluster.enter(&room, &seat.name).await;
            }
            match hub.move_to(id, &room) {
                Ok(()) => {
                    let old = std::mem::replace(&mut seat.room, room);
                    if !seat.quiet {
                        cluster.exit(&old, &seat.name).await;
                    }
                    None
                }
                Err(e) => {
                    if !seat.quiet {
                        cluster.exit(&room, &seat.name).await;
                    }
                    error(e)
                }
            }
        }
        Ok(Inbound::Who { after }) => {
            // A member who looks may have noticed an instance gone: its members' leave is
            // announced (through the log), and the room counted again (a changed count reaches
            // the room as a presence event, before this answer).
            cluster.reap_room(&seat.room).await;
            cluster.census(&seat.room).await;
            let here = hub.who(id, after.as_deref());
            let Some(members) = cluster.who(&seat.room).await else {
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
        Ok(Inbound::Rooms) => Some(rooms(shared, &cluster).await),
        Ok(Inbound::Chat {
            to: Some(to),
            reference,
            ..
        }) if !hub.has_name(&to) => match cluster.is_held(&to).await {
            // The hub sends it through the log to the instance that has the member.
            Ok(true) => conn::handle_text(shared, id, text),
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
        decoded => conn::handle(shared, id, decoded),
    }
}

/// Every room with members on some instance, with its count of all instances; this instance's
/// rooms only while Redis is away.
async fn rooms(shared: &Shared, cluster: &Cluster) -> Message {
    let Some(mut rooms) = cluster.rooms().await else {
        return shared.hub.rooms();
    };
    for (room, here) in shared.hub.local_rooms() {
        *rooms.entry(room).or_default() += here;
    }
    crate::hub::rooms_event(rooms.into_iter().collect())
}
