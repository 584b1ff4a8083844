//! The error contract of the ingest API in one place: every refusal of an ingest request
//! with its HTTP status, error tag, `Retry-After` and extra body members. Refusals that
//! are HTTP's own (routing, framing, limits, the body budget) come from the HTTP layer's
//! contract, [`HttpError`], and keep its bytes.

use croupier_protocol::stream::StreamKind;
use croupier_protocol::validate::BodyError;

use crate::http::error::HttpError;
use crate::http::response::{error_body, Response};

/// Why an ingest request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestError {
    /// Refused as HTTP (routing, framing, media type, size, time, body budget).
    Http(HttpError),
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
    /// Redis is unreachable or did not answer in time.
    RedisUnavailable {
        /// Seconds to wait before retrying.
        retry_after: u64,
    },
    /// Redis appended the records, but fewer replicas than `redis.wait_replicas` confirmed
    /// them within `redis.wait_timeout_ms`. The same request sent again (same nonce) is
    /// answered 202 once they are replicated; it is never appended twice.
    NotReplicated {
        /// Replicas that confirmed in time.
        replicas: u32,
        /// Replicas asked for.
        wanted: u32,
        /// Seconds to wait before retrying.
        retry_after: u64,
    },
    /// The same request (same nonce, same body) is being appended by another attempt
    /// that may still succeed, or was appended by one that has yet to give its lease back
    /// (`redis.ingest_protocol = "lease"`): nothing was appended by this one; the retry
    /// after `Retry-After` is answered as that attempt ended (202 once appended, else
    /// appended then).
    RequestInFlight {
        /// Seconds to wait before retrying.
        retry_after: u64,
    },
    /// The accepted records could not be encoded into a stream entry (a server fault: a
    /// retry would fail the same way).
    EncodeFailed,
    /// A bearer token that does not verify (client ingest): why.
    BadToken(String),
    /// A public write key that no game has (client ingest).
    UnknownKey,
    /// A public write key taken out of use (`revoked_write_keys`).
    RevokedKey,
    /// The credential is valid but may not do this (client ingest): the tag and why.
    Forbidden(&'static str, &'static str),
    /// The consumer group's backlog on a stream is at the high-water mark.
    BacklogFull {
        /// The stream.
        stream: StreamKind,
        /// Seconds to wait before retrying.
        retry_after: u64,
    },
}

impl From<HttpError> for IngestError {
    fn from(e: HttpError) -> IngestError {
        IngestError::Http(e)
    }
}

impl IngestError {
    /// HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            IngestError::Http(e) => e.status(),
            IngestError::Body(BodyError::GameMismatch { .. } | BodyError::NotAllowed { .. }) => 403,
            IngestError::Forbidden(..) => 403,
            IngestError::BadToken(_) | IngestError::UnknownKey | IngestError::RevokedKey => 401,
            IngestError::Body(_) => 400,
            IngestError::MissingCredentials(_)
            | IngestError::UnknownGame
            | IngestError::StaleTimestamp { .. }
            | IngestError::BadSignature
            | IngestError::ReplayedNonce => 401,
            IngestError::RateLimited { .. } => 429,
            IngestError::EncodeFailed => 500,
            IngestError::RedisUnavailable { .. }
            | IngestError::RequestInFlight { .. }
            | IngestError::NotReplicated { .. }
            | IngestError::BacklogFull { .. } => 503,
        }
    }

    /// The `error` tag of the JSON body; also the reason label of refused events.
    pub fn tag(&self) -> &'static str {
        match self {
            IngestError::Http(e) => e.tag(),
            IngestError::Body(b) => match b {
                BodyError::Malformed(_) => "malformed_json",
                BodyError::InvalidUtf8 => "invalid_utf8",
                BodyError::TooDeep(_) => "too_deep",
                BodyError::NotABatch | BodyError::Empty | BodyError::TooManyRecords(_) => "invalid_batch",
                BodyError::Field { .. } => "invalid_field",
                BodyError::GameMismatch { .. } => "game_mismatch",
                BodyError::NotAllowed { .. } => "not_allowed",
            },
            IngestError::MissingCredentials(_) => "missing_credentials",
            IngestError::BadToken(_) => "bad_token",
            IngestError::UnknownKey => "unknown_key",
            IngestError::RevokedKey => "revoked_key",
            IngestError::Forbidden(tag, _) => tag,
            IngestError::UnknownGame => "unknown_game",
            IngestError::StaleTimestamp { .. } => "stale_timestamp",
            IngestError::BadSignature => "bad_signature",
            IngestError::ReplayedNonce => "replayed_nonce",
            IngestError::RateLimited { .. } => "rate_limited",
            IngestError::RedisUnavailable { .. } => "redis_unavailable",
            IngestError::NotReplicated { .. } => "not_replicated",
            IngestError::RequestInFlight { .. } => "request_in_flight",
            IngestError::EncodeFailed => "encode_failed",
            IngestError::BacklogFull { .. } => "backlog_full",
        }
    }

    /// Value of `Retry-After`, when the client should retry.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            IngestError::Http(e) => e.retry_after(),
            IngestError::RateLimited { retry_after }
            | IngestError::RedisUnavailable { retry_after }
            | IngestError::RequestInFlight { retry_after }
            | IngestError::NotReplicated { retry_after, .. }
            | IngestError::BacklogFull { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// Whether the connection must be closed after the response (the rest of the
    /// request cannot be skipped safely).
    pub fn closes_connection(&self) -> bool {
        matches!(self, IngestError::Http(e) if e.closes_connection())
    }

    fn message(&self) -> String {
        match self {
            IngestError::Http(e) => e.message(),
            IngestError::Body(b) => b.to_string(),
            IngestError::MissingCredentials(h) => format!("missing or malformed header {h}"),
            IngestError::UnknownGame => "unknown game".into(),
            IngestError::BadToken(why) => format!("bearer token refused: {why}"),
            IngestError::UnknownKey => "unknown write key".into(),
            IngestError::RevokedKey => "this write key has been revoked".into(),
            IngestError::Forbidden(_, why) => (*why).into(),
            IngestError::StaleTimestamp { max_skew_secs } => {
                format!("X-Timestamp is more than {max_skew_secs} s away from the server's clock")
            }
            IngestError::BadSignature => "signature does not match".into(),
            IngestError::ReplayedNonce => "nonce already used".into(),
            IngestError::RateLimited { .. } => "rate limit exceeded".into(),
            IngestError::RedisUnavailable { .. } => "stream server unavailable".into(),
            IngestError::NotReplicated { replicas, wanted, .. } => format!(
                "appended, but confirmed by {replicas} of the {wanted} replicas asked for in time: send the same \
                 request again (same nonce) to learn when it is replicated; it is not appended twice"
            ),
            IngestError::RequestInFlight { .. } => {
                "this request (same nonce, same body) is being appended by an earlier attempt: send it again \
                 after Retry-After"
                    .into()
            }
            IngestError::EncodeFailed => "the batch could not be encoded".into(),
            IngestError::BacklogFull { stream, .. } => {
                format!("backlog of {} is at its high-water mark", stream.key())
            }
        }
    }

    /// The JSON body: `{"error":tag,"message":...}` plus `field`/`index` when a record
    /// is at fault, `header` when a header is.
    pub fn body(&self) -> String {
        let extra = match self {
            IngestError::Body(BodyError::Field { index, field, .. }) => {
                format!(r#","field":"{field}","index":{index}"#)
            }
            IngestError::Body(BodyError::GameMismatch { index, field }) => {
                format!(r#","field":"{field}","index":{index}"#)
            }
            IngestError::Body(BodyError::NotAllowed { index, field }) => {
                format!(r#","field":"{field}","index":{index}"#)
            }
            IngestError::MissingCredentials(h) => format!(r#","header":"{h}""#),
            IngestError::NotReplicated { replicas, wanted, .. } => {
                format!(r#","appended":true,"replicas":{replicas},"wanted":{wanted}"#)
            }
            IngestError::Http(e) => return e.body(),
            _ => String::new(),
        };
        error_body(self.tag(), &self.message(), &extra)
    }

    /// The response: status, body, `Retry-After`, and the close when the rest of the
    /// request cannot be skipped.
    pub fn response(&self) -> Response {
        if let IngestError::Http(e) = self {
            return e.response();
        }
        let mut r = Response::json(self.status(), self.body());
        r.retry_after = self.retry_after();
        r
    }
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

    /// Every tag an ingest surface answers has its own `reason` label on
    /// `croupier_events_refused_total` (docs/metrics.md: `reason` = the error tag), none
    /// counted as `other`. The `match` has no catch-all: a new variant must be listed here.
    #[test]
    fn every_refusal_tag_has_its_reason_label() {
        use croupier_control::metrics::labels::{reason_index, REASONS};
        let field = BodyError::Field { index: 0, field: "ts", problem: Problem::Missing };
        let stream = StreamKind::Events;
        let all = [
            IngestError::Http(HttpError::NotFound),
            IngestError::Http(HttpError::MethodNotAllowed { allow: "POST" }),
            IngestError::Http(HttpError::BadRequest("x")),
            IngestError::Http(HttpError::DuplicateHeader("x")),
            IngestError::Http(HttpError::InvalidHeader { header: "x", why: "y" }),
            IngestError::Http(HttpError::UnsupportedMediaType("x")),
            IngestError::Http(HttpError::PayloadTooLarge { limit: 1 }),
            IngestError::Http(HttpError::InflatedTooLarge { limit: 1 }),
            IngestError::Http(HttpError::RequestTimeout),
            IngestError::Http(HttpError::ServerBusy { retry_after: 1 }),
            IngestError::Body(BodyError::Malformed("x".into())),
            IngestError::Body(BodyError::InvalidUtf8),
            IngestError::Body(BodyError::TooDeep(1)),
            IngestError::Body(BodyError::NotABatch),
            IngestError::Body(BodyError::Empty),
            IngestError::Body(BodyError::TooManyRecords(1)),
            IngestError::Body(field),
            IngestError::Body(BodyError::GameMismatch { index: 0, field: "game_id" }),
            IngestError::Body(BodyError::NotAllowed { index: 0, field: "event" }),
            IngestError::MissingCredentials("X-Nonce"),
            IngestError::UnknownGame,
            IngestError::StaleTimestamp { max_skew_secs: 1 },
            IngestError::BadSignature,
            IngestError::ReplayedNonce,
            IngestError::RateLimited { retry_after: 1 },
            IngestError::RedisUnavailable { retry_after: 1 },
            IngestError::NotReplicated { replicas: 0, wanted: 1, retry_after: 1 },
            IngestError::RequestInFlight { retry_after: 1 },
            IngestError::EncodeFailed,
            IngestError::BadToken("x".into()),
            IngestError::UnknownKey,
            IngestError::RevokedKey,
            IngestError::Forbidden("game_mismatch", "x"),
            IngestError::Forbidden("origin_not_allowed", "x"),
            IngestError::Forbidden("game_not_allowed", "x"),
            IngestError::Forbidden("payments_not_allowed", "x"),
            IngestError::Forbidden("missing_permission", "x"),
            IngestError::BacklogFull { stream, retry_after: 1 },
        ];
        for e in &all {
            // Exhaustive, so that a variant added later fails to compile until listed above.
            match e {
                IngestError::Http(_)
                | IngestError::Body(_)
                | IngestError::MissingCredentials(_)
                | IngestError::UnknownGame
                | IngestError::StaleTimestamp { .. }
                | IngestError::BadSignature
                | IngestError::ReplayedNonce
                | IngestError::RateLimited { .. }
                | IngestError::RedisUnavailable { .. }
                | IngestError::NotReplicated { .. }
                | IngestError::RequestInFlight { .. }
                | IngestError::EncodeFailed
                | IngestError::BadToken(_)
                | IngestError::UnknownKey
                | IngestError::RevokedKey
                | IngestError::Forbidden(..)
                | IngestError::BacklogFull { .. } => {}
            }
            assert_eq!(REASONS[reason_index(e.tag())], e.tag(), "{e:?}");
        }
    }

    #[test]
    fn statuses_and_retry_after() {
        assert_eq!(IngestError::Body(BodyError::GameMismatch { index: 0, field: "game_id" }).status(), 403);
        assert_eq!(IngestError::from(HttpError::BadRequest("x")).status(), 400);
        assert_eq!(IngestError::ReplayedNonce.status(), 401);
        let e = IngestError::BacklogFull { stream: StreamKind::Events, retry_after: 2 };
        assert_eq!((e.status(), e.retry_after()), (503, Some(2)));
        assert_eq!(IngestError::RateLimited { retry_after: 1 }.status(), 429);
        let e = IngestError::NotReplicated { replicas: 0, wanted: 1, retry_after: 1 };
        assert_eq!((e.status(), e.tag(), e.retry_after()), (503, "not_replicated", Some(1)));
        assert!(e.body().ends_with(r#","appended":true,"replicas":0,"wanted":1}"#), "{}", e.body());
        assert_eq!(
            IngestError::MissingCredentials("X-Nonce").body(),
            r#"{"error":"missing_credentials","message":"missing or malformed header X-Nonce","header":"X-Nonce"}"#
        );
    }

    #[test]
    fn http_refusals_keep_their_contract() {
        for e in
            [HttpError::ServerBusy { retry_after: 1 }, HttpError::PayloadTooLarge { limit: 5 }, HttpError::NotFound]
        {
            let wrapped = IngestError::from(e.clone());
            assert_eq!(wrapped.response(), e.response());
            assert_eq!((wrapped.tag(), wrapped.closes_connection()), (e.tag(), e.closes_connection()));
        }
    }
}
