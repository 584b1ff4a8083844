//! Merging a shard's touched sketches into Redis, and reading back the merged
//! (all-workers) values.
//!
//! On one Redis, one `EVAL` carries many sketches: for each, `SET <scratch> <value>`,
//! `PFMERGE <key> <scratch>`, `DEL <scratch>`, `EXPIRE <key> <ttl>` — run by Redis as one
//! script, so a worker that dies mid-flush leaves no scratch key and no half merge. Then
//! the keys the aggregate tables need are read (`GET`) with `TIME` in one script: the
//! values and the time are one instant of Redis, and that time is the rows' version (a
//! later read of a key holds at least the registers of an earlier one).
//!
//! In a Redis Cluster (`redis.cluster`) Croupier's key names carry no hash tag, so the
//! keys of one flush lie in many slots: each key gets a script of its own (its scratch
//! key in its slot), all sent at once, each to its slot's primary. The read-back takes
//! the version first — `TIME` of the primary holding [`super::unwritten::KEY`], one clock
//! for every worker — then `GET`s every key, all at once: a reading whose version is
//! later than another's started its reads after that one's `TIME`, so it holds at least
//! what every merge finished before then put in.

use std::sync::OnceLock;

use croupier_protocol::cluster::key_slot;
use croupier_protocol::hll::Sketch;
use croupier_protocol::resp::Frame;

use super::sketches::Dirty;
use super::what::Kind;
use crate::redis::connection::{RedisClient, RedisError};
use crate::worker::entries::cmd;

/// The script: `ARGV[1]` merges (keys `KEYS[1..m]`, their scratch keys `KEYS[m+1..2m]` —
/// declared, so a cluster node in a slot migration answers `ASK`/`MOVED` instead of
/// failing the script on a key it does not hold; value and TTL of each in `ARGV`, with
/// the scratch key's name unused), then the values of the remaining keys (nil: no such key, 0: a key of another
/// type) and Redis's time. A key that cannot be merged (not a HyperLogLog) is reported,
/// not fatal.
const SCRIPT: &str = r#"
local m = tonumber(ARGV[1])
local errors = {}
for i = 1, m do
  local key = KEYS[i]
  local scratch = KEYS[m + i]
  redis.call('SET', scratch, ARGV[3 * i])
  local r = redis.pcall('PFMERGE', key, scratch)
  redis.call('DEL', scratch)
  if type(r) == 'table' and r.err then
    errors[#errors + 1] = key .. ': ' .. r.err
  else
    redis.call('EXPIRE', key, ARGV[3 * i + 1])
  end
end
local values = {}
for i = 2 * m + 1, #KEYS do
  local v = redis.pcall('GET', KEYS[i])
  if type(v) == 'table' and v.err then v = 0
  elseif type(v) ~= 'string' then v = false end
  values[#values + 1] = v
end
local t = redis.call('TIME')
return {values, t, errors}
"#;

/// The environments admission script: `KEYS[1]` is a game's sorted set of environments
/// with real-time keys, scored by the last day one was merged; `ARGV[1]` the most it
/// holds, `ARGV[2]` today (days since the epoch), `ARGV[3]` the days an environment
/// stays unseen before it leaves, then the environments asked for. Each one already in it
/// is admitted (its day raised), a new one while there is room, others refused: `1` or
/// `0` each. (Only commands the documented ACL allows: no `ZCARD`.) The set's expiry only
/// tidies away a game no longer sent (the script bounds its size): one that fails stops
/// nothing. A key that is no sorted set (another tool's, an operator's) is answered with
/// the error's text, not failed: [`admit`] then admits every environment asked for.
const ADMIT_SCRIPT: &str = r#"
local key = KEYS[1]
local cap = tonumber(ARGV[1])
local today = tonumber(ARGV[2])
local keep = tonumber(ARGV[3])
local pruned = redis.pcall('ZREMRANGEBYSCORE', key, '-inf', '(' .. (today - keep))
if type(pruned) == 'table' and pruned.err then
  return pruned.err
end
local n = #redis.call('ZRANGEBYSCORE', key, '-inf', '+inf')
local out = {}
for i = 4, #ARGV do
  local env = ARGV[i]
  if redis.call('ZSCORE', key, env) then
    redis.call('ZADD', key, today, env)
    out[#out + 1] = 1
  elseif n < cap then
    redis.call('ZADD', key, today, env)
    n = n + 1
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
redis.pcall('EXPIRE', key, (keep + 1) * 86400)
return out
"#;

/// The key of a game's environments with real-time keys ([`admit`]).
pub fn envs_key(game: &str) -> String {
    format!("croupier:aggregate:envs:{game}")
}

/// Days an environment stays in its game's set unseen: past the longest TTL of its keys
/// (30 days), none of them is left.
pub const ENV_KEEP_DAYS: u32 = 31;

/// Asks Redis which of `envs` (of `game`) may have real-time keys: those already in the
/// game's set, and new ones while it holds fewer than `cap`; `today` is the day number.
pub async fn admit(
    redis: &RedisClient,
    game: &str,
    envs: &[std::sync::Arc<str>],
    cap: usize,
    today: u32,
) -> Result<Vec<bool>, String> {
    let key = envs_key(game);
    let (cap, today, keep) = (cap.to_string(), today.to_string(), ENV_KEEP_DAYS.to_string());
    let mut args: Vec<&[u8]> = vec![b"EVAL", ADMIT_SCRIPT.as_bytes(), b"1", key.as_bytes()];
    args.extend([cap.as_bytes(), today.as_bytes(), keep.as_bytes()]);
    args.extend(envs.iter().map(|e| e.as_bytes()));
    match redis.call(cmd(&args)).await.map_err(|e| format!("Redis: {e:?}"))? {
        Frame::Array(v) if v.len() == envs.len() => Ok(v.into_iter().map(|f| f == Frame::Integer(1)).collect()),
        // The set cannot be read (it holds another type): every environment is admitted
        // rather than the shard's acknowledgements stopped for good (as a key a merge
        // cannot go into is left, `croupier_realtime_merges_refused_total`); said once in
        // a while.
        Frame::BulkString(e) | Frame::SimpleString(e) => {
            let e = String::from_utf8_lossy(&e).into_owned();
            if !crate::redis::auth::recently_logged(format!("envs set {key}")) {
                tracing::warn!(key = %key, error = %e, "the environments' set of a game cannot be read: its environments are not bounded until it is deleted");
            }
            Ok(vec![true; envs.len()])
        }
        Frame::Error(e) => Err(format!("Redis: {e}")),
        other => Err(format!("unexpected reply to the environments' admission: {other:?}")),
    }
}

/// Sketches merged per script (a dense value is 12 KiB).
const MERGES_PER_CALL: usize = 32;
/// Keys read per script.
const READS_PER_CALL: usize = 64;

/// A key read back: what it is, and its merged sketch (empty when the key is absent).
#[derive(Debug, Clone)]
pub struct ReadBack {
    /// The key's parts.
    pub kind: Kind,
    /// Game.
    pub game: std::sync::Arc<str>,
    /// Environment.
    pub env: std::sync::Arc<str>,
    /// Minute or day number.
    pub period: u32,
    /// Whether it is a figure of the aggregate tables (else read for the live gauges
    /// only: yesterday's new users, for day-1 retention).
    pub table: bool,
    /// The merged sketch; `None` when the key holds something else.
    pub sketch: Option<Sketch>,
    /// Redis's time when it was read, microseconds since the epoch.
    pub version: u64,
}

/// A value read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// No such key.
    Absent,
    /// The key's string.
    Bytes(Vec<u8>),
    /// The key holds another type than a string.
    WrongType,
}

/// What one script call returned: the values read, Redis's time in microseconds, the
/// keys it could not merge.
type Reply = (Vec<Value>, u64, Vec<String>);

fn parse_reply(f: Frame) -> Result<Reply, String> {
    let Frame::Array(parts) = f else {
        return Err(match f {
            Frame::Error(e) => format!("Redis: {e}"),
            other => format!("unexpected reply {other:?}"),
        });
    };
    let mut it = parts.into_iter();
    let values = match it.next() {
        Some(Frame::Array(v)) => v
            .into_iter()
            .map(|x| match x {
                Frame::BulkString(b) => Value::Bytes(b),
                Frame::Integer(_) => Value::WrongType,
                _ => Value::Absent,
            })
            .collect(),
        _ => return Err("script reply without values".into()),
    };
    let text = |f: Frame| match f {
        Frame::BulkString(b) | Frame::SimpleString(b) => String::from_utf8(b).ok(),
        Frame::Integer(n) => Some(n.to_string()),
        _ => None,
    };
    let version = match it.next() {
        Some(Frame::Array(t)) => {
            let mut t = t.into_iter().filter_map(text).filter_map(|x| x.parse::<u64>().ok());
            match (t.next(), t.next()) {
                (Some(s), Some(us)) => s.saturating_mul(1_000_000).saturating_add(us),
                _ => return Err("script reply without TIME".into()),
            }
        }
        _ => return Err("script reply without TIME".into()),
    };
    let errors = match it.next() {
        Some(Frame::Array(e)) => e.into_iter().filter_map(text).collect(),
        _ => Vec::new(),
    };
    Ok((values, version, errors))
}

/// Runs one script: the values it read, Redis's time, and how many keys it could not
/// merge into (each logged).
async fn eval(redis: &RedisClient, keys: &[String], argv: &[&[u8]]) -> Result<(Vec<Value>, u64, u64), String> {
    let reply = redis.call(eval_cmd(keys, argv)).await.map_err(|e| format!("Redis: {e:?}"))?;
    let (values, version, errors) = parse_reply(reply)?;
    Ok((values, version, refused(errors)))
}

/// Logs each key a script could not merge into; how many.
fn refused(errors: Vec<String>) -> u64 {
    for e in &errors {
        tracing::warn!(error = %e, "a HyperLogLog key could not be merged (another type, or not a HyperLogLog); left as it is");
    }
    errors.len() as u64
}

/// For each slot, a hash tag that hashes to it (the smallest number that does), made on
/// first use.
fn slot_tags() -> &'static [u32] {
    static TAGS: OnceLock<Vec<u32>> = OnceLock::new();
    TAGS.get_or_init(|| {
        let mut tags = vec![u32::MAX; usize::from(croupier_protocol::cluster::SLOTS)];
        let mut left = tags.len();
        let mut n = 0u32;
        while left > 0 && n < u32::MAX {
            if let Some(t) = tags.get_mut(usize::from(key_slot(n.to_string().as_bytes()))) {
                if *t == u32::MAX {
                    *t = n;
                    left -= 1;
                }
            }
            n += 1;
        }
        tags
    })
}

/// The scratch key a merge into `key` goes through: `{<key>}:merge`, in `key`'s hash slot
/// (so a cluster runs the script on one node). A key whose own braces would make that
/// another slot (an environment holding `{` or `}`) gets `{<n>}:merge`, `n` a number
/// hashing to its slot.
pub fn scratch_key(key: &str) -> String {
    let scratch = format!("{{{key}}}:merge");
    let slot = key_slot(key.as_bytes());
    if key_slot(scratch.as_bytes()) == slot {
        return scratch;
    }
    match slot_tags().get(usize::from(slot)) {
        Some(n) => format!("{{{n}}}:merge"),
        None => scratch,
    }
}

/// The script's arguments merging `chunk` (whose keys are `keys`): the count, then each
/// one's scratch key, value and TTL.
fn merge_args<'a>(chunk: &'a [Dirty], keys: &[String], texts: &'a mut Vec<String>) -> Vec<&'a [u8]> {
    texts.clear();
    texts.push(chunk.len().to_string());
    for (d, k) in chunk.iter().zip(keys) {
        texts.push(scratch_key(k));
        texts.push(d.kind.ttl_secs().to_string());
    }
    let mut argv: Vec<&[u8]> = vec![texts.first().map_or(b"0".as_slice(), |c| c.as_bytes())];
    for (i, d) in chunk.iter().enumerate() {
        let (scratch, ttl) = (texts.get(1 + 2 * i), texts.get(2 + 2 * i));
        argv.push(scratch.map_or(b"".as_slice(), |x| x.as_bytes()));
        argv.push(&d.value);
        argv.push(ttl.map_or(b"0".as_slice(), |x| x.as_bytes()));
    }
    argv
}

/// The keys of a merge script: the keys merged into, then their scratch keys.
fn with_scratch(mut keys: Vec<String>) -> Vec<String> {
    let scratch: Vec<String> = keys.iter().map(|k| scratch_key(k)).collect();
    keys.extend(scratch);
    keys
}

/// `EVAL` of the script over `keys` with `argv`, encoded.
fn eval_cmd(keys: &[String], argv: &[&[u8]]) -> Vec<u8> {
    let nkeys = keys.len().to_string();
    let mut args: Vec<&[u8]> = Vec::with_capacity(3 + keys.len() + argv.len());
    args.extend([b"EVAL".as_slice(), SCRIPT.as_bytes(), nkeys.as_bytes()]);
    args.extend(keys.iter().map(|k| k.as_bytes()));
    args.extend_from_slice(argv);
    cmd(&args)
}

/// Sends `cmds` at once (pipelined: in a cluster, each to its key's primary) and waits
/// for every reply, in order.
async fn all(redis: &RedisClient, cmds: Vec<Vec<u8>>) -> Vec<Result<Frame, RedisError>> {
    let handles: Vec<_> = cmds
        .into_iter()
        .map(|c| {
            let redis = redis.clone();
            monoio::spawn(async move { redis.call(c).await })
        })
        .collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await);
    }
    out
}

fn keys_of(sketches: &[Dirty]) -> Vec<String> {
    let mut key = String::new();
    sketches
        .iter()
        .map(|d| {
            d.kind.key(&d.game, &d.env, d.period, &mut key);
            key.clone()
        })
        .collect()
}

/// Merges `sketches` into their keys (with their TTLs): on one Redis up to 32 per
/// script; in a cluster one script per key, all sent at once. `Err` when any merge may
/// not have been made (every one is made again: merging again changes nothing); else how
/// many keys Redis refused to merge into (`PFMERGE` failed: a key of another type, or a
/// string that is no HyperLogLog), each logged and left as it is.
pub async fn merge(redis: &RedisClient, sketches: &[Dirty]) -> Result<u64, String> {
    let mut texts = Vec::new();
    let mut refused_keys = 0;
    if !redis.is_cluster() {
        for chunk in sketches.chunks(MERGES_PER_CALL) {
            let keys = keys_of(chunk);
            let argv = merge_args(chunk, &keys, &mut texts);
            refused_keys += eval(redis, &with_scratch(keys), &argv).await?.2;
        }
        return Ok(refused_keys);
    }
    let mut cmds = Vec::with_capacity(sketches.len());
    for (one, key) in sketches.chunks(1).zip(keys_of(sketches)) {
        let keys = [key];
        let argv = merge_args(one, &keys, &mut texts);
        cmds.push(eval_cmd(&with_scratch(keys.to_vec()), &argv));
    }
    let mut failed = None;
    for reply in all(redis, cmds).await {
        let parsed = reply.map_err(|e| format!("Redis: {e:?}")).and_then(parse_reply);
        match parsed {
            Ok((_, _, errors)) => refused_keys += refused(errors),
            Err(e) => failed = Some(e),
        }
    }
    failed.map_or(Ok(refused_keys), Err)
}

/// One key to read back.
#[derive(Debug, Clone)]
pub struct Wanted {
    /// What it counts.
    pub kind: Kind,
    /// Game.
    pub game: std::sync::Arc<str>,
    /// Environment.
    pub env: std::sync::Arc<str>,
    /// Minute or day number.
    pub period: u32,
    /// Whether it is a figure of the aggregate tables.
    pub table: bool,
}

/// Reads `wanted` keys back, in groups that must be read at one instant (a day's keys
/// for one row): on one Redis groups are never split between scripts; in a cluster
/// every key is read at once after the version is taken (the module's comment).
pub async fn read_back(redis: &RedisClient, groups: &[Vec<Wanted>]) -> Result<Vec<ReadBack>, String> {
    if redis.is_cluster() {
        return read_back_cluster(redis, groups).await;
    }
    let mut out = Vec::new();
    let mut i = 0;
    let mut key = String::new();
    while i < groups.len() {
        let mut batch: Vec<&Wanted> = Vec::new();
        while i < groups.len() && (batch.is_empty() || batch.len() + groups[i].len() <= READS_PER_CALL) {
            batch.extend(groups[i].iter());
            i += 1;
        }
        let keys: Vec<String> = batch
            .iter()
            .map(|w| {
                w.kind.key(&w.game, &w.env, w.period, &mut key);
                key.clone()
            })
            .collect();
        let (values, version, _) = eval(redis, &keys, &[b"0"]).await?;
        read_values(&mut out, batch, values, &keys, version);
    }
    Ok(out)
}

/// [`read_back`] in a cluster: the version (`TIME` of the unwritten set's primary), then
/// a `GET` of every key, sent at once.
async fn read_back_cluster(redis: &RedisClient, groups: &[Vec<Wanted>]) -> Result<Vec<ReadBack>, String> {
    let wanted: Vec<&Wanted> = groups.iter().flatten().collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let version = super::unwritten::time(redis).await?;
    let mut key = String::new();
    let keys: Vec<String> = wanted
        .iter()
        .map(|w| {
            w.kind.key(&w.game, &w.env, w.period, &mut key);
            key.clone()
        })
        .collect();
    let cmds = keys.iter().map(|k| cmd(&[b"GET".as_slice(), k.as_bytes()])).collect();
    let mut values = Vec::with_capacity(keys.len());
    for reply in all(redis, cmds).await {
        values.push(match reply {
            Ok(Frame::BulkString(b)) => Value::Bytes(b),
            Ok(Frame::Error(e)) if e.starts_with("WRONGTYPE") => Value::WrongType,
            Ok(Frame::Error(e)) => return Err(format!("Redis: {e}")),
            Ok(Frame::Null) => Value::Absent,
            Ok(other) => return Err(format!("unexpected reply to GET: {other:?}")),
            Err(e) => return Err(format!("Redis: {e:?}")),
        });
    }
    let mut out = Vec::with_capacity(keys.len());
    read_values(&mut out, wanted, values, &keys, version);
    Ok(out)
}

/// Appends the sketches of `values` read for `batch` (keys `keys`) at `version`.
fn read_values(out: &mut Vec<ReadBack>, batch: Vec<&Wanted>, values: Vec<Value>, keys: &[String], version: u64) {
    for ((w, v), k) in batch.into_iter().zip(values.into_iter().chain(std::iter::repeat(Value::Absent))).zip(keys) {
        let sketch = match v {
            Value::Absent => Some(Sketch::new()),
            Value::WrongType => {
                // Not a figure of 0: no figure (the table keeps its last one).
                tracing::warn!(key = %k, "a HyperLogLog key holds another type; its figure is not written");
                None
            }
            Value::Bytes(bytes) => match Sketch::from_redis(&bytes) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(kind = w.kind.prefix(), game = %w.game, env = %w.env, error = %e, "a HyperLogLog key holds a malformed value");
                    None
                }
            },
        };
        out.push(ReadBack {
            kind: w.kind,
            game: w.game.clone(),
            env: w.env.clone(),
            period: w.period,
            table: w.table,
            sketch,
            version,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_with_nil_values_and_errors() {
        let f = Frame::Array(vec![
            Frame::Array(vec![Frame::BulkString(b"x".to_vec()), Frame::Null, Frame::Integer(0)]),
            Frame::Array(vec![Frame::BulkString(b"1796207820".to_vec()), Frame::BulkString(b"123456".to_vec())]),
            Frame::Array(vec![Frame::BulkString(b"k: WRONGTYPE".to_vec())]),
        ]);
        let (v, t, e) = parse_reply(f).expect("parses");
        assert_eq!(v, vec![Value::Bytes(b"x".to_vec()), Value::Absent, Value::WrongType]);
        assert_eq!(t, 1_796_207_820_123_456);
        assert_eq!(e, vec!["k: WRONGTYPE".to_owned()]);
        assert!(parse_reply(Frame::Error("NOSCRIPT".into())).is_err());
    }

    #[test]
    fn merge_scripts_declare_their_scratch_keys() {
        let keys = with_scratch(vec!["hll:dau:g1:prod:2026-12-02".into()]);
        assert_eq!(keys, ["hll:dau:g1:prod:2026-12-02", "{hll:dau:g1:prod:2026-12-02}:merge"]);
        assert!(SCRIPT.contains("local scratch = KEYS[m + i]") && !SCRIPT.contains("ARGV[3 * i - 1]"));
    }

    #[test]
    fn scratch_keys_share_their_keys_slot() {
        let plain = "hll:dau:g1:prod:2026-12-02";
        assert_eq!(scratch_key(plain), "{hll:dau:g1:prod:2026-12-02}:merge");
        for key in [plain, "hll:dau:g1:{x}:2026-12-02", "hll:dau:g1:a}b:2026-12-02", "hll:dau:g1:{}:2026-12-02"] {
            assert_eq!(key_slot(scratch_key(key).as_bytes()), key_slot(key.as_bytes()), "{key}");
        }
        assert!(slot_tags().iter().all(|t| *t != u32::MAX), "every slot has a tag");
    }
}
