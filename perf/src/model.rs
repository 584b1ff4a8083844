//! A player model producing realistic game traffic: sessions with heartbeats, level
//! attempts, economy, ads, purchases and custom events. Seeded, so runs are reproducible.

use std::fmt::Write;

/// One player's state in the model.
#[derive(Debug, Clone)]
struct Player {
    id: u64,
    session: u64,
    level: u32,
    coins: u64,
    in_session: bool,
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
}

const PLATFORMS: [&str; 3] = ["android", "ios", "web"];
const COUNTRIES: [&str; 8] = ["US", "BR", "DE", "JP", "KR", "IN", "FR", "MX"];
const CUSTOM: [&str; 4] = ["boss_killed", "guild_joined", "quest_accepted", "chest_opened"];

impl TrafficModel {
    /// A model of `players` players of `game`, aiming at about `event_bytes` per event.
    pub fn new(seed: u64, game: &str, players: usize, event_bytes: usize) -> TrafficModel {
        let players = (0..players.max(1) as u64)
            .map(|id| Player { id, session: 0, level: 1, coins: 100, in_session: false })
            .collect();
        // A typical event without padding is about 260 bytes.
        let pad = "x".repeat(event_bytes.saturating_sub(260));
        TrafficModel {
            rng: fastrand::Rng::with_seed(seed),
            game: game.to_owned(),
            players,
            sessions: 0,
            orders: 0,
            pad,
        }
    }

    fn next_event(&mut self, ts_ms: i64, out: &mut String) {
        let i = self.rng.usize(..self.players.len());
        let roll = self.rng.u32(..100);
        let p = &mut self.players[i];
        let (name, props): (&str, String) = if !p.in_session {
            p.in_session = true;
            self.sessions += 1;
            p.session = self.sessions;
            ("session_start", String::new())
        } else {
            match roll {
                0..=24 => ("heartbeat", String::new()),
                25..=44 => ("level_start", format!(r#""level":{}"#, p.level)),
                45..=57 => {
                    p.level += 1;
                    ("level_complete", format!(r#""level":{},"stars":{}"#, p.level - 1, 1 + roll % 3))
                }
                58..=64 => ("level_fail", format!(r#""level":{},"reason":"timeout""#, p.level)),
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
                    ("session_end", format!(r#""duration_s":{}"#, 60 + roll))
                }
                _ => (CUSTOM[roll as usize % CUSTOM.len()], format!(r#""level":{}"#, p.level)),
            }
        };
        let sep = if props.is_empty() { "" } else { "," };
        let _ = write!(
            out,
            r#"{{"ts":{ts_ms},"game_id":"{}","env":"prod","event":"{name}","user_id":"player-{:07}","session_id":"s-{:09}","device_id":"dev-{:07}","channel":"store","platform":"{}","country":"{}","app_version":"3.14.2","props":{{{props}{sep}"pad":"{}"}}}}"#,
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
            let player = self.rng.usize(..self.players.len());
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
