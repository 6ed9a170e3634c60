//! Replay tags of onion packets, persistent: tree `replay`, key
//! `be_u64(key epoch) ‖ tag` (32 bytes), empty value.
//!
//! A relay checks a packet's tag here before it forwards
//! ([`ReplayStore::check_and_insert`]); a tag seen before is a replay (drop
//! and count it). Tags are kept per packet key and dropped with it
//! ([`ReplayStore::drop_epoch`], one batch, when the keyring deletes the
//! key): keys sort by epoch, so a key's tags are one contiguous range.
//!
//! Bounded: at most `capacity` tags per epoch (`limits.replay_tags_per_key`);
//! past that the verdict is [`TagVerdict::Full`] and the caller drops the
//! packet (fail closed). The counts are kept in memory (sled's `len()` is a
//! full scan), counted once when the store is opened.
//!
//! Early rotation: when an insert brings an epoch to its
//! [`ReplayStore::threshold`] (3/4 of the capacity), the store wakes whoever
//! waits in [`ReplayStore::threshold_reached`] (the key rotation, which then
//! makes a new packet key if that epoch is the current one); the key
//! rotation also asks [`ReplayStore::past_threshold`] on every wake-up, so a
//! wake-up it was too busy to take is not lost. At most `MAX_KEYS` epochs are
//! held, so the tree holds at most `MAX_KEYS × capacity` tags.
//!
//! Durability: an insert reaches the disk with the next flush (sled's own
//! every 500 ms, or the Router's group commit). A replay that arrives after
//! a crash that lost the last unflushed tags passes once; forwarding only
//! after a flush would cost one flush per packet batch.
//!
//! The tree is opened beside the store's own trees and is covered like them
//! by the start-up check, `store check`, `salvage` and `backup`
//! (`super::check`): a key that is not `epoch ‖ tag` or a value that is not
//! empty is damage; salvage and backup copy the valid tags, so a restored
//! relay still drops replays of what it forwarded. Tags of an epoch the
//! keyring no longer holds are dropped at start and by the key rotation.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::sync::Notify;

use super::{Store, StoreError};

/// Name of the sled tree.
pub const REPLAY_TREE: &str = "replay";
/// Length of a key: `be_u64(epoch) ‖ tag`.
pub const REPLAY_KEY_LEN: usize = 8 + 32;
const KEY_LEN: usize = REPLAY_KEY_LEN;
/// Replay tags kept per packet key by default (`limits.replay_tags_per_key`):
/// at about 72 bytes each on disk, `MAX_KEYS` (4) keys' worth is at most
/// ~290 MB. A day's key at 10 packets/s is 864,000.
pub const REPLAY_TAGS_PER_KEY: usize = 1_000_000;

/// The count at which an epoch's tags call for an early key rotation: 3/4
/// of `capacity` (rounded up), at least 1.
pub fn threshold_of(capacity: usize) -> usize {
    (capacity - capacity / 4).max(1)
}

/// What to do with a packet whose tag was checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TagVerdict {
    /// First time: forward it; the tag is recorded.
    Fresh,
    /// Seen before under this key: drop it and count a replay.
    Replay,
    /// This key's tags are at capacity: drop it.
    Full,
}

/// The replay tags of every live packet key.
pub struct ReplayStore {
    tree: sled::Tree,
    capacity: usize,
    threshold: usize,
    counts: Mutex<BTreeMap<u64, usize>>,
    /// Woken when an insert brings an epoch to `threshold`.
    reached: Notify,
}

fn key(epoch: u64, tag: &[u8; 32]) -> [u8; KEY_LEN] {
    let mut k = [0u8; KEY_LEN];
    k[..8].copy_from_slice(&epoch.to_be_bytes());
    k[8..].copy_from_slice(tag);
    k
}

impl Store {
    /// Opens the replay-tag tree, with at most `capacity` tags per key.
    /// Refuses a tree holding a key that is not `epoch ‖ tag`.
    pub fn replay_tags(&self, capacity: usize) -> Result<ReplayStore, StoreError> {
        let tree = self.db.open_tree(REPLAY_TREE)?;
        let mut counts = BTreeMap::new();
        for kv in tree.iter() {
            let (k, _) = kv?;
            if k.len() != KEY_LEN {
                return Err(StoreError::Damaged {
                    path: self.path(),
                    what: format!("a replay tag key of {} bytes", k.len()),
                });
            }
            *counts.entry(super::be_u64(&k[..8])).or_insert(0) += 1;
        }
        Ok(ReplayStore {
            tree,
            capacity,
            threshold: threshold_of(capacity),
            counts: Mutex::new(counts),
            reached: Notify::new(),
        })
    }
}

impl ReplayStore {
    fn counts(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, usize>> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `tag` under key `epoch` unless it is there already.
    pub fn check_and_insert(&self, epoch: u64, tag: &[u8; 32]) -> Result<TagVerdict, StoreError> {
        let k = key(epoch, tag);
        let mut counts = self.counts();
        if self.tree.contains_key(k)? {
            return Ok(TagVerdict::Replay);
        }
        let n = counts.entry(epoch).or_insert(0);
        if *n >= self.capacity {
            return Ok(TagVerdict::Full);
        }
        match self
            .tree
            .compare_and_swap(k, None as Option<&[u8]>, Some(&[] as &[u8]))?
        {
            Ok(()) => {
                *n += 1;
                if *n == self.threshold {
                    // Stores a permit if nobody waits yet: not lost.
                    self.reached.notify_one();
                }
                Ok(TagVerdict::Fresh)
            }
            Err(_) => Ok(TagVerdict::Replay),
        }
    }

    /// Tags held under key `epoch`.
    pub fn count(&self, epoch: u64) -> usize {
        self.counts().get(&epoch).copied().unwrap_or(0)
    }

    /// Most tags per epoch.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The count at which an epoch calls for an early rotation (3/4 of the
    /// capacity, [`threshold_of`]).
    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// Whether key `epoch` holds at least [`Self::threshold`] tags.
    pub fn past_threshold(&self, epoch: u64) -> bool {
        self.count(epoch) >= self.threshold
    }

    /// Returns once an insert has brought some epoch to the threshold since
    /// the last return (one stored wake-up if nobody was waiting). Check
    /// [`Self::past_threshold`] of the epoch that matters: the wake-up does
    /// not say which one.
    pub async fn threshold_reached(&self) {
        self.reached.notified().await
    }

    /// The epochs that have tags. At start, the Router drops those the
    /// keyring no longer holds (e.g. after the key file was removed and
    /// epochs started again from 1).
    pub fn epochs(&self) -> Vec<u64> {
        self.counts().keys().copied().collect()
    }

    /// Deletes every tag of key `epoch` in one batch; returns how many.
    pub fn drop_epoch(&self, epoch: u64) -> Result<usize, StoreError> {
        let mut counts = self.counts();
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for kv in self.tree.scan_prefix(epoch.to_be_bytes()) {
            let (k, _) = kv?;
            batch.remove(k);
            n += 1;
        }
        self.tree.apply_batch(batch)?;
        counts.remove(&epoch);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(n: u8) -> [u8; 32] {
        [n; 32]
    }

    #[test]
    fn insert_if_absent_per_epoch_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::test_util::open(dir.path());
        let r = store.replay_tags(3).unwrap();
        assert_eq!(r.check_and_insert(1, &t(1)).unwrap(), TagVerdict::Fresh);
        assert_eq!(r.check_and_insert(1, &t(1)).unwrap(), TagVerdict::Replay);
        assert_eq!(r.check_and_insert(2, &t(1)).unwrap(), TagVerdict::Fresh);
        assert_eq!(r.check_and_insert(1, &t(2)).unwrap(), TagVerdict::Fresh);
        assert_eq!(r.check_and_insert(1, &t(3)).unwrap(), TagVerdict::Fresh);
        assert_eq!(r.check_and_insert(1, &t(4)).unwrap(), TagVerdict::Full);
        assert_eq!(r.check_and_insert(1, &t(2)).unwrap(), TagVerdict::Replay);
        assert_eq!(r.count(1), 3);
    }

    #[test]
    fn threshold_is_three_quarters_and_wakes_once_per_epoch() {
        assert_eq!(threshold_of(100), 75);
        assert_eq!(threshold_of(1_000_000), 750_000);
        assert_eq!(threshold_of(64), 48);
        assert_eq!(threshold_of(3), 3);
        assert_eq!(threshold_of(1), 1);
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::test_util::open(dir.path());
        let r = store.replay_tags(8).unwrap();
        assert_eq!((r.capacity(), r.threshold()), (8, 6));
        let woken = |r: &ReplayStore| {
            // A stored wake-up returns at once; none leaves it pending.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            rt.block_on(async {
                tokio::time::timeout(std::time::Duration::from_millis(20), r.threshold_reached())
                    .await
                    .is_ok()
            })
        };
        for n in 0..5 {
            r.check_and_insert(1, &t(n)).unwrap();
        }
        assert!(!r.past_threshold(1));
        assert!(!woken(&r));
        // Replays do not count towards it.
        r.check_and_insert(1, &t(0)).unwrap();
        assert!(!r.past_threshold(1));
        r.check_and_insert(1, &t(5)).unwrap();
        assert!(r.past_threshold(1));
        assert!(!r.past_threshold(2));
        assert!(woken(&r));
        // Once per epoch: the inserts after it, up to Full, wake nobody.
        r.check_and_insert(1, &t(6)).unwrap();
        r.check_and_insert(1, &t(7)).unwrap();
        assert_eq!(r.check_and_insert(1, &t(8)).unwrap(), TagVerdict::Full);
        assert!(!woken(&r));
        // Another epoch reaching it wakes again.
        for n in 0..6 {
            r.check_and_insert(2, &t(n)).unwrap();
        }
        assert!(r.past_threshold(2));
        assert!(woken(&r));
        // Dropped with its key: no longer past it.
        r.drop_epoch(1).unwrap();
        assert!(!r.past_threshold(1));
    }

    #[test]
    fn tags_survive_a_restart_and_go_with_their_key() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = crate::store::test_util::open(dir.path());
            let r = store.replay_tags(100).unwrap();
            for n in 0..5 {
                r.check_and_insert(7, &t(n)).unwrap();
            }
            r.check_and_insert(8, &t(9)).unwrap();
            // Epochs sort as numbers: 7 and 256+7 share no prefix.
            r.check_and_insert(256 + 7, &t(9)).unwrap();
            store.flush_blocking().unwrap();
        }
        let store = crate::store::test_util::open(dir.path());
        let r = store.replay_tags(100).unwrap();
        assert_eq!((r.count(7), r.count(8), r.count(263)), (5, 1, 1));
        assert_eq!(r.check_and_insert(7, &t(3)).unwrap(), TagVerdict::Replay);
        assert_eq!(r.epochs(), vec![7, 8, 263]);
        assert_eq!(r.drop_epoch(7).unwrap(), 5);
        assert_eq!(r.epochs(), vec![8, 263]);
        assert_eq!(r.count(7), 0);
        assert_eq!(r.check_and_insert(7, &t(3)).unwrap(), TagVerdict::Fresh);
        assert_eq!(r.check_and_insert(8, &t(9)).unwrap(), TagVerdict::Replay);
        assert_eq!(r.check_and_insert(263, &t(9)).unwrap(), TagVerdict::Replay);
    }
}
