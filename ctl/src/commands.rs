//! One function per command.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use megafs_proto::location::Location;
use megafs_proto::v1::cache_request::Action;
use megafs_proto::v1::{
    CacheRequest, ChangesRequest, ConnectRequest, DiffRequest, DisconnectRequest, DuRequest,
    PrefetchRequest, RefreshRequest, ResetRequest, StatsRequest, StatusRequest,
};

use crate::client::{self, status_error};
use crate::output;
use crate::progress;
use crate::{complete, doctor, manual};
use crate::{CacheAction, Cli, Command};

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Connect {
            repo,
            place: _,
            git_ref,
            name,
            allow_other,
            writable,
        } => {
            connect(
                &cli,
                repo,
                git_ref.as_deref(),
                name.as_deref(),
                *allow_other,
                *writable,
            )
            .await
        }
        Command::Disconnect {
            target,
            force,
            discard,
        } => disconnect(&cli, target, *force, *discard).await,
        Command::Changes { target, json } => changes(&cli, target, *json).await,
        Command::Diff { target, paths } => diff(&cli, target, paths).await,
        Command::Reset {
            target,
            paths,
            force,
        } => reset(&cli, target, paths, *force).await,
        Command::Refresh { target, force } => refresh(&cli, target, *force).await,
        Command::Prefetch {
            target,
            patterns,
            depth,
        } => prefetch(&cli, target, patterns, depth.unwrap_or(0)).await,
        Command::Status { target, json } => status(&cli, target.as_deref(), *json).await,
        Command::Stats { target, json } => stats(&cli, target.as_deref(), *json).await,
        Command::Cache { action, json } => cache(&cli, *action, *json).await,
        Command::Doctor { json } => doctor::run(&cli, *json).await,
        Command::Du { json } => du(&cli, *json).await,
        Command::Completions { shell } => {
            complete::write_registration(shell, &mut std::io::stdout().lock())
        }
        Command::Help { command } => manual::help(command),
        Command::GenerateManpages { dir } => manual::write_pages(dir),
    }
}

async fn prefetch(cli: &Cli, target: &str, patterns: &[String], depth: u32) -> anyhow::Result<()> {
    let mut client = client::connect(cli).await?;
    let started = std::time::Instant::now();
    let mut updates = client
        .prefetch(PrefetchRequest {
            target: target.to_string(),
            patterns: patterns.to_vec(),
            depth,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let mut shown = progress::Progress::new();
    let mut last = None;
    let interrupted = loop {
        let update = tokio::select! {
            update = updates.message() => update.map_err(status_error)?,
            // Dropping the call (on return) stops the walk in the daemon; say how far it got.
            _ = tokio::signal::ctrl_c() => break true,
        };
        let Some(update) = update else { break false };
        shown.update(&update, started.elapsed());
        let finished = update.finished;
        last = Some(update);
        if finished {
            break false;
        }
    };
    shown.finish();
    if interrupted {
        println!("{}", progress::stopped(last.as_ref(), started.elapsed()));
        return Err(anyhow!("the prefetch of {target} was stopped by Ctrl-C"));
    }
    let last = last
        .filter(|p| p.finished)
        .ok_or_else(|| anyhow!("the daemon ended the prefetch without a word"))?;
    println!("{}", progress::summary(&last, started.elapsed()));
    if last.walk_done && last.files_total == 0 && !patterns.is_empty() {
        let limit = match depth {
            0 => String::new(),
            d => format!(" within --depth {d}"),
        };
        return Err(anyhow!(
            "no file of {target} matches {}{limit}: patterns are paths from the mount's \
             root (quote globs, so that the shell leaves them alone)",
            patterns.join(" ")
        ));
    }
    if !last.walk_done {
        return Err(anyhow!("the prefetch of {target} stopped: {}", last.error));
    }
    if last.files_failed > 0 {
        return Err(anyhow!(
            "{} of {} files could not be fetched; the last failure: {}",
            last.files_failed,
            last.files_total,
            last.error
        ));
    }
    Ok(())
}

async fn du(cli: &Cli, json: bool) -> anyhow::Result<()> {
    let mut client = client::connect(cli).await?;
    let reply = client
        .du(DuRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    if json {
        println!("{}", output::du_json(&reply));
    } else {
        print!("{}", output::du_text(&reply));
    }
    Ok(())
}

async fn refresh(cli: &Cli, target: &str, force: bool) -> anyhow::Result<()> {
    let mut client = client::connect(cli).await?;
    let reply = client
        .refresh(RefreshRequest {
            target: target.to_string(),
            force,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let mount = mount_of(reply.mount)?;
    if reply.previous_commit == mount.commit {
        println!(
            "{} is up to date at {}",
            mount.name,
            output::short(&mount.commit)
        );
    } else {
        println!(
            "{} moved from {} to {}",
            mount.name,
            output::short(&reply.previous_commit),
            output::short(&mount.commit)
        );
    }
    if !reply.conflicts.is_empty() {
        println!(
            "{} paths changed upstream under local changes (kept, marked U in `mega-fuse changes {}`):",
            reply.conflicts.len(),
            mount.name
        );
        for path in &reply.conflicts {
            println!("U {}", String::from_utf8_lossy(path));
        }
    }
    Ok(())
}

async fn cache(cli: &Cli, action: Option<CacheAction>, json: bool) -> anyhow::Result<()> {
    let action = match action {
        None => Action::Usage,
        Some(CacheAction::Gc) => Action::Gc,
        Some(CacheAction::Clear) => Action::Clear,
    };
    let mut client = client::connect(cli).await?;
    let reply = client
        .cache(CacheRequest {
            action: action as i32,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if json {
        println!("{}", output::cache_json(&reply));
    } else {
        print!("{}", output::cache_text(&reply));
    }
    Ok(())
}

/// Relative paths are the user's, so they are resolved here, not in the daemon.
fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    Ok(cwd.join(path))
}

async fn connect(
    cli: &Cli,
    repo: &str,
    git_ref: Option<&str>,
    name: Option<&str>,
    allow_other: bool,
    writable: bool,
) -> anyhow::Result<()> {
    let mountpoint = cli
        .mount_point
        .as_deref()
        .ok_or_else(|| anyhow!("connect needs --mount-point DIR"))?;
    let mountpoint = absolute(mountpoint)?;
    // A relative local repository path is ours to resolve: the daemon has another directory.
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let location = Location::parse_in(repo, cli.mega_url.as_deref(), Some(&cwd))?;
    // Where no daemon runs, connect starts a per-user one (the mount must outlive us).
    let mut client = client::connect_or_start(cli, true).await?;
    let reply = client
        .connect(ConnectRequest {
            repo: location.repo(),
            mega_url: location.mega_url().unwrap_or_default().to_string(),
            mountpoint: mountpoint.display().to_string(),
            git_ref: git_ref.unwrap_or_default().to_string(),
            name: name.unwrap_or_default().to_string(),
            allow_other,
            writable,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let mount = mount_of(reply.mount)?;
    println!(
        "mounted {} at {} ({} @ {})",
        mount.name,
        mount.mountpoint,
        mount.source,
        output::short(&mount.commit)
    );
    Ok(())
}

async fn disconnect(cli: &Cli, target: &str, force: bool, discard: bool) -> anyhow::Result<()> {
    // A relative path that exists here is a mountpoint: the daemon cannot resolve it.
    let relative = Path::new(target);
    let target = if !relative.is_absolute() && target.contains('/') && relative.exists() {
        absolute(relative)?.display().to_string()
    } else {
        target.to_string()
    };
    let target = target.as_str();
    let mut client = client::connect(cli).await?;
    let reply = client
        .disconnect(DisconnectRequest {
            target: target.to_string(),
            force,
            discard,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if let Some(mount) = reply.mount {
        println!("unmounted {} from {}", mount.name, mount.mountpoint);
    }
    if !reply.discarded.is_empty() {
        println!("discarded the workspace of {target}: {}", reply.discarded);
    }
    Ok(())
}

async fn changes(cli: &Cli, target: &str, json: bool) -> anyhow::Result<()> {
    let mut client = client::connect(cli).await?;
    let reply = client
        .changes(ChangesRequest {
            target: target.to_string(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if json {
        println!("{}", output::changes_json(&reply));
    } else {
        print!("{}", output::changes_text(&reply));
    }
    Ok(())
}

async fn diff(cli: &Cli, target: &str, paths: &[PathBuf]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::ffi::OsStrExt;
    let mut client = client::connect(cli).await?;
    let mut chunks = client
        .diff(DiffRequest {
            target: target.to_string(),
            paths: paths
                .iter()
                .map(|p| p.as_os_str().as_bytes().to_vec())
                .collect(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let mut stdout = std::io::stdout().lock();
    while let Some(chunk) = chunks.message().await.map_err(status_error)? {
        match stdout.write_all(&chunk.patch) {
            // A pager or `head` that stopped reading: done, as for git.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            other => other.context("writing the patch")?,
        }
    }
    stdout.flush().context("writing the patch")?;
    Ok(())
}

async fn reset(cli: &Cli, target: &str, paths: &[PathBuf], force: bool) -> anyhow::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let mut client = client::connect(cli).await?;
    let reply = client
        .reset(ResetRequest {
            target: target.to_string(),
            paths: paths
                .iter()
                .map(|p| p.as_os_str().as_bytes().to_vec())
                .collect(),
            force,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let what = if paths.is_empty() {
        "every change"
    } else {
        "the paths named"
    };
    println!(
        "reset {what} of {target}: {} entries removed from its workspace",
        reply.removed
    );
    Ok(())
}

async fn stats(cli: &Cli, target: Option<&str>, json: bool) -> anyhow::Result<()> {
    let mut client = client::connect(cli).await?;
    let reply = client
        .stats(StatsRequest {
            target: target.unwrap_or_default().to_string(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if json {
        println!("{}", output::stats_json(&reply));
    } else {
        print!("{}", output::stats_text(&reply));
    }
    Ok(())
}

async fn status(cli: &Cli, target: Option<&str>, json: bool) -> anyhow::Result<()> {
    let mut client = client::connect(cli).await?;
    let reply = client
        .status(StatusRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    match (target, json) {
        (None, true) => println!("{}", output::status_json(&reply)),
        (None, false) => print!("{}", output::status_table(&reply.mounts)),
        (Some(target), json) => {
            let mount = output::find_mount(&reply.mounts, target)?;
            if json {
                println!("{}", output::mount_json(mount));
            } else {
                print!("{}", output::mount_detail(mount));
            }
        }
    }
    Ok(())
}

/// The mount a reply describes; the daemon always sends one.
fn mount_of(
    mount: Option<megafs_proto::v1::MountInfo>,
) -> anyhow::Result<megafs_proto::v1::MountInfo> {
    mount.ok_or_else(|| anyhow!("the daemon sent an empty reply"))
}
