//! `wan`: 20 daemons, each in its own network namespace made by the bench
//! (`ip netns`, a veth pair per node onto one bridge), every veth end with
//! `tc netem`: node i's two ends each delay by d_i (uniform 10-40 ms) and
//! lose 0.5%, so a packet from i to j waits d_i + d_j (20-80 ms) and is lost
//! with ~1%. Measures the time to converge (every node at its
//! min_neighbours of 3), delivery latency by the daemons' stamps and the
//! delivery ratio of a light load. No target. Needs root, `ip` and `tc`.

use crate::daemons::FLOOD_TOML;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rand::Rng as _;

use crate::churn::bootstrap_of;
use crate::daemons::{self, stop_all, Daemon, NodeOpts};
use crate::mesh::{self, Load};
use crate::report::{pct, Row};
use crate::Ctx;

pub const NODES: usize = 20;
/// min_neighbours of every node: converged = every node has this many links.
const MIN_LINKS: usize = 3;

pub struct WanOut {
    pub rows: Vec<Row>,
    /// Daemon-stamp latencies, ms.
    pub latency_ms: Vec<f64>,
    pub problems: Vec<String>,
}

fn skipped(reason: &str) -> WanOut {
    let rows = [
        "wan_converge",
        "wan_latency_p50",
        "wan_latency_p99",
        "wan_delivery",
    ]
    .iter()
    .map(|n| {
        let unit = if n.contains("latency") {
            "ms"
        } else if *n == "wan_converge" {
            "s"
        } else {
            "ratio"
        };
        let r = Row::new(n, None, unit);
        if *n == "wan_converge" {
            r.note(format!("skipped (all wan rows): {reason}"))
        } else {
            r
        }
    })
    .collect();
    WanOut {
        rows,
        latency_ms: vec![],
        problems: vec![],
    }
}

fn tool_ok(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn sh(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The namespaces, veths and bridge this run made; removed on drop.
struct Net {
    bridge: String,
    namespaces: Vec<String>,
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            // Deleting the namespace deletes its veth end, and so the pair.
            let _ = sh(&["ip", "netns", "delete", ns]);
        }
        let _ = sh(&["ip", "link", "delete", &self.bridge]);
    }
}

pub fn run(ctx: &Ctx) -> WanOut {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skipped("not root (network namespaces need root)");
    }
    if !tool_ok("ip") || !tool_ok("tc") {
        return skipped("`ip` or `tc` missing (Debian: apt-get install iproute2)");
    }
    match run_root(ctx) {
        Ok(o) => o,
        Err(e) if format!("{e:#}").contains("qdisc kind is unknown") => skipped(
            "this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM is not set; `tc qdisc add ... netem` says \"Specified qdisc kind is unknown\"); `--wan-without-netem` runs the namespaces without delay or loss, to check the machinery",
        ),
        Err(e) => {
            let mut o = skipped(&format!("failed: {e:#}"));
            o.problems.push(format!("wan: {e:#}"));
            o
        }
    }
}

fn run_root(ctx: &Ctx) -> anyhow::Result<WanOut> {
    ctx.phase(&format!(
        "wan: {NODES} network namespaces{}",
        if ctx.wan_without_netem {
            " (without netem)"
        } else {
            " with netem"
        }
    ));
    let tag = format!("{:04x}", rand::random::<u16>());
    let mut net = Net {
        bridge: format!("hb{tag}br"),
        namespaces: vec![],
    };
    sh(&["ip", "link", "add", &net.bridge, "type", "bridge"])?;
    sh(&["ip", "link", "set", &net.bridge, "up"])?;
    let mut rng = rand::thread_rng();
    let mut delays = Vec::new();
    let ip = |i: usize| format!("{}.{}", ctx.net_wan, i + 2);
    for i in 0..NODES {
        let ns = format!("hb{tag}n{i}");
        let a = format!("hb{tag}a{i}");
        let b = format!("hb{tag}b{i}");
        sh(&["ip", "netns", "add", &ns])?;
        net.namespaces.push(ns.clone());
        sh(&["ip", "link", "add", &a, "type", "veth", "peer", "name", &b])?;
        sh(&["ip", "link", "set", &b, "netns", &ns])?;
        sh(&["ip", "link", "set", &a, "master", &net.bridge])?;
        sh(&["ip", "link", "set", &a, "up"])?;
        let addr = format!("{}/24", ip(i));
        sh(&["ip", "-n", &ns, "addr", "add", &addr, "dev", &b])?;
        sh(&["ip", "-n", &ns, "link", "set", &b, "up"])?;
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        let d: u32 = if ctx.wan_without_netem {
            0
        } else {
            rng.gen_range(10..=40)
        };
        delays.push(d);
        let delay = format!("{d}ms");
        if !ctx.wan_without_netem {
            sh(&[
                "tc", "-n", &ns, "qdisc", "add", "dev", &b, "root", "netem", "delay", &delay,
                "loss", "0.5%",
            ])?;
            sh(&[
                "tc", "qdisc", "add", "dev", &a, "root", "netem", "delay", &delay, "loss", "0.5%",
            ])?;
        }
    }
    let mut nodes = Vec::new();
    for i in 0..NODES {
        let opts = NodeOpts {
            bootstrap: bootstrap_of(i)
                .iter()
                .map(|&b| format!("{}:{}", ip(b), daemons::PORT))
                .collect(),
            min_neighbours: MIN_LINKS,
            max_neighbours: 8,
            log_level: ctx.log_level.clone(),
            extra_toml: format!("{FLOOD_TOML}{}", ctx.limits_toml()),
        };
        nodes.push(Daemon::new(
            &ctx.hermes,
            &ctx.base,
            &format!("wan{}", i + 2),
            &ip(i),
            &opts,
            Some(net.namespaces[i].clone()),
        )?);
    }
    let result = run_on(ctx, &mut nodes, &delays);
    let bad = stop_all(&mut nodes);
    drop(net);
    let mut out = result?;
    if !bad.is_empty() {
        out.problems
            .push(format!("wan: not a clean exit 0 on SIGTERM: {bad:?}"));
    }
    Ok(out)
}

fn run_on(ctx: &Ctx, nodes: &mut [Daemon], delays: &[u32]) -> anyhow::Result<WanOut> {
    ctx.phase(&format!(
        "wan: starting {NODES} daemons, waiting for {MIN_LINKS} links each"
    ));
    let t = Instant::now();
    for n in nodes.iter_mut() {
        n.start()?;
    }
    let limit = Instant::now() + Duration::from_secs(if ctx.quick { 60 } else { 120 });
    let converged = daemons::wait_links(nodes, MIN_LINKS, limit.min(ctx.deadline));
    let converge_s = t.elapsed().as_secs_f64();
    let linked: Vec<usize> = nodes
        .iter()
        .map(|n| n.status().map(|s| s.neighbours.len()).unwrap_or(0))
        .collect();
    let secs = if ctx.quick { 20 } else { 40 };
    ctx.phase(&format!("wan: {secs} s of load, 2 senders x 5 msg/s"));
    let tag = format!("w{:06x}", rand::random::<u32>() & 0xff_ffff);
    let load = Load {
        senders: vec![0, 1],
        rate: 5.0,
        duration: Duration::from_secs(secs),
        drain: Duration::from_secs(if ctx.quick { 60 } else { 120 }),
        skip_dest: vec![],
    };
    let out = mesh::run(ctx, nodes, &tag, &load, None)?;
    let mut lat: Vec<u64> = out.tally.got.values().map(|g| g.daemon_ms).collect();
    lat.sort_unstable();
    let ratio = out.delivered as f64 / out.accepted.max(1) as f64;
    let conv_note = match &converged {
        Ok(()) => format!(
            "every node had {MIN_LINKS} links after {converge_s:.1} s (from the first start)"
        ),
        Err(_) => format!("NOT converged within {converge_s:.0} s: links per node {linked:?}"),
    };
    let netem = if ctx.wan_without_netem {
        "WITHOUT netem (--wan-without-netem): no delay, no loss".to_string()
    } else {
        format!("one-way delays d_i+d_j with d_i in 10-40 ms (this run: {delays:?}), ~1% loss")
    };
    let rows = vec![
        Row::new("wan_converge", converged.is_ok().then_some(converge_s), "s")
            .note(format!("{conv_note}; {netem}")),
        Row::new("wan_latency_p50", Some(pct(&lat, 50.0) as f64), "ms")
            .note("daemon stamps (received - sent, 1 ms steps), every delivered message"),
        Row::new("wan_latency_p99", Some(pct(&lat, 99.0) as f64), "ms"),
        Row::new("wan_delivery", Some(ratio), "ratio").note(format!(
            "{} of {} accepted pulled ({} refused), {} duplicates, {}",
            out.delivered,
            out.accepted,
            out.refused,
            out.tally.duplicates + out.tally.reshown,
            if out.drained {
                "all arrived".to_string()
            } else {
                format!("not all within {} s of the last push", load.drain.as_secs())
            }
        )),
    ];
    Ok(WanOut {
        rows,
        latency_ms: lat.iter().map(|&x| x as f64).collect(),
        problems: vec![],
    })
}
