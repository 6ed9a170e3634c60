//! Onion packets: the Sphinx format of the `sphinx-packet` crate, behind a
//! trait of ours ([`OnionFormat`]).
//!
//! This is the only module that names `sphinx_packet` (or the x25519 types it
//! takes); the rest of the node sees [`Packet`], [`Peeled`], [`ReplyBlock`]
//! and 32-byte keys. The crate is pinned exactly in Cargo.toml, because its
//! byte layout is our wire format: an upgrade is a protocol change.
//!
//! Every packet on the wire is exactly [`PACKET_SIZE`] bytes, whatever its
//! place on the path or its content: a Sphinx header of [`HEADER_SIZE`]
//! bytes (the group element, the per-hop MAC, the encrypted routing
//! information for up to [`MAX_HOPS`] hops) and a Lioness-encrypted payload of
//! [`PAYLOAD_SIZE`] bytes. Anything of another length is refused before any
//! work ([`OnionError::WrongSize`]).
//!
//! A route's last hop is the recipient, so no relay sees plaintext. The
//! header is authenticated at every hop (a changed header fails that hop's
//! MAC); the payload is a wide block, authenticated only where it is opened:
//! changing any byte of it garbles the whole block, and the recipient refuses
//! it ([`OnionError::Payload`]). Each hop derives a replay tag from its shared
//! secret: a replayed packet has the same tag at that hop, and two packets
//! never share one. Tags are per key: they are dropped with the key.
//!
//! Reply blocks are the crate's *recoverable* SURBs (packet version 260): the
//! block handed to the recipient carries only the last hop's payload-key seed,
//! and the hop seeds stay with the origin in a [`ReplyRecovery`]. The older
//! `construct_SURB` put every hop's payload key in the block itself, so whoever
//! held the block could strip or add layers; it is not used. See
//! docs/packet.md.

use std::panic::{catch_unwind, AssertUnwindSafe};

use sphinx_packet::constants::{
    IDENTIFIER_LENGTH, MAX_PATH_LENGTH, NODE_ADDRESS_LENGTH, PAYLOAD_KEY_SEED_SIZE, REPLAY_TAG_SIZE,
};
use sphinx_packet::header::delays::Delay;
use sphinx_packet::header::HEADER_SIZE as SPHINX_HEADER_SIZE;
use sphinx_packet::payload::{Payload, PAYLOAD_OVERHEAD_SIZE};
use sphinx_packet::route::{Destination, DestinationAddressBytes, Node, NodeAddressBytes};
use sphinx_packet::version::SINGLE_SEED_SURB_VERSION;
use sphinx_packet::{
    ProcessedPacketData, SURBMaterial, SphinxPacket, SphinxPacketBuilder, SurbReplyRecovery, SURB,
};
use x25519_dalek_v3::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::identity::Address;

/// Bytes of every onion packet on the wire.
///
/// 4 KiB: one packet holds a typical chat message with its sealed letter
/// (sender record, seal, header) in one piece, a 60,000-byte message takes 17,
/// and a packet fits one link frame with room to spare. The per-hop cost is
/// two X25519 operations whatever the size; Lioness over 3.7 KiB adds a few
/// microseconds.
pub const PACKET_SIZE: usize = 4096;
/// Bytes of the Sphinx header at the front of every packet.
pub const HEADER_SIZE: usize = SPHINX_HEADER_SIZE;
/// Bytes of the (encrypted) payload that follows the header.
pub const PAYLOAD_SIZE: usize = PACKET_SIZE - HEADER_SIZE;
/// Largest plaintext one packet carries to its recipient.
pub const MAX_PLAINTEXT: usize = PAYLOAD_SIZE - PAYLOAD_OVERHEAD_SIZE;
/// Most hops a route may have, the recipient included.
pub const MAX_HOPS: usize = MAX_PATH_LENGTH;
/// Most relays a route may have before its recipient.
pub const MAX_RELAYS: usize = MAX_HOPS - 1;
/// Bytes of a [`ReplyBlock`]: a header, the first hop, one payload-key seed.
pub const REPLY_BLOCK_SIZE: usize = HEADER_SIZE + NODE_ADDRESS_LENGTH + PAYLOAD_KEY_SEED_SIZE;
/// Bytes of a [`ReplyRecovery`] for a route of `hops` hops (origin included).
pub const fn reply_recovery_size(hops: usize) -> usize {
    IDENTIFIER_LENGTH + hops * PAYLOAD_KEY_SEED_SIZE
}
/// Bytes of the largest [`ReplyRecovery`].
pub const MAX_REPLY_RECOVERY_SIZE: usize = reply_recovery_size(MAX_HOPS);

const _: () = assert!(NODE_ADDRESS_LENGTH == 32 && IDENTIFIER_LENGTH == 16);
const _: () = assert!(PACKET_SIZE > HEADER_SIZE + PAYLOAD_OVERHEAD_SIZE + 1024);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OnionError {
    /// Relays refuse any packet that is not exactly [`PACKET_SIZE`] bytes.
    #[error("onion packet of {got} bytes refused: every packet is exactly {expected} bytes")]
    WrongSize { got: usize, expected: usize },
    #[error("reply block of {got} bytes refused: a reply block is exactly {expected} bytes")]
    WrongReplyBlockSize { got: usize, expected: usize },
    #[error("reply recovery of {got} bytes refused: {why}")]
    WrongRecoverySize { got: usize, why: &'static str },
    /// The header's MAC does not verify under this key: altered, or for
    /// another key (another node, or a key that was rotated out).
    #[error("onion header does not verify: altered, or not for this key")]
    Header,
    #[error("onion packet version {0} is not supported (only 260)")]
    Version(u16),
    /// The payload does not open: altered on the way, or not a forward
    /// packet of this format.
    #[error("onion payload does not open: altered on the way")]
    Payload,
    #[error("route of {0} hops refused: 1 to {max} hops, the recipient included", max = MAX_HOPS)]
    RouteLength(usize),
    #[error("payload of {got} bytes is over the {max}-byte limit of one packet", max = MAX_PLAINTEXT)]
    TooLong { got: usize },
    #[error("onion packet could not be built: {0}")]
    Build(String),
    /// The format library panicked on this input (a bug of theirs, caught so
    /// that a hostile packet never stops the node).
    #[error("onion format failed on this packet")]
    Internal,
}

/// One hop of a route: the node's id (its address) and the rotating X25519
/// key it announced for packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeHop {
    pub id: Address,
    pub key: [u8; 32],
}

/// A per-hop replay tag: the same for a replayed packet at the same hop and
/// key, different for any two packets.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ReplayTag(pub [u8; REPLAY_TAG_SIZE]);

/// The id a reply block is filed under at its origin (never all zero).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ReplyId(pub [u8; IDENTIFIER_LENGTH]);

/// A packet as it travels: always exactly [`PACKET_SIZE`] bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Packet(Box<[u8]>);

impl std::fmt::Debug for Packet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Packet({} bytes)", self.0.len())
    }
}

impl Packet {
    /// Takes bytes from the network: refused unless exactly [`PACKET_SIZE`]
    /// long (checked before anything is copied).
    pub fn from_bytes(bytes: &[u8]) -> Result<Packet, OnionError> {
        check_size(bytes.len())?;
        Ok(Packet(bytes.into()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0.into_vec()
    }

    fn from_sphinx(p: &SphinxPacket) -> Result<Packet, OnionError> {
        let bytes = p.to_bytes();
        check_size(bytes.len())?;
        Ok(Packet(bytes.into_boxed_slice()))
    }
}

fn check_size(got: usize) -> Result<(), OnionError> {
    if got != PACKET_SIZE {
        return Err(OnionError::WrongSize {
            got,
            expected: PACKET_SIZE,
        });
    }
    Ok(())
}

/// What a node learns by peeling one layer.
#[derive(Debug, PartialEq, Eq)]
pub enum Peeled {
    /// Pass `packet` on to `next`; this node learns nothing more.
    Forward {
        next: Address,
        packet: Packet,
        replay_tag: ReplayTag,
    },
    /// This node is the recipient of a forward packet.
    Deliver {
        /// The id the sender named as the recipient: the Router checks it is
        /// this node.
        destination: Address,
        payload: Vec<u8>,
        replay_tag: ReplayTag,
    },
    /// This node is the origin of the reply block this packet used: open
    /// `sealed` with the [`ReplyRecovery`] filed under `reply_id`.
    Reply {
        destination: Address,
        reply_id: ReplyId,
        sealed: SealedReply,
        replay_tag: ReplayTag,
    },
}

/// A reply's payload as it reaches the origin, still sealed.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedReply(Vec<u8>);

impl std::fmt::Debug for SealedReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedReply({} bytes)", self.0.len())
    }
}

/// A single-use reply block the origin hands the recipient (inside the
/// sealed letter): lets the recipient send one packet back along a route the
/// origin chose, without learning it. Exactly [`REPLY_BLOCK_SIZE`] bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct ReplyBlock(Vec<u8>);

impl std::fmt::Debug for ReplyBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReplyBlock({} bytes)", self.0.len())
    }
}

impl ReplyBlock {
    /// Takes a block from a letter: exactly [`REPLY_BLOCK_SIZE`] bytes, and
    /// it must parse as a single-seed block.
    pub fn from_bytes(bytes: &[u8]) -> Result<ReplyBlock, OnionError> {
        if bytes.len() != REPLY_BLOCK_SIZE {
            return Err(OnionError::WrongReplyBlockSize {
                got: bytes.len(),
                expected: REPLY_BLOCK_SIZE,
            });
        }
        guard(|| SURB::from_bytes(bytes).map_err(|_| OnionError::Header))?;
        Ok(ReplyBlock(bytes.to_vec()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The relay the reply is first sent to.
    pub fn first_hop(&self) -> Address {
        let mut a = [0u8; 32];
        a.copy_from_slice(&self.0[HEADER_SIZE..HEADER_SIZE + NODE_ADDRESS_LENGTH]);
        Address(a)
    }
}

/// What the origin keeps (secret, on its own disk) to open the reply sent
/// with a [`ReplyBlock`]: its id and every hop's payload-key seed.
pub struct ReplyRecovery(SurbReplyRecovery);

impl std::fmt::Debug for ReplyRecovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReplyRecovery({:?})", self.id())
    }
}

impl ReplyRecovery {
    pub fn id(&self) -> ReplyId {
        ReplyId(*self.0.identifier())
    }

    /// Bytes to store with the outbox entry; they are secret.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.0.to_bytes())
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<ReplyRecovery, OnionError> {
        let got = bytes.len();
        if got > MAX_REPLY_RECOVERY_SIZE {
            return Err(OnionError::WrongRecoverySize {
                got,
                why: "over the size of a longest route",
            });
        }
        guard(|| {
            SurbReplyRecovery::from_bytes(bytes).map_err(|_| OnionError::WrongRecoverySize {
                got,
                why: "not an id and 1 to 5 hop seeds",
            })
        })
        .map(ReplyRecovery)
    }

    /// Opens a reply that came back over this recovery's block.
    pub fn open(&self, sealed: &SealedReply) -> Result<Vec<u8>, OnionError> {
        guard(|| {
            let payload = Payload::from_bytes(&sealed.0).map_err(|_| OnionError::Payload)?;
            self.0
                .recover_plaintext(payload)
                .map_err(|_| OnionError::Payload)
        })
    }
}

/// The onion format the Router drives: wrap at the origin, peel at each hop,
/// reply blocks for receipts. One implementation today, [`Sphinx`]; the
/// trait is what keeps the crate replaceable.
pub trait OnionFormat {
    /// Wraps `payload` (at most [`MAX_PLAINTEXT`] bytes) for `recipient`
    /// through `relays`, in order; returns the packet to send to the first
    /// relay (or to the recipient if there is none).
    fn wrap(
        &self,
        relays: &[NodeHop],
        recipient: &NodeHop,
        payload: &[u8],
    ) -> Result<Packet, OnionError>;

    /// Peels one layer with this node's packet key (32 secret bytes).
    fn peel(&self, packet: &Packet, key: &[u8; 32]) -> Result<Peeled, OnionError>;

    /// Builds a reply block through `relays` back to `origin` (this node).
    fn reply_block(
        &self,
        relays: &[NodeHop],
        origin: &NodeHop,
    ) -> Result<(ReplyBlock, ReplyRecovery), OnionError>;

    /// Uses a reply block once: the packet carrying `payload` and the node
    /// to send it to.
    fn use_reply_block(
        &self,
        block: &ReplyBlock,
        payload: &[u8],
    ) -> Result<(Address, Packet), OnionError>;
}

/// [`OnionFormat`] by `sphinx-packet` 0.8.0, packet version 260.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sphinx;

/// No mixing delays: the relays forward at once (the delay field is 0).
const NO_DELAY: Delay = Delay::new_from_nanos(0);

fn route(relays: &[NodeHop], last: &NodeHop) -> Result<Vec<Node>, OnionError> {
    let hops = relays.len() + 1;
    if hops > MAX_HOPS {
        return Err(OnionError::RouteLength(hops));
    }
    Ok(relays
        .iter()
        .chain(std::iter::once(last))
        .map(|h| Node::new(NodeAddressBytes::from_bytes(h.id.0), PublicKey::from(h.key)))
        .collect())
}

/// Runs `f`, turning a panic inside the format library into an error.
fn guard<T>(f: impl FnOnce() -> Result<T, OnionError>) -> Result<T, OnionError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(Err(OnionError::Internal))
}

impl OnionFormat for Sphinx {
    fn wrap(
        &self,
        relays: &[NodeHop],
        recipient: &NodeHop,
        payload: &[u8],
    ) -> Result<Packet, OnionError> {
        if payload.len() > MAX_PLAINTEXT {
            return Err(OnionError::TooLong { got: payload.len() });
        }
        let nodes = route(relays, recipient)?;
        let delays = vec![NO_DELAY; nodes.len()];
        // A forward packet's identifier is all zero; reply blocks never are.
        let destination = Destination::new(
            DestinationAddressBytes::from_bytes(recipient.id.0),
            [0u8; IDENTIFIER_LENGTH],
        );
        let packet = SphinxPacketBuilder::new()
            .with_version(SINGLE_SEED_SURB_VERSION)
            .with_payload_size(PAYLOAD_SIZE)
            .build_packet(payload, &nodes, &destination, &delays)
            .map_err(|e| OnionError::Build(e.to_string()))?;
        Packet::from_sphinx(&packet)
    }

    fn peel(&self, packet: &Packet, key: &[u8; 32]) -> Result<Peeled, OnionError> {
        check_size(packet.0.len())?;
        guard(|| {
            let secret = StaticSecret::from(*key);
            let sphinx = SphinxPacket::from_bytes(&packet.0).map_err(|_| OnionError::Header)?;
            let expanded = sphinx.header.compute_expanded_shared_secret(&secret);
            let replay_tag = ReplayTag(*expanded.replay_tag());
            let processed = sphinx
                .process_with_expanded_secret(&expanded)
                .map_err(|_| OnionError::Header)?;
            if processed.version != SINGLE_SEED_SURB_VERSION {
                return Err(OnionError::Version(processed.version.value()));
            }
            match processed.data {
                ProcessedPacketData::ForwardHop {
                    next_hop_packet,
                    next_hop_address,
                    ..
                } => Ok(Peeled::Forward {
                    next: Address(next_hop_address.to_bytes()),
                    packet: Packet::from_sphinx(&next_hop_packet)?,
                    replay_tag,
                }),
                ProcessedPacketData::FinalHop {
                    destination,
                    identifier,
                    payload,
                } => {
                    let destination = Address(destination.as_bytes());
                    if identifier == [0u8; IDENTIFIER_LENGTH] {
                        let payload = payload
                            .recover_plaintext()
                            .map_err(|_| OnionError::Payload)?;
                        Ok(Peeled::Deliver {
                            destination,
                            payload,
                            replay_tag,
                        })
                    } else {
                        Ok(Peeled::Reply {
                            destination,
                            reply_id: ReplyId(identifier),
                            sealed: SealedReply(payload.into_bytes()),
                            replay_tag,
                        })
                    }
                }
            }
        })
    }

    fn reply_block(
        &self,
        relays: &[NodeHop],
        origin: &NodeHop,
    ) -> Result<(ReplyBlock, ReplyRecovery), OnionError> {
        let nodes = route(relays, origin)?;
        let delays = vec![NO_DELAY; nodes.len()];
        let mut id = [0u8; IDENTIFIER_LENGTH];
        while id == [0u8; IDENTIFIER_LENGTH] {
            id = rand::random();
        }
        let destination = Destination::new(DestinationAddressBytes::from_bytes(origin.id.0), id);
        let (surb, recovery) =
            SURBMaterial::new(nodes, delays, destination, SINGLE_SEED_SURB_VERSION)
                .construct_recoverable_SURB()
                .map_err(|e| OnionError::Build(e.to_string()))?;
        let bytes = surb.to_bytes();
        if bytes.len() != REPLY_BLOCK_SIZE {
            return Err(OnionError::WrongReplyBlockSize {
                got: bytes.len(),
                expected: REPLY_BLOCK_SIZE,
            });
        }
        Ok((ReplyBlock(bytes), ReplyRecovery(recovery)))
    }

    fn use_reply_block(
        &self,
        block: &ReplyBlock,
        payload: &[u8],
    ) -> Result<(Address, Packet), OnionError> {
        if payload.len() > MAX_PLAINTEXT {
            return Err(OnionError::TooLong { got: payload.len() });
        }
        guard(|| {
            let surb = SURB::from_bytes(&block.0).map_err(|_| OnionError::Header)?;
            let (packet, first) = surb
                .use_surb(payload, PAYLOAD_SIZE)
                .map_err(|e| OnionError::Build(e.to_string()))?;
            Ok((Address(first.to_bytes()), Packet::from_sphinx(&packet)?))
        })
    }
}

/// A fresh packet key pair: (secret, public). For tests and the keyring.
pub fn generate_key() -> (Zeroizing<[u8; 32]>, [u8; 32]) {
    let secret = Zeroizing::new(rand::random::<[u8; 32]>());
    let public = public_key(&secret);
    (secret, public)
}

/// The public key of a packet secret key.
pub fn public_key(secret: &[u8; 32]) -> [u8; 32] {
    PublicKey::from(&StaticSecret::from(*secret)).to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TestNode {
        hop: NodeHop,
        secret: Zeroizing<[u8; 32]>,
    }

    fn node(n: u8) -> TestNode {
        let (secret, key) = generate_key();
        TestNode {
            hop: NodeHop {
                id: Address([n; 32]),
                key,
            },
            secret,
        }
    }

    fn hops(nodes: &[TestNode]) -> Vec<NodeHop> {
        nodes.iter().map(|n| n.hop).collect()
    }

    /// Relays 1, 2, 3 and recipient 9.
    fn network() -> (Vec<TestNode>, TestNode) {
        ((1..=3).map(node).collect(), node(9))
    }

    #[test]
    fn sizes_are_what_the_docs_say() {
        assert_eq!(HEADER_SIZE, 348);
        assert_eq!(PAYLOAD_SIZE, 4096 - 348);
        assert_eq!(MAX_PLAINTEXT, 4096 - 348 - 17);
        assert_eq!(REPLY_BLOCK_SIZE, 348 + 32 + 16);
        assert_eq!(MAX_RELAYS, 4);
    }

    #[test]
    fn wrap_through_three_relays_and_peel_at_each() {
        let (relays, to) = network();
        let packet = Sphinx.wrap(&hops(&relays), &to.hop, b"hello bob").unwrap();
        assert_eq!(packet.as_bytes().len(), PACKET_SIZE);
        let mut p = packet;
        let mut tags = Vec::new();
        for (i, relay) in relays.iter().enumerate() {
            match Sphinx.peel(&p, &relay.secret).unwrap() {
                Peeled::Forward {
                    next,
                    packet,
                    replay_tag,
                } => {
                    let expected = relays.get(i + 1).map(|r| r.hop.id).unwrap_or(to.hop.id);
                    assert_eq!(next, expected, "hop {i} learns only the next hop");
                    assert_eq!(packet.as_bytes().len(), PACKET_SIZE, "same size at hop {i}");
                    assert_ne!(packet, p);
                    tags.push(replay_tag);
                    p = packet;
                }
                other => panic!("hop {i}: {other:?}"),
            }
        }
        match Sphinx.peel(&p, &to.secret).unwrap() {
            Peeled::Deliver {
                destination,
                payload,
                replay_tag,
            } => {
                assert_eq!(destination, to.hop.id);
                assert_eq!(payload, b"hello bob");
                tags.push(replay_tag);
            }
            other => panic!("recipient: {other:?}"),
        }
        tags.sort();
        tags.dedup();
        assert_eq!(tags.len(), 4, "every hop's tag differs");
    }

    #[test]
    fn no_relays_is_a_direct_packet_and_too_many_are_refused() {
        let to = node(9);
        let p = Sphinx.wrap(&[], &to.hop, b"x").unwrap();
        assert!(matches!(
            Sphinx.peel(&p, &to.secret).unwrap(),
            Peeled::Deliver { payload, .. } if payload == b"x"
        ));
        let relays: Vec<_> = (1..=5).map(node).collect();
        assert_eq!(
            Sphinx.wrap(&hops(&relays), &to.hop, b"x"),
            Err(OnionError::RouteLength(6))
        );
        let relays: Vec<_> = (1..=4).map(node).collect();
        assert!(Sphinx.wrap(&hops(&relays), &to.hop, b"x").is_ok());
    }

    #[test]
    fn largest_payload_fits_and_one_more_byte_is_refused() {
        let (relays, to) = network();
        let big = vec![7u8; MAX_PLAINTEXT];
        let mut p = Sphinx.wrap(&hops(&relays), &to.hop, &big).unwrap();
        for r in &relays {
            match Sphinx.peel(&p, &r.secret).unwrap() {
                Peeled::Forward { packet, .. } => p = packet,
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            Sphinx.peel(&p, &to.secret).unwrap(),
            Peeled::Deliver { payload, .. } if payload == big
        ));
        let over = vec![7u8; MAX_PLAINTEXT + 1];
        assert_eq!(
            Sphinx.wrap(&hops(&relays), &to.hop, &over),
            Err(OnionError::TooLong {
                got: MAX_PLAINTEXT + 1
            })
        );
    }

    /// The packet as it arrives at each hop, the recipient last.
    fn arrivals(relays: &[TestNode], to: &TestNode, payload: &[u8]) -> Vec<Packet> {
        let mut out = vec![Sphinx.wrap(&hops(relays), &to.hop, payload).unwrap()];
        for r in relays {
            match Sphinx.peel(out.last().unwrap(), &r.secret).unwrap() {
                Peeled::Forward { packet, .. } => out.push(packet),
                other => panic!("{other:?}"),
            }
        }
        out
    }

    fn flip(p: &Packet, at: usize) -> Packet {
        let mut b = p.as_bytes().to_vec();
        b[at] ^= 0x01;
        Packet::from_bytes(&b).unwrap()
    }

    #[test]
    fn a_changed_header_is_refused_at_the_hop_that_gets_it() {
        let (relays, to) = network();
        let arriving = arrivals(&relays, &to, b"hello");
        let keys: Vec<&[u8; 32]> = relays
            .iter()
            .map(|r| &*r.secret)
            .chain(std::iter::once(&*to.secret))
            .collect();
        // The group element, the MAC, the routing information.
        for at in [0, 31, 32, 47, 48, 100, HEADER_SIZE - 1] {
            for (hop, (p, key)) in arriving.iter().zip(&keys).enumerate() {
                assert_eq!(
                    Sphinx.peel(&flip(p, at), key),
                    Err(OnionError::Header),
                    "byte {at} at hop {hop}"
                );
            }
        }
    }

    #[test]
    fn a_changed_payload_is_refused_by_the_recipient() {
        let (relays, to) = network();
        let arriving = arrivals(&relays, &to, b"hello");
        for (hop, p) in arriving.iter().enumerate() {
            for at in [HEADER_SIZE, HEADER_SIZE + 1000, PACKET_SIZE - 1] {
                let mut p = flip(p, at);
                for r in &relays[hop..] {
                    match Sphinx.peel(&p, &r.secret).unwrap() {
                        Peeled::Forward { packet, .. } => p = packet,
                        other => panic!("{other:?}"),
                    }
                }
                assert_eq!(
                    Sphinx.peel(&p, &to.secret),
                    Err(OnionError::Payload),
                    "payload byte {at} changed before hop {hop}"
                );
            }
        }
    }

    #[test]
    fn the_wrong_key_is_refused() {
        let (relays, to) = network();
        let p = Sphinx.wrap(&hops(&relays), &to.hop, b"hello").unwrap();
        assert_eq!(Sphinx.peel(&p, &to.secret), Err(OnionError::Header));
        assert_eq!(Sphinx.peel(&p, &relays[1].secret), Err(OnionError::Header));
    }

    #[test]
    fn any_other_size_is_refused() {
        for len in [0, 1, HEADER_SIZE, PACKET_SIZE - 1, PACKET_SIZE + 1, 65_535] {
            assert_eq!(
                Packet::from_bytes(&vec![0u8; len]),
                Err(OnionError::WrongSize {
                    got: len,
                    expected: PACKET_SIZE
                })
            );
        }
        assert!(Packet::from_bytes(&[0u8; PACKET_SIZE]).is_ok());
    }

    fn tag(p: Peeled) -> ReplayTag {
        match p {
            Peeled::Forward { replay_tag, .. }
            | Peeled::Deliver { replay_tag, .. }
            | Peeled::Reply { replay_tag, .. } => replay_tag,
        }
    }

    #[test]
    fn a_replay_has_the_same_tag_and_other_packets_do_not() {
        let (relays, to) = network();
        let p = Sphinx.wrap(&hops(&relays), &to.hop, b"hello").unwrap();
        let replayed = Packet::from_bytes(p.as_bytes()).unwrap();
        let first = tag(Sphinx.peel(&p, &relays[0].secret).unwrap());
        let again = tag(Sphinx.peel(&replayed, &relays[0].secret).unwrap());
        assert_eq!(first, again);
        // The same payload on the same route is another packet, another tag.
        let q = Sphinx.wrap(&hops(&relays), &to.hop, b"hello").unwrap();
        let other = tag(Sphinx.peel(&q, &relays[0].secret).unwrap());
        assert_ne!(first, other);
    }

    #[test]
    fn reply_block_round_trip() {
        let origin = node(7);
        let relays: Vec<_> = (1..=3).map(node).collect();
        let (block, recovery) = Sphinx.reply_block(&hops(&relays), &origin.hop).unwrap();
        assert_eq!(block.as_bytes().len(), REPLY_BLOCK_SIZE);
        assert_eq!(block.first_hop(), relays[0].hop.id);
        // The block travels inside the letter; the recovery stays on disk.
        let block = ReplyBlock::from_bytes(block.as_bytes()).unwrap();
        let recovery = ReplyRecovery::from_bytes(&recovery.to_bytes()).unwrap();

        let (first, mut p) = Sphinx.use_reply_block(&block, b"receipt").unwrap();
        assert_eq!(first, relays[0].hop.id);
        assert_eq!(p.as_bytes().len(), PACKET_SIZE);
        for (i, r) in relays.iter().enumerate() {
            match Sphinx.peel(&p, &r.secret).unwrap() {
                Peeled::Forward { next, packet, .. } => {
                    let expected = relays.get(i + 1).map(|r| r.hop.id).unwrap_or(origin.hop.id);
                    assert_eq!(next, expected);
                    p = packet;
                }
                other => panic!("{other:?}"),
            }
        }
        match Sphinx.peel(&p, &origin.secret).unwrap() {
            Peeled::Reply {
                destination,
                reply_id,
                sealed,
                ..
            } => {
                assert_eq!(destination, origin.hop.id);
                assert_eq!(reply_id, recovery.id());
                assert_eq!(recovery.open(&sealed).unwrap(), b"receipt");
                // Another block's recovery does not open it.
                let (_, wrong) = Sphinx.reply_block(&hops(&relays), &origin.hop).unwrap();
                assert_eq!(wrong.open(&sealed), Err(OnionError::Payload));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reply_block_decoding_is_bounded() {
        for len in [0, 1, REPLY_BLOCK_SIZE - 1, REPLY_BLOCK_SIZE + 16, 100_000] {
            assert!(matches!(
                ReplyBlock::from_bytes(&vec![0u8; len]),
                Err(OnionError::WrongReplyBlockSize { .. })
            ));
        }
        for len in [0, 15, 16, 17, 33, MAX_REPLY_RECOVERY_SIZE + 1, 100_000] {
            assert!(ReplyRecovery::from_bytes(&vec![1u8; len]).is_err(), "{len}");
        }
    }

    #[test]
    fn a_block_never_carries_more_than_the_last_hop_seed() {
        // The recoverable block is header, first hop, one seed: no hop's
        // payload key but the last one is in what the recipient gets.
        let origin = node(7);
        let relays: Vec<_> = (1..=4).map(node).collect();
        let (block, recovery) = Sphinx.reply_block(&hops(&relays), &origin.hop).unwrap();
        assert_eq!(block.as_bytes().len(), REPLY_BLOCK_SIZE);
        assert_eq!(recovery.to_bytes().len(), reply_recovery_size(5));
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// Random bytes of any length never panic and are refused.
            #[test]
            fn random_bytes_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..9000)) {
                let key = [3u8; 32];
                match Packet::from_bytes(&bytes) {
                    Err(OnionError::WrongSize { got, .. }) => prop_assert_eq!(got, bytes.len()),
                    Err(e) => prop_assert!(false, "unexpected {e}"),
                    Ok(p) => prop_assert!(Sphinx.peel(&p, &key).is_err()),
                }
                prop_assert!(ReplyBlock::from_bytes(&bytes).is_err() || bytes.len() == REPLY_BLOCK_SIZE);
                let _ = ReplyRecovery::from_bytes(&bytes);
            }

            /// Random bytes of exactly the packet size are refused too.
            #[test]
            fn random_packets_are_refused(seed in any::<[u8; 32]>(), fill in any::<u8>()) {
                let mut bytes = vec![fill; PACKET_SIZE];
                bytes[..32].copy_from_slice(&seed);
                let p = Packet::from_bytes(&bytes).unwrap();
                prop_assert_eq!(Sphinx.peel(&p, &seed), Err(OnionError::Header));
            }
        }
    }
}
