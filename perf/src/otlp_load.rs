//! OTLP load: the traffic model's events as OTLP log records (an
//! `ExportLogsServiceRequest` in protobuf, as the SDKs export them), sent over OTLP/HTTP
//! (`POST /v1/logs`, HTTP/1.1 keep-alive) or OTLP/gRPC (unary `LogsService/Export` calls
//! over HTTP/2 with prior knowledge, the `h2` crate on a monoio runtime per connection),
//! closed loop, one thread per connection.
//!
//! Every request body differs: its resource carries `service.instance.id` with a value
//! unique to (run, connection, request), stamped in place. The receiver derives a log
//! record's event id from the record and its resource, and a request's nonce from its
//! bytes, so a body sent twice would be one request answered twice, not new traffic.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::loadgen::LoadReport;
use crate::model::TrafficModel;

/// How an OTLP request travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// OTLP/HTTP protobuf, `POST /v1/logs`.
    Http,
    /// OTLP/gRPC, `LogsService/Export`.
    Grpc,
}

/// What to send.
#[derive(Debug, Clone)]
pub struct OtlpLoadConfig {
    /// The receiver's address (OTLP/HTTP or OTLP/gRPC port).
    pub addr: SocketAddr,
    /// HTTP or gRPC.
    pub transport: Transport,
    /// Game id (the resource's `game.id`).
    pub game: String,
    /// The game's OTLP bearer token.
    pub token: String,
    /// Connections (one thread each).
    pub connections: usize,
    /// How long to send.
    pub duration: Duration,
    /// Log records per request.
    pub batch: usize,
    /// Approximate bytes per event of the traffic model.
    pub event_bytes: usize,
    /// Seed of the traffic model.
    pub seed: u64,
    /// Distinct pre-built bodies to cycle through.
    pub bodies: usize,
    /// Cores to pin the connection threads to (round robin); empty = unpinned.
    pub cores: Vec<usize>,
    /// Every other record a plain log line (no event name): half the records are no
    /// event, as in a Collector's batch of a game server's logs.
    pub mixed: bool,
}

/// The placeholder of the per-request stamp in a body's resource.
const STAMP: &[u8; 16] = b"@stamp-of-a-req@";

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bytes_field(out: &mut Vec<u8>, n: u32, bytes: &[u8]) {
    varint(out, u64::from(n) << 3 | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn fixed64(out: &mut Vec<u8>, n: u32, v: u64) {
    varint(out, u64::from(n) << 3 | 1);
    out.extend_from_slice(&v.to_le_bytes());
}

/// A `KeyValue` as field `n` of `out`, its value an `AnyValue` from JSON.
fn key_value(out: &mut Vec<u8>, n: u32, key: &str, value: &Value) {
    let mut any = Vec::new();
    match value {
        Value::String(s) => bytes_field(&mut any, 1, s.as_bytes()),
        Value::Bool(b) => {
            varint(&mut any, 2 << 3);
            varint(&mut any, u64::from(*b));
        }
        Value::Number(x) if x.is_i64() => {
            varint(&mut any, 3 << 3);
            varint(&mut any, x.as_i64().unwrap_or(0) as u64);
        }
        Value::Number(x) => fixed64(&mut any, 4, x.as_f64().unwrap_or(0.0).to_bits()),
        other => bytes_field(&mut any, 1, other.to_string().as_bytes()),
    }
    let mut kv = Vec::new();
    bytes_field(&mut kv, 1, key.as_bytes());
    bytes_field(&mut kv, 2, &any);
    bytes_field(out, n, &kv);
}

/// The events of a JSON ingest body (the traffic model's) as one
/// `ExportLogsServiceRequest`: the same content, field for field. The resource holds
/// `game.id`, `deployment.environment.name`, `service.version` (the first event's) and the
/// stamp; each log record its `time_unix_nano` and `observed_time_unix_nano`, its
/// `event_name`, the envelope's fields as `game.*` attributes and each prop as an
/// attribute. With `mixed`, every other record has no `event_name` and a `body` (a log
/// line) instead: no event. Also returns the stamp's offset and the number of records.
pub fn logs_request(events_json: &str, mixed: bool) -> (Vec<u8>, usize, usize) {
    let events: Vec<Value> = serde_json::from_str(events_json).unwrap_or_default();
    let s = |e: &Value, k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let first = events.first().cloned().unwrap_or(Value::Null);
    let mut resource = Vec::new();
    key_value(&mut resource, 1, "game.id", &Value::String(s(&first, "game_id")));
    key_value(&mut resource, 1, "deployment.environment.name", &Value::String(s(&first, "env")));
    key_value(&mut resource, 1, "service.version", &Value::String(s(&first, "app_version")));
    key_value(&mut resource, 1, "service.instance.id", &Value::String(String::from_utf8_lossy(STAMP).into()));
    let mut scope = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let mut r = Vec::new();
        let ns = e.get("ts").and_then(Value::as_u64).unwrap_or(0) * 1_000_000;
        fixed64(&mut r, 1, ns);
        for (attr, field) in [
            ("game.user_id", "user_id"),
            ("game.session_id", "session_id"),
            ("game.device_id", "device_id"),
            ("game.channel", "channel"),
            ("game.platform", "platform"),
            ("game.country", "country"),
        ] {
            if let Some(v) = e.get(field) {
                key_value(&mut r, 6, attr, v);
            }
        }
        if let Some(props) = e.get("props").and_then(Value::as_object) {
            for (k, v) in props {
                key_value(&mut r, 6, k, v);
            }
        }
        fixed64(&mut r, 11, ns);
        if mixed && i % 2 == 1 {
            let mut line = Vec::new();
            bytes_field(&mut line, 1, format!("{} handled in 3 ms", s(e, "event")).as_bytes());
            bytes_field(&mut r, 5, &line);
        } else {
            bytes_field(&mut r, 12, s(e, "event").as_bytes());
        }
        bytes_field(&mut scope, 2, &r);
    }
    let mut rl = Vec::new();
    bytes_field(&mut rl, 1, &resource);
    bytes_field(&mut rl, 2, &scope);
    let mut out = Vec::new();
    bytes_field(&mut out, 1, &rl);
    let at = out.windows(STAMP.len()).position(|w| w == STAMP).unwrap_or(0);
    (out, at, events.len())
}

/// `n` request bodies of `batch` records from the traffic model (`mixed`: half of them
/// no event, [`logs_request`]).
pub fn logs_requests(
    seed: u64,
    game: &str,
    n: usize,
    batch: usize,
    event_bytes: usize,
    mixed: bool,
) -> Vec<(Vec<u8>, usize, usize)> {
    let players = (n.max(1) * batch / 40).max(10);
    let mut model = TrafficModel::new(seed, game, players, event_bytes);
    let ts =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    (0..n.max(1)).map(|_| logs_request(&model.events_body(batch, ts), mixed)).collect()
}

/// Writes 16 hex digits unique to (run, connection, request) over the stamp.
fn stamp(body: &mut [u8], at: usize, run_id: u64, index: usize, k: u64) {
    let v = run_id ^ ((index as u64) << 48) ^ k;
    if let Some(slot) = body.get_mut(at..at + STAMP.len()) {
        slot.copy_from_slice(format!("{v:016x}").as_bytes());
    }
}

/// Rejected records in an `ExportLogsServiceResponse` (its `partial_success`), 0 if none.
pub fn rejected(response: &[u8]) -> u64 {
    use croupier_protocol::otlp::wire::{Fields, Value as Wire};
    fn field(msg: &[u8], n: u32) -> Option<Wire<'_>> {
        Fields::new(msg).filter_map(Result::ok).find(|(f, _)| *f == n).map(|(_, v)| v)
    }
    let Some(Wire::Bytes(partial)) = field(response, 1) else { return 0 };
    match field(partial, 1) {
        Some(Wire::Varint(n)) => n,
        _ => 0,
    }
}

/// What one connection did.
#[derive(Default)]
struct Stats {
    requests: u64,
    accepted_requests: u64,
    accepted_records: u64,
    accepted_bytes: u64,
    refused: Vec<(u16, u64)>,
    connection_errors: u64,
}

impl Stats {
    /// One answer: `status` (HTTP status, or 200 + 1000 × gRPC status for a gRPC one that
    /// is not OK), and the response message for an accepted request.
    fn answer(&mut self, status: u16, records: usize, bytes: usize, response: &[u8]) {
        self.requests += 1;
        if status == 200 {
            self.accepted_requests += 1;
            self.accepted_records += (records as u64).saturating_sub(rejected(response));
            self.accepted_bytes += bytes as u64;
        } else {
            match self.refused.iter_mut().find(|(s, _)| *s == status) {
                Some((_, n)) => *n += 1,
                None => self.refused.push((status, 1)),
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Reads one HTTP/1.1 response into `body`; its status.
fn read_http(stream: &mut TcpStream, buf: &mut Vec<u8>, body: &mut Vec<u8>) -> std::io::Result<u16> {
    crate::loadgen::read_http(stream, buf, |status, b| {
        body.clear();
        body.extend_from_slice(b);
        status
    })
}

fn http_connection(cfg: &OtlpLoadConfig, bodies: &[(Vec<u8>, usize, usize)], index: usize) -> Stats {
    let mut st = Stats::default();
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
    let deadline = Instant::now() + cfg.duration;
    let run_id = fastrand::u64(..);
    let (mut req, mut rbuf, mut resp) = (Vec::with_capacity(64 << 10), Vec::new(), Vec::new());
    let mut k = 0u64;
    while Instant::now() < deadline {
        let (body, at, records) = &bodies[(k as usize + index) % bodies.len()];
        req.clear();
        let _ = write!(
            req,
            "POST /v1/logs HTTP/1.1\r\nHost: load\r\nContent-Type: application/x-protobuf\r\n\
             Authorization: Bearer {}\r\nContent-Length: {}\r\n\r\n",
            cfg.token,
            body.len()
        );
        let start = req.len();
        req.extend_from_slice(body);
        stamp(&mut req[start..], *at, run_id, index, k);
        k += 1;
        match stream.write_all(&req).and_then(|_| read_http(&mut stream, &mut rbuf, &mut resp)) {
            Ok(status) => st.answer(status, *records, body.len(), &resp),
            Err(_) => {
                st.connection_errors += 1;
                rbuf.clear();
                match connect() {
                    Ok(s) => stream = s,
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    }
    st
}

/// One unary `Export` call: its status (200, or 200 + 1000 × a gRPC status that is not
/// OK, or the HTTP status of a response that is no gRPC answer) and response message.
async fn grpc_call(
    send: &mut h2::client::SendRequest<bytes::Bytes>,
    token: &str,
    message: bytes::Bytes,
    resp: &mut Vec<u8>,
) -> Result<u16, h2::Error> {
    let req = http::Request::post("http://load/opentelemetry.proto.collector.logs.v1.LogsService/Export")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .map_err(|_| h2::Error::from(h2::Reason::INTERNAL_ERROR))?;
    *send = send.clone().ready().await?;
    let (response, mut stream) = send.send_request(req, false)?;
    stream.send_data(message, true)?;
    let response = response.await?;
    let status = response.status().as_u16();
    let grpc_status =
        |h: &http::HeaderMap| h.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u16>().ok());
    // Trailers-Only: the status is in the headers.
    let mut code = grpc_status(response.headers());
    let mut body = response.into_body();
    resp.clear();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        resp.extend_from_slice(&chunk);
    }
    if let Some(t) = body.trailers().await? {
        code = code.or(grpc_status(&t));
    }
    // The message after its 5-byte prefix.
    resp.drain(..resp.len().min(5));
    Ok(match (status, code) {
        (200, Some(0)) => 200,
        (200, Some(c)) => 200 + 1000 * c,
        (s, _) => s,
    })
}

fn grpc_connection(cfg: &OtlpLoadConfig, bodies: &[(Vec<u8>, usize, usize)], index: usize) -> Stats {
    let run = async {
        let mut st = Stats::default();
        let Ok(tcp) = monoio::net::TcpStream::connect(cfg.addr).await else {
            st.connection_errors += 1;
            return st;
        };
        let _ = tcp.set_nodelay(true);
        let mut builder = h2::client::Builder::new();
        builder.initial_window_size(1 << 20).initial_connection_window_size(4 << 20);
        let Ok((mut send, conn)) = builder.handshake::<_, bytes::Bytes>(monoio_compat::StreamWrapper::new(tcp)).await
        else {
            st.connection_errors += 1;
            return st;
        };
        monoio::spawn(async move {
            let _ = conn.await;
        });
        let deadline = Instant::now() + cfg.duration;
        let run_id = fastrand::u64(..);
        let mut resp = Vec::new();
        let mut k = 0u64;
        while Instant::now() < deadline {
            let (body, at, records) = &bodies[(k as usize + index) % bodies.len()];
            // The gRPC message: uncompressed flag, length, the request.
            let mut message = Vec::with_capacity(5 + body.len());
            message.push(0);
            message.extend_from_slice(&(body.len() as u32).to_be_bytes());
            message.extend_from_slice(body);
            stamp(&mut message[5..], *at, run_id, index, k);
            k += 1;
            match grpc_call(&mut send, &cfg.token, message.into(), &mut resp).await {
                Ok(status) => st.answer(status, *records, body.len(), &resp),
                Err(_) => {
                    st.connection_errors += 1;
                    break;
                }
            }
        }
        st
    };
    match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build() {
        Ok(mut rt) => rt.block_on(run),
        Err(_) => Stats { connection_errors: 1, ..Stats::default() },
    }
}

/// Sends OTLP load as configured; `accepted_events` counts accepted log records (events
/// and, with `mixed`, the plain ones OTLP also counts as accepted).
pub fn run(cfg: &OtlpLoadConfig) -> LoadReport {
    let bodies = Arc::new(logs_requests(cfg.seed, &cfg.game, cfg.bodies, cfg.batch, cfg.event_bytes, cfg.mixed));
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
                match cfg.transport {
                    Transport::Http => http_connection(&cfg, &bodies, i),
                    Transport::Grpc => grpc_connection(&cfg, &bodies, i),
                }
            })
        })
        .collect();
    let mut r = LoadReport::default();
    let mut bytes = 0u64;
    for t in threads {
        let Ok(st) = t.join() else { continue };
        r.requests += st.requests;
        r.accepted_requests += st.accepted_requests;
        r.accepted_records += st.accepted_records;
        r.accepted_events += st.accepted_records;
        r.connection_errors += st.connection_errors;
        bytes += st.accepted_bytes;
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
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use croupier_protocol::envelope::{EventBatch, PaymentBatch};
    use croupier_protocol::otlp::{self, Context, Format, Signal, Sink, SpanEvents};
    use croupier_protocol::validate::{JsonBuffers, Limits};

    #[test]
    fn requests_carry_the_model_events_and_differ_by_stamp() {
        let pool = logs_requests(7, "g1", 2, 20, 300, false);
        let (body, at, n) = &pool[0];
        assert_eq!(*n, 20);
        assert_eq!(&body[*at..*at + STAMP.len()], STAMP);
        let (mut a, mut b) = (body.clone(), body.clone());
        stamp(&mut a, *at, 1, 0, 0);
        stamp(&mut b, *at, 1, 0, 1);
        assert_ne!(a, b);
        let limits = Limits::default();
        let ctx = Context { game: "g1", limits: &limits, spans: SpanEvents::default() };
        let mut seen = croupier_protocol::otlp::occurrence::Occurrences::default();
        let (mut ev, mut cu, mut pa, mut props) = (
            EventBatch::default(),
            EventBatch::default(),
            PaymentBatch::default(),
            croupier_protocol::otlp::props::Props::default(),
        );
        let mut sink = Sink { events: &mut ev, custom: &mut cu, payments: &mut pa, props: &mut props, seen: &mut seen };
        let s = otlp::decode(
            Signal::Logs,
            Format::Protobuf,
            &mut a,
            &ctx,
            &mut JsonBuffers::default(),
            &mut || [0; 16],
            &mut sink,
        )
        .expect("decodes");
        assert_eq!((s.accepted, s.rejected, s.skipped), (20, 0, 0));
        assert_eq!(ev.len() + cu.len(), 20);
        // Mixed: every other record is a plain log line, skipped.
        let (mut body, ..) = logs_requests(7, "g1", 1, 20, 300, true).remove(0);
        ev.clear();
        cu.clear();
        let mut sink = Sink { events: &mut ev, custom: &mut cu, payments: &mut pa, props: &mut props, seen: &mut seen };
        let s = otlp::decode(
            Signal::Logs,
            Format::Protobuf,
            &mut body,
            &ctx,
            &mut JsonBuffers::default(),
            &mut || [0; 16],
            &mut sink,
        )
        .expect("decodes");
        assert_eq!((s.records, s.accepted, s.skipped), (20, 10, 10));
    }

    #[test]
    fn partial_success_is_read_from_the_response() {
        let mut out = Vec::new();
        croupier_protocol::otlp::response::export(&mut out, Signal::Logs, Format::Protobuf, 3, "3 of 9 rejected");
        assert_eq!(rejected(&out), 3);
        assert_eq!(rejected(&[]), 0);
    }
}
