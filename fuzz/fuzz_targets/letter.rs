//! Letters on arbitrary bytes (what a sealed message opens to: only an
//! authenticated sender can choose them, but any node can send one).
//!
//! `Letter::decode` never panics, refuses an oversized letter as `TooLarge`,
//! and what it accepts (version 3 with its receipt token, or version 2
//! without one; text within `MAX_TEXT_BYTES`) round-trips through `encode`. The recipient's checks (`routing::accept::check_letter`,
//! against the header the letter itself names) never panic either; a letter
//! they accept is refused when sealed by another key, and every copy of it is
//! refused once its delivered mark runs out, so a replay can never land twice.
//! Only the seeds (records signed by real keys at `NOW`) reach acceptance;
//! the fuzzer then varies the sent time, expiry, text and address fields.
#![no_main]

use hermes::crypto::seal::Sealed;
use hermes::routing::accept::{check_letter, Header};
use hermes::wire::message::{
    Letter, LETTER_VERSION, LETTER_VERSION_NO_TOKEN, MAX_LETTER_BYTES, MAX_TEXT_BYTES,
};
use hermes::wire::WireError;
use libfuzzer_sys::fuzz_target;

/// The clock the seeds were made for (`examples/seeds.rs`), in seconds.
const NOW: u64 = 1_800_000_000;
/// Longest times to live tried: the default (30 days) and one hour.
const MAX_TTLS: [u64; 2] = [30 * 86_400, 3_600];

fuzz_target!(|data: &[u8]| {
    let decoded = Letter::decode(data);
    if data.len() > MAX_LETTER_BYTES {
        assert!(
            matches!(decoded, Err(WireError::TooLarge { .. })),
            "{}-byte letter not refused for its size",
            data.len()
        );
        return;
    }
    let Ok(letter) = decoded else {
        return;
    };
    // Version 3 always with its receipt token, version 2 (still read) never.
    match letter.version {
        LETTER_VERSION => assert!(letter.receipt_token.is_some(), "v3 without its token"),
        LETTER_VERSION_NO_TOKEN => assert!(letter.receipt_token.is_none(), "v2 with a token"),
        v => panic!("a letter of version {v} decoded"),
    }
    assert!(letter.text.len() <= MAX_TEXT_BYTES);
    let bytes = letter
        .encode()
        .unwrap_or_else(|e| panic!("decoded letter does not re-encode: {e}: {letter:?}"));
    let again = Letter::decode(&bytes)
        .unwrap_or_else(|e| panic!("re-encoded letter does not decode: {e}: {letter:?}"));
    assert_eq!(again, letter, "round trip changed the letter");

    let header = Header {
        id: letter.id,
        recipient: letter.recipient,
        expires_at: letter.expires_at,
    };
    let sealed = Sealed {
        sender_kem: letter.sender.record.kem_key,
        enc: [0; 32],
        ciphertext: Vec::new(),
    };
    for max_ttl in MAX_TTLS {
        for now_ms in [0, NOW * 1000, u64::MAX] {
            let Ok(ok) = check_letter(&letter, header, &sealed, now_ms, max_ttl) else {
                continue;
            };
            assert_eq!(ok.letter, letter);
            assert!(
                ok.mark_until >= letter.expires_at,
                "mark ends before expiry"
            );
            assert!(ok.mark_until >= now_ms / 1000, "mark already over");
            // (A mark past the end of a u64 of milliseconds never runs out.)
            if let Some(after) = ok
                .mark_until
                .checked_add(1)
                .and_then(|s| s.checked_mul(1000))
            {
                assert!(
                    check_letter(&letter, header, &sealed, after, max_ttl).is_err(),
                    "a copy is accepted after its delivered mark ran out: {letter:?}"
                );
            }
            let mut other = sealed.clone();
            other.sender_kem[0] ^= 1;
            assert!(
                check_letter(&letter, header, &other, now_ms, max_ttl).is_err(),
                "accepted from a key the sender's record does not name"
            );
        }
    }
});
