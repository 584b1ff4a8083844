//! Per-game rate limits: a token bucket per game on each shard, holding the shard's share
//! of the game's events-per-second limit.

use std::time::Instant;

/// A token bucket counting events.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `rate` events per second, holding at most `burst`.
    pub fn new(rate: f64, burst: f64) -> TokenBucket {
        TokenBucket { rate, burst, tokens: burst, last: Instant::now() }
    }

    /// Takes `n` tokens, or says in how many whole seconds they will be there. A request
    /// larger than the burst passes when the bucket is full and leaves it in debt, so
    /// every request can pass eventually and the average rate still holds.
    pub fn take(&mut self, n: usize, now: Instant) -> Result<(), u64> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        let n = n as f64;
        let needed = n.min(self.burst);
        if needed <= self.tokens {
            self.tokens -= n;
            return Ok(());
        }
        let wait = ((needed - self.tokens) / self.rate).ceil();
        Err((wait as u64).max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100.0, 100.0);
        assert_eq!(b.take(80, t0), Ok(()));
        assert_eq!(b.take(30, t0), Err(1));
        assert_eq!(b.take(30, t0 + Duration::from_millis(100)), Ok(()));
        // Larger than the burst: waits for a full bucket, then leaves a debt.
        assert_eq!(b.take(500, t0 + Duration::from_millis(100)), Err(1));
        assert_eq!(b.take(500, t0 + Duration::from_secs(2)), Ok(()));
        assert_eq!(b.take(1, t0 + Duration::from_secs(3)), Err(4));
    }
}
