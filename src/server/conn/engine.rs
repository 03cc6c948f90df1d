//! The connection's socket engine: one task reads and writes. The writer writes everything
//! queued (what the hub did not write straight through) and flushes once; the reader reads
//! only when the socket woke the task; the closer sends one close frame after what was queued
//! and waits, bounded, for the answer.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::Ending;
use crate::outbox;

/// How long a connection waits for the peer's close frame after sending its own.
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// A close frame to send: with a code and reason, or empty.
pub(super) type Close = Option<CloseFrame>;

/// The connection's half of the close handshake: a close frame asked for once, written after
/// everything queued before it, then a bounded wait for the peer's answer.
pub(super) struct Closer {
    pub(super) closing: bool,
    /// The close frame asked for (or the answer to the client's), until it is queued.
    pub(super) frame: Option<Close>,
    pub(super) deadline: Option<Instant>,
    pub(super) ending: Option<Ending>,
}

impl Closer {
    pub(super) fn close(&mut self, code: u16, reason: &'static str) {
        if !self.closing {
            self.closing = true;
            self.frame = Some(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: reason.into(),
            }));
            self.deadline = Some(Instant::now() + CLOSE_TIMEOUT);
            self.ending = Some(Ending::ClosedByServer(code, reason));
        }
    }

    pub(super) fn is_closing(&self) -> bool {
        self.closing
    }
}

/// What the socket had for the connection's loop.
pub(super) enum Io {
    Read(Option<Result<Message, WsError>>),
    WriteFailed(io::Error),
    /// A frame for this client found its outbox full: it is not keeping up.
    Overflowed,
}

/// Whether the socket woke the connection since it last read. Frames the hub queues wake the
/// task too, many times more often: those wake-ups then cost no read attempt.
pub(super) struct ReadWake {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for ReadWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// The reading side's waker, made once per connection.
pub(super) struct Reader {
    wake: Arc<ReadWake>,
    waker: Waker,
}

impl Reader {
    pub(super) fn new() -> Reader {
        let wake = Arc::new(ReadWake {
            // Nothing was read yet.
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(wake.clone());
        Reader { wake, waker }
    }

    /// The next frame, if the socket woke the connection since the last read came up empty.
    fn poll_next<S>(
        &self,
        ws: &mut WebSocketStream<S>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Message, WsError>>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.wake.task.register(cx.waker());
        if !self.wake.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let next = ws.poll_next_unpin(&mut Context::from_waker(&self.waker));
        if next.is_ready() {
            // More frames may be buffered already: no wake-up would say so.
            self.wake.woken.store(true, Ordering::Release);
        }
        next
    }
}

/// The sending side: writes what the outbox holds to the socket, as many frames to a write
/// as are queued (header and shared payload each, vectored), and flushes once per batch.
pub(super) struct Writer<W> {
    wire: W,
    /// Bytes written since the last flush (TLS keeps them until then).
    unflushed: bool,
    /// The close frame is queued: once the outbox is written out, nothing more goes.
    closing: bool,
    /// Everything is written, or a write failed: nothing more goes out, and the hub finds the
    /// outbox closed.
    pub(super) stopped: bool,
    pub(super) failed: bool,
    /// Delays and fragments what goes out (`--chaos`).
    pub(super) shaper: Option<Box<crate::server::chaos::Shaper>>,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    pub(super) fn new(wire: W, shaper: Option<Box<crate::server::chaos::Shaper>>) -> Self {
        Writer {
            wire,
            unflushed: false,
            closing: false,
            stopped: false,
            failed: false,
            shaper,
        }
    }

    /// Writes what it can, then reads one frame if given a reader. Pending until a frame is
    /// read or a write fails; wakes when the outbox gets frames or the socket can take more.
    pub(super) fn poll_io<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        outbox: &mut outbox::Receiver,
        close: &mut Option<Close>,
        reader: Option<&Reader>,
        cx: &mut Context<'_>,
    ) -> Poll<Io>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if !self.stopped {
            if let Err(e) = self.write(outbox, close, cx) {
                self.fail(outbox);
                return Poll::Ready(Io::WriteFailed(e));
            }
            if outbox.take_overflow() {
                return Poll::Ready(Io::Overflowed);
            }
        }
        if let Some(reader) = reader {
            if let Poll::Ready(next) = reader.poll_next(ws, cx) {
                return Poll::Ready(Io::Read(next));
            }
        }
        Poll::Pending
    }

    /// Writes every queued frame, then the close frame if one was asked for, and flushes.
    /// Returns when it would wait (the outbox is empty, or the socket is full).
    fn write(
        &mut self,
        outbox: &mut outbox::Receiver,
        close: &mut Option<Close>,
        cx: &mut Context<'_>,
    ) -> io::Result<()> {
        if let Some(frame) = close.take() {
            self.queue_close(outbox, Some(frame));
        }
        let mut written_out = false;
        loop {
            let next = match &mut self.shaper {
                Some(shaper) => shaper.poll_batch(outbox, cx),
                None => outbox.poll_batch(cx),
            };
            if next.is_pending() || matches!(next, Poll::Ready(None)) {
                written_out = self.shaper.as_ref().is_none_or(|s| s.is_idle());
                break;
            }
            let (frames, written) = match &self.shaper {
                Some(shaper) => shaper.batch(),
                None => outbox.batch(),
            };
            let mut headers = [outbox::Header::EMPTY; outbox::MAX_FRAMES_PER_WRITE];
            let mut slices = [IoSlice::new(&[]); 2 * outbox::MAX_FRAMES_PER_WRITE];
            let count = outbox::gather(frames, written, &mut headers, &mut slices);
            let n = match Pin::new(&mut self.wire).poll_write_vectored(cx, &slices[..count]) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Err(e),
                // Woken when the socket can take more.
                Poll::Pending => break,
            };
            self.unflushed = true;
            match &mut self.shaper {
                Some(shaper) => shaper.advance(n),
                None => outbox.advance(n),
            }
        }
        if self.unflushed {
            match Pin::new(&mut self.wire).poll_flush(cx) {
                Poll::Ready(flushed) => flushed?,
                Poll::Pending => return Ok(()),
            }
            self.unflushed = false;
        }
        if self.closing && written_out {
            self.stopped = true;
            outbox.close();
        }
        Ok(())
    }

    /// Queues the close frame (or none) after everything queued, and takes nothing more.
    fn queue_close(&mut self, outbox: &mut outbox::Receiver, frame: Option<Close>) {
        if !self.closing {
            self.closing = true;
            outbox.finish(frame.map(Message::Close));
        }
    }

    /// Writes nothing more: what is queued is dropped.
    pub(super) fn stop(&mut self, outbox: &mut outbox::Receiver) {
        self.stopped = true;
        outbox.close();
    }

    fn fail(&mut self, outbox: &mut outbox::Receiver) {
        self.stop(outbox);
        self.unflushed = false;
        self.failed = true;
    }

    /// After the connection's loop: writes what is still queued and the close frame asked for
    /// (its code, even when it was asked for just before the loop ended), then shuts the
    /// writing side (for TLS, its close notification).
    pub(super) async fn finish(&mut self, outbox: &mut outbox::Receiver, close: Option<Close>) {
        if !self.stopped {
            self.queue_close(outbox, close);
            poll_fn(|cx| {
                if self.write(outbox, &mut None, cx).is_err() {
                    self.fail(outbox);
                }
                if self.stopped {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
        }
        if !self.failed {
            let _ = self.wire.shutdown().await;
        }
    }
}

/// Whether a write failed because the peer went away (not because of the server).
pub(super) fn is_hang_up(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::BrokenPipe
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::UnexpectedEof
            | ErrorKind::NotConnected
    )
}

/// The earlier of two optional instants.
pub(super) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

pub(super) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
