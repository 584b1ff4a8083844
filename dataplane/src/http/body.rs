//! Request bodies: Content-Length and chunked framing, size limits, gzip.

use std::io::Read;

use monoio::net::TcpStream;
use monoio::time::Instant;

use super::read::{read_some, ReadError};
use super::request::BodyFraming;
use crate::error::IngestError;

fn read_err(e: ReadError) -> IngestError {
    match e {
        ReadError::Timeout => IngestError::RequestTimeout,
        // The peer is gone; the error is never written.
        ReadError::Closed => IngestError::BadRequest("connection closed mid-body"),
    }
}

/// Reads the body framed by `framing` into `out`. `buf` holds bytes already read past the
/// head; bytes past the body (a pipelined request) are left in it.
pub async fn read(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    framing: BodyFraming,
    limit: usize,
    deadline: Instant,
    out: &mut Vec<u8>,
) -> Result<(), IngestError> {
    out.clear();
    match framing {
        BodyFraming::None => Ok(()),
        BodyFraming::Length(n) => {
            if n > limit {
                return Err(IngestError::PayloadTooLarge { limit });
            }
            // Room for a typical body at once; a larger one grows as its bytes arrive, so
            // a declared length alone cannot make the server allocate.
            buf.reserve(n.min(256 << 10).saturating_sub(buf.len()));
            while buf.len() < n {
                read_some(stream, buf, deadline).await.map_err(read_err)?;
            }
            if buf.len() == n {
                // Nothing pipelined behind the body (the usual case): hand over the
                // buffer instead of copying it.
                std::mem::swap(buf, out);
            } else {
                out.extend_from_slice(&buf[..n]);
                buf.drain(..n);
            }
            Ok(())
        }
        BodyFraming::Chunked => {
            let mut pos = 0;
            loop {
                match decode_chunks(&buf[pos..], limit.saturating_sub(out.len()), out)? {
                    Chunks::Done(used) => {
                        buf.drain(..pos + used);
                        return Ok(());
                    }
                    Chunks::More(used) => pos += used,
                }
                read_some(stream, buf, deadline).await.map_err(read_err)?;
            }
        }
    }
}

/// Progress of chunked decoding over the bytes at hand.
#[derive(Debug, PartialEq, Eq)]
enum Chunks {
    /// The last chunk and trailers ended after this many bytes.
    Done(usize),
    /// This many bytes were whole chunks; more bytes are needed.
    More(usize),
}

/// Decodes whole chunks from `input` into `out`, at most `room` more bytes.
fn decode_chunks(input: &[u8], room: usize, out: &mut Vec<u8>) -> Result<Chunks, IngestError> {
    let mut pos = 0;
    let start_len = out.len();
    loop {
        let (data_at, size) = match httparse::parse_chunk_size(&input[pos..]) {
            Ok(httparse::Status::Complete((i, s))) => (pos + i, s),
            Ok(httparse::Status::Partial) => return Ok(Chunks::More(pos)),
            Err(_) => return Err(IngestError::BadRequest("malformed chunk size")),
        };
        if size == 0 {
            // Trailers: header lines until an empty line.
            let rest = &input[data_at..];
            if rest.starts_with(b"\r\n") {
                return Ok(Chunks::Done(data_at + 2));
            }
            return match rest.windows(4).position(|w| w == b"\r\n\r\n") {
                Some(i) => Ok(Chunks::Done(data_at + i + 4)),
                None if rest.len() > 8192 => Err(IngestError::BadRequest("trailers too large")),
                None => Ok(Chunks::More(pos)),
            };
        }
        // A chunk size is up to 16 hex digits: every sum with it is checked.
        let too_large = IngestError::PayloadTooLarge { limit: room };
        let size = usize::try_from(size).map_err(|_| too_large.clone())?;
        let decoded = out.len().saturating_sub(start_len);
        if size > room.saturating_sub(decoded) {
            return Err(too_large);
        }
        let end = data_at.checked_add(size).ok_or_else(|| too_large.clone())?;
        let crlf_end = end.checked_add(2).ok_or(too_large)?;
        if input.len() < crlf_end {
            return Ok(Chunks::More(pos));
        }
        if &input[end..crlf_end] != b"\r\n" {
            return Err(IngestError::BadRequest("chunk not followed by CRLF"));
        }
        out.extend_from_slice(&input[data_at..end]);
        pos = crlf_end;
    }
}

/// Which `Content-Encoding` a request uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// None, or `identity`.
    Identity,
    /// `gzip` (or `x-gzip`).
    Gzip,
}

impl Encoding {
    /// Reads the header value; anything but identity and gzip is refused (415).
    pub fn parse(v: Option<&str>) -> Result<Encoding, IngestError> {
        match v.map(|s| s.trim().to_ascii_lowercase()) {
            None => Ok(Encoding::Identity),
            Some(s) if s.is_empty() || s == "identity" => Ok(Encoding::Identity),
            Some(s) if s == "gzip" || s == "x-gzip" => Ok(Encoding::Gzip),
            Some(_) => Err(IngestError::UnsupportedMediaType("Content-Encoding (use gzip or identity)")),
        }
    }
}

/// Decompresses a gzip body into `out`, refusing (413) past `limit` bytes: a small
/// compressed body cannot expand without bound.
pub fn gunzip(input: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), IngestError> {
    out.clear();
    let mut dec = flate2::read::MultiGzDecoder::new(input).take(limit as u64 + 1);
    match dec.read_to_end(out) {
        Ok(n) if n > limit => Err(IngestError::PayloadTooLarge { limit }),
        Ok(_) => Ok(()),
        Err(_) => Err(IngestError::UnsupportedMediaType("gzip body (it does not decompress)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn chunks_decode_across_reads() {
        let full = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\n\r\nNEXT";
        let mut out = Vec::new();
        assert_eq!(decode_chunks(&full[..9], 100, &mut out), Ok(Chunks::More(9)));
        assert_eq!(out, b"Wiki");
        assert_eq!(decode_chunks(&full[9..], 100, &mut out), Ok(Chunks::Done(full.len() - 9 - 4)));
        assert_eq!(out, b"Wikipedia");
    }

    #[test]
    fn chunk_limits_and_errors() {
        let mut out = Vec::new();
        assert_eq!(
            decode_chunks(b"a\r\n0123456789\r\n0\r\n\r\n", 5, &mut out),
            Err(IngestError::PayloadTooLarge { limit: 5 })
        );
        assert!(matches!(decode_chunks(b"zz\r\n", 5, &mut out), Err(IngestError::BadRequest(_))));
        assert!(matches!(decode_chunks(b"1\r\nab\r\n", 5, &mut Vec::new()), Err(IngestError::BadRequest(_))));
    }

    #[test]
    fn c1_chunk_sizes_near_u64_max_are_refused() {
        for size in ["FFFFFFFFFFFFFFFE", "FFFFFFFFFFFFFFFF", "8000000000000000"] {
            let input = format!("5\r\nhello\r\n{size}\r\n");
            let mut out = Vec::new();
            assert_eq!(
                decode_chunks(input.as_bytes(), 100, &mut out),
                Err(IngestError::PayloadTooLarge { limit: 100 }),
                "{size}"
            );
        }
    }

    #[test]
    fn gzip_round_trips_and_bombs_are_refused() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![b'a'; 1 << 20]).expect("compress");
        let bomb = enc.finish().expect("finish");
        let mut out = Vec::new();
        assert!(gunzip(&bomb, 2 << 20, &mut out).is_ok());
        assert_eq!(out.len(), 1 << 20);
        assert_eq!(gunzip(&bomb, 1000, &mut out), Err(IngestError::PayloadTooLarge { limit: 1000 }));
        assert!(matches!(gunzip(b"not gzip", 1000, &mut out), Err(IngestError::UnsupportedMediaType(_))));
        assert_eq!(Encoding::parse(Some("br")).map_err(|e| e.status()), Err(415));
    }
}
