//! Parts of multi-part onion messages held at their recipient until the set
//! is complete: tree `parts`, key `id (16) ‖ be_u16(index)`, value
//! `version ‖ be_u64(expires_at) ‖ encoded part`.
//!
//! The Router rebuilds a message from parts that arrived on their own paths
//! (`routing::onion::fragments::Reassembly`, bounded in memory); every part
//! it holds is also written here, so a restart does not lose the parts
//! already received: at start the Router reads them back
//! ([`Store::parts_all`]). A completed set is removed in one batch. Expired
//! sets are removed by the Router's sweep. Plain inserts, flushed with the
//! next group commit or sled's own flush (at most 500 ms later): a part lost
//! in a crash is sent again by its origin, which retries the whole message
//! until it has a receipt.
//!
//! The encoded part is the routing layer's format; the store checks only its
//! own framing and the key's agreement with it.

use super::{Store, StoreError};
use crate::wire::MessageId;

/// Name of the sled tree.
pub const PARTS_TREE: &str = "parts";
/// The first byte of every stored part.
pub const PART_VALUE_VERSION: u8 = 1;
const KEY_LEN: usize = 16 + 2;
/// Largest stored value: framing and one largest part.
pub const MAX_PART_VALUE: usize = 1 + 8 + crate::wire::onion::MAX_PART_BYTES;

fn key(id: &MessageId, index: u16) -> [u8; KEY_LEN] {
    let mut k = [0u8; KEY_LEN];
    k[..16].copy_from_slice(&id.0);
    k[16..].copy_from_slice(&index.to_be_bytes());
    k
}

/// Checks one stored entry's framing (for `store check`).
pub fn entry_decodes(k: &[u8], v: &[u8]) -> bool {
    k.len() == KEY_LEN && v.len() > 9 && v.len() <= MAX_PART_VALUE && v[0] == PART_VALUE_VERSION
}

impl Store {
    fn parts_tree(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(PARTS_TREE)?)
    }

    /// Keeps one part (its encoded bytes) of message `id`.
    pub fn parts_put(
        &self,
        id: &MessageId,
        index: u16,
        expires_at: u64,
        part: &[u8],
    ) -> Result<(), StoreError> {
        let mut v = Vec::with_capacity(9 + part.len());
        v.push(PART_VALUE_VERSION);
        v.extend_from_slice(&expires_at.to_be_bytes());
        v.extend_from_slice(part);
        if v.len() > MAX_PART_VALUE {
            return Err(StoreError::Io {
                path: self.path().to_path_buf(),
                why: format!("a part of {} bytes is too large to keep", part.len()),
            });
        }
        self.parts_tree()?.insert(key(id, index), v)?;
        Ok(())
    }

    /// Removes every part of message `id` (complete or expired), in one batch.
    pub fn parts_remove(&self, id: &MessageId) -> Result<usize, StoreError> {
        let tree = self.parts_tree()?;
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for kv in tree.scan_prefix(id.0) {
            let (k, _) = kv?;
            batch.remove(k);
            n += 1;
        }
        if n > 0 {
            tree.apply_batch(batch)?;
        }
        Ok(n)
    }

    /// Every part held, as encoded bytes, with its expiry; entries that do
    /// not frame right are skipped (and reported by `store check`).
    pub fn parts_all(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.parts_tree()?.iter() {
            let (k, v) = kv?;
            if !entry_decodes(&k, &v) {
                continue;
            }
            let mut exp = [0u8; 8];
            exp.copy_from_slice(&v[1..9]);
            out.push((u64::from_be_bytes(exp), v[9..].to_vec()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_kept_read_back_and_removed_per_message() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::test_util::open(dir.path());
        let (a, b) = (MessageId([1; 16]), MessageId([2; 16]));
        store.parts_put(&a, 0, 100, b"a0").unwrap();
        store.parts_put(&a, 1, 100, b"a1").unwrap();
        store.parts_put(&b, 0, 200, b"b0").unwrap();
        let mut all = store.parts_all().unwrap();
        all.sort();
        assert_eq!(
            all,
            vec![
                (100, b"a0".to_vec()),
                (100, b"a1".to_vec()),
                (200, b"b0".to_vec())
            ]
        );
        assert_eq!(store.parts_remove(&a).unwrap(), 2);
        assert_eq!(store.parts_all().unwrap(), vec![(200, b"b0".to_vec())]);
        assert!(store.parts_put(&a, 0, 1, &vec![0; MAX_PART_VALUE]).is_err());
    }

    #[test]
    fn framing_is_checked() {
        assert!(entry_decodes(
            &[0; KEY_LEN],
            &[1, 0, 0, 0, 0, 0, 0, 0, 0, 5]
        ));
        assert!(!entry_decodes(
            &[0; KEY_LEN],
            &[2, 0, 0, 0, 0, 0, 0, 0, 0, 5]
        ));
        assert!(!entry_decodes(&[0; 3], &[1, 0, 0, 0, 0, 0, 0, 0, 0, 5]));
        assert!(!entry_decodes(&[0; KEY_LEN], &[1, 0]));
    }
}
