//! The ingest endpoints: a signed batch in, one stream entry per target stream out, and
//! `202 {"accepted":N}` once Redis has acknowledged the append.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use croupier_protocol::batch::{self, Batch, Records};
use croupier_protocol::envelope::{EventBatch, Payment};
use croupier_protocol::resp::{self, EntryArgs, IngestReply};
use croupier_protocol::stream::StreamKind;
use croupier_protocol::validate;

use crate::auth::{self, Credential};
use crate::error::IngestError;
use crate::http::body::{self, Encoding};
use crate::http::request::Head;
use crate::shard::{GameState, Shard};

/// Which ingest endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /api/ingest/events`.
    Events,
    /// `POST /api/ingest/payments`.
    Payments,
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Checks what can be checked from the head alone: media type, encoding, credentials,
/// and that Redis is reachable.
pub fn precheck<'h>(shard: &Shard, head: &'h Head) -> Result<(Credential<'h>, Encoding), IngestError> {
    let json = head
        .content_type
        .as_deref()
        .is_some_and(|ct| ct.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json")));
    if !json {
        return Err(IngestError::UnsupportedMediaType("Content-Type (use application/json)"));
    }
    let encoding = Encoding::parse(head.content_encoding.as_deref())?;
    let cred =
        auth::check_headers(head, |g| shard.games.contains_key(g), now_ms() / 1000, shard.config.auth.max_skew_secs)?;
    if !shard.redis.is_up() {
        return Err(IngestError::RedisUnavailable { retry_after: shard.config.redis.retry_after_secs });
    }
    Ok((cred, encoding))
}

/// Handles a request whose head passed [`precheck`] and whose body is in `wire`.
/// `scratch` is a reusable buffer for the decompressed body. Returns the number of
/// records accepted.
pub async fn handle(
    shard: &Shard,
    endpoint: Endpoint,
    cred: &Credential<'_>,
    encoding: Encoding,
    wire: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> Result<usize, IngestError> {
    let game = shard.games.get(cred.game).ok_or(IngestError::UnknownGame)?;
    let limit = shard.config.server.max_decompressed_bytes;
    // The signature covers the body as sent; a gzip body signed after decompression is
    // accepted too (docs/ingest.md).
    let body: &mut Vec<u8> = match encoding {
        Encoding::Identity => {
            if !auth::verify(&game.secret, cred, wire) {
                return Err(IngestError::BadSignature);
            }
            wire
        }
        Encoding::Gzip => {
            let signed_wire = auth::verify(&game.secret, cred, wire);
            body::gunzip(wire, limit, scratch)?;
            if !signed_wire && !auth::verify(&game.secret, cred, scratch) {
                return Err(IngestError::BadSignature);
            }
            scratch
        }
    };
    let mut parts: Vec<(StreamKind, Records)> = Vec::with_capacity(2);
    match endpoint {
        Endpoint::Events => {
            let (mut events, mut custom) = (EventBatch::with_capacity(128, 320), EventBatch::default());
            let mut new_id = || shard.new_event_id();
            // Parsing never awaits, so the shard's buffers are borrowed only here.
            let mut json = shard.json.borrow_mut();
            validate::parse_events_in(&mut json, body, cred.game, &shard.limits, &mut new_id, &mut events, &mut custom)
                .map_err(IngestError::Body)?;
            if !events.is_empty() {
                parts.push((StreamKind::Events, Records::Events(events)));
            }
            if !custom.is_empty() {
                parts.push((StreamKind::Custom, Records::Events(custom)));
            }
        }
        Endpoint::Payments => {
            let mut payments: Vec<Payment> = Vec::new();
            validate::parse_payments(body, cred.game, &shard.limits, &mut payments).map_err(IngestError::Body)?;
            parts.push((StreamKind::Payments, Records::Payments(payments)));
        }
    }
    let total: usize = parts.iter().map(|(_, r)| r.len()).sum();
    rate_limit(game, total)?;
    let retry_after = shard.config.redis.retry_after_secs;
    if let Some((stream, _)) = parts.iter().find(|(s, _)| !shard.backlog.admits(*s)) {
        return Err(IngestError::BacklogFull { stream: *stream, retry_after });
    }
    let accepted_at_ms = now_ms();
    let mut archives = Vec::with_capacity(parts.len());
    for (stream, records) in parts {
        let count = records.len();
        let archive = batch::encode(&Batch { accepted_at_ms, records })
            .map_err(|_| IngestError::RedisUnavailable { retry_after })?;
        archives.push((stream, count, archive));
    }
    // Counted when queued, in the same order as the backlog readings are queued, so a
    // reading never misses nor double-counts it (an append that fails is over-counted
    // until the next reading: the safe side). Nothing awaits between here and the call.
    let entries: Vec<EntryArgs<'_>> = archives
        .iter()
        .map(|(s, count, a)| EntryArgs {
            stream: s.key(),
            maxlen: shard.backlog.added(*s, *count),
            count: *count,
            archive: a,
        })
        .collect();
    let mut cmd = Vec::with_capacity(archives.iter().map(|(_, _, a)| a.len() + 64).sum::<usize>() + 1024);
    resp::ingest(&mut cmd, &auth::nonce_key(cred.game, cred.nonce), 2 * shard.config.auth.max_skew_secs, &entries);
    let reply = shard.redis.call(cmd).await.map_err(|_| IngestError::RedisUnavailable { retry_after })?;
    match resp::ingest_reply(reply) {
        Ok(IngestReply::Added(ids)) if ids.len() == archives.len() => Ok(total),
        Ok(IngestReply::Replay) => Err(IngestError::ReplayedNonce),
        Ok(IngestReply::Added(_)) | Err(_) => Err(IngestError::RedisUnavailable { retry_after }),
    }
}

fn rate_limit(game: &GameState, events: usize) -> Result<(), IngestError> {
    match &game.bucket {
        None => Ok(()),
        Some(b) => {
            b.borrow_mut().take(events, Instant::now()).map_err(|retry_after| IngestError::RateLimited { retry_after })
        }
    }
}
