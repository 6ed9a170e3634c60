//! The drop list: ids of messages delivered to this node, or confirmed to it
//! by a verified receipt, so replays die.
//!
//! One kind of entry: a *delivered* entry per message id, written in the same
//! transaction as the inbox entry when this node accepts a message (after it
//! opened and verified the letter), or when a verified receipt settles one
//! of its own messages. It stops any later copy and keeps the receipt, so a
//! late copy is answered with it. A delivered mark lives until the letter's
//! sent time + the longest time to live (`routing::accept::mark_until`),
//! after which every copy is refused by its sent time anyway; an index tree
//! keyed by expiry time makes the periodic sweep cheap, and reads check
//! expiry too. Relays keep nothing here: their duplicate suppression is the
//! in-memory `routing::FloodFilter`. (Key prefix 0 was the per-copy "seen"
//! entry of earlier versions; such entries are only swept.)

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use sled::Transactional;

use super::{Store, StoreError};
use crate::wire::link::Receipt;
use crate::wire::MessageId;

/// Most expired entries one sweep removes, so a sweep never stalls the node.
pub const SWEEP_BATCH: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropKey {
    Delivered(MessageId),
}

impl DropKey {
    pub(super) fn bytes(&self) -> Vec<u8> {
        match self {
            DropKey::Delivered(id) => {
                let mut k = Vec::with_capacity(17);
                k.push(1);
                k.extend_from_slice(&id.0);
                k
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropEntry {
    pub expires_at: u64,
    pub receipt: Option<Receipt>,
}

pub(super) fn exp_key(expires_at: u64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&expires_at.to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// True if `stored` (a value of the `drop` tree) is an entry still live at
/// `now`. One that does not decode counts as expired, so it gets replaced.
pub(super) fn is_live(stored: &[u8], now: u64) -> bool {
    postcard::from_bytes::<DropEntry>(stored).is_ok_and(|e| e.expires_at > now)
}

/// Writes `entry` and its expiry index inside a transaction; true if the
/// key had no entry before (one more entry in the drop list).
pub(super) fn insert_in_tx(
    drop: &TransactionalTree,
    drop_exp: &TransactionalTree,
    key: &DropKey,
    entry: &DropEntry,
) -> Result<bool, ConflictableTransactionError<StoreError>> {
    let k = key.bytes();
    let value =
        postcard::to_stdvec(entry).map_err(|e| ConflictableTransactionError::Abort(e.into()))?;
    let old = drop.insert(k.clone(), value)?;
    let new = old.is_none();
    if let Some(old) = old {
        if let Ok(old) = postcard::from_bytes::<DropEntry>(&old) {
            if old.expires_at != entry.expires_at {
                drop_exp.remove(exp_key(old.expires_at, &k))?;
            }
        }
    }
    drop_exp.insert(exp_key(entry.expires_at, &k), &[])?;
    Ok(new)
}

impl Store {
    /// The live entry for `key`, if any (an expired one counts as absent).
    pub fn drop_get(&self, key: &DropKey, now: u64) -> Result<Option<DropEntry>, StoreError> {
        match self.drop.get(key.bytes())? {
            Some(v) => {
                let entry: DropEntry = postcard::from_bytes(&v)?;
                Ok((entry.expires_at > now).then_some(entry))
            }
            None => Ok(None),
        }
    }

    /// Records `key` unless a live entry exists; true if it was new.
    pub fn drop_insert_new(
        &self,
        key: &DropKey,
        entry: &DropEntry,
        now: u64,
    ) -> Result<bool, StoreError> {
        let k = key.bytes();
        let (inserted, new) = (&self.drop, &self.drop_exp).transaction(|(drop, drop_exp)| {
            if drop.get(&k)?.is_some_and(|v| is_live(&v, now)) {
                return Ok((false, false));
            }
            Ok((true, insert_in_tx(drop, drop_exp, key, entry)?))
        })?;
        if new {
            super::Sizes::add(&self.sizes.drop, 1);
        }
        Ok(inserted)
    }

    /// Removes up to [`SWEEP_BATCH`] entries that have expired by `now`.
    pub fn drop_sweep(&self, now: u64) -> Result<usize, StoreError> {
        let mut removed = 0;
        let end = now.saturating_add(1).to_be_bytes();
        for item in self.drop_exp.range(..end.as_slice()).take(SWEEP_BATCH) {
            let (k, _) = item?;
            let drop_key = &k[8..];
            // Remove the entry only if it still has this expiry (it may have
            // been renewed with a later one).
            if self.drop.get(drop_key)?.is_some_and(|v| !is_live(&v, now))
                && self.drop.remove(drop_key)?.is_some()
            {
                super::Sizes::sub(&self.sizes.drop, 1);
            }
            self.drop_exp.remove(&k)?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Entries in the drop list (kept count, see `Sizes`).
    pub fn drop_len(&self) -> usize {
        self.sizes.drop.load(std::sync::atomic::Ordering::Relaxed) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::store::test_util::open(dir.path());
        (dir, s)
    }

    #[test]
    fn delivered_once_then_duplicate() {
        let (_d, s) = store();
        let key = DropKey::Delivered(MessageId([1; 16]));
        let e = DropEntry {
            expires_at: 100,
            receipt: None,
        };
        assert!(s.drop_insert_new(&key, &e, 10).unwrap());
        assert!(!s.drop_insert_new(&key, &e, 10).unwrap());
        assert!(s
            .drop_get(&DropKey::Delivered(MessageId([2; 16])), 10)
            .unwrap()
            .is_none());
    }

    #[test]
    fn expiry_on_read_and_by_sweep() {
        let (_d, s) = store();
        let key = DropKey::Delivered(MessageId([2; 16]));
        let e = DropEntry {
            expires_at: 100,
            receipt: None,
        };
        assert!(s.drop_insert_new(&key, &e, 10).unwrap());
        assert!(s.drop_get(&key, 99).unwrap().is_some());
        assert!(s.drop_get(&key, 100).unwrap().is_none());
        assert_eq!(s.drop_sweep(50).unwrap(), 0);
        assert_eq!(s.drop_len(), 1);
        assert_eq!(s.drop_sweep(101).unwrap(), 1);
        assert_eq!(s.drop_len(), 0);
        // An expired entry may be recorded afresh.
        assert!(s
            .drop_insert_new(
                &key,
                &DropEntry {
                    expires_at: 300,
                    receipt: None
                },
                200
            )
            .unwrap());
    }

    #[test]
    fn entries_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let key = DropKey::Delivered(MessageId([3; 16]));
        {
            let s = crate::store::test_util::open(dir.path());
            s.drop_insert_new(
                &key,
                &DropEntry {
                    expires_at: 1000,
                    receipt: None,
                },
                0,
            )
            .unwrap();
            s.flush_blocking().unwrap();
        }
        let s = crate::store::test_util::open(dir.path());
        assert!(!s
            .drop_insert_new(
                &key,
                &DropEntry {
                    expires_at: 1000,
                    receipt: None
                },
                0
            )
            .unwrap());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// The drop list behaves like a map with expiry: an id is new exactly
        /// when the model has no live entry for it, and a sweep removes
        /// exactly the expired entries.
        #[test]
        fn matches_a_model(ops in proptest::collection::vec((0u8..24, 1u64..50, 0u64..60), 1..60), sweep_at in 0u64..60) {
            let (_d, s) = store();
            let mut model: HashMap<u8, u64> = HashMap::new();
            for (id, ttl, now) in ops {
                let key = DropKey::Delivered(MessageId([id; 16]));
                let expires_at = now + ttl;
                let live = model.get(&id).is_some_and(|&exp| exp > now);
                let inserted = s.drop_insert_new(&key, &DropEntry { expires_at, receipt: None }, now).unwrap();
                prop_assert_eq!(inserted, !live);
                if inserted {
                    model.insert(id, expires_at);
                }
            }
            s.drop_sweep(sweep_at).unwrap();
            let remaining = model.values().filter(|&&exp| exp > sweep_at).count();
            prop_assert_eq!(s.drop_len(), remaining);
            for (id, exp) in &model {
                let key = DropKey::Delivered(MessageId([*id; 16]));
                prop_assert_eq!(s.drop_get(&key, sweep_at).unwrap().is_some(), *exp > sweep_at);
            }
        }
    }
}
