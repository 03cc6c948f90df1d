//! The chat service: rooms, names, slash commands, history, resume and durable storage,
//! through the real binary.

mod common;

use common::*;

#[test]
fn slash_commands_reach_the_right_people() {
    let server = Server::start(&[]);
    let mut alice = join_spawn(&server.url, "alice", &[], Stdin::Piped);
    alice.expect_line("[alice] connected");
    let mut bob = join(&server.url, "bob", &[]);
    let mut carol = join(&server.url, "carol", &["--room", "dev"]);
    alice.expect_line("[alice] system: bob joined the chat (2 here)");

    alice.write_line("/me waves");
    bob.expect_line("[bob] received: * alice waves");

    alice.write_line("/msg carol psst");
    carol.expect_line("[carol] private: alice says: psst");
    alice.expect_line("[alice] private to carol: alice says: psst");

    alice.write_line("/msg nobody hello?");
    alice.expect_line("[alice] error: nobody is called 'nobody'");

    alice.write_line("/who");
    alice.expect_line("[alice] in lobby: alice, bob");
    alice.write_line("/rooms");
    alice.expect_line("[alice] rooms: dev (1), lobby (2)");

    alice.write_line("/name alicia");
    alice.expect_line("[alice] system: alice is now known as alicia");
    bob.expect_line("[bob] system: alice is now known as alicia");

    alice.write_line("/join dev");
    bob.expect_line("[bob] system: alicia left the chat (1 here)");
    carol.expect_line("[carol] system: alicia joined the chat (2 here)");
    alice.expect_line("[alice] welcome: Welcome to wschat, alicia! You are in dev; 2 people here.");
    alice.write_line("now in dev");
    carol.expect_line("[carol] received: alicia says: now in dev");

    alice.write_line("/help");
    let help = alice.next_line();
    assert!(help.starts_with("[alice] commands: /join ROOM"), "{help}");

    alice.write_line("/dance");
    alice.expect_line("[alice] error: unknown command '/dance' (try /help)");
    alice.write_line("/quit");
    let done = alice.finish(GUARD);
    done.assert_code(0);
    // Private and room messages never leaked to bob.
    bob.signal("TERM");
    let bob = bob.finish(GUARD);
    assert!(
        !bob.stdout
            .iter()
            .any(|l| l.contains("psst") || l.contains("now in dev")),
        "{:?}",
        bob.stdout
    );
}

#[test]
fn joiners_see_recent_history_apart_from_live_messages() {
    let server = Server::start(&["--history", "2"]);
    for text in ["one", "two", "three"] {
        send(&server.url, "bob", Some(text), &[]).assert_code(0);
    }
    let mut carol = join(&server.url, "carol", &[]);
    carol.expect_line("[carol] history: bob says: two");
    carol.expect_line("[carol] history: bob says: three");
    send(&server.url, "bob", Some("four"), &[]).assert_code(0);
    carol.expect_line("[carol] received: bob says: four");

    let history = run(&["history", "--url", &server.url, "--limit", "10"], None);
    history.assert_code(0);
    let ids: Vec<&str> = history
        .stdout
        .iter()
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(ids, ["#1", "#2", "#3", "#4"]);
    let since = run(
        &["history", "--url", &server.url, "--since", "2", "--json"],
        None,
    );
    since.assert_code(0);
    let messages: Vec<serde_json::Value> = since
        .stdout
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["message"], "three");
    assert_eq!(messages[1]["id"], 4);
}

#[test]
fn a_resuming_client_gets_exactly_what_it_missed() {
    let server = Server::start(&["--keep", "5"]);
    let mut alice = ws_member(&server.url, "alice");
    for i in 1..=3 {
        send_text(&mut alice, &format!("m{i}"));
    }
    // Frames are handled in order: once the ping is answered, the room has m1..m3.
    ping_sync(&mut alice);
    // A client that saw m1 comes back: m2 and m3, in order, marked history, then `synced`.
    let mut back = ws_connect(&server.url, "name=bob&since=1");
    let mut replay = Vec::new();
    loop {
        let event = next_event(&mut back);
        match event["type"].as_str() {
            Some("chat") => {
                assert_eq!(event["history"], true);
                replay.push(event["message"].as_str().unwrap().to_owned());
            }
            Some("synced") => {
                assert_eq!(event["id"], 3);
                break;
            }
            _ => {}
        }
    }
    assert_eq!(replay, ["m2", "m3"]);
    // Live messages follow without a gap.
    send_text(&mut alice, "m4");
    let live = next_non_system(&mut back);
    assert_eq!(
        (live["message"].as_str(), live["id"].as_u64()),
        (Some("m4"), Some(4))
    );

    // Only five are kept (m6..m10): a client that saw only m1 is told what it lost.
    for i in 5..=10 {
        send_text(&mut alice, &format!("m{i}"));
    }
    ping_sync(&mut alice);
    let mut late = ws_connect(&server.url, "name=carol&since=1");
    let mut gap = None;
    let mut ids = Vec::new();
    loop {
        let event = next_event(&mut late);
        match event["type"].as_str() {
            Some("gap") => gap = event["missed"].as_u64(),
            Some("chat") => ids.push(event["id"].as_u64().unwrap()),
            Some("synced") => break,
            _ => {}
        }
    }
    assert_eq!(gap, Some(4), "m2..m5 are no longer kept");
    assert_eq!(ids, [6, 7, 8, 9, 10]);
}

#[test]
fn join_resumes_without_gaps_or_duplicates_across_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let db = db.to_str().unwrap();
    let port = closed_port();
    let url = format!("ws://127.0.0.1:{port}/");
    let mut server = serve_on(port, &["--db", db]);
    let mut alice = join(&url, "alice", &["--count", "6"]);
    for i in 1..=3 {
        send(&url, "bob", Some(&format!("m{i}")), &[]).assert_code(0);
    }
    for i in 1..=3 {
        alice.expect_line(&format!("[alice] received: bob says: m{i}"));
    }
    server.kill_hard();
    // alice notices, retries, and comes back to the restarted server.
    let _server = serve_on(port, &["--db", db]);
    alice.expect_line("[alice] connected");
    for i in 4..=6 {
        send(&url, "bob", Some(&format!("m{i}")), &[]).assert_code(0);
    }
    let done = alice.finish(GUARD);
    done.assert_code(0);
    let received: Vec<&String> = done.stdout.iter().filter(|l| l.contains("says:")).collect();
    let expected: Vec<String> = (1..=6)
        .map(|i| format!("[alice] received: bob says: m{i}"))
        .collect();
    assert_eq!(received, expected.iter().collect::<Vec<_>>());
    assert!(done.stderr.contains("reconnecting"), "{}", done.stderr);
}

#[test]
fn acknowledged_messages_survive_sigkill_with_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let db = db.to_str().unwrap();
    let mut server = Server::start(&["--db", db]);
    let port = server.port;
    let lines: String = (1..=50).map(|i| format!("line {i}\n")).collect();
    let sent = run(&["send", "bob", "--url", &server.url], Some(&lines));
    sent.assert_code(0);
    server.proc.kill_hard();

    let _server = serve_on(port, &["--db", db]);
    let url = format!("ws://127.0.0.1:{port}/");
    let history = run(&["history", "--url", &url, "--limit", "1000"], None);
    history.assert_code(0);
    assert_eq!(history.stdout.len(), 50, "{:?}", history.stdout);
    for (i, line) in history.stdout.iter().enumerate() {
        assert!(
            line.starts_with(&format!("#{} ", i + 1))
                && line.ends_with(&format!("bob says: line {}", i + 1)),
            "{line}"
        );
    }
}

#[test]
fn names_and_rooms_are_validated_with_clear_errors() {
    let server = Server::start(&[]);
    let bad_room = run(
        &["join", "alice", "--url", &server.url, "--room", "no spaces"],
        None,
    );
    bad_room.assert_code(2);
    assert!(bad_room.stderr.contains("--room"), "{}", bad_room.stderr);
    // A raw client asking for a bad room is told why, then closed with 4009.
    let mut ws = ws_connect(&server.url, "name=alice&room=%00evil");
    let error = next_event(&mut ws);
    assert_eq!(error["code"], "invalid_room");
    let close = expect_close(&mut ws).expect("a close frame");
    assert_eq!(u16::from(close.code), 4009);
    // Renaming to a taken name is refused and the old name kept.
    let mut a = ws_member(&server.url, "alice");
    let _b = ws_member(&server.url, "bob");
    send_text(&mut a, r#"{"type":"setUsername","username":"bob"}"#);
    let error = loop {
        let event = next_event(&mut a);
        if event["type"] == "error" {
            break event;
        }
    };
    assert_eq!(error["code"], "name_taken");
}

/// The next event that is not a notice or a state event (welcome, join, presence, synced).
fn next_reply(ws: &mut Ws) -> serde_json::Value {
    next_non_system(ws)
}

#[test]
fn a_private_message_to_yourself_arrives_once() {
    let server = Server::start(&[]);
    let mut alice = ws_member(&server.url, "alice");
    send_text(
        &mut alice,
        r#"{"type":"chat","content":"note to self","to":"alice","ref":1}"#,
    );
    let copy = next_reply(&mut alice);
    assert_eq!(copy["type"], "chat", "{copy}");
    assert_eq!(copy["message"], "note to self");
    assert_eq!(copy["private"], true);
    let ack = next_reply(&mut alice);
    assert_eq!(ack["type"], "ack", "not acknowledged after one copy: {ack}");
    assert_eq!(ack["delivered"], 1);
    // Nothing else came: the next thing alice hears is the answer to this.
    send_text(&mut alice, r#"{"type":"who"}"#);
    let who = next_reply(&mut alice);
    assert_eq!(who["type"], "who", "a second copy arrived: {who}");
}

/// Names that mix scripts are refused (`аlice` with a Cyrillic `а`); names that look like a
/// name held (case, confusable letters of one script) are taken; both at connect and on
/// rename, and rooms that mix scripts are refused too.
#[test]
fn look_alike_names_are_refused_or_taken() {
    let server = Server::start(&[]);
    let _alice = ws_member(&server.url, "alice");
    // Cyrillic а + Latin "lice": mixed scripts.
    let mut mixed = ws_connect(&server.url, "name=%D0%B0lice");
    let error = next_event(&mut mixed);
    assert_eq!(error["code"], "invalid_name", "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("mixes scripts"),
        "{error}"
    );
    assert_eq!(u16::from(expect_close(&mut mixed).unwrap().code), 4009);
    // Another case of the same letters: the same name.
    let mut shouting = ws_connect(&server.url, "name=ALICE");
    let error = next_event(&mut shouting);
    assert_eq!(error["code"], "name_taken", "{error}");
    assert_eq!(u16::from(expect_close(&mut shouting).unwrap().code), 4009);
    // All Cyrillic "асе" looks like Latin "ace".
    let _ace = ws_member(&server.url, "ace");
    let mut cyrillic = ws_connect(&server.url, "name=%D0%B0%D1%81%D0%B5");
    assert_eq!(next_event(&mut cyrillic)["code"], "name_taken");
    // A room whose name mixes scripts.
    let mut room = ws_connect(&server.url, "name=dora&room=l%D0%BEbby");
    assert_eq!(next_event(&mut room)["code"], "invalid_room");

    // Renames: the same rules; a member may change the case of its own name.
    let mut bob = ws_member(&server.url, "bob");
    for (wanted, code) in [("\u{430}lice", "invalid_name"), ("Alice", "name_taken")] {
        let rename = serde_json::json!({"type": "setUsername", "username": wanted});
        send_text(&mut bob, &rename.to_string());
        let error = next_reply(&mut bob);
        assert_eq!(error["code"], code, "{wanted}: {error}");
    }
    send_text(&mut bob, r#"{"type":"setUsername","username":"Bob"}"#);
    send_text(&mut bob, r#"{"type":"who"}"#);
    let who = next_reply(&mut bob);
    assert_eq!(
        who["members"],
        serde_json::json!(["Bob", "ace", "alice"]),
        "{who}"
    );
    // The CLI refuses a mixed name before connecting.
    let refused = run(&["join", "\u{430}lice", "--url", &server.url], None);
    refused.assert_code(2);
    assert!(
        refused.stderr.contains("mixes scripts"),
        "{}",
        refused.stderr
    );
}
