//! What a recipient or origin finds inside a peeled onion packet, on
//! arbitrary bytes: `PartPayload::decode` (a part and its reply block, at a
//! recipient), then `Part::decode` and `ReplyBlock::from_bytes` on what it
//! holds; and `ReplyPayload::decode` (a receipt, at an origin).
//!
//! Never panics; anything over one packet's plaintext is refused; a payload
//! that decodes has a reply block of exactly `REPLY_BLOCK_SIZE` bytes and a
//! part within `MAX_PART_BYTES`, and re-encodes to bytes that decode to it; a part
//! that decodes re-encodes to the same bytes.
#![no_main]

use hermes::crypto::sphinx::{ReplyBlock, MAX_PLAINTEXT, REPLY_BLOCK_SIZE};
use hermes::routing::onion::fragments::Part;
use hermes::wire::onion::{PartPayload, ReplyPayload, MAX_PART_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match PartPayload::decode(data) {
        Ok(p) => {
            assert!(data.len() <= MAX_PLAINTEXT);
            assert_eq!(p.reply.len(), REPLY_BLOCK_SIZE);
            assert!(p.part.len() <= MAX_PART_BYTES);
            let again = p.encode().expect("a decoded payload encodes");
            assert_eq!(PartPayload::decode(&again).as_ref(), Ok(&p));
            let _ = ReplyBlock::from_bytes(&p.reply);
            if let Ok(part) = Part::decode(&p.part, MAX_PART_BYTES) {
                assert_eq!(part.encode(), p.part);
            }
        }
        Err(_) => {}
    }
    if let Ok(r) = ReplyPayload::decode(data) {
        assert!(data.len() <= MAX_PLAINTEXT);
        let bytes = r.encode().expect("a decoded reply encodes");
        assert_eq!(ReplyPayload::decode(&bytes).as_ref(), Ok(&r));
    }
});
