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

use super::{encode_limited, MessageId, WireError};
use crate::crypto::seal::SEAL_OVERHEAD;
use crate::crypto::{Address, SignedRecord};

/// Largest message text a user can send, in bytes of UTF-8.
pub const MAX_TEXT_BYTES: usize = 60_000;
/// Largest encoded letter: the text plus room for the record and header.
pub const MAX_LETTER_BYTES: usize = MAX_TEXT_BYTES + 512;
/// Largest sealed letter.
pub const MAX_SEALED_BYTES: usize = MAX_LETTER_BYTES + SEAL_OVERHEAD;
/// Version 3 carries the receipt token; version 2 (still read, for letters
/// sealed before it and waiting in outboxes) had none. Version 2 bound the
/// recipient, the sent time and the expiry (version 1 bound only the id and
/// recipient, and carried no expiry).
pub const LETTER_VERSION: u8 = 3;
/// The letter version before the receipt token, still read.
pub const LETTER_VERSION_NO_TOKEN: u8 = 2;
/// Domain of the seal's additional data (the same for versions 2 and 3: the
/// version itself is inside the sealed letter).
const AAD_DOMAIN: &[u8; 16] = b"hermes/letter/2\0";
/// Bytes of [`seal_aad`]: domain, id, recipient, expiry.
pub const AAD_LEN: usize = 16 + 16 + 32 + 8;

#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// What the receipt gives back to prove delivery to the sender
    /// (`Identity::receipt_token`): in every version-3 letter, in none of
    /// version 2.
    pub receipt_token: Option<[u8; 32]>,
}

/// A letter's fields as postcard writes them, in order, borrowed; a
/// version-3 letter is this and then its 32-byte token (a tuple: postcard
/// writes a tuple's parts one after the other, as a struct's fields).
#[derive(Serialize)]
struct WireOut<'a> {
    version: u8,
    id: &'a MessageId,
    recipient: &'a Address,
    sender: &'a SignedRecord,
    sent_ms: u64,
    expires_at: u64,
    text: &'a str,
}

/// The same fields, owned, as read back; a version-3 letter has its token
/// after them.
#[derive(Deserialize)]
struct WireIn {
    version: u8,
    id: MessageId,
    recipient: Address,
    sender: SignedRecord,
    sent_ms: u64,
    expires_at: u64,
    text: String,
}

impl Letter {
    /// A version-3 letter encodes with its token, a version-2 one without;
    /// any other pairing is refused.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        if self.text.len() > MAX_TEXT_BYTES {
            return Err(WireError::Limit("message text too long"));
        }
        match (self.version, &self.receipt_token) {
            (LETTER_VERSION, Some(_)) | (LETTER_VERSION_NO_TOKEN, None) => {}
            (LETTER_VERSION, None) => {
                return Err(WireError::Limit("letter without its receipt token"))
            }
            (v, _) => return Err(WireError::Version(v)),
        }
        let fields = WireOut {
            version: self.version,
            id: &self.id,
            recipient: &self.recipient,
            sender: &self.sender,
            sent_ms: self.sent_ms,
            expires_at: self.expires_at,
            text: &self.text,
        };
        match &self.receipt_token {
            Some(receipt_token) => encode_limited(&(fields, receipt_token), MAX_LETTER_BYTES),
            None => encode_limited(&fields, MAX_LETTER_BYTES),
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Letter, WireError> {
        if bytes.len() > MAX_LETTER_BYTES {
            return Err(WireError::TooLarge {
                size: bytes.len(),
                limit: MAX_LETTER_BYTES,
            });
        }
        // The version is the first byte (a u8 is one byte in postcard).
        match bytes.first() {
            Some(&(LETTER_VERSION | LETTER_VERSION_NO_TOKEN)) => {}
            Some(&v) => return Err(WireError::Version(v)),
            None => return Err(WireError::Malformed),
        }
        let (w, rest) =
            postcard::take_from_bytes::<WireIn>(bytes).map_err(|_| WireError::Malformed)?;
        // Version 3: exactly its 32-byte token follows; version 2: nothing.
        let receipt_token = match (w.version, rest.len()) {
            (LETTER_VERSION, 32) => rest.try_into().ok(),
            (LETTER_VERSION, n) if n < 32 => return Err(WireError::Malformed),
            (LETTER_VERSION, n) => return Err(WireError::Trailing(n - 32)),
            (_, 0) => None,
            (_, n) => return Err(WireError::Trailing(n)),
        };
        let letter = Letter {
            version: w.version,
            id: w.id,
            recipient: w.recipient,
            sender: w.sender,
            sent_ms: w.sent_ms,
            expires_at: w.expires_at,
            text: w.text,
            receipt_token,
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{unix_now, Identity};

    fn letter(version: u8, receipt_token: Option<[u8; 32]>) -> Letter {
        let alice = Identity::generate();
        Letter {
            version,
            id: MessageId([4; 16]),
            recipient: Identity::generate().address(),
            sender: SignedRecord::sign(
                &alice,
                "127.0.0.2:58008".parse().unwrap(),
                true,
                unix_now(),
            ),
            sent_ms: 1_800_000_000_000,
            expires_at: 1_800_000_600,
            text: "hello".into(),
            receipt_token,
        }
    }

    /// A version-2 letter as it was written before receipt tokens.
    #[derive(Serialize)]
    struct LetterV2 {
        version: u8,
        id: MessageId,
        recipient: Address,
        sender: SignedRecord,
        sent_ms: u64,
        expires_at: u64,
        text: String,
    }

    #[test]
    fn version_3_carries_its_token_and_version_2_is_still_read() {
        let v3 = letter(LETTER_VERSION, Some([8; 32]));
        let bytes = v3.encode().unwrap();
        assert_eq!(&bytes[bytes.len() - 32..], &[8; 32]);
        assert_eq!(Letter::decode(&bytes).unwrap(), v3);
        // The bytes of a letter sealed before tokens (waiting in an outbox
        // through the upgrade) open to a letter without one.
        let v2 = letter(LETTER_VERSION_NO_TOKEN, None);
        let old = postcard::to_stdvec(&LetterV2 {
            version: v2.version,
            id: v2.id,
            recipient: v2.recipient,
            sender: v2.sender.clone(),
            sent_ms: v2.sent_ms,
            expires_at: v2.expires_at,
            text: v2.text.clone(),
        })
        .unwrap();
        assert_eq!(Letter::decode(&old).unwrap(), v2);
        assert_eq!(v2.encode().unwrap(), old);
        // Version 3 without its token, version 2 with one, and other
        // versions are refused.
        assert!(letter(LETTER_VERSION, None).encode().is_err());
        assert!(letter(LETTER_VERSION_NO_TOKEN, Some([1; 32]))
            .encode()
            .is_err());
        assert!(matches!(
            letter(1, None).encode(),
            Err(WireError::Version(1))
        ));
        let mut one = old.clone();
        one[0] = 1;
        assert!(matches!(Letter::decode(&one), Err(WireError::Version(1))));
        // A version-3 letter cut short of its token does not decode.
        assert!(Letter::decode(&bytes[..bytes.len() - 1]).is_err());
    }
}
