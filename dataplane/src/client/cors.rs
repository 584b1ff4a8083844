//! CORS for client ingest: which page origins may send with a game's write keys (its
//! `allowed_origins`; none listed: any), the answer to a browser's preflight
//! (`OPTIONS`), and the headers that let a page read an answer (its status and
//! `Retry-After`, which the SDK's back-off needs).

use crate::http::response::Response;
use crate::shard::{GameState, Shard};

/// Request headers a page may send (`Access-Control-Allow-Headers`).
const ALLOW_HEADERS: &str = "Content-Type, Content-Encoding, Authorization, X-Write-Key, X-Game-ID, X-Env";

/// Whether `origin` may send with `game`'s write keys.
pub fn allowed(game: &GameState, origin: &str) -> bool {
    game.allowed_origins.is_empty() || game.allowed_origins.iter().any(|o| o == origin)
}

/// Lets the page at `origin` read `resp`.
pub fn expose(resp: &mut Response, origin: &str) {
    resp.headers.push(("Access-Control-Allow-Origin", origin.to_owned()));
    resp.headers.push(("Access-Control-Expose-Headers", "Retry-After".to_owned()));
    resp.headers.push(("Vary", "Origin".to_owned()));
}

/// The answer to a preflight from `origin`: `204` with the methods and headers allowed
/// when the origin may send with the game of the key in the query (a preflight carries
/// no other credential), or, without one, with some game's keys; else `403` without CORS
/// headers, which the browser takes as a refusal.
pub fn preflight(shard: &Shard, origin: Option<&str>, key_game: Option<&str>) -> Response {
    let Some(origin) = origin.filter(|o| !o.is_empty()) else {
        return Response::json(
            400,
            crate::http::response::error_body("bad_request", "a preflight needs an Origin header", ""),
        );
    };
    let ok = match key_game.and_then(|g| shard.games.get(g)) {
        Some(g) => allowed(g, origin),
        None => shard.games.values().any(|g| allowed(g, origin)),
    };
    if !ok {
        return Response::json(
            403,
            crate::http::response::error_body("origin_not_allowed", "this origin may not send to this game", ""),
        );
    }
    let mut r = Response::json(204, String::new());
    r.content_type = "text/plain";
    r.headers.push(("Access-Control-Allow-Origin", origin.to_owned()));
    r.headers.push(("Access-Control-Allow-Methods", "POST, OPTIONS".to_owned()));
    r.headers.push(("Access-Control-Allow-Headers", ALLOW_HEADERS.to_owned()));
    r.headers.push(("Access-Control-Max-Age", shard.config.client.preflight_max_age_secs.to_string()));
    r.headers.push(("Vary", "Origin".to_owned()));
    r
}
