//! Runs a validated mode: binds and serves, or runs a client.

use std::io::Write;

use anyhow::Context;
use tokio::net::TcpListener;

use std::sync::Arc;

use crate::cli::{Mode, StoreChoice};
use crate::exit::Exit;
use crate::signals::Signals;
use crate::store::{MemoryStore, SqliteStore, Store};
use crate::{client, generated, server};

pub async fn run(mode: Mode) -> anyhow::Result<Exit> {
    match mode {
        Mode::Serve {
            host,
            port,
            config,
            store,
            ..
        } => {
            let store: Arc<dyn Store> = match store {
                StoreChoice::Memory { keep } => Arc::new(MemoryStore::new(keep)),
                StoreChoice::Sqlite { path, keep } => Arc::new(SqliteStore::open(&path, keep)?),
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
            tracing::info!(%address, raw = config.raw, echo = config.echo, open_files = files, "serving");
            server::run(listener, config, store, signals.shutdown()).await?;
            tracing::info!("stopped");
            Ok(Exit::Success)
        }
        Mode::Join(config) => client::join::run(config).await,
        Mode::Send(config) => client::send::run(config).await,
        Mode::History(config) => client::history::run(config).await,
        Mode::Completions(shell) => {
            generated::completions(shell, &mut std::io::stdout());
            Ok(Exit::Success)
        }
    }
}
