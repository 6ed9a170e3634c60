//! Membership: who this node links to, decided without doing any I/O.
//!
//! [`Membership`] is the whole overlay policy of a node. It is fed events
//! (a tick, a dial's outcome, a link up or down, a frame from a neighbour)
//! with the current time, and answers with [`Action`]s (dial, send, close,
//! tell the Router a link counts or no longer counts). The NeighbourManager
//! actor runs it over real TCP links and sled; the simulator in
//! [`super::sim`] runs thousands of them over an in-memory transport. Both
//! run exactly this code.
//!
//! Policy, in short:
//! - keep between `min` and `max` links; below `min`, dial from the address
//!   book, preferring nodes that are not neighbours of a neighbour; above
//!   `max`, close the least useful link (the one whose peer has the most
//!   links, most of them shared with us);
//! - a node at `max` dialled by a newcomer evicts a neighbour that can spare
//!   the link, or else answers [`LinkBody::Full`] with records to try and
//!   closes, so a newcomer that knows one full node still gets in;
//! - neighbours trade [`Gossip`]: their neighbour lists, and every
//!   [`EXCHANGE_INTERVAL`] a bounded random sample of fresh records to one
//!   neighbour, so membership traffic per node does not grow with the network;
//! - a broken link is redialled with exponential backoff and jitter per
//!   address, and replaced from the book meanwhile;
//! - leaving, the node hands each neighbour records of the others.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::{IteratorRandom, SliceRandom};
use rand::{Rng, SeedableRng};

use super::book::{AddressBook, PeerEntry, BOOK_CAPACITY};
use crate::backoff::backoff_delay;
use crate::crypto::{Address, Identity, SignedRecord};
use crate::wire::link::{Gossip, LinkBody, MAX_GOSSIP_NEIGHBOURS, MAX_RECORDS_PER_FRAME};

/// How often the driver should call [`Membership::tick`].
pub const TICK: Duration = Duration::from_secs(1);
/// First redial delay of an address; doubles per failure up to [`REDIAL_MAX`].
pub const REDIAL_MIN: Duration = Duration::from_millis(500);
pub const REDIAL_MAX: Duration = Duration::from_secs(30);
/// A lost neighbour is redialled (even above `min`) until this many dials
/// have failed; after that it is only a candidate like any other.
pub const LOST_GIVE_UP: u32 = 12;
/// A node that answered [`LinkBody::Full`] is not dialled again for this long.
pub const FULL_BACKOFF: Duration = Duration::from_secs(30);
/// How often a sample of records goes to one (random) neighbour.
pub const EXCHANGE_INTERVAL: Duration = Duration::from_secs(10);
/// Records in one exchange sample (including this node's own).
pub const EXCHANGE_SAMPLE: usize = 8;
/// Records handed over when refusing a newcomer or leaving.
pub const FAREWELL_SAMPLE: usize = 8;
/// At most one gossip frame per link this often, from this side...
pub const GOSSIP_MIN_GAP: Duration = Duration::from_secs(1);
/// ... and gossip arriving faster than this from one link is ignored.
pub const GOSSIP_ACCEPT_GAP: Duration = Duration::from_millis(500);
/// This node re-signs its record when it is older than this, so the record
/// it gossips says it was alive recently.
pub const RECORD_REFRESH_SECS: u64 = 600;
/// How often the address book is swept of terrible entries.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// How often neighbours are marked as seen in the book.
pub const SEEN_REFRESH_SECS: u64 = 60;

const _: () = assert!(EXCHANGE_SAMPLE <= MAX_RECORDS_PER_FRAME);
const _: () = assert!(FAREWELL_SAMPLE <= MAX_RECORDS_PER_FRAME);

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Who opened a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    In,
    Out,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }
}

/// Names one link (one session) for the life of the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId(pub u64);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipConfig {
    pub min_neighbours: usize,
    pub max_neighbours: usize,
    pub book_capacity: usize,
}

impl MembershipConfig {
    pub fn new(min_neighbours: usize, max_neighbours: usize) -> MembershipConfig {
        MembershipConfig {
            min_neighbours,
            max_neighbours: max_neighbours.clamp(min_neighbours.max(1), MAX_GOSSIP_NEIGHBOURS),
            book_capacity: BOOK_CAPACITY,
        }
    }
}

/// What the driver is asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Open a link to this address; report with `dial_failed` or `link_up`.
    Dial(SocketAddr),
    /// Send this frame on the link.
    Send { link: LinkId, body: LinkBody },
    /// Write `farewell` (if any), then close the link.
    Close {
        link: LinkId,
        farewell: Option<LinkBody>,
    },
    /// The link now counts as a neighbour: the Router may use it.
    Up(LinkId),
    /// The link no longer counts as a neighbour.
    Down(LinkId),
}

/// How a peer said goodbye before its link closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Farewell {
    None,
    Leaving,
    Full,
}

struct Link {
    id: LinkId,
    record: SignedRecord,
    direction: Direction,
    since_ms: u64,
    rtt_us: Option<u64>,
    their_neighbours: HashSet<Address>,
    gossip_in_ms: Option<u64>,
    gossip_out_ms: Option<u64>,
    /// Our neighbour list changed since we last told this peer.
    owes_neighbours: bool,
    farewell: Farewell,
}

impl Link {
    fn listen(&self) -> SocketAddr {
        self.record.record.listen
    }
}

/// One neighbour, as `status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeighbourInfo {
    pub address: Address,
    pub listen: SocketAddr,
    pub direction: Direction,
    pub since_ms: u64,
    pub rtt_us: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Backoff {
    failures: u32,
    next_ms: u64,
}

/// Counters of what membership refused or ignored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MembershipStats {
    pub records_refused: u64,
    pub gossip_ignored: u64,
    pub evictions: u64,
    pub refusals: u64,
}

pub struct Membership {
    identity: Arc<Identity>,
    own: SignedRecord,
    cfg: MembershipConfig,
    book: AddressBook,
    bootstrap: Vec<SocketAddr>,
    links: HashMap<Address, Link>,
    by_id: HashMap<LinkId, Address>,
    dialing: HashSet<SocketAddr>,
    backoff: HashMap<SocketAddr, Backoff>,
    /// Redialled even above `min` (until [`LOST_GIVE_UP`] failures):
    /// neighbours whose link broke, and bootstrap addresses until each has
    /// been linked once, so a bootstrap node that starts later still joins.
    lost: HashSet<SocketAddr>,
    leaving: bool,
    next_exchange_ms: u64,
    next_sweep_ms: u64,
    actions: Vec<Action>,
    rng: StdRng,
    stats: MembershipStats,
}

impl Membership {
    /// `own` is this node's signed record; `stored` the address book as
    /// stored; `seed` fixes the random choices (the simulator's runs repeat).
    pub fn new(
        identity: Arc<Identity>,
        own: SignedRecord,
        bootstrap: Vec<SocketAddr>,
        cfg: MembershipConfig,
        stored: Vec<PeerEntry>,
        seed: Option<u64>,
        now_ms: u64,
    ) -> Membership {
        let mut book = AddressBook::new(cfg.book_capacity);
        let me = own.record.address;
        book.load(stored.into_iter().filter(|e| e.address() != me));
        let mut rng = match seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_entropy(),
        };
        let first_exchange = now_ms + rng.gen_range(0..ms(EXCHANGE_INTERVAL));
        Membership {
            identity,
            own,
            lost: bootstrap.iter().copied().collect(),
            bootstrap,
            cfg,
            book,
            links: HashMap::new(),
            by_id: HashMap::new(),
            dialing: HashSet::new(),
            backoff: HashMap::new(),
            leaving: false,
            next_exchange_ms: first_exchange,
            next_sweep_ms: now_ms + ms(SWEEP_INTERVAL),
            actions: Vec::new(),
            rng,
            stats: MembershipStats::default(),
        }
    }

    /// The actions decided since the last call, in order.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    pub fn book(&self) -> &AddressBook {
        &self.book
    }

    /// Book entries changed and removed since the last call, for the store.
    pub fn take_book_changes(&mut self) -> (Vec<PeerEntry>, Vec<Address>) {
        self.book.take_changes()
    }

    pub fn stats(&self) -> MembershipStats {
        self.stats
    }

    pub fn config(&self) -> &MembershipConfig {
        &self.cfg
    }

    pub fn own_record(&self) -> &SignedRecord {
        &self.own
    }

    pub fn is_leaving(&self) -> bool {
        self.leaving
    }

    pub fn neighbour_count(&self) -> usize {
        self.links.len()
    }

    pub fn neighbours(&self) -> Vec<NeighbourInfo> {
        let mut v: Vec<NeighbourInfo> = self
            .links
            .values()
            .map(|l| NeighbourInfo {
                address: l.record.record.address,
                listen: l.listen(),
                direction: l.direction,
                since_ms: l.since_ms,
                rtt_us: l.rtt_us,
            })
            .collect();
        v.sort_by_key(|n| n.listen);
        v
    }

    /// The neighbour on this link, if it counts as one.
    pub fn neighbour_of(&self, link: LinkId) -> Option<Address> {
        self.by_id.get(&link).copied()
    }

    fn ready(&self, addr: &SocketAddr, now_ms: u64) -> bool {
        self.backoff.get(addr).is_none_or(|b| b.next_ms <= now_ms)
    }

    fn connected_to(&self, addr: &SocketAddr) -> bool {
        self.links.values().any(|l| l.listen() == *addr)
    }

    fn usable(&self, addr: &SocketAddr, now_ms: u64) -> bool {
        *addr != self.own.record.listen
            && !self.dialing.contains(addr)
            && !self.connected_to(addr)
            && self.ready(addr, now_ms)
    }

    fn back_off(&mut self, addr: SocketAddr, now_ms: u64) -> u32 {
        let b = self.backoff.entry(addr).or_default();
        b.failures = b.failures.saturating_add(1);
        b.next_ms = now_ms + ms(backoff_delay(REDIAL_MIN, REDIAL_MAX, b.failures));
        b.failures
    }

    fn neighbours_changed(&mut self) {
        for l in self.links.values_mut() {
            l.owes_neighbours = true;
        }
    }

    fn neighbour_list(&self) -> Vec<Address> {
        self.links
            .keys()
            .copied()
            .take(MAX_GOSSIP_NEIGHBOURS)
            .collect()
    }

    /// The periodic work: keep the degree in bounds, gossip, age the book.
    pub fn tick(&mut self, now_ms: u64) {
        if self.leaving {
            return;
        }
        let now = now_ms / 1000;
        if self.own.record.time + RECORD_REFRESH_SECS < now {
            let r = &self.own.record;
            self.own = SignedRecord::sign(&self.identity, r.listen, r.relay, now);
        }
        self.trim(now);
        self.dial_more(now_ms);
        self.gossip(now_ms);
        if now_ms >= self.next_sweep_ms {
            self.next_sweep_ms = now_ms + ms(SWEEP_INTERVAL);
            let keep: HashSet<Address> = self.links.keys().copied().collect();
            for a in &keep {
                if self
                    .book
                    .get(a)
                    .is_some_and(|e| e.last_seen + SEEN_REFRESH_SECS <= now)
                {
                    self.book.seen(a, now);
                }
            }
            // Judged from an empty view, everything looks stale.
            if !keep.is_empty() {
                self.book.sweep(now, &keep);
            }
            let book = &self.book;
            let bootstrap = &self.bootstrap;
            let lost = &self.lost;
            self.backoff.retain(|a, b| {
                b.next_ms > now_ms
                    || lost.contains(a)
                    || bootstrap.contains(a)
                    || book.by_listen(a).is_some()
            });
        }
    }

    /// Above `max`: close the least useful links.
    fn trim(&mut self, now: u64) {
        while self.links.len() > self.cfg.max_neighbours {
            let Some(victim) = self.least_useful(false) else {
                break;
            };
            self.evict(victim, now);
        }
    }

    /// The link to give up first: its peer has the most neighbours in common
    /// with us, then the most neighbours. With `spare_only`, only peers
    /// known to stay above `min` without us qualify.
    fn least_useful(&self, spare_only: bool) -> Option<Address> {
        let ours: HashSet<&Address> = self.links.keys().collect();
        self.links
            .values()
            .filter(|l| !spare_only || l.their_neighbours.len() > self.cfg.min_neighbours)
            .max_by_key(|l| {
                let shared = l
                    .their_neighbours
                    .iter()
                    .filter(|a| ours.contains(a))
                    .count();
                (shared, l.their_neighbours.len(), l.record.record.address)
            })
            .map(|l| l.record.record.address)
    }

    /// Closes a neighbour's link, handing it records to try instead.
    fn evict(&mut self, victim: Address, now: u64) {
        let Some(link) = self.links.remove(&victim) else {
            return;
        };
        self.by_id.remove(&link.id);
        self.stats.evictions += 1;
        let records = self.referrals(&[victim], now);
        self.actions.push(Action::Down(link.id));
        self.actions.push(Action::Close {
            link: link.id,
            farewell: Some(LinkBody::Full(records)),
        });
        self.neighbours_changed();
    }

    /// Records to hand a node we turn away: our neighbours with room first,
    /// then fresh entries of the book.
    fn referrals(&mut self, exclude: &[Address], now: u64) -> Vec<SignedRecord> {
        let max = self.cfg.max_neighbours;
        let mut out: Vec<SignedRecord> = self
            .links
            .values()
            .filter(|l| {
                l.their_neighbours.len() < max && !exclude.contains(&l.record.record.address)
            })
            .map(|l| l.record.clone())
            .choose_multiple(&mut self.rng, FAREWELL_SAMPLE);
        let mut skip: HashSet<Address> = exclude.iter().copied().collect();
        skip.extend(out.iter().map(|r| r.record.address));
        skip.extend(self.links.keys().copied());
        let more = FAREWELL_SAMPLE - out.len();
        out.extend(self.book.sample(more, now, &skip, &mut self.rng));
        out
    }

    /// Below `min`: dial lost neighbours and candidates from the book.
    fn dial_more(&mut self, now_ms: u64) {
        let max = self.cfg.max_neighbours;
        let min = self.cfg.min_neighbours;
        let active = self.links.len() + self.dialing.len();
        let mut targets: Vec<SocketAddr> = Vec::new();
        if active < max {
            let mut lost: Vec<SocketAddr> = self
                .lost
                .iter()
                .filter(|a| self.usable(a, now_ms))
                .copied()
                .collect();
            lost.sort();
            lost.truncate(max - active);
            targets.extend(lost);
        }
        // Redials of lost neighbours do not count towards `min`: a crashed
        // host holds each one for the whole dial timeout, and a node that
        // lost most of its neighbours at once would otherwise wait on them
        // instead of replacing them from the book meanwhile.
        let hopeful = self.links.len()
            + self
                .dialing
                .iter()
                .filter(|a| !self.lost.contains(a))
                .count();
        if hopeful < min {
            let two_hop: HashSet<&Address> = self
                .links
                .values()
                .flat_map(|l| l.their_neighbours.iter())
                .collect();
            // (class, address): lower classes are dialled first.
            let mut candidates: Vec<(u8, SocketAddr)> = Vec::new();
            for e in self.book.entries() {
                let a = e.address();
                let listen = e.listen();
                if self.links.contains_key(&a)
                    || targets.contains(&listen)
                    || !self.usable(&listen, now_ms)
                {
                    continue;
                }
                let class = match (two_hop.contains(&a), e.failures > 0) {
                    (false, false) => 0,
                    (true, false) => 2,
                    (false, true) => 3,
                    (true, true) => 4,
                };
                candidates.push((class, listen));
            }
            for b in &self.bootstrap {
                if !targets.contains(b)
                    && self.usable(b, now_ms)
                    && !candidates.iter().any(|(_, a)| a == b)
                {
                    candidates.push((1, *b));
                }
            }
            candidates.shuffle(&mut self.rng);
            candidates.sort_by_key(|(class, _)| *class);
            targets.extend(candidates.into_iter().take(min - hopeful).map(|(_, a)| a));
        }
        for addr in targets {
            self.dialing.insert(addr);
            self.actions.push(Action::Dial(addr));
        }
    }

    fn send_gossip(&mut self, addr: Address, sample: bool, now_ms: u64) {
        let neighbours = self.neighbour_list();
        let records = if sample {
            let mut skip: HashSet<Address> = HashSet::new();
            skip.insert(addr);
            let mut r = vec![self.own.clone()];
            let now = now_ms / 1000;
            r.extend(
                self.book
                    .sample(EXCHANGE_SAMPLE - 1, now, &skip, &mut self.rng),
            );
            r
        } else {
            Vec::new()
        };
        if let Some(l) = self.links.get_mut(&addr) {
            l.gossip_out_ms = Some(now_ms);
            l.owes_neighbours = false;
            let link = l.id;
            self.actions.push(Action::Send {
                link,
                body: LinkBody::Gossip(Gossip {
                    neighbours,
                    records,
                }),
            });
        }
    }

    fn gossip(&mut self, now_ms: u64) {
        let may_send = |l: &Link| {
            l.gossip_out_ms
                .is_none_or(|t| t + ms(GOSSIP_MIN_GAP) <= now_ms)
        };
        if now_ms >= self.next_exchange_ms {
            let interval = ms(EXCHANGE_INTERVAL);
            self.next_exchange_ms = now_ms + interval / 2 + self.rng.gen_range(0..interval);
            let pick = self
                .links
                .values()
                .filter(|l| may_send(l))
                .map(|l| l.record.record.address)
                .choose(&mut self.rng);
            if let Some(a) = pick {
                self.send_gossip(a, true, now_ms);
            }
        }
        let owed: Vec<Address> = self
            .links
            .values()
            .filter(|l| l.owes_neighbours && may_send(l))
            .map(|l| l.record.record.address)
            .collect();
        for a in owed {
            self.send_gossip(a, false, now_ms);
        }
    }

    /// The driver lost track of its dials (it restarted): dial afresh.
    pub fn forget_dials(&mut self) {
        self.dialing.clear();
    }

    /// A dial made for [`Action::Dial`] failed.
    pub fn dial_failed(&mut self, addr: SocketAddr, now_ms: u64) {
        self.dialing.remove(&addr);
        if self.back_off(addr, now_ms) >= LOST_GIVE_UP {
            self.lost.remove(&addr);
        }
        self.book.failed(&addr);
    }

    /// A dial made for [`Action::Dial`] reached a node (a `link_up` follows).
    pub fn dial_succeeded(&mut self, addr: SocketAddr) {
        self.dialing.remove(&addr);
        self.lost.remove(&addr);
        self.backoff.remove(&addr);
    }

    /// A link finished its handshake; `record` is the peer's, verified.
    pub fn link_up(&mut self, id: LinkId, record: SignedRecord, direction: Direction, now_ms: u64) {
        let now = now_ms / 1000;
        let addr = record.record.address;
        let listen = record.record.listen;
        self.book.offer(record.clone(), now, now);
        self.book.succeeded(&addr, now);
        if self.leaving {
            self.actions.push(Action::Close {
                link: id,
                farewell: None,
            });
            return;
        }
        if let Some(existing) = self.links.get(&addr) {
            if existing.id == id {
                return;
            }
            // Both sides dialled: keep the link dialled by the lower address,
            // so both ends make the same choice. A redial by the same side
            // replaces the older link, which is likely dead.
            let me = self.own.record.address;
            let dialler = |d: Direction| if d == Direction::Out { me } else { addr };
            let keep_new = dialler(existing.direction) == dialler(direction)
                || dialler(direction) < dialler(existing.direction);
            if !keep_new {
                self.actions.push(Action::Close {
                    link: id,
                    farewell: None,
                });
                return;
            }
            let old = existing.id;
            self.links.remove(&addr);
            self.by_id.remove(&old);
            self.actions.push(Action::Down(old));
            self.actions.push(Action::Close {
                link: old,
                farewell: None,
            });
        } else if direction == Direction::In && self.links.len() >= self.cfg.max_neighbours {
            match self.least_useful(true) {
                Some(victim) => self.evict(victim, now),
                None => {
                    self.stats.refusals += 1;
                    let records = self.referrals(&[addr], now);
                    self.actions.push(Action::Close {
                        link: id,
                        farewell: Some(LinkBody::Full(records)),
                    });
                    return;
                }
            }
        }
        self.backoff.remove(&listen);
        self.lost.remove(&listen);
        self.neighbours_changed();
        self.links.insert(
            addr,
            Link {
                id,
                record,
                direction,
                since_ms: now_ms,
                rtt_us: None,
                their_neighbours: HashSet::new(),
                gossip_in_ms: None,
                gossip_out_ms: None,
                owes_neighbours: false,
                farewell: Farewell::None,
            },
        );
        self.by_id.insert(id, addr);
        self.actions.push(Action::Up(id));
        // A newcomer learns where else to go at once.
        self.send_gossip(addr, true, now_ms);
    }

    /// A link closed (whoever closed it).
    pub fn link_down(&mut self, id: LinkId, now_ms: u64) {
        let Some(addr) = self.by_id.remove(&id) else {
            return;
        };
        let Some(link) = self.links.remove(&addr) else {
            return;
        };
        self.actions.push(Action::Down(id));
        self.neighbours_changed();
        if self.leaving {
            return;
        }
        let listen = link.listen();
        match link.farewell {
            Farewell::Leaving => {}
            Farewell::Full => {
                let b = self.backoff.entry(listen).or_default();
                b.next_ms = now_ms + ms(FULL_BACKOFF);
            }
            Farewell::None => {
                self.lost.insert(listen);
                // The first redial comes after a short, jittered delay.
                self.back_off(listen, now_ms);
            }
        }
    }

    /// A round trip on the link was measured.
    pub fn link_rtt(&mut self, id: LinkId, rtt_us: u64) {
        if let Some(l) = self.by_id.get(&id).and_then(|a| self.links.get_mut(a)) {
            l.rtt_us = Some(rtt_us);
        }
    }

    /// A membership frame arrived on a link.
    pub fn on_frame(&mut self, id: LinkId, body: LinkBody, now_ms: u64) {
        let Some(addr) = self.by_id.get(&id).copied() else {
            return;
        };
        let records = match body {
            LinkBody::Gossip(Gossip {
                neighbours,
                records,
            }) => {
                let Some(l) = self.links.get_mut(&addr) else {
                    return;
                };
                if l.gossip_in_ms
                    .is_some_and(|t| t + ms(GOSSIP_ACCEPT_GAP) > now_ms)
                {
                    self.stats.gossip_ignored += 1;
                    return;
                }
                l.gossip_in_ms = Some(now_ms);
                l.their_neighbours = neighbours.into_iter().take(MAX_GOSSIP_NEIGHBOURS).collect();
                records
            }
            LinkBody::Records(records) => {
                let Some(l) = self.links.get_mut(&addr) else {
                    return;
                };
                if l.gossip_in_ms
                    .is_some_and(|t| t + ms(GOSSIP_ACCEPT_GAP) > now_ms)
                {
                    self.stats.gossip_ignored += 1;
                    return;
                }
                l.gossip_in_ms = Some(now_ms);
                records
            }
            LinkBody::Full(records) => {
                if let Some(l) = self.links.get_mut(&addr) {
                    l.farewell = Farewell::Full;
                }
                records
            }
            LinkBody::Leaving(records) => {
                if let Some(l) = self.links.get_mut(&addr) {
                    l.farewell = Farewell::Leaving;
                }
                records
            }
            _ => return,
        };
        self.learn(records, now_ms);
    }

    /// Takes verified records into the book; refuses forged and future ones.
    fn learn(&mut self, records: Vec<SignedRecord>, now_ms: u64) {
        let now = now_ms / 1000;
        let me = self.own.record.address;
        for rec in records.into_iter().take(MAX_RECORDS_PER_FRAME) {
            let r = &rec.record;
            if r.address == me || r.listen.port() == 0 || r.listen.ip().is_unspecified() {
                continue;
            }
            let seen = r.time.min(now);
            if let Some(known) = self.book.get(&r.address) {
                // The same record again needs no second signature check.
                if known.record == rec {
                    self.book.seen(&r.address, seen);
                    continue;
                }
                if known.record.record.time >= r.time {
                    continue;
                }
            }
            if rec.verify(now).is_err() {
                self.stats.records_refused += 1;
                continue;
            }
            self.book.offer(rec, seen, now);
        }
    }

    /// Leave the network: close every link, handing each neighbour records
    /// of the others.
    pub fn leave(&mut self) {
        self.leaving = true;
        let records: Vec<SignedRecord> = self.links.values().map(|l| l.record.clone()).collect();
        for (addr, link) in std::mem::take(&mut self.links) {
            self.by_id.remove(&link.id);
            let others: Vec<SignedRecord> = records
                .iter()
                .filter(|r| r.record.address != addr)
                .cloned()
                .choose_multiple(&mut self.rng, FAREWELL_SAMPLE);
            self.actions.push(Action::Down(link.id));
            self.actions.push(Action::Close {
                link: link.id,
                farewell: Some(LinkBody::Leaving(others)),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn peer(i: u8) -> SignedRecord {
        let listen = SocketAddr::from(([10, 9, 0, i], 58008));
        SignedRecord::sign(&Identity::generate(), listen, true, NOW)
    }

    fn dials(actions: &[Action]) -> Vec<SocketAddr> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Dial(addr) => Some(*addr),
                _ => None,
            })
            .collect()
    }

    /// A node that lost most of its neighbours at once dials replacements
    /// from the book while its redials of the lost ones are in flight.
    #[test]
    fn lost_redials_do_not_hold_off_replacements() {
        let me = Arc::new(Identity::generate());
        let own = SignedRecord::sign(&me, SocketAddr::from(([10, 9, 0, 1], 58008)), true, NOW);
        let mut m = Membership::new(
            me,
            own,
            Vec::new(),
            MembershipConfig::new(3, 6),
            Vec::new(),
            Some(7),
            NOW * 1000,
        );
        let neighbours: Vec<SignedRecord> = (2..8).map(peer).collect();
        let others: Vec<SignedRecord> = (8..12).map(peer).collect();
        let mut t = NOW * 1000;
        for (i, r) in neighbours.iter().enumerate() {
            m.link_up(LinkId(i as u64), r.clone(), Direction::In, t);
        }
        m.on_frame(
            LinkId(0),
            LinkBody::Gossip(Gossip {
                neighbours: Vec::new(),
                records: others.clone(),
            }),
            t,
        );
        // Five neighbours vanish without a word.
        for i in 1..6 {
            m.link_down(LinkId(i), t);
        }
        m.take_actions();
        // Past the first redial delay the lost ones are redialled...
        t += 2 * ms(REDIAL_MIN) + 1;
        m.tick(t);
        let lost: Vec<SocketAddr> = neighbours[1..].iter().map(|r| r.record.listen).collect();
        let first = dials(&m.take_actions());
        assert!(lost.iter().all(|a| first.contains(a)), "{first:?}");
        // ... and, while they hang, two replacements bring the node back to min.
        let fresh: Vec<SocketAddr> = first.into_iter().filter(|a| !lost.contains(a)).collect();
        assert_eq!(fresh.len(), 2, "{fresh:?}");
        assert!(fresh
            .iter()
            .all(|a| others.iter().any(|r| r.record.listen == *a)));
        // Nothing more is dialled while all those are in flight.
        m.tick(t + ms(TICK));
        assert!(dials(&m.take_actions()).is_empty());
    }
}
