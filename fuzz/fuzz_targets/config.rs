//! The config parser on arbitrary UTF-8: `Config::from_toml` never panics,
//! and a config it accepts keeps to the limits it documents.
#![no_main]

use std::path::Path;

use hermes::config::{Config, MAX_BOOTSTRAP, MAX_SOCKET_PATH, MAX_TTL};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let Ok(c) = Config::from_toml(text, Path::new("/etc/hermes/node.toml")) else {
        return;
    };
    assert!(c.node.listen.port() != 0, "listen port 0 accepted");
    if let Some(a) = c.node.advertise {
        assert!(a.port() != 0 && !a.ip().is_unspecified(), "advertise {a}");
    }
    assert!(c.network.bootstrap.len() <= MAX_BOOTSTRAP);
    assert!(c.network.min_neighbours <= c.network.max_neighbours);
    assert!((1..=64).contains(&c.network.max_neighbours));
    assert!((1..=8).contains(&c.routing.hops));
    assert!(c.routing.ttl <= MAX_TTL && c.routing.ttl <= c.limits.max_ttl);
    assert!(c.limits.max_ttl <= MAX_TTL);
    assert!(c.routing.shards_needed >= 1 && c.routing.shards_needed <= c.routing.shards);
    assert!(c.client.socket.as_os_str().len() < MAX_SOCKET_PATH);
    assert!(c.limits.handshakes_per_ip <= c.limits.handshakes_total);
    assert!(c.limits.byte_burst >= 65_535);
});
