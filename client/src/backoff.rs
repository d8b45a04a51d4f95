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

/// The wait after the `failures`-th failure in a row that came with a server's advice: the
/// advice, but at least 2^(failures - 1) seconds (up to an hour), so that a server that keeps
/// asking for a second while it is overloaded still sees its volunteers back off; spread
/// over up to half as long again, so that volunteers told the same thing at the same
/// moment do not all come back in the same second.
pub fn after_advice(advised: Duration, failures: u32) -> Duration {
    use rand::Rng;
    let growing = Duration::from_secs(1u64 << failures.saturating_sub(1).min(12)).min(Duration::from_secs(3600));
    advised.max(growing).mul_f64(rand::rng().random_range(1.0..1.5))
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
    fn advised_waits_are_kept_spread_and_grow_while_failures_go_on() {
        for _ in 0..20 {
            let wait = after_advice(Duration::from_secs(2), 1);
            assert!((Duration::from_secs(2)..Duration::from_secs(3)).contains(&wait), "{wait:?}");
        }
        assert!(after_advice(Duration::ZERO, 1) >= Duration::from_secs(1));
        let tenth = after_advice(Duration::from_secs(1), 10);
        assert!((Duration::from_secs(512)..Duration::from_secs(768)).contains(&tenth), "{tenth:?}");
        assert!(after_advice(Duration::from_secs(1), 40) < Duration::from_secs(5400));
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
