//! Trust: a hostile relay in the path can neither replay, re-time nor censor
//! a message, nor forge what settles it.
//!
//! Topology of every test: sender S (.2) and honest relay M (.3) are each
//! linked only to a hostile peer H (two links, one per node), and M is linked
//! to the recipient R (.4). So every packet from S reaches R through H, then
//! M: H sees each packet and receipt and may change, hold or replay any of
//! it, speaking the real protocol with its own valid keys.

mod common;

use std::time::{Duration, Instant};

use common::hostile::HostilePeer;
use common::*;
use hermes::crypto::unix_now;
use hermes::wire::link::{FloodPacket, LinkBody, Receipt};

/// How long the hostile peer waits for a frame from the node.
const FRAME_TIMEOUT: Duration = Duration::from_secs(20);

struct HostileLine {
    s: Node,
    /// The honest relay: only kept running.
    _m: Node,
    r: Node,
    /// H's link to S.
    hs: HostilePeer,
    /// H's link to M.
    hm: HostilePeer,
}

fn hostile_line(n: u8, sender_extra: &str) -> HostileLine {
    let m = Node::start(n, 3, NodeOpts::default());
    let r = Node::start(
        n,
        4,
        NodeOpts {
            bootstrap: vec![m.listen()],
            ..NodeOpts::default()
        },
    );
    wait_linked(&m, &r);
    let s = Node::start(
        n,
        2,
        NodeOpts {
            extra_toml: sender_extra.to_string(),
            // What H sees and changes are flood packets.
            routing_mode: Some("flood"),
            ..NodeOpts::default()
        },
    );
    let at = |h: u8| listen_addr(n, h).parse().expect("an address");
    let hs = HostilePeer::dial(at(2), at(9));
    let hm = HostilePeer::dial(at(3), at(10));
    wait_for(
        LINK_TIMEOUT,
        "S and M link the hostile peer",
        &[&s, &m],
        || s.has_neighbour(&listen_addr(n, 9)) && m.has_neighbour(&listen_addr(n, 10)),
    );
    HostileLine {
        s,
        _m: m,
        r,
        hs,
        hm,
    }
}

/// The next packet S sends to H.
fn next_packet(hs: &mut HostilePeer) -> FloodPacket {
    hs.recv_until(FRAME_TIMEOUT, |b| match b {
        LinkBody::Packet(p) => Some(p.clone()),
        _ => None,
    })
    .expect("S sends the packet to its only neighbour, H")
}

/// The next receipt M sends to H.
fn next_receipt(hm: &mut HostilePeer) -> Receipt {
    hm.recv_until(FRAME_TIMEOUT, |b| match b {
        LinkBody::Receipt(r) => Some(r.clone()),
        _ => None,
    })
    .expect("M passes R's receipt back to H")
}

/// Round trip on H's link: once the pong is back, the node has handled every
/// frame H sent before the ping (sessions hand frames to the router in order
/// and wait for it).
fn sync(h: &mut HostilePeer) {
    let nonce = rand::random::<u64>();
    assert!(h.send(LinkBody::Ping(nonce)), "link still up");
    h.recv_until(FRAME_TIMEOUT, |b| {
        matches!(b, LinkBody::Pong(x) if *x == nonce).then_some(())
    })
    .expect("pong");
}

fn counter(node: &Node, name: &str) -> u64 {
    node.status()["counters"][name].as_u64().unwrap_or(0)
}

/// Waits until the clock has passed `t` (Unix seconds).
fn wait_past(t: u64, nodes: &[&Node]) {
    wait_for(
        Duration::from_secs(t.saturating_sub(unix_now()) + 5),
        format_args!("the clock to pass {t}"),
        nodes,
        || unix_now() > t,
    );
}

/// Attack 1: H forwards the packet with its expiry shortened to 2 s, later
/// forwards the genuine one, and after the short expiry has passed re-sends
/// both, with new attempt numbers and new short expiries, five times. R must
/// hold the message exactly once.
#[test]
fn replayed_and_re_timed_copies_are_delivered_once() {
    let mut t = hostile_line(56, "");
    let text = format!("once {}", random_hex(6));
    t.s.push(&t.r.ip(), &text);
    let genuine = next_packet(&mut t.hs);

    let mut pulled = Vec::new();
    let mut short = genuine.clone();
    short.expires_at = unix_now() + 2;
    assert!(t.hm.send(LinkBody::Packet(short.clone())));
    assert!(t.hm.send(LinkBody::Packet(genuine.clone())));
    pulled.extend(t.r.pull_until(DELIVERY_TIMEOUT, "the message", |l| !l.is_empty()));
    let replays_before = counter(&t.r, "replays");
    for round in 1..=5u32 {
        wait_past(short.expires_at, &[&t.r]);
        short.attempt = round * 100;
        short.expires_at = unix_now() + 2;
        let mut again = genuine.clone();
        again.attempt = round * 100 + 1;
        assert!(t.hm.send(LinkBody::Packet(short.clone())));
        assert!(t.hm.send(LinkBody::Packet(again)));
        sync(&mut t.hm);
        // The genuine copy reached R and was answered from its delivered mark.
        wait_for(
            DELIVERY_TIMEOUT,
            format_args!("R to answer replay {round} from its delivered mark"),
            &[&t.r],
            || counter(&t.r, "replays") >= replays_before + u64::from(round),
        );
        pulled.extend(t.r.pull());
    }
    assert_eq!(
        pulled,
        vec![pull_line(&t.s.ip(), &text)],
        "one push must be delivered exactly once"
    );
}

/// Attack 1, second half: with a short time to live, the genuine bytes are
/// replayed after the message has expired, under a header claiming a later
/// expiry. The expiry is sealed, so the copy does not open; and the delivered
/// mark outlives the letter anyway.
#[test]
fn replay_after_the_time_to_live_with_a_new_expiry_is_refused() {
    let mut t = hostile_line(57, "[routing]\nttl = \"3s\"\n");
    let text = format!("short-lived {}", random_hex(6));
    t.s.push(&t.r.ip(), &text);
    let genuine = next_packet(&mut t.hs);
    assert!(t.hm.send(LinkBody::Packet(genuine.clone())));
    let mut pulled =
        t.r.pull_until(DELIVERY_TIMEOUT, "the message", |l| !l.is_empty());
    wait_past(genuine.expires_at, &[&t.r]);
    // Answered from the delivered mark (kept until sent + max_ttl) or
    // refused as altered: either way, not delivered again.
    let handled = |r: &Node| counter(r, "replays") + counter(r, "dropped");
    let before = handled(&t.r);
    for i in 1..=3u32 {
        let mut replay = genuine.clone();
        replay.attempt = i;
        replay.expires_at = unix_now() + 3600 * u64::from(i);
        assert!(t.hm.send(LinkBody::Packet(replay)));
    }
    sync(&mut t.hm);
    wait_for(
        DELIVERY_TIMEOUT,
        "R to refuse the three re-timed replays",
        &[&t.r],
        || handled(&t.r) >= before + 3,
    );
    pulled.extend(t.r.pull());
    assert_eq!(pulled, vec![pull_line(&t.s.ip(), &text)]);
}

/// Attack 2: before passing the genuine packet on, H sends M tampered copies
/// under the genuine id for attempts 0..50 (one sealed byte flipped; or the
/// expiry changed), and the genuine bytes with no hops left. None of them may
/// stop the genuine copy.
#[test]
fn tampered_copies_for_any_attempt_do_not_stop_the_genuine_one() {
    let mut t = hostile_line(58, "");
    let text = format!("uncensored {}", random_hex(6));
    t.s.push(&t.r.ip(), &text);
    let genuine = next_packet(&mut t.hs);
    for attempt in 0..50 {
        let mut flipped = genuine.clone();
        flipped.attempt = attempt;
        flipped.sealed.ciphertext[attempt as usize % 16] ^= 0x55;
        assert!(t.hm.send(LinkBody::Packet(flipped)));
        let mut retimed = genuine.clone();
        retimed.attempt = attempt;
        retimed.expires_at -= 1;
        assert!(t.hm.send(LinkBody::Packet(retimed)));
    }
    let mut starved = genuine.clone();
    starved.hops_left = 0;
    assert!(t.hm.send(LinkBody::Packet(starved)));
    sync(&mut t.hm);
    assert!(t.hm.send(LinkBody::Packet(genuine)));
    let got =
        t.r.pull_until(DELIVERY_TIMEOUT, "the genuine message", |l| !l.is_empty());
    assert_eq!(got, vec![pull_line(&t.s.ip(), &text)]);
}

/// Attack 4: H rewrites the expiry of R's receipt (and forges one for the id
/// with its own key) before passing it to S. S must not take either as
/// delivery; the genuine receipt settles the message.
#[test]
fn rewritten_receipts_do_not_settle_a_message() {
    let mut t = hostile_line(59, "");
    let text = format!("settled {}", random_hex(6));
    t.s.push(&t.r.ip(), &text);
    let genuine = next_packet(&mut t.hs);
    assert!(t.hm.send(LinkBody::Packet(genuine.clone())));
    let receipt = next_receipt(&mut t.hm);
    assert_eq!(receipt.id, genuine.id);
    let mut later = receipt.clone();
    later.expires_at += 86_400;
    let mut sooner = receipt.clone();
    sooner.expires_at -= 1;
    let forged = Receipt::sign(&t.hs.identity, receipt.id, receipt.expires_at, None);
    for r in [later, sooner, forged] {
        assert!(t.hs.send(LinkBody::Receipt(r)));
    }
    sync(&mut t.hs);
    let (queued, in_flight, delivered, _) = t.s.outbox();
    assert_eq!(
        (queued + in_flight, delivered),
        (1, 0),
        "a receipt with a rewritten expiry, or signed by another key, must not settle the message"
    );
    assert!(t.hs.send(LinkBody::Receipt(receipt)));
    wait_for(
        DELIVERY_TIMEOUT,
        "the genuine receipt settles it",
        &[&t.s],
        || t.s.outbox().2 == 1,
    );
    assert_eq!(t.r.pull(), vec![pull_line(&t.s.ip(), &text)]);
}

/// Attack 4b: relays pass the first receipt for a message on without
/// checking its signature (the origin checks it). H makes M remember the
/// genuine message (its bytes with no hops left, which M does not pass on),
/// hands M a receipt for it that R never signed, and then the genuine copy
/// with its hops. The unchecked receipt must neither answer that copy in
/// R's name nor stop it: R gets the message, and M passes R's genuine
/// receipt back.
#[test]
fn a_forged_receipt_at_a_relay_neither_answers_nor_stops_the_message() {
    let mut t = hostile_line(28, "");
    let text = format!("not settled by H {}", random_hex(6));
    t.s.push(&t.r.ip(), &text);
    let genuine = next_packet(&mut t.hs);
    let mut starved = genuine.clone();
    starved.hops_left = 0;
    assert!(t.hm.send(LinkBody::Packet(starved)));
    let forged = Receipt {
        id: genuine.id,
        recipient: genuine.recipient,
        signature: [0x55; 64],
        hops_left: 8,
        expires_at: genuine.expires_at,
        token: Some([0x66; 32]),
    };
    assert!(!forged.verify());
    assert!(t.hm.send(LinkBody::Receipt(forged)));
    sync(&mut t.hm);
    assert!(t.hm.send(LinkBody::Packet(genuine.clone())));
    let got =
        t.r.pull_until(DELIVERY_TIMEOUT, "the genuine message", |l| !l.is_empty());
    assert_eq!(got, vec![pull_line(&t.s.ip(), &text)]);
    let receipt = next_receipt(&mut t.hm);
    assert_eq!(receipt.id, genuine.id);
    assert!(receipt.verify(), "M passes back R's receipt, not H's");
    assert!(t.hs.send(LinkBody::Receipt(receipt)));
    wait_for(
        DELIVERY_TIMEOUT,
        "the genuine receipt settles it",
        &[&t.s],
        || t.s.outbox().2 == 1,
    );
}

/// Attack 7: an undeliverable message is retried with backoff, and its
/// retries leave nothing on disk at the relays.
#[test]
fn retries_of_an_undeliverable_message_cost_relays_nothing_lasting() {
    const N: u8 = 71;
    let m = Node::start(N, 3, NodeOpts::default());
    let s = Node::start(
        N,
        2,
        NodeOpts {
            bootstrap: vec![m.listen()],
            ..NodeOpts::default()
        },
    );
    let mut r = Node::start(
        N,
        4,
        NodeOpts {
            bootstrap: vec![m.listen()],
            ..NodeOpts::default()
        },
    );
    wait_linked(&s, &m);
    wait_linked(&m, &r);
    // One delivered message, so S knows R's record; then R goes away.
    let first = format!("first {}", random_hex(6));
    s.push(&r.ip(), &first);
    r.pull_until(DELIVERY_TIMEOUT, "the first message", |l| !l.is_empty());
    wait_for(DELIVERY_TIMEOUT, "the first receipt", &[&s], || {
        s.outbox().2 == 1
    });
    r.kill();
    s.push(&r.ip(), "never arrives");
    let start = Instant::now();
    wait_for(
        Duration::from_secs(40),
        "at least three retries",
        &[&s, &m],
        || counter(&s, "retried") >= 3,
    );
    let took = start.elapsed();
    let st = m.status();
    assert_eq!(
        st["drop_list"].as_u64(),
        Some(0),
        "a relay keeps no lasting entry per message or per retry: {st}"
    );
    // Exponential backoff from 2 s: three retries take at least 2 + 4 + 8 s
    // less jitter; a fixed short interval would have got there sooner.
    assert!(
        took >= Duration::from_secs(7),
        "retries back off (three came in {took:?})"
    );
}
