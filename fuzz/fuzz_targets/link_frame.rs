//! `LinkFrame::decode` on arbitrary bytes (what a peer sends inside a Noise
//! link): it never panics, refuses a frame over `MAX_LINK_FRAME` as
//! `TooLarge`, and whatever it accepts re-encodes and decodes back
//! to the same frame.
#![no_main]

use hermes::wire::link::{LinkFrame, MAX_LINK_FRAME};
use hermes::wire::WireError;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let decoded = LinkFrame::decode(data);
    if data.len() > MAX_LINK_FRAME {
        assert!(
            matches!(decoded, Err(WireError::TooLarge { .. })),
            "{}-byte frame not refused for its size",
            data.len()
        );
        return;
    }
    let Ok(frame) = decoded else {
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
