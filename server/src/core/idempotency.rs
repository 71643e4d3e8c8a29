//! The per-vehicle log of idempotency keys: bounded in count and in age, so a
//! vehicle's memory stays bounded whatever apps send. The log also journals
//! which keys were added and forgotten since the store last took them, so a
//! save writes only those (the log is stored key by key, never whole).

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
    /// Keys added since the last [`take_changes`](Self::take_changes).
    added: Vec<Arc<str>>,
    /// Keys forgotten since then.
    forgotten: Vec<Arc<str>>,
}

/// What changed in a log since the store last took its changes: keys to put
/// (with their entries) and keys to delete. The two never share a key.
#[derive(Debug, Default, PartialEq)]
pub struct KeyChanges {
    /// Keys now held that the store may not have.
    pub put: Vec<(Arc<str>, IdempotencyEntry)>,
    /// Keys no longer held that the store may still have.
    pub gone: Vec<Arc<str>>,
}

impl KeyChanges {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.put.is_empty() && self.gone.is_empty()
    }
}

impl IdempotencyLog {
    /// The entry of `key`, unless it is older than `window`.
    pub fn get(&self, key: &str, now: SystemTime, window: Duration) -> Option<&IdempotencyEntry> {
        self.entries.get(key).filter(|e| !expired(e, now, window))
    }

    /// Records `key`, then drops entries beyond `max` or older than `window`.
    /// Both are journalled for the next [`take_changes`](Self::take_changes).
    pub fn insert(&mut self, key: Arc<str>, entry: IdempotencyEntry, max: usize, window: Duration) {
        self.added.push(key.clone());
        self.restore(key, entry, max, window);
    }

    /// [`insert`](Self::insert) for a key the store already has: only what it
    /// makes the log forget is journalled. Keys must come oldest first.
    pub fn restore(&mut self, key: Arc<str>, entry: IdempotencyEntry, max: usize, window: Duration) {
        let now = entry.at;
        if self.entries.insert(key.clone(), entry).is_some() {
            // An expired key used again: it is now the newest (rare, so O(n)).
            self.order.retain(|k| *k != key);
        }
        self.order.push_back(key);
        while let Some(oldest) = self.order.front() {
            let too_many = self.order.len() > max;
            let too_old = self.entries.get(oldest).is_none_or(|e| expired(e, now, window));
            if !(too_many || too_old) {
                break;
            }
            let oldest = self.order.pop_front().expect("front exists");
            self.entries.remove(&oldest);
            self.forgotten.push(oldest);
        }
    }

    /// Whether keys were added or forgotten since the last `take_changes`.
    pub fn has_changes(&self) -> bool {
        !self.added.is_empty() || !self.forgotten.is_empty()
    }

    /// The keys added and forgotten since the last call, as the store must
    /// apply them: a key added then forgotten is only deleted, one forgotten
    /// then added again is only put.
    pub fn take_changes(&mut self) -> KeyChanges {
        let mut changes = KeyChanges::default();
        let mut seen = std::collections::HashSet::new();
        for key in self.added.drain(..).chain(self.forgotten.drain(..)) {
            if !seen.insert(key.clone()) {
                continue;
            }
            match self.entries.get(&key) {
                Some(entry) => changes.put.push((key, entry.clone())),
                None => changes.gone.push(key),
            }
        }
        changes
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

    #[test]
    fn changes_name_each_key_once_as_put_or_gone() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let window = Duration::from_secs(60);
        let mut log = IdempotencyLog::default();
        // Restored keys are the store's already: nothing to write back.
        log.restore("old".into(), entry(t0), 2, window);
        assert!(!log.has_changes());
        log.insert("a".into(), entry(t0), 2, window);
        log.insert("b".into(), entry(t0), 2, window); // forgets "old"
        log.insert("c".into(), entry(t0), 2, window); // forgets "a"
        assert!(log.has_changes());
        let changes = log.take_changes();
        let put: Vec<&str> = changes.put.iter().map(|(k, _)| k.as_ref()).collect();
        let gone: Vec<&str> = changes.gone.iter().map(|k| k.as_ref()).collect();
        assert_eq!(put, ["b", "c"]);
        assert_eq!(gone, ["a", "old"], "a was added and forgotten: only deleted");
        assert!(!log.has_changes() && log.take_changes().is_empty());

        // Past the window "b" and "c" go; "b" comes back under the same key.
        let later = t0 + Duration::from_secs(61);
        log.insert("b".into(), entry(later), 2, window);
        let changes = log.take_changes();
        assert_eq!(changes.put.iter().map(|(k, e)| (k.as_ref(), e.at)).collect::<Vec<_>>(), [("b", later)]);
        assert_eq!(changes.gone, [Arc::<str>::from("c")]);
    }
}
