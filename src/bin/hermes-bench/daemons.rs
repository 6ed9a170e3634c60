//! Real `hermes daemon` processes: configs, start, SIGKILL, restart, stop,
//! and the client-socket load (pipelined pushes, pulls) through the
//! library's client protocol.

use std::collections::HashMap;
use std::fs;
use std::io::BufWriter;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _};
use hermes::client::Client;
use hermes::wire::client::{
    read_frame, write_frame, InboxMessage, Request, Response, StatusReport, MAX_PULL_BATCH,
};
use hermes::wire::MessageId;

pub const PORT: u16 = 58008;
/// How long a daemon gets to exit after SIGTERM before it is SIGKILLed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Read timeout of the bench's client connections.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Every daemon pid alive, for the watchdog (SIGKILL on the deadline).
pub static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The rows that measure flood mode say so (the default is onion).
pub const FLOOD_TOML: &str = "[routing]\nmode = \"flood\"\n\n";

/// What a node's config holds beyond its address and folder.
#[derive(Clone)]
pub struct NodeOpts {
    pub bootstrap: Vec<String>,
    pub min_neighbours: usize,
    pub max_neighbours: usize,
    pub log_level: String,
    /// Appended to the config as is (a `[limits]` section, ...).
    pub extra_toml: String,
}

pub struct Daemon {
    pub name: String,
    pub ip: String,
    pub config: PathBuf,
    pub data: PathBuf,
    pub log: PathBuf,
    /// Run inside this network namespace (`ip netns exec NS`).
    pub netns: Option<String>,
    pub child: Option<Child>,
    hermes: PathBuf,
}

impl Daemon {
    pub fn new(
        hermes: &Path,
        base: &Path,
        name: &str,
        ip: &str,
        opts: &NodeOpts,
        netns: Option<String>,
    ) -> anyhow::Result<Daemon> {
        let dir = base.join(name);
        let data = dir.join("data");
        fs::create_dir_all(&data)?;
        let bootstrap: Vec<String> = opts.bootstrap.iter().map(|b| format!("\"{b}\"")).collect();
        let config = dir.join("node.toml");
        fs::write(
            &config,
            format!(
                "[node]\nlisten = \"{ip}:{PORT}\"\ndata_dir = \"{}\"\n\n[network]\nbootstrap = [{}]\nmin_neighbours = {}\nmax_neighbours = {}\n\n[log]\nlevel = \"{}\"\n\n{}\n",
                data.display(),
                bootstrap.join(", "),
                opts.min_neighbours,
                opts.max_neighbours,
                opts.log_level,
                opts.extra_toml
            ),
        )?;
        Ok(Daemon {
            name: name.to_string(),
            ip: ip.to_string(),
            config,
            data,
            log: dir.join("daemon.log"),
            netns,
            child: None,
            hermes: hermes.to_path_buf(),
        })
    }

    pub fn socket(&self) -> PathBuf {
        self.data.join("hermes.sock")
    }

    pub fn listen(&self) -> String {
        format!("{}:{PORT}", self.ip)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn start(&mut self) -> anyhow::Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.hermes);
                c
            }
            None => Command::new(&self.hermes),
        };
        cmd.arg("--config")
            .arg(&self.config)
            .arg("daemon")
            .env_remove("HERMES_CONFIG")
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
            .with_context(|| format!("cannot start {}", self.hermes.display()))?;
        LIVE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child.id());
        self.child = Some(child);
        Ok(())
    }

    fn forget_pid(pid: u32) {
        LIVE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|p| *p != pid);
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            Self::forget_pid(c.id());
        }
    }

    /// SIGTERM, wait for the exit; SIGKILL past the grace time. Ok(true): exit 0.
    pub fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        // SAFETY: kill(2) on a daemon we spawned and have not reaped yet.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        let t = Instant::now();
        let ok = loop {
            match c.try_wait() {
                Ok(Some(s)) => break s.success(),
                Ok(None) if t.elapsed() > STOP_GRACE => {
                    let _ = c.kill();
                    let _ = c.wait();
                    break false;
                }
                Ok(None) => thread::sleep(Duration::from_millis(20)),
                Err(_) => break false,
            }
        };
        Self::forget_pid(c.id());
        ok
    }

    /// The daemon's status over its client socket; None while it does not answer.
    pub fn status(&self) -> Option<StatusReport> {
        let mut c = Client::connect(&self.socket()).ok()?;
        match c.call(&Request::Status).ok()? {
            Response::Status(s) => Some(*s),
            _ => None,
        }
    }

    pub fn tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Stops every daemon (SIGTERM, in parallel); the names of those that did not exit 0.
pub fn stop_all(nodes: &mut [Daemon]) -> Vec<String> {
    thread::scope(|s| {
        let hs: Vec<_> = nodes
            .iter_mut()
            .map(|n| s.spawn(move || (n.stop(), n.name.clone())))
            .collect();
        hs.into_iter()
            .filter_map(|h| match h.join() {
                Ok((true, _)) => None,
                Ok((false, name)) => Some(name),
                Err(_) => Some("?".to_string()),
            })
            .collect()
    })
}

/// Polls `cond` every `step` until it holds or `deadline` passes.
pub fn wait_until(
    deadline: Instant,
    step: Duration,
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
        thread::sleep(step);
    }
}

/// Waits until every node answers status, then until each has at least
/// `min_links` neighbours (`want` lists exact neighbours to wait for instead).
pub fn wait_links(nodes: &[Daemon], min_links: usize, deadline: Instant) -> anyhow::Result<()> {
    wait_until(
        deadline,
        Duration::from_millis(50),
        "every node has its links",
        || {
            Ok(nodes
                .iter()
                .all(|n| n.status().is_some_and(|s| s.neighbours.len() >= min_links)))
        },
    )
}

/// A text of `size` bytes carrying the run tag, a sequence number and the send time.
pub fn text(tag: &str, seq: u64, size: usize) -> String {
    let mut s = format!("hb {tag} {seq} {} ", now_us());
    while s.len() < size {
        s.push('.');
    }
    s
}

/// (tag, seq, sent µs) of a bench text.
pub fn parse_text(t: &str) -> Option<(&str, u64, u64)> {
    let mut it = t.split(' ');
    if it.next()? != "hb" {
        return None;
    }
    let tag = it.next()?;
    let seq = it.next()?.parse().ok()?;
    let sent = it.next()?.parse().ok()?;
    Some((tag, seq, sent))
}

/// What one pushing connection saw.
#[derive(Default)]
pub struct Pushed {
    /// (seq, destination index, time accepted, µs since the phase's start)
    pub accepted: Vec<(u64, usize, f64)>,
    pub refused: usize,
    pub first_refusal: Option<String>,
    /// Push call latencies (request written -> answer read), µs.
    pub call_us: Vec<u64>,
    pub elapsed_s: f64,
}

/// Pushes over ONE client connection, pipelined: up to `window` requests
/// written ahead of their answers (the daemon answers a connection's
/// requests in order). `next` gives (destination index, seq) until None or
/// `until`; `dests[i]` is the destination string. The text of each is
/// `text(tag, seq, size)`.
#[allow(clippy::too_many_arguments)]
pub fn push_pipelined(
    socket: &Path,
    dests: &[String],
    tag: &str,
    size: usize,
    window: usize,
    until: Instant,
    t0: Instant,
    mut next: impl FnMut() -> Option<(usize, u64)> + Send,
    mut pace: impl FnMut() + Send,
) -> anyhow::Result<Pushed> {
    let stream = UnixStream::connect(socket)
        .with_context(|| format!("cannot connect to {}", socket.display()))?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    let mut reader = stream.try_clone()?;
    // Tokens: one per request in flight, carrying (seq, dest, written at).
    let (tx, rx) = mpsc::sync_channel::<(u64, usize, Instant)>(window.max(1));
    let started = Instant::now();
    let result = thread::scope(|s| -> anyhow::Result<Pushed> {
        // Owned here, so that an early return drops it and unblocks the writer.
        let rx = rx;
        let writer = s.spawn(move || -> anyhow::Result<()> {
            let mut w = BufWriter::new(stream);
            while Instant::now() < until {
                let Some((d, seq)) = next() else { break };
                let req = Request::Push {
                    to: dests[d].clone(),
                    text: text(tag, seq, size),
                };
                // Blocks while `window` requests are unanswered.
                if tx.send((seq, d, Instant::now())).is_err() {
                    break;
                }
                write_frame(&mut w, &req)?;
                use std::io::Write as _;
                w.flush()?;
                pace();
            }
            Ok(())
        });
        let mut out = Pushed::default();
        for (seq, d, t) in rx.iter() {
            let resp: Response = read_frame(&mut reader)?;
            match resp {
                Response::Pushed { .. } | Response::PushedShort { .. } => {
                    out.call_us.push(t.elapsed().as_micros() as u64);
                    out.accepted.push((seq, d, t0.elapsed().as_secs_f64()));
                }
                Response::Error { message, .. } => {
                    out.refused += 1;
                    out.first_refusal.get_or_insert(message);
                }
                other => bail!("unexpected answer to Push: {other:?}"),
            }
        }
        writer
            .join()
            .map_err(|_| anyhow!("pushing thread panicked"))??;
        Ok(out)
    });
    let mut r = result?;
    r.elapsed_s = started.elapsed().as_secs_f64();
    Ok(r)
}

/// One pulled message, as the bench keeps it.
#[derive(Clone)]
pub struct Got {
    pub id: MessageId,
    /// Seconds since the phase's start, when pulled.
    pub at_s: f64,
    /// Client-side latency: pulled minus the text's send stamp, µs.
    pub latency_us: u64,
    /// Daemon stamps: received - sent, ms.
    pub daemon_ms: u64,
    /// The recipient daemon's stamp: put in its inbox, ms since the epoch.
    pub received_ms: u64,
}

/// Tallies pulls: delivered by seq, duplicates (a seq shown again with
/// another id, or again after its Confirm was answered).
#[derive(Default)]
pub struct Tally {
    pub got: HashMap<u64, Got>,
    /// The same message (same text) under another id.
    pub duplicates: usize,
    /// The same id shown again after its Confirm was answered.
    pub reshown: usize,
    pub unexpected: usize,
    confirmed: std::collections::HashSet<MessageId>,
}

impl Tally {
    /// Records one pull's messages (before they are confirmed).
    pub fn add(&mut self, tag: &str, t0: Instant, msgs: &[InboxMessage]) {
        let now = now_us();
        for m in msgs {
            let Some((t, seq, sent)) = parse_text(&m.text) else {
                self.unexpected += 1;
                continue;
            };
            if t != tag {
                self.unexpected += 1;
                continue;
            }
            match self.got.get(&seq) {
                Some(g) if g.id != m.id => self.duplicates += 1,
                Some(_) if self.confirmed.contains(&m.id) => self.reshown += 1,
                Some(_) => {} // shown again before our Confirm landed: not a duplicate
                None => {
                    self.got.insert(
                        seq,
                        Got {
                            id: m.id,
                            at_s: t0.elapsed().as_secs_f64(),
                            latency_us: now.saturating_sub(sent),
                            daemon_ms: m.received.saturating_sub(m.sent),
                            received_ms: m.received,
                        },
                    );
                }
            }
        }
    }

    pub fn confirmed(&mut self, msgs: &[InboxMessage]) {
        self.confirmed.extend(msgs.iter().map(|m| m.id));
    }
}

pub fn pull(c: &mut Client) -> anyhow::Result<Vec<InboxMessage>> {
    match c.call(&Request::Pull {
        max: MAX_PULL_BATCH as u32,
    })? {
        Response::Messages(m) => Ok(m),
        other => bail!("unexpected answer to Pull: {other:?}"),
    }
}

pub fn confirm(c: &mut Client, msgs: &[InboxMessage]) -> anyhow::Result<()> {
    if msgs.is_empty() {
        return Ok(());
    }
    let ids: Vec<_> = msgs.iter().map(|m| m.id).collect();
    match c.call(&Request::Confirm { ids })? {
        Response::Confirmed { .. } => Ok(()),
        other => bail!("unexpected answer to Confirm: {other:?}"),
    }
}

/// One pull + confirm round on a node; Ok(count pulled).
pub fn pull_round(
    c: &mut Client,
    tally: &mut Tally,
    tag: &str,
    t0: Instant,
) -> anyhow::Result<usize> {
    let msgs = pull(c)?;
    tally.add(tag, t0, &msgs);
    confirm(c, &msgs)?;
    tally.confirmed(&msgs);
    Ok(msgs.len())
}

/// (VmHWM, VmRSS) of a process, in MiB.
pub fn mem_mib(pid: u32) -> (f64, f64) {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// User + system CPU seconds of a process so far (from /proc/PID/stat).
pub fn cpu_seconds(pid: u32) -> f64 {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: MessageId, t: &str) -> InboxMessage {
        InboxMessage {
            id,
            sender: String::new(),
            sender_ip: String::new(),
            sent: 1,
            received: 3,
            text: t.to_string(),
        }
    }

    #[test]
    fn texts_carry_tag_seq_and_time_and_have_the_size() {
        let t = text("abc", 42, 1024);
        assert_eq!(t.len(), 1024);
        let (tag, seq, sent) = parse_text(&t).unwrap();
        assert_eq!((tag, seq), ("abc", 42));
        assert!(sent > 0);
        assert!(parse_text("warm-up 1").is_none());
    }

    #[test]
    fn tally_tells_a_re_shown_pull_from_a_duplicate() {
        let t0 = Instant::now();
        let mut t = Tally::default();
        let (a, b) = (MessageId::random(), MessageId::random());
        let first = [msg(a, &text("x", 1, 64))];
        t.add("x", t0, &first);
        // Shown again before our Confirm landed: not counted.
        t.add("x", t0, &first);
        assert_eq!((t.duplicates, t.reshown), (0, 0));
        t.confirmed(&first);
        t.add("x", t0, &first);
        assert_eq!(t.reshown, 1);
        // The same text under another id.
        t.add("x", t0, &[msg(b, &first[0].text)]);
        assert_eq!(t.duplicates, 1);
        t.add("x", t0, &[msg(b, "hello"), msg(b, &text("other", 2, 64))]);
        assert_eq!(t.unexpected, 2);
        assert_eq!(t.got.len(), 1);
        assert_eq!(t.got[&1].daemon_ms, 2);
    }
}
