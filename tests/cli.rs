//! The command-line contract: exit codes (0 ok, 1 usage/bad input, 2 daemon not
//! reachable), config validation, `hermes id`, `hermes status --json`.

mod common;

use common::*;
use serde_json::Value;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

/// Runs `hermes daemon --config <node's config>` expecting it to exit by itself.
fn daemon_run_to_exit(node: &Node) -> CmdOutput {
    let cfg = node.config_str();
    run_hermes(
        &["daemon", "--config", &cfg],
        node.dir(),
        &[],
        Duration::from_secs(15),
    )
}

fn assert_no_panic(out: &CmdOutput) {
    assert!(
        !out.stderr.contains("panicked") && !out.stderr.contains("RUST_BACKTRACE"),
        "must be a clear message, never a panic: {out}"
    );
}

/// The daemon must refuse its config: exit 1, a stderr naming each of `names`, no panic.
fn assert_config_refused(out: &CmdOutput, why: &str, names: &[&str]) {
    assert_eq!(
        out.code,
        Some(1),
        "{why} must make the daemon exit 1: {out}"
    );
    for name in names {
        assert!(
            out.stderr.contains(name),
            "stderr must name {name:?}: {out}"
        );
    }
    assert_no_panic(out);
}

fn non_empty_lines(s: &str) -> Vec<&str> {
    s.lines().filter(|l| !l.trim().is_empty()).collect()
}

#[test]
fn push_without_daemon_exits_2_with_one_line() {
    const N: u8 = 40;
    let node = Node::configure(N, 2, NodeOpts::default());

    let out = node.try_push(&ip(N, 3), "nobody home");
    assert_eq!(
        out.code,
        Some(2),
        "push with no daemon running must exit 2: {out}"
    );
    assert_eq!(
        out.stdout.trim(),
        "",
        "no id may be printed when nothing was queued: {out}"
    );
    let lines = non_empty_lines(&out.stderr);
    assert_eq!(
        lines.len(),
        1,
        "expected a one-line message on stderr: {out}"
    );
    assert!(
        out.stderr.contains("hermes.sock"),
        "the message should say where it looked (<data_dir>/hermes.sock): {out}"
    );
    assert_no_panic(&out);

    for sub in ["pull", "status"] {
        let out = node.cli(sub, &[]);
        assert_eq!(
            out.code,
            Some(2),
            "`{sub}` with no daemon running must exit 2: {out}"
        );
        assert_eq!(
            non_empty_lines(&out.stderr).len(),
            1,
            "one-line message expected: {out}"
        );
        assert_no_panic(&out);
    }
}

#[test]
fn bad_config_value_exits_1_naming_the_key() {
    const N: u8 = 41;
    let node = Node::configure(N, 2, NodeOpts::default());
    let text = node
        .config_text()
        .replace("min_neighbours = 1", "min_neighbours = \"three\"");
    assert!(text.contains("\"three\""));
    fs::write(node.config_path(), text).unwrap();

    let out = daemon_run_to_exit(&node);
    assert_config_refused(
        &out,
        "a bad config value",
        &["network.min_neighbours", &node.config_str()],
    );
}

#[test]
fn bad_listen_value_exits_1_naming_the_key() {
    const N: u8 = 46;
    let node = Node::configure(N, 2, NodeOpts::default());
    let text = node.config_text().replace(&node.listen(), "not-an-address");
    fs::write(node.config_path(), text).unwrap();

    let out = daemon_run_to_exit(&node);
    assert_config_refused(&out, "a bad listen address", &["node.listen"]);
}

#[test]
fn unknown_config_key_exits_1_naming_it() {
    const N: u8 = 42;
    let node = Node::configure(
        N,
        2,
        NodeOpts {
            extra_toml: "[client]\nfavourite_colour = \"blue\"\n".into(),
            ..Default::default()
        },
    );
    let out = daemon_run_to_exit(&node);
    assert_config_refused(&out, "an unknown config key", &["favourite_colour"]);
}

#[test]
fn missing_explicit_config_exits_1() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-dir").join("node.toml");
    let missing = missing.to_str().unwrap();

    let out = run_hermes(
        &["daemon", "--config", missing],
        tmp.path(),
        &[],
        Duration::from_secs(15),
    );
    assert_config_refused(&out, "a missing explicit --config", &[missing]);

    let out = run_hermes(
        &[
            "push",
            "--config",
            missing,
            "--to",
            "127.0.0.9",
            "--msg",
            "x",
        ],
        tmp.path(),
        &[],
        Duration::from_secs(15),
    );
    assert_eq!(
        out.code,
        Some(1),
        "push with a missing explicit --config must exit 1: {out}"
    );
    assert_no_panic(&out);
}

#[test]
fn id_prints_the_status_address() {
    const N: u8 = 43;
    let mut node = Node::start(N, 2, NodeOpts::default());
    let id = node.id();
    assert!(
        !id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit()),
        "`hermes id` should print the hex address, got {id:?}"
    );
    assert_eq!(
        id,
        node.address(),
        "`hermes id` and status.address must agree"
    );

    let sock = node.data_dir().join("hermes.sock");
    let meta = fs::metadata(&sock)
        .unwrap_or_else(|e| panic!("client socket {} missing: {e}", sock.display()));
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "client socket must have mode 0600"
    );

    // The identity lives in data_dir: same address after a restart.
    node.kill();
    node.restart();
    assert_eq!(node.id(), id, "the address must survive a restart");
}

fn assert_u64(v: &Value, path: &str, st: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("status.{path} must be a non-negative integer: {st}"))
}

#[test]
fn status_json_has_all_fields() {
    const N: u8 = 44;
    let nodes = line(N, 2);
    let (a, b) = (&nodes[0], &nodes[1]);
    let a_addr = a.id();
    let b_addr = b.id();

    for (node, own, peer, peer_addr, dir) in [
        (a, &a_addr, b, &b_addr, "in"),
        (b, &b_addr, a, &a_addr, "out"),
    ] {
        let out = node.cli("status", &["--json"]);
        assert!(out.ok(), "{out}");
        assert_eq!(
            non_empty_lines(&out.stdout).len(),
            1,
            "status --json prints one JSON object (one line): {out}"
        );
        let st: Value = serde_json::from_str(out.stdout.trim()).unwrap();
        assert_eq!(st["address"].as_str(), Some(own.as_str()), "address: {st}");
        assert_eq!(
            st["listen"].as_str(),
            Some(node.listen().as_str()),
            "listen: {st}"
        );

        let ns = st["neighbours"]
            .as_array()
            .unwrap_or_else(|| panic!("neighbours must be an array: {st}"));
        assert_eq!(ns.len(), 1, "exactly one neighbour on a 2-node line: {st}");
        let nb = &ns[0];
        assert_eq!(
            nb["address"].as_str(),
            Some(peer_addr.as_str()),
            "neighbour address: {st}"
        );
        assert_eq!(
            nb["listen"].as_str(),
            Some(peer.listen().as_str()),
            "neighbour listen: {st}"
        );
        assert_eq!(
            nb["direction"].as_str(),
            Some(dir),
            "direction on {} (the bootstrapping .3 dials .2): {st}",
            node.listen()
        );

        for k in ["queued", "in_flight", "delivered", "failed"] {
            assert_u64(&st["outbox"][k], &format!("outbox.{k}"), &st);
        }
        assert_u64(&st["inbox"], "inbox", &st);
        assert_u64(&st["drop_list"], "drop_list", &st);
        for k in ["relayed", "dropped", "retried", "replays"] {
            assert_u64(&st["counters"][k], &format!("counters.{k}"), &st);
        }
    }
}

#[test]
fn usage_errors_exit_1() {
    const N: u8 = 45;
    let node = Node::start(N, 2, NodeOpts::default());
    let cfg = node.config_str();
    let cases: Vec<(&str, Vec<&str>)> = vec![
        (
            "push without --to",
            vec!["push", "--config", &cfg, "--msg", "hi"],
        ),
        ("unknown subcommand", vec!["frobnicate", "--config", &cfg]),
        (
            "unknown flag",
            vec!["status", "--config", &cfg, "--no-such-flag"],
        ),
        (
            "--wait with a non-number",
            vec![
                "push",
                "--config",
                &cfg,
                "--to",
                "127.0.45.3",
                "--msg",
                "hi",
                "--wait",
                "soon",
            ],
        ),
        (
            "an unresolvable destination",
            vec![
                "push",
                "--config",
                &cfg,
                "--to",
                "no such contact!",
                "--msg",
                "hi",
            ],
        ),
    ];
    for (what, args) in cases {
        let out = run_hermes(&args, node.dir(), &[], Duration::from_secs(15));
        assert_eq!(
            out.code,
            Some(1),
            "{what}: usage / bad input must exit 1: {out}"
        );
        assert!(
            !out.stderr.trim().is_empty(),
            "{what}: a message on stderr expected: {out}"
        );
        assert_no_panic(&out);
    }
}
