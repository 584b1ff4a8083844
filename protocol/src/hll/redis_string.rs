//! Redis's HyperLogLog string encodings, read and written.
//!
//! Every HyperLogLog value in Redis is a string with a 16-byte header:
//!
//! | bytes | content |
//! |---|---|
//! | 0..4 | magic `HYLL` |
//! | 4 | encoding: 0 dense, 1 sparse |
//! | 5..8 | unused (Redis writes zeros and does not check them) |
//! | 8..16 | cached cardinality, little-endian; the top bit of byte 15 set means "stale" |
//!
//! **Dense** (12,288 bytes after the header): the 16,384 six-bit registers one after the
//! other, register `i` at bits `6i..6i+6` of the byte string read as one little-endian bit
//! stream (bit 0 of byte 0 first), so four registers fill three bytes.
//!
//! **Sparse** (any length after the header): run-length opcodes that must cover exactly
//! 16,384 registers:
//! - `00xxxxxx` ZERO: `xxxxxx + 1` registers (1–64) are 0;
//! - `01xxxxxx yyyyyyyy` XZERO: the 14-bit `xxxxxxyyyyyyyy + 1` registers (1–16,384) are 0;
//! - `1vvvvvxx` VAL: `xx + 1` registers (1–4) hold `vvvvv + 1` (1–32).
//!
//! Reading validates everything before a register is written: a malformed string is an
//! [`HllError`] and leaves the destination untouched. Redis accepts register values up to
//! 63 in a dense string (PFADD never writes more than 51); so do we, and the estimate of
//! such registers still equals Redis's.

use super::REGISTERS;

/// Length of the header.
pub const HEADER_LEN: usize = 16;
/// Bytes of the dense registers (16,384 × 6 bits).
pub const DENSE_REGISTERS_LEN: usize = REGISTERS * 6 / 8;
/// Length of a dense string: header and registers.
pub const DENSE_LEN: usize = HEADER_LEN + DENSE_REGISTERS_LEN;
/// Redis's default `hll-sparse-max-bytes`: a sparse string longer than this is made dense
/// by the next `PFADD`/`PFMERGE` that grows it.
pub const SPARSE_MAX_BYTES: usize = 3_000;
/// Largest register value the sparse encoding holds.
pub const SPARSE_MAX_VALUE: u8 = 32;

const MAGIC: &[u8; 4] = b"HYLL";
const STALE_BIT: u8 = 0x80;

/// The encoding byte of a HyperLogLog string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Six-bit registers, 12,288 bytes.
    Dense,
    /// Run-length opcodes.
    Sparse,
}

/// What the header of a valid HyperLogLog string says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// How the registers are encoded.
    pub encoding: Encoding,
    /// The cardinality Redis cached with the string, if it is marked current.
    pub cached_count: Option<u64>,
}

/// Why bytes are not a valid Redis HyperLogLog string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HllError {
    /// Shorter than the 16-byte header.
    TooShort {
        /// Length of the string.
        len: usize,
    },
    /// The first four bytes are not `HYLL`.
    BadMagic,
    /// The encoding byte is neither 0 (dense) nor 1 (sparse).
    UnknownEncoding(u8),
    /// A dense string is not exactly 12,304 bytes.
    DenseLength {
        /// Length of the string.
        len: usize,
    },
    /// A sparse XZERO opcode is cut off by the end of the string.
    SparseTruncated {
        /// Offset of the opcode in the string.
        offset: usize,
    },
    /// A sparse opcode runs past register 16,383.
    SparseOverflow {
        /// Offset of the opcode in the string.
        offset: usize,
    },
    /// The sparse opcodes end before covering all 16,384 registers.
    SparseIncomplete {
        /// Registers covered.
        covered: usize,
    },
}

impl std::fmt::Display for HllError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HllError::TooShort { len } => {
                write!(f, "HyperLogLog string of {len} bytes is shorter than the {HEADER_LEN}-byte header")
            }
            HllError::BadMagic => write!(f, "HyperLogLog string does not start with \"HYLL\""),
            HllError::UnknownEncoding(e) => {
                write!(f, "HyperLogLog encoding byte {e} is neither 0 (dense) nor 1 (sparse)")
            }
            HllError::DenseLength { len } => {
                write!(f, "dense HyperLogLog string of {len} bytes (expected {DENSE_LEN})")
            }
            HllError::SparseTruncated { offset } => {
                write!(f, "sparse HyperLogLog: XZERO opcode at byte {offset} is cut off")
            }
            HllError::SparseOverflow { offset } => {
                write!(f, "sparse HyperLogLog: opcode at byte {offset} runs past register {}", REGISTERS - 1)
            }
            HllError::SparseIncomplete { covered } => {
                write!(f, "sparse HyperLogLog: opcodes cover {covered} of {REGISTERS} registers")
            }
        }
    }
}

impl std::error::Error for HllError {}

/// Checks the header of `bytes` and, for a dense string, its length.
pub fn header(bytes: &[u8]) -> Result<Header, HllError> {
    let Some((head, _)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        return Err(HllError::TooShort { len: bytes.len() });
    };
    if &head[..4] != MAGIC {
        return Err(HllError::BadMagic);
    }
    let encoding = match head[4] {
        0 => Encoding::Dense,
        1 => Encoding::Sparse,
        e => return Err(HllError::UnknownEncoding(e)),
    };
    if encoding == Encoding::Dense && bytes.len() != DENSE_LEN {
        return Err(HllError::DenseLength { len: bytes.len() });
    }
    let mut card = [0u8; 8];
    card.copy_from_slice(&head[8..]);
    let cached_count = (head[15] & STALE_BIT == 0).then(|| u64::from_le_bytes(card));
    Ok(Header { encoding, cached_count })
}

/// Decodes a Redis HyperLogLog string into `out` (every register overwritten). On error
/// `out` is unchanged.
pub fn decode(bytes: &[u8], out: &mut [u8; REGISTERS]) -> Result<Header, HllError> {
    let head = header(bytes)?;
    let body = bytes.get(HEADER_LEN..).unwrap_or_default();
    match head.encoding {
        Encoding::Dense => unpack_dense(body, out),
        Encoding::Sparse => {
            check_sparse(body)?;
            out.fill(0);
            for_each_sparse_run(body, |first, len, value| {
                if let Some(run) = out.get_mut(first..first + len) {
                    run.fill(value);
                }
            });
        }
    }
    Ok(head)
}

/// Register-wise maximum of `registers` and the string `bytes`. On error `registers` is
/// unchanged.
pub fn merge_into(bytes: &[u8], registers: &mut [u8; REGISTERS]) -> Result<Header, HllError> {
    let head = header(bytes)?;
    let body = bytes.get(HEADER_LEN..).unwrap_or_default();
    match head.encoding {
        Encoding::Dense => {
            for (regs, packed) in registers.chunks_exact_mut(4).zip(body.chunks_exact(3)) {
                let word = u32::from(packed[0]) | u32::from(packed[1]) << 8 | u32::from(packed[2]) << 16;
                for (k, r) in regs.iter_mut().enumerate() {
                    *r = (*r).max(((word >> (6 * k)) & 63) as u8);
                }
            }
        }
        Encoding::Sparse => {
            check_sparse(body)?;
            for_each_sparse_run(body, |first, len, value| {
                if let Some(run) = registers.get_mut(first..first + len) {
                    for r in run {
                        *r = (*r).max(value);
                    }
                }
            });
        }
    }
    Ok(head)
}

/// Writes the dense string of `registers` to `out` (appended). `cached_count` is stored
/// as current when given (it must then be the registers' estimate, or Redis's `PFCOUNT`
/// returns it as it is), otherwise the cache is marked stale and Redis recomputes it.
pub fn encode_dense(registers: &[u8; REGISTERS], cached_count: Option<u64>, out: &mut Vec<u8>) {
    out.reserve(DENSE_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[0, 0, 0, 0]);
    match cached_count {
        Some(c) => out.extend_from_slice(&(c & !(1 << 63)).to_le_bytes()),
        None => out.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, STALE_BIT]),
    }
    let at = out.len();
    out.resize(at + DENSE_REGISTERS_LEN, 0);
    for (regs, packed) in registers.chunks_exact(4).zip(out[at..].chunks_exact_mut(3)) {
        let word = u32::from(regs[0] & 63)
            | u32::from(regs[1] & 63) << 6
            | u32::from(regs[2] & 63) << 12
            | u32::from(regs[3] & 63) << 18;
        packed[0] = word as u8;
        packed[1] = (word >> 8) as u8;
        packed[2] = (word >> 16) as u8;
    }
}

/// Writes the sparse string of `registers` to `out` (appended), its cached cardinality
/// marked stale, if it takes at most `max_len` bytes; false (and nothing written) if it
/// would take more, or if a register exceeds 32 (only the dense encoding holds it). Runs
/// of zeros become ZERO (up to 64) or XZERO opcodes, runs of a value VAL opcodes of up to
/// 4 registers.
pub fn encode_sparse(registers: &[u8; REGISTERS], max_len: usize, out: &mut Vec<u8>) -> bool {
    if registers.iter().any(|&r| r > SPARSE_MAX_VALUE) {
        return false;
    }
    let start = out.len();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0, 0, 0]);
    out.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, STALE_BIT]);
    let mut i = 0;
    while i < REGISTERS {
        let value = registers[i];
        let run = run_length(registers, i);
        let mut left = run;
        while left > 0 {
            if value == 0 && left > 64 {
                let n = left.min(REGISTERS);
                out.extend_from_slice(&[0x40 | ((n - 1) >> 8) as u8, ((n - 1) & 0xff) as u8]);
                left -= n;
            } else if value == 0 {
                out.push((left - 1) as u8);
                left = 0;
            } else {
                let n = left.min(4);
                out.push(0x80 | (value - 1) << 2 | (n - 1) as u8);
                left -= n;
            }
        }
        if out.len() - start > max_len {
            out.truncate(start);
            return false;
        }
        i += run;
    }
    true
}

/// How many registers from `i` on hold the value of register `i` (zeros skipped eight at
/// a time).
fn run_length(registers: &[u8; REGISTERS], i: usize) -> usize {
    let value = registers[i];
    let mut j = i + 1;
    if value == 0 {
        while let Some(chunk) = registers.get(j..j + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            if u64::from_le_bytes(word) != 0 {
                break;
            }
            j += 8;
        }
    }
    while j < REGISTERS && registers[j] == value {
        j += 1;
    }
    j - i
}

fn unpack_dense(body: &[u8], out: &mut [u8; REGISTERS]) {
    for (regs, packed) in out.chunks_exact_mut(4).zip(body.chunks_exact(3)) {
        let word = u32::from(packed[0]) | u32::from(packed[1]) << 8 | u32::from(packed[2]) << 16;
        for (k, r) in regs.iter_mut().enumerate() {
            *r = ((word >> (6 * k)) & 63) as u8;
        }
    }
}

/// One sparse opcode: its length in bytes, the registers it covers and their value.
#[inline]
fn opcode(body: &[u8], at: usize) -> Result<(usize, usize, u8), HllError> {
    let b = body.get(at).copied().unwrap_or(0);
    Ok(match b >> 6 {
        0b00 => (1, usize::from(b & 0x3f) + 1, 0),
        0b01 => {
            let Some(&low) = body.get(at + 1) else {
                return Err(HllError::SparseTruncated { offset: HEADER_LEN + at });
            };
            (2, (usize::from(b & 0x3f) << 8 | usize::from(low)) + 1, 0)
        }
        _ => (1, usize::from(b & 0x03) + 1, ((b >> 2) & 0x1f) + 1),
    })
}

/// Checks that the opcodes of a sparse body cover exactly 16,384 registers.
fn check_sparse(body: &[u8]) -> Result<(), HllError> {
    let (mut at, mut covered) = (0, 0);
    while at < body.len() {
        let (len, run, _) = opcode(body, at)?;
        covered += run;
        if covered > REGISTERS {
            return Err(HllError::SparseOverflow { offset: HEADER_LEN + at });
        }
        at += len;
    }
    if covered != REGISTERS {
        return Err(HllError::SparseIncomplete { covered });
    }
    Ok(())
}

/// Calls `f(first, len, value)` for each non-zero run of a sparse body already checked
/// by [`check_sparse`].
fn for_each_sparse_run(body: &[u8], mut f: impl FnMut(usize, usize, u8)) {
    let (mut at, mut first) = (0, 0);
    while at < body.len() {
        let Ok((len, run, value)) = opcode(body, at) else { return };
        if value != 0 {
            f(first, run, value);
        }
        first += run;
        at += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sparse(ops: &[u8]) -> Vec<u8> {
        let mut s = b"HYLL\x01\0\0\0\0\0\0\0\0\0\0\0".to_vec();
        s.extend_from_slice(ops);
        s
    }

    #[test]
    fn sparse_opcodes_set_the_registers_they_name() {
        // The example of Redis's documentation: XZERO:1000 VAL:2,1 ZERO:19 VAL:3,2 XZERO:15362.
        let xz = |n: usize| [0x40 | ((n - 1) >> 8) as u8, ((n - 1) & 0xff) as u8];
        let mut ops = xz(1000).to_vec();
        ops.push(0x80 | (2 - 1) << 2);
        ops.push(19 - 1);
        ops.push(0x80 | (3 - 1) << 2 | (2 - 1));
        ops.extend_from_slice(&xz(15362));
        let mut regs = [9u8; REGISTERS];
        decode(&sparse(&ops), &mut regs).unwrap();
        let nonzero: Vec<_> = regs.iter().enumerate().filter(|(_, &v)| v != 0).map(|(i, &v)| (i, v)).collect();
        assert_eq!(nonzero, vec![(1000, 2), (1020, 3), (1021, 3)]);
    }

    #[test]
    fn malformed_strings_are_errors_and_leave_registers_alone() {
        let mut regs = [7u8; REGISTERS];
        let cases: Vec<(Vec<u8>, HllError)> = vec![
            (b"HYLL".to_vec(), HllError::TooShort { len: 4 }),
            (b"HYLX\x01\0\0\0\0\0\0\0\0\0\0\0\x7f\xff".to_vec(), HllError::BadMagic),
            (b"HYLL\x02\0\0\0\0\0\0\0\0\0\0\0".to_vec(), HllError::UnknownEncoding(2)),
            (b"HYLL\x00\0\0\0\0\0\0\0\0\0\0\0".to_vec(), HllError::DenseLength { len: 16 }),
            (sparse(&[]), HllError::SparseIncomplete { covered: 0 }),
            (sparse(&[0x7f, 0xff, 0x00]), HllError::SparseOverflow { offset: 18 }),
            (sparse(&[0x7f, 0xfe, 0x40]), HllError::SparseTruncated { offset: 18 }),
            (sparse(&[0x7f, 0xfe, 0x83]), HllError::SparseOverflow { offset: 18 }),
        ];
        for (bytes, want) in cases {
            assert_eq!(decode(&bytes, &mut regs), Err(want.clone()));
            assert_eq!(merge_into(&bytes, &mut regs), Err(want.clone()));
            assert!(!want.to_string().is_empty());
        }
        assert!(regs.iter().all(|&r| r == 7));
    }

    #[test]
    fn dense_round_trips_every_value_at_every_bit_offset() {
        let mut regs = [0u8; REGISTERS];
        for (i, r) in regs.iter_mut().enumerate() {
            *r = ((i * 7 + i / 64) % 64) as u8;
        }
        let mut s = Vec::new();
        encode_dense(&regs, None, &mut s);
        assert_eq!(s.len(), DENSE_LEN);
        let mut back = [0u8; REGISTERS];
        let head = decode(&s, &mut back).unwrap();
        assert_eq!(head, Header { encoding: Encoding::Dense, cached_count: None });
        assert_eq!(back, regs);
        // Redis's bit order: register 1 starts at bit 6 of byte 0.
        let mut one = [0u8; REGISTERS];
        one[1] = 0b10_1101;
        let mut s = Vec::new();
        encode_dense(&one, Some(5), &mut s);
        assert_eq!(&s[16..19], &[0b0100_0000, 0b0000_1011, 0]);
        assert_eq!(header(&s).unwrap().cached_count, Some(5));
    }

    #[test]
    fn sparse_round_trips_and_refuses_values_above_32() {
        let mut regs = [0u8; REGISTERS];
        for i in [0, 1, 2, 3, 4, 5, 64, 200, 201, 16_383] {
            regs[i] = 1 + (i % 32) as u8;
        }
        regs[300..310].fill(7);
        let mut s = Vec::new();
        assert!(encode_sparse(&regs, usize::MAX, &mut s));
        let mut short = b"kept".to_vec();
        assert!(!encode_sparse(&regs, s.len() - 1, &mut short), "longer than allowed");
        assert_eq!(short, b"kept");
        let mut back = [9u8; REGISTERS];
        let head = decode(&s, &mut back).unwrap();
        assert_eq!(head, Header { encoding: Encoding::Sparse, cached_count: None });
        assert_eq!(back, regs);
        let mut empty = Vec::new();
        assert!(encode_sparse(&[0; REGISTERS], usize::MAX, &mut empty));
        assert_eq!(&empty[HEADER_LEN..], &[0x7f, 0xff], "one XZERO covers an empty sketch");
        regs[5] = 33;
        let mut none = Vec::new();
        assert!(!encode_sparse(&regs, usize::MAX, &mut none));
        assert!(none.is_empty());
    }
}
