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
//! is noticed. It holds two fixed-size *slots* of [`SLOT_BYTES`] bytes, each a
//! complete manifest in small text, padded with newlines:
//!
//! ```text
//! hermes-store-manifest 1
//! generation 42
//! written_ms 1767225600000
//! sha256 <64 hex digits of the lines above, newlines included>
//! ```
//!
//! The first line names the format and its version; a slot with any other
//! version, a bad checksum, or a missing line is invalid. A reader takes the
//! valid slot with the highest generation; a file with no valid slot is damage.
//!
//! The file is created atomically (temporary file 0600, `fsync`, `rename`,
//! `fsync` of the dir), both slots alike. After that, each flush overwrites
//! the *other* slot than the last one in place and `fdatasync`s the file: the
//! size never changes, so that is one small synchronous write, not the four
//! of a rename (measured: 1.5 ms against 8 ms on this machine's disk). A write
//! torn by a power cut spoils only the slot being written; the other still
//! holds the previous generation.

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
/// Bytes of one slot; the file is exactly two.
pub const SLOT_BYTES: usize = 256;
const FILE_BYTES: usize = 2 * SLOT_BYTES;

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

/// One slot's text for `m` (unpadded).
pub fn encode(m: &Manifest) -> String {
    let body = body(m);
    let sum = hex::encode(Sha256::digest(body.as_bytes()));
    format!("{body}sha256 {sum}\n")
}

/// One slot's bytes for `m`: [`encode`] padded with newlines.
fn slot(m: &Manifest) -> [u8; SLOT_BYTES] {
    let mut out = [b'\n'; SLOT_BYTES];
    let text = encode(m);
    // At most ~130 bytes: the numbers are u64s.
    let n = text.len().min(SLOT_BYTES);
    out[..n].copy_from_slice(&text.as_bytes()[..n]);
    out
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
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ManifestError::Io { path, source }),
    };
    if bytes.len() != FILE_BYTES {
        return Err(ManifestError::Damaged {
            path,
            why: format!("{} bytes, expected {FILE_BYTES}", bytes.len()),
        });
    }
    let mut best: Option<Manifest> = None;
    let mut why = Vec::new();
    for (i, chunk) in bytes.chunks(SLOT_BYTES).enumerate() {
        let decoded = std::str::from_utf8(chunk)
            .map_err(|_| "not text".to_string())
            .and_then(decode);
        match decoded {
            Ok(m) if best.is_none_or(|b| b.generation < m.generation) => best = Some(m),
            Ok(_) => {}
            Err(e) => why.push(format!("slot {i}: {e}")),
        }
    }
    match best {
        Some(m) => Ok(Some(m)),
        None => Err(ManifestError::Damaged {
            path,
            why: why.join("; "),
        }),
    }
}

/// Creates (or replaces) `<data_dir>/store.manifest` atomically, both slots
/// holding `m`: a temporary file (0600) in the same dir, fsync, rename,
/// fsync of the dir. After a crash the file is the old one or the new one.
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
    let one = slot(m);
    f.write_all(&one).map_err(io(&tmp))?;
    f.write_all(&one).map_err(io(&tmp))?;
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
    /// What the file holds (the lock also orders the writes).
    state: Mutex<WriterState>,
}

#[derive(Debug)]
struct WriterState {
    /// The generation the file on disk records.
    written: u64,
    /// The open file and the slot written last; `None` until the first write
    /// (which creates the file atomically if it is not there).
    file: Option<(fs::File, usize)>,
}

impl ManifestWriter {
    /// `written`: what the file on disk says; `flushed`: what sled holds.
    pub(super) fn new(data_dir: &Path, written: u64, flushed: u64) -> Arc<ManifestWriter> {
        Arc::new(ManifestWriter {
            data_dir: data_dir.to_path_buf(),
            flushed: AtomicU64::new(flushed.max(written)),
            state: Mutex::new(WriterState {
                written,
                file: None,
            }),
        })
    }

    pub(super) fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Records that the sled flush of `generation` finished, and makes sure
    /// the manifest says at least that much. Blocking (one small write and
    /// `fdatasync`).
    pub(super) fn flushed(&self, generation: u64) -> Result<(), ManifestError> {
        self.flushed.fetch_max(generation, Ordering::AcqRel);
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.written >= generation {
            // A write that started after our flush finished covered it.
            return Ok(());
        }
        let m = Manifest {
            generation: self.flushed.load(Ordering::Acquire),
            written_ms: crate::crypto::unix_now_ms(),
        };
        let path = path(&self.data_dir);
        let io = |source| ManifestError::Io {
            path: path.clone(),
            source,
        };
        match st.file.as_mut() {
            Some((f, last)) => {
                use std::os::unix::fs::FileExt;
                let other = 1 - *last;
                f.write_all_at(&slot(&m), (other * SLOT_BYTES) as u64)
                    .map_err(io)?;
                f.sync_data().map_err(io)?;
                *last = other;
            }
            None => {
                // First write of this run: a whole new file, atomically; then
                // keep it open for the in-place updates.
                write(&self.data_dir, &m)?;
                let f = fs::OpenOptions::new().write(true).open(&path).map_err(io)?;
                st.file = Some((f, 0));
            }
        }
        st.written = m.generation;
        Ok(())
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
        w.flushed(4).unwrap();
        w.flushed(5).unwrap();
        assert_eq!(read(dir.path()).unwrap().unwrap().generation, 5);
        assert_eq!(fs::metadata(path(dir.path())).unwrap().len(), 512);
        // A torn write spoils one slot: the other still reads.
        let mut b = fs::read(path(dir.path())).unwrap();
        b[30] ^= 1;
        fs::write(path(dir.path()), &b).unwrap();
        assert_eq!(read(dir.path()).unwrap().unwrap().generation, 4);
        b[SLOT_BYTES + 30] ^= 1;
        fs::write(path(dir.path()), &b).unwrap();
        assert!(matches!(
            read(dir.path()),
            Err(ManifestError::Damaged { .. })
        ));
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
