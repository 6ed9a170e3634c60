//! Choosing an onion path: pure, with the randomness injected.
//!
//! The origin picks `hops` relays among the candidates (fresh records with
//! `relay = true`), never itself, the recipient, or one relay twice; the
//! recipient is the route's last node, after the relays. The first relay is
//! one of a few long-lived [`Guards`] (kept across restarts, replaced only
//! when unreachable for long), because a first hop drawn afresh every time
//! lets a few hostile relays find the sender by repetition, as Tor's guards
//! answer. The other relays are drawn afresh for every message and every
//! retry; [`RecentPaths`] makes a new draw avoid the paths used lately, so
//! that successive messages take different paths (the seed's promise) even
//! in a small network, where uniform draws repeat often.
//!
//! With fewer usable relays than `hops`, the path uses what there is and says
//! how many are missing ([`Path::shortfall`]), so `hermes push` can say so.

use std::collections::VecDeque;

use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::crypto::sphinx::{NodeHop, MAX_RELAYS};
use crate::crypto::Address;
use crate::wire::{decode_limited, encode_limited, WireError};

/// How many guards a node keeps.
///
/// Four, not Tor's three: a message to a node that is one of our guards
/// must start at another guard, and in a small network the first hop's
/// choices bound how many paths there are. With 8 relays and 3 hops, three
/// usable guards give 3 × 7 × 6 = 126 paths, two give only 84 (and then 100
/// messages cannot take 90 distinct paths); four guards keep at least three
/// usable for every recipient.
pub const GUARDS: usize = 4;
/// A guard unreachable this long (seconds) is replaced: a week.
pub const GUARD_REPLACE_AFTER_SECS: u64 = 7 * 86_400;
/// Paths remembered to avoid reusing them.
pub const RECENT_PATHS: usize = 128;
/// Draws tried for a path not used lately, before taking the last one.
pub const MAX_DRAWS: usize = 16;

/// A node that may carry packets: from a fresh record with `relay = true`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub hop: NodeHop,
    pub relay: bool,
}

/// A chosen path: relays in order (the recipient comes after them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Path {
    pub relays: Vec<NodeHop>,
    /// Relays asked for but not found: `hops - relays.len()`.
    pub shortfall: usize,
    /// Whether the first relay is a guard (false only when no guard could
    /// serve: none known, or the only ones are this message's recipient).
    pub guard_first: bool,
}

impl Path {
    pub fn ids(&self) -> Vec<Address> {
        self.relays.iter().map(|h| h.id).collect()
    }
}

/// One guard and how reachable it has been.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guard {
    pub id: Address,
    /// Seconds since the Unix epoch it was chosen.
    pub since: u64,
    /// Since when it has been unreachable, if it is.
    pub unreachable_since: Option<u64>,
}

/// The guard set and its policy; persisted by the caller (`to_bytes`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guards {
    version: u8,
    guards: Vec<Guard>,
}

/// Version of the guard set's encoding.
const GUARDS_VERSION: u8 = 1;
/// Largest encoded guard set.
pub const MAX_GUARDS_BYTES: usize = 2 + GUARDS * (32 + 2 * 11) + 8;

/// What [`Guards::refresh`] changed: persist the set when not empty.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GuardChange {
    pub added: Vec<Address>,
    pub replaced: Vec<Address>,
}

impl Default for Guards {
    fn default() -> Self {
        Guards {
            version: GUARDS_VERSION,
            guards: Vec::new(),
        }
    }
}

impl Guards {
    pub fn new() -> Guards {
        Guards::default()
    }

    pub fn guards(&self) -> &[Guard] {
        &self.guards
    }

    pub fn is_guard(&self, id: &Address) -> bool {
        self.guards.iter().any(|g| g.id == *id)
    }

    /// Notes that a link to `id` failed at `now` (the first failure counts).
    pub fn mark_unreachable(&mut self, id: &Address, now: u64) {
        if let Some(g) = self.guards.iter_mut().find(|g| g.id == *id) {
            g.unreachable_since.get_or_insert(now);
        }
    }

    /// Notes that `id` answered.
    pub fn mark_reachable(&mut self, id: &Address) {
        if let Some(g) = self.guards.iter_mut().find(|g| g.id == *id) {
            g.unreachable_since = None;
        }
    }

    /// Replaces the guards unreachable for longer than `replace_after`
    /// seconds, and fills the set up to [`GUARDS`] from `candidates` (relays
    /// other than `me`), at random. A guard missing from the candidates (no
    /// fresh record) counts as unreachable from `now`.
    pub fn refresh<R: Rng>(
        &mut self,
        me: &Address,
        candidates: &[Candidate],
        now: u64,
        replace_after: u64,
        rng: &mut R,
    ) -> GuardChange {
        let mut change = GuardChange::default();
        for g in &mut self.guards {
            let listed = candidates.iter().any(|c| c.relay && c.hop.id == g.id);
            if !listed {
                g.unreachable_since.get_or_insert(now);
            }
        }
        self.guards.retain(|g| {
            let gone = g
                .unreachable_since
                .is_some_and(|t| now.saturating_sub(t) >= replace_after);
            if gone {
                change.replaced.push(g.id);
            }
            !gone
        });
        let mut pool: Vec<&Candidate> = candidates
            .iter()
            .filter(|c| c.relay && c.hop.id != *me && !self.is_guard(&c.hop.id))
            .collect();
        pool.sort_by_key(|c| c.hop.id);
        pool.dedup_by_key(|c| c.hop.id);
        pool.shuffle(rng);
        for c in pool
            .into_iter()
            .take(GUARDS.saturating_sub(self.guards.len()))
        {
            self.guards.push(Guard {
                id: c.hop.id,
                since: now,
                unreachable_since: None,
            });
            change.added.push(c.hop.id);
        }
        change
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, WireError> {
        encode_limited(self, MAX_GUARDS_BYTES)
    }

    /// Decodes a stored guard set; refuses more than [`GUARDS`] guards.
    pub fn from_bytes(bytes: &[u8]) -> Result<Guards, WireError> {
        let g: Guards = decode_limited(bytes, MAX_GUARDS_BYTES)?;
        if g.version != GUARDS_VERSION {
            return Err(WireError::Version(g.version));
        }
        if g.guards.len() > GUARDS {
            return Err(WireError::Limit("too many guards"));
        }
        Ok(g)
    }
}

/// The last [`RECENT_PATHS`] paths used, to avoid reusing them.
#[derive(Debug, Default)]
pub struct RecentPaths {
    paths: VecDeque<Vec<Address>>,
}

impl RecentPaths {
    pub fn new() -> RecentPaths {
        RecentPaths::default()
    }

    fn contains(&self, ids: &[Address]) -> bool {
        self.paths.iter().any(|p| p == ids)
    }

    fn remember(&mut self, ids: Vec<Address>) {
        if self.paths.len() >= RECENT_PATHS {
            self.paths.pop_front();
        }
        self.paths.push_back(ids);
    }

    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }
}

/// Chooses a path of up to `hops` relays (at most [`MAX_RELAYS`]) from
/// `me` to `recipient`, and remembers it in `recent`.
pub fn choose_path<R: Rng>(
    me: &Address,
    recipient: &Address,
    candidates: &[Candidate],
    guards: &Guards,
    recent: &mut RecentPaths,
    hops: usize,
    rng: &mut R,
) -> Path {
    let hops = hops.min(MAX_RELAYS);
    let mut usable: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| c.relay && c.hop.id != *me && c.hop.id != *recipient)
        .collect();
    usable.sort_by_key(|c| c.hop.id);
    usable.dedup_by_key(|c| c.hop.id);
    let usable_guards: Vec<&Candidate> = usable
        .iter()
        .copied()
        .filter(|c| guards.is_guard(&c.hop.id))
        .collect();
    let mut path = draw(&usable, &usable_guards, hops, rng);
    for _ in 1..MAX_DRAWS {
        if path.relays.is_empty() || !recent.contains(&path.ids()) {
            break;
        }
        path = draw(&usable, &usable_guards, hops, rng);
    }
    if !path.relays.is_empty() {
        recent.remember(path.ids());
    }
    path
}

fn draw<R: Rng>(usable: &[&Candidate], guards: &[&Candidate], hops: usize, rng: &mut R) -> Path {
    let mut relays = Vec::with_capacity(hops);
    let mut guard_first = false;
    if hops > 0 {
        let first = match guards.choose(rng) {
            Some(g) => {
                guard_first = true;
                Some(*g)
            }
            None => usable.choose(rng).copied(),
        };
        if let Some(first) = first {
            relays.push(first.hop);
            let mut rest: Vec<&Candidate> = usable
                .iter()
                .copied()
                .filter(|c| c.hop.id != first.hop.id)
                .collect();
            // A uniformly random ordered draw (`choose_multiple` does not
            // promise a random order).
            let (drawn, _) = rest.partial_shuffle(rng, hops - 1);
            relays.extend(drawn.iter().map(|c| c.hop));
        }
    }
    Path {
        shortfall: hops - relays.len(),
        relays,
        guard_first,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::collections::HashSet;

    fn id(n: u8) -> Address {
        Address([n; 32])
    }

    fn cand(n: u8, relay: bool) -> Candidate {
        Candidate {
            hop: NodeHop {
                id: id(n),
                key: [n; 32],
            },
            relay,
        }
    }

    /// Me (0), the recipient (9), relays 1..=8, and a non-relay 20.
    fn network() -> Vec<Candidate> {
        let mut c: Vec<_> = (1..=8).map(|n| cand(n, true)).collect();
        c.push(cand(0, true));
        c.push(cand(9, true));
        c.push(cand(20, false));
        c
    }

    fn guards_of(c: &[Candidate], rng: &mut StdRng) -> Guards {
        let mut g = Guards::new();
        g.refresh(&id(0), c, 1000, GUARD_REPLACE_AFTER_SECS, rng);
        g
    }

    #[test]
    fn never_me_the_recipient_a_non_relay_or_a_relay_twice() {
        let mut rng = StdRng::seed_from_u64(1);
        let c = network();
        let g = guards_of(&c, &mut rng);
        assert_eq!(g.guards().len(), GUARDS);
        assert!(!g.is_guard(&id(0)) && !g.is_guard(&id(20)));
        let mut recent = RecentPaths::new();
        for _ in 0..500 {
            let p = choose_path(&id(0), &id(9), &c, &g, &mut recent, 3, &mut rng);
            assert_eq!(p.relays.len(), 3);
            assert_eq!(p.shortfall, 0);
            assert!(p.guard_first);
            assert!(g.is_guard(&p.relays[0].id));
            let ids: HashSet<_> = p.ids().into_iter().collect();
            assert_eq!(ids.len(), 3, "a relay twice: {p:?}");
            for bad in [0, 9, 20] {
                assert!(!ids.contains(&id(bad)), "{bad} on the path");
            }
        }
        assert!(recent.len() <= RECENT_PATHS);
    }

    #[test]
    fn hundred_paths_over_eight_relays_are_at_least_ninety_distinct() {
        // The done-when, as a pure check: 10 nodes, 8 relays, 3 hops;
        // the recipient is one of the guards for some seeds.
        let mut recipient_was_guard = 0;
        for seed in 0..20 {
            let mut rng = StdRng::seed_from_u64(seed);
            let c = network();
            let g = guards_of(&c, &mut rng);
            recipient_was_guard += usize::from(g.is_guard(&id(9)));
            let mut recent = RecentPaths::new();
            let mut seen = HashSet::new();
            let mut used = HashSet::new();
            for _ in 0..100 {
                let p = choose_path(&id(0), &id(9), &c, &g, &mut recent, 3, &mut rng);
                used.extend(p.ids());
                seen.insert(p.ids());
            }
            assert!(seen.len() >= 90, "seed {seed}: {} distinct", seen.len());
            assert!(used.len() >= 6, "seed {seed}: {} relays used", used.len());
        }
        assert!(recipient_was_guard > 0, "the hard case was not met");
    }

    #[test]
    fn fewer_relays_than_hops_uses_what_there_is() {
        let mut rng = StdRng::seed_from_u64(2);
        let c = vec![cand(0, true), cand(9, true), cand(1, true), cand(2, true)];
        let g = guards_of(&c, &mut rng);
        let mut recent = RecentPaths::new();
        let p = choose_path(&id(0), &id(9), &c, &g, &mut recent, 3, &mut rng);
        assert_eq!(p.relays.len(), 2);
        assert_eq!(p.shortfall, 1);
        // No relay at all: a direct packet, all of it short.
        let c = vec![cand(0, true), cand(9, true)];
        let p = choose_path(&id(0), &id(9), &c, &Guards::new(), &mut recent, 3, &mut rng);
        assert!(p.relays.is_empty());
        assert_eq!(p.shortfall, 3);
        // More hops than a packet carries are cut to MAX_RELAYS.
        let c = network();
        let g = guards_of(&c, &mut rng);
        let p = choose_path(&id(0), &id(9), &c, &g, &mut recent, 8, &mut rng);
        assert_eq!((p.relays.len(), p.shortfall), (MAX_RELAYS, 0));
    }

    #[test]
    fn a_guard_that_is_the_recipient_is_not_used_for_its_messages() {
        let mut rng = StdRng::seed_from_u64(3);
        let c = network();
        let g = guards_of(&c, &mut rng);
        let to = g.guards()[0].id;
        let mut recent = RecentPaths::new();
        for _ in 0..50 {
            let p = choose_path(&id(0), &to, &c, &g, &mut recent, 3, &mut rng);
            assert!(p.guard_first);
            assert!(!p.ids().contains(&to));
        }
        // Only guard is the recipient: the first hop is drawn afresh.
        let c2 = vec![cand(0, true), cand(1, true), cand(2, true), cand(3, true)];
        let mut g = Guards::new();
        g.refresh(&id(0), &c2[..2], 0, 10, &mut rng);
        assert_eq!(g.guards().len(), 1);
        let p = choose_path(&id(0), &id(1), &c2, &g, &mut recent, 2, &mut rng);
        assert!(!p.guard_first);
        assert_eq!(p.relays.len(), 2);
    }

    #[test]
    fn retries_draw_afresh() {
        let mut rng = StdRng::seed_from_u64(4);
        let c = network();
        let g = guards_of(&c, &mut rng);
        let mut recent = RecentPaths::new();
        let a = choose_path(&id(0), &id(9), &c, &g, &mut recent, 3, &mut rng);
        let b = choose_path(&id(0), &id(9), &c, &g, &mut recent, 3, &mut rng);
        assert_ne!(a.ids(), b.ids());
    }

    #[test]
    fn guards_are_kept_and_replaced_only_when_unreachable_for_long() {
        let mut rng = StdRng::seed_from_u64(5);
        let c = network();
        let mut g = guards_of(&c, &mut rng);
        let first: Vec<_> = g.guards().iter().map(|g| g.id).collect();
        // Refreshing again changes nothing.
        assert_eq!(
            g.refresh(&id(0), &c, 2000, 100, &mut rng),
            GuardChange::default()
        );
        // Unreachable, but not for long: kept; reachable again: cleared.
        g.mark_unreachable(&first[0], 2000);
        assert!(g
            .refresh(&id(0), &c, 2099, 100, &mut rng)
            .replaced
            .is_empty());
        g.mark_reachable(&first[0]);
        assert!(g
            .refresh(&id(0), &c, 5000, 100, &mut rng)
            .replaced
            .is_empty());
        // Unreachable for long: replaced by another relay.
        g.mark_unreachable(&first[1], 5000);
        let ch = g.refresh(&id(0), &c, 5100, 100, &mut rng);
        assert_eq!(ch.replaced, vec![first[1]]);
        assert_eq!(ch.added.len(), 1);
        assert_ne!(ch.added[0], first[1]);
        assert_eq!(g.guards().len(), GUARDS);
        // A guard whose record is gone counts as unreachable from then on.
        let without: Vec<_> = c.iter().copied().filter(|x| x.hop.id != first[2]).collect();
        assert!(g
            .refresh(&id(0), &without, 6000, 100, &mut rng)
            .replaced
            .is_empty());
        let ch = g.refresh(&id(0), &without, 6100, 100, &mut rng);
        assert_eq!(ch.replaced, vec![first[2]]);
    }

    #[test]
    fn guard_set_round_trips_and_decoding_is_bounded() {
        let mut rng = StdRng::seed_from_u64(6);
        let c = network();
        let mut g = guards_of(&c, &mut rng);
        g.mark_unreachable(&g.guards()[1].id.clone(), u64::MAX);
        let bytes = g.to_bytes().unwrap();
        assert!(bytes.len() <= MAX_GUARDS_BYTES);
        assert_eq!(Guards::from_bytes(&bytes).unwrap(), g);
        assert!(Guards::from_bytes(&[]).is_err());
        assert!(Guards::from_bytes(&vec![0u8; MAX_GUARDS_BYTES + 1]).is_err());
        let mut four = g.clone();
        four.guards.push(four.guards[0].clone());
        let enc = postcard::to_stdvec(&four).unwrap();
        assert!(Guards::from_bytes(&enc).is_err());
    }
}
