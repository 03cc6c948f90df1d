//! Helpers shared by the integration tests: the real `wschat` binary on real sockets.
//!
//! Nothing here sleeps to synchronise. Every wait is for an event (a line printed, a frame
//! received, a process exiting) with a generous upper bound that only guards against a hang.
//! Every child process is killed when its guard is dropped, so a failing test leaves nothing
//! behind.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::client::Response;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

/// Upper bound for any single wait. Only reached when something is broken.
pub const GUARD: Duration = Duration::from_secs(10);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_wschat")
}

/// A `wschat` command with an environment that cannot leak into the test.
pub fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env("NO_COLOR", "1")
        .env_remove("WSCHAT_URL")
        .env_remove("WSCHAT_PORT")
        .env_remove("WSCHAT_HOST")
        .env_remove("WSCHAT_LOG")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE");
    cmd
}

/// How a child's stdin is set up.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Stdin {
    /// `/dev/null`: stdin ends at once (a background job in a script).
    Null,
    /// A pipe the test writes to and closes.
    Piped,
}

/// A running child process. Its stdout is read line by line on a thread; its stderr is
/// collected as it arrives. Killed (SIGKILL) and reaped on drop.
pub struct Proc {
    what: String,
    child: Child,
    pub stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// Every stdout line taken from `lines` so far.
    seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
    stderr_thread: Option<JoinHandle<()>>,
    started: Instant,
}

/// A child process that has exited.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    /// Every stdout line, in order, without the line ending.
    pub stdout: Vec<String>,
    pub stderr: String,
    /// From spawn to exit.
    pub elapsed: Duration,
}

impl Finished {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Non-empty stderr lines.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }

    /// Asserts the exit code, showing everything the process printed when it differs.
    pub fn assert_code(&self, code: i32) {
        assert_eq!(
            self.code(),
            Some(code),
            "unexpected exit status {:?}\nstdout: {:#?}\nstderr: {}",
            self.status,
            self.stdout,
            self.stderr
        );
    }
}

/// Reads `reader` line by line (raw bytes, so control characters survive) into a channel.
fn line_pump(reader: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(reader);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if buf.last() == Some(&b'\n') {
                        buf.pop();
                    }
                    if tx.send(String::from_utf8_lossy(&buf).into_owned()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

impl Proc {
    pub fn spawn(args: &[&str], stdin: Stdin) -> Proc {
        Proc::spawn_command(command(args), stdin)
    }

    /// Starts `cmd` (built with [`command`], possibly adjusted) with its output captured.
    pub fn spawn_command(mut cmd: Command, stdin: Stdin) -> Proc {
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(match stdin {
            Stdin::Null => Stdio::null(),
            Stdin::Piped => Stdio::piped(),
        });
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} {args:?}: {e}", bin()));
        let lines = line_pump(child.stdout.take().expect("stdout is piped"));
        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_thread = {
            let stderr = stderr.clone();
            let mut pipe = child.stderr.take().expect("stderr is piped");
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                loop {
                    match pipe.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => stderr
                            .lock()
                            .unwrap()
                            .push_str(&String::from_utf8_lossy(&chunk[..n])),
                    }
                }
            })
        };
        Proc {
            what: format!("wschat {}", args.join(" ")),
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
            stderr,
            stderr_thread: Some(stderr_thread),
            started,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr_so_far(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The next stdout line; panics (with what was printed so far) if none comes in time.
    pub fn next_line(&mut self) -> String {
        match self.lines.recv_timeout(GUARD) {
            Ok(line) => {
                self.seen.push(line.clone());
                line
            }
            Err(RecvTimeoutError::Timeout) => panic!(
                "{}: no stdout line within {GUARD:?}\nstdout so far: {:#?}\nstderr: {}",
                self.what,
                self.seen,
                self.stderr_so_far()
            ),
            Err(RecvTimeoutError::Disconnected) => {
                // The process is gone: show how it ended.
                let status = self.child.wait().ok();
                panic!(
                    "{}: stdout closed while a line was expected (exit {status:?})\nstdout so far: {:#?}\nstderr: {}",
                    self.what,
                    self.seen,
                    self.stderr_so_far()
                )
            }
        }
    }

    /// Asserts that the next stdout line is exactly `expected`.
    pub fn expect_line(&mut self, expected: &str) {
        let line = self.next_line();
        assert_eq!(line, expected, "{}: unexpected stdout line", self.what);
    }

    /// Writes one line to the child's stdin.
    pub fn write_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is piped and still open");
        writeln!(stdin, "{line}").expect("write to child stdin");
        stdin.flush().expect("flush child stdin");
    }

    /// Closes the child's stdin (end of input).
    pub fn close_stdin(&mut self) {
        drop(self.stdin.take());
    }

    /// Sends a signal by name (`TERM`, `INT`) with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// SIGKILL, at once: the process gets no chance to close its sockets cleanly.
    pub fn kill_hard(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap killed child");
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits (at most `bound`) for the process to close stdout and exit; returns everything it
    /// printed. Panics if it does not exit in time (the drop guard then kills it).
    pub fn finish(&mut self, bound: Duration) -> Finished {
        let deadline = Instant::now() + bound;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!(
                    "{}: still running after {bound:?}\nstdout: {:#?}\nstderr: {}",
                    self.what,
                    self.seen,
                    self.stderr_so_far()
                ),
            }
        }
        let status = self.child.wait().expect("wait for child");
        let elapsed = self.started.elapsed();
        if let Some(thread) = self.stderr_thread.take() {
            let _ = thread.join();
        }
        Finished {
            status,
            stdout: self.seen.clone(),
            stderr: self.stderr_so_far(),
            elapsed,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Already-reaped children are not signalled again by std.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `wschat serve --port 0`.
pub struct Server {
    /// `ws://127.0.0.1:PORT/`, as the server printed it.
    pub url: String,
    pub port: u16,
    pub proc: Proc,
    /// The `--token` it was started with: `/metrics` asks for it too.
    pub token: Option<String>,
}

impl Server {
    /// Starts `wschat serve --port 0 EXTRA...` and waits for its `listening on` line.
    pub fn start(extra: &[&str]) -> Server {
        Server::start_on("127.0.0.1", extra)
    }

    /// [`Server::start`] listening on `host` (an IPv4 address: `0.0.0.0` for every interface);
    /// `url` and `addr` reach it on 127.0.0.1 all the same.
    pub fn start_on(host: &str, extra: &[&str]) -> Server {
        let mut args = vec!["serve", "--host", host, "--port", "0"];
        args.extend_from_slice(extra);
        let mut proc = Proc::spawn(&args, Stdin::Null);
        let line = proc.next_line();
        let printed = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from serve: {line:?}"));
        let url = printed.replacen(&format!("ws://{host}:"), "ws://127.0.0.1:", 1);
        let port = url
            .strip_prefix("ws://127.0.0.1:")
            .and_then(|rest| rest.strip_suffix('/'))
            .and_then(|p| p.parse::<u16>().ok())
            .unwrap_or_else(|| panic!("serve printed an unexpected URL: {url:?}"));
        assert_ne!(port, 0, "serve printed port 0 instead of the real one");
        // As `--token VALUE` or `--token=VALUE`.
        let token = extra.iter().enumerate().find_map(|(i, arg)| match *arg {
            "--token" => extra.get(i + 1).map(|v| (*v).to_owned()),
            _ => arg.strip_prefix("--token=").map(str::to_owned),
        });
        Server {
            url,
            port,
            proc,
            token,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Starts `wschat join NAME --url URL EXTRA...` and waits for `[NAME] connected` (printed only
/// once the server has registered the client).
pub fn join(url: &str, name: &str, extra: &[&str]) -> Proc {
    let mut proc = join_spawn(url, name, extra, Stdin::Null);
    proc.expect_line(&format!("[{name}] connected"));
    proc
}

/// Starts `wschat join` without waiting for anything.
pub fn join_spawn(url: &str, name: &str, extra: &[&str], stdin: Stdin) -> Proc {
    let mut args = vec!["join", name, "--url", url];
    args.extend_from_slice(extra);
    Proc::spawn(&args, stdin)
}

/// Runs `wschat ARGS...` to completion with `input` on stdin (or /dev/null), bounded by `GUARD`.
pub fn run(args: &[&str], input: Option<&str>) -> Finished {
    let mut proc = Proc::spawn(
        args,
        if input.is_some() {
            Stdin::Piped
        } else {
            Stdin::Null
        },
    );
    if let Some(input) = input {
        let mut stdin = proc.stdin.take().expect("stdin is piped");
        stdin.write_all(input.as_bytes()).expect("write stdin");
        // Dropping it closes the pipe: end of input.
    }
    proc.finish(GUARD)
}

/// Runs `wschat send NAME --url URL EXTRA... -- MESSAGE` (no message: stdin is the input).
pub fn send(url: &str, name: &str, message: Option<&str>, extra: &[&str]) -> Finished {
    let mut args = vec!["send", name, "--url", url];
    args.extend_from_slice(extra);
    if let Some(message) = message {
        args.push("--");
        args.push(message);
    }
    run(&args, None)
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().unwrap().port()
}

// ---- Raw WebSocket clients (sync tungstenite) ------------------------------------------------

pub type Ws = WebSocket<TcpStream>;

/// Opens a WebSocket to `url` with `query` (e.g. `name=carol`) and no subprotocol, the way a
/// browser client written for the tutorial does. Reads time out after `GUARD`.
pub fn ws_connect(url: &str, query: &str) -> Ws {
    ws_connect_with_response(url, query).0
}

/// Connects as a page of the server's own origin would (browsers always send `Origin`).
pub fn ws_connect_as_page(url: &str, query: &str) -> Ws {
    ws_connect_with(url, query, true).0
}

pub fn ws_connect_with_response(url: &str, query: &str) -> (Ws, Response) {
    ws_connect_with(url, query, false)
}

fn ws_connect_with(url: &str, query: &str, as_page: bool) -> (Ws, Response) {
    let addr = url
        .strip_prefix("ws://")
        .and_then(|r| r.split('/').next())
        .expect("ws:// URL");
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(GUARD)).unwrap();
    stream.set_write_timeout(Some(GUARD)).unwrap();
    stream.set_nodelay(true).unwrap();
    let request = if query.is_empty() {
        url.to_owned()
    } else {
        format!("{url}?{query}")
    };
    let mut request = request.as_str().into_client_request().unwrap();
    if as_page {
        let origin = format!("http://{addr}").parse().unwrap();
        request.headers_mut().insert("origin", origin);
    }
    let shown = request.uri().to_string();
    match tungstenite::client(request, stream) {
        Ok(pair) => pair,
        Err(e) => panic!("WebSocket handshake with {shown} failed: {e}"),
    }
}

/// The next data or close frame (pings and pongs are skipped); panics on timeout or error.
pub fn next_frame(ws: &mut Ws) -> Message {
    loop {
        match ws.read() {
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(message) => return message,
            Err(e) => panic!("no frame received (bound {GUARD:?}): {e}"),
        }
    }
}

/// The next frame, which must be text holding a JSON object, whatever its type.
pub fn next_event(ws: &mut Ws) -> Value {
    match next_frame(ws) {
        Message::Text(text) => serde_json::from_str(text.as_str())
            .unwrap_or_else(|e| panic!("frame is not JSON ({e}): {:?}", text.as_str())),
        other => panic!("expected a JSON text frame, got {other:?}"),
    }
}

/// Event types that describe room state rather than carry a message or a notice: `presence`
/// (a member count after each join and leave) and `synced` (the end of a history replay).
/// The protocol lets clients ignore types they do not look at, and these tests do.
pub const STATE_EVENTS: &[&str] = &["presence", "synced"];

/// The next event that is not a state event (see [`STATE_EVENTS`]): a chat message, a
/// notice, an ack or an error.
pub fn next_message(ws: &mut Ws) -> Value {
    loop {
        let event = next_event(ws);
        if !STATE_EVENTS.iter().any(|t| event["type"] == *t) {
            return event;
        }
    }
}

/// Skips system notices (and state events) and returns the next event of another type.
pub fn next_non_system(ws: &mut Ws) -> Value {
    loop {
        let event = next_message(ws);
        if event["type"] != "system" {
            return event;
        }
    }
}

/// Reads events until one with `"type": "system"` whose message is `message`; returns it.
/// Panics on a chat event in between (which would be out of place).
pub fn expect_notice(ws: &mut Ws, message: &str) -> Value {
    loop {
        let event = next_message(ws);
        assert_eq!(
            event["type"], "system",
            "expected the notice {message:?}, got {event}"
        );
        if event["message"] == message {
            return event;
        }
    }
}

/// Connects in JSON mode, reads the welcome (the server registers a client before queueing
/// its welcome, so after this the client is a member of the room) and the history replay up
/// to its `synced` marker. What the client reads next is live.
pub fn ws_member(url: &str, name: &str) -> Ws {
    let mut ws = ws_connect(url, &format!("name={name}"));
    let welcome = next_event(&mut ws);
    assert_eq!(welcome["type"], "system", "not the welcome: {welcome}");
    assert_eq!(welcome["event"], "welcome", "not the welcome: {welcome}");
    while next_event(&mut ws)["type"] != "synced" {}
    ws
}

pub fn send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).expect("send text frame");
}

/// Sends a ping and waits for its pong. The server reads frames only once the connection is
/// registered in the hub, so a pong proves registration even where no welcome is sent
/// (`--raw`). Returns any data frames that arrived first.
pub fn ping_sync(ws: &mut Ws) -> Vec<Message> {
    let payload = b"sync".to_vec();
    ws.send(Message::Ping(payload.clone().into()))
        .expect("send ping");
    let mut before = Vec::new();
    loop {
        match ws.read() {
            Ok(Message::Pong(p)) if p.as_ref() == payload.as_slice() => return before,
            Ok(Message::Ping(_) | Message::Pong(_)) => {}
            Ok(other) => before.push(other),
            Err(e) => panic!("no pong received: {e}"),
        }
    }
}

/// Reads until the server's close frame arrives; returns it.
pub fn expect_close(ws: &mut Ws) -> Option<CloseFrame> {
    loop {
        match ws.read() {
            Ok(Message::Close(frame)) => return frame,
            Ok(_) => continue,
            Err(e) => panic!("no close frame received: {e}"),
        }
    }
}

// ---- Plain HTTP ------------------------------------------------------------------------------

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == &name.to_ascii_lowercase())
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one `METHOD PATH` request over a fresh TCP connection and reads the whole response
/// (`Connection: close`, so the server ends it).
pub fn http_request(addr: &str, method: &str, path: &str) -> HttpResponse {
    http_request_with(addr, method, path, "")
}

/// [`http_request`] with extra header lines (each ending in `\r\n`).
pub fn http_request_with(addr: &str, method: &str, path: &str, headers: &str) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(GUARD)).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: wschat-tests\r\n{headers}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("read HTTP response: {e}"));
    let text = String::from_utf8(raw).expect("HTTP response is UTF-8");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {text:?}"));
    let mut head_lines = head.split("\r\n");
    let status_line = head_lines.next().unwrap();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = head_lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}

/// Asserts that nothing in `text` looks like a panic or a debug dump.
pub fn assert_no_panic(text: &str) {
    for bad in [
        "panicked",
        "RUST_BACKTRACE",
        "stack backtrace",
        "Os {",
        "Error {",
        "kind:",
    ] {
        assert!(!text.contains(bad), "{bad:?} in output: {text}");
    }
}

// ---- Server state, as an operator reads it ---------------------------------------------------

/// The server's resident memory in KiB, from /proc.
pub fn rss_kib(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.proc.pid()))
        .expect("read /proc/PID/status of the server");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// One counter or gauge from the server's `/metrics`.
pub fn metric(server: &Server, name: &str) -> u64 {
    let auth = server
        .token
        .as_ref()
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    let response = http_request_with(&server.addr(), "GET", "/metrics", &auth);
    assert_eq!(response.status, 200);
    response
        .body
        .lines()
        .find_map(|l| l.strip_prefix(&format!("wschat_{name} ")))
        .unwrap_or_else(|| panic!("no metric {name} in {}", response.body))
        .parse()
        .unwrap()
}
