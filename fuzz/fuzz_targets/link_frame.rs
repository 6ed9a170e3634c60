//! `LinkFrame::decode` on arbitrary bytes (what a peer sends inside a Noise
//! link): it never panics, and whatever it accepts re-encodes and decodes back
//! to the same frame.
#![no_main]

use hermes::wire::link::LinkFrame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = LinkFrame::decode(data) else {
        return;
    };
    let bytes = frame
        .encode()
        .unwrap_or_else(|e| panic!("decoded frame does not re-encode: {e}: {frame:?}"));
    // The canonical encoding is never longer than what was accepted.
    assert!(
        bytes.len() <= data.len(),
        "re-encoding grew: {} > {}",
        bytes.len(),
        data.len()
    );
    let again = LinkFrame::decode(&bytes)
        .unwrap_or_else(|e| panic!("re-encoded frame does not decode: {e}: {frame:?}"));
    assert_eq!(again, frame, "round trip changed the frame");
});
