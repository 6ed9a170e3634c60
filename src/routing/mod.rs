//! Routing policy without I/O: what a node accepts, forwards and remembers.
//!
//! The Router actor does the I/O (links, the store, the thread pool for
//! sealing); the rules it applies live here as plain, unit-tested code:
//!
//! - [`accept`]: opening a packet addressed to this node, and the checks that
//!   decide whether its letter is accepted and how long its delivered mark is
//!   kept. Nothing a relay can change takes part in either decision.
//! - [`filter`]: the relays' duplicate suppression, in memory, short-lived and
//!   bounded, keyed on a digest of the sealed bytes so a forged copy can never
//!   suppress the genuine one.
//! - [`onion`]: onion paths, guards, fragments, replay tags and what a
//!   peeled packet comes to (issue 9).
//! - [`modes`]: how this node's own messages travel (`routing.mode`: flood
//!   or onion), behind one interface.
//! - [`policy`]: every routing decision as events in, actions out; the
//!   Router actor drives it and does the I/O. `sim` (tests) runs many
//!   policies over a lossy in-memory network in both modes, with real
//!   crypto, and checks that every message is delivered once and settled.

pub mod accept;
pub mod filter;
pub mod modes;
pub mod onion;
pub mod policy;
#[cfg(test)]
mod sim;

pub use accept::{open_packet, Accepted, RejectReason};
pub use filter::{CopyVerdict, FloodFilter, ReceiptVerdict};
