//! A supervised actor that fails (by an error or a panic) comes back, and the daemon
//! keeps delivering and serving pulls. Uses the test-only hook
//! `hermes debug-fault --config PATH <ACTOR> <KIND>`, enabled by
//! `HERMES_FAULT_INJECTION=1` in the daemon's environment.

mod common;

use common::*;

/// Injects `actor`/`kind` into both nodes of a 2-node line, then shows a message still
/// goes end to end in both directions and pull works.
fn fault_then_deliver(n: u8, actor: &str, kind: &str) {
    let mut nodes = line_with(n, 2, |_, o| o.fault_injection = true);

    // Sanity: the line works before the fault.
    let before = format!("before {actor} {kind} {}", random_hex(8));
    nodes[0].push(&nodes[1].ip(), &before);
    assert_eq!(
        nodes[1].pull_until(DELIVERY_TIMEOUT, "the message before the fault", |l| !l
            .is_empty()),
        vec![pull_line(&nodes[0].ip(), &before)]
    );

    for node in &nodes {
        let out = node.cli("debug-fault", &[actor, kind]);
        assert_eq!(
            out.code,
            Some(0),
            "debug-fault {actor} {kind} on {} must exit 0: {out}",
            node.listen()
        );
    }
    for node in &mut nodes {
        node.assert_alive();
    }
    // The client socket may be briefly away while the listener restarts: wait until the
    // daemon answers again, then it must deliver.
    for node in &nodes {
        node.wait_ready();
    }

    for (from, to) in [(0, 1), (1, 0)] {
        let text = format!("after {actor} {kind} {}", random_hex(8));
        nodes[from].push(&nodes[to].ip(), &text);
        let got = nodes[to].pull_until(
            DELIVERY_TIMEOUT,
            &format!(
                "the message {} -> {} after `{actor} {kind}`",
                nodes[from].ip(),
                nodes[to].ip()
            ),
            |l| !l.is_empty(),
        );
        assert_eq!(
            got,
            vec![pull_line(&nodes[from].ip(), &text)],
            "after {actor} {kind}"
        );
    }
    assert_eq!(
        nodes[1].pull(),
        Vec::<String>::new(),
        "nothing more to pull"
    );
    for node in &mut nodes {
        node.assert_alive();
    }
}

macro_rules! fault_tests {
    ($($name:ident: $n:expr, $actor:expr, $kind:expr;)*) => {
        $(
            #[test]
            fn $name() {
                fault_then_deliver($n, $actor, $kind);
            }
        )*
    };
}

fault_tests! {
    router_panic: 60, "router", "panic";
    router_error: 61, "router", "error";
    neighbours_panic: 62, "neighbours", "panic";
    neighbours_error: 63, "neighbours", "error";
    inbox_panic: 64, "inbox", "panic";
    inbox_error: 65, "inbox", "error";
    listener_panic: 66, "listener", "panic";
    listener_error: 67, "listener", "error";
}

/// Without `HERMES_FAULT_INJECTION=1` the hook must not be able to hurt a daemon.
#[test]
fn debug_fault_refused_without_env() {
    const N: u8 = 68;
    let mut node = Node::start(N, 2, NodeOpts::default());
    let out = node.cli("debug-fault", &["router", "panic"]);
    assert_ne!(
        out.code,
        Some(0),
        "debug-fault must be refused unless HERMES_FAULT_INJECTION=1: {out}"
    );
    node.assert_alive();
    node.wait_ready();
}
