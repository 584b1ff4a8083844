//! Client ingest on the data port (`docs/sdk.md`): `POST /api/analytics/ingest` and
//! `POST /api/analytics/payments/ingest`, Croupier's routes for game clients and
//! browsers, which cannot keep an HMAC secret. A body is `{"events":[...]}` or a bare
//! array; `X-Game-ID`/`X-Env` fill records without `game_id`/`env`. The sender is a
//! bearer token with `analytics:manage` or a game's public write key ([`credential`]),
//! which can only append, within its own rate and its address's, from the game's
//! origins ([`cors`]), through the game's filters ([`filters`]). Records are validated,
//! limited and appended exactly as `/api/ingest/*` appends them (one `EVAL`, the same
//! backlog admission and error contract), and `202 {"ok":true}` is sent once Redis has
//! them.

pub mod address;
pub mod cors;
pub mod credential;
pub mod filters;

use std::time::Instant;

use croupier_protocol::validate::{self, RecordView, Scope, Scoped};
use sha2::{Digest, Sha256};

use crate::data_port::{
    AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, ENV, FORWARDED_FOR, GAME_ID, ORIGIN, REQUEST_HEADERS, WRITE_KEY,
};
use crate::error::IngestError;
use crate::event_id::IdDeriver;
use crate::http::body::{self, Encoding};
use crate::http::error::HttpError;
use crate::http::handler::Request;
use crate::http::request::Method;
use crate::http::response::Response;
use crate::ingest::{self, Endpoint, Refusal};
use crate::shard::Shard;
use credential::Sender;

/// Bytes of a public write key's body (once inflated) that cost its sender's address one
/// event of its rate: its parse is paid for whatever it carries, accepted or refused.
/// Requests whose records average 4 KiB or less (the SDK's) cost what their records do, a
/// small refused one nothing; a body of one record and a megabyte of ignored JSON costs
/// 256 events, where it cost one (and a refused one none) and a 1.6 KB gzip body
/// inflating to it held a shard tens of milliseconds per request, as often as the client
/// liked.
pub const PARSE_BYTES_PER_EVENT: usize = 4096;

/// What an accepted request stored and left out.
struct Stored {
    accepted: usize,
    dropped: usize,
}

/// Why a request was refused, and whether `croupier_events_refused_total` counted it
/// already (with its records, once they were known).
struct Refused {
    error: IngestError,
    counted: bool,
}

impl From<IngestError> for Refused {
    fn from(error: IngestError) -> Refused {
        Refused { error, counted: false }
    }
}

/// `e`, not counted yet.
fn refuse<T>(e: IngestError) -> Result<T, Refused> {
    Err(e.into())
}

impl From<HttpError> for Refused {
    fn from(e: HttpError) -> Refused {
        IngestError::from(e).into()
    }
}

/// Answers a client ingest request (or its preflight).
pub async fn handle(shard: &Shard, endpoint: Endpoint, req: &mut Request<'_>) -> Response {
    let head = req.head();
    let origin = head.field(ORIGIN).filter(|o| !o.is_empty());
    if head.method == Method::Options {
        let key_game =
            credential::query_key(head.query()).and_then(|k| shard.keys.get(k.as_ref())).map(|k| k.game.as_str());
        return cors::preflight(shard, origin, key_game, head.field(REQUEST_HEADERS));
    }
    // The configured game `X-Game-ID` names: a refusal's label before the credential
    // named one.
    let named = head.field(GAME_ID).and_then(|g| shard.games.get_key_value(g)).map(|(g, _)| g.as_str());
    // The game whose origins decide whether the page may read the answer.
    let mut cors_game = None;
    let result = serve(shard, endpoint, req, &mut cors_game).await;
    let mut resp = match result {
        Ok(s) => Response::json(202, format!(r#"{{"ok":true,"accepted":{},"dropped":{}}}"#, s.accepted, s.dropped)),
        Err(Refused { error, counted }) => {
            // Refused before its records were counted (credential, game, headers, body):
            // one refused event, as on the data port's other routes.
            if !counted {
                // A revoked key still names its game (which pages still send it), though
                // the answer is read as one of no game.
                let revoked = || credential::key_game(shard, req.head().field(WRITE_KEY), req.head().query());
                let label = match &error {
                    IngestError::RevokedKey => cors_game.or(named).or_else(revoked),
                    _ => cors_game.or(named),
                };
                ingest::count_refused(shard, label.unwrap_or(""), &error, 1);
            }
            error.response()
        }
    };
    let readable = match (origin, cors_game.and_then(|g| shard.games.get(g))) {
        (Some(origin), Some(game)) => cors::allowed(game, origin),
        // No game known (a revoked, unknown or missing credential): the answer names only
        // the refusal, and a page the preflight let through must be able to read it — a
        // browser SDK that cannot see `401 revoked_key` retries it for ever.
        (Some(origin), None) => resp.status == 401 && shard.games.values().any(|g| cors::allowed(g, origin)),
        (None, _) => false,
    };
    if let (true, Some(origin)) = (readable, origin) {
        cors::expose(&mut resp, origin);
    }
    resp
}

/// A media type client ingest takes: JSON, or the `text/plain` that `sendBeacon` sends
/// for a string.
fn acceptable_type(content_type: Option<&str>) -> bool {
    let Some(media) = content_type.and_then(|ct| ct.split(';').next()).map(str::trim) else { return false };
    media.eq_ignore_ascii_case("application/json") || media.eq_ignore_ascii_case("text/plain")
}

async fn serve<'s>(
    shard: &'s Shard,
    endpoint: Endpoint,
    req: &mut Request<'_>,
    cors_game: &mut Option<&'s str>,
) -> Result<Stored, Refused> {
    let head = req.head();
    let header_game = head.field(GAME_ID).filter(|g| !g.is_empty());
    let sender = credential::check(shard, head.field(AUTHORIZATION), head.field(WRITE_KEY), head.query())?;
    // The game named before the body: the key's, or the header's for a token.
    let game: Option<&str> = match &sender {
        Sender::Key { game, .. } => {
            *cors_game = Some(game);
            if header_game.is_some_and(|h| h != *game) {
                return refuse(IngestError::Forbidden("game_mismatch", "X-Game-ID is not the game of the write key"));
            }
            let state = shard.games.get(*game).ok_or(IngestError::UnknownKey)?;
            if let Some(origin) = head.field(ORIGIN).filter(|o| !o.is_empty()) {
                if !cors::allowed(state, origin) {
                    return refuse(IngestError::Forbidden(
                        "origin_not_allowed",
                        "this origin may not send to this game",
                    ));
                }
            }
            if endpoint == Endpoint::Payments && !state.public_payments {
                return refuse(IngestError::Forbidden(
                    "payments_not_allowed",
                    "this game takes payments only with a bearer token (games.<id>.public_payments)",
                ));
            }
            Some(game)
        }
        Sender::Token(caller) => match header_game {
            Some(g) => {
                let (known, _) = shard.games.get_key_value(g).ok_or(IngestError::UnknownGame)?;
                *cors_game = Some(known);
                if caller.may_read(Some(g)).is_err() {
                    return refuse(IngestError::Forbidden(
                        "game_not_allowed",
                        "the token's games claim excludes this game",
                    ));
                }
                Some(known.as_str())
            }
            None => None,
        },
    };
    if !acceptable_type(head.field(CONTENT_TYPE)) {
        return Err(HttpError::UnsupportedMediaType("Content-Type (use application/json or text/plain)").into());
    }
    let encoding = Encoding::parse(head.field(CONTENT_ENCODING))?;
    if !shard.redis.is_up() {
        return refuse(IngestError::RedisUnavailable { retry_after: shard.config.redis.retry_after_secs });
    }
    let env = head.field(ENV).filter(|e| !e.is_empty());
    let forwarded = head.field(FORWARDED_FOR);
    let peer = address::client_address(req.peer_ip(), forwarded, &shard.config.client.trusted_proxies);
    // What a page's request may make the shard read, inflate and parse: far less than a
    // signed server's (a declared length past it refused before the body is read, a
    // chunked one read no further, its framing held to its share of the limit).
    let limits = &shard.config;
    let (max_body, max_inflated) = match &sender {
        Sender::Key { .. } => (
            limits.client.max_body_bytes.min(limits.server.max_body_bytes),
            limits.client.max_body_bytes.min(limits.server.max_decompressed_bytes),
        ),
        Sender::Token(_) => (limits.server.max_body_bytes, limits.server.max_decompressed_bytes),
    };
    // A key or an address in debt (its earlier requests' records, or their bytes) is
    // refused before its body is inflated or parsed; one event is taken while the body is
    // read, so requests arriving together are held to the rates' burst (a check alone let
    // every one of them through to its parse); given back if the body cannot be read.
    let reserved = match sender {
        Sender::Key { key, .. } => {
            take_client_rates(shard, key, peer, 1).map_err(|retry_after| IngestError::RateLimited { retry_after })?;
            Some(Reserved { shard, key, peer })
        }
        Sender::Token(_) => None,
    };
    let mut held = req.claim_body()?;
    req.read_body_within(&mut held, max_body).await?;
    let (wire, scratch) = req.buffers();
    let body: &mut [u8] = match encoding {
        Encoding::Identity => wire,
        Encoding::Gzip => match body::gunzip(wire, max_inflated, scratch) {
            Ok(()) => scratch,
            Err(e) => {
                // Inflated up to where it failed (at most the limit): paid as parsed bytes,
                // the event taken given back as for a body that could not be read.
                drop(reserved);
                if let Sender::Key { key, .. } = sender {
                    charge_parse(shard, key, peer, scratch.len().min(max_inflated) / PARSE_BYTES_PER_EVENT);
                }
                return Err(e.into());
            }
        },
    };
    // From here to the request's charge nothing awaits: the event taken becomes part of it.
    drop(reserved);
    // A public key's request carries at most its rates' burst: more is refused before
    // the parse, from a scan of the bytes.
    let parse_cost = body.len() / PARSE_BYTES_PER_EVENT;
    if let Sender::Key { key, game: key_game } = sender {
        let burst = client_burst(shard, key, key_game, peer);
        if croupier_protocol::prescan::records_may_exceed_any_size(body, burst) {
            charge_parse(shard, key, peer, parse_cost);
            let error = IngestError::Body(croupier_protocol::validate::BodyError::TooManyRecords(burst));
            return Err(error.into());
        }
    }
    // The body's digest, with its route: the same bytes sent to the other route (a record
    // can be valid as an event and as a payment) are another request. `request_identity`
    // adds the `X-Env` that fills records. (The two newlines keep the digest of a request
    // without `X-Game-ID` and `X-Env` what it was when both were always hashed: a retry
    // across an upgrade is still recognised.)
    let route: &[u8] = match endpoint {
        Endpoint::Events => b"events\n",
        Endpoint::Payments => b"payments\n",
    };
    let digest: [u8; 32] =
        Sha256::new().chain_update(route).chain_update(b"\n\n").chain_update(&body[..]).finalize().into();
    let scope = Scope { game, fill_game: true, env };
    let counted = |error| Refused { error, counted: true };
    let prepared = prepare(shard, endpoint, &sender, &scope, &digest, peer, body, parse_cost);
    if let (Err(_), Sender::Key { key, .. }) = (&prepared, &sender) {
        // Refused after the parse: its bytes' cost.
        charge_parse(shard, key, peer, parse_cost);
    }
    crate::http::body::release_inflated(req.buffers().1, crate::http::body::INFLATED_KEEP);
    let prepared = prepared.map_err(|r| counted(r.counted(shard, game.unwrap_or(""))))?;
    let (staged, game, dropped) = prepared;
    // The batch's game decides which pages may read the answer, when no header named it
    // (a bearer token's records name theirs).
    if cors_game.is_none() {
        *cors_game = Some(game);
    }
    let Some(staged) = staged else { return Ok(Stored { accepted: 0, dropped }) };
    let accepted = ingest::append(shard, game, staged).await.map_err(counted)?;
    Ok(Stored { accepted, dropped })
}

/// Parses, filters and rate-limits the body, and stages the append (`None` when every
/// record was left out); with the batch's game and the records dropped. A public key's
/// request costs its rates the records it carried, or `parse_cost` when more. Nothing
/// here awaits.
#[allow(clippy::too_many_arguments)]
fn prepare<'s>(
    shard: &'s Shard,
    endpoint: Endpoint,
    sender: &Sender<'_>,
    scope: &Scope<'_>,
    digest: &[u8; 32],
    peer: Option<std::net::IpAddr>,
    body: &mut [u8],
    parse_cost: usize,
) -> Result<(Option<ingest::Prepared<'s>>, &'s str, usize), Refusal> {
    let action = shard.config.client.filtered_events;
    let mut filters = shard.filters.borrow_mut();
    filters.refresh(Instant::now());
    let filters = &*filters;
    let mut bufs = shard.batches.borrow_mut();
    let b = &mut *bufs;
    let scoped: Scoped = {
        let sink = b.otlp_sink();
        let mut json = shard.json.borrow_mut();
        match endpoint {
            Endpoint::Events => {
                // Ids of the records the scope's env filled are derived from the request's
                // identity with it, the others' from the body's digest alone: a header that
                // fills nothing changes no id, and the same body filled with two envs (two
                // requests, two sets of records) shares none.
                let how = shard.config.server.event_ids;
                let ids = IdDeriver::new(digest, how);
                let mut filled_ids: Option<IdDeriver> = None;
                let mut index = 0u32;
                let mut new_id = |filled: Option<&str>| {
                    let i = index;
                    index = index.wrapping_add(1);
                    match filled {
                        None => ids.id_at(i),
                        Some(env) => filled_ids
                            .get_or_insert_with(|| IdDeriver::new(&request_identity(digest, Some(env)), how))
                            .id_at(i),
                    }
                };
                let mut keep = |r: &RecordView<'_>| filters.event(r, action);
                validate::parse_events_scoped(
                    &mut json,
                    body,
                    scope,
                    &shard.limits,
                    &mut new_id,
                    &mut keep,
                    sink.events,
                    sink.custom,
                )
            }
            Endpoint::Payments => {
                let mut keep = |r: &RecordView<'_>| filters.payment(r, action);
                validate::parse_payments_scoped(&mut json, body, scope, &shard.limits, &mut keep, sink.payments)
            }
        }
        // A record refused counts the batch's records refused.
        .map_err(|e| Refusal { error: IngestError::Body(e), records: json.batch_records() })?
    };
    // The batch's game: named before the body, or its first record's.
    let named = scope.game.or(scoped.game.as_deref()).unwrap_or("");
    // The records were read: a refusal now counts them all.
    let read = shard.json.borrow().batch_records();
    let (game_id, game) =
        shard.games.get_key_value(named).ok_or(Refusal { error: IngestError::UnknownGame, records: read })?;
    if let Sender::Token(caller) = sender {
        if caller.may_read(Some(game_id)).is_err() {
            let error = IngestError::Forbidden("game_not_allowed", "the token's games claim excludes this game");
            return Err(Refusal { error, records: read });
        }
    }
    let (parts, n) = b.parts();
    let total: usize = parts[..n].iter().map(|(_, c)| c).sum();
    // The key's and the address's rates count every record the request carried, those the
    // filters left out too: each cost the shard its parse.
    let carried = total.saturating_add(scoped.dropped);
    if let Sender::Key { key, game: key_game } = sender {
        // A public key's request may not exceed its rates' burst: a larger one would pass
        // once and leave the key (every browser of the game) in debt for many seconds.
        let burst = client_burst(shard, key, key_game, peer);
        if carried > burst {
            let error = IngestError::Body(croupier_protocol::validate::BodyError::TooManyRecords(burst));
            return Err(Refusal { error, records: Some(carried) });
        }
        take_client_rates(shard, key, peer, carried).map_err(|retry_after| Refusal {
            error: IngestError::RateLimited { retry_after },
            records: Some(carried),
        })?;
    }
    // The bytes' share past the records, charged once the request is taken (kept whatever
    // the append does); a refusal is charged its bytes by the caller, once.
    let charge_bytes = || {
        if let Sender::Key { key, .. } = sender {
            charge_parse(shard, key, peer, parse_cost.saturating_sub(carried));
        }
    };
    if n == 0 {
        charge_bytes();
        return Ok((None, game_id, scoped.dropped));
    }
    // The key's and the address's cells, given back if nothing is appended.
    let cells = match sender {
        Sender::Key { key, .. } => [shard.rates.key(key), peer.and_then(|ip| shard.rates.address(ip))],
        Sender::Token(_) => [None, None],
    };
    let identity = request_identity(digest, scope.env.filter(|_| scoped.env_filled));
    let nonce_key = format!("croupier:client:{game_id}:{}", hex::encode(identity));
    match ingest::stage(shard, b, game, &nonce_key, &identity, parts, n) {
        Ok(staged) => {
            charge_bytes();
            Ok((Some(staged.with_client_rates(cells, carried)), game_id, scoped.dropped))
        }
        Err(refusal) => {
            for r in cells.iter().flatten() {
                r.give_back(carried);
            }
            // Counted as the key's and the address's refusals are: every record carried.
            Err(Refusal { records: refusal.records.map(|_| carried), ..refusal })
        }
    }
}

/// A request's identity, by which Redis recognises a retry (appended once): its game (in
/// the key that records it), its route and body (`digest`), and the `X-Env` that filled
/// some of its records (`filled`). A header that filled nothing does not make the same
/// records another request; the game's header never does (the records' game is in the key).
fn request_identity(digest: &[u8; 32], filled: Option<&str>) -> [u8; 32] {
    match filled {
        None => *digest,
        Some(env) => {
            Sha256::new().chain_update(digest).chain_update(b"env\n").chain_update(env.as_bytes()).finalize().into()
        }
    }
}

/// The most events one request on `key` (of `game`) from `peer` may carry: the smallest
/// burst of the key's, the address's and the game's rates (unlimited when none is
/// limited). The game's (`games.<id>.rate_limit_eps`) is shared with its signed servers:
/// a page's request larger than it would pass once and leave the game in debt, its own
/// servers refused for as many seconds.
fn client_burst(shard: &Shard, key: &str, game: &str, peer: Option<std::net::IpAddr>) -> usize {
    let key = shard.rates.key(key).map_or(usize::MAX, |r| r.burst());
    let address = peer.and_then(|ip| shard.rates.address(ip)).map_or(usize::MAX, |r| r.burst());
    let game = shard.games.get(game).and_then(|g| g.rate.as_deref()).map_or(usize::MAX, |r| r.burst());
    key.min(address).min(game)
}

/// The event a write key's request took from its key's and address's rates while its body
/// is read: given back when dropped, on every way out (a body that cannot be read, a
/// request given up), and once the body is in hand, where the request's own charge
/// takes its place.
struct Reserved<'a> {
    shard: &'a Shard,
    key: &'a str,
    peer: Option<std::net::IpAddr>,
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        let address = self.peer.and_then(|ip| self.shard.rates.address(ip));
        [self.shard.rates.key(self.key), address].into_iter().flatten().for_each(|r| r.give_back(1));
    }
}

/// Charges `n` events of parsed bytes, whatever it holds, to the address's rate: the key's,
/// which every browser of the game shares, would let one address shut them all out with a
/// few costly requests (the key's rate when addresses are not limited, or the sender's is
/// not known).
fn charge_parse(shard: &Shard, key: &str, peer: Option<std::net::IpAddr>, n: usize) {
    if let Some(c) = peer.and_then(|ip| shard.rates.address(ip)).or_else(|| shard.rates.key(key)) {
        c.charge(n, Instant::now());
    }
}

/// Takes `n` events from the key's rate and the address's, or says in how many seconds
/// they would fit (what one took is given back when the other refuses).
fn take_client_rates(shard: &Shard, key: &str, peer: Option<std::net::IpAddr>, n: usize) -> Result<(), u64> {
    let now = Instant::now();
    let key_rate = shard.rates.key(key);
    if let Some(r) = key_rate {
        r.take(n, now)?;
    }
    if let Some(r) = peer.and_then(|ip| shard.rates.address(ip)) {
        if let Err(retry) = r.take(n, now) {
            if let Some(k) = key_rate {
                k.give_back(n);
            }
            return Err(retry);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_another_only_when_the_header_env_filled_its_records() {
        let digest = [7u8; 32];
        assert_eq!(request_identity(&digest, None), digest, "nothing filled: the body's digest");
        let (a, b) = (request_identity(&digest, Some("staging")), request_identity(&digest, Some("prod")));
        assert!(a != digest && b != digest && a != b, "each filling env: a request of its own");
        assert_eq!(a, request_identity(&digest, Some("staging")));
    }
}
