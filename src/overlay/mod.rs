//! The overlay: which nodes link to which, as policy without I/O.
//!
//! [`membership::Membership`] decides; [`book::AddressBook`] remembers. The
//! NeighbourManager actor drives them over real links and the store, and
//! [`sim`] drives thousands of them over an in-memory network to measure the
//! same code at scale. Nothing here does I/O or knows about actors.

pub mod bans;
pub mod book;
pub mod membership;
pub mod sim;
pub mod timing;

pub use bans::{BanList, MAX_BANS};
pub use book::{AddressBook, PeerEntry};
pub use membership::{
    Action, Direction, LinkId, Membership, MembershipConfig, MembershipStats, NeighbourInfo,
};
