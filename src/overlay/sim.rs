//! A discrete-event simulator of the overlay: thousands of [`Membership`]s
//! in one process, over an in-memory network with virtual time.
//!
//! Why: the overlay's claims (degree stays within bounds, the graph stays
//! connected, membership traffic per node does not grow with the network, a
//! network that loses 30 % of its nodes at once heals) cannot be checked with
//! a handful of real daemons. The simulator is the second driver of the very
//! same [`Membership`] code the NeighbourManager actor runs: it feeds each
//! node ticks, dial outcomes, link ups and downs and membership frames, and
//! carries out the [`Action`]s it answers, the way the actor and its peer
//! sessions do over TCP. Nothing of the policy is re-implemented here.
//!
//! What is modelled, and how:
//! - Time is virtual (milliseconds since the Unix epoch, starting at
//!   [`SIM_EPOCH_MS`], so signed records carry realistic times and are
//!   verified against it). Events sit in a binary heap ordered by (time,
//!   sequence number); each node is ticked every [`TICK`] from its join time,
//!   like the actor's interval timer.
//! - A dial reaches the target after one one-way latency; if the target is
//!   up, the connection and the Noise XX handshake take their round trips
//!   (the listener's session starts after 5 one-way trips, the dialler's
//!   after 6, when it has read the listener's record), then each side gets
//!   `link_up`, the dialler after `dial_succeeded`. A dial to a node that is
//!   gone fails after the session's dial timeout (a silent host), or after
//!   one round trip (a killed process: the port refuses).
//! - Frames on a link arrive in order (FIFO per direction) after a latency
//!   with jitter. A close delivers the farewell, then the end of the stream.
//!   A removed node is crashed (peers notice by keepalive timeout, computed
//!   from the sessions' keepalive schedule), killed (peers see the
//!   connection close), or leaves gracefully ([`Membership::leave`]).
//! - A network split ([`Sim::partition`], undone by [`Sim::heal`]) black-holes
//!   traffic between two groups of nodes, as a real split does to TCP: a
//!   dial across it is a dial to a silent host; frames and closes on a link
//!   across it are held back (TCP keeps them for retransmission) and arrive
//!   at the heal; each end whose session hears nothing for the keepalive
//!   timeout cuts the link, exactly as for a crashed peer, and its close
//!   reaches the other end at the heal. A handshake caught by the split
//!   fails by dial timeout.
//! - Bytes are what the link would carry: every frame is encoded
//!   ([`LinkFrame::encode`]) and counted with its Noise tag and 2-byte length
//!   prefix; a link's set-up counts the three Noise XX messages and both
//!   record frames; the sessions' keepalive pings and pongs are counted apart.
//!   TCP/IP headers are not counted.
//!
//! The session constants (dial timeout, keepalive interval and timeout) live
//! in [`super::timing`], where the PeerSession actor takes them from too:
//! [`SessionTimings::REAL`]; a caller may pass others to explore.
//!
//! Runs repeat their own random choices (latency jitter, join order, which
//! nodes are removed, every `Membership`'s seed), but not bit for bit: node
//! keys are generated afresh and `Membership` iterates hash maps, whose order
//! differs between processes. Figures therefore vary a little from run to
//! run, as they would between real deployments.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::book::BOOK_CAPACITY;
use super::membership::{
    Action, Direction, LinkId, Membership, MembershipConfig, MembershipStats, TICK,
};
use crate::crypto::{Identity, SignedRecord};
use crate::wire::link::{LinkBody, LinkFrame};

/// Virtual time at which every run starts: 2027-01-15, ms since the epoch.
pub const SIM_EPOCH_MS: u64 = 1_800_000_000_000;
/// The port every simulated node listens on (the real default).
pub const SIM_PORT: u16 = 58008;
/// Node `i` listens on 10.0.0.0 + i + 1: at most this many nodes fit.
pub const MAX_NODES: usize = (1 << 24) - 2;
/// Length prefix in front of every Noise message.
pub const LENGTH_PREFIX: u64 = 2;
/// Sizes of the three Noise XX handshake messages with empty payloads:
/// `-> e` (32), `<- e, ee, s, es` (32 + 32 + 16 + 16), `-> s, se` (32 + 16 + 16).
pub const NOISE_XX_MESSAGES: [u64; 3] = [32, 96, 64];
/// How often convergence and recovery are checked, in virtual time.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Default fraction of the live nodes in the second group of a split: halves.
pub const DEFAULT_PARTITION_SHARE: f64 = 0.5;
/// Default time the groups get to reunite after a split heals. Long, because
/// after a long split only rotation (every 5 to 15 minutes per node) dials
/// across it, and a small network has few rotations a minute.
pub const DEFAULT_HEAL_LIMIT: Duration = Duration::from_secs(1800);

/// What the dialler sends of the handshake: messages 1 and 3.
const HANDSHAKE_DIALLER: u64 = NOISE_XX_MESSAGES[0] + NOISE_XX_MESSAGES[2] + 2 * LENGTH_PREFIX;
/// What the listener sends of the handshake: message 2.
const HANDSHAKE_LISTENER: u64 = NOISE_XX_MESSAGES[1] + LENGTH_PREFIX;
/// One-way trips from the dial to the listener's session start: SYN,
/// SYN-ACK, XX message 1, message 2, message 3 with the dialler's record.
const TRIPS_TO_ACCEPT: u64 = 5;
/// The dialler's first ping carries a random nonce; the largest varint is counted.
const PING_NONCE: u64 = u64::MAX;

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The link timings the simulator models ([`SessionTimings::REAL`]: those of
/// [`super::timing`], which the PeerSession actor runs with).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SessionTimings {
    /// A dial to a silent host fails after this long.
    #[serde(serialize_with = "ser_ms")]
    pub dial_timeout: Duration,
    /// Each side pings this often.
    #[serde(serialize_with = "ser_ms")]
    pub keepalive_interval: Duration,
    /// A peer not heard from for this long is cut off (checked at each ping).
    #[serde(serialize_with = "ser_ms")]
    pub keepalive_timeout: Duration,
}

impl SessionTimings {
    /// The timings real links run with.
    pub const REAL: SessionTimings = SessionTimings {
        dial_timeout: super::timing::DIAL_TIMEOUT,
        keepalive_interval: super::timing::KEEPALIVE_INTERVAL,
        keepalive_timeout: super::timing::KEEPALIVE_TIMEOUT,
    };
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(ms(*d))
}

/// Where a newcomer bootstraps from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bootstrap {
    /// Every node knows only node 0.
    First,
    /// Each node knows one node that joined before it, chosen at random.
    RandomEarlier,
}

/// How removed nodes go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Removal {
    /// The host vanishes: peers notice by keepalive timeout, dials time out.
    Crash,
    /// The process is killed: peers see the connection close, dials are refused.
    Kill,
    /// The node leaves gracefully, handing each neighbour records of the others.
    Leave,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    pub nodes: usize,
    pub min_neighbours: usize,
    pub max_neighbours: usize,
    pub book_capacity: usize,
    pub seed: u64,
    /// One-way latency of every message...
    pub latency: Duration,
    /// ... plus a uniform random extra of up to this much.
    pub jitter: Duration,
    /// Nodes joining per virtual second.
    pub join_rate: f64,
    pub bootstrap: Bootstrap,
    /// How long after the last join convergence is waited for.
    pub converge_limit: Duration,
    /// Steady window after convergence, over which traffic is measured.
    pub steady: Duration,
    /// Fraction of nodes removed at once after the steady window.
    pub remove_fraction: f64,
    pub removal: Removal,
    /// How long the survivors are given to reconnect.
    pub recover_limit: Duration,
    /// Window after recovery, at whose end the final figures are taken.
    pub after: Duration,
    /// How long the network is split in two after the steady window, before
    /// the removal; zero: no split.
    pub partition: Duration,
    /// Fraction of the live nodes put in the second group of the split.
    pub partition_share: f64,
    /// How long after the heal the two groups are given to become one
    /// connected graph again.
    pub heal_limit: Duration,
    pub session: SessionTimings,
}

impl SimConfig {
    /// A run of `nodes` nodes with the given degree bounds and defaults for
    /// the rest: 20 ms ± 5 ms latency, 50 joins per second from node 0, a
    /// 2-minute steady window, no split, 30 % crashed, 1 minute after
    /// recovery.
    pub fn new(nodes: usize, min: usize, max: usize, session: SessionTimings) -> SimConfig {
        SimConfig {
            nodes,
            min_neighbours: min,
            max_neighbours: max,
            book_capacity: BOOK_CAPACITY,
            seed: 1,
            latency: Duration::from_millis(20),
            jitter: Duration::from_millis(5),
            join_rate: 50.0,
            bootstrap: Bootstrap::First,
            converge_limit: Duration::from_secs(600),
            steady: Duration::from_secs(120),
            remove_fraction: 0.3,
            removal: Removal::Crash,
            recover_limit: Duration::from_secs(600),
            after: Duration::from_secs(60),
            partition: Duration::ZERO,
            partition_share: DEFAULT_PARTITION_SHARE,
            heal_limit: DEFAULT_HEAL_LIMIT,
            session,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SimError {
    #[error("at least 2 and at most {MAX_NODES} nodes (got {0})")]
    Nodes(usize),
    #[error("min_neighbours must be at least 1 and max_neighbours at least min (got {0}..{1})")]
    Bounds(usize, usize),
    #[error("join rate must be a positive number of nodes per second (got {0})")]
    JoinRate(f64),
    #[error("remove fraction must be in [0, 1) (got {0})")]
    RemoveFraction(f64),
    #[error("the session's keepalive interval must be positive")]
    Keepalive,
    #[error("partition share must be in (0, 1) (got {0})")]
    PartitionShare(f64),
}

impl SimConfig {
    fn check(&self) -> Result<(), SimError> {
        if self.nodes < 2 || self.nodes > MAX_NODES {
            return Err(SimError::Nodes(self.nodes));
        }
        if self.min_neighbours < 1 || self.max_neighbours < self.min_neighbours {
            return Err(SimError::Bounds(self.min_neighbours, self.max_neighbours));
        }
        if !(self.join_rate.is_finite() && self.join_rate > 0.0) {
            return Err(SimError::JoinRate(self.join_rate));
        }
        if !(0.0..1.0).contains(&self.remove_fraction) {
            return Err(SimError::RemoveFraction(self.remove_fraction));
        }
        if self.session.keepalive_interval.is_zero() {
            return Err(SimError::Keepalive);
        }
        if !(self.partition_share > 0.0 && self.partition_share < 1.0) {
            return Err(SimError::PartitionShare(self.partition_share));
        }
        Ok(())
    }
}

/// The listen address of node `i`.
pub fn node_addr(i: usize) -> SocketAddr {
    let n = u32::try_from(i + 1).unwrap_or(u32::MAX) & 0x00ff_ffff;
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(0x0a00_0000 | n), SIM_PORT))
}

/// The node listening at `addr`, if any could.
fn node_index(addr: &SocketAddr, nodes: usize) -> Option<usize> {
    let SocketAddr::V4(v4) = addr else {
        return None;
    };
    let ip = u32::from(*v4.ip());
    if v4.port() != SIM_PORT || ip >> 24 != 10 {
        return None;
    }
    let i = (ip & 0x00ff_ffff).checked_sub(1)? as usize;
    (i < nodes).then_some(i)
}

type NodeId = usize;
type LinkIx = usize;
/// 0: the dialler's end of a link, 1: the listener's.
type Side = usize;
const DIALLER: Side = 0;
const LISTENER: Side = 1;

fn link_id(l: LinkIx, side: Side) -> LinkId {
    LinkId((l as u64) * 2 + side as u64)
}

fn link_of(id: LinkId) -> (LinkIx, Side) {
    ((id.0 / 2) as usize, (id.0 % 2) as usize)
}

#[derive(Debug)]
enum Event {
    Join(NodeId),
    Tick(NodeId),
    /// A dial's first packet reaches the address.
    Syn {
        from: NodeId,
        addr: SocketAddr,
    },
    DialFailed {
        from: NodeId,
        addr: SocketAddr,
    },
    /// The listener has read the dialler's record: its session starts.
    AcceptUp(LinkIx),
    /// The dialler gives up a handshake with a listener that went silent.
    HandshakeFailed(LinkIx),
    /// The dialler has read the listener's record.
    DialUp(LinkIx),
    Frame {
        link: LinkIx,
        to: Side,
        body: Box<LinkBody>,
    },
    /// The other end closed the connection.
    Fin {
        link: LinkIx,
        to: Side,
    },
    /// A session that closed itself reports its end (as `SessionDown` does).
    SessionEnd {
        link: LinkIx,
        side: Side,
    },
    /// The session's keepalive check finds the peer silent for too long.
    KeepaliveCut {
        link: LinkIx,
        side: Side,
    },
    /// The same, for a peer silenced by the split numbered `split`: void if
    /// that split healed first (the held pings then got through).
    SplitCut {
        link: LinkIx,
        side: Side,
        split: u64,
    },
}

struct Scheduled {
    at: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// Handshake under way.
    Pending,
    /// The session runs.
    Open,
    /// The session ended (or never started).
    Closed,
}

struct SimLink {
    nodes: [NodeId; 2],
    /// The address the dialler dialled.
    addr: SocketAddr,
    ends: [End; 2],
    /// The end's membership counts the link (between `Up` and `Down`).
    up: [bool; 2],
    opened_ms: [u64; 2],
    next_ping_ms: [u64; 2],
    last_heard_ms: [u64; 2],
    /// Arrival time of the last message scheduled towards each side (FIFO).
    arrive_ms: [u64; 2],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NodeState {
    Waiting,
    Alive,
    Gone(Removal),
}

/// Bytes a node sent, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Sent {
    /// Gossip, records, full and leaving frames.
    membership: u64,
    /// Noise handshakes and record frames.
    setup: u64,
    /// Keepalive pings and pongs.
    keepalive: u64,
    frames: u64,
}

struct SimNode {
    identity: Arc<Identity>,
    record: SignedRecord,
    bootstrap: Vec<SocketAddr>,
    membership: Option<Membership>,
    state: NodeState,
    /// Links whose end at this node is not closed.
    links: HashSet<LinkIx>,
    sent: Sent,
    book_writes: u64,
    /// Dials asked for, and dial outcomes reported (they must match).
    dials: u64,
    dial_outcomes: u64,
    /// Degree bounds of its own (a newcomer's), instead of the config's.
    bounds: Option<(usize, usize)>,
    /// Part of the attacker: gossips and refers only the attacker's records.
    hostile: bool,
}

/// Counters over the whole run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub events: u64,
    pub dials: u64,
    pub dial_failures: u64,
    pub links_opened: u64,
    pub frames: u64,
    /// Frames that did not encode (over a wire limit): not sent.
    pub unencodable: u64,
    pub ups: u64,
    pub downs: u64,
    pub keepalive_cuts: u64,
}

/// The neighbour graph at one instant: an edge is a link that both ends'
/// memberships count, between two live nodes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GraphSummary {
    /// Virtual seconds since the start of the run.
    pub at_secs: f64,
    pub alive: usize,
    pub degree_min: usize,
    pub degree_p50: usize,
    pub degree_max: usize,
    pub degree_mean: f64,
    /// Fraction of live nodes with `min <= degree <= max`.
    pub within_bounds: f64,
    pub below_min: usize,
    pub above_max: usize,
    /// Largest neighbour count any membership reports (its own view).
    pub membership_max: usize,
    pub components: usize,
    pub largest_component: usize,
    /// Degree -> number of nodes.
    pub histogram: BTreeMap<usize, usize>,
    pub book_min: usize,
    pub book_p50: usize,
    pub book_max: usize,
}

impl GraphSummary {
    /// Every live node has at least `min` neighbours and the graph is one piece.
    pub fn healthy(&self, min: usize) -> bool {
        self.alive > 0 && self.degree_min >= min && self.components == 1
    }
}

/// Traffic over a window, per live node and minute.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Traffic {
    pub window_secs: f64,
    pub nodes: usize,
    /// Membership frames (gossip, records, full, leaving), bytes.
    pub membership: f64,
    /// Link set-ups (Noise handshakes and record frames), bytes.
    pub setup: f64,
    /// Keepalive pings and pongs, bytes.
    pub keepalive: f64,
    /// Membership and set-up, the overlay's own cost.
    pub overlay: f64,
    /// Everything, keepalives included.
    pub total: f64,
    /// The busiest node's membership + set-up bytes per minute...
    pub overlay_max_node: f64,
    /// ... and which node that is.
    pub busiest_node: Option<usize>,
    /// Median node's membership + set-up bytes per minute.
    pub overlay_p50_node: f64,
    /// Membership frames sent per node and minute.
    pub frames: f64,
    /// Address-book entries written to (or removed from) the store.
    pub book_writes: f64,
}

/// The graph's health at one check.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct TracePoint {
    /// Virtual seconds since the event the trace follows (joins: the start).
    pub secs: f64,
    pub alive: usize,
    pub below_min: usize,
    pub components: usize,
    pub largest_component: usize,
}

impl TracePoint {
    fn of(g: &GraphSummary, secs: f64) -> TracePoint {
        TracePoint {
            secs,
            alive: g.alive,
            below_min: g.below_min,
            components: g.components,
            largest_component: g.largest_component,
        }
    }
}

/// Membership counters summed over all nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StatsSummary {
    pub records_refused: u64,
    pub gossip_ignored: u64,
    pub evictions: u64,
    pub refusals: u64,
    pub rotations: u64,
}

impl StatsSummary {
    fn add(&mut self, s: MembershipStats) {
        self.records_refused += s.records_refused;
        self.gossip_ignored += s.gossip_ignored;
        self.evictions += s.evictions;
        self.refusals += s.refusals;
        self.rotations += s.rotations;
    }
}

/// Wall-clock milliseconds each phase took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WallMs {
    pub setup: u64,
    pub join_and_converge: u64,
    pub steady: u64,
    pub recovery: u64,
    pub after: u64,
    pub total: u64,
}

/// The split phase: the network split in two for a while, then healed.
#[derive(Clone, Debug, Serialize)]
pub struct PartitionReport {
    /// How long the split lasted, virtual seconds.
    pub split_secs: f64,
    /// Live nodes in each group.
    pub group_a: usize,
    pub group_b: usize,
    /// The graph just before the split.
    pub before: GraphSummary,
    /// Links across the split with a running session, at the split.
    pub cross_links_at_split: usize,
    /// Virtual seconds from the split until no running session crossed it.
    pub cross_links_gone_secs: Option<f64>,
    /// The graph at the end of the split.
    pub at_split_end: GraphSummary,
    /// Traffic over the split.
    pub split_traffic: Traffic,
    /// Health at every check during the split, timed from the split.
    pub split_trace: Vec<TracePoint>,
    /// Frames and closes held back by the split (delivered at the heal).
    pub held_messages: u64,
    /// Virtual seconds after the heal the groups were given to reunite.
    pub heal_limit_secs: f64,
    /// Virtual seconds from the heal until the graph was one component with
    /// every node at `min` or more.
    pub reunited_secs: Option<f64>,
    /// The graph at reunion, or at the heal limit.
    pub after_heal: GraphSummary,
    /// Traffic from the heal to reunion (or the heal limit).
    pub heal_traffic: Traffic,
    /// Health at every check after the heal, timed from the heal.
    pub heal_trace: Vec<TracePoint>,
    /// Wall-clock milliseconds the phase took.
    pub wall_ms: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct SimReport {
    pub nodes: usize,
    pub min_neighbours: usize,
    pub max_neighbours: usize,
    pub book_capacity: usize,
    pub seed: u64,
    pub latency_ms: u64,
    pub jitter_ms: u64,
    pub join_rate: f64,
    pub bootstrap: Bootstrap,
    pub removal: Removal,
    pub session: SessionTimings,
    /// Virtual seconds from the start to the last join.
    pub last_join_secs: f64,
    /// Virtual seconds from the start until every node had `min` neighbours
    /// and the graph was connected (checked every second after the last join).
    pub converged_secs: Option<f64>,
    /// The same, counted from the last join.
    pub converged_after_last_join_secs: Option<f64>,
    /// The graph at the end of the steady window.
    pub steady: GraphSummary,
    /// Traffic over the steady window.
    pub steady_traffic: Traffic,
    /// Checks during the steady window at which some membership counted more
    /// than `max` neighbours (a transient: trimmed at its next tick).
    pub steady_checks_over_max: u64,
    /// Traffic from the start to convergence (joining).
    pub join_traffic: Traffic,
    /// The split phase, when one was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<PartitionReport>,
    pub removed: usize,
    pub removed_bootstrap_node: bool,
    /// The survivors just after the removal.
    pub after_removal: GraphSummary,
    /// Virtual seconds from the removal until the survivors all had `min`
    /// neighbours and were connected.
    pub recovered_secs: Option<f64>,
    pub at_recovery: Option<GraphSummary>,
    /// Traffic from the removal to recovery (or its limit).
    pub recovery_traffic: Traffic,
    /// The survivors' health at every check from the removal to recovery.
    pub recovery_trace: Vec<TracePoint>,
    /// The network's health at every check from the start to convergence.
    pub join_trace: Vec<TracePoint>,
    /// The graph at the end of the run.
    pub end: GraphSummary,
    /// Traffic over the window after recovery.
    pub end_traffic: Traffic,
    pub stats: StatsSummary,
    pub counters: Counters,
    pub virtual_secs: f64,
    pub wall_ms: WallMs,
}

/// A snapshot of every node's counters, to measure a window.
struct Mark {
    at: u64,
    sent: Vec<Sent>,
    book_writes: Vec<u64>,
}

/// The simulated network.
pub struct Sim {
    cfg: SimConfig,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    rng: StdRng,
    nodes: Vec<SimNode>,
    links: Vec<SimLink>,
    counters: Counters,
    ping_bytes: u64,
    pong_bytes: u64,
    last_join_ms: u64,
    /// The network split in force, if any.
    split: Option<Split>,
    /// Splits so far: numbers each one, so a keepalive cut scheduled for one
    /// split is void once it healed.
    splits: u64,
    /// Frames and closes sent across the split, in the order they would have
    /// arrived: they arrive at the heal.
    held: Vec<(LinkIx, Side, Event)>,
    /// Messages held back across splits so far.
    held_total: u64,
    /// The attacker's records (see [`Sim::run_attack`]).
    hostile_records: Vec<SignedRecord>,
}

/// A network split: which nodes are in the second group.
struct Split {
    side_b: Vec<bool>,
    number: u64,
}

impl Split {
    fn separates(&self, a: NodeId, b: NodeId) -> bool {
        self.side_b.get(a).copied().unwrap_or(false) != self.side_b.get(b).copied().unwrap_or(false)
    }
}

impl Sim {
    /// Builds the nodes (keys, signed records, bootstrap lists) and schedules
    /// their joins; nothing runs yet.
    pub fn new(cfg: SimConfig) -> Result<Sim, SimError> {
        cfg.check()?;
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let start_secs = SIM_EPOCH_MS / 1000;
        let mut nodes = Vec::with_capacity(cfg.nodes);
        for i in 0..cfg.nodes {
            let identity = Arc::new(Identity::generate());
            let record = SignedRecord::sign(&identity, node_addr(i), true, start_secs);
            let bootstrap = match (i, cfg.bootstrap) {
                (0, _) => Vec::new(),
                (_, Bootstrap::First) => vec![node_addr(0)],
                (_, Bootstrap::RandomEarlier) => vec![node_addr(rng.gen_range(0..i))],
            };
            nodes.push(SimNode {
                identity,
                record,
                bootstrap,
                membership: None,
                state: NodeState::Waiting,
                links: HashSet::new(),
                sent: Sent::default(),
                book_writes: 0,
                dials: 0,
                dial_outcomes: 0,
                bounds: None,
                hostile: false,
            });
        }
        let ping_bytes = frame_len(&LinkFrame::new(LinkBody::Ping(PING_NONCE))).unwrap_or(0);
        let pong_bytes = frame_len(&LinkFrame::new(LinkBody::Pong(PING_NONCE))).unwrap_or(0);
        let mut sim = Sim {
            now: SIM_EPOCH_MS,
            seq: 0,
            queue: BinaryHeap::new(),
            rng,
            nodes,
            links: Vec::new(),
            counters: Counters::default(),
            ping_bytes,
            pong_bytes,
            last_join_ms: SIM_EPOCH_MS,
            split: None,
            splits: 0,
            held: Vec::new(),
            held_total: 0,
            hostile_records: Vec::new(),
            cfg,
        };
        for i in 0..sim.cfg.nodes {
            let at = SIM_EPOCH_MS + (i as f64 * 1000.0 / sim.cfg.join_rate) as u64;
            sim.last_join_ms = sim.last_join_ms.max(at);
            sim.push(at, Event::Join(i));
        }
        Ok(sim)
    }

    /// Virtual time now, ms since the epoch.
    pub fn now_ms(&self) -> u64 {
        self.now
    }

    /// When the last node joins, ms since the epoch.
    pub fn last_join_ms(&self) -> u64 {
        self.last_join_ms
    }

    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// A node's membership, once it has joined.
    pub fn membership(&self, node: usize) -> Option<&Membership> {
        self.nodes.get(node).and_then(|n| n.membership.as_ref())
    }

    pub fn is_alive(&self, node: usize) -> bool {
        self.nodes
            .get(node)
            .is_some_and(|n| n.state == NodeState::Alive)
    }

    /// Splits the network in two: nodes for which `side_b` is true form the
    /// second group. Until [`Sim::heal`], traffic between the groups is
    /// black-holed (see the module doc); within a group all works as before.
    /// A split in force is healed first.
    pub fn partition(&mut self, side_b: impl Fn(usize) -> bool) {
        if self.split.is_some() {
            self.heal();
        }
        self.splits += 1;
        let split = Split {
            side_b: (0..self.nodes.len()).map(side_b).collect(),
            number: self.splits,
        };
        // Every running session across the split stops hearing its peer now.
        let now = self.now;
        let mut cuts = Vec::new();
        for (l, k) in self.links.iter().enumerate() {
            if !split.separates(k.nodes[0], k.nodes[1]) {
                continue;
            }
            for side in [DIALLER, LISTENER] {
                if k.ends[side] == End::Open {
                    if let Some(at) = self.keepalive_cut_due(l, side, now) {
                        cuts.push((at, l, side));
                    }
                }
            }
        }
        for (at, link, side) in cuts {
            self.push(
                at,
                Event::SplitCut {
                    link,
                    side,
                    split: split.number,
                },
            );
        }
        self.split = Some(split);
    }

    /// Ends the split: new dials and frames cross as before, and what was
    /// held back arrives now, in order (TCP retransmits it once the path is
    /// back). Sessions not yet cut hear their peer again and carry on.
    pub fn heal(&mut self) {
        self.split = None;
        for (link, to, event) in std::mem::take(&mut self.held) {
            if let Some(k) = self.links.get_mut(link) {
                k.arrive_ms[to] = k.arrive_ms[to].max(self.now);
            }
            self.push(self.now, event);
        }
    }

    /// Whether a split is in force.
    pub fn is_partitioned(&self) -> bool {
        self.split.is_some()
    }

    /// Links across the split in force with a session running at either end.
    pub fn cross_links(&self) -> usize {
        let Some(split) = &self.split else {
            return 0;
        };
        self.links
            .iter()
            .filter(|k| k.ends.contains(&End::Open) && split.separates(k.nodes[0], k.nodes[1]))
            .count()
    }

    /// Whether the split in force separates the two ends of link `l`.
    fn split_across(&self, l: LinkIx) -> bool {
        match (&self.split, self.links.get(l)) {
            (Some(split), Some(k)) => split.separates(k.nodes[0], k.nodes[1]),
            _ => false,
        }
    }

    fn push(&mut self, at: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            event,
        }));
    }

    fn latency(&mut self) -> u64 {
        let jitter = ms(self.cfg.jitter);
        ms(self.cfg.latency)
            + if jitter > 0 {
                self.rng.gen_range(0..=jitter)
            } else {
                0
            }
    }

    /// Schedules a message on a link towards `to`, after every earlier one.
    fn send_on(&mut self, l: LinkIx, to: Side, event: Event) {
        let lat = self.latency();
        let Some(link) = self.links.get_mut(l) else {
            return;
        };
        let at = (self.now + lat).max(link.arrive_ms[to]);
        link.arrive_ms[to] = at;
        self.push(at, event);
    }

    /// Runs every event due up to and including `until`.
    pub fn run_until(&mut self, until: u64) {
        while let Some(Reverse(next)) = self.queue.peek() {
            if next.at > until {
                break;
            }
            let Some(Reverse(s)) = self.queue.pop() else {
                break;
            };
            self.now = s.at;
            self.counters.events += 1;
            self.handle(s.event);
        }
        self.now = self.now.max(until);
    }

    fn handle(&mut self, event: Event) {
        if let Event::Frame { link, to, .. } | Event::Fin { link, to } = event {
            if self.split_across(link) {
                self.held_total += 1;
                self.held.push((link, to, event));
                return;
            }
        }
        match event {
            Event::Join(n) => self.join(n),
            Event::Tick(n) => self.tick(n),
            Event::Syn { from, addr } => self.syn(from, addr),
            Event::DialFailed { from, addr } => self.dial_failed(from, addr),
            Event::HandshakeFailed(link) => {
                if self.end_is(link, DIALLER, End::Pending) {
                    self.close_end(link, DIALLER);
                    self.fail_dial(link);
                    // A listener whose session started (the split held back
                    // the dialler's last message) sees the connection close.
                    // A crashed listener's end is already closed.
                    if self.end_is(link, LISTENER, End::Open) {
                        self.send_on(link, LISTENER, Event::Fin { link, to: LISTENER });
                    }
                }
            }
            Event::AcceptUp(l) => self.accept_up(l),
            Event::DialUp(l) => self.dial_up(l),
            Event::Frame { link, to, body } => self.frame(link, to, *body),
            Event::Fin { link, to } => {
                if self.end_is(link, to, End::Pending) {
                    // The handshake was cut short: no session, and a
                    // dialler learns that its dial failed.
                    self.close_end(link, to);
                    if to == DIALLER {
                        self.fail_dial(link);
                    }
                } else if self.end_is(link, to, End::Open) {
                    self.end_session(link, to);
                }
            }
            Event::SessionEnd { link, side } => {
                if let Some(n) = self.links.get(link).map(|k| k.nodes[side]) {
                    self.call(n, |m, now| m.link_down(link_id(link, side), now));
                }
            }
            Event::KeepaliveCut { link, side } => {
                if self.end_is(link, side, End::Open) {
                    self.counters.keepalive_cuts += 1;
                    self.end_session(link, side);
                }
            }
            Event::SplitCut { link, side, split } => {
                let in_force = self.split.as_ref().is_some_and(|s| s.number == split);
                if in_force && self.end_is(link, side, End::Open) {
                    self.counters.keepalive_cuts += 1;
                    self.end_session(link, side);
                    // Unlike a crashed peer, this one is alive: the close
                    // reaches it at the heal, if its own cut did not come first.
                    if !self.end_is(link, 1 - side, End::Closed) {
                        self.send_on(link, 1 - side, Event::Fin { link, to: 1 - side });
                    }
                }
            }
        }
    }

    fn end_is(&self, l: LinkIx, side: Side, state: End) -> bool {
        self.links.get(l).is_some_and(|k| k.ends[side] == state)
    }

    /// Calls into a live node's membership, then carries out its actions.
    fn call(&mut self, n: NodeId, f: impl FnOnce(&mut Membership, u64)) {
        let now = self.now;
        let Some(node) = self.nodes.get_mut(n) else {
            return;
        };
        if node.state != NodeState::Alive {
            return;
        }
        let Some(m) = node.membership.as_mut() else {
            return;
        };
        f(m, now);
        let actions = m.take_actions();
        // The real driver saves these to the store; here they are counted.
        let (changed, removed) = m.take_book_changes();
        node.book_writes += (changed.len() + removed.len()) as u64;
        for a in actions {
            self.apply(n, a);
        }
    }

    fn apply(&mut self, n: NodeId, action: Action) {
        match action {
            Action::Dial(addr) => {
                self.counters.dials += 1;
                if let Some(node) = self.nodes.get_mut(n) {
                    node.dials += 1;
                }
                let lat = self.latency();
                self.push(self.now + lat, Event::Syn { from: n, addr });
            }
            Action::Send { link, body } => {
                let (l, side) = link_of(link);
                if !self.owns(n, l, side) || !self.end_is(l, side, End::Open) {
                    return;
                }
                let body = self.disguise(n, body);
                let frame = LinkFrame::new(body);
                let Some(bytes) = frame_len(&frame) else {
                    self.counters.unencodable += 1;
                    return;
                };
                self.count_membership(n, bytes);
                self.send_on(
                    l,
                    1 - side,
                    Event::Frame {
                        link: l,
                        to: 1 - side,
                        body: Box::new(frame.body),
                    },
                );
            }
            Action::Close { link, farewell } => {
                let (l, side) = link_of(link);
                if !self.owns(n, l, side) || !self.end_is(l, side, End::Open) {
                    return;
                }
                self.close_end(l, side);
                if let Some(body) = farewell {
                    let body = self.disguise(n, body);
                    let frame = LinkFrame::new(body);
                    match frame_len(&frame) {
                        Some(bytes) => {
                            self.count_membership(n, bytes);
                            self.send_on(
                                l,
                                1 - side,
                                Event::Frame {
                                    link: l,
                                    to: 1 - side,
                                    body: Box::new(frame.body),
                                },
                            );
                        }
                        None => self.counters.unencodable += 1,
                    }
                }
                self.send_on(
                    l,
                    1 - side,
                    Event::Fin {
                        link: l,
                        to: 1 - side,
                    },
                );
                // The closing session reports its own end, as every session does.
                self.push(self.now, Event::SessionEnd { link: l, side });
            }
            Action::Up(link) => {
                let (l, side) = link_of(link);
                if let Some(k) = self.links.get_mut(l) {
                    k.up[side] = true;
                    self.counters.ups += 1;
                }
            }
            Action::Down(link) => {
                let (l, side) = link_of(link);
                if let Some(k) = self.links.get_mut(l) {
                    k.up[side] = false;
                    self.counters.downs += 1;
                }
            }
        }
    }

    fn owns(&self, n: NodeId, l: LinkIx, side: Side) -> bool {
        self.links.get(l).is_some_and(|k| k.nodes[side] == n)
    }

    fn count_membership(&mut self, n: NodeId, bytes: u64) {
        if let Some(node) = self.nodes.get_mut(n) {
            node.sent.membership += bytes;
            node.sent.frames += 1;
        }
        self.counters.frames += 1;
    }

    fn join(&mut self, n: NodeId) {
        let now = self.now;
        let cfg = &self.cfg;
        let Some(node) = self.nodes.get_mut(n) else {
            return;
        };
        let (min, max) = node
            .bounds
            .unwrap_or((cfg.min_neighbours, cfg.max_neighbours));
        let mcfg = MembershipConfig {
            book_capacity: cfg.book_capacity,
            ..MembershipConfig::new(min, max)
        };
        let seed = cfg.seed ^ n as u64;
        if node.state != NodeState::Waiting {
            return;
        }
        node.membership = Some(Membership::new(
            node.identity.clone(),
            node.record.clone(),
            node.bootstrap.clone(),
            mcfg,
            Vec::new(),
            Some(seed),
            now,
        ));
        node.state = NodeState::Alive;
        // The actor ticks once when it starts, then every TICK.
        self.tick(n);
    }

    fn tick(&mut self, n: NodeId) {
        if !self.is_alive(n) {
            return;
        }
        self.account_keepalives(n);
        self.call(n, |m, now| m.tick(now));
        self.push(self.now + ms(TICK), Event::Tick(n));
    }

    /// Counts the pings this node's sessions sent up to now, and the pongs
    /// its peers answered.
    fn account_keepalives(&mut self, n: NodeId) {
        let Some(node) = self.nodes.get(n) else {
            return;
        };
        let links: Vec<LinkIx> = node.links.iter().copied().collect();
        for l in links {
            if let Some(side) = self
                .links
                .get(l)
                .and_then(|k| k.nodes.iter().position(|&x| x == n))
            {
                self.pings_until(l, side, self.now);
            }
        }
    }

    fn pings_until(&mut self, l: LinkIx, side: Side, until: u64) {
        let interval = ms(self.cfg.session.keepalive_interval).max(1);
        let across = self.split_across(l);
        let Some(k) = self.links.get_mut(l) else {
            return;
        };
        if k.ends[side] != End::Open {
            return;
        }
        // Pings across a split go unanswered (and count as sent).
        let answered = k.ends[1 - side] == End::Open && !across;
        let mut pings = 0;
        while k.next_ping_ms[side] <= until {
            k.next_ping_ms[side] += interval;
            pings += 1;
        }
        if pings == 0 {
            return;
        }
        let peer = k.nodes[1 - side];
        let me = k.nodes[side];
        let (ping, pong) = (self.ping_bytes, self.pong_bytes);
        if let Some(node) = self.nodes.get_mut(me) {
            node.sent.keepalive += pings * ping;
        }
        if answered {
            if let Some(node) = self.nodes.get_mut(peer) {
                if node.state == NodeState::Alive {
                    node.sent.keepalive += pings * pong;
                }
            }
        }
    }

    fn syn(&mut self, from: NodeId, addr: SocketAddr) {
        if !self.is_alive(from) {
            return;
        }
        let target = node_index(&addr, self.nodes.len());
        let state = target.and_then(|t| self.nodes.get(t)).map(|t| t.state);
        let reachable = match (&self.split, target) {
            (Some(split), Some(t)) => !split.separates(from, t),
            _ => true,
        };
        let (Some(to), Some(NodeState::Alive), true) = (target, state, reachable) else {
            // A silent host (or one not started yet, or one across a split)
            // times out; a killed or departed node's port refuses at once.
            let wait = match state {
                Some(NodeState::Gone(Removal::Kill | Removal::Leave)) if reachable => {
                    self.latency()
                }
                _ => ms(self.cfg.session.dial_timeout).saturating_sub(ms(self.cfg.latency)),
            };
            self.push(self.now + wait, Event::DialFailed { from, addr });
            return;
        };
        let l = self.links.len();
        self.links.push(SimLink {
            nodes: [from, to],
            addr,
            ends: [End::Pending; 2],
            up: [false; 2],
            opened_ms: [0; 2],
            next_ping_ms: [0; 2],
            last_heard_ms: [0; 2],
            arrive_ms: [self.now; 2],
        });
        for n in [from, to] {
            if let Some(node) = self.nodes.get_mut(n) {
                node.links.insert(l);
            }
        }
        let mut wait = 0;
        for _ in 1..TRIPS_TO_ACCEPT {
            wait += self.latency();
        }
        self.push(self.now + wait, Event::AcceptUp(l));
    }

    fn open_end(&mut self, l: LinkIx, side: Side) {
        let now = self.now;
        if let Some(k) = self.links.get_mut(l) {
            k.ends[side] = End::Open;
            k.opened_ms[side] = now;
            k.next_ping_ms[side] = now;
            k.last_heard_ms[side] = now;
        }
    }

    /// Every dial gets exactly one outcome: `dial_failed` here, or
    /// `dial_succeeded` at [`Event::DialUp`].
    fn fail_dial(&mut self, l: LinkIx) {
        if let Some((from, addr)) = self.links.get(l).map(|k| (k.nodes[DIALLER], k.addr)) {
            self.dial_failed(from, addr);
        }
    }

    fn dial_failed(&mut self, from: NodeId, addr: SocketAddr) {
        if let Some(node) = self.nodes.get_mut(from) {
            if node.state == NodeState::Alive {
                node.dial_outcomes += 1;
                self.counters.dial_failures += 1;
            }
        }
        self.call(from, |m, now| m.dial_failed(addr, now));
    }

    fn accept_up(&mut self, l: LinkIx) {
        let Some(k) = self.links.get(l) else {
            return;
        };
        let [dialler, listener] = k.nodes;
        if k.ends[DIALLER] != End::Pending {
            // The dialler vanished (or gave up) during the handshake.
            if k.ends[LISTENER] == End::Pending {
                self.close_end(l, LISTENER);
            }
            return;
        }
        if k.ends[LISTENER] != End::Pending || !self.is_alive(listener) {
            // The listener vanished. Killed or departed, its end of the
            // stream is on its way; crashed, the handshake times out.
            if self.nodes.get(listener).map(|n| n.state) == Some(NodeState::Gone(Removal::Crash)) {
                let wait = ms(self.cfg.session.dial_timeout);
                self.push(self.now + wait, Event::HandshakeFailed(l));
            }
            return;
        }
        if self.split_across(l) {
            // A split cut the handshake short: the listener's half-open
            // handshake dies unseen; the dialler's times out.
            self.close_end(l, LISTENER);
            let wait = ms(self.cfg.session.dial_timeout);
            self.push(self.now + wait, Event::HandshakeFailed(l));
            return;
        }
        self.counters.links_opened += 1;
        let dialler_record = self.record_len(dialler);
        let listener_record = self.record_len(listener);
        if let Some(node) = self.nodes.get_mut(dialler) {
            node.sent.setup += HANDSHAKE_DIALLER + dialler_record;
        }
        if let Some(node) = self.nodes.get_mut(listener) {
            node.sent.setup += HANDSHAKE_LISTENER + listener_record;
        }
        self.open_end(l, LISTENER);
        // The listener's record travels to the dialler ahead of anything
        // the listener sends next.
        self.send_on(l, DIALLER, Event::DialUp(l));
        let record = self.nodes.get(dialler).map(|n| n.record.clone());
        if let Some(record) = record {
            self.call(listener, |m, now| {
                m.link_up(link_id(l, LISTENER), record, Direction::In, now)
            });
        }
    }

    fn dial_up(&mut self, l: LinkIx) {
        let Some(k) = self.links.get(l) else {
            return;
        };
        let [dialler, listener] = k.nodes;
        let addr = k.addr;
        if k.ends[DIALLER] != End::Pending || !self.is_alive(dialler) {
            return;
        }
        if self.split_across(l) {
            // The listener's record is held back by a split: the dialler's
            // handshake times out (and closes the listener's session).
            let wait = ms(self.cfg.session.dial_timeout);
            self.push(self.now + wait, Event::HandshakeFailed(l));
            return;
        }
        self.open_end(l, DIALLER);
        let record = self.nodes.get(listener).map(|n| n.record.clone());
        let Some(record) = record else {
            return;
        };
        if let Some(node) = self.nodes.get_mut(dialler) {
            node.dial_outcomes += 1;
        }
        self.call(dialler, |m, now| {
            m.dial_succeeded(addr);
            m.link_up(link_id(l, DIALLER), record, Direction::Out, now);
        });
        if let Some(NodeState::Gone(Removal::Crash)) = self.nodes.get(listener).map(|n| n.state) {
            // The listener crashed after sending its record.
            self.schedule_keepalive_cut(l, DIALLER, self.now);
        }
    }

    fn record_len(&self, n: NodeId) -> u64 {
        self.nodes
            .get(n)
            .and_then(|node| frame_len(&LinkFrame::new(LinkBody::Record(node.record.clone()))))
            .unwrap_or(0)
    }

    fn frame(&mut self, l: LinkIx, to: Side, body: LinkBody) {
        let Some(k) = self.links.get_mut(l) else {
            return;
        };
        let n = k.nodes[to];
        if k.ends[to] != End::Open {
            return;
        }
        k.last_heard_ms[to] = self.now;
        let id = link_id(l, to);
        match body {
            LinkBody::Gossip(_) | LinkBody::Records(_) => {
                self.call(n, |m, now| m.on_frame(id, body, now));
            }
            LinkBody::Full(_) | LinkBody::Leaving(_) => {
                // The session hands the farewell on, then stops.
                self.call(n, |m, now| m.on_frame(id, body, now));
                self.end_session(l, to);
            }
            _ => {}
        }
    }

    /// Marks one end of a link closed (its session is over).
    fn close_end(&mut self, l: LinkIx, side: Side) {
        let now = self.now;
        self.pings_until(l, side, now);
        let Some(k) = self.links.get_mut(l) else {
            return;
        };
        k.ends[side] = End::Closed;
        let n = k.nodes[side];
        if let Some(node) = self.nodes.get_mut(n) {
            node.links.remove(&l);
        }
    }

    /// A session ended on its own (peer closed, keepalive, farewell): the
    /// membership hears `link_down`.
    fn end_session(&mut self, l: LinkIx, side: Side) {
        self.close_end(l, side);
        if let Some(n) = self.links.get(l).map(|k| k.nodes[side]) {
            self.call(n, |m, now| m.link_down(link_id(l, side), now));
        }
    }

    /// The end `side` stopped hearing its peer at `silent_from`; its session
    /// cuts the link at the first keepalive check past the timeout.
    fn schedule_keepalive_cut(&mut self, l: LinkIx, side: Side, silent_from: u64) {
        if let Some(at) = self.keepalive_cut_due(l, side, silent_from) {
            self.push(at, Event::KeepaliveCut { link: l, side });
        }
    }

    /// When the end `side`, which stopped hearing its peer at `silent_from`,
    /// cuts the link: the first keepalive check past the timeout.
    fn keepalive_cut_due(&self, l: LinkIx, side: Side, silent_from: u64) -> Option<u64> {
        let interval = ms(self.cfg.session.keepalive_interval).max(1);
        let timeout = ms(self.cfg.session.keepalive_timeout);
        let lat = ms(self.cfg.latency);
        let k = self.links.get(l)?;
        let start = k.opened_ms[side];
        let mut heard = k.last_heard_ms[side];
        // The peer's last ping before it went silent...
        if k.opened_ms[1 - side] > 0 {
            let ps = k.opened_ms[1 - side];
            if silent_from >= ps {
                heard = heard.max(ps + (silent_from - ps) / interval * interval + lat);
            }
        }
        // ... and its pong to our last ping that reached it.
        if silent_from >= start + lat {
            heard = heard.max(start + (silent_from - lat - start) / interval * interval + 2 * lat);
        }
        // The first check with (now - heard) > timeout.
        let due = heard + timeout;
        let checks = due.saturating_sub(start) / interval + 1;
        Some((start + checks * interval).max(self.now))
    }

    /// Removes a node at once, the way `how` says.
    pub fn remove(&mut self, n: NodeId, how: Removal) {
        if !self.is_alive(n) {
            return;
        }
        if how == Removal::Leave {
            self.call(n, |m, _| m.leave());
        }
        let now = self.now;
        self.account_keepalives(n);
        let links: Vec<LinkIx> = self
            .nodes
            .get(n)
            .map(|node| node.links.iter().copied().collect())
            .unwrap_or_default();
        if let Some(node) = self.nodes.get_mut(n) {
            node.state = NodeState::Gone(how);
        }
        for l in links {
            let Some(k) = self.links.get(l) else {
                continue;
            };
            let Some(side) = k.nodes.iter().position(|&x| x == n) else {
                continue;
            };
            let other = k.ends[1 - side];
            self.close_end(l, side);
            match how {
                Removal::Crash => {
                    if other == End::Open {
                        self.schedule_keepalive_cut(l, 1 - side, now);
                    }
                    // A pending dialler learns at DialUp; a pending
                    // listener's handshake dies with the dialler.
                }
                Removal::Kill | Removal::Leave => {
                    if other != End::Closed {
                        self.send_on(
                            l,
                            1 - side,
                            Event::Fin {
                                link: l,
                                to: 1 - side,
                            },
                        );
                    }
                }
            }
        }
    }

    /// The neighbour graph now.
    pub fn graph(&self) -> GraphSummary {
        let min = self.cfg.min_neighbours;
        let max = self.cfg.max_neighbours;
        let mut uf = UnionFind::new(self.nodes.len());
        let mut degrees = Vec::new();
        let mut books = Vec::new();
        let mut membership_max = 0;
        for (n, node) in self.nodes.iter().enumerate() {
            if node.state != NodeState::Alive {
                continue;
            }
            let mut d = 0;
            for &l in &node.links {
                let Some(k) = self.links.get(l) else {
                    continue;
                };
                let other = if k.nodes[0] == n {
                    k.nodes[1]
                } else {
                    k.nodes[0]
                };
                if k.up == [true, true] && k.ends == [End::Open, End::Open] && self.is_alive(other)
                {
                    d += 1;
                    uf.union(n, other);
                }
            }
            degrees.push(d);
            if let Some(m) = &node.membership {
                membership_max = membership_max.max(m.neighbour_count());
                books.push(m.book().len());
            }
        }
        let alive = degrees.len();
        let mut roots: BTreeMap<usize, usize> = BTreeMap::new();
        for (n, node) in self.nodes.iter().enumerate() {
            if node.state == NodeState::Alive {
                *roots.entry(uf.find(n)).or_default() += 1;
            }
        }
        let mut histogram = BTreeMap::new();
        for &d in &degrees {
            *histogram.entry(d).or_insert(0) += 1;
        }
        degrees.sort_unstable();
        books.sort_unstable();
        let mean = if alive > 0 {
            degrees.iter().sum::<usize>() as f64 / alive as f64
        } else {
            0.0
        };
        let within = degrees.iter().filter(|&&d| d >= min && d <= max).count();
        GraphSummary {
            at_secs: (self.now - SIM_EPOCH_MS) as f64 / 1000.0,
            alive,
            degree_min: degrees.first().copied().unwrap_or(0),
            degree_p50: percentile(&degrees, 50),
            degree_max: degrees.last().copied().unwrap_or(0),
            degree_mean: mean,
            within_bounds: if alive > 0 {
                within as f64 / alive as f64
            } else {
                0.0
            },
            below_min: degrees.iter().filter(|&&d| d < min).count(),
            above_max: degrees.iter().filter(|&&d| d > max).count(),
            membership_max,
            components: roots.len(),
            largest_component: roots.values().copied().max().unwrap_or(0),
            histogram,
            book_min: books.first().copied().unwrap_or(0),
            book_p50: percentile(&books, 50),
            book_max: books.last().copied().unwrap_or(0),
        }
    }

    /// Live nodes whose dials and dial outcomes do not add up: every dial
    /// must end in exactly one `dial_failed` or `dial_succeeded`.
    #[cfg(test)]
    fn dial_leaks(&self) -> Vec<NodeId> {
        let mut in_flight = vec![0u64; self.nodes.len()];
        // A handshake under way counts only if an event will settle it.
        let mut settling = HashSet::new();
        for Reverse(s) in self.queue.iter() {
            match &s.event {
                Event::Syn { from, .. } | Event::DialFailed { from, .. } => {
                    in_flight[*from] += 1;
                }
                Event::AcceptUp(l) | Event::DialUp(l) | Event::HandshakeFailed(l) => {
                    settling.insert(*l);
                }
                Event::Fin { link, to: DIALLER } => {
                    settling.insert(*link);
                }
                _ => {}
            }
        }
        for (l, k) in self.links.iter().enumerate() {
            if k.ends[DIALLER] == End::Pending && settling.contains(&l) {
                in_flight[k.nodes[DIALLER]] += 1;
            }
        }
        (0..self.nodes.len())
            .filter(|&n| {
                self.nodes[n].state == NodeState::Alive
                    && self.nodes[n].dials != self.nodes[n].dial_outcomes + in_flight[n]
            })
            .collect()
    }

    fn mark(&self) -> Mark {
        Mark {
            at: self.now,
            sent: self.nodes.iter().map(|n| n.sent).collect(),
            book_writes: self.nodes.iter().map(|n| n.book_writes).collect(),
        }
    }

    /// Traffic of the nodes alive now, since `from`.
    fn traffic(&self, from: &Mark) -> Traffic {
        let secs = (self.now.saturating_sub(from.at)) as f64 / 1000.0;
        let per_min = if secs > 0.0 { 60.0 / secs } else { 0.0 };
        let mut sum = Sent::default();
        let mut writes = 0;
        let mut overlay: Vec<u64> = Vec::new();
        let mut busiest: Option<(u64, usize)> = None;
        for (i, node) in self.nodes.iter().enumerate() {
            if node.state != NodeState::Alive {
                continue;
            }
            let base = from.sent.get(i).copied().unwrap_or_default();
            let d = Sent {
                membership: node.sent.membership - base.membership,
                setup: node.sent.setup - base.setup,
                keepalive: node.sent.keepalive - base.keepalive,
                frames: node.sent.frames - base.frames,
            };
            sum.membership += d.membership;
            sum.setup += d.setup;
            sum.keepalive += d.keepalive;
            sum.frames += d.frames;
            writes += node.book_writes - from.book_writes.get(i).copied().unwrap_or(0);
            overlay.push(d.membership + d.setup);
            if busiest.is_none_or(|(b, _)| d.membership + d.setup > b) {
                busiest = Some((d.membership + d.setup, i));
            }
        }
        overlay.sort_unstable();
        let nodes = overlay.len();
        let per = |x: u64| {
            if nodes > 0 {
                x as f64 / nodes as f64 * per_min
            } else {
                0.0
            }
        };
        Traffic {
            window_secs: secs,
            nodes,
            membership: per(sum.membership),
            setup: per(sum.setup),
            keepalive: per(sum.keepalive),
            overlay: per(sum.membership + sum.setup),
            total: per(sum.membership + sum.setup + sum.keepalive),
            overlay_max_node: overlay.last().copied().unwrap_or(0) as f64 * per_min,
            busiest_node: busiest.map(|(_, i)| i),
            overlay_p50_node: percentile(&overlay, 50) as f64 * per_min,
            frames: per(sum.frames),
            book_writes: per(writes),
        }
    }

    fn stats(&self) -> StatsSummary {
        let mut s = StatsSummary::default();
        for node in &self.nodes {
            if let Some(m) = &node.membership {
                s.add(m.stats());
            }
        }
        s
    }

    /// Runs, checking every [`CHECK_EVERY`], until the graph is healthy or
    /// `deadline`; returns the healthy graph and when it was first seen.
    /// Each check's health goes to `trace`, timed from `origin`.
    fn run_until_healthy(
        &mut self,
        deadline: u64,
        origin: u64,
        trace: &mut Vec<TracePoint>,
    ) -> Option<GraphSummary> {
        let step = ms(CHECK_EVERY);
        while self.now < deadline {
            let next = (self.now + step).min(deadline);
            self.run_until(next);
            let g = self.graph();
            trace.push(TracePoint::of(&g, (self.now - origin) as f64 / 1000.0));
            if g.healthy(self.cfg.min_neighbours) {
                return Some(g);
            }
        }
        None
    }

    /// Splits the live nodes in two at random (`partition_share` of them in
    /// the second group) for `partition`, heals, and waits up to
    /// `heal_limit` for one connected graph with every node at `min`.
    fn run_partition(&mut self) -> PartitionReport {
        let phase = Instant::now();
        let min = self.cfg.min_neighbours;
        let step = ms(CHECK_EVERY);
        let before = self.graph();
        let alive: Vec<NodeId> = (0..self.nodes.len())
            .filter(|&n| self.is_alive(n))
            .collect();
        // Both groups get at least one node: a split with an empty side is none.
        let count = ((alive.len() as f64) * self.cfg.partition_share).round() as usize;
        let count = count.clamp(1, alive.len().saturating_sub(1).max(1));
        let mut side_b = vec![false; self.nodes.len()];
        for i in rand::seq::index::sample(&mut self.rng, alive.len(), count) {
            if let Some(slot) = alive.get(i).and_then(|&n| side_b.get_mut(n)) {
                *slot = true;
            }
        }
        let group_b = side_b.iter().filter(|&&b| b).count();
        let held_before = self.held_total;
        self.partition(|n| side_b.get(n).copied().unwrap_or(false));
        let split_at = self.now;
        let cross_links_at_split = self.cross_links();
        let split_mark = self.mark();
        let mut split_trace = vec![TracePoint::of(&before, 0.0)];
        let mut cross_links_gone_secs = (cross_links_at_split == 0).then_some(0.0);
        let split_end = split_at + ms(self.cfg.partition);
        while self.now < split_end {
            let next = (self.now + step).min(split_end);
            self.run_until(next);
            let secs = (self.now - split_at) as f64 / 1000.0;
            split_trace.push(TracePoint::of(&self.graph(), secs));
            if cross_links_gone_secs.is_none() && self.cross_links() == 0 {
                cross_links_gone_secs = Some(secs);
            }
        }
        let at_split_end = self.graph();
        let split_traffic = self.traffic(&split_mark);
        let held_messages = self.held_total - held_before;

        self.heal();
        let healed_at = self.now;
        let heal_mark = self.mark();
        let mut heal_trace = vec![TracePoint::of(&at_split_end, 0.0)];
        let reunion = if at_split_end.healthy(min) {
            Some(at_split_end.clone())
        } else {
            let deadline = healed_at + ms(self.cfg.heal_limit);
            self.run_until_healthy(deadline, healed_at, &mut heal_trace)
        };
        let reunited_secs = reunion
            .is_some()
            .then(|| (self.now - healed_at) as f64 / 1000.0);
        PartitionReport {
            split_secs: (healed_at - split_at) as f64 / 1000.0,
            group_a: alive.len() - group_b,
            group_b,
            before,
            cross_links_at_split,
            cross_links_gone_secs,
            at_split_end,
            split_traffic,
            split_trace,
            held_messages,
            heal_limit_secs: self.cfg.heal_limit.as_secs_f64(),
            reunited_secs,
            after_heal: reunion.unwrap_or_else(|| self.graph()),
            heal_traffic: self.traffic(&heal_mark),
            heal_trace,
            wall_ms: elapsed_ms(phase),
        }
    }

    /// Runs the whole scenario: joins, convergence, a steady window, an
    /// optional split and heal, the removal of a fraction of the nodes at
    /// once, recovery, and a last window.
    pub fn run_scenario(cfg: SimConfig) -> Result<SimReport, SimError> {
        let wall = Instant::now();
        let mut sim = Sim::new(cfg)?;
        let mut wall_ms = WallMs {
            setup: elapsed_ms(wall),
            ..WallMs::default()
        };
        let min = sim.cfg.min_neighbours;
        let max = sim.cfg.max_neighbours;
        let since = |t: u64| (t - SIM_EPOCH_MS) as f64 / 1000.0;

        // Join, then wait for convergence.
        let phase = Instant::now();
        let start = sim.mark();
        let mut join_trace = Vec::new();
        while sim.now < sim.last_join_ms {
            let next = (sim.now + ms(CHECK_EVERY)).min(sim.last_join_ms);
            sim.run_until(next);
            let g = sim.graph();
            join_trace.push(TracePoint::of(&g, since(sim.now)));
        }
        let converged = if sim.graph().healthy(min) {
            Some(sim.now)
        } else {
            let deadline = sim.last_join_ms + ms(sim.cfg.converge_limit);
            sim.run_until_healthy(deadline, SIM_EPOCH_MS, &mut join_trace)
                .map(|_| sim.now)
        };
        let join_traffic = sim.traffic(&start);
        wall_ms.join_and_converge = elapsed_ms(phase);

        // Steady window.
        let phase = Instant::now();
        let steady_mark = sim.mark();
        let steady_end = sim.now + ms(sim.cfg.steady);
        let mut over_max = 0;
        while sim.now < steady_end {
            let next = (sim.now + ms(CHECK_EVERY)).min(steady_end);
            sim.run_until(next);
            if sim.graph().membership_max > max {
                over_max += 1;
            }
        }
        let steady = sim.graph();
        let steady_traffic = sim.traffic(&steady_mark);
        wall_ms.steady = elapsed_ms(phase);

        // The network split in two, then healed.
        let partition = (!sim.cfg.partition.is_zero()).then(|| sim.run_partition());

        // Remove a fraction at once, chosen at random among all nodes.
        let phase = Instant::now();
        let alive: Vec<NodeId> = (0..sim.nodes.len()).filter(|&n| sim.is_alive(n)).collect();
        let count = ((alive.len() as f64) * sim.cfg.remove_fraction).round() as usize;
        let count = count.min(alive.len().saturating_sub(1));
        let chosen: Vec<NodeId> = rand::seq::index::sample(&mut sim.rng, alive.len(), count)
            .into_iter()
            .filter_map(|i| alive.get(i).copied())
            .collect();
        let how = sim.cfg.removal;
        for &n in &chosen {
            sim.remove(n, how);
        }
        let removed_at = sim.now;
        let after_removal = sim.graph();
        let recovery_mark = sim.mark();
        let mut recovery_trace = vec![TracePoint::of(&after_removal, 0.0)];
        let at_recovery = if after_removal.healthy(min) {
            Some(after_removal.clone())
        } else {
            let deadline = removed_at + ms(sim.cfg.recover_limit);
            sim.run_until_healthy(deadline, removed_at, &mut recovery_trace)
        };
        let recovered_secs = at_recovery
            .as_ref()
            .map(|_| (sim.now - removed_at) as f64 / 1000.0);
        let recovery_traffic = sim.traffic(&recovery_mark);
        wall_ms.recovery = elapsed_ms(phase);

        // A last window after recovery.
        let phase = Instant::now();
        let end_mark = sim.mark();
        sim.run_until(sim.now + ms(sim.cfg.after));
        let end = sim.graph();
        let end_traffic = sim.traffic(&end_mark);
        wall_ms.after = elapsed_ms(phase);
        wall_ms.total = elapsed_ms(wall);

        let cfg = &sim.cfg;
        Ok(SimReport {
            nodes: cfg.nodes,
            min_neighbours: min,
            max_neighbours: max,
            book_capacity: cfg.book_capacity,
            seed: cfg.seed,
            latency_ms: ms(cfg.latency),
            jitter_ms: ms(cfg.jitter),
            join_rate: cfg.join_rate,
            bootstrap: cfg.bootstrap,
            removal: cfg.removal,
            session: cfg.session,
            last_join_secs: since(sim.last_join_ms),
            converged_secs: converged.map(since),
            converged_after_last_join_secs: converged
                .map(|t| (t - sim.last_join_ms) as f64 / 1000.0),
            steady,
            steady_traffic,
            steady_checks_over_max: over_max,
            join_traffic,
            partition,
            removed: chosen.len(),
            removed_bootstrap_node: chosen.contains(&0),
            after_removal,
            recovered_secs,
            at_recovery,
            recovery_traffic,
            recovery_trace,
            join_trace,
            end,
            end_traffic,
            stats: sim.stats(),
            counters: sim.counters,
            virtual_secs: since(sim.now),
            wall_ms,
        })
    }
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Bytes of a frame on the wire: encoded, cut into cells of one size, each
/// sealed (tag) and length-prefixed ([`crate::wire::cell::CELL_WIRE`]).
fn frame_len(frame: &LinkFrame) -> Option<u64> {
    use crate::wire::cell::{cells_for, CELL_WIRE};
    frame
        .encode()
        .ok()
        .map(|b| (cells_for(b.len()) * CELL_WIRE) as u64)
}

/// The `p`th percentile (nearest rank) of sorted values.
/// Join times of newcomers, virtual seconds from each one's start.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct JoinTimes {
    pub count: usize,
    /// Newcomers at their `min` by the end of the window.
    pub joined: usize,
    pub p50_secs: f64,
    pub p90_secs: f64,
    pub max_secs: f64,
}

/// A network where every node is full: `min = max` (or nearly), then a
/// stream of newcomers.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FullReport {
    pub nodes: usize,
    pub min_neighbours: usize,
    pub max_neighbours: usize,
    /// Virtual seconds from the last join to one connected component.
    pub one_component_after_last_join_secs: Option<f64>,
    /// At the end of the steady window.
    pub steady: GraphSummary,
    /// Checks (one per virtual second) at which a membership counted more
    /// than `max` neighbours, over the whole run.
    pub over_max_checks: usize,
    pub newcomer_min: usize,
    pub newcomers: JoinTimes,
    pub end: GraphSummary,
    pub stats: MembershipStatsSum,
    pub wall_ms: u64,
}

/// Membership counters summed over all nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MembershipStatsSum {
    pub evictions: u64,
    pub refusals: u64,
    pub rotations: u64,
    pub splits: u64,
    pub swaps: u64,
}

/// An attacker holding a share of the nodes, each gossiping (and referring
/// to) only the attacker's records; measured on the honest nodes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AttackReport {
    pub nodes: usize,
    pub hostile: usize,
    /// Virtual seconds the attack ran after the last join.
    pub secs: f64,
    /// Share of honest entries in honest nodes' books: mean, 10th
    /// percentile, lowest.
    pub honest_book_share_mean: f64,
    pub honest_book_share_p10: f64,
    pub honest_book_share_min: f64,
    /// Honest neighbours of honest nodes: mean and lowest, and how many
    /// honest nodes had none (eclipsed).
    pub honest_neighbours_mean: f64,
    pub honest_neighbours_min: usize,
    pub eclipsed: usize,
    /// Components of the graph of honest nodes and honest links only.
    pub honest_components: usize,
    pub wall_ms: u64,
}

impl Sim {
    /// Adds a node that starts at `at` (ms since the epoch), bootstrapping
    /// from `bootstrap`, with degree bounds of its own.
    pub fn add_node(
        &mut self,
        bootstrap: Vec<SocketAddr>,
        bounds: (usize, usize),
        at: u64,
    ) -> Option<NodeId> {
        let i = self.nodes.len();
        if i >= MAX_NODES {
            return None;
        }
        let identity = Arc::new(Identity::generate());
        let record = SignedRecord::sign(&identity, node_addr(i), true, at / 1000);
        self.nodes.push(SimNode {
            identity,
            record,
            bootstrap,
            membership: None,
            state: NodeState::Waiting,
            links: HashSet::new(),
            sent: Sent::default(),
            book_writes: 0,
            dials: 0,
            dial_outcomes: 0,
            bounds: Some(bounds),
            hostile: false,
        });
        self.push(at.max(self.now), Event::Join(i));
        Some(i)
    }

    /// An attacker node's frames carry only the attacker's records.
    fn disguise(&mut self, n: NodeId, body: LinkBody) -> LinkBody {
        if !self.nodes.get(n).is_some_and(|x| x.hostile) || self.hostile_records.is_empty() {
            return body;
        }
        let k = crate::wire::link::MAX_RECORDS_PER_FRAME;
        let pick: Vec<SignedRecord> = self
            .hostile_records
            .choose_multiple(&mut self.rng, k)
            .cloned()
            .collect();
        match body {
            LinkBody::Gossip(g) => LinkBody::Gossip(crate::wire::link::Gossip {
                neighbours: g.neighbours,
                records: pick,
            }),
            LinkBody::Full(_) => LinkBody::Full(pick),
            LinkBody::Leaving(_) => LinkBody::Leaving(pick),
            LinkBody::Records(_) => LinkBody::Records(pick),
            other => other,
        }
    }

    fn stats_sum(&self) -> MembershipStatsSum {
        let mut t = MembershipStatsSum::default();
        for m in self.nodes.iter().filter_map(|n| n.membership.as_ref()) {
            let s = m.stats();
            t.evictions += s.evictions;
            t.refusals += s.refusals;
            t.rotations += s.rotations;
            t.splits += s.splits;
            t.swaps += s.swaps;
        }
        t
    }

    /// Runs until the graph is one component or `deadline`; the time then.
    fn run_until_one_component(&mut self, deadline: u64, over_max: &mut usize) -> Option<u64> {
        let max = self.cfg.max_neighbours;
        while self.now < deadline {
            let next = (self.now + ms(CHECK_EVERY)).min(deadline);
            self.run_until(next);
            let g = self.graph();
            if g.membership_max > max {
                *over_max += 1;
            }
            if g.components == 1 {
                return Some(self.now);
            }
        }
        None
    }

    /// A full network: every node joins (with the config's bounds, e.g.
    /// `min = max`), runs until one component (up to `converge_limit` after
    /// the last join) and through the steady window; then `newcomers` nodes
    /// with bounds `(newcomer_min, max)` join at `newcomer_rate` per second,
    /// each bootstrapping from one random live node, and are given
    /// `newcomer_limit` after the last of them to reach `newcomer_min`.
    pub fn run_full_network(
        cfg: SimConfig,
        newcomers: usize,
        newcomer_rate: f64,
        newcomer_min: usize,
        newcomer_limit: Duration,
    ) -> Result<FullReport, SimError> {
        let wall = Instant::now();
        let mut sim = Sim::new(cfg)?;
        let max = sim.cfg.max_neighbours;
        let mut over_max = 0;
        sim.run_until(sim.last_join_ms);
        let deadline = sim.last_join_ms + ms(sim.cfg.converge_limit);
        let one = sim
            .run_until_one_component(deadline, &mut over_max)
            .map(|t| (t - sim.last_join_ms) as f64 / 1000.0);
        let steady_end = sim.now + ms(sim.cfg.steady);
        while sim.now < steady_end {
            let next = (sim.now + ms(CHECK_EVERY)).min(steady_end);
            sim.run_until(next);
            if sim.graph().membership_max > max {
                over_max += 1;
            }
        }
        let steady = sim.graph();
        // The stream of newcomers.
        let first = sim.nodes.len();
        let alive: Vec<NodeId> = (0..first).filter(|&n| sim.is_alive(n)).collect();
        let mut starts = Vec::with_capacity(newcomers);
        for k in 0..newcomers {
            let at = sim.now + (k as f64 * 1000.0 / newcomer_rate.max(0.001)) as u64 + 1;
            let boot = alive
                .choose(&mut sim.rng)
                .map(|&b| vec![node_addr(b)])
                .unwrap_or_default();
            if sim.add_node(boot, (newcomer_min, max), at).is_none() {
                break;
            }
            starts.push(at);
        }
        let last = starts.last().copied().unwrap_or(sim.now);
        let end = last + ms(newcomer_limit);
        let mut joined_at: Vec<Option<u64>> = vec![None; starts.len()];
        while sim.now < end {
            let next = (sim.now + ms(CHECK_EVERY)).min(end);
            sim.run_until(next);
            let mut all = true;
            for (k, j) in joined_at.iter_mut().enumerate() {
                if j.is_some() {
                    continue;
                }
                let d = sim
                    .membership(first + k)
                    .map_or(0, Membership::neighbour_count);
                if d >= newcomer_min {
                    *j = Some(sim.now);
                } else {
                    all = false;
                }
            }
            if sim.graph().membership_max > max {
                over_max += 1;
            }
            if all && sim.now > last {
                break;
            }
        }
        let mut secs: Vec<f64> = joined_at
            .iter()
            .zip(&starts)
            .filter_map(|(j, s)| j.map(|j| (j.saturating_sub(*s)) as f64 / 1000.0))
            .collect();
        secs.sort_by(|a, b| a.total_cmp(b));
        let newcomers = JoinTimes {
            count: starts.len(),
            joined: secs.len(),
            p50_secs: percentile(&secs, 50),
            p90_secs: percentile(&secs, 90),
            max_secs: secs.last().copied().unwrap_or(0.0),
        };
        Ok(FullReport {
            nodes: sim.cfg.nodes,
            min_neighbours: sim.cfg.min_neighbours,
            max_neighbours: max,
            one_component_after_last_join_secs: one,
            steady,
            over_max_checks: over_max,
            newcomer_min,
            newcomers,
            end: sim.graph(),
            stats: sim.stats_sum(),
            wall_ms: elapsed_ms(wall),
        })
    }

    /// `share` of the nodes (chosen at random, node 0 aside) are the
    /// attacker's: from the start they gossip and refer only the attacker's
    /// records (their links are otherwise honest). After the joins the
    /// network runs `secs` more; the honest nodes' books and links are then
    /// measured.
    pub fn run_attack(
        cfg: SimConfig,
        share: f64,
        secs: Duration,
    ) -> Result<AttackReport, SimError> {
        let wall = Instant::now();
        let mut sim = Sim::new(cfg)?;
        let n = sim.nodes.len();
        let count = ((n as f64) * share).round() as usize;
        let mut ids: Vec<NodeId> = (1..n).collect();
        ids.shuffle(&mut sim.rng);
        ids.truncate(count.min(n.saturating_sub(1)));
        for &i in &ids {
            if let Some(node) = sim.nodes.get_mut(i) {
                node.hostile = true;
            }
        }
        sim.hostile_records = ids
            .iter()
            .filter_map(|&i| sim.nodes.get(i).map(|x| x.record.clone()))
            .collect();
        let hostile: HashSet<crate::crypto::Address> = sim
            .hostile_records
            .iter()
            .map(|r| r.record.address)
            .collect();
        sim.run_until(sim.last_join_ms + ms(secs));
        let mut shares = Vec::new();
        let mut honest_nb = Vec::new();
        let mut uf = UnionFind::new(n);
        for (i, node) in sim.nodes.iter().enumerate() {
            if node.hostile || node.state != NodeState::Alive {
                continue;
            }
            let Some(m) = &node.membership else {
                continue;
            };
            let book = m.book();
            let total = book.len();
            let honest = book
                .entries()
                .filter(|e| !hostile.contains(&e.address()))
                .count();
            shares.push(if total > 0 {
                honest as f64 / total as f64
            } else {
                0.0
            });
            let mut h = 0;
            for nb in m.neighbours() {
                if hostile.contains(&nb.address) {
                    continue;
                }
                h += 1;
                if let Some(j) = node_index(&nb.listen, n) {
                    uf.union(i, j);
                }
            }
            honest_nb.push(h);
        }
        let mut roots = HashSet::new();
        for (i, node) in sim.nodes.iter().enumerate() {
            if !node.hostile && node.state == NodeState::Alive {
                roots.insert(uf.find(i));
            }
        }
        shares.sort_by(|a, b| a.total_cmp(b));
        honest_nb.sort_unstable();
        let mean = |v: &[f64]| {
            if v.is_empty() {
                0.0
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            }
        };
        let nb_f: Vec<f64> = honest_nb.iter().map(|&x| x as f64).collect();
        Ok(AttackReport {
            nodes: n,
            hostile: ids.len(),
            secs: secs.as_secs_f64(),
            honest_book_share_mean: mean(&shares),
            honest_book_share_p10: percentile(&shares, 10),
            honest_book_share_min: shares.first().copied().unwrap_or(0.0),
            honest_neighbours_mean: mean(&nb_f),
            honest_neighbours_min: honest_nb.first().copied().unwrap_or(0),
            eclipsed: honest_nb.iter().filter(|&&x| x == 0).count(),
            honest_components: roots.len(),
            wall_ms: elapsed_ms(wall),
        })
    }
}

fn percentile<T: Copy + Default>(sorted: &[T], p: usize) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted.get(rank - 1).copied().unwrap_or_default()
}

struct UnionFind {
    parent: Vec<usize>,
}

impl UnionFind {
    fn new(n: usize) -> UnionFind {
        UnionFind {
            parent: (0..n).collect(),
        }
    }

    fn find(&mut self, mut x: usize) -> usize {
        while let Some(&p) = self.parent.get(x) {
            if p == x {
                break;
            }
            let gp = self.parent.get(p).copied().unwrap_or(p);
            if let Some(slot) = self.parent.get_mut(x) {
                *slot = gp;
            }
            x = p;
        }
        x
    }

    fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            if let Some(slot) = self.parent.get_mut(ra.max(rb)) {
                *slot = ra.min(rb);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMINGS: SessionTimings = SessionTimings {
        dial_timeout: Duration::from_secs(5),
        keepalive_interval: Duration::from_secs(5),
        keepalive_timeout: Duration::from_secs(20),
    };

    #[test]
    fn addresses_map_back_to_nodes() {
        for i in [0, 1, 255, 256, 65_535, 999_999] {
            assert_eq!(node_index(&node_addr(i), 1_000_000), Some(i));
        }
        assert_eq!(node_index(&node_addr(10), 10), None);
        assert_eq!(node_index(&"10.0.0.1:1".parse().unwrap(), 10), None);
        assert_eq!(node_index(&"11.0.0.1:58008".parse().unwrap(), 10), None);
    }

    #[test]
    fn noise_xx_message_sizes_are_what_is_counted() {
        let params: snow::params::NoiseParams = crate::crypto::noise::NOISE_PARAMS.parse().unwrap();
        let builder = || snow::Builder::new(params.clone());
        let ik = builder().generate_keypair().unwrap();
        let rk = builder().generate_keypair().unwrap();
        let mut i = builder()
            .local_private_key(&ik.private)
            .unwrap()
            .build_initiator()
            .unwrap();
        let mut r = builder()
            .local_private_key(&rk.private)
            .unwrap()
            .build_responder()
            .unwrap();
        let mut buf = [0u8; 256];
        let mut scratch = [0u8; 256];
        let n1 = i.write_message(&[], &mut buf).unwrap();
        r.read_message(&buf[..n1], &mut scratch).unwrap();
        let n2 = r.write_message(&[], &mut buf).unwrap();
        i.read_message(&buf[..n2], &mut scratch).unwrap();
        let n3 = i.write_message(&[], &mut buf).unwrap();
        assert_eq!([n1 as u64, n2 as u64, n3 as u64], NOISE_XX_MESSAGES);
    }

    #[test]
    fn percentile_is_nearest_rank() {
        assert_eq!(percentile(&[1, 2, 3, 4], 50), 2);
        assert_eq!(percentile(&[7], 50), 7);
        assert_eq!(percentile::<usize>(&[], 50), 0);
    }

    #[test]
    fn refuses_bad_configs() {
        let bad = SimConfig::new(1, 3, 6, TIMINGS);
        assert_eq!(Sim::new(bad).err(), Some(SimError::Nodes(1)));
        let bad = SimConfig::new(10, 4, 3, TIMINGS);
        assert_eq!(Sim::new(bad).err(), Some(SimError::Bounds(4, 3)));
        let mut bad = SimConfig::new(10, 3, 6, TIMINGS);
        bad.remove_fraction = 1.0;
        assert_eq!(Sim::new(bad).err(), Some(SimError::RemoveFraction(1.0)));
    }

    /// Nodes removed in every way, at every moment (mid-handshake too),
    /// never leave a survivor's dial without an outcome.
    #[test]
    fn every_dial_gets_one_outcome() {
        for how in [Removal::Crash, Removal::Kill, Removal::Leave] {
            let mut cfg = SimConfig::new(200, 3, 6, TIMINGS);
            cfg.join_rate = 20.0;
            let mut sim = Sim::new(cfg).unwrap();
            let mut rng = StdRng::seed_from_u64(3);
            // Nodes join every 50 ms; one that has joined goes every 37 ms.
            let mut t = SIM_EPOCH_MS + 2_000;
            while t < sim.last_join_ms() + 5_000 {
                t += 37;
                sim.run_until(t);
                let joined = ((t - SIM_EPOCH_MS) / 50).min(199) as usize;
                sim.remove(rng.gen_range(0..=joined), how);
                assert!(sim.dial_leaks().is_empty(), "{how:?} at {t}");
            }
            sim.run_until(t + 120_000);
            assert!(
                sim.dial_leaks().is_empty(),
                "{how:?}: {:?}",
                sim.dial_leaks()
            );
        }
    }

    /// Time the split tests give a small network to join and settle.
    const SETTLE: Duration = Duration::from_secs(60);
    /// Extra time past the keepalive cut, for the cuts' closes and any
    /// handshake caught by the split to time out.
    const CUT_SLACK: Duration = Duration::from_secs(10);

    /// A 60-node network, joined and settled, and its nodes split at random
    /// into two halves (true: the second group).
    fn settled_and_halves() -> (Sim, Vec<bool>) {
        let cfg = SimConfig::new(60, 3, 6, TIMINGS);
        let mut sim = Sim::new(cfg).unwrap();
        sim.run_until(sim.last_join_ms() + ms(SETTLE));
        assert!(sim.graph().healthy(3), "{:#?}", sim.graph());
        let mut rng = StdRng::seed_from_u64(7);
        let mut side_b = vec![false; 60];
        for i in rand::seq::index::sample(&mut rng, 60, 30) {
            side_b[i] = true;
        }
        (sim, side_b)
    }

    /// Links between live nodes whose memberships both count them, across
    /// the groups.
    fn graph_edges_across(sim: &Sim, side_b: &[bool]) -> usize {
        sim.links
            .iter()
            .filter(|k| {
                k.up == [true, true]
                    && k.ends == [End::Open, End::Open]
                    && side_b[k.nodes[0]] != side_b[k.nodes[1]]
            })
            .count()
    }

    /// A split black-holes the traffic between the groups: once the
    /// keepalive timeout has run out, every session across it is cut, no
    /// new one crossed it, and the graph is in pieces; every dial still gets
    /// one outcome, during the split and after the heal.
    #[test]
    fn split_cuts_every_link_across_it() {
        let (mut sim, side_b) = settled_and_halves();
        let b = side_b.clone();
        sim.partition(move |n| b[n]);
        assert!(sim.is_partitioned());
        assert!(
            sim.cross_links() > 0,
            "the halves were linked before the split"
        );
        let split_at = sim.now_ms();
        let links_at_split = sim.links.len();
        let failures_at_split = sim.counters().dial_failures;
        let cut_by = split_at
            + ms(TIMINGS.keepalive_timeout + TIMINGS.keepalive_interval + TIMINGS.dial_timeout)
            + ms(CUT_SLACK);
        let mut t = split_at;
        while t < cut_by {
            t += ms(CHECK_EVERY);
            sim.run_until(t);
            assert!(sim.dial_leaks().is_empty(), "at {t}");
        }
        assert_eq!(sim.cross_links(), 0);
        assert_eq!(graph_edges_across(&sim, &side_b), 0);
        // Dials across the split went to a silent host: none even connected.
        let dialled_across = sim.links[links_at_split..]
            .iter()
            .filter(|k| side_b[k.nodes[0]] != side_b[k.nodes[1]])
            .count();
        assert_eq!(dialled_across, 0);
        assert!(sim.counters().dial_failures > failures_at_split);
        let g = sim.graph();
        assert!(g.components >= 2, "{g:#?}");
        // The split holds: a while later, still nothing across it.
        sim.run_until(cut_by + 60_000);
        assert_eq!(sim.cross_links(), 0);
        assert_eq!(graph_edges_across(&sim, &side_b), 0);
        assert!(sim.graph().components >= 2);

        sim.heal();
        assert!(!sim.is_partitioned());
        assert_eq!(sim.cross_links(), 0);
        sim.run_until(sim.now_ms() + 120_000);
        assert!(sim.dial_leaks().is_empty(), "{:?}", sim.dial_leaks());
    }

    /// A split shorter than the keepalive timeout cuts nothing: the held
    /// frames arrive at the heal, the pending cuts are void, and every link
    /// across it is still there.
    #[test]
    fn split_shorter_than_keepalive_cuts_nothing() {
        let (mut sim, side_b) = settled_and_halves();
        let across = graph_edges_across(&sim, &side_b);
        assert!(across > 0);
        let cuts = sim.counters().keepalive_cuts;
        let b = side_b.clone();
        sim.partition(move |n| b[n]);
        sim.run_until(sim.now_ms() + ms(TIMINGS.keepalive_timeout / 2));
        assert!(sim.held_total > 0, "nothing was sent across the split");
        sim.heal();
        assert!(sim.held.is_empty());
        sim.run_until(sim.now_ms() + ms(TIMINGS.keepalive_timeout * 3));
        assert_eq!(sim.counters().keepalive_cuts, cuts);
        assert!(graph_edges_across(&sim, &side_b) > 0);
        assert!(sim.graph().healthy(3), "{:#?}", sim.graph());
        assert!(sim.dial_leaks().is_empty(), "{:?}", sim.dial_leaks());
    }

    /// The scenario's split phase reports the split and the heal, and a
    /// run without one reports none.
    #[test]
    fn scenario_reports_the_split() {
        let mut cfg = SimConfig::new(60, 3, 6, TIMINGS);
        cfg.steady = Duration::from_secs(10);
        cfg.after = Duration::from_secs(5);
        cfg.remove_fraction = 0.0;
        cfg.partition = Duration::from_secs(60);
        cfg.heal_limit = Duration::from_secs(60);
        let r = Sim::run_scenario(cfg.clone()).unwrap();
        let p = r.partition.as_ref().expect("a split phase");
        assert_eq!((p.group_a, p.group_b), (30, 30));
        assert_eq!(p.before.components, 1);
        assert!(p.cross_links_at_split > 0);
        assert!(p.cross_links_gone_secs.is_some(), "{p:#?}");
        assert!(p.at_split_end.components >= 2, "{p:#?}");
        assert_eq!(p.split_secs, 60.0);
        assert!(p.split_traffic.membership > 0.0);
        assert!(!p.heal_trace.is_empty());

        cfg.partition = Duration::ZERO;
        let r = Sim::run_scenario(cfg.clone()).unwrap();
        assert!(r.partition.is_none());
        cfg.partition_share = 1.0;
        assert_eq!(Sim::new(cfg).err(), Some(SimError::PartitionShare(1.0)));
    }

    /// A small network converges, stays within bounds, and heals after
    /// losing nodes, whichever way they go.
    #[test]
    fn small_network_converges_and_heals() {
        for how in [Removal::Crash, Removal::Kill, Removal::Leave] {
            let mut cfg = SimConfig::new(60, 3, 6, TIMINGS);
            cfg.steady = Duration::from_secs(30);
            cfg.after = Duration::from_secs(10);
            cfg.removal = how;
            cfg.recover_limit = Duration::from_secs(300);
            let r = Sim::run_scenario(cfg).unwrap();
            assert!(r.converged_secs.is_some(), "{how:?}: {r:#?}");
            assert!(r.steady.membership_max <= 6, "{how:?}: {r:#?}");
            assert_eq!(r.removed, 18);
            assert!(r.recovered_secs.is_some(), "{how:?}: {r:#?}");
            assert!(r.steady_traffic.membership > 0.0);
            assert!(r.steady_traffic.keepalive > 0.0);
        }
    }
}
