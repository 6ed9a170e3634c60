//! What is inside a sealed message: the letter.
//!
//! Only the recipient ever sees a [`Letter`]. It carries the sender's signed
//! record so the recipient learns who sent it and from which IP, from data no
//! relay could alter.

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
pub const LETTER_VERSION: u8 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Letter {
    pub version: u8,
    pub id: MessageId,
    pub sender: SignedRecord,
    /// Milliseconds since the Unix epoch, by the sender's clock.
    pub sent_ms: u64,
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

/// The additional data a sealed letter is bound to: its id and recipient, as
/// they travel in the clear.
pub fn seal_aad(id: &MessageId, recipient: &Address) -> [u8; 48] {
    let mut aad = [0u8; 48];
    aad[..16].copy_from_slice(&id.0);
    aad[16..].copy_from_slice(&recipient.0);
    aad
}
