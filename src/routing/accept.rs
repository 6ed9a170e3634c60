//! Accepting a packet addressed to this node.
//!
//! A letter is accepted only when all of this holds:
//!
//! 1. it opens under this node's key with the clear header (id, recipient,
//!    expiry) as additional data, so the header is the one the sender sealed;
//! 2. the letter inside names the same id, this node, and the same expiry;
//! 3. the sender's signed record verifies and names the key that sealed it;
//! 4. its sent time is not in the future (beyond [`MAX_CLOCK_SKEW_SECS`]) and
//!    not older than `max_ttl`, and its expiry is in the future and no later
//!    than sent time + `max_ttl`.
//!
//! The delivered mark of an accepted letter is kept until sent time +
//! `max_ttl` (+ the clock skew), whatever any header says: after that, every
//! copy of it is refused by rule 4, so a replay can never land twice.
//! `hops_left` and `attempt` are no input here at all.

use crate::crypto::identity::Identity;
use crate::crypto::record::MAX_CLOCK_SKEW_SECS;
use crate::crypto::seal::{self, Sealed};
use crate::crypto::Address;
use crate::wire::message::{seal_aad, Letter, LETTER_VERSION, LETTER_VERSION_NO_TOKEN};
use crate::wire::MessageId;

/// Why a packet addressed to this node was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    #[error("does not open: not for us, altered on the way, or not from the key it names")]
    DoesNotOpen,
    #[error("letter does not decode: {0}")]
    Malformed(String),
    #[error("letter does not match its header")]
    HeaderMismatch,
    #[error("sender record: {0}")]
    SenderRecord(String),
    #[error("sender record names another key than the one that sealed it")]
    SenderKey,
    #[error("sent {0} s in the future")]
    FromTheFuture(u64),
    #[error("sent longer ago than the longest time to live")]
    TooOld,
    #[error("expired")]
    Expired,
    #[error("expiry lies beyond sent time + the longest time to live")]
    ExpiryTooFar,
}

/// An accepted letter, and until when (Unix seconds) its id must be kept as
/// delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub letter: Letter,
    pub mark_until: u64,
}

/// The clear header of a packet, as it arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub id: MessageId,
    pub recipient: Address,
    pub expires_at: u64,
}

/// Opens `sealed` (addressed to `me` by `header`) and applies every check of
/// the [module docs](self) at time `now_ms` with the longest time to live
/// `max_ttl_secs`. CPU-heavy (one HPKE open): run it off the event loop.
pub fn open_packet(
    me: &Identity,
    header: Header,
    sealed: &Sealed,
    now_ms: u64,
    max_ttl_secs: u64,
) -> Result<Accepted, RejectReason> {
    if header.recipient != me.address() {
        return Err(RejectReason::DoesNotOpen);
    }
    let aad = seal_aad(&header.id, &header.recipient, header.expires_at);
    let plain = seal::open(me, sealed, &aad).map_err(|_| RejectReason::DoesNotOpen)?;
    let letter = Letter::decode(&plain).map_err(|e| RejectReason::Malformed(e.to_string()))?;
    check_letter(&letter, header, sealed, now_ms, max_ttl_secs)
}

/// The checks after opening (rules 2-4).
pub fn check_letter(
    letter: &Letter,
    header: Header,
    sealed: &Sealed,
    now_ms: u64,
    max_ttl_secs: u64,
) -> Result<Accepted, RejectReason> {
    // Both versions decode only with their token or without it, as they must.
    if !(letter.version == LETTER_VERSION || letter.version == LETTER_VERSION_NO_TOKEN)
        || letter.id != header.id
        || letter.recipient != header.recipient
        || letter.expires_at != header.expires_at
    {
        return Err(RejectReason::HeaderMismatch);
    }
    let now = now_ms / 1000;
    letter
        .sender
        .verify_cached(now)
        .map_err(|e| RejectReason::SenderRecord(e.to_string()))?;
    if letter.sender.record.kem_key != sealed.sender_kem {
        return Err(RejectReason::SenderKey);
    }
    let sent = letter.sent_ms / 1000;
    if sent > now.saturating_add(MAX_CLOCK_SKEW_SECS) {
        return Err(RejectReason::FromTheFuture(sent - now));
    }
    if now > sent.saturating_add(max_ttl_secs) {
        return Err(RejectReason::TooOld);
    }
    if letter.expires_at <= now {
        return Err(RejectReason::Expired);
    }
    // Rounded up: the sender computes expiry from milliseconds.
    if letter.expires_at > sent.saturating_add(max_ttl_secs).saturating_add(1) {
        return Err(RejectReason::ExpiryTooFar);
    }
    Ok(Accepted {
        letter: letter.clone(),
        mark_until: mark_until(letter.sent_ms, max_ttl_secs),
    })
}

/// Until when a letter sent at `sent_ms` must be remembered as delivered:
/// past that, rule 4 refuses every copy of it by itself.
pub fn mark_until(sent_ms: u64, max_ttl_secs: u64) -> u64 {
    (sent_ms / 1000)
        .saturating_add(max_ttl_secs)
        .saturating_add(MAX_CLOCK_SKEW_SECS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SignedRecord;
    use proptest::prelude::*;

    const DAY: u64 = 86_400;
    const MAX_TTL: u64 = 30 * DAY;
    const NOW_MS: u64 = 1_800_000_000_000;

    struct Fixture {
        alice: Identity,
        bob: Identity,
        header: Header,
        sealed: Sealed,
    }

    fn seal_letter(alice: &Identity, bob: &Identity, letter: &Letter, header: Header) -> Sealed {
        let aad = seal_aad(&header.id, &header.recipient, header.expires_at);
        seal::seal(alice, &bob.kem_public(), &aad, &letter.encode().unwrap()).unwrap()
    }

    fn letter(alice: &Identity, bob: &Identity, sent_ms: u64, expires_at: u64) -> Letter {
        Letter {
            version: LETTER_VERSION,
            id: MessageId([7; 16]),
            recipient: bob.address(),
            sender: SignedRecord::sign(
                alice,
                "127.0.0.2:58008".parse().unwrap(),
                true,
                sent_ms / 1000,
            ),
            sent_ms,
            expires_at,
            text: "hello".into(),
            receipt_token: Some([3; 32]),
        }
    }

    fn fixture(sent_ms: u64, expires_at: u64) -> Fixture {
        let (alice, bob) = (Identity::generate(), Identity::generate());
        let l = letter(&alice, &bob, sent_ms, expires_at);
        let header = Header {
            id: l.id,
            recipient: bob.address(),
            expires_at,
        };
        let sealed = seal_letter(&alice, &bob, &l, header);
        Fixture {
            alice,
            bob,
            header,
            sealed,
        }
    }

    #[test]
    fn genuine_letter_is_accepted_and_marked_until_sent_plus_max_ttl() {
        let f = fixture(NOW_MS, NOW_MS / 1000 + 7 * DAY);
        let a = open_packet(&f.bob, f.header, &f.sealed, NOW_MS, MAX_TTL).unwrap();
        assert_eq!(a.letter.text, "hello");
        assert_eq!(a.mark_until, NOW_MS / 1000 + MAX_TTL + MAX_CLOCK_SKEW_SECS);
        // The mark does not depend on the expiry the header names.
        let g = fixture(NOW_MS, NOW_MS / 1000 + 60);
        let b = open_packet(&g.bob, g.header, &g.sealed, NOW_MS, MAX_TTL).unwrap();
        assert_eq!(b.mark_until, a.mark_until);
    }

    #[test]
    fn times_are_checked() {
        let now = NOW_MS / 1000;
        // Sent too long ago: a replay after its mark could have been swept.
        let f = fixture(NOW_MS - (MAX_TTL + 10) * 1000, now + 60);
        assert_eq!(
            open_packet(&f.bob, f.header, &f.sealed, NOW_MS, MAX_TTL),
            Err(RejectReason::TooOld)
        );
        // From the future.
        let f = fixture(NOW_MS + 3_600_000, now + 7200);
        assert!(matches!(
            open_packet(&f.bob, f.header, &f.sealed, NOW_MS, MAX_TTL),
            Err(RejectReason::FromTheFuture(_) | RejectReason::SenderRecord(_))
        ));
        // Expired.
        let f = fixture(NOW_MS - 120_000, now - 60);
        assert_eq!(
            open_packet(&f.bob, f.header, &f.sealed, NOW_MS, MAX_TTL),
            Err(RejectReason::Expired)
        );
        // Expiry beyond sent + max: it would outlive its mark.
        let f = fixture(NOW_MS, now + MAX_TTL + 10);
        assert_eq!(
            open_packet(&f.bob, f.header, &f.sealed, NOW_MS, MAX_TTL),
            Err(RejectReason::ExpiryTooFar)
        );
    }

    #[test]
    fn a_letter_whose_inside_disagrees_with_its_seal_is_refused() {
        // The sender (not a relay) seals a header that its letter contradicts.
        let (alice, bob) = (Identity::generate(), Identity::generate());
        let mut l = letter(&alice, &bob, NOW_MS, NOW_MS / 1000 + 60);
        let header = Header {
            id: l.id,
            recipient: bob.address(),
            expires_at: l.expires_at,
        };
        l.expires_at += 1;
        let sealed = seal_letter(&alice, &bob, &l, header);
        assert_eq!(
            open_packet(&bob, header, &sealed, NOW_MS, MAX_TTL),
            Err(RejectReason::HeaderMismatch)
        );
        // A record of someone else than the sealing key.
        let mut l = letter(&alice, &bob, NOW_MS, NOW_MS / 1000 + 60);
        l.sender = SignedRecord::sign(
            &Identity::generate(),
            "127.0.0.2:58008".parse().unwrap(),
            true,
            NOW_MS / 1000,
        );
        let sealed = seal_letter(&alice, &bob, &l, header);
        assert_eq!(
            open_packet(&bob, header, &sealed, NOW_MS, MAX_TTL),
            Err(RejectReason::SenderKey)
        );
    }

    #[test]
    fn only_the_recipient_opens() {
        let f = fixture(NOW_MS, NOW_MS / 1000 + 60);
        assert_eq!(
            open_packet(&f.alice, f.header, &f.sealed, NOW_MS, MAX_TTL),
            Err(RejectReason::DoesNotOpen)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Every change a relay can make to the header or the sealed bytes
        /// is refused: the id, the recipient, the expiry, any byte of the
        /// sealed message.
        #[test]
        fn every_header_or_byte_change_is_refused(
            which in 0usize..4,
            byte in any::<prop::sample::Index>(),
            flip in 1u8..=255,
            delta in 1u64..1_000_000,
        ) {
            let f = fixture(NOW_MS, NOW_MS / 1000 + 7 * DAY);
            let mut header = f.header;
            let mut sealed = f.sealed.clone();
            match which {
                0 => header.id.0[byte.index(16)] ^= flip,
                1 => header.recipient = Identity::generate().address(),
                2 => header.expires_at = header.expires_at.wrapping_sub(delta),
                _ => {
                    let all = sealed.ciphertext.len() + 64;
                    let i = byte.index(all);
                    if i < 32 { sealed.sender_kem[i] ^= flip }
                    else if i < 64 { sealed.enc[i - 32] ^= flip }
                    else { sealed.ciphertext[i - 64] ^= flip }
                }
            }
            prop_assert!(open_packet(&f.bob, header, &sealed, NOW_MS, MAX_TTL).is_err());
        }

        /// Whatever the time of a later copy, the mark covers every moment a
        /// copy is still accepted.
        #[test]
        fn accepted_copies_lie_within_the_mark(sent_off in 0u64..(MAX_TTL * 1000), ttl in 1u64..MAX_TTL, later in 0u64..(2 * MAX_TTL)) {
            let sent_ms = NOW_MS - sent_off;
            let expires_at = sent_ms / 1000 + ttl;
            let (alice, bob) = (Identity::generate(), Identity::generate());
            let l = letter(&alice, &bob, sent_ms, expires_at);
            let header = Header { id: l.id, recipient: bob.address(), expires_at };
            let sealed = Sealed { sender_kem: alice.kem_public(), enc: [0; 32], ciphertext: vec![] };
            let at_ms = sent_ms + later * 1000;
            if let Ok(a) = check_letter(&l, header, &sealed, at_ms, MAX_TTL) {
                prop_assert!(at_ms / 1000 < a.mark_until);
            }
        }
    }
}
