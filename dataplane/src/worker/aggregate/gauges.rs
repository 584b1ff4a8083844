//! The business gauges (`croupier_realtime_*`) on the control port's `/metrics`, read at
//! scrape time from the worker shards' published sketch readers: no lock a shard takes
//! per event, no Redis or ClickHouse query. Each sketch is raised to Redis's merged value
//! at every round of its shard (`aggregate.flush_ms`), so every worker process reports the
//! all-workers figure (as of its last round, plus its own adds since).

use std::collections::BTreeMap;
use std::sync::Arc;

use croupier_control::metrics::{Encoder, Kind as MetricKind, Source};
use croupier_protocol::hll::Sketch;

use super::sketches::Published;
use super::what::{day_of, minute_of, Kind};

/// The gauges, as a metrics source.
#[derive(Debug)]
pub struct RealtimeGauges {
    published: Arc<Published>,
}

impl RealtimeGauges {
    /// Gauges over the sketches published in `published`.
    pub fn new(published: Arc<Published>) -> RealtimeGauges {
        RealtimeGauges { published }
    }
}

/// The process's sketches of one figure (kind, game, environment, period), every worker
/// shard's merged.
type Merged = BTreeMap<(Kind, Arc<str>, Arc<str>, u32), Sketch>;

/// Each gauge: its name, help, and the kind of sketch it reads.
const FAMILIES: &[(&str, &str, Kind)] = &[
    ("croupier_realtime_online_users", "Distinct players online in the current UTC minute (session_start, heartbeat or an event with a session; the previous minute while the current one holds no player).", Kind::Online),
    ("croupier_realtime_dau", "Distinct players with an event so far today (UTC day), all workers.", Kind::Dau),
    ("croupier_realtime_new_users_today", "Distinct players who registered today (register, first_active, user.register).", Kind::New),
    ("croupier_realtime_payers_today", "Distinct players with a successful payment today.", Kind::Payers),
    ("croupier_realtime_level_starts_today", "Distinct players who started a level today.", Kind::LevelStart),
    ("croupier_realtime_level_completions_today", "Distinct players who cleared a level today.", Kind::LevelClear),
];

impl Source for RealtimeGauges {
    fn encode(&self, enc: &mut Encoder) {
        let now = crate::ingest::now_ms();
        let (minute, today) = (minute_of(now), day_of(now));
        // Every shard's sketch of a figure, merged (register-wise maximum).
        let mut merged: Merged = BTreeMap::new();
        for p in self.published.list() {
            let current = if p.kind.per_minute() {
                p.period + 1 >= minute && p.period <= minute
            } else {
                // Yesterday's new users too: the day-1 cohort.
                p.period == today || (p.kind == Kind::New && p.period + 1 == today)
            };
            // Only sketches raised to Redis's merged key once: the all-workers figure.
            if current && p.read_back.load(std::sync::atomic::Ordering::Relaxed) {
                merged.entry((p.kind, p.game, p.env, p.period)).or_default().merge(&p.reader.snapshot());
            }
        }
        for &(name, help, kind) in FAMILIES {
            let mut wrote = false;
            let mut last: Option<(&str, &str)> = None;
            // Latest period first, so the current minute wins over the previous one, unless
            // it holds no player yet (a sketch of the minute may exist empty: made by an
            // event without a session, or read back from Redis at a worker's start).
            for ((_, game, env, period), sketch) in merged.iter().rev().filter(|((k, ..), _)| *k == kind) {
                if kind == Kind::New && *period != today {
                    continue;
                }
                if last == Some((game, env)) {
                    continue;
                }
                let count = sketch.count();
                if kind.per_minute()
                    && count == 0
                    && *period == minute
                    && merged.contains_key(&(kind, game.clone(), env.clone(), minute.saturating_sub(1)))
                {
                    continue;
                }
                last = Some((game, env));
                if !wrote {
                    enc.family(name, MetricKind::Gauge, help);
                    wrote = true;
                }
                enc.sample(name, &[("game", game), ("env", env)], count);
            }
        }
        d1_retention(enc, &merged, today);
        let refused = self.published.refused();
        if !refused.is_empty() {
            const NAME: &str = "croupier_realtime_adds_refused_total";
            enc.family(
                NAME,
                MetricKind::Counter,
                "Players not counted in the real-time figures: the game held aggregate.max_sketches_per_game sketches on a worker shard, or the shard aggregate.max_sketches (one per sketch an event would have fed), or the environment is past aggregate.max_envs_per_game (one per sketch dropped).",
            );
            for (game, n) in &refused {
                enc.sample(NAME, &[("game", game)], *n);
            }
        }
        const MERGES: &str = "croupier_realtime_merges_refused_total";
        enc.family(
            MERGES,
            MetricKind::Counter,
            "Sketches Redis refused to merge into their hll:* key (PFMERGE failed: the key holds another type, or a string that is no HyperLogLog); the key is left as it is and its figure misses those players: delete or rename it.",
        );
        enc.sample(MERGES, &[], self.published.merges_refused_total());
    }
}

/// `croupier_realtime_d1_retention_ratio`: of yesterday's new users, the share seen
/// today so far — |new(yesterday) ∩ dau(today)| / |new(yesterday)|, the intersection by
/// inclusion–exclusion over the sketches (|A| + |B| − |A ∪ B|, so its error is that of
/// the larger sets: read it as a trend, not a count).
fn d1_retention(enc: &mut Encoder, merged: &Merged, today: u32) {
    const NAME: &str = "croupier_realtime_d1_retention_ratio";
    let Some(yesterday) = today.checked_sub(1) else { return };
    let mut wrote = false;
    for ((kind, game, env, period), cohort) in merged {
        if *kind != Kind::New || *period != yesterday {
            continue;
        }
        let n = cohort.count();
        let Some(active) = merged.get(&(Kind::Dau, game.clone(), env.clone(), today)) else { continue };
        if n == 0 {
            continue;
        }
        let mut union = cohort.clone();
        union.merge(active);
        let both = (n + active.count()).saturating_sub(union.count()).min(n);
        if !wrote {
            enc.family(NAME, MetricKind::Gauge, "Share of yesterday's new users (UTC day) with an event today so far; from the sketches by inclusion-exclusion.");
            wrote = true;
        }
        enc.sample_f64(NAME, &[("game", game), ("env", env)], both as f64 / n as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::aggregate::sketches::Sketches;

    #[test]
    fn day_one_retention_of_a_cohort_half_of_which_came_back() {
        let published = Arc::new(Published::default());
        let mut s = Sketches::new(0, published.clone(), 4096, 512);
        let now = crate::ingest::now_ms();
        let mut cohort = Sketch::new();
        for i in (0..1_000).chain(5_000..6_000) {
            cohort.add(format!("p-{i}").as_bytes());
        }
        for i in 0..3_000 {
            s.event("g", "e", "login", &format!("p-{i}"), "", now);
        }
        // The shard's own adds alone are not the all-workers figure: no gauge until the
        // sketch is raised to Redis's key once (a round's read-back, here the same adds).
        let mut enc = Encoder::new();
        RealtimeGauges::new(published.clone()).encode(&mut enc);
        let text = enc.finish();
        assert!(!text.contains("croupier_realtime_dau"), "{text}");
        let mut dau = Sketch::new();
        for i in 0..3_000 {
            dau.add(format!("p-{i}").as_bytes());
        }
        s.merge_back(Kind::Dau, "g", "e", day_of(now), &dau, true);
        s.merge_back(Kind::New, "g", "e", day_of(now) - 1, &cohort, true);
        let mut enc = Encoder::new();
        RealtimeGauges::new(published).encode(&mut enc);
        let text = enc.finish();
        let d1: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("croupier_realtime_d1_retention_ratio{game=\"g\",env=\"e\"} "))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{text}"));
        assert!((d1 - 0.5).abs() < 0.05, "{d1}");
        assert!(text.contains("croupier_realtime_dau{game=\"g\",env=\"e\"} "), "{text}");
        assert!(!text.contains("croupier_realtime_new_users_today"), "yesterday's cohort is not today's: {text}");
    }

    #[test]
    fn online_is_the_previous_minute_while_the_current_one_holds_no_player() {
        let players = |n: usize, tag: &str| {
            let mut k = Sketch::new();
            for i in 0..n {
                k.add(format!("{tag}-{i}").as_bytes());
            }
            k
        };
        // Made again if the minute turns while it runs (the gauges read the clock).
        let got = loop {
            let published = Arc::new(Published::default());
            let mut s = Sketches::new(0, published.clone(), 4096, 512);
            let minute = minute_of(crate::ingest::now_ms());
            // g1: 30 players last minute, the current minute's sketch made empty (read
            // back at a start, or by an event without a session); g2: 30 last minute, 5
            // now; g3: an empty current minute alone.
            s.merge_back(Kind::Online, "g1", "e", minute - 1, &players(30, "a"), true);
            s.merge_back(Kind::Online, "g1", "e", minute, &Sketch::new(), true);
            s.merge_back(Kind::Online, "g2", "e", minute - 1, &players(30, "b"), true);
            s.merge_back(Kind::Online, "g2", "e", minute, &players(5, "c"), true);
            s.merge_back(Kind::Online, "g3", "e", minute, &Sketch::new(), true);
            let mut enc = Encoder::new();
            RealtimeGauges::new(published).encode(&mut enc);
            if minute_of(crate::ingest::now_ms()) != minute {
                continue;
            }
            let text = enc.finish();
            let line = |g: &str| format!("croupier_realtime_online_users{{game=\"{g}\",env=\"e\"}} ");
            let read = |g: &str| text.lines().find_map(|l| l.strip_prefix(&line(g))).map(str::to_owned);
            break (read("g1"), read("g2"), read("g3"));
        };
        let want = |n: &str| Some(n.to_owned());
        assert_eq!(got, (want("30"), want("5"), want("0")));
    }
}
