//! The `lease` ingest protocol: a request's nonce is leased, then its entries are
//! appended with plain `XADD`s, so the archives never pass through Lua (docs/ingest.md,
//! "Nonce lease and append").
//!
//! Two transactions, each one round trip on the shard's pipelined connection:
//!
//! 1. [`lease`]: `MULTI`, `TYPE` of each target stream, `SET <nonce> P<digest> NX GET EX
//!    <window>` (the nonce reserved for this body, or what it holds already), `SET
//!    <lease> 1 NX PX <lease>` (the right to append, one holder at a time), `PTTL <lease>`,
//!    `EXEC`. Read by [`lease_reply`].
//! 2. Only for the lease holder, [`commit`]: `MULTI`, the `XADD`s, `SET <nonce> <digest>
//!    EX <window>` (done), `PEXPIRE <lease> <hold>`, `EXEC`. Read by [`commit_reply`].
//!    The lease is kept a little longer, not deleted: an `XADD` may fail when the
//!    transaction runs, which marks the nonce done all the same, and until its holder
//!    has read the reply and marked the nonce pending again ([`reopen`]), the lease keeps
//!    another attempt of the request from being told it is done ([`Lease::Done`] needs
//!    the lease free). After a confirmed append the holder gives the lease back
//!    ([`release`]). No script runs (each shard merges its appends into the streams' mean
//!    events per entry once per backlog reading, as with the script:
//!    [`crate::stream::merge_means`]).
//!
//! The nonce's value is the body's SHA-256 once appended, as the `EVAL` of
//! [`crate::resp::INGEST_SCRIPT`] stores it, so either protocol recognises the other's
//! done requests; `P` followed by the digest while the request is pending. The lease key
//! carries the digest, so a replay (another body) never holds up the request's own retry.

use crate::resp::{command, exec_items, xadd, EntryArgs, Frame, RespError};

/// Marks a nonce reserved by a request whose append is not known to be done.
pub const PENDING: u8 = b'P';

/// Where nonce keys begin (`croupier:nonce:<game>:<nonce>`, then a partition's tag).
pub const NONCE_PREFIX: &str = "croupier:nonce:";
/// Where lease keys begin: never where a nonce key does, whatever the nonce.
pub const LEASE_PREFIX: &str = "croupier:lease:";

/// The lease key of a request: its nonce key under [`LEASE_PREFIX`] instead of
/// [`NONCE_PREFIX`] (so its slot, in a cluster: the partition's tag comes along), `:`
/// and the first 8 bytes of its body's digest in hex. No nonce key is a lease key (a
/// nonce may hold `:lease:` and hex: under the nonce key's own prefix, the nonce
/// `n:lease:<hex>` would have named the lease of nonce `n`), and no two requests share
/// one (a fixed-length tail after distinct nonce keys).
pub fn lease_key(nonce_key: &str, digest: &[u8; 32]) -> String {
    let rest = nonce_key.strip_prefix(NONCE_PREFIX).unwrap_or(nonce_key);
    let mut k = String::with_capacity(LEASE_PREFIX.len() + rest.len() + 17);
    k.push_str(LEASE_PREFIX);
    k.push_str(rest);
    k.push(':');
    for b in &digest[..8] {
        k.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        k.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    k
}

/// The pending value of a nonce: [`PENDING`] and the digest.
fn pending(digest: &[u8; 32]) -> [u8; 33] {
    let mut v = [PENDING; 33];
    v[1..].copy_from_slice(digest);
    v
}

/// Appends the first transaction to `out`; returns the number of replies it is owed.
pub fn lease(
    out: &mut Vec<u8>,
    nonce_key: &str,
    lease_key: &str,
    streams: &[&str],
    ttl_secs: u64,
    lease_ms: u64,
    digest: &[u8; 32],
) -> usize {
    let (ttl, ms) = (ttl_secs.to_string(), lease_ms.to_string());
    command(out, &[b"MULTI"]);
    for s in streams {
        command(out, &[b"TYPE", s.as_bytes()]);
    }
    let p = pending(digest);
    command(out, &[b"SET", nonce_key.as_bytes(), &p, b"NX", b"GET", b"EX", ttl.as_bytes()]);
    command(out, &[b"SET", lease_key.as_bytes(), b"1", b"NX", b"PX", ms.as_bytes()]);
    command(out, &[b"PTTL", lease_key.as_bytes()]);
    command(out, &[b"EXEC"]);
    streams.len() + 5
}

/// What the first transaction found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lease {
    /// The nonce is reserved for this body and this request holds the lease: append.
    Held,
    /// The nonce is reserved for this body, but another attempt holds the lease (it may
    /// still append): the client is to retry after `retry_ms`.
    Busy {
        /// The lease's remaining time.
        retry_ms: u64,
    },
    /// The nonce was used by this body, whose entries are there, and no attempt holds the
    /// lease: nothing to append. This transaction took the lease, which the caller gives
    /// back ([`release`]). Done with the lease held is [`Lease::Busy`]: its holder may
    /// have just found an append failed, and be about to mark the nonce pending again.
    Done,
    /// The nonce was used (or is reserved) by another body.
    Replay,
    /// A target stream key holds another type: nothing is appended. `reserved`: the
    /// nonce was reserved by this transaction and `leased`: the lease taken, which the
    /// caller gives back ([`release`]).
    WrongType {
        /// The key's type.
        what: String,
        /// Which of the request's target streams (its place among them).
        place: usize,
        /// This transaction reserved the nonce.
        reserved: bool,
        /// This transaction took the lease.
        leased: bool,
    },
}

/// Reads the replies of [`lease`] for `streams` target streams.
pub fn lease_reply(frames: Vec<Frame>, streams: usize, digest: &[u8; 32]) -> Result<Lease, RespError> {
    let items = exec_items(frames, streams + 3)?;
    let (types, rest) = items.split_at(streams);
    let [reserve, lease, pttl] = rest else { return Err(RespError("short EXEC reply".into())) };
    let reserved = matches!(reserve, Frame::Null);
    let leased = matches!(lease, Frame::SimpleString(s) if s == b"OK");
    for (place, t) in types.iter().enumerate() {
        match t {
            Frame::SimpleString(t) if t == b"stream" || t == b"none" => {}
            Frame::SimpleString(t) => {
                let what = String::from_utf8_lossy(t).into_owned();
                return Ok(Lease::WrongType { what, place, reserved, leased });
            }
            other => return Err(RespError(format!("unexpected TYPE reply {other:?}"))),
        }
    }
    let mine = match reserve {
        Frame::Null => true,
        Frame::BulkString(v) if v.as_slice() == digest.as_slice() && leased => return Ok(Lease::Done),
        Frame::BulkString(v) if v.as_slice() == digest.as_slice() => true,
        Frame::BulkString(v) => v.as_slice() == pending(digest).as_slice(),
        Frame::Error(e) => return Err(RespError(e.clone())),
        other => return Err(RespError(format!("unexpected SET reply {other:?}"))),
    };
    if !mine {
        return Ok(Lease::Replay);
    }
    if leased {
        return Ok(Lease::Held);
    }
    let retry_ms = match pttl {
        Frame::Integer(ms) if *ms > 0 => *ms as u64,
        _ => 0,
    };
    Ok(Lease::Busy { retry_ms })
}

/// Appends the second transaction: the entries, the nonce marked done and the lease kept
/// for `hold_ms` more (time for the holder to read the reply and, should an `XADD` have
/// failed, to mark the nonce pending again). Returns the number of replies it is owed.
#[allow(clippy::too_many_arguments)]
pub fn commit(
    out: &mut Vec<u8>,
    nonce_key: &str,
    lease_key: &str,
    ttl_secs: u64,
    hold_ms: u64,
    digest: &[u8; 32],
    entries: &[EntryArgs<'_>],
) -> usize {
    let (ttl, hold) = (ttl_secs.to_string(), hold_ms.max(1).to_string());
    command(out, &[b"MULTI"]);
    for e in entries {
        xadd(out, e);
    }
    command(out, &[b"SET", nonce_key.as_bytes(), digest, b"EX", ttl.as_bytes()]);
    command(out, &[b"PEXPIRE", lease_key.as_bytes(), hold.as_bytes()]);
    command(out, &[b"EXEC"]);
    entries.len() + 4
}

/// What the second transaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Commit {
    /// Every entry was appended (their ids) and the nonce marked done; the lease is still
    /// held, for the caller to give back ([`release`]).
    Added(Vec<String>),
    /// The transaction did not run (refused when queued, e.g. a redirection or a server
    /// out of memory): nothing was appended, the nonce is still pending and the lease
    /// still held.
    NotRun(String),
    /// It ran, but an `XADD` failed (a stream key of another type, made so after the
    /// lease's check; a stream whose ids are used up): the nonce was marked done all the
    /// same, and the lease is still held: the caller marks the nonce pending again and
    /// gives the lease back ([`reopen`]).
    Failed {
        /// The `XADD`'s error.
        error: String,
        /// Whether the lease was still there when the append ran (its `PEXPIRE` found
        /// it): if not (Redis held the append past the lease), another attempt may have
        /// been told the request is done before the nonce is pending again.
        lease_kept: bool,
    },
}

/// Reads the replies of [`commit`] for `entries` entries.
pub fn commit_reply(frames: Vec<Frame>, entries: usize) -> Commit {
    let items = match exec_items(frames, entries + 2) {
        Ok(items) => items,
        Err(e) => return Commit::NotRun(e.0),
    };
    let lease_kept = !matches!(items.last(), Some(Frame::Integer(0)));
    let failed = |error: String| Commit::Failed { error, lease_kept };
    let mut ids = Vec::with_capacity(entries);
    for f in items.into_iter().take(entries) {
        match f {
            Frame::BulkString(b) | Frame::SimpleString(b) => match String::from_utf8(b) {
                Ok(id) => ids.push(id),
                Err(_) => return failed("entry id is not UTF-8".into()),
            },
            Frame::Error(e) => return failed(e),
            other => return failed(format!("unexpected XADD reply {other:?}")),
        }
    }
    Commit::Added(ids)
}

/// Gives back the lease: after a [`Lease::Done`] or a [`Commit::Added`], or what a
/// [`Lease::WrongType`] took, with the nonce when the transaction reserved it (nobody else
/// can have changed it: only the lease's holder marks it done).
pub fn release(out: &mut Vec<u8>, nonce_key: &str, lease_key: &str, reserved: bool) {
    if reserved {
        command(out, &[b"DEL", lease_key.as_bytes(), nonce_key.as_bytes()]);
    } else {
        command(out, &[b"DEL", lease_key.as_bytes()]);
    }
}

/// Marks the nonce pending again (keeping its expiry) and gives the lease back, after a
/// [`Commit::Failed`]: the request's retry may then append what failed. Two replies.
pub fn reopen(out: &mut Vec<u8>, nonce_key: &str, lease_key: &str, digest: &[u8; 32]) {
    command(out, &[b"SET", nonce_key.as_bytes(), &pending(digest), b"XX", b"KEEPTTL"]);
    command(out, &[b"DEL", lease_key.as_bytes()]);
}

/// Writes the done nonce again, unchanged (keeping its expiry): a write, so that a `WAIT`
/// after it covers the first request's append, which came before it.
pub fn touch_done(out: &mut Vec<u8>, nonce_key: &str, digest: &[u8; 32]) {
    command(out, &[b"SET", nonce_key.as_bytes(), digest, b"XX", b"KEEPTTL"]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp::decode_reply;

    fn frames(bytes: &[u8]) -> Vec<Frame> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let (f, used) = decode_reply(&bytes[at..]).expect("RESP").expect("complete");
            out.push(f);
            at += used;
        }
        out
    }

    fn exec(items: &[u8], n: usize) -> Vec<u8> {
        let mut r = b"+OK\r\n".to_vec();
        for _ in 0..n {
            r.extend_from_slice(b"+QUEUED\r\n");
        }
        r.extend_from_slice(format!("*{}\r\n", n).as_bytes());
        r.extend_from_slice(items);
        r
    }

    #[test]
    fn lease_is_one_transaction() {
        let mut out = Vec::new();
        let n = lease(&mut out, "nk", "nk:lease:07", &["s1", "s2"], 602, 12_000, &[7; 32]);
        let cmds = frames(&out);
        assert_eq!(cmds.len(), n);
        let names: Vec<Vec<u8>> = cmds
            .iter()
            .map(|c| match c {
                Frame::Array(a) => match &a[0] {
                    Frame::BulkString(b) => b.clone(),
                    _ => panic!(),
                },
                _ => panic!(),
            })
            .collect();
        assert_eq!(names, [&b"MULTI"[..], b"TYPE", b"TYPE", b"SET", b"SET", b"PTTL", b"EXEC"].map(|n| n.to_vec()));
        assert_eq!(lease_key("nk", &[0xab; 32]), "croupier:lease:nk:abababababababab");
        // A nonce that spells another request's lease names its own nonce key, not it.
        let digest = [0xab; 32];
        let lease = lease_key("croupier:nonce:g:n:{0.1}", &digest);
        assert_eq!(lease, "croupier:lease:g:n:{0.1}:abababababababab");
        assert_ne!(
            format!("croupier:nonce:g:n:lease:{}", &lease[lease.len() - 16..]),
            lease_key("croupier:nonce:g:n", &digest)
        );
    }

    #[test]
    fn lease_replies_are_read() {
        let d = [7u8; 32];
        let read = |items: &[u8]| lease_reply(frames(&exec(items, 4)), 1, &d);
        assert_eq!(read(b"+stream\r\n$-1\r\n+OK\r\n:12000\r\n"), Ok(Lease::Held));
        let mut done = b"+none\r\n$32\r\n".to_vec();
        done.extend_from_slice(&d);
        done.extend_from_slice(b"\r\n+OK\r\n:12000\r\n");
        assert_eq!(read(&done), Ok(Lease::Done));
        // Done, but the lease held: its holder may be about to mark the nonce pending again.
        let mut done_held = b"+none\r\n$32\r\n".to_vec();
        done_held.extend_from_slice(&d);
        done_held.extend_from_slice(b"\r\n$-1\r\n:900\r\n");
        assert_eq!(read(&done_held), Ok(Lease::Busy { retry_ms: 900 }));
        let mut busy = b"+stream\r\n$33\r\nP".to_vec();
        busy.extend_from_slice(&d);
        busy.extend_from_slice(b"\r\n$-1\r\n:900\r\n");
        assert_eq!(read(&busy), Ok(Lease::Busy { retry_ms: 900 }));
        let mut taken_over = busy.clone();
        let at = taken_over.len() - b"$-1\r\n:900\r\n".len();
        taken_over.truncate(at);
        taken_over.extend_from_slice(b"+OK\r\n:12000\r\n");
        assert_eq!(read(&taken_over), Ok(Lease::Held));
        let mut other = b"+stream\r\n$32\r\n".to_vec();
        other.extend_from_slice(&[8; 32]);
        other.extend_from_slice(b"\r\n+OK\r\n:12000\r\n");
        assert_eq!(read(&other), Ok(Lease::Replay));
        assert_eq!(
            read(b"+string\r\n$-1\r\n+OK\r\n:12000\r\n"),
            Ok(Lease::WrongType { what: "string".into(), place: 0, reserved: true, leased: true })
        );
        assert!(lease_reply(frames(b"+OK\r\n+QUEUED\r\n*-1\r\n"), 1, &d).is_err());
    }

    #[test]
    fn commit_replies_are_read() {
        let mut out = Vec::new();
        let e = EntryArgs {
            stream: "s",
            minid: crate::stream::StreamId { ms: 1, seq: 0 },
            count: 3,
            archive: b"\x00\r\n",
            mark: crate::batch::Marks::new(0).next(),
        };
        let n = commit(&mut out, "nk", "nk:lease:07", 602, 10_000, &[7; 32], &[e]);
        assert_eq!(frames(&out).len(), n);
        let ok = exec(b"$3\r\n1-0\r\n+OK\r\n:1\r\n", 3);
        assert_eq!(commit_reply(frames(&ok), 1), Commit::Added(vec!["1-0".into()]));
        let failed = exec(b"-WRONGTYPE x\r\n+OK\r\n:1\r\n", 3);
        assert_eq!(commit_reply(frames(&failed), 1), Commit::Failed { error: "WRONGTYPE x".into(), lease_kept: true });
        let late = exec(b"-WRONGTYPE x\r\n+OK\r\n:0\r\n", 3);
        assert_eq!(commit_reply(frames(&late), 1), Commit::Failed { error: "WRONGTYPE x".into(), lease_kept: false });
        let aborted = b"+OK\r\n-OOM x\r\n+QUEUED\r\n+QUEUED\r\n-EXECABORT y\r\n";
        assert_eq!(
            commit_reply(frames(aborted), 1),
            Commit::NotRun("OOM x (the transaction was discarded: EXECABORT y)".into())
        );
    }
}
