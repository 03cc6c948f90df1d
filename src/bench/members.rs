//! `wschat bench --members N`: N announced (named, not quiet) members join one room and read
//! everything the server sends them. The run reports how long the joins took, what they cost
//! a local server (CPU per join, resident memory per member, read from `/proc`), how many
//! members the server closed (with their close codes), and then how long one message sent
//! after the last join takes to reach every member.
//!
//! With `--await-message` the bench sends nothing: it waits for a message carrying a
//! [`FINAL_PREFIX`] token sent by someone else (`wschat send`), which is how several bench
//! processes, each under the open-file limit, measure one room together.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::connect::{Dialer, Identity, Socket};
use super::fleet::Fleet;
use super::procfs::{self, Sample};
use super::progress::Progress;
use super::report::{self, group};
use super::{signals, BenchConfig, MembersConfig, Rate};
use crate::client::connect::ServerKind;
use crate::exit::Exit;

/// A member reads notices, presence summaries and one chat message: a small read buffer
/// keeps the bench's own memory low with tens of thousands of members.
const MEMBER_READ_BUFFER: usize = 4096;
/// How long the members may take to be welcomed once connected, plus 1 s per 1,000.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a member waits for its close frame to go out at the end.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// How often progress is redrawn and the final wait checked.
const TICK: Duration = Duration::from_millis(50);
/// The text of the message that must reach every member starts with this, followed by the
/// send time in nanoseconds since the Unix epoch (`wsb-final:1765091234567890123`), so that
/// any process on the same machine can send it and every receiver can time it.
pub const FINAL_PREFIX: &str = "wsb-final:";

/// What every member task shares.
struct Shared {
    members: usize,
    /// Members welcomed so far.
    joined: AtomicUsize,
    /// Cancelled when the last member is welcomed.
    all_joined: CancellationToken,
    /// Members the server closed (or whose connection broke) before the run ended.
    closed: AtomicUsize,
    /// Why, by close code ("4008", "1001") or "broke" / "ended".
    closes: Mutex<BTreeMap<String, u64>>,
    /// Members that received the final message, and each one's delay in milliseconds.
    reached: AtomicUsize,
    delays_ms: Mutex<Vec<f64>>,
    /// Cancelled when every member still open has the final message.
    all_reached: CancellationToken,
    /// Cancelled when the members should close and hand in their counts.
    stop: CancellationToken,
}

impl Shared {
    /// Members accounted for: reached by the final message, or closed.
    fn settled(&self) -> usize {
        self.reached.load(Ordering::Relaxed) + self.closed.load(Ordering::Relaxed)
    }

    fn check_settled(&self) {
        if self.settled() >= self.members {
            self.all_reached.cancel();
        }
    }
}

/// What one member saw besides the final message.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    /// `system` notices other than its welcome (joins, leaves of small rooms).
    notices: u64,
    /// `presence` events, summaries included.
    presence: u64,
    /// The largest room count a presence event told it.
    max_count: u64,
    /// Frames that were neither (history, chat without the final token, anything else).
    other: u64,
}

impl Seen {
    fn add(&mut self, other: &Seen) {
        self.notices += other.notices;
        self.presence += other.presence;
        self.max_count = self.max_count.max(other.max_count);
        self.other += other.other;
    }
}

/// Every figure of a members run. Field names are the `--json` output's.
#[derive(Debug, Serialize)]
pub struct MembersReport {
    pub mode: &'static str,
    pub url: String,
    pub server: Option<&'static str>,
    pub room: String,
    pub members: usize,
    /// Joins per second asked for; `null` for max.
    pub join_rate: Option<f64>,
    pub source_addresses: usize,
    /// Members welcomed by the server.
    pub joined: usize,
    /// From the first connection attempt to the last welcome.
    pub join_s: f64,
    pub joins_per_s: f64,
    /// The server process measured (`--server-pid`, or the local listener of the URL's port);
    /// `null` when none could be read, and then so are the figures below.
    pub server_pid: Option<u32>,
    /// Server CPU time (user + system) spent while the members joined.
    pub server_cpu_s: Option<f64>,
    pub server_cpu_ms_per_join: Option<f64>,
    /// Server resident memory before the first member and after the last joined, in KiB.
    pub server_rss_before_kib: Option<u64>,
    pub server_rss_after_kib: Option<u64>,
    /// (after - before) / members.
    pub kib_per_member: Option<f64>,
    /// Members the server closed, or whose connection broke, before the run ended.
    pub closed: usize,
    /// How many of those by close code (`"4008"`: too slow), or `"broke"` / `"ended"`.
    pub close_codes: BTreeMap<String, u64>,
    /// Whether this bench sent the final message itself (not with --await-message).
    pub message_sent: bool,
    /// Members that received it.
    pub message_reached: usize,
    /// Until every member had it, from its send time; `null` if some never did.
    pub message_all_ms: Option<f64>,
    pub message_p50_ms: Option<f64>,
    /// Join and leave notices (`system`), not counting welcomes.
    pub notices: u64,
    /// `presence` events, coalesced summaries included, all members together.
    pub presence_events: u64,
    /// The largest room count any presence event carried.
    pub max_presence_count: u64,
    pub other_frames: u64,
    pub first_error: Option<String>,
    pub interrupted: bool,
}

pub async fn run(config: &BenchConfig, members: &MembersConfig) -> anyhow::Result<Exit> {
    let n = members.members;
    let dialer = Arc::new(
        Dialer::new(
            &config.url,
            n + 1,
            MEMBER_READ_BUFFER,
            config.connect_timeout,
            config.authorization.clone(),
            config.first_source,
        )
        .await?,
    );
    let server_pid = members
        .server_pid
        .or_else(|| procfs::listener_pid(dialer.address().ip(), dialer.address().port()));
    let shared = Arc::new(Shared {
        members: n,
        joined: AtomicUsize::new(0),
        all_joined: CancellationToken::new(),
        closed: AtomicUsize::new(0),
        closes: Mutex::new(BTreeMap::new()),
        reached: AtomicUsize::new(0),
        delays_ms: Mutex::new(Vec::new()),
        all_reached: CancellationToken::new(),
        stop: CancellationToken::new(),
    });
    let interrupted = CancellationToken::new();
    let signal = signals::watch(interrupted.clone());
    let progress = Progress::new();
    let result = phases(
        config,
        members,
        &dialer,
        &shared,
        server_pid,
        &interrupted,
        &progress,
    )
    .await;
    progress.clear();
    signal.handle.abort();
    let report = result?;
    if config.json {
        report::print_json(&report)?;
    } else {
        print_table(&report)?;
    }
    if let Some(exit) = signal.exit() {
        return Ok(exit);
    }
    let kept_all = report.closed == 0 && report.joined == n && report.message_reached == n;
    Ok(if kept_all {
        Exit::Success
    } else {
        Exit::Failure
    })
}

#[allow(clippy::too_many_lines)]
async fn phases(
    config: &BenchConfig,
    cfg: &MembersConfig,
    dialer: &Arc<Dialer>,
    shared: &Arc<Shared>,
    server_pid: Option<u32>,
    interrupted: &CancellationToken,
    progress: &Progress,
) -> anyhow::Result<MembersReport> {
    let n = cfg.members;
    // With JSON the status lines go to stderr and stdout holds only the final object.
    let say = |line: String| {
        if config.json {
            eprintln!("{line}");
        } else {
            crate::client::print_line(&line);
        }
    };

    // The sender joins first, quietly: it is not announced and reads nothing it keeps.
    let mut sender = if cfg.await_message {
        None
    } else {
        let identity = Identity {
            name: format!("{}sender", cfg.name_prefix),
            room: Some(cfg.room.clone()),
            quiet: true,
        };
        let (socket, _) = dialer.connect(n, &identity).await?;
        let (sink, mut stream) = socket.split();
        let stop = shared.stop.clone();
        let reader = tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    next = stream.next() => match next {
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => break,
                    },
                }
            }
        });
        Some((sink, reader))
    };

    let before = server_pid.and_then(procfs::sample);
    progress.count("joining", n as u64);
    let started = Instant::now();
    let last_join = Arc::new(Mutex::new(started));
    let mut fleet: Fleet<Seen> = Fleet::new(dialer.clone(), shared.stop.clone());
    let mut pace = match cfg.join_rate {
        Rate::Max => None,
        Rate::PerSecond(rate) => Some(tokio::time::interval(Duration::from_secs_f64(1.0 / rate))),
    };
    for i in 0..n {
        if let Some(pace) = pace.as_mut() {
            tokio::select! {
                () = interrupted.cancelled() => break,
                _ = pace.tick() => {}
            }
            if i % 64 == 0 {
                progress.set(shared.joined.load(Ordering::Relaxed) as u64);
            }
        }
        let identity = Identity {
            name: format!("{}{i}", cfg.name_prefix),
            room: Some(cfg.room.clone()),
            quiet: false,
        };
        let (shared, last_join) = (shared.clone(), last_join.clone());
        fleet.open(i, identity, move |socket, _| {
            member(socket, shared, last_join)
        });
    }
    let opened = fleet.wait_open(progress, interrupted).await;
    let kind = match opened {
        Ok(kind) => kind,
        Err(e) => {
            shared.stop.cancel();
            return Err(e);
        }
    };
    // Connected; now wait for every welcome (or closes).
    let welcome_wait = WELCOME_TIMEOUT + Duration::from_secs(n as u64 / 1000);
    let deadline = Instant::now() + welcome_wait;
    let mut tick = tokio::time::interval(TICK);
    loop {
        let done =
            shared.joined.load(Ordering::Relaxed) + shared.closed.load(Ordering::Relaxed) >= n;
        if done || interrupted.is_cancelled() {
            break;
        }
        tokio::select! {
            () = shared.all_joined.cancelled() => break,
            () = interrupted.cancelled() => break,
            () = tokio::time::sleep_until(deadline) => break,
            _ = tick.tick() => progress.set(shared.joined.load(Ordering::Relaxed) as u64),
        }
    }
    let joined = shared.joined.load(Ordering::Relaxed);
    let join_s = last_join
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .saturating_duration_since(started)
        .as_secs_f64();
    let after = server_pid.and_then(procfs::sample);
    progress.clear();
    say(format!(
        "joined: {} of {} members in {join_s:.2} s{}",
        group(joined as u64),
        group(n as u64),
        if cfg.await_message {
            format!(
                "; waiting up to {} for a message starting with {FINAL_PREFIX}",
                humantime::format_duration(config.duration)
            )
        } else {
            String::new()
        }
    ));

    // The message after the last join: sent here, or awaited from elsewhere.
    let mut first_error = None;
    let message_sent = if let Some((sink, _)) = sender.as_mut() {
        if interrupted.is_cancelled() {
            false
        } else {
            let text = final_text();
            let frame = match kind {
                Some(ServerKind::Relay) => Message::text(text),
                _ => Message::text(format!(r#"{{"type":"chat","content":"{text}"}}"#)),
            };
            match sink.send(frame).await {
                Ok(()) => true,
                Err(e) => {
                    first_error = Some(format!("the sender could not send: {e}"));
                    false
                }
            }
        }
    } else {
        false
    };
    if message_sent || cfg.await_message {
        let wait = if cfg.await_message {
            config.duration
        } else {
            config.drain
        };
        let deadline = Instant::now() + wait;
        progress.count("message", n as u64);
        loop {
            tokio::select! {
                () = shared.all_reached.cancelled() => break,
                () = interrupted.cancelled() => break,
                () = tokio::time::sleep_until(deadline) => break,
                _ = tick.tick() => progress.set(shared.reached.load(Ordering::Relaxed) as u64),
            }
        }
        progress.clear();
    }
    shared.stop.cancel();

    let mut seen = Seen::default();
    while let Some(done) = fleet.tasks.join_next().await {
        match done {
            Ok(Some(s)) => seen.add(&s),
            Ok(None) => {}
            Err(e) => {
                first_error.get_or_insert_with(|| format!("a member task failed: {e}"));
            }
        }
    }
    if let Some((mut sink, reader)) = sender {
        let _ = tokio::time::timeout(CLOSE_WAIT, sink.close()).await;
        reader.abort();
    }

    let close_codes = shared
        .closes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let closed = shared.closed.load(Ordering::Relaxed);
    if closed > 0 {
        first_error.get_or_insert_with(|| {
            let codes: Vec<String> = close_codes
                .iter()
                .map(|(c, k)| format!("{c}: {k}"))
                .collect();
            format!("{closed} members were closed ({})", codes.join(", "))
        });
    }
    let reached = shared.reached.load(Ordering::Relaxed);
    let (message_all_ms, message_p50_ms) = {
        let mut delays = shared
            .delays_ms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        delays.sort_by(f64::total_cmp);
        let p50 = delays.get(delays.len() / 2).copied();
        let all = if reached == n {
            delays.last().copied()
        } else {
            None
        };
        (all, p50)
    };
    let cpu = match (before, after) {
        (Some(b), Some(a)) => Some(a.cpu_s - b.cpu_s),
        _ => None,
    };
    let rss = |s: Option<Sample>| s.map(|s| s.rss_kib);
    Ok(MembersReport {
        mode: "members",
        url: config.url.to_string(),
        server: kind.map(report::server_name),
        room: cfg.room.clone(),
        members: n,
        join_rate: match cfg.join_rate {
            Rate::Max => None,
            Rate::PerSecond(r) => Some(r),
        },
        source_addresses: dialer.source_count(),
        joined,
        join_s,
        joins_per_s: if join_s > 0.0 {
            joined as f64 / join_s
        } else {
            0.0
        },
        server_pid: before.and(server_pid),
        server_cpu_s: cpu,
        server_cpu_ms_per_join: cpu.map(|c| c * 1000.0 / n as f64),
        server_rss_before_kib: rss(before),
        server_rss_after_kib: rss(after),
        kib_per_member: match (before, after) {
            (Some(b), Some(a)) => Some((a.rss_kib as f64 - b.rss_kib as f64) / n as f64),
            _ => None,
        },
        closed,
        close_codes,
        message_sent,
        message_reached: reached,
        message_all_ms,
        message_p50_ms,
        notices: seen.notices,
        presence_events: seen.presence,
        max_presence_count: seen.max_count,
        other_frames: seen.other,
        first_error,
        interrupted: interrupted.is_cancelled(),
    })
}

/// `wsb-final:<unix nanos>`.
fn final_text() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{FINAL_PREFIX}{nanos}")
}

/// The send time a final token carries, in nanoseconds since the Unix epoch.
fn final_sent_nanos(text: &str) -> Option<u128> {
    let start = text.find(FINAL_PREFIX)? + FINAL_PREFIX.len();
    let digits: &str = &text[start..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// What kind of frame a member received.
#[derive(Debug, PartialEq)]
enum Frame {
    Welcome,
    Notice,
    /// A presence event and the count it carries.
    Presence(u64),
    Final(u128),
    Other,
}

fn classify(text: &str) -> Frame {
    // The server writes compact JSON with `type` first.
    if text.starts_with(r#"{"type":"presence""#) {
        let count = serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| v.get("count")?.as_u64())
            .unwrap_or(0);
        return Frame::Presence(count);
    }
    if text.starts_with(r#"{"type":"system""#) {
        return if text.contains(r#""event":"welcome""#) {
            Frame::Welcome
        } else {
            Frame::Notice
        };
    }
    match final_sent_nanos(text) {
        Some(nanos) => Frame::Final(nanos),
        None => Frame::Other,
    }
}

/// One announced member: counts as joined at its welcome, reads everything until the run
/// stops or the server closes it.
async fn member(mut socket: Socket, shared: Arc<Shared>, last_join: Arc<Mutex<Instant>>) -> Seen {
    let mut seen = Seen::default();
    let (mut welcomed, mut reached) = (false, false);
    let stopped = shared.stop.cancelled();
    tokio::pin!(stopped);
    let closed = loop {
        let next = tokio::select! {
            biased;
            () = &mut stopped => break None,
            next = socket.next() => next,
        };
        let text = match next {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                break Some(frame.map_or("no code".to_owned(), |f| u16::from(f.code).to_string()))
            }
            Some(Ok(Message::Binary(_))) => {
                seen.other += 1;
                continue;
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) => break Some("broke".to_owned()),
            None => break Some("ended".to_owned()),
        };
        match classify(&text) {
            Frame::Welcome if !welcomed => {
                welcomed = true;
                *last_join.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
                if shared.joined.fetch_add(1, Ordering::Relaxed) + 1 >= shared.members {
                    shared.all_joined.cancel();
                }
            }
            Frame::Welcome | Frame::Notice => seen.notices += 1,
            Frame::Presence(count) => {
                seen.presence += 1;
                seen.max_count = seen.max_count.max(count);
            }
            Frame::Final(sent) if !reached => {
                reached = true;
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                let ms = now.saturating_sub(sent) as f64 / 1e6;
                shared
                    .delays_ms
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(ms);
                shared.reached.fetch_add(1, Ordering::Relaxed);
                shared.check_settled();
            }
            Frame::Final(_) | Frame::Other => seen.other += 1,
        }
    };
    match closed {
        Some(why) => {
            *shared
                .closes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(why)
                .or_default() += 1;
            shared.closed.fetch_add(1, Ordering::Relaxed);
            shared.check_settled();
            if !welcomed
                && shared.joined.load(Ordering::Relaxed) + shared.closed.load(Ordering::Relaxed)
                    >= shared.members
            {
                shared.all_joined.cancel();
            }
        }
        None => {
            let _ = tokio::time::timeout(CLOSE_WAIT, socket.close(None)).await;
        }
    }
    seen
}

fn print_table(r: &MembersReport) -> std::io::Result<()> {
    use std::io::Write;
    let opt = |v: Option<f64>, unit: &str| v.map_or("n/a".to_owned(), |v| format!("{v:.3} {unit}"));
    let mut lines = vec![
        format!("wschat bench --members: {} (room {})", r.url, r.room),
        format!(
            "  joined        {} of {} announced members in {:.2} s ({} joins/s{})",
            group(r.joined as u64),
            group(r.members as u64),
            r.join_s,
            group(r.joins_per_s.round() as u64),
            r.join_rate
                .map(|rate| format!(", asked for {rate}/s"))
                .unwrap_or_default()
        ),
    ];
    match r.server_pid {
        Some(pid) => {
            lines.push(format!(
                "  server        pid {pid}: CPU {} per join ({} in all), {} per member (VmRSS {} -> {} KiB)",
                opt(r.server_cpu_ms_per_join, "ms"),
                opt(r.server_cpu_s, "s"),
                opt(r.kib_per_member, "KiB"),
                r.server_rss_before_kib.unwrap_or(0),
                r.server_rss_after_kib.unwrap_or(0),
            ));
        }
        None => lines.push(
            "  server        not measured: no process listening on the URL's port could be read \
             from /proc, or --server-pid names none"
                .to_owned(),
        ),
    }
    let codes: Vec<String> = r
        .close_codes
        .iter()
        .map(|(c, k)| format!("{c}: {k}"))
        .collect();
    lines.push(format!(
        "  closed        {} members{}",
        group(r.closed as u64),
        if codes.is_empty() {
            String::new()
        } else {
            format!(" ({})", codes.join(", "))
        }
    ));
    lines.push(format!(
        "  message       reached {} of {}{}",
        group(r.message_reached as u64),
        group(r.members as u64),
        match (r.message_all_ms, r.message_p50_ms) {
            (Some(all), Some(p50)) => format!(" in {all:.1} ms (half of them by {p50:.1} ms)"),
            (None, Some(p50)) => format!(" (half of those by {p50:.1} ms)"),
            _ => String::new(),
        }
    ));
    lines.push(format!(
        "  frames        {} notices, {} presence events (largest count {}), {} other",
        group(r.notices),
        group(r.presence_events),
        group(r.max_presence_count),
        group(r.other_frames)
    ));
    if let Some(e) = &r.first_error {
        lines.push(format!("  first error   {e}"));
    }
    if r.interrupted {
        lines.push("  interrupted   the figures cover the run until Ctrl-C".to_owned());
    }
    lines.push(String::new());
    let mut out = std::io::stdout().lock();
    out.write_all(lines.join("\n").as_bytes())?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_told_apart() {
        assert_eq!(
            classify(r#"{"type":"system","message":"Welcome","event":"welcome","room":"r"}"#),
            Frame::Welcome
        );
        assert_eq!(
            classify(r#"{"type":"system","message":"a joined the chat","event":"join"}"#),
            Frame::Notice
        );
        assert_eq!(
            classify(
                r#"{"type":"presence","room":"r","count":150,"message":"a, b, c and 7 others joined · 150 here","joined":["a"],"joins":10}"#
            ),
            Frame::Presence(150)
        );
        assert_eq!(
            classify(r#"{"type":"chat","username":"s","message":"wsb-final:1234","id":3}"#),
            Frame::Final(1234)
        );
        assert_eq!(classify("wsb-final:99"), Frame::Final(99));
        for other in [
            "",
            "hello",
            r#"{"type":"chat","message":"wsb-final:x"}"#,
            r#"{"type":"presence""#,
        ] {
            assert!(
                matches!(classify(other), Frame::Other | Frame::Presence(0)),
                "{other}"
            );
        }
    }

    #[test]
    fn the_final_text_carries_its_send_time() {
        let text = final_text();
        let nanos = final_sent_nanos(&text).unwrap();
        assert!(nanos > 1_600_000_000_000_000_000);
    }
}
