//! Names: `push --to IP` reaches the node that answers at that IP, never a node
//! that only claims it in gossip; the key first seen there is pinned, and a changed
//! key is refused with the command that accepts it; contacts name pinned keys.

mod common;

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use common::hostile::HostilePeer;
use common::*;
use hermes::actors::names::{EV_PROBING, PROBE_CACHE_TTL};
use hermes::crypto::{unix_now, Address, Identity, SignedRecord};
use hermes::wire::link::{Gossip, LinkBody};
use serde_json::Value;

fn sock(s: &str) -> SocketAddr {
    s.parse().expect("a socket address")
}

/// `hermes peers --json` of `node`, one object per entry.
fn peers(node: &Node) -> Vec<Value> {
    json_lines(&node.cli("peers", &["--json"]))
}

/// `hermes contacts list --json` of `node`.
fn contacts(node: &Node) -> Vec<Value> {
    json_lines(&node.cli("contacts", &["list", "--json"]))
}

fn json_lines(out: &CmdOutput) -> Vec<Value> {
    assert!(out.ok(), "{out}");
    out.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}\n{out}")))
        .collect()
}

fn contact<'a>(list: &'a [Value], name: &str) -> Option<&'a Value> {
    list.iter().find(|c| c["name"] == name)
}

/// A refusal: exit 1, nothing on stdout, one line on stderr containing every `needle`.
fn assert_refused(out: &CmdOutput, needles: &[&str]) {
    assert_eq!(out.code, Some(1), "expected exit 1: {out}");
    assert!(out.stdout.trim().is_empty(), "nothing on stdout: {out}");
    assert_eq!(
        out.stderr.trim().lines().count(),
        1,
        "one line on stderr: {out}"
    );
    for n in needles {
        assert!(out.stderr.contains(n), "stderr should contain {n:?}: {out}");
    }
}

/// Attack 3, "Redirect": a hostile neighbour of the sender gossips a record of its
/// own, validly signed and newer than the recipient's, that names the recipient's
/// IP:port. `push --to <recipient IP>` must still reach the recipient, and no
/// packet addressed to the hostile peer may leave the sender.
#[test]
fn gossiped_record_claiming_the_recipients_ip_does_not_redirect_a_push() {
    const N: u8 = 24;
    // Flood mode, so that the hostile neighbour sees every packet the sender
    // sends and can tell whom it is addressed to (name binding does not
    // depend on the mode).
    let nodes = line_with(N, 2, |_, o| o.routing_mode = Some("flood"));
    let (sender, recipient) = (&nodes[0], &nodes[1]);

    let mut hostile = HostilePeer::dial(sock(&sender.listen()), sock(&listen_addr(N, 9)));
    let hostile_address = hostile.identity.address();
    let claim = SignedRecord::sign(
        &hostile.identity,
        sock(&recipient.listen()),
        true,
        unix_now() + 60,
    );
    assert!(
        hostile.send(LinkBody::Gossip(Gossip {
            neighbours: vec![],
            records: vec![claim],
        })),
        "the sender closed the hostile link before the gossip"
    );
    // The claim is in the sender's book: the poisoning happened.
    let h = hostile_address.to_string();
    wait_for(
        LINK_TIMEOUT,
        "the hostile record naming the recipient's IP in the sender's book",
        &[sender],
        || {
            // Keep the hostile link alive (answer pings) while polling.
            hostile.recv_until(Duration::from_millis(50), |_| None::<()>);
            peers(sender)
                .iter()
                .any(|p| p["address"] == h.as_str() && p["listen"] == recipient.listen().as_str())
        },
    );

    let recipient_address: Address = recipient.address().parse().expect("an address");
    let text = format!("for the real recipient {}", random_hex(8));
    let (push, (to_hostile, relayed)) = thread::scope(|scope| {
        let push = scope.spawn(|| {
            sender.cli_timeout(
                "push",
                &["--to", &recipient.ip(), "--msg", &text, "--wait", "30"],
                Duration::from_secs(60),
            )
        });
        let (mut to_hostile, mut relayed) = (Vec::new(), 0);
        // Watch the hostile link for as long as the push runs.
        while !push.is_finished() {
            if let Some(p) = hostile.recv_until(Duration::from_millis(200), |b| match b {
                LinkBody::Packet(p) => Some((p.id, p.recipient)),
                _ => None,
            }) {
                if p.1 == hostile_address {
                    to_hostile.push(p.0);
                } else if p.1 == recipient_address {
                    relayed += 1;
                }
            }
        }
        (push.join().expect("the push thread"), (to_hostile, relayed))
    });
    assert!(
        to_hostile.is_empty(),
        "the push to {} was sealed to the hostile peer that only claimed the IP \
         (packets {to_hostile:?}); push: {push}",
        recipient.ip()
    );
    assert!(
        push.ok(),
        "push --wait should be delivered to the real recipient: {push}"
    );
    // The watch was live: as a neighbour, the hostile peer saw the flooded copy.
    assert!(
        relayed > 0,
        "the hostile link saw no copy of the packet to the recipient"
    );
    let got = recipient.pull_until(DELIVERY_TIMEOUT, "the pushed message", |l| !l.is_empty());
    assert_eq!(got, vec![pull_line(&sender.ip(), &text)]);

    // The key pinned for that IP is the recipient's own.
    let list = contacts(sender);
    let pin = contact(&list, &recipient.listen())
        .unwrap_or_else(|| panic!("a pin for {} in {list:?}", recipient.listen()));
    assert_eq!(pin["kind"], "ip");
    assert_eq!(pin["address"], recipient.address().as_str());
}

/// A node at a pinned IP comes back with a new identity: pushes to the IP and to a
/// contact added from it are refused (exit 1) with both addresses and the command
/// that accepts the change; after it, pushes are delivered again.
#[test]
fn changed_key_at_a_pinned_ip_is_refused_until_accepted() {
    const N: u8 = 25;
    let mut nodes = line(N, 2);
    let b_ip = ip(N, 3);
    let b_listen = listen_addr(N, 3);
    let old = nodes[1].address();

    // Pin by pushing once, and name it.
    let out = nodes[0].cli("push", &["--to", &b_ip, "--msg", "first", "--wait", "30"]);
    assert!(out.ok(), "{out}");
    let out = nodes[0].cli("contacts", &["add", "bob", &b_ip]);
    assert!(out.ok(), "{out}");
    let last_probe = Instant::now();
    nodes[1].pull_until(DELIVERY_TIMEOUT, "the first message", |l| !l.is_empty());

    // A new node at the same IP: a fresh data dir, so a new identity.
    nodes.pop().expect("node .3").kill();
    let b = Node::start(
        N,
        3,
        NodeOpts {
            bootstrap: vec![ip(N, 2)],
            ..NodeOpts::default()
        },
    );
    let a = &nodes[0];
    let new = b.address();
    assert_ne!(old, new);
    wait_linked(a, &b);
    // A probe result answers for PROBE_CACHE_TTL; the next push after that window
    // must notice the change. (A wait for a known window, not for a condition.)
    thread::sleep(PROBE_CACHE_TTL.saturating_sub(last_probe.elapsed()));

    let remove_pin = format!("hermes contacts remove {b_listen}");
    assert_refused(&a.try_push(&b_ip, "second"), &[&old, &new, &remove_pin]);
    assert_refused(&a.try_push(&b_listen, "second"), &[&old, &new, &remove_pin]);
    assert_refused(
        &a.try_push("bob", "second"),
        &[&old, &new, "contact bob", "hermes contacts remove bob"],
    );
    assert_eq!(a.outbox().0, 0, "nothing may be queued for a refused push");

    // Follow the instruction for the IP.
    let out = a.cli("contacts", &["remove", &b_listen]);
    assert!(out.ok(), "{out}");
    let out = a.cli("push", &["--to", &b_ip, "--msg", "second", "--wait", "30"]);
    assert!(out.ok(), "{out}");
    let pin = contacts(a);
    assert_eq!(
        contact(&pin, &b_listen).expect("a new pin")["address"],
        new.as_str()
    );
    // The contact still holds the old key until it is replaced the same way.
    assert_refused(&a.try_push("bob", "third"), &[&old, &new]);
    assert!(a.cli("contacts", &["remove", "bob"]).ok());
    assert!(a.cli("contacts", &["add", "bob", &b_ip]).ok());
    let out = a.cli("push", &["--to", "bob", "--msg", "third", "--wait", "30"]);
    assert!(out.ok(), "{out}");

    let got = b.pull_until(DELIVERY_TIMEOUT, "both messages", |l| l.len() >= 2);
    assert_eq!(
        got,
        vec![pull_line(&a.ip(), "second"), pull_line(&a.ip(), "third")]
    );
}

/// `contacts add/list --json/remove`, `push --to NAME`, and names that could be read
/// as an address refused with exit 1.
#[test]
fn contacts_name_pinned_keys() {
    const N: u8 = 26;
    let nodes = line(N, 2);
    let (a, b) = (&nodes[0], &nodes[1]);
    let b_address = b.address();

    let out = a.cli("contacts", &["add", "bob", &b.ip()]);
    assert!(out.ok() && out.stdout.contains("bob"), "{out}");
    let list = contacts(a);
    let bob = contact(&list, "bob").unwrap_or_else(|| panic!("bob in {list:?}"));
    assert_eq!(bob["kind"], "name");
    assert_eq!(bob["address"], b_address.as_str());
    assert_eq!(bob["dest"], b.listen().as_str());
    assert!(bob["added"].as_u64().is_some_and(|t| t > 0), "{bob}");
    // Adding from an IP pins that IP too.
    let pin = contact(&list, &b.listen()).unwrap_or_else(|| panic!("a pin in {list:?}"));
    assert_eq!(
        (&pin["kind"], &pin["address"]),
        (&"ip".into(), &b_address.clone().into())
    );

    let out = a.cli("push", &["--to", "bob", "--msg", "to bob", "--wait", "30"]);
    assert!(out.ok(), "{out}");

    // By node address: no probe, no dest.
    assert!(a.cli("contacts", &["add", "carol", &b_address]).ok());
    let carol = contacts(a);
    let carol = contact(&carol, "carol").expect("carol").clone();
    assert_eq!(carol["address"], b_address.as_str());
    assert!(carol["dest"].is_null(), "{carol}");
    let out = a.cli(
        "push",
        &["--to", "carol", "--msg", "to carol", "--wait", "30"],
    );
    assert!(out.ok(), "{out}");
    let got = b.pull_until(DELIVERY_TIMEOUT, "both messages", |l| l.len() >= 2);
    assert_eq!(
        got,
        vec![pull_line(&a.ip(), "to bob"), pull_line(&a.ip(), "to carol")]
    );

    // Same name, same key: fine. Same name, another key: refused.
    assert!(a.cli("contacts", &["add", "bob", &b.ip()]).ok());
    let other = Identity::generate().address().to_string();
    assert_refused(
        &a.cli("contacts", &["add", "bob", &other]),
        &[&b_address, &other, "hermes contacts remove bob"],
    );

    let before = contacts(a);
    let b_ip = b.ip();
    let b_listen = b.listen();
    for bad in [
        b_ip.as_str(),
        b_listen.as_str(),
        "127.1",
        "0x7f.1",
        "[::1]:58008",
        b_address.as_str(),
        "a b",
        "a/b",
        "x:y",
        "",
    ] {
        assert_refused(&a.cli("contacts", &["add", bad, &b_ip]), &[]);
    }
    assert_refused(&a.cli("contacts", &["add", "dave", "not-an-address"]), &[]);
    assert_eq!(contacts(a), before, "a refused add must change nothing");
    assert_refused(&a.try_push("nobody", "x"), &["nobody"]);

    assert!(a.cli("contacts", &["remove", "bob"]).ok());
    assert!(contact(&contacts(a), "bob").is_none());
    assert_refused(&a.try_push("bob", "x"), &["bob"]);
    assert_refused(&a.cli("contacts", &["remove", "bob"]), &["bob"]);

    // Human output: one line per entry.
    let out = a.cli("contacts", &["list"]);
    assert!(out.ok(), "{out}");
    assert_eq!(out.stdout.lines().count(), contacts(a).len(), "{out}");

    // No daemon: exit 2.
    let idle = Node::configure(N, 9, NodeOpts::default());
    let out = idle.cli("contacts", &["list"]);
    assert_eq!(out.code, Some(2), "{out}");
}

#[test]
fn a_push_to_the_ip_of_a_node_this_one_dialed_needs_no_probe() {
    const N: u8 = 27;
    // .3 dials .2 (its bootstrap): an outbound link to 127.0.27.2:58008.
    let nodes = line_with(N, 2, |_, _| {});
    let (dialed, dialer) = (&nodes[0], &nodes[1]);
    // A node .3 has no link to.
    let stranger = Node::start(N, 9, NodeOpts::default());

    dialer.push(&dialed.ip(), "over the link");
    dialed.pull_until(DELIVERY_TIMEOUT, "the push to the dialed node", |got| {
        got.contains(&pull_line(&dialer.ip(), "over the link"))
    });
    // The control: a push to an IP without a link probes it, and says so in
    // the log. Once that line is there, a probe of the dialed node's address
    // made before it would be there too.
    dialer.push(&stranger.ip(), "to a stranger");
    let probed = |addr: &str| {
        dialer
            .log()
            .lines()
            .any(|l| l.contains(EV_PROBING) && l.contains(addr))
    };
    wait_for(
        LINK_TIMEOUT,
        "the probe of the stranger's address in the dialer's log",
        &[dialer],
        || probed(&stranger.listen()),
    );
    assert!(
        !probed(&dialed.listen()),
        "the push to {} probed it although the dialer has a link to it:\n{}",
        dialed.listen(),
        dialer.log_tail(40)
    );
}
