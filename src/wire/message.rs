//! What is inside a sealed message: the letter.
//!
//! Only the recipient ever sees a [`Letter`]. It carries the sender's signed
//! record so the recipient learns who sent it and from which IP, from data no
//! relay could alter, and everything that decides whether and for how long it
//! is accepted: its id, its recipient, when it was sent and when it expires.
//! The clear header a relay needs (id, recipient, expiry) is also bound as
//! the seal's additional data ([`seal_aad`]), so a relay that changes any of
//! it makes the letter unopenable; the fields a relay may change (hops left,
//! attempt) are in neither and decide nothing about acceptance.

use serde::{Deserialize, Serialize};

use super::{decode_limited, encode_limited, MessageId, WireError};
use crate::crypto::seal::SEAL_OVERHEAD;
use crate::crypto::{Address, SignedRecord};

/// Largest message text a user can send, in bytes of UTF-8.
pub const MAX_TEXT_BYTES: usize = 60_000;
/// Largest encoded letter: the text plus room for the record and header.
pub const MAX_LETTER_BYTES: usize = MAX_TEXT_BYTES + 512;
/// Largest sealed letter.
pub const MAX_SEALED_BYTES: usize = MAX_LETTER_BYTES + SEAL_OVERHEAD;
/// Version 2 binds the recipient, the sent time and the expiry (version 1
/// bound only the id and recipient, and carried no expiry).
pub const LETTER_VERSION: u8 = 2;
/// Domain of the seal's additional data.
const AAD_DOMAIN: &[u8; 16] = b"hermes/letter/2\0";
/// Bytes of [`seal_aad`]: domain, id, recipient, expiry.
pub const AAD_LEN: usize = 16 + 16 + 32 + 8;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Letter {
    pub version: u8,
    pub id: MessageId,
    /// Who it is for: must be the node that opens it.
    pub recipient: Address,
    pub sender: SignedRecord,
    /// Milliseconds since the Unix epoch, by the sender's clock.
    pub sent_ms: u64,
    /// Seconds since the Unix epoch after which the sender gives up on it.
    pub expires_at: u64,
    pub text: String,
}

impl Letter {
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        if self.text.len() > MAX_TEXT_BYTES {
            return Err(WireError::Limit("message text too long"));
        }
        encode_limited(self, MAX_LETTER_BYTES)
    }

    pub fn decode(bytes: &[u8]) -> Result<Letter, WireError> {
        let letter: Letter = decode_limited(bytes, MAX_LETTER_BYTES)?;
        if letter.version != LETTER_VERSION {
            return Err(WireError::Version(letter.version));
        }
        if letter.text.len() > MAX_TEXT_BYTES {
            return Err(WireError::Limit("message text too long"));
        }
        Ok(letter)
    }
}

/// The additional data a sealed letter is bound to: its id, recipient and
/// expiry, as they travel in the clear.
pub fn seal_aad(id: &MessageId, recipient: &Address, expires_at: u64) -> [u8; AAD_LEN] {
    let mut aad = [0u8; AAD_LEN];
    aad[..16].copy_from_slice(AAD_DOMAIN);
    aad[16..32].copy_from_slice(&id.0);
    aad[32..64].copy_from_slice(&recipient.0);
    aad[64..].copy_from_slice(&expires_at.to_be_bytes());
    aad
}
