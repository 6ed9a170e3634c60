//! Onion routing policy without I/O: the pieces the Router drives in
//! `routing.mode = "onion"` (issue 9).
//!
//! - [`path`]: choosing relays (guards first, the rest afresh, avoiding
//!   recent paths), and the guard set's policy.
//! - [`fragments`]: splitting a sealed letter over several packets and
//!   rebuilding it, within bounds.
//! - [`replay`]: the replay tags seen per packet key, bounded.
//!
//! The packet format itself (wrap, peel, reply blocks) is in
//! [`crate::crypto::sphinx`], the rotating packet keys in
//! [`crate::crypto::keyring`]; docs/packet.md describes the whole.

pub mod fragments;
pub mod path;
pub mod replay;
