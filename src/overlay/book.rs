//! The address book: what this node knows about other nodes.
//!
//! One entry per node address: its newest verified signed record, when the
//! node was last seen alive (a link with it, or a fresher record of it heard
//! through peer exchange), when this node last linked with it, and how many
//! dials to it have failed in a row. The book is bounded: a newcomer pushes
//! out the worst entry, and [`AddressBook::sweep`] ages out entries that keep
//! failing or have not been seen for a long time. It lives in memory; the
//! NeighbourManager writes its changes ([`AddressBook::take_changes`]) to the
//! store, and loads it from there at start.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use rand::seq::IteratorRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::crypto::{Address, SignedRecord};

/// Default bound on the number of entries.
pub const BOOK_CAPACITY: usize = 1024;
/// An entry whose dials failed this many times in a row is forgotten.
pub const MAX_FAILURES: u32 = 10;
/// An entry not seen alive for this long is forgotten.
pub const STALE_AFTER_SECS: u64 = 30 * 24 * 3600;
/// Only entries seen alive this recently are passed on in peer exchange.
pub const FRESH_SECS: u64 = 3 * 3600;

/// What the book holds about one node; also its stored form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerEntry {
    pub record: SignedRecord,
    /// Seconds since the epoch when the node was last known to be alive.
    pub last_seen: u64,
    /// Seconds since the epoch of the last link with it (`None`: never).
    pub last_success: Option<u64>,
    /// Dials that failed since the last success.
    pub failures: u32,
}

impl PeerEntry {
    pub fn new(record: SignedRecord, last_seen: u64) -> PeerEntry {
        PeerEntry {
            record,
            last_seen,
            last_success: None,
            failures: 0,
        }
    }

    pub fn address(&self) -> Address {
        self.record.record.address
    }

    pub fn listen(&self) -> SocketAddr {
        self.record.record.listen
    }

    /// Worth forgetting: it keeps failing, or has not been seen for long.
    pub fn is_terrible(&self, now: u64) -> bool {
        self.failures >= MAX_FAILURES || self.last_seen.saturating_add(STALE_AFTER_SECS) < now
    }

    /// Worth recommending to others.
    pub fn is_fresh(&self, now: u64) -> bool {
        self.failures == 0 && self.last_seen.saturating_add(FRESH_SECS) >= now
    }

    /// Lower is better when choosing what to keep.
    fn badness(&self, now: u64) -> (bool, u32, u64) {
        (
            self.is_terrible(now),
            self.failures,
            now.saturating_sub(self.last_seen),
        )
    }
}

/// How a record offered to the book was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    /// A node not known before.
    New,
    /// A newer record of a known node.
    Newer,
    /// The same or an older record: nothing changed but perhaps `last_seen`.
    Known,
    /// The book is full of better entries.
    NoRoom,
}

#[derive(Debug)]
pub struct AddressBook {
    capacity: usize,
    entries: HashMap<Address, PeerEntry>,
    by_listen: HashMap<SocketAddr, Address>,
    dirty: HashSet<Address>,
    removed: HashSet<Address>,
}

impl AddressBook {
    pub fn new(capacity: usize) -> AddressBook {
        AddressBook {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            by_listen: HashMap::new(),
            dirty: HashSet::new(),
            removed: HashSet::new(),
        }
    }

    /// Fills the book from stored entries (not marked as changed).
    pub fn load(&mut self, entries: impl IntoIterator<Item = PeerEntry>) {
        for e in entries {
            if self.entries.len() >= self.capacity {
                break;
            }
            self.index(&e);
            self.entries.insert(e.address(), e);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, address: &Address) -> Option<&PeerEntry> {
        self.entries.get(address)
    }

    pub fn by_listen(&self, listen: &SocketAddr) -> Option<&PeerEntry> {
        self.by_listen.get(listen).and_then(|a| self.entries.get(a))
    }

    pub fn entries(&self) -> impl Iterator<Item = &PeerEntry> {
        self.entries.values()
    }

    fn index(&mut self, e: &PeerEntry) {
        let listen = e.listen();
        let newer = match self
            .by_listen
            .get(&listen)
            .and_then(|a| self.entries.get(a))
        {
            Some(other) => other.record.record.time <= e.record.record.time,
            None => true,
        };
        if newer {
            self.by_listen.insert(listen, e.address());
        }
    }

    fn unindex(&mut self, e: &PeerEntry) {
        if self.by_listen.get(&e.listen()) == Some(&e.address()) {
            self.by_listen.remove(&e.listen());
        }
    }

    fn touch(&mut self, address: Address) {
        self.removed.remove(&address);
        self.dirty.insert(address);
    }

    /// Offers a record the caller has verified, seen alive at `seen`.
    pub fn offer(&mut self, record: SignedRecord, seen: u64, now: u64) -> Offer {
        let address = record.record.address;
        if let Some(old) = self.entries.get(&address) {
            let newer = record.record.time > old.record.record.time;
            if !newer && seen <= old.last_seen {
                return Offer::Known;
            }
            let mut e = old.clone();
            if newer {
                self.unindex(&e);
                e.record = record;
            }
            e.last_seen = e.last_seen.max(seen);
            self.index(&e);
            self.entries.insert(address, e);
            self.touch(address);
            return if newer { Offer::Newer } else { Offer::Known };
        }
        let entry = PeerEntry::new(record, seen);
        if self.entries.len() >= self.capacity {
            // Push out the worst entry, if the newcomer is better than it.
            let worst = self
                .entries
                .values()
                .max_by_key(|e| e.badness(now))
                .map(|e| (e.address(), e.badness(now)));
            match worst {
                Some((a, badness)) if badness > entry.badness(now) => {
                    self.remove(&a);
                }
                _ => return Offer::NoRoom,
            }
        }
        self.index(&entry);
        self.entries.insert(address, entry);
        self.touch(address);
        Offer::New
    }

    /// A link with the node is up: it is alive and reachable.
    pub fn succeeded(&mut self, address: &Address, now: u64) {
        if let Some(e) = self.entries.get_mut(address) {
            e.last_seen = now;
            e.last_success = Some(now);
            e.failures = 0;
            self.touch(*address);
        }
    }

    /// The node is alive (a neighbour, or it answered), without a new link.
    pub fn seen(&mut self, address: &Address, now: u64) {
        if let Some(e) = self.entries.get_mut(address) {
            if e.last_seen < now {
                e.last_seen = now;
                self.touch(*address);
            }
        }
    }

    /// A dial to `listen` failed.
    pub fn failed(&mut self, listen: &SocketAddr) {
        if let Some(address) = self.by_listen.get(listen).copied() {
            if let Some(e) = self.entries.get_mut(&address) {
                e.failures = e.failures.saturating_add(1);
                self.touch(address);
            }
        }
    }

    pub fn remove(&mut self, address: &Address) -> Option<PeerEntry> {
        let e = self.entries.remove(address)?;
        self.unindex(&e);
        self.dirty.remove(address);
        self.removed.insert(*address);
        Some(e)
    }

    /// Forgets terrible entries, except those in `keep` (current neighbours).
    /// Returns how many were forgotten.
    pub fn sweep(&mut self, now: u64, keep: &HashSet<Address>) -> usize {
        let doomed: Vec<Address> = self
            .entries
            .values()
            .filter(|e| e.is_terrible(now) && !keep.contains(&e.address()))
            .map(PeerEntry::address)
            .collect();
        for a in &doomed {
            self.remove(a);
        }
        doomed.len()
    }

    /// Up to `n` fresh records picked at random, none of them in `skip`.
    pub fn sample(
        &self,
        n: usize,
        now: u64,
        skip: &HashSet<Address>,
        rng: &mut impl Rng,
    ) -> Vec<SignedRecord> {
        self.entries
            .values()
            .filter(|e| e.is_fresh(now) && !skip.contains(&e.address()))
            .choose_multiple(rng, n)
            .into_iter()
            .map(|e| e.record.clone())
            .collect()
    }

    /// Entries changed and addresses removed since the last call, for the store.
    pub fn take_changes(&mut self) -> (Vec<PeerEntry>, Vec<Address>) {
        let changed = self
            .dirty
            .drain()
            .filter_map(|a| self.entries.get(&a).cloned())
            .collect();
        let removed = self.removed.drain().collect();
        (changed, removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Identity;

    const NOW: u64 = 1_800_000_000;

    fn record(id: &Identity, host: u8, time: u64) -> SignedRecord {
        let listen = format!("127.0.9.{host}:58008").parse().unwrap();
        SignedRecord::sign(id, listen, true, time)
    }

    #[test]
    fn keeps_the_newest_record_and_indexes_its_listen() {
        let id = Identity::generate();
        let mut book = AddressBook::new(8);
        assert_eq!(
            book.offer(record(&id, 2, NOW - 10), NOW - 10, NOW),
            Offer::New
        );
        assert_eq!(book.offer(record(&id, 3, NOW), NOW, NOW), Offer::Newer);
        assert_eq!(book.offer(record(&id, 2, NOW - 10), NOW, NOW), Offer::Known);
        let e = book.get(&id.address()).unwrap();
        assert_eq!(e.listen(), "127.0.9.3:58008".parse().unwrap());
        assert!(book
            .by_listen(&"127.0.9.2:58008".parse().unwrap())
            .is_none());
        assert!(book
            .by_listen(&"127.0.9.3:58008".parse().unwrap())
            .is_some());
    }

    #[test]
    fn repeated_failures_and_staleness_age_out() {
        let ids: Vec<Identity> = (0..3).map(|_| Identity::generate()).collect();
        let mut book = AddressBook::new(8);
        for (i, id) in ids.iter().enumerate() {
            book.offer(record(id, 2 + i as u8, NOW), NOW, NOW);
        }
        let failing: SocketAddr = "127.0.9.2:58008".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            book.failed(&failing);
        }
        let later = NOW + STALE_AFTER_SECS + 1;
        book.seen(&ids[2].address(), later);
        let keep = HashSet::new();
        // ids[0] keeps failing, ids[1] was not seen for too long.
        assert_eq!(book.sweep(later, &keep), 2);
        assert!(book.get(&ids[2].address()).is_some());
        let (_, removed) = book.take_changes();
        assert_eq!(removed.len(), 2);
    }

    #[test]
    fn a_success_resets_failures_and_neighbours_are_kept() {
        let id = Identity::generate();
        let mut book = AddressBook::new(8);
        book.offer(record(&id, 2, NOW), NOW, NOW);
        for _ in 0..MAX_FAILURES {
            book.failed(&"127.0.9.2:58008".parse().unwrap());
        }
        let keep: HashSet<Address> = [id.address()].into_iter().collect();
        assert_eq!(book.sweep(NOW, &keep), 0);
        book.succeeded(&id.address(), NOW + 1);
        let e = book.get(&id.address()).unwrap();
        assert_eq!((e.failures, e.last_success), (0, Some(NOW + 1)));
        assert_eq!(book.sweep(NOW + 1, &HashSet::new()), 0);
    }

    #[test]
    fn full_book_replaces_its_worst_entry_only_with_a_better_one() {
        let mut book = AddressBook::new(2);
        let a = Identity::generate();
        let b = Identity::generate();
        book.offer(record(&a, 2, NOW), NOW, NOW);
        book.offer(record(&b, 3, NOW), NOW - 100, NOW);
        // Equally old as the worst: no room.
        let c = Identity::generate();
        assert_eq!(
            book.offer(record(&c, 4, NOW), NOW - 100, NOW),
            Offer::NoRoom
        );
        // Fresher than the worst (b): b goes.
        assert_eq!(book.offer(record(&c, 4, NOW), NOW, NOW), Offer::New);
        assert_eq!(book.len(), 2);
        assert!(book.get(&b.address()).is_none());
    }

    #[test]
    fn sample_is_bounded_fresh_and_skips() {
        let ids: Vec<Identity> = (0..20).map(|_| Identity::generate()).collect();
        let mut book = AddressBook::new(64);
        for (i, id) in ids.iter().enumerate() {
            let seen = if i < 5 { NOW - FRESH_SECS - 1 } else { NOW };
            book.offer(record(id, 2 + i as u8, NOW - FRESH_SECS * 2), seen, NOW);
        }
        let skip: HashSet<Address> = [ids[6].address()].into_iter().collect();
        let mut rng = rand::thread_rng();
        let s = book.sample(100, NOW, &skip, &mut rng);
        assert_eq!(s.len(), 14);
        assert!(s.iter().all(|r| r.record.address != ids[6].address()));
        assert_eq!(book.sample(4, NOW, &skip, &mut rng).len(), 4);
    }
}
