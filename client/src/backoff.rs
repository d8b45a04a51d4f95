//! Capped exponential backoff with random jitter, as BOINC does it: the wait doubles from a
//! minimum to a maximum, times a random factor between 0.5 and 1, so that thousands of
//! volunteers do not come back in the same second.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { min, max: max.max(min), failures: 0 }
    }

    /// Records a failure and returns how long to wait before trying again.
    pub fn failed(&mut self) -> Duration {
        let doubled = self.min.saturating_mul(1u32 << self.failures.min(20));
        self.failures = self.failures.saturating_add(1);
        let ceiling = doubled.min(self.max);
        ceiling.mul_f64(rand_factor())
    }

    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// A wait the server advised, spread over up to half as long again, so that volunteers told
/// the same thing at the same moment do not all come back in the same second; never less
/// than a second.
pub fn spread(advised: Duration) -> Duration {
    use rand::Rng;
    advised.max(Duration::from_secs(1)).mul_f64(rand::rng().random_range(1.0..1.5))
}

/// Uniform in [0.5, 1.0).
fn rand_factor() -> f64 {
    use rand::Rng;
    rand::rng().random_range(0.5..1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_maximum_with_jitter() {
        let mut backoff = Backoff::new(Duration::from_secs(60), Duration::from_secs(4 * 3600));
        let mut ceiling = Duration::from_secs(60);
        for _ in 0..12 {
            let wait = backoff.failed();
            assert!(wait >= ceiling / 2 && wait <= ceiling, "{wait:?} outside [{:?}, {ceiling:?}]", ceiling / 2);
            ceiling = (ceiling * 2).min(Duration::from_secs(4 * 3600));
        }
        backoff.succeeded();
        assert!(backoff.failed() <= Duration::from_secs(60));
    }

    #[test]
    fn advised_waits_are_kept_and_spread() {
        for _ in 0..20 {
            let wait = spread(Duration::from_secs(2));
            assert!((Duration::from_secs(2)..Duration::from_secs(3)).contains(&wait), "{wait:?}");
        }
        assert!(spread(Duration::ZERO) >= Duration::from_secs(1));
    }

    #[test]
    fn volunteers_failing_together_come_back_at_different_times() {
        let waits: std::collections::BTreeSet<Duration> =
            (0..50).map(|_| Backoff::new(Duration::from_secs(60), Duration::from_secs(4 * 3600)).failed()).collect();
        // Fifty equal draws from [30 s, 60 s) would mean the jitter is gone.
        assert!(waits.len() > 1, "{waits:?}");
        assert!(waits.iter().all(|wait| (Duration::from_secs(30)..Duration::from_secs(60)).contains(wait)));
    }
}
