//! The local client as a user drives it: standard input, node addresses as
//! destinations, config lookup without `--config`, and JSON logs.

mod common;

use common::*;
use std::fs;

#[test]
fn push_reads_stdin_and_takes_a_node_address() {
    const N: u8 = 15;
    let nodes = line(N, 2);
    let (a, b) = (&nodes[0], &nodes[1]);
    let to = b.address();

    let dash = format!("from stdin with a dash {}", random_hex(8));
    let out = a.cli_input("push", &["--to", &to, "--msg", "-"], &format!("{dash}\n"));
    assert!(out.ok(), "push --msg - failed: {out}");
    parse_id(&out);
    let bare = format!("from stdin, no --msg {}", random_hex(8));
    let out = a.cli_input("push", &["--to", &to], &bare);
    assert!(out.ok(), "push without --msg failed: {out}");
    parse_id(&out);

    let mut got = Vec::new();
    wait_for(
        DELIVERY_TIMEOUT,
        "both stdin messages on .3",
        &[a, b],
        || {
            got.extend(b.pull());
            got.len() >= 2
        },
    );
    // Onion mode: each message on its own path, so in either order.
    got.sort();
    let mut want = vec![pull_line(&ip(N, 2), &dash), pull_line(&ip(N, 2), &bare)];
    want.sort();
    assert_eq!(
        got, want,
        "the trailing newline of stdin is not part of the message"
    );

    let unknown = "ab".repeat(32);
    let out = a.cli("push", &["--to", &unknown, "--msg", "x"]);
    assert_eq!(
        out.code,
        Some(1),
        "an unknown node address is bad input: {out}"
    );
    assert!(out.stderr.contains(&unknown), "the error names it: {out}");
}

#[test]
fn config_found_through_env_and_xdg() {
    const N: u8 = 16;
    let node = Node::start(N, 2, NodeOpts::default());
    let address = node.address();
    let cfg = node.config_str();

    let out = node.cli_env(&["id"], &[("HERMES_CONFIG", &cfg)]);
    assert!(out.ok(), "id with HERMES_CONFIG failed: {out}");
    assert_eq!(out.stdout.trim(), address);

    // Without --config or HERMES_CONFIG: $XDG_CONFIG_HOME/hermes/node.toml.
    let xdg = node.dir().join("xdg-config").join("hermes");
    fs::create_dir_all(&xdg).expect("create xdg config dir");
    fs::copy(node.config_path(), xdg.join("node.toml")).expect("copy config");
    let out = node.cli_env(&["id"], &[]);
    assert!(out.ok(), "id with the XDG config failed: {out}");
    assert_eq!(out.stdout.trim(), address);

    // --config wins over HERMES_CONFIG.
    let missing = node.dir().join("nowhere.toml");
    let out = node.cli_env(
        &["id", "--config", &cfg],
        &[("HERMES_CONFIG", missing.to_str().expect("utf-8 path"))],
    );
    assert!(out.ok(), "--config must win over HERMES_CONFIG: {out}");
    assert_eq!(out.stdout.trim(), address);
}

#[test]
fn json_logs_are_json_and_never_hold_the_text() {
    const N: u8 = 17;
    let nodes = line_with(N, 2, |_, o| o.log_json = true);
    let (a, b) = (&nodes[0], &nodes[1]);
    let text = format!("secret words {}", random_hex(8));
    a.push(&ip(N, 3), &text);
    let got = b.pull_until(DELIVERY_TIMEOUT, "the message on .3", |l| !l.is_empty());
    assert_eq!(got, vec![pull_line(&ip(N, 2), &text)]);

    for node in &nodes {
        let log = node.log();
        // The nodes still run: a last line without its newline may be
        // half-written (slog's JSON drain writes a line in pieces).
        let complete = log.rfind('\n').map_or("", |end| &log[..end]);
        let mut events = 0;
        for line in complete
            .lines()
            .filter(|l| !l.starts_with("===== hermes-it"))
        {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
            assert!(v.get("msg").is_some() && v.get("level").is_some(), "{line}");
            // Each key once (issue 12, defect 4): serde_json keeps the last
            // of duplicates, so count the key as written.
            assert!(
                line.matches("\"actor\":").count() <= 1,
                "duplicate keys: {line}"
            );
            events += 1;
        }
        assert!(events > 0, "no log lines from {}", node.listen());
        assert!(!log.contains(&text), "the message text is in a log");
    }
    // The log is written asynchronously: the delivery's line may follow
    // the pull by a moment.
    wait_for(
        LINK_TIMEOUT,
        "the sender to log the push and the recipient the delivery",
        &[a, b],
        || a.log().contains("message accepted") && b.log().contains("delivered"),
    );
}

#[test]
fn push_to_own_ip_lands_in_own_inbox() {
    const N: u8 = 18;
    let node = Node::start(N, 2, NodeOpts::default());
    let text = format!("note to self {}", random_hex(8));
    let out = node.cli("push", &["--to", &ip(N, 2), "--msg", &text, "--wait", "20"]);
    assert_eq!(out.code, Some(0), "push --wait to itself: {out}");
    assert_eq!(node.pull(), vec![pull_line(&ip(N, 2), &text)]);
    let (_, _, delivered, _) = node.outbox();
    assert_eq!(delivered, 1, "{}", node.status());
}

/// `status` shows each link's age and round trip; `peers` lists the address
/// book, and records a dead neighbour's failed redials.
#[test]
fn status_and_peers_show_links_and_the_address_book() {
    const N: u8 = 19;
    // .3 first, then .4 and .2 each bootstrapping from it: .3 already knows
    // .4 when .2 links, and a new link gets a sample of records at once.
    let with_bootstrap = |b: Vec<String>| NodeOpts {
        bootstrap: b,
        ..NodeOpts::default()
    };
    let hub = Node::start(N, 3, with_bootstrap(vec![]));
    let c = Node::start(N, 4, with_bootstrap(vec![ip(N, 3)]));
    wait_linked(&hub, &c);
    let a = Node::start(N, 2, with_bootstrap(vec![ip(N, 3)]));
    wait_linked(&a, &hub);
    let mut nodes = [a, hub, c];
    let a = &nodes[0];
    let b_listen = nodes[1].listen();
    let c_listen = nodes[2].listen();

    let mut st = a.status();
    wait_for(
        LINK_TIMEOUT,
        ".2 measures the round trip to .3",
        &[a],
        || {
            st = a.status();
            st["neighbours"][0]["rtt_us"].is_u64()
        },
    );
    let n = &st["neighbours"][0];
    assert_eq!(n["listen"], b_listen.as_str());
    assert!(n["age_secs"].is_u64(), "{n}");

    // .2 hears of .4 through .3's gossip, though it never linked with it.
    let peers = |node: &Node| -> Vec<serde_json::Value> {
        let out = node.cli("peers", &["--json"]);
        assert!(out.ok(), "peers --json failed: {out}");
        out.stdout
            .lines()
            .map(|l| serde_json::from_str(l).expect("peers --json prints JSON lines"))
            .collect()
    };
    let find = |list: &[serde_json::Value], listen: &str| {
        list.iter().find(|p| p["listen"] == listen).cloned()
    };
    let mut book = Vec::new();
    wait_for(
        LINK_TIMEOUT,
        ".2's address book holds .3 and .4",
        &[a],
        || {
            book = peers(a);
            find(&book, &b_listen).is_some() && find(&book, &c_listen).is_some()
        },
    );
    let b = find(&book, &b_listen).expect("checked above");
    assert_eq!(b["neighbour"], true, "{b}");
    assert_eq!(b["failures"], 0, "{b}");
    assert!(b["last_success"].is_u64() && b["last_seen"].is_u64(), "{b}");
    let c = find(&book, &c_listen).expect("checked above");
    assert_eq!(c["neighbour"], false, "{c}");
    assert!(c["last_success"].is_null(), "{c}");
    let text = a.cli("peers", &[]);
    assert!(text.ok() && text.stdout.contains(&c_listen), "{text}");

    // .3 dies: .2 redials it and counts the failures.
    nodes[1].kill();
    let a = &nodes[0];
    wait_for(
        LINK_TIMEOUT,
        ".2 counts failed dials to the dead .3",
        &[a],
        || {
            book = peers(a);
            find(&book, &b_listen)
                .is_some_and(|b| b["neighbour"] == false && b["failures"].as_u64() >= Some(1))
        },
    );
}

#[test]
fn push_each_line_pipelines_and_names_refused_lines() {
    const N: u8 = 94;
    let nodes = line(N, 2);
    let (a, b) = (&nodes[0], &nodes[1]);
    let tag = random_hex(8);
    let count = 300;
    let mut input = String::new();
    for i in 0..count {
        input.push_str(&format!("line {i} {tag}\n"));
        if i == 100 {
            // One line over the limit, in the middle: refused, the rest go.
            input.push_str(&"x".repeat(60_001));
            input.push('\n');
        }
    }
    let out = a.cli_input("push", &["--to", &b.ip(), "--each-line"], &input);
    assert_eq!(out.code, Some(1), "a refused line makes the exit 1: {out}");
    assert!(
        out.stderr.contains("line 102") && out.stderr.contains("60000-byte limit"),
        "the refused line is named: {out}"
    );
    let ids: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(ids.len(), count, "one id per accepted line: {out}");
    let distinct: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), count, "ids are distinct");

    let mut got = Vec::new();
    wait_for(
        DELIVERY_TIMEOUT,
        "every line delivered on .3",
        &[a, b],
        || {
            got.extend(b.pull());
            got.len() >= count
        },
    );
    let want: Vec<String> = (0..count)
        .map(|i| pull_line(&ip(N, 2), &format!("line {i} {tag}")))
        .collect();
    let mut sorted = got.clone();
    sorted.sort();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(sorted, want_sorted, "each line arrives once");
}

/// A daemon started by the test itself (like a service manager would), with
/// `NOTIFY_SOCKET` set; SIGKILLed when dropped.
struct Supervised {
    child: std::process::Child,
}

impl Drop for Supervised {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_with_notify(node: &Node, notify: &std::path::Path) -> Supervised {
    use std::os::unix::process::CommandExt;
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(node.log_path())
        .expect("open node log");
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["daemon", "--config", &node.config_str()])
        .env_remove("HERMES_CONFIG")
        .env("XDG_CONFIG_HOME", node.dir().join("xdg-config"))
        .env("XDG_DATA_HOME", node.dir().join("xdg-data"))
        .env("NOTIFY_SOCKET", notify)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("clone log fd"))
        .stderr(log);
    // SAFETY: prctl only asks the kernel to SIGKILL the daemon if this thread dies.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    Supervised {
        child: cmd.spawn().expect("spawn daemon"),
    }
}

/// The next datagram holding `want` (others, like STATUS= updates, are skipped).
fn notified(sock: &std::os::unix::net::UnixDatagram, want: &str, node: &Node) -> String {
    let deadline = std::time::Instant::now() + READY_TIMEOUT;
    let mut buf = [0u8; 4096];
    while std::time::Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            if msg.lines().any(|l| l == want) {
                return msg;
            }
        }
    }
    panic!("no {want} on NOTIFY_SOCKET{}", node.describe_for_failure());
}

/// Issue 12: readiness (READY=1 once clients are served, STOPPING=1 on
/// SIGTERM) through a NOTIFY_SOCKET; an unreachable bootstrap address is
/// warned about in the log and in `status` with its error (defect 3);
/// `status` shows version, uptime, config, data dir and log level; SIGHUP
/// reloads the config, and a new log level takes effect, instead of killing
/// the daemon (defect 7).
#[test]
fn readiness_status_warnings_and_sighup_reload() {
    const N: u8 = 102;
    let dead = ip(N, 9); // nothing listens there
    let node = Node::configure(
        N,
        2,
        NodeOpts {
            bootstrap: vec![dead.clone()],
            ..NodeOpts::default()
        },
    );
    let info = node
        .config_text()
        .replace("level = \"debug\"", "level = \"info\"");
    assert!(info.contains("level = \"info\""));
    fs::write(node.config_path(), &info).expect("write config");
    let notify_path = node.dir().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("bind notify socket");
    sock.set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .expect("timeout");
    let mut daemon = spawn_with_notify(&node, &notify_path);

    let ready = notified(&sock, "READY=1", &node);
    assert!(
        ready.contains("STATUS="),
        "READY=1 comes with a status: {ready:?}"
    );
    // Ready means ready: the client socket answers at once, no polling.
    let s = node.status();
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"), "{s}");
    assert!(s["uptime_secs"].is_u64(), "{s}");
    assert_eq!(s["config_file"], node.config_str(), "{s}");
    assert_eq!(
        s["data_dir"],
        node.data_dir().to_str().expect("utf-8"),
        "{s}"
    );
    assert_eq!(s["log_level"], "info", "{s}");
    assert!(
        node.log().lines().any(|l| l.contains(" INFO ready")),
        "a `ready` log line: {}",
        node.log_tail(10)
    );

    // The dead bootstrap address: its error in status, a warning in both.
    let s = wait_for_value(
        LINK_TIMEOUT,
        "the bootstrap error in status",
        &[&node],
        || {
            node.try_status()
                .filter(|s| s["bootstrap"][0]["last_error"].is_string())
        },
    );
    assert_eq!(s["bootstrap"][0]["address"], listen_addr(N, 9), "{s}");
    let warning = s["warnings"][0].as_str().unwrap_or_default().to_string();
    assert!(
        warning.contains("no neighbours") && warning.contains(&listen_addr(N, 9)),
        "{s}"
    );
    let human = node.cli("status", &[]);
    assert!(
        human.ok() && human.stderr.contains("warning: no neighbours"),
        "{human}"
    );
    assert!(
        human.stdout.contains("last error:") && human.stdout.contains("log level  info"),
        "{human}"
    );
    wait_for(
        LINK_TIMEOUT,
        "the no-neighbours warning in the log",
        &[&node],
        || {
            let log = node.log();
            log.contains("cannot reach a bootstrap node")
                && log.contains(&format!("no neighbours; bootstrap: {}", listen_addr(N, 9)))
        },
    );
    assert!(
        !node.log().contains("client request"),
        "at info, client requests are not logged"
    );

    // SIGHUP with log.level = "debug": the daemon stays, logs the reload,
    // and logs at debug from then on.
    // The bootstrap list and [limits] change live too.
    let reloaded = format!(
        "{}\n[limits]\nhandshakes_per_ip = 1\n",
        info.replace("level = \"info\"", "level = \"debug\"")
            .replace(&format!("{dead:?}"), &format!("{:?}", ip(N, 8)))
    );
    assert!(reloaded.contains(&ip(N, 8)), "{reloaded}");
    fs::write(node.config_path(), reloaded).expect("write config");
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(daemon.child.id() as libc::pid_t, libc::SIGHUP) };
    let reloading = notified(&sock, "RELOADING=1", &node);
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading:?}");
    notified(&sock, "READY=1", &node);
    wait_for(LINK_TIMEOUT, "the reload in the log", &[&node], || {
        node.log().contains("log.level info -> debug")
    });
    assert!(
        daemon.child.try_wait().expect("try_wait").is_none(),
        "SIGHUP must not kill it"
    );
    let s = node.status();
    assert_eq!(s["log_level"], "debug", "{s}");
    assert_eq!(s["bootstrap"][0]["address"], listen_addr(N, 8), "{s}");
    let log = node.log();
    assert!(
        log.contains(&format!(
            "network.bootstrap [{}] -> [{}]",
            listen_addr(N, 9),
            listen_addr(N, 8)
        )) && log.contains("[limits] (for new links"),
        "what was applied: {}",
        node.log_tail(10)
    );
    // The new [limits] hold for the next handshakes: with one pending
    // handshake per source, a second silent connection from this source
    // makes the first one go at once (with the old 8, it would wait for
    // its handshake timeout, 5 s).
    {
        use std::io::Read;
        let to: std::net::SocketAddr = node.listen().parse().expect("listen address");
        let mut first = std::net::TcpStream::connect(to).expect("first connection");
        let _second = std::net::TcpStream::connect(to).expect("second connection");
        first
            .set_read_timeout(Some(std::time::Duration::from_secs(4)))
            .expect("timeout");
        let mut byte = [0u8; 1];
        let cut = matches!(first.read(&mut byte), Ok(0))
            || matches!(first.read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset);
        assert!(cut, "handshakes_per_ip = 1 took effect without a restart");
    }
    wait_for(
        LINK_TIMEOUT,
        "a debug line after the reload",
        &[&node],
        || {
            let log = node.log();
            log.split("log.level info -> debug")
                .nth(1)
                .is_some_and(|after| after.contains("client request"))
        },
    );

    // SIGTERM: STOPPING=1, exit 0, the socket removed.
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(daemon.child.id() as libc::pid_t, libc::SIGTERM) };
    notified(&sock, "STOPPING=1", &node);
    let status = wait_for_value(LINK_TIMEOUT, "the daemon to exit", &[&node], || {
        daemon.child.try_wait().expect("try_wait")
    });
    assert_eq!(status.code(), Some(0), "{}", node.log_tail(20));
    assert!(
        !node.data_dir().join("hermes.sock").exists(),
        "socket removed"
    );
}

/// Issue 12: `hermes outbox` shows what waits and `outbox cancel` removes
/// it; `pull --peek` shows without removing; `peers` does not list the node
/// itself after it wrote to its own IP (defect 6); `push --wait` prints
/// nothing on a standard error that is not a terminal.
#[test]
fn outbox_cancel_peek_and_peers_without_self() {
    const N: u8 = 103;
    let mut nodes = line(N, 2);
    let b_address = nodes[1].address();
    nodes[1].kill();
    let a = &nodes[0];
    wait_for(LINK_TIMEOUT, "the link to .3 to go", &[a], || {
        a.neighbour_listens().is_empty()
    });
    // On a terminal (script(1) gives the command one), `push --wait` shows a
    // spinner while it waits; here it times out (exit 3), the message queued.
    let cmd = format!(
        "{BIN} --config {} push --to {b_address} --msg 'for a node that is gone' --wait 1",
        a.config_str()
    );
    let tty = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run script(1)");
    let shown = String::from_utf8_lossy(&tty.stdout).into_owned();
    assert_eq!(tty.status.code(), Some(3), "--wait 1 times out: {shown}");
    assert!(
        shown.contains("waiting for the delivery receipt"),
        "a spinner on a terminal: {shown:?}"
    );
    let id = shown.lines().next().unwrap_or_default().trim().to_string();
    assert_eq!(id.len(), 32, "the id first: {shown:?}");
    let out = a.cli("outbox", &["--json"]);
    assert!(out.ok(), "{out}");
    let entries: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("outbox --json prints JSON lines"))
        .collect();
    assert_eq!(entries.len(), 1, "{out}");
    let e = &entries[0];
    assert_eq!(e["id"], id.as_str(), "{e}");
    assert_eq!(e["to"], b_address.as_str(), "{e}");
    assert_eq!(e["state"], "queued", "{e}");
    for k in ["attempts", "created_ms", "next_try_ms", "expires_at"] {
        assert!(e[k].is_u64(), "{k}: {e}");
    }
    let text = a.cli("outbox", &[]);
    assert!(
        text.ok() && text.stdout.contains(&id) && text.stdout.contains("queued"),
        "{text}"
    );

    let out = a.cli("outbox", &["cancel", &id]);
    assert!(out.ok(), "{out}");
    let out = a.cli("outbox", &["--json"]);
    assert!(out.ok() && out.stdout.trim().is_empty(), "cancelled: {out}");
    let again = a.cli("outbox", &["cancel", &id]);
    assert_eq!(again.code, Some(1), "nothing left to cancel: {again}");
    assert!(again.stderr.contains("no message"), "{again}");
    let bad = a.cli("outbox", &["cancel", "not-an-id"]);
    assert_eq!(bad.code, Some(1), "{bad}");

    // To itself: delivered; --wait quiet on a pipe.
    let own = a.cli(
        "push",
        &["--to", &a.ip(), "--msg", "note to self", "--wait", "20"],
    );
    assert_eq!(own.code, Some(0), "{own}");
    assert_eq!(
        own.stderr, "",
        "no spinner when stderr is not a terminal: {own}"
    );
    let want = vec![pull_line(&a.ip(), "note to self")];
    for _ in 0..2 {
        let peek = a.cli("pull", &["--peek"]);
        assert!(peek.ok(), "{peek}");
        assert_eq!(
            peek.stdout.lines().collect::<Vec<_>>(),
            want,
            "peek keeps: {peek}"
        );
    }
    assert_eq!(a.pull(), want);
    assert!(a.pull().is_empty());

    let peers = a.cli("peers", &["--json"]);
    assert!(peers.ok(), "{peers}");
    assert!(
        !peers.stdout.contains(&a.address()),
        "the node is not its own peer: {peers}"
    );
    assert!(peers.stdout.contains(&b_address), "{peers}");
}

/// A node listening on 0.0.0.0 is its own recipient at 127.0.0.1: the probe
/// that reaches itself answers with its own record (it used to fail with
/// "peer is this node itself").
#[test]
fn push_to_loopback_of_a_wildcard_node_lands_in_its_inbox() {
    const N: u8 = 96;
    // Below Linux's ephemeral range (32768 up), so that no outgoing
    // connection of a test running beside holds it (see tests/legacy.rs).
    let port = 20_000 + 10 * u16::from(N);
    let mut node = Node::configure(N, 2, NodeOpts::default());
    let text = node.config_text().replace(
        &format!("listen = \"{}\"", node.listen()),
        &format!("listen = \"0.0.0.0:{port}\""),
    );
    assert!(text.contains("0.0.0.0"), "{text}");
    fs::write(node.config_path(), text).expect("write config");
    node.spawn_process();
    node.wait_ready();
    let msg = format!("to myself {}", random_hex(6));
    let out = node.cli(
        "push",
        &["--to", &format!("127.0.0.1:{port}"), "--msg", &msg],
    );
    assert!(out.ok(), "push to a loopback address of this node: {out}");
    let got = node.pull_until(DELIVERY_TIMEOUT, "the message to itself", |l| !l.is_empty());
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].ends_with(&format!("MSG:{msg}")), "{got:?}");
}
