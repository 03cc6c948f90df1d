//! Wire types of the wschat protocol: what clients send, what the server sends, close codes.
//!
//! The full description, with examples, is `docs/protocol.md`; this module is its source of
//! truth in code. Extra fields may be added to events; existing ones are never renamed.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Message;

/// Subprotocol a wschat client asks for and a wschat server answers.
pub const SUBPROTOCOL: &str = "wschat.v1";
/// Response header by which a wschat server identifies itself in the handshake.
///
/// The subprotocol alone cannot tell a wschat server from a plain relay: some relays
/// (Node's `ws` among them) answer with the first subprotocol offered, whatever it is.
pub const SERVER_HEADER: &str = "x-wschat-protocol";
/// Value of [`SERVER_HEADER`]: the protocol version.
pub const PROTOCOL_VERSION: &str = "1";
/// Response header of the handshake (JSON and raw mode alike) stating the limits the server
/// applies to each connection, so that a client can keep to them: see [`Limits`].
pub const LIMITS_HEADER: &str = "x-wschat-limits";
/// Room a client lands in when it names none.
pub const DEFAULT_ROOM: &str = "lobby";
/// Longest accepted user name, in characters.
pub const MAX_NAME_CHARS: usize = 32;

/// Close codes the server uses, and what a client should do on each.
pub mod close {
    /// The server is shutting down; reconnect later.
    pub const GOING_AWAY: u16 = 1001;
    /// A text frame was not valid UTF-8 (sent by the WebSocket layer).
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A frame was larger than the server accepts.
    pub const TOO_BIG: u16 = 1009;
    /// Missing or wrong token (browsers; CLI clients get HTTP 401); do not retry.
    pub const UNAUTHORIZED: u16 = 4001;
    /// The client sent faster than `--rate` for too long; reconnect later, more slowly.
    pub const RATE_LIMITED: u16 = 4029;
    /// The client did not read fast enough and its queue filled; reconnect and resume.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// The name asked for at connect is taken or invalid; do not retry with the same name.
    pub const NAME_REJECTED: u16 = 4009;
}

/// A message from a client, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// A chat line for the client's room, or for one member when `to` is set.
    /// `reference`, when present, asks for an [`Event::Ack`].
    Chat {
        content: String,
        reference: Option<u64>,
        to: Option<String>,
        /// An action (`/me waves`), shown as `* alice waves`.
        action: bool,
    },
    /// Take a new name (the tutorial protocol's `setUsername`).
    SetName { name: String },
    /// Move to another room.
    Join { room: String },
    /// List rooms with their member counts.
    Rooms,
    /// List the members of the client's room.
    Who,
}

/// Why a client frame could not be decoded. Each maps to an error event; the connection stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    InvalidJson(String),
    UnknownType(String),
    MissingField {
        kind: &'static str,
        field: &'static str,
    },
}

impl DecodeError {
    /// Stable machine-readable code carried in the error event.
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::InvalidJson(_) => "invalid_json",
            DecodeError::UnknownType(_) => "unknown_type",
            DecodeError::MissingField { .. } => "missing_field",
        }
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::InvalidJson(e) => write!(f, "invalid JSON: {e}"),
            DecodeError::UnknownType(t) => write!(f, "unknown message type '{t}'"),
            DecodeError::MissingField { kind, field } => {
                write!(f, "a '{kind}' message needs a '{field}' field")
            }
        }
    }
}

/// The union of the fields any client message may carry; `decode` checks which are required.
#[derive(Deserialize)]
struct RawInbound {
    #[serde(rename = "type")]
    kind: Option<String>,
    content: Option<String>,
    message: Option<String>,
    username: Option<String>,
    #[serde(rename = "ref")]
    reference: Option<u64>,
    to: Option<String>,
    #[serde(default)]
    action: bool,
    room: Option<String>,
}

/// Decodes one text frame. A frame whose first non-blank character is not `{` is plain chat
/// text (the tutorial protocol accepts plain text as chat); anything else must be a JSON object.
pub fn decode(text: &str) -> Result<Inbound, DecodeError> {
    if !text.trim_start().starts_with('{') {
        return Ok(Inbound::Chat {
            content: text.to_owned(),
            reference: None,
            to: None,
            action: false,
        });
    }
    let raw: RawInbound =
        serde_json::from_str(text).map_err(|e| DecodeError::InvalidJson(e.to_string()))?;
    let kind = raw.kind.ok_or(DecodeError::MissingField {
        kind: "any",
        field: "type",
    })?;
    match kind.as_str() {
        "chat" | "message" => {
            let content = raw
                .content
                .or(raw.message)
                .ok_or(DecodeError::MissingField {
                    kind: "chat",
                    field: "content",
                })?;
            Ok(Inbound::Chat {
                content,
                reference: raw.reference,
                to: raw.to,
                action: raw.action,
            })
        }
        "setUsername" => {
            let name = raw.username.ok_or(DecodeError::MissingField {
                kind: "setUsername",
                field: "username",
            })?;
            Ok(Inbound::SetName { name })
        }
        "join" => {
            let room = raw.room.ok_or(DecodeError::MissingField {
                kind: "join",
                field: "room",
            })?;
            Ok(Inbound::Join { room })
        }
        "rooms" => Ok(Inbound::Rooms),
        "who" => Ok(Inbound::Who),
        _ => Err(DecodeError::UnknownType(kind)),
    }
}

/// What a system notice is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Notice {
    Welcome,
    Join,
    Leave,
    Rename,
    #[serde(other)]
    Other,
}

/// A message from the server. Serialised as one JSON object with a `type` field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Event {
    Chat(ChatEvent),
    System(SystemEvent),
    Ack(AckEvent),
    Error(ErrorEvent),
    Presence(PresenceEvent),
    Gap(GapEvent),
    Synced(SyncedEvent),
    Rooms(RoomsEvent),
    Who(WhoEvent),
    /// A type this client does not know yet (newer servers may add types).
    #[serde(other)]
    Unknown,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatEvent {
    /// Increasing within the room, assigned by the server; absent (0) on private messages,
    /// which are not part of a room's history.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub id: u64,
    pub room: String,
    pub username: String,
    pub message: String,
    /// RFC 3339, UTC, milliseconds.
    pub timestamp: String,
    /// Private messages: the one member it was sent to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub private: bool,
    /// An action line (`/me`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub action: bool,
    /// Sent from history (on join or resume), not live.
    #[serde(default, skip_serializing_if = "is_false")]
    pub history: bool,
}

/// How many are in a room, sent to the room on every visible join and leave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceEvent {
    pub room: String,
    pub count: usize,
}

/// Messages a resuming client missed that are no longer kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapEvent {
    pub room: String,
    pub missed: u64,
    pub message: String,
}

/// History replay is over; live messages follow. `id` is the room's latest message id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncedEvent {
    pub room: String,
    pub id: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomInfo {
    pub name: String,
    pub count: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomsEvent {
    pub rooms: Vec<RoomInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoEvent {
    pub room: String,
    pub members: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemEvent {
    pub message: String,
    pub timestamp: String,
    pub event: Notice,
    pub room: String,
    /// The member the notice is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Members of the room after the event (visible members; quiet senders are not counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
    /// The server's limits for this connection (in the welcome).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
}

/// What the server allows one connection, stated in the welcome (`limits`) and in the
/// handshake's [`LIMITS_HEADER`] (`rate=20, burst=40, max-message-bytes=65536`), which quiet
/// clients, that get no welcome, read.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Messages per second one connection may send once its burst is spent; 0: no limit.
    pub rate: f64,
    /// Messages a connection may send at once before `rate` applies.
    pub burst: u32,
    /// Largest message accepted, in bytes.
    pub max_message_bytes: usize,
}

impl Limits {
    /// The value of [`LIMITS_HEADER`].
    pub fn header_value(&self) -> String {
        format!(
            "rate={}, burst={}, max-message-bytes={}",
            self.rate, self.burst, self.max_message_bytes
        )
    }

    /// Reads a [`LIMITS_HEADER`] value; unknown keys are ignored (more may be added), and a
    /// value without `rate` and `burst` is none.
    pub fn parse_header(value: &str) -> Option<Limits> {
        let (mut rate, mut burst, mut max_message_bytes) = (None, None, None);
        for pair in value.split(',') {
            let Some((key, value)) = pair.split_once('=') else {
                continue;
            };
            let value = value.trim();
            match key.trim() {
                "rate" => {
                    rate = value
                        .parse::<f64>()
                        .ok()
                        .filter(|r| r.is_finite() && *r >= 0.0)
                }
                "burst" => burst = value.parse().ok(),
                "max-message-bytes" => max_message_bytes = value.parse().ok(),
                _ => {}
            }
        }
        Some(Limits {
            rate: rate?,
            burst: burst?,
            max_message_bytes: max_message_bytes.unwrap_or(usize::MAX),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckEvent {
    /// The `ref` the client sent.
    #[serde(rename = "ref")]
    pub reference: u64,
    /// Id the server gave the message (absent for private messages).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub id: u64,
    /// How many other members the message was queued for.
    pub delivered: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorEvent {
    pub code: String,
    pub message: String,
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<u64>,
}

impl Event {
    /// Encodes the event once into a text frame; clones of the frame share its bytes.
    pub fn to_frame(&self) -> Message {
        // Serialising these plain structs (strings, integers, unit enums) cannot fail.
        let json = serde_json::to_string(self).unwrap_or_default();
        Message::text(json)
    }

    pub fn error(code: &str, message: impl Into<String>, reference: Option<u64>) -> Event {
        Event::Error(ErrorEvent {
            code: code.to_owned(),
            message: message.into(),
            reference,
        })
    }
}

/// The current time as the protocol writes it: RFC 3339, UTC, milliseconds.
pub fn timestamp() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Checks a user name: 1 to [`MAX_NAME_CHARS`] characters, letters, digits, `_ - .` only.
pub fn validate_name(name: &str) -> Result<(), String> {
    validate_word("name", name)
}

/// Checks a room name: the same rules as a user name.
pub fn validate_room(room: &str) -> Result<(), String> {
    validate_word("room name", room)
}

fn validate_word(what: &str, name: &str) -> Result<(), String> {
    let chars = name.chars().count();
    if chars == 0 {
        return Err(format!("a {what} cannot be empty"));
    }
    if chars > MAX_NAME_CHARS {
        return Err(format!("a {what} has at most {MAX_NAME_CHARS} characters"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(format!(
            "'{}' is not allowed in a {what} (letters, digits, '_', '-', '.')",
            c.escape_default()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_header_round_trips_and_ignores_what_it_does_not_know() {
        let limits = Limits {
            rate: 0.5,
            burst: 40,
            max_message_bytes: 65536,
        };
        assert_eq!(
            limits.header_value(),
            "rate=0.5, burst=40, max-message-bytes=65536"
        );
        assert_eq!(Limits::parse_header(&limits.header_value()), Some(limits));
        let newer = Limits::parse_header("burst=3,rate=20,colour=blue").unwrap();
        assert_eq!((newer.rate, newer.burst), (20.0, 3));
        assert_eq!(Limits::parse_header("rate=fast, burst=3"), None);
        assert_eq!(Limits::parse_header("rate=-1, burst=3"), None);
        assert_eq!(Limits::parse_header(""), None);
    }

    #[test]
    fn plain_text_is_chat() {
        assert_eq!(
            decode("hello there").unwrap(),
            Inbound::Chat {
                content: "hello there".into(),
                reference: None,
                to: None,
                action: false
            }
        );
    }

    #[test]
    fn tutorial_messages_decode() {
        assert_eq!(
            decode(r#"{"type":"chat","content":"hi"}"#).unwrap(),
            Inbound::Chat {
                content: "hi".into(),
                reference: None,
                to: None,
                action: false
            }
        );
        assert_eq!(
            decode(r#"{"type":"setUsername","username":"bob"}"#).unwrap(),
            Inbound::SetName { name: "bob".into() }
        );
        assert_eq!(
            decode(r#"{"type":"chat","content":"x","ref":7,"extra":1}"#).unwrap(),
            Inbound::Chat {
                content: "x".into(),
                reference: Some(7),
                to: None,
                action: false
            }
        );
        assert_eq!(
            decode(r#"{"type":"chat","content":"psst","to":"bob","action":true}"#).unwrap(),
            Inbound::Chat {
                content: "psst".into(),
                reference: None,
                to: Some("bob".into()),
                action: true
            }
        );
        assert_eq!(
            decode(r#"{"type":"join","room":"dev"}"#).unwrap(),
            Inbound::Join { room: "dev".into() }
        );
        assert_eq!(decode(r#"{"type":"who"}"#).unwrap(), Inbound::Who);
        assert_eq!(decode(r#"{"type":"rooms"}"#).unwrap(), Inbound::Rooms);
    }

    #[test]
    fn bad_frames_have_distinct_errors() {
        assert_eq!(decode("{nope").unwrap_err().code(), "invalid_json");
        assert_eq!(
            decode(r#"{"type":"dance"}"#).unwrap_err().code(),
            "unknown_type"
        );
        assert_eq!(
            decode(r#"{"type":"chat"}"#).unwrap_err().code(),
            "missing_field"
        );
        assert_eq!(
            decode(r#"{"content":"x"}"#).unwrap_err().code(),
            "missing_field"
        );
        assert_eq!(decode(r#"{"type":7}"#).unwrap_err().code(), "invalid_json");
    }

    #[test]
    fn events_round_trip_with_tutorial_field_names() {
        let e = Event::Chat(ChatEvent {
            id: 3,
            room: "lobby".into(),
            username: "bob".into(),
            message: "hi".into(),
            timestamp: "2026-01-01T00:00:00.000Z".into(),
            to: None,
            private: false,
            action: false,
            history: false,
        });
        let Message::Text(t) = e.to_frame() else {
            panic!("not text")
        };
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        assert_eq!(v["type"], "chat");
        assert_eq!(v["username"], "bob");
        assert_eq!(v["message"], "hi");
        assert!(v.get("history").is_none() && v.get("private").is_none());
        assert_eq!(serde_json::from_str::<Event>(&t).unwrap(), e);
        assert_eq!(
            serde_json::from_str::<Event>(r#"{"type":"future","x":1}"#).unwrap(),
            Event::Unknown
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("alice").is_ok());
        assert!(validate_name("élodie_2.x-y").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("a b").is_err());
        assert!(validate_name(&"x".repeat(33)).is_err());
    }
}
