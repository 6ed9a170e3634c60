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
//!
//! Time is this thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), not wall
//! time: every operation here is a pure computation, and on the shared
//! machine wall time counts the other tenants' time slices (at load average
//! 15 the wall-time DH measured 233 µs, against 53-74 µs on a quieter
//! machine). `ONION_BENCH_CLOCK=wall` measures wall time instead.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
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

/// This thread's CPU time, in ns, as a criterion measurement.
struct ThreadCpuTime {
    /// Formats values as wall time does (both are ns).
    wall: WallTime,
}

fn thread_cpu_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

impl Measurement for ThreadCpuTime {
    type Intermediate = u64;
    type Value = u64;
    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns().saturating_sub(start)
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        self.wall.formatter()
    }
}

fn onion<M: Measurement>(c: &mut Criterion<M>) {
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

fn configure<M: Measurement>(c: Criterion<M>) -> Criterion<M> {
    c.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args()
}

fn main() {
    let since = SystemTime::now() - Duration::from_secs(1);
    let wall = std::env::var("ONION_BENCH_CLOCK").is_ok_and(|v| v == "wall");
    println!(
        "onion: measuring {}",
        if wall {
            "wall time"
        } else {
            "this thread's CPU time (ONION_BENCH_CLOCK=wall for wall time)"
        }
    );
    if wall {
        let mut c = configure(Criterion::default());
        onion(&mut c);
        c.final_summary();
    } else {
        let mut c =
            configure(Criterion::default().with_measurement(ThreadCpuTime { wall: WallTime }));
        onion(&mut c);
        c.final_summary();
    }
    let args: Vec<String> = std::env::args().collect();
    let benchmarking =
        args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test" || a == "--list");
    if benchmarking {
        report(since);
    }
}
