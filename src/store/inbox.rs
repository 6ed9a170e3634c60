//! The inbox: delivered messages waiting for `hermes pull`.
//!
//! Delivery writes the message and a *delivered* drop-list entry in one
//! transaction, so an id is in the inbox or the drop list (or both) from the
//! moment it is first delivered: it can never be delivered twice, even after
//! a pull has removed it from the inbox. Keys start with a sequence number
//! from sled's monotonic id generator, so iteration is oldest first.

use sled::Transactional;

use super::drop_list::{exp_key, DropKey};
use super::writer::{self, Op, Outcome};
use super::{Store, StoreError};
use crate::wire::client::InboxMessage;
use crate::wire::link::Receipt;
use crate::wire::MessageId;

/// Where a new delivery was written, so a failed flush can take it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxKey {
    key: Vec<u8>,
    id: MessageId,
    mark_until: u64,
}

impl InboxKey {
    pub(super) fn new(key: Vec<u8>, id: MessageId, mark_until: u64) -> InboxKey {
        InboxKey {
            key,
            id,
            mark_until,
        }
    }
}

impl Store {
    /// Stores a delivered message unless its id was delivered before, with
    /// its delivered mark kept until `mark_until` (Unix seconds), in one
    /// transaction. `Some(key)` if it is new: the caller flushes before it
    /// sends the receipt, and if the flush fails, takes the delivery back with
    /// [`Store::inbox_revoke`] so that nothing of it stays visible.
    pub fn inbox_deliver(
        &self,
        msg: &InboxMessage,
        receipt: &Receipt,
        mark_until: u64,
        now: u64,
    ) -> Result<Option<InboxKey>, StoreError> {
        let op = Op::Deliver {
            msg: Box::new(msg.clone()),
            receipt: Box::new(receipt.clone()),
            mark_until,
            now,
        };
        match writer::apply_now(self, op)? {
            Outcome::Delivered(k) => Ok(k),
            _ => Err(writer::stopped()),
        }
    }

    /// Takes back a delivery whose flush failed: the inbox entry and its
    /// delivered mark go in one transaction, so the message is delivered
    /// afresh when a copy comes again (and no receipt was sent for it).
    pub fn inbox_revoke(&self, k: &InboxKey) -> Result<(), StoreError> {
        let delivered = DropKey::Delivered(k.id).bytes();
        let exp = exp_key(k.mark_until, &delivered);
        let (message, mark) =
            (&self.inbox, &self.drop, &self.drop_exp).transaction(|(inbox, drop, drop_exp)| {
                let message = inbox.remove(k.key.as_slice())?.is_some();
                let mark = drop.remove(delivered.as_slice())?.is_some();
                drop_exp.remove(exp.as_slice())?;
                Ok::<_, sled::transaction::ConflictableTransactionError<StoreError>>((
                    message, mark,
                ))
            })?;
        if message {
            super::Sizes::sub(&self.sizes.inbox, 1);
        }
        if mark {
            super::Sizes::sub(&self.sizes.drop, 1);
        }
        Ok(())
    }

    /// Up to `max` messages, oldest first.
    pub fn inbox_list(&self, max: usize) -> Result<Vec<InboxMessage>, StoreError> {
        let mut out = Vec::new();
        for item in self.inbox.iter().take(max) {
            let (_, v) = item?;
            out.push(postcard::from_bytes(&v)?);
        }
        Ok(out)
    }

    /// Removes the confirmed ids; returns how many were there.
    ///
    /// The inbox is keyed by sequence, so an id's key is found by walking it
    /// from the oldest entry. A pull hands out the oldest first and the
    /// client confirms what it was given, so the ids are normally the first
    /// entries: the walk stops as soon as every id asked for is found. (It
    /// went through the whole inbox for every confirm; under a flood the
    /// recipient's unconfirmed inbox held tens of thousands of messages, and
    /// each confirm of 16 read all of them back through sled's cache.) Only
    /// ids that are not in the inbox (confirmed already) make it walk to the
    /// end.
    pub fn inbox_remove(&self, ids: &[MessageId]) -> Result<u32, StoreError> {
        let mut removed = 0;
        for k in keys_holding(self.inbox.iter().keys(), ids)? {
            if self.inbox.remove(k)?.is_some() {
                super::Sizes::sub(&self.sizes.inbox, 1);
            }
            removed += 1;
        }
        Ok(removed)
    }

    /// Messages in the inbox (kept count, see `Sizes`).
    pub fn inbox_len(&self) -> usize {
        self.sizes.inbox.load(std::sync::atomic::Ordering::Relaxed) as usize
    }
}

/// The inbox keys (`be_u64(seq) ‖ id`, oldest first) among `keys` that hold
/// one of `ids`, read no further than the last of them is found.
fn keys_holding<K: AsRef<[u8]>, E>(
    keys: impl Iterator<Item = Result<K, E>>,
    ids: &[MessageId],
) -> Result<Vec<K>, E> {
    let mut wanted: std::collections::HashSet<[u8; 16]> = ids.iter().map(|id| id.0).collect();
    let mut found = Vec::new();
    if wanted.is_empty() {
        return Ok(found);
    }
    for key in keys {
        let k = key?;
        let b = k.as_ref();
        if b.len() == 24 && wanted.remove(&b[8..]) {
            found.push(k);
            if wanted.is_empty() {
                break;
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Identity;
    use crate::store::DropEntry;

    fn msg(id: u8, text: &str) -> InboxMessage {
        InboxMessage {
            id: MessageId([id; 16]),
            sender: "s".into(),
            sender_ip: "127.0.0.2".into(),
            sent: 1,
            received: 2,
            text: text.into(),
        }
    }

    #[test]
    fn a_confirm_reads_no_further_than_its_last_id() {
        let key = |seq: u64| {
            let mut k = seq.to_be_bytes().to_vec();
            k.extend_from_slice(&[seq as u8; 16]);
            k
        };
        let read = std::cell::Cell::new(0);
        let keys = (1..=1_000u64).map(|s| {
            read.set(read.get() + 1);
            Ok::<_, ()>(key(s))
        });
        let ids = [MessageId([3; 16]), MessageId([1; 16]), MessageId([2; 16])];
        let found = keys_holding(keys, &ids).unwrap();
        assert_eq!(found, vec![key(1), key(2), key(3)]);
        assert_eq!(read.get(), 3, "the walk stops at the last id");
    }

    #[test]
    fn kept_counts_follow_every_write_and_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let me = Identity::generate();
        let receipt = |i: u8| Receipt::sign(&me, MessageId([i; 16]), 1_000, None);
        let real = |s: &Store| (s.inbox.len(), s.drop.len());
        let kept = |s: &Store| (s.inbox_len(), s.drop_len());
        {
            let s = crate::store::test_util::open(dir.path());
            for i in 1..=5u8 {
                s.inbox_deliver(&msg(i, "x"), &receipt(i), 1_000, 10)
                    .unwrap();
            }
            // A second copy is refused: nothing more.
            assert!(s
                .inbox_deliver(&msg(1, "x"), &receipt(1), 1_000, 10)
                .unwrap()
                .is_none());
            assert_eq!(kept(&s), (5, 5));
            // Confirmed, taken back, a mark that expires and is swept, a
            // settle's mark, an expired mark renewed.
            s.inbox_remove(&[MessageId([2; 16])]).unwrap();
            let k = s
                .inbox_deliver(&msg(6, "x"), &receipt(6), 1_000, 10)
                .unwrap()
                .unwrap();
            s.inbox_revoke(&k).unwrap();
            let short = DropEntry {
                expires_at: 20,
                receipt: None,
            };
            assert!(s
                .drop_insert_new(&DropKey::Delivered(MessageId([7; 16])), &short, 10)
                .unwrap());
            assert_eq!(kept(&s), real(&s));
            assert!(s
                .drop_insert_new(&DropKey::Delivered(MessageId([7; 16])), &short, 30)
                .unwrap());
            assert_eq!(kept(&s), real(&s), "renewed, not added");
            assert_eq!(s.drop_sweep(30).unwrap(), 1);
            assert!(s
                .outbox_settle(&MessageId([8; 16]), &receipt(8), 10)
                .is_ok());
            assert_eq!(kept(&s), real(&s));
            assert_eq!(kept(&s), (4, 6));
        }
        let s = crate::store::test_util::open(dir.path());
        assert_eq!(kept(&s), (4, 6), "counted again at open");
    }

    #[test]
    fn confirm_removes_exactly_the_ids_given_wherever_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::store::test_util::open(dir.path());
        let me = Identity::generate();
        for i in 1..=40u8 {
            let r = Receipt::sign(&me, MessageId([i; 16]), 1_000, None);
            assert!(s
                .inbox_deliver(&msg(i, &i.to_string()), &r, 1_000, 10)
                .unwrap()
                .is_some());
        }
        // The oldest two, one from the middle, the newest, one twice, and one
        // that is not there: four removed, the walk goes to the end for the
        // unknown one and finds the rest on the way.
        let ids: Vec<MessageId> = [2u8, 1, 20, 40, 20, 99]
            .into_iter()
            .map(|i| MessageId([i; 16]))
            .collect();
        assert_eq!(s.inbox_remove(&ids).unwrap(), 4);
        let left: Vec<String> = s
            .inbox_list(100)
            .unwrap()
            .into_iter()
            .map(|m| m.text)
            .collect();
        let expected: Vec<String> = (3..=39u8)
            .filter(|i| *i != 20)
            .map(|i| i.to_string())
            .collect();
        assert_eq!(left, expected, "the others stay, oldest first");
        // Confirmed again: nothing left to remove.
        assert_eq!(s.inbox_remove(&ids).unwrap(), 0);
        assert_eq!(s.inbox_remove(&[]).unwrap(), 0);
        assert_eq!(s.inbox_len(), 36);
    }

    #[test]
    fn delivered_once_even_after_pull() {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::store::test_util::open(dir.path());
        let me = Identity::generate();
        let r1 = Receipt::sign(&me, MessageId([1; 16]), 1_000, None);
        let r2 = Receipt::sign(&me, MessageId([2; 16]), 1_000, None);
        assert!(s
            .inbox_deliver(&msg(1, "a"), &r1, 1_000, 10)
            .unwrap()
            .is_some());
        assert!(s
            .inbox_deliver(&msg(2, "b"), &r2, 1_000, 10)
            .unwrap()
            .is_some());
        assert!(s
            .inbox_deliver(&msg(1, "a"), &r1, 1_000, 10)
            .unwrap()
            .is_none());
        let listed: Vec<String> = s
            .inbox_list(10)
            .unwrap()
            .into_iter()
            .map(|m| m.text)
            .collect();
        assert_eq!(listed, vec!["a", "b"], "oldest first");
        assert_eq!(s.inbox_remove(&[MessageId([1; 16])]).unwrap(), 1);
        assert_eq!(s.inbox_len(), 1);
        // Pulled and confirmed, yet never delivered again while its entry lives.
        assert!(s
            .inbox_deliver(&msg(1, "a"), &r1, 1_000, 10)
            .unwrap()
            .is_none());
        assert_eq!(s.inbox_len(), 1);
        // The stored receipt is what a late copy is answered with.
        let entry = s
            .drop_get(&DropKey::Delivered(MessageId([1; 16])), 10)
            .unwrap()
            .unwrap();
        assert_eq!(entry.receipt, Some(r1));
    }

    #[test]
    fn a_revoked_delivery_leaves_nothing_and_can_happen_again() {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::store::test_util::open(dir.path());
        let me = Identity::generate();
        let r = Receipt::sign(&me, MessageId([4; 16]), 1_000, None);
        let k = s
            .inbox_deliver(&msg(4, "x"), &r, 2_000, 10)
            .unwrap()
            .unwrap();
        s.inbox_revoke(&k).unwrap();
        assert_eq!(s.inbox_len(), 0);
        assert_eq!(s.drop_len(), 0);
        assert!(s
            .drop_get(&DropKey::Delivered(MessageId([4; 16])), 10)
            .unwrap()
            .is_none());
        assert_eq!(s.drop_sweep(u64::MAX).unwrap(), 0, "index emptied too");
        assert!(s
            .inbox_deliver(&msg(4, "x"), &r, 2_000, 10)
            .unwrap()
            .is_some());
        assert_eq!(s.inbox_len(), 1);
    }

    #[test]
    fn inbox_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let me = Identity::generate();
        {
            let s = crate::store::test_util::open(dir.path());
            let r = Receipt::sign(&me, MessageId([7; 16]), 1_000, None);
            s.inbox_deliver(&msg(7, "kept"), &r, 1_000, 10).unwrap();
            s.flush_blocking().unwrap();
        }
        let s = crate::store::test_util::open(dir.path());
        assert_eq!(s.inbox_list(10).unwrap()[0].text, "kept");
    }
}
