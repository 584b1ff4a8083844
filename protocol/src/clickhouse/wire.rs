//! Primitive encodings of the native protocol: LEB128 varints, length-prefixed strings,
//! little-endian fixed-width values.

/// The bytes at hand end before the value does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incomplete;

/// Appends a LEB128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Appends a varint-length-prefixed byte string.
pub fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s);
}

/// Reads primitives from a byte slice, tracking the position.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    /// Reads `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], Incomplete> {
        let end = self.pos.checked_add(n).ok_or(Incomplete)?;
        let s = self.buf.get(self.pos..end).ok_or(Incomplete)?;
        self.pos = end;
        Ok(s)
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> Result<u8, Incomplete> {
        Ok(self.bytes(1)?[0])
    }

    /// Reads a little-endian i32.
    pub fn i32(&mut self) -> Result<i32, Incomplete> {
        let b = self.bytes(4)?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Reads a little-endian u32.
    pub fn u32(&mut self) -> Result<u32, Incomplete> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Reads a LEB128 varint (at most 10 bytes).
    pub fn varint(&mut self) -> Result<u64, Incomplete> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Ok(v)
    }

    /// Reads a varint-length-prefixed byte string.
    pub fn str(&mut self) -> Result<&'a [u8], Incomplete> {
        let n = self.varint()?;
        self.bytes(usize::try_from(n).map_err(|_| Incomplete)?)
    }

    /// Reads a string as UTF-8 text (lossy).
    pub fn string(&mut self) -> Result<String, Incomplete> {
        Ok(String::from_utf8_lossy(self.str()?).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_and_match_leb128() {
        for (v, bytes) in [(0u64, vec![0u8]), (127, vec![0x7f]), (128, vec![0x80, 0x01]), (300, vec![0xac, 0x02])] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out, bytes);
            assert_eq!(Reader::new(&out).varint(), Ok(v));
        }
        let mut out = Vec::new();
        put_varint(&mut out, u64::MAX);
        assert_eq!(out.len(), 10);
        assert_eq!(Reader::new(&out).varint(), Ok(u64::MAX));
    }

    #[test]
    fn short_input_is_incomplete() {
        assert_eq!(Reader::new(&[0x80]).varint(), Err(Incomplete));
        assert_eq!(Reader::new(&[3, b'a']).str(), Err(Incomplete));
        let mut r = Reader::new(&[2, b'h', b'i', 9]);
        assert_eq!(r.str(), Ok(b"hi".as_slice()));
        assert_eq!(r.position(), 3);
    }
}
