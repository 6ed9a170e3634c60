//! Receipts on arbitrary bytes: a `Receipt` as it is flooded back
//! (`LinkBody::Receipt`, decoded by `LinkFrame::decode`), then
//! `Receipt::verify`.
//!
//! Decoding and verifying never panic; a receipt that decodes re-encodes and
//! decodes back equal, and keeps to the hop limit; with a token key that
//! sealed nothing it proves delivery (`Receipt::proves_to`) exactly when its
//! signature verifies; the token is not signed (dropping or changing it
//! leaves a good signature good); a receipt that verifies
//! stops verifying when a signed field (id, recipient, expiry, signature)
//! changes, and still verifies when a
//! field relays may change (hops left) does (only the seeds, signed by real
//! keys, reach that branch).
#![no_main]

use hermes::crypto::ReceiptTokens;
use hermes::wire::link::{LinkBody, LinkFrame, Receipt, LINK_VERSION, MAX_HOPS, MAX_LINK_FRAME};
use hermes::wire::WireError;
use libfuzzer_sys::fuzz_target;

/// Tag of `LinkBody::Receipt` in postcard (its third variant).
const RECEIPT_TAG: u8 = 2;

fuzz_target!(|data: &[u8]| {
    let mut bytes = Vec::with_capacity(data.len() + 2);
    bytes.extend_from_slice(&[LINK_VERSION, RECEIPT_TAG]);
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
    let LinkBody::Receipt(receipt) = frame.body.clone() else {
        panic!("a receipt frame decoded as {frame:?}");
    };
    assert!(receipt.hops_left <= MAX_HOPS, "hop limit not enforced");
    let again = frame
        .encode()
        .ok()
        .and_then(|b| LinkFrame::decode(&b).ok())
        .unwrap_or_else(|| panic!("decoded receipt does not round-trip: {receipt:?}"));
    assert_eq!(again, frame, "round trip changed the receipt");

    // With a key that sealed nothing, only the signature can prove it.
    let nobody = ReceiptTokens::random();
    assert_eq!(receipt.proves_to(&nobody), receipt.verify());
    if !receipt.verify() {
        return;
    }
    // The token is not signed: a relay may drop or change it, and the
    // origin then checks the signature, which still holds.
    let mut stripped = receipt.clone();
    stripped.token = None;
    assert!(stripped.verify(), "dropping the token broke the signature");
    stripped.token = Some([0xa5; 32]);
    assert!(stripped.verify(), "changing the token broke the signature");
    let signed: [fn(&mut Receipt); 5] = [
        |r| r.id.0[0] ^= 1,
        |r| r.recipient.0[0] ^= 1,
        |r| r.expires_at ^= 1,
        |r| r.expires_at = r.expires_at.wrapping_add(1 << 40),
        |r| r.signature[0] ^= 1,
    ];
    for m in signed {
        let mut forged = receipt.clone();
        m(&mut forged);
        assert!(
            !forged.verify(),
            "a changed receipt still verifies: {forged:?}"
        );
    }
    let mut relayed = receipt.clone();
    relayed.hops_left = relayed.hops_left.wrapping_sub(1) % (MAX_HOPS + 1);
    assert!(relayed.verify(), "a relay's hop count broke the receipt");
});
