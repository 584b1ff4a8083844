//! The protobuf wire format, read in place: a message is a run of `(field number, wire
//! type, value)` triples, and every length-delimited value (strings, bytes, nested
//! messages) is a slice of the input. Nothing is copied or allocated; a malformed or
//! truncated input is an error at the first bad byte, never a panic.

/// Why protobuf bytes could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// The input ends inside a tag, a varint, a fixed-size value or a declared length.
    Truncated,
    /// A varint longer than ten bytes.
    VarintTooLong,
    /// A tag with field number 0.
    FieldZero,
    /// A wire type that is not 0, 1, 2 or 5 (groups, deprecated, are refused too).
    WireType(u8),
    /// A field has another wire type than its declaration.
    UnexpectedType {
        /// The field number.
        field: u32,
    },
    /// A `string` field is not UTF-8.
    InvalidUtf8,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Truncated => f.write_str("protobuf is truncated"),
            WireError::VarintTooLong => f.write_str("protobuf varint longer than 10 bytes"),
            WireError::FieldZero => f.write_str("protobuf field number 0"),
            WireError::WireType(t) => write!(f, "protobuf wire type {t} is not supported"),
            WireError::UnexpectedType { field } => write!(f, "protobuf field {field} has an unexpected wire type"),
            WireError::InvalidUtf8 => f.write_str("protobuf string is not UTF-8"),
        }
    }
}

impl std::error::Error for WireError {}

/// A field's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    /// Wire type 0.
    Varint(u64),
    /// Wire type 1.
    Fixed64(u64),
    /// Wire type 2: strings, bytes, nested messages, packed repeated scalars.
    Bytes(&'a [u8]),
    /// Wire type 5.
    Fixed32(u32),
}

impl<'a> Value<'a> {
    /// The bytes of a length-delimited field.
    #[inline]
    pub fn bytes(self, field: u32) -> Result<&'a [u8], WireError> {
        match self {
            Value::Bytes(b) => Ok(b),
            _ => Err(WireError::UnexpectedType { field }),
        }
    }

    /// A `string` field.
    #[inline]
    pub fn str(self, field: u32) -> Result<&'a str, WireError> {
        std::str::from_utf8(self.bytes(field)?).map_err(|_| WireError::InvalidUtf8)
    }

    /// A varint field.
    #[inline]
    pub fn varint(self, field: u32) -> Result<u64, WireError> {
        match self {
            Value::Varint(v) => Ok(v),
            _ => Err(WireError::UnexpectedType { field }),
        }
    }

    /// A `fixed64` (or `double`) field.
    #[inline]
    pub fn fixed64(self, field: u32) -> Result<u64, WireError> {
        match self {
            Value::Fixed64(v) => Ok(v),
            _ => Err(WireError::UnexpectedType { field }),
        }
    }
}

/// Reads a varint from the front of `buf`, advancing it.
#[inline]
pub fn varint(buf: &mut &[u8]) -> Result<u64, WireError> {
    // Tags, lengths and small integers are one or two bytes.
    match **buf {
        [b, ..] if b < 0x80 => {
            *buf = &buf[1..];
            Ok(u64::from(b))
        }
        [b0, b1, ..] if b1 < 0x80 => {
            *buf = &buf[2..];
            Ok(u64::from(b0 & 0x7f) | u64::from(b1) << 7)
        }
        _ => varint_long(buf),
    }
}

fn varint_long(buf: &mut &[u8]) -> Result<u64, WireError> {
    let mut v: u64 = 0;
    for (i, &b) in buf.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            *buf = &buf[i + 1..];
            return Ok(v);
        }
    }
    if buf.len() >= 10 {
        Err(WireError::VarintTooLong)
    } else {
        Err(WireError::Truncated)
    }
}

#[inline]
fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], WireError> {
    if buf.len() < n {
        return Err(WireError::Truncated);
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

/// The fields of one message, in order. After an error it yields nothing more.
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    buf: &'a [u8],
}

impl<'a> Fields<'a> {
    /// The fields of the message in `buf`.
    #[inline]
    pub fn new(buf: &'a [u8]) -> Fields<'a> {
        Fields { buf }
    }

    /// Bytes not read yet (the next field starts at `len - remaining`).
    #[inline]
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    #[inline(always)]
    fn read(&mut self) -> Result<(u32, Value<'a>), WireError> {
        let tag = varint(&mut self.buf)?;
        let field = u32::try_from(tag >> 3).map_err(|_| WireError::FieldZero)?;
        if field == 0 {
            return Err(WireError::FieldZero);
        }
        let value = match (tag & 7) as u8 {
            0 => Value::Varint(varint(&mut self.buf)?),
            1 => {
                let b = take(&mut self.buf, 8)?;
                Value::Fixed64(u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            }
            2 => {
                let len = varint(&mut self.buf)?;
                let len = usize::try_from(len).map_err(|_| WireError::Truncated)?;
                Value::Bytes(take(&mut self.buf, len)?)
            }
            5 => {
                let b = take(&mut self.buf, 4)?;
                Value::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            t => return Err(WireError::WireType(t)),
        };
        Ok((field, value))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Value<'a>), WireError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        let r = self.read();
        if r.is_err() {
            self.buf = &[];
        }
        Some(r)
    }
}

/// Appends a varint.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends a tag.
pub fn put_tag(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire_type));
}

/// Appends a length-delimited field.
pub fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_tag(out, field, 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_and_refuse_bad_bytes() {
        for v in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            let mut s = out.as_slice();
            assert_eq!(varint(&mut s), Ok(v));
            assert!(s.is_empty());
            let mut cut = &out[..out.len() - 1];
            assert_eq!(varint(&mut cut), Err(WireError::Truncated));
        }
        let mut long: &[u8] = &[0xff; 11];
        assert_eq!(varint(&mut long), Err(WireError::VarintTooLong));
    }

    #[test]
    fn fields_in_order_and_errors_stop_the_walk() {
        // 1: varint 150; 2: "hi"; 3: fixed64 7; 4: fixed32 9.
        let msg = [0x08, 0x96, 0x01, 0x12, 2, b'h', b'i', 0x19, 7, 0, 0, 0, 0, 0, 0, 0, 0x25, 9, 0, 0, 0];
        let got: Vec<_> = Fields::new(&msg).collect::<Result<_, _>>().expect("valid");
        assert_eq!(
            got,
            vec![(1, Value::Varint(150)), (2, Value::Bytes(b"hi")), (3, Value::Fixed64(7)), (4, Value::Fixed32(9))]
        );
        for (bad, want) in [
            (&[0x12, 5, b'h'][..], WireError::Truncated),
            (&[0x0b][..], WireError::WireType(3)),
            (&[0x00, 1][..], WireError::FieldZero),
            (&[0x19, 1, 2][..], WireError::Truncated),
        ] {
            let mut f = Fields::new(bad);
            assert_eq!(f.next(), Some(Err(want)));
            assert_eq!(f.next(), None);
        }
    }
}
