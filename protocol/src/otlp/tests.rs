//! Decoder tests at the byte level: protobuf built field by field, OTLP/JSON text.

use super::wire::{put_bytes, put_tag, put_varint, WireError};
use super::*;
use crate::envelope::{Event, Payment, PaymentStatus};
use crate::validate::Limits;

/// Protobuf builders.
mod pbuf {
    use super::*;

    pub fn field(n: u32, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_bytes(&mut out, n, bytes);
        out
    }

    pub fn fixed64(n: u32, v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        put_tag(&mut out, n, 1);
        out.extend_from_slice(&v.to_le_bytes());
        out
    }

    pub fn s(v: &str) -> Vec<u8> {
        field(1, v.as_bytes())
    }

    pub fn int(v: i64) -> Vec<u8> {
        let mut out = Vec::new();
        put_tag(&mut out, 3, 0);
        put_varint(&mut out, v as u64);
        out
    }

    pub fn double(v: f64) -> Vec<u8> {
        fixed64(4, v.to_bits())
    }

    pub fn array(items: &[Vec<u8>]) -> Vec<u8> {
        field(5, &items.iter().flat_map(|i| field(1, i)).collect::<Vec<u8>>())
    }

    pub fn kvlist(kvs: &[(&str, Vec<u8>)]) -> Vec<u8> {
        field(6, &kvs.iter().flat_map(|(k, v)| field(1, &kv(k, v))).collect::<Vec<u8>>())
    }

    pub fn kv(key: &str, any: &[u8]) -> Vec<u8> {
        [field(1, key.as_bytes()), field(2, any)].concat()
    }

    pub fn attrs(n: u32, kvs: &[(&str, Vec<u8>)]) -> Vec<u8> {
        kvs.iter().flat_map(|(k, v)| field(n, &kv(k, v))).collect()
    }

    /// A request with one resource and one scope holding `records`.
    pub fn request(resource: &[(&str, Vec<u8>)], records: &[Vec<u8>]) -> Vec<u8> {
        let scope = records.iter().flat_map(|r| field(2, r)).collect::<Vec<u8>>();
        let rl = [field(1, &attrs(1, resource)), field(2, &scope)].concat();
        field(1, &rl)
    }
}

use pbuf::*;

const T: u64 = 1_795_617_749_123_456_789;
const TRACE: [u8; 16] =
    [0x5b, 0x8e, 0xff, 0xf7, 0x98, 0x03, 0x81, 0x03, 0xd2, 0x69, 0xb6, 0x33, 0x81, 0x3f, 0xc6, 0x0c];
const SPAN: [u8; 8] = [0xee, 0xe1, 0x9b, 0x7e, 0xc3, 0xc1, 0xb1, 0x74];

fn resource() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("game.id", s("g1")),
        ("deployment.environment", s("staging")),
        ("deployment.environment.name", s("prod")),
        ("service.version", s("9.9.9")),
        ("service.name", s("game-server")),
    ]
}

fn log(name: &str, time: u64, extra: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut a = vec![
        ("game.user_id", s("u1")),
        ("game.session_id", s("s1")),
        ("game.platform", s("ios")),
        ("game.region", s("eu-west")),
        ("game.country", s("de")),
        ("game.app_version", s("1.2.3")),
        ("progression.level_id", int(7)),
    ];
    a.extend(extra.iter().cloned());
    [
        fixed64(1, time),
        field(5, &s("level done")),
        attrs(6, &a),
        field(9, &TRACE),
        field(10, &SPAN),
        fixed64(11, T + 5),
        field(12, name.as_bytes()),
    ]
    .concat()
}

fn span(name: &str, extra: &[(&str, Vec<u8>)]) -> Vec<u8> {
    [
        field(1, &TRACE),
        field(2, &SPAN),
        field(5, name.as_bytes()),
        fixed64(7, T),
        fixed64(8, T + 1_000_000),
        attrs(9, &[&[("game.user_id", s("u1"))][..], extra].concat()),
    ]
    .concat()
}

/// What a decode produced.
#[derive(Debug)]
struct Out {
    summary: Summary,
    events: Vec<Event>,
    custom: Vec<Event>,
    payments: Vec<Payment>,
}

fn run_with(
    signal: Signal,
    format: Format,
    body: &[u8],
    limits: &Limits,
    patterns: &[String],
) -> Result<Out, DecodeError> {
    let (mut e, mut c, mut p, mut props, mut seen) = Default::default();
    let mut sink = Sink { events: &mut e, custom: &mut c, payments: &mut p, props: &mut props, seen: &mut seen };
    let ctx = Context { game: "g1", limits, spans: SpanEvents { patterns } };
    let mut n = 0u8;
    let mut new_id = || {
        n += 1;
        [n; 16]
    };
    let mut body = body.to_vec();
    let summary = decode(signal, format, &mut body, &ctx, &mut JsonBuffers::default(), &mut new_id, &mut sink)?;
    let (e, c, p): (&EventBatch, &EventBatch, &PaymentBatch) = (&e, &c, &p);
    Ok(Out { summary, events: e.to_events(), custom: c.to_events(), payments: p.as_slice().to_vec() })
}

fn run(signal: Signal, format: Format, body: &[u8]) -> Result<Out, DecodeError> {
    run_with(signal, format, body, &Limits::default(), &[])
}

#[test]
fn a_log_record_maps_onto_every_column() {
    let body = request(
        &resource(),
        &[log("progression.complete", T, &[("nested", kvlist(&[("a", array(&[int(1), double(2.5)]))]))])],
    );
    let out = run(Signal::Logs, Format::Protobuf, &body).expect("decodes");
    assert_eq!(out.summary, Summary { records: 1, accepted: 1, ..Summary::default() });
    assert!(out.custom.is_empty() && out.payments.is_empty());
    let e = &out.events[0];
    assert_eq!(e.ts_ms, 1_795_617_749_123);
    assert_eq!((e.game_id.as_str(), e.env.as_str(), e.event.as_str()), ("g1", "prod", "level_complete"));
    assert_eq!((e.user_id.as_str(), e.session_id.as_str(), e.platform.as_str()), ("u1", "s1", "ios"));
    assert_eq!((e.country.as_str(), e.app_version.as_str(), e.device_id.as_str()), ("DE", "1.2.3", ""));
    assert_eq!(
        e.props,
        r#"{"game.region":"eu-west","progression.level_id":7,"nested":{"a":[1,2.5]},"event.name":"progression.complete","trace_id":"5b8efff798038103d269b633813fc60c","span_id":"eee19b7ec3c1b174","body":"level done"}"#
    );
    // The id is derived from the record's bytes: the same record has the same id.
    let again = run(Signal::Logs, Format::Protobuf, &body).expect("decodes");
    assert_eq!(again.events[0].event_id, e.event_id);
    assert_eq!(e.event_id[6] >> 4, 8);
}

#[test]
fn event_names_come_from_the_field_or_the_attribute_and_other_logs_are_skipped() {
    let by_attr = log("", T, &[("event.name", s("boss_killed"))]);
    let plain = log("", T, &[]);
    let by_type = log("", T, &[("event_type", s("user.login"))]);
    let out = run(Signal::Logs, Format::Protobuf, &request(&resource(), &[by_attr, plain, by_type])).expect("decodes");
    assert_eq!((out.summary.accepted, out.summary.skipped, out.summary.rejected), (2, 1, 0));
    assert_eq!(out.custom[0].event, "boss_killed");
    assert_eq!(out.events[0].event, "login");
}

#[test]
fn observed_time_stands_in_for_a_missing_time() {
    let out =
        run(Signal::Logs, Format::Protobuf, &request(&resource(), &[log("user.login", 0, &[])])).expect("decodes");
    assert_eq!(out.events[0].ts_ms, 1_795_617_749_123);
}

#[test]
fn invalid_records_are_rejected_alone_with_the_first_reason() {
    let records = [
        log("user.login", T, &[]),
        log("user.login", 1_795_617_749, &[]), // seconds, not nanoseconds
        log("user.login", T, &[("game.id", s("g2"))]),
        log("user.login", T, &[("game.country", s("XX"))]),
        log("user.login", T, &[("game.user_id", s(&"u".repeat(300)))]),
        log("user.login", T, &[("game.user_id", array(&[s("a")]))]),
        log("session.start", T, &[]),
    ];
    let out = run(Signal::Logs, Format::Protobuf, &request(&resource(), &records)).expect("decodes");
    assert_eq!((out.summary.records, out.summary.accepted, out.summary.rejected), (7, 2, 5));
    assert_eq!(out.summary.first_rejection, Some((1, "time_unix_nano must be nanoseconds between 2000 and 2100")));
    assert_eq!(out.events.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(), ["login", "session_start"]);
    let no_env = request(&[("game.id", s("g1"))], &[log("user.login", T, &[])]);
    let out = run(Signal::Logs, Format::Protobuf, &no_env).expect("decodes");
    assert_eq!(out.summary.first_rejection, Some((0, "deployment.environment.name is required")));
    // Without game.id the token's game is the record's.
    let no_game = request(&[("deployment.environment", s("dev"))], &[log("user.login", T, &[])]);
    let out = run(Signal::Logs, Format::Protobuf, &no_game).expect("decodes");
    assert_eq!((out.events[0].game_id.as_str(), out.events[0].env.as_str()), ("g1", "dev"));
}

#[test]
fn spans_of_croupier_types_and_configured_patterns_are_events() {
    let spans = [span("session.start", &[]), span("GET /api", &[]), span("match.end", &[]), span("boss.defeated", &[])];
    let body = request(&resource(), &spans);
    let out = run(Signal::Traces, Format::Protobuf, &body).expect("decodes");
    assert_eq!((out.summary.accepted, out.summary.skipped), (2, 2));
    assert_eq!(out.events[0].event, "session_start");
    assert_eq!(out.events[0].ts_ms, 1_795_617_749_123);
    assert_eq!(out.custom[0].event, "match.end");
    let out =
        run_with(Signal::Traces, Format::Protobuf, &body, &Limits::default(), &["boss.*".into()]).expect("decodes");
    assert_eq!((out.summary.accepted, out.summary.skipped), (3, 1));
    assert_eq!(out.custom[1].event, "boss.defeated");
}

#[test]
fn purchase_spans_become_payments() {
    let spans = [
        span(
            "monetization.purchase_success",
            &[
                ("monetization.order_id", s("o-1")),
                ("monetization.price_usd", double(4.99)),
                ("monetization.sku_id", s("gems_100")),
                ("game.platform", s("android")),
                ("game.region", s("eu")),
            ],
        ),
        span(
            "monetization.purchase_fail",
            &[("monetization.order_id", s("o-2")), ("amount_cents", int(500)), ("currency", s("EUR"))],
        ),
        span("monetization.purchase_success", &[("monetization.price_usd", double(1.0))]),
    ];
    let out = run(Signal::Traces, Format::Protobuf, &request(&resource(), &spans)).expect("decodes");
    assert_eq!((out.summary.accepted, out.summary.rejected), (2, 1));
    assert_eq!(out.summary.first_rejection, Some((2, "a payment needs monetization.order_id")));
    let p = &out.payments[0];
    assert_eq!(
        (p.order_id.as_str(), p.amount_cents, p.currency.as_str(), p.status),
        ("o-1", 499, "USD", PaymentStatus::Success)
    );
    assert_eq!(
        (p.user_id.as_str(), p.product_id.as_str(), p.platform.as_str(), p.region.as_str()),
        ("u1", "gems_100", "android", "eu")
    );
    assert_eq!((p.env.as_str(), p.ts_ms), ("prod", 1_795_617_749_123));
    let p = &out.payments[1];
    assert_eq!((p.amount_cents, p.currency.as_str(), p.status), (500, "EUR", PaymentStatus::Failed));
    // amount_cents without a currency, or with one that is not a code: each said as it is.
    for (currency, why) in [
        (None, "a payment with amount_cents needs a currency (monetization.currency or currency)"),
        (Some("eur"), "currency must be three upper-case letters (ISO 4217)"),
    ] {
        let mut attrs = vec![("monetization.order_id", s("o-3")), ("amount_cents", int(500))];
        attrs.extend(currency.map(|c| ("currency", s(c))));
        let out = run(
            Signal::Traces,
            Format::Protobuf,
            &request(&resource(), &[span("monetization.purchase_success", &attrs)]),
        )
        .expect("decodes");
        assert_eq!(out.summary.first_rejection, Some((0, why)), "{currency:?}");
    }
    // amount_cents that is not an integer: said so (it read "needs … amount_cents and
    // currency", both being there).
    let attrs = [("monetization.order_id", s("o-4")), ("amount_cents", s("500")), ("currency", s("EUR"))];
    let out =
        run(Signal::Traces, Format::Protobuf, &request(&resource(), &[span("monetization.purchase_success", &attrs)]))
            .expect("decodes");
    assert_eq!(out.summary.first_rejection, Some((0, "amount_cents must be an integer (intValue)")));
}

/// `monetization.price_usd` is rounded to the cent as a decimal, half away from zero,
/// whether a string or a double (its shortest decimal form); an exponent is not a decimal.
#[test]
fn prices_in_dollars_are_rounded_as_decimals() {
    let price =
        |v| span("monetization.purchase_success", &[("monetization.order_id", s("o")), ("monetization.price_usd", v)]);
    for (v, cents) in [
        (s("1.005"), Some(101)),
        (s("2.675"), Some(268)),
        (s("0.285"), Some(29)),
        (s("19.995"), Some(2000)),
        (s("1.0049999"), Some(100)),
        (s("1.0050000000000000001"), Some(101)),
        (s(" 7 "), Some(700)),
        (s("+0.5"), Some(50)),
        (s(".5"), Some(50)),
        (s("3."), Some(300)),
        (s("0.004"), None),
        (s("-1.00"), None),
        (s("1e2"), None),
        (s("1.2.3"), None),
        (s("."), None),
        (s(""), None),
        (double(1.005), Some(101)),
        (double(0.285), Some(29)),
        (double(4.99), Some(499)),
        (double(1e-7), None),
        (int(3), Some(300)),
    ] {
        let out = run(Signal::Traces, Format::Protobuf, &request(&resource(), &[price(v.clone())])).expect("decodes");
        assert_eq!(out.payments.first().map(|p| p.amount_cents), cents, "{v:?}");
    }
}

#[test]
fn truncated_and_malformed_protobuf_is_refused_cleanly() {
    let body = request(&resource(), &[log("user.login", T, &[("deep", kvlist(&[("a", array(&[int(1)]))]))])]);
    // Every cut is either a smaller valid request or an error; none panics.
    let mut errors = 0;
    for i in 0..body.len() {
        if run(Signal::Logs, Format::Protobuf, &body[..i]).is_err() {
            errors += 1;
        }
    }
    assert!(errors > body.len() / 2, "{errors} of {}", body.len());
    assert_eq!(
        run(Signal::Logs, Format::Protobuf, &body[..body.len() - 1]).err(),
        Some(DecodeError::Wire(WireError::Truncated))
    );
    // A length that runs past the end (an oversized declaration).
    let mut over = vec![0x0a];
    put_varint(&mut over, u64::MAX >> 1);
    over.extend_from_slice(&[0; 8]);
    assert_eq!(run(Signal::Logs, Format::Protobuf, &over).err(), Some(DecodeError::Wire(WireError::Truncated)));
    for (bad, want) in [
        (vec![0x0b, 0x0c], WireError::WireType(3)),
        (vec![0xff; 12], WireError::VarintTooLong),
        (vec![0x08, 1], WireError::UnexpectedType { field: 1 }),
        (field(1, &field(2, &field(2, &field(12, &[0xff, 0xfe])))), WireError::InvalidUtf8),
    ] {
        assert_eq!(run(Signal::Logs, Format::Protobuf, &bad).err(), Some(DecodeError::Wire(want)), "{bad:x?}");
    }
    // Garbage in an unknown field is still refused (it must be well-formed).
    let junk = [field(1, &[field(2, &[field(2, &log("user.login", T, &[])), vec![0x7a, 0x05, 1]].concat())].concat())]
        .concat();
    assert_eq!(run(Signal::Logs, Format::Protobuf, &junk).err(), Some(DecodeError::Wire(WireError::Truncated)));
    // An empty request is a valid one with no records.
    assert_eq!(run(Signal::Logs, Format::Protobuf, &[]).expect("empty").summary, Summary::default());
}

fn nested(levels: usize) -> Vec<u8> {
    let mut v = int(1);
    for _ in 1..levels {
        v = array(&[v]);
    }
    v
}

#[test]
fn deeply_nested_values_are_refused_not_recursed_into() {
    let at = |levels| {
        run(Signal::Logs, Format::Protobuf, &request(&resource(), &[log("user.login", T, &[("n", nested(levels))])]))
    };
    assert!(at(16).is_ok());
    assert_eq!(at(17).err(), Some(DecodeError::TooDeep(16)));
    assert_eq!(at(5_000).err(), Some(DecodeError::TooDeep(16)));
    // In OTLP/JSON too.
    let mut v = r#"{"intValue":"1"}"#.to_owned();
    for _ in 1..17 {
        v = format!(r#"{{"arrayValue":{{"values":[{v}]}}}}"#);
    }
    let body = json_log(&format!(r#",{{"key":"n","value":{v}}}"#));
    assert_eq!(run(Signal::Logs, Format::Json, body.as_bytes()).err(), Some(DecodeError::TooDeep(16)));
    let body = json_log(&format!(r#",{{"key":"n","value":{}}}"#, "[".repeat(200) + &"]".repeat(200)));
    assert_eq!(run(Signal::Logs, Format::Json, body.as_bytes()).err(), Some(DecodeError::JsonTooDeep(76)));
    // The JSON bound is the document's: 76 levels, also in a field that is not read.
    let unread = |levels: usize| {
        let deep = "[".repeat(levels) + &"]".repeat(levels);
        let body = format!(r#"{{"resourceLogs":[{{"scopeLogs":[{{"logRecords":[{{"x":{deep}}}]}}]}}]}}"#);
        run(Signal::Logs, Format::Json, body.as_bytes()).err()
    };
    assert_eq!((unread(69), unread(70)), (None, Some(DecodeError::JsonTooDeep(76))));
    assert_eq!(
        DecodeError::JsonTooDeep(76).to_string(),
        "the JSON body nests deeper than 76 levels, anywhere in it (also in fields not read; AnyValues nested 16 \
         levels fit)"
    );
}

#[test]
fn kvlists_nest_as_deep_in_otlp_json_as_in_protobuf() {
    let pb_kvlist = |levels: usize| {
        let mut v = int(1);
        for _ in 1..levels {
            v = kvlist(&[("k", v)]);
        }
        run(Signal::Logs, Format::Protobuf, &request(&resource(), &[log("user.login", T, &[("n", v)])])).err()
    };
    let json_kvlist = |levels: usize| {
        let mut v = r#"{"intValue":"1"}"#.to_owned();
        for _ in 1..levels {
            v = format!(r#"{{"kvlistValue":{{"values":[{{"key":"k","value":{v}}}]}}}}"#);
        }
        run(Signal::Logs, Format::Json, json_log(&format!(r#",{{"key":"n","value":{v}}}"#)).as_bytes()).err()
    };
    assert_eq!((pb_kvlist(16), json_kvlist(16)), (None, None));
    assert_eq!((pb_kvlist(17), json_kvlist(17)), (Some(DecodeError::TooDeep(16)), Some(DecodeError::TooDeep(16))));
}

#[test]
fn the_event_name_attribute_is_not_checked_when_the_record_has_its_own_name() {
    // A log record with `event_name` and an `event.name` attribute that could not name
    // an event (a double, 300 bytes): the record's own name is used, and it is stored.
    for v in [double(1.5), s(&"x".repeat(300))] {
        let body = request(&resource(), &[log("user.login", T, &[("event.name", v.clone())])]);
        let out = run(Signal::Logs, Format::Protobuf, &body).expect("decodes");
        assert_eq!((out.summary.accepted, out.events[0].event.as_str()), (1, "login"), "{v:x?}");
    }
    // Without `event_name`, the attribute names the event and is checked.
    let rec = [fixed64(1, T), attrs(6, &[("event.name", double(1.5))])].concat();
    let out = run(Signal::Logs, Format::Protobuf, &request(&resource(), &[rec])).expect("decodes");
    assert_eq!(out.summary.first_rejection, Some((0, "a mapped attribute must be a string or an integer")));
    assert_eq!(out.summary.first_attribute, "event.name");
    // The attribute a rejection is about is named, as sent (`user.id`, not the slot).
    let rec = [fixed64(1, T), attrs(6, &[("user.id", s(&"u".repeat(300)))]), field(12, b"user.login")].concat();
    let out = run(Signal::Logs, Format::Protobuf, &request(&resource(), &[rec])).expect("decodes");
    assert_eq!(
        (out.summary.first_rejection, out.summary.first_attribute),
        (Some((0, "a mapped attribute is longer than 256 bytes")), "user.id")
    );
}

#[test]
fn too_many_records_refuse_the_request() {
    let limits = Limits { max_records: 2, ..Limits::default() };
    let recs = vec![log("user.login", T, &[]); 3];
    let r = run_with(Signal::Logs, Format::Protobuf, &request(&resource(), &recs), &limits, &[]);
    assert_eq!(r.err(), Some(DecodeError::TooManyRecords(2)));
}

#[test]
fn records_that_are_not_events_do_not_count_against_the_limit() {
    let limits = Limits { max_records: 2, ..Limits::default() };
    let plain = [fixed64(1, T), field(5, &s("a debug line"))].concat();
    let mut recs = vec![plain; 50];
    recs.push(log("user.login", T, &[]));
    recs.push(log("user.logout", T, &[]));
    let out = run_with(Signal::Logs, Format::Protobuf, &request(&resource(), &recs), &limits, &[]).expect("decodes");
    assert_eq!(out.summary, Summary { records: 52, accepted: 2, skipped: 50, ..Summary::default() });
}

/// A request of `resources`, each with one scope per name in `scopes` holding `records`.
fn request_of(resources: &[Vec<(&str, Vec<u8>)>], scopes: &[&str], records: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in resources {
        let mut rl = field(1, &attrs(1, r));
        for name in scopes {
            let sl =
                [field(1, &field(1, name.as_bytes())), records.iter().flat_map(|x| field(2, x)).collect()].concat();
            rl.extend(field(2, &sl));
        }
        out.extend(field(1, &rl));
    }
    out
}

#[test]
fn equal_log_records_from_different_resources_or_scopes_are_distinct_events() {
    // The player is on the resource: the records' own bytes are equal.
    let player = |u: &str| [resource(), vec![("game.user_id", s(u))]].concat();
    let rec = [fixed64(1, T), field(12, b"user.login")].concat();
    let body = request_of(&[player("u1"), player("u2")], &["a", "b"], &[rec]);
    let out = run(Signal::Logs, Format::Protobuf, &body).expect("decodes");
    let ids: std::collections::HashSet<[u8; 16]> = out.events.iter().map(|e| e.event_id).collect();
    assert_eq!((out.events.len(), ids.len()), (4, 4));
    // And a retry of the same request gives the same ids.
    let again = run(Signal::Logs, Format::Protobuf, &body).expect("decodes");
    assert!(again.events.iter().zip(&out.events).all(|(a, b)| a.event_id == b.event_id));
}

/// The events' ids in hex, in order.
fn hex_ids(out: &Out) -> Vec<String> {
    out.events.iter().map(|e| e.event_id.iter().map(|b| format!("{b:02x}")).collect()).collect()
}

/// The ids of protobuf log records are what earlier versions gave them: an exporter's
/// retry across an upgrade adds no rows.
#[test]
fn log_record_ids_are_those_of_earlier_versions() {
    let player = |u: &str| [resource(), vec![("game.user_id", s(u))]].concat();
    let rec = [fixed64(1, T), field(12, b"user.login")].concat();
    let body = request_of(&[player("u1"), player("u2")], &["a", "b"], &[rec.clone(), rec]);
    let out = run(Signal::Logs, Format::Protobuf, &body).expect("decodes");
    let ids = hex_ids(&out);
    let want = [
        "4a56d185caa78752a665c594b1f4d56b",
        "ebe75181e2348a44ad7be7b6898fedff",
        "ba4469c724cc8e769858cabc96a9acdf",
        "d34cac8f10068f5e8d7d17b55b392ce0",
        "13c7a81c54f080718daadeac3ba3779f",
        "f1528295d75a8600a02aa18947971bb2",
        "8136f764f07a8d4799654e3b0cb28538",
        "0df6b70f43968d6fb919643f2a32aa8c",
    ];
    assert_eq!(ids, want);
    // Fields in other orders and repeated: the scope after its records, a second resource
    // message (the last counts), a scope with no scope message, empty scopes around.
    let rec = [fixed64(1, T), field(12, b"user.login"), attrs(6, &[("game.user_id", s("u9"))])].concat();
    let scope_after = [field(2, &rec), field(1, &field(1, b"late"))].concat();
    let no_scope = field(2, &rec);
    let resource_logs = [
        field(2, &[]),
        field(1, &attrs(1, &[("game.user_id", s("ignored"))])),
        field(2, &scope_after),
        field(1, &attrs(1, &resource())),
        field(2, &no_scope),
        field(2, &[]),
    ]
    .concat();
    let out = run(Signal::Logs, Format::Protobuf, &field(1, &resource_logs)).expect("decodes");
    let ids = hex_ids(&out);
    assert_eq!(ids, ["7d1c549a47278da99953166e7585d897", "bd0d9d4d2b60854ab325218b96e0d51a"]);
}

#[test]
fn identical_log_records_in_one_request_are_distinct_events_a_retry_reproduces() {
    // Impressions of the same user at the same nanosecond, twice in each of two equal
    // scopes: the k-th repeat of the same bytes under the same resource and scope gets
    // its own id.
    let body = request_of(&[resource()], &["a", "a"], &[impression(), impression()]);
    let out = run(Signal::Logs, Format::Protobuf, &body).expect("decodes");
    let ids: std::collections::HashSet<[u8; 16]> = out.events.iter().map(|e| e.event_id).collect();
    assert_eq!((out.summary.accepted, out.events.len(), ids.len()), (4, 4, 4));
    let again = run(Signal::Logs, Format::Protobuf, &body).expect("decodes");
    assert!(again.events.iter().zip(&out.events).all(|(a, b)| a.event_id == b.event_id));
    // A request of one such record keeps the id it had before repeats were numbered.
    let one =
        run(Signal::Logs, Format::Protobuf, &request_of(&[resource()], &["a"], &[impression()])).expect("decodes");
    assert_eq!(one.events[0].event_id, out.events[0].event_id);
}

/// An `ad.impression` log record of user `u1`.
fn impression() -> Vec<u8> {
    [fixed64(1, T), attrs(6, &[("game.user_id", s("u1"))]), field(12, b"ad.impression")].concat()
}

fn json_log(extra_attrs: &str) -> String {
    format!(
        r#"{{"resourceLogs":[{{"resource":{{"attributes":[
        {{"key":"game.id","value":{{"stringValue":"g1"}}}},
        {{"key":"deployment.environment.name","value":{{"stringValue":"prod"}}}},
        {{"key":"service.version","value":{{"stringValue":"9.9.9"}}}}]}},
        "scopeLogs":[{{"scope":{{"name":"x"}},"logRecords":[{{
        "timeUnixNano":"{T}","observedTimeUnixNano":"{}","eventName":"progression.complete",
        "body":{{"stringValue":"level done"}},
        "traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
        "attributes":[
        {{"key":"game.user_id","value":{{"stringValue":"u1"}}}},
        {{"key":"game.session_id","value":{{"stringValue":"s1"}}}},
        {{"key":"game.platform","value":{{"stringValue":"ios"}}}},
        {{"key":"game.region","value":{{"stringValue":"eu-west"}}}},
        {{"key":"game.country","value":{{"stringValue":"de"}}}},
        {{"key":"game.app_version","value":{{"stringValue":"1.2.3"}}}},
        {{"key":"progression.level_id","value":{{"intValue":"7"}}}},
        {{"key":"nested","value":{{"kvlistValue":{{"values":[{{"key":"a","value":{{"arrayValue":{{"values":[{{"intValue":1}},{{"doubleValue":2.5}}]}}}}}}]}}}}}}
        {extra_attrs}]}}]}}]}}]}}"#,
        T + 5
    )
}

#[test]
fn otlp_json_maps_like_protobuf() {
    let pb = request(
        &resource(),
        &[log("progression.complete", T, &[("nested", kvlist(&[("a", array(&[int(1), double(2.5)]))]))])],
    );
    let from_pb = run(Signal::Logs, Format::Protobuf, &pb).expect("decodes");
    let from_json = run(Signal::Logs, Format::Json, json_log("").as_bytes()).expect("decodes");
    let (mut a, b) = (from_pb.events[0].clone(), &from_json.events[0]);
    // JSON log records carry no bytes to derive an id from: they get a new one.
    assert_eq!(b.event_id, [1; 16]);
    a.event_id = b.event_id;
    assert_eq!(&a, b);
    // A span has the same id in both encodings (from its trace and span ids).
    let span_json = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"deployment.environment.name","value":{"stringValue":"prod"}}]},
      "scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"user.login",
      "startTimeUnixNano":1795617749123456789,"attributes":[{"key":"game.user_id","value":{"stringValue":"u1"}}]}]}]}]}"#;
    let j = run(Signal::Traces, Format::Json, span_json.as_bytes()).expect("decodes");
    let p = run(
        Signal::Traces,
        Format::Protobuf,
        &request(&[("deployment.environment.name", s("prod"))], &[span("user.login", &[])]),
    )
    .expect("decodes");
    assert_eq!(j.events, p.events);
    assert_eq!(j.events[0].event, "login");
}

#[test]
fn proto3_json_nulls_and_doubles_as_strings_are_read_as_protobuf_json_allows() {
    let t = 1_795_617_749_123_456_789u64;
    let dv = |k: &str, v: &str| format!(r#"{{"key":"{k}","value":{{"doubleValue":{v}}}}}"#);
    let attrs = [
        dv("nan", r#""NaN""#),
        dv("inf", r#""Infinity""#),
        dv("ninf", r#""-Infinity""#),
        dv("s", r#""1.5""#),
        dv("none", "null"),
        dv("n", "2"),
        r#"{"key":"arr","value":{"arrayValue":{"values":null}}}"#.to_owned(),
        r#"{"key":"kv","value":{"kvlistValue":{"values":null}}}"#.to_owned(),
    ];
    let body = format!(
        r#"{{"resourceLogs":[{{"resource":null,"scopeLogs":[{{"logRecords":[{{"timeUnixNano":"{t}","eventName":"boss_killed",
        "traceId":null,"spanId":null,"observedTimeUnixNano":null,"body":null,"attributes":[
        {{"key":"deployment.environment.name","value":{{"stringValue":"prod"}}}},{}]}},
        {{"timeUnixNano":"{t}","eventName":null,"attributes":[{{"key":"event.name","value":{{"stringValue":"x","intValue":null}}}},
        {{"key":"deployment.environment.name","value":{{"stringValue":"prod"}}}}]}}]}}]}}]}}"#,
        attrs.join(",")
    );
    let out = run(Signal::Logs, Format::Json, body.as_bytes()).expect("decodes");
    assert_eq!((out.summary.accepted, out.summary.rejected), (2, 0), "{:?}", out.summary);
    // NaN and the infinities are null in props, as from protobuf; a null value is no value.
    assert_eq!(
        out.custom[0].props,
        r#"{"nan":null,"inf":null,"ninf":null,"s":1.5,"none":null,"n":2,"arr":[],"kv":{}}"#
    );
    assert_eq!(out.custom[1].event, "x");
    for bad in [
        r#""inf""#,
        r#""1.5x""#,
        "true",
        r#"" 1.5""#,
        r#""1.5 ""#,
        r#""+1.5""#,
        r#"".5""#,
        r#""1.""#,
        r#""01""#,
        r#""1e""#,
    ] {
        let body = body.replace(r#"{"doubleValue":"1.5"}"#, &format!(r#"{{"doubleValue":{bad}}}"#));
        assert!(run(Signal::Logs, Format::Json, body.as_bytes()).is_err(), "{bad}");
    }
    // A oneof holds one value; bytes are base64 (one alphabet, padded right or not), and
    // stored as protobuf's bytes are (standard, padded).
    for (value, ok) in [
        (r#"{"stringValue":"a","intValue":"3"}"#, false),
        (r#"{"doubleValue":"-0.5e+3"}"#, true),
        (r#"{"doubleValue":"0"}"#, true),
        (r#"{"bytesValue":"!!!"}"#, false),
        (r#"{"bytesValue":"QUJD"}"#, true),
        (r#"{"bytesValue":"QUI="}"#, true),
        (r#"{"bytesValue":"QUI"}"#, true),
        (r#"{"bytesValue":"-_-_"}"#, true),
        (r#"{"bytesValue":"Q"}"#, false),
        (r#"{"bytesValue":"QUI==="}"#, false),
        (r#"{"bytesValue":"QUI=="}"#, false),
        (r#"{"bytesValue":"QQ=="}"#, true),
        (r#"{"bytesValue":"QQ="}"#, false),
        (r#"{"bytesValue":"QQ"}"#, true),
        (r#"{"bytesValue":"_-8="}"#, true),
        (r#"{"bytesValue":"_-8=="}"#, false),
        (r#"{"bytesValue":"QUJD="}"#, false),
        (r#"{"bytesValue":"="}"#, false),
        (r#"{"bytesValue":"+/-_"}"#, false),
    ] {
        let body = body.replace(r#"{"doubleValue":"1.5"}"#, value);
        assert_eq!(run(Signal::Logs, Format::Json, body.as_bytes()).is_ok(), ok, "{value}");
    }
    let body = body.replace(r#"{"doubleValue":"1.5"}"#, r#"{"bytesValue":"-_8"}"#);
    let out = run(Signal::Logs, Format::Json, body.as_bytes()).expect("URL-safe, unpadded");
    assert!(out.custom[0].props.contains(r#""s":"+/8=""#), "{}", out.custom[0].props);
}

/// Integers as proto3 JSON (Go's `protojson`) reads them: a JSON number or a string
/// holding one, whole — an exponent or a fraction of zeros allowed — and nothing else:
/// no `+`, no spaces, no fraction that is not zeros. An attribute's key is a string.
#[test]
fn otlp_json_integers_are_read_as_protojson_reads_them() {
    let t = 1_795_617_749_123_456_789u64;
    let body = |time: &str, int: &str| {
        format!(
            r#"{{"resourceLogs":[{{"scopeLogs":[{{"logRecords":[{{"timeUnixNano":{time},"eventName":"boss_killed","attributes":[
            {{"key":"deployment.environment.name","value":{{"stringValue":"prod"}}}},{{"key":"n","value":{{"intValue":{int}}}}}]}}]}}]}}]}}"#
        )
    };
    let read = |time: &str, int: &str| run(Signal::Logs, Format::Json, body(time, int).as_bytes());
    for (int, props) in [
        ("7", r#"{"n":7}"#),
        (r#""-7""#, r#"{"n":-7}"#),
        (r#""7.0""#, r#"{"n":7}"#),
        (r#""7e3""#, r#"{"n":7000}"#),
        (r#""70e-1""#, r#"{"n":7}"#),
        ("7.0", r#"{"n":7}"#),
        ("7E2", r#"{"n":700}"#),
        (r#""-9223372036854775808""#, r#"{"n":-9223372036854775808}"#),
        ("-9223372036854775808", r#"{"n":-9223372036854775808}"#),
        ("9223372036854775807", r#"{"n":9223372036854775807}"#),
        (r#""0.0e-999999""#, r#"{"n":0}"#),
        (r#""700e-2""#, r#"{"n":7}"#),
        (r#""100.000e-2""#, r#"{"n":1}"#),
    ] {
        let out = read(&format!(r#""{t}""#), int).unwrap_or_else(|e| panic!("{int}: {e:?}"));
        assert_eq!(out.custom[0].props, props, "{int}");
    }
    for int in [
        r#""+7""#,
        r#"" 7""#,
        r#""7 ""#,
        r#""7.5""#,
        "7.5",
        r#""7e-1""#,
        r#""7.00e-2""#,
        r#""1e-9223372036854775808""#,
        r#""9223372036854775808""#,
        // Past int64 as bare numbers: read as doubles, which round into range (review
        // finding: -9223372036854775809 was stored as -2^63).
        "9223372036854775808",
        "-9223372036854775809",
        "-9223372036854776832",
        "-9223372036854776833",
        "18446744073709551616",
        r#""1e40""#,
        r#""0x10""#,
        r#""07""#,
    ] {
        assert!(read(&format!(r#""{t}""#), int).is_err(), "{int}");
    }
    // Times (fixed64): a string with an exponent keeps every digit; a number goes through a
    // double (1.7e18 is one exactly).
    for (time, want) in [
        (format!(r#""{t}""#), t),
        (r#""1.795617749123456789e18""#.to_owned(), t),
        ("1.7e18".to_owned(), 1_700_000_000_000_000_000),
    ] {
        let out = read(&time, "1").unwrap_or_else(|e| panic!("{time}: {e:?}"));
        assert_eq!(out.custom[0].ts_ms, i64::try_from(want / 1_000_000).unwrap_or(0), "{time}");
    }
    for time in [r#""+1795617749123456789""#, r#""-1""#, "-1", r#""18446744073709551616""#] {
        assert!(read(time, "1").is_err(), "{time}");
    }
    // An attribute's key: a string (absent or null: the empty key), else refused.
    let keyed = |key: &str| {
        body(&format!(r#""{t}""#), "1").replace(r#"{"key":"n","value""#, &format!(r#"{{"key":{key},"value""#))
    };
    assert!(run(Signal::Logs, Format::Json, keyed("5").as_bytes()).is_err());
    assert!(run(Signal::Logs, Format::Json, keyed("null").as_bytes()).is_ok());
}

#[test]
fn bad_otlp_json_is_refused() {
    for (body, want) in [
        ("{", "malformed"),
        ("[1]", "not OTLP/JSON: the body must be an object"),
        (r#"{"resourceLogs":{}}"#, "not OTLP/JSON: a repeated field must be an array"),
        (
            r#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"timeUnixNano":"soon"}]}]}]}"#,
            "not OTLP/JSON: a time must",
        ),
        (
            r#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"attributes":[{"key":"k","value":{"intValue":"x"}}]}]}]}]}"#,
            "intValue",
        ),
        // A field given twice: refused at every level, as Go's protojson refuses it.
        (r#"{"resourceLogs":[],"resourceLogs":[]}"#, "given twice"),
        (r#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"eventName":"a","eventName":"b"}]}]}]}"#, "given twice"),
        (
            r#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"attributes":[{"key":"k","key":"j","value":{}}]}]}]}]}"#,
            "given twice",
        ),
        (
            r#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":{"stringValue":"a","stringValue":"b"}}]}]}]}"#,
            "given twice",
        ),
        // Past the pairwise comparison's size, through the set: the same answer.
        (
            &format!(
                r#"{{"resourceLogs":[{{{}"scopeLogs":[],"x7":1}}]}}"#,
                (0..40).map(|i| format!(r#""x{i}":1,"#)).collect::<String>()
            ),
            "given twice",
        ),
    ] {
        match run(Signal::Logs, Format::Json, body.as_bytes()) {
            Err(e) => assert!(e.to_string().contains(want) || want == "malformed", "{body}: {e}"),
            Ok(o) => panic!("{body}: decoded {o:?}"),
        }
    }
    assert_eq!(run(Signal::Logs, Format::Json, b"{}").expect("empty").summary, Summary::default());
}

#[test]
fn non_ascii_hex_ids_are_bad_ids_not_a_panic() {
    // A multi-byte character where the hex decoder's cut would fall (`€` is 3 bytes: the
    // first 2 end inside it). The span is still an event; its id is derived, not decoded.
    for id in ["€", "a€", "€€", "0€1", "ééééééééééééééééééééééééééééééééé"] {
        for field in ["spanId", "traceId"] {
            let body = format!(
                r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"deployment.environment.name","value":{{"stringValue":"prod"}}}}]}},
                "scopeSpans":[{{"spans":[{{"name":"session.start","startTimeUnixNano":"1764676800000000000","{field}":"{id}",
                "attributes":[{{"key":"game.user_id","value":{{"stringValue":"u1"}}}}]}}]}}]}}]}}"#
            );
            let out = run(Signal::Traces, Format::Json, body.as_bytes());
            assert!(out.is_ok(), "{field} {id:?}: {:?}", out.err());
        }
    }
}

/// A span with the given trace and span ids (protobuf bytes).
fn span_with_ids(trace: &[u8], span_id: &[u8]) -> Vec<u8> {
    [field(1, trace), field(2, span_id), field(5, b"user.login"), fixed64(7, T), attrs(9, &[("game.user_id", s("u1"))])]
        .concat()
}

#[test]
fn spans_with_wrongly_sized_ids_are_distinct_events_without_ids_in_props() {
    // OTLP: a trace id of another length than 16 bytes, or a span id of other than 8,
    // is invalid, as an empty or all-zero one is: the span keeps its own new id.
    let env = [("deployment.environment.name", s("prod"))];
    let only_span = r#"{"event.name":"user.login","span_id":"eee19b7ec3c1b174"}"#;
    let only_trace = r#"{"event.name":"user.login","trace_id":"5b8efff798038103d269b633813fc60c"}"#;
    for (trace, span_id, props) in [
        (&[1u8][..], &[1u8][..], r#"{"event.name":"user.login"}"#),
        (&TRACE[..15], &SPAN[..], only_span),
        (&TRACE[..], &SPAN[..7], only_trace),
    ] {
        let spans = vec![span_with_ids(trace, span_id); 3];
        let out = run(Signal::Traces, Format::Protobuf, &request(&env, &spans)).expect("decodes");
        let ids: std::collections::HashSet<[u8; 16]> = out.events.iter().map(|e| e.event_id).collect();
        assert_eq!((out.events.len(), ids.len()), (3, 3), "{trace:x?} {span_id:x?}");
        assert_eq!(out.events[0].props, props, "{trace:x?} {span_id:x?}");
    }
    // The same over OTLP/JSON with short hex, and with hex that is not hex at all.
    for (trace, span_id, props) in [
        ("01", "01", r#"{"event.name":"user.login"}"#),
        ("5b8efff798038103d269b633813fc6", "eee19b7ec3c1b174", only_span),
        ("5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b17z", only_trace),
        ("zz", "yy", r#"{"event.name":"user.login"}"#),
    ] {
        let one = format!(
            r#"{{"traceId":"{trace}","spanId":"{span_id}","name":"user.login","startTimeUnixNano":"{T}",
            "attributes":[{{"key":"game.user_id","value":{{"stringValue":"u1"}}}}]}}"#
        );
        let body = format!(
            r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"deployment.environment.name","value":{{"stringValue":"prod"}}}}]}},
            "scopeSpans":[{{"spans":[{one},{one},{one}]}}]}}]}}"#
        );
        let out = run(Signal::Traces, Format::Json, body.as_bytes()).expect("decodes");
        let ids: std::collections::HashSet<[u8; 16]> = out.events.iter().map(|e| e.event_id).collect();
        assert_eq!((out.events.len(), ids.len()), (3, 3), "{trace} {span_id}");
        assert_eq!(out.events[0].props, props, "{trace} {span_id}");
    }
    // Valid ids in upper-case hex are the same ids as in protobuf, written in lower case.
    let body = format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"deployment.environment.name","value":{{"stringValue":"prod"}}}}]}},
        "scopeSpans":[{{"spans":[{{"traceId":"5B8EFFF798038103D269B633813FC60C","spanId":"EEE19B7EC3C1B174","name":"user.login",
        "startTimeUnixNano":"{T}","attributes":[{{"key":"game.user_id","value":{{"stringValue":"u1"}}}}]}}]}}]}}]}}"#
    );
    let j = run(Signal::Traces, Format::Json, body.as_bytes()).expect("decodes");
    let p = run(Signal::Traces, Format::Protobuf, &request(&env, &[span_with_ids(&TRACE, &SPAN)])).expect("decodes");
    assert_eq!(j.events, p.events);
    assert_eq!(
        p.events[0].props,
        r#"{"event.name":"user.login","trace_id":"5b8efff798038103d269b633813fc60c","span_id":"eee19b7ec3c1b174"}"#
    );
}

#[test]
fn log_records_with_wrongly_sized_or_non_hex_ids_leave_them_out_of_props() {
    let rec = |trace: &[u8], span_id: &[u8]| {
        [fixed64(1, T), field(9, trace), field(10, span_id), field(12, b"user.login")].concat()
    };
    let body = request(&resource(), &[rec(&[7], &[7, 7])]);
    let out = run(Signal::Logs, Format::Protobuf, &body).expect("decodes");
    assert_eq!(out.events[0].props, r#"{"event.name":"user.login"}"#);
    let json = json_log("").replace("5b8efff798038103d269b633813fc60c", "not-hex").replace("eee19b7ec3c1b174", "abc");
    let out = run(Signal::Logs, Format::Json, json.as_bytes()).expect("decodes");
    assert!(
        !out.events[0].props.contains("trace_id") && !out.events[0].props.contains("span_id"),
        "{}",
        out.events[0].props
    );
}

#[test]
fn a_repeated_attribute_key_is_written_once_the_last_value_at_its_place() {
    let extra = [
        ("k", s("first")),
        ("game.region", s("eu")),
        ("x", int(1)),
        ("k", kvlist(&[("k", s("nested keys are values"))])),
        ("game.region", s("us")),
        ("k", s("last")),
        ("game.user_id", s("u9")),
    ];
    let rec = [fixed64(1, T), attrs(6, &extra), field(12, b"boss_killed")].concat();
    let out = run(Signal::Logs, Format::Protobuf, &request(&resource(), &[rec])).expect("decodes");
    let want = r#"{"x":1,"game.region":"us","k":"last"}"#;
    assert_eq!((out.custom[0].props.as_str(), out.custom[0].user_id.as_str()), (want, "u9"));
    // OTLP/JSON by the same rule.
    let kvs = r#",{"key":"k","value":{"stringValue":"first"}},{"key":"x","value":{"intValue":1}},{"key":"k","value":{"stringValue":"last"}},{"key":"game.user_id","value":{"stringValue":"u9"}}"#;
    let out = run(Signal::Logs, Format::Json, json_log(kvs).as_bytes()).expect("decodes");
    assert_eq!(out.events[0].user_id, "u9");
    assert_eq!(
        out.events[0].props,
        r#"{"game.region":"eu-west","progression.level_id":7,"nested":{"a":[1,2.5]},"x":1,"k":"last","event.name":"progression.complete","trace_id":"5b8efff798038103d269b633813fc60c","span_id":"eee19b7ec3c1b174","body":"level done"}"#
    );
    // The record's own trace and span ids and body win over attributes of those names.
    let named = [("trace_id", s("t")), ("body", s("b")), ("span_id", int(3)), ("y", s("a,\"b\":{"))];
    let rec = [fixed64(1, T), field(5, &s("the body")), attrs(6, &named), field(9, &TRACE), field(12, b"boss_killed")]
        .concat();
    let out = run(Signal::Logs, Format::Protobuf, &request(&resource(), &[rec])).expect("decodes");
    assert_eq!(
        out.custom[0].props,
        r#"{"span_id":3,"y":"a,\"b\":{","trace_id":"5b8efff798038103d269b633813fc60c","body":"the body"}"#
    );
}

/// A log record named `boss_killed` with `attrs` as raw `KeyValue` messages.
fn log_with_raw_attrs(kvs: &[Vec<u8>]) -> Vec<u8> {
    [fixed64(1, T), kvs.iter().flat_map(|kv| field(6, kv)).collect(), field(12, b"boss_killed")].concat()
}

/// The props of the one custom event a request of `records` maps to.
fn props_of(records: &[Vec<u8>]) -> Result<String, DecodeError> {
    let out = run(Signal::Logs, Format::Protobuf, &request(&resource(), records))?;
    assert_eq!(out.summary.accepted, 1, "{:?}", out.summary);
    Ok(out.custom[0].props.clone())
}

#[test]
fn an_invalid_utf8_attribute_key_refuses_the_request() {
    // Fast path (one-byte lengths, key then value), long key (two-byte length), value
    // first, a resource attribute, and a record that is no event: all refused.
    let bad = [0xff, 0xfe, b'k'];
    let long_bad = [&[0xc3u8][..], &[b'k'; 200]].concat();
    for kv in [
        [field(1, &bad), field(2, &s("v"))].concat(),
        [field(1, &long_bad), field(2, &s("v"))].concat(),
        [field(2, &s("v")), field(1, &bad)].concat(),
        // Bytes that start like a slot's name.
        [field(1, b"game.us\xffr_id"), field(2, &s("v"))].concat(),
    ] {
        let got = run(
            Signal::Logs,
            Format::Protobuf,
            &request(&resource(), &[log_with_raw_attrs(std::slice::from_ref(&kv))]),
        );
        assert_eq!(got.err(), Some(DecodeError::Wire(WireError::InvalidUtf8)), "{kv:x?}");
        let plain = [fixed64(1, T), field(6, &kv)].concat();
        let got = run(Signal::Logs, Format::Protobuf, &request(&resource(), &[plain]));
        assert_eq!(got.err(), Some(DecodeError::Wire(WireError::InvalidUtf8)), "not an event: {kv:x?}");
    }
    let res = [("deployment.environment.name", s("prod"))];
    let mut body = request(&res, &[log("user.login", T, &[])]);
    // The resource's first key, `deployment.environment.name`, made invalid in place.
    let at = body.windows(10).position(|w| w == b"deployment").expect("key");
    body[at] = 0xff;
    assert_eq!(run(Signal::Logs, Format::Protobuf, &body).err(), Some(DecodeError::Wire(WireError::InvalidUtf8)));
    // And an invalid value string the same way (fast path and long).
    for v in [field(1, &[0xff]), field(1, &[&[0xffu8][..], &[b'v'; 130]].concat())] {
        let kv = [field(1, b"k"), field(2, &v)].concat();
        let got = run(Signal::Logs, Format::Protobuf, &request(&resource(), &[log_with_raw_attrs(&[kv])]));
        assert_eq!(got.err(), Some(DecodeError::Wire(WireError::InvalidUtf8)));
    }
}

#[test]
fn key_value_fields_in_any_order_split_or_with_unknown_fields_read_alike() {
    let want = props_of(&[log_with_raw_attrs(&[kv("k", &s("v")), kv("game.region", &int(5))])]).expect("decodes");
    assert_eq!(want, r#"{"k":"v","game.region":5}"#);
    let unknown = |n: u32| {
        let mut out = Vec::new();
        put_tag(&mut out, n, 0);
        put_varint(&mut out, 300);
        out.extend(fixed64(n + 1, 7));
        put_tag(&mut out, n + 2, 5);
        out.extend_from_slice(&[1, 2, 3, 4]);
        out.extend(field(n + 3, b"junk"));
        out
    };
    for kvs in [
        // Value first.
        [[field(2, &s("v")), field(1, b"k")].concat(), [field(2, &int(5)), field(1, b"game.region")].concat()],
        // Unknown fields of every wire type around and between.
        [
            [unknown(3), field(1, b"k"), unknown(7), field(2, &s("v")), unknown(11)].concat(),
            [field(1, b"game.region"), unknown(20), field(2, &[unknown(9), int(5)].concat())].concat(),
        ],
        // A field given twice: the last wins (protobuf's rule for scalars and oneofs).
        [
            [field(1, b"x"), field(2, &s("w")), field(1, b"k"), field(2, &s("v"))].concat(),
            [field(1, b"game.region"), field(2, &[s("five"), int(5)].concat())].concat(),
        ],
    ] {
        assert_eq!(props_of(&[log_with_raw_attrs(&kvs)]).expect("decodes"), want, "{kvs:x?}");
    }
    // Unknown fields at every level of the request.
    let rec = [unknown(30), log_with_raw_attrs(&[kv("k", &s("v")), kv("game.region", &int(5))])].concat();
    let scope = [unknown(3), field(2, &rec), unknown(3)].concat();
    let rl = [unknown(3), field(1, &[unknown(2), attrs(1, &resource())].concat()), field(2, &scope)].concat();
    let body = [unknown(2), field(1, &rl), unknown(2)].concat();
    let out = run(Signal::Logs, Format::Protobuf, &body).expect("decodes");
    assert_eq!((out.custom[0].props.as_str(), out.custom[0].env.as_str()), (want.as_str(), "prod"));
}

/// `bytes` as field `n` with its length written as a varint of at least `len_bytes`
/// bytes (longer than needed: protobuf readers take non-minimal varints).
fn field_padded(n: u32, bytes: &[u8], len_bytes: usize) -> Vec<u8> {
    let mut out = Vec::new();
    put_tag(&mut out, n, 2);
    let mut len = bytes.len();
    let min = (1..10).find(|b| len < 1 << (7 * b)).unwrap_or(10);
    for _ in 1..len_bytes.max(min) {
        out.push((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend_from_slice(bytes);
    out
}

#[test]
fn one_and_two_byte_lengths_and_127_and_128_byte_strings_read_alike() {
    for n in [1usize, 126, 127, 128, 129, 300] {
        let key = "k".repeat(n);
        let val = "v".repeat(n);
        let want = format!(r#"{{"{key}":"{val}"}}"#);
        for lb in [1, 2, 3] {
            let kv = [field_padded(1, key.as_bytes(), lb), field_padded(2, &field_padded(1, val.as_bytes(), lb), lb)]
                .concat();
            let got = props_of(&[log_with_raw_attrs(&[kv])]).expect("decodes");
            assert_eq!(got, want, "{n} bytes, lengths of at least {lb} bytes");
        }
    }
    // A mapped field of 256 bytes is taken, 257 rejected; an event name of 128 bytes is
    // taken (its length two bytes), 129 rejected.
    let user = |n: usize| log("user.login", T, &[("game.user_id", s(&"u".repeat(n)))]);
    let named = |n: usize| log(&"e".repeat(n), T, &[]);
    let out =
        run(Signal::Logs, Format::Protobuf, &request(&resource(), &[user(256), user(257), named(128), named(129)]))
            .expect("decodes");
    assert_eq!((out.summary.accepted, out.summary.rejected), (2, 2));
    assert_eq!((out.events[0].user_id.len(), out.custom[0].event.len()), (256, 128));
    // One- and two-byte varints of integers.
    for i in [0i64, 1, 127, 128, 16_383, 16_384, -1, i64::MAX] {
        let got = props_of(&[log_with_raw_attrs(&[kv("i", &int(i))])]).expect("decodes");
        assert_eq!(got, format!(r#"{{"i":{i}}}"#));
    }
}

#[test]
fn errors_in_values_are_held_for_records_that_store_props() {
    let deep = || ("n", nested(17));
    // A malformed nested value: an array whose element runs past its end.
    let broken = || ("b", field(5, &[0x0a, 0x09, 0x0a]));
    for attr in [deep(), broken()] {
        let want = match attr.0 {
            "n" => DecodeError::TooDeep(16),
            _ => DecodeError::Wire(WireError::Truncated),
        };
        // No event: skipped, the request taken.
        let plain = [fixed64(1, T), attrs(6, std::slice::from_ref(&attr))].concat();
        let out = run(Signal::Logs, Format::Protobuf, &request(&resource(), &[plain, log("user.login", T, &[])]))
            .expect("decodes");
        assert_eq!((out.summary.skipped, out.summary.accepted), (1, 1));
        // A span that is no event, and a payment: props are not stored, the value unread.
        let spans = [
            span("GET /x", std::slice::from_ref(&attr)),
            span(
                "monetization.purchase_success",
                &[attr.clone(), ("monetization.order_id", s("o")), ("monetization.price_usd", double(1.5))],
            ),
        ];
        let out = run(Signal::Traces, Format::Protobuf, &request(&resource(), &spans)).expect("decodes");
        assert_eq!((out.summary.skipped, out.summary.accepted, out.payments.len()), (1, 1, 1));
        // A log record named by an attribute that is a payment: the same.
        let pay = [
            fixed64(1, T),
            attrs(
                6,
                &[
                    attr.clone(),
                    ("event.name", s("monetization.purchase_success")),
                    ("game.user_id", s("u")),
                    ("monetization.order_id", s("o")),
                    ("monetization.price_usd", int(2)),
                ],
            ),
        ]
        .concat();
        let out = run(Signal::Logs, Format::Protobuf, &request(&resource(), &[pay])).expect("decodes");
        assert_eq!(out.payments.len(), 1);
        // An event that stores props: the request is refused, whichever way it is named
        // and wherever the value is.
        for rec in [
            log("user.login", T, std::slice::from_ref(&attr)),
            [fixed64(1, T), attrs(6, &[attr.clone(), ("event.name", s("boss"))])].concat(),
            [fixed64(1, T), attrs(6, &[("event_type", s("boss")), attr.clone()])].concat(),
        ] {
            let got = run(Signal::Logs, Format::Protobuf, &request(&resource(), &[rec]));
            assert_eq!(got.err(), Some(want.clone()));
        }
        // An event that is rejected for another reason first: rejected, not refused.
        let late = log("user.login", 5, std::slice::from_ref(&attr));
        let out = run(Signal::Logs, Format::Protobuf, &request(&resource(), &[late])).expect("decodes");
        assert_eq!(out.summary.rejected, 1);
    }
    // A resource's event name makes its records events (props written in the first walk).
    let res = [resource(), vec![("event.name", s("boss"))]].concat();
    let rec = [fixed64(1, T), attrs(6, &[("k", s("v"))])].concat();
    let out = run(Signal::Logs, Format::Protobuf, &request(&res, &[rec])).expect("decodes");
    assert_eq!((out.custom[0].event.as_str(), out.custom[0].props.as_str()), ("boss", r#"{"k":"v"}"#));
}

#[test]
fn a_small_request_truncated_at_every_byte_is_refused_without_a_panic() {
    let logs = request(&resource(), &[log("user.login", T, &[("n", kvlist(&[("a", array(&[int(1), s("x")]))]))])]);
    let spans = request(&resource(), &[span("session.start", &[("n", array(&[double(1.0)]))])]);
    for (signal, body) in [(Signal::Logs, &logs), (Signal::Traces, &spans)] {
        let full = run(signal, Format::Protobuf, body).expect("decodes");
        assert_eq!(full.summary.accepted, 1);
        // One top-level field: every cut inside it runs out of bytes.
        for i in 1..body.len() {
            assert_eq!(
                run(signal, Format::Protobuf, &body[..i]).err(),
                Some(DecodeError::Wire(WireError::Truncated)),
                "{signal:?} cut at {i} of {}",
                body.len()
            );
        }
    }
    let json = json_log("");
    for i in 0..json.len() {
        // Cut on character boundaries only (the body is text); trailing spaces excepted.
        if !json.is_char_boundary(i) || json[i..].trim().is_empty() {
            continue;
        }
        assert!(run(Signal::Logs, Format::Json, &json.as_bytes()[..i]).is_err(), "JSON cut at {i}");
    }
}

#[test]
fn control_characters_in_mapped_fields_are_kept_and_escaped_in_props() {
    let rec = log("user.login", T, &[("game.user_id", s("u\u{1}\t1")), ("k", s("a\u{0}b"))]);
    let out = run(Signal::Logs, Format::Protobuf, &request(&resource(), &[rec])).expect("decodes");
    assert_eq!(out.events[0].user_id, "u\u{1}\t1");
    assert!(out.events[0].props.starts_with(r#"{"game.region":"eu-west","progression.level_id":7,"k":"a\u0000b","#));
    let kvs = r#",{"key":"game.user_id","value":{"stringValue":"u\u0001\t1"}}"#;
    let out = run(Signal::Logs, Format::Json, json_log(kvs).as_bytes()).expect("decodes");
    assert_eq!(out.events[0].user_id, "u\u{1}\t1");
}

/// Decodes a logs request, handing back its summary and the `props` buffer it left.
fn decode_props(format: Format, mut body: Vec<u8>) -> (Summary, props::Props) {
    let limits = Limits::default();
    let (mut e, mut c, mut p, mut props, mut seen) = Default::default();
    let mut sink = Sink { events: &mut e, custom: &mut c, payments: &mut p, props: &mut props, seen: &mut seen };
    let ctx = Context { game: "g1", limits: &limits, spans: SpanEvents { patterns: &[] } };
    let summary =
        decode(Signal::Logs, format, &mut body, &ctx, &mut JsonBuffers::default(), &mut || [1; 16], &mut sink)
            .expect("decodes");
    (summary, props)
}

/// Review finding: an attribute's value was written whole before `props`' limit was
/// looked at, and a double plainly (`5e-324` in 326 digits): a 20 KB gzip request of one
/// array of tiny doubles made the shard write ~300 MiB, then refuse the record. Writing
/// now stops at the limit, inside a value too, and doubles far from 1 take an exponent.
#[test]
fn a_huge_attribute_or_body_is_refused_after_writing_at_most_its_limit() {
    let limit = Limits::default().max_props_bytes;
    let tiny = array(&vec![double(5e-324); 100_000]);
    let long = "\u{1}".repeat(1 << 20);
    let nested = kvlist(&[("a", array(&vec![s("x"); 100_000]))]);
    let big_key = kvlist(&[(&"k".repeat(1 << 20), int(1))]);
    let bytes = field(7, &vec![0u8; 1 << 20]);
    for (what, attr) in
        [("doubles", &tiny), ("string", &s(&long)), ("nested", &nested), ("key", &big_key), ("bytes", &bytes)]
    {
        let (summary, props) =
            decode_props(Format::Protobuf, request(&resource(), &[log("ad.click", T, &[("x", attr.clone())])]));
        assert_eq!((summary.accepted, summary.rejected), (0, 1), "{what}");
        assert!(props.text.len() <= limit + 64, "{what}: {} bytes written", props.text.len());
    }
    // A key alone past the limit, and a body.
    let key = "k".repeat(1 << 20);
    let (summary, props) =
        decode_props(Format::Protobuf, request(&resource(), &[log("ad.click", T, &[(&key, int(1))])]));
    assert_eq!((summary.rejected, props.text.len() <= limit + 64), (1, true));
    let body = [fixed64(1, T), field(5, &tiny), field(12, b"ad.click")].concat();
    let (summary, props) = decode_props(Format::Protobuf, request(&resource(), &[body]));
    assert_eq!((summary.rejected, props.text.len() <= limit + 64), (1, true), "{}", props.text.len());
    // The same through OTLP/JSON.
    let doubles = vec![r#"{"doubleValue":5e-324}"#; 100_000].join(",");
    let kvs = format!(r#",{{"key":"x","value":{{"arrayValue":{{"values":[{doubles}]}}}}}}"#);
    let (summary, props) = decode_props(Format::Json, json_log(&kvs).into_bytes());
    assert_eq!((summary.rejected, props.text.len() <= limit + 64), (1, true), "{}", props.text.len());
}

#[test]
fn doubles_are_written_in_their_shortest_text() {
    for (d, text) in [
        (1.5, "1.5"),
        (-0.0, "-0"),
        (0.0, "0"),
        (100.0, "100"),
        (123456.789, "123456.789"),
        (1e-6, "0.000001"),
        (1e20, "100000000000000000000"),
        (1e21, "1e21"),
        (-2.5e-7, "-2.5e-7"),
        (5e-324, "5e-324"),
        (f64::MAX, "1.7976931348623157e308"),
    ] {
        let out = run(
            Signal::Logs,
            Format::Protobuf,
            &request(&resource(), &[log("progression.complete", T, &[("d", double(d))])]),
        )
        .expect("decodes");
        let props = &out.events[0].props;
        assert!(props.contains(&format!(r#""d":{text},"#)), "{d}: {props}");
    }
}

#[test]
fn a_record_of_a_hundred_thousand_attributes_costs_work_bounded_by_the_props_limit() {
    // Distinct keys, then every key again: writing stops once `props` passes 32 KiB, and
    // each key written costs a few table probes, whatever the keys look like.
    let keys: Vec<String> = (0..50_000).map(|i| format!("k{i}")).collect();
    let kvs: Vec<Vec<u8>> = keys.iter().chain(keys.iter()).map(|k| kv(k, &int(1))).collect();
    let limits = Limits::default();
    let (summary, props) = decode_props(Format::Protobuf, request(&resource(), &[log_with_raw_attrs(&kvs)]));
    assert_eq!((summary.accepted, summary.rejected), (0, 1));
    assert_eq!(summary.first_rejection, Some((0, "props (the other attributes and the body) are longer than 32 KiB")));
    // Members of `"kN":1,` (9 to 11 bytes): about 3,300 fit in 32 KiB.
    let probes = props.probes();
    assert!(probes < 20_000, "{probes} probes");
    assert!(props.text.len() <= limits.max_props_bytes + 16);
}
