//! Trimming never deletes an entry the consumer group has not acknowledged: a consumer
//! that died holding entries holds back trimming, and ingest refuses (503 backlog_full)
//! rather than letting the stream grow without bound, until the entries are claimed.

use std::time::{Duration, Instant};

use croupier_control::config::StreamLimits;
use croupier_it::redis::xrange;
use croupier_protocol::resp::Frame;

use crate::fixture::event;
use crate::pipeline::Pipeline;

const KEY: &str = "analytics:events";

/// Ids of the entries delivered to `consumer` and not acknowledged.
fn pel(p: &Pipeline, consumer: &str) -> Vec<String> {
    let reply = p.ingest.redis.client().cmd(&["XPENDING", KEY, "analytics-workers", "-", "+", "100", consumer]);
    let Frame::Array(rows) = reply else { panic!("XPENDING reply") };
    rows.iter()
        .map(|r| match r {
            Frame::Array(f) => match &f[0] {
                Frame::BulkString(id) => String::from_utf8(id.clone()).expect("utf8"),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        })
        .collect()
}

fn post(p: &Pipeline, user: &str) -> croupier_it::http::Reply {
    p.ingest.post("/api/ingest/events", &format!("[{}]", event("login", user)))
}

/// Reads everything new as consumer `other` and acknowledges it.
fn consume(p: &Pipeline) {
    let mut r = p.ingest.redis.client();
    let Frame::Array(streams) =
        r.cmd(&["XREADGROUP", "GROUP", "analytics-workers", "other", "COUNT", "1000", "STREAMS", KEY, ">"])
    else {
        return;
    };
    for s in streams {
        let Frame::Array(parts) = s else { continue };
        let Frame::Array(entries) = &parts[1] else { continue };
        for e in entries {
            let Frame::Array(kv) = e else { continue };
            let Frame::BulkString(id) = &kv[0] else { continue };
            r.int(&[b"XACK".as_slice(), KEY.as_bytes(), b"analytics-workers", id]);
        }
    }
}

#[test]
fn c2_entries_pending_with_a_dead_consumer_are_never_trimmed() {
    let mut p = Pipeline::start_with(&[], |c| {
        c.streams.events = StreamLimits { retention_events: 50, high_water_events: 40 };
    });
    for i in 0..5 {
        assert_eq!(post(&p, &format!("ghost-{i}")).status, 202);
    }
    // A consumer takes the five entries and dies without acknowledging them.
    p.ingest.redis.client().cmd(&[
        "XREADGROUP",
        "GROUP",
        "analytics-workers",
        "ghost",
        "COUNT",
        "5",
        "STREAMS",
        KEY,
        ">",
    ]);
    let ghost = pel(&p, "ghost");
    assert_eq!(ghost.len(), 5);
    // Another consumer keeps up with everything after them.
    let mut sent = 0;
    let mut refused = false;
    while sent < 400 {
        let r = post(&p, &format!("early-{sent}"));
        sent += 1;
        if r.status == 503 {
            assert_eq!(r.error_tag(), "backlog_full", "{}", r.text());
            refused = true;
            break;
        }
        assert_eq!(r.status, 202);
        consume(&p);
    }
    // Nothing the group has not acknowledged was trimmed ...
    let ids: Vec<String> = xrange(&mut p.ingest.redis.client(), KEY).into_iter().map(|e| e.id).collect();
    for id in &ghost {
        assert!(ids.contains(id), "pending entry {id} was trimmed");
    }
    assert_eq!(pel(&p, "ghost"), ghost, "still pending with ghost");
    // ... and the stream does not grow without bound either: ingest refuses instead.
    assert!(refused, "ingest accepted {sent} requests while the untrimmable stream grew");

    // A worker claims the dead consumer's entries and inserts them; ingest takes
    // requests again.
    p.start_worker(&[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut late = 0;
    while late < 50 {
        let r = post(&p, &format!("late-{late}"));
        match r.status {
            202 => late += 1,
            503 => {
                assert!(Instant::now() < deadline, "ingest still refused: {}", r.text());
                std::thread::sleep(Duration::from_millis(50));
            }
            s => panic!("{s}: {}", r.text()),
        }
    }
    let count = |p: &Pipeline, like: &str| {
        p.scalar(&format!("SELECT count() FROM analytics.events FINAL WHERE user_id LIKE '{like}'"))
    };
    p.wait_for(5, "the dead consumer's events in ClickHouse", |p| count(p, "ghost-%"));
    p.wait_for(50, "events accepted afterwards in ClickHouse", |p| count(p, "late-%"));
}
