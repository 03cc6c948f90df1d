//! The clients: `join` (interactive or scripted) and `send` (one-shot), over one connection
//! layer and one renderer.

pub mod connect;
pub mod doctor;
pub mod exec;
pub mod history;
pub mod hooks;
pub mod input;
pub mod join;
pub mod pace;
pub mod record;
pub mod render;
pub mod replay;
pub mod send;

use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::exit::{fail, Exit};
use crate::protocol::{self, Event};
use connect::Socket;

pub type Sink = SplitSink<Socket, Message>;
pub type Stream = SplitStream<Socket>;

/// How long a client waits for the server to answer its close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Prints a line of secondary output; a closed stdout (`| head`) is not an error for it.
pub fn print_line(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// Decodes a wschat text frame into its event and its JSON (kept for `--json` output).
pub fn decode_event(text: &str) -> Option<(Event, Value)> {
    let value: Value = serde_json::from_str(text).ok()?;
    let event = serde_json::from_value(value.clone()).unwrap_or(Event::Unknown);
    Some((event, value))
}

/// Sends a normal close and waits briefly for the server's reply. Returns whether the server
/// answered: a reply proves it read everything this client sent before the close.
pub async fn close(sink: &mut Sink, stream: &mut Stream) -> bool {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    };
    if sink.send(Message::Close(Some(frame))).await.is_err() {
        return false;
    }
    let answered = async {
        while let Some(next) = stream.next().await {
            match next {
                Ok(Message::Close(_)) => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
        false
    };
    tokio::time::timeout(CLOSE_WAIT, answered)
        .await
        .unwrap_or(false)
}

/// The exit status for an error event: a refusal of the connection itself (the token, the
/// name, the room) is a rejected handshake, as it is when the server says so in HTTP.
pub fn exit_for_refusal(code: &str) -> Exit {
    match code {
        "unauthorized" | "name_taken" | "invalid_name" | "invalid_room" => Exit::HandshakeRejected,
        _ => Exit::Failure,
    }
}

/// The error for a close frame the server sent on its own.
pub fn server_closed(url: &str, frame: Option<&CloseFrame>) -> anyhow::Error {
    server_closed_because(url, frame, None)
}

/// [`server_closed`], with the reason an error event gave just before the close (a refused
/// name: the event says which name and why; the close frame only that it was refused).
pub fn server_closed_because(
    url: &str,
    frame: Option<&CloseFrame>,
    because: Option<&str>,
) -> anyhow::Error {
    if let (Some(frame), Some(because)) = (frame, because) {
        let code = u16::from(frame.code);
        let exit =
            if code == protocol::close::NAME_REJECTED || code == protocol::close::UNAUTHORIZED {
                Exit::HandshakeRejected
            } else {
                Exit::ServerGone
            };
        return fail(
            exit,
            format!("{url} refused the connection: {because} (close code {code})"),
        );
    }
    let Some(frame) = frame else {
        return fail(Exit::ServerGone, format!("{url} closed the connection"));
    };
    let code = u16::from(frame.code);
    let exit = if code == protocol::close::NAME_REJECTED || code == protocol::close::UNAUTHORIZED {
        Exit::HandshakeRejected
    } else {
        Exit::ServerGone
    };
    let reason = render::escape_control(&frame.reason);
    let reason = if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    };
    fail(
        exit,
        format!("{url} closed the connection (code {code}{reason})"),
    )
}

/// The error for a connection that broke without a close frame.
pub fn connection_lost(url: &str, error: Option<impl std::fmt::Display>) -> anyhow::Error {
    match error {
        Some(e) => fail(Exit::ServerGone, format!("connection to {url} lost: {e}")),
        None => fail(Exit::ServerGone, format!("connection to {url} lost")),
    }
}
