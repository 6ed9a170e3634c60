//! End-to-end sealing of messages: HPKE (RFC 9180) in auth mode,
//! DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305.
//!
//! Auth mode binds the sender's X25519 key into the key schedule, so a
//! message that opens under `sender_kem` was sealed by the holder of that key;
//! the sealed letter also carries the sender's signed record, which ties that
//! key to an address and an IP. Relays see only ciphertext. The `aad` binds the
//! clear header a relay needs (message id, recipient), so it cannot be swapped.
//! Auth mode has no replay protection: the drop list is what stops replays.

use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as KemTrait, OpModeR, OpModeS, Serializable};
use serde::{Deserialize, Serialize};

use super::identity::Identity;

type Kem = X25519HkdfSha256;

/// HPKE `info`: names the protocol and version the key schedule belongs to.
pub const SEAL_INFO: &[u8] = b"hermes/1 message";
/// Bytes a sealed message adds to its plaintext: sender key, encapsulated key, tag.
pub const SEAL_OVERHEAD: usize = 32 + 32 + 16;

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

fn private_key(bytes: &[u8; 32]) -> Result<<Kem as KemTrait>::PrivateKey, SealError> {
    <Kem as KemTrait>::PrivateKey::from_bytes(bytes).map_err(|_| SealError::BadKey)
}

fn public_key(bytes: &[u8; 32]) -> Result<<Kem as KemTrait>::PublicKey, SealError> {
    <Kem as KemTrait>::PublicKey::from_bytes(bytes).map_err(|_| SealError::BadKey)
}

/// Seals `plaintext` to `recipient_kem`, authenticated as `sender`.
pub fn seal(
    sender: &Identity,
    recipient_kem: &[u8; 32],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Sealed, SealError> {
    let sk = private_key(sender.kem_secret())?;
    let pk = public_key(&sender.kem_public())?;
    let to = public_key(recipient_kem)?;
    let mode = OpModeS::<Kem>::Auth((sk, pk));
    let (enc, ciphertext) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, Kem>(
        &mode, &to, SEAL_INFO, plaintext, aad,
    )
    .map_err(|_| SealError::Seal)?;
    let mut enc_bytes = [0u8; 32];
    enc_bytes.copy_from_slice(enc.to_bytes().as_slice());
    Ok(Sealed {
        sender_kem: sender.kem_public(),
        enc: enc_bytes,
        ciphertext,
    })
}

/// Opens a message sealed to `recipient`; succeeds only if it was sealed by
/// the holder of `sealed.sender_kem` with the same `aad`.
pub fn open(recipient: &Identity, sealed: &Sealed, aad: &[u8]) -> Result<Vec<u8>, SealError> {
    let sk = private_key(recipient.kem_secret())?;
    let sender = public_key(&sealed.sender_kem).map_err(|_| SealError::Open)?;
    let enc =
        <Kem as KemTrait>::EncappedKey::from_bytes(&sealed.enc).map_err(|_| SealError::Open)?;
    let mode = OpModeR::<Kem>::Auth(sender);
    hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, Kem>(
        &mode,
        &sk,
        &enc,
        SEAL_INFO,
        &sealed.ciphertext,
        aad,
    )
    .map_err(|_| SealError::Open)
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
}
