//! A Mega monorepo made of git repositories on disk: each repository appears at its own path
//! (`/third-party/testrepo`), and the directories above them are trees made up on the fly.
//! The trunk is each repository's ref as it is on disk now, so committing to one moves it.
//!
//! A repository served under `/third-party/` is an imported one, and the trunk lists it the
//! way a real server does: as a placeholder tree (holding only `.gitkeep`) whose id is not the
//! repository's, while its path serves the repository's real root tree. A repository served
//! anywhere else is part of the trunk itself: its trees chain up to the monorepo's root.

use std::collections::{BTreeSet, HashMap};
use std::ops::Deref;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context};
use sha1::{Digest, Sha1};

/// A git repository served at a path of the monorepo.
pub struct ServedRepo {
    /// Absolute monorepo path, e.g. `/third-party/testrepo`.
    pub mount: String,
    repo: gix::ThreadSafeRepository,
    /// Handles kept between requests: a handle's delta-base cache is what makes reading many
    /// blobs of one pack cheap, and a handle opened per request started with it empty.
    idle: Mutex<Vec<gix::Repository>>,
    /// Tree bodies by id, read once: a path is looked up from the root for every request, and
    /// a tree never changes under its id. Emptied when full.
    trees: Mutex<HashMap<gix::ObjectId, Arc<[u8]>>>,
    /// What the trunk follows in this repository (`HEAD`, a branch, a commit).
    pub reference: String,
}

/// A repository handle lent by a [`ServedRepo`], given back when dropped.
struct Handle<'a> {
    served: &'a ServedRepo,
    repo: Option<gix::Repository>,
}

impl Deref for Handle<'_> {
    type Target = gix::Repository;
    fn deref(&self) -> &gix::Repository {
        self.repo
            .as_ref()
            .expect("a handle holds its repository until dropped")
    }
}

impl Drop for Handle<'_> {
    fn drop(&mut self) {
        if let (Some(repo), Ok(mut idle)) = (self.repo.take(), self.served.idle.lock()) {
            idle.push(repo);
        }
    }
}

impl ServedRepo {
    pub fn open(mount: &str, path: &std::path::Path, reference: &str) -> anyhow::Result<Self> {
        let repo = gix::open(path).with_context(|| format!("opening {}", path.display()))?;
        Ok(ServedRepo {
            mount: normalize(mount).ok_or_else(|| anyhow!("bad mount path {mount:?}"))?,
            repo: repo.into_sync(),
            idle: Mutex::new(Vec::new()),
            trees: Mutex::new(HashMap::new()),
            reference: reference.to_string(),
        })
    }

    fn handle(&self) -> Handle<'_> {
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        // No object cache: nearly every blob is asked for once, and filling one cost more
        // than it saved (measured); the delta-base cache is what pays.
        let repo = idle.unwrap_or_else(|| self.repo.to_thread_local());
        Handle {
            served: self,
            repo: Some(repo),
        }
    }

    /// Tree `oid`'s body, from the trees read before or from the repository.
    fn tree_body(&self, repo: &gix::Repository, oid: gix::ObjectId) -> anyhow::Result<Arc<[u8]>> {
        if let Some(body) = self.trees.lock().ok().and_then(|t| t.get(&oid).cloned()) {
            return Ok(body);
        }
        let body: Arc<[u8]> = Arc::from(repo.find_object(oid)?.try_into_tree()?.detach().data);
        if let Ok(mut trees) = self.trees.lock() {
            if trees.len() >= MAX_TREES_KEPT {
                trees.clear();
            }
            trees.insert(oid, Arc::clone(&body));
        }
        Ok(body)
    }

    /// The body of the tree at `rel` below the root tree `root`; `None` where `rel` is not a
    /// directory.
    fn tree_at(
        &self,
        repo: &gix::Repository,
        root: gix::ObjectId,
        rel: &[&str],
    ) -> anyhow::Result<Option<Arc<[u8]>>> {
        let mut body = self.tree_body(repo, root)?;
        for name in rel {
            let tree = gix::objs::TreeRef::from_bytes(&body, gix::hash::Kind::Sha1)?;
            let entry = tree.entries.iter().find(|e| e.filename == name.as_bytes());
            let Some(entry) = entry.filter(|e| e.mode.is_tree()) else {
                return Ok(None);
            };
            let next = entry.oid.to_owned();
            body = self.tree_body(repo, next)?;
        }
        Ok(Some(body))
    }

    fn head(&self) -> anyhow::Result<(Handle<'_>, gix::ObjectId)> {
        let repo = self.handle();
        let id = repo
            .rev_parse_single(self.reference.as_str())?
            .object()?
            .peel_to_commit()?
            .id;
        Ok((repo, id))
    }
}

/// Splits an absolute path into components; `None` for `..` (the real server finds nothing).
pub fn components(path: &str) -> Option<Vec<&str>> {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    (!parts.contains(&"..")).then_some(parts)
}

fn normalize(path: &str) -> Option<String> {
    Some(format!("/{}", components(path)?.join("/")))
}

const MEGA_ACCOUNT: &str = "admin";

/// Tree bodies a served repository keeps (see `ServedRepo::trees`).
const MAX_TREES_KEPT: usize = 1 << 16;

pub struct LastCommit {
    pub oid: String,
    pub date: i64,
    pub short_message: String,
    pub author: String,
    pub committer: String,
}

pub struct Monorepo {
    pub repos: Vec<ServedRepo>,
}

/// Where a monorepo path falls.
enum Place<'a> {
    /// Inside served repository `repo`, at `rel` (empty for its root).
    InRepo(&'a ServedRepo, Vec<&'a str>),
    /// A directory above one or more repositories.
    Above(Vec<&'a str>),
    Nowhere,
}

impl Monorepo {
    fn place<'a>(&'a self, parts: &[&'a str]) -> Place<'a> {
        for served in &self.repos {
            let mount: Vec<&str> = components(&served.mount).unwrap_or_default();
            if parts.len() >= mount.len() && parts[..mount.len()] == mount[..] {
                return Place::InRepo(served, parts[mount.len()..].to_vec());
            }
        }
        let is_above = self.repos.iter().any(|served| {
            let mount = components(&served.mount).unwrap_or_default();
            mount.len() > parts.len() && mount[..parts.len()] == parts[..]
        });
        if is_above {
            Place::Above(parts.to_vec())
        } else {
            Place::Nowhere
        }
    }

    /// The raw tree body of the directory at `path`, or `None` where there is no directory.
    pub fn tree(&self, path: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let Some(parts) = components(path) else {
            return Ok(None);
        };
        match self.place(&parts) {
            Place::InRepo(served, rel) => {
                let (repo, head) = served.head()?;
                let root = repo
                    .find_object(head)?
                    .peel_to_commit()?
                    .tree_id()?
                    .detach();
                let body = served.tree_at(&repo, root, &rel)?;
                Ok(body.map(|b| b.to_vec()))
            }
            Place::Above(parts) => self.synthetic_tree(&parts).map(Some),
            Place::Nowhere => Ok(None),
        }
    }

    /// The tree of a directory above repositories: one `40000` entry per child directory.
    fn synthetic_tree(&self, parts: &[&str]) -> anyhow::Result<Vec<u8>> {
        let children: BTreeSet<String> = self
            .repos
            .iter()
            .filter_map(|served| {
                let mount = components(&served.mount)?;
                (mount.len() > parts.len() && mount[..parts.len()] == parts[..])
                    .then(|| mount[parts.len()].to_string())
            })
            .collect();
        // Git orders directory entries as if their names ended in '/'.
        let mut sorted: Vec<String> = children.into_iter().collect();
        sorted.sort_by(|a, b| format!("{a}/").cmp(&format!("{b}/")));
        let mut body = Vec::new();
        for name in sorted {
            let mut child = parts.to_vec();
            child.push(&name);
            let child_path = format!("/{}", child.join("/"));
            body.extend_from_slice(format!("40000 {name}\0").as_bytes());
            if is_imported(&child_path) && self.repos.iter().any(|s| s.mount == child_path) {
                body.extend_from_slice(&placeholder_id(&child_path));
                continue;
            }
            let child_body = self
                .tree(&child_path)?
                .ok_or_else(|| anyhow!("child {name} vanished"))?;
            body.extend_from_slice(&tree_id(&child_body));
        }
        Ok(body)
    }

    /// A blob's bytes by id, from whichever repository has it; `None` if none has a blob by
    /// that id.
    pub fn blob(&self, oid: &gix::ObjectId) -> Option<Vec<u8>> {
        self.repos.iter().find_map(|served| {
            let repo = served.handle();
            let object = repo.find_object(*oid).ok()?;
            (object.kind == gix::object::Kind::Blob).then(|| object.detach().data)
        })
    }

    pub fn blob_size(&self, oid: &gix::ObjectId) -> Option<u64> {
        self.repos.iter().find_map(|served| {
            let repo = served.handle();
            let header = repo.find_header(*oid).ok()?;
            (header.kind() == gix::object::Kind::Blob).then(|| header.size())
        })
    }

    /// Directory entries as `/tree/content-hash` lists them: (name, is_dir, oid).
    pub fn content_hash(&self, path: &str) -> anyhow::Result<Vec<(String, bool, String)>> {
        let Some(body) = self.tree(path)? else {
            return Ok(Vec::new());
        };
        let tree = gix::objs::TreeRef::from_bytes(&body, gix::hash::Kind::Sha1)?;
        let mut entries: Vec<(String, bool, String)> = tree
            .entries
            .iter()
            .map(|e| {
                (
                    e.filename.to_string(),
                    e.mode.is_tree(),
                    e.oid.to_hex().to_string(),
                )
            })
            .collect();
        entries.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Ok(entries)
    }

    /// The newest commit that changed `path`, following first parents from the trunk, or from
    /// `refs` where given (the real server honours it for files only, and fails for
    /// directories).
    pub fn latest_commit(
        &self,
        path: &str,
        refs: Option<&str>,
    ) -> anyhow::Result<Option<LastCommit>> {
        let Some(parts) = components(path) else {
            return Ok(None);
        };
        let (served, rel) = match self.place(&parts) {
            Place::InRepo(served, rel) => (served, rel),
            Place::Above(parts) => return self.trunk_commit(&parts),
            Place::Nowhere => return Ok(None),
        };
        commit_info(served, &rel, refs)
    }
}

impl Monorepo {
    /// The trunk's commit above repositories: made up from the heads below, so that it
    /// moves whenever one of them does (a real trunk gets a commit for every change), and
    /// dated as the newest of them.
    fn trunk_commit(&self, parts: &[&str]) -> anyhow::Result<Option<LastCommit>> {
        let mut hasher = Sha1::new();
        let mut newest: Option<LastCommit> = None;
        for served in &self.repos {
            let mount = components(&served.mount).unwrap_or_default();
            if mount.len() <= parts.len() || mount[..parts.len()] != parts[..] {
                continue;
            }
            let Some(head) = commit_info(served, &[], None)? else {
                continue;
            };
            hasher.update(served.mount.as_bytes());
            hasher.update(head.oid.as_bytes());
            if newest.as_ref().is_none_or(|n| head.date > n.date) {
                newest = Some(head);
            }
        }
        Ok(newest.map(|head| LastCommit {
            oid: hex::encode(hasher.finalize()),
            short_message: "the trunk".to_string(),
            author: MEGA_ACCOUNT.to_string(),
            committer: MEGA_ACCOUNT.to_string(),
            ..head
        }))
    }
}

fn commit_info(
    served: &ServedRepo,
    rel: &[&str],
    refs: Option<&str>,
) -> anyhow::Result<Option<LastCommit>> {
    let (repo, mut head) = served.head()?;
    if let Some(refs) = refs.filter(|r| !r.is_empty()) {
        head = repo.rev_parse_single(refs)?.object()?.peel_to_commit()?.id;
    }
    let rel_path = rel.join("/");
    let entry_at = |commit: &gix::Commit<'_>| -> anyhow::Result<Option<gix::ObjectId>> {
        let tree = commit.tree()?;
        if rel_path.is_empty() {
            return Ok(Some(tree.id));
        }
        Ok(tree.lookup_entry_by_path(&rel_path)?.map(|e| e.object_id()))
    };
    let mut commit = repo.find_object(head)?.peel_to_commit()?;
    let Some(mut current) = entry_at(&commit)? else {
        return Ok(None);
    };
    let is_dir = repo.find_header(current)?.kind() == gix::object::Kind::Tree;
    if is_dir && refs.is_some_and(|r| !r.is_empty()) {
        anyhow::bail!("refs given for a directory");
    }
    if !rel_path.is_empty() {
        loop {
            let Some(parent_id) = commit.parent_ids().next() else {
                break;
            };
            let parent = repo.find_object(parent_id)?.peel_to_commit()?;
            if entry_at(&parent)? != Some(current) {
                break;
            }
            current = entry_at(&parent)?.unwrap_or(current);
            commit = parent;
        }
    }
    let decoded = commit.decode()?;
    let message = decoded.message.to_string();
    let author = decoded.author()?.name.to_string();
    Ok(Some(LastCommit {
        oid: commit.id.to_hex().to_string(),
        date: decoded.committer()?.seconds(),
        short_message: message.lines().next().unwrap_or_default().to_string(),
        // Seen on the real server: a directory's last commit names the Mega account that
        // pushed it, a file's names the git author.
        author: if is_dir {
            MEGA_ACCOUNT.to_string()
        } else {
            author.clone()
        },
        committer: if is_dir {
            MEGA_ACCOUNT.to_string()
        } else {
            author
        },
    }))
}

/// Whether a repository served at `mount` is an imported one (the real server keeps imports
/// under `/third-party/`).
pub fn is_imported(mount: &str) -> bool {
    mount.starts_with("/third-party/")
}

/// The id the trunk lists for the imported repository at `mount`: a tree holding only a
/// `.gitkeep`. The real server's placeholder differs per repository and is never served by
/// id; what its `.gitkeep` holds is not known, so this one's is made up from the path.
pub fn placeholder_id(mount: &str) -> [u8; 20] {
    let keep = format!("imported repository {mount}\n");
    let mut hasher = Sha1::new();
    hasher.update(format!("blob {}\0", keep.len()).as_bytes());
    hasher.update(keep.as_bytes());
    let keep_id: [u8; 20] = hasher.finalize().into();
    let mut body = b"100644 .gitkeep\0".to_vec();
    body.extend_from_slice(&keep_id);
    tree_id(&body)
}

/// The id git gives a tree with this body.
pub fn tree_id(body: &[u8]) -> [u8; 20] {
    let mut hasher = Sha1::new();
    hasher.update(format!("tree {}\0", body.len()).as_bytes());
    hasher.update(body);
    hasher.finalize().into()
}
