//! Which paths a prefetch wants: globs over repository-relative paths. `*` matches within one
//! component, `?` one byte, a `**` component any number of components; a pattern also takes
//! everything under a directory it matches, so `src` means all of `src`.

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    /// `**`: any number of components.
    Any,
    Glob(Vec<u8>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    parts: Vec<Part>,
}

/// A pattern that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("{0:?}: patterns stay inside the mount (no ..)")]
    GoesUp(String),
}

impl Pattern {
    /// The whole mount.
    pub fn everything() -> Pattern {
        Pattern { parts: Vec::new() }
    }

    /// Parses `text` ("", "/" and "." mean the whole mount). Refuses `..`.
    pub fn parse(text: &str) -> Result<Pattern, PatternError> {
        let mut parts = Vec::new();
        for component in text.split('/').filter(|c| !c.is_empty() && *c != ".") {
            if component == ".." {
                return Err(PatternError::GoesUp(text.to_string()));
            }
            parts.push(if component == "**" {
                Part::Any
            } else {
                Part::Glob(component.as_bytes().to_vec())
            });
        }
        Ok(Pattern { parts })
    }

    /// The leading components without wildcards: where a walk for this pattern starts.
    pub fn base(&self) -> Vec<Vec<u8>> {
        self.parts
            .iter()
            .map_while(|part| match part {
                Part::Glob(g) if !g.iter().any(|b| matches!(b, b'*' | b'?')) => Some(g.clone()),
                _ => None,
            })
            .collect()
    }

    /// Directory levels below its base that the pattern itself names, and that a walk for it
    /// takes whatever its depth limit: each wildcard component but the last (which names the
    /// files taken, or a directory whose files are). `**` names none.
    pub fn own_levels(&self) -> u32 {
        let globs = self.parts[self.base().len()..]
            .iter()
            .filter(|part| matches!(part, Part::Glob(_)))
            .count();
        globs.saturating_sub(1) as u32
    }

    /// Whether file `path` (components) is wanted: the pattern matches it or a directory
    /// above it.
    pub fn matches(&self, path: &[&[u8]]) -> bool {
        (0..=path.len()).any(|n| n > 0 && matches_parts(&self.parts, &path[..n]))
            || self.parts.is_empty()
    }
}

fn matches_parts(parts: &[Part], path: &[&[u8]]) -> bool {
    match parts.split_first() {
        None => path.is_empty(),
        Some((Part::Any, rest)) => (0..=path.len()).any(|skip| matches_parts(rest, &path[skip..])),
        Some((Part::Glob(glob), rest)) => match path.split_first() {
            Some((name, more)) => glob_matches(glob, name) && matches_parts(rest, more),
            None => false,
        },
    }
}

/// `*` and `?` within one component.
fn glob_matches(glob: &[u8], name: &[u8]) -> bool {
    match glob.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|skip| glob_matches(rest, &name[skip..])),
        Some((b'?', rest)) => !name.is_empty() && glob_matches(rest, &name[1..]),
        Some((c, rest)) => name.first() == Some(c) && glob_matches(rest, &name[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wants(pattern: &str, path: &str) -> bool {
        let parts: Vec<&[u8]> = path.split('/').map(str::as_bytes).collect();
        Pattern::parse(pattern).expect("pattern").matches(&parts)
    }

    #[test]
    fn matches_like_a_shell_with_double_stars() {
        assert!(wants("src", "src/a/b.rs"));
        assert!(wants("/src/", "src/main.rs"));
        assert!(!wants("src", "srcs/main.rs"));
        assert!(wants("src/*.rs", "src/main.rs"));
        assert!(!wants("src/*.rs", "src/nested/mid.rs"));
        assert!(wants("src/**/*.rs", "src/nested/deep/leaf.rs"));
        assert!(wants("src/**/*.rs", "src/main.rs"));
        assert!(wants("**/Cargo.toml", "a/b/Cargo.toml"));
        assert!(wants("f?.txt", "f3.txt"));
        assert!(!wants("f?.txt", "f10.txt"));
        assert!(wants("", "anything/at/all"));
        assert!(wants("*", "top"));
    }

    #[test]
    fn walks_start_below_the_literal_part() {
        let base = |p: &str| Pattern::parse(p).expect("pattern").base();
        assert_eq!(
            base("src/nested/*.txt"),
            [b"src".to_vec(), b"nested".to_vec()]
        );
        assert_eq!(base("**/x"), Vec::<Vec<u8>>::new());
        assert!(Pattern::parse("src/../etc").is_err());
    }

    #[test]
    fn a_patterns_own_levels_are_those_its_wildcards_name() {
        let own = |p: &str| Pattern::parse(p).expect("pattern").own_levels();
        assert_eq!(own("src"), 0);
        assert_eq!(own("src/*.rs"), 0);
        assert_eq!(own("crates/*/Cargo.toml"), 1);
        assert_eq!(own("a/*/b/*.c"), 2);
        assert_eq!(own("**/Cargo.toml"), 0);
        assert_eq!(own(""), 0);
    }
}
