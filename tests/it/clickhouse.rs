//! The native-protocol client against a real clickhouse-server: migrations, inserts with
//! and without LZ4, every column read back by an independent client (clickhouse-rs).

use std::time::Duration;

use croupier_dataplane::clickhouse::connection::{ChError, ChOptions, Connection};
use croupier_dataplane::clickhouse::rows::{EventRows, PaymentRows};
use croupier_dataplane::clickhouse::schema;
use croupier_dataplane::runtime::{block_on, ActiveDriver};
use croupier_it::clickhouse::ClickHouseServer;
use croupier_protocol::envelope::{Event, Payment, PaymentStatus};

fn options(ch: &ClickHouseServer, compression: bool) -> ChOptions {
    ChOptions {
        addr: ch.addr(),
        database: "default".into(),
        user: "default".into(),
        password: Default::default(),
        compression,
        timeout: Duration::from_secs(10),
    }
}

fn sample_event(i: u8) -> Event {
    Event {
        ts_ms: 1_795_617_749_000 + i64::from(i) * 1000,
        game_id: "g1".into(),
        env: if i.is_multiple_of(2) { "prod".into() } else { "staging".into() },
        event: ["login", "level_start", "boss_killed"][usize::from(i % 3)].into(),
        user_id: format!("u{i}"),
        session_id: format!("s{i}"),
        device_id: format!("d{i}"),
        channel: "appstore".into(),
        platform: "ios".into(),
        country: if i == 0 { String::new() } else { "DE".into() },
        app_version: "1.2.3".into(),
        event_id: [0x6f, 0x1c, 0x2b, 0x9e, 0x0d, 0x3a, 0x4c, 0x1e, 0x9a, 0x57, 0x2f, 0x4b, 0x8e, 0x6d, 0x1c, i],
        props: format!(r#"{{"i":{i},"s":"ünï"}}"#),
    }
}

async fn insert_events(conn: &mut Connection, events: &[Event]) -> Result<(), ChError> {
    let mut rows = EventRows::new();
    conn.insert_start(EventRows::INSERT, &[]).await?;
    for chunk in events.chunks(2) {
        rows.clear();
        for e in chunk {
            rows.push(e, 1_795_617_800_000);
        }
        conn.insert_block(&rows.columns, rows.rows).await?;
    }
    conn.insert_end().await
}

/// One row of `analytics.events` as clickhouse-rs reads it.
type EventRow =
    (u32, String, String, String, String, String, String, String, String, String, String, String, String, u32);

fn read_events(ch: &ClickHouseServer) -> Vec<EventRow> {
    let block = crate::pipeline::rs_block(
        ch,
        "?compression=lz4",
        "SELECT toUInt32(event_time) AS t, CAST(game_id AS String) AS g, CAST(env AS String) AS e, user_id, \
         session_id, CAST(event AS String) AS ev, CAST(channel AS String) AS ch, CAST(platform AS String) AS pl, \
         toString(country) AS co, app_version, toString(event_id) AS id, props_json, device_id, \
         toUInt32(ingested_at) AS ing FROM analytics.events ORDER BY user_id",
    );
    block
        .rows()
        .map(|r| {
            (
                r.get::<u32, _>("t").unwrap(),
                r.get::<String, _>("g").unwrap(),
                r.get::<String, _>("e").unwrap(),
                r.get::<String, _>("user_id").unwrap(),
                r.get::<String, _>("session_id").unwrap(),
                r.get::<String, _>("ev").unwrap(),
                r.get::<String, _>("ch").unwrap(),
                r.get::<String, _>("pl").unwrap(),
                r.get::<String, _>("co").unwrap(),
                r.get::<String, _>("app_version").unwrap(),
                r.get::<String, _>("id").unwrap(),
                r.get::<String, _>("props_json").unwrap(),
                r.get::<String, _>("device_id").unwrap(),
                r.get::<u32, _>("ing").unwrap(),
            )
        })
        .collect()
}

fn events_round_trip(driver: ActiveDriver, compression: bool) {
    let ch = ClickHouseServer::start();
    let opts = options(&ch, compression);
    let events: Vec<Event> = (0..5).map(sample_event).collect();
    let version = block_on(driver, async {
        let mut conn = Connection::connect(&opts).await.expect("connect");
        schema::migrate(&mut conn).await.expect("migrate");
        schema::migrate(&mut conn).await.expect("migrate again: idempotent");
        insert_events(&mut conn, &events).await.expect("insert");
        conn.ping().await.expect("ping after insert");
        (conn.server().major, conn.server().revision)
    })
    .expect("runtime");
    assert!(version.1 >= 54412);
    let rows = read_events(&ch);
    assert_eq!(rows.len(), 5);
    for (i, r) in rows.iter().enumerate() {
        let e = &events[i];
        assert_eq!(r.0, (e.ts_ms / 1000) as u32);
        assert_eq!(
            (r.1.as_str(), r.2.as_str(), r.3.as_str(), r.4.as_str()),
            (e.game_id.as_str(), e.env.as_str(), e.user_id.as_str(), e.session_id.as_str())
        );
        assert_eq!(
            (r.5.as_str(), r.6.as_str(), r.7.as_str()),
            (e.event.as_str(), e.channel.as_str(), e.platform.as_str())
        );
        // FixedString(2): an absent country is two zero bytes.
        assert_eq!(r.8.trim_end_matches('\0'), e.country);
        assert_eq!(r.9, e.app_version);
        assert_eq!(r.10, format!("6f1c2b9e-0d3a-4c1e-9a57-2f4b8e6d1c{i:02x}"));
        assert_eq!((r.11.as_str(), r.12.as_str()), (e.props.as_str(), e.device_id.as_str()));
        assert_eq!(r.13, 1_795_617_800);
    }
}

#[test]
fn events_round_trip_plain_epoll() {
    events_round_trip(ActiveDriver::Epoll, false);
}

#[test]
fn events_round_trip_lz4_io_uring() {
    events_round_trip(ActiveDriver::IoUring, true);
}

#[test]
fn payments_round_trip_and_server_errors() {
    let ch = ClickHouseServer::start();
    let opts = options(&ch, true);
    let payments: Vec<Payment> = (0..3u64)
        .map(|i| Payment {
            ts_ms: 1_795_617_749_000,
            game_id: "g1".into(),
            env: "prod".into(),
            user_id: format!("u{i}"),
            order_id: format!("o-{i}"),
            amount_cents: 99 + i,
            currency: "USD".into(),
            status: [PaymentStatus::Success, PaymentStatus::Refunded, PaymentStatus::Failed][i as usize],
            channel: "gp".into(),
            platform: "android".into(),
            country: "BR".into(),
            region: "SP".into(),
            city: "Campinas".into(),
            product_id: "gems".into(),
            reason: if i == 2 { "declined".into() } else { String::new() },
        })
        .collect();
    let err = block_on(ActiveDriver::Epoll, async {
        let mut conn = Connection::connect(&opts).await.expect("connect");
        schema::migrate(&mut conn).await.expect("migrate");
        let mut rows = PaymentRows::new();
        for p in &payments {
            rows.push(p, 1_795_617_800_000);
        }
        conn.insert_start(PaymentRows::INSERT, &[]).await.expect("start");
        conn.insert_block(&rows.columns, rows.rows).await.expect("block");
        conn.insert_end().await.expect("end");
        let mut conn = Connection::connect(&opts).await.expect("connect");
        conn.insert_start("INSERT INTO analytics.nowhere (a) VALUES", &[]).await.expect_err("unknown table")
    })
    .expect("runtime");
    match err {
        ChError::Server(e) => assert_eq!(e.code, 60, "{e}"),
        other => panic!("{other:?}"),
    }
    let got = ch.query(
        "SELECT user_id, order_id, amount_cents, currency, status, country, region, city, product_id, reason \
         FROM analytics.payments ORDER BY order_id FORMAT TabSeparated",
    );
    assert_eq!(
        got,
        "u0\to-0\t99\tUSD\tsuccess\tBR\tSP\tCampinas\tgems\t\n\
         u1\to-1\t100\tUSD\trefunded\tBR\tSP\tCampinas\tgems\t\n\
         u2\to-2\t101\tUSD\tfailed\tBR\tSP\tCampinas\tgems\tdeclined\n"
    );
}

/// Every encoder against the server: a table of all the types the codec writes, filled
/// by our blocks (plain and LZ4) and read back by clickhouse-rs.
#[test]
fn every_column_type_round_trips() {
    use croupier_protocol::clickhouse::block::{Column, ColumnData, LowCardinality};
    let ch = ClickHouseServer::start();
    ch.query(
        "CREATE TABLE default.types (u8 UInt8, u16 UInt16, u32 UInt32, u64 UInt64, i32 Int32, i64 Int64, \
         f64 Float64, s String, fs FixedString(3), d Date, dt DateTime, id UUID, lc LowCardinality(String), \
         ns Nullable(String), au Array(UInt32), als Array(LowCardinality(String))) ENGINE = Memory",
    );
    let rows = 3usize;
    let fixed = |w: usize, vals: Vec<Vec<u8>>| {
        let mut c = ColumnData::fixed(w);
        vals.iter().for_each(|v| c.push_fixed(v));
        c
    };
    let strings = |data: ColumnData, vals: &[&str]| {
        let mut c = data;
        vals.iter().for_each(|v| c.push_str(v.as_bytes()));
        c
    };
    let columns = vec![
        Column::new("u8", "UInt8", fixed(1, vec![vec![0], vec![7], vec![255]])),
        Column::new("u16", "UInt16", fixed(2, (0..3u16).map(|i| (i * 1000 + 1).to_le_bytes().to_vec()).collect())),
        Column::new("u32", "UInt32", fixed(4, (0..3u32).map(|i| (i * 70_000).to_le_bytes().to_vec()).collect())),
        Column::new(
            "u64",
            "UInt64",
            fixed(8, vec![u64::MAX.to_le_bytes().to_vec(), 0u64.to_le_bytes().to_vec(), 42u64.to_le_bytes().to_vec()]),
        ),
        Column::new(
            "i32",
            "Int32",
            fixed(
                4,
                vec![(-5i32).to_le_bytes().to_vec(), 0i32.to_le_bytes().to_vec(), i32::MAX.to_le_bytes().to_vec()],
            ),
        ),
        Column::new(
            "i64",
            "Int64",
            fixed(
                8,
                vec![i64::MIN.to_le_bytes().to_vec(), (-1i64).to_le_bytes().to_vec(), 9i64.to_le_bytes().to_vec()],
            ),
        ),
        Column::new(
            "f64",
            "Float64",
            fixed(
                8,
                vec![1.5f64.to_le_bytes().to_vec(), (-0.25f64).to_le_bytes().to_vec(), 1e10f64.to_le_bytes().to_vec()],
            ),
        ),
        Column::new("s", "String", strings(ColumnData::String(Vec::new()), &["", "ascii", "ünïcødé"])),
        Column::new("fs", "FixedString(3)", fixed(3, vec![b"abc".to_vec(), b"xyz".to_vec(), b"q\0\0".to_vec()])),
        Column::new(
            "d",
            "Date",
            fixed(2, vec![20_782u16.to_le_bytes().to_vec(), 0u16.to_le_bytes().to_vec(), 1u16.to_le_bytes().to_vec()]),
        ),
        Column::new(
            "dt",
            "DateTime",
            fixed(
                4,
                vec![
                    1_795_617_749u32.to_le_bytes().to_vec(),
                    0u32.to_le_bytes().to_vec(),
                    86_400u32.to_le_bytes().to_vec(),
                ],
            ),
        ),
        Column::new(
            "id",
            "UUID",
            fixed(16, (0..3u8).map(|i| croupier_protocol::clickhouse::block::uuid_bytes(&[i; 16]).to_vec()).collect()),
        ),
        Column::new(
            "lc",
            "LowCardinality(String)",
            strings(ColumnData::LowCardinality(LowCardinality::default()), &["a", "b", "a"]),
        ),
        Column::new(
            "ns",
            "Nullable(String)",
            ColumnData::Nullable {
                nulls: vec![0, 1, 0],
                inner: Box::new(strings(ColumnData::String(Vec::new()), &["x", "", "z"])),
            },
        ),
        Column::new(
            "au",
            "Array(UInt32)",
            ColumnData::Array {
                offsets: vec![2, 2, 5],
                inner: Box::new(fixed(4, (1..=5u32).map(|v| v.to_le_bytes().to_vec()).collect())),
            },
        ),
        Column::new(
            "als",
            "Array(LowCardinality(String))",
            ColumnData::Array {
                offsets: vec![1, 3, 3],
                inner: Box::new(strings(ColumnData::LowCardinality(LowCardinality::default()), &["p", "q", "p"])),
            },
        ),
    ];
    for compression in [false, true] {
        let opts = options(&ch, compression);
        let cols = columns.clone();
        block_on(ActiveDriver::Epoll, async move {
            let mut conn = Connection::connect(&opts).await.expect("connect");
            conn.insert_start(
                "INSERT INTO default.types (u8, u16, u32, u64, i32, i64, f64, s, fs, d, dt, id, lc, ns, au, als) VALUES",
                &[],
            )
            .await
            .expect("start");
            conn.insert_block(&cols, rows).await.expect("block");
            conn.insert_end().await.expect("end");
        })
        .expect("runtime");
    }
    let block = crate::pipeline::rs_block(
        &ch,
        "",
        "SELECT u8, u16, u32, u64, i32, i64, f64, s, fs, toString(d) AS ds, toUInt32(dt) AS dts, \
         toString(id) AS ids, CAST(lc AS String) AS lcs, ns, au, arrayStringConcat(CAST(als AS Array(String)), '|') AS alss \
         FROM default.types ORDER BY u8",
    );
    let got: Vec<String> = block
        .rows()
        .map(|r| {
            let ns: Option<String> = r.get("ns").unwrap();
            let au: Vec<u32> = r.get("au").unwrap();
            format!(
                "{} {} {} {} {} {} {} {:?} {:?} {} {} {} {} {:?} {:?} {}",
                r.get::<u8, _>("u8").unwrap(),
                r.get::<u16, _>("u16").unwrap(),
                r.get::<u32, _>("u32").unwrap(),
                r.get::<u64, _>("u64").unwrap(),
                r.get::<i32, _>("i32").unwrap(),
                r.get::<i64, _>("i64").unwrap(),
                r.get::<f64, _>("f64").unwrap(),
                r.get::<String, _>("s").unwrap(),
                r.get::<String, _>("fs").unwrap(),
                r.get::<String, _>("ds").unwrap(),
                r.get::<u32, _>("dts").unwrap(),
                r.get::<String, _>("ids").unwrap(),
                r.get::<String, _>("lcs").unwrap(),
                ns,
                au,
                r.get::<String, _>("alss").unwrap(),
            )
        })
        .collect();
    let want = [
        r#"0 1 0 18446744073709551615 -5 -9223372036854775808 1.5 "" "abc" 2026-11-25 1795617749 00000000-0000-0000-0000-000000000000 a Some("x") [1, 2] p"#,
        r#"7 1001 70000 0 0 -1 -0.25 "ascii" "xyz" 0000-00-00 0 01010101-0101-0101-0101-010101010101 b None [] q|p"#,
        r#"255 2001 140000 42 2147483647 9 10000000000 "ünïcødé" "q\0\0" 1970-01-02 86400 02020202-0202-0202-0202-020202020202 a Some("z") [3, 4, 5] "#,
    ];
    // Each row twice: once inserted plain, once with LZ4. (ClickHouse 18 prints Date 0 as
    // 0000-00-00; FixedString keeps its zero padding.)
    let want: Vec<String> = want.iter().flat_map(|w| [w.trim_end().to_owned(), w.trim_end().to_owned()]).collect();
    let got: Vec<String> = got.iter().map(|g| g.trim_end().to_owned()).collect();
    assert_eq!(got, want);
}

/// M8: `croupier migrate` says whether inserts are fsynced before ClickHouse confirms
/// them. 18.16 has no `fsync_after_insert`: the tables are created all the same, and the
/// command says what that means.
#[test]
fn m8_migrate_says_whether_inserts_are_fsynced() {
    let ch = ClickHouseServer::start();
    let redis = croupier_it::redis::RedisServer::start();
    let env = crate::pipeline::env(&redis, &ch);
    let (ok, out) = crate::pipeline::croupier(&["migrate"], &env);
    assert!(ok, "{out}");
    assert!(out.contains("schema up to date"), "{out}");
    assert!(out.contains("no fsync_after_insert"), "{out}");
    let mut off = env.clone();
    off.push(("CROUPIER_CLICKHOUSE__FSYNC_AFTER_INSERT".into(), "false".into()));
    let (ok, out) = crate::pipeline::croupier(&["migrate"], &off);
    assert!(ok && !out.contains("fsync"), "{out}");
}
