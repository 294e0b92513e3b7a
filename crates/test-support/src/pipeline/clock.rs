//! A [`ManualClock`] that also tells who looked at it: how often the time
//! was read and how many waits for a later moment began. A test that moves
//! the clock can then wait until the service has looked at the new time
//! (and decided to do nothing) instead of sleeping and hoping it did.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use backup_core::clock::{Clock, ManualClock};
use chrono::{DateTime, Utc};
use tokio::time::Instant;

use super::WAIT;

/// Clones share the time and the counters.
#[derive(Debug, Clone)]
pub struct WatchedClock {
    clock: ManualClock,
    reads: Arc<AtomicU64>,
    sleeps: Arc<AtomicU64>,
    targets: Arc<Mutex<Vec<DateTime<Utc>>>>,
}

impl WatchedClock {
    pub fn new(start: DateTime<Utc>) -> WatchedClock {
        WatchedClock {
            clock: ManualClock::new(start),
            reads: Arc::default(),
            sleeps: Arc::default(),
            targets: Arc::default(),
        }
    }

    pub fn set(&self, at: DateTime<Utc>) {
        self.clock.set(at);
    }

    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// How many times the time was read so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }

    /// How many waits for a moment (`sleep_until`) began so far.
    pub fn sleeps(&self) -> u64 {
        self.sleeps.load(Ordering::SeqCst)
    }

    /// The moments waited for so far, in the order the waits began.
    pub fn wait_targets(&self) -> Vec<DateTime<Utc>> {
        self.targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits (up to [`WAIT`]) until the time has been read `more` times
    /// after the wait is first polled. A service that looks at the clock in a loop has
    /// then finished at least `more - 1` rounds on the current time.
    pub async fn read_again(&self, more: u64) {
        let target = self.reads() + more;
        self.wait(&format!("{more} more read(s) of the clock"), || {
            self.reads() >= target
        })
        .await;
    }

    /// Waits (up to [`WAIT`]) until `count` waits for a moment have begun
    /// in all: a scheduler parked on its next slot.
    pub async fn sleeping(&self, count: u64) {
        self.wait(&format!("{count} wait(s) on the clock"), || {
            self.sleeps() >= count
        })
        .await;
    }

    async fn wait(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what} (reads {}, waits {})",
                self.reads(),
                self.sleeps()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Clock for WatchedClock {
    fn now(&self) -> DateTime<Utc> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.clock.now()
    }

    fn sleep_until(&self, at: DateTime<Utc>) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        self.targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(at);
        let waiting = self.clock.sleep_until(at);
        // Counted once the wait is subscribed to the time, so a test that
        // saw the count and moves the clock wakes it.
        self.sleeps.fetch_add(1, Ordering::SeqCst);
        waiting
    }
}
