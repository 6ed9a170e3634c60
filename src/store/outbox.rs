//! The outbox: messages this node originated and has no receipt for yet.
//!
//! An entry holds the sealed message, so a retry after any restart sends the
//! same bytes without the plaintext ever being stored. It leaves the outbox
//! only when a verified receipt arrives, or when its time to live runs out.

use serde::{Deserialize, Serialize};
use sled::transaction::ConflictableTransactionError;
use sled::Transactional;

use super::drop_list::DropKey;
use super::writer::{self, Op, Outcome};
use super::{Counter, Store, StoreError};
use crate::crypto::seal::Sealed;
use crate::crypto::Address;
use crate::wire::link::Receipt;
use crate::wire::MessageId;

pub(super) fn due_key(due_ms: u64, id: &MessageId) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&due_ms.to_be_bytes());
    k[8..].copy_from_slice(&id.0);
    k
}

/// The message id of an `outbox_due` key.
fn due_key_id(key: &[u8]) -> Option<MessageId> {
    key.get(8..)
        .and_then(|b| <[u8; 16]>::try_from(b).ok())
        .map(MessageId)
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub recipient: Address,
    pub created_ms: u64,
    /// Seconds since the Unix epoch; after this the message has failed.
    pub expires_at: u64,
    /// How many times it has been sent so far.
    pub attempts: u32,
    /// Milliseconds since the Unix epoch when the next sending is due.
    pub next_try_ms: u64,
    pub sealed: Sealed,
}

/// The first fields of an [`OutboxEntry`], in its order: postcard reads
/// them from the front of a stored entry and leaves the rest (the sealed
/// letter) unread and uncopied. Kept in step with `OutboxEntry` by the test
/// `the_route_is_read_from_the_front_of_an_entry`.
#[derive(Deserialize)]
struct OutboxRoute {
    recipient: Address,
    _created_ms: u64,
    expires_at: u64,
}

impl OutboxEntry {
    /// When the entry next needs attention: its next try, or its expiry if
    /// that comes first.
    pub fn due_ms(&self) -> u64 {
        self.next_try_ms.min(self.expires_at.saturating_mul(1000))
    }
}

/// Counts of the outbox for `status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    /// Never sent yet.
    pub queued: u64,
    /// Sent at least once, no receipt yet.
    pub in_flight: u64,
}

impl Store {
    /// Stores an entry and files it under its due time in the `outbox_due`
    /// index (both in one transaction), on the calling thread, not flushed.
    pub fn outbox_put(&self, id: &MessageId, entry: &OutboxEntry) -> Result<(), StoreError> {
        let op = Op::OutboxPut {
            id: *id,
            entry: Box::new(entry.clone()),
        };
        writer::apply_now(self, op)?;
        Ok(())
    }

    fn outbox_take(&self, id: &MessageId) -> Result<bool, StoreError> {
        let removed = (&self.outbox, &self.outbox_due).transaction(|(outbox, due)| {
            let Some(old) = outbox.remove(&id.0)? else {
                return Ok::<_, ConflictableTransactionError<StoreError>>(false);
            };
            if let Ok(old) = postcard::from_bytes::<OutboxEntry>(&old) {
                due.remove(&due_key(old.due_ms(), id)[..])?;
            }
            Ok(true)
        })?;
        Ok(removed)
    }

    pub fn outbox_get(&self, id: &MessageId) -> Result<Option<OutboxEntry>, StoreError> {
        match self.outbox.get(id.0)? {
            Some(v) => Ok(Some(postcard::from_bytes(&v)?)),
            None => Ok(None),
        }
    }

    /// The recipient and expiry of an outbox entry, without reading its
    /// sealed letter (what a receipt is checked against, once per receipt).
    pub fn outbox_route(&self, id: &MessageId) -> Result<Option<(Address, u64)>, StoreError> {
        match self.outbox.get(id.0)? {
            Some(v) => {
                let (r, _rest) = postcard::take_from_bytes::<OutboxRoute>(&v)?;
                Ok(Some((r.recipient, r.expires_at)))
            }
            None => Ok(None),
        }
    }

    /// Settles a message with its verified receipt, in one transaction: the
    /// outbox entry and its index entry go, the delivered mark (with the
    /// receipt) is written, then the delivered counter is bumped. A crash can
    /// leave the message either in flight or settled, never both. True if
    /// the message was in the outbox.
    pub fn outbox_settle(
        &self,
        id: &MessageId,
        receipt: &Receipt,
        now: u64,
    ) -> Result<bool, StoreError> {
        let op = Op::OutboxSettle {
            id: *id,
            receipt: Box::new(receipt.clone()),
            now,
        };
        match writer::apply_now(self, op)? {
            Outcome::Found(f) => Ok(f),
            _ => Err(writer::stopped()),
        }
    }

    /// Settles every outbox entry whose id already has a delivered mark
    /// (left by a store written before settling was one step, or by a
    /// message to this node itself); returns how many. Run at start.
    pub fn outbox_settle_marked(&self, now: u64) -> Result<usize, StoreError> {
        let mut ids = Vec::new();
        for item in self.outbox.iter() {
            let (k, _) = item?;
            let Ok(id) = <[u8; 16]>::try_from(k.as_ref()).map(MessageId) else {
                continue;
            };
            if let Some(mark) = self.drop_get(&DropKey::Delivered(id), now)? {
                ids.push((id, mark));
            }
        }
        let mut n = 0;
        for (id, _mark) in ids {
            if self.outbox_take(&id)? {
                self.bump(Counter::Delivered, 1)?;
                n += 1;
            }
        }
        self.save_counters()?;
        Ok(n)
    }

    /// Removes a message whose time to live ran out, and counts it failed.
    pub fn outbox_failed(&self, id: &MessageId) -> Result<(), StoreError> {
        if self.outbox_take(id)? {
            self.bump(Counter::Failed, 1)?;
        }
        Ok(())
    }

    /// Entries due at `now_ms` (expired ones are due too), at most `limit`,
    /// earliest first, read through the due-time index.
    pub fn outbox_due(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<(MessageId, OutboxEntry)>, StoreError> {
        let end = now_ms.saturating_add(1).to_be_bytes();
        let mut due = Vec::new();
        for item in self.outbox_due.range(..end.as_slice()).take(limit) {
            let (k, _) = item?;
            let Some(id) = due_key_id(&k) else { continue };
            if let Some(entry) = self.outbox_get(&id)? {
                due.push((id, entry));
            }
        }
        Ok(due)
    }

    /// Entries not due yet at `now_ms` (read through the due-time index).
    pub(super) fn outbox_waiting(
        &self,
        now_ms: u64,
    ) -> Result<Vec<(MessageId, OutboxEntry)>, StoreError> {
        let start = now_ms.saturating_add(1).to_be_bytes();
        let mut out = Vec::new();
        for item in self.outbox_due.range(start.as_slice()..) {
            let (k, _) = item?;
            let Some(id) = due_key_id(&k) else { continue };
            if let Some(entry) = self.outbox_get(&id)? {
                out.push((id, entry));
            }
        }
        Ok(out)
    }

    /// Makes every waiting entry due now (a new neighbour came up); returns
    /// how many were waiting.
    pub fn outbox_hurry(&self, now_ms: u64) -> Result<usize, StoreError> {
        let mut n = 0;
        for (id, mut entry) in self.outbox_waiting(now_ms)? {
            entry.next_try_ms = now_ms;
            self.outbox_put(&id, &entry)?;
            n += 1;
        }
        Ok(n)
    }

    /// Up to `limit` entries, the next due first (read through the due-time
    /// index), and how many there are in all: what `hermes outbox` shows.
    pub fn outbox_list(
        &self,
        limit: usize,
    ) -> Result<(u64, Vec<(MessageId, OutboxEntry)>), StoreError> {
        let mut listed = Vec::new();
        let mut total = 0u64;
        for item in self.outbox_due.iter() {
            let (k, _) = item?;
            let Some(id) = due_key_id(&k) else { continue };
            total += 1;
            if listed.len() < limit {
                if let Some(entry) = self.outbox_get(&id)? {
                    listed.push((id, entry));
                }
            }
        }
        Ok((total, listed))
    }

    /// Removes a message the local user cancelled (`hermes outbox cancel`),
    /// with its index entry; counted nowhere. True if it was there. A copy
    /// already sent may still arrive: its receipt then finds nothing to settle.
    pub fn outbox_cancel(&self, id: &MessageId) -> Result<bool, StoreError> {
        self.outbox_take(id)
    }

    pub fn outbox_counts(&self) -> Result<OutboxCounts, StoreError> {
        let mut c = OutboxCounts::default();
        for item in self.outbox.iter() {
            let (_, v) = item?;
            let entry: OutboxEntry = postcard::from_bytes(&v)?;
            if entry.attempts == 0 {
                c.queued += 1;
            } else {
                c.in_flight += 1;
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DropEntry;

    fn entry(next_try_ms: u64) -> OutboxEntry {
        OutboxEntry {
            recipient: Address([9; 32]),
            created_ms: 0,
            expires_at: 1_000,
            attempts: 0,
            next_try_ms,
            sealed: Sealed {
                sender_kem: [1; 32],
                enc: [2; 32],
                ciphertext: vec![3; 40],
            },
        }
    }

    #[test]
    fn the_route_is_read_from_the_front_of_an_entry() {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::store::test_util::open(dir.path());
        let id = MessageId([4; 16]);
        // Values of different sizes, so that a field out of step reads wrong.
        let e = OutboxEntry {
            recipient: Address([7; 32]),
            created_ms: 1_767_225_600_123,
            expires_at: 1_767_312_000,
            attempts: 3,
            ..entry(1_767_225_601_000)
        };
        s.outbox_put(&id, &e).unwrap();
        assert_eq!(
            s.outbox_route(&id).unwrap(),
            Some((e.recipient, e.expires_at))
        );
        assert_eq!(s.outbox_route(&MessageId([5; 16])).unwrap(), None);
    }

    #[test]
    fn due_delivered_failed() {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::store::test_util::open(dir.path());
        let (a, b) = (MessageId([1; 16]), MessageId([2; 16]));
        s.outbox_put(&a, &entry(100)).unwrap();
        s.outbox_put(&b, &entry(500)).unwrap();
        let due: Vec<_> = s
            .outbox_due(200, 10)
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(due, vec![a]);
        assert_eq!(s.outbox_hurry(200).unwrap(), 1);
        assert_eq!(s.outbox_due(200, 10).unwrap().len(), 2);
        let r = Receipt::sign(&crate::crypto::Identity::generate(), a, 1_000, None);
        assert!(s.outbox_settle(&a, &r, 0).unwrap());
        assert!(!s.outbox_settle(&a, &r, 0).unwrap());
        s.outbox_failed(&b).unwrap();
        assert_eq!(s.counter(Counter::Delivered).unwrap(), 1);
        assert_eq!(s.counter(Counter::Failed).unwrap(), 1);
        assert_eq!(s.outbox_counts().unwrap(), OutboxCounts::default());
        assert!(
            s.outbox_due(u64::MAX, 10).unwrap().is_empty(),
            "index emptied too"
        );
    }

    #[test]
    fn settling_is_one_step_and_marked_entries_settle_at_start() {
        use crate::crypto::Identity;
        let dir = tempfile::tempdir().unwrap();
        let s = crate::store::test_util::open(dir.path());
        let bob = Identity::generate();
        let (a, b) = (MessageId([1; 16]), MessageId([2; 16]));
        s.outbox_put(&a, &entry(100)).unwrap();
        s.outbox_put(&b, &entry(100)).unwrap();
        let r = Receipt::sign(&bob, a, 1_000, None);
        assert!(s.outbox_settle(&a, &r, 10).unwrap());
        assert!(!s.outbox_settle(&a, &r, 10).unwrap(), "once");
        assert_eq!(s.counter(Counter::Delivered).unwrap(), 1);
        let mark = s.drop_get(&DropKey::Delivered(a), 10).unwrap().unwrap();
        assert_eq!(mark.receipt, Some(r));
        assert_eq!(s.outbox_due(u64::MAX, 10).unwrap().len(), 1, "only b left");
        // A mark without the outbox update (an older store's crash): settled
        // at start.
        s.drop_insert_new(
            &DropKey::Delivered(b),
            &DropEntry {
                expires_at: 1_000,
                receipt: None,
            },
            10,
        )
        .unwrap();
        assert_eq!(s.outbox_settle_marked(10).unwrap(), 1);
        assert_eq!(s.outbox_counts().unwrap(), OutboxCounts::default());
        assert!(s.outbox_due(u64::MAX, 10).unwrap().is_empty());
        assert_eq!(s.counter(Counter::Delivered).unwrap(), 2);
    }

    #[test]
    fn listing_is_next_due_first_and_cancel_removes_both_records() {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::store::test_util::open(dir.path());
        let (a, b, c) = (MessageId([1; 16]), MessageId([2; 16]), MessageId([3; 16]));
        s.outbox_put(&a, &entry(300)).unwrap();
        s.outbox_put(&b, &entry(100)).unwrap();
        s.outbox_put(&c, &entry(200)).unwrap();
        let (total, listed) = s.outbox_list(2).unwrap();
        assert_eq!(total, 3);
        let ids: Vec<_> = listed.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, vec![b, c]);
        assert!(s.outbox_cancel(&c).unwrap());
        assert!(!s.outbox_cancel(&c).unwrap(), "once");
        assert_eq!(s.outbox_get(&c).unwrap(), None);
        let (total, listed) = s.outbox_list(10).unwrap();
        assert_eq!(total, 2);
        assert_eq!(listed.len(), 2);
        assert_eq!(
            s.outbox_due(u64::MAX, 10).unwrap().len(),
            2,
            "index entry gone"
        );
        assert_eq!(
            s.counter(Counter::Failed).unwrap(),
            0,
            "a cancel is no failure"
        );
    }

    #[test]
    fn rescheduling_moves_the_index_entry() {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::store::test_util::open(dir.path());
        let a = MessageId([1; 16]);
        s.outbox_put(&a, &entry(100)).unwrap();
        let mut e = entry(100);
        e.attempts = 1;
        e.next_try_ms = 400;
        s.outbox_put(&a, &e).unwrap();
        assert!(s.outbox_due(399, 10).unwrap().is_empty());
        assert_eq!(s.outbox_due(400, 10).unwrap(), vec![(a, e.clone())]);
        // An entry past its expiry is due even if its next try is later.
        e.next_try_ms = 5_000_000;
        s.outbox_put(&a, &e).unwrap();
        assert_eq!(s.outbox_due(1_000_000, 10).unwrap().len(), 1);
    }
}
