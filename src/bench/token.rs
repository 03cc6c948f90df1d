//! The bench's payload: a token naming the publisher, the sequence number and the send time,
//! padded to the requested size, and the search that finds it again inside any received frame.
//!
//! The token is plain ASCII with no character JSON would escape, so it arrives unchanged
//! whether the server wraps it in a JSON envelope or relays the frame as it came.

use std::fmt::Write;

/// Every token starts with this.
pub const PREFIX: &str = "wsb:";
/// Fills a message up to its requested size.
const PADDING: char = '.';

/// What a token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    /// Sent before the measurement starts, to learn when every receiver hears every publisher.
    Probe { publisher: u32 },
    /// A measured message: sent by `publisher` as its `seq`th, at `sent_nanos` after the epoch.
    Message {
        publisher: u32,
        seq: u64,
        sent_nanos: u64,
    },
}

/// `wsb:<publisher>:<seq>:<sent_nanos>:` followed by padding up to `size` bytes (a `size`
/// smaller than the token gives the bare token).
pub fn message(publisher: u32, seq: u64, sent_nanos: u64, size: usize) -> String {
    let mut text = String::with_capacity(size.max(48));
    // Writing to a String cannot fail.
    let _ = write!(text, "{PREFIX}{publisher}:{seq}:{sent_nanos}:");
    while text.len() < size {
        text.push(PADDING);
    }
    text
}

/// `wsb:<publisher>:probe`.
pub fn probe(publisher: u32) -> String {
    format!("{PREFIX}{publisher}:probe")
}

/// Finds the first token in a frame, whatever surrounds it. `None` when there is none (a
/// notice, a welcome, another client's text) or it is malformed.
pub fn find(text: &str) -> Option<Token> {
    let start = text.find(PREFIX)? + PREFIX.len();
    let rest = &text.as_bytes()[start..];
    let (publisher, rest) = number(rest)?;
    let rest = rest.strip_prefix(b":")?;
    if rest.starts_with(b"probe") {
        return Some(Token::Probe {
            publisher: u32::try_from(publisher).ok()?,
        });
    }
    let (seq, rest) = number(rest)?;
    let rest = rest.strip_prefix(b":")?;
    let (sent_nanos, _) = number(rest)?;
    Some(Token::Message {
        publisher: u32::try_from(publisher).ok()?,
        seq,
        sent_nanos,
    })
}

/// A leading decimal number and what follows it; `None` without digits or on overflow.
fn number(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let mut value: u64 = 0;
    for &b in &bytes[..digits] {
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some((value, &bytes[digits..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_padded_and_found_again() {
        let text = message(3, 41, 123_456_789, 64);
        assert_eq!(text.len(), 64);
        assert!(text.starts_with("wsb:3:41:123456789:...."));
        assert_eq!(
            find(&text),
            Some(Token::Message {
                publisher: 3,
                seq: 41,
                sent_nanos: 123_456_789
            })
        );
    }

    #[test]
    fn a_small_size_gives_the_bare_token() {
        assert_eq!(message(0, 0, 0, 1), "wsb:0:0:0:");
    }

    #[test]
    fn the_token_is_found_inside_an_envelope() {
        let token = message(1, 2, 3, 20);
        let envelope = format!(
            r#"{{"type":"chat","id":9,"room":"r","username":"pub1","message":"{token}","timestamp":"2026-01-01T00:00:00.000Z"}}"#
        );
        assert_eq!(
            find(&envelope),
            Some(Token::Message {
                publisher: 1,
                seq: 2,
                sent_nanos: 3
            })
        );
        assert_eq!(
            find(&format!("pub7 says: {}", probe(7))),
            Some(Token::Probe { publisher: 7 })
        );
    }

    #[test]
    fn anything_else_is_no_token() {
        for text in [
            "",
            "hello",
            r#"{"type":"system","message":"rcv1 joined the chat"}"#,
            "wsb:",
            "wsb:x:1:2",
            "wsb:1:",
            "wsb:1:2",
            "wsb:1:2:",
            "wsb:99999999999:1:2:",
            "wsb:1:99999999999999999999999:2:",
        ] {
            assert_eq!(find(text), None, "{text:?}");
        }
    }
}
