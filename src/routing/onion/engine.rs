//! The origin's onion policy, without I/O: which parts go over which paths,
//! which reply blocks are outstanding, and what a reply opens to.
//!
//! The Router drives it: [`Origin::plan`] on its own thread (cheap: random
//! draws), [`build_part`] on a worker thread (the X25519 work of wrapping and
//! of the reply block), then [`Origin::file_reply`] for each part sent, and
//! [`Origin::open_reply`] when a reply comes back.
//!
//! Every sending of a message (first or retry) splits the sealed letter into
//! parts ([`super::fragments::split`]) and gives each part its own forward
//! path and its own reply path: relays drawn afresh for every part and every
//! retry, the forward path's first relay a guard ([`super::path`]). The
//! recipient answers over the reply block of the part that completed the
//! message; the other blocks of that sending are never used and age out of
//! the bounded [`Origin`] table.

use std::collections::{HashMap, VecDeque};

use rand::rngs::StdRng;

use super::fragments::{split, FragmentError};
use super::path::{choose_path, Candidate, Guards, Path, RecentPaths, GUARD_REPLACE_AFTER_SECS};
use crate::crypto::sphinx::{
    NodeHop, OnionError, OnionFormat, Packet, ReplyId, ReplyRecovery, SealedReply,
};
use crate::crypto::Address;
use crate::wire::link::Receipt;
use crate::wire::onion::{PartPayload, ReplyPayload, MAX_PART_BYTES};
use crate::wire::MessageId;

/// Reply blocks whose recovery the origin keeps, oldest dropped first. One
/// per part sent; a reply that comes after its entry was dropped is lost,
/// and the message is sent again at its next retry.
pub const MAX_REPLIES: usize = 16_384;
/// Messages whose last sending's relays are remembered, to learn which
/// relays fail (oldest dropped first).
pub const MAX_ATTEMPTS_REMEMBERED: usize = 16_384;
/// Sendings that came to nothing, in a row, after which a relay on their
/// paths is avoided for [`SUSPECT_FOR_SECS`].
pub const SUSPECT_AFTER: u32 = 2;
/// How long a suspect relay is avoided (seconds).
pub const SUSPECT_FOR_SECS: u64 = 120;
/// Paths each part of a retry takes: a sending that got no receipt went
/// through a relay that is down or hostile, so a retry tries three fresh ones
/// (the recipient keeps one copy; the other is answered from its delivered
/// mark).
pub const PATHS_PER_PART_ON_RETRY: usize = 3;

/// One part of one sending, with its paths.
#[derive(Clone, Debug)]
pub struct PartPlan {
    pub index: u16,
    pub count: u16,
    /// The encoded part ([`super::fragments::Part::encode`]).
    pub part: Vec<u8>,
    /// Relays to the recipient.
    pub path: Path,
    /// Relays of the reply block, from the recipient back to this node.
    pub reply_path: Vec<NodeHop>,
}

/// A sending's parts, and how many relays short of `hops` its paths are.
#[derive(Clone, Debug)]
pub struct Plan {
    pub parts: Vec<PartPlan>,
    pub shortfall: usize,
}

/// One part ready to go: the packet, where to send it, and what opens its
/// reply.
pub struct BuiltPart {
    pub index: u16,
    pub first: Address,
    pub packet: Packet,
    pub recovery: ReplyRecovery,
    pub path: Vec<Address>,
}

/// What a reply opened to.
#[derive(Debug, PartialEq, Eq)]
pub enum ReplyOutcome {
    /// A receipt that came back over a block filed for `id`; the Router
    /// still checks its signature and that it settles a message it holds.
    Receipt(Receipt),
    /// No block filed under that id (never ours, used already, or aged out).
    Unknown,
    /// The reply did not open or decode, or names another message.
    Bad,
}

/// The origin's state: guards, recently used paths, outstanding replies.
pub struct Origin {
    guards: Guards,
    guards_changed: bool,
    recent: RecentPaths,
    recent_replies: RecentPaths,
    replies: HashMap<ReplyId, (MessageId, ReplyRecovery)>,
    order: VecDeque<ReplyId>,
    max_replies: usize,
    /// Relays (forward and reply) of each message's last sending.
    last_paths: HashMap<MessageId, Vec<Address>>,
    last_order: VecDeque<MessageId>,
    /// Relays on sendings that got no receipt: failures in a row, and when
    /// the last was counted (seconds).
    failures: HashMap<Address, (u32, u64)>,
    rng: StdRng,
}

impl Origin {
    pub fn new(guards: Guards, rng: StdRng) -> Origin {
        Self::with_capacity(guards, rng, MAX_REPLIES)
    }

    /// [`Origin::new`] keeping at most `max_replies` reply blocks.
    pub fn with_capacity(guards: Guards, rng: StdRng, max_replies: usize) -> Origin {
        Origin {
            max_replies,
            last_paths: HashMap::new(),
            last_order: VecDeque::new(),
            failures: HashMap::new(),
            guards,
            guards_changed: false,
            recent: RecentPaths::new(),
            recent_replies: RecentPaths::new(),
            replies: HashMap::new(),
            order: VecDeque::new(),
            rng,
        }
    }

    pub fn guards(&self) -> &Guards {
        &self.guards
    }

    /// Whether the guard set changed since the last call (to save it).
    pub fn take_guards_changed(&mut self) -> bool {
        std::mem::take(&mut self.guards_changed)
    }

    /// How many relays `hops` asks for and `candidates` cannot give for a
    /// message from `me` to `recipient`.
    pub fn shortfall(
        me: &Address,
        recipient: &Address,
        candidates: &[Candidate],
        hops: usize,
    ) -> usize {
        let mut ids: Vec<Address> = candidates
            .iter()
            .filter(|c| c.relay && c.hop.id != *me && c.hop.id != *recipient)
            .map(|c| c.hop.id)
            .collect();
        ids.sort();
        ids.dedup();
        hops.min(crate::crypto::sphinx::MAX_RELAYS)
            .saturating_sub(ids.len())
    }

    /// A relay could not be reached at all (a link to it failed): avoid it
    /// at once, and count it against its guard place if it is a guard.
    pub fn unreachable(&mut self, relay: &Address, now: u64) {
        self.failures.insert(*relay, (SUSPECT_AFTER, now));
        self.guards.mark_unreachable(relay, now);
    }

    /// A relay left the view of nodes seen alive nearby: avoid it for a
    /// while (not counted against its guard place: a link may just have
    /// rotated).
    pub fn vanished(&mut self, relay: &Address, now: u64) {
        self.failures.insert(*relay, (SUSPECT_AFTER, now));
    }

    /// Splits `letter` (the sealed letter's bytes) and draws each part's
    /// paths: one per part on a first sending, [`PATHS_PER_PART_ON_RETRY`]
    /// on a retry (`retry`). `now` in seconds.
    #[allow(clippy::too_many_arguments)]
    pub fn plan(
        &mut self,
        me: &Address,
        recipient: &Address,
        id: MessageId,
        expires_at: u64,
        letter: &[u8],
        candidates: &[Candidate],
        hops: usize,
        now: u64,
        retry: bool,
    ) -> Result<Plan, FragmentError> {
        let change =
            self.guards
                .refresh(me, candidates, now, GUARD_REPLACE_AFTER_SECS, &mut self.rng);
        if !change.added.is_empty() || !change.replaced.is_empty() {
            self.guards_changed = true;
        }
        let parts = split(id, expires_at, letter, MAX_PART_BYTES)?;
        // A sending again means the last one got no receipt: its relays
        // count a failure each (one of them is likely down).
        if let Some(mut failed) = self.last_paths.remove(&id) {
            // Once per sending, however many of its paths a relay was on.
            failed.sort();
            failed.dedup();
            for r in failed {
                let f = self.failures.entry(r).or_insert((0, now));
                *f = (f.0.saturating_add(1), now);
            }
        }
        self.failures
            .retain(|_, (_, at)| now.saturating_sub(*at) < SUSPECT_FOR_SECS);
        // Suspects are avoided even if the path gets shorter: a path
        // through a relay that is down delivers nothing, and an innocent
        // suspect is back after SUSPECT_FOR_SECS or its next success.
        let healthy: Vec<Candidate> = candidates
            .iter()
            .copied()
            .filter(|c| !self.is_suspect(&c.hop.id, now))
            .collect();
        let candidates = &healthy[..];
        let no_guards = Guards::new();
        let mut shortfall = 0;
        let copies = if retry { PATHS_PER_PART_ON_RETRY } else { 1 };
        let mut out = Vec::with_capacity(parts.len() * copies);
        for part in parts.iter().flat_map(|p| std::iter::repeat_n(p, copies)) {
            let path = choose_path(
                me,
                recipient,
                candidates,
                &self.guards,
                &mut self.recent,
                hops,
                &mut self.rng,
            );
            // The reply's first hop is the recipient's choice of nothing:
            // the origin draws the whole way back, no guard needed (the
            // recipient is not the one to hide here).
            let reply = choose_path(
                recipient,
                me,
                candidates,
                &no_guards,
                &mut self.recent_replies,
                hops,
                &mut self.rng,
            );
            shortfall = shortfall.max(path.shortfall);
            let used = self.last_paths.entry(id).or_default();
            used.extend(path.ids());
            used.extend(reply.relays.iter().map(|h| h.id));
            out.push(PartPlan {
                index: part.index,
                count: part.count,
                part: part.encode(),
                path,
                reply_path: reply.relays,
            });
        }
        if !self.last_order.contains(&id) {
            self.last_order.push_back(id);
        }
        while self.last_paths.len() > MAX_ATTEMPTS_REMEMBERED {
            match self.last_order.pop_front() {
                Some(old) => {
                    self.last_paths.remove(&old);
                }
                None => break,
            }
        }
        Ok(Plan {
            parts: out,
            shortfall,
        })
    }

    /// Whether `relay` is avoided at `now`: on [`SUSPECT_AFTER`] sendings
    /// in a row that got no receipt, the last within [`SUSPECT_FOR_SECS`].
    pub fn is_suspect(&self, relay: &Address, now: u64) -> bool {
        self.failures.get(relay).is_some_and(|(n, at)| {
            *n >= SUSPECT_AFTER && now.saturating_sub(*at) < SUSPECT_FOR_SECS
        })
    }

    /// A receipt for `id` came back: the relays of its last sending work.
    pub fn delivered(&mut self, id: &MessageId) {
        if let Some(ok) = self.last_paths.remove(id) {
            for r in ok {
                self.failures.remove(&r);
            }
        }
        self.last_order.retain(|m| m != id);
    }

    /// Keeps the recovery of a part's reply block, for message `id`.
    pub fn file_reply(&mut self, recovery: ReplyRecovery, id: MessageId) {
        let key = recovery.id();
        if self.replies.insert(key, (id, recovery)).is_none() {
            self.order.push_back(key);
        }
        while self.replies.len() > self.max_replies {
            match self.order.pop_front() {
                Some(old) => {
                    self.replies.remove(&old);
                }
                None => break,
            }
        }
    }

    /// Outstanding reply blocks.
    pub fn replies(&self) -> usize {
        self.replies.len()
    }

    /// Opens a reply that came back over one of our blocks (each block
    /// works once: its entry is removed).
    pub fn open_reply(&mut self, reply_id: &ReplyId, sealed: &SealedReply) -> ReplyOutcome {
        let Some((id, recovery)) = self.replies.remove(reply_id) else {
            return ReplyOutcome::Unknown;
        };
        self.order.retain(|k| k != reply_id);
        let Ok(plain) = recovery.open(sealed) else {
            return ReplyOutcome::Bad;
        };
        match ReplyPayload::decode(&plain) {
            Ok(p) if p.receipt.id == id => ReplyOutcome::Receipt(p.receipt),
            _ => ReplyOutcome::Bad,
        }
    }
}

impl Plan {
    /// Builds every part's packet and reply block (on a worker thread).
    pub fn build<F: OnionFormat>(
        &self,
        format: &F,
        recipient: &NodeHop,
        me: &NodeHop,
    ) -> Vec<Result<BuiltPart, OnionError>> {
        self.parts
            .iter()
            .map(|p| build_part(format, p, recipient, me))
            .collect()
    }
}

/// Builds one part's packet and reply block (on a worker thread).
pub fn build_part<F: OnionFormat>(
    format: &F,
    plan: &PartPlan,
    recipient: &NodeHop,
    me: &NodeHop,
) -> Result<BuiltPart, OnionError> {
    let (block, recovery) = format.reply_block(&plan.reply_path, me)?;
    let payload = PartPayload::new(block.as_bytes().to_vec(), plan.part.clone())
        .encode()
        .map_err(|_| OnionError::Payload)?;
    let packet = format.wrap(&plan.path.relays, recipient, &payload)?;
    let first = plan
        .path
        .relays
        .first()
        .map(|h| h.id)
        .unwrap_or(recipient.id);
    Ok(BuiltPart {
        index: plan.index,
        first,
        packet,
        recovery,
        path: plan.path.ids(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keyring::{Keyring, Schedule};
    use crate::crypto::sphinx::{Peeled, ReplyBlock, Sphinx};
    use crate::crypto::Identity;
    use crate::routing::onion::fragments::Part;
    use rand::SeedableRng;

    const NOW: u64 = 1_800_000_000;

    struct N {
        id: Address,
        ring: Keyring,
    }

    fn nodes(n: u8) -> (Vec<N>, Schedule) {
        let schedule = Schedule::new(86_400, 3_600).unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        let nodes = (0..n)
            .map(|i| {
                let mut ring = Keyring::new();
                ring.rotate(NOW, &schedule, &mut rng);
                N {
                    id: Address([i + 1; 32]),
                    ring,
                }
            })
            .collect();
        (nodes, schedule)
    }

    fn hop(n: &N, s: &Schedule) -> NodeHop {
        NodeHop {
            id: n.id,
            key: n.ring.announced(NOW, s).unwrap().public,
        }
    }

    /// Carries a packet from `at` through the nodes until its last hop.
    fn carry(nodes: &[N], s: &Schedule, mut at: Address, mut p: Packet) -> (Address, Peeled) {
        loop {
            let n = nodes.iter().find(|n| n.id == at).unwrap();
            let (_, peeled) = n.ring.peel(&Sphinx, &p, NOW, s).unwrap();
            match peeled {
                Peeled::Forward { next, packet, .. } => {
                    at = next;
                    p = packet;
                }
                other => return (at, other),
            }
        }
    }

    #[test]
    fn a_part_goes_out_and_its_receipt_comes_back_over_the_reply_block() {
        let (nodes, s) = nodes(6);
        let (me, to) = (&nodes[0], &nodes[5]);
        let cands: Vec<Candidate> = nodes
            .iter()
            .map(|n| Candidate {
                hop: hop(n, &s),
                relay: true,
            })
            .collect();
        let mut origin = Origin::new(Guards::new(), StdRng::seed_from_u64(2));
        let id = MessageId([4; 16]);
        let plan = origin
            .plan(
                &me.id,
                &to.id,
                id,
                NOW + 600,
                b"sealed letter",
                &cands,
                3,
                NOW,
                false,
            )
            .unwrap();
        assert_eq!(plan.shortfall, 0);
        assert!(origin.take_guards_changed());
        assert_eq!(plan.parts.len(), 1);
        let built = build_part(&Sphinx, &plan.parts[0], &hop(to, &s), &hop(me, &s)).unwrap();
        assert_eq!(built.path.len(), 3);
        assert!(!built.path.contains(&me.id) && !built.path.contains(&to.id));
        origin.file_reply(built.recovery, id);
        // Forward: the recipient gets the part and the reply block.
        let (at, peeled) = carry(&nodes, &s, built.first, built.packet);
        assert_eq!(at, to.id);
        let Peeled::Deliver { payload, .. } = peeled else {
            panic!("not delivered: {peeled:?}")
        };
        let pp = PartPayload::decode(&payload).unwrap();
        let part = Part::decode(&pp.part, MAX_PART_BYTES).unwrap();
        assert_eq!(part.data, b"sealed letter");
        // Back: the receipt over the block, opened by the origin once.
        let block = ReplyBlock::from_bytes(&pp.reply).unwrap();
        let receipt = Receipt::sign(&Identity::generate(), id, NOW + 600, None);
        let body = ReplyPayload::new(receipt.clone()).encode().unwrap();
        let (first, packet) = Sphinx.use_reply_block(&block, &body).unwrap();
        let (at, peeled) = carry(&nodes, &s, first, packet);
        assert_eq!(at, me.id);
        let Peeled::Reply {
            reply_id, sealed, ..
        } = peeled
        else {
            panic!("not a reply")
        };
        assert_eq!(
            origin.open_reply(&reply_id, &sealed),
            ReplyOutcome::Receipt(receipt)
        );
        assert_eq!(origin.open_reply(&reply_id, &sealed), ReplyOutcome::Unknown);
    }

    #[test]
    fn too_few_relays_is_a_shortfall_and_still_a_route() {
        let (nodes, s) = nodes(3);
        let cands: Vec<Candidate> = nodes
            .iter()
            .map(|n| Candidate {
                hop: hop(n, &s),
                relay: true,
            })
            .collect();
        let (me, to) = (&nodes[0], &nodes[2]);
        assert_eq!(Origin::shortfall(&me.id, &to.id, &cands, 3), 2);
        let mut origin = Origin::new(Guards::new(), StdRng::seed_from_u64(3));
        let plan = origin
            .plan(
                &me.id,
                &to.id,
                MessageId([1; 16]),
                NOW + 60,
                b"x",
                &cands,
                3,
                NOW,
                false,
            )
            .unwrap();
        assert_eq!(plan.shortfall, 2);
        assert_eq!(plan.parts[0].path.relays.len(), 1);
        let built = build_part(&Sphinx, &plan.parts[0], &hop(to, &s), &hop(me, &s)).unwrap();
        let (at, _) = carry(&nodes, &s, built.first, built.packet);
        assert_eq!(at, to.id);
    }

    #[test]
    fn relays_on_sendings_without_receipts_are_avoided_while_others_remain() {
        let (nodes, s) = nodes(8);
        let cands: Vec<Candidate> = nodes
            .iter()
            .map(|n| Candidate {
                hop: hop(n, &s),
                relay: true,
            })
            .collect();
        let (me, to) = (nodes[0].id, nodes[7].id);
        let mut origin = Origin::new(Guards::new(), StdRng::seed_from_u64(6));
        let id = MessageId([8; 16]);
        let first = origin
            .plan(&me, &to, id, NOW + 600, b"x", &cands, 3, NOW, false)
            .unwrap();
        // Every relay of a sending: a retry sends each part several times.
        let relays = |p: &Plan| -> std::collections::HashSet<Address> {
            let mut s = std::collections::HashSet::new();
            for part in &p.parts {
                s.extend(part.path.ids());
                s.extend(part.reply_path.iter().map(|h| h.id));
            }
            s
        };
        let used = relays(&first);
        assert!(used.iter().all(|r| !origin.is_suspect(r, NOW)));
        // Two sendings without a receipt: relays on both are suspect, relays
        // on one only are not.
        let second = origin
            .plan(&me, &to, id, NOW + 600, b"x", &cands, 3, NOW + 2, true)
            .unwrap();
        let third = origin
            .plan(&me, &to, id, NOW + 600, b"x", &cands, 3, NOW + 6, true)
            .unwrap();
        let again = relays(&second);
        assert!(!used.is_disjoint(&again), "6 relays, 6 places: some repeat");
        for r in used.union(&again) {
            let both = used.contains(r) && again.contains(r);
            assert_eq!(origin.is_suspect(r, NOW + 6), both, "{r:?}");
        }
        // Suspects are not used, even at the cost of a shorter path.
        let suspects: Vec<Address> = used.intersection(&again).copied().collect();
        assert!(!suspects.is_empty());
        assert!(suspects.iter().all(|r| !relays(&third).contains(r)));
        // A receipt clears the last sending's relays.
        let last = relays(&third);
        origin.delivered(&id);
        assert!(last.iter().all(|r| !origin.is_suspect(r, NOW + 6)));
        // And suspicion wears off.
        assert!(used
            .iter()
            .all(|r| !origin.is_suspect(r, NOW + 6 + SUSPECT_FOR_SECS)));
    }

    #[test]
    fn the_reply_table_is_bounded() {
        let (nodes, s) = nodes(2);
        let mut origin = Origin::with_capacity(Guards::new(), StdRng::seed_from_u64(4), 8);
        let me = hop(&nodes[0], &s);
        for _ in 0..18 {
            let (_, rec) = Sphinx.reply_block(&[], &me).unwrap();
            origin.file_reply(rec, MessageId([2; 16]));
        }
        assert_eq!(origin.replies(), 8);
    }

    #[test]
    fn a_sixty_thousand_byte_letter_is_many_parts_each_on_its_own_path() {
        let (nodes, s) = nodes(10);
        let cands: Vec<Candidate> = nodes
            .iter()
            .map(|n| Candidate {
                hop: hop(n, &s),
                relay: true,
            })
            .collect();
        let mut origin = Origin::new(Guards::new(), StdRng::seed_from_u64(5));
        let letter = vec![7u8; 60_100];
        let plan = origin
            .plan(
                &nodes[0].id,
                &nodes[9].id,
                MessageId([9; 16]),
                NOW + 60,
                &letter,
                &cands,
                3,
                NOW,
                false,
            )
            .unwrap();
        assert!(plan.parts.len() >= 18, "{}", plan.parts.len());
        let paths: std::collections::HashSet<_> = plan.parts.iter().map(|p| p.path.ids()).collect();
        assert_eq!(paths.len(), plan.parts.len());
    }
}
