//! One suite, run against every store.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::{Keep, MemoryStore, RedisStore, SqliteStore, Store};
use crate::protocol::ChatEvent;

fn message(room: &str, id: u64) -> ChatEvent {
    ChatEvent {
        id,
        room: room.into(),
        username: "bob".into(),
        message: format!("m{id}").into(),
        timestamp: "2026-11-22T00:00:00.000Z".into(),
        to: None,
        private: false,
        action: id % 2 == 0,
        history: false,
        replayed: Default::default(),
    }
}

fn ids(messages: &[ChatEvent]) -> Vec<u64> {
    messages.iter().map(|m| m.id).collect()
}

/// Appends `n` messages to `room` and waits until all are durable.
fn fill(store: &dyn Store, room: &str, range: std::ops::RangeInclusive<u64>) {
    let done = Arc::new(AtomicUsize::new(0));
    let expected = range.clone().count();
    let (tx, rx) = std::sync::mpsc::channel();
    for id in range {
        let done = done.clone();
        let tx = tx.clone();
        store.append(
            message(room, id),
            Some(Box::new(move |stored: Result<(), String>| {
                stored.expect("stored");
                if done.fetch_add(1, Ordering::SeqCst) + 1 == expected {
                    let _ = tx.send(());
                }
            })),
        );
    }
    rx.recv_timeout(std::time::Duration::from_secs(10))
        .expect("every append is reported durable");
}

/// Appends messages numbered `range` to a room, and returns once they are durable.
type Fill<'a> = &'a dyn Fn(&dyn Store, &str, std::ops::RangeInclusive<u64>);

fn suite(store: &dyn Store, keep: usize) {
    suite_with(store, keep, &fill);
}

fn suite_with(store: &dyn Store, keep: usize, fill: Fill<'_>) {
    assert_eq!(store.last_id("lobby"), 0);
    assert!(store.recent("lobby", 10).is_empty());
    fill(store, "lobby", 1..=5);
    fill(store, "dev", 1..=2);
    assert_eq!(store.last_id("lobby"), 5);
    assert_eq!(store.last_id("dev"), 2);
    assert_eq!(ids(&store.recent("lobby", 3)), vec![3, 4, 5]);
    assert_eq!(ids(&store.recent("lobby", 100)), vec![1, 2, 3, 4, 5]);
    let since = store.since("lobby", 2, 100);
    assert_eq!((since.missed, ids(&since.messages)), (0, vec![3, 4, 5]));
    assert_eq!(ids(&store.since("lobby", 2, 2).messages), vec![3, 4]);
    assert!(store.since("lobby", 5, 100).messages.is_empty());
    // Fields survive the round trip.
    assert_eq!(store.recent("dev", 1), vec![message("dev", 2)]);
    // Past the window, older messages are either served (durable stores) or reported missed.
    fill(store, "lobby", 6..=(keep as u64 + 10));
    let since = store.since("lobby", 0, 10_000);
    assert_eq!(
        since.missed + since.messages.len() as u64,
        keep as u64 + 10,
        "every message is either replayed or counted as missed"
    );
    let first = since.messages.first().map_or(0, |m| m.id);
    assert_eq!(
        first,
        since.missed + 1,
        "no hole between the gap and the replay"
    );
    assert!(store.kept().messages > 0 && store.kept().bytes > 0);
}

#[test]
fn memory_store() {
    let store = MemoryStore::new(Keep::messages(8));
    suite(&store, 8);
    let since = store.since("lobby", 0, 100);
    assert_eq!(since.missed, 10, "memory keeps only its window");
}

#[test]
fn sqlite_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("chat.db"), Keep::messages(8)).unwrap();
    suite(&store, 8);
    let since = store.since("lobby", 0, 100);
    assert_eq!(since.missed, 0, "the database keeps everything");
}

/// A Redis store whose cluster tails a real redis-server.
struct WithRedis<'a> {
    store: Arc<RedisStore>,
    cluster: Arc<crate::cluster::Cluster>,
    runtime: &'a tokio::runtime::Runtime,
    url: String,
}

/// Runs `body` with a Redis store of `keep`, and a `fill` that posts messages as a member
/// would and waits until the log delivered them back.
fn with_redis_store(keep: Keep, body: impl FnOnce(&WithRedis<'_>, Fill<'_>)) {
    use crate::cluster::testing::RedisServer;
    use crate::cluster::{Cluster, ClusterConfig};
    use crate::hub::relay::{Delivery, Origin, Relay};
    use crate::hub::MemberId;
    use std::time::Duration;

    let redis = RedisServer::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _guard = runtime.enter();
    let store = Arc::new(RedisStore::new(keep));
    let config = ClusterConfig {
        url: redis.url.clone(),
        keep: 1000,
        log_max: 1000,
    };
    let cluster = Cluster::new(config, store.clone()).unwrap();
    let (delivered, arrivals) = std::sync::mpsc::channel();
    let sink_store = store.clone();
    let deliver = Arc::new(move |delivery| {
        if let Delivery::Chat(message, origin) = delivery {
            sink_store.append(message, None);
            let _ = delivered.send(origin);
        }
    });
    let stop = tokio_util::sync::CancellationToken::new();
    cluster.start(deliver, stop.clone());
    assert!(runtime.block_on(cluster.wait_ready(Duration::from_secs(10))));
    let fill_through_redis = |_: &dyn Store, room: &str, range: std::ops::RangeInclusive<u64>| {
        let count = range.clone().count();
        for id in range {
            let mut m = message(room, id);
            m.id = 0;
            let origin = Origin {
                member: MemberId::from_raw(id),
                reference: Some(id),
                delivered_locally: false,
            };
            cluster.publish(m, origin);
        }
        for _ in 0..count {
            let origin = arrivals
                .recv_timeout(Duration::from_secs(10))
                .expect("the log delivers every post");
            assert!(origin.is_some(), "this instance is the origin");
        }
    };
    let with = WithRedis {
        store: store.clone(),
        cluster: cluster.clone(),
        runtime: &runtime,
        url: redis.url.clone(),
    };
    body(&with, &fill_through_redis);
    stop.cancel();
}

/// The Redis store gets messages only through the shared log.
#[test]
fn redis_store() {
    use crate::cluster::{Cluster, ClusterConfig};

    with_redis_store(Keep::messages(8), |with, fill| {
        let (store, cluster, runtime) = (&with.store, &with.cluster, with.runtime);
        suite_with(&**store, 8, fill);
        let since = store.since("lobby", 0, 100);
        assert_eq!(since.missed, 10, "the window holds 8");
        // A client resuming from further back: the room's stream has it, read before joining.
        runtime.block_on(cluster.prepare_room("lobby", Some(0), 100));
        let since = store.since("lobby", 0, 100);
        assert_eq!(since.missed, 0);
        assert_eq!(ids(&since.messages), (1..=18).collect::<Vec<_>>());
        // Another instance starting now loads the rooms from Redis alone.
        let other_store = Arc::new(RedisStore::new(Keep::messages(4)));
        let other = Cluster::new(
            ClusterConfig {
                url: with.url.clone(),
                keep: 1000,
                log_max: 1000,
            },
            other_store.clone(),
        )
        .unwrap();
        runtime.block_on(other.prepare_room("dev", None, 0));
        assert_eq!(other_store.last_id("dev"), 2);
        assert_eq!(
            other_store.recent("dev", 5),
            vec![message("dev", 1), message("dev", 2)]
        );
    });
}

/// A budget of ten messages like `message("a", 1)` in three rooms (a few bytes spare for
/// longer ids; a room costs less than a message).
fn ten_messages() -> Keep {
    Keep {
        messages: 100,
        bytes: 10 * super::memory::cost(&message("a", 1)) + 3 * super::memory::room_cost("a") + 9,
    }
}

/// Past the byte budget, the least recently written rooms lose their oldest messages from
/// memory first, and a room's ids go on. Fills "a" with 1..=6 and "b" with 1..=7 (a loses
/// 1..=3), then "a" with 7 (b loses 1), then "c" with 1..=10 (a and b lose the rest; in
/// memory alone, their windows too: a room costs the budget as well).
fn byte_budget_suite(store: &dyn Store, fill: Fill<'_>) {
    let budget = ten_messages().bytes;
    fill(store, "a", 1..=6);
    fill(store, "b", 1..=4);
    assert_eq!((store.kept().messages, store.kept().evicted), (10, 0));
    fill(store, "b", 5..=7);
    assert_eq!((store.kept().messages, store.kept().evicted), (10, 3));
    assert!(store.kept().bytes <= budget);
    assert_eq!(ids(&store.recent("b", 100)), (1..=7).collect::<Vec<_>>());
    assert_eq!(store.last_id("a"), 6);
    fill(store, "a", 7..=7);
    assert_eq!(store.kept().evicted, 4, "b, written longest ago, lost one");
    fill(store, "c", 1..=10);
    assert_eq!((store.kept().messages, store.kept().evicted), (10, 14));
    assert!(store.kept().bytes <= budget);
    assert_eq!(ids(&store.recent("c", 100)), (1..=10).collect::<Vec<_>>());
}

#[test]
fn memory_store_keeps_within_its_byte_budget() {
    let store = MemoryStore::new(ten_messages());
    let first = store.epoch("a");
    byte_budget_suite(&store, &fill);
    // Rooms whose windows memory gave up start over, in another history: a client resuming
    // there is told so (by the epoch) instead of being served ids that mean other messages.
    assert!(store.recent("a", 100).is_empty());
    assert_eq!((store.last_id("a"), store.last_id("b")), (0, 0));
    assert_ne!(store.epoch("a"), first);
    assert_eq!(
        store.epoch("c"),
        first,
        "c was made before any room was given up"
    );
    fill(&store, "a", 8..=8);
    let since = store.since("a", 0, 100);
    assert_eq!((since.missed, ids(&since.messages)), (7, vec![8]));
}

#[test]
fn sqlite_store_reads_what_its_byte_budget_dropped_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("chat.db"), ten_messages()).unwrap();
    byte_budget_suite(&store, &fill);
    assert_eq!((store.last_id("a"), store.last_id("b")), (7, 7));
    assert_eq!(ids(&store.recent("a", 3)), vec![5, 6, 7]);
    assert_eq!(ids(&store.recent("b", 100)), (1..=7).collect::<Vec<_>>());
    let since = store.since("a", 2, 100);
    assert_eq!((since.missed, ids(&since.messages)), (0, (3..=7).collect()));
    fill(&store, "a", 8..=8);
    let since = store.since("a", 0, 100);
    assert_eq!((since.missed, ids(&since.messages)), (0, (1..=8).collect()));
}

#[test]
fn redis_store_loads_what_its_byte_budget_dropped_again() {
    with_redis_store(ten_messages(), |with, fill| {
        let (store, cluster, runtime) = (&with.store, &with.cluster, with.runtime);
        for room in ["a", "b", "c"] {
            runtime.block_on(cluster.prepare_room(room, None, 0));
            assert!(store.is_loaded(room));
        }
        byte_budget_suite(&**store, fill);
        assert_eq!((store.last_id("a"), store.last_id("b")), (7, 7));
        assert!(
            !store.is_loaded("a"),
            "a lost messages while others were written"
        );
        assert!(store.is_loaded("c"), "c lost nothing");
        // The next member to join "a" loads its window from the room's stream again.
        runtime.block_on(cluster.prepare_room("a", None, 0));
        assert_eq!(ids(&store.recent("a", 100)), (1..=7).collect::<Vec<_>>());
        assert!(store.kept().bytes <= ten_messages().bytes);
    });
}

#[test]
fn sqlite_history_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    {
        let store = SqliteStore::open(&path, Keep::messages(4)).unwrap();
        fill(&store, "lobby", 1..=10);
        store.close();
    }
    let store = SqliteStore::open(&path, Keep::messages(4)).unwrap();
    assert_eq!(store.last_id("lobby"), 10);
    assert_eq!(ids(&store.recent("lobby", 2)), vec![9, 10]);
    assert_eq!(
        ids(&store.since("lobby", 0, 100).messages),
        (1..=10).collect::<Vec<_>>()
    );
}

#[test]
fn sqlite_refuses_a_file_that_is_not_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(
        &path,
        "this is not a database, just some text that is long enough",
    )
    .unwrap();
    let error = SqliteStore::open(&path, Keep::messages(4))
        .err()
        .expect("not a database");
    assert!(format!("{error:#}").contains("notes.txt"), "{error:#}");
}

#[test]
fn sqlite_prepare_reads_ahead_what_the_window_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let store = SqliteStore::open(&path, Keep::messages(4)).unwrap();
    fill(&store, "lobby", 1..=10);
    // A client resuming from 2, and a newcomer asking for 6 messages (the window holds 4).
    store.prepare("lobby", Some(2), 100);
    store.prepare("lobby", None, 6);
    // The disk loses everything: what the hub asks next comes from memory.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute("DELETE FROM messages", [])
        .unwrap();
    let since = store.since("lobby", 2, 100);
    assert_eq!(
        (since.missed, ids(&since.messages)),
        (0, (3..=10).collect())
    );
    assert_eq!(ids(&store.recent("lobby", 6)), (5..=10).collect::<Vec<_>>());
}

#[test]
fn a_window_in_front_of_a_durable_store_drops_only_what_is_durable() {
    let store = MemoryStore::until_durable(Keep::messages(2));
    for id in 1..=5 {
        store.append(message("lobby", id), None);
    }
    assert_eq!(ids(&store.recent("lobby", 100)), vec![1, 2, 3, 4, 5]);
    store.durable("lobby", 2);
    assert_eq!(ids(&store.recent("lobby", 100)), vec![3, 4, 5]);
    store.durable("lobby", 5);
    assert_eq!(ids(&store.recent("lobby", 100)), vec![4, 5]);
    assert_eq!(store.kept().messages, 2);
}

#[test]
fn sqlite_serves_every_message_while_the_disk_is_behind() {
    let dir = tempfile::tempdir().unwrap();
    let budget =
        3 * super::memory::cost(&message("lobby", 1)) + 2 * super::memory::room_cost("lobby");
    let store = SqliteStore::open(
        &dir.path().join("chat.db"),
        Keep {
            messages: 2,
            bytes: budget,
        },
    )
    .unwrap();
    // A burst far larger than the window, faster than the writer commits (each commit waits
    // for the disk): at every point, memory and disk together hold everything.
    for id in 1..=500 {
        store.append(message("lobby", id), None);
        store.append(message("dev", id), None);
        if id % 50 == 0 {
            for room in ["lobby", "dev"] {
                let since = store.since(room, 0, 10_000);
                assert_eq!(
                    (since.missed, ids(&since.messages)),
                    (0, (1..=id).collect()),
                    "{room} after {id}"
                );
            }
        }
    }
    fill(&store, "lobby", 501..=501);
    assert!(store.kept().bytes <= budget, "within budget once durable");
}

#[test]
fn the_room_written_last_keeps_its_newest_message_whatever_its_size() {
    let store = MemoryStore::new(Keep {
        messages: 10,
        bytes: 1024,
    });
    store.append(message("dev", 1), None);
    let mut large = message("lobby", 1);
    large.message = "x".repeat(4096).into();
    store.append(large.clone(), None);
    assert_eq!(store.recent("lobby", 10), vec![large]);
    assert!(store.recent("dev", 10).is_empty(), "others make room first");
    // The next write elsewhere makes it the room written longest ago.
    store.append(message("dev", 2), None);
    assert!(store.recent("lobby", 10).is_empty());
    assert_eq!(ids(&store.recent("dev", 10)), vec![2]);
}

#[test]
fn sqlite_reports_messages_lost_among_those_it_reads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let store = SqliteStore::open(&path, Keep::messages(2)).unwrap();
    fill(&store, "lobby", 1..=10);
    // Two writes that never reached the disk.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute("DELETE FROM messages WHERE id IN (1, 3)", [])
        .unwrap();
    let since = store.since("lobby", 0, 100);
    assert_eq!(
        (since.missed, ids(&since.messages)),
        (2, vec![2, 4, 5, 6, 7, 8, 9, 10])
    );
    let since = store.since("lobby", 0, 3);
    assert_eq!((since.missed, ids(&since.messages)), (2, vec![2, 4, 5]));
}

#[test]
fn sqlite_keeps_queued_messages_in_memory_when_the_queue_overflows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let store = SqliteStore::open_queueing(&path, Keep::messages(2), 20).unwrap();
    // Another connection holds the write lock: the writer waits (up to its busy timeout).
    let blocker = rusqlite::Connection::open(&path).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let (stored, on_disk) = std::sync::mpsc::channel();
    let refused = Arc::new(AtomicUsize::new(0));
    for id in 1..=100 {
        let stored = stored.clone();
        let refused = refused.clone();
        let done = move |result: Result<(), String>| match result {
            Ok(()) => {
                let _ = stored.send(id);
            }
            Err(_) => {
                refused.fetch_add(1, Ordering::SeqCst);
            }
        };
        store.append(message("lobby", id), Some(Box::new(done)));
    }
    // What was queued stays in memory; what overflowed is not kept anywhere, and counted.
    // (The writer may take some from the queue while it overflows, so the kept ones need not
    // be the first ones.)
    let since = store.since("lobby", 0, 1000);
    let kept = ids(&since.messages);
    assert!((20..100).contains(&kept.len()), "{} kept", kept.len());
    assert!(kept.windows(2).all(|w| w[0] < w[1]), "{kept:?}");
    assert_eq!(since.missed, kept.last().unwrap() - kept.len() as u64);
    assert_eq!(store.last_id("lobby"), 100, "no id is given out twice");
    // Their senders were told at once.
    assert_eq!(refused.load(Ordering::SeqCst), 100 - kept.len());
    assert_eq!(store.kept().unstored, (100 - kept.len()) as u64);
    blocker.execute_batch("ROLLBACK").unwrap();
    drop(blocker);
    for _ in 0..kept.len() {
        on_disk
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("every queued message is stored once the disk is free");
    }
    fill(&store, "lobby", 101..=101);
    // Once on disk, the window lets them go; a resume counts the overflowed ones as missed.
    let since = store.since("lobby", 0, 1000);
    let mut expected = kept.clone();
    expected.push(101);
    assert_eq!(
        (since.missed, ids(&since.messages)),
        (100 - kept.len() as u64, expected)
    );
    assert_eq!(store.kept().messages, 2);
}

#[test]
fn sqlite_never_gives_out_an_id_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    {
        let store = SqliteStore::open_queueing(&path, Keep::messages(2), 5).unwrap();
        // The writer waits on another connection's write lock while the queue overflows.
        let blocker = rusqlite::Connection::open(&path).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        for id in 1..=50 {
            store.append(message("lobby", id), None);
        }
        blocker.execute_batch("ROLLBACK").unwrap();
        drop(blocker);
        store.close();
    }
    let store = SqliteStore::open(&path, Keep::messages(2)).unwrap();
    assert_eq!(
        store.last_id("lobby"),
        50,
        "ids of messages never stored are used up"
    );
    // What was stored is there, in order (the queue may have overflowed between two stored
    // messages: holes up to the newest are counted; the hub counts the rest, last id minus
    // returned).
    let since = store.since("lobby", 0, 100);
    let stored = ids(&since.messages);
    assert!(!stored.is_empty() && stored.len() < 50, "{stored:?}");
    assert!(stored.windows(2).all(|w| w[0] < w[1]), "{stored:?}");
    let newest = *stored.last().unwrap();
    assert_eq!(since.missed, newest - stored.len() as u64, "{stored:?}");
}

#[test]
fn a_window_the_budget_empties_gives_its_memory_back() {
    let one = super::memory::cost(&message("r0", 1));
    let store = MemoryStore::new(Keep {
        messages: 1000,
        bytes: 1000 * one,
    });
    for id in 1..=1000 {
        store.append(message("r0", id), None);
    }
    assert!(store.capacity("r0") >= 1000);
    for room in 1..=4 {
        for id in 1..=250 {
            store.append(message(&format!("r{room}"), id), None);
        }
    }
    // Other rooms take the whole budget: r0 keeps nothing, not even its window.
    assert!(store.recent("r0", 10).is_empty());
    assert_eq!(store.capacity("r0"), 0);
    assert_eq!(store.last_id("r0"), 0);
    assert_ne!(store.epoch("r0"), store.epoch("r1"));
}

#[test]
fn an_idle_room_leaves_memory_where_a_durable_store_can_read_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("chat.db"), Keep::messages(100)).unwrap();
    fill(&store, "lobby", 1..=5);
    let held = store.kept().bytes;
    assert!(held > 0);
    store.idle("lobby");
    assert_eq!(store.kept().bytes, 0, "nothing of the room is held");
    assert_eq!(store.last_id("lobby"), 5);
    assert_eq!(ids(&store.recent("lobby", 10)), (1..=5).collect::<Vec<_>>());
    // In memory alone, the window is the history: an idle room keeps it.
    let memory = MemoryStore::new(Keep::messages(100));
    fill(&memory, "lobby", 1..=5);
    memory.idle("lobby");
    assert_eq!(
        ids(&memory.recent("lobby", 10)),
        (1..=5).collect::<Vec<_>>()
    );
}
