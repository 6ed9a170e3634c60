//! Rotating packet keys: the medium-term X25519 keys relays peel onion
//! packets with and senders seal letters to.
//!
//! A node announces one *current* key with its validity window
//! (`not_before`, `not_after`) in its signed record. When the window ends it
//! makes a new key; the previous one is kept for a grace period (for packets
//! wrapped to it from a record seen just before the rotation, still in
//! flight), then deleted. Once a key is deleted, packets recorded earlier
//! cannot be opened by anyone, the node's long-term identity key included:
//! forward secrecy at the granularity of the rotation (docs/packet.md).
//!
//! ## Early rotation
//!
//! A relay keeps a bounded number of replay tags per key
//! (`limits.replay_tags_per_key`); once its current key holds 3/4 of them,
//! the key rotation ends that key's window now ([`Keyring::rotate_early`])
//! and makes the next one, as a scheduled rotation does: the new key is
//! current for a whole period, the old one is in its grace period from now
//! on. Not more than once per `min_age` of the current key (a floor the
//! caller names), so a peer filling tags cannot make keys as fast as it
//! likes; and still never more than [`MAX_KEYS`] keys: past that the oldest
//! is deleted (with its tags) early, and packets still on their way to it
//! are lost, as after its grace period.
//!
//! [`Keyring`] is pure: given `now`, [`Keyring::rotate`] says what changed
//! ([`Rotation`]), and the caller persists it with [`KeyFile::save`] and
//! drops the replay tags of the deleted keys. Each key has an `epoch`, a
//! number that only grows, which names it in the replay-tag store.
//!
//! ## The file
//!
//! `<data_dir>/packet.keys` (beside `identity.key`, mode 0600):
//!
//! | bytes | field |
//! | --- | --- |
//! | 8 | magic `hermes-k` |
//! | 1 | version (1) |
//! | 1 | key count n, at most [`MAX_KEYS`] |
//! | 56 × n | epoch, not_before, not_after (u64 big-endian, seconds), secret (32) |
//! | 32 | SHA-256 of everything before it |
//!
//! It is written atomically (a temporary file, fsync, rename, fsync of the
//! dir). A file that is cut, changed or otherwise damaged is refused with
//! [`KeyringError::Damaged`], which says what to do; it is never replaced
//! silently.
//!
//! ## Deleting a key
//!
//! When a save drops a key, the replaced file is overwritten with zeros in
//! place (through a handle opened before the rename) and synced, so on a
//! filesystem that writes in place (ext4, xfs: the defaults) its blocks no
//! longer hold the secret. What we cannot reach: copies a copy-on-write
//! filesystem (btrfs, zfs) or an SSD's wear levelling keep in freed blocks, a
//! filesystem journal in `data=journal` mode, snapshots and backups of the data
//! dir, and swap. sled never holds key material (the replay tags it stores are
//! hash outputs that say nothing about a key). Full-disk encryption and
//! encrypted swap close those gaps; docs/packet.md says so.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::sphinx::{public_key, OnionError, OnionFormat, Packet, Peeled};

/// Name of the packet-key file inside the data dir.
pub const KEY_FILE: &str = "packet.keys";
/// Most keys kept at once (current and the ones in their grace period).
pub const MAX_KEYS: usize = 4;
const MAGIC: &[u8; 8] = b"hermes-k";
const FILE_VERSION: u8 = 1;
const ENTRY_LEN: usize = 8 + 8 + 8 + 32;
const HEAD_LEN: usize = 8 + 1 + 1;
const SUM_LEN: usize = 32;
/// Largest valid file; a larger one is refused before it is read.
pub const MAX_FILE_LEN: usize = HEAD_LEN + MAX_KEYS * ENTRY_LEN + SUM_LEN;
/// Shortest rotation period accepted.
pub const MIN_PERIOD_SECS: u64 = 1;
/// What to do about a damaged key file; ends its error.
pub const KEYS_ADVICE: &str = "restore it from a backup of the data dir, or remove it to start with fresh packet keys (packets already sent to the old keys are then lost, as after a rotation)";

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("{path}: cannot read or write the packet keys: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: the packet keys file is damaged ({why}); {advice}", advice = KEYS_ADVICE)]
    Damaged { path: PathBuf, why: String },
    #[error("{path}: others can read the packet keys (mode {mode:o}); run `chmod 600 {path}`")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("key schedule refused: {0}")]
    Schedule(&'static str),
}

/// When keys rotate: a key is current for `period` seconds, then accepted
/// for `grace` more, then deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    period: u64,
    grace: u64,
}

impl Schedule {
    /// At most `MAX_KEYS` keys are ever alive: the grace period may not be
    /// longer than `MAX_KEYS - 1` periods.
    pub fn new(period_secs: u64, grace_secs: u64) -> Result<Schedule, KeyringError> {
        if period_secs < MIN_PERIOD_SECS {
            return Err(KeyringError::Schedule("the period must be at least 1 s"));
        }
        if grace_secs > period_secs.saturating_mul(MAX_KEYS as u64 - 1) {
            return Err(KeyringError::Schedule(
                "the grace period may be at most 3 periods",
            ));
        }
        Ok(Schedule {
            period: period_secs,
            grace: grace_secs,
        })
    }

    /// Daily keys with an hour of grace (the config's defaults).
    pub fn default_daily() -> Schedule {
        Schedule {
            period: 86_400,
            grace: 3_600,
        }
    }

    pub fn period(&self) -> u64 {
        self.period
    }

    pub fn grace(&self) -> u64 {
        self.grace
    }
}

/// One packet key and its validity window.
pub struct PacketKey {
    pub epoch: u64,
    /// Seconds since the Unix epoch.
    pub not_before: u64,
    pub not_after: u64,
    secret: Zeroizing<[u8; 32]>,
    public: [u8; 32],
}

impl std::fmt::Debug for PacketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketKey")
            .field("epoch", &self.epoch)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("public", &hex::encode(self.public))
            .finish()
    }
}

impl PacketKey {
    fn new(epoch: u64, not_before: u64, not_after: u64, secret: [u8; 32]) -> PacketKey {
        let secret = Zeroizing::new(secret);
        let public = public_key(&secret);
        PacketKey {
            epoch,
            not_before,
            not_after,
            secret,
            public,
        }
    }

    pub fn public(&self) -> [u8; 32] {
        self.public
    }

    pub fn secret(&self) -> &[u8; 32] {
        &self.secret
    }

    /// Where this key stands at `now` under `schedule`.
    pub fn state(&self, now: u64, schedule: &Schedule) -> KeyState {
        if now < self.not_after {
            KeyState::Current
        } else if now < self.not_after.saturating_add(schedule.grace) {
            KeyState::Grace
        } else {
            KeyState::Expired
        }
    }
}

/// A key's place in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyState {
    /// Announced, used by senders and relays.
    Current,
    /// No longer announced; still opens packets already on their way.
    Grace,
    /// To be deleted, with its replay tags.
    Expired,
}

/// What one [`Keyring::rotate`] did: persist the keyring if `changed()`, and
/// drop the replay tags of `deleted`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rotation {
    pub created: Option<u64>,
    pub deleted: Vec<u64>,
}

impl Rotation {
    pub fn changed(&self) -> bool {
        self.created.is_some() || !self.deleted.is_empty()
    }
}

/// What a node announces in its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Announced {
    pub epoch: u64,
    pub public: [u8; 32],
    pub not_before: u64,
    pub not_after: u64,
}

/// The node's packet keys, oldest first.
#[derive(Debug, Default)]
pub struct Keyring {
    keys: Vec<PacketKey>,
}

impl Keyring {
    pub fn new() -> Keyring {
        Keyring::default()
    }

    pub fn keys(&self) -> &[PacketKey] {
        &self.keys
    }

    /// Brings the keyring up to `now`: deletes every expired key and, when
    /// no key is current, makes one valid from `now` for one period. A clock
    /// that went back leaves the newest key current (it is still before its
    /// `not_after`) rather than making keys on every jump.
    pub fn rotate<R: RngCore + CryptoRng>(
        &mut self,
        now: u64,
        schedule: &Schedule,
        rng: &mut R,
    ) -> Rotation {
        let mut rotation = Rotation::default();
        self.keys.retain(|k| {
            let keep = k.state(now, schedule) != KeyState::Expired;
            if !keep {
                rotation.deleted.push(k.epoch);
            }
            keep
        });
        let has_current = self
            .keys
            .iter()
            .any(|k| k.state(now, schedule) == KeyState::Current);
        if !has_current {
            let epoch = self
                .keys
                .last()
                .map(|k| k.epoch + 1)
                .or_else(|| rotation.deleted.iter().max().map(|e| e + 1))
                .unwrap_or(1);
            let mut secret = Zeroizing::new([0u8; 32]);
            rng.fill_bytes(&mut secret[..]);
            self.keys.push(PacketKey::new(
                epoch,
                now,
                now.saturating_add(schedule.period),
                *secret,
            ));
            rotation.created = Some(epoch);
        }
        // Bounded by the schedule (grace <= 3 periods); kept bounded even if
        // a clock jump broke that.
        while self.keys.len() > MAX_KEYS {
            let k = self.keys.remove(0);
            rotation.deleted.push(k.epoch);
        }
        rotation
    }

    /// Ends the current key's window at `now` and rotates
    /// ([`Keyring::rotate`]): a new current key, the old one in its grace
    /// period, the oldest deleted past [`MAX_KEYS`]. `None` (nothing done)
    /// if no key is current, or the current one became current less than
    /// `min_age` seconds ago (at least 1: a window always ends after it
    /// starts), which is also what a clock that went back gets.
    pub fn rotate_early<R: RngCore + CryptoRng>(
        &mut self,
        now: u64,
        schedule: &Schedule,
        min_age: u64,
        rng: &mut R,
    ) -> Option<Rotation> {
        let key = self
            .keys
            .iter_mut()
            .rev()
            .find(|k| k.state(now, schedule) == KeyState::Current)?;
        if now < key.not_before.saturating_add(min_age.max(1)) {
            return None;
        }
        key.not_after = now;
        Some(self.rotate(now, schedule, rng))
    }

    /// When the current key may be ended early with `min_age`
    /// ([`Keyring::rotate_early`]); `None` if no key is current.
    pub fn early_rotation_at(&self, now: u64, schedule: &Schedule, min_age: u64) -> Option<u64> {
        self.current(now, schedule)
            .map(|k| k.not_before.saturating_add(min_age.max(1)))
    }

    /// The key to announce and seal to: the newest current one.
    pub fn current(&self, now: u64, schedule: &Schedule) -> Option<&PacketKey> {
        self.keys
            .iter()
            .rev()
            .find(|k| k.state(now, schedule) == KeyState::Current)
    }

    pub fn announced(&self, now: u64, schedule: &Schedule) -> Option<Announced> {
        self.current(now, schedule).map(|k| Announced {
            epoch: k.epoch,
            public: k.public,
            not_before: k.not_before,
            not_after: k.not_after,
        })
    }

    /// The keys that may open a packet at `now`, newest first: try them in
    /// this order (the header MAC tells which one the packet was for).
    pub fn peel_keys(&self, now: u64, schedule: &Schedule) -> Vec<&PacketKey> {
        self.keys
            .iter()
            .rev()
            .filter(|k| k.state(now, schedule) != KeyState::Expired)
            .collect()
    }

    /// Peels `packet` with the first live key whose header MAC verifies
    /// (newest first); returns that key's epoch, under which the replay tag
    /// is to be checked. A packet for none of them costs one DH per live key
    /// and is refused with the last error.
    pub fn peel<F: OnionFormat>(
        &self,
        format: &F,
        packet: &Packet,
        now: u64,
        schedule: &Schedule,
    ) -> Result<(u64, Peeled), OnionError> {
        let mut last = OnionError::Header;
        for k in self.peel_keys(now, schedule) {
            match format.peel(packet, k.secret()) {
                Ok(p) => return Ok((k.epoch, p)),
                // Only a header that does not verify means "another key".
                Err(OnionError::Header) => last = OnionError::Header,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// Encodes the keyring as the key file's bytes.
    fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(MAX_FILE_LEN));
        out.extend_from_slice(MAGIC);
        out.push(FILE_VERSION);
        out.push(self.keys.len() as u8);
        for k in &self.keys {
            out.extend_from_slice(&k.epoch.to_be_bytes());
            out.extend_from_slice(&k.not_before.to_be_bytes());
            out.extend_from_slice(&k.not_after.to_be_bytes());
            out.extend_from_slice(&k.secret[..]);
        }
        let sum = Sha256::digest(&out[..]);
        out.extend_from_slice(&sum);
        out
    }

    /// Decodes the key file's bytes; `Err(why)` for anything damaged.
    fn decode(bytes: &[u8]) -> Result<Keyring, String> {
        if bytes.len() > MAX_FILE_LEN {
            return Err(format!("{} bytes, over {MAX_FILE_LEN}", bytes.len()));
        }
        if bytes.len() < HEAD_LEN + SUM_LEN {
            return Err(format!("cut short at {} bytes", bytes.len()));
        }
        let (body, sum) = bytes.split_at(bytes.len() - SUM_LEN);
        if Sha256::digest(body).as_slice() != sum {
            return Err("checksum does not match".into());
        }
        if &body[..8] != MAGIC {
            return Err("not a packet keys file".into());
        }
        if body[8] != FILE_VERSION {
            return Err(format!("version {} is not supported", body[8]));
        }
        let n = body[9] as usize;
        if n > MAX_KEYS || body.len() != HEAD_LEN + n * ENTRY_LEN {
            return Err(format!("{n} keys in {} bytes", body.len()));
        }
        let u64_at = |b: &[u8], at: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[at..at + 8]);
            u64::from_be_bytes(x)
        };
        let mut keys: Vec<PacketKey> = Vec::with_capacity(n);
        for e in body[HEAD_LEN..].chunks_exact(ENTRY_LEN) {
            let (epoch, nb, na) = (u64_at(e, 0), u64_at(e, 8), u64_at(e, 16));
            let mut secret = [0u8; 32];
            secret.copy_from_slice(&e[24..56]);
            if nb >= na {
                return Err(format!("key {epoch} ends before it starts"));
            }
            if keys.last().is_some_and(|k| k.epoch >= epoch) {
                return Err("keys out of order".into());
            }
            keys.push(PacketKey::new(epoch, nb, na, secret));
        }
        Ok(Keyring { keys })
    }
}

/// The key file of one data dir.
pub struct KeyFile {
    dir: PathBuf,
}

impl KeyFile {
    pub fn new(data_dir: &Path) -> KeyFile {
        KeyFile {
            dir: data_dir.to_path_buf(),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(KEY_FILE)
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyringError + '_ {
        move |source| KeyringError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Loads the keyring; `None` if there is no file (a first start).
    pub fn load(&self) -> Result<Option<Keyring>, KeyringError> {
        let path = self.path();
        let file = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Self::io(&path)(e)),
        };
        let mode = file
            .metadata()
            .map_err(Self::io(&path))?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyringError::Permissions { path, mode });
        }
        // Read at most one byte past the largest valid file: the size is
        // checked before anything larger is held.
        let mut bytes = Zeroizing::new(Vec::with_capacity(MAX_FILE_LEN + 1));
        file.take(MAX_FILE_LEN as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(Self::io(&path))?;
        Keyring::decode(&bytes)
            .map(Some)
            .map_err(|why| KeyringError::Damaged { path, why })
    }

    /// Writes the keyring atomically, and overwrites the file it replaces
    /// with zeros (see the module doc, "Deleting a key").
    pub fn save(&self, ring: &Keyring) -> Result<(), KeyringError> {
        let path = self.path();
        let tmp = self.dir.join(format!("{KEY_FILE}.tmp"));
        // The file being replaced, opened before the rename so that its
        // blocks can be overwritten once the new file is in place.
        let old = match fs::OpenOptions::new().write(true).open(&path) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Self::io(&path)(e)),
        };
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(Self::io(&tmp))?;
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(Self::io(&tmp))?;
        f.write_all(&ring.encode()).map_err(Self::io(&tmp))?;
        f.sync_all().map_err(Self::io(&tmp))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(Self::io(&path))?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(Self::io(&self.dir))?;
        if let Some(mut old) = old {
            let len = old.metadata().map_err(Self::io(&path))?.len();
            let len = len.min(MAX_FILE_LEN as u64 * 2) as usize;
            old.seek(SeekFrom::Start(0)).map_err(Self::io(&path))?;
            old.write_all(&vec![0u8; len]).map_err(Self::io(&path))?;
            old.sync_all().map_err(Self::io(&path))?;
        }
        Ok(())
    }
}

/// The node's keyring as the running daemon shares it: loaded and saved
/// through its [`KeyFile`], rotated on its [`Schedule`], read by the threads
/// that peel packets. One owner writes it (the key rotation timer); peeling
/// only reads.
pub struct PacketKeys {
    ring: std::sync::RwLock<Keyring>,
    schedule: Schedule,
    file: KeyFile,
}

impl PacketKeys {
    /// Loads the data dir's key file (a damaged one is an error that says
    /// what to do), brings it up to `now` and saves it if that changed it.
    /// Returns the keys and what the rotation did (its deleted epochs are
    /// the replay tags to drop).
    pub fn open(
        data_dir: &Path,
        schedule: Schedule,
        now: u64,
    ) -> Result<(PacketKeys, Rotation), KeyringError> {
        let file = KeyFile::new(data_dir);
        let mut ring = file.load()?.unwrap_or_default();
        let rotation = ring.rotate(now, &schedule, &mut rand::rngs::OsRng);
        if rotation.changed() {
            file.save(&ring)?;
        }
        Ok((
            PacketKeys {
                ring: std::sync::RwLock::new(ring),
                schedule,
                file,
            },
            rotation,
        ))
    }

    pub fn schedule(&self) -> Schedule {
        self.schedule
    }

    /// Rotates at `now`, saving the file first if anything changed (the
    /// keys in memory change only once the file holds them).
    pub fn rotate(&self, now: u64) -> Result<Rotation, KeyringError> {
        let schedule = self.schedule;
        self.change(|next| Some(next.rotate(now, &schedule, &mut rand::rngs::OsRng)))
            .map(Option::unwrap_or_default)
    }

    /// Rotates early at `now` ([`Keyring::rotate_early`]), saving first as
    /// [`Self::rotate`] does; `Ok(None)` if the current key is younger than
    /// `min_age` seconds (nothing changed, nothing saved).
    pub fn rotate_early(&self, now: u64, min_age: u64) -> Result<Option<Rotation>, KeyringError> {
        let schedule = self.schedule;
        self.change(|next| next.rotate_early(now, &schedule, min_age, &mut rand::rngs::OsRng))
    }

    /// Applies `f` to a copy of the keyring; if it says something changed,
    /// saves the copy, then puts it in place.
    fn change(
        &self,
        f: impl FnOnce(&mut Keyring) -> Option<Rotation>,
    ) -> Result<Option<Rotation>, KeyringError> {
        let mut ring = self.ring.write().unwrap_or_else(|p| p.into_inner());
        let mut next = Keyring {
            keys: ring
                .keys
                .iter()
                .map(|k| PacketKey::new(k.epoch, k.not_before, k.not_after, *k.secret))
                .collect(),
        };
        let rotation = f(&mut next);
        if rotation.as_ref().is_some_and(Rotation::changed) {
            self.file.save(&next)?;
            *ring = next;
        }
        Ok(rotation)
    }

    /// The epoch of the key announced at `now`.
    pub fn current_epoch(&self, now: u64) -> Option<u64> {
        self.announced(now).map(|a| a.epoch)
    }

    /// When the current key may be rotated early with `min_age`
    /// ([`Keyring::early_rotation_at`]).
    pub fn early_rotation_at(&self, now: u64, min_age: u64) -> Option<u64> {
        let ring = self.ring.read().unwrap_or_else(|p| p.into_inner());
        ring.early_rotation_at(now, &self.schedule, min_age)
    }

    /// The key to announce at `now`.
    pub fn announced(&self, now: u64) -> Option<Announced> {
        let ring = self.ring.read().unwrap_or_else(|p| p.into_inner());
        ring.announced(now, &self.schedule)
    }

    /// Peels with the live keys ([`Keyring::peel`]).
    pub fn peel<F: OnionFormat>(
        &self,
        format: &F,
        packet: &Packet,
        now: u64,
    ) -> Result<(u64, Peeled), OnionError> {
        let ring = self.ring.read().unwrap_or_else(|p| p.into_inner());
        ring.peel(format, packet, now, &self.schedule)
    }

    /// The epochs of the keys held (for dropping other epochs' replay tags).
    pub fn epochs(&self) -> Vec<u64> {
        let ring = self.ring.read().unwrap_or_else(|p| p.into_inner());
        ring.keys.iter().map(|k| k.epoch).collect()
    }

    /// When the next rotation is due after `now`: the end of a key's window
    /// or of its grace, whichever comes first.
    pub fn next_change(&self, now: u64) -> Option<u64> {
        let ring = self.ring.read().unwrap_or_else(|p| p.into_inner());
        ring.keys
            .iter()
            .flat_map(|k| [k.not_after, k.not_after.saturating_add(self.schedule.grace)])
            .filter(|t| *t > now)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::identity::Address;
    use crate::crypto::sphinx::{NodeHop, Sphinx};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const DAY: u64 = 86_400;
    const T0: u64 = 1_800_000_000;

    fn daily() -> Schedule {
        Schedule::new(DAY, 3_600).unwrap()
    }

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    #[test]
    fn schedule_bounds() {
        assert!(Schedule::new(0, 0).is_err());
        assert!(Schedule::new(10, 31).is_err());
        assert!(Schedule::new(10, 30).is_ok());
    }

    #[test]
    fn rotation_over_two_days() {
        let s = daily();
        let mut r = rng();
        let mut ring = Keyring::new();
        assert!(ring.current(T0, &s).is_none());
        assert_eq!(
            ring.rotate(T0, &s, &mut r),
            Rotation {
                created: Some(1),
                deleted: vec![]
            }
        );
        let k1 = ring.announced(T0, &s).unwrap();
        assert_eq!((k1.epoch, k1.not_before, k1.not_after), (1, T0, T0 + DAY));
        // Nothing to do within the day.
        assert!(!ring.rotate(T0 + DAY - 1, &s, &mut r).changed());
        // The day is over: key 2 is current, key 1 in its grace period.
        assert_eq!(ring.rotate(T0 + DAY, &s, &mut r).created, Some(2));
        assert_eq!(ring.announced(T0 + DAY, &s).unwrap().epoch, 2);
        assert_eq!(ring.keys()[0].state(T0 + DAY, &s), KeyState::Grace);
        let epochs = |ring: &Keyring, now| -> Vec<u64> {
            ring.peel_keys(now, &s).iter().map(|k| k.epoch).collect()
        };
        assert_eq!(epochs(&ring, T0 + DAY), vec![2, 1]);
        // The grace period is over: key 1 is deleted.
        let later = T0 + DAY + 3_600;
        assert_eq!(ring.keys()[0].state(later, &s), KeyState::Expired);
        assert_eq!(
            ring.rotate(later, &s, &mut r),
            Rotation {
                created: None,
                deleted: vec![1]
            }
        );
        assert_eq!(epochs(&ring, later), vec![2]);
        assert_ne!(k1.public, ring.announced(later, &s).unwrap().public);
    }

    #[test]
    fn a_node_down_for_a_week_starts_afresh_and_keeps_counting_epochs() {
        let s = daily();
        let mut r = rng();
        let mut ring = Keyring::new();
        ring.rotate(T0, &s, &mut r);
        ring.rotate(T0 + DAY, &s, &mut r);
        let rot = ring.rotate(T0 + 8 * DAY, &s, &mut r);
        assert_eq!(rot.deleted, vec![1, 2]);
        assert_eq!(rot.created, Some(3));
        assert_eq!(ring.keys().len(), 1);
    }

    #[test]
    fn a_clock_that_goes_back_makes_no_new_key() {
        let s = daily();
        let mut r = rng();
        let mut ring = Keyring::new();
        ring.rotate(T0, &s, &mut r);
        assert!(!ring.rotate(T0 - 3 * DAY, &s, &mut r).changed());
        assert_eq!(ring.announced(T0 - 3 * DAY, &s).unwrap().epoch, 1);
    }

    #[test]
    fn never_more_than_max_keys() {
        let s = Schedule::new(10, 30).unwrap();
        let mut r = rng();
        let mut ring = Keyring::new();
        for t in 0..100 {
            ring.rotate(T0 + t * 10, &s, &mut r);
            assert!(ring.keys().len() <= MAX_KEYS);
        }
        assert_eq!(ring.keys().len(), MAX_KEYS);
    }

    #[test]
    fn early_rotation_ends_the_current_key_now_and_respects_the_floor() {
        let s = daily();
        let mut r = rng();
        let mut ring = Keyring::new();
        // No key yet: nothing to end.
        assert_eq!(ring.rotate_early(T0, &s, 10, &mut r), None);
        assert_eq!(ring.early_rotation_at(T0, &s, 10), None);
        ring.rotate(T0, &s, &mut r);
        let k1 = ring.announced(T0, &s).unwrap();
        assert_eq!(ring.early_rotation_at(T0, &s, 10), Some(T0 + 10));
        // Within the floor: refused, nothing changed.
        assert_eq!(ring.rotate_early(T0 + 9, &s, 10, &mut r), None);
        assert_eq!(ring.announced(T0 + 9, &s), Some(k1));
        // A clock that went back is within the floor too.
        assert_eq!(ring.rotate_early(T0 - 100, &s, 10, &mut r), None);
        // At the floor: key 2 is current for a whole period from now, key 1
        // is in its grace period from now.
        let at = T0 + 10;
        assert_eq!(
            ring.rotate_early(at, &s, 10, &mut r),
            Some(Rotation {
                created: Some(2),
                deleted: vec![]
            })
        );
        let k2 = ring.announced(at, &s).unwrap();
        assert_eq!((k2.epoch, k2.not_before, k2.not_after), (2, at, at + DAY));
        assert_ne!(k2.public, k1.public);
        assert_eq!(ring.keys()[0].not_after, at);
        assert_eq!(ring.keys()[0].state(at, &s), KeyState::Grace);
        let peel: Vec<u64> = ring.peel_keys(at, &s).iter().map(|k| k.epoch).collect();
        assert_eq!(peel, vec![2, 1]);
        // Key 1's grace ends an hour after the early end, not after its day.
        assert_eq!(
            ring.rotate(at + 3_600, &s, &mut r).deleted,
            vec![1],
            "grace counted from the early end"
        );
        // The next early rotation waits for the floor of key 2.
        assert_eq!(ring.early_rotation_at(at, &s, 10), Some(at + 10));
        assert_eq!(ring.rotate_early(at + 5, &s, 10, &mut r), None);
        // A floor of 0 is taken as 1 s: a window never ends where it starts.
        assert_eq!(ring.rotate_early(at, &s, 0, &mut r), None);
        assert!(ring.rotate_early(at + 1, &s, 0, &mut r).is_some());
    }

    #[test]
    fn forced_rotations_never_hold_more_than_max_keys() {
        // An hour of grace, rotations forced every 10 s: keys pile up in
        // their grace periods, and the oldest beyond MAX_KEYS goes.
        let s = daily();
        let mut r = rng();
        let mut ring = Keyring::new();
        ring.rotate(T0, &s, &mut r);
        let mut deleted = Vec::new();
        for i in 1..=20u64 {
            let rot = ring.rotate_early(T0 + i * 10, &s, 10, &mut r).unwrap();
            assert_eq!(rot.created, Some(i + 1));
            deleted.extend(rot.deleted);
            assert!(ring.keys().len() <= MAX_KEYS);
            // Newest current, the others in grace.
            assert_eq!(ring.announced(T0 + i * 10, &s).unwrap().epoch, i + 1);
        }
        assert_eq!(ring.keys().len(), MAX_KEYS);
        assert_eq!(deleted, (1..=17).collect::<Vec<_>>());
        let epochs: Vec<u64> = ring.keys().iter().map(|k| k.epoch).collect();
        assert_eq!(epochs, vec![18, 19, 20, 21]);
        // The file stays within its bound and loads back.
        let dir = tempfile::tempdir().unwrap();
        let file = KeyFile::new(dir.path());
        file.save(&ring).unwrap();
        assert!(fs::read(file.path()).unwrap().len() <= MAX_FILE_LEN);
        assert_eq!(file.load().unwrap().unwrap().keys().len(), MAX_KEYS);
    }

    #[test]
    fn packet_keys_rotate_early_saves_only_when_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let (keys, _) = PacketKeys::open(dir.path(), daily(), T0).unwrap();
        assert_eq!(keys.current_epoch(T0), Some(1));
        assert_eq!(keys.early_rotation_at(T0, 10), Some(T0 + 10));
        let before = fs::read(dir.path().join(KEY_FILE)).unwrap();
        assert_eq!(keys.rotate_early(T0 + 3, 10).unwrap(), None);
        assert_eq!(fs::read(dir.path().join(KEY_FILE)).unwrap(), before);
        let rot = keys.rotate_early(T0 + 10, 10).unwrap().unwrap();
        assert_eq!(rot.created, Some(2));
        assert_eq!(keys.current_epoch(T0 + 10), Some(2));
        assert_eq!(keys.epochs(), vec![1, 2]);
        // Saved: a restart finds the early end and the new key.
        drop(keys);
        let (keys, rot) = PacketKeys::open(dir.path(), daily(), T0 + 11).unwrap();
        assert!(!rot.changed());
        assert_eq!(keys.current_epoch(T0 + 11), Some(2));
        assert_eq!(keys.next_change(T0 + 11), Some(T0 + 10 + 3_600));
    }

    #[test]
    fn file_round_trip_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let file = KeyFile::new(dir.path());
        assert!(file.load().unwrap().is_none());
        let s = daily();
        let mut ring = Keyring::new();
        ring.rotate(T0, &s, &mut rng());
        ring.rotate(T0 + DAY, &s, &mut rng());
        file.save(&ring).unwrap();
        let mode = fs::metadata(file.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!dir.path().join("packet.keys.tmp").exists());
        let back = file.load().unwrap().unwrap();
        assert_eq!(back.keys().len(), 2);
        for (a, b) in ring.keys().iter().zip(back.keys()) {
            assert_eq!(
                (a.epoch, a.not_before, a.not_after, a.public),
                (b.epoch, b.not_before, b.not_after, b.public)
            );
            assert_eq!(a.secret(), b.secret());
        }
        assert_eq!(
            fs::read(file.path()).unwrap().len(),
            HEAD_LEN + 2 * ENTRY_LEN + SUM_LEN
        );
    }

    #[test]
    fn a_damaged_file_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let file = KeyFile::new(dir.path());
        let mut ring = Keyring::new();
        ring.rotate(T0, &daily(), &mut rng());
        file.save(&ring).unwrap();
        let good = fs::read(file.path()).unwrap();
        let mut cases: Vec<Vec<u8>> = vec![
            vec![],
            good[..good.len() - 1].to_vec(),
            vec![0u8; MAX_FILE_LEN + 1],
            [good.clone(), vec![0]].concat(),
        ];
        for at in [0, 8, 9, 10, 20, good.len() - 1] {
            let mut b = good.clone();
            b[at] ^= 0x40;
            cases.push(b);
        }
        for bad in cases {
            fs::write(file.path(), &bad).unwrap();
            match file.load() {
                Err(e @ KeyringError::Damaged { .. }) => {
                    let msg = e.to_string();
                    assert!(msg.contains("packet.keys"), "{msg}");
                    assert!(msg.contains("remove it"), "{msg}");
                }
                other => panic!("{} bytes: {other:?}", bad.len()),
            }
        }
        // A checksum that matches does not save nonsense inside.
        let mut body = good[..good.len() - SUM_LEN].to_vec();
        body[9] = 9;
        let sum = Sha256::digest(&body);
        body.extend_from_slice(&sum);
        fs::write(file.path(), &body).unwrap();
        assert!(matches!(file.load(), Err(KeyringError::Damaged { .. })));
        // Readable by others: refused.
        fs::write(file.path(), &good).unwrap();
        fs::set_permissions(file.path(), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(file.load(), Err(KeyringError::Permissions { .. })));
    }

    #[test]
    fn a_deleted_key_no_longer_opens_what_was_recorded() {
        // The done-when: keep the bytes of a packet sealed to a key,
        // rotate past the grace period, try again.
        let dir = tempfile::tempdir().unwrap();
        let file = KeyFile::new(dir.path());
        let s = daily();
        let mut r = rng();
        let mut ring = Keyring::new();
        ring.rotate(T0, &s, &mut r);
        file.save(&ring).unwrap();
        let before = fs::read(file.path()).unwrap();
        let me = NodeHop {
            id: Address([5; 32]),
            key: ring.announced(T0, &s).unwrap().public,
        };
        let recorded = Sphinx.wrap(&[], &me, b"recorded on the wire").unwrap();
        let opens = |ring: &Keyring, now| {
            matches!(
                ring.peel(&Sphinx, &recorded, now, &s),
                Ok((1, Peeled::Deliver { .. }))
            )
        };
        assert!(opens(&ring, T0));
        // Rotated: still opens in the grace period, from the saved file too.
        ring.rotate(T0 + DAY, &s, &mut r);
        file.save(&ring).unwrap();
        let ring = file.load().unwrap().unwrap();
        assert!(opens(&ring, T0 + DAY + 1));
        // A packet to the new key peels under its own epoch.
        let new_key = NodeHop {
            key: ring.announced(T0 + DAY, &s).unwrap().public,
            ..me
        };
        let fresh = Sphinx.wrap(&[], &new_key, b"new").unwrap();
        assert!(matches!(
            ring.peel(&Sphinx, &fresh, T0 + DAY + 1, &s),
            Ok((2, Peeled::Deliver { .. }))
        ));
        // Grace period over: the key is deleted, and nothing opens it, not
        // the keys on disk, not the identity key.
        let mut ring = ring;
        let rot = ring.rotate(T0 + DAY + 3_600, &s, &mut r);
        assert_eq!(rot.deleted, vec![1]);
        file.save(&ring).unwrap();
        let ring = file.load().unwrap().unwrap();
        assert!(!opens(&ring, T0 + DAY + 3_600));
        for k in ring.keys() {
            assert_eq!(Sphinx.peel(&recorded, k.secret()), Err(OnionError::Header));
        }
        let identity = crate::crypto::Identity::generate();
        assert_eq!(
            Sphinx.peel(&recorded, identity.kem_secret()),
            Err(OnionError::Header)
        );
        // The old secret is not in the file any more.
        let old_secret = &before[HEAD_LEN + 24..HEAD_LEN + 56];
        let now_bytes = fs::read(file.path()).unwrap();
        assert!(!now_bytes.windows(32).any(|w| w == old_secret));
    }

    #[test]
    fn the_replaced_file_is_overwritten_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let file = KeyFile::new(dir.path());
        let s = daily();
        let mut ring = Keyring::new();
        ring.rotate(T0, &s, &mut rng());
        file.save(&ring).unwrap();
        // A second name for the first file's inode shows what happens to it.
        let witness = dir.path().join("witness");
        fs::hard_link(file.path(), &witness).unwrap();
        ring.rotate(T0 + 2 * DAY, &s, &mut rng());
        file.save(&ring).unwrap();
        let old = fs::read(&witness).unwrap();
        assert!(!old.is_empty());
        assert!(
            old.iter().all(|b| *b == 0),
            "old keys left in the replaced file"
        );
    }
}
