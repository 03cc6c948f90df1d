//! `join --record FILE`: every received event appended to FILE as NDJSON, with its arrival
//! time: `{"at":"2026-12-07T08:00:00.123Z","event":{...}}`.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context;
use serde_json::{json, Value};

use crate::exit::{fail, Exit};

pub struct Recorder {
    file: File,
    path: PathBuf,
}

impl Recorder {
    /// Opens `path` for appending (created if missing).
    pub fn open(path: &Path) -> anyhow::Result<Recorder> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| {
                fail(
                    Exit::Failure,
                    format!("cannot open --record {}: {e}", path.display()),
                )
            })?;
        Ok(Recorder {
            file,
            path: path.to_owned(),
        })
    }

    /// Appends one event, with the time it arrived. One write per line: a reader following
    /// the file sees whole lines.
    pub fn write(&mut self, event: &Value) -> anyhow::Result<()> {
        let at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let mut line = json!({"at": at, "event": event}).to_string();
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .with_context(|| format!("cannot write to --record {}", self.path.display()))
    }
}
