//! The Noise link on arbitrary bytes from the network.
//!
//! 1. The input, read as a sequence of 2-byte-length-prefixed messages (what a
//!    dialling peer sends), drives a real responder handshake; then the same
//!    bytes drive a real initiator handshake (what a dialled peer answers).
//!    Neither can complete without the peer's keys, so each must end in an
//!    error, never a panic or a hang.
//! 2. On an established link (one real handshake, made once), the input as a
//!    transport message must fail to decrypt (nobody can forge the tag), and
//!    the input as plaintext must encrypt and decrypt back to itself.
#![no_main]

use std::sync::{Mutex, OnceLock};

use hermes::crypto::noise::{handshake, Link, MAX_PLAINTEXT};
use hermes::crypto::Identity;
use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;
use tokio::runtime::Runtime;

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("tokio runtime")
    })
}

fn identity() -> &'static Identity {
    static ID: OnceLock<Identity> = OnceLock::new();
    ID.get_or_init(Identity::generate)
}

/// A real link pair: (initiator's link, responder's link).
fn links() -> &'static Mutex<(Link, Link)> {
    static LINKS: OnceLock<Mutex<(Link, Link)>> = OnceLock::new();
    LINKS.get_or_init(|| {
        runtime().block_on(async {
            let (mut a, mut b) = tokio::io::duplex(1 << 16);
            let other = Identity::generate();
            let (la, lb) = tokio::join!(
                handshake(&mut a, &other, true),
                handshake(&mut b, identity(), false)
            );
            Mutex::new((
                la.expect("initiator handshake"),
                lb.expect("responder handshake"),
            ))
        })
    })
}

/// Runs one handshake against a peer that sends `data` then closes its
/// writing side (keeping its reading side open, so our writes succeed).
async fn handshake_against(data: &[u8], initiator: bool) {
    // Large enough that neither side's writes ever wait for a reader.
    let (mut ours, mut peer) = tokio::io::duplex(data.len() + 4096);
    peer.write_all(data).await.expect("duplex write");
    peer.shutdown().await.expect("duplex shutdown");
    let r = handshake(&mut ours, identity(), initiator).await;
    assert!(
        r.is_err(),
        "{} handshake completed against fuzz bytes",
        if initiator { "initiator" } else { "responder" }
    );
    drop(peer);
}

fuzz_target!(|data: &[u8]| {
    runtime().block_on(async {
        handshake_against(data, false).await;
        handshake_against(data, true).await;
    });

    let mut guard = links().lock().unwrap_or_else(|p| p.into_inner());
    let (a, b) = &mut *guard;
    assert!(
        b.recv.decrypt(data).is_err(),
        "forged transport message accepted"
    );
    if data.len() <= MAX_PLAINTEXT {
        let c = a.send.encrypt(data).expect("encrypt");
        let p = b.recv.decrypt(&c).expect("decrypt own ciphertext");
        assert_eq!(p, data, "transport round trip changed the message");
    } else {
        assert!(
            a.send.encrypt(data).is_err(),
            "oversized plaintext encrypted"
        );
    }
});
