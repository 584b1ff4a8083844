//! OTLP/gRPC without I/O: the methods a request path names, gRPC's length-prefixed
//! message framing, and what a status carries in its trailers (`grpc-status`,
//! a percent-encoded `grpc-message`, and a `google.rpc.Status` with a
//! `google.rpc.RetryInfo` detail for `UNAVAILABLE`). HTTP/2 itself is the transport's
//! (`h2` in the data plane, `docs/otlp.md`).

use base64::Engine;

use super::response::Code;
use super::wire::{put_bytes, put_tag, put_varint};
use super::Signal;

/// What a gRPC request path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `LogsService/Export` or `TraceService/Export`.
    Export(Signal),
    /// `MetricsService/Export`: a signal this receiver does not take.
    Metrics,
    /// Any other path: not a method of this server.
    Unknown,
}

/// Path of `LogsService/Export`.
pub const LOGS_EXPORT: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
/// Path of `TraceService/Export`.
pub const TRACES_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// Path of `MetricsService/Export`.
pub const METRICS_EXPORT: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

impl Method {
    /// The method of a request path.
    pub fn from_path(path: &str) -> Method {
        match path {
            LOGS_EXPORT => Method::Export(Signal::Logs),
            TRACES_EXPORT => Method::Export(Signal::Traces),
            METRICS_EXPORT => Method::Metrics,
            _ => Method::Unknown,
        }
    }
}

/// Whether a `content-type` is gRPC's (`application/grpc`, `application/grpc+proto`,
/// parameters allowed); `application/grpc+json` and others are not served.
pub fn is_grpc_content_type(ct: &str) -> bool {
    let media = ct.split(';').next().unwrap_or("").trim();
    media.eq_ignore_ascii_case("application/grpc") || media.eq_ignore_ascii_case("application/grpc+proto")
}

/// Bytes before each message: the compressed flag and a big-endian 32-bit length.
pub const PREFIX_LEN: usize = 5;

/// A length-prefixed message, as it lies in a request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The compressed flag: the payload is in the request's `grpc-encoding`.
    pub compressed: bool,
    /// Where the payload lies in the body.
    pub payload: std::ops::Range<usize>,
}

/// Why a request body is not one gRPC message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer than 5 bytes, or fewer payload bytes than the prefix says.
    Truncated,
    /// The flag byte is neither 0 nor 1.
    BadFlag(u8),
    /// Bytes after the message: a unary call carries exactly one.
    Trailing,
    /// The length says more than `max` bytes.
    TooLarge {
        /// The length in the prefix.
        len: u64,
        /// The limit.
        max: usize,
    },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Truncated => f.write_str("gRPC message is truncated"),
            FrameError::BadFlag(b) => write!(f, "gRPC message has compressed flag {b}"),
            FrameError::Trailing => f.write_str("bytes after the gRPC message (a unary call carries one)"),
            FrameError::TooLarge { len, max } => write!(f, "gRPC message of {len} bytes is over {max}"),
        }
    }
}

/// How many bytes a body must reach before [`message`] can say whether `max` is
/// exceeded: the prefix says the length.
pub fn declared_len(body: &[u8]) -> Option<u64> {
    let p: [u8; 4] = body.get(1..PREFIX_LEN)?.try_into().ok()?;
    Some(u64::from(u32::from_be_bytes(p)))
}

/// The one message of a unary request's complete body, its payload at most `max` bytes.
pub fn message(body: &[u8], max: usize) -> Result<Message, FrameError> {
    let (Some(&flag), Some(len)) = (body.first(), declared_len(body)) else {
        return Err(FrameError::Truncated);
    };
    let compressed = match flag {
        0 => false,
        1 => true,
        b => return Err(FrameError::BadFlag(b)),
    };
    if len > max as u64 {
        return Err(FrameError::TooLarge { len, max });
    }
    let end = PREFIX_LEN + len as usize;
    match body.len() {
        n if n < end => Err(FrameError::Truncated),
        n if n > end => Err(FrameError::Trailing),
        _ => Ok(Message { compressed, payload: PREFIX_LEN..end }),
    }
}

/// Appends `payload` as one uncompressed length-prefixed message.
pub fn put_message(out: &mut Vec<u8>, payload: &[u8]) {
    out.push(0);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

/// `grpc-message`'s value: `message` percent-encoded as gRPC says (bytes outside
/// printable ASCII, and `%`).
pub fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for &b in message.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 0xf)]));
        }
    }
    out
}

/// The type URL of a `google.rpc.RetryInfo` packed in a `google.protobuf.Any`.
pub const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";

/// Appends a `google.rpc.RetryInfo` whose `retry_delay` is `seconds`.
pub fn put_retry_info(out: &mut Vec<u8>, seconds: u64) {
    // google.protobuf.Duration { seconds = 1 }; an empty Duration means 0 s.
    let mut delay = Vec::with_capacity(12);
    if seconds > 0 {
        put_tag(&mut delay, 1, 0);
        put_varint(&mut delay, seconds);
    }
    put_bytes(out, 1, &delay);
}

/// Appends a `google.rpc.Status` of `code` and `message`, with a `RetryInfo` detail when
/// `retry_after` says how many seconds to wait (what `grpc-status-details-bin` carries).
pub fn put_status(out: &mut Vec<u8>, code: Code, message: &str, retry_after: Option<u64>) {
    put_tag(out, 1, 0);
    put_varint(out, code as i32 as u64);
    if !message.is_empty() {
        put_bytes(out, 2, message.as_bytes());
    }
    if let Some(seconds) = retry_after {
        let mut info = Vec::with_capacity(16);
        put_retry_info(&mut info, seconds);
        let mut any = Vec::with_capacity(RETRY_INFO_TYPE.len() + info.len() + 4);
        put_bytes(&mut any, 1, RETRY_INFO_TYPE.as_bytes());
        put_bytes(&mut any, 2, &info);
        put_bytes(out, 3, &any);
    }
}

/// A binary metadata value (`*-bin`): base64 without padding, as gRPC sends it.
pub fn bin_header(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
}

/// The trailers of a status that is not OK, as `(name, value)` pairs: `grpc-status`,
/// `grpc-message`, and for a status with a retry delay `grpc-status-details-bin` (a
/// `google.rpc.Status` with `RetryInfo`, what the spec and Go, Java and Collector
/// exporters read) and `google.rpc.retryinfo-bin` (the bare `RetryInfo`, what the
/// Python exporter reads).
pub fn status_trailers(code: Code, message: &str, retry_after: Option<u64>) -> Vec<(&'static str, String)> {
    let mut out = vec![("grpc-status", (code as i32).to_string()), ("grpc-message", percent_encode(message))];
    if let Some(seconds) = retry_after {
        let mut status = Vec::with_capacity(message.len() + 64);
        put_status(&mut status, code, message, Some(seconds));
        out.push(("grpc-status-details-bin", bin_header(&status)));
        let mut info = Vec::with_capacity(8);
        put_retry_info(&mut info, seconds);
        out.push(("google.rpc.retryinfo-bin", bin_header(&info)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_by_path() {
        assert_eq!(Method::from_path(LOGS_EXPORT), Method::Export(Signal::Logs));
        assert_eq!(Method::from_path(TRACES_EXPORT), Method::Export(Signal::Traces));
        assert_eq!(Method::from_path(METRICS_EXPORT), Method::Metrics);
        assert_eq!(Method::from_path("/opentelemetry.proto.collector.logs.v1.LogsService/Exports"), Method::Unknown);
        assert_eq!(Method::from_path("/v1/logs"), Method::Unknown);
        assert!(is_grpc_content_type("application/grpc"));
        assert!(is_grpc_content_type("application/grpc+proto; charset=x"));
        assert!(!is_grpc_content_type("application/grpc+json"));
        assert!(!is_grpc_content_type("application/x-protobuf"));
    }

    #[test]
    fn one_length_prefixed_message() {
        let body = [0, 0, 0, 0, 3, b'a', b'b', b'c'];
        assert_eq!(message(&body, 3), Ok(Message { compressed: false, payload: 5..8 }));
        let gz = [1, 0, 0, 0, 1, 0x1f];
        assert_eq!(message(&gz, 10), Ok(Message { compressed: true, payload: 5..6 }));
        // An empty message is an empty request.
        assert_eq!(message(&[0, 0, 0, 0, 0], 0), Ok(Message { compressed: false, payload: 5..5 }));
    }

    #[test]
    fn malformed_frames() {
        assert_eq!(message(&[], 10), Err(FrameError::Truncated));
        assert_eq!(message(&[0, 0, 0, 0], 10), Err(FrameError::Truncated));
        assert_eq!(message(&[0, 0, 0, 0, 4, 1, 2, 3], 10), Err(FrameError::Truncated));
        assert_eq!(message(&[0, 0, 0, 0, 1, 1, 2], 10), Err(FrameError::Trailing));
        assert_eq!(message(&[2, 0, 0, 0, 0], 10), Err(FrameError::BadFlag(2)));
        // The prefix alone refuses an oversized message, before its bytes arrive.
        assert_eq!(
            message(&[0, 0xff, 0xff, 0xff, 0xff], 1 << 20),
            Err(FrameError::TooLarge { len: 0xffff_ffff, max: 1 << 20 })
        );
        assert_eq!(declared_len(&[0, 0, 1, 0, 0]), Some(65_536));
        assert_eq!(declared_len(&[0, 0, 1]), None);
    }

    #[test]
    fn messages_are_written_uncompressed() {
        let mut out = Vec::new();
        put_message(&mut out, b"");
        put_message(&mut out, &[0x0a, 0x00]);
        assert_eq!(out, [0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0x0a, 0x00]);
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(percent_encode("1 of 2 rejected: 50%"), "1 of 2 rejected: 50%25");
        assert_eq!(percent_encode("caf\u{e9}\n"), "caf%C3%A9%0A");
    }

    #[test]
    fn unavailable_carries_retry_info() {
        let mut status = Vec::new();
        put_status(&mut status, Code::Unavailable, "later", Some(2));
        let any: Vec<u8> =
            [&[0x0a, RETRY_INFO_TYPE.len() as u8][..], RETRY_INFO_TYPE.as_bytes(), &[0x12, 4, 0x0a, 2, 0x08, 2]]
                .concat();
        let want: Vec<u8> = [&[0x08, 14, 0x12, 5][..], b"later", &[0x1a, any.len() as u8], &any].concat();
        assert_eq!(status, want);
        let t = status_trailers(Code::Unavailable, "later", Some(2));
        assert_eq!(t[0], ("grpc-status", "14".to_owned()));
        assert_eq!(t[1], ("grpc-message", "later".to_owned()));
        assert_eq!(t[2], ("grpc-status-details-bin", bin_header(&want)));
        assert_eq!(t[3], ("google.rpc.retryinfo-bin", "CgIIAg".to_owned()));
        // Without a delay: code and message only.
        assert_eq!(status_trailers(Code::Unauthenticated, "no token", None).len(), 2);
        let mut zero = Vec::new();
        put_retry_info(&mut zero, 0);
        assert_eq!(zero, [0x0a, 0]);
    }
}
