//! Per-game rate limits, held across all shards of the process.
//!
//! SO_REUSEPORT spreads connections, not requests: a game server on one keep-alive
//! connection reaches one shard. A limit split evenly over the shards would give it a
//! shard's share (1/16 of its quota on 16 cores), so each game has one bucket that every
//! shard takes from: a GCRA ("virtual scheduling") cell, one atomic word holding the
//! theoretical arrival time (TAT), taken with one compare-and-swap per accepted request
//! (not per event). It is the one word on the request path that shards share, on purpose
//! (docs/ingest.md); a game's cell sits alone on its cache line.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use croupier_control::config::Config;

const NANOS_PER_SEC: u64 = 1_000_000_000;
/// How far ahead of now the TAT may be after a request: one second of the rate, so a game
/// can send a second's worth of events at once (the burst).
const TOLERANCE_NS: u64 = NANOS_PER_SEC;

/// How far ahead of now [`GameRate::charge`] may put the TAT: a minute.
const MAX_CHARGED_NS: u64 = 60 * NANOS_PER_SEC;

/// One game's limit: `rate` events per second, with a burst of one second's worth.
#[derive(Debug)]
#[repr(align(64))]
pub struct GameRate {
    /// Events per second.
    rate: u64,
    /// Time zero of `tat`.
    epoch: Instant,
    /// Theoretical arrival time, nanoseconds since `epoch`: the bucket is full
    /// while it is not ahead of now, and each event moves it `1/rate` s further.
    tat: AtomicU64,
}

impl GameRate {
    /// `rate` events per second (more than 0).
    pub fn new(rate: u64) -> GameRate {
        GameRate { rate: rate.max(1), epoch: Instant::now(), tat: AtomicU64::new(0) }
    }

    /// The most events one request may take at once: a second's worth.
    pub fn burst(&self) -> usize {
        usize::try_from(self.rate).unwrap_or(usize::MAX)
    }

    /// How long `n` events take at the rate, in nanoseconds.
    fn cost(&self, n: usize) -> u64 {
        let ns = (n as u128).saturating_mul(u128::from(NANOS_PER_SEC)) / u128::from(self.rate);
        u64::try_from(ns).unwrap_or(u64::MAX)
    }

    /// Takes `n` events at `now`, or says in how many whole seconds they would fit. A
    /// request larger than the burst passes when the bucket is full and leaves it in debt,
    /// so every request can pass eventually and the average rate still holds.
    pub fn take(&self, n: usize, now: Instant) -> Result<(), u64> {
        let now = self.nanos(now);
        let cost = self.cost(n);
        let needed = cost.min(TOLERANCE_NS);
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let base = tat.max(now);
            let ahead = base - now;
            let over = (ahead.saturating_add(needed)).saturating_sub(TOLERANCE_NS);
            if over > 0 {
                return Err(over.div_ceil(NANOS_PER_SEC).max(1));
            }
            match self.tat.compare_exchange_weak(tat, base.saturating_add(cost), Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(current) => tat = current,
            }
        }
    }

    /// `now` in nanoseconds since `epoch`.
    fn nanos(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Charges `n` events at `now` whatever the bucket holds, leaving it in debt if need be
    /// (the work a request made the shard do, accepted or not; [`GameRate::take`] refuses
    /// the next ones until it is paid), but never more than [`MAX_CHARGED_NS`] ahead of
    /// now: a burst of costly requests shuts a public key out for a minute at most after
    /// it, not for as long as their bytes would add up to.
    pub fn charge(&self, n: usize, now: Instant) {
        let (now, cost) = (self.nanos(now), self.cost(n));
        if cost > 0 {
            let cap = now.saturating_add(MAX_CHARGED_NS);
            let _ = self.tat.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |t| {
                Some(t.max(t.max(now).saturating_add(cost).min(cap)))
            });
        }
    }

    /// Gives back `n` events taken for a request that was then not accepted (a replay, or
    /// Redis did not confirm the append).
    pub fn give_back(&self, n: usize) {
        let cost = self.cost(n);
        let _ = self.tat.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |t| Some(t.saturating_sub(cost)));
    }
}

/// Cells of the client-address table: addresses share them by hash, so memory stays
/// fixed whatever the number of clients (two addresses in one cell share its rate: the
/// strict side).
pub const ADDRESS_CELLS: usize = 4096;

/// The rate limits of every limited game, public write key and client address, built
/// once and shared by all shards.
#[derive(Debug, Default)]
pub struct RateLimits {
    games: HashMap<String, Arc<GameRate>>,
    /// One cell per public write key (`client.key_rate_eps`).
    keys: HashMap<String, GameRate>,
    /// Client addresses by hash (`client.address_rate_eps`); empty when unlimited.
    addresses: Vec<GameRate>,
    /// Seeds the address hash, so which addresses share a cell differs per process.
    seed: std::collections::hash_map::RandomState,
}

impl RateLimits {
    /// One cell per game with a `rate_limit_eps` above 0.
    pub fn new(config: &Config) -> RateLimits {
        let games = config
            .games
            .iter()
            .filter(|(_, g)| g.rate_limit_eps > 0)
            .map(|(id, g)| (id.clone(), Arc::new(GameRate::new(g.rate_limit_eps))))
            .collect();
        let c = &config.client;
        let keys = if c.key_rate_eps == 0 {
            HashMap::new()
        } else {
            let all = config.games.values().flat_map(|g| &g.write_keys);
            all.map(|k| (k.clone(), GameRate::new(c.key_rate_eps))).collect()
        };
        let addresses = if c.address_rate_eps == 0 {
            Vec::new()
        } else {
            (0..ADDRESS_CELLS).map(|_| GameRate::new(c.address_rate_eps)).collect()
        };
        RateLimits { games, keys, addresses, seed: Default::default() }
    }

    /// The cell of public write key `key`, if keys are limited.
    pub fn key(&self, key: &str) -> Option<&GameRate> {
        self.keys.get(key)
    }

    /// The cell of client address `ip`, if addresses are limited.
    pub fn address(&self, ip: std::net::IpAddr) -> Option<&GameRate> {
        use std::hash::BuildHasher;
        if self.addresses.is_empty() {
            return None;
        }
        // An IPv6 client holds a /64 (a host picks any address in it): one cell per /64.
        let ip = match ip {
            std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
                std::net::IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into())
            }
            other => other,
        };
        let i = (self.seed.hash_one(ip) % self.addresses.len() as u64) as usize;
        self.addresses.get(i)
    }

    /// The cell of `game`, if it is limited.
    pub fn game(&self, game: &str) -> Option<Arc<GameRate>> {
        self.games.get(game).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    #[test]
    fn an_ipv6_client_holds_one_address_cell_per_64() {
        let mut config = Config::default();
        config.client.address_rate_eps = 10;
        let r = RateLimits::new(&config);
        let ip = |s: &str| s.parse::<std::net::IpAddr>().expect("address");
        let cell = |s: &str| r.address(ip(s)).map(|c| c as *const GameRate);
        assert_eq!(cell("2001:db8:1:2::1"), cell("2001:db8:1:2:ffff:1234:5678:9abc"));
        let a = r.address(ip("2001:db8:1:2::1")).expect("cell");
        assert_eq!(a.burst(), 10);
        // Distinct /64s and IPv4 addresses spread over the cells.
        let distinct: std::collections::HashSet<_> = (0..64).map(|i| cell(&format!("2001:db8:1:{i:x}::1"))).collect();
        assert!(distinct.len() > 32, "{}", distinct.len());
    }

    #[test]
    fn refills_at_the_rate() {
        let b = GameRate::new(100);
        let t0 = Instant::now() + Duration::from_secs(5);
        assert_eq!(b.take(80, t0), Ok(()));
        assert_eq!(b.take(30, t0), Err(1));
        assert_eq!(b.take(30, t0 + Duration::from_millis(100)), Ok(()));
        // Larger than the burst: waits for a full bucket, then leaves a debt.
        assert_eq!(b.take(500, t0 + Duration::from_millis(100)), Err(1));
        assert_eq!(b.take(500, t0 + Duration::from_secs(2)), Ok(()));
        assert_eq!(b.take(1, t0 + Duration::from_secs(3)), Err(4));
    }

    #[test]
    fn given_back_events_can_be_taken_again() {
        let b = GameRate::new(10);
        let now = Instant::now() + Duration::from_secs(1);
        assert_eq!(b.take(10, now), Ok(()));
        assert_eq!(b.take(5, now), Err(1));
        b.give_back(5);
        assert_eq!(b.take(5, now), Ok(()));
        // Giving back more than was taken leaves the bucket full, not fuller.
        b.give_back(1_000);
        assert_eq!(b.take(10, now), Ok(()));
        assert_eq!(b.take(1, now), Err(1));
    }

    #[test]
    fn shards_share_one_rate() {
        let b = Arc::new(GameRate::new(1_000));
        let now = Instant::now() + Duration::from_secs(1);
        let taken: usize = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..1_000).filter(|_| b.take(1, now).is_ok()).count())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap_or(0))
            .sum();
        assert_eq!(taken, 1_000);
    }

    #[test]
    fn a_charge_may_leave_debt_for_a_minute_at_most() {
        let b = GameRate::new(10);
        let now = Instant::now() + Duration::from_secs(1);
        // Nothing charged changes nothing.
        b.charge(0, now);
        assert_eq!(b.take(10, now), Ok(()));
        assert_eq!(b.take(1, now), Err(1));
        // Past the burst: 5 seconds of debt on top of the full second.
        b.charge(50, now);
        assert_eq!(b.take(1, now), Err(6));
        assert_eq!(b.take(1, now + Duration::from_secs(5)), Err(1));
        assert_eq!(b.take(1, now + Duration::from_millis(5_100)), Ok(()));
        // A charge from a full bucket counts from now, not from the past.
        let c = GameRate::new(10);
        c.charge(10, now + Duration::from_secs(60));
        assert_eq!(c.take(1, now + Duration::from_secs(60)), Err(1));
        assert_eq!(c.take(1, now + Duration::from_millis(60_100)), Ok(()));
        // However much is charged, a minute ahead at most; a charge never lowers the debt.
        let d = GameRate::new(10);
        d.charge(1_000_000, now);
        assert_eq!(d.take(1, now), Err(60));
        d.charge(1, now + Duration::from_secs(30));
        assert_eq!(d.take(1, now + Duration::from_secs(30)), Err(30));
        assert_eq!(d.take(1, now + Duration::from_millis(59_100)), Err(1));
        assert_eq!(d.take(1, now + Duration::from_millis(59_300)), Ok(()));
    }
}
