//! The node's long-term identity.
//!
//! A node has two key pairs, kept together in `<data_dir>/identity.key`
//! (mode 0600, written atomically: a temporary file, fsync, rename, fsync of
//! the dir; never created beside an existing store, see `node.rs`): an Ed25519 key that signs its node record and its delivery
//! receipts, and an X25519 key used as the Noise static key of its links and
//! as the HPKE key messages are sealed to. The node's *address* is the Ed25519
//! public key; the signed record ties the X25519 key to it.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard, OnceLock};

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::memo::Memo;
use super::static_dh::StaticDhCache;

/// HKDF salt of the receipt-token key ([`ReceiptTokens`]).
const RECEIPT_KEY_SALT: &[u8] = b"hermes/receipt-token/1";

/// Name of the identity file inside the data dir.
pub const IDENTITY_FILE: &str = "identity.key";
const IDENTITY_LEN: usize = 64;

/// A node's address: its Ed25519 public key, shown as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Address(pub [u8; 32]);

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The first 8 hex digits are enough to tell nodes apart in logs.
        write!(f, "{}", &hex::encode(&self.0[..4]))
    }
}

impl FromStr for Address {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| IdentityError::BadAddress)?;
        Ok(Address(out))
    }
}

impl Address {
    /// The Ed25519 key behind this address, if it is a valid curve point.
    pub fn verifying_key(&self) -> Result<VerifyingKey, IdentityError> {
        VerifyingKey::from_bytes(&self.0).map_err(|_| IdentityError::BadAddress)
    }

    /// [`Address::verifying_key`], remembered: decompressing the point is a
    /// square root in the field, about a fifth of a signature check, and the
    /// same few addresses sign most of what a node checks (the recipients
    /// of its own messages, whose receipts it checks one by one). Only valid
    /// keys are remembered, in a process-wide [`Memo`] of at most
    /// 2 × [`VERIFYING_KEY_GENERATION`] entries, so a key that is not a point
    /// costs its decompression every time, as it did before.
    fn verifying_key_remembered(&self) -> Option<VerifyingKey> {
        if let Some(k) = remembered_keys().get(&self.0) {
            return Some(k);
        }
        let key = self.verifying_key().ok()?;
        remembered_keys().insert(self.0, key);
        Some(key)
    }
}

fn remembered_keys() -> MutexGuard<'static, Memo<VerifyingKey>> {
    static KEYS: OnceLock<Mutex<Memo<VerifyingKey>>> = OnceLock::new();
    let keys = KEYS.get_or_init(|| Mutex::new(Memo::new(VERIFYING_KEY_GENERATION)));
    // A panic while holding the lock leaves at worst a missing entry.
    keys.lock().unwrap_or_else(|p| p.into_inner())
}

/// Decompressed Ed25519 keys remembered per generation (~200 bytes each, so
/// at most ~100 KiB in all): see [`Address::verifying_key_remembered`].
pub const VERIFYING_KEY_GENERATION: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: cannot read or write the identity key: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: identity key file is damaged ({len} bytes, expected {IDENTITY_LEN}); restore it from a backup, or move the data dir aside to start afresh with a new identity")]
    Damaged { path: String, len: usize },
    #[error("{path}: the identity key is missing, but the data dir holds a store ({store}): the node's identity is gone; restore identity.key from a backup, or move the data dir aside to start afresh with a new identity")]
    Missing { path: String, store: String },
    #[error("{path}: already exists; not overwritten")]
    Exists { path: String },
    #[error("{path}: identity key file has mode {mode:o}; it must be 0600 (chmod 600 it)")]
    Permissions { path: String, mode: u32 },
    #[error("not a node address (expected 64 hex digits of an Ed25519 key)")]
    BadAddress,
}

/// The node's secret keys. Never logged, never sent.
pub struct Identity {
    signing: SigningKey,
    kem_secret: [u8; 32],
    kem_public: [u8; 32],
    /// X25519 results with other nodes' long-term keys (see `static_dh.rs`).
    static_dh: StaticDhCache,
    /// This node's receipt-token key, derived from the signing key.
    receipt_tokens: ReceiptTokens,
}

/// The key of a node's receipt tokens ([`ReceiptTokens::token`]).
#[derive(Clone)]
pub struct ReceiptTokens(Zeroizing<[u8; 32]>);

impl fmt::Debug for ReceiptTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReceiptTokens(..)")
    }
}

impl ReceiptTokens {
    /// The key of the node with Ed25519 secret `signing`: HKDF-SHA256 of it.
    fn derive(signing: &[u8; 32]) -> ReceiptTokens {
        let mut key = Zeroizing::new([0u8; 32]);
        // A 32-byte output is far below HKDF-SHA256's limit: this cannot fail.
        let _ = hkdf::Hkdf::<sha2_v11::Sha256>::new(Some(RECEIPT_KEY_SALT), signing)
            .expand(b"receipt key", key.as_mut());
        ReceiptTokens(key)
    }

    /// A key of nobody's (for tests and simulations whose nodes have none).
    pub fn random() -> ReceiptTokens {
        ReceiptTokens(Zeroizing::new(rand::random()))
    }

    /// The token that proves delivery of this node's message `id` to
    /// `recipient`, expiring at `expires_at`: 32 bytes of HKDF-Expand under
    /// this key with the three as its info (one HMAC-SHA256 of
    /// `id ‖ recipient ‖ be64(expires_at) ‖ 0x01`). It is sealed into the
    /// letter, so only the recipient learns it, and comes back in the
    /// receipt; the origin recomputes it from the id instead of storing it,
    /// and checking it costs a hash where a signature check costs a curve
    /// multiplication.
    pub fn token(&self, id: &[u8; 16], recipient: &Address, expires_at: u64) -> [u8; 32] {
        let mut info = [0u8; 16 + 32 + 8];
        info[..16].copy_from_slice(id);
        info[16..48].copy_from_slice(&recipient.0);
        info[48..].copy_from_slice(&expires_at.to_be_bytes());
        let mut token = [0u8; 32];
        // The key is 32 uniform bytes and the output one block: neither
        // call can fail.
        if let Ok(prk) = hkdf::Hkdf::<sha2_v11::Sha256>::from_prk(self.0.as_ref()) {
            let _ = prk.expand(&info, &mut token);
        }
        token
    }
}

impl Identity {
    /// A fresh random identity.
    pub fn generate() -> Identity {
        let signing = SigningKey::generate(&mut OsRng);
        let kem = x25519_dalek::StaticSecret::random_from_rng(OsRng);
        Self::from_parts(signing.to_bytes(), kem.to_bytes())
    }

    fn from_parts(signing: [u8; 32], kem_secret: [u8; 32]) -> Identity {
        let kem = x25519_dalek::StaticSecret::from(kem_secret);
        let kem_public = x25519_dalek::PublicKey::from(&kem).to_bytes();
        Identity {
            signing: SigningKey::from_bytes(&signing),
            kem_secret,
            kem_public,
            static_dh: StaticDhCache::default(),
            receipt_tokens: ReceiptTokens::derive(&signing),
        }
    }

    /// Loads `<dir>/identity.key`, creating it on first start. Callers that
    /// must not create one beside an existing store use [`Identity::load`].
    pub fn load_or_create(dir: &Path) -> Result<Identity, IdentityError> {
        match Self::load(dir)? {
            Some(id) => Ok(id),
            None => {
                let id = Self::generate();
                id.save(dir)?;
                Ok(id)
            }
        }
    }

    /// Loads `<dir>/identity.key`; `None` if there is none. Refuses a file
    /// others can read and one of the wrong length.
    pub fn load(dir: &Path) -> Result<Option<Identity>, IdentityError> {
        let path = dir.join(IDENTITY_FILE);
        let shown = path.display().to_string();
        let io = |source| IdentityError::Io {
            path: shown.clone(),
            source,
        };
        match fs::read(&path) {
            Ok(bytes) => {
                let mode = fs::metadata(&path).map_err(io)?.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(IdentityError::Permissions { path: shown, mode });
                }
                if bytes.len() != IDENTITY_LEN {
                    return Err(IdentityError::Damaged {
                        path: shown,
                        len: bytes.len(),
                    });
                }
                let mut signing = [0u8; 32];
                let mut kem = [0u8; 32];
                signing.copy_from_slice(&bytes[..32]);
                kem.copy_from_slice(&bytes[32..]);
                Ok(Some(Self::from_parts(signing, kem)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(e)),
        }
    }

    /// Writes the keys to `<dir>/identity.key` atomically: a temporary file
    /// (0600) in `dir`, fsync, rename, fsync of `dir`. Refuses to replace an
    /// existing key file.
    pub fn save(&self, dir: &Path) -> Result<(), IdentityError> {
        let path = dir.join(IDENTITY_FILE);
        let tmp = dir.join(format!("{IDENTITY_FILE}.tmp"));
        let io = |p: &Path| {
            let p = p.display().to_string();
            move |source| IdentityError::Io { path: p, source }
        };
        if path.exists() {
            return Err(IdentityError::Exists {
                path: path.display().to_string(),
            });
        }
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        // A temporary file left by an earlier run keeps its mode: set it.
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io(&tmp))?;
        file.write_all(&self.signing.to_bytes()).map_err(io(&tmp))?;
        file.write_all(&self.kem_secret).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        drop(file);
        // Not `rename`: it would replace a key file made meanwhile.
        fs::hard_link(&tmp, &path).map_err(io(&path))?;
        fs::remove_file(&tmp).map_err(io(&tmp))?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
        Ok(())
    }

    pub fn address(&self) -> Address {
        Address(self.signing.verifying_key().to_bytes())
    }

    /// The X25519 public key (Noise static key and HPKE key).
    pub fn kem_public(&self) -> [u8; 32] {
        self.kem_public
    }

    /// The X25519 secret key, for Noise and HPKE only.
    pub(crate) fn kem_secret(&self) -> &[u8; 32] {
        &self.kem_secret
    }

    /// X25519 of this node's key with `public`, or `None` when the result is
    /// all zero (a low-order `public`, which RFC 9180 says to refuse).
    pub(crate) fn dh(&self, public: &[u8; 32]) -> Option<Zeroizing<[u8; 32]>> {
        let secret = x25519_dalek::StaticSecret::from(self.kem_secret);
        let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(*public));
        shared
            .was_contributory()
            .then(|| Zeroizing::new(*shared.as_bytes()))
    }

    /// [`Identity::dh`] with another node's long-term key, from memory when it
    /// was remembered; the flag says whether it was. The caller remembers it
    /// ([`Identity::remember_static_dh`]) once the exchange is verified.
    pub(crate) fn static_dh(&self, peer: &[u8; 32]) -> Option<(Zeroizing<[u8; 32]>, bool)> {
        match self.static_dh.get(peer) {
            Some(v) => Some((v, true)),
            None => self.dh(peer).map(|v| (v, false)),
        }
    }

    pub(crate) fn remember_static_dh(&self, peer: [u8; 32], value: Zeroizing<[u8; 32]>) {
        self.static_dh.insert(peer, value);
    }

    #[cfg(test)]
    pub(crate) fn static_dh_len(&self) -> usize {
        self.static_dh.len()
    }

    /// This node's receipt-token key.
    pub fn receipt_tokens(&self) -> &ReceiptTokens {
        &self.receipt_tokens
    }

    /// The token of this node's message `id` ([`ReceiptTokens::token`]).
    pub fn receipt_token(&self, id: &[u8; 16], recipient: &Address, expires_at: u64) -> [u8; 32] {
        self.receipt_tokens.token(id, recipient, expires_at)
    }

    /// Signs `domain || message`; the domain keeps a signature of one kind
    /// from being replayed as another.
    pub fn sign(&self, domain: &[u8], message: &[u8]) -> [u8; 64] {
        let mut buf = Vec::with_capacity(domain.len() + message.len());
        buf.extend_from_slice(domain);
        buf.extend_from_slice(message);
        self.signing.sign(&buf).to_bytes()
    }
}

/// Checks a signature made by [`Identity::sign`].
pub fn verify(address: &Address, domain: &[u8], message: &[u8], signature: &[u8; 64]) -> bool {
    let Some(key) = address.verifying_key_remembered() else {
        return false;
    };
    let mut buf = Vec::with_capacity(domain.len() + message.len());
    buf.extend_from_slice(domain);
    buf.extend_from_slice(message);
    key.verify_strict(&buf, &ed25519_dalek::Signature::from_bytes(signature))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path()).unwrap();
        let b = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(a.address(), b.address());
        assert_eq!(a.kem_public(), b.kem_public());
        let mode = fs::metadata(dir.path().join(IDENTITY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn saved_atomically_never_over_an_existing_key() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Identity::load(dir.path()).unwrap().is_none());
        let a = Identity::generate();
        a.save(dir.path()).unwrap();
        assert!(!dir.path().join("identity.key.tmp").exists());
        let b = Identity::generate();
        assert!(matches!(
            b.save(dir.path()),
            Err(IdentityError::Exists { .. })
        ));
        let loaded = Identity::load(dir.path()).unwrap().unwrap();
        assert_eq!(loaded.address(), a.address());
    }

    #[test]
    fn damaged_or_open_file_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(IDENTITY_FILE);
        fs::write(&path, b"short").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            Identity::load_or_create(dir.path()),
            Err(IdentityError::Damaged { .. })
        ));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Identity::load_or_create(dir.path()),
            Err(IdentityError::Permissions { .. })
        ));
    }

    #[test]
    fn address_round_trips_and_signatures_bind_domain() {
        let id = Identity::generate();
        let addr: Address = id.address().to_string().parse().unwrap();
        assert_eq!(addr, id.address());
        let sig = id.sign(b"a", b"msg");
        assert!(verify(&addr, b"a", b"msg", &sig));
        assert!(!verify(&addr, b"b", b"msg", &sig));
        assert!(!verify(&addr, b"a", b"msh", &sig));
        assert!("zz".parse::<Address>().is_err());
    }

    #[test]
    fn remembered_keys_check_as_fresh_ones_and_bad_points_are_not_remembered() {
        let id = Identity::generate();
        let addr = id.address();
        let sig = id.sign(b"a", b"msg");
        assert!(verify(&addr, b"a", b"msg", &sig));
        assert!(remembered_keys().get(&addr.0).is_some());
        // From the remembered key: the same answers as the first time.
        assert!(verify(&addr, b"a", b"msg", &sig));
        assert!(!verify(&addr, b"a", b"msh", &sig));
        let other = Identity::generate().sign(b"a", b"msg");
        assert!(!verify(&addr, b"a", b"msg", &other));
        // Bytes that are no curve point: refused every time, never held.
        let bad = (0u8..=255)
            .map(|i| {
                let mut b = [i; 32];
                b[31] &= 0x7f;
                Address(b)
            })
            .find(|a| a.verifying_key().is_err())
            .unwrap();
        for _ in 0..2 {
            assert!(!verify(&bad, b"a", b"msg", &sig));
            assert!(remembered_keys().get(&bad.0).is_none());
        }
    }
}
