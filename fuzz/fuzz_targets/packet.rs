//! A flooded packet addressed to this node, on arbitrary bytes: the input
//! behind the two bytes of a `LinkBody::Packet` frame goes through
//! `LinkFrame::decode`, then `routing::accept::open_packet` (HPKE open of
//! whatever sender key, encapsulated key and ciphertext the peer chose, then
//! `Letter::decode` and the recipient's checks), as the router does for every
//! packet naming it.
//!
//! Never panics; an oversized frame is refused as `TooLarge`; a decoded
//! packet keeps to the hop and size limits. A packet that opens (only the
//! seeds, real packets sealed to this node, can) matches its letter, and stops
//! opening when its id, expiry or any sealed byte changes; hops and attempt
//! are no input.
#![no_main]

use std::sync::OnceLock;

use hermes::crypto::Identity;
use hermes::routing::accept::{open_packet, Header};
use hermes::wire::link::{LinkBody, LinkFrame, LINK_VERSION, MAX_HOPS, MAX_LINK_FRAME};
use hermes::wire::message::MAX_SEALED_BYTES;
use hermes::wire::WireError;
use libfuzzer_sys::fuzz_target;

include!("packet_node.rs");

/// The clock the seeds were made for (`examples/seeds.rs`), in seconds.
const NOW: u64 = 1_800_000_000;
/// The default longest time to live.
const MAX_TTL: u64 = 30 * 86_400;
/// Tag of `LinkBody::Packet` in postcard (its second variant).
const PACKET_TAG: u8 = 1;

fn me() -> &'static Identity {
    static ME: OnceLock<Identity> = OnceLock::new();
    ME.get_or_init(packet_node)
}

fuzz_target!(|data: &[u8]| {
    let mut bytes = Vec::with_capacity(data.len() + 2);
    bytes.extend_from_slice(&[LINK_VERSION, PACKET_TAG]);
    bytes.extend_from_slice(data);
    let decoded = LinkFrame::decode(&bytes);
    if bytes.len() > MAX_LINK_FRAME {
        assert!(
            matches!(decoded, Err(WireError::TooLarge { .. })),
            "{}-byte frame not refused for its size",
            bytes.len()
        );
        return;
    }
    let Ok(frame) = decoded else {
        return;
    };
    let LinkBody::Packet(p) = frame.body else {
        panic!("a packet frame decoded as {frame:?}");
    };
    assert!(p.hops_left <= MAX_HOPS, "hop limit not enforced");
    assert!(
        p.sealed.ciphertext.len() <= MAX_SEALED_BYTES,
        "size limit not enforced"
    );

    let header = Header {
        id: p.id,
        recipient: p.recipient,
        expires_at: p.expires_at,
    };
    let Ok(ok) = open_packet(me(), header, &p.sealed, NOW * 1000, MAX_TTL) else {
        return;
    };
    assert_eq!(ok.letter.id, p.id);
    assert_eq!(ok.letter.recipient, me().address());
    assert_eq!(ok.letter.expires_at, p.expires_at);
    let mut h = header;
    h.expires_at ^= 1;
    assert!(
        open_packet(me(), h, &p.sealed, NOW * 1000, MAX_TTL).is_err(),
        "opened with another expiry"
    );
    let mut h = header;
    h.id.0[0] ^= 1;
    assert!(
        open_packet(me(), h, &p.sealed, NOW * 1000, MAX_TTL).is_err(),
        "opened under another id"
    );
    let mut s = p.sealed.clone();
    if let Some(b) = s.ciphertext.last_mut() {
        *b ^= 1;
    }
    assert!(
        open_packet(me(), header, &s, NOW * 1000, MAX_TTL).is_err(),
        "opened with a changed ciphertext"
    );
});
