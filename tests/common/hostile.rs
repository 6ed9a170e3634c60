//! A hostile peer for the attack tests: it speaks the real protocol (Noise XX,
//! postcard link frames in fixed-size cells) with its own valid identity and
//! signed record, and then sends whatever the test tells it to.
//!
//! Blocking API over a private current-thread tokio runtime, so tests stay
//! plain `#[test]` functions. Each method that waits takes a deadline.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hermes::actors::peer_session::{dial, write_frame, Established, FrameReader};
use hermes::crypto::{noise, unix_now, Identity, SignedRecord};
use hermes::wire::cell::{Cell, CellError, Packer};
use hermes::wire::link::{LinkBody, LinkFrame};

/// How long the rest of a frame may take once its first byte has come.
const MID_FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// One authenticated link from a hostile peer to a node.
pub struct HostilePeer {
    pub identity: Identity,
    pub record: SignedRecord,
    /// The node's record, as it sent it on the link.
    pub peer: SignedRecord,
    est: Established,
    /// The node packs frames into cells: those read and not yet taken.
    reader: FrameReader,
    rt: tokio::runtime::Runtime,
}

impl HostilePeer {
    /// Dials `to` as a peer that says it listens at `listen` (a test address
    /// nobody else uses) and returns once the link is up.
    pub fn dial(to: SocketAddr, listen: SocketAddr) -> HostilePeer {
        Self::dial_as(Identity::generate(), to, listen, unix_now())
    }

    /// Like [`HostilePeer::dial`] with a chosen identity and record time.
    pub fn dial_as(
        identity: Identity,
        to: SocketAddr,
        listen: SocketAddr,
        time: u64,
    ) -> HostilePeer {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let record = SignedRecord::sign(&identity, listen, true, time);
        let est = rt
            .block_on(dial(to, &identity, &record))
            .unwrap_or_else(|e| panic!("hostile peer: dial {to}: {e}"));
        let peer = est.peer.clone();
        HostilePeer {
            identity,
            record,
            peer,
            est,
            reader: FrameReader::new(),
            rt,
        }
    }

    /// Sends one frame; false once the node has closed the link.
    pub fn send(&mut self, body: LinkBody) -> bool {
        let frame = LinkFrame::new(body).encode().expect("frame encodes");
        self.send_raw(&frame)
    }

    /// Sends already encoded frame bytes (which may be invalid on purpose),
    /// in cells as the protocol wants.
    pub fn send_raw(&mut self, frame: &[u8]) -> bool {
        let stream = &mut self.est.stream;
        let cipher = &mut self.est.link.send;
        self.rt.block_on(write_frame(stream, cipher, frame)).is_ok()
    }

    /// Sends already encoded frames packed into shared cells, as a node's
    /// writer packs what waits on a link (`wire::cell::Packer`); false once
    /// the node has closed the link.
    pub fn send_packed(&mut self, frames: &[Vec<u8>]) -> bool {
        let mut cells: Vec<Cell> = Vec::new();
        let mut keep = |c: &Cell| {
            cells.push(*c);
            Ok::<_, CellError>(())
        };
        let mut packer = Packer::new();
        for f in frames {
            packer.push(f, &mut keep).expect("frames pack");
        }
        packer.finish(&mut keep).expect("frames pack");
        cells.iter().all(|c| self.send_message(c))
    }

    /// Sends `plaintext` as one Noise transport message of its own length,
    /// not as cells (a malformed cell, or a message of the wrong size, on
    /// purpose).
    pub fn send_message(&mut self, plaintext: &[u8]) -> bool {
        let Ok(sealed) = self.est.link.send.encrypt(plaintext) else {
            return false;
        };
        let stream = &mut self.est.stream;
        self.rt
            .block_on(noise::write_prefixed(stream, &sealed))
            .is_ok()
    }

    /// The next frame from the node within `timeout`: `Ok(None)` on timeout,
    /// `Err` once the link is closed.
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<LinkBody>, String> {
        let stream = &mut self.est.stream;
        let cipher = &mut self.est.link.recv;
        let reader = &mut self.reader;
        // A timeout in the middle of a frame would lose its first cells:
        // wait for the rest once a cell has come.
        let read = self.rt.block_on(async {
            let mut first = [0u8; 1];
            if !reader.has_ready()
                && tokio::time::timeout(timeout, stream.peek(&mut first))
                    .await
                    .is_err()
            {
                return Ok(None);
            }
            match tokio::time::timeout(MID_FRAME_TIMEOUT, reader.next(stream, cipher)).await {
                Err(_) => Err("the node stalled in the middle of a frame".to_string()),
                Ok(r) => r.map(Some).map_err(|e| e.to_string()),
            }
        });
        let plain = match read {
            Ok(None) => return Ok(None),
            Err(e) => return Err(format!("link closed: {e}")),
            Ok(Some(b)) => b,
        };
        let frame = LinkFrame::decode(&plain).map_err(|e| format!("decode: {e}"))?;
        Ok(Some(frame.body))
    }

    /// Reads frames until `pick` returns a value or `timeout` passes; answers
    /// pings on the way, so the node keeps the link. None on timeout or close.
    pub fn recv_until<T>(
        &mut self,
        timeout: Duration,
        mut pick: impl FnMut(&LinkBody) -> Option<T>,
    ) -> Option<T> {
        let start = Instant::now();
        while let Some(left) = timeout.checked_sub(start.elapsed()) {
            match self.recv(left.min(Duration::from_millis(200))) {
                Ok(Some(body)) => {
                    if let LinkBody::Ping(n) = body {
                        self.send(LinkBody::Pong(n));
                        continue;
                    }
                    if let Some(v) = pick(&body) {
                        return Some(v);
                    }
                }
                Ok(None) => {}
                Err(_) => return None,
            }
        }
        None
    }

    /// True once the node has closed the link (reads until EOF or `timeout`).
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let start = Instant::now();
        while let Some(left) = timeout.checked_sub(start.elapsed()) {
            match self.recv(left.min(Duration::from_millis(200))) {
                Err(_) => return true,
                Ok(Some(LinkBody::Ping(n))) => {
                    self.send(LinkBody::Pong(n));
                }
                Ok(_) => {}
            }
        }
        false
    }
}
