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
//!   address, and replaced from the book meanwhile, even above `min` (the
//!   random replacements bridge the cuts that a wave of crashes leaves);
//! - every [`ROTATE_INTERVAL`] or so a node trades one link for one to a
//!   node picked at random from its whole book, so the graph keeps mixing
//!   and the pieces a network split left behind find each other again once
//!   the split is over;
//! - leaving, the node hands each neighbour records of the others.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::{IteratorRandom, SliceRandom};
use rand::{Rng, SeedableRng};

use super::bans::BanList;
use super::book::{AddressBook, PeerEntry, Source, BOOK_CAPACITY};
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
/// A dial not answered within this long no longer holds off a dial to
/// another candidate: a handshake takes a few round trips, while a host that
/// is gone holds a dial for the whole dial timeout.
pub const DIAL_PATIENCE: Duration = Duration::from_secs(2);
/// Most dials in flight at once.
pub const MAX_DIALS_IN_FLIGHT: usize = 16;
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
/// About this often (0.5 to 1.5 times), a node with `min` links or more
/// (and fewer than `max`) dials one node picked at random from its whole book, stale entries
/// included, and once the new link is up drops a neighbour that can spare
/// it. Nothing else makes a node with enough links dial: without this, two
/// halves of a network split for longer than the redials of lost neighbours
/// last (a few minutes) would stay apart for good, each whole on its own.
/// Costs one link set-up per node per interval.
pub const ROTATE_INTERVAL: Duration = Duration::from_secs(600);
/// How long a link may hold a node at `max + 1`: an inbound link to a full
/// node waits this long for the peer's first gossip (which decides whether
/// it is let in), and a rotation's link from a full node for the peer's.
pub const ADMIT_GRACE: Duration = Duration::from_secs(3);
/// Neighbours kept as anchors: the longest-lived outbound ones, saved by the
/// driver and dialled first after a restart.
pub const ANCHORS: usize = 2;
/// Referrals (the first record of a `Full` farewell) held for dialling.
pub const MAX_REFERRED: usize = 4;

const _: () = assert!(EXCHANGE_SAMPLE <= MAX_RECORDS_PER_FRAME);
const _: () = assert!(FAREWELL_SAMPLE <= MAX_RECORDS_PER_FRAME);

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Whether this side may gossip on the link at `now_ms` ([`GOSSIP_MIN_GAP`]).
fn may_send(l: &Link, now_ms: u64) -> bool {
    l.gossip_out_ms
        .is_none_or(|t| t + ms(GOSSIP_MIN_GAP) <= now_ms)
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
    /// Our own record changed (a new packet key) since we last sent it.
    owes_record: bool,
    farewell: Farewell,
    /// Dialled to rotate: once the peer has shown it keeps the link (its
    /// first gossip), a spare neighbour is dropped for it.
    rotation: bool,
    /// Not a neighbour yet: the link holds this node at `max + 1` until the
    /// peer's first gossip decides (or this time, in ms, passes).
    pending_until: Option<u64>,
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
    /// Links traded by [`ROTATE_INTERVAL`] rotations.
    pub rotations: u64,
    /// Newcomers let into a full node by splitting one of its links.
    pub splits: u64,
    /// Rotations of a full node accepted by a full node (a link swap).
    pub swaps: u64,
}

pub struct Membership {
    identity: Arc<Identity>,
    own: SignedRecord,
    cfg: MembershipConfig,
    book: AddressBook,
    bootstrap: Vec<SocketAddr>,
    links: HashMap<Address, Link>,
    by_id: HashMap<LinkId, Address>,
    /// Dials in flight, and when each started.
    dialing: HashMap<SocketAddr, u64>,
    backoff: HashMap<SocketAddr, Backoff>,
    /// Redialled even above `min` (until [`LOST_GIVE_UP`] failures):
    /// neighbours whose link broke, and bootstrap addresses until each has
    /// been linked once, so a bootstrap node that starts later still joins.
    lost: HashSet<SocketAddr>,
    /// Links lost against our will and not yet replaced: replaced even
    /// above `min` (up to `max`), so that a partition cut by crashes is
    /// bridged by random links from the book. One is forgiven per sweep.
    owed: usize,
    /// The dial in flight for a rotation, if any.
    rotating: Option<SocketAddr>,
    /// The neighbour a full node's rotation will drop once the new link is
    /// kept; its record goes to the new peer as a hint (second record of the
    /// first gossip), so the peer can refer the neighbour it drops to it.
    rotation_victim: Option<Address>,
    /// Nodes a full peer referred us to (the first record of its `Full`):
    /// dialled before anything else while there is room.
    referred: Vec<SocketAddr>,
    next_rotate_ms: u64,
    leaving: bool,
    next_exchange_ms: u64,
    /// Neighbours short of links whose sample is answered with ours.
    answer_short: Vec<Address>,
    next_sweep_ms: u64,
    actions: Vec<Action>,
    rng: StdRng,
    stats: MembershipStats,
    /// Nodes over a budget: never dialled, nor their listen address, until
    /// the ban ends (see [`Membership::ban`]).
    bans: BanList,
}

impl Membership {
    /// Replaces the bootstrap addresses (a config reload): a new one is
    /// redialled until it has been linked once, like those given at start;
    /// one no longer named is no longer treated as a bootstrap node.
    pub fn set_bootstrap(&mut self, bootstrap: Vec<SocketAddr>) {
        for old in &self.bootstrap {
            if !bootstrap.contains(old) {
                self.lost.remove(old);
            }
        }
        for new in &bootstrap {
            if !self.bootstrap.contains(new) {
                self.lost.insert(*new);
            }
        }
        self.bootstrap = bootstrap;
    }

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
        let mut rng = match seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_entropy(),
        };
        let mut book = AddressBook::with_key(cfg.book_capacity, rng.gen());
        let me = own.record.address;
        book.load(stored.into_iter().filter(|e| e.address() != me));
        let first_exchange = now_ms + rng.gen_range(0..ms(EXCHANGE_INTERVAL));
        let rotate = ms(ROTATE_INTERVAL);
        let first_rotation = now_ms + rotate / 2 + rng.gen_range(0..rotate);
        Membership {
            identity,
            own,
            lost: bootstrap.iter().copied().collect(),
            bootstrap,
            cfg,
            book,
            links: HashMap::new(),
            by_id: HashMap::new(),
            dialing: HashMap::new(),
            backoff: HashMap::new(),
            owed: 0,
            rotating: None,
            rotation_victim: None,
            referred: Vec::new(),
            next_rotate_ms: first_rotation,
            leaving: false,
            next_exchange_ms: first_exchange,
            answer_short: Vec::new(),
            next_sweep_ms: now_ms + ms(SWEEP_INTERVAL),
            actions: Vec::new(),
            rng,
            stats: MembershipStats::default(),
            bans: BanList::default(),
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

    /// Replaces this node's own record (re-signed by the driver, e.g. with a
    /// new packet key): new links and every later gossip carry it, and each
    /// neighbour gets it in a gossip frame as soon as [`GOSSIP_MIN_GAP`]
    /// allows (peers take a record with a newer `time` in place of the old).
    ///
    /// Returns false, changing nothing, for a record of another address or
    /// one that says what the current one says. A record not newer than the
    /// current one (two signings in one second) is signed again one second
    /// past it, so that peers do not pass it over as already known.
    pub fn set_own_record(&mut self, own: SignedRecord, now_ms: u64) -> bool {
        let (cur, new) = (&self.own.record, &own.record);
        if new.address != cur.address {
            return false;
        }
        if (new.listen, new.relay, new.packet_key) == (cur.listen, cur.relay, cur.packet_key) {
            return false;
        }
        self.own = if new.time > cur.time {
            own
        } else {
            SignedRecord::sign_with_key(
                &self.identity,
                new.listen,
                new.relay,
                cur.time + 1,
                new.packet_key,
            )
        };
        for l in self.links.values_mut() {
            l.owes_record = true;
        }
        if !self.leaving {
            self.send_owed(now_ms);
        }
        true
    }

    pub fn is_leaving(&self) -> bool {
        self.leaving
    }

    pub fn neighbour_count(&self) -> usize {
        self.degree()
    }

    /// Links that count as neighbours (not pending).
    fn degree(&self) -> usize {
        self.links
            .values()
            .filter(|l| l.pending_until.is_none())
            .count()
    }

    fn settled(&self) -> impl Iterator<Item = &Link> {
        self.links.values().filter(|l| l.pending_until.is_none())
    }

    /// The nodes this node sees alive right now: its neighbours and the
    /// neighbours they last gossiped. A node that leaves this view was most
    /// likely cut off or stopped (onion origins avoid it as a relay for a
    /// while); a node never in it is simply unknown.
    pub fn near(&self) -> HashSet<Address> {
        let me = self.own.record.address;
        self.settled()
            .flat_map(|l| {
                std::iter::once(l.record.record.address).chain(l.their_neighbours.iter().copied())
            })
            .filter(|a| *a != me)
            .collect()
    }

    /// Dials first after a restart the nodes of `anchors` (the records of
    /// the longest-lived outbound neighbours before it, see
    /// [`Membership::anchors`]), like lost neighbours.
    pub fn set_anchors(&mut self, anchors: Vec<SignedRecord>, now_ms: u64) {
        let now = now_ms / 1000;
        let me = self.own.record.address;
        for r in anchors.into_iter().take(ANCHORS) {
            if r.record.address == me || r.verify(now).is_err() {
                continue;
            }
            self.lost.insert(r.record.listen);
            self.book.offer(r, now, now, Source::Link);
        }
    }

    /// Records of up to [`ANCHORS`] outbound neighbours, the longest-lived
    /// first: for the driver to save, and to give back with
    /// [`Membership::set_anchors`] after a restart.
    pub fn anchors(&self) -> Vec<SignedRecord> {
        let mut out: Vec<&Link> = self
            .settled()
            .filter(|l| l.direction == Direction::Out)
            .collect();
        out.sort_by_key(|l| (l.since_ms, l.id));
        out.into_iter()
            .take(ANCHORS)
            .map(|l| l.record.clone())
            .collect()
    }

    pub fn neighbours(&self) -> Vec<NeighbourInfo> {
        let mut v: Vec<NeighbourInfo> = self
            .settled()
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
        self.by_id
            .get(&link)
            .filter(|a| self.links.get(a).is_some_and(|l| l.pending_until.is_none()))
            .copied()
    }

    fn ready(&self, addr: &SocketAddr, now_ms: u64) -> bool {
        self.backoff.get(addr).is_none_or(|b| b.next_ms <= now_ms)
    }

    fn connected_to(&self, addr: &SocketAddr) -> bool {
        self.links.values().any(|l| l.listen() == *addr)
    }

    fn usable(&self, addr: &SocketAddr, now_ms: u64) -> bool {
        *addr != self.own.record.listen
            && !self.dialing.contains_key(addr)
            && !self.connected_to(addr)
            && self.ready(addr, now_ms)
            && !self.bans.listen_banned(addr, now_ms)
    }

    /// Refuses `address` until `until_ms`: a peer that broke a budget. It is
    /// not dialled, nor the listen address its record named, and its lost
    /// link is not redialled; the driver refuses its links meanwhile
    /// ([`Membership::is_banned`]).
    pub fn ban(&mut self, address: Address, listen: SocketAddr, until_ms: u64, now_ms: u64) {
        self.bans.ban(address, listen, until_ms, now_ms);
        self.lost.remove(&listen);
        if self.rotating == Some(listen) {
            self.rotating = None;
        }
    }

    /// True while `address` is banned ([`Membership::ban`]).
    pub fn is_banned(&self, address: &Address, now_ms: u64) -> bool {
        self.bans.is_banned(address, now_ms)
    }

    /// Bans held (some may have ended, until the next sweep).
    pub fn ban_count(&self) -> usize {
        self.bans.len()
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
        self.settled()
            .map(|l| l.record.record.address)
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
            self.own =
                SignedRecord::sign_with_key(&self.identity, r.listen, r.relay, now, r.packet_key);
        }
        self.expire_pending(now_ms);
        self.trim(now);
        self.dial_more(now_ms);
        self.rotate(now_ms);
        self.gossip(now_ms);
        if now_ms >= self.next_sweep_ms {
            self.next_sweep_ms = now_ms + ms(SWEEP_INTERVAL);
            self.owed = self.owed.saturating_sub(1);
            self.bans.sweep(now_ms);
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
        while self.degree() > self.cfg.max_neighbours {
            let Some(victim) = self
                .least_useful(false, None, true)
                .or_else(|| self.least_useful(false, None, false))
            else {
                break;
            };
            self.evict(victim, now, None);
        }
    }

    /// Links that eviction in favour of others never picks: the longest-lived
    /// outbound link, and the longest-lived of the others. A burst of inbound
    /// newcomers (Sybils) cannot replace them.
    fn protected(&self) -> HashSet<Address> {
        let mut out = HashSet::new();
        let oldest_out = self
            .settled()
            .filter(|l| l.direction == Direction::Out)
            .min_by_key(|l| (l.since_ms, l.id))
            .map(|l| l.record.record.address);
        out.extend(oldest_out);
        let oldest = self
            .settled()
            .filter(|l| Some(l.record.record.address) != oldest_out)
            .min_by_key(|l| (l.since_ms, l.id))
            .map(|l| l.record.record.address);
        out.extend(oldest);
        out
    }

    /// Links a full node may hand over (see [`Membership::protected`]).
    fn evictable(&self, except: Option<Address>) -> Option<Address> {
        self.least_useful(false, except, true)
    }

    /// A link to hand over to `hint`: not protected, not `except`, not the
    /// hinted node itself nor one of its neighbours (as far as we know).
    fn evictable_for(&self, except: Address, hint: Address) -> Option<Address> {
        let protected = self.protected();
        let ours: HashSet<&Address> = self.links.keys().collect();
        self.settled()
            .filter(|l| {
                let a = l.record.record.address;
                a != except
                    && a != hint
                    && !protected.contains(&a)
                    && !l.their_neighbours.contains(&hint)
            })
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

    /// The hint a node short of links sends on a new link: a neighbour of
    /// ours that has room (the fewest links), for a full peer to send the
    /// neighbour it closes for us to.
    fn room_hint(&self, new: Address) -> Option<SignedRecord> {
        if self.degree() > self.cfg.min_neighbours {
            return None;
        }
        let max = self.cfg.max_neighbours;
        self.settled()
            .filter(|l| {
                l.record.record.address != new
                    && l.gossip_in_ms.is_some()
                    && l.their_neighbours.len() < max
            })
            .min_by_key(|l| (l.their_neighbours.len(), l.record.record.address))
            .map(|l| l.record.clone())
    }

    /// Ends a pending link whose peer did not speak within [`ADMIT_GRACE`].
    fn expire_pending(&mut self, now_ms: u64) {
        let late: Vec<Address> = self
            .links
            .values()
            .filter(|l| l.pending_until.is_some_and(|t| t <= now_ms))
            .map(|l| l.record.record.address)
            .collect();
        for a in late {
            if self.links.get(&a).is_some_and(|l| l.rotation) {
                self.rotating = None;
                self.rotation_victim = None;
            }
            self.refuse(a, now_ms / 1000);
        }
    }

    /// Closes a pending link with referrals: not let in.
    fn refuse(&mut self, addr: Address, now: u64) {
        let Some(link) = self.links.remove(&addr) else {
            return;
        };
        self.by_id.remove(&link.id);
        self.stats.refusals += 1;
        let records = self.referrals(&[addr], now);
        self.actions.push(Action::Close {
            link: link.id,
            farewell: Some(LinkBody::Full(records)),
        });
    }

    /// A pending link becomes a neighbour.
    fn settle(&mut self, addr: Address, now_ms: u64) {
        let Some(l) = self.links.get_mut(&addr) else {
            return;
        };
        if l.pending_until.take().is_none() {
            return;
        }
        let id = l.id;
        self.owed = self.owed.saturating_sub(1);
        self.neighbours_changed();
        self.actions.push(Action::Up(id));
        let _ = now_ms;
    }

    /// The first gossip of a newcomer that dialled this full node: make room
    /// or refuse it. Room is made by closing a neighbour that is not
    /// protected, in this order of preference:
    /// - one that keeps more than `min` links without us;
    /// - any, if the newcomer is short by two links or more: the neighbour
    ///   is referred to the newcomer, so the link is split in two and
    ///   nobody's degree drops (an edge split);
    /// - any, if the newcomer's gossip names (second record) a neighbour of
    ///   its own with room: a full node's rotation names the neighbour it
    ///   will drop, a node one link short a neighbour also short. Ours is
    ///   referred to that one: two links for two, and degrees stay (a
    ///   swap), or two nodes short of a link get one each.
    fn admit(&mut self, addr: Address, records: &[SignedRecord], now_ms: u64) {
        let now = now_ms / 1000;
        let me = self.own.record.address;
        let min = self.cfg.min_neighbours;
        let Some(l) = self.links.get(&addr) else {
            return;
        };
        let theirs = l
            .their_neighbours
            .iter()
            .filter(|a| **a != me && **a != addr)
            .count();
        let newcomer = l.record.clone();
        let hint = records
            .get(1)
            .filter(|r| {
                let a = r.record.address;
                a != me
                    && a != addr
                    && !self.links.contains_key(&a)
                    && l.their_neighbours.contains(&a)
                    && r.verify(now).is_ok()
            })
            .cloned();
        let spare = self.least_useful(true, Some(addr), true);
        let (victim, referral) = if let Some(v) = spare {
            (Some(v), None)
        } else if theirs + 2 <= min.max(2) {
            self.stats.splits += 1;
            (self.evictable(Some(addr)), Some(newcomer))
        } else if let Some(h) = hint {
            self.stats.swaps += 1;
            (self.evictable_for(addr, h.record.address), Some(h))
        } else {
            (None, None)
        };
        match victim {
            Some(v) => {
                self.evict(v, now, referral);
                self.settle(addr, now_ms);
                self.send_gossip(addr, true, now_ms, None);
            }
            None => self.refuse(addr, now),
        }
    }

    /// The link to give up first: its peer has the most neighbours in common
    /// with us, then the most neighbours. With `spare_only`, only peers
    /// known to stay above `min` without us qualify; `except` never does.
    fn least_useful(
        &self,
        spare_only: bool,
        except: Option<Address>,
        protect: bool,
    ) -> Option<Address> {
        let ours: HashSet<&Address> = self.links.keys().collect();
        let protected = if protect {
            self.protected()
        } else {
            HashSet::new()
        };
        self.settled()
            .filter(|l| !spare_only || l.their_neighbours.len() > self.cfg.min_neighbours)
            .filter(|l| Some(l.record.record.address) != except)
            .filter(|l| !protected.contains(&l.record.record.address))
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

    /// The peer dialled for a rotation kept the link: drop a neighbour that
    /// can spare it, unless that would leave this node with `min + 1` links
    /// or fewer (or no neighbour can spare it; the node is below `max`).
    ///
    /// Why `min + 1`: a rotation's peer that is full drops one of its own
    /// for us, so a trade always followed by a drop here thins the graph
    /// (in the simulator the mean degree sank from 4.3 to 3.5 in two hours
    /// at 3/6), while never dropping fills every node up to `max`. Keeping
    /// the extra link at `min` and `min + 1` holds the mean where joining
    /// left it, with most nodes a link above `min`.
    fn finish_rotation(&mut self, new: Address, now: u64) {
        let victim = self.rotation_victim.take();
        if self.degree() > self.cfg.max_neighbours {
            // A full node's rotation: drop the neighbour named in the hint.
            let v = victim
                .filter(|v| *v != new && self.links.contains_key(v))
                .or_else(|| self.evictable(Some(new)));
            if let Some(v) = v {
                self.stats.rotations += 1;
                self.evict(v, now, None);
            }
            return;
        }
        if self.degree() <= self.cfg.min_neighbours + 1 {
            return;
        }
        if let Some(victim) = self.least_useful(true, Some(new), true) {
            self.stats.rotations += 1;
            self.evict(victim, now, None);
        }
    }

    /// Closes a neighbour's link, handing it records to try instead
    /// (`first`, if given, first: the node it should link to now).
    fn evict(&mut self, victim: Address, now: u64, first: Option<SignedRecord>) {
        let Some(link) = self.links.remove(&victim) else {
            return;
        };
        self.by_id.remove(&link.id);
        self.stats.evictions += 1;
        let mut records = self.referrals(&[victim], now);
        if let Some(f) = first {
            records.retain(|r| r.record.address != f.record.address);
            records.insert(0, f);
            records.truncate(FAREWELL_SAMPLE);
        }
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
            .filter(|l| l.pending_until.is_none())
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
        let referred = std::mem::take(&mut self.referred);
        for a in referred {
            if self.links.len() + self.dialing.len() + targets.len() < max
                && self.usable(&a, now_ms)
                && !targets.contains(&a)
            {
                targets.push(a);
            }
        }
        let referrals = targets.len();
        let active = active + referrals;
        if active < max {
            let mut lost: Vec<SocketAddr> = self
                .lost
                .iter()
                .filter(|a| self.usable(a, now_ms))
                .copied()
                .collect();
            lost.sort();
            lost.truncate(
                (max - active).min(MAX_DIALS_IN_FLIGHT.saturating_sub(self.dialing.len())),
            );
            targets.extend(lost);
        }
        // Redials of lost neighbours, and dials unanswered for longer than
        // DIAL_PATIENCE, do not count towards `min`: a crashed host holds a
        // dial for the whole dial timeout, and a node that lost most of its
        // neighbours at once would otherwise wait on dead hosts instead of
        // trying the next candidates meanwhile.
        let hopeful = self.degree()
            + referrals
            + self
                .dialing
                .iter()
                .filter(|(a, t)| !self.lost.contains(*a) && **t + ms(DIAL_PATIENCE) > now_ms)
                .count();
        let room = MAX_DIALS_IN_FLIGHT.saturating_sub(self.dialing.len() + targets.len());
        let target = min.max(self.degree() + self.owed).min(max);
        if hopeful < target && room > 0 {
            let two_hop: HashSet<&Address> = self
                .links
                .values()
                .flat_map(|l| l.their_neighbours.iter())
                .collect();
            // (class, address): lower classes are dialled first.
            let mut candidates: Vec<(u8, SocketAddr)> = Vec::new();
            // Two entries may name one listen address (a node that came back
            // with a new key): dial it once.
            let mut seen: HashSet<SocketAddr> = targets.iter().copied().collect();
            for e in self.book.entries() {
                let a = e.address();
                let listen = e.listen();
                if self.links.contains_key(&a)
                    || self.bans.is_banned(&a, now_ms)
                    || !self.usable(&listen, now_ms)
                    || !seen.insert(listen)
                {
                    continue;
                }
                // Nodes this node linked to itself first (gossip cannot
                // put those in the book), then the bootstrap nodes, then
                // gossiped ones.
                let class = match (two_hop.contains(&a), e.failures > 0, e.tried) {
                    (false, false, true) => 0,
                    (false, false, false) => 2,
                    (true, false, true) => 3,
                    (true, false, false) => 4,
                    (false, true, _) => 5,
                    (true, true, _) => 6,
                };
                candidates.push((class, listen));
            }
            for b in &self.bootstrap {
                if self.usable(b, now_ms) && seen.insert(*b) {
                    candidates.push((1, *b));
                }
            }
            candidates.shuffle(&mut self.rng);
            candidates.sort_by_key(|(class, _)| *class);
            let want = (target - hopeful).min(room);
            targets.extend(candidates.into_iter().take(want).map(|(_, a)| a));
        }
        for addr in targets {
            self.dialing.insert(addr, now_ms);
            self.actions.push(Action::Dial(addr));
        }
    }

    /// Every [`ROTATE_INTERVAL`] or so: dial one node picked at random from
    /// the whole book but for the bootstrap nodes. Stale and failing entries
    /// are not passed over: after a network split the nodes on the other
    /// side are exactly those.
    fn rotate(&mut self, now_ms: u64) {
        if now_ms < self.next_rotate_ms {
            return;
        }
        let interval = ms(ROTATE_INTERVAL);
        self.next_rotate_ms = now_ms + interval / 2 + self.rng.gen_range(0..interval);
        // A node short of links is dialling anyway; a node at `max` has no
        // room for the new link before it drops an old one. (A rotation
        // whose dial ended without a link up is forgotten here.)
        let in_flight = self.rotating.is_some_and(|a| self.dialing.contains_key(&a))
            || self.links.values().any(|l| l.pending_until.is_some());
        let max = self.cfg.max_neighbours;
        let degree = self.degree();
        if in_flight
            || degree < self.cfg.min_neighbours.max(1)
            || self.owed > 0
            || self.dialing.len() >= MAX_DIALS_IN_FLIGHT
        {
            return;
        }
        let victim = if degree >= max {
            // A full node trades too, at `max + 1` for the handshake: the
            // only way a network where every node is full (min = max) can
            // join two pieces. It drops a neighbour it names to the peer.
            if !self.dialing.is_empty() {
                return;
            }
            match self.evictable(None) {
                Some(v) => Some(v),
                None => return,
            }
        } else {
            if degree + self.dialing.len() >= max {
                return;
            }
            // Without a neighbour to drop for it, the trade would only add a
            // link, and rotations would push every degree up to `max`.
            let min = self.cfg.min_neighbours;
            if !self.settled().any(|l| l.their_neighbours.len() > min) {
                return;
            }
            None
        };
        let two_hop: HashSet<&Address> = self
            .links
            .values()
            .flat_map(|l| l.their_neighbours.iter())
            .collect();
        // Bootstrap nodes are passed over: the few that many nodes name sit
        // in nearly every book, and would draw a share of all rotations that
        // grows with the network.
        let candidates: Vec<(bool, SocketAddr)> = self
            .book
            .entries()
            .filter(|e| {
                !self.links.contains_key(&e.address())
                    && !self.bans.is_banned(&e.address(), now_ms)
                    && !self.bootstrap.contains(&e.listen())
                    && self.usable(&e.listen(), now_ms)
            })
            .map(|e| (two_hop.contains(&e.address()), e.listen()))
            .collect();
        // Not a neighbour's neighbour if there is any such: a new link there
        // adds a path the graph did not have.
        let far = candidates.iter().any(|(near, _)| !near);
        let pick = candidates
            .into_iter()
            .filter(|(near, _)| !far || !near)
            .map(|(_, a)| a)
            .choose(&mut self.rng);
        if let Some(addr) = pick {
            self.rotation_victim = victim;
            self.rotating = Some(addr);
            self.dialing.insert(addr, now_ms);
            self.actions.push(Action::Dial(addr));
        }
    }

    fn send_gossip(
        &mut self,
        addr: Address,
        sample: bool,
        now_ms: u64,
        hint: Option<SignedRecord>,
    ) {
        let neighbours = self.neighbour_list();
        let owes_record = self.links.get(&addr).is_some_and(|l| l.owes_record);
        let records = if sample {
            let mut skip: HashSet<Address> = HashSet::new();
            skip.insert(addr);
            let mut r = vec![self.own.clone()];
            if let Some(h) = hint {
                skip.insert(h.record.address);
                r.push(h);
            }
            let now = now_ms / 1000;
            r.extend(
                self.book
                    .sample(EXCHANGE_SAMPLE - r.len(), now, &skip, &mut self.rng),
            );
            r
        } else if owes_record {
            vec![self.own.clone()]
        } else {
            Vec::new()
        };
        if let Some(l) = self.links.get_mut(&addr) {
            l.gossip_out_ms = Some(now_ms);
            l.owes_neighbours = false;
            l.owes_record = false;
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
        if now_ms >= self.next_exchange_ms {
            let interval = ms(EXCHANGE_INTERVAL);
            self.next_exchange_ms = now_ms + interval / 2 + self.rng.gen_range(0..interval);
            let pick = self
                .links
                .values()
                .filter(|l| l.pending_until.is_none() && may_send(l, now_ms))
                .map(|l| l.record.record.address)
                .choose(&mut self.rng);
            if let Some(a) = pick {
                self.send_gossip(a, true, now_ms, None);
            }
        }
        self.send_owed(now_ms);
    }

    /// Tells the neighbours owed it (and not told within [`GOSSIP_MIN_GAP`])
    /// our neighbour list, and our record if it changed.
    fn send_owed(&mut self, now_ms: u64) {
        let owed: Vec<Address> = self
            .settled()
            .filter(|l| (l.owes_neighbours || l.owes_record) && may_send(l, now_ms))
            .map(|l| l.record.record.address)
            .collect();
        for a in owed {
            self.send_gossip(a, false, now_ms, None);
        }
    }

    /// The driver lost track of its dials (it restarted): dial afresh.
    pub fn forget_dials(&mut self) {
        self.dialing.clear();
    }

    /// A dial made for [`Action::Dial`] failed.
    pub fn dial_failed(&mut self, addr: SocketAddr, now_ms: u64) {
        self.dialing.remove(&addr);
        if self.rotating == Some(addr) {
            self.rotating = None;
            self.rotation_victim = None;
        }
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
        self.book.linked(record.clone(), now);
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
            let was_pending = existing.pending_until.is_some();
            self.links.remove(&addr);
            self.by_id.remove(&old);
            if !was_pending {
                self.actions.push(Action::Down(old));
            }
            self.actions.push(Action::Close {
                link: old,
                farewell: None,
            });
        }
        let full = self.degree() >= self.cfg.max_neighbours;
        let pending_any = self.links.values().any(|l| l.pending_until.is_some());
        let rotation = direction == Direction::Out && self.rotating == Some(listen);
        if rotation {
            self.rotating = None;
        }
        // A full node holds a new link at `max + 1` only while its peer's
        // first gossip is on the way, and only one at a time.
        let pending = full && (direction == Direction::In || rotation);
        if pending && pending_any {
            self.stats.refusals += 1;
            let records = self.referrals(&[addr], now);
            self.actions.push(Action::Close {
                link: id,
                farewell: Some(LinkBody::Full(records)),
            });
            return;
        }
        if direction == Direction::Out && full && !rotation {
            // A dial that ended after the node filled up: not needed.
            self.actions.push(Action::Close {
                link: id,
                farewell: Some(LinkBody::Full(Vec::new())),
            });
            return;
        }
        self.backoff.remove(&listen);
        self.lost.remove(&listen);
        if !pending {
            self.neighbours_changed();
        }
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
                owes_record: false,
                farewell: Farewell::None,
                rotation,
                pending_until: pending.then_some(now_ms + ms(ADMIT_GRACE)),
            },
        );
        self.by_id.insert(id, addr);
        if pending && direction == Direction::In {
            // Decided on the newcomer's first gossip (see `admit`).
            return;
        }
        let hint = if pending {
            self.rotation_victim
                .and_then(|v| self.links.get(&v))
                .map(|l| l.record.clone())
        } else {
            self.owed = self.owed.saturating_sub(1);
            self.actions.push(Action::Up(id));
            self.room_hint(addr)
        };
        // A newcomer learns where else to go at once.
        self.send_gossip(addr, true, now_ms, hint);
    }

    /// A link closed (whoever closed it).
    pub fn link_down(&mut self, id: LinkId, now_ms: u64) {
        let Some(addr) = self.by_id.remove(&id) else {
            return;
        };
        let Some(link) = self.links.remove(&addr) else {
            return;
        };
        if link.pending_until.is_some() {
            // Never a neighbour: nothing lost.
            if link.rotation {
                self.rotation_victim = None;
            }
            return;
        }
        self.actions.push(Action::Down(id));
        self.neighbours_changed();
        if self.leaving {
            return;
        }
        let listen = link.listen();
        match link.farewell {
            Farewell::Leaving => {
                self.owed = (self.owed + 1).min(self.cfg.max_neighbours);
            }
            Farewell::Full => {
                let b = self.backoff.entry(listen).or_default();
                b.next_ms = now_ms + ms(FULL_BACKOFF);
            }
            Farewell::None if self.bans.is_banned(&addr, now_ms) => {
                // Replaced, never redialled.
                self.owed = (self.owed + 1).min(self.cfg.max_neighbours);
            }
            Farewell::None => {
                self.owed = (self.owed + 1).min(self.cfg.max_neighbours);
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
                let pending = l.pending_until.is_some();
                let direction = l.direction;
                // A settled neighbour short of links that sent us its sample
                // gets ours back (at most every half exchange interval): a
                // node linked only to a busy hub would otherwise learn other
                // nodes only when the hub's random exchange picks it.
                let answer = !pending
                    && !records.is_empty()
                    && l.their_neighbours.len() < self.cfg.min_neighbours
                    && l.gossip_out_ms
                        .is_none_or(|t| t + ms(EXCHANGE_INTERVAL) / 2 <= now_ms);
                if answer {
                    self.answer_short.push(addr);
                }
                if pending && direction == Direction::In {
                    self.admit(addr, &records, now_ms);
                } else {
                    let l = self.links.get_mut(&addr);
                    if l.is_some_and(|l| std::mem::take(&mut l.rotation)) {
                        self.settle(addr, now_ms);
                        self.finish_rotation(addr, now_ms / 1000);
                    }
                }
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
                // The first record is where the full node wants us to go.
                if let Some(first) = records.first() {
                    let listen = first.record.listen;
                    if first.record.address != self.own.record.address
                        && !self.connected_to(&listen)
                        && first.verify(now_ms / 1000).is_ok()
                        && self.referred.len() < MAX_REFERRED
                        && !self.referred.contains(&listen)
                    {
                        self.referred.push(listen);
                    }
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
        let source = self
            .links
            .get(&addr)
            .map(|l| Source::Peer(l.listen().ip()))
            .unwrap_or(Source::Link);
        self.learn(records, now_ms, source);
        for a in std::mem::take(&mut self.answer_short) {
            self.send_gossip(a, true, now_ms, None);
        }
    }

    /// Takes verified records into the book; refuses forged and future ones.
    fn learn(&mut self, records: Vec<SignedRecord>, now_ms: u64, source: Source) {
        let now = now_ms / 1000;
        let me = self.own.record.address;
        // No honest node sends more than EXCHANGE_SAMPLE (or FAREWELL_SAMPLE)
        // records a frame: a peer sending more gains nothing by it.
        for rec in records
            .into_iter()
            .take(EXCHANGE_SAMPLE.max(FAREWELL_SAMPLE))
        {
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
            // A neighbour's newer record (a new packet key) is the one its
            // link hands on from now on (referrals, anchors, farewells).
            if let Some(l) = self.links.get_mut(&r.address) {
                if l.record.record.time < r.time {
                    l.record = rec.clone();
                }
            }
            self.book.offer(rec, seen, now, source);
        }
    }

    /// A verified record learned outside of links (a letter's sender): into
    /// the book as a new entry (it was not gossiped by anyone, so it counts
    /// in its own address group).
    pub fn learned(&mut self, record: SignedRecord, now_ms: u64) {
        self.learn(vec![record], now_ms, Source::Link);
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
    use crate::crypto::unix_now;

    struct Peer {
        id: Identity,
        record: SignedRecord,
    }

    fn peer(host: u8) -> Peer {
        let id = Identity::generate();
        let listen = format!("10.0.0.{host}:58008").parse().unwrap();
        let record = SignedRecord::sign(&id, listen, true, unix_now());
        Peer { id, record }
    }

    fn node(min: usize, max: usize, bootstrap: Vec<SocketAddr>) -> (Membership, u64) {
        let me = peer(1);
        let now_ms = unix_now() * 1000;
        let m = Membership::new(
            Arc::new(me.id),
            me.record,
            bootstrap,
            MembershipConfig::new(min, max),
            Vec::new(),
            Some(7),
            now_ms,
        );
        (m, now_ms)
    }

    fn gossip(neighbours: &[&Peer], records: &[&Peer]) -> LinkBody {
        LinkBody::Gossip(Gossip {
            neighbours: neighbours.iter().map(|p| p.id.address()).collect(),
            records: records.iter().map(|p| p.record.clone()).collect(),
        })
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

    fn closes(actions: &[Action]) -> Vec<(LinkId, Option<LinkBody>)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Close { link, farewell } => Some((*link, farewell.clone())),
                _ => None,
            })
            .collect()
    }

    /// A hub answers the sample of a neighbour short of links with its own
    /// (once per half exchange interval), so a leaf of a busy hub learns
    /// other nodes without waiting for the hub's random exchange to pick it.
    #[test]
    fn a_short_neighbours_sample_is_answered_with_ours() {
        let (mut m, now) = node(2, 4, vec![]);
        let (leaf, known, also) = (peer(2), peer(3), peer(4));
        m.link_up(LinkId(1), leaf.record.clone(), Direction::In, now);
        m.link_up(LinkId(2), known.record.clone(), Direction::In, now);
        m.on_frame(LinkId(2), gossip(&[&also], &[&known, &also]), now);
        m.take_actions();
        let sent_records = |actions: &[Action]| -> Option<usize> {
            actions.iter().find_map(|a| match a {
                Action::Send {
                    link: LinkId(1),
                    body: LinkBody::Gossip(g),
                } => Some(g.records.len()),
                _ => None,
            })
        };
        // The leaf (one neighbour: us) sends its sample: answered with records.
        let t = now + ms(EXCHANGE_INTERVAL);
        m.on_frame(LinkId(1), gossip(&[], &[&leaf]), t);
        let answered = sent_records(&m.take_actions());
        assert!(
            answered.is_some_and(|n| n >= 2),
            "answered with a sample: {answered:?}"
        );
        // Not again within half an exchange interval...
        m.on_frame(LinkId(1), gossip(&[], &[&leaf]), t + 1_000);
        assert_eq!(sent_records(&m.take_actions()), None);
        // ...and a neighbour with enough links is not answered.
        let t2 = t + ms(EXCHANGE_INTERVAL);
        m.on_frame(LinkId(2), gossip(&[&also, &leaf], &[&known]), t2);
        assert!(!m.take_actions().iter().any(|a| matches!(
            a,
            Action::Send {
                link: LinkId(2),
                body: LinkBody::Gossip(_)
            }
        )));
    }

    #[test]
    fn below_min_dials_the_bootstrap_then_nodes_two_hops_away_last() {
        let boot = peer(2);
        let (mut m, now) = node(3, 6, vec![boot.record.record.listen]);
        m.tick(now);
        assert_eq!(dials(&m.take_actions()), vec![boot.record.record.listen]);
        m.dial_succeeded(boot.record.record.listen);
        m.link_up(LinkId(1), boot.record.clone(), Direction::Out, now);
        let (near, far1, far2) = (peer(3), peer(4), peer(5));
        // `near` is already a neighbour of our neighbour.
        m.on_frame(LinkId(1), gossip(&[&near], &[&near, &far1, &far2]), now);
        m.take_actions();
        m.tick(now + 1000);
        let mut got = dials(&m.take_actions());
        got.sort();
        let mut want = vec![far1.record.record.listen, far2.record.record.listen];
        want.sort();
        assert_eq!(got, want);
        // With no better choice left, the two-hop node is dialled too.
        m.dial_failed(far1.record.record.listen, now + 1500);
        m.tick(now + 2000);
        assert_eq!(dials(&m.take_actions()), vec![near.record.record.listen]);
    }

    #[test]
    fn full_node_refers_a_newcomer_when_no_neighbour_can_spare_its_link() {
        let (mut m, now) = node(2, 2, vec![]);
        let (a, b, newcomer) = (peer(2), peer(3), peer(4));
        m.link_up(LinkId(1), a.record.clone(), Direction::In, now);
        m.link_up(LinkId(2), b.record.clone(), Direction::In, now);
        m.take_actions();
        m.link_up(LinkId(3), newcomer.record.clone(), Direction::In, now);
        // Held, undecided, until the newcomer's first gossip: it has one
        // link elsewhere, so splitting a link for it would not help.
        assert!(closes(&m.take_actions()).is_empty());
        let x = peer(9);
        m.on_frame(LinkId(3), gossip(&[&x], &[]), now);
        let acts = m.take_actions();
        let c = closes(&acts);
        assert_eq!(c.len(), 1, "{acts:?}");
        assert_eq!(c[0].0, LinkId(3));
        let Some(LinkBody::Full(records)) = &c[0].1 else {
            panic!("no referral: {acts:?}");
        };
        let referred: Vec<Address> = records.iter().map(|r| r.record.address).collect();
        assert!(referred.contains(&a.id.address()) && referred.contains(&b.id.address()));
        assert!(!referred.contains(&newcomer.id.address()));
        assert_eq!(m.neighbour_count(), 2);
        assert_eq!(m.stats().refusals, 1);
    }

    #[test]
    fn full_node_evicts_a_neighbour_that_can_spare_its_link() {
        let (mut m, now) = node(2, 2, vec![]);
        let (a, b, newcomer) = (peer(2), peer(3), peer(4));
        let (x, y, z) = (peer(5), peer(6), peer(7));
        m.link_up(LinkId(1), a.record.clone(), Direction::In, now);
        m.link_up(LinkId(2), b.record.clone(), Direction::In, now);
        // `b` has three other neighbours: it stays above min without us.
        m.on_frame(LinkId(2), gossip(&[&x, &y, &z], &[]), now);
        m.take_actions();
        m.link_up(LinkId(3), newcomer.record.clone(), Direction::In, now);
        m.on_frame(LinkId(3), gossip(&[&x], &[]), now);
        let acts = m.take_actions();
        let c = closes(&acts);
        assert_eq!(c.len(), 1, "{acts:?}");
        assert_eq!(c[0].0, LinkId(2));
        assert!(matches!(c[0].1, Some(LinkBody::Full(_))));
        assert!(acts.contains(&Action::Down(LinkId(2))));
        assert!(acts.contains(&Action::Up(LinkId(3))));
        assert_eq!(m.stats().evictions, 1);
    }

    /// A dial that ends after the node filled up (dials run in parallel)
    /// does not take it above `max`: the new link is closed.
    #[test]
    fn a_dial_ending_after_the_node_filled_up_is_closed() {
        let (mut m, now) = node(1, 2, vec![]);
        let (a, b, c) = (peer(2), peer(3), peer(4));
        for (i, p) in [&a, &b, &c].iter().enumerate() {
            m.link_up(LinkId(i as u64), p.record.clone(), Direction::Out, now);
        }
        let acts = m.take_actions();
        let c_closes = closes(&acts);
        assert_eq!(c_closes.len(), 1, "{acts:?}");
        assert_eq!(c_closes[0].0, LinkId(2));
        assert_eq!(m.neighbour_count(), 2);
    }

    /// A newcomer that dials a node where every neighbour is at `min` (so
    /// none can spare its link) and has no link yet gets in by an edge split:
    /// one neighbour is closed with the newcomer's record first in its `Full`,
    /// and the node's longest-lived links are never the one closed.
    #[test]
    fn full_node_splits_a_link_for_a_newcomer_with_no_links() {
        let (mut m, now) = node(3, 3, vec![]);
        let ps: Vec<Peer> = (2..5).map(peer).collect();
        let (x, y) = (peer(20), peer(21));
        for (i, p) in ps.iter().enumerate() {
            let d = if i == 0 {
                Direction::Out
            } else {
                Direction::In
            };
            m.link_up(LinkId(i as u64), p.record.clone(), d, now + i as u64);
            m.on_frame(LinkId(i as u64), gossip(&[&x, &y], &[]), now + i as u64);
        }
        m.take_actions();
        let newcomer = peer(9);
        m.link_up(LinkId(9), newcomer.record.clone(), Direction::In, now + 10);
        let held = m.take_actions();
        assert!(closes(&held).is_empty() && !held.contains(&Action::Up(LinkId(9))));
        assert_eq!(m.neighbour_count(), 3, "a held link is no neighbour yet");
        m.on_frame(LinkId(9), gossip(&[], &[]), now + 20);
        let acts = m.take_actions();
        let c = closes(&acts);
        assert_eq!(c.len(), 1, "{acts:?}");
        // 0 is the oldest outbound link, 1 the oldest of the others: protected.
        assert_eq!(c[0].0, LinkId(2));
        let Some(LinkBody::Full(records)) = &c[0].1 else {
            panic!("no referral: {acts:?}");
        };
        assert_eq!(records[0].record.address, newcomer.id.address());
        assert!(acts.contains(&Action::Up(LinkId(9))));
        assert_eq!(m.neighbour_count(), 3);
        assert_eq!(m.stats().splits, 1);
    }

    /// The neighbour closed for a newcomer dials the newcomer first.
    #[test]
    fn a_referral_is_dialled_first() {
        let (mut m, now) = node(3, 3, vec![]);
        let ps: Vec<Peer> = (2..5).map(peer).collect();
        for (i, p) in ps.iter().enumerate() {
            m.link_up(LinkId(i as u64), p.record.clone(), Direction::Out, now);
        }
        let others: Vec<Peer> = (10..20).map(peer).collect();
        m.on_frame(
            LinkId(1),
            gossip(&[], &others.iter().collect::<Vec<_>>()),
            now,
        );
        m.take_actions();
        let newcomer = peer(30);
        m.on_frame(
            LinkId(0),
            LinkBody::Full(vec![newcomer.record.clone()]),
            now,
        );
        m.link_down(LinkId(0), now);
        m.tick(now + 1000);
        let d = dials(&m.take_actions());
        assert_eq!(d.first(), Some(&newcomer.record.record.listen), "{d:?}");
    }

    /// A full node (min = max) rotates too: it dials a far node, holds the
    /// link at max + 1 and names its victim in the first gossip; once the
    /// peer keeps the link, the victim is dropped. A full peer takes the
    /// rotation by closing one of its own neighbours, referred to the victim.
    #[test]
    fn full_nodes_swap_links_on_rotation() {
        let (mut m, now) = node(3, 3, vec![]);
        let ps: Vec<Peer> = (2..5).map(peer).collect();
        let far = peer(40);
        for (i, p) in ps.iter().enumerate() {
            let t = now + i as u64;
            m.link_up(LinkId(i as u64), p.record.clone(), Direction::Out, t);
        }
        m.on_frame(LinkId(0), gossip(&[], &[&far]), now);
        m.take_actions();
        let rotate = ROTATE_INTERVAL.as_millis() as u64;
        let dialled = tick_for(&mut m, now, rotate * 3 / 2 / 1000 + 1);
        assert_eq!(dialled.len(), 1, "{dialled:?}");
        let (t, addr) = dialled[0];
        assert_eq!(addr, far.record.record.listen);
        m.dial_succeeded(addr);
        m.link_up(LinkId(99), far.record.clone(), Direction::Out, t + 100);
        let acts = m.take_actions();
        let hint = acts
            .iter()
            .find_map(|a| match a {
                Action::Send {
                    link: LinkId(99),
                    body: LinkBody::Gossip(g),
                } => g.records.get(1).cloned(),
                _ => None,
            })
            .expect("a hint in the first gossip");
        let victim = ps
            .iter()
            .position(|p| p.id.address() == hint.record.address)
            .expect("the hint names a neighbour");
        assert_eq!(victim, 2, "the two oldest links are protected");
        assert!(closes(&acts).is_empty());
        assert_eq!(m.neighbour_count(), 3);
        m.on_frame(LinkId(99), gossip(&[], &[]), t + 200);
        let acts = m.take_actions();
        let c = closes(&acts);
        assert_eq!(c.len(), 1, "{acts:?}");
        assert_eq!(c[0].0, LinkId(victim as u64));
        assert!(acts.contains(&Action::Up(LinkId(99))));
        assert_eq!(m.neighbour_count(), 3);

        // The other side: a full node dialled by a full node's rotation.
        let (mut y, now) = node(3, 3, vec![]);
        let qs: Vec<Peer> = (50..53).map(peer).collect();
        for (i, p) in qs.iter().enumerate() {
            y.link_up(
                LinkId(i as u64),
                p.record.clone(),
                Direction::In,
                now + i as u64,
            );
        }
        y.take_actions();
        let x = peer(60);
        let x_victim = peer(61);
        let (n1, n2) = (peer(62), peer(63));
        y.link_up(LinkId(9), x.record.clone(), Direction::In, now + 10);
        assert!(closes(&y.take_actions()).is_empty());
        y.on_frame(
            LinkId(9),
            LinkBody::Gossip(Gossip {
                neighbours: vec![x_victim.id.address(), n1.id.address(), n2.id.address()],
                records: vec![x.record.clone(), x_victim.record.clone()],
            }),
            now + 20,
        );
        let acts = y.take_actions();
        let c = closes(&acts);
        assert_eq!(c.len(), 1, "{acts:?}");
        let Some(LinkBody::Full(records)) = &c[0].1 else {
            panic!("no referral: {acts:?}");
        };
        assert_eq!(records[0].record.address, x_victim.id.address());
        assert_eq!(y.neighbour_count(), 3);
        assert_eq!(y.stats().swaps, 1);
    }

    /// A node one link short names, in its first gossip on a new link, a
    /// neighbour of its own that is short too (for a full peer to send the
    /// neighbour it closes to).
    #[test]
    fn a_node_one_link_short_hints_a_neighbour_with_room() {
        let (mut m, now) = node(3, 3, vec![]);
        let (q, r, z) = (peer(2), peer(3), peer(4));
        let (a, b, c) = (peer(10), peer(11), peer(12));
        m.link_up(LinkId(1), q.record.clone(), Direction::Out, now);
        m.link_up(LinkId(2), r.record.clone(), Direction::Out, now);
        m.on_frame(LinkId(1), gossip(&[&a], &[]), now);
        m.on_frame(LinkId(2), gossip(&[&a, &b, &c], &[]), now);
        m.take_actions();
        m.link_up(LinkId(3), z.record.clone(), Direction::Out, now + 10);
        let hint = m.take_actions().into_iter().find_map(|a| match a {
            Action::Send {
                link: LinkId(3),
                body: LinkBody::Gossip(g),
            } => g.records.get(1).map(|r| r.record.address),
            _ => None,
        });
        assert_eq!(hint, Some(q.id.address()), "q has room, r has not");
    }

    /// A link held at max + 1 whose peer says nothing is refused after
    /// ADMIT_GRACE; only one is held at a time.
    #[test]
    fn a_held_link_is_bounded_in_time_and_number() {
        let (mut m, now) = node(2, 2, vec![]);
        let (a, b) = (peer(2), peer(3));
        m.link_up(LinkId(1), a.record.clone(), Direction::In, now);
        m.link_up(LinkId(2), b.record.clone(), Direction::In, now);
        m.take_actions();
        m.link_up(LinkId(3), peer(4).record, Direction::In, now);
        assert!(closes(&m.take_actions()).is_empty());
        m.link_up(LinkId(4), peer(5).record, Direction::In, now);
        let c = closes(&m.take_actions());
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].0, LinkId(4), "a second held link is refused at once");
        m.tick(now + ms(ADMIT_GRACE) - 1);
        assert!(closes(&m.take_actions()).is_empty());
        m.tick(now + ms(ADMIT_GRACE));
        let c = closes(&m.take_actions());
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].0, LinkId(3));
        assert_eq!(m.neighbour_count(), 2);
    }

    /// Anchors: the longest-lived outbound neighbours; given back after a
    /// restart they are dialled first.
    #[test]
    fn anchors_are_the_oldest_outbound_links_and_dialled_first() {
        let (mut m, now) = node(2, 4, vec![]);
        let ps: Vec<Peer> = (2..6).map(peer).collect();
        for (i, p) in ps.iter().enumerate() {
            let d = if i == 1 {
                Direction::In
            } else {
                Direction::Out
            };
            m.link_up(LinkId(i as u64), p.record.clone(), d, now + i as u64);
        }
        let anchors = m.anchors();
        let want: Vec<Address> = vec![ps[0].id.address(), ps[2].id.address()];
        assert_eq!(
            anchors.iter().map(|r| r.record.address).collect::<Vec<_>>(),
            want
        );
        let (mut fresh, now) = node(2, 4, vec![]);
        fresh.set_anchors(anchors.clone(), now);
        fresh.tick(now);
        let mut d = dials(&fresh.take_actions());
        d.sort();
        let mut want: Vec<SocketAddr> = anchors.iter().map(|r| r.record.listen).collect();
        want.sort();
        assert_eq!(d, want);
    }

    #[test]
    fn forged_and_future_records_are_refused() {
        let (mut m, now) = node(1, 4, vec![]);
        let a = peer(2);
        m.link_up(LinkId(1), a.record.clone(), Direction::Out, now);
        let mut forged = peer(3).record;
        forged.record.listen = "10.0.0.99:58008".parse().unwrap();
        let liar = peer(4);
        let future =
            SignedRecord::sign(&liar.id, liar.record.record.listen, true, now / 1000 + 3600);
        let good = peer(5);
        let body = LinkBody::Gossip(Gossip {
            neighbours: vec![],
            records: vec![forged.clone(), future, good.record.clone()],
        });
        m.on_frame(LinkId(1), body, now);
        assert!(m.book().get(&forged.record.address).is_none());
        assert!(m.book().get(&liar.id.address()).is_none());
        assert!(m.book().get(&good.id.address()).is_some());
        assert_eq!(m.stats().records_refused, 2);
    }

    #[test]
    fn gossip_is_bounded_in_size_and_rate() {
        let (mut m, now) = node(1, 8, vec![]);
        let peers: Vec<Peer> = (2..40).map(peer).collect();
        for (i, p) in peers.iter().enumerate().take(3) {
            m.link_up(LinkId(i as u64), p.record.clone(), Direction::Out, now);
        }
        let refs: Vec<&Peer> = peers.iter().skip(3).take(MAX_RECORDS_PER_FRAME).collect();
        m.on_frame(LinkId(0), gossip(&[], &refs), now);
        // A second frame at once from the same link is ignored.
        m.on_frame(LinkId(0), gossip(&[], &refs), now + 10);
        assert_eq!(m.stats().gossip_ignored, 1);
        m.take_actions();
        let minutes = 10;
        let mut samples = 0;
        for s in 1..=minutes * 60 {
            m.tick(now + s * 1000);
            for a in m.take_actions() {
                if let Action::Send {
                    body: LinkBody::Gossip(g),
                    ..
                } = a
                {
                    assert!(g.records.len() <= EXCHANGE_SAMPLE);
                    if !g.records.is_empty() {
                        samples += 1;
                    }
                }
            }
        }
        // One sample per EXCHANGE_INTERVAL on average (0.5..1.5 intervals apart),
        // whatever the number of neighbours or known nodes.
        let per_interval = minutes * 60 / EXCHANGE_INTERVAL.as_secs();
        assert!(samples >= per_interval * 2 / 3, "{samples} samples");
        assert!(samples <= per_interval * 2, "{samples} samples");
    }

    #[test]
    fn broken_links_are_redialled_with_growing_delays_full_ones_wait() {
        let (mut m, now) = node(0, 4, vec![]);
        let (a, b) = (peer(2), peer(3));
        m.link_up(LinkId(1), a.record.clone(), Direction::Out, now);
        m.link_up(LinkId(2), b.record.clone(), Direction::Out, now);
        m.on_frame(LinkId(2), LinkBody::Full(vec![]), now);
        m.link_down(LinkId(1), now);
        m.link_down(LinkId(2), now);
        let a_listen = a.record.record.listen;
        let mut dial_times = Vec::new();
        for t in (0..120_000).step_by(100) {
            m.tick(now + t);
            for d in dials(&m.take_actions()) {
                if d == a_listen {
                    dial_times.push(t);
                } else {
                    // Only as a replacement, once its backoff is over.
                    assert_eq!(d, b.record.record.listen);
                    assert!(
                        t >= FULL_BACKOFF.as_millis() as u64,
                        "the full node was redialled at {t} ms"
                    );
                }
                m.dial_failed(d, now + t);
            }
        }
        assert!(dial_times.len() >= 4, "{dial_times:?}");
        let gaps: Vec<u64> = dial_times.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.last() > gaps.first(), "{gaps:?}");
        assert!(
            gaps.iter()
                .all(|g| *g <= 2 * REDIAL_MAX.as_millis() as u64 + 1000),
            "{gaps:?}"
        );
    }

    #[test]
    fn banned_nodes_are_not_dialled_until_the_ban_ends() {
        // min 3: the node wants more links and dials whatever it may.
        let (mut m, now) = node(3, 8, vec![]);
        let (bad, good, other) = (peer(2), peer(3), peer(4));
        m.link_up(LinkId(1), bad.record.clone(), Direction::In, now);
        m.link_up(LinkId(2), good.record.clone(), Direction::Out, now);
        m.on_frame(LinkId(1), gossip(&[], &[&other]), now);
        let until = now + 600_000;
        m.ban(
            bad.record.record.address,
            bad.record.record.listen,
            until,
            now,
        );
        assert!(m.is_banned(&bad.record.record.address, now));
        m.link_down(LinkId(1), now);
        // Its record moves to a second address: banned by key, it is not
        // dialled there either.
        let moved: SocketAddr = "10.0.0.99:58008".parse().unwrap();
        let moved_record = SignedRecord::sign(&bad.id, moved, true, bad.record.record.time + 1);
        m.on_frame(LinkId(2), LinkBody::Records(vec![moved_record]), now + 1000);
        let bad_listen = bad.record.record.listen;
        let mut dialled = Vec::new();
        for t in (0..until - now).step_by(1000) {
            m.tick(now + t);
            for d in dials(&m.take_actions()) {
                dialled.push(d);
                m.dial_failed(d, now + t);
            }
        }
        assert!(
            !dialled.contains(&bad_listen) && !dialled.contains(&moved),
            "a banned node was dialled: {dialled:?}"
        );
        assert!(
            dialled.contains(&other.record.record.listen),
            "the lost link is replaced: {dialled:?}"
        );
        // Once the ban is over the node is a candidate again (its book entry
        // is still there).
        assert!(!m.is_banned(&bad.record.record.address, until));
        let mut after = Vec::new();
        for t in (0..120_000).step_by(1000) {
            m.tick(until + t);
            for d in dials(&m.take_actions()) {
                after.push(d);
                m.dial_failed(d, until + t);
            }
        }
        assert!(after.contains(&moved), "{after:?}");
        assert_eq!(m.ban_count(), 0, "the ended ban was swept");
    }

    #[test]
    fn a_bootstrap_address_added_by_a_reload_is_redialled_like_the_first_ones() {
        let (mut m, now) = node(1, 3, vec![]);
        let b: SocketAddr = "127.0.0.9:58008".parse().unwrap();
        m.set_bootstrap(vec![b]);
        assert!(m.lost.contains(&b), "redialled until linked once");
        assert_eq!(m.bootstrap, vec![b]);
        m.set_bootstrap(vec![]);
        assert!(
            !m.lost.contains(&b),
            "dropped from the config: not redialled"
        );
        let _ = now;
    }

    #[test]
    fn a_banned_bootstrap_node_is_not_redialled() {
        let bad = peer(2);
        let (mut m, now) = node(1, 4, vec![bad.record.record.listen]);
        m.tick(now);
        assert_eq!(dials(&m.take_actions()), vec![bad.record.record.listen]);
        m.dial_succeeded(bad.record.record.listen);
        m.link_up(LinkId(1), bad.record.clone(), Direction::Out, now);
        let until = now + 60_000;
        m.ban(
            bad.record.record.address,
            bad.record.record.listen,
            until,
            now,
        );
        m.link_down(LinkId(1), now);
        let before: Vec<SocketAddr> = tick_for(&mut m, now, 59)
            .into_iter()
            .map(|(_, a)| a)
            .collect();
        assert!(before.is_empty(), "dialled while banned: {before:?}");
        let after = tick_for(&mut m, until, 5);
        assert!(
            !after.is_empty(),
            "a bootstrap node is tried again after the ban"
        );
    }

    #[test]
    fn leaving_hands_each_neighbour_the_others() {
        let (mut m, now) = node(1, 4, vec![]);
        let peers: Vec<Peer> = (2..5).map(peer).collect();
        for (i, p) in peers.iter().enumerate() {
            m.link_up(LinkId(i as u64), p.record.clone(), Direction::In, now);
        }
        m.take_actions();
        m.leave();
        let acts = m.take_actions();
        let c = closes(&acts);
        assert_eq!(c.len(), 3);
        for (link, farewell) in c {
            let Some(LinkBody::Leaving(records)) = farewell else {
                panic!("no farewell");
            };
            let me = peers[link.0 as usize].id.address();
            assert_eq!(records.len(), 2);
            assert!(records.iter().all(|r| r.record.address != me));
        }
        assert_eq!(m.neighbour_count(), 0);
        m.tick(now + 1000);
        assert!(m.take_actions().is_empty());
    }

    /// A node that lost most of its neighbours at once dials replacements
    /// from the book while its redials of the lost ones are in flight.
    #[test]
    fn lost_redials_do_not_hold_off_replacements() {
        let (mut m, mut t) = node(3, 6, vec![]);
        let neighbours: Vec<Peer> = (2..8).map(peer).collect();
        let others: Vec<Peer> = (8..12).map(peer).collect();
        for (i, p) in neighbours.iter().enumerate() {
            m.link_up(LinkId(i as u64), p.record.clone(), Direction::In, t);
        }
        m.on_frame(
            LinkId(0),
            gossip(&[], &others.iter().collect::<Vec<_>>()),
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
        let lost: Vec<SocketAddr> = neighbours[1..]
            .iter()
            .map(|p| p.record.record.listen)
            .collect();
        let first = dials(&m.take_actions());
        assert!(lost.iter().all(|a| first.contains(a)), "{first:?}");
        // ... and, while they hang, the other known nodes are dialled to
        // replace them (up to the five lost, as far as the book allows).
        let fresh: Vec<SocketAddr> = first.into_iter().filter(|a| !lost.contains(a)).collect();
        assert_eq!(fresh.len(), others.len(), "{fresh:?}");
        assert!(fresh
            .iter()
            .all(|a| others.iter().any(|p| p.record.record.listen == *a)));
        // Nothing more is dialled while all those are in flight.
        m.tick(t + ms(TICK));
        assert!(dials(&m.take_actions()).is_empty());
    }

    /// A dial left unanswered (a host that is gone) stops holding off the
    /// next candidate after DIAL_PATIENCE; dials in flight stay bounded.
    #[test]
    fn unanswered_dials_make_way_for_the_next_candidate() {
        let me = peer(1);
        let now = unix_now() * 1000;
        let stored: Vec<PeerEntry> = (2..60)
            .map(|h| PeerEntry::new(peer(h).record, now / 1000))
            .collect();
        let mut m = Membership::new(
            Arc::new(me.id),
            me.record,
            vec![],
            MembershipConfig::new(1, 4),
            stored,
            Some(3),
            now,
        );
        m.tick(now);
        assert_eq!(dials(&m.take_actions()).len(), 1);
        m.tick(now + ms(DIAL_PATIENCE) - 1);
        assert!(dials(&m.take_actions()).is_empty());
        m.tick(now + ms(DIAL_PATIENCE));
        assert_eq!(dials(&m.take_actions()).len(), 1);
        let mut in_flight = 2;
        for s in 3..120 {
            m.tick(now + s * 1000);
            in_flight += dials(&m.take_actions()).len();
        }
        assert_eq!(in_flight, MAX_DIALS_IN_FLIGHT);
    }

    /// A node that came back with a new key leaves two entries naming one
    /// listen address: it is dialled once.
    #[test]
    fn one_listen_address_is_dialled_once() {
        let me = peer(1);
        let now = unix_now() * 1000;
        let old = peer(2);
        let new = SignedRecord::sign(
            &Identity::generate(),
            old.record.record.listen,
            true,
            now / 1000,
        );
        let stored = vec![
            PeerEntry::new(old.record.clone(), now / 1000),
            PeerEntry::new(new, now / 1000),
        ];
        let mut m = Membership::new(
            Arc::new(me.id),
            me.record,
            vec![],
            MembershipConfig::new(3, 4),
            stored,
            Some(5),
            now,
        );
        m.tick(now);
        assert_eq!(dials(&m.take_actions()), vec![old.record.record.listen]);
    }

    /// A link lost without a word is replaced even above `min`, so the cut
    /// that crashes leave is bridged; a link the peer closed as full is not.
    #[test]
    fn lost_links_are_replaced_even_above_min() {
        let (mut m, now) = node(2, 6, vec![]);
        let peers: Vec<Peer> = (2..6).map(peer).collect();
        let spare: Vec<Peer> = (10..14).map(peer).collect();
        for (i, p) in peers.iter().enumerate() {
            m.link_up(LinkId(i as u64), p.record.clone(), Direction::Out, now);
        }
        m.on_frame(
            LinkId(0),
            gossip(&[], &spare.iter().collect::<Vec<_>>()),
            now,
        );
        m.take_actions();
        m.tick(now + 1000);
        assert!(
            dials(&m.take_actions()).is_empty(),
            "4 links, min 2: no dial"
        );
        // One peer answers Full and goes: nothing owed.
        m.on_frame(LinkId(3), LinkBody::Full(vec![]), now + 1000);
        m.link_down(LinkId(3), now + 1000);
        m.tick(now + 2000);
        assert!(
            dials(&m.take_actions()).is_empty(),
            "a full peer is not replaced"
        );
        // One crashes: replaced from the book, though 2 links remain.
        m.link_down(LinkId(2), now + 2000);
        m.tick(now + 5000);
        let d = dials(&m.take_actions());
        let lost = peers[2].record.record.listen;
        let fresh: Vec<&SocketAddr> = d.iter().filter(|a| **a != lost).collect();
        assert_eq!(fresh.len(), 1, "{d:?}");
        let replacement = spare
            .iter()
            .find(|p| p.record.record.listen == *fresh[0])
            .expect("a replacement from the book");
        m.dial_succeeded(*fresh[0]);
        m.link_up(
            LinkId(9),
            replacement.record.clone(),
            Direction::Out,
            now + 5100,
        );
        m.take_actions();
        m.tick(now + 8000);
        let again: Vec<SocketAddr> = dials(&m.take_actions())
            .into_iter()
            .filter(|a| *a != lost)
            .collect();
        assert!(again.is_empty(), "replaced once only: {again:?}");
    }

    /// Ticks once a second for `secs` after `from`; the dials made, with
    /// their times (they stay in flight).
    fn tick_for(m: &mut Membership, from: u64, secs: u64) -> Vec<(u64, SocketAddr)> {
        let mut out = Vec::new();
        for s in 1..=secs {
            let t = from + s * 1000;
            m.tick(t);
            for d in dials(&m.take_actions()) {
                out.push((t, d));
            }
        }
        out
    }

    /// Runs one rotation of a node (min 2, max 6) with `links` neighbours,
    /// each with four neighbours of its own: checks that it dials a far node
    /// about ROTATE_INTERVAL in and drops nothing before the new peer keeps
    /// the link; returns what it closed once the peer did.
    fn rotate_once(links: u8) -> (Membership, Vec<(LinkId, Option<LinkBody>)>) {
        let (mut m, now) = node(2, 6, vec![]);
        let peers: Vec<Peer> = (2..2 + links).map(peer).collect();
        let friends: Vec<Peer> = (20..23).map(peer).collect();
        let near = peer(30);
        let far: Vec<Peer> = (10..13).map(peer).collect();
        for (i, p) in peers.iter().enumerate() {
            m.link_up(LinkId(i as u64), p.record.clone(), Direction::Out, now);
        }
        let theirs = [&friends[0], &friends[1], &friends[2], &near];
        let mut known: Vec<&Peer> = far.iter().collect();
        known.push(&near);
        m.on_frame(LinkId(0), gossip(&theirs, &known), now);
        for i in 1..u64::from(links) {
            m.on_frame(LinkId(i), gossip(&theirs, &[]), now);
        }
        m.take_actions();
        let rotate = ROTATE_INTERVAL.as_millis() as u64;
        let dialled = tick_for(&mut m, now, rotate * 3 / 2 / 1000 + 1);
        assert_eq!(dialled.len(), 1, "{dialled:?}");
        let (t, addr) = dialled[0];
        assert!(t >= now + rotate / 2, "rotated {} ms in", t - now);
        let new = far
            .iter()
            .find(|p| p.record.record.listen == addr)
            .expect("a far node, not the neighbours' neighbour");
        m.dial_succeeded(addr);
        m.link_up(LinkId(99), new.record.clone(), Direction::Out, t + 100);
        assert!(
            closes(&m.take_actions()).is_empty(),
            "nothing dropped before the new peer keeps the link"
        );
        m.on_frame(LinkId(99), gossip(&[], &[]), t + 200);
        let closed = closes(&m.take_actions());
        (m, closed)
    }

    /// A node with links to spare dials one node picked from its book about
    /// once per ROTATE_INTERVAL, not a neighbour's neighbour, and drops a
    /// spare neighbour once the new peer has shown it keeps the link.
    #[test]
    fn rotation_trades_a_link_for_one_to_a_far_node() {
        let (m, closed) = rotate_once(4);
        assert_eq!(closed.len(), 1, "{closed:?}");
        assert!(closed[0].0 .0 < 4, "an old link is dropped: {closed:?}");
        assert!(matches!(closed[0].1, Some(LinkBody::Full(_))));
        assert_eq!(m.neighbour_count(), 4);
        assert_eq!(m.stats().rotations, 1);
    }

    /// At `min` links a rotation only adds one: nodes settle a link above
    /// `min`, rather than sinking to it (see `finish_rotation`).
    #[test]
    fn rotation_at_min_keeps_the_new_link() {
        let (m, closed) = rotate_once(2);
        assert!(closed.is_empty(), "{closed:?}");
        assert_eq!(m.neighbour_count(), 3);
        assert_eq!(m.stats().rotations, 0);
    }

    /// A node's bootstrap nodes are not rotation candidates: in a network
    /// where many name the same few, those are in every book.
    #[test]
    fn rotation_passes_over_bootstrap_nodes() {
        let boot = peer(40);
        let (mut m, now) = node(2, 6, vec![boot.record.record.listen]);
        let peers: Vec<Peer> = (2..5).map(peer).collect();
        let friends: Vec<Peer> = (20..23).map(peer).collect();
        let theirs: Vec<&Peer> = friends.iter().collect();
        // Linked once (so no longer redialled as a bootstrap address), then
        // closed as full: it is in the book, and nothing but rotation would
        // dial it again.
        m.link_up(LinkId(9), boot.record.clone(), Direction::Out, now);
        m.on_frame(LinkId(9), LinkBody::Full(vec![]), now);
        m.link_down(LinkId(9), now);
        for (i, p) in peers.iter().enumerate() {
            m.link_up(LinkId(i as u64), p.record.clone(), Direction::Out, now);
            m.on_frame(LinkId(i as u64), gossip(&theirs, &[]), now);
        }
        m.take_actions();
        let fail_all = |m: &mut Membership, from: u64, secs: u64| {
            let mut out = Vec::new();
            for s in 1..=secs {
                let t = from + s * 1000;
                m.tick(t);
                for d in dials(&m.take_actions()) {
                    m.dial_failed(d, t);
                    out.push(d);
                }
            }
            out
        };
        let span = ROTATE_INTERVAL.as_secs() * 3;
        let dialled = fail_all(&mut m, now, span);
        assert!(dialled.is_empty(), "{dialled:?}");
        // With one other node in the book, rotation dials that one.
        let other = peer(41);
        m.on_frame(LinkId(1), gossip(&theirs, &[&other]), now + span * 1000);
        let dialled = fail_all(&mut m, now + span * 1000, span);
        assert!(!dialled.is_empty());
        assert!(
            dialled.iter().all(|a| *a == other.record.record.listen),
            "{dialled:?}"
        );
    }

    /// After a network split the nodes of the other side are in the book only
    /// with failed dials: rotation still tries them, so the halves meet again.
    #[test]
    fn rotation_tries_failing_entries() {
        let (mut m, now) = node(2, 6, vec![]);
        let peers: Vec<Peer> = (2..5).map(peer).collect();
        let other_side: Vec<Peer> = (10..13).map(peer).collect();
        let friends: Vec<Peer> = (20..23).map(peer).collect();
        let theirs: Vec<&Peer> = friends.iter().collect();
        for (i, p) in peers.iter().enumerate() {
            m.link_up(LinkId(i as u64), p.record.clone(), Direction::Out, now);
        }
        m.on_frame(
            LinkId(0),
            gossip(&theirs, &other_side.iter().collect::<Vec<_>>()),
            now,
        );
        for p in &other_side {
            for _ in 0..3 {
                m.dial_failed(p.record.record.listen, now);
            }
        }
        m.take_actions();
        let rotate = ROTATE_INTERVAL.as_secs();
        let dialled = tick_for(&mut m, now, rotate * 3);
        assert!(!dialled.is_empty(), "no rotation in three intervals");
        assert!(dialled.len() <= 6, "{dialled:?}");
        assert!(dialled
            .iter()
            .all(|(_, a)| other_side.iter().any(|p| p.record.record.listen == *a)));
    }

    fn key(epoch: u64) -> crate::crypto::AnnouncedKey {
        crate::crypto::AnnouncedKey {
            epoch,
            public: [epoch as u8; 32],
            not_before: 0,
            not_after: u64::MAX,
        }
    }

    /// A node whose identity the test keeps, to sign its own new records.
    fn node_signing(min: usize, max: usize) -> (Membership, Arc<Identity>, u64) {
        let id = Arc::new(Identity::generate());
        let now_ms = unix_now() * 1000;
        let own = SignedRecord::sign_with_key(
            &id,
            "10.0.0.1:58008".parse().unwrap(),
            true,
            now_ms / 1000,
            Some(key(1)),
        );
        let m = Membership::new(
            id.clone(),
            own,
            vec![],
            MembershipConfig::new(min, max),
            Vec::new(),
            Some(7),
            now_ms,
        );
        (m, id, now_ms)
    }

    /// The records sent on `link` in gossip frames among `actions`.
    fn gossiped_records(actions: &[Action], link: LinkId) -> Vec<SignedRecord> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send {
                    link: l,
                    body: LinkBody::Gossip(g),
                } if *l == link => Some(g.records.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// A re-signed own record (a new packet key) goes to every neighbour in
    /// the next gossip the gap allows, and new links and samples carry it.
    #[test]
    fn a_new_own_record_goes_to_every_neighbour() {
        let (mut m, id, now) = node_signing(1, 4);
        let (a, b) = (peer(2), peer(3));
        m.link_up(LinkId(1), a.record.clone(), Direction::In, now);
        m.link_up(LinkId(2), b.record.clone(), Direction::Out, now);
        let first = m.take_actions();
        assert_eq!(
            gossiped_records(&first, LinkId(1))[0].record.packet_key,
            Some(key(1))
        );
        let listen = m.own_record().record.listen;
        let new = SignedRecord::sign_with_key(&id, listen, true, now / 1000 + 5, Some(key(2)));
        // Both links gossiped just now: the record waits for the gap...
        assert!(m.set_own_record(new.clone(), now + 100));
        assert_eq!(m.own_record(), &new);
        let early = m.take_actions();
        assert!(gossiped_records(&early, LinkId(1)).is_empty(), "{early:?}");
        // ...and then goes to both, once.
        m.tick(now + ms(GOSSIP_MIN_GAP));
        let sent = m.take_actions();
        for link in [LinkId(1), LinkId(2)] {
            assert!(
                gossiped_records(&sent, link).contains(&new),
                "{link:?}: {sent:?}"
            );
        }
        // A link made later gets it in its first gossip.
        let c = peer(4);
        m.link_up(LinkId(3), c.record.clone(), Direction::In, now + 3_000);
        let later = m.take_actions();
        assert_eq!(gossiped_records(&later, LinkId(3))[0], new);
        // Sent at once when the gap has passed.
        let newer = SignedRecord::sign_with_key(&id, listen, true, now / 1000 + 9, Some(key(3)));
        assert!(m.set_own_record(newer.clone(), now + 10_000));
        let now_sent = m.take_actions();
        assert!(gossiped_records(&now_sent, LinkId(2)).contains(&newer));
    }

    #[test]
    fn own_record_refused_for_another_address_or_no_change_and_kept_newer() {
        let (mut m, id, now) = node_signing(1, 4);
        let before = m.own_record().clone();
        let listen = before.record.listen;
        // Another node's record: refused.
        let other = Identity::generate();
        let theirs =
            SignedRecord::sign_with_key(&other, listen, true, now / 1000 + 1, Some(key(2)));
        assert!(!m.set_own_record(theirs, now));
        // The same content signed again: nothing to announce.
        let same = SignedRecord::sign_with_key(&id, listen, true, now / 1000 + 1, Some(key(1)));
        assert!(!m.set_own_record(same, now));
        assert_eq!(m.own_record(), &before);
        // A new key signed in the same second as the current record: signed
        // again a second later, so peers take it as newer.
        let same_second =
            SignedRecord::sign_with_key(&id, listen, true, before.record.time, Some(key(2)));
        assert!(m.set_own_record(same_second, now));
        let own = m.own_record().clone();
        assert_eq!(own.record.packet_key, Some(key(2)));
        assert_eq!(own.record.time, before.record.time + 1);
        assert_eq!(own.verify(now / 1000 + 1), Ok(()));
    }

    #[test]
    fn the_refreshed_own_record_keeps_its_packet_key() {
        let (mut m, _, now) = node_signing(1, 4);
        let later = now + (RECORD_REFRESH_SECS + 5) * 1000;
        m.tick(later);
        let own = m.own_record();
        assert_eq!(own.record.time, later / 1000);
        assert_eq!(own.record.packet_key, Some(key(1)));
        assert_eq!(own.verify(later / 1000), Ok(()));
    }

    /// A neighbour's newer record replaces the one its link holds, so the
    /// node hands on the neighbour's current packet key.
    #[test]
    fn a_neighbours_newer_record_replaces_the_links() {
        let (mut m, now) = node(1, 4, vec![]);
        let a = peer(2);
        m.link_up(LinkId(1), a.record.clone(), Direction::Out, now);
        m.take_actions();
        let newer = SignedRecord::sign_with_key(
            &a.id,
            a.record.record.listen,
            true,
            a.record.record.time + 10,
            Some(key(5)),
        );
        let body = LinkBody::Gossip(Gossip {
            neighbours: vec![],
            records: vec![newer.clone()],
        });
        m.on_frame(LinkId(1), body, now + 11_000);
        assert_eq!(m.anchors(), vec![newer.clone()]);
        assert_eq!(m.book().get(&a.id.address()).unwrap().record, newer);
        // An older one does not go back.
        let body = LinkBody::Gossip(Gossip {
            neighbours: vec![],
            records: vec![a.record.clone()],
        });
        m.on_frame(LinkId(1), body, now + 12_000);
        assert_eq!(m.anchors(), vec![newer]);
    }

    #[test]
    fn near_is_the_neighbours_and_theirs_and_loses_a_node_whose_link_goes() {
        let (mut m, now) = node(1, 4, vec![]);
        let (a, b, c) = (peer(2), peer(3), peer(4));
        m.link_up(LinkId(1), a.record.clone(), Direction::Out, now);
        m.take_actions();
        m.on_frame(LinkId(1), gossip(&[&b, &c], &[]), now + 11_000);
        let near = m.near();
        let want: HashSet<Address> = [&a, &b, &c].iter().map(|p| p.id.address()).collect();
        assert_eq!(near, want);
        // b leaves a's neighbours: it leaves the view.
        m.on_frame(LinkId(1), gossip(&[&c], &[]), now + 22_000);
        assert!(!m.near().contains(&b.id.address()));
        assert!(m.near().contains(&c.id.address()));
        // The link to a goes: nothing is near any more.
        m.link_down(LinkId(1), now + 23_000);
        assert!(m.near().is_empty());
    }
}
