//! One WebSocket connection, one task: it reads frames and feeds the hub, and writes what the
//! hub queues in its outbox.
//!
//! The task joins the hub, handles each frame, and decides when to close. Writing never
//! blocks reading: everything queued is fed to the socket and flushed once, so a burst of
//! messages costs one write, not one per message, and a client that stops reading still has
//! its frames, pings and close handled.
//!
//! - [`params`]: what the handshake URL asks for;
//! - [`register`]: the connection's place in the hub (and in Redis), before the upgrade;
//! - [`engine`]: reading, writing and closing the socket;
//! - [`commands`]: what each client frame does;
//! - this file: the loop that ties them together until the socket is closed.

mod commands;
mod engine;
mod params;
mod register;
mod socket;

pub(super) use params::Params;
pub(super) use register::{register, Registration};
pub(super) use socket::{ReadSide, Socket};

use std::future::poll_fn;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::limits::{RateLimit, Verdict};
use super::Shared;
use crate::metrics::Metrics;
use crate::protocol::{self, close, Event, Inbound};
use engine::{earliest, is_hang_up, sleep_until, Closer, Io, Reader, Writer, CLOSE_TIMEOUT};

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

/// The hub (a full outbox, a name lost to another instance) or the outbox (a frame refused)
/// says this client must go: it is closed with `code`, counted once whoever said it first.
fn evicted(closer: &mut Closer, code: u16, metrics: &Metrics) {
    if closer.is_closing() {
        return;
    }
    if code == close::NAME_REJECTED {
        // Its name went to a member of another instance who had it first.
        closer.close(code, "name held by another member");
    } else {
        Metrics::inc(&metrics.slow_disconnects);
        closer.close(code, "too slow: outbox full");
    }
}

/// How a connection ended when a write to it failed.
fn write_failed(e: std::io::Error) -> Ending {
    if is_hang_up(&e) {
        // The client hung up first.
        Ending::ClientVanished(e.to_string())
    } else {
        Ending::WriteFailed(e.to_string())
    }
}

/// The answer to a client's close frame: its code (a code no endpoint may send gets 1002),
/// as RFC 6455 (section 5.5.1) asks.
fn close_reply(frame: Option<CloseFrame>) -> engine::Close {
    frame.map(|frame| {
        if frame.code.is_allowed() {
            frame
        } else {
            CloseFrame {
                code: CloseCode::Protocol,
                reason: "Protocol violation".into(),
            }
        }
    })
}

/// A frame from the client could not be read: the close it gets, if any, and the ending.
fn read_failed(closer: &mut Closer, e: WsError, metrics: &Metrics, peer: SocketAddr) {
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
}

/// Runs a connection from the finished handshake to the closed socket: `ws` reads, `wire`
/// writes (and may let the hub write frames straight through, see [`socket`]).
///
/// Everything it keeps for the connection's life is borrowed from the caller's task, so the
/// task holds each piece once: an idle connection costs the size of that task, and little else.
pub(super) async fn run<S, W>(
    shared: &Shared,
    ws: &mut WebSocketStream<S>,
    wire: W,
    registration: &mut Registration,
    peer: SocketAddr,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    W: socket::WriteSide,
{
    let metrics = &shared.metrics;
    let member = registration.member;
    let shaper = crate::server::chaos::Shaper::new(shared.config.chaos.as_deref());
    // Frames shaped by --chaos go out in the shaper's own time, so none may overtake them.
    if let Some(socket) = wire.socket().filter(|_| shaper.is_none()) {
        registration.outbox.attach(socket);
    }
    let mut writer = Writer::new(wire, shaper);
    let mut faults = crate::server::chaos::Faults::new(shared.config.chaos.as_deref());
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
            fault = poll_fn(|cx| faults.poll_next(cx)), if !closer.is_closing() => match fault {
                crate::server::chaos::Fault::Close => closer.close(close::GOING_AWAY, "chaos: closed on purpose"),
                crate::server::chaos::Fault::Drop => {
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
                if let Ok(code) = code {
                    evicted(&mut closer, code, metrics);
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
                        evicted(&mut closer, close::SLOW_CONSUMER, metrics);
                        continue;
                    }
                    // Nothing more can reach this client: it leaves the room now (below), so
                    // it never stays a member that receives nothing.
                    Io::WriteFailed(e) => {
                        Metrics::inc(&metrics.write_failures);
                        closer.ending = Some(write_failed(e));
                        break;
                    }
                };
                last_heard = Instant::now();
                let Some(id) = member.filter(|_| !closer.is_closing()) else {
                    // Closing: wait for the peer's close frame (which needs no answer: ours is
                    // sent or on its way), ignore anything else.
                    match next {
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                        Some(Ok(_)) => continue,
                    }
                };
                let message = match next {
                    Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => message,
                    Some(Ok(Message::Close(frame))) => {
                        // Answered after everything queued before it (see `finish`).
                        closer.frame = Some(close_reply(frame));
                        closer.ending = Some(Ending::ClientClosed);
                        break;
                    }
                    None => {
                        closer.ending = Some(Ending::ClientClosed);
                        break;
                    }
                    // Answered in order with everything else this connection sends.
                    Some(Ok(Message::Ping(data))) => {
                        if registration.frames.try_send(Message::Pong(data)).is_err() {
                            evicted(&mut closer, close::SLOW_CONSUMER, metrics);
                        }
                        continue;
                    }
                    // A pong only proves the peer is alive.
                    Some(Ok(Message::Pong(_) | Message::Frame(_))) => continue,
                    Some(Err(e)) => {
                        read_failed(&mut closer, e, metrics, peer);
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
                            let handle = commands::handle_shared_text(shared, id, seat, &text);
                            Box::pin(handle).await
                        }
                        None => {
                            let decoded = protocol::decode(&text);
                            if let Ok(Inbound::Join { room }) = &decoded {
                                // Boxed: rare, and the connection's task need not be sized
                                // for it.
                                let limit = shared.config.history;
                                Box::pin(register::prepare_history(shared, room, None, limit)).await;
                            }
                            commands::handle(shared, id, decoded)
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
                        evicted(&mut closer, close::SLOW_CONSUMER, metrics);
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
    let finish = writer.finish(&mut registration.outbox, closer.frame.take());
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, Box::pin(finish)).await;
    if let Some(seat) = registration.seat.take() {
        Box::pin(seat.release()).await;
    }
    Metrics::dec(&metrics.connections_open);
    tracing::info!(%peer, "disconnected: {ending}");
}
