//! ClientSession: serves one local client connection (`hermes push`, `pull`,
//! `status`, `id`, `peers`, `contacts`, `outbox`, `store backup`) over the
//! Unix socket, then ends. Requests are answered in order; pushes may be
//! pipelined (up to [`PIPELINE`] in flight), every other request is handled
//! on its own.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::stream::FuturesOrdered;
use futures::{SinkExt, StreamExt};
use tokio::net::UnixStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use super::inbox::{Confirm, Inbox, Pull};
use super::listener::Listener;
use super::names;
use super::neighbours::{GetBootstrap, GetNeighbours, GetPeers, NeighbourManager};
use super::peer_session::LinkIdentity;
use super::router::{CancelOutbox, LearnedRecord, Push, PushError, Pushed, Router, WaitDelivered};
use super::{FaultKind, InjectFault};
use crate::logging::LevelHandle;
use crate::store::{Counter, Store};
use crate::wire::client::{
    self, BackupReport, BootstrapStatus, Counters, OutboxCounts, OutboxItem, Request, Response,
    StatusReport, MAX_CLIENT_FRAME, MAX_OUTBOX_LIST, MAX_PULL_BATCH,
};
use crate::wire::MessageId;

/// A client idle for this long between requests is dropped.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Pushes of one connection handled at the same time (answered in order).
pub const PIPELINE: usize = 64;
/// Longest `push --wait` the daemon honours.
pub const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

/// What a client session (and the legacy protocol) needs of the node.
#[derive(Clone)]
pub struct ClientDeps {
    pub me: LinkIdentity,
    pub store: Store,
    pub router: Addr<Router>,
    pub inbox: Addr<Inbox>,
    pub neighbours: Addr<NeighbourManager>,
    /// `HERMES_FAULT_INJECTION=1`: honour `Fault` requests (tests only).
    pub faults: bool,
    pub log: slog::Logger,
    /// What `status` says about the daemon itself.
    pub info: Arc<NodeInfo>,
}

/// The daemon's own facts for `status`.
pub struct NodeInfo {
    pub started: Instant,
    /// The config file read; none for the built-in defaults.
    pub config_file: Option<PathBuf>,
    pub data_dir: PathBuf,
    /// `log.level` in force (changed by a SIGHUP reload).
    pub level: LevelHandle,
}

/// The warning for a node without neighbours: which bootstrap addresses it
/// tries and how the last dial of each went, or that it has none.
pub fn no_neighbours_warning(bootstrap: &[BootstrapStatus]) -> String {
    if bootstrap.is_empty() {
        return "no neighbours, and no bootstrap address (network.bootstrap, or `hermes daemon ADDR`): \
                this node waits for another node to dial it"
            .to_string();
    }
    let tried: Vec<String> = bootstrap
        .iter()
        .map(|b| match &b.last_error {
            Some(e) => format!("{} (last error: {e})", b.address),
            None => format!("{} (no failed dial yet)", b.address),
        })
        .collect();
    format!("no neighbours; bootstrap: {}", tried.join(", "))
}

pub struct ClientSession {
    stream: Option<UnixStream>,
    deps: ClientDeps,
    listener: Addr<Listener>,
    _permit: OwnedSemaphorePermit,
}

impl ClientSession {
    pub fn new(
        stream: UnixStream,
        deps: ClientDeps,
        listener: Addr<Listener>,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        ClientSession {
            stream: Some(stream),
            deps,
            listener,
            _permit: permit,
        }
    }
}

impl Actor for ClientSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let Some(stream) = self.stream.take() else {
            return ctx.stop();
        };
        let deps = self.deps.clone();
        let listener = self.listener.clone();
        ctx.spawn(
            serve(stream, deps, listener)
                .into_actor(self)
                .map(|_, _, ctx| ctx.stop()),
        );
    }
}

async fn serve(stream: UnixStream, deps: ClientDeps, listener: Addr<Listener>) {
    let codec = LengthDelimitedCodec::builder()
        .max_frame_length(MAX_CLIENT_FRAME)
        .new_codec();
    let (mut sink, mut frames) = Framed::new(stream, codec).split();
    // Pushes are answered in order but handled together (up to PIPELINE at
    // a time), so a client that writes ahead (`push --each-line`) gets its
    // messages onto disk in shared flushes. Any other request waits until
    // the pushes before it are answered.
    let mut pushes = FuturesOrdered::new();
    loop {
        let next = tokio::select! {
            biased;
            Some(response) = pushes.next(), if !pushes.is_empty() => {
                if !reply(&mut sink, &response).await {
                    return;
                }
                continue;
            }
            next = tokio::time::timeout(IDLE_TIMEOUT, frames.next()), if pushes.len() < PIPELINE => next,
        };
        let bytes = match next {
            Ok(Some(Ok(b))) => b,
            Ok(Some(Err(e))) => {
                slog::info!(deps.log, "bad client frame"; "error" => %e);
                return;
            }
            Ok(None) => break,
            Err(_) if pushes.is_empty() => return,
            Err(_) => continue,
        };
        let req = client::decode::<Request>(&bytes).map_err(|e| {
            slog::info!(deps.log, "bad client request"; "error" => %e);
            Response::Error {
                code: 1,
                message: format!("bad request: {e}"),
            }
        });
        if let Ok(req) = &req {
            slog::debug!(deps.log, "client request"; "request" => request_name(req));
        }
        match req {
            Ok(Request::Push { to, text }) => {
                pushes.push_back(push(&deps, to, text));
            }
            other => {
                while let Some(response) = pushes.next().await {
                    if !reply(&mut sink, &response).await {
                        return;
                    }
                }
                let response = match other {
                    Ok(req) => answer(req, &deps, &listener).await,
                    Err(bad) => bad,
                };
                if !reply(&mut sink, &response).await {
                    return;
                }
            }
        }
    }
    // The client closed its side: answer what it sent.
    while let Some(response) = pushes.next().await {
        if !reply(&mut sink, &response).await {
            return;
        }
    }
}

/// Sends one response; false if the client is gone.
async fn reply<S>(sink: &mut S, response: &Response) -> bool
where
    S: futures::Sink<bytes::Bytes> + Unpin,
{
    let Ok(out) = client::encode(response) else {
        return false;
    };
    sink.send(bytes::Bytes::from(out)).await.is_ok()
}

async fn push(deps: &ClientDeps, to: String, text: String) -> Response {
    match deps.router.send(Push { to, text }).await {
        Ok(Ok(Pushed { id, warning: None })) => Response::Pushed { id },
        Ok(Ok(Pushed {
            id,
            warning: Some(warning),
        })) => Response::PushedShort { id, warning },
        Ok(Err(e)) => refused(e),
        Err(e) => refused(format!("router unavailable: {e}")),
    }
}

/// A request's kind, for the log (never its content: texts stay out of logs).
fn request_name(r: &Request) -> &'static str {
    match r {
        Request::Push { .. } => "push",
        Request::Wait { .. } => "wait",
        Request::Pull { .. } => "pull",
        Request::Confirm { .. } => "confirm",
        Request::Status => "status",
        Request::Id => "id",
        Request::Fault { .. } => "fault",
        Request::Peers => "peers",
        Request::ContactAdd { .. } => "contact add",
        Request::Contacts => "contacts",
        Request::ContactRemove { .. } => "contact remove",
        Request::Backup { .. } => "backup",
        Request::Outbox { .. } => "outbox",
        Request::OutboxCancel { .. } => "outbox cancel",
        Request::Peek { .. } => "peek",
    }
}

fn refused(e: impl std::fmt::Display) -> Response {
    Response::Error {
        code: 1,
        message: e.to_string(),
    }
}

async fn answer(req: Request, deps: &ClientDeps, listener: &Addr<Listener>) -> Response {
    match req {
        Request::Push { to, text } => push(deps, to, text).await,
        Request::Wait { id, timeout_ms } => {
            let timeout = Duration::from_millis(timeout_ms).min(MAX_WAIT);
            match deps.router.send(WaitDelivered { id, timeout }).await {
                Ok(Ok(true)) => Response::Delivered,
                Ok(Ok(false)) => Response::TimedOut,
                Ok(Err(PushError::Restarted)) | Err(_) => {
                    refused("the router restarted while waiting; wait again")
                }
                Ok(Err(e)) => refused(e),
            }
        }
        Request::Pull { max } => {
            let max = (max as usize).clamp(1, MAX_PULL_BATCH);
            match deps.inbox.send(Pull { max }).await {
                Ok(Ok(msgs)) => Response::Messages(msgs),
                Ok(Err(e)) => refused(e),
                Err(e) => refused(format!("inbox unavailable: {e}")),
            }
        }
        Request::Confirm { ids } => match deps.inbox.send(Confirm { ids }).await {
            Ok(Ok(removed)) => Response::Confirmed { removed },
            Ok(Err(e)) => refused(e),
            Err(e) => refused(format!("inbox unavailable: {e}")),
        },
        Request::Status => match status(deps).await {
            Ok(s) => Response::Status(Box::new(s)),
            Err(e) => refused(e),
        },
        Request::Id => Response::Id {
            address: deps.me.address().to_string(),
        },
        Request::Fault { actor, kind } => fault(deps, listener, &actor, &kind),
        Request::Peers => match deps.neighbours.send(GetPeers).await {
            Ok(mut peers) => {
                // The node's own record lands in the store when it writes
                // to itself; it is not a peer.
                let me = deps.me.address().to_string();
                peers.retain(|p| p.address != me);
                Response::Peers(peers)
            }
            Err(e) => refused(format!("neighbour manager unavailable: {e}")),
        },
        Request::ContactAdd { name, dest } => {
            let book = deps.neighbours.clone();
            let learn = move |rec: &crate::crypto::SignedRecord| {
                book.do_send(LearnedRecord(rec.clone()));
            };
            match names::add_contact(&name, &dest, &deps.store, &deps.me, &learn, &deps.log).await {
                Ok(c) => Response::Contacts(vec![c]),
                Err(e) => refused(e),
            }
        }
        Request::Contacts => match names::list_contacts(&deps.store) {
            Ok(list) => Response::Contacts(list),
            Err(e) => refused(e),
        },
        Request::ContactRemove { name } => match names::remove_contact(&name, &deps.store).await {
            Ok(()) => Response::Done,
            Err(e) => refused(e),
        },
        Request::Backup { path, with_key } => backup(deps, path, with_key).await,
        Request::Outbox { max } => outbox(deps, max).await,
        Request::OutboxCancel { id } => cancel(deps, &id).await,
        Request::Peek { skip, max } => {
            let max = (max as usize).clamp(1, MAX_PULL_BATCH);
            let skip = skip as usize;
            match deps.store.inbox_list(skip.saturating_add(max)) {
                Ok(msgs) => Response::Messages(msgs.into_iter().skip(skip).collect()),
                Err(e) => refused(e),
            }
        }
    }
}

/// `hermes outbox`: what waits, the next due first. The entries are read
/// from the store: on the blocking pool, as `status`'s counts are.
async fn outbox(deps: &ClientDeps, max: u32) -> Response {
    let max = (max as usize).min(MAX_OUTBOX_LIST);
    let store = deps.store.clone();
    let listed = match actix_rt::task::spawn_blocking(move || store.outbox_list(max)).await {
        Ok(r) => r,
        Err(e) => return refused(format!("the outbox listing did not finish: {e}")),
    };
    match listed {
        Ok((total, list)) => Response::Outbox {
            total,
            entries: list
                .into_iter()
                .map(|(id, e)| OutboxItem {
                    id: id.to_string(),
                    to: e.recipient.to_string(),
                    state: if e.attempts == 0 {
                        "queued"
                    } else {
                        "in flight"
                    }
                    .to_string(),
                    attempts: e.attempts,
                    created_ms: e.created_ms,
                    next_try_ms: e.next_try_ms,
                    expires_at: e.expires_at,
                })
                .collect(),
        },
        Err(e) => refused(e),
    }
}

/// `hermes outbox cancel ID`: through the Router (it owns the outbox and
/// the waiters), then flushed so the cancel outlives a crash.
async fn cancel(deps: &ClientDeps, id: &str) -> Response {
    let Ok(msg_id) = id.trim().parse::<MessageId>() else {
        return refused(format!(
            "{id:?} is not a message id (32 hex digits, as `hermes push` prints it)"
        ));
    };
    match deps.router.send(CancelOutbox { id: msg_id }).await {
        Ok(Ok(true)) => match deps.store.flush().await {
            Ok(()) => Response::Done,
            Err(e) => refused(e),
        },
        Ok(Ok(false)) => refused(format!(
            "no message {msg_id} in the outbox (delivered, failed or cancelled already?)"
        )),
        Ok(Err(e)) => refused(e),
        Err(e) => refused(format!("router unavailable: {e}")),
    }
}

/// `hermes store backup`: flush, copy the store into a fresh one at `path`
/// (on the blocking pool: it writes and fsyncs), and the key if asked.
async fn backup(deps: &ClientDeps, path: String, with_key: bool) -> Response {
    let dest = std::path::PathBuf::from(&path);
    if !dest.is_absolute() {
        return refused(format!("{path}: the backup path must be absolute"));
    }
    let store = deps.store.clone();
    let identity = deps.me.identity.clone();
    let job = move || -> Result<BackupReport, String> {
        let c = store.backup_to(&dest).map_err(|e| e.to_string())?;
        if with_key {
            identity.save(&dest).map_err(|e| e.to_string())?;
        }
        Ok(BackupReport {
            path: dest.display().to_string(),
            generation: c.generation,
            inbox: c.inbox,
            outbox: c.outbox,
            drop_list: c.drop,
            peers: c.peers,
            with_key,
        })
    };
    match actix_rt::task::spawn_blocking(job).await {
        Ok(Ok(report)) => {
            slog::info!(deps.log, "store backed up"; "path" => &report.path, "generation" => report.generation);
            Response::BackedUp(report)
        }
        Ok(Err(e)) => refused(format!("backup failed: {e}")),
        Err(e) => refused(format!("backup did not finish: {e}")),
    }
}

async fn status(deps: &ClientDeps) -> Result<StatusReport, String> {
    let neighbours = deps
        .neighbours
        .send(GetNeighbours)
        .await
        .map_err(|e| e.to_string())?;
    let bootstrap = deps
        .neighbours
        .send(GetBootstrap)
        .await
        .map_err(|e| e.to_string())?;
    let mut warnings = Vec::new();
    if neighbours.is_empty() {
        warnings.push(no_neighbours_warning(&bootstrap));
    }
    // The counts are kept in memory by the store (the outbox's by its due
    // index); the blocking pool only because the store's lock may wait for
    // one of the writer's transactions.
    let store = deps.store.clone();
    let (counts, inbox, drop_list) = actix_rt::task::spawn_blocking(move || {
        store
            .outbox_counts()
            .map(|c| (c, store.inbox_len() as u64, store.drop_len() as u64))
    })
    .await
    .map_err(|e| format!("status did not finish: {e}"))?
    .map_err(|e| e.to_string())?;
    let s = &deps.store;
    let c = |k| s.counter(k).map_err(|e| e.to_string());
    Ok(StatusReport {
        address: deps.me.address().to_string(),
        listen: deps.me.record.get().record.listen.to_string(),
        neighbours,
        outbox: OutboxCounts {
            queued: counts.queued,
            in_flight: counts.in_flight,
            delivered: c(Counter::Delivered)?,
            failed: c(Counter::Failed)?,
        },
        inbox,
        drop_list,
        counters: Counters {
            relayed: c(Counter::Relayed)?,
            dropped: c(Counter::Dropped)?,
            retried: c(Counter::Retried)?,
            replays: c(Counter::Replays)?,
        },
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_secs: deps.info.started.elapsed().as_secs(),
        config_file: deps
            .info
            .config_file
            .as_ref()
            .map(|p| p.display().to_string()),
        data_dir: deps.info.data_dir.display().to_string(),
        log_level: deps.info.level.get().as_str().to_string(),
        bootstrap,
        warnings,
    })
}

fn fault(deps: &ClientDeps, listener: &Addr<Listener>, actor: &str, kind: &str) -> Response {
    if !deps.faults {
        return refused("fault injection is off (start the daemon with HERMES_FAULT_INJECTION=1)");
    }
    let kind: FaultKind = match kind.parse() {
        Ok(k) => k,
        Err(e) => return refused(e),
    };
    match actor {
        "router" => deps.router.do_send(InjectFault(kind)),
        "inbox" => deps.inbox.do_send(InjectFault(kind)),
        "neighbours" => deps.neighbours.do_send(InjectFault(kind)),
        "listener" => listener.do_send(InjectFault(kind)),
        other => {
            return refused(format!(
                "unknown actor {other:?} (router | inbox | neighbours | listener)"
            ))
        }
    }
    slog::warn!(deps.log, "fault injected"; "actor" => actor.to_string(), "kind" => kind_name(kind));
    Response::Done
}

fn kind_name(k: FaultKind) -> &'static str {
    match k {
        FaultKind::Panic => "panic",
        FaultKind::Error => "error",
    }
}
