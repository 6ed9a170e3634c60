//! Frames between nodes, inside a Noise link.
//!
//! Each frame travels in one or more cells of one size ([`super::cell`]),
//! each cell one Noise transport message. The first
//! frame each side sends is its [`SignedRecord`]; after that any frame may
//! follow. A frame that does not decode, breaks a limit, or comes out of turn
//! costs the peer its link.

use serde::{Deserialize, Serialize};

use super::message::MAX_SEALED_BYTES;
use super::{decode_limited, encode_limited, MessageId, WireError};
use crate::crypto::identity::{verify, Address, Identity, ReceiptTokens};
use crate::crypto::seal::Sealed;
use crate::crypto::SignedRecord;

pub const LINK_VERSION: u8 = 1;
/// Largest encoded frame: what [`super::cell::MAX_CELLS_PER_FRAME`] cells
/// carry (61,650 bytes; a largest flood packet is about 60,730).
pub const MAX_LINK_FRAME: usize = super::cell::MAX_FRAME_BYTES;
/// Most records one peer-exchange frame may carry.
pub const MAX_RECORDS_PER_FRAME: usize = 32;
/// Most neighbours one gossip frame may name (the most a node may have).
pub const MAX_GOSSIP_NEIGHBOURS: usize = 64;
/// Most hops a flooded packet or receipt may travel.
pub const MAX_HOPS: u8 = 32;

/// Version 2 signs the id, the recipient and the expiry (version 1: the id only).
const RECEIPT_DOMAIN: &[u8] = b"hermes/receipt/2\0";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkFrame {
    pub version: u8,
    pub body: LinkBody,
}

/// Append new variants at the end only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkBody {
    /// The sender's signed record: the first frame on every link.
    Record(SignedRecord),
    /// A flooded message.
    Packet(FloodPacket),
    /// A delivery receipt, flooded back.
    Receipt(Receipt),
    Ping(u64),
    Pong(u64),
    /// The sender is leaving the network; the records are of its other
    /// neighbours, so the receiver can connect to them instead.
    Leaving(Vec<SignedRecord>),
    /// A sample of known records.
    Records(Vec<SignedRecord>),
    /// Peer exchange: the sender's neighbours and a sample of records.
    Gossip(Gossip),
    /// The sender is at `max_neighbours` and closes this link; the records
    /// are other nodes to dial instead.
    Full(Vec<SignedRecord>),
    /// An onion packet (routing.mode = "onion"): exactly
    /// [`crate::crypto::sphinx::PACKET_SIZE`] bytes, whatever its place on
    /// its path; a frame with any other length is refused.
    Onion(OnionPacket),
    /// Instead of [`LinkBody::Record`] as the first frame: the sender's
    /// record, and this link only carries onion packets to the receiver (a
    /// relay's or origin's "courier" link to a node that is not its
    /// neighbour). It is not a neighbour link: neither side counts it in its
    /// overlay, and either closes it once idle.
    CourierRecord(SignedRecord),
}

/// The bytes of one onion packet on a link (see docs/packet.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnionPacket(#[serde(with = "serde_bytes")] pub Vec<u8>);

/// What neighbours tell each other about the overlay.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gossip {
    /// The sender's current neighbours: lets the receiver prefer dialling
    /// nodes two hops away, and judge which of its links is least useful.
    pub neighbours: Vec<Address>,
    /// A random sample of nodes the sender saw alive recently.
    pub records: Vec<SignedRecord>,
}

/// A message on its way, as every relay sees it in flood mode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FloodPacket {
    pub id: MessageId,
    /// Which sending of this message: each retry floods afresh under a new
    /// attempt, so relays that saw an earlier one still pass it on.
    pub attempt: u32,
    pub hops_left: u8,
    pub recipient: Address,
    /// Seconds since the Unix epoch after which nobody forwards it.
    pub expires_at: u64,
    pub sealed: Sealed,
}

/// Proof, signed by the recipient, that a message reached its inbox.
///
/// The signature covers the id, the recipient and the message's expiry (the
/// one bound in its letter); `hops_left` is the only field a relay may
/// change, and it decides nothing but how far the receipt still travels.
/// `token`, given back from a version-3 letter, lets the origin check the
/// receipt with a hash instead of the signature (`Identity::receipt_token`);
/// a relay that changes or drops it only makes the origin check the
/// signature instead.
///
/// On the wire and on disk (a delivered mark keeps its receipt) the
/// signature and the token are one byte string, 64 bytes (no token, as every
/// receipt was before tokens) or 96 (signature, then token).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ReceiptWire", into = "ReceiptWire")]
pub struct Receipt {
    pub id: MessageId,
    pub recipient: Address,
    pub signature: [u8; 64],
    pub hops_left: u8,
    pub expires_at: u64,
    pub token: Option<[u8; 32]>,
}

/// A [`Receipt`] as postcard writes it.
#[derive(Serialize, Deserialize)]
struct ReceiptWire {
    id: MessageId,
    recipient: Address,
    /// The signature, then the token if there is one.
    #[serde(with = "serde_bytes")]
    proof: Vec<u8>,
    hops_left: u8,
    expires_at: u64,
}

impl From<Receipt> for ReceiptWire {
    fn from(r: Receipt) -> ReceiptWire {
        let mut proof = Vec::with_capacity(96);
        proof.extend_from_slice(&r.signature);
        if let Some(t) = &r.token {
            proof.extend_from_slice(t);
        }
        ReceiptWire {
            id: r.id,
            recipient: r.recipient,
            proof,
            hops_left: r.hops_left,
            expires_at: r.expires_at,
        }
    }
}

impl TryFrom<ReceiptWire> for Receipt {
    type Error = &'static str;

    fn try_from(w: ReceiptWire) -> Result<Receipt, &'static str> {
        let (signature, token) = match w.proof.len() {
            64 => (&w.proof[..], None),
            96 => (&w.proof[..64], Some(&w.proof[64..])),
            _ => return Err("a receipt's proof is 64 or 96 bytes"),
        };
        Ok(Receipt {
            id: w.id,
            recipient: w.recipient,
            signature: signature.try_into().map_err(|_| "signature")?,
            hops_left: w.hops_left,
            expires_at: w.expires_at,
            token: match token {
                Some(t) => Some(t.try_into().map_err(|_| "token")?),
                None => None,
            },
        })
    }
}

/// The bytes a receipt's signature covers.
fn receipt_signed_bytes(id: &MessageId, recipient: &Address, expires_at: u64) -> [u8; 56] {
    let mut b = [0u8; 56];
    b[..16].copy_from_slice(&id.0);
    b[16..48].copy_from_slice(&recipient.0);
    b[48..].copy_from_slice(&expires_at.to_be_bytes());
    b
}

impl Receipt {
    /// The recipient's receipt for message `id`, giving back the letter's
    /// token if it had one.
    pub fn sign(
        recipient: &Identity,
        id: MessageId,
        expires_at: u64,
        token: Option<[u8; 32]>,
    ) -> Receipt {
        let signed = receipt_signed_bytes(&id, &recipient.address(), expires_at);
        Receipt {
            id,
            recipient: recipient.address(),
            signature: recipient.sign(RECEIPT_DOMAIN, &signed),
            hops_left: MAX_HOPS,
            expires_at,
            token,
        }
    }

    /// True if the named recipient really signed this receipt, for this id
    /// and this expiry.
    pub fn verify(&self) -> bool {
        let signed = receipt_signed_bytes(&self.id, &self.recipient, self.expires_at);
        verify(&self.recipient, RECEIPT_DOMAIN, &signed, &self.signature)
    }

    /// True if this receipt proves delivery of the message of the origin
    /// whose token key is `origin`: its token is the one the origin sealed
    /// into the letter (compared in constant time), or, without a token or
    /// with a wrong one, the signature verifies.
    pub fn proves_to(&self, origin: &ReceiptTokens) -> bool {
        if let Some(t) = &self.token {
            let want = origin.token(&self.id.0, &self.recipient, self.expires_at);
            if bool::from(subtle::ConstantTimeEq::ct_eq(&t[..], &want[..])) {
                return true;
            }
        }
        self.verify()
    }
}

impl LinkFrame {
    pub fn new(body: LinkBody) -> LinkFrame {
        LinkFrame {
            version: LINK_VERSION,
            body,
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        self.check_limits()?;
        encode_limited(self, MAX_LINK_FRAME)
    }

    pub fn decode(bytes: &[u8]) -> Result<LinkFrame, WireError> {
        // The version is the first byte; check it before decoding the rest,
        // so a newer peer gets a clear error rather than "malformed".
        match bytes.first() {
            None => return Err(WireError::Malformed),
            Some(&v) if v != LINK_VERSION => return Err(WireError::Version(v)),
            _ => {}
        }
        let frame: LinkFrame = decode_limited(bytes, MAX_LINK_FRAME)?;
        frame.check_limits()?;
        Ok(frame)
    }

    fn check_limits(&self) -> Result<(), WireError> {
        match &self.body {
            LinkBody::Packet(p) => {
                if p.hops_left > MAX_HOPS {
                    return Err(WireError::Limit("hop count over the maximum"));
                }
                if p.sealed.ciphertext.len() > MAX_SEALED_BYTES {
                    return Err(WireError::Limit("sealed message too large"));
                }
            }
            LinkBody::Receipt(r) if r.hops_left > MAX_HOPS => {
                return Err(WireError::Limit("hop count over the maximum"));
            }
            LinkBody::Leaving(records)
            | LinkBody::Records(records)
            | LinkBody::Full(records)
            | LinkBody::Gossip(Gossip { records, .. })
                if records.len() > MAX_RECORDS_PER_FRAME =>
            {
                return Err(WireError::Limit("too many records"));
            }
            LinkBody::Gossip(g) if g.neighbours.len() > MAX_GOSSIP_NEIGHBOURS => {
                return Err(WireError::Limit("too many neighbours"));
            }
            LinkBody::Onion(p) if p.0.len() != crate::crypto::sphinx::PACKET_SIZE => {
                return Err(WireError::Limit("onion packet of the wrong size"));
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{seal, unix_now};

    /// A receipt as every node wrote it before tokens (and as delivered
    /// marks on disk still hold it).
    #[derive(Serialize)]
    struct ReceiptBeforeTokens {
        id: MessageId,
        recipient: Address,
        #[serde(with = "serde_bytes")]
        signature: [u8; 64],
        hops_left: u8,
        expires_at: u64,
    }

    #[test]
    fn a_receipt_without_a_token_is_written_as_before_and_one_with_a_token_adds_32_bytes() {
        let bob = Identity::generate();
        let r = Receipt::sign(&bob, MessageId([5; 16]), 1_800_000_000, None);
        let before = postcard::to_stdvec(&ReceiptBeforeTokens {
            id: r.id,
            recipient: r.recipient,
            signature: r.signature,
            hops_left: r.hops_left,
            expires_at: r.expires_at,
        })
        .unwrap();
        assert_eq!(postcard::to_stdvec(&r).unwrap(), before);
        assert_eq!(postcard::from_bytes::<Receipt>(&before).unwrap(), r);
        let with = Receipt {
            token: Some([7; 32]),
            ..r.clone()
        };
        let bytes = postcard::to_stdvec(&with).unwrap();
        assert_eq!(bytes.len(), before.len() + 32);
        assert_eq!(postcard::from_bytes::<Receipt>(&bytes).unwrap(), with);
        assert!(with.verify(), "the token is not signed");
        // A proof of any other length is refused.
        let mut odd = before.clone();
        odd[16 + 32] = 65;
        odd.insert(16 + 32 + 1, 0);
        assert!(postcard::from_bytes::<Receipt>(&odd).is_err());
    }
    use crate::wire::message::{seal_aad, Letter, LETTER_VERSION, MAX_TEXT_BYTES};
    use proptest::prelude::*;

    fn record(id: &Identity) -> SignedRecord {
        SignedRecord::sign(id, "127.0.0.2:58008".parse().unwrap(), true, unix_now())
    }

    fn packet(text_len: usize) -> FloodPacket {
        let alice = Identity::generate();
        let bob = Identity::generate();
        let id = MessageId::random();
        let letter = Letter {
            version: LETTER_VERSION,
            id,
            recipient: bob.address(),
            sender: record(&alice),
            sent_ms: 1,
            expires_at: u64::MAX,
            text: "x".repeat(text_len),
            receipt_token: Some([9; 32]),
        };
        let aad = seal_aad(&id, &bob.address(), u64::MAX);
        let sealed =
            seal::seal(&alice, &bob.kem_public(), &aad, &letter.encode().unwrap()).unwrap();
        FloodPacket {
            id,
            attempt: 0,
            hops_left: MAX_HOPS,
            recipient: bob.address(),
            expires_at: u64::MAX,
            sealed,
        }
    }

    #[test]
    fn largest_message_fits_one_link_frame() {
        let frame = LinkFrame::new(LinkBody::Packet(packet(MAX_TEXT_BYTES)));
        let bytes = frame.encode().unwrap();
        assert!(bytes.len() <= MAX_LINK_FRAME);
        assert_eq!(LinkFrame::decode(&bytes).unwrap(), frame);
    }

    #[test]
    fn trailing_bytes_version_and_limits_refused() {
        let frame = LinkFrame::new(LinkBody::Ping(7));
        let mut bytes = frame.encode().unwrap();
        bytes.push(0);
        assert_eq!(LinkFrame::decode(&bytes), Err(WireError::Trailing(1)));
        let mut bytes = frame.encode().unwrap();
        bytes[0] = 9;
        assert_eq!(LinkFrame::decode(&bytes), Err(WireError::Version(9)));
        assert_eq!(LinkFrame::decode(&[]), Err(WireError::Malformed));
        let big = vec![LINK_VERSION; MAX_LINK_FRAME + 1];
        assert!(matches!(
            LinkFrame::decode(&big),
            Err(WireError::TooLarge { .. })
        ));
        let id = Identity::generate();
        let many = LinkFrame::new(LinkBody::Records(vec![
            record(&id);
            MAX_RECORDS_PER_FRAME + 1
        ]));
        assert_eq!(many.encode(), Err(WireError::Limit("too many records")));
        let many = LinkFrame::new(LinkBody::Gossip(Gossip {
            neighbours: vec![id.address(); MAX_GOSSIP_NEIGHBOURS + 1],
            records: Vec::new(),
        }));
        assert_eq!(many.encode(), Err(WireError::Limit("too many neighbours")));
        let mut p = packet(1);
        p.hops_left = MAX_HOPS + 1;
        assert!(LinkFrame::new(LinkBody::Packet(p)).encode().is_err());
    }

    #[test]
    fn receipts_verify_only_for_their_signer() {
        let bob = Identity::generate();
        let id = MessageId::random();
        let r = Receipt::sign(&bob, id, 0, None);
        assert!(r.verify());
        let mut forged = r.clone();
        forged.id = MessageId::random();
        assert!(!forged.verify());
        let mut forged = r.clone();
        forged.recipient = Identity::generate().address();
        assert!(!forged.verify());
        let mut forged = r.clone();
        forged.expires_at = 1;
        assert!(!forged.verify(), "the expiry is signed");
        // Hops are the relay's to count down.
        let mut relayed = r;
        relayed.hops_left = 3;
        assert!(relayed.verify());
    }

    fn arb_body() -> impl Strategy<Value = LinkBody> {
        prop_oneof![
            any::<u64>().prop_map(LinkBody::Ping),
            any::<u64>().prop_map(LinkBody::Pong),
            (
                any::<[u8; 16]>(),
                any::<u32>(),
                0..=MAX_HOPS,
                any::<[u8; 32]>(),
                any::<u64>(),
                any::<[u8; 32]>(),
                any::<[u8; 32]>(),
                proptest::collection::vec(any::<u8>(), 0..2048)
            )
                .prop_map(
                    |(id, attempt, hops_left, rcpt, expires_at, sk, enc, ciphertext)| {
                        LinkBody::Packet(FloodPacket {
                            id: MessageId(id),
                            attempt,
                            hops_left,
                            recipient: Address(rcpt),
                            expires_at,
                            sealed: Sealed {
                                sender_kem: sk,
                                enc,
                                ciphertext,
                            },
                        })
                    }
                ),
            (
                any::<[u8; 16]>(),
                any::<[u8; 32]>(),
                proptest::collection::vec(any::<u8>(), 64),
                0..=MAX_HOPS,
                any::<u64>(),
                proptest::option::of(any::<[u8; 32]>()),
            )
                .prop_map(|(id, rcpt, sig, hops_left, expires_at, token)| {
                    let mut signature = [0u8; 64];
                    signature.copy_from_slice(&sig);
                    LinkBody::Receipt(Receipt {
                        id: MessageId(id),
                        recipient: Address(rcpt),
                        signature,
                        hops_left,
                        expires_at,
                        token,
                    })
                }),
            (
                proptest::collection::vec(any::<[u8; 32]>(), 0..=MAX_GOSSIP_NEIGHBOURS),
                0..4usize
            )
                .prop_map(|(neighbours, n)| {
                    let id = Identity::generate();
                    LinkBody::Gossip(Gossip {
                        neighbours: neighbours.into_iter().map(Address).collect(),
                        records: vec![record(&id); n],
                    })
                }),
            (0..4usize).prop_map(|n| LinkBody::Full(vec![record(&Identity::generate()); n])),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// A receipt verifies only as signed: any change to the id, the
        /// recipient, the expiry or the signature is refused; the hop count
        /// (the relay's to change) is not signed.
        #[test]
        fn receipt_changes_are_refused(
            which in 0usize..4,
            byte in any::<prop::sample::Index>(),
            flip in 1u8..=255,
            delta in 1u64..u64::MAX,
            hops in 0..=MAX_HOPS,
        ) {
            let bob = Identity::generate();
            let r = Receipt::sign(&bob, MessageId([5; 16]), 1_800_000_000, None);
            let mut changed = r.clone();
            match which {
                0 => changed.id.0[byte.index(16)] ^= flip,
                1 => changed.recipient.0[byte.index(32)] ^= flip,
                2 => changed.expires_at = changed.expires_at.wrapping_add(delta),
                _ => changed.signature[byte.index(64)] ^= flip,
            }
            prop_assert!(!changed.verify());
            let mut relayed = r;
            relayed.hops_left = hops;
            prop_assert!(relayed.verify());
        }
    }

    proptest! {
        #[test]
        fn frames_round_trip(body in arb_body()) {
            let frame = LinkFrame::new(body);
            let bytes = frame.encode().unwrap();
            prop_assert_eq!(LinkFrame::decode(&bytes).unwrap(), frame);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = LinkFrame::decode(&bytes);
        }

        #[test]
        fn truncated_frames_are_refused(body in arb_body(), cut in 1usize..64) {
            let bytes = LinkFrame::new(body).encode().unwrap();
            let cut = cut.min(bytes.len());
            prop_assert!(LinkFrame::decode(&bytes[..bytes.len() - cut]).is_err());
        }
    }
}
