//! The whole error contract of the ingest API in one place: every refusal with its HTTP
//! status, error tag, `Retry-After` and metric label.

use croupier_protocol::stream::StreamKind;
use croupier_protocol::validate::BodyError;

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestError {
    /// No such route.
    NotFound,
    /// The route exists but not for this method; `allow` lists the methods it takes.
    MethodNotAllowed {
        /// Value of the `Allow` header.
        allow: &'static str,
    },
    /// The request is not valid HTTP or lacks a header HTTP requires (says which).
    BadRequest(&'static str),
    /// A header that may appear once appeared twice (names it).
    DuplicateHeader(&'static str),
    /// `Content-Type` is not JSON, or `Content-Encoding` is not gzip/identity.
    UnsupportedMediaType(&'static str),
    /// The body (as sent, or decompressed) exceeds the limit.
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The request did not arrive within the read timeout.
    RequestTimeout,
    /// The body is not an acceptable batch.
    Body(BodyError),
    /// An authentication header is absent or malformed (names the header).
    MissingCredentials(&'static str),
    /// `X-Game-Id` names no configured game.
    UnknownGame,
    /// `X-Timestamp` is too far from the server's clock.
    StaleTimestamp {
        /// The allowed skew in seconds.
        max_skew_secs: u64,
    },
    /// `X-Signature` does not match.
    BadSignature,
    /// `X-Nonce` was used before within the skew window.
    ReplayedNonce,
    /// The game sent more events than its rate limit allows.
    RateLimited {
        /// Seconds until the request would fit.
        retry_after: u64,
    },
    /// The shard is receiving as many request bodies as its budget allows
    /// (`server.max_inflight_body_bytes`).
    ServerBusy {
        /// Seconds to wait before retrying.
        retry_after: u64,
    },
    /// Redis is unreachable or did not answer in time.
    RedisUnavailable {
        /// Seconds to wait before retrying.
        retry_after: u64,
    },
    /// The accepted records could not be encoded into a stream entry (a server fault: a
    /// retry would fail the same way).
    EncodeFailed,
    /// The consumer group's backlog on a stream is at the high-water mark.
    BacklogFull {
        /// The stream.
        stream: StreamKind,
        /// Seconds to wait before retrying.
        retry_after: u64,
    },
}

impl IngestError {
    /// HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            IngestError::NotFound => 404,
            IngestError::MethodNotAllowed { .. } => 405,
            IngestError::BadRequest(_) | IngestError::DuplicateHeader(_) => 400,
            IngestError::Body(BodyError::GameMismatch { .. }) => 403,
            IngestError::Body(_) => 400,
            IngestError::UnsupportedMediaType(_) => 415,
            IngestError::PayloadTooLarge { .. } => 413,
            IngestError::RequestTimeout => 408,
            IngestError::MissingCredentials(_)
            | IngestError::UnknownGame
            | IngestError::StaleTimestamp { .. }
            | IngestError::BadSignature
            | IngestError::ReplayedNonce => 401,
            IngestError::RateLimited { .. } => 429,
            IngestError::EncodeFailed => 500,
            IngestError::ServerBusy { .. } | IngestError::RedisUnavailable { .. } | IngestError::BacklogFull { .. } => {
                503
            }
        }
    }

    /// The `error` tag of the JSON body; also the metric label.
    pub fn tag(&self) -> &'static str {
        match self {
            IngestError::NotFound => "not_found",
            IngestError::MethodNotAllowed { .. } => "method_not_allowed",
            IngestError::BadRequest(_) | IngestError::DuplicateHeader(_) => "bad_request",
            IngestError::UnsupportedMediaType(_) => "unsupported_media_type",
            IngestError::PayloadTooLarge { .. } => "payload_too_large",
            IngestError::RequestTimeout => "request_timeout",
            IngestError::Body(b) => match b {
                BodyError::Malformed(_) => "malformed_json",
                BodyError::InvalidUtf8 => "invalid_utf8",
                BodyError::TooDeep(_) => "too_deep",
                BodyError::NotABatch | BodyError::Empty | BodyError::TooManyRecords(_) => "invalid_batch",
                BodyError::Field { .. } => "invalid_field",
                BodyError::GameMismatch { .. } => "game_mismatch",
            },
            IngestError::MissingCredentials(_) => "missing_credentials",
            IngestError::UnknownGame => "unknown_game",
            IngestError::StaleTimestamp { .. } => "stale_timestamp",
            IngestError::BadSignature => "bad_signature",
            IngestError::ReplayedNonce => "replayed_nonce",
            IngestError::RateLimited { .. } => "rate_limited",
            IngestError::ServerBusy { .. } => "server_busy",
            IngestError::RedisUnavailable { .. } => "redis_unavailable",
            IngestError::EncodeFailed => "encode_failed",
            IngestError::BacklogFull { .. } => "backlog_full",
        }
    }

    /// Value of `Retry-After`, when the client should retry.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            IngestError::RateLimited { retry_after }
            | IngestError::ServerBusy { retry_after }
            | IngestError::RedisUnavailable { retry_after }
            | IngestError::BacklogFull { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// Whether the connection must be closed after the response (the rest of the
    /// request cannot be skipped safely).
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            IngestError::BadRequest(_)
                | IngestError::DuplicateHeader(_)
                | IngestError::PayloadTooLarge { .. }
                | IngestError::RequestTimeout
                | IngestError::ServerBusy { .. }
        )
    }

    fn message(&self) -> String {
        match self {
            IngestError::NotFound => "no such route".into(),
            IngestError::MethodNotAllowed { allow } => format!("method not allowed; allowed: {allow}"),
            IngestError::BadRequest(what) => format!("bad request: {what}"),
            IngestError::DuplicateHeader(h) => format!("bad request: header {h} appears more than once"),
            IngestError::UnsupportedMediaType(what) => format!("unsupported {what}"),
            IngestError::PayloadTooLarge { limit } => format!("body larger than {limit} bytes"),
            IngestError::RequestTimeout => "request not received in time".into(),
            IngestError::Body(b) => b.to_string(),
            IngestError::MissingCredentials(h) => format!("missing or malformed header {h}"),
            IngestError::UnknownGame => "unknown game".into(),
            IngestError::StaleTimestamp { max_skew_secs } => {
                format!("X-Timestamp is more than {max_skew_secs} s away from the server's clock")
            }
            IngestError::BadSignature => "signature does not match".into(),
            IngestError::ReplayedNonce => "nonce already used".into(),
            IngestError::RateLimited { .. } => "rate limit exceeded".into(),
            IngestError::ServerBusy { .. } => "server busy: too many request bodies in flight".into(),
            IngestError::RedisUnavailable { .. } => "stream server unavailable".into(),
            IngestError::EncodeFailed => "the batch could not be encoded".into(),
            IngestError::BacklogFull { stream, .. } => {
                format!("backlog of {} is at its high-water mark", stream.key())
            }
        }
    }

    /// The JSON body: `{"error":tag,"message":...}` plus `field`/`index` when a record
    /// is at fault, `header` when a header is.
    pub fn body(&self) -> String {
        let mut out = format!(r#"{{"error":"{}","message":{}"#, self.tag(), json_string(&self.message()));
        match self {
            IngestError::Body(BodyError::Field { index, field, .. }) => {
                out.push_str(&format!(r#","field":"{field}","index":{index}"#));
            }
            IngestError::Body(BodyError::GameMismatch { index }) => {
                out.push_str(&format!(r#","field":"game_id","index":{index}"#));
            }
            IngestError::MissingCredentials(h) | IngestError::DuplicateHeader(h) => {
                out.push_str(&format!(r#","header":"{h}""#))
            }
            _ => {}
        }
        out.push('}');
        out
    }
}

/// Encodes `s` as a JSON string literal.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use croupier_protocol::validate::Problem;

    #[test]
    fn field_errors_name_field_and_index() {
        let e = IngestError::Body(BodyError::Field { index: 3, field: "ts", problem: Problem::Missing });
        assert_eq!(e.status(), 400);
        assert_eq!(
            e.body(),
            r#"{"error":"invalid_field","message":"record 3: field `ts` is required","field":"ts","index":3}"#
        );
    }

    #[test]
    fn statuses_and_retry_after() {
        assert_eq!(IngestError::Body(BodyError::GameMismatch { index: 0 }).status(), 403);
        assert_eq!(IngestError::BadRequest("x").status(), 400);
        assert_eq!(IngestError::ReplayedNonce.status(), 401);
        let e = IngestError::BacklogFull { stream: StreamKind::Events, retry_after: 2 };
        assert_eq!((e.status(), e.retry_after()), (503, Some(2)));
        assert_eq!(IngestError::RateLimited { retry_after: 1 }.status(), 429);
        assert_eq!(json_string("a\"b\n"), r#""a\"b\u000a""#);
    }
}
