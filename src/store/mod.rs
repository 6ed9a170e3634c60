//! The node's durable state: the only code that touches sled.
//!
//! One sled database per data dir, with a fixed set of trees (never a tree per
//! peer: sled wastes disk on many trees):
//!
//! | tree | key | value |
//! | --- | --- | --- |
//! | `outbox` | message id | [`OutboxEntry`]: sealed message, retry state (saved now and then: module [`due`]) |
//! | `inbox` | `be_u64(seq) ‖ id` | a delivered [`InboxMessage`] |
//! | `drop` | [`DropKey`] | [`DropEntry`]: expiry, the receipt if delivered |
//! | `drop_exp` | `be_u64(expires_at) ‖ drop key` | expiry index of `drop` |
//! | `peers` | address; `anchors` | [`PeerRecord`]: that node's newest signed record and book state; the anchors' records |
//! | `contacts` | `name/<NAME>` or `ip/<IP:PORT>` | a pinned node address (`contacts.rs`) |
//! | `replay` | `be_u64(key epoch) ‖ tag` | empty: an onion replay tag seen ([`replay`]) |
//! | `meta` | counter name; `generation`; `identity` | `be_u64`; `be_u64`; the node address |
//!
//! Writes reach the disk only on [`Store::flush`] (or sled's own flush every
//! 500 ms): callers flush before they make a promise that depends on a write
//! (ARCHITECTURE.md, durability points), and sled groups concurrent flushes.
//!
//! Every flush also bumps the store's generation and records it in
//! `<data_dir>/store.manifest` (module [`manifest`]); [`Store::open`] checks
//! the two against each other and decodes every record once, and refuses a
//! store that lost flushed writes (module [`check`], which also has `hermes
//! store check`, `salvage` and `backup`). See docs/durability.md, "Damage".

pub mod check;
mod contacts;
mod drop_list;
mod due;
mod inbox;
pub mod manifest;
mod outbox;
pub mod parts;
mod peers;
pub mod replay;
mod writer;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use check::{CopyCounts, Opened, StoreReport};
pub use contacts::{Contact, ContactKey, Pinned, MAX_CONTACTS};
pub use drop_list::{DropEntry, DropKey};
pub use inbox::InboxKey;
pub use manifest::{ManifestError, MANIFEST_FILE};
pub use outbox::OutboxEntry;
pub use peers::{PeerRecord, MAX_ANCHORS};
pub use writer::{Reschedule, MAX_GROUP};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use writer::{Job, Op, Outcome, Reply, WriterHandle};

/// `meta` key of the generation counter that [`Store::flush`] bumps.
const GENERATION_KEY: &[u8] = b"generation";
/// `meta` key of the onion guard set (the Router's, encoded by
/// `routing::onion::path::Guards`; the store only keeps the bytes).
pub const GUARDS_KEY: &[u8] = b"guards";
/// Largest guard set value accepted.
pub const MAX_GUARDS_VALUE: usize = 1024;
/// `meta` key of the node address this store belongs to.
const IDENTITY_KEY: &[u8] = b"identity";
/// What to do about a damaged store; ends every damage message.
pub const DAMAGE_ADVICE: &str = "run `hermes store salvage DIR` to copy what is still readable into a fresh store, or move the data dir aside to start afresh (`hermes store check` shows the state)";

/// sled caches this much; its default of 1 GiB is far more than a node needs.
/// The hot path writes and reads back little (retries, `pull`), and the file
/// it would read is in the kernel's page cache anyway; under a flood the
/// cache simply fills with outbox and inbox pages. Measured (`hermes-bench
/// --quick --only line`, 2 runs each): at 32 MiB the sender peaked at 72-76
/// MiB and the recipient at 68-75, at 16 MiB 63-64 and 51-53, at 8 MiB 61 and
/// 42-43, with the same flood and accept rates.
pub const CACHE_CAPACITY: u64 = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}: another daemon uses this data dir")]
    Locked(PathBuf),
    #[error("{path}: the store cannot be opened ({detail}); it may be damaged: {advice}", advice = DAMAGE_ADVICE)]
    Corrupt { path: PathBuf, detail: String },
    /// The store does not hold what its manifest proves was flushed, or its
    /// records do not decode: never opened silently.
    #[error("{path}: {what}; {advice}", advice = DAMAGE_ADVICE)]
    Damaged { path: PathBuf, what: String },
    /// The manifest is there but the store is not.
    #[error("{path}: the store is missing, but {manifest} records {generation} flushes of it; restore the data dir from a backup (`hermes store backup`), or move it aside to start afresh")]
    Missing {
        path: PathBuf,
        manifest: PathBuf,
        generation: u64,
    },
    /// The identity key does not belong to this store.
    #[error("{key}: this identity key (node {found}) is not the one the store in {store} belongs to (node {expected}); restore that node's identity.key from a backup, or move the data dir aside to start afresh")]
    WrongIdentity {
        key: PathBuf,
        store: PathBuf,
        found: String,
        expected: String,
    },
    #[error("{0}")]
    Manifest(#[from] ManifestError),
    #[error("{path}: {why}")]
    Io { path: PathBuf, why: String },
    #[error("store: {0}")]
    Sled(sled::Error),
    #[error("store: a stored value does not decode: {0}")]
    Codec(#[from] postcard::Error),
    /// A flush failed once (e.g. a full disk). sled cannot be trusted after
    /// that: measured, a later flush reported success while its log had a
    /// hole, and a message acknowledged after it was gone after a restart.
    /// So nothing more is made durable (no id printed, no receipt sent)
    /// until the daemon is restarted and sled recovers what is on disk.
    #[error("store: a write to disk failed ({0}); nothing more is acknowledged until the daemon is restarted: free disk space, then restart it")]
    WriteFailed(String),
}

/// The first I/O error sled returned in this process, from any operation.
///
/// After one, sled's log may hold a hole that a later flush does not report
/// (measured: a write failed on a full disk, a later flush succeeded, and the
/// message acknowledged after it was gone after a restart, as sled's
/// recovery stops at the hole). So once sled has failed to write, no store of
/// this process acknowledges anything more until the daemon is restarted.
/// One process runs one node; `hermes store backup` to a full disk stops the
/// daemon's acknowledgements too, which is on the safe side.
static IO_FAILURE: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

fn io_failure() -> Option<String> {
    IO_FAILURE
        .lock()
        .map(|f| f.clone())
        .unwrap_or_else(|p| p.into_inner().clone())
}

fn record_io_failure(why: &str) -> String {
    let mut f = IO_FAILURE.lock().unwrap_or_else(|p| p.into_inner());
    f.get_or_insert_with(|| why.to_string()).clone()
}

impl From<sled::Error> for StoreError {
    /// An I/O error is a failed write, with what to do about it; it stops
    /// every later flush (see [`IO_FAILURE`]).
    fn from(e: sled::Error) -> Self {
        match &e {
            sled::Error::Io(io) => StoreError::WriteFailed(record_io_failure(&io.to_string())),
            _ => StoreError::Sled(e),
        }
    }
}

impl From<sled::transaction::TransactionError<StoreError>> for StoreError {
    fn from(e: sled::transaction::TransactionError<StoreError>) -> Self {
        match e {
            sled::transaction::TransactionError::Abort(e) => e,
            sled::transaction::TransactionError::Storage(e) => StoreError::from(e),
        }
    }
}

/// Persisted counters, shown by `hermes status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    Delivered,
    Failed,
    Relayed,
    Dropped,
    Retried,
    Replays,
}

impl Counter {
    /// Every counter, in the order of [`Counters`].
    pub const ALL: [Counter; 6] = [
        Counter::Delivered,
        Counter::Failed,
        Counter::Relayed,
        Counter::Dropped,
        Counter::Retried,
        Counter::Replays,
    ];

    fn index(self) -> usize {
        match self {
            Counter::Delivered => 0,
            Counter::Failed => 1,
            Counter::Relayed => 2,
            Counter::Dropped => 3,
            Counter::Retried => 4,
            Counter::Replays => 5,
        }
    }

    fn key(self) -> &'static [u8] {
        match self {
            Counter::Delivered => b"delivered",
            Counter::Failed => b"failed",
            Counter::Relayed => b"relayed",
            Counter::Dropped => b"dropped",
            Counter::Retried => b"retried",
            Counter::Replays => b"replays",
        }
    }
}

/// The counters, in memory: counting a relayed packet writes nothing. The
/// store's writer saves them with each group of writes, at every flush, and
/// at least every second while they change (module [`writer`]).
#[derive(Default)]
struct Counters {
    values: [AtomicU64; 6],
    dirty: AtomicBool,
}

impl Counters {
    fn load(meta: &sled::Tree) -> Result<Counters, sled::Error> {
        let c = Counters::default();
        for k in Counter::ALL {
            let v = meta.get(k.key())?.map(|v| be_u64(&v)).unwrap_or(0);
            c.values[k.index()].store(v, Ordering::Relaxed);
        }
        Ok(c)
    }

    fn add(&self, k: Counter, by: u64) {
        self.values[k.index()].fetch_add(by, Ordering::Relaxed);
        self.dirty.store(true, Ordering::Release);
    }

    /// Adds what the writer has just saved with the same transaction.
    fn add_saved(&self, k: Counter, by: u64) {
        self.values[k.index()].fetch_add(by, Ordering::Relaxed);
    }

    fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::AcqRel)
    }

    fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Release);
    }

    fn get(&self, k: Counter) -> u64 {
        self.values[k.index()].load(Ordering::Relaxed)
    }

    /// Every counter's key and value, if one changed since the last call.
    fn snapshot_if_dirty(&self) -> Option<Vec<(&'static [u8], u64)>> {
        self.dirty.swap(false, Ordering::AcqRel).then(|| {
            Counter::ALL
                .iter()
                .map(|k| (k.key(), self.get(*k)))
                .collect()
        })
    }
}

/// How many entries the inbox and the drop list hold, kept in memory for
/// `status` (sled's `Tree::len` walks the whole tree, NOTES.md): counted
/// once when the store opens, then changed by every write that adds or
/// removes an entry, once its transaction is committed.
#[derive(Debug, Default)]
struct Sizes {
    inbox: AtomicU64,
    drop: AtomicU64,
}

impl Sizes {
    fn count(tree: &sled::Tree) -> Result<AtomicU64, sled::Error> {
        let mut n = 0u64;
        for item in tree.iter().keys() {
            item?;
            n += 1;
        }
        Ok(AtomicU64::new(n))
    }

    fn add(n: &AtomicU64, by: u64) {
        n.fetch_add(by, Ordering::Relaxed);
    }

    fn sub(n: &AtomicU64, by: u64) {
        let _ = n.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(by))
        });
    }
}

/// A handle on the node's database; cheap to clone, shared by the actors.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    /// Why a flush failed, once one has: every later flush fails too.
    failed: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    outbox: sled::Tree,
    /// The outbox's retry state and due order, in memory (module [`due`]).
    due: Arc<std::sync::Mutex<due::DueIndex>>,
    inbox: sled::Tree,
    drop: sled::Tree,
    drop_exp: sled::Tree,
    peers: sled::Tree,
    contacts: sled::Tree,
    meta: sled::Tree,
    /// Records each flush's generation; `None` for a store opened only to be
    /// read (`store check`, the source of a salvage).
    manifest: Option<Arc<manifest::ManifestWriter>>,
    counters: Arc<Counters>,
    sizes: Arc<Sizes>,
    /// The thread that groups the hot path's writes; `None` for a store
    /// opened only to be read, and for the writer's own handle.
    writer: Option<Arc<WriterHandle>>,
}

impl Store {
    /// Saves the onion guard set (bytes of at most [`MAX_GUARDS_VALUE`]).
    pub fn guards_save(&self, bytes: &[u8]) -> Result<(), StoreError> {
        if bytes.len() > MAX_GUARDS_VALUE {
            return Err(StoreError::Io {
                path: self.path().to_path_buf(),
                why: format!("a guard set of {} bytes is too large", bytes.len()),
            });
        }
        self.meta.insert(GUARDS_KEY, bytes)?;
        Ok(())
    }

    /// The stored onion guard set's bytes.
    pub fn guards_load(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(GUARDS_KEY)?.map(|v| v.to_vec()))
    }

    /// Opens the database in `<data_dir>/store`, or creates it (with its
    /// manifest) in a data dir that has neither. Refuses a store that lost
    /// flushed writes, whose records do not decode, or that is missing while
    /// its manifest is there (see [`check`]).
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        Ok(check::open_checked(data_dir)?.0)
    }

    /// [`Store::open`], also saying whether the store was created, found, or
    /// adopted from a version without manifests.
    pub fn open_reporting(data_dir: &Path) -> Result<(Store, Opened), StoreError> {
        check::open_checked(data_dir)
    }

    /// Opens sled in `<data_dir>/store` without any check, and without a
    /// manifest writer.
    fn open_raw(data_dir: &Path) -> Result<Store, StoreError> {
        let path = data_dir.join("store");
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(CACHE_CAPACITY)
            .open()
            .map_err(|e| classify_open_error(&path, e))?;
        let tree = |name: &str| {
            db.open_tree(name)
                .map_err(|e| classify_open_error(&path, e))
        };
        let meta = tree("meta")?;
        let outbox = tree("outbox")?;
        let due = outbox::load_due(&outbox).map_err(|e| classify_open_error(&path, e))?;
        let inbox = tree("inbox")?;
        let drop = tree("drop")?;
        let sizes = Sizes {
            inbox: Sizes::count(&inbox).map_err(|e| classify_open_error(&path, e))?,
            drop: Sizes::count(&drop).map_err(|e| classify_open_error(&path, e))?,
        };
        Ok(Store {
            sizes: Arc::new(sizes),
            outbox,
            due: Arc::new(std::sync::Mutex::new(due)),
            inbox,
            drop,
            drop_exp: tree("drop_exp")?,
            peers: tree("peers")?,
            contacts: tree("contacts")?,
            counters: Arc::new(Counters::load(&meta).map_err(|e| classify_open_error(&path, e))?),
            meta,
            db,
            failed: Default::default(),
            manifest: None,
            writer: None,
        })
    }

    /// The outbox's in-memory index (a poisoned lock is taken as it is: the
    /// index is changed only after its write succeeded).
    fn due_index(&self) -> std::sync::MutexGuard<'_, due::DueIndex> {
        self.due.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why the store stopped making writes durable, if it has.
    pub fn write_failure(&self) -> Option<String> {
        self.failed
            .lock()
            .map(|f| f.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
            .or_else(io_failure)
    }

    fn check_failed(&self) -> Result<(), StoreError> {
        match self.write_failure() {
            Some(why) => Err(StoreError::WriteFailed(why)),
            None => Ok(()),
        }
    }

    /// Records the first flush failure; returns the error to report.
    fn fail(&self, e: sled::Error) -> StoreError {
        let why = record_io_failure(&e.to_string());
        let mut f = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        let why = f.get_or_insert(why).clone();
        StoreError::WriteFailed(why)
    }

    /// Starts the writer thread (module [`writer`]); from now on flushes
    /// and the hot path's writes go through it.
    fn start_writer(&mut self) -> Result<(), StoreError> {
        if self.writer.is_none() {
            let handle = WriterHandle::start(self.clone())?;
            self.writer = Some(Arc::new(handle));
        }
        Ok(())
    }

    /// Hands a job to the writer and waits (asynchronously) for its answer.
    async fn submit(&self, op: Op, durable: bool) -> Result<Outcome, StoreError> {
        let Some(w) = &self.writer else {
            return Err(writer::stopped());
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Job {
            op,
            durable,
            reply: Reply::Async(tx),
        };
        if let Err(job) = w.try_submit(job) {
            // The queue is full: wait for room off the async thread.
            let sender = w.sender().ok_or_else(writer::stopped)?;
            tokio::task::spawn_blocking(move || sender.send(job).map_err(|_| writer::stopped()))
                .await
                .map_err(|_| writer::stopped())??;
        }
        rx.await.map_err(|_| writer::stopped())?
    }

    /// Hands a job to the writer without waiting for it; if the writer's
    /// queue is full (or there is no writer), the job is done here.
    fn submit_later(&self, op: Op) {
        let job = Job {
            op,
            durable: false,
            reply: Reply::None,
        };
        let job = match &self.writer {
            Some(w) => match w.try_submit(job) {
                Ok(()) => return,
                Err(job) => job,
            },
            None => job,
        };
        writer::apply_here(self, job);
    }

    /// Hands a job to the writer and blocks this thread until it is done.
    fn submit_blocking(&self, op: Op, durable: bool) -> Result<Outcome, StoreError> {
        let Some(w) = &self.writer else {
            return Err(writer::stopped());
        };
        let (tx, rx) = std::sync::mpsc::channel();
        w.submit_blocking(Job {
            op,
            durable,
            reply: Reply::Blocking(tx),
        })?;
        rx.recv().map_err(|_| writer::stopped())?
    }

    /// Makes every write so far durable, without blocking the caller's
    /// thread: the writer flushes once for every job and flush waiting
    /// with it (and the manifest with it). After one failed flush, every
    /// later one fails ([`StoreError::WriteFailed`]).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.check_failed()?;
        if self.writer.is_some() {
            self.submit(Op::Flush, true).await?;
            return Ok(());
        }
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.flush_now())
            .await
            .map_err(|e| StoreError::Io {
                path: PathBuf::from(MANIFEST_FILE),
                why: format!("the flush did not finish: {e}"),
            })?
    }

    /// Blocking flush, for shutdown (never on an async thread).
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.check_failed()?;
        if self.writer.is_some() {
            self.submit_blocking(Op::Flush, true)?;
            return Ok(());
        }
        self.flush_now()
    }

    /// Saves the counters if they changed (no flush).
    fn save_counters(&self) -> Result<(), StoreError> {
        if let Some(c) = self.counters.snapshot_if_dirty() {
            // Plain inserts, not a `Batch`: each counter is its own key and
            // none must change with another (the delivered and failed counts,
            // which must change with the outbox, are saved in the writer's
            // transaction). In sled 0.34.7 a batch, like a transaction, writes
            // the log buffer out synchronously before and after itself: more
            // disk syncs at every flush that finds counters changed (NOTES.md).
            for (k, v) in c {
                self.meta.insert(k, &v.to_be_bytes())?;
            }
        }
        Ok(())
    }

    /// The flush itself, on the calling thread: counters, generation, sled's
    /// flush, then the manifest.
    fn flush_now(&self) -> Result<(), StoreError> {
        self.check_failed()?;
        self.save_counters()?;
        let generation = self.next_generation()?;
        self.db.flush().map_err(|e| self.fail(e))?;
        // A concurrent flush may have failed meanwhile: its writes and ours
        // share the log.
        self.check_failed()?;
        if let (Some(m), Some(generation)) = (&self.manifest, generation) {
            m.flushed(generation)?;
        }
        Ok(())
    }

    /// Bumps the generation (before a flush, so the flush carries it); `None`
    /// for a read-only open, which never bumps.
    fn next_generation(&self) -> Result<Option<u64>, StoreError> {
        if self.manifest.is_none() {
            return Ok(None);
        }
        let old = self.meta.fetch_and_update(GENERATION_KEY, |old| {
            let n = old.map(be_u64).unwrap_or(0).saturating_add(1);
            Some(n.to_be_bytes().to_vec())
        })?;
        Ok(Some(old.map(|v| be_u64(&v)).unwrap_or(0).saturating_add(1)))
    }

    /// The generation the store holds (0 before the first flush).
    pub fn generation(&self) -> Result<u64, StoreError> {
        Ok(self
            .meta
            .get(GENERATION_KEY)?
            .map(|v| be_u64(&v))
            .unwrap_or(0))
    }

    /// Ties the store to the node address of its identity key on first use,
    /// and refuses a key that is not the one it was tied to. `key_path` is
    /// only for the message.
    pub fn bind_identity(&self, address: &[u8; 32], key_path: &Path) -> Result<(), StoreError> {
        match self.meta.get(IDENTITY_KEY)? {
            Some(v) if v.as_ref() == address => Ok(()),
            Some(v) => Err(StoreError::WrongIdentity {
                key: key_path.to_path_buf(),
                store: self.path(),
                found: hex::encode(address),
                expected: hex::encode(&v),
            }),
            None => {
                self.meta.insert(IDENTITY_KEY, &address[..])?;
                Ok(())
            }
        }
    }

    /// The node address the store is tied to, if any.
    pub fn bound_identity(&self) -> Result<Option<[u8; 32]>, StoreError> {
        Ok(self
            .meta
            .get(IDENTITY_KEY)?
            .and_then(|v| <[u8; 32]>::try_from(v.as_ref()).ok()))
    }

    /// `<data_dir>/store`
    pub fn path(&self) -> PathBuf {
        match &self.manifest {
            Some(m) => m.data_dir().join("store"),
            None => PathBuf::from("store"),
        }
    }

    /// Counts in memory; saved by the writer (see [`Counters`]).
    pub fn bump(&self, counter: Counter, by: u64) -> Result<(), StoreError> {
        self.counters.add(counter, by);
        Ok(())
    }

    pub fn counter(&self, counter: Counter) -> Result<u64, StoreError> {
        Ok(self.counters.get(counter))
    }
}

fn classify_open_error(path: &Path, e: sled::Error) -> StoreError {
    match &e {
        sled::Error::Io(io) if io.to_string().contains("lock") => {
            StoreError::Locked(path.to_path_buf())
        }
        sled::Error::Corruption { .. }
        | sled::Error::Unsupported(_)
        | sled::Error::ReportableBug(_) => StoreError::Corrupt {
            // Name sled's log file when it is there: that is what is damaged.
            path: Some(path.join("db"))
                .filter(|db| db.exists())
                .unwrap_or_else(|| path.to_path_buf()),
            detail: e.to_string(),
        },
        _ => StoreError::Sled(e),
    }
}

/// Sets every dir under `dir` (and it) to 0700 and every file to 0600: sled
/// creates its files with the process umask, and an older version may have
/// left them readable by others.
fn make_private(dir: &Path) -> Result<(), StoreError> {
    let err = |p: &Path, e: std::io::Error| StoreError::Io {
        path: p.to_path_buf(),
        why: format!("cannot set the mode: {e}"),
    };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| err(dir, e))?;
    for entry in std::fs::read_dir(dir).map_err(|e| err(dir, e))? {
        let entry = entry.map_err(|e| err(dir, e))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| err(&path, e))?;
        if kind.is_dir() {
            make_private(&path)?;
        } else if kind.is_file() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| err(&path, e))?;
        }
    }
    Ok(())
}

/// Reads a big-endian u64 from the first 8 bytes (0 if shorter).
fn be_u64(bytes: &[u8]) -> u64 {
    bytes
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// Test helpers shared by the store's modules.
#[cfg(test)]
pub(crate) mod test_util {
    use super::{Store, StoreError};
    use std::path::Path;

    /// `f` once sled has let go of a store this test dropped: sled releases
    /// its file lock when its last background write ends, which may be a
    /// moment after the handle is dropped (a daemon's exit releases it at
    /// once). Polls with a deadline.
    pub(crate) fn unlocked<T>(f: impl Fn() -> Result<T, StoreError>) -> Result<T, StoreError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match f() {
                Err(StoreError::Locked(_)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                other => return other,
            }
        }
    }

    /// Opens the test store at `dir`, waiting for a dropped handle's lock.
    pub(crate) fn open(dir: &Path) -> Store {
        unlocked(|| Store::open(dir)).expect("the test store opens")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_persist_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = crate::store::test_util::open(dir.path());
            s.bump(Counter::Relayed, 2).unwrap();
            s.bump(Counter::Relayed, 3).unwrap();
            s.flush_blocking().unwrap();
        }
        let s = crate::store::test_util::open(dir.path());
        assert_eq!(s.counter(Counter::Relayed).unwrap(), 5);
        assert_eq!(s.counter(Counter::Dropped).unwrap(), 0);
    }

    #[test]
    fn second_open_reports_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let _s = crate::store::test_util::open(dir.path());
        match Store::open(dir.path()) {
            Err(StoreError::Locked(_)) => {}
            Err(other) => panic!("expected Locked, got {other}"),
            Ok(_) => panic!("second open succeeded"),
        }
    }
}
