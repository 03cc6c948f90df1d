//! wschat: a WebSocket chat server and its command-line clients in one binary.
//!
//! Layers, each depending only on those below it (docs/architecture.md has the map):
//!
//! - `main`, `cli`, `app`: parse arguments, pick a mode, map errors to exit codes;
//! - `server`, `client`, `bench`: sockets, HTTP, handshakes, reconnects, rendering;
//! - `cluster`: several instances through Redis, seen only as the hub's `Relay` and `Directory`;
//! - `hub`: rooms, members, names, presence, replay, fan-out; no sockets, no I/O;
//! - `store`: history in memory, SQLite or Redis, behind one trait; `metrics`;
//! - `outbox`, `protocol`: bounded queues of encoded frames; wire types, limits, close codes.
#![forbid(unsafe_code)]

pub mod app;
pub mod bench;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod exit;
pub mod generated;
pub mod hub;
pub mod metrics;
pub mod outbox;
pub mod protocol;
pub mod serve;
pub mod server;
pub mod signals;
pub mod store;
pub mod sync;
pub mod tls;
