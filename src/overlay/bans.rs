//! BanList: nodes refused for a while because they broke a per-peer budget.
//!
//! A peer over budget loses its link and is refused (no link up, no dial) for
//! `limits.backoff`. The list lives in memory only, keyed on the node's
//! address (its public key), with the listen address its record named, so a
//! redial of that address is held off too. It is bounded by [`MAX_BANS`]: when
//! full, expired bans go first, then the one that would end soonest (with one
//! backoff for all, the oldest).

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::crypto::Address;

/// Most nodes banned at once; past this the oldest ban is dropped.
pub const MAX_BANS: usize = 4096;

#[derive(Clone, Copy, Debug)]
struct Ban {
    listen: SocketAddr,
    until_ms: u64,
}

/// Banned node addresses and the listen addresses they named.
#[derive(Debug)]
pub struct BanList {
    cap: usize,
    bans: HashMap<Address, Ban>,
    /// The listen address of each ban, for refusing dials.
    listens: HashMap<SocketAddr, Address>,
}

impl Default for BanList {
    fn default() -> Self {
        BanList::new(MAX_BANS)
    }
}

impl BanList {
    /// An empty list holding at most `cap` bans (at least one).
    pub fn new(cap: usize) -> BanList {
        BanList {
            cap: cap.max(1),
            bans: HashMap::new(),
            listens: HashMap::new(),
        }
    }

    /// Refuses `address` (and dials of `listen`) until `until_ms`. A later
    /// ban of the same address replaces the earlier one if it ends later.
    pub fn ban(&mut self, address: Address, listen: SocketAddr, until_ms: u64, now_ms: u64) {
        if let Some(old) = self.bans.get(&address).copied() {
            self.unindex(&address, old.listen);
            let until_ms = until_ms.max(old.until_ms);
            self.bans.insert(address, Ban { listen, until_ms });
            self.listens.insert(listen, address);
            return;
        }
        if self.bans.len() >= self.cap {
            self.sweep(now_ms);
        }
        while self.bans.len() >= self.cap {
            let Some(oldest) = self
                .bans
                .iter()
                .min_by_key(|(_, b)| b.until_ms)
                .map(|(a, _)| *a)
            else {
                break;
            };
            self.remove(&oldest);
        }
        self.bans.insert(address, Ban { listen, until_ms });
        self.listens.insert(listen, address);
    }

    /// True while `address` is banned.
    pub fn is_banned(&self, address: &Address, now_ms: u64) -> bool {
        self.bans.get(address).is_some_and(|b| b.until_ms > now_ms)
    }

    /// True while a banned node's record names `listen`.
    pub fn listen_banned(&self, listen: &SocketAddr, now_ms: u64) -> bool {
        self.listens
            .get(listen)
            .is_some_and(|a| self.is_banned(a, now_ms))
    }

    /// Forgets expired bans.
    pub fn sweep(&mut self, now_ms: u64) {
        let expired: Vec<Address> = self
            .bans
            .iter()
            .filter(|(_, b)| b.until_ms <= now_ms)
            .map(|(a, _)| *a)
            .collect();
        for a in &expired {
            self.remove(a);
        }
    }

    /// Bans held, expired or not.
    pub fn len(&self) -> usize {
        self.bans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bans.is_empty()
    }

    fn remove(&mut self, address: &Address) {
        if let Some(b) = self.bans.remove(address) {
            self.unindex(address, b.listen);
        }
    }

    fn unindex(&mut self, address: &Address, listen: SocketAddr) {
        if self.listens.get(&listen) == Some(address) {
            self.listens.remove(&listen);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u16) -> Address {
        let mut a = [0u8; 32];
        a[..2].copy_from_slice(&i.to_be_bytes());
        Address(a)
    }

    fn listen(i: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], i))
    }

    #[test]
    fn a_ban_holds_until_it_ends() {
        let mut b = BanList::default();
        b.ban(addr(1), listen(1), 1_000, 0);
        assert!(b.is_banned(&addr(1), 0));
        assert!(b.is_banned(&addr(1), 999));
        assert!(b.listen_banned(&listen(1), 999));
        assert!(!b.is_banned(&addr(2), 0));
        assert!(!b.listen_banned(&listen(2), 0));
        assert!(!b.is_banned(&addr(1), 1_000));
        assert!(!b.listen_banned(&listen(1), 1_000));
        b.sweep(1_000);
        assert!(b.is_empty());
    }

    #[test]
    fn a_second_ban_extends_and_moves_the_listen_address() {
        let mut b = BanList::default();
        b.ban(addr(1), listen(1), 1_000, 0);
        b.ban(addr(1), listen(2), 500, 10);
        assert_eq!(b.len(), 1);
        assert!(b.is_banned(&addr(1), 900), "the later end is kept");
        assert!(!b.listen_banned(&listen(1), 0));
        assert!(b.listen_banned(&listen(2), 0));
    }

    #[test]
    fn two_nodes_naming_one_listen_address() {
        let mut b = BanList::default();
        b.ban(addr(1), listen(1), 1_000, 0);
        b.ban(addr(2), listen(1), 2_000, 0);
        b.sweep(1_500);
        assert!(b.listen_banned(&listen(1), 1_500), "addr 2 still holds it");
        b.sweep(2_000);
        assert!(!b.listen_banned(&listen(1), 0));
        assert!(b.is_empty());
    }

    #[test]
    fn full_list_drops_expired_bans_then_the_oldest() {
        let mut b = BanList::new(3);
        b.ban(addr(1), listen(1), 100, 0);
        b.ban(addr(2), listen(2), 200, 0);
        b.ban(addr(3), listen(3), 300, 0);
        b.ban(addr(4), listen(4), 400, 150);
        assert_eq!(b.len(), 3);
        assert!(!b.is_banned(&addr(1), 0), "the expired one went first");
        b.ban(addr(5), listen(5), 500, 150);
        assert_eq!(b.len(), 3);
        assert!(!b.is_banned(&addr(2), 150), "then the oldest");
        assert!(!b.listen_banned(&listen(2), 150));
        for i in 3..=5 {
            assert!(b.is_banned(&addr(i), 150));
        }
    }

    #[test]
    fn bounded_under_a_flood_of_identities() {
        let mut b = BanList::default();
        for i in 0..(MAX_BANS as u16 + 64) {
            b.ban(addr(i), listen(i), 10_000 + u64::from(i), 0);
        }
        assert_eq!(b.len(), MAX_BANS);
        assert!(b.listens.len() <= MAX_BANS);
        assert!(b.is_banned(&addr(MAX_BANS as u16 + 63), 0));
        assert!(!b.is_banned(&addr(63), 0), "the oldest went");
    }
}
