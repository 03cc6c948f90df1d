//! `wschat replay FILE`: sends the chat messages a `join --record` kept, under their original
//! senders' names (one quiet connection per sender, as `send` uses), with the recorded gaps
//! scaled by `--speed`. Exits 0 once every message is acknowledged; exit codes as `send`'s.
//!
//! Messages go out one at a time, each after the one before it was acknowledged, so the room
//! gets them in the recorded order whoever sent them. Each sender keeps within the limits the
//! server states in the handshake (`client::pace`), so `--speed 0` is as fast as the server
//! takes them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use futures_util::{FutureExt, SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::connect::{self, ServerKind, Target};
use super::pace::Pacer;
use super::{close, connection_lost, decode_event, server_closed, Sink, Stream};
use crate::exit::{exit_for, fail, Exit};
use crate::protocol::{self, Event};
use crate::signals::Signals;

#[derive(Debug, Clone)]
pub struct ReplayConfig {
    pub file: PathBuf,
    /// URL, token, TLS and connect timeout; the name and room are each message's.
    pub target: Target,
    /// Send every message to this room instead of the one it was recorded in.
    pub room: Option<String>,
    /// Recorded gaps are divided by this; 0: no gaps.
    pub speed: f64,
    pub ack_timeout: Duration,
}

/// A chat message from the file.
#[derive(Debug, Clone, PartialEq)]
struct Recorded {
    line: usize,
    at: SystemTime,
    name: String,
    room: String,
    text: String,
    action: bool,
}

/// Reads the file: every line must be a recorded event; chat messages are kept (not private
/// ones, not history replayed on join: those were sent before the recording started).
fn load(path: &Path) -> anyhow::Result<Vec<Recorded>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        fail(
            Exit::Failure,
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    parse(&text, &path.display().to_string())
}

fn parse(text: &str, file: &str) -> anyhow::Result<Vec<Recorded>> {
    let mut messages = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let bad = |why: String| fail(Exit::Usage, format!("{file}:{number}: {why}"));
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line)
            .map_err(|e| bad(format!("not a recorded event (not JSON: {e})")))?;
        let at = value
            .get("at")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("not a recorded event (no \"at\" time)".into()))?;
        let at = humantime::parse_rfc3339_weak(at)
            .map_err(|e| bad(format!("\"at\" is not an RFC 3339 time ({e})")))?;
        let event = value
            .get("event")
            .filter(|e| e.is_object())
            .ok_or_else(|| bad("not a recorded event (no \"event\" object)".into()))?;
        let flag = |key: &str| event.get(key).and_then(Value::as_bool).unwrap_or(false);
        if event["type"] != "chat" || flag("private") || flag("history") || !event["to"].is_null() {
            continue;
        }
        let (Some(name), Some(text)) = (event["username"].as_str(), event["message"].as_str())
        else {
            return Err(bad(
                "a chat event without \"username\" or \"message\"".into()
            ));
        };
        protocol::validate_name(name).map_err(|e| bad(format!("invalid name '{name}': {e}")))?;
        let room = event["room"].as_str().unwrap_or(protocol::DEFAULT_ROOM);
        protocol::validate_room(room).map_err(|e| bad(format!("invalid room '{room}': {e}")))?;
        if text.trim().is_empty() {
            continue;
        }
        messages.push(Recorded {
            line: number,
            at,
            name: name.to_owned(),
            room: room.to_owned(),
            text: text.to_owned(),
            action: flag("action"),
        });
    }
    Ok(messages)
}

/// One sender's connection.
struct Peer {
    sink: Sink,
    stream: Stream,
    kind: ServerKind,
    url: String,
    /// Keeps to the limits the server states (none for a server that states none).
    pacer: Option<Pacer>,
}

pub async fn run(config: ReplayConfig) -> anyhow::Result<Exit> {
    let messages = load(&config.file)?;
    let mut signals = Signals::new()?;
    tokio::select! {
        result = play(&config, &messages) => result,
        exit = signals.recv() => Ok(exit),
    }
}

async fn play(config: &ReplayConfig, messages: &[Recorded]) -> anyhow::Result<Exit> {
    let mut peers: HashMap<(String, String), Peer> = HashMap::new();
    let start = Instant::now();
    let first = messages.first().map(|m| m.at);
    for (index, message) in messages.iter().enumerate() {
        if let (Some(first), true) = (first, config.speed > 0.0) {
            let gap = message.at.duration_since(first).unwrap_or_default();
            let scaled = Duration::try_from_secs_f64(gap.as_secs_f64() / config.speed)
                .unwrap_or(Duration::MAX);
            if let Some(due) = start.checked_add(scaled) {
                tokio::time::sleep_until(due).await;
            } else {
                std::future::pending::<()>().await;
            }
        }
        let room = config.room.clone().unwrap_or_else(|| message.room.clone());
        let key = (message.name.clone(), room.clone());
        let peer = match peers.entry(key) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                let mut target = config.target.clone();
                target.name.clone_from(&message.name);
                target.room = Some(room);
                target.quiet = true;
                target.history = Some(0);
                let connection = connect::connect(&target).await?;
                let (sink, stream) = connection.socket.split();
                entry.insert(Peer {
                    sink,
                    stream,
                    kind: connection.kind,
                    url: target.url.to_string(),
                    pacer: Pacer::new(connection.limits, Instant::now()),
                })
            }
        };
        if let Some(pacer) = &mut peer.pacer {
            tokio::time::sleep_until(pacer.ready_at(Instant::now())).await;
            pacer.take(Instant::now());
        }
        drain(peer)?;
        let reference = index as u64 + 1;
        let frame = match peer.kind {
            ServerKind::Wschat => {
                let mut frame = json!({"type": "chat", "content": message.text, "ref": reference});
                if message.action {
                    frame["action"] = json!(true);
                }
                Message::text(frame.to_string())
            }
            ServerKind::Relay if message.action => {
                Message::text(format!("* {} {}", message.name, message.text))
            }
            ServerKind::Relay => Message::text(format!("{} says: {}", message.name, message.text)),
        };
        match tokio::time::timeout(config.ack_timeout, peer.sink.send(frame)).await {
            Ok(sent) => sent.map_err(|e| connection_lost(&peer.url, Some(e)))?,
            Err(_) => return Err(stalled(peer, config.ack_timeout)),
        }
        if peer.kind == ServerKind::Wschat {
            match tokio::time::timeout(
                config.ack_timeout,
                acknowledged(peer, reference, message.line),
            )
            .await
            {
                Ok(result) => result?,
                Err(_) => {
                    return Err(fail(
                        Exit::Timeout,
                        format!(
                            "the message on line {} was not acknowledged by {} within {}",
                            message.line,
                            peer.url,
                            humantime::format_duration(config.ack_timeout)
                        ),
                    ))
                }
            }
        }
    }
    for peer in peers.values_mut() {
        let answered = close(&mut peer.sink, &mut peer.stream).await;
        if peer.kind == ServerKind::Relay && !answered {
            return Err(fail(
                Exit::NotAcknowledged,
                format!(
                    "{} did not answer the close handshake, so delivery is unconfirmed",
                    peer.url
                ),
            ));
        }
    }
    Ok(Exit::Success)
}

fn stalled(peer: &Peer, timeout: Duration) -> anyhow::Error {
    fail(
        Exit::Timeout,
        format!(
            "{} stopped reading for {}",
            peer.url,
            humantime::format_duration(timeout)
        ),
    )
}

/// Reads what the room sent this quiet connection meanwhile (the other senders' messages),
/// without waiting, so that it never counts as a slow reader.
fn drain(peer: &mut Peer) -> anyhow::Result<()> {
    while let Some(next) = peer.stream.next().now_or_never() {
        match next {
            Some(Ok(Message::Close(frame))) => {
                return Err(server_closed(&peer.url, frame.as_ref()))
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(connection_lost(&peer.url, Some(e))),
            None => return Err(connection_lost(&peer.url, None::<String>)),
        }
    }
    Ok(())
}

/// Waits for the acknowledgement of `reference`.
async fn acknowledged(peer: &mut Peer, reference: u64, line: usize) -> anyhow::Result<()> {
    loop {
        let text = match peer.stream.next().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                let error = server_closed(&peer.url, frame.as_ref());
                if exit_for(&error) != Exit::ServerGone {
                    return Err(error);
                }
                return Err(fail(
                    Exit::NotAcknowledged,
                    format!("the message on line {line} was not acknowledged: {error}"),
                ));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(connection_lost(&peer.url, Some(e))),
            None => return Err(connection_lost(&peer.url, None::<String>)),
        };
        match decode_event(&text) {
            Some((Event::Ack(ack), _)) if ack.reference == reference => return Ok(()),
            Some((Event::Error(error), _)) if error.reference == Some(reference) => {
                return Err(fail(
                    Exit::NotAcknowledged,
                    format!(
                        "the server refused the message on line {line}: {}",
                        super::render::escape_control(&error.message)
                    ),
                ))
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_chat_is_kept_and_the_rest_skipped() {
        let text = r#"{"at":"2026-12-07T08:00:00.000Z","event":{"type":"system","event":"welcome","room":"lobby","message":"hi"}}
{"at":"2026-12-07T08:00:00.500Z","event":{"type":"chat","id":3,"room":"dev","username":"bob","message":"hi","timestamp":"t"}}

{"at":"2026-12-07T08:00:01.000Z","event":{"type":"chat","id":2,"room":"dev","username":"bob","message":"old","timestamp":"t","history":true}}
{"at":"2026-12-07T08:00:02.000Z","event":{"type":"chat","room":"dev","username":"eve","message":"psst","timestamp":"t","to":"bob","private":true}}
{"at":"2026-12-07T08:00:03.000Z","event":{"type":"chat","id":4,"room":"dev","username":"carol","message":"waves","timestamp":"t","action":true}}"#;
        let messages = parse(text, "f").unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!((messages[0].line, messages[0].name.as_str()), (2, "bob"));
        assert_eq!(messages[1].room, "dev");
        assert!(messages[1].action);
        assert_eq!(
            messages[1].at.duration_since(messages[0].at).unwrap(),
            Duration::from_millis(2500)
        );
    }

    #[test]
    fn bad_lines_are_named() {
        for (text, why) in [
            ("{\"at\":\"2026-12-07T08:00:00Z\",\"event\":{}}\nnope", "f:2: not a recorded event (not JSON"),
            ("{\"event\":{}}", "f:1: not a recorded event (no \"at\" time)"),
            ("{\"at\":\"yesterday\",\"event\":{}}", "f:1: \"at\" is not an RFC 3339 time"),
            ("{\"at\":\"2026-12-07T08:00:00Z\",\"event\":{\"type\":\"chat\",\"username\":\"a b\",\"message\":\"x\"}}", "f:1: invalid name 'a b'"),
        ] {
            let e = parse(text, "f").unwrap_err();
            assert!(e.to_string().starts_with(why), "{e}");
            assert_eq!(exit_for(&e), Exit::Usage);
            assert!(!e.to_string().contains('\n'));
        }
    }
}
