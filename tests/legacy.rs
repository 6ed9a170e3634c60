//! The seed's text protocol on `[client] legacy_port` (127.0.0.1 only): one request per
//! connection, no newline, the client never closes its side; the daemon answers after
//! its first read and closes.

mod common;

use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
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

/// Base of the tests' legacy ports: below Linux's ephemeral range (32768 up),
/// so no outgoing connection of a test running beside can hold one on
/// 127.0.0.1 (one did: "cannot listen on legacy port 127.0.0.1:40702:
/// Address already in use").
const LEGACY_PORTS: u16 = 20_000;

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
    let port = |host: u16| LEGACY_PORTS + 10 * N as u16 + host;
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

    // An empty message is refused here too (issue 12, defect 8).
    let answer = legacy(pa, &format!("PUSH IP:{} MSG:", ip(N, 3)));
    assert_eq!(lines(&answer), vec!["FAIL"], "answer to an empty PUSH");

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

/// Issue 8, item 4: the legacy port serves only the daemon's own user, has its
/// own connection limit apart from the Unix socket, and answers FAIL to a PUSH
/// longer than its first read.
#[test]
fn legacy_port_serves_only_its_user_and_never_truncates() {
    const N: u8 = 73;
    let port = |host: u16| LEGACY_PORTS + 10 * N as u16 + host;
    let nodes = line_with(N, 2, |i, o| o.legacy_port = Some(port(2 + i as u16)));
    let (pa, pb) = (port(2), port(3));
    warm_up(&nodes[0], &nodes[1]);

    // A 10 MB PUSH: the seed's client sends it in one go; it must not be
    // delivered cut to the first read.
    let big = format!("PUSH IP:{} MSG:{}", ip(N, 3), "y".repeat(10 * 1024 * 1024));
    let mut s = TcpStream::connect(("127.0.0.1", pa)).expect("connect the legacy port");
    let writer = {
        let mut s = s.try_clone().expect("clone the stream");
        std::thread::spawn(move || {
            let _ = s.write_all(big.as_bytes());
        })
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let _ = s.shutdown(std::net::Shutdown::Both);
    let _ = writer.join();
    assert_eq!(
        String::from_utf8_lossy(&answer),
        "FAIL",
        "answer to a 10 MB PUSH"
    );

    // 70 idle legacy connections fill the legacy port's own limit; the Unix
    // socket still answers.
    let idle: Vec<TcpStream> = (0..70)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", pa)).ok())
        .collect();
    assert!(idle.len() >= 16, "opened {} idle connections", idle.len());
    let st = nodes[0].cli("status", &["--json"]);
    assert!(st.ok(), "status while the legacy port is full: {st}");
    let pushed = nodes[0].try_push(&nodes[1].ip(), "through the socket");
    assert!(pushed.ok(), "push while the legacy port is full: {pushed}");
    drop(idle);
    let got = nodes[1].pull_until(DELIVERY_TIMEOUT, "the socket push", |l| !l.is_empty());
    assert_eq!(got, vec![pull_line(&ip(N, 2), "through the socket")]);

    // Another uid gets nothing, and takes nothing from the owner's inbox.
    if !is_root() {
        eprintln!("SKIPPED the other-uid half: switching uid needs root");
        return;
    }
    nodes[0].push(&nodes[1].ip(), "for the owner only");
    wait_for(
        DELIVERY_TIMEOUT,
        "the message in .3's inbox",
        &[&nodes[1]],
        || nodes[1].status()["inbox"].as_u64() == Some(1),
    );
    for req in ["PULL", &format!("PUSH IP:{} MSG:forged", ip(N, 2))] {
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "exec 3<>/dev/tcp/127.0.0.1/{pb}; printf %s \"$0\" >&3; timeout 10 cat <&3"
            ))
            .arg(req)
            .uid(65534)
            .gid(65534)
            .output()
            .expect("run bash as nobody");
        let answer = String::from_utf8_lossy(&out.stdout);
        assert!(
            !answer.contains("SUCCESS") && !answer.contains("MSG:"),
            "another uid was answered {answer:?} to {req:?} (stderr {:?})",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        nodes[1].status()["inbox"].as_u64(),
        Some(1),
        "the owner's message is still there"
    );
    // Logs are written by a background thread: wait for the line.
    wait_for(LINK_TIMEOUT, "the refusal in the log", &[&nodes[1]], || {
        nodes[1]
            .log()
            .contains("legacy connection from another user")
    });
    let l = lines(&legacy(pb, "PULL"));
    assert_eq!(
        l,
        vec![
            "SUCCESS 1".to_owned(),
            pull_line(&ip(N, 2), "for the owner only")
        ]
    );
    let (q, f, d, _) = nodes[1].outbox();
    assert_eq!(q + f + d, 0, "nothing was pushed as .3 by another uid");
}
