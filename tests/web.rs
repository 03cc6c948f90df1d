//! The web page, end to end, in real headless Chromium: `tests/web/e2e.mjs` drives three pages
//! (playwright-core) against the real binary, and this test runs the server for it, stopping
//! it with SIGTERM and starting it again on the same port and database when the script asks.
//!
//! Needs `/usr/bin/chromium` and `tests/web/node_modules`; `bash scripts/test.sh` installs both.
//! `WSCHAT_SKIP_BROWSER=1` skips the test.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const INSTALL: &str = "run `bash scripts/test.sh`, which installs them \
    (`apt-get install -y chromium` and `npm ci --prefix tests/web`), \
    or set WSCHAT_SKIP_BROWSER=1 to skip this test";
/// The node script gives up by itself after 60 s; this bounds everything around it too.
const DEADLINE: Duration = Duration::from_secs(90);

/// A child process that is killed (and reaped) when the test ends, however it ends.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A directory under the target directory, removed at the end.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The lines a child writes to one of its streams, read on their own thread. The channel
/// disconnects when the stream ends, which is how the end of the process is seen.
fn lines(stream: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The next line, or `None` once the stream has ended. Panics when `deadline` passes.
fn next_line(rx: &Receiver<String>, deadline: Instant, what: &str) -> Option<String> {
    let left = deadline.saturating_duration_since(Instant::now());
    match rx.recv_timeout(left) {
        Ok(line) => Some(line),
        Err(RecvTimeoutError::Disconnected) => None,
        Err(RecvTimeoutError::Timeout) => panic!("timed out waiting for {what}"),
    }
}

struct Server {
    child: Guard,
    stdout: Receiver<String>,
    port: u16,
}

fn start_server(port: u16, db: &Path, log: &Path, deadline: Instant) -> Server {
    start(&["--db".as_ref(), db.as_os_str()], port, log, deadline)
}

fn start(extra: &[&std::ffi::OsStr], port: u16, log: &Path, deadline: Instant) -> Server {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("server log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_wschat"))
        .args(["serve", "--port", &port.to_string()])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("start wschat serve");
    let stdout = lines(child.stdout.take().expect("piped stdout"));
    let child = Guard(child);
    let Some(first) = next_line(&stdout, deadline, "the server's 'listening on' line") else {
        panic!(
            "wschat serve ended before listening on port {port}; its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    };
    let port = first
        .strip_prefix("listening on ws://127.0.0.1:")
        .and_then(|rest| rest.strip_suffix('/'))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line from the server: {first:?}"));
    Server {
        child,
        stdout,
        port,
    }
}

/// SIGTERM, then wait for the process to end (its stdout closes) and return how it exited.
fn stop_server(mut server: Server, deadline: Instant) -> ExitStatus {
    let pid = server.child.0.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(killed.success(), "kill -TERM {pid} failed");
    while next_line(&server.stdout, deadline, "the server to stop after SIGTERM").is_some() {}
    server.child.0.wait().expect("wait for the server")
}

/// One HTTP/1.1 request on its own connection; the whole response as text.
fn http(port: u16, request_line: &str) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    write!(
        stream,
        "{request_line} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    response
}

fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = response.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// The page is served at `/` (GET and HEAD) with its content type and CSP; other paths keep
/// their answers. No browser needed.
#[test]
fn page_is_served_at_root() {
    let deadline = Instant::now() + Duration::from_secs(30);
    let tmp = TempDir(
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("web-http-{}", std::process::id())),
    );
    std::fs::create_dir_all(&tmp.0).expect("create the test directory");
    let server = start(&[], 0, &tmp.0.join("server.log"), deadline);

    let get = http(server.port, "GET /");
    assert!(get.starts_with("HTTP/1.1 200 "), "{get:.200}");
    assert_eq!(
        header(&get, "content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(
        header(&get, "content-security-policy"),
        Some("default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self' ws: wss:")
    );
    let body = get.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    assert!(body.starts_with("<!doctype html>"), "{body:.100}");
    assert!(body.contains("new WebSocket("));
    // Nothing is loaded from elsewhere: no external script, style, font or image.
    for outside in ["src=\"http", "href=\"http", "@import", "url(", "//cdn"] {
        assert!(!body.contains(outside), "the page refers to {outside}");
    }
    // With user data, text goes through textContent, never the HTML parser.
    for parser in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
    ] {
        assert!(!body.contains(parser), "the page uses {parser}");
    }

    let head = http(server.port, "HEAD /");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head:.200}");
    assert_eq!(
        header(&head, "content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(head.ends_with("\r\n\r\n"), "HEAD has no body");

    let other = http(server.port, "GET /index.html");
    assert!(other.starts_with("HTTP/1.1 426 "), "{other:.200}");
    let health = http(server.port, "GET /healthz");
    assert!(health.starts_with("HTTP/1.1 200 "), "{health:.200}");
    assert!(health.ends_with("ok\n"));
}

/// Where the browser tests find their scripts, and a fresh directory for one test; `None` when
/// `WSCHAT_SKIP_BROWSER=1` says to skip them. Panics, saying how to install them, when Chromium
/// or playwright-core is missing.
fn browser_test(name: &str) -> Option<(PathBuf, TempDir)> {
    if std::env::var_os("WSCHAT_SKIP_BROWSER").is_some_and(|v| v == "1") {
        println!("skipped: the web page test (WSCHAT_SKIP_BROWSER=1)");
        return None;
    }
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/web");
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: {INSTALL}"
    );
    assert!(
        web.join("node_modules/playwright-core").is_dir(),
        "tests/web/node_modules (playwright-core) is missing: {INSTALL}"
    );
    let tmp = TempDir(
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id())),
    );
    let _ = std::fs::remove_dir_all(&tmp.0);
    std::fs::create_dir_all(&tmp.0).expect("create the test directory");
    Some((web, tmp))
}

/// Waits for the node script to exit; returns how, and what it wrote on stderr.
fn node_ended(
    mut node: Guard,
    stderr: &Receiver<String>,
    deadline: Instant,
) -> (ExitStatus, Vec<String>) {
    let status = node.0.wait().expect("wait for node");
    let mut errors = Vec::new();
    while let Some(line) = next_line(stderr, deadline, "the node script's stderr to end") {
        errors.push(line);
    }
    (status, errors)
}

fn say(stdin: &mut ChildStdin, line: &str) {
    writeln!(stdin, "{line}").expect("write to the node script");
    stdin.flush().expect("flush to the node script");
}

#[test]
fn web_page_in_headless_chromium() {
    let Some((web, tmp)) = browser_test("web") else {
        return;
    };
    let deadline = Instant::now() + DEADLINE;
    let db = tmp.0.join("chat.db");
    let server_log = tmp.0.join("server.log");
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");

    let mut server = Some(start_server(0, &db, &server_log, deadline));
    let port = server.as_ref().map_or(0, |s| s.port);

    let mut node = Command::new("node")
        .arg(web.join("e2e.mjs"))
        .current_dir(&web)
        .env("WSCHAT_PAGE_URL", format!("http://127.0.0.1:{port}/"))
        .env("WSCHAT_SCREENSHOTS", &shots)
        .env("WSCHAT_CHROMIUM", CHROMIUM)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start node ({e}): {INSTALL}"));
    let mut to_node = node.stdin.take().expect("piped stdin");
    let from_node = lines(node.stdout.take().expect("piped stdout"));
    let node_errors = lines(node.stderr.take().expect("piped stderr"));
    let node = Guard(node);

    let (mut stopped, mut restarted, mut passed) = (false, false, false);
    while let Some(line) = next_line(&from_node, deadline, "the node script") {
        println!("e2e: {line}");
        match line.as_str() {
            "READY_FOR_RESTART" => {
                let old = server.take().expect("a running server to stop");
                let status = stop_server(old, deadline);
                assert!(
                    status.success(),
                    "wschat serve exited with {status} on SIGTERM"
                );
                stopped = true;
                say(&mut to_node, "STOPPED");
            }
            "START_SERVER" => {
                assert!(stopped, "START_SERVER before the server was stopped");
                let again = start_server(port, &db, &server_log, deadline);
                assert_eq!(again.port, port, "the server came back on another port");
                server = Some(again);
                restarted = true;
                say(&mut to_node, "RESTARTED");
            }
            "E2E_OK" => passed = true,
            _ => {}
        }
    }
    let (status, errors) = node_ended(node, &node_errors, deadline);
    let log = std::fs::read_to_string(&server_log).unwrap_or_default();
    assert!(
        status.success() && passed,
        "the browser test failed ({status}):\n{}\n--- server log ---\n{log}",
        errors.join("\n")
    );
    // Shown with `--nocapture`.
    println!("--- server log ---\n{log}");
    assert!(restarted, "the script never asked for the server restart");
    assert!(shots.join("web-phone.png").is_file(), "no phone screenshot");
    assert!(
        shots.join("web-desktop.png").is_file(),
        "no desktop screenshot"
    );
}

/// A page opened from a file (its Origin is `null`) is refused by default, with one WARN
/// naming the flag; with `--allow-origin null` the saved page, pointed at the server with
/// `page.html#ws://127.0.0.1:PORT/`, chats in real Chromium.
#[test]
fn page_opened_from_a_file_works_with_allow_origin_null() {
    let Some((web, tmp)) = browser_test("web-file") else {
        return;
    };
    let deadline = Instant::now() + DEADLINE;
    let log = tmp.0.join("server.log");
    let server = start(
        &["--allow-origin".as_ref(), "null".as_ref()],
        0,
        &log,
        deadline,
    );

    // The page as someone saves it: the body of GET /.
    let get = http(server.port, "GET /");
    let body = get.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let file = tmp.0.join("page.html");
    std::fs::write(&file, body).expect("save the page");

    // Someone in the room, on the command line.
    let mut listener = Command::new(env!("CARGO_BIN_EXE_wschat"))
        .args(["join", "listener", "--url"])
        .arg(format!("ws://127.0.0.1:{}/", server.port))
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start wschat join");
    let mut to_listener = listener.stdin.take().expect("piped stdin");
    let heard = lines(listener.stdout.take().expect("piped stdout"));
    let _listener = Guard(listener);
    assert_eq!(
        next_line(&heard, deadline, "the listener to connect").as_deref(),
        Some("[listener] connected")
    );

    let mut node = Command::new("node")
        .arg(web.join("file.mjs"))
        .current_dir(&web)
        .env(
            "WSCHAT_FILE_URL",
            format!("file://{}#ws://127.0.0.1:{}/", file.display(), server.port),
        )
        .env("WSCHAT_CHROMIUM", CHROMIUM)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start node ({e}): {INSTALL}"));
    let from_node = lines(node.stdout.take().expect("piped stdout"));
    let node_errors = lines(node.stderr.take().expect("piped stderr"));
    let node = Guard(node);

    let mut passed = false;
    while let Some(line) = next_line(&from_node, deadline, "the node script") {
        println!("file: {line}");
        match line.as_str() {
            "FILE_CONNECTED" => {
                // The page's message reaches the room; the room's answer reaches the page.
                loop {
                    let line = next_line(&heard, deadline, "the page's message")
                        .expect("the listener is still running");
                    if line == "[listener] received: filer says: hello from a file" {
                        break;
                    }
                }
                writeln!(to_listener, "hello, file page").expect("write to the listener");
                to_listener.flush().expect("flush to the listener");
            }
            "FILE_OK" => passed = true,
            _ => {}
        }
    }
    let (status, errors) = node_ended(node, &node_errors, deadline);
    let server_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        status.success() && passed,
        "the page opened from a file did not chat ({status}):\n{}\n--- server log ---\n{server_log}",
        errors.join("\n")
    );
}

/// The page through a SIGKILL restart of an in-memory server whose new history reuses the
/// old ids: it shows the new messages (it used to drop those whose ids it had seen).
#[test]
fn page_resumes_across_an_in_memory_restart() {
    let Some((web, tmp)) = browser_test("web-restart") else {
        return;
    };
    let deadline = Instant::now() + DEADLINE;
    let log = tmp.0.join("server.log");
    let mut server = Some(start(&[], 0, &log, deadline));
    let port = server.as_ref().map_or(0, |s| s.port);
    let url = format!("ws://127.0.0.1:{port}/");
    let send = |text: &str| {
        let status = Command::new(env!("CARGO_BIN_EXE_wschat"))
            .args(["send", "bob", text, "--url", &url])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .expect("run wschat send");
        assert!(status.success(), "send {text}: {status}");
    };

    let mut node = Command::new("node")
        .arg(web.join("restart.mjs"))
        .current_dir(&web)
        .env("WSCHAT_PAGE_URL", format!("http://127.0.0.1:{port}/"))
        .env("WSCHAT_CHROMIUM", CHROMIUM)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start node ({e}): {INSTALL}"));
    let mut to_node = node.stdin.take().expect("piped stdin");
    let from_node = lines(node.stdout.take().expect("piped stdout"));
    let node_errors = lines(node.stderr.take().expect("piped stderr"));
    let node = Guard(node);

    let mut passed = false;
    while let Some(line) = next_line(&from_node, deadline, "the node script") {
        println!("restart: {line}");
        match line.as_str() {
            "CONNECTED" => (1..=5).for_each(|i| send(&format!("old-{i}"))),
            "OLD_SEEN" => {
                if let Some(mut old) = server.take() {
                    let _ = old.child.0.kill();
                    let _ = old.child.0.wait();
                }
                server = Some(start(&[], port, &log, deadline));
                (1..=10).for_each(|i| send(&format!("new-{i}")));
                say(&mut to_node, "SENT");
            }
            "RESTART_OK" => passed = true,
            _ => {}
        }
    }
    let (status, errors) = node_ended(node, &node_errors, deadline);
    let server_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        status.success() && passed,
        "the page missed messages across the restart ({status}):\n{}\n--- server log ---\n{server_log}",
        errors.join("\n")
    );
}
