// Shared by `fuzz_targets/packet.rs` and `examples/seeds.rs` (with
// `include!`): the node the `packet` target plays, with fixed test keys, so
// that its seeds can be real packets sealed to it. These keys are public and
// used nowhere else.

/// `identity.key` of that node: Ed25519 seed, then X25519 secret.
const PACKET_NODE_KEY: [u8; 64] = {
    let mut k = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        k[i] = (i as u8).wrapping_mul(37).wrapping_add(11);
        i += 1;
    }
    k
};

/// Loads that node's identity (through `Identity::load_or_create`, from a
/// private temporary folder).
fn packet_node() -> hermes::crypto::Identity {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = std::env::temp_dir().join(format!("hermes-fuzz-packet-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary folder");
    let path = dir.join(hermes::crypto::identity::IDENTITY_FILE);
    let _ = std::fs::remove_file(&path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .expect("write the identity file");
    f.write_all(&PACKET_NODE_KEY)
        .expect("write the identity file");
    drop(f);
    let id = hermes::crypto::Identity::load_or_create(&dir).expect("load the fixed identity");
    let _ = std::fs::remove_dir_all(&dir);
    id
}
