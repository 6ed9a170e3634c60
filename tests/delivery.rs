//! End-to-end delivery on a line of three daemons `.2 - .3 - .4`
//! (.3 bootstraps from .2, .4 from .3).

mod common;

use common::*;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[test]
fn line_push_arrives_and_second_pull_is_empty() {
    const N: u8 = 10;
    let nodes = line(N, 3);
    let (a, c) = (&nodes[0], &nodes[2]);
    let text = format!("hello over two hops {}", random_hex(8));

    a.push(&ip(N, 4), &text);

    let expected = pull_line(&ip(N, 2), &text);
    let got = c.pull_until(DELIVERY_TIMEOUT, "the message from .2", |l| !l.is_empty());
    assert_eq!(
        got,
        vec![expected],
        "pull on .4 must print exactly the one message line"
    );

    let again = c.cli("pull", &[]);
    assert!(again.ok(), "second pull failed: {again}");
    assert_eq!(
        again.stdout, "",
        "a second pull must print nothing: {again}"
    );
}

#[test]
fn pull_json_has_all_fields() {
    const N: u8 = 11;
    let nodes = line(N, 3);
    let (a, c) = (&nodes[0], &nodes[2]);
    let sender_addr = a.address();
    let text = format!("json fields {}", random_hex(8));
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();

    let id = a.push(&ip(N, 4), &text);

    let mut msgs = Vec::new();
    wait_for(
        DELIVERY_TIMEOUT,
        "the message to show in `pull --json` on .4",
        &[a, &nodes[1], c],
        || {
            msgs.extend(c.pull_json());
            !msgs.is_empty()
        },
    );
    assert_eq!(msgs.len(), 1, "exactly one message expected: {msgs:?}");
    let m = &msgs[0];
    for field in ["id", "sender", "sender_ip", "sent", "received", "text"] {
        assert!(
            m.get(field).is_some(),
            "pull --json object lacks `{field}`: {m}"
        );
    }
    assert_eq!(m["text"].as_str(), Some(text.as_str()), "text: {m}");
    assert_eq!(
        m["sender_ip"].as_str(),
        Some(ip(N, 2).as_str()),
        "sender_ip: {m}"
    );
    assert_eq!(
        m["sender"].as_str(),
        Some(sender_addr.as_str()),
        "sender must be .2's address: {m}"
    );
    assert_eq!(
        m["id"].as_str().map(str::to_ascii_lowercase),
        Some(id.to_ascii_lowercase()),
        "id must be the one push printed: {m}"
    );
    // `sent`/`received` are times; the format is not fixed by the contract (number or
    // string), but they must not be null/empty.
    for field in ["sent", "received"] {
        let v = &m[field];
        assert!(
            v.is_number() || v.as_str().is_some_and(|s| !s.is_empty()),
            "`{field}` should be a time (number or string): {m}"
        );
        if let Some(secs) = v.as_u64() {
            // Unix seconds or milliseconds, not before the test began.
            let secs = if secs > 10_000_000_000 {
                secs / 1000
            } else {
                secs
            };
            assert!(
                secs + 5 >= before,
                "`{field}` = {v} predates the test start ({before}): {m}"
            );
        }
    }

    let again = c.pull_json();
    assert!(
        again.is_empty(),
        "a second pull --json must print nothing: {again:?}"
    );
}

#[test]
fn push_wait_returns_0_once_delivered() {
    const N: u8 = 12;
    let nodes = line(N, 3);
    let (a, c) = (&nodes[0], &nodes[2]);
    let text = format!("waited {}", random_hex(8));

    let out = a.cli_timeout(
        "push",
        &["--to", &ip(N, 4), "--msg", &text, "--wait", "20"],
        Duration::from_secs(40),
    );
    assert_eq!(
        out.code,
        Some(0),
        "push --wait 20 should exit 0 once delivered: {out}"
    );
    parse_id(&out);

    // The receipt came back, so the message must already be in .4's inbox.
    let st = c.status();
    assert!(
        st["inbox"].as_u64().unwrap_or(0) >= 1,
        "push --wait returned before the recipient had it in its inbox: {st}"
    );
    let (_, _, delivered, _) = a.outbox();
    assert!(
        delivered >= 1,
        "sender's outbox should count the message delivered: {}",
        a.status()
    );
    assert_eq!(c.pull(), vec![pull_line(&ip(N, 2), &text)]);
}

/// Not in the brief's list: nodes started in another order than their bootstrap chain
/// (.3 and .4 first, .2 last) must still join into one network, since .3's bootstrap
/// .2 comes up later. A user starting nodes in any order would expect that.
#[test]
fn bootstrap_node_started_last_is_still_joined() {
    const N: u8 = 13;
    let c = Node::start(
        N,
        4,
        NodeOpts {
            bootstrap: vec![ip(N, 3)],
            ..Default::default()
        },
    );
    let b = Node::start(
        N,
        3,
        NodeOpts {
            bootstrap: vec![ip(N, 2)],
            ..Default::default()
        },
    );
    // .3 has tried its bootstrap .2 (down) and has the inbound .4.
    wait_linked(&b, &c);
    let a = Node::start(N, 2, NodeOpts::default());

    wait_for(
        Duration::from_secs(30),
        "the late bootstrap node .2 to be linked to the network (a neighbour of .2)",
        &[&a, &b, &c],
        || {
            a.try_status()
                .is_some_and(|s| !neighbour_listens(&s).is_empty())
        },
    );
    let text = format!("late bootstrap {}", random_hex(8));
    a.push(&ip(N, 4), &text);
    let got = c.pull_until(DELIVERY_TIMEOUT, "the message from the late node .2", |l| {
        !l.is_empty()
    });
    assert_eq!(got, vec![pull_line(&ip(N, 2), &text)]);
}

/// The sender learns the recipient's key by a probe (a direct handshake, then goodbye).
/// The probe must not turn into a link: if the recipient took it for a lost neighbour
/// and redialled, the flood would bypass the relay from then on.
#[test]
fn probe_of_the_recipient_leaves_no_standing_link() {
    const N: u8 = 14;
    /// Longer than the first redial of a lost neighbour (at most 1 s with jitter).
    const WATCH: Duration = Duration::from_secs(4);
    let nodes = line(N, 3);
    let (a, c) = (&nodes[0], &nodes[2]);
    let text = format!("probed {}", random_hex(8));
    a.push(&ip(N, 4), &text);
    let got = c.pull_until(DELIVERY_TIMEOUT, "the message from .2", |l| !l.is_empty());
    assert_eq!(got, vec![pull_line(&ip(N, 2), &text)]);

    let start = std::time::Instant::now();
    while start.elapsed() < WATCH {
        assert!(
            !a.has_neighbour(&c.listen()) && !c.has_neighbour(&a.listen()),
            "the probe .2 -> .4 became a link: .2 {:?}, .4 {:?}",
            a.neighbour_listens(),
            c.neighbour_listens()
        );
    }
    // The probe was never even a session on .4, so it cost no resends there.
    assert!(
        !c.log()
            .lines()
            .any(|l| l.contains("neighbour up") && l.contains(&a.listen())),
        "the probe from .2 was taken as a neighbour by .4"
    );
    // The relay still carries everything between the ends.
    assert!(a.has_neighbour(&nodes[1].listen()) && c.has_neighbour(&nodes[1].listen()));
}

/// Receipts travel back along the reverse path: a neighbour of a relay that
/// only saw the flooded packet (and sent nothing on) gets no receipt.
#[test]
fn receipt_goes_back_only_the_way_the_message_came() {
    use common::hostile::HostilePeer;
    use hermes::wire::link::LinkBody;
    const N: u8 = 95;
    // The way back of flood mode's receipts (onion receipts take reply
    // blocks: tests/onion.rs).
    let nodes = line_with(N, 3, |_, o| o.routing_mode = Some("flood"));
    let (s, b, r) = (&nodes[0], &nodes[1], &nodes[2]);
    let at = |h: u8| listen_addr(N, h).parse().expect("an address");
    // A bystander linked to the relay only.
    let mut h = HostilePeer::dial(at(3), at(9));
    wait_for(LINK_TIMEOUT, "the relay links the bystander", &[b], || {
        b.has_neighbour(&listen_addr(N, 9))
    });
    let out = s.cli(
        "push",
        &[
            "--to",
            &r.ip(),
            "--msg",
            "back the way it came",
            "--wait",
            "30",
        ],
    );
    assert!(out.ok(), "the receipt reached the sender: {out}");
    let id = parse_id(&out);
    // The relay flooded the packet to the bystander too...
    let saw_packet = h
        .recv_until(DELIVERY_TIMEOUT, |body| match body {
            LinkBody::Packet(p) if p.id.to_string() == id => Some(()),
            _ => None,
        })
        .is_some();
    assert!(saw_packet, "the bystander got the flooded packet");
    // ...but sends the receipt only back towards the sender. By now the
    // relay has passed it on (the sender has it); any copy sent to the
    // bystander at the same time has had ample time to arrive.
    let receipt = h.recv_until(Duration::from_secs(3), |body| match body {
        LinkBody::Receipt(rc) if rc.id.to_string() == id => Some(()),
        _ => None,
    });
    assert!(
        receipt.is_none(),
        "a node off the message's path got its receipt"
    );
    assert_eq!(r.pull().len(), 1);
}
