//! Per-peer budgets (issue 7, attack 5 "Exhaustion"): one authenticated peer that
//! floods a node loses its link once it is over the `[limits]` budget, is refused for
//! `limits.backoff`, and what it got through is bounded by the budget; honest traffic
//! through the node keeps flowing, and a busy honest line under the defaults is never cut.
//!
//! Every test runs real daemons and a [`HostilePeer`] that speaks the real protocol
//! with its own valid key and record.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::hostile::HostilePeer;
use common::*;
use hermes::crypto::seal::Sealed;
use hermes::crypto::{unix_now, Address, Identity};
use hermes::wire::link::{FloodPacket, LinkBody};
use hermes::wire::MessageId;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::Value;

/// How long the node may take to cut the hostile link once it is over budget.
const CUT_OFF: Duration = Duration::from_secs(30);
/// The expiry the junk claims: 30 days, the longest a node accepts.
const JUNK_EXPIRY_SECS: u64 = 30 * 24 * 3600 - 60;

fn rng() -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(0x6275_6467)
}

/// A junk flood packet of valid shape: random id and recipient, 30-day expiry, random
/// `sealed` of `len` bytes of ciphertext.
fn junk(rng: &mut impl RngCore, len: usize) -> LinkBody {
    let mut ciphertext = vec![0u8; len];
    rng.fill_bytes(&mut ciphertext);
    let mut recipient = [0u8; 32];
    rng.fill_bytes(&mut recipient);
    let mut sender_kem = [0u8; 32];
    rng.fill_bytes(&mut sender_kem);
    let mut enc = [0u8; 32];
    rng.fill_bytes(&mut enc);
    LinkBody::Packet(FloodPacket {
        id: MessageId::random(),
        attempt: 0,
        hops_left: 8,
        recipient: Address(recipient),
        expires_at: unix_now() + JUNK_EXPIRY_SECS,
        sealed: Sealed {
            sender_kem,
            enc,
            ciphertext,
        },
    })
}

/// What a flood did: packets written, whether the node closed the link, and how long
/// from the first write until the close was seen (or the wait for it gave up). The
/// node read the flood for no longer than that, so its budget let through at most
/// `burst + rate * took`.
struct Flood {
    sent: usize,
    closed: bool,
    took: Duration,
}

/// Sends up to `count` junk packets as fast as the link takes them (kernel buffers may
/// take them all before the node reads them), then waits for the node to close.
fn flood(
    h: &mut HostilePeer,
    count: usize,
    len: impl Fn(&mut rand::rngs::StdRng) -> usize,
) -> Flood {
    let mut rng = rng();
    let start = Instant::now();
    let mut sent = 0;
    for _ in 0..count {
        let n = len(&mut rng);
        if !h.send(junk(&mut rng, n)) {
            break;
        }
        sent += 1;
    }
    let closed = h.closed_within(CUT_OFF);
    Flood {
        sent,
        closed,
        took: start.elapsed(),
    }
}

fn counter(st: &Value, name: &str) -> u64 {
    st["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("status has no counters.{name}: {st}"))
}

fn drop_list(st: &Value) -> u64 {
    st["drop_list"]
        .as_u64()
        .unwrap_or_else(|| panic!("status has no drop_list: {st}"))
}

/// Resident memory of a process, in kB (`VmRSS` of /proc/PID/status).
fn rss_kb(pid: Option<u32>) -> u64 {
    let Some(pid) = pid else { return 0 };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Bytes of all files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Lines of `node`'s log that contain every one of `words`.
fn log_lines(node: &Node, words: &[&str]) -> Vec<String> {
    node.log()
        .lines()
        .filter(|l| words.iter().all(|w| l.contains(w)))
        .map(str::to_owned)
        .collect()
}

/// Push `from -> to` (by node address) and wait until `to` pulls exactly it.
fn deliver(from: &Node, to: &Node, label: &str) {
    let text = format!("{label} {}", random_hex(8));
    from.push(&to.address(), &text);
    let got = to.pull_until(DELIVERY_TIMEOUT, &format!("message `{label}`"), |l| {
        !l.is_empty()
    });
    assert_eq!(
        got,
        vec![pull_line(&from.ip(), &text)],
        "delivery `{label}`"
    );
}

fn sock(s: &str) -> SocketAddr {
    s.parse().expect("a socket address")
}

/// The log form of a node address (its first 8 hex digits).
fn short(a: &Address) -> String {
    format!("{a:?}")
}

/// Attack 5: a 3-node line `.2 - .3 - .4` (victim `.3`, with `[limits] packets_per_sec
/// = 200, packet_burst = 400`) and a hostile peer linked to `.3` that sends 20,000 junk
/// packets as fast as it can. The victim cuts the link, logs it once, refuses the same
/// identity when it comes back, stays up, keeps carrying `.2 -> .4`, and what it accepted
/// and relayed of the junk is bounded by the budget.
#[test]
fn junk_flood_is_cut_refused_and_bounded_by_the_budget() {
    const N: u8 = 51;
    const RATE: u64 = 200;
    const BURST: u64 = 400;
    const JUNK: usize = 20_000;
    let victim_limits = format!("[limits]\npackets_per_sec = {RATE}\npacket_burst = {BURST}\n");
    let mut nodes = line_with(N, 3, |i, o| {
        if i == 1 {
            o.extra_toml = victim_limits.clone();
        }
    });
    warm_up(&nodes[0], &nodes[2]);
    let (v_before, c_before) = (nodes[1].status(), nodes[2].status());
    let rss_before = rss_kb(nodes[1].pid());
    let store_before = dir_bytes(&nodes[1].data_dir());

    let keys = tempfile::tempdir().expect("a temp dir for the hostile key");
    let identity = Identity::load_or_create(keys.path()).expect("hostile identity");
    let hostile_address = identity.address();
    let hostile_listen = sock(&listen_addr(N, 9));
    let victim = sock(&nodes[1].listen());
    let mut h = HostilePeer::dial_as(identity, victim, hostile_listen, unix_now());
    let Flood { sent, closed, took } = flood(&mut h, JUNK, |r| r.gen_range(16..64));
    eprintln!("hostile: {sent} of {JUNK} junk packets written; closed: {closed}, after {took:?}");

    // Honest traffic through the victim, after the attack. It follows the relayed junk
    // on the same queues, so once it is in, the junk that went through has arrived.
    deliver(&nodes[0], &nodes[2], "after the flood");
    nodes[1].assert_alive();
    let (v_after, c_after) = (nodes[1].status(), nodes[2].status());
    let rss_after = rss_kb(nodes[1].pid());
    let store_after = dir_bytes(&nodes[1].data_dir());
    let relayed = counter(&v_after, "relayed") - counter(&v_before, "relayed");
    let v_drops = drop_list(&v_after).saturating_sub(drop_list(&v_before));
    let c_drops = drop_list(&c_after).saturating_sub(drop_list(&c_before));
    eprintln!(
        "victim .3: relayed +{relayed}, drop list +{v_drops}, store {store_before} -> \
         {store_after} bytes, RSS {rss_before} -> {rss_after} kB; .4: drop list +{c_drops}"
    );

    assert!(
        closed,
        "the victim must close the link of a peer over budget{}",
        nodes[1].describe_for_failure()
    );
    let warnings = log_lines(&nodes[1], &["over budget", &short(&hostile_address)]);
    assert_eq!(
        warnings.len(),
        1,
        "one warning for the peer over budget: {warnings:#?}"
    );
    assert!(
        warnings[0].contains("limits.packets_per_sec"),
        "the warning names the budget: {}",
        warnings[0]
    );
    // What the budget lets through: the burst, plus the sustained rate for as long as
    // the victim read the flood (at most until the hostile saw the close).
    let bound = BURST + RATE * (took.as_secs() + 1);
    assert!(
        relayed <= bound,
        "the victim relayed {relayed} junk packets; the budget allows at most {bound}"
    );
    // Honest messages add a few entries each (warm-up and one delivery).
    let slack = 20;
    // A relay keeps nothing on disk per packet it carries (its duplicate
    // filter is in memory), junk or not.
    assert_eq!(
        v_drops, 0,
        "the victim relays only: its drop list must not grow"
    );
    assert!(
        c_drops <= bound + slack,
        ".4's drop list grew by {c_drops}; the budget allows about {bound}"
    );

    // The same identity, back at once, is refused during the backoff.
    for attempt in 0..3 {
        let identity = Identity::load_or_create(keys.path()).expect("hostile identity");
        let mut again = HostilePeer::dial_as(identity, victim, hostile_listen, unix_now());
        assert!(
            again.closed_within(CUT_OFF),
            "re-dial {attempt} of the banned peer must be refused{}",
            nodes[1].describe_for_failure()
        );
    }
    assert!(
        !nodes[1].has_neighbour(&hostile_listen.to_string()),
        "the banned peer is no neighbour: {}",
        nodes[1].status()
    );
    // Refusals are not logged one line each at info level or above.
    let ups = log_lines(&nodes[1], &["peer up", &short(&hostile_address)]);
    assert_eq!(ups.len(), 1, "refused links are not 'peer up': {ups:#?}");

    deliver(&nodes[0], &nodes[2], "after the re-dials");
    deliver(&nodes[2], &nodes[0], "back the other way");
    for n in nodes.iter_mut() {
        n.assert_alive();
    }
}

/// The byte budget: a hostile peer sends few but large packets (60 kB each) to a node
/// with `[limits] bytes_per_sec = 65536, byte_burst = 262144`; it is cut for bytes while
/// far inside the packet budget, and the honest neighbour keeps delivering.
#[test]
fn large_frames_break_the_byte_budget() {
    const N: u8 = 52;
    const RATE: u64 = 65_536;
    const BURST: u64 = 262_144;
    const SIZE: usize = 60_000;
    let limits = format!("[limits]\nbytes_per_sec = {RATE}\nbyte_burst = {BURST}\n");
    let mut nodes = line_with(N, 2, |i, o| {
        if i == 1 {
            o.extra_toml = limits.clone();
        }
    });
    let before = nodes[1].status();
    let keys = tempfile::tempdir().expect("a temp dir for the hostile key");
    let identity = Identity::load_or_create(keys.path()).expect("hostile identity");
    let hostile_address = identity.address();
    let victim = sock(&nodes[1].listen());
    let mut h = HostilePeer::dial_as(identity, victim, sock(&listen_addr(N, 9)), unix_now());
    let Flood { sent, closed, took } = flood(&mut h, 200, |_| SIZE);
    eprintln!(
        "hostile: {sent} of 200 packets of {SIZE} bytes written; closed: {closed}, after {took:?}"
    );
    deliver(&nodes[0], &nodes[1], "after the large frames");
    let after = nodes[1].status();
    let relayed = counter(&after, "relayed") - counter(&before, "relayed");
    eprintln!("victim .3: relayed +{relayed}");

    assert!(
        closed,
        "the link must be cut{}",
        nodes[1].describe_for_failure()
    );
    let warnings = log_lines(&nodes[1], &["over budget", &short(&hostile_address)]);
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].contains("limits.bytes_per_sec"),
        "cut for bytes: {}",
        warnings[0]
    );
    let bound = (BURST + RATE * (took.as_secs() + 1)) / SIZE as u64 + 1;
    assert!(
        relayed <= bound,
        "relayed {relayed} large junk packets; the byte budget allows at most {bound}"
    );
    deliver(&nodes[1], &nodes[0], "back the other way");
    for n in nodes.iter_mut() {
        n.assert_alive();
    }
}

/// An honest busy line under the default budgets is never cut: 2,000 pushes `.2 -> .4`
/// through `.3` all arrive, and no node logs a peer over budget.
#[test]
fn busy_honest_line_stays_within_the_default_budgets() {
    const N: u8 = 53;
    const MESSAGES: usize = 2_000;
    const PUSHERS: usize = 4;
    let nodes = line(N, 3);
    warm_up(&nodes[0], &nodes[2]);
    let to = nodes[2].address();
    std::thread::scope(|s| {
        for p in 0..PUSHERS {
            let (from, to) = (&nodes[0], &to);
            s.spawn(move || {
                for i in (p..MESSAGES).step_by(PUSHERS) {
                    from.push(to, &format!("busy {i}"));
                }
            });
        }
    });
    let got = nodes[2].pull_until(
        Duration::from_secs(180),
        &format!("all {MESSAGES} messages"),
        |l| l.len() >= MESSAGES,
    );
    assert_eq!(got.len(), MESSAGES, "each message once");
    for n in &nodes {
        let cut = log_lines(n, &["over budget"]);
        assert!(
            cut.is_empty(),
            "{}: an honest peer was cut: {cut:#?}",
            n.listen()
        );
    }
    wait_linked(&nodes[0], &nodes[1]);
    wait_linked(&nodes[1], &nodes[2]);
}

/// A peer whose packets create more duplicate-filter entries than
/// `limits.new_entries_per_min` (here 100) is cut and refused, even while it
/// stays under the packet and byte budgets.
#[test]
fn too_many_new_packets_per_minute_cut_the_link() {
    const N: u8 = 54;
    const ENTRIES: u64 = 100;
    let mut nodes = line_with(N, 3, |i, o| {
        if i == 1 {
            o.extra_toml = format!("[limits]\nnew_entries_per_min = {ENTRIES}\n");
        }
    });
    warm_up(&nodes[0], &nodes[2]);
    let before = nodes[1].status();
    let identity = Identity::generate();
    let hostile_address = identity.address();
    let victim = sock(&nodes[1].listen());
    let mut h = HostilePeer::dial_as(identity, victim, sock(&listen_addr(N, 9)), unix_now());
    let mut rng = rand::rngs::StdRng::seed_from_u64(54);
    let mut sent = 0;
    for _ in 0..(3 * ENTRIES) {
        if !h.send(junk(&mut rng, 32)) {
            break;
        }
        sent += 1;
    }
    assert!(
        h.closed_within(CUT_OFF),
        "the victim must cut a peer over its new-entry budget (sent {sent}){}",
        nodes[1].describe_for_failure()
    );
    // Logs are written by a background thread: wait for the line.
    let mut warnings = Vec::new();
    wait_for(
        LINK_TIMEOUT,
        "the over-budget warning",
        &[&nodes[1]],
        || {
            warnings = log_lines(&nodes[1], &["over budget", &short(&hostile_address)]);
            !warnings.is_empty()
        },
    );
    deliver(&nodes[0], &nodes[2], "after the cut");
    let warnings = log_lines(&nodes[1], &["over budget", &short(&hostile_address)]);
    assert_eq!(warnings.len(), 1, "one warning: {warnings:#?}");
    assert!(
        warnings[0].contains("limits.new_entries_per_min"),
        "the warning names the budget: {}",
        warnings[0]
    );
    let after = nodes[1].status();
    let relayed = counter(&after, "relayed") - counter(&before, "relayed");
    // The budget, plus the honest delivery just made.
    assert!(
        relayed <= ENTRIES + 2,
        "relayed {relayed} junk packets; the budget is {ENTRIES} a minute"
    );
    nodes[1].assert_alive();
}
