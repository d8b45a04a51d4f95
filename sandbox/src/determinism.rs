//! The host services a module can observe, made the same on every machine.
//!
//! - Random numbers: SHA-256 in counter mode over the work unit's seed, so every replica of
//!   a work unit draws the same bytes, on any client version, forever.
//! - Clocks: the wall clock is frozen at the Unix epoch and the monotonic clock advances one
//!   microsecond per reading. A module can still measure intervals and order events, but
//!   time cannot leak into its output and make replicas disagree.

use std::convert::Infallible;
use std::time::Duration;

use wasmgrid_protocol::hash::Sha256Hasher;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock};

/// Deterministic random bytes from a seed.
pub struct SeededRandom {
    seed: u64,
    counter: u64,
    block: [u8; 32],
    used: usize,
}

impl SeededRandom {
    pub fn new(seed: u64) -> Self {
        Self { seed, counter: 0, block: [0; 32], used: 32 }
    }

    fn next_byte(&mut self) -> u8 {
        if self.used == self.block.len() {
            let mut hasher = Sha256Hasher::new();
            hasher.update(b"wasmgrid random v1");
            hasher.update(&self.seed.to_le_bytes());
            hasher.update(&self.counter.to_le_bytes());
            self.block = *hasher.finish().as_bytes();
            self.counter += 1;
            self.used = 0;
        }
        self.used += 1;
        self.block[self.used - 1]
    }
}

impl rand_core_wasi::TryRng for SeededRandom {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut bytes = [0; 4];
        self.try_fill_bytes(&mut bytes)?;
        Ok(u32::from_le_bytes(bytes))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut bytes = [0; 8];
        self.try_fill_bytes(&mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    fn try_fill_bytes(&mut self, destination: &mut [u8]) -> Result<(), Infallible> {
        for byte in destination {
            *byte = self.next_byte();
        }
        Ok(())
    }
}

/// A wall clock stopped at the Unix epoch.
pub struct FrozenWallClock;

impl HostWallClock for FrozenWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

/// A monotonic clock that advances one microsecond each time it is read.
#[derive(Default)]
pub struct SteppingClock {
    readings: std::sync::atomic::AtomicU64,
}

impl HostMonotonicClock for SteppingClock {
    fn resolution(&self) -> u64 {
        1_000
    }

    fn now(&self) -> u64 {
        (self.readings.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1) * 1_000
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core_wasi::TryRng;

    #[test]
    fn the_same_seed_gives_the_same_bytes_and_another_seed_others() {
        let draw = |seed| {
            let mut random = SeededRandom::new(seed);
            let mut bytes = [0u8; 100];
            random.try_fill_bytes(&mut bytes).unwrap();
            bytes
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
    }

    #[test]
    fn the_stepping_clock_always_moves_forward() {
        let clock = SteppingClock::default();
        let first = clock.now();
        assert!(clock.now() > first);
    }
}
