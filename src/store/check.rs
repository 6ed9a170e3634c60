//! Proving a store intact at open, and `hermes store check`, `salvage` and
//! `backup`.
//!
//! At open ([`open_checked`]), in this order:
//! 1. `<data_dir>/store.manifest` must read and verify if it is there;
//! 2. a manifest without a `store/` dir is refused (the store was deleted);
//!    neither gives a fresh store, created with generation 1 and its manifest;
//! 3. sled opens the store (its own errors are reported as damage);
//! 4. every record of every tree is read and decoded once; a read error or a
//!    value that does not decode is refused;
//! 5. sled's generation must be at least the manifest's: lower means sled's
//!    recovery stopped early and flushed writes are gone. Higher is fine (a
//!    crash between a sled flush and its manifest write). A store without a
//!    manifest is refused once it has been flushed more than once; one with no
//!    generation at all was written by a version without manifests and is
//!    adopted.
//!
//! The trees checked are the store's own and the onion replay tags
//! (`replay`, see [`super::replay`]): there, only `epoch ‖ tag` keys (40
//! bytes) with empty values are valid, and anything else is damage.
//!
//! [`inspect`] runs the same steps without refusing, for `store check`.
//! [`salvage`] and [`Store::backup_to`] copy records into a fresh store
//! through the store's own write paths, so each copied record gets its index
//! entries.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::manifest::{self, Manifest, ManifestError, ManifestWriter};
use super::parts::PARTS_TREE;
use super::replay::{REPLAY_KEY_LEN, REPLAY_TREE};
use super::{
    make_private, DropEntry, DropKey, OutboxEntry, Store, StoreError, GENERATION_KEY, IDENTITY_KEY,
};
use crate::wire::client::InboxMessage;
use crate::wire::MessageId;

/// How [`Store::open_reporting`] found the data dir.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opened {
    /// Neither store nor manifest: a fresh store was created.
    Created,
    /// An intact store; `generation` is the one it holds.
    Existing { generation: u64 },
    /// A store written by a version without manifests: taken as it is, and
    /// given its first manifest.
    Adopted,
}

/// Entries per tree, as found by a scan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub inbox: u64,
    pub outbox: u64,
    pub drop: u64,
    pub drop_exp: u64,
    pub peers: u64,
    pub contacts: u64,
    pub meta: u64,
    /// Onion replay tags.
    pub replay: u64,
    /// Parts of incomplete onion messages held at their recipient.
    pub parts: u64,
}

/// What `hermes store check` shows.
#[derive(Clone, Debug, Default)]
pub struct StoreReport {
    pub data_dir: PathBuf,
    /// The manifest, if it is there and reads.
    pub manifest: Option<Manifest>,
    /// `store/` exists.
    pub store_present: bool,
    /// The generation sled holds (when the store opened).
    pub generation: Option<u64>,
    pub counts: Counts,
    /// Address-book entries that do not decode (an older version's; skipped,
    /// not damage: the book refills from the network).
    pub peers_skipped: u64,
    /// The node address the store is tied to.
    pub identity: Option<[u8; 32]>,
    /// Everything wrong, each a sentence naming the file; empty if intact.
    pub problems: Vec<String>,
}

impl StoreReport {
    pub fn intact(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for StoreReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.data_dir;
        writeln!(f, "data dir   {}", d.display())?;
        match &self.manifest {
            Some(m) => writeln!(
                f,
                "manifest   {}: generation {}",
                manifest::path(d).display(),
                m.generation
            )?,
            None => writeln!(f, "manifest   {}: none", manifest::path(d).display())?,
        }
        let store = d.join("store");
        match (self.store_present, self.generation) {
            (false, _) => writeln!(f, "store      {}: missing", store.display())?,
            (true, Some(g)) => writeln!(f, "store      {}: generation {g}", store.display())?,
            (true, None) => writeln!(f, "store      {}: does not open", store.display())?,
        }
        let c = &self.counts;
        writeln!(
            f,
            "entries    inbox {} / outbox {} / drop list {} (expiry index {}) / contacts {} / peers {}{} / replay tags {} / message parts {}",
            c.inbox,
            c.outbox,
            c.drop,
            c.drop_exp,
            c.contacts,
            c.peers,
            if self.peers_skipped > 0 {
                format!(" ({} old ones skipped)", self.peers_skipped)
            } else {
                String::new()
            },
            c.replay,
            c.parts
        )?;
        if let Some(id) = &self.identity {
            writeln!(f, "node       {}", hex::encode(id))?;
        }
        if self.problems.is_empty() && !self.store_present {
            write!(f, "state      OK (no store yet)")
        } else if self.problems.is_empty() {
            write!(f, "state      OK")
        } else {
            write!(f, "state      DAMAGED")?;
            for p in &self.problems {
                write!(f, "\n  {p}")?;
            }
            Ok(())
        }
    }
}

/// How many records a salvage or backup copied, and how many it left out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyCounts {
    pub inbox: u64,
    pub outbox: u64,
    pub drop: u64,
    pub peers: u64,
    pub contacts: u64,
    /// Onion replay tags.
    pub replay: u64,
    /// Parts of incomplete onion messages.
    pub parts: u64,
    /// Records that did not read or decode (left out).
    pub skipped: u64,
    /// The generation of the new store once written.
    pub generation: u64,
    /// sled would not open the store, so its log was replayed without its
    /// snapshot (salvage only).
    pub from_log: bool,
    /// The generation the source reached, and the one its manifest records
    /// (salvage only): how far short of its last flush the copy falls.
    pub source_generation: u64,
    pub source_manifest: Option<u64>,
}

/// Decodes `bytes` as a whole `T` (a remainder is damage, unlike postcard's
/// `from_bytes`).
fn decode_exact<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((v, [])) => Ok(v),
        Ok((_, rest)) => Err(format!("{} bytes left over", rest.len())),
        Err(e) => Err(e.to_string()),
    }
}

/// The trees whose every value must decode, with their checks.
fn check_value(tree: &str, key: &[u8], value: &[u8]) -> Result<(), String> {
    match tree {
        "outbox" => decode_exact::<OutboxEntry>(value).map(drop),
        "inbox" => decode_exact::<InboxMessage>(value).map(drop),
        // Key prefix 0 was an earlier version's per-copy entry: only swept.
        "drop" if key.first() == Some(&0) => Ok(()),
        "drop" => decode_exact::<DropEntry>(value).map(drop),
        "meta" if key == IDENTITY_KEY => match value.len() {
            32 => Ok(()),
            n => Err(format!("node address of {n} bytes")),
        },
        "meta" if key == super::GUARDS_KEY => {
            match crate::routing::onion::path::Guards::from_bytes(value) {
                Ok(_) => Ok(()),
                Err(e) => Err(format!("guard set does not decode: {e}")),
            }
        }
        "meta" => match value.len() {
            8 => Ok(()),
            n => Err(format!("counter of {n} bytes")),
        },
        "contacts" if super::contacts::value_decodes(value) => Ok(()),
        "contacts" => Err("a pinned contact does not decode".into()),
        "parts" if super::parts::entry_decodes(key, value) => Ok(()),
        "parts" => Err("a held message part does not decode".into()),
        REPLAY_TREE => replay_entry_valid(key, value),
        _ => Ok(()),
    }
}

/// A replay tag entry: an `epoch ‖ tag` key and no value.
fn replay_entry_valid(key: &[u8], value: &[u8]) -> Result<(), String> {
    match (key.len(), value.len()) {
        (REPLAY_KEY_LEN, 0) => Ok(()),
        (REPLAY_KEY_LEN, n) => Err(format!("a replay tag with a value of {n} bytes")),
        (n, _) => Err(format!("a replay tag key of {n} bytes")),
    }
}

/// The replay-tag tree, if the store has one (opened only then: `check`
/// does not write to the store it inspects).
fn replay_tree(store: &Store) -> Result<Option<sled::Tree>, sled::Error> {
    optional_tree(store, REPLAY_TREE)
}

/// Tree `name` if the store has one (opened only then).
fn optional_tree(store: &Store, name: &str) -> Result<Option<sled::Tree>, sled::Error> {
    if store
        .db
        .tree_names()
        .iter()
        .any(|n| n.as_ref() == name.as_bytes())
    {
        store.db.open_tree(name).map(Some)
    } else {
        Ok(None)
    }
}

/// Reads every record of every tree once.
fn scan(store: &Store, report: &mut StoreReport, file: &Path) {
    let parts = match optional_tree(store, PARTS_TREE) {
        Ok(t) => t,
        Err(e) => {
            report.problems.push(format!(
                "{}: damaged: the tree {PARTS_TREE} does not open ({e})",
                file.display()
            ));
            None
        }
    };
    let mut trees: Vec<(&str, &sled::Tree)> = vec![
        ("outbox", &store.outbox),
        ("inbox", &store.inbox),
        ("drop", &store.drop),
        ("drop_exp", &store.drop_exp),
        ("peers", &store.peers),
        ("contacts", &store.contacts),
        ("meta", &store.meta),
    ];
    if let Some(t) = &parts {
        trees.push((PARTS_TREE, t));
    }
    let replay = match replay_tree(store) {
        Ok(t) => t,
        Err(e) => {
            report.problems.push(format!(
                "{}: damaged: the tree {REPLAY_TREE} does not open ({e})",
                file.display()
            ));
            None
        }
    };
    if let Some(t) = &replay {
        trees.push((REPLAY_TREE, t));
    }
    for (name, tree) in trees {
        let mut n = 0u64;
        let mut bad = 0u64;
        let mut first: Option<String> = None;
        for item in tree.iter() {
            let (k, v) = match item {
                Ok(kv) => kv,
                Err(e) => {
                    report.problems.push(format!(
                        "{}: damaged: reading tree {name} failed after {n} records ({e})",
                        file.display()
                    ));
                    break;
                }
            };
            if name == "peers" {
                let decodes = if k.as_ref() == super::peers::ANCHORS_KEY {
                    super::peers::decode_anchors(&v).is_some()
                } else {
                    super::peers::PeerRecord::decode(&v).is_some()
                };
                if !decodes {
                    report.peers_skipped += 1;
                    continue;
                }
            } else if let Err(e) = check_value(name, &k, &v) {
                bad += 1;
                first.get_or_insert(e);
                continue;
            }
            n += 1;
        }
        if let Some(e) = first {
            report.problems.push(format!(
                "{}: damaged: {bad} records of tree {name} do not decode (first: {e})",
                file.display()
            ));
        }
        let c = &mut report.counts;
        *match name {
            "outbox" => &mut c.outbox,
            "inbox" => &mut c.inbox,
            "drop" => &mut c.drop,
            "drop_exp" => &mut c.drop_exp,
            "peers" => &mut c.peers,
            "contacts" => &mut c.contacts,
            REPLAY_TREE => &mut c.replay,
            PARTS_TREE => &mut c.parts,
            _ => &mut c.meta,
        } = n;
    }
}

/// The file to name for damage inside the store: its log, if it is there.
fn store_file(data_dir: &Path) -> PathBuf {
    let db = data_dir.join("store").join("db");
    if db.exists() {
        db
    } else {
        data_dir.join("store")
    }
}

/// Steps 4 and 5 of the module doc on an opened store.
fn judge(store: &Store, report: &mut StoreReport) {
    let file = store_file(&report.data_dir);
    scan(store, report, &file);
    let generation = match store.generation() {
        Ok(g) => g,
        Err(e) => {
            report
                .problems
                .push(format!("{}: damaged: {e}", file.display()));
            0
        }
    };
    report.generation = Some(generation);
    report.identity = store.bound_identity().ok().flatten();
    let manifest_path = manifest::path(&report.data_dir);
    match report.manifest {
        Some(m) if generation < m.generation => report.problems.push(format!(
            "{}: damaged: it holds writes up to generation {generation}, but {} records generation {} as flushed, so flushed writes are lost",
            file.display(),
            manifest_path.display(),
            m.generation
        )),
        Some(_) => {}
        None if generation > 1 => report.problems.push(format!(
            "{}: missing, but the store has been flushed {generation} times; without it nothing proves that the store still holds every flushed write",
            manifest_path.display()
        )),
        None => {}
    }
}

fn manifest_problem(e: ManifestError) -> StoreError {
    match e {
        ManifestError::Damaged { path, why } => StoreError::Damaged {
            path,
            what: format!("the store manifest is damaged ({why})"),
        },
        other => StoreError::Manifest(other),
    }
}

/// Opens a store the way the daemon does, refusing damage (module doc).
pub(super) fn open_checked(data_dir: &Path) -> Result<(Store, Opened), StoreError> {
    let found = manifest::read(data_dir).map_err(manifest_problem)?;
    let store_dir = data_dir.join("store");
    let present = store_dir.exists();
    if !present {
        if let Some(m) = found {
            return Err(StoreError::Missing {
                path: store_dir,
                manifest: manifest::path(data_dir),
                generation: m.generation,
            });
        }
    }
    let mut store = Store::open_raw(data_dir)?;
    make_private(&store_dir)?;
    let mut report = StoreReport {
        data_dir: data_dir.to_path_buf(),
        manifest: found,
        store_present: present,
        ..StoreReport::default()
    };
    judge(&store, &mut report);
    if let Some(first) = report.problems.first() {
        // The problem sentences start with the file they name.
        let (path, what) = first.split_once(": ").unwrap_or(("", first));
        return Err(StoreError::Damaged {
            path: PathBuf::from(path),
            what: what.to_string(),
        });
    }
    let generation = report.generation.unwrap_or(0);
    let written = found.map(|m| m.generation).unwrap_or(0);
    store.manifest = Some(ManifestWriter::new(data_dir, written, generation));
    let opened = match (present, found, generation) {
        (false, _, _) => Opened::Created,
        (true, None, 0) => Opened::Adopted,
        (true, _, g) => Opened::Existing { generation: g },
    };
    if found.is_none() {
        // A new store, an adopted one, or one whose first manifest write was
        // cut off: give it its manifest now.
        store.flush_blocking()?;
    }
    empty_old_trees(&store)?;
    store.start_writer()?;
    Ok((store, opened))
}

/// Trees an older version kept that this one does not: `outbox_due`, the
/// outbox's due-time index until it moved into memory (module `due`).
/// Emptied when a daemon opens the store (not dropped: in sled 0.34 a
/// dropped tree wastes disk, NOTES.md); a check or salvage leaves them.
const OLD_TREES: [&str; 1] = ["outbox_due"];

fn empty_old_trees(store: &Store) -> Result<(), StoreError> {
    let names = store.db.tree_names();
    for old in OLD_TREES {
        if names.iter().any(|n| n.as_ref() == old.as_bytes()) {
            let tree = store.db.open_tree(old)?;
            if !tree.is_empty() {
                tree.clear()?;
            }
        }
    }
    Ok(())
}

/// The state of the store in `data_dir` for `hermes store check`. Opens
/// sled (so fails with [`StoreError::Locked`] while a daemon runs), never
/// creates a store and never writes the manifest.
pub fn inspect(data_dir: &Path) -> Result<StoreReport, StoreError> {
    let mut report = StoreReport {
        data_dir: data_dir.to_path_buf(),
        ..StoreReport::default()
    };
    match manifest::read(data_dir) {
        Ok(m) => report.manifest = m,
        Err(e) => report.problems.push(e.to_string()),
    }
    let store_dir = data_dir.join("store");
    report.store_present = store_dir.exists();
    if !report.store_present {
        if let Some(m) = &report.manifest {
            report.problems.push(format!(
                "{}: missing, but {} records {} flushes of it",
                store_dir.display(),
                manifest::path(data_dir).display(),
                m.generation
            ));
        }
        return Ok(report);
    }
    let store = match Store::open_raw(data_dir) {
        Ok(s) => s,
        Err(e @ StoreError::Locked(_)) => return Err(e),
        Err(e) => {
            let why = match e {
                StoreError::Corrupt { detail, .. } => detail,
                other => other.to_string(),
            };
            report.problems.push(format!(
                "{}: damaged: sled cannot open it ({why})",
                store_file(data_dir).display()
            ));
            return Ok(report);
        }
    };
    judge(&store, &mut report);
    Ok(report)
}

/// Makes `dest` an empty data dir (0700): created if absent, refused if it
/// holds anything.
fn prepare_dest(dest: &Path) -> Result<(), StoreError> {
    let err = |why: String| StoreError::Io {
        path: dest.to_path_buf(),
        why,
    };
    if dest.exists() {
        let mut entries = std::fs::read_dir(dest).map_err(|e| err(e.to_string()))?;
        if entries.next().is_some() {
            return Err(err("not empty; give a new or empty dir".into()));
        }
    } else {
        std::fs::DirBuilder::new()
            .recursive(true)
            .create(dest)
            .map_err(|e| err(format!("cannot create it: {e}")))?;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| err(format!("cannot set its mode: {e}")))
}

/// Copies every record of `src` that reads and decodes into `dst`. Order:
/// outbox, inbox, drop list, peers, contacts, replay tags, counters. When `src` is live (a backup),
/// this order keeps the copy consistent: an inbox message or a settled outbox
/// entry copied is one whose delivered mark was written before it (one
/// transaction), and the drop list is copied after both, so the copy never
/// holds a message without its mark, nor lacks an outbox entry whose mark it
/// lacks too.
fn copy_into(src: &Store, dst: &Store) -> Result<CopyCounts, StoreError> {
    let mut c = CopyCounts::default();
    for item in src.outbox.iter() {
        let Ok((k, v)) = item else {
            c.skipped += 1;
            break;
        };
        match (
            <[u8; 16]>::try_from(k.as_ref()),
            decode_exact::<OutboxEntry>(&v),
        ) {
            (Ok(id), Ok(entry)) => {
                dst.outbox_put(&MessageId(id), &entry)?;
                c.outbox += 1;
            }
            _ => c.skipped += 1,
        }
    }
    for item in src.inbox.iter() {
        let Ok((k, v)) = item else {
            c.skipped += 1;
            break;
        };
        // Keys are `be_u64(seq) ‖ id` (inbox.rs): re-number in the same
        // order from the new store's id generator, so later deliveries still
        // sort after these.
        if k.len() != 24 || decode_exact::<InboxMessage>(&v).is_err() {
            c.skipped += 1;
            continue;
        }
        let mut key = dst.db.generate_id()?.to_be_bytes().to_vec();
        key.extend_from_slice(&k[8..]);
        if dst.inbox.insert(key, v)?.is_none() {
            super::Sizes::add(&dst.sizes.inbox, 1);
        }
        c.inbox += 1;
    }
    for item in src.drop.iter() {
        let Ok((k, v)) = item else {
            c.skipped += 1;
            break;
        };
        let id = k
            .strip_prefix(&[1u8][..])
            .and_then(|b| <[u8; 16]>::try_from(b).ok());
        match (id, decode_exact::<DropEntry>(&v)) {
            (Some(id), Ok(entry)) => {
                dst.drop_insert_new(&DropKey::Delivered(MessageId(id)), &entry, 0)?;
                c.drop += 1;
            }
            // An earlier version's per-copy entry (prefix 0) is not kept.
            _ if k.first() == Some(&0) => {}
            _ => c.skipped += 1,
        }
    }
    for item in src.peers.iter() {
        let Ok((k, v)) = item else {
            c.skipped += 1;
            break;
        };
        let decodes = if k.as_ref() == super::peers::ANCHORS_KEY {
            super::peers::decode_anchors(&v).is_some()
        } else {
            super::peers::PeerRecord::decode(&v).is_some()
        };
        if decodes {
            dst.peers.insert(k, v)?;
            c.peers += 1;
        }
    }
    // Pinned keys: losing one would let the next push to that IP take any key.
    for item in src.contacts.iter() {
        let Ok((k, v)) = item else {
            c.skipped += 1;
            break;
        };
        if super::contacts::value_decodes(&v) {
            dst.contacts.insert(k, v)?;
            c.contacts += 1;
        } else {
            c.skipped += 1;
        }
    }
    // Replay tags: a restored relay still drops replays of packets it
    // forwarded (the tags of keys it no longer holds are dropped at start).
    if let Some(tags) = replay_tree(src)? {
        let out = dst.db.open_tree(REPLAY_TREE)?;
        let mut batch = sled::Batch::default();
        for item in tags.iter() {
            let Ok((k, v)) = item else {
                c.skipped += 1;
                break;
            };
            if replay_entry_valid(&k, &v).is_ok() {
                batch.insert(k, v);
                c.replay += 1;
            } else {
                c.skipped += 1;
            }
        }
        out.apply_batch(batch)?;
    }
    // Parts of incomplete messages: a restored recipient need not wait for
    // the parts it had (their origins would send them again).
    if let Some(parts) = optional_tree(src, PARTS_TREE)? {
        let out = dst.db.open_tree(PARTS_TREE)?;
        let mut batch = sled::Batch::default();
        for item in parts.iter() {
            let Ok((k, v)) = item else {
                c.skipped += 1;
                break;
            };
            if super::parts::entry_decodes(&k, &v) {
                batch.insert(k, v);
                c.parts += 1;
            } else {
                c.skipped += 1;
            }
        }
        out.apply_batch(batch)?;
    }
    for item in src.meta.iter() {
        let Ok((k, v)) = item else {
            c.skipped += 1;
            break;
        };
        if k.as_ref() != GENERATION_KEY && check_value("meta", &k, &v).is_ok() {
            dst.meta.insert(k, v)?;
        }
    }
    dst.flush_blocking()?;
    c.generation = dst.generation()?;
    Ok(c)
}

/// `hermes store salvage DEST`: copies what still reads and decodes from the
/// (stopped) store in `data_dir` into a fresh store, with its manifest, in
/// the new or empty dir `dest`. The identity key is not copied, and the
/// damaged store is left as it is.
///
/// When sled refuses to open the store at all (its snapshot points at a
/// damaged page), the salvage opens a copy without the snapshot files, so
/// sled replays its log from the start and stops at the damage: what came
/// before it is kept.
pub fn salvage(data_dir: &Path, dest: &Path) -> Result<CopyCounts, StoreError> {
    let store_dir = data_dir.join("store");
    if !store_dir.exists() {
        return Err(StoreError::Io {
            path: store_dir,
            why: "no store to salvage".into(),
        });
    }
    let first = Store::open_raw(data_dir);
    if let Err(StoreError::Locked(_)) = first {
        return first.map(|_| CopyCounts::default());
    }
    prepare_dest(dest)?;
    let scratch = dest.join(".salvage-source");
    let (src, from_log) = match first {
        Ok(s) => (s, false),
        Err(StoreError::Corrupt { .. }) => {
            copy_without_snapshots(&store_dir, &scratch.join("store"))?;
            (Store::open_raw(&scratch)?, true)
        }
        Err(e) => return Err(e),
    };
    let (dst, _) = open_checked(dest)?;
    let mut counts = copy_into(&src, &dst)?;
    counts.from_log = from_log;
    counts.source_generation = src.generation().unwrap_or(0);
    counts.source_manifest = manifest::read(data_dir)
        .ok()
        .flatten()
        .map(|m| m.generation);
    drop(src);
    if from_log {
        std::fs::remove_dir_all(&scratch).map_err(|e| StoreError::Io {
            path: scratch.clone(),
            why: format!("cannot remove the scratch copy: {e}"),
        })?;
    }
    Ok(counts)
}

/// Copies sled's files from `from` to `to`, leaving out its snapshots.
fn copy_without_snapshots(from: &Path, to: &Path) -> Result<(), StoreError> {
    let err = |p: &Path, e: std::io::Error| StoreError::Io {
        path: p.to_path_buf(),
        why: format!("cannot copy for salvage: {e}"),
    };
    std::fs::create_dir_all(to).map_err(|e| err(to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| err(from, e))? {
        let entry = entry.map_err(|e| err(from, e))?;
        let name = entry.file_name();
        let path = entry.path();
        if name.to_string_lossy().starts_with("snap.") {
            continue;
        }
        if path.is_dir() {
            copy_without_snapshots(&path, &to.join(&name))?;
        } else {
            std::fs::copy(&path, to.join(&name)).map_err(|e| err(&path, e))?;
        }
    }
    Ok(())
}

impl Store {
    /// `hermes store backup DEST` on a running node: flushes, then copies
    /// every record into a fresh store (with its manifest) in the new or
    /// empty dir `dest` (see [`copy_into`] for why the copy is consistent
    /// while the node keeps writing). Blocking.
    pub fn backup_to(&self, dest: &Path) -> Result<CopyCounts, StoreError> {
        self.flush_blocking()?;
        prepare_dest(dest)?;
        let (dst, _) = open_checked(dest)?;
        copy_into(self, &dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::test_util::unlocked;

    fn inspect(dir: &Path) -> Result<StoreReport, StoreError> {
        unlocked(|| super::inspect(dir))
    }

    fn refused(dir: &Path) -> String {
        match unlocked(|| Store::open(dir)) {
            Ok(_) => panic!("opened"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn fresh_then_existing_then_lost_flushes_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (s, opened) = unlocked(|| Store::open_reporting(dir.path())).unwrap();
        assert_eq!(opened, Opened::Created);
        assert_eq!(manifest::read(dir.path()).unwrap().unwrap().generation, 1);
        s.bump(super::super::Counter::Relayed, 1).unwrap();
        s.flush_blocking().unwrap();
        drop(s);
        let (s, opened) = unlocked(|| Store::open_reporting(dir.path())).unwrap();
        assert_eq!(opened, Opened::Existing { generation: 2 });
        drop(s);
        // The manifest says more was flushed than the store holds.
        manifest::write(
            dir.path(),
            &Manifest {
                generation: 9,
                written_ms: 0,
            },
        )
        .unwrap();
        let e = refused(dir.path());
        assert!(
            e.contains("generation 2") && e.contains("generation 9"),
            "{e}"
        );
        assert!(e.contains("salvage"), "{e}");
        // One ahead of the manifest (a crash before its write) is fine.
        manifest::write(
            dir.path(),
            &Manifest {
                generation: 1,
                written_ms: 0,
            },
        )
        .unwrap();
        crate::store::test_util::open(dir.path());
    }

    #[test]
    fn missing_store_or_manifest_refused_legacy_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::store::test_util::open(dir.path());
        s.flush_blocking().unwrap();
        drop(s);
        std::fs::remove_file(manifest::path(dir.path())).unwrap();
        assert!(refused(dir.path()).contains("store.manifest: missing"));
        std::fs::remove_dir_all(dir.path().join("store")).unwrap();
        // Neither: a fresh store.
        drop(crate::store::test_util::open(dir.path()));
        std::fs::remove_dir_all(dir.path().join("store")).unwrap();
        assert!(refused(dir.path()).contains("the store is missing"));

        // A store with no generation and no manifest (an older version's).
        let old = tempfile::tempdir().unwrap();
        {
            let raw = Store::open_raw(old.path()).unwrap();
            raw.inbox.insert(b"k", b"v").unwrap();
            raw.db.flush().unwrap();
        }
        // ...whose inbox value does not decode: refused as damage.
        assert!(refused(old.path()).contains("tree inbox do not decode"));
        {
            let raw = Store::open_raw(old.path()).unwrap();
            raw.inbox.clear().unwrap();
            raw.db.flush().unwrap();
        }
        let (_s, opened) = Store::open_reporting(old.path()).unwrap();
        assert_eq!(opened, Opened::Adopted);
        assert!(manifest::read(old.path()).unwrap().is_some());
    }

    #[test]
    fn identity_bound_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::store::test_util::open(dir.path());
        let key = dir.path().join("identity.key");
        s.bind_identity(&[1; 32], &key).unwrap();
        s.bind_identity(&[1; 32], &key).unwrap();
        assert!(matches!(
            s.bind_identity(&[2; 32], &key),
            Err(StoreError::WrongIdentity { .. })
        ));
    }

    #[test]
    fn backup_and_salvage_copy_every_record() {
        use crate::crypto::seal::Sealed;
        use crate::crypto::{Address, Identity};
        use crate::wire::link::Receipt;
        let dir = tempfile::tempdir().unwrap();
        let s = crate::store::test_util::open(dir.path());
        let me = Identity::generate();
        for i in 0..5u8 {
            let msg = InboxMessage {
                id: MessageId([i; 16]),
                sender: "s".into(),
                sender_ip: "127.0.0.2".into(),
                sent: 1,
                received: 2,
                text: format!("m{i}"),
            };
            let r = Receipt::sign(&me, msg.id, 1_000, None);
            assert!(s.inbox_deliver(&msg, &r, 1_000, 10).unwrap().is_some());
        }
        let entry = OutboxEntry {
            recipient: Address([9; 32]),
            created_ms: 0,
            expires_at: 1_000,
            attempts: 0,
            next_try_ms: 100,
            sealed: Sealed {
                sender_kem: [1; 32],
                enc: [2; 32],
                ciphertext: vec![3; 40],
            },
        };
        s.outbox_put(&MessageId([7; 16]), &entry).unwrap();
        let pin = crate::store::Contact {
            address: Address([4; 32]),
            dest: Some("127.0.0.4:58008".parse().unwrap()),
            added: 1,
        };
        let key = crate::store::ContactKey::Ip("127.0.0.4:58008".parse().unwrap());
        s.contact_insert_new(&key, &pin).unwrap();
        let tags = s.replay_tags(10).unwrap();
        for n in 0..3u8 {
            tags.check_and_insert(u64::from(n % 2) + 1, &[n; 32])
                .unwrap();
        }
        s.parts_put(&MessageId([5; 16]), 1, 1_000, b"a part")
            .unwrap();
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("backup");
        let c = s.backup_to(&dest).unwrap();
        assert_eq!((c.inbox, c.outbox, c.drop, c.contacts), (5, 1, 5, 1));
        assert_eq!(c.replay, 3);
        assert_eq!(
            Store::open(&dest).unwrap().contact_get(&key).unwrap(),
            Some(pin),
            "pins are kept"
        );
        let b = Store::open(&dest).unwrap();
        let texts: Vec<String> = b
            .inbox_list(10)
            .unwrap()
            .into_iter()
            .map(|m| m.text)
            .collect();
        assert_eq!(texts, ["m0", "m1", "m2", "m3", "m4"], "order kept");
        assert_eq!(b.outbox_due(100, 10).unwrap().len(), 1, "due index rebuilt");
        let copied = b.replay_tags(10).unwrap();
        assert_eq!((copied.count(1), copied.count(2)), (2, 1));
        assert_eq!(
            copied.check_and_insert(1, &[0; 32]).unwrap(),
            crate::store::replay::TagVerdict::Replay,
            "a backed-up tag still stops a replay"
        );
        drop((copied, b));
        let report = inspect(&dest).unwrap();
        assert_eq!(report.counts.drop_exp, 5);
        assert_eq!(report.counts.replay, 3);
        assert!(report.to_string().contains("replay tags 3"), "{report}");
        assert_eq!(report.counts.parts, 1);
        assert!(report.to_string().contains("message parts 1"), "{report}");
        assert!(
            prepare_dest(&dest).is_err(),
            "a dir with a store is refused"
        );
        drop((tags, s));
        let salvaged = out.path().join("salvaged");
        let c = unlocked(|| salvage(dir.path(), &salvaged)).unwrap();
        assert_eq!((c.inbox, c.outbox, c.drop, c.skipped), (5, 1, 5, 0));
        assert_eq!((c.contacts, c.replay, c.parts), (1, 3, 1));
        assert!(inspect(&salvaged).unwrap().intact());
        let back = Store::open(&salvaged).unwrap();
        assert_eq!(back.parts_all().unwrap(), vec![(1_000, b"a part".to_vec())]);
    }

    /// The replay tree holds `epoch ‖ tag` keys with empty values only:
    /// anything else is damage to check and to the start-up check, and is
    /// left out by salvage.
    #[test]
    fn a_replay_tag_that_is_not_one_is_damage() {
        for (key, value) in [
            (vec![1u8; 40], vec![1u8]),
            (vec![1u8; 39], vec![]),
            (vec![1u8; 41], vec![]),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let s = crate::store::test_util::open(dir.path());
            let tags = s.replay_tags(10).unwrap();
            tags.check_and_insert(3, &[3; 32]).unwrap();
            drop(tags);
            s.db.open_tree(REPLAY_TREE)
                .unwrap()
                .insert(&key[..], &value[..])
                .unwrap();
            s.flush_blocking().unwrap();
            drop(s);
            let report = inspect(dir.path()).unwrap();
            assert!(
                report
                    .problems
                    .iter()
                    .any(|p| p.contains("1 records of tree replay do not decode")),
                "{key:?}={value:?}: {:?}",
                report.problems
            );
            assert_eq!(report.counts.replay, 1);
            let e = refused(dir.path());
            assert!(e.contains("tree replay"), "{e}");
            let out = tempfile::tempdir().unwrap();
            let dest = out.path().join("salvaged");
            let c = unlocked(|| salvage(dir.path(), &dest)).unwrap();
            assert_eq!((c.replay, c.skipped), (1, 1));
            assert!(inspect(&dest).unwrap().intact());
        }
        // A store that never opened the tree: check neither needs nor makes it.
        let dir = tempfile::tempdir().unwrap();
        let s = crate::store::test_util::open(dir.path());
        s.flush_blocking().unwrap();
        drop(s);
        assert!(inspect(dir.path()).unwrap().intact());
        let raw = unlocked(|| Store::open_raw(dir.path())).unwrap();
        assert!(replay_tree(&raw).unwrap().is_none());
    }

    #[test]
    fn a_pin_that_does_not_decode_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::store::test_util::open(dir.path());
        s.contacts
            .insert(b"ip/127.0.0.4:58008", &[9u8, 9, 9][..])
            .unwrap();
        s.flush_blocking().unwrap();
        drop(s);
        let report = inspect(dir.path()).unwrap();
        assert!(!report.intact());
        assert!(
            report.problems.iter().any(|p| p.contains("tree contacts")),
            "{:?}",
            report.problems
        );
    }
}
