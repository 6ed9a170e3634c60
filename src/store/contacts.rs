//! Contacts and pinned addresses: the names a user gives nodes, and the key
//! first seen at each IP:PORT a push went to (like SSH's known hosts).
//!
//! One tree, `contacts`, holds both, told apart by a key prefix:
//!
//! | key | value |
//! | --- | --- |
//! | `name/<NAME>` | a contact: the pinned node address, the IP:PORT it was added from (if any), when |
//! | `ip/<IP:PORT>` | a pin: the node address that answered a direct probe at that address first |
//!
//! `<IP:PORT>` is the canonical text of a socket address (`127.0.0.4:58008`,
//! `[::1]:58008`); names never contain `:` or `/` (checked by the caller,
//! `actors::names`), so the two kinds cannot collide. Values are postcard
//! [`StoredContact`], an enum whose variant is the record's version: a later
//! version appends a variant. A value that does not decode is an error, never
//! an absent entry, so a damaged pin cannot silently be re-pinned to another
//! key. Only a direct probe or the user writes here; gossip never does.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{Store, StoreError};
use crate::crypto::Address;

/// Most entries (contacts and pins together) the tree may hold; a full
/// `contacts list` answer stays well inside one client frame.
pub const MAX_CONTACTS: usize = 2048;

const NAME_PREFIX: &[u8] = b"name/";
const IP_PREFIX: &[u8] = b"ip/";

/// What an entry is keyed by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContactKey {
    /// A contact the user named.
    Name(String),
    /// A pinned IP:PORT.
    Ip(SocketAddr),
}

impl ContactKey {
    fn bytes(&self) -> Vec<u8> {
        let (prefix, text) = match self {
            ContactKey::Name(n) => (NAME_PREFIX, n.clone()),
            ContactKey::Ip(sa) => (IP_PREFIX, sa.to_string()),
        };
        let mut k = Vec::with_capacity(prefix.len() + text.len());
        k.extend_from_slice(prefix);
        k.extend_from_slice(text.as_bytes());
        k
    }

    fn from_bytes(k: &[u8]) -> Option<ContactKey> {
        if let Some(rest) = k.strip_prefix(NAME_PREFIX) {
            return std::str::from_utf8(rest)
                .ok()
                .map(|s| ContactKey::Name(s.to_string()));
        }
        let rest = k.strip_prefix(IP_PREFIX)?;
        std::str::from_utf8(rest)
            .ok()?
            .parse()
            .ok()
            .map(ContactKey::Ip)
    }
}

/// A pinned key, as callers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contact {
    /// The pinned node address (its public key).
    pub address: Address,
    /// Where the node was probed when it was pinned (always set for an IP pin).
    pub dest: Option<SocketAddr>,
    /// Seconds since the Unix epoch when it was pinned.
    pub added: u64,
}

/// The record on disk; the variant is its version (append only).
#[derive(Serialize, Deserialize)]
enum StoredContact {
    V1 {
        address: Address,
        dest: Option<SocketAddr>,
        added: u64,
    },
}

impl StoredContact {
    fn encode(c: &Contact) -> Result<Vec<u8>, StoreError> {
        Ok(postcard::to_stdvec(&StoredContact::V1 {
            address: c.address,
            dest: c.dest,
            added: c.added,
        })?)
    }

    fn decode(bytes: &[u8]) -> Result<Contact, StoreError> {
        let (stored, rest): (StoredContact, _) = postcard::take_from_bytes(bytes)?;
        if !rest.is_empty() {
            return Err(postcard::Error::DeserializeBadEncoding.into());
        }
        let StoredContact::V1 {
            address,
            dest,
            added,
        } = stored;
        Ok(Contact {
            address,
            dest,
            added,
        })
    }
}

/// Whether a stored value of the tree decodes (for `store check` and copies).
pub(super) fn value_decodes(bytes: &[u8]) -> bool {
    StoredContact::decode(bytes).is_ok()
}

/// What [`Store::contact_insert_new`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pinned {
    /// The entry is new.
    Inserted,
    /// An entry was there already (possibly for another key); it is unchanged.
    Exists(Contact),
    /// The tree holds [`MAX_CONTACTS`] entries; nothing was written.
    Full,
}

impl Store {
    pub fn contact_get(&self, key: &ContactKey) -> Result<Option<Contact>, StoreError> {
        match self.contacts.get(key.bytes())? {
            Some(v) => Ok(Some(StoredContact::decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Writes `contact` under `key` unless an entry is there already, in one
    /// compare-and-swap, so two pushes racing to pin one address agree.
    pub fn contact_insert_new(
        &self,
        key: &ContactKey,
        contact: &Contact,
    ) -> Result<Pinned, StoreError> {
        let k = key.bytes();
        if let Some(old) = self.contact_get(key)? {
            return Ok(Pinned::Exists(old));
        }
        // A full scan, but only when a new entry is added (a push to a new
        // address, or `contacts add`), and the tree is small.
        if self.contacts.len() >= MAX_CONTACTS {
            return Ok(Pinned::Full);
        }
        let value = StoredContact::encode(contact)?;
        match self
            .contacts
            .compare_and_swap(k, None as Option<&[u8]>, Some(value))?
        {
            Ok(()) => Ok(Pinned::Inserted),
            Err(e) => match e.current {
                Some(v) => Ok(Pinned::Exists(StoredContact::decode(&v)?)),
                // Removed between the two steps: the caller may try again.
                None => Ok(Pinned::Full),
            },
        }
    }

    /// Removes an entry; true if there was one.
    pub fn contact_remove(&self, key: &ContactKey) -> Result<bool, StoreError> {
        Ok(self.contacts.remove(key.bytes())?.is_some())
    }

    /// Every entry, pins (`ip/`) first, each kind in key order.
    pub fn contacts_all(&self) -> Result<Vec<(ContactKey, Contact)>, StoreError> {
        let mut out = Vec::new();
        for item in self.contacts.iter() {
            let (k, v) = item?;
            let Some(key) = ContactKey::from_bytes(&k) else {
                return Err(postcard::Error::DeserializeBadEncoding.into());
            };
            out.push((key, StoredContact::decode(&v)?));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Identity;

    fn contact(dest: Option<SocketAddr>) -> Contact {
        Contact {
            address: Identity::generate().address(),
            dest,
            added: 1_700_000_000,
        }
    }

    #[test]
    fn pins_are_kept_first_come_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let sa: SocketAddr = "127.0.9.4:58008".parse().unwrap();
        let ip = ContactKey::Ip(sa);
        let name = ContactKey::Name("bob".into());
        let first = contact(Some(sa));
        let second = contact(Some(sa));
        {
            let s = crate::store::test_util::open(dir.path());
            assert_eq!(s.contact_insert_new(&ip, &first).unwrap(), Pinned::Inserted);
            assert_eq!(
                s.contact_insert_new(&ip, &second).unwrap(),
                Pinned::Exists(first.clone())
            );
            assert_eq!(
                s.contact_insert_new(&name, &second).unwrap(),
                Pinned::Inserted
            );
            s.flush_blocking().unwrap();
        }
        let s = crate::store::test_util::open(dir.path());
        assert_eq!(s.contact_get(&ip).unwrap(), Some(first.clone()));
        assert_eq!(
            s.contacts_all().unwrap(),
            vec![(ip.clone(), first), (name.clone(), second)]
        );
        assert!(s.contact_remove(&ip).unwrap());
        assert!(!s.contact_remove(&ip).unwrap());
        assert_eq!(s.contact_get(&ip).unwrap(), None);
    }

    #[test]
    fn a_damaged_value_is_an_error_not_an_absent_pin() {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::store::test_util::open(dir.path());
        let key = ContactKey::Ip("[::1]:58008".parse().unwrap());
        s.contacts.insert(key.bytes(), &[7u8, 1, 2][..]).unwrap();
        assert!(s.contact_get(&key).is_err());
        assert!(s.contact_insert_new(&key, &contact(None)).is_err());
        // Trailing bytes are refused too.
        let mut v = StoredContact::encode(&contact(None)).unwrap();
        v.push(0);
        s.contacts.insert(key.bytes(), v).unwrap();
        assert!(s.contact_get(&key).is_err());
    }

    #[test]
    fn keys_round_trip() {
        for k in [
            ContactKey::Name("a.b-c_d".into()),
            ContactKey::Ip("127.0.0.4:58008".parse().unwrap()),
            ContactKey::Ip("[fe80::1]:1".parse().unwrap()),
        ] {
            assert_eq!(ContactKey::from_bytes(&k.bytes()), Some(k));
        }
    }
}
