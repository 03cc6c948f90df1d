//! `serve --chaos SPEC`: a server that misbehaves on purpose, to test clients' reconnect and
//! resume logic. SPEC is comma-separated `key=value`:
//!
//! - `drop=P`: each second, with probability P, a connection is cut without a close frame;
//! - `close=P`: each second, with probability P, a connection is closed with 1001;
//! - `delay=MIN-MAX`: each outgoing frame is held a random time in that range (order kept);
//! - `fragment=N`: outgoing messages are split into WebSocket fragments of N bytes.
//!
//! Chaos acts on connections only: what the hub stores and acknowledges is never touched, so
//! a client that resumes after a cut gets everything it missed. `--chaos-seed N` makes the
//! random choices repeatable (per connection, in the order connections are accepted).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::{Instant, Interval, Sleep};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

use crate::outbox;

/// Frames one connection holds back for `delay`, at most; past it the outbox fills and the
/// client counts as slow, as it would over a slow network.
const HOLD_MAX: usize = 256;

/// What `--chaos` asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChaosSpec {
    pub drop: f64,
    pub close: f64,
    pub delay: Option<(Duration, Duration)>,
    pub fragment: Option<usize>,
}

impl ChaosSpec {
    /// Parses `drop=0.1,close=0.05,delay=10ms-200ms,fragment=16`.
    pub fn parse(text: &str) -> Result<ChaosSpec, String> {
        let mut spec = ChaosSpec::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((key, value)) = part.split_once('=') else {
                return Err(format!(
                    "'{part}' is not key=value (try drop=0.1,delay=10ms-50ms)"
                ));
            };
            let (key, value) = (key.trim(), value.trim());
            let probability = || -> Result<f64, String> {
                match value.parse::<f64>() {
                    Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
                    _ => Err(format!(
                        "{key}={value}: a probability from 0 to 1 is expected"
                    )),
                }
            };
            match key {
                "drop" => spec.drop = probability()?,
                "close" => spec.close = probability()?,
                "delay" => {
                    let (min, max) = value.split_once('-').unwrap_or((value, value));
                    let parse = |d: &str| {
                        humantime::parse_duration(d.trim())
                            .map_err(|e| format!("delay={value}: {e} (try delay=10ms-200ms)"))
                    };
                    let (min, max) = (parse(min)?, parse(max)?);
                    if min > max {
                        return Err(format!("delay={value}: the minimum is above the maximum"));
                    }
                    if max > Duration::from_secs(60) {
                        return Err(format!("delay={value}: at most 60s"));
                    }
                    spec.delay = Some((min, max));
                }
                "fragment" => match value.parse::<usize>() {
                    Ok(n) if n >= 1 => spec.fragment = Some(n),
                    _ => {
                        return Err(format!(
                            "fragment={value}: a number of bytes, 1 or more, is expected"
                        ))
                    }
                },
                other => {
                    return Err(format!(
                        "unknown chaos '{other}' (known: drop, close, delay, fragment)"
                    ))
                }
            }
        }
        if spec == ChaosSpec::default() {
            return Err("nothing to do: give at least one of drop, close, delay, fragment".into());
        }
        Ok(spec)
    }
}

impl std::fmt::Display for ChaosSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if self.drop > 0.0 {
            parts.push(format!("drop={}", self.drop));
        }
        if self.close > 0.0 {
            parts.push(format!("close={}", self.close));
        }
        if let Some((min, max)) = self.delay {
            parts.push(format!(
                "delay={}-{}",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ));
        }
        if let Some(n) = self.fragment {
            parts.push(format!("fragment={n}"));
        }
        f.write_str(&parts.join(","))
    }
}

/// The chaos a server runs with, shared by its connections.
#[derive(Debug)]
pub struct Chaos {
    pub spec: ChaosSpec,
    pub seed: u64,
    /// Connections seen so far: each gets its own random sequence from the seed.
    connections: AtomicU64,
}

impl Chaos {
    pub fn new(spec: ChaosSpec, seed: Option<u64>) -> Chaos {
        Chaos {
            spec,
            seed: seed.unwrap_or_else(|| fastrand::u64(..)),
            connections: AtomicU64::new(0),
        }
    }

    fn rng(&self) -> fastrand::Rng {
        let n = self.connections.fetch_add(1, Ordering::Relaxed);
        fastrand::Rng::with_seed(self.seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }
}

/// What chaos does to a connection now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Cut it: no close frame.
    Drop,
    /// Close it with 1001.
    Close,
}

/// One connection's faults: a draw once a second.
/// Boxed: a connection without chaos carries one pointer.
pub struct Faults(Option<Box<(fastrand::Rng, f64, f64, Interval)>>);

impl Faults {
    pub fn new(chaos: Option<&Chaos>) -> Faults {
        Faults(
            chaos
                .filter(|c| c.spec.drop > 0.0 || c.spec.close > 0.0)
                .map(|c| {
                    let second = Duration::from_secs(1);
                    let tick = tokio::time::interval_at(Instant::now() + second, second);
                    Box::new((c.rng(), c.spec.drop, c.spec.close, tick))
                }),
        )
    }

    /// The next fault; never, without `drop` or `close`. A poll function, not an `async fn`:
    /// every connection's task holds the future that waits for it, chaos or not, and this one
    /// is a pointer.
    pub fn poll_next(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Fault> {
        let Some(faults) = &mut self.0 else {
            return std::task::Poll::Pending;
        };
        let (rng, drop, close, tick) = &mut **faults;
        loop {
            if tick.poll_tick(cx).is_pending() {
                return std::task::Poll::Pending;
            }
            if rng.f64() < *drop {
                return std::task::Poll::Ready(Fault::Drop);
            }
            if rng.f64() < *close {
                return std::task::Poll::Ready(Fault::Close);
            }
        }
    }
}

/// What a connection sends, delayed and fragmented: sits between the outbox and the socket.
pub struct Shaper {
    rng: fastrand::Rng,
    delay: Option<(Duration, Duration)>,
    fragment: Option<usize>,
    /// Frames taken from the outbox, each with the time it may go out (never before the one
    /// ahead of it).
    held: VecDeque<(Instant, Message)>,
    /// Frames due (fragments of a message, or whole ones), the first partly written.
    ready: VecDeque<Message>,
    /// Bytes of the first of `ready` already written.
    written: usize,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Shaper {
    /// Boxed and `None` without delay or fragments, so a connection without chaos carries one
    /// pointer.
    pub fn new(chaos: Option<&Chaos>) -> Option<Box<Shaper>> {
        let chaos = chaos.filter(|c| c.spec.delay.is_some() || c.spec.fragment.is_some())?;
        Some(Box::new(Shaper {
            rng: chaos.rng(),
            delay: chaos.spec.delay,
            fragment: chaos.spec.fragment,
            held: VecDeque::new(),
            ready: VecDeque::new(),
            written: 0,
            timer: None,
        }))
    }

    fn hold(&mut self, frame: Message) {
        let now = Instant::now();
        let due = match self.delay {
            Some((min, max)) => {
                let span = max.saturating_sub(min);
                now + min + span.mul_f64(self.rng.f64())
            }
            None => now,
        };
        let due = self.held.back().map_or(due, |(last, _)| due.max(*last));
        self.held.push_back((due, frame));
    }

    /// Makes `frame` ready to write: whole, or as fragments of `fragment` bytes.
    fn release(&mut self, frame: Message) {
        let size = self.fragment.unwrap_or(usize::MAX);
        let (payload, opcode) = match frame {
            Message::Text(text) if text.len() > size => (Bytes::from(text), Data::Text),
            Message::Binary(data) if data.len() > size => (data, Data::Binary),
            other => {
                self.ready.push_back(other);
                return;
            }
        };
        let mut start = 0;
        while start < payload.len() {
            let end = (start + size).min(payload.len());
            let opcode = if start == 0 { opcode } else { Data::Continue };
            let last = end == payload.len();
            let frame = Frame::message(payload.slice(start..end), OpCode::Data(opcode), last);
            self.ready.push_back(Message::Frame(frame));
            start = end;
        }
    }

    /// Whether there are frames due to write (see [`outbox::Receiver::poll_batch`]): taken
    /// from the outbox, held until due, and fragmented.
    pub fn poll_batch(
        &mut self,
        outbox: &mut outbox::Receiver,
        cx: &mut Context<'_>,
    ) -> Poll<Option<()>> {
        if !self.ready.is_empty() {
            return Poll::Ready(Some(()));
        }
        let mut closed = false;
        while self.held.len() < HOLD_MAX {
            match outbox.poll_recv(cx) {
                Poll::Ready(Some(frame)) => self.hold(frame),
                Poll::Ready(None) => {
                    closed = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        loop {
            let Some((due, _)) = self.held.front() else {
                return if closed {
                    Poll::Ready(None)
                } else {
                    Poll::Pending
                };
            };
            let due = *due;
            if due <= Instant::now() {
                self.timer = None;
                if let Some((_, frame)) = self.held.pop_front() {
                    self.release(frame);
                }
                return Poll::Ready(Some(()));
            }
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
            timer.as_mut().reset(due);
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }

    /// The frames due, and how many bytes of the first are written.
    pub fn batch(&self) -> (&VecDeque<Message>, usize) {
        (&self.ready, self.written)
    }

    /// `n` more bytes of the frames due are written.
    pub fn advance(&mut self, n: usize) {
        let (done, written) = outbox::advance(&self.ready, self.written, n);
        self.ready.drain(..done);
        self.written = written;
    }

    /// Whether it holds nothing more to write.
    pub fn is_idle(&self) -> bool {
        self.ready.is_empty() && self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print() {
        let spec = ChaosSpec::parse("drop=0.5, close=0.1,delay=10ms-200ms,fragment=16").unwrap();
        assert_eq!(spec.drop, 0.5);
        assert_eq!(spec.close, 0.1);
        assert_eq!(
            spec.delay,
            Some((Duration::from_millis(10), Duration::from_millis(200)))
        );
        assert_eq!(spec.fragment, Some(16));
        assert_eq!(
            spec.to_string(),
            "drop=0.5,close=0.1,delay=10ms-200ms,fragment=16"
        );
        for bad in [
            "",
            "drop",
            "drop=2",
            "close=-1",
            "delay=5s-1s",
            "fragment=0",
            "boom=1",
        ] {
            assert!(ChaosSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fragments_cover_the_message_in_order() {
        let chaos = Chaos::new(ChaosSpec::parse("fragment=4").unwrap(), Some(1));
        let mut shaper = Shaper::new(Some(&chaos)).unwrap();
        shaper.release(Message::text("0123456789"));
        let frames: Vec<_> = shaper.ready.drain(..).collect();
        let payloads: Vec<_> = frames
            .iter()
            .map(|m| match m {
                Message::Frame(f) => (f.header().is_final, f.header().opcode, f.payload().to_vec()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(payloads.len(), 3);
        assert_eq!(
            payloads[0],
            (false, OpCode::Data(Data::Text), b"0123".to_vec())
        );
        assert_eq!(
            payloads[1],
            (false, OpCode::Data(Data::Continue), b"4567".to_vec())
        );
        assert_eq!(
            payloads[2],
            (true, OpCode::Data(Data::Continue), b"89".to_vec())
        );
        // Short messages and control frames go out whole.
        shaper.release(Message::text("abc"));
        assert_eq!(shaper.ready.pop_front(), Some(Message::text("abc")));
    }
}
