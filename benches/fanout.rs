//! The hub's fan-out path: one chat message from a sender to a room of 1,000 members, encoded
//! once and queued to 1,000 outboxes. Only `Hub::chat` / `Hub::relay` is timed; the outboxes
//! are drained between iterations, as the connections' writers would.
//!
//! `cargo bench --bench fanout`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use wschat::hub::{Hub, HubConfig, JoinRequest, Link, MemberId, Post};
use wschat::outbox;
use wschat::store::{Keep, MemoryStore};

const MEMBERS: usize = 1000;

struct Room {
    hub: Hub,
    sender: MemberId,
    outboxes: Vec<outbox::Receiver>,
    // Kept so no member counts as evicted.
    _evictions: Vec<oneshot::Receiver<u16>>,
}

fn room(members: usize) -> Room {
    // History in memory, as `wschat serve` keeps it by default.
    let hub = Hub::new(
        HubConfig::default(),
        Arc::new(MemoryStore::new(Keep::messages(1000))),
        Arc::default(),
    );
    let mut outboxes = Vec::with_capacity(members);
    let mut evictions = Vec::with_capacity(members + 1);
    let mut join = |name: String, quiet: bool| {
        // Room for every join notice the first members get: none may be evicted while the
        // room fills, or the benchmark would measure a smaller room than it says.
        let (frames, rx) = outbox::channel(8 * members + 64);
        let (evict, evicted) = oneshot::channel();
        let request = JoinRequest {
            room: "lobby".into(),
            name: Some(name),
            quiet,
            ..JoinRequest::default()
        };
        let (id, _) = hub.join(request, Link { frames, evict }).expect("join");
        evictions.push(evicted);
        (id, rx)
    };
    for i in 0..members {
        outboxes.push(join(format!("member{i}"), false).1);
    }
    let (sender, _own) = join("sender".into(), true);
    assert_eq!(
        hub.members("lobby"),
        members + 1,
        "every member is in the room"
    );
    let mut room = Room {
        hub,
        sender,
        outboxes,
        _evictions: evictions,
    };
    drain(&mut room.outboxes);
    room
}

fn drain(outboxes: &mut [outbox::Receiver]) {
    for outbox in outboxes {
        while let Ok(frame) = outbox.try_recv() {
            black_box(frame);
        }
    }
}

/// Times `post` alone over `iterations` messages, draining the outboxes between them.
fn timed(room: &mut Room, iterations: u64, post: impl Fn(&Room)) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iterations {
        let start = Instant::now();
        post(room);
        total += start.elapsed();
        drain(&mut room.outboxes);
    }
    total
}

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout");
    group.throughput(Throughput::Elements(MEMBERS as u64));
    let text = "x".repeat(64);

    let mut chat_room = room(MEMBERS);
    group.bench_function("chat_to_1000_members", |b| {
        b.iter_custom(|iterations| {
            timed(&mut chat_room, iterations, |room| {
                let post = Post {
                    content: text.clone(),
                    ..Post::default()
                };
                black_box(room.hub.chat(room.sender, post)).ok();
            })
        })
    });

    let mut raw_room = room(MEMBERS);
    let frame = Message::text(text.clone());
    group.bench_function("relay_to_1000_members", |b| {
        b.iter_custom(|iterations| {
            timed(&mut raw_room, iterations, |room| {
                black_box(room.hub.relay(room.sender, frame.clone()));
            })
        })
    });
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
