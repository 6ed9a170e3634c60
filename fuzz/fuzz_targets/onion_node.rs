// Shared by `fuzz_targets/onion_packet.rs` and `examples/seeds.rs` (with
// `include!`): the packet key of the node the `onion_packet` target plays,
// fixed so that its seeds can be real packets through it. This key is public
// and used nowhere else.

/// The node's packet (rotating X25519) secret key.
const ONION_NODE_KEY: [u8; 32] = {
    let mut k = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        k[i] = (i as u8).wrapping_mul(53).wrapping_add(29);
        i += 1;
    }
    k
};

/// The node's id on routes.
const ONION_NODE_ID: [u8; 32] = [0x0e; 32];
