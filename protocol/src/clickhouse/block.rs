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
    /// `String`: each value varint-length-prefixed, and where each starts.
    String(Strings),
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

/// `String` values as the native format lays them out (each one's varint length, then its
/// bytes, back to back), with where each value starts, recorded as it is pushed: writing
/// the rows in another order needs every value's place, and finding them again by walking
/// the length prefixes was a twentieth of a worker's CPU (perf/CHANGES.md).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Strings {
    bytes: Vec<u8>,
    /// Where each value's length prefix starts in `bytes`; the last value ends at its end.
    starts: Vec<u32>,
    /// A value started past what a `u32` offset holds (4 GiB): the starts are incomplete,
    /// and the column can only be written as pushed.
    beyond_offsets: bool,
}

impl Strings {
    /// Appends a value.
    pub fn push(&mut self, v: &[u8]) {
        match u32::try_from(self.bytes.len()) {
            Ok(at) => self.starts.push(at),
            Err(_) => self.beyond_offsets = true,
        }
        put_str(&mut self.bytes, v);
    }

    /// Where each value starts in the encoded values, when every start fits a `u32`.
    pub(crate) fn starts(&self) -> Option<&[u32]> {
        (!self.beyond_offsets).then_some(&self.starts)
    }

    /// Value `row` with its length prefix (empty past the last row).
    pub(crate) fn encoded_value(&self, row: usize) -> &[u8] {
        let end = self.starts.get(row + 1).map_or(self.bytes.len(), |&e| e as usize);
        self.starts.get(row).and_then(|&s| self.bytes.get(s as usize..end)).unwrap_or_default()
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.starts.clear();
        self.beyond_offsets = false;
    }

    /// Values whose encoding and starts disagree, for tests of what a writer does with
    /// data it cannot order.
    #[cfg(test)]
    pub(crate) fn inconsistent(bytes: Vec<u8>, starts: Vec<u32>) -> Self {
        Strings { bytes, starts, beyond_offsets: false }
    }
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
        // The rows of one request share their game and environment, often more: the value
        // of the row before is compared first, without hashing.
        if let Some(&last) = self.indexes.last() {
            if self.keys.get(last as usize).is_some_and(|k| k.as_slice() == v) {
                self.indexes.push(last);
                return;
            }
        }
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

    /// The distinct values, in the order they were first pushed.
    pub(crate) fn keys(&self) -> &[Vec<u8>] {
        &self.keys
    }

    /// Each row's index into [`LowCardinality::keys`].
    pub(crate) fn indexes(&self) -> &[u32] {
        &self.indexes
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
            ColumnData::String(s) => s.push(v),
            ColumnData::LowCardinality(lc) => lc.push(v),
            _ => {}
        }
    }

    /// Empties the column, keeping its allocations.
    pub fn clear(&mut self) {
        match self {
            ColumnData::Fixed { bytes, .. } => bytes.clear(),
            ColumnData::String(s) => s.clear(),
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
            ColumnData::String(s) => s.bytes.len(),
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

    /// Whether the column holds exactly `rows` well-formed values, so that it can be
    /// written in another order.
    pub(crate) fn holds(&self, rows: usize) -> bool {
        match self {
            ColumnData::Fixed { width, bytes } => rows.checked_mul(*width) == Some(bytes.len()),
            ColumnData::String(s) => s.starts().is_some_and(|starts| {
                starts.len() == rows
                    && starts.first().is_none_or(|&first| first == 0)
                    && starts.windows(2).all(|w| w[0] <= w[1])
                    && starts.last().is_none_or(|&last| last as usize <= s.bytes.len())
            }),
            ColumnData::LowCardinality(lc) => lc.indexes.len() == rows,
            ColumnData::Nullable { nulls, inner } => nulls.len() == rows && inner.holds(rows),
            ColumnData::Array { offsets, inner } => {
                rows == 0
                    || (offsets.len() == rows
                        && offsets.windows(2).all(|w| w[0] <= w[1])
                        && offsets.last().and_then(|&n| u32::try_from(n).ok()).is_some_and(|n| inner.holds(n as usize)))
            }
        }
    }

    /// Writes the values, in `order` when given (checked by [`ColumnData::holds`]).
    fn write_data(&self, out: &mut Vec<u8>, order: Option<&[u32]>) {
        match self {
            ColumnData::Fixed { bytes, width } => match order {
                None => out.extend_from_slice(bytes),
                Some(order) => match *width {
                    2 => gather_fixed::<2>(out, bytes, order),
                    4 => gather_fixed::<4>(out, bytes, order),
                    8 => gather_fixed::<8>(out, bytes, order),
                    16 => gather_fixed::<16>(out, bytes, order),
                    width => {
                        out.reserve(bytes.len());
                        for &i in order {
                            let i = i as usize;
                            out.extend_from_slice(bytes.get(i * width..(i + 1) * width).unwrap_or_default());
                        }
                    }
                },
            },
            ColumnData::String(s) => match order.zip(s.starts()) {
                None => out.extend_from_slice(&s.bytes),
                Some((order, starts)) => gather_strings(out, &s.bytes, starts, order),
            },
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
                let index = |r: &u32| lc.indexes.get(*r as usize).copied().unwrap_or(0);
                // Each index at the width the flags name, as a value of that width rather
                // than a slice of a runtime length (a call per row).
                match (order, width) {
                    (None, 1) => out.extend(lc.indexes.iter().map(|&i| i as u8)),
                    (None, 2) => lc.indexes.iter().for_each(|&i| out.extend_from_slice(&(i as u16).to_le_bytes())),
                    (None, _) => lc.indexes.iter().for_each(|&i| out.extend_from_slice(&i.to_le_bytes())),
                    (Some(order), 1) => out.extend(order.iter().map(|r| index(r) as u8)),
                    (Some(order), 2) => {
                        order.iter().for_each(|r| out.extend_from_slice(&(index(r) as u16).to_le_bytes()))
                    }
                    (Some(order), _) => order.iter().for_each(|r| out.extend_from_slice(&index(r).to_le_bytes())),
                }
            }
            ColumnData::Nullable { nulls, inner } => {
                match order {
                    None => out.extend_from_slice(nulls),
                    Some(order) => out.extend(order.iter().map(|&r| nulls.get(r as usize).copied().unwrap_or(0))),
                }
                inner.write_data(out, order);
            }
            ColumnData::Array { offsets, inner } => match order {
                None => {
                    for o in offsets {
                        out.extend_from_slice(&o.to_le_bytes());
                    }
                    inner.write_data(out, None);
                }
                Some(order) => {
                    // Each row's elements, in the rows' new order.
                    let range = |r: usize| {
                        let end = offsets.get(r).copied().unwrap_or(0);
                        let start = if r == 0 { 0 } else { offsets.get(r - 1).copied().unwrap_or(end) };
                        start.min(end)..end
                    };
                    let mut elements = Vec::new();
                    let mut end = 0u64;
                    for &r in order {
                        let rows = range(r as usize);
                        end += rows.end - rows.start;
                        out.extend_from_slice(&end.to_le_bytes());
                        elements.extend(rows.map(|e| e as u32));
                    }
                    inner.write_data(out, Some(&elements));
                }
            },
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
    write_block_in_order(out, revision, columns, rows, None);
}

/// [`write_block`] with the rows in `order` (indexes of the rows as pushed, each once;
/// from [`super::order::sort_order`]); `None`, or an order of another length than `rows`,
/// writes them as pushed.
pub fn write_block_in_order(out: &mut Vec<u8>, revision: u64, columns: &[Column], rows: usize, order: Option<&[u32]>) {
    let order = order.filter(|o| o.len() == rows && is_permutation(o) && columns.iter().all(|c| c.data.holds(rows)));
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
        if rows == 0 {
            continue;
        }
        c.data.write_prefix(out);
        c.data.write_data(out, order);
    }
}

/// Whether `order` holds each of `0..order.len()` once: anything else would drop a row and
/// repeat another.
fn is_permutation(order: &[u32]) -> bool {
    let mut seen = vec![false; order.len()];
    order.iter().all(|&i| seen.get_mut(i as usize).is_some_and(|s| !std::mem::replace(s, true)))
}

/// Writes fixed-width values of `W` bytes (`bytes`, back to back) in `order`: a copy of a
/// known size per row, where a slice of the column's runtime width was a call to `memcpy`.
fn gather_fixed<const W: usize>(out: &mut Vec<u8>, bytes: &[u8], order: &[u32]) {
    out.reserve(order.len() * W);
    for &i in order {
        let i = i as usize;
        if let Some(v) = bytes.get(i * W..(i + 1) * W).and_then(|v| <&[u8; W]>::try_from(v).ok()) {
            out.extend_from_slice(v);
        }
    }
}

/// Values up to this many bytes are gathered as a window of this fixed size (a few vector
/// moves, no call to `memcpy`), the bytes past the value cut off again: most values
/// (their length prefix included) are ids, names and versions that short, and a call per
/// value was a tenth of a worker's CPU (perf/CHANGES.md).
const SHORT_VALUE: usize = 32;

/// Writes a `String` column's values (`bytes`, value `i` starting at `starts[i]` and
/// ending where the next starts, the last at the end of `bytes`) in `order`.
fn gather_strings(out: &mut Vec<u8>, bytes: &[u8], starts: &[u32], order: &[u32]) {
    // Room for every value and for one window past the last: nothing moves while gathering.
    out.reserve(bytes.len() + SHORT_VALUE);
    for &i in order {
        let i = i as usize;
        let end = starts.get(i + 1).map_or(bytes.len(), |&e| e as usize);
        let start = match starts.get(i) {
            Some(&s) if s as usize <= end && end <= bytes.len() => s as usize,
            _ => continue,
        };
        if end - start <= SHORT_VALUE {
            if let Some(window) =
                bytes.get(start..start + SHORT_VALUE).and_then(|w| <&[u8; SHORT_VALUE]>::try_from(w).ok())
            {
                let at = out.len();
                out.extend_from_slice(window);
                out.truncate(at + (end - start));
                continue;
            }
        }
        out.extend_from_slice(bytes.get(start..end).unwrap_or_default());
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
        lc.write_data(&mut out, None);
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

    /// Columns of each kind with `rows` pushed in the given order.
    fn pushed(rows: &[(u32, &str, Option<&str>, &[u8])]) -> Vec<Column> {
        let mut cols = vec![
            Column::new("n", "UInt32", ColumnData::fixed(4)),
            Column::new("s", "String", ColumnData::String(Strings::default())),
            Column::new(
                "ns",
                "Nullable(String)",
                ColumnData::Nullable { nulls: Vec::new(), inner: Box::new(ColumnData::String(Strings::default())) },
            ),
            Column::new(
                "a",
                "Array(UInt8)",
                ColumnData::Array { offsets: Vec::new(), inner: Box::new(ColumnData::fixed(1)) },
            ),
        ];
        for &(n, s, ns, a) in rows {
            cols[0].data.push_fixed(&n.to_le_bytes());
            cols[1].data.push_str(s.as_bytes());
            if let ColumnData::Nullable { nulls, inner } = &mut cols[2].data {
                nulls.push(u8::from(ns.is_none()));
                inner.push_str(ns.unwrap_or_default().as_bytes());
            }
            if let ColumnData::Array { offsets, inner } = &mut cols[3].data {
                a.iter().for_each(|b| inner.push_fixed(&[*b]));
                offsets.push(offsets.last().copied().unwrap_or(0) + a.len() as u64);
            }
        }
        cols
    }

    #[test]
    fn a_block_written_in_an_order_is_the_block_of_its_rows_pushed_in_that_order() {
        let rows: [(u32, &str, Option<&str>, &[u8]); 4] = [
            (1, "one", None, &[1]),
            (2, "", Some("two"), &[]),
            (3, "a longer third value", Some(""), &[3, 3, 3]),
            (4, "4", None, &[4, 4]),
        ];
        let order = [2u32, 0, 3, 1];
        let mut written = Vec::new();
        write_block_in_order(&mut written, 54412, &pushed(&rows), 4, Some(&order));
        let reordered: Vec<_> = order.iter().map(|&i| rows[i as usize]).collect();
        let mut want = Vec::new();
        write_block(&mut want, 54412, &pushed(&reordered), 4);
        assert_eq!(written, want);
        // An order of another length, or a column not holding the rows, is not taken.
        let mut as_pushed = Vec::new();
        write_block(&mut as_pushed, 54412, &pushed(&rows), 4);
        let mut short = Vec::new();
        write_block_in_order(&mut short, 54412, &pushed(&rows), 4, Some(&order[..3]));
        assert_eq!(short, as_pushed);
        for not_a_permutation in [[2u32, 0, 2, 1], [0, 1, 2, 4]] {
            let mut out = Vec::new();
            write_block_in_order(&mut out, 54412, &pushed(&rows), 4, Some(&not_a_permutation));
            assert_eq!(out, as_pushed, "{not_a_permutation:?}");
        }
        let mut broken = pushed(&rows);
        broken[1].data = ColumnData::String(Strings::inconsistent(vec![9, b'x'], vec![0, 1, 2, 3]));
        let (mut a, mut b) = (Vec::new(), Vec::new());
        write_block_in_order(&mut a, 54412, &broken, 4, Some(&order));
        write_block(&mut b, 54412, &broken, 4);
        assert_eq!(a, b);
    }

    #[test]
    fn every_width_written_in_an_order_is_the_column_pushed_in_that_order() {
        // Fixed widths with a copy of their own size (2, 4, 8, 16) and one without (3);
        // dictionaries whose indexes take 1, 2 and 4 bytes; pairs of rows with the same
        // value (the dictionary's shortcut for the row before) between distinct ones.
        let rows = 160_000usize;
        let value = |r: usize| if r.is_multiple_of(5) { 7 } else { r / 2 };
        let fill = |order: &mut dyn Iterator<Item = usize>| {
            let mut cols: Vec<Column> = [2usize, 3, 4, 8, 16]
                .iter()
                .map(|&w| Column::new(&format!("f{w}"), &format!("FixedString({w})"), ColumnData::fixed(w)))
                .collect();
            for distinct in [200usize, 3_000, 100_000] {
                let lc = ColumnData::LowCardinality(LowCardinality::default());
                cols.push(Column::new(&format!("lc{distinct}"), "LowCardinality(String)", lc));
            }
            for r in order {
                for c in cols.iter_mut() {
                    let v = value(r);
                    match &mut c.data {
                        ColumnData::Fixed { width, .. } => {
                            let w = *width;
                            c.data.push_fixed(format!("{v:0w$}").as_bytes().get(..w).unwrap_or_default());
                        }
                        data => data.push_str(format!("{}", v % c.name[2..].parse::<usize>().unwrap_or(1)).as_bytes()),
                    }
                }
            }
            cols
        };
        let order: Vec<u32> = (0..rows as u32).map(|i| (i * 7_919) % rows as u32).collect();
        let pushed = fill(&mut (0..rows));
        let keys: Vec<usize> = pushed
            .iter()
            .filter_map(|c| match &c.data {
                ColumnData::LowCardinality(lc) => Some(lc.keys().len()),
                _ => None,
            })
            .collect();
        assert_eq!(keys, [200, 3_000, 80_000], "one dictionary of each index width");
        let mut written = Vec::new();
        write_block_in_order(&mut written, 54412, &pushed, rows, Some(&order));
        // The dictionaries of the reordered push list their keys in another order, so the
        // comparison is of what the server reads back: each row's values.
        let reordered = fill(&mut order.iter().map(|&i| i as usize));
        let mut want = Vec::new();
        write_block(&mut want, 54412, &reordered, rows);
        let read = |bytes: &[u8]| super::super::result::read_block(&mut Reader::new(bytes), 54412).expect("a block");
        let (written, want) = (read(&written), read(&want));
        assert_eq!(written.rows, rows);
        assert_eq!(written.values, want.values);
    }

    #[test]
    fn a_dictionary_index_takes_the_width_its_key_count_needs() {
        // At each boundary: the index type in the flags, and each row's index at that width,
        // as pushed and in reverse.
        for (distinct, index_type, width) in [(256usize, 0u8, 1usize), (257, 1, 2), (65_536, 1, 2), (65_537, 2, 4)] {
            let mut lc = ColumnData::LowCardinality(LowCardinality::default());
            let rows = distinct + 2;
            (0..rows).for_each(|r| lc.push_str(format!("{}", r % distinct).as_bytes()));
            let reverse: Vec<u32> = (0..rows as u32).rev().collect();
            for order in [None, Some(reverse.as_slice())] {
                let mut out = Vec::new();
                lc.write_data(&mut out, order);
                assert_eq!(out[0], index_type, "{distinct} keys");
                let indexes = &out[out.len() - rows * width..];
                let row_index = |at: usize| {
                    let mut v = [0u8; 4];
                    v[..width].copy_from_slice(&indexes[at * width..(at + 1) * width]);
                    u32::from_le_bytes(v) as usize
                };
                for at in [0, 1, rows - 2, rows - 1] {
                    let row = order.map_or(at, |o| o[at] as usize);
                    assert_eq!(row_index(at), row % distinct, "{distinct} keys, row {row}");
                }
            }
        }
    }

    #[test]
    fn low_cardinality_in_an_order_keeps_its_dictionary() {
        let mut lc = ColumnData::LowCardinality(LowCardinality::default());
        for v in [b"x".as_slice(), b"y", b"z"] {
            lc.push_str(v);
        }
        let mut out = Vec::new();
        lc.write_data(&mut out, Some(&[2, 0, 1]));
        assert_eq!(out[out.len() - 3..], [2, 0, 1]);
        assert_eq!(out[16..22], *b"\x01x\x01y\x01z");
    }

    #[test]
    fn gathered_strings_are_the_values_in_order_whatever_their_length() {
        // Values of 0 to 70 bytes, some at the very end of the column's bytes (no window
        // fits there), gathered in a shuffled order: the same bytes as copied one by one.
        let lengths = [0usize, 1, 31, 32, 33, 70, 5, 32, 0, 17, 64, 3];
        let mut bytes = Vec::new();
        let mut starts = Vec::new();
        for (n, len) in lengths.iter().enumerate() {
            starts.push(bytes.len() as u32);
            bytes.extend((0..*len).map(|b| (n * 31 + b) as u8));
        }
        let order: Vec<u32> = vec![11, 3, 0, 10, 5, 1, 8, 2, 9, 4, 7, 6];
        let mut want = b"head".to_vec();
        for &i in &order {
            let end = starts.get(i as usize + 1).map_or(bytes.len(), |&e| e as usize);
            want.extend_from_slice(&bytes[starts[i as usize] as usize..end]);
        }
        let mut out = b"head".to_vec();
        gather_strings(&mut out, &bytes, &starts, &order);
        assert_eq!(out, want);
        // A row past the starts, starts that go backwards, or past the bytes, write nothing
        // for that row.
        let mut out = Vec::new();
        gather_strings(&mut out, &bytes, &[4, 2, 9], &[0, 5, 1]);
        assert_eq!(out, &bytes[2..9]);
        let mut out = Vec::new();
        gather_strings(&mut out, &bytes[..20], &[0, 30], &[1, 0]);
        assert!(out.is_empty());
    }
}
