//! A connection's place in the hub, taken before the handshake is answered: its room's
//! history made ready, its name claimed across instances when the server shares rooms
//! (`serve --redis`), then the hub's welcome or a refusal to send once upgraded; and what it
//! holds in Redis, given back when it leaves.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::Params;
use crate::hub::directory::Directory;
use crate::hub::{JoinError, JoinRequest, Link, MemberId};
use crate::metrics::Metrics;
use crate::outbox;
use crate::protocol::{self, close, Event};
use crate::server::Shared;

/// A connection's place in the hub, taken before the handshake is answered: whatever is
/// relayed after a client sees its `101` reaches it, in raw mode too.
pub(crate) struct Registration {
    pub(super) member: Option<MemberId>,
    pub(super) frames: outbox::Sender,
    pub(super) outbox: outbox::Receiver,
    pub(super) evicted: oneshot::Receiver<u16>,
    /// Why the connection is refused after the upgrade (close code and reason), if it is.
    pub(super) refusal: Option<(u16, &'static str)>,
    /// What the member holds in Redis when the server shares rooms (`--redis`); boxed, as
    /// most servers have none and every connection would carry its size.
    pub(super) seat: Option<Box<Seat>>,
}

impl Registration {
    /// Joins the hub as the handshake asked, or prepares the refusal to send once upgraded.
    pub fn new(shared: &Shared, params: &Params, authorized: bool, peer: SocketAddr) -> Self {
        Metrics::inc(&shared.metrics.connections_total);
        Metrics::inc(&shared.metrics.connections_open);
        let (frames, outbox) =
            outbox::bounded(shared.config.outbox_frames, shared.config.outbox_bytes);
        let (evict, evicted) = oneshot::channel();
        let mut registration = Registration {
            member: None,
            frames,
            outbox,
            evicted,
            refusal: None,
            seat: None,
        };
        let refuse = |registration: &mut Registration, event: Event, code, reason| {
            let _ = registration.frames.try_send(event.to_frame());
            registration.refusal = Some((code, reason));
        };
        if !authorized {
            Metrics::inc(&shared.metrics.auth_failures);
            tracing::info!(%peer, "refused: missing or wrong token");
            let event = Event::error("unauthorized", "missing or wrong token", None);
            refuse(
                &mut registration,
                event,
                close::UNAUTHORIZED,
                "missing or wrong token",
            );
            return registration;
        }
        let raw = shared.config.raw;
        let request = JoinRequest {
            room: params.room.clone(),
            name: params.name.clone(),
            // A raw relay announces nobody and replays nothing.
            quiet: params.quiet || raw,
            since: params.since.filter(|_| !raw),
            history: params.history.filter(|_| !raw),
            epoch: params.epoch.clone().filter(|_| !raw),
        };
        let outbox = Link {
            frames: registration.frames.clone(),
            evict,
        };
        match shared.hub.join(request, outbox) {
            Ok((id, name)) => {
                tracing::info!(%peer, name, room = params.room, quiet = params.quiet, "connected");
                registration.member = Some(id);
            }
            Err(e) => {
                tracing::info!(%peer, "refused: {e}");
                let event = Event::error(e.code(), e.to_string(), None);
                refuse(
                    &mut registration,
                    event,
                    close::NAME_REJECTED,
                    "name or room rejected",
                );
            }
        }
        registration
    }

    /// A refusal decided before the hub was asked (a name taken on another instance).
    pub fn refused(shared: &Shared, error: &JoinError, peer: SocketAddr) -> Self {
        Metrics::inc(&shared.metrics.connections_total);
        Metrics::inc(&shared.metrics.connections_open);
        let (frames, outbox) =
            outbox::bounded(shared.config.outbox_frames, shared.config.outbox_bytes);
        let (_, evicted) = oneshot::channel();
        tracing::info!(%peer, "refused: {error}");
        let event = Event::error(error.code(), error.to_string(), None);
        let _ = frames.try_send(event.to_frame());
        Registration {
            member: None,
            frames,
            outbox,
            evicted,
            refusal: Some((close::NAME_REJECTED, "name or room rejected")),
            seat: None,
        }
    }

    /// Whether the hub took the member.
    pub fn is_member(&self) -> bool {
        self.member.is_some()
    }

    /// Keeps what the member holds in Redis, to give it back when the connection ends.
    pub fn with_seat(mut self, seat: Seat) -> Self {
        self.seat = Some(Box::new(seat));
        self
    }

    /// Gives the place up when the upgrade never happened.
    pub fn abandon(self, shared: &Shared) {
        if let Some(id) = self.member {
            shared.hub.leave(id);
        }
        if let Some(seat) = self.seat {
            tokio::spawn(seat.release());
        }
        Metrics::dec(&shared.metrics.connections_open);
    }
}

/// What one connection holds in Redis: its room (presence) and name, unless quiet.
pub(crate) struct Seat {
    pub(super) directory: Arc<dyn Directory>,
    pub(super) room: String,
    pub(super) name: String,
    pub(super) quiet: bool,
}

impl Seat {
    /// Gives back the name and presence entry (each Redis call is bounded in time).
    pub(crate) async fn release(self) {
        if self.quiet {
            return;
        }
        self.directory.exit(&self.room, &self.name).await;
        self.directory.release_name(&self.name).await;
    }
}

/// Registers a connection in the hub as [`Registration::new`] does, after preparing the
/// room's history and claiming the name in Redis when the server shares rooms. Runs before the
/// handshake is answered, like the registration itself.
pub(crate) async fn register(
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
        prepare_history(shared, &params.room, params.since, limit).await;
    }
    let Some(directory) = shared.directory.clone() else {
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
    directory
        .prepare_room(&params.room, params.since.filter(|_| !raw), limit)
        .await;
    let mut params = params.clone();
    let name = if quiet {
        params.name.clone().unwrap_or_default()
    } else {
        match claim(&*directory, params.name.as_deref()).await {
            Ok(name) => name,
            Err(e) => return Registration::refused(shared, &e, peer),
        }
    };
    // The other instances' members, counted before the hub hears of this one: they are in
    // its welcome and in the acks of what it sends (`send --min-recipients`), quiet or not.
    directory.census(&params.room).await;
    if !quiet {
        params.name = Some(name.clone());
        // Before the hub: once the member sees its welcome, `who` anywhere lists it.
        directory.enter(&params.room, &name).await;
    }
    let seat = Seat {
        directory,
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
async fn claim(directory: &dyn Directory, name: Option<&str>) -> Result<String, JoinError> {
    if let Some(name) = name {
        return if directory.claim_name(name).await {
            Ok(name.to_owned())
        } else {
            Err(JoinError::NameTaken(name.to_owned()))
        };
    }
    // Guest numbers are per instance, so guests get a random suffix instead.
    let mut guest = String::new();
    for _ in 0..8 {
        guest = format!("guest-{:06x}", fastrand::u32(..0x100_0000));
        if directory.claim_name(&guest).await {
            return Ok(guest);
        }
    }
    Err(JoinError::NameTaken(guest))
}

/// Makes `room`'s history ready for a member about to enter it (see [`Store::prepare`]): it
/// may come from disk, so it is read on a blocking thread, not under the hub's lock.
///
/// [`Store::prepare`]: crate::store::Store::prepare
pub(crate) async fn prepare_history(shared: &Shared, room: &str, since: Option<u64>, limit: usize) {
    // An invalid room is refused by the hub.
    if !shared.store.reads_ahead() || protocol::validate_room(room).is_err() {
        return;
    }
    let (store, room) = (shared.store.clone(), room.to_owned());
    if let Err(e) = tokio::task::spawn_blocking(move || store.prepare(&room, since, limit)).await {
        tracing::error!("cannot read history ahead: {e}");
    }
}
