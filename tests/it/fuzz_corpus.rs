//! The fuzz corpus (`fuzz/corpus/<target>/`) replayed through the checks the fuzz targets
//! run, so that every test run exercises it on the stable toolchain, with or without
//! cargo-fuzz (`docs/fuzzing.md`). Inputs that still crash a decoder wait in
//! `fuzz/crashes/<target>/` and are not replayed here.

use std::path::{Path, PathBuf};

use croupier_protocol::batch::{self, Batch, Records};
use croupier_protocol::envelope::{Event, EventBatch, Payment, PaymentStatus};
use croupier_protocol::validate::{self, Limits};

/// The check a fuzz target runs on one input.
type Check = fn(&[u8]);

/// Each fuzz target and its check.
const TARGETS: [(&str, Check); 8] = [
    ("http_request", croupier_dataplane::fuzzing::http_request),
    ("http_chunks", croupier_dataplane::fuzzing::http_chunks),
    ("batch_entry", croupier_dataplane::fuzzing::batch_entry),
    ("json_envelope", croupier_protocol::fuzzing::json_envelope),
    ("otlp_request", croupier_protocol::fuzzing::otlp_request),
    ("resp_replies", croupier_protocol::fuzzing::resp_replies),
    ("clickhouse_packets", croupier_protocol::fuzzing::clickhouse_packets),
    ("hll_redis_string", croupier_protocol::fuzzing::hll_redis_string),
];

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target)
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

#[test]
fn fuzz_corpus_replays_through_every_target() {
    let mut failed = Vec::new();
    for (target, check) in TARGETS {
        let inputs = files(&corpus(target));
        assert!(inputs.len() >= 10, "{target}: only {} corpus files", inputs.len());
        for path in inputs {
            let data = std::fs::read(&path).expect("read corpus file");
            if std::panic::catch_unwind(|| check(&data)).is_err() {
                failed.push(path.display().to_string());
            }
        }
    }
    assert!(failed.is_empty(), "corpus files that fail their target's check: {failed:#?}");
}

fn event(i: u8, name: &str, props: &str) -> Event {
    Event {
        ts_ms: 1_795_617_749_000 + i64::from(i),
        game_id: "g1".into(),
        env: "prod".into(),
        event: name.into(),
        user_id: format!("u{i}"),
        session_id: "s1".into(),
        country: if i.is_multiple_of(2) { "US".into() } else { String::new() },
        event_id: [i; 16],
        props: props.into(),
        ..Event::default()
    }
}

fn payment(i: u8, status: PaymentStatus) -> Payment {
    Payment {
        ts_ms: 1_795_617_749_000,
        game_id: "g1".into(),
        env: "prod".into(),
        user_id: "u1".into(),
        order_id: format!("o-{i}"),
        amount_cents: 999 * u64::from(i),
        currency: "EUR".into(),
        status,
        country: "DE".into(),
        city: "München".into(),
        ..Payment::default()
    }
}

/// Writes the seed corpus of `batch_entry`: archives made by the encoder the ingest shards
/// use. Run by hand after a change to the archive layout:
/// `cargo nextest run -p croupier-it --run-ignored only -E 'test(write_batch_seeds)'`.
#[test]
#[ignore = "writes the batch_entry seed corpus"]
fn write_batch_seeds() {
    let events = |list: Vec<Event>| {
        let mut b = EventBatch::default();
        list.iter().for_each(|e| b.push(e).expect("fits"));
        Records::Events(b)
    };
    let mut parsed = (EventBatch::default(), EventBatch::default());
    let mut body = br#"[{"ts":"2026-11-25T14:42:29Z","game_id":"g1","env":"prod","event":"login","country":"fr",
        "event_id":"6f1c2b9e-0d3a-4c1e-9a57-2f4b8e6d1c03","props":{"a":[1,2],"s":"\u00e9\n"}},
        {"ts":1795617749,"game_id":"g1","env":"dev","event":"boss_killed","user_id":"u9"}]"#
        .to_vec();
    validate::parse_events(&mut body, "g1", &Limits::default(), &mut || [5; 16], &mut parsed.0, &mut parsed.1)
        .expect("valid body");
    let seeds: Vec<(&str, Records)> = vec![
        ("events_empty", Records::Events(EventBatch::default())),
        ("events_one", events(vec![event(1, "login", r#"{"k":1}"#)])),
        ("events_two", events(vec![event(1, "login", "{}"), event(2, "logout", "")])),
        ("events_unicode", events(vec![event(3, "level_up", r#"{"name":"Ünïcødé ✓","emoji":"😀"}"#)])),
        ("events_long_props", events(vec![event(4, "custom", &format!(r#"{{"blob":"{}"}}"#, "x".repeat(900)))])),
        ("events_forty", events((0..40).map(|i| event(i, "tick", r#"{"i":1}"#)).collect())),
        ("events_from_ingest_standard", Records::Events(parsed.0)),
        ("events_from_ingest_custom", Records::Events(parsed.1)),
        ("payments_empty", Records::Payments(Vec::new())),
        ("payments_one", Records::Payments(vec![payment(1, PaymentStatus::Success)])),
        (
            "payments_statuses",
            Records::Payments(vec![
                payment(1, PaymentStatus::Success),
                payment(2, PaymentStatus::Refunded),
                payment(3, PaymentStatus::Failed),
            ]),
        ),
        (
            "payments_max_amount",
            Records::Payments(vec![Payment { amount_cents: u64::MAX, ..payment(4, PaymentStatus::Success) }]),
        ),
    ];
    let dir = corpus("batch_entry");
    std::fs::create_dir_all(&dir).expect("corpus dir");
    for (i, (name, records)) in seeds.into_iter().enumerate() {
        let b = Batch { accepted_at_ms: 1_795_617_749_000 + i as i64, records };
        let bytes = batch::encode(&b).expect("encode");
        std::fs::write(dir.join(name), &bytes[..]).expect("write seed");
    }
    // Shapes another producer might write: a truncated archive and an empty one.
    let bytes =
        batch::encode(&Batch { accepted_at_ms: 7, records: events(vec![event(9, "e", "{}")]) }).expect("encode");
    std::fs::write(dir.join("truncated"), &bytes[..bytes.len() / 2]).expect("write seed");
    std::fs::write(dir.join("empty"), b"").expect("write seed");
}
