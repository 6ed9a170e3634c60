//! What travels inside onion packets (routing.mode = "onion").
//!
//! An onion packet's payload is opened only by its last hop. Two kinds:
//!
//! - [`PartPayload`], to a message's recipient: one part of the sealed
//!   letter ([`crate::routing::onion::fragments::Part`], encoded) and a
//!   single-use reply block the origin made, over which the recipient sends
//!   the receipt back.
//! - [`ReplyPayload`], back to the origin over that reply block: the
//!   recipient's signed [`Receipt`].
//!
//! Both are postcard with a version byte, decoded within
//! [`crate::crypto::sphinx::MAX_PLAINTEXT`] bytes, with no trailing bytes.
//! Relays can change neither (a changed payload garbles the whole
//! wide-block payload, and the recipient refuses it); what they carry is
//! still checked as if hostile, since any node can make packets.

use serde::{Deserialize, Serialize};

use super::link::Receipt;
use super::{decode_limited, encode_limited, WireError};
use crate::crypto::sphinx::{MAX_PLAINTEXT, REPLY_BLOCK_SIZE};

pub const ONION_PAYLOAD_VERSION: u8 = 1;

/// Bytes of postcard framing around a part and its reply block in a
/// [`PartPayload`]: the version, two length prefixes of at most 3 bytes.
const PART_PAYLOAD_FRAMING: usize = 1 + 3 + 3;

/// The largest encoded part one packet carries beside its reply block.
pub const MAX_PART_BYTES: usize = MAX_PLAINTEXT - REPLY_BLOCK_SIZE - PART_PAYLOAD_FRAMING;

/// One part of a sealed letter, for its recipient.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartPayload {
    pub version: u8,
    /// Exactly [`REPLY_BLOCK_SIZE`] bytes.
    #[serde(with = "serde_bytes")]
    pub reply: Vec<u8>,
    /// An encoded part, at most [`MAX_PART_BYTES`].
    #[serde(with = "serde_bytes")]
    pub part: Vec<u8>,
}

impl PartPayload {
    pub fn new(reply: Vec<u8>, part: Vec<u8>) -> PartPayload {
        PartPayload {
            version: ONION_PAYLOAD_VERSION,
            reply,
            part,
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        self.check()?;
        encode_limited(self, MAX_PLAINTEXT)
    }

    pub fn decode(bytes: &[u8]) -> Result<PartPayload, WireError> {
        check_version(bytes)?;
        let p: PartPayload = decode_limited(bytes, MAX_PLAINTEXT)?;
        p.check()?;
        Ok(p)
    }

    fn check(&self) -> Result<(), WireError> {
        if self.reply.len() != REPLY_BLOCK_SIZE {
            return Err(WireError::Limit("reply block of the wrong size"));
        }
        if self.part.len() > MAX_PART_BYTES {
            return Err(WireError::Limit("part too large"));
        }
        Ok(())
    }
}

/// A receipt on its way back to the origin, inside a reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyPayload {
    pub version: u8,
    pub receipt: Receipt,
}

impl ReplyPayload {
    pub fn new(receipt: Receipt) -> ReplyPayload {
        ReplyPayload {
            version: ONION_PAYLOAD_VERSION,
            receipt,
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        encode_limited(self, MAX_PLAINTEXT)
    }

    /// Decodes a recovered reply. The recovered plaintext is a whole
    /// payload block (zero padding after the encoding), so trailing bytes
    /// are allowed here, and must be zero.
    pub fn decode(bytes: &[u8]) -> Result<ReplyPayload, WireError> {
        check_version(bytes)?;
        if bytes.len() > MAX_PLAINTEXT {
            return Err(WireError::TooLarge {
                size: bytes.len(),
                limit: MAX_PLAINTEXT,
            });
        }
        let (p, rest): (ReplyPayload, _) =
            postcard::take_from_bytes(bytes).map_err(|_| WireError::Malformed)?;
        if rest.iter().any(|b| *b != 0) {
            return Err(WireError::Trailing(rest.len()));
        }
        Ok(p)
    }
}

fn check_version(bytes: &[u8]) -> Result<(), WireError> {
    match bytes.first() {
        None => Err(WireError::Malformed),
        Some(&v) if v != ONION_PAYLOAD_VERSION => Err(WireError::Version(v)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Identity;
    use crate::wire::MessageId;
    use proptest::prelude::*;

    #[test]
    fn a_largest_part_with_its_reply_block_fits_one_packet() {
        let p = PartPayload::new(vec![7; REPLY_BLOCK_SIZE], vec![9; MAX_PART_BYTES]);
        let bytes = p.encode().unwrap();
        assert!(bytes.len() <= MAX_PLAINTEXT, "{}", bytes.len());
        assert_eq!(PartPayload::decode(&bytes).unwrap(), p);
    }

    #[test]
    fn wrong_sizes_and_versions_are_refused() {
        let short = PartPayload::new(vec![7; REPLY_BLOCK_SIZE - 1], vec![]);
        assert!(short.encode().is_err());
        let big = PartPayload::new(vec![7; REPLY_BLOCK_SIZE], vec![1; MAX_PART_BYTES + 1]);
        assert!(big.encode().is_err());
        let mut bytes = PartPayload::new(vec![7; REPLY_BLOCK_SIZE], vec![1])
            .encode()
            .unwrap();
        bytes[0] = 9;
        assert_eq!(PartPayload::decode(&bytes), Err(WireError::Version(9)));
        assert!(PartPayload::decode(&[]).is_err());
    }

    #[test]
    fn a_reply_round_trips_with_zero_padding_only() {
        let id = Identity::generate();
        let r = ReplyPayload::new(Receipt::sign(&id, MessageId([3; 16]), 1_900_000_000, None));
        let mut bytes = r.encode().unwrap();
        bytes.resize(MAX_PLAINTEXT, 0);
        assert_eq!(ReplyPayload::decode(&bytes).unwrap(), r);
        let last = bytes.len() - 1;
        bytes[last] = 1;
        assert!(ReplyPayload::decode(&bytes).is_err());
    }

    proptest! {
        #[test]
        fn no_input_panics_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..4000)) {
            let _ = PartPayload::decode(&bytes);
            let _ = ReplyPayload::decode(&bytes);
        }
    }
}
