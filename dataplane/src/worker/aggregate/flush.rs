//! Merging a shard's touched sketches into Redis, and reading back the merged
//! (all-workers) values.
//!
//! One `EVAL` carries many sketches: for each, `SET {<key>}:merge <value>`,
//! `PFMERGE <key> {<key>}:merge`, `DEL {<key>}:merge`, `EXPIRE <key> <ttl>` — run by Redis
//! as one script, so a worker that dies mid-flush leaves no scratch key and no half
//! merge. Then the keys the aggregate tables need are read (`GET`) with `TIME` in one
//! script: the values and the time are one instant of Redis, and that time is the rows'
//! version (a later read of a key holds at least the registers of an earlier one).

use croupier_protocol::hll::Sketch;
use croupier_protocol::resp::Frame;

use super::sketches::Dirty;
use super::what::Kind;
use crate::redis::connection::RedisClient;
use crate::worker::entries::cmd;

/// The script: `ARGV[1]` merges (keys `KEYS[1..m]`, values and TTLs in `ARGV`), then the
/// values of the remaining keys (nil: no such key, 0: a key of another type) and Redis's
/// time. A key that cannot be merged (not a HyperLogLog) is reported, not fatal.
const SCRIPT: &str = r#"
local m = tonumber(ARGV[1])
local errors = {}
for i = 1, m do
  local key = KEYS[i]
  local scratch = '{' .. key .. '}:merge'
  redis.call('SET', scratch, ARGV[2 * i])
  local r = redis.pcall('PFMERGE', key, scratch)
  redis.call('DEL', scratch)
  if type(r) == 'table' and r.err then
    errors[#errors + 1] = key .. ': ' .. r.err
  else
    redis.call('EXPIRE', key, ARGV[2 * i + 1])
  end
end
local values = {}
for i = m + 1, #KEYS do
  local v = redis.pcall('GET', KEYS[i])
  if type(v) == 'table' and v.err then v = 0
  elseif type(v) ~= 'string' then v = false end
  values[#values + 1] = v
end
local t = redis.call('TIME')
return {values, t, errors}
"#;

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

async fn eval(redis: &RedisClient, keys: &[String], argv: &[&[u8]]) -> Result<(Vec<Value>, u64), String> {
    let nkeys = keys.len().to_string();
    let mut args: Vec<&[u8]> = Vec::with_capacity(3 + keys.len() + argv.len());
    args.extend([b"EVAL".as_slice(), SCRIPT.as_bytes(), nkeys.as_bytes()]);
    args.extend(keys.iter().map(|k| k.as_bytes()));
    args.extend_from_slice(argv);
    let reply = redis.call(cmd(&args)).await.map_err(|e| format!("Redis: {e:?}"))?;
    let (values, version, errors) = parse_reply(reply)?;
    for e in errors {
        tracing::warn!(error = %e, "a HyperLogLog key could not be merged (it holds another type); left as it is");
    }
    Ok((values, version))
}

/// Merges `sketches` into their keys (with their TTLs).
pub async fn merge(redis: &RedisClient, sketches: &[Dirty]) -> Result<(), String> {
    let mut key = String::new();
    for chunk in sketches.chunks(MERGES_PER_CALL) {
        let keys: Vec<String> = chunk
            .iter()
            .map(|d| {
                d.kind.key(&d.game, &d.env, d.period, &mut key);
                key.clone()
            })
            .collect();
        let ttls: Vec<String> = chunk.iter().map(|d| d.kind.ttl_secs().to_string()).collect();
        let count = chunk.len().to_string();
        let mut argv: Vec<&[u8]> = vec![count.as_bytes()];
        for (d, ttl) in chunk.iter().zip(&ttls) {
            argv.push(&d.value);
            argv.push(ttl.as_bytes());
        }
        eval(redis, &keys, &argv).await?;
    }
    Ok(())
}

/// Redis's time (`TIME`), microseconds since the epoch: one clock for every worker.
pub async fn redis_time(redis: &RedisClient) -> Result<u64, String> {
    let reply = redis.call(cmd(&[b"TIME"])).await.map_err(|e| format!("Redis: {e:?}"))?;
    let Frame::Array(t) = reply else { return Err(format!("unexpected reply to TIME: {reply:?}")) };
    let mut t = t.into_iter().filter_map(|f| match f {
        Frame::BulkString(b) | Frame::SimpleString(b) => {
            std::str::from_utf8(&b).ok().and_then(|x| x.parse::<u64>().ok())
        }
        _ => None,
    });
    match (t.next(), t.next()) {
        (Some(s), Some(us)) => Ok(s.saturating_mul(1_000_000).saturating_add(us)),
        _ => Err("TIME without seconds and microseconds".into()),
    }
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
/// for one row); groups are never split between calls.
pub async fn read_back(redis: &RedisClient, groups: &[Vec<Wanted>]) -> Result<Vec<ReadBack>, String> {
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
        let (values, version) = eval(redis, &keys, &[b"0"]).await?;
        for ((w, v), k) in batch.into_iter().zip(values.into_iter().chain(std::iter::repeat(Value::Absent))).zip(&keys)
        {
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
    Ok(out)
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
}
