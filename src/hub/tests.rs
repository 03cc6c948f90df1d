//! The hub's unit tests: rooms, names, history, presence, through its API.

use super::*;
use crate::protocol::SyncedEvent;
use crate::store::{Keep, MemoryStore};

fn hub(config: HubConfig) -> Hub {
    Hub::new(
        config,
        Arc::new(MemoryStore::new(Keep::messages(100))),
        Arc::default(),
    )
}

fn say(hub: &Hub, from: &TestMember, text: &str) -> Result<(), ChatError> {
    hub.chat(
        from.id,
        Post {
            content: text.into(),
            ..Post::default()
        },
    )
}

struct TestMember {
    id: MemberId,
    name: String,
    rx: outbox::Receiver,
    evicted: oneshot::Receiver<u16>,
}

fn join(hub: &Hub, room: &str, name: Option<&str>, quiet: bool, cap: usize) -> TestMember {
    try_join(hub, room, name, quiet, cap).unwrap()
}

fn try_join(
    hub: &Hub,
    room: &str,
    name: Option<&str>,
    quiet: bool,
    cap: usize,
) -> Result<TestMember, JoinError> {
    let req = JoinRequest {
        room: room.into(),
        name: name.map(Into::into),
        quiet,
        ..JoinRequest::default()
    };
    try_join_bounded(hub, req, cap, usize::MAX)
}

/// Joins with an outbox of `frames` frames and `bytes` bytes.
fn try_join_bounded(
    hub: &Hub,
    req: JoinRequest,
    frames: usize,
    bytes: usize,
) -> Result<TestMember, JoinError> {
    let (tx, rx) = outbox::bounded(frames, bytes);
    let (etx, erx) = oneshot::channel();
    let outbox = Link {
        frames: tx,
        evict: etx,
    };
    let (id, name) = hub.join(req, outbox)?;
    Ok(TestMember {
        id,
        name,
        rx,
        evicted: erx,
    })
}

fn events(m: &mut TestMember) -> Vec<Event> {
    let mut out = Vec::new();
    while let Ok(Message::Text(t)) = m.rx.try_recv() {
        out.push(serde_json::from_str(&t).unwrap());
    }
    out
}

fn chats(m: &mut TestMember) -> Vec<(String, String)> {
    events(m)
        .into_iter()
        .filter_map(|e| match e {
            Event::Chat(c) => Some((c.username, c.message.to_string())),
            _ => None,
        })
        .collect()
}

#[test]
fn chat_reaches_everyone_but_the_sender() {
    let hub = hub(HubConfig::default());
    let mut a = join(&hub, "lobby", Some("alice"), false, 16);
    let mut b = join(&hub, "lobby", Some("bob"), false, 16);
    let mut c = join(&hub, "lobby", Some("carol"), false, 16);
    hub.chat(
        b.id,
        Post {
            content: "hi".into(),
            reference: Some(9),
            ..Post::default()
        },
    )
    .unwrap();
    let acks: Vec<AckEvent> = events(&mut b)
        .into_iter()
        .filter_map(|e| match e {
            Event::Ack(a) => Some(a),
            _ => None,
        })
        .collect();
    assert_eq!(
        acks,
        vec![AckEvent {
            reference: 9,
            id: 1,
            delivered: 2
        }]
    );
    assert_eq!(chats(&mut a), vec![("bob".into(), "hi".into())]);
    assert_eq!(chats(&mut c), vec![("bob".into(), "hi".into())]);
    assert!(chats(&mut b).is_empty());
    say(&hub, &a, "again").unwrap();
    let ids: Vec<u64> = events(&mut b)
        .into_iter()
        .filter_map(|e| match e {
            Event::Chat(c) => Some(c.id),
            _ => None,
        })
        .collect();
    assert_eq!(ids, vec![2]);
}

#[test]
fn echo_sends_back_to_the_sender() {
    let hub = hub(HubConfig {
        echo: true,
        history: 50,
        ..HubConfig::default()
    });
    let mut a = join(&hub, "lobby", Some("alice"), false, 16);
    say(&hub, &a, "me").unwrap();
    assert_eq!(chats(&mut a), vec![("alice".into(), "me".into())]);
}

#[test]
fn rooms_are_separate_and_empty_rooms_vanish() {
    let hub = hub(HubConfig::default());
    let a = join(&hub, "one", Some("alice"), false, 16);
    let mut b = join(&hub, "two", Some("bob"), false, 16);
    say(&hub, &a, "x").unwrap();
    assert!(chats(&mut b).is_empty());
    hub.leave(a.id);
    assert_eq!(hub.members("one"), 0);
    assert!(!hub.lock().rooms.contains_key("one"));
}

#[test]
fn welcome_join_leave_and_rename_notices() {
    let hub = hub(HubConfig::default());
    let mut a = join(&hub, "lobby", Some("alice"), false, 16);
    let welcome = events(&mut a);
    assert!(
        matches!(&welcome[..], [Event::System(s), Event::Synced(_)] if s.event == Notice::Welcome && s.count == Some(1))
    );
    let b = join(&hub, "lobby", Some("bob"), false, 16);
    hub.rename(b.id, "robert").unwrap();
    hub.leave(b.id);
    let notices: Vec<String> = events(&mut a)
        .into_iter()
        .filter_map(|e| match e {
            Event::System(s) => Some(s.message),
            _ => None,
        })
        .collect();
    assert_eq!(
        notices,
        vec![
            "bob joined the chat",
            "bob is now known as robert",
            "robert left the chat"
        ]
    );
    // The old and the new name are both free again.
    join(&hub, "lobby", Some("bob"), false, 16);
    join(&hub, "lobby", Some("robert"), false, 16);
}

#[test]
fn quiet_members_are_silent_and_hold_no_name() {
    let hub = hub(HubConfig::default());
    let mut a = join(&hub, "lobby", Some("alice"), false, 16);
    events(&mut a);
    let q = join(&hub, "lobby", Some("alice"), true, 16);
    assert_eq!(q.name, "alice");
    say(&hub, &q, "scripted").unwrap();
    hub.leave(q.id);
    assert_eq!(chats(&mut a), vec![("alice".into(), "scripted".into())]);
    assert!(events(&mut a).is_empty());
}

#[test]
fn names_are_unique_and_validated() {
    let hub = hub(HubConfig::default());
    let _a = join(&hub, "lobby", Some("alice"), false, 16);
    assert_eq!(
        try_join(&hub, "other", Some("alice"), false, 16).err(),
        Some(JoinError::NameTaken("alice".into()))
    );
    assert!(matches!(
        try_join(&hub, "lobby", Some("bad name"), false, 16),
        Err(JoinError::InvalidName(_))
    ));
    let b = join(&hub, "lobby", Some("bob"), false, 16);
    assert_eq!(
        hub.rename(b.id, "alice"),
        Err(JoinError::NameTaken("alice".into()))
    );
    let g = join(&hub, "lobby", None, false, 16);
    assert!(g.name.starts_with("guest-"));
}

#[test]
fn a_full_outbox_evicts_only_that_member() {
    let hub = hub(HubConfig::default());
    let mut fast = join(&hub, "lobby", Some("fast"), false, 64);
    let mut slow = join(&hub, "lobby", Some("slow"), false, 2);
    let sender = join(&hub, "lobby", Some("sender"), true, 64);
    events(&mut fast);
    for i in 0..10 {
        say(&hub, &sender, &format!("m{i}")).unwrap();
    }
    assert_eq!(slow.evicted.try_recv(), Ok(close::SLOW_CONSUMER));
    let got = chats(&mut fast);
    assert_eq!(got.len(), 10);
    assert_eq!(hub.members("lobby"), 2);
    // The slow member's queue holds only what fitted; nothing grew.
    assert!(slow.rx.len() <= 2);
}

#[test]
fn leaving_twice_is_harmless() {
    let hub = hub(HubConfig::default());
    let a = join(&hub, "lobby", Some("alice"), false, 16);
    hub.leave(a.id);
    hub.leave(a.id);
    assert_eq!(say(&hub, &a, "ghost"), Err(ChatError::Gone));
    assert_eq!(hub.relay(a.id, Message::text("x")), 0);
}

fn history_of(m: &mut TestMember) -> (Vec<String>, Vec<Event>) {
    let mut texts = Vec::new();
    let mut others = Vec::new();
    for e in events(m) {
        match e {
            Event::Chat(c) if c.history => texts.push(c.message.to_string()),
            Event::System(_) => {}
            other => others.push(other),
        }
    }
    (texts, others)
}

fn join_with(hub: &Hub, req: JoinRequest, cap: usize) -> TestMember {
    join_bounded(hub, req, cap, usize::MAX)
}

#[test]
fn joiners_get_recent_history_then_synced() {
    let hub = hub(HubConfig {
        echo: false,
        history: 2,
        ..HubConfig::default()
    });
    let a = join(&hub, "lobby", Some("alice"), false, 16);
    for i in 1..=3 {
        say(&hub, &a, &format!("m{i}")).unwrap();
    }
    let mut b = join(&hub, "lobby", Some("bob"), false, 16);
    let (texts, others) = history_of(&mut b);
    assert_eq!(texts, vec!["m2", "m3"]);
    assert_eq!(
        others,
        vec![Event::Synced(SyncedEvent {
            room: "lobby".into(),
            id: 3,
            epoch: hub.store.epoch("lobby"),
        })]
    );
    // A quiet sender gets no history unless it asks.
    let mut q = join(&hub, "lobby", Some("q"), true, 16);
    assert!(events(&mut q).is_empty());
}

#[test]
fn resume_replays_exactly_what_was_missed_or_reports_a_gap() {
    let store = Arc::new(MemoryStore::new(Keep::messages(3)));
    let hub = Hub::new(HubConfig::default(), store, Arc::default());
    let a = join(&hub, "lobby", Some("alice"), false, 16);
    for i in 1..=5 {
        say(&hub, &a, &format!("m{i}")).unwrap();
    }
    let resume = |since, name: &str| JoinRequest {
        room: "lobby".into(),
        name: Some(name.into()),
        since: Some(since),
        ..JoinRequest::default()
    };
    let mut b = join_with(&hub, resume(3, "bob"), 16);
    assert_eq!(history_of(&mut b).0, vec!["m4", "m5"]);
    // Only m3..m5 are kept: resuming after m1 misses m2, and is told so.
    let mut c = join_with(&hub, resume(1, "carol"), 16);
    let (texts, others) = history_of(&mut c);
    assert_eq!(texts, vec!["m3", "m4", "m5"]);
    assert!(matches!(&others[0], Event::Gap(g) if g.missed == 1));
    // Up to date: nothing replayed, no gap.
    let mut d = join_with(&hub, resume(5, "dave"), 16);
    let (texts, others) = history_of(&mut d);
    assert!(texts.is_empty());
    assert_eq!(others.len(), 1);
}

fn join_bounded(hub: &Hub, req: JoinRequest, frames: usize, bytes: usize) -> TestMember {
    try_join_bounded(hub, req, frames, bytes).unwrap()
}

#[test]
fn a_resume_in_another_history_gets_this_one_from_its_start() {
    let hub = hub(HubConfig::default());
    let a = join(&hub, "lobby", Some("alice"), false, 64);
    for i in 1..=10 {
        say(&hub, &a, &format!("new-{i}")).unwrap();
    }
    // Saw ids 1..5 of a history this server no longer has (it restarted in memory): the
    // same ids name other messages here.
    let req = JoinRequest {
        room: "lobby".into(),
        name: Some("bob".into()),
        since: Some(5),
        epoch: Some("0000000000000000".into()),
        ..JoinRequest::default()
    };
    let mut b = join_with(&hub, req, 64);
    let (texts, others) = history_of(&mut b);
    let expected: Vec<String> = (1..=10).map(|i| format!("new-{i}")).collect();
    assert_eq!(texts, expected);
    let Event::Gap(gap) = &others[0] else {
        panic!("no notice of the restart: {others:?}")
    };
    assert!(gap.restarted);
    assert_eq!(gap.missed, 0);
    let Event::Synced(synced) = &others[1] else {
        panic!("{others:?}")
    };
    assert_eq!(synced.epoch, hub.store.epoch("lobby"));
    // The same position in this history: exactly what came after it.
    let req = JoinRequest {
        room: "lobby".into(),
        name: Some("carol".into()),
        since: Some(5),
        epoch: Some(hub.store.epoch("lobby")),
        ..JoinRequest::default()
    };
    let mut c = join_with(&hub, req, 64);
    let (texts, others) = history_of(&mut c);
    assert_eq!(texts, expected[5..]);
    assert!(matches!(&others[..], [Event::Synced(_)]), "{others:?}");
    // The welcome says which history this is.
    let mut d = join(&hub, "lobby", Some("dave"), false, 64);
    let welcome = events(&mut d).remove(0);
    let Event::System(welcome) = welcome else {
        panic!("{welcome:?}")
    };
    assert_eq!(
        welcome.epoch.as_deref(),
        Some(hub.store.epoch("lobby").as_str())
    );
}

#[test]
fn a_replay_takes_at_most_half_the_outbox_bytes_and_shares_its_frames() {
    let hub = hub(HubConfig {
        echo: false,
        history: 100,
        ..HubConfig::default()
    });
    let a = join(&hub, "lobby", Some("alice"), false, 64);
    let long = "x".repeat(10_000);
    for _ in 1..=20 {
        say(&hub, &a, &long).unwrap();
    }
    let newcomer = |name: &str, since: Option<u64>| JoinRequest {
        room: "lobby".into(),
        name: Some(name.into()),
        since,
        ..JoinRequest::default()
    };
    let mut b = join_bounded(&hub, newcomer("bob", None), 1000, 64 * 1024);
    assert!(b.evicted.try_recv().is_err(), "evicted for its own history");
    let mut frames = Vec::new();
    while let Ok(frame) = b.rx.try_recv() {
        frames.push(frame);
    }
    let replayed: Vec<&Message> = frames
        .iter()
        .filter(|f| f.to_text().is_ok_and(|t| t.contains("\"history\":true")))
        .collect();
    // Half of 64 KiB holds three of these.
    assert_eq!(replayed.len(), 3);
    // Resuming from the start: the latest that fit, the rest counted as missed.
    let mut c = join_bounded(&hub, newcomer("carol", Some(0)), 1000, 64 * 1024);
    let (texts, others) = history_of(&mut c);
    assert_eq!(texts.len(), 3);
    assert!(
        matches!(&others[0], Event::Gap(g) if g.missed == 17),
        "{others:?}"
    );
    // Every replay of a message sends the same bytes: encoded once.
    let mut d = join_bounded(&hub, newcomer("dave", None), 1000, 64 * 1024);
    let again: Vec<Message> = std::iter::from_fn(|| d.rx.try_recv().ok())
        .filter(|f| f.to_text().is_ok_and(|t| t.contains("\"history\":true")))
        .collect();
    assert_eq!(again.len(), 3);
    for (first, second) in replayed.iter().zip(&again) {
        let (Message::Text(first), Message::Text(second)) = (first, second) else {
            panic!("not text");
        };
        assert_eq!(first.as_str().as_ptr(), second.as_str().as_ptr());
    }
}

#[test]
fn a_resume_larger_than_the_outbox_is_cut_with_a_gap() {
    let hub = hub(HubConfig::default());
    let a = join(&hub, "lobby", Some("alice"), false, 64);
    for i in 1..=40 {
        say(&hub, &a, &format!("m{i}")).unwrap();
    }
    let req = JoinRequest {
        room: "lobby".into(),
        name: Some("bob".into()),
        since: Some(0),
        ..JoinRequest::default()
    };
    let mut b = join_with(&hub, req, 20);
    let (texts, others) = history_of(&mut b);
    // 20 frames: welcome, gap, 12 messages... whatever fits, the newest, and a gap first.
    let Event::Gap(gap) = &others[0] else {
        panic!("{others:?}")
    };
    assert_eq!(gap.missed as usize + texts.len(), 40);
    assert_eq!(texts.last().map(String::as_str), Some("m40"));
}

#[test]
fn private_messages_reach_only_their_target() {
    let hub = hub(HubConfig::default());
    let mut a = join(&hub, "one", Some("alice"), false, 16);
    let mut b = join(&hub, "two", Some("bob"), false, 16);
    let mut c = join(&hub, "one", Some("carol"), false, 16);
    events(&mut a);
    events(&mut b);
    events(&mut c);
    let post = Post {
        content: "psst".into(),
        to: Some("bob".into()),
        ..Post::default()
    };
    hub.chat(a.id, post.clone()).unwrap();
    let got = |m: &mut TestMember| -> Vec<ChatEvent> {
        events(m)
            .into_iter()
            .filter_map(|e| match e {
                Event::Chat(c) => Some(c),
                _ => None,
            })
            .collect()
    };
    let to_bob = got(&mut b);
    assert_eq!(to_bob.len(), 1);
    assert!(to_bob[0].private && to_bob[0].to.as_deref() == Some("bob"));
    assert_eq!(got(&mut a).len(), 1, "the sender gets its copy");
    assert!(got(&mut c).is_empty());
    let to_nobody = Post {
        to: Some("zed".into()),
        ..post
    };
    assert_eq!(
        hub.chat(a.id, to_nobody),
        Err(ChatError::NoSuchMember("zed".into()))
    );
}

#[test]
fn moving_rooms_rooms_and_who() {
    let hub = hub(HubConfig::default());
    let mut a = join(&hub, "lobby", Some("alice"), false, 32);
    let _b = join(&hub, "lobby", Some("bob"), false, 32);
    hub.move_to(a.id, "dev").unwrap();
    assert!(hub.move_to(a.id, "bad room").is_err());
    let Message::Text(rooms) = hub.rooms() else {
        panic!()
    };
    let rooms: Event = serde_json::from_str(&rooms).unwrap();
    assert_eq!(
        rooms,
        Event::Rooms(RoomsEvent {
            rooms: vec![
                RoomInfo {
                    name: "dev".into(),
                    count: 1
                },
                RoomInfo {
                    name: "lobby".into(),
                    count: 1
                }
            ],
            total: 2,
        })
    );
    assert_eq!(hub.who(a.id, None).members, ["alice"]);
    // The name moved with its holder.
    assert!(try_join(&hub, "x", Some("alice"), false, 4).is_err());
    let welcomes = events(&mut a)
        .into_iter()
        .filter(|e| matches!(e, Event::System(s) if s.event == Notice::Welcome))
        .count();
    assert_eq!(welcomes, 2);
}

#[test]
fn a_large_room_hears_of_joins_and_leaves_in_one_summary_per_interval() {
    let hub = hub(HubConfig {
        echo: false,
        history: 0,
        ..HubConfig::default()
    });
    let mut first = join(&hub, "big", Some("m0"), false, 1 << 16);
    let mut members = Vec::new();
    for i in 1..=1000 {
        members.push(join(&hub, "big", Some(&format!("m{i}")), false, 1 << 16));
    }
    let left = members.pop().unwrap();
    hub.leave(left.id);
    // Up to the threshold, a notice and a count each; past it, nothing until the flush.
    let before = events(&mut first).len();
    assert!(before <= 2 * COALESCE_ABOVE + 2, "{before} frames");
    let late = &mut members[999 - 1];
    assert!(events(late)
        .iter()
        .all(|e| !matches!(e, Event::Presence(_))));
    hub.flush_presence();
    let summary: Vec<Event> = events(&mut first);
    let [Event::Presence(p)] = &summary[..] else {
        panic!("{summary:?}")
    };
    assert_eq!(p.count, 1000);
    // m0 is the first; the join that made the room larger than the threshold and every
    // later one are in the summary.
    assert_eq!(p.joins, 1001 - COALESCE_ABOVE);
    assert_eq!(p.leaves, 1);
    assert_eq!(p.joined.len(), 3);
    let message = p.message.as_deref().unwrap();
    assert!(
        message.ends_with(&format!(
            "and {} others joined · m1000 left · 1000 here",
            1001 - COALESCE_ABOVE - 3
        )),
        "{message}"
    );
    // Nothing new: no frame.
    hub.flush_presence();
    assert!(events(&mut first).is_empty());
}

#[test]
fn who_is_paged_and_counts_quiet_members() {
    let hub = hub(HubConfig::default());
    let a = join(&hub, "lobby", Some("a000"), false, 1 << 16);
    let _others: Vec<TestMember> = (1..250)
        .map(|i| join(&hub, "lobby", Some(&format!("a{i:03}")), false, 1 << 16))
        .collect();
    let _quiet = join(&hub, "lobby", Some("lurker"), true, 16);
    let page = hub.who(a.id, None);
    assert_eq!(page.members.len(), protocol::LIST_MAX);
    assert_eq!(page.members[0], "a000");
    assert_eq!(page.total, 251);
    assert_eq!(page.quiet, ["lurker"]);
    let next = page.next.clone().unwrap();
    assert_eq!(next, "a099");
    let page = hub.who(a.id, Some(&next));
    assert_eq!(page.members[0], "a100");
    let last = hub.who(a.id, page.next.as_deref());
    assert_eq!(last.members.len(), 50);
    assert_eq!(last.next, None);
    // The quiet member is counted in what the room hears, never announced.
    let mut b = join(&hub, "lobby", Some("b"), false, 16);
    let welcome = events(&mut b).remove(0);
    assert!(matches!(welcome, Event::System(s) if s.count == Some(252)));
}

#[test]
fn a_large_room_hears_a_new_count_from_other_instances_in_its_next_summary() {
    let hub = hub(HubConfig {
        echo: false,
        history: 0,
        ..HubConfig::default()
    });
    let mut members: Vec<TestMember> = (0..=COALESCE_ABOVE)
        .map(|i| join(&hub, "big", Some(&format!("m{i}")), false, 1 << 16))
        .collect();
    hub.flush_presence();
    for m in &mut members {
        events(m);
    }
    let census = |others| {
        hub.deliver(relay::Delivery::Census {
            room: "big".into(),
            others,
        })
    };
    census(10);
    census(20);
    assert!(events(&mut members[0]).is_empty(), "no frame per recount");
    hub.flush_presence();
    let summary = events(&mut members[0]);
    let [Event::Presence(p)] = &summary[..] else {
        panic!("{summary:?}")
    };
    assert_eq!(p.count, COALESCE_ABOVE + 1 + 20);
    assert_eq!(p.joins, 0);
}
