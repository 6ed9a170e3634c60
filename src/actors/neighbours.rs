//! NeighbourManager: who this node is linked to.
//!
//! It dials the bootstrap addresses and known peers until the node has
//! `min_neighbours` links, accepts inbound links up to `max_neighbours`,
//! keeps one link per peer when both dialled at once, tells the Router which
//! links are up, and redials a lost neighbour with exponential backoff and
//! jitter per address (so a dead node is not hammered, and a recovered one is
//! found again). On leaving, it hands each neighbour the records of the
//! others, then closes every link after its queue has drained.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use rand::seq::SliceRandom;

use super::peer_session::{dial, Close, Direction, LinkIdentity, PeerHandle, PeerSession};
use super::router::{NeighbourDown, NeighbourUp, Router};
use super::{backoff_delay, fault_handler, guard};
use crate::crypto::{unix_now, Address, SignedRecord};
use crate::store::Store;
use crate::wire::client::NeighbourStatus;
use crate::wire::link::{LinkBody, LinkFrame, MAX_RECORDS_PER_FRAME};

/// How often the neighbour count is checked and redials are made.
pub const TICK: Duration = Duration::from_secs(1);
/// First redial delay of an address; doubles per failure up to [`REDIAL_MAX`].
pub const REDIAL_MIN: Duration = Duration::from_millis(500);
pub const REDIAL_MAX: Duration = Duration::from_secs(30);
/// A lost neighbour is redialled (even above `min_neighbours`) until this
/// many dials have failed; after that it is only a candidate like any other.
pub const LOST_GIVE_UP: u32 = 12;
/// How long leaving may take before the links are dropped anyway.
pub const LEAVE_TIMEOUT: Duration = Duration::from_secs(3);

static SESSION_IDS: AtomicU64 = AtomicU64::new(1);

/// A fresh id telling apart successive sessions with the same peer.
pub fn next_session_id() -> u64 {
    SESSION_IDS.fetch_add(1, Ordering::Relaxed)
}

struct Neighbour {
    handle: PeerHandle,
    record: SignedRecord,
    direction: Direction,
}

#[derive(Default)]
struct Backoff {
    failures: u32,
    next_at: Option<Instant>,
}

pub struct NeighbourManager {
    me: LinkIdentity,
    store: Store,
    router: Addr<Router>,
    bootstrap: Vec<SocketAddr>,
    min: usize,
    max: usize,
    neighbours: HashMap<Address, Neighbour>,
    dialing: HashSet<SocketAddr>,
    backoff: HashMap<SocketAddr, Backoff>,
    /// Addresses redialled even above `min_neighbours` (until
    /// [`LOST_GIVE_UP`] failures): neighbours whose link broke, and the
    /// bootstrap addresses until each has been linked once, so a bootstrap
    /// node that starts after this one still joins it.
    lost: HashSet<SocketAddr>,
    leaving: bool,
    log: slog::Logger,
    /// Parent logger of the sessions this manager dials.
    session_log: slog::Logger,
}

impl NeighbourManager {
    pub fn new(
        me: LinkIdentity,
        store: Store,
        router: Addr<Router>,
        bootstrap: Vec<SocketAddr>,
        min: usize,
        max: usize,
        log: &slog::Logger,
    ) -> NeighbourManager {
        let lost = bootstrap.iter().copied().collect();
        NeighbourManager {
            me,
            store,
            router,
            bootstrap,
            min,
            max,
            neighbours: HashMap::new(),
            dialing: HashSet::new(),
            backoff: HashMap::new(),
            lost,
            leaving: false,
            log: log.new(slog::o!("actor" => "neighbours")),
            session_log: log.new(slog::o!("actor" => "session")),
        }
    }

    fn ready(&self, addr: &SocketAddr, now: Instant) -> bool {
        self.backoff
            .get(addr)
            .and_then(|b| b.next_at)
            .is_none_or(|at| at <= now)
    }

    fn failed(&mut self, addr: SocketAddr) {
        let b = self.backoff.entry(addr).or_default();
        b.failures = b.failures.saturating_add(1);
        b.next_at = Some(Instant::now() + backoff_delay(REDIAL_MIN, REDIAL_MAX, b.failures));
        if b.failures >= LOST_GIVE_UP {
            self.lost.remove(&addr);
        }
    }

    fn connected_to(&self, addr: &SocketAddr) -> bool {
        self.neighbours
            .values()
            .any(|n| n.record.record.listen == *addr)
    }

    /// Dials lost neighbours, and more known nodes while below the minimum.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.leaving {
            return;
        }
        let now = Instant::now();
        let own = self.me.record.record.listen;
        let usable = |this: &Self, a: &SocketAddr| {
            *a != own && !this.dialing.contains(a) && !this.connected_to(a) && this.ready(a, now)
        };
        let mut targets: Vec<SocketAddr> = Vec::new();
        if self.neighbours.len() + self.dialing.len() < self.max {
            targets.extend(self.lost.iter().filter(|a| usable(self, a)).copied());
        }
        let active = self.neighbours.len() + self.dialing.len() + targets.len();
        if active < self.min {
            let mut candidates: Vec<SocketAddr> = self.bootstrap.clone();
            match self.store.peers_all() {
                Ok(peers) => candidates.extend(peers.iter().map(|r| r.record.listen)),
                Err(e) => slog::warn!(self.log, "cannot read the address book"; "error" => %e),
            }
            candidates.sort();
            candidates.dedup();
            candidates.retain(|a| usable(self, a) && !targets.contains(a));
            candidates.shuffle(&mut rand::thread_rng());
            targets.extend(candidates.into_iter().take(self.min - active));
        }
        for addr in targets {
            self.dial(addr, ctx);
        }
    }

    fn dial(&mut self, addr: SocketAddr, ctx: &mut Context<Self>) {
        self.dialing.insert(addr);
        let me = self.me.clone();
        slog::debug!(self.log, "dialling"; "addr" => %addr);
        let fut = async move { dial(addr, &me.identity, &me.record).await };
        ctx.spawn(fut.into_actor(self).map(move |res, this, ctx| {
            this.dialing.remove(&addr);
            match res {
                Ok(est) => {
                    if this.leaving {
                        return;
                    }
                    // Reached, whatever listen address its record names.
                    this.lost.remove(&addr);
                    this.backoff.remove(&addr);
                    PeerSession::launch(
                        est,
                        Direction::Out,
                        next_session_id(),
                        this.router.clone(),
                        ctx.address(),
                        &this.session_log,
                    );
                }
                Err(e) => {
                    slog::debug!(this.log, "dial failed"; "addr" => %addr, "error" => %e);
                    this.failed(addr);
                }
            }
        }));
    }

    fn up(&mut self, msg: SessionUp) {
        let addr = msg.record.record.address;
        let close = |h: &PeerHandle| h.session.do_send(Close { farewell: None });
        if self.leaving {
            return close(&msg.handle);
        }
        if let Some(existing) = self.neighbours.get(&addr) {
            if existing.handle.session_id == msg.handle.session_id {
                return;
            }
            // Both sides dialled: keep the link dialled by the lower address,
            // so both ends make the same choice. A redial by the same side
            // replaces the older link, which is likely dead.
            let me = self.me.record.record.address;
            let dialler = |d: Direction| if d == Direction::Out { me } else { addr };
            let keep_new = dialler(existing.direction) == dialler(msg.direction)
                || dialler(msg.direction) < dialler(existing.direction);
            if !keep_new {
                return close(&msg.handle);
            }
            if let Some(old) = self.neighbours.remove(&addr) {
                self.router.do_send(NeighbourDown {
                    address: addr,
                    session_id: old.handle.session_id,
                });
                close(&old.handle);
            }
        } else if msg.direction == Direction::In && self.neighbours.len() >= self.max {
            slog::info!(self.log, "inbound link refused: at max_neighbours"; "peer" => ?addr);
            return close(&msg.handle);
        }
        let listen = msg.record.record.listen;
        if let Err(e) = self.store.peer_put(&msg.record) {
            slog::warn!(self.log, "cannot store a record"; "error" => %e);
        }
        self.backoff.remove(&listen);
        self.lost.remove(&listen);
        self.router.do_send(NeighbourUp(msg.handle.clone()));
        self.neighbours.insert(
            addr,
            Neighbour {
                handle: msg.handle,
                record: msg.record,
                direction: msg.direction,
            },
        );
        slog::info!(self.log, "neighbour up"; "peer" => ?addr, "listen" => %listen, "direction" => msg.direction.as_str(), "neighbours" => self.neighbours.len());
    }

    fn down(&mut self, msg: SessionDown) {
        let current = self
            .neighbours
            .get(&msg.address)
            .is_some_and(|n| n.handle.session_id == msg.session_id);
        if !current {
            return;
        }
        self.neighbours.remove(&msg.address);
        self.router.do_send(NeighbourDown {
            address: msg.address,
            session_id: msg.session_id,
        });
        slog::info!(self.log, "neighbour down"; "peer" => ?msg.address, "left" => msg.left, "neighbours" => self.neighbours.len());
        if !msg.left && !self.leaving {
            self.lost.insert(msg.listen);
            // The first redial comes after a short, jittered delay.
            self.failed(msg.listen);
        }
    }
}

impl Actor for NeighbourManager {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(256);
        ctx.run_interval(TICK, |this, ctx| {
            guard(this, ctx, &this.log.clone(), "neighbours", |this, ctx| {
                this.tick(ctx)
            });
        });
        self.tick(ctx);
    }
}

impl Supervised for NeighbourManager {
    fn restarting(&mut self, _: &mut Context<Self>) {
        slog::warn!(self.log, "neighbour manager restarting");
        // Dials in progress were cancelled with the actor's futures.
        self.dialing.clear();
    }
}

/// A session finished its handshake (from the session itself).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SessionUp {
    pub record: SignedRecord,
    pub direction: Direction,
    pub handle: PeerHandle,
}

impl Handler<SessionUp> for NeighbourManager {
    type Result = ();
    fn handle(&mut self, msg: SessionUp, ctx: &mut Context<Self>) {
        let log = self.log.clone();
        guard(self, ctx, &log, "neighbours", |this, _| this.up(msg));
    }
}

/// A session ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SessionDown {
    pub address: Address,
    pub session_id: u64,
    pub listen: SocketAddr,
    /// The peer said it was leaving.
    pub left: bool,
}

impl Handler<SessionDown> for NeighbourManager {
    type Result = ();
    fn handle(&mut self, msg: SessionDown, ctx: &mut Context<Self>) {
        let log = self.log.clone();
        guard(self, ctx, &log, "neighbours", |this, _| this.down(msg));
    }
}

/// Records heard from a peer (peer exchange, or a leaving neighbour's hand-over).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Learn(pub Vec<SignedRecord>);

impl Handler<Learn> for NeighbourManager {
    type Result = ();
    fn handle(&mut self, msg: Learn, ctx: &mut Context<Self>) {
        let log = self.log.clone();
        guard(self, ctx, &log, "neighbours", |this, _| {
            let now = unix_now();
            let me = this.me.record.record.address;
            for rec in msg.0.into_iter().take(MAX_RECORDS_PER_FRAME) {
                if rec.record.address == me || rec.verify(now).is_err() {
                    continue;
                }
                if let Err(e) = this.store.peer_put(&rec) {
                    slog::warn!(this.log, "cannot store a record"; "error" => %e);
                }
            }
        });
    }
}

/// The current links, for `status`.
#[derive(Message)]
#[rtype(result = "Vec<NeighbourStatus>")]
pub struct GetNeighbours;

impl Handler<GetNeighbours> for NeighbourManager {
    type Result = Vec<NeighbourStatus>;
    fn handle(&mut self, _: GetNeighbours, _: &mut Context<Self>) -> Vec<NeighbourStatus> {
        let mut v: Vec<NeighbourStatus> = self
            .neighbours
            .values()
            .map(|n| NeighbourStatus {
                address: n.record.record.address.to_string(),
                listen: n.record.record.listen.to_string(),
                direction: n.direction.as_str().to_string(),
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
        self.leaving = true;
        let records: Vec<(Address, SignedRecord)> = self
            .neighbours
            .iter()
            .map(|(a, n)| (*a, n.record.clone()))
            .collect();
        let mut closes = Vec::new();
        for (addr, n) in self.neighbours.drain() {
            let others: Vec<SignedRecord> = records
                .iter()
                .filter(|(a, _)| *a != addr)
                .map(|(_, r)| r.clone())
                .take(MAX_RECORDS_PER_FRAME)
                .collect();
            let farewell = LinkFrame::new(LinkBody::Leaving(others))
                .encode()
                .ok()
                .map(Into::into);
            closes.push(n.handle.session.send(Close { farewell }));
        }
        slog::info!(self.log, "leaving the network"; "neighbours" => closes.len());
        Box::pin(async move {
            let _ = tokio::time::timeout(LEAVE_TIMEOUT, futures::future::join_all(closes)).await;
        })
    }
}

fault_handler!(NeighbourManager, "neighbours");
