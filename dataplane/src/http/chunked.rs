//! `Transfer-Encoding: chunked`, decoded incrementally and sans I/O.
//!
//! The decoder consumes its input as it goes (the caller drains what it consumed), so a
//! chunk is never scanned twice and the connection buffers only a partial chunk line.
//! Three bounds hold whatever the sender does and however the bytes are split into reads:
//! a chunk-size line (extensions included) is at most [`MAX_CHUNK_LINE`] bytes, the
//! trailers at most [`MAX_TRAILERS`], and the whole body as sent at most
//! [`wire_limit`]`(limit)`, so tiny chunks with long extensions cannot carry more than
//! the body limit on the wire. Every size from the wire is checked arithmetic.
//!
//! A chunk line's extensions and the trailer lines hold no control byte but HTAB, and a
//! trailer line is a field (`name: value`): a bare LF, CR or NUL there is where a proxy
//! that ends lines at LF and this decoder would frame the same bytes differently
//! (request smuggling), so it is refused with 400 as soon as it is seen.

use super::error::HttpError;

/// Longest chunk-size line, extensions and CRLF included.
pub const MAX_CHUNK_LINE: usize = 4096;
/// Most bytes of trailer fields after the last chunk.
pub const MAX_TRAILERS: usize = 8192;

/// Most bytes a chunked body of at most `limit` data bytes may take on the wire: the
/// data, an eighth more for chunk framing, and room for one longest chunk line and the
/// trailers.
pub fn wire_limit(limit: usize) -> usize {
    limit.saturating_add(limit / 8).saturating_add(MAX_CHUNK_LINE + MAX_TRAILERS)
}

/// Where the decoder is in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data; this many bytes of it are still to come.
    Data(usize),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
    /// The body has ended.
    Done,
}

/// Progress over the bytes given to [`ChunkedDecoder::decode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunks {
    /// The body ended after this many bytes; what follows belongs to the next request.
    Done(usize),
    /// This many bytes were consumed (drain them); more are needed.
    More(usize),
}

/// Decodes one chunked body, fed with the bytes as they arrive.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    /// Most data bytes.
    limit: usize,
    /// Data bytes so far.
    decoded: usize,
    /// Bytes consumed so far, framing included.
    wire: usize,
    /// Trailer bytes so far.
    trailers: usize,
}

impl ChunkedDecoder {
    /// A decoder for a body of at most `limit` data bytes.
    pub fn new(limit: usize) -> ChunkedDecoder {
        ChunkedDecoder { state: State::Size, limit, decoded: 0, wire: 0, trailers: 0 }
    }

    /// Data bytes decoded so far.
    pub fn decoded(&self) -> usize {
        self.decoded
    }

    /// Decodes from the front of `input` (bytes not consumed by an earlier call), handing
    /// each piece of chunk data to `emit`. Errors: 400 for bad framing or an overlong
    /// line, 413 past the limit (as data or as sent).
    pub fn decode(&mut self, input: &[u8], emit: &mut impl FnMut(&[u8])) -> Result<Chunks, HttpError> {
        let too_large = HttpError::PayloadTooLarge { limit: self.limit };
        let mut pos = 0;
        let progress = loop {
            let rest = &input[pos..];
            match self.state {
                // Leading zeros are read past (`chunk-size = 1*HEXDIG`): the parser
                // counts them against the 16 digits a 64-bit size has.
                State::Size => match httparse::parse_chunk_size(&rest[leading_zeros(rest)..]) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        let used = used + leading_zeros(rest);
                        if used > MAX_CHUNK_LINE {
                            return Err(HttpError::BadRequest("chunk size line too long"));
                        }
                        // The parser took every byte of an extension up to CRLF.
                        if rest[..used - 2].iter().any(|&b| control(b)) {
                            return Err(HttpError::BadRequest("control byte in a chunk extension"));
                        }
                        pos += used;
                        let size = usize::try_from(size).map_err(|_| too_large.clone())?;
                        if size > self.limit - self.decoded {
                            return Err(too_large);
                        }
                        self.state = if size == 0 { State::Trailers } else { State::Data(size) };
                    }
                    Ok(httparse::Status::Partial) if rest.len() >= MAX_CHUNK_LINE => {
                        return Err(HttpError::BadRequest("chunk size line too long"));
                    }
                    Ok(httparse::Status::Partial) if rest.iter().any(|&b| control(b) && b != b'\r') => {
                        return Err(HttpError::BadRequest("control byte in a chunk extension"));
                    }
                    Ok(httparse::Status::Partial) => break Chunks::More(pos),
                    Err(_) => return Err(HttpError::BadRequest("malformed chunk size")),
                },
                State::Data(left) => {
                    let take = left.min(rest.len());
                    if take == 0 {
                        break Chunks::More(pos);
                    }
                    emit(&rest[..take]);
                    self.decoded += take;
                    pos += take;
                    self.state = if take == left { State::DataEnd } else { State::Data(left - take) };
                }
                State::DataEnd => match rest {
                    [b'\r', b'\n', ..] => {
                        pos += 2;
                        self.state = State::Size;
                    }
                    [] | [b'\r'] => break Chunks::More(pos),
                    _ => return Err(HttpError::BadRequest("chunk not followed by CRLF")),
                },
                State::Trailers => match rest.windows(2).position(|w| w == b"\r\n") {
                    Some(line) if line > 0 && !trailer_field(&rest[..line]) => {
                        return Err(HttpError::BadRequest("malformed trailer field"));
                    }
                    Some(line) => {
                        pos += line + 2;
                        self.trailers += line + 2;
                        if self.trailers > MAX_TRAILERS {
                            return Err(HttpError::BadRequest("trailers too large"));
                        }
                        if line == 0 {
                            self.state = State::Done;
                        }
                    }
                    None if self.trailers + rest.len() > MAX_TRAILERS => {
                        return Err(HttpError::BadRequest("trailers too large"));
                    }
                    None if rest.strip_suffix(b"\r").unwrap_or(rest).iter().any(|&b| control(b)) => {
                        return Err(HttpError::BadRequest("malformed trailer field"));
                    }
                    None => break Chunks::More(pos),
                },
                State::Done => break Chunks::Done(pos),
            }
            if self.wire.saturating_add(pos) > wire_limit(self.limit) {
                return Err(too_large);
            }
        };
        self.wire = self.wire.saturating_add(pos);
        Ok(progress)
    }
}

/// A control byte other than HTAB (RFC 9110 5.5: none in a field value or extension).
fn control(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

/// Whether a trailer line (without its CRLF) is a field: a name (a token: no white space
/// before the colon, RFC 9112 5.1), a colon, no control byte.
fn trailer_field(line: &[u8]) -> bool {
    let token = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    line.iter().position(|&b| b == b':').is_some_and(|colon| colon > 0 && line[..colon].iter().all(token))
        && !line.iter().any(|&b| control(b))
}

/// How many `0`s start `line` before its size's last digit: those followed by another hex
/// digit (`000a` → 3, `0\r\n` → 0).
fn leading_zeros(line: &[u8]) -> usize {
    line.windows(2).take_while(|w| w[0] == b'0' && w[1].is_ascii_hexdigit()).count()
}

/// Decodes a whole chunked body from the front of `input` into `out`, at most `limit`
/// data bytes: [`Chunks::Done`] with the bytes the body took, or [`Chunks::More`] if
/// `input` ends inside it. (The one-shot form of [`ChunkedDecoder`].)
pub fn decode_chunks(input: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<Chunks, HttpError> {
    ChunkedDecoder::new(limit).decode(input, &mut |data| out.extend_from_slice(data))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const BODY: &[u8] = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nTrailer: x\r\n\r\nNEXT";

    #[test]
    fn decodes_whole_and_leaves_what_follows() {
        let mut out = Vec::new();
        assert_eq!(decode_chunks(BODY, 100, &mut out), Ok(Chunks::Done(BODY.len() - 4)));
        assert_eq!(out, b"Wikipedia");
    }

    #[test]
    fn decodes_byte_by_byte_consuming_as_it_goes() {
        // Each call gets the bytes not consumed yet plus one more, as reads would.
        let mut dec = ChunkedDecoder::new(100);
        let mut out = Vec::new();
        let (mut start, mut end) = (0, 0);
        let done = loop {
            end += 1;
            match dec.decode(&BODY[start..end], &mut |d| out.extend_from_slice(d)).unwrap() {
                Chunks::Done(n) => break start + n,
                Chunks::More(n) => start += n,
            }
            // Only a partial chunk line is ever kept.
            assert!(end - start <= 12, "{start}..{end}");
        };
        assert_eq!((out.as_slice(), done), (b"Wikipedia".as_slice(), BODY.len() - 4));
    }

    #[test]
    fn sizes_with_leading_zeros() {
        let mut out = Vec::new();
        let body = b"00000000000000000000004\r\nWiki\r\n0000000000000000000\r\n\r\n";
        assert_eq!(decode_chunks(body, 100, &mut out), Ok(Chunks::Done(body.len())));
        assert_eq!(out, b"Wiki");
        // Still 16 digits at most once the zeros are past, and a line of at most MAX_CHUNK_LINE.
        assert!(matches!(decode_chunks(b"010000000000000000\r\n", 5, &mut Vec::new()), Err(HttpError::BadRequest(_))));
        let long = [&vec![b'0'; MAX_CHUNK_LINE][..], b"1\r\nx\r\n0\r\n\r\n"].concat();
        assert!(matches!(decode_chunks(&long, 5, &mut Vec::new()), Err(HttpError::BadRequest(_))));
    }

    #[test]
    fn limits_and_errors() {
        let mut out = Vec::new();
        assert_eq!(
            decode_chunks(b"a\r\n0123456789\r\n0\r\n\r\n", 5, &mut out),
            Err(HttpError::PayloadTooLarge { limit: 5 })
        );
        // The limit counts the whole body, not each chunk.
        assert_eq!(
            decode_chunks(b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n", 5, &mut out),
            Err(HttpError::PayloadTooLarge { limit: 5 })
        );
        assert!(matches!(decode_chunks(b"zz\r\n", 5, &mut out), Err(HttpError::BadRequest(_))));
        assert!(matches!(decode_chunks(b"1\r\nab\r\n", 5, &mut Vec::new()), Err(HttpError::BadRequest(_))));
    }

    #[test]
    fn c1_chunk_sizes_near_u64_max_are_refused() {
        for size in ["FFFFFFFFFFFFFFFE", "FFFFFFFFFFFFFFFF", "8000000000000000"] {
            let input = format!("5\r\nhello\r\n{size}\r\n");
            assert_eq!(
                decode_chunks(input.as_bytes(), 100, &mut Vec::new()),
                Err(HttpError::PayloadTooLarge { limit: 100 }),
                "{size}"
            );
        }
    }

    #[test]
    fn c5_a_chunk_line_is_bounded_whatever_the_reads() {
        let long = format!("1;{}\r\nx\r\n0\r\n\r\n", "a".repeat(MAX_CHUNK_LINE));
        // All at once, and in pieces.
        assert!(matches!(decode_chunks(long.as_bytes(), 100, &mut Vec::new()), Err(HttpError::BadRequest(_))));
        let mut dec = ChunkedDecoder::new(100);
        let piece = &long.as_bytes()[..MAX_CHUNK_LINE / 2];
        assert_eq!(dec.decode(piece, &mut |_| {}), Ok(Chunks::More(0)));
        let piece = &long.as_bytes()[..MAX_CHUNK_LINE];
        assert!(matches!(dec.decode(piece, &mut |_| {}), Err(HttpError::BadRequest(_))));
        // A line just under the bound is fine.
        let ok = format!("1;{}\r\nx\r\n0\r\n\r\n", "a".repeat(MAX_CHUNK_LINE - 5));
        assert!(matches!(decode_chunks(ok.as_bytes(), 100, &mut Vec::new()), Ok(Chunks::Done(_))));
    }

    #[test]
    fn c5_framing_counts_against_the_limit_as_sent() {
        let limit = 1000;
        let chunk = format!("1;{}\r\nx\r\n", "e".repeat(4000));
        let mut dec = ChunkedDecoder::new(limit);
        let mut decoded = 0;
        let err = loop {
            match dec.decode(chunk.as_bytes(), &mut |d| decoded += d.len()) {
                Ok(Chunks::More(n)) => assert_eq!(n, chunk.len()),
                Ok(Chunks::Done(_)) => panic!("no last chunk was sent"),
                Err(e) => break e,
            }
        };
        assert_eq!(err, HttpError::PayloadTooLarge { limit });
        assert!((decoded - 1) * chunk.len() <= wire_limit(limit), "stopped once past the wire limit");
    }

    #[test]
    fn trailers_are_bounded() {
        let many = format!("0\r\n{}", "T: v\r\n".repeat(MAX_TRAILERS / 6 + 1));
        assert_eq!(
            decode_chunks(many.as_bytes(), 10, &mut Vec::new()),
            Err(HttpError::BadRequest("trailers too large"))
        );
        let mut dec = ChunkedDecoder::new(10);
        assert_eq!(dec.decode(b"0\r\nT: v\r\n", &mut |_| {}), Ok(Chunks::More(9)));
        assert_eq!(dec.decode(b"\r\n", &mut |_| {}), Ok(Chunks::Done(2)));
    }

    #[test]
    fn a_control_byte_in_an_extension_or_a_trailer_is_refused_as_soon_as_seen() {
        let refused = |input: &[u8], why: &'static str| {
            assert_eq!(decode_chunks(input, 100, &mut Vec::new()), Err(HttpError::BadRequest(why)), "{input:?}");
        };
        // Whole, and cut before the line ends (no wait for a CRLF that a proxy saw as LF).
        for body in [&b"5;ext=a\nb\r\nhello\r\n0\r\n\r\n"[..], b"5;e\0\r\nhello\r\n0\r\n\r\n", b"5;a\x7f\r\n", b"5;a\n"]
        {
            refused(body, "control byte in a chunk extension");
        }
        for body in [
            &b"0\r\nX: a\nb\r\n\r\n"[..],
            b"0\r\nX: a\rb\r\n\r\n",
            b"0\r\nno colon\r\n\r\n",
            b"0\r\n: no name\r\n\r\n",
            b"0\r\nX-T : space before the colon\r\n\r\n",
            b"0\r\nX(T): not a token\r\n\r\n",
            b"0\r\n\n",
            b"0\r\nX: \0",
        ] {
            refused(body, "malformed trailer field");
        }
        // Tabs, extensions and fields as the grammar has them pass; a CR at a read's end waits.
        for body in [&b"5;a=b;c=\"d e\"\t\r\nhello\r\n0\r\nX-T: a\tb\r\n\r\n"[..], b"5 ;a\r\nhello\r\n0\r\n\r\n"] {
            let mut out = Vec::new();
            assert!(matches!(decode_chunks(body, 100, &mut out), Ok(Chunks::Done(n)) if n == body.len()), "{body:?}");
            assert_eq!(out, b"hello");
        }
        assert_eq!(decode_chunks(b"0\r\nX: a\r", 100, &mut Vec::new()), Ok(Chunks::More(3)));
    }
}
