//! Run-time mounts, recorded: a mount made with `connect` is written down in the daemon's
//! state directory (one small TOML file per name) and mounted again when the daemon starts,
//! after a crash, a restart or a reboot, as its owner with its options; `disconnect` forgets
//! it. Configured mounts need no record: the configuration is theirs. Secrets are never
//! written (a run-time mount has none: credentials come from the configuration).

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Caller, ConnectSpec};
use crate::location::Location;
use crate::mount_name::MountName;

/// What a run-time mount was asked for, and by whom.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Record {
    pub repo: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mega_url: Option<String>,
    pub mountpoint: PathBuf,
    #[serde(default)]
    pub git_ref: String,
    #[serde(default)]
    pub allow_other: bool,
    #[serde(default)]
    pub writable: bool,
    pub owner_uid: u32,
    pub owner_gid: u32,
}

impl Record {
    pub fn of(spec: &ConnectSpec, mountpoint: &Path, caller: Caller) -> Record {
        Record {
            repo: spec.location.repo(),
            mega_url: spec.location.mega_url().map(str::to_string),
            mountpoint: mountpoint.to_path_buf(),
            git_ref: spec.git_ref.clone(),
            allow_other: spec.allow_other,
            writable: spec.writable,
            owner_uid: caller.uid,
            owner_gid: caller.gid,
        }
    }

    /// The connect that makes the mount `name` again, and who asks for it.
    pub fn to_connect(&self, name: &MountName) -> Result<(ConnectSpec, Caller), String> {
        let location =
            Location::parse(&self.repo, self.mega_url.as_deref()).map_err(|e| e.to_string())?;
        let spec = ConnectSpec {
            location,
            mountpoint: self.mountpoint.clone(),
            git_ref: self.git_ref.clone(),
            name: name.to_string(),
            allow_other: self.allow_other,
            writable: self.writable,
            credentials: None,
            proxy: None,
        };
        let caller = Caller {
            uid: self.owner_uid,
            gid: self.owner_gid,
            pid: 0,
        };
        Ok((spec, caller))
    }
}

/// The directory of records.
#[derive(Clone, Debug)]
pub struct Records {
    dir: PathBuf,
}

impl Records {
    pub fn new(dir: PathBuf) -> Records {
        Records { dir }
    }

    fn file_of(&self, name: &MountName) -> PathBuf {
        self.dir.join(format!("{name}.toml"))
    }

    /// Writes the record of `name`, replacing any. Blocking.
    pub(super) fn save(&self, name: &MountName, record: &Record) -> io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let text = toml::to_string(record).map_err(io::Error::other)?;
        let file = self.file_of(name);
        let partial = file.with_extension("partial");
        std::fs::write(&partial, text)?;
        // Durable before it counts: a crash right after a connect must find it.
        std::fs::File::open(&partial)?.sync_all()?;
        std::fs::rename(&partial, &file)
    }

    /// Forgets `name`; nothing to forget is no error. Blocking.
    pub(super) fn forget(&self, name: &MountName) -> io::Result<()> {
        match std::fs::remove_file(self.file_of(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every record, by name, each read or the reason it cannot be. Blocking.
    pub(super) fn all(&self) -> io::Result<Vec<(MountName, Result<Record, String>)>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            other => other?,
        };
        let mut found = Vec::new();
        for entry in entries {
            let path = entry?.path();
            let Some(stem) = path
                .extension()
                .filter(|e| *e == "toml")
                .and(path.file_stem())
                .and_then(|s| s.to_str())
            else {
                continue;
            };
            let Ok(name) = MountName::parse(stem) else {
                continue;
            };
            let record = std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|text| toml::from_str(&text).map_err(|e| e.to_string()));
            found.push((name, record));
        }
        found.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_kept_read_back_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::new(dir.path().join("mounts"));
        assert!(records.all().unwrap().is_empty(), "no directory yet");
        let name = MountName::parse("app").unwrap();
        let record = Record {
            repo: "/project/app".into(),
            mega_url: Some("http://127.0.0.1:8000".into()),
            mountpoint: "/home/a/app".into(),
            git_ref: String::new(),
            allow_other: false,
            writable: true,
            owner_uid: 1000,
            owner_gid: 1000,
        };
        records.save(&name, &record).unwrap();
        std::fs::write(dir.path().join("mounts/broken.toml"), "repo = ").unwrap();
        std::fs::write(dir.path().join("mounts/notes.txt"), "not a record").unwrap();
        let all = records.all().unwrap();
        assert_eq!(all.len(), 2, "{all:?}");
        assert_eq!(all[0].0.as_str(), "app");
        assert_eq!(all[0].1.as_ref().unwrap(), &record);
        assert!(all[1].1.is_err(), "a broken record is named, not skipped");
        let (spec, caller) = record.to_connect(&name).unwrap();
        assert_eq!(
            (spec.name.as_str(), caller.uid, spec.writable),
            ("app", 1000, true)
        );
        assert_eq!(spec.location.mega_url(), Some("http://127.0.0.1:8000"));
        records.forget(&name).unwrap();
        records.forget(&name).unwrap();
        assert_eq!(records.all().unwrap().len(), 1);
    }
}
