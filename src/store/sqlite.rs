//! History in a SQLite file (`--db FILE`): everything kept, durable across restarts.
//!
//! Writes go to one writer thread that commits whatever has queued up in one transaction
//! (WAL, `synchronous=FULL`), then runs each message's `on_durable`: a message is acknowledged
//! only once it is on disk, and a burst costs one commit, not one per message. Recent messages
//! are served from an in-memory window, so the hub never waits on the disk for them.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use rusqlite::{params, Connection};

use super::memory::{cost, MemoryStore};
use super::older::Older;
use super::{Keep, Kept, OnDurable, Since, Store};
use crate::protocol::ChatEvent;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    room      TEXT    NOT NULL,
    id        INTEGER NOT NULL,
    username  TEXT    NOT NULL,
    message   TEXT    NOT NULL,
    timestamp TEXT    NOT NULL,
    action    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (room, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rooms (
    room    TEXT    NOT NULL PRIMARY KEY,
    last_id INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
";

/// Messages waiting for the writer, at most; past it new ones are not stored (nor acknowledged).
const MAX_QUEUED: usize = 100_000;

/// Bytes of messages waiting for the writer, at least (`--keep-bytes` if larger). The window
/// keeps each of them too until it is committed, so this is also how far past `--keep-bytes`
/// the window may grow while the disk is behind.
const MIN_QUEUED_BYTES: usize = 64 << 20;

/// Most messages committed in one transaction.
const MAX_BATCH: usize = 4096;

/// While writes fail, how often the writer tries one to see whether they work again.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Largest write the writer tries to see whether writes work again.
const MAX_PROBE_BYTES: usize = 4 << 20;

/// Whether the writer's last write failed, and why; shared with the store, which refuses
/// messages meanwhile.
#[derive(Default)]
struct Health {
    failing: Mutex<Option<String>>,
    /// Whether `failing` holds a cause: read for every message, without the lock.
    is_failing: AtomicBool,
    /// Bytes of the batch that failed: a write that large must work again before messages
    /// are taken (a small one may fit where a batch does not, on a disk almost full).
    needed: AtomicUsize,
    /// Messages not stored, since the start.
    unstored: AtomicU64,
}

impl Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        crate::sync::lock(&self.failing)
    }

    fn failed(&self, cause: &str, messages: usize, bytes: usize) {
        self.unstored.fetch_add(messages as u64, Ordering::Relaxed);
        self.needed
            .store(bytes.min(MAX_PROBE_BYTES), Ordering::Relaxed);
        let mut failing = self.lock();
        if failing.is_none() {
            tracing::error!("cannot store history: {cause}; refusing messages until it can");
        }
        self.still_failing(&mut failing, cause);
    }

    /// Records the latest cause while writes fail.
    fn still_failing(&self, failing: &mut Option<String>, cause: &str) {
        *failing = Some(cause.to_owned());
        self.is_failing.store(true, Ordering::Release);
    }

    fn succeeded(&self) {
        if !self.is_failing.load(Ordering::Acquire) {
            return;
        }
        let mut failing = self.lock();
        self.is_failing.store(false, Ordering::Release);
        if failing.take().is_some() {
            tracing::info!("history is stored again; taking messages");
        }
    }

    /// Why messages cannot be stored, while they cannot.
    fn check(&self) -> Result<(), String> {
        if !self.is_failing.load(Ordering::Acquire) {
            return Ok(());
        }
        match &*self.lock() {
            Some(cause) => Err(cause.clone()),
            None => Ok(()),
        }
    }
}

type Write = (ChatEvent, Option<OnDurable>);

/// The latest id given out in each room since the writer last recorded them (in the `rooms`
/// table, with its next batch): ids of messages that never reach the disk are not given out
/// again after a restart.
type GivenOut = Arc<Mutex<HashMap<String, u64>>>;

pub struct SqliteStore {
    /// Made when the file was created, kept in it.
    epoch: String,
    /// Drops a message only once the writer has committed it: what it no longer holds is on
    /// disk.
    cache: Arc<MemoryStore>,
    /// Messages older than the window, read ahead by `prepare` for the client served next.
    older: Older,
    keep: usize,
    /// Reads of older history and of rooms not yet in the window. WAL lets them run while the
    /// writer commits.
    reader: Mutex<Connection>,
    writes: Mutex<Option<mpsc::SyncSender<Write>>>,
    /// Bytes of the messages queued for the writer (see [`cost`]), and their bound.
    queued: Arc<AtomicUsize>,
    given_out: GivenOut,
    health: Arc<Health>,
    max_queued: usize,
    writer: Mutex<Option<JoinHandle<()>>>,
}

fn open(path: &Path) -> anyhow::Result<Connection> {
    if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !folder.is_dir() {
            let why = if folder.exists() {
                "is not a folder"
            } else {
                "does not exist"
            };
            anyhow::bail!(
                "cannot open database {}: the folder {} {why}",
                path.display(),
                folder.display()
            );
        }
    }
    open_unlabelled(path).with_context(|| format!("cannot open database {}", path.display()))
}

fn open_unlabelled(path: &Path) -> anyhow::Result<Connection> {
    // SQLite's error names the file, and its cause repeats the message: one line of it.
    let conn = Connection::open(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!("database {} is not in WAL mode ({mode})", path.display());
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

fn row_to_event(room: &str, row: &rusqlite::Row<'_>) -> rusqlite::Result<ChatEvent> {
    Ok(ChatEvent {
        id: row.get::<_, i64>(0)?.try_into().unwrap_or(0),
        room: room.to_owned(),
        username: row.get(1)?,
        message: row.get::<_, String>(2)?.into(),
        timestamp: row.get(3)?,
        to: None,
        private: false,
        action: row.get(4)?,
        history: false,
        replayed: Default::default(),
    })
}

/// The file's epoch, made the first time it is opened.
fn file_epoch(conn: &Connection) -> rusqlite::Result<String> {
    conn.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', ?1)",
        params![super::new_epoch()],
    )?;
    conn.query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |row| {
        row.get(0)
    })
}

fn id_param(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

impl SqliteStore {
    /// Opens (or creates) the database and starts its writer thread.
    pub fn open(path: &Path, keep: Keep) -> anyhow::Result<SqliteStore> {
        SqliteStore::open_queueing(path, keep, MAX_QUEUED)
    }

    /// Opens the database with room for `max_queued` messages waiting for the writer.
    pub(super) fn open_queueing(
        path: &Path,
        keep: Keep,
        max_queued: usize,
    ) -> anyhow::Result<SqliteStore> {
        let conn = open(path)?;
        conn.execute_batch(SCHEMA)
            .with_context(|| format!("cannot create tables in {}", path.display()))?;
        let epoch = file_epoch(&conn)
            .with_context(|| format!("cannot read the history's epoch in {}", path.display()))?;
        let reader = open(path)?;
        let (tx, rx) = mpsc::sync_channel(max_queued);
        let cache = Arc::new(MemoryStore::until_durable(keep));
        let queued = Arc::new(AtomicUsize::new(0));
        let given_out = GivenOut::default();
        let health = Arc::new(Health::default());
        let writer = {
            let writer = Writer {
                cache: cache.clone(),
                queued: queued.clone(),
                given_out: given_out.clone(),
                health: health.clone(),
            };
            std::thread::Builder::new()
                .name("wschat-sqlite".into())
                .spawn(move || writer.run(conn, rx))
                .context("cannot start the database writer")?
        };
        Ok(SqliteStore {
            epoch,
            cache,
            // Read ahead within a quarter of the window's budget, plus the latest read.
            older: Older::new(keep.bytes / 4),
            keep: keep.messages.max(1),
            reader: Mutex::new(reader),
            writes: Mutex::new(Some(tx)),
            queued,
            given_out,
            health,
            max_queued: keep.bytes.max(MIN_QUEUED_BYTES),
            writer: Mutex::new(Some(writer)),
        })
    }

    fn reader(&self) -> std::sync::MutexGuard<'_, Connection> {
        crate::sync::lock(&self.reader)
    }

    /// Loads a room's window from disk the first time the room is used.
    fn load(&self, room: &str) {
        if self.cache.knows(room) {
            return;
        }
        let loaded = (|| -> rusqlite::Result<(u64, Vec<ChatEvent>)> {
            // The latest id stored, or given out to a message that never was.
            let last: i64 = self.reader().query_row(
                "SELECT MAX(
                     COALESCE((SELECT MAX(id) FROM messages WHERE room = ?1), 0),
                     COALESCE((SELECT last_id FROM rooms WHERE room = ?1), 0))",
                params![room],
                |row| row.get(0),
            )?;
            let messages = self.read_before(room, u64::MAX, self.keep)?;
            // The writer may commit between the reads; ids given out since its last batch
            // are only in memory yet.
            let newest = messages.last().map_or(0, |m| m.id);
            let given = crate::sync::lock(&self.given_out)
                .get(room)
                .copied()
                .unwrap_or(0);
            Ok((
                u64::try_from(last).unwrap_or(0).max(newest).max(given),
                messages,
            ))
        })();
        match loaded {
            Ok((last_id, messages)) => self.cache.seed(room, last_id, messages),
            Err(e) => tracing::error!(room, "cannot read history: {e}"),
        }
    }

    /// The first id the window holds for `room` (or the next id, if it holds none), when the
    /// window does not hold everything after `id`: the disk has what lies between.
    fn window_starts_after(&self, room: &str, id: u64) -> Option<u64> {
        let first = self
            .cache
            .oldest(room)
            .unwrap_or_else(|| self.cache.last_id(room) + 1);
        (first > id + 1).then_some(first)
    }

    /// When `window` (the window's latest `limit` of `room`) holds fewer than `limit` and the
    /// room has older messages on disk (dropped from memory by the byte budget, or `--keep`
    /// below `--history`): the id they come before.
    fn short_of(&self, room: &str, window: &[ChatEvent], limit: usize) -> Option<u64> {
        if window.len() >= limit {
            return None;
        }
        let first = window
            .first()
            .map_or_else(|| self.cache.last_id(room) + 1, |m| m.id);
        (first > 1).then_some(first)
    }

    /// The latest `limit` messages of `room` before `id` on disk, oldest first.
    fn read_before(&self, room: &str, id: u64, limit: usize) -> rusqlite::Result<Vec<ChatEvent>> {
        let conn = self.reader();
        let mut statement = conn.prepare_cached(
            "SELECT id, username, message, timestamp, action FROM messages
             WHERE room = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3",
        )?;
        let mut messages = statement
            .query_map(
                params![room, id_param(id), i64::try_from(limit).unwrap_or(i64::MAX)],
                |row| row_to_event(room, row),
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        messages.reverse();
        Ok(messages)
    }

    /// Hands `message` to the writer, or says why it cannot (and gives `on_durable` back).
    fn queue(
        &self,
        message: &ChatEvent,
        on_durable: Option<OnDurable>,
    ) -> Result<(), (String, Option<OnDurable>)> {
        let size = cost(message);
        let writes = crate::sync::lock(&self.writes);
        let Some(tx) = writes.as_ref() else {
            return Err(("database is closed".into(), on_durable));
        };
        if self.queued.load(Ordering::Relaxed) + size > self.max_queued {
            let why = format!("database writer is {} MiB behind", self.max_queued >> 20);
            return Err((why, on_durable));
        }
        self.queued.fetch_add(size, Ordering::Relaxed);
        tx.try_send((message.clone(), on_durable)).map_err(|e| {
            self.queued.fetch_sub(size, Ordering::Relaxed);
            match e {
                mpsc::TrySendError::Full((_, done)) => {
                    ("database writer's queue is full".into(), done)
                }
                mpsc::TrySendError::Disconnected((_, done)) => {
                    ("database writer has stopped".into(), done)
                }
            }
        })
    }

    /// The first `limit` messages of `room` after `id` and before `before` on disk.
    fn read_between(
        &self,
        room: &str,
        id: u64,
        before: u64,
        limit: usize,
    ) -> rusqlite::Result<Vec<ChatEvent>> {
        let conn = self.reader();
        let mut statement = conn.prepare_cached(
            "SELECT id, username, message, timestamp, action FROM messages
             WHERE room = ?1 AND id > ?2 AND id < ?3 ORDER BY id LIMIT ?4",
        )?;
        let rows = statement.query_map(
            params![
                room,
                id_param(id),
                id_param(before),
                i64::try_from(limit).unwrap_or(i64::MAX)
            ],
            |row| row_to_event(room, row),
        )?;
        rows.collect()
    }
}

impl Store for SqliteStore {
    fn epoch(&self, _room: &str) -> String {
        self.epoch.clone()
    }

    fn idle(&self, room: &str) {
        self.cache.drop_if_durable(room);
    }

    fn last_id(&self, room: &str) -> u64 {
        self.load(room);
        self.cache.last_id(room)
    }

    fn append(&self, message: ChatEvent, on_durable: Option<OnDurable>) {
        self.load(&message.room);
        {
            let mut given_out = crate::sync::lock(&self.given_out);
            match given_out.get_mut(&message.room) {
                Some(id) => *id = (*id).max(message.id),
                None => {
                    given_out.insert(message.room.clone(), message.id);
                }
            }
        }
        // In the window before the writer can see it, so that the writer's word on it (durable,
        // or forgotten for good) always comes after; taken out again if it cannot be queued.
        // The window then keeps only what reaches the disk: a message it no longer holds can
        // always be read there (or was lost, and is reported missed).
        let (room, id) = (message.room.clone(), message.id);
        self.cache.append(message.clone(), None);
        let Err((why, rejected)) = self.queue(&message, on_durable) else {
            return;
        };
        // Delivered, but not stored: its sender is told. Its id is not given out again, and a
        // client resuming from before it is told it missed it.
        tracing::error!(room, id, "{why}; message not stored");
        self.health.unstored.fetch_add(1, Ordering::Relaxed);
        self.cache.forget(&room, id);
        if let Some(done) = rejected {
            done(Err(why));
        }
    }

    fn recent(&self, room: &str, limit: usize) -> Vec<ChatEvent> {
        self.load(room);
        let window = self.cache.recent(room, limit);
        let Some(before) = self.short_of(room, &window, limit) else {
            return window;
        };
        let need = limit - window.len();
        let mut messages = match self.older.latest_before(room, before, need) {
            Some(read_ahead) => read_ahead,
            // Not read ahead (the room was trimmed since): read it now.
            None => match self.read_before(room, before, need) {
                Ok(stored) => stored,
                Err(e) => {
                    tracing::error!(room, "cannot read history: {e}");
                    Vec::new()
                }
            },
        };
        messages.extend(window);
        messages
    }

    fn since(&self, room: &str, id: u64, limit: usize) -> Since {
        self.load(room);
        let mut messages = Vec::new();
        let mut last = id;
        // The writer may drop messages from the window while this runs (once they are on
        // disk): whenever the window starts later than `last`, what lies between is read from
        // disk (or from what `prepare` read ahead), until `limit` or the window's end.
        while messages.len() < limit {
            let left = limit - messages.len();
            let window = self.cache.since(room, last, left);
            if window.missed == 0 {
                messages.extend(window.messages);
                break;
            }
            let before = last + window.missed + 1;
            let older = match self.older.after(room, last, before, left) {
                Some(read_ahead) => read_ahead,
                // Not read ahead (a position older than `prepare` was told of): read it now.
                None => self
                    .read_between(room, last, before, left)
                    .unwrap_or_else(|e| {
                        tracing::error!(room, "cannot read history: {e}");
                        Vec::new()
                    }),
            };
            let complete = older.len() == left;
            messages.extend(older);
            if complete {
                break;
            }
            last = before - 1;
        }
        // An id up to the last message that is not among them was lost (a write that failed,
        // or that the writer had no room for): counted, never skipped silently.
        let newest = messages.last().map_or(id, |m: &ChatEvent| m.id);
        Since {
            missed: (newest - id).saturating_sub(messages.len() as u64),
            messages,
        }
    }

    fn prepare(&self, room: &str, since: Option<u64>, limit: usize) {
        self.load(room);
        // More to resume than `limit`: the client gets the latest `limit`, as a newcomer.
        let since = since.filter(|&id| self.cache.last_id(room).saturating_sub(id) <= limit as u64);
        let read = match since {
            Some(id) => match self.window_starts_after(room, id) {
                Some(before) => self.read_between(room, id, before, limit),
                None => return,
            },
            None => {
                let window = self.cache.recent(room, limit);
                match self.short_of(room, &window, limit) {
                    Some(before) => self.read_before(room, before, limit - window.len()),
                    None => return,
                }
            }
        };
        match read {
            Ok(messages) => self.older.add(room, messages),
            Err(e) => tracing::error!(room, "cannot read history: {e}"),
        }
    }

    fn reads_ahead(&self) -> bool {
        true
    }

    fn kept(&self) -> Kept {
        Kept {
            unstored: self.health.unstored.load(Ordering::Relaxed),
            ..self.cache.kept()
        }
    }

    fn health(&self) -> Result<(), String> {
        self.health.check()
    }

    fn close(&self) {
        let sender = crate::sync::lock(&self.writes).take();
        drop(sender);
        let writer = crate::sync::lock(&self.writer).take();
        if let Some(writer) = writer {
            if writer.join().is_err() {
                tracing::error!("database writer panicked");
            }
        }
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.close();
    }
}

/// The writer thread's handles on what the store shares with it.
struct Writer {
    cache: Arc<MemoryStore>,
    /// Bytes of the messages queued (see [`cost`]).
    queued: Arc<AtomicUsize>,
    given_out: GivenOut,
    health: Arc<Health>,
}

impl Writer {
    /// Commits queued messages in batches until every sender is gone. While writes fail, it
    /// tries a small one every [`PROBE_EVERY`] to find out when they work again.
    fn run(self, mut conn: Connection, writes: mpsc::Receiver<Write>) {
        loop {
            let first = if self.health.check().is_err() {
                match writes.recv_timeout(PROBE_EVERY) {
                    Ok(write) => write,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        self.probe(&mut conn);
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match writes.recv() {
                    Ok(write) => write,
                    Err(_) => break,
                }
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match writes.try_recv() {
                    Ok(write) => batch.push(write),
                    Err(_) => break,
                }
            }
            self.write(&mut conn, batch);
        }
        // Ids given out after the last batch (messages the writer had no room for).
        if let Err(e) = commit(&mut conn, &[], &self.given_out) {
            tracing::error!("cannot record the rooms' latest ids: {e}");
        }
    }

    /// Commits one batch, then tells each sender whether its message is stored. What could
    /// not be stored leaves the window too: history never serves a message that a restart
    /// would lose.
    fn write(&self, conn: &mut Connection, batch: Vec<Write>) {
        let result = commit(conn, &batch, &self.given_out);
        let mut latest: HashMap<&str, u64> = HashMap::new();
        let mut bytes = 0;
        for (m, _) in &batch {
            let id = latest.entry(m.room.as_str()).or_default();
            *id = (*id).max(m.id);
            bytes += cost(m);
        }
        self.queued.fetch_sub(bytes, Ordering::Relaxed);
        if let Err(e) = &result {
            for (m, _) in &batch {
                self.cache.forget(&m.room, m.id);
            }
            let size = batch.iter().map(|(m, _)| m.message.len()).sum();
            self.health.failed(&e.to_string(), batch.len(), size);
        } else {
            self.health.succeeded();
        }
        // Stored, or never to be: the window keeps them no longer than stored ones.
        for (room, id) in latest {
            self.cache.durable(room, id);
        }
        for (_, on_durable) in batch {
            if let Some(done) = on_durable {
                done(
                    result
                        .as_ref()
                        .map(|_| ())
                        .map_err(|e| format!("not stored: {e}")),
                );
            }
        }
    }

    /// A write as large as the batch that failed, to see whether writes work again (then
    /// taken back), and the rooms' latest ids.
    fn probe(&self, conn: &mut Connection) {
        let size = self.health.needed.load(Ordering::Relaxed);
        let result = conn
            .execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('probe', zeroblob(?1))",
                params![i64::try_from(size).unwrap_or(0)],
            )
            .and_then(|_| conn.execute("DELETE FROM meta WHERE key = 'probe'", []))
            .and_then(|_| commit(conn, &[], &self.given_out));
        match result {
            Ok(()) => self.health.succeeded(),
            Err(e) => self
                .health
                .still_failing(&mut self.health.lock(), &e.to_string()),
        }
    }
}

/// Stores `batch` and the ids given out meanwhile, in one transaction.
fn commit(
    conn: &mut Connection,
    batch: &[Write],
    given_out: &Mutex<HashMap<String, u64>>,
) -> rusqlite::Result<()> {
    let ids = std::mem::take(&mut *crate::sync::lock(given_out));
    let result = commit_with(conn, batch, &ids);
    if result.is_err() {
        // Recorded with the next batch instead.
        let mut given_out = crate::sync::lock(given_out);
        for (room, id) in ids {
            let latest = given_out.entry(room).or_default();
            *latest = (*latest).max(id);
        }
    }
    result
}

fn commit_with(
    conn: &mut Connection,
    batch: &[Write],
    ids: &HashMap<String, u64>,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut record = tx.prepare_cached(
            "INSERT INTO rooms (room, last_id) VALUES (?1, ?2)
             ON CONFLICT (room) DO UPDATE SET last_id = MAX(last_id, excluded.last_id)",
        )?;
        for (room, id) in ids {
            record.execute(params![room, id_param(*id)])?;
        }
    }
    {
        let mut insert = tx.prepare_cached(
            "INSERT OR REPLACE INTO messages (room, id, username, message, timestamp, action)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for (m, _) in batch {
            insert.execute(params![
                m.room,
                id_param(m.id),
                m.username,
                &*m.message,
                m.timestamp,
                m.action
            ])?;
        }
    }
    tx.commit()
}
