//! Hot paths of the library, each next to the raw bound it is built on,
//! measured in the same run (the machine is shared and noisy, so a bound
//! measured elsewhere would not be comparable).
//!
//! Run: `cargo bench --bench core` (about a minute). Criterion prints each
//! figure; at the end a table puts each hot path next to its bound:
//!
//! | hot path | bound |
//! | --- | --- |
//! | HPKE auth-mode seal / open, 1 KiB letter | one raw X25519 Diffie-Hellman |
//! | link frame encode + decode, 1 KiB FloodPacket | memcpy of the encoded frame's bytes |
//! | Noise transport encrypt + decrypt, 1 KiB | ChaCha20-Poly1305 seal + open, 1 KiB (hpke's AEAD context, key set up once) |
//! | drop list `drop_insert_new`, no flush | raw sled insert of the same key and value sizes, no flush |
//! | `outbox_put` + flush per message | raw sled insert 1 KiB + flush per insert |
//! | 64 × `outbox_put` + one flush | 64 raw sled inserts of 1 KiB + one flush |
//!
//! The ratio is time(hot path) / time(bound): how many "bounds" one hot-path
//! operation costs. No assertion is made on any of it.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use criterion::{black_box, BenchmarkId, Criterion, Throughput};
use hermes::crypto::identity::Address;
use hermes::crypto::noise::handshake;
use hermes::crypto::seal::{open, seal, Sealed};
use hermes::crypto::Identity;
use hermes::store::{DropEntry, DropKey, OutboxEntry, Store};
use hermes::wire::link::{FloodPacket, LinkBody, LinkFrame, MAX_HOPS};
use hermes::wire::message::seal_aad;
use hermes::wire::MessageId;
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Kem as _, OpModeR, OpModeS};

const KIB: usize = 1024;
const BATCH: usize = 64;

fn letter_1k() -> Vec<u8> {
    (0..KIB).map(|i| (i * 7 + 3) as u8).collect()
}

fn crypto(c: &mut Criterion) {
    let mut g = c.benchmark_group("crypto");
    // Raw bound: one X25519 Diffie-Hellman (scalar multiplication).
    let a = x25519_dalek::StaticSecret::random_from_rng(rand::rngs::OsRng);
    let b_pub = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::random_from_rng(
        rand::rngs::OsRng,
    ));
    g.bench_function("x25519_dh", |b| {
        b.iter(|| black_box(a.diffie_hellman(black_box(&b_pub))))
    });

    let alice = Identity::generate();
    let bob = Identity::generate();
    let id = MessageId::random();
    let aad = seal_aad(&id, &bob.address(), 1_900_000_000);
    let plain = letter_1k();
    g.throughput(Throughput::Bytes(KIB as u64));
    g.bench_function("hpke_seal_1k", |b| {
        b.iter(|| black_box(seal(&alice, &bob.kem_public(), &aad, black_box(&plain)).unwrap()))
    });
    let sealed = seal(&alice, &bob.kem_public(), &aad, &plain).unwrap();
    g.bench_function("hpke_open_1k", |b| {
        b.iter(|| black_box(open(&bob, black_box(&sealed), &aad).unwrap()))
    });
    g.finish();
}

fn packet_1k() -> FloodPacket {
    let id = MessageId::random();
    FloodPacket {
        id,
        attempt: 3,
        hops_left: MAX_HOPS,
        recipient: Address([9; 32]),
        expires_at: 1_900_000_000,
        sealed: Sealed {
            sender_kem: [1; 32],
            enc: [2; 32],
            ciphertext: letter_1k(),
        },
    }
}

fn wire(c: &mut Criterion) {
    let mut g = c.benchmark_group("wire");
    let frame = LinkFrame::new(LinkBody::Packet(packet_1k()));
    let bytes = frame.encode().unwrap();
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    // Raw bound: copy the encoded frame's bytes once into a ready buffer.
    let mut dst = vec![0u8; bytes.len()];
    g.bench_function("memcpy_frame", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&bytes));
            black_box(&mut dst);
        })
    });
    g.bench_function("link_frame_encode_decode_1k", |b| {
        b.iter(|| {
            let out = black_box(&frame).encode().unwrap();
            black_box(LinkFrame::decode(black_box(&out)).unwrap())
        })
    });
    g.finish();
}

fn link(c: &mut Criterion) {
    let mut g = c.benchmark_group("link");
    g.throughput(Throughput::Bytes(KIB as u64));
    let plain = letter_1k();

    // Raw bound: ChaCha20-Poly1305 seal + open with the key set up once. The
    // chacha20poly1305 crate is not a direct dependency; hpke's AEAD context
    // is that crate plus a sequence-number nonce, nothing else per message.
    let (sk, pk) = X25519HkdfSha256::derive_keypair(b"hermes bench: raw aead key setup");
    let (enc, mut sctx) = hpke::setup_sender::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
        &OpModeS::Base,
        &pk,
        b"bench",
    )
    .unwrap();
    let mut rctx = hpke::setup_receiver::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
        &OpModeR::Base,
        &sk,
        &enc,
        b"bench",
    )
    .unwrap();
    g.bench_function("chacha20poly1305_seal_open_1k", |b| {
        b.iter(|| {
            let ct = sctx.seal(black_box(&plain), b"").unwrap();
            black_box(rctx.open(&ct, b"").unwrap())
        })
    });

    // The link's own transport, set up by a real XX handshake over a pipe.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (ida, idb) = (Identity::generate(), Identity::generate());
    let (mut la, mut lb) = rt.block_on(async {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let (la, lb) = tokio::join!(
            handshake(&mut a, &ida, true),
            handshake(&mut b, &idb, false)
        );
        (la.unwrap(), lb.unwrap())
    });
    g.bench_function("noise_encrypt_decrypt_1k", |b| {
        b.iter(|| {
            let ct = la.send.encrypt(black_box(&plain)).unwrap();
            black_box(lb.recv.decrypt(&ct).unwrap())
        })
    });
    g.finish();
}

fn outbox_entry() -> OutboxEntry {
    OutboxEntry {
        recipient: Address([5; 32]),
        created_ms: 1_700_000_000_000,
        expires_at: 1_900_000_000,
        attempts: 0,
        next_try_ms: 1_700_000_000_000,
        sealed: Sealed {
            sender_kem: [1; 32],
            enc: [2; 32],
            ciphertext: letter_1k(),
        },
    }
}

/// A fresh store and a fresh raw sled database side by side, so that each
/// pair of hot path and bound starts from the same empty state and no
/// earlier benchmark's unflushed writes or background flushes weigh on it.
fn fresh(dir: &std::path::Path, name: &str) -> (Store, sled::Db) {
    let store = Store::open(&dir.join(format!("{name}-store"))).unwrap();
    let raw = sled::Config::new()
        .path(dir.join(format!("{name}-raw")))
        .cache_capacity(hermes::store::CACHE_CAPACITY)
        .open()
        .unwrap();
    (store, raw)
}

fn store(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("store");

    // Drop list, no flush: a two-tree transaction (entry + expiry index)
    // with a read first. Bound: one plain insert of a key and value of the
    // sizes the drop list writes (21-byte key, ~10-byte value).
    {
        let (store, raw) = fresh(dir.path(), "drop");
        let tree = raw.open_tree("drop").unwrap();
        let entry = DropEntry {
            expires_at: 1_900_000_000,
            receipt: None,
        };
        let small_value = vec![7u8; postcard::to_stdvec(&entry).unwrap().len()];
        g.bench_function("sled_insert_small", |b| {
            b.iter(|| {
                let mut k = [0u8; 21];
                k[1..17].copy_from_slice(&rand::random::<[u8; 16]>());
                tree.insert(k, small_value.as_slice()).unwrap();
            })
        });
        g.bench_function("drop_insert_new", |b| {
            b.iter(|| {
                let key = DropKey::Delivered(MessageId::random());
                assert!(store.drop_insert_new(&key, &entry, 1_700_000_000).unwrap());
            })
        });
    }

    // Outbox put + flush per message (what one push costs on disk), vs a
    // raw insert of the same size + flush.
    let oentry = outbox_entry();
    let big_value = vec![7u8; postcard::to_stdvec(&oentry).unwrap().len()];
    {
        let (store, raw) = fresh(dir.path(), "each");
        let tree = raw.open_tree("outbox").unwrap();
        g.bench_function("sled_insert_1k_flush", |b| {
            b.iter(|| {
                tree.insert(rand::random::<[u8; 16]>(), big_value.as_slice())
                    .unwrap();
                raw.flush().unwrap();
            })
        });
        g.bench_function("outbox_put_flush", |b| {
            b.iter(|| {
                store.outbox_put(&MessageId::random(), &oentry).unwrap();
                store.flush_blocking().unwrap();
            })
        });
        // What each flush adds for the store manifest (a generation bump
        // and one in-place slot write + fdatasync): a counter bump + flush,
        // vs a raw small insert + flush.
        let meta = raw.open_tree("meta").unwrap();
        g.bench_function("sled_insert_small_flush", |b| {
            b.iter(|| {
                meta.insert(b"relayed", &rand::random::<[u8; 8]>()).unwrap();
                raw.flush().unwrap();
            })
        });
        g.bench_function("bump_flush_with_manifest", |b| {
            b.iter(|| {
                store.bump(hermes::store::Counter::Relayed, 1).unwrap();
                store.flush_blocking().unwrap();
            })
        });
    }

    // Group commit: 64 writes, one flush.
    {
        let (store, raw) = fresh(dir.path(), "group");
        let tree = raw.open_tree("outbox").unwrap();
        g.throughput(Throughput::Elements(BATCH as u64));
        g.bench_function(BenchmarkId::new("sled_insert_1k_flush_per", BATCH), |b| {
            b.iter(|| {
                for _ in 0..BATCH {
                    tree.insert(rand::random::<[u8; 16]>(), big_value.as_slice())
                        .unwrap();
                }
                raw.flush().unwrap();
            })
        });
        g.bench_function(BenchmarkId::new("outbox_put_flush_per", BATCH), |b| {
            b.iter(|| {
                for _ in 0..BATCH {
                    store.outbox_put(&MessageId::random(), &oentry).unwrap();
                }
                store.flush_blocking().unwrap();
            })
        });
    }
    g.finish();
}

/// Where criterion keeps its results: the same rules as criterion's own
/// default (CRITERION_HOME, else $CARGO_TARGET_DIR/criterion, else the target
/// dir this bench binary was built into).
fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(t).join("criterion");
    }
    // <target>/release/deps/core-<hash>
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent()?.parent()?.parent().map(|t| t.join("criterion")))
        .unwrap_or_else(|| PathBuf::from("target/criterion"))
}

/// Criterion's typical estimate (slope, else mean) in ns for `id`, if it was
/// measured in this run.
fn estimate_ns(id: &str, since: SystemTime) -> Option<f64> {
    let path = criterion_dir().join(id).join("new").join("estimates.json");
    let modified = std::fs::metadata(&path).ok()?.modified().ok()?;
    if modified < since {
        return None; // left from an earlier run (e.g. filtered out now)
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    let typical = if v["slope"].is_object() {
        &v["slope"]
    } else {
        &v["mean"]
    };
    typical["point_estimate"].as_f64()
}

fn fmt_time(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}

fn fmt_rate(ns: f64) -> String {
    let r = 1e9 / ns;
    if r >= 1e6 {
        format!("{:.2} M/s", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1} k/s", r / 1e3)
    } else {
        format!("{r:.0} /s")
    }
}

fn report(since: SystemTime) {
    // (hot path, its criterion id, items per iteration, bound, its id, items per iteration)
    let rows: &[(&str, &str, f64, &str, &str, f64)] = &[
        (
            "HPKE seal 1 KiB",
            "crypto/hpke_seal_1k",
            1.0,
            "X25519 DH",
            "crypto/x25519_dh",
            1.0,
        ),
        (
            "HPKE open 1 KiB",
            "crypto/hpke_open_1k",
            1.0,
            "X25519 DH",
            "crypto/x25519_dh",
            1.0,
        ),
        (
            "link frame enc+dec 1 KiB",
            "wire/link_frame_encode_decode_1k",
            1.0,
            "memcpy of the frame",
            "wire/memcpy_frame",
            1.0,
        ),
        (
            "Noise enc+dec 1 KiB",
            "link/noise_encrypt_decrypt_1k",
            1.0,
            "ChaCha20-Poly1305 seal+open",
            "link/chacha20poly1305_seal_open_1k",
            1.0,
        ),
        (
            "drop_insert_new (no flush)",
            "store/drop_insert_new",
            1.0,
            "sled insert (no flush)",
            "store/sled_insert_small",
            1.0,
        ),
        (
            "outbox_put + flush, each",
            "store/outbox_put_flush",
            1.0,
            "sled insert 1 KiB + flush",
            "store/sled_insert_1k_flush",
            1.0,
        ),
        (
            "counter + flush (manifest)",
            "store/bump_flush_with_manifest",
            1.0,
            "sled insert small + flush",
            "store/sled_insert_small_flush",
            1.0,
        ),
        (
            "64 outbox_put + 1 flush",
            "store/outbox_put_flush_per/64",
            BATCH as f64,
            "64 sled inserts + 1 flush",
            "store/sled_insert_1k_flush_per/64",
            BATCH as f64,
        ),
        (
            "64 outbox_put + 1 flush",
            "store/outbox_put_flush_per/64",
            BATCH as f64,
            "outbox_put + flush, each",
            "store/outbox_put_flush",
            1.0,
        ),
    ];
    println!();
    println!("hot paths vs raw bounds measured in this run (per item; ratio = time / bound time)");
    println!(
        "{:<28} {:>11} {:>11} | {:<28} {:>11} {:>11} | {:>7}",
        "hot path", "time", "rate", "bound", "time", "rate", "ratio"
    );
    println!("{}", "-".repeat(118));
    for (name, id, n, bname, bid, bn) in rows {
        let (Some(t), Some(bt)) = (estimate_ns(id, since), estimate_ns(bid, since)) else {
            println!("{name:<28} (not measured in this run: filtered out?)");
            continue;
        };
        let (t, bt) = (t / n, bt / bn);
        println!(
            "{:<28} {:>11} {:>11} | {:<28} {:>11} {:>11} | {:>6.2}x",
            name,
            fmt_time(t),
            fmt_rate(t),
            bname,
            fmt_time(bt),
            fmt_rate(bt),
            t / bt
        );
    }
}

fn main() {
    // Criterion keeps a result file's mtime at second granularity on some
    // file systems: allow a little slack.
    let since = SystemTime::now() - Duration::from_secs(1);
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    crypto(&mut c);
    wire(&mut c);
    link(&mut c);
    store(&mut c);
    c.final_summary();
    // `cargo test --benches` runs each benchmark once as a test: no figures then.
    let args: Vec<String> = std::env::args().collect();
    let benchmarking =
        args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test" || a == "--list");
    if benchmarking {
        report(since);
    }
}
