//! The order of a block's rows by a table's sort key, as ClickHouse compares them.
//!
//! A `MergeTree` table sorts every block it is given by its sort key before it writes the
//! block as a part, unless the block is in that order already: ClickHouse looks first
//! (one comparison per row) and then skips the sort and the copy of every column into
//! sorted order (`isAlreadySorted`, counted as `MergeTreeDataWriterBlocksAlreadySorted`
//! in `system.events`; present in 18.16). A writer that sends its rows sorted therefore
//! saves the server that work. [`sort_order`] gives the order of a block's rows by the
//! key's columns, compared as the server compares their types, and
//! [`super::block::write_block_in_order`] lays the block out in it.
//!
//! How each type compares (ClickHouse's `compareAt`):
//! - `UInt8/16/32/64`, `Date`, `DateTime`: as unsigned integers;
//! - `UUID`: by its last 8 bytes (as the text reads them, a big-endian number), then its
//!   first 8: ClickHouse holds a UUID as two `UInt64` halves, written first half first,
//!   and compares the second half first (its documentation warns of this order);
//! - `String`, `FixedString(N)`, `LowCardinality(String)`: bytewise, a prefix first.
//!
//! The sort is stable, as the server's: rows with equal keys keep the order they were
//! given in, so a `ReplacingMergeTree` keeps the same one of them. A key column of
//! another type, a key column missing, or a column whose length does not match the rows
//! give no order: the block is sent as it is and the server sorts it. The order changes
//! what the server has to do, never what it stores.

use std::cmp::Ordering;

use super::block::{Column, ColumnData, Strings};

/// One key column, ready to compare two rows.
enum Key<'a> {
    /// Unsigned little-endian integers of `width` bytes, back to back.
    Unsigned { bytes: &'a [u8], width: usize },
    /// `UUID` values, 16 bytes each as written: the first half's `UInt64`, then the
    /// second's, both little-endian.
    Uuid(&'a [u8]),
    /// Byte strings of `width` bytes each (`FixedString(N)`).
    Fixed { bytes: &'a [u8], width: usize },
    /// `String` values.
    Str(&'a Strings),
    /// `LowCardinality(String)`: each row's dictionary index and each key's rank.
    Ranked { indexes: &'a [u32], ranks: Vec<u32> },
}

impl<'a> Key<'a> {
    /// The key for `column` holding `rows` rows, or `None` when its type is not one this
    /// module compares or its data does not hold `rows` values.
    fn of(column: &'a Column, rows: usize) -> Option<Key<'a>> {
        let ty = column.ty.as_str();
        match &column.data {
            ColumnData::Fixed { width, bytes } if bytes.len() == rows.checked_mul(*width)? => {
                let unsigned =
                    matches!((ty, *width), ("UInt8", 1) | ("UInt16" | "Date", 2) | ("UInt32", 4) | ("UInt64", 8))
                        || (*width == 4 && (ty == "DateTime" || ty.starts_with("DateTime(")));
                if unsigned {
                    Some(Key::Unsigned { bytes, width: *width })
                } else if ty == "UUID" && *width == 16 {
                    Some(Key::Uuid(bytes))
                } else if ty == format!("FixedString({width})") {
                    Some(Key::Fixed { bytes, width: *width })
                } else {
                    None
                }
            }
            ColumnData::String(strings) if ty == "String" && column.data.holds(rows) => Some(Key::Str(strings)),
            ColumnData::LowCardinality(lc) if ty == "LowCardinality(String)" && lc.indexes().len() == rows => {
                let keys = lc.keys();
                if lc.indexes().iter().any(|&i| i as usize >= keys.len()) {
                    return None;
                }
                let mut by_value: Vec<u32> = (0..keys.len() as u32).collect();
                by_value.sort_by(|&a, &b| keys[a as usize].cmp(&keys[b as usize]));
                let mut ranks = vec![0u32; keys.len()];
                for (rank, &k) in by_value.iter().enumerate() {
                    ranks[k as usize] = rank as u32;
                }
                // Equal values have one key each (the dictionary holds distinct values),
                // so distinct ranks order them exactly.
                Some(Key::Ranked { indexes: lc.indexes(), ranks })
            }
            _ => None,
        }
    }

    /// Compares rows `a` and `b` (both below the row count [`Key::of`] checked).
    fn cmp(&self, a: usize, b: usize) -> Ordering {
        match self {
            Key::Unsigned { bytes, width } => unsigned(bytes, *width, a).cmp(&unsigned(bytes, *width, b)),
            Key::Uuid(bytes) => {
                let half = |row: usize, h: usize| unsigned(bytes, 8, row * 2 + h);
                (half(a, 1), half(a, 0)).cmp(&(half(b, 1), half(b, 0)))
            }
            Key::Fixed { bytes, width } => {
                let v = |row: usize| bytes.get(row * width..(row + 1) * width).unwrap_or_default();
                v(a).cmp(v(b))
            }
            Key::Str(strings) => {
                let v = |row: usize| without_length(strings.encoded_value(row));
                v(a).cmp(v(b))
            }
            Key::Ranked { indexes, ranks } => {
                let r = |row: usize| indexes.get(row).and_then(|&i| ranks.get(i as usize)).copied().unwrap_or(0);
                r(a).cmp(&r(b))
            }
        }
    }
}

impl Key<'_> {
    /// The most bits [`Key::put_bits`] packs per row (its [`Key::spans`] may take fewer):
    /// keys that are numbers (or ranks) compare as packed bits, much faster than through
    /// [`Key::cmp`]; `None` for byte strings.
    fn bits(&self) -> Option<u32> {
        match self {
            Key::Unsigned { width, .. } => Some(8 * *width as u32),
            Key::Ranked { .. } => Some(32),
            Key::Uuid(_) => Some(128),
            Key::Fixed { .. } | Key::Str { .. } => None,
        }
    }

    /// The smallest value of the column's `rows` rows and how many bits the values span
    /// above it, for each of its parts (a UUID's two halves, one part for the others):
    /// what [`Key::put_bits`] needs to pack them in as few bits as order allows.
    fn spans(&self, rows: usize) -> [Span; 2] {
        let of = |value: &dyn Fn(usize) -> u64| {
            let (min, max) = (0..rows).map(value).fold((u64::MAX, 0), |(lo, hi), v| (lo.min(v), hi.max(v)));
            Span { min: min.min(max), bits: 64 - max.saturating_sub(min).leading_zeros() }
        };
        match self {
            Key::Unsigned { bytes, width } => [of(&|row| unsigned(bytes, *width, row)), Span::NONE],
            Key::Uuid(bytes) => [of(&|row| unsigned(bytes, 8, row * 2 + 1)), of(&|row| unsigned(bytes, 8, row * 2))],
            Key::Ranked { ranks, .. } => {
                [Span { min: 0, bits: 64 - (ranks.len().saturating_sub(1) as u64).leading_zeros() }, Span::NONE]
            }
            Key::Fixed { .. } | Key::Str { .. } => [Span::NONE; 2],
        }
    }

    /// Packs row `row`'s value in the bits of its `spans` (from [`Key::spans`]), which
    /// orders as [`Key::cmp`] orders the row.
    fn put_bits(&self, row: usize, spans: &[Span; 2], p: &mut Packed) {
        let [first, second] = spans;
        match self {
            Key::Unsigned { bytes, width } => first.put(unsigned(bytes, *width, row), p),
            Key::Uuid(bytes) => {
                first.put(unsigned(bytes, 8, row * 2 + 1), p);
                second.put(unsigned(bytes, 8, row * 2), p);
            }
            Key::Ranked { indexes, ranks } => {
                first.put(u64::from(indexes.get(row).and_then(|&i| ranks.get(i as usize)).copied().unwrap_or(0)), p)
            }
            Key::Fixed { .. } | Key::Str { .. } => {}
        }
    }
}

/// The values of one part of a key column in a block: the smallest, and how many bits
/// the rest span above it.
#[derive(Clone, Copy)]
struct Span {
    min: u64,
    bits: u32,
}

impl Span {
    /// A part that takes no bits.
    const NONE: Span = Span { min: 0, bits: 0 };

    /// Packs `v`, one of the values this span was taken of.
    fn put(&self, v: u64, p: &mut Packed) {
        p.push(v.wrapping_sub(self.min), self.bits);
    }
}

/// Most bits a packed key holds: the events' key (three ranks, a time, a UUID) is 256.
const PACKED_BITS: u32 = 256;

/// A row's key as bits, most significant first: arrays compare as their fields in turn.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Packed {
    words: [u64; 4],
    bit: u32,
}

impl Packed {
    /// Appends the low `bits` bits of `v` (0 to 64; the caller keeps the total within
    /// [`PACKED_BITS`]).
    fn push(&mut self, v: u64, bits: u32) {
        let mut left = bits.min(64);
        while left > 0 {
            let (word, used) = ((self.bit / 64) as usize, self.bit % 64);
            let take = left.min(64 - used);
            let part = (v >> (left - take)) & (u64::MAX >> (64 - take));
            if let Some(w) = self.words.get_mut(word) {
                *w |= part << (64 - used - take);
            }
            self.bit += take;
            left -= take;
        }
    }
}

/// Value `row` of unsigned little-endian integers `width` bytes wide.
fn unsigned(bytes: &[u8], width: usize, row: usize) -> u64 {
    let mut v = [0u8; 8];
    if let Some(src) = bytes.get(row * width..(row + 1) * width) {
        v[..width].copy_from_slice(src);
    }
    u64::from_le_bytes(v)
}

/// A `String` value as encoded (its varint length, then its bytes) without its length.
fn without_length(encoded: &[u8]) -> &[u8] {
    let prefix = encoded.iter().position(|b| b & 0x80 == 0).map_or(encoded.len(), |i| i + 1);
    encoded.get(prefix..).unwrap_or_default()
}

/// The order of the `rows` rows of `columns` by the columns named in `key`, compared as
/// ClickHouse compares their types, stable; `None` when the rows are in that order
/// already, or when some key column cannot be compared here (see the module's doc).
pub fn sort_order(columns: &[Column], rows: usize, key: &[&str]) -> Option<Vec<u32>> {
    if rows < 2 || key.is_empty() || u32::try_from(rows).is_err() {
        return None;
    }
    let keys: Vec<Key<'_>> = key
        .iter()
        .map(|name| columns.iter().find(|c| c.name == *name).and_then(|c| Key::of(c, rows)))
        .collect::<Option<_>>()?;
    let cmp = |a: usize, b: usize| keys.iter().map(|k| k.cmp(a, b)).find(|o| o.is_ne()).unwrap_or(Ordering::Equal);
    // Keys of numbers only (the events' key: ranks of the game, environment and event, the
    // time, the id) are sorted by their first 64 bits, each column packed into only the
    // bits its values span in this block (one game and environment take none, a block's
    // few seconds a few, a half of the ids that never varies none): that prefix is the
    // whole key or all of it but the ids' last bits, and (prefix, row) pairs sort much
    // faster than whole keys. Rows whose prefixes tie are then ordered by the whole key.
    if keys.iter().map(Key::bits).sum::<Option<u32>>().is_some_and(|b| b <= PACKED_BITS) {
        let spans: Vec<[Span; 2]> = keys.iter().map(|k| k.spans(rows)).collect();
        let whole = spans.iter().flatten().map(|s| s.bits).sum::<u32>() <= 64;
        let mut order: Vec<(u64, u32)> = (0..rows)
            .map(|row| {
                let mut p = Packed::default();
                keys.iter().zip(&spans).for_each(|(k, spans)| k.put_bits(row, spans, &mut p));
                (p.words[0], row as u32)
            })
            .collect();
        let in_order = |a: &(u64, u32), b: &(u64, u32)| {
            a.0 < b.0 || (a.0 == b.0 && (whole || cmp(a.1 as usize, b.1 as usize) != Ordering::Greater))
        };
        if order.windows(2).all(|w| in_order(&w[0], &w[1])) {
            return None;
        }
        // On (prefix, row): as stable as sorting on the prefix alone, and faster.
        order.sort_unstable();
        if !whole {
            // Ties need rows alike in all of the prefix: with one game and environment, a
            // few seconds and ten event names, ids alike in their first 50-odd bits. Ids
            // chosen to tie (alike but for their last bits, one far off to widen the span)
            // cost about what sorting whole keys did.
            let packed = |row: u32| {
                let mut p = Packed::default();
                keys.iter().zip(&spans).for_each(|(k, spans)| k.put_bits(row as usize, spans, &mut p));
                (p.words, row)
            };
            for run in order.chunk_by_mut(|a, b| a.0 == b.0).filter(|run| run.len() > 1) {
                run.sort_by_cached_key(|&(_, row)| packed(row));
            }
        }
        return Some(order.into_iter().map(|(_, row)| row).collect());
    }
    if (1..rows).all(|i| cmp(i - 1, i) != Ordering::Greater) {
        return None;
    }
    let mut order: Vec<u32> = (0..rows as u32).collect();
    order.sort_by(|&a, &b| cmp(a as usize, b as usize));
    Some(order)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clickhouse::block::uuid_bytes;

    fn events(rows: &[(&str, u32, &str, u128)]) -> Vec<Column> {
        let mut cols = vec![
            Column::new("event_time", "DateTime", ColumnData::fixed(4)),
            Column::new("game_id", "LowCardinality(String)", ColumnData::LowCardinality(Default::default())),
            Column::new("event", "String", ColumnData::String(Strings::default())),
            Column::new("event_id", "UUID", ColumnData::fixed(16)),
        ];
        for &(game, t, event, id) in rows {
            cols[0].data.push_fixed(&t.to_le_bytes());
            cols[1].data.push_str(game.as_bytes());
            cols[2].data.push_str(event.as_bytes());
            cols[3].data.push_fixed(&uuid_bytes(&id.to_be_bytes()));
        }
        cols
    }

    const KEY: &[&str] = &["game_id", "event_time", "event", "event_id"];

    #[test]
    fn rows_are_ordered_by_each_key_column_in_turn() {
        let rows = [
            ("b", 1, "x", 1),
            ("a", 2, "x", 1),
            ("a", 1, "y", 1),
            ("a", 1, "x", 2),
            ("a", 1, "x", 1),
            ("", 9, "", 0),
            ("a", 1, "xa", 0),
        ];
        let order = sort_order(&events(&rows), rows.len(), KEY).expect("not sorted");
        assert_eq!(order, vec![5, 4, 3, 6, 2, 1, 0]);
    }

    #[test]
    fn a_uuid_compares_by_its_second_half_first() {
        // As ClickHouse orders UUIDs: the last 8 bytes (a number, as the text reads) weigh
        // most, then the first 8. 01000000-…-0000 has a second half of 0, so it comes
        // first; 00ffffff-…-ffff has the largest second half, so it comes last.
        let first = 1u128 << 120;
        let rows = [("a", 1, "x", first), ("a", 1, "x", 2), ("a", 1, "x", 1), ("a", 1, "x", first - 1)];
        assert_eq!(sort_order(&events(&rows), 4, KEY), Some(vec![0, 2, 1, 3]));
    }

    #[test]
    fn equal_keys_keep_their_order_and_sorted_rows_give_none() {
        let rows = [("a", 2, "x", 7), ("a", 1, "x", 7), ("a", 2, "x", 7), ("a", 1, "x", 7)];
        assert_eq!(sort_order(&events(&rows), 4, KEY), Some(vec![1, 3, 0, 2]));
        let sorted = [("a", 1, "x", 7), ("a", 1, "x", 7), ("a", 2, "x", 1)];
        assert_eq!(sort_order(&events(&sorted), 3, KEY), None);
    }

    #[test]
    fn an_unknown_type_a_missing_column_or_a_short_column_gives_none() {
        let rows = [("b", 1, "x", 1), ("a", 1, "x", 1)];
        let mut cols = events(&rows);
        assert!(sort_order(&cols, 2, &["game_id"]).is_some());
        assert_eq!(sort_order(&cols, 2, &["nope"]), None);
        assert_eq!(sort_order(&cols, 3, &["game_id"]), None);
        cols[0].ty = "Int32".into();
        assert_eq!(sort_order(&cols, 2, &["event_time", "game_id"]), None);
        // "b" then "a": a String key that holds its rows is ordered; one whose value offsets
        // do not start at 0, go backwards or pass its bytes is not.
        let strings = |starts: Vec<u32>| {
            [Column::new("s", "String", ColumnData::String(Strings::inconsistent(vec![1, b'b', 1, b'a'], starts)))]
        };
        assert_eq!(sort_order(&strings(vec![0, 2]), 2, &["s"]), Some(vec![1, 0]));
        for broken in [vec![1, 2], vec![2, 0], vec![0, 5]] {
            assert_eq!(sort_order(&strings(broken.clone()), 2, &["s"]), None, "{broken:?}");
        }
    }

    #[test]
    fn rows_in_order_whose_prefixes_tie_are_found_in_order() {
        // Packed key: time (1 bit over the block), then the id's first-compared half (64
        // bits: 0 to u64::MAX), then its other half (3 bits). The first two rows share the
        // 64-bit prefix and differ past it: in order as given, out of order swapped.
        let ids = [5u128 << 64, 1, u128::from(u64::MAX)];
        let rows = [("a", 100, "x", ids[0]), ("a", 100, "x", ids[1]), ("a", 101, "x", ids[2])];
        let ranked = |rows: &[(&str, u32, &str, u128)]| {
            let mut cols = events(rows);
            let mut lc = ColumnData::LowCardinality(Default::default());
            rows.iter().for_each(|r| lc.push_str(r.2.as_bytes()));
            cols[2] = Column::new("event", "LowCardinality(String)", lc);
            cols
        };
        assert_eq!(sort_order(&ranked(&rows), 3, KEY), None);
        let swapped = [rows[1], rows[0], rows[2]];
        assert_eq!(sort_order(&ranked(&swapped), 3, KEY), Some(vec![1, 0, 2]));
    }

    #[test]
    fn keys_of_numbers_order_as_the_comparison_of_each_column() {
        // The same rows with `event` as a String (compared column by column) and as a
        // LowCardinality (laid out as words): the same order, ties kept in row order.
        let rows: Vec<(&str, u32, &str, u128)> = (0..500u32)
            .map(|i| {
                let k = i.wrapping_mul(2_654_435_761);
                (
                    ["g2", "g1"][(k % 2) as usize],
                    1_795_617_000 + k % 7,
                    ["b", "a", "ab", ""][(k >> 5) as usize % 4],
                    u128::from(k % 5) << (k % 100),
                )
            })
            .collect();
        let strings = events(&rows);
        let mut ranked = events(&rows);
        let mut lc = ColumnData::LowCardinality(Default::default());
        rows.iter().for_each(|r| lc.push_str(r.2.as_bytes()));
        ranked[2] = Column::new("event", "LowCardinality(String)", lc);
        let generic = sort_order(&strings, rows.len(), KEY).expect("shuffled");
        assert_eq!(sort_order(&ranked, rows.len(), KEY), Some(generic.clone()));
        let mut sorted: Vec<_> = rows.iter().enumerate().collect();
        sorted.sort_by(|(_, a), (_, b)| {
            (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)).then((a.3 as u64, a.3 >> 64).cmp(&(b.3 as u64, b.3 >> 64)))
        });
        assert_eq!(generic, sorted.iter().map(|(i, _)| *i as u32).collect::<Vec<_>>());
        // Without the id the packed key fits one word (no ties to settle): equal keys in
        // row order.
        let short = &["game_id", "event_time", "event"];
        let generic = sort_order(&strings, rows.len(), short).expect("shuffled");
        assert_eq!(sort_order(&ranked, rows.len(), short), Some(generic.clone()));
        sorted.sort_by(|(i, a), (j, b)| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)).then(i.cmp(j)));
        assert_eq!(generic, sorted.iter().map(|(i, _)| *i as u32).collect::<Vec<_>>());
    }

    #[test]
    fn packed_fields_across_words_order_as_the_fields() {
        // Widths that straddle the 64-bit words: the packed arrays order as the tuples.
        let widths = [16u32, 60, 8, 64, 32, 64];
        let mask = |w: u32| u64::MAX >> (64 - w);
        let values: Vec<[u64; 6]> = (0..200u64)
            .map(|i| {
                let k = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                std::array::from_fn(|f| {
                    k.rotate_left(f as u32 * 11) & mask(widths[f]) & if i % 3 == 0 { 7 } else { u64::MAX }
                })
            })
            .collect();
        let pack = |v: &[u64; 6]| {
            let mut p = Packed::default();
            v.iter().zip(widths).for_each(|(&x, w)| p.push(x, w));
            p.words
        };
        for a in &values {
            for b in &values {
                assert_eq!(pack(a).cmp(&pack(b)), a.cmp(b), "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn long_strings_compare_by_their_bytes_not_their_length_prefix() {
        // 200 and 130 bytes take two-byte lengths: the longer one is smaller by its bytes.
        let (long_a, long_b) = ("a".repeat(200), format!("b{}", "a".repeat(129)));
        let rows = [("g", 1, long_b.as_str(), 0), ("g", 1, long_a.as_str(), 0), ("g", 1, "b", 0)];
        assert_eq!(sort_order(&events(&rows), 3, KEY), Some(vec![1, 2, 0]));
    }
}
