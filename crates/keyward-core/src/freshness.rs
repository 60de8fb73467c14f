//! Whether this node's caches may be served without asking the store (see the `cluster` module). A leaf, so
//! that the engine holds one without depending on the code that follows the change feed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long one successful poll of the change feed keeps the caches trusted.
pub const TRUST_WINDOW: Duration = Duration::from_millis(1000);

/// Whether this node's caches may be used without asking the store.
pub struct Freshness {
    shared: bool,
    epoch: Instant,
    /// Milliseconds after `epoch` until which caches are trusted.
    valid_until: AtomicU64,
}

impl Freshness {
    /// For a store that only this process writes, caches are always true.
    pub fn new(shared: bool) -> Freshness {
        Freshness {
            shared,
            epoch: Instant::now(),
            valid_until: AtomicU64::new(0),
        }
    }

    /// True when cached records may be served.
    #[inline]
    pub fn trusted(&self) -> bool {
        !self.shared
            || (self.epoch.elapsed().as_millis() as u64) < self.valid_until.load(Ordering::Acquire)
    }

    /// Records that every change committed before `poll_started` has been applied.
    pub fn confirm(&self, poll_started: Instant) {
        let until = poll_started.saturating_duration_since(self.epoch) + TRUST_WINDOW;
        self.valid_until
            .fetch_max(until.as_millis() as u64, Ordering::AcqRel);
    }

    /// Stops trusting the caches until the next confirmation.
    pub fn revoke(&self) {
        self.valid_until.store(0, Ordering::Release);
    }
}
