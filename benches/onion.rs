//! Onion packets (issue 9): wrapping at the origin and peeling at a relay,
//! each next to the raw bound it is built on, measured in the same run.
//!
//! Run: `cargo bench --bench onion` (about 30 s). At the end a table puts
//! each operation next to one raw X25519 Diffie-Hellman (x25519-dalek, the
//! copy sphinx-packet uses):
//!
//! | operation | expected cost in DH |
//! | --- | --- |
//! | wrap for 3 relays + recipient (4 hops) | about 2 per hop (key agreement and blinding) |
//! | peel at a relay (replay tag, MAC, decrypt, blind, Lioness) | about 2 |
//! | peel at the recipient (no blinding) | about 1 |
//! | reply block for 3 relays + origin | like a wrap, without the payload |
//!
//! The ratio is time(operation) / time(one DH). No assertion is made on it.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use criterion::{black_box, Criterion};
use hermes::crypto::identity::Address;
use hermes::crypto::sphinx::{
    generate_key, NodeHop, OnionFormat, Packet, Peeled, Sphinx, MAX_PLAINTEXT,
};

fn hop(n: u8) -> (NodeHop, zeroize::Zeroizing<[u8; 32]>) {
    let (secret, key) = generate_key();
    (
        NodeHop {
            id: Address([n; 32]),
            key,
        },
        secret,
    )
}

fn onion(c: &mut Criterion) {
    let nodes: Vec<_> = (1..=4).map(hop).collect();
    let relays: Vec<NodeHop> = nodes[..3].iter().map(|n| n.0).collect();
    let to = nodes[3].0;
    let payload = vec![7u8; MAX_PLAINTEXT];
    let mut g = c.benchmark_group("onion");
    g.bench_function("dh", |b| {
        let (s, _) = generate_key();
        let (_, p) = generate_key();
        let s = x25519_dalek_v3::StaticSecret::from(*s);
        let p = x25519_dalek_v3::PublicKey::from(p);
        b.iter(|| black_box(s.diffie_hellman(black_box(&p))))
    });
    g.bench_function("wrap_3_relays", |b| {
        b.iter(|| Sphinx.wrap(black_box(&relays), &to, black_box(&payload)))
    });
    let packet = Sphinx.wrap(&relays, &to, &payload).expect("wrap");
    g.bench_function("peel_relay", |b| {
        b.iter(|| Sphinx.peel(black_box(&packet), &nodes[0].1))
    });
    let mut last: Packet = packet.clone();
    for n in &nodes[..3] {
        if let Ok(Peeled::Forward { packet, .. }) = Sphinx.peel(&last, &n.1) {
            last = packet;
        }
    }
    g.bench_function("peel_recipient", |b| {
        b.iter(|| Sphinx.peel(black_box(&last), &nodes[3].1))
    });
    g.bench_function("reply_block_3_relays", |b| {
        b.iter(|| Sphinx.reply_block(black_box(&relays), &to))
    });
    g.finish();
}

fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(t).join("criterion");
    }
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent()?.parent()?.parent().map(|t| t.join("criterion")))
        .unwrap_or_else(|| PathBuf::from("target/criterion"))
}

fn estimate_ns(id: &str, since: SystemTime) -> Option<f64> {
    let path = criterion_dir().join(id).join("new").join("estimates.json");
    let modified = std::fs::metadata(&path).ok()?.modified().ok()?;
    if modified < since {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    let typical = if v["slope"].is_object() {
        &v["slope"]
    } else {
        &v["mean"]
    };
    typical["point_estimate"].as_f64()
}

fn report(since: SystemTime) {
    let Some(dh) = estimate_ns("onion/dh", since) else {
        println!("onion: no DH figure from this run");
        return;
    };
    println!(
        "onion packets vs one X25519 DH measured in this run ({:.1} µs)",
        dh / 1e3
    );
    println!(
        "{:<22} {:>12} {:>12} {:>8}",
        "operation", "time", "rate", "DH"
    );
    for id in [
        "wrap_3_relays",
        "peel_relay",
        "peel_recipient",
        "reply_block_3_relays",
    ] {
        if let Some(ns) = estimate_ns(&format!("onion/{id}"), since) {
            println!(
                "{:<22} {:>9.1} µs {:>10.0}/s {:>8.2}",
                id,
                ns / 1e3,
                1e9 / ns,
                ns / dh
            );
        }
    }
}

fn main() {
    let since = SystemTime::now() - Duration::from_secs(1);
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    onion(&mut c);
    c.final_summary();
    let args: Vec<String> = std::env::args().collect();
    let benchmarking =
        args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test" || a == "--list");
    if benchmarking {
        report(since);
    }
}
