//! The command line: clap definitions, and their conversion into each mode's validated config.
//! Nothing below this module sees clap types.

use std::path::PathBuf;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use crate::bench::{BenchConfig, BenchMode, LoadConfig, MembersConfig, Rate};
use crate::client::connect::{self, Target};
use crate::client::history::HistoryConfig;
use crate::client::join::JoinConfig;
use crate::client::send::SendConfig;
use crate::exit;
use crate::protocol;
use crate::server::{Access, PublicUrl, ServerConfig};
use crate::store::Keep;
use crate::tls;

const ABOUT: &str = "WebSocket chat: a server and its command-line clients in one binary";

const EXAMPLES: &str = "\
Examples:
  wschat serve --port 8080 &
  wschat join alice --count 1 < /dev/null > alice.log &   # exits after one chat line
  wschat send bob \"morning back\"                          # exits 0 once acknowledged";

const SERVE_EXAMPLES: &str = "\
Examples:
  wschat serve                                    # ws://127.0.0.1:8080/ and its web page
  wschat serve --host 0.0.0.0 --port 8080 --db chat.db
  wschat serve --port 0 --rate 0                  # a free port, no rate limit (benchmarks)";

const JOIN_EXAMPLES: &str = "\
Typed commands:
  /join ROOM       move to another room
  /rooms           list the rooms in use
  /who             list who is in this room
  /msg NAME TEXT   a private message
  /me ACTION       an action: * alice waves
  /name NEW        take another name
  /history         show the whole replay of recent messages
  /quit            leave (Ctrl-D too); /help lists these; //text sends /text

Examples:
  wschat join alice
  wschat join alice --room dev --url ws://chat.example:8080
  wschat join alice --count 1 --for 30s < /dev/null > alice.log &   # a script's listener";

const SEND_EXAMPLES: &str = "\
Examples:
  wschat send bob \"morning back\"
  seq 1 100 | wschat send bob                     # one message a line, at the server's pace
  wschat send ops \"deploy done\" --min-recipients 1; echo $?   # 6: nobody was there

With --min-recipients, exit 6 means that a message reached fewer members than asked (it was
still delivered to those it reached).";

const HISTORY_EXAMPLES: &str = "\
Examples:
  wschat history
  wschat history --room dev --limit 10
  wschat history --since 42 --json                # what a client that saw #42 missed";

const COMPLETIONS_EXAMPLES: &str = "\
Examples:
  source <(wschat completions bash)                 # in this bash only
  wschat completions fish > ~/.config/fish/completions/wschat.fish
  wschat completions zsh > _wschat                  # then move it to a directory on $fpath";

#[derive(Debug, Parser)]
#[command(name = "wschat", version, about = ABOUT, after_help = format!("{EXAMPLES}\n\n{}", exit::TABLE))]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// When to colour output: auto colours a terminal unless NO_COLOR is set.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a chat server (HTTP and WebSocket on one port).
    #[command(after_help = format!("{SERVE_EXAMPLES}\n\n{}", exit::TABLE))]
    Serve(ServeArgs),
    /// Join a room: print what arrives, send each line typed or piped in.
    #[command(after_help = format!("{JOIN_EXAMPLES}\n\n{}", exit::TABLE))]
    Join(JoinArgs),
    /// Send messages and exit once the server has acknowledged them.
    #[command(
        after_help = format!("{SEND_EXAMPLES}\n\n{}", exit::TABLE),
        mut_arg("room", |a| a.help("Room to send to"))
    )]
    Send(SendArgs),
    /// Print a room's history (from a running server) and exit.
    #[command(
        after_help = format!("{HISTORY_EXAMPLES}\n\n{}", exit::TABLE),
        mut_arg("room", |a| a.help("Room whose history to print")),
        mut_arg("json", |a| a.help("Print each message as one JSON object per line"))
    )]
    History(HistoryArgs),
    /// Measure a WebSocket broadcast server: deliveries/s, losses and latency; or hold idle
    /// connections.
    #[command(after_help = BENCH_EXAMPLES)]
    Bench(BenchArgs),
    /// Send the chat messages a `join --record` kept, under their senders' names, with the
    /// recorded gaps; exit once every one is acknowledged.
    #[command(after_help = exit::TABLE)]
    Replay(ReplayArgs),
    /// Check an endpoint step by step (DNS, TCP, TLS, upgrade, server, round trips, close)
    /// and say what to try when a step fails.
    #[command(after_help = exit::TABLE)]
    Doctor(DoctorArgs),
    /// Print a shell completion script (bash, zsh, fish, powershell, elvish).
    #[command(after_help = COMPLETIONS_EXAMPLES)]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (0.0.0.0 for every interface).
    #[arg(
        long,
        default_value = "127.0.0.1",
        env = "WSCHAT_HOST",
        hide_env_values = true
    )]
    pub host: String,
    /// Port to listen on; 0 picks a free one (the real URL is printed).
    #[arg(
        short,
        long,
        default_value_t = 8080,
        env = "WSCHAT_PORT",
        hide_env_values = true
    )]
    pub port: u16,
    /// Send each message back to its sender too.
    #[arg(long)]
    pub echo: bool,
    /// Plain relay: frames (text or binary) go out exactly as they came in; no JSON envelopes,
    /// no notices.
    #[arg(long)]
    pub raw: bool,
    /// Largest message accepted from a client (bytes, or with KiB/MiB); larger ones close it
    /// with 1009.
    #[arg(long, default_value = "64KiB", value_name = "BYTES", value_parser = bytes_between(16, 64 << 20))]
    pub max_message_bytes: u64,
    /// Frames queued for one client before it counts as too slow and is closed with 4008.
    #[arg(long, default_value_t = 4096, value_name = "FRAMES", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub outbox: u64,
    /// Bytes queued for one client before it counts as too slow and is closed with 4008 (at
    /// least twice --max-message-bytes); a history replay takes at most half of it.
    #[arg(long, default_value = "1MiB", value_name = "BYTES", value_parser = bytes_between(4 << 10, 1 << 40))]
    pub outbox_bytes: u64,
    /// How long shutdown waits for clients to answer the close frame (a further signal ends
    /// the wait).
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub grace: Duration,
    /// On SIGINT/SIGTERM, keep serving this long with GET /healthz answering 503, so that a
    /// load balancer stops sending clients before they are closed; a second signal ends it.
    #[arg(long, default_value = "0s", value_parser = parse_duration, value_name = "DURATION")]
    pub drain_delay: Duration,
    /// Messages of a room's history sent to each member that joins it.
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub history: usize,
    /// Messages kept in memory per room, for history and resume.
    #[arg(long, default_value_t = 1000, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub keep: u64,
    /// Bytes of history kept in memory across all rooms; past it, the least recently active
    /// rooms lose their oldest messages from memory first (with --db or --redis they stay
    /// there).
    #[arg(long, default_value = "256MiB", value_name = "BYTES", value_parser = bytes_between(64 << 10, u64::MAX))]
    pub keep_bytes: u64,
    /// Keep history in this SQLite file, durable across restarts (created if missing).
    #[arg(long, value_name = "FILE", env = "WSCHAT_DB", hide_env_values = true)]
    pub db: Option<PathBuf>,
    /// Run as one of several instances sharing rooms, history, names and presence through
    /// this Redis server (redis://HOST:PORT); see docs/scaling.md.
    #[arg(long, value_name = "URL", env = "WSCHAT_REDIS", hide_env_values = true, conflicts_with_all = ["db", "raw"])]
    pub redis: Option<String>,
    /// Messages per second one connection may send; past --burst it is read more slowly, and
    /// after --flood-timeout of that it is closed with 4029. 0: no limit.
    #[arg(long, default_value_t = 20.0, value_name = "PER_SECOND")]
    pub rate: f64,
    /// Messages a connection may send at once before --rate applies.
    #[arg(long, default_value_t = 40, value_name = "N")]
    pub burst: u32,
    /// How long a connection may stay over --rate before it is closed.
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub flood_timeout: Duration,
    /// Open connections allowed; more are refused with HTTP 503. 0: no limit.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub max_clients: usize,
    /// Open connections allowed from one address. 0 (the default): no limit, as every client
    /// behind a load balancer or NAT shares one address.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub max_per_ip: usize,
    /// Ping clients this often; one silent for two intervals is dropped. 0s: never.
    #[arg(long, default_value = "20s", value_parser = parse_duration, value_name = "DURATION")]
    pub ping_interval: Duration,
    /// Longest time a client may take to send its request headers.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub handshake_timeout: Duration,
    /// Clients must present this token (CLI: --token; browsers: ?token=).
    #[arg(
        long,
        env = "WSCHAT_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    pub token: Option<String>,
    /// Read the token from this file (its first line).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Also accept WebSocket connections from pages of this origin (e.g.
    /// https://chat.example.com; * for any). Repeatable.
    #[arg(long, value_name = "ORIGIN")]
    pub allow_origin: Vec<String>,
    /// The address people use to reach this server (e.g. https://chat.example.com): pages
    /// served under its name, or of its origin behind a proxy that rewrites Host, are this
    /// server's own. Without it only an IP address or localhost counts as the server's name
    /// (other names may be DNS rebinding). Repeatable, or a comma-separated list.
    #[arg(
        long,
        value_name = "URL",
        env = "WSCHAT_PUBLIC_URL",
        value_delimiter = ',',
        value_parser = parse_public_url
    )]
    pub public_url: Vec<PublicUrl>,
    /// Serve wss:// and https:// with this PEM certificate (chain).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Misbehave on purpose, to test clients: comma-separated drop=P (cut each connection
    /// without a close frame with probability P per second), close=P (the same with close
    /// 1001), delay=MIN-MAX (hold each outgoing frame that long, order kept), fragment=N
    /// (send messages in N-byte fragments). Stored messages are never lost.
    #[arg(long, value_name = "SPEC", value_parser = parse_chaos)]
    pub chaos: Option<crate::server::chaos::ChaosSpec>,
    /// Seed for --chaos's random choices, to repeat a run.
    #[arg(long, value_name = "N", requires = "chaos")]
    pub chaos_seed: Option<u64>,
}

fn parse_chaos(text: &str) -> Result<crate::server::chaos::ChaosSpec, String> {
    crate::server::chaos::ChaosSpec::parse(text)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Connection options shared by the clients.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Server URL (ws://, wss://; http:// and host:port also work).
    #[arg(
        long,
        default_value = "ws://localhost:8080",
        env = "WSCHAT_URL",
        hide_env_values = true
    )]
    pub url: String,
    /// Room to join.
    #[arg(long, default_value = protocol::DEFAULT_ROOM)]
    pub room: String,
    /// Print one JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
    /// Give up connecting after this long.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub connect_timeout: Duration,
    /// Token for a server started with --token (sent as Authorization: Bearer).
    #[arg(long, env = "WSCHAT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Trust the CA in this PEM file for wss:// (instead of the system's roots).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct JoinArgs {
    /// Your name in the room.
    pub name: String,
    #[command(flatten)]
    pub client: ClientArgs,
    /// Exit 0 after receiving this many chat messages.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Exit 0 after this long (e.g. 30s, 5m).
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Exit (code 5) when the connection is lost instead of reconnecting.
    #[arg(long)]
    pub no_reconnect: bool,
    #[command(flatten)]
    pub hooks: HookArgs,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// Name to send as.
    pub name: String,
    /// The message (words are joined by spaces; put -- before one that starts with -).
    /// None, or '-': one message per line of stdin, until its end (Ctrl-D at a terminal).
    pub message: Vec<String>,
    #[command(flatten)]
    pub client: ClientArgs,
    /// After delivery, print what arrives for this long.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub wait: Option<Duration>,
    /// Fail (exit 6) when a message reached fewer than N other members (it was still
    /// delivered to those).
    #[arg(long, value_name = "N")]
    pub min_recipients: Option<usize>,
    /// Fail (exit 7) when the server has not acknowledged within this long.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only messages after this id (what a client that saw ID missed).
    #[arg(long, value_name = "ID")]
    pub since: Option<u64>,
    /// At most this many of the latest messages (without --since).
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub limit: usize,
}

const BENCH_EXAMPLES: &str = "\
Examples:
  wschat bench --url ws://127.0.0.1:8080 --receivers 1000 --publishers 4 --rate max --duration 10s
  wschat bench --url ws://127.0.0.1:8080 --receivers 1000 --rate 50 --json
  wschat bench --url ws://127.0.0.1:8080 --idle 10000 --duration 60s  # server's VmRSS per conn
  wschat bench --url ws://127.0.0.1:8080 --members 10000 --join-rate max  # announced members

--members N: N named members join one room and read everything; the report gives the time to
join, the server's CPU per join and memory per member (from /proc, for a local server), the
members the server closed (by close code) and how long one message sent after the last join
took to reach them all. Several bench processes share a room with --name-prefix and
--await-message: each waits for a 'wsb-final:<unix nanos>' message sent by another client.

Works against any server that relays text to the other clients (wschat in JSON or --raw mode,
a plain relay): each message carries a token that receivers find in whatever frame arrives.
Targets only the URL given; every run stops by itself after --duration plus at most --drain.";

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Server URL (ws://; http:// and host:port also work).
    #[arg(
        long,
        default_value = "ws://localhost:8080",
        env = "WSCHAT_URL",
        hide_env_values = true
    )]
    pub url: String,
    /// Connections that receive and count every message.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub receivers: u64,
    /// Connections that send.
    #[arg(long, value_name = "P", default_value_t = 1)]
    pub publishers: u64,
    /// Messages per second, all publishers together, or 'max': as fast as the server delivers
    /// (each publisher keeps a bounded number of messages in flight).
    #[arg(long, value_name = "R|max", default_value = "max")]
    pub rate: Rate,
    /// How long the publishers send (with --idle: how long connections are held).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Length of each message's text in bytes (a token of about 30 bytes, padded).
    #[arg(long, value_name = "B", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=(1 << 20)))]
    pub size: u64,
    /// Spread receivers and publishers over K rooms, round robin (a server that ignores
    /// rooms shows it as unexpected deliveries).
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub rooms: u64,
    /// Receivers join quietly (`?quiet=1`): a wschat server announces each visible member to
    /// the whole room, which for thousands of receivers floods them before the run starts.
    #[arg(long)]
    pub quiet_receivers: bool,
    /// After sending, wait at most this long for deliveries still on their way.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub drain: Duration,
    /// Give up when one connection's handshake takes longer than this.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Print one JSON object with every figure instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Token for a server started with --token (sent as Authorization: Bearer).
    #[arg(long, env = "WSCHAT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Instead of a load: open N connections that send nothing and hold them for --duration
    /// (or until Ctrl-C), printing how many are open.
    #[arg(long, value_name = "N", conflicts_with_all = ["receivers", "publishers", "rate", "size", "rooms", "drain", "quiet_receivers"])]
    pub idle: Option<u64>,
    /// Instead of a load: N announced (named) members join one room and read everything;
    /// then one message must reach them all. Reports join time, the server's CPU per join
    /// and memory per member, and the members the server closed.
    #[arg(long, value_name = "N", conflicts_with_all = ["idle", "receivers", "publishers", "rate", "size", "rooms", "quiet_receivers"])]
    pub members: Option<u64>,
    /// With --members: joins per second, or 'max' (as fast as the server welcomes them,
    /// 128 handshakes in flight).
    #[arg(
        long,
        value_name = "R|max",
        default_value = "max",
        requires = "members"
    )]
    pub join_rate: Rate,
    /// With --members: the room they join.
    #[arg(
        long,
        value_name = "ROOM",
        default_value = "bench-members",
        requires = "members"
    )]
    pub room: String,
    /// With --members: member i is named PREFIX<i> (bench processes sharing a room need
    /// different prefixes).
    #[arg(
        long,
        value_name = "PREFIX",
        default_value = "member",
        requires = "members"
    )]
    pub name_prefix: String,
    /// With --members: the server process whose CPU and memory are read from /proc (by
    /// default the local process listening on the URL's port, when it can be found).
    #[arg(long, value_name = "PID", requires = "members")]
    pub server_pid: Option<u32>,
    /// Bind connections to a loopback server to source addresses from this one on
    /// (127.x.y.z), 10,000 per address; by default 127.0.0.1, .2, ... past 10,000 connections.
    /// Bench processes running side by side need their own: a bound port is unique per
    /// address.
    #[arg(long, value_name = "IP", value_parser = loopback_address)]
    pub first_source: Option<std::net::Ipv4Addr>,
    /// With --members: send nothing; wait up to --duration for a message starting with
    /// 'wsb-final:<unix nanos>' from another client (e.g. wschat send), to time it.
    #[arg(long, requires = "members")]
    pub await_message: bool,
}

/// Largest --receivers, --publishers or --idle accepted.
const MAX_BENCH_CONNECTIONS: u64 = 1_000_000;

impl BenchArgs {
    fn into_config(self) -> Result<BenchConfig, clap::Error> {
        let count = |value: u64, flag: &str| -> Result<usize, clap::Error> {
            if value == 0 {
                return Err(usage(format!("{flag} must be at least 1")));
            }
            if value > MAX_BENCH_CONNECTIONS {
                return Err(usage(format!("{flag} is at most {MAX_BENCH_CONNECTIONS}")));
            }
            // At most a million: fits in usize.
            Ok(usize::try_from(value).unwrap_or(usize::MAX))
        };
        let url = connect::parse_url(&self.url)
            .map_err(|e| usage(format!("{e}{}", env_note("--url", &self.url))))?;
        if url.scheme() != "ws" {
            return Err(usage(format!(
                "wschat bench speaks ws:// only, not {}:// ('{}')",
                url.scheme(),
                self.url
            )));
        }
        if self.duration.is_zero() {
            return Err(usage("--duration must be more than 0"));
        }
        let mode = match (self.idle, self.members) {
            (Some(n), _) => BenchMode::Idle {
                connections: count(n, "--idle")?,
            },
            (None, Some(n)) => {
                let members = count(n, "--members")?;
                protocol::validate_room(&self.room).map_err(|e| usage(format!("--room: {e}")))?;
                // The longest name it will use is the last member's.
                protocol::validate_name(&format!("{}{}", self.name_prefix, members - 1))
                    .map_err(|e| usage(format!("--name-prefix: {e}")))?;
                BenchMode::Members(MembersConfig {
                    members,
                    join_rate: self.join_rate,
                    room: self.room,
                    name_prefix: self.name_prefix,
                    server_pid: self.server_pid,
                    await_message: self.await_message,
                })
            }
            (None, None) => {
                let receivers = count(self.receivers, "--receivers")?;
                let publishers = count(self.publishers, "--publishers")?;
                let rooms = count(self.rooms, "--rooms")?;
                if rooms > publishers || rooms > receivers {
                    return Err(usage(format!(
                        "--rooms {rooms} needs at least {rooms} publishers and {rooms} receivers \
                         (every room gets at least one of each)"
                    )));
                }
                BenchMode::Load(LoadConfig {
                    receivers,
                    publishers,
                    rate: self.rate,
                    // At most 1 MiB (clap checks): fits in usize.
                    size: usize::try_from(self.size).unwrap_or(1 << 20),
                    rooms,
                    quiet_receivers: self.quiet_receivers,
                })
            }
        };
        let authorization = match self.token.as_deref() {
            Some(token) => Some(
                connect::bearer(token)
                    .map_err(|_| usage("--token may hold only visible ASCII characters"))?,
            ),
            None => None,
        };
        Ok(BenchConfig {
            url,
            mode,
            duration: self.duration,
            drain: self.drain,
            connect_timeout: self.connect_timeout,
            json: self.json,
            authorization,
            first_source: self.first_source,
        })
    }
}

/// An IPv4 loopback address (127.0.0.0/8), for --first-source.
fn loopback_address(text: &str) -> Result<std::net::Ipv4Addr, String> {
    match text.parse::<std::net::Ipv4Addr>() {
        Ok(ip) if ip.is_loopback() => Ok(ip),
        _ => Err(format!(
            "'{text}' is not a loopback IPv4 address (127.x.y.z)"
        )),
    }
}

/// A size in bytes, plain or with a binary unit (`64KiB`, `256MiB`, `1GiB`; `K`, `M`, `G` alike),
/// within `min..=max`.
fn bytes_between(min: u64, max: u64) -> impl Fn(&str) -> Result<u64, String> + Clone {
    move |text| {
        let bytes = parse_bytes(text)?;
        if bytes < min {
            return Err(format!("it must be at least {}", show_bytes(min)));
        }
        if bytes > max {
            return Err(format!("it must be at most {}", show_bytes(max)));
        }
        Ok(bytes)
    }
}

/// `bytes` in the largest binary unit that divides it.
fn show_bytes(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}

fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        _ => {
            return Err(format!(
                "'{text}' is not a size: bytes, or with KiB, MiB or GiB (e.g. 256MiB)"
            ))
        }
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a size: it starts with no number"))?;
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("'{text}' is too large"))
}

fn parse_public_url(text: &str) -> Result<PublicUrl, String> {
    PublicUrl::parse(text)
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (try 500ms, 10s, 5m)"))
}

/// Where the server keeps history.
#[derive(Debug, Clone)]
pub enum StoreChoice {
    Memory { keep: Keep },
    Sqlite { path: PathBuf, keep: Keep },
    Redis { url: String, keep: Keep },
}

/// A validated request for one mode.
#[derive(Debug)]
pub enum Mode {
    Serve {
        host: String,
        port: u16,
        config: ServerConfig,
        store: StoreChoice,
        log_format: LogFormat,
    },
    Join(JoinConfig),
    Send(SendConfig),
    History(HistoryConfig),
    Bench(BenchConfig),
    Replay(crate::client::replay::ReplayConfig),
    Doctor(crate::client::doctor::DoctorConfig),
    Completions(clap_complete::Shell),
}

/// The server's token, from --token or the first line of --token-file.
fn server_token(
    token: Option<String>,
    file: Option<&std::path::Path>,
) -> Result<Option<String>, clap::Error> {
    let token = match file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| usage(format!("cannot read --token-file {}: {e}", path.display())))?
            .lines()
            .next()
            .map(str::trim)
            .unwrap_or_default()
            .to_owned(),
        None => match token {
            Some(token) => token,
            None => return Ok(None),
        },
    };
    if token.is_empty() {
        return Err(usage("the token is empty"));
    }
    Ok(Some(token))
}

/// A usage error; [`Cli::into_mode`] gives it the usage of the subcommand concerned.
fn usage(message: impl std::fmt::Display) -> clap::Error {
    clap::Error::raw(ErrorKind::ValueValidation, message)
}

/// Flags that also come from the environment, and their variables.
const FROM_ENV: &[(&str, &str)] = &[
    ("--port", "WSCHAT_PORT"),
    ("--host", "WSCHAT_HOST"),
    ("--url", "WSCHAT_URL"),
    ("--db", "WSCHAT_DB"),
    ("--redis", "WSCHAT_REDIS"),
];

/// Whether `flag`'s value came from its environment variable (set to `value`) rather than
/// from the command line.
fn from_env(flag: &str, value: &str) -> Option<&'static str> {
    let (_, var) = FROM_ENV.iter().find(|(f, _)| *f == flag)?;
    let given = std::env::args().any(|a| a == flag || a.starts_with(&format!("{flag}=")));
    (!given && std::env::var(var).is_ok_and(|v| v == value)).then_some(*var)
}

/// `" (from WSCHAT_URL)"` when `flag`'s bad `value` came from the environment, else nothing.
fn env_note(flag: &str, value: &str) -> String {
    from_env(flag, value)
        .map(|var| format!(" (from the environment variable {var})"))
        .unwrap_or_default()
}

/// A clap error as wschat prints every error: `wschat: error: ...`, naming the environment
/// variable that a bad value came from (clap names only the flag).
pub fn describe_usage_error(error: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue};
    let mut text = error.render().to_string();
    if let Some(rest) = text.strip_prefix("error: ") {
        text = format!("wschat: error: {rest}");
    }
    if let (Some(ContextValue::String(arg)), Some(ContextValue::String(value))) = (
        error.get(ContextKind::InvalidArg),
        error.get(ContextKind::InvalidValue),
    ) {
        let flag = arg.split([' ', '=']).next().unwrap_or_default();
        let note = env_note(flag, value);
        if !note.is_empty() {
            text = text.replacen(&format!("'{arg}'"), &format!("'{arg}'{note}"), 1);
        }
    }
    text
}

impl ClientArgs {
    fn target(&self, name: &str, quiet: bool) -> Result<Target, clap::Error> {
        protocol::validate_name(name).map_err(|e| usage(format!("invalid NAME '{name}': {e}")))?;
        protocol::validate_room(&self.room)
            .map_err(|e| usage(format!("invalid --room '{}': {e}", self.room)))?;
        let url = connect::parse_url(&self.url)
            .map_err(|e| usage(format!("{e}{}", env_note("--url", &self.url))))?;
        Ok(Target {
            url,
            name: name.to_owned(),
            room: (self.room != protocol::DEFAULT_ROOM).then(|| self.room.clone()),
            quiet,
            connect_timeout: self.connect_timeout,
            since: None,
            epoch: None,
            history: None,
            token: self.token.clone(),
            tls: match &self.ca {
                Some(ca) => Some(tls::client_config(ca).map_err(|e| usage(format!("{e:#}")))?),
                None => None,
            },
        })
    }
}

impl Command {
    fn name(&self) -> &'static str {
        match self {
            Command::Serve(_) => "serve",
            Command::Join(_) => "join",
            Command::Send(_) => "send",
            Command::History(_) => "history",
            Command::Bench(_) => "bench",
            Command::Replay(_) => "replay",
            Command::Doctor(_) => "doctor",
            Command::Completions { .. } => "completions",
        }
    }
}

impl Cli {
    /// Checks what clap cannot and builds the mode's config. An error shows the usage of the
    /// subcommand, as clap's own errors do.
    pub fn into_mode(self) -> Result<Mode, clap::Error> {
        let name = self.command.name();
        self.build_mode().map_err(|e| {
            let text = e.to_string();
            let message = text.strip_prefix("error: ").unwrap_or(&text).trim_end();
            let mut cli = Cli::command();
            cli.build();
            match cli.find_subcommand_mut(name) {
                Some(sub) => sub.error(e.kind(), message),
                None => cli.error(e.kind(), message),
            }
        })
    }

    fn build_mode(self) -> Result<Mode, clap::Error> {
        Ok(match self.command {
            Command::Serve(a) => Mode::Serve {
                config: ServerConfig {
                    history: a.history,
                    echo: a.echo,
                    raw: a.raw,
                    // Both ranges are enforced by clap and fit in usize.
                    outbox_frames: usize::try_from(a.outbox).unwrap_or(4096),
                    // Two of the largest frames always fit, so a member is never closed for
                    // one large message.
                    outbox_bytes: usize::try_from(a.outbox_bytes).unwrap_or(usize::MAX).max(
                        2 * (usize::try_from(a.max_message_bytes).unwrap_or(64 * 1024)
                            + protocol::MAX_ENVELOPE_BYTES),
                    ),
                    max_message_bytes: usize::try_from(a.max_message_bytes).unwrap_or(64 * 1024),
                    grace: a.grace,
                    drain_delay: a.drain_delay,
                    rate: if a.rate == 0.0 || (a.rate.is_finite() && a.rate >= 0.001) {
                        a.rate
                    } else {
                        return Err(usage(
                            "--rate must be a number of messages per second, 0 or more",
                        ));
                    },
                    burst: a.burst,
                    flood_timeout: a.flood_timeout,
                    max_clients: a.max_clients,
                    max_per_ip: a.max_per_ip,
                    ping_interval: if a.ping_interval > Duration::from_secs(86_400) {
                        return Err(usage("--ping-interval is at most 1 day"));
                    } else {
                        (!a.ping_interval.is_zero()).then_some(a.ping_interval)
                    },
                    header_timeout: a.handshake_timeout,
                    access: Access {
                        token: server_token(a.token, a.token_file.as_deref())?,
                        allowed_origins: a.allow_origin,
                        public: a.public_url,
                        warned: Default::default(),
                    },
                    tls: match (&a.tls_cert, &a.tls_key) {
                        (Some(cert), Some(key)) => Some(
                            tls::server_config(cert, key).map_err(|e| usage(format!("{e:#}")))?,
                        ),
                        _ => None,
                    },
                    chaos: a.chaos.map(|spec| {
                        std::sync::Arc::new(crate::server::chaos::Chaos::new(spec, a.chaos_seed))
                    }),
                },
                log_format: a.log_format,
                host: a.host,
                port: a.port,
                store: {
                    let keep = Keep {
                        // Range enforced by clap; fits in usize.
                        messages: usize::try_from(a.keep).unwrap_or(1000),
                        bytes: usize::try_from(a.keep_bytes).unwrap_or(usize::MAX),
                    };
                    match (a.db, a.redis) {
                        (Some(path), _) => StoreChoice::Sqlite { path, keep },
                        (None, Some(url)) => StoreChoice::Redis { url, keep },
                        (None, None) => StoreChoice::Memory { keep },
                    }
                },
            },
            Command::Join(a) => {
                if a.count == Some(0) {
                    return Err(usage("--count must be at least 1"));
                }
                Mode::Join(JoinConfig {
                    target: a.client.target(&a.name, false)?,
                    count: a.count,
                    duration: a.duration,
                    reconnect: !a.no_reconnect,
                    json: a.client.json,
                    hooks: a.hooks.into_config()?,
                })
            }
            Command::Send(a) => {
                let message = match a.message.as_slice() {
                    [] => None,
                    [dash] if dash == "-" => None,
                    words => Some(words.join(" ")),
                };
                if message.as_deref().is_some_and(|m| m.trim().is_empty()) {
                    return Err(usage("the message is empty"));
                }
                Mode::Send(SendConfig {
                    target: a.client.target(&a.name, true)?,
                    message,
                    wait: a.wait,
                    min_recipients: a.min_recipients,
                    ack_timeout: a.timeout,
                    json: a.client.json,
                })
            }
            Command::History(a) => {
                let mut target = a.client.target("history", true)?;
                target.room = Some(a.client.room.clone());
                target.since = a.since;
                target.history = Some(a.limit);
                Mode::History(HistoryConfig {
                    target,
                    json: a.client.json,
                })
            }
            Command::Bench(a) => Mode::Bench(a.into_config()?),
            Command::Replay(a) => Mode::Replay(a.into_config()?),
            Command::Doctor(a) => Mode::Doctor(a.into_config()?),
            Command::Completions { shell } => Mode::Completions(shell),
        })
    }
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// A file written by `wschat join --record`.
    pub file: PathBuf,
    /// Server URL (ws://, wss://; http:// and host:port also work).
    #[arg(long, default_value = "ws://localhost:8080", env = "WSCHAT_URL")]
    pub url: String,
    /// Send every message to this room (default: the room each was recorded in).
    #[arg(long)]
    pub room: Option<String>,
    /// Divide the recorded gaps by X (2: twice as fast); 0 sends each message as soon as the
    /// one before is acknowledged.
    #[arg(long, value_name = "X", default_value_t = 1.0)]
    pub speed: f64,
    /// Give up connecting after this long.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Token for a server started with --token (sent as Authorization: Bearer).
    #[arg(long, env = "WSCHAT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Trust the CA in this PEM file for wss:// (instead of the system's roots).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Fail (exit 7) when the server has not acknowledged a message within this long.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
}

impl ReplayArgs {
    fn into_config(self) -> Result<crate::client::replay::ReplayConfig, clap::Error> {
        if !(self.speed.is_finite() && (self.speed == 0.0 || self.speed >= 0.001)) {
            return Err(usage("--speed must be 0 (no gaps) or at least 0.001"));
        }
        let client = ClientArgs {
            url: self.url,
            room: self
                .room
                .clone()
                .unwrap_or_else(|| protocol::DEFAULT_ROOM.to_owned()),
            json: false,
            connect_timeout: self.connect_timeout,
            token: self.token,
            ca: self.ca,
        };
        Ok(crate::client::replay::ReplayConfig {
            file: self.file,
            target: client.target("replay", true)?,
            room: self.room,
            speed: self.speed,
            ack_timeout: self.timeout,
        })
    }
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The endpoint (ws://, wss://; http:// and host:port also work).
    #[arg(default_value = "ws://localhost:8080", env = "WSCHAT_URL")]
    pub url: String,
    /// Print one JSON object with every step instead of lines.
    #[arg(long)]
    pub json: bool,
    /// Longest wait of each step.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Round trips to time.
    #[arg(long, default_value_t = 5, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=100))]
    pub pings: u64,
    /// Token for a server started with --token (sent as Authorization: Bearer).
    #[arg(long, env = "WSCHAT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Trust the CA in this PEM file for wss:// (instead of the system's roots).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
}

impl DoctorArgs {
    fn into_config(self) -> Result<crate::client::doctor::DoctorConfig, clap::Error> {
        if self.timeout.is_zero() {
            return Err(usage("--timeout must be more than 0"));
        }
        Ok(crate::client::doctor::DoctorConfig {
            url: connect::parse_url(&self.url).map_err(usage)?,
            json: self.json,
            timeout: self.timeout,
            token: self.token,
            tls: match &self.ca {
                Some(ca) => Some(tls::client_config(ca).map_err(|e| usage(format!("{e:#}")))?),
                None => None,
            },
            // At most 100 (clap checks).
            pings: usize::try_from(self.pings).unwrap_or(5),
        })
    }
}

/// What `join` does with what it receives, besides printing it.
#[derive(Debug, Args)]
pub struct HookArgs {
    /// Exit 0 once a chat message received matches this regular expression (its text; with
    /// --json too). With --for, exit 7 when none did in time.
    #[arg(long, value_name = "REGEX", conflicts_with = "count")]
    pub until: Option<String>,
    /// For each chat message from others, run CMD with `sh -c`: the text on its stdin and in
    /// WSCHAT_TEXT, with WSCHAT_FROM, WSCHAT_ROOM and WSCHAT_ID; each line it prints is sent
    /// to the room. One at a time, in order; a failure is reported on stderr.
    #[arg(long, value_name = "CMD")]
    pub exec: Option<String>,
    /// Commands --exec runs at once (their lines are still sent in the messages' order).
    #[arg(long, value_name = "N", default_value_t = 1, requires = "exec", value_parser = clap::value_parser!(u64).range(1..=64))]
    pub jobs: u64,
    /// Kill an --exec command (and what it started) after this long.
    #[arg(long, value_name = "DURATION", default_value = "10s", requires = "exec", value_parser = parse_duration)]
    pub exec_timeout: Duration,
    /// Append every received event to FILE as NDJSON with its arrival time (for `wschat
    /// replay`).
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
}

impl HookArgs {
    fn into_config(self) -> Result<crate::client::hooks::HooksConfig, clap::Error> {
        use crate::client::{exec::ExecConfig, hooks};
        if self.exec.as_deref().is_some_and(|c| c.trim().is_empty()) {
            return Err(usage("--exec needs a command"));
        }
        if self.exec_timeout.is_zero() {
            return Err(usage("--exec-timeout must be more than 0"));
        }
        Ok(hooks::HooksConfig {
            until: match self.until.as_deref() {
                Some(text) => Some(hooks::parse_until(text).map_err(usage)?),
                None => None,
            },
            exec: self.exec.map(|command| ExecConfig {
                command,
                // At most 64 (clap checks).
                jobs: usize::try_from(self.jobs).unwrap_or(1),
                timeout: self.exec_timeout,
            }),
            record: self.record,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_bytes("65536"), Ok(65536));
        assert_eq!(parse_bytes("64KiB"), Ok(64 << 10));
        assert_eq!(parse_bytes("256 MiB"), Ok(256 << 20));
        assert_eq!(parse_bytes("1g"), Ok(1 << 30));
        assert!(parse_bytes("1MB").unwrap_err().contains("KiB, MiB or GiB"));
        assert!(parse_bytes("MiB").is_err());
        assert!(parse_bytes("-1").is_err());
        assert!(parse_bytes("99999999999999999999GiB").is_err());
        let keep = bytes_between(64 << 10, u64::MAX);
        assert_eq!(keep("1KiB"), Err("it must be at least 64 KiB".to_owned()));
        assert_eq!(
            bytes_between(16, 64 << 20)("65M"),
            Err("it must be at most 64 MiB".to_owned())
        );
        let cli = Cli::try_parse_from(["wschat", "serve", "--keep-bytes", "1MiB"]).unwrap();
        let Mode::Serve { store, .. } = cli.into_mode().unwrap() else {
            panic!()
        };
        let StoreChoice::Memory { keep } = store else {
            panic!()
        };
        assert_eq!(keep.bytes, 1 << 20);
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn send_joins_words_and_reads_stdin_on_dash() {
        let cli = Cli::try_parse_from(["wschat", "send", "bob", "morning", "back"]).unwrap();
        let Mode::Send(c) = cli.into_mode().unwrap() else {
            panic!()
        };
        assert_eq!(c.message.as_deref(), Some("morning back"));
        assert!(c.target.quiet);
        let cli = Cli::try_parse_from(["wschat", "send", "bob", "-"]).unwrap();
        let Mode::Send(c) = cli.into_mode().unwrap() else {
            panic!()
        };
        assert_eq!(c.message, None);
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for args in [
            &["wschat", "join", "bad name"][..],
            &["wschat", "join", "a", "--url", "ftp://x"],
            &["wschat", "join", "a", "--count", "0"],
            &["wschat", "send", "a", " "],
            &["wschat", "bench", "--receivers", "0"],
            &["wschat", "bench", "--publishers", "0"],
            &["wschat", "bench", "--idle", "0"],
            &["wschat", "bench", "--duration", "0s"],
            &["wschat", "bench", "--rooms", "2"],
            &["wschat", "bench", "--url", "wss://h/"],
            &["wschat", "bench", "--members", "0"],
            &["wschat", "bench", "--members", "5", "--room", "two words"],
            &[
                "wschat",
                "bench",
                "--members",
                "5",
                "--name-prefix",
                "bad name",
            ],
        ] {
            let err = Cli::try_parse_from(args).unwrap().into_mode().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::ValueValidation, "{args:?}");
        }
        assert!(Cli::try_parse_from(["wschat", "join", "a", "--for", "soon"]).is_err());
        assert!(Cli::try_parse_from(["wschat", "bench", "--rate", "fast"]).is_err());
        assert!(
            Cli::try_parse_from(["wschat", "bench", "--idle", "5", "--receivers", "3"]).is_err()
        );
    }

    #[test]
    fn bench_builds_a_load_or_an_idle_config() {
        let cli = Cli::try_parse_from([
            "wschat",
            "bench",
            "--url",
            "127.0.0.1:9",
            "--receivers",
            "20",
            "--publishers",
            "2",
            "--rate",
            "200",
            "--rooms",
            "2",
            "--duration",
            "2s",
        ])
        .unwrap();
        let Mode::Bench(c) = cli.into_mode().unwrap() else {
            panic!()
        };
        assert_eq!(c.url.as_str(), "ws://127.0.0.1:9/");
        let BenchMode::Load(load) = c.mode else {
            panic!()
        };
        assert_eq!((load.receivers, load.publishers, load.rooms), (20, 2, 2));
        assert_eq!(load.rate, Rate::PerSecond(200.0));
        let cli = Cli::try_parse_from(["wschat", "bench", "--idle", "1000"]).unwrap();
        let Mode::Bench(c) = cli.into_mode().unwrap() else {
            panic!()
        };
        assert!(matches!(c.mode, BenchMode::Idle { connections: 1000 }));
        let cli = Cli::try_parse_from([
            "wschat",
            "bench",
            "--members",
            "300",
            "--join-rate",
            "50",
            "--name-prefix",
            "w2-",
        ])
        .unwrap();
        let Mode::Bench(c) = cli.into_mode().unwrap() else {
            panic!("not bench");
        };
        let BenchMode::Members(m) = c.mode else {
            panic!("not members");
        };
        assert_eq!(m.members, 300);
        assert_eq!(m.join_rate, Rate::PerSecond(50.0));
        assert_eq!(m.name_prefix, "w2-");
        assert!(!m.await_message);
        // Members-only flags need --members; --members is not a load.
        assert!(Cli::try_parse_from(["wschat", "bench", "--join-rate", "5"]).is_err());
        assert!(
            Cli::try_parse_from(["wschat", "bench", "--members", "5", "--receivers", "3"]).is_err()
        );
    }
}
