//! One WebSocket connection: a reader that feeds the hub and a writer that drains the outbox.
//!
//! The reader owns the connection's life: it joins the hub, handles each frame, and decides
//! when to close. The writer only writes: everything queued is fed to the socket and flushed
//! once, so a burst of messages costs one write, not one per message.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, StreamExt};
use futures_util::SinkExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::cluster_conn::Seat;
use super::limits::{RateLimit, Verdict};
use super::Shared;
use crate::hub::{ChatError, JoinError, JoinRequest, MemberId, Outbox, Post};
use crate::metrics::Metrics;
use crate::outbox;
use crate::protocol::{self, close, Event, Inbound};

/// How long a connection waits for the peer's close frame after sending its own.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// What a client asked for in the handshake URL's query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Params {
    pub name: Option<String>,
    pub room: String,
    pub quiet: bool,
    /// Resume after this message id.
    pub since: Option<u64>,
    /// Replay this many recent messages instead of the server's default.
    pub history: Option<usize>,
}

impl Params {
    pub fn from_query(query: &str) -> Params {
        let mut params = Params {
            name: None,
            room: protocol::DEFAULT_ROOM.to_owned(),
            quiet: false,
            since: None,
            history: None,
        };
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "name" | "username" if !value.is_empty() => params.name = Some(value.into_owned()),
                "room" if !value.is_empty() => params.room = value.into_owned(),
                "quiet" => params.quiet = matches!(&*value, "" | "1" | "true" | "yes"),
                // An unreadable number is ignored: the client gets the default history.
                // Ids fit in SQLite's signed 64 bits; a larger one is nonsense, and clamping it
                // keeps `since + 1` from overflowing anywhere.
                "since" => params.since = value.parse::<u64>().ok().map(|v| v.min(i64::MAX as u64)),
                "history" => params.history = value.parse().ok(),
                _ => {}
            }
        }
        params
    }
}

/// Why a connection ended, for the log.
enum Ending {
    ClientClosed,
    ClientVanished(String),
    ClosedByServer(u16, &'static str),
    CloseTimedOut,
}

impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ending::ClientClosed => write!(f, "client closed"),
            Ending::ClientVanished(e) => write!(f, "client vanished ({e})"),
            Ending::ClosedByServer(code, why) => write!(f, "closed by server ({code}: {why})"),
            Ending::CloseTimedOut => write!(f, "client did not answer the close frame"),
        }
    }
}

/// The connection's half of the close handshake: ask the writer once, then wait a bounded time.
struct Closer {
    request: Option<oneshot::Sender<CloseFrame>>,
    deadline: Option<Instant>,
    ending: Option<Ending>,
}

impl Closer {
    fn close(&mut self, code: u16, reason: &'static str) {
        if let Some(request) = self.request.take() {
            let _ = request.send(CloseFrame {
                code: CloseCode::from(code),
                reason: reason.into(),
            });
            self.deadline = Some(Instant::now() + CLOSE_TIMEOUT);
            self.ending = Some(Ending::ClosedByServer(code, reason));
        }
    }

    fn is_closing(&self) -> bool {
        self.request.is_none()
    }

    async fn timed_out(&self) {
        match self.deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    }
}

/// A connection's place in the hub, taken before the handshake is answered: whatever is
/// relayed after a client sees its `101` reaches it, in raw mode too.
pub(super) struct Registration {
    member: Option<MemberId>,
    frames: outbox::Sender,
    outbox: outbox::Receiver,
    evicted: oneshot::Receiver<u16>,
    /// Why the connection is refused after the upgrade (close code and reason), if it is.
    refusal: Option<(u16, &'static str)>,
    /// What the member holds in Redis when the server shares rooms (`--redis`).
    seat: Option<Seat>,
}

impl Registration {
    /// Joins the hub as the handshake asked, or prepares the refusal to send once upgraded.
    pub fn new(shared: &Shared, params: &Params, authorized: bool, peer: SocketAddr) -> Self {
        Metrics::inc(&shared.metrics.connections_total);
        Metrics::inc(&shared.metrics.connections_open);
        let (frames, outbox) = outbox::channel(shared.config.outbox_frames);
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
        };
        let outbox = Outbox {
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
        let (frames, outbox) = outbox::channel(shared.config.outbox_frames);
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
        self.seat = Some(seat);
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

/// Runs a connection from the finished handshake to the closed socket.
pub(super) async fn run<S>(
    shared: Arc<Shared>,
    ws: WebSocketStream<S>,
    registration: Registration,
    peer: SocketAddr,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let metrics = shared.metrics.clone();
    let Registration {
        member,
        frames,
        outbox,
        mut evicted,
        refusal,
        mut seat,
    } = registration;
    let (sink, mut stream) = ws.split();
    let (close_request, close_rx) = oneshot::channel();
    let writer = tokio::spawn(write_loop(sink, outbox, close_rx));
    let mut closer = Closer {
        request: Some(close_request),
        deadline: None,
        ending: None,
    };
    if let Some((code, reason)) = refusal {
        closer.close(code, reason);
    }
    let raw = shared.config.raw;

    let now = Instant::now();
    let mut rate = RateLimit::new(
        shared.config.rate,
        shared.config.burst,
        shared.config.flood_timeout,
        now,
    );
    // Reading resumes at this instant when the sender is over its rate.
    let mut paused: Option<Instant> = None;
    let ping_every = shared.config.ping_interval;
    let mut ping = tokio::time::interval_at(
        now + ping_every.unwrap_or(Duration::from_secs(3600)),
        ping_every.unwrap_or(Duration::from_secs(3600)),
    );
    let mut last_heard = now;
    let mut evict_pending = member.is_some();
    loop {
        tokio::select! {
            () = shared.stopping.cancelled(), if !closer.is_closing() => {
                closer.close(close::GOING_AWAY, "server shutting down");
            }
            code = &mut evicted, if evict_pending => {
                evict_pending = false;
                if let Ok(code) = code {
                    Metrics::inc(&metrics.slow_disconnects);
                    closer.close(code, "too slow: outbox full");
                }
            }
            () = closer.timed_out() => {
                closer.ending = Some(Ending::CloseTimedOut);
                break;
            }
            () = sleep_until(paused), if paused.is_some() => paused = None,
            _ = ping.tick(), if ping_every.is_some() => {
                let silence = last_heard.elapsed();
                if ping_every.is_some_and(|every| silence > every * 2) {
                    Metrics::inc(&metrics.dead_peer_disconnects);
                    closer.ending = Some(Ending::ClientVanished(format!(
                        "no answer to pings for {}s", silence.as_secs()
                    )));
                    break;
                }
                // A full outbox is handled as a slow consumer elsewhere; skipping a ping is fine.
                let _ = frames.try_send(Message::Ping(Default::default()));
            }
            next = stream.next(), if paused.is_none() => {
                last_heard = Instant::now();
                let Some(id) = member.filter(|_| !closer.is_closing()) else {
                    // Closing: wait for the peer's close frame, ignore anything else.
                    match next {
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                        Some(Ok(_)) => continue,
                    }
                };
                let message = match next {
                    Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => message,
                    Some(Ok(Message::Close(_))) | None => {
                        closer.ending = Some(Ending::ClientClosed);
                        break;
                    }
                    // tungstenite answers pings itself; a pong only proves the peer is alive.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                    Some(Err(e)) => {
                        match e {
                            WsError::Capacity(_) => {
                                Metrics::inc(&metrics.oversize_disconnects);
                                closer.close(close::TOO_BIG, "message too big");
                            }
                            WsError::Utf8(_) => {
                                Metrics::inc(&metrics.invalid_utf8_disconnects);
                                closer.close(close::INVALID_PAYLOAD, "invalid UTF-8");
                            }
                            // A peer that hung up without a close frame: nobody to tell.
                            WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {}
                            WsError::Protocol(_) => closer.close(1002, "protocol error"),
                            _ => {}
                        }
                        if closer.ending.is_none() {
                            closer.ending = Some(Ending::ClientVanished(e.to_string()));
                        } else {
                            tracing::debug!(%peer, "read error: {e}");
                        }
                        // The stream is unusable after an error: do not wait for a reply.
                        break;
                    }
                };
                Metrics::inc(&metrics.messages_in);
                Metrics::add(&metrics.bytes_in, message.len() as u64);
                match rate.take(Instant::now()) {
                    Verdict::Pass => {}
                    Verdict::Delay(pause) => {
                        Metrics::inc(&metrics.rate_limited);
                        paused = Some(Instant::now() + pause);
                    }
                    Verdict::Disconnect => {
                        Metrics::inc(&metrics.rate_limit_disconnects);
                        closer.close(close::RATE_LIMITED, "sending too fast");
                        continue;
                    }
                }
                let reply = match message {
                    Message::Text(_) | Message::Binary(_) if raw => {
                        shared.hub.relay(id, message);
                        None
                    }
                    Message::Text(text) => match seat.as_mut() {
                        Some(seat) => {
                            super::cluster_conn::handle_text(&shared, id, seat, &text).await
                        }
                        None => handle_text(&shared, id, &text),
                    },
                    _ => Some(
                        Event::error(
                            "unsupported",
                            "binary frames are not part of the wschat protocol; send text",
                            None,
                        )
                        .to_frame(),
                    ),
                };
                if let Some(reply) = reply {
                    Metrics::inc(&metrics.replies);
                    if frames.try_send(reply).is_err() {
                        Metrics::inc(&metrics.slow_disconnects);
                        closer.close(close::SLOW_CONSUMER, "too slow: outbox full");
                    }
                }
            }
        }
    }

    if let Some(id) = member {
        shared.hub.leave(id);
    }
    drop(frames);
    let ending = closer.ending.take().unwrap_or(Ending::ClientClosed);
    // Dropping the request (if unused) lets the writer finish what is queued and close normally.
    drop(closer);
    let mut writer = writer;
    if tokio::time::timeout(CLOSE_TIMEOUT, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    if let Some(seat) = seat {
        seat.release().await;
    }
    Metrics::dec(&metrics.connections_open);
    tracing::info!(%peer, "disconnected: {ending}");
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Handles one JSON-mode text frame; returns the reply for the sender, if any.
pub(super) fn handle_text(shared: &Shared, id: MemberId, text: &str) -> Option<Message> {
    let hub = &shared.hub;
    match protocol::decode(text) {
        Ok(Inbound::Chat {
            content,
            reference,
            to,
            action,
        }) => {
            if content.trim().is_empty() {
                return Some(Event::error("empty_message", "empty message", reference).to_frame());
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
        Ok(Inbound::Join { room }) => {
            if protocol::validate_room(&room).is_ok() {
                // Off the hub's lock (a short blocking read at most, once per room).
                shared.store.prepare(&room);
            }
            hub.move_to(id, &room)
                .err()
                .map(|e| Event::error(e.code(), e.to_string(), None).to_frame())
        }
        Ok(Inbound::Rooms) => Some(hub.rooms()),
        Ok(Inbound::Who) => Some(hub.who(id)),
        Err(e) => Some(Event::error(e.code(), e.to_string(), None).to_frame()),
    }
}

/// Writes queued frames, batching whatever is waiting into one flush. A close request first
/// writes what is already queued, then the close frame. However it ends, it last flushes what
/// the WebSocket layer itself queued (the reply to a client's close frame).
async fn write_loop<S>(
    mut sink: SplitSink<WebSocketStream<S>, Message>,
    mut outbox: outbox::Receiver,
    mut close_request: oneshot::Receiver<CloseFrame>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut close_pending = true;
    loop {
        tokio::select! {
            biased;
            frame = &mut close_request, if close_pending => {
                close_pending = false;
                let Ok(frame) = frame else { continue };
                write_close(&mut sink, &mut outbox, frame).await;
                break;
            }
            next = outbox.recv() => {
                let Some(first) = next else {
                    // The reader is done. It may have asked for a close just before dropping its
                    // outbox, after this loop last looked; it drops the request right after.
                    if close_pending {
                        if let Ok(frame) = (&mut close_request).await {
                            write_close(&mut sink, &mut outbox, frame).await;
                        }
                    }
                    break;
                };
                if sink.feed(first).await.is_err()
                    || feed_queued(&mut sink, &mut outbox).await.is_err()
                    || sink.flush().await.is_err()
                {
                    // Usually the client closed first: its close reply still goes out below.
                    break;
                }
            }
        }
    }
    let _ = sink.close().await;
}

/// Writes what is still queued, then the close frame.
async fn write_close<S>(
    sink: &mut SplitSink<WebSocketStream<S>, Message>,
    outbox: &mut outbox::Receiver,
    frame: CloseFrame,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if feed_queued(sink, outbox).await.is_ok() {
        let _ = sink.send(Message::Close(Some(frame))).await;
    }
}

/// Feeds (without flushing) every frame already waiting in the outbox.
async fn feed_queued<S>(
    sink: &mut SplitSink<WebSocketStream<S>, Message>,
    outbox: &mut outbox::Receiver,
) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Ok(queued) = outbox.try_recv() {
        sink.feed(queued).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters() {
        assert_eq!(
            Params::from_query("name=alice&room=dev&quiet=1"),
            Params {
                name: Some("alice".into()),
                room: "dev".into(),
                quiet: true,
                since: None,
                history: None,
            }
        );
        let p = Params::from_query("username=b%C3%A9a&room=");
        assert_eq!(p.name.as_deref(), Some("béa"));
        assert_eq!(p.room, "lobby");
        assert!(!p.quiet);
        let p = Params::from_query("since=41&history=0");
        assert_eq!((p.since, p.history), (Some(41), Some(0)));
    }
}
