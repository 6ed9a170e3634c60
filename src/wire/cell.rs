//! Cells: every Noise transport message on a link has one size.
//!
//! A [`LinkFrame`](super::link::LinkFrame) is not sent as a Noise message of
//! its own length (that would tell a pong from a gossip frame from an onion
//! packet by size alone). It is cut into *cells*: each cell's plaintext is
//! exactly [`CELL_PLAINTEXT`] bytes, so each Noise message is exactly
//! [`CELL_MESSAGE`] bytes with its tag, and each length prefix on the wire
//! says the same number. A cell is
//!
//! ```text
//! | header: u16 big-endian | frame bytes (len) | zero padding            |
//! |  bit 15: MORE          |                   | up to CELL_PLAINTEXT    |
//! |  bits 0-14: len        |                   |                         |
//! ```
//!
//! `len` (1 to [`CELL_PAYLOAD`]) is how many bytes of frame the cell carries;
//! `MORE` says the frame goes on in the next cell. A cell with `MORE` set is
//! full (`len` = [`CELL_PAYLOAD`]), the padding is all zero, and a frame is at
//! most [`MAX_CELLS_PER_FRAME`] cells ([`MAX_FRAME_BYTES`] bytes), checked
//! before anything is kept: so the encoding is canonical (one frame, one
//! sequence of cells) and what the decoder accepts is exactly what the
//! encoder makes. An onion frame (4,100 bytes) is one cell.
//!
//! The padding is checked although the peer's own AEAD already covers it (no
//! one on the path can change it): it keeps the bytes reserved, so that a
//! later version can give them a meaning without older nodes silently
//! ignoring it, and a peer cannot use them as a side channel without being
//! cut. The check is a scan of at most 4 KiB beside a ChaCha20 pass over the
//! same bytes.

use crate::crypto::noise::{MAX_NOISE_MESSAGE, TAG_LEN};

/// Bytes of cell header: the frame length and the `MORE` flag.
pub const CELL_HEADER: usize = 2;
/// Plaintext of every cell (header, frame bytes, padding).
pub const CELL_PLAINTEXT: usize = 4_112;
/// Most frame bytes one cell carries.
pub const CELL_PAYLOAD: usize = CELL_PLAINTEXT - CELL_HEADER;
/// Every Noise transport message on a link: one cell and its tag. This is the
/// value of every length prefix after the handshake.
pub const CELL_MESSAGE: usize = CELL_PLAINTEXT + TAG_LEN;
/// Bytes on the wire per cell, with its 2-byte length prefix.
pub const CELL_WIRE: usize = CELL_MESSAGE + 2;
/// Most cells one frame may take: as many as fit in the length of one
/// largest Noise message (65,535 bytes), so that a largest frame costs no
/// more of a byte budget than before (`limits.byte_burst` is at least that).
pub const MAX_CELLS_PER_FRAME: usize = MAX_NOISE_MESSAGE / CELL_MESSAGE;
/// Largest frame carried in cells.
pub const MAX_FRAME_BYTES: usize = MAX_CELLS_PER_FRAME * CELL_PAYLOAD;

/// The `MORE` flag in the header.
const MORE: u16 = 0x8000;

const _: () = assert!(CELL_PAYLOAD < MORE as usize);
const _: () = assert!(MAX_CELLS_PER_FRAME * CELL_MESSAGE <= MAX_NOISE_MESSAGE);
// An onion frame (version, tag, 2-byte length, 4,096 bytes) fits one cell.
const _: () = assert!(1 + 1 + 2 + crate::crypto::sphinx::PACKET_SIZE <= CELL_PAYLOAD);

/// One cell's plaintext.
pub type Cell = [u8; CELL_PLAINTEXT];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CellError {
    #[error("message of {0} bytes is not a cell ({CELL_MESSAGE} bytes)")]
    WrongSize(usize),
    #[error("cell carries no frame bytes")]
    Empty,
    #[error("cell header claims {0} bytes, over the {CELL_PAYLOAD} a cell holds")]
    Length(usize),
    #[error("cell of {0} bytes says the frame continues (only a full cell may)")]
    ShortContinued(usize),
    #[error("cell padding is not zero")]
    Padding,
    #[error("frame over {MAX_FRAME_BYTES} bytes ({MAX_CELLS_PER_FRAME} cells)")]
    TooLarge,
}

/// How many cells a frame of `len` bytes takes.
pub fn cells_for(len: usize) -> usize {
    len.div_ceil(CELL_PAYLOAD).max(1)
}

/// The Noise messages' bytes a frame of `len` bytes costs on a link (what a
/// byte budget counts: every cell's [`CELL_MESSAGE`]).
pub fn message_bytes(len: usize) -> usize {
    cells_for(len) * CELL_MESSAGE
}

/// Cuts one encoded frame (1 to [`MAX_FRAME_BYTES`] bytes) into cells, in
/// the order they must be sent.
pub fn split(frame: &[u8]) -> Result<impl Iterator<Item = Cell> + '_, CellError> {
    if frame.is_empty() {
        return Err(CellError::Empty);
    }
    if frame.len() > MAX_FRAME_BYTES {
        return Err(CellError::TooLarge);
    }
    let last = cells_for(frame.len()) - 1;
    Ok(frame
        .chunks(CELL_PAYLOAD)
        .enumerate()
        .map(move |(i, part)| {
            let mut cell = [0u8; CELL_PLAINTEXT];
            // A part is at most CELL_PAYLOAD (< 0x8000) bytes.
            let mut header = part.len() as u16;
            if i < last {
                header |= MORE;
            }
            cell[..CELL_HEADER].copy_from_slice(&header.to_be_bytes());
            cell[CELL_HEADER..CELL_HEADER + part.len()].copy_from_slice(part);
            cell
        }))
}

/// Rebuilds frames from the cells of one direction of a link, in order.
///
/// It holds at most [`MAX_FRAME_BYTES`] bytes. After any error the link is
/// to be closed (the stream of cells has no way to resynchronise).
#[derive(Debug, Default)]
pub struct Reassembler {
    partial: Vec<u8>,
}

impl Reassembler {
    pub fn new() -> Reassembler {
        Reassembler::default()
    }

    /// True while a frame has begun and not ended.
    pub fn in_frame(&self) -> bool {
        !self.partial.is_empty()
    }

    /// Takes the next cell's plaintext; returns a frame once its last cell
    /// is in.
    pub fn push(&mut self, cell: &[u8]) -> Result<Option<Vec<u8>>, CellError> {
        if cell.len() != CELL_PLAINTEXT {
            return Err(CellError::WrongSize(cell.len() + TAG_LEN));
        }
        let header = u16::from_be_bytes([cell[0], cell[1]]);
        let more = header & MORE != 0;
        let len = usize::from(header & !MORE);
        if len == 0 {
            return Err(CellError::Empty);
        }
        if len > CELL_PAYLOAD {
            return Err(CellError::Length(len));
        }
        if more && len != CELL_PAYLOAD {
            return Err(CellError::ShortContinued(len));
        }
        let body = &cell[CELL_HEADER..CELL_HEADER + len];
        // An OR over the whole padding, not `any`: it has no early exit, so
        // it runs as vector code (`any` went byte by byte, 5% of a relay's
        // CPU, over ~3 KiB of padding in every receipt's cell).
        if cell[CELL_HEADER + len..]
            .iter()
            .fold(0u8, |acc, &b| acc | b)
            != 0
        {
            return Err(CellError::Padding);
        }
        // Checked before the bytes are kept.
        if self.partial.len() + len > MAX_FRAME_BYTES {
            return Err(CellError::TooLarge);
        }
        if more {
            self.partial.extend_from_slice(body);
            return Ok(None);
        }
        if self.partial.is_empty() {
            return Ok(Some(body.to_vec()));
        }
        let mut frame = std::mem::take(&mut self.partial);
        frame.extend_from_slice(body);
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::sphinx::PACKET_SIZE;
    use crate::wire::link::{LinkBody, LinkFrame, OnionPacket};
    use proptest::prelude::*;

    fn rebuild(cells: impl Iterator<Item = Cell>) -> Result<Vec<Vec<u8>>, CellError> {
        let mut r = Reassembler::new();
        let mut out = Vec::new();
        for c in cells {
            if let Some(f) = r.push(&c)? {
                out.push(f);
            }
        }
        assert!(!r.in_frame(), "a frame left half built");
        Ok(out)
    }

    #[test]
    fn sizes_are_as_documented() {
        assert_eq!(CELL_MESSAGE, 4_128);
        assert_eq!(CELL_WIRE, 4_130);
        assert_eq!(MAX_CELLS_PER_FRAME, 15);
        assert_eq!(MAX_FRAME_BYTES, 61_650);
        assert_eq!(message_bytes(MAX_FRAME_BYTES), 61_920);
    }

    #[test]
    fn an_onion_frame_is_one_cell() {
        let frame = LinkFrame::new(LinkBody::Onion(OnionPacket(vec![7; PACKET_SIZE])))
            .encode()
            .unwrap();
        assert!(frame.len() <= CELL_PAYLOAD, "{} bytes", frame.len());
        assert_eq!(split(&frame).unwrap().count(), 1);
        assert_eq!(cells_for(frame.len()), 1);
    }

    #[test]
    fn boundaries_round_trip() {
        for len in [
            1,
            CELL_PAYLOAD - 1,
            CELL_PAYLOAD,
            CELL_PAYLOAD + 1,
            2 * CELL_PAYLOAD,
            MAX_FRAME_BYTES,
        ] {
            let frame: Vec<u8> = (0..len).map(|i| (i % 251) as u8 + 1).collect();
            let cells: Vec<Cell> = split(&frame).unwrap().collect();
            assert_eq!(cells.len(), cells_for(len), "len {len}");
            assert_eq!(rebuild(cells.into_iter()).unwrap(), vec![frame]);
        }
    }

    #[test]
    fn empty_and_oversized_frames_are_not_cut() {
        assert_eq!(split(&[]).err(), Some(CellError::Empty));
        let big = vec![1u8; MAX_FRAME_BYTES + 1];
        assert_eq!(split(&big).err(), Some(CellError::TooLarge));
    }

    #[test]
    fn malformed_cells_are_refused() {
        let one = split(&[9, 9, 9]).unwrap().next().unwrap();
        let mut r = Reassembler::new();
        assert_eq!(
            r.push(&one[..CELL_PLAINTEXT - 1]),
            Err(CellError::WrongSize(CELL_MESSAGE - 1))
        );
        let mut c = one;
        c[0] = 0;
        c[1] = 0;
        assert_eq!(Reassembler::new().push(&c), Err(CellError::Empty));
        let mut c = one;
        c[..2].copy_from_slice(&((CELL_PAYLOAD + 1) as u16).to_be_bytes());
        assert_eq!(
            Reassembler::new().push(&c),
            Err(CellError::Length(CELL_PAYLOAD + 1))
        );
        let mut c = one;
        c[..2].copy_from_slice(&(3u16 | MORE).to_be_bytes());
        assert_eq!(
            Reassembler::new().push(&c),
            Err(CellError::ShortContinued(3))
        );
        let mut c = one;
        c[CELL_PLAINTEXT - 1] = 1;
        assert_eq!(Reassembler::new().push(&c), Err(CellError::Padding));
        assert_eq!(Reassembler::new().push(&one), Ok(Some(vec![9, 9, 9])));
    }

    #[test]
    fn a_frame_past_the_limit_is_refused_before_it_is_kept() {
        let mut full = [1u8; CELL_PLAINTEXT];
        full[..2].copy_from_slice(&(CELL_PAYLOAD as u16 | MORE).to_be_bytes());
        let mut r = Reassembler::new();
        for _ in 0..MAX_CELLS_PER_FRAME {
            assert_eq!(r.push(&full), Ok(None));
        }
        assert_eq!(r.push(&full), Err(CellError::TooLarge));
        // The last cell of a largest frame still fits.
        let mut r = Reassembler::new();
        for _ in 0..MAX_CELLS_PER_FRAME - 1 {
            assert_eq!(r.push(&full), Ok(None));
        }
        let mut last = full;
        last[..2].copy_from_slice(&(CELL_PAYLOAD as u16).to_be_bytes());
        assert_eq!(
            r.push(&last).unwrap().map(|f| f.len()),
            Some(MAX_FRAME_BYTES)
        );
        let mut r = Reassembler::new();
        for _ in 0..MAX_CELLS_PER_FRAME {
            assert_eq!(r.push(&full), Ok(None));
        }
        let mut tail = [0u8; CELL_PLAINTEXT];
        tail[..2].copy_from_slice(&1u16.to_be_bytes());
        tail[2] = 1;
        assert_eq!(r.push(&tail), Err(CellError::TooLarge));
    }

    proptest! {
        /// Any frame up to the limit goes through cells of one size only and
        /// comes back whole, also when frames follow each other.
        #[test]
        fn any_frame_round_trips_through_cells_of_one_size(
            frames in proptest::collection::vec(
                (1..=MAX_FRAME_BYTES, any::<u8>()), 1..4),
        ) {
            let frames: Vec<Vec<u8>> = frames
                .into_iter()
                .map(|(len, seed)| (0..len).map(|i| seed.wrapping_add(i as u8)).collect())
                .collect();
            let mut cells = Vec::new();
            for f in &frames {
                let mine: Vec<Cell> = split(f).unwrap().collect();
                prop_assert_eq!(mine.len(), cells_for(f.len()));
                prop_assert!(mine.len() <= MAX_CELLS_PER_FRAME);
                cells.extend(mine);
            }
            // Every cell is the same size (the type says so; the Noise
            // message is then CELL_MESSAGE).
            prop_assert!(cells.iter().all(|c| c.len() == CELL_PLAINTEXT));
            prop_assert_eq!(rebuild(cells.into_iter()).unwrap(), frames);
        }

        /// Any bytes as cells: never a panic, never more than the limit kept,
        /// and an accepted frame splits back into the same cells.
        #[test]
        fn arbitrary_cells_never_panic(
            cells in proptest::collection::vec(
                (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..8), any::<bool>()),
                1..20),
        ) {
            let mut r = Reassembler::new();
            let mut seen = Vec::new();
            for (header, fill, zero_pad) in cells {
                let mut c = [0u8; CELL_PLAINTEXT];
                c[..2].copy_from_slice(&header.to_be_bytes());
                for (i, b) in fill.iter().enumerate() {
                    c[CELL_HEADER + i] = *b;
                }
                if !zero_pad {
                    c[CELL_PLAINTEXT - 1] = 1;
                }
                seen.push(c);
                match r.push(&c) {
                    Ok(Some(frame)) => {
                        prop_assert!(frame.len() <= MAX_FRAME_BYTES);
                        let again: Vec<Cell> = split(&frame).unwrap().collect();
                        prop_assert_eq!(&again[..], &seen[..]);
                        seen.clear();
                    }
                    Ok(None) => {}
                    Err(_) => break,
                }
            }
        }
    }
}
