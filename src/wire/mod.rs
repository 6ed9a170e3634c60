//! Frame types, their limits and their versions.
//!
//! Two protocols live here: [`link`], the frames nodes exchange inside a
//! Noise link (carried in fixed-size [`cell`]s, so that every Noise message
//! on a link has one length), and [`client`], the requests `hermes push/pull/status` send to
//! the local daemon over its Unix socket. Both are postcard with a version
//! byte on every frame. Postcard is not self-describing: enum variants are
//! only ever appended, never reordered. Every decoder checks the frame size
//! before it allocates and refuses trailing bytes.

pub mod cell;
pub mod client;
pub mod link;
pub mod message;
pub mod onion;

use std::fmt;

use serde::{Deserialize, Serialize};

/// A message's id: 16 random bytes chosen by its origin, kept across retries.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    pub fn random() -> MessageId {
        MessageId(rand::random())
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for MessageId {
    type Err = WireError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 16];
        hex::decode_to_slice(s, &mut out).map_err(|_| WireError::Malformed)?;
        Ok(MessageId(out))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("frame of {size} bytes is over the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("frame version {0} is not supported")]
    Version(u8),
    #[error("frame does not decode")]
    Malformed,
    #[error("frame has {0} bytes after its end")]
    Trailing(usize),
    #[error("frame breaks a limit: {0}")]
    Limit(&'static str),
}

/// Encodes `value` with postcard, refusing a result over `limit`. The size
/// is measured first (a pass that writes nothing), so an oversized value is
/// refused before anything is allocated, and the buffer is allocated once,
/// at its size, instead of growing as postcard writes into it.
pub(crate) fn encode_limited<T: Serialize>(value: &T, limit: usize) -> Result<Vec<u8>, WireError> {
    let size = postcard::experimental::serialized_size(value).map_err(|_| WireError::Malformed)?;
    if size > limit {
        return Err(WireError::TooLarge { size, limit });
    }
    postcard::to_extend(value, Vec::with_capacity(size)).map_err(|_| WireError::Malformed)
}

/// Decodes exactly one `T` from `bytes`, after checking the size limit.
pub(crate) fn decode_limited<'a, T: Deserialize<'a>>(
    bytes: &'a [u8],
    limit: usize,
) -> Result<T, WireError> {
    if bytes.len() > limit {
        return Err(WireError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|_| WireError::Malformed)?;
    if !rest.is_empty() {
        return Err(WireError::Trailing(rest.len()));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_is_postcard_in_one_allocation_of_its_size_and_refuses_before_it() {
        let value = (
            MessageId([7; 16]),
            serde_bytes::ByteBuf::from(vec![1u8; 1_000]),
            300u64,
        );
        let bytes = encode_limited(&value, 2_000).unwrap();
        assert_eq!(bytes, postcard::to_stdvec(&value).unwrap());
        assert_eq!(bytes.capacity(), bytes.len());
        match encode_limited(&value, bytes.len() - 1) {
            Err(WireError::TooLarge { size, limit }) => {
                assert_eq!((size, limit), (bytes.len(), bytes.len() - 1))
            }
            other => panic!("{other:?}"),
        }
    }
}
