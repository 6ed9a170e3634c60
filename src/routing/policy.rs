//! Routing as a policy without I/O: events in, [`Action`]s out.
//!
//! The Router actor owns the links, the store and the worker threads; every
//! routing decision is made here, by [`Policy`], as plain code that the unit
//! tests below drive without sockets:
//!
//! - **Own messages**: [`Policy::due`] takes an outbox entry that is due and
//!   says how it goes, through the [`Mode`] of `routing.mode`
//!   ([`super::modes::Flood`] floods a copy to the neighbours,
//!   [`super::modes::Onion`] plans parts over fresh paths to be wrapped);
//!   [`RetrySchedule`] gives each sending its next try. Both modes sit behind
//!   the same interface, and the rest of the policy does not know which is
//!   in use.
//! - **Flood copies** ([`Policy::on_packet`]) and **receipts**
//!   ([`Policy::on_receipt`]): duplicate suppression, hop limits, the
//!   receipt's way back, settling this node's own messages.
//! - **Onion packets**: [`Policy::admit_onion`] before peeling (every packet
//!   that peels leaves a replay tag, so each is charged to its sender),
//!   [`Policy::on_arrival`] with what peeling came to
//!   ([`super::onion::relay::Arrival`]): pass on, a part to rebuild and
//!   deliver, or a reply that settles one of this node's messages.
//! - **Deliveries**: [`Action::Deliver`] asks the Router to open, check and
//!   store a message (flushed); [`Policy::delivered`] then says where its
//!   receipt goes.
//!
//! What the policy reads of the node's state (delivered marks, the outbox,
//! relay candidates, packet keys) comes through the [`Facts`] trait; what it
//! changes it says as actions. It owns the routing state that is memory
//! only: the flood filter, per-peer entry budgets, the deliveries in
//! progress, the onion origin's paths and reply blocks, and the parts of
//! messages being rebuilt (whose copies on disk it asks for with
//! [`Action::KeepPart`] and [`Action::DropParts`]).

use std::collections::HashMap;
use std::time::Duration;

use super::filter::copy_key;
use super::modes::{Mode, Sending};
use super::onion::engine::{BuiltPart, Origin, Plan, ReplyOutcome};
use super::onion::fragments::{self, Outcome, Part, Reassembly};
use super::onion::path::{Candidate, Guards};
use super::onion::relay::Arrival;
use super::{CopyVerdict, FloodFilter, ReceiptVerdict};
use crate::backoff::backoff_delay;
use crate::config::RoutingMode;
use crate::crypto::seal;
use crate::crypto::sphinx::{NodeHop, OnionError, Packet, ReplyBlock};
use crate::crypto::{Address, ReceiptTokens};
use crate::store::{Counter, OutboxEntry, StoreError};
use crate::wire::link::{FloodPacket, LinkBody, Receipt};
use crate::wire::MessageId;

/// First retry delay; doubles per attempt up to `routing.retry_max`.
pub const RETRY_MIN: Duration = Duration::from_secs(2);
/// The window over which `limits.new_entries_per_min` is counted.
pub const ENTRY_BUDGET_WINDOW: Duration = Duration::from_secs(60);
/// Deliveries being opened and stored at once; past this the session that
/// brought one waits for it before it reads on (back-pressure).
pub const MAX_DELIVERING: usize = 256;
/// Reply blocks kept per message while it is being delivered.
pub const REPLY_BLOCKS_WAITING: usize = 4;
/// Incomplete multi-part messages held at a recipient.
pub const MAX_INCOMPLETE: usize = 256;
/// Incomplete messages whose first part one previous hop brought, held at
/// once: the recipient cannot tell who sent a part before the letter is
/// whole, so the budget is the link's. One hostile neighbour (or relay)
/// sending first parts that never complete fills this share, not the table.
pub const PER_HOP_INCOMPLETE: usize = MAX_INCOMPLETE / 8;
/// Longest an incomplete message is held, whatever its expiry says: the
/// parts of one sending come within seconds of each other, and every retry
/// sends every part again, so a set this old is junk or long lost.
pub const REASSEMBLY_WINDOW: Duration = Duration::from_secs(600);

/// What the policy needs to know of the configuration.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// This node's address.
    pub me: Address,
    /// `node.relay`: whether other nodes' packets are passed on.
    pub relay: bool,
    /// `routing.mode`: how this node's own messages travel.
    pub mode: RoutingMode,
    /// `routing.hops`: relays on an onion path.
    pub hops: u8,
    /// `limits.max_ttl` in seconds: the furthest expiry accepted.
    pub max_ttl_secs: u64,
    /// `limits.new_entries_per_min`: entries one peer may create.
    pub new_entries_per_min: u32,
    /// `routing.retry_max`: the longest wait between two sendings.
    pub retry_max: Duration,
    /// This node's receipt-token key: a receipt for one of its own messages
    /// is checked by its token ([`Receipt::proves_to`]).
    pub receipt_tokens: ReceiptTokens,
}

/// What the policy reads of the node's state. The Router answers from its
/// store, its links and its packet keys; the tests from a table.
pub trait Facts {
    /// Whether a write failed since start: no delivered mark can then be
    /// trusted to be on disk, so nothing is answered until a restart.
    fn write_failed(&self) -> bool;
    /// The delivered mark of `id`: `Some(receipt)` if it was delivered here
    /// (the receipt, if one was kept).
    fn delivered_mark(
        &self,
        id: &MessageId,
        now: u64,
    ) -> Result<Option<Option<Receipt>>, StoreError>;
    /// The recipient and expiry of this node's own message `id`, if it is
    /// in the outbox.
    fn outbox_of(&self, id: &MessageId) -> Result<Option<(Address, u64)>, StoreError>;
    /// Whether any neighbour link is up.
    fn linked(&self) -> bool;
    /// Relays known with a packet key usable at `now`.
    fn candidates(&mut self, now: u64) -> Vec<Candidate>;
    /// `node`'s packet key usable at `now`, if one is known.
    fn hop_of(&mut self, node: &Address, now: u64) -> Option<NodeHop>;
    /// This node's own current packet key (the end of its reply blocks).
    fn my_hop(&self, now: u64) -> Option<NodeHop>;
}

/// A note for the log: what happened, without changing anything.
#[derive(Debug)]
pub enum Note {
    /// One onion part went out over `path`.
    PartSent {
        id: MessageId,
        index: u16,
        parts: usize,
        attempt: u32,
        path: Vec<Address>,
    },
    /// A sending of an onion message went out (`parts` packets).
    OnionSent {
        id: MessageId,
        attempt: u32,
        parts: usize,
    },
    /// A message waits: nothing can be sent for it now.
    Waits { id: MessageId, why: &'static str },
}

/// What the Router is to do.
#[derive(Debug)]
pub enum Action {
    /// Send `body` to every neighbour but `except`. `own` is set for a
    /// copy of this node's own message (its id and attempt, for the log);
    /// otherwise it is a relayed copy, counted as relayed if a neighbour
    /// took it.
    Flood {
        body: LinkBody,
        except: Option<Address>,
        own: Option<(MessageId, u32)>,
    },
    /// Send `body` to the neighbour `to`, if its link is up.
    Send { to: Address, body: LinkBody },
    /// Send a receipt back over the links in `upstream` that are up; if
    /// none is, to every neighbour but `except`.
    SendBack {
        receipt: Receipt,
        upstream: Vec<Address>,
        except: Option<Address>,
    },
    /// Send an onion packet to `next`: over its link, or over a courier
    /// link dialled for it.
    Onion { next: Address, packet: Packet },
    /// Send `receipt` back to an origin over its reply block.
    Reply { block: ReplyBlock, receipt: Receipt },
    /// Open, check and store a message to this node, with its delivered
    /// mark (flushed); then report with [`Policy::delivered`]. With `hold`,
    /// the link it came from is not read until that is done.
    Deliver {
        packet: FloodPacket,
        from: Option<Address>,
        reply: Option<ReplyBlock>,
        hold: bool,
    },
    /// Wrap `plan`'s parts (on the worker threads), then report with
    /// [`Policy::wrapped`].
    Wrap {
        id: MessageId,
        attempt: u32,
        plan: Plan,
        recipient: NodeHop,
        me: NodeHop,
    },
    /// Settle this node's message `id` with its verified receipt.
    Settle { id: MessageId, receipt: Receipt },
    /// This node's message `id` ran out of time to live.
    Failed { id: MessageId, attempts: u32 },
    /// Keep a part of an incomplete message on disk.
    KeepPart {
        id: MessageId,
        index: u16,
        expires_at: u64,
        bytes: Vec<u8>,
    },
    /// Remove the parts of `id` kept on disk.
    DropParts { id: MessageId },
    /// Save the guard set.
    SaveGuards(Vec<u8>),
    /// The peer broke `limits.new_entries_per_min`: cut its link.
    OverBudget(Address),
    /// Count one.
    Count(Counter),
    /// Dropped (counted as dropped), and why (for the debug log).
    Dropped(String),
    /// A replay (counted), and where it came from.
    Replay { from: Option<Address> },
    /// Something could not be read or built.
    Fault { what: &'static str, error: String },
    /// For the log only.
    Note(Note),
}

/// How a delivery the policy asked for ([`Action::Deliver`]) ended.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// In the inbox (flushed), or there already: its signed receipt.
    Receipt(Receipt),
    /// The letter was not accepted (it does not open, or fails a check).
    NotAccepted,
    /// It could not be stored; the sender will send it again.
    Failed,
}

/// When this node's messages are sent again: the first retry after
/// [`RETRY_MIN`], doubling up to `routing.retry_max` (with jitter), until
/// the time to live.
#[derive(Debug, Clone, Copy)]
pub struct RetrySchedule {
    me: Address,
    retry_max: Duration,
    linked: bool,
    now_ms: u64,
}

impl RetrySchedule {
    /// The schedule of this node (`me`) for entries taken at `now_ms`, with
    /// or without a neighbour link up (`linked`).
    pub fn new(me: Address, retry_max: Duration, linked: bool, now_ms: u64) -> RetrySchedule {
        RetrySchedule {
            me,
            retry_max,
            linked,
            now_ms,
        }
    }

    /// An entry as it is after it was taken for sending at `now_ms`; `None`
    /// if it expired (it is failed, not sent).
    pub fn next(&self, e: &OutboxEntry) -> Option<OutboxEntry> {
        let mut e = e.clone();
        if e.expires_at.saturating_mul(1000) <= self.now_ms {
            return None;
        }
        if e.recipient == self.me || !self.linked {
            // To ourselves (delivered at once), or nobody to send to (a
            // neighbour coming up hurries it): no attempt spent.
            e.next_try_ms = self.now_ms + self.retry_max.as_millis() as u64;
        } else {
            e.attempts = e.attempts.saturating_add(1);
            e.next_try_ms = self.now_ms
                + backoff_delay(RETRY_MIN, self.retry_max, e.attempts).as_millis() as u64;
        }
        Some(e)
    }
}

/// How many entries one peer created in the current window.
#[derive(Debug, Clone, Copy)]
struct EntryCount {
    window_start_ms: u64,
    count: u32,
}

/// What a part kept on disk before a restart came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Reloaded {
    /// Held again.
    Held,
    /// Held already.
    Duplicate,
    /// Not to be held (expired, or a set kept whole by mistake): remove it.
    Remove,
}

/// The routing policy: every decision, and the state that is memory only.
pub struct Policy {
    cfg: PolicyConfig,
    mode: Box<dyn Mode>,
    /// Duplicate suppression of flood copies; in memory, bounded.
    filter: FloodFilter,
    /// Per-peer entry budgets (only peers with a link: the Router reports
    /// them gone with [`Policy::peer_gone`]).
    budgets: HashMap<Address, EntryCount>,
    /// Ids being opened and stored now, with how many copies of each: a
    /// copy of one of them is not answered from the delivered mark until
    /// its delivery is on disk (a distinct copy is still opened: the one
    /// being opened may be a forgery).
    delivering: HashMap<MessageId, u32>,
    /// Reply blocks of onion copies that came while their message was being
    /// delivered: the receipt goes over each once it is on disk.
    replies_waiting: HashMap<MessageId, Vec<ReplyBlock>>,
    /// The onion origin's guards, paths and reply blocks.
    origin: Origin,
    /// Multi-part onion messages being rebuilt.
    reassembly: Reassembly,
    /// The previous hop that brought the first part of each incomplete
    /// message, and how many each has open ([`PER_HOP_INCOMPLETE`]).
    openers: HashMap<MessageId, Address>,
    opened: HashMap<Address, usize>,
}

impl Policy {
    pub fn new(cfg: PolicyConfig, origin: Origin) -> Policy {
        let mode = super::modes::for_config(cfg.mode);
        let max_ttl = cfg.max_ttl_secs.min(REASSEMBLY_WINDOW.as_secs());
        Policy {
            cfg,
            mode,
            filter: FloodFilter::default(),
            budgets: HashMap::new(),
            delivering: HashMap::new(),
            replies_waiting: HashMap::new(),
            origin,
            reassembly: Reassembly::new(fragments::Limits {
                max_incomplete: MAX_INCOMPLETE,
                per_sender: MAX_INCOMPLETE,
                // The sealed letter as postcard: its ciphertext and two keys.
                max_message_bytes: crate::wire::message::MAX_SEALED_BYTES + 128,
                max_ttl,
            }),
            openers: HashMap::new(),
            opened: HashMap::new(),
        }
    }

    /// An incomplete message is complete or gone: its opener's share is
    /// free again.
    fn release(&mut self, id: &MessageId) {
        if let Some(hop) = self.openers.remove(id) {
            if let Some(n) = self.opened.get_mut(&hop) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.opened.remove(&hop);
                }
            }
        }
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.cfg
    }

    /// New `[limits]` (a config reload).
    pub fn set_limits(&mut self, max_ttl_secs: u64, new_entries_per_min: u32) {
        self.cfg.max_ttl_secs = max_ttl_secs;
        self.cfg.new_entries_per_min = new_entries_per_min;
    }

    /// Guards read back from the store at start.
    pub fn set_guards(&mut self, guards: Guards, rng: rand::rngs::StdRng) {
        self.origin = Origin::new(guards, rng);
    }

    /// The retry schedule for entries taken at `now_ms`.
    pub fn retry_schedule(&self, linked: bool, now_ms: u64) -> RetrySchedule {
        RetrySchedule::new(self.cfg.me, self.cfg.retry_max, linked, now_ms)
    }

    /// Whether a new neighbour link should hurry the messages that wait.
    pub fn hurry_on_neighbour(&self, was_alone: bool) -> bool {
        self.mode.hurry_on_neighbour(was_alone)
    }

    /// How many relays this node is short of `routing.hops` for a message
    /// to `to` (0 in flood mode, and for a message to itself).
    pub fn shortfall(&self, to: &Address, facts: &mut dyn Facts, now: u64) -> usize {
        if *to == self.cfg.me {
            return 0;
        }
        self.mode.shortfall(&self.cfg, to, facts, now)
    }

    /// A peer's links are all down: its budget goes.
    pub fn peer_gone(&mut self, peer: &Address) {
        self.budgets.remove(peer);
    }

    /// A relay could not be reached at all: onion paths avoid it a while.
    pub fn unreachable(&mut self, relay: &Address, now: u64) {
        self.origin.unreachable(relay, now);
    }

    /// A node left the view of nodes alive nearby: paths avoid it a while.
    pub fn vanished(&mut self, node: &Address, now: u64) {
        self.origin.vanished(node, now);
    }

    /// Counts one entry created by `from`; false once that peer is over its
    /// budget for the current window (the first time, `OverBudget` goes
    /// into `out`).
    fn charge(&mut self, from: Option<Address>, now_ms: u64, out: &mut Vec<Action>) -> bool {
        let Some(from) = from else { return true };
        let window = ENTRY_BUDGET_WINDOW.as_millis() as u64;
        let c = self.budgets.entry(from).or_insert(EntryCount {
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
            out.push(Action::OverBudget(from));
        }
        false
    }

    fn expiry_ok(&self, expires_at: u64, now: u64) -> bool {
        expires_at > now && expires_at <= now.saturating_add(self.cfg.max_ttl_secs)
    }

    /// One of this node's outbox entries is due (as it was before its
    /// retry state was advanced).
    pub fn due(
        &mut self,
        id: MessageId,
        entry: OutboxEntry,
        now_ms: u64,
        facts: &mut dyn Facts,
    ) -> Vec<Action> {
        if entry.expires_at.saturating_mul(1000) <= now_ms {
            return vec![Action::Failed {
                id,
                attempts: entry.attempts,
            }];
        }
        if entry.recipient == self.cfg.me {
            // A message to ourselves goes straight to delivery.
            if let std::collections::hash_map::Entry::Vacant(e) = self.delivering.entry(id) {
                e.insert(1);
                return vec![Action::Deliver {
                    packet: super::modes::own_copy(id, entry),
                    from: None,
                    reply: None,
                    hold: false,
                }];
            }
            return Vec::new();
        }
        let cx = Sending {
            cfg: &self.cfg,
            filter: &mut self.filter,
            origin: &mut self.origin,
            facts,
            now_ms,
        };
        self.mode.send(cx, id, entry)
    }

    /// The parts of one sending, wrapped ([`Action::Wrap`]): each goes to
    /// its first relay, and its reply block's recovery is filed.
    pub fn wrapped(
        &mut self,
        id: MessageId,
        attempt: u32,
        built: Vec<Result<BuiltPart, OnionError>>,
    ) -> Vec<Action> {
        let parts = built.len();
        let mut out = Vec::with_capacity(2 * parts + 2);
        for b in built {
            match b {
                Ok(b) => {
                    out.push(Action::Note(Note::PartSent {
                        id,
                        index: b.index,
                        parts,
                        attempt,
                        path: b.path,
                    }));
                    self.origin.file_reply(b.recovery, id);
                    out.push(Action::Onion {
                        next: b.first,
                        packet: b.packet,
                    });
                }
                Err(e) => out.push(Action::Fault {
                    what: "cannot wrap a packet",
                    error: e.to_string(),
                }),
            }
        }
        if attempt > 1 {
            out.push(Action::Count(Counter::Retried));
        }
        out.push(Action::Note(Note::OnionSent { id, attempt, parts }));
        out
    }

    /// A flood copy from a link (or `None`: from this node itself).
    pub fn on_packet(
        &mut self,
        p: FloodPacket,
        from: Option<Address>,
        now_ms: u64,
        facts: &mut dyn Facts,
    ) -> Vec<Action> {
        if !self.expiry_ok(p.expires_at, now_ms / 1000) {
            return vec![Action::Dropped(
                "packet expired or its expiry is too far ahead".into(),
            )];
        }
        if p.recipient == self.cfg.me {
            return self.packet_for_me(p, from, now_ms, facts);
        }
        if !self.cfg.relay {
            return Vec::new();
        }
        let mut out = Vec::new();
        let key = copy_key(&p, true);
        match self
            .filter
            .on_copy(key, &p.id, &p.recipient, p.expires_at, p.hops_left, now_ms)
        {
            CopyVerdict::Delivered { receipt, verified } => {
                // The receipt passed on unchecked answers nothing until it
                // is checked: a forged one must not stop the message.
                if verified || receipt.verify() {
                    if !verified {
                        self.filter.hold_receipt(receipt.clone(), true);
                    }
                    // Already delivered: answer a late copy with the receipt.
                    out.push(Action::Count(Counter::Replays));
                    if let Some(to) = from {
                        out.push(Action::Send {
                            to,
                            body: LinkBody::Receipt(receipt),
                        });
                    }
                    return out;
                }
                // Refuted, it answers nothing: the copy is judged as if no
                // receipt had come (once: a refuted receipt is not
                // `Delivered` again).
                self.filter.refute_receipt(&receipt);
                return self.on_packet(p, from, now_ms, facts);
            }
            CopyVerdict::Duplicate => {
                self.note_upstream(&p, from);
                out.push(Action::Count(Counter::Dropped));
                return out;
            }
            CopyVerdict::New => {
                if !self.charge(from, now_ms, &mut out) {
                    out.push(Action::Count(Counter::Dropped));
                    return out;
                }
            }
            CopyVerdict::MoreHops => {}
        }
        self.note_upstream(&p, from);
        if p.hops_left > 0 {
            let mut fwd = p;
            fwd.hops_left -= 1;
            out.push(Action::Flood {
                body: LinkBody::Packet(fwd),
                except: from,
                own: None,
            });
        }
        out
    }

    /// Remembers the link a copy came from, for its receipt's way back.
    fn note_upstream(&mut self, p: &FloodPacket, from: Option<Address>) {
        if let Some(from) = from {
            self.filter
                .note_upstream(&p.id, &p.recipient, p.expires_at, from);
        }
    }

    /// A flood copy addressed to this node: answered from the delivered
    /// mark if it was delivered before, else opened once (whatever its
    /// attempt).
    fn packet_for_me(
        &mut self,
        p: FloodPacket,
        from: Option<Address>,
        now_ms: u64,
        facts: &mut dyn Facts,
    ) -> Vec<Action> {
        if facts.write_failed() {
            // After a failed write no mark can be trusted to be on disk:
            // answer nothing until a restart has shown what the disk holds.
            return Vec::new();
        }
        let mut out = Vec::new();
        // While a copy of it is being delivered, its mark may not be on
        // disk yet: no receipt before it is.
        if !self.delivering.contains_key(&p.id) {
            match facts.delivered_mark(&p.id, now_ms / 1000) {
                Ok(Some(receipt)) => {
                    out.push(Action::Count(Counter::Replays));
                    if let (Some(r), Some(to)) = (receipt, from) {
                        out.push(Action::Send {
                            to,
                            body: LinkBody::Receipt(r),
                        });
                    }
                    return out;
                }
                Ok(None) => {}
                Err(e) => {
                    out.push(Action::Fault {
                        what: "cannot read the drop list",
                        error: e.to_string(),
                    });
                    return out;
                }
            }
        }
        // Open each distinct sealed message once: the key leaves out the
        // attempt and the hops, and covers every sealed byte, so a forged
        // copy never stands in for the genuine one.
        let key = copy_key(&p, false);
        if self
            .filter
            .on_copy(key, &p.id, &p.recipient, p.expires_at, u8::MAX, now_ms)
            != CopyVerdict::New
        {
            return out;
        }
        if !self.charge(from, now_ms, &mut out) {
            out.push(Action::Count(Counter::Dropped));
            return out;
        }
        *self.delivering.entry(p.id).or_insert(0) += 1;
        let hold = self.delivering.len() > MAX_DELIVERING;
        out.push(Action::Deliver {
            packet: p,
            from,
            reply: None,
            hold,
        });
        out
    }

    /// A receipt from a link (or `None`: out of a reply to this node).
    pub fn on_receipt(
        &mut self,
        mut r: Receipt,
        from: Option<Address>,
        now_ms: u64,
        facts: &mut dyn Facts,
    ) -> Vec<Action> {
        if !self.expiry_ok(r.expires_at, now_ms / 1000) {
            return vec![Action::Count(Counter::Dropped)];
        }
        if r.recipient == self.cfg.me {
            // Signed here: this node answers late copies from its own
            // delivered marks, and holds nobody's copy of its receipts.
            return Vec::new();
        }
        // Ours: a message in the outbox for exactly this recipient and expiry.
        let ours = match facts.outbox_of(&r.id) {
            Ok(Some((to, expires_at))) => to == r.recipient && expires_at == r.expires_at,
            Ok(None) => false,
            Err(e) => {
                return vec![Action::Fault {
                    what: "cannot read the outbox",
                    error: e.to_string(),
                }]
            }
        };
        // Receipts pass only for messages passed on; the signature is
        // checked where the receipt changes state: here, when it settles
        // one of ours, or when it is another receipt than the unchecked one
        // this node passed on (see `filter`). The origin checks every one.
        let verdict = self.filter.judge_receipt(&r, now_ms);
        if !verdict.passes() && !ours {
            return Vec::new();
        }
        let verified = ours || verdict == ReceiptVerdict::Check;
        // Ours: the token sealed in the letter proves it (the signature
        // only if the token is missing or wrong); else the signature.
        let proven = if ours {
            r.proves_to(&self.cfg.receipt_tokens)
        } else {
            !verified || r.verify()
        };
        if !proven {
            // If these are the bytes held unchecked, they are known bad now.
            self.filter.refute_receipt(&r);
            return vec![Action::Dropped("receipt with a bad signature".into())];
        }
        let mut out = Vec::new();
        if verdict.passes() {
            self.filter.hold_receipt(r.clone(), verified);
        }
        if ours {
            // Back where it started: nobody upstream waits for it.
            out.push(Action::Settle {
                id: r.id,
                receipt: r,
            });
            return out;
        }
        if r.hops_left > 0 {
            r.hops_left -= 1;
            let upstream = self.filter.upstreams(&r);
            out.push(Action::SendBack {
                receipt: r,
                upstream,
                except: from,
            });
        }
        out
    }

    /// An onion packet came from `from`: whether it may be peeled. Every
    /// packet that peels leaves a replay tag on disk, so each is charged to
    /// the peer that sent it, as a new flood copy is.
    pub fn admit_onion(
        &mut self,
        from: Option<Address>,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) -> bool {
        if self.charge(from, now_ms, out) {
            return true;
        }
        out.push(Action::Count(Counter::Dropped));
        false
    }

    /// What peeling an onion packet from `from` came to.
    pub fn on_arrival(
        &mut self,
        a: Arrival,
        from: Option<Address>,
        now_ms: u64,
        facts: &mut dyn Facts,
    ) -> Vec<Action> {
        match a {
            Arrival::Forward { next, packet } => {
                if !self.cfg.relay {
                    return vec![Action::Dropped("this node does not relay".into())];
                }
                if Some(next) == from || next == self.cfg.me {
                    return vec![Action::Dropped("its next hop loops back".into())];
                }
                vec![
                    Action::Count(Counter::Relayed),
                    Action::Onion { next, packet },
                ]
            }
            Arrival::Deliver { part, reply } => self.on_part(part, reply, from, now_ms, facts),
            Arrival::Reply { id, sealed } => match self.origin.open_reply(&id, &sealed) {
                ReplyOutcome::Receipt(r) => {
                    // Its paths worked (the receipt is checked next).
                    self.origin.delivered(&r.id);
                    self.on_receipt(r, None, now_ms, facts)
                }
                ReplyOutcome::Unknown => Vec::new(),
                ReplyOutcome::Bad => vec![Action::Dropped("a reply that does not open".into())],
            },
            Arrival::Replay => vec![Action::Replay { from }],
            Arrival::Refused(why) => vec![Action::Dropped(why)],
        }
    }

    /// A part of a message to this node, with the reply block its receipt
    /// goes back over.
    fn on_part(
        &mut self,
        part: Part,
        reply: ReplyBlock,
        from: Option<Address>,
        now_ms: u64,
        facts: &mut dyn Facts,
    ) -> Vec<Action> {
        let now = now_ms / 1000;
        if !self.expiry_ok(part.expires_at, now) {
            return vec![Action::Dropped(
                "part expired or its expiry is too far ahead".into(),
            )];
        }
        let id = part.id;
        if facts.write_failed() {
            // As for flood packets: no answer until a restart.
            return Vec::new();
        }
        if self.delivering.contains_key(&id) {
            // No answer until the mark is on disk; then over this copy's
            // block too.
            let waiting = self.replies_waiting.entry(id).or_default();
            if waiting.len() < REPLY_BLOCKS_WAITING {
                waiting.push(reply);
            }
            return Vec::new();
        }
        let mut out = Vec::new();
        match facts.delivered_mark(&id, now) {
            Ok(Some(receipt)) => {
                // Delivered before: answer over this copy's reply block.
                out.push(Action::Count(Counter::Replays));
                if let Some(receipt) = receipt {
                    out.push(Action::Reply {
                        block: reply,
                        receipt,
                    });
                }
                return out;
            }
            Ok(None) => {}
            Err(e) => {
                out.push(Action::Fault {
                    what: "cannot read the drop list",
                    error: e.to_string(),
                });
                return out;
            }
        }
        if !self.charge(from, now_ms, &mut out) {
            out.push(Action::Count(Counter::Dropped));
            return out;
        }
        let expires_at = part.expires_at;
        let (index, count) = (part.index, part.count);
        let opens = count > 1 && !self.reassembly.holds(&[0; 32], &id);
        if let (true, Some(hop)) = (opens, from) {
            if self.opened.get(&hop).copied().unwrap_or(0) >= PER_HOP_INCOMPLETE {
                out.push(Action::Dropped(
                    "its link has its share of incomplete messages open".into(),
                ));
                return out;
            }
        }
        let encoded = (count > 1).then(|| part.encode());
        let letter = match self.reassembly.insert([0; 32], part, now) {
            Outcome::Complete(l) => {
                if count > 1 {
                    self.release(&id);
                    out.push(Action::DropParts { id });
                }
                l
            }
            Outcome::Stored { .. } => {
                if let (true, Some(hop)) = (opens, from) {
                    self.openers.insert(id, hop);
                    *self.opened.entry(hop).or_insert(0) += 1;
                }
                // Kept on disk too, so a restart does not lose it.
                if let Some(bytes) = encoded {
                    out.push(Action::KeepPart {
                        id,
                        index,
                        expires_at,
                        bytes,
                    });
                }
                return out;
            }
            Outcome::Duplicate => return out,
            Outcome::Refused(why) => {
                out.push(Action::Dropped(format!("part refused: {why:?}")));
                return out;
            }
        };
        let sealed: seal::Sealed = match postcard::from_bytes(&letter) {
            Ok(s) => s,
            Err(_) => {
                out.push(Action::Dropped(
                    "a rebuilt letter that does not decode".into(),
                ));
                return out;
            }
        };
        let packet = FloodPacket {
            id,
            attempt: 0,
            hops_left: 0,
            recipient: self.cfg.me,
            expires_at,
            sealed,
        };
        *self.delivering.entry(id).or_insert(0) += 1;
        out.push(Action::Deliver {
            packet,
            from,
            reply: Some(reply),
            hold: false,
        });
        out
    }

    /// A delivery asked for with [`Action::Deliver`] ended: its receipt goes
    /// over every reply block that waited for it, then back the way the
    /// message came (its reply block, or the link it came over), or it
    /// settles this node's own message to itself.
    pub fn delivered(
        &mut self,
        id: MessageId,
        outcome: Delivery,
        from: Option<Address>,
        reply: Option<ReplyBlock>,
        facts: &mut dyn Facts,
    ) -> Vec<Action> {
        if let Some(n) = self.delivering.get_mut(&id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.delivering.remove(&id);
            }
        }
        let still = self.delivering.contains_key(&id);
        let waiting = match (&outcome, still) {
            (Delivery::Receipt(_), _) | (_, false) => {
                self.replies_waiting.remove(&id).unwrap_or_default()
            }
            _ => Vec::new(),
        };
        let receipt = match outcome {
            Delivery::Receipt(r) => r,
            Delivery::Failed => return Vec::new(),
            Delivery::NotAccepted => return vec![Action::Count(Counter::Dropped)],
        };
        let mut out: Vec<Action> = waiting
            .into_iter()
            .map(|block| Action::Reply {
                block,
                receipt: receipt.clone(),
            })
            .collect();
        if from.is_none() && reply.is_none() {
            // Our own message to ourselves is delivered now.
            if let Ok(Some(_)) = facts.outbox_of(&id) {
                out.push(Action::Settle { id, receipt });
            }
            return out;
        }
        match reply {
            Some(block) => out.push(Action::Reply { block, receipt }),
            None => out.push(Action::SendBack {
                receipt,
                upstream: from.into_iter().collect(),
                except: None,
            }),
        }
        out
    }

    /// Drops incomplete messages whose time to live ran out.
    pub fn expire(&mut self, now: u64) -> Vec<MessageId> {
        let gone: Vec<MessageId> = self
            .reassembly
            .expire(now)
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        for id in &gone {
            self.release(id);
        }
        gone
    }

    /// Whether no incomplete message is held (at start: read them back).
    pub fn holds_no_parts(&self) -> bool {
        self.reassembly.is_empty()
    }

    /// A part kept on disk before a restart.
    pub fn reload_part(&mut self, part: Part, now: u64) -> Reloaded {
        match self.reassembly.insert([0; 32], part, now) {
            Outcome::Stored { .. } => Reloaded::Held,
            Outcome::Duplicate => Reloaded::Duplicate,
            // Complete only if a set was kept whole by mistake, or expired
            // meanwhile: the origin sends it again.
            Outcome::Complete(_) | Outcome::Refused(_) => Reloaded::Remove,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::sphinx::{OnionFormat, Peeled, Sphinx};
    use crate::crypto::Identity;
    use crate::routing::filter::tests::forged;
    use rand::SeedableRng;

    const NOW_MS: u64 = 1_800_000_000_000;
    const NOW: u64 = NOW_MS / 1000;

    #[derive(Default)]
    struct Table {
        write_failed: bool,
        marks: HashMap<MessageId, Option<Receipt>>,
        outbox: HashMap<MessageId, (Address, u64)>,
        linked: bool,
        candidates: Vec<Candidate>,
        hops: HashMap<Address, NodeHop>,
        my_hop: Option<NodeHop>,
    }

    impl Facts for Table {
        fn write_failed(&self) -> bool {
            self.write_failed
        }
        fn delivered_mark(
            &self,
            id: &MessageId,
            _now: u64,
        ) -> Result<Option<Option<Receipt>>, StoreError> {
            Ok(self.marks.get(id).cloned())
        }
        fn outbox_of(&self, id: &MessageId) -> Result<Option<(Address, u64)>, StoreError> {
            Ok(self.outbox.get(id).copied())
        }
        fn linked(&self) -> bool {
            self.linked
        }
        fn candidates(&mut self, _now: u64) -> Vec<Candidate> {
            self.candidates.clone()
        }
        fn hop_of(&mut self, node: &Address, _now: u64) -> Option<NodeHop> {
            self.hops.get(node).copied()
        }
        fn my_hop(&self, _now: u64) -> Option<NodeHop> {
            self.my_hop
        }
    }

    fn cfg(me: Address, mode: RoutingMode) -> PolicyConfig {
        PolicyConfig {
            me,
            relay: true,
            mode,
            hops: 3,
            max_ttl_secs: 7 * 86_400,
            new_entries_per_min: 100,
            retry_max: Duration::from_secs(60),
            receipt_tokens: ReceiptTokens::random(),
        }
    }

    fn policy(me: Address, mode: RoutingMode) -> Policy {
        Policy::new(
            cfg(me, mode),
            Origin::new(Guards::new(), rand::rngs::StdRng::seed_from_u64(7)),
        )
    }

    /// A letter from `from` sealed to `to`, as the origin's outbox holds it.
    fn entry(from: &Identity, to: &Identity, id: MessageId) -> OutboxEntry {
        let expires_at = NOW + 3_600;
        let aad = crate::wire::message::seal_aad(&id, &to.address(), expires_at);
        let sealed = seal::seal(from, &to.kem_public(), &aad, b"not a real letter").unwrap();
        OutboxEntry {
            recipient: to.address(),
            created_ms: NOW_MS,
            expires_at,
            attempts: 0,
            next_try_ms: NOW_MS,
            sealed,
        }
    }

    fn packet(e: &OutboxEntry, id: MessageId, hops_left: u8) -> FloodPacket {
        FloodPacket {
            id,
            attempt: e.attempts,
            hops_left,
            recipient: e.recipient,
            expires_at: e.expires_at,
            sealed: e.sealed.clone(),
        }
    }

    /// A keyring with one packet key announced at `NOW`, and its schedule.
    fn ring_at_now(
        seed: u64,
    ) -> (
        crate::crypto::keyring::Keyring,
        crate::crypto::keyring::Schedule,
    ) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut ring = crate::crypto::keyring::Keyring::new();
        let schedule = crate::crypto::keyring::Schedule::new(86_400, 3_600).unwrap();
        ring.rotate(NOW, &schedule, &mut rng);
        (ring, schedule)
    }

    /// Makes reply blocks back to `origin`, at a packet key of its own.
    fn reply_blocks_to(origin: Address, seed: u64) -> impl Fn() -> ReplyBlock {
        let (ring, schedule) = ring_at_now(seed);
        let origin_hop = NodeHop {
            id: origin,
            key: ring.announced(NOW, &schedule).unwrap().public,
        };
        move || Sphinx.reply_block(&[], &origin_hop).unwrap().0
    }

    fn addr(b: u8) -> Address {
        Address([b; 32])
    }

    #[test]
    fn a_relay_floods_a_new_copy_once_with_one_hop_less() {
        let (a, b) = (Identity::generate(), Identity::generate());
        let mut p = policy(addr(9), RoutingMode::Flood);
        let mut t = Table::default();
        let id = MessageId::random();
        let copy = packet(&entry(&a, &b, id), id, 5);
        let out = p.on_packet(copy.clone(), Some(addr(1)), NOW_MS, &mut t);
        match out.as_slice() {
            [Action::Flood {
                body: LinkBody::Packet(f),
                except: Some(x),
                own: None,
            }] => {
                assert_eq!(f.hops_left, 4);
                assert_eq!(*x, addr(1));
            }
            other => panic!("expected one flood, got {other:?}"),
        }
        // The same copy again, from another link: dropped.
        let out = p.on_packet(copy.clone(), Some(addr(2)), NOW_MS, &mut t);
        assert!(matches!(out.as_slice(), [Action::Count(Counter::Dropped)]));
        // A node that does not relay passes nothing on.
        let mut q = Policy::new(
            PolicyConfig {
                relay: false,
                ..cfg(addr(9), RoutingMode::Flood)
            },
            Origin::new(Guards::new(), rand::rngs::StdRng::seed_from_u64(1)),
        );
        assert!(q.on_packet(copy, Some(addr(1)), NOW_MS, &mut t).is_empty());
    }

    #[test]
    fn a_peer_over_its_entry_budget_is_reported_once() {
        let (a, b) = (Identity::generate(), Identity::generate());
        let mut p = policy(addr(9), RoutingMode::Flood);
        p.set_limits(7 * 86_400, 3);
        let mut t = Table::default();
        let mut over = 0;
        let mut flooded = 0;
        for _ in 0..6 {
            let id = MessageId::random();
            for a in p.on_packet(
                packet(&entry(&a, &b, id), id, 5),
                Some(addr(1)),
                NOW_MS,
                &mut t,
            ) {
                match a {
                    Action::OverBudget(x) => {
                        assert_eq!(x, addr(1));
                        over += 1;
                    }
                    Action::Flood { .. } => flooded += 1,
                    _ => {}
                }
            }
        }
        assert_eq!((flooded, over), (3, 1));
        // A new window, a new budget.
        let id = MessageId::random();
        let out = p.on_packet(
            packet(&entry(&a, &b, id), id, 5),
            Some(addr(1)),
            NOW_MS + ENTRY_BUDGET_WINDOW.as_millis() as u64,
            &mut t,
        );
        assert!(matches!(out.as_slice(), [Action::Flood { .. }]));
    }

    #[test]
    fn a_message_to_this_node_is_delivered_once_and_answered_after() {
        let (a, me) = (Identity::generate(), Identity::generate());
        let mut p = policy(me.address(), RoutingMode::Flood);
        let mut t = Table::default();
        let id = MessageId::random();
        let copy = packet(&entry(&a, &me, id), id, 5);
        let out = p.on_packet(copy.clone(), Some(addr(1)), NOW_MS, &mut t);
        assert!(matches!(
            out.as_slice(),
            [Action::Deliver {
                from: Some(_),
                hold: false,
                ..
            }]
        ));
        // A second copy while the first is being stored: nothing yet.
        assert!(p
            .on_packet(copy.clone(), Some(addr(2)), NOW_MS, &mut t)
            .is_empty());
        // Stored: the receipt goes back over the link the copy came from.
        let r = Receipt::sign(&me, id, copy.expires_at, None);
        let out = p.delivered(
            id,
            Delivery::Receipt(r.clone()),
            Some(addr(1)),
            None,
            &mut t,
        );
        match out.as_slice() {
            [Action::SendBack { upstream, .. }] => assert_eq!(upstream, &vec![addr(1)]),
            other => panic!("expected the receipt back, got {other:?}"),
        }
        // Later copies are answered from the delivered mark.
        t.marks.insert(id, Some(r));
        let out = p.on_packet(copy.clone(), Some(addr(3)), NOW_MS, &mut t);
        assert!(matches!(
            out.as_slice(),
            [Action::Count(Counter::Replays), Action::Send { to, body: LinkBody::Receipt(_) }] if *to == addr(3)
        ));
        // After a failed write nothing is answered.
        t.write_failed = true;
        assert!(p.on_packet(copy, Some(addr(3)), NOW_MS, &mut t).is_empty());
    }

    #[test]
    fn a_receipt_settles_only_what_it_names_and_only_when_signed() {
        let (me, b) = (Identity::generate(), Identity::generate());
        let mut p = policy(me.address(), RoutingMode::Flood);
        let mut t = Table::default();
        let id = MessageId::random();
        let e = entry(&me, &b, id);
        t.outbox.insert(id, (b.address(), e.expires_at));
        let good = Receipt::sign(&b, id, e.expires_at, None);
        // Another expiry than the outbox's: not ours, and wanted by nobody.
        let other = Receipt::sign(&b, id, e.expires_at - 1, None);
        assert!(p
            .on_receipt(other, Some(addr(1)), NOW_MS, &mut t)
            .is_empty());
        // A forged signature.
        let mut forged = good.clone();
        forged.signature[0] ^= 1;
        assert!(matches!(
            p.on_receipt(forged, Some(addr(1)), NOW_MS, &mut t)
                .as_slice(),
            [Action::Dropped(_)]
        ));
        let out = p.on_receipt(good, Some(addr(1)), NOW_MS, &mut t);
        assert!(matches!(out.as_slice(), [Action::Settle { id: x, .. }] if *x == id));
    }

    #[test]
    fn the_origin_takes_its_token_for_proof_and_else_the_signature() {
        let (me, b) = (Identity::generate(), Identity::generate());
        let mut p = Policy::new(
            PolicyConfig {
                receipt_tokens: me.receipt_tokens().clone(),
                ..cfg(me.address(), RoutingMode::Flood)
            },
            Origin::new(Guards::new(), rand::rngs::StdRng::seed_from_u64(3)),
        );
        let mut t = Table::default();
        let id = MessageId::random();
        let e = entry(&me, &b, id);
        t.outbox.insert(id, (b.address(), e.expires_at));
        let token = me.receipt_token(&id.0, &b.address(), e.expires_at);
        let signed = Receipt::sign(&b, id, e.expires_at, Some(token));
        let settles = |p: &mut Policy, t: &mut Table, r: Receipt| {
            let out = p.on_receipt(r, Some(addr(1)), NOW_MS, t);
            matches!(out.as_slice(), [Action::Settle { id: x, .. }] if *x == id)
        };
        // A wrong token and a bad signature prove nothing.
        let mut bad = signed.clone();
        bad.token = Some([1; 32]);
        bad.signature[0] ^= 1;
        assert!(matches!(
            p.on_receipt(bad, Some(addr(1)), NOW_MS, &mut t).as_slice(),
            [Action::Dropped(_)]
        ));
        // Another node's token for the same message proves nothing either.
        let mut theirs = signed.clone();
        theirs.token = Some(b.receipt_token(&id.0, &b.address(), e.expires_at));
        theirs.signature[0] ^= 1;
        assert!(!settles(&mut p, &mut t, theirs));
        // The token proves it, whatever the signature (it is not checked).
        let mut by_token = signed.clone();
        by_token.signature[0] ^= 1;
        assert!(settles(&mut p, &mut t, by_token));
        // A token changed or dropped on the way: the signature proves it.
        let mut changed = signed.clone();
        changed.token = Some([2; 32]);
        assert!(settles(&mut p, &mut t, changed));
        let mut dropped = signed;
        dropped.token = None;
        assert!(settles(&mut p, &mut t, dropped));
    }

    /// `me` relays a message from `a` to `b` that came over link 1, and
    /// `b`'s receipt for it.
    fn relayed(me: &Identity) -> (Policy, Table, OutboxEntry, MessageId, Receipt) {
        let (a, b) = (Identity::generate(), Identity::generate());
        let mut p = policy(me.address(), RoutingMode::Flood);
        let mut t = Table::default();
        let id = MessageId::random();
        let e = entry(&a, &b, id);
        let out = p.on_packet(packet(&e, id, 5), Some(addr(1)), NOW_MS, &mut t);
        assert!(out.iter().any(|a| matches!(a, Action::Flood { .. })));
        let r = Receipt::sign(&b, id, e.expires_at, None);
        (p, t, e, id, r)
    }

    fn answers_with(out: &[Action], to: Address, r: &Receipt) -> bool {
        out.iter().any(|a| {
            matches!(a, Action::Send { to: x, body: LinkBody::Receipt(y) }
                if *x == to && y.signature == r.signature)
        })
    }

    #[test]
    fn a_relay_passes_the_first_receipt_unchecked_and_checks_every_other() {
        let (mut p, mut t, e, id, genuine) = relayed(&Identity::generate());
        let back_to_1 = |out: &[Action]| matches!(out, [Action::SendBack { upstream, .. }] if upstream == &vec![addr(1)]);
        // The first one goes back unchecked, forged or not: the origin
        // checks it. No signature check was spent on it.
        let first = forged(&genuine, 1);
        assert!(back_to_1(&p.on_receipt(
            first.clone(),
            Some(addr(2)),
            NOW_MS,
            &mut t
        )));
        assert!(
            p.on_receipt(first.clone(), Some(addr(2)), NOW_MS, &mut t)
                .is_empty(),
            "once"
        );
        // Not once more per hop count: with more hops left it is checked.
        let mut more = first;
        more.hops_left += 1;
        assert!(matches!(
            p.on_receipt(more.clone(), Some(addr(2)), NOW_MS, &mut t)
                .as_slice(),
            [Action::Dropped(_)]
        ));
        more.hops_left += 1;
        assert!(
            p.on_receipt(more, Some(addr(2)), NOW_MS, &mut t).is_empty(),
            "refuted: not even checked again"
        );
        // Any other one is checked: a second forgery goes nowhere ...
        assert!(matches!(
            p.on_receipt(forged(&genuine, 2), Some(addr(2)), NOW_MS, &mut t)
                .as_slice(),
            [Action::Dropped(_)]
        ));
        // ... and the genuine one, after the forgery, still goes back.
        assert!(back_to_1(&p.on_receipt(
            genuine.clone(),
            Some(addr(3)),
            NOW_MS,
            &mut t
        )));
        assert!(p
            .on_receipt(genuine.clone(), Some(addr(3)), NOW_MS, &mut t)
            .is_empty());
        assert!(p
            .on_receipt(forged(&genuine, 4), Some(addr(2)), NOW_MS, &mut t)
            .is_empty());
        // A late copy is answered with the genuine receipt, not passed on.
        let mut late = packet(&e, id, 5);
        late.attempt = 7;
        let out = p.on_packet(late, Some(addr(4)), NOW_MS, &mut t);
        assert!(answers_with(&out, addr(4), &genuine));
        assert!(!out.iter().any(|a| matches!(a, Action::Flood { .. })));
    }

    #[test]
    fn a_late_copy_is_not_answered_with_a_receipt_that_does_not_verify() {
        let (mut p, mut t, e, id, genuine) = relayed(&Identity::generate());
        let bad = forged(&genuine, 1);
        assert!(!p
            .on_receipt(bad.clone(), Some(addr(2)), NOW_MS, &mut t)
            .is_empty());
        let mut late = packet(&e, id, 5);
        late.attempt = 7;
        let out = p.on_packet(late.clone(), Some(addr(4)), NOW_MS, &mut t);
        assert!(!answers_with(&out, addr(4), &bad));
        assert!(
            out.iter().any(|a| matches!(a, Action::Flood { .. })),
            "the copy goes on as if no receipt had come"
        );
        // After one refuted forgery, the next one is not passed on unchecked.
        assert!(matches!(
            p.on_receipt(forged(&genuine, 2), Some(addr(2)), NOW_MS, &mut t)
                .as_slice(),
            [Action::Dropped(_)]
        ));
        // And the genuine receipt is passed on when it comes.
        assert!(matches!(
            p.on_receipt(genuine, Some(addr(3)), NOW_MS, &mut t)
                .as_slice(),
            [Action::SendBack { .. }]
        ));
    }

    #[test]
    fn a_node_holds_no_copy_of_a_receipt_it_signed() {
        let (me, a) = (Identity::generate(), Identity::generate());
        let mut p = policy(me.address(), RoutingMode::Flood);
        let mut t = Table::default();
        let id = MessageId::random();
        let e = entry(&a, &me, id);
        let out = p.on_packet(packet(&e, id, 5), Some(addr(1)), NOW_MS, &mut t);
        assert!(matches!(out.as_slice(), [Action::Deliver { .. }]));
        // Its receipt, or one made up in its name, coming back from a link.
        for r in [
            Receipt::sign(&me, id, e.expires_at, None),
            forged(&Receipt::sign(&me, id, e.expires_at, None), 1),
        ] {
            assert!(p.on_receipt(r, Some(addr(2)), NOW_MS, &mut t).is_empty());
        }
    }

    #[test]
    fn both_modes_answer_the_same_call_their_own_way() {
        let (me, b) = (Identity::generate(), Identity::generate());
        let id = MessageId::random();
        let e = entry(&me, &b, id);
        // Flood: a copy to every neighbour, remembered so its echo is not
        // passed on again.
        let mut flood = policy(me.address(), RoutingMode::Flood);
        let mut t = Table {
            linked: true,
            ..Table::default()
        };
        let out = flood.due(id, e.clone(), NOW_MS, &mut t);
        assert!(matches!(
            out.as_slice(),
            [Action::Flood { own: Some((x, 1)), except: None, .. }] if *x == id
        ));
        // No link: nothing to send (a new link hurries it).
        t.linked = false;
        assert!(flood.due(id, e.clone(), NOW_MS, &mut t).is_empty());

        // Onion: parts planned over `hops` relays, to be wrapped.
        let mut onion = policy(me.address(), RoutingMode::Onion);
        let hop = |i: u8| NodeHop {
            id: addr(i),
            key: crate::crypto::sphinx::generate_key().1,
        };
        let mut t = Table {
            linked: true,
            candidates: (1..=6)
                .map(|i| Candidate {
                    hop: hop(i),
                    relay: true,
                })
                .collect(),
            my_hop: Some(hop(100)),
            ..Table::default()
        };
        // The recipient's packet key is not known: it waits.
        assert!(matches!(
            onion.due(id, e.clone(), NOW_MS, &mut t).as_slice(),
            [Action::Note(Note::Waits { .. })]
        ));
        t.hops.insert(b.address(), hop(50));
        let out = onion.due(id, e.clone(), NOW_MS, &mut t);
        let plan = out
            .iter()
            .find_map(|a| match a {
                Action::Wrap {
                    plan, attempt: 1, ..
                } => Some(plan),
                _ => None,
            })
            .expect("a plan to wrap");
        assert_eq!(plan.shortfall, 0);
        assert!(plan.parts.iter().all(|part| part.path.relays.len() == 3));
        assert_eq!(onion.shortfall(&b.address(), &mut t, NOW), 0);
        assert_eq!(flood.shortfall(&b.address(), &mut t, NOW), 0);
        t.candidates.truncate(1);
        assert_eq!(onion.shortfall(&b.address(), &mut t, NOW), 2);
    }

    #[test]
    fn a_message_to_this_node_itself_is_delivered_and_settled() {
        let me = Identity::generate();
        for mode in [RoutingMode::Flood, RoutingMode::Onion] {
            let mut p = policy(me.address(), mode);
            let mut t = Table::default();
            let id = MessageId::random();
            let e = entry(&me, &me, id);
            t.outbox.insert(id, (me.address(), e.expires_at));
            let out = p.due(id, e.clone(), NOW_MS, &mut t);
            assert!(matches!(
                out.as_slice(),
                [Action::Deliver {
                    from: None,
                    reply: None,
                    ..
                }]
            ));
            // Due again while it is being stored: not twice.
            assert!(p.due(id, e.clone(), NOW_MS, &mut t).is_empty());
            let r = Receipt::sign(&me, id, e.expires_at, None);
            let out = p.delivered(id, Delivery::Receipt(r), None, None, &mut t);
            assert!(matches!(out.as_slice(), [Action::Settle { .. }]));
        }
    }

    #[test]
    fn an_expired_entry_fails_and_the_schedule_backs_off() {
        let (me, b) = (Identity::generate(), Identity::generate());
        let mut p = policy(me.address(), RoutingMode::Flood);
        let mut t = Table::default();
        let id = MessageId::random();
        let mut e = entry(&me, &b, id);
        let s = p.retry_schedule(true, NOW_MS);
        let first = s.next(&e).unwrap();
        assert_eq!(first.attempts, 1);
        assert!(first.next_try_ms > NOW_MS);
        // Nobody to send to: no attempt spent.
        let alone = p.retry_schedule(false, NOW_MS).next(&e).unwrap();
        assert_eq!(alone.attempts, 0);
        e.expires_at = NOW;
        assert!(s.next(&e).is_none());
        assert!(matches!(
            p.due(id, e, NOW_MS, &mut t).as_slice(),
            [Action::Failed { .. }]
        ));
    }

    /// First parts that never complete use up their link's share of the
    /// incomplete messages, not the whole table; the share frees up as the
    /// sets complete or expire.
    #[test]
    fn one_link_opens_at_most_its_share_of_incomplete_messages() {
        let (a, me) = (Identity::generate(), Identity::generate());
        let mut p = policy(me.address(), RoutingMode::Onion);
        let mut t = Table::default();
        let block = reply_blocks_to(a.address(), 9);
        let first_of = |id: MessageId| Part {
            id,
            index: 0,
            count: 2,
            expires_at: NOW + 3_600,
            data: vec![7; 10],
        };
        let mut arrive = |p: &mut Policy, part: Part, from: u8| {
            p.on_arrival(
                Arrival::Deliver {
                    part,
                    reply: block(),
                },
                Some(addr(from)),
                NOW_MS,
                &mut t,
            )
        };
        let mut kept = 0;
        let mut first = None;
        for _ in 0..PER_HOP_INCOMPLETE + 5 {
            let id = MessageId::random();
            first.get_or_insert(id);
            match arrive(&mut p, first_of(id), 1).as_slice() {
                [Action::KeepPart { .. }] => kept += 1,
                [Action::Dropped(_)] => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(kept, PER_HOP_INCOMPLETE);
        // Another link still opens one.
        assert!(matches!(
            arrive(&mut p, first_of(MessageId::random()), 2).as_slice(),
            [Action::KeepPart { .. }]
        ));
        // A set of link 1 completed (from any link) frees one place of its share.
        let id = first.unwrap();
        let mut second = first_of(id);
        second.index = 1;
        let out = arrive(&mut p, second, 3);
        assert!(
            matches!(out.first(), Some(Action::DropParts { .. })),
            "{out:?}"
        );
        assert!(matches!(
            arrive(&mut p, first_of(MessageId::random()), 1).as_slice(),
            [Action::KeepPart { .. }]
        ));
        // After the window, every set of link 1 is gone, and so is its count.
        let gone = p.expire(NOW + REASSEMBLY_WINDOW.as_secs());
        assert_eq!(gone.len(), PER_HOP_INCOMPLETE + 1);
        assert!(p.opened.is_empty() && p.openers.is_empty());
    }

    /// Onion arrivals: a relay passes a layer on, a node that does not relay
    /// drops it, and a replay is counted as one.
    #[test]
    fn onion_layers_are_passed_on_only_by_relays() {
        let (ring, schedule) = ring_at_now(3);
        let key = ring.announced(NOW, &schedule).unwrap();
        let me_hop = NodeHop {
            id: addr(9),
            key: key.public,
        };
        let dest = NodeHop {
            id: addr(8),
            key: crate::crypto::sphinx::generate_key().1,
        };
        let packet = Sphinx.wrap(&[me_hop], &dest, b"payload").unwrap();
        let (_, peeled) = ring.peel(&Sphinx, &packet, NOW, &schedule).unwrap();
        assert!(crate::routing::onion::relay::needs_tag(&peeled, true));
        assert!(!crate::routing::onion::relay::needs_tag(&peeled, false));
        let Peeled::Forward { .. } = &peeled else {
            panic!("a layer to pass on")
        };
        let arrival = || {
            let (_, peeled) = ring.peel(&Sphinx, &packet, NOW, &schedule).unwrap();
            crate::routing::onion::relay::arrival_of(peeled, &addr(9))
        };
        let mut t = Table::default();
        let mut relay = policy(addr(9), RoutingMode::Onion);
        let out = relay.on_arrival(arrival(), Some(addr(1)), NOW_MS, &mut t);
        assert!(matches!(
            out.as_slice(),
            [Action::Count(Counter::Relayed), Action::Onion { next, .. }] if *next == addr(8)
        ));
        // Back to where it came from: a loop.
        let out = relay.on_arrival(arrival(), Some(addr(8)), NOW_MS, &mut t);
        assert!(matches!(out.as_slice(), [Action::Dropped(_)]));
        let mut quiet = Policy::new(
            PolicyConfig {
                relay: false,
                ..cfg(addr(9), RoutingMode::Onion)
            },
            Origin::new(Guards::new(), rand::rngs::StdRng::seed_from_u64(1)),
        );
        let out = quiet.on_arrival(arrival(), Some(addr(1)), NOW_MS, &mut t);
        assert!(matches!(out.as_slice(), [Action::Dropped(_)]));
        let out = relay.on_arrival(Arrival::Replay, Some(addr(1)), NOW_MS, &mut t);
        assert!(matches!(out.as_slice(), [Action::Replay { .. }]));
    }

    /// A two-part message: the first part is kept (on disk too), the second
    /// completes it and it is delivered with its reply block; a copy during
    /// the delivery keeps its block, and the receipt goes over both.
    #[test]
    fn parts_are_kept_then_rebuilt_and_every_waiting_block_answered() {
        let (a, me) = (Identity::generate(), Identity::generate());
        let mut p = policy(me.address(), RoutingMode::Onion);
        let mut t = Table::default();
        let id = MessageId::random();
        let e = entry(&a, &me, id);
        let letter = postcard::to_stdvec(&e.sealed).unwrap();
        let parts = fragments::split(id, e.expires_at, &letter, letter.len() / 2 + 1).unwrap();
        assert!(parts.len() >= 2);
        let block = reply_blocks_to(a.address(), 5);
        let parts: Vec<Part> = parts
            .iter()
            .map(|p| Part::decode(&p.encode(), usize::MAX).unwrap())
            .collect();
        let (last, first) = parts.split_last().unwrap();
        for (i, part) in first.iter().enumerate() {
            let out = p.on_arrival(
                Arrival::Deliver {
                    part: part.clone(),
                    reply: block(),
                },
                Some(addr(1)),
                NOW_MS,
                &mut t,
            );
            assert!(
                matches!(out.as_slice(), [Action::KeepPart { index, .. }] if *index as usize == i),
                "{out:?}"
            );
        }
        let second = last.clone();
        let out = p.on_arrival(
            Arrival::Deliver {
                part: second.clone(),
                reply: block(),
            },
            Some(addr(2)),
            NOW_MS,
            &mut t,
        );
        assert!(matches!(
            out.as_slice(),
            [
                Action::DropParts { .. },
                Action::Deliver { reply: Some(_), .. }
            ]
        ));
        // A copy while it is being stored: its block waits.
        let out = p.on_arrival(
            Arrival::Deliver {
                part: second,
                reply: block(),
            },
            Some(addr(3)),
            NOW_MS,
            &mut t,
        );
        assert!(out.is_empty());
        let r = Receipt::sign(&me, id, e.expires_at, None);
        let out = p.delivered(
            id,
            Delivery::Receipt(r),
            Some(addr(2)),
            Some(block()),
            &mut t,
        );
        assert_eq!(
            out.iter()
                .filter(|a| matches!(a, Action::Reply { .. }))
                .count(),
            2
        );
    }
}
