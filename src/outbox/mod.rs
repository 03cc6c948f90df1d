//! A connection's outbox: the bounded queue of encoded frames between the hub and one
//! connection.
//!
//! Built for a server that holds many idle connections and fans each message out to all of
//! them: an empty outbox allocates nothing (about 100 bytes in all), a send is one short lock
//! and wakes the connection only when the queue was empty, and the connection takes everything
//! queued under one lock. Frames taken but not yet handed on still count against the capacity,
//! so a connection whose socket is stuck fills its outbox as soon as it would with a plain
//! channel.
//!
//! A frame refused for want of room is never a silent loss: the outbox remembers it overflowed
//! and wakes the connection, which closes as a slow consumer (whoever tried to queue, the
//! hub's fan-out or an acknowledgement from the store's thread).
//!
//! It is bounded in frames and in bytes: a few large frames (a history replay of long
//! messages) fill it as surely as many small ones. The bytes are counted as if each frame were
//! the connection's own, although frames shared with other outboxes (a broadcast, a replay of
//! a stored message) cost it only their handle: the bound is what one connection can pin.
//!
//! An outbox may also hold its connection's socket ([`Receiver::attach`]). A frame sent while
//! nothing is queued or being written is then written straight through, header and shared
//! payload in one vectored non-blocking write, by whoever sends it: a delivery to an idle
//! connection costs that one write, and its task is not woken. Only what the socket does not
//! take at once is queued, and the connection's task writes the rest (see [`wire`]). The lock
//! makes the two writers take turns: a sender writes only while the queue is empty and the
//! receiver holds nothing taken, and the receiver writes only what it took.

mod through;
mod wire;

pub use through::{WriteThrough, MAX_FAN_OUT};
pub use wire::{advance, gather, Header, MAX_FRAMES_PER_WRITE};

use std::collections::VecDeque;
use std::fmt;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Buffers kept for reuse while a connection is busy are freed past this many frames once
/// empty (a history replay or a backlog), so a burst does not pin its memory for good.
const KEEP_FRAMES: usize = 256;

/// A bounded outbox of `capacity` frames (at least one), of any size.
pub fn channel(capacity: usize) -> (Sender, Receiver) {
    bounded(capacity, usize::MAX)
}

/// A bounded outbox of `frames` frames and `bytes` bytes of payload (at least one frame, of
/// any size, when it is empty).
pub fn bounded(frames: usize, bytes: usize) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(Queue {
            frames: VecDeque::new(),
            bytes: 0,
            taken: 0,
            taken_bytes: 0,
            overflowed: false,
            senders: 1,
            open: true,
            waker: None,
            socket: None,
            written: 0,
        }),
        capacity: frames.max(1),
        max_bytes: bytes,
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver {
            shared,
            batch: VecDeque::new(),
            written: 0,
        },
    )
}

struct Shared {
    /// Held only to push (and, for a frame written straight through, across that one
    /// non-blocking write), to take the whole queue, or to count senders: never across an
    /// `.await`.
    state: Mutex<Queue>,
    capacity: usize,
    max_bytes: usize,
}

struct Queue {
    frames: VecDeque<Message>,
    /// Payload bytes of `frames`.
    bytes: usize,
    /// Frames the receiver took with its last batch and may not have handed on yet, and
    /// their payload bytes.
    taken: usize,
    taken_bytes: usize,
    /// A frame was refused for want of room since the receiver last looked.
    overflowed: bool,
    senders: usize,
    /// Whether the receiver is still there.
    open: bool,
    /// The receiver's task, when it found the queue empty.
    waker: Option<Waker>,
    /// The connection's socket, while frames may be written straight to it.
    socket: Option<Arc<TcpStream>>,
    /// Bytes of the front frame already written straight through; the rest is queued. One
    /// write never takes 2 GiB or more (Linux caps it under `i32::MAX`), so it fits.
    written: u32,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Nothing panics while the lock is held but an allocation failure, which aborts; a
        // poisoned state would still be consistent.
        crate::sync::lock(&self.state)
    }
}

/// Why a frame was not queued; the frame comes back.
#[derive(Debug)]
pub enum TrySendError {
    /// The outbox holds its capacity: the connection is not keeping up.
    Full(Message),
    /// The connection is gone.
    Closed(Message),
}

impl fmt::Display for TrySendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => write!(f, "outbox full"),
            TrySendError::Closed(_) => write!(f, "outbox closed"),
        }
    }
}

impl std::error::Error for TrySendError {}

/// Why no frame was received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryRecvError {
    /// Nothing queued yet.
    Empty,
    /// Nothing queued, and every sender is gone.
    Closed,
}

/// What became of a frame that was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Written to the socket whole, straight through.
    Written,
    /// Queued for the connection's task (all of it, or what the socket did not take).
    Queued,
}

/// Queues frames for one connection. Clones share the outbox; the receiver sees the end once
/// every clone is dropped.
pub struct Sender {
    shared: Arc<Shared>,
}

impl Sender {
    /// Writes `frame` straight to the socket when nothing is ahead of it, else queues it;
    /// never waits.
    #[inline]
    pub fn try_send(&self, frame: Message) -> Result<Sent, TrySendError> {
        self.send(frame, true)
    }

    /// [`Sender::try_send`] when `through`; otherwise `frame` is queued for the connection's
    /// task even when it could be written now (see [`WriteThrough`]).
    ///
    /// A close frame goes through [`Receiver::finish`], which encodes its code and reason.
    pub fn send(&self, frame: Message, through: bool) -> Result<Sent, TrySendError> {
        let mut state = self.shared.lock();
        if !state.open {
            return Err(TrySendError::Closed(frame));
        }
        let held = state.frames.len() + state.taken;
        if held == 0 && through {
            if let Some(socket) = &state.socket {
                let written = wire::write_now(socket, &frame);
                if written == wire::wire_len(&frame) {
                    return Ok(Sent::Written);
                }
                // The socket took part of it, or none: the rest goes to the task.
                state.written = u32::try_from(written).unwrap_or(0);
            }
        }
        let size = frame.len();
        if held >= self.shared.capacity
            || (held > 0 && state.bytes + state.taken_bytes + size > self.shared.max_bytes)
        {
            state.overflowed = true;
            let waker = state.waker.take();
            drop(state);
            if let Some(waker) = waker {
                waker.wake();
            }
            return Err(TrySendError::Full(frame));
        }
        state.bytes += size;
        state.frames.push_back(frame);
        // The receiver looks at the queue again before it waits, so only the first frame of a
        // batch needs to wake it.
        let waker = if state.frames.len() == 1 {
            state.waker.take()
        } else {
            None
        };
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(Sent::Queued)
    }

    /// How many frames the outbox holds at most.
    pub fn capacity(&self) -> usize {
        self.shared.capacity
    }

    /// How many bytes of payload the outbox holds at most (one frame of any size fits in an
    /// empty outbox).
    pub fn max_bytes(&self) -> usize {
        self.shared.max_bytes
    }

    /// Whether the receiver is gone.
    pub fn is_closed(&self) -> bool {
        !self.shared.lock().open
    }
}

impl Clone for Sender {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Sender {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.senders -= 1;
        let waker = if state.senders == 0 {
            state.waker.take()
        } else {
            None
        };
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl fmt::Debug for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("outbox::Sender")
            .field("capacity", &self.shared.capacity)
            .finish_non_exhaustive()
    }
}

/// The connection's end of the outbox.
pub struct Receiver {
    shared: Arc<Shared>,
    /// Frames taken from the queue in one go, handed out one by one.
    batch: VecDeque<Message>,
    /// Bytes of the batch's front frame already on the wire.
    written: usize,
}

impl Receiver {
    /// From now on, frames sent while nothing is queued or taken are written straight to
    /// `socket` by their sender. Whoever writes the rest (see [`Receiver::poll_batch`]) must
    /// write only what it takes from here.
    pub fn attach(&mut self, socket: Arc<TcpStream>) {
        self.shared.lock().socket = Some(socket);
    }

    /// Whether there is a batch to write: the frames taken and not yet written whole, or
    /// everything queued, taken now when the last batch is written. `Ready(None)` once the
    /// queue is empty and every sender is gone; pending (and woken by the next frame) when
    /// nothing is queued.
    pub fn poll_batch(&mut self, cx: &mut Context<'_>) -> Poll<Option<()>> {
        if !self.batch.is_empty() {
            return Poll::Ready(Some(()));
        }
        match self.refill(Some(cx.waker())) {
            Ok(()) => Poll::Ready(Some(())),
            Err(TryRecvError::Closed) => Poll::Ready(None),
            Err(TryRecvError::Empty) => Poll::Pending,
        }
    }

    /// The batch to write, and how many bytes of its first frame are already written.
    pub fn batch(&self) -> (&VecDeque<Message>, usize) {
        (&self.batch, self.written)
    }

    /// `n` more bytes of the batch are written: drops the frames now written whole.
    pub fn advance(&mut self, n: usize) {
        let (done, written) = wire::advance(&self.batch, self.written, n);
        self.batch.drain(..done);
        self.written = written;
    }

    /// Takes no more frames but `last` (a close frame), queued after everything already
    /// queued: senders now find the outbox closed, and nothing more is written straight
    /// through. What is queued is still there for [`Receiver::poll_batch`].
    pub fn finish(&mut self, last: Option<Message>) {
        let mut state = self.shared.lock();
        state.open = false;
        state.socket = None;
        if let Some(last) = last {
            let last = wire::prepare(last);
            state.bytes += last.len();
            state.frames.push_back(last);
        }
    }

    /// The next frame, taking everything queued at once when the last batch is used up.
    /// `Ready(None)` once the queue is empty and every sender is gone. For an outbox without
    /// a socket (see [`Receiver::attach`]): a frame partly written straight through would
    /// come out whole.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        match self.take(Some(cx.waker())) {
            Ok(frame) => Poll::Ready(Some(frame)),
            Err(TryRecvError::Closed) => Poll::Ready(None),
            Err(TryRecvError::Empty) => Poll::Pending,
        }
    }

    /// Waits for the next frame; `None` once every sender is gone and the queue is empty.
    pub async fn recv(&mut self) -> Option<Message> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next frame if one is queued.
    pub fn try_recv(&mut self) -> Result<Message, TryRecvError> {
        self.take(None)
    }

    /// Frames queued and taken but not yet received.
    pub fn len(&self) -> usize {
        self.batch.len() + self.shared.lock().frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a frame was refused for want of room since the last call: the connection is
    /// not keeping up, and what it was not sent is lost to it.
    pub fn take_overflow(&mut self) -> bool {
        std::mem::take(&mut self.shared.lock().overflowed)
    }

    /// Takes no more frames: what is queued is dropped, and senders now find the outbox closed.
    pub fn close(&mut self) {
        self.batch = VecDeque::new();
        self.written = 0;
        let (frames, socket) = {
            let mut state = self.shared.lock();
            state.open = false;
            state.taken = 0;
            state.taken_bytes = 0;
            state.bytes = 0;
            state.written = 0;
            (std::mem::take(&mut state.frames), state.socket.take())
        };
        drop((frames, socket));
    }

    /// Frees the buffers an idle connection no longer needs (call now and then, not per frame).
    pub fn shrink(&mut self) {
        if self.batch.is_empty() {
            self.batch = VecDeque::new();
        }
        let mut state = self.shared.lock();
        if state.frames.is_empty() {
            state.frames = VecDeque::new();
        }
    }

    fn take(&mut self, waker: Option<&Waker>) -> Result<Message, TryRecvError> {
        if self.batch.is_empty() {
            self.refill(waker)?;
        }
        self.batch.pop_front().ok_or(TryRecvError::Empty)
    }

    /// Takes everything queued as the batch (which must be empty), or registers `waker` to be
    /// woken by the next frame.
    fn refill(&mut self, waker: Option<&Waker>) -> Result<(), TryRecvError> {
        if self.batch.capacity() > KEEP_FRAMES {
            self.batch = VecDeque::new();
        }
        let mut state = self.shared.lock();
        if state.frames.is_empty() {
            state.taken = 0;
            state.taken_bytes = 0;
            // Idle now: a connection that can be written straight through holds no buffers
            // until frames pile up again, which they may never do (the next push allocates a
            // few slots). Without a socket (TLS), it keeps them for the next frames until the
            // connection's timer frees them. Busy, a connection swaps the same two back and
            // forth.
            if state.socket.is_some() {
                if self.batch.capacity() > 0 {
                    self.batch = VecDeque::new();
                }
                if state.frames.capacity() > 0 {
                    state.frames = VecDeque::new();
                }
            }
            if state.senders == 0 {
                return Err(TryRecvError::Closed);
            }
            if let Some(waker) = waker {
                match &state.waker {
                    Some(registered) if registered.will_wake(waker) => {}
                    _ => state.waker = Some(waker.clone()),
                }
            }
            return Err(TryRecvError::Empty);
        }
        // The whole queue becomes the batch, and the batch's empty buffer the queue: no frame
        // is copied and, while the connection is busy, nothing is allocated.
        std::mem::swap(&mut state.frames, &mut self.batch);
        state.taken = self.batch.len();
        state.taken_bytes = std::mem::take(&mut state.bytes);
        self.written = std::mem::take(&mut state.written) as usize;
        Ok(())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.close();
    }
}

impl fmt::Debug for Receiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("outbox::Receiver")
            .field("capacity", &self.shared.capacity)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    fn text(s: &str) -> Message {
        Message::text(s)
    }

    fn texts(rx: &mut Receiver) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(Message::Text(t)) = rx.try_recv() {
            out.push(t.to_string());
        }
        out
    }

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Counter {
        fn count(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn frames_come_out_in_order() {
        let (tx, mut rx) = channel(8);
        for s in ["a", "b", "c"] {
            tx.try_send(text(s)).unwrap();
        }
        assert_eq!(texts(&mut rx), ["a", "b", "c"]);
        assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Empty);
        tx.try_send(text("d")).unwrap();
        assert_eq!(texts(&mut rx), ["d"]);
    }

    #[test]
    fn full_at_capacity_and_frees_as_received() {
        let (tx, mut rx) = channel(3);
        assert_eq!(tx.capacity(), 3);
        for s in ["a", "b", "c"] {
            tx.try_send(text(s)).unwrap();
        }
        match tx.try_send(text("d")) {
            Err(TrySendError::Full(Message::Text(t))) => assert_eq!(t.as_str(), "d"),
            other => panic!("expected Full, got {other:?}"),
        }
        // The taken batch still counts until the receiver comes back for more.
        assert_eq!(texts_one(&mut rx), "a");
        assert!(matches!(tx.try_send(text("d")), Err(TrySendError::Full(_))));
        assert_eq!(texts(&mut rx), ["b", "c"]);
        for s in ["d", "e", "f"] {
            tx.try_send(text(s)).unwrap();
        }
        assert!(matches!(tx.try_send(text("g")), Err(TrySendError::Full(_))));
        assert_eq!(rx.len(), 3);
    }

    fn texts_one(rx: &mut Receiver) -> String {
        match rx.try_recv() {
            Ok(Message::Text(t)) => t.to_string(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    #[test]
    fn full_at_its_byte_bound_and_frees_as_received() {
        let (tx, mut rx) = bounded(100, 10);
        assert_eq!(tx.max_bytes(), 10);
        tx.try_send(text("aaaa")).unwrap();
        tx.try_send(text("bbbb")).unwrap();
        assert!(matches!(
            tx.try_send(text("ccc")),
            Err(TrySendError::Full(_))
        ));
        tx.try_send(text("cc")).unwrap();
        // Taken but not handed on: still counted.
        assert_eq!(texts_one(&mut rx), "aaaa");
        assert!(matches!(tx.try_send(text("d")), Err(TrySendError::Full(_))));
        assert_eq!(texts(&mut rx), ["bbbb", "cc"]);
        tx.try_send(text("dddddddddd")).unwrap();
        assert!(matches!(tx.try_send(text("e")), Err(TrySendError::Full(_))));
    }

    #[test]
    fn a_refused_frame_is_remembered_and_wakes_the_receiver() {
        let (tx, mut rx) = channel(1);
        let counter = Arc::new(Counter::default());
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        tx.try_send(text("a")).unwrap();
        assert!(matches!(rx.poll_recv(&mut cx), Poll::Ready(Some(_))));
        assert!(!rx.take_overflow());
        // Taken, not yet handed on: still full. The receiver is waiting for more.
        assert!(rx.poll_recv(&mut cx).is_pending());
        tx.try_send(text("b")).unwrap();
        assert!(matches!(tx.try_send(text("c")), Err(TrySendError::Full(_))));
        assert!(counter.count() >= 1);
        assert!(rx.take_overflow());
        assert!(!rx.take_overflow(), "reported once");
    }

    #[test]
    fn an_empty_outbox_takes_one_frame_of_any_size() {
        let (tx, mut rx) = bounded(100, 10);
        tx.try_send(text(&"x".repeat(50))).unwrap();
        assert!(matches!(tx.try_send(text("y")), Err(TrySendError::Full(_))));
        assert_eq!(texts(&mut rx).len(), 1);
        tx.try_send(text("y")).unwrap();
    }

    #[test]
    fn capacity_of_zero_holds_one() {
        let (tx, _rx) = channel(0);
        tx.try_send(text("a")).unwrap();
        assert!(matches!(tx.try_send(text("b")), Err(TrySendError::Full(_))));
    }

    #[test]
    fn closed_once_the_receiver_is_gone() {
        let (tx, rx) = channel(4);
        tx.try_send(text("a")).unwrap();
        assert!(!tx.is_closed());
        drop(rx);
        assert!(tx.is_closed());
        assert!(matches!(
            tx.try_send(text("b")),
            Err(TrySendError::Closed(_))
        ));
    }

    #[test]
    fn ends_when_every_sender_is_gone_after_what_was_queued() {
        let (tx, mut rx) = channel(4);
        let tx2 = tx.clone();
        tx.try_send(text("a")).unwrap();
        tx2.try_send(text("b")).unwrap();
        drop(tx);
        assert_eq!(texts_one(&mut rx), "a");
        drop(tx2);
        // What was queued still comes out, then the end.
        assert_eq!(texts_one(&mut rx), "b");
        assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Closed);
    }

    #[test]
    fn a_clone_keeps_it_open() {
        let (tx, mut rx) = channel(4);
        let tx2 = tx.clone();
        drop(tx);
        assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Empty);
        tx2.try_send(text("a")).unwrap();
        assert_eq!(texts(&mut rx), ["a"]);
    }

    #[test]
    fn wakes_the_receiver_once_per_batch() {
        let (tx, mut rx) = channel(8);
        let counter = Arc::new(Counter::default());
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(rx.poll_recv(&mut cx).is_pending());
        tx.try_send(text("a")).unwrap();
        tx.try_send(text("b")).unwrap();
        assert_eq!(counter.count(), 1);
        // Everything queued is one batch: taken under one lock, handed out in order.
        assert!(matches!(rx.poll_recv(&mut cx), Poll::Ready(Some(_))));
        tx.try_send(text("c")).unwrap();
        assert_eq!(counter.count(), 1, "not waiting: no wake-up");
        assert!(matches!(rx.poll_recv(&mut cx), Poll::Ready(Some(_))));
        assert!(matches!(rx.poll_recv(&mut cx), Poll::Ready(Some(_))));
        assert!(rx.poll_recv(&mut cx).is_pending());
        assert_eq!(rx.len(), 0);
        tx.try_send(text("d")).unwrap();
        assert_eq!(counter.count(), 2);
    }

    #[test]
    fn wakes_the_receiver_when_the_last_sender_goes() {
        let (tx, mut rx) = channel(8);
        let counter = Arc::new(Counter::default());
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let tx2 = tx.clone();
        assert!(rx.poll_recv(&mut cx).is_pending());
        drop(tx);
        assert_eq!(counter.count(), 0);
        drop(tx2);
        assert_eq!(counter.count(), 1);
        assert!(matches!(rx.poll_recv(&mut cx), Poll::Ready(None)));
    }

    #[test]
    fn empty_outbox_allocates_nothing_and_shrinks_back() {
        let (tx, mut rx) = channel(1024);
        assert_eq!(rx.batch.capacity(), 0);
        assert_eq!(rx.shared.lock().frames.capacity(), 0);
        for i in 0..100 {
            tx.try_send(text(&i.to_string())).unwrap();
        }
        assert_eq!(texts(&mut rx).len(), 100);
        rx.shrink();
        assert_eq!(rx.batch.capacity(), 0);
        assert_eq!(rx.shared.lock().frames.capacity(), 0);
    }

    #[test]
    fn a_busy_outbox_reuses_its_buffers() {
        let (tx, mut rx) = channel(1024);
        // Frames keep coming while the receiver takes them: the two buffers change places.
        for i in 0..40 {
            tx.try_send(text(&i.to_string())).unwrap();
        }
        texts_one(&mut rx);
        let kept = rx.batch.capacity();
        assert!(kept >= 40);
        for round in 0..3 {
            for i in 0..40 {
                tx.try_send(text(&i.to_string())).unwrap();
            }
            while !rx.batch.is_empty() {
                texts_one(&mut rx);
            }
            texts_one(&mut rx);
            assert_eq!(
                rx.batch.capacity() + rx.shared.lock().frames.capacity(),
                2 * kept,
                "round {round}"
            );
        }
        // Nothing more: without a socket to write straight to, both are kept for the next
        // frames, until the connection's timer frees them.
        texts(&mut rx);
        assert!(rx.batch.capacity() + rx.shared.lock().frames.capacity() > 0);
        rx.shrink();
        assert_eq!(rx.batch.capacity(), 0);
        assert_eq!(rx.shared.lock().frames.capacity(), 0);
    }

    #[tokio::test]
    async fn recv_waits_for_a_frame_from_another_task() {
        let (tx, mut rx) = channel(4);
        let sender = tokio::spawn(async move {
            tx.try_send(text("a")).unwrap();
            tx
        });
        assert_eq!(rx.recv().await, Some(text("a")));
        drop(sender.await.unwrap());
        assert_eq!(rx.recv().await, None);
    }
}
