//! Splitting a sealed letter over several packets, and rebuilding it.
//!
//! Every packet carries at most [`MAX_PLAINTEXT`](crate::crypto::sphinx::MAX_PLAINTEXT)
//! bytes, so a longer letter is cut into numbered [`Part`]s (message id,
//! index, count, expiry), each sent in its own packet on its own path. The
//! recipient keeps the parts of each incomplete message in a [`Reassembly`]
//! until all have come, then hands the letter on; incomplete sets expire
//! with the message's time to live (capped by the node's longest).
//!
//! Every bound is checked before anything is stored: parts per message,
//! incomplete messages in all, incomplete messages per sender, bytes per
//! message, and the expiry. `sender` is whatever the caller has
//! authenticated the part as coming from: the Router should seal each part
//! to the recipient (HPKE auth mode) and open it before it calls
//! [`Reassembly::insert`], so that no budget is keyed on a claim. A part
//! of a message already delivered is the drop list's business: check it
//! first, or a late duplicate opens a new incomplete set that then expires.

use std::collections::HashMap;

use crate::wire::MessageId;

/// Bytes of a part's header: version, id, index, count, expiry.
pub const PART_HEADER: usize = 1 + 16 + 2 + 2 + 8;
/// Version of the part encoding.
pub const PART_VERSION: u8 = 1;
/// Most parts one message may have: a 60,592-byte sealed letter needs 17 of
/// 3.7 KiB; 64 leaves room for smaller chunks (a sealed part loses 80 bytes).
pub const MAX_PARTS: u16 = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FragmentError {
    #[error("part of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("part of {got} bytes is over the {max}-byte limit")]
    TooLong { got: usize, max: usize },
    #[error("part version {0} is not supported")]
    Version(u8),
    #[error("part {index} of {count} is not a valid place")]
    Index { index: u16, count: u16 },
    #[error("a letter of {len} bytes needs {parts} parts of {chunk} bytes, over {max}", max = MAX_PARTS)]
    TooManyParts {
        len: usize,
        chunk: usize,
        parts: usize,
    },
    #[error("a chunk of {0} bytes is too small to carry anything")]
    Chunk(usize),
}

/// One numbered piece of a letter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    pub id: MessageId,
    pub index: u16,
    pub count: u16,
    /// Seconds since the Unix epoch: the message's expiry (its TTL).
    pub expires_at: u64,
    pub data: Vec<u8>,
}

impl Part {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(PART_HEADER + self.data.len());
        out.push(PART_VERSION);
        out.extend_from_slice(&self.id.0);
        out.extend_from_slice(&self.index.to_be_bytes());
        out.extend_from_slice(&self.count.to_be_bytes());
        out.extend_from_slice(&self.expires_at.to_be_bytes());
        out.extend_from_slice(&self.data);
        out
    }

    /// Decodes a part of at most `max` bytes (checked before copying).
    pub fn decode(bytes: &[u8], max: usize) -> Result<Part, FragmentError> {
        if bytes.len() > max {
            return Err(FragmentError::TooLong {
                got: bytes.len(),
                max,
            });
        }
        if bytes.len() < PART_HEADER {
            return Err(FragmentError::Short(bytes.len()));
        }
        if bytes[0] != PART_VERSION {
            return Err(FragmentError::Version(bytes[0]));
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&bytes[1..17]);
        let index = u16::from_be_bytes([bytes[17], bytes[18]]);
        let count = u16::from_be_bytes([bytes[19], bytes[20]]);
        let mut exp = [0u8; 8];
        exp.copy_from_slice(&bytes[21..29]);
        if count == 0 || count > MAX_PARTS || index >= count {
            return Err(FragmentError::Index { index, count });
        }
        Ok(Part {
            id: MessageId(id),
            index,
            count,
            expires_at: u64::from_be_bytes(exp),
            data: bytes[PART_HEADER..].to_vec(),
        })
    }
}

/// Cuts `letter` into parts whose encoding is at most `max_part` bytes.
/// An empty letter is one empty part.
pub fn split(
    id: MessageId,
    expires_at: u64,
    letter: &[u8],
    max_part: usize,
) -> Result<Vec<Part>, FragmentError> {
    let chunk = max_part.saturating_sub(PART_HEADER);
    if chunk == 0 {
        return Err(FragmentError::Chunk(max_part));
    }
    let parts = letter.len().div_ceil(chunk).max(1);
    if parts > MAX_PARTS as usize {
        return Err(FragmentError::TooManyParts {
            len: letter.len(),
            chunk,
            parts,
        });
    }
    let count = parts as u16;
    let mut out: Vec<Part> = letter
        .chunks(chunk)
        .enumerate()
        .map(|(i, c)| Part {
            id,
            index: i as u16,
            count,
            expires_at,
            data: c.to_vec(),
        })
        .collect();
    if out.is_empty() {
        out.push(Part {
            id,
            index: 0,
            count: 1,
            expires_at,
            data: Vec::new(),
        });
    }
    Ok(out)
}

/// The bounds of a [`Reassembly`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Incomplete messages held in all.
    pub max_incomplete: usize,
    /// Incomplete messages held per sender.
    pub per_sender: usize,
    /// Bytes of data one message may gather.
    pub max_message_bytes: usize,
    /// Longest time an incomplete set is kept, whatever its expiry says
    /// (`limits.max_ttl`), in seconds.
    pub max_ttl: u64,
}

/// Why a part was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Its message expired already.
    Expired,
    /// Its count or size disagrees with the parts already held, or the
    /// message would grow over `max_message_bytes`.
    Inconsistent,
    /// Too many incomplete messages in all.
    Full,
    /// Too many incomplete messages from this sender.
    SenderBudget,
}

/// What [`Reassembly::insert`] did with a part.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Held; this many parts are still missing.
    Stored {
        missing: u16,
    },
    /// This part was held already: ignored.
    Duplicate,
    /// The last part: here is the whole letter (its state is gone).
    Complete(Vec<u8>),
    Refused(Refused),
}

struct Incomplete {
    count: u16,
    parts: Vec<Option<Vec<u8>>>,
    received: u16,
    bytes: usize,
    expires_at: u64,
}

/// Incomplete messages, keyed by (sender, message id).
pub struct Reassembly {
    limits: Limits,
    messages: HashMap<([u8; 32], MessageId), Incomplete>,
    per_sender: HashMap<[u8; 32], usize>,
}

impl Reassembly {
    pub fn new(limits: Limits) -> Reassembly {
        Reassembly {
            limits,
            messages: HashMap::new(),
            per_sender: HashMap::new(),
        }
    }

    /// Incomplete messages held.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Whether an incomplete set of `id` from `sender` is held.
    pub fn holds(&self, sender: &[u8; 32], id: &MessageId) -> bool {
        self.messages.contains_key(&(*sender, *id))
    }

    /// Takes one part from `sender` at `now` (seconds).
    pub fn insert(&mut self, sender: [u8; 32], part: Part, now: u64) -> Outcome {
        if part.expires_at <= now {
            return Outcome::Refused(Refused::Expired);
        }
        if part.count == 0 || part.count > MAX_PARTS || part.index >= part.count {
            return Outcome::Refused(Refused::Inconsistent);
        }
        if part.data.len() > self.limits.max_message_bytes {
            return Outcome::Refused(Refused::Inconsistent);
        }
        if part.count == 1 {
            return Outcome::Complete(part.data);
        }
        let key = (sender, part.id);
        if !self.messages.contains_key(&key) {
            if self.messages.len() >= self.limits.max_incomplete {
                return Outcome::Refused(Refused::Full);
            }
            if self.per_sender.get(&sender).copied().unwrap_or(0) >= self.limits.per_sender {
                return Outcome::Refused(Refused::SenderBudget);
            }
            let expires_at = part.expires_at.min(now.saturating_add(self.limits.max_ttl));
            self.messages.insert(
                key,
                Incomplete {
                    count: part.count,
                    parts: vec![None; part.count as usize],
                    received: 0,
                    bytes: 0,
                    expires_at,
                },
            );
            *self.per_sender.entry(sender).or_insert(0) += 1;
        }
        let Some(m) = self.messages.get_mut(&key) else {
            return Outcome::Refused(Refused::Full);
        };
        if m.count != part.count {
            return Outcome::Refused(Refused::Inconsistent);
        }
        let Some(slot) = m.parts.get_mut(part.index as usize) else {
            return Outcome::Refused(Refused::Inconsistent);
        };
        if slot.is_some() {
            return Outcome::Duplicate;
        }
        if m.bytes + part.data.len() > self.limits.max_message_bytes {
            return Outcome::Refused(Refused::Inconsistent);
        }
        m.bytes += part.data.len();
        *slot = Some(part.data);
        m.received += 1;
        if m.received < m.count {
            return Outcome::Stored {
                missing: m.count - m.received,
            };
        }
        let done = self.remove(&key);
        let letter = done
            .map(|m| m.parts.into_iter().flatten().flatten().collect())
            .unwrap_or_default();
        Outcome::Complete(letter)
    }

    fn remove(&mut self, key: &([u8; 32], MessageId)) -> Option<Incomplete> {
        let m = self.messages.remove(key)?;
        if let Some(n) = self.per_sender.get_mut(&key.0) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_sender.remove(&key.0);
            }
        }
        Some(m)
    }

    /// Drops every incomplete set whose expiry has passed; returns them.
    pub fn expire(&mut self, now: u64) -> Vec<([u8; 32], MessageId)> {
        let gone: Vec<_> = self
            .messages
            .iter()
            .filter(|(_, m)| m.expires_at <= now)
            .map(|(k, _)| *k)
            .collect();
        for k in &gone {
            self.remove(k);
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    const NOW: u64 = 1_800_000_000;
    const LIMITS: Limits = Limits {
        max_incomplete: 8,
        per_sender: 3,
        max_message_bytes: 70_000,
        max_ttl: 30 * 86_400,
    };

    fn id(n: u8) -> MessageId {
        MessageId([n; 16])
    }

    #[test]
    fn encode_decode_and_bounds() {
        let p = Part {
            id: id(1),
            index: 2,
            count: 3,
            expires_at: NOW,
            data: b"abc".to_vec(),
        };
        let b = p.encode();
        assert_eq!(b.len(), PART_HEADER + 3);
        assert_eq!(Part::decode(&b, 4000).unwrap(), p);
        assert_eq!(
            Part::decode(&b, 10),
            Err(FragmentError::TooLong {
                got: b.len(),
                max: 10
            })
        );
        assert_eq!(Part::decode(&b[..5], 4000), Err(FragmentError::Short(5)));
        let mut v = b.clone();
        v[0] = 9;
        assert_eq!(Part::decode(&v, 4000), Err(FragmentError::Version(9)));
        for (index, count) in [(3, 3), (0, 0), (0, MAX_PARTS + 1)] {
            let mut v = b.clone();
            v[17..19].copy_from_slice(&u16::to_be_bytes(index));
            v[19..21].copy_from_slice(&u16::to_be_bytes(count));
            assert_eq!(
                Part::decode(&v, 4000),
                Err(FragmentError::Index { index, count })
            );
        }
    }

    #[test]
    fn a_sixty_thousand_byte_letter_splits_into_packets() {
        let chunk = crate::crypto::sphinx::MAX_PLAINTEXT;
        let letter = vec![5u8; crate::wire::message::MAX_SEALED_BYTES];
        let parts = split(id(1), NOW + 60, &letter, chunk).unwrap();
        assert_eq!(parts.len(), 17);
        assert!(parts.iter().all(|p| p.encode().len() <= chunk));
        assert!(split(id(1), NOW, &vec![0u8; 1_000_000], chunk).is_err());
        assert_eq!(
            split(id(1), NOW, b"x", PART_HEADER),
            Err(FragmentError::Chunk(PART_HEADER))
        );
        let empty = split(id(1), NOW + 1, b"", chunk).unwrap();
        assert_eq!(empty.len(), 1);
        let mut r = Reassembly::new(LIMITS);
        assert_eq!(
            r.insert([1; 32], empty[0].clone(), NOW),
            Outcome::Complete(vec![])
        );
    }

    fn parts_of(n: u8, len: usize) -> Vec<Part> {
        split(id(n), NOW + 100, &vec![n; len], 129).unwrap()
    }

    #[test]
    fn bounds_refuse_before_storing() {
        let mut r = Reassembly::new(LIMITS);
        // Per sender: three incomplete messages, then refused.
        for n in 0..3 {
            let p = parts_of(n, 500);
            assert!(matches!(
                r.insert([1; 32], p[0].clone(), NOW),
                Outcome::Stored { .. }
            ));
        }
        let p = parts_of(3, 500);
        assert_eq!(
            r.insert([1; 32], p[0].clone(), NOW),
            Outcome::Refused(Refused::SenderBudget)
        );
        // In all: eight, then refused whoever sends.
        for s in 2..=6u8 {
            let p = parts_of(s, 500);
            assert!(matches!(
                r.insert([s; 32], p[0].clone(), NOW),
                Outcome::Stored { .. }
            ));
        }
        assert_eq!(r.len(), 8);
        assert_eq!(
            r.insert([9; 32], parts_of(9, 500)[0].clone(), NOW),
            Outcome::Refused(Refused::Full)
        );
        // Expired parts and inconsistent counts.
        let mut late = parts_of(0, 500)[1].clone();
        late.expires_at = NOW;
        assert_eq!(
            r.insert([1; 32], late, NOW),
            Outcome::Refused(Refused::Expired)
        );
        let mut other_count = parts_of(0, 500)[1].clone();
        other_count.count += 1;
        assert_eq!(
            r.insert([1; 32], other_count, NOW),
            Outcome::Refused(Refused::Inconsistent)
        );
    }

    #[test]
    fn a_message_is_bounded_in_bytes() {
        let small = Limits {
            max_message_bytes: 300,
            ..LIMITS
        };
        let mut r = Reassembly::new(small);
        let p = parts_of(1, 500);
        let mut outcomes = Vec::new();
        for part in p {
            outcomes.push(r.insert([1; 32], part, NOW));
        }
        assert!(outcomes.contains(&Outcome::Refused(Refused::Inconsistent)));
        assert!(!outcomes.iter().any(|o| matches!(o, Outcome::Complete(_))));
    }

    #[test]
    fn incomplete_sets_expire_with_the_message_or_the_node_limit() {
        let mut r = Reassembly::new(Limits {
            max_ttl: 50,
            ..LIMITS
        });
        let a = parts_of(1, 500); // expires at NOW + 100, capped at NOW + 50
        r.insert([1; 32], a[0].clone(), NOW);
        assert!(r.expire(NOW + 49).is_empty());
        assert_eq!(r.expire(NOW + 50), vec![([1; 32], id(1))]);
        assert!(r.is_empty());
        // Its budget is free again.
        for n in 0..3 {
            let p = parts_of(n, 500);
            assert!(matches!(
                r.insert([1; 32], p[0].clone(), NOW),
                Outcome::Stored { .. }
            ));
        }
    }

    #[test]
    fn the_same_id_from_two_senders_is_two_messages() {
        let mut r = Reassembly::new(LIMITS);
        let a = parts_of(1, 200);
        assert_eq!(a.len(), 2);
        r.insert([1; 32], a[0].clone(), NOW);
        assert!(matches!(
            r.insert([2; 32], a[1].clone(), NOW),
            Outcome::Stored { missing: 1 }
        ));
        assert_eq!(
            r.insert([1; 32], a[1].clone(), NOW),
            Outcome::Complete(vec![1; 200])
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Any split reassembles in any order, duplicates ignored.
        #[test]
        fn any_split_reassembles_in_any_order(
            letter in proptest::collection::vec(any::<u8>(), 0..6000),
            max_part in (PART_HEADER + 1)..2000usize,
            seed in any::<u64>(),
        ) {
            let parts = match split(id(7), NOW + 10, &letter, max_part) {
                Ok(p) => p,
                Err(FragmentError::TooManyParts { .. }) => return Ok(()),
                Err(e) => return Err(TestCaseError::fail(e.to_string())),
            };
            let mut rng = StdRng::seed_from_u64(seed);
            let mut order: Vec<Part> = parts.clone();
            for _ in 0..rng.gen_range(0..=parts.len()) {
                let dup = parts[rng.gen_range(0..parts.len())].clone();
                order.push(dup);
            }
            order.shuffle(&mut rng);
            // Through the wire encoding, as the recipient sees them.
            let order: Vec<Part> = order
                .iter()
                .map(|p| Part::decode(&p.encode(), max_part).unwrap())
                .collect();
            // The drop list refuses every part once the message is
            // delivered, so feeding stops at completion.
            let mut r = Reassembly::new(LIMITS);
            let mut done = None;
            for p in order {
                match r.insert([3; 32], p, NOW) {
                    Outcome::Complete(l) => {
                        done = Some(l);
                        break;
                    }
                    Outcome::Stored { .. } | Outcome::Duplicate => {}
                    Outcome::Refused(why) => prop_assert!(false, "refused: {why:?}"),
                }
            }
            prop_assert!(r.is_empty());
            prop_assert_eq!(done, Some(letter));
        }

        /// Random bytes never panic the part decoder.
        #[test]
        fn random_parts_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Part::decode(&bytes, 150);
        }
    }
}
