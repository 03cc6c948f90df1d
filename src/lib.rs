//! wschat: a WebSocket chat server and its command-line clients in one binary.
//!
//! Layers, each depending only on those below it:
//! `cli` → `server` / `client` → `hub` → `protocol`.
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
pub mod relay;
pub mod server;
pub mod signals;
pub mod store;
pub mod tls;
