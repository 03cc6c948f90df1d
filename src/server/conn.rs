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
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::Shared;
use crate::hub::{ChatError, JoinRequest, MemberId, Outbox, Post};
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
                "since" => params.since = value.parse().ok(),
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

/// Runs a connection from the finished handshake to the closed socket.
pub(super) async fn run<S>(
    shared: Arc<Shared>,
    ws: WebSocketStream<S>,
    params: Params,
    peer: SocketAddr,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sink, mut stream) = ws.split();
    let (frames, outbox) = mpsc::channel(shared.config.outbox_frames);
    let (close_request, close_rx) = oneshot::channel();
    let (evict, mut evicted) = oneshot::channel();
    let writer = tokio::spawn(write_loop(sink, outbox, close_rx));
    let mut closer = Closer {
        request: Some(close_request),
        deadline: None,
        ending: None,
    };

    let raw = shared.config.raw;
    let request = JoinRequest {
        room: params.room.clone(),
        name: params.name.clone(),
        // A raw relay announces nobody and replays nothing.
        quiet: params.quiet || raw,
        since: params.since.filter(|_| !raw),
        history: if raw { Some(0) } else { params.history },
    };
    let outbox = Outbox {
        frames: frames.clone(),
        evict,
    };
    let member = match shared.hub.join(request, outbox) {
        Ok((id, name)) => {
            tracing::info!(%peer, name, room = params.room, quiet = params.quiet, "connected");
            Some(id)
        }
        Err(e) => {
            let _ = frames.try_send(Event::error(e.code(), e.to_string(), None).to_frame());
            closer.close(close::NAME_REJECTED, "name rejected");
            tracing::info!(%peer, "refused: {e}");
            None
        }
    };

    let mut evict_pending = member.is_some();
    loop {
        tokio::select! {
            () = shared.stopping.cancelled(), if !closer.is_closing() => {
                closer.close(close::GOING_AWAY, "server shutting down");
            }
            code = &mut evicted, if evict_pending => {
                evict_pending = false;
                if let Ok(code) = code {
                    closer.close(code, "too slow: outbox full");
                }
            }
            () = closer.timed_out() => {
                closer.ending = Some(Ending::CloseTimedOut);
                break;
            }
            next = stream.next() => {
                let Some(id) = member.filter(|_| !closer.is_closing()) else {
                    // Closing: wait for the peer's close frame, ignore anything else.
                    match next {
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                        Some(Ok(_)) => continue,
                    }
                };
                match next {
                    Some(Ok(Message::Text(text))) if raw => {
                        shared.hub.relay(id, Message::Text(text));
                    }
                    Some(Ok(Message::Binary(bytes))) if raw => {
                        shared.hub.relay(id, Message::Binary(bytes));
                    }
                    Some(Ok(Message::Text(text))) => {
                        if let Some(reply) = handle_text(&shared, id, &text) {
                            if frames.try_send(reply).is_err() {
                                closer.close(close::SLOW_CONSUMER, "too slow: outbox full");
                            }
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        let reply = Event::error(
                            "unsupported",
                            "binary frames are not part of the wschat protocol; send text",
                            None,
                        );
                        if frames.try_send(reply.to_frame()).is_err() {
                            closer.close(close::SLOW_CONSUMER, "too slow: outbox full");
                        }
                    }
                    Some(Ok(Message::Close(_))) | None => {
                        closer.ending = Some(Ending::ClientClosed);
                        break;
                    }
                    // tungstenite answers pings itself.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Err(e)) => {
                        match e {
                            WsError::Capacity(_) => closer.close(close::TOO_BIG, "message too big"),
                            WsError::Utf8(_) => closer.close(close::INVALID_PAYLOAD, "invalid UTF-8"),
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
    tracing::info!(%peer, "disconnected: {ending}");
}

/// Handles one JSON-mode text frame; returns the reply for the sender, if any.
fn handle_text(shared: &Shared, id: MemberId, text: &str) -> Option<Message> {
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
        Ok(Inbound::Join { room }) => hub
            .move_to(id, &room)
            .err()
            .map(|e| Event::error(e.code(), e.to_string(), None).to_frame()),
        Ok(Inbound::Rooms) => Some(hub.rooms()),
        Ok(Inbound::Who) => Some(hub.who(id)),
        Err(e) => Some(Event::error(e.code(), e.to_string(), None).to_frame()),
    }
}

/// Writes queued frames, batching whatever is waiting into one flush. A close request first
/// writes what is already queued, then the close frame.
async fn write_loop<S>(
    mut sink: SplitSink<WebSocketStream<S>, Message>,
    mut outbox: mpsc::Receiver<Message>,
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
                while let Ok(queued) = outbox.try_recv() {
                    if sink.feed(queued).await.is_err() {
                        return;
                    }
                }
                let _ = sink.send(Message::Close(Some(frame))).await;
                return;
            }
            next = outbox.recv() => {
                let Some(first) = next else {
                    let _ = sink.close().await;
                    return;
                };
                if sink.feed(first).await.is_err() {
                    return;
                }
                while let Ok(queued) = outbox.try_recv() {
                    if sink.feed(queued).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
        }
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
