//! A real `redis-server` for the tests: on a free port, AOF on, in a directory that outlives
//! its restarts (scripts/test.sh installs it).

use std::path::Path;
use std::process::{Command, Stdio};

use super::process::{free_port, Logged};

pub struct RedisServer {
    pub port: u16,
    process: Option<Logged>,
}

impl RedisServer {
    /// Starts it in `dir` and waits until it answers PING.
    pub fn start(dir: &Path) -> RedisServer {
        let mut redis = RedisServer {
            port: free_port(),
            process: None,
        };
        redis.restart(dir);
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and directory, and waits until it answers PING.
    pub fn restart(&mut self, dir: &Path) {
        let mut child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "yes", "--dir"])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test.sh installs it)");
        let stdout = child.stdout.take().expect("piped");
        let mut process = Logged::new(child, stdout);
        process.wait_for("Ready to accept connections");
        let mut connection = redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("connect to redis-server");
        let pong: String = redis::cmd("PING").query(&mut connection).expect("PING");
        assert_eq!(pong, "PONG");
        self.process = Some(process);
    }

    /// The process id, to signal it (SIGSTOP, SIGCONT).
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Logged::pid)
    }

    /// Sends `signal` (`STOP`, `CONT`) to redis-server.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("redis-server runs");
        let status = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// SIGKILL: no chance to write anything more.
    pub fn kill(&mut self) {
        drop(self.process.take());
    }
}
