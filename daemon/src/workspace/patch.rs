//! A change of one path written as git writes it in `git diff --binary --full-index`, so
//! that `git apply` takes it on a checkout of the commit: a text file as unified hunks with
//! three lines of context, a binary one (a NUL in its first 8000 bytes, git's rule) as a
//! `GIT binary patch` of zlib-deflated, base85-encoded literals, a symlink as its target
//! without a newline. Pure: bytes in, bytes out.

use std::io::Write;
use std::time::{Duration, Instant};

use gix::zlib::stream::deflate;
use gix::zlib::Compression;
use similar::{Algorithm, DiffOp, DiffTag};

use crate::object::{ObjectId, ObjectKind};

/// One side of a path: what the commit or the workspace holds there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Version {
    File { bytes: Vec<u8>, executable: bool },
    Symlink { target: Vec<u8> },
}

impl Version {
    fn mode(&self) -> &'static str {
        match self {
            Version::File {
                executable: false, ..
            } => "100644",
            Version::File {
                executable: true, ..
            } => "100755",
            Version::Symlink { .. } => "120000",
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Version::File { bytes, .. } => bytes,
            Version::Symlink { target } => target,
        }
    }

    fn oid(&self) -> ObjectId {
        ObjectId::hash(ObjectKind::Blob, self.bytes())
    }
}

/// Lines of context around a change, as git's default.
const CONTEXT: usize = 3;

/// How long one file's line diff may search before settling for a coarser (still correct)
/// answer: a huge rewritten file must not hold the whole diff up.
const DIFF_DEADLINE: Duration = Duration::from_secs(2);

/// Appends to `out` the patch taking `path` from `old` to `new` (None: absent). A file that
/// became a symlink, or the other way round, is a deletion and a creation, as in git.
pub fn write(out: &mut Vec<u8>, path: &[u8], old: Option<&Version>, new: Option<&Version>) {
    match (old, new) {
        (None, None) => {}
        (Some(old), Some(new)) if old.mode() == "120000" && new.mode() != "120000" => {
            write(out, path, Some(old), None);
            write(out, path, None, Some(new));
        }
        (Some(old), Some(new)) if new.mode() == "120000" && old.mode() != "120000" => {
            write(out, path, Some(old), None);
            write(out, path, None, Some(new));
        }
        _ => write_one(out, path, old, new),
    }
}

fn write_one(out: &mut Vec<u8>, path: &[u8], old: Option<&Version>, new: Option<&Version>) {
    let (a, b) = (quoted(b"a/", path), quoted(b"b/", path));
    line(out, &[b"diff --git ", &a, b" ", &b]);
    let zero = ObjectId::from_bytes([0; 20]).to_hex();
    let old_oid = old.map_or_else(|| zero.clone(), |v| v.oid().to_hex());
    let new_oid = new.map_or_else(|| zero.clone(), |v| v.oid().to_hex());
    let index = format!("index {old_oid}..{new_oid}");
    match (old, new) {
        (None, Some(new)) => {
            line(out, &[b"new file mode ", new.mode().as_bytes()]);
            line(out, &[index.as_bytes()]);
        }
        (Some(old), None) => {
            line(out, &[b"deleted file mode ", old.mode().as_bytes()]);
            line(out, &[index.as_bytes()]);
        }
        (Some(old), Some(new)) => {
            if old.mode() != new.mode() {
                line(out, &[b"old mode ", old.mode().as_bytes()]);
                line(out, &[b"new mode ", new.mode().as_bytes()]);
            }
            if old_oid == new_oid {
                // A mode change alone.
                return;
            }
            if old.mode() == new.mode() {
                line(out, &[index.as_bytes(), b" ", old.mode().as_bytes()]);
            } else {
                line(out, &[index.as_bytes()]);
            }
        }
        (None, None) => return,
    }
    let before = old.map_or(&[][..], Version::bytes);
    let after = new.map_or(&[][..], Version::bytes);
    if is_binary(before) || is_binary(after) {
        binary(out, after, before);
        return;
    }
    if before.is_empty() && after.is_empty() {
        return;
    }
    let from = if old.is_some() { &a[..] } else { b"/dev/null" };
    let to = if new.is_some() { &b[..] } else { b"/dev/null" };
    line(out, &[b"--- ", from]);
    line(out, &[b"+++ ", to]);
    hunks(out, before, after);
}

/// Git's test for a binary file: a NUL byte among the first 8000.
fn is_binary(bytes: &[u8]) -> bool {
    bytes.iter().take(8000).any(|&b| b == 0)
}

fn line(out: &mut Vec<u8>, parts: &[&[u8]]) {
    for part in parts {
        out.extend_from_slice(part);
    }
    out.push(b'\n');
}

/// `prefix` + `path`, in double quotes with C escapes where git would quote it (a control
/// character, `"`, `\`, or a byte past ASCII), plain otherwise.
fn quoted(prefix: &[u8], path: &[u8]) -> Vec<u8> {
    let needs = path
        .iter()
        .any(|&b| !(0x20..0x7f).contains(&b) || b == b'"' || b == b'\\');
    let mut out = Vec::with_capacity(prefix.len() + path.len() + 2);
    if !needs {
        out.extend_from_slice(prefix);
        out.extend_from_slice(path);
        return out;
    }
    out.push(b'"');
    out.extend_from_slice(prefix);
    for &b in path {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            0x20..=0x7e => out.push(b),
            _ => out.extend_from_slice(format!("\\{b:03o}").as_bytes()),
        }
    }
    out.push(b'"');
    out
}

/// Lines, each with its newline (the last may have none).
fn lines(bytes: &[u8]) -> Vec<&[u8]> {
    bytes.split_inclusive(|&b| b == b'\n').collect()
}

fn hunks(out: &mut Vec<u8>, before: &[u8], after: &[u8]) {
    let (old, new) = (lines(before), lines(after));
    let deadline = Instant::now() + DIFF_DEADLINE;
    let ops = similar::capture_diff_slices_deadline(Algorithm::Myers, &old, &new, Some(deadline));
    for group in similar::group_diff_ops(ops, CONTEXT) {
        let (Some(first), Some(last)) = (group.first(), group.last()) else {
            continue;
        };
        let olds = first.old_range().start..last.old_range().end;
        let news = first.new_range().start..last.new_range().end;
        out.extend_from_slice(format!("@@ -{} +{} @@\n", span(&olds), span(&news)).as_bytes());
        for op in &group {
            hunk_lines(out, op, &old, &new);
        }
    }
}

fn hunk_lines(out: &mut Vec<u8>, op: &DiffOp, old: &[&[u8]], new: &[&[u8]]) {
    let (tag, olds, news) = op.as_tag_tuple();
    let mut emit = |mark: u8, text: &[u8]| {
        out.push(mark);
        out.extend_from_slice(text);
        if !text.ends_with(b"\n") {
            out.extend_from_slice(b"\n\\ No newline at end of file\n");
        }
    };
    match tag {
        DiffTag::Equal => old[olds].iter().for_each(|l| emit(b' ', l)),
        DiffTag::Delete => old[olds].iter().for_each(|l| emit(b'-', l)),
        DiffTag::Insert => new[news].iter().for_each(|l| emit(b'+', l)),
        DiffTag::Replace => {
            old[olds].iter().for_each(|l| emit(b'-', l));
            new[news].iter().for_each(|l| emit(b'+', l));
        }
    }
}

/// A hunk's range as git writes it: `start,count`, the count left out when 1, and an empty
/// range numbered by the line before it.
fn span(range: &std::ops::Range<usize>) -> String {
    match range.len() {
        0 => format!("{},0", range.start),
        1 => format!("{}", range.start + 1),
        n => format!("{},{n}", range.start + 1),
    }
}

/// A `GIT binary patch`: the new content, then the old (to apply it in reverse), whole.
fn binary(out: &mut Vec<u8>, new: &[u8], old: &[u8]) {
    out.extend_from_slice(b"GIT binary patch\n");
    literal(out, new);
    literal(out, old);
}

fn literal(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(format!("literal {}\n", bytes.len()).as_bytes());
    let deflated = deflated(bytes);
    for chunk in deflated.chunks(52) {
        // The line's byte count: A-Z for 1-26, a-z for 27-52.
        let count = chunk.len() as u8;
        out.push(if count <= 26 {
            b'A' + count - 1
        } else {
            b'a' + count - 27
        });
        base85(out, chunk);
        out.push(b'\n');
    }
    out.push(b'\n');
}

fn deflated(bytes: &[u8]) -> Vec<u8> {
    let mut writer = deflate::Write::new(Vec::new(), Compression::DEFAULT);
    // Writing into a Vec cannot fail.
    let _ = writer.write_all(bytes);
    let _ = writer.flush();
    writer.into_inner()
}

/// Git's base85 alphabet.
const BASE85: &[u8; 85] =
    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz!#$%&()*+-;<=>?@^_`{|}~";

/// Each four bytes (the last group padded with zeros) as five digits, most significant first.
fn base85(out: &mut Vec<u8>, bytes: &[u8]) {
    for group in bytes.chunks(4) {
        let mut word = [0u8; 4];
        word[..group.len()].copy_from_slice(group);
        let mut value = u32::from_be_bytes(word);
        let mut digits = [0u8; 5];
        for digit in digits.iter_mut().rev() {
            *digit = BASE85[(value % 85) as usize];
            value /= 85;
        }
        out.extend_from_slice(&digits);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> Version {
        Version::File {
            bytes: text.as_bytes().to_vec(),
            executable: false,
        }
    }

    fn patch(path: &str, old: Option<&Version>, new: Option<&Version>) -> String {
        let mut out = Vec::new();
        write(&mut out, path.as_bytes(), old, new);
        String::from_utf8(out).expect("text")
    }

    #[test]
    fn a_modified_text_file_is_hunks_with_three_lines_of_context() {
        let numbers: String = (1..=12).map(|n| format!("{n}\n")).collect();
        let old = file(&numbers);
        let new = file(&format!("{}eleven", numbers.replace("\n5\n", "\nfive\n")));
        let text = patch("src/a.txt", Some(&old), Some(&new));
        // Two changes more than six lines apart make two hunks.
        let expected = format!(
            "diff --git a/src/a.txt b/src/a.txt\nindex {}..{} 100644\n--- a/src/a.txt\n\
             +++ b/src/a.txt\n@@ -2,7 +2,7 @@\n 2\n 3\n 4\n-5\n+five\n 6\n 7\n 8\n\
             @@ -10,3 +10,4 @@\n 10\n 11\n 12\n+eleven\n\\ No newline at end of file\n",
            old.oid().to_hex(),
            new.oid().to_hex()
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn creations_deletions_modes_and_symlinks_are_written_as_git_writes_them() {
        let zero = "0".repeat(40);
        let new = file("one\n");
        let text = patch("n", None, Some(&new));
        assert_eq!(
            text,
            format!(
                "diff --git a/n b/n\nnew file mode 100644\nindex {zero}..{}\n--- /dev/null\n\
                 +++ b/n\n@@ -0,0 +1 @@\n+one\n",
                new.oid().to_hex()
            )
        );
        let text = patch("n", Some(&new), None);
        assert!(text.contains("deleted file mode 100644\n"), "{text}");
        assert!(
            text.ends_with("+++ /dev/null\n@@ -1 +0,0 @@\n-one\n"),
            "{text}"
        );
        // An empty new file has no hunks.
        let empty = patch("e", None, Some(&file("")));
        assert!(
            empty.ends_with("..e69de29bb2d1d6434b8b29ae775ad8c2e48c5391\n"),
            "{empty}"
        );
        // A mode change alone.
        let exec = Version::File {
            bytes: b"one\n".to_vec(),
            executable: true,
        };
        assert_eq!(
            patch("n", Some(&new), Some(&exec)),
            "diff --git a/n b/n\nold mode 100644\nnew mode 100755\n"
        );
        // A file that became a symlink: deleted, then created.
        let link = Version::Symlink {
            target: b"target".to_vec(),
        };
        let text = patch("n", Some(&new), Some(&link));
        let deleted = text.find("deleted file mode 100644").expect("deleted");
        let created = text.find("new file mode 120000").expect("created");
        assert!(deleted < created, "{text}");
        assert!(
            text.ends_with("+target\n\\ No newline at end of file\n"),
            "{text}"
        );
    }

    #[test]
    fn names_are_quoted_where_git_quotes_them() {
        assert_eq!(quoted(b"a/", b"plain name.rs"), b"a/plain name.rs");
        assert_eq!(
            quoted(b"b/", "tést\t\"x\"".as_bytes()),
            br#""b/t\303\251st\t\"x\"""#
        );
    }

    #[test]
    fn binary_files_are_base85_literals_of_deflated_bytes() {
        // Known digits: four zero bytes are "00000", and 0xffffffff is "|NsC0".
        let mut out = Vec::new();
        base85(&mut out, &[0, 0, 0, 0, 255, 255, 255, 255]);
        assert_eq!(out, b"00000|NsC0");
        let old = Version::File {
            bytes: vec![0u8, 1, 2, 3],
            executable: false,
        };
        let new = Version::File {
            bytes: (0..200u8).collect(),
            executable: false,
        };
        let text = patch("bin", Some(&old), Some(&new));
        assert!(text.contains("\nGIT binary patch\nliteral 200\n"), "{text}");
        assert!(text.contains("\n\nliteral 4\n"), "{text}");
        assert!(!text.contains("@@"), "{text}");
        // Each line's first character counts its bytes; full lines hold 52.
        let first = text
            .lines()
            .skip_while(|l| !l.starts_with("literal 200"))
            .nth(1)
            .expect("a data line");
        let count = first.as_bytes()[0];
        let bytes = if count <= b'Z' {
            count - b'A' + 1
        } else {
            count - b'a' + 27
        };
        assert_eq!(first.len() - 1, (usize::from(bytes)).div_ceil(4) * 5);
    }
}
