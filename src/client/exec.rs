//! `join --exec CMD`: a bot in one line. Each chat message from others runs CMD through
//! `sh -c`, with the message as data only (stdin and environment, never the command line);
//! each line CMD prints is sent to the room.
//!
//! Bounded everywhere: at most `--jobs` commands at once (one by default), replies in the
//! order of the messages, a queue of at most [`QUEUE`] messages, `--exec-timeout` per command
//! (then its whole process group is killed), and at most [`MAX_OUTPUT`] bytes and
//! [`MAX_LINES`] lines of output per command.

use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// Messages waiting for a command, at most; more are skipped (and said so).
const QUEUE: usize = 256;
/// Output read from one command, at most; past it the command is killed.
pub const MAX_OUTPUT: usize = 16 << 10;
/// Lines sent for one command, at most (a room's rate limit would slow more down anyway).
pub const MAX_LINES: usize = 20;

#[derive(Debug, Clone)]
pub struct ExecConfig {
    /// Run with `sh -c`.
    pub command: String,
    /// Commands running at once.
    pub jobs: usize,
    /// Each command is killed after this long.
    pub timeout: Duration,
}

/// One message to answer.
pub struct Job {
    pub from: String,
    pub room: String,
    pub id: u64,
    pub text: String,
}

/// The commands' runner: messages in, lines to send out.
pub struct Runner {
    jobs: mpsc::Sender<Job>,
    replies: mpsc::Receiver<String>,
}

impl Runner {
    pub fn start(config: ExecConfig) -> Runner {
        let (jobs, queue) = mpsc::channel::<Job>(QUEUE);
        let (out, replies) = mpsc::channel(MAX_LINES * 4);
        tokio::spawn(async move {
            let parallel = config.jobs.max(1);
            let queue = futures_util::stream::unfold(queue, |mut queue| async move {
                queue.recv().await.map(|job| (job, queue))
            });
            // `buffered` runs up to `parallel` at once and yields in the order submitted.
            let results = queue.map(|job| run(&config, job)).buffered(parallel);
            tokio::pin!(results);
            while let Some(lines) = results.next().await {
                for line in lines {
                    if out.send(line).await.is_err() {
                        return;
                    }
                }
            }
        });
        Runner { jobs, replies }
    }

    /// Queues a message; when the queue is full the message is skipped, with a line on stderr.
    pub fn submit(&mut self, job: Job) {
        if let Err(mpsc::error::TrySendError::Full(job)) = self.jobs.try_send(job) {
            eprintln!(
                "wschat: exec: {QUEUE} messages are waiting already; not running the command for message {} from {}",
                job.id, job.from
            );
        }
    }

    pub async fn reply(&mut self) -> Option<String> {
        self.replies.recv().await
    }
}

/// Runs the command for one message; returns the lines to send. Every failure is reported on
/// stderr and sends nothing more than what was printed before it.
async fn run(config: &ExecConfig, job: Job) -> Vec<String> {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(&config.command)
        .env("WSCHAT_FROM", job.from.replace('\0', "\u{fffd}"))
        .env("WSCHAT_ROOM", job.room.replace('\0', "\u{fffd}"))
        .env("WSCHAT_ID", job.id.to_string())
        // An environment variable cannot hold NUL; stdin has the text exactly.
        .env("WSCHAT_TEXT", job.text.replace('\0', "\u{fffd}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    // Its own process group, so a timeout kills what it started too.
    #[cfg(unix)]
    command.process_group(0);
    let about = format!("message {} from {}", job.id, job.from);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!("wschat: exec: cannot run sh: {e}");
            return Vec::new();
        }
    };
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let mut text = job.text.into_bytes();
    text.push(b'\n');
    let work = async {
        let write = async {
            if let Some(mut stdin) = stdin {
                // A command that does not read its input closes the pipe: not an error.
                let _ = stdin.write_all(&text).await;
            }
        };
        let read = async {
            let mut output = Vec::new();
            if let Some(stdout) = stdout {
                let _ = stdout
                    .take(MAX_OUTPUT as u64 + 1)
                    .read_to_end(&mut output)
                    .await;
            }
            output
        };
        let ((), output) = tokio::join!(write, read);
        if output.len() > MAX_OUTPUT {
            return (output, None);
        }
        let status = child.wait().await.ok();
        (output, status)
    };
    let (mut output, status) = match tokio::time::timeout(config.timeout, work).await {
        Ok(done) => done,
        Err(_) => {
            kill(&mut child).await;
            eprintln!(
                "wschat: exec: the command for {about} ran longer than {}; killed",
                humantime::format_duration(config.timeout)
            );
            return Vec::new();
        }
    };
    match status {
        None => {
            kill(&mut child).await;
            eprintln!(
                "wschat: exec: the command for {about} printed more than {MAX_OUTPUT} bytes; killed, and only whole lines before that are sent"
            );
            output.truncate(MAX_OUTPUT);
            let end = output.iter().rposition(|b| *b == b'\n').unwrap_or(0);
            output.truncate(end);
        }
        Some(status) if !status.success() => {
            eprintln!("wschat: exec: the command for {about} failed ({status})");
        }
        Some(_) => {}
    }
    let text = String::from_utf8_lossy(&output);
    let lines: Vec<String> = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    if lines.len() > MAX_LINES {
        eprintln!(
            "wschat: exec: the command for {about} printed {} lines; sending the first {MAX_LINES}",
            lines.len()
        );
    }
    lines.into_iter().take(MAX_LINES).collect()
}

/// Kills the command and everything it started, and reaps it.
async fn kill(child: &mut Child) {
    #[cfg(unix)]
    if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
        use nix::sys::signal::{killpg, Signal};
        let _ = killpg(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
}
