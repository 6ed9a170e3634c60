//! The daemon: opens the store, binds the sockets, starts the actors under
//! their supervisors, and shuts down in a fixed order.
//!
//! Start-up order: the umask is set to 0077 (every file the daemon creates
//! is 0600, every dir 0700); the data dir is made 0700 (refused if group or
//! others may write it); the identity key is loaded, or created only in a
//! data dir with no store and no manifest (a store without its key means the
//! identity is lost: refused); the store is opened and proved intact
//! (`store::check`; refused if not), and tied to the key's address.
//! The packet keys (`<data_dir>/packet.keys`) are loaded and brought up to
//! date (a damaged file is refused with what to do), and the record is signed
//! with the announced key; from then on the KeyRotation actor rotates them
//! on `routing.key_rotation` / `key_grace` and announces each new key.
//!
//! Readiness: once the sockets are bound and the actors started, the daemon
//! logs `ready` and tells a service manager `READY=1` (see [`crate::service`]);
//! it then keeps `STATUS=` up to date with the neighbour count, and warns
//! in the log when it has had no neighbours for a while, naming the bootstrap
//! addresses and their last errors.
//!
//! SIGHUP reloads the config file: `log.level` and `network.bootstrap` take
//! effect at once (new bootstrap addresses are dialled once and shown by
//! `status`; the Membership's redials keep the list it started with); changes to other keys
//! are logged as needing a restart. A config that no longer loads is
//! logged and the running one kept.
//!
//! Shutdown order (on SIGTERM or SIGINT; `STOPPING=1` first):
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
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::net::{TcpListener, UnixListener};

use crate::actors::client_session::{no_neighbours_warning, ClientDeps, NodeInfo};
use crate::actors::inbox::Inbox;
use crate::actors::keys::KeyRotation;
use crate::actors::listener::{Listener, StopAccepting};
use crate::actors::neighbours::{
    GetBootstrap, GetNeighbours, Leave, NeighbourManager, SetBootstrap,
};
use crate::actors::peer_session::LinkIdentity;
use crate::actors::router::{Router, RouterConfig, SetLimits};
use crate::config::{Config, ConfigError, LiveLimits};
use crate::crypto::identity::IDENTITY_FILE;
use crate::crypto::keyring::{Announced, PacketKeys};
use crate::crypto::{unix_now, AnnouncedKey, Identity, IdentityError, SignedRecord};
use crate::logging::LevelHandle;
use crate::service::{status_line, Notifier};
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
    #[error(transparent)]
    PacketKeys(#[from] crate::crypto::keyring::KeyringError),
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

/// How often the neighbour count is checked (for `STATUS=` and the warning).
pub const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// How long a node may run without neighbours before the log warns.
pub const NO_NEIGHBOURS_GRACE: Duration = Duration::from_secs(5);
/// How often the "no neighbours" warning repeats while it holds.
pub const NO_NEIGHBOURS_REPEAT: Duration = Duration::from_secs(60);

/// What the daemon needs besides its config to run as a service.
pub struct Service {
    /// The log level in force; a reload changes it.
    pub level: LevelHandle,
    /// Loads the config again, as at start (SIGHUP).
    pub reload: Box<dyn Fn() -> Result<Config, ConfigError>>,
}

impl Service {
    /// A service whose reload gives back `config` unchanged (tests, tools).
    pub fn fixed(config: &Config) -> Service {
        let c = config.clone();
        Service {
            level: LevelHandle::new(config.log.level),
            reload: Box::new(move || Ok(c.clone())),
        }
    }
}

/// Replay tags kept per packet key by default (`limits.replay_tags_per_key`
/// sets it): at 3/4 of it the key rotation makes a new key early; a key that
/// is full drops packets to it (fail closed). At about 72 bytes each on disk,
/// 4 keys' worth is at most ~290 MB. A day's key at 10 packets/s is 864,000.
pub use crate::store::replay::REPLAY_TAGS_PER_KEY;

/// A packet key as the signed record announces it.
pub fn announce(a: Announced) -> AnnouncedKey {
    AnnouncedKey {
        epoch: a.epoch,
        public: a.public,
        not_before: a.not_before,
        not_after: a.not_after,
    }
}

/// Most malloc arenas the daemon keeps (glibc's default is 8 per core). A
/// node's threads (the actix system, the crypto pool, sled's pool, the
/// store writer, the logger) each take an arena of their own once they
/// contend, and each arena keeps the memory freed in it for itself: under
/// the bench's flood on 2 cores the sender's peak RSS was 64-70 MiB with
/// the default, 56 with 4 arenas and 51-54 with 2, for 1-2% more CPU per
/// message (docs/benchmarks.md).
pub const MAX_MALLOC_ARENAS: usize = 4;

/// The arenas for this machine: one per core, at least 2 and at most
/// [`MAX_MALLOC_ARENAS`].
pub fn malloc_arenas(cores: usize) -> usize {
    cores.clamp(2, MAX_MALLOC_ARENAS)
}

/// Limits glibc's malloc arenas ([`malloc_arenas`]), unless the operator
/// set them (`MALLOC_ARENA_MAX`, or any `GLIBC_TUNABLES`). Call it first in
/// the daemon, before its threads start. Elsewhere than glibc, nothing.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("MALLOC_ARENA_MAX").is_some()
            || std::env::var_os("GLIBC_TUNABLES").is_some()
        {
            return;
        }
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let arenas = libc::c_int::try_from(malloc_arenas(cores)).unwrap_or(2);
        // SAFETY: mallopt only changes the allocator's tuning; its result
        // (0 if refused) leaves the default, which is what a refusal means.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) };
    }
}

/// Runs a node until SIGTERM/SIGINT, then leaves gracefully. Must be called
/// inside an actix `System`.
pub async fn run(config: Config, log: slog::Logger, service: Service) -> Result<(), NodeError> {
    use tokio::signal::unix::{signal, SignalKind};
    // Handlers first, so a signal during start-up is not fatal.
    let mut term = signal(SignalKind::terminate()).map_err(NodeError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(NodeError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(NodeError::Signals)?;
    let started = Instant::now();
    let notifier = Notifier::from_env();

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
    // The packet keys (onion routing): a damaged key file stops the daemon
    // here with what to do. Replay tags of keys deleted meanwhile go with them.
    let (keys, rotation) = PacketKeys::open(data_dir, config.routing.key_schedule(), unix_now())?;
    let keys = Arc::new(keys);
    let replay = Arc::new(store.replay_tags(config.limits.replay_tags_per_key)?);
    let held = keys.epochs();
    for epoch in replay.epochs() {
        if !held.contains(&epoch) {
            replay.drop_epoch(epoch)?;
        }
    }
    if let Some(epoch) = rotation.created {
        slog::info!(log, "new packet key"; "epoch" => epoch);
    }
    let packet_key = keys.announced(unix_now()).map(announce);
    let record = SignedRecord::sign_with_key(
        &identity,
        advertised,
        config.node.relay,
        unix_now(),
        packet_key,
    );
    let me = LinkIdentity {
        identity: identity.clone(),
        record: crate::crypto::RecordCell::new(record),
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
            mode: config.routing.mode,
            hops: config.routing.hops,
        };
        let onion = crate::actors::router::OnionParts {
            keys: keys.clone(),
            replay: replay.clone(),
        };
        Supervisor::start(move |_| Router::new(me, store, inbox, cfg.clone(), onion.clone(), &log))
    };
    let live = Live {
        router: router.clone(),
        limits: LiveLimits::new(config.limits.clone()),
    };
    let limits = live.limits.clone();
    let neighbours = {
        let (me, store, router, log) = (me.clone(), store.clone(), router.clone(), log.clone());
        let net = config.network.clone();
        let limits = limits.clone();
        Supervisor::start(move |_| NeighbourManager::new(me, store, router, net, limits, &log))
    };
    // The packet keys' one writer: rotates them on schedule and announces
    // each new key through the NeighbourManager.
    let _keys = {
        let (me, keys, replay) = (me.clone(), keys.clone(), replay.clone());
        let (neighbours, log) = (neighbours.clone(), log.clone());
        Supervisor::start(move |_| KeyRotation::new(me, keys, replay, neighbours, &log))
    };
    let deps = ClientDeps {
        me: me.clone(),
        store: store.clone(),
        router,
        inbox,
        neighbours: neighbours.clone(),
        faults: std::env::var(FAULT_INJECTION_ENV).is_ok_and(|v| v == "1"),
        log: log.new(slog::o!("actor" => "client")),
        info: Arc::new(NodeInfo {
            started,
            config_file: config.source.clone(),
            data_dir: data_dir.clone(),
            level: service.level.clone(),
        }),
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

    slog::info!(log, "ready"; "notify_socket" => notifier.enabled());
    notify(&notifier, &log, &format!("READY=1\n{}", status_line(0)));

    let mut config = config;
    let mut tick = tokio::time::interval(STATUS_INTERVAL);
    let mut shown = 0usize;
    let mut warned: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = term.recv() => {
                slog::info!(log, "SIGTERM: leaving");
                break;
            }
            _ = int.recv() => {
                slog::info!(log, "SIGINT: leaving");
                break;
            }
            _ = hup.recv() => {
                notify(&notifier, &log, &format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
                reload(&mut config, &service, &neighbours, &live, &log);
                notify(&notifier, &log, &format!("READY=1\n{}", status_line(shown)));
            }
            _ = tick.tick() => {
                // Bounded, so a busy neighbour manager never holds up a signal.
                let asked = tokio::time::timeout(STATUS_INTERVAL, neighbours.send(GetNeighbours));
                let Ok(Ok(now)) = asked.await else { continue };
                if now.len() != shown {
                    shown = now.len();
                    notify(&notifier, &log, &status_line(shown));
                }
                if shown > 0 {
                    warned = None;
                } else if started.elapsed() >= NO_NEIGHBOURS_GRACE
                    && warned.is_none_or(|t| t.elapsed() >= NO_NEIGHBOURS_REPEAT)
                {
                    let bootstrap = tokio::time::timeout(STATUS_INTERVAL, neighbours.send(GetBootstrap))
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .unwrap_or_default();
                    slog::warn!(log, "{}", no_neighbours_warning(&bootstrap));
                    warned = Some(Instant::now());
                }
            }
        }
    }
    notify(&notifier, &log, "STOPPING=1");

    // The shutdown order of the module doc.
    let _ = listener.send(StopAccepting).await;
    let _ = std::fs::remove_file(&socket_path);
    let _ = neighbours.send(Leave).await;
    store.flush().await?;
    slog::info!(log, "node stopped");
    Ok(())
}

/// CLOCK_MONOTONIC in microseconds, as systemd wants it beside `RELOADING=1`.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000) + ts.tv_nsec as u64 / 1_000
}

/// Sends one `sd_notify` message; a failure is logged, never fatal.
fn notify(notifier: &Notifier, log: &slog::Logger, state: &str) {
    if let Err(e) = notifier.notify(state) {
        slog::warn!(log, "{}", e);
    }
}

/// SIGHUP: loads the config again and applies what can change while the
/// node runs; logs what it did, and what needs a restart.
/// What a reload changes besides the log level and the bootstrap list.
struct Live {
    router: Addr<Router>,
    limits: LiveLimits,
}

fn reload(
    current: &mut Config,
    service: &Service,
    neighbours: &Addr<NeighbourManager>,
    live: &Live,
    log: &slog::Logger,
) {
    let new = match (service.reload)() {
        Ok(c) => c,
        Err(e) => {
            slog::error!(log, "SIGHUP: the config does not load; the running one stays"; "error" => %e);
            return;
        }
    };
    let mut applied = Vec::new();
    if new.log.level != current.log.level {
        service.level.set(new.log.level);
        applied.push(format!(
            "log.level {} -> {}",
            current.log.level, new.log.level
        ));
        current.log.level = new.log.level;
    }
    if new.network.bootstrap != current.network.bootstrap {
        let list = |v: &[SocketAddr]| {
            v.iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        };
        applied.push(format!(
            "network.bootstrap [{}] -> [{}]",
            list(&current.network.bootstrap),
            list(&new.network.bootstrap)
        ));
        neighbours.do_send(SetBootstrap(new.network.bootstrap.clone()));
        current.network.bootstrap = new.network.bootstrap.clone();
    }
    // Read at start only (the replay store's capacity); compared before
    // the live limits take the new value.
    let replay_tags_changed = new.limits.replay_tags_per_key != current.limits.replay_tags_per_key;
    if new.limits != current.limits {
        live.limits.set(new.limits.clone());
        live.router.do_send(SetLimits {
            max_ttl: new.limits.max_ttl,
            new_entries_per_min: new.limits.new_entries_per_min,
        });
        applied
            .push("[limits] (for new links and handshakes; links already up keep theirs)".into());
        current.limits = new.limits.clone();
    }
    let mut restart = Vec::new();
    let mut later = |changed: bool, what: &'static str| {
        if changed {
            restart.push(what)
        }
    };
    later(new.node != current.node, "[node]");
    later(replay_tags_changed, "limits.replay_tags_per_key");
    later(
        new.network.min_neighbours != current.network.min_neighbours
            || new.network.max_neighbours != current.network.max_neighbours,
        "network.min_neighbours/max_neighbours",
    );
    later(new.routing != current.routing, "[routing]");
    later(new.client != current.client, "[client]");
    later(new.log.format != current.log.format, "log.format");
    slog::info!(log, "SIGHUP: config reloaded";
        "file" => new.source_label(),
        "applied" => if applied.is_empty() { "nothing changed".to_string() } else { applied.join("; ") },
        "needs_restart" => restart.join(", "));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malloc_arenas_are_one_per_core_within_two_and_four() {
        assert_eq!(malloc_arenas(1), 2);
        assert_eq!(malloc_arenas(2), 2);
        assert_eq!(malloc_arenas(3), 3);
        assert_eq!(malloc_arenas(64), MAX_MALLOC_ARENAS);
    }
}
