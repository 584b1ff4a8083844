//! Where a block packet ends, found by a scan that resumes where the bytes at hand ran
//! out.
//!
//! A result's block arrives over many reads. Decoding it from its start after each read
//! costs its size once per read: over a link slower than the decoder, a read brings a few
//! KiB and a block of megabytes is gone over hundreds of times. [`PacketScan`] walks the
//! packet's layout — lengths, counts, offsets — without building a value, and keeps its
//! place between reads: each byte is scanned once, and the packet decoded once it is whole.
//!
//! It reads lengths as [`super::result::read_block`] reads them, and only the packets
//! that carry an uncompressed block (`Data`, `Totals`, `Extremes`, `Log`). A packet of
//! another kind, or anything `read_block` would refuse, is [`Scanned::Unsupported`]: the
//! caller decodes it as it comes, and the decoder names what is wrong.

use super::block::BlockError;
use super::packet::server;
use super::result::{block_head, check_depth, fixed_width, inner, read_prefix, LC_HAS_ADDITIONAL_KEYS, MAX_ROWS};
use super::wire::Reader;

/// What a scan found so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scanned {
    /// The packet goes on past the bytes at hand.
    Incomplete,
    /// The packet ends after this many bytes.
    Ends(usize),
    /// Not a block packet, or a layout the decoder refuses: decode it instead.
    Unsupported,
}

/// One part of the layout left to walk.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// The next column's name, type and prefix, with `left` columns to go (this one
    /// included).
    Column { left: u64 },
    /// `count` values of type `ty`.
    Values { ty: String, count: u64 },
    /// Bytes to pass over.
    Skip(u64),
    /// Length-prefixed strings to pass over.
    Strings(u64),
    /// An array's `count` offsets, then the values the last one counts.
    Offsets { ty: String, count: u64 },
    /// A LowCardinality column's index count, then its `count` indexes of `width` bytes,
    /// each below `keys` (or 0, null, when `nullable`).
    Indexes { count: u64, width: u64, keys: u64, nullable: bool },
    /// `count` indexes of `width` bytes left to read, as above.
    IndexesLeft { count: u64, width: u64, keys: u64, nullable: bool },
}

/// Why a walk stopped before the packet's end.
enum Stop {
    Incomplete,
    Unsupported,
}

impl From<BlockError> for Stop {
    fn from(e: BlockError) -> Self {
        match e {
            BlockError::Incomplete => Stop::Incomplete,
            _ => Stop::Unsupported,
        }
    }
}

impl From<super::wire::Incomplete> for Stop {
    fn from(_: super::wire::Incomplete) -> Self {
        Stop::Incomplete
    }
}

/// The scan of one packet, resumed with the packet's bytes so far, always from its first.
#[derive(Debug, Clone, Default)]
pub struct PacketScan {
    /// Bytes of the packet walked so far.
    pos: usize,
    /// The block's rows, once its head is read.
    rows: usize,
    /// Parts left to walk, the next last; `None` until the block's head is read.
    parts: Option<Vec<Part>>,
    /// [`Scanned::Unsupported`] was found: the answer from then on.
    refused: bool,
}

impl PacketScan {
    /// Bytes of the packet walked so far (a resume starts there).
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Walks on over `buf`, the packet's bytes so far (from its first byte; what an
    /// earlier call saw, and maybe more), for a connection speaking `revision`. Once
    /// [`Scanned::Unsupported`], always.
    pub fn resume(&mut self, buf: &[u8], revision: u64) -> Scanned {
        while !self.refused {
            match self.step(buf, revision) {
                Ok(true) => {}
                Ok(false) => return Scanned::Ends(self.pos),
                Err(Stop::Incomplete) => return Scanned::Incomplete,
                Err(Stop::Unsupported) => self.refused = true,
            }
        }
        Scanned::Unsupported
    }

    /// Walks one part (or as much of it as `buf` holds): false once nothing is left.
    fn step(&mut self, buf: &[u8], revision: u64) -> Result<bool, Stop> {
        let Some(parts) = self.parts.as_mut() else {
            let mut r = Reader::new(buf);
            match r.varint()? {
                server::DATA | server::TOTALS | server::EXTREMES | server::LOG => {}
                _ => return Err(Stop::Unsupported),
            }
            r.str()?; // table name
            let (columns, rows) = block_head(&mut r, revision)?;
            self.pos = r.position();
            self.rows = rows;
            self.parts = Some(if columns == 0 { Vec::new() } else { vec![Part::Column { left: columns }] });
            return Ok(true);
        };
        let Some(part) = parts.pop() else { return Ok(false) };
        let mut r = Reader::new(buf.get(self.pos..).unwrap_or_default());
        match part {
            Part::Column { left } => {
                let taken = (|| {
                    r.str()?; // name
                    let ty = String::from_utf8_lossy(r.str()?).into_owned();
                    if self.rows > 0 {
                        check_depth(&ty)?;
                        read_prefix(&mut r, &ty)?;
                    }
                    Ok::<_, Stop>(ty)
                })();
                let ty = match taken {
                    Ok(ty) => ty,
                    Err(e) => {
                        parts.push(Part::Column { left });
                        return Err(e);
                    }
                };
                self.pos += r.position();
                if left > 1 {
                    parts.push(Part::Column { left: left - 1 });
                }
                if self.rows > 0 {
                    parts.push(Part::Values { ty, count: self.rows as u64 });
                }
            }
            Part::Values { ty, count } => values(parts, ty, count, &mut r, &mut self.pos)?,
            Part::Skip(n) => {
                let held = r.remaining().len() as u64;
                if held < n {
                    self.pos += held as usize;
                    parts.push(Part::Skip(n - held));
                    return Err(Stop::Incomplete);
                }
                self.pos += n as usize;
            }
            Part::Strings(mut n) => {
                while n > 0 {
                    // Only strings read whole count as walked (a failed read may have
                    // taken a length).
                    let whole = r.position();
                    if r.str().is_err() {
                        self.pos += whole;
                        parts.push(Part::Strings(n));
                        return Err(Stop::Incomplete);
                    }
                    n -= 1;
                }
                self.pos += r.position();
            }
            Part::Offsets { ty, count } => {
                let len = count.checked_mul(8).and_then(|n| usize::try_from(n).ok()).ok_or(Stop::Unsupported)?;
                let Ok(offsets) = r.bytes(len) else {
                    parts.push(Part::Offsets { ty, count });
                    return Err(Stop::Incomplete);
                };
                // The last offset counts the values of every array (none without rows);
                // offsets that go down are refused, as the decoder refuses them.
                let mut total = 0u64;
                for o in offsets.chunks_exact(8) {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(o);
                    let o = u64::from_le_bytes(a);
                    if o < total {
                        return Err(Stop::Unsupported);
                    }
                    total = o;
                }
                if total > MAX_ROWS {
                    return Err(Stop::Unsupported);
                }
                self.pos += len;
                parts.push(Part::Values { ty, count: total });
            }
            Part::Indexes { count, width, keys, nullable } => {
                let Ok(n) = r.bytes(8) else {
                    parts.push(Part::Indexes { count, width, keys, nullable });
                    return Err(Stop::Incomplete);
                };
                let mut a = [0u8; 8];
                a.copy_from_slice(n);
                if u64::from_le_bytes(a) != count {
                    return Err(Stop::Unsupported);
                }
                self.pos += 8;
                parts.push(Part::IndexesLeft { count, width, keys, nullable });
            }
            Part::IndexesLeft { count, width, keys, nullable } => {
                // The indexes held, whole; each checked as the decoder checks it.
                let held = (r.remaining().len() as u64 / width).min(count);
                let bytes = r.bytes((held * width) as usize).map_err(|_| Stop::Unsupported)?;
                for c in bytes.chunks_exact(width as usize) {
                    let mut a = [0u8; 8];
                    a[..c.len()].copy_from_slice(c);
                    let i = u64::from_le_bytes(a);
                    if i >= keys && !(nullable && i == 0) {
                        return Err(Stop::Unsupported);
                    }
                }
                self.pos += bytes.len();
                if held < count {
                    parts.push(Part::IndexesLeft { count: count - held, width, keys, nullable });
                    return Err(Stop::Incomplete);
                }
            }
        }
        Ok(true)
    }
}

/// Turns `count` values of `ty` into the parts that walk them, reading a LowCardinality
/// column's head from `r` (at `pos` of the packet) when it is whole.
/// No values (an array's, when none has any) still read a LowCardinality head, as the
/// decoder does.
fn values(parts: &mut Vec<Part>, ty: String, count: u64, r: &mut Reader<'_>, pos: &mut usize) -> Result<(), Stop> {
    if let Some(width) = fixed_width(&ty) {
        parts.push(Part::Skip(count.checked_mul(width as u64).ok_or(Stop::Unsupported)?));
    } else if ty == "String" {
        parts.push(Part::Strings(count));
    } else if let Some(t) = inner(&ty, "Nullable") {
        parts.push(Part::Values { ty: t.to_owned(), count });
        parts.push(Part::Skip(count));
    } else if let Some(t) = inner(&ty, "Array") {
        parts.push(Part::Offsets { ty: t.to_owned(), count });
    } else if let Some(t) = inner(&ty, "LowCardinality") {
        // Flags (the index width, own keys), then the keys, then the indexes; refused as
        // soon as the decoder refuses (flags without own keys before the keys' count).
        let word = |at: usize| {
            let b = r.remaining().get(at..at + 8)?;
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            Some(u64::from_le_bytes(a))
        };
        let (Some(flags), keys) = (word(0), word(8)) else {
            parts.push(Part::Values { ty, count });
            return Err(Stop::Incomplete);
        };
        if flags & LC_HAS_ADDITIONAL_KEYS == 0 {
            return Err(Stop::Unsupported);
        }
        let Some(keys) = keys else {
            parts.push(Part::Values { ty, count });
            return Err(Stop::Incomplete);
        };
        if keys > MAX_ROWS || flags & 0xff > 3 {
            return Err(Stop::Unsupported);
        }
        *pos += 16;
        let (key_ty, nullable) = match inner(t, "Nullable") {
            Some(k) => (k, true),
            None => (t, false),
        };
        parts.push(Part::Indexes { count, width: 1 << (flags & 0xff), keys, nullable });
        parts.push(Part::Values { ty: key_ty.to_owned(), count: keys });
    } else {
        return Err(Stop::Unsupported);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clickhouse::packet::{self, ServerPacket};
    use crate::clickhouse::wire::{put_str, put_varint};
    use crate::clickhouse::CLIENT_REVISION;

    /// A `Data` packet of `rows` rows whose columns are given as (name, type, values'
    /// bytes).
    fn data_packet(rows: u64, columns: &[(&str, &str, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(&mut out, server::DATA);
        put_str(&mut out, b"");
        // Block info: is_overflows, bucket_num, end.
        out.extend_from_slice(&[1, 0, 2]);
        out.extend_from_slice(&(-1i32).to_le_bytes());
        out.push(0);
        put_varint(&mut out, columns.len() as u64);
        put_varint(&mut out, rows);
        for (name, ty, bytes) in columns {
            put_str(&mut out, name.as_bytes());
            put_str(&mut out, ty.as_bytes());
            out.extend_from_slice(bytes);
        }
        out
    }

    fn strings(values: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for v in values {
            put_str(&mut out, v.as_bytes());
        }
        out
    }

    fn u64s(values: &[u64]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// Every type the decoder reads, nested as the Analytics API's answers nest them.
    fn every_type() -> Vec<u8> {
        let long = "y".repeat(300);
        let mut lc = Vec::new();
        lc.extend_from_slice(&1u64.to_le_bytes()); // keys version (the prefix)
        lc.extend_from_slice(&(LC_HAS_ADDITIONAL_KEYS | 1).to_le_bytes()); // UInt16 indexes
        lc.extend_from_slice(&2u64.to_le_bytes());
        lc.extend(strings(&["", "de"]));
        lc.extend_from_slice(&3u64.to_le_bytes());
        lc.extend([1, 0, 0, 0, 1, 0]);
        let mut nullable_array = u64s(&[2, 2, 5]);
        nullable_array.extend([0, 1, 0, 0, 1]);
        nullable_array.extend(strings(&["a", "", "b", long.as_str(), ""]));
        let mut nested = u64s(&[1, 1, 3]);
        nested.extend(u64s(&[2, 2, 5]));
        nested.extend([1, 2, 3, 4, 5]);
        data_packet(
            3,
            &[
                ("n", "UInt64", u64s(&[1, 2, 3])),
                ("s", "String", strings(&["a", long.as_str(), ""])),
                ("d", "Date", vec![1, 0, 2, 0, 3, 0]),
                ("t", "DateTime('UTC')", vec![0; 12]),
                ("f", "FixedString(3)", b"ab\0cdefgh".to_vec()),
                ("z", "Nullable(Float64)", [vec![0, 1, 0], vec![7; 24]].concat()),
                ("c", "LowCardinality(String)", lc),
                ("a", "Array(Nullable(String))", nullable_array),
                ("aa", "Array(Array(UInt8))", nested),
                ("e", "Int8", vec![0xff, 0, 1]),
                // Arrays all empty: their LowCardinality head is there all the same.
                ("l", "Array(LowCardinality(String))", u64s(&[1, 0, 0, 0, LC_HAS_ADDITIONAL_KEYS, 0, 0])),
            ],
        )
    }

    fn decoded_length(bytes: &[u8]) -> usize {
        match packet::decode(bytes, CLIENT_REVISION) {
            Ok(Some((ServerPacket::Rows(_), used))) => used,
            other => panic!("the packet decodes whole: {other:?}"),
        }
    }

    #[test]
    fn a_scan_resumed_at_every_cut_ends_where_the_decoder_does() {
        let bytes = every_type();
        let whole = decoded_length(&bytes);
        assert_eq!(whole, bytes.len());
        assert_eq!(PacketScan::default().resume(&bytes, CLIENT_REVISION), Scanned::Ends(whole));
        // Trailing bytes (the next packet) are not the packet's.
        let more = [bytes.clone(), vec![server::END_OF_STREAM as u8]].concat();
        assert_eq!(PacketScan::default().resume(&more, CLIENT_REVISION), Scanned::Ends(whole));
        // Cut anywhere, a fresh scan wants more; resumed byte by byte, and in steps of
        // every size, it ends at the packet's end and never before.
        for cut in 0..bytes.len() {
            assert_eq!(PacketScan::default().resume(&bytes[..cut], CLIENT_REVISION), Scanned::Incomplete, "cut {cut}");
        }
        for step in 1..40 {
            let mut scan = PacketScan::default();
            let mut held = 0;
            loop {
                held = (held + step).min(bytes.len());
                let found = scan.resume(&bytes[..held], CLIENT_REVISION);
                assert!(scan.position() <= held);
                if held < bytes.len() {
                    assert_eq!(found, Scanned::Incomplete, "step {step}, {held} bytes");
                } else {
                    assert_eq!(found, Scanned::Ends(whole), "step {step}");
                    break;
                }
            }
        }
    }

    /// Values are read by recursing once per level of a type: a server naming one nested
    /// thousands deep is refused by name, not a stack overflow.
    #[test]
    fn a_type_nested_too_deep_is_refused_by_scan_and_decoder() {
        let deep = format!("{}UInt8{}", "Array(".repeat(20_000), ")".repeat(20_000));
        let bytes = data_packet(1, &[("a", &deep, vec![0; 64])]);
        assert_eq!(PacketScan::default().resume(&bytes, CLIENT_REVISION), Scanned::Unsupported);
        assert!(matches!(
            packet::decode(&bytes, CLIENT_REVISION),
            Err(packet::ProtocolError::UnsupportedType(t)) if t.contains("nested")
        ));
        // As deep as allowed still reads.
        let depth = crate::clickhouse::result::MAX_TYPE_DEPTH;
        let ok = format!("{}UInt8{}", "Array(".repeat(depth), ")".repeat(depth));
        let mut values = Vec::new();
        for _ in 0..depth {
            values.extend(u64s(&[1]));
        }
        values.push(7);
        let bytes = data_packet(1, &[("a", &ok, values)]);
        assert_eq!(PacketScan::default().resume(&bytes, CLIENT_REVISION), Scanned::Ends(bytes.len()));
        assert_eq!(decoded_length(&bytes), bytes.len());
    }

    #[test]
    fn a_header_block_and_an_empty_block_end_after_their_columns() {
        let header = data_packet(0, &[("n", "UInt64", Vec::new()), ("c", "LowCardinality(String)", Vec::new())]);
        assert_eq!(PacketScan::default().resume(&header, CLIENT_REVISION), Scanned::Ends(header.len()));
        assert!(
            matches!(packet::decode(&header, CLIENT_REVISION), Ok(Some((ServerPacket::Data(_), n))) if n == header.len())
        );
        let empty = data_packet(0, &[]);
        assert_eq!(PacketScan::default().resume(&empty, CLIENT_REVISION), Scanned::Ends(empty.len()));
    }

    #[test]
    fn what_the_decoder_refuses_or_does_not_scan_is_left_to_it() {
        let unknown = data_packet(1, &[("u", "UUID", vec![0; 16])]);
        assert_eq!(PacketScan::default().resume(&unknown, CLIENT_REVISION), Scanned::Unsupported);
        assert!(packet::decode(&unknown, CLIENT_REVISION).is_err());
        let mut lc_shared = u64s(&[1, 0, 0]);
        lc_shared.truncate(24);
        let shared = data_packet(1, &[("c", "LowCardinality(String)", lc_shared)]);
        assert_eq!(PacketScan::default().resume(&shared, CLIENT_REVISION), Scanned::Unsupported);
        let huge_array = data_packet(1, &[("a", "Array(UInt8)", u64s(&[MAX_ROWS + 1]))]);
        assert_eq!(PacketScan::default().resume(&huge_array, CLIENT_REVISION), Scanned::Unsupported);
        assert!(packet::decode(&huge_array, CLIENT_REVISION).is_err());
        // Refused where the decoder refuses, not waited on: a LowCardinality column
        // without its own keys once its flags are there, offsets that go down, an index
        // past the dictionary, each with the packet's later bytes still to come.
        let shared_flags = data_packet(1, &[("c", "LowCardinality(String)", u64s(&[1, 0]))]);
        assert_eq!(PacketScan::default().resume(&shared_flags, CLIENT_REVISION), Scanned::Unsupported);
        assert!(packet::decode(&shared_flags, CLIENT_REVISION).is_err());
        let down = data_packet(2, &[("a", "Array(UInt8)", u64s(&[2, 1])), ("s", "String", Vec::new())]);
        assert_eq!(PacketScan::default().resume(&down, CLIENT_REVISION), Scanned::Unsupported);
        let mut past = u64s(&[1, LC_HAS_ADDITIONAL_KEYS, 1]);
        past.extend(strings(&["k"]));
        past.extend(u64s(&[1]));
        past.push(1); // index 1 of one key
        let past = data_packet(1, &[("c", "LowCardinality(String)", past), ("s", "String", Vec::new())]);
        assert_eq!(PacketScan::default().resume(&past, CLIENT_REVISION), Scanned::Unsupported);
        // Once refused, always: more bytes do not make a scan that skipped a part end.
        let mut scan = PacketScan::default();
        assert_eq!(scan.resume(&unknown, CLIENT_REVISION), Scanned::Unsupported);
        assert_eq!(scan.resume(&[unknown.clone(), every_type()].concat(), CLIENT_REVISION), Scanned::Unsupported);
        // Other packets: progress, end of stream.
        for code in [server::PROGRESS, server::END_OF_STREAM, server::EXCEPTION] {
            let mut bytes = Vec::new();
            put_varint(&mut bytes, code);
            assert_eq!(PacketScan::default().resume(&bytes, CLIENT_REVISION), Scanned::Unsupported);
        }
    }
}
