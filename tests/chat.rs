//! Relay semantics of `wschat serve`: fan-out, exclude-sender, `--echo`, `--raw`, clients that
//! vanish, plain HTTP on the WebSocket port, and the SIGTERM/SIGINT drain.

mod common;

use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message;

/// Sends `text` as a chat message with a `ref`, and returns the next event the sender gets.
/// The server queues a sender's own copy (with `--echo`) before its ack, so when this returns
/// the ack, the sender was not sent its own message.
fn post(ws: &mut Ws, text: &str, reference: u64) -> serde_json::Value {
    let frame = serde_json::json!({"type": "chat", "content": text, "ref": reference});
    send_text(ws, &frame.to_string());
    next_non_system(ws)
}

fn assert_chat(event: &serde_json::Value, from: &str, text: &str) {
    assert_eq!(event["type"], "chat", "not a chat event: {event}");
    assert_eq!(event["username"], from, "wrong sender: {event}");
    assert_eq!(event["message"], text, "wrong text: {event}");
}

#[test]
fn a_message_reaches_every_other_member_and_never_the_sender() {
    let server = Server::start(&[]);
    let mut alice = ws_member(&server.url, "alice");
    let mut bob = ws_member(&server.url, "bob");
    let mut carol = ws_member(&server.url, "carol");
    let mut dave = ws_member(&server.url, "dave");

    let ack = post(&mut bob, "hello all", 1);
    assert_eq!(
        ack["type"], "ack",
        "bob got something before his ack: {ack}"
    );
    assert_eq!(ack["ref"], 1);
    assert_eq!(ack["delivered"], 3, "three others were in the room: {ack}");

    for ws in [&mut alice, &mut carol, &mut dave] {
        assert_chat(&next_non_system(ws), "bob", "hello all");
    }

    // A second message from someone else: bob gets it, and it is the first chat he sees, so
    // his own earlier message never came back to him.
    let ack = post(&mut carol, "hi bob", 2);
    assert_eq!(
        ack["type"], "ack",
        "carol got something before her ack: {ack}"
    );
    assert_eq!(ack["delivered"], 3);
    assert_chat(&next_non_system(&mut bob), "carol", "hi bob");
    assert_chat(&next_non_system(&mut alice), "carol", "hi bob");
    assert_chat(&next_non_system(&mut dave), "carol", "hi bob");
}

#[test]
fn with_echo_the_sender_gets_its_own_message_too() {
    let server = Server::start(&["--echo"]);
    let mut alice = ws_member(&server.url, "alice");
    let mut bob = ws_member(&server.url, "bob");
    let mut carol = ws_member(&server.url, "carol");

    let own = post(&mut bob, "echo me", 1);
    assert_chat(&own, "bob", "echo me");
    let ack = next_non_system(&mut bob);
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(
        ack["delivered"], 3,
        "with --echo the sender counts too: {ack}"
    );
    assert_eq!(
        ack["id"], own["id"],
        "the ack names the echoed message's id"
    );

    assert_chat(&next_non_system(&mut alice), "bob", "echo me");
    assert_chat(&next_non_system(&mut carol), "bob", "echo me");
}

#[test]
fn raw_mode_relays_text_and_binary_frames_byte_identical_and_never_to_the_sender() {
    let server = Server::start(&["--raw"]);
    let (mut a, response) = ws_connect_with_response(&server.url, "name=a");
    assert!(
        response.headers().get("x-wschat-protocol").is_none(),
        "a raw relay must not claim the wschat protocol"
    );
    assert!(response.headers().get("sec-websocket-protocol").is_none());
    // A pong proves each connection is registered (the server reads frames only after that);
    // nothing (no welcome, no replay marker) may come before it.
    assert_eq!(
        ping_sync(&mut a),
        Vec::<Message>::new(),
        "a got frames on join"
    );
    let mut b = ws_connect(&server.url, "name=b");
    assert_eq!(
        ping_sync(&mut b),
        Vec::<Message>::new(),
        "b got frames on join"
    );
    let mut c = ws_connect(&server.url, "");
    assert_eq!(
        ping_sync(&mut c),
        Vec::<Message>::new(),
        "c got frames on join"
    );

    // Text that looks like the JSON protocol must not be interpreted or wrapped.
    let t1 = "{\"type\":\"chat\",\"content\":\"x\"}  \u{e9}\u{1f600}";
    send_text(&mut b, t1);
    // a's first frame is b's text: no join notice for b or c, no welcome.
    assert_eq!(next_frame(&mut a), Message::text(t1));
    assert_eq!(next_frame(&mut c), Message::text(t1));

    // Binary, not valid UTF-8, with every byte value.
    let b1: Vec<u8> = (0..=255u8).rev().chain(0..=255u8).collect();
    c.send(Message::binary(b1.clone())).unwrap();
    // b's first frame is c's binary: b's own text did not come back to it.
    assert_eq!(next_frame(&mut b), Message::binary(b1.clone()));
    assert_eq!(next_frame(&mut a), Message::binary(b1));

    let t2 = "plain words\twith a tab";
    send_text(&mut a, t2);
    // c's next frame is a's text: c's own binary did not come back to it.
    assert_eq!(next_frame(&mut c), Message::text(t2));
    assert_eq!(next_frame(&mut b), Message::text(t2));

    // a's next frame is b's next text, so a's own text never came back either.
    send_text(&mut b, "t3");
    assert_eq!(next_frame(&mut a), Message::text("t3"));
}

#[test]
fn raw_mode_sends_nothing_on_join() {
    let server = Server::start(&["--raw"]);
    let mut a = ws_connect(&server.url, "name=a");
    ping_sync(&mut a);
    let mut b = ws_connect(&server.url, "name=b");
    ping_sync(&mut b);
    // Whatever the relay queued for a at its join, or for b's arrival, comes before this.
    send_text(&mut b, "first");
    assert_eq!(next_frame(&mut a), Message::text("first"));
    send_text(&mut a, "second");
    assert_eq!(next_frame(&mut b), Message::text("second"));
}

#[test]
fn the_server_answers_a_close_that_arrives_right_after_a_message() {
    let server = Server::start(&["--raw"]);
    for round in 0..20 {
        let mut ws = ws_connect(&server.url, "");
        send_text(&mut ws, "hello and goodbye");
        ws.close(None).unwrap();
        let answered = loop {
            match ws.read() {
                Ok(Message::Close(_)) => break Ok(()),
                Ok(_) => continue,
                Err(e) => break Err(e),
            }
        };
        assert!(
            answered.is_ok(),
            "round {round}: the server dropped the connection without a close reply: {answered:?}"
        );
    }
}

#[test]
fn a_client_that_vanishes_mid_broadcast_costs_only_that_client() {
    const MESSAGES: usize = 400;
    // No rate limit: the sender broadcasts as fast as it can write.
    let mut server = Server::start(&["--rate", "100000", "--burst", "100000"]);
    let mut watcher = ws_member(&server.url, "watcher");
    let listener = ws_member(&server.url, "listener");
    // Victim 1: a raw socket that never reads and is dropped without a close frame.
    let victim = ws_member(&server.url, "victim");
    expect_notice(&mut watcher, "listener joined the chat");
    expect_notice(&mut watcher, "victim joined the chat");
    // Victim 2: a join process, killed with SIGKILL.
    let mut killed = join(&server.url, "killed", &[]);
    expect_notice(&mut watcher, "killed joined the chat");
    let mut sender = ws_member(&server.url, "sender");

    // Receivers read on their own threads while the sender broadcasts. They keep the chat
    // texts, and the leave notices that arrive in between.
    let receive = |mut ws: Ws| {
        std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut leaves = Vec::new();
            while got.len() < MESSAGES {
                let event = next_message(&mut ws);
                match event["type"].as_str() {
                    Some("chat") => {
                        assert_eq!(event["username"], "sender", "{event}");
                        got.push(event["message"].as_str().unwrap().to_owned());
                    }
                    Some("system") if event["event"] == "leave" => {
                        leaves.push(event["message"].as_str().unwrap().to_owned());
                    }
                    Some("system") => {}
                    _ => panic!("unexpected event {event}"),
                }
            }
            (got, leaves, ws)
        })
    };
    let watcher_thread = receive(watcher);
    let listener_thread = receive(listener);

    let mut victim = Some(victim);
    for i in 0..MESSAGES {
        send_text(&mut sender, &format!("message {i}"));
        if i == MESSAGES / 4 {
            // Unread frames are queued for it: the kernel answers with a reset.
            drop(victim.take());
        }
        if i == MESSAGES / 2 {
            killed.kill_hard();
        }
    }

    let expected: Vec<String> = (0..MESSAGES).map(|i| format!("message {i}")).collect();
    let (got, mut leaves, mut watcher) = watcher_thread.join().expect("watcher thread");
    assert_eq!(got, expected, "watcher missed or reordered messages");
    let (got, _, _listener) = listener_thread.join().expect("listener thread");
    assert_eq!(got, expected, "listener missed or reordered messages");

    // The server noticed both (a leave notice each) and is still serving.
    while leaves.len() < 2 {
        let event = next_message(&mut watcher);
        if event["type"] == "system" && event["event"] == "leave" {
            leaves.push(event["message"].as_str().unwrap().to_owned());
        }
    }
    leaves.sort();
    assert_eq!(leaves, vec!["killed left the chat", "victim left the chat"]);
    assert!(server.proc.is_running(), "the server died");
    assert_eq!(http_request(&server.addr(), "GET", "/healthz").status, 200);
    let ack = post(&mut sender, "still here", 9);
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["delivered"], 2, "watcher and listener remain: {ack}");
    assert_chat(&next_non_system(&mut watcher), "sender", "still here");
}

#[test]
fn plain_http_get_gets_426_upgrade_required_with_a_one_line_body() {
    let server = Server::start(&[]);
    // `GET /` is the web page and `/healthz`, `/metrics` are for operators: any other path
    // is the WebSocket endpoint only.
    let response = http_request(&server.addr(), "GET", "/chat");
    assert_eq!(response.status, 426, "{response:?}");
    assert!(
        response
            .header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        "426 must name the protocol to upgrade to: {response:?}"
    );
    let body = response.body.trim_end_matches('\n');
    assert!(!body.is_empty(), "empty body");
    assert!(!body.contains('\n'), "body is more than one line: {body:?}");

    for (method, path) in [("GET", "/some/where?x=1"), ("POST", "/")] {
        let other = http_request(&server.addr(), method, path);
        assert_eq!(other.status, 426, "{method} {path}: {other:?}");
    }
}

#[test]
fn healthz_answers_200_ok() {
    let server = Server::start(&[]);
    let response = http_request(&server.addr(), "GET", "/healthz");
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.body.trim(), "ok");
}

#[test]
fn sigterm_closes_every_client_with_1001_and_serve_exits_0() {
    // A grace far beyond GUARD: serve exits within it only because every client answered.
    let mut server = Server::start(&["--grace", "5m"]);
    let mut raw = ws_member(&server.url, "raw");
    // Without --no-reconnect, join would wait for the server to come back.
    let mut joined = join(&server.url, "alice", &["--no-reconnect"]);
    expect_notice(&mut raw, "alice joined the chat");

    server.proc.signal("TERM");

    let frame = expect_close(&mut raw).expect("the close frame has a code");
    assert_eq!(u16::from(frame.code), 1001, "close code: {frame:?}");
    // Listening stopped before the clients were told to go.
    assert!(
        TcpStream::connect(server.addr()).is_err(),
        "serve still accepts connections while draining"
    );
    // Answer the close, as a well-behaved client does.
    let _ = raw.flush();
    while raw.read().is_ok() {}

    let alice = joined.finish(GUARD);
    alice.assert_code(5);
    assert_no_panic(&alice.stderr);
    assert!(
        alice.stderr.contains("1001"),
        "join should say the server closed with 1001: {}",
        alice.stderr
    );

    let served = server.proc.finish(GUARD);
    served.assert_code(0);
    assert!(
        !served.stderr.contains("still open after"),
        "serve waited for a client although every client answered the close: {}",
        served.stderr
    );
}

#[test]
fn with_a_drain_delay_the_server_reports_draining_and_goes_on_serving() {
    let mut server = Server::start(&["--drain-delay", "5m", "--grace", "2s"]);
    let mut raw = ws_member(&server.url, "raw");
    server.proc.signal("TERM");
    // What a load balancer sees: /healthz turns 503 (checked until it does, as one would).
    let deadline = Instant::now() + GUARD;
    loop {
        let health = http_request(&server.addr(), "GET", "/healthz");
        if health.status == 503 {
            assert!(health.body.contains("draining"), "{}", health.body);
            break;
        }
        assert_eq!(health.status, 200);
        assert!(
            Instant::now() < deadline,
            "/healthz never reported draining"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(metric(&server, "draining"), 1);
    // Everything else is served as before: a newcomer joins and talks.
    let mut late = ws_member(&server.url, "late");
    send_text(&mut late, "still here");
    assert_eq!(next_non_system(&mut raw)["message"], "still here");
    // A second signal ends the delay: clients are closed with 1001 and serve exits 0.
    server.proc.signal("TERM");
    let frame = expect_close(&mut raw).expect("the close frame has a code");
    assert_eq!(u16::from(frame.code), 1001);
    server.proc.finish(GUARD).assert_code(0);
}

#[test]
fn a_second_signal_stops_waiting_for_clients() {
    let mut server = Server::start(&["--grace", "5m"]);
    let mut raw = ws_member(&server.url, "raw");
    server.proc.signal("TERM");
    // Every client is closed; this one never answers, so the server would wait out --grace.
    let frame = expect_close(&mut raw).expect("the close frame has a code");
    assert_eq!(u16::from(frame.code), 1001);
    server.proc.signal("TERM");
    let served = server.proc.finish(GUARD);
    served.assert_code(0);
    assert!(
        served.stderr.contains("not waiting for clients any longer"),
        "{}",
        served.stderr
    );
}

#[test]
fn sigint_drains_the_same_way() {
    let mut server = Server::start(&["--grace", "2s"]);
    let mut raw = ws_member(&server.url, "raw");
    server.proc.signal("INT");
    let frame = loop {
        match raw.read() {
            Ok(Message::Close(frame)) => break frame.expect("the close frame has a code"),
            Ok(_) => continue,
            Err(e) => {
                let served = server.proc.finish(GUARD);
                panic!(
                    "no close frame ({e}); serve ended with {:?}\nstderr: {}",
                    served.status, served.stderr
                );
            }
        }
    };
    assert_eq!(u16::from(frame.code), 1001, "close code: {frame:?}");
    let _ = raw.flush();
    while raw.read().is_ok() {}
    server.proc.finish(GUARD).assert_code(0);
}

#[test]
fn serve_exits_0_within_the_grace_period_even_if_a_client_never_answers_the_close() {
    let mut server = Server::start(&["--grace", "1s"]);
    // This client never reads again, so it never answers the close frame.
    let _silent = ws_member(&server.url, "silent");
    let mut watcher = ws_member(&server.url, "watcher");
    let (tx, rx) = mpsc::channel();
    server.proc.signal("TERM");
    let signalled = Instant::now();
    std::thread::spawn(move || {
        let frame = expect_close(&mut watcher);
        let _ = tx.send(frame.map(|f| u16::from(f.code)));
        // The watcher answers; only the silent client holds the server up.
        let _ = watcher.flush();
        while watcher.read().is_ok() {}
    });
    assert_eq!(rx.recv_timeout(GUARD), Ok(Some(1001)));
    let served = server.proc.finish(GUARD);
    served.assert_code(0);
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "serve exited after {took:?}: it did not wait for the silent client at all"
    );
    // It gave up on the silent client (rather than the client going away by itself).
    assert!(
        served.stderr.contains("1 connection(s) still open after"),
        "{}",
        served.stderr
    );
}

#[test]
fn raw_mode_relays_to_a_client_as_soon_as_its_handshake_completes() {
    let server = Server::start(&["--raw"]);
    let mut sender = ws_connect(&server.url, "");
    assert!(ping_sync(&mut sender).is_empty());
    // A relay sends nothing on join, so a client can only assume it is a member once its
    // handshake is done. Each new client must get the frame sent right after that.
    for i in 0..50 {
        let mut fresh = ws_connect(&server.url, "");
        let text = format!("right after handshake {i}");
        send_text(&mut sender, &text);
        assert_eq!(next_frame(&mut fresh), Message::text(text), "client {i}");
    }
}

#[test]
fn serve_drains_on_a_signal_sent_right_after_the_listening_line() {
    // A script waits for the line and may stop the server at once; that must be a clean
    // shutdown (exit 0), not death by signal.
    for (round, signal) in ["TERM", "INT"].iter().cycle().take(30).enumerate() {
        let mut server = Server::start(&[]);
        server.proc.signal(signal);
        let served = server.proc.finish(GUARD);
        assert_eq!(
            served.code(),
            Some(0),
            "round {round}: SIG{signal} right after `listening on` ended serve with {:?}",
            served.status
        );
    }
}
