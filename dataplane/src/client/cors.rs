//! CORS for client ingest: which page origins may send with a game's write keys (its
//! `allowed_origins`; none listed: any), the answer to a browser's preflight
//! (`OPTIONS`), and the headers that let a page read an answer (its status and
//! `Retry-After`, which the SDK's back-off needs).

use crate::http::response::Response;
use crate::shard::{GameState, Shard};

/// Request headers a page may send (`Access-Control-Allow-Headers`), besides those its
/// preflight asks for.
const ALLOW_HEADERS: &str = "Content-Type, Content-Encoding, Authorization, X-Write-Key, X-Game-ID, X-Env";

/// Most header names a preflight may ask for beyond [`ALLOW_HEADERS`].
const MAX_REQUESTED: usize = 32;

/// `Access-Control-Allow-Headers` for a preflight that asked for `requested`
/// (`Access-Control-Request-Headers`): [`ALLOW_HEADERS`], then each name asked for that is
/// not among them, as sent. The routes read only the headers they know, so a page whose
/// own instrumentation adds one (`traceparent`, `baggage`, an id of its own) may send it;
/// a browser refuses the request when a name it asked for is missing. `None` when the
/// list is not header names, or names more than [`MAX_REQUESTED`] others.
fn allow_headers(requested: Option<&str>) -> Option<String> {
    let mut allow = ALLOW_HEADERS.to_owned();
    let mut extra = 0;
    for name in requested.unwrap_or("").split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if !name.bytes().all(is_token_byte) {
            return None;
        }
        if allow.split(", ").any(|known| known.eq_ignore_ascii_case(name)) {
            continue;
        }
        extra += 1;
        if extra > MAX_REQUESTED {
            return None;
        }
        allow.push_str(", ");
        allow.push_str(name);
    }
    Some(allow)
}

/// A byte of an HTTP token (RFC 9110, 5.6.2), which header names are.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether `origin` may send with `game`'s write keys.
pub fn allowed(game: &GameState, origin: &str) -> bool {
    game.allowed_origins.is_empty() || game.allowed_origins.iter().any(|o| o == origin)
}

/// Whether `origin` may send with the keys of `game` (a configured game's id), or, with
/// no such game, with some game's.
pub fn allowed_for(shard: &Shard, game: Option<&str>, origin: &str) -> bool {
    match game.and_then(|g| shard.games.get(g)) {
        Some(g) => allowed(g, origin),
        None => shard.games.values().any(|g| allowed(g, origin)),
    }
}

/// Lets the page at `origin` read `resp`.
pub fn expose(resp: &mut Response, origin: &str) {
    resp.headers.push(("Access-Control-Allow-Origin", origin.to_owned()));
    resp.headers.push(("Access-Control-Expose-Headers", "Retry-After".to_owned()));
    resp.headers.push(("Vary", "Origin".to_owned()));
}

/// The answer to a preflight from `origin` asking for the headers `requested`: `204`
/// with the methods and headers allowed when the origin may send with the game of the
/// key in the query (a preflight carries no other credential), or, without one, with
/// some game's keys; else `403` without CORS headers, which the browser takes as a
/// refusal; `400` naming the field when `requested` is not a list of header names.
pub fn preflight(shard: &Shard, origin: Option<&str>, key_game: Option<&str>, requested: Option<&str>) -> Response {
    let Some(origin) = origin.filter(|o| !o.is_empty()) else {
        return Response::json(
            400,
            crate::http::response::error_body("bad_request", "a preflight needs an Origin header", ""),
        );
    };
    if !allowed_for(shard, key_game, origin) {
        return Response::json(
            403,
            crate::http::response::error_body("origin_not_allowed", "this origin may not send to this game", ""),
        );
    }
    let Some(allow) = allow_headers(requested) else {
        return Response::json(
            400,
            crate::http::response::error_body(
                "bad_request",
                "Access-Control-Request-Headers must be a list of header names, at most 32 besides the routes' own",
                r#","header":"Access-Control-Request-Headers""#,
            ),
        );
    };
    let mut r = Response::json(204, String::new());
    r.content_type = "text/plain";
    r.headers.push(("Access-Control-Allow-Origin", origin.to_owned()));
    r.headers.push(("Access-Control-Allow-Methods", "POST, OPTIONS".to_owned()));
    r.headers.push(("Access-Control-Allow-Headers", allow));
    r.headers.push(("Access-Control-Max-Age", shard.config.client.preflight_max_age_secs.to_string()));
    r.headers.push(("Vary", "Origin, Access-Control-Request-Headers".to_owned()));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preflight_is_allowed_the_headers_it_asks_for_besides_the_routes_own() {
        assert_eq!(allow_headers(None).as_deref(), Some(ALLOW_HEADERS));
        assert_eq!(allow_headers(Some("content-type,x-write-key")).as_deref(), Some(ALLOW_HEADERS));
        assert_eq!(
            allow_headers(Some("Content-Type, traceparent,  , baggage")).as_deref(),
            Some(format!("{ALLOW_HEADERS}, traceparent, baggage").as_str())
        );
        // Not header names: a CR, a space inside, a separator.
        // … or a line that was not UTF-8 (its bytes read as U+FFFD by the head's parser).
        for bad in ["trace parent", "a\rb", "x-a:b", "x-a;b", "x(y)", "traceparent, x-\u{fffd}, baggage"] {
            assert_eq!(allow_headers(Some(bad)), None, "{bad:?}");
        }
        let many = (0..=MAX_REQUESTED).map(|i| format!("x-h{i}")).collect::<Vec<_>>().join(",");
        assert_eq!(allow_headers(Some(&many)), None);
        let enough = (0..MAX_REQUESTED).map(|i| format!("x-h{i}")).collect::<Vec<_>>().join(",");
        assert!(allow_headers(Some(&enough)).is_some_and(|a| a.ends_with("x-h31")));
    }
}
