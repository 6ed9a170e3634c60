//! Writes seed inputs for the fuzz targets from real encoded values:
//!
//! ```sh
//! cargo run --manifest-path fuzz/Cargo.toml --example seeds -- receipt letter
//! ```
//!
//! With no argument it writes every target it knows (`node_record`,
//! `receipt`, `config`, `letter`, `link_frame`, `packet`, `onion_packet`; the seeds of `client_request`,
//! `legacy_request` and `noise_transport` were made earlier, not by this
//! program: their formats have not changed). Files land in
//! `fuzz/seeds/<target>/`; each is what the target's decoder reads (for
//! `node_record`, `receipt` and `packet`, the body after the frame's version and tag
//! bytes, which the target adds). Keys are fresh each run, so the files change
//! every time; run it when a format changes, and commit the result.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use hermes::config::Config;
use hermes::crypto::seal::{self, Sealed};
use hermes::crypto::{Identity, SignedRecord};
use hermes::routing::accept::{check_letter, open_packet, Header};
use hermes::wire::link::{FloodPacket, Gossip, LinkBody, LinkFrame, Receipt, MAX_HOPS};
use hermes::wire::message::{seal_aad, Letter, LETTER_VERSION};
use hermes::wire::MessageId;

include!("../fuzz_targets/packet_node.rs");
include!("../fuzz_targets/onion_node.rs");

/// The clock the `node_record`, `letter` and `packet` targets check against.
const NOW: u64 = 1_800_000_000;
/// A week: the default time to live.
const WEEK: u64 = 7 * 86_400;

type Seeds = Vec<(&'static str, Vec<u8>)>;
/// A target and the maker of its seeds.
type Maker = (&'static str, fn() -> Seeds);

fn dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a literal socket address")
}

/// The bytes after a link frame's version and variant tag.
fn body_bytes(body: LinkBody) -> Vec<u8> {
    let bytes = LinkFrame::new(body).encode().expect("seed frame encodes");
    bytes[2..].to_vec()
}

fn node_record() -> Seeds {
    let id = Identity::generate();
    let rec = |listen: &str, relay: bool, time: u64| {
        let r = SignedRecord::sign(&id, addr(listen), relay, time);
        assert_eq!(r.verify(NOW).is_ok(), time <= NOW, "record seed");
        body_bytes(LinkBody::Record(r))
    };
    vec![
        ("v4_relay", rec("127.0.0.2:58008", true, NOW)),
        (
            "v6_no_relay",
            rec("[2001:db8::7]:4000", false, NOW - 86_400),
        ),
        ("from_the_future", rec("10.1.2.3:58008", true, NOW + 3_600)),
    ]
}

fn receipt() -> Seeds {
    let bob = Identity::generate();
    let mut relayed = Receipt::sign(&bob, MessageId([7; 16]), NOW + 604_800, None);
    relayed.hops_left = 0;
    vec![
        (
            "fresh",
            body_bytes(LinkBody::Receipt(Receipt::sign(
                &bob,
                MessageId([1; 16]),
                NOW, None,
            ))),
        ),
        ("last_hop", body_bytes(LinkBody::Receipt(relayed))),
        (
            "with_token",
            body_bytes(LinkBody::Receipt(Receipt::sign(
                &bob,
                MessageId::random(),
                NOW + WEEK,
                Some([0x42; 32]),
            ))),
        ),
        (
            "max_hops_no_expiry",
            body_bytes(LinkBody::Receipt(Receipt {
                hops_left: MAX_HOPS,
                ..Receipt::sign(&bob, MessageId::random(), 0, None)
            })),
        ),
    ]
}

fn letter_to(from: &Identity, to: &Identity, text: &str, ipv6: bool) -> Letter {
    let listen = if ipv6 {
        "[::1]:58008"
    } else {
        "127.0.0.2:58008"
    };
    let id = MessageId::random();
    Letter {
        version: LETTER_VERSION,
        id,
        recipient: to.address(),
        sender: SignedRecord::sign(from, addr(listen), true, NOW),
        sent_ms: NOW * 1000 - 1_500,
        expires_at: NOW + WEEK,
        text: text.to_string(),
        receipt_token: Some(from.receipt_token(&id.0, &to.address(), NOW + WEEK)),
    }
}

fn letter() -> Seeds {
    let alice = Identity::generate();
    let bob = Identity::generate();
    // Each seed passes the recipient's checks, so the target reaches them.
    let enc = |l: Letter| {
        let header = Header {
            id: l.id,
            recipient: l.recipient,
            expires_at: l.expires_at,
        };
        let sealed = Sealed {
            sender_kem: l.sender.record.kem_key,
            enc: [0; 32],
            ciphertext: Vec::new(),
        };
        if let Err(e) = check_letter(&l, header, &sealed, NOW * 1000, 30 * 86_400) {
            panic!("letter seed refused: {e}");
        }
        l.encode().expect("seed letter encodes")
    };
    vec![
        ("hello", enc(letter_to(&alice, &bob, "hello bob", false))),
        ("empty_v6", enc(letter_to(&alice, &bob, "", true))),
        (
            "unicode_lines",
            enc(letter_to(&alice, &bob, "é\n\tdeux lignes ✓", false)),
        ),
    ]
}

fn link_frame() -> Seeds {
    let alice = Identity::generate();
    let bob = Identity::generate();
    let rec = |id: &Identity, listen: &str| SignedRecord::sign(id, addr(listen), true, NOW);
    let letter = letter_to(&alice, &bob, "hello bob", false);
    let packet = packet_of(&alice, &bob, &letter);
    let two = vec![rec(&alice, "127.0.0.2:58008"), rec(&bob, "[::1]:4000")];
    let frame = |b: LinkBody| LinkFrame::new(b).encode().expect("seed frame encodes");
    vec![
        (
            "record",
            frame(LinkBody::Record(rec(&alice, "127.0.0.2:58008"))),
        ),
        ("packet", frame(LinkBody::Packet(packet))),
        (
            "receipt",
            frame(LinkBody::Receipt(Receipt::sign(
                &bob,
                letter.id,
                letter.expires_at, None,
            ))),
        ),
        ("ping", frame(LinkBody::Ping(7))),
        ("pong", frame(LinkBody::Pong(u64::MAX))),
        ("leaving", frame(LinkBody::Leaving(two.clone()))),
        ("records", frame(LinkBody::Records(two[..1].to_vec()))),
        (
            "gossip",
            frame(LinkBody::Gossip(Gossip {
                neighbours: vec![alice.address(), bob.address()],
                records: two[1..].to_vec(),
            })),
        ),
        ("full", frame(LinkBody::Full(two))),
    ]
}

/// A packet carrying `letter`, sealed by `from` to `to`.
fn packet_of(from: &Identity, to: &Identity, letter: &Letter) -> FloodPacket {
    let aad = seal_aad(&letter.id, &to.address(), letter.expires_at);
    let plain = letter.encode().expect("seed letter encodes");
    let sealed = seal::seal(from, &to.kem_public(), &aad, &plain).expect("seal");
    FloodPacket {
        id: letter.id,
        attempt: 1,
        hops_left: MAX_HOPS,
        recipient: to.address(),
        expires_at: letter.expires_at,
        sealed,
    }
}

fn packet() -> Seeds {
    let me = packet_node();
    let alice = Identity::generate();
    let mut seeds = Vec::new();
    for (name, text) in [("hello", "hello"), ("empty", "")] {
        let p = packet_of(&alice, &me, &letter_to(&alice, &me, text, false));
        let header = Header {
            id: p.id,
            recipient: p.recipient,
            expires_at: p.expires_at,
        };
        if let Err(e) = open_packet(&me, header, &p.sealed, NOW * 1000, 30 * 86_400) {
            panic!("packet seed refused: {e}");
        }
        seeds.push((name, body_bytes(LinkBody::Packet(p))));
    }
    // Sealed to someone else, but naming this node: it must not open.
    let other = Identity::generate();
    let mut p = packet_of(&alice, &other, &letter_to(&alice, &other, "hi", true));
    p.recipient = me.address();
    p.hops_left = 0;
    seeds.push(("not_for_me", body_bytes(LinkBody::Packet(p))));
    seeds
}

fn config() -> Seeds {
    // The shipped file without its comments (its keys are the defaults).
    let shipped: String = include_str!("../../config/node.toml")
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    let small = "[node]\nlisten = \"127.0.0.2\"\ndata_dir = \"d\"\n\
                 [network]\nbootstrap = [\"127.0.0.3\", \"[::1]:4000\"]\n";
    let every = "[node]\nlisten = \"[::]:4000\"\ndata_dir = \"~/h\"\nadvertise = \"192.0.2.1\"\n\
                 relay = false\n\
                 [network]\nbootstrap = [\"10.0.0.1:1\"]\nmin_neighbours = 0\nmax_neighbours = 64\n\
                 [routing]\nmode = \"flood\"\nhops = 8\nttl = \"1h 30m\"\nshards = 1\n\
                 shards_needed = 1\nretry_max = \"2s\"\n\
                 [client]\nsocket = \"/tmp/h.sock\"\nlegacy_port = 4001\n\
                 [log]\nlevel = \"trace\"\nformat = \"json\"\n\
                 [limits]\npackets_per_sec = 1\npacket_burst = 10000000\nbytes_per_sec = 1024\n\
                 byte_burst = 65535\nnew_entries_per_min = 1\ngossip_records_per_min = 1000000\n\
                 max_ttl = \"2h\"\nhandshakes_per_ip = 1\nhandshakes_total = 4096\nbackoff = \"7d\"\n";
    let seeds = vec![
        ("shipped", shipped.as_str()),
        ("empty", ""),
        ("small", small),
        ("every_key", every),
    ];
    for (name, text) in &seeds {
        if let Err(e) = Config::from_toml(text, Path::new("/etc/hermes/node.toml")) {
            panic!("config seed {name} is refused: {e}");
        }
    }
    seeds
        .into_iter()
        .map(|(n, t)| (n, t.as_bytes().to_vec()))
        .collect()
}

/// Real onion packets through the `onion_packet` target's node, each as it
/// arrives there: as the first relay, as the recipient after two relays, as
/// the origin of a reply (and the reply block itself); each peels with its key.
fn onion_packet() -> Seeds {
    use hermes::crypto::sphinx::{self, NodeHop, OnionFormat, Packet, Peeled, Sphinx};
    use hermes::crypto::Address;
    let me = NodeHop {
        id: Address(ONION_NODE_ID),
        key: sphinx::public_key(&ONION_NODE_KEY),
    };
    let other = |n: u8| {
        let (secret, key) = sphinx::generate_key();
        let hop = NodeHop {
            id: Address([n; 32]),
            key,
        };
        (hop, secret)
    };
    // Peels `p` at each of `through`, in order.
    let arrive = |mut p: Packet, through: &[&[u8; 32]]| {
        for key in through {
            match Sphinx.peel(&p, key) {
                Ok(Peeled::Forward { packet, .. }) => p = packet,
                other => panic!("seed relay: {other:?}"),
            }
        }
        p.into_bytes()
    };
    let (r1, k1) = other(1);
    let (r2, k2) = other(2);
    let (r5, k5) = other(5);
    let first = Sphinx
        .wrap(&[me, r2], &other(9).0, b"through the first relay")
        .expect("wrap");
    let last = Sphinx
        .wrap(&[r1, r2], &me, b"hello recipient")
        .expect("wrap");
    let (block, _) = Sphinx.reply_block(&[r5], &me).expect("reply block");
    let (_, reply) = Sphinx.use_reply_block(&block, b"receipt").expect("use");
    let seeds = vec![
        ("first_relay", first.into_bytes()),
        ("recipient_after_two_relays", arrive(last, &[&k1, &k2])),
        ("reply_after_one_relay", arrive(reply, &[&k5])),
        ("direct", Sphinx.wrap(&[], &me, b"").expect("wrap").into_bytes()),
    ];
    for (name, bytes) in &seeds {
        let p = Packet::from_bytes(bytes).expect("packet size");
        if let Err(e) = Sphinx.peel(&p, &ONION_NODE_KEY) {
            panic!("onion seed {name} does not peel: {e}");
        }
    }
    let mut seeds = seeds;
    seeds.push(("reply_block", block.as_bytes().to_vec()));
    seeds
}

fn main() {
    let all: [Maker; 7] = [
        ("node_record", node_record),
        ("receipt", receipt),
        ("config", config),
        ("letter", letter),
        ("link_frame", link_frame),
        ("packet", packet),
        ("onion_packet", onion_packet),
    ];
    let wanted: Vec<String> = std::env::args().skip(1).collect();
    for (target, make) in all {
        if !wanted.is_empty() && !wanted.iter().any(|w| w == target) {
            continue;
        }
        let d = dir(target);
        fs::create_dir_all(&d).expect("create the seed folder");
        for (name, bytes) in make() {
            fs::write(d.join(name), &bytes).expect("write a seed");
            println!("{target}/{name}: {} bytes", bytes.len());
        }
    }
}
