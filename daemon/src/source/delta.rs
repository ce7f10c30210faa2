//! git's delta format: the base's size, the result's size, then instructions that copy a
//! range of the base or insert literal bytes. Pack entries that are deltas are applied here.

/// The result of applying `delta` to `base`.
pub fn apply(base: &[u8], delta: &[u8]) -> Result<Vec<u8>, String> {
    let (base_len, rest) = varint(delta)?;
    if base_len != base.len() as u64 {
        return Err(format!(
            "a delta for a base of {base_len} bytes, applied to {} bytes",
            base.len()
        ));
    }
    let (result_len, mut rest) = varint(rest)?;
    if result_len > super::MAX_IN_MEMORY {
        return Err(format!(
            "a delta announces a result of {result_len} bytes, more than is built in memory"
        ));
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
                .ok_or("a delta copies from outside its base")?;
            out.extend_from_slice(range);
        } else if op != 0 {
            let n = usize::from(op);
            let literal = rest.get(..n).ok_or("a delta's insert runs past its end")?;
            out.extend_from_slice(literal);
            rest = &rest[n..];
        } else {
            return Err("a delta uses the reserved instruction 0".into());
        }
        if out.len() as u64 > result_len {
            return Err(format!("a delta builds more than its {result_len} bytes"));
        }
    }
    if out.len() as u64 != result_len {
        return Err(format!(
            "a delta builds {} bytes, not its {result_len}",
            out.len()
        ));
    }
    Ok(out)
}

/// A size at the start of a delta: seven bits a byte, least significant first.
fn varint(data: &[u8]) -> Result<(u64, &[u8]), String> {
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
    Err("a delta's size is cut short or too big".into())
}

/// The little-endian number whose bytes `op` announces with `count` bits from bit `first`.
fn copy_field(mut data: &[u8], op: u8, first: u32, count: u32) -> Result<(u64, &[u8]), String> {
    let mut value = 0u64;
    for i in 0..count {
        if op & (1 << (first + i)) != 0 {
            let (&byte, rest) = data.split_first().ok_or("a delta's copy is cut short")?;
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
        assert!(err.contains("more than is built in memory"), "{err}");
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
        assert!(apply(base, &wrong_base).unwrap_err().contains("base of 11"));
        let outside = [10, 4, 0x91, 8, 4];
        assert!(apply(base, &outside).unwrap_err().contains("outside"));
        let long_insert = [10, 3, 5, b'a'];
        assert!(apply(base, &long_insert)
            .unwrap_err()
            .contains("past its end"));
        let too_much = [10, 1, 2, b'a', b'b'];
        assert!(apply(base, &too_much).unwrap_err().contains("more than"));
        let too_little = [10, 3, 1, b'a'];
        assert!(apply(base, &too_little).unwrap_err().contains("not its 3"));
        assert!(apply(base, &[10, 0, 0]).unwrap_err().contains("reserved"));
        assert!(apply(base, &[0xff; 12]).unwrap_err().contains("too big"));
    }
}
