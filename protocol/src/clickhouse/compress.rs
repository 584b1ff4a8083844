//! Compressed frames of the native protocol.
//!
//! A frame is `checksum (16) | method (1) | compressed size (4) | decompressed size (4) |
//! payload`, sizes little-endian, the compressed size counting the 9 header bytes, and the
//! checksum the CityHash128 (v1.0.2) of everything after it, written as its two 64-bit
//! halves, each little-endian. Method `0x82` is LZ4 (block format), `0x02` is none.

use super::wire::{Incomplete, Reader};

/// LZ4 method byte.
pub const METHOD_LZ4: u8 = 0x82;
/// Uncompressed method byte.
pub const METHOD_NONE: u8 = 0x02;
/// Header bytes after the checksum.
const HEADER: usize = 9;
/// Largest decompressed frame we accept (ClickHouse writes at most about 1 MiB).
pub const MAX_FRAME: usize = 64 << 20;

/// A frame could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// More bytes are needed.
    Incomplete,
    /// The checksum does not match.
    Checksum,
    /// Unknown method, impossible sizes, or LZ4 data that does not decode.
    Corrupt(String),
}

impl From<Incomplete> for FrameError {
    fn from(_: Incomplete) -> Self {
        FrameError::Incomplete
    }
}

fn checksum(data: &[u8]) -> [u8; 16] {
    let h = cityhash_rs::cityhash_102_128(data);
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&((h >> 64) as u64).to_le_bytes());
    out[8..].copy_from_slice(&(h as u64).to_le_bytes());
    out
}

/// Appends `raw` to `out` as LZ4 frames of at most `max_chunk` decompressed bytes each.
pub fn compress_into(raw: &[u8], max_chunk: usize, out: &mut Vec<u8>) {
    for chunk in raw.chunks(max_chunk.max(1)) {
        let start = out.len();
        out.resize(start + 16 + HEADER + lz4_flex::block::get_maximum_output_size(chunk.len()), 0);
        let body = start + 16 + HEADER;
        let n = match lz4_flex::block::compress_into(chunk, &mut out[body..]) {
            Ok(n) => n,
            Err(_) => {
                // Cannot happen (the buffer has the maximum size): fall back to no compression.
                out.truncate(start);
                write_frame(out, METHOD_NONE, chunk, chunk.len());
                continue;
            }
        };
        out.truncate(body + n);
        let h = start + 16;
        out[h] = METHOD_LZ4;
        out[h + 1..h + 5].copy_from_slice(&((HEADER + n) as u32).to_le_bytes());
        out[h + 5..h + 9].copy_from_slice(&(chunk.len() as u32).to_le_bytes());
        let sum = checksum(&out[h..]);
        out[start..start + 16].copy_from_slice(&sum);
    }
}

fn write_frame(out: &mut Vec<u8>, method: u8, payload: &[u8], decompressed: usize) {
    let start = out.len();
    out.extend_from_slice(&[0u8; 16]);
    out.push(method);
    out.extend_from_slice(&((HEADER + payload.len()) as u32).to_le_bytes());
    out.extend_from_slice(&(decompressed as u32).to_le_bytes());
    out.extend_from_slice(payload);
    let sum = checksum(&out[start + 16..]);
    out[start..start + 16].copy_from_slice(&sum);
}

/// Reads one frame from `r`, appending the decompressed bytes to `out`.
pub fn decompress_frame(r: &mut Reader<'_>, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let sum = r.bytes(16)?;
    let head = r.remaining();
    if head.len() < HEADER {
        return Err(FrameError::Incomplete);
    }
    let method = head[0];
    let compressed = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let decompressed = u32::from_le_bytes([head[5], head[6], head[7], head[8]]) as usize;
    // Sizes no frame of its method has are refused before its bytes are waited for (a
    // size changed on the way would otherwise wait for bytes that never come).
    let largest = match method {
        METHOD_LZ4 => HEADER + lz4_flex::block::get_maximum_output_size(decompressed),
        METHOD_NONE => HEADER + decompressed,
        _ => MAX_FRAME + HEADER,
    };
    if compressed < HEADER || decompressed > MAX_FRAME || compressed > MAX_FRAME + HEADER || compressed > largest {
        return Err(FrameError::Corrupt(format!("frame sizes {compressed}/{decompressed}")));
    }
    let frame = r.bytes(compressed)?;
    if checksum(frame) != sum {
        return Err(FrameError::Checksum);
    }
    let payload = &frame[HEADER..];
    match method {
        METHOD_LZ4 => {
            let start = out.len();
            out.resize(start + decompressed, 0);
            let n = lz4_flex::block::decompress_into(payload, &mut out[start..])
                .map_err(|e| FrameError::Corrupt(e.to_string()))?;
            if n != decompressed {
                return Err(FrameError::Corrupt(format!("LZ4 gave {n} bytes, header says {decompressed}")));
            }
        }
        METHOD_NONE => out.extend_from_slice(payload),
        m => return Err(FrameError::Corrupt(format!("unknown compression method {m:#x}"))),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_in_chunks() {
        let raw: Vec<u8> = (0..300_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let mut framed = Vec::new();
        compress_into(&raw, 1 << 20, &mut framed);
        assert!(framed.len() < raw.len() / 2);
        let mut out = Vec::new();
        let mut r = Reader::new(&framed);
        while !r.remaining().is_empty() {
            decompress_frame(&mut r, &mut out).expect("frame");
        }
        assert_eq!(out, raw);
    }

    #[test]
    fn corruption_and_truncation_are_detected() {
        let mut framed = Vec::new();
        compress_into(b"hello hello hello hello", 1 << 20, &mut framed);
        assert_eq!(
            decompress_frame(&mut Reader::new(&framed[..framed.len() - 1]), &mut Vec::new()),
            Err(FrameError::Incomplete)
        );
        let mut bad = framed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(decompress_frame(&mut Reader::new(&bad), &mut Vec::new()), Err(FrameError::Checksum));
        // A compressed size changed past what LZ4 can make of the frame's bytes: refused at
        // once, not waited for.
        let mut bigger = framed.clone();
        bigger[16 + 2] ^= 0x40;
        assert!(matches!(decompress_frame(&mut Reader::new(&bigger), &mut Vec::new()), Err(FrameError::Corrupt(_))));
    }
}
