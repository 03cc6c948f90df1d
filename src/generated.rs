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
    let command = Cli::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone()).render(&mut page)?;
    files.push(("man/wschat.1".to_owned(), page));
    for sub in command.get_subcommands() {
        let name = format!("wschat-{}", sub.get_name());
        let sub = sub.clone().name(name.clone());
        let mut page = Vec::new();
        clap_mangen::Man::new(sub).render(&mut page)?;
        files.push((format!("man/{name}.1"), page));
    }
    Ok(files)
}
