//! Every parser of outside input, as the fuzz targets (`fuzz/`) and the corpus regression
//! test (`tests/fuzz_corpus.rs`) drive it: each takes arbitrary bytes and must return, never
//! panic, hang or allocate without bound. Results are dropped; only surviving counts.

use crate::config::Config;
use crate::object::parse_tree;
use crate::source::fetch_answer::FetchAnswer;
use crate::source::pack::PackParser;
use crate::source::pack_sinks::ObjectsInMemory;
use crate::source::{delta, git, mega, pktline};

/// One parser, taking arbitrary bytes.
pub type Target = fn(&[u8]);

/// The targets by name (the names of `fuzz/fuzz_targets/*.rs` and `fuzz/corpus/*`).
pub const TARGETS: &[(&str, Target)] = &[
    ("tree", tree),
    ("pktline", pktline),
    ("fetch_answer", fetch_answer),
    ("pack", pack),
    ("delta", delta),
    ("mega_json", mega_json),
    ("commit", commit),
    ("config", config),
];

/// A raw git tree body, as a server sends it.
pub fn tree(data: &[u8]) {
    let _ = parse_tree(data);
}

/// pkt-lines, whole and one at a time.
pub fn pktline(data: &[u8]) {
    let _ = pktline::parse(data);
    let mut rest = data;
    while let Ok(Some((_, used))) = pktline::split_first(rest) {
        rest = &rest[used.min(rest.len())..];
        if used == 0 {
            break;
        }
    }
}

/// A fetch answer (sections, side band, the pack, deltas), as the network would cut it.
pub fn fetch_answer(data: &[u8]) {
    let mut answer = FetchAnswer::default();
    if in_two_pieces(data, |piece, sink| answer.feed(piece, sink).is_ok()) {
        let _ = answer.finish();
    }
}

/// A bare pack, into memory (deltas resolved), as the network would cut it.
pub fn pack(data: &[u8]) {
    let mut parser = PackParser::default();
    if in_two_pieces(data, |piece, sink| parser.feed(piece, sink).is_ok()) {
        let _ = parser.finish();
    }
}

/// Feeds `data` but its first byte to `feed` in two pieces, cut where that byte says, into one
/// in-memory sink; true if both were taken.
fn in_two_pieces(data: &[u8], mut feed: impl FnMut(&[u8], &mut ObjectsInMemory) -> bool) -> bool {
    let (cut, body) = split(data);
    let mut sink = ObjectsInMemory::default();
    feed(&body[..cut], &mut sink) && feed(&body[cut..], &mut sink)
}

/// A delta applied to a base: the first byte is the base's length.
pub fn delta(data: &[u8]) {
    let Some((&len, rest)) = data.split_first() else {
        return;
    };
    let len = usize::from(len).min(rest.len());
    let _ = delta::apply(&rest[..len], &rest[len..]);
}

/// Mega's JSON answers: the latest commit, and error bodies.
pub fn mega_json(data: &[u8]) {
    let _ = mega::parse_latest_commit(data);
    let _ = mega::error_text(data);
}

/// A raw commit, as the git source reads its tree and time from it.
pub fn commit(data: &[u8]) {
    let _ = git::parse_commit(data);
}

/// The configuration file.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(config) = Config::parse(text, std::path::Path::new("fuzz.toml")) {
            let _ = config.warnings();
        }
    }
}

/// Where to cut `data` (its first byte, scaled), and the rest.
fn split(data: &[u8]) -> (usize, &[u8]) {
    match data.split_first() {
        Some((&first, rest)) => (usize::from(first) * rest.len() / 256, rest),
        None => (0, data),
    }
}
