//! The local client protocol on arbitrary bytes: `decode::<Request>`,
//! `decode::<Response>` and the length-prefixed `read_frame::<_, Request>`
//! never panic (nor allocate past the frame limit), and what decodes
//! round-trips through `encode`.
#![no_main]

use std::io::Cursor;

use hermes::wire::client::{
    decode, encode, read_frame, FrameIoError, Request, Response, MAX_CLIENT_FRAME,
};
use hermes::wire::WireError;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_CLIENT_FRAME {
        assert!(matches!(
            decode::<Request>(data),
            Err(WireError::TooLarge { .. })
        ));
    }
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
    // first error (each frame consumes at least its 4-byte length). A length
    // over the limit is refused before anything is read or allocated.
    let mut cur = Cursor::new(data);
    loop {
        let at = usize::try_from(cur.position()).unwrap_or(usize::MAX);
        let claimed = data
            .get(at..)
            .and_then(|rest| rest.first_chunk::<4>())
            .map(|len| u32::from_be_bytes(*len) as usize);
        let r = read_frame::<_, Request>(&mut cur);
        if claimed.is_some_and(|len| len > MAX_CLIENT_FRAME) {
            assert!(
                matches!(r, Err(FrameIoError::Wire(WireError::TooLarge { .. }))),
                "a {claimed:?}-byte client frame was not refused for its size"
            );
            assert_eq!(
                cur.position() as usize,
                at + 4,
                "read past an oversized length"
            );
        }
        if r.is_err() {
            break;
        }
    }
});
