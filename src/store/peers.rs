//! The address book on disk: one [`PeerEntry`] per node address.
//!
//! The NeighbourManager keeps the book in memory and saves what changed
//! ([`Store::peer_save`], [`Store::peer_remove`]); the Router adds records it
//! learns outside of links (a letter's sender, a probed recipient) with
//! [`Store::peer_put`]. Callers verify records before storing them.

use super::{Store, StoreError};
use crate::crypto::{unix_now, Address, SignedRecord};
use crate::overlay::PeerEntry;

/// Most entries [`Store::peer_put`] lets the stored book grow to.
pub const MAX_PEERS: usize = 4096;

impl Store {
    fn peer_entry(&self, address: &Address) -> Result<Option<PeerEntry>, StoreError> {
        match self.peers.get(address.0)? {
            Some(v) => Ok(postcard::from_bytes(&v).ok()),
            None => Ok(None),
        }
    }

    /// Adds a verified record, or updates the held one if this is newer.
    pub fn peer_put(&self, rec: &SignedRecord) -> Result<(), StoreError> {
        let entry = match self.peer_entry(&rec.record.address)? {
            Some(old) if old.record.record.time >= rec.record.time => return Ok(()),
            Some(mut old) => {
                old.record = rec.clone();
                old
            }
            None if self.peers.len() >= MAX_PEERS => return Ok(()),
            None => PeerEntry::new(rec.clone(), rec.record.time.min(unix_now())),
        };
        self.peer_save(&entry)
    }

    /// Saves an entry as it is.
    pub fn peer_save(&self, entry: &PeerEntry) -> Result<(), StoreError> {
        self.peers
            .insert(entry.address().0, postcard::to_stdvec(entry)?)?;
        Ok(())
    }

    pub fn peer_remove(&self, address: &Address) -> Result<(), StoreError> {
        self.peers.remove(address.0)?;
        Ok(())
    }

    pub fn peer_get(&self, address: &Address) -> Result<Option<SignedRecord>, StoreError> {
        Ok(self.peer_entry(address)?.map(|e| e.record))
    }

    /// Every stored entry. An entry that does not decode (written by an
    /// older version) is skipped: the book refills from the network.
    pub fn peers_all(&self) -> Result<Vec<PeerEntry>, StoreError> {
        let mut out = Vec::new();
        for item in self.peers.iter() {
            let (_, v) = item?;
            if let Ok(e) = postcard::from_bytes(&v) {
                out.push(e);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Identity;

    #[test]
    fn put_keeps_the_meta_and_the_newest_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = Identity::generate();
        let now = unix_now();
        let old = SignedRecord::sign(&id, "127.0.9.2:1".parse().unwrap(), true, now - 10);
        let mut e = PeerEntry::new(old.clone(), now);
        e.failures = 3;
        store.peer_save(&e).unwrap();
        let newer = SignedRecord::sign(&id, "127.0.9.3:1".parse().unwrap(), true, now);
        store.peer_put(&old).unwrap();
        store.peer_put(&newer).unwrap();
        let all = store.peers_all().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].failures, &all[0].record), (3, &newer));
        assert_eq!(store.peer_get(&id.address()).unwrap(), Some(newer));
        store.peer_remove(&id.address()).unwrap();
        assert!(store.peers_all().unwrap().is_empty());
    }
}
