//! Onion routing policy without I/O: the pieces the Router drives in
//! `routing.mode = "onion"` (issue 9).
//!
//! - [`path`]: choosing relays (guards first, the rest afresh, avoiding
//!   recent paths), and the guard set's policy.
//! - [`fragments`]: splitting a sealed letter over several packets and
//!   rebuilding it, within bounds.
//! - [`replay`]: the replay tags seen per packet key, bounded.
//! - [`relay`]: what a peeled packet comes to at this node.
//! - [`engine`]: the origin's parts, paths and reply blocks.
//!
//! The packet format itself (wrap, peel, reply blocks) is in
//! [`crate::crypto::sphinx`], the rotating packet keys in
//! [`crate::crypto::keyring`]; docs/packet.md describes the whole.

pub mod engine;
pub mod fragments;
pub mod path;
pub mod relay;
pub mod replay;

/// The pieces together, without sockets: a 10-node network of keyrings,
/// paths from guards, wrapping, peeling with replay checks, fragments.
#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::fragments::{split, Limits, Outcome, Part, Reassembly};
    use super::path::{choose_path, Candidate, Guards, RecentPaths, GUARD_REPLACE_AFTER_SECS};
    use super::replay::{ReplayTags, Verdict};
    use crate::crypto::keyring::{Keyring, Schedule};
    use crate::crypto::sphinx::{NodeHop, OnionFormat, Packet, Peeled, Sphinx, MAX_PLAINTEXT};
    use crate::crypto::Address;
    use crate::wire::MessageId;

    const NOW: u64 = 1_800_000_000;

    struct Node {
        ring: Keyring,
        tags: ReplayTags,
        relayed: usize,
    }

    struct Net {
        schedule: Schedule,
        nodes: HashMap<Address, Node>,
    }

    impl Net {
        fn new(n: u8, rng: &mut StdRng) -> Net {
            let schedule = Schedule::new(86_400, 3_600).unwrap();
            let nodes = (0..n)
                .map(|i| {
                    let mut ring = Keyring::new();
                    ring.rotate(NOW, &schedule, rng);
                    let node = Node {
                        ring,
                        tags: ReplayTags::new(10_000),
                        relayed: 0,
                    };
                    (Address([i; 32]), node)
                })
                .collect();
            Net { schedule, nodes }
        }

        fn hop(&self, id: Address) -> NodeHop {
            let key = self.nodes[&id].ring.announced(NOW, &self.schedule).unwrap();
            NodeHop {
                id,
                key: key.public,
            }
        }

        fn candidates(&self) -> Vec<Candidate> {
            self.nodes
                .keys()
                .map(|id| Candidate {
                    hop: self.hop(*id),
                    relay: true,
                })
                .collect()
        }

        /// Carries `packet` from `at` until it is delivered (the payload),
        /// dropped (None), recording each hop's packet in `wire`.
        fn carry(
            &mut self,
            mut at: Address,
            mut packet: Packet,
            wire: &mut Vec<Packet>,
        ) -> Option<Vec<u8>> {
            loop {
                wire.push(packet.clone());
                let node = self.nodes.get_mut(&at)?;
                let (epoch, peeled) = node.ring.peel(&Sphinx, &packet, NOW, &self.schedule).ok()?;
                match peeled {
                    Peeled::Forward {
                        next,
                        packet: p,
                        replay_tag,
                    } => {
                        if node.tags.check_and_insert(epoch, replay_tag) != Verdict::Fresh {
                            return None;
                        }
                        node.relayed += 1;
                        at = next;
                        packet = p;
                    }
                    Peeled::Deliver {
                        destination,
                        payload,
                        replay_tag,
                    } => {
                        assert_eq!(destination, at);
                        if node.tags.check_and_insert(epoch, replay_tag) != Verdict::Fresh {
                            return None;
                        }
                        return Some(payload);
                    }
                    Peeled::Reply { .. } => return None,
                }
            }
        }
    }

    #[test]
    fn hundred_messages_through_a_ten_node_network() {
        let mut rng = StdRng::seed_from_u64(42);
        let mut net = Net::new(10, &mut rng);
        let (me, to) = (Address([0; 32]), Address([9; 32]));
        let candidates = net.candidates();
        let mut guards = Guards::new();
        guards.refresh(&me, &candidates, NOW, GUARD_REPLACE_AFTER_SECS, &mut rng);
        let mut recent = RecentPaths::new();
        let mut paths = HashSet::new();
        let mut wire = Vec::new();
        let mut captured = None;
        for i in 0..100u32 {
            let path = choose_path(&me, &to, &candidates, &guards, &mut recent, 3, &mut rng);
            assert_eq!(path.shortfall, 0);
            paths.insert(path.ids());
            let text = format!("message {i}");
            let packet = Sphinx
                .wrap(&path.relays, &net.hop(to), text.as_bytes())
                .unwrap();
            let first = path.relays[0].id;
            let before = wire.len();
            assert_eq!(
                net.carry(first, packet, &mut wire).as_deref(),
                Some(text.as_bytes())
            );
            if i == 7 {
                // Between the first and second relay.
                captured = Some((path.relays[1].id, wire[before + 1].clone()));
            }
        }
        let relayed: Vec<usize> = net.nodes.values().map(|n| n.relayed).collect();
        assert_eq!(relayed.iter().sum::<usize>(), 300);
        assert!(relayed.iter().filter(|n| **n > 0).count() >= 6);
        assert_eq!(net.nodes[&me].relayed + net.nodes[&to].relayed, 0);
        assert!(paths.len() >= 90, "{} distinct paths", paths.len());
        // One packet size on every hop.
        assert!(wire
            .iter()
            .all(|p| p.as_bytes().len() == crate::crypto::sphinx::PACKET_SIZE));
        // A packet captured between two relays and replayed is dropped.
        let (at, p) = captured.unwrap();
        let before = net.nodes[&at].relayed;
        assert_eq!(net.carry(at, p, &mut Vec::new()), None);
        assert_eq!(net.nodes[&at].relayed, before);
    }

    #[test]
    fn a_sixty_thousand_byte_letter_in_parts_on_their_own_paths() {
        let mut rng = StdRng::seed_from_u64(43);
        let mut net = Net::new(10, &mut rng);
        let (me, to) = (Address([0; 32]), Address([9; 32]));
        let candidates = net.candidates();
        let mut guards = Guards::new();
        guards.refresh(&me, &candidates, NOW, GUARD_REPLACE_AFTER_SECS, &mut rng);
        let mut recent = RecentPaths::new();
        let letter: Vec<u8> = (0..60_592u32).map(|i| (i % 251) as u8).collect();
        let id = MessageId([5; 16]);
        let parts = split(id, NOW + 600, &letter, MAX_PLAINTEXT).unwrap();
        let mut reassembly = Reassembly::new(Limits {
            max_incomplete: 16,
            per_sender: 4,
            max_message_bytes: 70_000,
            max_ttl: 30 * 86_400,
        });
        let mut paths = HashSet::new();
        let mut done = None;
        for part in parts.iter().rev() {
            let path = choose_path(&me, &to, &candidates, &guards, &mut recent, 3, &mut rng);
            paths.insert(path.ids());
            let packet = Sphinx
                .wrap(&path.relays, &net.hop(to), &part.encode())
                .unwrap();
            let payload = net
                .carry(path.relays[0].id, packet, &mut Vec::new())
                .unwrap();
            let part = Part::decode(&payload, MAX_PLAINTEXT).unwrap();
            if let Outcome::Complete(l) = reassembly.insert(me.0, part, NOW) {
                done = Some(l);
            }
        }
        assert_eq!(paths.len(), parts.len(), "each part on its own path");
        assert_eq!(done, Some(letter));
        assert!(reassembly.is_empty());
    }
}
