//! A seeded random-input test of the server's decoding path: 1,000,000 random client frames
//! through tungstenite in the server role, configured as `wschat serve` configures it, with every
//! text message then decoded by `wschat::protocol::decode`. Nothing may panic, nothing may hang,
//! and every well-formed frame sequence must decode to exactly the messages it encodes.
//!
//! Most frames are well-formed (masked, valid opcodes, text that is UTF-8 even when split across
//! fragments, control frames between fragments) so that streams run deep; about one in forty
//! is wild: any opcode, FIN, RSV bits and mask bit, 7-, 16- or 64-bit lengths that need not
//! match the bytes that follow. After a wild frame a stream's outcome is not predicted, only
//! survived. `WSCHAT_RANDOM_SEED` replays another seed; `WSCHAT_RANDOM_FRAMES` changes the count.

use std::io::{self, Cursor, Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Error, Message, WebSocket};
use wschat::protocol;

const DEFAULT_SEED: u64 = 0x5eed_2026_0c0f_fee5;
const DEFAULT_FRAMES: u64 = 1_000_000;
/// What `wschat serve` accepts by default (`--max-message-bytes`).
const MAX_MESSAGE: usize = 64 * 1024;

/// The WebSocket settings `wschat serve` uses (src/server/http.rs), at the default limit.
fn server_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
        .read_buffer_size(4 * 1024)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(16 * 1024 + 2 * MAX_MESSAGE)
}

/// A client connection held in memory: reads come from `input`, writes (pongs, close replies)
/// are counted and dropped.
struct Memory {
    input: Cursor<Vec<u8>>,
    written: usize,
}

impl Read for Memory {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Memory {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.written += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What one message decoded from a well-formed prefix must be.
#[derive(Debug, Clone, PartialEq)]
enum Expected {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>),
}

/// One generated client byte stream.
struct Stream {
    bytes: Vec<u8>,
    /// Start offset of each frame in `bytes`.
    starts: Vec<usize>,
    /// The messages the frames before the first wild one encode, in order.
    expected: Vec<Expected>,
}

/// How reading one stream ended.
#[derive(Default)]
struct Outcome {
    messages: u64,
    text: u64,
    decoded_ok: u64,
    decode_errors: u64,
    /// Bytes the decoder took from the stream.
    consumed: usize,
    error: Option<&'static str>,
    mismatch: Option<String>,
}

fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::ConnectionClosed => "connection closed",
        Error::AlreadyClosed => "already closed",
        Error::Io(_) => "io",
        Error::Capacity(_) => "capacity (1009)",
        Error::Utf8(_) => "utf8 (1007)",
        Error::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake) => {
            "end of input"
        }
        Error::Protocol(_) => "protocol (1002)",
        Error::WriteBufferFull(_) => "write buffer full",
        _ => "other",
    }
}

/// Feeds one stream to a server-role WebSocket until it errors; decodes every text message.
fn read_stream(stream: &Stream) -> Outcome {
    let memory = Memory {
        input: Cursor::new(stream.bytes.clone()),
        written: 0,
    };
    let mut ws = WebSocket::from_raw_socket(memory, Role::Server, Some(server_config()));
    let mut outcome = Outcome::default();
    // Every read either returns a message, which takes at least one frame, or ends the loop;
    // the bound only turns a decoder that loops forever into a failure.
    let bound = stream.starts.len() + 8;
    for _ in 0..bound {
        let message = match ws.read() {
            Ok(message) => message,
            Err(e) => {
                outcome.error = Some(error_kind(&e));
                break;
            }
        };
        let index = outcome.messages as usize;
        outcome.messages += 1;
        if let Some(expected) = stream.expected.get(index) {
            let got = match &message {
                Message::Text(t) => Expected::Text(t.as_str().to_owned()),
                Message::Binary(b) => Expected::Binary(b.to_vec()),
                Message::Ping(p) => Expected::Ping(p.to_vec()),
                Message::Pong(p) => Expected::Pong(p.to_vec()),
                Message::Close(c) => Expected::Close(c.as_ref().map(|c| u16::from(c.code))),
                Message::Frame(_) => Expected::Binary(Vec::new()),
            };
            if &got != expected && outcome.mismatch.is_none() {
                outcome.mismatch = Some(format!(
                    "message {index}: expected {expected:.200?}, decoded {got:.200?}"
                ));
            }
        }
        if let Message::Text(text) = message {
            outcome.text += 1;
            match protocol::decode(text.as_str()) {
                Ok(_) => outcome.decoded_ok += 1,
                Err(e) => {
                    // Every error has a code and a message for the error event.
                    assert!(!e.code().is_empty() && !e.to_string().is_empty());
                    outcome.decode_errors += 1;
                }
            }
        }
    }
    if outcome.error.is_none() {
        outcome.error = Some("did not end");
    }
    outcome.consumed = ws.get_ref().input.position() as usize;
    outcome
}

// ---- Generation ------------------------------------------------------------------------------

const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

fn push_frame(
    out: &mut Vec<u8>,
    rng: &mut fastrand::Rng,
    head: u8,
    mask: bool,
    len_field: u64,
    payload: &[u8],
) {
    out.push(head);
    let mask_bit = if mask { 0x80 } else { 0 };
    // The length as declared: the shortest encoding unless `len_field` says otherwise.
    match len_field {
        n @ 0..=125 => out.push(mask_bit | n as u8),
        n @ 126..=0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
    if mask {
        let key = rng.u32(..).to_be_bytes();
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
}

/// A payload length: mostly small, sometimes needing the 16-bit form, rarely large.
fn length(rng: &mut fastrand::Rng, max: usize) -> usize {
    let n = match rng.u32(0..1000) {
        0..=899 => rng.usize(0..64),
        900..=994 => rng.usize(126..1024),
        995..=998 => rng.usize(1024..16 * 1024),
        _ => rng.usize(16 * 1024..=MAX_MESSAGE),
    };
    n.min(max)
}

const WORDS: &[&str] = &[
    "hi",
    "morning back",
    "é",
    "日本語",
    "🦀",
    "\\u0000",
    "\"",
    "{",
    "}",
    "null",
    "type",
    "chat",
    " ",
    "\t",
    "\n",
    "\u{202e}",
    "\u{feff}",
    "ß",
    "0",
];

fn words(rng: &mut fastrand::Rng, bytes: usize) -> String {
    let mut s = String::new();
    while s.len() < bytes {
        match rng.u8(0..4) {
            0 => s.push(rng.char(..)),
            1 => s.push(char::from(rng.u8(0x20..0x7f))),
            _ => s.push_str(WORDS[rng.usize(..WORDS.len())]),
        }
    }
    s
}

/// A text message body: chat lines and wschat JSON, valid or subtly broken.
fn text_body(rng: &mut fastrand::Rng, max: usize) -> String {
    let want = length(rng, max);
    let s = match rng.u8(0..10) {
        0..=2 => words(rng, want),
        3..=7 => {
            let kinds = [
                "chat",
                "message",
                "setUsername",
                "join",
                "rooms",
                "who",
                "dance",
                "",
            ];
            let kind = kinds[rng.usize(..kinds.len())];
            let mut fields = vec![format!("\"type\":{}", json_value(rng, Some(kind)))];
            for field in [
                "content", "message", "username", "ref", "to", "action", "room", "extra",
            ] {
                if rng.bool() {
                    fields.push(format!("\"{field}\":{}", json_value(rng, None)));
                }
            }
            rng.shuffle(&mut fields);
            let mut s = format!("{{{}}}", fields.join(","));
            if rng.u8(0..8) == 0 {
                // Break it: cut it short or splice in a random character.
                let at = floor_char_boundary(&s, rng.usize(0..=s.len()));
                if rng.bool() {
                    s.truncate(at);
                } else {
                    s.insert(at, rng.char(..));
                }
            }
            s
        }
        8 => format!(
            "{}{}",
            " ".repeat(rng.usize(0..4)),
            "{".repeat(rng.usize(1..40))
        ),
        _ => String::new(),
    };
    // Respect the size limit by cutting at a character boundary.
    let mut s = s;
    if s.len() > max {
        let at = floor_char_boundary(&s, max);
        s.truncate(at);
    }
    s
}

fn floor_char_boundary(s: &str, mut at: usize) -> usize {
    at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn json_value(rng: &mut fastrand::Rng, kind: Option<&str>) -> String {
    if let Some(kind) = kind {
        if rng.u8(0..6) != 0 {
            return format!("\"{kind}\"");
        }
    }
    match rng.u8(0..9) {
        0 => "null".into(),
        1 => rng.bool().to_string(),
        2 => rng.u64(..).to_string(),
        3 => rng.i64(..).to_string(),
        4 => format!("{}", rng.f64() * 1e300),
        5 => "[1,{\"a\":[]}]".into(),
        6 => "{\"nested\":{\"deeper\":[true]}}".into(),
        _ => {
            let want = rng.usize(0..40);
            serde_json::Value::String(words(rng, want)).to_string()
        }
    }
}

/// Splits `body` into 1..=n fragments at random byte positions (text may split a character).
fn split(rng: &mut fastrand::Rng, body: &[u8]) -> Vec<Vec<u8>> {
    let pieces = if rng.u8(0..4) == 0 {
        rng.usize(2..6)
    } else {
        1
    };
    let mut cuts: Vec<usize> = (1..pieces).map(|_| rng.usize(0..=body.len())).collect();
    cuts.sort_unstable();
    let mut out = Vec::new();
    let mut from = 0;
    for cut in cuts.into_iter().chain([body.len()]) {
        out.push(body[from..cut].to_vec());
        from = cut;
    }
    out
}

/// A frame with every field random; its declared length need not match what follows.
fn wild_frame(rng: &mut fastrand::Rng, out: &mut Vec<u8>) {
    let opcode = if rng.bool() {
        rng.u8(0..16)
    } else {
        [CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG][rng.usize(..6)]
    };
    let fin = rng.u8(0..4) != 0;
    let rsv = if rng.u8(0..3) == 0 { rng.u8(0..8) } else { 0 };
    let mask = rng.u8(0..8) != 0;
    let actual = rng.usize(0..300);
    let mut payload = vec![0u8; actual];
    rng.fill(&mut payload);
    if opcode == TEXT && rng.bool() {
        payload = text_body(rng, 300).into_bytes();
    }
    let declared = match rng.u8(0..6) {
        0 => rng.u64(0..126),
        1 => rng.u64(126..=0xffff),
        2 => rng.u64(0x1_0000..1 << 20),
        3 => rng.u64(..),
        _ => payload.len() as u64,
    };
    let head = (u8::from(fin) << 7) | (rsv << 4) | opcode;
    // Declared lengths in the 64-bit form may be any value, including small ones.
    if declared > 0xffff || rng.u8(0..10) != 0 {
        push_frame(out, rng, head, mask, declared, &payload);
    } else {
        out.push(head);
        out.push(if mask { 0x80 | 127 } else { 127 });
        out.extend_from_slice(&declared.to_be_bytes());
        if mask {
            out.extend_from_slice(&rng.u32(..).to_be_bytes());
        }
        out.extend_from_slice(&payload);
    }
}

fn control_payload(rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut p = vec![0u8; rng.usize(0..=125)];
    rng.fill(&mut p);
    p
}

/// One client stream of up to `max_frames` frames: well-formed ones, with about one in forty
/// replaced by a wild frame; a close frame ends the stream.
fn generate(rng: &mut fastrand::Rng, max_frames: usize) -> Stream {
    let mut s = Stream {
        bytes: Vec::new(),
        starts: Vec::new(),
        expected: Vec::new(),
    };
    let mut wild = false;
    // Fragments of the current message still to send, its opcode, and what it decodes to.
    let mut pending: Vec<Vec<u8>> = Vec::new();
    let mut first_fragment = true;
    let mut message_kind = TEXT;
    let mut message: Option<Expected> = None;
    while s.starts.len() < max_frames {
        s.starts.push(s.bytes.len());
        if rng.u8(0..40) == 0 {
            wild_frame(rng, &mut s.bytes);
            wild = true;
            continue;
        }
        let expect = |s: &mut Stream, e: Expected| {
            if !wild {
                s.expected.push(e);
            }
        };
        // A control frame, allowed between fragments too.
        let roll = rng.u8(0..100);
        if roll < 8 {
            let payload = control_payload(rng);
            push_frame(
                &mut s.bytes,
                rng,
                0x80 | PING,
                true,
                payload.len() as u64,
                &payload,
            );
            expect(&mut s, Expected::Ping(payload));
            continue;
        }
        if roll < 12 {
            let payload = control_payload(rng);
            push_frame(
                &mut s.bytes,
                rng,
                0x80 | PONG,
                true,
                payload.len() as u64,
                &payload,
            );
            expect(&mut s, Expected::Pong(payload));
            continue;
        }
        if roll < 13 && pending.is_empty() {
            let (payload, code) = match rng.u8(0..3) {
                0 => (Vec::new(), None),
                _ => {
                    let codes = [
                        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1011, 3000, 4999,
                    ];
                    let code = codes[rng.usize(..codes.len())];
                    let mut p = code.to_be_bytes().to_vec();
                    let want = rng.usize(0..60);
                    let reason = words(rng, want);
                    p.extend_from_slice(&reason.as_bytes()[..floor_char_boundary(&reason, 123)]);
                    (p, Some(code))
                }
            };
            push_frame(
                &mut s.bytes,
                rng,
                0x80 | CLOSE,
                true,
                payload.len() as u64,
                &payload,
            );
            expect(&mut s, Expected::Close(code));
            break;
        }
        if pending.is_empty() {
            // Start a new data message, split into fragments.
            let body = if rng.u8(0..4) == 0 {
                message_kind = BINARY;
                let mut b = vec![0u8; length(rng, MAX_MESSAGE)];
                rng.fill(&mut b);
                message = Some(Expected::Binary(b.clone()));
                b
            } else {
                message_kind = TEXT;
                let t = text_body(rng, MAX_MESSAGE);
                message = Some(Expected::Text(t.clone()));
                t.into_bytes()
            };
            pending = split(rng, &body);
            pending.reverse();
            first_fragment = true;
        }
        let fragment = pending.pop().unwrap_or_default();
        let last = pending.is_empty();
        let opcode = if first_fragment {
            message_kind
        } else {
            CONTINUATION
        };
        first_fragment = false;
        let head = (u8::from(last) << 7) | opcode;
        push_frame(
            &mut s.bytes,
            rng,
            head,
            true,
            fragment.len() as u64,
            &fragment,
        );
        if last {
            if let Some(m) = message.take() {
                expect(&mut s, m);
            }
        }
    }
    s
}

#[test]
fn a_million_random_client_frames_never_panic_the_decoder() {
    let seed = std::env::var("WSCHAT_RANDOM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    let target = std::env::var("WSCHAT_RANDOM_FRAMES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_FRAMES);
    let mut rng = fastrand::Rng::with_seed(seed);
    let started = Instant::now();
    let (mut generated, mut delivered, mut streams, mut panics) = (0u64, 0u64, 0u64, 0u64);
    let (mut messages, mut expected_messages, mut text, mut decoded, mut refused) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut bytes = 0u64;
    let mut endings = std::collections::BTreeMap::<&str, u64>::new();
    let mut mismatches = Vec::new();
    let mut short = Vec::new();
    while delivered < target {
        let frames = rng.usize(1..=64);
        let stream = generate(&mut rng, frames);
        streams += 1;
        generated += stream.starts.len() as u64;
        bytes += stream.bytes.len() as u64;
        let outcome = match catch_unwind(AssertUnwindSafe(|| read_stream(&stream))) {
            Ok(outcome) => outcome,
            Err(_) => {
                panics += 1;
                continue;
            }
        };
        // A frame counts as fed to the decoder when the decoder read its first byte.
        delivered += stream
            .starts
            .iter()
            .filter(|&&start| start < outcome.consumed)
            .count() as u64;
        messages += outcome.messages;
        expected_messages += stream.expected.len() as u64;
        text += outcome.text;
        decoded += outcome.decoded_ok;
        refused += outcome.decode_errors;
        *endings.entry(outcome.error.unwrap_or("none")).or_default() += 1;
        if let Some(m) = outcome.mismatch {
            mismatches.push(format!("stream {streams}: {m}"));
        }
        if outcome.messages < stream.expected.len() as u64 {
            short.push(format!(
                "stream {streams}: {} of {} expected messages, then {:?}",
                outcome.messages,
                stream.expected.len(),
                outcome.error
            ));
        }
    }
    let elapsed = started.elapsed();
    println!(
        "random frames (seed {seed:#x}): {delivered} frames fed to the decoder ({generated} \
         generated, {bytes} bytes) in {streams} streams, {:.1?}",
        elapsed
    );
    println!(
        "  {messages} messages read ({expected_messages} predicted from well-formed prefixes); \
         {text} text messages through protocol::decode: {decoded} decoded, {refused} refused \
         with an error event"
    );
    println!("  how streams ended: {endings:?}");
    println!(
        "  panics: {panics}; mismatches: {}; short streams: {}",
        mismatches.len(),
        short.len()
    );
    assert_eq!(panics, 0, "the decoder panicked (seed {seed:#x})");
    assert!(
        mismatches.is_empty(),
        "well-formed frames decoded wrongly (seed {seed:#x}): {:#?}",
        &mismatches[..mismatches.len().min(5)]
    );
    assert!(
        short.is_empty(),
        "well-formed frames were refused (seed {seed:#x}): {:#?}",
        &short[..short.len().min(5)]
    );
    assert!(!endings.contains_key("did not end"), "a stream never ended");
    // The mix is what it claims: most streams run into a wild frame or the end of input, and
    // the size and UTF-8 limits are exercised.
    for ending in [
        "end of input",
        "protocol (1002)",
        "capacity (1009)",
        "utf8 (1007)",
    ] {
        assert!(
            endings.contains_key(ending),
            "no stream ended with {ending}"
        );
    }
    assert!(decoded > 0 && refused > 0);
}
