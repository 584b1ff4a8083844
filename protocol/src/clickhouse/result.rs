//! Result blocks: the rows a `SELECT` returns, decoded column by column into [`Value`]s.
//!
//! The types decoded are the ones the Analytics API's queries return: `UInt*`, `Int*`,
//! `Float*`, `Date` (days since the epoch), `DateTime` (seconds), `String`,
//! `FixedString(N)`, `LowCardinality(String)`, `Nullable(T)` and `Array(T)` of those.
//! Anything else is refused by name ([`BlockError::UnsupportedType`]): the query casts it.
//! Results are read uncompressed (the client asks for no compression on reads).

use super::block::{BlockError, BlockHeader};
use super::rev;
use super::wire::Reader;

/// Most rows one block may announce (a guard against a corrupt count allocating).
pub(crate) const MAX_ROWS: u64 = 1 << 24;
/// LowCardinality: the column carries its own keys.
pub(crate) const LC_HAS_ADDITIONAL_KEYS: u64 = 1 << 9;

/// One value of a result.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `NULL`.
    Null,
    /// Unsigned integers, `Date` (days) and `DateTime` (seconds).
    UInt(u64),
    /// Signed integers.
    Int(i64),
    /// Floats.
    Float(f64),
    /// Strings (invalid UTF-8 replaced), `FixedString` without its trailing zeros.
    Str(String),
    /// `Array(T)`.
    Array(Vec<Value>),
}

impl Value {
    /// As an unsigned integer (a float is truncated, a negative or null is 0).
    pub fn as_u64(&self) -> u64 {
        match self {
            Value::UInt(v) => *v,
            Value::Int(v) => u64::try_from(*v).unwrap_or(0),
            Value::Float(v) if *v > 0.0 => *v as u64,
            Value::Str(s) => s.parse().unwrap_or(0),
            _ => 0,
        }
    }

    /// As a float (null is 0).
    pub fn as_f64(&self) -> f64 {
        match self {
            Value::UInt(v) => *v as f64,
            Value::Int(v) => *v as f64,
            Value::Float(v) => *v,
            Value::Str(s) => s.parse().unwrap_or(0.0),
            _ => 0.0,
        }
    }

    /// As a string (numbers formatted, null empty).
    pub fn as_str(&self) -> String {
        match self {
            Value::Str(s) => s.clone(),
            Value::UInt(v) => v.to_string(),
            Value::Int(v) => v.to_string(),
            Value::Float(v) => v.to_string(),
            Value::Null | Value::Array(_) => String::new(),
        }
    }
}

/// A decoded block: columns of equal length.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ResultBlock {
    /// Names and types, in order.
    pub columns: Vec<(String, String)>,
    /// The values, one vector per column.
    pub values: Vec<Vec<Value>>,
    /// Rows.
    pub rows: usize,
}

impl ResultBlock {
    /// The shape of the block.
    pub fn header(&self) -> BlockHeader {
        BlockHeader { columns: self.columns.clone(), rows: self.rows as u64 }
    }
}

/// Reads a block with its rows.
pub fn read_block(r: &mut Reader<'_>, revision: u64) -> Result<ResultBlock, BlockError> {
    let (ncols, rows) = block_head(r, revision)?;
    let mut block = ResultBlock { rows, ..ResultBlock::default() };
    for _ in 0..ncols {
        let name = r.string()?;
        let ty = r.string()?;
        let values = if rows == 0 {
            Vec::new()
        } else {
            check_depth(&ty)?;
            read_prefix(r, &ty)?;
            read_values(r, &ty, rows)?
        };
        block.columns.push((name, ty));
        block.values.push(values);
    }
    Ok(block)
}

/// Reads a block's info fields and its numbers of columns and rows (at most
/// [`MAX_ROWS`]).
pub(crate) fn block_head(r: &mut Reader<'_>, revision: u64) -> Result<(u64, usize), BlockError> {
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
    if rows > MAX_ROWS {
        return Err(BlockError::UnsupportedType(format!("block of {rows} rows")));
    }
    Ok((ncols, rows as usize))
}

/// Most types one column's type may nest (`Array(Nullable(...))`): values are read by
/// recursing once per level, so a server naming a type nested thousands deep would
/// overflow the stack.
pub const MAX_TYPE_DEPTH: usize = 16;

/// Refuses a type nested deeper than [`MAX_TYPE_DEPTH`] before its values are read.
pub(crate) fn check_depth(ty: &str) -> Result<(), BlockError> {
    if ty.bytes().filter(|b| *b == b'(').count() > MAX_TYPE_DEPTH {
        return Err(BlockError::UnsupportedType(format!("a type nested more than {MAX_TYPE_DEPTH} deep")));
    }
    Ok(())
}

/// The inside of `Wrapper(...)` when `ty` is that wrapper.
pub(crate) fn inner<'t>(ty: &'t str, wrapper: &str) -> Option<&'t str> {
    ty.strip_prefix(wrapper)?.strip_prefix('(')?.strip_suffix(')')
}

/// Reads the per-column prefix (the LowCardinality keys version, wherever nested).
pub(crate) fn read_prefix(r: &mut Reader<'_>, ty: &str) -> Result<(), BlockError> {
    if inner(ty, "LowCardinality").is_some() {
        r.bytes(8)?;
    } else if let Some(t) = inner(ty, "Nullable").or_else(|| inner(ty, "Array")) {
        read_prefix(r, t)?;
    }
    Ok(())
}

fn u64_at(r: &mut Reader<'_>) -> Result<u64, BlockError> {
    let b = r.bytes(8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Ok(u64::from_le_bytes(a))
}

fn fixed<const N: usize>(
    r: &mut Reader<'_>,
    rows: usize,
    f: impl Fn([u8; N]) -> Value,
) -> Result<Vec<Value>, BlockError> {
    let bytes = r.bytes(rows.checked_mul(N).ok_or(BlockError::Incomplete)?)?;
    Ok(bytes
        .chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            f(a)
        })
        .collect())
}

/// The bytes one value of `ty` takes when they are fixed: the types [`read_values`] reads
/// as fixed-width values (`FixedString(N)`: N).
pub(crate) fn fixed_width(ty: &str) -> Option<usize> {
    match ty {
        "UInt8" | "Int8" => Some(1),
        "UInt16" | "Int16" | "Date" => Some(2),
        "UInt32" | "Int32" | "Float32" => Some(4),
        "UInt64" | "Int64" | "Float64" => Some(8),
        t if t == "DateTime" || t.starts_with("DateTime(") => Some(4),
        t => inner(t, "FixedString")?.parse().ok(),
    }
}

fn read_values(r: &mut Reader<'_>, ty: &str, rows: usize) -> Result<Vec<Value>, BlockError> {
    Ok(match ty {
        "UInt8" => fixed::<1>(r, rows, |b| Value::UInt(u64::from(b[0])))?,
        "UInt16" | "Date" => fixed::<2>(r, rows, |b| Value::UInt(u64::from(u16::from_le_bytes(b))))?,
        "UInt32" => fixed::<4>(r, rows, |b| Value::UInt(u64::from(u32::from_le_bytes(b))))?,
        "UInt64" => fixed::<8>(r, rows, |b| Value::UInt(u64::from_le_bytes(b)))?,
        "Int8" => fixed::<1>(r, rows, |b| Value::Int(i64::from(b[0] as i8)))?,
        "Int16" => fixed::<2>(r, rows, |b| Value::Int(i64::from(i16::from_le_bytes(b))))?,
        "Int32" => fixed::<4>(r, rows, |b| Value::Int(i64::from(i32::from_le_bytes(b))))?,
        "Int64" => fixed::<8>(r, rows, |b| Value::Int(i64::from_le_bytes(b)))?,
        "Float32" => fixed::<4>(r, rows, |b| Value::Float(f64::from(f32::from_le_bytes(b))))?,
        "Float64" => fixed::<8>(r, rows, |b| Value::Float(f64::from_le_bytes(b)))?,
        "String" => {
            // Reserved for the values the bytes at hand can hold (one byte each at least),
            // not for what the header claims before they arrive.
            let mut out = Vec::with_capacity(rows.min(r.remaining().len()));
            for _ in 0..rows {
                out.push(Value::Str(String::from_utf8_lossy(r.str()?).into_owned()));
            }
            out
        }
        t if t == "DateTime" || t.starts_with("DateTime(") => {
            fixed::<4>(r, rows, |b| Value::UInt(u64::from(u32::from_le_bytes(b))))?
        }
        t => {
            if let Some(n) = inner(t, "FixedString") {
                let n: usize = n.parse().map_err(|_| BlockError::UnsupportedType(t.into()))?;
                let bytes = r.bytes(rows.checked_mul(n).ok_or(BlockError::Incomplete)?)?;
                if n == 0 {
                    return Ok(vec![Value::Str(String::new()); rows]);
                }
                bytes
                    .chunks_exact(n)
                    .map(|c| {
                        let end = c.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
                        Value::Str(String::from_utf8_lossy(&c[..end]).into_owned())
                    })
                    .collect()
            } else if let Some(t) = inner(t, "Nullable") {
                let nulls = r.bytes(rows)?.to_vec();
                let values = read_values(r, t, rows)?;
                values.into_iter().zip(nulls).map(|(v, n)| if n != 0 { Value::Null } else { v }).collect()
            } else if let Some(t) = inner(t, "Array") {
                let mut offsets = Vec::with_capacity(rows.min(r.remaining().len() / 8));
                for _ in 0..rows {
                    offsets.push(u64_at(r)?);
                }
                let total = offsets.last().copied().unwrap_or(0);
                if total > MAX_ROWS {
                    return Err(BlockError::UnsupportedType(format!("array of {total} values")));
                }
                let mut flat = read_values(r, t, total as usize)?.into_iter();
                let mut out = Vec::with_capacity(rows);
                let mut prev = 0u64;
                for o in offsets {
                    let n = o.checked_sub(prev).ok_or(BlockError::UnsupportedType("array offsets".into()))?;
                    out.push(Value::Array(flat.by_ref().take(n as usize).collect()));
                    prev = o;
                }
                out
            } else if let Some(t) = inner(t, "LowCardinality") {
                low_cardinality(r, t, rows)?
            } else {
                return Err(BlockError::UnsupportedType(t.into()));
            }
        }
    })
}

/// A `LowCardinality(T)` column of one granule: flags, the keys, then one index per row.
fn low_cardinality(r: &mut Reader<'_>, t: &str, rows: usize) -> Result<Vec<Value>, BlockError> {
    let flags = u64_at(r)?;
    if flags & LC_HAS_ADDITIONAL_KEYS == 0 {
        return Err(BlockError::UnsupportedType("LowCardinality with a shared dictionary".into()));
    }
    let nkeys = u64_at(r)?;
    if nkeys > MAX_ROWS {
        return Err(BlockError::UnsupportedType(format!("dictionary of {nkeys} keys")));
    }
    // The dictionary of LowCardinality(Nullable(T)) is of T, with null at index 0.
    let (key_ty, nullable) = match inner(t, "Nullable") {
        Some(k) => (k, true),
        None => (t, false),
    };
    let keys = read_values(r, key_ty, nkeys as usize)?;
    let nidx = u64_at(r)?;
    if nidx != rows as u64 {
        return Err(BlockError::UnsupportedType(format!("{nidx} indexes for {rows} rows")));
    }
    // The index type: UInt8, UInt16, UInt32 or UInt64 (0 to 3); anything else is not
    // ClickHouse's and is refused (it would be a shift or a slice past 8 bytes).
    let width = match flags & 0xff {
        t @ 0..=3 => 1usize << t,
        t => return Err(BlockError::UnsupportedType(format!("LowCardinality index type {t}"))),
    };
    let bytes = r.bytes(rows.checked_mul(width).ok_or(BlockError::Incomplete)?)?;
    bytes
        .chunks_exact(width)
        .map(|c| {
            let mut a = [0u8; 8];
            a[..width].copy_from_slice(c);
            let i = u64::from_le_bytes(a) as usize;
            if nullable && i == 0 {
                return Ok(Value::Null);
            }
            keys.get(i).cloned().ok_or(BlockError::UnsupportedType("index past the dictionary".into()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clickhouse::block::{write_block, Column, ColumnData, LowCardinality};

    #[test]
    fn decodes_what_the_encoders_write() {
        let mut n = ColumnData::fixed(8);
        n.push_fixed(&7u64.to_le_bytes());
        n.push_fixed(&9u64.to_le_bytes());
        let mut s = ColumnData::String(Default::default());
        s.push_str(b"a'b");
        s.push_str(b"");
        let mut lc = ColumnData::LowCardinality(LowCardinality::default());
        lc.push_str(b"x");
        lc.push_str(b"x");
        let mut d = ColumnData::fixed(4);
        d.push_fixed(&1u32.to_le_bytes());
        d.push_fixed(&2u32.to_le_bytes());
        let cols = vec![
            Column::new("n", "UInt64", n),
            Column::new("s", "String", s),
            Column::new("c", "LowCardinality(String)", lc),
            Column::new("t", "DateTime('UTC')", d),
        ];
        let mut out = Vec::new();
        write_block(&mut out, 54412, &cols, 2);
        let b = read_block(&mut Reader::new(&out), 54412).expect("block");
        assert_eq!(b.rows, 2);
        assert_eq!(b.values[0], vec![Value::UInt(7), Value::UInt(9)]);
        assert_eq!(b.values[1], vec![Value::Str("a'b".into()), Value::Str(String::new())]);
        assert_eq!(b.values[2], vec![Value::Str("x".into()), Value::Str("x".into())]);
        assert_eq!(b.values[3], vec![Value::UInt(1), Value::UInt(2)]);
    }

    #[test]
    fn refuses_low_cardinality_index_types_clickhouse_does_not_have() {
        let mut lc = ColumnData::LowCardinality(LowCardinality::default());
        lc.push_str(b"x");
        let ty = "LowCardinality(String)";
        let mut out = Vec::new();
        write_block(&mut out, 54412, &[Column::new("c", ty, lc)], 1);
        // After the type: the keys' serialization version, then the flags (index type in
        // the low byte).
        let at = out.windows(ty.len()).position(|w| w == ty.as_bytes()).expect("type") + ty.len() + 8;
        for t in [4u8, 5, 63, 64, 200, 255] {
            let mut bad = out.clone();
            bad[at] = t;
            assert!(
                matches!(read_block(&mut Reader::new(&bad), 54412), Err(BlockError::UnsupportedType(_))),
                "index type {t}"
            );
        }
        let ok = read_block(&mut Reader::new(&out), 54412).expect("block");
        assert_eq!(ok.values[0], vec![Value::Str("x".into())]);
    }

    #[test]
    fn a_header_claiming_more_values_than_the_bytes_hold_is_incomplete() {
        // A block that says a million rows and holds one value (a peer's partial packet,
        // or a hostile one): the read waits for more, reserving only what the bytes hold.
        let mut s = ColumnData::String(Default::default());
        s.push_str(b"x");
        let mut out = Vec::new();
        write_block(&mut out, 54412, &[Column::new("s", "String", s)], 1 << 20);
        assert_eq!(read_block(&mut Reader::new(&out), 54412), Err(BlockError::Incomplete));
    }

    #[test]
    fn refuses_unknown_types_and_short_input() {
        let cols = vec![Column::new("u", "UUID", ColumnData::Fixed { width: 16, bytes: vec![0; 16] })];
        let mut out = Vec::new();
        write_block(&mut out, 54412, &cols, 1);
        assert!(matches!(read_block(&mut Reader::new(&out), 54412), Err(BlockError::UnsupportedType(_))));
        let cols = vec![Column::new("n", "UInt64", ColumnData::Fixed { width: 8, bytes: vec![0; 8] })];
        let mut out = Vec::new();
        write_block(&mut out, 54412, &cols, 1);
        out.pop();
        assert_eq!(read_block(&mut Reader::new(&out), 54412), Err(BlockError::Incomplete));
    }
}
