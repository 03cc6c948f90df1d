//! Opening many connections at once: a cap on handshakes in flight, one task per connection
//! that goes on to do its job, and a wait that ends when all are open or the first fails.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::connect::{Dialer, Identity, Socket};
use super::progress::Progress;
use crate::client::connect::ServerKind;

/// Handshakes in flight at once: enough to hide the round trips, few enough to stay within
/// a server's listen backlog.
const CONCURRENT_HANDSHAKES: usize = 128;

/// Connections being opened; each one's task then runs its job and returns its result.
pub struct Fleet<T> {
    dialer: Arc<Dialer>,
    limit: Arc<Semaphore>,
    /// Each task sends exactly one message (its connection's outcome), so the channel holds at
    /// most as many as there are connections.
    outcomes: mpsc::UnboundedSender<anyhow::Result<ServerKind>>,
    outcomes_rx: mpsc::UnboundedReceiver<anyhow::Result<ServerKind>>,
    /// Cancelled: tasks still waiting to connect give up.
    stop: CancellationToken,
    pub tasks: JoinSet<Option<T>>,
    started: usize,
}

impl<T: Send + 'static> Fleet<T> {
    pub fn new(dialer: Arc<Dialer>, stop: CancellationToken) -> Fleet<T> {
        let (outcomes, outcomes_rx) = mpsc::unbounded_channel();
        Fleet {
            dialer,
            limit: Arc::new(Semaphore::new(CONCURRENT_HANDSHAKES)),
            outcomes,
            outcomes_rx,
            stop,
            tasks: JoinSet::new(),
            started: 0,
        }
    }

    /// Starts opening connection `index`; once open, `job` runs with it.
    pub fn open<F, Fut>(&mut self, index: usize, identity: Identity, job: F)
    where
        F: FnOnce(Socket, ServerKind) -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        let dialer = self.dialer.clone();
        let limit = self.limit.clone();
        let outcomes = self.outcomes.clone();
        let stop = self.stop.clone();
        self.started += 1;
        self.tasks.spawn(async move {
            let connected = tokio::select! {
                () = stop.cancelled() => return None,
                connected = async {
                    // The semaphore is never closed, so this cannot fail.
                    let _permit = limit.acquire().await.ok();
                    dialer.connect(index, &identity).await
                } => connected,
            };
            match connected {
                Ok((socket, kind)) => {
                    // The job is made before the connection is reported open, so whatever it
                    // does on creation (counting itself) is done by the time the wait ends.
                    let work = job(socket, kind);
                    let _ = outcomes.send(Ok(kind));
                    Some(work.await)
                }
                Err(e) => {
                    let _ = outcomes.send(Err(e));
                    None
                }
            }
        });
    }

    /// Waits until every connection started so far is open, showing progress. Returns the
    /// kind of server the first one met, or `None` when `interrupted` fired first. The first
    /// failure ends the wait with its error.
    pub async fn wait_open(
        &mut self,
        progress: &Progress,
        interrupted: &CancellationToken,
    ) -> anyhow::Result<Option<ServerKind>> {
        let mut kind = None;
        let mut open = 0;
        while open < self.started {
            let outcome = tokio::select! {
                () = interrupted.cancelled() => return Ok(None),
                outcome = self.outcomes_rx.recv() => outcome,
            };
            match outcome {
                Some(Ok(k)) => {
                    open += 1;
                    kind.get_or_insert(k);
                    progress.set(open as u64);
                }
                Some(Err(e)) if open == 0 => return Err(e),
                Some(Err(e)) => {
                    return Err(e.context(format!(
                        "after opening {open} of {} connections",
                        self.started
                    )))
                }
                // The fleet holds a sender, so the channel never closes while it waits.
                None => break,
            }
        }
        Ok(kind)
    }
}
