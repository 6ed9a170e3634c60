//! The machine's own limits, measured in the same run as the daemons: the
//! primitives one message needs, each timed on its own (flood mode and, for
//! the onion rows, the Sphinx operations of `crypto::sphinx`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use hermes::crypto::seal::{open, seal};
use hermes::crypto::sphinx::{generate_key, NodeHop, OnionFormat, Peeled, Sphinx, PACKET_SIZE};
use hermes::crypto::{Address, Identity};
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
/// Relays on the onion path the onion bounds are measured for (the onion
/// rows run with `routing.hops` = this).
pub const ONION_RELAYS: usize = 3;
/// Bytes of a receipt's plaintext in the reply-block bound (a receipt is
/// small; a Sphinx packet costs the same for any payload up to its size).
const RECEIPT_BYTES: usize = 200;

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
    /// The onion primitives (`crypto::sphinx::Sphinx`, 4,096-byte packets,
    /// [`ONION_RELAYS`] relays + the recipient).
    pub onion: OnionBounds,
}

/// What an onion message costs in primitives, each measured on its own, µs.
#[derive(Clone, Copy, Debug, Default)]
pub struct OnionBounds {
    /// Wrap a 1 KiB payload for 3 relays + the recipient (at the origin).
    pub wrap_us: f64,
    /// One peel at a relay (replay tag, MAC, decrypt, blind, Lioness).
    pub peel_us: f64,
    /// The peel at the recipient (the last layer, the payload opened).
    pub peel_last_us: f64,
    /// One reply block for 3 relays + the origin (built by the origin).
    pub reply_block_us: f64,
    /// Using a reply block for a receipt (at the recipient).
    pub use_reply_us: f64,
    /// The origin's peel of a reply + opening it with its recovery.
    pub reply_open_us: f64,
    /// ChaCha20-Poly1305 seal + open of a 4,096-byte packet: a Noise hop.
    pub aead_packet_us: f64,
    /// sled `contains_key` + `compare_and_swap` of a 40-byte key, no flush:
    /// a relay's replay-tag check (`store::replay`).
    pub tag_insert_us: f64,
    /// Loopback TCP round trip of 4,096 bytes, p50.
    pub rtt_packet_p50_us: f64,
}

impl OnionBounds {
    /// What one relayed packet costs: the Noise decrypt from the previous
    /// hop and encrypt to the next, one peel, one replay-tag insert.
    pub fn relay_packet_us(&self) -> f64 {
        self.peel_us + self.aead_packet_us + self.tag_insert_us
    }

    /// Packets one core could peel and pass on per second.
    pub fn relay_bound_per_core(&self) -> f64 {
        1e6 / self.relay_packet_us()
    }
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

    /// The primitives of one onion message of one packet through
    /// [`ONION_RELAYS`] relays, with its receipt back over a reply block:
    /// at the origin the HPKE seal, a reply block and the wrap; at each relay
    /// a peel and a replay-tag insert, going and coming back; the recipient's
    /// peel and HPKE open, then it uses the reply block; the origin's peel of
    /// the reply; a Noise hop (4 KiB) per link both ways; a share of a group
    /// commit at the two durability points (outbox, inbox).
    pub fn onion_primitives_us(&self) -> f64 {
        let o = &self.onion;
        let r = ONION_RELAYS as f64;
        self.hpke_seal_raw_us
            + self.hpke_open_raw_us
            + o.wrap_us
            + o.reply_block_us
            + 2.0 * r * (o.peel_us + o.tag_insert_us)
            + o.peel_last_us
            + o.use_reply_us
            + o.reply_open_us
            + 2.0 * (r + 1.0) * o.aead_packet_us
            + 2.0 * self.sled_group_us
    }

    /// The floor of one unloaded onion push-to-inbox through
    /// [`ONION_RELAYS`] relays: seal, reply block and wrap at the origin, a
    /// flush there (the outbox) and at the recipient (the inbox), a peel and
    /// a tag insert per relay, the recipient's peel and open, and per link a
    /// Noise hop of 4 KiB and half a 4 KiB loopback round trip.
    pub fn onion_latency_floor_ms(&self) -> f64 {
        let o = &self.onion;
        let r = ONION_RELAYS as f64;
        (self.hpke_seal_raw_us
            + o.reply_block_us
            + o.wrap_us
            + r * (o.peel_us + o.tag_insert_us)
            + o.peel_last_us
            + self.hpke_open_raw_us
            + (r + 1.0) * (o.aead_packet_us + o.rtt_packet_p50_us / 2.0)
            + 2.0 * self.sled_flush_us)
            / 1000.0
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

/// This thread's CPU time so far, µs (`CLOCK_THREAD_CPUTIME_ID`).
fn thread_cpu_us() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 * 1e6 + t.tv_nsec as f64 / 1e3
}

/// As [`time_us`], but this thread's CPU time instead of wall time: for
/// pure computations, so that time slices given to other processes of a
/// shared machine do not count (the daemons' CPU is measured the same way).
fn cpu_us(n: usize, rounds: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..n.div_ceil(10) {
        f();
    }
    let mut per = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = thread_cpu_us();
        for _ in 0..n {
            f();
        }
        per.push((thread_cpu_us() - t) / n as f64);
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

    let rtt = tcp_rtt(KIB, if quick { 2000 } else { 5000 })?;
    b.rtt_p50_us = pct_f(&rtt, 50.0);
    b.rtt_p99_us = pct_f(&rtt, 99.0);

    b.onion = onion_bounds(dir, quick, &plain, &mut sctx, &mut rctx)?;
    Ok(b)
}

/// A relay of the onion bounds: its id and packet key pair.
fn onion_hop(n: u8) -> (NodeHop, zeroize::Zeroizing<[u8; 32]>) {
    let (secret, key) = generate_key();
    (
        NodeHop {
            id: Address([n; 32]),
            key,
        },
        secret,
    )
}

/// The Sphinx operations of one onion message, the 4 KiB Noise hop, the
/// replay-tag insert and the 4 KiB round trip.
fn onion_bounds(
    dir: &Path,
    quick: bool,
    plain: &[u8],
    sctx: &mut hpke::aead::AeadCtxS<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>,
    rctx: &mut hpke::aead::AeadCtxR<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>,
) -> anyhow::Result<OnionBounds> {
    // A wrap or a reply block is ~10 DH (~1 ms): fewer calls per round,
    // more rounds. CPU time of this thread: these are pure computations.
    let n = if quick { 20 } else { 50 };
    let rounds = 15;
    let mut o = OnionBounds::default();
    let nodes: Vec<_> = (1..=ONION_RELAYS as u8 + 1).map(onion_hop).collect();
    let relays: Vec<NodeHop> = nodes[..ONION_RELAYS].iter().map(|h| h.0).collect();
    let last = &nodes[ONION_RELAYS];
    let fail = |what: &str, e: hermes::crypto::sphinx::OnionError| {
        anyhow::anyhow!("onion bound, {what}: {e}")
    };

    o.wrap_us = cpu_us(n, rounds, || {
        std::hint::black_box(Sphinx.wrap(&relays, &last.0, plain).ok());
    });
    let packet = Sphinx
        .wrap(&relays, &last.0, plain)
        .map_err(|e| fail("wrap", e))?;
    o.peel_us = cpu_us(n * 4, rounds, || {
        std::hint::black_box(Sphinx.peel(&packet, &nodes[0].1).ok());
    });
    let mut p = packet;
    for (i, h) in nodes[..ONION_RELAYS].iter().enumerate() {
        match Sphinx.peel(&p, &h.1).map_err(|e| fail("peel", e))? {
            Peeled::Forward { packet, .. } => p = packet,
            other => anyhow::bail!("onion bound: relay {i} got {other:?}"),
        }
    }
    match Sphinx.peel(&p, &last.1).map_err(|e| fail("last peel", e))? {
        Peeled::Deliver { payload, .. } if payload == plain => {}
        other => anyhow::bail!("onion bound: the recipient got {other:?}"),
    }
    o.peel_last_us = cpu_us(n * 4, rounds, || {
        std::hint::black_box(Sphinx.peel(&p, &last.1).ok());
    });

    // The reply: the origin (`last` here plays it) builds a block through the
    // same relays, the recipient uses it for a receipt, the relays peel it
    // and the origin opens it.
    o.reply_block_us = cpu_us(n, rounds, || {
        std::hint::black_box(Sphinx.reply_block(&relays, &last.0).ok());
    });
    let (block, recovery) = Sphinx
        .reply_block(&relays, &last.0)
        .map_err(|e| fail("reply block", e))?;
    let receipt = vec![0x42u8; RECEIPT_BYTES];
    o.use_reply_us = cpu_us(n * 2, rounds, || {
        std::hint::black_box(Sphinx.use_reply_block(&block, &receipt).ok());
    });
    let (_, mut p) = Sphinx
        .use_reply_block(&block, &receipt)
        .map_err(|e| fail("use reply block", e))?;
    for (i, h) in nodes[..ONION_RELAYS].iter().enumerate() {
        match Sphinx.peel(&p, &h.1).map_err(|e| fail("reply peel", e))? {
            Peeled::Forward { packet, .. } => p = packet,
            other => anyhow::bail!("onion bound: reply at relay {i} got {other:?}"),
        }
    }
    let open_reply = |p: &hermes::crypto::sphinx::Packet| -> Option<Vec<u8>> {
        match Sphinx.peel(p, &last.1).ok()? {
            Peeled::Reply { sealed, .. } => recovery.open(&sealed).ok(),
            _ => None,
        }
    };
    match open_reply(&p) {
        Some(r) if r.starts_with(&receipt) => {}
        other => anyhow::bail!("onion bound: the reply opened to {other:?}"),
    }
    o.reply_open_us = cpu_us(n * 4, rounds, || {
        std::hint::black_box(open_reply(&p));
    });

    let frame: Vec<u8> = (0..PACKET_SIZE).map(|i| (i * 5 + 1) as u8).collect();
    o.aead_packet_us = cpu_us(n * 20, rounds, || {
        if let Ok(ct) = sctx.seal(&frame, b"") {
            std::hint::black_box(rctx.open(&ct, b"").ok());
        }
    });

    o.tag_insert_us = sled_tag_us(&dir.join("raw-sled-tags"), n * 50)?;
    let rtt = tcp_rtt(PACKET_SIZE, if quick { 1000 } else { 3000 })?;
    o.rtt_packet_p50_us = pct_f(&rtt, 50.0);
    Ok(o)
}

/// A relay's replay-tag check on a raw sled tree: `contains_key` then
/// `compare_and_swap` of a fresh 40-byte key (epoch ‖ tag), empty value, no
/// flush (as `store::replay` does), µs of this thread's CPU each.
fn sled_tag_us(dir: &Path, n: usize) -> anyhow::Result<f64> {
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(hermes::store::CACHE_CAPACITY)
        .open()?;
    let tree = db.open_tree("replay")?;
    let mut key = [0u8; 40];
    key[..8].copy_from_slice(&1u64.to_be_bytes());
    let mut insert = || -> anyhow::Result<()> {
        key[8..].copy_from_slice(&rand::random::<[u8; 32]>());
        if !tree.contains_key(key)? {
            let _ = tree.compare_and_swap(key, None as Option<&[u8]>, Some(&[] as &[u8]))?;
        }
        Ok(())
    };
    for _ in 0..n / 10 {
        insert()?;
    }
    // This thread's CPU time, fastest of 5 rounds (sled's own threads only
    // flush in the background, every 500 ms).
    let mut us = f64::INFINITY;
    for _ in 0..5 {
        let t = thread_cpu_us();
        for _ in 0..n / 5 {
            insert()?;
        }
        us = us.min((thread_cpu_us() - t) / (n / 5) as f64);
    }
    drop(tree);
    drop(db);
    let _ = std::fs::remove_dir_all(dir);
    Ok(us)
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

/// Round trips of `size` bytes to an echo thread over loopback TCP
/// (blocking, TCP_NODELAY), sorted, in ns, after 200 unmeasured ones.
fn tcp_rtt(size: usize, n: usize) -> anyhow::Result<Vec<u64>> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut buf = vec![0u8; size];
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
    let out = vec![0x5au8; size];
    let mut back = vec![0u8; size];
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

    #[test]
    fn onion_bounds_count_every_layer_both_ways() {
        let b = Bounds {
            hpke_seal_raw_us: 180.0,
            hpke_open_raw_us: 140.0,
            sled_group_us: 30.0,
            sled_flush_us: 150.0,
            onion: OnionBounds {
                wrap_us: 800.0,
                peel_us: 150.0,
                peel_last_us: 90.0,
                reply_block_us: 790.0,
                use_reply_us: 20.0,
                reply_open_us: 95.0,
                aead_packet_us: 10.0,
                tag_insert_us: 5.0,
                rtt_packet_p50_us: 60.0,
            },
            ..Bounds::default()
        };
        assert_eq!(b.onion.relay_packet_us(), 165.0);
        assert!((b.onion.relay_bound_per_core() - 1e6 / 165.0).abs() < 1e-9);
        // seal + open + wrap + block + 6 relay peels with their tags + the
        // recipient's peel + using the block + opening the reply + 8 Noise
        // hops + 2 commit shares.
        let want =
            180.0 + 140.0 + 800.0 + 790.0 + 6.0 * 155.0 + 90.0 + 20.0 + 95.0 + 8.0 * 10.0 + 60.0;
        assert!((b.onion_primitives_us() - want).abs() < 1e-9);
        let floor = 180.0 + 790.0 + 800.0 + 3.0 * 155.0 + 90.0 + 140.0 + 4.0 * 40.0 + 300.0;
        assert!((b.onion_latency_floor_ms() - floor / 1000.0).abs() < 1e-9);
    }

    #[test]
    fn onion_bounds_measure_a_whole_route() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Bounds::default();
        let (sk, pk) = X25519HkdfSha256::derive_keypair(b"test");
        let (enc, mut s) = hpke::setup_sender::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
            &OpModeS::Base,
            &pk,
            b"t",
        )
        .unwrap();
        let mut r = hpke::setup_receiver::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
            &OpModeR::Base,
            &sk,
            &enc,
            b"t",
        )
        .unwrap();
        b.onion = onion_bounds(dir.path(), true, &[1u8; KIB], &mut s, &mut r).unwrap();
        let o = b.onion;
        for v in [
            o.wrap_us,
            o.peel_us,
            o.peel_last_us,
            o.reply_block_us,
            o.use_reply_us,
            o.reply_open_us,
            o.aead_packet_us,
            o.tag_insert_us,
            o.rtt_packet_p50_us,
        ] {
            assert!(v > 0.0 && v.is_finite(), "{o:?}");
        }
    }
}
