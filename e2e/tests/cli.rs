//! The control tool as a shell user meets it: its help and its completions, which ask the
//! real daemon for mount names.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{path_str, World};
use megafs_testsupport::harness::bin;

/// Runs mega-fuse with `args` (no daemon involved), expecting success: its stdout.
fn mega_fuse(args: &[&str]) -> String {
    let out = Command::new(bin("mega-fuse"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running mega-fuse");
    assert!(
        out.status.success(),
        "mega-fuse {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What Tab offers in bash for the last of `words`, after sourcing `script` (what
/// `mega-fuse completions bash` printed), with mega-fuse found on PATH as an installed one is
/// and `env` set.
fn tab(script: &Path, words: &[&str], env: &[(&str, &str)]) -> Vec<String> {
    let bin_dir = bin("mega-fuse").parent().expect("bin dir").to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(
            r#". "$0" || exit 9
            COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
            _clap_complete_mega_fuse mega-fuse "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
            printf '%s\n' "${COMPREPLY[@]}""#,
        )
        .arg(script)
        .args(words)
        .env("PATH", path)
        .env_remove("MEGAFS_SOCKET")
        .envs(env.iter().copied())
        .output()
        .expect("running bash");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "bash: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut offered: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    offered.sort();
    offered
}

#[test]
fn bash_completes_subcommands_options_and_the_daemons_mount_names() {
    let world = World::new();
    world.mount_local("alpha", "");
    world.mount_local("beta", "");
    let script = world.daemon.dir.path().join("mega-fuse.bash");
    std::fs::write(&script, mega_fuse(&["completions", "bash"])).expect("write");
    let socket = path_str(&world.daemon.socket);

    assert_eq!(tab(&script, &["mega-fuse", "disc"], &[]), ["disconnect"]);
    assert!(
        tab(&script, &["mega-fuse", "connect", "--mount"], &[]).contains(&"--mount-point".into()),
        "connect completes its own options"
    );
    // Mount names come from the daemon: the one MEGAFS_SOCKET names, or the --socket typed.
    // (With nothing typed yet, clap's engine offers the options too.)
    let env = [("MEGAFS_SOCKET", socket)];
    let names: Vec<String> = tab(&script, &["mega-fuse", "disconnect", ""], &env)
        .into_iter()
        .filter(|w| !w.starts_with('-'))
        .collect();
    assert_eq!(names, ["alpha", "beta"]);
    assert_eq!(
        tab(
            &script,
            &["mega-fuse", "--socket", socket, "prefetch", "a"],
            &[]
        ),
        ["alpha"]
    );
    // Where no daemon answers, Tab offers no name, and says nothing (`tab` checks stderr).
    let nowhere = world.daemon.dir.path().join("nobody.sock");
    let env = [("MEGAFS_SOCKET", path_str(&nowhere))];
    assert_eq!(tab(&script, &["mega-fuse", "refresh", "a"], &env), [""; 0]);
}

#[test]
fn each_subcommand_shows_only_its_own_options_and_says_what_connect_takes() {
    let disconnect = mega_fuse(&["disconnect", "--help"]);
    for other in ["--mount-point", "--mega-url", "--cache-dir", "--log-dir"] {
        assert!(!disconnect.contains(other), "{other} in:\n{disconnect}");
    }
    assert!(
        disconnect.contains("<TARGET>  The mount's name, mountpoint or repository"),
        "{disconnect}"
    );

    let connect = mega_fuse(&["connect", "--help"]);
    assert!(
        connect.contains("Usage: mega-fuse connect --mount-point <DIR>"),
        "{connect}"
    );
    for source in ["--mega-url", "https://", "http://", "local git repository"] {
        assert!(connect.contains(source), "{source} in:\n{connect}");
    }
    assert!(!connect.contains("(local repositories"), "{connect}");

    // `help` is a subcommand like the others, with help of its own.
    assert!(mega_fuse(&["help", "--help"]).contains("Usage: mega-fuse help"));
    assert_eq!(mega_fuse(&["help", "connect"]), connect);
    assert!(mega_fuse(&["help"]).contains("classic form"));
}
