//! The HTTP layer's error contract, whatever the route: refusals of a request as HTTP
//! (routing, framing, limits, timeouts, the body budget), each with its status, error
//! tag, message, `Retry-After`, and whether the connection closes. A surface wraps it in
//! its own contract (the ingest API's is `crate::error`); the JSON body is the same shape.

use super::response::{error_body, Response};

/// Why a request was refused as HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
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
    /// A framing header HTTP reads has a value it cannot take (names it, and says why).
    InvalidHeader {
        /// The header.
        header: &'static str,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The body's media type or content coding is not one the route takes (says which).
    UnsupportedMediaType(&'static str),
    /// The body as sent exceeds the limit.
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body, decompressed, exceeds the limit (`server.max_decompressed_bytes`).
    InflatedTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The request did not arrive within the read timeout.
    RequestTimeout,
    /// The shard is receiving as many request bodies as its budget allows
    /// (`server.max_inflight_body_bytes`).
    ServerBusy {
        /// Seconds to wait before retrying.
        retry_after: u64,
    },
}

impl HttpError {
    /// HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::NotFound => 404,
            HttpError::MethodNotAllowed { .. } => 405,
            HttpError::BadRequest(_) | HttpError::DuplicateHeader(_) | HttpError::InvalidHeader { .. } => 400,
            HttpError::UnsupportedMediaType(_) => 415,
            HttpError::PayloadTooLarge { .. } | HttpError::InflatedTooLarge { .. } => 413,
            HttpError::RequestTimeout => 408,
            HttpError::ServerBusy { .. } => 503,
        }
    }

    /// The `error` tag of the JSON body.
    pub fn tag(&self) -> &'static str {
        match self {
            HttpError::NotFound => "not_found",
            HttpError::MethodNotAllowed { .. } => "method_not_allowed",
            HttpError::BadRequest(_) | HttpError::DuplicateHeader(_) | HttpError::InvalidHeader { .. } => "bad_request",
            HttpError::UnsupportedMediaType(_) => "unsupported_media_type",
            HttpError::PayloadTooLarge { .. } | HttpError::InflatedTooLarge { .. } => "payload_too_large",
            HttpError::RequestTimeout => "request_timeout",
            HttpError::ServerBusy { .. } => "server_busy",
        }
    }

    /// Value of `Retry-After`, when the client should retry.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            HttpError::ServerBusy { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    /// Whether the connection must be closed after the response (the rest of the
    /// request cannot be skipped safely).
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            HttpError::BadRequest(_)
                | HttpError::DuplicateHeader(_)
                | HttpError::InvalidHeader { .. }
                | HttpError::PayloadTooLarge { .. }
                | HttpError::InflatedTooLarge { .. }
                | HttpError::RequestTimeout
                | HttpError::ServerBusy { .. }
        )
    }

    /// The message of the JSON body.
    pub fn message(&self) -> String {
        match self {
            HttpError::NotFound => "no such route".into(),
            HttpError::MethodNotAllowed { allow } => format!("method not allowed; allowed: {allow}"),
            HttpError::BadRequest(what) => format!("bad request: {what}"),
            HttpError::DuplicateHeader(h) => format!("bad request: header {h} appears more than once"),
            HttpError::InvalidHeader { why, .. } => format!("bad request: {why}"),
            HttpError::UnsupportedMediaType(what) => format!("unsupported {what}"),
            HttpError::PayloadTooLarge { limit } => format!("body larger than {limit} bytes"),
            HttpError::InflatedTooLarge { limit } => format!("body larger than {limit} bytes once decompressed"),
            HttpError::RequestTimeout => "request not received in time".into(),
            HttpError::ServerBusy { .. } => "server busy: too many request bodies in flight".into(),
        }
    }

    /// The header at fault, named in the body as `"header"`.
    pub fn header(&self) -> Option<&'static str> {
        match self {
            HttpError::DuplicateHeader(h) => Some(h),
            HttpError::InvalidHeader { header, .. } => Some(header),
            _ => None,
        }
    }

    /// The JSON body: `{"error":tag,"message":...}`, plus `header` when a header is at
    /// fault.
    pub fn body(&self) -> String {
        let extra = self.header().map(|h| format!(r#","header":"{h}""#)).unwrap_or_default();
        error_body(self.tag(), &self.message(), &extra)
    }

    /// The response: status, body, `Retry-After`, `Allow`, and the close when the rest
    /// of the request cannot be skipped.
    pub fn response(&self) -> Response {
        let mut r = Response::json(self.status(), self.body());
        r.retry_after = self.retry_after();
        if let HttpError::MethodNotAllowed { allow } = self {
            r.allow = Some(allow);
        }
        r.close = self.closes_connection();
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_of_each_refusal() {
        let busy = HttpError::ServerBusy { retry_after: 1 };
        assert_eq!(
            (busy.status(), busy.tag(), busy.retry_after(), busy.closes_connection()),
            (503, "server_busy", Some(1), true)
        );
        let dup = HttpError::DuplicateHeader("X-Nonce");
        assert_eq!(
            dup.body(),
            r#"{"error":"bad_request","message":"bad request: header X-Nonce appears more than once","header":"X-Nonce"}"#
        );
        let r = HttpError::MethodNotAllowed { allow: "POST" }.response();
        assert_eq!((r.status, r.allow, r.close), (405, Some("POST"), false));
        assert!(!HttpError::NotFound.closes_connection());
    }
}
