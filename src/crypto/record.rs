//! Signed node records.
//!
//! A record says "the node with this address listens here, has this X25519
//! key, and does (not) relay", signed by the address's own key, so no one can
//! announce an address or IP for another node's identity. Records are the
//! first frame each side sends on a link and what the address book stores.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::identity::{verify, Address, Identity};

const RECORD_DOMAIN: &[u8] = b"hermes/record/2\0";

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
    /// The node's current medium-term packet key (onion routing), with its
    /// validity window; `None` from a node that announces none.
    pub packet_key: Option<AnnouncedKey>,
}

/// A medium-term X25519 packet key as a node announces it: relays peel with
/// it and senders wrap to it. Valid from `not_before` to `not_after`
/// (seconds since the Unix epoch); the node still opens packets to it for
/// its grace period after that, then deletes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnouncedKey {
    pub epoch: u64,
    pub public: [u8; 32],
    pub not_before: u64,
    pub not_after: u64,
}

impl AnnouncedKey {
    /// Whether senders may wrap to it at `now`.
    pub fn valid_at(&self, now: u64) -> bool {
        self.not_before <= now.saturating_add(MAX_CLOCK_SKEW_SECS) && now < self.not_after
    }
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
        Self::sign_with_key(identity, listen, relay, time, None)
    }

    /// [`SignedRecord::sign`], announcing a packet key.
    pub fn sign_with_key(
        identity: &Identity,
        listen: SocketAddr,
        relay: bool,
        time: u64,
        packet_key: Option<AnnouncedKey>,
    ) -> SignedRecord {
        let record = NodeRecord {
            address: identity.address(),
            kem_key: identity.kem_public(),
            listen,
            relay,
            time,
            packet_key,
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

/// The node's own signed record as the running daemon shares it: every
/// actor holds a clone of the cell and reads the record when it needs it (a
/// new link's first frame, a letter's sender), so a record re-signed at run
/// time (a new packet key) is what the next link and letter carry.
///
/// Readers get an `Arc` of the record in force; [`RecordCell::set`] swaps
/// it. A poisoned lock (a panic while swapping an `Arc`) still holds a whole
/// record, so it is read through.
#[derive(Clone, Debug)]
pub struct RecordCell(std::sync::Arc<std::sync::RwLock<std::sync::Arc<SignedRecord>>>);

impl RecordCell {
    pub fn new(record: SignedRecord) -> RecordCell {
        RecordCell(std::sync::Arc::new(std::sync::RwLock::new(
            std::sync::Arc::new(record),
        )))
    }

    /// The record in force.
    pub fn get(&self) -> std::sync::Arc<SignedRecord> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the record for every holder of the cell.
    pub fn set(&self, record: SignedRecord) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = std::sync::Arc::new(record);
    }
}

/// Most verified records remembered by [`SignedRecord::verify_cached`].
pub const VERIFIED_CACHE: usize = 4096;

/// Digests of records whose signature verified, oldest first out.
struct Verified {
    set: std::collections::HashSet<[u8; 32]>,
    order: std::collections::VecDeque<[u8; 32]>,
}

fn verified() -> &'static std::sync::Mutex<Verified> {
    static V: std::sync::OnceLock<std::sync::Mutex<Verified>> = std::sync::OnceLock::new();
    V.get_or_init(|| {
        std::sync::Mutex::new(Verified {
            set: Default::default(),
            order: Default::default(),
        })
    })
}

impl SignedRecord {
    /// [`SignedRecord::verify`], with the signature checked once per record
    /// (every letter carries its sender's record; a busy sender's is the same
    /// record for hours): a record is remembered, by a digest of its signed
    /// bytes and signature, once it verified. The clock check runs every time.
    pub fn verify_cached(&self, now: u64) -> Result<(), RecordError> {
        use sha2::{Digest, Sha256};
        let bytes = signed_bytes(&self.record)?;
        let mut h = Sha256::new();
        h.update(&bytes);
        h.update(self.signature);
        let key: [u8; 32] = h.finalize().into();
        let known = verified()
            .lock()
            .map(|v| v.set.contains(&key))
            .unwrap_or(false);
        if !known {
            if !verify(&self.record.address, RECORD_DOMAIN, &bytes, &self.signature) {
                return Err(RecordError::BadSignature);
            }
            if let Ok(mut v) = verified().lock() {
                if v.set.len() >= VERIFIED_CACHE {
                    if let Some(old) = v.order.pop_front() {
                        v.set.remove(&old);
                    }
                }
                if v.set.insert(key) {
                    v.order.push_back(key);
                }
            }
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

    #[test]
    fn a_record_cell_set_is_seen_by_every_clone() {
        let id = Identity::generate();
        let listen = "127.0.0.9:1".parse().unwrap();
        let first = SignedRecord::sign(&id, listen, true, 100);
        let cell = RecordCell::new(first.clone());
        let other = cell.clone();
        let held = other.get();
        assert_eq!(*held, first);
        let key = AnnouncedKey {
            epoch: 2,
            public: [7; 32],
            not_before: 100,
            not_after: 200,
        };
        let second = SignedRecord::sign_with_key(&id, listen, true, 101, Some(key));
        cell.set(second.clone());
        assert_eq!(*other.get(), second);
        assert_eq!(*cell.get(), second);
        // A reader that took the record before keeps a whole one.
        assert_eq!(*held, first);
        let from_thread = {
            let c = cell.clone();
            std::thread::spawn(move || c.get().record.packet_key)
                .join()
                .unwrap()
        };
        assert_eq!(from_thread, Some(key));
    }

    #[test]
    fn cached_verification_still_refuses_forgeries_and_future_records() {
        let id = Identity::generate();
        let now = crate::crypto::unix_now();
        let rec = SignedRecord::sign(&id, "127.0.0.9:1".parse().unwrap(), true, now);
        assert_eq!(rec.verify_cached(now), Ok(()));
        assert_eq!(rec.verify_cached(now), Ok(()), "and again, from the cache");
        let mut forged = rec.clone();
        forged.record.relay = false;
        assert_eq!(forged.verify_cached(now), Err(RecordError::BadSignature));
        let mut bad_sig = rec.clone();
        bad_sig.signature[0] ^= 1;
        assert_eq!(bad_sig.verify_cached(now), Err(RecordError::BadSignature));
        // A cached record is still judged by the clock.
        assert!(matches!(
            rec.verify_cached(now - MAX_CLOCK_SKEW_SECS - 10),
            Err(RecordError::FromTheFuture(_))
        ));
    }
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
