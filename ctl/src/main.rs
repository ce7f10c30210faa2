//! mega-fuse: the control tool for megafsd. Every command is one request over the daemon's
//! Unix socket.

#![deny(clippy::undocumented_unsafe_blocks)]

mod client;
mod commands;
mod complete;
mod doctor;
mod manual;
mod output;
mod progress;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueHint};
use clap_complete::engine::ArgValueCompleter;

#[derive(Parser, Debug)]
#[command(
    name = "mega-fuse",
    version,
    about = "Mount source repositories lazily through megafsd",
    disable_help_subcommand = true,
    after_help = "The classic form works too: mega-fuse --mount-point DIR [--cache-dir DIR] \
                  [--log-dir DIR] [--mega-url URL] connect REPO"
)]
pub struct Cli {
    /// The daemon's control socket [default: $MEGAFS_SOCKET; else for root
    /// /run/megafs/megafsd.sock; else $XDG_RUNTIME_DIR/megafs/megafsd.sock where a per-user
    /// daemon has one, or the system daemon's where that runs]
    #[arg(long, global = true, value_name = "PATH", value_hint = ValueHint::FilePath,
          display_order = 900)]
    socket: Option<PathBuf>,
    // The classic form's options, given before `connect`: hidden, since `connect` lists its
    // own; `Cli::merged` takes connect's where both are given.
    #[arg(long, hide = true)]
    mount_point: Option<PathBuf>,
    #[arg(long, hide = true)]
    mega_url: Option<String>,
    #[arg(long, hide = true)]
    cache_dir: Option<PathBuf>,
    #[arg(long, hide = true)]
    log_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// The command line with `connect`'s own options folded into the classic form's fields,
    /// which the rest of the tool reads.
    fn merged(mut self) -> Self {
        if let Command::Connect { place, .. } = &mut self.command {
            let place = std::mem::take(place);
            self.mount_point = place.mount_point.or(self.mount_point);
            self.mega_url = place.mega_url.or(self.mega_url);
            self.cache_dir = place.cache_dir.or(self.cache_dir);
            self.log_dir = place.log_dir.or(self.log_dir);
        }
        self
    }
}

/// Where `connect` mounts from and to, and where a daemon it starts keeps its cache and log.
#[derive(clap::Args, Debug, Default)]
struct Place {
    /// Where to mount: an existing empty directory.
    #[arg(long, value_name = "DIR", value_hint = ValueHint::DirPath)]
    mount_point: Option<PathBuf>,
    /// Base URL of the Mega server REPO is on (http://host:8000).
    #[arg(long, value_name = "URL", value_hint = ValueHint::Url)]
    mega_url: Option<String>,
    /// Cache directory for a daemon this command starts (when none answers on the socket).
    #[arg(long, value_name = "DIR", value_hint = ValueHint::DirPath)]
    cache_dir: Option<PathBuf>,
    /// Log directory for a daemon this command starts.
    #[arg(long, value_name = "DIR", value_hint = ValueHint::DirPath)]
    log_dir: Option<PathBuf>,
}

/// A mount named by its name, its mountpoint or its repository; completed with mount names.
fn target_completer() -> ArgValueCompleter {
    ArgValueCompleter::new(complete::mount_names)
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Mount a repository: a path on a Mega server (with --mega-url), a git server's
    /// https:// or http:// URL, or a local git repository.
    #[command(override_usage = "mega-fuse connect --mount-point <DIR> [OPTIONS] <REPO>")]
    Connect {
        /// What to mount: /third-party/ripgrep with --mega-url; https://host/repo.git (or
        /// http://) on a git server; a path or file:// URL of a local git repository.
        #[arg(value_hint = ValueHint::AnyPath)]
        repo: String,
        #[command(flatten)]
        place: Place,
        /// Branch, tag or commit to show, for a git server or a local repository [default:
        /// HEAD]; a Mega mount always shows its trunk.
        #[arg(long = "ref", value_name = "REF")]
        git_ref: Option<String>,
        /// Name of the mount [default: the last component of REPO].
        #[arg(long)]
        name: Option<String>,
        /// Let every user in (permission bits still apply), not only you; for users other
        /// than root, only where the daemon's configuration allows it (user_allow_other).
        #[arg(long)]
        allow_other: bool,
        /// A workspace: the mount takes writes, kept in the daemon's workspace directory
        /// named after the mount, over the commit; connecting that name again finds them.
        #[arg(long)]
        writable: bool,
    },
    /// Unmount a mount, named by its name, its mountpoint or its repository.
    Disconnect {
        /// The mount's name, mountpoint or repository.
        #[arg(add = target_completer())]
        target: String,
        /// Detach even if files are open in it.
        #[arg(long)]
        force: bool,
        /// Remove the mount's workspace (its local changes) too; also for a workspace that
        /// is not mounted, named by its mount's name.
        #[arg(long)]
        discard: bool,
    },
    /// Show what a workspace changed against its commit.
    ///
    /// One line a path, like `git status --porcelain`: A added, M modified, D deleted, T type changed, U changed upstream too (a conflict,
    /// the local version kept); a directory added or deleted whole ends with `/`.
    Changes {
        /// A workspace's mount name, mountpoint or repository.
        #[arg(add = target_completer())]
        target: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a workspace's changes as a patch against its commit.
    ///
    /// In `git diff --binary` form: `git apply` takes it on a checkout of that commit. Only
    /// of the paths named, if any.
    Diff {
        /// A workspace's mount name, mountpoint or repository.
        #[arg(add = target_completer())]
        target: String,
        /// Paths inside the repository (or absolute under the mountpoint) [default: all].
        paths: Vec<PathBuf>,
    },
    /// Discard a workspace's local changes.
    ///
    /// Those at the paths named (inside the repository,
    /// as `changes` shows them, or absolute under the mountpoint; a directory goes whole), or
    /// every change if none is named. The workspace's overlay comes off and goes back on, so
    /// nothing may be open in it.
    Reset {
        /// A workspace's mount name, mountpoint or repository.
        #[arg(add = target_completer())]
        target: String,
        /// Paths to take back to the commit [default: every change].
        paths: Vec<PathBuf>,
        /// Reset even while files are open in the workspace (their holders keep what they had
        /// open, detached from it).
        #[arg(long)]
        force: bool,
    },
    /// Move a mount to the newest commit of what it follows (its branch, tag or trunk).
    ///
    /// A workspace keeps its changes over the new commit; paths changed upstream too are
    /// marked as conflicts (U in `changes`), keeping the local version.
    Refresh {
        /// A mount's name, mountpoint or repository.
        #[arg(add = target_completer())]
        target: String,
        /// A workspace: refresh even while files are open in it (their holders keep the
        /// tree they had, detached).
        #[arg(long)]
        force: bool,
    },
    /// Fetch listings and files ahead of reads, with a progress bar (Ctrl-C stops it).
    Prefetch {
        /// A mount's name, mountpoint or repository.
        #[arg(add = target_completer())]
        target: String,
        /// Paths or globs inside the mount ("src", "src/**/*.rs") [default: all of it].
        patterns: Vec<String>,
        /// Walk at most this many directory levels, counted from where each pattern ends:
        /// `src --depth 1` takes the files directly in src, `crates/*/Cargo.toml --depth 1`
        /// each crate's Cargo.toml (the levels a pattern's wildcards name always count; `**`
        /// names none).
        #[arg(long)]
        depth: Option<u32>,
    },
    /// Show every mount, or one in detail.
    Status {
        /// One mount, shown whole (source, commit, ref, refresh, reads, counters, and why it
        /// is unhealthy): its name, mountpoint or repository [default: a table of every mount].
        #[arg(add = target_completer())]
        target: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a mount's numbers since it was mounted.
    ///
    /// Each operation's count and latency (p50, p90, p99, max) and where it was answered
    /// from, and its server requests.
    Stats {
        /// A mount's name, mountpoint or repository [default: every mount].
        #[arg(add = target_completer())]
        target: Option<String>,
        /// Print JSON instead of tables (latencies in microseconds).
        #[arg(long)]
        json: bool,
    },
    /// Show the shared object cache (size, limit, objects, hit rate), or collect or clear it.
    Cache {
        #[command(subcommand)]
        action: Option<CacheAction>,
        /// Print JSON.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Check what megafs needs, one line each with the fix where something is wrong.
    ///
    /// Here: /dev/fuse, fusermount3, the kernel, the daemon on the socket this tool would use.
    /// The daemon: its configuration file, stale mounts, the cache's room to grow, and each of
    /// your mounts' servers (with the time each took to answer). Exits non-zero if a check
    /// failed.
    Doctor {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show what the shared cache holds for each of your mounts.
    ///
    /// Objects several mounts share are counted once and shown as shared; also listing
    /// records, workspaces' sizes, what no mount shown reaches, and what `cache gc` would free.
    Du {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell's completion script (subcommands, options, mount names).
    ///
    /// `source <(mega-fuse completions bash)` in ~/.bashrc, say; the packages install it for
    /// bash, zsh and fish where each looks.
    Completions {
        /// The shell to complete in.
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(complete::shell_names()))]
        shell: String,
    },
    /// Print the help of mega-fuse, or of the subcommand named (`mega-fuse help cache gc`).
    Help {
        /// A subcommand, and a subcommand of it.
        command: Vec<String>,
    },
    /// Write the manual pages (mega-fuse.1 and one per subcommand) into DIR.
    #[command(hide = true)]
    GenerateManpages {
        #[arg(value_hint = ValueHint::DirPath)]
        dir: PathBuf,
    },
}

#[derive(Subcommand, Debug, Clone, Copy)]
enum CacheAction {
    /// Evict least recently used objects down to the limit now.
    Gc,
    /// Remove every object that no open file uses.
    Clear,
}

fn main() -> ExitCode {
    // A shell's completion function runs us with COMPLETE set: answer it, and exit.
    clap_complete::CompleteEnv::with_factory(Cli::command)
        .var(complete::VAR)
        .complete();
    let cli = Cli::parse().merged();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mega-fuse: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mega-fuse: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definitions_hold_together() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_argument_a_user_sees_says_what_it_is() {
        fn check(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments().filter(|a| !a.is_hide_set()) {
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
                if sub.get_about().is_none() {
                    missing.push(format!("{path} {}", sub.get_name()));
                }
                check(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut command = Cli::command();
        command.build();
        let mut missing = Vec::new();
        check(&command, "mega-fuse", &mut missing);
        assert!(missing.is_empty(), "without a description: {missing:?}");
    }
}
