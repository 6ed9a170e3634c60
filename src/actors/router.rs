//! Router: drives the routing policy ([`crate::routing::policy::Policy`])
//! and does its I/O: the links, the store, the worker threads.
//!
//! Every decision — which copy is passed on, which receipt is wanted, how a
//! message of this node travels in `routing.mode` (flood or onion), where a
//! receipt goes, what a peeled onion packet comes to — is made by the
//! policy, which returns [`Action`]s; [`Router::apply`] carries them out.
//! What the policy needs to know of the node (delivered marks, the outbox,
//! relay candidates, packet keys) it reads through [`View`].
//!
//! The Router itself owns what is I/O: the neighbour and courier links,
//! packets waiting for a courier link, the waiters of `push --wait`, and
//! the jobs it runs: sealing at push time, opening and storing deliveries
//! (the store's writer puts many in one flush), wrapping and peeling onion
//! packets on the worker threads (never the actor's thread), and taking the
//! due outbox entries each [`RETRY_TICK`] with their next retry time
//! ([`crate::routing::policy::RetrySchedule`]) in one step of the writer.
//! A late copy of a delivered message is answered with the stored receipt,
//! so an origin that missed the receipt still gets it; an origin resends
//! until its time to live, across any number of restarts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use tokio::sync::oneshot;

use super::inbox::{Deliver, Inbox};
use super::peer_session::{LinkIdentity, PeerHandle};
use super::{fault_handler, guard};
use crate::config::RoutingMode;
use crate::crypto::seal;
use crate::crypto::sphinx::{NodeHop, Packet, ReplyBlock, Sphinx};
use crate::crypto::{unix_now, unix_now_ms, Address, SignedRecord};
use crate::routing::accept::{open_packet, Header};
use crate::routing::onion::engine::{Origin, Plan};
use crate::routing::onion::fragments::Part;
use crate::routing::onion::path::{Candidate, Guards};
use crate::routing::onion::relay::{self, Arrival};
use crate::routing::policy::{
    Action, Delivery, Facts, Note, Policy, PolicyConfig, Reloaded, RetrySchedule,
};
use crate::store::replay::TagVerdict;
use crate::store::{Counter, DropKey, OutboxEntry, PeerRecord, Reschedule, Store, StoreError};
use crate::wire::client::InboxMessage;
use crate::wire::link::{FloodPacket, LinkBody, LinkFrame, OnionPacket, Receipt};
use crate::wire::message::{seal_aad, Letter, LETTER_VERSION, MAX_TEXT_BYTES};
use crate::wire::onion::{ReplyPayload, MAX_PART_BYTES};
use crate::wire::MessageId;
use crate::workers::Workers;

pub use crate::routing::policy::{ENTRY_BUDGET_WINDOW, MAX_DELIVERING, RETRY_MIN};

/// How often the outbox is checked for messages due to be (re)sent.
pub const RETRY_TICK: Duration = Duration::from_millis(250);
/// Most outbox entries sent in one tick, so a large backlog cannot stall the router.
pub const SENDS_PER_TICK: usize = 256;
/// How often expired drop-list entries are swept.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// Router mailbox: sessions wait (back-pressure) when it is full.
pub const MAILBOX: usize = 256;
/// Onion packets being peeled at once; past this a session waits for its
/// packet's peeling before it reads on (back-pressure).
pub const MAX_PEELING: usize = 256;
/// How often the relay candidates are read again from the address book.
pub const CANDIDATES_REFRESH: Duration = Duration::from_secs(5);
/// Onion packets held for one node while a courier link to it is dialled.
pub const PENDING_PER_NODE: usize = 64;
/// Nodes with packets waiting for a courier link.
pub const PENDING_NODES: usize = 64;
/// Packets waiting for a courier link longer than this are dropped (the
/// origin sends again at its next retry).
pub const PENDING_TIMEOUT: Duration = Duration::from_secs(10);
/// A courier link unused this long is closed.
pub const COURIER_IDLE: Duration = Duration::from_secs(30);
/// Courier links kept at once; past this the longest idle is closed.
pub const MAX_COURIERS: usize = 64;
/// How often idle courier links and stale waiting packets are swept.
pub const COURIER_SWEEP: Duration = Duration::from_secs(5);
/// Recipients' records learned at push time, kept for wrapping to their
/// packet keys (the address book gets them too, asynchronously).
pub const RECIPIENT_RECORDS: usize = 1024;
/// Time after which a packet key read from a record is not used, whatever
/// its window says: a record this old is stale.
pub const MAX_RECORD_AGE: Duration = Duration::from_secs(3 * 86_400);

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("{0}")]
    BadInput(String),
    #[error("cannot reach {addr} to learn its key: {why}")]
    Unreachable { addr: SocketAddr, why: String },
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("sealing failed: {0}")]
    Seal(String),
    #[error("router restarted; try again")]
    Restarted,
}

/// What the Router needs from the configuration.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// `routing.ttl`: how long this node's own messages are retried.
    pub ttl: Duration,
    /// `node.relay`: whether other nodes' packets are passed on.
    pub relay: bool,
    /// `routing.retry_max`: the longest wait between two sendings.
    pub retry_max: Duration,
    /// `limits.max_ttl`: the furthest expiry accepted, and the longest any
    /// letter lives.
    pub max_ttl: Duration,
    /// `limits.new_entries_per_min`: filter entries one peer may create.
    pub new_entries_per_min: u32,
    /// `routing.mode`: how this node's own messages travel.
    pub mode: crate::config::RoutingMode,
    /// `routing.hops`: relays on an onion path.
    pub hops: u8,
}

/// What onion routing needs beside the store: the packet keys (peeling)
/// and the persistent replay tags.
#[derive(Clone)]
pub struct OnionParts {
    pub keys: Arc<crate::crypto::keyring::PacketKeys>,
    pub replay: Arc<crate::store::replay::ReplayStore>,
}

pub struct Router {
    me: LinkIdentity,
    store: Store,
    inbox: Addr<Inbox>,
    cfg: RouterConfig,
    /// Every routing decision, and the routing state kept in memory.
    policy: Policy,
    neighbours: HashMap<Address, PeerHandle>,
    /// Where records learned outside of links go (the NeighbourManager,
    /// which owns the address book; see [`PeerBook`]).
    peer_book: Option<Recipient<LearnedRecord>>,
    waiters: HashMap<MessageId, Vec<oneshot::Sender<bool>>>,
    /// Threads for sealing, opening, wrapping and peeling (never the
    /// actor's thread).
    workers: Workers,
    /// Packet keys and replay tags (onion packets).
    onion: OnionParts,
    /// Courier links (onion packets to non-neighbours), with their last use.
    couriers: HashMap<Address, (PeerHandle, std::time::Instant)>,
    /// Packets waiting for a courier link, with when they started waiting.
    pending: HashMap<Address, (std::time::Instant, Vec<Bytes>)>,
    /// Where courier links are dialled (the NeighbourManager).
    courier_dialer: Option<Recipient<super::neighbours::DialCourier>>,
    /// Relay candidates from the address book, and when they were read.
    candidates: Option<(std::time::Instant, Vec<Candidate>)>,
    /// Recipients' records from push time.
    recipients: HashMap<Address, SignedRecord>,
    /// Onion packets being peeled now.
    peeling: usize,
    /// A [`Router::send_due`] is waiting for the store's answer.
    taking_due: bool,
    /// Another was asked for meanwhile: run it when that one is answered.
    due_again: bool,
    log: slog::Logger,
}

/// The Router's answers to the policy's questions: its store, its links and
/// its packet keys, borrowed for one decision.
struct View<'a> {
    store: &'a Store,
    linked: bool,
    keys: &'a crate::crypto::keyring::PacketKeys,
    me: Address,
    candidates: &'a mut Option<(std::time::Instant, Vec<Candidate>)>,
    recipients: &'a HashMap<Address, SignedRecord>,
    log: &'a slog::Logger,
}

/// An address-book entry as a relay candidate at `now`: a node with a
/// packet key that may be wrapped to, and not one the book failed to reach
/// twice in a row.
fn candidate_of(e: &PeerRecord, now: u64) -> Option<Candidate> {
    if e.failures >= 2 {
        return None;
    }
    hop_of(&e.record, now).map(|hop| Candidate {
        hop,
        relay: e.record.record.relay,
    })
}

/// A record's packet key, if it may be wrapped to at `now`.
fn hop_of(rec: &SignedRecord, now: u64) -> Option<NodeHop> {
    let key = rec.record.packet_key?;
    let fresh = now.saturating_sub(rec.record.time) <= MAX_RECORD_AGE.as_secs();
    (fresh && key.valid_at(now)).then_some(NodeHop {
        id: rec.record.address,
        key: key.public,
    })
}

impl Facts for View<'_> {
    fn write_failed(&self) -> bool {
        self.store.write_failure().is_some()
    }

    fn delivered_mark(
        &self,
        id: &MessageId,
        now: u64,
    ) -> Result<Option<Option<Receipt>>, StoreError> {
        Ok(self
            .store
            .drop_get(&DropKey::Delivered(*id), now)?
            .map(|done| done.receipt))
    }

    fn outbox_of(&self, id: &MessageId) -> Result<Option<(Address, u64)>, StoreError> {
        self.store.outbox_route(id)
    }

    fn linked(&self) -> bool {
        self.linked
    }

    /// Relays known from the address book with a usable packet key (read
    /// again every [`CANDIDATES_REFRESH`]).
    fn candidates(&mut self, now: u64) -> Vec<Candidate> {
        if let Some((at, c)) = &self.candidates {
            if at.elapsed() < CANDIDATES_REFRESH {
                return c.clone();
            }
        }
        let c: Vec<Candidate> = match self.store.peers_all() {
            Ok(all) => all.iter().filter_map(|e| candidate_of(e, now)).collect(),
            Err(e) => {
                slog::warn!(self.log, "cannot read the address book"; "error" => %e);
                Vec::new()
            }
        };
        *self.candidates = Some((std::time::Instant::now(), c.clone()));
        c
    }

    /// From the freshest record known for `node`: from push time or the book.
    fn hop_of(&mut self, node: &Address, now: u64) -> Option<NodeHop> {
        let booked = self.store.peer_get(node).ok().flatten();
        let rec = match (self.recipients.get(node), booked) {
            (Some(a), Some(b)) => {
                if a.record.time >= b.record.time {
                    a.clone()
                } else {
                    b
                }
            }
            (Some(a), None) => a.clone(),
            (None, b) => b?,
        };
        hop_of(&rec, now)
    }

    fn my_hop(&self, now: u64) -> Option<NodeHop> {
        self.keys.announced(now).map(|k| NodeHop {
            id: self.me,
            key: k.public,
        })
    }
}

impl Router {
    pub fn new(
        me: LinkIdentity,
        store: Store,
        inbox: Addr<Inbox>,
        cfg: RouterConfig,
        onion: OnionParts,
        log: &slog::Logger,
    ) -> Router {
        let policy = Policy::new(
            PolicyConfig {
                me: me.address(),
                relay: cfg.relay,
                mode: cfg.mode,
                hops: cfg.hops,
                max_ttl_secs: cfg.max_ttl.as_secs(),
                new_entries_per_min: cfg.new_entries_per_min,
                retry_max: cfg.retry_max,
                receipt_tokens: me.identity.receipt_tokens().clone(),
            },
            Origin::new(Guards::new(), rand::SeedableRng::from_entropy()),
        );
        Router {
            me,
            store,
            inbox,
            cfg,
            policy,
            neighbours: HashMap::new(),
            peer_book: None,
            waiters: HashMap::new(),
            workers: Workers::per_core("hermes-crypto"),
            onion,
            couriers: HashMap::new(),
            pending: HashMap::new(),
            courier_dialer: None,
            candidates: None,
            recipients: HashMap::new(),
            peeling: 0,
            taking_due: false,
            due_again: false,
            log: log.new(slog::o!("actor" => "router")),
        }
    }

    fn max_ttl_secs(&self) -> u64 {
        self.cfg.max_ttl.as_secs()
    }

    fn my_address(&self) -> Address {
        self.me.address()
    }

    /// Runs one decision of the policy with the Router's view of the node.
    fn decide<R>(&mut self, f: impl FnOnce(&mut Policy, &mut View<'_>) -> R) -> R {
        let mut view = View {
            store: &self.store,
            linked: !self.neighbours.is_empty(),
            keys: &self.onion.keys,
            me: self.me.address(),
            candidates: &mut self.candidates,
            recipients: &self.recipients,
            log: &self.log,
        };
        f(&mut self.policy, &mut view)
    }

    /// Carries out the policy's actions. A delivery the policy asked to
    /// `hold` is returned: the caller's session waits for it before it
    /// reads on (back-pressure).
    fn apply(
        &mut self,
        actions: Vec<Action>,
        ctx: &mut Context<Self>,
    ) -> Option<ResponseActFuture<Self, ()>> {
        let mut held = None;
        for a in actions {
            match a {
                Action::Flood { body, except, own } => {
                    let sent = self.flood(&LinkFrame::new(body), except);
                    match own {
                        Some((id, attempt)) if attempt > 1 => {
                            slog::info!(self.log, "message retried"; "id" => %id, "attempt" => attempt, "neighbours" => sent)
                        }
                        Some((id, _)) => {
                            slog::info!(self.log, "message sent"; "id" => %id, "neighbours" => sent)
                        }
                        None if sent > 0 => self.bump(Counter::Relayed),
                        None => {}
                    }
                }
                Action::Send { to, body } => self.send_to(to, body),
                Action::SendBack {
                    receipt,
                    upstream,
                    except,
                } => self.send_back(receipt, &upstream, except),
                Action::Onion { next, packet } => self.send_onion_packet(next, packet),
                Action::Reply { block, receipt } => self.reply_over(&block, receipt),
                Action::Deliver {
                    packet,
                    from,
                    reply,
                    hold,
                } => {
                    let fut = self.deliver(packet, from, reply);
                    if hold && held.is_none() {
                        held = Some(fut);
                    } else {
                        ctx.spawn(fut);
                    }
                }
                Action::Wrap {
                    id,
                    attempt,
                    plan,
                    recipient,
                    me,
                } => self.wrap(id, attempt, plan, recipient, me, ctx),
                Action::Settle { id, receipt } => self.settle_own(id, receipt, ctx),
                Action::Failed { id, attempts } => {
                    slog::warn!(self.log, "message failed: time to live ran out"; "id" => %id, "attempts" => attempts);
                    self.store.outbox_failed_later(id);
                    self.notify(&id, false);
                }
                Action::KeepPart {
                    id,
                    index,
                    expires_at,
                    bytes,
                } => {
                    if let Err(e) = self.store.parts_put(&id, index, expires_at, &bytes) {
                        slog::warn!(self.log, "cannot keep a message part"; "id" => %id, "error" => %e);
                    }
                }
                Action::DropParts { id } => {
                    if let Err(e) = self.store.parts_remove(&id) {
                        slog::warn!(self.log, "cannot remove the parts of a message"; "id" => %id, "error" => %e);
                    }
                }
                Action::SaveGuards(bytes) => {
                    if let Err(e) = self.store.guards_save(&bytes) {
                        slog::warn!(self.log, "cannot save the guards"; "error" => %e);
                    }
                }
                Action::OverBudget(peer) => self.report_over_budget(peer),
                Action::Count(c) => self.bump(c),
                Action::Dropped(why) => {
                    // Anyone can send junk: not worth more than a debug line.
                    slog::debug!(self.log, "dropped"; "reason" => why);
                    self.bump(Counter::Dropped);
                }
                Action::Replay { from } => {
                    slog::debug!(self.log, "onion packet dropped: replay"; "from" => ?from);
                    self.bump(Counter::Replays);
                }
                Action::Fault { what, error } => {
                    slog::error!(self.log, "{}", what; "error" => error)
                }
                Action::Note(n) => self.note(n),
            }
        }
        held
    }

    fn note(&self, n: Note) {
        match n {
            Note::PartSent {
                id,
                index,
                parts,
                attempt,
                path,
            } => {
                let path: Vec<String> = path.iter().map(|a| a.to_string()).collect();
                slog::info!(self.log, "onion part sent";
                    "id" => %id, "part" => index, "parts" => parts, "attempt" => attempt,
                    "path" => path.join(" "));
            }
            Note::OnionSent { id, attempt, parts } if attempt > 1 => {
                slog::info!(self.log, "message retried"; "id" => %id, "attempt" => attempt, "parts" => parts)
            }
            Note::OnionSent { id, parts, .. } => {
                slog::info!(self.log, "message sent"; "id" => %id, "parts" => parts)
            }
            Note::Waits { id, why } => {
                slog::info!(self.log, "message waits"; "id" => %id, "why" => why)
            }
        }
    }

    /// Tells the peer's session it broke a budget: it is cut and backed off.
    fn report_over_budget(&mut self, from: Address) {
        let session = self
            .neighbours
            .get(&from)
            .or_else(|| self.couriers.get(&from).map(|(h, _)| h));
        if let Some(h) = session {
            h.session.do_send(super::peer_session::OverBudget {
                what: "limits.new_entries_per_min",
            });
        }
    }

    fn bump(&self, c: Counter) {
        if let Err(e) = self.store.bump(c, 1) {
            slog::warn!(self.log, "cannot count"; "error" => %e);
        }
    }

    /// Sends an encoded frame to every neighbour except `except`.
    fn flood(&self, frame: &LinkFrame, except: Option<Address>) -> usize {
        let bytes: Bytes = match frame.encode() {
            Ok(b) => b.into(),
            Err(e) => {
                slog::error!(self.log, "cannot encode frame"; "error" => %e);
                return 0;
            }
        };
        let mut sent = 0;
        for (addr, handle) in &self.neighbours {
            if Some(*addr) == except {
                continue;
            }
            if handle.send(bytes.clone()) {
                sent += 1;
            } else {
                slog::debug!(self.log, "peer queue full; frame dropped"; "peer" => ?addr);
                self.bump(Counter::Dropped);
            }
        }
        sent
    }

    /// Sends a frame to one neighbour, if its link is up.
    fn send_to(&self, to: Address, body: LinkBody) {
        let Some(h) = self.neighbours.get(&to) else {
            return;
        };
        match LinkFrame::new(body).encode() {
            Ok(bytes) => {
                if !h.send(bytes.into()) {
                    self.bump(Counter::Dropped);
                }
            }
            Err(e) => slog::error!(self.log, "cannot encode frame"; "error" => %e),
        }
    }

    /// Sends a receipt back the way its message came: over the links the
    /// message's first copies came from (`upstream`) that are still up,
    /// else (none is) to every neighbour but `except`. So a receipt costs
    /// one frame per node on the path, not one per link of the network.
    fn send_back(&self, r: Receipt, upstream: &[Address], except: Option<Address>) {
        let frame = LinkFrame::new(LinkBody::Receipt(r));
        let bytes: Bytes = match frame.encode() {
            Ok(b) => b.into(),
            Err(e) => {
                slog::error!(self.log, "cannot encode frame"; "error" => %e);
                return;
            }
        };
        let mut sent = 0;
        for a in upstream {
            if Some(*a) == except {
                continue;
            }
            if let Some(h) = self.neighbours.get(a) {
                if h.send(bytes.clone()) {
                    sent += 1;
                }
            }
        }
        if sent == 0 {
            self.flood(&frame, except);
        }
    }

    /// Sends every outbox entry that is due, and fails the expired ones.
    ///
    /// The store's writer reads the due entries and gives each its next retry
    /// time in one step (one transaction for the whole tick), so no entry is
    /// taken twice and no sending costs a transaction of its own.
    fn send_due(&mut self, ctx: &mut Context<Self>) {
        if self.taking_due {
            // A tick is still being answered; it will pick this up.
            self.due_again = true;
            return;
        }
        self.taking_due = true;
        let now_ms = unix_now_ms();
        let schedule = self
            .policy
            .retry_schedule(!self.neighbours.is_empty(), now_ms);
        let reschedule: Reschedule = Box::new(move |_id, e| schedule.next(e));
        let store = self.store.clone();
        let fut = async move {
            store
                .outbox_take_due(now_ms, SENDS_PER_TICK, reschedule)
                .await
        };
        ctx.spawn(fut.into_actor(self).map(move |due, this, ctx| {
            this.taking_due = false;
            match due {
                Ok(due) => {
                    for (id, entry) in due {
                        let actions = this.decide(|p, v| p.due(id, entry, now_ms, v));
                        this.apply(actions, ctx);
                    }
                }
                Err(e) => slog::error!(this.log, "cannot read the outbox"; "error" => %e),
            }
            if std::mem::take(&mut this.due_again) {
                this.send_due(ctx);
            }
        }));
    }

    fn notify(&mut self, id: &MessageId, delivered: bool) {
        for w in self.waiters.remove(id).unwrap_or_default() {
            let _ = w.send(delivered);
        }
    }

    /// Opens a packet addressed to this node, checks its letter, stores it
    /// with its delivered mark (flushed), then tells the policy, which says
    /// where the receipt goes (`reply`: the onion reply block it came with;
    /// `from`: the link it came over).
    fn deliver(
        &mut self,
        p: FloodPacket,
        from: Option<Address>,
        reply: Option<ReplyBlock>,
    ) -> ResponseActFuture<Self, ()> {
        let identity = self.me.identity.clone();
        let inbox = self.inbox.clone();
        let log = self.log.clone();
        let peer_book = self.peer_book.clone();
        let max_ttl = self.max_ttl_secs();
        let id = p.id;
        let header = Header {
            id: p.id,
            recipient: p.recipient,
            expires_at: p.expires_at,
        };
        let sealed = p.sealed;
        let workers = self.workers.clone();
        let fut = async move {
            let opened = workers
                .run(move || {
                    let accepted = open_packet(&identity, header, &sealed, unix_now_ms(), max_ttl)?;
                    let receipt = Receipt::sign(
                        &identity,
                        id,
                        accepted.letter.expires_at,
                        accepted.letter.receipt_token,
                    );
                    Ok::<_, crate::routing::RejectReason>((accepted, receipt))
                })
                .await;
            let (accepted, receipt) = match opened {
                Ok(Ok(x)) => x,
                Ok(Err(why)) => {
                    // Anyone can send junk: not worth a line each.
                    slog::debug!(log, "message dropped: not accepted"; "id" => %id, "reason" => %why);
                    return Delivery::NotAccepted;
                }
                Err(e) => {
                    slog::error!(log, "opening task failed"; "error" => %e);
                    return Delivery::Failed;
                }
            };
            let letter = accepted.letter;
            if let Some(book) = &peer_book {
                // Bounded: a record the full mailbox cannot take is only lost.
                let _ = book.try_send(LearnedRecord(letter.sender.clone()));
            }
            let msg = InboxMessage {
                id,
                sender: letter.sender.record.address.to_string(),
                sender_ip: letter.sender.record.listen.ip().to_string(),
                sent: letter.sent_ms,
                received: unix_now_ms(),
                text: letter.text,
            };
            match inbox
                .send(Deliver {
                    msg,
                    receipt: receipt.clone(),
                    mark_until: accepted.mark_until,
                })
                .await
            {
                Ok(Ok(new)) => {
                    if new {
                        slog::info!(log, "message delivered"; "id" => %id, "from" => ?letter.sender.record.address);
                    }
                    Delivery::Receipt(receipt)
                }
                Ok(Err(e)) => {
                    slog::error!(log, "cannot store a delivered message"; "id" => %id, "error" => %e);
                    Delivery::Failed
                }
                Err(e) => {
                    slog::error!(log, "inbox unavailable"; "error" => %e);
                    Delivery::Failed
                }
            }
        };
        Box::pin(fut.into_actor(self).map(move |outcome, this, ctx| {
            let actions = this.decide(|p, v| p.delivered(id, outcome, from, reply, v));
            this.apply(actions, ctx);
        }))
    }

    /// Settles one of this node's own messages with its verified receipt:
    /// mark and outbox update in one step of the store's writer, so a crash
    /// leaves the message in flight or settled, never both.
    fn settle_own(&mut self, id: MessageId, r: Receipt, ctx: &mut Context<Self>) {
        let store = self.store.clone();
        let fut = async move { store.settle(id, r, unix_now()).await };
        ctx.spawn(fut.into_actor(self).map(move |settled, this, _| match settled {
            Ok(true) => {
                slog::info!(this.log, "delivery confirmed"; "id" => %id);
                this.notify(&id, true);
            }
            Ok(false) => {}
            Err(e) => {
                slog::error!(this.log, "cannot settle a delivered message"; "id" => %id, "error" => %e)
            }
        }));
    }

    /// Wraps one sending's parts on the worker threads, then sends them.
    fn wrap(
        &mut self,
        id: MessageId,
        attempt: u32,
        plan: Plan,
        recipient: NodeHop,
        me: NodeHop,
        ctx: &mut Context<Self>,
    ) {
        let workers = self.workers.clone();
        let fut = async move {
            workers
                .run(move || plan.build(&Sphinx, &recipient, &me))
                .await
        };
        ctx.spawn(fut.into_actor(self).map(move |built, this, ctx| {
            let built = match built {
                Ok(b) => b,
                Err(e) => {
                    slog::error!(this.log, "wrapping task failed"; "error" => %e);
                    return;
                }
            };
            let actions = this.policy.wrapped(id, attempt, built);
            this.apply(actions, ctx);
        }));
    }
}

/// Peels one packet with this node's packet keys and checks its replay tag
/// in the persistent store before anything else is done with it (on a
/// worker thread). A layer to pass on at a node that does not relay leaves
/// no tag: it is dropped anyway.
fn peel_arrival(onion: &OnionParts, me: &Address, relays: bool, bytes: &[u8], now: u64) -> Arrival {
    let packet = match Packet::from_bytes(bytes) {
        Ok(p) => p,
        Err(e) => return Arrival::Refused(e.to_string()),
    };
    let (epoch, peeled) = match onion.keys.peel(&Sphinx, &packet, now) {
        Ok(x) => x,
        Err(e) => return Arrival::Refused(format!("no packet key opens it: {e}")),
    };
    if !relay::needs_tag(&peeled, relays) {
        return Arrival::Refused("this node does not relay".into());
    }
    match onion
        .replay
        .check_and_insert(epoch, &relay::tag_of(&peeled))
    {
        Ok(TagVerdict::Fresh) => relay::arrival_of(peeled, me),
        Ok(TagVerdict::Replay) => Arrival::Replay,
        Ok(TagVerdict::Full) => Arrival::Refused("replay tags of this key full".into()),
        Err(e) => Arrival::Refused(format!("cannot check the replay tag: {e}")),
    }
}

impl Router {
    /// Sends a packet to `next`: over its neighbour link or courier link if
    /// one is up, else it waits (bounded) while a courier link is dialled.
    fn send_onion_packet(&mut self, next: Address, packet: Packet) {
        let frame = LinkFrame::new(LinkBody::Onion(OnionPacket(packet.into_bytes())));
        let bytes: Bytes = match frame.encode() {
            Ok(b) => b.into(),
            Err(e) => {
                slog::error!(self.log, "cannot encode frame"; "error" => %e);
                return;
            }
        };
        if let Some(h) = self.neighbours.get(&next) {
            if !h.send(bytes) {
                self.bump(Counter::Dropped);
            }
            return;
        }
        if let Some((h, used)) = self.couriers.get_mut(&next) {
            *used = std::time::Instant::now();
            if !h.send(bytes) {
                self.bump(Counter::Dropped);
            }
            return;
        }
        if !self.pending.contains_key(&next) && self.pending.len() >= PENDING_NODES {
            self.bump(Counter::Dropped);
            return;
        }
        let (_, queue) = self
            .pending
            .entry(next)
            .or_insert_with(|| (std::time::Instant::now(), Vec::new()));
        if queue.len() >= PENDING_PER_NODE {
            self.bump(Counter::Dropped);
            return;
        }
        queue.push(bytes);
        if let Some(d) = &self.courier_dialer {
            let _ = d.try_send(super::neighbours::DialCourier { address: next });
        }
    }

    /// Sends a receipt back to the origin over its reply block.
    fn reply_over(&mut self, block: &ReplyBlock, receipt: Receipt) {
        let body = match ReplyPayload::new(receipt).encode() {
            Ok(b) => b,
            Err(e) => {
                slog::error!(self.log, "cannot encode a receipt"; "error" => %e);
                return;
            }
        };
        match crate::crypto::sphinx::OnionFormat::use_reply_block(&Sphinx, block, &body) {
            Ok((first, packet)) => {
                if first == self.my_address() {
                    return;
                }
                self.send_onion_packet(first, packet)
            }
            Err(e) => {
                slog::debug!(self.log, "reply block refused"; "error" => %e);
                self.bump(Counter::Dropped);
            }
        }
    }

    /// An onion packet from a link: admitted by the policy (charged to the
    /// peer that sent it), peeled on a worker thread, then handed back to
    /// the policy.
    fn on_onion(
        &mut self,
        p: OnionPacket,
        from: Option<Address>,
        ctx: &mut Context<Self>,
    ) -> Option<ResponseActFuture<Self, ()>> {
        let mut refused = Vec::new();
        if !self.policy.admit_onion(from, unix_now_ms(), &mut refused) {
            self.apply(refused, ctx);
            return None;
        }
        let onion = self.onion.clone();
        let me = self.my_address();
        let relays = self.cfg.relay;
        let workers = self.workers.clone();
        self.peeling += 1;
        let fut = async move {
            workers
                .run(move || peel_arrival(&onion, &me, relays, &p.0, unix_now()))
                .await
        };
        let fut = fut.into_actor(self).map(move |arrival, this, ctx| {
            this.peeling = this.peeling.saturating_sub(1);
            match arrival {
                Ok(a) => {
                    let now_ms = unix_now_ms();
                    let actions = this.decide(|p, v| p.on_arrival(a, from, now_ms, v));
                    if let Some(held) = this.apply(actions, ctx) {
                        ctx.spawn(held);
                    }
                }
                Err(e) => slog::error!(this.log, "peeling task failed"; "error" => %e),
            }
        });
        if self.peeling > MAX_PEELING {
            // Back-pressure: the session reads on once this one is peeled.
            return Some(Box::pin(fut));
        }
        ctx.spawn(fut);
        None
    }

    /// Closes idle courier links, drops packets that waited too long for
    /// one, and drops expired incomplete messages.
    fn sweep_couriers(&mut self) {
        let now = std::time::Instant::now();
        let idle: Vec<Address> = self
            .couriers
            .iter()
            .filter(|(_, (_, used))| now.duration_since(*used) > COURIER_IDLE)
            .map(|(a, _)| *a)
            .collect();
        for a in idle {
            if let Some((h, _)) = self.couriers.remove(&a) {
                h.session
                    .do_send(super::peer_session::Close { farewell: None });
            }
        }
        let stale: Vec<Address> = self
            .pending
            .iter()
            .filter(|(_, (since, _))| now.duration_since(*since) > PENDING_TIMEOUT)
            .map(|(a, _)| *a)
            .collect();
        for a in stale {
            if let Some((_, q)) = self.pending.remove(&a) {
                slog::debug!(self.log, "onion packets dropped: no link to their next hop"; "next" => ?a, "packets" => q.len());
                if let Err(e) = self.store.bump(Counter::Dropped, q.len() as u64) {
                    slog::warn!(self.log, "cannot count"; "error" => %e);
                }
            }
        }
        for id in self.policy.expire(unix_now()) {
            slog::info!(self.log, "incomplete message dropped: its time to live ran out"; "id" => %id);
            if let Err(e) = self.store.parts_remove(&id) {
                slog::warn!(self.log, "cannot remove expired parts"; "id" => %id, "error" => %e);
            }
        }
    }

    /// Reads back the parts of incomplete messages kept before a restart.
    fn load_parts(&mut self) {
        let now = unix_now();
        let held = match self.store.parts_all() {
            Ok(h) => h,
            Err(e) => {
                slog::warn!(self.log, "cannot read the held message parts"; "error" => %e);
                return;
            }
        };
        let mut n = 0usize;
        for (_, bytes) in held {
            let Ok(part) = Part::decode(&bytes, MAX_PART_BYTES) else {
                continue;
            };
            let id = part.id;
            match self.policy.reload_part(part, now) {
                Reloaded::Held => n += 1,
                Reloaded::Duplicate => {}
                Reloaded::Remove => {
                    let _ = self.store.parts_remove(&id);
                }
            }
        }
        if n > 0 {
            slog::info!(self.log, "message parts held from before the restart"; "parts" => n);
        }
    }
}

impl Actor for Router {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX);
        // A store from before settling was one step may hold messages both
        // marked delivered and in flight: settle them now.
        match self.store.outbox_settle_marked(unix_now()) {
            Ok(0) => {}
            Ok(n) => {
                slog::info!(self.log, "settled delivered messages left in the outbox"; "count" => n)
            }
            Err(e) => slog::error!(self.log, "cannot settle the outbox"; "error" => %e),
        }
        ctx.run_interval(RETRY_TICK, |this, ctx| {
            guard(this, ctx, &this.log.clone(), "router", |this, ctx| {
                this.send_due(ctx)
            });
        });
        ctx.run_interval(COURIER_SWEEP, |this, _ctx| this.sweep_couriers());
        if self.policy.holds_no_parts() {
            self.load_parts();
        }
        match self.store.guards_load() {
            Ok(Some(bytes)) => match Guards::from_bytes(&bytes) {
                Ok(g) => self.policy.set_guards(g, rand::SeedableRng::from_entropy()),
                Err(e) => {
                    slog::warn!(self.log, "stored guards do not decode; choosing new ones"; "error" => %e)
                }
            },
            Ok(None) => {}
            Err(e) => slog::warn!(self.log, "cannot read the guards"; "error" => %e),
        }
        ctx.run_interval(SWEEP_INTERVAL, |this, _ctx| {
            match this.store.drop_sweep(unix_now()) {
                Ok(0) => {}
                Ok(n) => slog::debug!(this.log, "drop list swept"; "removed" => n),
                Err(e) => slog::warn!(this.log, "drop list sweep failed"; "error" => %e),
            }
        });
    }
}

impl Supervised for Router {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        slog::warn!(self.log, "router restarting");
        // Waiters keep their senders; their clients time out or retry.
    }
}

/// Queue a message from the local user.
#[derive(Message)]
#[rtype(result = "Result<Pushed, PushError>")]
pub struct Push {
    pub to: String,
    pub text: String,
}

/// A message on disk in the outbox, and what the user should know about
/// how it will travel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    pub id: MessageId,
    /// Set when fewer relays are known than `routing.hops` (onion mode):
    /// the message goes over a shorter path.
    pub warning: Option<String>,
}

impl Handler<Push> for Router {
    type Result = ResponseActFuture<Self, Result<Pushed, PushError>>;

    fn handle(&mut self, msg: Push, ctx: &mut Context<Self>) -> Self::Result {
        let log = self.log.clone();
        let r = guard(self, ctx, &log, "router", |this, _ctx| {
            if msg.text.is_empty() {
                // Whatever the entry point (client socket, legacy port).
                return Err(PushError::BadInput(
                    "the message is empty: there is nothing to send".into(),
                ));
            }
            if msg.text.len() > MAX_TEXT_BYTES {
                return Err(PushError::BadInput(format!(
                    "message is {} bytes; the limit is {MAX_TEXT_BYTES}",
                    msg.text.len()
                )));
            }
            Ok((
                this.me.clone(),
                this.store.clone(),
                this.cfg.ttl,
                this.workers.clone(),
                this.peer_book.clone(),
                (this.cfg.retry_max, !this.neighbours.is_empty()),
            ))
        });
        let (me, store, ttl, workers, book, (retry_max, linked)) = match r {
            Some(Ok(x)) => x,
            Some(Err(e)) => return Box::pin(async move { Err(e) }.into_actor(self)),
            None => return Box::pin(async { Err(PushError::Restarted) }.into_actor(self)),
        };
        let fut = async move {
            // A probed recipient's record goes to the address book's owner.
            let learn = |rec: &crate::crypto::SignedRecord| {
                if let Some(b) = &book {
                    let _ = b.try_send(LearnedRecord(rec.clone()));
                }
            };
            let recipient = super::names::resolve(&msg.to, &store, &me, &learn, &log).await?;
            let id = MessageId::random();
            let now_ms = unix_now_ms();
            let to = recipient.record.address;
            let expires_at = now_ms / 1000 + ttl.as_secs();
            let letter = Letter {
                version: LETTER_VERSION,
                id,
                recipient: to,
                sender: (*me.record.get()).clone(),
                sent_ms: now_ms,
                expires_at,
                text: msg.text,
                receipt_token: Some(me.identity.receipt_token(&id.0, &to, expires_at)),
            };
            let plain = letter
                .encode()
                .map_err(|e| PushError::BadInput(e.to_string()))?;
            let kem = recipient.record.kem_key;
            let identity: Arc<_> = me.identity.clone();
            let sealed = workers
                .run(move || seal::seal(&identity, &kem, &seal_aad(&id, &to, expires_at), &plain))
                .await
                .map_err(|e| PushError::Seal(e.to_string()))?
                .map_err(|e| PushError::Seal(e.to_string()))?;
            let entry = OutboxEntry {
                recipient: to,
                created_ms: now_ms,
                expires_at,
                attempts: 0,
                next_try_ms: now_ms,
                sealed,
            };
            // Its first sending goes out as soon as it is on disk (below),
            // so it is stored as taken already: with the next try of the
            // retry schedule, as the tick would have stored it. No second
            // trip through the store's writer before the first sending.
            let schedule = RetrySchedule::new(me.address(), retry_max, linked, now_ms);
            let stored = schedule.next(&entry).unwrap_or_else(|| entry.clone());
            // Durability point 1: the id is shown only once this is on disk
            // (one flush for every push and delivery waiting with it).
            store.outbox_add(id, stored).await?;
            Ok::<_, PushError>((id, recipient, entry, now_ms))
        };
        Box::pin(fut.into_actor(self).map(move |res, this, ctx| {
            let (id, recipient, entry, now_ms) = res?;
            let to = recipient.record.address;
            slog::info!(this.log, "message accepted"; "id" => %id, "to" => ?to);
            let mut warning = None;
            if this.cfg.mode == RoutingMode::Onion && to != this.my_address() {
                if this.recipients.len() >= RECIPIENT_RECORDS {
                    this.recipients.clear();
                }
                this.recipients.insert(to, recipient);
                let now = unix_now();
                let short = this.decide(|p, v| p.shortfall(&to, v, now));
                if short > 0 {
                    let hops = this.cfg.hops as usize;
                    let known = hops - short;
                    warning = Some(format!(
                        "only {known} relays known of routing.hops = {hops}: this message goes over a shorter path, so relays learn more about who talks to whom"
                    ));
                }
            }
            let actions = this.decide(|p, v| p.due(id, entry, now_ms, v));
            this.apply(actions, ctx);
            Ok(Pushed { id, warning })
        }))
    }
}

/// A frame from a peer session (or `None`: from this node itself).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Inbound {
    pub from: Option<Address>,
    pub body: LinkBody,
}

impl Handler<Inbound> for Router {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: Inbound, ctx: &mut Context<Self>) -> Self::Result {
        let log = self.log.clone();
        let fut = guard(self, ctx, &log, "router", |this, ctx| {
            let now_ms = unix_now_ms();
            let from = msg.from;
            let actions = match msg.body {
                LinkBody::Packet(p) => this.decide(|pol, v| pol.on_packet(p, from, now_ms, v)),
                LinkBody::Receipt(r) => this.decide(|pol, v| pol.on_receipt(r, from, now_ms, v)),
                LinkBody::Onion(p) => return this.on_onion(p, from, ctx),
                _ => return None,
            };
            this.apply(actions, ctx)
        });
        fut.flatten()
            .unwrap_or_else(|| Box::pin(actix::fut::ready(())))
    }
}

/// A verified record learned outside of links (a letter's sender), for the
/// address book's owner.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LearnedRecord(pub crate::crypto::SignedRecord);

/// Where to send [`LearnedRecord`]s (from the NeighbourManager, at start).
#[derive(Message)]
#[rtype(result = "()")]
pub struct PeerBook(
    pub Recipient<LearnedRecord>,
    pub Recipient<super::neighbours::DialCourier>,
);

impl Handler<PeerBook> for Router {
    type Result = ();
    fn handle(&mut self, msg: PeerBook, _ctx: &mut Context<Self>) {
        self.peer_book = Some(msg.0);
        self.courier_dialer = Some(msg.1);
    }
}

/// Address-book entries the NeighbourManager just saved (from gossip, a
/// link, a failed dial) or removed. A relay candidate whose packet key, relay flag or
/// standing changed makes the Router read its candidates again at once, not
/// at the next [`CANDIDATES_REFRESH`]: a relay that announced a new key
/// (early rotation, with its old key full) is wrapped to with the new one
/// from the next message on, rather than failing until it is avoided.
#[derive(Message)]
#[rtype(result = "()")]
pub struct BookChanged {
    pub saved: Vec<PeerRecord>,
    pub removed: Vec<Address>,
}

impl Handler<BookChanged> for Router {
    type Result = ();
    fn handle(&mut self, msg: BookChanged, _ctx: &mut Context<Self>) {
        let stale = match &self.candidates {
            Some((_, cached)) => candidates_changed(cached, &msg, unix_now()),
            None => false,
        };
        if stale {
            self.candidates = None;
        }
    }
}

/// Whether `change` makes a relay candidate of `cached` differ: one removed,
/// one whose candidate (key, relay flag, standing) is not the cached one, or
/// a new one.
fn candidates_changed(cached: &[Candidate], change: &BookChanged, now: u64) -> bool {
    let known = |a: &Address| cached.iter().find(|c| c.hop.id == *a).copied();
    change.removed.iter().any(|a| known(a).is_some())
        || change
            .saved
            .iter()
            .any(|e| candidate_of(e, now) != known(&e.address()))
}

/// Nodes that just left the NeighbourManager's view of nodes alive nearby
/// (its neighbours and theirs): most likely down, so onion paths avoid them
/// for a while ([`crate::routing::onion::engine::SUSPECT_FOR_SECS`]).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Vanished(pub Vec<Address>);

impl Handler<Vanished> for Router {
    type Result = ();
    fn handle(&mut self, msg: Vanished, _ctx: &mut Context<Self>) {
        let now = unix_now();
        for a in msg.0 {
            self.policy.vanished(&a, now);
        }
    }
}

/// A courier link could not be dialled (from the NeighbourManager): the
/// packets waiting for it are dropped, and the node is avoided as a relay
/// for a while (the origin's messages through it are sent again).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CourierFailed {
    pub address: Address,
}

impl Handler<CourierFailed> for Router {
    type Result = ();
    fn handle(&mut self, msg: CourierFailed, _ctx: &mut Context<Self>) {
        self.policy.unreachable(&msg.address, unix_now());
        if let Some((_, q)) = self.pending.remove(&msg.address) {
            slog::debug!(self.log, "onion packets dropped: their next hop is unreachable"; "next" => ?msg.address, "packets" => q.len());
            if let Err(e) = self.store.bump(Counter::Dropped, q.len() as u64) {
                slog::warn!(self.log, "cannot count"; "error" => %e);
            }
        }
    }
}

/// A courier link is up (from the NeighbourManager): packets waiting for
/// its node go now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CourierUp(pub PeerHandle);

impl Handler<CourierUp> for Router {
    type Result = ();
    fn handle(&mut self, msg: CourierUp, _ctx: &mut Context<Self>) {
        let h = msg.0;
        let address = h.address;
        if let Some((_, q)) = self.pending.remove(&address) {
            for bytes in q {
                if !h.send(bytes) {
                    self.bump(Counter::Dropped);
                }
            }
        }
        if self.couriers.len() >= MAX_COURIERS && !self.couriers.contains_key(&address) {
            let oldest = self
                .couriers
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(a, _)| *a);
            if let Some((old, _)) = oldest.and_then(|a| self.couriers.remove(&a)) {
                old.session
                    .do_send(super::peer_session::Close { farewell: None });
            }
        }
        slog::debug!(self.log, "courier link up"; "peer" => ?address);
        self.couriers
            .insert(address, (h, std::time::Instant::now()));
    }
}

/// A link to a neighbour is up (from the NeighbourManager).
#[derive(Message)]
#[rtype(result = "()")]
pub struct NeighbourUp(pub PeerHandle);

impl Handler<NeighbourUp> for Router {
    type Result = ();
    fn handle(&mut self, msg: NeighbourUp, ctx: &mut Context<Self>) {
        let was_alone = self.neighbours.is_empty();
        self.neighbours.insert(msg.0.address, msg.0);
        if !self.policy.hurry_on_neighbour(was_alone) {
            return;
        }
        // A new path may exist: send what waits now rather than at its backoff.
        let store = self.store.clone();
        let fut = async move { store.outbox_hurry_now(unix_now_ms()).await };
        ctx.spawn(
            fut.into_actor(self)
                .map(|hurried, this, ctx| match hurried {
                    Ok(_) => this.send_due(ctx),
                    Err(e) => slog::warn!(this.log, "cannot read the outbox"; "error" => %e),
                }),
        );
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct NeighbourDown {
    pub address: Address,
    pub session_id: u64,
}

impl Handler<NeighbourDown> for Router {
    type Result = ();
    fn handle(&mut self, msg: NeighbourDown, _ctx: &mut Context<Self>) {
        if self
            .neighbours
            .get(&msg.address)
            .is_some_and(|h| h.session_id == msg.session_id)
        {
            self.neighbours.remove(&msg.address);
            if !self.couriers.contains_key(&msg.address) {
                self.policy.peer_gone(&msg.address);
            }
        }
        if self
            .couriers
            .get(&msg.address)
            .is_some_and(|(h, _)| h.session_id == msg.session_id)
        {
            self.couriers.remove(&msg.address);
            if !self.neighbours.contains_key(&msg.address) {
                self.policy.peer_gone(&msg.address);
            }
        }
    }
}

/// New `[limits]` (a config reload): the furthest expiry accepted and the
/// filter entries one peer may create.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetLimits {
    pub max_ttl: Duration,
    pub new_entries_per_min: u32,
}

impl Handler<SetLimits> for Router {
    type Result = ();
    fn handle(&mut self, msg: SetLimits, _ctx: &mut Context<Self>) {
        self.cfg.max_ttl = msg.max_ttl;
        self.cfg.new_entries_per_min = msg.new_entries_per_min;
        self.policy
            .set_limits(msg.max_ttl.as_secs(), msg.new_entries_per_min);
    }
}

/// Wait until a message's receipt arrives: true if delivered, false if it
/// timed out or failed.
#[derive(Message)]
#[rtype(result = "Result<bool, PushError>")]
pub struct WaitDelivered {
    pub id: MessageId,
    pub timeout: Duration,
}

impl Handler<WaitDelivered> for Router {
    type Result = ResponseFuture<Result<bool, PushError>>;

    fn handle(&mut self, msg: WaitDelivered, _ctx: &mut Context<Self>) -> Self::Result {
        let now = unix_now();
        let delivered = self
            .store
            .drop_get(&DropKey::Delivered(msg.id), now)
            .map(|e| e.is_some());
        let queued = self.store.outbox_get(&msg.id).map(|e| e.is_some());
        match (delivered, queued) {
            (Err(e), _) | (_, Err(e)) => Box::pin(async move { Err(e.into()) }),
            (Ok(true), _) => Box::pin(async { Ok(true) }),
            (Ok(false), Ok(false)) => {
                let id = msg.id;
                Box::pin(async move {
                    Err(PushError::BadInput(format!(
                        "no message {id} in the outbox"
                    )))
                })
            }
            (Ok(false), Ok(true)) => {
                let (tx, rx) = oneshot::channel();
                let waiting = self.waiters.entry(msg.id).or_default();
                // Clients that gave up (timed out) leave closed senders.
                waiting.retain(|w| !w.is_closed());
                waiting.push(tx);
                Box::pin(async move {
                    match tokio::time::timeout(msg.timeout, rx).await {
                        Ok(Ok(delivered)) => Ok(delivered),
                        Ok(Err(_)) => Err(PushError::Restarted),
                        Err(_) => Ok(false),
                    }
                })
            }
        }
    }
}

/// Stop sending one of this node's own messages (`hermes outbox cancel`):
/// it leaves the outbox and its waiters hear "not delivered". True if it
/// was in the outbox.
#[derive(Message)]
#[rtype(result = "Result<bool, StoreError>")]
pub struct CancelOutbox {
    pub id: MessageId,
}

impl Handler<CancelOutbox> for Router {
    type Result = Result<bool, StoreError>;

    fn handle(&mut self, msg: CancelOutbox, _ctx: &mut Context<Self>) -> Self::Result {
        let removed = self.store.outbox_cancel(&msg.id)?;
        if removed {
            slog::info!(self.log, "message cancelled"; "id" => %msg.id);
            self.notify(&msg.id, false);
        }
        Ok(removed)
    }
}

fault_handler!(Router, "router");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::identity::Identity;
    use crate::crypto::AnnouncedKey;

    const NOW: u64 = 1_000_000;

    fn entry(id: &Identity, epoch: Option<u64>, relay: bool, failures: u32) -> PeerRecord {
        let key = epoch.map(|epoch| AnnouncedKey {
            epoch,
            public: [epoch as u8; 32],
            not_before: NOW - 10,
            not_after: NOW + 1000,
        });
        let listen = "127.0.0.9:1".parse().unwrap();
        let rec = SignedRecord::sign_with_key(id, listen, relay, NOW, key);
        PeerRecord {
            failures,
            ..PeerRecord::learned(rec, NOW)
        }
    }

    fn change(saved: Vec<PeerRecord>, removed: Vec<Address>) -> BookChanged {
        BookChanged { saved, removed }
    }

    #[test]
    fn a_book_change_refreshes_the_candidates_only_when_a_candidate_differs() {
        let (x, y) = (Identity::generate(), Identity::generate());
        let x1 = entry(&x, Some(1), true, 0);
        let cached: Vec<Candidate> = candidate_of(&x1, NOW).into_iter().collect();
        assert_eq!(cached.len(), 1);

        // The same record seen again (only last_seen moves): nothing to do.
        let seen_again = PeerRecord {
            last_seen: NOW + 5,
            ..x1.clone()
        };
        assert!(!candidates_changed(
            &cached,
            &change(vec![seen_again], vec![]),
            NOW
        ));
        // A node that is no candidate, before and after: nothing either.
        let y_plain = entry(&y, None, true, 0);
        assert!(!candidates_changed(
            &cached,
            &change(vec![y_plain], vec![]),
            NOW
        ));
        assert!(!candidates_changed(
            &cached,
            &change(vec![], vec![y.address()]),
            NOW
        ));

        // A new packet key, a new relay, a relay that stopped relaying, one
        // the book failed to reach twice, one removed: read them again.
        for (what, c) in [
            (
                "a new key",
                change(vec![entry(&x, Some(2), true, 0)], vec![]),
            ),
            (
                "a new relay",
                change(vec![entry(&y, Some(1), true, 0)], vec![]),
            ),
            (
                "relaying no more",
                change(vec![entry(&x, Some(1), false, 0)], vec![]),
            ),
            (
                "unreachable",
                change(vec![entry(&x, Some(1), true, 2)], vec![]),
            ),
            ("removed", change(vec![], vec![x.address()])),
        ] {
            assert!(candidates_changed(&cached, &c, NOW), "{what}");
        }
    }
}
