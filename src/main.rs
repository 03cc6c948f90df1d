//! The `wschat` binary: parse arguments, start the runtime, run the mode, map the exit code.
#![forbid(unsafe_code)]

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use wschat::cli::{Cli, ColorChoice, LogFormat, Mode};
use wschat::exit::{exit_for, Exit};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => usage_error(&e),
    };
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let colour_on = |terminal: bool| match cli.color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => terminal && !no_color,
    };
    colored::control::set_override(colour_on(std::io::stdout().is_terminal()));
    let log_colour = colour_on(std::io::stderr().is_terminal());
    let mode = match cli.into_mode() {
        Ok(mode) => mode,
        Err(e) => usage_error(&e),
    };
    init_logging(&mode, log_colour);

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("wschat: error: cannot start the async runtime: {e}");
            return ExitCode::from(Exit::Failure.code());
        }
    };
    let result = runtime.block_on(wschat::app::run(mode));
    // Do not wait for the stdin reader thread: it may be blocked in a read.
    runtime.shutdown_background();
    match result {
        Ok(exit) => ExitCode::from(exit.code()),
        Err(e) => {
            let exit = exit_for(&e);
            if exit != Exit::Success {
                eprintln!("wschat: error: {e:#}");
            }
            ExitCode::from(exit.code())
        }
    }
}

/// Logs go to stderr: `info` for the server, warnings only for the clients.
/// `WSCHAT_LOG` overrides (e.g. `WSCHAT_LOG=debug`).
fn init_logging(mode: &Mode, colour: bool) {
    let (default, json) = match mode {
        Mode::Serve { log_format, .. } => ("info", *log_format == LogFormat::Json),
        _ => ("warn", false),
    };
    let filter = EnvFilter::try_from_env("WSCHAT_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        logs.json().init();
    } else {
        logs.with_ansi(colour).init();
    }
}

/// Prints a clap error the way every other error is printed (`wschat: error: ...`, then the
/// usage of the subcommand concerned), naming the environment variable a bad value came from,
/// and exits 2; help and version go to stdout and exit 0, as clap does.
fn usage_error(error: &clap::Error) -> ! {
    if !error.use_stderr() {
        error.exit();
    }
    let text = wschat::cli::describe_usage_error(error);
    let _ = writeln!(std::io::stderr().lock(), "{}", text.trim_end());
    std::process::exit(error.exit_code());
}
