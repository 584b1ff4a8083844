//! The figures merged into Redis but not yet written to the aggregate tables, kept in
//! Redis (`croupier:aggregate:unwritten`, a sorted set), so that a worker starting after
//! one that was killed between merging and writing knows which minutes and days to
//! write — without reading `analytics.events` or `analytics.payments` back.
//!
//! A member names a row: `m:<minute>:<game length>:<game><env>` (a `minute_online`
//! row), `d:<day>:...` (a `daily_users` row) or `r:<day>:...` (a `daily_revenue` row:
//! payments of the day confirmed by ClickHouse). Its score is Redis's `TIME` in
//! microseconds when it was last marked, taken by the script that marks it (so on the
//! set's own server: one clock for every worker).
//!
//! - A shard marks the rows of the sketches it merged **after** the merge and **before**
//!   the entries are acknowledged (and the days of confirmed payments once ClickHouse
//!   confirmed them): marking again moves the score up.
//! - Once a row is written, its member is removed **only if its score is not above the
//!   time of the reading written** (for `daily_revenue`: the time taken before the
//!   computation): a mark made after that reading belongs to a merge the row may lack,
//!   so it stays for the next write (or the next start).
//! - Worker shard 0 reads the set once per start (at most [`READ_AT_START`] members;
//!   members older than 30 days are dropped first) and writes those rows; and every
//!   `aggregate.resend_ms` the rows marked at least that long ago (a worker killed while
//!   the others run: no start comes to write them). Writing a row again is harmless: the
//!   latest reading wins.

use croupier_protocol::resp::Frame;

use super::what::Kind;
use crate::redis::connection::RedisClient;
use crate::worker::entries::cmd;

/// The sorted set's key (one per Redis or cluster: every worker's marks).
pub const KEY: &str = "croupier:aggregate:unwritten";

/// Members read by a starting worker at most.
pub const READ_AT_START: usize = 10_000;

/// Members older than this (microseconds) are dropped at start: their keys (30 days
/// for days, 48 h for minutes) are gone.
const OLDEST_US: u64 = 30 * 86_400 * 1_000_000;

/// `ZADD` of `ARGV` with Redis's time as the score.
const MARK: &str = r#"
local t = redis.call('TIME')
local score = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i = 1, #ARGV, 500 do
  local args = {}
  for j = i, math.min(i + 499, #ARGV) do
    args[#args + 1] = score
    args[#args + 1] = ARGV[j]
  end
  redis.call('ZADD', KEYS[1], unpack(args))
end
return t
"#;

/// `ZREM` of each member `ARGV[2i-1]` whose score is at most `ARGV[2i]`.
const UNMARK: &str = r#"
local n = 0
for i = 1, #ARGV, 2 do
  local s = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if s and tonumber(s) <= tonumber(ARGV[i + 1]) then
    n = n + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return n
"#;

/// Drops members older than 30 days (`ARGV[1]` µs), then returns the oldest `ARGV[2]`
/// members last marked at least `ARGV[3]` µs ago, and Redis's time.
const READ: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%.0f', now - tonumber(ARGV[1])))
local max = string.format('%.0f', now - tonumber(ARGV[3]))
return {redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', max, 'LIMIT', 0, tonumber(ARGV[2])), t}
"#;

/// Redis's `TIME` of the set's server, as a script on the set's key (in a cluster the
/// set's primary answers).
const TIME: &str = "return redis.call('TIME')";

/// Which table a member's row is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Row {
    /// `minute_online` of a minute.
    Minute,
    /// `daily_users` of a day.
    Day,
    /// `daily_revenue` of a day.
    Revenue,
}

impl Row {
    fn tag(self) -> char {
        match self {
            Row::Minute => 'm',
            Row::Day => 'd',
            Row::Revenue => 'r',
        }
    }

    /// The row a sketch of `kind` is a figure of.
    pub fn of(kind: Kind) -> Row {
        if kind.per_minute() {
            Row::Minute
        } else {
            Row::Day
        }
    }
}

/// A row to write: which table, game, environment and period.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Unwritten {
    /// The table.
    pub row: Row,
    /// Game.
    pub game: String,
    /// Environment.
    pub env: String,
    /// Minute or day number.
    pub period: u32,
}

impl Unwritten {
    /// The set's member naming it.
    pub fn member(&self) -> String {
        format!("{}:{}:{}:{}{}", self.row.tag(), self.period, self.game.len(), self.game, self.env)
    }

    /// The row a member names (`None`: not one of ours).
    pub fn parse(member: &[u8]) -> Option<Unwritten> {
        let text = std::str::from_utf8(member).ok()?;
        let mut parts = text.splitn(4, ':');
        let row = match parts.next()? {
            "m" => Row::Minute,
            "d" => Row::Day,
            "r" => Row::Revenue,
            _ => return None,
        };
        let period = parts.next()?.parse::<u32>().ok()?;
        let game_len = parts.next()?.parse::<usize>().ok()?;
        let rest = parts.next()?;
        let (game, env) = (rest.get(..game_len)?, rest.get(game_len..)?);
        Some(Unwritten { row, game: game.to_owned(), env: env.to_owned(), period })
    }
}

fn time_of(f: &Frame) -> Option<u64> {
    let Frame::Array(t) = f else { return None };
    let mut t = t.iter().filter_map(|f| match f {
        Frame::BulkString(b) | Frame::SimpleString(b) => std::str::from_utf8(b).ok()?.parse::<u64>().ok(),
        Frame::Integer(n) => u64::try_from(*n).ok(),
        _ => None,
    });
    Some(t.next()?.saturating_mul(1_000_000).saturating_add(t.next()?))
}

async fn eval(redis: &RedisClient, script: &str, argv: &[&[u8]]) -> Result<Frame, String> {
    let mut args: Vec<&[u8]> = Vec::with_capacity(4 + argv.len());
    args.extend([b"EVAL".as_slice(), script.as_bytes(), b"1", KEY.as_bytes()]);
    args.extend_from_slice(argv);
    match redis.call(cmd(&args)).await {
        Ok(Frame::Error(e)) => Err(format!("Redis: {e}")),
        Ok(f) => Ok(f),
        Err(e) => Err(format!("Redis: {e:?}")),
    }
}

/// Marks `rows` unwritten (after their sketches were merged, before their entries are
/// acknowledged), scored with the set's server's time.
pub async fn mark(redis: &RedisClient, rows: &[Unwritten]) -> Result<(), String> {
    if rows.is_empty() {
        return Ok(());
    }
    let members: Vec<String> = rows.iter().map(Unwritten::member).collect();
    let argv: Vec<&[u8]> = members.iter().map(|m| m.as_bytes()).collect();
    eval(redis, MARK, &argv).await.map(|_| ())
}

/// Removes the members of `written` (a row and the time of the reading written), each
/// only if it was not marked after that time. Returns how many were removed.
pub async fn unmark(redis: &RedisClient, written: &[(Unwritten, u64)]) -> Result<u64, String> {
    let mut removed = 0;
    for chunk in written.chunks(500) {
        let pairs: Vec<(String, String)> = chunk.iter().map(|(u, t)| (u.member(), t.to_string())).collect();
        let argv: Vec<&[u8]> = pairs.iter().flat_map(|(m, t)| [m.as_bytes(), t.as_bytes()]).collect();
        if let Frame::Integer(n) = eval(redis, UNMARK, &argv).await? {
            removed += u64::try_from(n).unwrap_or(0);
        }
    }
    Ok(removed)
}

/// The rows marked unwritten (at most [`READ_AT_START`], oldest marks first; with
/// `min_age`, only those last marked at least that long ago), members older than 30 days
/// dropped first.
pub async fn read(redis: &RedisClient, min_age: Option<std::time::Duration>) -> Result<Vec<Unwritten>, String> {
    let age = min_age.map_or(0, |a| u64::try_from(a.as_micros()).unwrap_or(u64::MAX).min(OLDEST_US));
    let (oldest, most, age) = (OLDEST_US.to_string(), READ_AT_START.to_string(), age.to_string());
    let reply = eval(redis, READ, &[oldest.as_bytes(), most.as_bytes(), age.as_bytes()]).await?;
    let Frame::Array(parts) = reply else { return Err(format!("unexpected reply {reply:?}")) };
    let Some(Frame::Array(members)) = parts.into_iter().next() else {
        return Err("no members in the reply".to_owned());
    };
    Ok(members
        .iter()
        .filter_map(|m| match m {
            Frame::BulkString(b) => Unwritten::parse(b),
            _ => None,
        })
        .collect())
}

/// Redis's time (microseconds since the epoch) on the set's server: the clock of the
/// marks, and of the readings and computations compared with them.
pub async fn time(redis: &RedisClient) -> Result<u64, String> {
    let reply = eval(redis, TIME, &[]).await?;
    time_of(&reply).ok_or_else(|| format!("unexpected reply to TIME: {reply:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_name_their_row_whatever_the_game_and_env_hold() {
        for (row, game, env) in [(Row::Minute, "g1", "prod"), (Row::Day, "a:b", ":c:"), (Row::Revenue, "g", "")] {
            let u = Unwritten { row, game: game.into(), env: env.into(), period: 29_936_000 };
            assert_eq!(Unwritten::parse(u.member().as_bytes()), Some(u));
        }
        assert_eq!(
            Unwritten { row: Row::Day, game: "g1".into(), env: "prod".into(), period: 20_789 }.member(),
            "d:20789:2:g1prod"
        );
        assert_eq!(Unwritten::parse(b"x:1:1:ge"), None);
        assert_eq!(Unwritten::parse(b"d:1:9:ge"), None, "game longer than the rest");
        assert_eq!(Unwritten::parse(b"d:-1:1:ge"), None);
        let t = Frame::Array(vec![Frame::BulkString(b"1796207820".to_vec()), Frame::BulkString(b"123456".to_vec())]);
        assert_eq!(time_of(&t), Some(1_796_207_820_123_456));
    }
}
