//! Hostile clients against the real `wschat serve`, on 127.0.0.1, while well-behaved members
//! keep chatting: random bytes, truncated frames, oversized request heads, handshakes that never
//! finish, connection floods, and a broadcast storm in which a third of the clients vanish.
//!
//! Each test reports what issue 4 asks for: server crashes (the process is still running,
//! `/healthz` answers 200 and nothing panicked), messages lost to the well-behaved members, and
//! the server's memory (VmRSS) before and after. All hostile traffic is bounded in count and
//! every wait in time; randomness is seeded (`WSCHAT_HOSTILE_SEED` replays another seed).

mod common;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{assert_no_panic, http_request, metric, rss_kib, Server, GUARD};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const DEFAULT_SEED: u64 = 0x0b57_11e5_2026;

fn seed() -> u64 {
    std::env::var("WSCHAT_HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Runs `future`, failing the test if it takes longer than `bound`.
async fn bounded<T>(bound: Duration, what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(bound, future).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: not done within {bound:?}"),
    }
}

/// Waits until the server has let go of every connection but `open`. Closing a socket is not an
/// event a test can observe on the server's side, so this polls `/metrics`, bounded.
fn wait_for_open_connections(server: &Server, open: u64) -> u64 {
    let deadline = Instant::now() + GUARD;
    loop {
        let now = metric(server, "connections_open");
        if now == open || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Server crashes: 0 when the process runs, `/healthz` answers 200, and nothing panicked.
fn crashes(server: &mut Server) -> u32 {
    let mut crashes = 0;
    let serving =
        server.proc.is_running() && http_request(&server.addr(), "GET", "/healthz").status == 200;
    if !serving {
        crashes += 1;
    }
    let log = server.proc.stderr_so_far();
    if log.contains("panicked") {
        crashes += 1;
    }
    assert_no_panic(&log);
    crashes
}

// ---- Well-behaved members ---------------------------------------------------------------------

/// Connects a JSON-mode member and reads until `synced`: from then on it receives everything.
async fn member(url: &str, name: &str) -> Ws {
    let request = format!("{url}?name={name}&history=0");
    let (mut ws, _) = bounded(GUARD, "connect", tokio_tungstenite::connect_async(request))
        .await
        .unwrap_or_else(|e| panic!("{name}: handshake failed: {e}"));
    loop {
        if next_event(&mut ws, name).await["type"] == "synced" {
            return ws;
        }
    }
}

async fn next_event(ws: &mut Ws, name: &str) -> Value {
    loop {
        match bounded(GUARD, name, ws.next()).await {
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(text.as_str()).expect("events are JSON")
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("{name}: expected an event, got {other:?}"),
        }
    }
}

fn chat(content: &str) -> Message {
    Message::text(serde_json::json!({"type": "chat", "content": content}).to_string())
}

/// What one member received: per sender, how many of its messages arrived in order.
#[derive(Debug, Default)]
struct Received {
    in_order: HashMap<String, u64>,
    /// Messages that arrived out of order or twice.
    disorder: Vec<String>,
    /// The count each sender announced in its last message.
    announced: HashMap<String, u64>,
    /// Why reading stopped early, if it did.
    stalled: Option<String>,
}

impl Received {
    fn take(&mut self, sender: &str, message: &str) {
        if let Some(count) = message.strip_prefix("done ") {
            self.announced
                .insert(sender.to_owned(), count.parse().expect("a count"));
            return;
        }
        let index: u64 = message.parse().expect("a message index");
        let next = self.in_order.entry(sender.to_owned()).or_default();
        if index == *next {
            *next += 1;
        } else {
            self.disorder
                .push(format!("from {sender}: got {index}, expected {next}"));
        }
    }
}

/// Reads chat messages until every one of `senders` has announced it is done (or `expect` says
/// how many each sends), bounded by `GUARD` of silence.
async fn receive<S>(rx: &mut S, name: &str, senders: &[String], expect: Option<u64>) -> Received
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let mut got = Received::default();
    let finished = |got: &Received| {
        senders.iter().all(|s| match expect {
            Some(n) => got.in_order.get(s).copied().unwrap_or(0) >= n,
            None => got.announced.contains_key(s),
        })
    };
    while !finished(&got) {
        let next = match tokio::time::timeout(GUARD, rx.next()).await {
            Ok(next) => next,
            Err(_) => {
                got.stalled = Some(format!("{name}: nothing received for {GUARD:?}"));
                break;
            }
        };
        let text = match next {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => {
                got.stalled = Some(format!("{name}: connection ended: {other:?}"));
                break;
            }
        };
        let event: Value = serde_json::from_str(text.as_str()).expect("events are JSON");
        match event["type"].as_str() {
            Some("chat") => {
                let sender = event["username"].as_str().unwrap_or_default();
                let message = event["message"].as_str().unwrap_or_default();
                assert_ne!(sender, name, "{name} received its own message");
                got.take(sender, message);
            }
            Some("error") => panic!("{name}: error event {event}"),
            _ => {} // notices and presence: other clients coming and going
        }
    }
    got
}

/// Messages lost: for every receiver and every other sender, sent minus received in order.
fn lost(sent: &HashMap<String, u64>, received: &HashMap<String, Received>) -> u64 {
    let mut lost = 0;
    for (receiver, got) in received {
        for (sender, &n) in sent {
            if sender != receiver {
                lost += n.saturating_sub(got.in_order.get(sender).copied().unwrap_or(0));
            }
        }
    }
    lost
}

// ---- Raw sockets ------------------------------------------------------------------------------

const TEXT: u8 = 0x1;

/// A masked client frame.
fn masked_frame(opcode: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

fn upgrade_request(addr: &str, query: &str) -> String {
    format!(
        "GET /?{query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Opens a WebSocket by hand and returns the socket right after the 101 response head.
async fn raw_upgrade(addr: &str, query: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(upgrade_request(addr, query).as_bytes())
        .await
        .expect("write the handshake");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await.expect("read the handshake"));
        assert!(head.len() < 4096, "handshake response too long");
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    stream
}

/// Reads one server frame (servers never mask): its opcode and payload.
async fn read_frame(stream: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await?;
    let len = match head[1] & 0x7f {
        126 => u64::from(stream.read_u16().await?),
        127 => stream.read_u64().await?,
        n => u64::from(n),
    };
    let mut payload = vec![0u8; len as usize];
    stream.read_exact(&mut payload).await?;
    Ok((head[0] & 0x0f, payload))
}

/// Ends the connection with a TCP reset instead of a FIN (SO_LINGER 0, then close).
fn reset(stream: TcpStream) {
    stream.set_zero_linger().expect("SO_LINGER 0");
    drop(stream);
}

/// Reads until the server ends the connection (EOF or reset); the time it took, or `None` if it
/// kept the connection open for longer than `GUARD`.
async fn until_server_hangs_up(stream: &mut TcpStream) -> Option<Duration> {
    let started = Instant::now();
    let mut sink = vec![0u8; 64 * 1024];
    let drained = async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(GUARD, drained)
        .await
        .ok()
        .map(|()| started.elapsed())
}

/// Sends a request head (which may be cut short by the server) and returns the response status.
async fn status_of(addr: &str, request: &[u8]) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    // The server may answer and close before the whole request is written.
    let _ = stream.write_all(request).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(GUARD, stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

// ---- Hostile traffic --------------------------------------------------------------------------

/// Counts of one kind of attack.
#[derive(Debug, Default)]
struct Attack {
    connections: u32,
    /// Connections the server ended by itself within the bound.
    ended_by_server: u32,
    /// Connections it still held open after the bound (should be 0).
    left_open: u32,
    /// Slowest server hang-up.
    slowest: Duration,
    statuses: HashMap<u16, u32>,
}

impl Attack {
    fn hung_up(&mut self, after: Option<Duration>) {
        self.connections += 1;
        match after {
            Some(t) => {
                self.ended_by_server += 1;
                self.slowest = self.slowest.max(t);
            }
            None => self.left_open += 1,
        }
    }
}

/// Random bytes: on a fresh TCP connection (HTTP garbage), and after a completed handshake
/// (garbage WebSocket frames). The server must end every one of them.
async fn random_bytes(addr: String, seed: u64) -> Attack {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut attack = Attack::default();
    let mut tasks = Vec::new();
    for i in 0..60 {
        let mut bytes = vec![0u8; rng.usize(1..16 * 1024)];
        rng.fill(&mut bytes);
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = if i % 2 == 0 {
                TcpStream::connect(&addr).await.expect("connect")
            } else {
                raw_upgrade(&addr, &format!("name=noise-{i}")).await
            };
            let _ = stream.write_all(&bytes).await;
            // No more from us: a server waiting for the rest of a frame sees the end.
            let _ = stream.shutdown().await;
            until_server_hangs_up(&mut stream).await
        }));
    }
    for task in tasks {
        attack.hung_up(task.await.expect("random-bytes task"));
    }
    attack
}

/// Handshake, then half a frame, then a FIN or a reset.
async fn truncated_frames(addr: String, seed: u64) -> Attack {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut attack = Attack::default();
    let mut tasks = Vec::new();
    for i in 0..60 {
        let payload: Vec<u8> = (0..rng.usize(2..2000)).map(|_| b'z').collect();
        let frame = masked_frame(TEXT, &payload, rng.u32(..).to_be_bytes());
        let cut = rng.usize(1..frame.len());
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = raw_upgrade(&addr, &format!("name=cut-{i}")).await;
            stream.write_all(&frame[..cut]).await.expect("half a frame");
            if i % 2 == 0 {
                reset(stream);
                None
            } else {
                let _ = stream.shutdown().await;
                Some(until_server_hangs_up(&mut stream).await)
            }
        }));
    }
    for task in tasks {
        match task.await.expect("truncated-frame task") {
            Some(after) => attack.hung_up(after),
            None => attack.connections += 1,
        }
    }
    attack
}

/// 2,000 headers, and one header of 1 MiB: refused (431) without reading them all.
async fn huge_heads(addr: String) -> Attack {
    let many: String = (0..2000).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n").into_bytes();
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    )
    .into_bytes();
    let (many, big) = (Arc::new(many), Arc::new(big));
    let mut tasks = Vec::new();
    for i in 0..20 {
        let request = if i % 2 == 0 {
            many.clone()
        } else {
            big.clone()
        };
        let addr = addr.clone();
        tasks.push(tokio::spawn(
            async move { status_of(&addr, &request).await },
        ));
    }
    let mut attack = Attack::default();
    for task in tasks {
        attack.connections += 1;
        let status = task.await.expect("huge-head task");
        *attack.statuses.entry(status.unwrap_or(0)).or_default() += 1;
    }
    attack
}

/// Requests that never finish: the server must hang up after its handshake timeout.
async fn unfinished_handshakes(addr: String) -> Attack {
    let mut tasks = Vec::new();
    for i in 0..100 {
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(&addr).await.expect("connect");
            let partial = match i % 3 {
                0 => "GET / HTTP/1.1\r\nHost: x\r\n".to_owned(),
                1 => upgrade_request(&addr, "name=slow").replace("\r\n\r\n", "\r\n"),
                _ => "G".to_owned(),
            };
            stream.write_all(partial.as_bytes()).await.expect("write");
            until_server_hangs_up(&mut stream).await
        }));
    }
    let mut attack = Attack::default();
    for task in tasks {
        attack.hung_up(task.await.expect("unfinished-handshake task"));
    }
    attack
}

/// 300 TCP connections opened and dropped at once (half with a reset), then 60 WebSocket
/// connections dropped right after the handshake.
async fn connection_flood(addr: String) -> Attack {
    let mut tasks = Vec::new();
    for i in 0..300 {
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(&addr).await.expect("connect");
            if i % 2 == 0 {
                reset(stream);
            }
        }));
    }
    for i in 0..60 {
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let stream = raw_upgrade(&addr, &format!("name=flood-{i}")).await;
            if i % 2 == 0 {
                reset(stream);
            }
        }));
    }
    let mut attack = Attack::default();
    for task in tasks {
        task.await.expect("flood task");
        attack.connections += 1;
    }
    attack
}

#[test]
fn hostile_clients_cannot_hurt_members_who_keep_chatting() {
    let mut server = Server::start(&["--rate", "0", "--handshake-timeout", "500ms"]);
    let seed = seed();
    let names: Vec<String> = (0..3).map(|i| format!("good-{i}")).collect();
    let rt = runtime();
    let members: Vec<Ws> = rt.block_on(async {
        let mut members = Vec::new();
        for name in &names {
            members.push(member(&server.url, name).await);
        }
        members
    });
    let before = rss_kib(&server);

    // At least this many messages each, one every 4 ms, for as long as the attacks last.
    let min_messages = 200;
    let attacks_over = Arc::new(AtomicBool::new(false));
    let (sent, received, attacks, took, connected) = rt.block_on(async {
        let mut chatting = Vec::new();
        for (ws, name) in members.into_iter().zip(&names) {
            let others: Vec<String> = names.iter().filter(|n| *n != name).cloned().collect();
            let name = name.clone();
            let attacks_over = attacks_over.clone();
            chatting.push(tokio::spawn(async move {
                let (mut tx, mut rx) = ws.split();
                let sending = async {
                    let mut tick = tokio::time::interval(Duration::from_millis(4));
                    let mut sent = 0u64;
                    while sent < min_messages || !attacks_over.load(Ordering::SeqCst) {
                        tick.tick().await;
                        tx.send(chat(&sent.to_string())).await.expect("send chat");
                        sent += 1;
                    }
                    tx.send(chat(&format!("done {sent}")))
                        .await
                        .expect("send done");
                    sent
                };
                let receiving = receive(&mut rx, &name, &others, None);
                let (sent, received) = tokio::join!(sending, receiving);
                // Still connected: the halves are dropped only after the final checks.
                (name, sent, received, (tx, rx))
            }));
        }
        let started = Instant::now();
        let addr = server.addr();
        let (noise, cut, heads, unfinished, flood) = tokio::join!(
            tokio::spawn(random_bytes(addr.clone(), seed)),
            tokio::spawn(truncated_frames(addr.clone(), seed ^ 1)),
            tokio::spawn(huge_heads(addr.clone())),
            tokio::spawn(unfinished_handshakes(addr.clone())),
            tokio::spawn(connection_flood(addr.clone())),
        );
        let took = started.elapsed();
        attacks_over.store(true, Ordering::SeqCst);
        let attacks = [
            ("random bytes", noise.unwrap()),
            ("truncated frames", cut.unwrap()),
            ("2,000 headers / 1 MiB header", heads.unwrap()),
            ("unfinished handshakes", unfinished.unwrap()),
            ("connection flood", flood.unwrap()),
        ];
        let mut sent = HashMap::new();
        let mut received = HashMap::new();
        let mut connected = Vec::new();
        for member in chatting {
            let (name, n, got, halves) = bounded(GUARD * 3, "members", member)
                .await
                .expect("member task");
            sent.insert(name.clone(), n);
            received.insert(name, got);
            connected.push(halves);
        }
        (sent, received, attacks, took, connected)
    });

    // Every hostile connection is gone: only the three members remain.
    let open = wait_for_open_connections(&server, 3);
    let after = rss_kib(&server);
    let crashes = crashes(&mut server);
    let lost = lost(&sent, &received);
    println!("hostile clients (seed {seed:#x}), attacks took {took:.1?}:");
    for (what, attack) in &attacks {
        println!(
            "  {what}: {} connection(s), {} ended by the server (slowest {:.0?}), {} left open, \
             statuses {:?}",
            attack.connections,
            attack.ended_by_server,
            attack.slowest,
            attack.left_open,
            attack.statuses
        );
    }
    println!("  messages sent by the members: {sent:?}");
    println!("  server crashes: {crashes}");
    println!("  messages lost to the well-behaved members: {lost}");
    println!(
        "  server memory (VmRSS): before {before} KiB, after {after} KiB ({:+} KiB)",
        after as i64 - before as i64
    );
    println!("  WebSocket connections open afterwards: {open}");

    assert_eq!(crashes, 0, "the server crashed");
    for (name, got) in &received {
        assert!(got.stalled.is_none(), "{name}: {:?}", got.stalled);
        assert!(got.disorder.is_empty(), "{name}: {:?}", got.disorder);
        for (sender, &n) in &sent {
            if sender != name {
                assert_eq!(got.announced.get(sender), Some(&n), "{name} from {sender}");
            }
        }
    }
    assert_eq!(lost, 0, "messages lost to the well-behaved members");
    assert!(sent.values().all(|&n| n >= min_messages));
    for (what, attack) in &attacks {
        assert_eq!(
            attack.left_open, 0,
            "{what}: connections the server never ended"
        );
    }
    // A too-large head is refused with 431 (or the connection is cut while it is still sent).
    let heads = &attacks[2].1;
    assert!(
        heads.statuses.keys().all(|s| *s == 431 || *s == 0),
        "{:?}",
        heads.statuses
    );
    assert!(heads.statuses.get(&431).copied().unwrap_or(0) > 0);
    // Requests that never finish are dropped by the handshake timeout (500 ms), not held.
    assert_eq!(attacks[3].1.ended_by_server, 100);
    assert_eq!(open, 3, "hostile connections still open on the server");
    assert!(
        after < before + 64 * 1024,
        "server memory grew from {before} KiB to {after} KiB"
    );
    rt.block_on(async move { drop(connected) });
}

// ---- Broadcast storm --------------------------------------------------------------------------

/// How a client vanishes in the middle of the storm.
#[derive(Debug, Clone, Copy)]
enum Vanish {
    /// Half a frame written, then a TCP reset.
    HalfFrameThenReset,
    /// Half a frame written, then the socket closed (FIN), no close frame.
    HalfFrameThenFin,
    /// A TCP reset, nothing else.
    Reset,
    /// The socket closed (FIN), no close frame.
    Fin,
}

/// A client that joins, reads until `after` chat messages of the storm have arrived, and then
/// vanishes as `how` says.
async fn vanisher(mut stream: TcpStream, after: u64, how: Vanish, key: [u8; 4]) -> u64 {
    let mut chats = 0;
    while chats < after {
        match read_frame(&mut stream).await {
            Ok((TEXT, payload)) if payload.starts_with(br#"{"type":"chat""#) => chats += 1,
            Ok(_) => {}
            Err(e) => panic!("a vanisher lost its connection before vanishing: {e}"),
        }
    }
    let frame = masked_frame(TEXT, &[b'v'; 300], key);
    match how {
        Vanish::HalfFrameThenReset => {
            stream.write_all(&frame[..150]).await.expect("half a frame");
            reset(stream);
        }
        Vanish::HalfFrameThenFin => {
            stream.write_all(&frame[..150]).await.expect("half a frame");
            drop(stream);
        }
        Vanish::Reset => reset(stream),
        Vanish::Fin => drop(stream),
    }
    chats
}

#[test]
fn a_broadcast_storm_survives_a_third_of_its_clients_vanishing() {
    let mut server = Server::start(&["--rate", "0"]);
    let seed = seed();
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x5707);
    let (survivors, vanishers, per_sender) = (20usize, 10usize, 40u64);
    let names: Vec<String> = (0..survivors).map(|i| format!("stay-{i}")).collect();
    let rt = runtime();
    let before_rss;
    let (received, vanished, connected) = {
        let members: Vec<Ws> = rt.block_on(async {
            let mut members = Vec::new();
            for name in &names {
                members.push(member(&server.url, name).await);
            }
            members
        });
        // The vanishers join too: each has read its welcome and `synced`, so it is a member.
        let doomed: Vec<TcpStream> = rt.block_on(async {
            let mut doomed = Vec::new();
            for i in 0..vanishers {
                let mut stream = raw_upgrade(&server.addr(), &format!("name=gone-{i}")).await;
                loop {
                    let (_, payload) = bounded(GUARD, "vanisher join", read_frame(&mut stream))
                        .await
                        .expect("a frame");
                    if payload.starts_with(br#"{"type":"synced""#) {
                        break;
                    }
                }
                doomed.push(stream);
            }
            doomed
        });
        before_rss = rss_kib(&server);
        let total_chats = (survivors as u64) * per_sender;
        let plans: Vec<(u64, Vanish, [u8; 4])> = (0..vanishers)
            .map(|i| {
                let how = [
                    Vanish::HalfFrameThenReset,
                    Vanish::HalfFrameThenFin,
                    Vanish::Reset,
                    Vanish::Fin,
                ][i % 4];
                (rng.u64(1..total_chats / 2), how, rng.u32(..).to_be_bytes())
            })
            .collect();
        rt.block_on(async {
            let vanishing: Vec<_> = doomed
                .into_iter()
                .zip(plans)
                .map(|(stream, (after, how, key))| tokio::spawn(vanisher(stream, after, how, key)))
                .collect();
            let mut storm = Vec::new();
            for (ws, name) in members.into_iter().zip(&names) {
                let others: Vec<String> = names.iter().filter(|n| *n != name).cloned().collect();
                let name = name.clone();
                storm.push(tokio::spawn(async move {
                    let (mut tx, mut rx) = ws.split();
                    // As fast as the socket takes them: a storm.
                    let sending = async {
                        for i in 0..per_sender {
                            tx.send(chat(&i.to_string())).await.expect("send chat");
                        }
                    };
                    let receiving = receive(&mut rx, &name, &others, Some(per_sender));
                    let ((), got) = tokio::join!(sending, receiving);
                    (name, got, (tx, rx))
                }));
            }
            let mut received = HashMap::new();
            let mut connected = Vec::new();
            for member in storm {
                let (name, got, halves) =
                    bounded(GUARD * 3, "storm", member).await.expect("member");
                received.insert(name, got);
                connected.push(halves);
            }
            let mut vanished = Vec::new();
            for v in vanishing {
                vanished.push(bounded(GUARD, "vanisher", v).await.expect("vanisher"));
            }
            (received, vanished, connected)
        })
    };
    let open = wait_for_open_connections(&server, survivors as u64);
    let after_rss = rss_kib(&server);
    let crashes = crashes(&mut server);
    let sent: HashMap<String, u64> = names.iter().map(|n| (n.clone(), per_sender)).collect();
    let lost = lost(&sent, &received);
    println!(
        "broadcast storm (seed {seed:#x}): {survivors} members each broadcast {per_sender} \
         messages while {vanishers} clients vanished (after {vanished:?} chat messages; half a \
         frame then reset / half a frame then FIN / reset / FIN)"
    );
    println!("  server crashes: {crashes}");
    println!(
        "  messages lost to the remaining members: {lost} of {}",
        survivors as u64 * (survivors as u64 - 1) * per_sender
    );
    println!(
        "  server memory (VmRSS): before {before_rss} KiB, after {after_rss} KiB ({:+} KiB)",
        after_rss as i64 - before_rss as i64
    );
    println!("  WebSocket connections open afterwards: {open}");

    assert_eq!(crashes, 0, "the server crashed");
    for (name, got) in &received {
        assert!(got.stalled.is_none(), "{name}: {:?}", got.stalled);
        assert!(got.disorder.is_empty(), "{name}: {:?}", got.disorder);
    }
    assert_eq!(lost, 0, "messages lost to the remaining members");
    assert_eq!(open, survivors as u64, "vanished clients still held open");
    assert!(
        after_rss < before_rss + 64 * 1024,
        "server memory grew from {before_rss} KiB to {after_rss} KiB"
    );
    rt.block_on(async move { drop(connected) });
}
