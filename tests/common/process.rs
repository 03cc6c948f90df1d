//! Child processes: the `wschat` binary run as a test would run it, its output read line by
//! line, killed when dropped; `serve`, `join`, `send` and `run` on top.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
    /// Everything written to stderr so far, and a signal when more comes.
    stderr: Arc<(Mutex<String>, Condvar)>,
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
pub fn line_pump(reader: impl Read + Send + 'static) -> Receiver<String> {
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
        let stderr = Arc::new((Mutex::new(String::new()), Condvar::new()));
        let stderr_thread = {
            let stderr = stderr.clone();
            let mut pipe = child.stderr.take().expect("stderr is piped");
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                loop {
                    match pipe.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            let (text, more) = &*stderr;
                            text.lock()
                                .unwrap()
                                .push_str(&String::from_utf8_lossy(&chunk[..n]));
                            more.notify_all();
                        }
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
        self.stderr.0.lock().unwrap().clone()
    }

    /// Waits (at most `GUARD`) until stderr holds `needle`.
    pub fn wait_for_stderr(&self, needle: &str) {
        let (text, more) = &*self.stderr;
        let deadline = Instant::now() + GUARD;
        let mut seen = text.lock().unwrap();
        while !seen.contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{}: no {needle:?} on stderr: {seen}",
                self.what
            );
            seen = more.wait_timeout(seen, left).unwrap().0;
        }
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

/// Starts `serve` on a given port (to restart a server where its clients expect it) and waits
/// for its `listening on` line.
pub fn serve_on(port: u16, extra: &[&str]) -> Proc {
    let port = port.to_string();
    let mut args = vec!["serve", "--host", "127.0.0.1", "--port", &port];
    args.extend_from_slice(extra);
    let mut proc = Proc::spawn(&args, Stdin::Null);
    let line = proc.next_line();
    assert_eq!(line, format!("listening on ws://127.0.0.1:{port}/"));
    proc
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

/// Any child process (not only `wschat`) whose output lines arrive on a channel; killed on
/// drop.
pub struct Logged {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Logged {
    /// Reads `child`'s lines from `stream` (its stdout or stderr, taken from it).
    pub fn new(child: Child, stream: impl Read + Send + 'static) -> Logged {
        Logged {
            child,
            lines: line_pump(stream),
            seen: Vec::new(),
        }
    }

    /// Waits (at most `GUARD` × 2) for a line containing `needle`; returns it.
    pub fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + 2 * GUARD;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => self.seen.push(line),
                Err(e) => panic!("no line with {needle:?} ({e}); seen: {:#?}", self.seen),
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}
