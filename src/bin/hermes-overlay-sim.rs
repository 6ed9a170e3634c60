//! `hermes-overlay-sim`: runs the overlay's membership code for thousands of
//! nodes in one process over an in-memory network (see
//! `hermes::overlay::sim`), and prints degree distribution, connectivity,
//! time to converge, membership bytes per node per minute, and how the
//! survivors reconnect after a fraction of the nodes is removed at once.
//! With `--partition-secs N`, the network is first split in two for N
//! virtual seconds, then healed, and the report says whether and when the
//! two groups became one connected graph again.
//!
//! The real session constants (dial timeout, keepalive interval and timeout)
//! come from `hermes::overlay::timing`, which the daemon's sessions use too,
//! so the simulation times out and detects dead peers exactly as the daemon
//! would.
//!
//! Usage: `cargo run --release --bin hermes-overlay-sim -- --nodes 10000`
//! (`--json` for one JSON object). Exit code 0 if the network converged,
//! reunited after the split (if any) and recovered, 4 if it did not, 1 on bad
//! arguments.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hermes::overlay::sim::{
    Bootstrap, GraphSummary, PartitionReport, Removal, SessionTimings, Sim, SimConfig, SimReport,
    TracePoint, Traffic, DEFAULT_HEAL_LIMIT, DEFAULT_PARTITION_SHARE,
};

/// Exit code when the network did not converge or did not recover in time.
const EXIT_UNHEALTHY: u8 = 4;
/// The readable report shows the recovery trace at this step, in seconds.
const TRACE_EVERY_SECS: u64 = 5;
/// The split and heal traces are longer (up to the heal limit, 30 minutes by
/// default): they are shown at this coarser step, in seconds.
const SPLIT_TRACE_EVERY_SECS: u64 = 30;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum BootstrapArg {
    /// Every node bootstraps from node 0.
    First,
    /// Each node bootstraps from one random earlier node.
    Random,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum CaseArg {
    /// Join, converge, steady window, optional split, removal, recovery.
    Standard,
    /// A full network (use --min = --max) then a stream of newcomers: time
    /// to one component, newcomer join times. Prints JSON.
    Full,
    /// An attacker holding --attacker-share of the nodes gossips only its
    /// own records: honest entries in honest books, honest neighbours kept.
    /// Prints JSON.
    Attack,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum RemovalArg {
    /// Hosts vanish: peers notice by keepalive timeout.
    Crash,
    /// Processes are killed: peers see the connections close.
    Kill,
    /// Nodes leave gracefully.
    Leave,
}

#[derive(Parser, Debug)]
#[command(
    name = "hermes-overlay-sim",
    about = "Simulates the overlay membership of many nodes over an in-memory network"
)]
struct Args {
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    #[arg(long, default_value_t = 3)]
    min: usize,
    #[arg(long, default_value_t = 6)]
    max: usize,
    /// Address-book capacity of every node (default: the shipped one).
    #[arg(long)]
    book_capacity: Option<usize>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// One-way latency of every message, ms.
    #[arg(long, default_value_t = 20)]
    latency_ms: u64,
    /// Uniform extra latency of up to this many ms.
    #[arg(long, default_value_t = 5)]
    jitter_ms: u64,
    /// Nodes joining per virtual second.
    #[arg(long, default_value_t = 50.0)]
    join_rate: f64,
    #[arg(long, value_enum, default_value_t = BootstrapArg::First)]
    bootstrap: BootstrapArg,
    /// Virtual seconds after the last join to wait for convergence.
    #[arg(long, default_value_t = 600)]
    converge_limit_secs: u64,
    /// Steady window after convergence (traffic is measured over it), virtual seconds.
    #[arg(long, default_value_t = 300)]
    steady_secs: u64,
    /// Fraction of nodes removed at once after the steady window.
    #[arg(long, default_value_t = 0.3)]
    remove_fraction: f64,
    #[arg(long, value_enum, default_value_t = RemovalArg::Crash)]
    removal: RemovalArg,
    /// Virtual seconds the survivors get to reconnect.
    #[arg(long, default_value_t = 600)]
    recover_limit_secs: u64,
    /// Virtual seconds run after recovery before the final figures.
    #[arg(long, default_value_t = 120)]
    after_secs: u64,
    /// Split the live network in two for this many virtual seconds after the
    /// steady window, then heal it, before the removal (0: no split).
    #[arg(long, default_value_t = 0)]
    partition_secs: u64,
    /// Fraction of the live nodes in the second group of the split, chosen
    /// at random (seeded).
    #[arg(long, default_value_t = DEFAULT_PARTITION_SHARE)]
    partition_share: f64,
    /// Virtual seconds after the heal the groups get to reunite (one
    /// component, every node at min or more).
    #[arg(long, default_value_t = DEFAULT_HEAL_LIMIT.as_secs())]
    heal_secs: u64,
    /// Print one JSON object instead of the readable report.
    #[arg(long)]
    json: bool,
    /// Which scenario to run.
    #[arg(long, value_enum, default_value_t = CaseArg::Standard)]
    case: CaseArg,
    /// `full`: newcomers joining after the steady window.
    #[arg(long, default_value_t = 100)]
    newcomers: usize,
    /// `full`: newcomers per virtual second.
    #[arg(long, default_value_t = 1.0)]
    newcomer_rate: f64,
    /// `full`: the newcomers' min_neighbours (their max is --max).
    #[arg(long, default_value_t = 2)]
    newcomer_min: usize,
    /// `full`: virtual seconds after the last newcomer to reach its min.
    #[arg(long, default_value_t = 120)]
    newcomer_limit_secs: u64,
    /// `attack`: share of the nodes the attacker holds.
    #[arg(long, default_value_t = 0.1)]
    attacker_share: f64,
    /// `attack`: virtual seconds run after the last join.
    #[arg(long, default_value_t = 1800)]
    attack_secs: u64,
}

/// Prints a case's JSON report (pretty); exit 0 if it passed, 4 if not.
fn print_case(
    r: Result<(bool, serde_json::Result<serde_json::Value>), hermes::overlay::sim::SimError>,
) -> ExitCode {
    match r {
        Ok((ok, Ok(mut v))) => {
            if let Some(o) = v.as_object_mut() {
                o.insert("peak_rss_kib".into(), peak_rss_kib().into());
            }
            match serde_json::to_string_pretty(&v) {
                Ok(text) => println!("{text}"),
                Err(e) => {
                    eprintln!("hermes-overlay-sim: cannot encode the report: {e}");
                    return ExitCode::from(1);
                }
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_UNHEALTHY)
            }
        }
        Ok((_, Err(e))) => {
            eprintln!("hermes-overlay-sim: cannot encode the report: {e}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("hermes-overlay-sim: {e}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let session = SessionTimings::REAL;
    let mut cfg = SimConfig::new(args.nodes, args.min, args.max, session);
    if let Some(c) = args.book_capacity {
        cfg.book_capacity = c;
    }
    cfg.seed = args.seed;
    cfg.latency = Duration::from_millis(args.latency_ms);
    cfg.jitter = Duration::from_millis(args.jitter_ms);
    cfg.join_rate = args.join_rate;
    cfg.bootstrap = match args.bootstrap {
        BootstrapArg::First => Bootstrap::First,
        BootstrapArg::Random => Bootstrap::RandomEarlier,
    };
    cfg.converge_limit = Duration::from_secs(args.converge_limit_secs);
    cfg.steady = Duration::from_secs(args.steady_secs);
    cfg.remove_fraction = args.remove_fraction;
    cfg.removal = match args.removal {
        RemovalArg::Crash => Removal::Crash,
        RemovalArg::Kill => Removal::Kill,
        RemovalArg::Leave => Removal::Leave,
    };
    cfg.recover_limit = Duration::from_secs(args.recover_limit_secs);
    cfg.after = Duration::from_secs(args.after_secs);
    cfg.partition = Duration::from_secs(args.partition_secs);
    cfg.partition_share = args.partition_share;
    cfg.heal_limit = Duration::from_secs(args.heal_secs);

    match args.case {
        CaseArg::Standard => {}
        CaseArg::Full => {
            let r = Sim::run_full_network(
                cfg,
                args.newcomers,
                args.newcomer_rate,
                args.newcomer_min,
                Duration::from_secs(args.newcomer_limit_secs),
            );
            return print_case(r.map(|r| {
                let ok = r.one_component_after_last_join_secs.is_some()
                    && r.newcomers.joined == r.newcomers.count;
                (ok, serde_json::to_value(&r))
            }));
        }
        CaseArg::Attack => {
            let r = Sim::run_attack(
                cfg,
                args.attacker_share,
                Duration::from_secs(args.attack_secs),
            );
            return print_case(r.map(|r| (r.eclipsed == 0, serde_json::to_value(&r))));
        }
    }
    let wall = Instant::now();
    let report = match Sim::run_scenario(cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hermes-overlay-sim: {e}");
            return ExitCode::from(1);
        }
    };
    let wall_secs = wall.elapsed().as_secs_f64();
    let peak_rss_kib = peak_rss_kib();
    if args.json {
        let mut v = match serde_json::to_value(&report) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("hermes-overlay-sim: cannot encode the report: {e}");
                return ExitCode::from(1);
            }
        };
        if let Some(o) = v.as_object_mut() {
            o.insert("wall_secs".into(), wall_secs.into());
            o.insert("peak_rss_kib".into(), peak_rss_kib.into());
        }
        println!("{v}");
    } else {
        print_report(&report, wall_secs, peak_rss_kib);
    }
    let reunited = report
        .partition
        .as_ref()
        .is_none_or(|p| p.reunited_secs.is_some());
    let healthy = report.converged_secs.is_some() && reunited && report.recovered_secs.is_some();
    if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_UNHEALTHY)
    }
}

/// Peak resident set size of this process (VmHWM), KiB; None off Linux.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn secs(v: Option<f64>) -> String {
    v.map_or_else(|| "NOT REACHED".to_string(), |s| format!("{s:.0} s"))
}

fn graph_line(label: &str, g: &GraphSummary) {
    let hist: Vec<String> = g
        .histogram
        .iter()
        .map(|(d, n)| format!("{d}:{n}"))
        .collect();
    println!(
        "  {label:<16} t={:>6.0}s alive {:>6}  degree min/p50/max {}/{}/{} mean {:.2}  in bounds {:.1}%  components {} (largest {})",
        g.at_secs,
        g.alive,
        g.degree_min,
        g.degree_p50,
        g.degree_max,
        g.degree_mean,
        g.within_bounds * 100.0,
        g.components,
        g.largest_component,
    );
    println!(
        "  {:<16} histogram [{}]  membership max {}  book min/p50/max {}/{}/{}",
        "",
        hist.join(" "),
        g.membership_max,
        g.book_min,
        g.book_p50,
        g.book_max
    );
}

fn traffic_line(label: &str, t: &Traffic) {
    println!(
        "  {label:<16} {:>5.0}s, {} nodes, per node per minute: membership {:.0} B, set-up {:.0} B, keepalive {:.0} B; overlay (membership+set-up) {:.0} B (p50 node {:.0}, max node {:.0}{}); total {:.0} B; {:.1} frames; {:.1} book writes",
        t.window_secs,
        t.nodes,
        t.membership,
        t.setup,
        t.keepalive,
        t.overlay,
        t.overlay_p50_node,
        t.overlay_max_node,
        t.busiest_node.map_or(String::new(), |n| format!(" = node {n}")),
        t.total,
        t.frames,
        t.book_writes,
    );
}

/// One point every [`TRACE_EVERY_SECS`]: seconds, nodes below min, components.
fn trace_line(label: &str, trace: &[TracePoint]) {
    let points: Vec<String> = trace
        .iter()
        .filter(|p| p.secs as u64 % TRACE_EVERY_SECS == 0)
        .map(|p| format!("{:.0}s:{}/{}", p.secs, p.below_min, p.components))
        .collect();
    println!(
        "  {label:<16} (t: nodes below min / components) {}",
        points.join(" ")
    );
}

/// Like [`trace_line`], every [`SPLIT_TRACE_EVERY_SECS`], with the last point
/// too (the moment of reunion, or the limit), the largest component's size
/// while there are several, and runs of equal points shown once as
/// `first-last` (a split that does not heal is one long run).
fn split_trace_line(label: &str, trace: &[TracePoint]) {
    let last = trace.len().saturating_sub(1);
    let key = |p: &TracePoint| {
        let largest = (p.components > 1).then_some(p.largest_component);
        (p.below_min, p.components, largest)
    };
    let mut runs: Vec<(&TracePoint, &TracePoint)> = Vec::new();
    for (i, p) in trace.iter().enumerate() {
        if p.secs as u64 % SPLIT_TRACE_EVERY_SECS != 0 && i != last {
            continue;
        }
        match runs.last_mut() {
            Some((first, end)) if key(first) == key(p) => *end = p,
            _ => runs.push((p, p)),
        }
    }
    let points: Vec<String> = runs
        .iter()
        .map(|(first, end)| {
            let when = if first.secs == end.secs {
                format!("{:.0}s", first.secs)
            } else {
                format!("{:.0}s-{:.0}s", first.secs, end.secs)
            };
            let largest = match key(first).2 {
                Some(n) => format!(" (largest {n})"),
                None => String::new(),
            };
            format!("{when}:{}/{}{largest}", first.below_min, first.components)
        })
        .collect();
    println!(
        "  {label:<16} (t: nodes below min / components) {}",
        points.join(" ")
    );
}

fn print_partition(p: &PartitionReport) {
    println!(
        "split the network for {:.0} s: {} + {} live nodes; {} links across it, {}",
        p.split_secs,
        p.group_a,
        p.group_b,
        p.cross_links_at_split,
        p.cross_links_gone_secs.map_or_else(
            || "some still up at the heal".to_string(),
            |s| format!("all cut after {s:.0} s")
        ),
    );
    graph_line("before split", &p.before);
    graph_line("end of split", &p.at_split_end);
    traffic_line("split", &p.split_traffic);
    split_trace_line("split trace", &p.split_trace);
    match p.reunited_secs {
        Some(s) => println!("healed: reunited (one component, all >= min) after {s:.0} s"),
        None => println!(
            "healed: reunited (one component, all >= min) NOT REACHED within {:.0} s",
            p.heal_limit_secs
        ),
    }
    graph_line(
        if p.reunited_secs.is_some() {
            "at reunion"
        } else {
            "at heal limit"
        },
        &p.after_heal,
    );
    traffic_line("after heal", &p.heal_traffic);
    split_trace_line("heal trace", &p.heal_trace);
    println!(
        "  {} frames and closes held back by the split; phase wall {:.1} s",
        p.held_messages,
        p.wall_ms as f64 / 1000.0
    );
}

fn print_report(r: &SimReport, wall_secs: f64, peak_rss_kib: Option<u64>) {
    println!(
        "hermes-overlay-sim: {} nodes, min {} max {}, book {}, seed {}, latency {} ms + up to {} ms, {} joins/s from {:?}, removal {:?}",
        r.nodes,
        r.min_neighbours,
        r.max_neighbours,
        r.book_capacity,
        r.seed,
        r.latency_ms,
        r.jitter_ms,
        r.join_rate,
        r.bootstrap,
        r.removal
    );
    println!(
        "session: dial timeout {} ms, keepalive every {} ms, cut after {} ms",
        r.session.dial_timeout.as_millis(),
        r.session.keepalive_interval.as_millis(),
        r.session.keepalive_timeout.as_millis()
    );
    println!(
        "joins: last at {:.0} s; converged (all >= min, connected) at {} = {} after the last join",
        r.last_join_secs,
        secs(r.converged_secs),
        secs(r.converged_after_last_join_secs)
    );
    graph_line("end of steady", &r.steady);
    println!(
        "  checks in the steady window with a membership over max: {}",
        r.steady_checks_over_max
    );
    traffic_line("joining", &r.join_traffic);
    traffic_line("steady", &r.steady_traffic);
    if let Some(p) = &r.partition {
        print_partition(p);
    }
    println!(
        "removed {} nodes at once ({}node 0 among them)",
        r.removed,
        if r.removed_bootstrap_node { "" } else { "not " }
    );
    graph_line("just after", &r.after_removal);
    println!(
        "recovered (survivors all >= min, connected) after {}",
        secs(r.recovered_secs)
    );
    if let Some(g) = &r.at_recovery {
        graph_line("at recovery", g);
    }
    traffic_line("recovery", &r.recovery_traffic);
    trace_line("recovery trace", &r.recovery_trace);
    graph_line("end", &r.end);
    traffic_line("after", &r.end_traffic);
    println!(
        "membership stats: {} records refused, {} gossip ignored, {} evictions, {} refusals (full), \
         {} rotations",
        r.stats.records_refused,
        r.stats.gossip_ignored,
        r.stats.evictions,
        r.stats.refusals,
        r.stats.rotations
    );
    let c = &r.counters;
    println!(
        "events {}, dials {} ({} failed), links opened {}, frames {}, keepalive cuts {}, unencodable {}",
        c.events, c.dials, c.dial_failures, c.links_opened, c.frames, c.keepalive_cuts, c.unencodable
    );
    println!(
        "virtual {:.0} s; wall {:.1} s (setup {:.1}, join+converge {:.1}, steady {:.1}, recovery {:.1}, after {:.1}); peak RSS {}",
        r.virtual_secs,
        wall_secs,
        r.wall_ms.setup as f64 / 1000.0,
        r.wall_ms.join_and_converge as f64 / 1000.0,
        r.wall_ms.steady as f64 / 1000.0,
        r.wall_ms.recovery as f64 / 1000.0,
        r.wall_ms.after as f64 / 1000.0,
        peak_rss_kib.map_or_else(|| "unknown".to_string(), |k| format!("{:.0} MiB", k as f64 / 1024.0))
    );
}
