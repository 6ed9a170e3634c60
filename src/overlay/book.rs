//! The address book: what this node knows about other nodes.
//!
//! One entry per node address: its newest verified signed record, when the
//! node was last seen alive (a link with it, or a fresher record of it heard
//! through peer exchange), when this node last linked with it, and how many
//! dials to it have failed in a row.
//!
//! Kept in the manner of Bitcoin Core's addrman, so that no peer can take it
//! over by gossip:
//! - entries of nodes this node has linked to itself ("tried") are kept apart
//!   from those only heard of by gossip ("new"), in a table of their own that
//!   gossip never evicts from;
//! - new entries sit in [`NEW_BUCKETS`]-ish buckets of [`BUCKET_SIZE`], and the
//!   bucket of an entry is a keyed hash of the group of the source that told
//!   us (its IP, or /16) and of the entry's own address group: one source can
//!   reach only [`SOURCE_BUCKETS`] buckets, a bounded share of the table, and
//!   a full bucket only ever loses its own worst entry;
//! - records older than [`MAX_RECORD_AGE_SECS`] (or dated in 1970) are refused.
//!
//! It lives in memory; the NeighbourManager writes its changes
//! ([`AddressBook::take_changes`]) to the store, and loads it from there at start.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};

use rand::seq::IteratorRandom;
use rand::Rng;

use crate::crypto::{Address, SignedRecord};

/// Default bound on the number of new (gossiped) entries.
pub const BOOK_CAPACITY: usize = 1024;
/// Entries per bucket of the new table.
pub const BUCKET_SIZE: usize = 16;
/// Buckets of the new table at [`BOOK_CAPACITY`] (capacity / [`BUCKET_SIZE`]).
pub const NEW_BUCKETS: usize = BOOK_CAPACITY / BUCKET_SIZE;
/// How many new buckets one source group can reach: at most
/// `SOURCE_BUCKETS / buckets` of the new table is any one source's doing.
pub const SOURCE_BUCKETS: u64 = 4;
/// The tried table holds this share of the capacity (1/4).
pub const TRIED_SHARE: usize = 4;
/// A record older than this is refused: a live node re-signs its record
/// every few minutes, so this is only ever a dead node or a replay.
pub const MAX_RECORD_AGE_SECS: u64 = 3 * 24 * 3600;
/// An entry whose dials failed this many times in a row is forgotten.
pub const MAX_FAILURES: u32 = 10;
/// An entry not seen alive for this long is forgotten.
pub const STALE_AFTER_SECS: u64 = 30 * 24 * 3600;
/// Only entries seen alive this recently are passed on in peer exchange.
pub const FRESH_SECS: u64 = 3 * 3600;

/// What the book holds about one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerEntry {
    pub record: SignedRecord,
    /// Seconds since the epoch when the node was last known to be alive.
    pub last_seen: u64,
    /// Seconds since the epoch of the last link with it (`None`: never).
    pub last_success: Option<u64>,
    /// Dials that failed since the last success.
    pub failures: u32,
    /// This node has linked to it itself: in the tried table.
    pub tried: bool,
    /// The group (see [`group`]) of the peer that told us of it, for a new
    /// entry; `None` if we learned it ourselves.
    pub source: Option<IpAddr>,
}

impl PeerEntry {
    pub fn new(record: SignedRecord, last_seen: u64) -> PeerEntry {
        PeerEntry {
            record,
            last_seen,
            last_success: None,
            failures: 0,
            tried: false,
            source: None,
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

/// The group an address counts in for bucketing: a public IPv4 address by
/// its /16, a public IPv6 address by its /32; loopback and private addresses
/// (one host, one LAN) by the whole address.
pub fn group(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) if v4.is_loopback() || v4.is_private() || v4.is_link_local() => ip,
        IpAddr::V4(v4) => {
            let o = v4.octets();
            IpAddr::V4([o[0], o[1], 0, 0].into())
        }
        IpAddr::V6(v6) if v6.is_loopback() => ip,
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6([s[0], s[1], 0, 0, 0, 0, 0, 0].into())
        }
    }
}

/// Where a record offered to the book came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The node itself, on a link with us.
    Link,
    /// Gossip from a peer whose listen IP is this.
    Peer(IpAddr),
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
    /// Its bucket is full of better entries.
    NoRoom,
    /// Older than [`MAX_RECORD_AGE_SECS`].
    TooOld,
}

#[derive(Debug)]
pub struct AddressBook {
    key: u64,
    buckets: usize,
    tried_capacity: usize,
    entries: HashMap<Address, PeerEntry>,
    /// New entries per bucket.
    bucket_len: HashMap<u64, usize>,
    tried: usize,
    by_listen: HashMap<SocketAddr, Address>,
    dirty: HashSet<Address>,
    removed: HashSet<Address>,
}

impl AddressBook {
    /// A book of about `capacity` new entries (and a quarter as many tried),
    /// bucketed with a random secret key.
    pub fn new(capacity: usize) -> AddressBook {
        AddressBook::with_key(capacity, rand::random())
    }

    /// Like [`AddressBook::new`] with a chosen bucketing key (the simulator's
    /// runs repeat).
    pub fn with_key(capacity: usize, key: u64) -> AddressBook {
        AddressBook {
            key,
            buckets: (capacity / BUCKET_SIZE).max(1),
            tried_capacity: (capacity / TRIED_SHARE).max(1),
            entries: HashMap::new(),
            bucket_len: HashMap::new(),
            tried: 0,
            by_listen: HashMap::new(),
            dirty: HashSet::new(),
            removed: HashSet::new(),
        }
    }

    fn hash(&self, parts: impl Hash) -> u64 {
        let mut h = DefaultHasher::new();
        self.key.hash(&mut h);
        parts.hash(&mut h);
        h.finish()
    }

    /// The new bucket of an entry heard from `source` (a group) naming `listen`.
    fn bucket(&self, source: Option<IpAddr>, listen: &SocketAddr) -> u64 {
        let src = source.unwrap_or_else(|| group(listen.ip()));
        let spread = self.hash((1u8, group(listen.ip()))) % SOURCE_BUCKETS;
        self.hash((2u8, src, spread)) % self.buckets as u64
    }

    /// Fills the book from stored entries (not marked as changed); what does
    /// not fit its bucket or the tried table is left out.
    pub fn load(&mut self, entries: impl IntoIterator<Item = PeerEntry>) {
        for e in entries {
            if self.entries.contains_key(&e.address()) {
                continue;
            }
            if e.tried {
                if self.tried >= self.tried_capacity {
                    continue;
                }
                self.tried += 1;
            } else {
                let b = self.bucket(e.source, &e.listen());
                let n = self.bucket_len.entry(b).or_default();
                if *n >= BUCKET_SIZE {
                    continue;
                }
                *n += 1;
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

    /// Entries in the tried table.
    pub fn tried_len(&self) -> usize {
        self.tried
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
    pub fn offer(&mut self, record: SignedRecord, seen: u64, now: u64, source: Source) -> Offer {
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
        if record.record.time.saturating_add(MAX_RECORD_AGE_SECS) < now {
            return Offer::TooOld;
        }
        let mut entry = PeerEntry::new(record, seen);
        entry.source = match source {
            Source::Link => None,
            Source::Peer(ip) => Some(group(ip)),
        };
        let b = self.bucket(entry.source, &entry.listen());
        if self.bucket_len.get(&b).copied().unwrap_or(0) >= BUCKET_SIZE {
            // Push out the bucket's worst new entry, if the newcomer is better.
            let worst = self
                .entries
                .values()
                .filter(|e| !e.tried && self.bucket(e.source, &e.listen()) == b)
                .max_by_key(|e| e.badness(now))
                .map(|e| (e.address(), e.badness(now)));
            match worst {
                Some((a, badness)) if badness > entry.badness(now) => {
                    self.remove(&a);
                }
                _ => return Offer::NoRoom,
            }
        }
        *self.bucket_len.entry(b).or_default() += 1;
        self.index(&entry);
        self.entries.insert(address, entry);
        self.touch(address);
        Offer::New
    }

    /// A link with the node is up, `record` verified on it: the entry is
    /// updated or made, straight into the tried table.
    pub fn linked(&mut self, record: SignedRecord, now: u64) {
        let address = record.record.address;
        if !self.entries.contains_key(&address) {
            if self.tried >= self.tried_capacity {
                let oldest = self
                    .entries
                    .values()
                    .filter(|e| e.tried)
                    .min_by_key(|e| (e.last_success, e.address()))
                    .map(PeerEntry::address);
                if let Some(o) = oldest {
                    self.demote(&o);
                }
            }
            let mut e = PeerEntry::new(record, now);
            e.tried = true;
            self.tried += 1;
            self.index(&e);
            self.entries.insert(address, e);
        } else {
            self.offer(record, now, now, Source::Link);
        }
        self.succeeded(&address, now);
    }

    /// A link with the node is up: it is alive and reachable, and moves to
    /// the tried table (pushing the tried entry linked longest ago back to
    /// new, if the table is full).
    pub fn succeeded(&mut self, address: &Address, now: u64) {
        let Some(e) = self.entries.get(address) else {
            return;
        };
        if !e.tried {
            let b = self.bucket(e.source, &e.listen());
            if self.tried >= self.tried_capacity {
                let oldest = self
                    .entries
                    .values()
                    .filter(|e| e.tried)
                    .min_by_key(|e| (e.last_success, e.address()))
                    .map(PeerEntry::address);
                if let Some(o) = oldest {
                    self.demote(&o);
                }
            }
            if let Some(n) = self.bucket_len.get_mut(&b) {
                *n = n.saturating_sub(1);
            }
            self.tried += 1;
        }
        if let Some(e) = self.entries.get_mut(address) {
            e.tried = true;
            e.last_seen = now;
            e.last_success = Some(now);
            e.failures = 0;
        }
        self.touch(*address);
    }

    /// Moves a tried entry back to the new table (or out, if its bucket is full).
    fn demote(&mut self, address: &Address) {
        let Some(e) = self.entries.get(address) else {
            return;
        };
        let b = self.bucket(e.source, &e.listen());
        if self.bucket_len.get(&b).copied().unwrap_or(0) >= BUCKET_SIZE {
            self.remove(address);
            return;
        }
        *self.bucket_len.entry(b).or_default() += 1;
        self.tried = self.tried.saturating_sub(1);
        if let Some(e) = self.entries.get_mut(address) {
            e.tried = false;
        }
        self.touch(*address);
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
        if e.tried {
            self.tried = self.tried.saturating_sub(1);
        } else {
            let b = self.bucket(e.source, &e.listen());
            if let Some(n) = self.bucket_len.get_mut(&b) {
                *n = n.saturating_sub(1);
            }
        }
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
    const GOSSIP: Source = Source::Peer(std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 9, 9, 9)));

    fn record(id: &Identity, host: u8, time: u64) -> SignedRecord {
        let listen = format!("127.0.9.{host}:58008").parse().unwrap();
        SignedRecord::sign(id, listen, true, time)
    }

    #[test]
    fn keeps_the_newest_record_and_indexes_its_listen() {
        let id = Identity::generate();
        let mut book = AddressBook::new(8);
        assert_eq!(
            book.offer(record(&id, 2, NOW - 10), NOW - 10, NOW, GOSSIP),
            Offer::New
        );
        assert_eq!(
            book.offer(record(&id, 3, NOW), NOW, NOW, GOSSIP),
            Offer::Newer
        );
        assert_eq!(
            book.offer(record(&id, 2, NOW - 10), NOW, NOW, GOSSIP),
            Offer::Known
        );
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
            book.offer(record(id, 2 + i as u8, NOW), NOW, NOW, GOSSIP);
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
        book.offer(record(&id, 2, NOW), NOW, NOW, GOSSIP);
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
    fn full_bucket_replaces_its_worst_entry_only_with_a_better_one() {
        // One bucket of BUCKET_SIZE: every entry lands in it.
        let mut book = AddressBook::new(BUCKET_SIZE);
        let ids: Vec<Identity> = (0..BUCKET_SIZE).map(|_| Identity::generate()).collect();
        for (i, id) in ids.iter().enumerate() {
            let seen = if i == 0 { NOW - 100 } else { NOW };
            book.offer(record(id, 2 + i as u8, NOW), seen, NOW, GOSSIP);
        }
        assert_eq!(book.len(), BUCKET_SIZE);
        // Equally old as the worst: no room.
        let c = Identity::generate();
        assert_eq!(
            book.offer(record(&c, 200, NOW), NOW - 100, NOW, GOSSIP),
            Offer::NoRoom
        );
        // Fresher than the worst (ids[0]): it goes.
        assert_eq!(
            book.offer(record(&c, 200, NOW), NOW, NOW, GOSSIP),
            Offer::New
        );
        assert_eq!(book.len(), BUCKET_SIZE);
        assert!(book.get(&ids[0].address()).is_none());
    }

    fn spread_record(id: &Identity, i: u32, time: u64) -> SignedRecord {
        let ip = std::net::Ipv4Addr::from(0x5000_0000 + (i << 16) + 1);
        SignedRecord::sign(id, SocketAddr::new(ip.into(), 58008), true, time)
    }

    /// One source, however many records (at as many /16s) it sends, fills
    /// at most SOURCE_BUCKETS of the buckets.
    #[test]
    fn one_source_fills_a_bounded_share_of_the_new_table() {
        let mut book = AddressBook::new(BOOK_CAPACITY);
        let attacker = Source::Peer("80.1.2.3".parse().unwrap());
        for i in 0..2000 {
            book.offer(
                spread_record(&Identity::generate(), i, NOW),
                NOW,
                NOW,
                attacker,
            );
        }
        let most = SOURCE_BUCKETS as usize * BUCKET_SIZE;
        assert!(book.len() <= most, "{} entries from one source", book.len());
        // Honest sources elsewhere still get in.
        let mut taken = 0;
        for i in 0..50u8 {
            let honest = Source::Peer(std::net::Ipv4Addr::new(81, i, 2, 3).into());
            let r = spread_record(&Identity::generate(), 3000 + u32::from(i), NOW);
            if book.offer(r, NOW, NOW, honest) == Offer::New {
                taken += 1;
            }
        }
        assert!(taken >= 40, "{taken} of 50 honest records taken");
    }

    /// Gossip never evicts an entry of a node this node linked to.
    #[test]
    fn gossip_never_evicts_a_tried_entry() {
        let mut book = AddressBook::new(BUCKET_SIZE);
        let friend = Identity::generate();
        book.linked(record(&friend, 2, NOW - 1000), NOW - 1000);
        assert_eq!(book.tried_len(), 1);
        for i in 0..500 {
            book.offer(
                spread_record(&Identity::generate(), i, NOW),
                NOW,
                NOW,
                GOSSIP,
            );
        }
        let e = book.get(&friend.address()).expect("the tried entry stays");
        assert!(e.tried);
        assert!(book.len() <= BUCKET_SIZE + 1);
    }

    #[test]
    fn old_and_1970_records_are_refused() {
        let mut book = AddressBook::new(64);
        let id = Identity::generate();
        assert_eq!(
            book.offer(record(&id, 2, 0), NOW, NOW, GOSSIP),
            Offer::TooOld
        );
        let forty_days = NOW - 40 * 24 * 3600;
        assert_eq!(
            book.offer(record(&id, 2, forty_days), NOW, NOW, GOSSIP),
            Offer::TooOld
        );
        assert!(book.is_empty());
        assert_eq!(
            book.offer(record(&id, 2, NOW - 3600), NOW, NOW, GOSSIP),
            Offer::New
        );
    }

    #[test]
    fn sample_is_bounded_fresh_and_skips() {
        let ids: Vec<Identity> = (0..20).map(|_| Identity::generate()).collect();
        let mut book = AddressBook::new(64);
        for (i, id) in ids.iter().enumerate() {
            let seen = if i < 5 { NOW - FRESH_SECS - 1 } else { NOW };
            book.offer(
                record(id, 2 + i as u8, NOW - FRESH_SECS * 2),
                seen,
                NOW,
                GOSSIP,
            );
        }
        let skip: HashSet<Address> = [ids[6].address()].into_iter().collect();
        let mut rng = rand::thread_rng();
        let s = book.sample(100, NOW, &skip, &mut rng);
        assert_eq!(s.len(), 14);
        assert!(s.iter().all(|r| r.record.address != ids[6].address()));
        assert_eq!(book.sample(4, NOW, &skip, &mut rng).len(), 4);
    }
}
