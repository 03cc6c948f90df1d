//! One WebSocket connection, one task: it reads frames and feeds the hub, and writes what the
//! hub queues in its outbox.
//!
//! The task joins the hub, handles each frame, and decides when to close. Writing never
//! blocks reading: everything queued is fed to the socket and flushed once, so a burst of
//! messages costs one write, not one per message, and a client that stops reading still has
//! its frames, pings and close handled.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use futures_util::{SinkExt, StreamExt};
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
use crate::protocol::{self, close, DecodeError, Event, Inbound};

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
    /// The history `since` is a position in.
    pub epoch: Option<String>,
}

impl Params {
    pub fn from_query(query: &str) -> Params {
        let mut params = Params {
            name: None,
            room: protocol::DEFAULT_ROOM.to_owned(),
            quiet: false,
            since: None,
            history: None,
            epoch: None,
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
                // Epochs are short; anything longer is from no wschat server.
                "epoch" if value.len() <= 64 => params.epoch = Some(value.into_owned()),
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
    WriteFailed(String),
    /// Cut on purpose (`--chaos drop=P`).
    Chaos,
}

impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ending::ClientClosed => write!(f, "client closed"),
            Ending::ClientVanished(e) => write!(f, "client vanished ({e})"),
            Ending::ClosedByServer(code, why) => write!(f, "closed by server ({code}: {why})"),
            Ending::CloseTimedOut => write!(f, "client did not answer the close frame"),
            Ending::WriteFailed(e) => write!(f, "write failed ({e})"),
            Ending::Chaos => write!(f, "cut on purpose (--chaos)"),
        }
    }
}

/// The connection's half of the close handshake: a close frame asked for once, written after
/// everything queued before it, then a bounded wait for the peer's answer.
struct Closer {
    closing: bool,
    /// The close frame asked for, until it is written.
    frame: Option<CloseFrame>,
    deadline: Option<Instant>,
    ending: Option<Ending>,
}

impl Closer {
    fn close(&mut self, code: u16, reason: &'static str) {
        if !self.closing {
            self.closing = true;
            self.frame = Some(CloseFrame {
                code: CloseCode::from(code),
                reason: reason.into(),
            });
            self.deadline = Some(Instant::now() + CLOSE_TIMEOUT);
            self.ending = Some(Ending::ClosedByServer(code, reason));
        }
    }

    fn is_closing(&self) -> bool {
        self.closing
    }
}

/// What the socket had for the connection's loop.
enum Io {
    Read(Option<Result<Message, WsError>>),
    WriteFailed(WsError),
    /// A frame for this client found its outbox full: it is not keeping up.
    Overflowed,
}

/// Whether the socket woke the connection since it last read. Frames the hub queues wake the
/// task too, many times more often: those wake-ups then cost no read attempt.
struct ReadWake {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for ReadWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// The reading side's waker, made once per connection.
struct Reader {
    wake: Arc<ReadWake>,
    waker: Waker,
}

impl Reader {
    fn new() -> Reader {
        let wake = Arc::new(ReadWake {
            // Nothing was read yet.
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(wake.clone());
        Reader { wake, waker }
    }

    /// The next frame, if the socket woke the connection since the last read came up empty.
    fn poll_next<S>(
        &self,
        ws: &mut WebSocketStream<S>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Message, WsError>>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.wake.task.register(cx.waker());
        if !self.wake.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let next = ws.poll_next_unpin(&mut Context::from_waker(&self.waker));
        if next.is_ready() {
            // More frames may be buffered already: no wake-up would say so.
            self.wake.woken.store(true, Ordering::Release);
        }
        next
    }
}

/// The sending side: the outbox, fed to the socket as frames come, one flush per batch.
struct Writer {
    /// Frames handed to the WebSocket layer since the last flush.
    unflushed: bool,
    /// The close frame is written, or a write failed: nothing more goes out, and the hub finds
    /// the outbox closed.
    stopped: bool,
    failed: bool,
    /// Delays and fragments what goes out (`--chaos`).
    shaper: Option<Box<super::chaos::Shaper>>,
}

impl Writer {
    /// Writes what it can, then reads one frame if given a reader. Pending until a frame is read or
    /// a write fails; wakes when the outbox gets frames or the socket can take more.
    fn poll_io<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        outbox: &mut outbox::Receiver,
        close: &mut Option<CloseFrame>,
        reader: Option<&Reader>,
        cx: &mut Context<'_>,
    ) -> Poll<Io>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if !self.stopped {
            if let Err(e) = self.write(ws, outbox, close, cx) {
                self.stop(outbox);
                self.unflushed = false;
                self.failed = true;
                return Poll::Ready(Io::WriteFailed(e));
            }
            if outbox.take_overflow() {
                return Poll::Ready(Io::Overflowed);
            }
        }
        if let Some(reader) = reader {
            if let Poll::Ready(next) = reader.poll_next(ws, cx) {
                return Poll::Ready(Io::Read(next));
            }
        }
        Poll::Pending
    }

    /// Feeds every queued frame to the socket, then the close frame if one was asked for, and
    /// flushes once. Returns when it would wait (the outbox is empty, or the socket is full).
    fn write<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        outbox: &mut outbox::Receiver,
        close: &mut Option<CloseFrame>,
        cx: &mut Context<'_>,
    ) -> Result<(), WsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if self.unflushed {
            match ws.poll_flush_unpin(cx) {
                Poll::Ready(flushed) => flushed?,
                Poll::Pending => return Ok(()),
            }
            self.unflushed = false;
        }
        if self.stopped {
            return Ok(());
        }
        loop {
            match ws.poll_ready_unpin(cx) {
                Poll::Ready(ready) => ready?,
                Poll::Pending => return Ok(()),
            }
            match super::chaos::poll_recv(&mut self.shaper, outbox, cx) {
                Poll::Ready(Some(frame)) => {
                    ws.start_send_unpin(frame)?;
                    self.unflushed = true;
                }
                // Nothing queued (or nobody left to queue anything).
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        if let Some(frame) = close.take() {
            ws.start_send_unpin(Message::Close(Some(frame)))?;
            self.unflushed = true;
            self.stop(outbox);
        }
        if self.unflushed {
            match ws.poll_flush_unpin(cx) {
                Poll::Ready(flushed) => flushed?,
                Poll::Pending => return Ok(()),
            }
            self.unflushed = false;
        }
        Ok(())
    }

    fn stop(&mut self, outbox: &mut outbox::Receiver) {
        self.stopped = true;
        outbox.close();
    }

    /// After the connection's loop: writes what is still queued and the close frame asked for
    /// (its code, even when it was asked for just before the loop ended), then closes the
    /// WebSocket, which also sends the reply to a client's close frame.
    async fn finish<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        outbox: &mut outbox::Receiver,
        close: Option<CloseFrame>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if !self.stopped {
            let mut ok = true;
            while ok {
                let Some(frame) = super::chaos::try_recv(&mut self.shaper, outbox) else {
                    break;
                };
                ok = ws.feed(frame).await.is_ok();
            }
            if let Some(frame) = close.filter(|_| ok) {
                let _ = ws.feed(Message::Close(Some(frame))).await;
            }
            self.stop(outbox);
        }
        if !self.failed {
            let _ = SinkExt::close(ws).await;
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
    /// What the member holds in Redis when the server shares rooms (`--redis`); boxed, as
    /// most servers have none and every connection would carry its size.
    seat: Option<Box<Seat>>,
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

/// Runs a connection from the finished handshake to the closed socket.
///
/// Everything it keeps for the connection's life is borrowed from the caller's task, so the
/// task holds each piece once: an idle connection costs the size of that task, and little else.
pub(super) async fn run<S>(
    shared: &Shared,
    ws: &mut WebSocketStream<S>,
    registration: &mut Registration,
    peer: SocketAddr,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let metrics = &shared.metrics;
    let member = registration.member;
    let mut writer = Writer {
        unflushed: false,
        stopped: false,
        failed: false,
        shaper: super::chaos::Shaper::new(shared.config.chaos.as_deref()),
    };
    let mut faults = super::chaos::Faults::new(shared.config.chaos.as_deref());
    let reader = Reader::new();
    let mut closer = Closer {
        closing: false,
        frame: None,
        deadline: None,
        ending: None,
    };
    if let Some((code, reason)) = registration.refusal.take() {
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
    // Also frees the outbox's buffers when the connection is quiet, pings or not.
    let tick_every = ping_every.unwrap_or(Duration::from_secs(3600));
    let mut tick = tokio::time::interval_at(now + tick_every, tick_every);
    let mut last_heard = now;
    let mut evict_pending = member.is_some();
    // Made once: it stays registered with the server's shutdown signal instead of registering
    // again each time the loop wakes.
    let stopping = shared.stopping.cancelled();
    tokio::pin!(stopping);
    loop {
        let reading = paused.is_none().then_some(&reader);
        tokio::select! {
            () = &mut stopping, if !closer.is_closing() => {
                closer.close(close::GOING_AWAY, "server shutting down");
            }
            fault = faults.next(), if !closer.is_closing() => match fault {
                super::chaos::Fault::Close => closer.close(close::GOING_AWAY, "chaos: closed on purpose"),
                super::chaos::Fault::Drop => {
                    // No close frame, nothing more written: the socket is just dropped.
                    writer.stop(&mut registration.outbox);
                    writer.failed = true;
                    closer.frame = None;
                    closer.ending = Some(Ending::Chaos);
                    break;
                }
            },
            code = &mut registration.evicted, if evict_pending => {
                evict_pending = false;
                // Counted once, whether the hub or the outbox said so first.
                if let (Ok(code), false) = (code, closer.is_closing()) {
                    if code == close::NAME_REJECTED {
                        // Its name went to a member of another instance who had it first.
                        closer.close(code, "name held by another member");
                    } else {
                        Metrics::inc(&metrics.slow_disconnects);
                        closer.close(code, "too slow: outbox full");
                    }
                }
            }
            // One timer for both: the end of a pause in reading, and the close deadline.
            () = sleep_until(earliest(paused, closer.deadline)), if paused.is_some() || closer.deadline.is_some() => {
                let now = Instant::now();
                if paused.is_some_and(|until| until <= now) {
                    paused = None;
                }
                if closer.deadline.is_some_and(|deadline| deadline <= now) {
                    closer.ending = Some(Ending::CloseTimedOut);
                    break;
                }
            }
            _ = tick.tick() => {
                registration.outbox.shrink();
                let Some(every) = ping_every else { continue };
                let silence = last_heard.elapsed();
                if silence > every * 2 {
                    Metrics::inc(&metrics.dead_peer_disconnects);
                    closer.ending = Some(Ending::ClientVanished(format!(
                        "no answer to pings for {}s", silence.as_secs()
                    )));
                    break;
                }
                // A full outbox is handled as a slow consumer elsewhere; skipping a ping is fine.
                let _ = registration.frames.try_send(Message::Ping(Default::default()));
            }
            io = poll_fn(|cx| {
                writer.poll_io(ws, &mut registration.outbox, &mut closer.frame, reading, cx)
            }) => {
                let next = match io {
                    Io::Read(next) => next,
                    // Whoever found it full (the hub, or the store acknowledging a message),
                    // the client missed a frame: it is closed and can resume.
                    Io::Overflowed => {
                        if !closer.is_closing() {
                            Metrics::inc(&metrics.slow_disconnects);
                            closer.close(close::SLOW_CONSUMER, "too slow: outbox full");
                        }
                        continue;
                    }
                    // Nothing more can reach this client: it leaves the room now (below), so
                    // it never stays a member that receives nothing.
                    Io::WriteFailed(e) => {
                        Metrics::inc(&metrics.write_failures);
                        closer.ending = Some(match e {
                            // The client closed or hung up first.
                            WsError::ConnectionClosed
                            | WsError::AlreadyClosed
                            | WsError::Protocol(
                                ProtocolError::SendAfterClosing
                                | ProtocolError::ResetWithoutClosingHandshake,
                            ) => Ending::ClientClosed,
                            WsError::Io(e) if is_hang_up(&e) => {
                                Ending::ClientVanished(e.to_string())
                            }
                            e => Ending::WriteFailed(e.to_string()),
                        });
                        break;
                    }
                };
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
                    Message::Text(text) => match registration.seat.as_deref_mut() {
                        // Boxed: only a server that shares rooms gets here, and the connection's
                        // task need not be sized for this future.
                        Some(seat) => {
                            let handle = super::cluster_conn::handle_text(shared, id, seat, &text);
                            Box::pin(handle).await
                        }
                        None => {
                            let decoded = protocol::decode(&text);
                            if let Ok(Inbound::Join { room }) = &decoded {
                                // Boxed: rare, and the connection's task need not be sized
                                // for it.
                                let limit = shared.config.history;
                                Box::pin(prepare_history(shared, room, None, limit)).await;
                            }
                            handle(shared, id, decoded)
                        }
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
                    if registration.frames.try_send(reply).is_err() {
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
    let ending = closer.ending.take().unwrap_or(Ending::ClientClosed);
    // Bounded: a client that stopped reading cannot hold the connection open. Boxed: it runs
    // once, and the connection's task need not be sized for it.
    let finish = writer.finish(ws, &mut registration.outbox, closer.frame.take());
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, Box::pin(finish)).await;
    if let Some(seat) = registration.seat.take() {
        Box::pin(seat.release()).await;
    }
    Metrics::dec(&metrics.connections_open);
    tracing::info!(%peer, "disconnected: {ending}");
}

/// Whether a write failed because the peer went away (not because of the server).
fn is_hang_up(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::BrokenPipe
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::UnexpectedEof
            | ErrorKind::NotConnected
    )
}

/// The earlier of two optional instants.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Makes `room`'s history ready for a member about to enter it (see [`Store::prepare`]): it
/// may come from disk, so it is read on a blocking thread, not under the hub's lock.
///
/// [`Store::prepare`]: crate::store::Store::prepare
pub(super) async fn prepare_history(shared: &Shared, room: &str, since: Option<u64>, limit: usize) {
    // An invalid room is refused by the hub.
    if !shared.store.reads_ahead() || protocol::validate_room(room).is_err() {
        return;
    }
    let (store, room) = (shared.store.clone(), room.to_owned());
    if let Err(e) = tokio::task::spawn_blocking(move || store.prepare(&room, since, limit)).await {
        tracing::error!("cannot read history ahead: {e}");
    }
}

/// Handles one JSON-mode text frame; returns the reply for the sender, if any.
pub(super) fn handle_text(shared: &Shared, id: MemberId, text: &str) -> Option<Message> {
    handle(shared, id, protocol::decode(text))
}

/// Handles one decoded client frame (or why it could not be decoded).
pub(super) fn handle(
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
                epoch: None,
            }
        );
        let p = Params::from_query("username=b%C3%A9a&room=");
        assert_eq!(p.name.as_deref(), Some("béa"));
        assert_eq!(p.room, "lobby");
        assert!(!p.quiet);
        let p = Params::from_query("since=41&history=0&epoch=0123abcd");
        assert_eq!((p.since, p.history), (Some(41), Some(0)));
        assert_eq!(p.epoch.as_deref(), Some("0123abcd"));
    }
}
