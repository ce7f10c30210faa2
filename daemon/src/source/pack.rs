//! git's pack format, parsed as it arrives: a push parser over a pack's bytes that hands each
//! entry's header and inflated body, piece by piece, to a [`PackSink`]. Nothing is kept here,
//! so a big object never has to be in memory whole: the sink decides what to keep, and
//! resolves deltas (their bases are named, not applied). The pack's checksum is verified.

use gix::zlib::{Decompress, FlushDecompress, Status};
use sha1::{Digest, Sha1};

use super::delta::DeltaError;
use super::sink::SinkError;
use crate::object::ObjectId;

/// The most inflated bytes handed to the sink at once.
const PIECE: usize = 256 * 1024;

/// The longest entry header: a 64-bit size, a 64-bit delta offset, or a 20-byte base id.
const MAX_ENTRY_HEADER: usize = 10 + 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Commit,
    Tree,
    Blob,
    Tag,
    /// A delta against the entry whose header starts at this pack offset.
    OfsDelta {
        base_offset: u64,
    },
    /// A delta against the object with this id.
    RefDelta {
        base: ObjectId,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Where its header starts in the pack.
    pub offset: u64,
    pub kind: EntryKind,
    /// Its inflated size: the object's, or for a delta, its instructions'.
    pub size: u64,
}

/// Why a pack was refused: its bytes, or what a sink made of an entry.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("the pack does not start with PACK")]
    NotAPack,
    #[error("unknown pack version {0}")]
    Version(u32),
    #[error("a pack entry header runs too long")]
    HeaderTooLong,
    #[error("unknown pack entry type {0}")]
    EntryType(u8),
    #[error("a pack entry size beyond 64 bits")]
    SizeOverflow,
    #[error("a delta's base offset beyond 64 bits")]
    OffsetOverflow,
    #[error("a delta's base is outside the pack ({0} back)")]
    BaseOutside(u64),
    #[error("a pack entry does not inflate: {0}")]
    Inflate(String),
    #[error("a pack entry inflates past its {0} bytes")]
    InflatesPast(u64),
    #[error("a pack entry inflates to {produced} bytes, not its {size}")]
    InflatesShort { produced: u64, size: u64 },
    #[error("a pack entry's deflated body makes no progress")]
    NoProgress,
    #[error("the pack's checksum does not match its bytes")]
    Checksum,
    #[error("bytes after the end of the pack")]
    TrailingBytes,
    #[error("the pack broke off after {produced} of an entry's {size} bytes")]
    BrokeOffInEntry { produced: u64, size: u64 },
    #[error("the pack broke off")]
    BrokeOff,
    #[error("{0}")]
    Entry(#[from] EntryError),
}

/// Why a sink refused an entry.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// The pack holds what was not asked for.
    #[error("{0}")]
    Unwanted(String),
    #[error("an object of {0} bytes, more than is kept in memory")]
    TooBig(u64),
    #[error("the pack holds more than is kept in memory")]
    PackTooBig,
    #[error("a delta whose base is not in the pack")]
    MissingBase,
    #[error("{0}")]
    Delta(#[from] DeltaError),
    #[error("{0}")]
    Sink(#[from] SinkError),
}

/// Where a pack's entries go: each begun, given its inflated bytes in pieces, then ended.
pub trait PackSink {
    fn begin(&mut self, entry: &Entry) -> Result<(), EntryError>;
    fn data(&mut self, piece: &[u8]) -> Result<(), EntryError>;
    fn end(&mut self) -> Result<(), EntryError>;
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    Header,
    EntryHeader,
    Body,
    Trailer,
    Done,
}

pub struct PackParser {
    phase: Phase,
    /// Header or trailer bytes not yet whole.
    pending: Vec<u8>,
    /// Pack bytes taken so far.
    taken: u64,
    entries_left: u32,
    entry_offset: u64,
    size: u64,
    produced: u64,
    inflate: Decompress,
    piece: Vec<u8>,
    checksum: Sha1,
}

impl Default for PackParser {
    fn default() -> Self {
        PackParser {
            phase: Phase::Header,
            pending: Vec::new(),
            taken: 0,
            entries_left: 0,
            entry_offset: 0,
            size: 0,
            produced: 0,
            inflate: Decompress::new(),
            piece: Vec::new(),
            checksum: Sha1::new(),
        }
    }
}

impl PackParser {
    /// Takes the next bytes of the pack, handing the entries they complete to `sink`.
    pub fn feed(&mut self, mut data: &[u8], sink: &mut dyn PackSink) -> Result<(), PackError> {
        loop {
            match self.phase {
                Phase::Header => {
                    data = self.collect(data, 12);
                    if self.pending.len() < 12 {
                        return Ok(());
                    }
                    self.pack_header()?;
                }
                Phase::EntryHeader => {
                    let Some((byte, rest)) = data.split_first() else {
                        return Ok(());
                    };
                    self.checksum.update([*byte]);
                    self.taken += 1;
                    self.pending.push(*byte);
                    data = rest;
                    if let Some((kind, size)) =
                        parse_entry_header(&self.pending, self.entry_offset)?
                    {
                        self.pending.clear();
                        (self.size, self.produced) = (size, 0);
                        self.inflate.reset();
                        self.phase = Phase::Body;
                        let offset = self.entry_offset;
                        sink.begin(&Entry { offset, kind, size })?;
                    } else if self.pending.len() > MAX_ENTRY_HEADER {
                        return Err(PackError::HeaderTooLong);
                    }
                }
                Phase::Body => {
                    let (used, filled) = self.inflate_some(data, sink)?;
                    data = &data[used..];
                    if self.phase == Phase::Body && data.is_empty() && !filled {
                        return Ok(());
                    }
                }
                Phase::Trailer => {
                    let take = (20 - self.pending.len()).min(data.len());
                    self.pending.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if self.pending.len() < 20 {
                        return Ok(());
                    }
                    let expected = std::mem::take(&mut self.checksum).finalize();
                    if self.pending[..] != expected[..] {
                        return Err(PackError::Checksum);
                    }
                    self.phase = Phase::Done;
                }
                Phase::Done if data.is_empty() => return Ok(()),
                Phase::Done => return Err(PackError::TrailingBytes),
            }
        }
    }

    /// Checks, once no more bytes will come, that the pack was whole.
    pub fn finish(&self) -> Result<(), PackError> {
        match self.phase {
            Phase::Done => Ok(()),
            Phase::Body => Err(PackError::BrokeOffInEntry {
                produced: self.produced,
                size: self.size,
            }),
            _ => Err(PackError::BrokeOff),
        }
    }

    /// Moves bytes of `data` into `pending` (and the checksum) until it holds `want`.
    fn collect<'a>(&mut self, data: &'a [u8], want: usize) -> &'a [u8] {
        let take = want.saturating_sub(self.pending.len()).min(data.len());
        self.pending.extend_from_slice(&data[..take]);
        self.checksum.update(&data[..take]);
        self.taken += take as u64;
        &data[take..]
    }

    fn pack_header(&mut self) -> Result<(), PackError> {
        let h = std::mem::take(&mut self.pending);
        if &h[..4] != b"PACK" {
            return Err(PackError::NotAPack);
        }
        let version = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        if version != 2 && version != 3 {
            return Err(PackError::Version(version));
        }
        self.entries_left = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
        self.next_entry();
        Ok(())
    }

    fn next_entry(&mut self) {
        self.entry_offset = self.taken;
        self.phase = if self.entries_left == 0 {
            Phase::Trailer
        } else {
            Phase::EntryHeader
        };
    }

    /// Inflates what it can of `data`; returns the input used and whether the output piece was
    /// filled (then more may come without more input).
    fn inflate_some(
        &mut self,
        data: &[u8],
        sink: &mut dyn PackSink,
    ) -> Result<(usize, bool), PackError> {
        // One spare byte: output past the announced size must show, not hide in a full piece.
        let room = (self.size - self.produced)
            .saturating_add(1)
            .min(PIECE as u64) as usize;
        self.piece.resize(room, 0);
        let (before_in, before_out) = (self.inflate.total_in(), self.inflate.total_out());
        let status = self
            .inflate
            .decompress(data, &mut self.piece[..room], FlushDecompress::None)
            .map_err(|e| PackError::Inflate(e.to_string()))?;
        let used = (self.inflate.total_in() - before_in) as usize;
        let written = (self.inflate.total_out() - before_out) as usize;
        self.checksum.update(&data[..used]);
        self.taken += used as u64;
        self.produced += written as u64;
        if self.produced > self.size {
            return Err(PackError::InflatesPast(self.size));
        }
        if written > 0 {
            sink.data(&self.piece[..written])?;
        }
        if status == Status::StreamEnd {
            if self.produced != self.size {
                return Err(PackError::InflatesShort {
                    produced: self.produced,
                    size: self.size,
                });
            }
            sink.end()?;
            self.entries_left -= 1;
            self.next_entry();
        } else if used == 0 && written == 0 && !data.is_empty() {
            return Err(PackError::NoProgress);
        }
        Ok((used, written == room))
    }
}

/// An entry's kind and inflated size from its header `h` (of the entry at `offset`), or None
/// if `h` is not whole yet.
fn parse_entry_header(h: &[u8], offset: u64) -> Result<Option<(EntryKind, u64)>, PackError> {
    let Some((size, mut at)) = size_varint(h)? else {
        return Ok(None);
    };
    let kind = match (h[0] >> 4) & 0x7 {
        1 => EntryKind::Commit,
        2 => EntryKind::Tree,
        3 => EntryKind::Blob,
        4 => EntryKind::Tag,
        6 => {
            let mut distance = 0u64;
            let start = at;
            loop {
                let Some(&byte) = h.get(at) else {
                    return Ok(None);
                };
                if at > start {
                    // git's offset encoding adds one per continued byte.
                    distance = distance
                        .checked_add(1)
                        .and_then(|d| d.checked_mul(128))
                        .ok_or(PackError::OffsetOverflow)?;
                }
                distance |= u64::from(byte & 0x7f);
                at += 1;
                if byte & 0x80 == 0 {
                    break;
                }
            }
            if distance == 0 || distance > offset {
                return Err(PackError::BaseOutside(distance));
            }
            EntryKind::OfsDelta {
                base_offset: offset - distance,
            }
        }
        7 => {
            let Some(id) = h.get(at..at + 20) else {
                return Ok(None);
            };
            let mut bytes = [0u8; 20];
            bytes.copy_from_slice(id);
            EntryKind::RefDelta {
                base: ObjectId::from_bytes(bytes),
            }
        }
        other => return Err(PackError::EntryType(other)),
    };
    Ok(Some((kind, size)))
}

/// The size at the start of an entry header, and the bytes it takes.
fn size_varint(h: &[u8]) -> Result<Option<(u64, usize)>, PackError> {
    let Some(&first) = h.first() else {
        return Ok(None);
    };
    let mut size = u64::from(first & 0x0f);
    let mut byte = first;
    let mut at = 1;
    while byte & 0x80 != 0 {
        let Some(&next) = h.get(at) else {
            return Ok(None);
        };
        let shift = 4 + 7 * (at as u32 - 1);
        let bits = u64::from(next & 0x7f);
        if shift >= 64 || (shift > 57 && bits >> (64 - shift) != 0) {
            return Err(PackError::SizeOverflow);
        }
        size |= bits << shift;
        byte = next;
        at += 1;
    }
    Ok(Some((size, at)))
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use std::io::Write;

    /// A pack of `entries` (type number, raw header extra bytes, inflated body).
    pub fn pack_of(entries: &[(u8, Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        let mut pack = b"PACK\0\0\0\x02".to_vec();
        pack.extend((entries.len() as u32).to_be_bytes());
        for (kind, extra, body) in entries {
            pack.extend(megafs_testsupport::hostile::pack_entry_header(
                *kind,
                body.len() as u64,
            ));
            pack.extend(extra);
            let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            z.write_all(body).unwrap();
            pack.extend(z.finish().unwrap());
        }
        let sum = Sha1::digest(&pack);
        pack.extend(sum);
        pack
    }

    /// Records what a parser hands out.
    #[derive(Default)]
    pub struct Recorder {
        pub entries: Vec<(Entry, Vec<u8>)>,
    }

    impl PackSink for Recorder {
        fn begin(&mut self, entry: &Entry) -> Result<(), EntryError> {
            self.entries.push((*entry, Vec::new()));
            Ok(())
        }
        fn data(&mut self, piece: &[u8]) -> Result<(), EntryError> {
            let last = self
                .entries
                .last_mut()
                .ok_or_else(|| EntryError::Unwanted("data before an entry".into()))?;
            last.1.extend_from_slice(piece);
            Ok(())
        }
        fn end(&mut self) -> Result<(), EntryError> {
            Ok(())
        }
    }

    fn parse(pack: &[u8], chunk: usize) -> Result<Vec<(Entry, Vec<u8>)>, PackError> {
        let mut parser = PackParser::default();
        let mut sink = Recorder::default();
        for part in pack.chunks(chunk) {
            parser.feed(part, &mut sink)?;
        }
        parser.finish()?;
        Ok(sink.entries)
    }

    #[test]
    fn hands_out_every_entry_however_the_bytes_are_cut() {
        let big = megafs_testsupport::fixture::pseudo_random(600_000, 3);
        let base_id = [7u8; 20].to_vec();
        let pack = pack_of(&[
            (3, vec![], b"hello\n".to_vec()),
            (3, vec![], big.clone()),
            (3, vec![], Vec::new()),
            (7, base_id.clone(), b"delta bytes".to_vec()),
        ]);
        for chunk in [1, 7, 4096, pack.len()] {
            let entries = parse(&pack, chunk).expect("parses");
            assert_eq!(entries.len(), 4);
            assert_eq!(entries[0].0.offset, 12);
            assert_eq!(entries[0].1, b"hello\n");
            assert_eq!(entries[1].0.kind, EntryKind::Blob);
            assert_eq!(entries[1].0.size, 600_000);
            assert!(entries[1].1 == big);
            assert_eq!(entries[2].1, b"");
            let base = ObjectId::from_bytes([7u8; 20]);
            assert_eq!(entries[3].0.kind, EntryKind::RefDelta { base });
            assert_eq!(entries[3].1, b"delta bytes");
        }
    }

    #[test]
    fn finds_ofs_delta_bases() {
        let first = pack_of(&[(3, vec![], b"base".to_vec())]);
        // The second entry starts after the first; its base is 12, that far back.
        let second_offset = (first.len() - 20) as u64;
        let distance = second_offset - 12;
        assert!(distance < 128, "one byte of offset");
        let pack = pack_of(&[
            (3, vec![], b"base".to_vec()),
            (6, vec![distance as u8], b"instructions".to_vec()),
        ]);
        let entries = parse(&pack, 5).expect("parses");
        assert_eq!(entries[1].0.kind, EntryKind::OfsDelta { base_offset: 12 });
        // Two-byte offsets carry git's extra one: 0x80 0x00 means 128.
        assert_eq!(
            parse_entry_header(&[0x60, 0x80, 0x00], 1000).unwrap(),
            Some((
                EntryKind::OfsDelta {
                    base_offset: 1000 - 128
                },
                0
            ))
        );
        assert!(
            parse_entry_header(&[0x60, 0x05], 3).is_err(),
            "base before the pack"
        );
    }

    #[test]
    fn refuses_broken_packs() {
        let pack = pack_of(&[(3, vec![], b"some content here".to_vec())]);
        let err = |bytes: &[u8]| parse(bytes, 3).unwrap_err().to_string();
        assert!(err(&pack[..pack.len() - 5]).contains("broke off"));
        assert!(err(&pack[..20]).contains("broke off"));
        let mut bad_sum = pack.clone();
        *bad_sum.last_mut().unwrap() ^= 1;
        assert!(err(&bad_sum).contains("checksum"));
        let mut not_pack = pack.clone();
        not_pack[0] = b'J';
        assert!(err(&not_pack).contains("PACK"));
        let mut kind5 = pack.clone();
        kind5[12] = (kind5[12] & 0x8f) | (5 << 4);
        assert!(err(&kind5).contains("type 5"));
        let mut longer = pack.clone();
        longer.push(0);
        assert!(err(&longer).contains("after the end"));
        assert!(err(&[0xff; 40]).contains("PACK"));
        let huge = [
            0xbf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
        ];
        assert!(parse_entry_header(&huge, 100).is_err());
    }
}
