//! Runs a validated mode: binds and serves, or runs a client.

use std::io::Write;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::cli::Mode;
use crate::exit::Exit;
use crate::{bench, client, generated, server, signals};

pub async fn run(mode: Mode) -> anyhow::Result<Exit> {
    match mode {
        Mode::Serve { host, port, config } => {
            let listener = TcpListener::bind((host.as_str(), port))
                .await
                .with_context(|| format!("cannot listen on {host}:{port}"))?;
            let address = listener.local_addr()?;
            let scheme = "ws";
            {
                // Scripts wait for this line, so it goes out at once.
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "listening on {scheme}://{address}/");
                let _ = out.flush();
            }
            tracing::info!(%address, raw = config.raw, echo = config.echo, "serving");
            server::run(listener, config, signals::shutdown()).await?;
            tracing::info!("stopped");
            Ok(Exit::Success)
        }
        Mode::Join(config) => client::join::run(config).await,
        Mode::Send(config) => client::send::run(config).await,
        Mode::Bench(config) => bench::run(config).await,
        Mode::Completions(shell) => {
            generated::completions(shell, &mut std::io::stdout());
            Ok(Exit::Success)
        }
    }
}
