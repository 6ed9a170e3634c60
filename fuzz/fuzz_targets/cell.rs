//! The cells of a link (`wire::cell`), what a peer sends after the handshake,
//! each decrypted Noise message one cell.
//!
//! The input is cut into cells of `CELL_PLAINTEXT` bytes (a last, shorter
//! piece is filled up with zeros, so short inputs are whole cells) and fed to
//! one `Reassembler`, as the session does: it never panics, never returns an
//! empty frame or one over `MAX_FRAME_BYTES`, never returns more frame bytes
//! than the cells it accepted carry, returns nothing from a cell it refuses,
//! and the frames it returns, packed again by a `Packer` as one batch,
//! rebuild the same frames in no more cells than each alone would take. A
//! message of any other length is refused as `WrongSize`. The same input
//! read as one frame: if it is 1 to `MAX_FRAME_BYTES` bytes, it splits into
//! `cells_for(len)` cells of one size that rebuild it; else `split` refuses
//! it.
#![no_main]

use hermes::wire::cell::{
    cells_for, split, Cell, CellError, Packer, Reassembler, CELL_PAYLOAD, CELL_PLAINTEXT,
    MAX_FRAME_BYTES,
};
use libfuzzer_sys::fuzz_target;

fn rebuild(cells: &[Cell]) -> Vec<Vec<u8>> {
    let mut r = Reassembler::new();
    let mut frames = Vec::new();
    for c in cells {
        r.push(c, &mut frames).expect("a packer's cells are accepted");
    }
    assert!(!r.in_frame(), "a packer left a frame open");
    frames
}

fuzz_target!(|data: &[u8]| {
    let mut cells = Reassembler::new();
    let mut frames: Vec<Vec<u8>> = Vec::new();
    let mut accepted = 0usize;
    for piece in data.chunks(CELL_PLAINTEXT) {
        let mut cell = piece.to_vec();
        cell.resize(CELL_PLAINTEXT, 0);
        let before = frames.len();
        match cells.push(&cell, &mut frames) {
            Ok(()) => accepted += 1,
            Err(_) => {
                assert_eq!(frames.len(), before, "a refused cell gave frames");
                break;
            }
        }
    }
    let bytes: usize = frames.iter().map(Vec::len).sum();
    assert!(bytes <= accepted * CELL_PAYLOAD, "{bytes} bytes from {accepted} cells");
    for f in &frames {
        assert!(!f.is_empty() && f.len() <= MAX_FRAME_BYTES, "{}-byte frame", f.len());
    }
    if !frames.is_empty() {
        let mut packed: Vec<Cell> = Vec::new();
        let mut keep = |c: &Cell| {
            packed.push(*c);
            Ok::<_, CellError>(())
        };
        let mut p = Packer::new();
        for f in &frames {
            p.push(f, &mut keep).expect("a rebuilt frame packs");
        }
        p.finish(&mut keep).expect("finish");
        let alone: usize = frames.iter().map(|f| cells_for(f.len())).sum();
        assert!(packed.len() <= alone, "{} cells for {alone}", packed.len());
        assert_eq!(rebuild(&packed), frames, "packing did not round-trip");
    }
    if data.len() != CELL_PLAINTEXT {
        assert!(matches!(
            Reassembler::new().push(data, &mut Vec::new()),
            Err(CellError::WrongSize(_))
        ));
    }

    match split(data) {
        Ok(out) => {
            assert!(!data.is_empty() && data.len() <= MAX_FRAME_BYTES);
            assert_eq!(out.len(), cells_for(data.len()));
            assert_eq!(rebuild(&out), vec![data.to_vec()], "split did not round-trip");
        }
        Err(e) => assert!(
            data.is_empty() || data.len() > MAX_FRAME_BYTES,
            "split refused {} bytes: {e}",
            data.len()
        ),
    }
});
