//! The answer to a git fetch of one blob, decoded as it arrives: pkt-lines, the side band, the
//! pack header, then the blob's deflated body. A push decoder (the caller feeds it the body's
//! chunks and collects the blob's bytes), so a big blob never has to be in memory whole, and
//! the decoding is plain logic, tested without a server.

use bytes::Bytes;
use gix::zlib::{Decompress, FlushDecompress, Status};

use super::pktline::{self, Pkt};

/// The most blob bytes handed out in one piece.
const PIECE: usize = 256 * 1024;

/// A pack entry's type for a blob.
const BLOB_TYPE: u8 = 3;

/// The longest entry header a size that fits 64 bits needs.
const MAX_ENTRY_HEADER: usize = 10;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnswerError {
    /// The server's own words: an `ERR` line or a side-band error.
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Malformed(String),
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    /// Before the `packfile` section.
    Preamble,
    PackHeader,
    EntryHeader,
    Body,
    /// The blob is whole; what follows is the pack's checksum.
    Trailer,
}

pub struct BlobAnswer {
    /// The start of a pkt-line whose end has not arrived.
    unframed: Vec<u8>,
    /// Pack bytes of a header not yet whole.
    header: Vec<u8>,
    phase: Phase,
    inflate: Decompress,
    size: Option<u64>,
    produced: u64,
}

impl Default for BlobAnswer {
    fn default() -> Self {
        BlobAnswer {
            unframed: Vec::new(),
            header: Vec::new(),
            phase: Phase::Preamble,
            inflate: Decompress::new(),
            size: None,
            produced: 0,
        }
    }
}

fn malformed(text: impl Into<String>) -> AnswerError {
    AnswerError::Malformed(text.into())
}

impl BlobAnswer {
    /// The blob's length, once its entry header has arrived.
    pub fn size(&self) -> Option<u64> {
        self.size
    }

    /// Takes the next bytes of the answer; appends the blob bytes they complete to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<Bytes>) -> Result<(), AnswerError> {
        let mut buffer = std::mem::take(&mut self.unframed);
        buffer.extend_from_slice(input);
        let mut used = 0;
        while let Some((pkt, len)) = pktline::split_first(&buffer[used..])
            .map_err(|e| malformed(format!("pkt-line: {e}")))?
        {
            self.pkt(pkt, out)?;
            used += len;
        }
        buffer.drain(..used);
        self.unframed = buffer;
        Ok(())
    }

    /// Checks, at the end of the answer, that the whole blob came.
    pub fn finish(&self) -> Result<(), AnswerError> {
        match self.phase {
            Phase::Trailer => Ok(()),
            Phase::Preamble => Err(malformed("the answer has no pack")),
            _ => Err(malformed(format!(
                "the pack broke off after {} of {} bytes",
                self.produced,
                self.size.unwrap_or(0)
            ))),
        }
    }

    fn pkt(&mut self, pkt: Pkt<'_>, out: &mut Vec<Bytes>) -> Result<(), AnswerError> {
        let Pkt::Data(data) = pkt else {
            return Ok(());
        };
        if self.phase == Phase::Preamble {
            let line = pktline::text(data);
            if let Some(message) = line.strip_prefix("ERR ") {
                return Err(AnswerError::Refused(message.to_string()));
            }
            if line == "packfile" {
                self.phase = Phase::PackHeader;
            }
            return Ok(());
        }
        match data.split_first() {
            Some((1, pack)) => self.pack(pack, out),
            Some((2, _)) => Ok(()),
            Some((3, message)) => Err(AnswerError::Refused(pktline::text(message))),
            _ => Err(malformed("unknown side-band channel")),
        }
    }

    fn pack(&mut self, mut data: &[u8], out: &mut Vec<Bytes>) -> Result<(), AnswerError> {
        loop {
            match self.phase {
                Phase::Preamble | Phase::Trailer => return Ok(()),
                Phase::PackHeader => {
                    let take = (12 - self.header.len()).min(data.len());
                    self.header.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if self.header.len() < 12 {
                        return Ok(());
                    }
                    self.pack_header()?;
                }
                Phase::EntryHeader => {
                    let Some((&byte, rest)) = data.split_first() else {
                        return Ok(());
                    };
                    data = rest;
                    self.header.push(byte);
                    if byte & 0x80 == 0 {
                        self.entry_header()?;
                    } else if self.header.len() >= MAX_ENTRY_HEADER {
                        return Err(malformed("a pack entry header too long"));
                    }
                }
                Phase::Body => {
                    let (consumed, filled) = self.inflate_some(data, out)?;
                    data = &data[consumed..];
                    if self.phase == Phase::Body && data.is_empty() && !filled {
                        return Ok(());
                    }
                }
            }
        }
    }

    fn pack_header(&mut self) -> Result<(), AnswerError> {
        let h = std::mem::take(&mut self.header);
        if &h[..4] != b"PACK" {
            return Err(malformed("the pack does not start with PACK"));
        }
        let version = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        let count = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
        if version != 2 && version != 3 {
            return Err(malformed(format!("pack version {version}")));
        }
        if count != 1 {
            return Err(malformed(format!(
                "{count} objects in the pack, one was asked for"
            )));
        }
        self.phase = Phase::EntryHeader;
        Ok(())
    }

    fn entry_header(&mut self) -> Result<(), AnswerError> {
        let h = std::mem::take(&mut self.header);
        let kind = (h[0] >> 4) & 0x7;
        if kind != BLOB_TYPE {
            return Err(malformed(format!(
                "the pack holds an object of type {kind}, a blob was asked for"
            )));
        }
        let mut size = u64::from(h[0] & 0x0f);
        for (i, byte) in h[1..].iter().enumerate() {
            let shift = 4 + 7 * i as u32;
            let bits = u64::from(byte & 0x7f);
            if shift >= 64 || bits.leading_zeros() < shift {
                return Err(malformed("a blob size beyond 64 bits"));
            }
            size |= bits << shift;
        }
        self.size = Some(size);
        self.phase = Phase::Body;
        Ok(())
    }

    /// Inflates what it can of `data`; returns the input used and whether the output piece was
    /// filled (then more may come without more input).
    fn inflate_some(
        &mut self,
        data: &[u8],
        out: &mut Vec<Bytes>,
    ) -> Result<(usize, bool), AnswerError> {
        let size = self.size.unwrap_or(0);
        // One spare byte: more output than announced must show, not hide behind a full piece.
        let room = (size - self.produced + 1).min(PIECE as u64) as usize;
        let mut piece = vec![0u8; room];
        let (before_in, before_out) = (self.inflate.total_in(), self.inflate.total_out());
        let status = self
            .inflate
            .decompress(data, &mut piece, FlushDecompress::None)
            .map_err(|e| malformed(format!("the blob does not inflate: {e}")))?;
        let consumed = (self.inflate.total_in() - before_in) as usize;
        let written = (self.inflate.total_out() - before_out) as usize;
        self.produced += written as u64;
        if self.produced > size {
            return Err(malformed(format!(
                "the blob inflates past its {size} bytes"
            )));
        }
        let filled = written == room;
        if written > 0 {
            piece.truncate(written);
            out.push(Bytes::from(piece));
        }
        if status == Status::StreamEnd {
            if self.produced != size {
                return Err(malformed(format!(
                    "the blob inflates to {} bytes, not its {size}",
                    self.produced
                )));
            }
            self.phase = Phase::Trailer;
        } else if consumed == 0 && written == 0 && !data.is_empty() {
            return Err(malformed("the blob's deflated body makes no progress"));
        }
        Ok((consumed, filled))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A fetch answer carrying `blob` as a one-object pack, the pack split over side-band
    /// lines of at most `band` bytes.
    fn answer_with(blob: &[u8], band: usize) -> Vec<u8> {
        let mut pack = b"PACK\0\0\0\x02\0\0\0\x01".to_vec();
        let mut size = blob.len() as u64;
        let mut first = (BLOB_TYPE << 4) | (size & 0x0f) as u8;
        size >>= 4;
        while size > 0 {
            pack.push(first | 0x80);
            first = (size & 0x7f) as u8;
            size >>= 7;
        }
        pack.push(first);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(blob).unwrap();
        pack.extend(z.finish().unwrap());
        pack.extend([0u8; 20]);
        let mut out = Vec::new();
        pktline::line(&mut out, "packfile");
        for piece in pack.chunks(band) {
            let mut line = vec![1u8];
            line.extend_from_slice(piece);
            pktline::data(&mut out, &line);
        }
        pktline::flush(&mut out);
        out
    }

    fn decode(answer: &[u8], chunk: usize) -> Result<Vec<u8>, AnswerError> {
        let mut decoder = BlobAnswer::default();
        let mut pieces = Vec::new();
        for part in answer.chunks(chunk) {
            decoder.feed(part, &mut pieces)?;
        }
        decoder.finish()?;
        assert_eq!(
            decoder.size(),
            Some(pieces.iter().map(|p| p.len() as u64).sum())
        );
        Ok(pieces.concat())
    }

    #[test]
    fn decodes_whatever_way_the_answer_is_cut() {
        let blob = megafs_testsupport::fixture::pseudo_random(700_000, 7);
        let answer = answer_with(&blob, 65515);
        for chunk in [1, 3, 4096, 65536, answer.len()] {
            assert_eq!(
                decode(&answer, chunk).expect("decodes"),
                blob,
                "chunk {chunk}"
            );
        }
        assert_eq!(decode(&answer_with(b"", 100), 7).expect("empty"), b"");
    }

    #[test]
    fn learns_the_size_before_the_body() {
        let blob = vec![b'x'; 1 << 20];
        let answer = answer_with(&blob, 1000);
        let mut decoder = BlobAnswer::default();
        let mut pieces = Vec::new();
        // The preamble and the first side-band line, which holds the entry header.
        decoder.feed(&answer[..1100], &mut pieces).expect("feed");
        assert_eq!(decoder.size(), Some(1 << 20));
        assert!(pieces.iter().map(|p| p.len()).sum::<usize>() < 1 << 20);
    }

    #[test]
    fn refuses_what_is_not_one_whole_blob() {
        let blob = b"hello, world\n".repeat(100);
        let answer = answer_with(&blob, 50);
        // Cut short: the checksum-less end of the body never came.
        let cut = &answer[..answer.len() / 2];
        assert!(decode(cut, 64)
            .unwrap_err()
            .to_string()
            .contains("broke off"));
        // No pack at all, an ERR line, a side-band error.
        let mut err = Vec::new();
        pktline::line(&mut err, "ERR upload-pack: not our ref 1234");
        assert_eq!(
            decode(&err, 5),
            Err(AnswerError::Refused("upload-pack: not our ref 1234".into()))
        );
        assert!(decode(b"0000", 4)
            .unwrap_err()
            .to_string()
            .contains("no pack"));
        let mut band3 = Vec::new();
        pktline::line(&mut band3, "packfile");
        pktline::data(&mut band3, b"\x03fatal: out of memory\n");
        assert_eq!(
            decode(&band3, 9),
            Err(AnswerError::Refused("fatal: out of memory".into()))
        );
        // Two objects, a commit, a lying size.
        let mut two = answer.clone();
        let at = two.windows(4).position(|w| w == b"PACK").unwrap();
        two[at + 11] = 2;
        assert!(decode(&two, 4096)
            .unwrap_err()
            .to_string()
            .contains("2 objects"));
        let mut commit = answer.clone();
        commit[at + 12] = (commit[at + 12] & 0x8f) | (1 << 4);
        assert!(decode(&commit, 4096)
            .unwrap_err()
            .to_string()
            .contains("type 1"));
        let short = answer_with(&blob[..blob.len() - 1], 50);
        let mut lying = short.clone();
        let size_at = short.windows(4).position(|w| w == b"PACK").unwrap() + 12;
        lying[size_at] = (lying[size_at] & 0xf0) | ((lying[size_at] & 0x0f).wrapping_sub(1) & 0x0f);
        assert!(decode(&lying, 4096).is_err());
    }
}
