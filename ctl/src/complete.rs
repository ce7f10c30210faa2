//! Shell completions, by clap_complete's engine: the script a shell sources only registers a
//! function that runs `mega-fuse` again (with `COMPLETE=<shell>` set) at each Tab, so that
//! subcommands and options come from the same definitions as parsing, and mount names from
//! the daemon that holds them.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap_complete::engine::CompletionCandidate;
use clap_complete::env::Shells;
use megafs_proto::v1::StatusRequest;
use megafs_proto::ControlClient;

/// The variable a shell's registered function sets when it asks for completions.
pub const VAR: &str = "COMPLETE";

/// The shells a script can be printed for.
pub fn shell_names() -> Vec<&'static str> {
    Shells::builtins().names().collect()
}

/// Writes the script that registers completions for `shell`. It calls `mega-fuse` by name,
/// from PATH, as an installed script must.
pub fn write_registration(shell: &str, out: &mut dyn Write) -> anyhow::Result<()> {
    let shells = Shells::builtins();
    let completer = shells.completer(shell).ok_or_else(|| {
        anyhow!(
            "no completions for {shell:?}: choose one of {}",
            shell_names().join(", ")
        )
    })?;
    completer
        .write_registration(VAR, "mega-fuse", "mega-fuse", "mega-fuse", out)
        .context("writing the completion script")
}

/// How long a Tab may wait on the daemon for mount names: a shell must not hang on it.
const NAMES_TIMEOUT: Duration = Duration::from_secs(1);

/// The names of the mounts the daemon shows the caller that start with `current`, each with
/// its repository as help. Nothing (rather than an error) where no daemon answers: a
/// completion has nowhere to say why.
pub fn mount_names(current: &OsStr) -> Vec<CompletionCandidate> {
    let Some(prefix) = current.to_str() else {
        return Vec::new();
    };
    let socket = socket_in_words(std::env::args_os())
        .unwrap_or_else(megafs_proto::socket::client_socket_path);
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return Vec::new();
    };
    let mounts = runtime.block_on(async {
        tokio::time::timeout(NAMES_TIMEOUT, mounts_at(socket))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default()
    });
    mounts
        .into_iter()
        .filter(|m| m.name.starts_with(prefix))
        .map(|m| CompletionCandidate::new(m.name).help(Some(m.source.into())))
        .collect()
}

async fn mounts_at(socket: PathBuf) -> anyhow::Result<Vec<megafs_proto::v1::MountInfo>> {
    let channel = megafs_proto::socket::connect(&socket).await?;
    let reply = ControlClient::new(channel).status(StatusRequest {}).await?;
    Ok(reply.into_inner().mounts)
}

/// The `--socket` given on the command line being completed, if any (`--socket P` or
/// `--socket=P`), so that Tab asks the daemon the command will talk to.
fn socket_in_words(words: impl IntoIterator<Item = OsString>) -> Option<PathBuf> {
    let mut words = words.into_iter();
    let mut found = None;
    while let Some(word) = words.next() {
        if word == "--socket" {
            found = words.next().map(PathBuf::from);
        } else if let Some(value) = word.to_str().and_then(|w| w.strip_prefix("--socket=")) {
            found = Some(PathBuf::from(value));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<OsString> {
        line.split(' ').map(OsString::from).collect()
    }

    #[test]
    fn the_socket_on_the_line_being_completed_is_the_one_asked() {
        let at = socket_in_words(words("mega-fuse -- mega-fuse --socket /tmp/s disconnect "));
        assert_eq!(at, Some(PathBuf::from("/tmp/s")));
        let at = socket_in_words(words("mega-fuse -- mega-fuse --socket=/tmp/t status"));
        assert_eq!(at, Some(PathBuf::from("/tmp/t")));
        assert_eq!(
            socket_in_words(words("mega-fuse -- mega-fuse disconnect x")),
            None
        );
        // The option with its value still being typed names nothing yet.
        assert_eq!(
            socket_in_words(words("mega-fuse -- mega-fuse --socket")),
            None
        );
    }

    #[test]
    fn every_shell_named_in_the_help_gets_a_script() {
        for shell in ["bash", "zsh", "fish"] {
            let mut script = Vec::new();
            write_registration(shell, &mut script).unwrap();
            let script = String::from_utf8(script).unwrap();
            assert!(script.contains("COMPLETE"), "{shell}: {script}");
            assert!(script.contains("mega-fuse"), "{shell}: {script}");
        }
        let err = write_registration("tcsh", &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("bash"), "{err}");
    }
}
