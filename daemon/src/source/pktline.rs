//! git's pkt-line framing: four hex digits of length (counting themselves), then data;
//! `0000` is a flush, `0001` a delimiter, `0002` a response end.

/// One framed unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pkt<'a> {
    Data(&'a [u8]),
    Flush,
    Delim,
    ResponseEnd,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed pkt-line at byte {offset}: {reason}")]
pub struct PktError {
    pub offset: usize,
    pub reason: &'static str,
}

/// Appends a data line.
pub fn data(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(format!("{:04x}", payload.len() + 4).as_bytes());
    out.extend_from_slice(payload);
}

/// Appends a text line, newline-terminated.
pub fn line(out: &mut Vec<u8>, text: &str) {
    data(out, format!("{text}\n").as_bytes());
}

pub fn flush(out: &mut Vec<u8>) {
    out.extend_from_slice(b"0000");
}

pub fn delim(out: &mut Vec<u8>) {
    out.extend_from_slice(b"0001");
}

/// Splits a buffer into pkt-lines.
pub fn parse(mut input: &[u8]) -> Result<Vec<Pkt<'_>>, PktError> {
    let total = input.len();
    let mut out = Vec::new();
    while !input.is_empty() {
        let offset = total - input.len();
        let err = |reason| PktError { offset, reason };
        match split_first(input).map_err(err)? {
            Some((pkt, used)) => {
                out.push(pkt);
                input = &input[used..];
            }
            None if input.len() < 4 => return Err(err("truncated length")),
            None => return Err(err("truncated payload")),
        }
    }
    Ok(out)
}

/// The first pkt-line of `input` and the bytes it takes, or None if `input` holds only part
/// of it (more must arrive).
pub fn split_first(input: &[u8]) -> Result<Option<(Pkt<'_>, usize)>, &'static str> {
    let Some(head) = input.get(..4) else {
        return Ok(None);
    };
    let text = std::str::from_utf8(head).map_err(|_| "length is not hex")?;
    let len = usize::from_str_radix(text, 16).map_err(|_| "length is not hex")?;
    let pkt = match len {
        0 => Pkt::Flush,
        1 => Pkt::Delim,
        2 => Pkt::ResponseEnd,
        3 => return Err("length 3 is reserved"),
        n => match input.get(4..n) {
            Some(payload) => return Ok(Some((Pkt::Data(payload), n))),
            None => return Ok(None),
        },
    };
    Ok(Some((pkt, 4)))
}

/// A data line as text without its trailing newline.
pub fn text(payload: &[u8]) -> String {
    let trimmed = payload.strip_suffix(b"\n").unwrap_or(payload);
    String::from_utf8_lossy(trimmed).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut buf = Vec::new();
        line(&mut buf, "command=ls-refs");
        delim(&mut buf);
        data(&mut buf, b"raw");
        flush(&mut buf);
        assert_eq!(&buf[..4], b"0014");
        let pkts = parse(&buf).expect("parse");
        assert_eq!(
            pkts,
            [
                Pkt::Data(b"command=ls-refs\n"),
                Pkt::Delim,
                Pkt::Data(b"raw"),
                Pkt::Flush
            ]
        );
        assert_eq!(text(b"version 2\n"), "version 2");
    }

    #[test]
    fn refuses_malformed_input() {
        assert!(parse(b"00").is_err());
        assert!(parse(b"zzzz").is_err());
        assert!(parse(b"0003").is_err());
        assert!(parse(b"0010short").is_err());
    }
}
