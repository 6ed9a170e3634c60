//! The outbox: messages this node originated and has no receipt for yet.
//!
//! An entry holds the sealed message, so a retry after any restart sends the
//! same bytes without the plaintext ever being stored. It leaves the outbox
//! only when a verified receipt arrives, or when its time to live runs out.

use serde::{Deserialize, Serialize};

use super::{Counter, Store, StoreError};
use crate::crypto::seal::Sealed;
use crate::crypto::Address;
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

/// Counts of the outbox for `status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    /// Never sent yet.
    pub queued: u64,
    /// Sent at least once, no receipt yet.
    pub in_flight: u64,
}

impl Store {
    pub fn outbox_put(&self, id: &MessageId, entry: &OutboxEntry) -> Result<(), StoreError> {
        self.outbox.insert(id.0, postcard::to_stdvec(entry)?)?;
        Ok(())
    }

    pub fn outbox_get(&self, id: &MessageId) -> Result<Option<OutboxEntry>, StoreError> {
        match self.outbox.get(id.0)? {
            Some(v) => Ok(Some(postcard::from_bytes(&v)?)),
            None => Ok(None),
        }
    }

    /// Removes a delivered message and counts it; false if it was not there.
    pub fn outbox_delivered(&self, id: &MessageId) -> Result<bool, StoreError> {
        let removed = self.outbox.remove(id.0)?.is_some();
        if removed {
            self.bump(Counter::Delivered, 1)?;
        }
        Ok(removed)
    }

    /// Removes a message whose time to live ran out, and counts it failed.
    pub fn outbox_failed(&self, id: &MessageId) -> Result<(), StoreError> {
        if self.outbox.remove(id.0)?.is_some() {
            self.bump(Counter::Failed, 1)?;
        }
        Ok(())
    }

    /// Entries due at `now_ms` (or expired), at most `limit`.
    ///
    /// This reads the whole outbox; it is small on a healthy node (entries
    /// leave it at the first receipt). A due-time index is the next step if
    /// that stops being true.
    pub fn outbox_due(&self, now_ms: u64, limit: usize) -> Result<Vec<(MessageId, OutboxEntry)>, StoreError> {
        let mut due = Vec::new();
        for item in self.outbox.iter() {
            let (k, v) = item?;
            let entry: OutboxEntry = postcard::from_bytes(&v)?;
            if entry.next_try_ms <= now_ms || entry.expires_at.saturating_mul(1000) <= now_ms {
                let Ok(id) = <[u8; 16]>::try_from(k.as_ref()) else {
                    continue;
                };
                due.push((MessageId(id), entry));
                if due.len() >= limit {
                    break;
                }
            }
        }
        Ok(due)
    }

    /// Makes every waiting entry due now (a new neighbour came up).
    pub fn outbox_hurry(&self, now_ms: u64) -> Result<usize, StoreError> {
        let mut n = 0;
        for item in self.outbox.iter() {
            let (k, v) = item?;
            let mut entry: OutboxEntry = postcard::from_bytes(&v)?;
            if entry.next_try_ms > now_ms {
                entry.next_try_ms = now_ms;
                self.outbox.insert(k, postcard::to_stdvec(&entry)?)?;
                n += 1;
            }
        }
        Ok(n)
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

    fn entry(next_try_ms: u64) -> OutboxEntry {
        OutboxEntry {
            recipient: Address([9; 32]),
            created_ms: 0,
            expires_at: 1_000,
            attempts: 0,
            next_try_ms,
            sealed: Sealed { sender_kem: [1; 32], enc: [2; 32], ciphertext: vec![3; 40] },
        }
    }

    #[test]
    fn due_delivered_failed() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let (a, b) = (MessageId([1; 16]), MessageId([2; 16]));
        s.outbox_put(&a, &entry(100)).unwrap();
        s.outbox_put(&b, &entry(500)).unwrap();
        let due: Vec<_> = s.outbox_due(200, 10).unwrap().into_iter().map(|(id, _)| id).collect();
        assert_eq!(due, vec![a]);
        assert_eq!(s.outbox_hurry(200).unwrap(), 1);
        assert_eq!(s.outbox_due(200, 10).unwrap().len(), 2);
        assert!(s.outbox_delivered(&a).unwrap());
        assert!(!s.outbox_delivered(&a).unwrap());
        s.outbox_failed(&b).unwrap();
        assert_eq!(s.counter(Counter::Delivered).unwrap(), 1);
        assert_eq!(s.counter(Counter::Failed).unwrap(), 1);
        assert_eq!(s.outbox_counts().unwrap(), OutboxCounts::default());
    }
}
