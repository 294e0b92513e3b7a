//! Exponential backoff with jitter, shared by every retry loop so they all
//! behave the same way under load.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max }
    }

    /// Delay before attempt `attempt + 1` (attempt counts from 1), between
    /// half and all of `initial * 2^(attempt-1)`, capped at `max`. The jitter
    /// keeps several services from retrying in lockstep.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(20);
        let full = self.initial.saturating_mul(1u32 << exponent).min(self.max);
        let factor = rand::rng().random_range(0.5..=1.0);
        full.mul_f64(factor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        assert!(b.delay(1) <= Duration::from_secs(1));
        assert!(b.delay(3) >= Duration::from_secs(2));
        assert!(b.delay(50) <= Duration::from_secs(30));
    }
}
