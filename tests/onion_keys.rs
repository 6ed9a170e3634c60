//! Rotating packet keys in a running daemon (issue 9): the node announces its current
//! packet key in the record it sends on every link, rotates it on `routing.key_rotation`,
//! tells its neighbours (gossip) and new links the new key, deletes a key after
//! `routing.key_grace`, and never holds more keys than the schedule allows; a packet
//! recorded while a key was in use can no longer be opened by the node once that key is
//! deleted. A damaged key file stops the daemon with a message naming the file and what
//! to do.

mod common;

use common::hostile::HostilePeer;
use common::*;
use hermes::crypto::keyring::MAX_KEYS;
use hermes::crypto::sphinx::{NodeHop, OnionFormat, Sphinx};
use hermes::crypto::{unix_now, AnnouncedKey, SignedRecord};
use hermes::wire::link::{LinkBody, OnionPacket};
use std::fs;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Seconds a key is current, and then accepted, in these tests.
const PERIOD: u64 = 3;
const GRACE: u64 = 2;
/// Keys alive at once under that schedule: the current one and one in its grace.
const KEYS_AT_MOST: usize = 2;
const _: () = assert!(KEYS_AT_MOST <= MAX_KEYS);
/// Long enough for a few rotations on a loaded machine.
const ROTATIONS_TIMEOUT: Duration = Duration::from_secs(40);
/// The key file's head (magic, version, count) and checksum, and one key's entry.
const FILE_OVERHEAD: usize = 8 + 1 + 1 + 32;
const ENTRY: usize = 56;

fn fast_keys() -> NodeOpts {
    NodeOpts {
        extra_toml: format!("[routing]\nkey_rotation = \"{PERIOD}s\"\nkey_grace = \"{GRACE}s\"\n"),
        ..NodeOpts::default()
    }
}

/// The packet key a record from `node` announces, checked: signed, valid now, one
/// period long.
fn checked_key(rec: &SignedRecord, node: &Node) -> AnnouncedKey {
    assert_eq!(rec.record.address.to_string(), node.address(), "{rec:?}");
    let now = unix_now();
    rec.verify(now)
        .unwrap_or_else(|e| panic!("the node's record does not verify: {e}"));
    let key = rec
        .record
        .packet_key
        .unwrap_or_else(|| panic!("the node's record announces no packet key: {rec:?}"));
    assert_eq!(key.not_after - key.not_before, PERIOD, "{key:?}");
    // Seconds are whole on both sides: allow one second of rounding.
    assert!(
        key.not_before <= now + 1 && now <= key.not_after + 1,
        "key window {}..{} does not hold now ({now})",
        key.not_before,
        key.not_after
    );
    assert_ne!(key.public, [0; 32]);
    key
}

/// Keys held in the node's key file now (read whole: the file is replaced atomically).
fn keys_in_file(node: &Node) -> usize {
    let bytes = fs::read(node.data_dir().join("packet.keys")).expect("read packet.keys");
    assert!(
        bytes.len() >= FILE_OVERHEAD && (bytes.len() - FILE_OVERHEAD) % ENTRY == 0,
        "packet.keys has {} bytes",
        bytes.len()
    );
    let n = (bytes.len() - FILE_OVERHEAD) / ENTRY;
    assert_eq!(
        bytes[9] as usize, n,
        "the key count does not match the size"
    );
    n
}

/// A counter of the node's `status`.
fn counter(node: &Node, name: &str) -> u64 {
    node.status()["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in status"))
}

/// Waits until the node's counters `dropped` and `replays` are `(dropped, replays)`
/// (each packet the test sends moves exactly one of them).
fn wait_counters(node: &Node, dropped: u64, replays: u64, what: &str) {
    wait_for(
        Duration::from_secs(20),
        format!("{what}: counters dropped {dropped}, replays {replays}"),
        &[node],
        || {
            let (d, r) = (counter(node, "dropped"), counter(node, "replays"));
            assert!(
                d <= dropped && r <= replays,
                "{what}: dropped {d}, replays {r}"
            );
            (d, r) == (dropped, replays)
        },
    );
}

fn hostile(node: &Node, host: u8) -> HostilePeer {
    let to: SocketAddr = node.listen().parse().unwrap();
    let listen: SocketAddr = listen_addr(node.n, host).parse().unwrap();
    HostilePeer::dial(to, listen)
}

#[test]
fn packet_key_rotates_and_reaches_neighbours_and_new_links() {
    const N: u8 = 121;
    let node = Node::start(N, 2, fast_keys());
    // A peer linked to the node gets its record as the first frame, with a valid key.
    let mut peer = hostile(&node, 50);
    let first = peer.peer.clone();
    let k1 = checked_key(&first, &node);
    assert!(keys_in_file(&node) <= KEYS_AT_MOST);

    // A packet wrapped to that key, recorded: the node opens it (the first copy is
    // dropped for its junk payload, after its replay tag was recorded; the second is a
    // replay, which only a node that can open it can tell).
    let recorded = Sphinx
        .wrap(
            &[],
            &NodeHop {
                id: first.record.address,
                key: k1.public,
            },
            b"recorded on the wire",
        )
        .expect("wrap a packet")
        .into_bytes();
    let (dropped0, replays0) = (counter(&node, "dropped"), counter(&node, "replays"));
    assert!(peer.send(LinkBody::Onion(OnionPacket(recorded.clone()))));
    wait_counters(&node, dropped0 + 1, replays0, "the recorded packet, sent");
    assert!(peer.send(LinkBody::Onion(OnionPacket(recorded.clone()))));
    wait_counters(
        &node,
        dropped0 + 1,
        replays0 + 1,
        "the recorded packet, again",
    );

    // The node rotates: its neighbour is told the new record (gossip), with a newer
    // time and a higher epoch; meanwhile the key file never holds more than the
    // schedule allows.
    let me = first.record.address;
    let mut latest = first.clone();
    let mut epochs = vec![k1.epoch];
    let mut most = 0;
    let start = Instant::now();
    while epochs.len() < 3 {
        assert!(
            start.elapsed() < ROTATIONS_TIMEOUT,
            "the linked peer saw packet key epochs {epochs:?} only{}",
            node.describe_for_failure()
        );
        most = most.max(keys_in_file(&node));
        assert!(most <= KEYS_AT_MOST, "packet.keys holds {most} keys");
        let newer = peer.recv_until(Duration::from_millis(500), |body| match body {
            LinkBody::Gossip(g) => g
                .records
                .iter()
                .find(|r| r.record.address == me && r.record.time > latest.record.time)
                .cloned(),
            _ => None,
        });
        if let Some(rec) = newer {
            let key = checked_key(&rec, &node);
            if key.epoch != latest.record.packet_key.map_or(0, |k| k.epoch) {
                assert!(
                    key.epoch > *epochs.last().unwrap(),
                    "epochs go back: {epochs:?} then {}",
                    key.epoch
                );
                assert_ne!(Some(key.public), latest.record.packet_key.map(|k| k.public));
                epochs.push(key.epoch);
            }
            latest = rec;
        }
    }
    eprintln!("epochs seen by the linked peer: {epochs:?}; at most {most} keys in the file");

    // A new link gets the record in force as its first frame: no older key than the
    // neighbour was last told.
    let fresh = hostile(&node, 51);
    let k = checked_key(&fresh.peer, &node);
    assert!(
        k.epoch >= *epochs.last().unwrap(),
        "a new link got epoch {} after the neighbour was told {epochs:?}",
        k.epoch
    );

    // Keys past their grace are deleted, and logged.
    wait_for(
        Duration::from_secs(10),
        "the log says a packet key was rotated and one deleted",
        &[&node],
        || {
            let log = node.log();
            log.contains("packet key rotated") && log.contains("packet key deleted")
        },
    );
    assert!(keys_in_file(&node) <= KEYS_AT_MOST);

    // Key 1 is past its grace period and deleted: the recorded packet no longer opens
    // (were it opened, it would be counted as a replay again).
    assert!(unix_now() >= k1.not_after + GRACE, "{k1:?}");
    assert!(peer.send(LinkBody::Onion(OnionPacket(recorded))));
    wait_counters(
        &node,
        dropped0 + 2,
        replays0 + 1,
        "the recorded packet after its key was deleted",
    );
    wait_for(
        Duration::from_secs(10),
        "the node logs that no packet key opens the recorded packet",
        &[&node],
        || node.log().contains("no packet key opens it"),
    );

    // End to end: a second node (onion mode) linked to the first learns each new key
    // from gossip, so a message it seals long after the key it saw at link time was
    // deleted still reaches the first node (pushed by address: the record comes from
    // the address book, not from a probe).
    let mut opts = fast_keys();
    opts.extra_toml = format!(
        "[routing]\nmode = \"onion\"\nkey_rotation = \"{PERIOD}s\"\nkey_grace = \"{GRACE}s\"\n"
    );
    opts.bootstrap = vec![node.listen()];
    let sender = Node::start(N, 3, opts);
    wait_linked(&node, &sender);
    let at_link = checked_key(&hostile(&node, 52).peer, &node);
    wait_for(
        ROTATIONS_TIMEOUT,
        format!(
            "the first node's key {} (at link time) deleted",
            at_link.epoch
        ),
        &[&node],
        || unix_now() > at_link.not_after + GRACE,
    );
    let text = "sealed to a packet key learned from gossip";
    sender.push(&node.address(), text);
    node.pull_until(DELIVERY_TIMEOUT, text, |lines| {
        lines.iter().any(|l| l.ends_with(text))
    });
}

#[test]
fn damaged_packet_keys_stop_the_daemon_with_what_to_do() {
    const N: u8 = 122;
    let mut node = Node::start(N, 2, NodeOpts::default());
    let path = node.data_dir().join("packet.keys");
    assert!(path.exists(), "no packet.keys after a start");
    assert!(node.term(Duration::from_secs(20)).success());
    let mut bytes = fs::read(&path).unwrap();
    bytes[20] ^= 0x01;
    fs::write(&path, &bytes).unwrap();
    node.respawn();
    let start = Instant::now();
    let st = loop {
        if let Some(st) = node.exited() {
            break st;
        }
        assert!(
            start.elapsed() < READY_TIMEOUT,
            "the daemon did not exit on a damaged packet.keys{}",
            node.describe_for_failure()
        );
        std::thread::sleep(Duration::from_millis(75));
    };
    let log = node.log();
    let second = log.rsplit("===== hermes-it: start #2").next().unwrap_or("");
    assert_eq!(
        st.code(),
        Some(1),
        "exit code on a damaged key file:\n{second}"
    );
    assert!(
        node.try_status().is_none(),
        "a daemon still answers:\n{second}"
    );
    let line = second
        .lines()
        .find(|l| l.contains(path.to_str().unwrap()))
        .unwrap_or_else(|| panic!("no line names {}:\n{second}", path.display()));
    assert!(line.contains("damaged"), "{line}");
    assert!(
        line.contains("restore it") && line.contains("remove it"),
        "the refusal should say what to do: {line}"
    );
    assert!(!second.contains("panicked"), "{second}");
    // The file is left as it was, never replaced silently.
    assert_eq!(fs::read(&path).unwrap(), bytes);
}
