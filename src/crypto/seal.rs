//! End-to-end sealing of messages: HPKE (RFC 9180) in auth mode,
//! DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305, single shot.
//!
//! Auth mode binds the sender's X25519 key into the key schedule, so a
//! message that opens under `sender_kem` was sealed by the holder of that key;
//! the sealed letter also carries the sender's signed record, which ties that
//! key to an address and an IP. Relays see only ciphertext. The `aad` binds the
//! clear header a relay needs (message id, recipient), so it cannot be swapped.
//! Auth mode has no replay protection: the drop list is what stops replays.
//!
//! The construction is RFC 9180's, byte for byte (the tests seal here and
//! open with the `hpke` crate, and the other way round), but built from its
//! parts, x25519-dalek, `hkdf` and `chacha20poly1305`, rather than through the
//! `hpke` crate, for one reason: half of the KEM's work, `DH(skS, pkR)`
//! between the two long-term keys, is the same for every message between two
//! nodes. The [`Identity`] remembers it (`static_dh.rs`, bounded), so a seal
//! or an open costs one X25519 instead of two.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};
use sha2_v11::Sha256;
use std::sync::OnceLock;
use zeroize::Zeroizing;

use super::identity::Identity;

/// HPKE `info`: names the protocol and version the key schedule belongs to.
pub const SEAL_INFO: &[u8] = b"hermes/1 message";
/// Bytes a sealed message adds to its plaintext: sender key, encapsulated key, tag.
pub const SEAL_OVERHEAD: usize = 32 + 32 + 16;

/// RFC 9180 §7: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20Poly1305.
const KEM_SUITE: &[u8] = b"KEM\x00\x20";
const HPKE_SUITE: &[u8] = b"HPKE\x00\x20\x00\x01\x00\x03";
/// RFC 9180 §5.1: `mode_auth`.
const MODE_AUTH: u8 = 0x02;
const VERSION_LABEL: &[u8] = b"HPKE-v1";

/// A sealed message as it travels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// The sender's X25519 key, needed to open in auth mode.
    pub sender_kem: [u8; 32],
    /// HPKE encapsulated key.
    pub enc: [u8; 32],
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("recipient key is not a valid X25519 key")]
    BadKey,
    #[error("sealing failed")]
    Seal,
    #[error("message does not open: not for us, altered, or not from the key it names")]
    Open,
}

type Hkdf = hkdf::Hkdf<Sha256>;

/// RFC 9180 §4: `LabeledExtract(salt, label, ikm)`, as the PRK's bytes and
/// as an expander over it.
fn labeled_extract(suite: &[u8], salt: &[u8], label: &[u8], ikm: &[&[u8]]) -> ([u8; 32], Hkdf) {
    let mut ex = hkdf::HkdfExtract::<Sha256>::new(Some(salt));
    for part in [VERSION_LABEL, suite, label].iter().chain(ikm) {
        ex.input_ikm(part);
    }
    let (prk, hkdf) = ex.finalize();
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(&prk);
    (bytes, hkdf)
}

/// RFC 9180 §4: `LabeledExpand(prk, label, info, L)`, for an `info` of at
/// most 3 parts and L ≤ 255 × 32.
fn labeled_expand(prk: &Hkdf, suite: &[u8], label: &[u8], info: &[&[u8]], out: &mut [u8]) {
    let len = (out.len() as u16).to_be_bytes();
    let mut parts: [&[u8]; 7] = [&len, VERSION_LABEL, suite, label, &[], &[], &[]];
    debug_assert!(info.len() <= 3, "labeled_expand takes at most 3 info parts");
    let n = 4 + info.len().min(3);
    parts[4..n].copy_from_slice(&info[..n - 4]);
    // Only fails for an output longer than 255 blocks; ours are 12 to 32 bytes.
    let _ = prk.expand_multi_info(&parts[..n], out);
}

/// `key_schedule_context` of RFC 9180 §5.1 for auth mode, no PSK and
/// [`SEAL_INFO`]: the same for every message, so made once.
fn schedule_context() -> &'static [u8; 65] {
    static CONTEXT: OnceLock<[u8; 65]> = OnceLock::new();
    CONTEXT.get_or_init(|| {
        let mut ctx = [0u8; 65];
        ctx[0] = MODE_AUTH;
        ctx[1..33].copy_from_slice(&labeled_extract(HPKE_SUITE, b"", b"psk_id_hash", &[]).0);
        ctx[33..].copy_from_slice(&labeled_extract(HPKE_SUITE, b"", b"info_hash", &[SEAL_INFO]).0);
        ctx
    })
}

/// RFC 9180 §4.1 `ExtractAndExpand` and §5.1 `KeySchedule`: the AEAD key and
/// nonce from the two DH results and `enc || pkR || pkS`.
fn key_and_nonce(
    dh_eph: &[u8; 32],
    dh_static: &[u8; 32],
    enc: &[u8; 32],
    pk_r: &[u8; 32],
    pk_s: &[u8; 32],
) -> (Zeroizing<[u8; 32]>, [u8; 12]) {
    let (_, eae_prk) = labeled_extract(KEM_SUITE, b"", b"eae_prk", &[dh_eph, dh_static]);
    let mut shared = Zeroizing::new([0u8; 32]);
    labeled_expand(
        &eae_prk,
        KEM_SUITE,
        b"shared_secret",
        &[enc, pk_r, pk_s],
        &mut shared[..],
    );
    let (_, secret) = labeled_extract(HPKE_SUITE, &shared[..], b"secret", &[]);
    let ctx = schedule_context();
    let mut key = Zeroizing::new([0u8; 32]);
    labeled_expand(&secret, HPKE_SUITE, b"key", &[ctx], &mut key[..]);
    let mut nonce = [0u8; 12];
    // Single shot: sequence number 0, so the nonce is the base nonce.
    labeled_expand(&secret, HPKE_SUITE, b"base_nonce", &[ctx], &mut nonce);
    (key, nonce)
}

/// Seals `plaintext` to `recipient_kem`, authenticated as `sender`.
pub fn seal(
    sender: &Identity,
    recipient_kem: &[u8; 32],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Sealed, SealError> {
    let eph = x25519_dalek::EphemeralSecret::random_from_rng(OsRng);
    let enc = x25519_dalek::PublicKey::from(&eph).to_bytes();
    let dh_eph = eph.diffie_hellman(&x25519_dalek::PublicKey::from(*recipient_kem));
    if !dh_eph.was_contributory() {
        return Err(SealError::BadKey);
    }
    let (dh_static, remembered) = sender.static_dh(recipient_kem).ok_or(SealError::BadKey)?;
    let (key, nonce) = key_and_nonce(
        dh_eph.as_bytes(),
        &dh_static,
        &enc,
        recipient_kem,
        &sender.kem_public(),
    );
    let ciphertext = ChaCha20Poly1305::new(Key::from_slice(&key[..]))
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| SealError::Seal)?;
    if !remembered {
        sender.remember_static_dh(*recipient_kem, dh_static);
    }
    Ok(Sealed {
        sender_kem: sender.kem_public(),
        enc,
        ciphertext,
    })
}

/// Opens a message sealed to `recipient`; succeeds only if it was sealed by
/// the holder of `sealed.sender_kem` with the same `aad`.
pub fn open(recipient: &Identity, sealed: &Sealed, aad: &[u8]) -> Result<Vec<u8>, SealError> {
    let dh_eph = recipient.dh(&sealed.enc).ok_or(SealError::Open)?;
    let (dh_static, remembered) = recipient
        .static_dh(&sealed.sender_kem)
        .ok_or(SealError::Open)?;
    let (key, nonce) = key_and_nonce(
        &dh_eph,
        &dh_static,
        &sealed.enc,
        &recipient.kem_public(),
        &sealed.sender_kem,
    );
    let plain = ChaCha20Poly1305::new(Key::from_slice(&key[..]))
        .decrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &sealed.ciphertext,
                aad,
            },
        )
        .map_err(|_| SealError::Open)?;
    // Remembered only now that the letter proved the sender holds its key.
    if !remembered {
        recipient.remember_static_dh(sealed.sender_kem, dh_static);
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let alice = Identity::generate();
        let bob = Identity::generate();
        let eve = Identity::generate();
        let sealed = seal(&alice, &bob.kem_public(), b"hdr", b"hello bob").unwrap();
        assert_eq!(sealed.ciphertext.len(), b"hello bob".len() + 16);
        assert_eq!(open(&bob, &sealed, b"hdr").unwrap(), b"hello bob");
        // Wrong recipient, wrong header, altered ciphertext, forged sender.
        assert_eq!(open(&eve, &sealed, b"hdr"), Err(SealError::Open));
        assert_eq!(open(&bob, &sealed, b"hdx"), Err(SealError::Open));
        let mut s = sealed.clone();
        s.ciphertext[0] ^= 1;
        assert_eq!(open(&bob, &s, b"hdr"), Err(SealError::Open));
        let mut s = sealed.clone();
        s.sender_kem = eve.kem_public();
        assert_eq!(open(&bob, &s, b"hdr"), Err(SealError::Open));
    }

    use hpke::aead::ChaCha20Poly1305 as HpkeAead;
    use hpke::kdf::HkdfSha256;
    use hpke::kem::X25519HkdfSha256 as HpkeKem;
    use hpke::{Deserializable, OpModeR, OpModeS, Serializable};
    use proptest::prelude::*;

    type Sk = <HpkeKem as hpke::Kem>::PrivateKey;
    type Pk = <HpkeKem as hpke::Kem>::PublicKey;

    /// The `hpke` crate's auth-mode seal, as the reference.
    fn reference_seal(from: &Identity, to: &[u8; 32], aad: &[u8], pt: &[u8]) -> Sealed {
        let sk = Sk::from_bytes(from.kem_secret()).unwrap();
        let pk = Pk::from_bytes(&from.kem_public()).unwrap();
        let mode = OpModeS::<HpkeKem>::Auth((sk, pk));
        let (enc, ciphertext) = hpke::single_shot_seal::<HpkeAead, HkdfSha256, HpkeKem>(
            &mode,
            &Pk::from_bytes(to).unwrap(),
            SEAL_INFO,
            pt,
            aad,
        )
        .unwrap();
        let mut e = [0u8; 32];
        e.copy_from_slice(enc.to_bytes().as_slice());
        Sealed {
            sender_kem: from.kem_public(),
            enc: e,
            ciphertext,
        }
    }

    /// The `hpke` crate's auth-mode open.
    fn reference_open(to: &Identity, sealed: &Sealed, aad: &[u8]) -> Option<Vec<u8>> {
        let mode = OpModeR::<HpkeKem>::Auth(Pk::from_bytes(&sealed.sender_kem).unwrap());
        let enc = <HpkeKem as hpke::Kem>::EncappedKey::from_bytes(&sealed.enc).unwrap();
        hpke::single_shot_open::<HpkeAead, HkdfSha256, HpkeKem>(
            &mode,
            &Sk::from_bytes(to.kem_secret()).unwrap(),
            &enc,
            SEAL_INFO,
            &sealed.ciphertext,
            aad,
        )
        .ok()
    }

    #[test]
    fn remembered_static_dh_gives_the_same_letters() {
        let alice = Identity::generate();
        let bob = Identity::generate();
        assert_eq!(alice.static_dh_len(), 0);
        for i in 0..3 {
            // The first seal computes DH(skA, pkB), the later ones remember it.
            let s = seal(&alice, &bob.kem_public(), b"h", b"hi").unwrap();
            assert_eq!(alice.static_dh_len(), 1);
            assert_eq!(
                reference_open(&bob, &s, b"h").as_deref(),
                Some(&b"hi"[..]),
                "{i}"
            );
            assert_eq!(open(&bob, &s, b"h").unwrap(), b"hi");
            assert_eq!(bob.static_dh_len(), 1);
        }
    }

    #[test]
    fn a_letter_that_does_not_open_is_not_remembered() {
        let alice = Identity::generate();
        let bob = Identity::generate();
        let eve = Identity::generate();
        let mut s = seal(&alice, &bob.kem_public(), b"h", b"hi").unwrap();
        s.sender_kem = eve.kem_public();
        assert_eq!(open(&bob, &s, b"h"), Err(SealError::Open));
        assert_eq!(bob.static_dh_len(), 0);
    }

    #[test]
    fn low_order_keys_are_refused() {
        let alice = Identity::generate();
        let bob = Identity::generate();
        // 0 and 1 are points of small order: their DH is all zero.
        for bad in [[0u8; 32], {
            let mut k = [0u8; 32];
            k[0] = 1;
            k
        }] {
            assert_eq!(seal(&alice, &bad, b"h", b"hi"), Err(SealError::BadKey));
            let mut s = seal(&alice, &bob.kem_public(), b"h", b"hi").unwrap();
            s.enc = bad;
            assert_eq!(open(&bob, &s, b"h"), Err(SealError::Open));
            let mut s = seal(&alice, &bob.kem_public(), b"h", b"hi").unwrap();
            s.sender_kem = bad;
            assert_eq!(open(&bob, &s, b"h"), Err(SealError::Open));
        }
        assert_eq!(alice.static_dh_len(), 1);
        assert_eq!(bob.static_dh_len(), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// RFC 9180 byte for byte: what this module seals the `hpke` crate
        /// opens, and the other way round, for any keys, header and text.
        #[test]
        fn interoperates_with_the_hpke_crate(
            aad in proptest::collection::vec(any::<u8>(), 0..80),
            pt in proptest::collection::vec(any::<u8>(), 0..3000),
            flip in any::<usize>(),
        ) {
            let alice = Identity::generate();
            let bob = Identity::generate();
            let ours = seal(&alice, &bob.kem_public(), &aad, &pt).unwrap();
            prop_assert_eq!(ours.ciphertext.len(), pt.len() + 16);
            prop_assert_eq!(reference_open(&bob, &ours, &aad), Some(pt.clone()));
            let theirs = reference_seal(&alice, &bob.kem_public(), &aad, &pt);
            prop_assert_eq!(open(&bob, &theirs, &aad), Ok(pt.clone()));
            // And an altered byte anywhere fails both ways.
            let mut bad = theirs.clone();
            let i = flip % bad.ciphertext.len();
            bad.ciphertext[i] ^= 0x40;
            prop_assert_eq!(open(&bob, &bad, &aad), Err(SealError::Open));
            prop_assert_eq!(reference_open(&bob, &bad, &aad), None);
        }
    }
}
