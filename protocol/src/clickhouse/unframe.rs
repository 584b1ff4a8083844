//! A compressed block packet made whole, frame by frame, as it arrives.
//!
//! When a query asks for compression, the server sends each block of its answer (`Data`,
//! `Totals`, `Extremes`; never `Log`) as the packet's code and table name, then the block
//! in compressed frames ([`super::compress`]), each carrying the CityHash128 of its bytes:
//! a byte changed on the way is found, where an uncompressed block has no checksum. The
//! server ends a block at the end of a frame. [`Unframe`] takes each frame once it is
//! whole, checks and decompresses it once, and keeps the packet as it would have come
//! uncompressed, which the scan ([`super::scan`]) and decoder ([`super::packet::decode`])
//! then read as they read an uncompressed packet.

use super::compress::{self, FrameError};
use super::packet::{server, ProtocolError};
use super::wire::Reader;

/// Whether the packet whose bytes begin `buf`, in the answer to a query that asked for
/// compression, carries its block in frames: `None` until its code is at hand.
pub fn is_framed(buf: &[u8]) -> Option<bool> {
    let code = Reader::new(buf).varint().ok()?;
    Some(matches!(code, server::DATA | server::TOTALS | server::EXTREMES))
}

/// The longest table name a framed packet's head may give (results name none).
const MAX_TABLE_NAME: u64 = 64 << 10;

/// One framed packet being made whole.
#[derive(Debug, Default)]
pub struct Unframe {
    /// The packet as it would have come uncompressed: code, table name, then the
    /// decompressed bytes of every frame taken so far.
    plain: Vec<u8>,
    /// Whether the code and table name were taken.
    head: bool,
}

impl Unframe {
    /// Takes from `buf` — the packet's bytes that follow what earlier calls took — its
    /// next frame, checked and decompressed (the packet's code and table name with its
    /// first): the number of bytes taken, or `None` while `buf` does not hold it whole.
    /// One frame at a time: only the scan of what came so far knows whether the block
    /// needs another (after its last frame come the answer's other packets).
    pub fn take_frame(&mut self, buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
        let mut r = Reader::new(buf);
        if !self.head {
            if r.varint().is_err() {
                return Ok(None);
            }
            // The name's length is outside every checksum: a changed one is refused rather
            // than waited for (a result's table name is empty).
            match Reader::new(r.remaining()).varint() {
                Err(_) => return Ok(None),
                Ok(n) if n > MAX_TABLE_NAME => {
                    return Err(ProtocolError::Frame(format!("a block's table name of {n} bytes")));
                }
                Ok(_) => {}
            }
            if r.str().is_err() {
                return Ok(None);
            }
        }
        let head = r.position();
        let before = self.plain.len();
        if !self.head {
            self.plain.extend_from_slice(&buf[..head]);
        }
        match compress::decompress_frame(&mut r, &mut self.plain) {
            Ok(()) => {
                self.head = true;
                Ok(Some(r.position()))
            }
            Err(e) => {
                self.plain.truncate(before);
                match e {
                    FrameError::Incomplete => Ok(None),
                    FrameError::Checksum => Err(ProtocolError::Frame("checksum mismatch".into())),
                    FrameError::Corrupt(m) => Err(ProtocolError::Frame(m)),
                }
            }
        }
    }

    /// The packet, uncompressed, as far as it came.
    pub fn plain(&self) -> &[u8] {
        &self.plain
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clickhouse::compress::compress_into;
    use crate::clickhouse::wire::{put_str, put_varint};

    /// A packet's head and its block as `frame` bytes per frame; and the packet uncompressed.
    fn framed(code: u64, block: &[u8], frame: usize) -> (Vec<u8>, Vec<u8>) {
        let mut head = Vec::new();
        put_varint(&mut head, code);
        put_str(&mut head, b"");
        let mut wire = head.clone();
        compress_into(block, frame, &mut wire);
        let mut plain = head;
        plain.extend_from_slice(block);
        (wire, plain)
    }

    #[test]
    fn frames_are_taken_whole_however_the_bytes_are_cut() {
        let block: Vec<u8> = (0..40_000u32).flat_map(|i| (i % 97).to_le_bytes()).collect();
        let (wire, plain) = framed(server::DATA, &block, 10_000);
        for step in [1, 7, 25, 26, 4_096, wire.len()] {
            let mut u = Unframe::default();
            let mut held = Vec::new();
            for piece in wire.chunks(step) {
                held.extend_from_slice(piece);
                while let Some(taken) = u.take_frame(&held).expect("frames") {
                    held.drain(..taken);
                }
                // Only whole frames are taken: what is held is less than one frame.
                assert!(held.len() < 10_100, "step {step}: {} bytes held", held.len());
            }
            assert!(held.is_empty(), "step {step}");
            assert_eq!(u.plain(), &plain[..], "step {step}");
        }
    }

    #[test]
    fn a_byte_changed_on_the_way_is_found() {
        let block = vec![7u8; 5_000];
        let (wire, _) = framed(server::DATA, &block, 1 << 20);
        let head = 2; // code and an empty table name
        for at in [head, head + 16, head + 20, wire.len() - 1] {
            let mut bad = wire.clone();
            bad[at] ^= 0x10;
            let found = Unframe::default().take_frame(&bad);
            assert!(matches!(found, Err(ProtocolError::Frame(_))), "byte {at}: {found:?}");
        }
    }

    #[test]
    fn a_table_name_too_long_is_refused_not_waited_for() {
        let mut head = Vec::new();
        put_varint(&mut head, server::DATA);
        put_varint(&mut head, 1 << 40);
        assert!(matches!(Unframe::default().take_frame(&head), Err(ProtocolError::Frame(_))));
    }

    #[test]
    fn block_packets_are_framed_others_not() {
        for (code, framed) in [
            (server::DATA, true),
            (server::TOTALS, true),
            (server::EXTREMES, true),
            (server::LOG, false),
            (server::PROGRESS, false),
            (server::EXCEPTION, false),
            (server::END_OF_STREAM, false),
        ] {
            let mut b = Vec::new();
            put_varint(&mut b, code);
            assert_eq!(is_framed(&b), Some(framed), "code {code}");
        }
        assert_eq!(is_framed(&[]), None);
    }
}
