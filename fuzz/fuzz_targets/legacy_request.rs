//! The seed's text protocol: `legacy_session::parse` on arbitrary bytes
//! (what anyone on the legacy port sends, at most `MAX_REQUEST` per read)
//! never panics, and a parsed push keeps to its grammar.
#![no_main]

use hermes::actors::legacy_session::{parse, LegacyRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        None | Some(LegacyRequest::Pull) => {}
        Some(LegacyRequest::Push { ip, text }) => {
            assert!(data.starts_with(b"PUSH IP:"), "push parsed from {data:?}");
            assert_eq!(ip.trim(), ip, "ip not trimmed");
            assert!(!ip.contains(" MSG:"), "ip holds the separator: {ip:?}");
            assert!(text.len() < data.len());
        }
    }
});
