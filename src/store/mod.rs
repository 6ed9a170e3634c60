//! The node's durable state: the only code that touches sled.
//!
//! One sled database per data dir, with a fixed set of trees (never a tree per
//! peer: sled wastes disk on many trees):
//!
//! | tree | key | value |
//! | --- | --- | --- |
//! | `outbox` | message id | [`OutboxEntry`]: sealed message, retry state |
//! | `outbox_due` | `be_u64(due_ms) ‖ id` | due-time index of `outbox` |
//! | `inbox` | `be_u64(seq) ‖ id` | a delivered [`InboxMessage`] |
//! | `drop` | [`DropKey`] | [`DropEntry`]: expiry, the receipt if delivered |
//! | `drop_exp` | `be_u64(expires_at) ‖ drop key` | expiry index of `drop` |
//! | `peers` | address; `anchors` | [`PeerRecord`]: that node's newest signed record and book state; the anchors' records |
//! | `contacts` | `name/<NAME>` or `ip/<IP:PORT>` | a pinned node address (`contacts.rs`) |
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
mod inbox;
pub mod manifest;
mod outbox;
mod peers;

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

/// `meta` key of the generation counter that [`Store::flush`] bumps.
const GENERATION_KEY: &[u8] = b"generation";
/// `meta` key of the node address this store belongs to.
const IDENTITY_KEY: &[u8] = b"identity";
/// What to do about a damaged store; ends every damage message.
pub const DAMAGE_ADVICE: &str = "run `hermes store salvage DIR` to copy what is still readable into a fresh store, or move the data dir aside to start afresh (`hermes store check` shows the state)";

/// sled caches this much; its default of 1 GiB is far more than a node needs.
pub const CACHE_CAPACITY: u64 = 32 * 1024 * 1024;

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

/// A handle on the node's database; cheap to clone, shared by the actors.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    /// Why a flush failed, once one has: every later flush fails too.
    failed: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    outbox: sled::Tree,
    outbox_due: sled::Tree,
    inbox: sled::Tree,
    drop: sled::Tree,
    drop_exp: sled::Tree,
    peers: sled::Tree,
    contacts: sled::Tree,
    meta: sled::Tree,
    /// Records each flush's generation; `None` for a store opened only to be
    /// read (`store check`, the source of a salvage).
    manifest: Option<Arc<manifest::ManifestWriter>>,
}

impl Store {
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
        Ok(Store {
            outbox: tree("outbox")?,
            outbox_due: tree("outbox_due")?,
            inbox: tree("inbox")?,
            drop: tree("drop")?,
            drop_exp: tree("drop_exp")?,
            peers: tree("peers")?,
            contacts: tree("contacts")?,
            meta: tree("meta")?,
            db,
            failed: Default::default(),
            manifest: None,
        })
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

    /// Makes every write so far durable, without blocking the caller's
    /// thread (sled runs the flush on its own pool and joins concurrent ones;
    /// the manifest is written on tokio's blocking pool). After one failed
    /// flush, every later one fails ([`StoreError::WriteFailed`]).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.check_failed()?;
        let generation = self.next_generation()?;
        self.db.flush_async().await.map_err(|e| self.fail(e))?;
        // A concurrent flush may have failed meanwhile: its writes and ours
        // share the log.
        self.check_failed()?;
        if let (Some(m), Some(generation)) = (self.manifest.clone(), generation) {
            tokio::task::spawn_blocking(move || m.flushed(generation))
                .await
                .map_err(|e| StoreError::Io {
                    path: PathBuf::from(MANIFEST_FILE),
                    why: format!("the manifest write did not finish: {e}"),
                })??;
        }
        Ok(())
    }

    /// Blocking flush, for shutdown.
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.check_failed()?;
        let generation = self.next_generation()?;
        self.db.flush().map_err(|e| self.fail(e))?;
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

    pub fn bump(&self, counter: Counter, by: u64) -> Result<(), StoreError> {
        self.meta.fetch_and_update(counter.key(), |old| {
            let n = old.map(be_u64).unwrap_or(0).saturating_add(by);
            Some(n.to_be_bytes().to_vec())
        })?;
        Ok(())
    }

    pub fn counter(&self, counter: Counter) -> Result<u64, StoreError> {
        Ok(self
            .meta
            .get(counter.key())?
            .map(|v| be_u64(&v))
            .unwrap_or(0))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_persist_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.bump(Counter::Relayed, 2).unwrap();
            s.bump(Counter::Relayed, 3).unwrap();
            s.flush_blocking().unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.counter(Counter::Relayed).unwrap(), 5);
        assert_eq!(s.counter(Counter::Dropped).unwrap(), 0);
    }

    #[test]
    fn second_open_reports_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let _s = Store::open(dir.path()).unwrap();
        match Store::open(dir.path()) {
            Err(StoreError::Locked(_)) => {}
            Err(other) => panic!("expected Locked, got {other}"),
            Ok(_) => panic!("second open succeeded"),
        }
    }
}
