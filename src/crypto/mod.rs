//! Keys, handshakes and sealing.
//!
//! Everything secret lives here: the node's long-term [`identity::Identity`]
//! and its rotating packet keys ([`keyring`]), the signed
//! [`record::SignedRecord`] that binds an address to a listen address, the
//! Noise link handshake ([`noise`]), end-to-end sealing of messages
//! ([`seal`]) and the onion packets relays peel ([`sphinx`]). Nothing in this
//! module knows about actors or the store.

pub mod identity;
pub mod keyring;
mod memo;
pub mod noise;
pub mod record;
pub mod seal;
pub mod sphinx;
pub mod static_dh;

pub use identity::{Address, Identity, IdentityError, ReceiptTokens};
pub use record::{AnnouncedKey, NodeRecord, RecordCell, RecordError, SignedRecord};

/// Seconds since the Unix epoch, by the local clock.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch, by the local clock.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
