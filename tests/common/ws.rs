//! Raw WebSocket clients (sync tungstenite), as the tutorial's browser client would speak.

use std::net::TcpStream;

use serde_json::Value;
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::client::Response;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

use super::GUARD;

pub type Ws = WebSocket<TcpStream>;

/// Opens a WebSocket to `url` with `query` (e.g. `name=carol`) and no subprotocol, the way a
/// browser client written for the tutorial does. Reads time out after `GUARD`.
pub fn ws_connect(url: &str, query: &str) -> Ws {
    ws_connect_with_response(url, query).0
}

/// Connects as a page of the server's own origin would (browsers always send `Origin`).
pub fn ws_connect_as_page(url: &str, query: &str) -> Ws {
    ws_connect_with(url, query, true).0
}

pub fn ws_connect_with_response(url: &str, query: &str) -> (Ws, Response) {
    ws_connect_with(url, query, false)
}

fn ws_connect_with(url: &str, query: &str, as_page: bool) -> (Ws, Response) {
    let addr = url
        .strip_prefix("ws://")
        .and_then(|r| r.split('/').next())
        .expect("ws:// URL");
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(GUARD)).unwrap();
    stream.set_write_timeout(Some(GUARD)).unwrap();
    stream.set_nodelay(true).unwrap();
    let request = if query.is_empty() {
        url.to_owned()
    } else {
        format!("{url}?{query}")
    };
    let mut request = request.as_str().into_client_request().unwrap();
    if as_page {
        let origin = format!("http://{addr}").parse().unwrap();
        request.headers_mut().insert("origin", origin);
    }
    let shown = request.uri().to_string();
    match tungstenite::client(request, stream) {
        Ok(pair) => pair,
        Err(e) => panic!("WebSocket handshake with {shown} failed: {e}"),
    }
}

/// The next data or close frame (pings and pongs are skipped); panics on timeout or error.
pub fn next_frame(ws: &mut Ws) -> Message {
    loop {
        match ws.read() {
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(message) => return message,
            Err(e) => panic!("no frame received (bound {GUARD:?}): {e}"),
        }
    }
}

/// The next frame, which must be text holding a JSON object, whatever its type.
pub fn next_event(ws: &mut Ws) -> Value {
    match next_frame(ws) {
        Message::Text(text) => serde_json::from_str(text.as_str())
            .unwrap_or_else(|e| panic!("frame is not JSON ({e}): {:?}", text.as_str())),
        other => panic!("expected a JSON text frame, got {other:?}"),
    }
}

/// Event types that describe room state rather than carry a message or a notice: `presence`
/// (a member count after each join and leave) and `synced` (the end of a history replay).
/// The protocol lets clients ignore types they do not look at, and these tests do.
pub const STATE_EVENTS: &[&str] = &["presence", "synced"];

/// The next event that is not a state event (see [`STATE_EVENTS`]): a chat message, a
/// notice, an ack or an error.
pub fn next_message(ws: &mut Ws) -> Value {
    loop {
        let event = next_event(ws);
        if !STATE_EVENTS.iter().any(|t| event["type"] == *t) {
            return event;
        }
    }
}

/// The next chat event (notices, state events, acks and errors skipped).
pub fn next_chat(ws: &mut Ws) -> Value {
    loop {
        let event = next_event(ws);
        if event["type"] == "chat" {
            return event;
        }
    }
}

/// Skips system notices (and state events) and returns the next event of another type.
pub fn next_non_system(ws: &mut Ws) -> Value {
    loop {
        let event = next_message(ws);
        if event["type"] != "system" {
            return event;
        }
    }
}

/// Reads events until one with `"type": "system"` whose message is `message`; returns it.
/// Panics on a chat event in between (which would be out of place).
pub fn expect_notice(ws: &mut Ws, message: &str) -> Value {
    loop {
        let event = next_message(ws);
        assert_eq!(
            event["type"], "system",
            "expected the notice {message:?}, got {event}"
        );
        if event["message"] == message {
            return event;
        }
    }
}

/// Connects in JSON mode, reads the welcome (the server registers a client before queueing
/// its welcome, so after this the client is a member of the room) and the history replay up
/// to its `synced` marker. What the client reads next is live.
pub fn ws_member(url: &str, name: &str) -> Ws {
    let mut ws = ws_connect(url, &format!("name={name}"));
    let welcome = next_event(&mut ws);
    assert_eq!(welcome["type"], "system", "not the welcome: {welcome}");
    assert_eq!(welcome["event"], "welcome", "not the welcome: {welcome}");
    while next_event(&mut ws)["type"] != "synced" {}
    ws
}

pub fn send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).expect("send text frame");
}

/// Sends a ping and waits for its pong. The server reads frames only once the connection is
/// registered in the hub, so a pong proves registration even where no welcome is sent
/// (`--raw`). Returns any data frames that arrived first.
pub fn ping_sync(ws: &mut Ws) -> Vec<Message> {
    let payload = b"sync".to_vec();
    ws.send(Message::Ping(payload.clone().into()))
        .expect("send ping");
    let mut before = Vec::new();
    loop {
        match ws.read() {
            Ok(Message::Pong(p)) if p.as_ref() == payload.as_slice() => return before,
            Ok(Message::Ping(_) | Message::Pong(_)) => {}
            Ok(other) => before.push(other),
            Err(e) => panic!("no pong received: {e}"),
        }
    }
}

/// Reads until the server's close frame arrives; returns it.
pub fn expect_close(ws: &mut Ws) -> Option<CloseFrame> {
    loop {
        match ws.read() {
            Ok(Message::Close(frame)) => return frame,
            Ok(_) => continue,
            Err(e) => panic!("no close frame received: {e}"),
        }
    }
}
