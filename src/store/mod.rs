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
//! | `peers` | address | the newest signed record of that node |
//! | `contacts` | `name/<NAME>` or `ip/<IP:PORT>` | a pinned node address (`contacts.rs`) |
//! | `meta` | counter name | `be_u64` |
//!
//! Writes reach the disk only on [`Store::flush`] (or sled's own flush every
//! 500 ms): callers flush before they make a promise that depends on a write
//! (ARCHITECTURE.md, durability points), and sled groups concurrent flushes.

mod contacts;
mod drop_list;
mod inbox;
mod outbox;
mod peers;

use std::path::{Path, PathBuf};

pub use contacts::{Contact, ContactKey, Pinned, MAX_CONTACTS};
pub use drop_list::{DropEntry, DropKey};
pub use inbox::InboxKey;
pub use outbox::OutboxEntry;

/// sled caches this much; its default of 1 GiB is far more than a node needs.
pub const CACHE_CAPACITY: u64 = 32 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}: another daemon uses this data dir")]
    Locked(PathBuf),
    #[error("{path}: the store cannot be opened ({detail}); it may be damaged. Move the data dir aside to start afresh (the identity key is in identity.key)")]
    Corrupt { path: PathBuf, detail: String },
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

impl From<sled::Error> for StoreError {
    /// A full disk is a failed write, with what to do about it.
    fn from(e: sled::Error) -> Self {
        match &e {
            sled::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => {
                StoreError::WriteFailed(io.to_string())
            }
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
}

impl Store {
    /// Opens (or creates) the database in `<data_dir>/store`.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
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
        })
    }

    /// Why the store stopped making writes durable, if it has.
    pub fn write_failure(&self) -> Option<String> {
        self.failed
            .lock()
            .map(|f| f.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn check_failed(&self) -> Result<(), StoreError> {
        match self.write_failure() {
            Some(why) => Err(StoreError::WriteFailed(why)),
            None => Ok(()),
        }
    }

    /// Records the first flush failure; returns the error to report.
    fn fail(&self, e: sled::Error) -> StoreError {
        let why = e.to_string();
        let mut f = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        let why = f.get_or_insert(why).clone();
        StoreError::WriteFailed(why)
    }

    /// Makes every write so far durable, without blocking the caller's
    /// thread (sled runs the flush on its own pool and joins concurrent ones).
    /// After one failed flush, every later one fails ([`StoreError::WriteFailed`]).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.check_failed()?;
        self.db.flush_async().await.map_err(|e| self.fail(e))?;
        // A concurrent flush may have failed meanwhile: its writes and ours
        // share the log.
        self.check_failed()
    }

    /// Blocking flush, for shutdown.
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.check_failed()?;
        self.db.flush().map_err(|e| self.fail(e))?;
        self.check_failed()
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
            path: path.to_path_buf(),
            detail: e.to_string(),
        },
        _ => StoreError::Sled(e),
    }
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
