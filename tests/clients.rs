//! `wschat join` and `wschat send` as scripts use them: the real binary against a real server,
//! checked by what they print and how they exit.

mod common;

use std::net::TcpListener;
use std::time::Duration;

use common::*;
use serde_json::Value;

#[test]
fn scripted_two_terminal_check_alice_prints_exactly_connected_and_bobs_line() {
    let server = Server::start(&[]);
    let mut alice = join(&server.url, "alice", &["--count", "1"]);

    let bob = send(&server.url, "bob", Some("morning back"), &[]);
    bob.assert_code(0);
    assert_eq!(bob.stdout, Vec::<String>::new(), "send printed something");
    assert_eq!(
        bob.stderr_lines(),
        Vec::<&str>::new(),
        "send wrote to stderr"
    );

    let alice = alice.finish(GUARD);
    alice.assert_code(0);
    assert_eq!(
        alice.stdout,
        vec![
            "[alice] connected",
            "[alice] received: bob says: morning back"
        ]
    );
}

#[test]
fn send_to_a_closed_port_exits_3_with_one_line_naming_connection_refused() {
    let url = format!("ws://127.0.0.1:{}", closed_port());
    let bob = send(&url, "bob", Some("hi"), &[]);
    bob.assert_code(3);
    assert_eq!(bob.stdout, Vec::<String>::new());
    let lines = bob.stderr_lines();
    assert_eq!(lines.len(), 1, "expected one stderr line: {lines:?}");
    assert!(lines[0].contains("connection refused"), "{lines:?}");
    assert!(lines[0].contains(&url), "the line names the URL: {lines:?}");
    assert_no_panic(&bob.stderr);
}

#[test]
fn join_to_a_closed_port_exits_3_too() {
    let url = format!("ws://127.0.0.1:{}", closed_port());
    let mut alice = join_spawn(&url, "alice", &[], Stdin::Null);
    let alice = alice.finish(GUARD);
    alice.assert_code(3);
    assert_eq!(alice.stdout, Vec::<String>::new(), "no 'connected' line");
    assert_eq!(alice.stderr_lines().len(), 1, "{}", alice.stderr);
    assert!(alice.stderr.contains("connection refused"));
    assert_no_panic(&alice.stderr);
}

#[test]
fn send_times_out_with_7_when_the_server_never_answers_the_handshake() {
    // Accepted by the kernel's backlog, never answered.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/", silent.local_addr().unwrap());
    let bob = send(&url, "bob", Some("hi"), &["--connect-timeout", "300ms"]);
    bob.assert_code(7);
    assert_eq!(bob.stderr_lines().len(), 1, "{}", bob.stderr);
    assert_no_panic(&bob.stderr);
}

#[test]
fn send_exits_6_when_fewer_than_min_recipients_got_the_message() {
    let server = Server::start(&[]);
    let mut carol = ws_member(&server.url, "carol");

    let bob = send(
        &server.url,
        "bob",
        Some("anyone?"),
        &["--min-recipients", "2"],
    );
    bob.assert_code(6);
    let lines = bob.stderr_lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("min-recipients"), "{lines:?}");
    // The one listener did get it.
    assert_eq!(next_non_system(&mut carol)["message"], "anyone?");

    let bob = send(
        &server.url,
        "bob",
        Some("enough"),
        &["--min-recipients", "1"],
    );
    bob.assert_code(0);
    assert_eq!(next_non_system(&mut carol)["message"], "enough");
}

#[test]
fn send_with_no_message_sends_each_stdin_line_in_order() {
    let server = Server::start(&[]);
    let mut carol = ws_member(&server.url, "carol");
    for dash in [false, true] {
        let mut args = vec!["send", "bob", "--url", &server.url];
        if dash {
            args.push("-");
        }
        let bob = run(&args, Some("first line\nsecond line\nthird line\n"));
        bob.assert_code(0);
        assert_eq!(bob.stdout, Vec::<String>::new());
        for expected in ["first line", "second line", "third line"] {
            let chat = next_message(&mut carol);
            assert_eq!(chat["type"], "chat", "{chat}");
            assert_eq!(chat["username"], "bob", "{chat}");
            assert_eq!(chat["message"], expected, "(dash: {dash}) {chat}");
        }
    }
}

#[test]
fn send_wait_prints_a_reply_that_arrives_during_the_wait() {
    let server = Server::start(&[]);
    let mut carol = ws_member(&server.url, "carol");
    // Carol answers as soon as she sees bob's message.
    let replier = std::thread::spawn(move || {
        let chat = next_message(&mut carol);
        assert_eq!(chat["message"], "ping?", "{chat}");
        send_text(&mut carol, "pong, bob");
        // Carol stays until bob is done, or bob would print her leaving.
        carol
    });
    let bob = send(&server.url, "bob", Some("ping?"), &["--wait", "1s"]);
    let _carol = replier.join().expect("carol replied");
    bob.assert_code(0);
    assert_eq!(bob.stdout, vec!["[bob] received: carol says: pong, bob"]);
    assert!(
        bob.elapsed >= Duration::from_secs(1),
        "send ended before --wait was over: {:?}",
        bob.elapsed
    );
}

#[test]
fn a_send_connection_is_quiet_no_join_or_leave_notices() {
    let server = Server::start(&[]);
    let mut carol = ws_member(&server.url, "carol");
    send(&server.url, "bob", Some("one"), &[]).assert_code(0);
    send(&server.url, "bob", Some("two"), &[]).assert_code(0);
    // Carol's next two events are the two chats: no "bob joined", no "bob left" around them.
    for expected in ["one", "two"] {
        let event = next_message(&mut carol);
        assert_eq!(event["type"], "chat", "{event}");
        assert_eq!(event["message"], expected, "{event}");
    }
}

#[test]
fn join_json_prints_one_json_object_per_line() {
    let server = Server::start(&[]);
    let mut alice = join_spawn(
        &server.url,
        "alice",
        &["--json", "--count", "1"],
        Stdin::Null,
    );
    let first: Value = serde_json::from_str(&alice.next_line()).expect("first line is JSON");
    assert_eq!(first["type"], "connected", "{first}");
    assert_eq!(first["name"], "alice", "{first}");

    send(&server.url, "bob", Some("two\nlines"), &[]).assert_code(0);
    let alice = alice.finish(GUARD);
    alice.assert_code(0);
    let events: Vec<Value> = alice
        .stdout
        .iter()
        .map(|line| {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line:?}"));
            assert!(v["type"].is_string(), "no type: {line}");
            v
        })
        .collect();
    // Between the two, only state events (the end of the history replay) may appear.
    for middle in &events[1..events.len() - 1] {
        assert!(
            STATE_EVENTS.iter().any(|t| middle["type"] == *t),
            "unexpected event {middle}"
        );
    }
    let chat = events.last().unwrap();
    assert_eq!(chat["type"], "chat", "{chat}");
    assert_eq!(chat["username"], "bob");
    assert_eq!(chat["message"], "two\nlines");
    assert!(
        chat["id"].is_u64() && chat["timestamp"].is_string(),
        "{chat}"
    );
}

#[test]
fn join_escapes_control_characters_in_received_text() {
    let server = Server::start(&[]);
    let mut mallory = ws_member(&server.url, "mallory");
    let mut alice = join(&server.url, "alice", &["--count", "1"]);
    expect_notice(&mut mallory, "alice joined the chat");

    send_text(
        &mut mallory,
        "evil\u{1b}[31mred\nline2\u{7}\u{1b}]0;title\u{7}",
    );
    let alice = alice.finish(GUARD);
    alice.assert_code(0);
    assert_eq!(
        alice.stdout,
        vec![
            "[alice] connected",
            "[alice] received: mallory says: evil\\u{1b}[31mred\\nline2\\u{7}\\u{1b}]0;title\\u{7}",
        ]
    );
    for line in &alice.stdout {
        assert!(!line.chars().any(char::is_control), "raw control: {line:?}");
    }
}

#[test]
fn join_stays_connected_after_its_stdin_ends() {
    let server = Server::start(&[]);
    let mut carol = ws_member(&server.url, "carol");
    let mut alice = join_spawn(&server.url, "alice", &["--count", "1"], Stdin::Piped);
    alice.expect_line("[alice] connected");
    expect_notice(&mut carol, "alice joined the chat");

    // A piped line is sent; then the input ends.
    alice.write_line("said before the end of input");
    alice.close_stdin();
    let chat = next_message(&mut carol);
    assert_eq!(chat["username"], "alice", "{chat}");
    assert_eq!(chat["message"], "said before the end of input");

    // Both carol and alice are still members, and alice still prints what arrives.
    send(
        &server.url,
        "bob",
        Some("still there?"),
        &["--min-recipients", "2"],
    )
    .assert_code(0);
    let alice = alice.finish(GUARD);
    alice.assert_code(0);
    assert_eq!(
        alice.stdout.last().map(String::as_str),
        Some("[alice] received: bob says: still there?")
    );
}

#[test]
fn join_for_a_duration_exits_0_after_it() {
    let server = Server::start(&[]);
    let mut alice = join(&server.url, "alice", &["--for", "1s"]);
    let alice = alice.finish(GUARD);
    alice.assert_code(0);
    assert!(
        alice.elapsed >= Duration::from_secs(1),
        "exited after {:?}",
        alice.elapsed
    );
    assert_eq!(alice.stdout, vec!["[alice] connected"]);
}

#[test]
fn a_duplicate_name_makes_join_exit_4_with_an_error_line() {
    let server = Server::start(&[]);
    let _first = join(&server.url, "alice", &[]);
    let mut second = join_spawn(&server.url, "alice", &[], Stdin::Null);
    let second = second.finish(GUARD);
    second.assert_code(4);
    assert!(
        !second.stdout.iter().any(|l| l.contains("connected")),
        "a rejected join must not say connected: {:?}",
        second.stdout
    );
    // The reason is in the one error line, on stderr, and nowhere else.
    assert_eq!(second.stdout, Vec::<String>::new());
    let lines = second.stderr_lines();
    assert_eq!(lines.len(), 1, "{}", second.stderr);
    assert!(
        lines[0].starts_with("wschat: error: ")
            && lines[0].contains("the name 'alice' is already taken")
            && lines[0].contains("4009"),
        "{lines:?}"
    );
    assert_no_panic(&second.stderr);
}

#[test]
fn join_and_send_work_against_a_plain_relay() {
    let server = Server::start(&["--raw"]);
    let mut alice = join(&server.url, "alice", &["--count", "1"]);

    let bob = send(&server.url, "bob", Some("morning back"), &[]);
    bob.assert_code(0);
    assert_eq!(bob.stdout, Vec::<String>::new());

    let alice = alice.finish(GUARD);
    alice.assert_code(0);
    assert_eq!(
        alice.stdout,
        vec![
            "[alice] connected",
            "[alice] received: bob says: morning back"
        ]
    );
}

#[test]
fn send_sends_name_says_text_to_a_plain_relay_and_exits_0() {
    let server = Server::start(&["--raw"]);
    let mut carol = ws_connect(&server.url, "");
    ping_sync(&mut carol);
    for i in 0..10 {
        let text = format!("hello relay {i}");
        let bob = send(&server.url, "bob", Some(&text), &[]);
        assert_eq!(
            next_frame(&mut carol),
            tungstenite::Message::text(format!("bob says: {text}"))
        );
        bob.assert_code(0);
        assert_eq!(bob.stdout, Vec::<String>::new());
    }
}

#[test]
fn send_to_a_plain_relay_refuses_min_recipients_as_a_usage_error() {
    let server = Server::start(&["--raw"]);
    // A relay reports no recipients, so asking for a minimum cannot be honoured.
    let bob = send(&server.url, "bob", Some("x"), &["--min-recipients", "1"]);
    bob.assert_code(2);
    assert_eq!(bob.stderr_lines().len(), 1, "{}", bob.stderr);
    assert!(bob.stderr.contains("relay"), "{}", bob.stderr);
    assert_no_panic(&bob.stderr);
}

#[test]
fn help_lists_the_exit_codes() {
    let help = run(&["--help"], None);
    help.assert_code(0);
    let text = help.stdout.join("\n");
    assert!(text.contains("Exit codes:"), "{text}");
    for code in ["0", "2", "3", "4", "5", "6", "7"] {
        assert!(
            help.stdout
                .iter()
                .any(|l| l.trim_start().starts_with(&format!("{code} "))),
            "exit code {code} missing from --help:\n{text}"
        );
    }
    for sub in ["serve", "join", "send"] {
        let help = run(&[sub, "--help"], None);
        help.assert_code(0);
        assert!(
            help.stdout.join("\n").contains("Exit codes:"),
            "{sub} --help"
        );
    }
}

#[test]
fn bad_arguments_exit_2() {
    for args in [
        &["join", "bad name", "--url", "ws://127.0.0.1:9/"][..],
        &["send", "bob", "hi", "--url", "ftp://127.0.0.1/"],
        &["join", "alice", "--for", "soon"],
        &["send", "bob", "   "],
    ] {
        let out = run(args, None);
        out.assert_code(2);
        assert_no_panic(&out.stderr);
    }
}

#[test]
fn join_exits_143_on_sigterm_and_leaves_cleanly() {
    let server = Server::start(&[]);
    let mut watcher = ws_member(&server.url, "watcher");
    let mut alice = join(&server.url, "alice", &[]);
    expect_notice(&mut watcher, "alice joined the chat");
    alice.signal("TERM");
    let alice = alice.finish(GUARD);
    alice.assert_code(143);
    assert_no_panic(&alice.stderr);
    // It said goodbye with a close frame: the room hears it left.
    expect_notice(&mut watcher, "alice left the chat");
}

#[test]
fn join_exits_130_on_sigint_even_while_messages_arrive() {
    // Every received message is a turn of join's select loop; between turns no SIGINT
    // listener exists. A stream of messages makes that window wide enough to hit.
    let server = Server::start(&[
        "--outbox", "100000", "--rate", "100000", "--burst", "100000",
    ]);
    let mut carol = ws_member(&server.url, "carol");
    for round in 0..5 {
        let name = format!("alice{round}");
        let mut alice = join(&server.url, &name, &[]);
        expect_notice(&mut carol, &format!("{name} joined the chat"));
        for i in 0..2000 {
            send_text(&mut carol, &format!("flood {i}"));
        }
        alice.next_line();
        alice.signal("INT");
        let alice = alice.finish(GUARD);
        alice.assert_code(130);
        expect_notice(&mut carol, &format!("{name} left the chat"));
    }
}

#[test]
fn join_quit_command_from_a_pipe_exits_0() {
    let server = Server::start(&[]);
    let mut watcher = ws_member(&server.url, "watcher");
    let mut alice = join_spawn(&server.url, "alice", &[], Stdin::Piped);
    alice.expect_line("[alice] connected");
    expect_notice(&mut watcher, "alice joined the chat");
    alice.write_line("bye all");
    alice.write_line("/quit");
    let chat = next_message(&mut watcher);
    assert_eq!(chat["message"], "bye all", "{chat}");
    let alice = alice.finish(GUARD);
    alice.assert_code(0);
    expect_notice(&mut watcher, "alice left the chat");
}

#[test]
fn join_prints_no_colour_when_stdout_is_not_a_terminal() {
    let server = Server::start(&[]);
    let mut cmd = command(&["join", "alice", "--url", &server.url, "--count", "1"]);
    cmd.env_remove("NO_COLOR");
    let mut alice = Proc::spawn_command(cmd, Stdin::Null);
    alice.expect_line("[alice] connected");
    send(&server.url, "bob", Some("plain please"), &[]).assert_code(0);
    let alice = alice.finish(GUARD);
    alice.assert_code(0);
    assert_eq!(
        alice.stdout,
        vec![
            "[alice] connected",
            "[alice] received: bob says: plain please"
        ],
        "colour codes in piped output"
    );
}

#[test]
fn join_escapes_control_characters_from_a_plain_relay_too() {
    let server = Server::start(&["--raw"]);
    let mut alice = join(&server.url, "alice", &["--count", "1"]);
    // The relay gives no welcome: a pong proves the raw client is registered, and alice
    // printed `connected` after her handshake.
    let mut mallory = ws_connect(&server.url, "");
    assert!(ping_sync(&mut mallory).is_empty());
    send_text(&mut mallory, "\u{1b}[2Jcleared\r");
    let alice = alice.finish(GUARD);
    alice.assert_code(0);
    assert_eq!(
        alice.stdout,
        vec![
            "[alice] connected",
            "[alice] received: \\u{1b}[2Jcleared\\r"
        ]
    );
}

#[test]
fn send_wait_exits_5_when_the_server_goes_away_during_the_wait() {
    let mut server = Server::start(&["--grace", "2s"]);
    let mut carol = ws_member(&server.url, "carol");
    let mut bob = Proc::spawn(
        &[
            "send",
            "bob",
            "--url",
            &server.url,
            "--wait",
            "20s",
            "--",
            "bye",
        ],
        Stdin::Null,
    );
    // Bob's ack is queued when carol's copy is: it precedes the close frame.
    assert_eq!(next_message(&mut carol)["message"], "bye");
    server.proc.signal("TERM");
    assert_eq!(
        expect_close(&mut carol).map(|f| u16::from(f.code)),
        Some(1001)
    );
    let _ = carol.flush();
    while carol.read().is_ok() {}
    let bob = bob.finish(GUARD);
    bob.assert_code(5);
    assert_eq!(bob.stderr_lines().len(), 1, "{}", bob.stderr);
    assert!(bob.stderr.contains("1001"), "{}", bob.stderr);
    server.proc.finish(GUARD).assert_code(0);
}

#[test]
fn send_of_a_message_the_server_refuses_as_too_big_exits_6() {
    let server = Server::start(&["--max-message-bytes", "64"]);
    let bob = send(&server.url, "bob", Some(&"x".repeat(200)), &[]);
    bob.assert_code(6);
    assert_eq!(bob.stderr_lines().len(), 1, "{}", bob.stderr);
    assert!(bob.stderr.contains("1009"), "{}", bob.stderr);
}

#[test]
fn serve_on_a_port_in_use_exits_1_with_one_line() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = run(&["serve", "--host", "127.0.0.1", "--port", &port], None);
    out.assert_code(1);
    assert_eq!(out.stdout, Vec::<String>::new(), "no 'listening on' line");
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains(&port),
        "the line names the port: {lines:?}"
    );
    assert_no_panic(&out.stderr);
}

#[test]
fn piped_bulk_send_keeps_to_the_servers_rate_and_every_line_arrives_in_order() {
    // Past its burst, a sender faster than 50/s would be throttled for over a second and
    // closed with 4029; `send` learns the limits in the handshake and keeps under them.
    let server = Server::start(&["--rate", "50", "--burst", "10", "--flood-timeout", "1s"]);
    let mut alice = join(&server.url, "alice", &["--count", "200"]);
    let lines: String = (1..=200).map(|i| format!("line {i}\n")).collect();
    let bob = run(&["send", "bob", "--url", &server.url], Some(&lines));
    bob.assert_code(0);
    assert_eq!(bob.stdout, Vec::<String>::new());
    // Off a terminal, pacing adds nothing to stderr.
    assert_eq!(bob.stderr_lines(), Vec::<&str>::new());
    let alice = alice.finish(GUARD);
    alice.assert_code(0);
    let expected: Vec<String> = (1..=200)
        .map(|i| format!("[alice] received: bob says: line {i}"))
        .collect();
    assert_eq!(alice.stdout[1..], expected[..]);
    assert_eq!(metric(&server, "rate_limit_disconnects_total"), 0);
}

#[test]
fn the_server_states_its_limits_in_the_handshake_and_the_welcome() {
    let server = Server::start(&[
        "--rate",
        "7.5",
        "--burst",
        "3",
        "--max-message-bytes",
        "1KiB",
    ]);
    let (mut ws, response) = ws_connect_with_response(&server.url, "name=carol");
    assert_eq!(
        response
            .headers()
            .get("x-wschat-limits")
            .and_then(|v| v.to_str().ok()),
        Some("rate=7.5, burst=3, max-message-bytes=1024")
    );
    let welcome = next_event(&mut ws);
    assert_eq!(welcome["event"], "welcome", "{welcome}");
    assert_eq!(
        welcome["limits"],
        serde_json::json!({"rate": 7.5, "burst": 3, "maxMessageBytes": 1024})
    );
    // A quiet sender gets no welcome; the header is what it reads.
    let (_quiet, response) = ws_connect_with_response(&server.url, "name=bob&quiet=1");
    assert!(response.headers().contains_key("x-wschat-limits"));
    let raw = Server::start(&["--raw", "--rate", "0"]);
    let (_ws, response) = ws_connect_with_response(&raw.url, "");
    assert_eq!(
        response
            .headers()
            .get("x-wschat-limits")
            .and_then(|v| v.to_str().ok()),
        Some("rate=0, burst=40, max-message-bytes=65536")
    );
}

/// A TCP server that answers every connection with `answer` (after reading the request, when
/// `read_first`) and closes it: a server dying in the middle of the handshake.
fn broken_server(answer: &'static [u8], read_first: bool) -> String {
    use std::io::{Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            if read_first {
                let mut request = Vec::new();
                let mut byte = [0u8; 1];
                while !request.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                    request.push(byte[0]);
                }
            }
            let _ = stream.write_all(answer);
        }
    });
    url
}

#[test]
fn a_handshake_cut_short_exits_5_and_garbage_exits_3_never_4() {
    let cases: [(&str, &'static [u8], bool, i32); 4] = [
        ("accepts and closes at once", b"", false, 5),
        ("reads the request and closes", b"", true, 5),
        (
            "half an HTTP response",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n",
            true,
            5,
        ),
        ("not HTTP at all", b"SSH-2.0-OpenSSH_9.6\r\n", true, 3),
    ];
    for (what, answer, read_first, code) in cases {
        let url = broken_server(answer, read_first);
        for args in [
            &["send", "bob", "--url", &url, "hi"][..],
            &["join", "alice", "--url", &url, "--no-reconnect"],
            &["history", "--url", &url],
        ] {
            let out = run(args, None);
            assert_eq!(
                out.code(),
                Some(code),
                "{what}: {args:?}\nstderr: {}",
                out.stderr
            );
            assert_eq!(
                out.stderr_lines().len(),
                1,
                "{what}: {args:?}: {}",
                out.stderr
            );
            assert!(out.stderr.contains(url.as_str()), "{what}: {}", out.stderr);
            assert_no_panic(&out.stderr);
        }
    }
}

#[test]
fn reconnecting_joins_answer_the_close_frame_of_a_server_shutting_down() {
    let mut server = Server::start(&[]);
    let mut watcher = ws_member(&server.url, "watcher");
    let mut joins = Vec::new();
    for i in 0..5 {
        let name = format!("alice{i}");
        joins.push(join(&server.url, &name, &[]));
        expect_notice(&mut watcher, &format!("{name} joined the chat"));
    }
    drop(watcher);
    server.proc.signal("TERM");
    let stopped = server.proc.finish(GUARD);
    stopped.assert_code(0);
    assert!(
        !stopped.stderr.contains("did not answer the close frame"),
        "{}",
        stopped.stderr
    );
    // Each says once that it lost the connection, with the server's reason.
    for mut alice in joins {
        alice.signal("TERM");
        let alice = alice.finish(GUARD);
        alice.assert_code(143);
        let lost: Vec<&str> = alice
            .stderr_lines()
            .into_iter()
            .filter(|l| l.contains("1001"))
            .collect();
        assert_eq!(lost.len(), 1, "{}", alice.stderr);
        assert!(lost[0].contains("server shutting down") && lost[0].contains("reconnecting"));
    }
}

/// Starts `wschat serve` on `port` (to restart a server where its clients expect it).
fn serve_on_port(port: u16) -> Proc {
    let port = port.to_string();
    let mut server = Proc::spawn(
        &["serve", "--host", "127.0.0.1", "--port", &port],
        Stdin::Null,
    );
    assert!(server.next_line().starts_with("listening on "));
    server
}

#[test]
fn a_reconnecting_join_says_each_change_once_and_only_what_is_true() {
    let port = closed_port();
    let url = format!("ws://127.0.0.1:{port}/");
    let mut server = serve_on_port(port);
    let mut alice = join(&url, "alice", &[]);
    send(&url, "bob", Some("before"), &[]).assert_code(0);
    alice.expect_line("[alice] received: bob says: before");
    server.signal("TERM");
    server.finish(GUARD).assert_code(0);
    // While it is down, alice retries (and is refused); then it is back, without its history.
    let _server = serve_on_port(port);
    alice.expect_line("[alice] connected");
    let notice = alice.next_line();
    assert!(
        notice.starts_with("[alice] system: ") && notice.contains("restarted"),
        "{notice}"
    );
    assert!(
        !notice.contains("recent messages follow"),
        "it promises messages that never come: {notice}"
    );
    alice.signal("TERM");
    let alice = alice.finish(GUARD);
    alice.assert_code(143);
    let stderr = alice.stderr_lines();
    // One line for the loss, with the server's reason...
    let lost: Vec<&&str> = stderr.iter().filter(|l| l.contains("1001")).collect();
    assert_eq!(lost.len(), 1, "{stderr:#?}");
    assert!(lost[0].contains("server shutting down") && lost[0].ends_with("reconnecting"));
    // ...at most one for the retries, with their own reason...
    let retrying: Vec<&&str> = stderr
        .iter()
        .filter(|l| l.contains("still reconnecting"))
        .collect();
    assert!(retrying.len() <= 1, "{stderr:#?}");
    assert!(
        retrying.iter().all(|l| l.contains("connection refused")),
        "{stderr:#?}"
    );
    // ...and one when it is back.
    let back: Vec<&&str> = stderr
        .iter()
        .filter(|l| l.contains("reconnected to"))
        .collect();
    assert_eq!(back.len(), 1, "{stderr:#?}");
    assert_eq!(stderr.len(), 2 + retrying.len(), "{stderr:#?}");
}

/// Runs `wschat ARGS...` on a pseudo-terminal (through python's pty module): what a person at
/// a terminal sees. Stdin lines the test writes are typed at the terminal. An absolute path as
/// the first argument runs that program instead of wschat.
fn on_a_terminal(args: &[&str]) -> Proc {
    on_a_terminal_with(args, &[("NO_COLOR", Some("1"))])
}

/// [`on_a_terminal`] with these environment variables set (`Some`) or removed (`None`).
fn on_a_terminal_with(args: &[&str], env: &[(&str, Option<&str>)]) -> Proc {
    const PTY: &str = r#"
import os, pty, select, sys
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
typing = True
while True:
    ready, _, _ = select.select([fd] + ([0] if typing else []), [], [])
    if fd in ready:
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        os.write(1, data)
    if typing and 0 in ready:
        data = os.read(0, 4096)
        if data:
            os.write(fd, data)
        else:
            typing = False
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    let mut cmd = std::process::Command::new("python3");
    let program = args.first().filter(|a| a.starts_with('/')).copied();
    let args = if program.is_some() { &args[1..] } else { args };
    cmd.args(["-c", PTY, program.unwrap_or(bin())])
        .args(args)
        .env("TERM", "xterm")
        .env_remove("WSCHAT_URL")
        .env_remove("WSCHAT_PORT")
        .env_remove("WSCHAT_LOG");
    for (name, value) in env {
        match value {
            Some(value) => cmd.env(name, value),
            None => cmd.env_remove(name),
        };
    }
    Proc::spawn_command(cmd, Stdin::Piped)
}

/// Reads lines until one contains `text`; returns it.
fn line_with(proc: &mut Proc, text: &str) -> String {
    loop {
        let line = proc.next_line();
        if line.contains(text) {
            return line;
        }
    }
}

#[test]
fn join_at_a_terminal_shows_the_welcome_condenses_the_replay_and_leaves_no_prompt_behind() {
    let server = Server::start(&[]);
    let lines: String = (1..=12).map(|i| format!("m{i}\n")).collect();
    run(&["send", "bob", "--url", &server.url], Some(&lines)).assert_code(0);
    let mut carol = on_a_terminal(&["join", "carol", "--url", &server.url]);
    line_with(&mut carol, "[carol] connected");
    let welcome = line_with(&mut carol, "[carol] welcome:");
    assert!(welcome.contains("you are the only one here"), "{welcome:?}");
    line_with(
        &mut carol,
        "[carol] … 7 earlier messages (/history shows them)",
    );
    for i in 8..=12 {
        line_with(&mut carol, &format!("history: bob says: m{i}"));
    }
    carol.write_line("/history");
    for i in 1..=12 {
        line_with(&mut carol, &format!("history: bob says: m{i}"));
    }
    carol.write_line("/quit");
    let carol = carol.finish(GUARD);
    carol.assert_code(0);
    let shown = carol.stdout.join("\n");
    assert_eq!(
        shown.matches("bob says: m1\r").count() + shown.matches("bob says: m1\n").count(),
        1,
        "m1 is shown by /history only: {shown:?}"
    );
    // The last thing on the terminal wipes the prompt: the shell's prompt starts clean.
    assert!(
        shown.ends_with("\r\u{1b}[K"),
        "{:?}",
        &shown[shown.len().saturating_sub(80)..]
    );
}

#[test]
fn serve_logs_without_colour_on_a_terminal_with_color_never_or_no_color() {
    for (flag, no_color, coloured) in [
        ("always", None, true),
        ("never", None, false),
        ("auto", Some("1"), false),
    ] {
        let mut server = on_a_terminal_with(
            &[
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--color",
                flag,
            ],
            &[("NO_COLOR", no_color)],
        );
        let log = line_with(&mut server, "serving");
        assert_eq!(log.contains('\u{1b}'), coloured, "--color {flag}: {log:?}");
        server.signal("TERM");
    }
}

#[test]
fn usage_errors_name_the_subcommand_the_variable_and_what_is_expected() {
    let out = run(&["join", "alice", "--url", "not a url"], None);
    out.assert_code(2);
    let first = out.stderr_lines()[0];
    assert!(
        first.starts_with("wschat: error: invalid URL 'not a url': ")
            && first.contains("not a host name")
            && first.contains("expected ws://HOST:PORT/"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("Usage: wschat join "), "{}", out.stderr);
    assert!(
        !out.stderr.contains("Usage: wschat <COMMAND>"),
        "{}",
        out.stderr
    );

    let mut cmd = command(&["serve", "--port", "abc"]);
    cmd.env("WSCHAT_PORT", "abc");
    let out = Proc::spawn_command(cmd, Stdin::Null).finish(GUARD);
    out.assert_code(2);
    let first = out.stderr_lines()[0];
    assert!(
        first.starts_with("wschat: error: ") && !first.contains("WSCHAT_PORT"),
        "--port on the command line wins: {}",
        out.stderr
    );
    let mut cmd = command(&["serve"]);
    cmd.env("WSCHAT_PORT", "abc");
    let out = Proc::spawn_command(cmd, Stdin::Null).finish(GUARD);
    out.assert_code(2);
    let first = out.stderr_lines()[0];
    assert!(
        first.starts_with("wschat: error: ") && first.contains("WSCHAT_PORT"),
        "{}",
        out.stderr
    );
    assert_no_panic(&out.stderr);
}

#[test]
fn serve_with_a_db_in_a_missing_folder_says_so_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("missing").join("chat.db");
    let out = run(
        &["serve", "--port", "0", "--db", db.to_str().unwrap()],
        None,
    );
    out.assert_code(1);
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains(&format!(
            "the folder {} does not exist",
            dir.path().join("missing").display()
        )),
        "{lines:?}"
    );
}

#[test]
fn send_at_a_terminal_with_no_message_says_it_reads_lines_until_ctrl_d() {
    let server = Server::start(&[]);
    let mut carol = ws_member(&server.url, "carol");
    let mut bob = on_a_terminal(&["send", "bob", "--url", &server.url]);
    line_with(&mut bob, "Ctrl-D to finish");
    bob.write_line("typed at a terminal");
    assert_eq!(next_message(&mut carol)["message"], "typed at a terminal");
    // Ctrl-D at the start of a line: the end of input.
    let stdin = bob.stdin.as_mut().unwrap();
    std::io::Write::write_all(stdin, b"\x04").unwrap();
    std::io::Write::flush(stdin).unwrap();
    bob.finish(GUARD).assert_code(0);
}

/// The README's scripted example, run as written by bash (on a free port instead of 8080:
/// `send`, which takes the default URL, finds it through WSCHAT_URL).
#[test]
fn readme_scripted_example_runs_as_written_in_bash_and_prints_what_it_says() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("## Two terminals, scripted")
        .nth(1)
        .expect("the section");
    let mut blocks = section.split("```").skip(1).step_by(2);
    let script = blocks
        .next()
        .unwrap()
        .strip_prefix("sh\n")
        .expect("an sh block");
    let expected = blocks
        .next()
        .unwrap()
        .strip_prefix("text\n")
        .expect("its output");
    let port = closed_port();
    let script = script.replace("--port 8080", &format!("--port {port}"));
    assert!(!script.contains("8080"), "{script}");
    let dir = tempfile::tempdir().unwrap();
    let bin_dir = std::path::Path::new(bin()).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let mut cmd = std::process::Command::new("bash");
    cmd.args(["-e", "-c", &script])
        .current_dir(dir.path())
        .env("PATH", path)
        .env("NO_COLOR", "1")
        .env("WSCHAT_URL", format!("ws://127.0.0.1:{port}"))
        .env_remove("WSCHAT_PORT");
    let out = Proc::spawn_command(cmd, Stdin::Null).finish(GUARD);
    out.assert_code(0);
    assert_eq!(out.stdout.join("\n") + "\n", expected);
}

#[test]
fn help_examples_are_valid_bash() {
    for sub in [
        &[][..],
        &["serve"],
        &["join"],
        &["send"],
        &["history"],
        &["completions"],
        &["bench"],
    ] {
        let mut args = sub.to_vec();
        args.push("--help");
        let help = run(&args, None);
        help.assert_code(0);
        let text = help.stdout.join("\n");
        let examples = text.split("Examples:\n").nth(1).expect("examples");
        let lines: Vec<&str> = examples
            .lines()
            .take_while(|l| l.starts_with("  "))
            .map(str::trim)
            .collect();
        assert!(lines.len() >= 2, "{args:?}: {lines:?}");
        for line in lines {
            assert!(line.contains("wschat "), "{line}");
            let check = std::process::Command::new("bash")
                .args(["-n", "-c", line])
                .status()
                .unwrap();
            assert!(check.success(), "{args:?}: not valid bash: {line}");
            // A background join reads no terminal: its stdin comes from elsewhere.
            if line.contains("wschat join") && line.contains('&') {
                assert!(line.contains("< /dev/null"), "{line}");
            }
        }
    }
}

#[test]
fn a_paced_send_shows_its_progress_on_a_terminal() {
    let server = Server::start(&["--rate", "20", "--burst", "5"]);
    let script = format!(
        "seq 1 30 | '{}' send bob --url {}; echo \"exit $?\"",
        bin(),
        server.url
    );
    let mut bob = on_a_terminal(&["/bin/sh", "-c", &script]);
    let bar = line_with(&mut bob, "exit ");
    let shown = bob.finish(GUARD);
    assert!(
        bar.contains("sending at 20/s (the server's limit)") && bar.contains("/30"),
        "{bar:?}"
    );
    assert!(bar.ends_with("exit 0\r"), "{bar:?}");
    shown.assert_code(0);
}

#[test]
fn piped_lines_into_join_go_at_the_servers_pace_and_all_arrive_in_order() {
    let server = Server::start(&["--rate", "50", "--burst", "10", "--flood-timeout", "1s"]);
    let mut carol = ws_member(&server.url, "carol");
    let mut alice = join_spawn(&server.url, "alice", &[], Stdin::Piped);
    alice.expect_line("[alice] connected");
    expect_notice(&mut carol, "alice joined the chat");
    let mut lines: String = (1..=150).map(|i| format!("line {i}\n")).collect();
    lines.push_str("/quit\n");
    let stdin = alice.stdin.as_mut().unwrap();
    std::io::Write::write_all(stdin, lines.as_bytes()).unwrap();
    alice.close_stdin();
    for i in 1..=150 {
        let chat = next_message(&mut carol);
        assert_eq!(chat["message"], format!("line {i}"), "{chat}");
    }
    let alice = alice.finish(GUARD);
    alice.assert_code(0);
    assert_eq!(alice.stderr_lines(), Vec::<&str>::new());
    assert_eq!(metric(&server, "rate_limit_disconnects_total"), 0);
}
