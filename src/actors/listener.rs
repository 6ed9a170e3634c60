//! Listener: accepts peer connections, local client connections and, when
//! configured, the seed's legacy text protocol; hands each to a session.
//!
//! Inbound peer handshakes run as separate tasks, each bounded by the
//! handshake and record timeouts, and each holding a slot of the admission
//! table ([`crate::admission`]): at most `limits.handshakes_per_ip` pending
//! from one source and `limits.handshakes_total` in all. A new connection is
//! never refused for want of a slot: an older pending handshake (its source's
//! own oldest, else the largest holder's oldest) is aborted and its
//! connection closed, so renewed silent connections cannot keep a newcomer
//! out.
//!
//! Every line an unauthenticated remote can cause (accept failures, refused
//! handshakes, probes, dropped pending handshakes) goes through a
//! [`LogLimiter`]: the first per (event, source IP) is logged, the rest are
//! counted, and a summary per source is written every
//! [`SUMMARY_INTERVAL`](crate::logging::SUMMARY_INTERVAL) (checked every
//! [`LOG_FLUSH_INTERVAL`], and at shutdown).
//!
//! The bound sockets are kept in fields, so a restarted Listener re-arms its
//! accept loops on the same sockets; [`StopAccepting`] is the first step of
//! shutdown.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::client_session::{ClientDeps, ClientSession};
use super::legacy_session::serve_legacy;
use super::neighbours::next_session_id;
use super::peer_session::{establish, Direction, LinkError, PeerSession};
use super::{fault_handler, guard};
use crate::admission::{Admission, Source, Ticket};
use crate::config::{LimitsConfig, LiveLimits};
use crate::logging::{log_summary, LogLimiter};

/// Most local client connections served at once.
pub const MAX_CLIENTS: usize = 64;
/// Most legacy-port connections served at once (apart from [`MAX_CLIENTS`]).
pub const MAX_LEGACY_CLIENTS: usize = 16;
/// Pause after a failed accept (e.g. out of file descriptors).
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// How often counted log events are checked for a due summary.
pub const LOG_FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// Events a remote can repeat at will; each is logged once per source and
/// then counted (see [`LogLimiter`]).
pub const EV_ACCEPT_FAILED: &str = "accept failed";
pub const EV_LINK_REFUSED: &str = "inbound link refused";
pub const EV_PROBED: &str = "probed by a peer";
pub const EV_HANDSHAKE_DROPPED: &str = "pending handshake dropped to make room";
pub const EV_CLIENT_ACCEPT_FAILED: &str = "client accept failed";
pub const EV_LEGACY_ACCEPT_FAILED: &str = "legacy accept failed";
pub const EV_TOO_MANY_CLIENTS: &str = "too many clients; connection refused";
pub const EV_LEGACY_OTHER_USER: &str =
    "legacy connection from another user (or one that cannot be told) refused";

/// What the Listener shares with its handshake tasks, which all run on the
/// Listener's own thread (its arbiter): no lock is ever contended.
struct Shared {
    /// Pending inbound handshakes and the tasks running them.
    table: Admission<JoinHandle<()>>,
    logs: LogLimiter,
}

type SharedRef = Rc<RefCell<Shared>>;

/// Counts one remote-triggered event; true if it is to be logged in full.
fn allow(shared: &SharedRef, level: slog::Level, event: &'static str, source: &str) -> bool {
    shared
        .borrow_mut()
        .logs
        .allow(level, event, source, Instant::now())
}

pub struct Listener {
    peer: Option<Arc<TcpListener>>,
    client: Option<Arc<UnixListener>>,
    legacy: Option<Arc<TcpListener>>,
    deps: ClientDeps,
    shared: SharedRef,
    clients: Arc<Semaphore>,
    /// The legacy port's own connection limit.
    legacy_clients: Arc<Semaphore>,
    closing: bool,
    log: slog::Logger,
    /// Parent logger of the inbound sessions.
    session_log: slog::Logger,
    /// Per-peer budgets of the inbound sessions, and the admission bounds.
    limits: LiveLimits,
}

impl Listener {
    pub fn new(
        peer: TcpListener,
        client: UnixListener,
        legacy: Option<TcpListener>,
        deps: ClientDeps,
        limits: LiveLimits,
        log: &slog::Logger,
    ) -> Listener {
        let now = limits.get();
        Listener {
            peer: Some(Arc::new(peer)),
            client: Some(Arc::new(client)),
            legacy: legacy.map(Arc::new),
            deps,
            shared: Rc::new(RefCell::new(Shared {
                table: Admission::new(now.handshakes_per_ip, now.handshakes_total),
                logs: LogLimiter::default(),
            })),
            clients: Arc::new(Semaphore::new(MAX_CLIENTS)),
            legacy_clients: Arc::new(Semaphore::new(MAX_LEGACY_CLIENTS)),
            closing: false,
            log: log.new(slog::o!("actor" => "listener")),
            session_log: log.new(slog::o!("actor" => "session")),
            limits,
        }
    }

    /// Writes the summaries that are due (all of them when `all`).
    fn flush_logs(&mut self, all: bool) {
        let now = Instant::now();
        let summaries = {
            let mut shared = self.shared.borrow_mut();
            if all {
                shared.logs.drain(now)
            } else {
                shared.logs.due(now)
            }
        };
        for s in &summaries {
            log_summary(&self.log, s);
        }
    }
}

/// Runs one inbound handshake holding `ticket`; hands an established link
/// to a new PeerSession.
async fn inbound(
    ticket: Ticket,
    stream: TcpStream,
    remote: SocketAddr,
    deps: ClientDeps,
    shared: SharedRef,
    limits: Arc<LimitsConfig>,
    log: slog::Logger,
) {
    let record = deps.me.record.get();
    let r = establish(stream, &deps.me.identity, &record, false, None).await;
    if shared.borrow_mut().table.finish(ticket).is_none() {
        // Dropped to make room: an aborted task does not run on, so this
        // is only a safeguard.
        return;
    }
    // Counted per admission source (an IPv4 address or an IPv6 /64).
    let ip = Source::of(remote.ip()).to_string();
    match r {
        Ok(est) => {
            PeerSession::launch(
                est,
                Direction::In,
                next_session_id(),
                deps.router,
                deps.neighbours,
                &limits,
                &log,
            );
        }
        Err(LinkError::HungUp) => {
            if allow(&shared, slog::Level::Debug, EV_PROBED, &ip) {
                slog::debug!(log, "{}", EV_PROBED; "remote" => %remote)
            }
        }
        Err(e) => {
            if allow(&shared, slog::Level::Info, EV_LINK_REFUSED, &ip) {
                slog::info!(log, "{}", EV_LINK_REFUSED; "remote" => %remote, "reason" => %e)
            }
        }
    }
}

struct PeerConn(std::io::Result<TcpStream>);
struct ClientConn(std::io::Result<UnixStream>);
struct LegacyConn(std::io::Result<TcpStream>);

fn accepts<L, T, S, F>(
    listener: Arc<L>,
    accept: F,
    wrap: fn(std::io::Result<S>) -> T,
) -> impl futures::Stream<Item = T>
where
    L: 'static,
    F: Fn(Arc<L>) -> futures::future::BoxFuture<'static, std::io::Result<S>> + 'static,
    S: 'static,
{
    futures::stream::unfold((listener, accept), move |(l, accept)| async move {
        let r = accept(l.clone()).await;
        if r.is_err() {
            tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
        }
        Some((wrap(r), (l, accept)))
    })
}

impl Actor for Listener {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.closing {
            return;
        }
        ctx.run_interval(LOG_FLUSH_INTERVAL, |this, _| this.flush_logs(false));
        if let Some(l) = self.peer.clone() {
            ctx.add_stream(accepts(
                l,
                |l: Arc<TcpListener>| Box::pin(async move { l.accept().await.map(|(s, _)| s) }),
                PeerConn,
            ));
        }
        if let Some(l) = self.client.clone() {
            ctx.add_stream(accepts(
                l,
                |l: Arc<UnixListener>| Box::pin(async move { l.accept().await.map(|(s, _)| s) }),
                ClientConn,
            ));
        }
        if let Some(l) = self.legacy.clone() {
            ctx.add_stream(accepts(
                l,
                |l: Arc<TcpListener>| Box::pin(async move { l.accept().await.map(|(s, _)| s) }),
                LegacyConn,
            ));
        }
    }
}

impl Supervised for Listener {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // Stopping is how [`StopAccepting`] drops the accept loops; the
        // supervisor's restart after it is expected and arms nothing.
        if !self.closing {
            slog::warn!(self.log, "listener restarting");
        }
    }
}

impl StreamHandler<PeerConn> for Listener {
    fn handle(&mut self, conn: PeerConn, ctx: &mut Context<Self>) {
        let log = self.log.clone();
        guard(self, ctx, &log, "listener", |this, _| {
            let stream = match conn.0 {
                Ok(s) => s,
                Err(e) => {
                    if allow(&this.shared, slog::Level::Warning, EV_ACCEPT_FAILED, "") {
                        slog::warn!(this.log, "{}", EV_ACCEPT_FAILED; "error" => %e);
                    }
                    return;
                }
            };
            // No address: the connection is already gone.
            let Ok(remote) = stream.peer_addr() else {
                return;
            };
            let _ = stream.set_nodelay(true);
            let (deps, shared, log, limits) = (
                this.deps.clone(),
                this.shared.clone(),
                this.session_log.clone(),
                this.limits.get(),
            );
            this.shared
                .borrow_mut()
                .table
                .set_limits(limits.handshakes_per_ip, limits.handshakes_total);
            let (_, evicted) = this.shared.borrow_mut().table.admit(remote.ip(), |ticket| {
                actix_rt::spawn(inbound(ticket, stream, remote, deps, shared, limits, log))
            });
            if let Some(ev) = evicted {
                // Dropping the task's future closes its connection.
                ev.value.abort();
                this.log_dropped(ev.ip, ev.reason.as_str());
            }
        });
    }

    fn finished(&mut self, _: &mut Context<Self>) {}
}

impl Listener {
    fn log_dropped(&self, ip: IpAddr, reason: &'static str) {
        if allow(
            &self.shared,
            slog::Level::Info,
            EV_HANDSHAKE_DROPPED,
            &Source::of(ip).to_string(),
        ) {
            slog::info!(self.log, "{}", EV_HANDSHAKE_DROPPED; "remote_ip" => %ip, "reason" => reason);
        }
    }
}

impl StreamHandler<ClientConn> for Listener {
    fn handle(&mut self, conn: ClientConn, ctx: &mut Context<Self>) {
        let log = self.log.clone();
        guard(self, ctx, &log, "listener", |this, ctx| {
            let stream = match conn.0 {
                Ok(s) => s,
                Err(e) => {
                    if allow(
                        &this.shared,
                        slog::Level::Warning,
                        EV_CLIENT_ACCEPT_FAILED,
                        "",
                    ) {
                        slog::warn!(this.log, "{}", EV_CLIENT_ACCEPT_FAILED; "error" => %e);
                    }
                    return;
                }
            };
            let Ok(permit) = this.clients.clone().try_acquire_owned() else {
                if allow(
                    &this.shared,
                    slog::Level::Warning,
                    EV_TOO_MANY_CLIENTS,
                    "client socket",
                ) {
                    slog::warn!(this.log, "{}", EV_TOO_MANY_CLIENTS; "on" => "client socket");
                }
                return;
            };
            ClientSession::new(stream, this.deps.clone(), ctx.address(), permit).start();
        });
    }

    fn finished(&mut self, _: &mut Context<Self>) {}
}

impl StreamHandler<LegacyConn> for Listener {
    fn handle(&mut self, conn: LegacyConn, ctx: &mut Context<Self>) {
        let log = self.log.clone();
        guard(self, ctx, &log, "listener", |this, _| {
            let stream = match conn.0 {
                Ok(s) => s,
                Err(e) => {
                    if allow(
                        &this.shared,
                        slog::Level::Warning,
                        EV_LEGACY_ACCEPT_FAILED,
                        "",
                    ) {
                        slog::warn!(this.log, "{}", EV_LEGACY_ACCEPT_FAILED; "error" => %e);
                    }
                    return;
                }
            };
            // Its own limit: idle legacy connections never starve the
            // Unix socket's clients.
            let Ok(permit) = this.legacy_clients.clone().try_acquire_owned() else {
                if allow(
                    &this.shared,
                    slog::Level::Warning,
                    EV_TOO_MANY_CLIENTS,
                    "legacy port",
                ) {
                    slog::warn!(this.log, "{}", EV_TOO_MANY_CLIENTS; "on" => "legacy port");
                }
                return;
            };
            let deps = this.deps.clone();
            let (shared, log) = (this.shared.clone(), this.log.clone());
            actix_rt::spawn(async move {
                let (client, server) = (stream.peer_addr(), stream.local_addr());
                let owner = match (client, server) {
                    (Ok(c), Ok(s)) => {
                        actix_rt::task::spawn_blocking(move || crate::localuser::owner_of(c, s))
                            .await
                            .ok()
                            .flatten()
                    }
                    _ => None,
                };
                if owner == Some(crate::localuser::my_uid()) {
                    serve_legacy(stream, deps).await;
                } else {
                    let who = owner.map_or("unknown".to_string(), |u| u.to_string());
                    if allow(&shared, slog::Level::Warning, EV_LEGACY_OTHER_USER, &who) {
                        slog::warn!(log, "{}", EV_LEGACY_OTHER_USER; "uid" => who);
                    }
                }
                drop(permit);
            });
        });
    }

    fn finished(&mut self, _: &mut Context<Self>) {}
}

/// First step of shutdown: close every listening socket.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopAccepting;

impl Handler<StopAccepting> for Listener {
    type Result = ();
    fn handle(&mut self, _: StopAccepting, ctx: &mut Context<Self>) {
        self.closing = true;
        self.peer = None;
        self.client = None;
        self.legacy = None;
        self.flush_logs(true);
        slog::info!(self.log, "stopped accepting connections");
        ctx.stop();
    }
}

fault_handler!(Listener, "listener");
