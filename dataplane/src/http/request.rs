//! Request heads: the request line, the framing and connection headers HTTP needs, and
//! the header fields a surface asked for ([`Fields`]), kept in one reused buffer so that
//! parsing a head allocates nothing once a connection has served a request.

use super::error::HttpError;

/// Most headers in one request.
const MAX_HEADERS: usize = 64;
/// Largest request head.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header fields a surface may ask for.
pub const MAX_FIELDS: usize = 12;

/// Request method, as far as routing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Method {
    /// GET
    Get,
    /// HEAD
    Head,
    /// POST
    Post,
    /// OPTIONS (a CORS preflight)
    Options,
    /// Anything else.
    #[default]
    Other,
}

/// How the body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyFraming {
    /// No body.
    #[default]
    None,
    /// `Content-Length`.
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// The header fields a surface reads from heads, by index. Each may appear once (a
/// second is refused, naming it, rather than letting one win where a proxy in front may
/// have read the other), unless it is a list ([`Fields::list`]), and must be UTF-8; its
/// value is kept, trimmed.
#[derive(Debug)]
pub struct Fields {
    names: &'static [&'static str],
    /// Bit `i`: field `i` is a list, its lines joined ([`Fields::list`]).
    lists: u32,
}

impl Fields {
    /// Fields named `names` (at most [`MAX_FIELDS`]), read back by their index.
    pub const fn new(names: &'static [&'static str]) -> Fields {
        assert!(names.len() <= MAX_FIELDS, "too many header fields");
        Fields { names, lists: 0 }
    }

    /// Field `i` is a list (`X-Forwarded-For`), which proxies may send as several lines,
    /// each appending one: read as one value, the lines joined with `, ` in order.
    pub const fn list(self, i: usize) -> Fields {
        assert!(i < self.names.len(), "no such field");
        Fields { names: self.names, lists: self.lists | (1 << i) }
    }
}

/// A request head: method, path, framing, connection, and the fields asked for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Head {
    /// Method.
    pub method: Method,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
    /// The request is HTTP/1.0 (whose keep-alive the response must confirm).
    pub http10: bool,
    /// Body framing.
    pub framing: BodyFraming,
    /// `Expect: 100-continue` was sent.
    pub expect_continue: bool,
    /// Bytes the head took in the buffer.
    pub len: usize,
    /// The path, then each field's value (reused from head to head).
    text: String,
    /// Where the path ends in `text`.
    path_end: usize,
    /// Where the query string (after the path, without `?`) ends in `text`.
    query_end: usize,
    /// Where each field's value lies in `text`, when it was sent.
    fields: [Option<(usize, usize)>; MAX_FIELDS],
    /// The last parse read the request line.
    line_read: bool,
}

impl Head {
    /// Path without the query string (the target's path for an absolute-form target).
    pub fn path(&self) -> &str {
        self.text.get(..self.path_end).unwrap_or("")
    }

    /// The query string, without `?` (empty when there is none).
    pub fn query(&self) -> &str {
        self.text.get(self.path_end..self.query_end).unwrap_or("")
    }

    /// The value of field `i` of the [`Fields`] the head was parsed with, if it was sent.
    pub fn field(&self, i: usize) -> Option<&str> {
        let (start, end) = self.fields.get(i).copied().flatten()?;
        self.text.get(start..end)
    }

    /// Sets list field `i` (sent at least once) to its lines among `headers`, joined with
    /// `, ` in order, as one value (RFC 9110, 5.3), written once after the other fields:
    /// a list whose lines come between other fields' is never copied again line by line.
    /// A line that is not UTF-8 is no refusal of the head: its invalid bytes are read as
    /// U+FFFD, so that what reads the list finds an element it cannot read (an address, a
    /// header name) in its place, and refuses or stops as for any other, rather than
    /// reading the elements around it as if it were absent.
    fn join_list(&mut self, i: usize, name: &str, headers: &[httparse::Header<'_>]) {
        let start = self.text.len();
        for (k, h) in headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)).enumerate() {
            if k > 0 {
                self.text.push_str(", ");
            }
            match text(h.value) {
                Ok(value) => self.text.push_str(value),
                Err(_) => self.text.push_str(String::from_utf8_lossy(h.value).trim()),
            }
        }
        self.fields[i] = Some((start, self.text.len()));
    }

    /// Whether the last [`Head::parse_from`] read the request line (its method and
    /// path), complete or refused after it.
    pub fn has_request_line(&self) -> bool {
        self.line_read
    }

    /// Parses a head from the front of `buf` into `self`, reading `fields`: false when
    /// it is not complete yet.
    pub fn parse_from(&mut self, buf: &[u8], fields: &Fields) -> Result<bool, HttpError> {
        self.line_read = false;
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let len = match req.parse(buf) {
            // The limit holds however the head arrived: in one read or in many.
            Ok(httparse::Status::Complete(n)) if n > MAX_HEAD_BYTES => {
                return Err(HttpError::BadRequest("request head too large"));
            }
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if buf.len() > MAX_HEAD_BYTES {
                    return Err(HttpError::BadRequest("request head too large"));
                }
                return Ok(false);
            }
            Err(httparse::Error::TooManyHeaders) => return Err(HttpError::BadRequest("too many headers")),
            Err(_) => return Err(HttpError::BadRequest("malformed request head")),
        };
        self.method = match req.method {
            Some("GET") => Method::Get,
            Some("HEAD") => Method::Head,
            Some("POST") => Method::Post,
            Some("OPTIONS") => Method::Options,
            _ => Method::Other,
        };
        let version_1_1 = req.version == Some(1);
        self.keep_alive = version_1_1;
        self.http10 = !version_1_1;
        self.expect_continue = false;
        self.len = len;
        self.text.clear();
        let target = req.path.unwrap_or("/");
        self.text.push_str(target_path(target));
        self.path_end = self.text.len();
        self.text.push_str(target.split_once('?').map_or("", |(_, q)| q));
        self.query_end = self.text.len();
        self.fields = [None; MAX_FIELDS];
        self.line_read = true;
        let mut content_length: Option<usize> = None;
        // `close` in any `Connection` line wins over `keep-alive` in any other (one list).
        let mut close = false;
        let mut chunked = false;
        // The list fields sent (bit `i`: field `i`), joined after the loop.
        let mut lists_sent: u32 = 0;
        for h in req.headers.iter() {
            let name = h.name;
            if let Some(i) = fields.names.iter().position(|f| name.eq_ignore_ascii_case(f)) {
                if fields.lists & (1 << i) != 0 {
                    lists_sent |= 1 << i;
                    continue;
                }
                if self.fields[i].is_some() {
                    return Err(HttpError::DuplicateHeader(fields.names[i]));
                }
                let start = self.text.len();
                self.text.push_str(text(h.value)?);
                self.fields[i] = Some((start, self.text.len()));
            } else if name.eq_ignore_ascii_case("content-length") {
                let invalid = |why| HttpError::InvalidHeader { header: "Content-Length", why };
                let value = text(h.value).map_err(|_| invalid("header value is not UTF-8"))?;
                let n = parse_content_length(value).ok_or(invalid("invalid Content-Length"))?;
                if content_length.is_some_and(|c| c != n) {
                    return Err(invalid("conflicting Content-Length"));
                }
                content_length = Some(n);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                if chunked {
                    return Err(HttpError::DuplicateHeader("Transfer-Encoding"));
                }
                let invalid = |why| HttpError::InvalidHeader { header: "Transfer-Encoding", why };
                let value = text(h.value).map_err(|_| invalid("header value is not UTF-8"))?;
                if !value.eq_ignore_ascii_case("chunked") {
                    return Err(invalid("only chunked Transfer-Encoding is supported"));
                }
                chunked = true;
            } else if name.eq_ignore_ascii_case("connection") {
                let tokens = || text(h.value).map(|v| v.split(',').map(str::trim));
                if tokens()?.any(|t| t.eq_ignore_ascii_case("close")) {
                    close = true;
                    self.keep_alive = false;
                } else if !close && tokens()?.any(|t| t.eq_ignore_ascii_case("keep-alive")) {
                    self.keep_alive = true;
                }
            } else if name.eq_ignore_ascii_case("expect") {
                // An HTTP/1.0 client cannot take an interim answer (RFC 9110 10.1.1).
                self.expect_continue = !self.http10 && text(h.value)?.eq_ignore_ascii_case("100-continue");
            }
        }
        while lists_sent != 0 {
            let i = lists_sent.trailing_zeros() as usize;
            lists_sent &= lists_sent - 1;
            self.join_list(i, fields.names[i], req.headers);
        }
        // An HTTP/1.0 peer (a proxy on the way) does not know chunked framing and would
        // read the body otherwise: faulty framing (RFC 9112 6.1).
        if chunked && self.http10 {
            return Err(HttpError::InvalidHeader {
                header: "Transfer-Encoding",
                why: "Transfer-Encoding in an HTTP/1.0 request",
            });
        }
        self.framing = match (chunked, content_length) {
            (true, Some(_)) => {
                return Err(HttpError::InvalidHeader {
                    header: "Transfer-Encoding",
                    why: "both Content-Length and Transfer-Encoding",
                })
            }
            (true, None) => BodyFraming::Chunked,
            (false, Some(0)) | (false, None) => BodyFraming::None,
            (false, Some(n)) => BodyFraming::Length(n),
        };
        Ok(true)
    }
}

/// The token of an `Authorization: Bearer <token>` field: the scheme in any case (RFC 9110
/// §11.1), the token trimmed; `None` for another scheme or no token.
pub fn bearer_token(authorization: Option<&str>) -> Option<&str> {
    let (scheme, token) = authorization?.trim_start().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Parses a head from the front of `buf`, reading `fields`: `Ok(None)` when it is not
/// complete yet. (A connection reuses one [`Head`] with [`Head::parse_from`].)
pub fn parse(buf: &[u8], fields: &Fields) -> Result<Option<Head>, HttpError> {
    let mut head = Head::default();
    Ok(head.parse_from(buf, fields)?.then_some(head))
}

/// A header value as text, trimmed.
fn text(v: &[u8]) -> Result<&str, HttpError> {
    std::str::from_utf8(v).map(str::trim).map_err(|_| HttpError::BadRequest("header value is not UTF-8"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_in_any_case() {
        for (field, token) in [
            (Some("Bearer abc"), Some("abc")),
            (Some("bearer abc "), Some("abc")),
            (Some("BEARER  abc"), Some("abc")),
            (Some("bEaReR abc"), Some("abc")),
            (Some("Bearer "), None),
            (Some("Bearer"), None),
            (Some("Basic abc"), None),
            (Some("Bearerabc"), None),
            (None, None),
        ] {
            assert_eq!(bearer_token(field), token, "{field:?}");
        }
    }

    static FIELDS: Fields = Fields::new(&["X-Game-Id", "X-Nonce", "Content-Type"]);

    fn parse(buf: &[u8]) -> Result<Option<Head>, HttpError> {
        super::parse(buf, &FIELDS)
    }

    #[test]
    fn parses_the_parts_that_matter() {
        let raw = b"POST /api/ingest/events?x=1 HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n\
Content-Length: 12\r\nX-Game-Id: g1\r\nX-Timestamp: 17\r\nX-Nonce: n\r\nX-Signature: s\r\n\r\n{}";
        let h = parse(raw).expect("valid").expect("complete");
        assert_eq!(h.method, Method::Post);
        assert_eq!((h.path(), h.query()), ("/api/ingest/events", "x=1"));
        assert!(h.keep_alive);
        assert_eq!(h.framing, BodyFraming::Length(12));
        assert_eq!((h.field(0), h.field(1), h.field(2)), (Some("g1"), Some("n"), Some("application/json")));
        assert_eq!(h.len, raw.len() - 2);
    }

    #[test]
    fn partial_heads_wait_and_smuggling_is_refused() {
        assert_eq!(parse(b"POST / HTTP/1.1\r\nHost"), Ok(None));
        let both = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(parse(both), Err(HttpError::InvalidHeader { header: "Transfer-Encoding", .. })));
        let two = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n";
        assert!(matches!(parse(two), Err(HttpError::InvalidHeader { header: "Content-Length", .. })));
        // Named in the body, as a header sent twice is.
        let e = parse(two).expect_err("refused");
        assert_eq!(
            e.body(),
            r#"{"error":"bad_request","message":"bad request: conflicting Content-Length","header":"Content-Length"}"#
        );
        let h10 = parse(b"GET /healthz HTTP/1.0\r\n\r\n").expect("valid").expect("complete");
        assert!(!h10.keep_alive && h10.http10);
        let ka = parse(b"GET /healthz HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").expect("valid").expect("complete");
        assert!(ka.keep_alive && ka.http10);
        // HTTP/1.0 has no chunked framing: a proxy of that version would read the body
        // otherwise.
        let chunked10 = b"POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(parse(chunked10), Err(HttpError::InvalidHeader { header: "Transfer-Encoding", .. })));
    }

    #[test]
    fn close_in_any_connection_line_closes() {
        for raw in [
            &b"GET / HTTP/1.1\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n",
            b"GET / HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n",
            b"GET / HTTP/1.0\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n",
        ] {
            let h = parse(raw).expect("valid").expect("complete");
            assert!(!h.keep_alive, "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn a_reused_head_keeps_nothing_of_the_last_one() {
        let mut h = Head::default();
        let first = b"POST /a HTTP/1.1\r\nX-Nonce: one\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(h.parse_from(first, &FIELDS), Ok(true));
        let second = b"GET /bb HTTP/1.1\r\nX-Game-Id: g\r\n\r\n";
        assert_eq!(h.parse_from(second, &FIELDS), Ok(true));
        assert_eq!(h, parse(second).expect("valid").expect("complete"));
        assert_eq!((h.path(), h.field(0), h.field(1), h.expect_continue), ("/bb", Some("g"), None, false));
    }

    #[test]
    fn hostile9_content_length_is_digits_only() {
        assert_eq!(parse_content_length("12"), Some(12));
        assert_eq!(parse_content_length("007"), Some(7));
        for bad in ["+5", "-5", "5,5", "0x10", "", "5 5", "99999999999999999999999"] {
            assert_eq!(parse_content_length(bad), None, "{bad}");
        }
        let plus = b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello";
        assert_eq!(
            parse(plus),
            Err(HttpError::InvalidHeader { header: "Content-Length", why: "invalid Content-Length" })
        );
    }

    #[test]
    fn hostile10_head_size_limit_holds_in_one_read() {
        let big = format!("GET / HTTP/1.1\r\nX-Filler: {}\r\n\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(parse(big.as_bytes()), Err(HttpError::BadRequest("request head too large")));
        assert_eq!(parse(&big.as_bytes()[..MAX_HEAD_BYTES + 1]), Err(HttpError::BadRequest("request head too large")));
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
        assert_eq!(parse(twice), Err(HttpError::DuplicateHeader("X-Nonce")));
        let te = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse(te), Err(HttpError::DuplicateHeader("Transfer-Encoding")));
    }

    #[test]
    fn a_list_field_sent_in_several_lines_is_one_value() {
        static LISTS: Fields = Fields::new(&["X-Nonce", "X-Forwarded-For"]).list(1);
        let lines = b"GET / HTTP/1.1\r\nX-Forwarded-For: 1.1.1.1\r\nX-Nonce: n\r\nx-forwarded-for: 2.2.2.2, 3.3.3.3\r\nX-Forwarded-For: 4.4.4.4\r\n\r\n";
        let h = super::parse(lines, &LISTS).expect("valid").expect("complete");
        assert_eq!((h.field(0), h.field(1)), (Some("n"), Some("1.1.1.1, 2.2.2.2, 3.3.3.3, 4.4.4.4")));
        // A line that is not UTF-8 is no refusal of the head: its bytes are read as U+FFFD,
        // an element nothing can read, in its place.
        let odd = b"GET / HTTP/1.1\r\nX-Forwarded-For: \xff\xfe\r\nX-Forwarded-For: 5.5.5.5\r\n\r\n";
        let h = super::parse(odd, &LISTS).expect("valid").expect("complete");
        assert_eq!(h.field(1), Some("\u{fffd}\u{fffd}, 5.5.5.5"));
        let nonce_twice = b"GET / HTTP/1.1\r\nX-Nonce: a\r\nX-Nonce: b\r\n\r\n";
        assert_eq!(super::parse(nonce_twice, &LISTS), Err(HttpError::DuplicateHeader("X-Nonce")));
    }

    /// Two lists whose lines alternate, with other fields between them, are each one value,
    /// and the head's text stays within the head's size: a value is written once, not
    /// moved again at each of its lines (a head of alternating lines made the text grow
    /// to hundreds of kilobytes, kept by the connection).
    #[test]
    fn lists_whose_lines_alternate_are_written_once() {
        static TWO: Fields =
            Fields::new(&["X-Nonce", "X-Forwarded-For", "Access-Control-Request-Headers"]).list(1).list(2);
        let mut head = String::from("GET / HTTP/1.1\r\nX-Nonce: n\r\n");
        let (mut xff, mut acrh) = (Vec::new(), Vec::new());
        for i in 0..30 {
            let (a, b) = (format!("10.0.0.{i}"), format!("x-h{i}-{}", "a".repeat(200)));
            head.push_str(&format!("X-Forwarded-For: {a}\r\nAccess-Control-Request-Headers: {b}\r\n"));
            xff.push(a);
            acrh.push(b);
        }
        head.push_str("\r\n");
        let h = super::parse(head.as_bytes(), &TWO).expect("valid").expect("complete");
        assert_eq!(
            (h.field(0), h.field(1), h.field(2)),
            (Some("n"), Some(xff.join(", ").as_str()), Some(acrh.join(", ").as_str()))
        );
        assert!(h.text.len() <= head.len(), "{} bytes of text for a head of {}", h.text.len(), head.len());
    }
}
