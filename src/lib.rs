//! Hermes: a peer-to-peer messaging network.
//!
//! Layers, bottom up: [`crypto`] (keys, handshakes, sealing) and [`wire`]
//! (frames and limits) know nothing of the rest; [`overlay`] is the
//! membership policy (who links to whom) as pure logic; [`store`] is the only
//! code that touches sled; [`actors`] are the running node; [`node`] wires the
//! actors together and runs the daemon; [`client`] is what `hermes push/pull`
//! use to talk to it; [`service`] tells a service manager (systemd) how the
//! daemon is doing.

pub mod actors;
pub mod admission;
pub mod backoff;
pub mod client;
pub mod config;
pub mod crypto;
pub mod localuser;
pub mod logging;
pub mod node;
pub mod overlay;
pub mod routing;
pub mod service;
pub mod store;
pub mod wire;
pub mod workers;
