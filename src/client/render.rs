//! Turning what a client receives into lines: tagged text for people, NDJSON for scripts.
//!
//! Text that came from other people is never written raw: control characters (an escape
//! sequence could rewrite the terminal) are shown escaped.

use std::borrow::Cow;

use colored::Colorize;
use serde_json::{json, Value};

use crate::protocol::{ChatEvent, Event, Notice};

/// Characters that must not reach a terminal raw: C0 and C1 controls and DEL (escape
/// sequences), and the bidirectional overrides that make text read differently than it is.
fn is_unsafe(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Shows unsafe characters as escapes: `\n`, `\u{1b}`, `\u{202e}`.
pub fn escape_control(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_unsafe(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// One JSON object on one line, with every unsafe character `\u`-escaped (serde_json leaves
/// DEL, C1 controls and bidi overrides as they are, which is valid JSON but not terminal-safe).
pub fn json_line(value: &Value) -> String {
    let text = value.to_string();
    if !text.chars().any(is_unsafe) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if is_unsafe(c) {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// Formats lines for one client.
pub struct Renderer {
    /// The tag on every line: the name the client started with.
    name: String,
    /// The name the client holds now (after `/name`), to recognise private messages to it.
    me: String,
    json: bool,
}

impl Renderer {
    pub fn new(name: &str, json: bool) -> Renderer {
        Renderer {
            name: name.to_owned(),
            me: name.to_owned(),
            json,
        }
    }

    /// Follows a rename: private messages to `name` are now to this client.
    pub fn set_me(&mut self, name: &str) {
        name.clone_into(&mut self.me);
    }

    fn tag(&self) -> String {
        format!("[{}]", self.name).bold().to_string()
    }

    fn line(&self, label: &str, text: &str) -> String {
        format!("{} {label} {}", self.tag(), escape_control(text))
    }

    /// The client is connected (to a wschat server: the server has registered it).
    pub fn connected(&self, url: &str, wschat: bool, welcome: Option<&str>) -> String {
        if self.json {
            let mut v = json!({
                "type": "connected",
                "name": self.name,
                "url": url,
                "server": if wschat { "wschat" } else { "relay" },
            });
            if let Some(welcome) = welcome {
                v["message"] = json!(welcome);
            }
            return v.to_string();
        }
        format!("{} {}", self.tag(), "connected".green())
    }

    /// A wschat event; `None` for events that are not shown (acknowledgements).
    pub fn event(&self, event: &Event, value: &Value) -> Option<String> {
        if self.json {
            return Some(json_line(value));
        }
        match event {
            Event::Chat(chat) => Some(self.chat(chat)),
            Event::System(system) => {
                let label = match system.event {
                    Notice::Welcome => "welcome:",
                    _ => "system:",
                };
                // Presence, as people read it: how many are here after a join or a leave.
                let count = match (system.event, system.count) {
                    (Notice::Join | Notice::Leave, Some(n)) => format!(" ({n} here)"),
                    _ => String::new(),
                };
                Some(format!(
                    "{} {} {}{count}",
                    self.tag(),
                    label.yellow(),
                    escape_control(&system.message)
                ))
            }
            Event::Error(error) => Some(format!(
                "{} {} {}",
                self.tag(),
                "error:".red(),
                escape_control(&error.message)
            )),
            Event::Gap(gap) => Some(format!(
                "{} {} {}",
                self.tag(),
                "system:".yellow(),
                escape_control(&gap.message)
            )),
            Event::Rooms(rooms) => {
                let list: Vec<String> = rooms
                    .rooms
                    .iter()
                    .map(|r| format!("{} ({})", escape_control(&r.name), r.count))
                    .collect();
                Some(self.line("rooms:", &list.join(", ")))
            }
            Event::Who(who) => {
                let mut list: Vec<String> = who
                    .members
                    .iter()
                    .map(|n| escape_control(n).into_owned())
                    .collect();
                list.extend(
                    who.quiet
                        .iter()
                        .map(|n| format!("{} (quiet)", escape_control(n))),
                );
                let mut line = list.join(", ");
                let listed = who.members.len() + who.quiet.len();
                if who.total > listed {
                    line.push_str(&format!(" … {} here in all", who.total));
                }
                Some(self.line(&format!("in {}:", escape_control(&who.room)), &line))
            }
            // A large room's summary of who came and went.
            Event::Presence(presence) => presence.message.as_deref().map(|message| {
                format!(
                    "{} {} {}",
                    self.tag(),
                    "system:".yellow(),
                    escape_control(message)
                )
            }),
            // Counts are in the join and leave notices; `synced` only matters to programs.
            Event::Ack(_) | Event::Synced(_) => None,
            Event::Unknown => Some(self.line("unknown event:", &value.to_string())),
        }
    }

    fn chat(&self, chat: &ChatEvent) -> String {
        let from = escape_control(&chat.username).bold();
        let text = escape_control(&chat.message);
        let said = if chat.action {
            format!("* {from} {text}")
        } else {
            format!("{from} says: {text}")
        };
        let label = match (&chat.to, chat.private, chat.history) {
            (Some(to), true, _) if to == &self.me && chat.username != self.me => {
                "private:".magenta().to_string()
            }
            (Some(to), true, _) => format!("{} {}:", "private to".magenta(), escape_control(to)),
            (_, _, true) => "history:".dimmed().to_string(),
            _ => "received:".to_owned(),
        };
        format!("{} {label} {said}", self.tag())
    }

    /// A text frame from a relay.
    pub fn relay_text(&self, text: &str) -> String {
        if self.json {
            return json_line(&json!({"type": "raw", "message": text}));
        }
        self.line("received:", text)
    }

    /// A binary frame from a relay.
    pub fn relay_binary(&self, len: usize) -> String {
        if self.json {
            return json!({"type": "raw", "binary": true, "bytes": len}).to_string();
        }
        format!("{} received: <binary, {len} bytes>", self.tag())
    }

    /// A message from this client itself (command output, local errors).
    pub fn local(&self, text: &str) -> String {
        if self.json {
            return json!({"type": "local", "message": text}).to_string();
        }
        format!("{} {}", self.tag(), text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(from: &str, text: &str) -> (Event, Value) {
        let event = Event::Chat(ChatEvent {
            id: 1,
            room: "lobby".into(),
            username: from.into(),
            message: text.into(),
            timestamp: "t".into(),
            to: None,
            private: false,
            action: false,
            history: false,
            replayed: Default::default(),
        });
        let value = serde_json::to_value(&event).unwrap();
        (event, value)
    }

    #[test]
    fn chat_lines_are_tagged() {
        colored::control::set_override(false);
        let r = Renderer::new("alice", false);
        let (e, v) = chat("bob", "morning back");
        assert_eq!(
            r.event(&e, &v).unwrap(),
            "[alice] received: bob says: morning back"
        );
        assert_eq!(r.relay_text("hi"), "[alice] received: hi");
        assert_eq!(r.connected("ws://x/", true, None), "[alice] connected");
    }

    #[test]
    fn control_characters_are_escaped() {
        colored::control::set_override(false);
        let r = Renderer::new("alice", false);
        let (e, v) = chat("m\u{1b}[31mallory", "a\nb\u{7}\u{1b}]0;pwned\u{7}");
        let line = r.event(&e, &v).unwrap();
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert_eq!(
            line,
            "[alice] received: m\\u{1b}[31mallory says: a\\nb\\u{7}\\u{1b}]0;pwned\\u{7}"
        );
        assert_eq!(escape_control("plain é"), "plain é");
        assert_eq!(escape_control("a\u{202e}b\u{9b}c"), "a\\u{202e}b\\u{9b}c");
        let line = json_line(&serde_json::json!({"m": "x\u{9b}31m\u{202e}\u{7f}"}));
        assert!(!line.chars().any(is_unsafe), "{line}");
        assert_eq!(
            serde_json::from_str::<Value>(&line).unwrap()["m"],
            "x\u{9b}31m\u{202e}\u{7f}"
        );
    }

    #[test]
    fn json_lines_are_the_event() {
        let r = Renderer::new("alice", true);
        let (e, v) = chat("bob", "x\ny");
        let line = r.event(&e, &v).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<Value>(&line).unwrap(), v);
        let c: Value = serde_json::from_str(&r.connected("ws://x/", false, None)).unwrap();
        assert_eq!(c["type"], "connected");
        assert_eq!(c["server"], "relay");
    }
}
