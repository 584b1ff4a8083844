//! Request bodies: Content-Length and chunked framing ([`super::chunked`]), size limits, gzip.

use std::io::Read;

use monoio::time::Instant;

use super::chunked::{ChunkedDecoder, Chunks};
use super::error::HttpError;
use super::request::BodyFraming;
use crate::io::{ReadError, Socket};
use crate::server::BodyBytes;

fn read_err(e: ReadError) -> HttpError {
    match e {
        ReadError::Timeout => HttpError::RequestTimeout,
        // The peer is gone; the error is never written.
        ReadError::Closed | ReadError::Stopped => HttpError::BadRequest("connection closed mid-body"),
    }
}

/// A connection's input as a request's body is read: the request's head, its first
/// `head` bytes, and bytes read past it.
pub struct Input<'a> {
    /// The bytes.
    pub buf: &'a mut Vec<u8>,
    /// How many of the first are the head's.
    pub head: usize,
}

/// Reads the body framed by `framing` into `out`, counting it against the shard's body
/// budget in `held` (503 `server_busy` when there is no room), and returns where in `out`
/// the body starts. The head is gone from `input` afterwards, whatever the outcome, and
/// bytes past the body (a pipelined request) are left in it.
pub async fn read(
    sock: &mut Socket,
    input: Input<'_>,
    framing: BodyFraming,
    limit: usize,
    deadline: Instant,
    out: &mut Vec<u8>,
    held: &mut BodyBytes<'_>,
) -> Result<usize, HttpError> {
    out.clear();
    let busy = |held: &BodyBytes<'_>| HttpError::ServerBusy { retry_after: held.retry_after_secs() };
    let Input { buf, head } = input;
    let head = head.min(buf.len());
    match framing {
        BodyFraming::None => {
            buf.drain(..head);
            Ok(0)
        }
        BodyFraming::Length(n) => {
            let end = head.saturating_add(n);
            // Counted as its bytes arrive (what the connection's buffer holds of it), and
            // the buffer grows with them: a declared length alone neither spends the
            // budget nor makes the server allocate.
            let arrived = |buf: &Vec<u8>| buf.len().min(end) - head;
            let read = async {
                if n > limit {
                    return Err(HttpError::PayloadTooLarge { limit });
                }
                if !held.grow_to(arrived(buf)) {
                    return Err(busy(held));
                }
                buf.reserve(end.min(head + (16 << 10)).saturating_sub(buf.len()));
                while buf.len() < end {
                    sock.read(buf, deadline).await.map_err(read_err)?;
                    if !held.grow_to(arrived(buf)) {
                        return Err(busy(held));
                    }
                }
                Ok(())
            };
            if let Err(e) = read.await {
                buf.drain(..head);
                return Err(e);
            }
            if buf.len() == end {
                // Nothing pipelined behind the body (the usual case): the buffer is handed
                // over, the head before the body left in it, instead of moving the body.
                std::mem::swap(buf, out);
                buf.clear();
                Ok(head)
            } else {
                out.extend_from_slice(&buf[head..end]);
                buf.drain(..end);
                Ok(0)
            }
        }
        BodyFraming::Chunked => {
            buf.drain(..head);
            // Consumed bytes are drained as the decoder goes: the buffer holds at most a
            // partial chunk line, and no byte is decoded twice.
            let mut sink = |data: &[u8]| {
                // Grown as a read buffer is: held as the budget counts it, not doubled.
                crate::io::grow_for(out, data.len());
                out.extend_from_slice(data);
                if held.grow_to(out.len()) {
                    Ok(())
                } else {
                    Err(busy(held))
                }
            };
            read_chunked(sock, buf, limit, deadline, &mut sink).await.map(|()| 0)
        }
    }
}

/// Reads past the body framed by `framing` without keeping it (at most `limit` bytes, as
/// for [`read`]): a request answered without its body must still be consumed, or its
/// bytes would be read as the next request. The buffer holds one read at a time; bytes
/// past the body are left in it.
pub async fn discard(
    sock: &mut Socket,
    buf: &mut Vec<u8>,
    framing: BodyFraming,
    limit: usize,
    deadline: Instant,
) -> Result<(), HttpError> {
    match framing {
        BodyFraming::None => Ok(()),
        BodyFraming::Length(n) => {
            if n > limit {
                return Err(HttpError::PayloadTooLarge { limit });
            }
            let mut left = n;
            loop {
                let here = left.min(buf.len());
                buf.drain(..here);
                left -= here;
                if left == 0 {
                    return Ok(());
                }
                sock.read(buf, deadline).await.map_err(read_err)?;
            }
        }
        BodyFraming::Chunked => read_chunked(sock, buf, limit, deadline, &mut |_| Ok(())).await,
    }
}

/// Decodes a chunked body from `buf` and the socket, handing its data to `sink` as it is
/// decoded. Consumed bytes are drained as the decoder goes: the buffer holds at most a
/// partial chunk line, and no byte is decoded twice; bytes past the body are left in it.
async fn read_chunked(
    sock: &mut Socket,
    buf: &mut Vec<u8>,
    limit: usize,
    deadline: Instant,
    sink: &mut dyn FnMut(&[u8]) -> Result<(), HttpError>,
) -> Result<(), HttpError> {
    let mut decoder = ChunkedDecoder::new(limit);
    loop {
        let mut refused = Ok(());
        let progress = decoder.decode(buf, &mut |data| {
            if refused.is_ok() {
                refused = sink(data);
            }
        })?;
        refused?;
        match progress {
            Chunks::Done(used) => {
                buf.drain(..used);
                return Ok(());
            }
            Chunks::More(used) => {
                buf.drain(..used);
            }
        }
        sock.read(buf, deadline).await.map_err(read_err)?;
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
    pub fn parse(v: Option<&str>) -> Result<Encoding, HttpError> {
        match v.map(|s| s.trim().to_ascii_lowercase()) {
            None => Ok(Encoding::Identity),
            Some(s) if s.is_empty() || s == "identity" => Ok(Encoding::Identity),
            Some(s) if s == "gzip" || s == "x-gzip" => Ok(Encoding::Gzip),
            Some(_) => Err(HttpError::UnsupportedMediaType("Content-Encoding (use gzip or identity)")),
        }
    }
}

/// Bytes of an inflate buffer kept for reuse between requests ([`release_inflated`]).
pub const INFLATED_KEEP: usize = 256 << 10;

/// Frees an inflated body once its records are staged, before the append waits for
/// Redis: a shard's body budget counts bodies as sent, so a small gzip body inflated to
/// its limit would otherwise hold that much, unbudgeted, for as long as Redis takes.
/// Only `keep` bytes (at most [`INFLATED_KEEP`], a typical body) stay for the next
/// request.
pub fn release_inflated(scratch: &mut Vec<u8>, keep: usize) {
    scratch.clear();
    scratch.shrink_to(keep.min(INFLATED_KEEP));
}

/// Decompresses a gzip body into `out`, refusing (413) past `limit` bytes: a small
/// compressed body cannot expand without bound.
pub fn gunzip(input: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), HttpError> {
    out.clear();
    let mut dec = flate2::read::MultiGzDecoder::new(input).take(limit as u64 + 1);
    match dec.read_to_end(out) {
        Ok(n) if n > limit => Err(HttpError::InflatedTooLarge { limit }),
        Ok(_) => Ok(()),
        Err(_) => Err(HttpError::UnsupportedMediaType("gzip body (it does not decompress)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn gzip_round_trips_and_bombs_are_refused() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![b'a'; 1 << 20]).expect("compress");
        let bomb = enc.finish().expect("finish");
        let mut out = Vec::new();
        assert!(gunzip(&bomb, 2 << 20, &mut out).is_ok());
        assert_eq!(out.len(), 1 << 20);
        assert_eq!(gunzip(&bomb, 1000, &mut out), Err(HttpError::InflatedTooLarge { limit: 1000 }));
        assert_eq!(
            HttpError::InflatedTooLarge { limit: 1000 }.message(),
            "body larger than 1000 bytes once decompressed"
        );
        assert!(matches!(gunzip(b"not gzip", 1000, &mut out), Err(HttpError::UnsupportedMediaType(_))));
        assert_eq!(Encoding::parse(Some("br")).map_err(|e| e.status()), Err(415));
    }
}
