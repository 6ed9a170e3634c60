//! Router: originates, forwards and delivers messages, and settles receipts.
//!
//! Flood mode (the seed's design, done properly): the origin seals a message
//! to the recipient and sends it to every neighbour; each node forwards a
//! copy once to every neighbour but the one it came from, with a hop limit.
//! Relays suppress duplicates with a short-lived, bounded, in-memory
//! [`FloodFilter`] keyed on a digest of the sealed bytes, so a relay stores
//! nothing per packet and a forged copy cannot suppress the genuine one. The
//! recipient opens and verifies the letter ([`crate::routing::accept`]), writes
//! it to its inbox with its delivered mark (flushed), then sends a signed
//! receipt back the way the message came (over the first links its copies
//! came from, remembered by the filter); relays pass a receipt on only for
//! a message they passed on, and the origin removes the message from its
//! outbox. Until then the origin
//! resends it, as a new attempt, with exponential backoff up to
//! `routing.retry_max`, until its time to live, across any number of
//! restarts. A late copy of a delivered message is answered with the stored
//! receipt, so an origin that missed the receipt still gets it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use tokio::sync::oneshot;

use super::inbox::{Deliver, Inbox};
use super::peer_session::{LinkIdentity, PeerHandle};
use super::{backoff_delay, fault_handler, guard};
use crate::config::RoutingMode;
use crate::crypto::seal;
use crate::crypto::sphinx::{NodeHop, Packet, Peeled, ReplyBlock, Sphinx};
use crate::crypto::{unix_now, unix_now_ms, Address, SignedRecord};
use crate::routing::accept::{open_packet, Header};
use crate::routing::filter::copy_key;
use crate::routing::onion::engine::{build_part, BuiltPart, Origin, ReplyOutcome};
use crate::routing::onion::fragments::{self, Outcome, Part, Reassembly};
use crate::routing::onion::path::{Candidate, Guards};
use crate::routing::{CopyVerdict, FloodFilter};
use crate::store::replay::TagVerdict;
use crate::store::{Counter, DropKey, OutboxEntry, Reschedule, Store, StoreError};
use crate::wire::client::InboxMessage;
use crate::wire::link::{FloodPacket, LinkBody, LinkFrame, OnionPacket, Receipt, MAX_HOPS};
use crate::wire::message::{seal_aad, Letter, LETTER_VERSION, MAX_TEXT_BYTES};
use crate::wire::onion::{PartPayload, ReplyPayload, MAX_PART_BYTES};
use crate::wire::MessageId;
use crate::workers::Workers;

/// How often the outbox is checked for messages due to be (re)sent.
pub const RETRY_TICK: Duration = Duration::from_millis(250);
/// First retry delay; doubles per attempt up to `routing.retry_max`.
pub const RETRY_MIN: Duration = Duration::from_secs(2);
/// The window over which `limits.new_entries_per_min` is counted.
pub const ENTRY_BUDGET_WINDOW: Duration = Duration::from_secs(60);
/// Most outbox entries sent in one tick, so a large backlog cannot stall the router.
pub const SENDS_PER_TICK: usize = 256;
/// How often expired drop-list entries are swept.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// Deliveries being opened and stored at once; past this a session waits
/// for its delivery before it reads on (back-pressure).
pub const MAX_DELIVERING: usize = 256;
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
/// Reply blocks kept per message while it is being delivered.
pub const REPLY_BLOCKS_WAITING: usize = 4;
/// Incomplete multi-part messages held at a recipient, and their bytes.
pub const MAX_INCOMPLETE: usize = 256;
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

/// How many filter entries one peer created in the current window.
#[derive(Debug, Clone, Copy)]
struct EntryCount {
    window_start_ms: u64,
    count: u32,
}

pub struct Router {
    me: LinkIdentity,
    store: Store,
    inbox: Addr<Inbox>,
    cfg: RouterConfig,
    neighbours: HashMap<Address, PeerHandle>,
    /// Where records learned outside of links go (the NeighbourManager,
    /// which owns the address book; see [`PeerBook`]).
    peer_book: Option<Recipient<LearnedRecord>>,
    waiters: HashMap<MessageId, Vec<oneshot::Sender<bool>>>,
    /// Duplicate suppression; in memory, bounded, short-lived.
    filter: FloodFilter,
    /// Per-neighbour entry budgets (only neighbours: bounded by max_neighbours).
    entries: HashMap<Address, EntryCount>,
    /// Ids being opened, stored and flushed right now, with how many copies
    /// of each: a copy of one of them is not answered from the delivered
    /// mark until its delivery is on disk (a distinct copy is still opened:
    /// the one being opened may be a forgery).
    delivering: HashMap<MessageId, u32>,
    /// Reply blocks of onion copies that came while their message was being
    /// delivered: the receipt goes over each once it is on disk (each is a
    /// different way back; at most [`REPLY_BLOCKS_WAITING`] per message).
    replies_waiting: HashMap<MessageId, Vec<ReplyBlock>>,
    /// Threads for sealing and opening (never the actor's thread).
    workers: Workers,
    /// Packet keys and replay tags (onion packets).
    onion: OnionParts,
    /// The onion origin's policy state (guards, paths, reply blocks).
    origin: Origin,
    /// Multi-part onion messages being rebuilt.
    reassembly: Reassembly,
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

impl Router {
    pub fn new(
        me: LinkIdentity,
        store: Store,
        inbox: Addr<Inbox>,
        cfg: RouterConfig,
        onion: OnionParts,
        log: &slog::Logger,
    ) -> Router {
        let max_ttl = cfg.max_ttl.as_secs();
        Router {
            me,
            store,
            inbox,
            cfg,
            neighbours: HashMap::new(),
            peer_book: None,
            waiters: HashMap::new(),
            filter: FloodFilter::default(),
            entries: HashMap::new(),
            delivering: HashMap::new(),
            replies_waiting: HashMap::new(),
            workers: Workers::per_core("hermes-crypto"),
            onion,
            origin: Origin::new(Guards::new(), rand::SeedableRng::from_entropy()),
            reassembly: Reassembly::new(fragments::Limits {
                max_incomplete: MAX_INCOMPLETE,
                per_sender: MAX_INCOMPLETE,
                // The sealed letter as postcard: its ciphertext and two keys.
                max_message_bytes: crate::wire::message::MAX_SEALED_BYTES + 128,
                max_ttl,
            }),
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

    /// Counts one filter entry created by `from`; false once that peer is
    /// over its budget for the current window (its packets are then dropped
    /// and its link cut).
    fn charge_entry(&mut self, from: Option<Address>, now_ms: u64) -> bool {
        let Some(from) = from else { return true };
        let window = ENTRY_BUDGET_WINDOW.as_millis() as u64;
        let c = self.entries.entry(from).or_insert(EntryCount {
            window_start_ms: now_ms,
            count: 0,
        });
        if now_ms.saturating_sub(c.window_start_ms) >= window {
            *c = EntryCount {
                window_start_ms: now_ms,
                count: 0,
            };
        }
        c.count = c.count.saturating_add(1);
        if c.count <= self.cfg.new_entries_per_min {
            return true;
        }
        if c.count == self.cfg.new_entries_per_min.saturating_add(1) {
            // The session logs the breach once, as for its own budgets.
            self.report_over_budget(from);
        }
        false
    }

    /// Tells the peer's session it broke a budget: it is cut and backed off.
    fn report_over_budget(&mut self, from: Address) {
        if let Some(h) = self.neighbours.get(&from) {
            h.session.do_send(super::peer_session::OverBudget {
                what: "limits.new_entries_per_min",
            });
        }
    }

    fn my_address(&self) -> Address {
        self.me.address()
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
        let me = self.my_address();
        let linked = !self.neighbours.is_empty();
        let retry_max = self.cfg.retry_max;
        let reschedule: Reschedule = Box::new(move |_id, e| {
            let mut e = e.clone();
            if e.expires_at.saturating_mul(1000) <= now_ms {
                // Failed below; left as it is.
                return None;
            }
            if e.recipient == me || !linked {
                // To ourselves (delivered at once), or nobody to send to
                // (a neighbour coming up hurries it).
                e.next_try_ms = now_ms + retry_max.as_millis() as u64;
            } else {
                e.attempts = e.attempts.saturating_add(1);
                e.next_try_ms =
                    now_ms + backoff_delay(RETRY_MIN, retry_max, e.attempts).as_millis() as u64;
            }
            Some(e)
        });
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
                        if entry.expires_at.saturating_mul(1000) <= now_ms {
                            slog::warn!(this.log, "message failed: time to live ran out"; "id" => %id, "attempts" => entry.attempts);
                            this.store.outbox_failed_later(id);
                            this.notify(&id, false);
                            continue;
                        }
                        this.send_entry(id, entry, now_ms, ctx);
                    }
                }
                Err(e) => slog::error!(this.log, "cannot read the outbox"; "error" => %e),
            }
            if std::mem::take(&mut this.due_again) {
                this.send_due(ctx);
            }
        }));
    }

    /// Sends one entry as it was before its retry state was advanced.
    fn send_entry(
        &mut self,
        id: MessageId,
        entry: OutboxEntry,
        now_ms: u64,
        ctx: &mut Context<Self>,
    ) {
        if self.cfg.mode == RoutingMode::Onion && entry.recipient != self.my_address() {
            return self.send_onion(id, entry, ctx);
        }
        let packet = FloodPacket {
            id,
            attempt: entry.attempts,
            hops_left: MAX_HOPS,
            recipient: entry.recipient,
            expires_at: entry.expires_at,
            sealed: entry.sealed,
        };
        if entry.recipient == self.my_address() {
            // A message to ourselves goes straight to delivery.
            if let std::collections::hash_map::Entry::Vacant(e) = self.delivering.entry(id) {
                e.insert(1);
                ctx.spawn(self.deliver(packet, None));
            }
            return;
        }
        if self.neighbours.is_empty() {
            return;
        }
        // Remember our own copy, so echoes of it are not passed on again
        // and the receipt is wanted when it comes back.
        self.filter.on_copy(
            copy_key(&packet, true),
            &packet.id,
            &packet.recipient,
            packet.expires_at,
            packet.hops_left,
            now_ms,
        );
        let sent = self.flood(&LinkFrame::new(LinkBody::Packet(packet)), None);
        let attempt = entry.attempts.saturating_add(1);
        if attempt > 1 {
            self.bump(Counter::Retried);
            slog::info!(self.log, "message retried"; "id" => %id, "attempt" => attempt, "neighbours" => sent);
        } else {
            slog::info!(self.log, "message sent"; "id" => %id, "neighbours" => sent);
        }
    }

    fn notify(&mut self, id: &MessageId, delivered: bool) {
        for w in self.waiters.remove(id).unwrap_or_default() {
            let _ = w.send(delivered);
        }
    }

    fn on_packet(
        &mut self,
        p: FloodPacket,
        from: Option<Address>,
    ) -> Option<ResponseActFuture<Self, ()>> {
        let now_ms = unix_now_ms();
        let now = now_ms / 1000;
        if p.expires_at <= now || p.expires_at > now.saturating_add(self.max_ttl_secs()) {
            slog::debug!(self.log, "packet dropped: expired or expiry too far ahead"; "id" => %p.id);
            self.bump(Counter::Dropped);
            return None;
        }
        if p.recipient == self.my_address() {
            return self.on_packet_for_me(p, from, now_ms);
        }
        if !self.relay() {
            return None;
        }
        let key = copy_key(&p, true);
        match self
            .filter
            .on_copy(key, &p.id, &p.recipient, p.expires_at, p.hops_left, now_ms)
        {
            CopyVerdict::Delivered(r) => {
                // Already delivered: answer a late copy with the receipt.
                self.bump(Counter::Replays);
                self.send_receipt_to(r, from);
                return None;
            }
            CopyVerdict::Duplicate => {
                self.note_upstream(&p, from);
                self.bump(Counter::Dropped);
                return None;
            }
            CopyVerdict::New => {
                if !self.charge_entry(from, now_ms) {
                    self.bump(Counter::Dropped);
                    return None;
                }
            }
            CopyVerdict::MoreHops => {}
        }
        self.note_upstream(&p, from);
        if p.hops_left > 0 {
            let mut fwd = p;
            fwd.hops_left -= 1;
            let id = fwd.id;
            let n = self.flood(&LinkFrame::new(LinkBody::Packet(fwd)), from);
            if n > 0 {
                self.bump(Counter::Relayed);
                slog::debug!(self.log, "packet relayed"; "id" => %id, "to" => n);
            }
        }
        None
    }

    fn relay(&self) -> bool {
        self.cfg.relay
    }

    /// Remembers the link a copy came from, for its receipt's way back.
    fn note_upstream(&mut self, p: &FloodPacket, from: Option<Address>) {
        if let Some(from) = from {
            self.filter
                .note_upstream(&p.id, &p.recipient, p.expires_at, from);
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

    /// A packet addressed to this node: answered from the delivered mark if
    /// it was delivered before, else opened once (whatever its attempt).
    fn on_packet_for_me(
        &mut self,
        p: FloodPacket,
        from: Option<Address>,
        now_ms: u64,
    ) -> Option<ResponseActFuture<Self, ()>> {
        let opening = self.delivering.contains_key(&p.id);
        if self.store.write_failure().is_some() {
            // After a failed write no mark can be trusted to be on disk (a
            // delivery that could not be taken back may still show one):
            // answer nothing until a restart has shown what the disk holds.
            // The sender keeps retrying.
            return None;
        }
        // While a copy of it is being delivered, its mark may not be on disk
        // yet: no receipt before it is.
        let mark = if opening {
            Ok(None)
        } else {
            self.store
                .drop_get(&DropKey::Delivered(p.id), now_ms / 1000)
        };
        match mark {
            Ok(Some(done)) => {
                self.bump(Counter::Replays);
                if let Some(r) = done.receipt {
                    self.send_receipt_to(r, from);
                }
                return None;
            }
            Ok(None) => {}
            Err(e) => {
                slog::error!(self.log, "cannot read the drop list"; "error" => %e);
                return None;
            }
        }
        // Open each distinct sealed message once: the key leaves out the
        // attempt and the hops, and covers every sealed byte, so a forged
        // copy never stands in for the genuine one.
        let key = copy_key(&p, false);
        match self
            .filter
            .on_copy(key, &p.id, &p.recipient, p.expires_at, u8::MAX, now_ms)
        {
            CopyVerdict::New => {}
            _ => return None,
        }
        if !self.charge_entry(from, now_ms) {
            self.bump(Counter::Dropped);
            return None;
        }
        *self.delivering.entry(p.id).or_insert(0) += 1;
        if self.delivering.len() > MAX_DELIVERING {
            // Back-pressure: the session reads on once this one is stored.
            return Some(self.deliver(p, from));
        }
        // Deliveries run side by side, so the store's writer can put many
        // in one flush; the session reads on at once.
        Some(Box::pin(actix::fut::ready(()).map(
            move |(), this: &mut Self, ctx| {
                ctx.spawn(this.deliver(p, from));
            },
        )))
    }

    fn send_receipt_to(&self, r: Receipt, to: Option<Address>) {
        let Some(h) = to.and_then(|a| self.neighbours.get(&a)) else {
            return;
        };
        if let Ok(bytes) = LinkFrame::new(LinkBody::Receipt(r)).encode() {
            h.send(bytes.into());
        }
    }

    /// Opens a packet addressed to this node, checks its letter, stores it
    /// with its delivered mark (flushed), then sends the receipt back over
    /// the link the packet came from (`from`).
    fn deliver(&mut self, p: FloodPacket, from: Option<Address>) -> ResponseActFuture<Self, ()> {
        self.deliver_back(p, from, None)
    }

    /// [`Router::deliver`], the receipt going back over `reply` (an onion
    /// reply block) if given, else over the link the packet came from.
    fn deliver_back(
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
                    let receipt = Receipt::sign(&identity, id, accepted.letter.expires_at);
                    Ok::<_, crate::routing::RejectReason>((accepted, receipt))
                })
                .await;
            let (accepted, receipt) = match opened {
                Ok(Ok(x)) => x,
                Ok(Err(why)) => {
                    // Anyone can send junk: not worth a line each.
                    slog::debug!(log, "message dropped: not accepted"; "id" => %id, "reason" => %why);
                    return Err(());
                }
                Err(e) => {
                    slog::error!(log, "opening task failed"; "error" => %e);
                    return Ok(None);
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
                    Ok(Some(receipt))
                }
                Ok(Err(e)) => {
                    slog::error!(log, "cannot store a delivered message"; "id" => %id, "error" => %e);
                    Ok(None)
                }
                Err(e) => {
                    slog::error!(log, "inbox unavailable"; "error" => %e);
                    Ok(None)
                }
            }
        };
        Box::pin(fut.into_actor(self).map(move |receipt, this, ctx| {
            if let Some(n) = this.delivering.get_mut(&id) {
                *n -= 1;
                if *n == 0 {
                    this.delivering.remove(&id);
                }
            }
            let waiting = match (&receipt, this.delivering.contains_key(&id)) {
                (Ok(Some(_)), _) | (_, false) => {
                    this.replies_waiting.remove(&id).unwrap_or_default()
                }
                _ => Vec::new(),
            };
            let receipt = match receipt {
                Ok(Some(r)) => r,
                Ok(None) => return,
                Err(()) => return this.bump(Counter::Dropped),
            };
            for block in &waiting {
                this.reply_over(block, receipt.clone());
            }
            // Our own message to ourselves is delivered now.
            if from.is_none() && this.in_outbox(&id) {
                this.settle_own(id, receipt, ctx);
                return;
            }
            if let Some(block) = reply {
                return this.reply_over(&block, receipt);
            }
            let upstream: Vec<Address> = from.into_iter().collect();
            this.send_back(receipt, &upstream, None);
        }))
    }

    /// Whether an id is in this node's outbox.
    fn in_outbox(&self, id: &MessageId) -> bool {
        self.store.outbox_get(id).ok().flatten().is_some()
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

    fn on_receipt(&mut self, mut r: Receipt, from: Option<Address>, ctx: &mut Context<Self>) {
        let now_ms = unix_now_ms();
        let now = now_ms / 1000;
        if r.expires_at <= now || r.expires_at > now.saturating_add(self.max_ttl_secs()) {
            self.bump(Counter::Dropped);
            return;
        }
        // Ours: a message in the outbox for exactly this recipient and expiry.
        let ours = match self.store.outbox_get(&r.id) {
            Ok(Some(out)) => {
                (out.recipient == r.recipient && out.expires_at == r.expires_at).then_some(out)
            }
            Ok(None) => None,
            Err(e) => {
                slog::error!(self.log, "cannot read the outbox"; "error" => %e);
                return;
            }
        };
        // Receipts pass only for messages passed on, once; the cheap check
        // first, the signature after.
        let wanted = self.filter.wants_receipt(&r, now_ms);
        if !wanted && ours.is_none() {
            return;
        }
        if !r.verify() {
            slog::debug!(self.log, "receipt dropped: bad signature"; "id" => %r.id, "from" => ?from);
            self.bump(Counter::Dropped);
            return;
        }
        self.filter.add_receipt(r.clone());
        if ours.is_some() {
            self.settle_own(r.id, r.clone(), ctx);
        }
        if wanted && r.hops_left > 0 {
            r.hops_left -= 1;
            let upstream = self.filter.upstreams(&r);
            self.send_back(r, &upstream, from);
        }
    }
}

/// What peeling one onion packet came to (on a worker thread).
enum Arrival {
    Forward {
        next: Address,
        packet: Packet,
    },
    Deliver {
        part: Part,
        reply: ReplyBlock,
    },
    Reply {
        outcome: (
            crate::crypto::sphinx::ReplyId,
            crate::crypto::sphinx::SealedReply,
        ),
    },
    Replay,
    Refused(String),
}

/// Peels one packet with this node's packet keys and checks its replay tag
/// in the persistent store before anything else is done with it.
fn peel_arrival(onion: &OnionParts, me: &Address, bytes: &[u8], now: u64) -> Arrival {
    let packet = match Packet::from_bytes(bytes) {
        Ok(p) => p,
        Err(e) => return Arrival::Refused(e.to_string()),
    };
    let (epoch, peeled) = match onion.keys.peel(&Sphinx, &packet, now) {
        Ok(x) => x,
        Err(e) => return Arrival::Refused(format!("no packet key opens it: {e}")),
    };
    let tag = match &peeled {
        Peeled::Forward { replay_tag, .. }
        | Peeled::Deliver { replay_tag, .. }
        | Peeled::Reply { replay_tag, .. } => replay_tag.0,
    };
    match onion.replay.check_and_insert(epoch, &tag) {
        Ok(TagVerdict::Fresh) => {}
        Ok(TagVerdict::Replay) => return Arrival::Replay,
        Ok(TagVerdict::Full) => return Arrival::Refused("replay tags of this key full".into()),
        Err(e) => return Arrival::Refused(format!("cannot check the replay tag: {e}")),
    }
    match peeled {
        Peeled::Forward { next, packet, .. } => Arrival::Forward { next, packet },
        Peeled::Deliver {
            destination,
            payload,
            ..
        } => {
            if destination != *me {
                return Arrival::Refused("delivered to another node".into());
            }
            let p = match PartPayload::decode(&payload) {
                Ok(p) => p,
                Err(e) => return Arrival::Refused(format!("payload: {e}")),
            };
            let reply = match ReplyBlock::from_bytes(&p.reply) {
                Ok(b) => b,
                Err(e) => return Arrival::Refused(format!("reply block: {e}")),
            };
            match Part::decode(&p.part, MAX_PART_BYTES) {
                Ok(part) => Arrival::Deliver { part, reply },
                Err(e) => Arrival::Refused(format!("part: {e}")),
            }
        }
        Peeled::Reply {
            destination,
            reply_id,
            sealed,
            ..
        } => {
            if destination != *me {
                return Arrival::Refused("a reply for another node".into());
            }
            Arrival::Reply {
                outcome: (reply_id, sealed),
            }
        }
    }
}

impl Router {
    /// This node as the last hop of a reply block.
    fn my_hop(&self, now: u64) -> Option<NodeHop> {
        self.onion.keys.announced(now).map(|k| NodeHop {
            id: self.my_address(),
            key: k.public,
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

    /// Relays known from the address book with a usable packet key (read
    /// again every [`CANDIDATES_REFRESH`]).
    fn candidates(&mut self, now: u64) -> Vec<Candidate> {
        if let Some((at, c)) = &self.candidates {
            if at.elapsed() < CANDIDATES_REFRESH {
                return c.clone();
            }
        }
        let c: Vec<Candidate> = match self.store.peers_all() {
            Ok(all) => all
                .iter()
                // Not a node the book failed to reach twice in a row.
                .filter(|e| e.failures < 2)
                .filter_map(|e| {
                    Self::hop_of(&e.record, now).map(|hop| Candidate {
                        hop,
                        relay: e.record.record.relay,
                    })
                })
                .collect(),
            Err(e) => {
                slog::warn!(self.log, "cannot read the address book"; "error" => %e);
                Vec::new()
            }
        };
        self.candidates = Some((std::time::Instant::now(), c.clone()));
        c
    }

    /// The freshest record known for `address`: from push time or the book.
    fn record_of(&self, address: &Address) -> Option<SignedRecord> {
        let booked = self.store.peer_get(address).ok().flatten();
        match (self.recipients.get(address), booked) {
            (Some(a), Some(b)) => Some(if a.record.time >= b.record.time {
                a.clone()
            } else {
                b
            }),
            (Some(a), None) => Some(a.clone()),
            (None, b) => b,
        }
    }

    /// How many relays this node is short of `routing.hops` for `to`.
    fn shortfall_for(&mut self, to: &Address) -> usize {
        let now = unix_now();
        let cands = self.candidates(now);
        Origin::shortfall(&self.my_address(), to, &cands, self.cfg.hops as usize)
    }

    /// Sends one of this node's messages as onion packets: every part on a
    /// fresh path, with its own reply block.
    fn send_onion(&mut self, id: MessageId, entry: OutboxEntry, ctx: &mut Context<Self>) {
        let now = unix_now();
        let me = self.my_address();
        let Some(recipient) = self
            .record_of(&entry.recipient)
            .and_then(|r| Self::hop_of(&r, now))
        else {
            slog::info!(self.log, "message waits: no current packet key known for its recipient"; "id" => %id);
            return;
        };
        let Some(me_hop) = self.my_hop(now) else {
            slog::error!(self.log, "no current packet key of this node"; "id" => %id);
            return;
        };
        let letter = match postcard::to_stdvec(&entry.sealed) {
            Ok(b) => b,
            Err(e) => {
                slog::error!(self.log, "cannot encode a sealed letter"; "id" => %id, "error" => %e);
                return;
            }
        };
        let cands = self.candidates(now);
        let plan = match self.origin.plan(
            &me,
            &entry.recipient,
            id,
            entry.expires_at,
            &letter,
            &cands,
            self.cfg.hops as usize,
            now,
            entry.attempts > 0,
        ) {
            Ok(p) => p,
            Err(e) => {
                slog::error!(self.log, "cannot split a message into packets"; "id" => %id, "error" => %e);
                return;
            }
        };
        if self.origin.take_guards_changed() {
            if let Ok(bytes) = self.origin.guards().to_bytes() {
                if let Err(e) = self.store.guards_save(&bytes) {
                    slog::warn!(self.log, "cannot save the guards"; "error" => %e);
                }
            }
        }
        let attempt = entry.attempts.saturating_add(1);
        let parts = plan.parts.len();
        let workers = self.workers.clone();
        let fut = async move {
            workers
                .run(move || {
                    plan.parts
                        .iter()
                        .map(|p| build_part(&Sphinx, p, &recipient, &me_hop))
                        .collect::<Vec<_>>()
                })
                .await
        };
        ctx.spawn(fut.into_actor(self).map(move |built, this, _ctx| {
            let built = match built {
                Ok(b) => b,
                Err(e) => {
                    slog::error!(this.log, "wrapping task failed"; "error" => %e);
                    return;
                }
            };
            for b in built {
                match b {
                    Ok(b) => this.send_part(id, attempt, parts, b),
                    Err(e) => {
                        slog::error!(this.log, "cannot wrap a packet"; "id" => %id, "error" => %e)
                    }
                }
            }
            if attempt > 1 {
                this.bump(Counter::Retried);
                slog::info!(this.log, "message retried"; "id" => %id, "attempt" => attempt, "parts" => parts);
            } else {
                slog::info!(this.log, "message sent"; "id" => %id, "parts" => parts);
            }
        }));
    }

    fn send_part(&mut self, id: MessageId, attempt: u32, parts: usize, b: BuiltPart) {
        let path: Vec<String> = b.path.iter().map(|a| a.to_string()).collect();
        slog::info!(self.log, "onion part sent";
            "id" => %id, "part" => b.index, "parts" => parts, "attempt" => attempt,
            "path" => path.join(" "));
        self.origin.file_reply(b.recovery, id);
        self.send_onion_packet(b.first, b.packet);
    }

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

    /// An onion packet from a link: peeled on a worker thread, then passed
    /// on, delivered, or settled.
    fn on_onion(
        &mut self,
        p: OnionPacket,
        from: Option<Address>,
    ) -> Option<ResponseActFuture<Self, ()>> {
        // Every packet that peels leaves a replay tag on disk: charged to
        // the peer that sent it, as flood mode charges each new copy.
        if !self.charge_entry(from, unix_now_ms()) {
            self.bump(Counter::Dropped);
            return None;
        }
        let onion = self.onion.clone();
        let me = self.my_address();
        let workers = self.workers.clone();
        self.peeling += 1;
        let fut = async move {
            workers
                .run(move || peel_arrival(&onion, &me, &p.0, unix_now()))
                .await
        };
        let fut = fut.into_actor(self).map(move |arrival, this, ctx| {
            this.peeling = this.peeling.saturating_sub(1);
            match arrival {
                Ok(a) => this.on_arrival(a, from, ctx),
                Err(e) => slog::error!(this.log, "peeling task failed"; "error" => %e),
            }
        });
        if self.peeling > MAX_PEELING {
            // Back-pressure: the session reads on once this one is peeled.
            return Some(Box::pin(fut));
        }
        Some(Box::pin(actix::fut::ready(()).map(
            move |(), _this: &mut Self, ctx| {
                ctx.spawn(fut);
            },
        )))
    }

    fn on_arrival(&mut self, a: Arrival, from: Option<Address>, ctx: &mut Context<Self>) {
        match a {
            Arrival::Forward { next, packet } => {
                if !self.relay() {
                    slog::debug!(self.log, "onion packet dropped: this node does not relay");
                    return self.bump(Counter::Dropped);
                }
                if Some(next) == from || next == self.my_address() {
                    return self.bump(Counter::Dropped);
                }
                self.bump(Counter::Relayed);
                self.send_onion_packet(next, packet);
            }
            Arrival::Deliver { part, reply } => self.on_part(part, reply, from, ctx),
            Arrival::Reply {
                outcome: (reply_id, sealed),
            } => match self.origin.open_reply(&reply_id, &sealed) {
                ReplyOutcome::Receipt(r) => {
                    // Its paths worked (the receipt is checked next).
                    self.origin.delivered(&r.id);
                    self.on_receipt(r, None, ctx)
                }
                ReplyOutcome::Unknown => {
                    slog::debug!(self.log, "reply for no outstanding block");
                }
                ReplyOutcome::Bad => self.bump(Counter::Dropped),
            },
            Arrival::Replay => {
                slog::debug!(self.log, "onion packet dropped: replay"; "from" => ?from);
                self.bump(Counter::Replays);
            }
            Arrival::Refused(why) => {
                slog::debug!(self.log, "onion packet dropped"; "reason" => why, "from" => ?from);
                self.bump(Counter::Dropped);
            }
        }
    }

    /// A part of a message to this node.
    fn on_part(
        &mut self,
        part: Part,
        reply: ReplyBlock,
        from: Option<Address>,
        ctx: &mut Context<Self>,
    ) {
        let now_ms = unix_now_ms();
        let now = now_ms / 1000;
        if part.expires_at <= now || part.expires_at > now.saturating_add(self.max_ttl_secs()) {
            return self.bump(Counter::Dropped);
        }
        let id = part.id;
        if self.store.write_failure().is_some() {
            // As for flood packets: no answer until a restart.
            return;
        }
        if self.delivering.contains_key(&id) {
            // No answer until the mark is on disk; then over this copy's
            // block too.
            let waiting = self.replies_waiting.entry(id).or_default();
            if waiting.len() < REPLY_BLOCKS_WAITING {
                waiting.push(reply);
            }
            return;
        }
        match self.store.drop_get(&DropKey::Delivered(id), now) {
            Ok(Some(done)) => {
                // Delivered before: answer over this copy's reply block.
                self.bump(Counter::Replays);
                if let Some(r) = done.receipt {
                    self.reply_over(&reply, r);
                }
                return;
            }
            Ok(None) => {}
            Err(e) => {
                slog::error!(self.log, "cannot read the drop list"; "error" => %e);
                return;
            }
        }
        if !self.charge_entry(from, now_ms) {
            return self.bump(Counter::Dropped);
        }
        let expires_at = part.expires_at;
        let (index, count) = (part.index, part.count);
        let encoded = (count > 1).then(|| part.encode());
        let letter = match self.reassembly.insert([0; 32], part, now) {
            Outcome::Complete(l) => {
                if count > 1 {
                    if let Err(e) = self.store.parts_remove(&id) {
                        slog::warn!(self.log, "cannot remove the parts of a rebuilt message"; "id" => %id, "error" => %e);
                    }
                }
                l
            }
            Outcome::Stored { .. } => {
                // Kept on disk too, so a restart does not lose it.
                if let Some(bytes) = encoded {
                    if let Err(e) = self.store.parts_put(&id, index, expires_at, &bytes) {
                        slog::warn!(self.log, "cannot keep a message part"; "id" => %id, "error" => %e);
                    }
                }
                return;
            }
            Outcome::Duplicate => return,
            Outcome::Refused(why) => {
                slog::debug!(self.log, "part refused"; "id" => %id, "why" => ?why);
                return self.bump(Counter::Dropped);
            }
        };
        let sealed: seal::Sealed = match postcard::from_bytes(&letter) {
            Ok(s) => s,
            Err(_) => return self.bump(Counter::Dropped),
        };
        let p = FloodPacket {
            id,
            attempt: 0,
            hops_left: 0,
            recipient: self.my_address(),
            expires_at,
            sealed,
        };
        *self.delivering.entry(id).or_insert(0) += 1;
        ctx.spawn(self.deliver_back(p, from, Some(reply)));
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
        for (_, id) in self.reassembly.expire(unix_now()) {
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
            match self.reassembly.insert([0; 32], part, now) {
                Outcome::Stored { .. } => n += 1,
                Outcome::Duplicate => {}
                Outcome::Complete(_) | Outcome::Refused(_) => {
                    // Complete only if a set was kept whole by mistake, or
                    // expired meanwhile: the origin sends it again.
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
        if self.reassembly.is_empty() {
            self.load_parts();
        }
        match self.store.guards_load() {
            Ok(Some(bytes)) => match Guards::from_bytes(&bytes) {
                Ok(g) => self.origin = Origin::new(g, rand::SeedableRng::from_entropy()),
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
            ))
        });
        let (me, store, ttl, workers, book) = match r {
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
            let recipient = super::names::resolve(&msg.to, &store, &me, &learn).await?;
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
            // Durability point 1: the id is shown only once this is on disk
            // (one flush for every push and delivery waiting with it).
            store.outbox_add(id, entry).await?;
            Ok::<_, PushError>((id, recipient))
        };
        Box::pin(fut.into_actor(self).map(move |res, this, ctx| {
            let (id, recipient) = res?;
            let to = recipient.record.address;
            slog::info!(this.log, "message accepted"; "id" => %id, "to" => ?to);
            let mut warning = None;
            if this.cfg.mode == RoutingMode::Onion && to != this.my_address() {
                if this.recipients.len() >= RECIPIENT_RECORDS {
                    this.recipients.clear();
                }
                this.recipients.insert(to, recipient);
                let short = this.shortfall_for(&to);
                if short > 0 {
                    let hops = this.cfg.hops as usize;
                    let known = hops - short;
                    warning = Some(format!(
                        "only {known} relays known of routing.hops = {hops}: this message goes over a shorter path, so relays learn more about who talks to whom"
                    ));
                }
            }
            this.send_due(ctx);
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
        let fut = guard(self, ctx, &log, "router", |this, ctx| match msg.body {
            LinkBody::Packet(p) => this.on_packet(p, msg.from),
            LinkBody::Receipt(r) => {
                this.on_receipt(r, msg.from, ctx);
                None
            }
            LinkBody::Onion(p) => this.on_onion(p, msg.from),
            _ => None,
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
            self.origin.vanished(&a, now);
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
        self.origin.unreachable(&msg.address, unix_now());
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
        if self.cfg.mode == RoutingMode::Onion && !was_alone {
            // Onion paths do not follow the links: one more neighbour makes
            // no new path (hurrying here would spend the retries of every
            // waiting message on each link of a churning overlay).
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
            self.entries.remove(&msg.address);
        }
        if self
            .couriers
            .get(&msg.address)
            .is_some_and(|(h, _)| h.session_id == msg.session_id)
        {
            self.couriers.remove(&msg.address);
            if !self.neighbours.contains_key(&msg.address) {
                self.entries.remove(&msg.address);
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
