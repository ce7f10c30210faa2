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
        let head = input.get(..4).ok_or(err("truncated length"))?;
        let text = std::str::from_utf8(head).map_err(|_| err("length is not hex"))?;
        let len = usize::from_str_radix(text, 16).map_err(|_| err("length is not hex"))?;
        match len {
            0 => out.push(Pkt::Flush),
            1 => out.push(Pkt::Delim),
            2 => out.push(Pkt::ResponseEnd),
            3 => return Err(err("length 3 is reserved")),
            n => {
                let payload = input.get(4..n).ok_or(err("truncated payload"))?;
                out.push(Pkt::Data(payload));
                input = &input[n..];
                continue;
            }
        }
        input = &input[4..];
    }
    Ok(out)
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
