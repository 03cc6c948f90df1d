//! Limits, bad input, hostile peers, access control and TLS, against the real binary.
//! Each test checks the defined answer (a status, a close code, an error event) and that
//! everyone else keeps being served.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::*;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::Message;

fn close_code(ws: &mut Ws) -> u16 {
    u16::from(expect_close(ws).expect("a close frame with a code").code)
}

/// Two members that keep chatting: proves the server still serves everyone else.
fn still_chatting(server: &Server) {
    let mut a = ws_member(&server.url, "check-a");
    let mut b = ws_member(&server.url, "check-b");
    send_text(&mut a, "still here");
    loop {
        let event = next_event(&mut b);
        if event["type"] == "chat" && event["history"] != true {
            assert_eq!(event["message"], "still here");
            return;
        }
    }
}

#[test]
fn an_oversize_message_closes_that_client_with_1009() {
    let server = Server::start(&["--max-message-bytes", "1024"]);
    let mut big = ws_member(&server.url, "big");
    send_text(&mut big, &"x".repeat(2000));
    assert_eq!(close_code(&mut big), 1009);
    assert_eq!(metric(&server, "oversize_disconnects_total"), 1);
    still_chatting(&server);
}

#[test]
fn invalid_utf8_closes_with_1007_whole_or_split_across_fragments() {
    let server = Server::start(&[]);
    let mut whole = ws_member(&server.url, "whole");
    let frame = Frame::message(vec![b'h', 0xff, 0xfe], OpCode::Data(Data::Text), true);
    whole.send(Message::Frame(frame)).unwrap();
    assert_eq!(close_code(&mut whole), 1007);

    // "é" is 0xc3 0xa9: split across two fragments it is valid; 0xc3 then 0x28 is not.
    let mut split = ws_member(&server.url, "split");
    split
        .send(Message::Frame(Frame::message(
            vec![b'a', 0xc3],
            OpCode::Data(Data::Text),
            false,
        )))
        .unwrap();
    split
        .send(Message::Frame(Frame::message(
            vec![0x28],
            OpCode::Data(Data::Continue),
            true,
        )))
        .unwrap();
    assert_eq!(close_code(&mut split), 1007);
    assert_eq!(metric(&server, "invalid_utf8_disconnects_total"), 2);
    still_chatting(&server);
}

#[test]
fn bad_json_and_unknown_types_get_error_events_and_the_connection_stays() {
    let server = Server::start(&[]);
    let mut ws = ws_member(&server.url, "alice");
    for (frame, code) in [
        ("{oops", "invalid_json"),
        (r#"{"type":"dance"}"#, "unknown_type"),
        (r#"{"type":"chat"}"#, "missing_field"),
        ("   ", "empty_message"),
    ] {
        send_text(&mut ws, frame);
        let event = next_non_system(&mut ws);
        let event = if event["type"] == "synced" {
            next_non_system(&mut ws)
        } else {
            event
        };
        assert_eq!(event["type"], "error", "{frame}");
        assert_eq!(event["code"], code, "{frame}");
    }
    ws.send(Message::Binary(vec![1, 2, 3].into())).unwrap();
    assert_eq!(next_non_system(&mut ws)["code"], "unsupported");
    assert!(ping_sync(&mut ws).is_empty(), "the connection still works");
}

#[test]
fn a_flooding_client_is_slowed_then_closed_with_4029() {
    let server = Server::start(&["--rate", "20", "--burst", "5", "--flood-timeout", "1s"]);
    let mut flood = ws_member(&server.url, "flood");
    // Write until the server gives up on us; the writes themselves may start failing once the
    // server has closed, which is fine.
    let mut sent = 0;
    let code = loop {
        if sent < 2000 && flood.send(Message::text(format!("spam {sent}"))).is_ok() {
            sent += 1;
            continue;
        }
        break close_code(&mut flood);
    };
    assert_eq!(code, 4029);
    assert!(metric(&server, "rate_limited_total") > 0);
    assert_eq!(metric(&server, "rate_limit_disconnects_total"), 1);
    still_chatting(&server);
}

#[test]
fn connection_caps_refuse_with_503_and_leave_others_alone() {
    let server = Server::start(&["--max-clients", "2"]);
    let mut a = ws_member(&server.url, "a");
    let _b = ws_member(&server.url, "b");
    let stream = TcpStream::connect(server.addr()).unwrap();
    stream.set_read_timeout(Some(GUARD)).unwrap();
    match tungstenite::client(format!("{}?name=c", server.url).as_str(), stream) {
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            assert_eq!(response.status(), 503)
        }
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    // The existing member is untouched (it answers, having seen only b's arrival).
    let before = ping_sync(&mut a);
    assert!(before
        .iter()
        .all(|m| !m.to_text().unwrap().contains("\"c\"")));
    assert_eq!(metric(&server, "capacity_rejections_total"), 1);
}

#[test]
fn connections_past_the_open_file_limit_get_503_instead_of_hanging() {
    // 200 files: the server keeps 32 for itself and takes 168 connections.
    let mut cmd = std::process::Command::new("bash");
    cmd.args([
        "-c",
        "ulimit -n 200; exec \"$0\" serve --host 127.0.0.1 --port 0",
        bin(),
    ])
    .env("NO_COLOR", "1");
    let mut proc = Proc::spawn_command(cmd, Stdin::Null);
    let url = proc.next_line().replace("listening on ", "");
    let addr = url
        .trim_start_matches("ws://")
        .trim_end_matches('/')
        .to_owned();
    let mut open = Vec::new();
    let refused = loop {
        assert!(open.len() <= 200, "no limit before the file limit");
        let stream = TcpStream::connect(&addr).unwrap();
        stream.set_read_timeout(Some(GUARD)).unwrap();
        let query = format!("{url}?name=m{}", open.len());
        match tungstenite::client(query.as_str(), stream) {
            Ok((ws, _)) => open.push(ws),
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
                break response.status();
            }
            Err(e) => panic!("after {} connections: {e}", open.len()),
        }
    };
    assert_eq!(refused, 503);
    assert_eq!(open.len(), 168);
    let said = proc.stderr_so_far();
    assert!(said.contains("at most 168 connections"), "{said}");
}

#[test]
fn a_reader_that_never_reads_is_closed_and_the_room_is_not_stalled() {
    let server = Server::start(&["--outbox", "16", "--rate", "0"]);
    let before = rss_kib(&server);
    // A client that completes the handshake and then never reads a byte.
    let stalled = TcpStream::connect(server.addr()).unwrap();
    stalled.set_read_timeout(Some(GUARD)).unwrap();
    let (mut stalled, _) =
        tungstenite::client(format!("{}?name=stalled", server.url).as_str(), stalled).unwrap();
    assert!(ping_sync(&mut stalled).iter().all(|m| m.is_text()));
    let mut sender = ws_member(&server.url, "sender");
    let mut reader = ws_member(&server.url, "reader");
    let total = 200;
    let reading = std::thread::spawn(move || {
        let mut got = 0;
        while got < total {
            let event = next_event(&mut reader);
            if event["type"] == "chat" {
                let text = event["message"].as_str().unwrap();
                assert!(text.starts_with(&format!("{got} ")), "in order");
                got += 1;
            }
        }
        got
    });
    // Large messages fill the stalled client's socket buffers quickly, then its outbox.
    let body = "y".repeat(60_000);
    for i in 0..total {
        send_text(&mut sender, &format!("{i} {body}"));
    }
    assert_eq!(
        reading.join().unwrap(),
        total,
        "the reading member got everything"
    );
    assert_eq!(metric(&server, "slow_consumer_disconnects_total"), 1);
    // 12 MB went to the room; the stalled client cost at most its outbox and socket buffers.
    let after = rss_kib(&server);
    println!("server VmRSS before {before} KiB, after {after} KiB");
    assert!(after < before + 64 * 1024, "{before} KiB -> {after} KiB");
}

#[test]
fn a_peer_that_never_answers_pings_is_dropped() {
    let server = Server::start(&["--ping-interval", "200ms"]);
    // A raw socket: handshake, then silence (it never reads, so it never answers a ping).
    let mut raw = TcpStream::connect(server.addr()).unwrap();
    raw.set_read_timeout(Some(GUARD)).unwrap();
    write!(
        raw,
        "GET /?name=mute HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr()
    )
    .unwrap();
    // Read (without answering) until the server hangs up.
    let mut sink = Vec::new();
    let _ = raw.read_to_end(&mut sink);
    assert!(String::from_utf8_lossy(&sink).starts_with("HTTP/1.1 101"));
    assert_eq!(metric(&server, "dead_peer_disconnects_total"), 1);
}

#[test]
fn tokens_are_required_when_set() {
    let server = Server::start(&["--token", "s3cret"]);
    // CLI clients: 401 before the upgrade, exit 4.
    let wrong = send(&server.url, "bob", Some("hi"), &["--token", "nope"]);
    wrong.assert_code(4);
    assert!(wrong.stderr.contains("401"), "{}", wrong.stderr);
    let refused = run(&["join", "eve", "--url", &server.url], None);
    refused.assert_code(4);
    assert!(refused.stderr.contains("401"), "{}", refused.stderr);
    run(&["history", "--url", &server.url], None).assert_code(4);
    // Pages (they cannot send a header, nor read an HTTP status): upgraded, then closed
    // with 4001.
    let mut anonymous = ws_connect_as_page(&server.url, "name=eve");
    assert_eq!(next_event(&mut anonymous)["code"], "unauthorized");
    assert_eq!(close_code(&mut anonymous), 4001);
    // The right token, as a header or in the URL.
    send(&server.url, "bob", Some("hi"), &["--token", "s3cret"]).assert_code(0);
    let mut browser = ws_connect_as_page(&server.url, "name=alice&token=s3cret");
    assert_eq!(next_event(&mut browser)["event"], "welcome");
    // Metrics too (Prometheus sends the token as a bearer credential); health checks need none.
    let scrape = |headers: &str| http_request_with(&server.addr(), "GET", "/metrics", headers);
    let refused = scrape("");
    assert_eq!(refused.status, 401);
    assert_eq!(refused.header("www-authenticate"), Some("Bearer"));
    assert_eq!(scrape("Authorization: Bearer nope\r\n").status, 401);
    assert_eq!(http_request(&server.addr(), "GET", "/healthz").status, 200);
    assert_eq!(metric(&server, "auth_failures_total"), 6);
}

#[test]
fn pages_from_other_origins_are_refused() {
    let server = Server::start(&["--allow-origin", "https://chat.example"]);
    let upgrade = |origin: &str| {
        let mut stream = TcpStream::connect(server.addr()).unwrap();
        stream.set_read_timeout(Some(GUARD)).unwrap();
        write!(
            stream,
            "GET / HTTP/1.1\r\nHost: {}\r\nOrigin: {origin}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            server.addr()
        )
        .unwrap();
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).unwrap();
        String::from_utf8_lossy(&head[9..12]).into_owned()
    };
    assert_eq!(upgrade("https://evil.example"), "403");
    assert_eq!(upgrade(&format!("http://{}", server.addr())), "101");
    assert_eq!(upgrade("https://chat.example"), "101");
    assert_eq!(metric(&server, "origin_rejections_total"), 1);
}

/// Sends a WebSocket upgrade with these `Host` and `Origin` headers (none when empty); returns
/// the status code and the body.
fn upgrade_as(addr: &str, host: &str, origin: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(GUARD)).unwrap();
    let origin = if origin.is_empty() {
        String::new()
    } else {
        format!("Origin: {origin}\r\n")
    };
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: {host}\r\n{origin}Upgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    // The head (and, for a refusal, the body; the server then ends the exchange).
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).unwrap_or(0);
        response.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&response);
        if n == 0 || (text.starts_with("HTTP/1.1 101") && text.contains("\r\n\r\n")) {
            break;
        }
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse::<usize>().ok());
            if length.is_some_and(|length| body.len() >= length) {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// DNS rebinding against a server on every interface: a page of `attacker.example`, whose
/// name the attacker made resolve to this server, is not the server's own page even though
/// its Origin and Host agree. An IP address, localhost and the names given with
/// `--public-url` are.
#[test]
fn a_rebound_page_is_refused_on_a_network_server() {
    let mut server = Server::start_on(
        "0.0.0.0",
        &[
            "--public-url",
            "http://chat.example:8080/,https://chat.example",
        ],
    );
    let port = server.port;
    let addr = server.addr();
    let rebound = format!("attacker.example:{port}");
    let (status, body) = upgrade_as(&addr, &rebound, &format!("http://{rebound}"));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("--public-url"), "{body}");
    assert_eq!(body.trim_end().lines().count(), 1, "{body}");
    for host in [
        format!("127.0.0.1:{port}"),
        format!("192.168.1.20:{port}"),
        format!("[::1]:{port}"),
        format!("localhost:{port}"),
        "chat.example:8080".to_owned(),
    ] {
        let (status, body) = upgrade_as(&addr, &host, &format!("http://{host}"));
        assert_eq!(status, 101, "{host}: {body}");
    }
    // Behind a proxy that rewrites Host: the public origin passes, whatever the Host.
    let (status, body) = upgrade_as(&addr, &addr, "https://chat.example");
    assert_eq!(status, 101, "{body}");
    // A client that is not a browser sends no Origin.
    assert_eq!(upgrade_as(&addr, "anything.example", "").0, 101);
    // A second rebound page is refused as well; the operator was told once, at WARN.
    assert_eq!(
        upgrade_as(&addr, &rebound, &format!("http://{rebound}")).0,
        403
    );
    assert_eq!(metric(&server, "origin_rejections_total"), 2);
    server.proc.signal("TERM");
    let finished = server.proc.finish(GUARD);
    let warnings: Vec<&str> = finished
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains("WARN") && l.contains("--public-url"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", finished.stderr);
    assert!(warnings[0].contains("attacker.example"), "{}", warnings[0]);
}

/// `--public-url` also comes from WSCHAT_PUBLIC_URL, and a bad one is a usage error.
#[test]
fn public_urls_come_from_the_environment_and_are_checked() {
    let mut cmd = command(&["serve", "--host", "0.0.0.0", "--port", "0"]);
    cmd.env(
        "WSCHAT_PUBLIC_URL",
        "https://chat.example,http://intranet.example:8080",
    );
    let mut proc = Proc::spawn_command(cmd, Stdin::Null);
    let line = proc.next_line();
    let port = line.rsplit(':').next().unwrap().trim_end_matches('/');
    let addr = format!("127.0.0.1:{port}");
    assert_eq!(upgrade_as(&addr, &addr, "https://chat.example").0, 101);
    let intranet = "intranet.example:8080";
    assert_eq!(
        upgrade_as(&addr, intranet, &format!("http://{intranet}")).0,
        101
    );
    assert_eq!(
        upgrade_as(&addr, "evil.example", "http://evil.example").0,
        403
    );
    drop(proc);
    let bad = run(
        &["serve", "--port", "0", "--public-url", "chat.example"],
        None,
    );
    bad.assert_code(2);
    assert!(bad.stderr.contains("--public-url"), "{}", bad.stderr);
    assert_no_panic(&bad.stderr);
}

/// A page opened from a file sends `Origin: null`: refused unless `--allow-origin null`, and
/// the operator is told once, at WARN, what happened and which flag allows it.
#[test]
fn pages_opened_from_a_file_are_refused_unless_allowed() {
    let mut server = Server::start(&[]);
    let addr = server.addr();
    for _ in 0..3 {
        let (status, body) = upgrade_as(&addr, &addr, "null");
        assert_eq!(status, 403);
        assert!(body.contains("--allow-origin null"), "{body}");
    }
    server.proc.signal("TERM");
    let finished = server.proc.finish(GUARD);
    let warnings: Vec<&str> = finished
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains("WARN") && l.contains("--allow-origin null"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", finished.stderr);

    let allowing = Server::start(&["--allow-origin", "null"]);
    let addr = allowing.addr();
    assert_eq!(upgrade_as(&addr, &addr, "null").0, 101);
    // Only file pages: other origins are still refused.
    assert_eq!(upgrade_as(&addr, &addr, "https://evil.example").0, 403);
}

/// The authentication scheme is case-insensitive (RFC 7235): `bearer`, `BEARER` and `Bearer`
/// all carry the token, for upgrades and for /metrics.
#[test]
fn the_bearer_scheme_is_case_insensitive() {
    let server = Server::start(&["--token", "s3cret"]);
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let auth = format!("Authorization: {scheme} s3cret\r\n");
        let scrape = http_request_with(&server.addr(), "GET", "/metrics", &auth);
        assert_eq!(scrape.status, 200, "{scheme}");
        let mut stream = TcpStream::connect(server.addr()).unwrap();
        stream.set_read_timeout(Some(GUARD)).unwrap();
        write!(
            stream,
            "GET /?name=x{scheme} HTTP/1.1\r\nHost: {}\r\n{auth}Upgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            server.addr()
        )
        .unwrap();
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).unwrap();
        assert_eq!(&head[9..12], b"101", "{scheme}");
    }
    let wrong = http_request_with(
        &server.addr(),
        "GET",
        "/metrics",
        "Authorization: bearer nope\r\n",
    );
    assert_eq!(wrong.status, 401);
}

#[test]
fn oversized_or_slow_http_requests_are_bounded() {
    let server = Server::start(&["--handshake-timeout", "500ms"]);
    let exchange = |request: &[u8]| -> String {
        let mut stream = TcpStream::connect(server.addr()).unwrap();
        stream.set_read_timeout(Some(GUARD)).unwrap();
        // The server may answer and close before the whole request is written.
        let _ = stream.write_all(request);
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        String::from_utf8_lossy(&response).into_owned()
    };
    let many: String = (0..2000).map(|i| format!("X-H{i}: v\r\n")).collect();
    let response = exchange(format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes());
    assert!(response.starts_with("HTTP/1.1 431"), "{response:.80}");
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let response = exchange(huge.as_bytes());
    assert!(response.starts_with("HTTP/1.1 431"), "{response:.80}");
    // A request that never finishes: the server hangs up after the handshake timeout.
    let response = exchange(b"GET / HTTP/1.1\r\nHost: x\r\n");
    assert!(!response.starts_with("HTTP/1.1 101"), "{response:.80}");
    // Random bytes are a bad request, not a crash.
    let response = exchange(&[0xde, 0xad, 0xbe, 0xef, b'\r', b'\n', b'\r', b'\n']);
    assert!(
        response.starts_with("HTTP/1.1 400") || response.is_empty(),
        "{response:.80}"
    );
    still_chatting(&server);
}

#[test]
fn metrics_and_health_for_operators() {
    let server = Server::start(&[]);
    send(&server.url, "bob", Some("hello"), &[]).assert_code(0);
    assert_eq!(metric(&server, "acks_total"), 1);
    assert_eq!(metric(&server, "history_messages"), 1);
    assert_eq!(metric(&server, "connections_total"), 1);
    assert_eq!(http_request(&server.addr(), "GET", "/healthz").status, 200);
}

#[test]
fn tls_serves_wss_to_clients_that_trust_its_ca() {
    let server = common::tls::TlsServer::start();
    let path = |name: &str| server.path(name);
    let url = server.url.clone();
    assert!(url.starts_with("wss://127.0.0.1:"), "{url}");
    let mut alice = join(&url, "alice", &["--ca", &path("ca.pem"), "--count", "1"]);
    send(&url, "bob", Some("over tls"), &["--ca", &path("ca.pem")]).assert_code(0);
    alice.expect_line("[alice] received: bob says: over tls");
    alice.finish(GUARD).assert_code(0);
    // Without the CA the certificate is not trusted: cannot connect, one clear line.
    let untrusted = send(&url, "bob", Some("hi"), &[]);
    untrusted.assert_code(3);
    assert!(untrusted.stderr.contains("TLS") || untrusted.stderr.contains("certificate"));
    assert_no_panic(&untrusted.stderr);
    // A plain ws:// URL for a TLS server: cannot connect, and the line says what to try.
    let plain = url.replacen("wss://", "ws://", 1);
    let mismatched = send(&plain, "bob", Some("hi"), &[]);
    mismatched.assert_code(3);
    assert!(
        mismatched.stderr.contains("try wss://"),
        "{}",
        mismatched.stderr
    );
}

#[test]
fn history_in_memory_stays_within_keep_bytes() {
    let budget: u64 = 64 * 1024;
    let server = Server::start(&["--keep-bytes", &budget.to_string(), "--rate", "0"]);
    // 8 rooms × 4 messages of 8 KiB, each costing the budget about 16 KiB (its text, and its
    // encoding for replays): 512 KiB, eight times the budget.
    let mut poster = ws_connect(&server.url, "name=poster&room=r0");
    let text = "x".repeat(8 * 1024);
    let mut reference = 0;
    for room in 0..8 {
        if room > 0 {
            send_text(
                &mut poster,
                &format!(r#"{{"type":"join","room":"r{room}"}}"#),
            );
        }
        for _ in 0..4 {
            reference += 1;
            let chat = serde_json::json!({"type": "chat", "content": text, "ref": reference});
            send_text(&mut poster, &chat.to_string());
            loop {
                let event = next_event(&mut poster);
                if event["type"] == "ack" {
                    assert_eq!(event["ref"], reference);
                    break;
                }
            }
        }
    }
    let held = metric(&server, "history_bytes");
    assert!(held <= budget && held > budget / 2, "{held} bytes held");
    assert!(metric(&server, "history_evicted_total") >= 24);
    // The room written first lost everything from memory, its window too: a client that saw
    // its four messages and resumes there is told its history started over.
    let mut late = ws_connect(&server.url, "name=late&room=r0&since=4");
    loop {
        let event = next_event(&mut late);
        if event["type"] == "gap" {
            assert_eq!(event["restarted"], true, "{event}");
            break;
        }
        assert_ne!(event["type"], "chat", "{event}");
    }
    // The room written last keeps as much of its history as fits: three of its four.
    let mut recent = ws_connect(&server.url, "name=recent&room=r7");
    let mut replayed = Vec::new();
    loop {
        let event = next_event(&mut recent);
        match event["type"].as_str() {
            Some("chat") => replayed.push((event["history"].as_bool(), event["id"].as_u64())),
            Some("synced") => break,
            _ => {}
        }
    }
    assert_eq!(
        replayed,
        vec![
            (Some(true), Some(2)),
            (Some(true), Some(3)),
            (Some(true), Some(4))
        ]
    );
}

#[test]
fn rooms_written_once_long_ago_cost_nothing_past_the_history_budget() {
    let budget = 1 << 20;
    let server = Server::start(&["--keep-bytes", "1MiB", "--rate", "0", "--history", "0"]);
    let mut poster = ws_connect(&server.url, "name=poster&quiet=1");
    let before = rss_kib(&server);
    // 50,000 rooms, one message each, sent without waiting; the last one acknowledged.
    let rooms = 50_000;
    for room in 0..rooms {
        send_text(
            &mut poster,
            &format!(r#"{{"type":"join","room":"r{room}"}}"#),
        );
        let last = room + 1 == rooms;
        let chat = if last {
            r#"{"type":"chat","content":"once","ref":1}"#
        } else {
            "once"
        };
        send_text(&mut poster, chat);
    }
    loop {
        let event = next_event(&mut poster);
        if event["type"] == "ack" {
            break;
        }
    }
    let held = metric(&server, "history_bytes");
    assert!(held <= budget, "{held} bytes held");
    let grown_kib = rss_kib(&server).saturating_sub(before);
    eprintln!("50,000 rooms of one message, --keep-bytes 1MiB: the server grew by {grown_kib} KiB");
    // Before rooms cost the budget, each kept a window of its own: 12 MiB for these.
    assert!(grown_kib < 6 * 1024, "grew by {grown_kib} KiB");
}

#[test]
fn rooms_nobody_is_in_leave_memory_with_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let server = Server::start(&["--db", db.to_str().unwrap(), "--rate", "0"]);
    let mut walker = ws_connect(&server.url, "name=walker");
    let before = rss_kib(&server);
    // 5,000 empty rooms entered and left in turn; the last one answers a `who`.
    for room in 0..5_000 {
        send_text(
            &mut walker,
            &format!(r#"{{"type":"join","room":"r{room}"}}"#),
        );
    }
    send_text(&mut walker, r#"{"type":"who"}"#);
    loop {
        if next_event(&mut walker)["type"] == "who" {
            break;
        }
    }
    // The room walker is in, and nothing of the others (each counts when held).
    assert!(metric(&server, "history_bytes") < 1024);
    let grown_kib = rss_kib(&server).saturating_sub(before);
    eprintln!("5,000 empty rooms entered and left, --db: the server grew by {grown_kib} KiB");
}
