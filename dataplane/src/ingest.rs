//! The ingest endpoints: a signed batch in, one stream entry per target stream out, and
//! `202 {"accepted":N}` once Redis has acknowledged the append.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use croupier_control::config::{Config, IngestProtocol};

use croupier_control::metrics::{EventsAccepted, EventsRefused, GameIx};
use croupier_protocol::batch::{self, AlignedVec, Batch, BatchError, Records};
use croupier_protocol::envelope::{EventBatch, PaymentBatch};
use croupier_protocol::lease::{self, Commit, Lease};
use croupier_protocol::otlp::Sink;
use croupier_protocol::resp::{self, EntryArgs, Frame, IngestReply};
use croupier_protocol::stream::StreamKind;
use croupier_protocol::validate;

use crate::auth::{self, Credential, CredentialHeaders};
use crate::error::IngestError;
use crate::event_id::IdDeriver;
use crate::http::body::{self, Encoding};
use crate::http::error::HttpError;
use crate::ratelimit::GameRate;
use crate::redis::append_group::Append;
use crate::redis::backlog::Admission;
use crate::redis::connection::{Placement, RedisClient};
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

/// What ingest reads from a request's head, as sent (each value trimmed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestHead<'h> {
    /// `Content-Type`.
    pub content_type: Option<&'h str>,
    /// `Content-Encoding`.
    pub content_encoding: Option<&'h str>,
    /// The credential headers.
    pub credentials: CredentialHeaders<'h>,
}

/// Checks what can be checked from the head alone: media type, encoding, credentials,
/// and that Redis is reachable.
pub fn precheck<'h>(shard: &Shard, head: &IngestHead<'h>) -> Result<(Credential<'h>, Encoding), IngestError> {
    let json = head
        .content_type
        .is_some_and(|ct| ct.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json")));
    if !json {
        return Err(HttpError::UnsupportedMediaType("Content-Type (use application/json)").into());
    }
    let encoding = Encoding::parse(head.content_encoding)?;
    let cred = auth::check_headers(
        &head.credentials,
        |g| shard.games.contains_key(g),
        now_ms() / 1000,
        shard.config.auth.max_skew_secs,
    )?;
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
    wire: &mut [u8],
    scratch: &mut Vec<u8>,
) -> Result<usize, IngestError> {
    let prepared = prepare(shard, endpoint, cred, encoding, wire, scratch);
    crate::http::body::release_inflated(scratch, crate::http::body::INFLATED_KEEP);
    append(shard, cred.game, prepared.map_err(|r| r.counted(shard, cred.game))?).await
}

/// Sends a prepared append and waits for Redis: the number of records once it has them
/// (or had them: the same request again), else why not (the rate taken is given back).
pub(crate) async fn append(shard: &Shard, game_id: &str, prepared: Prepared<'_>) -> Result<usize, IngestError> {
    let Prepared { cmd, entries, parts, records, rate, client_rates, client_taken, game, rejected } = prepared;
    // Nothing appended: what the request took from its rates is given back — but a
    // public write key's and its address's for a duplicate answered 202, which cost Redis
    // an append (the script protocol's, taken back) or a lookup all the same: sent again
    // and again, the same accepted body would otherwise be free.
    let give_back = |duplicate: bool| {
        for r in rate.iter() {
            r.give_back(records);
        }
        for r in client_rates.iter().flatten().filter(|_| !duplicate) {
            r.give_back(client_taken);
        }
    };
    // A refusal counts the records the request carried: a write key's request, those the
    // filters left out too (as its key's and address's rates count them).
    let carried = records.max(client_taken);
    let retry_after = shard.config.redis.retry_after_secs;
    let wanted = shard.config.redis.wait_replicas;
    let partition = cmd.partition();
    let outcome = match cmd {
        Command::Script(cmd) => script_append(shard, cmd, entries).await,
        Command::Lease(l) => lease_append(shard, l, &parts[..entries]).await,
    };
    let not_replicated = |replicas| IngestError::NotReplicated { replicas, wanted, retry_after };
    // Answered 202 as the first time: a replay of an accepted body (one still to be
    // replicated is answered 503 and sent again: that leaves the key as it found it).
    let duplicate = matches!(outcome, Outcome::Duplicate { replicas } if replicas >= wanted);
    // Whether Redis takes appends, for `/readyz` (an unanswered one is judged by its
    // connection's overdue reply instead).
    match outcome {
        Outcome::Added { .. } | Outcome::Duplicate { .. } | Outcome::Replay => {
            shard.redis_health.append_answered(shard.id, true)
        }
        Outcome::Refused => shard.redis_health.append_answered(shard.id, false),
        Outcome::InFlight { .. } | Outcome::Failed => {}
    }
    let result = match outcome {
        Outcome::Added { replicas } => {
            let m = &shard.metrics;
            for (stream, count) in &parts[..entries] {
                shard.backlog.appended(partition, *stream, *count);
                if m.enabled() {
                    m.emit(EventsAccepted { game, stream: *stream, count: *count as u64 });
                }
            }
            if m.enabled() && rejected > 0 {
                m.emit(EventsRefused { game, reason: "invalid_field", count: rejected as u64 });
            }
            // Appended (and counted: the entries will reach the tables), but not on
            // enough replicas in time: also counted refused, as answered (503). The rate
            // was used; the client's retry is a duplicate, answered 202 once replicated.
            if replicas < wanted {
                let e = not_replicated(replicas);
                count_refused(shard, game_id, &e, carried);
                return Err(e);
            }
            return Ok(records);
        }
        // The same request sent again (same nonce, same body): answered as the first time,
        // whose entries are there (the body, and so the count, is the same); nothing was
        // appended, so the game's rate is given back (not a write key's, above). With `wait_replicas`, the nonce was written
        // again, so this connection's `WAIT` covers the first time's append too.
        Outcome::Duplicate { replicas } if replicas < wanted => Err(not_replicated(replicas)),
        Outcome::Duplicate { .. } => Ok(records),
        Outcome::Replay => Err(IngestError::ReplayedNonce),
        Outcome::InFlight { retry_after } => Err(IngestError::RequestInFlight { retry_after }),
        Outcome::Failed | Outcome::Refused => Err(IngestError::RedisUnavailable { retry_after }),
    };
    // Not appended: the rates were not used.
    give_back(duplicate);
    if let Err(e) = &result {
        count_refused(shard, game_id, e, carried);
    }
    result
}

/// What became of an append.
enum Outcome {
    /// Appended, and confirmed by `replicas` replicas (0 when none are asked for).
    Added { replicas: u32 },
    /// The same request was appended before; `replicas` confirmed it.
    Duplicate { replicas: u32 },
    /// The nonce is another body's.
    Replay,
    /// Another attempt of the same request holds the lease.
    InFlight { retry_after: u64 },
    /// Not appended, or not known to be (Redis unreachable, no reply in time, an append
    /// of one stream failing).
    Failed,
    /// Not appended: Redis refused the transaction with an error that refuses every
    /// write for a while ([`REFUSES_WRITES`]): Redis takes no writes (`/readyz`).
    Refused,
}

/// The `script` protocol: a transaction that appends and records the nonce (or takes
/// the appends back, `croupier_protocol::resp::INGEST_SCRIPT`), shared with the other
/// requests waiting at the same time.
async fn script_append(shard: &Shard, t: ScriptCmd, entries: usize) -> Outcome {
    let digest = t.append.digest;
    let (appended, nonce_key) = shard.appends.append(t.partition, t.append).await;
    match appended {
        Ok((Ok(IngestReply::Added(ids)), replicas)) if ids.len() == entries => Outcome::Added { replicas },
        Ok((Ok(IngestReply::Duplicate), replicas)) => Outcome::Duplicate { replicas },
        Ok((Ok(IngestReply::Replay), _)) => Outcome::Replay,
        Ok((Ok(IngestReply::AppendFailed(e)), _)) => {
            // The nonce was recorded although an append failed: given back, so that the
            // retry appends. A stream that refuses every append (its ids used up) fails
            // every request to it: logged with the first word of its error, in a while.
            if first_failure_in_a_while(&e) {
                tracing::warn!(
                    nonce = %nonce_key,
                    error = %e,
                    "an append of the ingest transaction failed when run: its nonce given back, answered 503 \
                     (logged at most every 10 s per error code)"
                );
            }
            let mut cmd = Vec::with_capacity(nonce_key.len() + 160);
            resp::forget_nonce(&mut cmd, &nonce_key, &digest);
            if !matches!(shard.redis.call(cmd).await, Ok(Frame::Integer(_))) {
                // The retry will find the nonce and be answered 202 without what failed.
                // Rare: an append failing when run, then Redis lost.
                tracing::error!(
                    nonce = %nonce_key,
                    "an append failed and its nonce could not be given back: a retry is answered 202 without it"
                );
            }
            Outcome::Failed
        }
        Ok((Err(e), _)) => {
            warn_failed_in_redis(&e.0);
            refused(&e.0)
        }
        Ok((Ok(IngestReply::Added(_)), _)) | Err(_) => Outcome::Failed,
    }
}

/// The `lease` protocol (`croupier_protocol::lease`, docs/ingest.md): the lease
/// transaction, then, for its holder, the append transaction.
async fn lease_append(shard: &Shard, l: LeaseCmds, parts: &[(StreamKind, usize)]) -> Outcome {
    let redis = &shard.redis;
    let config = &shard.config.redis;
    let wanted = config.wait_replicas;
    let asked = Instant::now();
    // The append that follows is counted by the queue bound now: a full queue refuses
    // before a lease is taken.
    let (lease_cmd, reserve) = (l.lease, l.commit.len());
    // Every later command of the request runs where the lease ran, or nowhere
    // (`call_group_on`): on another server (a failover, a restart that lost the lease, a
    // cluster's slot moved) a retry may hold a lease of its own, and both would append.
    let Ok((frames, _, at)) = redis.call_group(lease_cmd, l.lease_replies, reserve, &l.nonce_key, false).await else {
        return Outcome::Failed;
    };
    match lease::lease_reply(frames, parts.len(), &l.digest) {
        Ok(Lease::Held) => {}
        Ok(Lease::Replay) => return Outcome::Replay,
        Ok(Lease::Busy { retry_ms }) => {
            // The attempt holding the lease may finish any moment: the usual retry delay,
            // or the lease's remaining time when that is shorter.
            let secs = retry_ms.div_ceil(1000).min(config.retry_after_secs).max(1);
            return Outcome::InFlight { retry_after: secs };
        }
        Ok(Lease::Done) => {
            // The lease this transaction took is given back (were that lost, it runs out).
            give_back_lease(redis, &at, &l.nonce_key, &l.lease_key);
            if wanted == 0 {
                return Outcome::Duplicate { replicas: 0 };
            }
            // A write of this connection's after the first append, for its `WAIT`.
            let mut cmd = Vec::with_capacity(l.nonce_key.len() + 80);
            lease::touch_done(&mut cmd, &l.nonce_key, &l.digest);
            return match redis.call_group_on(&at, cmd, 1, true).await {
                Ok((frames, replicas)) if matches!(frames.first(), Some(Frame::SimpleString(_))) => {
                    Outcome::Duplicate { replicas }
                }
                _ => Outcome::Failed,
            };
        }
        Ok(Lease::WrongType { place, reserved, leased, .. }) => {
            if let Some((kind, _)) = parts.get(place) {
                crate::redis::connection::warn_not_a_stream(
                    shard.backlog.partitions().stream(l.partition, *kind),
                    None,
                );
            }
            if leased {
                // Held a moment ago: given back, with the nonce when this reserved it.
                let mut cmd = Vec::with_capacity(2 * l.lease_key.len() + 32);
                lease::release(&mut cmd, &l.nonce_key, &l.lease_key, reserved);
                let _ = redis.call_group_on(&at, cmd, 1, false).await;
            }
            return Outcome::Failed;
        }
        Err(e) => {
            warn_failed_in_redis(&e.0);
            return refused(&e.0);
        }
    }
    // The append must run within the lease, which began after `asked`: queued now, it is
    // taken into a pipeline round within a reply timeout (plus the round before's `WAIT`,
    // with `wait_replicas`) or not sent, and the round is written within another or the
    // connection is reset; the lease lasts that, the reply timeout before this point, and
    // two seconds more (`Redis::min_lease_ms`). A lease answered later than one reply
    // timeout is left to run out.
    if asked.elapsed() > Duration::from_millis(config.reply_timeout_ms) {
        return Outcome::Failed;
    }
    // Counted when queued (see `stage`).
    for (stream, count) in parts {
        shard.backlog.count_added(l.partition, *stream, *count);
    }
    match redis.call_group_on(&at, l.commit, l.commit_replies, wanted > 0).await {
        Ok((frames, replicas)) => match lease::commit_reply(frames, parts.len()) {
            Commit::Added(ids) if ids.len() == parts.len() => {
                // Until it is given back (or runs out, at the hold after the append)
                // another attempt of the request is told to retry, not that it is done.
                give_back_lease(redis, &at, &l.nonce_key, &l.lease_key);
                Outcome::Added { replicas }
            }
            // Nothing ran: the lease runs out, and the retry then appends.
            Commit::Added(_) => Outcome::Failed,
            Commit::NotRun(e) => {
                warn_failed_in_redis(&e);
                refused(&e)
            }
            Commit::Failed { error: e, lease_kept } => {
                // The nonce was marked done although an append failed, the lease still
                // held (so no other attempt is told the request is done): the nonce
                // pending again and the lease given back, so that the retry appends. The
                // request's other entries stay appended (Redis does not roll a
                // transaction back, and a worker may have read them already): its retry
                // appends them again, with the same event ids, which ClickHouse keeps once.
                if first_failure_in_a_while(&e) {
                    tracing::warn!(
                        nonce = %l.nonce_key,
                        error = %e,
                        "an append of the transaction failed when run: its nonce pending again, answered 503 \
                         (logged at most every 10 s per error code)"
                    );
                }
                if !lease_kept {
                    // Redis ran the append after the lease had run out: an attempt in
                    // between may have been told the request was done.
                    tracing::error!(
                        nonce = %l.nonce_key,
                        error = %e,
                        "an append failed when run after its lease had run out: a copy sent meanwhile may have been answered 202 without it"
                    );
                }
                let mut cmd = Vec::with_capacity(l.nonce_key.len() + l.lease_key.len() + 96);
                lease::reopen(&mut cmd, &l.nonce_key, &l.lease_key, &l.digest);
                let reopened = redis.call_group_on(&at, cmd, 2, false).await;
                if !matches!(reopened.as_ref().map(|(f, _)| f.first()), Ok(Some(Frame::SimpleString(_) | Frame::Null)))
                {
                    // The retry will find the nonce done and be answered 202: what failed
                    // is not appended. Rare (an XADD failing when run, then Redis lost).
                    tracing::error!(
                        nonce = %l.nonce_key,
                        "an append failed and its nonce could not be marked pending again: a retry is answered 202 without it"
                    );
                }
                Outcome::Failed
            }
        },
        // Unknown: the transaction ran whole or not at all; the lease runs out, and the
        // retry then finds the nonce done, or appends.
        Err(_) => Outcome::Failed,
    }
}

/// Error codes with which Redis refuses every write for a while, whatever the request: out
/// of memory, a replica (read-only), a snapshot that failed (`MISCONF`), too few replicas
/// (`min-replicas-to-write`), a permission the ACL user lacks, a cluster or primary down,
/// a dataset still loading, a script running too long.
const REFUSES_WRITES: [&str; 9] =
    ["OOM", "READONLY", "MISCONF", "NOREPLICAS", "NOPERM", "CLUSTERDOWN", "MASTERDOWN", "LOADING", "BUSY"];

/// What an error reply to a transaction (refused as a whole: it did not run) says: Redis
/// refuses writes ([`REFUSES_WRITES`], for `/readyz`), or something of this request alone
/// (a Redis Cluster's redirection or `TRYAGAIN`, a stream key of another type, a reply
/// not understood), which says nothing of the next.
fn refused(error: &str) -> Outcome {
    let code = error.split_whitespace().next().unwrap_or("");
    if REFUSES_WRITES.contains(&code) {
        Outcome::Refused
    } else {
        Outcome::Failed
    }
}

/// Gives back the lease `lease_key` (of `nonce_key`) where it was taken (`at`), without
/// holding up the answer; a lease not given back runs out.
fn give_back_lease(redis: &RedisClient, at: &Placement, nonce_key: &str, lease_key: &str) {
    let mut release = Vec::with_capacity(lease_key.len() + 32);
    lease::release(&mut release, nonce_key, lease_key, false);
    let (redis, at) = (redis.clone(), at.clone());
    monoio::spawn(async move {
        let _ = redis.call_group_on(&at, release, 1, false).await;
    });
}

/// Logs (at most every 10 s per error code) that Redis answered an ingest request's
/// transaction with an error (a command the ACL user lost, `OOM`, a key of another type,
/// `EXECABORT`): the request is answered 503. A replay or a duplicate is not an error.
fn warn_failed_in_redis(error: &str) {
    if first_failure_in_a_while(error) {
        tracing::warn!(
            error,
            "Redis refused an ingest request's transaction: answered 503 (logged at most every 10 s per error code)"
        );
    }
}

/// Whether no ingest failure with `error`'s code (its first word) was logged in the last
/// 10 s, a transaction's and its requests' alike: a transaction that failed as a whole is
/// logged once, not again for each of its requests.
pub(crate) fn first_failure_in_a_while(error: &str) -> bool {
    let code = error.split_whitespace().next().unwrap_or_default();
    !crate::redis::auth::recently_logged(format!("ingest failed {code}"))
}

/// Counts a refused batch of `records` records (`croupier_events_refused_total`).
pub(crate) fn count_refused(shard: &Shard, game: &str, e: &IngestError, records: usize) {
    let m = &shard.metrics;
    if m.enabled() {
        m.emit(EventsRefused { game: m.layout().game(game), reason: e.tag(), count: records as u64 });
    }
}

/// Why [`prepare`] refused, and how many records the batch held once that was known.
pub(crate) struct Refusal {
    /// Why.
    pub error: IngestError,
    /// Records of the refused batch, when known.
    pub records: Option<usize>,
}

impl From<IngestError> for Refusal {
    fn from(error: IngestError) -> Refusal {
        Refusal { error, records: None }
    }
}

impl Refusal {
    /// Counts the refusal for `game` (`croupier_events_refused_total`; one record when
    /// the batch's size is not known) and gives its error, for the answer.
    pub(crate) fn counted(self, shard: &Shard, game: &str) -> IngestError {
        count_refused(shard, game, &self.error, self.records.unwrap_or(1));
        self.error
    }
}

/// The commands of an append, per `redis.ingest_protocol`.
enum Command {
    /// The transaction that appends and records the nonce.
    Script(ScriptCmd),
    /// The lease and append transactions.
    Lease(LeaseCmds),
}

impl Command {
    /// The partition appended to.
    fn partition(&self) -> usize {
        match self {
            Command::Script(s) => s.partition,
            Command::Lease(l) => l.partition,
        }
    }
}

/// The append of the `script` protocol, sent in a transaction with the other requests
/// waiting at the same time (`redis::append_group`).
struct ScriptCmd {
    append: Append,
    /// The partition appended to.
    partition: usize,
}

/// The two transactions of the `lease` protocol, and what reading their replies needs.
struct LeaseCmds {
    lease: Vec<u8>,
    lease_replies: usize,
    commit: Vec<u8>,
    commit_replies: usize,
    /// The nonce key (tagged with its partition), which routes both in a cluster.
    nonce_key: String,
    lease_key: String,
    partition: usize,
    digest: [u8; 32],
}

/// The append command of an accepted request.
pub(crate) struct Prepared<'s> {
    /// The commands to send.
    cmd: Command,
    /// Stream entries it appends.
    entries: usize,
    /// Each entry's stream and records (the first `entries`).
    parts: [(StreamKind, usize); 3],
    /// Records they hold.
    records: usize,
    /// The game's rate limit, which `records` were taken from.
    rate: Option<&'s GameRate>,
    /// A write key's and a client address's rates (client ingest), which `client_taken`
    /// records were taken from (those the filters left out too), given back with the
    /// game's.
    client_rates: [Option<&'s GameRate>; 2],
    /// What was taken from `client_rates`.
    client_taken: usize,
    /// The game, as counted.
    game: GameIx,
    /// Records of the request refused by validation while the rest is appended (OTLP's
    /// partial success): counted once the append is made, so that a request answered
    /// 503 and sent again, or replayed, counts them once.
    rejected: usize,
}

impl<'s> Prepared<'s> {
    /// The append also gives back, when nothing is appended, the `taken` records it took
    /// from `rates`.
    pub(crate) fn with_client_rates(self, rates: [Option<&'s GameRate>; 2], taken: usize) -> Prepared<'s> {
        Prepared { client_rates: rates, client_taken: taken, ..self }
    }

    /// Notes `rejected` records of the request refused by validation, counted
    /// (`invalid_field`) when the append is made.
    pub(crate) fn with_rejected(self, rejected: usize) -> Prepared<'s> {
        Prepared { rejected, ..self }
    }
}

/// Everything before the round trip to Redis: signature, body, validation, limits, the
/// archives and the command. Nothing here awaits, so the shard's buffers are borrowed only
/// for its length; the command holds its own copy of the archives.
fn prepare<'s>(
    shard: &'s Shard,
    endpoint: Endpoint,
    cred: &Credential<'_>,
    encoding: Encoding,
    wire: &mut [u8],
    scratch: &mut Vec<u8>,
) -> Result<Prepared<'s>, Refusal> {
    let game = shard.games.get(cred.game).ok_or(IngestError::UnknownGame)?;
    let limit = shard.config.server.max_decompressed_bytes;
    // The signature covers the body as sent, and is checked before anything is inflated.
    // Only a game that opted in (`gzip_signed_after`) may sign the decompressed JSON
    // instead, and only for that game is a body inflated before a signature matched
    // (docs/ingest.md).
    // The digest of the signed body identifies the request for retries: it is the
    // nonce's value and the seed of the ids of events sent without one.
    let signed_wire = auth::signed_digest(&game.secret, cred, wire);
    let (body, mut digest): (&mut [u8], [u8; 32]) = match (encoding, signed_wire) {
        (Encoding::Identity, Some(d)) => (wire, d),
        (Encoding::Gzip, Some(d)) => {
            body::gunzip(wire, limit, scratch).map_err(IngestError::from)?;
            (scratch, d)
        }
        (Encoding::Gzip, None) if game.gzip_signed_after => {
            body::gunzip(wire, limit, scratch).map_err(IngestError::from)?;
            let d = auth::signed_digest(&game.secret, cred, scratch).ok_or(IngestError::BadSignature)?;
            (scratch, d)
        }
        (Encoding::Identity | Encoding::Gzip, None) => return Err(IngestError::BadSignature.into()),
    };
    let mut bufs = shard.batches.borrow_mut();
    let b = &mut *bufs;
    b.trim();
    let mut parts = [(StreamKind::Events, 0); 3];
    let n = match endpoint {
        Endpoint::Events => {
            b.events.clear();
            b.custom.clear();
            // Derived from the body: a retried batch gets the same ids (docs/ingest.md).
            let mut ids = IdDeriver::new(&digest, shard.config.server.event_ids);
            let mut new_id = || ids.next_id();
            let mut json = shard.json.borrow_mut();
            validate::parse_events_in(
                &mut json,
                body,
                cred.game,
                &shard.limits,
                &mut new_id,
                &mut b.events,
                &mut b.custom,
            )
            // A record refused counts the batch's records refused.
            .map_err(|e| Refusal { error: IngestError::Body(e), records: json.batch_records() })?;
            let mut n = 0;
            for (kind, len) in [(StreamKind::Events, b.events.len()), (StreamKind::Custom, b.custom.len())] {
                if len > 0 {
                    parts[n] = (kind, len);
                    n += 1;
                }
            }
            n
        }
        Endpoint::Payments => {
            digest = auth::payments_identity(&digest);
            b.payments.clear();
            let mut json = shard.json.borrow_mut();
            validate::parse_payments_in(&mut json, body, cred.game, &shard.limits, &mut b.payments)
                .map_err(|e| Refusal { error: IngestError::Body(e), records: json.batch_records() })?;
            parts[0] = (StreamKind::Payments, b.payments.len());
            1
        }
    };
    stage(shard, b, game, &auth::nonce_key(cred.game, cred.nonce), &digest, parts, n)
}

/// The part of an append common to every ingest surface, once the request's records are
/// in `b` (`parts`: each non-empty stream and its records, the first `n`): admission by
/// the backlogs, the archives, the game's rate, and the `EVAL` recording `nonce_key` with
/// `digest`. Nothing here awaits.
#[allow(clippy::too_many_arguments)]
pub(crate) fn stage<'s>(
    shard: &'s Shard,
    b: &mut IngestBuffers,
    game: &'s GameState,
    nonce_key: &str,
    digest: &[u8; 32],
    parts: [(StreamKind, usize); 3],
    n: usize,
) -> Result<Prepared<'s>, Refusal> {
    let all_parts = parts;
    let parts = &parts[..n];
    let total: usize = parts.iter().map(|(_, len)| len).sum();
    let refuse = |error: IngestError| Refusal { error, records: Some(total) };
    let retry_after = shard.config.redis.retry_after_secs;
    // The partition is the nonce's: the same request sent again finds its nonce there,
    // whichever connection or node it comes through (`cluster::partition_of`).
    let (partition, nonce_key) = shard.backlog.partitions().route(nonce_key);
    for (stream, _) in parts {
        match shard.backlog.admission(partition, *stream) {
            Admission::Open => {}
            Admission::Full => return Err(refuse(IngestError::BacklogFull { stream: *stream, retry_after })),
            // Not read since the last connect (or Redis is gone): not a full backlog.
            Admission::Unknown => return Err(refuse(IngestError::RedisUnavailable { retry_after })),
        }
    }
    let accepted_at_ms = now_ms();
    for (i, (stream, _)) in parts.iter().enumerate() {
        b.encode(i, *stream, accepted_at_ms).map_err(|e| refuse(encode_refusal(e)))?;
    }
    // Taken last, for a request that is otherwise accepted (given back if Redis does not
    // confirm the append, or finds a replay).
    let rate = game.rate.as_deref();
    if let Some(rate) = rate {
        rate.take(total, Instant::now()).map_err(|retry_after| refuse(IngestError::RateLimited { retry_after }))?;
    }
    // The entries are counted for the backlog when their transaction is queued, in the
    // same order as the backlog readings are queued, so a reading never misses nor
    // double-counts them (an append that fails is over-counted until the next reading:
    // the safe side): by the group that sends them (`redis::append_group`), or by the
    // lease protocol right before its append transaction. The `MINID` read now stays
    // safe to send later.
    let protocol = shard.config.redis.ingest_protocol;
    let mark = shard.marks.next();
    let entries: Vec<EntryArgs<'_>> = parts
        .iter()
        .zip(&b.archives)
        .map(|((s, count), archive)| EntryArgs {
            stream: shard.backlog.partitions().stream(partition, *s),
            minid: shard.backlog.trim_point(partition, *s),
            count: *count,
            archive,
            mark,
        })
        .collect();
    // Room for the `XADD`s (~190 bytes besides each archive and its stream key) and, for
    // a request sent alone, the script's `EVAL` and `EXEC` after them.
    let mut cmd = Vec::with_capacity(
        entries.iter().map(|e| e.archive.len() + e.stream.len() + 192).sum::<usize>() + resp::INGEST_SCRIPT.len() + 512,
    );
    let ttl = nonce_ttl_secs(&shard.config);
    let cmd = match protocol {
        IngestProtocol::Script => {
            resp::ingest_begin(&mut cmd);
            let xadds_at = cmd.len();
            for e in &entries {
                resp::xadd(&mut cmd, e);
            }
            let append = Append { cmd, xadds_at, entries: all_parts, len: n, nonce_key, digest: *digest, mark };
            Command::Script(ScriptCmd { append, partition })
        }
        IngestProtocol::Lease => {
            let lease_key = lease::lease_key(&nonce_key, digest);
            let streams: Vec<&str> = entries.iter().map(|e| e.stream).collect();
            let mut first = Vec::with_capacity(256 + lease_key.len() + nonce_key.len());
            let lease_ms = shard.config.redis.lease_ms();
            let lease_replies = lease::lease(&mut first, &nonce_key, &lease_key, &streams, ttl, lease_ms, digest);
            let hold_ms = shard.config.redis.lease_hold_ms();
            let commit_replies = lease::commit(&mut cmd, &nonce_key, &lease_key, ttl, hold_ms, digest, &entries);
            Command::Lease(LeaseCmds {
                lease: first,
                lease_replies,
                commit: cmd,
                commit_replies,
                nonce_key,
                lease_key,
                partition,
                digest: *digest,
            })
        }
    };
    Ok(Prepared {
        cmd,
        entries: n,
        parts: all_parts,
        records: total,
        rate,
        client_rates: [None, None],
        client_taken: 0,
        game: game.metrics,
        rejected: 0,
    })
}

/// How long a nonce is remembered, seconds. A timestamp is fresh while it is within the
/// skew of the clock, whole seconds included: from `ts - skew` to the end of second
/// `ts + skew`. A nonce recorded at the earliest of these must outlive the latest, hence
/// twice the skew and two seconds.
pub(crate) fn nonce_ttl_secs(config: &Config) -> u64 {
    config.auth.max_skew_secs.saturating_mul(2).saturating_add(2)
}

/// One request's record batches and archives, kept by the shard and reused, so a request
/// allocates nothing for them once they have grown.
#[derive(Debug, Default)]
pub struct IngestBuffers {
    events: EventBatch,
    custom: EventBatch,
    payments: PaymentBatch,
    /// One archive per stream entry of the request, in order.
    archives: [AlignedVec; 3],
    /// One OTLP record's `props`.
    props: croupier_protocol::otlp::props::Props,
    /// The OTLP request's log records seen, to number identical ones.
    seen: croupier_protocol::otlp::occurrence::Occurrences,
}

impl IngestBuffers {
    /// The batches emptied, as an OTLP decoder's sink.
    pub(crate) fn otlp_sink(&mut self) -> Sink<'_> {
        self.trim();
        self.events.clear();
        self.custom.clear();
        self.payments.clear();
        Sink {
            events: &mut self.events,
            custom: &mut self.custom,
            payments: &mut self.payments,
            props: &mut self.props,
            seen: &mut self.seen,
        }
    }

    /// Each stream that received records and how many, in stream order (the first of
    /// the three that are set), and how many streams that is.
    pub(crate) fn parts(&self) -> ([(StreamKind, usize); 3], usize) {
        let mut parts = [(StreamKind::Events, 0); 3];
        let mut n = 0;
        for (kind, len) in [
            (StreamKind::Events, self.events.len()),
            (StreamKind::Custom, self.custom.len()),
            (StreamKind::Payments, self.payments.len()),
        ] {
            if len > 0 {
                parts[n] = (kind, len);
                n += 1;
            }
        }
        (parts, n)
    }

    /// Encodes the records for `stream` into archive `i`, keeping both buffers.
    fn encode(&mut self, i: usize, stream: StreamKind, accepted_at_ms: i64) -> Result<(), BatchError> {
        let records = match stream {
            StreamKind::Events => Records::Events(std::mem::take(&mut self.events)),
            StreamKind::Custom => Records::Events(std::mem::take(&mut self.custom)),
            StreamKind::Payments => Records::Payments(self.payments.take()),
        };
        let batch = Batch { accepted_at_ms, records };
        let encoded = batch::encode_into(&batch, std::mem::take(&mut self.archives[i]));
        match (stream, batch.records) {
            (StreamKind::Events, Records::Events(r)) => self.events = r,
            (StreamKind::Custom, Records::Events(r)) => self.custom = r,
            (StreamKind::Payments, Records::Payments(r)) => self.payments.put_back(r),
            _ => {}
        }
        self.archives[i] = encoded?;
        Ok(())
    }

    /// Lets go of buffers that a large request grew past what typical ones need.
    pub(crate) fn trim(&mut self) {
        const KEEP: usize = 1 << 20;
        if self.events.text.capacity() > KEEP {
            self.events = EventBatch::default();
        }
        if self.custom.text.capacity() > KEEP {
            self.custom = EventBatch::default();
        }
        self.props.trim(KEEP);
        if self.payments.retained_bytes() > KEEP {
            self.payments = PaymentBatch::default();
        }
        for a in &mut self.archives {
            if a.capacity() > KEEP {
                *a = AlignedVec::new();
            }
        }
    }
}

/// The answer to a batch that could not be encoded: a fault of the server, not of
/// Redis (a retry would fail the same way).
fn encode_refusal<E>(_: E) -> IngestError {
    IngestError::EncodeFailed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_meeting_a_lease_is_told_to_retry() {
        let e = IngestError::RequestInFlight { retry_after: 2 };
        assert_eq!((e.status(), e.tag(), e.retry_after()), (503, "request_in_flight", Some(2)));
        assert!(e.body().contains(r#""error":"request_in_flight""#), "{}", e.body());
    }

    #[test]
    fn low_encode_failure_is_a_500_not_redis_unavailable() {
        let e = encode_refusal("archive too large");
        assert_eq!((e.status(), e.tag(), e.retry_after()), (500, "encode_failed", None));
    }
}
