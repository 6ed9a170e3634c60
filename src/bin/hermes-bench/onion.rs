//! The onion rows (issue 9): daemons in `routing.mode = "onion"`,
//! `routing.hops = 3`, next to the Sphinx primitives measured in the same run
//! ([`crate::bounds::OnionBounds`]).

use std::collections::HashSet;
use std::io::{BufRead as _, BufReader, BufWriter, Write as _};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use hermes::client::Client;
use hermes::wire::client::{Request, Response};

use crate::bounds::{Bounds, ONION_RELAYS};
use crate::daemons::{
    self, cpu_seconds, now_us, pull, pull_round, stop_all, Daemon, NodeOpts, Tally,
};
use crate::report::{pct, Goal, Row};
use crate::Ctx;

/// The onion bounds as rows (printed with the other bounds).
pub fn bound_rows(b: &Bounds, ncpu: usize) -> Vec<Row> {
    let o = &b.onion;
    let prim = b.onion_primitives_us();
    vec![
        Row::new("bound_onion_wrap", Some(o.wrap_us), "µs").note(format!(
            "crypto::sphinx wrap of 1 KiB for {ONION_RELAYS} relays + the recipient (4,096-byte packet)"
        )),
        Row::new("bound_onion_peel", Some(o.peel_us), "µs")
            .note("one peel at a relay: replay tag, MAC, routing info, blinding, Lioness"),
        Row::new("bound_onion_peel_last", Some(o.peel_last_us), "µs")
            .note("the recipient's peel (the payload opened)"),
        Row::new("bound_onion_reply_block", Some(o.reply_block_us), "µs").note(format!(
            "one recoverable reply block for {ONION_RELAYS} relays + the origin"
        )),
        Row::new("bound_onion_use_reply", Some(o.use_reply_us), "µs")
            .note("a receipt packet made with a reply block (at the recipient)"),
        Row::new("bound_onion_reply_open", Some(o.reply_open_us), "µs")
            .note("the origin's peel of a reply + opening it with its recovery"),
        Row::new("bound_chacha20poly1305_4k", Some(o.aead_packet_us), "µs")
            .note("seal + open of 4,096 bytes, key set up once: a Noise hop of one onion packet"),
        Row::new("bound_replay_tag_insert", Some(o.tag_insert_us), "µs")
            .note("raw sled contains_key + compare_and_swap of a fresh 40-byte key, no flush (a relay's replay-tag check)"),
        Row::new("bound_loopback_rtt_4k_p50", Some(o.rtt_packet_p50_us), "µs")
            .note("4,096 bytes over loopback TCP, blocking, TCP_NODELAY"),
        Row::new("onion_relay_per_packet", Some(o.relay_packet_us()), "µs")
            .note("bound_onion_peel + bound_chacha20poly1305_4k + bound_replay_tag_insert"),
        Row::new("onion_relay_bound", Some(o.relay_bound_per_core()), "pkt/s/core")
            .note("1 core / onion_relay_per_packet"),
        Row::new("onion_primitives_per_msg", Some(prim), "µs").note(format!(
            "hpke seal + open + wrap + reply block + {} relay peels and tag inserts (going and back) + the recipient's peel + using the reply block + the origin's reply open + {} x chacha20poly1305 of 4 KiB + 2 x group-commit share",
            2 * ONION_RELAYS,
            2 * (ONION_RELAYS + 1)
        )),
        Row::new("onion_primitives_bound", Some(ncpu as f64 * 1e6 / prim), "msg/s")
            .note(format!("{ncpu} cores / onion_primitives_per_msg")),
    ]
}

/// Daemons of the onion phase: the origin (.2), 3 relays (.3-.5), the
/// recipient (.6), each linked with every other.
pub const NODES: usize = ONION_RELAYS + 2;
/// Messages pushed but not yet delivered, at most, during the flood: the
/// load is a flood held at this backlog, so that the drain after it is short
/// and the rate measured is the one the network sustains.
const MAX_BACKLOG: usize = 1000;
/// How long one unloaded latency message waits for its receipt before the
/// next is pushed (past that it is counted, not waited for).
const RECEIPT_WAIT: Duration = Duration::from_secs(2);
/// The origin's info line for every packet it sends.
const PART_SENT: &str = "onion part sent";

/// The routing section of every onion daemon.
fn routing_toml() -> String {
    format!("[routing]\nmode = \"onion\"\nhops = {ONION_RELAYS}\n")
}

pub struct OnionOut {
    pub rows: Vec<Row>,
    /// Client-side push-to-pulled latencies, unloaded, ms.
    pub lat: Vec<f64>,
    /// Seconds since the flood's start: accepted, delivered.
    pub accepted_s: Vec<f64>,
    pub delivered_s: Vec<f64>,
    pub flood_s: f64,
    pub problems: Vec<String>,
}

pub fn run(ctx: &Ctx, b: &Bounds) -> anyhow::Result<OnionOut> {
    let mut nodes: Vec<Daemon> = Vec::new();
    for i in 0..NODES {
        let ip = format!("{}.{}", ctx.net_onion, i + 2);
        // Each joins through .2 and the one before it; min_neighbours makes
        // the mesh complete.
        let mut bootstrap = vec![];
        if i > 0 {
            bootstrap.push(format!("{}.2:{}", ctx.net_onion, daemons::PORT));
        }
        if i > 1 {
            bootstrap.push(format!("{}.{}:{}", ctx.net_onion, i + 1, daemons::PORT));
        }
        // The origin logs each packet it sends (info), for the packet count.
        let log_level = if i == 0 && ["warning", "error"].contains(&ctx.log_level.as_str()) {
            "info".to_string()
        } else {
            ctx.log_level.clone()
        };
        let opts = NodeOpts {
            bootstrap,
            min_neighbours: NODES - 1,
            max_neighbours: 8,
            log_level,
            extra_toml: format!("{}\n{}", ctx.limits_toml(), routing_toml()),
        };
        nodes.push(Daemon::new(
            &ctx.hermes,
            &ctx.base,
            &format!("onion{}", i + 2),
            &ip,
            &opts,
            None,
        )?);
    }
    let out = (|| {
        for n in nodes.iter_mut() {
            n.start()?;
        }
        run_on(ctx, b, &mut nodes)
    })();
    let bad = stop_all(&mut nodes);
    let mut out = match out {
        Ok(o) => o,
        Err(e) => {
            let logs: Vec<String> = nodes
                .iter()
                .map(|n| format!("--- {} log ---\n{}", n.name, n.tail(15)))
                .collect();
            return Err(e.context(logs.join("\n")));
        }
    };
    if !bad.is_empty() {
        out.problems
            .push(format!("onion: not a clean exit 0 on SIGTERM: {bad:?}"));
    }
    Ok(out)
}

/// Lines of `PART_SENT` in a daemon's log so far.
fn parts_sent(d: &Daemon) -> usize {
    std::fs::read_to_string(&d.log)
        .map(|t| t.lines().filter(|l| l.contains(PART_SENT)).count())
        .unwrap_or(0)
}

/// Relay-flagged records in a node's address book.
fn relays_known(d: &Daemon) -> usize {
    let Ok(mut c) = Client::connect(&d.socket()) else {
        return 0;
    };
    match c.call(&Request::Peers) {
        Ok(Response::Peers(p)) => p.iter().filter(|p| p.relay).count(),
        _ => 0,
    }
}

fn outbox_empty(d: &Daemon) -> bool {
    d.status()
        .is_some_and(|s| s.outbox.queued + s.outbox.in_flight == 0)
}

fn run_on(ctx: &Ctx, b: &Bounds, nodes: &mut [Daemon]) -> anyhow::Result<OnionOut> {
    let deadline = ctx.deadline;
    ctx.phase(&format!(
        "onion: {NODES} daemons (routing.mode = \"onion\", hops = {ONION_RELAYS}) starting, waiting for the mesh"
    ));
    let setup = Instant::now();
    // Every node linked with every other, and knowing every other's record
    // (a relay resolves the next hop's id through its address book).
    daemons::wait_until(
        deadline.min(Instant::now() + Duration::from_secs(60)),
        Duration::from_millis(100),
        "the onion mesh is linked and every record known",
        || {
            Ok(nodes.iter().all(|n| {
                n.status().is_some_and(|s| s.neighbours.len() >= NODES - 1)
                    && relays_known(n) >= NODES - 1
            }))
        },
    )?;
    let tag = format!("{:08x}", rand::random::<u32>());
    let mut problems = Vec::new();
    let origin = 0;
    let last = NODES - 1;
    let relays: Vec<usize> = (1..last).collect();

    // Warm-up: one message end to end, and its receipt back.
    // Pushes answered with a short-path warning (fewer relays than hops).
    let mut short = 0usize;
    let mut short_warning: Option<String> = None;
    let mut pusher = Client::connect(&nodes[origin].socket())?;
    let mut far = Client::connect(&nodes[last].socket())?;
    let warm = format!("warm-up {}", now_us());
    match pusher.call(&Request::Push {
        to: nodes[last].ip.clone(),
        text: warm.clone(),
    })? {
        Response::Pushed { .. } => {}
        Response::PushedShort { warning, .. } => {
            short += 1;
            short_warning.get_or_insert(warning);
        }
        other => bail!("onion warm-up push refused: {other:?}"),
    }
    daemons::wait_until(
        deadline.min(Instant::now() + Duration::from_secs(30)),
        Duration::from_millis(5),
        "the onion warm-up message delivered (30 s)",
        || {
            let m = pull(&mut far)?;
            daemons::confirm(&mut far, &m)?;
            Ok(m.iter().any(|m| m.text == warm))
        },
    )?;
    if daemons::wait_until(
        deadline.min(Instant::now() + Duration::from_secs(30)),
        Duration::from_millis(10),
        "the onion warm-up receipt back",
        || Ok(outbox_empty(&nodes[origin])),
    )
    .is_err()
    {
        problems.push("onion: the warm-up message's receipt was not back within 30 s".into());
    }
    let setup_s = setup.elapsed().as_secs_f64();

    // ---- unloaded latency over 3 relays ----
    let k = if ctx.quick { 100 } else { 300 };
    ctx.phase(&format!(
        "onion: unloaded latency, {ONION_RELAYS} relays, {k} messages"
    ));
    let mut lat: Vec<f64> = Vec::with_capacity(k);
    let mut late_receipts = 0usize;
    let mut tally = Tally::default();
    let t0 = Instant::now();
    let parts0 = parts_sent(&nodes[origin]);
    for seq in 1..=k as u64 {
        let t = Instant::now();
        match pusher.call(&Request::Push {
            to: nodes[last].ip.clone(),
            text: daemons::text(&tag, seq, ctx.size),
        })? {
            Response::Pushed { .. } => {}
            Response::PushedShort { warning, .. } => {
                short += 1;
                short_warning.get_or_insert(warning);
            }
            other => bail!("onion latency push refused: {other:?}"),
        }
        daemons::wait_until(
            deadline,
            Duration::from_micros(100),
            "onion latency message delivered",
            || {
                pull_round(&mut far, &mut tally, &tag, t0)?;
                Ok(tally.got.contains_key(&seq))
            },
        )?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        // Unloaded: the receipt back before the next one.
        if daemons::wait_until(
            deadline.min(Instant::now() + RECEIPT_WAIT),
            Duration::from_millis(1),
            "receipt",
            || Ok(outbox_empty(&nodes[origin])),
        )
        .is_err()
        {
            late_receipts += 1;
        }
    }
    let lat_parts = parts_sent(&nodes[origin]).saturating_sub(parts0);
    if let Some(w) = &short_warning {
        problems.push(format!(
            "onion latency: {short} pushes answered with a short path: {w}"
        ));
    }
    if tally.duplicates + tally.unexpected > 0 {
        problems.push(format!(
            "onion latency: {} duplicates, {} unexpected",
            tally.duplicates, tally.unexpected
        ));
    }
    drop(far);
    drop(pusher);

    // ---- the flood, held at a backlog of MAX_BACKLOG ----
    let push_s = if ctx.quick { 20.0 } else { 45.0 };
    ctx.phase(&format!(
        "onion: flood .2 -> .6 for {push_s:.0} s (1 KiB, `hermes push --each-line`, at most {MAX_BACKLOG} undelivered)"
    ));
    let pids: Vec<u32> = nodes.iter().map(|n| n.pid().unwrap_or(0)).collect();
    let relayed = |n: &Daemon| n.status().map(|s| s.counters.relayed).unwrap_or(0);
    let relayed0: Vec<u64> = nodes.iter().map(relayed).collect();
    let replays0: u64 = nodes
        .iter()
        .filter_map(|n| n.status())
        .map(|s| s.counters.replays)
        .sum();
    let parts0 = parts_sent(&nodes[origin]);
    let cpu0: Vec<f64> = pids.iter().map(|&p| cpu_seconds(p)).collect();
    let t0 = Instant::now();
    let t0_ms = now_us() as f64 / 1000.0;
    let flood_tag = format!("{tag}f");
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let delivered_n = Arc::new(AtomicUsize::new(0));
    let puller = {
        let socket = nodes[last].socket();
        let tally = tally.clone();
        let stop = stop.clone();
        let delivered_n = delivered_n.clone();
        let flood_tag = flood_tag.clone();
        thread::spawn(move || -> anyhow::Result<()> {
            let mut c = Client::connect(&socket)?;
            loop {
                let n = {
                    let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
                    let n = pull_round(&mut c, &mut t, &flood_tag, t0)?;
                    delivered_n.store(t.got.len(), Ordering::Relaxed);
                    n
                };
                if n == 0 {
                    if stop.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    thread::sleep(Duration::from_millis(1));
                }
            }
        })
    };
    let pushed = push_each_line(
        ctx,
        &nodes[origin],
        &nodes[last].ip,
        &flood_tag,
        t0 + Duration::from_secs_f64(push_s),
        t0,
        &delivered_n,
    );
    let pushed = match pushed {
        Ok(p) => p,
        Err(e) => {
            stop.store(true, Ordering::Relaxed);
            let _ = puller.join();
            return Err(e.context("onion flood: hermes push --each-line"));
        }
    };
    let accepted = pushed.accepted.len();
    ctx.phase(&format!(
        "onion: flood, {accepted} accepted; waiting for all to arrive at .6"
    ));
    let drain = Instant::now() + Duration::from_secs(if ctx.quick { 60 } else { 120 });
    let all_in = daemons::wait_until(
        drain.min(deadline),
        Duration::from_millis(50),
        "every accepted onion message delivered",
        || {
            let n = delivered_n.load(Ordering::Relaxed);
            ctx.pb
                .set_message(format!("onion: flood draining, {n} / {accepted} delivered"));
            Ok(n >= accepted)
        },
    );
    let t_delivered = t0.elapsed().as_secs_f64();
    let settle = Instant::now() + Duration::from_secs(30);
    let receipts_back = daemons::wait_until(
        settle.min(deadline),
        Duration::from_millis(100),
        "onion flood receipts back",
        || Ok(outbox_empty(&nodes[origin])),
    )
    .is_ok();
    let t_settled = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    puller
        .join()
        .map_err(|_| anyhow::anyhow!("onion puller panicked"))??;
    let cpu1: Vec<f64> = pids.iter().map(|&p| cpu_seconds(p)).collect();
    let relayed1: Vec<u64> = nodes.iter().map(relayed).collect();
    let replays1: u64 = nodes
        .iter()
        .filter_map(|n| n.status())
        .map(|s| s.counters.replays)
        .sum();
    let parts = parts_sent(&nodes[origin]).saturating_sub(parts0);
    let retried = nodes[origin]
        .status()
        .map(|s| s.counters.retried)
        .unwrap_or(0);
    let tally = Arc::try_unwrap(tally)
        .map_err(|_| anyhow::anyhow!("onion tally still shared"))?
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());

    let delivered = pushed
        .accepted
        .iter()
        .filter(|(seq, _)| tally.got.contains_key(seq))
        .count();
    let lost = accepted - delivered;
    let first_accept = pushed.accepted.first().map(|a| a.1).unwrap_or(0.0);
    let arrived_s = |g: &daemons::Got| (g.received_ms as f64 - t0_ms) / 1000.0;
    let last_delivery = tally.got.values().map(arrived_s).fold(0.0, f64::max);
    let span = (last_delivery - first_accept).max(1e-3);
    let rate = delivered as f64 / span;
    if all_in.is_err() {
        problems.push(format!(
            "onion flood: {lost} of {accepted} accepted not delivered within the drain time"
        ));
    }
    if !receipts_back {
        problems
            .push("onion flood: the origin's outbox not empty 30 s after the last delivery".into());
    }
    if let Some(w) = &pushed.warning {
        problems.push(format!("onion flood: hermes push said: {w}"));
    }
    if pushed.refused > 0 {
        problems.push(format!(
            "onion flood: {} pushes refused (first: {})",
            pushed.refused,
            pushed.first_refusal.clone().unwrap_or_default()
        ));
    }

    // Relays: packets peeled and passed on per CPU second.
    let d_relayed: Vec<u64> = relayed0
        .iter()
        .zip(&relayed1)
        .map(|(a, b)| b.saturating_sub(*a))
        .collect();
    let d_cpu: Vec<f64> = cpu0.iter().zip(&cpu1).map(|(a, b)| b - a).collect();
    let relay_pkts: u64 = relays.iter().map(|&i| d_relayed[i]).sum();
    let relay_cpu: f64 = relays.iter().map(|&i| d_cpu[i]).sum();
    let relay_rate = (relay_cpu > 0.0 && relay_pkts > 0).then(|| relay_pkts as f64 / relay_cpu);
    let per_relay: Vec<String> = relays
        .iter()
        .map(|&i| {
            format!(
                "{}: {} packets, {:.2} CPU s",
                nodes[i].ip, d_relayed[i], d_cpu[i]
            )
        })
        .collect();
    let ends_relayed = d_relayed[origin] + d_relayed[last];
    let cpu_total: f64 = d_cpu.iter().sum();
    let cpu_per_msg_us = cpu_total * 1e6 / delivered.max(1) as f64;
    let per_node: Vec<String> = d_cpu
        .iter()
        .map(|c| format!("{:.0}", c * 1e6 / delivered.max(1) as f64))
        .collect();
    let mut load_lat: Vec<u64> = tally.got.values().map(|g| g.latency_us).collect();
    load_lat.sort_unstable();

    let prim = b.onion_primitives_us();
    let ncpu = ctx.ncpu as f64;
    let mut rows = vec![];
    let mut relay_row = Row::new("onion_relay", relay_rate, "pkt/s/core")
        .bound(b.onion.relay_bound_per_core())
        .note(format!(
            "packets the {} relays peeled and passed on (Δ counters.relayed, forward and receipt packets) per second of their own CPU (Δ utime+stime), over the flood until its receipts were back: {relay_pkts} packets, {relay_cpu:.2} CPU s, {:.0} packets/s wall; {}; the ends relayed {ends_relayed}; counters.replays of the 5 grew by {} (the bench replays nothing); bound = 1 core / (peel + 4 KiB Noise hop + replay-tag insert)",
            relays.len(),
            relay_pkts as f64 / t_settled.max(1e-3),
            per_relay.join(", "),
            replays1.saturating_sub(replays0)
        ));
    if relay_rate.is_none() {
        relay_row = relay_row.note(format!(
            "no packet counted as relayed by .3-.5 during the flood ({}); is onion relaying wired?",
            per_relay.join(", ")
        ));
    }
    rows.push(relay_row);
    rows.push(
        Row::new("onion_e2e", (delivered > 0).then_some(rate), "msg/s")
            .bound(ncpu * 1e6 / prim)
            .note(format!(
                "{delivered} of {accepted} accepted delivered at .6 in {span:.1} s (first accept to the last one in .6's inbox, by its stamp), {} duplicates; `hermes push --each-line` for {push_s:.0} s, held at most {MAX_BACKLOG} undelivered; {parts} packets sent by the origin ({:.2} per delivered message; {retried} retries counted there); push to pulled under this load p50 {:.1} ms p99 {:.1} ms; bound = onion_primitives_bound ({ncpu} cores)",
                tally.duplicates,
                parts as f64 / delivered.max(1) as f64,
                pct(&load_lat, 50.0) as f64 / 1000.0,
                pct(&load_lat, 99.0) as f64 / 1000.0,
            )),
    );
    rows.push(
        Row::new("onion_e2e_lost", Some(lost as f64), "msg")
            .target(Goal::AtMost, 0.0)
            .note("accepted (an id printed by `hermes push --each-line`) and never pulled at .6; target: every durability point kept"),
    );
    rows.push(
        Row::new(
            "onion_e2e_duplicates",
            Some((tally.duplicates + tally.reshown) as f64),
            "msg",
        )
        .target(Goal::AtMost, 0.0)
        .note(format!(
            "{} under another id, {} shown again after their Confirm",
            tally.duplicates, tally.reshown
        )),
    );
    rows.push(
        Row::new("onion_cpu_per_msg", Some(cpu_per_msg_us), "µs")
            .bound(prim)
            .note(format!(
                "user+system CPU of the {NODES} daemons from the flood's start to its receipts back, per delivered message; per node .2 (origin) / .3-.5 (relays) / .6 (recipient): {} µs",
                per_node.join(" / ")
            )),
    );
    let mut v: Vec<u64> = lat.iter().map(|x| (x * 1000.0) as u64).collect();
    v.sort_unstable();
    let floor = b.onion_latency_floor_ms();
    rows.push(
        Row::new(
            "onion_latency_p50",
            (!v.is_empty()).then(|| pct(&v, 50.0) as f64 / 1000.0),
            "ms",
        )
        .bound(floor)
        .note(format!(
            "push call to pulled at .6 (100 µs polling) through {ONION_RELAYS} relays, {} messages one at a time, each after the previous one's receipt was back ({late_receipts} receipts not back within {} s; {lat_parts} packets sent by the origin); bound = seal + reply block + wrap + 2 flushes + {ONION_RELAYS} x (peel + tag insert) + the recipient's peel + open + 4 x (4 KiB Noise hop + 4 KiB RTT/2)",
            lat.len(),
            RECEIPT_WAIT.as_secs()
        )),
    );
    rows.push(
        Row::new(
            "onion_latency_p99",
            (!v.is_empty()).then(|| pct(&v, 99.0) as f64 / 1000.0),
            "ms",
        )
        .bound(floor),
    );
    // The origin logs every onion packet it sends (at info, which it runs
    // at); none logged means the daemons did not route in onion mode (e.g.
    // a build without it), and the figures above are not onion figures.
    if lat_parts == 0 && parts == 0 {
        problems.push(format!(
            "onion: the origin logged no {PART_SENT:?} line: the daemons did not route in onion mode; the onion rows are left empty"
        ));
        for r in rows.iter_mut() {
            r.value = None;
            r.ratio = None;
            r.pass = None;
            r.note = Some(format!(
                "not measured: no {PART_SENT:?} logged by the origin (not onion routing); what was seen: {}",
                r.note.take().unwrap_or_default()
            ));
        }
    }
    ctx.phase(&format!(
        "onion: done (set-up {setup_s:.1} s, flood and drain {t_settled:.1} s)"
    ));
    let accepted_s = pushed.accepted.iter().map(|a| a.1).collect();
    let delivered_s = tally.got.values().map(arrived_s).collect();
    Ok(OnionOut {
        rows,
        lat,
        accepted_s,
        delivered_s,
        flood_s: t_delivered,
        problems,
    })
}

/// What `hermes push --each-line` answered.
#[derive(Debug, Default)]
struct EachLine {
    /// (seq = line number, seconds since the flood's start when its id was read)
    accepted: Vec<(u64, f64)>,
    refused: usize,
    first_refusal: Option<String>,
    /// What the client warned of (a path shorter than `routing.hops`), once.
    warning: Option<String>,
}

/// What `hermes push --each-line` answered, from the `written` lines (line
/// n carries seq n), the times its ids were read (one per accepted line, in
/// line order) and its standard error (`hermes: line N: why` per refused
/// line, `hermes: warning: ...` once).
fn each_line_answers(written: u64, ids_at: Vec<f64>, errs: &[String]) -> EachLine {
    let refused_lines: HashSet<u64> = errs
        .iter()
        .filter_map(|l| {
            l.strip_prefix("hermes: line ")?
                .split(':')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    let mut out = EachLine {
        refused: refused_lines.len(),
        first_refusal: errs
            .iter()
            .find(|l| l.starts_with("hermes: line "))
            .cloned(),
        warning: errs
            .iter()
            .find(|l| l.starts_with("hermes: warning: "))
            .cloned(),
        ..EachLine::default()
    };
    let mut ids = ids_at.into_iter();
    for seq in 1..=written {
        if refused_lines.contains(&seq) {
            continue;
        }
        match ids.next() {
            Some(at) => out.accepted.push((seq, at)),
            None => break,
        }
    }
    out
}

/// Runs `hermes push --each-line` against `origin`, writing one text per
/// line (line n carries seq n) until `until`, never more than
/// [`MAX_BACKLOG`] ahead of `delivered`; reads one id per accepted line.
fn push_each_line(
    ctx: &Ctx,
    origin: &Daemon,
    to: &str,
    tag: &str,
    until: Instant,
    t0: Instant,
    delivered: &AtomicUsize,
) -> anyhow::Result<EachLine> {
    let mut child = Command::new(&ctx.hermes)
        .arg("--config")
        .arg(&origin.config)
        .args(["push", "--to", to, "--each-line"])
        .env_remove("HERMES_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {} push", ctx.hermes.display()))?;
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        let _ = child.kill();
        let _ = child.wait();
        bail!("hermes push: no pipes");
    };
    let size = ctx.size;
    let pb = ctx.pb.clone();
    let answered = AtomicUsize::new(0);
    let out = thread::scope(|s| -> anyhow::Result<EachLine> {
        let answered = &answered;
        let writer = s.spawn(move || -> anyhow::Result<u64> {
            let mut w = BufWriter::new(stdin);
            let mut seq = 0u64;
            while Instant::now() < until {
                // Held at the backlog: wait for deliveries to catch up.
                if seq as usize >= delivered.load(Ordering::Relaxed) + MAX_BACKLOG {
                    w.flush()?;
                    thread::sleep(Duration::from_millis(2));
                    continue;
                }
                seq += 1;
                writeln!(w, "{}", daemons::text(tag, seq, size))?;
                if seq % 64 == 0 {
                    w.flush()?;
                    pb.set_message(format!(
                        "onion: flood, {seq} pushed, {} answered, {} delivered",
                        answered.load(Ordering::Relaxed),
                        delivered.load(Ordering::Relaxed)
                    ));
                }
            }
            w.flush()?;
            Ok(seq)
            // stdin dropped here: the client answers what it read, then exits.
        });
        let errs = s.spawn(move || -> Vec<String> {
            BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
                .collect()
        });
        // ids, in line order; refused lines are on stderr as "line N: ...".
        let mut ids_at: Vec<f64> = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            if !line.trim().is_empty() {
                ids_at.push(t0.elapsed().as_secs_f64());
                answered.fetch_add(1, Ordering::Relaxed);
            }
        }
        let written = writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer thread panicked"))??;
        let errs = errs
            .join()
            .map_err(|_| anyhow::anyhow!("stderr thread panicked"))?;
        Ok(each_line_answers(written, ids_at, &errs))
    });
    let status = child.wait()?;
    let out = out?;
    if !status.success() && out.refused == 0 {
        bail!(
            "hermes push --each-line exited with {status} after {} ids",
            out.accepted.len()
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_line_ids_map_to_their_lines_around_refused_ones() {
        let errs = vec![
            "hermes: warning: only 2 relays known".to_string(),
            "hermes: line 2: too long".to_string(),
            "hermes: line 4: too long".to_string(),
        ];
        // 6 lines written, 2 and 4 refused, ids for 1, 3, 5 (6 unanswered).
        let out = each_line_answers(6, vec![0.1, 0.3, 0.5], &errs);
        assert_eq!(out.accepted, vec![(1, 0.1), (3, 0.3), (5, 0.5)]);
        assert_eq!(out.refused, 2);
        assert_eq!(
            out.first_refusal.as_deref(),
            Some("hermes: line 2: too long")
        );
        assert_eq!(
            out.warning.as_deref(),
            Some("hermes: warning: only 2 relays known")
        );
        let clean = each_line_answers(2, vec![0.1, 0.2], &[]);
        assert_eq!(clean.accepted, vec![(1, 0.1), (2, 0.2)]);
        assert!(clean.first_refusal.is_none() && clean.warning.is_none());
    }
}
