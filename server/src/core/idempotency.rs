//! The per-vehicle log of idempotency keys: bounded in count and in age, so a
//! vehicle's memory stays bounded whatever apps send.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// What a key's first call did.
#[derive(Debug, Clone, PartialEq)]
pub struct IdempotencyEntry {
    /// A fingerprint of the request, to refuse a different request under a used key.
    pub fingerprint: u64,
    /// The vehicle's desired generation after the call.
    pub generation: u64,
    /// Each field of the write and the generation of the value it wrote (or
    /// found in place, for a no-op).
    pub fields: Vec<(Arc<str>, u64)>,
    /// When the call was accepted.
    pub at: SystemTime,
}

/// Keys with their entries, oldest first.
#[derive(Debug, Clone, Default)]
pub struct IdempotencyLog {
    entries: HashMap<Arc<str>, IdempotencyEntry>,
    order: VecDeque<Arc<str>>,
}

impl IdempotencyLog {
    /// The entry of `key`, unless it is older than `window`.
    pub fn get(&self, key: &str, now: SystemTime, window: Duration) -> Option<&IdempotencyEntry> {
        self.entries.get(key).filter(|e| !expired(e, now, window))
    }

    /// Records `key`, then drops entries beyond `max` or older than `window`.
    pub fn insert(&mut self, key: Arc<str>, entry: IdempotencyEntry, max: usize, window: Duration) {
        let now = entry.at;
        if self.entries.insert(key.clone(), entry).is_none() {
            self.order.push_back(key);
        }
        while let Some(oldest) = self.order.front() {
            let too_many = self.order.len() > max;
            let too_old = self.entries.get(oldest).is_none_or(|e| expired(e, now, window));
            if !(too_many || too_old) {
                break;
            }
            let oldest = self.order.pop_front().expect("front exists");
            self.entries.remove(&oldest);
        }
    }

    /// Entries oldest first (for storage).
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &IdempotencyEntry)> {
        self.order.iter().filter_map(|k| self.entries.get_key_value(k))
    }

    /// How many keys are held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn expired(entry: &IdempotencyEntry, now: SystemTime, window: Duration) -> bool {
    now.duration_since(entry.at).is_ok_and(|age| age > window)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(at: SystemTime) -> IdempotencyEntry {
        IdempotencyEntry { fingerprint: 1, generation: 1, fields: vec![], at }
    }

    #[test]
    fn bounded_in_count_and_age() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let window = Duration::from_secs(60);
        let mut log = IdempotencyLog::default();
        for i in 0..10 {
            log.insert(format!("k{i}").into(), entry(t0), 4, window);
        }
        assert_eq!(log.len(), 4);
        assert!(log.get("k9", t0, window).is_some());
        assert!(log.get("k0", t0, window).is_none());
        // Past the window a key is forgotten, and the next insert evicts it.
        let later = t0 + Duration::from_secs(61);
        assert!(log.get("k9", later, window).is_none());
        log.insert("new".into(), entry(later), 4, window);
        assert_eq!(log.len(), 1);
    }
}
