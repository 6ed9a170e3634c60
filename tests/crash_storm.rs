//! Issue 8, item 3: a crash storm. Six nodes; every 2 s for 40 s a random
//! one is SIGKILLed and restarted, while two of them push. Afterwards every
//! accepted message (one whose id `push` printed) is delivered exactly once,
//! and every sender's outbox shows it delivered: nothing queued, in flight
//! or failed.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use rand::{Rng, SeedableRng};

const N: u8 = 74;
const NODES: u8 = 6;
const STORM: Duration = Duration::from_secs(40);
const KILL_EVERY: Duration = Duration::from_secs(2);
/// Pause between two pushes of one sender.
const PUSH_GAP: Duration = Duration::from_millis(40);
/// Time for everything to settle once the storm is over.
const SETTLE: Duration = Duration::from_secs(120);

#[test]
fn crash_storm_delivers_every_accepted_message_once_and_settles_every_outbox() {
    let opts = NodeOpts {
        min_neighbours: 2,
        max_neighbours: 4,
        extra_toml: "[routing]\nretry_max = \"4s\"\n".into(),
        ..NodeOpts::default()
    };
    let nodes: Vec<Arc<Mutex<Node>>> = start_network(N, NODES, opts)
        .into_iter()
        .map(|n| Arc::new(Mutex::new(n)))
        .collect();
    let lock = |i: usize| nodes[i].lock().unwrap_or_else(|p| p.into_inner());
    {
        let all: Vec<_> = (0..nodes.len()).map(lock).collect();
        let refs: Vec<&Node> = all.iter().map(|g| &**g).collect();
        wait_for_overlay(LINK_TIMEOUT, "six nodes linked", &refs, |o| {
            o.check_min(2)?;
            o.check_connected()
        });
    }
    let ips: Vec<String> = (0..nodes.len()).map(|i| lock(i).ip()).collect();
    // Senders .2 and .3 push to the four others; texts name sender and count.
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = [0usize, 1]
        .into_iter()
        .map(|s| {
            let (node, stop, ips) = (nodes[s].clone(), stop.clone(), ips.clone());
            thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(s as u64);
                let mut accepted: Vec<(usize, String)> = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let to = rng.gen_range(2..ips.len());
                    let text = format!("s{s}-{i}");
                    i += 1;
                    let out = {
                        let n = node.lock().unwrap_or_else(|p| p.into_inner());
                        n.cli_timeout("push", &["--to", &ips[to], "--msg", &text], CMD_TIMEOUT)
                    };
                    if out.ok() {
                        accepted.push((to, text));
                    }
                    thread::sleep(PUSH_GAP);
                }
                accepted
            })
        })
        .collect();

    // The storm, from this thread (daemons die with the thread that spawned them).
    let mut rng = rand::rngs::StdRng::seed_from_u64(7474);
    let start = Instant::now();
    let mut kills = 0;
    while start.elapsed() < STORM {
        let victim = rng.gen_range(0..nodes.len());
        {
            let mut n = lock(victim);
            n.kill();
            n.respawn();
        }
        kills += 1;
        thread::sleep(KILL_EVERY);
    }
    stop.store(true, Ordering::Relaxed);
    let accepted: Vec<Vec<(usize, String)>> = senders
        .into_iter()
        .map(|h| h.join().expect("sender thread"))
        .collect();
    for i in 0..nodes.len() {
        lock(i).wait_ready();
    }
    let total: usize = accepted.iter().map(Vec::len).sum();
    eprintln!("crash storm: {kills} kills, {total} messages accepted");
    assert!(total > 100, "the senders got {total} messages accepted");

    // Every sender's outbox settles: all delivered, nothing else.
    for (s, acc) in accepted.iter().enumerate() {
        let node = lock(s);
        wait_for(
            SETTLE,
            format_args!("sender {} to settle its {} messages", node.ip(), acc.len()),
            &[&node],
            || {
                let (q, f, _, failed) = node.outbox();
                q == 0 && f == 0 && failed == 0
            },
        );
    }
    // Every accepted message is in its recipient's inbox exactly once.
    let mut problems = Vec::new();
    for r in 2..nodes.len() {
        let node = lock(r);
        let mut got: BTreeMap<String, usize> = BTreeMap::new();
        let ips = &ips;
        let expected: Vec<String> = accepted
            .iter()
            .enumerate()
            .flat_map(|(s, acc)| {
                acc.iter()
                    .filter(|(to, _)| *to == r)
                    .map(move |(_, t)| pull_line(&ips[s], t))
            })
            .collect();
        let deadline = Instant::now() + SETTLE;
        loop {
            let lines = node.pull();
            let empty = lines.is_empty();
            for l in lines {
                *got.entry(l).or_default() += 1;
            }
            let have = expected.iter().filter(|e| got.contains_key(*e)).count();
            if (have == expected.len() && empty) || Instant::now() >= deadline {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        for e in &expected {
            match got.get(e) {
                None => problems.push(format!("{}: missing {e:?}", node.ip())),
                Some(&n) if n > 1 => problems.push(format!("{}: {n} times {e:?}", node.ip())),
                _ => {}
            }
        }
        let unexpected = got.keys().filter(|l| !expected.contains(l)).count();
        if unexpected > 0 {
            problems.push(format!("{}: {unexpected} unexpected lines", node.ip()));
        }
    }
    for (s, acc) in accepted.iter().enumerate() {
        let (_, _, delivered, failed) = lock(s).outbox();
        if delivered != acc.len() as u64 || failed != 0 {
            problems.push(format!(
                "sender {}: {} accepted, outbox says {delivered} delivered, {failed} failed",
                ips[s],
                acc.len()
            ));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
