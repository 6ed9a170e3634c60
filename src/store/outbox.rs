//! The outbox: messages this node originated and has no receipt for yet.
//!
//! An entry holds the sealed message, so a retry after any restart sends the
//! same bytes without the plaintext ever being stored. It leaves the outbox
//! only when a verified receipt arrives, or when its time to live runs out.

use serde::{Deserialize, Serialize};

use super::drop_list::DropKey;
use super::due::DueIndex;
use super::writer::{self, Op, Outcome};
use super::{Counter, Store, StoreError};
use crate::crypto::seal::Sealed;
use crate::crypto::Address;
use crate::wire::link::Receipt;
use crate::wire::MessageId;

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

/// The fields of an [`OutboxEntry`] before its sealed letter, in its order:
/// what the due index is built from (kept in step by the test
/// `the_route_is_read_from_the_front_of_an_entry`).
#[derive(Deserialize)]
struct OutboxHead {
    _recipient: Address,
    _created_ms: u64,
    expires_at: u64,
    attempts: u32,
    next_try_ms: u64,
}

/// Builds the due index from the outbox tree (when the store opens). An
/// entry that does not decode is left out: the open's check refuses the
/// store for it (module `check`).
pub(super) fn load_due(outbox: &sled::Tree) -> Result<DueIndex, sled::Error> {
    let mut due = DueIndex::default();
    for item in outbox.iter() {
        let (k, v) = item?;
        let Ok(id) = <[u8; 16]>::try_from(k.as_ref()).map(MessageId) else {
            continue;
        };
        if let Ok((h, _)) = postcard::take_from_bytes::<OutboxHead>(&v) {
            due.file(id, h.attempts, h.next_try_ms, h.expires_at);
        }
    }
    Ok(due)
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
    /// Stores an entry (and files it in the due index), on the calling
    /// thread, not flushed.
    pub fn outbox_put(&self, id: &MessageId, entry: &OutboxEntry) -> Result<(), StoreError> {
        let op = Op::OutboxPut {
            id: *id,
            entry: Box::new(entry.clone()),
        };
        writer::apply_now(self, op)?;
        Ok(())
    }

    /// Removes an entry, counted nowhere; true if it was there.
    fn outbox_take(&self, id: &MessageId) -> Result<bool, StoreError> {
        match writer::apply_now(self, Op::OutboxCancel { id: *id })? {
            Outcome::Found(f) => Ok(f),
            _ => Err(writer::stopped()),
        }
    }

    /// The entry as it is on disk (its retry state may be older than the
    /// index's).
    pub(super) fn outbox_read(&self, id: &MessageId) -> Result<Option<OutboxEntry>, StoreError> {
        match self.outbox.get(id.0)? {
            Some(v) => Ok(Some(postcard::from_bytes(&v)?)),
            None => Ok(None),
        }
    }

    /// The entry with its current retry state.
    pub fn outbox_get(&self, id: &MessageId) -> Result<Option<OutboxEntry>, StoreError> {
        let retry = self.due_index().get(id);
        let mut entry = self.outbox_read(id)?;
        if let (Some(e), Some(r)) = (entry.as_mut(), retry) {
            r.apply_to(e);
        }
        Ok(entry)
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
    /// outbox entry goes, the delivered mark (with the receipt) is written,
    /// then the delivered counter is bumped. A crash can leave the message
    /// either in flight or settled, never both. True if the message was in
    /// the outbox.
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
        writer::apply_now(self, Op::OutboxFailed { id: *id })?;
        Ok(())
    }

    /// Entries due at `now_ms` (expired ones are due too), at most `limit`,
    /// earliest first, with their current retry state.
    pub fn outbox_due(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<(MessageId, OutboxEntry)>, StoreError> {
        let ids = self.due_index().due(now_ms, limit);
        self.outbox_entries(ids)
    }

    fn outbox_entries(
        &self,
        ids: Vec<MessageId>,
    ) -> Result<Vec<(MessageId, OutboxEntry)>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(entry) = self.outbox_get(&id)? {
                out.push((id, entry));
            }
        }
        Ok(out)
    }

    /// Makes every waiting entry due now (a new neighbour came up); returns
    /// how many were waiting.
    pub fn outbox_hurry(&self, now_ms: u64) -> Result<usize, StoreError> {
        match writer::apply_now(self, Op::OutboxHurry { now_ms })? {
            Outcome::Hurried(n) => Ok(n),
            _ => Err(writer::stopped()),
        }
    }

    /// Up to `limit` entries, the next due first, and how many there are in
    /// all: what `hermes outbox` shows.
    pub fn outbox_list(
        &self,
        limit: usize,
    ) -> Result<(u64, Vec<(MessageId, OutboxEntry)>), StoreError> {
        let (total, ids) = {
            let due = self.due_index();
            (due.len() as u64, due.first(limit))
        };
        Ok((total, self.outbox_entries(ids)?))
    }

    /// Removes a message the local user cancelled (`hermes outbox cancel`);
    /// counted nowhere. True if it was there. A copy already sent may still
    /// arrive: its receipt then finds nothing to settle.
    pub fn outbox_cancel(&self, id: &MessageId) -> Result<bool, StoreError> {
        self.outbox_take(id)
    }

    pub fn outbox_counts(&self) -> Result<OutboxCounts, StoreError> {
        let (queued, in_flight) = self.due_index().counts();
        Ok(OutboxCounts { queued, in_flight })
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
        // And the due index, built from the same front (`OutboxHead`).
        let due = load_due(&s.outbox).unwrap();
        let r = due.get(&id).unwrap();
        assert_eq!(
            (r.attempts, r.next_try_ms, r.expires_ms),
            (3, 1_767_225_601_000, 1_767_312_000_000)
        );
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

#[cfg(test)]
mod retry_tests {
    use super::*;
    use crate::store::test_util::open;
    use crate::store::writer::Reschedule;

    fn entry() -> OutboxEntry {
        OutboxEntry {
            recipient: Address([9; 32]),
            created_ms: 0,
            expires_at: 1_000,
            attempts: 0,
            next_try_ms: 100,
            sealed: Sealed {
                sender_kem: [1; 32],
                enc: [2; 32],
                ciphertext: vec![3; 40],
            },
        }
    }

    /// What the router's tick does: take what is due, each tried once more
    /// and next due at `next`.
    fn take_due(s: &Store, now_ms: u64, next: u64) -> Vec<(MessageId, OutboxEntry)> {
        let reschedule: Reschedule = Box::new(move |_, e| {
            let mut e = e.clone();
            e.attempts += 1;
            e.next_try_ms = next;
            Some(e)
        });
        let op = Op::OutboxTakeDue {
            now_ms,
            limit: 10,
            reschedule,
        };
        match writer::apply_now(s, op).unwrap() {
            Outcome::Due(d) => d,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_sending_writes_nothing_and_a_flush_saves_its_retry_state() {
        let dir = tempfile::tempdir().unwrap();
        let a = MessageId([1; 16]);
        {
            let s = open(dir.path());
            s.outbox_put(&a, &entry()).unwrap();
            let taken = take_due(&s, 100, 5_000);
            assert_eq!(taken, vec![(a, entry())], "answered as it was");
            assert!(take_due(&s, 4_999, 6_000).is_empty(), "not due again");
            assert_eq!(s.outbox_counts().unwrap().in_flight, 1);
            let got = s.outbox_get(&a).unwrap().unwrap();
            assert_eq!((got.attempts, got.next_try_ms), (1, 5_000));
            let disk = s.outbox_read(&a).unwrap().unwrap();
            assert_eq!(disk, entry(), "the sending wrote nothing");
            s.flush_blocking().unwrap();
            let disk = s.outbox_read(&a).unwrap().unwrap();
            assert_eq!((disk.attempts, disk.next_try_ms), (1, 5_000), "saved");
        }
        let s = open(dir.path());
        let got = s.outbox_get(&a).unwrap().unwrap();
        assert_eq!((got.attempts, got.next_try_ms), (1, 5_000), "reopened");
        assert!(s.outbox_due(4_999, 10).unwrap().is_empty());
        assert_eq!(s.outbox_due(5_000, 10).unwrap().len(), 1);
    }

    #[test]
    fn closing_the_store_saves_all_the_retry_state() {
        let dir = tempfile::tempdir().unwrap();
        let n = crate::store::due::MAX_RETRY_SAVE + 44;
        let ids: Vec<MessageId> = (0..n).map(|_| MessageId::random()).collect();
        {
            let s = open(dir.path());
            for id in &ids {
                s.outbox_put(id, &entry()).unwrap();
            }
            let reschedule: Reschedule = Box::new(|_, e| {
                let mut e = e.clone();
                e.attempts = 3;
                e.next_try_ms = 7_000;
                Some(e)
            });
            let op = Op::OutboxTakeDue {
                now_ms: 100,
                limit: n,
                reschedule,
            };
            writer::apply_now(&s, op).unwrap();
        }
        let s = open(dir.path());
        for id in &ids {
            let disk = s.outbox_read(id).unwrap().unwrap();
            assert_eq!((disk.attempts, disk.next_try_ms), (3, 7_000));
        }
    }

    #[test]
    fn saving_retry_state_never_brings_back_a_settled_entry() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let a = MessageId([1; 16]);
        s.outbox_put(&a, &entry()).unwrap();
        take_due(&s, 100, 5_000);
        // The settle and the save of its (dirty) retry state in one group.
        let bob = crate::crypto::identity::Identity::generate();
        let r = Receipt::sign(&bob, a, 1_000, None);
        let mut jobs = [writer::Job {
            op: Op::OutboxSettle {
                id: a,
                receipt: Box::new(r),
                now: 10,
            },
            durable: false,
            reply: writer::Reply::None,
        }];
        let answers = writer::write_jobs(&s, &mut jobs, true);
        assert!(matches!(answers[..], [Ok(Outcome::Found(true))]));
        assert_eq!(s.outbox_read(&a).unwrap(), None);
        assert_eq!(s.outbox_counts().unwrap(), OutboxCounts::default());
    }

    #[test]
    fn an_older_stores_due_tree_is_emptied_when_a_daemon_opens_it() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(dir.path());
            s.outbox_put(&MessageId([1; 16]), &entry()).unwrap();
            let old = s.db.open_tree("outbox_due").unwrap();
            old.insert([0u8; 24], &[]).unwrap();
            s.flush_blocking().unwrap();
        }
        let s = open(dir.path());
        assert!(s.db.open_tree("outbox_due").unwrap().is_empty());
        assert_eq!(s.outbox_due(u64::MAX, 10).unwrap().len(), 1, "rebuilt");
    }
}
