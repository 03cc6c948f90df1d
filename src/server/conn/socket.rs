//! A connection's socket, split in two after the upgrade: tungstenite reads frames from one
//! side, and the connection writes every frame itself to the other (see
//! [`crate::outbox::wire`]), so that the hub's fan-out can write to an idle plain-TCP socket
//! straight away. tungstenite never writes: what it would send on its own (the answer to a
//! ping or to a close) the connection queues itself, in order with everything else.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// A socket the server accepts WebSocket connections on.
pub(crate) trait Socket: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    type Read: AsyncRead + Unpin + Send;
    type Write: WriteSide + Send;

    /// The side to read, and the side to write.
    fn split(self) -> (Self::Read, Self::Write);
}

/// The side a connection writes to.
pub(crate) trait WriteSide: AsyncWrite + Unpin {
    /// The socket itself when frames may be written to it straight from other tasks (plain
    /// TCP: a non-blocking write needs no state of the connection's).
    fn socket(&self) -> Option<Arc<TcpStream>>;
}

impl Socket for TcpStream {
    type Read = Tcp;
    type Write = Tcp;

    fn split(self) -> (Tcp, Tcp) {
        let socket = Arc::new(self);
        (Tcp(socket.clone()), Tcp(socket))
    }
}

impl WriteSide for Tcp {
    fn socket(&self) -> Option<Arc<TcpStream>> {
        Some(self.0.clone())
    }
}

impl Socket for TlsStream<TcpStream> {
    type Read = ReadHalf<Self>;
    type Write = WriteHalf<Self>;

    fn split(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }
}

/// TLS keeps the connection's task as its only writer: a record is written with the
/// session's state, which only the task holds.
impl WriteSide for WriteHalf<TlsStream<TcpStream>> {
    fn socket(&self) -> Option<Arc<TcpStream>> {
        None
    }
}

/// A shared TCP socket, read or written through its readiness.
pub(crate) struct Tcp(Arc<TcpStream>);

impl AsyncRead for Tcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match self.0.try_read(unfilled) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // The readiness was stale: it is cleared now, so the next poll waits.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Tcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                written => return Poll::Ready(written),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// The socket closes when the connection's last handle on it goes.
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// What tungstenite reads from: the bytes the client sent right after its handshake (read
/// already with the request), then the socket. Anything tungstenite writes is dropped: the
/// connection sends those frames itself (see the module's documentation).
pub(crate) struct ReadSide<R> {
    /// Boxed, not `Bytes`: every connection carries this field, and it is nearly always
    /// empty.
    early: Option<Box<[u8]>>,
    read: R,
}

impl<R> ReadSide<R> {
    pub(crate) fn new(early: Bytes, read: R) -> ReadSide<R> {
        // A copy: the bytes hyper read ahead are a slice of its whole read buffer, which even
        // an empty slice would keep allocated for the connection's life (8 KiB per client).
        let early = (!early.is_empty()).then(|| early.to_vec().into_boxed_slice());
        ReadSide { early, read }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for ReadSide<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(early) = self.early.take() {
            let n = early.len().min(buf.remaining());
            buf.put_slice(&early[..n]);
            if n < early.len() {
                self.early = Some(early[n..].into());
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl<R: Unpin> AsyncWrite for ReadSide<R> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
