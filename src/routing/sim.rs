//! The routing policy simulated: many nodes, each a [`Policy`] with its
//! own keys and an in-memory stand-in for its store, over a lossy in-memory
//! network, in both modes. Real crypto throughout (sealed letters, signed
//! receipts, Sphinx packets and reply blocks); the only things faked are the
//! sockets and the disk. What the Router does with each [`Action`] is done
//! here the same way, so these runs check the policy's promises end to end:
//! every message delivered exactly once and settled at its origin, by
//! retries, whatever the network loses.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::accept::{open_packet, Header};
use super::onion::engine::Origin;
use super::onion::path::{Candidate, Guards};
use super::onion::relay::{arrival_of, needs_tag, tag_of, Arrival};
use super::policy::{Action, Delivery, Facts, Policy, PolicyConfig};
use crate::config::RoutingMode;
use crate::crypto::keyring::{Keyring, Schedule};
use crate::crypto::sphinx::{NodeHop, OnionFormat, Packet, Sphinx};
use crate::crypto::{seal, Address, Identity, SignedRecord};
use crate::store::{OutboxEntry, StoreError};
use crate::wire::link::{LinkBody, OnionPacket, Receipt};
use crate::wire::message::{seal_aad, Letter, LETTER_VERSION};
use crate::wire::onion::ReplyPayload;
use crate::wire::MessageId;

const START_MS: u64 = 1_800_000_000_000;
const MAX_TTL: u64 = 30 * 86_400;

/// One node's store, as far as the policy reads it.
#[derive(Default)]
struct Disk {
    marks: HashMap<MessageId, Receipt>,
    outbox: HashMap<MessageId, OutboxEntry>,
    inbox: Vec<MessageId>,
}

struct View<'a> {
    disk: &'a Disk,
    linked: bool,
    candidates: &'a [Candidate],
    hops: &'a HashMap<Address, NodeHop>,
    me: NodeHop,
}

impl Facts for View<'_> {
    fn write_failed(&self) -> bool {
        false
    }
    fn delivered_mark(
        &self,
        id: &MessageId,
        _now: u64,
    ) -> Result<Option<Option<Receipt>>, StoreError> {
        Ok(self.disk.marks.get(id).map(|r| Some(r.clone())))
    }
    fn outbox_of(&self, id: &MessageId) -> Result<Option<(Address, u64)>, StoreError> {
        Ok(self
            .disk
            .outbox
            .get(id)
            .map(|e| (e.recipient, e.expires_at)))
    }
    fn linked(&self) -> bool {
        self.linked
    }
    fn candidates(&mut self, _now: u64) -> Vec<Candidate> {
        self.candidates.to_vec()
    }
    fn hop_of(&mut self, node: &Address, _now: u64) -> Option<NodeHop> {
        self.hops.get(node).copied()
    }
    fn my_hop(&self, _now: u64) -> Option<NodeHop> {
        Some(self.me)
    }
}

struct Node {
    identity: Identity,
    record: SignedRecord,
    policy: Policy,
    disk: Disk,
    ring: Keyring,
    tags: HashSet<(u64, [u8; 32])>,
    neighbours: Vec<usize>,
}

/// A frame on its way: from, to, what.
type InFlight = (usize, usize, LinkBody);

struct Net {
    nodes: Vec<Node>,
    index: HashMap<Address, usize>,
    schedule: Schedule,
    candidates: Vec<Candidate>,
    hops: HashMap<Address, NodeHop>,
    queue: VecDeque<InFlight>,
    rng: StdRng,
    /// Share of frames lost on the way.
    loss: f64,
    now_ms: u64,
    /// Frames that went over the network.
    frames: u64,
    /// A random node crashes and restarts after every this many frames
    /// carried (`None`: never).
    restart_every: Option<u64>,
    carried: u64,
    restarted: u64,
}

impl Net {
    /// `n` nodes in a ring, each also linked to the node opposite.
    fn new(n: usize, mode: RoutingMode, loss: f64, seed: u64) -> Net {
        let mut rng = StdRng::seed_from_u64(seed);
        let schedule = Schedule::new(86_400, 3_600).unwrap();
        let now = START_MS / 1000;
        let mut nodes = Vec::new();
        for i in 0..n {
            let identity = Identity::generate();
            let listen = format!("127.0.99.{}:58008", i + 2).parse().unwrap();
            let record = SignedRecord::sign(&identity, listen, true, now);
            let mut ring = Keyring::new();
            ring.rotate(now, &schedule, &mut rng);
            let policy = Policy::new(
                PolicyConfig {
                    me: identity.address(),
                    relay: true,
                    mode,
                    hops: 3,
                    max_ttl_secs: MAX_TTL,
                    new_entries_per_min: 100_000,
                    retry_max: Duration::from_secs(30),
                    receipt_tokens: identity.receipt_tokens().clone(),
                },
                Origin::new(Guards::new(), StdRng::seed_from_u64(seed + i as u64)),
            );
            let neighbours = [(i + 1) % n, (i + n - 1) % n, (i + n / 2) % n]
                .into_iter()
                .filter(|&j| j != i)
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            nodes.push(Node {
                identity,
                record,
                policy,
                disk: Disk::default(),
                ring,
                tags: HashSet::new(),
                neighbours,
            });
        }
        let index = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.identity.address(), i))
            .collect();
        let hops: HashMap<Address, NodeHop> = nodes
            .iter()
            .map(|n| {
                let a = n.identity.address();
                let key = n.ring.announced(now, &schedule).unwrap().public;
                (a, NodeHop { id: a, key })
            })
            .collect();
        let candidates = hops
            .values()
            .map(|&hop| Candidate { hop, relay: true })
            .collect();
        Net {
            nodes,
            index,
            schedule,
            candidates,
            hops,
            queue: VecDeque::new(),
            rng,
            loss,
            now_ms: START_MS,
            frames: 0,
            restart_every: None,
            carried: 0,
            restarted: 0,
        }
    }

    fn addr(&self, i: usize) -> Address {
        self.nodes[i].identity.address()
    }

    /// Runs one policy call of node `i` and carries out its actions.
    fn decide(&mut self, i: usize, f: impl FnOnce(&mut Policy, &mut View<'_>) -> Vec<Action>) {
        let me = self.hops[&self.addr(i)];
        let node = &mut self.nodes[i];
        let mut view = View {
            disk: &node.disk,
            linked: !node.neighbours.is_empty(),
            candidates: &self.candidates,
            hops: &self.hops,
            me,
        };
        let actions = f(&mut node.policy, &mut view);
        self.apply(i, actions);
    }

    fn send(&mut self, from: usize, to: usize, body: LinkBody) {
        self.frames += 1;
        if self.rng.gen_bool(self.loss) {
            return;
        }
        self.queue.push_back((from, to, body));
    }

    fn apply(&mut self, i: usize, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Flood { body, except, .. } => {
                    for n in self.nodes[i].neighbours.clone() {
                        if Some(self.addr(n)) != except {
                            self.send(i, n, body.clone());
                        }
                    }
                }
                Action::Send { to, body } => {
                    let to = self.index[&to];
                    self.send(i, to, body);
                }
                Action::SendBack {
                    receipt,
                    upstream,
                    except,
                } => {
                    let ups: Vec<usize> = upstream
                        .iter()
                        .filter(|a| Some(**a) != except)
                        .map(|a| self.index[a])
                        .filter(|j| self.nodes[i].neighbours.contains(j))
                        .collect();
                    let to = if ups.is_empty() {
                        self.nodes[i]
                            .neighbours
                            .iter()
                            .copied()
                            .filter(|&n| Some(self.addr(n)) != except)
                            .collect()
                    } else {
                        ups
                    };
                    for n in to {
                        self.send(i, n, LinkBody::Receipt(receipt.clone()));
                    }
                }
                Action::Onion { next, packet } => {
                    // Over a link or a courier link: any node is reachable.
                    let to = self.index[&next];
                    self.send(i, to, LinkBody::Onion(OnionPacket(packet.into_bytes())));
                }
                Action::Reply { block, receipt } => {
                    let body = ReplyPayload::new(receipt).encode().unwrap();
                    let (first, packet) = Sphinx.use_reply_block(&block, &body).unwrap();
                    let to = self.index[&first];
                    self.send(i, to, LinkBody::Onion(OnionPacket(packet.into_bytes())));
                }
                Action::Deliver {
                    packet,
                    from,
                    reply,
                    ..
                } => {
                    let node = &mut self.nodes[i];
                    let header = Header {
                        id: packet.id,
                        recipient: packet.recipient,
                        expires_at: packet.expires_at,
                    };
                    let outcome = match open_packet(
                        &node.identity,
                        header,
                        &packet.sealed,
                        self.now_ms,
                        MAX_TTL,
                    ) {
                        Ok(accepted) => {
                            let r = Receipt::sign(
                                &node.identity,
                                packet.id,
                                accepted.letter.expires_at,
                                accepted.letter.receipt_token,
                            );
                            // The inbox's rule: stored once, with its mark.
                            if !node.disk.marks.contains_key(&packet.id) {
                                node.disk.inbox.push(packet.id);
                                node.disk.marks.insert(packet.id, r.clone());
                            }
                            Delivery::Receipt(r)
                        }
                        Err(_) => Delivery::NotAccepted,
                    };
                    let id = packet.id;
                    self.decide(i, |p, v| p.delivered(id, outcome, from, reply, v));
                }
                Action::Wrap {
                    id,
                    attempt,
                    plan,
                    recipient,
                    me,
                } => {
                    let built = plan.build(&Sphinx, &recipient, &me);
                    let actions = self.nodes[i].policy.wrapped(id, attempt, built);
                    self.apply(i, actions);
                }
                Action::Settle { id, receipt } => {
                    assert!(receipt.verify());
                    self.nodes[i].disk.outbox.remove(&id);
                }
                Action::Failed { id, .. } => panic!("message {id} failed in the simulation"),
                Action::Fault { what, error } => panic!("{what}: {error}"),
                Action::KeepPart { .. }
                | Action::DropParts { .. }
                | Action::SaveGuards(_)
                | Action::OverBudget(_)
                | Action::Count(_)
                | Action::Dropped(_)
                | Action::Replay { .. }
                | Action::Note(_) => {}
            }
        }
    }

    /// Node `to` takes a frame from `from`, as its session and Router would.
    fn arrive(&mut self, from: usize, to: usize, body: LinkBody) {
        let from_addr = Some(self.addr(from));
        let now_ms = self.now_ms;
        match body {
            LinkBody::Packet(p) => self.decide(to, |pol, v| pol.on_packet(p, from_addr, now_ms, v)),
            LinkBody::Receipt(r) => {
                self.decide(to, |pol, v| pol.on_receipt(r, from_addr, now_ms, v))
            }
            LinkBody::Onion(OnionPacket(bytes)) => {
                let mut out = Vec::new();
                if !self.nodes[to]
                    .policy
                    .admit_onion(from_addr, now_ms, &mut out)
                {
                    return self.apply(to, out);
                }
                let node = &mut self.nodes[to];
                let me = node.identity.address();
                let packet = Packet::from_bytes(&bytes).unwrap();
                let arrival = match node
                    .ring
                    .peel(&Sphinx, &packet, now_ms / 1000, &self.schedule)
                {
                    Err(e) => Arrival::Refused(e.to_string()),
                    Ok((_, peeled)) if !needs_tag(&peeled, true) => {
                        Arrival::Refused("not a relay".into())
                    }
                    Ok((epoch, peeled)) => {
                        if node.tags.insert((epoch, tag_of(&peeled))) {
                            arrival_of(peeled, &me)
                        } else {
                            Arrival::Replay
                        }
                    }
                };
                self.decide(to, |pol, v| pol.on_arrival(arrival, from_addr, now_ms, v));
            }
            other => panic!("no such frame in this simulation: {other:?}"),
        }
    }

    /// A message from `from` to `to`, sealed as `hermes push` seals it and
    /// put in the outbox (due now).
    fn push(&mut self, from: usize, to: usize, text: &str) -> MessageId {
        let id = MessageId::random();
        let expires_at = self.now_ms / 1000 + 3_600;
        let recipient = &self.nodes[to].identity;
        let letter = Letter {
            version: LETTER_VERSION,
            id,
            recipient: recipient.address(),
            sender: self.nodes[from].record.clone(),
            sent_ms: self.now_ms,
            expires_at,
            text: text.into(),
            receipt_token: Some(self.nodes[from].identity.receipt_token(
                &id.0,
                &recipient.address(),
                expires_at,
            )),
        };
        let aad = seal_aad(&id, &recipient.address(), expires_at);
        let sealed = seal::seal(
            &self.nodes[from].identity,
            &recipient.kem_public(),
            &aad,
            &letter.encode().unwrap(),
        )
        .unwrap();
        let entry = OutboxEntry {
            recipient: recipient.address(),
            created_ms: self.now_ms,
            expires_at,
            attempts: 0,
            next_try_ms: self.now_ms,
            sealed,
        };
        self.nodes[from].disk.outbox.insert(id, entry);
        id
    }

    /// One second: every due outbox entry is taken (its retry state advanced
    /// as the store's writer does) and sent, then every frame in flight is
    /// carried until the network is quiet.
    fn tick(&mut self) {
        for i in 0..self.nodes.len() {
            let linked = !self.nodes[i].neighbours.is_empty();
            let schedule = self.nodes[i].policy.retry_schedule(linked, self.now_ms);
            let due: Vec<(MessageId, OutboxEntry)> = self.nodes[i]
                .disk
                .outbox
                .iter()
                .filter(|(_, e)| e.next_try_ms <= self.now_ms)
                .map(|(id, e)| (*id, e.clone()))
                .collect();
            for (id, entry) in due {
                if let Some(next) = schedule.next(&entry) {
                    self.nodes[i].disk.outbox.insert(id, next);
                }
                let now_ms = self.now_ms;
                self.decide(i, |p, v| p.due(id, entry, now_ms, v));
            }
        }
        while let Some((from, to, body)) = self.queue.pop_front() {
            self.arrive(from, to, body);
            self.carried += 1;
            if self.restart_every.is_some_and(|k| self.carried % k == 0) {
                let i = self.rng.gen_range(0..self.nodes.len());
                let seed = self.rng.gen();
                self.restart(i, seed);
                self.restarted += 1;
            }
        }
        self.now_ms += 1_000;
    }

    /// Node `i` crashes and starts again: what the policy held in memory
    /// (filter, deliveries in progress, reply blocks, parts) is gone; its
    /// disk, keys and replay tags are kept, as on a real node.
    fn restart(&mut self, i: usize, seed: u64) {
        let cfg = self.nodes[i].policy.config().clone();
        self.nodes[i].policy =
            Policy::new(cfg, Origin::new(Guards::new(), StdRng::seed_from_u64(seed)));
    }

    fn outboxes_empty(&self) -> bool {
        self.nodes.iter().all(|n| n.disk.outbox.is_empty())
    }
}

/// Runs `messages` random pushes through a lossy network in `mode` (with
/// `restarts`, a random node crashes and restarts after every 25 frames
/// carried, in the middle of deliveries and receipts) and checks each is
/// delivered once and settled; returns the ticks it took.
fn run(mode: RoutingMode, loss: f64, restarts: bool, messages: usize, seed: u64) -> (u64, Net) {
    let mut net = Net::new(8, mode, loss, seed);
    net.restart_every = restarts.then_some(25);
    let mut sent: Vec<(usize, MessageId)> = Vec::new();
    for m in 0..messages {
        let from = net.rng.gen_range(0..8);
        let to = (from + net.rng.gen_range(1..8)) % 8;
        sent.push((to, net.push(from, to, &format!("message {m}"))));
    }
    let mut ticks = 0;
    while !net.outboxes_empty() {
        net.tick();
        ticks += 1;
        assert!(
            ticks < 600,
            "{mode:?}, {loss} loss: not settled after 600 simulated seconds"
        );
    }
    for (to, id) in &sent {
        let n = net.nodes[*to]
            .disk
            .inbox
            .iter()
            .filter(|x| *x == id)
            .count();
        assert_eq!(n, 1, "{mode:?}: message {id} delivered {n} times");
    }
    let total: usize = net.nodes.iter().map(|n| n.disk.inbox.len()).sum();
    assert_eq!(total, messages, "{mode:?}: nothing else delivered");
    assert!(!restarts || net.restarted > 0, "no node restarted");
    (ticks, net)
}

#[test]
fn flood_delivers_each_message_once_over_a_lossy_network_with_restarts() {
    for (loss, restarts, seed) in [(0.0, false, 1), (0.2, false, 2), (0.1, true, 5)] {
        let (ticks, net) = run(RoutingMode::Flood, loss, restarts, 40, seed);
        eprintln!(
            "flood, loss {loss}: settled in {ticks} s, {} frames, {} restarts",
            net.frames, net.restarted
        );
    }
}

#[test]
fn onion_delivers_each_message_once_over_a_lossy_network_with_restarts() {
    for (loss, restarts, seed) in [(0.0, false, 3), (0.2, false, 4), (0.1, true, 6)] {
        let (ticks, net) = run(RoutingMode::Onion, loss, restarts, 40, seed);
        eprintln!(
            "onion, loss {loss}: settled in {ticks} s, {} frames, {} restarts",
            net.frames, net.restarted
        );
    }
}
