//! Durability: a message accepted is delivered exactly once, whatever the
//! disks and the crashes do, and the sender is never told "delivered" early.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// A tmpfs mounted over a directory for the test's lifetime (needs root,
/// which CI has); unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }

    fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "remount {} with size {size}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Issue 8, item 1: the recipient's data dir is a 2 MB tmpfs and 400
/// messages of 4 KiB come in. Deliveries that cannot be stored are not
/// acknowledged (no receipt, nothing left visible); after the recipient is
/// killed, given room and restarted, every message is there exactly once and
/// the sender's outbox shows all 400 delivered. A message acknowledged
/// before it was on disk would be missing after the restart, and never sent
/// again.
#[test]
fn full_disk_recipient_acknowledges_only_what_it_stored() {
    if !is_root() {
        eprintln!("SKIPPED full_disk_recipient_acknowledges_only_what_it_stored: mounting a tmpfs needs root");
        return;
    }
    const N: u8 = 72;
    const COUNT: usize = 400;
    let mut r = Node::configure(
        N,
        3,
        NodeOpts {
            extra_toml: "[routing]\nretry_max = \"3s\"\n".into(),
            ..NodeOpts::default()
        },
    );
    let disk = Tmpfs::mount(&r.data_dir(), "2m").expect("mount a 2 MB tmpfs");
    r.spawn_process();
    r.wait_ready();
    let s = Node::start(
        N,
        2,
        NodeOpts {
            bootstrap: vec![r.listen()],
            extra_toml: "[routing]\nretry_max = \"3s\"\n".into(),
            ..NodeOpts::default()
        },
    );
    wait_linked(&s, &r);
    let pad = "x".repeat(4096);
    let mut texts = Vec::new();
    for i in 0..COUNT {
        let text = format!("{i:04} {pad}");
        s.push(&r.ip(), &text);
        texts.push(text);
    }
    // Let the disk fill: the recipient must have failed to store some.
    wait_for(
        Duration::from_secs(60),
        "the recipient to run out of disk",
        &[&r],
        || r.log().contains("cannot store a delivered message"),
    );
    wait_for(
        Duration::from_secs(60),
        "the sender to settle some",
        &[&s],
        || s.outbox().2 > 0,
    );
    // Two more rounds of retries of everything unsettled reach the full
    // recipient: a copy it cannot store must not be answered with a receipt
    // (the old code answered the second copy from the mark the failed write
    // had left in memory).
    let retried = |n: &Node| n.status()["counters"]["retried"].as_u64().unwrap_or(0);
    let (base, waiting) = (retried(&s), s.outbox().1);
    wait_for(
        Duration::from_secs(90),
        "two rounds of retries while the disk is full",
        &[&s, &r],
        || retried(&s) >= base + 2 * waiting,
    );
    let settled_before_kill = s.outbox().2;
    // A push on the full node fails loudly, with the reason.
    let out = r.try_push(&s.ip(), "while the disk is full");
    assert_eq!(out.code, Some(1), "push on a full disk: {out}");
    assert!(
        out.stderr.contains("No space left") && out.stderr.contains("restart"),
        "the reason and what to do: {out}"
    );
    assert_eq!(out.stderr.trim().lines().count(), 1, "one line: {out}");
    r.kill();
    disk.resize("64m");
    r.restart();
    wait_for(
        Duration::from_secs(120),
        "all 400 messages settled at the sender",
        &[&s, &r],
        || s.outbox() == (0, 0, COUNT as u64, 0),
    );
    // Texts are long: compare by their numbers, so failures stay readable.
    let number = |line: &str| -> Option<usize> {
        line.strip_prefix(&format!("IP: {} MSG:", s.ip()))
            .and_then(|t| t.get(..4))
            .and_then(|n| n.parse().ok())
    };
    let mut seen: BTreeMap<usize, usize> = BTreeMap::new();
    let mut other = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let lines = r.pull();
        let empty = lines.is_empty();
        for line in lines {
            match number(&line) {
                Some(i) if i < COUNT && line.ends_with(&texts[i]) => {
                    *seen.entry(i).or_default() += 1
                }
                _ => other += 1,
            }
        }
        if (seen.len() >= COUNT && empty) || Instant::now() >= deadline {
            break;
        }
    }
    let missing: Vec<usize> = (0..COUNT).filter(|i| !seen.contains_key(i)).collect();
    let twice: Vec<usize> = seen
        .iter()
        .filter(|(_, &n)| n > 1)
        .map(|(&i, _)| i)
        .collect();
    assert!(
        missing.is_empty() && twice.is_empty() && other == 0,
        "the sender counts all {COUNT} delivered (settled before the kill: \
         {settled_before_kill}), but the recipient is missing {missing:?}, has twice {twice:?}, \
         and {other} other lines"
    );
    drop(r);
    drop(disk);
}
