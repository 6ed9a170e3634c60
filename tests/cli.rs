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

/// Defect 1 of issue 12: a start-up failure says its cause once; a mistyped
/// key gets a guess; a client without a daemon says how to start one.
#[test]
fn errors_say_their_cause_once_and_how_to_go_on() {
    const N: u8 = 100;
    let node = Node::start(N, 2, NodeOpts::default());
    let second = daemon_run_to_exit(&node);
    assert_eq!(
        second.code,
        Some(1),
        "a second daemon on the same data dir: {second}"
    );
    assert_eq!(
        second
            .stderr
            .matches("another daemon uses this data dir")
            .count(),
        1,
        "the cause once: {second}"
    );
    assert_eq!(non_empty_lines(&second.stderr).len(), 1, "{second}");

    let dir = node.dir().to_str().expect("utf-8").to_string();
    let out = run_hermes(&["status", "--config", &dir], node.dir(), &[], CMD_TIMEOUT);
    assert_eq!(out.code, Some(1), "a config path that is a dir: {out}");
    assert_eq!(
        out.stderr.matches("Is a directory").count(),
        1,
        "the cause once: {out}"
    );

    let typo = node.dir().join("typo.toml");
    fs::write(&typo, "[network]\nbootstrp = []\n").expect("write config");
    let typo = typo.to_str().expect("utf-8").to_string();
    let out = run_hermes(&["status", "--config", &typo], node.dir(), &[], CMD_TIMEOUT);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stderr
            .contains("network.bootstrp: unknown key; did you mean `bootstrap`?"),
        "{out}"
    );

    let mut node = node;
    node.kill();
    let out = node.cli("status", &[]);
    assert_eq!(out.code, Some(2), "{out}");
    assert!(
        out.stderr.contains("the daemon is not running (looked at ")
            && out.stderr.contains("hermes.sock")
            && out.stderr.contains(&format!(
                "start it with `hermes daemon --config {}`",
                node.config_str()
            )),
        "where it looked and how to start it: {out}"
    );
    assert_eq!(non_empty_lines(&out.stderr).len(), 1, "{out}");
}

/// Defects 5 and 8 of issue 12: over-long multi-byte input is refused for
/// its size (not as bad UTF-8), and an empty message is refused (exit 1),
/// before any daemon is asked.
#[test]
fn long_multibyte_and_empty_messages_are_refused_for_what_they_are() {
    const N: u8 = 101;
    let node = Node::configure(N, 2, NodeOpts::default());
    // 100 KB of two-byte characters: the 60,000-byte cut falls inside one.
    let long = "é".repeat(50_000);
    let out = node.cli_input("push", &["--to", &ip(N, 3)], &long);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stderr.contains("over the 60000-byte limit") && !out.stderr.contains("UTF-8"),
        "the size is what is wrong: {out}"
    );
    // Exactly at the limit (with the trailing newline a shell adds) is fine
    // as far as the client goes: it then looks for the daemon (exit 2).
    let at_limit = format!("{}\n", "é".repeat(30_000));
    let out = node.cli_input("push", &["--to", &ip(N, 3)], &at_limit);
    assert_eq!(out.code, Some(2), "60,000 bytes are allowed: {out}");

    for (how, out) in [
        (
            "--msg \"\"",
            node.cli("push", &["--to", &ip(N, 3), "--msg", ""]),
        ),
        (
            "empty stdin",
            node.cli_input("push", &["--to", &ip(N, 3)], ""),
        ),
        (
            "a lone newline",
            node.cli_input("push", &["--to", &ip(N, 3)], "\n"),
        ),
    ] {
        assert_eq!(out.code, Some(1), "{how}: {out}");
        assert!(out.stderr.contains("the message is empty"), "{how}: {out}");
        assert_eq!(out.stdout.trim(), "", "{how}: no id: {out}");
    }
}

/// Defect 9 of issue 12: every option and argument of every command is described; the
/// config lookup and the size limit are in `--help`; `config/node.toml`
/// names every client command that reads it.
#[test]
fn help_describes_every_option_the_lookup_and_the_limit() {
    let home = tempfile::tempdir().expect("temp dir");
    let help = |args: &[&str]| {
        let out = run_hermes(args, home.path(), &[], CMD_TIMEOUT);
        assert_eq!(out.code, Some(0), "{out}");
        out.stdout
    };
    let top = help(&["--help"]);
    assert!(top.contains("$XDG_CONFIG_HOME/hermes/node.toml"), "{top}");
    assert!(top.contains("$HERMES_CONFIG"), "{top}");
    assert!(help(&["push", "--help"]).contains("60,000 bytes"));
    let subs = [
        vec!["daemon"],
        vec!["push"],
        vec!["pull"],
        vec!["status"],
        vec!["id"],
        vec!["peers"],
        vec!["contacts", "add"],
        vec!["contacts", "list"],
        vec!["contacts", "remove"],
        vec!["outbox"],
        vec!["outbox", "cancel"],
        vec!["store", "check"],
        vec!["store", "salvage"],
        vec!["store", "backup"],
        vec!["completions"],
        vec!["man"],
    ];
    for sub in subs {
        let mut args = sub.clone();
        args.push("--help");
        let text = help(&args);
        let mut in_options = false;
        for line in text.lines() {
            if line.starts_with("Options:") || line.starts_with("Arguments:") {
                in_options = true;
                continue;
            }
            if line.starts_with("Commands:") {
                in_options = false;
            }
            let item = line.trim_start();
            if in_options
                && (item.starts_with('-') || item.starts_with('<') || item.starts_with('['))
            {
                // "  -h, --help  Print help": a flag, then two spaces and words.
                let described = line
                    .trim()
                    .split_once("  ")
                    .is_some_and(|(_, d)| !d.trim().is_empty());
                assert!(
                    described,
                    "`hermes {}`: undescribed option: {line:?}",
                    sub.join(" ")
                );
            }
        }
    }
    let shipped = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/node.toml"))
        .expect("config/node.toml");
    let head: String = shipped.lines().take(12).collect::<Vec<_>>().join("\n");
    for cmd in [
        "push", "pull", "status", "id", "peers", "contacts", "outbox",
    ] {
        assert!(
            head.contains(cmd),
            "config/node.toml's head names `{cmd}`:\n{head}"
        );
    }
    let readme =
        fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    assert!(
        readme.contains("60,000 bytes"),
        "README states the size limit"
    );
}

/// Defect 10 of issue 12: the licenses Cargo.toml names are shipped.
#[test]
fn license_files_match_cargo_toml() {
    let root = env!("CARGO_MANIFEST_DIR");
    let cargo = fs::read_to_string(format!("{root}/Cargo.toml")).expect("Cargo.toml");
    assert!(cargo.contains("license = \"MIT OR Apache-2.0\""));
    let mit = fs::read_to_string(format!("{root}/LICENSE-MIT")).expect("LICENSE-MIT");
    assert!(mit.contains("Permission is hereby granted, free of charge"));
    let apache = fs::read_to_string(format!("{root}/LICENSE-APACHE")).expect("LICENSE-APACHE");
    assert!(apache.contains("Apache License") && apache.contains("Version 2.0"));
}

/// `hermes completions` gives scripts a shell accepts; `hermes man` a page
/// `man` renders.
#[test]
fn completions_parse_and_the_man_page_renders() {
    let home = tempfile::tempdir().expect("temp dir");
    for shell in ["bash", "zsh", "fish"] {
        let out = run_hermes(&["completions", shell], home.path(), &[], CMD_TIMEOUT);
        assert_eq!(out.code, Some(0), "{out}");
        assert!(
            out.stdout.contains("outbox"),
            "{shell}: the commands are in: {out}"
        );
    }
    let bash = run_hermes(&["completions", "bash"], home.path(), &[], CMD_TIMEOUT);
    let script = home.path().join("hermes.bash");
    fs::write(&script, &bash.stdout).expect("write completions");
    let check = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .expect("run bash -n");
    assert!(
        check.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let bad = run_hermes(&["completions", "tcsh"], home.path(), &[], CMD_TIMEOUT);
    assert_eq!(
        bad.code,
        Some(1),
        "an unknown shell is a usage error: {bad}"
    );

    let man = run_hermes(&["man"], home.path(), &[], CMD_TIMEOUT);
    assert_eq!(man.code, Some(0), "{man}");
    assert!(
        man.stdout.starts_with(".ie") || man.stdout.contains(".TH hermes"),
        "roff: {man}"
    );
    let page = home.path().join("hermes.1");
    fs::write(&page, &man.stdout).expect("write man page");
    let rendered = std::process::Command::new("man")
        .arg("-l")
        .arg(&page)
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .env("MANWIDTH", "100")
        .output();
    match rendered {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("SKIPPED the man -l check: `man` is not installed (apt-get install man-db)");
        }
        Err(e) => panic!("cannot run man: {e}"),
        Ok(r) => {
            let text = String::from_utf8_lossy(&r.stdout);
            assert!(
                r.status.success(),
                "man -l: {}",
                String::from_utf8_lossy(&r.stderr)
            );
            assert!(text.contains("NAME") && text.contains("hermes"), "{text}");
            assert!(text.contains("outbox"), "the commands are listed: {text}");
        }
    }
}
