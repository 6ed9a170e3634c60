//! The outbox's retry state and due-time order, in memory.
//!
//! Every outbox entry is on disk (tree `outbox`) from the moment its push is
//! answered; what changes while it waits for its receipt (how often it was
//! sent, when it is next due) is kept here, in a [`DueIndex`] that the store
//! rebuilds from the entries when it opens. So sending a message and
//! retrying it write nothing: only the push (the entry) and the settle (the
//! entry goes, its delivered mark comes) do. The retry state of entries that
//! are still waiting is written back into their entries by the store's
//! writer every [`RETRY_SAVE_INTERVAL`] and with every explicit flush (at
//! most [`MAX_RETRY_SAVE`] at a time, those sent most often first), and all
//! of it when the store closes, so a restart keeps the backoff and the
//! attempt counts. A crash loses the retry state not saved yet, which means
//! an earlier retry, never a lost message (ARCHITECTURE.md, durability
//! points: only the entry itself is a promise).
//!
//! One owner: the store changes the index only in step with the tree, under
//! one lock taken around the write (module `writer`).

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::time::Duration;

use super::outbox::OutboxEntry;
use crate::wire::MessageId;

/// Changed retry state is written back at least this often (see module doc).
pub const RETRY_SAVE_INTERVAL: Duration = Duration::from_secs(2);
/// Most entries one save writes back, those sent most often first: under a
/// flood thousands are in flight at once, each sent once and settled a
/// moment later, and rewriting them all would cost more than the sending
/// saved. The writer's last save, when the store closes, writes them all.
pub const MAX_RETRY_SAVE: usize = 256;

/// What the index holds of one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Retry {
    pub attempts: u32,
    pub next_try_ms: u64,
    /// The entry's expiry, in milliseconds (it is due then at the latest).
    pub expires_ms: u64,
    /// Differs from what the entry on disk says.
    pub dirty: bool,
}

impl Retry {
    fn due_ms(&self) -> u64 {
        self.next_try_ms.min(self.expires_ms)
    }

    /// Puts this retry state into `entry` (read from disk).
    pub fn apply_to(&self, entry: &mut OutboxEntry) {
        entry.attempts = self.attempts;
        entry.next_try_ms = self.next_try_ms;
    }
}

/// The outbox entries by id and by due time (see module doc).
#[derive(Debug, Default)]
pub(super) struct DueIndex {
    by_id: HashMap<MessageId, Retry>,
    by_due: BTreeSet<(u64, MessageId)>,
    /// How many entries are dirty.
    dirty: usize,
}

impl DueIndex {
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn get(&self, id: &MessageId) -> Option<Retry> {
        self.by_id.get(id).copied()
    }

    /// Files an entry as it is on disk (replacing what was filed for its id).
    pub fn insert(&mut self, id: MessageId, entry: &OutboxEntry) {
        self.file(id, entry.attempts, entry.next_try_ms, entry.expires_at);
    }

    /// [`DueIndex::insert`] from an entry's fields (`expires_at` in seconds).
    pub fn file(&mut self, id: MessageId, attempts: u32, next_try_ms: u64, expires_at: u64) {
        let retry = Retry {
            attempts,
            next_try_ms,
            expires_ms: expires_at.saturating_mul(1000),
            dirty: false,
        };
        self.put(id, retry);
    }

    fn put(&mut self, id: MessageId, retry: Retry) {
        self.remove(&id);
        self.by_due.insert((retry.due_ms(), id));
        self.dirty += usize::from(retry.dirty);
        self.by_id.insert(id, retry);
    }

    pub fn remove(&mut self, id: &MessageId) {
        if let Some(old) = self.by_id.remove(id) {
            self.by_due.remove(&(old.due_ms(), *id));
            self.dirty = self.dirty.saturating_sub(usize::from(old.dirty));
        }
    }

    /// Gives an entry new retry state (not on disk yet); false if it is not
    /// filed.
    pub fn reschedule(&mut self, id: &MessageId, attempts: u32, next_try_ms: u64) -> bool {
        let Some(old) = self.get(id) else {
            return false;
        };
        if (old.attempts, old.next_try_ms) == (attempts, next_try_ms) {
            return true;
        }
        self.put(
            *id,
            Retry {
                attempts,
                next_try_ms,
                dirty: true,
                ..old
            },
        );
        true
    }

    /// The ids due at `now_ms` (expired ones are due too), earliest first,
    /// at most `limit`.
    pub fn due(&self, now_ms: u64, limit: usize) -> Vec<MessageId> {
        self.by_due
            .range(..(now_ms.saturating_add(1), MessageId([0; 16])))
            .take(limit)
            .map(|(_, id)| *id)
            .collect()
    }

    /// Makes every entry not due yet at `now_ms` due then; returns how many.
    pub fn hurry(&mut self, now_ms: u64) -> usize {
        let waiting: Vec<MessageId> = self
            .by_due
            .range((now_ms.saturating_add(1), MessageId([0; 16]))..)
            .map(|(_, id)| *id)
            .collect();
        for id in &waiting {
            if let Some(r) = self.get(id) {
                self.reschedule(id, r.attempts, now_ms);
            }
        }
        waiting.len()
    }

    /// Up to `limit` ids, the next due first.
    pub fn first(&self, limit: usize) -> Vec<MessageId> {
        self.by_due.iter().take(limit).map(|(_, id)| *id).collect()
    }

    /// `(never sent, sent at least once)`.
    pub fn counts(&self) -> (u64, u64) {
        let queued = self.by_id.values().filter(|r| r.attempts == 0).count() as u64;
        (queued, self.by_id.len() as u64 - queued)
    }

    /// Up to `limit` entries whose retry state is not on disk yet, those
    /// sent most often first.
    pub fn dirty(&self, limit: usize) -> Vec<(MessageId, Retry)> {
        if self.dirty == 0 {
            return Vec::new();
        }
        // The `limit` most sent, kept in a heap whose top is the least sent
        // of them: no list of every dirty entry (thousands under a flood).
        let mut top: BinaryHeap<Reverse<(u32, MessageId)>> = BinaryHeap::new();
        for (id, r) in self.by_id.iter().filter(|(_, r)| r.dirty) {
            if top.len() < limit {
                top.push(Reverse((r.attempts, *id)));
            } else if top
                .peek()
                .is_some_and(|Reverse((least, _))| r.attempts > *least)
            {
                top.pop();
                top.push(Reverse((r.attempts, *id)));
            }
        }
        top.into_iter()
            .filter_map(|Reverse((_, id))| self.get(&id).map(|r| (id, r)))
            .collect()
    }

    /// How many entries are dirty.
    pub fn dirty_count(&self) -> usize {
        self.dirty
    }

    /// `saved` (from [`DueIndex::dirty`]) was written: the entries that
    /// did not change since are clean.
    pub fn saved(&mut self, saved: &[(MessageId, Retry)]) {
        for (id, r) in saved {
            if let Some(now) = self.by_id.get_mut(id) {
                if now == r {
                    now.dirty = false;
                    self.dirty = self.dirty.saturating_sub(1);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::seal::Sealed;
    use crate::crypto::Address;

    fn entry(attempts: u32, next_try_ms: u64, expires_at: u64) -> OutboxEntry {
        OutboxEntry {
            recipient: Address([9; 32]),
            created_ms: 0,
            expires_at,
            attempts,
            next_try_ms,
            sealed: Sealed {
                sender_kem: [1; 32],
                enc: [2; 32],
                ciphertext: vec![3; 8],
            },
        }
    }

    fn id(n: u8) -> MessageId {
        MessageId([n; 16])
    }

    #[test]
    fn due_in_time_order_with_expiry_and_limit() {
        let mut d = DueIndex::default();
        d.insert(id(1), &entry(0, 300, 1_000));
        d.insert(id(2), &entry(0, 100, 1_000));
        // Its next try is late, but it expires first.
        d.insert(id(3), &entry(0, 5_000_000, 1));
        assert_eq!(d.due(99, 10), vec![]);
        assert_eq!(d.due(100, 10), vec![id(2)]);
        assert_eq!(d.due(999, 10), vec![id(2), id(1)]);
        assert_eq!(d.due(1_000, 10), vec![id(2), id(1), id(3)]);
        assert_eq!(d.due(u64::MAX, 2), vec![id(2), id(1)]);
        assert_eq!(d.first(10), vec![id(2), id(1), id(3)]);
    }

    #[test]
    fn reschedule_moves_an_entry_and_marks_it_dirty_until_saved() {
        let mut d = DueIndex::default();
        d.insert(id(1), &entry(0, 100, 1_000));
        d.insert(id(2), &entry(0, 100, 1_000));
        assert!(d.dirty(usize::MAX).is_empty(), "as on disk");
        assert!(d.reschedule(&id(1), 1, 500));
        assert!(!d.reschedule(&id(7), 1, 500), "not filed");
        assert_eq!(d.due(100, 10), vec![id(2)]);
        assert_eq!(d.due(500, 10), vec![id(2), id(1)]);
        assert_eq!(d.counts(), (1, 1));
        let dirty = d.dirty(usize::MAX);
        assert_eq!(dirty.len(), 1);
        // It changes again before the save lands: it stays dirty.
        d.reschedule(&id(1), 2, 900);
        d.saved(&dirty);
        assert_eq!(d.dirty(usize::MAX).len(), 1);
        let dirty = d.dirty(usize::MAX);
        d.saved(&dirty);
        assert!(d.dirty(usize::MAX).is_empty());
        assert_eq!(d.get(&id(1)).map(|r| r.attempts), Some(2));
    }

    #[test]
    fn a_save_takes_the_most_sent_first_and_no_more_than_its_limit() {
        let mut d = DueIndex::default();
        for n in 1..=5u8 {
            d.insert(id(n), &entry(0, 100, 1_000));
            d.reschedule(&id(n), u32::from(n % 3) + 1, 500);
        }
        // Attempts: 1 → 2, 2 → 3, 3 → 1, 4 → 2, 5 → 3.
        let mut first: Vec<_> = d.dirty(2).into_iter().map(|(i, _)| i).collect();
        first.sort();
        assert_eq!(first, vec![id(2), id(5)]);
        assert_eq!(d.dirty(10).len(), 5);
        assert_eq!(d.dirty_count(), 5);
    }

    #[test]
    fn hurry_makes_the_waiting_due_and_remove_forgets() {
        let mut d = DueIndex::default();
        d.insert(id(1), &entry(1, 100, 1_000));
        d.insert(id(2), &entry(1, 800, 1_000));
        d.insert(id(3), &entry(1, 900, 1_000));
        assert_eq!(d.hurry(200), 2);
        assert_eq!(d.due(200, 10).len(), 3);
        assert_eq!(d.dirty(usize::MAX).len(), 2);
        d.remove(&id(2));
        d.remove(&id(2));
        assert_eq!(d.len(), 2);
        assert_eq!(d.dirty(usize::MAX).len(), 1);
        assert_eq!(d.due(u64::MAX, 10), vec![id(1), id(3)]);
    }
}
