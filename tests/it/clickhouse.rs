//! The native-protocol client against a real clickhouse-server: migrations, inserts with
//! and without LZ4, every column read back by an independent client (clickhouse-rs).

use std::time::Duration;

use croupier_dataplane::clickhouse::connection::{ChError, ChOptions, Connection};
use croupier_dataplane::clickhouse::rows::{EventRows, PaymentRows};
use croupier_dataplane::clickhouse::schema;
use croupier_dataplane::runtime::{block_on, ActiveDriver};
use croupier_it::clickhouse::ClickHouseServer;
use croupier_protocol::clickhouse::packet::ProtocolError;
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
        Column::new("s", "String", strings(ColumnData::String(Default::default()), &["", "ascii", "ünïcødé"])),
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
                inner: Box::new(strings(ColumnData::String(Default::default()), &["x", "", "z"])),
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

/// Blocks ClickHouse wrote without sorting them (`system.events`), 0 before the first.
fn already_sorted(ch: &ClickHouseServer) -> u64 {
    ch.query("SELECT sum(value) FROM system.events WHERE event = 'MergeTreeDataWriterBlocksAlreadySorted'")
        .trim()
        .parse()
        .unwrap_or(0)
}

/// The worker sends each block of `events` and `payments` in the table's sort-key order
/// (`croupier_protocol::clickhouse::order`), so that the server writes the part without
/// sorting it: the server's own count of blocks it found sorted goes up by one per block
/// sent in order, and not for the same rows sent as pushed (shuffled); every row is
/// stored either way. Tables of the same engine, key and columns as ours but without the
/// views, so that only these inserts write parts.
#[test]
fn blocks_sent_in_the_tables_order_are_not_sorted_again_by_the_server() {
    use croupier_dataplane::clickhouse::rows::{Events, Payments, Table};
    use croupier_protocol::clickhouse::order::sort_order;
    use croupier_protocol::clickhouse::packet::Setting;

    let ch = ClickHouseServer::start();
    // Times, games, environments, events and ids in no order; two of the ids equal.
    let events: Vec<Event> = (0..2_000u32)
        .map(|i| {
            let mut e = sample_event((i % 251) as u8);
            let k = i.wrapping_mul(2_654_435_761);
            e.ts_ms = 1_795_617_749_000 + i64::from(k % 600) * 1000;
            e.game_id = ["g2", "g1", "g10"][(k % 3) as usize].into();
            e.event = ["login", "level_start", "boss_killed", "a"][(k >> 3) as usize % 4].into();
            e.event_id = u128::from(k % 1_999).to_be_bytes();
            e.event_id[0] = (k >> 24) as u8;
            e
        })
        .collect();
    let payments: Vec<Payment> = (0..500u32)
        .map(|i| Payment {
            order_id: format!("o{}", i.wrapping_mul(2_654_435_761) % 997),
            ts_ms: 1_795_617_749_000 + i64::from(i % 7) * 1000,
            game_id: ["g1", "g0"][(i % 2) as usize].into(),
            env: "prod".into(),
            user_id: format!("u{i}"),
            amount_cents: 99 + u64::from(i),
            currency: "USD".into(),
            status: [PaymentStatus::Success, PaymentStatus::Refunded, PaymentStatus::Failed][(i % 3) as usize],
            channel: "gp".into(),
            platform: "android".into(),
            country: "BR".into(),
            region: "SP".into(),
            city: "Campinas".into(),
            product_id: "gems".into(),
            reason: String::new(),
        })
        .collect();
    block_on(ActiveDriver::Epoll, async {
        let mut conn = Connection::connect(&options(&ch, true)).await.expect("connect");
        schema::migrate(&mut conn).await.expect("migrate");
        let lc = [("allow_experimental_low_cardinality_type", Setting::UInt(1))];
        for t in ["events", "payments"] {
            for side in ["as_pushed", "sorted"] {
                conn.execute(&format!("CREATE TABLE default.{t}_{side} AS analytics.{t}"), &lc).await.expect("create");
            }
        }
        let mut ev = EventRows::new();
        events.iter().for_each(|e| ev.push(e, 1_795_617_800_000));
        let mut pay = PaymentRows::new();
        payments.iter().for_each(|p| pay.push(p, 1_795_617_800_000));
        let ev_order = sort_order(&ev.columns, ev.rows, Events::ORDER_BY).expect("events shuffled");
        let pay_order = sort_order(&pay.columns, pay.rows, Payments::ORDER_BY).expect("payments shuffled");
        for sorted in [false, true] {
            let side = if sorted { "sorted" } else { "as_pushed" };
            let local =
                |sql: &str, t: &str| sql.replace(&format!("INTO analytics.{t} "), &format!("INTO default.{t}_{side} "));
            let before = already_sorted(&ch);
            conn.insert_start(&local(EventRows::INSERT, "events"), &[]).await.expect("insert");
            conn.insert_block_in_order(&ev.columns, ev.rows, sorted.then_some(&ev_order[..])).await.expect("block");
            conn.insert_end().await.expect("end");
            conn.insert_start(&local(PaymentRows::INSERT, "payments"), &[]).await.expect("insert");
            conn.insert_block_in_order(&pay.columns, pay.rows, sorted.then_some(&pay_order[..])).await.expect("block");
            conn.insert_end().await.expect("end");
            assert_eq!(already_sorted(&ch) - before, if sorted { 2 } else { 0 }, "sent sorted: {sorted}");
        }
        // The server joins the blocks of one insert before it writes (one part): rows in
        // order over two blocks make one block it finds sorted (blocks each in order but
        // not between them would be sorted again, hence the worker's large blocks).
        let before = already_sorted(&ch);
        conn.execute("CREATE TABLE default.events_two_blocks AS analytics.events", &lc).await.expect("create");
        conn.insert_start(&EventRows::INSERT.replace("INTO analytics.events ", "INTO default.events_two_blocks "), &[])
            .await
            .expect("insert");
        for half in ev_order.chunks(1_000) {
            let mut rows = EventRows::new();
            half.iter().for_each(|&i| rows.push(&events[i as usize], 1_795_617_800_000));
            conn.insert_block(&rows.columns, rows.rows).await.expect("block");
        }
        conn.insert_end().await.expect("end");
        assert_eq!(already_sorted(&ch) - before, 1, "two sorted blocks written as one");
    })
    .expect("runtime");
    // Both inserts stored every row, the same rows.
    for (t, cols, n) in [
        ("events", "game_id, env, event_time, event, event_id, user_id, props_json", 2_000),
        ("payments", "game_id, env, order_id, status, amount_cents", 500),
    ] {
        let text: Vec<String> = cols.split(", ").map(|c| format!("toString({c})")).collect();
        let digest = |side: &str| {
            ch.query(&format!(
                "SELECT count(), sum(cityHash64(concat({}))) FROM default.{t}_{side}",
                text.join(", '|', ")
            ))
        };
        let (pushed, sorted) = (digest("as_pushed"), digest("sorted"));
        assert_eq!(pushed, sorted, "{t}: the same rows either way");
        if t == "events" {
            assert_eq!(digest("two_blocks"), pushed, "{t}: the same rows in two blocks");
            let parts = ch.query("SELECT count() FROM system.parts WHERE table = 'events_two_blocks' AND active");
            assert_eq!(parts.trim(), "1", "one part of two blocks");
        }
        assert!(pushed.starts_with(&format!("{n}\t")), "{t}: {pushed}");
    }
    // A current ClickHouse (26.x, in-process through chdb-core) orders UUIDs as 18.16
    // does: the ids by themselves, in the order `sort_order` gives, are what its
    // `ORDER BY toUUID(...)` gives.
    let mut ids = croupier_protocol::clickhouse::block::Column::new(
        "event_id",
        "UUID",
        croupier_protocol::clickhouse::block::ColumnData::fixed(16),
    );
    let texts: Vec<String> = events
        .iter()
        .map(|e| {
            ids.data.push_fixed(&croupier_protocol::clickhouse::block::uuid_bytes(&e.event_id));
            String::from_utf8_lossy(&croupier_dataplane::clickhouse::cluster::uuid_text(&e.event_id)).into_owned()
        })
        .collect();
    let order = sort_order(std::slice::from_ref(&ids), texts.len(), &["event_id"]).expect("ids shuffled");
    let ours: Vec<&str> = order.iter().map(|&i| texts[i as usize].as_str()).collect();
    let script = format!(
        "import chdb\nprint(chdb.query(\"SELECT s FROM (SELECT arrayJoin([{}]) AS s) ORDER BY toUUID(s)\", 'TSV'), end='')",
        texts.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(",")
    );
    let out = std::process::Command::new("python3").arg("-c").arg(script).output().expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let current = String::from_utf8_lossy(&out.stdout);
    let current: Vec<&str> = current.lines().collect();
    // Equal ids may come in either order there (an unstable sort): compared as texts.
    assert_eq!(current, ours, "26.x orders UUIDs otherwise");
}

/// A current ClickHouse (26.x, in-process through chdb-core) joins an insert's blocks
/// into one before counting its partitions against `max_partitions_per_insert_block`
/// (100): two blocks of 75 months each are refused (code 252), as the worker's grouped
/// blocks were, for ever; with the settings the worker sends with an insert of more than
/// one block (`sink::BLOCKS_AS_SENT`) each block is written as it is, and all 150 months
/// are stored. (18.16, the other tests' server, has no partition limit.)
#[test]
fn a_current_engine_takes_150_months_in_blocks_kept_apart() {
    use croupier_dataplane::worker::sink::BLOCKS_AS_SENT;
    use croupier_protocol::clickhouse::packet::Setting;
    let ours: Vec<String> = BLOCKS_AS_SENT
        .iter()
        .map(|(name, value)| match value {
            Setting::UInt(n) => format!("{name}={n}"),
            Setting::Str(s) => format!("{name}='{s}'"),
        })
        .collect();
    let rows: Vec<String> =
        (0..150).map(|i| format!("('{:04}-{:02}-15 12:00:00',{i})", 2001 + i / 12, i % 12 + 1)).collect();
    let script = format!(
        r#"
from chdb import session
s = session.Session()
s.query("CREATE DATABASE d")
s.query("CREATE TABLE d.t (event_time DateTime, x UInt32) ENGINE = MergeTree PARTITION BY toYYYYMM(event_time) ORDER BY x")
rows = "{rows}"
for name, extra in (("joined", ""), ("apart", ", {ours}")):
    try:
        s.query("INSERT INTO d.t SETTINGS max_insert_block_size=75" + extra + " VALUES " + rows)
        print(name, "ok")
    except Exception as e:
        print(name, "refused", "252" if "TOO_MANY_PARTS" in str(e) or "Too many partitions" in str(e) else str(e)[:200])
print("stored", str(s.query("SELECT count(), uniqExact(toYYYYMM(event_time)) FROM d.t", "TSV")).strip())
"#,
        rows = rows.join(","),
        ours = ours.join(", ")
    );
    let out = std::process::Command::new("python3").arg("-c").arg(script).output().expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = String::from_utf8_lossy(&out.stdout);
    assert_eq!(got.lines().collect::<Vec<_>>(), ["joined refused 252", "apart ok", "stored 150\t150"], "{got}");
}

/// A server sending its log lines (`send_logs_level`, as a user's profile may set it):
/// `Log` packets carry rows between a query's other packets; the client reads and sets
/// them aside, on plain and compressed connections, for statements, inserts and selects.
#[test]
fn log_packets_with_rows_are_set_aside() {
    use croupier_protocol::clickhouse::packet::Setting;
    let ch = ClickHouseServer::start_logging_at("trace");
    for compression in [false, true] {
        let opts = options(&ch, compression);
        let logs = [("send_logs_level", Setting::Str("trace"))];
        let got = block_on(ActiveDriver::Epoll, async {
            let mut conn = Connection::connect(&opts).await.expect("connect");
            conn.execute("CREATE TABLE IF NOT EXISTS default.logged (x UInt64) ENGINE = MergeTree ORDER BY x", &logs)
                .await
                .expect("create");
            conn.execute("INSERT INTO default.logged SELECT number FROM system.numbers LIMIT 10", &logs)
                .await
                .expect("insert select");
            let s = conn.select("SELECT count() FROM default.logged", &logs).await.expect("select");
            conn.ping().await.expect("ping after");
            s.rows.len()
        })
        .expect("runtime");
        assert_eq!(got, 1);
    }
    assert_eq!(ch.query("SELECT count() FROM default.logged").trim(), "20");
}

/// Black-box finding: an analytics read the API gave up on (504 at `api.query_timeout_ms`)
/// freed its slot while ClickHouse 18.16 ran the query on (`max_execution_time` is checked
/// only between blocks read), so requests sent again piled queries onto the server past
/// `api.max_queries_in_flight` (35 at once, 6.9 GB, with a limit of 4). A read given up on
/// is now cancelled and holds its slot until the server ended it.
#[test]
fn attack_an_analytics_read_given_up_on_holds_its_slot_until_the_server_ends_it() {
    use croupier_dataplane::analytics::db::Db;
    use croupier_dataplane::analytics::error::ApiError;
    let ch = ClickHouseServer::start();
    block_on(ActiveDriver::Epoll, async {
        let db = Db::new(options(&ch, false), 1, Duration::from_millis(1_000));
        let start = std::time::Instant::now();
        // One block that takes 3 s to make: nothing read meanwhile, nothing checked.
        let r = db.reads().select("SELECT sleep(3)").await;
        assert!(matches!(r, Err(ApiError::QueryTimeout)), "{r:?}");
        // The server still runs it (until 3 s; the cancel is waited for until 3 s at
        // most): the one slot stays taken, another read (1 s to 2 s) is refused.
        let r = db.reads().select("SELECT 1").await;
        assert!(matches!(r, Err(ApiError::Busy)), "{r:?} after {:?}", start.elapsed());
        // Once it ended on the server, the slot is free again.
        monoio::time::sleep(Duration::from_millis(3_500).saturating_sub(start.elapsed())).await;
        let r = db.reads().select("SELECT 1").await;
        assert!(r.is_ok(), "{r:?}");
    })
    .expect("runtime");
}

/// A read dropped before it ended (its request ended without it: the client went away)
/// is given up on as one past its deadline: cancelled, its slot held until the server
/// ended the query — not its connection closed and its slot freed at once while the
/// server ran on.
#[test]
fn an_analytics_read_dropped_holds_its_slot_until_the_server_ends_it() {
    use croupier_dataplane::analytics::db::Db;
    use croupier_dataplane::analytics::error::ApiError;
    let ch = ClickHouseServer::start();
    block_on(ActiveDriver::Epoll, async {
        let db = Db::new(options(&ch, false), 1, Duration::from_secs(10));
        let start = std::time::Instant::now();
        let dropped = monoio::time::timeout(Duration::from_millis(500), db.reads().select("SELECT sleep(3)")).await;
        assert!(dropped.is_err(), "{dropped:?}");
        // The server still runs it: the one slot stays taken (a second read waits for it).
        let r = monoio::time::timeout(Duration::from_millis(1_000), db.reads().select("SELECT 1")).await;
        assert!(r.is_err(), "{r:?} after {:?}", start.elapsed());
        // Once it ended on the server, the slot is free again.
        monoio::time::sleep(Duration::from_millis(3_500).saturating_sub(start.elapsed())).await;
        let r = db.reads().select("SELECT 1").await;
        assert!(matches!(r, Ok(ref rows) if rows.len() == 1), "{r:?}");
        // What a read given up on had read counts for its request (the audit log's
        // `read_rows`): the server's progress until then.
        let reads = db.reads();
        let many = "SELECT max(number) FROM numbers(100000000000)";
        let dropped = monoio::time::timeout(Duration::from_millis(1_500), reads.select(many)).await;
        assert!(dropped.is_err(), "{dropped:?}");
        assert!(reads.read_rows() > 1_000_000, "{}", reads.read_rows());
        // So does one given up on at its deadline (504); and a connection used again
        // counts from 0 for its next query.
        monoio::time::sleep(Duration::from_millis(1_000)).await;
        let short = Db::new(options(&ch, false), 1, Duration::from_millis(1_500));
        let reads = short.reads();
        let r = reads.select(many).await;
        assert!(matches!(r, Err(ApiError::QueryTimeout)), "{r:?}");
        assert!(reads.read_rows() > 1_000_000, "{}", reads.read_rows());
        monoio::time::sleep(Duration::from_millis(3_500)).await;
        let reads = short.reads();
        let _ = reads.select("SELECT count() FROM numbers(1000000)").await;
        let r = reads.select("SELECT 1").await;
        assert!(r.is_ok(), "{r:?}");
        // (numbers() reads whole blocks of 65,536: 1,048,576 rows, then SELECT 1's one.)
        assert!((1_000_000..1_100_000).contains(&reads.read_rows()), "{}", reads.read_rows());
    })
    .expect("runtime");
}

/// Black-box finding: no memory limit was sent with analytics reads (one viewer's request
/// took 3.1 GB of the server). Reads now carry `max_memory_usage`
/// (`api.max_query_memory_bytes`); one past it is refused 400, naming the range.
#[test]
fn attack_an_analytics_read_past_its_memory_limit_is_refused() {
    use croupier_dataplane::analytics::db::Db;
    use croupier_dataplane::analytics::error::ApiError;
    let ch = ClickHouseServer::start();
    block_on(ActiveDriver::Epoll, async {
        let db = Db::new(options(&ch, false), 2, Duration::from_secs(20)).with_memory_limit(20 << 20);
        let r = db.reads().select("SELECT length(groupArray(number)) FROM numbers(20000000)").await;
        match r {
            Err(ApiError::InvalidParameter { field, reason }) => {
                assert_eq!(field, "end");
                assert!(reason.contains("max_query_memory_bytes"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let r = db.reads().select("SELECT length(groupArray(number)) FROM numbers(1000)").await;
        assert!(r.is_ok(), "{r:?}");
    })
    .expect("runtime");
}

/// A result whose blocks arrive in many reads is decoded in a few passes over its bytes:
/// each read may take as many bytes as the block begun holds. (Reads of 4 KiB each, every
/// one followed by a decode of the block from its start, made a 12 MB result cost about
/// 1,500 passes: half a minute here, where it now takes a fraction of a second.)
#[test]
fn a_large_result_is_decoded_in_a_few_passes() {
    let ch = ClickHouseServer::start();
    block_on(ActiveDriver::Epoll, async {
        let mut conn = Connection::connect(&options(&ch, false)).await.expect("connect");
        for block in [65_536, 100_000] {
            let sql = format!(
                "SELECT toString(number) AS s, concat(toString(number), '-{}') AS p FROM numbers(100000) \
                 SETTINGS max_block_size = {block}",
                "x".repeat(100)
            );
            let r = conn.select(&sql, &[]).await.expect("select");
            assert_eq!(r.rows.len(), 100_000);
            assert_eq!(r.rows[99_999][0].as_str(), "99999");
            assert!(conn.decode_passes() < 16.0, "{} passes with blocks of {block} rows", conn.decode_passes());
        }
        // Its buffers given back, the connection goes on reading small answers.
        let r = conn.select("SELECT 1", &[]).await.expect("select");
        assert_eq!(r.rows.len(), 1);
    })
    .expect("runtime");
}

/// A loopback forwarder to `upstream`: the client's bytes pass as they are; the server's
/// are handed to `pass` with the offset of their first in the connection's answer, which
/// writes them on (changed, in pieces, ...) to the client.
fn link(upstream: String, pass: fn(&mut std::net::TcpStream, &mut [u8], usize) -> std::io::Result<()>) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let Ok(mut server) = std::net::TcpStream::connect(&upstream) else { return };
            let (Ok(mut to_server), Ok(mut from_server)) = (client.try_clone(), server.try_clone()) else { return };
            std::thread::spawn(move || std::io::copy(&mut to_server, &mut server));
            std::thread::spawn(move || {
                use std::io::Read;
                let mut buf = vec![0u8; 64 * 1024];
                let mut passed = 0;
                while let Ok(n @ 1..) = from_server.read(&mut buf) {
                    if pass(&mut client, &mut buf[..n], passed).is_err() {
                        return;
                    }
                    passed += n;
                }
            });
        }
    });
    port
}

/// A loopback forwarder to `upstream` that passes the server's bytes on in 1,460-byte
/// pieces with a pause after each (a link of a few MB/s): a result's block then reaches
/// the client in hundreds of reads.
fn slow_link(upstream: String) -> u16 {
    link(upstream, |client, bytes, _| {
        use std::io::Write;
        for piece in bytes.chunks(1460) {
            client.write_all(piece)?;
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    })
}

/// Over a slow link a block comes in hundreds of reads: it is walked once as it comes
/// and decoded once whole, not decoded from its start after each read (about as many
/// passes as the decoder is faster than the link: dozens).
#[test]
fn a_block_over_a_slow_link_is_decoded_once() {
    let ch = ClickHouseServer::start();
    let port = slow_link(ch.addr());
    block_on(ActiveDriver::Epoll, async {
        let opts = ChOptions { addr: format!("127.0.0.1:{port}"), ..options(&ch, false) };
        let mut conn = Connection::connect(&opts).await.expect("connect");
        let sql = format!(
            "SELECT toString(number) AS s, [toString(number), '{}'] AS a, toNullable(number) AS n \
             FROM numbers(20000) SETTINGS max_block_size = 20000",
            "x".repeat(100)
        );
        let r = conn.select(&sql, &[]).await.expect("select");
        assert_eq!(r.rows.len(), 20_000);
        assert_eq!(r.rows[19_999][0].as_str(), "19999");
        assert_eq!(r.rows[19_999][2].as_u64(), 19_999);
        assert!(conn.decode_passes() < 2.5, "{} passes over the slow link", conn.decode_passes());
    })
    .expect("runtime");
}

/// A result of many types, in one block of several compressed frames (about 6 MB), with
/// totals and extremes.
const MANY_TYPES: &str = "SELECT number % 3 AS k, toString(cityHash64(number)) AS s, [number, 1] AS a, \
     toNullable(number) AS n, toLowCardinality(toString(number % 7)) AS lc, toFixedString('abc', 3) AS fs, \
     toDate(17000 + number % 1000) AS d, toDateTime(1500000000 + number) AS dt, \
     [toLowCardinality(toString(number % 5))] AS al, number / 7 AS f \
     FROM numbers(60000) SETTINGS max_block_size = 60000";

/// With compression, a result's blocks come in checked frames, and are read into the
/// same rows as without (in pieces or not); over a slow link each byte is still gone over
/// a few times, however many reads bring it.
#[test]
fn a_compressed_result_is_read_as_an_uncompressed_one() {
    let ch = ClickHouseServer::start();
    let port = slow_link(ch.addr());
    block_on(ActiveDriver::Epoll, async {
        let mut plain = Connection::connect(&options(&ch, false)).await.expect("connect");
        let expected = plain.select(MANY_TYPES, &[]).await.expect("select");
        assert_eq!(expected.rows.len(), 60_000);
        let mut lz4 = Connection::connect(&options(&ch, true)).await.expect("connect");
        let received = lz4.select(MANY_TYPES, &[]).await.expect("select");
        assert_eq!(received, expected);
        // Totals and extremes are blocks too, framed as well, and set aside.
        let sql = "SELECT number % 3 AS k, count() AS c FROM numbers(1000) GROUP BY k WITH TOTALS ORDER BY k \
                   SETTINGS extremes = 1";
        let r = lz4.select(sql, &[]).await.expect("select");
        assert_eq!(r.rows.len(), 3);
        assert_eq!(r.rows[2][1].as_u64(), 333);
        // A profile compressing with ZSTD: the client asks for LZ4, which it reads.
        ch.set_profile(
            "<network_compression_method>zstd</network_compression_method>",
            ("network_compression_method", "zstd"),
        );
        let mut zstd = Connection::connect(&options(&ch, true)).await.expect("connect");
        assert_eq!(zstd.select(MANY_TYPES, &[]).await.expect("select under a ZSTD profile"), expected);
        // And the connection goes on, across an exception and a small answer.
        assert!(matches!(lz4.select("SELECT nowhere", &[]).await, Err(ChError::Server(_))));
        let mut lz4 = Connection::connect(&options(&ch, true)).await.expect("connect");
        assert_eq!(lz4.select("SELECT 1", &[]).await.expect("select").rows.len(), 1);

        let opts = ChOptions { addr: format!("127.0.0.1:{port}"), ..options(&ch, true) };
        let mut slow = Connection::connect(&opts).await.expect("connect");
        let received = slow.select(MANY_TYPES, &[]).await.expect("select");
        assert_eq!(received, expected);
        // Each frame checked and decompressed once, the block scanned once, decoded once.
        assert!(slow.decode_passes() < 3.5, "{} passes over the slow link", slow.decode_passes());
    })
    .expect("runtime");
}

/// The offset of the byte [`flipping_link`] changes: inside the frames of the answer's
/// block (about 1 MB compressed, 6 MB uncompressed).
const FLIPPED_AT: usize = 200_000;

/// A loopback forwarder to `upstream` that changes the server's byte at [`FLIPPED_AT`] of
/// each connection's answer (a faulty proxy).
fn flipping_link(upstream: String) -> u16 {
    link(upstream, |client, bytes, passed| {
        use std::io::Write;
        if (passed..passed + bytes.len()).contains(&FLIPPED_AT) {
            bytes[FLIPPED_AT - passed] ^= 0x04;
        }
        client.write_all(bytes)
    })
}

/// A byte of a result changed on the way (a faulty proxy) is found by its frame's
/// checksum when results are compressed: an error, not a wrong figure. (Uncompressed, the
/// same change passes unseen: a different value.)
#[test]
fn a_byte_changed_in_a_compressed_result_is_refused() {
    let ch = ClickHouseServer::start();
    let port = flipping_link(ch.addr());
    block_on(ActiveDriver::Epoll, async {
        let mut direct = Connection::connect(&options(&ch, false)).await.expect("connect");
        let expected = direct.select(MANY_TYPES, &[]).await.expect("select");

        let opts = ChOptions { addr: format!("127.0.0.1:{port}"), ..options(&ch, true) };
        let mut lz4 = Connection::connect(&opts).await.expect("connect");
        match lz4.select(MANY_TYPES, &[]).await {
            Err(ChError::Protocol(ProtocolError::Frame(m))) => assert!(m.contains("checksum"), "{m}"),
            other => panic!("{:?}", other.map(|r| r.rows.len())),
        }
        let opts = ChOptions { addr: format!("127.0.0.1:{port}"), ..options(&ch, false) };
        let mut plain = Connection::connect(&opts).await.expect("connect");
        let r = plain.select(MANY_TYPES, &[]).await.expect("select");
        assert_ne!(r, expected, "the change passed unseen uncompressed");
    })
    .expect("runtime");
}

/// A fake server answering one hello and one query with `answer` (each element a packet's
/// bytes), then holding the connection open.
fn fake_server(answer: Vec<Vec<u8>>) -> String {
    use croupier_protocol::clickhouse::wire::{put_str, put_varint};
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        let Ok((mut c, _)) = listener.accept() else { return };
        let mut buf = vec![0u8; 64 * 1024];
        let _ = c.read(&mut buf);
        let mut hello = Vec::new();
        put_varint(&mut hello, 0);
        put_str(&mut hello, b"ClickHouse");
        for v in [18, 16, 54412] {
            put_varint(&mut hello, v);
        }
        put_str(&mut hello, b"UTC");
        put_str(&mut hello, b"fake");
        put_varint(&mut hello, 1);
        let _ = c.write_all(&hello);
        let _ = c.read(&mut buf);
        let _ = c.write_all(&answer.concat());
        std::thread::sleep(Duration::from_secs(30));
    });
    addr
}

/// A select's answer must hold the rows the server counts (its profile info, sent before
/// the end): a block's packet code, outside every checksum, changed into the end's or into
/// totals' by a faulty proxy ended or shortened the answer, a wrong figure served as right.
#[test]
fn an_answer_that_ends_short_of_the_servers_count_is_refused() {
    use croupier_protocol::clickhouse::block::{write_block, Column, ColumnData};
    use croupier_protocol::clickhouse::wire::{put_str, put_varint};
    let data = |rows: u64| {
        let mut ids = ColumnData::fixed(8);
        (0..rows).for_each(|i| ids.push_fixed(&i.to_le_bytes()));
        let mut p = Vec::new();
        put_varint(&mut p, 1);
        put_str(&mut p, b"");
        write_block(&mut p, 54412, &[Column::new("n", "UInt64", ids)], rows as usize);
        p
    };
    let profile = |rows: u64| {
        let mut p = Vec::new();
        for v in [6, rows, 1, rows * 8] {
            put_varint(&mut p, v);
        }
        p.extend_from_slice(&[0, 0, 0]);
        p
    };
    let end = vec![5u8];
    let ask = |answer: Vec<Vec<u8>>| {
        let addr = fake_server(answer);
        block_on(ActiveDriver::Epoll, async move {
            let opts = ChOptions {
                addr,
                database: "default".into(),
                user: "default".into(),
                password: Default::default(),
                compression: false,
                timeout: Duration::from_secs(5),
            };
            let mut conn = Connection::connect(&opts).await.expect("connect");
            conn.select("SELECT n", &[]).await
        })
        .expect("runtime")
    };
    // What a server sends: the header, the rows, their count, an empty block, the end.
    let whole = ask(vec![data(0), data(3), profile(3), data(0), end.clone()]).expect("a whole answer");
    assert_eq!(whole.rows.len(), 3);
    // The rows' packet code changed into the end's: the answer stops after the header.
    match ask(vec![data(0), end.clone()]) {
        Err(ChError::Unexpected(m)) => assert!(m.contains("without the server's count"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Rows set aside (their code changed into totals'): fewer than counted.
    match ask(vec![data(0), data(2), profile(5), end]) {
        Err(ChError::Unexpected(m)) => assert!(m.contains("2 rows received where the server sent 5"), "{m}"),
        other => panic!("{other:?}"),
    }
}
