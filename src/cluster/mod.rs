//! Several `wschat serve` instances as one chat, through Redis (`serve --redis URL`).
//!
//! Keys (one Redis database shared by every instance):
//! - `wschat:log`: one stream for all rooms, the shared ordered log. Posting a room message
//!   appends to it; every instance tails it (XREAD BLOCK from the last entry it delivered) and
//!   delivers each entry to its local members, so all see the same messages in the same order,
//!   and an instance cut off from Redis for a while catches up from where it was.
//!   Bounded with `MAXLEN ~` [`ClusterConfig::log_max`].
//! - `wschat:room:{room}:seq`: the room's id counter; `wschat:room:{room}`: the room's history,
//!   one entry per message with stream id `{id}-0` (so resuming is an XRANGE), bounded with
//!   `MAXLEN ~ --keep`.
//! - `wschat:post:{instance}:{n}`: remembers for a few minutes the id given to one post, so a
//!   post retried after a timeout is not appended twice.
//! - `wschat:name:{key}`: who holds a name (value: the instance id and when it gave the name,
//!   `{id} {ms}`), `EX 30`, refreshed every 10 s while held and deleted on leave; `key` is the
//!   name's skeleton ([`crate::protocol::name_key`]), so names that look alike are one name.
//!   After an outage that let two instances give one name, the earlier holder keeps it.
//! - `wschat:presence:{room}`: hash of member name -> instance id (for `who`);
//!   `wschat:count:{room}`: hash of instance id -> its visible members of the room (for counts);
//!   `wschat:rooms`: the rooms with members somewhere (for `rooms`);
//!   `wschat:instance:{id}`: the instance's heartbeat (`EX 30`, refreshed every 10 s). Members of
//!   an instance whose heartbeat expired are not counted, so a dead instance stops counting
//!   within 30 s (40 s for the counts, which are taken again every heartbeat), and the first
//!   live instance to notice announces its members' departure;
//!   `wschat:reaped:{id}` says it did, so that an instance only cut off announces them again.
//!
//! The log carries three kinds of entries: room messages (no `kind` field), private messages
//! (`kind` `private`, delivered by the instance that held the target's name when the log took
//! it) and join, leave and rename
//! notices (`kind` `notice`, with every live instance's count of the room's members at that
//! point). Posting a room message is one Lua script that increments the room counter and
//! appends to both streams atomically, so ids are ordered the same way as the log, on every
//! instance; posting a notice is one script that records the instance's count and appends the
//! notice with everyone's counts, so counts follow the log's order too.
//!
//! No Redis call is made under the hub's lock: the hub only queues posts (a bounded channel),
//! which one task posts in order (and, while Redis is down, delivers to this instance's members
//! in that order), and everything else (loading a room's history, claiming a name) happens in the connection's
//! task before it calls the hub. Every call has a timeout; a Redis outage is logged, shown by
//! `/healthz` and `/metrics`, and retried with backoff.

mod calls;
mod codec;
mod directory;
mod history;
mod keys;
mod presence;
mod publish;
mod scripts;
mod tail;
#[cfg(test)]
pub mod testing;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context;
use redis::aio::ConnectionManager;
use redis::streams::{StreamRangeReply, StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, Script};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::hub::relay::{Announcement, Delivery, Handover, NoticeEntry, Origin, Relay};
use crate::hub::MemberId;
use crate::protocol::{ChatEvent, Notice};
use crate::store::RedisStore;
use crate::sync::lock;

use calls::*;
use codec::*;
use keys::*;
use presence::Held;
use publish::{Outgoing, Pending};
use scripts::*;

/// The shared log of every room's messages.
pub const LOG_KEY: &str = "wschat:log";

/// How long a name claim and an instance heartbeat live without being refreshed.
pub const LEASE: Duration = Duration::from_secs(30);

/// How often claims and heartbeats are refreshed.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// Longest wait for one Redis command (the tail's blocking read has its own bound).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the tail's XREAD blocks waiting for new entries.
const BLOCK: Duration = Duration::from_secs(2);

/// Entries read from the log at once.
const READ_COUNT: usize = 1000;

/// Posts waiting to go to Redis (while it is slow or away) before new ones are refused.
const QUEUE: usize = 10_000;

/// Most posts sent to Redis in one round trip.
const MAX_PIPELINE: usize = 64;

/// A post Redis refuses this many times in a row (an error in the script, not Redis being
/// away or busy) is dropped, so that it does not hold up every post after it.
const MAX_REFUSALS: u32 = 10;

/// Backoff between attempts while Redis is unreachable.
const BACKOFF_MIN: Duration = Duration::from_millis(50);

const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Entries kept in the shared log.
pub const LOG_MAX: usize = 100_000;

/// Messages kept in memory per room (the Redis stream keeps `--keep`).
pub const WINDOW_MAX: usize = 1000;

/// How to reach Redis and how much it keeps.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub url: String,
    /// Messages kept per room in the room's stream (`--keep`).
    pub keep: usize,
    /// Entries kept in the shared log (how far behind an instance may fall and still catch up).
    pub log_max: usize,
}

/// Counters for `/metrics`.
#[derive(Default)]
struct Counters {
    published: AtomicU64,
    refused: AtomicU64,
    delivered: AtomicU64,
    outages: AtomicU64,
    queued: AtomicU64,
}

/// Posts of this instance delivered to its members without the log (see [`Cluster::local`]).
#[derive(Default)]
struct Local {
    /// By serial: delivered here while Redis was down; the log's copy of each is then only
    /// acknowledged here, not delivered again.
    delivered: HashSet<u64>,
    /// The highest serial of this instance's posts the tail has read from the log. Posts are
    /// queued and stored in the order of their serials, so every post up to it was delivered
    /// here from the log: the posting task does not deliver it again
    /// (a post Redis stored but whose answer was lost in a stall).
    logged: u64,
}

pub struct Cluster {
    /// Random per process: a restarted instance is a new instance.
    id: String,
    config: ClusterConfig,
    store: Arc<RedisStore>,
    /// Every command but the tail's blocking read (which would hold up a shared connection).
    commands: ConnectionManager,
    tail: ConnectionManager,
    post: Script,
    private: Script,
    notice: Script,
    claim: Script,
    release: Script,
    forget: Script,
    reap: Script,
    queue: mpsc::Sender<Pending>,
    queue_rx: Mutex<Option<mpsc::Receiver<Pending>>>,
    /// The next post's serial; held while a post is queued, so that posts are queued (and so
    /// stored) in the order of their serials.
    serial: Mutex<u64>,
    /// Redis answered the last command (false until the first answer).
    up: AtomicBool,
    /// Follows `up`: the posting task wakes when Redis is declared down.
    up_changed: watch::Sender<bool>,
    /// Which posts of this instance its members got without the log. Held while a post is
    /// delivered here, by the posting task or by the tail, so that each post is delivered
    /// here once, by whichever gets there first, and in order.
    local: Mutex<Local>,
    /// True once the tail knows where the log ends: posts wait for it, so none is missed.
    ready: watch::Sender<bool>,
    held: Mutex<Held>,
    counters: Counters,
    /// Where the tail delivers (the hub), given at start.
    sink: OnceLock<Deliver>,
    /// Visible members per room on the other live instances, as last counted.
    census: Mutex<HashMap<String, usize>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("id", &self.id)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Where delivered log entries go: the hub (or, in tests, a store).
pub type Deliver = Arc<dyn Fn(Delivery) + Send + Sync>;

impl Cluster {
    /// Prepares the connections (made lazily: serve starts even while Redis is away).
    pub fn new(config: ClusterConfig, store: Arc<RedisStore>) -> anyhow::Result<Arc<Cluster>> {
        let client = redis::Client::open(config.url.as_str())
            .with_context(|| format!("invalid --redis URL '{}'", config.url))?;
        let (queue, queue_rx) = mpsc::channel(QUEUE);
        Ok(Arc::new(Cluster {
            id: format!("{:016x}", fastrand::u64(..)),
            commands: manager(&client, COMMAND_TIMEOUT)?,
            tail: manager(&client, BLOCK + COMMAND_TIMEOUT)?,
            config,
            store,
            post: Script::new(&format!("{LOG_ID}{POST}")),
            private: Script::new(&format!("{LOG_ID}{PRIVATE}")),
            notice: Script::new(&format!("{LOG_ID}{NOTICE}")),
            claim: Script::new(CLAIM),
            release: Script::new(RELEASE),
            forget: Script::new(FORGET),
            reap: Script::new(&format!("{LOG_ID}{REAP}")),
            queue,
            queue_rx: Mutex::new(Some(queue_rx)),
            serial: Mutex::new(1),
            up: AtomicBool::new(false),
            up_changed: watch::channel(false).0,
            local: Mutex::new(Local::default()),
            ready: watch::channel(false).0,
            held: Mutex::new(Held::default()),
            counters: Counters::default(),
            sink: OnceLock::new(),
            census: Mutex::new(HashMap::new()),
        }))
    }

    /// This instance's id (in the log, name claims and presence entries).
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn store(&self) -> &Arc<RedisStore> {
        &self.store
    }

    /// Whether Redis answered the last command.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn set_up(&self, up: bool, error: Option<&anyhow::Error>) {
        let was = self.up.swap(up, Ordering::Relaxed);
        if was != up {
            self.up_changed.send_replace(up);
        }
        match (was, up) {
            (true, false) => {
                self.counters.outages.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    "redis {} unreachable: {}; local delivery continues, posts are queued",
                    self.config.url,
                    error.map(|e| format!("{e:#}")).unwrap_or_default()
                );
            }
            (false, true) => tracing::info!("redis {} reachable", self.config.url),
            _ => {}
        }
    }

    /// The Redis server's URL, as given.
    pub fn url(&self) -> &str {
        &self.config.url
    }

    /// Starts the tasks that post, tail the log (delivering each entry to `deliver`: the
    /// hub's [`crate::hub::Hub::deliver`]) and keep claims alive, until `stop`.
    pub fn start(self: &Arc<Self>, deliver: Deliver, stop: CancellationToken) {
        let Some(queue) = lock(&self.queue_rx).take() else {
            return;
        };
        if self.sink.set(deliver).is_err() {
            return;
        }
        tokio::spawn(self.clone().publish_loop(queue, stop.clone()));
        tokio::spawn(self.clone().tail_loop(stop.clone()));
        tokio::spawn(self.clone().heartbeat_loop(stop));
    }

    fn deliver(&self, delivery: Delivery) {
        self.counters.delivered.fetch_add(1, Ordering::Relaxed);
        // Set by `start`, before any task that delivers runs.
        if let Some(deliver) = self.sink.get() {
            deliver(delivery);
        }
    }

    /// Waits (at most `bound`) until the tail knows where the log ends. False if Redis did not
    /// answer in time (serve then starts anyway, degraded, and catches up when it can).
    pub async fn wait_ready(&self, bound: Duration) -> bool {
        let mut ready = self.ready.subscribe();
        tokio::time::timeout(bound, ready.wait_for(|r| *r))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Stops counting this instance's members everywhere (at shutdown, once its connections
    /// are closed; an instance that dies instead stops counting when its heartbeat expires).
    pub async fn close(&self) {
        let mut connection = self.commands.clone();
        if let Err(e) = bounded(connection.del::<_, ()>(instance_key(&self.id))).await {
            tracing::debug!("instance heartbeat not removed (it expires): {e:#}");
        }
    }

    /// Prometheus text for the Redis side, appended to `/metrics`.
    pub fn render_metrics(&self) -> String {
        let mut out = String::new();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let lines: [(&str, &str, u64); 6] = [
            ("redis_up", "1 while Redis answers", u64::from(self.is_up())),
            (
                "redis_outages_total",
                "Times Redis stopped answering",
                get(&self.counters.outages),
            ),
            (
                "relay_published_total",
                "Room messages this instance appended to the shared log",
                get(&self.counters.published),
            ),
            (
                "relay_queued",
                "Room messages waiting to be appended to the shared log",
                get(&self.counters.queued),
            ),
            (
                "relay_refused_total",
                "Posts not sent to Redis: the queue to it was full, or Redis refused them 10 times",
                get(&self.counters.refused),
            ),
            (
                "relay_delivered_total",
                "Log entries this instance delivered",
                get(&self.counters.delivered),
            ),
        ];
        for (name, help, value) in lines {
            crate::metrics::write_metric(&mut out, name, help, value);
        }
        out
    }
}

impl Cluster {
    /// Queues a post for the log; the handover says whether local members must get it now.
    /// Queues a post for the log. Never delivers here by itself: while Redis is down, the
    /// posting task does, in the order of the queue (see [`Cluster::publish_loop`]).
    fn enqueue(&self, post: Outgoing) -> Handover {
        let mut serial = lock(&self.serial);
        let pending = Pending {
            post,
            serial: *serial,
        };
        *serial += 1;
        // The posting task takes posts off the channel while it waits for Redis: the bound is
        // on every post not yet stored.
        let full = self.counters.queued.fetch_add(1, Ordering::Relaxed) >= QUEUE as u64;
        if full || self.queue.try_send(pending).is_err() {
            self.counters.queued.fetch_sub(1, Ordering::Relaxed);
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("queue to redis full: post refused");
            return Handover::Refused;
        }
        Handover::Queued
    }
}

impl Relay for Cluster {
    fn publish(&self, message: ChatEvent, origin: Origin) -> Handover {
        if message.to.is_some() {
            self.enqueue(Outgoing::Private(message, origin))
        } else {
            self.enqueue(Outgoing::Chat(message, origin))
        }
    }

    fn announce(&self, announcement: Announcement) -> Handover {
        self.enqueue(Outgoing::Notice(announcement))
    }

    fn others(&self, room: &str) -> usize {
        lock(&self.census).get(room).copied().unwrap_or(0)
    }
}
