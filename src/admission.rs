//! Admission of inbound handshakes: a bounded table of half-open (pending)
//! connections that silent or slow connections cannot fill for good.
//!
//! Every accepted peer connection takes a slot from the moment it is accepted
//! until its handshake and record exchange end (at most the Noise handshake
//! timeout plus the record timeout). The table holds at most `per_source`
//! pending handshakes from one source and at most `total` in all. It never
//! refuses a newcomer; instead an older pending handshake makes room:
//!
//! 1. a source at its own limit gives up its own oldest pending handshake;
//! 2. otherwise, when the table is full, the source holding the most pending
//!    handshakes gives up its oldest (among sources holding equally many, the
//!    one whose oldest is oldest), so when every source holds one, this is
//!    simply the oldest pending handshake of all.
//!
//! A source is an IPv4 address, or the /64 prefix of an IPv6 address (one
//! host usually holds a whole /64); an IPv4-mapped IPv6 address counts as
//! its IPv4 address.
//!
//! # What is guaranteed
//!
//! A pending handshake is dropped only in one of these cases:
//! - its own source opened `per_source` newer connections while it was
//!   pending (a source can hold only its share, never more);
//! - the table was full and its source held at least as many pending
//!   handshakes as every other source. For a newcomer with a single
//!   connection that means: the table held `total` pending handshakes from
//!   `total` distinct sources, it was the oldest of them, and so at least
//!   `total` newer connections were admitted while its handshake ran.
//!
//! So an attacker with fewer than `total` distinct sources (IPv4 addresses or
//! IPv6 /64s) can never drop a newcomer's handshake, however fast it renews
//! its connections; one with more must open `total` connections (64 by
//! default) during each newcomer's handshake, which takes a few round trips
//! (milliseconds on a LAN), not the seconds a silent connection may hold a
//! slot. Nothing here prevents a flood from costing CPU: every connection is
//! still accepted and, when dropped, closed at once.
//!
//! The table is pure: no sockets, no clock; the Listener stores the abort
//! handle of each handshake task as the value `V`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};

/// Identifies one pending handshake; tickets grow with admission order.
pub type Ticket = u64;

/// Who a per-source limit applies to: an IPv4 address or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Source(IpAddr);

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(IpAddr::V4(v4)),
                None => {
                    let s = v6.segments();
                    Source(IpAddr::V6(Ipv6Addr::new(
                        s[0], s[1], s[2], s[3], 0, 0, 0, 0,
                    )))
                }
            },
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Why a pending handshake was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Its own source was at its limit.
    SourceFull,
    /// The whole table was full.
    TableFull,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::SourceFull => "too many pending handshakes from this source",
            Reason::TableFull => "too many pending handshakes",
        }
    }
}

/// A pending handshake that made room for a newer one.
#[derive(Debug, PartialEq, Eq)]
pub struct Evicted<V> {
    pub ticket: Ticket,
    pub ip: IpAddr,
    pub reason: Reason,
    pub value: V,
}

struct Entry<V> {
    ip: IpAddr,
    source: Source,
    value: V,
}

/// The table of pending handshakes (see the module doc).
pub struct Admission<V> {
    per_source: usize,
    total: usize,
    next: Ticket,
    /// Every pending handshake, oldest first.
    entries: BTreeMap<Ticket, Entry<V>>,
    /// Each source's pending handshakes, oldest first; never empty.
    sources: HashMap<Source, VecDeque<Ticket>>,
}

impl<V> Admission<V> {
    /// A table of at most `per_source` pending handshakes per source and
    /// Changes the bounds (a config reload); pending handshakes over the new
    /// ones make room as new connections come, as always.
    pub fn set_limits(&mut self, per_source: usize, total: usize) {
        self.total = total.max(1);
        self.per_source = per_source.clamp(1, self.total);
    }

    /// `total` in all (each at least 1; `per_source` at most `total`).
    pub fn new(per_source: usize, total: usize) -> Admission<V> {
        let total = total.max(1);
        Admission {
            per_source: per_source.clamp(1, total),
            total,
            next: 0,
            entries: BTreeMap::new(),
            sources: HashMap::new(),
        }
    }

    /// Admits a new handshake from `ip`; `value` builds what the table keeps
    /// for it from its ticket. Returns the ticket and the pending handshake
    /// that made room for it, if one had to.
    pub fn admit(
        &mut self,
        ip: IpAddr,
        value: impl FnOnce(Ticket) -> V,
    ) -> (Ticket, Option<Evicted<V>>) {
        let source = Source::of(ip);
        let own = self.sources.get(&source).map_or(0, VecDeque::len);
        let evicted = if own >= self.per_source {
            self.sources
                .get(&source)
                .and_then(|q| q.front().copied())
                .and_then(|t| self.evict(t, Reason::SourceFull))
        } else if self.entries.len() >= self.total {
            self.largest_oldest()
                .and_then(|t| self.evict(t, Reason::TableFull))
        } else {
            None
        };
        let ticket = self.next;
        self.next += 1;
        self.entries.insert(
            ticket,
            Entry {
                ip,
                source,
                value: value(ticket),
            },
        );
        self.sources.entry(source).or_default().push_back(ticket);
        (ticket, evicted)
    }

    /// Ends a pending handshake (it finished or failed); its value, or None
    /// if it was already dropped to make room.
    pub fn finish(&mut self, ticket: Ticket) -> Option<V> {
        let entry = self.entries.remove(&ticket)?;
        if let Some(q) = self.sources.get_mut(&entry.source) {
            q.retain(|t| *t != ticket);
            if q.is_empty() {
                self.sources.remove(&entry.source);
            }
        }
        Some(entry.value)
    }

    /// Pending handshakes in all.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Pending handshakes from the source of `ip`.
    pub fn pending_from(&self, ip: IpAddr) -> usize {
        self.sources.get(&Source::of(ip)).map_or(0, VecDeque::len)
    }

    /// Whether `ticket` is still pending.
    pub fn contains(&self, ticket: Ticket) -> bool {
        self.entries.contains_key(&ticket)
    }

    /// The oldest ticket of the source holding the most (ties: oldest).
    /// Scans the sources: at most `total` of them.
    fn largest_oldest(&self) -> Option<Ticket> {
        self.sources
            .values()
            .filter_map(|q| q.front().map(|t| (q.len(), std::cmp::Reverse(*t))))
            .max()
            .map(|(_, std::cmp::Reverse(t))| t)
    }

    fn evict(&mut self, ticket: Ticket, reason: Reason) -> Option<Evicted<V>> {
        let ip = self.entries.get(&ticket)?.ip;
        let value = self.finish(ticket)?;
        Some(Evicted {
            ticket,
            ip,
            reason,
            value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    fn admit(t: &mut Admission<Ticket>, ip: IpAddr) -> (Ticket, Option<Evicted<Ticket>>) {
        t.admit(ip, |ticket| ticket)
    }

    #[test]
    fn one_source_never_holds_more_than_its_share() {
        let mut t = Admission::new(3, 10);
        let first: Vec<_> = (0..3).map(|_| admit(&mut t, v4(1)).0).collect();
        assert_eq!(t.pending_from(v4(1)), 3);
        // The fourth pushes out the source's own oldest, and so on.
        for (i, expected) in first.iter().enumerate() {
            let (_, ev) = admit(&mut t, v4(1));
            let ev = ev.expect("its own oldest makes room");
            assert_eq!(ev.ticket, *expected, "round {i}");
            assert_eq!(ev.value, *expected);
            assert_eq!(ev.reason, Reason::SourceFull);
            assert_eq!(ev.ip, v4(1));
            assert_eq!(t.pending_from(v4(1)), 3);
        }
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn full_table_drops_the_oldest_when_every_source_holds_one() {
        let mut t = Admission::new(2, 4);
        let tickets: Vec<_> = (1..=4).map(|i| admit(&mut t, v4(i)).0).collect();
        let (_, ev) = admit(&mut t, v4(9));
        let ev = ev.expect("room is made");
        assert_eq!(ev.ticket, tickets[0]);
        assert_eq!(ev.reason, Reason::TableFull);
        assert_eq!(t.len(), 4);
        let (_, ev) = admit(&mut t, v4(10));
        assert_eq!(ev.map(|e| e.ticket), Some(tickets[1]));
    }

    #[test]
    fn full_table_takes_room_from_the_largest_holder() {
        let mut t = Admission::new(3, 6);
        let newcomer = admit(&mut t, v4(1)).0; // oldest of all
        let a: Vec<_> = (0..3).map(|_| admit(&mut t, v4(2)).0).collect();
        let b: Vec<_> = (0..2).map(|_| admit(&mut t, v4(3)).0).collect();
        assert_eq!(t.len(), 6);
        // .2 holds 3: its oldest goes, though the newcomer is older.
        let (_, ev) = admit(&mut t, v4(4));
        assert_eq!(ev.map(|e| e.ticket), Some(a[0]));
        // Now .2 and .3 hold 2 each: the older of their oldest goes (.2's).
        let (_, ev) = admit(&mut t, v4(5));
        assert_eq!(ev.map(|e| e.ticket), Some(a[1]));
        let (_, ev) = admit(&mut t, v4(6));
        assert_eq!(ev.map(|e| e.ticket), Some(b[0]));
        assert!(t.contains(newcomer));
    }

    #[test]
    fn finish_frees_the_slot_once() {
        let mut t = Admission::new(2, 2);
        let (a, _) = admit(&mut t, v4(1));
        let (b, _) = admit(&mut t, v4(2));
        assert_eq!(t.finish(a), Some(a));
        assert_eq!(t.finish(a), None);
        assert_eq!(t.pending_from(v4(1)), 0);
        let (_, ev) = admit(&mut t, v4(3));
        assert!(ev.is_none(), "a finished handshake left room");
        let (_, ev) = admit(&mut t, v4(4));
        let ev = ev.expect("full again");
        assert_eq!(ev.ticket, b);
        assert_eq!(t.finish(b), None, "a dropped ticket is no longer pending");
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let mut t = Admission::new(2, 64);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        admit(&mut t, a);
        admit(&mut t, b);
        assert_eq!(t.pending_from(a), 2, "one /64");
        assert_eq!(t.pending_from(c), 0);
        let (_, ev) = admit(&mut t, a);
        assert_eq!(ev.map(|e| e.reason), Some(Reason::SourceFull));
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().unwrap();
        admit(&mut t, mapped);
        assert_eq!(t.pending_from(v4(7)), 1);
        assert_eq!(Source::of(c).to_string(), "2001:db8:1:3::/64");
    }

    /// The starvation attack as a model: many sources keep the table full
    /// and renew every dropped connection at once. A newcomer's handshake
    /// survives as long as fewer than `total` connections from sources with
    /// no more than one pending each are admitted while it runs.
    #[test]
    fn renewed_connections_cannot_keep_a_newcomer_out() {
        let (per, total) = (8usize, 64usize);
        // Attacker: 10 sources × 8 = 80 connections wanted, 64 slots.
        let mut t = Admission::new(per, total);
        let mut queue: VecDeque<IpAddr> = (0..80).map(|i| v4(100 + (i % 10) as u8)).collect();
        let renew = |t: &mut Admission<Ticket>, queue: &mut VecDeque<IpAddr>, steps| {
            for _ in 0..steps {
                let ip = queue.pop_front().expect("an attacker slot is waiting");
                if let (_, Some(ev)) = admit(t, ip) {
                    queue.push_back(ev.ip);
                } else {
                    // Admitted without eviction: one slot fewer waiting.
                    queue.push_back(ip);
                }
            }
        };
        renew(&mut t, &mut queue, 10_000);
        assert_eq!(t.len(), total);
        let (newcomer, _) = admit(&mut t, v4(1));
        renew(&mut t, &mut queue, 100_000);
        assert!(
            t.contains(newcomer),
            "fewer sources than slots never drop a newcomer"
        );
        assert_eq!(t.finish(newcomer), Some(newcomer));
    }

    #[test]
    fn with_more_sources_than_slots_the_newcomer_lasts_total_admissions() {
        let total = 16usize;
        let mut t = Admission::new(1, total);
        for i in 0..total {
            admit(&mut t, v4(100 + i as u8));
        }
        let (newcomer, _) = admit(&mut t, v4(1));
        for i in 0..total - 1 {
            admit(&mut t, v4(200 - i as u8));
            assert!(t.contains(newcomer), "after {} newer", i + 1);
        }
        let (_, ev) = admit(&mut t, v4(50));
        assert_eq!(ev.map(|e| e.ticket), Some(newcomer));
    }
}
