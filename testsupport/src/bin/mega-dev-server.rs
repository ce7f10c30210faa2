//! Runs the dev Mega server over git repositories on disk, for demos and benchmarks:
//!
//!     mega-dev-server --listen 127.0.0.1:8000 --repo /third-party/testrepo=/path/to/repo[@ref]

use std::net::SocketAddr;

use anyhow::{anyhow, Context};
use clap::Parser;
use megafs_testsupport::{DevServer, ServedRepo};

#[derive(Parser)]
#[command(about = "A Mega API server over git repositories on disk (for tests and demos)")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// MONOREPO_PATH=GIT_DIR[@REF], repeatable.
    #[arg(long = "repo", required = true)]
    repos: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut repos = Vec::new();
    for spec in &args.repos {
        let (mount, rest) = spec
            .split_once('=')
            .ok_or_else(|| anyhow!("--repo {spec:?}: expected MONOREPO_PATH=GIT_DIR[@REF]"))?;
        let (dir, reference) = rest.rsplit_once('@').unwrap_or((rest, "HEAD"));
        repos.push(
            ServedRepo::open(mount, std::path::Path::new(dir), reference)
                .with_context(|| format!("--repo {spec}"))?,
        );
    }
    let server = DevServer::start_on(args.listen, repos)?;
    println!("mega-dev-server listening on {}", server.url());
    server.wait();
    Ok(())
}
