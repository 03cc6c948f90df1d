//! SIGINT and SIGTERM as a future, so a client can end cleanly on either.

use crate::exit::Exit;

pub struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            #[cfg(unix)]
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?,
        })
    }

    /// Waits for the next signal and returns the exit code it calls for.
    pub async fn recv(&mut self) -> Exit {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => Exit::Interrupted,
                _ = self.term.recv() => Exit::Terminated,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Exit::Interrupted
        }
    }
}

/// Completes on SIGINT or SIGTERM (the server's shutdown trigger).
pub async fn shutdown() {
    match Signals::new() {
        Ok(mut signals) => {
            signals.recv().await;
        }
        Err(e) => {
            tracing::warn!("cannot listen for SIGTERM ({e}); only Ctrl-C stops the server");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
