//! Serves the git repositories under a directory over smart HTTP (git's own `git
//! http-backend`, protocol v2, partial-clone filters allowed), for demos and benchmarks:
//!
//!     git-http-server --listen 127.0.0.1:8001 --root /srv/git [--object-info]

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use megafs_testsupport::git_server::GitServer;

#[derive(Parser)]
#[command(about = "A smart-HTTP git server over the repositories under a directory")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8001")]
    listen: SocketAddr,
    /// `<url>/<name>` serves the repository `<root>/<name>`.
    #[arg(long)]
    root: PathBuf,
    /// Advertise the object-info command (git's default is not to).
    #[arg(long)]
    object_info: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = GitServer::start_on(args.listen, &args.root, args.object_info)?;
    println!("git-http-server listening on {}", server.url(""));
    server.wait();
    Ok(())
}
