//! Request heads: what the server needs from the request line and headers.

use crate::error::IngestError;

/// Most headers in one request.
const MAX_HEADERS: usize = 64;
/// Largest request head.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Request method, as far as routing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// HEAD
    Head,
    /// POST
    Post,
    /// Anything else.
    Other,
}

/// How the body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    None,
    /// `Content-Length`.
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// The parts of a request head the server uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Method.
    pub method: Method,
    /// Path without the query string.
    pub path: String,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
    /// Body framing.
    pub framing: BodyFraming,
    /// `Content-Type`, if sent.
    pub content_type: Option<String>,
    /// `Content-Encoding`, if sent.
    pub content_encoding: Option<String>,
    /// `Expect: 100-continue` was sent.
    pub expect_continue: bool,
    /// `X-Game-Id`.
    pub game_id: Option<String>,
    /// `X-Timestamp`.
    pub timestamp: Option<String>,
    /// `X-Nonce`.
    pub nonce: Option<String>,
    /// `X-Signature`.
    pub signature: Option<String>,
    /// The request is HTTP/1.0 (whose keep-alive the response must confirm).
    pub http10: bool,
    /// Bytes the head took in the buffer.
    pub len: usize,
}

/// A `Content-Length` value: one or more digits and nothing else (RFC 9110 §8.6; a sign
/// or a list could be read differently by a proxy in front).
fn parse_content_length(v: &str) -> Option<usize> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.bytes().try_fold(0usize, |n, d| n.checked_mul(10)?.checked_add(usize::from(d - b'0')))
}

/// The path of a request target: origin form (`/path?query`) as is, absolute form
/// (`http://host:port/path?query`, RFC 9112 §3.2.2) without its scheme and authority;
/// without the query either way.
fn target_path(target: &str) -> &str {
    let scheme_len = ["http://", "https://"]
        .iter()
        .find(|p| target.get(..p.len()).is_some_and(|t| t.eq_ignore_ascii_case(p)))
        .map(|p| p.len());
    let path = match scheme_len {
        Some(n) => target[n..].find('/').map_or("/", |i| &target[n + i..]),
        None => target,
    };
    path.split('?').next().unwrap_or(path)
}

/// Headers that may appear once; a second occurrence is refused, naming the header,
/// rather than letting one win where a proxy in front may have read the other.
const SINGLE: [&str; 7] =
    ["X-Game-Id", "X-Timestamp", "X-Nonce", "X-Signature", "Content-Type", "Content-Encoding", "Transfer-Encoding"];

fn text(v: &[u8]) -> Result<String, IngestError> {
    std::str::from_utf8(v)
        .map(|s| s.trim().to_owned())
        .map_err(|_| IngestError::BadRequest("header value is not UTF-8"))
}

/// Parses a head from the front of `buf`: `Ok(None)` when it is not complete yet.
pub fn parse(buf: &[u8]) -> Result<Option<Head>, IngestError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        // The limit holds however the head arrived: in one read or in many.
        Ok(httparse::Status::Complete(n)) if n > MAX_HEAD_BYTES => {
            return Err(IngestError::BadRequest("request head too large"));
        }
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEAD_BYTES {
                return Err(IngestError::BadRequest("request head too large"));
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(IngestError::BadRequest("too many headers")),
        Err(_) => return Err(IngestError::BadRequest("malformed request head")),
    };
    let method = match req.method {
        Some("GET") => Method::Get,
        Some("HEAD") => Method::Head,
        Some("POST") => Method::Post,
        _ => Method::Other,
    };
    let version_1_1 = req.version == Some(1);
    let path = target_path(req.path.unwrap_or("/")).to_owned();
    let mut head = Head {
        method,
        path,
        keep_alive: version_1_1,
        framing: BodyFraming::None,
        content_type: None,
        content_encoding: None,
        expect_continue: false,
        game_id: None,
        timestamp: None,
        nonce: None,
        signature: None,
        http10: !version_1_1,
        len,
    };
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    let mut seen = [false; SINGLE.len()];
    for h in req.headers.iter() {
        let name = h.name;
        if let Some(i) = SINGLE.iter().position(|s| name.eq_ignore_ascii_case(s)) {
            if std::mem::replace(&mut seen[i], true) {
                return Err(IngestError::DuplicateHeader(SINGLE[i]));
            }
        }
        if name.eq_ignore_ascii_case("content-length") {
            let v = text(h.value)?;
            let n = parse_content_length(&v).ok_or(IngestError::BadRequest("invalid Content-Length"))?;
            if content_length.is_some_and(|c| c != n) {
                return Err(IngestError::BadRequest("conflicting Content-Length"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let v = text(h.value)?;
            if !v.eq_ignore_ascii_case("chunked") {
                return Err(IngestError::BadRequest("only chunked Transfer-Encoding is supported"));
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case("connection") {
            let v = text(h.value)?.to_ascii_lowercase();
            if v.split(',').any(|t| t.trim() == "close") {
                head.keep_alive = false;
            } else if v.split(',').any(|t| t.trim() == "keep-alive") {
                head.keep_alive = true;
            }
        } else if name.eq_ignore_ascii_case("content-type") {
            head.content_type = Some(text(h.value)?);
        } else if name.eq_ignore_ascii_case("content-encoding") {
            head.content_encoding = Some(text(h.value)?);
        } else if name.eq_ignore_ascii_case("expect") {
            head.expect_continue = text(h.value)?.eq_ignore_ascii_case("100-continue");
        } else if name.eq_ignore_ascii_case("x-game-id") {
            head.game_id = Some(text(h.value)?);
        } else if name.eq_ignore_ascii_case("x-timestamp") {
            head.timestamp = Some(text(h.value)?);
        } else if name.eq_ignore_ascii_case("x-nonce") {
            head.nonce = Some(text(h.value)?);
        } else if name.eq_ignore_ascii_case("x-signature") {
            head.signature = Some(text(h.value)?);
        }
    }
    head.framing = match (chunked, content_length) {
        (true, Some(_)) => return Err(IngestError::BadRequest("both Content-Length and Transfer-Encoding")),
        (true, None) => BodyFraming::Chunked,
        (false, Some(0)) | (false, None) => BodyFraming::None,
        (false, Some(n)) => BodyFraming::Length(n),
    };
    Ok(Some(head))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_parts_that_matter() {
        let raw = b"POST /api/ingest/events?x=1 HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n\
Content-Length: 12\r\nX-Game-Id: g1\r\nX-Timestamp: 17\r\nX-Nonce: n\r\nX-Signature: s\r\n\r\n{}";
        let h = parse(raw).expect("valid").expect("complete");
        assert_eq!(h.method, Method::Post);
        assert_eq!(h.path, "/api/ingest/events");
        assert!(h.keep_alive);
        assert_eq!(h.framing, BodyFraming::Length(12));
        assert_eq!(h.game_id.as_deref(), Some("g1"));
        assert_eq!(h.len, raw.len() - 2);
    }

    #[test]
    fn partial_heads_wait_and_smuggling_is_refused() {
        assert_eq!(parse(b"POST / HTTP/1.1\r\nHost"), Ok(None));
        let both = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(parse(both), Err(IngestError::BadRequest(_))));
        let two = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n";
        assert!(matches!(parse(two), Err(IngestError::BadRequest(_))));
        let h10 = parse(b"GET /healthz HTTP/1.0\r\n\r\n").expect("valid").expect("complete");
        assert!(!h10.keep_alive && h10.http10);
    }

    #[test]
    fn hostile9_content_length_is_digits_only() {
        assert_eq!(parse_content_length("12"), Some(12));
        assert_eq!(parse_content_length("007"), Some(7));
        for bad in ["+5", "-5", "5,5", "0x10", "", "5 5", "99999999999999999999999"] {
            assert_eq!(parse_content_length(bad), None, "{bad}");
        }
        let plus = b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello";
        assert_eq!(parse(plus), Err(IngestError::BadRequest("invalid Content-Length")));
    }

    #[test]
    fn hostile10_head_size_limit_holds_in_one_read() {
        let big = format!("GET / HTTP/1.1\r\nX-Filler: {}\r\n\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(parse(big.as_bytes()), Err(IngestError::BadRequest("request head too large")));
        assert_eq!(
            parse(&big.as_bytes()[..MAX_HEAD_BYTES + 1]),
            Err(IngestError::BadRequest("request head too large"))
        );
    }

    #[test]
    fn hostile11_absolute_form_targets() {
        for (target, path) in [
            ("/api/ingest/events?x", "/api/ingest/events"),
            ("http://h:8080/api/ingest/events?x", "/api/ingest/events"),
            ("HTTPS://h/healthz", "/healthz"),
            ("http://h", "/"),
            ("http://h?x", "/"),
            ("*", "*"),
        ] {
            assert_eq!(target_path(target), path, "{target}");
        }
    }

    #[test]
    fn hostile12_single_headers_are_refused_twice() {
        let twice = b"POST / HTTP/1.1\r\nX-Nonce: a\r\nx-nonce: a\r\n\r\n";
        assert_eq!(parse(twice), Err(IngestError::DuplicateHeader("X-Nonce")));
        let te = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse(te), Err(IngestError::DuplicateHeader("Transfer-Encoding")));
    }
}
