//! `wschat send`: deliver messages and exit 0 only once the server has confirmed them.
//!
//! Against a wschat server each message carries a `ref` and is confirmed by an `ack` event
//! naming its id and how many members it was queued for. Against a plain relay, which
//! confirms nothing, "delivered" means the relay answered our close frame: it has read every
//! frame sent before it (frames arrive in order), though it reports nothing about recipients.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::connect::{self, ServerKind, Target};
use super::render::Renderer;
use super::{close, connection_lost, decode_event, print_line, server_closed, Sink, Stream};
use crate::exit::{fail, Exit};
use crate::protocol::Event;
use crate::signals::Signals;

/// Messages sent but not yet acknowledged, at most.
const WINDOW: usize = 256;

#[derive(Debug, Clone)]
pub struct SendConfig {
    pub target: Target,
    /// `None`: one message per line of stdin.
    pub message: Option<String>,
    /// After delivery, print what arrives for this long.
    pub wait: Option<Duration>,
    /// Fail unless each message reached at least this many members.
    pub min_recipients: Option<usize>,
    /// Longest wait for an acknowledgement.
    pub ack_timeout: Duration,
    pub json: bool,
}

/// Where the messages come from.
enum Source {
    One(Option<String>),
    Stdin(tokio::io::Lines<BufReader<tokio::io::Stdin>>),
}

impl Source {
    async fn next(&mut self) -> anyhow::Result<Option<String>> {
        match self {
            Source::One(message) => Ok(message.take()),
            Source::Stdin(lines) => Ok(lines.next_line().await?),
        }
    }
}

struct Sender<'a> {
    config: &'a SendConfig,
    url: String,
    renderer: Renderer,
    kind: ServerKind,
    pending: HashSet<u64>,
    next_ref: u64,
}

impl Sender<'_> {
    fn frame(&mut self, text: &str) -> Message {
        match self.kind {
            ServerKind::Wschat => {
                let reference = self.next_ref;
                self.next_ref += 1;
                self.pending.insert(reference);
                Message::text(
                    json!({"type": "chat", "content": text, "ref": reference}).to_string(),
                )
            }
            ServerKind::Relay => Message::text(format!("{} says: {text}", self.config.target.name)),
        }
    }

    /// Handles a frame from the server: acknowledgements, refusals, and (with `--wait`) output.
    fn receive(&mut self, message: Message, printing: bool) -> anyhow::Result<()> {
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(bytes) if printing => {
                print_line(&self.renderer.relay_binary(bytes.len()));
                return Ok(());
            }
            Message::Close(frame) => {
                if self.pending.is_empty() && !printing {
                    return Ok(());
                }
                let error = server_closed(&self.url, frame.as_ref());
                if self.pending.is_empty() || crate::exit::exit_for(&error) != Exit::ServerGone {
                    return Err(error);
                }
                // The server closed with messages unconfirmed (it may have refused one, as
                // with 1009): they were not delivered.
                return Err(fail(
                    Exit::NotAcknowledged,
                    format!(
                        "{} message(s) not acknowledged: {error}",
                        self.pending.len()
                    ),
                ));
            }
            _ => return Ok(()),
        };
        if self.kind == ServerKind::Relay {
            if printing {
                print_line(&self.renderer.relay_text(&text));
            }
            return Ok(());
        }
        let Some((event, value)) = decode_event(&text) else {
            return Ok(());
        };
        match &event {
            Event::Ack(ack) if self.pending.remove(&ack.reference) => {
                if let Some(min) = self.config.min_recipients {
                    if ack.delivered < min {
                        return Err(fail(
                            Exit::NotAcknowledged,
                            format!(
                                "message {} reached {} member(s), fewer than --min-recipients {min}",
                                ack.id, ack.delivered
                            ),
                        ));
                    }
                }
            }
            Event::Error(error) if error.reference.is_some_and(|r| self.pending.contains(&r)) => {
                return Err(fail(
                    Exit::NotAcknowledged,
                    format!(
                        "the server refused the message: {}",
                        super::render::escape_control(&error.message)
                    ),
                ));
            }
            _ if printing => {
                if let Some(line) = self.renderer.event(&event, &value) {
                    print_line(&line);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

pub async fn run(config: SendConfig) -> anyhow::Result<Exit> {
    let mut signals = Signals::new()?;
    let connection = tokio::select! {
        connection = connect::connect(&config.target) => connection?,
        exit = signals.recv() => return Ok(exit),
    };
    if connection.kind == ServerKind::Relay && config.min_recipients.is_some() {
        return Err(fail(
            Exit::Usage,
            format!(
                "{} is a plain relay, which does not report recipients: drop --min-recipients",
                config.target.url
            ),
        ));
    }
    let (mut sink, mut stream) = connection.socket.split();
    let mut sender = Sender {
        config: &config,
        url: config.target.url.to_string(),
        renderer: Renderer::new(&config.target.name, config.json),
        kind: connection.kind,
        pending: HashSet::new(),
        next_ref: 1,
    };
    let source = match &config.message {
        Some(message) => Source::One(Some(message.clone())),
        None => Source::Stdin(BufReader::new(tokio::io::stdin()).lines()),
    };
    tokio::select! {
        result = deliver(&mut sender, source, &mut sink, &mut stream) => result?,
        exit = signals.recv() => return Ok(exit),
    }
    if let Some(wait) = config.wait {
        let until = Instant::now() + wait;
        loop {
            tokio::select! {
                next = stream.next() => match next {
                    Some(Ok(message)) => sender.receive(message, true)?,
                    Some(Err(e)) => return Err(connection_lost(&sender.url, Some(e))),
                    None => return Err(connection_lost(&sender.url, None::<String>)),
                },
                () = tokio::time::sleep_until(until) => break,
                exit = signals.recv() => return Ok(exit),
            }
        }
    }
    let answered = close(&mut sink, &mut stream).await;
    if sender.kind == ServerKind::Relay && !answered {
        return Err(fail(
            Exit::NotAcknowledged,
            format!(
                "{} did not answer the close handshake, so delivery is unconfirmed",
                sender.url
            ),
        ));
    }
    Ok(Exit::Success)
}

/// Sends every message and waits until each is acknowledged.
async fn deliver(
    sender: &mut Sender<'_>,
    mut source: Source,
    sink: &mut Sink,
    stream: &mut Stream,
) -> anyhow::Result<()> {
    let timeout = sender.config.ack_timeout;
    let mut input_done = false;
    let mut last_progress = Instant::now();
    while !(input_done && sender.pending.is_empty()) {
        tokio::select! {
            line = source.next(), if !input_done && sender.pending.len() < WINDOW => {
                match line? {
                    Some(line) if line.trim().is_empty() => {}
                    Some(line) => {
                        let frame = sender.frame(&line);
                        // Bounded: a server that stops reading must not hang the sender.
                        match tokio::time::timeout(timeout, sink.send(frame)).await {
                            Ok(sent) => sent.map_err(|e| connection_lost(&sender.url, Some(e)))?,
                            Err(_) => return Err(fail(
                                Exit::Timeout,
                                format!("{} stopped reading for {}", sender.url, humantime::format_duration(timeout)),
                            )),
                        }
                        last_progress = Instant::now();
                    }
                    None => input_done = true,
                }
            }
            next = stream.next() => match next {
                Some(Ok(message)) => {
                    let before = sender.pending.len();
                    // With --wait, replies that beat the acknowledgement are printed too.
                    let printing = sender.config.wait.is_some();
                    sender.receive(message, printing)?;
                    if sender.pending.len() < before {
                        last_progress = Instant::now();
                    }
                }
                Some(Err(e)) => return Err(connection_lost(&sender.url, Some(e))),
                None => return Err(connection_lost(&sender.url, None::<String>)),
            },
            () = tokio::time::sleep_until(last_progress + timeout), if !sender.pending.is_empty() => {
                return Err(fail(
                    Exit::Timeout,
                    format!(
                        "{} message(s) not acknowledged by {} within {}",
                        sender.pending.len(),
                        sender.url,
                        humantime::format_duration(timeout)
                    ),
                ));
            }
        }
    }
    Ok(())
}
