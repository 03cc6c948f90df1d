//! The connection's socket engine: one task reads and writes. The writer feeds the socket
//! everything queued and flushes once; the reader reads only when the socket woke the task;
//! the closer sends one close frame after what was queued and waits, bounded, for the answer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::Ending;
use crate::outbox;

/// How long a connection waits for the peer's close frame after sending its own.
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// The connection's half of the close handshake: a close frame asked for once, written after
/// everything queued before it, then a bounded wait for the peer's answer.
pub(super) struct Closer {
    pub(super) closing: bool,
    /// The close frame asked for, until it is written.
    pub(super) frame: Option<CloseFrame>,
    pub(super) deadline: Option<Instant>,
    pub(super) ending: Option<Ending>,
}

impl Closer {
    pub(super) fn close(&mut self, code: u16, reason: &'static str) {
        if !self.closing {
            self.closing = true;
            self.frame = Some(CloseFrame {
                code: CloseCode::from(code),
                reason: reason.into(),
            });
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
    WriteFailed(WsError),
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

/// The sending side: the outbox, fed to the socket as frames come, one flush per batch.
pub(super) struct Writer {
    /// Frames handed to the WebSocket layer since the last flush.
    pub(super) unflushed: bool,
    /// The close frame is written, or a write failed: nothing more goes out, and the hub finds
    /// the outbox closed.
    pub(super) stopped: bool,
    pub(super) failed: bool,
    /// Delays and fragments what goes out (`--chaos`).
    pub(super) shaper: Option<Box<crate::server::chaos::Shaper>>,
}

impl Writer {
    /// Writes what it can, then reads one frame if given a reader. Pending until a frame is read or
    /// a write fails; wakes when the outbox gets frames or the socket can take more.
    pub(super) fn poll_io<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        outbox: &mut outbox::Receiver,
        close: &mut Option<CloseFrame>,
        reader: Option<&Reader>,
        cx: &mut Context<'_>,
    ) -> Poll<Io>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if !self.stopped {
            if let Err(e) = self.write(ws, outbox, close, cx) {
                self.stop(outbox);
                self.unflushed = false;
                self.failed = true;
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

    /// Feeds every queued frame to the socket, then the close frame if one was asked for, and
    /// flushes once. Returns when it would wait (the outbox is empty, or the socket is full).
    fn write<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        outbox: &mut outbox::Receiver,
        close: &mut Option<CloseFrame>,
        cx: &mut Context<'_>,
    ) -> Result<(), WsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if self.unflushed {
            match ws.poll_flush_unpin(cx) {
                Poll::Ready(flushed) => flushed?,
                Poll::Pending => return Ok(()),
            }
            self.unflushed = false;
        }
        if self.stopped {
            return Ok(());
        }
        loop {
            match ws.poll_ready_unpin(cx) {
                Poll::Ready(ready) => ready?,
                Poll::Pending => return Ok(()),
            }
            match crate::server::chaos::poll_recv(&mut self.shaper, outbox, cx) {
                Poll::Ready(Some(frame)) => {
                    ws.start_send_unpin(frame)?;
                    self.unflushed = true;
                }
                // Nothing queued (or nobody left to queue anything).
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        if let Some(frame) = close.take() {
            ws.start_send_unpin(Message::Close(Some(frame)))?;
            self.unflushed = true;
            self.stop(outbox);
        }
        if self.unflushed {
            match ws.poll_flush_unpin(cx) {
                Poll::Ready(flushed) => flushed?,
                Poll::Pending => return Ok(()),
            }
            self.unflushed = false;
        }
        Ok(())
    }

    pub(super) fn stop(&mut self, outbox: &mut outbox::Receiver) {
        self.stopped = true;
        outbox.close();
    }

    /// After the connection's loop: writes what is still queued and the close frame asked for
    /// (its code, even when it was asked for just before the loop ended), then closes the
    /// WebSocket, which also sends the reply to a client's close frame.
    pub(super) async fn finish<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        outbox: &mut outbox::Receiver,
        close: Option<CloseFrame>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if !self.stopped {
            let mut ok = true;
            while ok {
                let Some(frame) = crate::server::chaos::try_recv(&mut self.shaper, outbox) else {
                    break;
                };
                ok = ws.feed(frame).await.is_ok();
            }
            if let Some(frame) = close.filter(|_| ok) {
                let _ = ws.feed(Message::Close(Some(frame))).await;
            }
            self.stop(outbox);
        }
        if !self.failed {
            let _ = SinkExt::close(ws).await;
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
