//! An onion packet from any peer, on arbitrary bytes: `Packet::from_bytes`
//! then `Sphinx::peel` with the fixed key of `fuzz_targets/onion_node.rs`, as
//! a relay (or the recipient) does for every packet it is handed.
//!
//! Never panics; any input that is not exactly `PACKET_SIZE` bytes is refused
//! as `WrongSize`; a packet that peels (only the seeds, real packets through
//! that node, can) is forwarded at the same size, to the hop it names, and
//! stops peeling when a header byte changes; peeling the same bytes twice
//! gives the same replay tag. The same bytes are also read as a reply block
//! and a reply recovery, which never panic and accept only their exact sizes.
#![no_main]

use hermes::crypto::sphinx::{
    OnionError, OnionFormat, Packet, Peeled, ReplyBlock, ReplyRecovery, Sphinx, PACKET_SIZE,
    REPLY_BLOCK_SIZE,
};
use libfuzzer_sys::fuzz_target;

include!("onion_node.rs");

fn tag(p: &Peeled) -> [u8; 32] {
    match p {
        Peeled::Forward { replay_tag, .. }
        | Peeled::Deliver { replay_tag, .. }
        | Peeled::Reply { replay_tag, .. } => replay_tag.0,
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(block) = ReplyBlock::from_bytes(data) {
        assert_eq!(data.len(), REPLY_BLOCK_SIZE);
        let _ = Sphinx.use_reply_block(&block, b"receipt");
    }
    if let Ok(recovery) = ReplyRecovery::from_bytes(data) {
        assert_eq!(recovery.to_bytes().as_slice(), data);
    }
    let packet = match Packet::from_bytes(data) {
        Ok(p) => p,
        Err(e) => {
            assert_eq!(
                e,
                OnionError::WrongSize {
                    got: data.len(),
                    expected: PACKET_SIZE
                }
            );
            return;
        }
    };
    let Ok(peeled) = Sphinx.peel(&packet, &ONION_NODE_KEY) else {
        return;
    };
    if let Peeled::Forward { next, packet: p, .. } = &peeled {
        assert_eq!(p.as_bytes().len(), PACKET_SIZE, "forwarded at another size");
        assert_ne!(next.0, ONION_NODE_ID, "a seed routes back to the node");
    }
    let again = Sphinx.peel(&packet, &ONION_NODE_KEY).expect("peels twice");
    assert_eq!(tag(&peeled), tag(&again), "replay tag changed");
    let mut changed = data.to_vec();
    changed[40] ^= 1;
    let changed = Packet::from_bytes(&changed).expect("same size");
    assert_eq!(
        Sphinx.peel(&changed, &ONION_NODE_KEY),
        Err(OnionError::Header),
        "peeled with a changed header"
    );
});
