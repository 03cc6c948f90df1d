//! Exit codes, and the error type that carries one up to `main`.

use std::fmt;

/// Every exit code wschat uses. The table is also printed by `--help` and kept in README.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Done: the server stopped cleanly, the messages were acknowledged, the client finished.
    Success = 0,
    /// Any other failure (cannot bind the port, an I/O error, ...).
    Failure = 1,
    /// Bad arguments.
    Usage = 2,
    /// The server could not be reached (refused, unresolvable, TLS failure).
    CannotConnect = 3,
    /// The server answered but refused the WebSocket (an HTTP error, a rejected name).
    HandshakeRejected = 4,
    /// The server closed the connection or it broke.
    ServerGone = 5,
    /// The server refused a message, or fewer members got it than `--min-recipients`.
    NotAcknowledged = 6,
    /// No answer in time (connect, acknowledgement).
    Timeout = 7,
    /// Interrupted by SIGINT (128 + 2).
    Interrupted = 130,
    /// Stopped by SIGTERM (128 + 15).
    Terminated = 143,
}

/// The table shown in `--help` and README.md.
pub const TABLE: &str = "\
Exit codes:
  0    success: clean shutdown, all messages acknowledged, --count/--for reached, /quit
  1    other failure (cannot bind the port, I/O error)
  2    usage error (bad arguments, an invalid name or room)
  3    cannot connect to the server (refused, unknown host, TLS failure, not a WebSocket server)
  4    handshake rejected (HTTP error such as 401/426, token refused, name taken)
  5    server went away (closed the connection, during the handshake too, or it broke)
  6    message not acknowledged (refused by the server, or fewer recipients than --min-recipients)
  7    timed out (connect or acknowledgement)
  130  interrupted (SIGINT)
  143  terminated (SIGTERM)";

impl Exit {
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// An error that decides the exit code. Anything else exits with [`Exit::Failure`].
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// Builds an error that exits with `exit`.
pub fn fail(exit: Exit, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Failure {
        exit,
        message: message.into(),
    })
}

/// The exit code an error calls for.
pub fn exit_for(error: &anyhow::Error) -> Exit {
    error
        .chain()
        .find_map(|e| e.downcast_ref::<Failure>())
        .map_or(Exit::Failure, |f| f.exit)
}
