//! A player model producing realistic game traffic: sessions with heartbeats, level
//! attempts, economy, ads, purchases and custom events. Seeded, so runs are reproducible.
//!
//! The load generator (`croupier-loadgen`, `croupier-perf`) and `croupier demo` share it;
//! it lives here because the perf crate depends on the data plane, not the reverse. The
//! demo also lets players join over time ([`TrafficModel::set_joined`]), each with a
//! `register` event first ([`TrafficModel::with_registrations`]), and gives every event
//! an `event_id`, so that what ClickHouse holds can be compared with what was accepted.

use std::fmt::Write;

/// One player's state in the model.
#[derive(Debug, Clone)]
struct Player {
    id: u64,
    session: u64,
    level: u32,
    /// Playing `level` (started, neither cleared nor failed yet).
    in_level: bool,
    coins: u64,
    in_session: bool,
    registered: bool,
}

/// Generates request bodies of events (and payments) for one game.
#[derive(Debug)]
pub struct TrafficModel {
    rng: fastrand::Rng,
    game: String,
    players: Vec<Player>,
    sessions: u64,
    orders: u64,
    /// Extra bytes of props per event, to reach a target event size.
    pad: String,
    /// Players `0..joined` are in the game (all of them unless [`Self::set_joined`]).
    joined: usize,
    /// A player's first event is `register` (see [`Self::with_registrations`]).
    registrations: bool,
    /// Every event carries a random `event_id`.
    event_ids: bool,
}

const PLATFORMS: [&str; 3] = ["android", "ios", "web"];
const COUNTRIES: [&str; 8] = ["US", "BR", "DE", "JP", "KR", "IN", "FR", "MX"];
const CUSTOM: [&str; 4] = ["boss_killed", "guild_joined", "quest_accepted", "chest_opened"];

impl TrafficModel {
    /// A model of `players` players of `game`, aiming at about `event_bytes` per event.
    pub fn new(seed: u64, game: &str, players: usize, event_bytes: usize) -> TrafficModel {
        let players = (0..players.max(1) as u64)
            .map(|id| Player {
                id,
                session: 0,
                level: 1,
                in_level: false,
                coins: 100,
                in_session: false,
                registered: false,
            })
            .collect::<Vec<_>>();
        let joined = players.len();
        // A typical event without padding is about 260 bytes.
        let pad = "x".repeat(event_bytes.saturating_sub(260));
        TrafficModel {
            rng: fastrand::Rng::with_seed(seed),
            game: game.to_owned(),
            players,
            sessions: 0,
            orders: 0,
            pad,
            joined,
            registrations: false,
            event_ids: false,
        }
    }

    /// Numbers the players from `first` (ids `player-<first + i>`), so that another run
    /// brings other players; each player's first event is `register`, and every event
    /// carries an `event_id`.
    pub fn with_registrations(mut self, first: u64) -> TrafficModel {
        for (i, p) in self.players.iter_mut().enumerate() {
            p.id = first + i as u64;
        }
        self.registrations = true;
        self.event_ids = true;
        self
    }

    /// Only the first `n` players (at least one) play from now on: players join a game
    /// over the day.
    pub fn set_joined(&mut self, n: usize) {
        self.joined = n.clamp(1, self.players.len());
    }

    /// How many players are in the game.
    pub fn joined(&self) -> usize {
        self.joined
    }

    fn next_event(&mut self, ts_ms: i64, out: &mut String) {
        let i = self.rng.usize(..self.joined);
        let roll = self.rng.u32(..100);
        let p = &mut self.players[i];
        let (name, props): (&str, String) = if self.registrations && !p.registered {
            p.registered = true;
            ("register", String::new())
        } else if !p.in_session {
            p.in_session = true;
            self.sessions += 1;
            p.session = self.sessions;
            ("session_start", String::new())
        } else {
            match roll {
                0..=24 => ("heartbeat", String::new()),
                // A level is started, then cleared or failed: never cleared unstarted.
                25..=64 if !p.in_level => {
                    p.in_level = true;
                    ("level_start", format!(r#""level":{}"#, p.level))
                }
                25..=57 => {
                    p.in_level = false;
                    p.level += 1;
                    ("level_complete", format!(r#""level":{},"stars":{}"#, p.level - 1, 1 + roll % 3))
                }
                58..=64 => {
                    p.in_level = false;
                    ("level_fail", format!(r#""level":{},"reason":"timeout""#, p.level))
                }
                65..=74 => {
                    p.coins += 25;
                    ("economy_earn", format!(r#""currency":"coins","amount":25,"balance":{}"#, p.coins))
                }
                75..=81 => {
                    p.coins = p.coins.saturating_sub(10);
                    ("economy_spend", r#""currency":"coins","amount":10,"item":"booster""#.to_owned())
                }
                82..=87 => ("ad_impression", r#""network":"admob","placement":"rewarded""#.to_owned()),
                88..=89 => {
                    p.in_session = false;
                    p.in_level = false;
                    ("session_end", format!(r#""duration_s":{}"#, 60 + roll))
                }
                _ => (CUSTOM[roll as usize % CUSTOM.len()], format!(r#""level":{}"#, p.level)),
            }
        };
        let sep = if props.is_empty() { "" } else { "," };
        if self.event_ids {
            // A random (version 4) UUID: the event's dedup key.
            let r = self.rng.u128(..);
            let r = (r & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
            let _ = write!(
                out,
                r#"{{"event_id":"{:08x}-{:04x}-{:04x}-{:04x}-{:012x}","#,
                (r >> 96) as u32,
                (r >> 80) as u16,
                (r >> 64) as u16,
                (r >> 48) as u16,
                r & 0xffff_ffff_ffff
            );
        } else {
            out.push('{');
        }
        let _ = write!(
            out,
            r#""ts":{ts_ms},"game_id":"{}","env":"prod","event":"{name}","user_id":"player-{:07}","session_id":"s-{:09}","device_id":"dev-{:07}","channel":"store","platform":"{}","country":"{}","app_version":"3.14.2","props":{{{props}{sep}"pad":"{}"}}}}"#,
            self.game,
            p.id,
            p.session,
            p.id,
            PLATFORMS[(p.id % 3) as usize],
            COUNTRIES[(p.id % 8) as usize],
            self.pad,
        );
    }

    /// A JSON array of `n` events stamped `ts_ms`.
    pub fn events_body(&mut self, n: usize, ts_ms: i64) -> String {
        let mut out = String::with_capacity(n * (300 + self.pad.len()) + 2);
        out.push('[');
        for k in 0..n {
            if k > 0 {
                out.push(',');
            }
            self.next_event(ts_ms, &mut out);
        }
        out.push(']');
        out
    }

    /// A JSON array of `n` payments stamped `ts_ms`.
    pub fn payments_body(&mut self, n: usize, ts_ms: i64) -> String {
        let mut out = String::from("[");
        for k in 0..n {
            if k > 0 {
                out.push(',');
            }
            self.orders += 1;
            let player = self.players[self.rng.usize(..self.joined)].id;
            let amount = [99, 499, 999, 1999][self.rng.usize(..4)];
            let status = if self.rng.u32(..100) < 95 { "success" } else { "failed" };
            let _ = write!(
                out,
                r#"{{"ts":{ts_ms},"game_id":"{}","env":"prod","user_id":"player-{player:07}","order_id":"ord-{}-{}","amount_cents":{amount},"currency":"USD","status":"{status}","platform":"android","country":"US","product_id":"gems_{amount}"}}"#,
                self.game,
                self.rng.u64(..),
                self.orders,
            );
        }
        out.push(']');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_come_first_and_events_carry_ids() {
        let mut m = TrafficModel::new(3, "g1", 10, 0).with_registrations(2_000_000);
        m.set_joined(2);
        let body = m.events_body(4, 1_795_617_749_000);
        assert_eq!(body.matches(r#""event":"register""#).count(), 2, "{body}");
        assert!(body.contains(r#""user_id":"player-2000000""#) && body.contains(r#""user_id":"player-2000001""#));
        assert!(!body.contains("player-2000002"), "only joined players play: {body}");
        assert_eq!(body.matches(r#""event_id":""#).count(), 4);
        let (mut e, mut c) =
            (croupier_protocol::envelope::EventBatch::default(), croupier_protocol::envelope::EventBatch::default());
        let mut buf = body.into_bytes();
        let limits = croupier_protocol::validate::Limits::default();
        croupier_protocol::validate::parse_events(&mut buf, "g1", &limits, &mut || [0; 16], &mut e, &mut c)
            .expect("valid");
        assert_eq!(e.len() + c.len(), 4);
    }

    /// Each player's levels are started before they are cleared or failed: per level, as
    /// many starts at least as clears and fails together (a pass rate of at most 100 %).
    #[test]
    fn levels_are_started_before_they_end() {
        let mut m = TrafficModel::new(5, "g1", 50, 0);
        m.set_joined(50);
        let body = m.events_body(20_000, 1_795_617_749_000);
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        let mut per_level: std::collections::HashMap<(String, u64), (u32, u32)> = Default::default();
        for e in v.as_array().expect("a list of events") {
            let Some(level) = e["props"]["level"].as_u64() else { continue };
            let key = (e["user_id"].as_str().unwrap_or("").to_owned(), level);
            let (starts, ends) = per_level.entry(key).or_default();
            match e["event"].as_str() {
                Some("level_start") => *starts += 1,
                Some("level_complete" | "level_fail") => *ends += 1,
                _ => {}
            }
        }
        assert!(per_level.values().any(|(_, ends)| *ends > 0));
        assert!(per_level.values().all(|(starts, ends)| ends <= starts), "{per_level:?}");
    }

    #[test]
    fn bodies_validate_and_are_reproducible() {
        let mut a = TrafficModel::new(7, "g1", 1000, 300);
        let mut b = TrafficModel::new(7, "g1", 1000, 300);
        let body = a.events_body(100, 1_795_617_749_000);
        assert_eq!(body, b.events_body(100, 1_795_617_749_000));
        let per_event = body.len() / 100;
        assert!((250..350).contains(&per_event), "{per_event} bytes per event");
        let (mut e, mut c) =
            (croupier_protocol::envelope::EventBatch::default(), croupier_protocol::envelope::EventBatch::default());
        let mut buf = body.into_bytes();
        croupier_protocol::validate::parse_events(
            &mut buf,
            "g1",
            &croupier_protocol::validate::Limits::default(),
            &mut || [0; 16],
            &mut e,
            &mut c,
        )
        .expect("valid");
        assert_eq!(e.len() + c.len(), 100);
        let mut pay = a.payments_body(3, 1_795_617_749_000).into_bytes();
        let mut out = Vec::new();
        croupier_protocol::validate::parse_payments(&mut pay, "g1", &Default::default(), &mut out).expect("valid");
        assert_eq!(out.len(), 3);
    }
}
