//! What a mount is called: the handle `mega-fuse` commands take, the mount's source name in
//! the kernel's mount table (`megafs:NAME`), and a field of every log line about it.

use std::fmt;

use crate::location::Location;

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MountName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad mount name {name:?}: {reason}")]
pub struct NameError {
    pub name: String,
    pub reason: &'static str,
}

impl MountName {
    /// A name as given. It must fit a mount table and mount options (fusermount's, an
    /// overlay's): not empty, at most 255 bytes, no `/`, comma, colon, whitespace or control
    /// character, not `.` or `..`.
    pub fn parse(text: &str) -> Result<MountName, NameError> {
        let refuse = |reason| {
            Err(NameError {
                name: text.to_string(),
                reason,
            })
        };
        if text.is_empty() {
            return refuse("it is empty");
        }
        if text.len() > 255 {
            return refuse("it is longer than 255 bytes");
        }
        if text == "." || text == ".." {
            return refuse("it names a directory");
        }
        if text
            .chars()
            .any(|c| matches!(c, '/' | ',' | ':') || c.is_whitespace() || c.is_control())
        {
            return refuse("it holds a slash, comma, colon, space or control character");
        }
        Ok(MountName(text.to_string()))
    }

    /// `given` if not empty, else the default name of `location`'s repository.
    pub fn given_or_default(given: &str, location: &Location) -> Result<MountName, NameError> {
        if given.is_empty() {
            MountName::parse(&location.default_name())
        } else {
            MountName::parse(given)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MountName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for MountName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl PartialEq<str> for MountName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for MountName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_a_mount_table() {
        assert_eq!(
            MountName::parse("ripgrep-14").expect("plain").as_str(),
            "ripgrep-14"
        );
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a,b",
            "a:b",
            "a b",
            "tab\t",
            &"x".repeat(256),
        ] {
            assert!(MountName::parse(bad).is_err(), "{bad:?}");
        }
        let location = Location::parse("/srv/git/tool.git", None).expect("local");
        assert_eq!(
            MountName::given_or_default("", &location).expect("default"),
            "tool"
        );
        assert_eq!(
            MountName::given_or_default("mine", &location).expect("given"),
            "mine"
        );
        let root = Location::parse("/", Some("http://h")).expect("mega root");
        let err = MountName::given_or_default("", &root).expect_err("no default");
        assert!(err.to_string().contains("bad mount name \"\""), "{err}");
    }
}
