//! A relay's replay tags per packet key are bounded (`limits.replay_tags_per_key`);
//! a key that is full drops every onion packet wrapped to it. Without more, one peer
//! within its entry budget fills the relay's current key in minutes and the relay
//! then refuses every onion packet, from everyone, until the key rotates on schedule
//! (a day). With early rotation the relay makes and announces a new packet key once
//! the current one holds 3/4 of its tags, and goes on relaying.
//!
//! Here, on real daemons (origin O, relay X, recipient R; onion mode, one hop), a
//! hostile peer linked to X sends 300 freshly wrapped onion packets through X while X
//! keeps 100 tags per key: X relays exactly 100 and drops the rest (the bound holds,
//! fail closed), then announces a new key (told to the hostile peer by gossip, and
//! logged as an early rotation), relays packets wrapped to that key, and a genuine
//! message from O to R, which can only go through X, arrives.

mod common;

use common::hostile::HostilePeer;
use common::*;
use hermes::crypto::sphinx::{NodeHop, OnionFormat, Sphinx};
use hermes::crypto::{Address, AnnouncedKey, SignedRecord};
use hermes::wire::link::{LinkBody, OnionPacket};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// `limits.replay_tags_per_key` of the relay.
const TAGS: u64 = 100;
/// Packets the hostile peer sends to the relay's first key: three keys' worth.
const FLOOD: u64 = 300;
/// Packets it sends to the new key afterwards (under 3/4 of `TAGS`).
const AFTER: u64 = 50;
/// How long the relay may take to count what it was sent.
const COUNTER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the relay may take to announce a new key: the early-rotation floor
/// (10 s of the key's life) and a gossip round, on a loaded machine.
const ROTATION_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the genuine message may take (retries on fresh paths included).
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(60);

fn onion(extra: &str) -> NodeOpts {
    NodeOpts {
        min_neighbours: 2,
        max_neighbours: 8,
        extra_toml: format!("[routing]\nmode = \"onion\"\nhops = 1\n{extra}"),
        ..NodeOpts::default()
    }
}

fn counter(node: &Node, name: &str) -> u64 {
    node.status()["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in status"))
}

fn announced(rec: &SignedRecord) -> AnnouncedKey {
    rec.record
        .packet_key
        .unwrap_or_else(|| panic!("the relay's record announces no packet key: {rec:?}"))
}

/// `count` packets, each wrapped afresh (a distinct tag every time), through the relay
/// (`via`, with its announced key) to `to` (any key: the relay only passes them on).
fn send_through(peer: &mut HostilePeer, via: &SignedRecord, to: Address, count: u64, what: &str) {
    let hop = NodeHop {
        id: via.record.address,
        key: announced(via).public,
    };
    let dest = NodeHop {
        id: to,
        key: [7; 32],
    };
    for i in 0..count {
        let p = Sphinx
            .wrap(&[hop], &dest, format!("{what} {i}").as_bytes())
            .expect("the library wraps a packet through the relay");
        assert!(
            peer.send(LinkBody::Onion(OnionPacket(p.into_bytes()))),
            "the relay closed the hostile peer's link after {i} {what} packets"
        );
    }
}

/// Waits until the relay counted `relayed` more relayed packets than `r0`, and
/// `relayed + dropped` more in all than `r0 + d0`; panics if it relayed more.
fn wait_relayed(x: &Node, (r0, d0): (u64, u64), relayed: u64, total: u64, what: &str) {
    wait_for(
        COUNTER_TIMEOUT,
        format!("{what}: X counts {total} packets, {relayed} of them relayed"),
        &[x],
        || {
            let (r, d) = (counter(x, "relayed") - r0, counter(x, "dropped") - d0);
            assert!(r <= relayed, "{what}: X relayed {r}, more than {relayed}");
            r + d >= total && r == relayed
        },
    );
}

#[test]
fn a_peer_filling_the_replay_tags_does_not_stop_the_relay() {
    const N: u8 = 130;
    let x = Node::start(
        N,
        2,
        onion(&format!(
            "[limits]\nreplay_tags_per_key = {TAGS}\nnew_entries_per_min = 100000\n"
        )),
    );
    let o = Node::start(
        N,
        3,
        NodeOpts {
            bootstrap: vec![x.ip()],
            ..onion("")
        },
    );
    let r = Node::start(
        N,
        4,
        NodeOpts {
            bootstrap: vec![x.ip(), o.ip()],
            ..onion("")
        },
    );
    wait_linked(&x, &o);
    wait_linked(&x, &r);
    let r_addr: Address = r.address().parse().expect("R's address");

    // The hostile peer, linked to X, gets X's record (and key 1) as the first frame.
    let to: SocketAddr = x.listen().parse().unwrap();
    let mut peer = HostilePeer::dial(to, listen_addr(N, 200).parse().unwrap());
    let first = peer.peer.clone();
    let k1 = announced(&first);

    // Three keys' worth of fresh packets to key 1: X relays as many as key 1 has
    // tags, and drops the rest (fail closed, never relayed unchecked).
    let base = (counter(&x, "relayed"), counter(&x, "dropped"));
    send_through(&mut peer, &first, r_addr, FLOOD, "flood");
    wait_relayed(&x, base, TAGS, FLOOD, "the flood to key 1");

    // X announces a new key (gossip to its neighbours, the hostile peer among them)
    // and says it rotated early.
    let start = Instant::now();
    let mut newest = first.clone();
    while announced(&newest).epoch == k1.epoch {
        assert!(
            start.elapsed() < ROTATION_TIMEOUT,
            "after {FLOOD} packets to its key {}, X still announces it {ROTATION_TIMEOUT:?} \
             later: it refuses every onion packet until its scheduled rotation{}",
            k1.epoch,
            x.describe_for_failure()
        );
        let me = first.record.address;
        let since = newest.record.time;
        if let Some(rec) = peer.recv_until(Duration::from_millis(500), |body| match body {
            LinkBody::Gossip(g) => g
                .records
                .iter()
                .find(|r| r.record.address == me && r.record.time > since)
                .cloned(),
            _ => None,
        }) {
            rec.verify(hermes::crypto::unix_now())
                .unwrap_or_else(|e| panic!("X's new record does not verify: {e}"));
            newest = rec;
        }
    }
    let k2 = announced(&newest);
    eprintln!(
        "[{:.1?}] X announces key {} in place of {}",
        start.elapsed(),
        k2.epoch,
        k1.epoch
    );
    assert!(
        k2.epoch > k1.epoch && k2.public != k1.public,
        "{k1:?} {k2:?}"
    );
    wait_for(
        Duration::from_secs(10),
        "X logs the early rotation",
        &[&x],
        || x.log().contains("packet key rotated early"),
    );

    // Fresh packets to the new key are peeled and relayed again, every one.
    let base = (counter(&x, "relayed"), counter(&x, "dropped"));
    send_through(&mut peer, &newest, r_addr, AFTER, "after");
    wait_relayed(&x, base, AFTER, AFTER, "packets to the new key");

    // O must wrap to the new key: one wrapped to the full old one is dropped,
    // and after two sendings without a receipt O avoids X and sends directly.
    // O hears of the new key by gossip from X and reads its relays again when
    // its book changes (`router::BookChanged`).
    let x_addr = x.address();
    wait_for(
        Duration::from_secs(30),
        format!("O's book has X's key {}", k2.epoch),
        &[&o, &x],
        || {
            let out = o.cli("peers", &["--json"]);
            assert!(out.ok(), "{out}");
            out.stdout.lines().any(|l| {
                let p: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
                p["address"] == x_addr.as_str() && p["packet_key_epoch"] == k2.epoch
            })
        },
    );

    // A genuine message from O to R: X is the one relay O knows, so it goes through X.
    let text = format!("through a relay a peer tried to fill {}", random_hex(8));
    o.push(&r.address(), &text);
    r.pull_until(ARRIVAL_TIMEOUT, &text, |lines| {
        lines.iter().any(|l| l.ends_with(&text))
    });
    assert!(
        counter(&x, "relayed") > base.0 + AFTER,
        "the message reached R without X relaying it"
    );
}
