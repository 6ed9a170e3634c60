//! The link handshake: `Noise_XX_25519_ChaChaPoly_BLAKE2s`, prologue
//! `hermes/3`, every message behind a 2-byte big-endian length.
//!
//! The prologue names the link protocol's version: `hermes/3` packs frames
//! into fixed-size cells (`wire::cell`), `hermes/2` sent each frame in cells
//! of its own, `hermes/1` sent each frame as one Noise message of its own
//! length. A node of another version fails the handshake (message 2 does not
//! verify) before any frame is read.
//!
//! XX authenticates both static keys but decides no trust: the caller must
//! compare [`Link::remote_static`] with the key in the peer's signed record.
//! After the handshake the link uses snow's stateless transport with explicit
//! nonces, split into a [`SendCipher`] (owned by the writer) and a
//! [`RecvCipher`] (owned by the reader), each counting its own nonces in order.

use std::sync::Arc;
use std::time::Duration;

use snow::{Builder, StatelessTransportState};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::identity::Identity;

pub const NOISE_PARAMS: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";
pub const PROLOGUE: &[u8] = b"hermes/3";
/// Largest Noise message, set by the 2-byte length prefix.
pub const MAX_NOISE_MESSAGE: usize = 65535;
/// Poly1305 tag on every transport message.
pub const TAG_LEN: usize = 16;
/// Largest plaintext one transport message carries.
pub const MAX_PLAINTEXT: usize = MAX_NOISE_MESSAGE - TAG_LEN;
/// A handshake that has not finished by then is abandoned.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum NoiseError {
    #[error("handshake timed out")]
    Timeout,
    #[error("connection failed during handshake: {0}")]
    Io(#[from] std::io::Error),
    #[error("noise: {0}")]
    Noise(#[from] snow::Error),
    #[error("peer sent no static key")]
    NoRemoteKey,
    #[error("message of {0} bytes is over the Noise limit")]
    TooLarge(usize),
}

/// An established link's keys.
pub struct Link {
    pub remote_static: [u8; 32],
    pub send: SendCipher,
    pub recv: RecvCipher,
}

pub struct SendCipher {
    state: Arc<StatelessTransportState>,
    nonce: u64,
}

pub struct RecvCipher {
    state: Arc<StatelessTransportState>,
    nonce: u64,
}

impl SendCipher {
    /// Encrypts the next message in order.
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, NoiseError> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(NoiseError::TooLarge(plaintext.len()));
        }
        let mut out = vec![0u8; plaintext.len() + TAG_LEN];
        let n = self.state.write_message(self.nonce, plaintext, &mut out)?;
        self.nonce += 1;
        out.truncate(n);
        Ok(out)
    }
}

impl RecvCipher {
    /// Decrypts the next message in order. After an error the link is dead:
    /// the caller must close it.
    pub fn decrypt(&mut self, ciphertext: &[u8]) -> Result<Vec<u8>, NoiseError> {
        if ciphertext.len() > MAX_NOISE_MESSAGE {
            return Err(NoiseError::TooLarge(ciphertext.len()));
        }
        let mut out = vec![0u8; ciphertext.len()];
        let n = self.state.read_message(self.nonce, ciphertext, &mut out)?;
        self.nonce += 1;
        out.truncate(n);
        Ok(out)
    }
}

/// Writes one length-prefixed message.
pub async fn write_prefixed<W: AsyncWrite + Unpin>(w: &mut W, msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "message over 65535 bytes")
    })?;
    let mut buf = Vec::with_capacity(2 + msg.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(msg);
    w.write_all(&buf).await
}

/// Reads one length-prefixed message, reading no byte past it.
pub async fn read_prefixed<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    r.read_exact(&mut len).await?;
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    r.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Runs the XX handshake over `stream` (no byte past the handshake is read).
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    identity: &Identity,
    initiator: bool,
) -> Result<Link, NoiseError> {
    tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        run_handshake(stream, identity, initiator),
    )
    .await
    .map_err(|_| NoiseError::Timeout)?
}

async fn run_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    identity: &Identity,
    initiator: bool,
) -> Result<Link, NoiseError> {
    let params = NOISE_PARAMS.parse()?;
    let builder = Builder::new(params)
        .prologue(PROLOGUE)?
        .local_private_key(identity.kem_secret())?;
    let mut hs = if initiator {
        builder.build_initiator()?
    } else {
        builder.build_responder()?
    };
    let mut buf = vec![0u8; MAX_NOISE_MESSAGE];
    // XX has three messages: -> e; <- e, ee, s, es; -> s, se.
    for step in 0..3 {
        let ours = (step % 2 == 0) == initiator;
        if ours {
            let n = hs.write_message(&[], &mut buf)?;
            write_prefixed(stream, &buf[..n]).await?;
        } else {
            let msg = read_prefixed(stream).await?;
            hs.read_message(&msg, &mut buf)?;
        }
    }
    let remote = hs.get_remote_static().ok_or(NoiseError::NoRemoteKey)?;
    let mut remote_static = [0u8; 32];
    if remote.len() != 32 {
        return Err(NoiseError::NoRemoteKey);
    }
    remote_static.copy_from_slice(remote);
    let state = Arc::new(hs.into_stateless_transport_mode()?);
    Ok(Link {
        remote_static,
        send: SendCipher {
            state: state.clone(),
            nonce: 0,
        },
        recv: RecvCipher { state, nonce: 0 },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn handshake_then_transport_both_ways() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let ida = Identity::generate();
        let idb = Identity::generate();
        let (la, lb) = tokio::join!(
            handshake(&mut a, &ida, true),
            handshake(&mut b, &idb, false)
        );
        let (mut la, mut lb) = (la.unwrap(), lb.unwrap());
        assert_eq!(la.remote_static, idb.kem_public());
        assert_eq!(lb.remote_static, ida.kem_public());
        for i in 0..3u8 {
            let c = la.send.encrypt(&[i; 10]).unwrap();
            assert_eq!(lb.recv.decrypt(&c).unwrap(), vec![i; 10]);
            let c = lb.send.encrypt(&[i; 3]).unwrap();
            assert_eq!(la.recv.decrypt(&c).unwrap(), vec![i; 3]);
        }
        // Out-of-order or altered messages fail.
        let c1 = la.send.encrypt(b"one").unwrap();
        let c2 = la.send.encrypt(b"two").unwrap();
        assert!(lb.recv.decrypt(&c2).is_err());
        let _ = c1;
    }

    #[tokio::test]
    async fn stalled_peer_times_out() {
        let (mut a, _b) = tokio::io::duplex(1024);
        let id = Identity::generate();
        tokio::time::pause();
        let r = handshake(&mut a, &id, false).await;
        assert!(matches!(r, Err(NoiseError::Timeout)));
    }
}
