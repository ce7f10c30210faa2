//! Paths inside a repository: bytes, as git keeps them (a name may be any bytes but `/` and
//! NUL), `/`-separated, without a leading slash; the root is empty. Shown with a leading
//! slash, and lossily where a name is not UTF-8 (for people only, never to find a file).

use std::fmt;

#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoPath(Vec<u8>);

impl RepoPath {
    pub fn root() -> RepoPath {
        RepoPath(Vec::new())
    }

    /// From components, root first.
    pub fn from_components<'a>(names: impl IntoIterator<Item = &'a [u8]>) -> RepoPath {
        let mut path = RepoPath::root();
        for name in names {
            path.push(name);
        }
        path
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// This path with `name` appended.
    pub fn join(&self, name: &[u8]) -> RepoPath {
        let mut path = self.clone();
        path.push(name);
        path
    }

    pub fn push(&mut self, name: &[u8]) {
        if !self.0.is_empty() {
            self.0.push(b'/');
        }
        self.0.extend_from_slice(name);
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The path as text, if it is UTF-8.
    pub fn to_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// Whether this path is `dir` or under it, by whole names (`srcs` is not under `src`).
    pub fn is_within(&self, dir: &RepoPath) -> bool {
        let mut names = self.components();
        dir.components().all(|d| names.next() == Some(d))
    }

    pub fn components(&self) -> impl Iterator<Item = &[u8]> {
        self.0.split(|&b| b == b'/').filter(|c| !c.is_empty())
    }
}

impl fmt::Display for RepoPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Debug for RepoPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RepoPath({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_and_shows_bytes() {
        let root = RepoPath::root();
        assert!(root.is_root());
        assert_eq!(root.to_string(), "/");
        let path = root.join(b"src").join(b"caf\xe9.rs");
        assert_eq!(path.as_bytes(), b"src/caf\xe9.rs");
        assert_eq!(path.to_str(), None, "not UTF-8");
        assert_eq!(path.to_string(), "/src/caf\u{fffd}.rs");
        let parts: Vec<&[u8]> = path.components().collect();
        assert_eq!(parts, [&b"src"[..], &b"caf\xe9.rs"[..]]);
        assert_eq!(RepoPath::from_components(parts), path);
    }
}
