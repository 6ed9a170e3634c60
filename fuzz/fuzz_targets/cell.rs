//! The cells of a link (`wire::cell`), what a peer sends after the handshake,
//! each decrypted Noise message one cell.
//!
//! The input is cut into cells of `CELL_PLAINTEXT` bytes (a last, shorter
//! piece is filled up with zeros, so short inputs are whole cells) and fed to
//! one `Reassembler`, as the session does: it never panics, never returns a
//! frame over `MAX_FRAME_BYTES`, and every frame it returns splits back into
//! exactly the cells it was given since the previous frame (one frame, one
//! encoding). A message of any other length is refused as `WrongSize`. The
//! same input read as one frame: if it is 1 to `MAX_FRAME_BYTES` bytes, it
//! splits into `cells_for(len)` cells of one size that rebuild it; else
//! `split` refuses it.
#![no_main]

use hermes::wire::cell::{
    cells_for, split, CellError, Reassembler, CELL_PLAINTEXT, MAX_FRAME_BYTES,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut cells = Reassembler::new();
    let mut since: Vec<Vec<u8>> = Vec::new();
    for piece in data.chunks(CELL_PLAINTEXT) {
        let mut cell = piece.to_vec();
        cell.resize(CELL_PLAINTEXT, 0);
        since.push(cell.clone());
        match cells.push(&cell) {
            Ok(Some(frame)) => {
                assert!(frame.len() <= MAX_FRAME_BYTES, "{}-byte frame", frame.len());
                let again: Vec<Vec<u8>> = split(&frame)
                    .expect("a rebuilt frame splits")
                    .map(|c| c.to_vec())
                    .collect();
                assert_eq!(again, since, "the cells of a frame are not canonical");
                since.clear();
            }
            Ok(None) => assert!(cells.in_frame(), "a continued cell kept nothing"),
            Err(_) => break,
        }
    }
    if data.len() != CELL_PLAINTEXT {
        assert!(matches!(
            Reassembler::new().push(data),
            Err(CellError::WrongSize(_))
        ));
    }

    match split(data) {
        Ok(out) => {
            assert!(!data.is_empty() && data.len() <= MAX_FRAME_BYTES);
            let out: Vec<_> = out.collect();
            assert_eq!(out.len(), cells_for(data.len()));
            let mut r = Reassembler::new();
            let mut frames = Vec::new();
            for c in &out {
                assert_eq!(c.len(), CELL_PLAINTEXT);
                if let Some(f) = r.push(c).expect("split's cells are accepted") {
                    frames.push(f);
                }
            }
            assert_eq!(frames, vec![data.to_vec()], "split did not round-trip");
        }
        Err(e) => assert!(
            data.is_empty() || data.len() > MAX_FRAME_BYTES,
            "split refused {} bytes: {e}",
            data.len()
        ),
    }
});
