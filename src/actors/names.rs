//! Names: what `push --to` and `contacts add` mean, and which key each one
//! binds (a plain module, not an actor; the Router and the ClientSession call it).
//!
//! - A **node address** (64 hex digits) names its own key: the record for it
//!   may come from anywhere (gossip included), since only that key signs it.
//! - An **IP** or **IP:PORT** (an IP alone means port [`DEFAULT_PORT`]) names
//!   whatever node answers a direct probe there ([`probe`]: a Noise handshake
//!   and its signed record). The key it shows is pinned on first use in the
//!   store's contacts tree (`ip/<IP:PORT>`), like SSH's known hosts; a later
//!   probe that shows another key is refused ([`NameError::KeyChanged`]) with
//!   the command that accepts it. Gossiped records are for routing only and
//!   never bind an IP: an address-book entry claiming an IP is not consulted.
//!   When the pinned node does not answer, a push still queues to the pinned
//!   key if its signed record is known (it is retried until it is delivered).
//! - A **contact name** (see [`validate_name`]) names the key pinned when the
//!   user added it; a contact added from an IP is probed there again on each
//!   push, and refused the same way when that IP now answers with another key.
//!
//! A successful probe is remembered for [`PROBE_CACHE_TTL`], so a burst of
//! pushes to one address costs one handshake; the first push after that
//! window probes again and so notices a changed key. A failed probe is
//! remembered for [`PROBE_FAILURE_TTL`], so a burst of pushes to a node that
//! is down costs one connection attempt, not one each (they queued behind
//! each other on the address's probe lock): they go to the record of its
//! pinned key meanwhile.
//!
//! An address this node holds an outbound link to (it dialed that `IP:PORT`
//! and the handshake showed the key) needs no probe while the link is up
//! ([`LiveLink`]): the link is a probe that is still answering. Without it,
//! every push to a neighbour's IP more than [`PROBE_CACHE_TTL`] after the
//! last one cost a new connection and Noise handshake (2.6 ms on loopback,
//! two round trips on a real network) before it could be sealed.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::peer_session::{probe, LinkError, LinkIdentity};
use super::router::PushError;
use crate::config::DEFAULT_PORT;
use crate::crypto::{unix_now, Address, Identity, SignedRecord};
use crate::store::{Contact, ContactKey, Pinned, Store, StoreError, MAX_CONTACTS};
use crate::wire::client::ContactInfo;

/// Logged (debug) when a push or a contact probes an address: a new
/// connection and handshake to learn the key there.
pub const EV_PROBING: &str = "probing an address for its key";
/// How long a successful probe answers for its address without a new one.
pub const PROBE_CACHE_TTL: Duration = Duration::from_secs(3);
/// How long a failed probe answers for its address without a new one.
pub const PROBE_FAILURE_TTL: Duration = Duration::from_secs(1);
/// Most probe results remembered at once.
pub const PROBE_CACHE_MAX: usize = 256;
/// Longest contact name.
pub const MAX_NAME_LEN: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum NameError {
    #[error("{0}")]
    BadInput(String),
    #[error("{}", .0)]
    KeyChanged(Box<KeyChange>),
    #[error("contact {name} is pinned to node {old}, not {new}; to replace it, run `hermes contacts remove {name}`, then add it again")]
    NameTaken {
        name: String,
        old: Address,
        new: Address,
    },
    #[error("cannot reach {addr} to learn its key: {why}")]
    Unreachable { addr: SocketAddr, why: String },
    #[error("{MAX_CONTACTS} contacts and pinned addresses are stored already; remove some with `hermes contacts remove`")]
    Full,
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// A pinned address that now answers with another key.
#[derive(Debug, thiserror::Error)]
#[error("{pinned} is pinned to node {old}, but {at} now answers as node {new}; if that change is expected, accept it with `{accept}`, then push again")]
pub struct KeyChange {
    /// What was pinned: an IP:PORT, or `contact NAME`.
    pub pinned: String,
    pub at: SocketAddr,
    pub old: Address,
    pub new: Address,
    /// The command that accepts the new key.
    pub accept: String,
}

impl From<NameError> for PushError {
    fn from(e: NameError) -> PushError {
        match e {
            NameError::Store(e) => PushError::Store(e),
            NameError::Unreachable { addr, why } => PushError::Unreachable { addr, why },
            other => PushError::BadInput(other.to_string()),
        }
    }
}

/// What a `--to` (or `contacts add`) value names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dest {
    Node(Address),
    /// The socket address to probe, and whether a port was given.
    Ip(SocketAddr, bool),
    Name(String),
}

fn parse_addr(s: &str) -> Option<Dest> {
    if s.len() == 64 {
        if let Ok(a) = s.parse::<Address>() {
            return Some(Dest::Node(a));
        }
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(Dest::Ip(SocketAddr::new(ip, DEFAULT_PORT), false));
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(Dest::Ip(sa, true));
    }
    None
}

/// Reads a `--to` value: a node address, an IP, IP:PORT, or a contact name.
pub fn parse_dest(to: &str) -> Result<Dest, NameError> {
    let to = to.trim();
    if let Some(d) = parse_addr(to) {
        return Ok(d);
    }
    validate_name(to).map_err(|why| {
        NameError::BadInput(format!(
            "--to {to:?}: expected an IP, IP:PORT, a node address (64 hex digits) or a contact name ({why})"
        ))
    })?;
    Ok(Dest::Name(to.to_string()))
}

/// A contact name: 1 to [`MAX_NAME_LEN`] letters, digits, `-`, `_` or `.`,
/// starting with a letter (so no IP spelling, not even `127.1` or `0x7f.1`,
/// fits), and not a node address, an IP or a socket address.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!("a contact name has 1 to {MAX_NAME_LEN} characters"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "{c:?} is not allowed in a contact name (letters, digits, '-', '_', '.')"
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err("a contact name starts with a letter".into());
    }
    if parse_addr(name).is_some() {
        return Err(format!(
            "{name:?} reads as an address, so it cannot be a contact name"
        ));
    }
    Ok(())
}

/// Outbound links up now, by the address this node dialed: the record the
/// link's handshake proved is at that address. A link this node dialed to
/// `IP:PORT` is a probe of it that is still answering (the connection is
/// that node's, and a node that changed its key is a new process, so its
/// old link is gone), so a push to that address uses it instead of a new
/// connection and handshake. Entries live as long as their session
/// ([`LiveLink`]), so the map is bounded by the node's links.
fn live_links() -> &'static Mutex<HashMap<SocketAddr, (u64, SignedRecord)>> {
    static LIVE: OnceLock<Mutex<HashMap<SocketAddr, (u64, SignedRecord)>>> = OnceLock::new();
    LIVE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// One outbound link's entry in the live-link map, taken out when dropped
/// (with its session).
#[derive(Debug)]
pub struct LiveLink {
    addr: SocketAddr,
    id: u64,
}

impl LiveLink {
    /// Registers the link this node dialed to `addr`, whose handshake showed
    /// `peer` (verified).
    pub fn register(addr: SocketAddr, peer: SignedRecord) -> LiveLink {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut m = live_links().lock().unwrap_or_else(|p| p.into_inner());
        m.insert(addr, (id, peer));
        LiveLink { addr, id }
    }
}

impl Drop for LiveLink {
    fn drop(&mut self) {
        let mut m = live_links().lock().unwrap_or_else(|p| p.into_inner());
        // A newer link to the same address replaced this one: keep it.
        if m.get(&self.addr).is_some_and(|(id, _)| *id == self.id) {
            m.remove(&self.addr);
        }
    }
}

/// The record of the node a live outbound link to `addr` reaches, if there
/// is one: the newer of the link's and the address book's (the book has the
/// node's later records, such as a rotated packet key).
fn live_link(addr: &SocketAddr, store: &Store) -> Option<SignedRecord> {
    let linked = {
        let m = live_links().lock().unwrap_or_else(|p| p.into_inner());
        m.get(addr).map(|(_, rec)| rec.clone())?
    };
    match store.peer_get(&linked.record.address) {
        Ok(Some(book)) if book.record.time > linked.record.time => Some(book),
        _ => Some(linked),
    }
}

/// Recent successful probes, shared by every caller in the process.
/// A probe's result: the record, or why it failed.
type Probed = Result<SignedRecord, String>;

fn cache() -> &'static Mutex<HashMap<SocketAddr, (Instant, Probed)>> {
    static CACHE: OnceLock<Mutex<HashMap<SocketAddr, (Instant, Probed)>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// How long a result answers for its address.
fn ttl_of(p: &Probed) -> Duration {
    if p.is_ok() {
        PROBE_CACHE_TTL
    } else {
        PROBE_FAILURE_TTL
    }
}

/// One lock per address being probed, so concurrent pushes to one address
/// (a pipelined `push --each-line`) make one probe, not one handshake each
/// (which the recipient's admission limit would cut).
fn probing(addr: SocketAddr) -> Arc<tokio::sync::Mutex<()>> {
    static PROBING: OnceLock<Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<()>>>>> =
        OnceLock::new();
    let map = PROBING.get_or_init(|| Mutex::new(HashMap::new()));
    let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
    // Locks nobody holds or waits for are forgotten.
    m.retain(|_, l| Arc::strong_count(l) > 1);
    m.entry(addr).or_default().clone()
}

fn cached(addr: &SocketAddr) -> Option<Probed> {
    let c = cache().lock().ok()?;
    let (at, probed) = c.get(addr)?;
    (at.elapsed() < ttl_of(probed)).then(|| probed.clone())
}

/// The record of the node answering at `addr`, probed at most once per
/// [`PROBE_CACHE_TTL`] (after a failure, once per [`PROBE_FAILURE_TTL`]),
/// and once at a time.
///
/// A probe that reaches this node itself (an address of this host the record
/// does not name, such as 127.0.0.1 for a node listening on 0.0.0.0) answers
/// with this node's own record.
async fn probe_cached(
    addr: SocketAddr,
    me: &LinkIdentity,
    store: &Store,
    log: &slog::Logger,
) -> Result<SignedRecord, String> {
    let identity: &Identity = &me.identity;
    if let Some(rec) = live_link(&addr, store) {
        return Ok(rec);
    }
    if let Some(probed) = cached(&addr) {
        return probed;
    }
    let lock = probing(addr);
    let _one_at_a_time = lock.lock().await;
    if let Some(probed) = cached(&addr) {
        return probed;
    }
    slog::debug!(log, "{}", EV_PROBING; "addr" => %addr);
    let probed = match probe(addr, identity).await {
        Ok(rec) => Ok(rec),
        Err(LinkError::SelfLink) => return Ok((*me.record.get()).clone()),
        Err(e) => Err(e.to_string()),
    };
    if let Ok(mut c) = cache().lock() {
        c.retain(|_, (at, p)| at.elapsed() < ttl_of(p));
        if c.len() < PROBE_CACHE_MAX {
            c.insert(addr, (Instant::now(), probed.clone()));
        }
    }
    probed
}

/// Finds the signed record a push to `to` is sealed to.
///
/// A record learned by a probe goes to `learn` (the NeighbourManager, which
/// owns the address book), so that the node is known by its address later.
pub async fn resolve(
    to: &str,
    store: &Store,
    me: &LinkIdentity,
    learn: &dyn Fn(&SignedRecord),
    log: &slog::Logger,
) -> Result<SignedRecord, NameError> {
    match parse_dest(to)? {
        Dest::Node(addr) => node_record(addr, store, me, None),
        Dest::Ip(sa, port_given) if is_me(sa, port_given, me) => Ok((*me.record.get()).clone()),
        Dest::Ip(sa, _) => resolve_ip(sa, store, me, learn, log).await,
        Dest::Name(name) => {
            let c = store
                .contact_get(&ContactKey::Name(name.clone()))?
                .ok_or_else(|| {
                    NameError::BadInput(format!(
                        "no contact named {name:?} (see `hermes contacts list`)"
                    ))
                })?;
            resolve_contact(&name, &c, store, me, learn, log).await
        }
    }
}

/// Whether an IP (any port, if none was given) or IP:PORT is this node's own.
fn is_me(sa: SocketAddr, port_given: bool, me: &LinkIdentity) -> bool {
    let own = me.record.get().record.listen;
    own.ip() == sa.ip() && (!port_given || own.port() == sa.port())
}

/// The stored record of a node given by its address.
fn node_record(
    addr: Address,
    store: &Store,
    me: &LinkIdentity,
    contact: Option<&str>,
) -> Result<SignedRecord, NameError> {
    if addr == me.address() {
        return Ok((*me.record.get()).clone());
    }
    store.peer_get(&addr)?.ok_or_else(|| {
        let named = contact.map_or(String::new(), |n| format!(" (contact {n})"));
        NameError::BadInput(format!("no record known for node {addr}{named}"))
    })
}

/// Probes `sa`, checks (or pins, on first use) the key it shows, and returns
/// its record; when it does not answer, the record of the pinned key.
async fn resolve_ip(
    sa: SocketAddr,
    store: &Store,
    me: &LinkIdentity,
    learn: &dyn Fn(&SignedRecord),
    log: &slog::Logger,
) -> Result<SignedRecord, NameError> {
    let key = ContactKey::Ip(sa);
    let pinned = store.contact_get(&key)?;
    let rec = match probe_cached(sa, me, store, log).await {
        Ok(rec) => rec,
        Err(why) => {
            return match pinned {
                Some(p) => store
                    .peer_get(&p.address)?
                    .ok_or_else(|| NameError::Unreachable {
                        addr: sa,
                        why: format!("{why}; no record of its pinned node {} is known", p.address),
                    }),
                None => Err(NameError::Unreachable { addr: sa, why }),
            }
        }
    };
    let new = rec.record.address;
    let old = match pinned {
        Some(p) => p.address,
        None => {
            let c = Contact {
                address: new,
                dest: Some(sa),
                added: unix_now(),
            };
            match store.contact_insert_new(&key, &c)? {
                Pinned::Inserted => new,
                Pinned::Exists(p) => p.address,
                Pinned::Full => return Err(NameError::Full),
            }
        }
    };
    if old != new {
        return Err(NameError::KeyChanged(Box::new(KeyChange {
            pinned: sa.to_string(),
            at: sa,
            old,
            new,
            accept: format!("hermes contacts remove {sa}"),
        })));
    }
    // For routing: the record now in hand is the node's own and verified.
    learn(&rec);
    Ok(rec)
}

async fn resolve_contact(
    name: &str,
    c: &Contact,
    store: &Store,
    me: &LinkIdentity,
    learn: &dyn Fn(&SignedRecord),
    log: &slog::Logger,
) -> Result<SignedRecord, NameError> {
    let Some(sa) = c.dest else {
        return node_record(c.address, store, me, Some(name));
    };
    if c.address == me.address() {
        return Ok((*me.record.get()).clone());
    }
    match probe_cached(sa, me, store, log).await {
        Ok(rec) if rec.record.address != c.address => {
            Err(NameError::KeyChanged(Box::new(KeyChange {
                pinned: format!("contact {name}"),
                at: sa,
                old: c.address,
                new: rec.record.address,
                accept: format!("hermes contacts remove {name} && hermes contacts add {name} {sa}"),
            })))
        }
        Ok(rec) => {
            learn(&rec);
            Ok(rec)
        }
        // Not answering: queue to the pinned key if its record is known.
        Err(why) => store
            .peer_get(&c.address)?
            .ok_or_else(|| NameError::Unreachable {
                addr: sa,
                why: format!(
                    "{why}; no record of contact {name}'s node {} is known",
                    c.address
                ),
            }),
    }
}

fn info(key: &ContactKey, c: &Contact) -> ContactInfo {
    let (name, kind) = match key {
        ContactKey::Name(n) => (n.clone(), "name"),
        ContactKey::Ip(sa) => (sa.to_string(), "ip"),
    };
    ContactInfo {
        name,
        kind: kind.into(),
        address: c.address.to_string(),
        dest: c.dest.map(|d| d.to_string()),
        added: c.added,
    }
}

/// `hermes contacts add NAME DEST`: pins DEST's key under NAME. An IP is
/// probed (and pinned as an IP too, if it is not yet).
pub async fn add_contact(
    name: &str,
    dest: &str,
    store: &Store,
    me: &LinkIdentity,
    learn: &dyn Fn(&SignedRecord),
    log: &slog::Logger,
) -> Result<ContactInfo, NameError> {
    validate_name(name).map_err(|why| NameError::BadInput(format!("contact {name:?}: {why}")))?;
    let dest = dest.trim();
    let (address, dest) = match parse_addr(dest) {
        Some(Dest::Node(a)) => (a, None),
        Some(Dest::Ip(sa, port_given)) => {
            if is_me(sa, port_given, me) {
                (me.address(), Some(sa))
            } else {
                (
                    resolve_ip(sa, store, me, learn, log).await?.record.address,
                    Some(sa),
                )
            }
        }
        _ => {
            return Err(NameError::BadInput(format!(
                "{dest:?}: expected an IP, IP:PORT or a node address (64 hex digits)"
            )))
        }
    };
    let key = ContactKey::Name(name.to_string());
    let c = Contact {
        address,
        dest,
        added: unix_now(),
    };
    let kept = match store.contact_insert_new(&key, &c)? {
        Pinned::Inserted => c,
        Pinned::Exists(old) if old.address == address => old,
        Pinned::Exists(old) => {
            return Err(NameError::NameTaken {
                name: name.to_string(),
                old: old.address,
                new: address,
            })
        }
        Pinned::Full => return Err(NameError::Full),
    };
    store.flush().await?;
    Ok(info(&key, &kept))
}

/// `hermes contacts list`: contacts and pinned addresses.
pub fn list_contacts(store: &Store) -> Result<Vec<ContactInfo>, NameError> {
    Ok(store
        .contacts_all()?
        .iter()
        .map(|(k, c)| info(k, c))
        .collect())
}

/// `hermes contacts remove NAME`: NAME is a contact, or a pinned IP[:PORT].
pub async fn remove_contact(name: &str, store: &Store) -> Result<(), NameError> {
    let name = name.trim();
    let key = match parse_addr(name) {
        Some(Dest::Ip(sa, _)) => ContactKey::Ip(sa),
        Some(Dest::Node(_)) => {
            return Err(NameError::BadInput(format!(
                "{name:?} is a node address; remove the contact by its name or IP:PORT"
            )))
        }
        _ => {
            validate_name(name).map_err(|why| NameError::BadInput(format!("{name:?}: {why}")))?;
            ContactKey::Name(name.to_string())
        }
    };
    if !store.contact_remove(&key)? {
        return Err(NameError::BadInput(format!(
            "no contact or pinned address {name:?} (see `hermes contacts list`)"
        )));
    }
    store.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_live_outbound_link_answers_for_its_address_while_it_lasts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let log = slog::Logger::root(slog::Discard, slog::o!());
        let me_id = Arc::new(Identity::generate());
        let me = LinkIdentity {
            record: crate::crypto::RecordCell::new(SignedRecord::sign(
                &me_id,
                "127.0.27.2:58008".parse().unwrap(),
                true,
                unix_now(),
            )),
            identity: me_id,
        };
        // Nobody listens here: a probe fails.
        let addr: SocketAddr = "127.0.27.9:9".parse().unwrap();
        assert!(probe_cached(addr, &me, &store, &log).await.is_err());

        let peer = Identity::generate();
        let linked = SignedRecord::sign(&peer, addr, true, unix_now() - 10);
        let link = LiveLink::register(addr, linked.clone());
        assert_eq!(
            probe_cached(addr, &me, &store, &log).await,
            Ok(linked.clone())
        );
        // The book's later record of the same node wins; another node's never.
        let later = SignedRecord::sign(&peer, addr, true, unix_now());
        store.peer_put(&later).unwrap();
        assert_eq!(
            probe_cached(addr, &me, &store, &log).await,
            Ok(later.clone())
        );

        // A second link to the address replaces the first; the first one's
        // end leaves the second in place.
        let second = LiveLink::register(addr, linked.clone());
        drop(link);
        assert_eq!(probe_cached(addr, &me, &store, &log).await, Ok(later));
        drop(second);
        // No link: a probe again, and nobody answers.
        assert!(probe_cached(addr, &me, &store, &log).await.is_err());
    }

    #[test]
    fn names_cannot_be_confused_with_addresses() {
        for ok in ["bob", "alice.home", "a-b_c.9", "deadbeef", "x"] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
            assert_eq!(parse_dest(ok).unwrap(), Dest::Name(ok.into()));
        }
        let hex64 = "ab".repeat(32);
        let too_long = "a".repeat(MAX_NAME_LEN + 1);
        for bad in [
            "",
            "1.2.3.4",
            "127.1",
            "0x7f.1",
            "127.0.0.1:80",
            "::1",
            "[::1]:80",
            hex64.as_str(),
            "a b",
            "a/b",
            "a:b",
            "-x",
            ".x",
            "é",
            too_long.as_str(),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn dest_forms() {
        assert_eq!(
            parse_dest("127.0.0.4").unwrap(),
            Dest::Ip("127.0.0.4:58008".parse().unwrap(), false)
        );
        assert_eq!(
            parse_dest(" 127.0.0.4:9 ").unwrap(),
            Dest::Ip("127.0.0.4:9".parse().unwrap(), true)
        );
        let hex64 = "ab".repeat(32);
        assert!(matches!(parse_dest(&hex64), Ok(Dest::Node(_))));
        assert!(matches!(parse_dest("a b"), Err(NameError::BadInput(_))));
    }

    #[test]
    fn key_change_message_says_how_to_accept() {
        let e = NameError::KeyChanged(Box::new(KeyChange {
            pinned: "127.0.0.4:58008".into(),
            at: "127.0.0.4:58008".parse().unwrap(),
            old: Address([1; 32]),
            new: Address([2; 32]),
            accept: "hermes contacts remove 127.0.0.4:58008".into(),
        }));
        let s = e.to_string();
        assert!(s.contains(&Address([1; 32]).to_string()));
        assert!(s.contains(&Address([2; 32]).to_string()));
        assert!(s.contains("hermes contacts remove 127.0.0.4:58008"));
        assert!(!s.contains('\n'));
        assert!(matches!(PushError::from(e), PushError::BadInput(_)));
    }
}
