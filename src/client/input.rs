//! The client's terminal: lines in (rustyline on a terminal, plain lines from a pipe) and
//! lines out (above the prompt on a terminal, plain stdout otherwise).

use std::io::{self, BufRead, IsTerminal, Write};

use rustyline::error::ReadlineError;
use rustyline::ExternalPrinter;
use tokio::sync::mpsc;

/// What the input side produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    Line(String),
    /// Ctrl-D at the prompt, or the end of piped input.
    End,
    /// Ctrl-C at the prompt.
    Interrupt,
}

/// Where output lines go.
pub enum Printer {
    Stdout,
    /// Prints above rustyline's prompt without garbling it.
    Prompt(Box<dyn ExternalPrinter + Send>),
}

impl Printer {
    pub fn line(&mut self, line: String) -> io::Result<()> {
        match self {
            Printer::Stdout => {
                let mut out = io::stdout().lock();
                writeln!(out, "{line}")?;
                out.flush()
            }
            Printer::Prompt(printer) => printer
                .print(format!("{line}\n"))
                .map_err(|e| io::Error::other(e.to_string())),
        }
    }
}

/// The reading side of the terminal, with a guard that puts the terminal back as it was.
pub struct Terminal {
    pub lines: mpsc::Receiver<Input>,
    pub printer: Printer,
    /// True when a person is typing at a prompt (not a pipe).
    pub interactive: bool,
    /// Set by the user of `lines` once it has seen the end of input.
    pub finished: bool,
    _restore: Option<restore::TermiosGuard>,
}

/// Starts reading stdin on its own thread (rustyline blocks). The thread is never joined: it
/// may sit in a read when the client is done, and ends with the process.
pub fn start(prompt: &str) -> Terminal {
    let (tx, lines) = mpsc::channel(64);
    if io::stdin().is_terminal() && io::stdout().is_terminal() {
        if let Ok(mut editor) = rustyline::DefaultEditor::new() {
            if let Ok(printer) = editor.create_external_printer() {
                let guard = restore::TermiosGuard::capture();
                let prompt = prompt.to_owned();
                std::thread::spawn(move || loop {
                    let input = match editor.readline(&prompt) {
                        Ok(line) => {
                            let _ = editor.add_history_entry(line.as_str());
                            Input::Line(line)
                        }
                        Err(ReadlineError::Interrupted) => Input::Interrupt,
                        Err(_) => Input::End,
                    };
                    let stop = !matches!(input, Input::Line(_));
                    if tx.blocking_send(input).is_err() || stop {
                        break;
                    }
                });
                return Terminal {
                    lines,
                    printer: Printer::Prompt(Box::new(printer)),
                    interactive: true,
                    finished: false,
                    _restore: guard,
                };
            }
        }
    }
    std::thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(Input::Line(line)).is_err() {
                return;
            }
        }
        let _ = tx.blocking_send(Input::End);
    });
    Terminal {
        lines,
        printer: Printer::Stdout,
        interactive: false,
        finished: false,
        _restore: None,
    }
}

impl Drop for Terminal {
    /// rustyline's prompt is still drawn on the last line when the client ends (it waits in
    /// a read that is never answered): wipe it, so that the shell's prompt starts on a clean
    /// line instead of after `alice> `; and turn off the bracketed paste it turned on.
    fn drop(&mut self) {
        if self.interactive {
            let mut out = io::stdout().lock();
            let _ = out.write_all(b"\x1b[?2004l\r\x1b[K");
            let _ = out.flush();
        }
    }
}

#[cfg(unix)]
mod restore {
    use nix::sys::termios::{self, SetArg, Termios};

    /// Restores the terminal settings seen at start. The client may end while rustyline's
    /// thread is still in a read with the terminal in raw mode; without this the shell
    /// would be left in raw mode.
    pub struct TermiosGuard(Termios);

    impl TermiosGuard {
        pub fn capture() -> Option<TermiosGuard> {
            termios::tcgetattr(std::io::stdin()).ok().map(TermiosGuard)
        }
    }

    impl Drop for TermiosGuard {
        fn drop(&mut self) {
            let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.0);
        }
    }
}

#[cfg(not(unix))]
mod restore {
    pub struct TermiosGuard;
    impl TermiosGuard {
        pub fn capture() -> Option<TermiosGuard> {
            None
        }
    }
}
