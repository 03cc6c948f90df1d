//! Wire types of the wschat protocol: what clients send, what the server sends, close codes.
//!
//! The full description, with examples, is `docs/protocol.md`; this module is its source of
//! truth in code. Extra fields may be added to events; existing ones are never renamed.

use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

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
    /// List the members of the client's room, those named after `after` (a page).
    Who { after: Option<String> },
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
    after: Option<String>,
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
        "who" => Ok(Inbound::Who { after: raw.after }),
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

/// A chat message's text. Clones share it: the live event, the history window, the database
/// queue and every replay hold one copy between them, however large the message.
#[derive(Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Text(Arc<str>);

impl Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<String> for Text {
    fn from(text: String) -> Text {
        Text(text.into())
    }
}

impl From<&str> for Text {
    fn from(text: &str) -> Text {
        Text(text.into())
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<String> for Text {
    fn eq(&self, other: &String) -> bool {
        &*self.0 == other.as_str()
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A stored message as history replays send it (`"history": true`): encoded on its first
/// replay, then shared by every later one (clones of the message share it too), so a hundred
/// clients joining a room cost the room's history one encoding, not a hundred.
#[derive(Clone, Default)]
pub struct Replayed(Arc<OnceLock<Utf8Bytes>>);

impl Replayed {
    /// Bytes the encoding holds once made.
    fn get_or_encode(&self, event: &ChatEvent) -> Utf8Bytes {
        self.0
            .get_or_init(|| {
                let mut replayed = event.clone();
                replayed.history = true;
                replayed.replayed = Replayed::default();
                encode(&Event::Chat(replayed))
            })
            .clone()
    }
}

/// Not part of what a message is: two messages are equal whatever was encoded of them.
impl PartialEq for Replayed {
    fn eq(&self, _: &Replayed) -> bool {
        true
    }
}

impl Eq for Replayed {}

impl fmt::Debug for Replayed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "Replayed(encoded)"
        } else {
            "Replayed(not yet)"
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatEvent {
    /// Increasing within the room, assigned by the server; absent (0) on private messages,
    /// which are not part of a room's history.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub id: u64,
    pub room: String,
    pub username: String,
    pub message: Text,
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
    /// This message as replays send it, once encoded.
    #[serde(skip)]
    pub replayed: Replayed,
}

impl ChatEvent {
    /// The frame a history replay sends for this message, encoded once for all replays.
    pub fn replay_frame(&self) -> Message {
        Message::Text(self.replayed.get_or_encode(self))
    }
}

/// How many are in a room, sent to the room on every visible join and leave; in a large room,
/// at most once per interval, with who came and went meanwhile in brief.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PresenceEvent {
    pub room: String,
    pub count: usize,
    /// A summary for people: "alice, bob and 998 others joined · 10,000 here".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The first few who joined (and left) since the last summary, and how many in all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub joined: Vec<String>,
    #[serde(default, skip_serializing_if = "is_zero_usize")]
    pub joins: usize,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left: Vec<String>,
    #[serde(default, skip_serializing_if = "is_zero_usize")]
    pub leaves: usize,
}

fn is_zero_usize(n: &usize) -> bool {
    *n == 0
}

/// Messages a resuming client missed that are no longer kept, or a resume in a history that
/// is no longer the server's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapEvent {
    pub room: String,
    pub missed: u64,
    pub message: String,
    /// The position resumed from was in another history (the server restarted without its
    /// own): the replay that follows starts at this history's beginning.
    #[serde(default, skip_serializing_if = "is_false")]
    pub restarted: bool,
}

/// History replay is over; live messages follow. `id` is the room's latest message id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncedEvent {
    pub room: String,
    pub id: u64,
    /// The identity of the server's history: `id` is a position in it. A client resumes with
    /// both (`since` and `epoch`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub epoch: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomInfo {
    pub name: String,
    pub count: usize,
}

/// The rooms in use, the most populous first, at most [`LIST_MAX`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomsEvent {
    pub rooms: Vec<RoomInfo>,
    /// Rooms in use in all.
    #[serde(default)]
    pub total: usize,
}

/// Members of a room, a page at a time: at most [`LIST_MAX`] names.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WhoEvent {
    pub room: String,
    /// Names of visible members, sorted, after the `after` the request gave.
    pub members: Vec<String>,
    /// Everyone the room counts: visible members on every instance, and quiet ones here.
    #[serde(default)]
    pub total: usize,
    /// Quiet members here (they read the room but are not announced; their names are not
    /// unique), at most [`LIST_MAX`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quiet: Vec<String>,
    /// More names follow: ask again with `"after"` set to this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Most names or rooms one reply lists.
pub const LIST_MAX: usize = 100;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemEvent {
    pub message: String,
    pub timestamp: String,
    pub event: Notice,
    pub room: String,
    /// The member the notice is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Everyone the room counts after the event (see `PresenceEvent::count`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
    /// On the welcome: the identity of the server's history (see [`SyncedEvent::epoch`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
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
        Message::Text(encode(self))
    }

    pub fn error(code: &str, message: impl Into<String>, reference: Option<u64>) -> Event {
        Event::Error(ErrorEvent {
            code: code.to_owned(),
            message: message.into(),
            reference,
        })
    }
}

/// Bytes `text` takes as a JSON string's contents (without the quotes), as the server
/// encodes it: quotes and backslashes take two bytes, control characters two (`\n`) or six
/// (`\u0001`), everything else its UTF-8 length. A chat message is refused (`too_large`)
/// when this exceeds the server's `--max-message-bytes`, so every frame the server makes from
/// it stays within that plus [`MAX_ENVELOPE_BYTES`].
pub fn escaped_len(text: &str) -> usize {
    text.len()
        + text
            .bytes()
            .map(|b| match b {
                b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 1,
                0..=0x1f => 5,
                _ => 0,
            })
            .sum::<usize>()
}

/// Most bytes a chat event adds around its escaped text: the field names, the id, the
/// timestamp, and the room, sender and target names (each at most [`MAX_NAME_CHARS`]
/// characters of up to four bytes, none of which needs escaping).
pub const MAX_ENVELOPE_BYTES: usize = 1024;

fn encode(event: &Event) -> Utf8Bytes {
    // Serialising these plain structs (strings, integers, unit enums) cannot fail.
    serde_json::to_string(event).unwrap_or_default().into()
}

/// The current time as the protocol writes it: RFC 3339, UTC, milliseconds.
pub fn timestamp() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Checks a user name: 1 to [`MAX_NAME_CHARS`] characters, letters, digits, `_ - .` only,
/// all of one script (Unicode TS #39: `аlice` with a Cyrillic `а` is refused).
pub fn validate_name(name: &str) -> Result<(), String> {
    validate_word("name", name)
}

/// Checks a room name: the same rules as a user name.
pub fn validate_room(room: &str) -> Result<(), String> {
    validate_word("room name", room)
}

/// What makes two names the same name: names that look alike (Unicode TS #39 confusables,
/// after lower-casing: `alice`, `Alice`, `ALICE` and an all-Cyrillic `аlісе`) have one key, and
/// only one member at a time may hold a name with a given key.
pub fn name_key(name: &str) -> String {
    unicode_security::confusable_detection::skeleton(&name.to_lowercase()).collect()
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
    if !unicode_security::MixedScript::is_single_script(name) {
        return Err(format!(
            "a {what} mixes scripts (such as Latin and Cyrillic letters that look alike); \
             use letters of one script"
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
        assert_eq!(
            decode(r#"{"type":"who"}"#).unwrap(),
            Inbound::Who { after: None }
        );
        assert_eq!(
            decode(r#"{"type":"who","after":"bob"}"#).unwrap(),
            Inbound::Who {
                after: Some("bob".into())
            }
        );
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

    /// Texts of every kind of character JSON treats specially, at random, with a fixed seed.
    fn random_text(rng: &mut fastrand::Rng, max_bytes: usize) -> String {
        const PICKS: &[char] = &[
            '\u{1}',
            '\u{1f}',
            '\n',
            '\t',
            '\u{8}',
            '\u{c}',
            '\r',
            '"',
            '\\',
            '/',
            'a',
            ' ',
            'é',
            '\u{7f}',
            '\u{2028}',
            '\u{fffd}',
            '😀',
            '\u{10ffff}',
            '\u{0}',
        ];
        let mut text = String::new();
        loop {
            let c = PICKS[rng.usize(..PICKS.len())];
            if text.len() + c.len_utf8() > max_bytes {
                return text;
            }
            text.push(c);
        }
    }

    #[test]
    fn escaped_len_is_what_serde_json_writes() {
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        for _ in 0..2000 {
            let max = rng.usize(0..300);
            let text = random_text(&mut rng, max);
            let json = serde_json::to_string(&text).unwrap();
            assert_eq!(escaped_len(&text), json.len() - 2, "{text:?}");
        }
    }

    #[test]
    fn a_chat_accepted_at_the_limit_encodes_within_limit_and_envelope() {
        let limit = 64 * 1024;
        let longest_name: String = "𝒜".repeat(MAX_NAME_CHARS);
        validate_name(&longest_name).unwrap();
        let mut rng = fastrand::Rng::with_seed(0x11);
        for _ in 0..200 {
            // Inputs up to the input limit, of which the server takes those that fit encoded.
            let text = random_text(&mut rng, limit);
            if escaped_len(&text) > limit {
                continue;
            }
            let event = Event::Chat(ChatEvent {
                id: u64::MAX,
                room: longest_name.clone(),
                username: longest_name.clone(),
                message: text.into(),
                timestamp: timestamp(),
                to: Some(longest_name.clone()),
                private: true,
                action: true,
                history: true,
                replayed: Replayed::default(),
            });
            assert!(event.to_frame().len() <= limit + MAX_ENVELOPE_BYTES);
        }
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
            replayed: Default::default(),
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
        // One script per name: Latin with a Cyrillic look-alike is refused; Cyrillic alone,
        // or Japanese mixing its own scripts, is a name.
        let mixed = validate_name("\u{430}lice").unwrap_err();
        assert!(mixed.contains("mixes scripts"), "{mixed}");
        assert!(validate_name("p\u{430}yp\u{430}l").is_err());
        assert!(validate_room("l\u{43e}bby").is_err());
        assert!(validate_name("\u{430}\u{43b}\u{438}\u{441}\u{430}").is_ok());
        assert!(validate_name("\u{3072}\u{3089}\u{30ab}\u{6f22}").is_ok());
        assert!(validate_name("bob_2.x-y").is_ok());
    }

    #[test]
    fn names_that_look_alike_have_one_key() {
        assert_eq!(name_key("alice"), name_key("Alice"));
        assert_eq!(name_key("alice"), name_key("ALICE"));
        // All Cyrillic, and looks like "асе" in Latin.
        assert_eq!(name_key("\u{430}\u{441}\u{435}"), name_key("ace"));
        assert_eq!(name_key("rn"), name_key("m"));
        assert_eq!(name_key("\u{e9}lodie"), name_key("e\u{301}lodie"));
        assert_ne!(name_key("alice"), name_key("bob"));
        assert_ne!(name_key("alice"), name_key("alice2"));
    }
}
