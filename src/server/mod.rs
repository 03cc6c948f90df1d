//! `wschat serve`: the accept loop, shutdown and the settings every connection shares.
//!
//! The caller binds the listener and chooses what ends the server, so tests bind
//! `127.0.0.1:0` and pass their own trigger while `main` passes SIGINT/SIGTERM.

mod access;
pub mod chaos;
mod conn;
mod http;
mod limits;

pub use access::{Access, PublicUrl};

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::hub::directory::Directory;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::protocol;
use crate::store::Store;
use limits::Capacity;

/// Settings of a running server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Send each chat message back to its sender too.
    pub echo: bool,
    /// Plain relay: frames go out exactly as they came in; no envelopes, no notices.
    pub raw: bool,
    /// Frames a client's outbox holds before the client counts as a slow consumer.
    pub outbox_frames: usize,
    /// Bytes a client's outbox holds before the client counts as a slow consumer.
    pub outbox_bytes: usize,
    /// Largest message (and frame) accepted from a client, in bytes.
    pub max_message_bytes: usize,
    /// How long shutdown waits for clients to answer the close frame.
    pub grace: Duration,
    /// How long the server goes on serving, reporting itself draining, once told to stop
    /// (the caller waits it out before completing `run`'s shutdown future).
    pub drain_delay: Duration,
    /// Messages replayed to a member joining a room.
    pub history: usize,
    /// Messages per second one connection may send (0: no limit), and the burst allowed.
    pub rate: f64,
    pub burst: u32,
    /// A connection over its rate for this long without a break is closed with 4029.
    pub flood_timeout: Duration,
    /// Open WebSocket connections allowed, in all and per client address (0: no limit).
    pub max_clients: usize,
    pub max_per_ip: usize,
    /// Ping each client this often; one that stays silent for two intervals is dropped.
    pub ping_interval: Option<Duration>,
    /// Longest time a client may take to send its HTTP request headers.
    pub header_timeout: Duration,
    /// Token and Origin rules.
    pub access: Access,
    /// Serve `wss://` and `https://` with this certificate.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Misbehave on purpose (`--chaos`).
    pub chaos: Option<Arc<chaos::Chaos>>,
}

/// What a running server is given besides its settings: what was built from them.
pub struct Parts {
    /// The hub, with its relay when the server shares rooms.
    pub hub: Arc<Hub>,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    /// One of several instances sharing rooms through Redis (`--redis`).
    pub directory: Option<Arc<dyn Directory>>,
    /// Cancelled by the caller when the server is about to stop: `GET /healthz` answers 503
    /// from then on, while everything else is served as before.
    pub draining: CancellationToken,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            echo: false,
            raw: false,
            outbox_frames: 4096,
            outbox_bytes: 1 << 20,
            max_message_bytes: 64 * 1024,
            grace: Duration::from_secs(5),
            drain_delay: Duration::ZERO,
            history: 50,
            rate: 20.0,
            burst: 40,
            flood_timeout: Duration::from_secs(30),
            max_clients: 100_000,
            max_per_ip: 0,
            ping_interval: Some(Duration::from_secs(20)),
            header_timeout: Duration::from_secs(10),
            access: Access::default(),
            tls: None,
            chaos: None,
        }
    }
}

impl ServerConfig {
    /// The limits a client is told of, in its welcome and in the handshake.
    pub fn limits(&self) -> protocol::Limits {
        protocol::Limits {
            rate: self.rate,
            burst: self.burst.max(1),
            max_message_bytes: self.max_message_bytes,
        }
    }
}

impl Shared {
    /// Whether the server is on its way out (`GET /healthz` answers 503).
    fn is_draining(&self) -> bool {
        self.draining.is_cancelled() || self.stopping.is_cancelled()
    }
}

/// What every connection task shares.
struct Shared {
    config: ServerConfig,
    hub: Arc<Hub>,
    directory: Option<Arc<dyn Directory>>,
    draining: CancellationToken,
    /// Cancelled when the server starts shutting down.
    stopping: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    tasks: TaskTracker,
    metrics: Arc<Metrics>,
    capacity: Arc<Capacity>,
    store: Arc<dyn Store>,
}

/// Serves HTTP and WebSocket on `listener` until `shutdown` completes, then closes every
/// client with 1001, waits at most `config.grace` for them to go (or until `hurry`
/// completes), and flushes the store.
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    parts: Parts,
    shutdown: impl Future<Output = ()>,
    hurry: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let store = parts.store;
    if let Some(chaos) = &config.chaos {
        tracing::warn!(
            "CHAOS MODE: this server misbehaves on purpose ({}; --chaos-seed {} repeats it); do not use it for real chat",
            chaos.spec,
            chaos.seed
        );
    }
    let shared = Arc::new(Shared {
        hub: parts.hub,
        directory: parts.directory,
        draining: parts.draining,
        capacity: Capacity::new(config.max_clients, config.max_per_ip),
        config,
        stopping: CancellationToken::new(),
        tasks: TaskTracker::new(),
        metrics: parts.metrics,
        store: store.clone(),
    });
    tokio::spawn(tell_presence(shared.clone()));
    let acceptor = shared.config.tls.clone().map(TlsAcceptor::from);
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(10);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(10);
                    // Chat frames are small and latency matters more than packet count.
                    let _ = stream.set_nodelay(true);
                    match &acceptor {
                        None => {
                            shared.tasks.spawn(http::serve(shared.clone(), stream, peer));
                        }
                        Some(acceptor) => {
                            shared.tasks.spawn(serve_tls(shared.clone(), acceptor.clone(), stream, peer));
                        }
                    }
                }
                Err(e) => {
                    // Usually out of file descriptors: wait for some to be released rather
                    // than spin. A single connection's error never reaches this loop.
                    tracing::warn!("accept failed: {e}; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
    drop(listener);
    tracing::info!(
        "shutting down: closing {} connection(s)",
        shared.tasks.len()
    );
    shared.stopping.cancel();
    shared.tasks.close();
    let started = std::time::Instant::now();
    let grace = shared.config.grace;
    let waited = tokio::select! {
        waited = tokio::time::timeout(grace, shared.tasks.wait()) => waited.is_ok(),
        () = hurry => false,
    };
    if !waited {
        tracing::warn!(
            "{} connection(s) still open after {:.1?}; dropping them",
            shared.tasks.len(),
            started.elapsed()
        );
    }
    // Every acknowledged message is already stored; this writes what was sent but not yet
    // committed. It blocks, so it runs off the async threads.
    let _ = tokio::task::spawn_blocking(move || store.close()).await;
    Ok(())
}

/// How often a large room hears who came and went (see [`crate::hub::COALESCE_ABOVE`]).
const PRESENCE_INTERVAL: Duration = Duration::from_secs(1);

/// Has the hub send large rooms their presence summaries, until the server stops.
async fn tell_presence(shared: Arc<Shared>) {
    let mut every = tokio::time::interval(PRESENCE_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => shared.hub.flush_presence(),
            () = shared.stopping.cancelled() => return,
        }
    }
}

/// Keeps `max_clients` (0: no limit) below the open-file limit `files`, with a reserve for the
/// store, Redis and accepting: past the limit, accepting fails and a client would hang instead
/// of getting its 503. Returns the limit to use.
pub fn clients_within_file_limit(max_clients: usize, files: u64) -> usize {
    let reserve = (files / 8).clamp(32, 1024);
    let usable = usize::try_from(files.saturating_sub(reserve)).unwrap_or(usize::MAX);
    if max_clients == 0 {
        usable
    } else {
        max_clients.min(usable)
    }
}

/// Completes the TLS handshake (bounded by the handshake timeout), then serves HTTP over it.
async fn serve_tls(
    shared: Arc<Shared>,
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: std::net::SocketAddr,
) {
    let timeout = shared.config.header_timeout;
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => http::serve(shared, stream, peer).await,
        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}

/// Raises this process's open-file limit as far as it may go: every connection is a file
/// descriptor, and the usual default soft limit (1024) would cap the server far below what
/// the machine can hold. Returns the limit in force.
#[cfg(unix)]
pub fn raise_file_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    // Privileged processes may also raise the hard limit; others stop at it.
    let wanted = hard.max(1 << 20);
    if setrlimit(Resource::RLIMIT_NOFILE, wanted, wanted).is_ok() {
        return Some(wanted);
    }
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
}

#[cfg(not(unix))]
pub fn raise_file_limit() -> Option<u64> {
    None
}
