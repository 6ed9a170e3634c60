//! The local client protocol on arbitrary bytes: `decode::<Request>`,
//! `decode::<Response>` and the length-prefixed `read_frame::<_, Request>`
//! never panic (nor allocate past the frame limit), and what decodes
//! round-trips through `encode`.
#![no_main]

use std::io::Cursor;

use hermes::wire::client::{decode, encode, read_frame, Request, Response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = decode::<Request>(data) {
        let bytes = encode(&req)
            .unwrap_or_else(|e| panic!("decoded request does not re-encode: {e}: {req:?}"));
        assert_eq!(
            decode::<Request>(&bytes).as_ref(),
            Ok(&req),
            "request round trip changed it"
        );
    }
    if let Ok(resp) = decode::<Response>(data) {
        let bytes = encode(&resp)
            .unwrap_or_else(|e| panic!("decoded response does not re-encode: {e}: {resp:?}"));
        assert_eq!(
            decode::<Response>(&bytes).as_ref(),
            Ok(&resp),
            "response round trip changed it"
        );
    }
    // The same bytes as a stream of length-prefixed frames, read until the
    // first error (each frame consumes at least its 4-byte length).
    let mut cur = Cursor::new(data);
    while read_frame::<_, Request>(&mut cur).is_ok() {}
});
