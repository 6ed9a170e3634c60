//! The address book on disk: one [`PeerRecord`] per node address, and the
//! anchors (under [`ANCHORS_KEY`]).
//!
//! The store owns this format: [`PeerRecord`] is its own type, with its own
//! versioned encoding ([`PeerRecord::encode`], [`PeerRecord::decode`]); the
//! NeighbourManager converts it to and from the overlay's book entries at the
//! boundary. The NeighbourManager saves what changed ([`Store::peer_save`],
//! [`Store::peer_remove`]) and the anchors ([`Store::anchors_save`]); other
//! actors only read ([`Store::peer_get`]) or add a verified record they
//! learned outside of links ([`Store::peer_put`], used by the name probes).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{Store, StoreError};
use crate::crypto::{unix_now, Address, SignedRecord};

/// Most entries [`Store::peer_put`] lets the stored book grow to.
pub const MAX_PEERS: usize = 4096;
/// The key of the anchors in the `peers` tree (node addresses are 32 bytes).
pub const ANCHORS_KEY: &[u8] = b"anchors";
/// Most anchors stored.
pub const MAX_ANCHORS: usize = 8;
/// The first byte of every encoded [`PeerRecord`].
pub const PEER_RECORD_VERSION: u8 = 3;

/// One address-book entry as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    pub record: SignedRecord,
    /// Seconds since the epoch when the node was last known to be alive.
    pub last_seen: u64,
    /// Seconds since the epoch of the last link with it.
    pub last_success: Option<u64>,
    /// Dials that failed since the last success.
    pub failures: u32,
    /// This node linked to it itself.
    pub tried: bool,
    /// The address group of the peer that told us of it.
    pub source: Option<IpAddr>,
}

impl PeerRecord {
    /// A record learned outside of links: never linked, no source.
    pub fn learned(record: SignedRecord, last_seen: u64) -> PeerRecord {
        PeerRecord {
            record,
            last_seen,
            last_success: None,
            failures: 0,
            tried: false,
            source: None,
        }
    }

    pub fn address(&self) -> Address {
        self.record.record.address
    }

    pub fn encode(&self) -> Result<Vec<u8>, StoreError> {
        let mut out = vec![PEER_RECORD_VERSION];
        out.extend(postcard::to_stdvec(self)?);
        Ok(out)
    }

    /// `None` for bytes of another version or that do not decode exactly.
    pub fn decode(bytes: &[u8]) -> Option<PeerRecord> {
        let (&version, rest) = bytes.split_first()?;
        if version != PEER_RECORD_VERSION {
            return None;
        }
        match postcard::take_from_bytes::<PeerRecord>(rest) {
            Ok((r, [])) => Some(r),
            _ => None,
        }
    }
}

/// Encodes the anchors' records.
pub fn encode_anchors(anchors: &[SignedRecord]) -> Result<Vec<u8>, StoreError> {
    let mut out = vec![PEER_RECORD_VERSION];
    out.extend(postcard::to_stdvec(anchors)?);
    Ok(out)
}

/// Decodes stored anchors (`None` if they do not decode exactly).
pub fn decode_anchors(bytes: &[u8]) -> Option<Vec<SignedRecord>> {
    let (&version, rest) = bytes.split_first()?;
    if version != PEER_RECORD_VERSION {
        return None;
    }
    match postcard::take_from_bytes::<Vec<SignedRecord>>(rest) {
        Ok((r, [])) if r.len() <= MAX_ANCHORS => Some(r),
        _ => None,
    }
}

impl Store {
    fn peer_entry(&self, address: &Address) -> Result<Option<PeerRecord>, StoreError> {
        match self.peers.get(address.0)? {
            Some(v) => Ok(PeerRecord::decode(&v)),
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
            None => PeerRecord::learned(rec.clone(), rec.record.time.min(unix_now())),
        };
        self.peer_save(&entry)
    }

    /// Saves an entry as it is.
    pub fn peer_save(&self, entry: &PeerRecord) -> Result<(), StoreError> {
        self.peers.insert(entry.address().0, entry.encode()?)?;
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
    pub fn peers_all(&self) -> Result<Vec<PeerRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.peers.iter() {
            let (k, v) = item?;
            if k.len() != 32 {
                continue;
            }
            if let Some(e) = PeerRecord::decode(&v) {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// Replaces the stored anchors (at most [`MAX_ANCHORS`] are kept).
    pub fn anchors_save(&self, anchors: &[SignedRecord]) -> Result<(), StoreError> {
        let n = anchors.len().min(MAX_ANCHORS);
        self.peers
            .insert(ANCHORS_KEY, encode_anchors(&anchors[..n])?)?;
        Ok(())
    }

    /// The stored anchors (none if they do not decode).
    pub fn anchors(&self) -> Result<Vec<SignedRecord>, StoreError> {
        Ok(self
            .peers
            .get(ANCHORS_KEY)?
            .and_then(|v| decode_anchors(&v))
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Identity;

    #[test]
    fn put_keeps_the_meta_and_the_newest_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::test_util::open(dir.path());
        let id = Identity::generate();
        let now = unix_now();
        let old = SignedRecord::sign(&id, "127.0.9.2:1".parse().unwrap(), true, now - 10);
        let mut e = PeerRecord::learned(old.clone(), now);
        e.failures = 3;
        e.tried = true;
        store.peer_save(&e).unwrap();
        let newer = SignedRecord::sign(&id, "127.0.9.3:1".parse().unwrap(), true, now);
        store.peer_put(&old).unwrap();
        store.peer_put(&newer).unwrap();
        let all = store.peers_all().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(
            (all[0].failures, all[0].tried, &all[0].record),
            (3, true, &newer)
        );
        assert_eq!(store.peer_get(&id.address()).unwrap(), Some(newer));
        store.peer_remove(&id.address()).unwrap();
        assert!(store.peers_all().unwrap().is_empty());
    }

    #[test]
    fn anchors_round_trip_beside_the_book() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::test_util::open(dir.path());
        assert!(store.anchors().unwrap().is_empty());
        let recs: Vec<SignedRecord> = (0..2)
            .map(|i| {
                let listen = format!("127.0.9.{}:1", 2 + i).parse().unwrap();
                SignedRecord::sign(&Identity::generate(), listen, true, unix_now())
            })
            .collect();
        store.anchors_save(&recs).unwrap();
        assert_eq!(store.anchors().unwrap(), recs);
        assert!(
            store.peers_all().unwrap().is_empty(),
            "anchors are no entry"
        );
        let e = PeerRecord::learned(recs[0].clone(), 5);
        assert_eq!(PeerRecord::decode(&e.encode().unwrap()), Some(e));
        assert_eq!(PeerRecord::decode(&[1, 2, 3]), None);
    }
}
