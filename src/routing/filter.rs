//! The relays' duplicate suppression: which copies of a flooded packet this
//! node has already passed on, and which messages it has seen a receipt for.
//!
//! Rules (each one closes an attack that worked against the persisted,
//! header-keyed drop list this replaces):
//!
//! - A copy is known by a digest of everything its sender sealed or chose —
//!   id, recipient, expiry and the sealed bytes — plus the attempt number
//!   ([`copy_key`]). A forger without the genuine sealed bytes cannot produce
//!   the genuine copy's key, so a tampered copy that arrives first never
//!   suppresses the genuine one, for any attempt number.
//! - A known copy that comes back with more hops left than before is passed
//!   on again, so a genuine copy replayed with `hops_left = 0` cannot stop it.
//! - A receipt is passed on only for a message (id, recipient *and* expiry,
//!   all three signed in the receipt) that this node passed on within the
//!   window: receipts for made-up ids go nowhere.
//! - Receipts are verified where they change state ([`ReceiptVerdict`]). The
//!   first receipt for a message is passed on unchecked (the origin checks
//!   every receipt before it settles anything) and held *unverified*: it
//!   suppresses nothing but byte-identical copies of itself. Any *other*
//!   receipt for the message is checked, and if it verifies it is passed on
//!   too and held verified, so a forged receipt that came first cannot hold
//!   back the genuine one, and each further forgery costs its sender what it
//!   costs the node (one signature check, as before). A held receipt answers
//!   a late copy only once it is verified ([`CopyVerdict::Delivered`]); one
//!   that fails its check stays held as known bad, so no later receipt for
//!   the message goes on unchecked: at most one receipt per message is ever
//!   passed on without a check. The same receipt coming back with more hops
//!   left is passed on again, as copies are, so the genuine bytes sent first
//!   with `hops_left = 0` cannot stop it; if it was not checked yet, it is
//!   checked first (else one forgery could be sent on once per hop count).
//! - Everything here lives in memory for [`SEEN_WINDOW`] (long enough to
//!   outlive one flood, not the message's time to live) and is bounded by
//!   [`COPY_CAPACITY`] and [`MESSAGE_CAPACITY`]; the oldest entries go first.
//!   Replays after the window are stopped where it matters: at the recipient,
//!   whose persisted delivered mark outlives every copy it would accept.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::crypto::Address;
use crate::wire::link::{FloodPacket, Receipt};
use crate::wire::MessageId;

/// How long a copy or a message is remembered.
pub const SEEN_WINDOW: Duration = Duration::from_secs(120);
/// Most copies remembered at once.
pub const COPY_CAPACITY: usize = 32_768;
/// Most messages (with or without a receipt) remembered at once.
pub const MESSAGE_CAPACITY: usize = 32_768;
/// Links a message's receipt is sent back over: the first ones its copies
/// came from. More than one, so that one hostile neighbour that sent the
/// first copy cannot hold the receipt back on its own.
pub const UPSTREAMS: usize = 2;

const COPY_DOMAIN: &[u8] = b"hermes/copy/1\0";
const MESSAGE_DOMAIN: &[u8] = b"hermes/message/1\0";

/// A digest naming one copy of a packet: everything but `hops_left`, and the
/// attempt only when `with_attempt` (relays pass each attempt on once; the
/// recipient opens a message once, whatever its attempt).
pub fn copy_key(p: &FloodPacket, with_attempt: bool) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(COPY_DOMAIN);
    h.update(p.id.0);
    h.update(p.recipient.0);
    h.update(p.expires_at.to_be_bytes());
    h.update(p.sealed.sender_kem);
    h.update(p.sealed.enc);
    h.update((p.sealed.ciphertext.len() as u64).to_be_bytes());
    h.update(&p.sealed.ciphertext);
    if with_attempt {
        h.update([1]);
        h.update(p.attempt.to_be_bytes());
    } else {
        h.update([0]);
    }
    h.finalize().into()
}

/// A digest naming a message as its receipt does: id, recipient, expiry.
fn message_key(id: &MessageId, recipient: &Address, expires_at: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(MESSAGE_DOMAIN);
    h.update(id.0);
    h.update(recipient.0);
    h.update(expires_at.to_be_bytes());
    h.finalize().into()
}

/// What to do with an arriving copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyVerdict {
    /// Not seen before: pass it on.
    New,
    /// Seen, but with fewer hops left: pass it on again.
    MoreHops,
    /// Seen already: drop it.
    Duplicate,
    /// A receipt for the message is held: answer with it and pass nothing
    /// on, once it is known to be genuine. With `verified: false` the
    /// caller checks its signature first, then calls
    /// [`FloodFilter::hold_receipt`] with `verified: true`, or, if it does
    /// not verify, [`FloodFilter::refute_receipt`] and judges the copy
    /// again (a refuted receipt answers nothing).
    Delivered { receipt: Receipt, verified: bool },
}

/// What to do with an arriving receipt (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptVerdict {
    /// Not for a message this node passed on in the window: drop it.
    Unknown,
    /// The first receipt for the message: pass it on without checking its
    /// signature, and hold it unverified.
    First,
    /// The receipt held, back with more hops left: pass it on again.
    MoreHops,
    /// The receipt held (or refuted), or another one after a verified one:
    /// drop it.
    Duplicate,
    /// Another receipt than the unchecked or refuted one held, or the
    /// unchecked one back with more hops left: pass it on only if its
    /// signature verifies (and hold it verified; if not, refute it).
    Check,
}

impl ReceiptVerdict {
    /// Whether the receipt goes on upstream (after its check, for
    /// [`ReceiptVerdict::Check`]).
    pub fn passes(self) -> bool {
        matches!(
            self,
            ReceiptVerdict::First | ReceiptVerdict::MoreHops | ReceiptVerdict::Check
        )
    }
}

#[derive(Debug)]
struct Copy {
    max_hops: u8,
    at_ms: u64,
}

/// One remembered message. Kept small: the map holds up to
/// [`MESSAGE_CAPACITY`] of them in twice as many slots, so every byte here
/// counts 64 Ki times (a receipt inline made each slot 200 bytes, 13 MB in
/// all under a flood; boxed, the slot is 72 bytes, and only messages whose
/// receipt came back pay for one).
#[derive(Debug)]
struct Message {
    receipt: Option<Box<HeldReceipt>>,
    /// The first links copies came from ([`UPSTREAMS`] at most): where its
    /// receipt goes back. Allocated exactly, on the first one.
    upstream: Vec<Address>,
    at_ms: u64,
}

/// A message's receipt as this node has it.
#[derive(Debug)]
struct HeldReceipt {
    receipt: Receipt,
    checked: Checked,
}

/// What this node knows of a held receipt's signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Checked {
    /// Not checked: it stops only byte-identical copies of itself.
    Not,
    /// Verified here.
    Good,
    /// Failed its check: it answers nothing, and every other receipt for the
    /// message is checked.
    Bad,
}

/// Whether two receipts for one message are the same bytes, `hops_left`
/// aside (id, recipient and expiry are the message's key already).
fn same_receipt(a: &Receipt, b: &Receipt) -> bool {
    a.signature == b.signature
}

/// The in-memory, bounded, short-lived seen set of one node.
#[derive(Debug)]
pub struct FloodFilter {
    window_ms: u64,
    copy_capacity: usize,
    message_capacity: usize,
    copies: HashMap<[u8; 32], Copy>,
    copy_order: VecDeque<(u64, [u8; 32])>,
    messages: HashMap<[u8; 32], Message>,
    message_order: VecDeque<(u64, [u8; 32])>,
}

impl Default for FloodFilter {
    fn default() -> Self {
        FloodFilter::new(SEEN_WINDOW, COPY_CAPACITY, MESSAGE_CAPACITY)
    }
}

impl FloodFilter {
    pub fn new(window: Duration, copy_capacity: usize, message_capacity: usize) -> FloodFilter {
        FloodFilter {
            window_ms: window.as_millis() as u64,
            copy_capacity: copy_capacity.max(1),
            message_capacity: message_capacity.max(1),
            copies: HashMap::new(),
            copy_order: VecDeque::new(),
            messages: HashMap::new(),
            message_order: VecDeque::new(),
        }
    }

    /// Judges a copy named `key` (from [`copy_key`]) of the message
    /// (`id`, `recipient`, `expires_at`) arriving with `hops_left`, and
    /// remembers it. `New` and `MoreHops` are what a relay passes on.
    pub fn on_copy(
        &mut self,
        key: [u8; 32],
        id: &MessageId,
        recipient: &Address,
        expires_at: u64,
        hops_left: u8,
        now_ms: u64,
    ) -> CopyVerdict {
        self.expire(now_ms);
        let mkey = message_key(id, recipient, expires_at);
        if let Some(h) = self.messages.get(&mkey).and_then(|m| m.receipt.as_ref()) {
            if h.checked != Checked::Bad {
                return CopyVerdict::Delivered {
                    receipt: h.receipt.clone(),
                    verified: h.checked == Checked::Good,
                };
            }
        }
        if let Some(c) = self.copies.get_mut(&key) {
            if hops_left > c.max_hops {
                c.max_hops = hops_left;
                return CopyVerdict::MoreHops;
            }
            return CopyVerdict::Duplicate;
        }
        if self.copies.len() >= self.copy_capacity {
            Self::evict_oldest(&mut self.copies, &mut self.copy_order);
        }
        self.copies.insert(
            key,
            Copy {
                max_hops: hops_left,
                at_ms: now_ms,
            },
        );
        self.copy_order.push_back((now_ms, key));
        if !self.messages.contains_key(&mkey) {
            if self.messages.len() >= self.message_capacity {
                Self::evict_oldest(&mut self.messages, &mut self.message_order);
            }
            self.messages.insert(
                mkey,
                Message {
                    receipt: None,
                    upstream: Vec::new(),
                    at_ms: now_ms,
                },
            );
            self.message_order.push_back((now_ms, mkey));
        }
        CopyVerdict::New
    }

    /// Judges a receipt `r` arriving (see [`ReceiptVerdict`]); changes
    /// nothing: the caller checks the signature where the verdict (or its
    /// own state) asks for it, then calls [`FloodFilter::hold_receipt`].
    pub fn judge_receipt(&mut self, r: &Receipt, now_ms: u64) -> ReceiptVerdict {
        self.expire(now_ms);
        let Some(m) = self
            .messages
            .get(&message_key(&r.id, &r.recipient, r.expires_at))
        else {
            return ReceiptVerdict::Unknown;
        };
        let Some(h) = m.receipt.as_deref() else {
            return ReceiptVerdict::First;
        };
        if same_receipt(&h.receipt, r) {
            return match h.checked {
                Checked::Good if r.hops_left > h.receipt.hops_left => ReceiptVerdict::MoreHops,
                Checked::Not if r.hops_left > h.receipt.hops_left => ReceiptVerdict::Check,
                _ => ReceiptVerdict::Duplicate,
            };
        }
        match h.checked {
            Checked::Good => ReceiptVerdict::Duplicate,
            Checked::Not | Checked::Bad => ReceiptVerdict::Check,
        }
    }

    /// Holds `r` as its message's receipt, `verified` if the caller checked
    /// its signature: the first one, or a verified one in place of an
    /// unchecked or refuted other, or the same one with more hops left (or
    /// now verified). False if the message is not (or no longer)
    /// remembered, or another receipt is held that `r` may not replace.
    pub fn hold_receipt(&mut self, r: Receipt, verified: bool) -> bool {
        let checked = if verified {
            Checked::Good
        } else {
            Checked::Not
        };
        let Some(m) = self
            .messages
            .get_mut(&message_key(&r.id, &r.recipient, r.expires_at))
        else {
            return false;
        };
        match m.receipt.as_deref_mut() {
            None => {
                m.receipt = Some(Box::new(HeldReceipt {
                    receipt: r,
                    checked,
                }));
                true
            }
            Some(h) if same_receipt(&h.receipt, &r) && h.checked != Checked::Bad => {
                h.receipt.hops_left = h.receipt.hops_left.max(r.hops_left);
                if verified {
                    h.checked = Checked::Good;
                }
                true
            }
            Some(h) if verified && h.checked != Checked::Good => {
                *h = HeldReceipt {
                    receipt: r,
                    checked,
                };
                true
            }
            Some(_) => false,
        }
    }

    /// Marks the held receipt bad if it is `r` and was not checked yet: `r`
    /// failed its signature check. From then on it answers no copy, and
    /// every other receipt for the message is checked.
    pub fn refute_receipt(&mut self, r: &Receipt) {
        if let Some(h) = self
            .messages
            .get_mut(&message_key(&r.id, &r.recipient, r.expires_at))
            .and_then(|m| m.receipt.as_deref_mut())
        {
            if h.checked == Checked::Not && same_receipt(&h.receipt, r) {
                h.checked = Checked::Bad;
            }
        }
    }

    /// Remembers that a copy of the message came from `from` (a link), as
    /// one of the links its receipt goes back over.
    pub fn note_upstream(
        &mut self,
        id: &MessageId,
        recipient: &Address,
        expires_at: u64,
        from: Address,
    ) {
        if let Some(m) = self
            .messages
            .get_mut(&message_key(id, recipient, expires_at))
        {
            if m.upstream.len() < UPSTREAMS && !m.upstream.contains(&from) {
                m.upstream.reserve_exact(UPSTREAMS - m.upstream.len());
                m.upstream.push(from);
            }
        }
    }

    /// The links the receipt `r` goes back over (empty if the message is not
    /// remembered, or this node sent it).
    pub fn upstreams(&self, r: &Receipt) -> Vec<Address> {
        self.messages
            .get(&message_key(&r.id, &r.recipient, r.expires_at))
            .map(|m| m.upstream.clone())
            .unwrap_or_default()
    }

    /// Copies and messages remembered now.
    pub fn len(&self) -> (usize, usize) {
        (self.copies.len(), self.messages.len())
    }

    pub fn is_empty(&self) -> bool {
        self.copies.is_empty() && self.messages.is_empty()
    }

    fn expire(&mut self, now_ms: u64) {
        let w = self.window_ms;
        Self::expire_before(&mut self.copies, &mut self.copy_order, now_ms, w, |c| {
            c.at_ms
        });
        Self::expire_before(
            &mut self.messages,
            &mut self.message_order,
            now_ms,
            w,
            |m| m.at_ms,
        );
    }

    /// Drops the entries `window_ms` old or older at `now_ms`.
    fn expire_before<V>(
        map: &mut HashMap<[u8; 32], V>,
        order: &mut VecDeque<(u64, [u8; 32])>,
        now_ms: u64,
        window_ms: u64,
        at: impl Fn(&V) -> u64,
    ) {
        while let Some(&(t, k)) = order.front() {
            if t.saturating_add(window_ms) > now_ms {
                break;
            }
            order.pop_front();
            if map.get(&k).is_some_and(|v| at(v) == t) {
                map.remove(&k);
            }
        }
    }

    fn evict_oldest<V>(map: &mut HashMap<[u8; 32], V>, order: &mut VecDeque<(u64, [u8; 32])>) {
        while let Some((_, k)) = order.pop_front() {
            if map.remove(&k).is_some() {
                return;
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crypto::seal::Sealed;
    use crate::crypto::Identity;
    use crate::wire::link::MAX_HOPS;
    use proptest::prelude::*;

    fn packet(byte: u8) -> FloodPacket {
        FloodPacket {
            id: MessageId([byte; 16]),
            attempt: 0,
            hops_left: MAX_HOPS,
            recipient: Address([2; 32]),
            expires_at: 1_000,
            sealed: Sealed {
                sender_kem: [3; 32],
                enc: [4; 32],
                ciphertext: vec![byte; 40],
            },
        }
    }

    fn judge(f: &mut FloodFilter, p: &FloodPacket, now_ms: u64) -> CopyVerdict {
        f.on_copy(
            copy_key(p, true),
            &p.id,
            &p.recipient,
            p.expires_at,
            p.hops_left,
            now_ms,
        )
    }

    #[test]
    fn a_remembered_message_stays_small() {
        // 64 Ki slots of (key, Message) under a flood: see `Message`.
        assert!(std::mem::size_of::<Message>() <= 40);
        assert!(std::mem::size_of::<([u8; 32], Message)>() <= 72);
    }

    #[test]
    fn receipts_go_back_over_the_first_links_copies_came_from() {
        let mut f = FloodFilter::default();
        let p = packet(1);
        let me = Identity::generate();
        let r = Receipt::sign(&me, p.id, p.expires_at, None);
        let r = Receipt {
            recipient: p.recipient,
            ..r
        };
        assert!(f.upstreams(&r).is_empty(), "unknown message: nowhere");
        judge(&mut f, &p, 0);
        let (a, b, c) = (Address([7; 32]), Address([8; 32]), Address([9; 32]));
        for from in [a, a, b, c] {
            f.note_upstream(&p.id, &p.recipient, p.expires_at, from);
        }
        assert_eq!(
            f.upstreams(&r),
            vec![a, b],
            "the first {UPSTREAMS}, once each"
        );
        let m = f
            .messages
            .get(&message_key(&p.id, &p.recipient, p.expires_at))
            .unwrap();
        assert_eq!(m.upstream.capacity(), UPSTREAMS, "allocated exactly, once");
        // Forgotten with the message.
        judge(&mut f, &packet(2), SEEN_WINDOW.as_millis() as u64 + 1);
        assert!(f.upstreams(&r).is_empty());
    }

    #[test]
    fn a_copy_passes_once_per_attempt() {
        let mut f = FloodFilter::default();
        let p = packet(1);
        assert_eq!(judge(&mut f, &p, 0), CopyVerdict::New);
        assert_eq!(judge(&mut f, &p, 1), CopyVerdict::Duplicate);
        let mut retry = p.clone();
        retry.attempt = 1;
        assert_eq!(judge(&mut f, &retry, 2), CopyVerdict::New);
        // The relay-side hop count is not part of the key.
        let mut fewer = p.clone();
        fewer.hops_left = 3;
        assert_eq!(judge(&mut f, &fewer, 3), CopyVerdict::Duplicate);
    }

    #[test]
    fn tampered_copies_never_suppress_the_genuine_one() {
        let mut f = FloodFilter::default();
        let genuine = packet(1);
        for attempt in 0..50 {
            let mut forged = genuine.clone();
            forged.attempt = attempt;
            forged.sealed.ciphertext[0] ^= 1;
            assert_eq!(judge(&mut f, &forged, 0), CopyVerdict::New);
            let mut forged = genuine.clone();
            forged.attempt = attempt;
            forged.expires_at = 5;
            assert_eq!(judge(&mut f, &forged, 0), CopyVerdict::New);
        }
        assert_eq!(judge(&mut f, &genuine, 0), CopyVerdict::New);
    }

    #[test]
    fn a_genuine_copy_with_no_hops_left_cannot_stop_the_full_one() {
        let mut f = FloodFilter::default();
        let mut starved = packet(1);
        starved.hops_left = 0;
        assert_eq!(judge(&mut f, &starved, 0), CopyVerdict::New);
        assert_eq!(judge(&mut f, &packet(1), 1), CopyVerdict::MoreHops);
        assert_eq!(judge(&mut f, &packet(1), 2), CopyVerdict::Duplicate);
    }

    /// A message to `bob` passed on by `f`, and bob's receipt for it.
    fn passed_on(f: &mut FloodFilter, bob: &Identity) -> (FloodPacket, Receipt) {
        let mut p = packet(1);
        p.recipient = bob.address();
        assert_eq!(judge(f, &p, 0), CopyVerdict::New);
        (p.clone(), Receipt::sign(bob, p.id, p.expires_at, None))
    }

    /// A receipt for the same message that its recipient did not sign.
    pub(crate) fn forged(r: &Receipt, byte: u8) -> Receipt {
        let mut f = r.clone();
        f.signature[0] ^= byte;
        f
    }

    #[test]
    fn receipts_pass_only_for_messages_passed_on_and_each_once() {
        let bob = Identity::generate();
        let mut f = FloodFilter::default();
        let mut p = packet(1);
        p.recipient = bob.address();
        let r = Receipt::sign(&bob, p.id, p.expires_at, None);
        assert_eq!(
            f.judge_receipt(&r, 0),
            ReceiptVerdict::Unknown,
            "never passed on"
        );
        assert!(!f.hold_receipt(r.clone(), false), "nothing to hold it for");
        assert_eq!(judge(&mut f, &p, 0), CopyVerdict::New);
        // A receipt naming another expiry is another message.
        let other = Receipt::sign(&bob, p.id, p.expires_at + 1, None);
        assert_eq!(f.judge_receipt(&other, 0), ReceiptVerdict::Unknown);
        assert_eq!(f.judge_receipt(&r, 0), ReceiptVerdict::First);
        assert!(f.hold_receipt(r.clone(), false));
        assert_eq!(
            f.judge_receipt(&r, 0),
            ReceiptVerdict::Duplicate,
            "only once"
        );
        let mut fewer = r.clone();
        fewer.hops_left -= 1;
        assert_eq!(f.judge_receipt(&fewer, 0), ReceiptVerdict::Duplicate);
    }

    #[test]
    fn a_receipt_sent_first_with_no_hops_left_cannot_stop_the_full_one() {
        let bob = Identity::generate();
        let mut f = FloodFilter::default();
        let (_, r) = passed_on(&mut f, &bob);
        let mut starved = r.clone();
        starved.hops_left = 0;
        assert_eq!(f.judge_receipt(&starved, 0), ReceiptVerdict::First);
        assert!(f.hold_receipt(starved.clone(), false));
        // Held unchecked: the same bytes with more hops are checked first,
        // so a forgery cannot go on once per hop count.
        assert_eq!(f.judge_receipt(&r, 0), ReceiptVerdict::Check);
        assert!(f.hold_receipt(r.clone(), true));
        assert_eq!(f.judge_receipt(&r, 0), ReceiptVerdict::Duplicate);
        // Held verified: more hops pass on without a second check.
        let mut f = FloodFilter::default();
        let (_, r) = passed_on(&mut f, &bob);
        assert!(f.hold_receipt(starved, true));
        assert_eq!(f.judge_receipt(&r, 0), ReceiptVerdict::MoreHops);
        assert!(f.hold_receipt(r.clone(), false));
        assert_eq!(f.judge_receipt(&r, 0), ReceiptVerdict::Duplicate);
    }

    #[test]
    fn an_unchecked_receipt_held_back_nothing_but_itself() {
        let bob = Identity::generate();
        let mut f = FloodFilter::default();
        let (p, genuine) = passed_on(&mut f, &bob);
        // A forgery that comes first is passed on unchecked (the origin
        // drops it) and held unverified.
        let first = forged(&genuine, 1);
        assert_eq!(f.judge_receipt(&first, 0), ReceiptVerdict::First);
        assert!(f.hold_receipt(first.clone(), false));
        // Every other receipt is to be checked: a second forgery (which the
        // caller drops when it does not verify), and the genuine one.
        assert_eq!(
            f.judge_receipt(&forged(&genuine, 2), 0),
            ReceiptVerdict::Check
        );
        assert!(
            !f.hold_receipt(forged(&genuine, 2), false),
            "unchecked never replaces"
        );
        assert_eq!(f.judge_receipt(&genuine, 0), ReceiptVerdict::Check);
        assert!(
            f.hold_receipt(genuine.clone(), true),
            "checked replaces unchecked"
        );
        // Once one is verified, no other receipt costs a check.
        assert_eq!(
            f.judge_receipt(&forged(&genuine, 4), 0),
            ReceiptVerdict::Duplicate
        );
        assert!(
            !f.hold_receipt(forged(&genuine, 4), true),
            "nothing replaces a verified one"
        );
        let mut late = p.clone();
        late.attempt = 9;
        assert_eq!(
            judge(&mut f, &late, 5),
            CopyVerdict::Delivered {
                receipt: genuine,
                verified: true
            }
        );
    }

    #[test]
    fn an_unchecked_receipt_answers_late_copies_only_after_its_check() {
        let bob = Identity::generate();
        let mut f = FloodFilter::default();
        let (p, genuine) = passed_on(&mut f, &bob);
        let bad = forged(&genuine, 1);
        assert!(f.hold_receipt(bad.clone(), false));
        let mut late = p.clone();
        late.attempt = 9;
        assert_eq!(
            judge(&mut f, &late, 5),
            CopyVerdict::Delivered {
                receipt: bad.clone(),
                verified: false
            }
        );
        // It did not verify: refuted, it answers nothing, and the copy
        // passes as a new one.
        f.refute_receipt(&bad);
        assert_eq!(judge(&mut f, &late, 6), CopyVerdict::New);
        // Nothing goes on unchecked any more: not the refuted bytes (with
        // any hop count), and not another forgery.
        assert_eq!(f.judge_receipt(&bad, 7), ReceiptVerdict::Duplicate);
        let mut more = bad.clone();
        more.hops_left = u8::MAX;
        assert_eq!(f.judge_receipt(&more, 7), ReceiptVerdict::Duplicate);
        assert!(!f.hold_receipt(forged(&genuine, 2), false));
        assert_eq!(f.judge_receipt(&genuine, 7), ReceiptVerdict::Check);
        assert!(
            f.hold_receipt(genuine.clone(), true),
            "verified replaces refuted"
        );
        // A receipt that verified is not refuted by mistake.
        f.refute_receipt(&genuine);
        assert_eq!(f.judge_receipt(&genuine, 8), ReceiptVerdict::Duplicate);
        let mut later = late.clone();
        later.attempt = 10;
        assert_eq!(
            judge(&mut f, &later, 9),
            CopyVerdict::Delivered {
                receipt: genuine,
                verified: true
            }
        );
    }

    #[test]
    fn entries_expire_after_the_window() {
        let mut f = FloodFilter::new(Duration::from_secs(10), 100, 100);
        let p = packet(1);
        assert_eq!(judge(&mut f, &p, 0), CopyVerdict::New);
        assert_eq!(judge(&mut f, &p, 9_999), CopyVerdict::Duplicate);
        assert_eq!(judge(&mut f, &packet(2), 10_000), CopyVerdict::New);
        assert_eq!(f.len(), (1, 1), "the first one expired");
        assert_eq!(judge(&mut f, &p, 10_001), CopyVerdict::New);
    }

    proptest! {
        /// However many copies arrive, the filter never holds more than its
        /// capacities.
        #[test]
        fn bounded(n in 1usize..600, cap in 1usize..50) {
            let mut f = FloodFilter::new(Duration::from_secs(3600), cap, cap);
            for i in 0..n {
                let mut p = packet((i % 251) as u8);
                p.attempt = i as u32;
                judge(&mut f, &p, i as u64);
                let (c, m) = f.len();
                prop_assert!(c <= cap && m <= cap);
            }
        }
    }
}
