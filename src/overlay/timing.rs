//! The link timings the overlay depends on, in one place: the PeerSession
//! actor runs links with them, and the simulator ([`super::sim`]) models
//! links with the same values, so neither has to reach into the other.

use std::time::Duration;

/// A ping goes out this often on an idle link.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// A peer not heard from for this long is cut off.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Time to connect to a peer.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
