//! The overlay (issue 3): every node keeps between `min_neighbours` and `max_neighbours`
//! links and the network stays in one piece: it converges from a single bootstrap node,
//! heals after crashes, lets a newcomer into a full network, survives a graceful leave,
//! and a node restarted without bootstrap addresses finds its way back through its
//! address book.
//!
//! Every wait below polls the `status --json` of all the nodes concerned (see
//! [`wait_for_overlay`]); degrees count only links to live nodes, since a status may
//! still list a neighbour that was just killed.

mod common;

use common::*;
use hermes::actors::peer_session::KEEPALIVE_TIMEOUT;
use std::time::{Duration, Instant};

/// How long a network may take to converge after its last node is up, or to heal
/// after nodes leave or crash. The worst case most likely includes one `FULL_BACKOFF`
/// (30 s): while six nodes that all bootstrap from one form the network, a
/// node may be answered `Full` by every other node it dials and wait that long
/// before it dials them again (seen once in CI, under the whole suite's load,
/// with a 30 s bound: one node stayed at 1 of its minimum 2 for the whole 30 s
/// and dialled nobody meanwhile).
const SETTLE_TIMEOUT: Duration =
    Duration::from_secs(hermes::overlay::membership::FULL_BACKOFF.as_secs() + 30);

fn opts(min: usize, max: usize) -> NodeOpts {
    NodeOpts {
        min_neighbours: u32::try_from(min).expect("small min"),
        max_neighbours: u32::try_from(max).expect("small max"),
        ..NodeOpts::default()
    }
}

fn refs(nodes: &[Node]) -> Vec<&Node> {
    nodes.iter().collect()
}

/// Every node has `min..=max` neighbours and the graph is connected.
fn bounded_and_connected(min: usize, max: usize) -> impl Fn(&Overlay) -> Result<(), String> {
    move |overlay| {
        overlay.check_min(min)?;
        overlay.check_max(max)?;
        overlay.check_connected()
    }
}

/// Every node has at least `min` neighbours and the graph is connected (used where the
/// issue promises no upper bound, or where a node may briefly still list a dead one).
fn connected_with_at_least(min: usize) -> impl Fn(&Overlay) -> Result<(), String> {
    move |overlay| {
        overlay.check_min(min)?;
        overlay.check_connected()
    }
}

/// `listen` has at least `min` neighbours among the polled nodes.
fn node_has_at_least(listen: String, min: usize) -> impl Fn(&Overlay) -> Result<(), String> {
    move |overlay| match overlay.degree(&listen) {
        d if d >= min => Ok(()),
        d => Err(format!("{listen} has {d} neighbours, wants {min}")),
    }
}

/// Waits until `sender`'s outbox has nothing queued or in flight and at least one
/// delivery: the receipt is back, so no copy of the message is still being retried.
fn wait_receipt(sender: &Node, recipient: &Node) {
    wait_for(
        DELIVERY_TIMEOUT,
        format!(
            "the receipt to settle {}'s outbox (queued = in_flight = 0, delivered >= 1)",
            sender.listen()
        ),
        &[sender, recipient],
        || {
            sender.try_status().is_some_and(|st| {
                let (queued, in_flight, delivered, _) = outbox_counts(&st);
                queued == 0 && in_flight == 0 && delivered >= 1
            })
        },
    );
}

/// Six nodes (min 2, max 4) from one bootstrap, converged; returns them with the index
/// of the node with the most neighbours (losing it hurts its neighbours the most).
fn six_converged(n: u8) -> (Vec<Node>, usize) {
    let nodes = start_network(n, 6, opts(2, 4));
    let converged = wait_for_overlay(
        SETTLE_TIMEOUT,
        "6 nodes with >= 2 neighbours, connected",
        &refs(&nodes),
        connected_with_at_least(2),
    );
    let busiest = (0..nodes.len())
        .max_by_key(|&i| converged.degree(&nodes[i].listen()))
        .expect("six nodes");
    (nodes, busiest)
}

/// All of `nodes` but the one at `except`.
fn all_but(nodes: &[Node], except: usize) -> Vec<&Node> {
    nodes
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != except)
        .map(|(_, node)| node)
        .collect()
}

#[test]
fn thirty_nodes_converge_survive_churn_and_rejoin() {
    const N: u8 = 83;
    const MIN: usize = 3;
    const MAX: usize = 6;
    let started = Instant::now();
    // Flood mode: this is the overlay's test (the message shows the
    // survivors still form one network). In onion mode the origin does not
    // know which 9 of its 28 relays just died, and measured, the message
    // arrived on the third sending (+11 s) and its receipt later than the
    // 30 s bound: see the issue 9 note. tests/onion.rs kills relays too.
    let mut nodes = start_network(
        N,
        30,
        NodeOpts {
            routing_mode: Some("flood"),
            ..opts(MIN, MAX)
        },
    );
    eprintln!("30 nodes up after {:.1?}", started.elapsed());

    // The 30 s are counted from when the last node answered status.
    wait_for_overlay(
        SETTLE_TIMEOUT,
        "all 30 nodes with 3..=6 neighbours, connected",
        &refs(&nodes),
        bounded_and_connected(MIN, MAX),
    );

    // Crash every third node: .2 (everyone's only bootstrap address), .5, ..., .26.
    let killed: Vec<usize> = (0..nodes.len()).step_by(3).take(9).collect();
    let (from, to) = (1, 29); // .3 and .31
    assert!(
        !killed.contains(&from) && !killed.contains(&to),
        "the sender and the recipient must survive"
    );
    for &i in &killed {
        nodes[i].kill();
    }
    let killed_at = Instant::now();
    let text = format!("through the churn {}", random_hex(12));
    nodes[from].push(&nodes[to].ip(), &text);

    {
        let survivors: Vec<&Node> = nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| !killed.contains(i))
            .map(|(_, node)| node)
            .collect();
        wait_for_overlay(
            SETTLE_TIMEOUT.saturating_sub(killed_at.elapsed()),
            "the 21 survivors, within 30 s of the kills, with >= 3 neighbours among \
             themselves, connected",
            &survivors,
            connected_with_at_least(MIN),
        );
    }

    let (sender, recipient) = (&nodes[from], &nodes[to]);
    let pulled = recipient.pull_until(
        DELIVERY_TIMEOUT,
        "the message pushed right after the kills",
        |lines| lines.iter().any(|l| l.contains(&text)),
    );
    let copies: Vec<&String> = pulled.iter().filter(|l| l.contains(&text)).collect();
    assert_eq!(
        copies,
        [&pull_line(&sender.ip(), &text)],
        "the message must arrive exactly once"
    );
    wait_receipt(sender, recipient);
    let later = recipient.pull();
    assert!(
        !later.iter().any(|l| l.contains(&text)),
        "a later pull must not show the message again: {later:?}"
    );

    // Back they come, knowing nobody's address but what their address books hold.
    for &i in &killed {
        nodes[i].set_bootstrap(Vec::new());
        nodes[i].respawn();
    }
    for &i in &killed {
        nodes[i].wait_ready();
    }
    // Again counted from when the last restarted node answered status.
    wait_for_overlay(
        SETTLE_TIMEOUT,
        "all 30 nodes, after the 9 restarted without bootstrap, with 3..=6 neighbours, \
         connected",
        &refs(&nodes),
        bounded_and_connected(MIN, MAX),
    );
    eprintln!("test took {:.1?}", started.elapsed());
}

#[test]
fn full_network_lets_a_newcomer_in() {
    const N: u8 = 84;
    const MIN: usize = 2;
    const MAX: usize = 3;
    let started = Instant::now();
    let nodes = start_network(N, 8, opts(MIN, MAX));
    wait_for_overlay(
        SETTLE_TIMEOUT,
        "8 nodes with >= 2 neighbours, connected",
        &refs(&nodes),
        connected_with_at_least(MIN),
    );
    let overlay = wait_for_overlay(
        SETTLE_TIMEOUT,
        "a full node (one listing 3 neighbours)",
        &refs(&nodes),
        |overlay| {
            if overlay.members().any(|m| overlay.listed_count(m) == MAX) {
                Ok(())
            } else {
                Err("no node lists 3 neighbours".to_owned())
            }
        },
    );
    let full = overlay
        .members()
        .find(|m| overlay.listed_count(m) == MAX)
        .and_then(|m| nodes.iter().find(|node| node.listen() == m))
        .expect("the full node is one of ours");

    // The newcomer knows only the full node; it must still reach min_neighbours
    // without pushing anybody past max_neighbours.
    let newcomer = Node::start(
        N,
        10,
        NodeOpts {
            bootstrap: vec![full.ip()],
            ..opts(MIN, MAX)
        },
    );
    let mut all = refs(&nodes);
    all.push(&newcomer);
    let newcomer_in = node_has_at_least(newcomer.listen(), MIN);
    wait_for_overlay(
        SETTLE_TIMEOUT,
        format!(
            "the newcomer {} (bootstrap: the full {}) with >= 2 neighbours, no node with \
             more than 3",
            newcomer.listen(),
            full.listen()
        ),
        &all,
        |overlay| {
            overlay.check_max(MAX)?;
            // Naming the full node puts its log beside the newcomer's on failure.
            newcomer_in(overlay).map_err(|why| format!("{why} (bootstrap: {})", full.listen()))
        },
    );
    eprintln!("test took {:.1?}", started.elapsed());
}

#[test]
fn sigterm_leaves_rest_connected() {
    const N: u8 = 85;
    const MIN: usize = 2;
    let started = Instant::now();
    // The busiest node leaves: its neighbours lose the most.
    let (mut nodes, leaving) = six_converged(N);
    let exit = nodes[leaving].term(Duration::from_secs(5));
    assert_eq!(
        exit.code(),
        Some(0),
        "SIGTERM must make {} exit 0 within 5 s, got {exit}",
        nodes[leaving].listen()
    );

    let rest = all_but(&nodes, leaving);
    wait_for_overlay(
        Duration::from_secs(20),
        format!(
            "the 5 nodes left after {} did, with >= 2 neighbours among themselves, connected",
            nodes[leaving].listen()
        ),
        &rest,
        connected_with_at_least(MIN),
    );
    eprintln!("test took {:.1?}", started.elapsed());
}

/// Node `.5` comes back with no bootstrap address, so only the address book in its data
/// dir can bring its links back.
///
/// It is stopped with SIGTERM rather than SIGKILLed, for two reasons. Neighbours redial a
/// lost (killed) neighbour, which reconnects it whatever its address book holds: after a
/// SIGKILL this test passes on a node whose data dir was wiped, so it could not fail. A
/// node that said it was leaving is not redialled, and once the others are back at
/// min_neighbours among themselves none of them has a reason to dial anybody. And the
/// address book is written without a flush of its own (sled flushes every 500 ms), so a
/// SIGKILL just after the links came up may lose it, whereas a stop flushes the store.
#[test]
fn restart_without_bootstrap_uses_the_address_book() {
    const N: u8 = 86;
    const MIN: usize = 2;
    const MAX: usize = 4;
    let started = Instant::now();
    let mut nodes = start_network(N, 4, opts(MIN, MAX));
    let fifth = nodes.len() - 1;
    let fifth_listen = nodes[fifth].listen();
    wait_for_overlay(
        SETTLE_TIMEOUT,
        format!("{fifth_listen} with >= 2 neighbours"),
        &refs(&nodes),
        node_has_at_least(fifth_listen.clone(), MIN),
    );

    let exit = nodes[fifth].term(Duration::from_secs(5));
    assert_eq!(
        exit.code(),
        Some(0),
        "SIGTERM must make {fifth_listen} exit 0 within 5 s, got {exit}"
    );
    wait_for_overlay(
        SETTLE_TIMEOUT,
        format!("the 3 nodes other than {fifth_listen} with >= 2 neighbours among themselves"),
        &refs(&nodes[..fifth]),
        connected_with_at_least(MIN),
    );

    nodes[fifth].set_bootstrap(Vec::new());
    nodes[fifth].restart();
    wait_for_overlay(
        Duration::from_secs(20),
        format!("{fifth_listen}, restarted without bootstrap addresses, with >= 2 neighbours"),
        &refs(&nodes),
        node_has_at_least(fifth_listen.clone(), MIN),
    );
    eprintln!("test took {:.1?}", started.elapsed());
}

/// A neighbour that stops answering without closing anything (here: a process stopped
/// with SIGSTOP, whose kernel still holds its connections open and acknowledges what is
/// sent to it) is cut once it misses keepalives for `KEEPALIVE_TIMEOUT`, and replaced:
/// nothing but the keepalive can notice it. Woken up with SIGCONT, it finds its own
/// links dead the same way and joins again.
#[test]
fn frozen_neighbour_is_cut_and_replaced() {
    const N: u8 = 87;
    const MIN: usize = 2;
    let started = Instant::now();
    let (nodes, frozen) = six_converged(N);
    let frozen_listen = nodes[frozen].listen();
    let rest = all_but(&nodes, frozen);
    // Who links to it as it stops: each of them must cut the link for silence.
    let before = Overlay::poll(&rest);
    let pid = nodes[frozen].pid().expect("the frozen node runs");
    // SAFETY: kill(2) of our own, not yet reaped, child. A stopped child is still
    // SIGKILLed by `Node`'s drop if the test fails.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
    let stopped = Instant::now();

    let cut = wait_for_overlay(
        KEEPALIVE_TIMEOUT + SETTLE_TIMEOUT,
        format!(
            "the 5 nodes other than the stopped {frozen_listen} no longer listing it, with \
             >= 2 neighbours among themselves, connected"
        ),
        &rest,
        |overlay| {
            let listers = overlay.listers(&frozen_listen);
            if !listers.is_empty() {
                return Err(format!("{listers:?} still list {frozen_listen}"));
            }
            overlay.check_min(MIN)?;
            overlay.check_connected()
        },
    );
    // No connection closed: each node that had a link to it cut it for silence.
    for listen in before.listers(&frozen_listen) {
        let node = rest
            .iter()
            .find(|node| node.listen() == listen)
            .expect("a lister is one of the others");
        assert!(
            node.log().contains("keepalive timeout"),
            "{listen} dropped the stopped {frozen_listen} but logged no keepalive timeout \
             ({:.1?} after the stop):\n{cut}{}",
            stopped.elapsed(),
            node.describe_for_failure()
        );
    }

    // SAFETY: as above.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
    wait_for_overlay(
        KEEPALIVE_TIMEOUT + SETTLE_TIMEOUT,
        format!("{frozen_listen}, woken up, with >= 2 neighbours again, all connected"),
        &refs(&nodes),
        |overlay| {
            node_has_at_least(frozen_listen.clone(), MIN)(overlay)?;
            overlay.check_connected()
        },
    );
    eprintln!("test took {:.1?}", started.elapsed());
}

/// Issue 10: with `min_neighbours = max_neighbours` every node is full once the network
/// has formed, so nothing but a mechanism that works at `max` can join two pieces or let
/// a newcomer in. 8 nodes at 3/3 must be one component (measured on the base: two
/// disconnected 4-cliques, for good), and a 9th node (2/3) that knows only one of them
/// must reach 2 neighbours with nobody above 3 (on the base: 0 neighbours after 30 s).
#[test]
fn min_equals_max_is_one_component_and_admits_a_newcomer() {
    const N: u8 = 110;
    const DEGREE: usize = 3;
    let started = Instant::now();
    let nodes = start_network(N, 8, opts(DEGREE, DEGREE));
    wait_for_overlay(
        Duration::from_secs(60),
        "8 nodes at min = max = 3: every node at 3, one component",
        &refs(&nodes),
        bounded_and_connected(DEGREE, DEGREE),
    );
    let newcomer = Node::start(
        N,
        10,
        NodeOpts {
            bootstrap: vec![nodes[3].ip()],
            ..opts(2, DEGREE)
        },
    );
    let mut all = refs(&nodes);
    all.push(&newcomer);
    let newcomer_in = node_has_at_least(newcomer.listen(), 2);
    wait_for_overlay(
        SETTLE_TIMEOUT,
        format!(
            "the newcomer {} (bootstrap: {}, every node full) with >= 2 neighbours, no node \
             above 3",
            newcomer.listen(),
            nodes[3].listen()
        ),
        &all,
        |overlay| {
            overlay.check_max(DEGREE)?;
            newcomer_in(overlay)
        },
    );
    eprintln!("test took {:.1?}", started.elapsed());
}

/// The established TCP connections (from `/proc/net/tcp`, IPv4) with one end on `ports`
/// at one of `ips`: `(local, remote)`.
fn tcp_connections_touching(ips: &[std::net::Ipv4Addr]) -> Vec<(String, String)> {
    let text = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let parse = |s: &str| -> Option<std::net::SocketAddrV4> {
        let (ip, port) = s.split_once(':')?;
        let ip = u32::from_str_radix(ip, 16).ok()?;
        let port = u16::from_str_radix(port, 16).ok()?;
        Some(std::net::SocketAddrV4::new(
            std::net::Ipv4Addr::from(ip.to_le_bytes()),
            port,
        ))
    };
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // st 01 = ESTABLISHED.
        if f.len() < 4 || f[3] != "01" {
            continue;
        }
        let (Some(local), Some(remote)) = (parse(f[1]), parse(f[2])) else {
            continue;
        };
        let ours = |a: &std::net::SocketAddrV4| ips.contains(a.ip()) && a.port() == PORT;
        if ours(&local) || ours(&remote) {
            out.push((local.to_string(), remote.to_string()));
        }
    }
    out
}

/// Issue 10: a node listening on 127.0.N.3 dialled out from 127.0.0.1, so its peers (and
/// captures, firewalls) saw the wrong source. Every established link between two nodes
/// must have both ends on the nodes' listen IPs.
#[test]
fn links_leave_from_the_listen_ip() {
    const N: u8 = 111;
    let a = Node::start(N, 2, opts(1, 4));
    let b = Node::start(
        N,
        3,
        NodeOpts {
            bootstrap: vec![a.ip()],
            ..opts(1, 4)
        },
    );
    wait_linked(&a, &b);
    let ips: Vec<std::net::Ipv4Addr> = [a.ip(), b.ip()]
        .iter()
        .map(|s| s.parse().expect("an IPv4 address"))
        .collect();
    let mut conns = Vec::new();
    wait_for(
        LINK_TIMEOUT,
        "an established connection on a node's peer port in /proc/net/tcp",
        &[&a, &b],
        || {
            conns = tcp_connections_touching(&ips);
            !conns.is_empty()
        },
    );
    for (local, remote) in &conns {
        for end in [local, remote] {
            let ip: std::net::SocketAddrV4 = end.parse().expect("a socket address");
            assert!(
                ips.contains(ip.ip()),
                "connection {local} <-> {remote}: the end {end} is not on a listen IP \
                 ({ips:?}); all: {conns:?}"
            );
        }
    }
}

/// Issue 10: an eclipse. Four Sybil peers (real protocol, valid keys) link to a node and
/// gossip 2,048 records of nodes that do not exist; then they leave, and the node is
/// restarted with no bootstrap address. On the base the forged records had replaced its
/// whole address book and it stayed at 0 neighbours. Its honest neighbours were nodes it
/// had linked to itself (kept apart from gossip, and saved as anchors): it must be back
/// at `min_neighbours` from them.
#[test]
fn eclipsed_node_restarted_finds_its_honest_neighbours() {
    use common::hostile::HostilePeer;
    use hermes::crypto::{unix_now, Identity, SignedRecord};
    use hermes::wire::link::{Gossip, LinkBody, MAX_RECORDS_PER_FRAME};

    const N: u8 = 112;
    const SYBILS: u8 = 4;
    const FORGED_PER_SYBIL: usize = 512;
    let started = Instant::now();
    // The honest nodes are content with one link each (they link to each other): only
    // the victim's own efforts bring it back. With three links each, both of the
    // victim's honest neighbours look able to spare their link to it.
    let a = Node::start(N, 2, opts(1, 4));
    let b = Node::start(
        N,
        3,
        NodeOpts {
            bootstrap: vec![a.ip()],
            ..opts(1, 4)
        },
    );
    let c = Node::start(
        N,
        5,
        NodeOpts {
            bootstrap: vec![a.ip(), b.ip()],
            ..opts(1, 4)
        },
    );
    let mut victim = Node::start(
        N,
        4,
        NodeOpts {
            bootstrap: vec![a.ip(), b.ip()],
            ..opts(2, 4)
        },
    );
    let victim_in = node_has_at_least(victim.listen(), 2);
    wait_for_overlay(
        SETTLE_TIMEOUT,
        format!("{} linked to both honest nodes", victim.listen()),
        &[&a, &b, &c, &victim],
        &victim_in,
    );

    let at = |host: u32| -> std::net::SocketAddr {
        format!("127.0.{N}.{}:{}", 20 + host % 200, 1000 + host / 200)
            .parse()
            .expect("a socket address")
    };
    let to: std::net::SocketAddr = victim.listen().parse().expect("a socket address");
    let mut sybils: Vec<HostilePeer> = (0..SYBILS)
        .map(|i| HostilePeer::dial(to, format!("127.0.{N}.{}:{PORT}", 10 + i).parse().unwrap()))
        .collect();
    let mut next = 0u32;
    let mut sent = 0;
    for _round in 0..FORGED_PER_SYBIL / (MAX_RECORDS_PER_FRAME - 1) + 1 {
        for s in sybils.iter_mut() {
            let mut records = vec![s.record.clone()];
            for _ in 1..MAX_RECORDS_PER_FRAME {
                next += 1;
                records.push(SignedRecord::sign(
                    &Identity::generate(),
                    at(next),
                    true,
                    unix_now(),
                ));
            }
            if s.send(LinkBody::Gossip(Gossip {
                // No other neighbours: each Sybil looks like a newcomer in need.
                neighbours: vec![],
                records,
            })) {
                sent += MAX_RECORDS_PER_FRAME - 1;
            }
        }
        // Past the node's per-link gossip gap (500 ms), answering its pings.
        for s in sybils.iter_mut() {
            s.recv_until(
                Duration::from_millis(600 / u64::from(SYBILS)),
                |_| None::<()>,
            );
        }
    }
    eprintln!("{sent} forged records gossiped by {SYBILS} Sybils");
    // The attacker leaves; the node restarts with nothing but its store.
    drop(sybils);
    victim.kill();
    victim.set_bootstrap(Vec::new());
    victim.respawn();
    victim.wait_ready();
    wait_for_overlay(
        Duration::from_secs(60),
        format!(
            "{}, eclipsed, then restarted without bootstrap addresses, back at 2 neighbours",
            victim.listen()
        ),
        &[&a, &b, &c, &victim],
        &victim_in,
    );
    eprintln!("test took {:.1?}", started.elapsed());
}
