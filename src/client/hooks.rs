//! What `join` does with what it receives besides printing it: stop at a match (`--until`),
//! answer with a command (`--exec`), append it to a file (`--record`).

use std::path::PathBuf;
use std::time::Duration;

use regex::Regex;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::exec::{self, ExecConfig};
use super::record::Recorder;
use crate::exit::{fail, Exit};
use crate::protocol::Event;

/// The options of `join` that act on received messages.
#[derive(Debug, Clone, Default)]
pub struct HooksConfig {
    /// Exit 0 once a chat message's text matches.
    pub until: Option<Regex>,
    /// Run a command for each chat message from others, sending what it prints.
    pub exec: Option<ExecConfig>,
    /// Append every received event to this file.
    pub record: Option<PathBuf>,
}

/// The running hooks of one `join`.
pub struct Hooks {
    until: Option<Regex>,
    matched: bool,
    exec: Option<exec::Runner>,
    record: Option<Recorder>,
}

impl Hooks {
    /// Opens the record file and starts the command runner.
    pub fn start(config: &HooksConfig) -> anyhow::Result<Hooks> {
        let record = match &config.record {
            Some(path) => Some(Recorder::open(path)?),
            None => None,
        };
        Ok(Hooks {
            until: config.until.clone(),
            matched: false,
            exec: config.exec.clone().map(exec::Runner::start),
            record,
        })
    }

    /// An event as `join` takes it (duplicates after a reconnection are not seen here).
    /// `live`: a new chat message, not history. `me`: the name the client holds now.
    pub fn event(
        &mut self,
        event: &Event,
        value: &Value,
        live: bool,
        me: &str,
    ) -> anyhow::Result<()> {
        if let Some(record) = &mut self.record {
            record.write(value)?;
        }
        let Event::Chat(chat) = event else {
            return Ok(());
        };
        if !live || chat.username == me {
            return Ok(());
        }
        self.check(&chat.message);
        if let Some(exec) = &mut self.exec {
            if !chat.private {
                exec.submit(exec::Job {
                    from: chat.username.clone(),
                    room: chat.room.clone(),
                    id: chat.id,
                    text: chat.message.to_string(),
                });
            }
        }
        Ok(())
    }

    /// A text frame from a plain relay (`NAME says: TEXT` when it came from a wschat client).
    pub fn relay_text(&mut self, text: &str, me: &str) -> anyhow::Result<()> {
        if let Some(record) = &mut self.record {
            record.write(&json!({"type": "raw", "message": text}))?;
        }
        if text.starts_with(&format!("{me} says: ")) {
            // Our own line, echoed by the relay.
            return Ok(());
        }
        // A wschat client's line through a relay: its text is what follows `NAME says: `.
        let (from, said) = text.split_once(" says: ").unwrap_or(("", text));
        self.check(text);
        self.check(said);
        if let Some(exec) = &mut self.exec {
            exec.submit(exec::Job {
                from: from.to_owned(),
                room: String::new(),
                id: 0,
                text: said.to_owned(),
            });
        }
        Ok(())
    }

    /// A binary frame from a plain relay: recorded as `join --json` shows it.
    pub fn relay_binary(&mut self, len: usize) -> anyhow::Result<()> {
        match &mut self.record {
            Some(record) => record.write(&json!({"type": "raw", "binary": true, "bytes": len})),
            None => Ok(()),
        }
    }

    fn check(&mut self, text: &str) {
        if self.until.as_ref().is_some_and(|re| re.is_match(text)) {
            self.matched = true;
        }
    }

    /// Whether `--until` has matched: `join` is done.
    pub fn finished(&self) -> bool {
        self.matched
    }

    /// The next line a command printed, to send to the room. Never ready without `--exec`.
    pub async fn reply(&mut self) -> Option<String> {
        match &mut self.exec {
            Some(exec) => exec.reply().await,
            None => std::future::pending().await,
        }
    }
}

/// The frame that says `text` as `name`: a chat message to a wschat server, `NAME says: TEXT`
/// to a plain relay. Never a command, whatever the text starts with.
pub fn say(wschat: bool, name: &str, text: &str) -> Message {
    if wschat {
        Message::text(json!({"type": "chat", "content": text}).to_string())
    } else {
        Message::text(format!("{name} says: {text}"))
    }
}

impl HooksConfig {
    /// How `join` ends when `--for` (`duration`) runs out: done, or timed out when it waited
    /// for a match.
    pub fn time_up(&self, duration: Option<Duration>) -> anyhow::Result<Exit> {
        match (&self.until, duration) {
            (Some(re), Some(duration)) => Err(fail(
                Exit::Timeout,
                format!(
                    "no message matched --until '{re}' within {}",
                    humantime::format_duration(duration)
                ),
            )),
            _ => Ok(Exit::Success),
        }
    }
}

/// A regular expression for `--until`, or the reason it is not one, on one line.
pub fn parse_until(text: &str) -> Result<Regex, String> {
    Regex::new(text).map_err(|e| {
        let why = e.to_string();
        // Syntax errors span several lines (the pattern, a caret, the error): keep the error.
        let last = why
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("not a regular expression");
        let last = last.trim().trim_start_matches("error: ");
        format!("invalid --until '{text}': {last}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_errors_are_one_line() {
        let e = parse_until("a(b").unwrap_err();
        assert!(!e.contains('\n'), "{e}");
        assert!(e.contains("unclosed group"), "{e}");
        assert!(parse_until("^done$").is_ok());
    }
}
