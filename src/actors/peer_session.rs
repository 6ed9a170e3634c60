//! PeerSession: one actor per connected peer.
//!
//! A link is set up before the actor starts ([`establish`]): the Noise XX
//! handshake, then each side's signed record as the first transport message,
//! checked against the Noise static key. Every frame after the handshake,
//! the record too, travels in cells ([`crate::wire::cell`]): Noise transport
//! messages of exactly [`CELL_MESSAGE`] bytes each, behind a length prefix
//! that always says the same, so a capture of the link shows one message
//! size whatever is sent. A prefix of any other length, a malformed cell or a
//! frame over [`MAX_LINK_FRAME`] closes the link. The session reads cells,
//! decrypts each, rebuilds frames from them, decodes each frame and hands
//! packets and receipts to the Router, waiting for the Router to take each one
//! before reading more (back-pressure reaches the peer through TCP). Writes go
//! through a bounded queue to a writer task that owns the sending half; a peer
//! too slow to drain its queue loses frames, never the node's memory.
//! Any bad frame, decrypt failure or missed keepalive closes the link; the
//! NeighbourManager hears of it and redials or replaces the peer.
//!
//! Budgets ([`LinkBudget`], from `[limits]`): every cell (its Noise message)
//! is counted against the link's bytes per second before it is decrypted,
//! every frame (however many cells it took) once against its frames per
//! second, and the records in membership frames against its records per
//! minute. A peer over any budget, or reported by
//! the Router ([`OverBudget`]), is logged once, cut off, and refused by the
//! NeighbourManager for `limits.backoff` ([`Ban`]). A session reads no frame
//! before the NeighbourManager has let it in ([`SessionUp`] answers whether
//! the peer is banned). What goes out on a link is kept to a share of the
//! same budgets ([`LinkBudget::outbound`]).

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};

use super::neighbours::{Ban, FromPeer, LinkRtt, NeighbourManager, SessionDown, SessionUp};
use super::router::{Inbound, Router};
use crate::config::LimitsConfig;
use crate::crypto::noise::{self, Link, NoiseError, RecvCipher, SendCipher};
use crate::crypto::{unix_now, Address, Identity, RecordCell, RecordError, SignedRecord};
pub use crate::overlay::Direction;
use crate::wire::cell::{self, CellError, Packer, Reassembler, CELL_MESSAGE, CELL_WIRE};
use crate::wire::link::{LinkBody, LinkFrame, MAX_LINK_FRAME, MAX_RECORDS_PER_FRAME};
use crate::wire::WireError;

/// Frames waiting for the writer; past this a slow peer loses frames.
pub const OUTBOUND_QUEUE: usize = 512;
/// The writer seals every frame already waiting, up to about this many
/// bytes of cells (8 cells), before one `write`: under load a link costs a
/// system call (and a wake-up of the reader at the other end) per batch, not
/// per cell; a lone frame still goes out at once.
pub const WRITE_BATCH_BYTES: usize = 8 * CELL_WIRE;
/// The reader's buffer: one such batch is one `read`.
pub const READ_BUFFER_BYTES: usize = WRITE_BATCH_BYTES;
/// Keepalive and dial timings (defined with the overlay, which the simulator
/// models with the same values).
pub use crate::overlay::timing::{DIAL_TIMEOUT, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT};
/// Time for the first frame (the record) after the handshake.
pub const RECORD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a graceful close waits for queued frames to be written.
pub const CLOSE_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// The fastest rate a budget is kept at (a limiter refills one unit per
/// nanosecond at most); a larger configured rate means this one.
pub const MAX_BUDGET_RATE: u32 = 1_000_000_000;

/// What this node sends a link, in parts of the budget it would accept
/// itself ([`OUTBOUND_SHARE_NUM`]/[`OUTBOUND_SHARE_DEN`] of the rates and
/// bursts): relayed floods past it are dropped, so an honest relay whose
/// neighbours keep the same `[limits]` never breaks their budgets however
/// much it is sent (the rest is room for pings and bunching on the way).
pub const OUTBOUND_SHARE_NUM: u32 = 3;
pub const OUTBOUND_SHARE_DEN: u32 = 4;

/// The budget names, as logged: the `[limits]` key that was broken.
pub const BUDGET_FRAMES: &str = "limits.packets_per_sec";
pub const BUDGET_BYTES: &str = "limits.bytes_per_sec";
pub const BUDGET_GOSSIP: &str = "limits.gossip_records_per_min";

/// What one link may bring, from `[limits]` (GCRA limiters from `governor`,
/// each starting full):
/// - frames: `packets_per_sec` sustained, `packet_burst` at once. Every frame
///   counts one: packets and receipts are nearly all of an honest link's
///   frames, and pings (each costs a pong) and membership frames count too;
/// - bytes: `bytes_per_sec` sustained, `byte_burst` at once, counted on each
///   cell's Noise message ([`CELL_MESSAGE`] bytes, padding included) as read,
///   before it is decrypted: a frame costs the cells it takes (frames
///   packed together share theirs);
/// - records: `gossip_records_per_min` records carried by `Gossip`,
///   `Records`, `Full` and `Leaving` frames, with a burst of a minute's worth
///   and at least one full frame ([`MAX_RECORDS_PER_FRAME`]). An honest
///   neighbour sends about 8 records every 5 to 15 s (one exchange sample).
///   The Membership on top of this ignores (without cutting) any second
///   `Gossip`/`Records` frame within 500 ms on a link; the budget is what a
///   peer may make this node decode and verify, whatever the Membership
///   then keeps.
pub struct LinkBudget {
    frames: DefaultDirectRateLimiter,
    bytes: DefaultDirectRateLimiter,
    records: DefaultDirectRateLimiter,
}

fn nonzero(v: u32) -> NonZeroU32 {
    NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN)
}

impl LinkBudget {
    pub fn new(limits: &LimitsConfig) -> LinkBudget {
        let per_sec = |rate: u32, burst: u32| {
            Quota::per_second(nonzero(rate.min(MAX_BUDGET_RATE))).allow_burst(nonzero(burst))
        };
        let records = limits.gossip_records_per_min;
        let record_burst = records.max(MAX_RECORDS_PER_FRAME as u32);
        LinkBudget {
            frames: RateLimiter::direct(per_sec(limits.packets_per_sec, limits.packet_burst)),
            bytes: RateLimiter::direct(per_sec(limits.bytes_per_sec, limits.byte_burst)),
            records: RateLimiter::direct(
                Quota::per_minute(nonzero(records)).allow_burst(nonzero(record_burst)),
            ),
        }
    }

    /// The budget this node keeps to on what it sends one link (see
    /// [`OUTBOUND_SHARE_NUM`]); a largest frame (all its cells) always fits
    /// its byte burst.
    pub fn outbound(limits: &LimitsConfig) -> LinkBudget {
        let share = |v: u32| {
            (u64::from(v) * u64::from(OUTBOUND_SHARE_NUM) / u64::from(OUTBOUND_SHARE_DEN)).max(1)
                as u32
        };
        let mut l = limits.clone();
        l.packets_per_sec = share(l.packets_per_sec);
        l.packet_burst = share(l.packet_burst);
        l.bytes_per_sec = share(l.bytes_per_sec);
        l.byte_burst = share(l.byte_burst).max(cell::message_bytes(MAX_LINK_FRAME) as u32);
        LinkBudget::new(&l)
    }

    /// Counts one frame of `len` bytes going out: one frame, and the bytes
    /// of the cells it would take alone ([`cell::message_bytes`]: the writer
    /// may pack it with others into fewer, never more; the peer counts the
    /// cells it reads, so this share never passes its budget); false if it
    /// would break the budget.
    pub fn send(&self, len: usize) -> bool {
        Self::take(&self.bytes, cell::message_bytes(len)) && self.frames.check().is_ok()
    }

    /// Takes `n` units from `limiter`; false if that breaks it.
    fn take(limiter: &DefaultDirectRateLimiter, n: usize) -> bool {
        match u32::try_from(n) {
            Ok(0) => true,
            Ok(n) => matches!(limiter.check_n(nonzero(n)), Ok(Ok(()))),
            Err(_) => false,
        }
    }

    /// Counts one Noise message (a cell) of `len` bytes, before decrypting it.
    pub fn bytes(&self, len: usize) -> Result<(), &'static str> {
        Self::take(&self.bytes, len)
            .then_some(())
            .ok_or(BUDGET_BYTES)
    }

    /// Counts one decoded frame, and the records it carries.
    pub fn frame(&self, body: &LinkBody) -> Result<(), &'static str> {
        if self.frames.check().is_err() {
            return Err(BUDGET_FRAMES);
        }
        let records = match body {
            LinkBody::Gossip(g) => g.records.len(),
            LinkBody::Records(r) | LinkBody::Full(r) | LinkBody::Leaving(r) => r.len(),
            _ => 0,
        };
        Self::take(&self.records, records)
            .then_some(())
            .ok_or(BUDGET_GOSSIP)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connect to {0}: timed out")]
    ConnectTimeout(SocketAddr),
    #[error("handshake: {0}")]
    Noise(#[from] NoiseError),
    #[error("bad frame: {0}")]
    Wire(#[from] WireError),
    #[error("bad cell: {0}")]
    Cell(#[from] CellError),
    #[error("first frame is not a node record")]
    NoRecord,
    #[error("node record: {0}")]
    Record(#[from] RecordError),
    #[error("node record names another key than the link's")]
    KeyMismatch,
    #[error("peer is {found:?}, expected {expected:?}")]
    WrongPeer { expected: Address, found: Address },
    #[error("peer is this node itself")]
    SelfLink,
    #[error("link i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("no record in time")]
    Timeout,
    #[error("peer hung up before sending its record (a probe)")]
    HungUp,
}

/// A link whose handshake and record exchange succeeded.
pub struct Established {
    pub stream: TcpStream,
    pub link: Link,
    pub peer: SignedRecord,
    /// A courier link ([`LinkBody::CourierRecord`]): onion packets only,
    /// not a neighbour.
    pub courier: bool,
}

/// Sets up a link on a connected stream: handshake, records, checks.
pub async fn establish(
    stream: TcpStream,
    identity: &Identity,
    my_record: &SignedRecord,
    initiator: bool,
    expected: Option<Address>,
) -> Result<Established, LinkError> {
    establish_as(stream, identity, my_record, initiator, expected, false).await
}

/// [`establish`], as a courier link if `courier` (the dialling side says so
/// in its first frame).
pub async fn establish_as(
    mut stream: TcpStream,
    identity: &Identity,
    my_record: &SignedRecord,
    initiator: bool,
    expected: Option<Address>,
    courier: bool,
) -> Result<Established, LinkError> {
    let mut link = noise::handshake(&mut stream, identity, initiator).await?;
    // Both sides write before they read, so neither waits on the other.
    let body = if courier {
        LinkBody::CourierRecord(my_record.clone())
    } else {
        LinkBody::Record(my_record.clone())
    };
    let first = LinkFrame::new(body).encode()?;
    write_frame(&mut stream, &mut link.send, &first).await?;
    let (peer, peer_courier) =
        read_record(&mut stream, &mut link.recv, &link.remote_static, identity).await?;
    // Only the dialling side may make a link a courier; either way both
    // sides then treat it as one.
    let courier = courier || (!initiator && peer_courier);
    if let Some(expected) = expected {
        if expected != peer.record.address {
            return Err(LinkError::WrongPeer {
                expected,
                found: peer.record.address,
            });
        }
    }
    Ok(Established {
        stream,
        link,
        peer,
        courier,
    })
}

/// Reads and checks the peer's first frame, its signed record, and whether
/// it asks for a courier link.
async fn read_record(
    stream: &mut TcpStream,
    recv: &mut RecvCipher,
    remote_static: &[u8; 32],
    identity: &Identity,
) -> Result<(SignedRecord, bool), LinkError> {
    let plain = match tokio::time::timeout(RECORD_TIMEOUT, read_frame(stream, recv)).await {
        Err(_) => return Err(LinkError::Timeout),
        Ok(Err(LinkError::Io(e))) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(LinkError::HungUp)
        }
        Ok(r) => r?,
    };
    let frame = LinkFrame::decode(&plain)?;
    let (peer, courier) = match frame.body {
        LinkBody::Record(peer) => (peer, false),
        LinkBody::CourierRecord(peer) => (peer, true),
        _ => return Err(LinkError::NoRecord),
    };
    peer.verify(unix_now())?;
    if peer.record.kem_key != *remote_static {
        return Err(LinkError::KeyMismatch);
    }
    if peer.record.address == identity.address() {
        return Err(LinkError::SelfLink);
    }
    Ok((peer, courier))
}

/// Seals one cell and appends it, behind its 2-byte length prefix (always
/// [`CELL_MESSAGE`]), to `out`.
fn seal_cell(
    cipher: &mut SendCipher,
    cell: &cell::Cell,
    out: &mut Vec<u8>,
) -> Result<(), LinkError> {
    let sealed = cipher.encrypt(cell)?;
    let len = u16::try_from(sealed.len()).map_err(|_| CellError::WrongSize(sealed.len()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&sealed);
    Ok(())
}

/// Seals one encoded frame alone, in cells of its own (see
/// [`cell::split`]), in order, appended to `out`.
pub fn seal_frame(
    cipher: &mut SendCipher,
    frame: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), LinkError> {
    out.reserve(cell::cells_for(frame.len()) * CELL_WIRE);
    let mut packer = Packer::new();
    let mut emit = |c: &cell::Cell| seal_cell(cipher, c, out);
    packer.push(frame, &mut emit)?;
    packer.finish(&mut emit)
}

/// Writes one encoded frame alone, in cells of its own (see [`seal_frame`]).
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    cipher: &mut SendCipher,
    frame: &[u8],
) -> Result<(), LinkError> {
    let mut out = Vec::new();
    seal_frame(cipher, frame, &mut out)?;
    w.write_all(&out).await?;
    Ok(())
}

/// Reads one cell's Noise message; a length prefix other than
/// [`CELL_MESSAGE`] is refused before anything is read behind it.
pub async fn read_cell<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, LinkError> {
    let mut len = [0u8; 2];
    r.read_exact(&mut len).await?;
    let len = usize::from(u16::from_be_bytes(len));
    if len != CELL_MESSAGE {
        return Err(CellError::WrongSize(len).into());
    }
    let mut msg = vec![0u8; CELL_MESSAGE];
    r.read_exact(&mut msg).await?;
    Ok(msg)
}

/// Reads the frames of one direction of a link one at a time: the frames a
/// cell holds after the one returned wait for the next call.
#[derive(Debug, Default)]
pub struct FrameReader {
    cells: Reassembler,
    ready: VecDeque<Vec<u8>>,
}

impl FrameReader {
    pub fn new() -> FrameReader {
        FrameReader::default()
    }

    /// True if a frame is already read and waits to be taken.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// The next frame: one already read, or from the cells read next.
    pub async fn next<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        cipher: &mut RecvCipher,
    ) -> Result<Vec<u8>, LinkError> {
        loop {
            if let Some(f) = self.ready.pop_front() {
                return Ok(f);
            }
            let msg = read_cell(r).await?;
            let mut frames = Vec::new();
            self.cells.push(&cipher.decrypt(&msg)?, &mut frames)?;
            self.ready.extend(frames);
        }
    }
}

/// Reads one frame that comes alone (the record after the handshake): the
/// cell it ends in must hold nothing after it, since the session that reads
/// on starts from a fresh cell.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    cipher: &mut RecvCipher,
) -> Result<Vec<u8>, LinkError> {
    let mut reader = FrameReader::new();
    let frame = reader.next(r, cipher).await?;
    if reader.has_ready() {
        return Err(CellError::NotAlone.into());
    }
    Ok(frame)
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, LinkError> {
    connect_from(addr, None).await
}

/// A socket bound to `ip` (port chosen by the kernel), for dialling `addr`;
/// `None` if the families differ or the address cannot be bound here (an
/// `advertise` address behind NAT): the kernel then picks the source.
fn bound_socket(ip: IpAddr, addr: SocketAddr) -> Option<TcpSocket> {
    if ip.is_unspecified() || ip.is_ipv4() != addr.is_ipv4() {
        return None;
    }
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .ok()?;
    socket.bind(SocketAddr::new(ip, 0)).ok()?;
    Some(socket)
}

/// Connects to `addr`, from `bind` if given and bindable.
async fn connect_from(addr: SocketAddr, bind: Option<IpAddr>) -> Result<TcpStream, LinkError> {
    let connecting = async {
        match bind.and_then(|ip| bound_socket(ip, addr)) {
            Some(socket) => socket.connect(addr).await,
            None => TcpStream::connect(addr).await,
        }
    };
    let stream = tokio::time::timeout(DIAL_TIMEOUT, connecting)
        .await
        .map_err(|_| LinkError::ConnectTimeout(addr))?
        .map_err(|source| LinkError::Connect { addr, source })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Connects to `addr` and sets up a link as the initiator.
pub async fn dial(
    addr: SocketAddr,
    identity: &Identity,
    my_record: &SignedRecord,
) -> Result<Established, LinkError> {
    establish(connect(addr).await?, identity, my_record, true, None).await
}

/// Like [`dial`], with the connection leaving from the IP this node
/// announces (its `advertise` address, else its `listen` IP: the node
/// refuses to start with neither), so that peers see the source the operator
/// chose. If that IP cannot be bound here the kernel chooses.
pub async fn dial_from_own_ip(
    addr: SocketAddr,
    identity: &Identity,
    my_record: &SignedRecord,
) -> Result<Established, LinkError> {
    let bind = Some(my_record.record.listen.ip());
    establish(
        connect_from(addr, bind).await?,
        identity,
        my_record,
        true,
        None,
    )
    .await
}

/// Learns the signed record of whatever node listens at `addr`, then hangs up.
///
/// A probe completes the handshake and reads the peer's record but sends
/// none of its own: the probed node sees the connection end before a record
/// ([`LinkError::HungUp`]), so it never becomes a session, a neighbour, or a
/// link to redial.
pub async fn probe(addr: SocketAddr, identity: &Identity) -> Result<SignedRecord, LinkError> {
    let mut stream = connect(addr).await?;
    let mut link = noise::handshake(&mut stream, identity, true).await?;
    let peer = read_record(&mut stream, &mut link.recv, &link.remote_static, identity).await;
    let _ = stream.shutdown().await;
    peer.map(|(record, _)| record)
}

/// Dials a courier link to `addr` (from this node's own IP, as
/// [`dial_from_own_ip`]): onion packets to a node that is not a neighbour.
pub async fn dial_courier(
    addr: SocketAddr,
    identity: &Identity,
    my_record: &SignedRecord,
    expected: Address,
) -> Result<Established, LinkError> {
    let bind = Some(my_record.record.listen.ip());
    establish_as(
        connect_from(addr, bind).await?,
        identity,
        my_record,
        true,
        Some(expected),
        true,
    )
    .await
}

/// What the writer task is asked to do.
#[derive(Debug)]
pub enum Outgoing {
    /// An encoded [`LinkFrame`].
    Frame(Bytes),
    /// Write what is queued, then close the connection.
    Close,
}

/// How other actors reach a session: the queue to its writer, and its actor.
#[derive(Clone)]
pub struct PeerHandle {
    pub address: Address,
    /// Where the peer listens, as its record says.
    pub listen: SocketAddr,
    pub session_id: u64,
    pub tx: mpsc::Sender<Outgoing>,
    pub session: Addr<PeerSession>,
    /// What may go out on this link ([`LinkBudget::outbound`]), shared by
    /// every holder of the handle.
    pub out: Arc<LinkBudget>,
}

impl PeerHandle {
    /// Queues an encoded frame; false if the peer's queue is full or gone,
    /// or the frame would break the link's outbound budget (dropped).
    pub fn send(&self, frame: Bytes) -> bool {
        self.out.send(frame.len()) && self.tx.try_send(Outgoing::Frame(frame)).is_ok()
    }
}

pub struct PeerSession {
    session_id: u64,
    peer: SignedRecord,
    direction: Direction,
    recv: RecvCipher,
    /// The frame being rebuilt from the cells read so far.
    cells: Reassembler,
    tx: mpsc::Sender<Outgoing>,
    writer: Option<tokio::task::JoinHandle<()>>,
    router: Addr<Router>,
    neighbours: Addr<NeighbourManager>,
    last_heard: Instant,
    log: slog::Logger,
    graceful: bool,
    /// The keepalive ping in flight, and when it was sent.
    ping: Option<(u64, Instant)>,
    budget: LinkBudget,
    out: Arc<LinkBudget>,
    /// How long a peer over budget is refused (for the log line).
    backoff: Duration,
    /// Set once the NeighbourManager has let the session in.
    admitted: bool,
    /// Set once the peer broke a budget: it is cut and banned once only.
    over_budget: bool,
    /// A courier link: onion packets (and pings) only, not a neighbour.
    courier: bool,
    /// An outbound link's entry in the names' live-link map (a push to the
    /// address dialed needs no probe while this session lives).
    _live: Option<super::names::LiveLink>,
}

impl PeerSession {
    /// Starts the session actor for an established link.
    pub fn launch(
        est: Established,
        direction: Direction,
        session_id: u64,
        router: Addr<Router>,
        neighbours: Addr<NeighbourManager>,
        limits: &LimitsConfig,
        log: &slog::Logger,
    ) -> Addr<PeerSession> {
        let budget = LinkBudget::new(limits);
        let out = Arc::new(LinkBudget::outbound(limits));
        let backoff = limits.backoff;
        let Established {
            stream,
            link,
            peer,
            courier,
        } = est;
        let live = match (direction, stream.peer_addr()) {
            (Direction::Out, Ok(dialed)) => {
                Some(super::names::LiveLink::register(dialed, peer.clone()))
            }
            _ => None,
        };
        let (read_half, write_half) = stream.into_split();
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        let log = log.new(slog::o!("peer" => format!("{:?}", peer.record.address), "peer_listen" => peer.record.listen.to_string()));
        let writer = actix_rt::spawn(write_loop(write_half, link.send, rx, log.clone()));
        PeerSession::create(move |ctx| {
            let codec = LengthDelimitedCodec::builder()
                .length_field_type::<u16>()
                .max_frame_length(CELL_MESSAGE)
                .new_codec();
            ctx.add_stream(FramedRead::with_capacity(
                read_half,
                codec,
                READ_BUFFER_BYTES,
            ));
            PeerSession {
                session_id,
                peer,
                direction,
                recv: link.recv,
                cells: Reassembler::new(),
                tx,
                writer: Some(writer),
                router,
                neighbours,
                last_heard: Instant::now(),
                log,
                graceful: false,
                ping: None,
                budget,
                out,
                backoff,
                admitted: false,
                over_budget: false,
                courier,
                _live: live,
            }
        })
    }

    fn send_frame(&self, body: LinkBody) {
        if let Ok(bytes) = LinkFrame::new(body).encode() {
            let _ = self.tx.try_send(Outgoing::Frame(bytes.into()));
        }
    }

    fn cut(&mut self, ctx: &mut Context<Self>, why: &str) {
        slog::info!(self.log, "peer cut off"; "reason" => why);
        ctx.stop();
    }

    /// The peer broke budget `what`: one warning, then the link is cut and
    /// the NeighbourManager refuses the peer for the backoff.
    fn over_budget(&mut self, ctx: &mut Context<Self>, what: &'static str) {
        if std::mem::replace(&mut self.over_budget, true) {
            return;
        }
        slog::warn!(self.log, "peer over budget: link cut, peer refused";
            "budget" => what,
            "backoff" => %humantime::format_duration(self.backoff));
        self.neighbours.do_send(Ban {
            address: self.peer.record.address,
            listen: self.peer.record.listen,
        });
        ctx.stop();
    }

    /// Let in by the NeighbourManager: announce, and start the keepalive.
    fn admitted(&mut self, ctx: &mut Context<Self>) {
        self.admitted = true;
        // At debug: the NeighbourManager's "neighbour up" says it once per
        // source and minute; a stranger with fresh keys can repeat this.
        slog::debug!(self.log, "peer up"; "direction" => self.direction.as_str());
        // A first ping at once, so the round trip is known early.
        let nonce = rand::random();
        self.ping = Some((nonce, Instant::now()));
        self.send_frame(LinkBody::Ping(nonce));
        ctx.run_interval(KEEPALIVE_INTERVAL, |this, ctx| {
            if this.last_heard.elapsed() > KEEPALIVE_TIMEOUT {
                this.cut(ctx, "keepalive timeout");
                return;
            }
            let nonce = rand::random();
            this.ping = Some((nonce, Instant::now()));
            this.send_frame(LinkBody::Ping(nonce));
        });
    }

    fn on_frame(&mut self, frame: LinkFrame, ctx: &mut Context<Self>) {
        if self.courier
            && !matches!(
                frame.body,
                LinkBody::Onion(_) | LinkBody::Ping(_) | LinkBody::Pong(_)
            )
        {
            return self.cut(ctx, "a courier link carries onion packets only");
        }
        match frame.body {
            LinkBody::Record(_) | LinkBody::CourierRecord(_) => {
                self.cut(ctx, "second record on a link")
            }
            LinkBody::Ping(n) => self.send_frame(LinkBody::Pong(n)),
            LinkBody::Pong(n) => {
                if let Some((sent, at)) = self.ping {
                    if sent == n {
                        self.ping = None;
                        let _ = self.neighbours.try_send(LinkRtt {
                            session_id: self.session_id,
                            rtt: at.elapsed(),
                        });
                    }
                }
            }
            body @ (LinkBody::Leaving(_) | LinkBody::Full(_)) => {
                // Sent before the stop, so the manager hears it before the
                // session's end and knows not to redial.
                self.neighbours.do_send(FromPeer {
                    session_id: self.session_id,
                    body,
                });
                self.graceful = true;
                ctx.stop();
            }
            body @ (LinkBody::Records(_) | LinkBody::Gossip(_)) => {
                // Membership traffic is dropped, not queued, under pressure.
                let _ = self.neighbours.try_send(FromPeer {
                    session_id: self.session_id,
                    body,
                });
            }
            body @ (LinkBody::Packet(_) | LinkBody::Receipt(_) | LinkBody::Onion(_)) => {
                // Wait for the router to take it before reading on.
                let msg = Inbound {
                    from: Some(self.peer.record.address),
                    body,
                };
                ctx.wait(self.router.send(msg).into_actor(self).map(|_, _, _| ()));
            }
        }
    }
}

/// The link's writer task: seals queued frames into cells and writes them,
/// a batch of what is waiting per write (see [`WRITE_BATCH_BYTES`]), until
/// the queue closes, a write fails, or [`Outgoing::Close`] (after what was
/// queued before it).
async fn write_loop<W: AsyncWrite + Unpin>(
    mut half: W,
    mut cipher: SendCipher,
    mut rx: mpsc::Receiver<Outgoing>,
    log: slog::Logger,
) {
    let mut buf = Vec::new();
    let mut packer = Packer::new();
    let mut closing = false;
    'link: while !closing {
        let Some(Outgoing::Frame(mut frame)) = rx.recv().await else {
            break;
        };
        buf.clear();
        // This frame, then whatever else is already waiting (up to
        // `WRITE_BATCH_BYTES`), in the order queued, packed into cells, in
        // one write.
        loop {
            if let Err(e) = packer.push(&frame, &mut |c| seal_cell(&mut cipher, c, &mut buf)) {
                slog::warn!(log, "cannot seal frame"; "error" => %e);
                break 'link;
            }
            // The cell begun counts: it goes out with this write.
            let open = if packer.is_empty() { 0 } else { CELL_WIRE };
            if buf.len() + open >= WRITE_BATCH_BYTES {
                break;
            }
            match rx.try_recv() {
                Ok(Outgoing::Frame(f)) => frame = f,
                Ok(Outgoing::Close) => {
                    closing = true;
                    break;
                }
                Err(_) => break,
            }
        }
        if let Err(e) = packer.finish(&mut |c| seal_cell(&mut cipher, c, &mut buf)) {
            slog::warn!(log, "cannot seal frame"; "error" => %e);
            break;
        }
        if let Err(e) = half.write_all(&buf).await {
            slog::debug!(log, "write failed"; "error" => %e);
            break;
        }
    }
    let _ = half.shutdown().await;
}

impl Actor for PeerSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(64);
        let handle = PeerHandle {
            address: self.peer.record.address,
            listen: self.peer.record.listen,
            session_id: self.session_id,
            tx: self.tx.clone(),
            session: ctx.address(),
            out: self.out.clone(),
        };
        let up = SessionUp {
            record: self.peer.clone(),
            direction: self.direction,
            handle,
            courier: self.courier,
        };
        // No frame is read until the manager has answered: a banned peer's
        // frames never reach the Router.
        ctx.wait(
            self.neighbours
                .send(up)
                .into_actor(self)
                .map(|answer, this, ctx| match answer {
                    Ok(true) => this.admitted(ctx),
                    Ok(false) => ctx.stop(),
                    Err(e) => {
                        slog::debug!(this.log, "neighbour manager did not answer"; "error" => %e);
                        ctx.stop();
                    }
                }),
        );
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        if !self.graceful {
            if let Some(w) = self.writer.take() {
                w.abort();
            }
        }
        if !self.admitted {
            // Refused (banned), counted and summarised by the manager.
            slog::debug!(self.log, "peer refused");
            return;
        }
        slog::debug!(self.log, "peer down");
        self.neighbours.do_send(SessionDown {
            session_id: self.session_id,
        });
    }
}

impl StreamHandler<Result<BytesMut, std::io::Error>> for PeerSession {
    fn handle(&mut self, item: Result<BytesMut, std::io::Error>, ctx: &mut Context<Self>) {
        if self.over_budget {
            return;
        }
        let bytes = match item {
            Ok(b) => b,
            Err(e) => return self.cut(ctx, &format!("read: {e}")),
        };
        // The codec refuses a longer prefix before reading it; a shorter one
        // is no cell either.
        if bytes.len() != CELL_MESSAGE {
            return self.cut(
                ctx,
                &format!("bad cell: {}", CellError::WrongSize(bytes.len())),
            );
        }
        if let Err(what) = self.budget.bytes(bytes.len()) {
            return self.over_budget(ctx, what);
        }
        self.last_heard = Instant::now();
        let plain = match self.recv.decrypt(&bytes) {
            Ok(p) => p,
            Err(e) => return self.cut(ctx, &format!("decrypt: {e}")),
        };
        let mut frames = Vec::new();
        if let Err(e) = self.cells.push(&plain, &mut frames) {
            return self.cut(ctx, &format!("bad cell: {e}"));
        }
        // A cell may hold several frames; none is taken once the session
        // is stopping (a frame before cut the link, or said goodbye).
        for frame in frames {
            if ctx.state().stopping() {
                return;
            }
            match LinkFrame::decode(&frame) {
                Ok(frame) => match self.budget.frame(&frame.body) {
                    Ok(()) => self.on_frame(frame, ctx),
                    Err(what) => self.over_budget(ctx, what),
                },
                Err(e) => self.cut(ctx, &format!("bad frame: {e}")),
            }
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        slog::debug!(self.log, "peer closed the connection");
        ctx.stop();
    }
}

/// Asks a session to close. With `farewell`, that frame is written first and
/// the close waits (bounded) for the queue to drain.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Close {
    pub farewell: Option<Bytes>,
}

impl Handler<Close> for PeerSession {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: Close, _ctx: &mut Context<Self>) -> Self::Result {
        self.graceful = true;
        let tx = self.tx.clone();
        let writer = self.writer.take();
        Box::pin(
            async move {
                if let Some(f) = msg.farewell {
                    let _ = tx.send(Outgoing::Frame(f)).await;
                }
                let _ = tx.send(Outgoing::Close).await;
                if let Some(w) = writer {
                    let _ = tokio::time::timeout(CLOSE_DRAIN_TIMEOUT, w).await;
                }
            }
            .into_actor(self)
            .map(|_, _, ctx| ctx.stop()),
        )
    }
}

/// A peer broke a budget kept outside the session (the Router's, for
/// example duplicate-suppression entries per minute): handled like the
/// session's own budgets, logged once, the link cut, the peer refused for
/// `limits.backoff`. `what` names the budget (its `[limits]` key).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct OverBudget {
    pub what: &'static str,
}

impl Handler<OverBudget> for PeerSession {
    type Result = ();

    fn handle(&mut self, msg: OverBudget, ctx: &mut Context<Self>) {
        self.over_budget(ctx, msg.what);
    }
}

/// Shared pieces every link needs: who we are and what we announce. The
/// record is a shared cell: re-signed at run time (a new packet key), it is
/// what the next link and letter carry.
#[derive(Clone)]
pub struct LinkIdentity {
    pub identity: Arc<Identity>,
    pub record: RecordCell,
}

impl LinkIdentity {
    /// This node's address (its identity's public key).
    pub fn address(&self) -> Address {
        self.identity.address()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::noise::MAX_NOISE_MESSAGE;
    use crate::crypto::{unix_now, Identity};
    use crate::wire::link::Gossip;

    #[tokio::test]
    async fn the_writer_packs_what_waits_in_order_in_batches_and_stops_at_close() {
        let (mut a, mut b) = tokio::io::duplex(1 << 22);
        let (ida, idb) = (Identity::generate(), Identity::generate());
        let (la, lb) = tokio::join!(
            noise::handshake(&mut a, &ida, true),
            noise::handshake(&mut b, &idb, false)
        );
        let (la, mut lb) = (la.unwrap(), lb.unwrap());
        // All queued before the writer starts, so it finds them waiting:
        // 40 receipt-sized frames (125 bytes, 127 with the segment header:
        // 32 to a cell), a frame of 3 full cells and 60 bytes, then 40
        // packets of 1,420 bytes (a 1 KiB message: two to a cell).
        let frame = |i: usize, len: usize| -> Vec<u8> {
            (0..len).map(|j| (i * 31 + j) as u8 | 1).collect()
        };
        let mut frames: Vec<Vec<u8>> = (0..40).map(|i| frame(i, 125)).collect();
        frames.push(frame(40, 3 * cell::CELL_PAYLOAD + 60));
        frames.extend((41..81).map(|i| frame(i, 1_420)));
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        for f in &frames {
            tx.try_send(Outgoing::Frame(Bytes::from(f.clone())))
                .unwrap();
        }
        tx.try_send(Outgoing::Close).unwrap();
        // Queued after the close: never written.
        tx.try_send(Outgoing::Frame(Bytes::from_static(b"late")))
            .unwrap();
        let log = slog::Logger::root(slog::Discard, slog::o!());
        let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Counting {
            inner: a,
            writes: writes.clone(),
        };
        write_loop(counted, la.send, rx, log).await;
        // Cells: the small frames take 2 (32 + 8); the long frame does not
        // fit the second's room, so it starts its own: 3 full cells, and its
        // 60-byte tail opens a sixth, which takes 2 packets. That makes 8
        // cells with the one begun, so the first write ends after packet 4
        // alone in cell 8. Then 15 packets in 8 cells per write, twice, and
        // the last 5 in 3 cells: 27 cells in 4 writes, where one frame per
        // cell would take 84.
        let mut wire = Vec::new();
        b.read_to_end(&mut wire).await.unwrap();
        assert_eq!(writes.load(std::sync::atomic::Ordering::Relaxed), 4);
        assert_eq!(wire.len(), 27 * CELL_WIRE);
        let mut r = FrameReader::new();
        let mut wire = std::io::Cursor::new(wire);
        for (i, f) in frames.iter().enumerate() {
            let got = r.next(&mut wire, &mut lb.recv).await.unwrap();
            assert_eq!(&got, f, "frame {i}");
        }
        assert!(!r.has_ready());
        assert_eq!(wire.position() as usize, wire.get_ref().len());
    }

    /// Counts the writes made through it.
    struct Counting<W> {
        inner: W,
        writes: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl<W: AsyncWrite + Unpin> AsyncWrite for Counting<W> {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.writes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
        }
        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    fn limits(f: impl FnOnce(&mut LimitsConfig)) -> LimitsConfig {
        let mut l = LimitsConfig::default();
        f(&mut l);
        l
    }

    fn record() -> SignedRecord {
        let id = Identity::generate();
        SignedRecord::sign(&id, "10.0.0.1:58008".parse().unwrap(), true, unix_now())
    }

    #[test]
    fn frames_beyond_the_burst_break_the_frame_budget() {
        let b = LinkBudget::new(&limits(|l| {
            l.packets_per_sec = 1;
            l.packet_burst = 10;
        }));
        for _ in 0..10 {
            assert_eq!(b.frame(&LinkBody::Ping(1)), Ok(()));
        }
        assert_eq!(b.frame(&LinkBody::Ping(1)), Err(BUDGET_FRAMES));
    }

    #[test]
    fn bytes_are_counted_per_message_and_a_largest_frame_fits() {
        let b = LinkBudget::new(&limits(|l| {
            l.bytes_per_sec = 1024;
            l.byte_burst = 65_535 * 2;
        }));
        assert_eq!(b.bytes(MAX_NOISE_MESSAGE), Ok(()));
        assert_eq!(b.bytes(0), Ok(()));
        assert_eq!(b.bytes(MAX_NOISE_MESSAGE), Ok(()));
        assert_eq!(b.bytes(60_000), Err(BUDGET_BYTES));
    }

    #[test]
    fn a_rate_past_the_limiters_resolution_still_limits() {
        let b = LinkBudget::new(&limits(|l| {
            l.bytes_per_sec = u32::MAX;
            l.byte_burst = 65_535;
        }));
        assert_eq!(b.bytes(65_535), Ok(()));
    }

    #[test]
    fn records_in_every_membership_frame_count() {
        let b = LinkBudget::new(&limits(|l| l.gossip_records_per_min = 40));
        let r = record();
        let gossip = LinkBody::Gossip(Gossip {
            neighbours: Vec::new(),
            records: vec![r.clone(); 16],
        });
        assert_eq!(b.frame(&gossip), Ok(()));
        assert_eq!(b.frame(&LinkBody::Records(vec![r.clone(); 16])), Ok(()));
        // Neighbour lists alone are no records.
        assert_eq!(b.frame(&LinkBody::Gossip(Gossip::default())), Ok(()));
        assert_eq!(
            b.frame(&LinkBody::Full(vec![r.clone(); 16])),
            Err(BUDGET_GOSSIP)
        );
        let small = LinkBudget::new(&limits(|l| l.gossip_records_per_min = 1));
        // The burst always holds one full frame.
        assert_eq!(
            small.frame(&LinkBody::Leaving(vec![r; MAX_RECORDS_PER_FRAME])),
            Ok(())
        );
    }

    #[test]
    fn what_a_node_sends_fits_what_its_peer_accepts() {
        let l = limits(|l| {
            l.packets_per_sec = 100;
            l.packet_burst = 400;
            l.bytes_per_sec = 65_536;
            l.byte_burst = 65_535;
        });
        // Frames: 3/4 of the packet burst go out, each counted once
        // however many cells it takes (the byte budget is out of the way).
        let frames = limits(|f| {
            *f = l.clone();
            f.bytes_per_sec = u32::MAX;
            f.byte_burst = u32::MAX;
        });
        let out = LinkBudget::outbound(&frames);
        let inbound = LinkBudget::new(&frames);
        let mut sent = 0;
        for _ in 0..1_000 {
            if out.send(2 * cell::CELL_PAYLOAD) {
                sent += 1;
                for _ in 0..2 {
                    assert_eq!(inbound.bytes(CELL_MESSAGE), Ok(()));
                }
                assert_eq!(inbound.frame(&LinkBody::Ping(0)), Ok(()));
            }
        }
        assert!((300..=310).contains(&sent), "{sent} frames let out");
        // Bytes: every cell is counted whole, padding included, and what
        // goes out passes the peer's byte budget.
        let out = LinkBudget::outbound(&l);
        let inbound = LinkBudget::new(&l);
        let mut cells = 0;
        for _ in 0..1_000 {
            if out.send(100) {
                cells += 1;
                assert_eq!(inbound.bytes(CELL_MESSAGE), Ok(()));
            }
        }
        // The outbound burst is at least one largest frame (15 cells).
        assert!(
            (15..=17).contains(&cells),
            "{cells} one-cell frames let out"
        );
        // A largest frame still goes out.
        let big = LinkBudget::outbound(&l);
        assert!(big.send(MAX_LINK_FRAME));
        assert!(cell::message_bytes(MAX_LINK_FRAME) <= MAX_NOISE_MESSAGE);
    }

    #[test]
    fn default_budget_carries_a_busy_honest_link() {
        // 4,000 frames of a few hundred bytes at once (one cell each):
        // within the defaults.
        let b = LinkBudget::new(&LimitsConfig::default());
        for _ in 0..4_000 {
            assert_eq!(b.bytes(CELL_MESSAGE), Ok(()));
            assert_eq!(b.frame(&LinkBody::Ping(0)), Ok(()));
        }
    }

    /// Two ends of a real Noise link over an in-memory pipe.
    async fn linked() -> (tokio::io::DuplexStream, Link, tokio::io::DuplexStream, Link) {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        let (ida, idb) = (Identity::generate(), Identity::generate());
        let (la, lb) = tokio::join!(
            noise::handshake(&mut a, &ida, true),
            noise::handshake(&mut b, &idb, false)
        );
        (a, la.unwrap(), b, lb.unwrap())
    }

    #[tokio::test]
    async fn frames_of_every_size_are_sealed_in_cells_of_one_size() {
        let (_a, mut la, _b, _lb) = linked().await;
        for len in [1, 12, 4_100, cell::CELL_PAYLOAD + 1, MAX_LINK_FRAME] {
            let frame: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            let mut wire = Vec::new();
            seal_frame(&mut la.send, &frame, &mut wire).unwrap();
            assert_eq!(wire.len(), cell::cells_for(len) * CELL_WIRE, "len {len}");
            for msg in wire.chunks(CELL_WIRE) {
                assert_eq!(
                    usize::from(u16::from_be_bytes([msg[0], msg[1]])),
                    CELL_MESSAGE
                );
            }
        }
    }

    #[tokio::test]
    async fn frames_round_trip_and_a_message_of_another_size_is_refused() {
        let (mut a, mut la, mut b, mut lb) = linked().await;
        for len in [1, 4_100, MAX_LINK_FRAME] {
            let frame = vec![len as u8; len];
            write_frame(&mut a, &mut la.send, &frame).await.unwrap();
            assert_eq!(read_frame(&mut b, &mut lb.recv).await.unwrap(), frame);
        }
        assert!(matches!(
            write_frame(&mut a, &mut la.send, &vec![0; MAX_LINK_FRAME + 1]).await,
            Err(LinkError::Cell(CellError::TooLarge))
        ));
        // Two frames packed into one cell: a reader takes both in turn, but
        // a frame that must come alone (the record) may not share its cell.
        let mut wire = Vec::new();
        let mut packer = Packer::new();
        let mut emit = |c: &cell::Cell| seal_cell(&mut la.send, c, &mut wire);
        for _ in 0..2 {
            packer.push(&[1, 2, 3], &mut emit).unwrap();
            packer.push(&[4, 5], &mut emit).unwrap();
            packer.finish(&mut emit).unwrap();
        }
        assert_eq!(wire.len(), 2 * CELL_WIRE);
        a.write_all(&wire).await.unwrap();
        let mut r = FrameReader::new();
        assert_eq!(r.next(&mut b, &mut lb.recv).await.unwrap(), vec![1, 2, 3]);
        assert!(r.has_ready());
        assert_eq!(r.next(&mut b, &mut lb.recv).await.unwrap(), vec![4, 5]);
        assert!(matches!(
            read_frame(&mut b, &mut lb.recv).await,
            Err(LinkError::Cell(CellError::NotAlone))
        ));
        // A frame in a Noise message of its own length (the old framing).
        let sealed = la.send.encrypt(&[1, 4, 7]).unwrap();
        noise::write_prefixed(&mut a, &sealed).await.unwrap();
        assert!(matches!(
            read_frame(&mut b, &mut lb.recv).await,
            Err(LinkError::Cell(CellError::WrongSize(19)))
        ));
    }
}
