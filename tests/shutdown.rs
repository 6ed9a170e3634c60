//! Graceful shutdown: SIGTERM/SIGINT leave the network, flush the store, exit 0; the
//! outbox survives a stop.

mod common;

use common::*;
use std::time::Duration;

#[test]
fn sigterm_exits_0_and_neighbour_forgets_it() {
    const N: u8 = 80;
    let mut nodes = line(N, 2);
    let gone = nodes[1].listen();

    let st = nodes[1].term(Duration::from_secs(10));
    assert_eq!(
        st.code(),
        Some(0),
        "SIGTERM must make the daemon exit 0 within 10 s, got {st}"
    );

    let a = &nodes[0];
    wait_for(
        Duration::from_secs(15),
        format!("{} to drop {gone} from its status neighbours", a.listen()),
        &[a, &nodes[1]],
        || {
            a.try_status()
                .map(|s| !neighbour_listens(&s).contains(&gone))
                .unwrap_or(false)
        },
    );
    nodes[0].assert_alive();
}

#[test]
fn sigint_exits_0() {
    const N: u8 = 82;
    let mut node = Node::start(N, 2, NodeOpts::default());
    let st = node.signal_and_wait(libc::SIGINT, Duration::from_secs(10));
    assert_eq!(
        st.code(),
        Some(0),
        "SIGINT must make the daemon exit 0 within 10 s, got {st}"
    );
}

#[test]
fn queued_message_survives_restart() {
    const N: u8 = 81;
    let mut nodes = line(N, 2);
    let to = ip(N, 3);
    let from = ip(N, 2);

    // One exchange so that .2 knows .3's record, then stop .3.
    warm_up(&nodes[0], &nodes[1]);
    let st = nodes[1].term(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "SIGTERM exit status of .3: {st}");

    // Push to the stopped node: it stays in .2's outbox.
    let text = format!("queued {}", random_hex(8));
    nodes[0].push(&to, &text);
    let (q, f, _, _) = nodes[0].outbox();
    assert!(
        q + f >= 1,
        "the message must be queued or in flight: {}",
        nodes[0].status()
    );

    let st = nodes[0].term(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "SIGTERM exit status of .2: {st}");
    nodes[0].restart();
    let status = nodes[0].status();
    let (q, f, _, _) = outbox_counts(&status);
    assert!(
        q + f >= 1,
        "after a stop and restart the message must still be in the outbox: {status}"
    );

    // And once the recipient is back, it is delivered, once.
    nodes[1].restart();
    let got = nodes[1].pull_until(Duration::from_secs(45), "the queued message at .3", |l| {
        !l.is_empty()
    });
    assert_eq!(got, vec![pull_line(&from, &text)]);
    let a = &nodes[0];
    wait_for(
        Duration::from_secs(30),
        "the receipt to settle .2's outbox",
        &[a, &nodes[1]],
        || {
            a.try_status()
                .map(|s| {
                    let (q, f, d, _) = outbox_counts(&s);
                    q == 0 && f == 0 && d >= 1
                })
                .unwrap_or(false)
        },
    );
    assert_eq!(nodes[1].pull(), Vec::<String>::new(), "delivered once");
}
