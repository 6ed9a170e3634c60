//! Shared harness for the integration tests: real `hermes` daemons on loopback addresses.
//!
//! Every test gets its own loopback range `127.0.N.x` so that all tests can run in
//! parallel (within one test binary and across binaries). Node `h` of a test listens on
//! `127.0.N.h:58008`; nodes are numbered from 2 (`.2`, `.3`, `.4`, ...).
//!
//! # Allocation of N (one per test; never reuse a number)
//!
//! | N  | file               | test                                              |
//! |----|--------------------|---------------------------------------------------|
//! | 10 | delivery.rs        | line_push_arrives_and_second_pull_is_empty        |
//! | 11 | delivery.rs        | pull_json_has_all_fields                          |
//! | 12 | delivery.rs        | push_wait_returns_0_once_delivered                |
//! | 13 | delivery.rs        | bootstrap_node_started_last_is_still_joined       |
//! | 14 | delivery.rs        | probe_of_the_recipient_leaves_no_standing_link    |
//! | 15 | client.rs          | push_reads_stdin_and_takes_a_node_address         |
//! | 16 | client.rs          | config_found_through_env_and_xdg                  |
//! | 17 | client.rs          | json_logs_are_json_and_never_hold_the_text        |
//! | 18 | client.rs          | push_to_own_ip_lands_in_own_inbox                 |
//! | 19 | client.rs          | status_and_peers_show_links_and_the_address_book  |
//! | 20 | restarts.rs        | recipient_killed_before_push_gets_it_once         |
//! | 21 | restarts.rs        | relay_killed_while_200_messages_flow              |
//! | 22 | restarts.rs        | recipient_killed_between_delivery_and_pull        |
//! | 23 | restarts.rs        | sender_killed_right_after_push_still_delivers     |
//! | 24 | names.rs           | gossiped_record_claiming_the_recipients_ip_...    |
//! | 25 | names.rs           | changed_key_at_a_pinned_ip_is_refused_until_...   |
//! | 26 | names.rs           | contacts_name_pinned_keys                         |
//! | 30 | hostile_peers.rs   | random_bytes_are_cut_off                          |
//! | 31 | hostile_peers.rs   | oversized_length_prefix_then_silence_is_cut_off   |
//! | 32 | hostile_peers.rs   | oversized_length_prefix_then_garbage_is_cut_off   |
//! | 33 | hostile_peers.rs   | silent_connection_is_cut_off                      |
//! | 34 | hostile_peers.rs   | stall_mid_noise_handshake_is_cut_off              |
//! | 35 | hostile_peers.rs   | garbage_after_noise_handshake_is_cut_off          |
//! | 36 | hostile_peers.rs   | forged_and_future_records_stay_out_of_the_book    |
//! | 40 | cli.rs             | push_without_daemon_exits_2_with_one_line         |
//! | 41 | cli.rs             | bad_config_value_exits_1_naming_the_key           |
//! | 42 | cli.rs             | unknown_config_key_exits_1_naming_it              |
//! | 43 | cli.rs             | id_prints_the_status_address                      |
//! | 44 | cli.rs             | status_json_has_all_fields                        |
//! | 45 | cli.rs             | usage_errors_exit_1                               |
//! | 46 | cli.rs             | bad_listen_value_exits_1_naming_the_key           |
//! | 47 | admission.rs       | renewed_silent_connections_do_not_keep_a_newcomer_out |
//! | 48 | admission.rs       | connect_close_flood_is_summarised_not_logged_per_connection |
//! | 49 | admission.rs       | fresh_keys_linking_and_unlinking_do_not_flood_the_log |
//! |  - | cli.rs             | missing_explicit_config_exits_1 (binds nothing)   |
//! | 50 | privacy.rs         | relay_never_stores_or_logs_plaintext              |
//! | 51 | budgets.rs         | junk_flood_is_cut_refused_and_bounded_by_the_budget |
//! | 52 | budgets.rs         | large_frames_break_the_byte_budget                |
//! | 53 | budgets.rs         | busy_honest_line_stays_within_the_default_budgets |
//! | 54 | budgets.rs         | too_many_new_packets_per_minute_cut_the_link      |
//! | 56 | trust.rs           | replayed_and_re_timed_copies_are_delivered_once   |
//! | 57 | trust.rs           | replay_after_the_time_to_live_with_a_new_expiry_is_refused |
//! | 58 | trust.rs           | tampered_copies_for_any_attempt_do_not_stop_the_genuine_one |
//! | 59 | trust.rs           | rewritten_receipts_do_not_settle_a_message        |
//! | 60 | supervision.rs     | router_panic                                      |
//! | 61 | supervision.rs     | router_error                                      |
//! | 62 | supervision.rs     | neighbours_panic                                  |
//! | 63 | supervision.rs     | neighbours_error                                  |
//! | 64 | supervision.rs     | inbox_panic                                       |
//! | 65 | supervision.rs     | inbox_error                                       |
//! | 66 | supervision.rs     | listener_panic                                    |
//! | 67 | supervision.rs     | listener_error                                    |
//! | 68 | supervision.rs     | debug_fault_refused_without_env                   |
//! | 70 | legacy.rs          | legacy_push_and_pull (legacy ports 40000+10N+h)    |
//! | 71 | trust.rs           | retries_of_an_undeliverable_message_cost_relays_nothing_lasting |
//! | 72 | durability.rs      | full_disk_recipient_acknowledges_only_what_it_stored |
//! | 90-93 | store_damage.rs | (store damage, check, salvage, backup, modes)     |
//! | 80 | shutdown.rs        | sigterm_exits_0_and_neighbour_forgets_it          |
//! | 81 | shutdown.rs        | queued_message_survives_restart                   |
//! | 82 | shutdown.rs        | sigint_exits_0                                    |
//! | 83 | overlay.rs         | thirty_nodes_converge_survive_churn_and_rejoin    |
//! | 84 | overlay.rs         | full_network_lets_a_newcomer_in                   |
//! | 85 | overlay.rs         | sigterm_leaves_rest_connected                     |
//! | 86 | overlay.rs         | restart_without_bootstrap_uses_the_address_book   |
//! | 87 | overlay.rs         | frozen_neighbour_is_cut_and_replaced              |
//! | 110 | overlay.rs        | min_equals_max_is_one_component_and_admits_a_newcomer |
//! | 111 | overlay.rs        | links_leave_from_the_listen_ip                    |
//! | 112 | overlay.rs        | eclipsed_node_restarted_finds_its_honest_neighbours |
//! | 113-119 | (overlay, reserved)                                          |
//! | 124 | onion.rs          | hundred_messages_take_many_paths_and_arrive_once (.2-.11) |
//! | 125 | onion.rs          | relays_hold_no_plaintext (.2-.6)                  |
//! | 125 | onion.rs          | paths_between_non_neighbours_deliver (.20-.25)    |
//! | 126 | onion.rs          | two_relays_killed_while_fifty_messages_fly (.2-.11) |
//! | 127 | onion.rs          | recipient_down_twenty_seconds_gets_all_ten (.2-.7) |
//! | 127 | onion.rs          | origin_killed_with_messages_pending_resends_after_restart (.20-.25) |
//! | 128 | onion.rs          | replayed_packet_is_dropped_and_counted (.2-.3, hostile .200-.201) |
//! | 128 | onion.rs          | push_wait_and_a_60000_byte_message (.20-.24)      |
//! | 129 | onion.rs          | small_network_sends_and_says_relays_known (.2-.4) |
//! | 129 | onion.rs          | non_relay_relays_nothing (.20-.26)                |
//! | 129 | onion.rs          | onion_packets_count_against_the_peers_entry_budget (.40, hostile .210) |
//! | 123 | link_cells.rs     | all three: link_capture_shows_one_message_size (.2, .3, proxy .10), ..._in_onion_mode (.4, .5, proxy .11), malformed_cells_cost_the_link (.20, peers .30-.39) |
//! | 90 | store_damage.rs    | damage_after_sigterm_is_refused_or_intact         |
//! | 121 | onion_keys.rs     | packet_key_rotates_and_reaches_neighbours_and_new_links |
//! | 122 | onion_keys.rs     | damaged_packet_keys_stop_the_daemon_with_what_to_do |
//! | 91 | store_damage.rs    | damage_after_sigkill_is_refused_or_intact         |
//! | 92 | store_damage.rs    | store_check_salvage_and_backup                    |
//! | 93 | store_damage.rs    | data_dir_made_private_and_open_one_refused        |
//! | 94 | client.rs          | push_each_line_pipelines_and_names_refused_lines  |
//! | 95 | delivery.rs        | receipt_goes_back_only_the_way_the_message_came   |
//! | 96 | client.rs          | push_to_loopback_of_a_wildcard_node_lands_in_its_inbox (port 40960) |
//! | 100 | cli.rs            | errors_say_their_cause_once_and_how_to_go_on      |
//! | 101 | cli.rs            | long_multibyte_and_empty_messages_are_refused_... (binds nothing) |
//! | 102 | client.rs         | readiness_status_warnings_and_sighup_reload       |
//! | 103 | client.rs         | outbox_cancel_peek_and_peers_without_self         |
//! | 104-109 | (ops, issue 12) | reserved                                      |
//! | 130 | replay_budget.rs  | a_peer_filling_the_replay_tags_does_not_stop_the_relay (.2-.4, hostile .200) |
//! | 131 | replay_budget.rs  | (reserved)                                        |
//! | 132 | onion.rs          | junk_first_parts_from_one_peer_do_not_block_long_messages (.20-.24, hostile .210) |
//! | 240-245 | hermes-bench    | onion phase (`--net-onion`, default 127.0.240.2-.6; 241-245 reserved) |
//!
//! Free for new tests: 27-29, 37-39, 55, 69, 75-79, 97-99, 113-119, 132-199, 246-255
//! (120-129: onion, issue 9, of which 123: link cells; 200-245: hermes-bench).
//!
//! Set `HERMES_TEST_KEEP=1` to keep a failed test's node dirs (config, data, log).
//!
//! # Rules
//! - Never sleep a fixed time to wait for a condition: use [`wait_for`].
//! - Daemons are SIGKILLed when their [`Node`] is dropped (also when a test panics), and
//!   additionally get `PR_SET_PDEATHSIG = SIGKILL`, so spawn nodes from the test's own
//!   thread (the signal fires when the *spawning thread* exits).

#![allow(dead_code)]

pub mod hostile;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Display;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_hermes");
/// The peer port every test node listens on (the seed's port).
pub const PORT: u16 = 58008;
/// Default deadline for a client command (push, pull, status, ...).
pub const CMD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a daemon may take to answer `status` after being spawned.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a link may take to show up in `status` neighbours.
pub const LINK_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a message may take to travel end to end on a healthy line.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// True when the tests run as root (needed to mount a tmpfs or switch uid).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `127.0.N.h`
pub fn ip(n: u8, host: u8) -> String {
    format!("127.0.{n}.{host}")
}

/// `127.0.N.h:58008`
pub fn listen_addr(n: u8, host: u8) -> String {
    format!("127.0.{n}.{host}:{PORT}")
}

/// Polls `cond` every 75 ms until it holds or `timeout` passes; on timeout panics with
/// `what` and the last log lines of `nodes`.
pub fn wait_for(
    timeout: Duration,
    what: impl Display,
    nodes: &[&Node],
    mut cond: impl FnMut() -> bool,
) {
    let start = Instant::now();
    loop {
        if cond() {
            return;
        }
        if start.elapsed() >= timeout {
            let mut msg = format!("timed out after {timeout:?} waiting for: {what}");
            for node in nodes {
                msg.push_str(&node.describe_for_failure());
            }
            panic!("{msg}");
        }
        thread::sleep(Duration::from_millis(75));
    }
}

/// Like [`wait_for`], but the condition returns a value once it holds.
pub fn wait_for_value<T>(
    timeout: Duration,
    what: impl Display,
    nodes: &[&Node],
    mut cond: impl FnMut() -> Option<T>,
) -> T {
    let mut out = None;
    wait_for(timeout, what, nodes, || {
        out = cond();
        out.is_some()
    });
    out.expect("condition held")
}

/// The result of one client command.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    /// Exit code; `None` when the process was killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub args: Vec<String>,
}

impl CmdOutput {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

impl Display for CmdOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`hermes {}` exited {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args.join(" "),
            self.code,
            self.stdout,
            self.stderr
        )
    }
}

/// Runs `hermes ARGS` with a deadline (the process is SIGKILLed if it overruns, and the
/// call panics). `envs` are added to a cleaned environment (no `HERMES_CONFIG`, XDG dirs
/// pointing into `home`, so that no user config leaks in).
pub fn run_hermes(
    args: &[&str],
    home: &Path,
    envs: &[(&str, &str)],
    timeout: Duration,
) -> CmdOutput {
    run_hermes_with_input(args, home, envs, None, timeout)
}

/// [`run_hermes`] with `input` written to the command's standard input (then closed).
pub fn run_hermes_with_input(
    args: &[&str],
    home: &Path,
    envs: &[(&str, &str)],
    input: Option<&str>,
    timeout: Duration,
) -> CmdOutput {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let mut cmd = Command::new(BIN);
    cmd.args(&args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    clean_env(&mut cmd, home);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        // hermes may refuse the input (too long, say) and exit before it has
        // read all of it: the refusal is what the test checks, not the pipe.
        match stdin.write_all(text.as_bytes()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            other => other.expect("write to hermes stdin"),
        }
    }
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(timeout) {
        Ok(out) => out,
        Err(_) => {
            // SAFETY: plain kill(2) of the child we spawned (not yet reaped: the waiting
            // thread reaps it only after it exits).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let out = rx.recv().ok().and_then(|r| r.ok());
            panic!(
                "`hermes {}` did not finish within {timeout:?} (killed); partial stderr:\n{}",
                args.join(" "),
                out.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                    .unwrap_or_default()
            );
        }
    };
    let out = out.unwrap_or_else(|e| panic!("waiting for `hermes {}`: {e}", args.join(" ")));
    CmdOutput {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        args,
    }
}

fn clean_env(cmd: &mut Command, home: &Path) {
    cmd.env_remove("HERMES_CONFIG")
        .env_remove("HERMES_FAULT_INJECTION")
        .env("XDG_CONFIG_HOME", home.join("xdg-config"))
        .env("XDG_DATA_HOME", home.join("xdg-data"))
        .env("XDG_RUNTIME_DIR", home.join("xdg-runtime"));
}

/// Options of one test node; written into its config file.
#[derive(Debug, Clone)]
pub struct NodeOpts {
    /// Bootstrap addresses (`IP` or `IP:PORT`).
    pub bootstrap: Vec<String>,
    pub min_neighbours: u32,
    pub max_neighbours: u32,
    /// `[client] legacy_port`.
    pub legacy_port: Option<u16>,
    /// Run the daemon with `HERMES_FAULT_INJECTION=1`.
    pub fault_injection: bool,
    /// `[log] format = "json"` instead of text.
    pub log_json: bool,
    /// Extra TOML appended verbatim to the config (whole sections only).
    pub extra_toml: String,
    /// `[node] relay` (written only when false, so other configs stay as they were).
    pub relay: bool,
    /// `routing.mode`, if not the default (onion): tests of flood mode's
    /// own behaviour set `Some("flood")`. Merged into a `[routing]` section
    /// of `extra_toml` if it has one.
    pub routing_mode: Option<&'static str>,
}

impl Default for NodeOpts {
    fn default() -> Self {
        NodeOpts {
            bootstrap: Vec::new(),
            min_neighbours: 1,
            max_neighbours: 8,
            legacy_port: None,
            fault_injection: false,
            log_json: false,
            extra_toml: String::new(),
            relay: true,
            routing_mode: None,
        }
    }
}

/// One `hermes daemon` process with its own temporary directory:
/// `<tmp>/node.toml` (config), `<tmp>/data` (data_dir), `<tmp>/node.log` (stdout+stderr,
/// appended across restarts).
pub struct Node {
    pub n: u8,
    pub host: u8,
    pub opts: NodeOpts,
    tmp: TempDir,
    child: Option<Child>,
    starts: u32,
}

impl Node {
    /// Creates the temp dir and writes the config; starts no process.
    pub fn configure(n: u8, host: u8, opts: NodeOpts) -> Node {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("hermes-it-{n}-{host}-"))
            .tempdir()
            .expect("create temp dir");
        let node = Node {
            n,
            host,
            opts,
            tmp,
            child: None,
            starts: 0,
        };
        fs::create_dir_all(node.data_dir()).expect("create data dir");
        // Not writable by group or others whatever the umask: the daemon refuses such a dir.
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(node.data_dir(), fs::Permissions::from_mode(0o755))
                .expect("chmod data dir");
        }
        fs::write(node.config_path(), node.config_text()).expect("write config");
        node
    }

    /// Writes the config and spawns the daemon, without waiting for it to be ready.
    pub fn spawn(n: u8, host: u8, opts: NodeOpts) -> Node {
        let mut node = Node::configure(n, host, opts);
        node.spawn_process();
        node
    }

    /// Spawns the daemon and waits until `status` answers.
    pub fn start(n: u8, host: u8, opts: NodeOpts) -> Node {
        let node = Node::spawn(n, host, opts);
        node.wait_ready();
        node
    }

    /// The config file this harness writes for the node.
    pub fn config_text(&self) -> String {
        let bootstrap = self
            .opts
            .bootstrap
            .iter()
            .map(|b| format!("{b:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut text = format!(
            "[node]\nlisten = \"{listen}\"\ndata_dir = {data:?}\n\n\
             [network]\nbootstrap = [{bootstrap}]\nmin_neighbours = {min}\nmax_neighbours = {max}\n\n\
             [log]\nlevel = \"debug\"\nformat = \"{format}\"\n",
            listen = self.listen(),
            data = self.data_dir().to_str().expect("utf-8 temp path"),
            min = self.opts.min_neighbours,
            max = self.opts.max_neighbours,
            format = if self.opts.log_json { "json" } else { "text" },
        );
        if !self.opts.relay {
            // Still inside [node]: it is the first section of the file.
            text = text.replacen("\n\n[network]", "\nrelay = false\n\n[network]", 1);
        }
        if let Some(port) = self.opts.legacy_port {
            text.push_str(&format!("\n[client]\nlegacy_port = {port}\n"));
        }
        let mut extra = self.opts.extra_toml.clone();
        if let Some(mode) = self.opts.routing_mode {
            let line = format!("mode = {mode:?}\n");
            if let Some(at) = extra.find("[routing]\n") {
                extra.insert_str(at + "[routing]\n".len(), &line);
            } else {
                extra.push_str(&format!("\n[routing]\n{line}"));
            }
        }
        if !extra.is_empty() {
            text.push('\n');
            text.push_str(&extra);
            text.push('\n');
        }
        text
    }

    pub fn spawn_process(&mut self) {
        assert!(
            self.child.is_none(),
            "node {} is already running",
            self.listen()
        );
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open node log");
        writeln!(
            log,
            "===== hermes-it: start #{} of {} =====",
            self.starts,
            self.listen()
        )
        .ok();
        let mut cmd = Command::new(BIN);
        cmd.arg("daemon")
            .arg("--config")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log fd"))
            .stderr(log);
        clean_env(&mut cmd, self.tmp.path());
        if self.opts.fault_injection {
            cmd.env("HERMES_FAULT_INJECTION", "1");
        }
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to SIGKILL the
        // daemon if the spawning thread dies (e.g. the test binary is killed).
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {BIN} daemon: {e}"));
        self.child = Some(child);
    }

    pub fn ip(&self) -> String {
        ip(self.n, self.host)
    }
    pub fn listen(&self) -> String {
        listen_addr(self.n, self.host)
    }
    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }
    pub fn data_dir(&self) -> PathBuf {
        self.tmp.path().join("data")
    }
    pub fn config_path(&self) -> PathBuf {
        self.tmp.path().join("node.toml")
    }
    pub fn config_str(&self) -> String {
        self.config_path().to_str().expect("utf-8 path").to_owned()
    }
    pub fn log_path(&self) -> PathBuf {
        self.tmp.path().join("node.log")
    }
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Everything the daemon wrote to stdout/stderr so far (all starts).
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(self.log_path()) {
            let mut bytes = Vec::new();
            f.read_to_end(&mut bytes).ok();
            s = String::from_utf8_lossy(&bytes).into_owned();
        }
        s
    }

    /// The last `n` lines of the log.
    /// The last `n` lines of the log, leaving out the debug line of every
    /// client request (the tests' own `status` polls would fill the tail).
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| {
                !l.contains("DEBG client request") && !l.contains(r#""msg":"client request""#)
            })
            .collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn describe_for_failure(&self) -> String {
        let state = match &self.child {
            Some(c) if process_alive(c.id()) => format!("running, pid {}", c.id()),
            Some(c) => format!("exited, pid {}", c.id()),
            None => "not running".into(),
        };
        format!(
            "\n----- last log lines of node {} ({state}; log {}) -----\n{}\n",
            self.listen(),
            self.log_path().display(),
            self.log_tail(60)
        )
    }

    /// `Some(status)` if the daemon process has exited (it is then reaped and forgotten).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        match child.try_wait().expect("try_wait") {
            Some(st) => {
                self.child = None;
                Some(st)
            }
            None => None,
        }
    }

    /// Whether the daemon process is still alive (panics if it died: that is a bug).
    pub fn assert_alive(&mut self) {
        if let Some(st) = self.exited() {
            panic!(
                "daemon {} exited unexpectedly with {st}{}",
                self.listen(),
                self.describe_for_failure()
            );
        }
        assert!(
            self.child.is_some(),
            "daemon {} is not running",
            self.listen()
        );
    }

    /// Runs a client command against this node (`--config` is added after the subcommand).
    pub fn cli(&self, sub: &str, args: &[&str]) -> CmdOutput {
        self.cli_timeout(sub, args, CMD_TIMEOUT)
    }

    pub fn cli_timeout(&self, sub: &str, args: &[&str], timeout: Duration) -> CmdOutput {
        let cfg = self.config_str();
        let mut all = vec![sub, "--config", cfg.as_str()];
        all.extend_from_slice(args);
        run_hermes(&all, self.tmp.path(), &[], timeout)
    }

    /// Runs a client command with `input` on its standard input.
    pub fn cli_input(&self, sub: &str, args: &[&str], input: &str) -> CmdOutput {
        let cfg = self.config_str();
        let mut all = vec![sub, "--config", cfg.as_str()];
        all.extend_from_slice(args);
        run_hermes_with_input(&all, self.tmp.path(), &[], Some(input), CMD_TIMEOUT)
    }

    /// Runs `hermes ARGS` exactly as given (no `--config` added) in this node's
    /// environment, plus `envs`.
    pub fn cli_env(&self, args: &[&str], envs: &[(&str, &str)]) -> CmdOutput {
        run_hermes(args, self.tmp.path(), envs, CMD_TIMEOUT)
    }

    /// `hermes status --json`, if it exits 0 with one JSON object.
    pub fn try_status(&self) -> Option<Value> {
        let out = self.cli_timeout("status", &["--json"], Duration::from_secs(10));
        if !out.ok() {
            return None;
        }
        serde_json::from_str::<Value>(out.stdout.trim())
            .ok()
            .filter(|v| v.is_object())
    }

    /// `hermes status --json`; panics unless it exits 0 with one JSON object.
    pub fn status(&self) -> Value {
        let out = self.cli("status", &["--json"]);
        assert!(
            out.ok(),
            "status of {} failed: {out}{}",
            self.listen(),
            self.describe_for_failure()
        );
        serde_json::from_str::<Value>(out.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "status --json of {} is not one JSON object ({e}): {out}",
                self.listen()
            )
        })
    }

    /// Waits until the daemon answers `status --json` (panics, with the log, if the
    /// process exits or the deadline passes).
    pub fn wait_ready(&self) {
        let start = Instant::now();
        loop {
            if let Some(child) = &self.child {
                // try_wait needs &mut; probe liveness without reaping.
                if !process_alive(child.id()) {
                    panic!(
                        "daemon {} exited before it was ready{}",
                        self.listen(),
                        self.describe_for_failure()
                    );
                }
            } else {
                panic!("daemon {} is not running", self.listen());
            }
            if self.try_status().is_some() {
                return;
            }
            if start.elapsed() > READY_TIMEOUT {
                let last = self.cli_timeout("status", &["--json"], Duration::from_secs(10));
                panic!(
                    "daemon {} not ready within {READY_TIMEOUT:?}; last status: {last}{}",
                    self.listen(),
                    self.describe_for_failure()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// This node's address (status `address`).
    pub fn address(&self) -> String {
        self.status()["address"]
            .as_str()
            .unwrap_or_else(|| panic!("status of {} has no string `address`", self.listen()))
            .to_owned()
    }

    /// `hermes id`
    pub fn id(&self) -> String {
        let out = self.cli("id", &[]);
        assert!(out.ok(), "id failed: {out}");
        out.stdout.trim().to_owned()
    }

    /// The `listen` fields of the neighbours in `status`.
    pub fn neighbour_listens(&self) -> Vec<String> {
        neighbour_listens(&self.status())
    }

    /// Whether `status` lists a neighbour with `listen` (an `IP:PORT`).
    pub fn has_neighbour(&self, listen: &str) -> bool {
        match self.try_status() {
            Some(st) => neighbour_listens(&st).iter().any(|l| l == listen),
            None => false,
        }
    }

    /// `hermes push --to TO --msg MSG` (any exit).
    pub fn try_push(&self, to: &str, msg: &str) -> CmdOutput {
        self.cli("push", &["--to", to, "--msg", msg])
    }

    /// `hermes push --to TO --msg MSG`; asserts exit 0 and one hex line; returns the id.
    pub fn push(&self, to: &str, msg: &str) -> String {
        let out = self.try_push(to, msg);
        assert!(
            out.ok(),
            "push on {} failed: {out}{}",
            self.listen(),
            self.describe_for_failure()
        );
        parse_id(&out)
    }

    /// `hermes pull`; asserts exit 0; returns the lines.
    pub fn pull(&self) -> Vec<String> {
        let out = self.cli("pull", &[]);
        assert!(
            out.ok(),
            "pull on {} failed: {out}{}",
            self.listen(),
            self.describe_for_failure()
        );
        out.stdout.lines().map(|l| l.to_owned()).collect()
    }

    /// `hermes pull --json`; asserts exit 0; one JSON object per line.
    pub fn pull_json(&self) -> Vec<Value> {
        let out = self.cli("pull", &["--json"]);
        assert!(
            out.ok(),
            "pull --json on {} failed: {out}{}",
            self.listen(),
            self.describe_for_failure()
        );
        out.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str::<Value>(l)
                    .unwrap_or_else(|e| panic!("pull --json line is not JSON ({e}): {l:?}\n{out}"))
            })
            .collect()
    }

    /// Pulls repeatedly (accumulating lines) until `done(all lines so far)` or `timeout`.
    pub fn pull_until(
        &self,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut(&[String]) -> bool,
    ) -> Vec<String> {
        let mut all = Vec::new();
        let start = Instant::now();
        loop {
            all.extend(self.pull());
            if done(&all) {
                return all;
            }
            if start.elapsed() >= timeout {
                panic!(
                    "timed out after {timeout:?} pulling on {} for: {what}; pulled so far ({}): {:?}{}",
                    self.listen(),
                    all.len(),
                    all.iter().take(20).collect::<Vec<_>>(),
                    self.describe_for_failure()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL the daemon and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    /// SIGTERM the daemon and wait up to `timeout` for it to exit; returns its exit
    /// status. On timeout the daemon is SIGKILLed and this panics.
    pub fn term(&mut self, timeout: Duration) -> ExitStatus {
        self.signal_and_wait(libc::SIGTERM, timeout)
    }

    pub fn signal_and_wait(&mut self, sig: libc::c_int, timeout: Duration) -> ExitStatus {
        let mut child = self
            .child
            .take()
            .unwrap_or_else(|| panic!("node {} is not running", self.listen()));
        // SAFETY: kill(2) of our own, not yet reaped, child.
        unsafe { libc::kill(child.id() as libc::pid_t, sig) };
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                return st;
            }
            if start.elapsed() >= timeout {
                child.kill().ok();
                child.wait().ok();
                panic!(
                    "daemon {} did not exit within {timeout:?} after signal {sig}{}",
                    self.listen(),
                    self.describe_for_failure()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the daemon again with the same config and data dir, and waits until ready.
    pub fn restart(&mut self) {
        self.spawn_process();
        self.wait_ready();
    }

    /// Starts the daemon again with the same config and data dir, without waiting.
    pub fn respawn(&mut self) {
        self.spawn_process();
    }

    /// Replaces the bootstrap addresses and rewrites the config file, so that the next
    /// (re)start uses them (a running daemon does not reread its config).
    pub fn set_bootstrap(&mut self, bootstrap: Vec<String>) {
        self.opts.bootstrap = bootstrap;
        fs::write(self.config_path(), self.config_text()).expect("rewrite config");
    }

    /// The outbox counters `(queued, in_flight, delivered, failed)`.
    pub fn outbox(&self) -> (u64, u64, u64, u64) {
        outbox_counts(&self.status())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.describe_for_failure());
            if std::env::var_os("HERMES_TEST_KEEP").is_some() {
                self.tmp.disable_cleanup(true);
                eprintln!("(kept {})", self.tmp.path().display());
            }
        }
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

/// Whether `pid` exists and is not a zombie (works without reaping it).
fn process_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
    exists && !is_zombie(pid)
}

fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

/// The `listen` fields of `status.neighbours`.
pub fn neighbour_listens(status: &Value) -> Vec<String> {
    status["neighbours"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n["listen"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `(queued, in_flight, delivered, failed)` of `status.outbox` (missing fields panic).
pub fn outbox_counts(status: &Value) -> (u64, u64, u64, u64) {
    let f = |k: &str| {
        status["outbox"][k]
            .as_u64()
            .unwrap_or_else(|| panic!("status.outbox.{k} missing or not an integer: {status}"))
    };
    (f("queued"), f("in_flight"), f("delivered"), f("failed"))
}

/// Asserts a push printed exactly one line of hex and returns it.
pub fn parse_id(out: &CmdOutput) -> String {
    let lines: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "push should print exactly one line (the message id): {out}"
    );
    let id = lines[0].trim().to_owned();
    assert!(
        !id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit()),
        "push should print the message id in hex, got {id:?}: {out}"
    );
    id
}

/// Waits until both `a` and `b` list each other in `status.neighbours`.
pub fn wait_linked(a: &Node, b: &Node) {
    wait_for(
        LINK_TIMEOUT,
        format!(
            "link {} <-> {} in both nodes' status neighbours",
            a.listen(),
            b.listen()
        ),
        &[a, b],
        || a.has_neighbour(&b.listen()) && b.has_neighbour(&a.listen()),
    );
}

/// Sends one message `from` → `to` and waits until `to` pulls exactly it, so that
/// `from` has `to`'s signed record in its address book from then on.
pub fn warm_up(from: &Node, to: &Node) {
    let text = format!("warm-up {}", random_hex(8));
    from.push(&to.ip(), &text);
    let got = to.pull_until(DELIVERY_TIMEOUT, "the warm-up message", |l| !l.is_empty());
    assert_eq!(got, vec![pull_line(&from.ip(), &text)]);
}

/// Starts `count` nodes `127.0.N.2 ..` one after the other, node i bootstrapping from
/// node i-1, and waits until every link shows in both nodes' status.
pub fn line(n: u8, count: u8) -> Vec<Node> {
    line_with(n, count, |_, _| {})
}

/// Like [`line`], with `tweak(index, opts)` applied to each node's options (index 0 is `.2`).
pub fn line_with(n: u8, count: u8, mut tweak: impl FnMut(usize, &mut NodeOpts)) -> Vec<Node> {
    let mut nodes = Vec::new();
    for i in 0..count {
        let host = 2 + i;
        let mut opts = NodeOpts::default();
        if i > 0 {
            opts.bootstrap = vec![ip(n, host - 1)];
        }
        tweak(i as usize, &mut opts);
        // Start in order, each node once its predecessor is up and linked, so that a test
        // begins on a known topology (a node keeps redialling a bootstrap address that is
        // not up yet, but the test would then wait on its backoff).
        let node = Node::start(n, host, opts);
        if let Some(prev) = nodes.last() {
            wait_linked(prev, &node);
        }
        nodes.push(node);
    }
    nodes
}

/// The line `pull` prints for a message from `sender_ip`.
pub fn pull_line(sender_ip: &str, text: &str) -> String {
    format!("IP: {sender_ip} MSG:{text}")
}

/// `len` random lowercase hex characters.
pub fn random_hex(len: usize) -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| char::from_digit(rng.gen_range(0..16), 16).unwrap())
        .collect()
}

/// Starts `count` nodes `127.0.N.2 ..` with `opts`: node `.2` first, with no bootstrap
/// address, then all the others at once, each with `.2` as its only bootstrap address,
/// and waits until every daemon answers `status`.
///
/// `.2` is up before the others dial it, so that none of them begins on a redial
/// backoff. The others are spawned together: that is faster than waiting for each in
/// turn, and has them all knock on `.2` at once, the hard case for a membership layer.
pub fn start_network(n: u8, count: u8, opts: NodeOpts) -> Vec<Node> {
    let first = NodeOpts {
        bootstrap: Vec::new(),
        ..opts.clone()
    };
    let mut nodes = vec![Node::start(n, 2, first)];
    for host in 3..2 + count {
        let others = NodeOpts {
            bootstrap: vec![ip(n, 2)],
            ..opts.clone()
        };
        nodes.push(Node::spawn(n, host, others));
    }
    for node in &nodes[1..] {
        node.wait_ready();
    }
    nodes
}

/// One poll of the `status --json` neighbours of a set of nodes, seen as an undirected
/// graph over their listen addresses.
///
/// Only links between polled nodes are edges and count towards a node's degree: a
/// status may still list a neighbour that was just killed, and such a link connects
/// nobody. How many neighbours a status lists in all is kept apart, for the upper bound.
#[derive(Debug, Clone)]
pub struct Overlay {
    /// Each polled node's listen address with the `listen` of every neighbour its status
    /// lists (`None` if its status did not answer), in the order the nodes were given.
    listed: Vec<(String, Option<Vec<String>>)>,
}

impl Overlay {
    /// Polls the status of each of `nodes`, one after the other.
    pub fn poll(nodes: &[&Node]) -> Overlay {
        let listed = nodes
            .iter()
            .map(|node| {
                let neighbours = node.try_status().map(|st| neighbour_listens(&st));
                (node.listen(), neighbours)
            })
            .collect();
        Overlay { listed }
    }

    /// The listen addresses of the polled nodes, in the order they were given.
    pub fn members(&self) -> impl Iterator<Item = &str> {
        self.listed.iter().map(|(listen, _)| listen.as_str())
    }

    /// The distinct polled nodes that `listen`'s status lists as neighbours.
    fn neighbours_within(&self, listen: &str) -> BTreeSet<&str> {
        let members: BTreeSet<&str> = self.members().collect();
        self.listed
            .iter()
            .filter(|(l, _)| l == listen)
            .flat_map(|(_, neighbours)| neighbours.iter().flatten())
            .map(String::as_str)
            .filter(|n| *n != listen && members.contains(n))
            .collect()
    }

    /// How many of the polled nodes `listen`'s status lists as neighbours.
    pub fn degree(&self, listen: &str) -> usize {
        self.neighbours_within(listen).len()
    }

    /// How many neighbours `listen`'s status lists in all, polled or not (0 if its
    /// status did not answer).
    pub fn listed_count(&self, listen: &str) -> usize {
        self.listed
            .iter()
            .find(|(l, _)| l == listen)
            .and_then(|(_, neighbours)| neighbours.as_ref())
            .map_or(0, Vec::len)
    }

    /// The polled nodes whose status lists `listen` as a neighbour (polled or not).
    pub fn listers(&self, listen: &str) -> Vec<&str> {
        self.listed
            .iter()
            .filter(|(_, neighbours)| neighbours.iter().flatten().any(|n| n == listen))
            .map(|(l, _)| l.as_str())
            .collect()
    }

    /// The undirected graph over the polled nodes: `a`–`b` is an edge when either
    /// status lists the other (a link may show on one side a moment before the other).
    pub fn graph(&self) -> BTreeMap<&str, BTreeSet<&str>> {
        let mut graph: BTreeMap<&str, BTreeSet<&str>> =
            self.members().map(|m| (m, BTreeSet::new())).collect();
        for a in self.members() {
            for b in self.neighbours_within(a) {
                graph.entry(a).or_default().insert(b);
                graph.entry(b).or_default().insert(a);
            }
        }
        graph
    }

    /// The connected components of [`Overlay::graph`], largest first.
    pub fn components(&self) -> Vec<Vec<&str>> {
        let graph = self.graph();
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        let mut components = Vec::new();
        for &start in graph.keys() {
            if !seen.insert(start) {
                continue;
            }
            let mut component = vec![start];
            let mut queue = VecDeque::from([start]);
            while let Some(node) = queue.pop_front() {
                for &next in &graph[node] {
                    if seen.insert(next) {
                        component.push(next);
                        queue.push_back(next);
                    }
                }
            }
            component.sort_unstable();
            components.push(component);
        }
        components.sort_by_key(|c| std::cmp::Reverse(c.len()));
        components
    }

    /// Ok if every polled node has at least `min` neighbours among the polled nodes;
    /// else names those that have fewer.
    pub fn check_min(&self, min: usize) -> Result<(), String> {
        let short: Vec<String> = self
            .members()
            .filter(|m| self.degree(m) < min)
            .map(|m| format!("{m} ({})", self.degree(m)))
            .collect();
        if short.is_empty() {
            Ok(())
        } else {
            Err(format!("fewer than {min} neighbours: {}", short.join(", ")))
        }
    }

    /// Ok if no polled node's status lists more than `max` neighbours; else names those
    /// that list more.
    pub fn check_max(&self, max: usize) -> Result<(), String> {
        let over: Vec<String> = self
            .members()
            .filter(|m| self.listed_count(m) > max)
            .map(|m| format!("{m} ({})", self.listed_count(m)))
            .collect();
        if over.is_empty() {
            Ok(())
        } else {
            Err(format!("more than {max} neighbours: {}", over.join(", ")))
        }
    }

    /// Ok if the graph is connected; else says how it falls apart.
    pub fn check_connected(&self) -> Result<(), String> {
        let components = self.components();
        match components.len() {
            0 | 1 => Ok(()),
            k => Err(format!(
                "not connected: {k} components of sizes {:?}",
                components.iter().map(Vec::len).collect::<Vec<_>>()
            )),
        }
    }

    /// The listen addresses of the nodes whose logs best explain the failed check
    /// `why`: of the nodes it names (all, if it names none), the one with the fewest
    /// neighbours and the one whose status lists the most.
    fn suspects(&self, why: &str) -> Vec<&str> {
        let named: Vec<&str> = self.members().filter(|m| why.contains(m)).collect();
        let candidates = if named.is_empty() {
            self.members().collect()
        } else {
            named
        };
        let fewest = candidates.iter().copied().min_by_key(|m| self.degree(m));
        let most = candidates
            .iter()
            .copied()
            .max_by_key(|m| self.listed_count(m));
        let mut suspects: Vec<&str> = fewest.into_iter().chain(most).collect();
        suspects.dedup();
        suspects
    }
}

impl Display for Overlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "neighbours (degree among the polled nodes / count listed in status):"
        )?;
        for (listen, neighbours) in &self.listed {
            match neighbours {
                Some(list) => writeln!(
                    f,
                    "  {listen}  {}/{}  {}",
                    self.degree(listen),
                    list.len(),
                    list.join(" ")
                )?,
                None => writeln!(f, "  {listen}  status did not answer")?,
            }
        }
        let components = self.components();
        writeln!(f, "components ({}):", components.len())?;
        for component in components {
            writeln!(f, "  [{}] {}", component.len(), component.join(" "))?;
        }
        Ok(())
    }
}

/// Polls the overlay of `nodes` until `check` accepts it and returns that poll. After
/// `timeout` it panics with `what`, the last verdict and poll (every node's degree and
/// the components), and the log tails of the two nodes that best explain it (not all:
/// with 30 nodes that would bury the message).
pub fn wait_for_overlay(
    timeout: Duration,
    what: impl Display,
    nodes: &[&Node],
    mut check: impl FnMut(&Overlay) -> Result<(), String>,
) -> Overlay {
    let start = Instant::now();
    let mut polls = 0;
    loop {
        let overlay = Overlay::poll(nodes);
        polls += 1;
        let why = match check(&overlay) {
            Ok(()) => {
                eprintln!(
                    "overlay ok after {:.1?} ({polls} polls of {} nodes): {what}",
                    start.elapsed(),
                    nodes.len()
                );
                return overlay;
            }
            Err(why) => why,
        };
        if start.elapsed() >= timeout {
            let mut msg = format!(
                "timed out after {timeout:?} waiting for: {what}\nlast poll ({polls} in all): {why}\n{overlay}"
            );
            for suspect in overlay.suspects(&why) {
                if let Some(node) = nodes.iter().find(|n| n.listen() == suspect) {
                    msg.push_str(&node.describe_for_failure());
                }
            }
            panic!("{msg}");
        }
        thread::sleep(Duration::from_millis(200));
    }
}
