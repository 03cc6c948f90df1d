//! `wschat send`: deliver messages and exit 0 only once the server has confirmed them.
//!
//! Against a wschat server each message carries a `ref` and is confirmed by an `ack` event
//! naming its id and how many members it was queued for. Against a plain relay, which
//! confirms nothing, "delivered" means the relay answered our close frame: it has read every
//! frame sent before it (frames arrive in order), though it reports nothing about recipients.

use std::collections::{HashSet, VecDeque};
use std::io::IsTerminal;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::connect::{self, ServerKind, Target};
use super::pace::Pacer;
use super::render::Renderer;
use super::{
    close, connection_lost, decode_event, print_line, server_closed_because, Sink, Stream,
};
use crate::exit::{fail, Exit};
use crate::protocol::{Event, Limits};
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
    /// Why the server refused the connection (an invalid room), for the close that follows.
    refusal: Option<String>,
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
                let error =
                    server_closed_because(&self.url, frame.as_ref(), self.refusal.as_deref());
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
            Event::Error(error)
                if super::exit_for_refusal(&error.code) == Exit::HandshakeRejected =>
            {
                self.refusal = Some(super::render::escape_control(&error.message).into_owned());
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
        refusal: None,
    };
    let source = match &config.message {
        Some(message) => Source::One(Some(message.clone())),
        None => {
            if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
                // Otherwise a person sees a command that seems to hang.
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "wschat: reading messages from the terminal, one a line (sent at Enter); \
                     Ctrl-D to finish"
                );
            }
            Source::Stdin(BufReader::new(tokio::io::stdin()).lines())
        }
    };
    tokio::select! {
        result = deliver(&mut sender, source, connection.limits, &mut sink, &mut stream) => result?,
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

/// Lines read ahead of what was sent, at most (in bytes): enough to know, on a terminal, how
/// long a piped batch will take, without holding an endless input in memory.
const READ_AHEAD_BYTES: usize = 16 << 20;

/// On a terminal, says that `send` is keeping to the server's pace, and how long it will take.
struct PaceReport {
    bar: ProgressBar,
    shown: bool,
}

impl PaceReport {
    fn new() -> Option<PaceReport> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        // Hidden until it has something to say.
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
        // A constant template known to be valid; a bad one would only lose the style.
        if let Ok(style) = ProgressStyle::with_template("{prefix} [{bar:20}] {pos}/{len} {msg}") {
            bar.set_style(style.progress_chars("=> "));
        }
        Some(PaceReport { bar, shown: false })
    }

    /// Shows (from the first wait on) how far the batch is and how long the rest will take.
    fn update(&mut self, pacer: &Pacer, acknowledged: u64, sent: u64, queued: usize, more: bool) {
        let eta = humantime::format_duration(Duration::from_secs(
            pacer.time_for(queued).as_secs_f64().ceil() as u64,
        ));
        self.bar.set_length(sent + queued as u64);
        self.bar.set_position(acknowledged);
        self.bar.set_message(if more {
            format!("~{eta}+ left")
        } else {
            format!("~{eta} left")
        });
        if !self.shown {
            self.shown = true;
            self.bar.set_prefix(format!(
                "sending at {}/s (the server's limit)",
                show_rate(pacer.server_rate())
            ));
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
        }
    }
}

impl Drop for PaceReport {
    /// The bar goes when `send` is done, however it ends: what follows is the result.
    fn drop(&mut self) {
        if self.shown {
            self.bar.finish_and_clear();
        }
    }
}

/// A rate as people read it: `20`, `0.5`.
fn show_rate(rate: f64) -> String {
    let rounded = (rate * 100.0).round() / 100.0;
    format!("{rounded}")
}

/// Sends every message, at the server's pace, and waits until each is acknowledged.
async fn deliver(
    sender: &mut Sender<'_>,
    mut source: Source,
    limits: Option<Limits>,
    sink: &mut Sink,
    stream: &mut Stream,
) -> anyhow::Result<()> {
    let timeout = sender.config.ack_timeout;
    let mut input_done = false;
    let mut last_progress = Instant::now();
    let mut queue: VecDeque<String> = VecDeque::new();
    let mut queued_bytes = 0usize;
    let mut pacer = Pacer::new(limits, Instant::now());
    let mut report = PaceReport::new();
    let (mut sent, mut acknowledged) = (0u64, 0u64);
    while !(input_done && queue.is_empty() && sender.pending.is_empty()) {
        // When the next queued line may go: at once, or when the server's pace allows.
        let send_at = match &mut pacer {
            Some(pacer) if !queue.is_empty() => Some(pacer.ready_at(Instant::now())),
            _ => Some(Instant::now()),
        }
        .filter(|_| !queue.is_empty() && sender.pending.len() < WINDOW);
        if let (Some(at), Some(pacer), Some(report)) = (send_at, &pacer, &mut report) {
            if at > Instant::now() || report.shown {
                report.update(pacer, acknowledged, sent, queue.len(), !input_done);
            }
        }
        tokio::select! {
            biased;
            next = stream.next() => match next {
                Some(Ok(message)) => {
                    let before = sender.pending.len();
                    // With --wait, replies that beat the acknowledgement are printed too.
                    let printing = sender.config.wait.is_some();
                    sender.receive(message, printing)?;
                    if sender.pending.len() < before {
                        acknowledged += (before - sender.pending.len()) as u64;
                        last_progress = Instant::now();
                    }
                }
                Some(Err(e)) => return Err(connection_lost(&sender.url, Some(e))),
                None => return Err(connection_lost(&sender.url, None::<String>)),
            },
            () = sleep_until_some(send_at) => {
                let Some(line) = queue.pop_front() else { continue };
                queued_bytes -= line.len();
                if let Some(pacer) = &mut pacer {
                    pacer.take(Instant::now());
                }
                let frame = sender.frame(&line);
                // Bounded: a server that stops reading must not hang the sender.
                match tokio::time::timeout(timeout, sink.send(frame)).await {
                    Ok(sent) => sent.map_err(|e| connection_lost(&sender.url, Some(e)))?,
                    Err(_) => return Err(fail(
                        Exit::Timeout,
                        format!("{} stopped reading for {}", sender.url, humantime::format_duration(timeout)),
                    )),
                }
                sent += 1;
                last_progress = Instant::now();
            }
            line = source.next(), if !input_done && queued_bytes < READ_AHEAD_BYTES => {
                match line? {
                    Some(line) if line.trim().is_empty() => {}
                    Some(line) => {
                        queued_bytes += line.len();
                        queue.push_back(line);
                    }
                    None => input_done = true,
                }
            }
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

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
