//! What a peeled onion packet comes to at this node, without I/O.
//!
//! The Router peels a packet on a worker thread with its packet keys
//! ([`crate::crypto::keyring::PacketKeys::peel`]), checks its replay tag in
//! the persistent store, and hands the layer it peeled to [`arrival_of`]:
//! a packet to pass on, a part of a message to this node (with the reply
//! block its receipt goes back over), or a reply to one of this node's own
//! packets. [`crate::routing::policy::Policy::on_arrival`] decides what is
//! done with it.
//!
//! A node with `relay = false` carries nobody's packets: a layer that says
//! "pass on" is refused before its replay tag is stored ([`needs_tag`]), so
//! such a node keeps no tags for packets it drops.

use crate::crypto::sphinx::{Packet, Peeled, ReplyBlock, ReplyId, SealedReply};
use crate::crypto::Address;
use crate::routing::onion::fragments::Part;
use crate::wire::onion::{PartPayload, MAX_PART_BYTES};

/// What peeling one onion packet came to.
#[derive(Debug)]
pub enum Arrival {
    /// A layer for a relay: pass `packet` on to `next`.
    Forward { next: Address, packet: Packet },
    /// The last layer: a part of a message to this node, and the reply
    /// block its receipt goes back over.
    Deliver { part: Part, reply: ReplyBlock },
    /// A reply that came back over one of this node's reply blocks.
    Reply { id: ReplyId, sealed: SealedReply },
    /// Its replay tag was seen before under its key.
    Replay,
    /// Dropped, and why (not counted as a replay).
    Refused(String),
}

/// Whether a peeled layer's replay tag must be checked and stored: not for
/// a layer to pass on at a node that relays nothing (it is dropped anyway).
pub fn needs_tag(peeled: &Peeled, relay: bool) -> bool {
    relay || !matches!(peeled, Peeled::Forward { .. })
}

/// The replay tag of a peeled layer.
pub fn tag_of(peeled: &Peeled) -> [u8; 32] {
    match peeled {
        Peeled::Forward { replay_tag, .. }
        | Peeled::Deliver { replay_tag, .. }
        | Peeled::Reply { replay_tag, .. } => replay_tag.0,
    }
}

/// Decodes a peeled layer (its tag already checked) for node `me`.
pub fn arrival_of(peeled: Peeled, me: &Address) -> Arrival {
    match peeled {
        Peeled::Forward { next, packet, .. } => Arrival::Forward { next, packet },
        Peeled::Deliver {
            destination,
            payload,
            ..
        } => {
            if destination != *me {
                return Arrival::Refused("delivered to another node".into());
            }
            let p = match PartPayload::decode(&payload) {
                Ok(p) => p,
                Err(e) => return Arrival::Refused(format!("payload: {e}")),
            };
            let reply = match ReplyBlock::from_bytes(&p.reply) {
                Ok(b) => b,
                Err(e) => return Arrival::Refused(format!("reply block: {e}")),
            };
            match Part::decode(&p.part, MAX_PART_BYTES) {
                Ok(part) => Arrival::Deliver { part, reply },
                Err(e) => Arrival::Refused(format!("part: {e}")),
            }
        }
        Peeled::Reply {
            destination,
            reply_id,
            sealed,
            ..
        } => {
            if destination != *me {
                return Arrival::Refused("a reply for another node".into());
            }
            Arrival::Reply {
                id: reply_id,
                sealed,
            }
        }
    }
}
