//! `wschat bench` against a real `wschat serve`: a short scenario must report every message
//! delivered exactly once, in order. A smoke test of the tool, not a timed test of the server.

use std::process::{Command, Stdio};

mod common;

use common::{Proc, Server, Stdin};

const BIN: &str = env!("CARGO_BIN_EXE_wschat");

/// Starts `wschat serve --port 0 --rate 0 [extra]`; returns it with its URL.
fn serve(extra: &[&str]) -> (Server, String) {
    // The bench measures delivery, not the per-connection rate limit.
    let server = Server::start(&[&["--rate", "0"], extra].concat());
    let url = server.url.clone();
    (server, url)
}

fn bench(args: &[&str]) -> (std::process::Output, serde_json::Value) {
    let output = Command::new(BIN)
        .arg("bench")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run wschat bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report = serde_json::from_str(stdout.trim()).unwrap_or(serde_json::Value::Null);
    (output, report)
}

fn assert_all_delivered(extra: &[&str], server_kind: &str) {
    let (_server, url) = serve(extra);
    let (output, r) = bench(&[
        "--url",
        &url,
        "--receivers",
        "20",
        "--publishers",
        "2",
        "--rate",
        "200",
        "--duration",
        "2s",
        "--json",
    ]);
    assert!(
        output.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(r["server"], server_kind, "{r}");
    assert!(r["deliveries"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["deliveries"], r["expected_deliveries"], "{r}");
    assert_eq!(r["delivery_ratio"], 1.0, "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["duplicated"], 0, "{r}");
    assert_eq!(r["out_of_order"], 0, "{r}");
    assert_eq!(r["unexpected"], 0, "{r}");
    assert_eq!(r["receivers_closed"], 0, "{r}");
    // 2 s at 200 msgs/s to 20 receivers: close to 8,000 deliveries.
    assert!(r["deliveries"].as_u64().unwrap() >= 4000, "{r}");
    assert!(r["latency_ms"]["samples"] == r["deliveries"], "{r}");
    assert!(r["latency_ms"]["p99"].as_f64().unwrap() > 0.0, "{r}");
}

#[test]
fn bench_reports_full_delivery_from_a_json_server() {
    assert_all_delivered(&[], "wschat");
}

#[test]
fn bench_reports_full_delivery_from_a_raw_relay() {
    assert_all_delivered(&["--raw"], "relay");
}

#[test]
fn bench_holds_idle_connections() {
    let (_server, url) = serve(&[]);
    let (output, r) = bench(&[
        "--url",
        &url,
        "--idle",
        "50",
        "--duration",
        "200ms",
        "--json",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(r["opened"], 50, "{r}");
    assert_eq!(r["open_at_end"], 50, "{r}");
}

#[test]
fn an_unreachable_server_is_one_clear_line() {
    // Bind a port, then free it: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let url = format!("ws://127.0.0.1:{port}/");
    let (output, _) = bench(&["--url", &url, "--receivers", "3", "--duration", "1s"]);
    assert_eq!(output.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("connection refused"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_arguments_are_usage_errors() {
    let (output, _) = bench(&["--receivers", "0"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--receivers must be at least 1"),
        "{stderr}"
    );
}

#[test]
fn bench_presents_a_token_to_a_server_that_wants_one() {
    let (_server, url) = serve(&["--token", "s3cret"]);
    let args = |token: &'static str| {
        let mut args = vec![
            "--url",
            &url,
            "--idle",
            "5",
            "--duration",
            "100ms",
            "--json",
        ];
        if !token.is_empty() {
            args.extend(["--token", token]);
        }
        bench(&args)
    };
    let (output, r) = args("s3cret");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(r["opened"], 5, "{r}");
    // Without it: refused in the handshake, one clear line.
    let (output, _) = args("");
    assert_eq!(output.status.code(), Some(4));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("401"), "{stderr}");
}

#[test]
fn bench_against_a_rate_limited_server_says_the_limit_shaped_the_figures_and_how_to_lift_it() {
    let server = Server::start(&["--rate", "20", "--burst", "5"]);
    let url = server.url.clone();
    let args = [
        "--url",
        &url,
        "--receivers",
        "2",
        "--duration",
        "1s",
        "--drain",
        "1s",
    ];
    let (output, r) = bench(&[&args[..], &["--json"]].concat());
    assert!(output.status.success(), "{output:?}");
    assert_eq!(r["server_rate_limit"], 20.0, "{r}");
    assert_eq!(r["server_burst"], 5, "{r}");
    assert_eq!(r["rate_limited"], true, "{r}");
    assert_eq!(r["duration_s"], 1.0, "{r}");
    let (output, _) = bench(&args);
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        table.contains("20 msgs/s") && table.contains("wschat serve --rate 0"),
        "{table}"
    );
}

#[test]
fn bench_against_an_unlimited_server_mentions_no_limit() {
    let (_server, url) = serve(&[]);
    let (output, r) = bench(&[
        "--url",
        &url,
        "--receivers",
        "2",
        "--duration",
        "1s",
        "--json",
    ]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(r["server_rate_limit"], 0.0, "{r}");
    assert_eq!(r["rate_limited"], false, "{r}");
}

#[test]
fn announced_members_are_all_kept_and_all_hear_the_message() {
    // More than 100 members: the room's presence is coalesced into summaries.
    let (_server, url) = serve(&[]);
    let (output, r) = bench(&["--url", &url, "--members", "150", "--json"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(r["mode"], "members", "{r}");
    assert_eq!(r["server"], "wschat", "{r}");
    assert_eq!(r["joined"], 150, "{r}");
    assert_eq!(r["closed"], 0, "{r}");
    assert_eq!(r["close_codes"], serde_json::json!({}), "{r}");
    assert_eq!(r["message_sent"], true, "{r}");
    assert_eq!(r["message_reached"], 150, "{r}");
    assert!(r["message_all_ms"].is_number(), "{r}");
    // Join notices are not mistaken for the message, nor presence events for notices.
    assert!(r["notices"].as_u64().unwrap() > 0, "{r}");
    assert!(r["presence_events"].as_u64().unwrap() > 0, "{r}");
    // A local server is found and measured.
    assert!(r["server_pid"].is_number(), "{r}");
    assert!(r["kib_per_member"].is_number(), "{r}");
}

#[test]
fn members_can_await_a_message_sent_by_someone_else() {
    let (_server, url) = serve(&[]);
    let mut bench = Proc::spawn(
        &[
            "bench",
            "--url",
            &url,
            "--members",
            "120",
            "--await-message",
            "--duration",
            "20s",
            "--name-prefix",
            "w1-",
            "--json",
        ],
        Stdin::Null,
    );
    // Wait for the members to have joined: the bench says so on stderr.
    bench.wait_for_stderr("joined: 120 of 120");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let sent = Command::new(BIN)
        .args(["send", "sender", &format!("wsb-final:{now}")])
        .args(["--url", &url, "--room", "bench-members"])
        .output()
        .expect("run wschat send");
    assert!(sent.status.success(), "{sent:?}");
    let done = bench.finish(common::GUARD * 3);
    let r: serde_json::Value =
        serde_json::from_str(done.stdout.join("\n").trim()).unwrap_or_default();
    assert!(done.status.success(), "{r}");
    assert_eq!(r["message_sent"], false, "{r}");
    assert_eq!(r["message_reached"], 120, "{r}");
    assert_eq!(r["closed"], 0, "{r}");
}

/// scripts/latency-plot, run by node as scripts/bench-compare.sh runs it.
fn latency_plot(args: &[&str]) -> std::process::Output {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/latency-plot");
    Command::new("node")
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run node (scripts/latency-plot needs it)")
}

/// `latency_ms.cdf` must be `[ms, fraction]` pairs, rising in both, few enough to draw, and end
/// at `[max, 1.0]`.
fn assert_cdf_well_formed(latency: &serde_json::Value) {
    let cdf = latency["cdf"]
        .as_array()
        .expect("latency_ms.cdf is an array");
    assert!(!cdf.is_empty() && cdf.len() <= 200, "{} points", cdf.len());
    let pairs: Vec<(f64, f64)> = cdf
        .iter()
        .map(|p| (p[0].as_f64().unwrap(), p[1].as_f64().unwrap()))
        .collect();
    for w in pairs.windows(2) {
        assert!(w[0].0 <= w[1].0 && w[0].1 <= w[1].1, "not rising: {w:?}");
    }
    assert!(pairs
        .iter()
        .all(|&(ms, f)| ms >= 0.0 && f > 0.0 && f <= 1.0));
    let last = pairs[pairs.len() - 1];
    assert_eq!(last, (latency["max"].as_f64().unwrap(), 1.0), "{cdf:?}");
}

#[test]
fn bench_json_carries_the_latency_distribution_and_latency_plot_draws_it() {
    let (_server, url) = serve(&[]);
    let (output, r) = bench(&[
        "--url",
        &url,
        "--receivers",
        "20",
        "--publishers",
        "2",
        "--rate",
        "50",
        "--duration",
        "1s",
        "--json",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(r["deliveries"].as_u64().unwrap() > 0, "{r}");
    assert_cdf_well_formed(&r["latency_ms"]);

    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("wschat.json");
    std::fs::write(&report, &output.stdout).unwrap();
    let svg = dir.path().join("latency.svg");
    let plotted = latency_plot(&[
        &format!("wschat={}", report.display()),
        "--out",
        svg.to_str().unwrap(),
    ]);
    assert!(plotted.status.success(), "{plotted:?}");
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg "), "{svg}");
    assert!(svg.trim_end().ends_with("</svg>"), "{svg}");
    assert_eq!(svg.matches("<path class=\"series\"").count(), 1, "{svg}");
    assert!(
        svg.contains("<tspan class=\"legend-label\">wschat</tspan>"),
        "{svg}"
    );
}

#[test]
fn latency_plot_refuses_bad_arguments_and_reports_without_a_distribution_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.svg");
    let out = out.to_str().unwrap();
    // A report from before latency_ms.cdf.
    let old = dir.path().join("old.json");
    std::fs::write(&old, r#"{"latency_ms":{"p50":1.0,"max":2.0}}"#).unwrap();
    let old = format!("wschat={}", old.display());
    for args in [
        &["--bogus", "wschat=a.json", "--out", out][..],
        &["wschat=a.json"],
        &["no-label.json", "--out", out],
        &[&old, "--out", out],
    ] {
        let plotted = latency_plot(args);
        let stderr = String::from_utf8_lossy(&plotted.stderr);
        assert_eq!(plotted.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("latency-plot: "), "{args:?}: {stderr}");
    }
    assert!(!std::path::Path::new(out).exists());
}
