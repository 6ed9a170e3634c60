//! A relay can neither read nor store what it carries: after relaying messages
//! `.2 -> .3 -> .4`, nothing under the relay's data_dir and nothing in its log contains
//! the plaintext. (And no node logs message text at all.)

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display())) {
        let entry = entry.unwrap();
        let ft = entry.file_type().unwrap();
        if ft.is_dir() {
            files_under(&entry.path(), out);
        } else if ft.is_file() {
            out.push(entry.path());
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The files (under `dir`, plus `extra`) whose bytes contain any of `needles`.
fn files_containing(dir: &Path, extra: &[PathBuf], needles: &[String]) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    files_under(dir, &mut files);
    files.extend_from_slice(extra);
    let mut hits = Vec::new();
    for f in files {
        let bytes = fs::read(&f).unwrap_or_default();
        for n in needles {
            if contains(&bytes, n.as_bytes()) {
                hits.push((f.clone(), n.clone()));
            }
        }
    }
    hits
}

#[test]
fn relay_never_stores_or_logs_plaintext() {
    const N: u8 = 50;
    let mut nodes = line(N, 3);
    let secrets: Vec<String> = (0..5).map(|_| random_hex(40)).collect();

    // .2 and .4 must not be neighbours, or the relay may carry nothing and the test
    // would prove nothing.
    assert!(
        !nodes[0].neighbour_listens().contains(&nodes[2].listen()),
        "the line must not have a direct .2-.4 link: {}",
        nodes[0].status()
    );

    for s in &secrets {
        nodes[0].push(&ip(N, 4), s);
    }
    let expected: Vec<String> = secrets.iter().map(|s| pull_line(&ip(N, 2), s)).collect();
    let got = nodes[2].pull_until(DELIVERY_TIMEOUT, "all 5 messages at .4", |l| {
        l.len() >= secrets.len()
    });
    let mut got_sorted = got.clone();
    got_sorted.sort();
    let mut exp_sorted = expected.clone();
    exp_sorted.sort();
    // This is what makes the scan below meaningful: the plaintext does come out at .4.
    assert_eq!(
        got_sorted, exp_sorted,
        "the recipient must pull exactly the 5 secrets"
    );

    let relay_status = nodes[1].status();
    assert!(
        relay_status["counters"]["relayed"].as_u64().unwrap_or(0) >= 1,
        "the relay .3 should have relayed the messages (counters.relayed >= 1): {relay_status}"
    );

    let st = nodes[1].term(Duration::from_secs(10));
    eprintln!("relay exited with {st}");

    let hits = files_containing(&nodes[1].data_dir(), &[nodes[1].log_path()], &secrets);
    assert!(
        hits.is_empty(),
        "the relay's data_dir or log contains message plaintext: {:?}",
        hits.iter()
            .map(|(f, s)| format!("{} contains {s}", f.display()))
            .collect::<Vec<_>>()
    );

    // Issue #2 item 10: no message text in any node's log.
    for node in [&nodes[0], &nodes[2]] {
        let log = node.log();
        for s in &secrets {
            assert!(
                !log.contains(s.as_str()),
                "the log of {} contains message text {s}",
                node.listen()
            );
        }
    }
}
