//! `analytics.user_days` written by the worker: after `croupier migrate` no materialized
//! view fills it; the worker folds the events it inserts into a row per (UTC day, game,
//! env, user) with exact counts, and counts nothing of an entry it dead-letters.

use croupier_it::http::now_secs;

use crate::fixture::{post_signed, xlen, GAME, SECRET};
use crate::pipeline::Pipeline;

const DAY: i64 = 86_400;

/// Posts `(seconds, user, event)` as one body (an entry per stream the names go to).
fn post(p: &Pipeline, events: &[(i64, &str, &str)]) {
    let items: Vec<String> = events
        .iter()
        .map(|(ts, user, name)| {
            format!(r#"{{"ts":{ts},"game_id":"{GAME}","env":"prod","event":"{name}","user_id":"{user}"}}"#)
        })
        .collect();
    let mut c = p.ingest.client();
    let r = post_signed(&mut c, "/api/ingest/events", GAME, SECRET, format!("[{}]", items.join(",")).as_bytes());
    assert_eq!(r.status, 202, "{}", r.text());
}

/// `user_days` of the game, summed per row: day number, user, events, active, registered,
/// first_active.
const USER_DAYS: &str = "SELECT toUInt16(d), user_id, sum(events), sum(active), sum(registered), sum(first_active) \
    FROM analytics.user_days WHERE game_id = 'g1' AND env = 'prod' GROUP BY d, user_id ORDER BY d, user_id \
    FORMAT TabSeparated";

/// The same fold over `events` (each event once): names without their case (`Login` is a
/// login, as Croupier lowercases names), events without a user in no row.
const FOLD_OF_EVENTS: &str = "SELECT toUInt16(toDate(event_time, 'UTC')) AS d, user_id, count(), \
    countIf(lower(event) IN ('login', 'session_start', 'user.login', 'session.start')), \
    countIf(lower(event) IN ('register', 'user.register')), countIf(lower(event) IN ('first_active')) \
    FROM analytics.events FINAL WHERE game_id = 'g1' AND env = 'prod' AND user_id != '' \
    GROUP BY d, user_id ORDER BY d, user_id FORMAT TabSeparated";

fn user_days_mv(p: &Pipeline) -> u64 {
    p.scalar("SELECT count() FROM system.tables WHERE database = 'analytics' AND name = 'user_days_mv'")
}

/// No view after migrate; the worker's rows for a known set of events, over two UTC days
/// and both event streams (standard names and custom ones), have the exact counts.
#[test]
fn user_days_come_from_the_worker_with_exact_counts() {
    let mut p = Pipeline::start(&[]);
    assert_eq!(user_days_mv(&p), 0, "croupier migrate leaves no user_days_mv");
    let now = now_secs();
    let today = now.div_euclid(DAY);
    let (y, t) = ((today - 1) * DAY + 43_200, today * DAY + 5);
    post(
        &p,
        &[
            (y, "u1", "login"),
            (y + 1, "u1", "session_start"),
            (y + 2, "u1", "register"),
            (y + 3, "u1", "level_start"),
            (t, "u1", "user.login"),
            (t + 1, "u1", "first_active"),
            (t + 2, "u2", "user.register"),
        ],
    );
    post(
        &p,
        &[
            (t + 3, "u2", "session.start"),
            (t + 4, "u2", "Login"),
            (t + 5, "u3", "level_start"),
            (t + 6, "u3", "level_start"),
            // Without a user: nobody's day.
            (t + 7, "", "login"),
        ],
    );
    p.start_worker(&[]);
    p.wait_for(12, "events", Pipeline::distinct_events);
    p.wait_for(0, "pending events", |p| p.pending("analytics:events") as u64);
    p.wait_for(0, "pending custom events", |p| p.pending("analytics:custom") as u64);
    let (y, t) = (today - 1, today);
    let want = format!(
        "{y}\tu1\t4\t2\t1\t0\n\
         {t}\tu1\t2\t1\t0\t1\n\
         {t}\tu2\t3\t2\t1\t0\n\
         {t}\tu3\t2\t0\t0\t0\n"
    );
    assert_eq!(p.clickhouse.query(USER_DAYS), want);
    assert_eq!(p.clickhouse.query(FOLD_OF_EVENTS), want, "the fold of the events in SQL");
    assert!(p.stop_worker());
}

/// An entry ClickHouse refuses (a view on `events` fails on one user's rows, as bad data),
/// found by bisecting its batch and dead-lettered, is counted in no row of `user_days`; the
/// entries inserted around it are, once each.
#[test]
fn a_dead_lettered_entry_counts_in_no_user_day() {
    let mut p = Pipeline::start(&[]);
    assert_eq!(user_days_mv(&p), 0, "croupier migrate leaves no user_days_mv");
    p.clickhouse.query(
        "CREATE MATERIALIZED VIEW analytics.refuse_one_player ENGINE = Memory AS \
         SELECT toUInt32(if(user_id = 'refused', 'not a number', '1')) AS x FROM analytics.events",
    );
    let t = now_secs();
    let day = t.div_euclid(DAY);
    // Entries before and after the refused one, gathered into one batch by the worker.
    for i in 0..4 {
        post(&p, &[(t, &format!("a{i}"), "login"), (t, &format!("a{i}"), "register")]);
    }
    post(&p, &[(t, "refused", "login"), (t, "refused", "register")]);
    for i in 0..4 {
        post(&p, &[(t, &format!("b{i}"), "session_start")]);
    }
    p.start_worker(&[]);
    p.wait_for(1, "dead letters", |p| crate::fixture::xlen(&p.ingest.redis, "analytics:events:dead") as u64);
    p.wait_for(0, "pending events", |p| p.pending("analytics:events") as u64);
    let mut want = String::new();
    for i in 0..4 {
        want.push_str(&format!("{day}\ta{i}\t2\t1\t1\t0\n"));
    }
    for i in 0..4 {
        want.push_str(&format!("{day}\tb{i}\t1\t1\t0\t0\n"));
    }
    assert_eq!(p.clickhouse.query(USER_DAYS), want, "the refused entry's user is in no row");
    assert!(p.stop_worker());
}

/// The view of earlier versions, as they made it.
const OLD_VIEW: &str = "CREATE MATERIALIZED VIEW analytics.user_days_mv TO analytics.user_days \
    AS SELECT toDate(event_time, 'UTC') AS d, game_id, env, user_id, count() AS events, \
    countIf(event IN ('login', 'session_start', 'user.login', 'session.start')) AS active, \
    countIf(event IN ('register', 'user.register')) AS registered, \
    countIf(event IN ('first_active')) AS first_active \
    FROM analytics.events GROUP BY d, game_id, env, user_id";

/// An upgrade: `croupier migrate` keeps the view of an earlier version (its workers still
/// need it) and says so; `--drop-user-days-view` drops it and copies the recent events
/// into `user_days` again, so that what an earlier worker inserted while the view went
/// (here: rows inserted into `events` directly after the view is gone) has its rows.
#[test]
fn migrate_keeps_the_view_of_earlier_workers_until_asked_and_then_catches_up() {
    let p = Pipeline::start(&[]);
    p.clickhouse.query(OLD_VIEW);
    let env = crate::pipeline::env(&p.ingest.redis, &p.clickhouse);
    let (ok, out) = crate::pipeline::croupier(&["migrate"], &env);
    assert!(ok, "{out}");
    assert_eq!(user_days_mv(&p), 1, "kept: {out}");
    assert!(out.contains("analytics.user_days_mv kept"), "{out}");
    // An earlier worker's insert while the view is being dropped: no row in user_days.
    p.clickhouse.query("DROP TABLE analytics.user_days_mv");
    let now = now_secs();
    p.clickhouse.query(&format!(
        "INSERT INTO analytics.events (event_time, game_id, env, user_id, event, event_id) VALUES \
         ({now}, 'g1', 'prod', 'late', 'login', '6c0ffee0-0000-4000-8000-000000000001')"
    ));
    let late = "SELECT count() FROM analytics.user_days WHERE user_id = 'late'";
    assert_eq!(p.scalar(late), 0);
    p.clickhouse.query(OLD_VIEW);
    let (ok, out) = crate::pipeline::croupier(&["migrate", "--drop-user-days-view"], &env);
    assert!(ok, "{out}");
    assert!(out.contains("analytics.user_days_mv dropped"), "{out}");
    assert_eq!(user_days_mv(&p), 0);
    assert_eq!(p.scalar(late), 1, "the recent events copied again");
    let (ok, out) = crate::pipeline::croupier(&["migrate"], &env);
    assert!(ok && !out.contains("user_days_mv kept"), "{out}");
}

/// A `user_days` insert that fails (the table renamed away) after the `events` insert
/// succeeded keeps the batch: its entry stays pending, nothing is dead-lettered; once the
/// table is back, the retry lands the rows in both tables.
#[test]
fn a_failing_user_days_insert_keeps_the_batch_pending() {
    let mut p = Pipeline::start(&[]);
    p.clickhouse.query("RENAME TABLE analytics.user_days TO analytics.user_days_away");
    p.start_worker(&[]);
    let now = now_secs();
    post(&p, &[(now, "k1", "login"), (now + 1, "k2", "login")]);
    p.wait_for(1, "the entry delivered", |p| p.pending("analytics:events") as u64);
    // Several tries (back-off up to 300 ms in the harness): still pending, none dead.
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(p.pending("analytics:events"), 1, "acknowledged without its user_days rows");
    assert_eq!(xlen(&p.ingest.redis, "analytics:events:dead"), 0, "dead-lettered");
    p.clickhouse.query("RENAME TABLE analytics.user_days_away TO analytics.user_days");
    p.wait_for(2, "user_days rows", |p| {
        p.scalar("SELECT count() FROM (SELECT user_id FROM analytics.user_days WHERE user_id IN ('k1', 'k2') GROUP BY user_id)")
    });
    p.wait_for(0, "pending", |p| p.pending("analytics:events") as u64);
    assert_eq!(p.scalar("SELECT count() FROM analytics.events FINAL WHERE user_id IN ('k1', 'k2')"), 2);
    assert_eq!(xlen(&p.ingest.redis, "analytics:events:dead"), 0);
}

/// While the `user_days` insert fails (the table renamed away) after the `events` insert
/// succeeded, the retries send only what is missing: the batch's `events` rows are
/// inserted once (merges stopped, so that a copy would stay a row and a part of its own),
/// however many retries the back-off makes; once the table is back, everything drains,
/// each event once in `events` and each user's day counted once in `user_days`.
#[test]
fn a_failing_user_days_insert_sends_the_events_rows_once() {
    let mut p = Pipeline::start(&[]);
    p.clickhouse.query("SYSTEM STOP MERGES analytics.events");
    p.clickhouse.query("RENAME TABLE analytics.user_days TO analytics.user_days_away");
    let rows = "SELECT count() FROM analytics.events WHERE user_id IN ('k1', 'k2')";
    let parts = "SELECT count() FROM system.parts WHERE database = 'analytics' AND table = 'events' AND active";
    let t = now_secs().div_euclid(DAY) * DAY + 5;
    post(&p, &[(t, "k1", "login"), (t + 1, "k2", "register"), (t + 2, "k1", "level_start")]);
    p.start_worker(&[]);
    p.wait_for(3, "the events rows", |p| p.scalar(rows));
    let inserts = p.scalar(parts);
    // Several retries (back-off up to 300 ms in the harness): no row sent again.
    for _ in 0..10 {
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(p.scalar(rows), 3, "the events rows were sent again with a retry");
        assert_eq!(p.scalar(parts), inserts, "another events insert");
    }
    assert!(p.pending("analytics:events") >= 1, "acknowledged without its user_days rows");
    assert_eq!(xlen(&p.ingest.redis, "analytics:events:dead"), 0, "dead-lettered");
    p.clickhouse.query("RENAME TABLE analytics.user_days_away TO analytics.user_days");
    p.wait_for(0, "pending events", |p| p.pending("analytics:events") as u64);
    p.wait_for(0, "pending custom events", |p| p.pending("analytics:custom") as u64);
    assert_eq!(p.scalar(rows), 3, "each event inserted once");
    let d = t.div_euclid(DAY);
    let want = format!("{d}\tk1\t2\t1\t0\t0\n{d}\tk2\t1\t0\t1\t0\n");
    assert_eq!(p.clickhouse.query(USER_DAYS), want, "each user's day counted once");
    assert_eq!(p.clickhouse.query(FOLD_OF_EVENTS), want);
    assert_eq!(xlen(&p.ingest.redis, "analytics:events:dead"), 0);
    assert!(p.stop_worker());
}

/// An entry whose `user_days` rows ClickHouse refuses as bad data after its `events` rows
/// were stored (here: a view on `user_days` that fails for one user) is dead-lettered, once,
/// saying its rows are stored; the stream goes on (no stall), every other entry's rows and
/// player-days land, and no `events` row is sent twice.
#[test]
fn an_entry_whose_user_days_rows_are_refused_is_dead_lettered_saying_its_rows_are_stored() {
    let mut p = Pipeline::start(&[]);
    p.clickhouse.query("SYSTEM STOP MERGES analytics.events");
    p.clickhouse.query(
        "CREATE MATERIALIZED VIEW analytics.refuse_one_user_day ENGINE = Memory AS \
         SELECT toUInt32(if(user_id = 'refused', 'not a number', '1')) AS x FROM analytics.user_days",
    );
    let rows = "SELECT count() FROM analytics.events WHERE game_id = 'g1'";
    let t = now_secs().div_euclid(DAY) * DAY + 5;
    for i in 0..3 {
        post(&p, &[(t, &format!("a{i}"), "login")]);
    }
    post(&p, &[(t, "refused", "login")]);
    for i in 0..3 {
        post(&p, &[(t, &format!("b{i}"), "login")]);
    }
    p.start_worker(&[]);
    p.wait_for(1, "the dead letter", |p| xlen(&p.ingest.redis, "analytics:events:dead") as u64);
    p.wait_for(0, "pending", |p| p.pending("analytics:events") as u64);
    let dead = croupier_it::redis::xrange(&mut p.ingest.redis.client(), "analytics:events:dead");
    let reason = String::from_utf8_lossy(dead[0].get("reason").expect("reason")).into_owned();
    assert!(reason.contains("its rows are stored"), "{reason}");
    assert_eq!(p.scalar(rows), 7, "each event inserted once, the refused one's too");
    assert_eq!(
        p.scalar("SELECT uniqExact(user_id) FROM analytics.user_days WHERE game_id = 'g1' AND events > 0 AND user_id != 'refused'"),
        6,
        "every other user's day"
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(xlen(&p.ingest.redis, "analytics:events:dead"), 1);
    p.clickhouse.query("DROP TABLE analytics.refuse_one_user_day");
    assert!(p.stop_worker());
}

/// The player views of an earlier schema matched event names with their case and counted
/// events without a user as one player. `croupier migrate` replaces them and copies every
/// `events` row again into their tables and `user_days`: a `Login` counts as a login, a
/// `Register` as a registration, from then on and for the days before; the empty user is
/// in no new row, and the readers of `registered_users` leave out the one the old view
/// wrote. A second migrate copies nothing again.
#[test]
fn migrate_replaces_player_views_that_matched_names_with_their_case() {
    let p = Pipeline::start(&[]);
    let env = crate::pipeline::env(&p.ingest.redis, &p.clickhouse);
    p.clickhouse.query("DROP TABLE analytics.daily_players_mv");
    p.clickhouse.query("DROP TABLE analytics.registered_users_mv");
    p.clickhouse.query(
        "CREATE MATERIALIZED VIEW analytics.daily_players_mv TO analytics.daily_players \
         AS SELECT toDate(event_time, 'UTC') AS d, game_id, env, \
         toUInt8(event IN ('register', 'user.register', 'first_active')) AS kind, uniqCombinedState(user_id) AS users \
         FROM analytics.events WHERE event IN ('login', 'session_start', 'user.login', 'session.start', 'register', \
         'user.register', 'first_active') GROUP BY d, game_id, env, kind",
    );
    p.clickhouse.query(
        "CREATE MATERIALIZED VIEW analytics.registered_users_mv TO analytics.registered_users \
         AS SELECT game_id, env, user_id, minState(toDate(event_time, 'UTC')) AS first_d \
         FROM analytics.events WHERE event IN ('register', 'user.register', 'first_active') \
         GROUP BY game_id, env, user_id",
    );
    let now = now_secs();
    let rows = [("a", "login"), ("b", "Login"), ("c", "SESSION_START"), ("d", "Register"), ("", "register")];
    let values: Vec<String> = rows
        .iter()
        .enumerate()
        .map(|(i, (user, event))| {
            format!("({now}, 'g1', 'prod', '{user}', '{event}', '6c0ffee0-0000-4000-8000-00000000000{i}')")
        })
        .collect();
    p.clickhouse.query(&format!(
        "INSERT INTO analytics.events (event_time, game_id, env, user_id, event, event_id) VALUES {}",
        values.join(", ")
    ));
    let active = "SELECT uniqCombinedMerge(users) FROM analytics.daily_players WHERE kind = 0";
    let registered = "SELECT uniqExact(user_id) FROM analytics.registered_users WHERE user_id != ''";
    let user_days = "SELECT count() FROM analytics.user_days WHERE active > 0";
    assert_eq!((p.scalar(active), p.scalar(registered)), (1, 0), "the earlier views' counts");
    let (ok, out) = crate::pipeline::croupier(&["migrate"], &env);
    assert!(ok, "{out}");
    let views = "SELECT count() FROM system.tables WHERE database = 'analytics' \
                 AND name IN ('daily_players_mv', 'registered_users_mv') AND create_table_query LIKE '%lower(event)%'";
    assert_eq!(p.scalar(views), 2, "{out}");
    assert_eq!((p.scalar(active), p.scalar(registered), p.scalar(user_days)), (3, 1, 3));
    assert_eq!(p.scalar("SELECT count() FROM analytics.user_days WHERE user_id = ''"), 0);
    assert_eq!(p.scalar("SELECT count() FROM system.tables WHERE name = 'player_views_recopy'"), 0);
    // The new views count a new login in another case, and no event without a user.
    p.clickhouse.query(&format!(
        "INSERT INTO analytics.events (event_time, game_id, env, user_id, event, event_id) VALUES \
         ({now}, 'g1', 'prod', 'e', 'User.Login', '6c0ffee0-0000-4000-8000-000000000010'), \
         ({now}, 'g1', 'prod', '', 'login', '6c0ffee0-0000-4000-8000-000000000011')"
    ));
    assert_eq!(p.scalar(active), 4);
    let (ok, out) = crate::pipeline::croupier(&["migrate"], &env);
    assert!(ok && !out.contains("replacing daily_players_mv"), "{out}");
}
