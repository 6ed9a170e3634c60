//! The machine's own limits, measured in the same run as the daemons: the
//! primitives one message needs, each timed on its own.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use hermes::crypto::seal::{open, seal};
use hermes::crypto::Identity;
use hermes::wire::message::seal_aad;
use hermes::wire::MessageId;
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Kem as _, OpModeR, OpModeS};

/// Size of a benchmark message's text (and of every measured payload).
pub const KIB: usize = 1024;
/// Writes grouped into one flush for the group-commit bound.
pub const GROUP: usize = 64;
/// HPKE `info` of the bench's own HPKE bound (any constant does).
const INFO: &[u8] = b"hermes-bench bound";

/// Every bound in microseconds per operation (sled group commit: per message).
#[derive(Clone, Copy, Debug, Default)]
pub struct Bounds {
    pub x25519_us: f64,
    /// Raw HPKE auth-mode single-shot seal / open of 1 KiB (the hpke crate).
    pub hpke_seal_raw_us: f64,
    pub hpke_open_raw_us: f64,
    /// The crate's own `crypto::seal::seal` / `open`, 1 KiB.
    pub seal_us: f64,
    pub open_us: f64,
    /// ChaCha20-Poly1305 seal + open of 1 KiB, key set up once (the Noise
    /// transport's cost per hop: encrypt at one end, decrypt at the other).
    pub aead_us: f64,
    /// sled: insert 1 KiB + flush, each.
    pub sled_flush_us: f64,
    /// sled: GROUP inserts of 1 KiB + one flush, per insert.
    pub sled_group_us: f64,
    /// Loopback TCP round trip of 1 KiB, p50 / p99.
    pub rtt_p50_us: f64,
    pub rtt_p99_us: f64,
}

impl Bounds {
    /// The primitives one message needs across a line of `hops` links: one
    /// HPKE seal (sender) + one open (recipient), a Noise encrypt + decrypt
    /// per hop, and a share of a group commit at each of the two durability
    /// points (the sender's outbox, the recipient's inbox).
    pub fn primitives_us(&self, hops: usize) -> f64 {
        self.hpke_seal_raw_us
            + self.hpke_open_raw_us
            + hops as f64 * self.aead_us
            + 2.0 * self.sled_group_us
    }

    /// The floor of one unloaded push-to-inbox over `hops` links: seal, open,
    /// a flush at each end, a loopback round trip's worth per hop.
    pub fn latency_floor_ms(&self, hops: usize) -> f64 {
        (self.hpke_seal_raw_us
            + self.hpke_open_raw_us
            + hops as f64 * (self.aead_us + self.rtt_p50_us / 2.0)
            + 2.0 * self.sled_flush_us)
            / 1000.0
    }
}

/// Fastest of `rounds` timings of `n` calls of `f`, in µs per call: the
/// machine is shared, and the fastest round is the one least disturbed.
fn time_us(n: usize, rounds: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..n.div_ceil(10) {
        f();
    }
    let mut per = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        per.push(t.elapsed().as_secs_f64() * 1e6 / n as f64);
    }
    per.into_iter().fold(f64::INFINITY, f64::min)
}

pub fn measure(dir: &Path, quick: bool) -> anyhow::Result<Bounds> {
    let n = if quick { 200 } else { 500 };
    let rounds = 7;
    let mut b = Bounds::default();

    // X25519, raw.
    let a = x25519_dalek::StaticSecret::random_from_rng(rand::rngs::OsRng);
    let peer = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::random_from_rng(
        rand::rngs::OsRng,
    ));
    b.x25519_us = time_us(n, rounds, || {
        std::hint::black_box(a.diffie_hellman(std::hint::black_box(&peer)));
    });

    // HPKE auth mode, raw crate, 1 KiB.
    let plain: Vec<u8> = (0..KIB).map(|i| (i * 7 + 3) as u8).collect();
    let (sk_s, pk_s) = X25519HkdfSha256::gen_keypair();
    let (sk_r, pk_r) = X25519HkdfSha256::gen_keypair();
    let mode_s = OpModeS::<X25519HkdfSha256>::Auth((sk_s.clone(), pk_s.clone()));
    b.hpke_seal_raw_us = time_us(n, rounds, || {
        let out = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
            &mode_s, &pk_r, INFO, &plain, b"aad",
        );
        std::hint::black_box(out.ok());
    });
    let (enc, ct) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
        &mode_s, &pk_r, INFO, &plain, b"aad",
    )
    .map_err(|e| anyhow::anyhow!("hpke seal: {e:?}"))?;
    let mode_r = OpModeR::<X25519HkdfSha256>::Auth(pk_s.clone());
    b.hpke_open_raw_us = time_us(n, rounds, || {
        let out = hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
            &mode_r, &sk_r, &enc, INFO, &ct, b"aad",
        );
        std::hint::black_box(out.ok());
    });

    // The crate's own seal / open.
    let alice = Identity::generate();
    let bob = Identity::generate();
    let id = MessageId::random();
    let aad = seal_aad(&id, &bob.address(), 1_900_000_000);
    b.seal_us = time_us(n, rounds, || {
        std::hint::black_box(seal(&alice, &bob.kem_public(), &aad, &plain).ok());
    });
    let sealed = seal(&alice, &bob.kem_public(), &aad, &plain)?;
    b.open_us = time_us(n, rounds, || {
        std::hint::black_box(open(&bob, &sealed, &aad).ok());
    });

    // ChaCha20-Poly1305 through hpke's AEAD context (that crate plus a
    // counter nonce), key set up once, as benches/core.rs does.
    let (sk, pk) = X25519HkdfSha256::derive_keypair(b"hermes bench: raw aead key setup");
    let (enc, mut sctx) = hpke::setup_sender::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
        &OpModeS::Base,
        &pk,
        b"bench",
    )
    .map_err(|e| anyhow::anyhow!("hpke setup: {e:?}"))?;
    let mut rctx = hpke::setup_receiver::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
        &OpModeR::Base,
        &sk,
        &enc,
        b"bench",
    )
    .map_err(|e| anyhow::anyhow!("hpke setup: {e:?}"))?;
    b.aead_us = time_us(n * 20, rounds, || {
        if let Ok(ct) = sctx.seal(&plain, b"") {
            std::hint::black_box(rctx.open(&ct, b"").ok());
        }
    });

    // sled, on a fresh database of its own.
    let (flush_us, group_us) = sled_bounds(&dir.join("raw-sled"), n)?;
    b.sled_flush_us = flush_us;
    b.sled_group_us = group_us;

    let rtt = tcp_rtt_1k(if quick { 2000 } else { 5000 })?;
    b.rtt_p50_us = pct_f(&rtt, 50.0);
    b.rtt_p99_us = pct_f(&rtt, 99.0);
    Ok(b)
}

fn pct_f(sorted_ns: &[u64], p: f64) -> f64 {
    crate::report::pct(sorted_ns, p) as f64 / 1000.0
}

/// (insert 1 KiB + flush each, µs) and (GROUP inserts + one flush, µs per insert).
fn sled_bounds(dir: &Path, n: usize) -> anyhow::Result<(f64, f64)> {
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(hermes::store::CACHE_CAPACITY)
        .open()?;
    let tree = db.open_tree("t")?;
    let value = vec![7u8; KIB];
    for _ in 0..50 {
        tree.insert(rand::random::<[u8; 16]>(), value.as_slice())?;
        db.flush()?;
    }
    let t = Instant::now();
    for _ in 0..n {
        tree.insert(rand::random::<[u8; 16]>(), value.as_slice())?;
        db.flush()?;
    }
    let flush_us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    let batches = (n * 4).div_ceil(GROUP);
    let t = Instant::now();
    for _ in 0..batches {
        for _ in 0..GROUP {
            tree.insert(rand::random::<[u8; 16]>(), value.as_slice())?;
        }
        db.flush()?;
    }
    let group_us = t.elapsed().as_secs_f64() * 1e6 / (batches * GROUP) as f64;
    drop(tree);
    drop(db);
    let _ = std::fs::remove_dir_all(dir);
    Ok((flush_us, group_us))
}

/// Round trips of 1 KiB to an echo thread over loopback TCP (blocking,
/// TCP_NODELAY), sorted, in ns, after 200 unmeasured ones.
fn tcp_rtt_1k(n: usize) -> anyhow::Result<Vec<u64>> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut buf = [0u8; KIB];
        loop {
            match s.read_exact(&mut buf) {
                Ok(()) => s.write_all(&buf)?,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    });
    let mut c = TcpStream::connect(addr)?;
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    let out = [0x5au8; KIB];
    let mut back = [0u8; KIB];
    let mut times = Vec::with_capacity(n);
    for i in 0..n + 200 {
        let t = Instant::now();
        c.write_all(&out)?;
        c.read_exact(&mut back)?;
        if i >= 200 {
            times.push(t.elapsed().as_nanos() as u64);
        }
    }
    drop(c);
    let _ = server.join();
    times.sort_unstable();
    Ok(times)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primitives_are_seal_open_a_hop_each_and_two_commit_shares() {
        let b = Bounds {
            hpke_seal_raw_us: 180.0,
            hpke_open_raw_us: 140.0,
            aead_us: 4.0,
            sled_group_us: 30.0,
            sled_flush_us: 150.0,
            rtt_p50_us: 50.0,
            ..Bounds::default()
        };
        assert_eq!(b.primitives_us(4), 180.0 + 140.0 + 16.0 + 60.0);
        assert!(
            (b.latency_floor_ms(1) - (180.0 + 140.0 + 4.0 + 25.0 + 300.0) / 1000.0).abs() < 1e-9
        );
    }
}
