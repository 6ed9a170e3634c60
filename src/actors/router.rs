//! Router: originates, forwards and delivers messages, and settles receipts.
//!
//! Flood mode (the seed's design, done properly): the origin seals a message
//! to the recipient and sends it to every neighbour; each node forwards a
//! copy once to every neighbour but the one it came from, with a hop limit;
//! the drop list kills duplicates. The recipient writes the message to its
//! inbox (flushed), then floods a signed receipt; every node that sees a valid
//! receipt marks the id delivered and stops forwarding it, and the origin
//! removes the message from its outbox. Until then the origin resends it,
//! as a new attempt, with exponential backoff, up to its time to live, across
//! any number of restarts. A late copy of a delivered message is answered with
//! the stored receipt, so an origin that missed the receipt still gets it.

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
use crate::crypto::seal::{self, Sealed};
use crate::crypto::{unix_now, unix_now_ms, Address};
use crate::store::{Counter, DropEntry, DropKey, OutboxEntry, Store, StoreError};
use crate::wire::client::InboxMessage;
use crate::wire::link::{FloodPacket, LinkBody, LinkFrame, Receipt, MAX_HOPS};
use crate::wire::message::{seal_aad, Letter, LETTER_VERSION, MAX_TEXT_BYTES};
use crate::wire::MessageId;

/// How often the outbox is checked for messages due to be (re)sent.
pub const RETRY_TICK: Duration = Duration::from_millis(250);
/// First retry delay; doubles per attempt up to [`RETRY_MAX`].
pub const RETRY_MIN: Duration = Duration::from_secs(2);
pub const RETRY_MAX: Duration = Duration::from_secs(60);
/// Most outbox entries sent in one tick, so a large backlog cannot stall the router.
pub const SENDS_PER_TICK: usize = 256;
/// How often expired drop-list entries are swept.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// A packet whose expiry is further ahead than this is refused: it would
/// pin drop-list entries for too long.
pub const MAX_EXPIRY_AHEAD_SECS: u64 = 31 * 24 * 3600;
/// Router mailbox: sessions wait (back-pressure) when it is full.
pub const MAILBOX: usize = 256;

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

pub struct Router {
    me: LinkIdentity,
    store: Store,
    inbox: Addr<Inbox>,
    ttl: Duration,
    relay: bool,
    neighbours: HashMap<Address, PeerHandle>,
    waiters: HashMap<MessageId, Vec<oneshot::Sender<bool>>>,
    log: slog::Logger,
}

impl Router {
    pub fn new(
        me: LinkIdentity,
        store: Store,
        inbox: Addr<Inbox>,
        ttl: Duration,
        relay: bool,
        log: &slog::Logger,
    ) -> Router {
        Router {
            me,
            store,
            inbox,
            ttl,
            relay,
            neighbours: HashMap::new(),
            waiters: HashMap::new(),
            log: log.new(slog::o!("actor" => "router")),
        }
    }

    fn my_address(&self) -> Address {
        self.me.record.record.address
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
    fn send_due(&mut self, ctx: &mut Context<Self>) {
        let now_ms = unix_now_ms();
        let due = match self.store.outbox_due(now_ms, SENDS_PER_TICK) {
            Ok(d) => d,
            Err(e) => {
                slog::error!(self.log, "cannot read the outbox"; "error" => %e);
                return;
            }
        };
        for (id, entry) in due {
            if entry.expires_at.saturating_mul(1000) <= now_ms {
                slog::warn!(self.log, "message failed: time to live ran out"; "id" => %id, "attempts" => entry.attempts);
                if let Err(e) = self.store.outbox_failed(&id) {
                    slog::error!(self.log, "cannot update the outbox"; "error" => %e);
                }
                self.notify(&id, false);
                continue;
            }
            self.send_entry(id, entry, now_ms, ctx);
        }
    }

    fn send_entry(
        &mut self,
        id: MessageId,
        mut entry: OutboxEntry,
        now_ms: u64,
        ctx: &mut Context<Self>,
    ) {
        let packet = FloodPacket {
            id,
            attempt: entry.attempts,
            hops_left: MAX_HOPS,
            recipient: entry.recipient,
            expires_at: entry.expires_at,
            sealed: entry.sealed.clone(),
        };
        if entry.recipient == self.my_address() {
            // A message to ourselves goes straight to delivery.
            entry.next_try_ms = now_ms + RETRY_MAX.as_millis() as u64;
            self.save_entry(&id, &entry);
            ctx.spawn(self.deliver(packet));
            return;
        }
        if self.neighbours.is_empty() {
            // Nobody to send to: wait; a neighbour coming up hurries it.
            entry.next_try_ms = now_ms + RETRY_MAX.as_millis() as u64;
            self.save_entry(&id, &entry);
            return;
        }
        let seen = DropKey::Seen {
            id,
            attempt: entry.attempts,
        };
        let mark = DropEntry {
            expires_at: entry.expires_at,
            receipt: None,
        };
        if let Err(e) = self.store.drop_insert_new(&seen, &mark, unix_now()) {
            slog::warn!(self.log, "cannot update the drop list"; "error" => %e);
        }
        let sent = self.flood(&LinkFrame::new(LinkBody::Packet(packet)), None);
        entry.attempts = entry.attempts.saturating_add(1);
        entry.next_try_ms =
            now_ms + backoff_delay(RETRY_MIN, RETRY_MAX, entry.attempts).as_millis() as u64;
        if entry.attempts > 1 {
            self.bump(Counter::Retried);
            slog::info!(self.log, "message retried"; "id" => %id, "attempt" => entry.attempts, "neighbours" => sent);
        } else {
            slog::info!(self.log, "message sent"; "id" => %id, "neighbours" => sent);
        }
        self.save_entry(&id, &entry);
    }

    fn save_entry(&self, id: &MessageId, entry: &OutboxEntry) {
        // Only retry state changes here; losing it to a crash means an
        // earlier retry, never a lost message, so no flush.
        if let Err(e) = self.store.outbox_put(id, entry) {
            slog::error!(self.log, "cannot update the outbox"; "error" => %e);
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
        let now = unix_now();
        if p.expires_at <= now || p.expires_at > now + MAX_EXPIRY_AHEAD_SECS {
            slog::debug!(self.log, "packet dropped: expired or expiry too far ahead"; "id" => %p.id);
            self.bump(Counter::Dropped);
            return None;
        }
        match self.store.drop_get(&DropKey::Delivered(p.id), now) {
            Ok(Some(done)) => {
                // Already delivered: answer a late copy with the receipt.
                self.bump(Counter::Replays);
                if let (Some(r), Some(from)) = (done.receipt, from) {
                    if let Some(h) = self.neighbours.get(&from) {
                        if let Ok(bytes) = LinkFrame::new(LinkBody::Receipt(r)).encode() {
                            h.send(bytes.into());
                        }
                    }
                }
                return None;
            }
            Ok(None) => {}
            Err(e) => {
                slog::error!(self.log, "cannot read the drop list"; "error" => %e);
                return None;
            }
        }
        let seen = DropKey::Seen {
            id: p.id,
            attempt: p.attempt,
        };
        match self.store.drop_insert_new(
            &seen,
            &DropEntry {
                expires_at: p.expires_at,
                receipt: None,
            },
            now,
        ) {
            Ok(true) => {}
            Ok(false) => {
                self.bump(Counter::Dropped);
                return None;
            }
            Err(e) => {
                slog::error!(self.log, "cannot update the drop list"; "error" => %e);
                return None;
            }
        }
        if p.recipient == self.my_address() {
            return Some(self.deliver(p));
        }
        if self.relay && p.hops_left > 0 {
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

    /// Opens a packet addressed to this node, stores it (flushed), then
    /// floods the receipt.
    fn deliver(&mut self, p: FloodPacket) -> ResponseActFuture<Self, ()> {
        let identity = self.me.identity.clone();
        let me = self.my_address();
        let inbox = self.inbox.clone();
        let store = self.store.clone();
        let log = self.log.clone();
        let id = p.id;
        let expires_at = p.expires_at;
        let sealed = p.sealed;
        let fut = async move {
            let opened = actix_rt::task::spawn_blocking(move || {
                let plain = seal::open(&identity, &sealed, &seal_aad(&id, &me))
                    .map_err(|e| e.to_string())?;
                let letter = Letter::decode(&plain).map_err(|e| e.to_string())?;
                check_letter(&letter, &sealed, id)?;
                let receipt = Receipt::sign(&identity, id, expires_at);
                Ok::<_, String>((letter, receipt))
            })
            .await;
            let (letter, receipt) = match opened {
                Ok(Ok(x)) => x,
                Ok(Err(why)) => {
                    slog::warn!(log, "message dropped: does not open"; "id" => %id, "reason" => why);
                    return None;
                }
                Err(e) => {
                    slog::error!(log, "opening task failed"; "error" => %e);
                    return None;
                }
            };
            if let Err(e) = store.peer_put(&letter.sender) {
                slog::warn!(log, "cannot store the sender's record"; "error" => %e);
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
                })
                .await
            {
                Ok(Ok(new)) => {
                    if new {
                        slog::info!(log, "message delivered"; "id" => %id, "from" => ?letter.sender.record.address);
                    }
                    Some(receipt)
                }
                Ok(Err(e)) => {
                    slog::error!(log, "cannot store a delivered message"; "id" => %id, "error" => %e);
                    None
                }
                Err(e) => {
                    slog::error!(log, "inbox unavailable"; "error" => %e);
                    None
                }
            }
        };
        Box::pin(fut.into_actor(self).map(move |receipt, this, _ctx| {
            let Some(receipt) = receipt else { return };
            // Our own message to ourselves is delivered now.
            if this.store.outbox_delivered(&id).unwrap_or(false) {
                this.notify(&id, true);
            }
            this.flood(&LinkFrame::new(LinkBody::Receipt(receipt)), None);
        }))
    }

    fn on_receipt(&mut self, mut r: Receipt, from: Option<Address>) {
        let now = unix_now();
        if r.expires_at <= now || r.expires_at > now + MAX_EXPIRY_AHEAD_SECS {
            self.bump(Counter::Dropped);
            return;
        }
        match self.store.drop_get(&DropKey::Delivered(r.id), now) {
            Ok(Some(_)) => return,
            Ok(None) => {}
            Err(e) => {
                slog::error!(self.log, "cannot read the drop list"; "error" => %e);
                return;
            }
        }
        if !r.verify() {
            slog::warn!(self.log, "receipt dropped: bad signature"; "id" => %r.id, "from" => ?from);
            self.bump(Counter::Dropped);
            return;
        }
        let entry = DropEntry {
            expires_at: r.expires_at,
            receipt: Some(r.clone()),
        };
        if let Err(e) = self
            .store
            .drop_insert_new(&DropKey::Delivered(r.id), &entry, now)
        {
            slog::error!(self.log, "cannot update the drop list"; "error" => %e);
            return;
        }
        match self.store.outbox_get(&r.id) {
            Ok(Some(out)) if out.recipient == r.recipient => {
                if let Err(e) = self.store.outbox_delivered(&r.id) {
                    slog::error!(self.log, "cannot update the outbox"; "error" => %e);
                }
                slog::info!(self.log, "delivery confirmed"; "id" => %r.id, "attempts" => out.attempts);
                self.notify(&r.id, true);
            }
            Ok(_) => {}
            Err(e) => slog::error!(self.log, "cannot read the outbox"; "error" => %e),
        }
        if r.hops_left > 0 {
            r.hops_left -= 1;
            self.flood(&LinkFrame::new(LinkBody::Receipt(r)), from);
        }
    }
}

/// The letter must be the one the header names, from the key that sealed it,
/// with a valid record of the sender.
fn check_letter(letter: &Letter, sealed: &Sealed, id: MessageId) -> Result<(), String> {
    if letter.version != LETTER_VERSION || letter.id != id {
        return Err("letter does not match its header".into());
    }
    letter
        .sender
        .verify(unix_now())
        .map_err(|e| format!("sender record: {e}"))?;
    if letter.sender.record.kem_key != sealed.sender_kem {
        return Err("sender record names another key than the one that sealed it".into());
    }
    Ok(())
}

impl Actor for Router {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX);
        ctx.run_interval(RETRY_TICK, |this, ctx| {
            guard(this, ctx, &this.log.clone(), "router", |this, ctx| {
                this.send_due(ctx)
            });
        });
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
#[rtype(result = "Result<MessageId, PushError>")]
pub struct Push {
    pub to: String,
    pub text: String,
}

impl Handler<Push> for Router {
    type Result = ResponseActFuture<Self, Result<MessageId, PushError>>;

    fn handle(&mut self, msg: Push, ctx: &mut Context<Self>) -> Self::Result {
        let log = self.log.clone();
        let r = guard(self, ctx, &log, "router", |this, _ctx| {
            if msg.text.len() > MAX_TEXT_BYTES {
                return Err(PushError::BadInput(format!(
                    "message is {} bytes; the limit is {MAX_TEXT_BYTES}",
                    msg.text.len()
                )));
            }
            Ok((this.me.clone(), this.store.clone(), this.ttl))
        });
        let (me, store, ttl) = match r {
            Some(Ok(x)) => x,
            Some(Err(e)) => return Box::pin(async move { Err(e) }.into_actor(self)),
            None => return Box::pin(async { Err(PushError::Restarted) }.into_actor(self)),
        };
        let fut = async move {
            let recipient = super::names::resolve(&msg.to, &store, &me).await?;
            let id = MessageId::random();
            let now_ms = unix_now_ms();
            let letter = Letter {
                version: LETTER_VERSION,
                id,
                sender: (*me.record).clone(),
                sent_ms: now_ms,
                text: msg.text,
            };
            let plain = letter
                .encode()
                .map_err(|e| PushError::BadInput(e.to_string()))?;
            let to = recipient.record.address;
            let kem = recipient.record.kem_key;
            let identity: Arc<_> = me.identity.clone();
            let sealed = actix_rt::task::spawn_blocking(move || {
                seal::seal(&identity, &kem, &seal_aad(&id, &to), &plain)
            })
            .await
            .map_err(|e| PushError::Seal(e.to_string()))?
            .map_err(|e| PushError::Seal(e.to_string()))?;
            let entry = OutboxEntry {
                recipient: to,
                created_ms: now_ms,
                expires_at: now_ms / 1000 + ttl.as_secs(),
                attempts: 0,
                next_try_ms: now_ms,
                sealed,
            };
            store.outbox_put(&id, &entry)?;
            // Durability point 1: the id is shown only once this is on disk.
            store.flush().await?;
            Ok::<_, PushError>((id, to))
        };
        Box::pin(fut.into_actor(self).map(move |res, this, ctx| {
            let (id, to) = res?;
            slog::info!(this.log, "message accepted"; "id" => %id, "to" => ?to);
            this.send_due(ctx);
            Ok(id)
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
        let fut = guard(self, ctx, &log, "router", |this, _| match msg.body {
            LinkBody::Packet(p) => this.on_packet(p, msg.from),
            LinkBody::Receipt(r) => {
                this.on_receipt(r, msg.from);
                None
            }
            _ => None,
        });
        fut.flatten()
            .unwrap_or_else(|| Box::pin(actix::fut::ready(())))
    }
}

/// A link to a neighbour is up (from the NeighbourManager).
#[derive(Message)]
#[rtype(result = "()")]
pub struct NeighbourUp(pub PeerHandle);

impl Handler<NeighbourUp> for Router {
    type Result = ();
    fn handle(&mut self, msg: NeighbourUp, ctx: &mut Context<Self>) {
        self.neighbours.insert(msg.0.address, msg.0);
        // A new path may exist: send what waits now rather than at its backoff.
        match self.store.outbox_hurry(unix_now_ms()) {
            Ok(_) => self.send_due(ctx),
            Err(e) => slog::warn!(self.log, "cannot read the outbox"; "error" => %e),
        }
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
        }
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

fault_handler!(Router, "router");
