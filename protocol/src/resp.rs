//! The Redis commands the data plane sends, and the parsing of their replies (with
//! `redis-protocol`).
//!
//! Ingest writes the batch entries of a request, or of a group of requests waiting at
//! once, with one transaction ([`ingest_begin`], [`xadd`], [`ingest_end`]): `MULTI`,
//! plain `XADD`s (`MINID ~`), an `EVAL` of [`INGEST_SCRIPT`], `EXEC`. The script runs right after the appends, inside the
//! transaction: it checks that the stream keys are streams and remembers each request's
//! nonce with its body's digest (`SET NX EX`); when either fails it deletes that request's
//! entries just appended before anything else can run, so a replayed nonce adds nothing, a
//! refused request leaves no trace, and the same request sent again is recognised. The
//! archives are plain `XADD` arguments: they never pass
//! through Lua. The streams' mean events per entry
//! ([`ENTRY_EVENTS`](crate::stream::ENTRY_EVENTS)) are not kept per request: each shard
//! merges its appends into them once per backlog reading
//! ([`merge_means`](crate::stream::merge_means)).

use redis_protocol::resp2::decode;
pub use redis_protocol::resp2::types::OwnedFrame as Frame;

use crate::batch::{Mark, FIELD_BATCH, FIELD_COUNT, FIELD_FORMAT, FIELD_MARK, FORMAT};
use crate::stream::StreamId;

/// The script of the ingest transaction ([`ingest_end`]), run right after its `XADD`s: one request's
/// appends, or several requests' (a *group*: the requests a shard had waiting at once, each
/// with its own nonce, its own entries and its own verdict).
///
/// `KEYS`: per request, its nonce key, then the streams its entries were appended to.
/// `ARGV[1]`: the nonce TTL in seconds; then per request the body's SHA-256, its number of
/// entries, and the [`Mark`] its entries carry. The reply is an array of one verdict per
/// request, in order.
///
/// A request's verdict is `OK` when its nonce was free and is now recorded (its appends
/// stand); the status `DUPLICATE` when the nonce was used by a request with the same body
/// (its entries just appended are deleted again, and the nonce written again, unchanged: a
/// write, so that a `WAIT` after it on any connection covers the first request's append,
/// which came before it in the replication stream); the error `REPLAY` when it was used by
/// another body (its entries deleted); the error of `GET` when the nonce key cannot be read
/// (its entries deleted). A key that is not a stream after the appends is one
/// whose `XADD` failed (it holds another type): every request appending to it has its other
/// entries deleted, its nonce not recorded, and the error `WRONGTYPE`. Any other error of a
/// request's `SET` also deletes its entries and records nothing. Requests are judged in
/// order, so the second of two requests with one nonce in a group is the duplicate or the
/// replay.
///
/// The transaction runs whole, with nothing in between, so the group's entries on a stream
/// are its last ones, in the order of the requests, and no reader ever saw them; the
/// stream's last entries are read back from the first one to delete on (`XREVRANGE`), and
/// of those only an entry carrying the mark of a request taken back is deleted: an `XADD`
/// that failed when run (a stream whose last id is the largest possible one, an ACL changed
/// in between) leaves the places shifted, and the entry at one may then be another
/// request's, even one with the same body and nonce (a duplicate's first copy), or one
/// from before the transaction. Entries older than
/// the MINID are trimmed (`~`: whole nodes), and the shard only ever sends a MINID at or
/// below what the consumer group has acknowledged (`redis::backlog`). Should Redis refuse
/// the script's `XREVRANGE` or `XDEL` (an ACL changed while the connection was up: its
/// set-up checks both), the script stops with an error starting [`TAKE_BACK_REFUSED`]:
/// every request of the transaction is answered 503, and the connection, told by that
/// error, is made again, which its check refuses until the user may take appends back (a
/// replay or a duplicate then stays appended in the transactions in flight on that
/// connection, never silently in the ones after).
///
/// A key of another type met when taking back (`WRONGTYPE`: its `XADD` failed, nothing of
/// it to take back) is passed over.
///
/// Redis hashes a script's text at every `EVAL` (twice inside a transaction: when queued
/// and when run, ~0.5 µs per 100 bytes each time) and sets up the interpreter for it: a
/// group pays that once for all its requests, and the names are short. `k` and `a` walk
/// `KEYS` and `ARGV` a request at a time (`K` its nonce key, `D` its digest, `n` its
/// entries, `e` why one of its streams is not one); `b` holds each stream key's `TYPE`
/// verdict (`false`: a stream), `o` the verdicts, `d` the requests whose entries are taken
/// back (`u`: any). Taking back: `M` holds their marks, `p` lists per stream the request of
/// each of its entries, in order, `m` the first place to take back, and `x` the stream's
/// entries from there on.
pub const INGEST_SCRIPT: &str = "\
local b,o,d,u,k,a={},{},{},false,1,2 \
while a<#ARGV do \
local n,e,K,D=tonumber(ARGV[a+1]),false,KEYS[k],ARGV[a] \
for j=k+1,k+n do \
local s=KEYS[j] \
if b[s]==nil then \
local t=redis.pcall('TYPE',s) \
b[s]=t.ok~='stream' and (t.err or 'WRONGTYPE '..s..' holds a '..tostring(t.ok)) or false \
end \
e=e or b[s] \
end \
local i=#o+1 \
if e then \
o[i],d[i]={err=e},1 \
else \
local r=redis.pcall('SET',K,D,'NX','EX',ARGV[1]) \
if not r then \
d[i]=1 \
local g=redis.pcall('GET',K) \
if g==D then \
redis.call('SET',K,D,'KEEPTTL') \
o[i]={ok='DUPLICATE'} \
elseif type(g)=='table' and g.err then \
o[i]=g \
else \
o[i]={err='REPLAY nonce already used'} \
end \
elseif r.err then \
o[i],d[i]=r,1 \
else \
o[i]=r \
end \
end \
u=u or d[i] \
k,a=k+1+n,a+3 \
end \
if u then \
local p,M,i={},{},0 \
k,a=1,2 \
while a<#ARGV do \
local n=tonumber(ARGV[a+1]) \
i=i+1 \
if d[i] then M[ARGV[a+2]]=1 end \
for j=1,n do \
local s=KEYS[k+j] \
p[s]=p[s] or {} \
table.insert(p[s],i) \
end \
k,a=k+1+n,a+3 \
end \
for s,l in pairs(p) do \
local m=#l+1 \
for q,v in ipairs(l) do \
if d[v] and q<m then m=q end \
end \
local x=m<=#l and redis.pcall('XREVRANGE',s,'+','-','COUNT',#l-m+1) or {} \
if x.err and not x.err:find('WRONGTYPE',1,true) then return redis.error_reply('NOPERM take-back '..x.err) end \
if not x.err then \
for _,y in ipairs(x) do \
local f=y[2] \
for w=1,#f,2 do \
if f[w]=='m' and M[f[w+1]] then \
local r=redis.pcall('XDEL',s,y[1]) \
if type(r)=='table' then return redis.error_reply('NOPERM take-back '..r.err) end \
end \
end \
end \
end \
end \
end \
return o";

/// The start of the ingest script's error when Redis refused it a take-back.
pub const TAKE_BACK_REFUSED: &str = "NOPERM take-back";

const _: () = assert!(
    FORMAT.len() == 5
        && FIELD_FORMAT.len() == 3
        && FIELD_COUNT.len() == 1
        && FIELD_MARK.len() == 1
        && FIELD_BATCH.len() == 5
);

/// A protocol error in a reply (not an error reply, which is a [`Frame::Error`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RespError(pub String);

impl std::fmt::Display for RespError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RESP: {}", self.0)
    }
}

impl std::error::Error for RespError {}

/// Appends one command (an array of bulk strings) to `out`.
///
/// Written here rather than by `redis-protocol`'s encoder, whose frames for a command
/// take an allocation and a pass to size them: a command is `*<n>\r\n` then
/// `$<len>\r\n<bytes>\r\n` per argument, and every ingest request sends four
/// (a test holds this to the crate's encoding).
pub fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.reserve(args.iter().map(|a| a.len() + 25).sum::<usize>() + 23);
    put_len(out, b'*', args.len());
    for a in args {
        put_arg(out, a);
    }
}

/// Appends `<kind><n>\r\n`.
fn put_len(out: &mut Vec<u8>, kind: u8, n: usize) {
    out.push(kind);
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// One batch entry to append.
#[derive(Debug, Clone, Copy)]
pub struct EntryArgs<'a> {
    /// Stream key.
    pub stream: &'a str,
    /// `MINID ~`: entries older than this may be trimmed (`0-0`: none).
    pub minid: StreamId,
    /// Records in the archive.
    pub count: usize,
    /// The rkyv archive.
    pub archive: &'a [u8],
    /// The mark of the request's append.
    pub mark: Mark,
}

/// Appends one `XADD` of `e` (`MINID ~`, an automatic id, the batch entry's fields).
pub fn xadd(out: &mut Vec<u8>, e: &EntryArgs<'_>) {
    out.reserve(e.archive.len() + e.stream.len() + 192);
    put_len(out, b'*', 14);
    for a in [b"XADD".as_slice(), e.stream.as_bytes(), b"MINID", b"~"] {
        put_arg(out, a);
    }
    let (mut ms, mut seq) = (itoa::Buffer::new(), itoa::Buffer::new());
    let (ms, seq) = (ms.format(e.minid.ms).as_bytes(), seq.format(e.minid.seq).as_bytes());
    put_len(out, b'$', ms.len() + 1 + seq.len());
    out.extend_from_slice(ms);
    out.push(b'-');
    out.extend_from_slice(seq);
    out.extend_from_slice(b"\r\n");
    for a in [b"*".as_slice(), FIELD_FORMAT.as_bytes(), FORMAT.as_bytes(), FIELD_COUNT.as_bytes()] {
        put_arg(out, a);
    }
    put_num_arg(out, e.count as u64);
    put_arg(out, FIELD_MARK.as_bytes());
    put_arg(out, e.mark.as_bytes());
    put_arg(out, FIELD_BATCH.as_bytes());
    put_arg(out, e.archive);
}

/// One request's part of an ingest transaction: what the script judges it by.
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    /// The request's nonce key (every key of a transaction in one slot for a cluster).
    pub nonce_key: &'a str,
    /// The body's SHA-256, the nonce's value.
    pub digest: &'a [u8; 32],
    /// Each of its entries' stream, in the order of its `XADD`s.
    pub entries: &'a [EntryMeta<'a>],
    /// The mark its entries carry ([`EntryArgs::mark`]).
    pub mark: Mark,
}

/// What the script needs of one entry appended by an `XADD` of a [`Member`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryMeta<'a> {
    /// Stream key.
    pub stream: &'a str,
}

impl<'a> EntryMeta<'a> {
    /// What the script needs of the entry `e` appends.
    pub fn of(e: &EntryArgs<'a>) -> EntryMeta<'a> {
        EntryMeta { stream: e.stream }
    }
}

/// Appends `MULTI`, which starts an ingest transaction: then come every member's `XADD`s
/// ([`xadd`]), in the order of the members, then [`ingest_end`].
pub fn ingest_begin(out: &mut Vec<u8>) {
    command(out, &[b"MULTI"]);
}

/// Ends the ingest transaction begun by [`ingest_begin`] and the `XADD`s of `members`:
/// one `EVAL` of [`INGEST_SCRIPT`] recording each member's nonce (with its body's
/// SHA-256) for `ttl_secs`, then `EXEC`. Returns the number of replies the whole
/// transaction is owed, read by [`ingest_reply`].
pub fn ingest_end(out: &mut Vec<u8>, ttl_secs: u64, members: &[Member<'_>]) -> usize {
    let entries = members.iter().map(|m| m.entries.len()).sum::<usize>();
    let keys = members.len() + entries;
    // EVAL, the script, numkeys, the keys, the TTL, per member its digest, entry count and
    // mark.
    put_len(out, b'*', 3 + keys + 1 + 3 * members.len());
    put_arg(out, b"EVAL");
    put_arg(out, INGEST_SCRIPT.as_bytes());
    put_num_arg(out, keys as u64);
    for m in members {
        put_arg(out, m.nonce_key.as_bytes());
        for e in m.entries {
            put_arg(out, e.stream.as_bytes());
        }
    }
    put_num_arg(out, ttl_secs);
    for m in members {
        put_arg(out, m.digest);
        put_num_arg(out, m.entries.len() as u64);
        put_arg(out, m.mark.as_bytes());
    }
    command(out, &[b"EXEC"]);
    entries + 3
}

/// Appends one bulk string.
fn put_arg(out: &mut Vec<u8>, a: &[u8]) {
    put_len(out, b'$', a.len());
    out.extend_from_slice(a);
    out.extend_from_slice(b"\r\n");
}

/// Appends a number as a bulk string of its decimal digits.
fn put_num_arg(out: &mut Vec<u8>, n: u64) {
    put_arg(out, itoa::Buffer::new().format(n).as_bytes());
}

/// What the ingest transaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestReply {
    /// The entries were appended, with these IDs.
    Added(Vec<String>),
    /// The nonce had been used before by a request with the same body: this is that
    /// request again, and its entries are already there (nothing was appended).
    Duplicate,
    /// The nonce had been used before by another body; nothing was appended.
    Replay,
    /// The script recorded the nonce, but an `XADD` had failed when run (an error only
    /// the transaction's run can give, such as an ACL changed in between): what failed
    /// is not appended, and the nonce must be given back ([`forget_nonce`]) so that the
    /// request's retry appends.
    AppendFailed(String),
}

/// Deletes the nonce `nonce_key` if it still holds `body_sha256` (after
/// [`IngestReply::AppendFailed`]); replies 1 when it did.
pub fn forget_nonce(out: &mut Vec<u8>, nonce_key: &str, body_sha256: &[u8; 32]) {
    const FORGET: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";
    command(out, &[b"EVAL", FORGET.as_bytes(), b"1", nonce_key.as_bytes(), body_sha256]);
}

/// The items of a transaction's `EXEC` reply, the last of `frames`, when there are
/// `expected` of them: else why it did not run (refused when queued, aborted).
pub fn exec_items(mut frames: Vec<Frame>, expected: usize) -> Result<Vec<Frame>, RespError> {
    match frames.pop() {
        Some(Frame::Array(items)) if items.len() == expected => Ok(items),
        // `EXECABORT` names no cause: the command refused when queued does (`OOM` with
        // Redis's memory full, `NOPERM`, ...), and is what is said first.
        Some(Frame::Error(e)) if e.starts_with("EXECABORT") => {
            match frames.into_iter().find_map(|f| match f {
                Frame::Error(cause) => Some(cause),
                _ => None,
            }) {
                Some(cause) => Err(RespError(format!("{cause} (the transaction was discarded: {e})"))),
                None => Err(RespError(e)),
            }
        }
        Some(Frame::Error(e)) => Err(RespError(e)),
        Some(Frame::Null) => Err(RespError("transaction aborted".into())),
        other => Err(RespError(format!("unexpected EXEC reply {other:?}"))),
    }
}

/// Interprets the replies to the ingest transaction of `members` ([`ingest_end`]): one
/// verdict per member. `Err` for the whole transaction when it did not run (refused when
/// queued, aborted), when a reply is unexpected, or when the script failed as a whole:
/// nothing is known to be appended. A member's own error other than `REPLAY` (such as
/// `WRONGTYPE`) is its `Err`: nothing of it was appended.
///
/// A member judged `DUPLICATE` because an earlier member with the same nonce and body
/// recorded the nonce in this transaction is answered as that one was appended: when that
/// one's `XADD` failed when run ([`IngestReply::AppendFailed`]: its nonce is to be given
/// back, and it is answered 503), the duplicate is an `Err` too, never a claim of entries
/// that are not there.
pub fn ingest_reply(
    frames: Vec<Frame>,
    members: &[Member<'_>],
) -> Result<Vec<Result<IngestReply, RespError>>, RespError> {
    let total = members.iter().map(|m| m.entries.len()).sum::<usize>();
    let mut items = exec_items(frames, total + 1)?;
    let verdicts = match items.pop() {
        Some(Frame::Array(v)) if v.len() == members.len() => v,
        Some(Frame::Error(e)) => return Err(RespError(e)),
        other => return Err(RespError(format!("unexpected script reply {other:?}"))),
    };
    let mut ids = items.into_iter();
    let mut replies: Vec<Result<IngestReply, RespError>> = verdicts
        .into_iter()
        .zip(members)
        .map(|(verdict, m)| member_reply(verdict, ids.by_ref().take(m.entries.len()).collect(), m.entries))
        .collect();
    for (i, m) in members.iter().enumerate() {
        // Only a duplicate looks back, and only at failed appends (the common transaction
        // has neither: no scan of earlier members per member).
        if !matches!(replies.get(i), Some(Ok(IngestReply::Duplicate))) {
            continue;
        }
        let failed_before = members[..i].iter().zip(&replies).any(|(earlier, r)| {
            matches!(r, Ok(IngestReply::AppendFailed(_)))
                && earlier.digest == m.digest
                && earlier.nonce_key == m.nonce_key
        });
        if failed_before {
            if let Some(r) = replies.get_mut(i) {
                *r = Err(RespError("the same request earlier in its transaction was not appended".into()));
            }
        }
    }
    Ok(replies)
}

/// One member's verdict, with the replies to its `XADD`s (to `entries`' streams).
///
/// A `DUPLICATE` whose own `XADD` failed when run is an `Err`, not a duplicate: its first
/// copy went to the same streams, and may have failed the same way in a transaction whose
/// nonce is yet to be given back ([`IngestReply::AppendFailed`] is answered, and its nonce
/// deleted, only after that transaction's reply), so a 202 could claim entries that are
/// not there. Its nonce is left alone: it is the first copy's.
fn member_reply(verdict: Frame, xadds: Vec<Frame>, entries: &[EntryMeta<'_>]) -> Result<IngestReply, RespError> {
    match verdict {
        Frame::SimpleString(s) if s == b"OK" => {}
        Frame::SimpleString(s) if s == b"DUPLICATE" => {
            let failed = xadds.iter().zip(entries).find_map(|(f, e)| match f {
                Frame::Error(err) => Some((err.clone(), e.stream)),
                _ => None,
            });
            return match failed {
                None => Ok(IngestReply::Duplicate),
                Some((err, stream)) => Err(RespError(format!(
                    "{err} (XADD to {stream}): a copy of a request whose first copy may have failed the same way"
                ))),
            };
        }
        Frame::Error(e) if e.starts_with("REPLAY") => return Ok(IngestReply::Replay),
        Frame::Error(e) => return Err(RespError(e)),
        other => return Err(RespError(format!("unexpected script reply {other:?}"))),
    }
    let mut ids = Vec::with_capacity(xadds.len());
    for (i, f) in xadds.into_iter().enumerate() {
        let stream = entries.get(i).map_or("?", |e| e.stream);
        match f {
            Frame::BulkString(b) | Frame::SimpleString(b) => {
                ids.push(String::from_utf8(b).map_err(|_| RespError("entry id is not UTF-8".into()))?)
            }
            Frame::Error(e) => return Ok(IngestReply::AppendFailed(format!("{e} (XADD to {stream})"))),
            other => {
                return Ok(IngestReply::AppendFailed(format!("unexpected reply {other:?} to the XADD to {stream}")))
            }
        }
    }
    Ok(IngestReply::Added(ids))
}

/// State of a consumer group, from `XINFO GROUPS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GroupInfo {
    /// Entries delivered but not acknowledged.
    pub pending: u64,
    /// Entries not yet delivered; `None` when Redis cannot tell (after deletions, or a
    /// negative lag: the group's `entries-read` above the stream's `entries-added`).
    pub lag: Option<u64>,
    /// The last entry delivered to any consumer of the group.
    pub last_delivered: Option<StreamId>,
    /// How many entries of the stream's history the group has read up to
    /// `last_delivered` (its logical position); `None` when Redis cannot tell.
    pub entries_read: Option<u64>,
}

/// Finds `group` in an `XINFO GROUPS` reply. `Ok(None)`: the group does not exist.
pub fn group_info(frame: &Frame, group: &str) -> Result<Option<GroupInfo>, RespError> {
    let groups = match frame {
        Frame::Array(g) => g,
        Frame::Error(e) if e.contains("no such key") => return Ok(None),
        Frame::Error(e) => return Err(RespError(e.clone())),
        other => return Err(RespError(format!("unexpected XINFO reply {other:?}"))),
    };
    for g in groups {
        let Frame::Array(kv) = g else { continue };
        let mut name = None;
        let mut info = GroupInfo::default();
        for pair in kv.chunks(2) {
            let [Frame::BulkString(k) | Frame::SimpleString(k), v] = pair else { continue };
            match (k.as_slice(), v) {
                (b"name", Frame::BulkString(n) | Frame::SimpleString(n)) => name = Some(n.as_slice()),
                (b"pending", Frame::Integer(p)) => info.pending = (*p).max(0) as u64,
                // Negative when `entries-read` is above `entries-added` (set so, or drifted):
                // then Redis cannot tell the lag either.
                (b"lag", Frame::Integer(l)) => info.lag = u64::try_from(*l).ok(),
                (b"last-delivered-id", Frame::BulkString(id) | Frame::SimpleString(id)) => {
                    info.last_delivered = StreamId::parse(id)
                }
                (b"entries-read", Frame::Integer(n)) => info.entries_read = Some((*n).max(0) as u64),
                _ => {}
            }
        }
        if name == Some(group.as_bytes()) {
            return Ok(Some(info));
        }
    }
    Ok(None)
}

/// The reply to [`Partitions::entry_means_command`](crate::cluster::Partitions::entry_means_command):
/// each stream's mean events per entry where one is kept and believed
/// ([`entry_mean`](crate::stream::entry_mean)); an error reply (such as `WRONGTYPE`: the
/// hash holds another type) or another shape is an error.
pub fn entry_means(reply: &Frame) -> Result<[Option<f64>; 3], RespError> {
    let items = match reply {
        Frame::Array(items) => items,
        Frame::Error(e) => return Err(RespError(e.clone())),
        other => return Err(RespError(format!("unexpected HMGET reply {other:?}"))),
    };
    let mut means = [None; 3];
    for (m, item) in means.iter_mut().zip(items) {
        if let Frame::BulkString(v) = item {
            *m = crate::stream::entry_mean(v);
        }
    }
    Ok(means)
}

/// The oldest pending entry from `XPENDING <key> <group> - + 1`: its id and for how
/// long, in milliseconds, it was last delivered (`None`: nothing pending).
pub fn oldest_pending_entry(frame: &Frame) -> Result<Option<(StreamId, u64)>, RespError> {
    match frame {
        Frame::Array(rows) => match rows.first() {
            None => Ok(None),
            Some(Frame::Array(row)) => match (row.first(), row.get(2)) {
                (Some(Frame::BulkString(id) | Frame::SimpleString(id)), Some(Frame::Integer(idle))) => {
                    let id = StreamId::parse(id).ok_or_else(|| RespError("bad pending id".into()))?;
                    Ok(Some((id, (*idle).max(0) as u64)))
                }
                _ => Err(RespError("unexpected XPENDING entry".into())),
            },
            Some(other) => Err(RespError(format!("unexpected XPENDING entry {other:?}"))),
        },
        Frame::Error(e) => Err(RespError(e.clone())),
        other => Err(RespError(format!("unexpected XPENDING reply {other:?}"))),
    }
}

/// The oldest pending id from an `XPENDING <key> <group>` summary (`None`: nothing
/// pending).
pub fn oldest_pending(frame: &Frame) -> Result<Option<StreamId>, RespError> {
    match frame {
        Frame::Array(items) => match items.get(1) {
            Some(Frame::BulkString(id) | Frame::SimpleString(id)) => {
                StreamId::parse(id).map(Some).ok_or_else(|| RespError("bad pending id".into()))
            }
            _ => Ok(None),
        },
        Frame::Error(e) => Err(RespError(e.clone())),
        other => Err(RespError(format!("unexpected XPENDING reply {other:?}"))),
    }
}

/// Deepest nesting of arrays accepted in a reply. The replies Croupier reads nest four
/// levels at most (`XREADGROUP`: streams, entries, entry, fields); a deeper one is a
/// protocol error rather than a recursion that could overflow the stack.
pub const MAX_DEPTH: usize = 32;

/// Longest bulk string accepted in a reply: Redis's own `proto-max-bulk-len` default
/// (512 MiB). A longer declared length is a protocol error, not a wait for bytes that
/// will never come.
pub const MAX_BULK_LEN: usize = 512 << 20;

/// Longest status, error or integer line accepted in a reply. Redis's own lines are short
/// (an error names a command or a script line); an endless one is a protocol error
/// rather than a buffer that grows until the reply deadline.
pub const MAX_LINE_LEN: usize = 64 << 10;

/// The length of the complete reply at the front of `buf`, or `None` while it is
/// incomplete, without building it: bulk payloads are skipped by their declared length,
/// so the cost is per element, not per byte. Arrays nested deeper than [`MAX_DEPTH`] and
/// bulk strings longer than [`MAX_BULK_LEN`] are errors.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, RespError> {
    let mut pos = 0usize;
    // Elements still expected at each open array level.
    let mut pending: u64 = 1;
    let mut stack: Vec<u64> = Vec::new();
    while pending > 0 || !stack.is_empty() {
        if pending == 0 {
            pending = stack.pop().unwrap_or(0);
            continue;
        }
        let Some(kind) = buf.get(pos).copied() else { return Ok(None) };
        let Some(nl) = buf[pos..].windows(2).position(|w| w == b"\r\n") else {
            if buf.len() - pos > MAX_LINE_LEN {
                return Err(RespError(format!("a reply line longer than {MAX_LINE_LEN} bytes")));
            }
            return Ok(None);
        };
        // A line is a type byte and its text: an empty one (`\r\n` where a type byte is
        // due) is not RESP.
        let Some(line) = buf.get(pos + 1..pos + nl) else {
            return Err(RespError("an empty line where a reply was due".into()));
        };
        pos += nl + 2;
        pending -= 1;
        let num = || -> Result<i64, RespError> {
            std::str::from_utf8(line)
                .ok()
                .and_then(|t| t.parse::<i64>().ok())
                .ok_or_else(|| RespError(format!("bad length {:?}", String::from_utf8_lossy(line))))
        };
        match kind {
            b'+' | b'-' | b':' => {}
            b'$' => {
                let n = num()?;
                if n >= 0 {
                    let n = usize::try_from(n).ok().filter(|n| *n <= MAX_BULK_LEN);
                    let n =
                        n.ok_or_else(|| RespError(format!("bulk string of {} bytes", String::from_utf8_lossy(line))))?;
                    pos = pos.checked_add(n + 2).ok_or_else(|| RespError("length overflow".into()))?;
                    if pos > buf.len() {
                        return Ok(None);
                    }
                }
            }
            b'*' => {
                let n = num()?;
                if n > 0 {
                    if stack.len() >= MAX_DEPTH {
                        return Err(RespError(format!("arrays nested deeper than {MAX_DEPTH}")));
                    }
                    stack.push(pending);
                    pending = n as u64;
                }
            }
            other => return Err(RespError(format!("unexpected type byte {other:#x}"))),
        }
    }
    Ok(Some(pos))
}

/// Decodes one reply from the front of `buf`: `Ok(None)` when more bytes are needed,
/// else the frame and how many bytes it took. The reply is measured with [`frame_len`]
/// first, so the (recursive) decoder only ever sees a complete reply of bounded depth.
pub fn decode_reply(buf: &[u8]) -> Result<Option<(Frame, usize)>, RespError> {
    match frame_len(buf)? {
        None => Ok(None),
        Some(len) => decode::decode(&buf[..len]).map_err(|e| RespError(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_marks_its_refused_take_backs() {
        let marked = format!("redis.error_reply('{TAKE_BACK_REFUSED} ");
        assert_eq!(INGEST_SCRIPT.matches(&marked).count(), 2, "XREVRANGE and XDEL");
    }

    #[test]
    fn a_command_is_encoded_as_redis_protocol_encodes_it() {
        use redis_protocol::resp2::{encode, types::BorrowedFrame};
        let long = vec![b'x'; 70_000];
        let binary: Vec<u8> = (0..=255).collect();
        let cases: [&[&[u8]]; 6] = [
            &[b"EXEC"],
            &[b"XLEN", b"analytics:events"],
            &[b"SET", b"k", b"", b"NX"],
            &[b"XADD", b"s", b"*", b"batch", &long],
            &[b"EVAL", INGEST_SCRIPT.as_bytes(), b"2", b"\r\n$3\r\n", &binary],
            &[b"A".as_slice(); 12],
        ];
        for args in cases {
            let frames: Vec<BorrowedFrame<'_>> = args.iter().map(|a| BorrowedFrame::BulkString(a)).collect();
            let frame = BorrowedFrame::Array(&frames);
            let mut want = vec![0; frame.encode_len(false)];
            encode::encode_borrowed(&mut want, &frame, false).expect("sized by encode_len");
            // Appended after what the buffer held, which stays.
            let mut got = b"before".to_vec();
            command(&mut got, args);
            assert_eq!(&got[..6], b"before");
            assert_eq!(got[6..], want[..], "{:?}", args.iter().map(|a| a.len()).collect::<Vec<_>>());
        }
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        command(&mut out, &[b"XLEN", b"analytics:events"]);
        assert_eq!(out, b"*2\r\n$4\r\nXLEN\r\n$16\r\nanalytics:events\r\n");
    }

    /// Every command of `out`, as its arguments.
    fn commands(mut out: &[u8]) -> Vec<Vec<Vec<u8>>> {
        let mut all = Vec::new();
        while !out.is_empty() {
            let (frame, used) = decode_reply(out).expect("decodes").expect("complete");
            out = &out[used..];
            let Frame::Array(items) = frame else { panic!("array") };
            all.push(
                items
                    .into_iter()
                    .map(|f| match f {
                        Frame::BulkString(b) => b,
                        other => panic!("{other:?}"),
                    })
                    .collect(),
            );
        }
        all
    }

    #[test]
    fn ingest_is_a_transaction_of_plain_appends_then_the_script() {
        let mut out = Vec::new();
        let marks = crate::batch::Marks::new(0xfeed);
        let (m1, m2) = (marks.next(), marks.next());
        let e = EntryArgs { stream: "s", minid: StreamId { ms: 10, seq: 1 }, count: 2, archive: b"\x00\r\n", mark: m1 };
        let f = EntryArgs { stream: "c", minid: StreamId::ZERO, count: 7, archive: b"abc", mark: m1 };
        let g = EntryArgs { stream: "s", minid: StreamId::ZERO, count: 12, archive: b"hello", mark: m2 };
        const M1: &[u8] = b"000000000000feed0000000000000000";
        const M2: &[u8] = b"000000000000feed0000000000000001";
        assert_eq!((m1.as_bytes(), m2.as_bytes()), (M1, M2));
        ingest_begin(&mut out);
        for x in [&e, &f, &g] {
            xadd(&mut out, x);
        }
        let (e1, e2) = ([EntryMeta::of(&e), EntryMeta::of(&f)], [EntryMeta::of(&g)]);
        let members = [
            Member { nonce_key: "nk", digest: &[7; 32], entries: &e1, mark: m1 },
            Member { nonce_key: "nk2", digest: &[9; 32], entries: &e2, mark: m2 },
        ];
        let replies = ingest_end(&mut out, 602, &members);
        assert_eq!(replies, 6, "OK, four QUEUED, the EXEC");
        let cmds = commands(&out);
        let v = |x: &[&[u8]]| x.iter().map(|a| a.to_vec()).collect::<Vec<_>>();
        assert_eq!(cmds.len(), 6);
        assert_eq!(cmds[0], v(&[b"MULTI"]));
        assert_eq!(
            cmds[1],
            v(&[
                b"XADD",
                b"s",
                b"MINID",
                b"~",
                b"10-1",
                b"*",
                b"fmt",
                b"rkyv1",
                b"n",
                b"2",
                b"m",
                M1,
                b"batch",
                b"\x00\r\n"
            ])
        );
        assert_eq!(
            cmds[2],
            v(&[b"XADD", b"c", b"MINID", b"~", b"0-0", b"*", b"fmt", b"rkyv1", b"n", b"7", b"m", M1, b"batch", b"abc"])
        );
        assert_eq!(
            cmds[3],
            v(&[
                b"XADD", b"s", b"MINID", b"~", b"0-0", b"*", b"fmt", b"rkyv1", b"n", b"12", b"m", M2, b"batch",
                b"hello"
            ])
        );
        assert_eq!(cmds[4][0], b"EVAL");
        assert_eq!(cmds[4][1], INGEST_SCRIPT.as_bytes());
        // No archive passes through the script. Keys: each member's nonce then its
        // streams; arguments: the TTL, then each member's digest, entry count and mark.
        assert_eq!(
            cmds[4][2..].to_vec(),
            v(&[b"5", b"nk", b"s", b"c", b"nk2", b"s", b"602", &[7; 32], b"2", M1, &[9; 32], b"1", M2])
        );
        assert_eq!(cmds[5], v(&[b"EXEC"]));
    }

    const ONE: [EntryMeta<'static>; 1] = [EntryMeta { stream: "s" }];
    const TWO: [EntryMeta<'static>; 2] = [ONE[0], ONE[0]];

    /// A member appending `entries` under `nonce_key`, with the body `digest`.
    fn member<'a>(nonce_key: &'a str, digest: &'a [u8; 32], entries: &'a [EntryMeta<'a>]) -> Member<'a> {
        Member { nonce_key, digest, entries, mark: crate::batch::Marks::new(1).next() }
    }

    #[test]
    fn replies_are_interpreted() {
        let frames = |wire: &[u8]| {
            let mut rest = wire;
            let mut all = Vec::new();
            while !rest.is_empty() {
                let (f, used) = decode_reply(rest).expect("ok").expect("complete");
                all.push(f);
                rest = &rest[used..];
            }
            all
        };
        let queued = b"+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n".to_vec();
        let with = |exec: &[u8]| frames(&[queued.as_slice(), exec].concat());
        let two = [member("n", &[7; 32], &TWO)];
        let one = |exec: &[u8]| ingest_reply(with(exec), &two).map(|mut v| v.remove(0));
        let ok = b"*3\r\n$3\r\n1-0\r\n$3\r\n2-0\r\n*1\r\n+OK\r\n";
        assert_eq!(one(ok), Ok(Ok(IngestReply::Added(vec!["1-0".into(), "2-0".into()]))));
        let replay = b"*3\r\n$3\r\n1-0\r\n$3\r\n2-0\r\n*1\r\n-REPLAY nonce already used\r\n";
        assert_eq!(one(replay), Ok(Ok(IngestReply::Replay)));
        let dup = b"*3\r\n$3\r\n1-0\r\n$3\r\n2-0\r\n*1\r\n+DUPLICATE\r\n";
        assert_eq!(one(dup), Ok(Ok(IngestReply::Duplicate)));
        // A duplicate whose own append failed when run: not answered as appended.
        let dup_failed = b"*3\r\n$3\r\n1-0\r\n-ERR exhausted\r\n*1\r\n+DUPLICATE\r\n";
        assert!(matches!(one(dup_failed), Ok(Err(RespError(e))) if e.starts_with("ERR exhausted (XADD to s)")));
        // A stream key of another type: its `XADD` failed, the script took the other back.
        let wrong = b"*3\r\n-WRONGTYPE x\r\n$3\r\n2-0\r\n*1\r\n-WRONGTYPE s holds a string\r\n";
        assert_eq!(one(wrong), Ok(Err(RespError("WRONGTYPE s holds a string".into()))));
        // Refused when queued, aborted, short, or the script failed whole: not appended.
        assert!(ingest_reply(frames(b"+OK\r\n-EXECABORT Transaction discarded\r\n"), &two).is_err());
        assert!(ingest_reply(frames(b"*-1\r\n"), &two).is_err());
        assert!(ingest_reply(with(b"*2\r\n$3\r\n1-0\r\n*1\r\n+OK\r\n"), &two).is_err());
        assert!(ingest_reply(with(b"*3\r\n$3\r\n1-0\r\n$3\r\n2-0\r\n-ERR script\r\n"), &two).is_err());
        assert!(ingest_reply(with(b"*3\r\n$3\r\n1-0\r\n$3\r\n2-0\r\n*2\r\n+OK\r\n+OK\r\n"), &two).is_err());
        assert!(ingest_reply(with(b"*3\r\n$3\r\n1-0\r\n$3\r\n2-0\r\n+OK\r\n"), &two).is_err());
        // An `XADD` that failed although the script recorded the nonce: not confirmed.
        assert_eq!(
            one(b"*3\r\n-ERR x\r\n$3\r\n2-0\r\n*1\r\n+OK\r\n"),
            Ok(Ok(IngestReply::AppendFailed("ERR x (XADD to s)".into())))
        );
        // A group: each member's verdict with its own `XADD`s' replies.
        let group = frames(
            &[
                b"+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n".as_slice(),
                b"*5\r\n$3\r\n1-0\r\n$3\r\n2-0\r\n-ERR x\r\n$3\r\n4-0\r\n",
                b"*3\r\n+OK\r\n+OK\r\n-REPLAY nonce already used\r\n",
            ]
            .concat(),
        );
        assert_eq!(
            ingest_reply(
                group,
                &[member("a", &[1; 32], &ONE), member("b", &[1; 32], &TWO), member("c", &[1; 32], &ONE)]
            ),
            Ok(vec![
                Ok(IngestReply::Added(vec!["1-0".into()])),
                Ok(IngestReply::AppendFailed("ERR x (XADD to s)".into())),
                Ok(IngestReply::Replay),
            ])
        );
        assert!(decode_reply(b"*2\r\n$3\r\n1-0\r\n").expect("ok").is_none());
    }

    #[test]
    fn a_duplicate_of_a_failed_append_in_its_transaction_is_not_answered_as_appended() {
        let (a, b) = ([1; 32], [2; 32]);
        let members = [
            member("n1", &a, &ONE),
            member("n2", &b, &ONE),
            member("n1", &a, &ONE),
            member("n2", &b, &ONE),
            member("n1", &b, &ONE),
        ];
        let mut wire = b"+OK\r\n".to_vec();
        wire.extend(b"+QUEUED\r\n".repeat(6));
        wire.extend(b"*6\r\n-ERR x\r\n$3\r\n1-0\r\n$3\r\n2-0\r\n$3\r\n3-0\r\n$3\r\n4-0\r\n");
        wire.extend(b"*5\r\n+OK\r\n+OK\r\n+DUPLICATE\r\n+DUPLICATE\r\n+DUPLICATE\r\n");
        let mut frames = Vec::new();
        let mut rest = wire.as_slice();
        while let Some((f, used)) = decode_reply(rest).expect("RESP") {
            frames.push(f);
            rest = &rest[used..];
        }
        let answers = ingest_reply(frames, &members).expect("ran");
        // The copy of the failed one fails; the copy of the appended one stands, and so
        // does a duplicate of another body (its first was appended by an earlier
        // transaction).
        assert!(answers[2].is_err(), "{:?}", answers[2]);
        assert!(matches!(&answers[3], Ok(IngestReply::Duplicate)));
        assert!(matches!(&answers[4], Ok(IngestReply::Duplicate)));
        assert!(matches!(&answers[0], Ok(IngestReply::AppendFailed(_))));
    }

    #[test]
    fn frame_len_measures_without_parsing() {
        let full = b"*2\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nk\r\n$5\r\nv\r\nab\r\n:7\r\n+OK\r\n";
        let first = full.len() - 5;
        assert_eq!(frame_len(full), Ok(Some(first)));
        for n in 0..first {
            assert_eq!(frame_len(&full[..n]), Ok(None), "prefix {n}");
        }
        assert_eq!(frame_len(b"*-1\r\n"), Ok(Some(5)));
        assert_eq!(frame_len(b"$-1\r\n"), Ok(Some(5)));
        assert_eq!(frame_len(b"*0\r\n"), Ok(Some(4)));
        assert!(frame_len(b"?x\r\n").is_err());
        // Found by fuzzing: a line without a type byte was a slice-index panic.
        assert!(frame_len(b"\r\n").is_err());
        assert!(frame_len(b"*2\r\n:1\r\n\r\n").is_err());
        assert!(decode_reply(b"\r\n").is_err());
        // A line that never ends is refused once it passes the bound, not buffered forever.
        assert!(frame_len(&vec![b'+'; MAX_LINE_LEN + 2]).is_err());
        assert_eq!(frame_len(b"+OK"), Ok(None));
        // Agrees with the full decoder.
        let (_, used) = decode_reply(full).expect("ok").expect("complete");
        assert_eq!(used, first);
    }

    #[test]
    fn hostile2_deeply_nested_reply_is_a_protocol_error() {
        let mut nested = b"*1\r\n".repeat(10_000);
        nested.extend_from_slice(b":1\r\n");
        assert!(frame_len(&nested).is_err());
        assert!(decode_reply(&nested).is_err(), "refused before the recursive decoder");
        // Incomplete but already too deep: refused without waiting for the rest.
        assert!(decode_reply(&nested[..4 * (MAX_DEPTH + 1)]).is_err());
        // The deepest accepted nesting still decodes.
        let mut ok = b"*1\r\n".repeat(MAX_DEPTH);
        ok.extend_from_slice(b":1\r\n");
        assert_eq!(decode_reply(&ok).map(|r| r.map(|(_, used)| used)), Ok(Some(ok.len())));
    }

    #[test]
    fn c4_truncated_huge_bulk_header_is_a_protocol_error() {
        assert!(frame_len(b"$9223372036854775807\r\n").is_err());
        assert!(decode_reply(b"*1\r\n$9223372036854775807\r\n").is_err());
        assert_eq!(frame_len(b"$536870912\r\nab"), Ok(None), "512 MiB is still a length Redis may send");
    }

    #[test]
    fn group_position_and_oldest_pending_are_read() {
        let raw = b"*1\r\n*8\r\n$4\r\nname\r\n$1\r\ng\r\n$17\r\nlast-delivered-id\r\n$4\r\n12-3\r\n\
$12\r\nentries-read\r\n:40\r\n$3\r\nlag\r\n:2\r\n";
        let f = decode_reply(raw).expect("ok").expect("complete").0;
        let g = group_info(&f, "g").expect("ok").expect("group");
        assert_eq!((g.last_delivered, g.entries_read, g.lag), (Some(StreamId { ms: 12, seq: 3 }), Some(40), Some(2)));
        // A negative lag (entries-read set above entries-added) is no lag Redis can tell.
        let raw = b"*1\r\n*4\r\n$4\r\nname\r\n$1\r\ng\r\n$3\r\nlag\r\n:-1500\r\n";
        let f = decode_reply(raw).expect("ok").expect("complete").0;
        assert_eq!(group_info(&f, "g").expect("ok").expect("group").lag, None);
        let summary = decode_reply(b"*4\r\n:2\r\n$3\r\n5-0\r\n$3\r\n9-0\r\n*0\r\n").expect("ok").expect("complete").0;
        assert_eq!(oldest_pending(&summary), Ok(Some(StreamId { ms: 5, seq: 0 })));
        let none = decode_reply(b"*4\r\n:0\r\n$-1\r\n$-1\r\n*-1\r\n").expect("ok").expect("complete").0;
        assert_eq!(oldest_pending(&none), Ok(None));
        let one =
            decode_reply(b"*1\r\n*4\r\n$3\r\n5-1\r\n$1\r\nw\r\n:2500\r\n:1\r\n").expect("ok").expect("complete").0;
        assert_eq!(oldest_pending_entry(&one), Ok(Some((StreamId { ms: 5, seq: 1 }, 2500))));
        let empty = decode_reply(b"*0\r\n").expect("ok").expect("complete").0;
        assert_eq!(oldest_pending_entry(&empty), Ok(None));
        let means = decode_reply(b"*3\r\n$3\r\n2.5\r\n$-1\r\n$3\r\ninf\r\n").expect("ok").expect("complete").0;
        assert_eq!(entry_means(&means), Ok([Some(2.5), None, None]));
        assert!(entry_means(&Frame::Error("WRONGTYPE x".into())).is_err());
        let odd = decode_reply(b"*1\r\n*2\r\n$3\r\n5-1\r\n$1\r\nw\r\n").expect("ok").expect("complete").0;
        assert!(oldest_pending_entry(&odd).is_err());
    }

    #[test]
    fn group_info_finds_the_group() {
        let raw = b"*2\r\n*4\r\n$4\r\nname\r\n$5\r\nother\r\n$7\r\npending\r\n:9\r\n\
*6\r\n$4\r\nname\r\n$17\r\nanalytics-workers\r\n$7\r\npending\r\n:3\r\n$3\r\nlag\r\n:4\r\n";
        let f = decode_reply(raw).expect("ok").expect("complete").0;
        assert_eq!(
            group_info(&f, "analytics-workers"),
            Ok(Some(GroupInfo { pending: 3, lag: Some(4), ..GroupInfo::default() }))
        );
        assert_eq!(group_info(&f, "missing"), Ok(None));
        let nil_lag = decode_reply(b"*1\r\n*4\r\n$4\r\nname\r\n$1\r\ng\r\n$3\r\nlag\r\n$-1\r\n")
            .expect("ok")
            .expect("complete")
            .0;
        assert_eq!(group_info(&nil_lag, "g"), Ok(Some(GroupInfo { pending: 0, lag: None, ..GroupInfo::default() })));
    }
}
