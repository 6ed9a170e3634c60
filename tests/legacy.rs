//! The seed's text protocol on `[client] legacy_port` (127.0.0.1 only): one request per
//! connection, no newline, the client never closes its side; the daemon answers after
//! its first read and closes.

mod common;

use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Sends `req` like the seed's client (no newline, write side left open) and reads the
/// answer until the daemon closes the connection.
fn legacy(port: u16, req: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect 127.0.0.1:{port}: {e}"));
    s.write_all(req.as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let start = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => panic!(
                "reading the answer to {req:?}: {e} (so far {:?})",
                String::from_utf8_lossy(&answer)
            ),
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the daemon did not answer {req:?} and close within 10 s (so far {:?})",
            String::from_utf8_lossy(&answer)
        );
    }
    String::from_utf8(answer).expect("utf-8 answer")
}

fn lines(answer: &str) -> Vec<String> {
    answer
        .lines()
        .map(|l| l.trim_end_matches('\r').to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn legacy_push_and_pull() {
    const N: u8 = 70;
    let port = |host: u16| 40_000 + 10 * N as u16 + host;
    let nodes = line_with(N, 2, |i, o| o.legacy_port = Some(port(2 + i as u16)));
    let (pa, pb) = (port(2), port(3));

    // Only on 127.0.0.1: the same port on the node's own loopback address is closed.
    assert!(
        TcpStream::connect((nodes[0].ip().as_str(), pa)).is_err(),
        "the legacy port must listen on 127.0.0.1 only, but {}:{pa} accepts connections",
        nodes[0].ip()
    );

    assert_eq!(
        lines(&legacy(pb, "PULL")),
        vec!["SUCCESS 0"],
        "PULL with an empty inbox"
    );

    let answer = legacy(pa, &format!("PUSH IP:{} MSG:hi", ip(N, 3)));
    assert_eq!(lines(&answer), vec!["SUCCESS"], "answer to PUSH");

    let mut got = Vec::new();
    wait_for(
        DELIVERY_TIMEOUT,
        "the legacy PULL on .3 to return the message",
        &[&nodes[0], &nodes[1]],
        || {
            let l = lines(&legacy(pb, "PULL"));
            let first = l.first().cloned().unwrap_or_default();
            assert!(
                first.starts_with("SUCCESS "),
                "PULL must answer `SUCCESS <n>`: {l:?}"
            );
            if first == "SUCCESS 0" {
                assert_eq!(
                    l.len(),
                    1,
                    "`SUCCESS 0` must be followed by no lines: {l:?}"
                );
                return false;
            }
            got = l;
            true
        },
    );
    assert_eq!(
        got,
        vec!["SUCCESS 1".to_owned(), pull_line(&ip(N, 2), "hi")]
    );
    assert_eq!(
        lines(&legacy(pb, "PULL")),
        vec!["SUCCESS 0"],
        "the message was pulled once"
    );
    // The CLI sees the same inbox: nothing left.
    assert_eq!(nodes[1].pull(), Vec::<String>::new());
}
