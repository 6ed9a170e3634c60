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
    assert_eq!(
        q + f,
        OUTBOX,
        "the outbox should hold the 10 messages: {st}"
    );
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
    /// 100 bytes inverted from this byte offset of `store/db`.
    Flip100At(usize),
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
            Damage::Flip100At(at) => {
                let mut b = fs::read(&db).unwrap();
                let start = at.min(b.len().saturating_sub(100));
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
            Damage::GarbleManifest => {
                fs::write(data.join("store.manifest"), b"\x00garbage").unwrap()
            }
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
    Refused,
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
            return Outcome::Refused;
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
        assert!(matches!(run(d), Outcome::Refused), "{d:?} must be refused");
    }
    run(Damage::CutHalf);
    for p in OFFSETS {
        run(Damage::Flip100(p));
        run(Damage::FlipBit(p));
    }
    // The undamaged copy comes up whole (the copy itself loses nothing).
    let (_node, inbox, outbox) = start_on_copy(&s.data_dir(), N, 9);
    assert_eq!((inbox, outbox), (INBOX, OUTBOX));
    // Opened and closed once more (`store check` does), sled pads its log to a whole
    // segment and writes a snapshot: damage then stops sled from opening at all.
    let out = s.holder.cli("store", &["check"]);
    assert!(out.ok(), "{out}");
    let len = fs::metadata(s.data_dir().join("store").join("db"))
        .unwrap()
        .len() as usize;
    for at in [0, 4096, 12_288, 20_480, 28_672, len / 2, len - 100] {
        run(Damage::Flip100At(at));
    }
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
    for d in [
        Damage::DeleteKey,
        Damage::DeleteStore,
        Damage::DeleteManifest,
    ] {
        assert!(matches!(run(d), Outcome::Refused), "{d:?} must be refused");
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

/// The number before `what` in `text` ("kept 17 inbox" → 17 for "inbox").
fn count_before(text: &str, what: &str) -> u64 {
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[1].trim_end_matches(',') == what && w[0].parse::<u64>().is_ok())
        .and_then(|w| w[0].parse().ok())
        .unwrap_or_else(|| panic!("no count of {what:?} in: {text}"))
}

/// The number after `what` in `text` ("inbox 20," → 20 for "inbox").
fn count_after(text: &str, what: &str) -> u64 {
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[0] == what)
        .and_then(|w| w[1].trim_end_matches(',').parse().ok())
        .unwrap_or_else(|| panic!("no count of {what:?} in: {text}"))
}

/// Starts a daemon on a copy of the data dir `dir` and returns (inbox, outbox) from its
/// status.
fn start_on_copy(dir: &Path, n: u8, host: u8) -> (Node, u64, u64) {
    let mut node = Node::configure(n, host, NodeOpts::default());
    copy_dir(dir, &node.data_dir());
    node.restart();
    let st = node.status();
    let (q, f, _, _) = outbox_counts(&st);
    let inbox = st["inbox"].as_u64().unwrap();
    (node, inbox, q + f)
}

#[test]
fn store_check_salvage_and_backup() {
    const N: u8 = 92;
    let mut s = sample(N, false);
    let tmp = tempfile::tempdir().unwrap();
    // As the daemon left it: sled's log alone, no snapshot (check writes one).
    let pristine = tmp.path().join("pristine");
    copy_dir(&s.data_dir(), &pristine);

    // check: intact.
    let out = s.holder.cli("store", &["check"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("state      OK"), "{out}");
    assert!(
        out.stdout
            .contains(&format!("inbox {INBOX} / outbox {OUTBOX}")),
        "{out}"
    );

    // check of damaged copies: the first offset whose damage loses something is salvaged.
    // (Where the flip lands on a dead region the store is intact, and check says so.)
    let mut host = 30;
    let mut damaged = loop {
        host += 1;
        assert!(host < 40, "no 100-byte flip damaged the store");
        let p = [400, 150, 650, 900, 0][host as usize - 31];
        let node = Node::configure(N, host, NodeOpts::default());
        copy_dir(&pristine, &node.data_dir());
        Damage::Flip100(p).apply(&node.data_dir());
        let out = node.cli("store", &["check"]);
        match out.code {
            Some(0) => {
                eprintln!("Flip100({p}) intact: {}", out.stdout);
                assert!(out.stdout.contains("state      OK"), "{out}");
                assert!(
                    out.stdout
                        .contains(&format!("inbox {INBOX} / outbox {OUTBOX}")),
                    "check said OK with less: {out}"
                );
            }
            Some(1) => {
                assert!(out.stdout.contains("DAMAGED"), "{out}");
                assert!(out.stdout.contains("store/db"), "{out}");
                eprintln!("Flip100({p}): {}", out.stdout);
                break node;
            }
            _ => panic!("check exits 0 or 1: {out}"),
        }
    };
    let dest = tmp.path().join("salvaged");
    let out = damaged.cli("store", &["salvage", dest.to_str().unwrap()]);
    assert!(out.ok(), "salvage: {out}");
    let kept_inbox = count_before(&out.stdout, "inbox");
    let kept_outbox = count_before(&out.stdout, "outbox");
    count_before(&out.stdout, "drop-list");
    assert!(kept_inbox <= INBOX && kept_outbox <= OUTBOX, "{out}");
    assert!(
        out.stdout.contains("identity.key"),
        "salvage should say to copy the key: {out}"
    );
    let out = damaged.cli_env(&["store", "check", dest.to_str().unwrap()], &[]);
    // No key in the salvaged dir yet: check says so.
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stdout.contains("identity.key: missing"), "{out}");
    fs::copy(
        damaged.data_dir().join("identity.key"),
        dest.join("identity.key"),
    )
    .unwrap();
    let out = damaged.cli_env(&["store", "check", dest.to_str().unwrap()], &[]);
    assert_eq!(out.code, Some(0), "check of the salvaged store: {out}");
    let (_v, inbox, outbox) = start_on_copy(&dest, N, 22);
    assert_eq!(
        (inbox, outbox),
        (kept_inbox, kept_outbox),
        "a node on the salvaged store has what salvage said it kept"
    );
    damaged.kill();

    // backup of the running node; check refuses to open it meanwhile.
    s.holder.restart();
    let out = s.holder.cli("store", &["check"]);
    assert_eq!(out.code, Some(2), "check with the daemon running: {out}");
    assert!(out.stderr.contains("a daemon is running"), "{out}");
    let backup = tmp.path().join("backup");
    let out = s
        .holder
        .cli("store", &["backup", backup.to_str().unwrap(), "--with-key"]);
    assert!(out.ok(), "{out}");
    assert_eq!(count_after(&out.stdout, "inbox"), INBOX, "{out}");
    assert_eq!(count_after(&out.stdout, "outbox"), OUTBOX, "{out}");
    let out = s
        .holder
        .cli_env(&["store", "check", backup.to_str().unwrap()], &[]);
    assert_eq!(out.code, Some(0), "check of the backup: {out}");
    assert!(
        out.stdout
            .contains(&format!("inbox {INBOX} / outbox {OUTBOX}")),
        "{out}"
    );
    let (_b, inbox, outbox) = start_on_copy(&backup, N, 20);
    assert_eq!((inbox, outbox), (INBOX, OUTBOX), "a node on the backup");
    assert!(s.holder.term(Duration::from_secs(20)).success());

    // Salvage of an intact store keeps everything.
    let whole = tmp.path().join("whole");
    let out = s.holder.cli("store", &["salvage", whole.to_str().unwrap()]);
    assert!(out.ok(), "{out}");
    assert_eq!(count_before(&out.stdout, "inbox"), INBOX, "{out}");
    assert_eq!(count_before(&out.stdout, "outbox"), OUTBOX, "{out}");
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Every dir under `dir` is 0700 and every file 0600 (the socket too).
fn assert_private(dir: &Path) {
    assert_eq!(mode(dir), 0o700, "{}", dir.display());
    for entry in fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            assert_private(&p);
        } else {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
    }
}

#[test]
fn data_dir_made_private_and_open_one_refused() {
    const N: u8 = 93;
    let mut node = Node::configure(N, 2, NodeOpts::default());
    fs::set_permissions(node.data_dir(), fs::Permissions::from_mode(0o755)).unwrap();
    node.restart();
    node.term(Duration::from_secs(20));
    assert_private(&node.data_dir());
    // A store file an older version left readable is made private again.
    let db = node.data_dir().join("store").join("db");
    fs::set_permissions(&db, fs::Permissions::from_mode(0o644)).unwrap();
    node.restart();
    assert_eq!(mode(&db), 0o600);
    assert_private(&node.data_dir().join("store"));

    let mut open = Node::configure(N, 3, NodeOpts::default());
    fs::set_permissions(open.data_dir(), fs::Permissions::from_mode(0o777)).unwrap();
    open.respawn();
    let start = Instant::now();
    let st = loop {
        if let Some(st) = open.exited() {
            break st;
        }
        assert!(
            start.elapsed() < READY_TIMEOUT,
            "the daemon on a 0777 data dir did not exit{}",
            open.describe_for_failure()
        );
        thread::sleep(Duration::from_millis(50));
    };
    let log = open.log();
    let said: Vec<&str> = log
        .lines()
        .filter(|l| !l.starts_with("===== hermes-it"))
        .collect();
    assert_eq!(st.code(), Some(1), "{log}");
    assert_eq!(said.len(), 1, "{log}");
    assert!(said[0].contains(open.data_dir().to_str().unwrap()), "{log}");
    assert!(said[0].contains("chmod 700"), "{log}");
    assert!(
        !open.data_dir().join("identity.key").exists(),
        "nothing written in it"
    );
}
