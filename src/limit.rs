//! Token buckets for per-connection rate limits: `rate` units per second refill a bucket of
//! `burst` units; a request takes what it costs or is refused. Pure (time is passed in), so
//! the limits are tested without a socket or a clock.

use tokio::time::Instant;

#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    rate: f64,
    burst: f64,
    level: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket. A rate of 0 or less (or a non-finite one) turns the limit off.
    pub(crate) fn new(rate: f64, burst: f64, now: Instant) -> Bucket {
        Bucket { rate, burst: burst.max(1.0), level: burst.max(1.0), at: now }
    }

    fn unlimited(&self) -> bool {
        !(self.rate.is_finite() && self.rate > 0.0)
    }

    /// Takes `cost` units if the bucket holds them.
    pub(crate) fn take(&mut self, cost: f64, now: Instant) -> bool {
        if self.unlimited() {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.level = (self.level + elapsed * self.rate).min(self.burst);
        if self.level < cost {
            return false;
        }
        self.level -= cost;
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(200.0, 1000.0, t0);
        assert!((0..1000).all(|_| b.take(1.0, t0)), "the burst is available at once");
        assert!(!b.take(1.0, t0));
        let t1 = t0 + Duration::from_millis(100);
        assert!((0..20).all(|_| b.take(1.0, t1)), "20 refilled in 100 ms");
        assert!(!b.take(1.0, t1));
        let later = t1 + Duration::from_secs(3600);
        assert!(
            (0..1000).all(|_| b.take(1.0, later)) && !b.take(1.0, later),
            "capped at the burst"
        );
    }

    #[test]
    fn zero_means_off() {
        let t0 = Instant::now();
        let mut b = Bucket::new(0.0, 1.0, t0);
        assert!((0..10_000).all(|_| b.take(1e9, t0)));
    }
}
