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
    assert_eq!(
        got,
        vec![pull_line(&ip(N, 2), &dash), pull_line(&ip(N, 2), &bare)],
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
        let mut events = 0;
        for line in log.lines().filter(|l| !l.starts_with("===== hermes-it")) {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
            assert!(v.get("msg").is_some() && v.get("level").is_some(), "{line}");
            events += 1;
        }
        assert!(events > 0, "no log lines from {}", node.listen());
        assert!(!log.contains(&text), "the message text is in a log");
    }
    assert!(
        a.log().contains("message accepted") && b.log().contains("delivered"),
        "the sender logs the push and the recipient the delivery"
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
