//! Every Noise transport message on a link has one size (a cell), whatever it
//! carries: a capture of a link after the handshake shows one length only.
//!
//! `link_capture_shows_one_message_size` (flood mode) and `..._in_onion_mode`
//! (the default): node A (`.2`; `.4`) bootstraps to a TCP proxy (`.10`;
//! `.11`) in this test that forwards both ways to node B (`.3`; `.5`) and
//! parses the 2-byte length prefixes of both byte streams. While the nodes
//! exchange records, gossip, pings and pongs, A probes B through the proxy
//! and pushes it a small and a largest message, with their receipts coming
//! back, every length after the three handshake messages must be the same.
//!
//! `frames_packed_into_one_cell_are_each_taken`: a peer that packs three
//! pings into one cell gets three pongs, in order; a cell holding a ping and
//! then bytes that are no frame costs the link for a bad frame (so the
//! second segment was read as a frame of its own).
//!
//! `malformed_cells_cost_the_link`: a peer sending a frame not in cells, a
//! cell with non-zero padding, a short cell that says "more", or a frame
//! longer than the limit is cut off with a "bad cell" reason, and the node
//! goes on serving others.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::hostile::HostilePeer;
use common::*;
use hermes::wire::link::{LinkBody, LinkFrame};

const N: u8 = 123;
/// The proxy's host in `127.0.N.x`.
const PROXY_HOST: u8 = 10;
/// The cell size the protocol promises (`wire::cell::CELL_MESSAGE`), written
/// out so that this test also builds against a node without cells.
const CELL_MESSAGE: usize = 4_128;
/// The largest message text (`wire::message::MAX_TEXT_BYTES`).
const BIG_TEXT: usize = 60_000;
/// Messages each way after the handshake before the capture is judged: the
/// record, gossip, several pings and pongs, packets and receipts.
const ENOUGH: usize = 10;
/// How long the capture may take to hold [`ENOUGH`] messages each way
/// (pings go every 5 s).
const CAPTURE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a hostile link may stay open after its bad cell.
const CUT_OFF: Duration = Duration::from_secs(30);

/// The lengths seen on one proxied connection, each way.
#[derive(Default)]
struct Capture {
    /// Dialler to listener: Noise messages 1 and 3 of the handshake first.
    up: Vec<usize>,
    /// Listener to dialler: Noise message 2 first.
    down: Vec<usize>,
    up_bytes: usize,
}

impl Capture {
    /// Lengths after the handshake, both ways.
    fn after_handshake(&self) -> impl Iterator<Item = usize> + '_ {
        self.up
            .iter()
            .skip(2)
            .chain(self.down.iter().skip(1))
            .copied()
    }
}

/// Reads 2-byte big-endian length prefixes out of a byte stream.
#[derive(Default)]
struct Prefixes {
    header: Vec<u8>,
    /// Bytes of the current message still to skip.
    left: usize,
}

impl Prefixes {
    fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<usize>) {
        while !bytes.is_empty() {
            if self.left > 0 {
                let skip = self.left.min(bytes.len());
                self.left -= skip;
                bytes = &bytes[skip..];
                continue;
            }
            self.header.push(bytes[0]);
            bytes = &bytes[1..];
            if self.header.len() == 2 {
                let len = usize::from(u16::from_be_bytes([self.header[0], self.header[1]]));
                self.header.clear();
                out.push(len);
                self.left = len;
            }
        }
    }
}

/// A TCP proxy on `listen` forwarding every connection to `to`, recording
/// the length prefixes both ways. Its threads end with their connections.
struct Proxy {
    captures: Arc<Mutex<Vec<Arc<Mutex<Capture>>>>>,
}

impl Proxy {
    fn start(listen: SocketAddr, to: SocketAddr) -> Proxy {
        let listener = TcpListener::bind(listen).unwrap_or_else(|e| panic!("bind {listen}: {e}"));
        let captures: Arc<Mutex<Vec<Arc<Mutex<Capture>>>>> = Arc::default();
        let all = captures.clone();
        thread::spawn(move || {
            for inbound in listener.incoming() {
                let Ok(inbound) = inbound else { continue };
                let Ok(outbound) = TcpStream::connect(to) else {
                    continue;
                };
                let capture = Arc::new(Mutex::new(Capture::default()));
                all.lock().expect("captures").push(capture.clone());
                let (in2, out2) = (
                    inbound.try_clone().expect("clone"),
                    outbound.try_clone().expect("clone"),
                );
                let up = capture.clone();
                thread::spawn(move || forward(inbound, outbound, up, true));
                thread::spawn(move || forward(out2, in2, capture, false));
            }
        });
        Proxy { captures }
    }

    /// Every length after the handshakes, with how often it was seen.
    fn lengths(&self) -> BTreeMap<usize, usize> {
        let mut seen = BTreeMap::new();
        for c in self.captures.lock().expect("captures").iter() {
            for len in c.lock().expect("capture").after_handshake() {
                *seen.entry(len).or_insert(0) += 1;
            }
        }
        seen
    }

    /// True once some connection carried `enough` messages each way after
    /// its handshake and `up_bytes` bytes from the dialler.
    fn busy(&self, enough: usize, up_bytes: usize) -> bool {
        self.captures.lock().expect("captures").iter().any(|c| {
            let c = c.lock().expect("capture");
            // Handshake messages: 2 up, 1 down.
            c.up.len() >= enough + 2 && c.down.len() > enough && c.up_bytes >= up_bytes
        })
    }

    fn connections(&self) -> usize {
        self.captures.lock().expect("captures").len()
    }
}

fn forward(mut from: TcpStream, mut to: TcpStream, capture: Arc<Mutex<Capture>>, up: bool) {
    let mut parser = Prefixes::default();
    let mut buf = vec![0u8; 65_536];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        {
            let mut c = capture.lock().expect("capture");
            if up {
                c.up_bytes += n;
                parser.feed(&buf[..n], &mut c.up);
            } else {
                parser.feed(&buf[..n], &mut c.down);
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

#[test]
fn link_capture_shows_one_message_size() {
    capture_link(Some("flood"), 2, 3, PROXY_HOST);
}

#[test]
fn link_capture_shows_one_message_size_in_onion_mode() {
    capture_link(None, 4, 5, PROXY_HOST + 1);
}

/// Node A (`a_host`) bootstraps to the proxy (`proxy_host`) in front of node
/// B (`b_host`), both in `mode` (None: the default, onion), pushes B a small
/// and a largest message through it, and the capture is judged.
fn capture_link(mode: Option<&'static str>, a_host: u8, b_host: u8, proxy_host: u8) {
    let b = Node::start(
        N,
        b_host,
        NodeOpts {
            routing_mode: mode,
            ..NodeOpts::default()
        },
    );
    let proxy_addr = listen_addr(N, proxy_host);
    let proxy = Proxy::start(
        proxy_addr.parse().expect("proxy address"),
        b.listen().parse().expect("B's address"),
    );
    let a = Node::start(
        N,
        a_host,
        NodeOpts {
            bootstrap: vec![proxy_addr.clone()],
            routing_mode: mode,
            ..NodeOpts::default()
        },
    );
    wait_linked(&a, &b);

    // Through the proxy: the probe of `--to IP:PORT`, the packets, the receipts.
    let small = format!("small {}", random_hex(8));
    a.push(&proxy_addr, &small);
    let got = b.pull_until(DELIVERY_TIMEOUT, "the small message", |l| !l.is_empty());
    assert_eq!(got, vec![pull_line(&a.ip(), &small)]);
    let big: String = (0..BIG_TEXT)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    a.push(&proxy_addr, &big);
    let got = b.pull_until(DELIVERY_TIMEOUT, "the largest message", |l| !l.is_empty());
    assert_eq!(got, vec![pull_line(&a.ip(), &big)]);

    wait_for(
        CAPTURE_TIMEOUT,
        format!("a proxied link with {ENOUGH} messages each way and the largest message on it"),
        &[&a, &b],
        || proxy.busy(ENOUGH, BIG_TEXT),
    );
    let lengths = proxy.lengths();
    eprintln!(
        "mode {}: {} proxied connections; message lengths after the handshake (length: count): \
         {lengths:?}",
        mode.unwrap_or("onion (default)"),
        proxy.connections()
    );
    assert_eq!(
        lengths.keys().copied().collect::<Vec<_>>(),
        vec![CELL_MESSAGE],
        "every Noise message after the handshake must be one {CELL_MESSAGE}-byte cell; \
         seen (length: count): {lengths:?}"
    );
}

/// One peer per malformed cell; each must be cut with a "bad cell" reason.
#[test]
fn malformed_cells_cost_the_link() {
    // Hosts .20 (the node) and .30-.39 (the hostile peers' claimed listen
    // addresses) of N, apart from the other tests' .2-.5, .10 and .11.
    const NODE: u8 = 20;
    let node = Node::start(N, NODE, NodeOpts::default());
    let to: SocketAddr = node.listen().parse().expect("node address");
    let cell = |header: u16, fill: &[u8]| {
        let mut c = vec![0u8; CELL_MESSAGE - 16];
        c[..2].copy_from_slice(&header.to_be_bytes());
        c[2..2 + fill.len()].copy_from_slice(fill);
        c
    };
    let ping = LinkFrame::new(LinkBody::Ping(7)).encode().expect("a ping");
    let mut padded = cell(ping.len() as u16, &ping);
    padded[CELL_MESSAGE - 17] = 1;
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        (
            "a valid frame in a Noise message of its own length",
            vec![ping.clone()],
        ),
        ("a cell with non-zero padding", vec![padded]),
        (
            "a short cell that says the frame goes on",
            vec![cell(0x8000 | ping.len() as u16, &ping)],
        ),
        ("a cell with no frame bytes", vec![cell(0, &[])]),
        (
            "a frame of 16 full cells (over 61,650 bytes)",
            vec![cell(0x8000 | 4_110, &[1; 4_110]); 16],
        ),
    ];
    for (i, (what, messages)) in cases.into_iter().enumerate() {
        let listen = listen_addr(N, 30 + i as u8).parse().expect("an address");
        let mut h = HostilePeer::dial(to, listen);
        for m in &messages {
            if !h.send_message(m) {
                break;
            }
        }
        assert!(
            h.closed_within(CUT_OFF),
            "{what}: the link must be cut{}",
            node.describe_for_failure()
        );
        // The log is written asynchronously: wait for the line.
        let cut_line = || {
            node.log()
                .lines()
                .find(|l| l.contains("peer cut off") && l.contains(&listen.to_string()))
                .map(str::to_owned)
        };
        let line = wait_for_value(
            CUT_OFF,
            format!("{what}: the node's \"peer cut off\" line"),
            &[&node],
            cut_line,
        );
        assert!(
            line.contains("bad cell"),
            "{what}: cut for a bad cell: {line}"
        );
    }
    // The node still takes an honest peer.
    let mut h = HostilePeer::dial(to, listen_addr(N, 39).parse().expect("an address"));
    assert!(h.send(LinkBody::Ping(9)));
    assert_eq!(
        h.recv_until(CUT_OFF, |b| match b {
            LinkBody::Pong(9) => Some(()),
            _ => None,
        }),
        Some(()),
        "a pong after all that{}",
        node.describe_for_failure()
    );
}

#[test]
fn frames_packed_into_one_cell_are_each_taken() {
    // Hosts .40 (the node) and .41-.42 (the hostile peers' claimed listen
    // addresses) of N, apart from the other tests'.
    let node = Node::start(N, 40, NodeOpts::default());
    let to: SocketAddr = node.listen().parse().expect("node address");
    let ping = |n: u64| LinkFrame::new(LinkBody::Ping(n)).encode().expect("a ping");
    let mut h = HostilePeer::dial(to, listen_addr(N, 41).parse().expect("an address"));
    assert!(h.send_packed(&[ping(11), ping(12), ping(13)]));
    let mut pongs = Vec::new();
    let got = h.recv_until(CUT_OFF, |b| {
        if let LinkBody::Pong(n) = b {
            pongs.push(*n);
        }
        (pongs.len() == 3).then_some(())
    });
    assert_eq!(got, Some(()), "three pongs{}", node.describe_for_failure());
    assert_eq!(pongs, vec![11, 12, 13]);

    let listen: SocketAddr = listen_addr(N, 42).parse().expect("an address");
    let mut h = HostilePeer::dial(to, listen);
    // A frame of a version no node speaks, after a good ping, in one cell.
    assert!(h.send_packed(&[ping(14), vec![0xff, 1, 2]]));
    assert!(
        h.closed_within(CUT_OFF),
        "the link must be cut{}",
        node.describe_for_failure()
    );
    let line = wait_for_value(
        CUT_OFF,
        "the node's \"peer cut off\" line".to_string(),
        &[&node],
        || {
            node.log()
                .lines()
                .find(|l| l.contains("peer cut off") && l.contains(&listen.to_string()))
                .map(str::to_owned)
        },
    );
    assert!(line.contains("bad frame"), "cut for a bad frame: {line}");
}

#[test]
fn no_frame_of_a_cell_is_taken_after_one_cut_the_link() {
    // Hosts .43 (the node) and .44-.45 (the hostile peers' claimed listen
    // addresses) of N, apart from the other tests'.
    let node = Node::start(N, 43, NodeOpts::default());
    let to: SocketAddr = node.listen().parse().expect("node address");
    let cut_lines = |listen: &SocketAddr| -> Vec<String> {
        node.log()
            .lines()
            .filter(|l| l.contains("peer cut off") && l.contains(&listen.to_string()))
            .map(str::to_owned)
            .collect()
    };
    let first: SocketAddr = listen_addr(N, 44).parse().expect("an address");
    let mut h = HostilePeer::dial(to, first);
    // Two frames of a version no node speaks in one cell: the first cuts
    // the link; were the second taken, it would cut it again.
    assert!(h.send_packed(&[vec![0xff, 1, 2], vec![0xfe, 3, 4]]));
    assert!(
        h.closed_within(CUT_OFF),
        "the link must be cut{}",
        node.describe_for_failure()
    );
    wait_for_value(
        CUT_OFF,
        "the first peer's cut".to_string(),
        &[&node],
        || cut_lines(&first).first().cloned(),
    );
    // Every line of the first cell's frames is logged before anything of a
    // later link: once the second peer's cut is in the log, all of the
    // first's are.
    let second: SocketAddr = listen_addr(N, 45).parse().expect("an address");
    let mut h2 = HostilePeer::dial(to, second);
    assert!(h2.send_packed(&[vec![0xff, 5, 6]]));
    wait_for_value(
        CUT_OFF,
        "the second peer's cut".to_string(),
        &[&node],
        || cut_lines(&second).first().cloned(),
    );
    let lines = cut_lines(&first);
    assert_eq!(
        lines.len(),
        1,
        "one cut for the first cell, not one per frame: {lines:?}"
    );
}
