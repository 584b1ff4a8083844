//! Blocks: named, typed columns of equal length, in the native format.
//!
//! Encoders cover the types of the analytics schema: fixed-width numbers, `Date`,
//! `DateTime`, `UUID` and `FixedString(N)` ([`ColumnData::Fixed`]), `String`,
//! `LowCardinality(String)`, `Nullable(T)` and `Array(T)`. Rows are appended as they are
//! read from the stream batches; [`write_block`] then lays the block out.

use std::collections::HashMap;

use super::rev;
use super::wire::{put_str, put_varint, Incomplete, Reader};

/// LowCardinality: keys version "shared dictionaries with additional keys".
const LC_KEYS_VERSION: u64 = 1;
/// LowCardinality: the column carries its own keys.
const LC_HAS_ADDITIONAL_KEYS: u64 = 1 << 9;
/// LowCardinality: the dictionary is replaced by this granule's keys.
const LC_NEED_UPDATE_DICTIONARY: u64 = 1 << 10;

/// The values of one column.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnData {
    /// Fixed-width values, already little-endian: `UInt*`, `Int*`, `Float*`, `Date`,
    /// `DateTime`, `UUID`, `FixedString(N)`.
    Fixed {
        /// Bytes per value.
        width: usize,
        /// The values back to back.
        bytes: Vec<u8>,
    },
    /// `String`: each value varint-length-prefixed.
    String(Vec<u8>),
    /// `LowCardinality(String)`: a dictionary of distinct values and one index per row.
    LowCardinality(LowCardinality),
    /// `Nullable(T)`: a null flag per row, then every row of the inner column.
    Nullable {
        /// 1 = null.
        nulls: Vec<u8>,
        /// The values (a default where null).
        inner: Box<ColumnData>,
    },
    /// `Array(T)`: cumulative end offsets, then the flattened values.
    Array {
        /// End offset of each row in `inner`.
        offsets: Vec<u64>,
        /// All elements.
        inner: Box<ColumnData>,
    },
}

/// Dictionary-encoded strings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LowCardinality {
    keys: Vec<Vec<u8>>,
    /// foldhash: short strings hashed once per row, where SipHash took 2 % of croupier's
    /// CPU at max load. Its per-process seed keeps flooding with chosen keys impractical.
    positions: HashMap<Vec<u8>, u32, foldhash::fast::RandomState>,
    indexes: Vec<u32>,
}

impl LowCardinality {
    /// Appends a value.
    pub fn push(&mut self, v: &[u8]) {
        let idx = match self.positions.get(v) {
            Some(i) => *i,
            None => {
                let i = self.keys.len() as u32;
                self.keys.push(v.to_vec());
                self.positions.insert(v.to_vec(), i);
                i
            }
        };
        self.indexes.push(idx);
    }

    fn clear(&mut self) {
        self.keys.clear();
        self.positions.clear();
        self.indexes.clear();
    }
}

impl ColumnData {
    /// An empty column of fixed-width values.
    pub fn fixed(width: usize) -> Self {
        ColumnData::Fixed { width, bytes: Vec::new() }
    }

    /// Appends a fixed-width value (`bytes.len()` must be the width).
    pub fn push_fixed(&mut self, v: &[u8]) {
        if let ColumnData::Fixed { bytes, .. } = self {
            bytes.extend_from_slice(v);
        }
    }

    /// Appends a string to a `String` or `LowCardinality(String)` column.
    pub fn push_str(&mut self, v: &[u8]) {
        match self {
            ColumnData::String(b) => put_str(b, v),
            ColumnData::LowCardinality(lc) => lc.push(v),
            _ => {}
        }
    }

    /// Empties the column, keeping its allocations.
    pub fn clear(&mut self) {
        match self {
            ColumnData::Fixed { bytes, .. } => bytes.clear(),
            ColumnData::String(b) => b.clear(),
            ColumnData::LowCardinality(lc) => lc.clear(),
            ColumnData::Nullable { nulls, inner } => {
                nulls.clear();
                inner.clear();
            }
            ColumnData::Array { offsets, inner } => {
                offsets.clear();
                inner.clear();
            }
        }
    }

    /// Bytes held (an estimate of the encoded size).
    pub fn byte_len(&self) -> usize {
        match self {
            ColumnData::Fixed { bytes, .. } => bytes.len(),
            ColumnData::String(b) => b.len(),
            ColumnData::LowCardinality(lc) => lc.indexes.len() * 4 + lc.keys.iter().map(|k| k.len() + 1).sum::<usize>(),
            ColumnData::Nullable { nulls, inner } => nulls.len() + inner.byte_len(),
            ColumnData::Array { offsets, inner } => offsets.len() * 8 + inner.byte_len(),
        }
    }

    fn write_prefix(&self, out: &mut Vec<u8>) {
        match self {
            ColumnData::LowCardinality(_) => out.extend_from_slice(&LC_KEYS_VERSION.to_le_bytes()),
            ColumnData::Nullable { inner, .. } | ColumnData::Array { inner, .. } => inner.write_prefix(out),
            _ => {}
        }
    }

    fn write_data(&self, out: &mut Vec<u8>) {
        match self {
            ColumnData::Fixed { bytes, .. } => out.extend_from_slice(bytes),
            ColumnData::String(b) => out.extend_from_slice(b),
            ColumnData::LowCardinality(lc) => {
                let (index_type, width) = match lc.keys.len() {
                    0..=0x100 => (0u64, 1usize),
                    0x101..=0x1_0000 => (1, 2),
                    _ => (2, 4),
                };
                let flags = index_type | LC_HAS_ADDITIONAL_KEYS | LC_NEED_UPDATE_DICTIONARY;
                out.extend_from_slice(&flags.to_le_bytes());
                out.extend_from_slice(&(lc.keys.len() as u64).to_le_bytes());
                for k in &lc.keys {
                    put_str(out, k);
                }
                out.extend_from_slice(&(lc.indexes.len() as u64).to_le_bytes());
                for i in &lc.indexes {
                    out.extend_from_slice(&i.to_le_bytes()[..width]);
                }
            }
            ColumnData::Nullable { nulls, inner } => {
                out.extend_from_slice(nulls);
                inner.write_data(out);
            }
            ColumnData::Array { offsets, inner } => {
                for o in offsets {
                    out.extend_from_slice(&o.to_le_bytes());
                }
                inner.write_data(out);
            }
        }
    }
}

/// A named, typed column.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// Column name in the table.
    pub name: String,
    /// ClickHouse type name (`LowCardinality(String)`, `UUID`, ...).
    pub ty: String,
    /// Values.
    pub data: ColumnData,
}

impl Column {
    /// A new empty column.
    pub fn new(name: &str, ty: &str, data: ColumnData) -> Self {
        Column { name: name.to_owned(), ty: ty.to_owned(), data }
    }
}

/// Writes a block (block info, sizes, then each column) to `out`. With zero rows the
/// columns carry no data: the block is a header.
pub fn write_block(out: &mut Vec<u8>, revision: u64, columns: &[Column], rows: usize) {
    if revision >= rev::BLOCK_INFO {
        put_varint(out, 1);
        out.push(0); // is_overflows
        put_varint(out, 2);
        out.extend_from_slice(&(-1i32).to_le_bytes()); // bucket_num
        put_varint(out, 0);
    }
    put_varint(out, columns.len() as u64);
    put_varint(out, rows as u64);
    for c in columns {
        put_str(out, c.name.as_bytes());
        put_str(out, c.ty.as_bytes());
        if rows > 0 {
            c.data.write_prefix(out);
            c.data.write_data(out);
        }
    }
}

/// The shape of a block the server sent: column names and types, and its row count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockHeader {
    /// `(name, type)` of each column.
    pub columns: Vec<(String, String)>,
    /// Rows in the block.
    pub rows: u64,
}

/// Why a block could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockError {
    /// More bytes are needed.
    Incomplete,
    /// The block carries rows, which this client never asks for and cannot skip.
    UnexpectedRows(u64),
    /// A result column of a type this client does not decode (names it).
    UnsupportedType(String),
}

impl From<Incomplete> for BlockError {
    fn from(_: Incomplete) -> Self {
        BlockError::Incomplete
    }
}

/// Reads a block that carries no rows (the header the server sends before an INSERT,
/// and the empty blocks around query results).
pub fn read_empty_block(r: &mut Reader<'_>, revision: u64) -> Result<BlockHeader, BlockError> {
    if revision >= rev::BLOCK_INFO {
        loop {
            match r.varint()? {
                0 => break,
                1 => {
                    r.u8()?;
                }
                2 => {
                    r.i32()?;
                }
                _ => break,
            }
        }
    }
    let ncols = r.varint()?;
    let rows = r.varint()?;
    if rows > 0 {
        return Err(BlockError::UnexpectedRows(rows));
    }
    let mut columns = Vec::with_capacity(ncols.min(1024) as usize);
    for _ in 0..ncols {
        let name = r.string()?;
        let ty = r.string()?;
        columns.push((name, ty));
    }
    Ok(BlockHeader { columns, rows })
}

/// Encodes a UUID (RFC 4122 byte order) as ClickHouse stores it: two little-endian
/// 64-bit halves, high half first.
pub fn uuid_bytes(u: &[u8; 16]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for i in 0..8 {
        out[i] = u[7 - i];
        out[8 + i] = u[15 - i];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_blocks_round_trip() {
        let cols = vec![
            Column::new("a", "UInt32", ColumnData::fixed(4)),
            Column::new("b", "LowCardinality(String)", ColumnData::LowCardinality(LowCardinality::default())),
        ];
        let mut out = Vec::new();
        write_block(&mut out, 54412, &cols, 0);
        let h = read_empty_block(&mut Reader::new(&out), 54412).expect("header");
        assert_eq!(h.columns, vec![("a".into(), "UInt32".into()), ("b".into(), "LowCardinality(String)".into())]);
    }

    #[test]
    fn low_cardinality_layout() {
        let mut lc = ColumnData::LowCardinality(LowCardinality::default());
        for v in [b"x".as_slice(), b"y", b"x"] {
            lc.push_str(v);
        }
        let mut out = Vec::new();
        lc.write_prefix(&mut out);
        lc.write_data(&mut out);
        let mut want = Vec::new();
        want.extend_from_slice(&1u64.to_le_bytes());
        want.extend_from_slice(&((1u64 << 9) | (1 << 10)).to_le_bytes());
        want.extend_from_slice(&2u64.to_le_bytes());
        want.extend_from_slice(b"\x01x\x01y");
        want.extend_from_slice(&3u64.to_le_bytes());
        want.extend_from_slice(&[0, 1, 0]);
        assert_eq!(out, want);
    }

    #[test]
    fn uuid_halves_are_reversed() {
        let u: [u8; 16] = core::array::from_fn(|i| i as u8);
        assert_eq!(uuid_bytes(&u), [7, 6, 5, 4, 3, 2, 1, 0, 15, 14, 13, 12, 11, 10, 9, 8]);
    }
}
