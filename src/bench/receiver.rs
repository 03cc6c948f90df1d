//! A receiver: reads every frame, finds the token in it, and counts the receipt.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use super::connect::Socket;
use super::state::Run;
use super::stats::{Arrival, Tally, Track};
use super::token::{self, Token};

/// Latencies a receiver keeps before adding them to the shared histogram.
const LATENCY_BATCH: usize = 1024;

/// How long a receiver waits for its close frame to be written at the end.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// One receiver's view of the run.
struct Counter<'a> {
    run: &'a Run,
    room: usize,
    tracks: Vec<Track>,
    /// Publishers of this room whose probe has arrived.
    probed: Vec<bool>,
    latencies: Vec<u64>,
    tally: Tally,
}

impl Counter<'_> {
    fn frame(&mut self, text: &str) {
        match token::find(text) {
            None => self.tally.other_frames += 1,
            Some(Token::Probe { publisher }) => {
                let p = publisher as usize;
                let ours = self
                    .run
                    .publishers
                    .get(p)
                    .is_some_and(|s| s.room == self.room);
                if ours && !self.probed[p] {
                    self.probed[p] = true;
                    self.run.mark_ready(p);
                }
            }
            Some(Token::Message {
                publisher,
                seq,
                sent_nanos,
            }) => self.message(publisher as usize, seq, sent_nanos),
        }
    }

    fn message(&mut self, p: usize, seq: u64, sent_nanos: u64) {
        let Some(publisher) = self.run.publishers.get(p) else {
            self.tally.unexpected += 1;
            return;
        };
        if publisher.room != self.room || seq >= publisher.sent.load(Ordering::Relaxed) {
            self.tally.unexpected += 1;
            return;
        }
        match self.tracks[p].arrive(seq) {
            Arrival::Duplicate => {
                self.tally.duplicated += 1;
                return;
            }
            Arrival::OutOfOrder => self.tally.out_of_order += 1,
            Arrival::InOrder => {}
        }
        let now = Instant::now();
        let latency_nanos = now
            .saturating_duration_since(self.run.epoch)
            .as_nanos()
            .saturating_sub(u128::from(sent_nanos));
        self.latencies
            .push(u64::try_from(latency_nanos / 1000).unwrap_or(u64::MAX));
        if self.latencies.len() >= LATENCY_BATCH {
            self.flush();
        }
        self.tally.unique += 1;
        self.tally.last_delivery = Some(now);
        publisher.delivered.fetch_add(1, Ordering::Relaxed);
    }

    fn flush(&mut self) {
        self.run.record_latencies(&self.latencies);
        self.latencies.clear();
    }
}

/// Reads until the run stops or the connection ends, and returns what it counted.
pub async fn run(mut socket: Socket, room: usize, run: Arc<Run>) -> Tally {
    let publishers = run.publishers.len();
    let mut counter = Counter {
        run: &run,
        room,
        tracks: vec![Track::default(); publishers],
        probed: vec![false; publishers],
        latencies: Vec::new(),
        tally: Tally::default(),
    };
    // Made once: a fresh `cancelled()` per frame would register with the shared token each time.
    let stopped = run.stop.cancelled();
    tokio::pin!(stopped);
    loop {
        let next = tokio::select! {
            biased;
            () = &mut stopped => break,
            next = socket.next() => next,
        };
        match next {
            Some(Ok(Message::Text(text))) => counter.frame(&text),
            Some(Ok(Message::Binary(bytes))) => match std::str::from_utf8(&bytes) {
                Ok(text) => counter.frame(text),
                Err(_) => counter.tally.other_frames += 1,
            },
            Some(Ok(Message::Close(frame))) => {
                counter.tally.closed = Some(closed_by_server(frame.as_ref()));
                break;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            Some(Err(e)) => {
                counter.tally.closed = Some(format!("connection broke: {e}"));
                break;
            }
            None => {
                counter.tally.closed = Some("connection ended".into());
                break;
            }
        }
    }
    counter.flush();
    let tally = counter.tally;
    if tally.closed.is_none() {
        let _ = tokio::time::timeout(CLOSE_WAIT, socket.close(None)).await;
    }
    tally
}

/// Describes a close frame from the server.
pub fn closed_by_server(frame: Option<&CloseFrame>) -> String {
    match frame {
        Some(frame) if frame.reason.is_empty() => {
            format!("closed by the server (code {})", u16::from(frame.code))
        }
        Some(frame) => format!(
            "closed by the server (code {}: {})",
            u16::from(frame.code),
            crate::client::render::escape_control(&frame.reason)
        ),
        None => "closed by the server".into(),
    }
}
