//! Delivery that cannot break silently: content that grows when encoded, history replays to
//! clients that do not read, resumes across restarts, and a disk that cannot take more.
//! Each test is named for what broke, and fails on the code before the fix.

mod common;

use common::*;
use serde_json::Value;

#[test]
fn a_message_that_grows_when_escaped_is_refused_and_does_not_mute_the_room() {
    let server = Server::start(&[]);
    let mut alice = ws_member(&server.url, "alice");
    let mut carol = ws_member(&server.url, "carol");
    // 30,000 bytes in, 180,000 once JSON-escaped (`\u0001`): under the input limit, six
    // times it as the server would send it.
    send_text(&mut carol, &"\u{1}".repeat(30_000));
    let refused = next_non_system(&mut carol);
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "too_large", "{refused}");
    assert_eq!(metric(&server, "too_large_total"), 1);

    // Just within the limit once encoded: delivered whole.
    let fits = "\u{1}".repeat(10_000);
    send_text(&mut carol, &fits);
    let got = next_chat(&mut alice);
    assert_eq!(got["message"].as_str(), Some(fits.as_str()));

    // The room still works, for those in it and for newcomers whose replay holds it.
    send_text(&mut carol, "still here");
    assert_eq!(next_chat(&mut alice)["message"], "still here");
    let mut dave = ws_connect(&server.url, "name=dave");
    let welcome = next_event(&mut dave);
    assert_eq!(welcome["event"], "welcome", "{welcome}");
    assert_eq!(
        next_chat(&mut dave)["message"].as_str(),
        Some(fits.as_str())
    );
    assert_eq!(next_chat(&mut dave)["message"], "still here");
    assert_eq!(metric(&server, "write_failures_total"), 0);
}

#[test]
fn clients_that_do_not_read_a_large_history_pin_at_most_their_outbox() {
    let server = Server::start(&["--rate", "0", "--keep", "1000"]);
    // 200 messages of 60 KB: 12 MB of history.
    let mut poster = ws_connect(&server.url, "name=poster&quiet=1");
    let big = "h".repeat(60_000);
    for i in 0..200 {
        send_text(
            &mut poster,
            &format!(r#"{{"type":"chat","content":"{big}","ref":{i}}}"#),
        );
    }
    // The last ack: everything is in the history.
    loop {
        let event = next_event(&mut poster);
        if event["type"] == "ack" && event["ref"] == 199 {
            break;
        }
    }
    let before = rss_kib(&server);
    // Twenty clients ask for all of it and never read a byte.
    let lurkers: Vec<std::net::TcpStream> = (0..20)
        .map(|i| {
            let ws = ws_connect(&server.url, &format!("name=lurker{i}&history=1000"));
            ws.get_ref().try_clone().unwrap()
        })
        .collect();
    // Every one of them is in: a member who pings gets its pong after their registration.
    let mut probe = ws_member(&server.url, "probe");
    ping_sync(&mut probe);
    let with_lurkers = rss_kib(&server);
    let grown_mib = with_lurkers.saturating_sub(before) / 1024;
    eprintln!("20 non-reading clients of a 12 MB history: the server grew by {grown_mib} MiB");
    // Each may pin its outbox (1 MiB); a replay encoded per client would cost 12 MB each.
    assert!(
        grown_mib <= 20 + 16,
        "20 non-reading clients grew the server by {grown_mib} MiB"
    );
    drop(lurkers);
    assert_eq!(metric(&server, "slow_consumer_disconnects_total"), 0);
}

#[test]
fn a_resume_after_an_in_memory_restart_gets_the_new_history_from_its_start() {
    let port = closed_port();
    let url = format!("ws://127.0.0.1:{port}/");
    let mut server = serve_on(port, &[]);
    let mut alice = ws_member(&url, "alice");
    for i in 1..=5 {
        send(&url, "bob", Some(&format!("old-{i}")), &[]).assert_code(0);
    }
    let mut seen = 0;
    while seen < 5 {
        seen = next_chat(&mut alice)["id"].as_u64().unwrap();
    }
    let mut other = ws_connect(&url, "name=other");
    let epoch = next_event(&mut other)["epoch"].as_str().unwrap().to_owned();
    server.kill_hard();

    let _server = serve_on(port, &[]);
    for i in 1..=10 {
        send(&url, "bob", Some(&format!("new-{i}")), &[]).assert_code(0);
    }
    // alice comes back with where she was: id 5 of the history before the restart.
    let mut alice = ws_connect(&url, &format!("name=alice&since={seen}&epoch={epoch}"));
    let welcome = next_event(&mut alice);
    assert_ne!(welcome["epoch"].as_str(), Some(epoch.as_str()));
    let gap = next_event(&mut alice);
    assert_eq!(gap["type"], "gap", "{gap}");
    assert_eq!(gap["restarted"], true, "{gap}");
    for i in 1..=10 {
        let chat = next_chat(&mut alice);
        assert_eq!(chat["message"], format!("new-{i}"), "{chat}");
    }
    let synced = next_event(&mut alice);
    assert_eq!(synced["type"], "synced");
    assert_eq!(synced["epoch"], welcome["epoch"]);
}

#[test]
fn join_prints_every_message_across_sigkill_restarts_of_an_in_memory_server() {
    let port = closed_port();
    let url = format!("ws://127.0.0.1:{port}/");
    let mut server = serve_on(port, &[]);
    let mut alice = join(&url, "alice", &["--count", "15"]);
    for i in 1..=5 {
        send(&url, "bob", Some(&format!("old-{i}")), &[]).assert_code(0);
        alice.expect_line(&format!("[alice] received: bob says: old-{i}"));
    }
    server.kill_hard();
    let _server = serve_on(port, &[]);
    // Most likely before alice is back: ids 1..5 again, of other messages.
    for i in 1..=10 {
        send(&url, "bob", Some(&format!("new-{i}")), &[]).assert_code(0);
    }
    let done = alice.finish(GUARD);
    done.assert_code(0);
    let received: Vec<&String> = done.stdout.iter().filter(|l| l.contains("says:")).collect();
    let expected: Vec<String> = (1..=5)
        .map(|i| format!("[alice] received: bob says: old-{i}"))
        .chain((1..=10).map(|i| format!("[alice] received: bob says: new-{i}")))
        .collect();
    assert_eq!(received, expected.iter().collect::<Vec<_>>());
}

/// Starts `serve` on a free port with a soft file-size limit of `kib` KiB (as a full disk
/// looks to the server: writes past it fail with EFBIG), SIGXFSZ ignored so that they fail
/// instead of killing it.
fn serve_with_file_limit(kib: u64, extra: &[&str]) -> Server {
    let mut script =
        format!("trap '' XFSZ; ulimit -S -f {kib}; exec \"$0\" serve --host 127.0.0.1 --port 0");
    for arg in extra {
        script.push_str(&format!(" '{arg}'"));
    }
    let mut cmd = std::process::Command::new("bash");
    cmd.args(["-c", &script, bin()]).env("NO_COLOR", "1");
    let mut proc = Proc::spawn_command(cmd, Stdin::Null);
    let line = proc.next_line();
    let url = line.strip_prefix("listening on ").unwrap().to_owned();
    let port = url
        .trim_start_matches("ws://127.0.0.1:")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    Server {
        url,
        port,
        proc,
        token: None,
    }
}

/// Posts `text` with `reference` and returns the server's answer to it (an ack or an error).
fn post(ws: &mut Ws, text: &str, reference: u64) -> Value {
    let chat = serde_json::json!({"type": "chat", "content": text, "ref": reference});
    send_text(ws, &chat.to_string());
    loop {
        let event = next_event(ws);
        if event["ref"] == reference {
            return event;
        }
    }
}

#[test]
fn a_full_disk_refuses_messages_out_loud_and_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let db = db.to_str().unwrap();
    let server = serve_with_file_limit(64, &["--db", db, "--rate", "0"]);
    let mut alice = ws_member(&server.url, "alice");
    let mut poster = ws_connect(&server.url, "name=poster&quiet=1");
    let line = "x".repeat(4000);
    // Until the disk is full: every message is either acknowledged or refused with why.
    let mut acked = Vec::new();
    let refused = (1..=200)
        .map(|i| post(&mut poster, &format!("{i} {line}"), i))
        .find_map(|answer| match answer["type"].as_str() {
            Some("ack") => {
                acked.push(answer["id"].as_u64().unwrap());
                None
            }
            _ => Some(answer),
        })
        .expect("the disk filled up");
    assert_eq!(refused["code"], "unavailable", "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .starts_with("not stored"),
        "{refused}"
    );
    let health = http_request(&server.addr(), "GET", "/healthz");
    assert_eq!(health.status, 503);
    assert!(
        health.body.starts_with("history cannot be stored"),
        "{}",
        health.body
    );
    assert_eq!(metric(&server, "history_failing"), 1);
    assert!(metric(&server, "history_unstored_total") >= 1);

    // While it cannot be stored, a message is refused before anyone sees it.
    let answer = post(&mut poster, "never shown", 1000);
    assert_eq!(answer["code"], "unavailable", "{answer}");
    assert!(metric(&server, "unavailable_total") >= 1);

    // Room on the disk again: posting works without a restart.
    let raised = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &server.proc.pid().to_string(),
            "--fsize=unlimited:",
        ])
        .status()
        .expect("run prlimit");
    assert!(raised.success());
    // The server finds out by trying a write every second: nothing to wait on but that.
    let deadline = std::time::Instant::now() + GUARD;
    while http_request(&server.addr(), "GET", "/healthz").status != 200 {
        assert!(std::time::Instant::now() < deadline, "never recovered");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let answer = post(&mut poster, "after", 1001);
    assert_eq!(answer["type"], "ack", "{answer}");
    acked.push(answer["id"].as_u64().unwrap());
    loop {
        let chat = next_chat(&mut alice);
        assert_ne!(chat["message"], "never shown");
        if chat["message"] == "after" {
            break;
        }
    }

    // What history serves is exactly what was acknowledged: nothing a restart would lose.
    let history = run(
        &["history", "--url", &server.url, "--json", "--limit", "1000"],
        None,
    );
    history.assert_code(0);
    let served: Vec<u64> = history
        .stdout
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["type"] == "chat")
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    assert_eq!(served, acked);
}

/// A member who stops reading while large messages of every header size keep coming: the
/// first are written straight to its socket by the fan-out, one of them only in part once the
/// socket is full, and its connection writes the rest. When it reads again, every message is
/// there, whole and in order.
#[test]
fn a_reader_that_pauses_gets_every_message_whole_and_in_order_after_writes_straight_through() {
    let server = Server::start(&[
        "--rate",
        "0",
        "--max-message-bytes",
        "200000",
        "--outbox-bytes",
        "64MiB",
        "--outbox",
        "10000",
    ]);
    let mut reader = ws_member(&server.url, "reader");
    let mut poster = ws_connect(&server.url, "name=poster&quiet=1");
    // Lengths that cross every header size (7-bit, 16-bit and 64-bit lengths), about 15 MB in
    // all: more than loopback's socket buffers hold, so the socket fills mid-message.
    let mut rng = fastrand::Rng::with_seed(17);
    let texts: Vec<String> = (0..300)
        .map(|i| {
            let len = match i % 4 {
                0 => rng.usize(0..120),
                1 => rng.usize(120..70_000),
                _ => rng.usize(70_000..100_000),
            };
            let fill = char::from(b'a' + (i % 26) as u8);
            format!("{i}:{}", fill.to_string().repeat(len))
        })
        .collect();
    for (i, text) in texts.iter().enumerate() {
        let frame = serde_json::json!({"type": "chat", "content": text, "ref": i});
        send_text(&mut poster, &frame.to_string());
    }
    // The last ack: every message went to the reader, written or queued.
    loop {
        let event = next_event(&mut poster);
        assert_ne!(event["type"], "error", "{event}");
        if event["type"] == "ack" && event["ref"] == texts.len() - 1 {
            break;
        }
    }
    for (i, text) in texts.iter().enumerate() {
        let got = next_chat(&mut reader);
        assert_eq!(
            got["message"].as_str().map(str::len),
            Some(text.len()),
            "message {i}"
        );
        assert_eq!(got["message"].as_str(), Some(text.as_str()), "message {i}");
    }
    let delivered = metric(&server, "deliveries_total");
    let written = metric(&server, "deliveries_written_through_total");
    eprintln!("{delivered} deliveries, {written} written straight through");
    assert_eq!(delivered, texts.len() as u64);
    assert!(written > 0, "no delivery was written straight through");
    assert!(
        written < delivered,
        "every delivery was written straight through: the socket never filled"
    );
    assert_eq!(metric(&server, "write_failures_total"), 0);
    assert_eq!(metric(&server, "slow_consumer_disconnects_total"), 0);
}
