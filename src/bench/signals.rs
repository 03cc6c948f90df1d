//! Ctrl-C and SIGTERM end a bench run early: the figures so far are still reported, and the
//! exit code says which signal it was.

use std::sync::{Arc, OnceLock};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::exit::Exit;
use crate::signals::Signals;

pub struct Watch {
    /// Abort it once the run is over.
    pub handle: JoinHandle<()>,
    exit: Arc<OnceLock<Exit>>,
}

impl Watch {
    /// The exit code of the signal that arrived, if one did.
    pub fn exit(&self) -> Option<Exit> {
        self.exit.get().copied()
    }
}

/// Cancels `interrupted` on the first SIGINT or SIGTERM.
pub fn watch(interrupted: CancellationToken) -> Watch {
    let exit = Arc::new(OnceLock::new());
    let seen = exit.clone();
    let handle = tokio::spawn(async move {
        let code = match Signals::new() {
            Ok(mut signals) => signals.recv().await,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                Exit::Interrupted
            }
        };
        let _ = seen.set(code);
        interrupted.cancel();
    });
    Watch { handle, exit }
}
