//! NeighbourManager: runs the node's [`Membership`] over real links.
//!
//! All overlay decisions (how many links, which to dial, which to drop, what
//! to gossip, whom to let in when full) are made by [`Membership`], which does
//! no I/O; this actor feeds it the clock, dial outcomes, session ups and
//! downs and membership frames, and carries out the [`Action`]s it returns:
//! dialling, sending and closing through the sessions, telling the Router
//! which links count, and saving address-book changes to the store. On
//! leaving, it closes every link with a farewell (records of the other
//! neighbours) and waits, bounded, for the farewells to be written.
//!
//! The node's own record: this actor is the one writer of the shared
//! [`crate::crypto::RecordCell`] once it runs. A record re-signed elsewhere
//! (a new packet key, from the key rotation) arrives as [`SetOwnRecord`]; the
//! Membership takes it (and gossips it to every neighbour) and the cell is
//! set from the Membership's own record, as it is after the Membership's
//! periodic refresh, so new links and letters carry the record in force.
//!
//! Bans: a session whose peer broke a budget sends [`Ban`]; the peer's node
//! address is then refused for `limits.backoff` (the Membership's bounded,
//! in-memory ban list): its sessions are refused at [`SessionUp`] before they
//! frame anything, and the Membership does not dial it. Refusals are counted
//! and summarised every [`REFUSED_SUMMARY_INTERVAL`], not logged one by one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::peer_session::{
    dial_courier, dial_from_own_ip, Close, Established, LinkIdentity, PeerHandle, PeerSession,
};
use super::router::{
    BookChanged, CourierFailed, CourierUp, LearnedRecord, NeighbourDown, NeighbourUp, PeerBook,
    Router,
};
use super::{fault_handler, guard};
use crate::config::{LiveLimits, NetworkConfig};
use crate::crypto::{unix_now_ms, Address, SignedRecord};
use crate::logging::{log_summary, LogLimiter};
use crate::overlay::membership::TICK;
use crate::overlay::{Action, Direction, LinkId, Membership, MembershipConfig, PeerEntry};
use crate::store::{PeerRecord, Store};
use crate::wire::client::{BootstrapStatus, NeighbourStatus, PeerStatus};
use crate::wire::link::{LinkBody, LinkFrame};

/// How long leaving may take before the links are dropped anyway.
pub const LEAVE_TIMEOUT: Duration = Duration::from_secs(3);
/// Room in the mailbox: sessions report ups, downs, gossip and round trips.
pub const MAILBOX: usize = 256;
/// Courier links (onion packets to non-neighbours) being dialled at once;
/// past this a request is refused and the packet waits for a retry.
pub const MAX_COURIER_DIALS: usize = 16;
/// Courier links up at once, both directions; a link past this is refused
/// (the Router closes its own idle ones, so a busy relay stays under it).
pub const MAX_COURIER_LINKS: usize = 128;
/// Links refused from banned peers are logged as one count this often.
pub const REFUSED_SUMMARY_INTERVAL: Duration = Duration::from_secs(60);
const EV_UP: &str = "neighbour up";
const EV_DOWN: &str = "neighbour down";
const EV_BOOTSTRAP: &str = "cannot reach a bootstrap node";

static SESSION_IDS: AtomicU64 = AtomicU64::new(1);

/// A fresh id telling apart successive sessions with the same peer.
pub fn next_session_id() -> u64 {
    SESSION_IDS.fetch_add(1, Ordering::Relaxed)
}

pub struct NeighbourManager {
    me: LinkIdentity,
    store: Store,
    router: Addr<Router>,
    membership: Membership,
    /// Every session that reported up and has not yet reported down.
    sessions: HashMap<LinkId, PeerHandle>,
    log: slog::Logger,
    /// Parent logger of the sessions this manager dials.
    session_log: slog::Logger,
    /// Per-peer budgets, for the sessions this manager dials and the bans.
    limits: LiveLimits,
    /// Links from (or dials to) banned peers refused since the last summary.
    refused: u64,
    /// When the next summary of refusals is due.
    next_summary_ms: u64,
    /// "neighbour up/down" once per source and minute, then counted: a
    /// stranger with fresh keys can link and unlink at will.
    logs: LogLimiter,
    /// `network.bootstrap`, for `status` (the Membership dials them).
    bootstrap: Vec<SocketAddr>,
    /// The last failed dial of each bootstrap address (why, when in seconds
    /// since the epoch), until a dial to it succeeds.
    bootstrap_errors: HashMap<SocketAddr, (String, u64)>,
    /// The anchors as last saved.
    anchors: Vec<SignedRecord>,
    /// The Membership's view of nodes alive nearby, as last told the
    /// Router: nodes that leave it are reported ([`super::router::Vanished`]).
    near: std::collections::HashSet<Address>,
    /// Courier links up (session id → peer): outside the Membership.
    couriers: HashMap<u64, Address>,
    /// Courier links being dialled.
    courier_dials: std::collections::HashSet<Address>,
}

/// A stored book entry, as the overlay's book holds it.
fn from_stored(r: PeerRecord) -> PeerEntry {
    PeerEntry {
        record: r.record,
        last_seen: r.last_seen,
        last_success: r.last_success,
        failures: r.failures,
        tried: r.tried,
        source: r.source,
    }
}

/// A book entry in the store's format.
fn to_stored(e: &PeerEntry) -> PeerRecord {
    PeerRecord {
        record: e.record.clone(),
        last_seen: e.last_seen,
        last_success: e.last_success,
        failures: e.failures,
        tried: e.tried,
        source: e.source,
    }
}

impl NeighbourManager {
    pub fn new(
        me: LinkIdentity,
        store: Store,
        router: Addr<Router>,
        net: NetworkConfig,
        limits: LiveLimits,
        log: &slog::Logger,
    ) -> NeighbourManager {
        let log = log.new(slog::o!("actor" => "neighbours"));
        let stored: Vec<PeerEntry> = store
            .peers_all()
            .unwrap_or_else(|e| {
                slog::warn!(log, "cannot read the address book"; "error" => %e);
                Vec::new()
            })
            .into_iter()
            .map(from_stored)
            .collect();
        let anchors = store.anchors().unwrap_or_else(|e| {
            slog::warn!(log, "cannot read the anchors"; "error" => %e);
            Vec::new()
        });
        slog::info!(log, "address book loaded"; "entries" => stored.len(), "anchors" => anchors.len());
        let bootstrap = net.bootstrap.clone();
        let mut membership = Membership::new(
            me.identity.clone(),
            (*me.record.get()).clone(),
            net.bootstrap,
            MembershipConfig::new(net.min_neighbours, net.max_neighbours),
            stored,
            None,
            unix_now_ms(),
        );
        membership.set_anchors(anchors.clone(), unix_now_ms());
        NeighbourManager {
            anchors,
            me,
            store,
            router,
            membership,
            sessions: HashMap::new(),
            session_log: log.new(slog::o!("actor" => "session")),
            log,
            limits,
            refused: 0,
            next_summary_ms: 0,
            logs: LogLimiter::default(),
            bootstrap,
            bootstrap_errors: HashMap::new(),
            couriers: HashMap::new(),
            courier_dials: Default::default(),
            near: Default::default(),
        }
    }

    /// Tells the Router which nodes just left the view of nodes alive
    /// nearby (onion origins avoid them as relays for a while).
    fn report_vanished(&mut self) {
        let near = self.membership.near();
        let gone: Vec<Address> = self.near.difference(&near).copied().collect();
        self.near = near;
        if !gone.is_empty() {
            self.router.do_send(super::router::Vanished(gone));
        }
    }

    /// Counts a refused link from a banned peer; the count is logged once
    /// per [`REFUSED_SUMMARY_INTERVAL`] ([`NeighbourManager::summarise`]).
    fn refuse(&mut self, address: &Address) {
        self.refused += 1;
        slog::debug!(self.log, "link from a banned peer refused"; "peer" => ?address);
    }

    fn summarise(&mut self, now_ms: u64) {
        if self.refused == 0 || now_ms < self.next_summary_ms {
            return;
        }
        slog::info!(self.log, "links from banned peers refused";
            "links" => std::mem::take(&mut self.refused),
            "banned" => self.membership.ban_count(),
            "since_secs" => REFUSED_SUMMARY_INTERVAL.as_secs());
        self.next_summary_ms = now_ms + REFUSED_SUMMARY_INTERVAL.as_millis() as u64;
    }

    /// Puts the Membership's own record in the shared cell if it changed
    /// (refreshed, or replaced by [`SetOwnRecord`]).
    fn sync_own_record(&mut self) {
        let own = self.membership.own_record();
        if own.record.time != self.me.record.get().record.time {
            self.me.record.set(own.clone());
        }
    }

    /// Carries out what the membership decided, and saves book changes.
    fn apply(&mut self, ctx: &mut Context<Self>) {
        self.report_vanished();
        let mut linked = false;
        for action in self.membership.take_actions() {
            match action {
                Action::Dial(addr) => self.dial(addr, ctx),
                Action::Send { link, body } => {
                    if let (Some(h), Ok(bytes)) =
                        (self.sessions.get(&link), LinkFrame::new(body).encode())
                    {
                        h.send(bytes.into());
                    }
                }
                Action::Close { link, farewell } => {
                    if let Some(h) = self.sessions.get(&link) {
                        h.session.do_send(Close {
                            farewell: encode_farewell(farewell),
                        });
                    }
                }
                Action::Up(link) => {
                    linked = true;
                    if let Some(h) = self.sessions.get(&link) {
                        self.router.do_send(NeighbourUp(h.clone()));
                        let source = h.listen.ip().to_string();
                        if self
                            .logs
                            .allow(slog::Level::Info, EV_UP, &source, Instant::now())
                        {
                            slog::info!(self.log, "{}", EV_UP; "peer" => ?h.address, "listen" => %h.listen, "neighbours" => self.membership.neighbour_count());
                        }
                    }
                }
                Action::Down(link) => {
                    if let Some(h) = self.sessions.get(&link) {
                        self.router.do_send(NeighbourDown {
                            address: h.address,
                            session_id: h.session_id,
                        });
                        let source = h.listen.ip().to_string();
                        if self
                            .logs
                            .allow(slog::Level::Info, EV_DOWN, &source, Instant::now())
                        {
                            slog::info!(self.log, "{}", EV_DOWN; "peer" => ?h.address, "listen" => %h.listen, "neighbours" => self.membership.neighbour_count());
                        }
                    }
                }
            }
        }
        self.save_book();
        if linked {
            // A node killed soon after it first linked must still find its
            // way back from the book: do not wait for sled's own flush.
            let store = self.store.clone();
            let log = self.log.clone();
            ctx.spawn(
                async move {
                    if let Err(e) = store.flush().await {
                        slog::warn!(log, "cannot flush the address book"; "error" => %e);
                    }
                }
                .into_actor(self),
            );
        }
    }

    fn save_book(&mut self) {
        let (changed, removed) = self.membership.take_book_changes();
        let saved: Vec<PeerRecord> = changed.iter().map(to_stored).collect();
        for e in &saved {
            if let Err(e) = self.store.peer_save(e) {
                slog::warn!(self.log, "cannot save an address-book entry"; "error" => %e);
            }
        }
        for a in &removed {
            if let Err(e) = self.store.peer_remove(a) {
                slog::warn!(self.log, "cannot remove an address-book entry"; "error" => %e);
            }
        }
        if !saved.is_empty() || !removed.is_empty() {
            // After the writes: the Router reads its candidates from the
            // store. With its mailbox full the notice is dropped, and the
            // Router reads them at its next CANDIDATES_REFRESH instead.
            let _ = self.router.try_send(BookChanged { saved, removed });
        }
        // Anchors change only when outbound links come and go; an empty set
        // (no links now) keeps the last one, for the next start.
        let anchors = self.membership.anchors();
        if !anchors.is_empty() && anchors != self.anchors {
            if let Err(e) = self.store.anchors_save(&anchors) {
                slog::warn!(self.log, "cannot save the anchors"; "error" => %e);
            }
            self.anchors = anchors;
        }
    }

    /// Starts the session of a link this node dialled (a neighbour link or
    /// a courier link: the first frame tells them apart).
    fn launch_out(&self, est: Established, ctx: &mut Context<Self>) {
        PeerSession::launch(
            est,
            Direction::Out,
            next_session_id(),
            self.router.clone(),
            ctx.address(),
            &self.limits.get(),
            &self.session_log,
        );
    }

    fn dial(&mut self, addr: SocketAddr, ctx: &mut Context<Self>) {
        let me = self.me.clone();
        slog::debug!(self.log, "dialling"; "addr" => %addr);
        let fut = async move {
            let record = me.record.get();
            dial_from_own_ip(addr, &me.identity, &record).await
        };
        ctx.spawn(fut.into_actor(self).map(move |res, this, ctx| {
            match res {
                Ok(est)
                    if this
                        .membership
                        .is_banned(&est.peer.record.address, unix_now_ms()) =>
                {
                    // A banned node answered at a new address: a failed dial,
                    // so that address backs off too.
                    this.refuse(&est.peer.record.address);
                    this.membership.dial_failed(addr, unix_now_ms());
                }
                Ok(est) => {
                    this.bootstrap_errors.remove(&addr);
                    this.membership.dial_succeeded(addr);
                    if this.membership.is_leaving() {
                        return;
                    }
                    this.launch_out(est, ctx);
                }
                Err(e) if this.bootstrap.contains(&addr) => {
                    // The way into the network: worth a warning (once per
                    // address and minute, then counted).
                    let why = e.to_string();
                    if this.logs.allow(
                        slog::Level::Warning,
                        EV_BOOTSTRAP,
                        &addr.to_string(),
                        Instant::now(),
                    ) {
                        slog::warn!(this.log, "{}", EV_BOOTSTRAP; "addr" => %addr, "error" => &why);
                    }
                    let now = unix_now_ms();
                    this.bootstrap_errors.insert(addr, (why, now / 1000));
                    this.membership.dial_failed(addr, now);
                }
                Err(e) => {
                    slog::debug!(this.log, "dial failed"; "addr" => %addr, "error" => %e);
                    this.membership.dial_failed(addr, unix_now_ms());
                }
            }
            this.apply(ctx);
        }));
    }
}

fn encode_farewell(body: Option<LinkBody>) -> Option<bytes::Bytes> {
    body.and_then(|b| LinkFrame::new(b).encode().ok())
        .map(Into::into)
}

impl Actor for NeighbourManager {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX);
        // The book has one owner: records the Router learns come here.
        self.router.do_send(PeerBook(
            ctx.address().recipient(),
            ctx.address().recipient(),
        ));
        ctx.run_interval(TICK, |this, ctx| {
            guard(this, ctx, &this.log.clone(), "neighbours", |this, ctx| {
                let now = unix_now_ms();
                this.membership.tick(now);
                this.sync_own_record();
                this.apply(ctx);
                this.summarise(now);
                for summary in this.logs.due(Instant::now()) {
                    log_summary(&this.log, &summary);
                }
            });
        });
        self.membership.tick(unix_now_ms());
        self.apply(ctx);
    }
}

impl Supervised for NeighbourManager {
    fn restarting(&mut self, _: &mut Context<Self>) {
        slog::warn!(self.log, "neighbour manager restarting");
        // Dials in progress were cancelled with the actor's futures; the
        // membership forgets them so it dials again.
        self.membership.forget_dials();
    }
}

/// A session finished its handshake (from the session itself). The answer
/// says whether it may go on: false for a banned peer (the session then
/// stops without reading a frame, and reports no down).
#[derive(Message)]
#[rtype(result = "bool")]
pub struct SessionUp {
    pub record: SignedRecord,
    pub direction: Direction,
    pub handle: PeerHandle,
    /// A courier link: handed to the Router, not to the Membership.
    pub courier: bool,
}

impl Handler<SessionUp> for NeighbourManager {
    type Result = bool;
    fn handle(&mut self, msg: SessionUp, ctx: &mut Context<Self>) -> bool {
        let log = self.log.clone();
        guard(self, ctx, &log, "neighbours", |this, ctx| {
            let now = unix_now_ms();
            if this.membership.is_banned(&msg.record.record.address, now) {
                this.refuse(&msg.record.record.address);
                return false;
            }
            if msg.courier {
                if this.couriers.len() >= MAX_COURIER_LINKS {
                    slog::debug!(this.log, "courier link refused: too many"; "peer" => ?msg.record.record.address);
                    return false;
                }
                // Not a neighbour: the Router only sends packets over it.
                this.couriers
                    .insert(msg.handle.session_id, msg.record.record.address);
                this.router.do_send(CourierUp(msg.handle));
                return true;
            }
            let link = LinkId(msg.handle.session_id);
            this.sessions.insert(link, msg.handle);
            this.membership
                .link_up(link, msg.record, msg.direction, now);
            this.apply(ctx);
            true
        })
        .unwrap_or(false)
    }
}

/// A peer broke a budget (from its session, which logged it and stops):
/// refuse that node for `limits.backoff`, and close any other link to it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ban {
    pub address: Address,
    /// Where its record said it listens: not dialled meanwhile.
    pub listen: SocketAddr,
}

impl Handler<Ban> for NeighbourManager {
    type Result = ();
    fn handle(&mut self, msg: Ban, ctx: &mut Context<Self>) {
        let log = self.log.clone();
        guard(self, ctx, &log, "neighbours", |this, _| {
            let now = unix_now_ms();
            let until = now.saturating_add(this.limits.get().backoff.as_millis() as u64);
            this.membership.ban(msg.address, msg.listen, until, now);
            for h in this.sessions.values().filter(|h| h.address == msg.address) {
                h.session.do_send(Close { farewell: None });
            }
        });
    }
}

impl Handler<LearnedRecord> for NeighbourManager {
    type Result = ();
    fn handle(&mut self, msg: LearnedRecord, ctx: &mut Context<Self>) {
        let log = self.log.clone();
        guard(self, ctx, &log, "neighbours", |this, _| {
            this.membership.learned(msg.0, unix_now_ms());
            this.save_book();
        });
    }
}

/// This node's record, signed again (a new packet key): for new links,
/// letters, and every neighbour.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetOwnRecord(pub SignedRecord);

impl Handler<SetOwnRecord> for NeighbourManager {
    type Result = ();
    fn handle(&mut self, msg: SetOwnRecord, ctx: &mut Context<Self>) {
        let log = self.log.clone();
        guard(self, ctx, &log, "neighbours", |this, ctx| {
            let epoch = msg.0.record.packet_key.map(|k| k.epoch);
            if this.membership.set_own_record(msg.0, unix_now_ms()) {
                slog::debug!(this.log, "own record replaced"; "packet_key_epoch" => epoch);
            }
            this.sync_own_record();
            this.apply(ctx);
        });
    }
}

/// The Router has onion packets for a node that is neither a neighbour nor
/// linked by a courier link: dial one (outside the Membership). The record
/// is the book's; a node not in the book is not dialled.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DialCourier {
    pub address: Address,
}

impl Handler<DialCourier> for NeighbourManager {
    type Result = ();
    fn handle(&mut self, msg: DialCourier, ctx: &mut Context<Self>) {
        let now = unix_now_ms();
        if self.courier_dials.len() >= MAX_COURIER_DIALS
            || self.courier_dials.contains(&msg.address)
            || self.membership.is_banned(&msg.address, now)
            || self.membership.is_leaving()
        {
            return;
        }
        let record = match self.store.peer_get(&msg.address) {
            Ok(Some(r)) => r,
            _ => {
                slog::debug!(self.log, "no record to dial a courier link"; "peer" => ?msg.address);
                self.router.do_send(CourierFailed {
                    address: msg.address,
                });
                return;
            }
        };
        self.courier_dials.insert(msg.address);
        let me = self.me.clone();
        let addr = record.record.listen;
        let expected = msg.address;
        let fut = async move {
            let record = me.record.get();
            dial_courier(addr, &me.identity, &record, expected).await
        };
        ctx.spawn(fut.into_actor(self).map(move |res, this, ctx| {
            this.courier_dials.remove(&expected);
            match res {
                Ok(est) => {
                    this.launch_out(est, ctx);
                }
                Err(e) => {
                    slog::debug!(this.log, "courier dial failed"; "addr" => %addr, "error" => %e);
                    this.router.do_send(CourierFailed { address: expected });
                }
            }
        }));
    }
}

/// A session ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SessionDown {
    pub session_id: u64,
}

impl Handler<SessionDown> for NeighbourManager {
    type Result = ();
    fn handle(&mut self, msg: SessionDown, ctx: &mut Context<Self>) {
        let log = self.log.clone();
        guard(self, ctx, &log, "neighbours", |this, ctx| {
            if let Some(address) = this.couriers.remove(&msg.session_id) {
                this.router.do_send(NeighbourDown {
                    address,
                    session_id: msg.session_id,
                });
                return;
            }
            let link = LinkId(msg.session_id);
            this.membership.link_down(link, unix_now_ms());
            this.apply(ctx);
            this.sessions.remove(&link);
        });
    }
}

/// A membership frame (gossip, records, full, leaving) from a session.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FromPeer {
    pub session_id: u64,
    pub body: LinkBody,
}

impl Handler<FromPeer> for NeighbourManager {
    type Result = ();
    fn handle(&mut self, msg: FromPeer, ctx: &mut Context<Self>) {
        let log = self.log.clone();
        guard(self, ctx, &log, "neighbours", |this, ctx| {
            this.membership
                .on_frame(LinkId(msg.session_id), msg.body, unix_now_ms());
            this.apply(ctx);
        });
    }
}

/// A session measured a round trip (ping to pong).
#[derive(Message)]
#[rtype(result = "()")]
pub struct LinkRtt {
    pub session_id: u64,
    pub rtt: Duration,
}

impl Handler<LinkRtt> for NeighbourManager {
    type Result = ();
    fn handle(&mut self, msg: LinkRtt, _: &mut Context<Self>) {
        self.membership
            .link_rtt(LinkId(msg.session_id), msg.rtt.as_micros() as u64);
    }
}

/// The current links, for `status`.
#[derive(Message)]
#[rtype(result = "Vec<NeighbourStatus>")]
pub struct GetNeighbours;

impl Handler<GetNeighbours> for NeighbourManager {
    type Result = Vec<NeighbourStatus>;
    fn handle(&mut self, _: GetNeighbours, _: &mut Context<Self>) -> Vec<NeighbourStatus> {
        let now = unix_now_ms();
        self.membership
            .neighbours()
            .into_iter()
            .map(|n| NeighbourStatus {
                address: n.address.to_string(),
                listen: n.listen.to_string(),
                direction: n.direction.as_str().to_string(),
                age_secs: now.saturating_sub(n.since_ms) / 1000,
                rtt_us: n.rtt_us,
            })
            .collect()
    }
}

/// The bootstrap addresses and their last errors, for `status`.
#[derive(Message)]
#[rtype(result = "Vec<BootstrapStatus>")]
pub struct GetBootstrap;

impl Handler<GetBootstrap> for NeighbourManager {
    type Result = Vec<BootstrapStatus>;
    fn handle(&mut self, _: GetBootstrap, _: &mut Context<Self>) -> Vec<BootstrapStatus> {
        self.bootstrap
            .iter()
            .map(|a| {
                let err = self.bootstrap_errors.get(a);
                BootstrapStatus {
                    address: a.to_string(),
                    last_error: err.map(|(why, _)| why.clone()),
                    failed_at: err.map(|(_, at)| *at),
                }
            })
            .collect()
    }
}

/// A reloaded `network.bootstrap` (SIGHUP): shown by `status` from now on,
/// and each address not listed before is dialled once now (the Membership
/// keeps dialling the list it started with).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetBootstrap(pub Vec<SocketAddr>);

impl Handler<SetBootstrap> for NeighbourManager {
    type Result = ();
    fn handle(&mut self, msg: SetBootstrap, ctx: &mut Context<Self>) {
        let added: Vec<SocketAddr> = msg
            .0
            .iter()
            .filter(|a| !self.bootstrap.contains(a))
            .copied()
            .collect();
        self.bootstrap_errors.retain(|a, _| msg.0.contains(a));
        self.membership.set_bootstrap(msg.0.clone());
        self.bootstrap = msg.0;
        for addr in added {
            self.dial(addr, ctx);
        }
    }
}

/// The address book, for `peers`.
#[derive(Message)]
#[rtype(result = "Vec<PeerStatus>")]
pub struct GetPeers;

impl Handler<GetPeers> for NeighbourManager {
    type Result = Vec<PeerStatus>;
    fn handle(&mut self, _: GetPeers, _: &mut Context<Self>) -> Vec<PeerStatus> {
        let neighbours: Vec<_> = self
            .membership
            .neighbours()
            .into_iter()
            .map(|n| n.address)
            .collect();
        // The store holds the book as this actor saved it, plus the records
        // the Router learned from letters and probes.
        let entries = self.store.peers_all().unwrap_or_else(|e| {
            slog::warn!(self.log, "cannot read the address book"; "error" => %e);
            self.membership.book().entries().map(to_stored).collect()
        });
        let mut v: Vec<PeerStatus> = entries
            .iter()
            .map(|e| PeerStatus {
                address: e.address().to_string(),
                listen: e.record.record.listen.to_string(),
                relay: e.record.record.relay,
                neighbour: neighbours.contains(&e.address()),
                last_seen: e.last_seen,
                last_success: e.last_success,
                failures: e.failures,
                packet_key_epoch: e.record.record.packet_key.map(|k| k.epoch),
            })
            .collect();
        v.sort_by(|a, b| a.listen.cmp(&b.listen));
        v
    }
}

/// Leave the network: hand each neighbour the others' records, then close
/// every link once its queue has drained (bounded by [`LEAVE_TIMEOUT`]).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave;

impl Handler<Leave> for NeighbourManager {
    type Result = ResponseFuture<()>;
    fn handle(&mut self, _: Leave, _: &mut Context<Self>) -> Self::Result {
        self.membership.leave();
        let mut closes = Vec::new();
        for action in self.membership.take_actions() {
            match action {
                Action::Close { link, farewell } => {
                    if let Some(h) = self.sessions.get(&link) {
                        closes.push(h.session.send(Close {
                            farewell: encode_farewell(farewell),
                        }));
                    }
                }
                Action::Down(link) => {
                    if let Some(h) = self.sessions.get(&link) {
                        self.router.do_send(NeighbourDown {
                            address: h.address,
                            session_id: h.session_id,
                        });
                    }
                }
                _ => {}
            }
        }
        self.save_book();
        slog::info!(self.log, "leaving the network"; "neighbours" => closes.len());
        Box::pin(async move {
            let _ = tokio::time::timeout(LEAVE_TIMEOUT, futures::future::join_all(closes)).await;
        })
    }
}

fault_handler!(NeighbourManager, "neighbours");
