//! `wschat join`: stay in a room, print what arrives, send what is typed.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::connect::{self, ServerKind, Target};
use super::input::{self, Input, Printer};
use super::render::Renderer;
use super::{close, connection_lost, decode_event, server_closed, Sink, Stream};
use crate::exit::{fail, Exit};
use crate::protocol::{Event, Notice};
use crate::signals::Signals;

#[derive(Debug, Clone)]
pub struct JoinConfig {
    pub target: Target,
    /// Exit 0 after this many chat messages were received.
    pub count: Option<u64>,
    /// Exit 0 after this long.
    pub duration: Option<Duration>,
    /// NDJSON output.
    pub json: bool,
}

const HELP: &str = "commands: /name NEW (rename), /quit (leave), /help; \
a line starting with // sends it with one / removed";

/// What a typed line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Command<'a> {
    Say(&'a str),
    Rename(&'a str),
    Quit,
    Help,
    Unknown(&'a str),
}

fn parse_line(line: &str) -> Command<'_> {
    if line.starts_with("//") {
        // `//etc` sends `/etc`.
        return Command::Say(&line[1..]);
    }
    let Some(command) = line.strip_prefix('/') else {
        return Command::Say(line);
    };
    let (verb, rest) = command.split_once(' ').unwrap_or((command, ""));
    match (verb, rest.trim()) {
        ("quit" | "exit" | "q", _) => Command::Quit,
        ("help" | "?", _) => Command::Help,
        ("name" | "nick", new) if !new.is_empty() => Command::Rename(new),
        _ => Command::Unknown(verb),
    }
}

struct Session {
    kind: ServerKind,
    url: String,
    /// The name this client speaks as (used in `NAME says:` for a relay).
    name: String,
    renderer: Renderer,
    printer: Printer,
    connected: bool,
    received: u64,
}

impl Session {
    fn print(&mut self, line: String) -> anyhow::Result<()> {
        match self.printer.line(line) {
            Ok(()) => Ok(()),
            // `wschat join alice | head -3`: the reader is gone, which is a fine way to end.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                Err(fail(Exit::Success, String::new()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Handles one frame from the server. Returns how many chat messages it carried.
    fn receive(&mut self, message: Message) -> anyhow::Result<u64> {
        match (self.kind, message) {
            (ServerKind::Wschat, Message::Text(text)) => {
                let Some((event, value)) = decode_event(&text) else {
                    let line = self.renderer.relay_text(&text);
                    self.print(line)?;
                    return Ok(0);
                };
                if let Event::System(system) = &event {
                    if system.event == Notice::Welcome && !self.connected {
                        self.connected = true;
                        let line =
                            self.renderer
                                .connected(&self.url, true, Some(system.message.as_str()));
                        self.print(line)?;
                        return Ok(0);
                    }
                }
                if let Some(line) = self.renderer.event(&event, &value) {
                    self.print(line)?;
                }
                Ok(u64::from(matches!(event, Event::Chat(_))))
            }
            (_, Message::Text(text)) => {
                let line = self.renderer.relay_text(&text);
                self.print(line)?;
                Ok(1)
            }
            (_, Message::Binary(bytes)) => {
                let line = self.renderer.relay_binary(bytes.len());
                self.print(line)?;
                Ok(1)
            }
            _ => Ok(0),
        }
    }

    /// Acts on a typed line. Returns `false` when the user asked to leave.
    async fn typed(&mut self, sink: &mut Sink, line: &str) -> anyhow::Result<bool> {
        let frame = match parse_line(line) {
            Command::Quit => return Ok(false),
            Command::Help => {
                let line = self.renderer.local(HELP);
                self.print(line)?;
                return Ok(true);
            }
            Command::Unknown(verb) => {
                let line = self
                    .renderer
                    .local(&format!("error: unknown command '/{verb}' (try /help)"));
                self.print(line)?;
                return Ok(true);
            }
            Command::Say(text) if text.trim().is_empty() => return Ok(true),
            Command::Say(text) => match self.kind {
                ServerKind::Wschat => json!({"type": "chat", "content": text}).to_string(),
                ServerKind::Relay => format!("{} says: {text}", self.name),
            },
            Command::Rename(new) => match self.kind {
                ServerKind::Wschat => json!({"type": "setUsername", "username": new}).to_string(),
                ServerKind::Relay => {
                    self.name = new.to_owned();
                    return Ok(true);
                }
            },
        };
        sink.send(Message::text(frame))
            .await
            .map_err(|e| connection_lost(&self.url, Some(e)))?;
        Ok(true)
    }
}

pub async fn run(config: JoinConfig) -> anyhow::Result<Exit> {
    let mut signals = Signals::new()?;
    let connection = tokio::select! {
        connection = connect::connect(&config.target) => connection?,
        exit = signals.recv() => return Ok(exit),
    };
    let (mut sink, mut stream) = connection.socket.split();
    let name = &config.target.name;
    let mut terminal = input::start(&format!("{name}> "));
    let mut session = Session {
        kind: connection.kind,
        url: config.target.url.to_string(),
        name: name.clone(),
        renderer: Renderer::new(name, config.json),
        printer: std::mem::replace(&mut terminal.printer, Printer::Stdout),
        connected: false,
        received: 0,
    };
    if session.kind == ServerKind::Relay {
        session.connected = true;
        let line = session.renderer.connected(&session.url, false, None);
        session.print(line)?;
    }
    let result = converse(
        &config,
        &mut session,
        &mut terminal,
        &mut signals,
        &mut sink,
        &mut stream,
    )
    .await;
    match result {
        Ok(exit) => {
            close(&mut sink, &mut stream).await;
            Ok(exit)
        }
        Err(e) if crate::exit::exit_for(&e) == Exit::Success => {
            close(&mut sink, &mut stream).await;
            Ok(Exit::Success)
        }
        Err(e) => Err(e),
    }
}

async fn converse(
    config: &JoinConfig,
    session: &mut Session,
    terminal: &mut input::Terminal,
    signals: &mut Signals,
    sink: &mut Sink,
    stream: &mut Stream,
) -> anyhow::Result<Exit> {
    let deadline = config.duration.map(|d| Instant::now() + d);
    let mut reading_input = true;
    loop {
        tokio::select! {
            next = stream.next() => match next {
                Some(Ok(Message::Close(frame))) => {
                    return Err(server_closed(&session.url, frame.as_ref()));
                }
                Some(Ok(message)) => {
                    session.received += session.receive(message)?;
                    if config.count.is_some_and(|n| session.received >= n) {
                        return Ok(Exit::Success);
                    }
                }
                Some(Err(e)) => return Err(connection_lost(&session.url, Some(e))),
                None => return Err(connection_lost(&session.url, None::<String>)),
            },
            input = terminal.lines.recv(), if reading_input => match input {
                Some(Input::Line(line)) => {
                    if !session.typed(sink, &line).await? {
                        return Ok(Exit::Success);
                    }
                }
                // Ctrl-D at a prompt leaves; the end of piped input does not (a background
                // job in a script has no stdin, and should keep listening).
                Some(Input::End) | None if terminal.interactive => return Ok(Exit::Success),
                Some(Input::End) | None => reading_input = false,
                Some(Input::Interrupt) => return Ok(Exit::Interrupted),
            },
            () = sleep_until(deadline) => return Ok(Exit::Success),
            exit = signals.recv() => return Ok(exit),
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_commands() {
        assert_eq!(parse_line("hello"), Command::Say("hello"));
        assert_eq!(parse_line("//etc/passwd"), Command::Say("/etc/passwd"));
        assert_eq!(parse_line("/quit"), Command::Quit);
        assert_eq!(parse_line("/name  bob "), Command::Rename("bob"));
        assert_eq!(parse_line("/name"), Command::Unknown("name"));
        assert_eq!(parse_line("/dance now"), Command::Unknown("dance"));
        assert_eq!(parse_line("/help"), Command::Help);
    }
}
