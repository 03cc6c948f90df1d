//! Helpers shared by the integration tests: the real `wschat` binary on real sockets.
//!
//! Nothing here sleeps to synchronise. Every wait is for an event (a line printed, a frame
//! received, a process exiting) with a generous upper bound that only guards against a hang.
//! Every child process is killed when its guard is dropped, so a failing test leaves nothing
//! behind.
//!
//! - [`process`]: `wschat` (and any other program) as a child process; `serve`, `join`, `send`;
//! - [`ws`]: raw WebSocket clients;
//! - [`http`]: plain HTTP, `/metrics` and the server's memory;
//! - [`redis`]: a real `redis-server` on a free port;
//! - [`tls`]: a `serve` with TLS, under a CA made for the test.

#![allow(dead_code, unused_imports)]

pub mod http;
pub mod process;
pub mod redis;
pub mod tls;
pub mod ws;

pub use http::*;
pub use process::*;
pub use ws::*;
