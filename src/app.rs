//! Runs a validated mode: serves, or runs a client.

use crate::cli::Mode;
use crate::exit::Exit;
use crate::{bench, client, generated, serve};

pub async fn run(mode: Mode) -> anyhow::Result<Exit> {
    match mode {
        Mode::Serve {
            host,
            port,
            config,
            store,
            ..
        } => serve::run(host, port, config, store).await,
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
