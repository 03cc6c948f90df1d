//! Shell completions and man pages, generated from the clap definition. The copies committed
//! under `completions/` and `man/` are checked against these by `tests/generated.rs`.

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

/// Writes the completion script for `shell`.
pub fn completions(shell: Shell, out: &mut dyn std::io::Write) {
    clap_complete::generate(shell, &mut Cli::command(), "wschat", out);
}

/// Every generated file: its path relative to the repository root, and its contents.
pub fn files() -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    for (shell, name) in [
        (Shell::Bash, "wschat.bash"),
        (Shell::Zsh, "_wschat"),
        (Shell::Fish, "wschat.fish"),
        (Shell::PowerShell, "_wschat.ps1"),
        (Shell::Elvish, "wschat.elv"),
    ] {
        let mut script = Vec::new();
        completions(shell, &mut script);
        files.push((format!("completions/{name}"), script));
    }
    let mut command = Cli::command();
    command.build();
    let mut page = Vec::new();
    let top = command.clone().override_usage(synopsis(&command, "wschat"));
    clap_mangen::Man::new(top).render(&mut page)?;
    files.push(("man/wschat.1".to_owned(), page));
    // `build` adds clap's `help` subcommand, which gets no page of its own.
    for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("wschat-{}", sub.get_name());
        let usage = synopsis(sub, &format!("wschat {}", sub.get_name()));
        let sub = sub
            .clone()
            .name(name.clone())
            .bin_name(format!("wschat {}", sub.get_name()))
            .override_usage(usage);
        let mut page = Vec::new();
        clap_mangen::Man::new(sub).render(&mut page)?;
        files.push((format!("man/{name}.1"), page));
    }
    Ok(files)
}

/// The man page's synopsis: every option with its value name (`[--url URL]`), which
/// clap_mangen's own leaves out. `command` must be built.
fn synopsis(command: &clap::Command, name: &str) -> String {
    let mut parts = vec![name.to_owned()];
    let value = |arg: &clap::Arg| {
        arg.get_value_names()
            .map(|names| names.join(" "))
            .unwrap_or_else(|| arg.get_id().as_str().to_uppercase())
    };
    for arg in command
        .get_arguments()
        .filter(|a| !a.is_hide_set() && !a.is_positional())
    {
        let flag = match (arg.get_short(), arg.get_long()) {
            (Some(short), Some(long)) => format!("-{short}|--{long}"),
            (None, Some(long)) => format!("--{long}"),
            (Some(short), None) => format!("-{short}"),
            (None, None) => continue,
        };
        let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
        let text = if takes_value {
            format!("{flag} {}", value(arg))
        } else {
            flag
        };
        parts.push(if arg.is_required_set() {
            text
        } else {
            format!("[{text}]")
        });
    }
    for arg in command.get_positionals().filter(|a| !a.is_hide_set()) {
        let many = arg.get_num_args().is_some_and(|n| n.max_values() > 1);
        let dots = if many { "..." } else { "" };
        parts.push(if arg.is_required_set() {
            format!("<{}>{dots}", value(arg))
        } else {
            format!("[{}]{dots}", value(arg))
        });
    }
    if command.has_subcommands() {
        parts.push("<COMMAND>".to_owned());
    }
    parts.join(" ")
}
