//! The daemon: opens the store, binds the sockets, starts the actors under
//! their supervisors, and shuts down in a fixed order.
//!
//! Start-up order: the umask is set to 0077 (every file the daemon creates
//! is 0600, every dir 0700); the data dir is made 0700 (refused if group or
//! others may write it); the identity key is loaded, or created only in a
//! data dir with no store and no manifest (a store without its key means the
//! identity is lost: refused); the store is opened and proved intact
//! (`store::check`; refused if not), and tied to the key's address.
//!
//! Shutdown order (on SIGTERM or SIGINT):
//! 1. stop accepting: the Listener closes the peer port, the client socket
//!    and the legacy port;
//! 2. tell neighbours: each gets a `Leaving` frame with the records of the
//!    other neighbours, so they can link up with each other;
//! 3. drain: each link's queued frames are written (bounded wait);
//! 4. flush: the store is flushed to disk;
//! 5. exit 0.

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix::prelude::*;
use tokio::net::{TcpListener, UnixListener};

use crate::actors::client_session::ClientDeps;
use crate::actors::inbox::Inbox;
use crate::actors::listener::{Listener, StopAccepting};
use crate::actors::neighbours::{Leave, NeighbourManager};
use crate::actors::peer_session::LinkIdentity;
use crate::actors::router::{Router, RouterConfig};
use crate::config::Config;
use crate::crypto::identity::IDENTITY_FILE;
use crate::crypto::{unix_now, Identity, IdentityError, SignedRecord};
use crate::store::{Opened, Store, StoreError, MANIFEST_FILE};

/// Environment variable that enables the test-only fault-injection requests.
pub const FAULT_INJECTION_ENV: &str = "HERMES_FAULT_INJECTION";

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{path}: cannot create the data dir or set its mode to 0700: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: the data dir has mode {mode:03o}, so others can write it (and replace the node's key or store); chmod 700 it, or choose another node.data_dir")]
    DataDirOpen { path: PathBuf, mode: u32 },
    #[error("{0}: the data dir is not a directory")]
    DataDirNotDir(PathBuf),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("a daemon already answers on {0}")]
    AlreadyRunning(PathBuf),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Runs a node until SIGTERM/SIGINT, then leaves gracefully. Must be called
/// inside an actix `System`.
pub async fn run(config: Config, log: slog::Logger) -> Result<(), NodeError> {
    use tokio::signal::unix::{signal, SignalKind};
    // Handlers first, so a signal during start-up is not fatal.
    let mut term = signal(SignalKind::terminate()).map_err(NodeError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(NodeError::Signals)?;

    // SAFETY: umask only changes this process's file-creation mask.
    unsafe { libc::umask(0o077) };
    let data_dir = &config.node.data_dir;
    create_private_dir(data_dir)?;
    let identity = Arc::new(load_identity(data_dir)?);
    let (store, opened) = Store::open_reporting(data_dir)?;
    store.bind_identity(&identity.address().0, &data_dir.join(IDENTITY_FILE))?;
    match opened {
        Opened::Created => slog::info!(log, "new store created"; "data_dir" => %data_dir.display()),
        Opened::Adopted => {
            slog::warn!(log, "store written by a version without a manifest: taken as it is, and given one"; "data_dir" => %data_dir.display())
        }
        Opened::Existing { generation } => {
            slog::info!(log, "store intact"; "generation" => generation)
        }
    }

    let listen = config.node.listen;
    let peer_listener = TcpListener::bind(listen)
        .await
        .map_err(|source| NodeError::Bind {
            what: "peer address",
            addr: listen.to_string(),
            source,
        })?;
    let advertised = advertise(&config);
    if advertised.ip().is_unspecified() {
        slog::warn!(
            log,
            "no address to announce: set node.advertise (or listen on a specific IP)"
        );
    }
    let record = SignedRecord::sign(&identity, advertised, config.node.relay, unix_now());
    let me = LinkIdentity {
        identity: identity.clone(),
        record: Arc::new(record),
    };

    let socket_path = config.client.socket.clone();
    let client_listener = bind_client_socket(&socket_path)?;
    let legacy = match config.client.legacy_port {
        0 => None,
        port => {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| NodeError::Bind {
                        what: "legacy port",
                        addr: addr.to_string(),
                        source,
                    })?,
            )
        }
    };

    let inbox = {
        let (store, log) = (store.clone(), log.clone());
        Supervisor::start(move |_| Inbox::new(store, &log))
    };
    let router = {
        let (me, store, inbox, log) = (me.clone(), store.clone(), inbox.clone(), log.clone());
        let cfg = RouterConfig {
            ttl: config.routing.ttl,
            relay: config.node.relay,
            retry_max: config.routing.retry_max,
            max_ttl: config.limits.max_ttl,
            new_entries_per_min: config.limits.new_entries_per_min,
        };
        Supervisor::start(move |_| Router::new(me, store, inbox, cfg.clone(), &log))
    };
    let limits = Arc::new(config.limits.clone());
    let neighbours = {
        let (me, store, router, log) = (me.clone(), store.clone(), router.clone(), log.clone());
        let net = config.network.clone();
        let limits = limits.clone();
        Supervisor::start(move |_| NeighbourManager::new(me, store, router, net, limits, &log))
    };
    let deps = ClientDeps {
        me: me.clone(),
        store: store.clone(),
        router,
        inbox,
        neighbours: neighbours.clone(),
        faults: std::env::var(FAULT_INJECTION_ENV).is_ok_and(|v| v == "1"),
        log: log.new(slog::o!("actor" => "client")),
    };
    let listener = {
        let (log, limits) = (log.clone(), limits.clone());
        Supervisor::start(move |_| {
            Listener::new(
                peer_listener,
                client_listener,
                legacy,
                deps,
                limits.clone(),
                &log,
            )
        })
    };
    slog::info!(log, "node started";
        "address" => identity.address().to_string(),
        "listen" => %listen,
        "advertise" => %advertised,
        "data_dir" => %data_dir.display(),
        "socket" => %socket_path.display(),
        "mode" => config.routing.mode.as_str());

    tokio::select! {
        _ = term.recv() => slog::info!(log, "SIGTERM: leaving"),
        _ = int.recv() => slog::info!(log, "SIGINT: leaving"),
    }

    // The shutdown order of the module doc.
    let _ = listener.send(StopAccepting).await;
    let _ = std::fs::remove_file(&socket_path);
    let _ = neighbours.send(Leave).await;
    store.flush().await?;
    slog::info!(log, "node stopped");
    Ok(())
}

/// The address announced in the signed record: `advertise`, else `listen`
/// when it names an IP, else the local address this host would use to reach
/// the first bootstrap node, or (for a first node) any outside address (a
/// UDP "connect" only looks up the route and sends nothing).
fn advertise(config: &Config) -> SocketAddr {
    if let Some(a) = config.node.advertise {
        return a;
    }
    let listen = config.node.listen;
    if !listen.ip().is_unspecified() {
        return listen;
    }
    // TEST-NET-1 (RFC 5737): never routed to anyone, but it picks the
    // interface of the default route.
    let outside = SocketAddr::from(([192, 0, 2, 1], listen.port()));
    let target = config.network.bootstrap.first().copied().unwrap_or(outside);
    match local_ip_towards(target) {
        Some(ip) => SocketAddr::new(ip, listen.port()),
        None => listen,
    }
}

/// The local IP the kernel would use to send to `target`.
fn local_ip_towards(target: SocketAddr) -> Option<std::net::IpAddr> {
    let any: SocketAddr = if target.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let sock = UdpSocket::bind(any).ok()?;
    sock.connect(target).ok()?;
    Some(sock.local_addr().ok()?.ip())
}

/// Loads the identity key; creates it only where there is no store and no
/// manifest (a brand-new data dir), so a lost key is never silently replaced.
fn load_identity(data_dir: &Path) -> Result<Identity, NodeError> {
    if let Some(id) = Identity::load(data_dir)? {
        return Ok(id);
    }
    let store = data_dir.join("store");
    let manifest = data_dir.join(MANIFEST_FILE);
    for held in [&store, &manifest] {
        if held.exists() {
            return Err(IdentityError::Missing {
                path: data_dir.join(IDENTITY_FILE).display().to_string(),
                store: held.display().to_string(),
            }
            .into());
        }
    }
    let id = Identity::generate();
    id.save(data_dir)?;
    Ok(id)
}

/// Creates the data dir (0700), or makes an existing one 0700; refuses one
/// that group or others may write (they could swap the key or the store).
fn create_private_dir(path: &Path) -> Result<(), NodeError> {
    let err = |source| NodeError::DataDir {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::metadata(path) {
        Ok(meta) => {
            if !meta.is_dir() {
                return Err(NodeError::DataDirNotDir(path.to_path_buf()));
            }
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o022 != 0 {
                return Err(NodeError::DataDirOpen {
                    path: path.to_path_buf(),
                    mode,
                });
            }
            if mode != 0o700 {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
                    .map_err(err)?;
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .map_err(err)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
        }
        Err(e) => return Err(err(e)),
    }
    Ok(())
}

/// Binds the client socket with mode 0600. A socket file left by a daemon
/// that died is replaced; one that still answers means a daemon is running.
fn bind_client_socket(path: &Path) -> Result<UnixListener, NodeError> {
    let bind_err = |source| NodeError::Bind {
        what: "client socket",
        addr: path.display().to_string(),
        source,
    };
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(NodeError::AlreadyRunning(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(bind_err)?;
    }
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent).map_err(bind_err)?;
        }
    }
    // Create the socket with no access for others from the first moment,
    // then set the mode explicitly as well.
    // SAFETY: umask only changes this process's file-creation mask.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    unsafe { libc::umask(old) };
    let listener = bound.map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    Ok(listener)
}
