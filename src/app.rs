//! Runs a validated mode: binds and serves, or runs a client.

use std::io::Write;

use anyhow::Context;
use tokio::net::TcpListener;

use std::sync::Arc;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::bench;
use crate::cli::{Mode, StoreChoice};
use crate::cluster::{self, Cluster, ClusterConfig};
use crate::exit::Exit;
use crate::signals::Signals;
use crate::store::{Keep, MemoryStore, RedisStore, SqliteStore, Store};
use crate::{client, generated, server};

pub async fn run(mode: Mode) -> anyhow::Result<Exit> {
    match mode {
        Mode::Serve {
            host,
            port,
            mut config,
            store,
            ..
        } => {
            let cluster_stop = CancellationToken::new();
            let mut cluster_handle = None;
            let _stop_cluster = cluster_stop.clone().drop_guard();
            let store: Arc<dyn Store> = match store {
                StoreChoice::Memory { keep } => Arc::new(MemoryStore::new(keep)),
                StoreChoice::Sqlite { path, keep } => Arc::new(SqliteStore::open(&path, keep)?),
                StoreChoice::Redis { url, keep } => {
                    let store = Arc::new(RedisStore::new(Keep {
                        messages: keep.messages.min(cluster::WINDOW_MAX),
                        bytes: keep.bytes,
                    }));
                    let cluster = Cluster::new(
                        ClusterConfig {
                            url: url.clone(),
                            keep: keep.messages,
                            log_max: cluster::LOG_MAX,
                        },
                        store.clone(),
                    )?;
                    cluster.start(cluster_stop.clone());
                    if !cluster.wait_ready(Duration::from_secs(5)).await {
                        tracing::error!(
                            "redis {url} does not answer; serving anyway, catching up once it does"
                        );
                    }
                    tracing::info!(instance = cluster.id(), "sharing rooms through redis {url}");
                    config.cluster = Some(cluster.clone());
                    cluster_handle = Some(cluster);
                    store
                }
            };
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
                    tracing::info!(
                        "at most {allowed} connections (not {}): the open-file limit is {files}, and some are kept for the store and Redis; more get HTTP 503",
                        if config.max_clients == 0 { "unlimited".to_owned() } else { config.max_clients.to_string() }
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
            let stop = Stop::default();
            tokio::spawn(follow_signals(
                signals,
                config.drain_delay,
                config.draining.clone(),
                stop.clone(),
            ));
            let (now, hurry) = (stop.now.cancelled_owned(), stop.hurry.cancelled_owned());
            server::run(listener, config, store, now, hurry).await?;
            if let Some(cluster) = cluster_handle {
                cluster.close().await;
            }
            tracing::info!("stopped");
            Ok(Exit::Success)
        }
        Mode::Join(config) => client::join::run(config).await,
        Mode::Send(config) => client::send::run(config).await,
        Mode::History(config) => client::history::run(config).await,
        Mode::Bench(config) => bench::run(config).await,
        Mode::Replay(config) => client::replay::run(config).await,
        Mode::Doctor(config) => client::doctor::run(config).await,
        Mode::Completions(shell) => {
            generated::completions(shell, &mut std::io::stdout());
            Ok(Exit::Success)
        }
    }
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
