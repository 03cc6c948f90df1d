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

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamId, StreamRangeReply, StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, Script};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::hub::relay::{Announcement, Delivery, Handover, NoticeEntry, Origin, Relay};
use crate::hub::MemberId;
use crate::protocol::{ChatEvent, Notice};
use crate::store::RedisStore;
use crate::sync::lock;

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

/// Prepended to every script that appends to the log: the id for the next entry. Normally
/// `*` (Redis picks the time, after the last entry). When the log is gone (Redis lost its data)
/// a new one starts one millisecond in the future: every entry of the lost log is older than
/// now, and an entry with an id at or below an instance's position would never be read by it.
///
/// Also prepended: posts sent together in one round trip are chained. A post after another
/// carries that one's dedupe key as one key more than its script takes; if that post was not
/// stored, neither is this one (error `WSCHATAFTER`), so the posts that failed are always the
/// tail of the round trip, and retrying them keeps the order.
const LOG_ID: &str = r"
redis.replicate_commands()
local function log_id(log)
  if redis.call('EXISTS', log) == 1 then return '*' end
  local now = redis.call('TIME')
  return (tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + 1) .. '-0'
end
local function after_stored(keys)
  return #KEYS <= keys or redis.call('EXISTS', KEYS[keys + 1]) == 1
end
local not_after = {err = 'WSCHATAFTER the post before this one was not stored'}
";

/// Increments the room's counter and appends the message to the room's stream and to the log,
/// all at once; returns the id. A retried post (same dedupe key) returns the id it already got.
/// ARGV[12] is the room's latest id as the posting instance knows it: if Redis restarted
/// without its data, the counter resumes from there, so ids never go backwards.
const POST: &str = r"
local done = redis.call('GET', KEYS[4])
if done then return tonumber(done) end
if not after_stored(4) then return not_after end
local known = tonumber(ARGV[12])
if tonumber(redis.call('GET', KEYS[1]) or '0') < known then
  redis.call('SET', KEYS[1], known)
end
local id = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[10], id .. '-0',
  'username', ARGV[2], 'message', ARGV[3], 'timestamp', ARGV[4], 'action', ARGV[5])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[11], log_id(KEYS[3]),
  'room', ARGV[1], 'id', id, 'username', ARGV[2], 'message', ARGV[3], 'timestamp', ARGV[4],
  'action', ARGV[5], 'instance', ARGV[6], 'member', ARGV[7], 'ref', ARGV[8], 'local', ARGV[9],
  'serial', ARGV[13])
redis.call('SET', KEYS[4], id, 'EX', 600)
return id
";

/// Appends a private message to the log, once (KEYS[2] remembers a post already made), with
/// the instance that holds the target's name (KEYS[3]) now: only that one delivers it.
const PRIVATE: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if not after_stored(3) then return not_after end
local holder = redis.call('GET', KEYS[3])
holder = holder and string.match(holder, '^%S+') or ''
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], log_id(KEYS[1]), 'kind', 'private',
  'room', ARGV[2], 'username', ARGV[3], 'message', ARGV[4], 'timestamp', ARGV[5],
  'action', ARGV[6], 'to', ARGV[7], 'instance', ARGV[8], 'member', ARGV[9], 'ref', ARGV[10],
  'serial', ARGV[11], 'holder', holder)
redis.call('SET', KEYS[2], 1, 'EX', 600)
return 1
";

/// Records the posting instance's count of a room's members, then appends a notice carrying
/// the count of every live instance (dead ones are dropped from the room's count), once.
/// An instance is live while its heartbeat key exists; the posting one always is.
const NOTICE: &str = r"
if redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
if not after_stored(4) then return not_after end
if tonumber(ARGV[9]) > 0 then
  redis.call('HSET', KEYS[1], ARGV[7], ARGV[9])
else
  redis.call('HDEL', KEYS[1], ARGV[7])
end
local counts = redis.call('HGETALL', KEYS[1])
local parts = {}
local total = 0
for i = 1, #counts, 2 do
  if counts[i] == ARGV[7] or redis.call('EXISTS', 'wschat:instance:' .. counts[i]) == 1 then
    parts[#parts + 1] = counts[i] .. '=' .. counts[i + 1]
    total = total + tonumber(counts[i + 1])
  else
    redis.call('HDEL', KEYS[1], counts[i])
  end
end
if total > 0 then
  redis.call('SADD', KEYS[2], ARGV[2])
else
  redis.call('SREM', KEYS[2], ARGV[2])
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[1], log_id(KEYS[3]), 'kind', 'notice',
  'room', ARGV[2], 'event', ARGV[3], 'name', ARGV[4], 'message', ARGV[5], 'timestamp', ARGV[6],
  'instance', ARGV[7], 'member', ARGV[8], 'local', ARGV[10], 'counts', table.concat(parts, ' '),
  'serial', ARGV[11])
redis.call('SET', KEYS[4], 1, 'EX', 600)
return 1
";

/// Announces that the members ARGV[5..] of a room left, if their instance ARGV[3] died (its
/// heartbeat expired) and they are still listed as its members: removes them from the room's
/// presence and the instance from its counts, and appends one leave notice each (carrying the
/// live instances' counts), all at once, so that of the live instances that notice the death,
/// only the first announces it.
const REAP: &str = r"
if redis.call('EXISTS', 'wschat:instance:' .. ARGV[3]) == 1 then return 0 end
local gone = {}
for i = 5, #ARGV do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[3] then
    redis.call('HDEL', KEYS[1], ARGV[i])
    gone[#gone + 1] = ARGV[i]
  end
end
if #gone == 0 then return 0 end
redis.call('HDEL', KEYS[2], ARGV[3])
local counts = redis.call('HGETALL', KEYS[2])
local parts = {}
local total = 0
for i = 1, #counts, 2 do
  if redis.call('EXISTS', 'wschat:instance:' .. counts[i]) == 1 then
    parts[#parts + 1] = counts[i] .. '=' .. counts[i + 1]
    total = total + tonumber(counts[i + 1])
  else
    redis.call('HDEL', KEYS[2], counts[i])
  end
end
if total == 0 then redis.call('SREM', KEYS[3], ARGV[2]) end
redis.call('SET', 'wschat:reaped:' .. ARGV[3], 1, 'EX', 3600)
for _, name in ipairs(gone) do
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[1], log_id(KEYS[4]), 'kind', 'notice',
    'room', ARGV[2], 'event', 'leave', 'name', name, 'message', name .. ' left the chat',
    'timestamp', ARGV[4], 'instance', ARGV[3], 'member', 0, 'local', '0',
    'counts', table.concat(parts, ' '))
end
return #gone
";

/// Takes a name for this instance, or extends its lease if this instance holds it already.
/// The value is `{instance} {ms}`: the instance, and when it gave the name to its member.
///
/// A new claim (ARGV[4] `0`) never takes a name another instance holds. A renewal (ARGV[4]
/// `1`) of a name this instance gave while it could not reach Redis may find another instance
/// holding it, given meanwhile: the member who had it first keeps it (ties: the holder), so the
/// two instances agree whichever renews first, and the other one tells its member.
const CLAIM: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder then
  local instance, granted = string.match(holder, '^(%S+) (%d+)$')
  if instance == nil then instance, granted = holder, '0' end
  if instance ~= ARGV[1] and (ARGV[4] ~= '1' or tonumber(granted) <= tonumber(ARGV[3])) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[3], 'EX', ARGV[2])
return 1
";

/// Deletes a name if this instance holds it.
const RELEASE: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder and string.match(holder, '^%S+') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Deletes a member's presence entry if this instance wrote it (after two instances gave one
/// name to two members, the other one's entry stays).
const FORGET: &str = r"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
";

/// The instance in a name key's value (`{instance} {ms}`).
fn holder_instance(value: &str) -> &str {
    value.split(' ').next().unwrap_or_default()
}

/// Now, in milliseconds since 1970 (when a name was given: the earlier holder keeps it).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// How to reach Redis and how much it keeps.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub url: String,
    /// Messages kept per room in the room's stream (`--keep`).
    pub keep: usize,
    /// Entries kept in the shared log (how far behind an instance may fall and still catch up).
    pub log_max: usize,
}

fn room_seq(room: &str) -> String {
    format!("wschat:room:{room}:seq")
}

fn room_stream(room: &str) -> String {
    format!("wschat:room:{room}")
}

/// The Redis key of a name, by the name's key ([`crate::protocol::name_key`]): names that
/// look alike are one name.
fn name_key(key: &str) -> String {
    format!("wschat:name:{key}")
}

fn presence_key(room: &str) -> String {
    format!("wschat:presence:{room}")
}

fn instance_key(id: &str) -> String {
    format!("wschat:instance:{id}")
}

fn count_key(room: &str) -> String {
    format!("wschat:count:{room}")
}

/// The set of rooms with members on some instance.
const ROOMS_KEY: &str = "wschat:rooms";

/// What goes to the log.
enum Outgoing {
    Chat(ChatEvent, Origin),
    Private(ChatEvent, Origin),
    Notice(Announcement),
}

/// A post waiting for Redis.
struct Pending {
    post: Outgoing,
    /// Unique per post: makes a retried post idempotent.
    serial: u64,
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

/// A name given to a member of this instance.
struct HeldName {
    /// Members here holding it (two for a moment, while one renames itself to another form).
    count: usize,
    /// When it was given (ms since 1970): after an outage, the earlier holder keeps it.
    granted: u64,
}

/// What this instance holds in Redis and must keep alive: names and presence entries.
#[derive(Default)]
struct Held {
    /// By the name's key ([`crate::protocol::name_key`]).
    names: HashMap<String, HeldName>,
    presence: HashMap<(String, String), usize>,
    /// Presence entries whose removal failed (Redis was away): retried by the heartbeat.
    gone: HashSet<(String, String)>,
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
    /// Where the tail delivers (the hub, once the server runs); until set, into the store.
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

fn manager(client: &redis::Client, response: Duration) -> anyhow::Result<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(1))
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(response));
    Ok(ConnectionManager::new_lazy_with_config(
        client.clone(),
        config,
    )?)
}

/// Runs one Redis call with a bound on its time.
async fn bounded<T>(
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(COMMAND_TIMEOUT, call).await {
        Ok(result) => Ok(result?),
        Err(_) => anyhow::bail!("no answer within {COMMAND_TIMEOUT:?}"),
    }
}

/// A Redis call bounded by [`COMMAND_TIMEOUT`]; `Err(None)` when it timed out.
async fn timed<T>(
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, Option<redis::RedisError>> {
    match tokio::time::timeout(COMMAND_TIMEOUT, call).await {
        Ok(result) => result.map_err(Some),
        Err(_) => Err(None),
    }
}

/// How a round trip of posts went wrong.
#[derive(Default)]
struct Failure {
    /// Posts stored, from the first: the rest were not.
    stored: usize,
    /// What went wrong; `None` if nothing did.
    error: Option<anyhow::Error>,
    /// Redis answered, and refused the first post not stored (an error in its script, which
    /// trying again is unlikely to change), rather than being away or busy.
    refused: bool,
    /// Redis answered (whatever it said).
    reachable: bool,
}

impl Failure {
    fn unreachable(error: Option<redis::RedisError>) -> Failure {
        let error = match error {
            Some(e) => anyhow::Error::from(e),
            None => anyhow::anyhow!("no answer within {COMMAND_TIMEOUT:?}"),
        };
        Failure {
            error: Some(error),
            ..Failure::default()
        }
    }

    /// Reads a pipeline's error: the replies that are errors say which posts were not stored.
    fn from_redis(error: redis::RedisError) -> Failure {
        let first = error
            .clone()
            .into_server_errors()
            .and_then(|errors| errors.iter().min_by_key(|(i, _)| *i).cloned());
        let Some((stored, first)) = first else {
            return Failure::unreachable(Some(error)); // the connection, not a reply
        };
        Failure {
            stored,
            refused: is_refusal(&first),
            reachable: true,
            error: Some(error.into()),
        }
    }
}

/// Whether a script's error is the script's own (a key of the wrong type, bad data), as
/// opposed to Redis not taking writes right now. Before Redis 7 every error inside a script
/// comes as `ERR Error running script ...`, with the real one in its text.
fn is_refusal(error: &redis::ServerError) -> bool {
    const TRANSIENT: [&str; 7] = [
        "OOM",
        "READONLY",
        "MISCONF",
        "NOREPLICAS",
        "BUSY",
        "LOADING",
        "NOPERM",
    ];
    match error.code() {
        "WRONGTYPE" => true,
        "ERR" => {
            let detail = error.details().unwrap_or_default();
            !TRANSIENT.iter().any(|code| detail.contains(code))
        }
        _ => false,
    }
}

/// Reads one room-stream entry (`{id}-0` with username, message, timestamp, action).
fn room_entry(room: &str, entry: &StreamId) -> Option<ChatEvent> {
    let id = entry.id.split('-').next()?.parse().ok()?;
    Some(ChatEvent {
        id,
        room: room.to_owned(),
        username: entry.get("username")?,
        message: entry.get::<String>("message")?.into(),
        timestamp: entry.get("timestamp")?,
        to: None,
        private: false,
        action: entry.get::<String>("action").is_some_and(|a| a == "1"),
        history: false,
        replayed: Default::default(),
    })
}

/// Reads one log entry (a room message, a private message or a notice), for instance `me`.
/// `here` says whether a post of `me` (by its serial) was delivered to its members already.
fn log_entry(
    me: &str,
    entry: &StreamId,
    here: impl FnOnce(Option<u64>) -> bool,
) -> Option<Delivery> {
    let room: String = entry.get("room")?;
    let instance: String = entry.get("instance").unwrap_or_default();
    let mine = instance == me;
    let here = || {
        let flagged = entry.get::<String>("local").is_some_and(|l| l == "1");
        // Only asked of this instance's own posts (the serials are per instance).
        mine && (here(entry.get("serial")) || flagged)
    };
    let member = || entry.get::<u64>("member").map(MemberId::from_raw);
    let kind: Option<String> = entry.get("kind");
    if kind.as_deref() == Some("notice") {
        let notice = match entry.get::<String>("event")?.as_str() {
            "join" => Notice::Join,
            "leave" => Notice::Leave,
            "rename" => Notice::Rename,
            _ => return None,
        };
        let counts: String = entry.get("counts").unwrap_or_default();
        let mut local = 0;
        let mut others = 0;
        for part in counts.split_whitespace() {
            let (id, n) = part.split_once('=')?;
            let n: usize = n.parse().ok()?;
            if id == me {
                local = n;
            } else {
                others += n;
            }
        }
        let origin = Origin {
            member: member()?,
            reference: None,
            delivered_locally: here(),
        };
        let announcement = Announcement {
            room,
            notice,
            name: entry.get("name")?,
            message: entry.get("message")?,
            timestamp: entry.get("timestamp")?,
            local,
            origin,
        };
        return Some(Delivery::Notice(NoticeEntry {
            announcement,
            others,
            mine: mine.then_some(origin),
        }));
    }
    let to: Option<String> = entry.get("to");
    let private = kind.as_deref() == Some("private");
    let message = ChatEvent {
        id: if private { 0 } else { entry.get("id")? },
        room,
        username: entry.get("username")?,
        message: entry.get::<String>("message")?.into(),
        timestamp: entry.get("timestamp")?,
        to: if private { Some(to?) } else { None },
        private,
        action: entry.get::<String>("action").is_some_and(|a| a == "1"),
        history: false,
        replayed: Default::default(),
    };
    let origin = if mine {
        Some(Origin {
            member: member()?,
            reference: entry.get::<String>("ref").and_then(|r| r.parse().ok()),
            delivered_locally: here(),
        })
    } else {
        None
    };
    Some(if private {
        // Only the instance that held the target's name when the log took the message (any
        // that has the name, for an entry that does not say).
        let holder: String = entry.get("holder").unwrap_or_default();
        Delivery::Private(message, origin, holder.is_empty() || holder == me)
    } else {
        Delivery::Chat(message, origin)
    })
}

fn flag(on: bool) -> &'static str {
    if on {
        "1"
    } else {
        "0"
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

    /// Starts the tasks that post, tail the log and keep claims alive, until `stop`.
    pub fn start(self: &Arc<Self>, stop: CancellationToken) {
        let Some(queue) = lock(&self.queue_rx).take() else {
            return;
        };
        tokio::spawn(self.clone().publish_loop(queue, stop.clone()));
        tokio::spawn(self.clone().tail_loop(stop.clone()));
        tokio::spawn(self.clone().heartbeat_loop(stop));
    }

    /// Sends what the tail reads to `deliver` (the hub's [`crate::hub::Hub::deliver`]).
    pub fn set_sink(&self, deliver: Deliver) {
        if self.sink.set(deliver).is_err() {
            tracing::warn!("the log already has a destination");
        }
    }

    fn deliver(&self, delivery: Delivery) {
        use crate::store::Store;
        self.counters.delivered.fetch_add(1, Ordering::Relaxed);
        match (self.sink.get(), delivery) {
            (Some(deliver), delivery) => deliver(delivery),
            (None, Delivery::Chat(message, _)) => self.store.append(message, None),
            (None, _) => {}
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

    /// Posts what is queued, in order, whatever has queued up (at most [`MAX_PIPELINE`]) in
    /// one round trip, retrying what failed until it is stored (or refused for good).
    ///
    /// While Redis is down, every post waiting for it is delivered to this instance's members
    /// at once: first those held when it was declared down (the round trip in flight, then the
    /// rest), in the order they were made, then each new one as it comes. So a post never
    /// overtakes an earlier one of the same instance, however long Redis took to be declared
    /// down (a stalled Redis only is, after [`COMMAND_TIMEOUT`]). Each is still posted, in the
    /// same order, once Redis is back; the log's copy is then only acknowledged here.
    async fn publish_loop(
        self: Arc<Self>,
        mut queue: mpsc::Receiver<Pending>,
        stop: CancellationToken,
    ) {
        let mut ready = self.ready.subscribe();
        let mut up = self.up_changed.subscribe();
        // The round trip being posted (or to retry), then the posts behind it; and how many of
        // each were delivered here already.
        let mut flight: Vec<Pending> = Vec::new();
        let mut queued: VecDeque<Pending> = VecDeque::new();
        let (mut flight_here, mut queued_here) = (0, 0);
        let mut retry: Option<tokio::time::Instant> = None;
        let mut backoff = BACKOFF_MIN;
        let mut refusals = 0;
        let mut open = true;
        loop {
            self.deliver_held_here(&flight, &mut flight_here, &queued, &mut queued_here);
            let due = retry.is_none_or(|at| at <= tokio::time::Instant::now());
            if flight.is_empty() && due && *ready.borrow() {
                while queued.len() < MAX_PIPELINE {
                    match queue.try_recv() {
                        Ok(pending) => queued.push_back(pending),
                        Err(_) => break,
                    }
                }
                let n = queued.len().min(MAX_PIPELINE);
                flight.extend(queued.drain(..n));
                flight_here = queued_here.min(n);
                queued_here -= flight_here;
            }
            if !flight.is_empty() && due {
                let result = {
                    let post = self.publish_batch(&flight);
                    tokio::pin!(post);
                    // New posts are taken meanwhile: delivered here at once if Redis is down.
                    loop {
                        tokio::select! {
                            result = &mut post => break result,
                            next = queue.recv(), if open => match next {
                                Some(pending) => queued.push_back(pending),
                                None => open = false,
                            },
                            Ok(()) = up.changed() => {}
                            () = stop.cancelled() => return,
                        }
                        self.deliver_held_here(
                            &flight,
                            &mut flight_here,
                            &queued,
                            &mut queued_here,
                        );
                    }
                };
                let failure = match result {
                    Ok(()) => Failure {
                        stored: flight.len(),
                        ..Failure::default()
                    },
                    Err(failure) => failure,
                };
                self.posts_left(failure.stored, &self.counters.published);
                flight.drain(..failure.stored);
                flight_here = flight_here.saturating_sub(failure.stored);
                if failure.stored > 0 {
                    (backoff, refusals) = (BACKOFF_MIN, 0);
                }
                let Some(error) = failure.error else {
                    self.set_up(true, None);
                    retry = None;
                    continue;
                };
                if failure.refused {
                    // Redis is there, and refuses this post.
                    refusals += 1;
                    if refusals >= MAX_REFUSALS {
                        tracing::error!(
                            "redis refuses a post {refusals} times: dropped: {error:#}"
                        );
                        self.posts_left(1, &self.counters.refused);
                        let dropped = flight.remove(0);
                        flight_here = flight_here.saturating_sub(1);
                        lock(&self.local).delivered.remove(&dropped.serial);
                        if let Outgoing::Chat(_, origin) | Outgoing::Private(_, origin) =
                            &dropped.post
                        {
                            self.deliver(Delivery::Refused(*origin));
                        }
                        (refusals, backoff, retry) = (0, BACKOFF_MIN, None);
                        continue;
                    }
                } else if !failure.reachable {
                    // Only a Redis that does not answer is down (local delivery goes on without
                    // it); one that answers but cannot write now (busy, full, loading, a replica)
                    // holds the posts back until it can.
                    self.set_up(false, Some(&error));
                }
                tracing::debug!("posts not stored yet: {error:#}");
                retry = Some(tokio::time::Instant::now() + backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
            if !open && flight.is_empty() && queued.is_empty() {
                return;
            }
            // Nothing to post now: wait for a post, the time to retry, the log's end being
            // known, or Redis being declared down.
            let wake = retry.unwrap_or_else(tokio::time::Instant::now);
            tokio::select! {
                next = queue.recv(), if open => match next {
                    Some(pending) => queued.push_back(pending),
                    None => open = false,
                },
                () = tokio::time::sleep_until(wake), if retry.is_some() => {}
                Ok(()) = ready.changed() => {}
                Ok(()) = up.changed() => {}
                () = stop.cancelled() => return,
            }
        }
    }

    /// While Redis is down: delivers to this instance's members the posts waiting for it that
    /// they do not have yet, in order (the round trip in flight first).
    fn deliver_held_here(
        &self,
        flight: &[Pending],
        flight_here: &mut usize,
        queued: &VecDeque<Pending>,
        queued_here: &mut usize,
    ) {
        if self.is_up() {
            return;
        }
        for pending in flight
            .iter()
            .skip(*flight_here)
            .chain(queued.range(*queued_here..))
        {
            self.deliver_here(pending);
        }
        (*flight_here, *queued_here) = (flight.len(), queued.len());
    }

    /// Delivers one post of this instance to its own members, without waiting for the log (a
    /// room message without an id). A private message is for a member of another instance,
    /// which only the log reaches.
    fn deliver_here(&self, pending: &Pending) {
        let delivery = match &pending.post {
            Outgoing::Chat(message, origin) => Delivery::Local(message.clone(), *origin),
            Outgoing::Notice(announcement) => Delivery::Notice(NoticeEntry {
                others: self.others(&announcement.room),
                mine: Some(announcement.origin),
                announcement: announcement.clone(),
            }),
            Outgoing::Private(..) => return,
        };
        let mut local = lock(&self.local);
        if pending.serial <= local.logged {
            return; // the log had it, and the tail delivered it
        }
        local.delivered.insert(pending.serial);
        // Still holding `local`: the tail cannot deliver a later post of this instance first.
        if let Some(deliver) = self.sink.get() {
            deliver(delivery);
        }
    }

    /// Counts `n` posts as gone from the queue, into `outcome`.
    fn posts_left(&self, n: usize, outcome: &AtomicU64) {
        self.counters.queued.fetch_sub(n as u64, Ordering::Relaxed);
        outcome.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Posts `batch` in one pipeline, chained (see [`LOG_ID`]): on failure, the posts stored
    /// are a prefix of the batch. Retrying is safe: each post carries a dedupe key, so one
    /// stored before a failure (even one whose answer was lost) is not stored twice.
    async fn publish_batch(&self, batch: &[Pending]) -> Result<(), Failure> {
        let keys: Vec<String> = batch.iter().map(|p| self.dedupe_key(p)).collect();
        let invocations: Vec<redis::ScriptInvocation<'_>> = batch
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut invocation = self.invocation(p, keys[i].clone());
                if let Some(before) = i.checked_sub(1) {
                    invocation.key(&keys[before]);
                }
                invocation
            })
            .collect();
        let mut pipe = redis::pipe();
        for invocation in &invocations {
            pipe.invoke_script(invocation).ignore();
        }
        let mut connection = self.commands.clone();
        let mut result = timed(pipe.query_async::<()>(&mut connection)).await;
        if matches!(&result, Err(Some(e)) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
        {
            // A pipeline does not load scripts by itself: after Redis restarted, load them
            // and try again at once.
            for script in [&self.post, &self.private, &self.notice] {
                if let Err(e) = timed(script.load_async::<_>(&mut connection)).await {
                    return Err(Failure::unreachable(e));
                }
            }
            result = timed(pipe.query_async::<()>(&mut connection)).await;
        }
        match result {
            Ok(()) => Ok(()),
            Err(Some(e)) => Err(Failure::from_redis(e)),
            Err(None) => Err(Failure::unreachable(None)),
        }
    }

    fn dedupe_key(&self, pending: &Pending) -> String {
        format!("wschat:post:{}:{}", self.id, pending.serial)
    }

    /// The script call for one post; its last argument is the post's serial (the log entry
    /// carries it, so that this instance knows it again when it comes back).
    fn invocation(&self, pending: &Pending, dedupe: String) -> redis::ScriptInvocation<'_> {
        let here = lock(&self.local).delivered.contains(&pending.serial);
        let mut invocation = match &pending.post {
            Outgoing::Chat(m, o) => {
                let o = Origin {
                    delivered_locally: here,
                    ..*o
                };
                self.post_chat(m, &o, dedupe)
            }
            Outgoing::Private(m, o) => self.post_private(m, o, dedupe),
            Outgoing::Notice(a) => {
                let mut a = a.clone();
                a.origin.delivered_locally = here;
                self.post_notice(&a, dedupe)
            }
        };
        invocation.arg(pending.serial);
        invocation
    }

    fn post_chat(&self, m: &ChatEvent, o: &Origin, dedupe: String) -> redis::ScriptInvocation<'_> {
        use crate::store::Store;
        let mut invocation = self.post.prepare_invoke();
        invocation
            .key(room_seq(&m.room))
            .key(room_stream(&m.room))
            .key(LOG_KEY)
            .key(dedupe)
            .arg(&m.room)
            .arg(&m.username)
            .arg(&*m.message)
            .arg(&m.timestamp)
            .arg(flag(m.action))
            .arg(&self.id)
            .arg(o.member.raw())
            .arg(o.reference.map(|r| r.to_string()).unwrap_or_default())
            .arg(flag(o.delivered_locally))
            .arg(self.config.keep)
            .arg(self.config.log_max)
            .arg(self.store.last_id(&m.room));
        invocation
    }

    fn post_private(
        &self,
        m: &ChatEvent,
        o: &Origin,
        dedupe: String,
    ) -> redis::ScriptInvocation<'_> {
        let mut invocation = self.private.prepare_invoke();
        let to = m.to.as_deref().unwrap_or_default();
        invocation
            .key(LOG_KEY)
            .key(dedupe)
            .key(name_key(&crate::protocol::name_key(to)))
            .arg(self.config.log_max)
            .arg(&m.room)
            .arg(&m.username)
            .arg(&*m.message)
            .arg(&m.timestamp)
            .arg(flag(m.action))
            .arg(m.to.as_deref().unwrap_or_default())
            .arg(&self.id)
            .arg(o.member.raw())
            .arg(o.reference.map(|r| r.to_string()).unwrap_or_default());
        invocation
    }

    fn post_notice(&self, a: &Announcement, dedupe: String) -> redis::ScriptInvocation<'_> {
        let event = match a.notice {
            Notice::Join => "join",
            Notice::Leave => "leave",
            _ => "rename",
        };
        let mut invocation = self.notice.prepare_invoke();
        invocation
            .key(count_key(&a.room))
            .key(ROOMS_KEY)
            .key(LOG_KEY)
            .key(dedupe)
            .arg(self.config.log_max)
            .arg(&a.room)
            .arg(event)
            .arg(&a.name)
            .arg(&a.message)
            .arg(&a.timestamp)
            .arg(&self.id)
            .arg(a.origin.member.raw())
            .arg(a.local)
            .arg(flag(a.origin.delivered_locally));
        invocation
    }

    async fn tail_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut last: Option<String> = None;
        let mut backoff = BACKOFF_MIN;
        let mut connection = self.tail.clone();
        loop {
            let step = async {
                let Some(from) = last.clone() else {
                    // Start at the end of the log: what was said before is history, loaded
                    // per room when a member joins one.
                    let _: () =
                        bounded(connection.set_ex(instance_key(&self.id), "1", LEASE.as_secs()))
                            .await?;
                    let newest: StreamRangeReply =
                        bounded(connection.xrevrange_count(LOG_KEY, "+", "-", 1)).await?;
                    let end = newest
                        .ids
                        .first()
                        .map_or("0-0".to_owned(), |e| e.id.clone());
                    last = Some(end);
                    self.set_up(true, None);
                    self.ready.send_replace(true);
                    return anyhow::Ok(());
                };
                let options = StreamReadOptions::default()
                    .block(BLOCK.as_millis() as usize)
                    .count(READ_COUNT);
                let reply: Option<StreamReadReply> = connection
                    .xread_options(&[LOG_KEY], &[from.as_str()], &options)
                    .await?;
                for key in reply.map(|r| r.keys).unwrap_or_default() {
                    for entry in &key.ids {
                        // Held while the entry is delivered (see `Cluster::local`).
                        let mut local = lock(&self.local);
                        // Asked of this instance's own posts: was it delivered here already?
                        let here = |serial: Option<u64>| {
                            let Some(serial) = serial else { return false };
                            local.logged = local.logged.max(serial);
                            local.delivered.remove(&serial)
                        };
                        match log_entry(&self.id, entry, here) {
                            Some(delivery) => self.deliver(delivery),
                            None => {
                                tracing::warn!(entry = entry.id, "unreadable log entry skipped")
                            }
                        }
                        drop(local);
                        last = Some(entry.id.clone());
                    }
                }
                Ok(())
            };
            let result = tokio::select! {
                result = step => result,
                () = stop.cancelled() => return,
            };
            match result {
                Ok(()) => {
                    self.set_up(true, None);
                    backoff = BACKOFF_MIN;
                }
                Err(e) => {
                    self.set_up(false, Some(&e));
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// Every [`HEARTBEAT`]: renews this instance's heartbeat, its names and presence entries
    /// (re-creating them if Redis lost them).
    /// Also at once when Redis is back, so that a name given to two members meanwhile is
    /// settled then.
    async fn heartbeat_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut every = tokio::time::interval(HEARTBEAT);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut up = self.up_changed.subscribe();
        loop {
            tokio::select! {
                _ = every.tick() => {}
                Ok(()) = up.changed() => {
                    if !*up.borrow_and_update() {
                        continue;
                    }
                }
                () = stop.cancelled() => return,
            }
            if let Err(e) = self.heartbeat().await {
                self.set_up(false, Some(&e));
            }
        }
    }

    async fn heartbeat(&self) -> anyhow::Result<()> {
        let (names, presence, gone) = {
            let mut held = lock(&self.held);
            let names: Vec<(String, u64)> = held
                .names
                .iter()
                .map(|(key, name)| (key.clone(), name.granted))
                .collect();
            let presence: Vec<(String, String)> = held.presence.keys().cloned().collect();
            let gone: Vec<(String, String)> = std::mem::take(&mut held.gone)
                .into_iter()
                .filter(|entry| !held.presence.contains_key(entry))
                .collect();
            (names, presence, gone)
        };
        let mut connection = self.commands.clone();
        let (previous,): (Option<String>,) = bounded(
            redis::pipe()
                .atomic()
                .getset(instance_key(&self.id), "1")
                .expire(instance_key(&self.id), LEASE.as_secs() as i64)
                .ignore()
                .query_async(&mut connection),
        )
        .await?;
        let mut rooms: HashMap<String, usize> = HashMap::new();
        for (room, _) in &presence {
            *rooms.entry(room.clone()).or_default() += 1;
        }
        if previous.is_none() {
            // Redis lost its data (or this heartbeat had expired): count this instance again.
            let mut pipe = redis::pipe();
            for (room, n) in &rooms {
                pipe.hset(count_key(room), &self.id, n).ignore();
                pipe.sadd(ROOMS_KEY, room).ignore();
            }
            let reaped_key = format!("wschat:reaped:{}", self.id);
            pipe.get(&reaped_key).del(&reaped_key).ignore();
            let (reaped,): (Option<String>,) = bounded(pipe.query_async(&mut connection)).await?;
            if reaped.is_some() {
                self.back(&presence, &rooms);
            }
        }
        let mut lost = HashSet::new();
        for (key, granted) in names {
            // Still held here: a name given back meanwhile must not be renewed (the renewal
            // of an older grant could take it from a member who took it since).
            if !lock(&self.held).names.contains_key(&key) {
                continue;
            }
            if !self.claim_raw(&key, granted, true).await? {
                // Given to a member here while Redis was away, and to one of another instance
                // who had it first: this one is told, and closed.
                tracing::warn!(
                    name = key,
                    "this name was given to two members while redis was unreachable; the one \
                     of another instance had it first and keeps it: closing the one here"
                );
                self.deliver(Delivery::NameLost { key: key.clone() });
                lost.insert(key);
            }
        }
        let presence: Vec<(String, String)> = presence
            .into_iter()
            .filter(|(_, name)| !lost.contains(&crate::protocol::name_key(name)))
            .collect();
        if !presence.is_empty() {
            let mut pipe = redis::pipe();
            for (room, name) in &presence {
                pipe.hset(presence_key(room), name, &self.id).ignore();
            }
            if let Err(e) = bounded(pipe.query_async::<()>(&mut connection)).await {
                lock(&self.held).gone.extend(gone);
                return Err(e);
            }
        }
        for (i, (room, name)) in gone.iter().enumerate() {
            if let Err(e) = self.forget(room, name).await {
                lock(&self.held).gone.extend(gone.into_iter().skip(i));
                return Err(e);
            }
        }
        let rooms: Vec<String> = rooms.into_keys().collect();
        if let Err(e) = self.reap(&rooms).await {
            tracing::debug!("members of dead instances not looked for: {e:#}");
        }
        self.recount(rooms).await
    }

    /// This instance was taken for dead (it could not renew its heartbeat for longer than the
    /// lease) and its members were announced as gone: they are announced as joining again.
    fn back(&self, presence: &[(String, String)], rooms: &HashMap<String, usize>) {
        tracing::warn!(
            "this instance was taken for dead while it could not reach redis; its members are \
             announced again"
        );
        for (room, name) in presence {
            let announcement = Announcement {
                room: room.clone(),
                notice: Notice::Join,
                name: name.clone(),
                message: format!("{name} joined the chat"),
                timestamp: crate::protocol::timestamp(),
                local: rooms.get(room).copied().unwrap_or(1),
                // No member of this instance has id 0: nobody here is skipped.
                origin: Origin {
                    member: MemberId::from_raw(0),
                    reference: None,
                    delivered_locally: false,
                },
            };
            self.enqueue(Outgoing::Notice(announcement));
        }
    }

    /// Announces the departure of the members of `rooms` whose instance died without a word
    /// (its heartbeat expired): once, by whichever live instance gets there first. Done every
    /// heartbeat for the rooms this instance has members in, and before a `who`.
    async fn reap(&self, rooms: &[String]) -> anyhow::Result<()> {
        if rooms.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for room in rooms {
            pipe.hgetall(presence_key(room));
        }
        let mut connection = self.commands.clone();
        let presence: Vec<HashMap<String, String>> =
            bounded(pipe.query_async(&mut connection)).await?;
        let instances = presence.iter().flat_map(|p| p.values().cloned()).collect();
        let alive = self.alive(instances).await?;
        for (room, members) in rooms.iter().zip(presence) {
            let mut dead: HashMap<String, Vec<String>> = HashMap::new();
            for (name, instance) in members {
                if !alive.contains(&instance) {
                    dead.entry(instance).or_default().push(name);
                }
            }
            for (instance, names) in dead {
                let mut invocation = self.reap.prepare_invoke();
                invocation
                    .key(presence_key(room))
                    .key(count_key(room))
                    .key(ROOMS_KEY)
                    .key(LOG_KEY)
                    .arg(self.config.log_max)
                    .arg(room)
                    .arg(&instance)
                    .arg(crate::protocol::timestamp());
                for name in &names {
                    invocation.arg(name);
                }
                let gone: i64 = bounded(invocation.invoke_async(&mut connection)).await?;
                if gone > 0 {
                    tracing::info!(
                        room,
                        instance,
                        members = gone,
                        "an instance stopped answering: its members' leave announced"
                    );
                }
            }
        }
        Ok(())
    }

    /// Announces the departure of `room`'s members whose instance died (see [`Cluster::reap`]),
    /// without waiting for the next heartbeat: someone who asks `who` may have noticed.
    pub async fn reap_room(&self, room: &str) {
        if let Err(e) = self.reap(&[room.to_owned()]).await {
            tracing::debug!(room, "members of dead instances not looked for: {e:#}");
        }
    }

    /// Claims the name whose key ([`crate::protocol::name_key`]) is `key`.
    /// Claims the name whose key is `key`, given to its member at `granted` (see [`CLAIM`]);
    /// `renewal` for one this instance holds already.
    async fn claim_raw(&self, key: &str, granted: u64, renewal: bool) -> anyhow::Result<bool> {
        let mut invocation = self.claim.prepare_invoke();
        invocation
            .key(name_key(key))
            .arg(&self.id)
            .arg(LEASE.as_secs())
            .arg(granted)
            .arg(flag(renewal));
        let mut connection = self.commands.clone();
        Ok(bounded(invocation.invoke_async::<i64>(&mut connection)).await? == 1)
    }

    /// Deletes `name`'s presence entry in `room` if this instance wrote it.
    async fn forget(&self, room: &str, name: &str) -> anyhow::Result<()> {
        let mut invocation = self.forget.prepare_invoke();
        invocation.key(presence_key(room)).arg(name).arg(&self.id);
        let mut connection = self.commands.clone();
        bounded(invocation.invoke_async::<i64>(&mut connection)).await?;
        Ok(())
    }

    /// Takes `name` across instances. `Ok(false)`: another instance holds it. When Redis does
    /// not answer, the name is taken locally only (`Ok(true)`, logged), and the heartbeat claims
    /// it once Redis is back.
    pub async fn claim_name(&self, name: &str) -> bool {
        let key = crate::protocol::name_key(name);
        // A name this instance holds already (its member renames itself to another form of
        // it) keeps the time it was first given.
        let granted = lock(&self.held)
            .names
            .get(&key)
            .map_or_else(now_ms, |held| held.granted);
        match self.claim_raw(&key, granted, false).await {
            Ok(true) => {}
            Ok(false) => return false,
            Err(e) => {
                self.set_up(false, Some(&e));
                tracing::warn!(name, "name checked on this instance only: {e:#}");
            }
        }
        lock(&self.held)
            .names
            .entry(key)
            .or_insert(HeldName { count: 0, granted })
            .count += 1;
        true
    }

    /// Gives back a name taken with [`Cluster::claim_name`].
    pub async fn release_name(&self, name: &str) {
        let key = crate::protocol::name_key(name);
        {
            let mut held = lock(&self.held);
            let Some(name) = held.names.get_mut(&key) else {
                return;
            };
            name.count -= 1;
            if name.count > 0 {
                return;
            }
            held.names.remove(&key);
        }
        let mut invocation = self.release.prepare_invoke();
        invocation.key(name_key(&key)).arg(&self.id);
        let mut connection = self.commands.clone();
        if let Err(e) = bounded(invocation.invoke_async::<i64>(&mut connection)).await {
            tracing::debug!(name, "name not released (its claim expires): {e:#}");
        }
    }

    /// Records that `name` is in `room` on this instance (for `who` on every instance).
    pub async fn enter(&self, room: &str, name: &str) {
        *lock(&self.held)
            .presence
            .entry((room.to_owned(), name.to_owned()))
            .or_default() += 1;
        let mut connection = self.commands.clone();
        if let Err(e) =
            bounded(connection.hset::<_, _, _, ()>(presence_key(room), name, &self.id)).await
        {
            tracing::debug!(room, name, "presence not recorded yet: {e:#}");
        }
    }

    /// Undoes [`Cluster::enter`].
    pub async fn exit(&self, room: &str, name: &str) {
        {
            let mut held = lock(&self.held);
            let key = (room.to_owned(), name.to_owned());
            let Some(count) = held.presence.get_mut(&key) else {
                return;
            };
            *count -= 1;
            if *count > 0 {
                return;
            }
            held.presence.remove(&key);
        }
        if let Err(e) = self.forget(room, name).await {
            tracing::debug!(room, name, "presence not removed yet: {e:#}");
            lock(&self.held)
                .gone
                .insert((room.to_owned(), name.to_owned()));
        }
    }

    /// The members of `room` on every live instance, with their instance.
    async fn members(&self, room: &str) -> anyhow::Result<Vec<(String, String)>> {
        let mut connection = self.commands.clone();
        let members: HashMap<String, String> =
            bounded(connection.hgetall(presence_key(room))).await?;
        let alive = self.alive(members.values().cloned().collect()).await?;
        Ok(members
            .into_iter()
            .filter(|(_, instance)| alive.contains(instance))
            .collect())
    }

    /// Which of `instances` have a live heartbeat (this one always has).
    async fn alive(&self, instances: HashSet<String>) -> anyhow::Result<HashSet<String>> {
        let others: Vec<String> = instances.into_iter().filter(|i| *i != self.id).collect();
        let mut alive: HashSet<String> = HashSet::from([self.id.clone()]);
        if others.is_empty() {
            return Ok(alive);
        }
        let keys: Vec<String> = others.iter().map(|i| instance_key(i)).collect();
        let mut connection = self.commands.clone();
        let beats: Vec<Option<String>> = bounded(connection.mget(&keys)).await?;
        alive.extend(
            others
                .into_iter()
                .zip(beats)
                .filter(|(_, beat)| beat.is_some())
                .map(|(i, _)| i),
        );
        Ok(alive)
    }

    /// The visible members of each of `rooms` on the other live instances.
    async fn count_others(&self, rooms: &[String]) -> anyhow::Result<Vec<usize>> {
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for room in rooms {
            pipe.hgetall(count_key(room));
        }
        let mut connection = self.commands.clone();
        let counts: Vec<HashMap<String, usize>> =
            bounded(pipe.query_async(&mut connection)).await?;
        let instances = counts.iter().flat_map(|c| c.keys().cloned()).collect();
        let alive = self.alive(instances).await?;
        Ok(counts
            .into_iter()
            .map(|c| {
                c.into_iter()
                    .filter(|(i, _)| *i != self.id && alive.contains(i))
                    .map(|(_, n)| n)
                    .sum()
            })
            .collect())
    }

    /// Counts the other instances' members of `rooms` again, and hands each count to the hub
    /// (which tells a room whose total changed).
    async fn recount(&self, rooms: Vec<String>) -> anyhow::Result<()> {
        let others = self.count_others(&rooms).await?;
        for (room, others) in rooms.into_iter().zip(others) {
            // A room nobody elsewhere is in counts 0 without an entry: the map stays as small
            // as the rooms shared right now.
            let mut census = lock(&self.census);
            if others == 0 {
                census.remove(&room);
            } else {
                census.insert(room.clone(), others);
            }
            drop(census);
            self.deliver(Delivery::Census { room, others });
        }
        Ok(())
    }

    /// Every room with members on some live instance, with its members on the other instances
    /// (this instance's own are the hub's to count); `None` if Redis did not answer.
    pub async fn rooms(&self) -> Option<HashMap<String, usize>> {
        let listed = async {
            let mut connection = self.commands.clone();
            let rooms: Vec<String> = bounded(connection.smembers(ROOMS_KEY)).await?;
            let others = self.count_others(&rooms).await?;
            anyhow::Ok(rooms.into_iter().zip(others).collect())
        };
        match listed.await {
            Ok(rooms) => Some(rooms),
            Err(e) => {
                self.set_up(false, Some(&e));
                None
            }
        }
    }

    /// Whether a live instance holds `name`; an error if Redis did not answer.
    pub async fn is_held(&self, name: &str) -> anyhow::Result<bool> {
        let mut connection = self.commands.clone();
        let key = crate::protocol::name_key(name);
        let holder: Option<String> = bounded(connection.get(name_key(&key))).await?;
        let Some(holder) = holder.map(|h| holder_instance(&h).to_owned()) else {
            return Ok(false);
        };
        Ok(self
            .alive(HashSet::from([holder.clone()]))
            .await?
            .contains(&holder))
    }

    /// The members of `room` on every live instance, sorted; `None` if Redis did not answer.
    pub async fn who(&self, room: &str) -> Option<Vec<String>> {
        match self.members(room).await {
            Ok(members) => {
                let mut names: Vec<String> = members.into_iter().map(|(name, _)| name).collect();
                names.sort();
                Some(names)
            }
            Err(e) => {
                self.set_up(false, Some(&e));
                None
            }
        }
    }

    /// Counts `room`'s members on the other instances again (before a member joins it here,
    /// so that its welcome counts everyone; and after a `who`, which may have found an instance
    /// gone).
    pub async fn census(&self, room: &str) {
        if let Err(e) = self.recount(vec![room.to_owned()]).await {
            tracing::debug!(room, "members of other instances not counted: {e:#}");
        }
    }

    /// Makes `room`'s history ready in the store before a member joins it: loads the room the
    /// first time it is used here, and for a member resuming from `since`, what it missed that
    /// is older than the window (at most `limit` messages). Redis errors are logged; the member
    /// then gets what this instance has (and a gap event for the rest).
    pub async fn prepare_room(&self, room: &str, since: Option<u64>, limit: usize) {
        if let Err(e) = self.load_room(room, since, limit).await {
            self.set_up(false, Some(&e));
            tracing::warn!(room, "history not loaded from redis: {e:#}");
        }
    }

    async fn load_room(&self, room: &str, since: Option<u64>, limit: usize) -> anyhow::Result<()> {
        let mut connection = self.commands.clone();
        if !self.store.is_loaded(room) {
            let window = self.config.keep.min(WINDOW_MAX);
            let (last, newest): (Option<u64>, StreamRangeReply) = bounded(
                redis::pipe()
                    .atomic()
                    .get(room_seq(room))
                    .xrevrange_count(room_stream(room), "+", "-", window)
                    .query_async(&mut connection),
            )
            .await?;
            let mut messages: Vec<ChatEvent> = newest
                .ids
                .iter()
                .filter_map(|e| room_entry(room, e))
                .collect();
            messages.reverse();
            self.store.load(room, last.unwrap_or(0), messages);
        }
        let Some(since) = since else {
            return Ok(());
        };
        let Some(oldest) = self.store.oldest(room).filter(|&o| o > since + 1) else {
            return Ok(());
        };
        let older: StreamRangeReply = bounded(connection.xrange_count(
            room_stream(room),
            since + 1,
            oldest - 1,
            limit.max(1),
        ))
        .await?;
        let messages = older
            .ids
            .iter()
            .filter_map(|e| room_entry(room, e))
            .collect();
        self.store.add_older(room, messages);
        Ok(())
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
        let lines: [(&str, &str, &str, u64); 6] = [
            (
                "redis_up",
                "gauge",
                "1 while Redis answers",
                u64::from(self.is_up()),
            ),
            (
                "redis_outages_total",
                "counter",
                "Times Redis stopped answering",
                get(&self.counters.outages),
            ),
            (
                "relay_published_total",
                "counter",
                "Room messages this instance appended to the shared log",
                get(&self.counters.published),
            ),
            (
                "relay_queued",
                "gauge",
                "Room messages waiting to be appended to the shared log",
                get(&self.counters.queued),
            ),
            (
                "relay_refused_total",
                "counter",
                "Posts not sent to Redis: the queue to it was full, or Redis refused them 10 times",
                get(&self.counters.refused),
            ),
            (
                "relay_delivered_total",
                "counter",
                "Log entries this instance delivered",
                get(&self.counters.delivered),
            ),
        ];
        for (name, kind, help, value) in lines {
            let _ = writeln!(
                out,
                "# HELP wschat_{name} {help}.\n# TYPE wschat_{name} {kind}\nwschat_{name} {value}"
            );
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

/// A real `redis-server` for tests: on a free port, AOF on, in a temporary directory, killed on
/// drop.
#[cfg(test)]
pub mod testing {
    use std::io::{BufRead, BufReader};
    use std::process::{Child, Command, Stdio};
    use std::sync::mpsc;
    use std::time::Duration;

    pub struct RedisServer {
        pub url: String,
        child: Child,
        _dir: tempfile::TempDir,
    }

    impl RedisServer {
        pub fn start() -> RedisServer {
            let dir = tempfile::tempdir().expect("temporary directory");
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let mut child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "yes", "--dir"])
                .arg(dir.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server is installed (scripts/test.sh installs it)");
            let stdout = child.stdout.take().expect("piped");
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if line.contains("Ready to accept connections") {
                        let _ = tx.send(());
                    }
                }
            });
            rx.recv_timeout(Duration::from_secs(10))
                .expect("redis-server ready within 10 s");
            let url = format!("redis://127.0.0.1:{port}/");
            let mut connection = redis::Client::open(url.as_str())
                .and_then(|c| c.get_connection())
                .expect("connect to redis-server");
            let pong: String = redis::cmd("PING").query(&mut connection).expect("PING");
            assert_eq!(pong, "PONG");
            RedisServer {
                url,
                child,
                _dir: dir,
            }
        }
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
