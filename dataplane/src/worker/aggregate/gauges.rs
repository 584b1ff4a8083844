//! The business gauges (`croupier_realtime_*`) on the control port's `/metrics`, read at
//! scrape time from the worker shards' published sketch readers: no lock a shard takes
//! per event, no Redis or ClickHouse query. Each sketch is raised to Redis's merged value
//! at every flush, so every worker process reports the all-workers figure (as of its last
//! flush, plus its own adds since).

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

/// Each gauge: its name, help, and the kind of sketch it reads.
const FAMILIES: &[(&str, &str, Kind)] = &[
    ("croupier_realtime_online", "Distinct players online in the current UTC minute (session_start, heartbeat or an event with a session; the previous minute while the current one has none).", Kind::Online),
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
        let mut merged: BTreeMap<(Kind, Arc<str>, Arc<str>, u32), Sketch> = BTreeMap::new();
        for p in self.published.list() {
            let current =
                if p.kind.per_minute() { p.period + 1 >= minute && p.period <= minute } else { p.period == today };
            if current {
                merged.entry((p.kind, p.game, p.env, p.period)).or_default().merge(&p.reader.snapshot());
            }
        }
        for &(name, help, kind) in FAMILIES {
            let mut wrote = false;
            let mut last: Option<(&str, &str)> = None;
            // Latest period first, so the current minute wins over the previous one.
            for ((k, game, env, _), sketch) in merged.iter().rev().filter(|((k, ..), _)| *k == kind) {
                debug_assert_eq!(*k, kind);
                if last == Some((game, env)) {
                    continue;
                }
                last = Some((game, env));
                if !wrote {
                    enc.family(name, MetricKind::Gauge, help);
                    wrote = true;
                }
                enc.sample(name, &[("game", game), ("env", env)], sketch.count());
            }
        }
    }
}
