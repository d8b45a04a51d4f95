//! What every background loop shares: waiting that a shutdown cuts short, and failing
//! quietly. A loop that fails backs off (doubling from its interval up to a minute, with
//! jitter, so that server processes do not retry in step) and logs one line when it starts
//! failing and one when it recovers, whatever happens in between: an hour-long database
//! outage must not write a line per try.

use std::time::{Duration, Instant};

use tokio::sync::watch;

/// The longest a failing loop waits before trying again.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A loop's run of failures.
#[derive(Debug)]
pub struct Failures {
    what: &'static str,
    base: Duration,
    count: u32,
    since: Option<Instant>,
}

impl Failures {
    /// For the loop doing `what`, which normally runs every `interval`.
    pub fn new(what: &'static str, interval: Duration) -> Self {
        Self { what, base: interval.clamp(Duration::from_millis(100), MAX_BACKOFF), count: 0, since: None }
    }

    /// Records a failure and returns how long to wait before trying again. Only the first
    /// of a run is logged.
    pub fn failed(&mut self, error: &anyhow::Error) -> Duration {
        if self.since.is_none() {
            tracing::warn!(error = format!("{error:#}"), "{} failing; retrying with backoff", self.what);
            self.since = Some(Instant::now());
        }
        let ceiling = self.base.saturating_mul(1u32 << self.count.min(16)).min(MAX_BACKOFF);
        self.count = self.count.saturating_add(1);
        ceiling.mul_f64(jitter())
    }

    /// Records a success, logging the end of a run of failures.
    pub fn succeeded(&mut self) {
        if let Some(since) = self.since.take() {
            tracing::info!(
                failures = self.count,
                failing_ms = since.elapsed().as_millis() as u64,
                "{} working again",
                self.what
            );
        }
        self.count = 0;
    }
}

/// Uniform in [0.5, 1.0).
fn jitter() -> f64 {
    use rand::Rng;
    rand::rng().random_range(0.5..1.0)
}

/// Waits `duration`, or until `shutdown` fires; `false` if it did.
pub async fn pause(duration: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    if *shutdown.borrow() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(duration) => true,
        _ = shutdown.changed() => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_back_off_to_a_minute_and_start_over_after_a_success() {
        let mut failures = Failures::new("a test loop", Duration::from_secs(5));
        let error = anyhow::anyhow!("down");
        let mut ceiling = Duration::from_secs(5);
        for _ in 0..8 {
            let wait = failures.failed(&error);
            assert!(wait >= ceiling / 2 && wait < ceiling, "{wait:?} outside [{:?}, {ceiling:?})", ceiling / 2);
            ceiling = (ceiling * 2).min(MAX_BACKOFF);
        }
        failures.succeeded();
        assert!(failures.failed(&error) < Duration::from_secs(5));
    }
}
