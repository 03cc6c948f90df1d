//! A load run, phase by phase: open receivers and publishers; probe until every receiver hears
//! every publisher of its room; send for the duration; wait (bounded) for the last deliveries;
//! add up and report.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::connect::{Dialer, Identity};
use super::fleet::Fleet;
use super::progress::Progress;
use super::publisher::{self, Plan, Sent};
use super::report::{self, Latencies, LoadReport};
use super::state::Run;
use super::stats::Tally;
use super::{receiver, signals, BenchConfig, LoadConfig, Rate};
use crate::exit::{fail, Exit};

/// Read buffer of a receiver: a few batches of chat frames.
const RECEIVER_READ_BUFFER: usize = 8 * 1024;
/// With `--rate max`, messages in flight (sent, not yet received by all of their room) for
/// all publishers together. A receiver's queue on the server then holds at most this many
/// chat frames, well below wschat's default outbox of 1024, so a fast server is never asked
/// to drop a receiver for being slow.
const WINDOW_MESSAGES: u64 = 256;
/// How long receivers may take to hear every publisher's probe, plus 1 s per 1,000 connections.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest drain after Ctrl-C.
const INTERRUPTED_DRAIN: Duration = Duration::from_secs(1);
/// How often progress is redrawn and the drain checked.
const TICK: Duration = Duration::from_millis(100);

/// The room name a room number stands for.
fn room_name(room: usize) -> String {
    format!("bench-{room}")
}

pub async fn run(config: &BenchConfig, load: &LoadConfig) -> anyhow::Result<Exit> {
    let total = load.receivers + load.publishers;
    let dialer = Arc::new(
        Dialer::new(
            &config.url,
            total,
            RECEIVER_READ_BUFFER,
            config.connect_timeout,
            config.authorization.clone(),
            config.first_source,
        )
        .await?,
    );
    let receiver_rooms: Vec<usize> = (0..load.receivers).map(|i| i % load.rooms).collect();
    let publisher_rooms: Vec<usize> = (0..load.publishers).map(|p| p % load.rooms).collect();
    let run = Arc::new(Run::new(&receiver_rooms, &publisher_rooms)?);
    let signal = signals::watch(run.interrupted.clone());
    let progress = Progress::new();

    let result = phases(config, load, &dialer, &run, &receiver_rooms, &progress).await;
    progress.clear();
    signal.handle.abort();
    let report = result?;
    if config.json {
        report::print_json(&report)?;
    } else {
        report::print_table(&report)?;
    }
    Ok(signal.exit().unwrap_or(Exit::Success))
}

async fn phases(
    config: &BenchConfig,
    load: &LoadConfig,
    dialer: &Arc<Dialer>,
    run: &Arc<Run>,
    receiver_rooms: &[usize],
    progress: &Progress,
) -> anyhow::Result<LoadReport> {
    let total = load.receivers + load.publishers;

    // Open every connection, receivers first.
    let connect_started = Instant::now();
    progress.count("connecting", total as u64);
    let mut receivers: Fleet<Tally> = Fleet::new(dialer.clone(), run.stop.clone());
    for (i, &room) in receiver_rooms.iter().enumerate() {
        let identity = Identity {
            name: format!("rcv{i}"),
            room: Some(room_name(room)),
            quiet: load.quiet_receivers,
        };
        let run = run.clone();
        receivers.open(i, identity, move |socket, _| {
            receiver::run(socket, room, run)
        });
    }
    let mut publishers: Fleet<Sent> = Fleet::new(dialer.clone(), run.stop.clone());
    let window = WINDOW_MESSAGES.div_ceil(load.publishers as u64).max(1);
    for (p, state) in run.publishers.iter().enumerate() {
        let identity = Identity {
            name: format!("pub{p}"),
            room: Some(room_name(state.room)),
            quiet: true,
        };
        let run = run.clone();
        let (rate, count, size, duration, receiver_count) = (
            load.rate,
            load.publishers,
            load.size,
            config.duration,
            load.receivers,
        );
        publishers.open(load.receivers + p, identity, move |socket, kind| {
            let plan = Plan {
                index: p,
                kind,
                rate,
                publishers: count,
                size,
                duration,
                window,
                receivers: receiver_count,
            };
            publisher::run(socket, plan, run)
        });
    }
    let opened = async {
        let kind = receivers.wait_open(progress, &run.interrupted).await?;
        let more = publishers.wait_open(progress, &run.interrupted).await?;
        anyhow::Ok(kind.or(more))
    };
    let kind = match opened.await {
        Ok(kind) => kind,
        Err(e) => {
            run.stop.cancel();
            return Err(e);
        }
    };
    let connect_s = connect_started.elapsed().as_secs_f64();

    // Probe: the measurement starts once every receiver hears every publisher of its room,
    // so no message is lost to a receiver the server has not finished adding.
    if !run.interrupted.is_cancelled() {
        progress.count("probing", run.ready_target);
        let probe_wait = PROBE_TIMEOUT + Duration::from_secs(total as u64 / 1000);
        let deadline = Instant::now() + probe_wait;
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                () = run.all_ready.cancelled() => break,
                () = run.interrupted.cancelled() => break,
                () = tokio::time::sleep_until(deadline) => {
                    run.stop.cancel();
                    let (mut closed, mut first) = (0, None);
                    while let Some(done) = receivers.tasks.join_next().await {
                        if let Ok(Some(Tally { closed: Some(why), .. })) = done {
                            closed += 1;
                            first.get_or_insert(why);
                        }
                    }
                    let ready = run.ready.load(std::sync::atomic::Ordering::Relaxed);
                    let waited = humantime::format_duration(probe_wait);
                    let message = match first {
                        Some(why) => format!(
                            "{closed} of {} receivers were closed before the measurement could \
                             start (first: {why}); in a wschat JSON room every visible member is \
                             announced to all others: for thousands of receivers try \
                             --quiet-receivers",
                            load.receivers
                        ),
                        None => format!(
                            "receivers did not hear the publishers within {waited} ({ready} of \
                             {} receiver-publisher pairs did): does {} relay text messages to \
                             the other clients?",
                            run.ready_target, config.url
                        ),
                    };
                    return Err(fail(Exit::Failure, message));
                }
                _ = tick.tick() => {
                    progress.set(run.ready.load(std::sync::atomic::Ordering::Relaxed));
                }
            }
        }
    }

    // Send for the duration.
    run.go.cancel();
    let started = Instant::now();
    progress.timed("running", config.duration);
    let mut sent_reports = Vec::new();
    let mut publisher_errors = 0;
    let mut first_error: Option<String> = None;
    let mut tick = tokio::time::interval(TICK);
    let mut last = (Instant::now(), 0u64);
    loop {
        tokio::select! {
            done = publishers.tasks.join_next() => match done {
                Some(Ok(Some(sent))) => sent_reports.push(sent),
                Some(Ok(None)) => {}
                Some(Err(e)) => {
                    publisher_errors += 1;
                    first_error.get_or_insert_with(|| format!("a publisher task failed: {e}"));
                }
                None => break,
            },
            _ = tick.tick() => {
                let now = Instant::now();
                let delivered = run.delivered();
                let per_s = (delivered - last.1) as f64 / (now - last.0).as_secs_f64().max(1e-3);
                last = (now, delivered);
                let elapsed = now - started;
                progress.set(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
                progress.message(format!(
                    "{:.1}/{:.1} s  {} deliveries/s",
                    elapsed.as_secs_f64(),
                    config.duration.as_secs_f64(),
                    report::group(per_s.round() as u64)
                ));
            }
        }
    }
    let sending_s = started.elapsed().as_secs_f64();

    // Drain: wait, at most `--drain`, for deliveries still on their way. After Ctrl-C too
    // (at most a second), or what was in flight would count as lost.
    progress.count("draining", run.expected());
    let drain = if run.interrupted.is_cancelled() {
        config.drain.min(INTERRUPTED_DRAIN)
    } else {
        config.drain
    };
    let mut deadline = Instant::now() + drain;
    let mut tick = tokio::time::interval(TICK / 10);
    while run.delivered() < run.expected() {
        progress.set(run.delivered());
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => break,
            () = run.interrupted.cancelled(), if deadline > Instant::now() + INTERRUPTED_DRAIN => {
                deadline = Instant::now() + INTERRUPTED_DRAIN;
            }
            _ = tick.tick() => {}
        }
    }
    run.stop.cancel();

    // Add up.
    let mut tally = Tally::default();
    let mut receivers_closed = 0;
    while let Some(done) = receivers.tasks.join_next().await {
        match done {
            Ok(Some(t)) => {
                if let Some(closed) = &t.closed {
                    receivers_closed += 1;
                    first_error.get_or_insert_with(|| format!("a receiver was {closed}"));
                }
                tally.add(&t);
            }
            Ok(None) => {}
            Err(e) => {
                receivers_closed += 1;
                first_error.get_or_insert_with(|| format!("a receiver task failed: {e}"));
            }
        }
    }
    for sent in &sent_reports {
        if let Some(error) = &sent.error {
            publisher_errors += 1;
            first_error.get_or_insert_with(|| error.clone());
        }
    }
    let max_lag = sent_reports
        .iter()
        .map(|s| s.max_lag)
        .max()
        .unwrap_or_default();
    let messages_sent = run.sent();
    let expected = run.expected();
    let delivering_s = tally.last_delivery.map_or(0.0, |last| {
        last.saturating_duration_since(started).as_secs_f64()
    });
    // Publishers asking for more than the server lets one connection send are throttled by
    // it: the figures then measure the limit, not the server, and the report says so.
    let limits = dialer.limits();
    let sent_per_publisher = ratio(messages_sent as f64, sending_s) / load.publishers as f64;
    let rate_limited = limits.is_some_and(|l| {
        l.rate > 0.0
            && match load.rate {
                // As fast as it goes: held back if it went about as fast as the limit.
                Rate::Max => sent_per_publisher >= 0.8 * l.rate,
                Rate::PerSecond(total) => total / load.publishers as f64 > l.rate,
            }
    });
    let latency = {
        let histogram = crate::sync::lock(&run.latency);
        Latencies::from_micros(&histogram)
    };
    Ok(LoadReport {
        mode: "load",
        url: config.url.to_string(),
        server: report::server_name(kind.unwrap_or(crate::client::connect::ServerKind::Relay)),
        receivers: load.receivers,
        publishers: load.publishers,
        rooms: load.rooms,
        rate: match load.rate {
            Rate::Max => None,
            Rate::PerSecond(r) => Some(r),
        },
        size: load.size,
        duration_s: config.duration.as_secs_f64(),
        source_addresses: dialer.source_count(),
        connect_s,
        sending_s,
        messages_sent,
        messages_per_s: ratio(messages_sent as f64, sending_s),
        expected_deliveries: expected,
        deliveries: tally.unique,
        delivery_ratio: if expected == 0 {
            0.0
        } else {
            tally.unique as f64 / expected as f64
        },
        lost: expected.saturating_sub(tally.unique),
        duplicated: tally.duplicated,
        out_of_order: tally.out_of_order,
        unexpected: tally.unexpected,
        other_frames: tally.other_frames,
        deliveries_per_s: ratio(tally.unique as f64, delivering_s),
        latency_ms: latency,
        max_send_lag_ms: max_lag.as_secs_f64() * 1000.0,
        receivers_closed,
        publisher_errors,
        first_error,
        interrupted: run.interrupted.is_cancelled(),
        server_rate_limit: limits.map(|l| l.rate),
        server_burst: limits.map(|l| l.burst),
        rate_limited,
    })
}

fn ratio(count: f64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count / seconds
    } else {
        0.0
    }
}
