//! The Analytics API's error contract, in one place: every refusal of an
//! `/api/analytics/*` request is a JSON body `{"error":tag,"message":...}` with the
//! parameter (`"field"`) at fault when there is one, and a status. A query that fails is
//! an error with a status, never a figure of 0.

use crate::http::error::HttpError;
use crate::http::response::{error_body, json_string, Response};

/// Why an Analytics API request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// A refusal of the HTTP layer (404, 405, ...).
    Http(HttpError),
    /// A parameter is missing or invalid: names it and says why.
    InvalidParameter {
        /// The parameter (`start`, `steps`, `game_id`, ...).
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// No bearer token, or one that does not verify (expired, bad signature, unknown
    /// key, malformed).
    Unauthorized(String),
    /// The token verified but lacks the permission the route needs.
    MissingPermission(&'static str),
    /// The token may not read this game (its `games` claim).
    GameNotAllowed(String),
    /// ClickHouse refused or failed the query.
    QueryFailed(String),
    /// ClickHouse did not answer within `api.query_timeout_ms`.
    QueryTimeout,
    /// As many queries as `api.max_queries_in_flight` (or the request's share of them)
    /// were running for the whole wait.
    Busy,
    /// The control port already handles as many API requests as it takes at once (half
    /// its places): answered as [`ApiError::Busy`], saying so.
    TooManyRequests,
    /// Redis failed or did not answer.
    RedisFailed(String),
    /// What the route reads is not filled yet (`croupier migrate` has not finished):
    /// names it.
    NotReady(&'static str),
    /// What a `POST` changed could not be stored (`api.filters_file`): names it; the
    /// change is not applied.
    StoreFailed(&'static str),
    /// The client closed its connection before its answer: its reads were given up on.
    /// Recorded as 499 (the audit log, `/metrics`); nobody reads the answer.
    ClientClosed,
}

impl ApiError {
    /// A parameter refused.
    pub fn param(field: &'static str, reason: impl Into<String>) -> ApiError {
        ApiError::InvalidParameter { field, reason: reason.into() }
    }

    /// HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::Http(e) => e.status(),
            ApiError::InvalidParameter { .. } => 400,
            ApiError::Unauthorized(_) => 401,
            ApiError::MissingPermission(_) | ApiError::GameNotAllowed(_) => 403,
            ApiError::QueryFailed(_) | ApiError::RedisFailed(_) => 502,
            ApiError::QueryTimeout => 504,
            ApiError::Busy | ApiError::TooManyRequests | ApiError::NotReady(_) => 503,
            ApiError::StoreFailed(_) => 500,
            ApiError::ClientClosed => 499,
        }
    }

    /// The `error` tag.
    pub fn tag(&self) -> &'static str {
        match self {
            ApiError::Http(e) => e.tag(),
            ApiError::InvalidParameter { .. } => "invalid_parameter",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::MissingPermission(_) | ApiError::GameNotAllowed(_) => "forbidden",
            ApiError::QueryFailed(_) => "query_failed",
            ApiError::QueryTimeout => "query_timeout",
            ApiError::Busy | ApiError::TooManyRequests => "busy",
            ApiError::RedisFailed(_) => "redis_failed",
            ApiError::NotReady(_) => "not_ready",
            ApiError::StoreFailed(_) => "store_failed",
            ApiError::ClientClosed => "client_closed",
        }
    }

    /// The message.
    pub fn message(&self) -> String {
        match self {
            ApiError::Http(e) => e.message(),
            ApiError::InvalidParameter { field, reason } => format!("invalid {field}: {reason}"),
            ApiError::Unauthorized(why) => format!("unauthorized: {why}"),
            ApiError::MissingPermission(p) => format!("forbidden: the token's roles do not grant {p}"),
            ApiError::GameNotAllowed(g) if g.is_empty() => {
                "forbidden: the token is limited to some games; name one with game_id".into()
            }
            ApiError::GameNotAllowed(g) => format!("forbidden: the token may not read game {g}"),
            ApiError::QueryFailed(e) => format!("query failed: {e}"),
            ApiError::QueryTimeout => "query did not finish in time".into(),
            ApiError::Busy => "too many queries in flight".into(),
            ApiError::TooManyRequests => "too many Analytics API requests at once on this port".into(),
            ApiError::RedisFailed(e) => format!("redis failed: {e}"),
            ApiError::NotReady(what) => format!("{what} is being filled by croupier migrate; try again later"),
            ApiError::StoreFailed(what) => format!("{what} could not be stored; nothing was changed"),
            ApiError::ClientClosed => "the client closed its connection before its answer".into(),
        }
    }

    /// The parameter at fault, named in the body as `"field"`.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            ApiError::InvalidParameter { field, .. } => Some(field),
            ApiError::GameNotAllowed(_) => Some("game_id"),
            ApiError::MissingPermission(p) => Some(p),
            _ => None,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        let extra = match (self, self.field()) {
            (ApiError::MissingPermission(p), _) => format!(r#","permission":{}"#, json_string(p)),
            (_, Some(f)) => format!(r#","field":{}"#, json_string(f)),
            _ => String::new(),
        };
        error_body(self.tag(), &self.message(), &extra)
    }

    /// The response.
    pub fn response(&self) -> Response {
        match self {
            ApiError::Http(e) => e.response(),
            ApiError::Busy | ApiError::TooManyRequests => {
                let mut r = Response::json(503, self.body());
                r.retry_after = Some(1);
                r
            }
            ApiError::NotReady(_) => {
                let mut r = Response::json(503, self.body());
                r.retry_after = Some(10);
                r
            }
            _ => Response::json(self.status(), self.body()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_of_each_refusal() {
        let e = ApiError::param("start", "expected RFC 3339 or YYYY-MM-DD");
        assert_eq!(
            (e.status(), e.body()),
            (400, r#"{"error":"invalid_parameter","message":"invalid start: expected RFC 3339 or YYYY-MM-DD","field":"start"}"#.into())
        );
        assert_eq!(ApiError::Unauthorized("expired".into()).status(), 401);
        let f = ApiError::MissingPermission("analytics:manage");
        assert_eq!((f.status(), f.tag()), (403, "forbidden"));
        assert!(f.body().contains(r#""permission":"analytics:manage""#));
        let g = ApiError::GameNotAllowed("g2".into());
        assert!(g.body().ends_with(r#","field":"game_id"}"#));
        assert_eq!(ApiError::QueryTimeout.status(), 504);
        assert_eq!(ApiError::Busy.response().retry_after, Some(1));
    }
}
