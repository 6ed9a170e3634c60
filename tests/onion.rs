//! Issue 9's done-when tests for `routing.mode = "onion"`, on real daemons.
//!
//! Every node of these networks runs `[routing] mode = "onion"` with JSON logs.
//! The origin logs one info line `onion part sent` per packet it sends, with
//! `id`, `part`, `parts`, `attempt` and `path` (the relays' addresses in order,
//! separated by single spaces): the tests read the paths from there, and check
//! with it that a message went by onion at all (not by flood).
//!
//! Before pushing, each test waits until every node's address book (`hermes
//! peers --json`) holds every other node: the origin draws relays from its
//! book, and a relay resolves the next hop's id through its own. The networks
//! are full meshes (see [`start_net`]), except in
//! `paths_between_non_neighbours_deliver`.
//!
//! Wall time of each test on the 2-core dev machine, alone: 0.5 to 15 s, the
//! recipient-down test 22 s (20 s of it the scenario's downtime); the whole
//! binary with 2 test threads about 31 s.

mod common;

use common::hostile::HostilePeer;
use common::*;
use hermes::crypto::sphinx::{generate_key, NodeHop, OnionFormat, Sphinx, PACKET_SIZE};
use hermes::crypto::{AnnouncedKey, SignedRecord};
use hermes::routing::onion::fragments::Part;
use hermes::wire::link::{LinkBody, OnionPacket};
use hermes::wire::onion::PartPayload;
use hermes::wire::MessageId;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

/// `routing.hops` of every test network.
const HOPS: usize = 3;
/// How long gossip may take to fill every book of a test network.
const BOOK_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a batch of messages may take to arrive (retries included).
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the origin may take to hold every receipt (outbox settled).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a counter may take to show what a node did.
const COUNTER_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// Onion mode with `hops` relays, JSON logs; `routing_extra` goes into the
/// `[routing]` section. ([`start_net`] makes the overlay a mesh.)
fn onion_opts(hops: usize, routing_extra: &str) -> NodeOpts {
    NodeOpts {
        min_neighbours: 3,
        max_neighbours: 6,
        log_json: true,
        extra_toml: format!("[routing]\nmode = \"onion\"\nhops = {hops}\n{routing_extra}"),
        ..NodeOpts::default()
    }
}

/// Starts `count` onion nodes `127.0.N.first ..` one after the other (each ready
/// before the next is spawned), node i bootstrapping from node 0 and the two
/// nodes just before it, so that the overlay comes up without redial backoffs.
/// `tweak(index, opts)` may change each node's options.
///
/// The overlay is a full mesh (min_neighbours = count - 1): with 3..6
/// neighbours, gossip took 20-55 s to bring every record to every book of 6 to
/// 10 nodes (a straggler waits for exchanges, one per 5-15 s); a mesh fills
/// them within a second or two. So relays here forward over live links.
fn start_net(
    n: u8,
    first: u8,
    count: usize,
    mut tweak: impl FnMut(usize, &mut NodeOpts),
) -> Vec<Node> {
    let mut nodes = Vec::new();
    for i in 0..count {
        let mut opts = onion_opts(HOPS, "");
        opts.min_neighbours = count as u32 - 1;
        opts.max_neighbours = count as u32;
        let boot: BTreeSet<usize> = [0, i.saturating_sub(2), i.saturating_sub(1)]
            .into_iter()
            .filter(|&j| j < i)
            .collect();
        opts.bootstrap = boot.iter().map(|&j| ip(n, first + j as u8)).collect();
        tweak(i, &mut opts);
        nodes.push(Node::start(n, first + i as u8, opts));
    }
    nodes
}

/// Polls `check` every 200 ms until it returns `Ok` or `timeout` passes; then
/// panics with `what`, the last `Err` and the log tails of `ctx`.
fn poll<T>(
    timeout: Duration,
    what: &str,
    ctx: &[&Node],
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    loop {
        match check() {
            Ok(v) => {
                eprintln!("[{:.1?}] {what}", start.elapsed());
                return v;
            }
            Err(why) if start.elapsed() >= timeout => {
                let mut msg =
                    format!("timed out after {timeout:?} waiting for: {what}\nlast: {why}");
                for node in ctx {
                    msg.push_str(&node.describe_for_failure());
                }
                panic!("{msg}");
            }
            Err(_) => thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// `hermes peers --json` of `node` (empty if it does not answer).
fn book(node: &Node) -> Vec<Value> {
    let out = node.cli_timeout("peers", &["--json"], Duration::from_secs(10));
    if !out.ok() {
        return Vec::new();
    }
    out.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits until every node's address book holds every other node of `nodes`.
fn wait_books(nodes: &[&Node]) {
    let mut polls = 0u32;
    poll(
        BOOK_TIMEOUT,
        &format!(
            "every book of the {} nodes holds all the others",
            nodes.len()
        ),
        &nodes[..nodes.len().min(2)],
        || {
            polls += 1;
            let mut short = Vec::new();
            for node in nodes {
                let known: BTreeSet<String> = book(node)
                    .iter()
                    .filter_map(|p| p["listen"].as_str().map(str::to_owned))
                    .collect();
                let missing: Vec<String> = nodes
                    .iter()
                    .filter(|o| o.listen() != node.listen() && !known.contains(&o.listen()))
                    .map(|o| o.ip())
                    .collect();
                if !missing.is_empty() {
                    short.push(format!("{} lacks {}", node.ip(), missing.join(" ")));
                }
            }
            if short.is_empty() {
                Ok(())
            } else {
                if polls % 25 == 0 {
                    eprintln!("books after {polls} polls: {}", short.join("; "));
                }
                Err(short.join("; "))
            }
        },
    );
}

/// `(relayed, replays, dropped)` of `status.counters`.
fn counters(st: &Value) -> (u64, u64, u64) {
    let c = |k: &str| {
        st["counters"][k]
            .as_u64()
            .unwrap_or_else(|| panic!("status.counters.{k} missing or not an integer: {st}"))
    };
    (c("relayed"), c("replays"), c("dropped"))
}

fn relayed(node: &Node) -> u64 {
    counters(&node.status()).0
}

/// One `onion part sent` line of the origin's log.
#[derive(Debug, Clone)]
struct PartSent {
    id: String,
    part: u64,
    parts: u64,
    attempt: u64,
    path: Vec<String>,
}

fn uint(v: &Value, key: &str, line: &str) -> u64 {
    let f = &v[key];
    f.as_u64()
        .or_else(|| f.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("`onion part sent` line without an integer `{key}`: {line}"))
}

/// Every `onion part sent` line in `origin`'s (JSON) log.
fn parts_sent(origin: &Node) -> Vec<PartSent> {
    origin
        .log()
        .lines()
        .filter_map(|line| {
            let v: Value = serde_json::from_str(line).ok()?;
            if v["msg"] != "onion part sent" {
                return None;
            }
            let text = |k: &str| {
                v[k].as_str()
                    .unwrap_or_else(|| {
                        panic!("`onion part sent` line without a string `{k}`: {line}")
                    })
                    .to_owned()
            };
            Some(PartSent {
                id: text("id").to_ascii_lowercase(),
                part: uint(&v, "part", line),
                parts: uint(&v, "parts", line),
                attempt: uint(&v, "attempt", line),
                path: text("path")
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
            })
        })
        .collect()
}

/// The `onion part sent` lines of each of `ids` (every id present, or panic:
/// a message that left without one did not go by onion).
fn parts_of(origin: &Node, ids: &[String]) -> BTreeMap<String, Vec<PartSent>> {
    let wanted: BTreeSet<&String> = ids.iter().collect();
    let mut by_id: BTreeMap<String, Vec<PartSent>> = BTreeMap::new();
    for p in parts_sent(origin) {
        if wanted.contains(&p.id) {
            by_id.entry(p.id.clone()).or_default().push(p);
        }
    }
    let missing: Vec<&String> = ids.iter().filter(|id| !by_id.contains_key(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} messages have no `onion part sent` line at the origin {} (not sent by onion?), e.g. {:?}{}",
        missing.len(),
        ids.len(),
        origin.listen(),
        &missing[..missing.len().min(5)],
        origin.describe_for_failure()
    );
    by_id
}

/// Pushes `text` from `from` to `to`; asserts exit 0 and returns the id (lowercase).
fn push(from: &Node, to: &Node, text: &str) -> String {
    from.push(&to.ip(), text).to_ascii_lowercase()
}

/// Pulls `pull --json` on `node` until every one of `ids` has arrived; returns
/// every text pulled per id (also ids not asked for).
fn pull_until_all(
    node: &Node,
    ids: &[String],
    timeout: Duration,
    ctx: &[&Node],
) -> BTreeMap<String, Vec<String>> {
    let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let what = format!("{} messages in {}'s inbox", ids.len(), node.ip());
    poll(timeout, &what, ctx, || {
        for m in node.pull_json() {
            let id = m["id"].as_str().unwrap_or("").to_ascii_lowercase();
            let text = m["text"].as_str().unwrap_or("").to_owned();
            got.entry(id).or_default().push(text);
        }
        let missing: Vec<&String> = ids.iter().filter(|id| !got.contains_key(*id)).collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} of {} arrived; missing e.g. {:?}",
                ids.len() - missing.len(),
                ids.len(),
                &missing[..missing.len().min(5)]
            ))
        }
    });
    got
}

/// Asserts that `got` holds each of `ids` exactly once with its text, and nothing else.
fn assert_each_once(got: &BTreeMap<String, Vec<String>>, ids: &[String], texts: &[String]) {
    let mut errors = Vec::new();
    for (id, text) in ids.iter().zip(texts) {
        match got.get(id).map(Vec::as_slice) {
            Some([one]) if one == text => {}
            Some([one]) => errors.push(format!(
                "{id}: text differs ({} bytes, want {})",
                one.len(),
                text.len()
            )),
            Some(many) => errors.push(format!("{id}: arrived {} times", many.len())),
            None => errors.push(format!("{id}: never arrived")),
        }
    }
    let known: BTreeSet<&String> = ids.iter().collect();
    for (id, list) in got {
        if !known.contains(id) {
            errors.push(format!(
                "{id}: not pushed by the test, arrived {} times",
                list.len()
            ));
        }
    }
    assert!(
        errors.is_empty(),
        "{} of {} messages not delivered exactly once: {errors:?}",
        errors.len(),
        ids.len()
    );
}

/// Waits until `origin`'s outbox holds nothing queued or in flight (every receipt in).
fn wait_settled(origin: &Node, ctx: &[&Node]) {
    poll(
        SETTLE_TIMEOUT,
        &format!("{}'s outbox settled (every receipt in)", origin.ip()),
        ctx,
        || {
            let st = origin.try_status().ok_or("status did not answer")?;
            let (q, f, d, x) = outbox_counts(&st);
            if q == 0 && f == 0 {
                Ok(())
            } else {
                Err(format!(
                    "queued {q}, in flight {f}, delivered {d}, failed {x}"
                ))
            }
        },
    );
}

/// After the outbox settled: one more pull; nothing may arrive a second time.
fn assert_no_late_copies(
    node: &Node,
    got: &mut BTreeMap<String, Vec<String>>,
    ids: &[String],
    texts: &[String],
) {
    for m in node.pull_json() {
        let id = m["id"].as_str().unwrap_or("").to_ascii_lowercase();
        got.entry(id)
            .or_default()
            .push(m["text"].as_str().unwrap_or("").to_owned());
    }
    assert_each_once(got, ids, texts);
}

/// `count` distinct texts (numbered, a random tag and random hex): no node
/// writes them by itself.
fn texts(count: usize, label: &str) -> Vec<String> {
    let tag = random_hex(8);
    (0..count)
        .map(|i| format!("{label} {i:03} {tag} {}", random_hex(24)))
        .collect()
}

fn sock(s: &str) -> SocketAddr {
    s.parse().expect("a socket address")
}

/// The packet key a node announces in the record it sent the hostile peer.
fn packet_hop(record: &SignedRecord) -> NodeHop {
    let key: AnnouncedKey = record.record.packet_key.unwrap_or_else(|| {
        panic!(
            "the node's record announces no packet key: {:?}",
            record.record
        )
    });
    NodeHop {
        id: record.record.address,
        key: key.public,
    }
}

fn addr_of(node: &Node) -> String {
    node.address().to_ascii_lowercase()
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// 10 nodes, 3 hops: 100 messages `.2 -> .11` each arrive once; the 8 relays
/// relayed at least 3 packets per message between them, at least 6 of them took
/// part, the origin used at least 90 distinct paths, each path 3 distinct relays
/// (never the origin or the recipient), the first hop one of at most 4 guards.
#[test]
fn hundred_messages_take_many_paths_and_arrive_once() {
    const N: u8 = 124;
    const COUNT: usize = 100;
    let t0 = Instant::now();
    let nodes = start_net(N, 2, 10, |_, _| {});
    let all: Vec<&Node> = nodes.iter().collect();
    wait_books(&all);
    let (origin, recipient) = (&nodes[0], &nodes[9]);
    let relays: Vec<&Node> = nodes[1..9].iter().collect();
    let relay_addrs: BTreeMap<String, String> =
        relays.iter().map(|r| (addr_of(r), r.ip())).collect();
    let (origin_addr, recipient_addr) = (addr_of(origin), addr_of(recipient));
    eprintln!("[{:.1?}] network up", t0.elapsed());

    let texts = texts(COUNT, "onion hundred");
    let ids: Vec<String> = texts.iter().map(|t| push(origin, recipient, t)).collect();
    eprintln!("[{:.1?}] {COUNT} pushed", t0.elapsed());

    let ctx = [origin, recipient];
    let mut got = pull_until_all(recipient, &ids, ARRIVAL_TIMEOUT, &ctx);
    assert_each_once(&got, &ids, &texts);
    eprintln!("[{:.1?}] all {COUNT} arrived", t0.elapsed());

    // Paths, from the origin's log.
    let by_id = parts_of(origin, &ids);
    let mut paths: BTreeSet<Vec<String>> = BTreeSet::new();
    let mut first_hops: BTreeSet<String> = BTreeSet::new();
    let mut lines = 0;
    for (id, parts) in &by_id {
        for p in parts {
            lines += 1;
            assert_eq!(p.parts, 1, "a short message is one packet: {id} {p:?}");
            assert_eq!(
                p.path.len(),
                HOPS,
                "a path of {HOPS} relays with 8 relays known: {p:?}"
            );
            let distinct: BTreeSet<&String> = p.path.iter().collect();
            assert_eq!(
                distinct.len(),
                p.path.len(),
                "a relay twice on one path: {p:?}"
            );
            for hop in &p.path {
                assert!(
                    hop != &origin_addr && hop != &recipient_addr,
                    "the origin or the recipient is a relay of its own path: {p:?}"
                );
                assert!(
                    relay_addrs.contains_key(hop),
                    "{hop} on a path is none of the relays: {p:?}"
                );
            }
            first_hops.insert(p.path[0].clone());
            paths.insert(p.path.clone());
        }
    }
    eprintln!(
        "origin: {lines} `onion part sent` lines, {} distinct paths, first hops {:?}",
        paths.len(),
        first_hops
            .iter()
            .map(|a| &relay_addrs[a])
            .collect::<Vec<_>>()
    );
    assert!(
        paths.len() >= 90,
        "at least 90 distinct paths over 100 messages, got {} (from {lines} lines)",
        paths.len()
    );

    // Relayed counters: at least 3 per message in all, spread over >= 6 relays.
    let (sum, used, per) = poll(
        COUNTER_TIMEOUT,
        "the relays' counters sum to >= 300, over >= 6 relays",
        &[&nodes[1], &nodes[2]],
        || {
            let per: Vec<(String, u64)> = relays
                .iter()
                .map(|r| (r.ip(), r.try_status().map(|s| counters(&s).0).unwrap_or(0)))
                .collect();
            let sum: u64 = per.iter().map(|(_, c)| c).sum();
            let used = per.iter().filter(|(_, c)| *c > 0).count();
            if sum >= 3 * COUNT as u64 && used >= 6 {
                Ok((sum, used, per))
            } else {
                Err(format!("sum {sum}, relays used {used}: {per:?}"))
            }
        },
    );
    eprintln!("relayed: sum {sum} over {used} relays: {per:?}");

    // Receipts: the origin settles, and nothing arrives twice meanwhile.
    wait_settled(origin, &ctx);
    assert_no_late_copies(recipient, &mut got, &ids, &texts);

    // docs/packet.md: the first relay is one of 4 long-lived guards.
    assert!(
        first_hops.len() <= 4,
        "first hops come from at most 4 guards, got {}: {:?}",
        first_hops.len(),
        first_hops
            .iter()
            .map(|a| &relay_addrs[a])
            .collect::<Vec<_>>()
    );
    eprintln!("[{:.1?}] done", t0.elapsed());
}

/// 5 nodes, 3 hops: every path is the 3 relays; after messages (one of them in
/// several parts) went through, no relay's data dir nor log holds any of the
/// texts (and no node's log does).
#[test]
fn relays_hold_no_plaintext() {
    const N: u8 = 125;
    let t0 = Instant::now();
    let mut nodes = start_net(N, 2, 5, |_, _| {});
    {
        let all: Vec<&Node> = nodes.iter().collect();
        wait_books(&all);
    }
    let secrets: Vec<String> = (0..5).map(|_| random_hex(40)).collect();
    let long_secret = random_hex(40);
    // About 8 KB: several packets, each holding copies of the secret.
    let long = vec![long_secret.as_str(); 200].join(" ");
    let mut texts = secrets.clone();
    texts.push(long.clone());
    let mut needles = secrets.clone();
    needles.push(long_secret.clone());

    let (origin, recipient) = (&nodes[0], &nodes[4]);
    let ids: Vec<String> = texts.iter().map(|t| push(origin, recipient, t)).collect();
    let ctx = [origin, recipient];
    let got = pull_until_all(recipient, &ids, ARRIVAL_TIMEOUT, &ctx);
    // What makes the scan meaningful: the plaintext does come out at the recipient.
    assert_each_once(&got, &ids, &texts);
    let by_id = parts_of(origin, &ids);
    assert!(
        by_id[&ids[5]].iter().map(|p| p.parts).max() > Some(1),
        "the ~8 KB message should go in several packets: {:?}",
        by_id[&ids[5]]
    );
    // With 3 relays and 3 hops every packet crosses every relay.
    poll(
        COUNTER_TIMEOUT,
        "each of the 3 relays relayed every packet",
        &[&nodes[1]],
        || {
            let per: Vec<u64> = nodes[1..4].iter().map(relayed).collect();
            if per.iter().all(|&r| r >= ids.len() as u64) {
                Ok(())
            } else {
                Err(format!("relayed per relay {per:?}, {} messages", ids.len()))
            }
        },
    );

    let mut hits = Vec::new();
    for relay in &mut nodes[1..4] {
        let st = relay.term(Duration::from_secs(10));
        eprintln!("relay {} exited with {st}", relay.ip());
        hits.extend(files_containing(
            &relay.data_dir(),
            &[relay.log_path()],
            &needles,
        ));
    }
    assert!(
        hits.is_empty(),
        "a relay's data dir or log holds message plaintext: {hits:?}"
    );
    for node in [&nodes[0], &nodes[4]] {
        let log = node.log();
        for s in &needles {
            assert!(
                !log.contains(s.as_str()),
                "the log of {} holds message text {s}",
                node.ip()
            );
        }
    }
    eprintln!("[{:.1?}] done", t0.elapsed());
}

/// 10 nodes, 3 hops: after 25 of 50 messages are pushed, the two relays most
/// used by their paths are SIGKILLed (usually two of the origin's 4 guards: a
/// guard is the first hop of a quarter of the paths); the other 25 are pushed
/// at once. All 50 arrive, each once (retries on fresh paths), and the origin
/// gets every receipt.
#[test]
fn two_relays_killed_while_fifty_messages_fly() {
    const N: u8 = 126;
    const COUNT: usize = 50;
    let t0 = Instant::now();
    let mut nodes = start_net(N, 2, 10, |_, o| {
        o.extra_toml.push_str("retry_max = \"4s\"\n");
    });
    {
        let all: Vec<&Node> = nodes.iter().collect();
        wait_books(&all);
    }
    let relay_addrs: BTreeMap<String, usize> = (1..9).map(|i| (addr_of(&nodes[i]), i)).collect();
    eprintln!("[{:.1?}] network up", t0.elapsed());

    let texts = texts(COUNT, "onion kill");
    let mut ids = Vec::new();
    for t in &texts[..COUNT / 2] {
        ids.push(push(&nodes[0], &nodes[9], t));
    }
    // The relays on the paths of those first 25 messages, most used first.
    let by_id = poll(
        COUNTER_TIMEOUT,
        "the first 25 messages' parts sent",
        &[&nodes[0]],
        || {
            let sent = parts_sent(&nodes[0]);
            let have: BTreeSet<&String> = sent.iter().map(|p| &p.id).collect();
            if ids.iter().all(|id| have.contains(id)) {
                Ok(sent)
            } else {
                Err(format!("{} lines so far", sent.len()))
            }
        },
    );
    let mut uses: BTreeMap<usize, usize> = BTreeMap::new();
    for p in &by_id {
        for hop in &p.path {
            if let Some(&i) = relay_addrs.get(hop) {
                *uses.entry(i).or_default() += 1;
            }
        }
    }
    let mut ranked: Vec<(usize, usize)> = uses.into_iter().collect();
    ranked.sort_by_key(|&(i, n)| (std::cmp::Reverse(n), i));
    assert!(
        ranked.len() >= 2,
        "the paths used fewer than 2 relays: {ranked:?}"
    );
    let killed = [ranked[0].0, ranked[1].0];
    let killed_addrs: Vec<String> = killed.iter().map(|&i| addr_of(&nodes[i])).collect();
    for &i in &killed {
        nodes[i].kill();
    }
    eprintln!(
        "[{:.1?}] killed {} and {} (uses {ranked:?})",
        t0.elapsed(),
        nodes[killed[0]].ip(),
        nodes[killed[1]].ip()
    );
    for t in &texts[COUNT / 2..] {
        ids.push(push(&nodes[0], &nodes[9], t));
    }
    eprintln!("[{:.1?}] {COUNT} pushed", t0.elapsed());

    let (origin, recipient) = (&nodes[0], &nodes[9]);
    let ctx = [origin, recipient];
    // What the origin did since the kill: how many sends went through a killed
    // relay (as first hop, or later), and how many were retries.
    let paths_report = || {
        let sent = parts_sent(origin);
        let first = sent
            .iter()
            .filter(|p| p.path.first().is_some_and(|h| killed_addrs.contains(h)))
            .count();
        let any = sent
            .iter()
            .filter(|p| p.path.iter().any(|h| killed_addrs.contains(h)))
            .count();
        let retries = sent.iter().filter(|p| p.attempt > 1).count();
        let max_attempt = sent.iter().map(|p| p.attempt).max().unwrap_or(0);
        format!(
            "origin: {} parts sent, {any} with a killed relay on the path ({first} as first hop), {retries} retries, highest attempt {max_attempt}",
            sent.len()
        )
    };
    let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let start = Instant::now();
    poll(
        ARRIVAL_TIMEOUT,
        "all 50 messages in the recipient's inbox",
        &ctx,
        || {
            for m in recipient.pull_json() {
                let id = m["id"].as_str().unwrap_or("").to_ascii_lowercase();
                got.entry(id)
                    .or_default()
                    .push(m["text"].as_str().unwrap_or("").to_owned());
            }
            let missing = ids.iter().filter(|id| !got.contains_key(*id)).count();
            match missing {
                0 => Ok(()),
                _ if start.elapsed() + Duration::from_secs(1) >= ARRIVAL_TIMEOUT => {
                    Err(format!("{missing} of {COUNT} missing; {}", paths_report()))
                }
                _ => Err(format!("{missing} of {COUNT} missing")),
            }
        },
    );
    assert_each_once(&got, &ids, &texts);
    eprintln!(
        "[{:.1?}] all {COUNT} arrived; {}",
        t0.elapsed(),
        paths_report()
    );
    let start = Instant::now();
    poll(
        SETTLE_TIMEOUT,
        "the origin's outbox settled (every receipt in)",
        &ctx,
        || {
            let st = origin.try_status().ok_or("status did not answer")?;
            let (q, f, d, x) = outbox_counts(&st);
            match (q, f) {
                (0, 0) => Ok(()),
                _ if start.elapsed() + Duration::from_secs(1) >= SETTLE_TIMEOUT => Err(format!(
                    "queued {q}, in flight {f}, delivered {d}, failed {x}; {}",
                    paths_report()
                )),
                _ => Err(format!(
                    "queued {q}, in flight {f}, delivered {d}, failed {x}"
                )),
            }
        },
    );
    assert_no_late_copies(recipient, &mut got, &ids, &texts);
    eprintln!("[{:.1?}] done", t0.elapsed());
}

/// 6 nodes, 3 hops: the recipient is SIGKILLed, 10 messages are pushed, it
/// stays down 20 s, restarts with its data dir: all 10 arrive, each once.
#[test]
fn recipient_down_twenty_seconds_gets_all_ten() {
    const N: u8 = 127;
    const COUNT: usize = 10;
    let t0 = Instant::now();
    let mut nodes = start_net(N, 2, 6, |_, o| {
        o.extra_toml.push_str("retry_max = \"8s\"\n");
    });
    {
        let all: Vec<&Node> = nodes.iter().collect();
        wait_books(&all);
    }
    // One message first, end to end, so the origin has pinned the recipient.
    {
        let text = format!("warm-up {}", random_hex(8));
        let id = push(&nodes[0], &nodes[5], &text);
        let got = pull_until_all(
            &nodes[5],
            std::slice::from_ref(&id),
            ARRIVAL_TIMEOUT,
            &[&nodes[0], &nodes[5]],
        );
        assert_each_once(&got, std::slice::from_ref(&id), &[text]);
        parts_of(&nodes[0], &[id]);
    }
    eprintln!("[{:.1?}] network up, warm-up delivered", t0.elapsed());

    nodes[5].kill();
    let down = Instant::now();
    let texts = texts(COUNT, "onion offline");
    let ids: Vec<String> = texts
        .iter()
        .map(|t| push(&nodes[0], &nodes[5], t))
        .collect();
    // Scenario delay (the recipient is away 20 s), not a wait for a condition.
    thread::sleep(Duration::from_secs(20).saturating_sub(down.elapsed()));
    {
        let st = nodes[0].status();
        let (q, f, d, x) = outbox_counts(&st);
        assert!(
            q + f >= COUNT as u64,
            "with the recipient down all {COUNT} should still be pending at the origin: queued {q}, in flight {f}, delivered {d}, failed {x}"
        );
    }
    nodes[5].restart();
    eprintln!("[{:.1?}] recipient restarted", t0.elapsed());

    let (origin, recipient) = (&nodes[0], &nodes[5]);
    let ctx = [origin, recipient];
    let mut got = pull_until_all(recipient, &ids, ARRIVAL_TIMEOUT, &ctx);
    assert_each_once(&got, &ids, &texts);
    parts_of(origin, &ids);
    eprintln!("[{:.1?}] all {COUNT} arrived", t0.elapsed());
    wait_settled(origin, &ctx);
    assert_no_late_copies(recipient, &mut got, &ids, &texts);
    eprintln!("[{:.1?}] done", t0.elapsed());
}

/// 6 nodes, 3 hops (issue 9 item 7, "across restarts"): with the recipient
/// down, 10 messages are pushed and sent once; the origin is SIGKILLed, the
/// recipient restarted, then the origin: from its store it resends, all 10
/// arrive, each once, and every receipt comes back.
#[test]
fn origin_killed_with_messages_pending_resends_after_restart() {
    const N: u8 = 127;
    const COUNT: usize = 10;
    let t0 = Instant::now();
    let mut nodes = start_net(N, 20, 6, |_, o| {
        o.extra_toml.push_str("retry_max = \"4s\"\n");
    });
    {
        let all: Vec<&Node> = nodes.iter().collect();
        wait_books(&all);
        let text = format!("warm-up {}", random_hex(8));
        let id = push(&nodes[0], &nodes[5], &text);
        let got = pull_until_all(
            &nodes[5],
            std::slice::from_ref(&id),
            ARRIVAL_TIMEOUT,
            &[&nodes[0], &nodes[5]],
        );
        assert_each_once(&got, std::slice::from_ref(&id), &[text]);
        wait_settled(&nodes[0], &[&nodes[0]]);
    }
    nodes[5].kill();
    let texts = texts(COUNT, "onion origin restart");
    let ids: Vec<String> = texts
        .iter()
        .map(|t| push(&nodes[0], &nodes[5], t))
        .collect();
    poll(
        COUNTER_TIMEOUT,
        "every message sent once before the origin dies",
        &[&nodes[0]],
        || {
            let sent: BTreeSet<String> = parts_sent(&nodes[0]).into_iter().map(|p| p.id).collect();
            let missing = ids.iter().filter(|id| !sent.contains(*id)).count();
            if missing == 0 {
                Ok(())
            } else {
                Err(format!("{missing} not sent yet"))
            }
        },
    );
    nodes[0].kill();
    eprintln!("[{:.1?}] origin killed with {COUNT} pending", t0.elapsed());
    nodes[5].restart();
    nodes[0].restart();
    eprintln!("[{:.1?}] recipient and origin restarted", t0.elapsed());

    let (origin, recipient) = (&nodes[0], &nodes[5]);
    let ctx = [origin, recipient];
    let mut got = pull_until_all(recipient, &ids, ARRIVAL_TIMEOUT, &ctx);
    assert_each_once(&got, &ids, &texts);
    eprintln!("[{:.1?}] all {COUNT} arrived", t0.elapsed());
    wait_settled(origin, &ctx);
    assert_no_late_copies(recipient, &mut got, &ids, &texts);
    // What carried them (not asserted: relays may still hold the first copies
    // for the recipient, PENDING_TIMEOUT, when it comes back).
    let log = origin.log();
    let after = log.rsplit("===== hermes-it: start #2").next().unwrap_or("");
    let resent = after
        .lines()
        .filter(|l| l.contains("onion part sent") && ids.iter().any(|id| l.contains(id.as_str())))
        .count();
    eprintln!(
        "[{:.1?}] done; {resent} parts resent by the restarted origin",
        t0.elapsed()
    );
}

/// A hostile peer linked to relay X sends it a packet routed X -> Y, built with
/// the library from the keys in X's and Y's records: X relays it (relayed +1);
/// the same bytes again are dropped and counted (replays +1, relayed unchanged).
#[test]
fn replayed_packet_is_dropped_and_counted() {
    const N: u8 = 128;
    let x = Node::start(N, 2, onion_opts(HOPS, ""));
    let y = Node::start(
        N,
        3,
        NodeOpts {
            bootstrap: vec![ip(N, 2)],
            ..onion_opts(HOPS, "")
        },
    );
    wait_linked(&x, &y);
    wait_books(&[&x, &y]);

    let mut hx = HostilePeer::dial(sock(&x.listen()), sock(&listen_addr(N, 200)));
    let hy = HostilePeer::dial(sock(&y.listen()), sock(&listen_addr(N, 201)));
    let (x_hop, y_hop) = (packet_hop(&hx.peer), packet_hop(&hy.peer));
    assert_eq!(x_hop.id.to_string(), addr_of(&x), "X's record is X's");
    assert_eq!(y_hop.id.to_string(), addr_of(&y), "Y's record is Y's");
    drop(hy);
    let packet = Sphinx
        .wrap(&[x_hop], &y_hop, b"a packet a hostile peer recorded")
        .expect("the library wraps a packet X -> Y");
    let bytes = packet.into_bytes();
    assert_eq!(bytes.len(), PACKET_SIZE);

    let (relayed0, replays0, _) = counters(&x.status());
    assert!(
        hx.send(LinkBody::Onion(OnionPacket(bytes.clone()))),
        "X closed the link"
    );
    let after_first = poll(
        COUNTER_TIMEOUT,
        "X relays the packet (counters.relayed + 1)",
        &[&x, &y],
        || {
            let st = x.try_status().ok_or("status did not answer")?;
            let (r, p, d) = counters(&st);
            if r > relayed0 {
                Ok((r, p))
            } else {
                Err(format!("relayed {r}, replays {p}, dropped {d}"))
            }
        },
    );
    assert_eq!(
        after_first,
        (relayed0 + 1, replays0),
        "the first copy: relayed once, no replay"
    );

    assert!(
        hx.send(LinkBody::Onion(OnionPacket(bytes))),
        "X closed the link"
    );
    let after_second = poll(
        COUNTER_TIMEOUT,
        "X drops the replay (counters.replays + 1)",
        &[&x, &y],
        || {
            let st = x.try_status().ok_or("status did not answer")?;
            let (r, p, d) = counters(&st);
            if p > replays0 {
                Ok((r, p))
            } else {
                Err(format!("relayed {r}, replays {p}, dropped {d}"))
            }
        },
    );
    assert_eq!(
        after_second,
        (relayed0 + 1, replays0 + 1),
        "the replay: counted once, not relayed"
    );
}

/// 6 nodes, 3 hops, with sparse links: the network first comes up as a mesh
/// (so that every book fills at once), then every node is stopped and restarted
/// with at most 2 neighbours, bootstrapping along a line, its book loaded from
/// its store. Most hops of a path then join nodes without a link (relays
/// forward over courier links): 20 messages arrive, each once, and every
/// receipt comes back.
#[test]
fn paths_between_non_neighbours_deliver() {
    const N: u8 = 125;
    const COUNT: usize = 20;
    let t0 = Instant::now();
    let mut nodes = start_net(N, 20, 6, |_, _| {});
    {
        let all: Vec<&Node> = nodes.iter().collect();
        wait_books(&all);
    }
    for node in &mut nodes {
        let st = node.term(Duration::from_secs(15));
        assert!(st.success(), "{} exited with {st}", node.ip());
    }
    for (i, node) in nodes.iter_mut().enumerate() {
        node.opts.min_neighbours = 1;
        node.opts.max_neighbours = 2;
        let boot = if i == 0 {
            vec![]
        } else {
            vec![ip(N, 19 + i as u8)]
        };
        node.set_bootstrap(boot);
        node.restart();
    }
    let all: Vec<&Node> = nodes.iter().collect();
    wait_books(&all);
    let links: BTreeMap<String, BTreeSet<String>> = nodes
        .iter()
        .map(|n| {
            let st = n.status();
            let listed = st["neighbours"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x["address"].as_str().map(str::to_ascii_lowercase))
                        .collect()
                })
                .unwrap_or_default();
            (addr_of(n), listed)
        })
        .collect();
    eprintln!(
        "[{:.1?}] restarted sparse: degrees {:?}",
        t0.elapsed(),
        links.values().map(BTreeSet::len).collect::<Vec<_>>()
    );

    let (origin, recipient) = (&nodes[0], &nodes[5]);
    let ctx = [origin, recipient];
    let texts = texts(COUNT, "onion sparse");
    let ids: Vec<String> = texts.iter().map(|t| push(origin, recipient, t)).collect();
    let mut got = pull_until_all(recipient, &ids, ARRIVAL_TIMEOUT, &ctx);
    assert_each_once(&got, &ids, &texts);
    let (origin_addr, recipient_addr) = (addr_of(origin), addr_of(recipient));
    let mut hops = 0;
    let mut unlinked = 0;
    for parts in parts_of(origin, &ids).values() {
        for p in parts {
            let mut route = vec![origin_addr.clone()];
            route.extend(p.path.iter().cloned());
            route.push(recipient_addr.clone());
            for w in route.windows(2) {
                hops += 1;
                if !links.get(&w[0]).is_some_and(|l| l.contains(&w[1])) {
                    unlinked += 1;
                }
            }
        }
    }
    eprintln!(
        "[{:.1?}] all {COUNT} arrived; {unlinked} of {hops} hops between nodes without a link",
        t0.elapsed()
    );
    assert!(
        unlinked > 0,
        "no hop went between nodes without a link: the test proves nothing"
    );
    wait_settled(origin, &ctx);
    assert_no_late_copies(recipient, &mut got, &ids, &texts);
    eprintln!("[{:.1?}] done", t0.elapsed());
}

/// 5 nodes, 3 hops: `push --wait 30` exits 0 once the receipt is in (the
/// message is then in the recipient's inbox); a 60,000-byte message, in
/// several packets, arrives byte for byte.
#[test]
fn push_wait_and_a_60000_byte_message() {
    const N: u8 = 128;
    let t0 = Instant::now();
    let nodes = start_net(N, 20, 5, |_, _| {});
    let all: Vec<&Node> = nodes.iter().collect();
    wait_books(&all);
    let (origin, recipient) = (&nodes[0], &nodes[4]);
    let ctx = [origin, recipient];
    let wait_push = |text: &str| {
        let out = origin.cli_timeout(
            "push",
            &["--to", &recipient.ip(), "--msg", text, "--wait", "30"],
            Duration::from_secs(45),
        );
        assert_eq!(
            out.code,
            Some(0),
            "push --wait 30 should exit 0 once the receipt is in: {out}{}{}",
            origin.describe_for_failure(),
            recipient.describe_for_failure()
        );
        parse_id(&out).to_ascii_lowercase()
    };

    let short = format!("waited by onion {}", random_hex(8));
    let id = wait_push(&short);
    let inbox = recipient.status()["inbox"].as_u64().unwrap_or(0);
    assert!(
        inbox >= 1,
        "push --wait returned before the recipient had it (inbox {inbox})"
    );
    parts_of(origin, std::slice::from_ref(&id));
    let got = pull_until_all(recipient, std::slice::from_ref(&id), ARRIVAL_TIMEOUT, &ctx);
    assert_each_once(&got, &[id], &[short]);
    eprintln!("[{:.1?}] push --wait of a short message", t0.elapsed());

    // 60,000 bytes exactly: random hex and some two-byte characters.
    let long = format!("{}{}xx", random_hex(59_980), "é".repeat(9));
    assert_eq!(long.len(), 60_000);
    let id = wait_push(&long);
    eprintln!("[{:.1?}] push --wait of 60,000 bytes", t0.elapsed());
    let parts = parts_of(origin, std::slice::from_ref(&id))
        .remove(&id)
        .unwrap_or_default();
    let count = parts.iter().map(|p| p.parts).max().unwrap_or(0);
    let indices: BTreeSet<u64> = parts.iter().map(|p| p.part).collect();
    assert!(count > 1, "60,000 bytes take several packets: {parts:?}");
    assert_eq!(
        indices.len() as u64,
        count,
        "every part of the 60,000-byte message was sent: {indices:?} of {count}"
    );
    let got = pull_until_all(recipient, std::slice::from_ref(&id), ARRIVAL_TIMEOUT, &ctx);
    let text = got[&id].first().cloned().unwrap_or_default();
    if text != long {
        let at = text.bytes().zip(long.bytes()).position(|(a, b)| a != b);
        panic!(
            "the 60,000-byte message arrived changed: {} bytes, first difference at {at:?}",
            text.len()
        );
    }
    assert_eq!(
        got[&id].len(),
        1,
        "the 60,000-byte message arrived more than once"
    );
    eprintln!("[{:.1?}] done ({count} parts)", t0.elapsed());
}

/// 3 nodes with hops = 3 (one relay known): the message still goes, by the
/// one relay, and `push` says on stderr that fewer relays are known.
#[test]
fn small_network_sends_and_says_relays_known() {
    const N: u8 = 129;
    let nodes = start_net(N, 2, 3, |_, _| {});
    let all: Vec<&Node> = nodes.iter().collect();
    wait_books(&all);
    let (origin, relay, recipient) = (&nodes[0], &nodes[1], &nodes[2]);
    let text = format!("small onion {}", random_hex(8));
    let out = origin.try_push(&recipient.ip(), &text);
    assert!(out.ok(), "push in a small network: {out}");
    assert!(
        out.stderr.contains("relays known"),
        "push should warn that fewer relays are known than hops: {out}"
    );
    let id = parse_id(&out).to_ascii_lowercase();
    let got = pull_until_all(
        recipient,
        std::slice::from_ref(&id),
        ARRIVAL_TIMEOUT,
        &[origin, recipient],
    );
    assert_each_once(&got, std::slice::from_ref(&id), &[text]);
    let parts = parts_of(origin, std::slice::from_ref(&id))
        .remove(&id)
        .unwrap_or_default();
    for p in &parts {
        assert_eq!(
            p.path,
            vec![addr_of(relay)],
            "the one relay known is the path: {p:?}"
        );
    }
}

/// 7 nodes, 3 hops, one of them (Z) with `relay = false` and linked with all
/// the others: over 30 messages Z is on no path and relays nothing; a packet a
/// hostile peer routes through Z is not relayed either.
#[test]
fn non_relay_relays_nothing() {
    const N: u8 = 129;
    const COUNT: usize = 30;
    let t0 = Instant::now();
    let nodes = start_net(N, 20, 7, |i, o| o.relay = i != 0);
    let all: Vec<&Node> = nodes.iter().collect();
    wait_books(&all);
    let z = &nodes[0];
    let (origin, recipient) = (&nodes[1], &nodes[6]);
    let relays = &nodes[2..6];
    let z_addr = addr_of(z);
    poll(
        LINK_TIMEOUT,
        "Z is a neighbour of every other node",
        &[z],
        || {
            let listed = z
                .try_status()
                .map(|s| neighbour_listens(&s))
                .unwrap_or_default();
            let missing: Vec<String> = nodes[1..]
                .iter()
                .filter(|n| !listed.contains(&n.listen()))
                .map(|n| n.ip())
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("Z lacks {missing:?}"))
            }
        },
    );
    let seen = book(origin)
        .into_iter()
        .find(|p| p["listen"] == z.listen().as_str())
        .expect("the origin's book holds Z");
    assert_eq!(
        seen["relay"], false,
        "Z's record says relay = false: {seen}"
    );
    eprintln!("[{:.1?}] network up", t0.elapsed());

    let texts = texts(COUNT, "onion no relay");
    let ids: Vec<String> = texts.iter().map(|t| push(origin, recipient, t)).collect();
    let ctx = [origin, recipient, z];
    let got = pull_until_all(recipient, &ids, ARRIVAL_TIMEOUT, &ctx);
    assert_each_once(&got, &ids, &texts);
    wait_settled(origin, &ctx);
    for (id, parts) in parts_of(origin, &ids) {
        for p in parts {
            assert!(
                !p.path.contains(&z_addr),
                "Z (relay = false) is on a path of {id}: {p:?}"
            );
        }
    }
    poll(
        COUNTER_TIMEOUT,
        "the 4 relays relayed >= 3 packets per message",
        &[&relays[0]],
        || {
            let sum: u64 = relays.iter().map(relayed).sum();
            if sum >= (HOPS * COUNT) as u64 {
                Ok(())
            } else {
                Err(format!("the 4 relays relayed {sum} packets"))
            }
        },
    );
    assert_eq!(
        relayed(z),
        0,
        "Z (relay = false) relayed packets: {}",
        z.status()
    );

    // A packet routed through Z anyway (Z -> a relay -> the recipient).
    let mut hz = HostilePeer::dial(sock(&z.listen()), sock(&listen_addr(N, 200)));
    let hr = HostilePeer::dial(sock(&relays[0].listen()), sock(&listen_addr(N, 201)));
    let hb = HostilePeer::dial(sock(&recipient.listen()), sock(&listen_addr(N, 202)));
    let (z_hop, r_hop, b_hop) = (
        packet_hop(&hz.peer),
        packet_hop(&hr.peer),
        packet_hop(&hb.peer),
    );
    drop((hr, hb));
    let relayed_r = relayed(&relays[0]);
    let (_, _, dropped0) = counters(&z.status());
    let packet = Sphinx
        .wrap(
            &[z_hop, r_hop],
            &b_hop,
            b"through a node that relays nothing",
        )
        .expect("the library wraps a packet");
    assert!(
        hz.send(LinkBody::Onion(OnionPacket(packet.into_bytes()))),
        "Z closed the link"
    );
    poll(
        COUNTER_TIMEOUT,
        "Z drops the packet routed through it (counters.dropped + 1)",
        &[z],
        || {
            let st = z.try_status().ok_or("status did not answer")?;
            let (r, p, d) = counters(&st);
            if d > dropped0 || r > 0 {
                Ok(())
            } else {
                Err(format!("relayed {r}, replays {p}, dropped {d}"))
            }
        },
    );
    assert_eq!(
        relayed(z),
        0,
        "Z relayed the hostile peer's packet: {}",
        z.status()
    );
    assert_eq!(
        relayed(&relays[0]),
        relayed_r,
        "the packet Z got went on to the next relay"
    );
    // Z keeps no replay tag for what it dropped (it is on no path, and the
    // one packet sent to it was a layer to pass on). Stopped cleanly, so
    // whatever it stored is on disk for `store check`.
    drop(hz);
    let mut nodes = nodes;
    let z = &mut nodes[0];
    z.term(Duration::from_secs(20));
    let out = z.cli("store", &["check"]);
    assert!(
        out.stdout.contains("/ replay tags 0 /"),
        "Z (relay = false) stored replay tags: {out}"
    );
    eprintln!("[{:.1?}] done", t0.elapsed());
}

// ---------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------

fn files_under(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        match entry.file_type() {
            Ok(ft) if ft.is_dir() => files_under(&entry.path(), out),
            Ok(ft) if ft.is_file() => out.push(entry.path()),
            _ => {}
        }
    }
}

/// `(file, needle)` for each file under `dir` (and each of `extra`) holding a needle.
fn files_containing(
    dir: &std::path::Path,
    extra: &[std::path::PathBuf],
    needles: &[String],
) -> Vec<(String, String)> {
    let mut files = Vec::new();
    files_under(dir, &mut files);
    files.extend_from_slice(extra);
    let mut hits = Vec::new();
    for f in files {
        let bytes = std::fs::read(&f).unwrap_or_default();
        for n in needles {
            if bytes.windows(n.len()).any(|w| w == n.as_bytes()) {
                hits.push((f.display().to_string(), n.clone()));
            }
        }
    }
    hits
}

/// Every onion packet that peels leaves a replay tag on the relay's disk: a
/// peer sending more than `limits.new_entries_per_min` of them loses its
/// link, as a peer flooding new copies does.
#[test]
fn onion_packets_count_against_the_peers_entry_budget() {
    const N: u8 = 129;
    let x = Node::start(
        N,
        40,
        NodeOpts {
            extra_toml: format!(
                "{}\n[limits]\nnew_entries_per_min = 20\n",
                onion_opts(HOPS, "").extra_toml
            ),
            ..onion_opts(HOPS, "")
        },
    );
    let mut hx = HostilePeer::dial(sock(&x.listen()), sock(&listen_addr(N, 210)));
    let x_hop = packet_hop(&hx.peer);
    for i in 0..40u32 {
        // Each wrapped afresh: a distinct packet and tag every time.
        let p = Sphinx
            .wrap(&[], &x_hop, format!("junk {i}").as_bytes())
            .expect("the library wraps a packet to X");
        if !hx.send(LinkBody::Onion(OnionPacket(p.into_bytes()))) {
            break;
        }
    }
    assert!(
        hx.closed_within(Duration::from_secs(20)),
        "X kept the link of a peer over its entry budget{}",
        x.describe_for_failure()
    );
}

/// A hostile neighbour of the recipient sends 300 first parts of two-part
/// messages that never complete, each wrapped to the recipient's packet key
/// (so they peel, and are the recipient's own), each with a valid reply
/// block. They may fill that link's share of the incomplete messages
/// (`routing::policy::PER_HOP_INCOMPLETE`), not the recipient's whole table
/// (256): a 60,000-byte message (17 parts, over relays) pushed afterwards
/// still arrives, and `push --wait 30` sees its receipt.
#[test]
fn junk_first_parts_from_one_peer_do_not_block_long_messages() {
    const N: u8 = 132;
    const JUNK: u64 = 300;
    let nodes = start_net(N, 20, 5, |_, _| {});
    let all: Vec<&Node> = nodes.iter().collect();
    wait_books(&all);
    let (origin, recipient) = (&nodes[0], &nodes[4]);
    let ctx = [origin, recipient];
    let dropped_before = counters(&recipient.status()).2;

    let mut hostile = HostilePeer::dial(sock(&recipient.listen()), sock(&listen_addr(N, 210)));
    let r_hop = packet_hop(&hostile.peer);
    let me = NodeHop {
        id: hostile.peer.record.address,
        key: generate_key().1,
    };
    let expires_at = hermes::crypto::unix_now() + 3_600;
    for i in 0..JUNK {
        let part = Part {
            id: MessageId::random(),
            index: 0,
            count: 2,
            expires_at,
            data: format!("junk {i}").into_bytes(),
        };
        let (block, _) = Sphinx
            .reply_block(&[], &me)
            .expect("the library makes a reply block");
        let payload = PartPayload::new(block.as_bytes().to_vec(), part.encode())
            .encode()
            .expect("a part payload encodes");
        let packet = Sphinx
            .wrap(&[], &r_hop, &payload)
            .expect("the library wraps a packet to the recipient");
        assert!(
            hostile.send(LinkBody::Onion(OnionPacket(packet.into_bytes()))),
            "the recipient closed the hostile link after {i} junk parts{}",
            recipient.describe_for_failure()
        );
    }
    // Every junk part was looked at: those over the share are dropped (at
    // least 300 - 256 even where the whole table is the only bound).
    poll(
        COUNTER_TIMEOUT,
        "the recipient dropped the junk parts over its bound",
        &ctx,
        || {
            let d = counters(&recipient.status()).2 - dropped_before;
            if d >= JUNK - 256 {
                Ok(d)
            } else {
                Err(format!("{d} dropped"))
            }
        },
    );

    let long = format!("{}{}xx", random_hex(59_980), "é".repeat(9));
    let out = origin.cli_timeout(
        "push",
        &["--to", &recipient.ip(), "--msg", &long, "--wait", "30"],
        Duration::from_secs(45),
    );
    assert_eq!(
        out.code,
        Some(0),
        "a 60,000-byte message after one peer's junk parts: push --wait 30 should see its receipt; stdout {:?}, stderr {:?}{}{}",
        out.stdout,
        out.stderr,
        origin.describe_for_failure(),
        recipient.describe_for_failure()
    );
    let id = parse_id(&out).to_ascii_lowercase();
    let got = pull_until_all(recipient, std::slice::from_ref(&id), ARRIVAL_TIMEOUT, &ctx);
    assert_eq!(
        got[&id],
        vec![long],
        "the long message arrived once, intact"
    );
}
