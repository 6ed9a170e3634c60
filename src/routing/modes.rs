//! How this node's own messages travel: the one part of routing that
//! `routing.mode` changes, behind one interface ([`Mode`]).
//!
//! - [`Flood`]: one copy to every neighbour; relays flood it on with a hop
//!   limit, and the receipt comes back the way the copies came.
//! - [`Onion`]: the sealed letter split into parts, each over its own fresh
//!   path of `routing.hops` relays (guard first), each with its own reply
//!   block; the Router wraps them on its worker threads
//!   ([`super::policy::Action::Wrap`]).
//!
//! Everything else — relaying either kind of packet, delivering, receipts,
//! budgets — is the same in both modes and lives in
//! [`super::policy::Policy`]: a node relays flood copies and onion packets
//! whatever mode it sends its own messages in.

use super::onion::engine::Origin;
use super::policy::{Action, Facts, Note, PolicyConfig};
use super::FloodFilter;
use crate::config::RoutingMode;
use crate::crypto::Address;
use crate::store::OutboxEntry;
use crate::wire::link::{FloodPacket, LinkBody, MAX_HOPS};
use crate::wire::MessageId;

/// What a mode may use to decide how a message goes.
pub struct Sending<'a> {
    pub cfg: &'a PolicyConfig,
    /// The flood filter: a flooded copy of our own is remembered in it, so
    /// its echoes are not passed on and its receipt is wanted.
    pub filter: &'a mut FloodFilter,
    /// The onion origin's guards, paths and reply blocks.
    pub origin: &'a mut Origin,
    pub facts: &'a mut dyn Facts,
    pub now_ms: u64,
}

/// How this node's own messages (to another node) are sent.
pub trait Mode: Send {
    /// Which `routing.mode` this is.
    fn kind(&self) -> RoutingMode;
    /// One sending of message `id` (`entry` as it was before its retry
    /// state was advanced: this is attempt `entry.attempts + 1`).
    fn send(&self, cx: Sending<'_>, id: MessageId, entry: OutboxEntry) -> Vec<Action>;
    /// Whether a new neighbour link should hurry waiting messages (the
    /// node had none before when `was_alone`).
    fn hurry_on_neighbour(&self, was_alone: bool) -> bool;
    /// Relays short of `routing.hops` for a message to `to`.
    fn shortfall(&self, cfg: &PolicyConfig, to: &Address, facts: &mut dyn Facts, now: u64)
        -> usize;
}

/// The copy of this node's message `id` that it sends (or delivers to
/// itself): attempt and expiry as the outbox holds them, every hop left.
pub fn own_copy(id: MessageId, entry: OutboxEntry) -> FloodPacket {
    FloodPacket {
        id,
        attempt: entry.attempts,
        hops_left: MAX_HOPS,
        recipient: entry.recipient,
        expires_at: entry.expires_at,
        sealed: entry.sealed,
    }
}

/// The mode for `routing.mode`.
pub fn for_config(mode: RoutingMode) -> Box<dyn Mode> {
    match mode {
        RoutingMode::Flood => Box::new(Flood),
        RoutingMode::Onion => Box::new(Onion),
    }
}

/// `routing.mode = "flood"`.
pub struct Flood;

impl Mode for Flood {
    fn kind(&self) -> RoutingMode {
        RoutingMode::Flood
    }

    fn send(&self, cx: Sending<'_>, id: MessageId, entry: OutboxEntry) -> Vec<Action> {
        if !cx.facts.linked() {
            // Nobody to send to: a neighbour coming up hurries it.
            return Vec::new();
        }
        let attempts = entry.attempts;
        let packet = own_copy(id, entry);
        // Remember our own copy, so echoes of it are not passed on again
        // and the receipt is wanted when it comes back.
        cx.filter.on_copy(
            super::filter::copy_key(&packet, true),
            &packet.id,
            &packet.recipient,
            packet.expires_at,
            packet.hops_left,
            cx.now_ms,
        );
        let attempt = attempts.saturating_add(1);
        let mut out = vec![Action::Flood {
            body: LinkBody::Packet(packet),
            except: None,
            own: Some((id, attempt)),
        }];
        if attempt > 1 {
            out.push(Action::Count(crate::store::Counter::Retried));
        }
        out
    }

    fn hurry_on_neighbour(&self, _was_alone: bool) -> bool {
        // A new link may be a new way to the recipient.
        true
    }

    fn shortfall(&self, _: &PolicyConfig, _: &Address, _: &mut dyn Facts, _: u64) -> usize {
        0
    }
}

/// `routing.mode = "onion"`.
pub struct Onion;

impl Mode for Onion {
    fn kind(&self) -> RoutingMode {
        RoutingMode::Onion
    }

    fn send(&self, cx: Sending<'_>, id: MessageId, entry: OutboxEntry) -> Vec<Action> {
        let now = cx.now_ms / 1000;
        let Some(recipient) = cx.facts.hop_of(&entry.recipient, now) else {
            return vec![Action::Note(Note::Waits {
                id,
                why: "no current packet key known for its recipient",
            })];
        };
        let Some(me) = cx.facts.my_hop(now) else {
            return vec![Action::Fault {
                what: "no current packet key of this node",
                error: id.to_string(),
            }];
        };
        let letter = match postcard::to_stdvec(&entry.sealed) {
            Ok(b) => b,
            Err(e) => {
                return vec![Action::Fault {
                    what: "cannot encode a sealed letter",
                    error: e.to_string(),
                }]
            }
        };
        let candidates = cx.facts.candidates(now);
        let plan = match cx.origin.plan(
            &cx.cfg.me,
            &entry.recipient,
            id,
            entry.expires_at,
            &letter,
            &candidates,
            cx.cfg.hops as usize,
            now,
            entry.attempts > 0,
        ) {
            Ok(p) => p,
            Err(e) => {
                return vec![Action::Fault {
                    what: "cannot split a message into packets",
                    error: e.to_string(),
                }]
            }
        };
        let mut out = Vec::with_capacity(2);
        if cx.origin.take_guards_changed() {
            match cx.origin.guards().to_bytes() {
                Ok(bytes) => out.push(Action::SaveGuards(bytes)),
                Err(e) => out.push(Action::Fault {
                    what: "cannot encode the guards",
                    error: e.to_string(),
                }),
            }
        }
        out.push(Action::Wrap {
            id,
            attempt: entry.attempts.saturating_add(1),
            plan,
            recipient,
            me,
        });
        out
    }

    fn hurry_on_neighbour(&self, was_alone: bool) -> bool {
        // Onion paths do not follow the links: one more neighbour makes no
        // new path (hurrying here would spend the retries of every waiting
        // message on each link of a churning overlay). A node that was
        // alone may have had nothing to send over, though.
        was_alone
    }

    fn shortfall(
        &self,
        cfg: &PolicyConfig,
        to: &Address,
        facts: &mut dyn Facts,
        now: u64,
    ) -> usize {
        let candidates = facts.candidates(now);
        Origin::shortfall(&cfg.me, to, &candidates, cfg.hops as usize)
    }
}
