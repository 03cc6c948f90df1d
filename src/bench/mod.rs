//! `wschat bench`: measures any WebSocket broadcast server (wschat in JSON or raw mode, or a
//! plain relay) by the deliveries it makes per second, how many it loses, duplicates or
//! reorders, and how long each takes from send to receipt; or, with `--idle`, holds many
//! quiet connections so the server's memory per connection can be read; or, with `--members`,
//! has announced members join one room and measures what the joins cost and whether a message
//! after them reaches everyone.
//!
//! Receivers find the publishers' tokens inside whatever text frame arrives, so the bench needs
//! nothing from the server but that it relays text to the other clients of a room.

mod connect;
mod fleet;
mod idle;
mod load;
mod members;
mod procfs;
mod progress;
mod publisher;
mod receiver;
mod report;
mod signals;
mod state;
mod stats;
mod token;

use std::str::FromStr;
use std::time::Duration;

use tokio_tungstenite::tungstenite::http::HeaderValue;
use url::Url;

use crate::exit::Exit;

/// A validated `wschat bench` request.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The server to measure (`ws://` only).
    pub url: Url,
    pub mode: BenchMode,
    /// How long publishers send, or idle connections are held.
    pub duration: Duration,
    /// How long to wait, after the last send, for deliveries still on their way.
    pub drain: Duration,
    /// Longest wait for one connection's handshake.
    pub connect_timeout: Duration,
    /// One JSON object on stdout instead of the table.
    pub json: bool,
    /// Sent with every handshake, for a server started with `--token`.
    pub authorization: Option<HeaderValue>,
    /// The first loopback source address to bind connections to (`--first-source`).
    pub first_source: Option<std::net::Ipv4Addr>,
}

#[derive(Debug, Clone)]
pub enum BenchMode {
    /// Publishers send, receivers count.
    Load(LoadConfig),
    /// Open and hold this many connections, with no traffic.
    Idle { connections: usize },
    /// Announced members join one room, then one message must reach them all.
    Members(MembersConfig),
}

/// The shape of a `--members` run.
#[derive(Debug, Clone)]
pub struct MembersConfig {
    pub members: usize,
    /// Joins per second, or as fast as the server welcomes them.
    pub join_rate: Rate,
    pub room: String,
    /// Member `i` is named `<prefix><i>`: bench processes sharing a room need their own.
    pub name_prefix: String,
    /// The server process to read CPU and memory from; found from the URL's port otherwise.
    pub server_pid: Option<u32>,
    /// Send nothing: wait (up to the duration) for a message with a final token from elsewhere.
    pub await_message: bool,
}

/// The shape of a load run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub receivers: usize,
    pub publishers: usize,
    pub rate: Rate,
    /// Length of each message's text, in bytes (at least the token's length).
    pub size: usize,
    /// Receivers and publishers are spread over this many rooms, round robin.
    pub rooms: usize,
    /// Receivers join as quiet members: a wschat server does not announce them, so a large
    /// room fills without one join notice per member to every member.
    pub quiet_receivers: bool,
}

/// How fast the publishers send, all together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    /// As fast as the server delivers: each publisher keeps a bounded window of messages
    /// not yet received by every receiver of its room.
    Max,
    /// This many messages per second in total, shared evenly by the publishers.
    PerSecond(f64),
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(text: &str) -> Result<Rate, String> {
        if text.eq_ignore_ascii_case("max") {
            return Ok(Rate::Max);
        }
        match text.parse::<f64>() {
            Ok(rate) if rate.is_finite() && rate > 0.0 && rate <= 10_000_000.0 => {
                Ok(Rate::PerSecond(rate))
            }
            _ => Err(format!(
                "'{text}' is not a rate: give messages per second (0 < R <= 10000000) or 'max'"
            )),
        }
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rate::Max => f.write_str("max"),
            Rate::PerSecond(r) => write!(f, "{r}"),
        }
    }
}

/// Runs the bench and prints its report.
pub async fn run(config: BenchConfig) -> anyhow::Result<Exit> {
    match &config.mode {
        BenchMode::Load(load) => load::run(&config, load).await,
        BenchMode::Idle { connections } => idle::run(&config, *connections).await,
        BenchMode::Members(members) => members::run(&config, members).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!("max".parse::<Rate>(), Ok(Rate::Max));
        assert_eq!("MAX".parse::<Rate>(), Ok(Rate::Max));
        assert_eq!("50".parse::<Rate>(), Ok(Rate::PerSecond(50.0)));
        assert_eq!("0.5".parse::<Rate>(), Ok(Rate::PerSecond(0.5)));
        for bad in ["0", "-1", "fast", "inf", "NaN", ""] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }
}
