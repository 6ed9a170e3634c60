//! `Letter::decode` on arbitrary bytes (what a sealed message opens to: only
//! an authenticated sender can choose them, but any node can send one): it
//! never panics, and what it accepts round-trips through `encode`.
#![no_main]

use hermes::wire::message::Letter;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(letter) = Letter::decode(data) else {
        return;
    };
    let bytes = letter
        .encode()
        .unwrap_or_else(|e| panic!("decoded letter does not re-encode: {e}: {letter:?}"));
    let again = Letter::decode(&bytes)
        .unwrap_or_else(|e| panic!("re-encoded letter does not decode: {e}: {letter:?}"));
    assert_eq!(again, letter, "round trip changed the letter");
});
