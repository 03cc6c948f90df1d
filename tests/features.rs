//! `join --until`, `join --exec`, `join --record` with `replay`, `doctor`, and `serve --chaos`:
//! the real binary on real sockets.

mod common;

use common::*;
use serde_json::Value;

// ---- join --until ---------------------------------------------------------------------------

#[test]
fn join_until_exits_0_at_the_first_message_that_matches() {
    let server = Server::start(&[]);
    let mut alice = join(&server.url, "alice", &["--until", r"^build \d+ passed$"]);
    send(&server.url, "ci", Some("build 41 started"), &[]).assert_code(0);
    send(&server.url, "ci", Some("build 41 passed"), &[]).assert_code(0);
    let alice = alice.finish(GUARD);
    alice.assert_code(0);
    assert_eq!(
        alice.stdout,
        vec![
            "[alice] connected",
            "[alice] received: ci says: build 41 started",
            "[alice] received: ci says: build 41 passed",
        ]
    );
}

#[test]
fn join_until_matches_the_message_field_with_json() {
    let server = Server::start(&[]);
    let mut alice = join_spawn(
        &server.url,
        "alice",
        &["--json", "--until", "^done$"],
        Stdin::Null,
    );
    let connected: Value = serde_json::from_str(&alice.next_line()).unwrap();
    assert_eq!(connected["type"], "connected");
    // "type" and "username" hold no "done": only the text counts.
    send(&server.url, "done", Some("not yet"), &[]).assert_code(0);
    send(&server.url, "bob", Some("done"), &[]).assert_code(0);
    let alice = alice.finish(GUARD);
    alice.assert_code(0);
    let last: Value = serde_json::from_str(alice.stdout.last().unwrap()).unwrap();
    assert_eq!(last["message"], "done");
    assert_eq!(last["username"], "bob");
}

#[test]
fn join_until_with_for_exits_7_when_nothing_matched_in_time() {
    let server = Server::start(&[]);
    let mut alice = join(
        &server.url,
        "alice",
        &["--until", "never", "--for", "300ms"],
    );
    let alice = alice.finish(GUARD);
    alice.assert_code(7);
    let lines = alice.stderr_lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("wschat: error: no message matched --until 'never'"),
        "{lines:?}"
    );
}

#[test]
fn join_until_with_an_invalid_regex_is_a_usage_error() {
    let done = run(&["join", "alice", "--until", "build (\\d+"], None);
    done.assert_code(2);
    assert!(
        done.stderr
            .contains("invalid --until 'build (\\d+': unclosed group"),
        "{}",
        done.stderr
    );
    assert_no_panic(&done.stderr);
}

// ---- join --exec ----------------------------------------------------------------------------

#[test]
fn join_exec_answers_each_message_as_its_name_in_order() {
    let server = Server::start(&[]);
    let _shout = join(&server.url, "shout", &["--exec", "tr a-z A-Z"]);
    let mut carol = ws_member(&server.url, "carol");
    for text in ["hello", "second one", "third"] {
        send_text(&mut carol, text);
    }
    for expected in ["HELLO", "SECOND ONE", "THIRD"] {
        let reply = next_chat(&mut carol);
        assert_eq!(reply["username"], "shout", "{reply}");
        assert_eq!(reply["message"], expected, "{reply}");
    }
}

#[test]
fn join_exec_gives_the_message_in_the_environment() {
    let server = Server::start(&[]);
    let script =
        r#"printf '%s|%s|%s|%s\n' "$WSCHAT_FROM" "$WSCHAT_ROOM" "$WSCHAT_ID" "$WSCHAT_TEXT""#;
    let _bot = join(&server.url, "bot", &["--room", "ops", "--exec", script]);
    let mut carol = ws_connect(&server.url, "name=carol&room=ops");
    while next_event(&mut carol)["type"] != "synced" {}
    send_text(
        &mut carol,
        r#"{"type":"chat","content":"disk full","ref":1}"#,
    );
    let ack = next_non_system(&mut carol);
    assert_eq!(ack["type"], "ack", "{ack}");
    let reply = next_chat(&mut carol);
    assert_eq!(
        reply["message"],
        format!("carol|ops|{}|disk full", ack["id"]),
        "{reply}"
    );
}

#[test]
fn join_exec_never_runs_message_text_as_shell() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pwned");
    let _bot = join(
        &server.url,
        "bot",
        &["--exec", "cat; echo \"$WSCHAT_TEXT\""],
    );
    let mut mallory = ws_member(&server.url, "mallory");
    let attack = format!(
        "$(touch {0}); `touch {0}`; ' \" ; touch {0}",
        marker.display()
    );
    send_text(&mut mallory, &attack);
    // Once from stdin, once from the environment: the text, unchanged, as data.
    for _ in 0..2 {
        assert_eq!(next_chat(&mut mallory)["message"], attack.as_str());
    }
    assert!(!marker.exists(), "the message text was run by a shell");
}

#[test]
fn join_exec_reports_failing_and_slow_commands_and_goes_on() {
    let server = Server::start(&[]);
    let script = r#"case "$WSCHAT_TEXT" in fail) echo partial; exit 3;; slow) sleep 30;; *) echo "ok $WSCHAT_TEXT";; esac"#;
    let mut bot = join(
        &server.url,
        "bot",
        &["--exec", script, "--exec-timeout", "300ms"],
    );
    let mut carol = ws_member(&server.url, "carol");
    for text in ["fail", "slow", "fine"] {
        send_text(&mut carol, text);
    }
    // In order: what the failing command printed, nothing from the killed one, then the rest.
    assert_eq!(next_chat(&mut carol)["message"], "partial");
    assert_eq!(next_chat(&mut carol)["message"], "ok fine");
    assert!(bot.is_running(), "join ended: {}", bot.stderr_so_far());
    let stderr = bot.stderr_so_far();
    assert!(stderr.contains("failed (exit status: 3)"), "{stderr}");
    assert!(stderr.contains("ran longer than 300ms; killed"), "{stderr}");
    assert_no_panic(&stderr);
}

#[test]
fn join_exec_does_not_answer_its_own_messages() {
    // With --echo the server sends the bot's replies back to it: answering them would loop.
    let server = Server::start(&["--echo"]);
    let _bot = join(&server.url, "bot", &["--exec", "echo re: \"$WSCHAT_TEXT\""]);
    let mut carol = ws_member(&server.url, "carol");
    send_text(&mut carol, "one");
    assert_eq!(next_chat(&mut carol)["message"], "one"); // the echo of carol's own line
    assert_eq!(next_chat(&mut carol)["message"], "re: one");
    send_text(&mut carol, "two");
    // A loop would have answered "re: one" before carol's "two" was even read.
    assert_eq!(next_chat(&mut carol)["message"], "two");
    assert_eq!(next_chat(&mut carol)["message"], "re: two");
}

#[test]
fn join_exec_with_jobs_runs_commands_at_once_and_sends_in_order() {
    let server = Server::start(&[]);
    // The first command reads a FIFO that only the second one writes: it can finish only
    // when both run at once, and it finishes after the second one.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let script = format!(
        r#"if [ "$WSCHAT_TEXT" = first ]; then cat {0} > /dev/null; else echo go > {0}; fi; echo "did $WSCHAT_TEXT""#,
        fifo.display()
    );
    let _bot = join(&server.url, "bot", &["--exec", &script, "--jobs", "2"]);
    let mut carol = ws_member(&server.url, "carol");
    send_text(&mut carol, "first");
    send_text(&mut carol, "second");
    assert_eq!(next_chat(&mut carol)["message"], "did first");
    assert_eq!(next_chat(&mut carol)["message"], "did second");
}

// ---- serve --chaos --------------------------------------------------------------------------

#[test]
fn chaos_close_closes_with_1001_and_drop_cuts_without_a_close_frame() {
    // Whatever arrives first (the welcome, history) is skipped: only how it ends counts.
    let server = Server::start(&["--chaos", "close=1", "--chaos-seed", "1"]);
    let mut ws = ws_connect(&server.url, "name=carol");
    let frame = expect_close(&mut ws).expect("a close frame");
    assert_eq!(u16::from(frame.code), 1001);

    let server = Server::start(&["--chaos", "drop=1"]);
    let mut ws = ws_connect(&server.url, "name=carol");
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Close(frame)) => panic!("a close frame: {frame:?}"),
            Ok(_) => continue,
            Err(e) => {
                assert!(
                    matches!(
                        e,
                        tungstenite::Error::Protocol(
                            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake
                        ) | tungstenite::Error::Io(_)
                            | tungstenite::Error::ConnectionClosed
                    ),
                    "{e}"
                );
                break;
            }
        }
    }
}

#[test]
fn chaos_is_announced_at_start_as_a_warning() {
    let mut server = Server::start(&["--chaos", "drop=0.2,delay=1ms-5ms", "--chaos-seed", "42"]);
    // The warning is logged before the server accepts: a connection proves it is out.
    drop(ws_member(&server.url, "carol"));
    server.proc.signal("TERM");
    let done = server.proc.finish(GUARD);
    let warning = done
        .stderr
        .lines()
        .find(|l| l.contains("CHAOS MODE"))
        .unwrap_or_else(|| panic!("no chaos warning: {}", done.stderr));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("drop=0.2,delay=1ms-5ms"), "{warning}");
    assert!(warning.contains("--chaos-seed 42"), "{warning}");
}

#[test]
fn chaos_bad_spec_is_a_usage_error() {
    let done = run(&["serve", "--port", "0", "--chaos", "drop=3"], None);
    done.assert_code(2);
    assert!(
        done.stderr.contains("a probability from 0 to 1"),
        "{}",
        done.stderr
    );
}

/// Sends `m0`, `m1`, ... one at a time until `join` has reconnected `reconnects` times, each
/// send confirmed or not; then sends `end` until it is confirmed. Returns what `join` printed
/// and the messages that were acknowledged.
fn chatter_until_reconnected(
    server: &Server,
    alice: &mut Proc,
    reconnects: usize,
) -> (Vec<String>, Vec<String>) {
    let mut acked = Vec::new();
    for i in 0..2000 {
        let text = format!("m{i}");
        let bob = send(&server.url, "bob", Some(&text), &[]);
        if bob.code() == Some(0) {
            // Wait until alice has it (after a resume, perhaps): time passes by events only.
            let expected = format!("[alice] received: bob says: {text}");
            while alice.next_line() != expected {}
            acked.push(text);
        }
        if alice.stderr_so_far().matches("reconnected to").count() >= reconnects {
            break;
        }
    }
    while send(&server.url, "bob", Some("end"), &[]).code() != Some(0) {}
    let done = alice.finish(GUARD * 3);
    done.assert_code(0);
    assert!(
        done.stderr.matches("reconnected to").count() >= reconnects,
        "join was not cut often enough to test anything: {}",
        done.stderr
    );
    (done.stdout, acked)
}

fn assert_each_acked_once_in_order(stdout: &[String], acked: &[String]) {
    let received: Vec<u64> = stdout
        .iter()
        .filter_map(|l| l.strip_prefix("[alice] received: bob says: m"))
        .map(|n| n.parse().unwrap())
        .collect();
    assert!(
        received.windows(2).all(|w| w[0] < w[1]),
        "out of order or twice: {received:?}"
    );
    for text in acked {
        let n: u64 = text[1..].parse().unwrap();
        assert!(
            received.contains(&n),
            "{text} acknowledged but never printed: {stdout:#?}"
        );
    }
}

#[test]
fn chaos_drop_never_loses_or_repeats_a_message_for_a_reconnecting_join() {
    let server = Server::start(&["--chaos", "drop=0.5", "--chaos-seed", "7"]);
    let mut alice = join(&server.url, "alice", &["--until", "^end$"]);
    let (stdout, acked) = chatter_until_reconnected(&server, &mut alice, 2);
    assert!(!acked.is_empty());
    assert_each_acked_once_in_order(&stdout, &acked);
    assert_eq!(stdout.last().unwrap(), "[alice] received: bob says: end");
}

#[test]
fn chaos_delay_and_fragments_keep_every_message_whole_and_in_order() {
    let server = Server::start(&["--chaos", "delay=0ms-20ms,fragment=7"]);
    let mut alice = join(&server.url, "alice", &["--until", "^end$"]);
    let long = "é".repeat(300);
    let mut acked = Vec::new();
    for i in 0..20 {
        let text = format!("m{i} {long}");
        send(&server.url, "bob", Some(&text), &[]).assert_code(0);
        acked.push(text);
    }
    send(&server.url, "bob", Some("end"), &[]).assert_code(0);
    let done = alice.finish(GUARD);
    done.assert_code(0);
    let received: Vec<&str> = done
        .stdout
        .iter()
        .filter_map(|l| l.strip_prefix("[alice] received: bob says: "))
        .collect();
    let mut expected: Vec<&str> = acked.iter().map(String::as_str).collect();
    expected.push("end");
    assert_eq!(received, expected);
}

// ---- join --record, replay ------------------------------------------------------------------

#[test]
fn join_record_appends_every_event_with_its_arrival_time() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("chat.ndjson");
    std::fs::write(&file, "").unwrap();
    let path = file.to_str().unwrap();
    let mut alice = join(
        &server.url,
        "alice",
        &["--record", path, "--until", "^two$"],
    );
    send(&server.url, "bob", Some("one"), &[]).assert_code(0);
    send(&server.url, "carol", Some("two"), &[]).assert_code(0);
    alice.finish(GUARD).assert_code(0);
    let lines: Vec<Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for line in &lines {
        let at = line["at"].as_str().unwrap();
        // RFC 3339, UTC, milliseconds.
        assert_eq!(at.len(), "2026-12-07T08:00:00.123Z".len(), "{at}");
        assert!(at.ends_with('Z') && at.as_bytes()[19] == b'.', "{at}");
        assert!(line["event"].is_object(), "{line}");
    }
    assert_eq!(lines[0]["event"]["event"], "welcome", "{:?}", lines[0]);
    let chats: Vec<(&str, &str)> = lines
        .iter()
        .filter(|l| l["event"]["type"] == "chat")
        .map(|l| {
            (
                l["event"]["username"].as_str().unwrap(),
                l["event"]["message"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(chats, vec![("bob", "one"), ("carol", "two")]);
}

/// A recording of `lines` (sender, text, milliseconds after the first), as `join --record`
/// writes it.
fn recording(dir: &std::path::Path, lines: &[(&str, &str, u64)]) -> String {
    let start = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
    let mut text = String::new();
    for (i, (from, message, ms)) in lines.iter().enumerate() {
        let at = humantime::format_rfc3339_millis(start + std::time::Duration::from_millis(*ms));
        let event = serde_json::json!({"type": "chat", "id": i + 1, "room": "lobby",
            "username": from, "message": message, "timestamp": at.to_string()});
        text.push_str(&serde_json::json!({"at": at.to_string(), "event": event}).to_string());
        text.push('\n');
    }
    let file = dir.join("recorded.ndjson");
    std::fs::write(&file, text).unwrap();
    file.to_str().unwrap().to_owned()
}

#[test]
fn replay_sends_a_recording_under_the_senders_names_in_order() {
    // Recorded on one server...
    let first = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("chat.ndjson");
    let path = file.to_str().unwrap();
    let mut alice = join(&first.url, "alice", &["--record", path, "--until", "^bye$"]);
    for (from, text) in [
        ("bob", "hi"),
        ("carol", "hello bob"),
        ("bob", "how are you"),
        ("carol", "bye"),
    ] {
        send(&first.url, from, Some(text), &[]).assert_code(0);
    }
    alice.finish(GUARD).assert_code(0);
    // ...replayed on another, to a room of its choosing.
    let second = Server::start(&[]);
    let mut dave = ws_connect(&second.url, "name=dave&room=dev");
    while next_event(&mut dave)["type"] != "synced" {}
    let done = run(
        &[
            "replay",
            path,
            "--url",
            &second.url,
            "--room",
            "dev",
            "--speed",
            "0",
        ],
        None,
    );
    done.assert_code(0);
    assert_eq!(done.stdout, Vec::<String>::new());
    assert_eq!(done.stderr_lines(), Vec::<&str>::new());
    let mut got = Vec::new();
    for _ in 0..4 {
        // Quiet senders: no join or leave notices in between.
        let chat = next_message(&mut dave);
        assert_eq!(chat["type"], "chat", "{chat}");
        assert_eq!(chat["room"], "dev", "{chat}");
        got.push(format!(
            "{}: {}",
            chat["username"].as_str().unwrap(),
            chat["message"].as_str().unwrap()
        ));
    }
    assert_eq!(
        got,
        [
            "bob: hi",
            "carol: hello bob",
            "bob: how are you",
            "carol: bye"
        ]
    );
}

#[test]
fn replay_keeps_the_recorded_gaps_divided_by_speed() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let path = recording(
        dir.path(),
        &[("bob", "now", 0), ("bob", "two seconds later", 2000)],
    );
    let mut dave = ws_member(&server.url, "dave");
    let done = run(
        &["replay", &path, "--url", &server.url, "--speed", "4"],
        None,
    );
    done.assert_code(0);
    assert!(
        done.elapsed >= std::time::Duration::from_millis(500),
        "a 2 s gap at --speed 4 took {:?}",
        done.elapsed
    );
    assert_eq!(next_chat(&mut dave)["message"], "now");
    assert_eq!(next_chat(&mut dave)["message"], "two seconds later");
}

#[test]
fn replay_names_the_bad_line_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = recording(dir.path(), &[("bob", "fine", 0)]);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("{\"at\": \"not a time\", \"event\": {}}\n");
    std::fs::write(&path, text).unwrap();
    let url = format!("ws://127.0.0.1:{}", closed_port());
    let done = run(&["replay", &path, "--url", &url], None);
    done.assert_code(2);
    let lines = done.stderr_lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with(&format!(
            "wschat: error: {path}:2: \"at\" is not an RFC 3339 time"
        )),
        "{lines:?}"
    );
}

#[test]
fn replay_exits_like_send_when_the_server_is_not_there() {
    let dir = tempfile::tempdir().unwrap();
    let path = recording(dir.path(), &[("bob", "hi", 0)]);
    let url = format!("ws://127.0.0.1:{}", closed_port());
    let done = run(&["replay", &path, "--url", &url], None);
    done.assert_code(3);
    assert!(
        done.stderr.contains("connection refused"),
        "{}",
        done.stderr
    );
    assert_no_panic(&done.stderr);
}

// ---- doctor ---------------------------------------------------------------------------------

/// The step names and statuses of doctor's lines: `("ok", "tcp")`.
fn steps(stdout: &[String]) -> Vec<(String, String)> {
    stdout
        .iter()
        .map(|l| {
            let mut words = l.split_whitespace();
            (
                words.next().unwrap_or_default().to_owned(),
                words.next().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[test]
fn doctor_passes_every_step_against_a_wschat_server() {
    let server = Server::start(&[]);
    let done = run(&["doctor", &server.url], None);
    done.assert_code(0);
    let names: Vec<(String, String)> = ["resolve", "tcp", "upgrade", "server", "ping", "close"]
        .iter()
        .map(|s| ("ok".to_owned(), (*s).to_owned()))
        .collect();
    assert_eq!(steps(&done.stdout), names, "{:#?}", done.stdout);
    assert!(
        done.stdout[2].contains("subprotocol wschat.v1"),
        "{}",
        done.stdout[2]
    );
    assert!(
        done.stdout[3].contains("a wschat server, protocol version 1"),
        "{}",
        done.stdout[3]
    );
    assert!(
        done.stdout[4].contains("5 round trips: min "),
        "{}",
        done.stdout[4]
    );
    assert!(done.stdout[5].contains("(code 1000)"), "{}", done.stdout[5]);
    assert_eq!(done.stderr_lines(), Vec::<&str>::new());
}

#[test]
fn doctor_json_is_one_object_with_every_step() {
    let server = Server::start(&["--raw"]);
    let done = run(&["doctor", &server.url, "--json", "--pings", "3"], None);
    done.assert_code(0);
    assert_eq!(done.stdout.len(), 1, "{:#?}", done.stdout);
    let report: Value = serde_json::from_str(&done.stdout[0]).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["exit"], 0);
    let steps = report["steps"].as_array().unwrap();
    let server_step = steps.iter().find(|s| s["step"] == "server").unwrap();
    assert_eq!(server_step["kind"], "relay", "{server_step}");
    let ping = steps.iter().find(|s| s["step"] == "ping").unwrap();
    assert_eq!(ping["pings"], 3);
    assert!(ping["min_ms"].as_f64().unwrap() <= ping["max_ms"].as_f64().unwrap());
}

#[test]
fn doctor_says_what_to_try_and_exits_with_the_failing_steps_code() {
    // Refused: 3.
    let url = format!("ws://127.0.0.1:{}", closed_port());
    let done = run(&["doctor", &url], None);
    done.assert_code(3);
    assert_eq!(
        steps(&done.stdout)[1],
        ("FAIL".to_owned(), "tcp".to_owned())
    );
    assert!(
        done.stdout[1].contains("connection refused — try: is 'wschat serve' running"),
        "{:#?}",
        done.stdout
    );
    assert_eq!(done.stderr_lines().len(), 1, "{}", done.stderr);
    // A token refused: 4; with it, all passes.
    let server = Server::start(&["--token", "s3cret"]);
    let done = run(&["doctor", &server.url], None);
    done.assert_code(4);
    let last = done.stdout.last().unwrap();
    assert!(last.starts_with("FAIL  upgrade  HTTP 401"), "{last}");
    assert!(last.contains("pass --token"), "{last}");
    run(&["doctor", &server.url, "--token", "s3cret"], None).assert_code(0);
}

#[test]
fn doctor_checks_tls_and_suggests_ca_for_a_private_one() {
    let server = common::tls::TlsServer::start();
    let path = |name: &str| server.path(name);
    let url = server.url.clone();

    let done = run(&["doctor", &url, "--ca", &path("ca.pem")], None);
    done.assert_code(0);
    let tls = done
        .stdout
        .iter()
        .find(|l| l.starts_with("ok    tls"))
        .unwrap();
    assert!(tls.contains("TLSv1.3"), "{tls}");
    assert!(tls.contains("for 127.0.0.1, localhost"), "{tls}");
    assert!(tls.contains("expires "), "{tls}");

    let done = run(&["doctor", &url], None);
    done.assert_code(3);
    let tls = done.stdout.last().unwrap();
    assert!(tls.starts_with("FAIL  tls"), "{tls}");
    assert!(tls.contains("--ca FILE"), "{tls}");
}

#[test]
fn join_exec_output_is_bounded_in_bytes_and_lines() {
    let server = Server::start(&[]);
    let script = r#"case "$WSCHAT_TEXT" in flood) yes;; many) seq 1 100;; *) echo "after $WSCHAT_TEXT";; esac"#;
    let mut bot = join(&server.url, "bot", &["--exec", script]);
    let mut carol = ws_member(&server.url, "carol");
    for text in ["flood", "many", "x"] {
        send_text(&mut carol, text);
    }
    // An endless command is killed once it printed 16 KiB; 20 lines of it are sent.
    for _ in 0..20 {
        assert_eq!(next_chat(&mut carol)["message"], "y");
    }
    for n in 1..=20 {
        assert_eq!(next_chat(&mut carol)["message"], n.to_string());
    }
    assert_eq!(next_chat(&mut carol)["message"], "after x");
    let stderr = bot.stderr_so_far();
    assert!(
        stderr.contains("printed more than 16384 bytes; killed"),
        "{stderr}"
    );
    assert!(
        stderr.contains("printed 100 lines; sending the first 20"),
        "{stderr}"
    );
    assert!(bot.is_running());
}

#[test]
fn join_until_and_exec_work_with_a_plain_relay() {
    let server = Server::start(&["--raw"]);
    // A relay registers a client before its handshake is answered: `connected` is enough.
    let mut alice = join(&server.url, "alice", &["--until", "^done$"]);
    let _bot = join(&server.url, "bot", &["--exec", "tr a-z A-Z"]);
    let mut carol = ws_connect(&server.url, "");
    send(&server.url, "bob", Some("hi"), &[]).assert_code(0);
    loop {
        match next_frame(&mut carol) {
            tungstenite::Message::Text(t) if t.as_str() == "bot says: HI" => break,
            _ => {}
        }
    }
    send(&server.url, "bob", Some("done"), &[]).assert_code(0);
    let done = alice.finish(GUARD);
    done.assert_code(0);
    assert_eq!(
        done.stdout.last().unwrap(),
        "[alice] received: bob says: done"
    );
}

#[test]
fn join_record_to_a_file_it_cannot_open_fails_before_connecting() {
    let url = format!("ws://127.0.0.1:{}", closed_port());
    let done = run(
        &[
            "join",
            "alice",
            "--url",
            &url,
            "--record",
            "/nonexistent/dir/chat.ndjson",
        ],
        None,
    );
    // 1 (an I/O error), not 3: nothing was tried on the network.
    done.assert_code(1);
    let lines = done.stderr_lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("wschat: error: cannot open --record /nonexistent/dir/chat.ndjson:"),
        "{lines:?}"
    );
}

#[test]
fn join_exec_takes_any_text_even_a_nul() {
    let server = Server::start(&[]);
    let _bot = join(
        &server.url,
        "bot",
        &["--exec", "od -An -c | tr -s ' ' | head -1"],
    );
    let mut carol = ws_member(&server.url, "carol");
    send_text(&mut carol, r#"{"type":"chat","content":"a\u0000b"}"#);
    // stdin has the text exactly, NUL included.
    assert_eq!(next_chat(&mut carol)["message"], " a \\0 b \\n");
}
