//! The inbox: delivered messages waiting for `hermes pull`.
//!
//! Delivery writes the message and a *delivered* drop-list entry in one
//! transaction, so an id is in the inbox or the drop list (or both) from the
//! moment it is first delivered: it can never be delivered twice, even after
//! a pull has removed it from the inbox. Keys start with a sequence number
//! from sled's monotonic id generator, so iteration is oldest first.

use sled::transaction::ConflictableTransactionError;
use sled::Transactional;

use super::drop_list::{insert_in_tx, DropEntry, DropKey};
use super::{Store, StoreError};
use crate::wire::client::InboxMessage;
use crate::wire::link::Receipt;
use crate::wire::MessageId;

impl Store {
    /// Stores a delivered message unless its id was delivered before.
    /// True if it is new. The caller flushes before sending the receipt.
    pub fn inbox_deliver(&self, msg: &InboxMessage, receipt: &Receipt, now: u64) -> Result<bool, StoreError> {
        let seq = self.db.generate_id()?;
        let mut key = Vec::with_capacity(24);
        key.extend_from_slice(&seq.to_be_bytes());
        key.extend_from_slice(&msg.id.0);
        let value = postcard::to_stdvec(msg)?;
        let delivered = DropKey::Delivered(msg.id);
        let entry = DropEntry {
            expires_at: receipt.expires_at,
            receipt: Some(receipt.clone()),
        };
        let delivered_key = delivered.bytes();
        let r = (&self.inbox, &self.drop, &self.drop_exp).transaction(|(inbox, drop, drop_exp)| {
            if let Some(v) = drop.get(delivered_key.as_slice())? {
                let old: DropEntry =
                    postcard::from_bytes(&v).map_err(|e| ConflictableTransactionError::Abort(e.into()))?;
                if old.expires_at > now {
                    return Ok(false);
                }
            }
            inbox.insert(key.as_slice(), value.as_slice())?;
            insert_in_tx(drop, drop_exp, &delivered, &entry)?;
            Ok(true)
        })?;
        Ok(r)
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
    pub fn inbox_remove(&self, ids: &[MessageId]) -> Result<u32, StoreError> {
        let mut removed = 0;
        // The inbox is keyed by sequence; find each id's key by a scan of the
        // (small) unconfirmed inbox.
        for item in self.inbox.iter() {
            let (k, _) = item?;
            if k.len() == 24 && ids.iter().any(|id| id.0 == k[8..]) {
                self.inbox.remove(k)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    pub fn inbox_len(&self) -> usize {
        self.inbox.len()
    }
}
