//! `churn`: 20 daemons meshed on loopback, two senders pushing to every
//! other node at a steady pace, while 30% of the nodes (6, never a sender)
//! are SIGKILLed once each and restarted. Every accepted message must be
//! pulled exactly once.

use crate::daemons::FLOOD_TOML;
use std::time::{Duration, Instant};

use crate::daemons::{self, stop_all, Daemon, NodeOpts};
use crate::mesh::{self, Churn, Load};
use crate::report::{pct, Goal, Row};
use crate::Ctx;

pub const NODES: usize = 20;
/// SIGKILLed and restarted: 30% of the nodes.
pub const CHURNED: usize = 6;

/// Bootstrap peers of node `i`: the one before, its "parent" and the first.
pub fn bootstrap_of(i: usize) -> Vec<usize> {
    let mut v = Vec::new();
    if i > 0 {
        for b in [i - 1, (i - 1) / 2, 0] {
            if !v.contains(&b) {
                v.push(b);
            }
        }
    }
    v
}

pub struct ChurnOut {
    pub rows: Vec<Row>,
    pub accepted_s: Vec<f64>,
    pub delivered_s: Vec<f64>,
    pub events: Vec<(f64, String)>,
    pub problems: Vec<String>,
}

pub fn run(ctx: &Ctx) -> anyhow::Result<ChurnOut> {
    let ip = |i: usize| format!("{}.{}", ctx.net_churn, i + 2);
    let mut nodes = Vec::new();
    for i in 0..NODES {
        let opts = NodeOpts {
            bootstrap: bootstrap_of(i)
                .iter()
                .map(|&b| format!("{}:{}", ip(b), daemons::PORT))
                .collect(),
            min_neighbours: 3,
            max_neighbours: 8,
            log_level: ctx.log_level.clone(),
            extra_toml: format!("{FLOOD_TOML}{}", ctx.limits_toml()),
        };
        nodes.push(Daemon::new(
            &ctx.hermes,
            &ctx.base,
            &format!("churn{}", i + 2),
            &ip(i),
            &opts,
            None,
        )?);
    }
    let result = run_on(ctx, &mut nodes);
    let bad = stop_all(&mut nodes);
    let mut out = result?;
    if !bad.is_empty() {
        out.problems
            .push(format!("churn: not a clean exit 0 on SIGTERM: {bad:?}"));
    }
    Ok(out)
}

fn run_on(ctx: &Ctx, nodes: &mut [Daemon]) -> anyhow::Result<ChurnOut> {
    ctx.phase(&format!("churn: starting {NODES} daemons"));
    for n in nodes.iter_mut() {
        n.start()?;
    }
    let t = Instant::now();
    daemons::wait_links(nodes, 2, ctx.deadline)?;
    let linked_s = t.elapsed().as_secs_f64();
    let secs = if ctx.quick { 45 } else { 60 };
    ctx.phase(&format!(
        "churn: {secs} s of load, {CHURNED} of {NODES} nodes SIGKILLed and restarted"
    ));
    let tag = format!("c{:06x}", rand::random::<u32>() & 0xff_ffff);
    let load = Load {
        senders: vec![0, 1],
        rate: 20.0,
        duration: Duration::from_secs(secs),
        drain: Duration::from_secs(if ctx.quick { 90 } else { 180 }),
        skip_dest: vec![],
    };
    let plan = Churn {
        nodes: (NODES - CHURNED..NODES).collect(),
        window: (0.1, 0.7),
        down_s: (2.0, 6.0),
    };
    let out = mesh::run(ctx, nodes, &tag, &load, Some(&plan))?;
    let mut lat: Vec<u64> = out.tally.got.values().map(|g| g.daemon_ms).collect();
    lat.sort_unstable();
    let ratio = out.delivered as f64 / out.accepted.max(1) as f64;
    let mut problems = Vec::new();
    if !out.restart_failures.is_empty() {
        problems.push(format!(
            "churn: restarts failed: {:?}",
            out.restart_failures
        ));
    }
    let kills = out
        .events
        .iter()
        .filter(|e| e.1.starts_with("kill"))
        .count();
    let rows = vec![
        Row::new("churn_delivery", Some(ratio), "ratio")
            .target(Goal::AtLeast, 1.0)
            .note(format!(
                "{} of {} accepted pulled ({} refused{}); {secs} s of load{}, 2 senders x 20 msg/s to the 19 others; {kills} SIGKILLs of {CHURNED} nodes, down 2-6 s each; linked in {linked_s:.1} s; {}; daemon-stamp latency p50 {} ms p99 {} ms",
                out.delivered,
                out.accepted,
                out.refused,
                out.first_refusal.as_ref().map(|r| format!(", first: {r}")).unwrap_or_default(),
                if ctx.quick { " (--quick: 45 s instead of 60 s)" } else { "" },
                if out.drained { "all arrived".to_string() } else { format!("NOT all arrived within the drain time ({} s)", load.drain.as_secs()) },
                pct(&lat, 50.0),
                pct(&lat, 99.0),
            )),
        Row::new(
            "churn_duplicates",
            Some((out.tally.duplicates + out.tally.reshown) as f64),
            "msg",
        )
        .target(Goal::AtMost, 0.0)
        .note(format!(
            "{} under another id, {} shown again after their Confirm was answered",
            out.tally.duplicates, out.tally.reshown
        )),
    ];
    Ok(ChurnOut {
        rows,
        accepted_s: out.accepted_s,
        delivered_s: out.delivered_s,
        events: out.events,
        problems,
    })
}
