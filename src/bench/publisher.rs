//! A publisher: probes until every receiver hears it, then sends numbered, timestamped
//! messages at its share of the rate, or as fast as a bounded window of undelivered messages
//! allows.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::connect::Socket;
use super::state::Run;
use super::token;
use super::Rate;
use crate::client::connect::ServerKind;

/// Time between two probes of one publisher, at least.
const PROBE_INTERVAL: Duration = Duration::from_millis(20);
/// Probe deliveries per second, all publishers together, at most: probing must not load the
/// server it is about to measure (a slow one would fall further behind with every probe).
const PROBE_DELIVERIES_PER_S: f64 = 50_000.0;
/// Messages written before one flush, at most.
const MAX_BATCH: u64 = 64;
/// How long to wait for the window to open again before looking once more.
const WINDOW_POLL: Duration = Duration::from_millis(1);
/// How long a publisher waits for its close frame to go out and be answered.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// What one publisher does.
pub struct Plan {
    pub index: usize,
    pub kind: ServerKind,
    pub rate: Rate,
    /// Publishers in the run: each sends `1 / publishers` of the rate.
    pub publishers: usize,
    pub size: usize,
    pub duration: Duration,
    /// With `Rate::Max`: messages sent but not yet received by every receiver of the room.
    pub window: u64,
    /// Receivers in the run, all rooms together.
    pub receivers: usize,
}

impl Plan {
    /// Probes go out often enough to start soon, rarely enough to stay a light load.
    fn probe_interval(&self) -> Duration {
        let deliveries = (self.receivers * self.publishers) as f64;
        PROBE_INTERVAL.max(Duration::from_secs_f64(deliveries / PROBE_DELIVERIES_PER_S))
    }
}

/// What a publisher reports at the end.
#[derive(Debug, Default)]
pub struct Sent {
    pub messages: u64,
    /// How far behind its schedule the publisher fell, at worst (fixed rates only).
    pub max_lag: Duration,
    pub error: Option<String>,
}

/// Runs a publisher from the probe phase to its closed connection.
pub async fn run(socket: Socket, plan: Plan, run: Arc<Run>) -> Sent {
    let (mut sink, mut stream) = socket.split();
    // Everything that comes back (other publishers' messages, notices) is read and dropped, so
    // the server never sees this connection as a slow reader.
    let reader = tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    });
    let mut sent = Sent::default();
    if let Err(e) = send_all(&mut sink, &plan, &run, &mut sent).await {
        sent.error = Some(format!("publisher {} failed: {e}", plan.index));
    }
    let _ = tokio::time::timeout(CLOSE_WAIT, sink.close()).await;
    let _ = tokio::time::timeout(CLOSE_WAIT, reader).await;
    sent
}

type Sink = futures_util::stream::SplitSink<Socket, Message>;

fn frame(kind: ServerKind, text: String) -> Message {
    match kind {
        // The token holds no character JSON escapes, so it goes in as it is.
        ServerKind::Wschat => Message::text(format!(r#"{{"type":"chat","content":"{text}"}}"#)),
        ServerKind::Relay => Message::text(text),
    }
}

async fn send_all(
    sink: &mut Sink,
    plan: &Plan,
    run: &Run,
    sent: &mut Sent,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let state = &run.publishers[plan.index];
    let publisher = u32::try_from(plan.index).unwrap_or(u32::MAX);

    // Probe until every receiver of the room has heard this publisher, then wait for the start.
    let mut probes = tokio::time::interval(plan.probe_interval());
    loop {
        tokio::select! {
            () = run.go.cancelled() => break,
            () = run.interrupted.cancelled() => return Ok(()),
            _ = probes.tick() => {
                if state.heard.load(Ordering::Relaxed) < state.audience {
                    sink.send(frame(plan.kind, token::probe(publisher))).await?;
                }
            }
        }
    }

    let start = Instant::now();
    let end = start + plan.duration;
    // Fixed rate: this publisher's interval, and an offset that staggers the publishers.
    let schedule = match plan.rate {
        Rate::Max => None,
        Rate::PerSecond(total) => {
            let each = total / plan.publishers as f64;
            let offset = plan.index as f64 / total;
            Some((each, offset))
        }
    };
    let mut seq: u64 = 0;
    loop {
        let now = Instant::now();
        if now >= end || run.interrupted.is_cancelled() {
            break;
        }
        let batch = match schedule {
            None => {
                let delivered = state.delivered.load(Ordering::Relaxed);
                let outstanding = (seq * state.audience).saturating_sub(delivered);
                let room = (plan.window * state.audience).saturating_sub(outstanding);
                room / state.audience.max(1)
            }
            Some((each, offset)) => {
                let elapsed = (now - start).as_secs_f64() - offset;
                // Messages due by now: those with `seq / each <= elapsed`.
                let due = if elapsed < 0.0 {
                    0
                } else {
                    (elapsed * each).floor() as u64 + 1
                };
                if due > seq {
                    let scheduled = start + Duration::from_secs_f64(offset + seq as f64 / each);
                    sent.max_lag = sent.max_lag.max(now.saturating_duration_since(scheduled));
                }
                due.saturating_sub(seq)
            }
        };
        if batch == 0 {
            let wake = match schedule {
                None => now + WINDOW_POLL,
                Some((each, offset)) => start + Duration::from_secs_f64(offset + seq as f64 / each),
            };
            tokio::select! {
                () = tokio::time::sleep_until(wake.min(end)) => {}
                () = run.interrupted.cancelled() => break,
            }
            continue;
        }
        for _ in 0..batch.min(MAX_BATCH) {
            let text = token::message(publisher, seq, run.now_nanos(), plan.size);
            // Counted before it leaves: a receipt can never name a message not yet counted.
            state.sent.fetch_add(1, Ordering::Relaxed);
            seq += 1;
            sink.feed(frame(plan.kind, text)).await?;
        }
        sink.flush().await?;
        sent.messages = seq;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_suit_the_server() {
        let Message::Text(json) = frame(ServerKind::Wschat, token::probe(1)) else {
            panic!("not text")
        };
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["type"], "chat");
        assert_eq!(value["content"], "wsb:1:probe");
        let Message::Text(raw) = frame(ServerKind::Relay, token::probe(1)) else {
            panic!("not text")
        };
        assert_eq!(raw.as_str(), "wsb:1:probe");
    }
}
