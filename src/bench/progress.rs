//! The progress bar on stderr while connecting and running; nothing at all off a terminal.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar on stderr when it is a terminal; otherwise a hidden one that costs nothing.
    pub fn new() -> Progress {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Progress {
            bar: ProgressBar::with_draw_target(None, target),
        }
    }

    /// A phase counted in items (connections): `done / total`.
    pub fn count(&self, what: &str, total: u64) {
        self.phase("{prefix:>12} [{bar:30}] {pos}/{len} {msg}", what, total);
    }

    /// A phase counted in time: the bar fills over `duration`.
    pub fn timed(&self, what: &str, duration: Duration) {
        let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        self.phase("{prefix:>12} [{bar:30}] {msg}", what, millis.max(1));
    }

    fn phase(&self, template: &str, what: &str, length: u64) {
        // The templates are constants known to be valid; a bad one would only lose the style.
        if let Ok(style) = ProgressStyle::with_template(template) {
            self.bar.set_style(style.progress_chars("=> "));
        }
        self.bar.set_prefix(what.to_owned());
        self.bar.set_length(length);
        self.bar.set_position(0);
        self.bar.set_message("");
        self.bar.reset_elapsed();
        self.bar.reset_eta();
    }

    pub fn set(&self, position: u64) {
        self.bar.set_position(position);
    }

    pub fn message(&self, message: String) {
        self.bar.set_message(message);
    }

    pub fn clear(&self) {
        self.bar.finish_and_clear();
    }
}
