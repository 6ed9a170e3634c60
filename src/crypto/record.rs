//! Signed node records.
//!
//! A record says "the node with this address listens here, has this X25519
//! key, and does (not) relay", signed by the address's own key, so no one can
//! announce an address or IP for another node's identity. Records are the
//! first frame each side sends on a link and what the address book stores.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::identity::{verify, Address, Identity};

const RECORD_DOMAIN: &[u8] = b"hermes/record/1\0";

/// How far in the future a record's time may be before it is refused.
pub const MAX_CLOCK_SKEW_SECS: u64 = 600;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub address: Address,
    /// X25519 key: the Noise static key of the node's links, and its HPKE key.
    pub kem_key: [u8; 32],
    pub listen: SocketAddr,
    pub relay: bool,
    /// Seconds since the Unix epoch when the record was signed.
    pub time: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRecord {
    pub record: NodeRecord,
    #[serde(with = "serde_bytes")]
    pub signature: [u8; 64],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("record signature does not verify")]
    BadSignature,
    #[error("record time is {0} s in the future")]
    FromTheFuture(u64),
    #[error("record cannot be encoded")]
    Encoding,
}

fn signed_bytes(record: &NodeRecord) -> Result<Vec<u8>, RecordError> {
    postcard::to_stdvec(record).map_err(|_| RecordError::Encoding)
}

impl SignedRecord {
    pub fn sign(identity: &Identity, listen: SocketAddr, relay: bool, time: u64) -> SignedRecord {
        let record = NodeRecord {
            address: identity.address(),
            kem_key: identity.kem_public(),
            listen,
            relay,
            time,
        };
        // A plain struct of fixed-size fields always encodes.
        let bytes = signed_bytes(&record).unwrap_or_default();
        let signature = identity.sign(RECORD_DOMAIN, &bytes);
        SignedRecord { record, signature }
    }

    /// Checks the signature, and that the record was not signed in the future.
    pub fn verify(&self, now: u64) -> Result<(), RecordError> {
        let bytes = signed_bytes(&self.record)?;
        if !verify(&self.record.address, RECORD_DOMAIN, &bytes, &self.signature) {
            return Err(RecordError::BadSignature);
        }
        if self.record.time > now + MAX_CLOCK_SKEW_SECS {
            return Err(RecordError::FromTheFuture(self.record.time - now));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::unix_now;

    fn record() -> (Identity, SignedRecord) {
        let id = Identity::generate();
        let rec = SignedRecord::sign(&id, "127.0.0.2:58008".parse().unwrap(), true, unix_now());
        (id, rec)
    }

    #[test]
    fn valid_record_verifies() {
        let (_, rec) = record();
        assert_eq!(rec.verify(unix_now()), Ok(()));
    }

    #[test]
    fn any_change_breaks_the_signature() {
        let (_, rec) = record();
        let mut r = rec.clone();
        r.record.listen = "127.0.0.9:58008".parse().unwrap();
        assert_eq!(r.verify(unix_now()), Err(RecordError::BadSignature));
        let mut r = rec.clone();
        r.record.relay = false;
        assert_eq!(r.verify(unix_now()), Err(RecordError::BadSignature));
        let mut r = rec.clone();
        r.record.kem_key[0] ^= 1;
        assert_eq!(r.verify(unix_now()), Err(RecordError::BadSignature));
        // Another node cannot claim this address.
        let (other, _) = record();
        let mut r = SignedRecord::sign(&other, rec.record.listen, true, unix_now());
        r.record.address = rec.record.address;
        assert_eq!(r.verify(unix_now()), Err(RecordError::BadSignature));
    }

    #[test]
    fn future_record_refused() {
        let id = Identity::generate();
        let now = unix_now();
        let rec = SignedRecord::sign(&id, "127.0.0.2:1".parse().unwrap(), true, now + 3600);
        assert!(matches!(
            rec.verify(now),
            Err(RecordError::FromTheFuture(_))
        ));
    }
}
