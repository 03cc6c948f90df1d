//! `wschat bench --idle N`: open N connections that send nothing and hold them for the
//! duration (or until Ctrl-C), printing how many are open, so the server's memory per
//! connection can be read from outside (`VmRSS` in `/proc/PID/status`, before and during).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::connect::{Dialer, Identity, Socket};
use super::fleet::Fleet;
use super::progress::Progress;
use super::report::{self, IdleReport};
use super::{signals, BenchConfig};
use crate::exit::Exit;

/// An idle connection reads nothing but a close or a ping: a small buffer keeps the bench's
/// own memory low at 100,000 connections.
const IDLE_READ_BUFFER: usize = 1024;
/// How often the open count is checked while holding.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long a connection waits for its close frame to go out at the end.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// Idle connections join their own room, so they see no one else's traffic.
const IDLE_ROOM: &str = "bench-idle";

pub async fn run(config: &BenchConfig, connections: usize) -> anyhow::Result<Exit> {
    let dialer = Arc::new(
        Dialer::new(
            &config.url,
            connections,
            IDLE_READ_BUFFER,
            config.connect_timeout,
            config.authorization.clone(),
            config.first_source,
        )
        .await?,
    );
    let stop = CancellationToken::new();
    let interrupted = CancellationToken::new();
    let signal = signals::watch(interrupted.clone());
    let open = Arc::new(AtomicUsize::new(0));
    // With --json the status lines go to stderr and stdout holds only the final object.
    let say = |line: String| {
        if config.json {
            eprintln!("{line}");
        } else {
            crate::client::print_line(&line);
        }
    };

    let progress = Progress::new();
    progress.count("connecting", connections as u64);
    let started = Instant::now();
    let mut fleet: Fleet<()> = Fleet::new(dialer.clone(), stop.clone());
    for i in 0..connections {
        // Quiet: a wschat server neither announces nor counts these, so holding them costs
        // the server memory and nothing else.
        let identity = Identity {
            name: format!("idle{i}"),
            room: Some(IDLE_ROOM.to_owned()),
            quiet: true,
        };
        let (stop, open) = (stop.clone(), open.clone());
        fleet.open(i, identity, move |socket, _| hold(socket, stop, open));
    }
    let opened = fleet.wait_open(&progress, &interrupted).await;
    progress.clear();
    let kind = match opened {
        Ok(kind) => kind,
        Err(e) => {
            stop.cancel();
            signal.handle.abort();
            return Err(e);
        }
    };
    let connect_s = started.elapsed().as_secs_f64();
    let opened = open.load(Ordering::Relaxed);

    let holding = Instant::now();
    if !interrupted.is_cancelled() {
        say(format!(
            "open: {opened} connections to {} (opened in {connect_s:.1} s); holding for {} \
             (Ctrl-C to stop)",
            config.url,
            humantime::format_duration(config.duration)
        ));
        let deadline = holding + config.duration;
        let mut check = tokio::time::interval(CHECK_EVERY);
        let mut shown = opened;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                () = interrupted.cancelled() => break,
                _ = check.tick() => {
                    let now = open.load(Ordering::Relaxed);
                    if now != shown {
                        say(format!("open: {now} connections"));
                        shown = now;
                    }
                }
            }
        }
    }
    let held_s = holding.elapsed().as_secs_f64();
    let open_at_end = open.load(Ordering::Relaxed);
    stop.cancel();
    while fleet.tasks.join_next().await.is_some() {}
    signal.handle.abort();

    if config.json {
        report::print_json(&IdleReport {
            mode: "idle",
            url: config.url.to_string(),
            server: kind.map(report::server_name),
            requested: connections,
            opened,
            open_at_end,
            source_addresses: dialer.source_count(),
            connect_s,
            held_s,
            interrupted: interrupted.is_cancelled(),
        })?;
    } else {
        say(format!(
            "closed: held {opened} connections for {held_s:.1} s; {open_at_end} were still open at the end"
        ));
    }
    Ok(signal.exit().unwrap_or(Exit::Success))
}

/// Holds one connection open until the run stops or the server closes it. It counts as open
/// from the moment this is called.
fn hold(
    mut socket: Socket,
    stop: CancellationToken,
    open: Arc<AtomicUsize>,
) -> impl std::future::Future<Output = ()> {
    open.fetch_add(1, Ordering::Relaxed);
    async move {
        let stopped = stop.cancelled();
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                () = &mut stopped => {
                    let _ = tokio::time::timeout(CLOSE_WAIT, socket.close(None)).await;
                    break;
                }
                next = socket.next() => match next {
                    // tungstenite answers pings by itself.
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                    Some(Ok(_)) => {}
                },
            }
        }
        open.fetch_sub(1, Ordering::Relaxed);
    }
}
