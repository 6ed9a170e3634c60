//! A meshed network of daemons under a light steady load from a few
//! senders to every other node, pulled everywhere, optionally while some
//! nodes are SIGKILLed and restarted: the engine of `churn` and `wan`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use hermes::client::Client;
use rand::Rng as _;

use crate::daemons::{self, pull_round, Daemon, Pushed, Tally};
use crate::Ctx;

pub struct Load {
    /// Indices of the pushing nodes (each over one client connection).
    pub senders: Vec<usize>,
    /// Messages per second from each sender.
    pub rate: f64,
    pub duration: Duration,
    /// How long to wait for the last messages after the pushing ends.
    pub drain: Duration,
    /// Nodes never sent to (none: every node but the sender).
    pub skip_dest: Vec<usize>,
}

pub struct Churn {
    /// Nodes to SIGKILL once each and restart.
    pub nodes: Vec<usize>,
    /// Kills happen between these fractions of the load's duration ...
    pub window: (f64, f64),
    /// ... and each node stays down this long (seconds, uniform).
    pub down_s: (f64, f64),
}

pub struct Out {
    pub accepted: usize,
    pub refused: usize,
    pub first_refusal: Option<String>,
    pub tally: Tally,
    /// Seconds since the load's start.
    pub accepted_s: Vec<f64>,
    pub delivered_s: Vec<f64>,
    /// (seconds, "kill .N" / "up .N")
    pub events: Vec<(f64, String)>,
    pub delivered: usize,
    pub drained: bool,
    pub restart_failures: Vec<String>,
}

pub fn run(
    ctx: &Ctx,
    nodes: &mut [Daemon],
    tag: &str,
    load: &Load,
    churn: Option<&Churn>,
) -> anyhow::Result<Out> {
    let sockets: Vec<PathBuf> = nodes.iter().map(|n| n.socket()).collect();
    let ips: Vec<String> = nodes.iter().map(|n| n.ip.clone()).collect();
    let t0 = Instant::now();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let delivered_n = Arc::new(AtomicUsize::new(0));
    let accepted_n = Arc::new(AtomicUsize::new(0));
    let until = t0 + load.duration;
    let n = nodes.len();

    // Kill plan: (kill at, up at, node).
    let mut rng = rand::thread_rng();
    let mut plan: Vec<(f64, f64, usize)> = churn
        .map(|c| {
            c.nodes
                .iter()
                .map(|&i| {
                    let d = load.duration.as_secs_f64();
                    let at = rng.gen_range(c.window.0 * d..c.window.1 * d);
                    (at, at + rng.gen_range(c.down_s.0..c.down_s.1), i)
                })
                .collect()
        })
        .unwrap_or_default();
    plan.sort_by(|a, b| a.0.total_cmp(&b.0));

    let out = thread::scope(|s| -> anyhow::Result<Out> {
        // The puller: every node in turn, reconnecting after a restart.
        let puller = {
            let tally = tally.clone();
            let stop = stop.clone();
            let delivered_n = delivered_n.clone();
            let sockets = sockets.clone();
            s.spawn(move || {
                let mut clients: Vec<Option<Client>> = (0..sockets.len()).map(|_| None).collect();
                while !stop.load(Ordering::Relaxed) {
                    let mut any = 0;
                    for (i, sock) in sockets.iter().enumerate() {
                        if clients[i].is_none() {
                            clients[i] = Client::connect(sock).ok();
                        }
                        let Some(c) = clients[i].as_mut() else {
                            continue;
                        };
                        let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
                        match pull_round(c, &mut t, tag, t0) {
                            Ok(k) => any += k,
                            Err(_) => clients[i] = None,
                        }
                        delivered_n.store(t.got.len(), Ordering::Relaxed);
                    }
                    if any == 0 {
                        thread::sleep(Duration::from_millis(20));
                    }
                }
            })
        };
        // The senders, paced.
        let mut pushers = Vec::new();
        for (k, &snd) in load.senders.iter().enumerate() {
            let dests: Vec<usize> = (0..n)
                .filter(|&d| d != snd && !load.skip_dest.contains(&d))
                .collect();
            let dest_ips: Vec<String> = dests.iter().map(|&d| ips[d].clone()).collect();
            let socket = sockets[snd].clone();
            let accepted_n = accepted_n.clone();
            let interval = Duration::from_secs_f64(1.0 / load.rate.max(0.1));
            pushers.push(s.spawn(move || -> anyhow::Result<(Pushed, Vec<usize>)> {
                let mut i = 0u64;
                let mut next_at = Instant::now();
                let r = daemons::push_pipelined(
                    &socket,
                    &dest_ips,
                    tag,
                    ctx.size,
                    1,
                    until,
                    t0,
                    || {
                        i += 1;
                        Some((i as usize % dest_ips.len(), (k as u64) << 32 | i))
                    },
                    || {
                        accepted_n.fetch_add(1, Ordering::Relaxed);
                        next_at += interval;
                        if let Some(d) = next_at.checked_duration_since(Instant::now()) {
                            thread::sleep(d);
                        }
                    },
                )?;
                Ok((r, dests))
            }));
        }
        // The churn, on this thread.
        let mut events = Vec::new();
        let mut restart_failures = Vec::new();
        let mut ups: Vec<(f64, usize)> = Vec::new();
        let mut kills = plan.clone().into_iter().peekable();
        loop {
            let now = t0.elapsed().as_secs_f64();
            while kills.peek().is_some_and(|k| k.0 <= now) {
                if let Some((_, up, i)) = kills.next() {
                    nodes[i].kill9();
                    events.push((
                        now,
                        format!("kill .{}", nodes[i].ip.rsplit('.').next().unwrap_or("?")),
                    ));
                    ups.push((up, i));
                }
            }
            ups.sort_by(|a, b| a.0.total_cmp(&b.0));
            while ups.first().is_some_and(|u| u.0 <= now) {
                let (_, i) = ups.remove(0);
                match nodes[i].start() {
                    Ok(()) => events.push((
                        now,
                        format!("up .{}", nodes[i].ip.rsplit('.').next().unwrap_or("?")),
                    )),
                    Err(e) => restart_failures.push(format!("{}: {e:#}", nodes[i].name)),
                }
            }
            let pushing = Instant::now() < until;
            ctx.pb.set_message(format!(
                "{tag}: {} pushed, {} delivered{}",
                accepted_n.load(Ordering::Relaxed),
                delivered_n.load(Ordering::Relaxed),
                if pushing { "" } else { " (draining)" }
            ));
            if !pushing && kills.peek().is_none() && ups.is_empty() {
                break;
            }
            if Instant::now() > ctx.deadline {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let mut accepted = Vec::new();
        let mut refused = 0;
        let mut first_refusal = None;
        for p in pushers {
            let (r, _) = p.join().map_err(|_| anyhow::anyhow!("pusher panicked"))??;
            accepted.extend(r.accepted.iter().map(|a| (a.0, a.2)));
            refused += r.refused;
            if first_refusal.is_none() {
                first_refusal = r.first_refusal;
            }
        }
        let want: HashSet<u64> = accepted.iter().map(|a| a.0).collect();
        let drain_end = (Instant::now() + load.drain).min(ctx.deadline);
        let mut drained = false;
        while Instant::now() < drain_end {
            let t = tally.lock().unwrap_or_else(|e| e.into_inner());
            let got = want.iter().filter(|s| t.got.contains_key(s)).count();
            drop(t);
            ctx.pb
                .set_message(format!("{tag}: draining, {got} / {} delivered", want.len()));
            if got == want.len() {
                drained = true;
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        // One more full round of pulls after everything arrived, for late duplicates.
        thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        let _ = puller.join();
        let tally = std::mem::take(&mut *tally.lock().unwrap_or_else(|e| e.into_inner()));
        let delivered = want.iter().filter(|s| tally.got.contains_key(s)).count();
        let delivered_s = tally.got.values().map(|g| g.at_s).collect();
        Ok(Out {
            accepted: accepted.len(),
            refused,
            first_refusal,
            accepted_s: accepted.iter().map(|a| a.1).collect(),
            delivered_s,
            tally,
            events,
            delivered,
            drained,
            restart_failures,
        })
    })?;
    Ok(out)
}
