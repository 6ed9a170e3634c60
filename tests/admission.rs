//! Admission and log floods (issue 7, attacks 6 and 8), against real daemons.
//!
//! - Attack 6, slot lock-out: silent TCP connections to a node's peer port, each re-opened
//!   as soon as the node closes it, must not keep a newcomer from linking to that node.
//! - Attack 8, log floods: a connect/close flood must not write one log line per
//!   connection; the repeats are counted and summarised, and honest peers still link.

mod common;

use common::*;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// `hermes::logging::SUMMARY_INTERVAL` (written out, so this file also builds against a
/// node without it, to see the tests fail there).
const SUMMARY_INTERVAL: Duration = Duration::from_secs(60);
/// `hermes::actors::listener::LOG_FLUSH_INTERVAL`.
const LOG_FLUSH_INTERVAL: Duration = Duration::from_secs(5);
/// The default `limits.handshakes_total`.
const HANDSHAKES_TOTAL: usize = 64;
/// Silent connections the lock-out attacker keeps open (ten sources, eight each).
const ATTACK_SLOTS: usize = HANDSHAKES_TOTAL + 16;
/// How long a newcomer may take to link to the node under attack.
const NEWCOMER_DEADLINE: Duration = Duration::from_secs(15);

/// A TCP connection from `from` (a loopback address of the test) to `to`.
async fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(to).await
}

/// Reads until the peer closes the connection (or resets it).
async fn until_closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// What the lock-out attacker did.
#[derive(Default)]
struct AttackStats {
    /// Connections open now (connected, not yet closed by the node).
    open: AtomicUsize,
    /// Connections opened in all.
    opened: AtomicU64,
}

/// The lock-out attacker of attack 6: `slots` silent connections spread over `sources`,
/// each re-opened as soon as the node closes it, until `stop` is set, `max_time` has
/// passed, or `max_connections` have been opened.
fn lock_out_attacker(
    to: SocketAddr,
    sources: Vec<IpAddr>,
    slots: usize,
    stop: Arc<AtomicBool>,
    stats: Arc<AttackStats>,
    max_time: Duration,
    max_connections: u64,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        rt.block_on(async move {
            let deadline = tokio::time::Instant::now() + max_time;
            let mut tasks = Vec::new();
            for slot in 0..slots {
                let from = sources[slot % sources.len()];
                let (stop, stats) = (stop.clone(), stats.clone());
                tasks.push(tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed)
                        && tokio::time::Instant::now() < deadline
                        && stats.opened.load(Ordering::Relaxed) < max_connections
                    {
                        let Ok(mut s) = connect_from(from, to).await else {
                            // Out of ports or refused: try again shortly.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        };
                        stats.opened.fetch_add(1, Ordering::Relaxed);
                        stats.open.fetch_add(1, Ordering::Relaxed);
                        // Silent: never send a byte; stop waiting when told to.
                        let _ = tokio::time::timeout_at(deadline, async {
                            loop {
                                tokio::select! {
                                    _ = until_closed(&mut s) => return,
                                    _ = tokio::time::sleep(Duration::from_millis(100)) => {
                                        if stop.load(Ordering::Relaxed) { return; }
                                    }
                                }
                            }
                        })
                        .await;
                        stats.open.fetch_sub(1, Ordering::Relaxed);
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        });
    })
}

/// Attack 6: more than `handshakes_total` silent connections from ten source addresses,
/// each renewed the moment the node closes it, keep every slot of the node's handshake
/// table taken; a newcomer that bootstraps from that node must still link to it.
///
/// On a node with a fixed pool of 64 handshake slots that refuses when full (the base),
/// the attacker's renewals take every slot that frees, so the newcomer stays without
/// neighbours past the deadline.
#[test]
fn renewed_silent_connections_do_not_keep_a_newcomer_out() {
    let n = 47;
    let a = Node::start(
        n,
        2,
        NodeOpts {
            max_neighbours: 8,
            ..NodeOpts::default()
        },
    );
    let target: SocketAddr = a.listen().parse().expect("a socket address");
    let sources: Vec<IpAddr> = (100..110)
        .map(|h| ip(n, h).parse().expect("an IP"))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(AttackStats::default());
    let attacker = lock_out_attacker(
        target,
        sources,
        ATTACK_SLOTS,
        stop.clone(),
        stats.clone(),
        Duration::from_secs(90),
        2_000_000,
    );
    // Stop the attacker whatever happens below.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop_guard = StopOnDrop(stop.clone());

    wait_for(
        Duration::from_secs(20),
        format!("{HANDSHAKES_TOTAL} attacker connections open to {target}"),
        &[&a],
        || stats.open.load(Ordering::Relaxed) >= HANDSHAKES_TOTAL,
    );
    // Let the attack settle in: until the node has closed, and the attacker renewed, as
    // many connections as there are slots (on a node whose slots only time out, that is
    // one handshake timeout).
    let slots = ATTACK_SLOTS as u64;
    wait_for(
        Duration::from_secs(30),
        format!("{HANDSHAKES_TOTAL} attacker connections closed by the node and renewed"),
        &[&a],
        || stats.opened.load(Ordering::Relaxed) >= slots + HANDSHAKES_TOTAL as u64,
    );
    let opened_before = stats.opened.load(Ordering::Relaxed);

    let b = Node::start(
        n,
        3,
        NodeOpts {
            bootstrap: vec![a.listen()],
            ..NodeOpts::default()
        },
    );
    let started = Instant::now();
    wait_for(
        NEWCOMER_DEADLINE,
        format!(
            "newcomer {} to link to {} while {}+ silent connections are renewed",
            b.listen(),
            a.listen(),
            HANDSHAKES_TOTAL
        ),
        &[&a, &b],
        || {
            assert!(
                stats.open.load(Ordering::Relaxed) > 0 || stop.load(Ordering::Relaxed),
                "the attacker stopped early"
            );
            b.has_neighbour(&a.listen())
        },
    );
    let linked_after = started.elapsed();
    let open_at_link = stats.open.load(Ordering::Relaxed);
    let opened_during = stats.opened.load(Ordering::Relaxed) - opened_before;
    stop.store(true, Ordering::Relaxed);
    attacker.join().expect("attacker thread");
    eprintln!(
        "newcomer linked after {linked_after:?}; attacker: {open_at_link} open at that moment, \
         {opened_during} connections opened meanwhile, {} in all",
        stats.opened.load(Ordering::Relaxed)
    );
    // The attack was still on. (The attacker counts a connection open until it has seen
    // it closed; renewals in flight make the count dip below its 80 slots.)
    assert!(
        open_at_link >= HANDSHAKES_TOTAL * 3 / 4,
        "only {open_at_link} attacker connections open when the newcomer linked"
    );
    wait_linked(&a, &b);
}

/// One connection of the log flood: garbage then close, or silent then close.
async fn flood_one(from: IpAddr, to: SocketAddr, i: usize) -> bool {
    let Ok(mut s) = connect_from(from, to).await else {
        return false;
    };
    if i % 2 == 0 {
        let garbage: Vec<u8> = (0..64).map(|k| (i * 31 + k * 7) as u8).collect();
        let _ = s.write_all(&garbage).await;
    } else {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = s.shutdown().await;
    true
}

/// The messages of the lines a node writes about inbound connections.
const INBOUND_EVENTS: [&str; 5] = [
    "inbound link refused",
    "probed by a peer",
    "pending handshake dropped",
    "accept failed",
    "too many handshakes",
];

fn inbound_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| INBOUND_EVENTS.iter().any(|e| l.contains(e)))
        .collect()
}

/// The `repeated: N` of a summary line.
fn repeated(line: &str) -> Option<u64> {
    let rest = &line[line.find("repeated: ")? + "repeated: ".len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Attack 8: 2,000 connections from one address, half sending garbage, half silent,
/// each closed at once. The node writes a bounded number of lines about them (the
/// first of each kind, then one summary with the count), and still links honest peers.
///
/// The base writes one `inbound link refused` line per connection.
#[test]
fn connect_close_flood_is_summarised_not_logged_per_connection() {
    let n = 48;
    let a = Node::start(n, 2, NodeOpts::default());
    let target: SocketAddr = a.listen().parse().expect("a socket address");
    let from: IpAddr = ip(n, 100).parse().expect("an IP");
    const CONNECTIONS: usize = 2_000;
    const PARALLEL: usize = 8;

    let flood_start = Instant::now();
    let made = thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        rt.block_on(async move {
            let next = Arc::new(AtomicUsize::new(0));
            let made = Arc::new(AtomicUsize::new(0));
            let mut tasks = Vec::new();
            for _ in 0..PARALLEL {
                let (next, made) = (next.clone(), made.clone());
                tasks.push(tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= CONNECTIONS {
                            return;
                        }
                        if flood_one(from, target, i).await {
                            made.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
            made.load(Ordering::Relaxed)
        })
    })
    .join()
    .expect("flood thread");
    eprintln!(
        "flood: {made} of {CONNECTIONS} connections made in {:?}",
        flood_start.elapsed()
    );
    assert!(
        made >= CONNECTIONS * 9 / 10,
        "the flood made only {made} connections"
    );

    // An honest peer still links.
    let b = Node::start(
        n,
        3,
        NodeOpts {
            bootstrap: vec![a.listen()],
            ..NodeOpts::default()
        },
    );
    wait_linked(&a, &b);

    // Every connection has ended on the node once its handshake timed out (5 s + 5 s at
    // most). Until the summary, only the first line of each kind is written.
    let log = a.log();
    let lines = inbound_lines(&log);
    assert!(
        lines.len() <= INBOUND_EVENTS.len(),
        "{} lines about {made} inbound connections (at most one per kind expected):\n{}",
        lines.len(),
        lines[..lines.len().min(20)].join("\n")
    );

    // The summaries come within one interval (plus the flush period and slack) of the
    // first events, and with the lines in full they account for the connections.
    let source = from.to_string();
    let accounted = |log: &str| -> u64 {
        inbound_lines(log)
            .iter()
            .filter(|l| l.contains(&source))
            .map(|l| repeated(l).unwrap_or(1))
            .sum()
    };
    let summary_deadline = SUMMARY_INTERVAL + 2 * LOG_FLUSH_INTERVAL + Duration::from_secs(30);
    let summary = wait_for_value(
        summary_deadline.saturating_sub(flood_start.elapsed()),
        "summary lines accounting for the flood's connections",
        &[&a],
        || {
            let log = a.log();
            let summary = log
                .lines()
                .find(|l| l.contains("inbound link refused (") && repeated(l).is_some())?
                .to_owned();
            (accounted(&log) >= (made as u64) * 9 / 10).then_some(summary)
        },
    );
    let log = a.log();
    let lines = inbound_lines(&log);
    eprintln!("lines about inbound connections:\n{}", lines.join("\n"));
    assert!(
        lines.len() <= 2 * INBOUND_EVENTS.len(),
        "{} lines about inbound connections after the summary:\n{}",
        lines.len(),
        lines.join("\n")
    );
    assert!(
        accounted(&log) <= made as u64,
        "the lines account for {} connections, more than the {made} made:\n{}",
        accounted(&log),
        lines.join("\n")
    );
    assert!(
        summary.contains(&source),
        "the summary names the source: {summary}"
    );
    // The honest link is still up.
    assert!(b.has_neighbour(&a.listen()), "the honest link went down");
}

/// Attack 8 past the handshake: a stranger with a fresh key for every
/// connection links and unlinks 300 times. The node logs "neighbour up/down"
/// once per source and minute, not once per link.
#[test]
fn fresh_keys_linking_and_unlinking_do_not_flood_the_log() {
    use common::hostile::HostilePeer;
    const N: u8 = 49;
    const LINKS: usize = 300;
    let a = Node::start(N, 2, NodeOpts::default());
    let to: std::net::SocketAddr = a.listen().parse().expect("an address");
    let claimed: std::net::SocketAddr = listen_addr(N, 9).parse().expect("an address");
    for _ in 0..LINKS {
        let h = HostilePeer::dial(to, claimed);
        drop(h);
    }
    let info_lines = |what: &str| {
        a.log()
            .lines()
            .filter(|l| l.contains(" INFO ") && l.contains(what) && !l.contains("more in"))
            .count()
    };
    // The last unlink has been handled once `status` shows no neighbour.
    wait_for(LINK_TIMEOUT, "the strangers gone", &[&a], || {
        a.neighbour_listens().is_empty()
    });
    let (ups, downs) = (info_lines("neighbour up"), info_lines("neighbour down"));
    assert!(
        ups <= 2 && downs <= 2,
        "{LINKS} links from one claimed source wrote {ups} 'neighbour up' and {downs} \
         'neighbour down' lines"
    );
}
