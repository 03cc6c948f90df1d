//! `wschat join`: stay in a room, print what arrives, send what is typed; reconnect and
//! resume when the connection is lost.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use super::connect::{self, ServerKind, Target};
use super::hooks::{self, Hooks, HooksConfig};
use super::input::{self, Input, Printer};
use super::pace::Pacer;
use super::render::{self, Renderer};
use super::{close, connection_lost, decode_event, Sink, Stream};
use crate::exit::{exit_for, fail, Exit};
use crate::protocol::{close as codes, Event, GapEvent, Limits, Notice};
use crate::signals::Signals;

#[derive(Debug, Clone)]
pub struct JoinConfig {
    pub target: Target,
    /// Exit 0 after this many chat messages were received.
    pub count: Option<u64>,
    /// Exit 0 after this long.
    pub duration: Option<Duration>,
    /// Reconnect (and resume) when the connection is lost.
    pub reconnect: bool,
    /// NDJSON output.
    pub json: bool,
    /// `--until`, `--exec`, `--record`.
    pub hooks: HooksConfig,
}

const HELP: &str = "commands: /join ROOM, /rooms, /who, /msg NAME TEXT, /me ACTION, \
/name NEW, /history, /quit, /help; a line starting with // sends it with one / removed";

/// Messages of a replay shown on a terminal; older ones are counted, and shown by `/history`.
const REPLAY_SHOWN: usize = 5;

/// How long after a loss a "name taken" refusal is taken for our own lingering connection.
const NAME_GRACE: Duration = Duration::from_secs(60);

/// How often the client pings the server.
const PING_INTERVAL: Duration = Duration::from_secs(20);

/// Longest wait for a close frame to go out when a connection is given up.
const LET_GO_WAIT: Duration = Duration::from_secs(1);

/// First and longest pause between reconnection attempts.
const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// What a typed line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Command<'a> {
    Say(&'a str),
    Me(&'a str),
    Msg(&'a str, &'a str),
    Join(&'a str),
    Rename(&'a str),
    Rooms,
    Who,
    Quit,
    Help,
    History,
    /// A command used wrongly or unknown: the message to show.
    Bad(String),
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
    let rest = rest.trim();
    match verb {
        "quit" | "exit" | "q" => Command::Quit,
        "help" | "?" => Command::Help,
        "history" => Command::History,
        "rooms" => Command::Rooms,
        "who" => Command::Who,
        "name" | "nick" if !rest.is_empty() => Command::Rename(rest),
        "join" if !rest.is_empty() => Command::Join(rest),
        "me" if !rest.is_empty() => Command::Me(rest),
        "msg" => match rest.split_once(' ') {
            Some((to, text)) if !text.trim().is_empty() => Command::Msg(to, text.trim()),
            _ => Command::Bad("usage: /msg NAME TEXT".into()),
        },
        "name" | "nick" | "join" | "me" => Command::Bad(format!("usage: /{verb} ARGUMENT")),
        _ => Command::Bad(format!("unknown command '/{verb}' (try /help)")),
    }
}

/// State that lives across reconnections.
struct Session {
    kind: ServerKind,
    url: String,
    /// The name this client speaks as (used in `NAME says:` for a relay).
    name: String,
    renderer: Renderer,
    printer: Printer,
    /// Room the server last put this client in.
    room: Option<String>,
    /// Id of the last message seen in `room`: the resume point.
    last_id: Option<u64>,
    /// The server history `last_id` is a position in.
    epoch: Option<String>,
    /// Whether this connection's history replay is what the client missed (a resume) rather
    /// than context from before it first joined.
    resuming: bool,
    /// Whether this connection's first welcome was seen (later ones are room moves).
    greeted: bool,
    /// A name asked for with `/name`, until the server confirms it.
    renaming: Option<String>,
    /// When the connection was last lost, until a new one is greeted.
    lost_at: Option<Instant>,
    /// Set on reconnecting (to when the connection was lost), until the welcome says so.
    reconnected: Option<Instant>,
    /// The last line [`Session::status`] printed.
    last_status: Option<String>,
    /// What the server allows this connection (from the handshake).
    limits: Option<Limits>,
    /// NDJSON output: every event is printed as it came.
    json: bool,
    /// Output for a person at a terminal: the welcome is shown and a long replay condensed.
    condense: bool,
    /// A `gap` notice waiting to learn whether any message follows it.
    held_gap: Option<GapEvent>,
    /// Why the server refused this connection (a taken name), for the error on stderr.
    refusal: Option<String>,
    /// History lines held back during a replay (on a terminal).
    replay: Vec<String>,
    /// The last replay, for `/history`.
    earlier: Vec<String>,
    received: u64,
    hooks: Hooks,
}

/// How one connection ended.
enum SessionEnd {
    /// The client is done, with this exit code.
    Done(Exit),
    /// The connection was lost or closed by the server; this is the error if it is not retried.
    Lost { error: anyhow::Error, retry: bool },
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

    /// A line about the connection itself (lost, retrying, back): on stderr, or above the
    /// prompt on a terminal, where stderr would land on the line being typed.
    fn status(&mut self, text: &str) -> anyhow::Result<()> {
        // While the connection is down, the same news is told once: a server that keeps
        // refusing the name our lingering old connection holds says so on every retry.
        if self.lost_at.is_some() && self.last_status.as_deref() == Some(text) {
            return Ok(());
        }
        self.last_status = Some(text.to_owned());
        let line = format!("wschat: {text}");
        match self.printer {
            Printer::Prompt(_) => self.print(line),
            Printer::Stdout => {
                use std::io::Write;
                let _ = writeln!(std::io::stderr().lock(), "{line}");
                Ok(())
            }
        }
    }

    /// Says the connection is back, once the server has taken the client in again.
    fn say_reconnected(&mut self) -> anyhow::Result<()> {
        let Some(lost) = self.reconnected.take() else {
            return Ok(());
        };
        let away = lost.elapsed().as_secs_f64();
        let url = self.url.clone();
        self.status(&format!("reconnected to {url} after {away:.1}s"))
    }

    fn local(&mut self, text: &str) -> anyhow::Result<()> {
        let line = self.renderer.local(text);
        self.print(line)
    }

    /// Handles one frame from the server. Returns how many new chat messages it carried.
    fn receive(&mut self, message: Message) -> anyhow::Result<u64> {
        match (self.kind, message) {
            (ServerKind::Wschat, Message::Text(text)) => {
                let Some((event, value)) = decode_event(&text) else {
                    let line = self.renderer.relay_text(&text);
                    self.print(line)?;
                    return Ok(0);
                };
                self.event(event, value)
            }
            (_, Message::Text(text)) => {
                let line = self.renderer.relay_text(&text);
                self.print(line)?;
                self.hooks.relay_text(&text, &self.name)?;
                Ok(1)
            }
            (_, Message::Binary(bytes)) => {
                let line = self.renderer.relay_binary(bytes.len());
                self.print(line)?;
                self.hooks.relay_binary(bytes.len())?;
                Ok(1)
            }
            _ => Ok(0),
        }
    }

    fn event(&mut self, mut event: Event, mut value: serde_json::Value) -> anyhow::Result<u64> {
        let mut counts = 0;
        match &mut event {
            Event::System(system) if system.event == Notice::Welcome => {
                if system.epoch.is_some() {
                    self.epoch.clone_from(&system.epoch);
                }
                if self.room.as_deref() != Some(system.room.as_str()) {
                    // A new room: ids there are unrelated to the last one's.
                    self.room = Some(system.room.clone());
                    self.last_id = None;
                    self.resuming = false;
                }
                if !self.greeted {
                    self.greeted = true;
                    self.lost_at = None;
                    self.say_reconnected()?;
                    let line =
                        self.renderer
                            .connected(&self.url, true, Some(system.message.as_str()));
                    self.print(line)?;
                    if self.condense {
                        // A person sees who is here; a script reads only `connected`.
                        if let Some(line) = self.renderer.event(&event, &value) {
                            self.print(line)?;
                        }
                    }
                    return self
                        .hooks
                        .event(&event, &value, false, &self.name)
                        .map(|()| 0);
                }
            }
            Event::Chat(chat) if chat.id > 0 => {
                if self.last_id.is_some_and(|last| chat.id <= last) {
                    // Already seen before a reconnection.
                    return Ok(0);
                }
                self.last_id = Some(chat.id);
                if chat.history && self.resuming {
                    // Missed while disconnected: new to this client, so shown as live.
                    chat.history = false;
                    value["history"] = serde_json::Value::Bool(false);
                }
                counts = u64::from(!chat.history);
            }
            Event::Chat(chat) => counts = u64::from(chat.username != self.name),
            Event::System(system)
                if system.event == Notice::Rename
                    && system.name.is_some()
                    && system.name == self.renaming =>
            {
                // The server confirmed our new name: answer to it, and reconnect under it.
                if let Some(new) = self.renaming.take() {
                    self.renderer.set_me(&new);
                    self.name = new;
                }
            }
            // What follows may start below the last id seen (a restarted history): take it all.
            Event::Gap(_) => self.last_id = None,
            Event::Synced(synced) => {
                if !synced.epoch.is_empty() {
                    self.epoch = Some(synced.epoch.clone());
                }
                if self.last_id.is_some_and(|last| synced.id < last) {
                    // The server's history restarted (it keeps history in memory).
                    self.last_id = Some(synced.id);
                }
                self.last_id = self.last_id.or(Some(synced.id));
                self.resuming = false;
            }
            _ => {}
        }
        if let Event::Error(error) = &event {
            if !self.greeted && super::exit_for_refusal(&error.code) == Exit::HandshakeRejected {
                // A refusal of the connection itself: the reason of the close that follows,
                // told on stderr with the exit status (and, as text, only there).
                self.refusal = Some(render::escape_control(&error.message).into_owned());
                if !self.json {
                    return Ok(counts);
                }
            }
        }
        if !self.json {
            match &event {
                // Held until it is known whether anything follows it (see `said_since`).
                Event::Gap(gap) => {
                    self.held_gap = Some(gap.clone());
                    return Ok(counts);
                }
                Event::Synced(_) => self.said_since(false)?,
                Event::Chat(chat) if chat.id > 0 => {
                    self.said_since(true)?;
                    if chat.history && self.condense {
                        if let Some(line) = self.renderer.event(&event, &value) {
                            self.replay.push(line);
                        }
                        return Ok(counts);
                    }
                }
                _ => {}
            }
            if !matches!(&event, Event::Chat(chat) if chat.history) {
                self.show_replay()?;
            }
        }
        if let Some(line) = self.renderer.event(&event, &value) {
            self.print(line)?;
        }
        self.hooks.event(&event, &value, counts > 0, &self.name)?;
        Ok(counts)
    }

    /// Prints a held `gap` notice once the replay after it begins (`something` is a message)
    /// or ends. A restarted server's notice promises recent messages; when none follow, it
    /// says what is true instead.
    fn said_since(&mut self, something: bool) -> anyhow::Result<()> {
        let Some(mut gap) = self.held_gap.take() else {
            return Ok(());
        };
        if !something && (gap.restarted || gap.missed == 0) {
            gap.message =
                "the server restarted without its history; nothing has been said since".into();
        }
        let value = serde_json::Value::Null;
        match self.renderer.event(&Event::Gap(gap), &value) {
            Some(line) => self.print(line),
            None => Ok(()),
        }
    }

    /// On a terminal, prints the replay held back: a line for the older messages (kept for
    /// `/history`), then the last few.
    fn show_replay(&mut self) -> anyhow::Result<()> {
        if self.replay.is_empty() {
            return Ok(());
        }
        let replay = std::mem::take(&mut self.replay);
        let hidden = replay.len().saturating_sub(REPLAY_SHOWN);
        if hidden > 0 {
            let line = self.renderer.local(&format!(
                "… {hidden} earlier message{} (/history shows them)",
                if hidden == 1 { "" } else { "s" }
            ));
            self.print(line)?;
        }
        for line in &replay[hidden..] {
            self.print(line.clone())?;
        }
        self.earlier = replay;
        Ok(())
    }

    /// Acts on a typed line. Returns `false` when the user asked to leave.
    async fn typed(&mut self, sink: &mut Sink, line: &str) -> anyhow::Result<bool> {
        let wschat = self.kind == ServerKind::Wschat;
        let frame = match parse_line(line) {
            Command::Quit => return Ok(false),
            Command::Help => return self.local(HELP).map(|()| true),
            Command::History => {
                if self.earlier.is_empty() {
                    return self.local("no earlier messages").map(|()| true);
                }
                for line in self.earlier.clone() {
                    self.print(line)?;
                }
                return Ok(true);
            }
            Command::Bad(message) => {
                return self.local(&format!("error: {message}")).map(|()| true)
            }
            Command::Say(text) if text.trim().is_empty() => return Ok(true),
            Command::Say(text) if wschat => json!({"type": "chat", "content": text}),
            Command::Say(text) => json!(format!("{} says: {text}", self.name)),
            Command::Me(text) if wschat => json!({"type": "chat", "content": text, "action": true}),
            Command::Me(text) => json!(format!("* {} {text}", self.name)),
            Command::Msg(to, text) if wschat => json!({"type": "chat", "content": text, "to": to}),
            Command::Rename(new) if wschat => {
                self.renaming = Some(new.to_owned());
                json!({"type": "setUsername", "username": new})
            }
            Command::Rename(new) => {
                self.name = new.to_owned();
                return Ok(true);
            }
            Command::Join(room) if wschat => json!({"type": "join", "room": room}),
            Command::Rooms if wschat => json!({"type": "rooms"}),
            Command::Who if wschat => json!({"type": "who"}),
            Command::Msg(..) | Command::Join(_) | Command::Rooms | Command::Who => {
                return self
                    .local("error: a plain relay has no rooms, names or private messages")
                    .map(|()| true);
            }
        };
        let text = match frame {
            serde_json::Value::String(text) => text,
            object => object.to_string(),
        };
        sink.send(Message::text(text))
            .await
            .map_err(|e| connection_lost(&self.url, Some(e)))?;
        Ok(true)
    }
}

/// Close codes after which reconnecting would only fail the same way.
fn is_terminal(frame: Option<&CloseFrame>) -> bool {
    frame.is_some_and(|f| {
        matches!(
            u16::from(f.code),
            1000 | 1002 | 1003 | 1007 | 1008 | 1009 | codes::NAME_REJECTED | codes::UNAUTHORIZED
        )
    })
}

pub async fn run(config: JoinConfig) -> anyhow::Result<Exit> {
    let mut signals = Signals::new()?;
    let hooks = Hooks::start(&config.hooks)?;
    let mut target = config.target.clone();
    // The first connection must work: a wrong URL or a name taken fails at once.
    let mut connection = tokio::select! {
        connection = connect::connect(&target) => connection?,
        exit = signals.recv() => return Ok(exit),
    };
    let name = &config.target.name;
    let mut terminal = input::start(&format!("{name}> "));
    let mut session = Session {
        kind: connection.kind,
        url: config.target.url.to_string(),
        name: name.clone(),
        renderer: Renderer::new(name, config.json),
        printer: std::mem::replace(&mut terminal.printer, Printer::Stdout),
        room: None,
        last_id: None,
        epoch: None,
        resuming: false,
        greeted: false,
        renaming: None,
        lost_at: None,
        reconnected: None,
        last_status: None,
        limits: None,
        json: config.json,
        condense: !config.json && terminal.interactive,
        held_gap: None,
        refusal: None,
        replay: Vec::new(),
        earlier: Vec::new(),
        received: 0,
        hooks,
    };
    let deadline = config.duration.map(|d| Instant::now() + d);
    let mut attempt = 0u32;
    loop {
        let (mut sink, mut stream) = connection.socket.split();
        session.limits = connection.limits;
        session.kind = connection.kind;
        session.greeted = false;
        if session.kind == ServerKind::Relay {
            let line = session.renderer.connected(&session.url, false, None);
            session.print(line)?;
            // A relay sends no welcome: being connected is all there is.
            session.lost_at = None;
            session.say_reconnected()?;
        }
        let ending = converse(
            &config,
            deadline,
            &mut session,
            &mut terminal,
            &mut signals,
            &mut sink,
            &mut stream,
        )
        .await;
        let (error, retry) = match ending {
            Ok(SessionEnd::Done(exit)) => {
                close(&mut sink, &mut stream).await;
                return Ok(exit);
            }
            Err(e) if exit_for(&e) == Exit::Success => {
                close(&mut sink, &mut stream).await;
                return Ok(Exit::Success);
            }
            Err(e) => return Err(e),
            Ok(SessionEnd::Lost { error, retry }) => (error, retry),
        };
        let reconnecting = config.reconnect && retry;
        if reconnecting {
            let lost = session.lost_at.is_some();
            session.lost_at.get_or_insert_with(Instant::now);
            let text = format!("{error:#}");
            if lost {
                // Lost again before being taken in (a refused name): a retry that failed.
                session.status(&format!("still reconnecting: {text}"))?;
            } else {
                session.status(&format!("{text}; reconnecting"))?;
            }
        }
        // Answer the server's close frame (or send ours) at once: the server waits for it,
        // and the old socket must not linger while this client reconnects.
        let_go(&mut sink).await;
        drop((sink, stream));
        if !reconnecting {
            return Err(error);
        }
        let lost_at = *session.lost_at.get_or_insert_with(Instant::now);
        // Reconnect until it works, the time is up, or a signal says stop. Each failure is
        // told once, and again only when the reason changes.
        connection = loop {
            attempt += 1;
            let pause = backoff(attempt);
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = sleep_until(deadline) => return config.hooks.time_up(config.duration),
                exit = signals.recv() => return Ok(exit),
            }
            target.room = session.room.clone().or(target.room);
            session.name.clone_into(&mut target.name);
            target.since = session.last_id;
            target.epoch.clone_from(&session.epoch);
            session.resuming = session.last_id.is_some();
            tokio::select! {
                result = connect::connect(&target) => match result {
                    Ok(connection) => break connection,
                    Err(e) if exit_for(&e) == Exit::HandshakeRejected => return Err(e),
                    Err(e) => session.status(&format!("still reconnecting: {e:#}"))?,
                },
                () = sleep_until(deadline) => return config.hooks.time_up(config.duration),
                exit = signals.recv() => return Ok(exit),
            }
        };
        session.reconnected = Some(lost_at);
        attempt = 0;
    }
}

/// Ends a connection that is being given up: answers the server's close frame (tungstenite
/// queues the answer; it goes out when the socket is next written) or sends a close of our
/// own, and flushes. Bounded: a peer that has vanished costs at most [`LET_GO_WAIT`].
async fn let_go(sink: &mut Sink) {
    let _ = tokio::time::timeout(LET_GO_WAIT, sink.close()).await;
}

/// Exponential backoff with full jitter: a random pause up to 250 ms × 2^(attempt-1), at most 10 s.
fn backoff(attempt: u32) -> Duration {
    let ceiling = BACKOFF_START
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(BACKOFF_MAX);
    ceiling.mul_f64(0.5 + fastrand::f64() / 2.0)
}

async fn converse(
    config: &JoinConfig,
    deadline: Option<Instant>,
    session: &mut Session,
    terminal: &mut input::Terminal,
    signals: &mut Signals,
    sink: &mut Sink,
    stream: &mut Stream,
) -> anyhow::Result<SessionEnd> {
    // The client pings too, so a silently dead connection (a NAT that forgot it, a peer gone
    // without a reset) is noticed: nothing heard for three intervals means it is lost.
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.tick().await;
    let mut last_heard = Instant::now();
    // Lines piped in are sent at the server's pace (as `send` does): past its rate it reads
    // this connection more slowly, and closes it if that lasts.
    let mut pacer = Pacer::new(session.limits, Instant::now());
    loop {
        let input_at = pacer.as_mut().map(|p| p.ready_at(Instant::now()));
        let input_ready = input_at.is_none_or(|at| at <= Instant::now());
        tokio::select! {
            () = sleep_until(input_at), if !input_ready && !terminal.finished => {}
            _ = ping.tick() => {
                if last_heard.elapsed() > PING_INTERVAL * 3 {
                    return Ok(SessionEnd::Lost {
                        error: connection_lost(&session.url, Some("no answer to pings")),
                        retry: true,
                    });
                }
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    return Ok(SessionEnd::Lost {
                        error: connection_lost(&session.url, None::<String>),
                        retry: true,
                    });
                }
            }
            next = stream.next() => match next {
                Some(Ok(Message::Close(frame))) => {
                    // Coming back right after a loss, our own old connection may still hold
                    // the name until the server notices it is gone: that refusal is retried.
                    let name_held = frame
                        .as_ref()
                        .is_some_and(|f| u16::from(f.code) == codes::NAME_REJECTED);
                    let retry = !is_terminal(frame.as_ref())
                        || (name_held && session.lost_at.is_some_and(|at| at.elapsed() < NAME_GRACE));
                    let error = super::server_closed_because(
                        &session.url,
                        frame.as_ref(),
                        session.refusal.take().as_deref(),
                    );
                    return Ok(SessionEnd::Lost { retry, error });
                }
                Some(Ok(message)) => {
                    last_heard = Instant::now();
                    session.received += session.receive(message)?;
                    if config.count.is_some_and(|n| session.received >= n) || session.hooks.finished() {
                        return Ok(SessionEnd::Done(Exit::Success));
                    }
                }
                Some(Err(e)) => return Ok(SessionEnd::Lost {
                    error: connection_lost(&session.url, Some(e)),
                    retry: true,
                }),
                None => return Ok(SessionEnd::Lost {
                    error: connection_lost(&session.url, None::<String>),
                    retry: true,
                }),
            },
            input = terminal.lines.recv(), if !terminal.finished && input_ready => match input {
                Some(Input::Line(line)) => {
                    if let Some(pacer) = &mut pacer {
                        pacer.take(Instant::now());
                    }
                    match session.typed(sink, &line).await {
                        Ok(true) => {}
                        Ok(false) => return Ok(SessionEnd::Done(Exit::Success)),
                        // The connection broke while sending: reconnect like any other loss.
                        Err(error) if exit_for(&error) == Exit::ServerGone => {
                            return Ok(SessionEnd::Lost { error, retry: true });
                        }
                        Err(error) => return Err(error),
                    }
                }
                // Ctrl-D at a prompt leaves; the end of piped input does not (a background
                // job in a script has no stdin, and should keep listening).
                Some(Input::End) | None if terminal.interactive => {
                    return Ok(SessionEnd::Done(Exit::Success));
                }
                Some(Input::End) | None => terminal.finished = true,
                Some(Input::Interrupt) => return Ok(SessionEnd::Done(Exit::Interrupted)),
            },
            Some(line) = session.hooks.reply() => {
                let frame = hooks::say(session.kind == ServerKind::Wschat, &session.name, &line);
                if let Err(e) = sink.send(frame).await {
                    return Ok(SessionEnd::Lost { error: connection_lost(&session.url, Some(e)), retry: true });
                }
            }
            () = sleep_until(deadline) => return config.hooks.time_up(config.duration).map(SessionEnd::Done),
            exit = signals.recv() => return Ok(SessionEnd::Done(exit)),
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
        assert_eq!(
            parse_line("/msg bob see you  "),
            Command::Msg("bob", "see you")
        );
        assert_eq!(parse_line("/me waves"), Command::Me("waves"));
        assert_eq!(parse_line("/join dev"), Command::Join("dev"));
        assert_eq!(parse_line("/rooms"), Command::Rooms);
        assert_eq!(parse_line("/who"), Command::Who);
        assert!(matches!(parse_line("/name"), Command::Bad(_)));
        assert!(matches!(parse_line("/msg bob"), Command::Bad(_)));
        assert!(matches!(parse_line("/dance now"), Command::Bad(_)));
        assert_eq!(parse_line("/help"), Command::Help);
    }

    #[test]
    fn backoff_grows_with_jitter_and_a_cap() {
        for attempt in 1..40 {
            let pause = backoff(attempt);
            let ceiling = BACKOFF_START
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(BACKOFF_MAX);
            assert!(
                pause <= ceiling && pause >= ceiling / 2,
                "{attempt}: {pause:?}"
            );
        }
        assert!(backoff(30) <= BACKOFF_MAX);
    }
}
