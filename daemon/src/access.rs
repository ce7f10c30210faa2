//! Who may do what over the control socket. Callers are known by the socket's peer
//! credentials (SO_PEERCRED); one that cannot be identified is refused before this.
//!
//! Root, and the user a per-user daemon runs as, may do everything. Any other user may mount
//! a server's repository (not a local one: the daemon would read it with its own rights) onto
//! a directory that user owns and may write, reached without symlinks, outside the system's
//! directories and, if the configuration lists allowed roots, inside one of them; and may see,
//! refresh, prefetch and disconnect only their own mounts. Each refusal names its rule, so a
//! user (or the log) can tell which one to take up with an administrator.

use std::path::{Component, Path, PathBuf};

use crate::location::Location;

/// Who asked, from the socket's peer credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    /// The asking process (0 when the daemon acts on its own, for configured mounts).
    pub pid: i32,
}

/// A request a rule refused: the rule's name, and why it applies.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("refused by rule {rule}: {reason}")]
pub struct Refusal {
    pub rule: &'static str,
    pub reason: String,
}

fn refuse(rule: &'static str, reason: impl Into<String>) -> Refusal {
    Refusal {
        rule,
        reason: reason.into(),
    }
}

/// What the configuration says about other users' requests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Where other users may mount; empty: anywhere outside the system's directories.
    pub allowed_roots: Vec<PathBuf>,
    /// Whether other users may let everyone into their mounts (`--allow-other`).
    pub user_allow_other: bool,
}

/// The system's directories: nobody but root mounts in or under them.
const SYSTEM_DIRS: &[&str] = &[
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/opt", "/proc",
    "/root", "/run", "/sbin", "/snap", "/srv", "/sys", "/usr", "/var",
];

/// Places inside the system's directories that belong to users.
const USER_AREAS: &[&str] = &["/run/user", "/var/tmp"];

/// The rules, for one daemon.
#[derive(Clone, Debug)]
pub struct Access {
    policy: Policy,
    daemon_uid: u32,
}

impl Access {
    pub fn new(policy: Policy, daemon_uid: u32) -> Self {
        Access { policy, daemon_uid }
    }

    /// Root, or the user the daemon runs as: every rule below lets them through.
    pub fn is_admin(&self, caller: &Caller) -> bool {
        caller.uid == 0 || caller.uid == self.daemon_uid
    }

    /// May `caller` see the details of, refresh, prefetch or disconnect mount `name` of `owner`?
    pub fn may_manage(&self, caller: &Caller, name: &str, owner: u32) -> Result<(), Refusal> {
        if self.is_admin(caller) || caller.uid == owner {
            return Ok(());
        }
        Err(refuse(
            "own-mounts",
            format!("mount {name} is not yours (it belongs to uid {owner})"),
        ))
    }

    /// Collecting or clearing the shared cache affects every user's mounts.
    pub fn may_change_cache(&self, caller: &Caller) -> Result<(), Refusal> {
        if self.is_admin(caller) {
            return Ok(());
        }
        Err(refuse(
            "cache-admin",
            "only root may collect or clear the shared cache",
        ))
    }

    pub fn may_allow_other(&self, caller: &Caller) -> Result<(), Refusal> {
        if self.is_admin(caller) || self.policy.user_allow_other {
            return Ok(());
        }
        Err(refuse(
            "allow-other",
            "letting other users into a mount needs user_allow_other = true in the daemon's \
             configuration",
        ))
    }

    /// A local repository would be read with the daemon's rights, not the caller's.
    pub fn may_mount_repo(&self, caller: &Caller, location: &Location) -> Result<(), Refusal> {
        if location.is_remote() || self.is_admin(caller) {
            return Ok(());
        }
        Err(refuse(
            "local-repository",
            format!(
                "only root mounts local repositories with the system daemon; mount {} with \
                 a daemon of your own (run mega-fuse with MEGAFS_SOCKET set to a socket of yours)",
                location.repo()
            ),
        ))
    }

    /// The rules on a mountpoint's path, before anything is opened: returns it normalized.
    /// Symlinks are refused as the path is opened (`no-symlinks`), ownership once it is open.
    /// Root's paths are taken as given (symlinks and `..` followed).
    pub fn check_mountpoint_path(&self, caller: &Caller, path: &Path) -> Result<PathBuf, Refusal> {
        if self.is_admin(caller) {
            return Ok(path.to_path_buf());
        }
        let normal = normalized(path)?;
        if let Some(system) = system_dir_of(&normal) {
            return Err(refuse(
                "system-directory",
                format!("{} is in {system}, a system directory", normal.display()),
            ));
        }
        let roots = &self.policy.allowed_roots;
        if !roots.is_empty() && !roots.iter().any(|root| normal.starts_with(root)) {
            let list: Vec<_> = roots.iter().map(|r| r.display().to_string()).collect();
            return Err(refuse(
                "allowed-roots",
                format!(
                    "{} is outside the allowed roots ({})",
                    normal.display(),
                    list.join(", ")
                ),
            ));
        }
        Ok(normal)
    }

    /// The rule on an opened mountpoint: the caller's own directory, writable by them.
    pub fn check_mountpoint_owner(
        &self,
        caller: &Caller,
        path: &Path,
        owner: u32,
        mode: u32,
    ) -> Result<(), Refusal> {
        if self.is_admin(caller) {
            return Ok(());
        }
        if owner != caller.uid {
            return Err(refuse(
                "own-directory",
                format!(
                    "{} belongs to uid {owner}, not to you (uid {})",
                    path.display(),
                    caller.uid
                ),
            ));
        }
        if mode & 0o200 == 0 {
            return Err(refuse(
                "own-directory",
                format!("{} is yours but you may not write it", path.display()),
            ));
        }
        Ok(())
    }
}

/// `path` as plain components: absolute, and without `..` (which would name a place other
/// than the one the checks saw once symlinks are involved).
fn normalized(path: &Path) -> Result<PathBuf, Refusal> {
    if !path.is_absolute() {
        return Err(refuse(
            "plain-path",
            format!("{} is not an absolute path", path.display()),
        ));
    }
    let mut normal = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(part) => normal.push(part),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(refuse(
                    "plain-path",
                    format!("{} goes up with ..", path.display()),
                ))
            }
        }
    }
    Ok(normal)
}

/// The system directory `path` is, or is under, unless in a user area; `/` itself counts.
fn system_dir_of(path: &Path) -> Option<&'static str> {
    if path == Path::new("/") {
        return Some("/");
    }
    if USER_AREAS
        .iter()
        .any(|area| path.starts_with(area) && path != Path::new(area))
    {
        return None;
    }
    SYSTEM_DIRS
        .iter()
        .copied()
        .find(|dir| path.starts_with(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: Caller = Caller {
        uid: 1001,
        gid: 1001,
        pid: 7,
    };
    const ROOT: Caller = Caller {
        uid: 0,
        gid: 0,
        pid: 1,
    };

    fn access(roots: &[&str]) -> Access {
        Access::new(
            Policy {
                allowed_roots: roots.iter().map(PathBuf::from).collect(),
                user_allow_other: false,
            },
            0,
        )
    }

    fn rule_of(result: Result<PathBuf, Refusal>) -> &'static str {
        result.expect_err("refused").rule
    }

    #[test]
    fn users_mount_outside_the_system_directories() {
        let a = access(&[]);
        let ok = |p: &str| a.check_mountpoint_path(&ALICE, Path::new(p)).expect(p);
        assert_eq!(ok("/home/alice/mnt"), PathBuf::from("/home/alice/mnt"));
        assert_eq!(ok("/home//alice/./mnt/"), PathBuf::from("/home/alice/mnt"));
        ok("/tmp/x");
        ok("/run/user/1001/mnt");
        ok("/var/tmp/mnt");
        ok("/mnt/alice");
        for p in [
            "/",
            "/etc",
            "/etc/x",
            "/usr/local/src",
            "/var/lib/x",
            "/run/megafs",
            "/root/x",
        ] {
            let refusal = a.check_mountpoint_path(&ALICE, Path::new(p)).expect_err(p);
            assert_eq!(refusal.rule, "system-directory", "{p}");
            assert!(refusal
                .to_string()
                .contains("refused by rule system-directory"));
        }
        // The user areas themselves are the system's.
        assert_eq!(
            rule_of(a.check_mountpoint_path(&ALICE, Path::new("/run/user"))),
            "system-directory"
        );
        assert_eq!(
            rule_of(a.check_mountpoint_path(&ALICE, Path::new("/home/alice/../bob"))),
            "plain-path"
        );
        assert_eq!(
            rule_of(a.check_mountpoint_path(&ALICE, Path::new("mnt"))),
            "plain-path"
        );
        // Root may mount anywhere, by any path.
        assert_eq!(
            a.check_mountpoint_path(&ROOT, Path::new("/etc/x")),
            Ok(PathBuf::from("/etc/x"))
        );
        assert!(a
            .check_mountpoint_path(&ROOT, Path::new("/srv/a/../b"))
            .is_ok());
    }

    #[test]
    fn allowed_roots_narrow_where_users_mount() {
        let a = access(&["/home", "/mnt/megafs"]);
        assert!(a
            .check_mountpoint_path(&ALICE, Path::new("/home/alice/m"))
            .is_ok());
        assert!(a
            .check_mountpoint_path(&ALICE, Path::new("/mnt/megafs/alice"))
            .is_ok());
        let refusal = a
            .check_mountpoint_path(&ALICE, Path::new("/mnt/megafs-other"))
            .expect_err("outside");
        assert_eq!(refusal.rule, "allowed-roots");
        assert!(refusal.reason.contains("/home, /mnt/megafs"), "{refusal}");
        assert_eq!(
            rule_of(a.check_mountpoint_path(&ALICE, Path::new("/tmp/m"))),
            "allowed-roots"
        );
    }

    #[test]
    fn users_manage_only_their_own() {
        let a = access(&[]);
        assert!(a
            .check_mountpoint_owner(&ALICE, Path::new("/m"), 1001, 0o755)
            .is_ok());
        let other = a.check_mountpoint_owner(&ALICE, Path::new("/m"), 1002, 0o777);
        assert_eq!(other.expect_err("other's").rule, "own-directory");
        let read_only = a.check_mountpoint_owner(&ALICE, Path::new("/m"), 1001, 0o555);
        assert_eq!(read_only.expect_err("read-only").rule, "own-directory");
        assert!(a.may_manage(&ALICE, "m", 1001).is_ok());
        assert_eq!(
            a.may_manage(&ALICE, "m", 0).expect_err("root's").rule,
            "own-mounts"
        );
        assert!(a.may_manage(&ROOT, "m", 1001).is_ok());
        assert_eq!(
            a.may_change_cache(&ALICE).expect_err("cache").rule,
            "cache-admin"
        );
        assert_eq!(
            a.may_allow_other(&ALICE).expect_err("others").rule,
            "allow-other"
        );
        let at = |repo: &str, mega: Option<&str>| Location::parse(repo, mega).expect(repo);
        assert!(a
            .may_mount_repo(&ALICE, &at("/third-party/rg", Some("http://mega")))
            .is_ok());
        assert!(a
            .may_mount_repo(&ALICE, &at("https://host/r.git", None))
            .is_ok());
        let local = a.may_mount_repo(&ALICE, &at("/home/alice/repo", None));
        assert_eq!(local.expect_err("local").rule, "local-repository");
        assert!(a.may_mount_repo(&ROOT, &at("/srv/repo", None)).is_ok());
        // A per-user daemon's user is its administrator.
        let own = Access::new(Policy::default(), 1001);
        assert!(own
            .may_mount_repo(&ALICE, &at("/home/alice/repo", None))
            .is_ok());
        let permissive = Access::new(
            Policy {
                allowed_roots: Vec::new(),
                user_allow_other: true,
            },
            0,
        );
        assert!(permissive.may_allow_other(&ALICE).is_ok());
    }
}
