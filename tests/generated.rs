//! The committed completions and man pages match what the clap definition generates.
//! Regenerate with `WSCHAT_BLESS=1 cargo test --test generated`.

use std::path::Path;

#[test]
fn completions_and_man_pages_are_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bless = std::env::var_os("WSCHAT_BLESS").is_some();
    let mut stale = Vec::new();
    for (path, contents) in wschat::generated::files().expect("render man pages") {
        let file = root.join(&path);
        if bless {
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, &contents).unwrap();
        } else if std::fs::read(&file).ok().as_deref() != Some(&contents[..]) {
            stale.push(path);
        }
    }
    assert!(
        stale.is_empty(),
        "stale generated files {stale:?}: run `WSCHAT_BLESS=1 cargo test --test generated`"
    );
}

#[test]
fn clap_definition_passes_debug_assert() {
    use clap::CommandFactory;
    wschat::cli::Cli::command().debug_assert();
}
