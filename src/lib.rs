//! wschat: a WebSocket chat server and its command-line clients in one binary.
//!
//! Layers, each depending only on those below it:
//! `cli` → `server` / `client` → `hub` → `protocol`.
#![forbid(unsafe_code)]

pub mod app;
pub mod bench;
pub mod cli;
pub mod client;
pub mod exit;
pub mod generated;
pub mod hub;
pub mod protocol;
pub mod server;
pub mod signals;
