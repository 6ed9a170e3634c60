//! Cells: every Noise transport message on a link has one size.
//!
//! A [`LinkFrame`](super::link::LinkFrame) is not sent as a Noise message of
//! its own length (that would tell a pong from a gossip frame from an onion
//! packet by size alone). Frames travel in *cells*: each cell's plaintext is
//! exactly [`CELL_PLAINTEXT`] bytes, so each Noise message is exactly
//! [`CELL_MESSAGE`] bytes with its tag, and each length prefix on the wire
//! says the same number. A cell is a run of *segments*, then zeros:
//!
//! ```text
//! | header: u16 big-endian | frame bytes (len) | header | bytes | ... | zero padding |
//! |  bit 15: MORE          |                   |        |       |     |              |
//! |  bits 0-14: len        |                   |        |       |     |              |
//! ```
//!
//! `len` (at least 1) is how many bytes of frame the segment carries; `MORE`
//! says the frame goes on in the next cell. The first segment of a cell may
//! go on with the frame begun in the cells before it, and may say `MORE`,
//! but then it is the cell's only segment and fills it (`len` =
//! [`CELL_PAYLOAD`]). Every later segment is a whole frame. A zero header, or
//! fewer than [`CELL_HEADER`] bytes left, ends the segments, and everything
//! after them must be zero. A frame is at most [`MAX_FRAME_BYTES`] bytes,
//! checked before anything is kept.
//!
//! The [`Packer`] puts a frame into the cell begun before it only if it fits
//! there whole, and otherwise starts it in a cell of its own, so a frame
//! never costs more cells than alone ([`cells_for`]), and a frame sent alone
//! is encoded exactly as it always was. Under load the writer packs what
//! waits on a link: a 1 KiB message's flood packet takes half a cell, a
//! receipt about a thirtieth, where each took a whole cell before (protocol
//! `hermes/3`; `hermes/2` sent one frame per cell). An onion frame (4,100
//! bytes) still takes one cell of its own unless a frame of at most 8 bytes
//! came just before it. Whether two frames share a cell depends on when
//! they were queued, so a sequence of frames has more than one encoding;
//! each sequence of cells still decodes in exactly one way.
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
    #[error("cell header claims {0} bytes, more than the cell has left")]
    Length(usize),
    #[error(
        "a segment of {0} bytes says the frame continues (only a cell's one full segment may)"
    )]
    ShortContinued(usize),
    #[error("cell padding is not zero")]
    Padding,
    #[error("frame over {MAX_FRAME_BYTES} bytes ({MAX_CELLS_PER_FRAME} cells)")]
    TooLarge,
    #[error("a frame that must come alone shares its cell with another")]
    NotAlone,
}

/// How many cells a frame of `len` bytes takes at most (alone, it takes
/// exactly this many; packed after other frames it may share its first cell).
pub fn cells_for(len: usize) -> usize {
    len.div_ceil(CELL_PAYLOAD).max(1)
}

/// The Noise messages' bytes a frame of `len` bytes costs on a link at most
/// (what the outbound byte budget counts: every cell's [`CELL_MESSAGE`] of
/// the frame sent alone; packed, it costs less).
pub fn message_bytes(len: usize) -> usize {
    cells_for(len) * CELL_MESSAGE
}

/// Cuts one encoded frame (1 to [`MAX_FRAME_BYTES`] bytes) into cells of its
/// own, in the order they must be sent: the frame sent alone.
pub fn split(frame: &[u8]) -> Result<Vec<Cell>, CellError> {
    let mut cells = Vec::with_capacity(cells_for(frame.len()));
    let mut packer = Packer::new();
    let mut keep = |c: &Cell| {
        cells.push(*c);
        Ok::<_, CellError>(())
    };
    packer.push(frame, &mut keep)?;
    packer.finish(&mut keep)?;
    Ok(cells)
}

/// Packs frames into cells, in order: a frame goes into the cell begun
/// before it if it fits there whole, and otherwise starts a cell of its own
/// (so no frame ever takes more cells than [`cells_for`] its length). The
/// cell a frame ends in stays open for the next frame until
/// [`Packer::finish`]: the writer pushes every frame waiting on a link, then
/// finishes, so a batch of receipts or packets shares cells, and a lone
/// frame still goes out in a cell of its own at once.
pub struct Packer {
    cell: Cell,
    /// Bytes of `cell` used so far (0: no cell begun).
    used: usize,
}

impl Default for Packer {
    fn default() -> Packer {
        Packer::new()
    }
}

impl Packer {
    pub fn new() -> Packer {
        Packer {
            cell: [0u8; CELL_PLAINTEXT],
            used: 0,
        }
    }

    /// True if no cell is begun (nothing waits for [`Packer::finish`]).
    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    /// Adds one encoded frame (1 to [`MAX_FRAME_BYTES`] bytes). Every cell
    /// that is complete goes to `emit`, in order; the frame's last cell
    /// stays open.
    pub fn push<E: From<CellError>>(
        &mut self,
        frame: &[u8],
        emit: &mut impl FnMut(&Cell) -> Result<(), E>,
    ) -> Result<(), E> {
        if frame.is_empty() {
            return Err(CellError::Empty.into());
        }
        if frame.len() > MAX_FRAME_BYTES {
            return Err(CellError::TooLarge.into());
        }
        if !self.is_empty() && CELL_HEADER + frame.len() <= CELL_PLAINTEXT - self.used {
            self.put(frame, false);
            return Ok(());
        }
        self.finish(emit)?;
        let mut rest = frame;
        while rest.len() > CELL_PAYLOAD {
            let (part, tail) = rest.split_at(CELL_PAYLOAD);
            self.put(part, true);
            self.finish(emit)?;
            rest = tail;
        }
        self.put(rest, false);
        Ok(())
    }

    /// Hands the cell begun, if any, to `emit`.
    pub fn finish<E>(&mut self, emit: &mut impl FnMut(&Cell) -> Result<(), E>) -> Result<(), E> {
        if self.is_empty() {
            return Ok(());
        }
        let r = emit(&self.cell);
        // Only the bytes used need clearing: the rest is still zero.
        self.cell[..self.used].fill(0);
        self.used = 0;
        r
    }

    /// Writes one segment (header and bytes) at the end of the cell; the
    /// caller has checked that it fits.
    fn put(&mut self, part: &[u8], more: bool) {
        // A part is at most CELL_PAYLOAD (< 0x8000) bytes.
        let mut header = part.len() as u16;
        if more {
            header |= MORE;
        }
        let at = self.used;
        self.cell[at..at + CELL_HEADER].copy_from_slice(&header.to_be_bytes());
        self.cell[at + CELL_HEADER..at + CELL_HEADER + part.len()].copy_from_slice(part);
        self.used = at + CELL_HEADER + part.len();
    }
}

/// Rebuilds frames from the cells of one direction of a link, in order.
///
/// It holds at most [`MAX_FRAME_BYTES`] bytes of a frame begun. A cell is
/// checked whole before anything in it is kept or returned. After any error
/// the link is to be closed (the stream of cells has no way to
/// resynchronise).
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

    /// Takes the next cell's plaintext and appends to `frames` every frame
    /// that ends in it, in order. On an error nothing of the cell is kept.
    pub fn push(&mut self, cell: &[u8], frames: &mut Vec<Vec<u8>>) -> Result<(), CellError> {
        if cell.len() != CELL_PLAINTEXT {
            return Err(CellError::WrongSize(cell.len() + TAG_LEN));
        }
        let end = self.check(cell)?;
        let mut at = 0;
        while at < end {
            let header = u16::from_be_bytes([cell[at], cell[at + 1]]);
            let len = usize::from(header & !MORE);
            let body = &cell[at + CELL_HEADER..at + CELL_HEADER + len];
            if header & MORE != 0 {
                self.partial.extend_from_slice(body);
            } else if at == 0 && self.in_frame() {
                let mut frame = std::mem::take(&mut self.partial);
                frame.extend_from_slice(body);
                frames.push(frame);
            } else {
                frames.push(body.to_vec());
            }
            at += CELL_HEADER + len;
        }
        Ok(())
    }

    /// Checks a cell's segments and padding; returns where its segments end.
    ///
    /// The first segment may go on with the frame begun, and may say `MORE`
    /// (only as the cell's one full segment); every later one is a whole
    /// frame. A zero header, or too little room left for one, ends the
    /// segments; all after that must be zero.
    fn check(&self, cell: &[u8]) -> Result<usize, CellError> {
        let mut at = 0;
        while at + CELL_HEADER <= CELL_PLAINTEXT {
            let header = u16::from_be_bytes([cell[at], cell[at + 1]]);
            if header == 0 && at > 0 {
                break;
            }
            let more = header & MORE != 0;
            let len = usize::from(header & !MORE);
            if len == 0 {
                return Err(CellError::Empty);
            }
            if len > CELL_PLAINTEXT - at - CELL_HEADER {
                return Err(CellError::Length(len));
            }
            if more && (at > 0 || len != CELL_PAYLOAD) {
                return Err(CellError::ShortContinued(len));
            }
            // Checked before the bytes are kept.
            if at == 0 && self.partial.len() + len > MAX_FRAME_BYTES {
                return Err(CellError::TooLarge);
            }
            at += CELL_HEADER + len;
        }
        // An OR over the whole padding, not `any`: it has no early exit, so
        // it runs as vector code (`any` went byte by byte, 5% of a relay's
        // CPU, over ~3 KiB of padding in every receipt's cell).
        if cell[at..].iter().fold(0u8, |acc, &b| acc | b) != 0 {
            return Err(CellError::Padding);
        }
        Ok(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::sphinx::PACKET_SIZE;
    use crate::wire::link::{LinkBody, LinkFrame, OnionPacket};
    use proptest::prelude::*;

    fn rebuild(cells: impl IntoIterator<Item = Cell>) -> Result<Vec<Vec<u8>>, CellError> {
        let mut r = Reassembler::new();
        let mut out = Vec::new();
        for c in cells {
            r.push(&c, &mut out)?;
        }
        assert!(!r.in_frame(), "a frame left half built");
        Ok(out)
    }

    /// The cells a packer makes of `batches`: each batch pushed, then
    /// finished (what the writer does with the frames waiting at once).
    fn pack(batches: &[Vec<Vec<u8>>]) -> Vec<Cell> {
        let mut cells = Vec::new();
        let mut keep = |c: &Cell| {
            cells.push(*c);
            Ok::<_, CellError>(())
        };
        let mut p = Packer::new();
        for batch in batches {
            for f in batch {
                p.push(f, &mut keep).unwrap();
            }
            p.finish(&mut keep).unwrap();
            assert!(p.is_empty());
        }
        cells
    }

    fn frame_of(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| seed.wrapping_add(i as u8) | 1).collect()
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
        assert_eq!(split(&frame).unwrap().len(), 1);
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
            let frame = frame_of(len, 1);
            let cells = split(&frame).unwrap();
            assert_eq!(cells.len(), cells_for(len), "len {len}");
            assert_eq!(rebuild(cells).unwrap(), vec![frame]);
        }
    }

    #[test]
    fn a_frame_alone_is_one_segment_per_cell_then_zeros() {
        // The encoding `hermes/2` used for every frame.
        let frame = frame_of(CELL_PAYLOAD + 5, 3);
        let cells = split(&frame).unwrap();
        assert_eq!(cells.len(), 2);
        assert_eq!(
            u16::from_be_bytes([cells[0][0], cells[0][1]]),
            MORE | CELL_PAYLOAD as u16
        );
        assert_eq!(&cells[0][CELL_HEADER..], &frame[..CELL_PAYLOAD]);
        assert_eq!(u16::from_be_bytes([cells[1][0], cells[1][1]]), 5);
        assert_eq!(
            &cells[1][CELL_HEADER..CELL_HEADER + 5],
            &frame[CELL_PAYLOAD..]
        );
        assert!(cells[1][CELL_HEADER + 5..].iter().all(|b| *b == 0));
    }

    #[test]
    fn frames_waiting_together_share_cells_and_a_frame_never_takes_more_than_alone() {
        // 30 receipt-sized frames of 125 bytes: 127 bytes each with the
        // header, 32 fit a cell.
        let small: Vec<Vec<u8>> = (0..30).map(|i| frame_of(125, i)).collect();
        let cells = pack(std::slice::from_ref(&small));
        assert_eq!(cells.len(), 1);
        assert_eq!(rebuild(cells).unwrap(), small);
        // Packets of 1,420 bytes (a 1 KiB message): two to a cell.
        let packets: Vec<Vec<u8>> = (0..5).map(|i| frame_of(1_420, i)).collect();
        let cells = pack(std::slice::from_ref(&packets));
        assert_eq!(cells.len(), 3);
        assert_eq!(rebuild(cells).unwrap(), packets);
        // A frame that does not fit what is left starts a cell of its own,
        // and a long frame after a small one takes its own cells only.
        let mixed = vec![
            frame_of(10, 1),
            frame_of(2 * CELL_PAYLOAD, 2),
            frame_of(4_100, 3),
        ];
        let cells = pack(std::slice::from_ref(&mixed));
        assert_eq!(cells.len(), 1 + 2 + 1);
        assert_eq!(rebuild(cells).unwrap(), mixed);
        // Apart, each batch is finished on its own.
        let cells = pack(&[vec![frame_of(3, 1)], vec![frame_of(3, 2)]]);
        assert_eq!(cells.len(), 2);
    }

    #[test]
    fn empty_and_oversized_frames_are_not_cut() {
        assert_eq!(split(&[]).err(), Some(CellError::Empty));
        let big = vec![1u8; MAX_FRAME_BYTES + 1];
        assert_eq!(split(&big).err(), Some(CellError::TooLarge));
    }

    #[test]
    fn malformed_cells_are_refused() {
        let one = split(&[9, 9, 9]).unwrap()[0];
        let push = |c: &[u8]| Reassembler::new().push(c, &mut Vec::new());
        assert_eq!(
            push(&one[..CELL_PLAINTEXT - 1]),
            Err(CellError::WrongSize(CELL_MESSAGE - 1))
        );
        let mut c = one;
        c[0] = 0;
        c[1] = 0;
        assert_eq!(push(&c), Err(CellError::Empty));
        let mut c = one;
        c[..2].copy_from_slice(&((CELL_PAYLOAD + 1) as u16).to_be_bytes());
        assert_eq!(push(&c), Err(CellError::Length(CELL_PAYLOAD + 1)));
        let mut c = one;
        c[..2].copy_from_slice(&(3u16 | MORE).to_be_bytes());
        assert_eq!(push(&c), Err(CellError::ShortContinued(3)));
        let mut c = one;
        c[CELL_PLAINTEXT - 1] = 1;
        assert_eq!(push(&c), Err(CellError::Padding));
        // A second segment: it may not say MORE, nor run past the cell, nor
        // be empty with MORE.
        let mut c = one;
        c[5..7].copy_from_slice(&(2u16 | MORE).to_be_bytes());
        assert_eq!(push(&c), Err(CellError::ShortContinued(2)));
        let mut c = one;
        c[5..7].copy_from_slice(&((CELL_PLAINTEXT - 6) as u16).to_be_bytes());
        assert_eq!(push(&c), Err(CellError::Length(CELL_PLAINTEXT - 6)));
        let mut c = one;
        c[5..7].copy_from_slice(&MORE.to_be_bytes());
        assert_eq!(push(&c), Err(CellError::Empty));
        // A second segment that ends exactly at the cell's end is whole.
        let mut c = one;
        let len = CELL_PLAINTEXT - 7;
        c[5..7].copy_from_slice(&(len as u16).to_be_bytes());
        let mut frames = Vec::new();
        assert_eq!(Reassembler::new().push(&c, &mut frames), Ok(()));
        assert_eq!(frames, vec![vec![9, 9, 9], vec![0; len]]);
        let mut frames = Vec::new();
        assert_eq!(Reassembler::new().push(&one, &mut frames), Ok(()));
        assert_eq!(frames, vec![vec![9, 9, 9]]);
    }

    #[test]
    fn nothing_of_a_bad_cell_is_returned_or_kept() {
        // Two good frames, then non-zero padding: neither frame comes out.
        let mut cells = pack(&[vec![frame_of(10, 1), frame_of(10, 2)]]);
        cells[0][CELL_PLAINTEXT - 1] = 7;
        let mut r = Reassembler::new();
        let mut frames = Vec::new();
        assert_eq!(r.push(&cells[0], &mut frames), Err(CellError::Padding));
        assert!(frames.is_empty());
        // A continued frame's end in a cell with a bad second segment: the
        // frame begun is not completed.
        let mut cells = split(&frame_of(CELL_PAYLOAD + 1, 4)).unwrap();
        cells[1][3..5].copy_from_slice(&(1u16 | MORE).to_be_bytes());
        let mut r = Reassembler::new();
        let mut frames = Vec::new();
        r.push(&cells[0], &mut frames).unwrap();
        assert_eq!(
            r.push(&cells[1], &mut frames),
            Err(CellError::ShortContinued(1))
        );
        assert!(frames.is_empty() && r.in_frame());
    }

    #[test]
    fn a_frame_past_the_limit_is_refused_before_it_is_kept() {
        let mut full = [1u8; CELL_PLAINTEXT];
        full[..2].copy_from_slice(&(CELL_PAYLOAD as u16 | MORE).to_be_bytes());
        let mut out = Vec::new();
        let mut r = Reassembler::new();
        for _ in 0..MAX_CELLS_PER_FRAME {
            assert_eq!(r.push(&full, &mut out), Ok(()));
        }
        assert_eq!(r.push(&full, &mut out), Err(CellError::TooLarge));
        // The last cell of a largest frame still fits.
        let mut r = Reassembler::new();
        for _ in 0..MAX_CELLS_PER_FRAME - 1 {
            assert_eq!(r.push(&full, &mut out), Ok(()));
        }
        let mut last = full;
        last[..2].copy_from_slice(&(CELL_PAYLOAD as u16).to_be_bytes());
        assert_eq!(r.push(&last, &mut out), Ok(()));
        assert_eq!(
            out.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![MAX_FRAME_BYTES]
        );
        let mut r = Reassembler::new();
        for _ in 0..MAX_CELLS_PER_FRAME {
            assert_eq!(r.push(&full, &mut out), Ok(()));
        }
        let mut tail = [0u8; CELL_PLAINTEXT];
        tail[..2].copy_from_slice(&1u16.to_be_bytes());
        tail[2] = 1;
        assert_eq!(r.push(&tail, &mut out), Err(CellError::TooLarge));
    }

    proptest! {
        /// Any frames up to the limit, in any batches, go through cells of
        /// one size only and come back whole and in order; no batch takes
        /// more cells than its frames alone would.
        #[test]
        fn any_frames_in_any_batches_round_trip_through_cells_of_one_size(
            batches in proptest::collection::vec(
                proptest::collection::vec(
                    (prop_oneof![1..200usize, 1..=5_000usize, 1..=MAX_FRAME_BYTES], any::<u8>()),
                    1..6),
                1..4),
        ) {
            let batches: Vec<Vec<Vec<u8>>> = batches
                .into_iter()
                .map(|b| b.into_iter().map(|(len, seed)| frame_of(len, seed)).collect())
                .collect();
            let cells = pack(&batches);
            let alone: usize = batches.iter().flatten().map(|f| cells_for(f.len())).sum();
            prop_assert!(cells.len() <= alone);
            let frames: Vec<Vec<u8>> = batches.into_iter().flatten().collect();
            prop_assert_eq!(rebuild(cells).unwrap(), frames);
        }

        /// Any bytes as cells: never a panic, never a frame over the limit,
        /// never more frame bytes out than the cells held, and what comes
        /// out packs back into cells that give the same frames.
        #[test]
        fn arbitrary_cells_never_panic(
            cells in proptest::collection::vec(
                (
                    any::<bool>(),
                    proptest::collection::vec(
                        (0..40usize, any::<bool>(), proptest::option::weighted(0.1, any::<u16>())),
                        0..6),
                    any::<bool>(),
                ),
                1..20),
        ) {
            let mut r = Reassembler::new();
            let mut out = Vec::new();
            let mut taken = 0usize;
            for (full, segments, zero_pad) in cells {
                let mut c = [0u8; CELL_PLAINTEXT];
                if full {
                    // A full cell that says the frame goes on.
                    c[..2].copy_from_slice(&(MORE | CELL_PAYLOAD as u16).to_be_bytes());
                    c[2..].fill(0x5a);
                }
                let mut at = 0;
                for (len, more, raw) in segments.into_iter().filter(|_| !full) {
                    if at + CELL_HEADER + len > CELL_PLAINTEXT {
                        break;
                    }
                    let header = raw.unwrap_or(len as u16 | if more { MORE } else { 0 });
                    c[at..at + 2].copy_from_slice(&header.to_be_bytes());
                    c[at + 2..at + 2 + len].fill(0xa5);
                    at += CELL_HEADER + len;
                }
                if !zero_pad {
                    c[CELL_PLAINTEXT - 1] |= 1;
                }
                match r.push(&c, &mut out) {
                    Ok(()) => taken += 1,
                    Err(_) => break,
                }
            }
            let bytes: usize = out.iter().map(Vec::len).sum();
            prop_assert!(bytes <= taken * CELL_PAYLOAD);
            prop_assert!(out.iter().all(|f| !f.is_empty() && f.len() <= MAX_FRAME_BYTES));
            if !out.is_empty() {
                prop_assert_eq!(rebuild(pack(std::slice::from_ref(&out))).unwrap(), out);
            }
        }
    }
}
