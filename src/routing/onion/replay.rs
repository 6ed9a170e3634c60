//! Replay tags seen, per packet key: the pure, in-memory rule.
//!
//! A relay peels a packet, learns its [`ReplayTag`] (same for a replay at this
//! hop and key, different for every other packet), and asks
//! [`ReplayTags::check_and_insert`] before it forwards. Tags live as long as
//! their key: [`ReplayTags::drop_key`] forgets a key's tags when the keyring
//! deletes the key (a packet for a deleted key no longer peels, so no tag is
//! needed to refuse it).
//!
//! Only tags of packets whose header verified are inserted, so a forged
//! packet cannot fill the set or censor a genuine one. The set is bounded per
//! key; when a key's set is full the verdict is [`Verdict::Full`] and the
//! caller drops the packet (fail closed: a replay is never let through for
//! lack of room). The persistent store (`store::replay`) follows the same
//! rules.

use std::collections::{BTreeMap, HashSet};

use crate::crypto::sphinx::ReplayTag;

/// Keys alive at once, as in the keyring.
pub const MAX_EPOCHS: usize = crate::crypto::keyring::MAX_KEYS;

/// What to do with a packet whose tag was checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// First time: forward it (the tag is now recorded).
    Fresh,
    /// Seen before under this key: drop it and count a replay.
    Replay,
    /// No room left for this key: drop it (never forwarded unchecked).
    Full,
    /// A key the set does not track (more than [`MAX_EPOCHS`] keys): drop.
    UnknownKey,
}

/// Tags seen, per key epoch, at most `capacity` per key.
#[derive(Debug)]
pub struct ReplayTags {
    capacity: usize,
    by_key: BTreeMap<u64, HashSet<ReplayTag>>,
}

impl ReplayTags {
    pub fn new(capacity_per_key: usize) -> ReplayTags {
        ReplayTags {
            capacity: capacity_per_key,
            by_key: BTreeMap::new(),
        }
    }

    /// Records `tag` under key `epoch` unless it is there already.
    pub fn check_and_insert(&mut self, epoch: u64, tag: ReplayTag) -> Verdict {
        if !self.by_key.contains_key(&epoch) && self.by_key.len() >= MAX_EPOCHS {
            return Verdict::UnknownKey;
        }
        let set = self.by_key.entry(epoch).or_default();
        if set.contains(&tag) {
            return Verdict::Replay;
        }
        if set.len() >= self.capacity {
            return Verdict::Full;
        }
        set.insert(tag);
        Verdict::Fresh
    }

    pub fn contains(&self, epoch: u64, tag: &ReplayTag) -> bool {
        self.by_key.get(&epoch).is_some_and(|s| s.contains(tag))
    }

    /// Forgets every tag of a deleted key; returns how many.
    pub fn drop_key(&mut self, epoch: u64) -> usize {
        self.by_key.remove(&epoch).map(|s| s.len()).unwrap_or(0)
    }

    pub fn len(&self, epoch: u64) -> usize {
        self.by_key.get(&epoch).map(|s| s.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.values().all(|s| s.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(n: u8) -> ReplayTag {
        ReplayTag([n; 32])
    }

    #[test]
    fn fresh_then_replay_per_key() {
        let mut r = ReplayTags::new(10);
        assert_eq!(r.check_and_insert(1, t(1)), Verdict::Fresh);
        assert_eq!(r.check_and_insert(1, t(1)), Verdict::Replay);
        assert_eq!(r.check_and_insert(1, t(2)), Verdict::Fresh);
        // The same tag under another key is another packet.
        assert_eq!(r.check_and_insert(2, t(1)), Verdict::Fresh);
        assert!(r.contains(1, &t(2)));
    }

    #[test]
    fn full_fails_closed_and_a_replay_is_still_a_replay() {
        let mut r = ReplayTags::new(2);
        assert_eq!(r.check_and_insert(1, t(1)), Verdict::Fresh);
        assert_eq!(r.check_and_insert(1, t(2)), Verdict::Fresh);
        assert_eq!(r.check_and_insert(1, t(3)), Verdict::Full);
        assert_eq!(r.check_and_insert(1, t(3)), Verdict::Full);
        assert_eq!(r.check_and_insert(1, t(1)), Verdict::Replay);
        assert_eq!(r.len(1), 2);
    }

    #[test]
    fn tags_go_with_their_key() {
        let mut r = ReplayTags::new(10);
        r.check_and_insert(1, t(1));
        r.check_and_insert(1, t(2));
        r.check_and_insert(2, t(3));
        assert_eq!(r.drop_key(1), 2);
        assert!(!r.contains(1, &t(1)));
        assert!(r.contains(2, &t(3)));
        assert_eq!(r.drop_key(1), 0);
    }

    #[test]
    fn bounded_number_of_keys() {
        let mut r = ReplayTags::new(10);
        for e in 0..MAX_EPOCHS as u64 {
            assert_eq!(r.check_and_insert(e, t(1)), Verdict::Fresh);
        }
        assert_eq!(r.check_and_insert(99, t(1)), Verdict::UnknownKey);
        r.drop_key(0);
        assert_eq!(r.check_and_insert(99, t(1)), Verdict::Fresh);
    }
}
