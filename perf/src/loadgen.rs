//! The load generator: N keep-alive connections sending signed batches, open-loop at a
//! fixed rate or closed-loop at the maximum, with latencies in an HdrHistogram corrected
//! for coordinated omission (an open-loop request's latency runs from when it was due,
//! not from when a late sender got round to it).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use croupier_protocol::signature;
use hdrhistogram::Histogram;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::model::TrafficModel;

/// What to send.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Ingest address.
    pub addr: SocketAddr,
    /// Game id.
    pub game: String,
    /// Its secret.
    pub secret: String,
    /// Connections (one thread each).
    pub connections: usize,
    /// Target events/s over all connections; 0 = as fast as answers come (closed loop).
    pub rate_eps: u64,
    /// How long to send.
    pub duration: Duration,
    /// Events per request.
    pub batch: usize,
    /// Approximate bytes per event.
    pub event_bytes: usize,
    /// Seed of the traffic model.
    pub seed: u64,
    /// One payments request every this many requests (0 = none).
    pub payments_every: usize,
    /// Distinct pre-built bodies to cycle through.
    pub bodies: usize,
    /// Cores to pin the connection threads to (round robin); empty = unpinned.
    pub cores: Vec<usize>,
}

/// Latency quantiles in microseconds.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Latency {
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Maximum.
    pub max_us: u64,
}

/// What happened.
#[derive(Debug, Clone, Serialize, Default)]
pub struct LoadReport {
    /// Target events/s (0 = closed loop).
    pub target_eps: u64,
    /// Seconds actually spent sending.
    pub seconds: f64,
    /// Requests answered.
    pub requests: u64,
    /// Requests answered 202.
    pub accepted_requests: u64,
    /// Records accepted (sum of `accepted`).
    pub accepted_records: u64,
    /// Events accepted (records on the events endpoint).
    pub accepted_events: u64,
    /// Answers other than 202, by status.
    pub refused: Vec<(u16, u64)>,
    /// Connections that failed.
    pub connection_errors: u64,
    /// Accepted events per second.
    pub events_per_sec: f64,
    /// Request body megabytes per second (accepted requests).
    pub mb_per_sec: f64,
    /// Ack latency.
    pub latency: Latency,
    /// The longest ack of each second of the run (by when the request was due), µs.
    pub max_us_per_second: Vec<u64>,
}

struct Body {
    path: &'static str,
    bytes: Vec<u8>,
    digest: [u8; 64],
}

/// A pre-built events body: its bytes, where its id slot starts, and the SHA-256 state
/// over every byte before the slot. A request copies the bytes, stamps the slot and hashes
/// only from the slot on: the slot is in the last event, so signing a 30 KB body hashes a
/// few hundred bytes (the load generator shares the machine with what it measures).
struct Pooled {
    bytes: Vec<u8>,
    slot: usize,
    prefix: Sha256,
}

impl Pooled {
    fn new(bytes: Vec<u8>, slot: usize) -> Pooled {
        let prefix = Sha256::new().chain_update(bytes.get(..slot).unwrap_or_default());
        Pooled { bytes, slot, prefix }
    }

    /// The body's `signature::body_digest` once `body` (a stamped copy) differs from it
    /// only from the slot on.
    fn digest_of(&self, body: &[u8]) -> [u8; 64] {
        let sha = self.prefix.clone().chain_update(body.get(self.slot..).unwrap_or_default()).finalize();
        signature::hex_digest(&sha.into())
    }
}

/// The explicit id the last event of every pre-built events body starts with; each
/// request overwrites it with its own (see [`stamp`]).
const ID_FIELD: &str = r#""event_id":""#;
const ID_TEMPLATE: &str = "00000000-0000-4000-8000-000000000000";

/// Writes a UUID unique to (run, connection, request) into the id slot of a body built by
/// [`bodies`]. Every request body then differs, as real clients' do: ingest derives the
/// other events' ids from the body's hash, so a body sent twice would be the same events
/// twice (collapsed by the deduplicating tables) and not new traffic.
fn stamp(body: &mut [u8], slot: usize, run_id: u64, index: usize, k: u64) {
    let b = ((index as u64) << 40) | (k & ((1 << 40) - 1));
    let id = format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        run_id >> 32,
        (run_id >> 16) & 0xffff,
        run_id & 0xfff,
        (b >> 48) & 0xfff,
        b & 0xffff_ffff_ffff
    );
    if let Some(slot) = body.get_mut(slot..slot + ID_TEMPLATE.len()) {
        slot.copy_from_slice(id.as_bytes());
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn bodies(cfg: &LoadConfig) -> Vec<Pooled> {
    // About 40 events per player over the pre-built bodies, so sessions get past their start.
    let players = (cfg.bodies.max(1) * cfg.batch / 40).max(10);
    let mut model = TrafficModel::new(cfg.seed, &cfg.game, players, cfg.event_bytes);
    let ts = now_secs() as i64 * 1000;
    (0..cfg.bodies.max(1))
        .map(|_| {
            let b = model.events_body(cfg.batch, ts);
            // The id field first in the last event: after its `{` (the body's last `},{`,
            // or the `[{` of a one-event body).
            let at = b.rfind("},{").map_or(2, |i| i + 3);
            let (head, tail) = b.split_at(at);
            let b = format!("{head}{ID_FIELD}{ID_TEMPLATE}\",{tail}").into_bytes();
            Pooled::new(b, at + ID_FIELD.len())
        })
        .collect()
}

#[derive(Default)]
struct ThreadStats {
    requests: u64,
    accepted_requests: u64,
    accepted_records: u64,
    accepted_events: u64,
    accepted_bytes: u64,
    refused: Vec<(u16, u64)>,
    connection_errors: u64,
    max_us_per_second: Vec<u64>,
}

fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<(u16, u64)> {
    read_http(stream, buf, |status, body| {
        let accepted = std::str::from_utf8(body)
            .ok()
            .and_then(|t| t.strip_prefix(r#"{"accepted":"#))
            .and_then(|t| t.trim_end_matches('}').parse().ok())
            .unwrap_or(0);
        (status, accepted)
    })
}

/// Reads one HTTP/1.1 response (Content-Length framed) from `stream`, with `buf` holding
/// what was read past the previous one, and hands its status and body to `f`.
pub fn read_http<T>(stream: &mut TcpStream, buf: &mut Vec<u8>, f: impl FnOnce(u16, &[u8]) -> T) -> std::io::Result<T> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(n)) = resp.parse(buf) {
            let status = resp.code.unwrap_or(0);
            let len: usize = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= n + len {
                let out = f(status, &buf[n..n + len]);
                buf.drain(..n + len);
                return Ok(out);
            }
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn connection(cfg: &LoadConfig, bodies: &[Pooled], index: usize, hist: &mut Histogram<u64>) -> ThreadStats {
    let mut st = ThreadStats::default();
    let connect = || -> std::io::Result<TcpStream> {
        let s = TcpStream::connect(cfg.addr)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(s)
    };
    let Ok(mut stream) = connect() else {
        st.connection_errors += 1;
        return st;
    };
    let interval = if cfg.rate_eps > 0 {
        let per_conn_rps = cfg.rate_eps as f64 / cfg.batch as f64 / cfg.connections as f64;
        Some(Duration::from_secs_f64(1.0 / per_conn_rps))
    } else {
        None
    };
    let start = Instant::now();
    let deadline = start + cfg.duration;
    let run_id = fastrand::u64(..);
    let mut payments = TrafficModel::new(cfg.seed ^ run_id ^ index as u64, &cfg.game, 1000, cfg.event_bytes);
    let mut req = Vec::with_capacity(64 * 1024);
    let mut rbuf = Vec::with_capacity(4096);
    let mut k: u64 = 0;
    let events = bodies.len();
    let mut spare: Vec<u8> = Vec::new();
    loop {
        let due = match interval {
            Some(iv) => start + iv.mul_f64(k as f64) + iv.mul_f64(index as f64 / cfg.connections as f64),
            None => Instant::now(),
        };
        if due >= deadline {
            break;
        }
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        // Payments are built fresh (order ids are dedup keys); event bodies are copied from
        // the pool and stamped with a fresh id in their last event, so that no two requests
        // are alike.
        let body = if cfg.payments_every > 0 && k as usize % cfg.payments_every == cfg.payments_every - 1 {
            let b = payments.payments_body(5, now_secs() as i64 * 1000).into_bytes();
            Body { path: "/api/ingest/payments", digest: signature::body_digest(&b), bytes: b }
        } else {
            let pooled = &bodies[(k as usize + index) % events];
            let mut b = std::mem::take(&mut spare);
            b.clear();
            b.extend_from_slice(&pooled.bytes);
            stamp(&mut b, pooled.slot, run_id, index, k);
            Body { path: "/api/ingest/events", digest: pooled.digest_of(&b), bytes: b }
        };
        let ts = now_secs().to_string();
        // Unique across runs too: a run reusing an earlier run's nonce within the
        // server's nonce window would be refused as a replay.
        let nonce = format!("{run_id:016x}-{index}-{k}");
        let sig = signature::sign_with_digest(cfg.secret.as_bytes(), &ts, &nonce, &body.digest);
        req.clear();
        let _ = write!(
            req,
            "POST {} HTTP/1.1\r\nHost: load\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             X-Game-Id: {}\r\nX-Timestamp: {ts}\r\nX-Nonce: {nonce}\r\nX-Signature: {sig}\r\n\r\n",
            body.path,
            body.bytes.len(),
            cfg.game
        );
        req.extend_from_slice(&body.bytes);
        let sent = Instant::now();
        let result = stream.write_all(&req).and_then(|_| read_response(&mut stream, &mut rbuf));
        let done = Instant::now();
        k += 1;
        match result {
            Ok((status, accepted)) => {
                st.requests += 1;
                let from = if interval.is_some() { due } else { sent };
                let us = done.saturating_duration_since(from).as_micros().max(1) as u64;
                let _ = hist.record(us);
                let second = from.saturating_duration_since(start).as_secs() as usize;
                if st.max_us_per_second.len() <= second {
                    st.max_us_per_second.resize(second + 1, 0);
                }
                st.max_us_per_second[second] = st.max_us_per_second[second].max(us);
                if status == 202 {
                    st.accepted_requests += 1;
                    st.accepted_records += accepted;
                    st.accepted_bytes += body.bytes.len() as u64;
                    if body.path == "/api/ingest/events" {
                        st.accepted_events += accepted;
                    }
                } else {
                    match st.refused.iter_mut().find(|(s, _)| *s == status) {
                        Some((_, n)) => *n += 1,
                        None => st.refused.push((status, 1)),
                    }
                    if status == 503 || status == 429 {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
            Err(_) => {
                st.connection_errors += 1;
                rbuf.clear();
                match connect() {
                    Ok(s) => stream = s,
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        spare = body.bytes;
        if Instant::now() >= deadline {
            break;
        }
    }
    st
}

/// A latency histogram from 1 µs to 60 s, 3 significant digits.
#[allow(clippy::expect_used)] // constant, valid bounds
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid constant bounds")
}

/// Sends load as configured and reports what happened.
pub fn run(cfg: &LoadConfig) -> LoadReport {
    let bodies = Arc::new(bodies(cfg));
    let started = Instant::now();
    let threads: Vec<_> = (0..cfg.connections.max(1))
        .map(|i| {
            let (cfg, bodies) = (cfg.clone(), bodies.clone());
            std::thread::spawn(move || {
                if !cfg.cores.is_empty() {
                    let core = cfg.cores[i % cfg.cores.len()];
                    if let Some(id) =
                        core_affinity::get_core_ids().and_then(|ids| ids.into_iter().find(|c| c.id == core))
                    {
                        core_affinity::set_for_current(id);
                    }
                }
                let mut hist = histogram();
                let st = connection(&cfg, &bodies, i, &mut hist);
                (st, hist)
            })
        })
        .collect();
    let mut hist = histogram();
    let mut r = LoadReport { target_eps: cfg.rate_eps, ..LoadReport::default() };
    let mut bytes = 0u64;
    for t in threads {
        let Ok((st, h)) = t.join() else { continue };
        let _ = hist.add(&h);
        r.requests += st.requests;
        r.accepted_requests += st.accepted_requests;
        r.accepted_records += st.accepted_records;
        r.accepted_events += st.accepted_events;
        r.connection_errors += st.connection_errors;
        bytes += st.accepted_bytes;
        if r.max_us_per_second.len() < st.max_us_per_second.len() {
            r.max_us_per_second.resize(st.max_us_per_second.len(), 0);
        }
        for (m, s) in r.max_us_per_second.iter_mut().zip(&st.max_us_per_second) {
            *m = (*m).max(*s);
        }
        for (s, n) in st.refused {
            match r.refused.iter_mut().find(|(x, _)| *x == s) {
                Some((_, m)) => *m += n,
                None => r.refused.push((s, n)),
            }
        }
    }
    r.seconds = started.elapsed().as_secs_f64();
    r.events_per_sec = r.accepted_events as f64 / r.seconds;
    r.mb_per_sec = bytes as f64 / 1e6 / r.seconds;
    if !hist.is_empty() {
        r.latency = Latency {
            p50_us: hist.value_at_quantile(0.5),
            p90_us: hist.value_at_quantile(0.9),
            p99_us: hist.value_at_quantile(0.99),
            p999_us: hist.value_at_quantile(0.999),
            max_us: hist.max(),
        };
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LoadConfig {
        LoadConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            game: "g1".into(),
            secret: "s".into(),
            connections: 1,
            rate_eps: 0,
            duration: Duration::from_secs(1),
            batch: 20,
            event_bytes: 300,
            seed: 7,
            payments_every: 0,
            bodies: 2,
            cores: Vec::new(),
        }
    }

    /// The ids of a body's events other than the fallback (all zero) ids.
    fn explicit_ids(body: &[u8]) -> Vec<[u8; 16]> {
        let (mut e, mut c) =
            (croupier_protocol::envelope::EventBatch::default(), croupier_protocol::envelope::EventBatch::default());
        let mut buf = body.to_vec();
        croupier_protocol::validate::parse_events(
            &mut buf,
            "g1",
            &croupier_protocol::validate::Limits::default(),
            &mut || [0; 16],
            &mut e,
            &mut c,
        )
        .expect("a stamped body validates");
        assert_eq!(e.len() + c.len(), 20);
        let ids = (0..e.len()).map(|i| e.get(i).event_id).chain((0..c.len()).map(|i| c.get(i).event_id));
        ids.filter(|id| *id != [0; 16]).collect()
    }

    #[test]
    fn every_request_body_is_distinct_and_valid() {
        let pool = bodies(&config());
        let mut seen = std::collections::HashSet::new();
        for (index, k) in [(0, 0), (0, 1), (1, 0), (1, 1), (255, 1 << 39), (256, 1 << 39)] {
            let mut b = pool[0].bytes.clone();
            stamp(&mut b, pool[0].slot, 0x0123_4567_89ab_cdef, index, k);
            assert_eq!(pool[0].digest_of(&b), signature::body_digest(&b), "the digest of the whole body");
            assert!(seen.insert(b.clone()), "request ({index},{k}) repeats an earlier body");
            assert_eq!(explicit_ids(&b).len(), 1, "the stamped id is the body's one explicit id");
        }
        assert_eq!(seen.len(), 6);
    }
}
