//! The address book: the newest verified signed record of each node known.
//!
//! Records come from link handshakes (and, later, peer exchange). The caller
//! verifies a record before storing it; this module keeps only the newest
//! per address.

use std::net::IpAddr;

use super::{Store, StoreError};
use crate::crypto::{Address, SignedRecord};

/// Most records the address book keeps.
pub const MAX_PEERS: usize = 4096;

impl Store {
    /// Stores a verified record if it is newer than the one held.
    pub fn peer_put(&self, rec: &SignedRecord) -> Result<(), StoreError> {
        let key = rec.record.address.0;
        if let Some(old) = self.peers.get(key)? {
            if let Ok(old) = postcard::from_bytes::<SignedRecord>(&old) {
                if old.record.time > rec.record.time {
                    return Ok(());
                }
            }
        } else if self.peers.len() >= MAX_PEERS {
            return Ok(());
        }
        self.peers.insert(key, postcard::to_stdvec(rec)?)?;
        Ok(())
    }

    pub fn peer_get(&self, address: &Address) -> Result<Option<SignedRecord>, StoreError> {
        match self.peers.get(address.0)? {
            Some(v) => Ok(Some(postcard::from_bytes(&v)?)),
            None => Ok(None),
        }
    }

    /// The newest record whose listen address has this IP (and port, if given).
    pub fn peer_by_ip(
        &self,
        ip: IpAddr,
        port: Option<u16>,
    ) -> Result<Option<SignedRecord>, StoreError> {
        let mut best: Option<SignedRecord> = None;
        for rec in self.peers_all()? {
            let l = rec.record.listen;
            if l.ip() == ip
                && port.is_none_or(|p| p == l.port())
                && best
                    .as_ref()
                    .is_none_or(|b| b.record.time < rec.record.time)
            {
                best = Some(rec);
            }
        }
        Ok(best)
    }

    pub fn peers_all(&self) -> Result<Vec<SignedRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.peers.iter() {
            let (_, v) = item?;
            out.push(postcard::from_bytes(&v)?);
        }
        Ok(out)
    }
}
