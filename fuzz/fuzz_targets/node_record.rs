//! Node records on arbitrary bytes: a `SignedRecord` as it arrives in a
//! link's first frame (`LinkBody::Record`, decoded by `LinkFrame::decode`),
//! then `SignedRecord::verify`.
//!
//! Decoding and verifying never panic (whatever the address, key, IP or
//! time); a record that decodes re-encodes and decodes back equal; a record
//! that verifies stops verifying when any signed field changes (only the
//! seeds, signed by real keys, reach that branch: nobody can forge one).
#![no_main]

use hermes::crypto::record::MAX_CLOCK_SKEW_SECS;
use hermes::crypto::{RecordError, SignedRecord};
use hermes::wire::link::{LinkBody, LinkFrame, LINK_VERSION, MAX_LINK_FRAME};
use hermes::wire::WireError;
use libfuzzer_sys::fuzz_target;

/// The clock the seeds were signed against (`examples/seeds.rs`): fixed, so
/// that a run does not depend on the day.
const NOW: u64 = 1_800_000_000;
/// Tag of `LinkBody::Record` in postcard (its first variant).
const RECORD_TAG: u8 = 0;

fuzz_target!(|data: &[u8]| {
    let mut bytes = Vec::with_capacity(data.len() + 2);
    bytes.extend_from_slice(&[LINK_VERSION, RECORD_TAG]);
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
    let LinkBody::Record(rec) = frame.body.clone() else {
        panic!("a record frame decoded as {frame:?}");
    };
    let again = frame
        .encode()
        .ok()
        .and_then(|b| LinkFrame::decode(&b).ok())
        .unwrap_or_else(|| panic!("decoded record does not round-trip: {rec:?}"));
    assert_eq!(again, frame, "round trip changed the record");

    // Verifying never panics, at any clock.
    let _ = rec.verify(0);
    let _ = rec.verify(u64::MAX - MAX_CLOCK_SKEW_SECS);
    match rec.verify(NOW) {
        Ok(()) => assert!(rec.record.time <= NOW + MAX_CLOCK_SKEW_SECS),
        Err(RecordError::FromTheFuture(s)) => assert!(s > MAX_CLOCK_SKEW_SECS),
        Err(_) => return,
    }
    // A record whose signature holds: every signed field is bound to it.
    let mutants: [fn(&mut SignedRecord); 6] = [
        |r| r.record.address.0[0] ^= 1,
        |r| r.record.kem_key[31] ^= 1,
        |r| r.record.listen.set_port(r.record.listen.port() ^ 1),
        |r| r.record.relay = !r.record.relay,
        |r| r.record.time ^= 1,
        |r| r.signature[0] ^= 1,
    ];
    for m in mutants {
        let mut forged = rec.clone();
        m(&mut forged);
        assert!(
            forged.verify(u64::MAX - MAX_CLOCK_SKEW_SECS).is_err(),
            "a changed record still verifies: {forged:?}"
        );
    }
});
