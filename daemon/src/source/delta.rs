//! git's delta format: the base's size, the result's size, then instructions that copy a
//! range of the base or insert literal bytes. Pack entries that are deltas are applied here.

/// Why a delta could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error("a delta for a base of {expected} bytes, applied to {actual} bytes")]
    WrongBase { expected: u64, actual: u64 },
    #[error("a delta announces a result of {0} bytes, more than is built in memory")]
    TooBig(u64),
    #[error("a delta's size is cut short or too big")]
    BadSize,
    #[error("a delta copies from outside its base")]
    CopyOutside,
    #[error("a delta's copy is cut short")]
    CopyCutShort,
    #[error("a delta's insert runs past its end")]
    InsertPastEnd,
    #[error("a delta uses the reserved instruction 0")]
    Reserved,
    #[error("a delta builds more than its {0} bytes")]
    TooLong(u64),
    #[error("a delta builds {built} bytes, not its {announced}")]
    WrongLength { built: u64, announced: u64 },
}

/// The result of applying `delta` to `base`.
pub fn apply(base: &[u8], delta: &[u8]) -> Result<Vec<u8>, DeltaError> {
    let (base_len, rest) = varint(delta)?;
    if base_len != base.len() as u64 {
        return Err(DeltaError::WrongBase {
            expected: base_len,
            actual: base.len() as u64,
        });
    }
    let (result_len, mut rest) = varint(rest)?;
    if result_len > super::MAX_IN_MEMORY {
        return Err(DeltaError::TooBig(result_len));
    }
    // The announced size is the server's word: reserve only what is sure to be needed soon.
    let mut out = Vec::with_capacity(result_len.min(1 << 20) as usize);
    while let Some((&op, after)) = rest.split_first() {
        rest = after;
        if op & 0x80 != 0 {
            let (offset, after) = copy_field(rest, op, 0, 4)?;
            let (size, after) = copy_field(after, op, 4, 3)?;
            rest = after;
            let size = if size == 0 { 0x10000 } else { size };
            let range = usize::try_from(offset)
                .ok()
                .zip(usize::try_from(offset.saturating_add(size)).ok())
                .and_then(|(start, end)| base.get(start..end))
                .ok_or(DeltaError::CopyOutside)?;
            out.extend_from_slice(range);
        } else if op != 0 {
            let n = usize::from(op);
            let literal = rest.get(..n).ok_or(DeltaError::InsertPastEnd)?;
            out.extend_from_slice(literal);
            rest = &rest[n..];
        } else {
            return Err(DeltaError::Reserved);
        }
        if out.len() as u64 > result_len {
            return Err(DeltaError::TooLong(result_len));
        }
    }
    if out.len() as u64 != result_len {
        return Err(DeltaError::WrongLength {
            built: out.len() as u64,
            announced: result_len,
        });
    }
    Ok(out)
}

/// A size at the start of a delta: seven bits a byte, least significant first.
fn varint(data: &[u8]) -> Result<(u64, &[u8]), DeltaError> {
    let mut value = 0u64;
    for (i, byte) in data.iter().enumerate().take(10) {
        let bits = u64::from(byte & 0x7f);
        let shift = 7 * i as u32;
        if shift > 63 || (shift > 57 && bits >> (64 - shift) != 0) {
            break;
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            return Ok((value, &data[i + 1..]));
        }
    }
    Err(DeltaError::BadSize)
}

/// The little-endian number whose bytes `op` announces with `count` bits from bit `first`.
fn copy_field(mut data: &[u8], op: u8, first: u32, count: u32) -> Result<(u64, &[u8]), DeltaError> {
    let mut value = 0u64;
    for i in 0..count {
        if op & (1 << (first + i)) != 0 {
            let (&byte, rest) = data.split_first().ok_or(DeltaError::CopyCutShort)?;
            value |= u64::from(byte) << (8 * i);
            data = rest;
        }
    }
    Ok((value, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delta_announcing_a_huge_result_is_refused() {
        // Base of 1 byte; result of 2^40 bytes (varint), then copy instructions would follow.
        let delta = [1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x20];
        let err = apply(b"x", &delta).expect_err("too big");
        assert_eq!(err, DeltaError::TooBig(1 << 40));
    }

    #[test]
    fn copies_and_inserts() {
        let base = b"0123456789abcdef";
        // base 16, result 9: copy 4 bytes from offset 10, insert "XYZ", copy 2 from offset 0.
        let delta = [16, 9, 0x91, 10, 4, 3, b'X', b'Y', b'Z', 0x90, 2];
        assert_eq!(apply(base, &delta).unwrap(), b"abcdXYZ01");
        // A copy of size 0 means 0x10000.
        let big = vec![7u8; 0x10000];
        let delta = [0x80, 0x80, 0x04, 0x80, 0x80, 0x04, 0x80];
        assert_eq!(apply(&big, &delta).unwrap(), big);
    }

    #[test]
    fn refuses_deltas_that_do_not_fit() {
        let base = b"0123456789";
        let wrong_base = [11, 1, 1, b'x'];
        assert!(apply(base, &wrong_base)
            .unwrap_err()
            .to_string()
            .contains("base of 11"));
        let outside = [10, 4, 0x91, 8, 4];
        assert_eq!(apply(base, &outside), Err(DeltaError::CopyOutside));
        let long_insert = [10, 3, 5, b'a'];
        assert_eq!(apply(base, &long_insert), Err(DeltaError::InsertPastEnd));
        let too_much = [10, 1, 2, b'a', b'b'];
        assert_eq!(apply(base, &too_much), Err(DeltaError::TooLong(1)));
        let too_little = [10, 3, 1, b'a'];
        assert!(apply(base, &too_little)
            .unwrap_err()
            .to_string()
            .contains("not its 3"));
        assert_eq!(apply(base, &[10, 0, 0]), Err(DeltaError::Reserved));
        assert_eq!(apply(base, &[0xff; 12]), Err(DeltaError::BadSize));
    }
}
