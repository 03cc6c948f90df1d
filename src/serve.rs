//! `wschat serve`: builds the store, the cluster and the hub from the settings, binds, and
//! serves until a signal ends it. Settings are data (`ServerConfig`); what is built from them
//! is handed to [`server::run`] as its parts, in the manner of mini-redis.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cli::StoreChoice;
use crate::cluster::{self, Cluster, ClusterConfig};
use crate::exit::Exit;
use crate::hub::directory::Directory;
use crate::hub::{Hub, HubConfig};
use crate::metrics::Metrics;
use crate::server::{self, Parts, ServerConfig};
use crate::signals::Signals;
use crate::store::{Keep, MemoryStore, RedisStore, SqliteStore, Store};

/// Runs `wschat serve` on `host:port` until SIGINT/SIGTERM.
pub async fn run(
    host: String,
    port: u16,
    mut config: ServerConfig,
    store: StoreChoice,
) -> anyhow::Result<Exit> {
    let cluster_stop = CancellationToken::new();
    let _stop_cluster = cluster_stop.clone().drop_guard();
    let (store, cluster): (Arc<dyn Store>, Option<Arc<Cluster>>) = match store {
        StoreChoice::Memory { keep } => (Arc::new(MemoryStore::new(keep)), None),
        StoreChoice::Sqlite { path, keep } => (Arc::new(SqliteStore::open(&path, keep)?), None),
        StoreChoice::Redis { url, keep } => {
            let store = Arc::new(RedisStore::new(Keep {
                messages: keep.messages.min(cluster::WINDOW_MAX),
                bytes: keep.bytes,
            }));
            let cluster = Cluster::new(
                ClusterConfig {
                    url,
                    keep: keep.messages,
                    log_max: cluster::LOG_MAX,
                },
                store.clone(),
            )?;
            (store, Some(cluster))
        }
    };
    let metrics = Arc::new(Metrics::default());
    let hub_config = HubConfig {
        echo: config.echo,
        history: config.history,
        limits: Some(config.limits()),
    };
    let mut hub = Hub::new(hub_config, store.clone(), metrics.clone());
    if let Some(cluster) = &cluster {
        hub = hub.with_relay(cluster.clone());
    }
    let hub = Arc::new(hub);
    if let Some(cluster) = &cluster {
        // The log's tail delivers to the hub from its first entry on.
        let to_hub = Arc::downgrade(&hub);
        let deliver = Arc::new(move |delivery| {
            if let Some(hub) = to_hub.upgrade() {
                hub.deliver(delivery);
            }
        });
        cluster.start(deliver, cluster_stop.clone());
        if !cluster.wait_ready(Duration::from_secs(5)).await {
            tracing::error!(
                "redis {} does not answer; serving anyway, catching up once it does",
                cluster.url()
            );
        }
        tracing::info!(
            instance = cluster.id(),
            "sharing rooms through redis {}",
            cluster.url()
        );
    }
    // Listen for signals before announcing the port: a script may signal at once.
    let signals = Signals::new().context("cannot listen for SIGINT/SIGTERM")?;
    let listener = TcpListener::bind((host.as_str(), port))
        .await
        .with_context(|| format!("cannot listen on {host}:{port}"))?;
    let address = listener.local_addr()?;
    let scheme = if config.tls.is_some() { "wss" } else { "ws" };
    {
        // Scripts wait for this line, so it goes out at once.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on {scheme}://{address}/");
        let _ = out.flush();
    }
    let files = server::raise_file_limit();
    if let Some(files) = files {
        let allowed = server::clients_within_file_limit(config.max_clients, files);
        if allowed != config.max_clients {
            let asked = match config.max_clients {
                0 => "unlimited".to_owned(),
                n => n.to_string(),
            };
            tracing::info!(
                "at most {allowed} connections (not {asked}): the open-file limit is {files}, \
                 and some are kept for the store and Redis; more get HTTP 503"
            );
            config.max_clients = allowed;
        }
    }
    tracing::info!(%address, raw = config.raw, echo = config.echo, open_files = files, max_clients = config.max_clients, "serving");
    if !address.ip().is_loopback() && config.access.public.is_empty() {
        tracing::info!(
            "pages are this server's own only under an IP address or localhost; to serve \
             them under a DNS name (or behind a proxy), start with --public-url URL"
        );
    }
    let draining = CancellationToken::new();
    let stop = Stop::default();
    tokio::spawn(follow_signals(
        signals,
        config.drain_delay,
        draining.clone(),
        stop.clone(),
    ));
    let (now, hurry) = (stop.now.cancelled_owned(), stop.hurry.cancelled_owned());
    let parts = Parts {
        hub,
        store,
        metrics,
        directory: cluster.clone().map(|c| c as Arc<dyn Directory>),
        draining,
    };
    server::run(listener, config, parts, now, hurry).await?;
    if let Some(cluster) = cluster {
        cluster.close().await;
    }
    tracing::info!("stopped");
    Ok(Exit::Success)
}

/// What the signals ask of a running server.
#[derive(Clone, Default)]
struct Stop {
    /// Stop serving: close every client and wait (at most `--grace`) for them.
    now: CancellationToken,
    /// Stop waiting for clients.
    hurry: CancellationToken,
}

/// Turns SIGINT/SIGTERM into what the server does: the first one stops it (with a drain
/// delay, that long after, reporting itself draining meanwhile); each further one cuts the
/// current wait short (the drain delay, then the grace period), and the one after that exits
/// at once.
async fn follow_signals(
    mut signals: Signals,
    delay: Duration,
    draining: CancellationToken,
    stop: Stop,
) {
    signals.recv().await;
    if !delay.is_zero() {
        draining.cancel();
        tracing::info!(
            "draining for {}: /healthz answers 503; a second signal stops at once",
            humantime::format_duration(delay)
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = signals.recv() => {}
        }
    }
    stop.now.cancel();
    signals.recv().await;
    tracing::info!("signal during shutdown: not waiting for clients any longer");
    stop.hurry.cancel();
    // Writing out history (and leaving Redis) is bounded, but an operator who insists gets
    // the process back at once; what was not written out is lost.
    let exit = signals.recv().await;
    tracing::warn!("third signal: exiting without writing out what is pending");
    std::process::exit(i32::from(exit.code()));
}
