//! The answer to a git `fetch`, decoded as it arrives: pkt-lines, the `packfile` section, the
//! side band, and the pack itself through [`PackParser`]. A push decoder (the caller feeds it
//! the body's chunks), so nothing needs the whole answer in memory, and the decoding is plain
//! logic, tested without a server.

use super::pack::{PackError, PackParser, PackSink};
use super::pktline::{self, Pkt};

#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    /// The server's own words: an `ERR` line or a side-band error.
    #[error("{0}")]
    Refused(String),
    #[error("pkt-line: {0}")]
    Framing(&'static str),
    #[error("the answer has no pack")]
    NoPack,
    #[error("unknown side-band channel")]
    UnknownBand,
    #[error("empty answer (the server gave up on the request)")]
    Empty,
    #[error("{0}")]
    Pack(#[from] PackError),
}

#[derive(Default)]
pub struct FetchAnswer {
    /// The start of a pkt-line whose end has not arrived.
    unframed: Vec<u8>,
    in_pack: bool,
    pack: PackParser,
}

impl FetchAnswer {
    /// Takes the next bytes of the answer, handing the pack entries they complete to `sink`.
    pub fn feed(&mut self, input: &[u8], sink: &mut dyn PackSink) -> Result<(), AnswerError> {
        let mut buffer = std::mem::take(&mut self.unframed);
        buffer.extend_from_slice(input);
        let mut used = 0;
        while let Some((pkt, len)) =
            pktline::split_first(&buffer[used..]).map_err(AnswerError::Framing)?
        {
            self.pkt(pkt, sink)?;
            used += len;
        }
        buffer.drain(..used);
        self.unframed = buffer;
        Ok(())
    }

    /// Checks, at the end of the answer, that the whole pack came.
    pub fn finish(&self) -> Result<(), AnswerError> {
        if !self.in_pack {
            return Err(AnswerError::NoPack);
        }
        Ok(self.pack.finish()?)
    }

    fn pkt(&mut self, pkt: Pkt<'_>, sink: &mut dyn PackSink) -> Result<(), AnswerError> {
        let Pkt::Data(data) = pkt else {
            return Ok(());
        };
        if !self.in_pack {
            let line = pktline::text(data);
            if let Some(message) = line.strip_prefix("ERR ") {
                return Err(AnswerError::Refused(message.to_string()));
            }
            self.in_pack = line == "packfile";
            return Ok(());
        }
        match data.split_first() {
            Some((1, pack)) => Ok(self.pack.feed(pack, sink)?),
            Some((2, _)) => Ok(()),
            Some((3, message)) => Err(AnswerError::Refused(pktline::text(message))),
            _ => Err(AnswerError::UnknownBand),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::pack::tests::pack_of;
    use crate::source::pack_sinks::OneBlob;

    /// A fetch answer carrying `pack`, split over side-band lines of at most `band` bytes.
    fn answer_with(pack: &[u8], band: usize) -> Vec<u8> {
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

    fn one_blob(answer: &[u8], chunk: usize) -> Result<Vec<u8>, AnswerError> {
        let mut decoder = FetchAnswer::default();
        let mut blob = OneBlob::default();
        for part in answer.chunks(chunk) {
            decoder.feed(part, &mut blob)?;
        }
        decoder.finish()?;
        assert_eq!(
            blob.size,
            Some(blob.pieces.iter().map(|p| p.len() as u64).sum())
        );
        Ok(blob.pieces.concat())
    }

    #[test]
    fn decodes_a_blob_whatever_way_the_answer_is_cut() {
        let content = megafs_testsupport::fixture::pseudo_random(700_000, 7);
        let answer = answer_with(&pack_of(&[(3, vec![], content.clone())]), 65515);
        for chunk in [1, 3, 4096, 65536, answer.len()] {
            let blob = one_blob(&answer, chunk).expect("decodes");
            assert!(blob == content, "chunk {chunk}");
        }
        let empty = answer_with(&pack_of(&[(3, vec![], Vec::new())]), 100);
        assert_eq!(one_blob(&empty, 7).expect("empty"), b"");
    }

    #[test]
    fn learns_the_size_before_the_body() {
        let answer = answer_with(&pack_of(&[(3, vec![], vec![b'x'; 1 << 20])]), 1000);
        let mut decoder = FetchAnswer::default();
        let mut blob = OneBlob::default();
        // The preamble and the first side-band line, which holds the entry header.
        decoder.feed(&answer[..1100], &mut blob).expect("feed");
        assert_eq!(blob.size, Some(1 << 20));
        assert!(blob.pieces.iter().map(|p| p.len()).sum::<usize>() < 1 << 20);
    }

    #[test]
    fn refuses_what_is_not_one_whole_blob() {
        let content = b"hello, world\n".repeat(100);
        let answer = answer_with(&pack_of(&[(3, vec![], content.clone())]), 50);
        let malformed = |answer: &[u8]| match one_blob(answer, 64) {
            Err(e @ (AnswerError::Pack(_) | AnswerError::NoPack)) => e.to_string(),
            other => panic!("expected a malformed answer, got {other:?}"),
        };
        assert!(malformed(&answer[..answer.len() / 2]).contains("broke off"));
        assert!(malformed(b"0000").contains("no pack"));
        let mut err = Vec::new();
        pktline::line(&mut err, "ERR upload-pack: not our ref 1234");
        assert!(matches!(
            one_blob(&err, 5),
            Err(AnswerError::Refused(text)) if text == "upload-pack: not our ref 1234"
        ));
        let mut band3 = Vec::new();
        pktline::line(&mut band3, "packfile");
        pktline::data(&mut band3, b"\x03fatal: out of memory\n");
        assert!(matches!(
            one_blob(&band3, 9),
            Err(AnswerError::Refused(text)) if text == "fatal: out of memory"
        ));
        let two = pack_of(&[(3, vec![], content.clone()), (3, vec![], content.clone())]);
        assert!(malformed(&answer_with(&two, 50)).contains("more than one"));
        let commit = pack_of(&[(1, vec![], b"tree 0000\n".to_vec())]);
        assert!(malformed(&answer_with(&commit, 50)).contains("Commit"));
    }
}
