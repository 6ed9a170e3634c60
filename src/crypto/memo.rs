//! A bounded map of 32-byte keys that keeps what is used: two generations of
//! at most `per_generation` entries each. A lookup found in the older
//! generation moves to the newer one, and when the newer one is full the
//! older is dropped whole, so at most twice `per_generation` entries are
//! held and an entry looked up all along is never dropped. No lock inside:
//! the owner wraps it in the lock it needs.

use std::collections::HashMap;

pub(crate) struct Memo<V> {
    per_generation: usize,
    newer: HashMap<[u8; 32], V>,
    older: HashMap<[u8; 32], V>,
}

impl<V: Clone> Memo<V> {
    pub(crate) fn new(per_generation: usize) -> Memo<V> {
        Memo {
            per_generation,
            newer: HashMap::new(),
            older: HashMap::new(),
        }
    }

    /// The value held for `key`, if any.
    pub(crate) fn get(&mut self, key: &[u8; 32]) -> Option<V> {
        if let Some(v) = self.newer.get(key) {
            return Some(v.clone());
        }
        let v = self.older.remove(key)?;
        self.insert(*key, v.clone());
        Some(v)
    }

    /// Holds `value` for `key`.
    pub(crate) fn insert(&mut self, key: [u8; 32], value: V) {
        if self.newer.len() >= self.per_generation && !self.newer.contains_key(&key) {
            self.older = std::mem::take(&mut self.newer);
        }
        self.older.remove(&key);
        self.newer.insert(key, value);
    }

    /// Entries held now (both generations).
    pub(crate) fn len(&self) -> usize {
        self.newer.len() + self.older.len()
    }
}
