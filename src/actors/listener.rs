//! Listener: accepts peer connections, local client connections and, when
//! configured, the seed's legacy text protocol; hands each to a session.
//!
//! Inbound peer handshakes run as separate tasks, at most
//! [`MAX_PENDING_HANDSHAKES`] at once (a flood of half-open connections costs
//! only refused connections), each bounded by the handshake timeout. The
//! bound sockets are kept in fields, so a restarted Listener re-arms its
//! accept loops on the same sockets; [`StopAccepting`] is the first step of
//! shutdown.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::Semaphore;

use super::client_session::{ClientDeps, ClientSession};
use super::legacy_session::serve_legacy;
use super::neighbours::next_session_id;
use super::peer_session::{establish, Direction, LinkError, PeerSession};
use super::{fault_handler, guard};
use crate::config::LimitsConfig;

/// Most inbound handshakes in progress at once.
pub const MAX_PENDING_HANDSHAKES: usize = 64;
/// Most local client connections served at once.
pub const MAX_CLIENTS: usize = 64;
/// Pause after a failed accept (e.g. out of file descriptors).
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

pub struct Listener {
    peer: Option<Arc<TcpListener>>,
    client: Option<Arc<UnixListener>>,
    legacy: Option<Arc<TcpListener>>,
    deps: ClientDeps,
    handshakes: Arc<Semaphore>,
    clients: Arc<Semaphore>,
    closing: bool,
    log: slog::Logger,
    /// Parent logger of the inbound sessions.
    session_log: slog::Logger,
    /// Per-peer budgets of the inbound sessions.
    limits: Arc<LimitsConfig>,
}

impl Listener {
    pub fn new(
        peer: TcpListener,
        client: UnixListener,
        legacy: Option<TcpListener>,
        deps: ClientDeps,
        limits: Arc<LimitsConfig>,
        log: &slog::Logger,
    ) -> Listener {
        Listener {
            peer: Some(Arc::new(peer)),
            client: Some(Arc::new(client)),
            legacy: legacy.map(Arc::new),
            deps,
            handshakes: Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES)),
            clients: Arc::new(Semaphore::new(MAX_CLIENTS)),
            closing: false,
            log: log.new(slog::o!("actor" => "listener")),
            session_log: log.new(slog::o!("actor" => "session")),
            limits,
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
                Err(e) => return slog::warn!(this.log, "accept failed"; "error" => %e),
            };
            let remote = stream
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            let Ok(permit) = this.handshakes.clone().try_acquire_owned() else {
                return slog::warn!(this.log, "too many handshakes in progress; connection refused"; "remote" => remote);
            };
            let _ = stream.set_nodelay(true);
            let deps = this.deps.clone();
            let log = this.session_log.clone();
            let limits = this.limits.clone();
            actix_rt::spawn(async move {
                let r = establish(stream, &deps.me.identity, &deps.me.record, false, None).await;
                drop(permit);
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
                        slog::debug!(log, "probed by a peer"; "remote" => remote)
                    }
                    Err(e) => {
                        slog::info!(log, "inbound link refused"; "remote" => remote, "reason" => %e)
                    }
                }
            });
        });
    }

    fn finished(&mut self, _: &mut Context<Self>) {}
}

impl StreamHandler<ClientConn> for Listener {
    fn handle(&mut self, conn: ClientConn, ctx: &mut Context<Self>) {
        let log = self.log.clone();
        guard(self, ctx, &log, "listener", |this, ctx| {
            let stream = match conn.0 {
                Ok(s) => s,
                Err(e) => return slog::warn!(this.log, "client accept failed"; "error" => %e),
            };
            let Ok(permit) = this.clients.clone().try_acquire_owned() else {
                return slog::warn!(this.log, "too many clients; connection refused");
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
                Err(e) => return slog::warn!(this.log, "legacy accept failed"; "error" => %e),
            };
            let Ok(permit) = this.clients.clone().try_acquire_owned() else {
                return slog::warn!(this.log, "too many clients; connection refused");
            };
            let deps = this.deps.clone();
            actix_rt::spawn(async move {
                serve_legacy(stream, deps).await;
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
        slog::info!(self.log, "stopped accepting connections");
        ctx.stop();
    }
}

fault_handler!(Listener, "listener");
