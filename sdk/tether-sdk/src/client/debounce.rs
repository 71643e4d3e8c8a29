//! Debouncing of rapid identical writes: within a window, a repeat of the
//! same write reuses the first call's idempotency key, so tetherd replays the
//! first outcome instead of making a new write.
//!
//! The map is bounded: entries older than the window are evicted, and at most
//! [`MAX_ENTRIES`] are kept (the oldest go first). Time is passed in.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// The most entries a debouncer keeps.
pub(crate) const MAX_ENTRIES: usize = 10_000;

/// Remembers, per write, the idempotency key of its first call in the window.
#[derive(Debug)]
pub(crate) struct Debouncer<K> {
    window: Duration,
    cap: usize,
    inner: Mutex<Inner<K>>,
}

#[derive(Debug)]
struct Inner<K> {
    keys: HashMap<Arc<K>, (String, Instant)>,
    /// Insertion order, for eviction; each entry of `keys` appears once.
    order: VecDeque<(Instant, Arc<K>)>,
}

impl<K: Hash + Eq> Debouncer<K> {
    /// A debouncer with `window` (zero disables it).
    pub(crate) fn new(window: Duration) -> Self {
        Self::with_cap(window, MAX_ENTRIES)
    }

    fn with_cap(window: Duration, cap: usize) -> Self {
        Debouncer { window, cap: cap.max(1), inner: Mutex::new(Inner { keys: HashMap::new(), order: VecDeque::new() }) }
    }

    /// The idempotency key for a write `key` made at `now`: the key of an
    /// identical write made less than the window ago, else `fresh()`, which
    /// is then remembered.
    pub(crate) fn key_for(&self, key: K, now: Instant, fresh: impl FnOnce() -> String) -> String {
        if self.window.is_zero() {
            return fresh();
        }
        let mut inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        inner.evict_older_than(now, self.window);
        if let Some((idempotency_key, _)) = inner.keys.get(&key) {
            return idempotency_key.clone();
        }
        while inner.keys.len() >= self.cap {
            inner.pop_oldest();
        }
        let idempotency_key = fresh();
        let key = Arc::new(key);
        inner.keys.insert(key.clone(), (idempotency_key.clone(), now));
        inner.order.push_back((now, key));
        idempotency_key
    }

    /// How many writes are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).keys.len()
    }
}

impl<K: Hash + Eq> Inner<K> {
    fn evict_older_than(&mut self, now: Instant, window: Duration) {
        while let Some((at, _)) = self.order.front() {
            if now.saturating_duration_since(*at) < window {
                break;
            }
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((_, key)) = self.order.pop_front() {
            self.keys.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn counter() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("key-{n}")
        }
    }

    #[tokio::test(start_paused = true)]
    async fn repeats_within_the_window_share_a_key() {
        let d = Debouncer::new(500 * MS);
        let mut fresh = counter();
        let t0 = Instant::now();
        assert_eq!(d.key_for("open", t0, &mut fresh), "key-1");
        assert_eq!(d.key_for("open", t0 + 100 * MS, &mut fresh), "key-1");
        assert_eq!(d.key_for("close", t0 + 100 * MS, &mut fresh), "key-2");
        assert_eq!(d.key_for("open", t0 + 499 * MS, &mut fresh), "key-1");
        // The window counts from the first call, not the last repeat.
        assert_eq!(d.key_for("open", t0 + 500 * MS, &mut fresh), "key-3");
        // Expired entries are evicted: "close" (from 100 ms) is still in its window.
        assert_eq!(d.len(), 2);
        d.key_for("other", t0 + 2000 * MS, &mut fresh);
        assert_eq!(d.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_window_disables_it() {
        let d = Debouncer::new(Duration::ZERO);
        let mut fresh = counter();
        let t0 = Instant::now();
        assert_eq!(d.key_for("open", t0, &mut fresh), "key-1");
        assert_eq!(d.key_for("open", t0, &mut fresh), "key-2");
        assert_eq!(d.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_map_is_capped() {
        let d = Debouncer::with_cap(Duration::from_secs(60), 3);
        let mut fresh = counter();
        let t0 = Instant::now();
        for (i, k) in ["a", "b", "c", "d"].into_iter().enumerate() {
            d.key_for(k, t0 + i as u32 * MS, &mut fresh);
        }
        assert_eq!(d.len(), 3);
        // "a", the oldest, was dropped; "b" is still remembered.
        assert_eq!(d.key_for("b", t0 + 10 * MS, &mut fresh), "key-2");
        assert_eq!(d.key_for("a", t0 + 10 * MS, &mut fresh), "key-5");
        assert_eq!(MAX_ENTRIES, 10_000);
    }
}
