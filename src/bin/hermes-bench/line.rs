//! The 5-node line: unloaded latency (1 and 2 hops), idle memory, then the
//! flood (the sender pushing as fast as its daemon accepts over one
//! pipelined client connection, the far end pulling): `flood`, `accept`,
//! `cpu_per_msg`, `rss`.

use crate::daemons::FLOOD_TOML;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use hermes::client::Client;
use hermes::wire::client::{Request, Response};

use crate::bounds::Bounds;
use crate::daemons::{
    self, cpu_seconds, mem_mib, now_us, pull, pull_round, stop_all, Daemon, NodeOpts, Tally,
};
use crate::report::{pct, Goal, Row};
use crate::Ctx;

pub const NODES: usize = 5;
/// Requests written ahead of their answers on the pushing connection.
const WINDOW: usize = 32;
/// Budgets raised for the load phases, so that the link budgets (a policy
/// against hostile peers) do not cap what is measured; `--default-limits`
/// keeps the daemon's defaults.
pub const BENCH_LIMITS: &str = "[limits]\npackets_per_sec = 1000000\npacket_burst = 10000000\nbytes_per_sec = 2147483647\nbyte_burst = 4294967295\nnew_entries_per_min = 100000000\n";

pub struct LineOut {
    pub rows: Vec<Row>,
    /// Client-side latencies, ms: 1 hop, 2 hops.
    pub lat: [Vec<f64>; 2],
    /// Seconds since the flood's start: accepted, delivered.
    pub accepted_s: Vec<f64>,
    pub delivered_s: Vec<f64>,
    pub flood_s: f64,
    pub problems: Vec<String>,
}

pub fn run(ctx: &Ctx, b: &Bounds) -> anyhow::Result<LineOut> {
    let mut nodes: Vec<Daemon> = Vec::new();
    for i in 0..NODES {
        let ip = format!("{}.{}", ctx.net_line, i + 2);
        let bootstrap = if i == 0 {
            vec![]
        } else {
            vec![format!("{}.{}:{}", ctx.net_line, i + 1, daemons::PORT)]
        };
        let opts = NodeOpts {
            bootstrap,
            min_neighbours: 1,
            max_neighbours: 8,
            log_level: ctx.log_level.clone(),
            extra_toml: format!("{FLOOD_TOML}{}", ctx.limits_toml()),
        };
        nodes.push(Daemon::new(
            &ctx.hermes,
            &ctx.base,
            &format!("line{}", i + 2),
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
            .push(format!("line: not a clean exit 0 on SIGTERM: {bad:?}"));
    }
    Ok(out)
}

fn run_on(ctx: &Ctx, b: &Bounds, nodes: &mut [Daemon]) -> anyhow::Result<LineOut> {
    let deadline = ctx.deadline;
    ctx.phase("line: 5 daemons starting, waiting for the links");
    // Exact line: each node linked to the one before and after.
    daemons::wait_until(
        deadline,
        Duration::from_millis(50),
        "the 5-node line is linked",
        || {
            for (i, n) in nodes.iter().enumerate() {
                let Some(s) = n.status() else {
                    return Ok(false);
                };
                let have: HashSet<String> = s.neighbours.iter().map(|x| x.listen.clone()).collect();
                let mut want = vec![];
                if i > 0 {
                    want.push(nodes[i - 1].listen());
                }
                if i + 1 < nodes.len() {
                    want.push(nodes[i + 1].listen());
                }
                if !want.iter().all(|w| have.contains(w)) {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )?;
    let tag = format!("{:08x}", rand::random::<u32>());
    let mut problems = Vec::new();

    // Warm-up: one message end to end.
    let mut pusher = Client::connect(&nodes[0].socket())?;
    let mut far = Client::connect(&nodes[NODES - 1].socket())?;
    let warm = format!("warm-up {}", now_us());
    daemons::wait_until(
        deadline,
        Duration::from_millis(50),
        "warm-up push accepted",
        || {
            Ok(matches!(
                pusher.call(&Request::Push {
                    to: nodes[NODES - 1].ip.clone(),
                    text: warm.clone(),
                })?,
                Response::Pushed { .. } | Response::PushedShort { .. }
            ))
        },
    )?;
    daemons::wait_until(
        deadline,
        Duration::from_millis(5),
        "warm-up delivered",
        || {
            let m = pull(&mut far)?;
            daemons::confirm(&mut far, &m)?;
            Ok(m.iter().any(|m| m.text == warm))
        },
    )?;
    // Let the receipt travel back and the links go quiet.
    thread::sleep(Duration::from_millis(300));
    let rss_idle = nodes
        .iter()
        .map(|n| mem_mib(n.pid().unwrap_or(0)).1)
        .fold(0.0, f64::max);

    // ---- unloaded latency, 1 hop (.2 -> .3) and 2 hops (.2 -> .4) ----
    let k = if ctx.quick { 300 } else { 500 };
    let mut lat: [Vec<f64>; 2] = [vec![], vec![]];
    let mut seq = 0u64;
    for (hops, lat_h) in lat.iter_mut().enumerate() {
        let hops = hops + 1;
        ctx.phase(&format!(
            "line: unloaded latency, {hops} hop(s), {k} messages"
        ));
        let target = &nodes[hops];
        let mut puller = Client::connect(&target.socket())?;
        let mut tally = Tally::default();
        let t0 = Instant::now();
        for _ in 0..k {
            seq += 1;
            let t = Instant::now();
            match pusher.call(&Request::Push {
                to: target.ip.clone(),
                text: daemons::text(&tag, seq, ctx.size),
            })? {
                Response::Pushed { .. } | Response::PushedShort { .. } => {}
                other => bail!("latency push refused: {other:?}"),
            }
            daemons::wait_until(
                deadline,
                Duration::from_micros(100),
                "latency message delivered",
                || {
                    pull_round(&mut puller, &mut tally, &tag, t0)?;
                    Ok(tally.got.contains_key(&seq))
                },
            )?;
            lat_h.push(t.elapsed().as_secs_f64() * 1000.0);
            // Unloaded: let the receipt travel back before the next one.
            thread::sleep(Duration::from_millis(10));
        }
        if tally.duplicates + tally.unexpected > 0 {
            problems.push(format!(
                "latency {hops} hop(s): {} duplicates, {} unexpected",
                tally.duplicates, tally.unexpected
            ));
        }
    }
    drop(far);

    // ---- the flood ----
    let push_s = if ctx.quick { 30.0 } else { 60.0 };
    ctx.phase(&format!(
        "line: flood .2 -> .6 for {push_s:.0} s (1 KiB, one pipelined connection)"
    ));
    let pids: Vec<u32> = nodes.iter().map(|n| n.pid().unwrap_or(0)).collect();
    let cpu0: Vec<f64> = pids.iter().map(|&p| cpu_seconds(p)).collect();
    let t0 = Instant::now();
    let t0_ms = now_us() as f64 / 1000.0;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let delivered_n = Arc::new(AtomicUsize::new(0));
    let flood_tag = format!("{tag}f");
    let puller = {
        let socket = nodes[NODES - 1].socket();
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
    let dests = vec![nodes[NODES - 1].ip.clone()];
    let mut next_seq = 0u64;
    let progress = ctx.pb.clone();
    let pushed = daemons::push_pipelined(
        &nodes[0].socket(),
        &dests,
        &flood_tag,
        ctx.size,
        WINDOW,
        t0 + Duration::from_secs_f64(push_s),
        t0,
        || {
            next_seq += 1;
            if next_seq % 256 == 0 {
                progress.set_message(format!(
                    "line: flood, {next_seq} pushed, {} delivered",
                    delivered_n.load(Ordering::Relaxed)
                ));
            }
            Some((0, next_seq))
        },
        || {},
    )
    .context("pushing the flood")?;
    let accepted = pushed.accepted.len();
    ctx.phase(&format!(
        "line: flood, {accepted} accepted; waiting for all to arrive at .6"
    ));
    let drain = Instant::now() + Duration::from_secs(if ctx.quick { 120 } else { 300 });
    let all_in = daemons::wait_until(
        drain.min(deadline),
        Duration::from_millis(50),
        "every accepted flood message delivered",
        || {
            let n = delivered_n.load(Ordering::Relaxed);
            ctx.pb
                .set_message(format!("line: flood draining, {n} / {accepted} delivered"));
            Ok(n >= accepted)
        },
    );
    let t_delivered = t0.elapsed().as_secs_f64();
    // Receipts back at the sender (its outbox empty), for the CPU figure.
    let settle = Instant::now() + Duration::from_secs(30);
    let _ = daemons::wait_until(
        settle.min(deadline),
        Duration::from_millis(100),
        "flood receipts back",
        || {
            Ok(nodes[0]
                .status()
                .is_some_and(|s| s.outbox.queued + s.outbox.in_flight == 0))
        },
    );
    stop.store(true, Ordering::Relaxed);
    puller
        .join()
        .map_err(|_| anyhow::anyhow!("puller panicked"))??;
    let cpu1: Vec<f64> = pids.iter().map(|&p| cpu_seconds(p)).collect();
    let hwm: Vec<f64> = pids.iter().map(|&p| mem_mib(p).0).collect();
    let rss_flood = hwm.iter().copied().fold(0.0, f64::max);
    let tally = Arc::try_unwrap(tally)
        .map_err(|_| anyhow::anyhow!("tally still shared"))?
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());

    let accepted_seqs: HashSet<u64> = pushed.accepted.iter().map(|a| a.0).collect();
    let delivered = tally
        .got
        .keys()
        .filter(|s| accepted_seqs.contains(s))
        .count();
    let lost = accepted - delivered;
    let first_accept = pushed.accepted.first().map(|a| a.2).unwrap_or(0.0);
    // When each message reached the far end's inbox: the recipient daemon's
    // own stamp (1 ms steps), so that the pulling client's pace does not count.
    let arrived_s = |g: &daemons::Got| (g.received_ms as f64 - t0_ms) / 1000.0;
    let last_delivery = tally.got.values().map(arrived_s).fold(0.0, f64::max);
    let span = (last_delivery - first_accept).max(1e-3);
    let flood_rate = delivered as f64 / span;
    let cpu_total: f64 = cpu0.iter().zip(&cpu1).map(|(a, b)| b - a).sum();
    let cpu_per_msg_us = cpu_total * 1e6 / delivered.max(1) as f64;
    let per_node: Vec<String> = cpu0
        .iter()
        .zip(&cpu1)
        .map(|(a, b)| format!("{:.0}", (b - a) * 1e6 / delivered.max(1) as f64))
        .collect();
    let mut load_lat: Vec<u64> = tally.got.values().map(|g| g.latency_us).collect();
    load_lat.sort_unstable();
    let accept_rate = accepted as f64 / pushed.elapsed_s.max(1e-3);
    let mut call = pushed.call_us.clone();
    call.sort_unstable();
    if all_in.is_err() {
        problems.push(format!(
            "flood: {lost} of {accepted} accepted not delivered within the drain time"
        ));
    }
    if pushed.refused > 0 {
        problems.push(format!(
            "flood: {} pushes refused (first: {})",
            pushed.refused,
            pushed.first_refusal.clone().unwrap_or_default()
        ));
    }
    // Did the line stay a line?
    let mut shape = String::new();
    for (i, n) in nodes.iter().enumerate() {
        if let Some(s) = n.status() {
            if s.neighbours.len() > 2 || (i == 0 || i == NODES - 1) && s.neighbours.len() > 1 {
                shape.push_str(&format!(" {} has {} links;", n.name, s.neighbours.len()));
            }
        }
    }
    // ---- accept: the sender alone (the others stopped), pushing to .6 ----
    let accept_s = if ctx.quick { 10.0 } else { 20.0 };
    ctx.phase(&format!(
        "line: accept, .2 alone (.3-.6 stopped) for {accept_s:.0} s"
    ));
    for n in nodes[1..].iter_mut() {
        if !n.stop() {
            problems.push(format!("{}: not a clean exit 0 on SIGTERM", n.name));
        }
    }
    let t1 = Instant::now();
    let mut aseq = 0u64;
    let alone = daemons::push_pipelined(
        &nodes[0].socket(),
        &dests,
        &format!("{tag}a"),
        ctx.size,
        WINDOW,
        t1 + Duration::from_secs_f64(accept_s),
        t1,
        || {
            aseq += 1;
            Some((0, aseq))
        },
        || {},
    )
    .context("pushing for the accept row")?;
    let alone_rate = alone.accepted.len() as f64 / alone.elapsed_s.max(1e-3);
    let mut alone_call = alone.call_us.clone();
    alone_call.sort_unstable();
    if alone.refused > 0 {
        problems.push(format!(
            "accept: {} pushes refused (first: {})",
            alone.refused,
            alone.first_refusal.clone().unwrap_or_default()
        ));
    }

    let hops = NODES - 1;
    let prim = b.primitives_us(hops);
    let ncpu = ctx.ncpu as f64;
    let flood_bound = ncpu * 1e6 / prim;
    let mut rows = vec![];
    rows.push(
        Row::new("flood", Some(flood_rate), "msg/s")
            .bound(flood_bound)
            .target(Goal::RatioAtLeast, 0.75)
            .and_also(lost == 0)
            .note(format!(
                "{delivered} of {accepted} accepted delivered at .6 in {span:.1} s (first accept to the last one in .6's inbox, by its stamp), {} duplicates; pushed for {push_s:.0} s; push to pulled under this load p50 {:.1} ms p99 {:.1} ms; bound = {ncpu} cores / primitives_per_msg{}",
                tally.duplicates,
                pct(&load_lat, 50.0) as f64 / 1000.0,
                pct(&load_lat, 99.0) as f64 / 1000.0,
                if shape.is_empty() { String::new() } else { format!("; NOT a line at the end:{shape}") }
            )),
    );
    rows.push(
        Row::new("flood_lost", Some(lost as f64), "msg")
            .target(Goal::AtMost, 0.0)
            .note("accepted (answered Pushed) and never pulled at .6"),
    );
    rows.push(
        Row::new(
            "flood_duplicates",
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
        Row::new("cpu_per_msg", Some(cpu_per_msg_us), "µs")
            .bound(prim)
            .target(Goal::RatioAtMost, 1.5)
            .note(format!(
                "user+system CPU of the 5 daemons from the flood's start to its receipts back, per delivered message; per node .2-.6: {} µs",
                per_node.join(" / ")
            )),
    );
    rows.push(
        Row::new("accept", Some(alone_rate), "msg/s")
            .bound(1e6 / b.sled_group_us)
            .target(Goal::RatioAtLeast, 0.5)
            .note(format!(
                "{} pushes to .6 answered Pushed in {:.1} s by .2 alone (its peers stopped, so nothing is sent), one connection, {WINDOW} requests in flight, push call p50 {} µs / p99 {} µs; during the flood .2 accepted {:.0} msg/s (p50 {} µs); bound = sled group commit of {} (1 KiB)",
                alone.accepted.len(),
                alone.elapsed_s,
                pct(&alone_call, 50.0),
                pct(&alone_call, 99.0),
                accept_rate,
                pct(&call, 50.0),
                crate::bounds::GROUP
            )),
    );
    for (h, l) in lat.iter().enumerate() {
        let mut v: Vec<u64> = l.iter().map(|x| (x * 1000.0) as u64).collect();
        v.sort_unstable();
        let floor = b.latency_floor_ms(h + 1);
        let p50 = pct(&v, 50.0) as f64 / 1000.0;
        let p99 = pct(&v, 99.0) as f64 / 1000.0;
        let mut r50 = Row::new(&format!("latency_{}hop_p50", h + 1), Some(p50), "ms").bound(floor);
        if h == 0 {
            r50 = r50.target(Goal::AtMost, 1.0).note(format!(
                "push call to pulled (100 µs polling), {} messages one at a time; bound = seal + open + 2 flushes + per hop (AEAD + RTT/2)",
                l.len()
            ));
        }
        rows.push(r50);
        rows.push(Row::new(&format!("latency_{}hop_p99", h + 1), Some(p99), "ms").bound(floor));
    }
    rows.push(
        Row::new("rss_idle", Some(rss_idle), "MiB")
            .target(Goal::AtMost, 16.0)
            .note("largest VmRSS of the 5 daemons, linked, after one message"),
    );
    rows.push(
        Row::new("rss_flood", Some(rss_flood), "MiB")
            .target(Goal::AtMost, 64.0)
            .note(format!(
                "largest VmHWM (peak RSS) of the 5 daemons after the flood; .2-.6: {} MiB",
                hwm.iter()
                    .map(|m| format!("{m:.0}"))
                    .collect::<Vec<_>>()
                    .join(" / ")
            )),
    );
    let accepted_s = pushed.accepted.iter().map(|a| a.2).collect();
    let delivered_s = tally.got.values().map(arrived_s).collect();
    Ok(LineOut {
        rows,
        lat,
        accepted_s,
        delivered_s,
        flood_s: t_delivered,
        problems,
    })
}
