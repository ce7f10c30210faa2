//! mega-fuse: the control tool for megafsd. Every command is one request over the daemon's
//! Unix socket.

#![deny(clippy::undocumented_unsafe_blocks)]

mod client;
mod commands;
mod output;
mod progress;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "mega-fuse",
    version,
    about = "Mount source repositories lazily through megafsd"
)]
pub struct Cli {
    /// The daemon's control socket [default: $MEGAFS_SOCKET; else for root
    /// /run/megafs/megafsd.sock; else $XDG_RUNTIME_DIR/megafs/megafsd.sock where a per-user
    /// daemon has one, or the system daemon's where that runs]
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Where to mount (connect).
    #[arg(long, global = true, value_name = "DIR")]
    mount_point: Option<PathBuf>,
    /// Base URL of a Mega server; without it REPO is a local git repository (connect).
    #[arg(long, global = true, value_name = "URL")]
    mega_url: Option<String>,
    /// Cache directory for a daemon started on your behalf.
    #[arg(long, global = true, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Log directory for a daemon started on your behalf.
    #[arg(long, global = true, value_name = "DIR")]
    log_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Mount a repository: a Mega path (with --mega-url) or a local git repository.
    Connect {
        /// /third-party/ripgrep on a Mega server, or a path or file:// URL of a git repository.
        repo: String,
        /// Branch, tag or commit to show (local repositories; default HEAD).
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
        target: String,
        /// Detach even if files are open in it.
        #[arg(long)]
        force: bool,
        /// Remove the mount's workspace (its local changes) too; also for a workspace that
        /// is not mounted, named by its mount's name.
        #[arg(long)]
        discard: bool,
    },
    /// Show what a workspace changed against its commit, like `git status --porcelain`: A
    /// added, M modified, D deleted, T type changed, U changed upstream too (a conflict,
    /// the local version kept); a directory added or deleted whole ends with `/`.
    Changes {
        /// A workspace's mount name, mountpoint or repository.
        target: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a workspace's changes as a patch against its commit (`git diff --binary` form:
    /// `git apply` takes it on a checkout of that commit); of the paths named only, if any.
    Diff {
        /// A workspace's mount name, mountpoint or repository.
        target: String,
        /// Paths inside the repository (or absolute under the mountpoint) [default: all].
        paths: Vec<PathBuf>,
    },
    /// Discard a workspace's local changes: those at the paths named (inside the repository,
    /// as `changes` shows them, or absolute under the mountpoint; a directory goes whole), or
    /// every change if none is named. The workspace's overlay comes off and goes back on, so
    /// nothing may be open in it.
    Reset {
        /// A workspace's mount name, mountpoint or repository.
        target: String,
        /// Paths to take back to the commit [default: every change].
        paths: Vec<PathBuf>,
        /// Reset even while files are open in the workspace (their holders keep what they had
        /// open, detached from it).
        #[arg(long)]
        force: bool,
    },
    /// Move a mount to the newest commit of what it follows (its branch, tag or trunk). A
    /// workspace keeps its changes over the new commit; paths changed upstream too are
    /// marked as conflicts (U in `changes`), keeping the local version.
    Refresh {
        /// A mount's name, mountpoint or repository.
        target: String,
        /// A workspace: refresh even while files are open in it (their holders keep the
        /// tree they had, detached).
        #[arg(long)]
        force: bool,
    },
    /// Fetch listings and files ahead of reads, with a progress bar (Ctrl-C stops it).
    Prefetch {
        /// A mount's name, mountpoint or repository.
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
    /// Show every mount.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a mount's numbers since it was mounted: each operation's count and latency
    /// (p50, p90, p99, max) and where it was answered from, and its server requests.
    Stats {
        /// A mount's name, mountpoint or repository [default: every mount].
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
}

#[derive(Subcommand, Debug, Clone, Copy)]
enum CacheAction {
    /// Evict least recently used objects down to the limit now.
    Gc,
    /// Remove every object that no open file uses.
    Clear,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
