//! A damaged store is refused with one clear line, or comes up with everything it held;
//! never with less, silently. Plus `hermes store check`, `salvage` and `backup`, and the
//! data dir's modes (issue 8, docs/durability.md "Damage").
//!
//! The sample: node `.3` holds 20 unpulled inbox messages (from `.2`) and 10 queued
//! outbox messages (to `.2`, which is dead by then), and is stopped. Each damage is done
//! to a copy of its data dir, which a fresh daemon (same key, another address) opens.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

const INBOX: u64 = 20;
const OUTBOX: u64 = 10;

/// The two nodes of the sample; `.3` is stopped and holds the sample data dir.
struct Sample {
    _sender: Node,
    holder: Node,
}

impl Sample {
    fn data_dir(&self) -> PathBuf {
        self.holder.data_dir()
    }
}

/// Builds the sample on `127.0.N.{2,3}`; `.3` is stopped with SIGTERM, or SIGKILLed.
fn sample(n: u8, kill: bool) -> Sample {
    let mut nodes = line(n, 2);
    let mut holder = nodes.pop().expect("two nodes");
    let mut sender = nodes.pop().expect("two nodes");
    for i in 0..INBOX {
        sender.push(&holder.ip(), &format!("inbox message {i}"));
    }
    wait_for(
        DELIVERY_TIMEOUT,
        format!("{INBOX} messages in the inbox of {}", holder.listen()),
        &[&sender, &holder],
        || holder.try_status().is_some_and(|s| s["inbox"] == INBOX),
    );
    let to = sender.address();
    sender.kill();
    for i in 0..OUTBOX {
        holder.push(&to, &format!("outbox message {i}"));
    }
    let st = holder.status();
    let (q, f, _, _) = outbox_counts(&st);
    assert_eq!(q + f, OUTBOX, "the outbox should hold the 10 messages: {st}");
    if kill {
        holder.kill();
    } else {
        assert!(holder.term(Duration::from_secs(20)).success());
    }
    Sample {
        _sender: sender,
        holder,
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.file_type().unwrap().is_file() {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// One way to damage a data dir.
#[derive(Clone, Copy, Debug)]
enum Damage {
    /// 100 bytes inverted, from this fraction (per mille) of `store/db`.
    Flip100(u32),
    /// One bit flipped at this fraction (per mille) of `store/db`.
    FlipBit(u32),
    /// `store/db` cut to half its length.
    CutHalf,
    /// The first 4 KiB of `store/db` zeroed.
    ZeroHead,
    /// `store/db` emptied.
    EmptyDb,
    DeleteDb,
    DeleteStore,
    DeleteKey,
    DeleteManifest,
    /// Garbage in `store.manifest`.
    GarbleManifest,
}

impl Damage {
    fn apply(self, data: &Path) {
        let db = data.join("store").join("db");
        let at = |per_mille: u32, len: usize| (len as u64 * per_mille as u64 / 1000) as usize;
        match self {
            Damage::Flip100(p) => {
                let mut b = fs::read(&db).unwrap();
                let start = at(p, b.len()).min(b.len().saturating_sub(100));
                for x in &mut b[start..start + 100] {
                    *x = !*x;
                }
                fs::write(&db, b).unwrap();
            }
            Damage::FlipBit(p) => {
                let mut b = fs::read(&db).unwrap();
                let i = at(p, b.len()).min(b.len() - 1);
                b[i] ^= 0x10;
                fs::write(&db, b).unwrap();
            }
            Damage::CutHalf => {
                let len = fs::metadata(&db).unwrap().len();
                fs::OpenOptions::new()
                    .write(true)
                    .open(&db)
                    .unwrap()
                    .set_len(len / 2)
                    .unwrap();
            }
            Damage::ZeroHead => {
                let mut b = fs::read(&db).unwrap();
                let n = b.len().min(4096);
                b[..n].fill(0);
                fs::write(&db, b).unwrap();
            }
            Damage::EmptyDb => fs::write(&db, b"").unwrap(),
            Damage::DeleteDb => fs::remove_file(&db).unwrap(),
            Damage::DeleteStore => fs::remove_dir_all(data.join("store")).unwrap(),
            Damage::DeleteKey => fs::remove_file(data.join("identity.key")).unwrap(),
            Damage::DeleteManifest => fs::remove_file(data.join("store.manifest")).unwrap(),
            Damage::GarbleManifest => fs::write(data.join("store.manifest"), b"\x00garbage").unwrap(),
        }
    }

    /// The file a refusal must name.
    fn file(self) -> &'static str {
        match self {
            Damage::DeleteStore => "store",
            Damage::DeleteKey => "identity.key",
            Damage::DeleteManifest | Damage::GarbleManifest => "store.manifest",
            _ => "store",
        }
    }
}

enum Outcome {
    /// Exit status and what the daemon wrote.
    Refused(Option<i32>, String),
    Intact,
}

/// Starts a daemon on a copy of `sample` with `damage` done to it, on `127.0.N.host`;
/// panics unless it refuses (exit 1, one line naming the file) or comes up with every
/// inbox and outbox message.
fn start_damaged(sample: &Path, damage: Damage, n: u8, host: u8) -> Outcome {
    let mut node = Node::configure(n, host, NodeOpts::default());
    copy_dir(sample, &node.data_dir());
    damage.apply(&node.data_dir());
    node.respawn();
    let start = Instant::now();
    loop {
        if let Some(st) = node.exited() {
            let log = node.log();
            let said: Vec<&str> = log
                .lines()
                .filter(|l| !l.starts_with("===== hermes-it"))
                .collect();
            assert_eq!(
                st.code(),
                Some(1),
                "{damage:?}: the daemon should exit 1 when it refuses:\n{log}"
            );
            assert_eq!(
                said.len(),
                1,
                "{damage:?}: the refusal should be one line:\n{log}"
            );
            let line = said[0];
            let file = node.data_dir().join(damage.file());
            assert!(
                line.contains(file.to_str().unwrap()),
                "{damage:?}: the refusal should name {}: {line}",
                file.display()
            );
            assert!(
                line.contains("move the data dir aside") || line.contains("restore"),
                "{damage:?}: the refusal should say what to do: {line}"
            );
            eprintln!("{damage:?}: refused: {line}");
            return Outcome::Refused(st.code(), line.to_string());
        }
        if let Some(st) = node.try_status() {
            let (q, f, _, _) = outbox_counts(&st);
            assert!(
                st["inbox"] == INBOX && q + f == OUTBOX,
                "{damage:?}: the daemon came up with inbox {} and outbox {} (of {INBOX} and {OUTBOX}), silently{}",
                st["inbox"],
                q + f,
                node.describe_for_failure()
            );
            let pulled = node.pull();
            assert_eq!(pulled.len() as u64, INBOX, "{damage:?}: pull: {pulled:?}");
            eprintln!("{damage:?}: came up intact");
            return Outcome::Intact;
        }
        assert!(
            start.elapsed() < READY_TIMEOUT,
            "{damage:?}: the daemon neither refused nor answered{}",
            node.describe_for_failure()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

const OFFSETS: [u32; 6] = [0, 150, 400, 650, 900, 990];

#[test]
fn damage_after_sigterm_is_refused_or_intact() {
    const N: u8 = 90;
    let s = sample(N, false);
    let mut host = 10;
    let mut run = |d: Damage| {
        host += 1;
        start_damaged(&s.data_dir(), d, N, host)
    };
    // Whatever is deleted by hand must be refused, not replaced.
    for d in [
        Damage::DeleteKey,
        Damage::DeleteManifest,
        Damage::GarbleManifest,
        Damage::DeleteStore,
        Damage::DeleteDb,
        Damage::EmptyDb,
        Damage::ZeroHead,
    ] {
        assert!(matches!(run(d), Outcome::Refused(..)), "{d:?} must be refused");
    }
    run(Damage::CutHalf);
    for p in OFFSETS {
        run(Damage::Flip100(p));
        run(Damage::FlipBit(p));
    }
    // The undamaged copy comes up whole (the copy itself loses nothing).
    let mut node = Node::configure(N, 9, NodeOpts::default());
    copy_dir(&s.data_dir(), &node.data_dir());
    node.restart();
    assert_eq!(node.status()["inbox"], INBOX);
}

#[test]
fn damage_after_sigkill_is_refused_or_intact() {
    const N: u8 = 91;
    let s = sample(N, true);
    let mut host = 10;
    let mut run = |d: Damage| {
        host += 1;
        start_damaged(&s.data_dir(), d, N, host)
    };
    for d in [Damage::DeleteKey, Damage::DeleteStore, Damage::DeleteManifest] {
        assert!(matches!(run(d), Outcome::Refused(..)), "{d:?} must be refused");
    }
    run(Damage::CutHalf);
    run(Damage::ZeroHead);
    for p in OFFSETS {
        run(Damage::Flip100(p));
        run(Damage::FlipBit(p));
    }
    // A kill is no damage: the undamaged copy comes up whole.
    let mut node = Node::configure(N, 9, NodeOpts::default());
    copy_dir(&s.data_dir(), &node.data_dir());
    node.restart();
    assert_eq!(node.status()["inbox"], INBOX);
}
