//! Several requests' appends in one ingest transaction (`redis.ingest_protocol =
//! "script"`, `redis.ingest_group_max`): the transaction `croupier_protocol::resp` writes
//! (`ingest_begin`, `xadd`, `ingest_end`), run by a real redis-server, judges each request
//! on its own; and through the server, requests sent at once (duplicates and replays
//! among them) are each answered as alone, with one append per nonce.

use std::sync::{Arc, Barrier};

use croupier_control::config::Driver;
use croupier_it::http::{fresh_nonce, now_secs, signed_headers};
use croupier_it::redis::{xrange, RedisClient, RedisServer};
use croupier_protocol::batch::{Mark, Marks};
use croupier_protocol::resp::{self, EntryArgs, EntryMeta, Frame, IngestReply, Member, RespError};
use croupier_protocol::stream::StreamId;

use crate::fixture::{events, xlen, Fixture, GAME, SECRET};

/// One request of a group: its nonce, digest and entries (stream, count, archive).
struct Req {
    nonce: &'static str,
    digest: [u8; 32],
    entries: Vec<(&'static str, usize, Vec<u8>)>,
}

/// Runs `reqs` as one transaction; the verdicts.
fn run(c: &mut RedisClient, reqs: &[Req]) -> Vec<Result<IngestReply, RespError>> {
    let mut cmd = Vec::new();
    let marks = Marks::new(fastrand::u64(..));
    let marks: Vec<Mark> = reqs.iter().map(|_| marks.next()).collect();
    resp::ingest_begin(&mut cmd);
    let metas: Vec<Vec<EntryMeta<'_>>> = reqs
        .iter()
        .zip(&marks)
        .map(|(r, &mark)| {
            r.entries
                .iter()
                .map(|(stream, count, archive)| {
                    let e = EntryArgs { stream, minid: StreamId::ZERO, count: *count, archive, mark };
                    resp::xadd(&mut cmd, &e);
                    EntryMeta::of(&e)
                })
                .collect()
        })
        .collect();
    let members: Vec<Member<'_>> = reqs
        .iter()
        .zip(&metas)
        .zip(&marks)
        .map(|((r, entries), &mark)| Member { nonce_key: r.nonce, digest: &r.digest, entries, mark })
        .collect();
    let replies = resp::ingest_end(&mut cmd, 602, &members);
    c.send(&cmd).expect("send");
    let frames = c.replies(replies).expect("replies");
    resp::ingest_reply(frames, &members).expect("the transaction ran")
}

/// The `batch` of every entry of `key`, oldest first.
fn batches(c: &mut RedisClient, key: &str) -> Vec<Vec<u8>> {
    xrange(c, key).iter().map(|e| e.get("batch").expect("batch").to_vec()).collect()
}

fn added(v: &Result<IngestReply, RespError>, n: usize) -> bool {
    matches!(v, Ok(IngestReply::Added(ids)) if ids.len() == n)
}

#[test]
fn a_group_judges_each_request_on_its_own() {
    let redis = RedisServer::start();
    let mut c = redis.client();
    // A nonce used before, by another transaction.
    let old = [1; 32];
    run(&mut c, &[Req { nonce: "n:old", digest: old, entries: vec![("ev", 1, b"old".to_vec())] }]);
    let reqs = [
        // Fresh, two streams.
        Req { nonce: "n:a", digest: [2; 32], entries: vec![("ev", 3, b"a-ev".to_vec()), ("cu", 1, b"a-cu".to_vec())] },
        // A replay of the old nonce (another body), between fresh ones.
        Req { nonce: "n:old", digest: [3; 32], entries: vec![("ev", 4, b"replayed".to_vec())] },
        // Fresh.
        Req { nonce: "n:b", digest: [4; 32], entries: vec![("ev", 2, b"b-ev".to_vec())] },
        // The first request again in the same group (same nonce, same body).
        Req { nonce: "n:a", digest: [2; 32], entries: vec![("ev", 3, b"a-ev".to_vec()), ("cu", 1, b"a-cu".to_vec())] },
        // The second fresh one's nonce with another body, same sizes as its entry.
        Req { nonce: "n:b", digest: [5; 32], entries: vec![("ev", 2, b"b-xx".to_vec())] },
        // Fresh, last.
        Req { nonce: "n:c", digest: [6; 32], entries: vec![("cu", 7, b"c-cu".to_vec())] },
    ];
    let v = run(&mut c, &reqs);
    assert_eq!(v.len(), 6);
    assert!(added(&v[0], 2), "{:?}", v[0]);
    // The ids each accepted request is told are its entries', which stay.
    let ids = |key: &str, c: &mut RedisClient| xrange(c, key).into_iter().map(|e| e.id).collect::<Vec<_>>();
    let (ev, cu) = (ids("ev", &mut c), ids("cu", &mut c));
    assert_eq!(v[0], Ok(IngestReply::Added(vec![ev[1].clone(), cu[0].clone()])));
    assert_eq!(v[2], Ok(IngestReply::Added(vec![ev[2].clone()])));
    assert_eq!(v[5], Ok(IngestReply::Added(vec![cu[1].clone()])));
    assert_eq!(v[1], Ok(IngestReply::Replay));
    assert!(added(&v[2], 1), "{:?}", v[2]);
    assert_eq!(v[3], Ok(IngestReply::Duplicate));
    assert_eq!(v[4], Ok(IngestReply::Replay));
    assert!(added(&v[5], 1), "{:?}", v[5]);
    // Exactly the accepted requests' entries, in order: the taken-back ones were the
    // ones with their own marks, not a neighbour of the same sizes.
    assert_eq!(batches(&mut c, "ev"), [b"old".to_vec(), b"a-ev".to_vec(), b"b-ev".to_vec()]);
    assert_eq!(batches(&mut c, "cu"), [b"a-cu".to_vec(), b"c-cu".to_vec()]);
    // Each nonce holds its first body's digest.
    for (nonce, digest) in [("n:old", old), ("n:a", [2; 32]), ("n:b", [4; 32]), ("n:c", [6; 32])] {
        assert_eq!(c.cmd(&["GET", nonce]), Frame::BulkString(digest.to_vec()), "{nonce}");
    }
}

#[test]
fn a_stream_of_another_type_fails_only_the_requests_appending_to_it() {
    let redis = RedisServer::start();
    let mut c = redis.client();
    c.cmd(&["SET", "cu", "not a stream"]);
    let reqs = [
        Req { nonce: "n:a", digest: [2; 32], entries: vec![("ev", 3, b"a-ev".to_vec())] },
        Req { nonce: "n:b", digest: [3; 32], entries: vec![("ev", 5, b"b-ev".to_vec()), ("cu", 1, b"b-cu".to_vec())] },
        Req { nonce: "n:c", digest: [4; 32], entries: vec![("ev", 6, b"c-ev".to_vec())] },
    ];
    let v = run(&mut c, &reqs);
    assert!(added(&v[0], 1), "{:?}", v[0]);
    assert!(matches!(&v[1], Err(RespError(e)) if e.starts_with("WRONGTYPE")), "{:?}", v[1]);
    assert!(added(&v[2], 1), "{:?}", v[2]);
    // The failed request's other entry is taken back, its nonce not used up.
    assert_eq!(batches(&mut c, "ev"), [b"a-ev".to_vec(), b"c-ev".to_vec()]);
    assert_eq!(c.int(&["EXISTS", "n:b"]), 0);
    assert_eq!(c.int(&["EXISTS", "n:a"]) + c.int(&["EXISTS", "n:c"]), 2);
}

#[test]
fn a_nonce_key_that_cannot_be_read_fails_its_request_and_takes_its_entries_back() {
    let redis = RedisServer::start();
    let mut c = redis.client();
    // Someone wrote a hash at a nonce key: `SET NX` finds it taken, `GET` fails.
    c.cmd(&["HSET", "n:h", "f", "v"]);
    let reqs = [
        Req { nonce: "n:a", digest: [2; 32], entries: vec![("ev", 3, b"a-ev".to_vec())] },
        Req { nonce: "n:h", digest: [3; 32], entries: vec![("ev", 5, b"h-ev".to_vec())] },
        Req { nonce: "n:c", digest: [4; 32], entries: vec![("ev", 6, b"c-ev".to_vec())] },
    ];
    let v = run(&mut c, &reqs);
    assert!(added(&v[0], 1) && added(&v[2], 1), "{v:?}");
    assert!(matches!(&v[1], Err(RespError(e)) if e.starts_with("WRONGTYPE")), "an error, not a replay: {:?}", v[1]);
    assert_eq!(batches(&mut c, "ev"), [b"a-ev".to_vec(), b"c-ev".to_vec()]);
}

#[test]
fn an_append_that_fails_when_run_never_takes_back_another_requests_entry() {
    // A stream whose ids are used up: every `XADD` to it fails when the transaction runs,
    // so the entries the script reads back from a take-back's place are older ones.
    let redis = RedisServer::start();
    let mut c = redis.client();
    let a = Req { nonce: "n:a", digest: [2; 32], entries: vec![("ev", 3, b"a-ev".to_vec())] };
    let b = Req { nonce: "n:b", digest: [3; 32], entries: vec![("ev", 3, b"b-ev".to_vec())] };
    let v = run(&mut c, &[a, b]);
    assert!(added(&v[0], 1) && added(&v[1], 1), "{v:?}");
    c.cmd(&["XSETID", "ev", "18446744073709551615-18446744073709551615"]);
    // The second request again (a duplicate: its first copy is the last entry, same
    // body, same sizes), a replay of the first's nonce (another body, same sizes), and a
    // fresh request, all to the used-up stream.
    let reqs = [
        Req { nonce: "n:b", digest: [3; 32], entries: vec![("ev", 3, b"b-ev".to_vec())] },
        Req { nonce: "n:a", digest: [9; 32], entries: vec![("ev", 3, b"x-ev".to_vec())] },
        Req { nonce: "n:c", digest: [4; 32], entries: vec![("ev", 3, b"c-ev".to_vec())] },
    ];
    let v = run(&mut c, &reqs);
    // The duplicate's own append failed: not answered as appended (it cannot tell a first
    // copy stored long ago from one that failed the same way just before).
    assert!(matches!(&v[0], Err(RespError(e)) if e.contains("XADD to ev")), "{:?}", v[0]);
    assert_eq!(v[1], Ok(IngestReply::Replay));
    assert!(matches!(&v[2], Ok(IngestReply::AppendFailed(_))), "{:?}", v[2]);
    // Both accepted entries stay: the script read them back, but they carry other marks.
    assert_eq!(batches(&mut c, "ev"), [b"a-ev".to_vec(), b"b-ev".to_vec()]);
    // The same with one request alone per transaction, as a light load sends them.
    for r in [
        Req { nonce: "n:b", digest: [3; 32], entries: vec![("ev", 3, b"b-ev".to_vec())] },
        Req { nonce: "n:a", digest: [2; 32], entries: vec![("ev", 3, b"a-ev".to_vec())] },
    ] {
        let v = run(&mut c, &[r]);
        assert!(matches!(&v[0], Err(RespError(e)) if e.contains("XADD to ev")), "{v:?}");
    }
    assert_eq!(batches(&mut c, "ev"), [b"a-ev".to_vec(), b"b-ev".to_vec()]);
    // A replay to the used-up stream and to a working one, behind an accepted request of
    // the same sizes on the working one: its own entry there is taken back, the accepted
    // one stays, and on the used-up stream the entry read back (another's) stays.
    let reqs = [
        Req { nonce: "n:d", digest: [5; 32], entries: vec![("cu", 3, b"d-cu".to_vec())] },
        Req { nonce: "n:a", digest: [8; 32], entries: vec![("ev", 3, b"y-ev".to_vec()), ("cu", 3, b"y-cu".to_vec())] },
    ];
    let v = run(&mut c, &reqs);
    assert!(added(&v[0], 1), "{:?}", v[0]);
    assert_eq!(v[1], Ok(IngestReply::Replay));
    assert_eq!(batches(&mut c, "cu"), [b"d-cu".to_vec()]);
    assert_eq!(batches(&mut c, "ev"), [b"a-ev".to_vec(), b"b-ev".to_vec()]);
}

#[test]
fn a_copy_of_a_request_whose_append_failed_is_not_answered_as_appended() {
    // The first copy's `XADD` fails when run and the script records its nonce; before
    // croupier has given that nonce back (after the transaction's reply), a second copy
    // runs in its own transaction: its `DUPLICATE` verdict must not be a 202, as nothing
    // of the request is stored.
    let redis = RedisServer::start();
    let mut c = redis.client();
    let a = || Req { nonce: "n:a", digest: [2; 32], entries: vec![("ev", 3, b"a-ev".to_vec())] };
    run(&mut c, &[Req { nonce: "n:z", digest: [1; 32], entries: vec![("ev", 1, b"z-ev".to_vec())] }]);
    c.cmd(&["XSETID", "ev", "18446744073709551615-18446744073709551615"]);
    let first = run(&mut c, &[a()]);
    assert!(matches!(&first[0], Ok(IngestReply::AppendFailed(e)) if e.contains("XADD to ev")), "{first:?}");
    let second = run(&mut c, &[a()]);
    assert!(matches!(&second[0], Err(RespError(e)) if e.contains("XADD to ev")), "{second:?}");
    // The nonce is the first copy's, left for croupier to give back.
    assert_eq!(c.cmd(&["GET", "n:a"]), Frame::BulkString(vec![2; 32]));
    assert_eq!(batches(&mut c, "ev"), [b"z-ev".to_vec()]);
}

#[test]
fn every_entry_carries_its_requests_mark() {
    let redis = RedisServer::start();
    let mut c = redis.client();
    let reqs = [
        Req { nonce: "n:a", digest: [2; 32], entries: vec![("ev", 3, b"a-ev".to_vec()), ("cu", 1, b"a-cu".to_vec())] },
        Req { nonce: "n:b", digest: [3; 32], entries: vec![("ev", 2, b"b-ev".to_vec())] },
    ];
    run(&mut c, &reqs);
    let (ev, cu) = (xrange(&mut c, "ev"), xrange(&mut c, "cu"));
    let mark = |e: &croupier_it::redis::Entry| e.get("m").expect("m").to_vec();
    assert_eq!(mark(&ev[0]), mark(&cu[0]), "one request, one mark");
    assert_ne!(mark(&ev[0]), mark(&ev[1]), "two requests, two marks");
    for e in ev.iter().chain(&cu) {
        let m = mark(e);
        assert_eq!(m.len(), 32);
        assert!(m.iter().all(|b| b.is_ascii_hexdigit()), "{m:?}");
        assert_eq!(e.get("fmt"), Some(b"rkyv1".as_slice()));
    }
}

/// `INFO commandstats` calls of `cmd` since the last `CONFIG RESETSTAT`.
fn calls(c: &mut RedisClient, cmd: &str) -> i64 {
    let Frame::BulkString(info) = c.cmd(&["INFO", "commandstats"]) else { panic!("INFO") };
    let info = String::from_utf8_lossy(&info).into_owned();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn requests_sent_at_once_are_each_answered_as_alone() {
    let f = Fixture::start(Driver::Epoll, |_| {});
    // 24 pairs of requests sent at the same moment: in each pair the second is the
    // first again (same nonce, same body) or a replay (same nonce, another body); and
    // 16 requests alone.
    let mut sends = Vec::new();
    for i in 0..24 {
        let nonce = fresh_nonce();
        let body = events(1 + i % 3);
        let second = if i % 2 == 0 { body.clone() } else { events(4) };
        sends.push((nonce.clone(), body));
        sends.push((nonce, second));
    }
    for i in 0..16 {
        sends.push((fresh_nonce(), events(1 + i % 2)));
    }
    let requests = sends.len() as i64;
    let mut stats = f.redis.client();
    stats.cmd(&["CONFIG", "RESETSTAT"]);
    let start = Arc::new(Barrier::new(sends.len()));
    let handles: Vec<_> = sends
        .into_iter()
        .map(|(nonce, body)| {
            let mut client = f.client();
            let start = start.clone();
            std::thread::spawn(move || {
                let h = signed_headers(GAME, SECRET, body.as_bytes(), now_secs(), &nonce);
                start.wait();
                let r = client.request("POST", "/api/ingest/events", &h, body.as_bytes());
                (nonce, body, r.status, r.error_tag())
            })
        })
        .collect();
    let answers: Vec<_> = handles.into_iter().map(|h| h.join().expect("thread")).collect();
    let mut appended = 0i64;
    for pair in answers[..48].chunks(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if a.1 == b.1 {
            // The same request twice: both answered 202, one append.
            assert_eq!((a.2, b.2), (202, 202), "{a:?} {b:?}");
            appended += 1;
        } else {
            // One of the two bodies won the nonce; the other is a replay.
            let mut statuses = [(a.2, a.3.as_str()), (b.2, b.3.as_str())];
            statuses.sort();
            assert_eq!(statuses, [(202, ""), (401, "replayed_nonce")], "{a:?} {b:?}");
            appended += 1;
        }
    }
    for a in &answers[48..] {
        assert_eq!(a.2, 202, "{a:?}");
        appended += 1;
    }
    assert_eq!(xlen(&f.redis, "analytics:events"), appended, "one entry per accepted nonce");
    // They were judged by far fewer scripts than requests (the backlog's readings run a
    // few scripts of their own meanwhile).
    let scripts = calls(&mut stats, "eval");
    assert!(scripts * 2 < requests, "{scripts} scripts for {requests} requests: no transaction carried several");
    // The metric says as much: every request in a transaction, fewer transactions than
    // half the requests, and at least one carrying more than one.
    let mut enc = croupier_control::metrics::Encoder::new();
    f.ingest.as_ref().expect("running").metrics().encode(&mut enc);
    let text = enc.finish();
    let v = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    let (transactions, carried) =
        (v("croupier_ingest_transaction_requests_count"), v("croupier_ingest_transaction_requests_sum"));
    assert_eq!(carried, requests as f64, "{text}");
    assert!(transactions * 2.0 < carried, "{transactions} transactions for {carried} requests");
    assert!(v(r#"croupier_ingest_transaction_requests_bucket{le="1"}"#) < transactions, "{text}");
}

/// The same request sent twice to a stream that can take no more entries (its ids are
/// used up, so every `XADD` fails when run), both copies judged in one transaction (they
/// queue while Redis holds writes back): the first records the nonce and its append
/// fails, the second is its duplicate there; neither is answered 202, and the nonce is
/// given back.
#[test]
fn copies_of_a_request_whose_append_failed_are_not_answered_as_appended() {
    let f = Fixture::start(Driver::Epoll, |c| c.server.shards = 1);
    let mut c = f.redis.client();
    let last = "18446744073709551615-18446744073709551615";
    assert_eq!(c.cmd(&["XADD", "analytics:events", last, "f", "v"]), Frame::BulkString(last.as_bytes().to_vec()));
    for _ in 0..5 {
        // A request in flight while Redis holds writes back; the two copies queue behind it.
        c.cmd(&["CLIENT", "PAUSE", "400", "WRITE"]);
        let mut ahead = f.client();
        let first = std::thread::spawn(move || {
            let body = format!("[{}]", crate::fixture::event("boss_killed", "x"));
            crate::fixture::post_signed(&mut ahead, "/api/ingest/events", GAME, SECRET, body.as_bytes()).status
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        let nonce = fresh_nonce();
        let body = events(2);
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let mut client = f.client();
                let (nonce, body) = (nonce.clone(), body.clone());
                std::thread::spawn(move || {
                    let h = signed_headers(GAME, SECRET, body.as_bytes(), now_secs(), &nonce);
                    client.request("POST", "/api/ingest/events", &h, body.as_bytes()).status
                })
            })
            .collect();
        let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().expect("thread")).collect();
        assert_eq!(first.join().expect("thread"), 202);
        assert_eq!(statuses, [503, 503]);
        assert_eq!(c.int(&["EXISTS", &format!("croupier:nonce:{GAME}:{nonce}")]), 0, "the nonce is given back");
    }
    assert_eq!(xlen(&f.redis, "analytics:events"), 1);
}
