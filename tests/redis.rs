//! Several `wschat serve --redis` instances acting as one chat, against a real `redis-server`
//! started here on a free port (scripts/test.sh installs it).
//!
//! Every wait is for an event (a line printed, a frame received) bounded by `GUARD`; every
//! child process is killed when its guard is dropped.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

mod common;

use common::process::Logged;
use common::redis::RedisServer;

/// Upper bound for any single wait. Only reached when something is broken.
const GUARD: Duration = Duration::from_secs(20);

/// A running `wschat serve --port 0 --redis URL`; its stderr (logs) arrive as lines.
struct Instance {
    url: String,
    addr: String,
    logs: Logged,
}

impl Instance {
    fn start(redis: &str, extra: &[&str]) -> Instance {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wschat"))
            .args([
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--redis",
                redis,
            ])
            .args(extra)
            .env("NO_COLOR", "1")
            .env_remove("WSCHAT_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start wschat serve");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let logs = child.stderr.take().expect("piped");
        let mut line = String::new();
        stdout.read_line(&mut line).expect("listening line");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        let addr = url
            .trim_start_matches("ws://")
            .trim_end_matches('/')
            .to_owned();
        Instance {
            url,
            addr,
            logs: Logged::new(child, logs),
        }
    }

    fn healthz(&self) -> String {
        self.get("/healthz")
    }

    /// The whole HTTP response to `GET path`.
    fn get(&self, path: &str) -> String {
        let mut stream = TcpStream::connect(&self.addr).expect("connect");
        stream.set_read_timeout(Some(GUARD)).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }

    /// A counter or gauge from `/metrics`.
    fn metric(&self, name: &str) -> u64 {
        let metrics = self.get("/metrics");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("wschat_{name} ")))
            .unwrap_or_else(|| panic!("no metric {name} in {metrics}"))
            .parse()
            .unwrap()
    }
}

/// A `redis-server` and two instances sharing it (dropped in reverse: instances first).
fn two_instances() -> (tempfile::TempDir, RedisServer, Instance, Instance) {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let a = Instance::start(&redis.url(), &[]);
    let b = Instance::start(&redis.url(), &[]);
    (dir, redis, a, b)
}

type Ws = WebSocket<TcpStream>;

fn connect(url: &str, query: &str) -> Ws {
    let addr = url.trim_start_matches("ws://").trim_end_matches('/');
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(GUARD)).unwrap();
    stream.set_nodelay(true).unwrap();
    tungstenite::client(format!("{url}?{query}").as_str(), stream)
        .expect("WebSocket handshake")
        .0
}

fn next_event(ws: &mut Ws) -> Value {
    // Pings (and anything else skipped) do not extend the wait.
    let deadline = Instant::now() + GUARD;
    loop {
        assert!(Instant::now() < deadline, "no event within {GUARD:?}");
        match ws.read() {
            Ok(Message::Text(text)) => return serde_json::from_str(text.as_str()).unwrap(),
            Ok(Message::Close(frame)) => {
                return json!({"type": "close", "frame": format!("{frame:?}")})
            }
            Ok(_) => continue,
            Err(e) => panic!("no frame within {GUARD:?}: {e}"),
        }
    }
}

/// Connects a visible member and reads up to its `synced` (the welcome and any history).
fn member(url: &str, name: &str) -> Ws {
    member_in(url, name, "lobby")
}

fn member_in(url: &str, name: &str, room: &str) -> Ws {
    let mut ws = connect(url, &format!("name={name}&room={room}&history=0"));
    loop {
        let event = next_event(&mut ws);
        match event["type"].as_str() {
            Some("synced") => return ws,
            Some("error" | "close") => panic!("{name} refused: {event}"),
            _ => {}
        }
    }
}

fn say(ws: &mut Ws, text: &str, reference: u64) {
    let frame = json!({"type": "chat", "content": text, "ref": reference}).to_string();
    ws.send(Message::text(frame)).expect("send");
}

/// Reads until `n` chat messages arrived (skipping notices and acks); returns (id, text).
fn chats(ws: &mut Ws, n: usize) -> Vec<(u64, String)> {
    let mut got = Vec::new();
    while got.len() < n {
        let event = next_event(ws);
        if event["type"] == "chat" {
            got.push((
                event["id"].as_u64().unwrap_or(0),
                event["message"].as_str().unwrap_or_default().to_owned(),
            ));
        } else if event["type"] == "close" {
            panic!("closed after {got:?}: {event}");
        }
    }
    got
}

/// Reads until the ack for `reference`; returns its id.
fn ack(ws: &mut Ws, reference: u64) -> u64 {
    loop {
        let event = next_event(ws);
        if event["type"] == "ack" && event["ref"] == reference {
            return event["id"].as_u64().expect("ack id");
        }
    }
}

#[test]
fn three_instances_deliver_every_message_once_in_one_order() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let instances: Vec<Instance> = (0..3).map(|_| Instance::start(&redis.url(), &[])).collect();
    let mut members: Vec<(String, Ws)> = (0..6)
        .map(|i| {
            let name = format!("m{i}");
            let ws = member(&instances[i % 3].url, &name);
            (name, ws)
        })
        .collect();
    const EACH: usize = 15;
    // Everyone talks at once, interleaved across instances.
    for round in 0..EACH {
        for (name, ws) in &mut members {
            say(ws, &format!("{name}:{round}"), round as u64);
        }
    }
    let total = EACH * members.len();
    let mut orders = Vec::new();
    for (name, ws) in &mut members {
        let got = chats(ws, total - EACH);
        let texts: Vec<&str> = got.iter().map(|(_, t)| t.as_str()).collect();
        let unique: HashSet<&str> = texts.iter().copied().collect();
        assert_eq!(
            unique.len(),
            texts.len(),
            "{name} got a duplicate: {texts:?}"
        );
        assert!(
            !texts.iter().any(|t| t.starts_with(&format!("{name}:"))),
            "{name} got its own message back"
        );
        let ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "{name}: ids out of order: {ids:?}"
        );
        orders.push(got);
    }
    // The same order everywhere: one id per text, the same on every member.
    let mut id_of: HashMap<String, u64> = HashMap::new();
    for got in &orders {
        for (id, text) in got {
            let first = *id_of.entry(text.clone()).or_insert(*id);
            assert_eq!(first, *id, "{text} has two ids");
        }
    }
    assert_eq!(id_of.len(), total);
    let all: HashSet<u64> = id_of.values().copied().collect();
    assert_eq!(all, (1..=total as u64).collect(), "ids are 1..={total}");
}

#[test]
fn a_client_resumes_on_another_instance_without_gap_or_duplicate() {
    let (_dir, _redis, a, b) = two_instances();
    let mut talker = member(&b.url, "talker");
    let mut alice = member(&a.url, "alice");
    for i in 1..=5 {
        say(&mut talker, &format!("before {i}"), i);
    }
    let seen = chats(&mut alice, 5);
    let last = seen.last().unwrap().0;
    drop(alice);
    // While alice is away.
    for i in 1..=4 {
        say(&mut talker, &format!("away {i}"), 10 + i);
        ack(&mut talker, 10 + i);
    }
    // Under another name: instance a may not have released "alice" in Redis yet (wschat join
    // retries that refusal; the resume is what is tested here).
    let mut alice = connect(&b.url, &format!("name=alice-again&since={last}"));
    let mut replayed = Vec::new();
    loop {
        let event = next_event(&mut alice);
        match event["type"].as_str() {
            Some("chat") => {
                assert_eq!(event["history"], true);
                replayed.push(event["message"].as_str().unwrap().to_owned());
            }
            Some("gap") => panic!("unexpected gap: {event}"),
            Some("synced") => {
                assert_eq!(event["id"], last + 4);
                break;
            }
            Some("error" | "close") => panic!("refused: {event}"),
            _ => {}
        }
    }
    assert_eq!(replayed, ["away 1", "away 2", "away 3", "away 4"]);
    say(&mut talker, "live", 99);
    assert_eq!(chats(&mut alice, 1), [(last + 5, "live".to_owned())]);
}

#[test]
fn names_are_global_and_who_lists_every_instance() {
    let (_dir, _redis, mut a, b) = two_instances();
    // A quiet watcher on b hears alice's join once the log has it (and so Redis her name and
    // her instance's count): the welcome below counts her.
    let mut watcher = connect(&b.url, "quiet=1&history=0");
    let alice = member(&a.url, "alice");
    notice(&mut watcher, "join", "alice");
    let mut second = connect(&b.url, "name=alice");
    let refusal = next_event(&mut second);
    assert_eq!(refusal["type"], "error", "{refusal}");
    assert_eq!(refusal["code"], "name_taken");
    let close = next_event(&mut second);
    assert!(
        close["frame"].as_str().unwrap_or_default().contains("4009"),
        "{close}"
    );
    let mut bob = connect(&b.url, "name=bob");
    let welcome = next_event(&mut bob);
    assert_eq!(welcome["event"], "welcome", "{welcome}");
    assert_eq!(
        welcome["count"], 3,
        "alice (on the other instance) counts, and so does the quiet watcher: {welcome}"
    );
    bob.send(Message::text(r#"{"type":"who"}"#)).unwrap();
    loop {
        let event = next_event(&mut bob);
        if event["type"] == "who" {
            assert_eq!(event["members"], json!(["alice", "bob"]));
            break;
        }
    }
    // A name given back is free everywhere.
    drop(alice);
    a.logs.wait_for("disconnected");
    let mut again = connect(&b.url, "name=alice");
    loop {
        let event = next_event(&mut again);
        match event["type"].as_str() {
            Some("synced") => break,
            Some("error" | "close") => panic!("alice still taken: {event}"),
            _ => {}
        }
    }
}

#[test]
fn instances_recover_when_redis_restarts_and_keep_acknowledged_history() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisServer::start(dir.path());
    let mut instances: Vec<Instance> = (0..3).map(|_| Instance::start(&redis.url(), &[])).collect();
    let mut m0 = member(&instances[0].url, "m0");
    let mut m1 = member(&instances[1].url, "m1");
    let mut m2 = member(&instances[2].url, "m2");
    let mut m3 = member(&instances[1].url, "m3");
    for i in 1..=3 {
        say(&mut m0, &format!("before {i}"), i);
        assert_eq!(ack(&mut m0, i), i);
    }
    for ws in [&mut m1, &mut m2, &mut m3] {
        assert_eq!(chats(ws, 3).last().unwrap(), &(3, "before 3".to_owned()));
    }

    redis.kill();
    for instance in &mut instances {
        instance.logs.wait_for("unreachable");
        assert!(instance.healthz().contains("\r\n\r\nok\nredis: down\n"));
    }
    // Redis is away: local members still get it (without an id), the rest once it is back.
    say(&mut m1, "during", 4);
    assert_eq!(chats(&mut m3, 1), [(0, "during".to_owned())]);

    redis.restart(dir.path());
    let back = format!("{} reachable", redis.url());
    for instance in &mut instances {
        instance.logs.wait_for(&back);
    }
    assert_eq!(ack(&mut m1, 4), 4, "acknowledged once stored in Redis");
    assert_eq!(chats(&mut m0, 1), [(4, "during".to_owned())]);
    assert_eq!(chats(&mut m2, 1), [(4, "during".to_owned())]);
    say(&mut m2, "after", 5);
    for ws in [&mut m0, &mut m1, &mut m3] {
        // m3 does not get "during" a second time: the next chat is "after".
        assert_eq!(chats(ws, 1), [(5, "after".to_owned())]);
    }
    for instance in &instances {
        assert!(instance.healthz().contains("redis: up"));
    }
    // Everything acknowledged before the restart is still in history, on every instance.
    for instance in &instances {
        let mut reader = connect(&instance.url, "quiet=1&history=100");
        let mut history = Vec::new();
        loop {
            let event = next_event(&mut reader);
            match event["type"].as_str() {
                Some("chat") => history.push(event["message"].as_str().unwrap().to_owned()),
                Some("synced") => break,
                _ => {}
            }
        }
        assert_eq!(
            history,
            ["before 1", "before 2", "before 3", "during", "after"]
        );
    }
}

/// Round trips of `n` messages from `sender` to `receiver`, one at a time; sorted.
fn round_trips(sender: &mut Ws, receiver: &mut Ws, n: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        say(sender, &format!("ping {i}"), i as u64);
        let got = chats(receiver, 1);
        times.push(started.elapsed());
        assert_eq!(got[0].1, format!("ping {i}"));
    }
    times.sort();
    times
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Measures what a hop through Redis costs: sender and receiver on one plain instance (no
/// Redis), on one instance with Redis, and on two instances. Prints the figures quoted in
/// docs/scaling.md (`cargo test --release --test redis latency -- --ignored --nocapture`).
/// A measurement, not a check: it asserts nothing, so it runs only when asked.
#[test]
#[ignore = "a measurement: cargo test --release --test redis latency -- --ignored --nocapture"]
fn latency_across_instances_compared_with_one_instance() {
    const N: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let fast = ["--rate", "0"];
    let plain = {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wschat"))
            .args(["serve", "--host", "127.0.0.1", "--port", "0", "--rate", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start wschat serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line.trim().trim_start_matches("listening on ").to_owned();
        (Logged::new(child, std::io::empty()), url)
    };
    let a = Instance::start(&redis.url(), &fast);
    let b = Instance::start(&redis.url(), &fast);
    let mut figures = Vec::new();
    for (label, from, to) in [
        ("one instance, no redis", &plain.1, &plain.1),
        ("one instance, redis", &a.url, &a.url),
        ("two instances, redis", &a.url, &b.url),
    ] {
        let room = format!("room{}", figures.len());
        let mut sender = connect(from, &format!("name=s{room}&room={room}&history=0"));
        let mut receiver = member_in(to, &format!("r{room}"), &room);
        // Warm up, then measure.
        round_trips(&mut sender, &mut receiver, 20);
        let times = round_trips(&mut sender, &mut receiver, N);
        figures.push((label, percentile(&times, 0.5), percentile(&times, 0.99)));
    }
    let base = figures[0].1.as_secs_f64();
    for (label, p50, p99) in &figures {
        println!(
            "latency {label}: p50 {p50:?} p99 {p99:?} ({:.1}x the p50 of one instance)",
            p50.as_secs_f64() / base
        );
    }
}

fn who(ws: &mut Ws) -> Value {
    ws.send(Message::text(r#"{"type":"who"}"#)).unwrap();
    loop {
        let event = next_event(ws);
        if event["type"] == "who" {
            return event["members"].clone();
        }
    }
}

/// An instance that dies without cleaning up stops counting once its heartbeat expires (at
/// most 30 s): its names and heartbeat live on leases that only it renews.
#[test]
fn a_dead_instance_stops_counting_when_its_lease_expires() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let mut a = Instance::start(&redis.url(), &[]);
    let line = a.logs.wait_for("sharing rooms through redis");
    let id = line
        .split("instance=")
        .nth(1)
        .map(|rest| rest.trim().trim_matches('"').to_owned())
        .expect("instance id in the log");
    let b = Instance::start(&redis.url(), &[]);
    let _alice = member(&a.url, "alice");
    let mut bob = member(&b.url, "bob");
    assert_eq!(who(&mut bob), json!(["alice", "bob"]));

    // SIGKILL: no leave, no cleanup.
    drop(a);
    let mut connection = redis::Client::open(redis.url())
        .and_then(|c| c.get_connection())
        .unwrap();
    for key in [
        format!("wschat:instance:{id}"),
        "wschat:name:alice".to_owned(),
    ] {
        let ttl: i64 = redis::cmd("TTL").arg(&key).query(&mut connection).unwrap();
        assert!(
            (1..=30).contains(&ttl),
            "{key} expires within 30 s (TTL {ttl})"
        );
    }
    // Let the heartbeat expire now rather than wait for it.
    let _: () = redis::cmd("DEL")
        .arg(format!("wschat:instance:{id}"))
        .query(&mut connection)
        .unwrap();
    // Asking who is there counts the room again: bob hears that he is alone now, then the answer.
    bob.send(Message::text(r#"{"type":"who"}"#)).unwrap();
    presence(&mut bob, 1);
    let answer = until(&mut bob, "who", |e| e["type"] == "who");
    assert_eq!(answer["members"], json!(["bob"]));
}

fn redis_command(url: &str, args: &[&str]) -> redis::Value {
    let mut connection = redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .unwrap();
    let mut command = redis::cmd(args[0]);
    for arg in &args[1..] {
        command.arg(*arg);
    }
    command.query(&mut connection).unwrap()
}

/// `wschat history` against an instance that never saw the room: served from the room's
/// stream, with the same gap line as the embedded stores when Redis no longer keeps the start.
#[test]
fn history_and_gap_come_from_redis_on_any_instance() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let a = Instance::start(&redis.url(), &[]);
    let mut talker = member(&a.url, "talker");
    for i in 1..=10 {
        say(&mut talker, &format!("m{i}"), i);
        assert_eq!(ack(&mut talker, i), i);
    }
    // Redis keeps only the last 3 (what `MAXLEN ~ --keep` eventually does to a long room).
    redis_command(&redis.url(), &["XTRIM", "wschat:room:lobby", "MAXLEN", "3"]);
    let b = Instance::start(&redis.url(), &[]);
    let history = |extra: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_wschat"))
            .args(["history", "--url", &b.url])
            .args(extra)
            .env("NO_COLOR", "1")
            .output()
            .expect("run wschat history");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                // "#8 TIMESTAMP talker says: m8" without the timestamp.
                let mut words = l.splitn(3, ' ');
                let first = words.next().unwrap_or_default().to_owned();
                if first == "#" {
                    l.to_owned()
                } else {
                    words.next();
                    format!("{first} {}", words.next().unwrap_or_default())
                }
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        history(&["--since", "0"]),
        [
            "# missed 7 message(s) that are no longer kept",
            "#8 talker says: m8",
            "#9 talker says: m9",
            "#10 talker says: m10"
        ]
    );
    assert_eq!(
        history(&["--limit", "2"]),
        ["#9 talker says: m9", "#10 talker says: m10"]
    );
}

/// Redis restarted without its data (no persistence): ids go on from where the instances
/// were, never backwards, so nothing is mistaken for a message already delivered.
#[test]
fn ids_never_go_back_when_redis_loses_its_data() {
    let (_dir, redis, a, b) = two_instances();
    let mut m0 = member(&a.url, "m0");
    let mut m1 = member(&b.url, "m1");
    for i in 1..=3 {
        say(&mut m0, &format!("m{i}"), i);
        assert_eq!(ack(&mut m0, i), i);
    }
    assert_eq!(chats(&mut m1, 3).last().unwrap().0, 3);
    redis_command(&redis.url(), &["FLUSHALL"]);
    say(&mut m0, "after the loss", 4);
    assert_eq!(ack(&mut m0, 4), 4);
    assert_eq!(chats(&mut m1, 1), [(4, "after the loss".to_owned())]);
}

/// Reads events until one matches `wanted`; returns it. Everything else is skipped.
fn until(ws: &mut Ws, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
    let mut skipped = Vec::new();
    loop {
        let event = next_event(ws);
        if wanted(&event) {
            return event;
        }
        assert_ne!(
            event["type"], "close",
            "{what}: closed; before: {skipped:#?}"
        );
        skipped.push(event);
    }
}

fn notice(ws: &mut Ws, kind: &str, name: &str) -> Value {
    until(ws, &format!("{kind} notice for {name}"), |e| {
        e["type"] == "system" && e["event"] == kind && e["name"] == name
    })
}

fn presence(ws: &mut Ws, count: u64) -> Value {
    until(ws, &format!("presence {count}"), |e| {
        e["type"] == "presence" && e["count"] == count
    })
}

/// Join, leave and rename notices reach the room's members on every instance, and every
/// count (notices, presence events, welcome) is the room's total across instances.
#[test]
fn notices_and_counts_cover_every_instance() {
    let (_dir, _redis, a, b) = two_instances();
    let mut alice = member(&a.url, "alice");
    let mut bob = member(&b.url, "bob");
    let joined = notice(&mut alice, "join", "bob");
    assert_eq!(joined["message"], "bob joined the chat");
    assert_eq!(joined["count"], 2, "{joined}");
    presence(&mut alice, 2);

    let mut carol = connect(&a.url, "name=carol&history=0");
    let welcome = next_event(&mut carol);
    assert_eq!(welcome["event"], "welcome", "{welcome}");
    assert_eq!(welcome["count"], 3, "{welcome}");
    for ws in [&mut alice, &mut bob] {
        assert_eq!(notice(ws, "join", "carol")["count"], 3);
        presence(ws, 3);
    }

    bob.send(Message::text(
        r#"{"type":"setUsername","username":"robert"}"#,
    ))
    .unwrap();
    for ws in [&mut alice, &mut carol] {
        let renamed = notice(ws, "rename", "robert");
        assert_eq!(renamed["message"], "bob is now known as robert");
    }

    // Carol leaves instance A; robert, on B, hears it with the new total.
    drop(carol);
    let left = notice(&mut bob, "leave", "carol");
    assert_eq!(left["count"], 2, "{left}");
    presence(&mut bob, 2);
    // Alice leaves: nobody is left on A, and B still hears it.
    drop(alice);
    assert_eq!(notice(&mut bob, "leave", "alice")["count"], 1);
    presence(&mut bob, 1);
}

/// `/msg` reaches a member of another instance, privately; the sender's ack counts it, and a
/// name nobody holds anywhere is an error.
#[test]
fn private_messages_reach_members_of_other_instances() {
    let (_dir, _redis, a, b) = two_instances();
    let mut alice = member(&a.url, "alice");
    let mut bob = member_in(&b.url, "bob", "elsewhere");
    let mut carol = member(&b.url, "carol");
    let psst = json!({"type": "chat", "content": "psst", "to": "bob", "ref": 5}).to_string();
    alice.send(Message::text(psst)).unwrap();
    let copy = until(&mut alice, "the sender's copy", |e| e["type"] == "chat");
    assert_eq!(
        (copy["private"].clone(), copy["to"].clone()),
        (json!(true), json!("bob"))
    );
    let ack = until(&mut alice, "the ack", |e| e["type"] == "ack");
    assert_eq!(
        (ack["ref"].clone(), ack["delivered"].clone()),
        (json!(5), json!(1)),
        "{ack}"
    );
    let got = until(&mut bob, "the private message", |e| e["type"] == "chat");
    assert_eq!(got["message"], "psst");
    assert_eq!(got["username"], "alice");
    assert_eq!(got["private"], true);

    // Nobody else got it: the next chat carol sees is a room message sent after it.
    say(&mut alice, "to the room", 6);
    let next = until(&mut carol, "a chat", |e| e["type"] == "chat");
    assert_eq!(next["message"], "to the room", "{next}");
    assert_eq!(next["private"], json!(null), "{next}");

    let nobody = json!({"type": "chat", "content": "hello?", "to": "zed", "ref": 7}).to_string();
    alice.send(Message::text(nobody)).unwrap();
    let error = until(&mut alice, "an error", |e| e["type"] == "error");
    assert_eq!(error["code"], "no_such_member", "{error}");
    assert_eq!(error["ref"], 7);
}

/// `/rooms` lists the rooms of every instance with their total counts, and a room message's
/// ack counts the recipients on every instance.
#[test]
fn rooms_and_acks_count_every_instance() {
    let (_dir, _redis, a, b) = two_instances();
    let mut alice = member(&a.url, "alice");
    let _dave = member_in(&b.url, "dave", "dev");
    let mut bob = member(&b.url, "bob");
    // Bob's join (and dave's before it) has gone round the log once alice hears it: the counts
    // are in Redis.
    notice(&mut alice, "join", "bob");
    alice.send(Message::text(r#"{"type":"rooms"}"#)).unwrap();
    let rooms = until(&mut alice, "rooms", |e| e["type"] == "rooms");
    assert_eq!(
        rooms["rooms"],
        json!([{"name": "dev", "count": 1}, {"name": "lobby", "count": 2}])
    );
    say(&mut alice, "hello", 9);
    let ack = until(&mut alice, "the ack", |e| e["type"] == "ack");
    assert_eq!(ack["delivered"], 1, "bob, on the other instance: {ack}");
    assert_eq!(chats(&mut bob, 1)[0].1, "hello");
    // A quiet sender (as `wschat send`) where nobody else is in the room here: its ack counts
    // the members of the other instance, as `send --min-recipients` needs.
    let sent = Command::new(env!("CARGO_BIN_EXE_wschat"))
        .args([
            "send",
            "carol",
            "to dev",
            "--room",
            "dev",
            "--min-recipients",
            "1",
        ])
        .args(["--url", &a.url])
        .env("NO_COLOR", "1")
        .output()
        .expect("run wschat send");
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
}

/// A TCP proxy in front of redis-server that can cut one instance off and let it back.
struct Cuttable {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl Cuttable {
    fn start(upstream: u16) -> Cuttable {
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let proxy = Cuttable {
            port,
            cut: Default::default(),
            open: Default::default(),
        };
        let (cut, open) = (proxy.cut.clone(), proxy.open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                if cut.load(Ordering::SeqCst) {
                    continue; // dropped: refused while cut
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let mut sockets = open.lock().unwrap();
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server.try_clone().unwrap(), client.try_clone().unwrap()),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
                sockets.extend([client, server]);
            }
        });
        proxy
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Ends every connection through the proxy and refuses new ones.
    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for socket in self.open.lock().unwrap().drain(..) {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// One instance loses Redis while the others keep it: it goes on serving its own members,
/// says so in `/healthz`, and when Redis is back it catches up on what the others said
/// meanwhile and shares what its members said, each message once.
#[test]
fn an_instance_cut_off_from_redis_catches_up_when_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let proxy = Cuttable::start(redis.port);
    let a = Instance::start(&redis.url(), &[]);
    let mut b = Instance::start(&proxy.url(), &[]);
    let mut alice = member(&a.url, "alice");
    let mut bob = member(&b.url, "bob");
    let mut carol = member(&b.url, "carol");
    say(&mut alice, "before", 1);
    assert_eq!(chats(&mut bob, 1)[0].1, "before");
    assert_eq!(chats(&mut carol, 1)[0].1, "before");

    proxy.cut();
    b.logs.wait_for("unreachable");
    assert!(b.healthz().contains("redis: down"), "{}", b.healthz());
    say(&mut alice, "while b is away", 2);
    let away_id = ack(&mut alice, 2);
    say(&mut bob, "from b meanwhile", 3);
    // Carol, on bob's instance, hears him at once (without an id: the log has none yet).
    assert_eq!(chats(&mut carol, 1), [(0, "from b meanwhile".to_owned())]);

    proxy.restore();
    b.logs.wait_for(" reachable");
    // Bob and carol catch up on alice's message; then bob's is in the log, after it.
    assert_eq!(
        chats(&mut bob, 1),
        [(away_id, "while b is away".to_owned())]
    );
    assert_eq!(
        chats(&mut carol, 1),
        [(away_id, "while b is away".to_owned())]
    );
    let bob_id = ack(&mut bob, 3);
    assert!(
        bob_id > away_id,
        "ids follow the log: {bob_id} after {away_id}"
    );
    assert_eq!(
        chats(&mut alice, 1),
        [(bob_id, "from b meanwhile".to_owned())]
    );
    // Nothing twice: the next message anyone sees is the next one sent.
    say(&mut alice, "after", 4);
    for ws in [&mut bob, &mut carol] {
        assert_eq!(chats(ws, 1)[0].1, "after");
    }
    assert!(!b.healthz().contains("redis: down"));
}

/// A post Redis refuses (here: the room's counter is not a number) is retried, then dropped
/// after a few attempts; the posts queued behind it go out afterwards, in order.
#[test]
fn a_post_redis_refuses_does_not_hold_up_the_ones_after_it() {
    let (_dir, redis, a, b) = two_instances();
    redis_command(
        &redis.url(),
        &["HSET", "wschat:room:broken:seq", "not", "a counter"],
    );
    let mut bob = member(&b.url, "bob");
    let mut alice = member_in(&a.url, "alice", "broken");
    // One connection, so these are queued in this order: a post that is refused, then the
    // notices of the move to the lobby, then a post there.
    say(&mut alice, "never stored", 1);
    alice
        .send(Message::text(r#"{"type":"join","room":"lobby"}"#))
        .unwrap();
    say(&mut alice, "after", 2);
    let joined = notice(&mut bob, "join", "alice");
    assert_eq!(joined["room"], "lobby");
    assert_eq!(chats(&mut bob, 1)[0].1, "after");
    // Its sender is told, with the message's ref.
    let refused = until(&mut alice, "the refusal", |e| e["type"] == "error");
    assert_eq!(
        (refused["code"].as_str(), refused["ref"].as_u64()),
        (Some("unavailable"), Some(1))
    );
    assert_eq!(a.metric("relay_refused_total"), 1);
    assert_eq!(a.metric("relay_queued"), 0);
    assert!(
        a.healthz().contains("redis: up"),
        "a refusal is not an outage"
    );
}

/// What one receiver got, per sender: (sequence number, id) in the order they arrived.
#[derive(Default)]
struct Received {
    by_sender: HashMap<String, Vec<(u64, u64)>>,
    /// Every id other than 0, in the order they arrived.
    ids: Vec<u64>,
    /// Senders whose last message ("end") arrived.
    ended: HashSet<String>,
}

/// A receiver's tally, shared with the test's thread, which waits on `changed`.
#[derive(Default)]
struct Tally {
    got: std::sync::Mutex<Received>,
    changed: std::sync::Condvar,
}

impl Tally {
    /// Waits (at most `GUARD` without any news) until `done` holds.
    fn wait(&self, what: &str, done: impl Fn(&Received) -> bool) {
        let mut got = self.got.lock().unwrap();
        while !done(&got) {
            let (next, timeout) = self.changed.wait_timeout(got, GUARD).unwrap();
            assert!(!timeout.timed_out(), "{what}: nothing new within {GUARD:?}");
            got = next;
        }
    }
}

/// Reads `ws` until every sender in `senders` said "end", recording each chat message
/// (`NAME SEQ` from the publishers) in `tally`.
fn receive(mut ws: Ws, senders: usize, tally: std::sync::Arc<Tally>) {
    loop {
        let event = next_event(&mut ws);
        assert_ne!(event["type"], "close", "a receiver was closed: {event}");
        if event["type"] != "chat" {
            continue;
        }
        let from = event["username"].as_str().unwrap().to_owned();
        let id = event["id"].as_u64().unwrap_or(0);
        let text = event["message"].as_str().unwrap();
        let mut got = tally.got.lock().unwrap();
        if id != 0 {
            got.ids.push(id);
        }
        match text.rsplit_once(' ').and_then(|(_, n)| n.parse().ok()) {
            Some(seq) => got.by_sender.entry(from).or_default().push((seq, id)),
            None => {
                assert_eq!(text, "end", "unexpected message from {from}");
                got.ended.insert(from);
            }
        }
        let done = got.ended.len() == senders;
        drop(got);
        tally.changed.notify_all();
        if done {
            return;
        }
    }
}

/// Posts `NAME 1`, `NAME 2`, … at `per_second` (each with its number as `ref`) until `stop`,
/// then `end`; returns how many it posted, once every one of them was acknowledged.
fn publish(
    mut ws: Ws,
    name: &str,
    per_second: u32,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> u64 {
    let every = Duration::from_secs(1) / per_second;
    let mut next = Instant::now();
    let mut seq = 0;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        seq += 1;
        say(&mut ws, &format!("{name} {seq}"), seq);
        // The publishing rate (load, not synchronisation).
        next += every;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    say(&mut ws, "end", seq + 1);
    let mut acked = HashSet::new();
    while acked.len() as u64 <= seq {
        let event = next_event(&mut ws);
        match event["type"].as_str() {
            Some("ack") => {
                acked.insert(event["ref"].as_u64().unwrap());
            }
            Some("error" | "close") => panic!("{name}: {event}"),
            _ => {}
        }
    }
    seq
}

/// One sender's order survives whatever Redis does. Redis is stopped (SIGSTOP: no error, no
/// answer) while a publisher on each of two instances posts 50 messages/s: the posts made
/// before Redis is declared down (after the 2 s command timeout) are held, and must not be
/// overtaken by the later ones, which go to the instance's own members at once. Every
/// receiver gets every message once, in each sender's order, ids in increasing order.
#[test]
fn a_stalled_redis_does_not_reorder_a_senders_messages() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let mut a = Instance::start(&redis.url(), &["--rate", "0"]);
    let mut b = Instance::start(&redis.url(), &["--rate", "0"]);
    let instances = [("a", &a.url), ("b", &b.url)];
    let tallies: Vec<(String, Arc<Tally>)> = instances
        .iter()
        .map(|(at, url)| {
            let name = format!("reader-{at}");
            let ws = member(url, &name);
            let tally = Arc::new(Tally::default());
            let mine = tally.clone();
            std::thread::spawn(move || receive(ws, 2, mine));
            (name, tally)
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = instances
        .iter()
        .map(|(at, url)| {
            let name = format!("writer-{at}");
            let ws = connect(url, &format!("name={name}&quiet=1"));
            let stop = stop.clone();
            std::thread::spawn(move || (name.clone(), publish(ws, &name, 50, stop)))
        })
        .collect();
    let count = |got: &Received, sender: &str, with_id: bool| {
        got.by_sender.get(sender).map_or(0, |m| {
            m.iter().filter(|(_, id)| (*id != 0) == with_id).count()
        })
    };
    // Flowing through Redis.
    for (_, tally) in &tallies {
        tally.wait("messages before the stall", |got| {
            count(got, "writer-a", true) >= 25 && count(got, "writer-b", true) >= 25
        });
    }

    redis.signal("STOP");
    a.logs.wait_for("unreachable");
    b.logs.wait_for("unreachable");
    // Each instance's own members go on hearing its publisher, without ids.
    tallies[0].1.wait("local messages on a", |got| {
        count(got, "writer-a", false) >= 25
    });
    tallies[1].1.wait("local messages on b", |got| {
        count(got, "writer-b", false) >= 25
    });
    redis.signal("CONT");
    let back = format!("{} reachable", redis.url());
    a.logs.wait_for(&back);
    b.logs.wait_for(&back);
    // Flowing through Redis again: everyone hears both publishers with ids.
    let before: Vec<(usize, usize)> = tallies
        .iter()
        .map(|(_, t)| {
            let got = t.got.lock().unwrap();
            (count(&got, "writer-a", true), count(&got, "writer-b", true))
        })
        .collect();
    for ((_, tally), (from_a, from_b)) in tallies.iter().zip(before) {
        tally.wait("messages after the stall", |got| {
            count(got, "writer-a", true) >= from_a + 25
                && count(got, "writer-b", true) >= from_b + 25
        });
    }
    stop.store(true, Ordering::SeqCst);
    let sent: HashMap<String, u64> = publishers
        .into_iter()
        .map(|p| p.join().expect("a publisher failed"))
        .collect();
    for (_, tally) in &tallies {
        tally.wait("the last messages", |got| got.ended.len() == 2);
    }

    // Per receiver and sender: delivered, duplicated, out of order, lost.
    let mut failures = Vec::new();
    for (receiver, tally) in &tallies {
        let got = tally.got.lock().unwrap();
        for (sender, &posted) in &sent {
            let arrived = got.by_sender.get(sender).cloned().unwrap_or_default();
            let distinct: HashSet<u64> = arrived.iter().map(|(seq, _)| *seq).collect();
            let duplicated = arrived.len() - distinct.len();
            let mut highest = 0;
            let mut out_of_order = 0;
            for (seq, _) in &arrived {
                if *seq < highest {
                    out_of_order += 1;
                }
                highest = highest.max(*seq);
            }
            let lost = posted - distinct.len() as u64;
            let local = arrived.iter().filter(|(_, id)| *id == 0).count();
            println!(
                "{receiver} from {sender}: posted {posted}, delivered {}, without id {local}, duplicated {duplicated}, out of order {out_of_order}, lost {lost}",
                distinct.len()
            );
            if duplicated + out_of_order > 0 || lost > 0 {
                failures.push(format!("{receiver} from {sender}"));
            }
        }
        let ids_in_order = got.ids.windows(2).all(|w| w[0] < w[1]);
        if !ids_in_order {
            failures.push(format!("{receiver}: ids out of order"));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

/// Reads until the connection closes; returns every event before the close and the close.
fn until_closed(ws: &mut Ws) -> (Vec<Value>, Value) {
    let mut before = Vec::new();
    loop {
        let event = next_event(ws);
        if event["type"] == "close" {
            return (before, event);
        }
        before.push(event);
    }
}

/// While Redis is away each instance gives names on its own, so two members can get one name.
/// When Redis is back the one who had it first keeps it; the other is told (`name_taken`) and
/// closed with 4009, and private messages go to the holder only.
#[test]
fn a_name_given_twice_during_an_outage_is_settled_when_redis_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisServer::start(dir.path());
    let mut a = Instance::start(&redis.url(), &[]);
    let mut b = Instance::start(&redis.url(), &[]);
    let mut c = Instance::start(&redis.url(), &[]);
    let mut alice = member(&a.url, "alice");
    let mut dave = member(&c.url, "dave");

    redis.kill();
    for instance in [&mut a, &mut b, &mut c] {
        instance.logs.wait_for("unreachable");
    }
    // b cannot ask Redis: it gives the name to a second alice.
    let mut second = member(&b.url, "alice");

    redis.restart(dir.path());
    let back = format!("{} reachable", redis.url());
    for instance in [&mut a, &mut b, &mut c] {
        instance.logs.wait_for(&back);
    }
    // A private message sent now goes to the alice Redis knows, whoever else is called alice.
    let psst = json!({"type": "chat", "content": "psst", "to": "alice", "ref": 1}).to_string();
    dave.send(Message::text(psst)).unwrap();
    let acked = until(&mut dave, "the ack", |e| {
        e["type"] == "ack" || e["type"] == "error"
    });
    assert_eq!(acked["type"], "ack", "{acked}");
    let got = until(&mut alice, "the private message", |e| e["type"] == "chat");
    assert_eq!(
        (got["message"].as_str(), got["private"].as_bool()),
        (Some("psst"), Some(true))
    );

    // The second alice is told and closed; the first keeps the name.
    let (events, close) = until_closed(&mut second);
    let refusal = events
        .iter()
        .find(|e| e["type"] == "error")
        .unwrap_or_else(|| panic!("no error before the close: {events:#?}"));
    assert_eq!(refusal["code"], "name_taken", "{refusal}");
    assert!(
        refusal["message"]
            .as_str()
            .unwrap()
            .contains("had it first"),
        "{refusal}"
    );
    assert!(
        events.iter().all(|e| e["message"] != "psst"),
        "the second alice got the private message: {events:#?}"
    );
    assert!(close["frame"].as_str().unwrap().contains("4009"), "{close}");
    b.logs.wait_for("given to two members");
    assert_eq!(who(&mut dave), json!(["alice", "dave"]));
    // The name is still alice's, on every instance.
    let mut third = connect(&b.url, "name=alice");
    let refused = until(&mut third, "the refusal", |e| e["type"] == "error");
    assert_eq!(refused["code"], "name_taken");
    say(&mut dave, "still here?", 2);
    assert_eq!(chats(&mut alice, 1)[0].1, "still here?");
}

/// The id an instance logs when it starts sharing rooms.
fn instance_id(instance: &mut Instance) -> String {
    let line = instance.logs.wait_for("sharing rooms through redis");
    line.split("instance=")
        .nth(1)
        .map(|rest| rest.trim().trim_matches('"').to_owned())
        .expect("instance id in the log")
}

/// Reads until the chat message `text`; returns how many leave notices for `name` came first.
fn leaves_before(ws: &mut Ws, name: &str, text: &str) -> usize {
    let mut leaves = 0;
    loop {
        let event = next_event(ws);
        assert_ne!(event["type"], "close", "closed: {event}");
        if event["type"] == "system" && event["event"] == "leave" && event["name"] == name {
            leaves += 1;
        }
        if event["type"] == "chat" && event["message"] == text {
            return leaves;
        }
    }
}

/// An instance killed without a word: once it is known dead (its heartbeat expired), the
/// members of its rooms on the live instances hear that its members left, each once, with the
/// new count, and `who` no longer lists them.
#[test]
fn the_members_of_a_dead_instance_are_announced_gone() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let mut a = Instance::start(&redis.url(), &[]);
    let id = instance_id(&mut a);
    let b = Instance::start(&redis.url(), &[]);
    let c = Instance::start(&redis.url(), &[]);
    let _alice = member(&a.url, "alice");
    let mut bob = member(&b.url, "bob");
    let mut carol = member(&c.url, "carol");
    notice(&mut bob, "join", "carol");
    assert_eq!(who(&mut bob), json!(["alice", "bob", "carol"]));

    // SIGKILL: no leave, no cleanup; then its heartbeat expires (now, rather than in 30 s).
    drop(a);
    redis_command(&redis.url(), &["DEL", &format!("wschat:instance:{id}")]);
    // Nobody asks: the live instances notice at their next heartbeat.
    let left = notice(&mut bob, "leave", "alice");
    assert_eq!(left["count"], 2, "{left}");
    assert_eq!(left["message"], "alice left the chat");
    // Both live instances look again (a `who` does): still one notice each.
    let mut heard = [1, 0];
    for (ws, heard) in [&mut bob, &mut carol].into_iter().zip(&mut heard) {
        ws.send(Message::text(r#"{"type":"who"}"#)).unwrap();
        let answer = loop {
            let event = next_event(ws);
            if event["type"] == "system" && event["event"] == "leave" {
                *heard += 1;
            }
            if event["type"] == "who" {
                break event;
            }
        };
        assert_eq!(answer["members"], json!(["bob", "carol"]));
    }
    say(&mut bob, "from bob", 1);
    say(&mut carol, "from carol", 2);
    heard[1] += leaves_before(&mut carol, "alice", "from bob");
    heard[0] += leaves_before(&mut bob, "alice", "from carol");
    assert_eq!(heard, [1, 1], "leave notices heard by bob and carol");
}

/// An instance cut off from Redis for longer than its lease is taken for dead, and its
/// members are announced as gone; when it is back, they are announced as joining again.
#[test]
fn an_instance_taken_for_dead_announces_its_members_again_when_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let proxy = Cuttable::start(redis.port);
    let a = Instance::start(&redis.url(), &[]);
    let mut b = Instance::start(&proxy.url(), &[]);
    let id = instance_id(&mut b);
    let mut alice = member(&a.url, "alice");
    let _bob = member(&b.url, "bob");
    notice(&mut alice, "join", "bob");

    proxy.cut();
    b.logs.wait_for("unreachable");
    // Its lease runs out (now, rather than in 30 s): a looks, and bob is gone.
    redis_command(&redis.url(), &["DEL", &format!("wschat:instance:{id}")]);
    alice.send(Message::text(r#"{"type":"who"}"#)).unwrap();
    let left = notice(&mut alice, "leave", "bob");
    assert_eq!(left["count"], 1, "{left}");

    proxy.restore();
    b.logs.wait_for(" reachable");
    let back = notice(&mut alice, "join", "bob");
    assert_eq!(back["count"], 2, "{back}");
    assert_eq!(who(&mut alice), json!(["alice", "bob"]));
}
