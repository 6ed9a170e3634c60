//! `hermes-bench`: a network benchmark with real `hermes daemon` processes.
//!
//! Starts a line of three daemons on loopback (127.0.200.2 <- .3 <- .4, each
//! bootstrapping from the one before; the ends have `max_neighbours = 1` so
//! the line stays a line), waits until the links are up, sends a few messages
//! one at a time (idle latency), then pushes M messages from the first node to
//! the third over one client connection (the library client, so process
//! start-up does not dominate) plus a few with the `hermes push` command,
//! pulls them on the third node, and prints:
//!
//! - push rate (ids/s: messages durably queued by the daemon),
//! - delivery latency p50/p99, idle and under load (the daemons' own
//!   sent/received stamps, and as seen by the pulling client),
//! - delivered count (must be exactly what was pushed, no duplicates),
//! - each daemon's peak RSS and CPU time,
//!
//! next to raw bounds measured in the same run: a loopback TCP round trip of
//! 1 KiB (a tiny echo server thread) and a sled insert + flush. No figure is
//! asserted; lost, duplicated or unexpected messages make the exit code 1.
//!
//! Usage: `cargo build --release && target/release/hermes-bench [--messages 500]`
//! (finds `hermes` next to itself; `--hermes PATH` to choose another).
//! Bounded in time: `--deadline` (120 s) over the whole run, after which the
//! daemons are killed and it exits 3.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _};
use clap::Parser;
use hermes::client::Client;
use hermes::wire::client::{InboxMessage, Request, Response, StatusReport, MAX_PULL_BATCH};

const PORT: u16 = 58008;
const NODES: [u8; 3] = [2, 3, 4];

#[derive(Parser)]
#[command(
    name = "hermes-bench",
    about = "Network benchmark: a line of 3 real hermes daemons on loopback"
)]
struct Args {
    /// The hermes binary (default: `hermes` next to this executable).
    #[arg(long, value_name = "PATH")]
    hermes: Option<PathBuf>,
    /// Messages pushed through the library client over one connection.
    #[arg(long, default_value_t = 500)]
    messages: usize,
    /// Messages pushed with the `hermes push` command (one process each).
    #[arg(long, default_value_t = 20)]
    cli_messages: usize,
    /// Messages sent one at a time (each pulled before the next is pushed),
    /// for the latency of an idle network.
    #[arg(long, default_value_t = 50)]
    latency_messages: usize,
    /// Client connections pushing in parallel (the M messages are split among them).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// `max_neighbours` of the two end nodes. The line stays a line either
    /// way (the sender's probe of the recipient is not a link); the run
    /// prints whether it did.
    #[arg(long, default_value_t = 8)]
    ends_max_neighbours: usize,
    /// Bytes of text per message (at least the ~40 bytes of the tag).
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// The first three octets of the loopback addresses (nodes are .2, .3, .4).
    #[arg(long, default_value = "127.0.200")]
    net: String,
    /// Overall deadline in seconds; past it the daemons are killed and the run fails.
    #[arg(long, default_value_t = 120)]
    deadline: u64,
    /// Daemon log level.
    #[arg(long, default_value = "warning")]
    log_level: String,
    /// Keep the temporary directory (configs, data, logs) at the end.
    #[arg(long)]
    keep: bool,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Shared with the watchdog: what is running and what we are doing.
#[derive(Default)]
struct Shared {
    pids: Vec<(u8, u32)>,
    phase: String,
    logs: Vec<(u8, PathBuf)>,
}

fn set_phase(shared: &Mutex<Shared>, phase: &str) {
    eprintln!("[hermes-bench] {phase}");
    shared.lock().unwrap().phase = phase.to_string();
}

struct Node {
    n: u8,
    ip: String,
    config: PathBuf,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn socket(&self) -> PathBuf {
        self.data.join("hermes.sock")
    }
    fn listen(&self) -> String {
        format!("{}:{PORT}", self.ip)
    }
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("hermes-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> anyhow::Result<bool> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.deadline);
    let hermes = match &args.hermes {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("hermes"),
    };
    if !hermes.is_file() {
        bail!("{}: no hermes binary there (build it with `cargo build --release`, or pass --hermes PATH)", hermes.display());
    }
    if args.size < 48 {
        bail!("--size must be at least 48 bytes (room for the tag)");
    }
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let base = std::env::temp_dir().join(format!("hermes-bench-{}-{stamp}", std::process::id()));
    fs::create_dir_all(&base).with_context(|| format!("cannot create {}", base.display()))?;

    let shared = Arc::new(Mutex::new(Shared::default()));
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = {
        let shared = shared.clone();
        let base = base.clone();
        let limit = args.deadline;
        thread::spawn(move || {
            if done_rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .is_ok()
            {
                return;
            }
            let s = shared.lock().unwrap();
            eprintln!(
                "\nhermes-bench: DEADLINE: the overall deadline of {limit} s passed during: {}",
                s.phase
            );
            for (n, path) in &s.logs {
                eprintln!(
                    "--- last lines of node .{n} log ({}) ---\n{}",
                    path.display(),
                    tail(path, 20)
                );
            }
            for (_, pid) in &s.pids {
                // SAFETY: kill(2) on daemons this process spawned and has not reaped.
                unsafe { libc::kill(*pid as libc::pid_t, libc::SIGTERM) };
            }
            thread::sleep(Duration::from_secs(5));
            for (_, pid) in &s.pids {
                // SAFETY: as above.
                unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
            }
            eprintln!(
                "hermes-bench: daemons killed; files kept in {}",
                base.display()
            );
            std::process::exit(3);
        })
    };

    let result = bench(&args, &hermes, &base, deadline, &shared);
    let _ = done_tx.send(());
    let _ = watchdog.join();
    match &result {
        Ok(true) if !args.keep => {
            let _ = fs::remove_dir_all(&base);
        }
        _ => eprintln!("hermes-bench: files kept in {}", base.display()),
    }
    println!("total run time: {:.1} s", start.elapsed().as_secs_f64());
    result
}

fn bench(
    args: &Args,
    hermes: &Path,
    base: &Path,
    deadline: Instant,
    shared: &Arc<Mutex<Shared>>,
) -> anyhow::Result<bool> {
    // ---- raw bounds, measured before the daemons run ----
    set_phase(
        shared,
        "measuring raw bounds (loopback TCP round trip, sled insert + flush)",
    );
    let rtt_before = tcp_rtt_1k(2000)?;
    let sled_bound = sled_bounds(&base.join("raw-sled"), 500)?;

    // ---- start the line of daemons ----
    let mut nodes: Vec<Node> = Vec::new();
    for &n in &NODES {
        let dir = base.join(format!("n{n}"));
        let data = dir.join("data");
        fs::create_dir_all(&data)?;
        let ip = format!("{}.{n}", args.net);
        let bootstrap = if n == NODES[0] {
            String::new()
        } else {
            format!("\"{}.{}:{PORT}\"", args.net, n - 1)
        };
        let config = dir.join("node.toml");
        let max = if n == NODES[1] {
            8
        } else {
            args.ends_max_neighbours
        };
        fs::write(
            &config,
            format!(
                "[node]\nlisten = \"{ip}:{PORT}\"\ndata_dir = \"{}\"\n\n[network]\nbootstrap = [{bootstrap}]\nmin_neighbours = 1\nmax_neighbours = {max}\n\n[log]\nlevel = \"{}\"\n",
                data.display(),
                args.log_level
            ),
        )?;
        nodes.push(Node {
            n,
            ip,
            config,
            data,
            log: dir.join("daemon.log"),
            child: None,
        });
    }
    let outcome = (|| -> anyhow::Result<bool> {
        let t_start = Instant::now();
        for i in 0..nodes.len() {
            set_phase(shared, &format!("starting node .{}", nodes[i].n));
            let log = fs::File::create(&nodes[i].log)?;
            let mut cmd = Command::new(hermes);
            cmd.arg("--config")
                .arg(&nodes[i].config)
                .arg("daemon")
                .env_remove("HERMES_CONFIG")
                .env("XDG_CONFIG_HOME", base)
                .env("XDG_DATA_HOME", base)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            // SAFETY: prctl in the child before exec; async-signal-safe. The
            // daemons die with this process even if it is killed.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let child = cmd
                .spawn()
                .with_context(|| format!("cannot start {}", hermes.display()))?;
            {
                let mut s = shared.lock().unwrap();
                s.pids.push((nodes[i].n, child.id()));
                s.logs.push((nodes[i].n, nodes[i].log.clone()));
            }
            nodes[i].child = Some(child);
            let node = &nodes[i];
            wait_until(
                deadline,
                &format!("node .{} answers status", node.n),
                || Ok(cli_status(hermes, &node.config)?.is_some()),
            )
            .map_err(|e| with_logs(e, &nodes))?;
        }
        set_phase(shared, "waiting for the links .2-.3 and .3-.4");
        let want: [(usize, Vec<String>); 3] = [
            (0, vec![nodes[1].listen()]),
            (1, vec![nodes[0].listen(), nodes[2].listen()]),
            (2, vec![nodes[1].listen()]),
        ];
        wait_until(deadline, "links up", || {
            for (i, peers) in &want {
                let Some(st) = cli_status(hermes, &nodes[*i].config)? else {
                    return Ok(false);
                };
                let have: HashSet<&str> = st["neighbours"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|n| n["listen"].as_str()).collect())
                    .unwrap_or_default();
                if !peers.iter().all(|p| have.contains(p.as_str())) {
                    return Ok(false);
                }
            }
            Ok(true)
        })
        .map_err(|e| with_logs(e, &nodes))?;
        // From spawning the first daemon to every link up.
        let links_s = t_start.elapsed().as_secs_f64();

        measure(
            args, hermes, &nodes, deadline, shared, rtt_before, sled_bound, links_s,
        )
    })();

    // ---- stop the daemons: SIGTERM, wait, SIGKILL only if they hang ----
    set_phase(shared, "stopping the daemons (SIGTERM)");
    let mut clean_exit = true;
    for node in &nodes {
        if let Some(pid) = node.pid() {
            // SAFETY: kill(2) on a daemon we spawned and have not reaped yet.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
    }
    for node in &mut nodes {
        let n = node.n;
        let Some(child) = node.child.as_mut() else {
            continue;
        };
        let t = Instant::now();
        let status = loop {
            match child.try_wait()? {
                Some(s) => break Some(s),
                None if t.elapsed() > Duration::from_secs(15) => break None,
                None => thread::sleep(Duration::from_millis(20)),
            }
        };
        match status {
            Some(s) if s.success() => {}
            Some(s) => {
                clean_exit = false;
                println!(
                    "node .{n}: exited with {s} after SIGTERM (expected 0)\n{}",
                    tail(&node.log, 20)
                );
            }
            None => {
                clean_exit = false;
                let _ = child.kill();
                let _ = child.wait();
                println!(
                    "node .{n}: did not exit within 15 s of SIGTERM; killed\n{}",
                    tail(&node.log, 20)
                );
            }
        }
    }
    shared.lock().unwrap().pids.clear();
    if clean_exit {
        println!("shutdown: all daemons exited 0 after SIGTERM");
    }
    Ok(outcome? && clean_exit)
}

#[allow(clippy::too_many_arguments)]
fn measure(
    args: &Args,
    hermes: &Path,
    nodes: &[Node],
    deadline: Instant,
    shared: &Arc<Mutex<Shared>>,
    rtt_before: Vec<u64>,
    sled_bound: SledBounds,
    links_s: f64,
) -> anyhow::Result<bool> {
    let (first, last) = (&nodes[0], &nodes[2]);
    let to = last.ip.clone();

    // ---- warm-up: one message end to end proves the path ----
    set_phase(shared, "warm-up message .2 -> .4");
    let mut pusher = Client::connect(&first.socket())?;
    let warm_text = format!("warm-up {}", now_us());
    wait_until(deadline, "warm-up push accepted", || {
        match pusher.call(&Request::Push {
            to: to.clone(),
            text: warm_text.clone(),
        })? {
            Response::Pushed { .. } => Ok(true),
            Response::Error { message, .. } => {
                eprintln!("[hermes-bench] warm-up push refused (will retry): {message}");
                Ok(false)
            }
            other => Err(anyhow!("unexpected answer to Push: {other:?}")),
        }
    })
    .map_err(|e| with_logs(e, nodes))?;
    let mut puller = Client::connect(&last.socket())?;
    wait_until(deadline, "warm-up message delivered", || {
        let msgs = pull(&mut puller)?;
        let found = msgs.iter().any(|m| m.text == warm_text);
        confirm(&mut puller, &msgs)?;
        Ok(found)
    })
    .map_err(|e| with_logs(e, nodes))?;
    // ---- latency on an idle network: one message at a time ----
    set_phase(
        shared,
        &format!(
            "idle latency: {} messages one at a time",
            args.latency_messages
        ),
    );
    let mut idle_daemon_ms = Vec::new();
    let mut idle_client_us = Vec::new();
    let mut idle_unexpected = 0usize;
    for i in 0..args.latency_messages {
        let sent = now_us();
        let text = pad(format!("hb idle {i} {sent} "), args.size);
        match pusher.call(&Request::Push {
            to: to.clone(),
            text: text.clone(),
        })? {
            Response::Pushed { .. } => {}
            other => bail!("idle-latency push {i}: unexpected answer {other:?}"),
        }
        let mut got = false;
        wait_until_fast(
            deadline,
            &format!("idle-latency message {i} delivered"),
            || {
                let msgs = pull(&mut puller)?;
                let t = now_us();
                for m in &msgs {
                    if m.text == text && !got {
                        got = true;
                        idle_daemon_ms.push(m.received.saturating_sub(m.sent));
                        idle_client_us.push(t.saturating_sub(sent));
                    } else {
                        idle_unexpected += 1;
                        eprintln!(
                            "[hermes-bench] unexpected message during the idle-latency phase: {:?}",
                            m.text.trim_end_matches('.')
                        );
                    }
                }
                confirm(&mut puller, &msgs)?;
                Ok(got)
            },
        )
        .map_err(|e| with_logs(e, nodes))?;
    }
    idle_daemon_ms.sort_unstable();
    idle_client_us.sort_unstable();
    drop(puller);

    let cpu_before: Vec<f64> = nodes
        .iter()
        .map(|n| cpu_seconds(n.pid().unwrap_or(0)))
        .collect();

    // ---- the puller: its own connection to the last node ----
    let stop = Arc::new(AtomicBool::new(false));
    let puller = {
        let socket = last.socket();
        let stop = stop.clone();
        thread::spawn(move || -> anyhow::Result<Vec<(u64, InboxMessage)>> {
            let mut client = Client::connect(&socket)?;
            let mut seen = Vec::new();
            let mut polls_after_stop = 0;
            loop {
                let msgs = pull(&mut client)?;
                let t = now_us();
                if msgs.is_empty() {
                    if stop.load(Ordering::Relaxed) {
                        // One more empty pull after the stop: nothing left behind.
                        polls_after_stop += 1;
                        if polls_after_stop >= 2 {
                            return Ok(seen);
                        }
                    }
                    thread::sleep(Duration::from_millis(2));
                    continue;
                }
                confirm(&mut client, &msgs)?;
                seen.extend(msgs.into_iter().map(|m| (t, m)));
            }
        })
    };

    // ---- push M messages over `connections` library connections ----
    let conns = args.connections.max(1);
    set_phase(
        shared,
        &format!(
            "pushing {} messages (library client, {conns} connection(s))",
            args.messages
        ),
    );
    let run_tag = format!("{:08x}", rand::random::<u32>());
    let mut expected: HashMap<String, u64> = HashMap::new();
    let mut push_lat_us = Vec::with_capacity(args.messages);
    let mut refused = 0usize;
    let t_push = Instant::now();
    let mut first_pusher = Some(&mut pusher);
    let results: Vec<anyhow::Result<PushResult>> = thread::scope(|scope| {
        let mut handles = Vec::new();
        for c in 0..conns {
            let to = to.clone();
            let run_tag = run_tag.clone();
            let socket = first.socket();
            let mine: Vec<usize> = (c..args.messages).step_by(conns).collect();
            let size = args.size;
            let first_client = first_pusher.take();
            handles.push(scope.spawn(move || -> anyhow::Result<PushResult> {
                let mut own;
                let client = match first_client {
                    Some(cl) => cl,
                    None => {
                        own = Client::connect(&socket)?;
                        &mut own
                    }
                };
                let mut r = PushResult::default();
                for i in mine {
                    if Instant::now() > deadline {
                        bail!("deadline passed while pushing (connection {c}, message {i})");
                    }
                    let sent = now_us();
                    let text = pad(format!("hb {run_tag} lib {i} {sent} "), size);
                    let t = Instant::now();
                    match client.call(&Request::Push {
                        to: to.clone(),
                        text: text.clone(),
                    })? {
                        Response::Pushed { .. } => {
                            r.lat_us.push(t.elapsed().as_micros() as u64);
                            r.accepted.push((text, sent));
                        }
                        Response::Error { message, .. } => {
                            r.refused += 1;
                            eprintln!("[hermes-bench] push {i} refused: {message}");
                        }
                        other => bail!("unexpected answer to Push: {other:?}"),
                    }
                }
                Ok(r)
            }));
        }
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("pusher thread panicked")))
            })
            .collect()
    });
    for r in results {
        let r = r?;
        refused += r.refused;
        push_lat_us.extend(r.lat_us);
        expected.extend(r.accepted);
    }
    let push_s = t_push.elapsed().as_secs_f64();
    let lib_accepted = expected.len();

    // ---- and K with the `hermes push` command ----
    set_phase(
        shared,
        &format!("pushing {} messages with `hermes push`", args.cli_messages),
    );
    let t_cli = Instant::now();
    let mut cli_failed = 0usize;
    for i in 0..args.cli_messages {
        if Instant::now() > deadline {
            bail!("deadline passed while pushing with the CLI (after {i} messages)");
        }
        let sent = now_us();
        let text = pad(format!("hb {run_tag} cli {i} {sent} "), args.size);
        let out = Command::new(hermes)
            .arg("push")
            .arg("--config")
            .arg(&first.config)
            .args(["--to", &to, "--msg", &text])
            .stdin(Stdio::null())
            .output()?;
        if out.status.success() {
            expected.insert(text, sent);
        } else {
            cli_failed += 1;
            eprintln!(
                "[hermes-bench] `hermes push` {i} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    let cli_s = t_cli.elapsed().as_secs_f64();
    let total = expected.len();

    // ---- wait: every receipt back at the sender, then drain the inbox ----
    set_phase(
        shared,
        &format!("waiting until .2 has all {total} receipts (outbox empty)"),
    );
    let t_settle = Instant::now();
    let mut status_client = Client::connect(&first.socket())?;
    // The warm-up and idle-latency messages count in `delivered` too.
    let all_sent = (1 + args.latency_messages + total) as u64;
    let settled =
        wait_until(
            deadline.min(Instant::now() + Duration::from_secs(60)),
            "all receipts back",
            || {
                let st = status(&mut status_client)?;
                Ok(st.outbox.queued == 0
                    && st.outbox.in_flight == 0
                    && st.outbox.delivered >= all_sent)
            },
        );
    let settle_s = t_settle.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    set_phase(shared, "draining the inbox of .4");
    let seen = puller
        .join()
        .map_err(|_| anyhow!("puller thread panicked"))??;

    let cpu_after: Vec<f64> = nodes
        .iter()
        .map(|n| cpu_seconds(n.pid().unwrap_or(0)))
        .collect();
    let statuses: Vec<Option<StatusReport>> = nodes
        .iter()
        .map(|n| {
            Client::connect(&n.socket())
                .ok()
                .and_then(|mut c| status(&mut c).ok())
        })
        .collect();
    let rss: Vec<(u64, u64)> = nodes
        .iter()
        .map(|n| mem_kib(n.pid().unwrap_or(0)))
        .collect();
    // The bound again, now that the daemons are idle: the machine is noisy,
    // so the ratios use both measurements pooled.
    let rtt_after = tcp_rtt_1k(2000)?;
    let rtt = Rtt::of(&[rtt_before.as_slice(), rtt_after.as_slice()].concat());
    let (rtt_b, rtt_a) = (Rtt::of(&rtt_before), Rtt::of(&rtt_after));

    // ---- tally ----
    let mut by_text: HashMap<&str, usize> = HashMap::new();
    let mut ids: HashSet<_> = HashSet::new();
    let mut dup_ids = 0usize;
    let mut unexpected = 0usize;
    let mut lat_daemon_ms = Vec::new();
    let mut lat_client_us = Vec::new();
    for (t, m) in &seen {
        if !ids.insert(m.id) {
            dup_ids += 1;
        }
        *by_text.entry(m.text.as_str()).or_default() += 1;
        match expected.get(&m.text) {
            Some(&sent_us) => {
                if by_text[m.text.as_str()] == 1 {
                    lat_daemon_ms.push(m.received.saturating_sub(m.sent));
                    lat_client_us.push(t.saturating_sub(sent_us));
                }
            }
            None => unexpected += 1,
        }
    }
    let delivered_unique = expected
        .keys()
        .filter(|k| by_text.contains_key(k.as_str()))
        .count();
    let dup_texts: usize = by_text.values().filter(|&&c| c > 1).map(|c| c - 1).sum();
    let missing: Vec<&String> = expected
        .keys()
        .filter(|k| !by_text.contains_key(k.as_str()))
        .collect();
    lat_daemon_ms.sort_unstable();
    lat_client_us.sort_unstable();
    push_lat_us.sort_unstable();

    // ---- report ----
    let push_rate = lib_accepted as f64 / push_s;
    let cli_rate = (total - lib_accepted) as f64 / cli_s;
    println!();
    println!(
        "hermes-bench: line of 3 daemons {}.2 <- .3 <- .4, flood routing (the daemon's default)",
        args.net
    );
    println!(
        "  messages of {} bytes of text; {} pushing connection(s); max_neighbours of the ends {}; start-up to all links up: {:.2} s",
        args.size, conns, args.ends_max_neighbours, links_s
    );
    let middle = nodes[1].listen();
    let line_held = [0, 2].iter().all(|&i| {
        statuses[i]
            .as_ref()
            .is_some_and(|s| s.neighbours.len() == 1 && s.neighbours[0].listen == middle)
    });
    if line_held {
        println!("  topology at the end: still a line (the ends linked only to .3)");
    } else {
        println!("  WARNING: topology at the end is not a line any more (see the neighbours below): the figures mix 1-hop and 2-hop paths");
    }
    println!();
    println!("raw bounds measured in this run:");
    println!(
        "  loopback TCP round trip, 1 KiB, blocking:  p50 {:.0} µs  p99 {:.0} µs  ({} round trips)",
        rtt.p50_us, rtt.p99_us, rtt.n
    );
    println!(
        "    (before the daemons: p50 {:.0} / p99 {:.0} µs; after the load, daemons idle: p50 {:.0} / p99 {:.0} µs)",
        rtt_b.p50_us, rtt_b.p99_us, rtt_a.p50_us, rtt_a.p99_us
    );
    println!(
        "  sled insert 1 KiB + flush each:           {:.0} /s   (64 inserts + one flush: {:.0} inserts/s)",
        sled_bound.flush_each_per_s, sled_bound.group_per_s
    );
    println!();
    row("figure", "value".into(), "bound".into(), "ratio".into());
    println!("{}", "-".repeat(101));
    row(
        &format!("push rate, library, {conns} conn. ({lib_accepted})"),
        format!("{push_rate:.0} ids/s"),
        format!("{:.0} /s", sled_bound.flush_each_per_s),
        format!(
            "{:.3} x insert+flush",
            push_rate / sled_bound.flush_each_per_s
        ),
    );
    row(
        "  push call p50 / p99",
        format!(
            "{} / {} µs",
            pct(&push_lat_us, 50.0),
            pct(&push_lat_us, 99.0)
        ),
        String::new(),
        String::new(),
    );
    row(
        &format!("push rate, `hermes push` ({})", total - lib_accepted),
        format!("{cli_rate:.1} ids/s"),
        String::new(),
        String::new(),
    );
    println!(
        "idle network ({} messages, one at a time):",
        args.latency_messages
    );
    latency_rows(&idle_client_us, &idle_daemon_ms, &rtt);
    row(
        "  delivered / sent",
        format!("{} / {}", idle_client_us.len(), args.latency_messages),
        String::new(),
        String::new(),
    );
    println!("under load ({total} pushed back to back, pulled concurrently):");
    latency_rows(&lat_client_us, &lat_daemon_ms, &rtt);
    row(
        "  delivered (unique) / pushed",
        format!("{delivered_unique} / {total}"),
        String::new(),
        String::new(),
    );
    row(
        "  duplicates (same id / same text)",
        format!("{dup_ids} / {dup_texts}"),
        String::new(),
        String::new(),
    );
    row(
        "  unexpected messages",
        format!("{}", unexpected + idle_unexpected),
        String::new(),
        String::new(),
    );
    row(
        "  last push -> all receipts back at .2",
        if settled.is_ok() {
            format!("{settle_s:.2} s")
        } else {
            "NO (timed out)".to_string()
        },
        String::new(),
        String::new(),
    );
    println!();
    println!("daemons (CPU: user + system during the load phase; per msg: divided by the {total} messages of that phase):");
    println!(
        "{:<8} {:>13} {:>12} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "daemon",
        "peak RSS",
        "RSS now",
        "CPU",
        "per msg",
        "relayed",
        "dropped",
        "retried",
        "replays"
    );
    for (i, node) in nodes.iter().enumerate() {
        let cpu = cpu_after[i] - cpu_before[i];
        let (hwm, now) = rss[i];
        let c = statuses[i]
            .as_ref()
            .map(|s| s.counters.clone())
            .unwrap_or_default();
        println!(
            "{:<8} {:>9} MiB {:>8} MiB {:>8.2} s {:>6.0} µs {:>9} {:>9} {:>9} {:>9}",
            format!(".{}", node.n),
            format!("{:.1}", hwm as f64 / 1024.0),
            format!("{:.1}", now as f64 / 1024.0),
            cpu,
            cpu * 1e6 / total.max(1) as f64,
            c.relayed,
            c.dropped,
            c.retried,
            c.replays
        );
    }
    for (i, s) in statuses.iter().enumerate() {
        if let Some(s) = s {
            let neigh: Vec<&str> = s.neighbours.iter().map(|n| n.listen.as_str()).collect();
            println!(
                "  .{} neighbours {:?}; outbox queued {} in flight {} delivered {} failed {}; inbox {}; drop list {}",
                nodes[i].n, neigh, s.outbox.queued, s.outbox.in_flight, s.outbox.delivered, s.outbox.failed, s.inbox, s.drop_list
            );
        }
    }

    let ok = refused == 0
        && cli_failed == 0
        && missing.is_empty()
        && dup_ids == 0
        && dup_texts == 0
        && unexpected == 0
        && idle_unexpected == 0
        && settled.is_ok()
        && statuses[2].as_ref().is_some_and(|s| s.inbox == 0);
    if !ok {
        println!();
        println!("PROBLEM: refused pushes {refused}, failed `hermes push` {cli_failed}, missing {}, duplicates {dup_ids}/{dup_texts}, unexpected {unexpected}, receipts settled: {}",
            missing.len(), settled.is_ok());
        for m in missing.iter().take(5) {
            println!("  missing: {}", m.trim_end());
        }
        if let Err(e) = &settled {
            println!("  {e}");
        }
        for node in nodes {
            println!(
                "--- node .{} log, last lines ---\n{}",
                node.n,
                tail(&node.log, 20)
            );
        }
    }
    // Warnings and errors the daemons logged during the run, counted.
    for node in nodes {
        let text = fs::read_to_string(&node.log).unwrap_or_default();
        let n = text.lines().filter(|l| !l.trim().is_empty()).count();
        if n > 0 {
            println!(
                "node .{} logged {n} lines at level >= {}; first ones:",
                node.n, args.log_level
            );
            for l in text.lines().take(5) {
                println!("  {l}");
            }
        }
    }
    Ok(ok)
}

/// Pads `s` with dots to `size` bytes.
fn pad(mut s: String, size: usize) -> String {
    while s.len() < size {
        s.push('.');
    }
    s
}

fn pull(c: &mut Client) -> anyhow::Result<Vec<InboxMessage>> {
    match c.call(&Request::Pull {
        max: MAX_PULL_BATCH as u32,
    })? {
        Response::Messages(m) => Ok(m),
        other => bail!("unexpected answer to Pull: {other:?}"),
    }
}

fn confirm(c: &mut Client, msgs: &[InboxMessage]) -> anyhow::Result<()> {
    if msgs.is_empty() {
        return Ok(());
    }
    let ids: Vec<_> = msgs.iter().map(|m| m.id).collect();
    match c.call(&Request::Confirm { ids })? {
        Response::Confirmed { removed } if removed as usize == msgs.len() => Ok(()),
        Response::Confirmed { removed } => {
            eprintln!(
                "[hermes-bench] Confirm of {} ids removed {removed}",
                msgs.len()
            );
            Ok(())
        }
        other => bail!("unexpected answer to Confirm: {other:?}"),
    }
}

fn status(c: &mut Client) -> anyhow::Result<StatusReport> {
    match c.call(&Request::Status)? {
        Response::Status(s) => Ok(*s),
        other => bail!("unexpected answer to Status: {other:?}"),
    }
}

/// `hermes status --config C --json`: the parsed object, or None while the
/// daemon does not answer yet (exit 2).
fn cli_status(hermes: &Path, config: &Path) -> anyhow::Result<Option<serde_json::Value>> {
    let out = Command::new(hermes)
        .arg("status")
        .arg("--config")
        .arg(config)
        .arg("--json")
        .stdin(Stdio::null())
        .output()?;
    match out.status.code() {
        Some(0) => Ok(Some(
            serde_json::from_slice(&out.stdout).context("status --json is not JSON")?,
        )),
        Some(2) => Ok(None),
        _ => bail!(
            "`hermes status` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    }
}

/// Polls `cond` every 0.5 ms (for latency) until it holds or `deadline` passes.
fn wait_until_fast(
    deadline: Instant,
    what: &str,
    mut cond: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    loop {
        if cond()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out waiting for: {what}");
        }
        thread::sleep(Duration::from_micros(500));
    }
}

/// Polls `cond` (every 50 ms) until it holds or `deadline` passes.
fn wait_until(
    deadline: Instant,
    what: &str,
    mut cond: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    loop {
        if cond()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out waiting for: {what}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn with_logs(e: anyhow::Error, nodes: &[Node]) -> anyhow::Error {
    let mut msg = format!("{e:#}");
    for n in nodes {
        if n.child.is_some() {
            msg.push_str(&format!(
                "\n--- node .{} log, last lines ---\n{}",
                n.n,
                tail(&n.log, 20)
            ));
        }
    }
    anyhow!(msg)
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One line of the report table.
fn row(figure: &str, value: String, bound: String, ratio: String) {
    println!("{figure:<46} {value:>16} {bound:>16} {ratio:>20}");
}

/// p50 and p99 latency, as the pulling client saw it (against the loopback
/// round trip) and by the daemons' own stamps.
fn latency_rows(client_us: &[u64], daemon_ms: &[u64], rtt: &Rtt) {
    for (label, p, rtt_us) in [("p50", 50.0, rtt.p50_us), ("p99", 99.0, rtt.p99_us)] {
        let c = pct(client_us, p) as f64;
        row(
            &format!("  latency {label}, push call -> pulled"),
            format!("{:.2} ms", c / 1000.0),
            format!("{rtt_us:.0} µs RTT"),
            format!("{:.0} x RTT {label}", c / rtt_us),
        );
        row(
            &format!("  latency {label}, daemon stamps (1 ms steps)"),
            format!("{} ms", pct(daemon_ms, p)),
            String::new(),
            String::new(),
        );
    }
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// (VmHWM, VmRSS) of a process in KiB.
fn mem_kib(pid: u32) -> (u64, u64) {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// User + system CPU seconds of a process so far.
fn cpu_seconds(pid: u32) -> f64 {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let Some(rest) = text.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime 15.
    let ticks = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(14) + ticks(15)) as f64 / hz
}

#[derive(Default)]
struct PushResult {
    accepted: Vec<(String, u64)>,
    lat_us: Vec<u64>,
    refused: usize,
}

#[derive(Clone, Copy)]
struct Rtt {
    p50_us: f64,
    p99_us: f64,
    n: usize,
}

/// Round trips of 1 KiB to an echo server thread over loopback TCP, in ns
/// (after 200 unmeasured ones).
fn tcp_rtt_1k(n: usize) -> anyhow::Result<Vec<u64>> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut buf = [0u8; 1024];
        loop {
            match s.read_exact(&mut buf) {
                Ok(()) => s.write_all(&buf)?,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    });
    let mut c = TcpStream::connect(addr)?;
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    let out = [0x5au8; 1024];
    let mut back = [0u8; 1024];
    let mut times = Vec::with_capacity(n);
    for i in 0..n + 200 {
        let t = Instant::now();
        c.write_all(&out)?;
        c.read_exact(&mut back)?;
        if i >= 200 {
            times.push(t.elapsed().as_nanos() as u64);
        }
    }
    drop(c);
    let _ = server.join();
    Ok(times)
}

impl Rtt {
    fn of(samples: &[u64]) -> Rtt {
        let mut times = samples.to_vec();
        times.sort_unstable();
        Rtt {
            p50_us: pct(&times, 50.0) as f64 / 1000.0,
            p99_us: pct(&times, 99.0) as f64 / 1000.0,
            n: times.len(),
        }
    }
}

#[derive(Clone, Copy)]
struct SledBounds {
    flush_each_per_s: f64,
    group_per_s: f64,
}

/// sled insert 1 KiB + flush each time, and 64 inserts + one flush.
fn sled_bounds(dir: &Path, n: usize) -> anyhow::Result<SledBounds> {
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(hermes::store::CACHE_CAPACITY)
        .open()?;
    let tree = db.open_tree("t")?;
    let value = vec![7u8; 1024];
    for _ in 0..50 {
        tree.insert(rand::random::<[u8; 16]>(), value.as_slice())?;
        db.flush()?;
    }
    let t = Instant::now();
    for _ in 0..n {
        tree.insert(rand::random::<[u8; 16]>(), value.as_slice())?;
        db.flush()?;
    }
    let flush_each_per_s = n as f64 / t.elapsed().as_secs_f64();
    let batches = (n * 4).div_ceil(64);
    let t = Instant::now();
    for _ in 0..batches {
        for _ in 0..64 {
            tree.insert(rand::random::<[u8; 16]>(), value.as_slice())?;
        }
        db.flush()?;
    }
    let group_per_s = (batches * 64) as f64 / t.elapsed().as_secs_f64();
    drop(tree);
    drop(db);
    let _ = fs::remove_dir_all(dir);
    Ok(SledBounds {
        flush_each_per_s,
        group_per_s,
    })
}
