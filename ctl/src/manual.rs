//! `help` and the manual pages, both from the same clap definitions as parsing.

use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;

use crate::Cli;

/// Prints what `mega-fuse PATH... --help` prints (`help cache gc`, `help help`), or clap's
/// error for a subcommand that does not exist, and exits as that would.
pub fn help(path: &[String]) -> ! {
    let argv = std::iter::once("mega-fuse")
        .chain(path.iter().map(String::as_str))
        .chain(std::iter::once("--help"));
    match Cli::command().try_get_matches_from(argv) {
        Err(shown) => shown.exit(),
        // Unreachable in practice: --help always ends parsing.
        Ok(_) => std::process::exit(0),
    }
}

/// Writes mega-fuse(1) and a page for each subcommand (mega-fuse-connect(1), ...) into `dir`.
pub fn write_pages(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("cannot write the manual pages into {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn there_is_a_page_for_the_tool_and_each_subcommand_and_none_for_hidden_ones() {
        let dir = tempfile::tempdir().unwrap();
        write_pages(dir.path()).unwrap();
        let mut pages: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        pages.sort();
        for page in ["mega-fuse.1", "mega-fuse-connect.1", "mega-fuse-cache-gc.1"] {
            assert!(pages.iter().any(|p| p == page), "{page} missing: {pages:?}");
        }
        assert!(!pages.iter().any(|p| p.contains("generate")), "{pages:?}");
        let connect = std::fs::read_to_string(dir.path().join("mega-fuse-connect.1")).unwrap();
        assert!(connect.contains("mount\\-point"), "{connect}");
    }
}
