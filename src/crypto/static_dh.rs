//! A bounded memory of X25519 results between this node's long-term key and
//! other nodes' long-term keys.
//!
//! HPKE in auth mode (see [`super::seal`]) needs two Diffie-Hellman results
//! per message: one with the sender's fresh ephemeral key, which changes every
//! time, and `DH(skS, pkR)` between the two long-term keys, which is the same
//! for every message between the same two nodes. Remembering the second saves
//! one of the two X25519 operations of every seal and every open, the largest
//! single CPU cost of a message at its two ends.
//!
//! The values are as secret as the key they come from: they live only in
//! memory, are wiped when dropped ([`Zeroizing`]), and are never logged. The
//! memory is bounded by two generations of [`STATIC_DH_GENERATION`] entries:
//! a lookup found in the older generation moves to the newer one, and when
//! the newer one is full the older is dropped whole. Only results of a
//! verified exchange are kept (a key this node sealed to, a sender whose
//! letter opened), so letters under made-up sender keys add nothing. A
//! sender that makes real keys and real letters can push entries out, at a
//! cost to it of two X25519 per letter; that only returns us to the two
//! X25519 per open of plain HPKE, never to a wrong result.

use std::sync::{Mutex, MutexGuard};

use zeroize::Zeroizing;

use super::memo::Memo;

/// Entries per generation; at most twice this many are kept (64 bytes plus a
/// map slot each: ~100 KiB in all).
pub const STATIC_DH_GENERATION: usize = 512;

type Secret = Zeroizing<[u8; 32]>;

/// The cache; one per [`super::Identity`].
pub struct StaticDhCache {
    inner: Mutex<Memo<Secret>>,
}

impl Default for StaticDhCache {
    fn default() -> StaticDhCache {
        StaticDhCache {
            inner: Mutex::new(Memo::new(STATIC_DH_GENERATION)),
        }
    }
}

impl StaticDhCache {
    fn lock(&self) -> MutexGuard<'_, Memo<Secret>> {
        // A panic while holding the lock leaves at worst a missing entry.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The remembered result with `peer`, if any.
    pub fn get(&self, peer: &[u8; 32]) -> Option<Secret> {
        self.lock().get(peer)
    }

    /// Remembers the result with `peer`.
    pub fn insert(&self, peer: [u8; 32], value: Secret) {
        self.lock().insert(peer, value);
    }

    /// Entries held now (both generations).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: usize) -> [u8; 32] {
        let mut k = [0u8; 32];
        k[..8].copy_from_slice(&(i as u64).to_le_bytes());
        k
    }

    #[test]
    fn bounded_and_keeps_what_is_used() {
        let c = StaticDhCache::default();
        for i in 0..STATIC_DH_GENERATION * 5 {
            c.insert(key(i), Zeroizing::new([i as u8; 32]));
            // Key 0 is looked up all along: it is never dropped.
            assert_eq!(c.get(&key(0)).map(|v| v[0]), Some(0), "at {i}");
            assert!(c.len() <= 2 * STATIC_DH_GENERATION);
        }
        // A key inserted long ago and never used again is gone.
        assert!(c.get(&key(1)).is_none());
        // The most recent ones are there.
        let last = STATIC_DH_GENERATION * 5 - 1;
        assert_eq!(c.get(&key(last)).map(|v| v[0]), Some(last as u8));
    }
}
