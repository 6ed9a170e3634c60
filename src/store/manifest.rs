//! The store manifest: `<data_dir>/store.manifest`, the store's own proof of
//! how far its flushed writes reach.
//!
//! sled cannot tell a damaged log from a short one: its recovery stops at the
//! first bad spot and opens what came before, without an error. So every
//! [`Store::flush`](super::Store::flush) first bumps a generation counter kept
//! *inside* sled (`meta` tree, key `generation`), flushes sled, and then
//! records that generation here. At open the store compares the two: a store
//! whose generation is lower than the manifest's has lost flushed writes.
//!
//! The file lives beside `store/`, not inside it, so that a deleted `store/`
//! is noticed. It is small text, written atomically (temporary file in the
//! same dir, `fsync`, `rename`, `fsync` of the dir) with mode 0600:
//!
//! ```text
//! hermes-store-manifest 1
//! generation 42
//! written_ms 1767225600000
//! sha256 <64 hex digits of the lines above, newlines included>
//! ```
//!
//! The first line names the format and its version; a reader refuses any
//! other version, a bad checksum, or a missing line.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

/// Name of the manifest file inside the data dir.
pub const MANIFEST_FILE: &str = "store.manifest";
/// The format version written on the first line.
pub const MANIFEST_VERSION: u32 = 1;
/// The first line's tag.
const MAGIC: &str = "hermes-store-manifest";
/// A manifest larger than this is not ours.
const MAX_MANIFEST_BYTES: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: cannot read or write the store manifest: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: the store manifest is damaged ({why})")]
    Damaged { path: PathBuf, why: String },
}

/// What a manifest records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The store generation that was flushed when this was written.
    pub generation: u64,
    /// Milliseconds since the Unix epoch when it was written.
    pub written_ms: u64,
}

/// `<data_dir>/store.manifest`
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(MANIFEST_FILE)
}

fn body(m: &Manifest) -> String {
    format!(
        "{MAGIC} {MANIFEST_VERSION}\ngeneration {}\nwritten_ms {}\n",
        m.generation, m.written_ms
    )
}

/// The file's bytes for `m`.
pub fn encode(m: &Manifest) -> String {
    let body = body(m);
    let sum = hex::encode(Sha256::digest(body.as_bytes()));
    format!("{body}sha256 {sum}\n")
}

/// Parses a manifest file's text; the error says what is wrong with it.
pub fn decode(text: &str) -> Result<Manifest, String> {
    let (body, last) = match text.trim_end_matches('\n').rsplit_once('\n') {
        Some((b, l)) => (format!("{b}\n"), l),
        None => return Err("too short".into()),
    };
    let sum = last
        .strip_prefix("sha256 ")
        .ok_or("no checksum line".to_string())?;
    if hex::encode(Sha256::digest(body.as_bytes())) != sum {
        return Err("checksum mismatch".into());
    }
    let mut lines = body.lines();
    match lines.next().and_then(|l| l.split_once(' ')) {
        Some((MAGIC, v)) if v == MANIFEST_VERSION.to_string() => {}
        Some((MAGIC, v)) => {
            return Err(format!(
                "format version {v}, this hermes reads {MANIFEST_VERSION}"
            ))
        }
        _ => return Err("not a hermes store manifest".into()),
    }
    let mut field = |name: &str| -> Result<u64, String> {
        lines
            .next()
            .and_then(|l| l.strip_prefix(name))
            .and_then(|l| l.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("no valid {name} line"))
    };
    let generation = field("generation")?;
    let written_ms = field("written_ms")?;
    Ok(Manifest {
        generation,
        written_ms,
    })
}

/// Reads `<data_dir>/store.manifest`: `None` if there is none.
pub fn read(data_dir: &Path) -> Result<Option<Manifest>, ManifestError> {
    let path = path(data_dir);
    let io = |source| ManifestError::Io {
        path: path.clone(),
        source,
    };
    let meta = match fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    if meta.len() > MAX_MANIFEST_BYTES {
        return Err(ManifestError::Damaged {
            path,
            why: format!("{} bytes, far too long", meta.len()),
        });
    }
    let bytes = fs::read(&path).map_err(io)?;
    let text = String::from_utf8(bytes).map_err(|_| ManifestError::Damaged {
        path: path.clone(),
        why: "not text".into(),
    })?;
    decode(&text)
        .map(Some)
        .map_err(|why| ManifestError::Damaged { path, why })
}

/// Writes `<data_dir>/store.manifest` atomically: a temporary file (0600) in
/// the same dir, fsync, rename over the old one, fsync of the dir. After a
/// crash the file is the old manifest or the new one, never a mix.
pub fn write(data_dir: &Path, m: &Manifest) -> Result<(), ManifestError> {
    let path = path(data_dir);
    let tmp = data_dir.join(format!("{MANIFEST_FILE}.tmp"));
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| ManifestError::Io { path: p, source }
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(encode(m).as_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    fs::rename(&tmp, &path).map_err(io(&path))?;
    fs::File::open(data_dir)
        .and_then(|d| d.sync_all())
        .map_err(io(data_dir))?;
    Ok(())
}

/// Keeps the manifest in step with the flushes of one store: generations only
/// grow on disk, and a write covers every flush finished before it (so a burst
/// of concurrent flushes costs fewer manifest writes than flushes).
#[derive(Debug)]
pub(super) struct ManifestWriter {
    data_dir: PathBuf,
    /// The highest generation whose sled flush has finished.
    flushed: AtomicU64,
    /// The generation the file on disk records (the lock also orders writes).
    written: Mutex<u64>,
}

impl ManifestWriter {
    /// `written`: what the file on disk says; `flushed`: what sled holds.
    pub(super) fn new(data_dir: &Path, written: u64, flushed: u64) -> Arc<ManifestWriter> {
        Arc::new(ManifestWriter {
            data_dir: data_dir.to_path_buf(),
            flushed: AtomicU64::new(flushed.max(written)),
            written: Mutex::new(written),
        })
    }

    /// Records that the sled flush of `generation` finished, and makes sure
    /// the manifest says at least that much. Blocking (a file write + fsync).
    pub(super) fn flushed(&self, generation: u64) -> Result<(), ManifestError> {
        self.flushed.fetch_max(generation, Ordering::AcqRel);
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        if *written >= generation {
            // A write that started after our flush finished covered it.
            return Ok(());
        }
        let target = self.flushed.load(Ordering::Acquire);
        write(
            &self.data_dir,
            &Manifest {
                generation: target,
                written_ms: crate::crypto::unix_now_ms(),
            },
        )?;
        *written = target;
        Ok(())
    }

    pub(super) fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn round_trips_and_refuses_damage() {
        let m = Manifest {
            generation: 42,
            written_ms: 7,
        };
        let text = encode(&m);
        assert_eq!(decode(&text), Ok(m));
        let flipped = text.replace("generation 42", "generation 43");
        assert_eq!(decode(&flipped), Err("checksum mismatch".into()));
        assert!(decode("").is_err());
        assert!(decode("garbage\n").is_err());
        let v2 = {
            let body = "hermes-store-manifest 2\ngeneration 1\nwritten_ms 1\n";
            format!("{body}sha256 {}\n", hex::encode(Sha256::digest(body)))
        };
        assert!(decode(&v2).unwrap_err().contains("version 2"));
    }

    #[test]
    fn written_atomically_0600_and_only_forward() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let w = ManifestWriter::new(dir.path(), 0, 0);
        w.flushed(3).unwrap();
        w.flushed(2).unwrap();
        assert_eq!(read(dir.path()).unwrap().unwrap().generation, 3);
        let mode = fs::metadata(path(dir.path())).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!dir.path().join("store.manifest.tmp").exists());
        fs::write(path(dir.path()), "junk").unwrap();
        assert!(matches!(
            read(dir.path()),
            Err(ManifestError::Damaged { .. })
        ));
    }
}
