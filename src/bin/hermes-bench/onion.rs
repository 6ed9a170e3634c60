//! The onion rows (issue 9): daemons in `routing.mode = "onion"`,
//! `routing.hops = 3`, next to the Sphinx primitives measured in the same run
//! ([`crate::bounds::OnionBounds`]).

use crate::bounds::{Bounds, ONION_RELAYS};
use crate::report::Row;

/// The onion bounds as rows (printed with the other bounds).
pub fn bound_rows(b: &Bounds, ncpu: usize) -> Vec<Row> {
    let o = &b.onion;
    let prim = b.onion_primitives_us();
    vec![
        Row::new("bound_onion_wrap", Some(o.wrap_us), "µs").note(format!(
            "crypto::sphinx wrap of 1 KiB for {ONION_RELAYS} relays + the recipient (4,096-byte packet)"
        )),
        Row::new("bound_onion_peel", Some(o.peel_us), "µs")
            .note("one peel at a relay: replay tag, MAC, routing info, blinding, Lioness"),
        Row::new("bound_onion_peel_last", Some(o.peel_last_us), "µs")
            .note("the recipient's peel (the payload opened)"),
        Row::new("bound_onion_reply_block", Some(o.reply_block_us), "µs").note(format!(
            "one recoverable reply block for {ONION_RELAYS} relays + the origin"
        )),
        Row::new("bound_onion_use_reply", Some(o.use_reply_us), "µs")
            .note("a receipt packet made with a reply block (at the recipient)"),
        Row::new("bound_onion_reply_open", Some(o.reply_open_us), "µs")
            .note("the origin's peel of a reply + opening it with its recovery"),
        Row::new("bound_chacha20poly1305_4k", Some(o.aead_packet_us), "µs")
            .note("seal + open of 4,096 bytes, key set up once: a Noise hop of one onion packet"),
        Row::new("bound_replay_tag_insert", Some(o.tag_insert_us), "µs")
            .note("raw sled contains_key + compare_and_swap of a fresh 40-byte key, no flush (a relay's replay-tag check)"),
        Row::new("bound_loopback_rtt_4k_p50", Some(o.rtt_packet_p50_us), "µs")
            .note("4,096 bytes over loopback TCP, blocking, TCP_NODELAY"),
        Row::new("onion_relay_per_packet", Some(o.relay_packet_us()), "µs")
            .note("bound_onion_peel + bound_chacha20poly1305_4k + bound_replay_tag_insert"),
        Row::new("onion_relay_bound", Some(o.relay_bound_per_core()), "pkt/s/core")
            .note("1 core / onion_relay_per_packet"),
        Row::new("onion_primitives_per_msg", Some(prim), "µs").note(format!(
            "hpke seal + open + wrap + reply block + {} relay peels and tag inserts (going and back) + the recipient's peel + using the reply block + the origin's reply open + {} x chacha20poly1305 of 4 KiB + 2 x group-commit share",
            2 * ONION_RELAYS,
            2 * (ONION_RELAYS + 1)
        )),
        Row::new("onion_primitives_bound", Some(ncpu as f64 * 1e6 / prim), "msg/s")
            .note(format!("{ncpu} cores / onion_primitives_per_msg")),
    ]
}
