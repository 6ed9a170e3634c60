//! The typed, validated configuration of a node.
//!
//! Every command (`hermes daemon`, `push`, `pull`, `status`, `id`) reads the
//! same file, so that the client finds the daemon's socket exactly where the
//! daemon put it. This module is the one place that knows where that file is,
//! what its keys mean and which values are acceptable: everything else in the
//! crate works with a [`Config`] whose values are already checked, resolved
//! and typed (socket addresses, absolute paths, durations, enums).
//!
//! # Where the file is looked up
//!
//! [`Config::load`] tries, in order:
//!
//! 1. the explicit path (`--config PATH`): it must exist;
//! 2. `$HERMES_CONFIG`, when set and not empty: it must exist;
//! 3. `$XDG_CONFIG_HOME/hermes/node.toml` when `XDG_CONFIG_HOME` is set (to an
//!    absolute path), else `$HOME/.config/hermes/node.toml`, if that file exists;
//! 4. otherwise the built-in defaults ([`Config::defaults`]): a first node of a
//!    new network.
//!
//! A path that was asked for explicitly (1 and 2) never silently falls back to
//! the defaults: a typo in `--config` would otherwise start a different node.
//!
//! # The file
//!
//! TOML; every key is optional and documented, with its default, in the
//! shipped `config/node.toml`. Unknown keys and bad values are refused with
//! [`ConfigError::Invalid`], whose one-line message names the file, the dotted
//! key and the reason, e.g.
//! `/etc/hermes/node.toml: network.min_neighbours: must not exceed network.max_neighbours (8)`.
//!
//! Relative paths (`node.data_dir`, `client.socket`) are taken from the folder
//! the config file is in; a leading `~/` stands for `$HOME`.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Deserialize;

/// The port a node listens on, and the port assumed for a peer given as a bare IP.
pub const DEFAULT_PORT: u16 = 58008;

/// At most this many bootstrap addresses, from the file and the command line together.
pub const MAX_BOOTSTRAP: usize = 3;

/// A Unix socket path must be shorter than this many bytes (the portable limit
/// of `sockaddr_un.sun_path`, with room for the terminating NUL).
pub const MAX_SOCKET_PATH: usize = 100;

/// The name of the client socket inside `data_dir` when `client.socket` is not set.
pub const DEFAULT_SOCKET_NAME: &str = "hermes.sock";

/// What errors about the built-in defaults name as their "file".
const DEFAULTS_LABEL: &str = "built-in defaults";

/// Fewest replay tags per packet key accepted (`limits.replay_tags_per_key`):
/// fewer would rotate keys on a handful of packets.
pub const MIN_REPLAY_TAGS_PER_KEY: usize = 64;
/// Most replay tags per packet key accepted: 4 keys' worth, at ~72 bytes a
/// tag, is ~29 GB on disk.
pub const MAX_REPLAY_TAGS_PER_KEY: usize = 100_000_000;

/// What errors about command-line bootstrap addresses name as their "file".
const COMMAND_LINE_LABEL: &str = "command line";

const MAX_ONION_HOPS: i64 = crate::crypto::sphinx::MAX_RELAYS as i64;
const MAX_NEIGHBOURS: i64 = 64;
const MIN_TTL: Duration = Duration::from_secs(1);
/// The longest time to live any node accepts: a letter sent longer ago than
/// this is refused, so a delivered mark kept this long stops every replay.
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// The shortest retry ceiling (`routing.retry_max`): the first retry delay.
const MIN_RETRY_MAX: Duration = Duration::from_secs(2);

/// How messages travel through the network (`routing.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutingMode {
    /// Every neighbour passes a message on (the seed's design). The default.
    Flood,
    /// A fresh path of relays per message, each peeling one layer. Refused by
    /// the configuration for now: not available yet in this version.
    Onion,
}

impl RoutingMode {
    /// The value as written in the config file (`"flood"`, `"onion"`).
    pub fn as_str(self) -> &'static str {
        match self {
            RoutingMode::Flood => "flood",
            RoutingMode::Onion => "onion",
        }
    }
}

impl fmt::Display for RoutingMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How log records are written (`log.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines. The default.
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// The value as written in the config file (`"text"`, `"json"`).
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The least severe log records still written (`log.level`), most severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// `"critical"`
    Critical,
    /// `"error"`
    Error,
    /// `"warning"`
    Warning,
    /// `"info"`, the default.
    Info,
    /// `"debug"`
    Debug,
    /// `"trace"`
    Trace,
}

impl LogLevel {
    /// The value as written in the config file (`"critical"` ... `"trace"`).
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Critical => "critical",
            LogLevel::Error => "error",
            LogLevel::Warning => "warning",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The whole configuration of a node, validated and resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `[node]`: this node's own addresses and storage.
    pub node: NodeConfig,
    /// `[network]`: how it joins and keeps its place in the network.
    pub network: NetworkConfig,
    /// `[routing]`: how messages travel.
    pub routing: RoutingConfig,
    /// `[client]`: how local commands reach the daemon.
    pub client: ClientConfig,
    /// `[log]`: what is logged and how.
    pub log: LogConfig,
    /// `[limits]`: per-peer budgets and admission.
    pub limits: LimitsConfig,
    /// The file this was loaded from; None for the built-in defaults.
    pub source: Option<PathBuf>,
}

/// `[node]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// Where peer connections are accepted (`node.listen`, default `0.0.0.0:58008`).
    /// Never port 0: peers must be able to dial the port announced.
    pub listen: SocketAddr,
    /// Identity key and store (`node.data_dir`). Resolved: the default
    /// (`$XDG_DATA_HOME/hermes`, else `$HOME/.local/share/hermes`), or the
    /// configured path taken from the config file's folder when relative.
    /// Absolute unless the config file itself was named by a relative path.
    pub data_dir: PathBuf,
    /// The address announced in this node's signed record (`node.advertise`).
    /// None: the daemon uses `listen` when it names an IP, else the local
    /// address on the route to the first bootstrap node (or the default route). Never an unspecified IP or port 0.
    pub advertise: Option<SocketAddr>,
    /// Whether this node carries other people's messages (`node.relay`, default true).
    pub relay: bool,
}

/// `[network]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// Nodes to contact first (`network.bootstrap`), at most [`MAX_BOOTSTRAP`],
    /// without duplicates. Empty: the first node of a new network.
    pub bootstrap: Vec<SocketAddr>,
    /// Dial more neighbours while fewer than this are connected (default 3).
    pub min_neighbours: usize,
    /// Never keep more neighbours than this (default 8; 1 to 64; `>= min_neighbours`).
    pub max_neighbours: usize,
}

/// `[routing]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingConfig {
    /// How messages travel (default onion; or flood).
    pub mode: RoutingMode,
    /// Relays on an onion path, 1 to 8 (default 3).
    pub hops: u8,
    /// How long an undelivered message is retried, and drop-list entries kept
    /// (default 7 days; 1 second to 30 days).
    pub ttl: Duration,
    /// Erasure-coded shards per message (only 1 for now).
    pub shards: u8,
    /// Shards needed to rebuild a message, `1 <= shards_needed <= shards`.
    pub shards_needed: u8,
    /// The longest wait between two sendings of an undelivered message
    /// (`routing.retry_max`, default 1 hour; 2 seconds to 7 days). Retries
    /// start at 2 s and double up to this.
    pub retry_max: Duration,
    /// How long a packet key is announced before the next replaces it
    /// (`routing.key_rotation`, default 1 day; 1 second to 30 days).
    pub key_rotation: Duration,
    /// How long a replaced packet key still opens packets before it is
    /// deleted (`routing.key_grace`, default 1 hour; at most 3 rotations).
    pub key_grace: Duration,
}

impl RoutingConfig {
    /// The packet-key schedule these settings make (checked at load).
    pub fn key_schedule(&self) -> crate::crypto::keyring::Schedule {
        crate::crypto::keyring::Schedule::new(self.key_rotation.as_secs(), self.key_grace.as_secs())
            .unwrap_or_else(|_| crate::crypto::keyring::Schedule::default_daily())
    }
}

/// The `[limits]` in force, shared by the actors that apply them: every new
/// link and handshake reads them afresh, and a reload (SIGHUP) replaces them.
/// A link already up keeps the budgets it started with.
#[derive(Debug, Clone)]
pub struct LiveLimits(Arc<RwLock<Arc<LimitsConfig>>>);

impl LiveLimits {
    pub fn new(limits: LimitsConfig) -> LiveLimits {
        LiveLimits(Arc::new(RwLock::new(Arc::new(limits))))
    }

    /// The limits in force now.
    pub fn get(&self) -> Arc<LimitsConfig> {
        self.0
            .read()
            .map_or_else(|p| p.into_inner().clone(), |l| l.clone())
    }

    pub fn set(&self, limits: LimitsConfig) {
        let mut l = self.0.write().unwrap_or_else(|p| p.into_inner());
        *l = Arc::new(limits);
    }
}

/// `[limits]`: what one peer may cost this node, and admission of new links.
/// A peer over a budget loses its link and is refused for `backoff`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Packets and receipts a link may bring per second, sustained (default 2,000).
    pub packets_per_sec: u32,
    /// ... and in a burst (default 4,000).
    pub packet_burst: u32,
    /// Bytes of frames a link may bring per second, sustained (default 8 MiB).
    pub bytes_per_sec: u32,
    /// ... and in a burst (default 16 MiB; at least one largest frame).
    pub byte_burst: u32,
    /// Duplicate-suppression entries one peer's packets may create per minute
    /// (default 120,000).
    pub new_entries_per_min: u32,
    /// Records one peer may gossip per minute (default 512).
    pub gossip_records_per_min: u32,
    /// Onion replay tags a relay keeps per packet key (default 1,000,000, at
    /// least [`MIN_REPLAY_TAGS_PER_KEY`]); at 3/4 of it the key is rotated
    /// early, and a key that is full drops packets to it. Read at start.
    pub replay_tags_per_key: usize,
    /// The furthest expiry accepted on a packet, and the longest a message may
    /// live (default and at most 30 days; at least `routing.ttl`).
    pub max_ttl: Duration,
    /// Inbound handshakes in progress at once from one IP (default 8).
    pub handshakes_per_ip: usize,
    /// Inbound handshakes in progress at once in all (default 64); when full,
    /// the oldest pending one is dropped to make room.
    pub handshakes_total: usize,
    /// How long a peer that broke a budget is refused (default 10 minutes).
    pub backoff: Duration,
}

impl Default for LimitsConfig {
    fn default() -> LimitsConfig {
        LimitsConfig {
            packets_per_sec: 2_000,
            packet_burst: 4_000,
            bytes_per_sec: 8 * 1024 * 1024,
            byte_burst: 16 * 1024 * 1024,
            new_entries_per_min: 120_000,
            gossip_records_per_min: 512,
            replay_tags_per_key: crate::store::replay::REPLAY_TAGS_PER_KEY,
            max_ttl: MAX_TTL,
            handshakes_per_ip: 8,
            handshakes_total: 64,
            backoff: Duration::from_secs(600),
        }
    }
}

/// `[client]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// The daemon's Unix socket for local commands. Resolved: default
    /// `<data_dir>/hermes.sock`; a relative path is taken from the config
    /// file's folder. Always shorter than [`MAX_SOCKET_PATH`] bytes.
    pub socket: PathBuf,
    /// The seed's text protocol on `127.0.0.1:<legacy_port>`; 0 = off.
    pub legacy_port: u16,
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// The least severe records still written (default info).
    pub level: LogLevel,
    /// Text or JSON lines (default text).
    pub format: LogFormat,
}

/// Why a configuration could not be loaded. Every variant displays as one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A config file that was asked for (`--config`, `$HERMES_CONFIG`) does not exist.
    #[error("{}: no such config file", path.display())]
    NotFound {
        /// The path that was asked for.
        path: PathBuf,
    },
    /// The config file exists but could not be read (permissions, not UTF-8, a folder...).
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A key has a bad value or is unknown, or the file is not valid TOML.
    #[error("{file}: {key}: {reason}")]
    Invalid {
        /// The config file, `"built-in defaults"`, or `"command line"`.
        file: String,
        /// The dotted key, e.g. `network.min_neighbours`; `(syntax)` for a TOML syntax error.
        key: String,
        /// Why, on one line.
        reason: String,
    },
}

impl Config {
    /// Built-in defaults (a first node of a new network): what a config file
    /// with no keys at all gives. Fails only when no default `data_dir` can be
    /// chosen (neither `$XDG_DATA_HOME` nor `$HOME` set) or the default socket
    /// path would be too long.
    pub fn defaults() -> Result<Config, ConfigError> {
        parse("", None, &Env::from_process())
    }

    /// Parse and validate TOML text; `path` names the file in errors, becomes
    /// [`Config::source`] and anchors a relative `data_dir` or `socket`. The
    /// process environment supplies the default `data_dir`.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        parse(text, Some(path), &Env::from_process())
    }

    /// Find and load the config per the lookup order in the [module docs](self):
    /// `explicit` (must exist), else `$HERMES_CONFIG` (must exist), else
    /// `$XDG_CONFIG_HOME/hermes/node.toml` or `$HOME/.config/hermes/node.toml`
    /// if it exists, else [`Config::defaults`]. A relative path is made
    /// absolute against the current directory.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        load_with_env(explicit, &Env::from_process())
    }

    /// Append positional bootstrap addresses (`"IP"` or `"IP:PORT"`), skipping
    /// ones already listed. The total must stay at most [`MAX_BOOTSTRAP`]. On
    /// error (file `"command line"`, key `network.bootstrap`) nothing is changed.
    pub fn add_bootstrap(&mut self, addrs: &[String]) -> Result<(), ConfigError> {
        let bad = |reason: String| ConfigError::Invalid {
            file: COMMAND_LINE_LABEL.to_string(),
            key: "network.bootstrap".to_string(),
            reason,
        };
        let from_config = self.network.bootstrap.len();
        let mut list = self.network.bootstrap.clone();
        for a in addrs {
            let addr = parse_peer_addr(a).map_err(bad)?;
            if !list.contains(&addr) {
                list.push(addr);
            }
        }
        if list.len() > MAX_BOOTSTRAP {
            let added = list.len() - from_config;
            let reason = if from_config == 0 {
                format!("{added} bootstrap addresses given; at most {MAX_BOOTSTRAP} are allowed")
            } else {
                format!(
                    "{} bootstrap addresses in all ({from_config} from {} and {added} from the \
                     command line); at most {MAX_BOOTSTRAP} are allowed",
                    list.len(),
                    self.source_label(),
                )
            };
            return Err(bad(reason));
        }
        self.network.bootstrap = list;
        Ok(())
    }

    /// The config file's path for messages, or `"built-in defaults"`.
    pub fn source_label(&self) -> String {
        match &self.source {
            Some(p) => p.display().to_string(),
            None => DEFAULTS_LABEL.to_string(),
        }
    }
}

/// Parse a peer address: `"IP"` means `IP:58008`, `"IP:PORT"` (`"[IPv6]:PORT"`)
/// is taken as is. Refused, with a one-line reason naming the value: host
/// names, an unspecified IP (`0.0.0.0`, `::`) and port 0, none of which can be
/// dialled. Used for `network.bootstrap`, positional daemon addresses and
/// `hermes push --to`.
pub fn parse_peer_addr(s: &str) -> Result<SocketAddr, String> {
    let addr = parse_addr(s, DEFAULT_PORT)?;
    if addr.ip().is_unspecified() {
        return Err(format!(
            "{s:?}: {} names no particular host; give the IP address of a node",
            addr.ip()
        ));
    }
    if addr.port() == 0 {
        return Err(format!("{s:?}: port 0 cannot be dialled"));
    }
    Ok(addr)
}

/// `"IP"` -> `IP:default_port`, `"IP:PORT"` / `"[IPv6]:PORT"` / `"[IPv6]"` as is.
fn parse_addr(s: &str, default_port: u16) -> Result<SocketAddr, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty address; expected an IP address or IP:PORT".to_string());
    }
    if let Ok(addr) = t.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    if let Some(ip) = t
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.parse::<Ipv6Addr>().ok())
    {
        return Ok(SocketAddr::new(IpAddr::V6(ip), default_port));
    }
    // A valid IP with a bad port deserves a precise reason.
    if let Some((host, port)) = t.rsplit_once(':') {
        let host_ok = host.parse::<Ipv4Addr>().is_ok()
            || host
                .strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .is_some_and(|r| r.parse::<Ipv6Addr>().is_ok());
        if host_ok {
            return Err(format!(
                "{s:?}: port {port:?} is not a number from 1 to 65535"
            ));
        }
    }
    Err(format!(
        "{s:?} is not an IP address or IP:PORT (e.g. 192.0.2.7 or 192.0.2.7:{DEFAULT_PORT}; \
         host names are not accepted)"
    ))
}

// ---------------------------------------------------------------------------
// Environment and lookup

/// The environment variables this module reads, gathered once so that the
/// logic can be tested without touching the process environment.
#[derive(Debug, Clone, Default)]
struct Env {
    hermes_config: Option<OsString>,
    xdg_config_home: Option<OsString>,
    xdg_data_home: Option<OsString>,
    home: Option<OsString>,
}

impl Env {
    fn from_process() -> Env {
        Env {
            hermes_config: std::env::var_os("HERMES_CONFIG"),
            xdg_config_home: std::env::var_os("XDG_CONFIG_HOME"),
            xdg_data_home: std::env::var_os("XDG_DATA_HOME"),
            home: std::env::var_os("HOME"),
        }
    }

    /// `$HOME`, when set and not empty.
    fn home(&self) -> Option<PathBuf> {
        non_empty(&self.home).map(PathBuf::from)
    }

    /// An XDG base directory: only when set to an absolute path (the XDG
    /// spec says relative values are to be ignored).
    fn xdg(var: &Option<OsString>) -> Option<PathBuf> {
        non_empty(var)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    }

    /// `$XDG_CONFIG_HOME/hermes/node.toml`, else `$HOME/.config/hermes/node.toml`.
    fn user_config_file(&self) -> Option<PathBuf> {
        let base =
            Env::xdg(&self.xdg_config_home).or_else(|| self.home().map(|h| h.join(".config")))?;
        Some(base.join("hermes").join("node.toml"))
    }

    /// `$XDG_DATA_HOME/hermes`, else `$HOME/.local/share/hermes`.
    fn default_data_dir(&self) -> Option<PathBuf> {
        let base = Env::xdg(&self.xdg_data_home)
            .or_else(|| self.home().map(|h| h.join(".local").join("share")))?;
        Some(base.join("hermes"))
    }
}

fn non_empty(v: &Option<OsString>) -> Option<&OsStr> {
    v.as_deref().filter(|s| !s.is_empty())
}

/// Where the configuration comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Location {
    /// A file that was asked for: it must exist.
    Required(PathBuf),
    /// The per-user file: used if it exists.
    Optional(PathBuf),
    /// No file: the built-in defaults.
    Defaults,
}

/// The lookup order, as a pure function of the explicit path and the environment.
fn locate(explicit: Option<&Path>, env: &Env) -> Location {
    if let Some(p) = explicit {
        return Location::Required(p.to_path_buf());
    }
    if let Some(p) = non_empty(&env.hermes_config) {
        return Location::Required(PathBuf::from(p));
    }
    match env.user_config_file() {
        Some(p) => Location::Optional(p),
        None => Location::Defaults,
    }
}

fn load_with_env(explicit: Option<&Path>, env: &Env) -> Result<Config, ConfigError> {
    let (path, required) = match locate(explicit, env) {
        Location::Required(p) => (p, true),
        Location::Optional(p) => (p, false),
        Location::Defaults => return parse("", None, env),
    };
    let path = std::path::absolute(&path).unwrap_or(path);
    match std::fs::read_to_string(&path) {
        Ok(text) => parse(&text, Some(&path), env),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if required {
                Err(ConfigError::NotFound { path })
            } else {
                parse("", None, env)
            }
        }
        Err(source) => Err(ConfigError::Read { path, source }),
    }
}

// ---------------------------------------------------------------------------
// Raw file shape

/// The sections of the file.
const SECTIONS: [&str; 6] = ["node", "network", "routing", "client", "log", "limits"];

/// The file as written: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a TOML document")]
struct RawConfig {
    node: RawNode,
    network: RawNetwork,
    routing: RawRouting,
    client: RawClient,
    log: RawLog,
    limits: RawLimits,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a table")]
struct RawNode {
    listen: Option<String>,
    data_dir: Option<String>,
    advertise: Option<String>,
    relay: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a table")]
struct RawNetwork {
    bootstrap: Option<Vec<String>>,
    min_neighbours: Option<i64>,
    max_neighbours: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a table")]
struct RawRouting {
    mode: Option<String>,
    hops: Option<i64>,
    ttl: Option<String>,
    shards: Option<i64>,
    shards_needed: Option<i64>,
    retry_max: Option<String>,
    key_rotation: Option<String>,
    key_grace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a table")]
struct RawClient {
    socket: Option<String>,
    legacy_port: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a table")]
struct RawLog {
    level: Option<String>,
    format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a table")]
struct RawLimits {
    packets_per_sec: Option<i64>,
    packet_burst: Option<i64>,
    bytes_per_sec: Option<i64>,
    byte_burst: Option<i64>,
    new_entries_per_min: Option<i64>,
    gossip_records_per_min: Option<i64>,
    replay_tags_per_key: Option<i64>,
    max_ttl: Option<String>,
    handshakes_per_ip: Option<i64>,
    handshakes_total: Option<i64>,
    backoff: Option<String>,
}

// ---------------------------------------------------------------------------
// Parsing and validation

/// A refused key, before the file name is attached.
#[derive(Debug)]
struct Bad {
    key: String,
    reason: String,
}

fn bad(key: &str, reason: impl Into<String>) -> Bad {
    Bad {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// Parse `text` (the file at `path`, or the defaults when `path` is None).
fn parse(text: &str, path: Option<&Path>, env: &Env) -> Result<Config, ConfigError> {
    let file = match path {
        Some(p) => p.display().to_string(),
        None => DEFAULTS_LABEL.to_string(),
    };
    let result = parse_raw(text).and_then(|raw| validate(raw, path, env));
    result.map_err(|b| ConfigError::Invalid {
        file,
        key: b.key,
        reason: one_line(&b.reason),
    })
}

fn parse_raw(text: &str) -> Result<RawConfig, Bad> {
    // Syntax first, so that a syntax error is reported as such and with its place.
    let table = match text.parse::<toml::Table>() {
        Ok(table) => table,
        Err(e) => {
            let place = e
                .span()
                .map(|span| line_col(text, span.start))
                .map(|(line, col)| format!("line {line}, column {col}: "))
                .unwrap_or_default();
            return Err(bad("(syntax)", format!("{place}{}", one_line(e.message()))));
        }
    };
    // serde would happily read a section from an array (`node = []`, `[[node]]`):
    // a section must be a table.
    for (section, value) in &table {
        if !value.is_table() && SECTIONS.contains(&section.as_str()) {
            return Err(bad(
                section,
                format!("must be a table ([{section}]), not {}", value.type_str()),
            ));
        }
    }
    serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| {
        let path = e.path().to_string();
        let message = one_line(e.inner().message()).replace("expected i64", "expected an integer");
        let path = if path == "." { String::new() } else { path };
        match unknown_field(&message) {
            Some(field) => {
                // serde_path_to_error normally already ends the path with the
                // unknown key; add it only when it does not.
                let key = if path.is_empty() {
                    field.to_string()
                } else if path == field || path.ends_with(&format!(".{field}")) {
                    path
                } else {
                    format!("{path}.{field}")
                };
                match did_you_mean(field, &message) {
                    Some(near) => bad(&key, format!("unknown key; did you mean `{near}`?")),
                    None => bad(&key, "unknown key"),
                }
            }
            None => bad(if path.is_empty() { "(file)" } else { &path }, message),
        }
    })
}

/// The known key closest to a mistyped one, from serde's "unknown field `x`,
/// expected `a`" / "expected one of `a`, `b`" message; none when nothing is
/// close (a wholly different word gets no guess).
fn did_you_mean(field: &str, message: &str) -> Option<String> {
    let expected = message.split_once("expected")?.1;
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|k| (strsim::jaro_winkler(field, k), k))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k.to_string())
}

/// The field named by serde's "unknown field `x`, expected ..." message.
fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    let end = rest
        .rfind("`, expected")
        .or_else(|| rest.rfind("`, there are no fields"))
        .or_else(|| rest.rfind('`'))?;
    Some(&rest[..end])
}

/// 1-based line and column (in characters) of byte offset `at` in `text`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Collapse all whitespace (newlines included) into single spaces.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A path from the file: `~/` is `$HOME`, a relative path is taken from
/// `base` (the config file's folder) when there is one.
fn resolve_path(value: &str, base: Option<&Path>, env: &Env) -> Result<PathBuf, String> {
    let tilde_rest = if value == "~" {
        Some("")
    } else {
        value.strip_prefix("~/")
    };
    if let Some(rest) = tilde_rest {
        let home = env
            .home()
            .ok_or_else(|| format!("{value:?} starts with ~ but $HOME is not set"))?;
        return Ok(if rest.is_empty() {
            home
        } else {
            home.join(rest)
        });
    }
    let p = PathBuf::from(value);
    Ok(match base {
        Some(base) if p.is_relative() => base.join(p),
        _ => p,
    })
}

fn in_range(key: &str, v: i64, lo: i64, hi: i64) -> Result<i64, Bad> {
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(bad(key, format!("must be from {lo} to {hi}, not {v}")))
    }
}

/// A duration such as "90s", "12h" or "7d", from `lo` to `hi`.
fn duration(key: &str, value: &str, lo: Duration, hi: Duration) -> Result<Duration, Bad> {
    let d = humantime::parse_duration(value.trim()).map_err(|e| {
        bad(
            key,
            format!("{value:?} is not a duration like \"90s\", \"12h\" or \"7d\": {e}"),
        )
    })?;
    if d < lo || d > hi {
        return Err(bad(
            key,
            format!(
                "{value:?}: must be from {} to {}",
                humantime::format_duration(lo),
                humantime::format_duration(hi)
            ),
        ));
    }
    Ok(d)
}

/// A `u32` limit from the file, `lo..=hi`, or `default`.
fn limit_u32(key: &str, value: Option<i64>, default: u32, lo: u32, hi: u32) -> Result<u32, Bad> {
    let v = in_range(
        key,
        value.unwrap_or(i64::from(default)),
        lo.into(),
        hi.into(),
    )?;
    Ok(u32::try_from(v).unwrap_or(default))
}

fn validate_limits(raw: RawLimits, ttl: Duration) -> Result<LimitsConfig, Bad> {
    let d = LimitsConfig::default();
    let packets_per_sec = limit_u32(
        "limits.packets_per_sec",
        raw.packets_per_sec,
        d.packets_per_sec,
        1,
        1_000_000,
    )?;
    let packet_burst = limit_u32(
        "limits.packet_burst",
        raw.packet_burst,
        d.packet_burst,
        1,
        10_000_000,
    )?;
    let bytes_per_sec = limit_u32(
        "limits.bytes_per_sec",
        raw.bytes_per_sec,
        d.bytes_per_sec,
        1024,
        u32::MAX,
    )?;
    // A burst smaller than the largest frame (its cells:
    // `wire::cell::message_bytes(MAX_LINK_FRAME)`, 61,920 bytes) would cut
    // off an honest peer.
    let byte_burst = limit_u32(
        "limits.byte_burst",
        raw.byte_burst,
        d.byte_burst,
        65_535,
        u32::MAX,
    )?;
    let new_entries_per_min = limit_u32(
        "limits.new_entries_per_min",
        raw.new_entries_per_min,
        d.new_entries_per_min,
        1,
        100_000_000,
    )?;
    let gossip_records_per_min = limit_u32(
        "limits.gossip_records_per_min",
        raw.gossip_records_per_min,
        d.gossip_records_per_min,
        1,
        1_000_000,
    )?;
    let replay_tags_per_key = in_range(
        "limits.replay_tags_per_key",
        raw.replay_tags_per_key
            .unwrap_or(i64::try_from(d.replay_tags_per_key).unwrap_or(i64::MAX)),
        MIN_REPLAY_TAGS_PER_KEY as i64,
        MAX_REPLAY_TAGS_PER_KEY as i64,
    )?;
    let max_ttl = match raw.max_ttl.as_deref() {
        None => d.max_ttl,
        Some(s) => duration("limits.max_ttl", s, MIN_TTL, MAX_TTL)?,
    };
    if max_ttl < ttl {
        return Err(bad(
            "limits.max_ttl",
            format!(
                "must be at least routing.ttl ({}), or this node's own messages would be refused",
                humantime::format_duration(ttl)
            ),
        ));
    }
    let handshakes_total = in_range(
        "limits.handshakes_total",
        raw.handshakes_total.unwrap_or(d.handshakes_total as i64),
        1,
        4096,
    )?;
    let handshakes_per_ip = in_range(
        "limits.handshakes_per_ip",
        raw.handshakes_per_ip.unwrap_or(d.handshakes_per_ip as i64),
        1,
        handshakes_total,
    )?;
    let backoff = match raw.backoff.as_deref() {
        None => d.backoff,
        Some(s) => duration(
            "limits.backoff",
            s,
            Duration::from_secs(1),
            Duration::from_secs(7 * 86400),
        )?,
    };
    Ok(LimitsConfig {
        packets_per_sec,
        packet_burst,
        bytes_per_sec,
        byte_burst,
        new_entries_per_min,
        gossip_records_per_min,
        replay_tags_per_key: usize::try_from(replay_tags_per_key).unwrap_or(d.replay_tags_per_key),
        max_ttl,
        handshakes_per_ip: usize::try_from(handshakes_per_ip).unwrap_or(d.handshakes_per_ip),
        handshakes_total: usize::try_from(handshakes_total).unwrap_or(d.handshakes_total),
        backoff,
    })
}

fn validate(raw: RawConfig, path: Option<&Path>, env: &Env) -> Result<Config, Bad> {
    let base = path.map(|p| p.parent().unwrap_or(Path::new("")));

    // [node]
    let listen = match raw.node.listen.as_deref() {
        None => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_PORT),
        Some(s) => {
            let addr = parse_addr(s, DEFAULT_PORT).map_err(|r| bad("node.listen", r))?;
            if addr.port() == 0 {
                return Err(bad(
                    "node.listen",
                    format!("{s:?}: port 0 is not allowed; peers must be able to dial the port"),
                ));
            }
            addr
        }
    };
    let data_dir = match raw.node.data_dir.as_deref() {
        None | Some("") => env.default_data_dir().ok_or_else(|| {
            bad(
                "node.data_dir",
                "no default: neither $XDG_DATA_HOME nor $HOME is set; set node.data_dir",
            )
        })?,
        Some(s) => resolve_path(s, base, env).map_err(|r| bad("node.data_dir", r))?,
    };
    let advertise = match raw.node.advertise.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(s) => {
            let addr = parse_addr(s, listen.port()).map_err(|r| bad("node.advertise", r))?;
            if addr.ip().is_unspecified() {
                return Err(bad(
                    "node.advertise",
                    format!(
                        "{s:?}: {} names no particular host; give an address peers can reach",
                        addr.ip()
                    ),
                ));
            }
            if addr.port() == 0 {
                return Err(bad(
                    "node.advertise",
                    format!("{s:?}: port 0 cannot be dialled"),
                ));
            }
            Some(addr)
        }
    };
    let relay = raw.node.relay.unwrap_or(true);

    // [network]
    let mut bootstrap: Vec<SocketAddr> = Vec::new();
    for (i, s) in raw.network.bootstrap.unwrap_or_default().iter().enumerate() {
        let addr = parse_peer_addr(s)
            .map_err(|r| bad("network.bootstrap", format!("entry {}: {r}", i + 1)))?;
        if !bootstrap.contains(&addr) {
            bootstrap.push(addr);
        }
    }
    if bootstrap.len() > MAX_BOOTSTRAP {
        return Err(bad(
            "network.bootstrap",
            format!(
                "{} addresses given; at most {MAX_BOOTSTRAP} are allowed",
                bootstrap.len()
            ),
        ));
    }
    let max_neighbours = in_range(
        "network.max_neighbours",
        raw.network.max_neighbours.unwrap_or(8),
        1,
        MAX_NEIGHBOURS,
    )?;
    let min_neighbours = raw.network.min_neighbours.unwrap_or(3);
    if min_neighbours < 0 {
        return Err(bad(
            "network.min_neighbours",
            format!("must not be negative, not {min_neighbours}"),
        ));
    }
    if min_neighbours > max_neighbours {
        return Err(bad(
            "network.min_neighbours",
            format!("must not exceed network.max_neighbours ({max_neighbours})"),
        ));
    }

    // [routing]
    let mode = match raw.routing.mode.as_deref() {
        Some("flood") => RoutingMode::Flood,
        None | Some("onion") => RoutingMode::Onion,
        Some(other) => {
            return Err(bad(
                "routing.mode",
                format!("unknown mode {other:?}; expected \"flood\" or \"onion\""),
            ))
        }
    };
    let hops = in_range(
        "routing.hops",
        raw.routing.hops.unwrap_or(3),
        1,
        MAX_ONION_HOPS,
    )?;
    let ttl = match raw.routing.ttl.as_deref() {
        None => Duration::from_secs(7 * 24 * 60 * 60),
        Some(s) => {
            let d = humantime::parse_duration(s.trim()).map_err(|e| {
                bad(
                    "routing.ttl",
                    format!("{s:?} is not a duration like \"90s\", \"12h\" or \"7d\": {e}"),
                )
            })?;
            if d < MIN_TTL {
                return Err(bad("routing.ttl", format!("{s:?}: must be at least 1s")));
            }
            if d > MAX_TTL {
                return Err(bad("routing.ttl", format!("{s:?}: must be at most 30d")));
            }
            d
        }
    };
    let retry_max = match raw.routing.retry_max.as_deref() {
        None => Duration::from_secs(3600),
        Some(s) => duration(
            "routing.retry_max",
            s,
            MIN_RETRY_MAX,
            Duration::from_secs(7 * 86400),
        )?,
    };
    let key_rotation = match raw.routing.key_rotation.as_deref() {
        None => Duration::from_secs(86_400),
        Some(s) => duration(
            "routing.key_rotation",
            s,
            Duration::from_secs(1),
            Duration::from_secs(30 * 86_400),
        )?,
    };
    let key_grace = match raw.routing.key_grace.as_deref() {
        None => Duration::from_secs(3_600).min(key_rotation * 3),
        Some(s) => duration("routing.key_grace", s, Duration::ZERO, key_rotation * 3)?,
    };
    let shards = raw.routing.shards.unwrap_or(1);
    if shards != 1 {
        return Err(bad(
            "routing.shards",
            format!("must be 1, not {shards}: erasure-coded shards are not available yet in this version"),
        ));
    }
    let shards_needed = raw.routing.shards_needed.unwrap_or(1);
    if shards_needed < 1 {
        return Err(bad(
            "routing.shards_needed",
            format!("must be at least 1, not {shards_needed}"),
        ));
    }
    if shards_needed > shards {
        return Err(bad(
            "routing.shards_needed",
            format!("must not exceed routing.shards ({shards}), not {shards_needed}"),
        ));
    }

    // [client]
    let (socket, defaulted) = match raw.client.socket.as_deref() {
        None | Some("") => (data_dir.join(DEFAULT_SOCKET_NAME), true),
        Some(s) => (
            resolve_path(s, base, env).map_err(|r| bad("client.socket", r))?,
            false,
        ),
    };
    let socket_len = socket.as_os_str().as_encoded_bytes().len();
    if socket_len >= MAX_SOCKET_PATH {
        let what = if defaulted {
            " (the default, <data_dir>/hermes.sock); set client.socket to a shorter path"
        } else {
            ""
        };
        return Err(bad(
            "client.socket",
            format!(
                "{:?} is {socket_len} bytes long; a Unix socket path must be shorter than \
                 {MAX_SOCKET_PATH} bytes{what}",
                socket.display().to_string()
            ),
        ));
    }
    let legacy_port = in_range(
        "client.legacy_port",
        raw.client.legacy_port.unwrap_or(0),
        0,
        i64::from(u16::MAX),
    )?;
    let legacy_port = u16::try_from(legacy_port).unwrap_or(0);
    let listen_on_loopback_v4 =
        listen.ip().is_unspecified() || listen.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST);
    if legacy_port != 0 && legacy_port == listen.port() && listen_on_loopback_v4 {
        return Err(bad(
            "client.legacy_port",
            format!(
                "must differ from the port of node.listen ({})",
                listen.port()
            ),
        ));
    }

    // [log]
    let level = match raw.log.level.as_deref() {
        None | Some("info") => LogLevel::Info,
        Some("critical") => LogLevel::Critical,
        Some("error") => LogLevel::Error,
        Some("warning") => LogLevel::Warning,
        Some("debug") => LogLevel::Debug,
        Some("trace") => LogLevel::Trace,
        Some(other) => {
            return Err(bad(
                "log.level",
                format!(
                    "unknown level {other:?}; expected one of critical, error, warning, info, \
                     debug, trace"
                ),
            ))
        }
    };
    let format = match raw.log.format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            return Err(bad(
                "log.format",
                format!("unknown format {other:?}; expected \"text\" or \"json\""),
            ))
        }
    };

    let limits = validate_limits(raw.limits, ttl)?;

    // The range checks above make these conversions infallible; fall back
    // to the defaults rather than panic all the same.
    Ok(Config {
        node: NodeConfig {
            listen,
            data_dir,
            advertise,
            relay,
        },
        network: NetworkConfig {
            bootstrap,
            min_neighbours: usize::try_from(min_neighbours).unwrap_or(3),
            max_neighbours: usize::try_from(max_neighbours).unwrap_or(8),
        },
        routing: RoutingConfig {
            mode,
            hops: u8::try_from(hops).unwrap_or(3),
            ttl,
            shards: u8::try_from(shards).unwrap_or(1),
            shards_needed: u8::try_from(shards_needed).unwrap_or(1),
            retry_max,
            key_rotation,
            key_grace,
        },
        client: ClientConfig {
            socket,
            legacy_port,
        },
        log: LogConfig { level, format },
        limits,
        source: path.map(Path::to_path_buf),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../config/node.toml");

    fn env_home(home: &str) -> Env {
        Env {
            home: Some(home.into()),
            ..Env::default()
        }
    }

    fn env() -> Env {
        env_home("/home/u")
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn parse_at(text: &str, path: &str) -> Result<Config, ConfigError> {
        parse(text, Some(Path::new(path)), &env())
    }

    fn ok(text: &str) -> Config {
        match parse_at(text, "/etc/hermes/node.toml") {
            Ok(c) => c,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    /// The key and reason of an Invalid error, asserting the Display is one line.
    fn invalid(text: &str) -> (String, String) {
        match parse_at(text, "/etc/hermes/node.toml") {
            Err(e @ ConfigError::Invalid { .. }) => {
                let shown = e.to_string();
                assert!(!shown.contains('\n'), "not one line: {shown:?}");
                let ConfigError::Invalid { file, key, reason } = e else {
                    unreachable!()
                };
                assert_eq!(file, "/etc/hermes/node.toml");
                assert_eq!(shown, format!("{file}: {key}: {reason}"));
                (key, reason)
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    fn assert_key(text: &str, key: &str) -> String {
        let (k, reason) = invalid(text);
        assert_eq!(k, key, "reason: {reason}");
        reason
    }

    fn expected_defaults() -> Config {
        Config {
            node: NodeConfig {
                listen: sa("0.0.0.0:58008"),
                data_dir: PathBuf::from("/home/u/.local/share/hermes"),
                advertise: None,
                relay: true,
            },
            network: NetworkConfig {
                bootstrap: vec![],
                min_neighbours: 3,
                max_neighbours: 8,
            },
            routing: RoutingConfig {
                mode: RoutingMode::Onion,
                hops: 3,
                ttl: Duration::from_secs(7 * 86400),
                shards: 1,
                shards_needed: 1,
                retry_max: Duration::from_secs(3600),
                key_rotation: Duration::from_secs(86400),
                key_grace: Duration::from_secs(3600),
            },
            client: ClientConfig {
                socket: PathBuf::from("/home/u/.local/share/hermes/hermes.sock"),
                legacy_port: 0,
            },
            log: LogConfig {
                level: LogLevel::Info,
                format: LogFormat::Text,
            },
            limits: LimitsConfig::default(),
            source: None,
        }
    }

    #[test]
    fn defaults() {
        let c = parse("", None, &env()).unwrap();
        assert_eq!(c, expected_defaults());
        // An empty file is the defaults, with its source recorded.
        let f = ok("");
        assert_eq!(
            f.source.as_deref(),
            Some(Path::new("/etc/hermes/node.toml"))
        );
        assert_eq!(Config { source: None, ..f }, expected_defaults());
        // Empty sections too.
        let f = ok("[node]\n[network]\n[routing]\n[client]\n[log]\n");
        assert_eq!(Config { source: None, ..f }, expected_defaults());
    }

    #[test]
    fn default_data_dir_follows_xdg() {
        let e = Env {
            xdg_data_home: Some("/xdg/data".into()),
            home: Some("/home/u".into()),
            ..Env::default()
        };
        let c = parse("", None, &e).unwrap();
        assert_eq!(c.node.data_dir, Path::new("/xdg/data/hermes"));
        assert_eq!(c.client.socket, Path::new("/xdg/data/hermes/hermes.sock"));
        // A relative or empty XDG_DATA_HOME is ignored, per the XDG spec.
        for v in ["relative/data", ""] {
            let e = Env {
                xdg_data_home: Some(v.into()),
                ..env()
            };
            let c = parse("", None, &e).unwrap();
            assert_eq!(c.node.data_dir, Path::new("/home/u/.local/share/hermes"));
        }
    }

    #[test]
    fn defaults_without_home_name_data_dir() {
        let err = parse("", None, &Env::default()).unwrap_err();
        let shown = err.to_string();
        assert!(
            shown.starts_with("built-in defaults: node.data_dir: "),
            "{shown}"
        );
        // ... unless the file sets it.
        let c = parse(
            "[node]\ndata_dir = \"/srv/hermes\"\n",
            Some(Path::new("/etc/node.toml")),
            &Env::default(),
        )
        .unwrap();
        assert_eq!(c.node.data_dir, Path::new("/srv/hermes"));
    }

    #[test]
    fn full_valid_file() {
        let c = ok(r#"
            [node]
            listen = "127.0.0.2:58009"
            data_dir = "/var/lib/hermes"
            advertise = "192.0.2.7"
            relay = false
            [network]
            bootstrap = ["127.0.0.3", "127.0.0.4:6000", "[::1]:7000"]
            min_neighbours = 0
            max_neighbours = 64
            [routing]
            mode = "flood"
            hops = 4
            ttl = "90s"
            shards = 1
            shards_needed = 1
            [client]
            socket = "/run/hermes.sock"
            legacy_port = 60085
            [log]
            level = "trace"
            format = "json"
        "#);
        assert_eq!(
            c,
            Config {
                node: NodeConfig {
                    listen: sa("127.0.0.2:58009"),
                    data_dir: PathBuf::from("/var/lib/hermes"),
                    advertise: Some(sa("192.0.2.7:58009")),
                    relay: false,
                },
                network: NetworkConfig {
                    bootstrap: vec![
                        sa("127.0.0.3:58008"),
                        sa("127.0.0.4:6000"),
                        sa("[::1]:7000")
                    ],
                    min_neighbours: 0,
                    max_neighbours: 64,
                },
                routing: RoutingConfig {
                    mode: RoutingMode::Flood,
                    hops: 4,
                    ttl: Duration::from_secs(90),
                    shards: 1,
                    shards_needed: 1,
                    retry_max: Duration::from_secs(3600),
                    key_rotation: Duration::from_secs(86400),
                    key_grace: Duration::from_secs(3600),
                },
                client: ClientConfig {
                    socket: PathBuf::from("/run/hermes.sock"),
                    legacy_port: 60085,
                },
                log: LogConfig {
                    level: LogLevel::Trace,
                    format: LogFormat::Json,
                },
                limits: LimitsConfig::default(),
                source: Some(PathBuf::from("/etc/hermes/node.toml")),
            }
        );
    }

    #[test]
    fn every_log_level() {
        for (s, l) in [
            ("critical", LogLevel::Critical),
            ("error", LogLevel::Error),
            ("warning", LogLevel::Warning),
            ("info", LogLevel::Info),
            ("debug", LogLevel::Debug),
            ("trace", LogLevel::Trace),
        ] {
            assert_eq!(ok(&format!("[log]\nlevel = \"{s}\"")).log.level, l);
            assert_eq!(l.as_str(), s);
        }
        assert_key("[log]\nlevel = \"verbose\"", "log.level");
        assert_key("[log]\nformat = \"xml\"", "log.format");
        assert_key("[log]\nlevel = 3", "log.level");
    }

    #[test]
    fn unknown_keys_are_named() {
        assert_eq!(
            assert_key("[node]\nlisen = \"1.2.3.4\"", "node.lisen"),
            "unknown key; did you mean `listen`?"
        );
        assert_eq!(
            assert_key("[nod]\nlisten = \"1.2.3.4\"", "nod"),
            "unknown key; did you mean `node`?"
        );
        assert_eq!(assert_key("relay = true", "relay"), "unknown key");
        assert_eq!(
            assert_key("[log]\ncolour = true", "log.colour"),
            "unknown key"
        );
        assert_eq!(
            assert_key("[routing.extra]\nx = 1", "routing.extra"),
            "unknown key"
        );
        // Close misspellings get a guess, from the keys of their own section.
        assert_eq!(
            assert_key("[network]\nbootstrp = []", "network.bootstrp"),
            "unknown key; did you mean `bootstrap`?"
        );
        assert_eq!(
            assert_key(
                "[limits]\npackets_per_second = 5",
                "limits.packets_per_second"
            ),
            "unknown key; did you mean `packets_per_sec`?"
        );
    }

    #[test]
    fn exact_message_for_min_above_max() {
        let err = parse_at("[network]\nmin_neighbours = 9\n", "/tmp/x/node.toml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "/tmp/x/node.toml: network.min_neighbours: must not exceed network.max_neighbours (8)"
        );
        assert_key(
            "[network]\nmin_neighbours = 5\nmax_neighbours = 4",
            "network.min_neighbours",
        );
        assert_key("[network]\nmin_neighbours = -1", "network.min_neighbours");
        assert_key("[network]\nmax_neighbours = 0", "network.max_neighbours");
        assert_key("[network]\nmax_neighbours = 65", "network.max_neighbours");
        assert_key(
            "[network]\nmax_neighbours = \"8\"",
            "network.max_neighbours",
        );
    }

    #[test]
    fn bad_listen_and_advertise() {
        assert_key("[node]\nlisten = \"nope\"", "node.listen");
        assert_key("[node]\nlisten = \"localhost:58008\"", "node.listen");
        assert_key("[node]\nlisten = 58008", "node.listen");
        assert_key("[node]\nlisten = \"127.0.0.1:0\"", "node.listen");
        let r = assert_key("[node]\nlisten = \"127.0.0.1:99999\"", "node.listen");
        assert!(r.contains("port"), "{r}");
        // A bare IP takes the default port.
        assert_eq!(
            ok("[node]\nlisten = \"127.0.0.5\"").node.listen,
            sa("127.0.0.5:58008")
        );
        assert_key("[node]\nadvertise = \"0.0.0.0\"", "node.advertise");
        assert_key("[node]\nadvertise = \"example.org\"", "node.advertise");
        assert_eq!(
            ok("[node]\nadvertise = \"192.0.2.1:7\"").node.advertise,
            Some(sa("192.0.2.1:7"))
        );
        assert_key("[node]\nrelay = \"yes\"", "node.relay");
        assert_key("node = 5", "node");
        assert_key("network = []", "network");
        assert_key("[[node]]\nrelay = true", "node");
        let r = assert_key("[network]\nmax_neighbours = 1.5", "network.max_neighbours");
        assert!(r.ends_with("expected an integer"), "{r}");
    }

    #[test]
    fn bootstrap_limits() {
        let r = assert_key(
            "[network]\nbootstrap = [\"10.0.0.1\", \"10.0.0.2\", \"10.0.0.3\", \"10.0.0.4\"]",
            "network.bootstrap",
        );
        assert!(r.contains("at most 3"), "{r}");
        let r = assert_key(
            "[network]\nbootstrap = [\"10.0.0.1\", \"not an ip\"]",
            "network.bootstrap",
        );
        assert!(r.contains("entry 2") && r.contains("not an ip"), "{r}");
        assert_key("[network]\nbootstrap = \"10.0.0.1\"", "network.bootstrap");
        let (k, _) = invalid("[network]\nbootstrap = [\"10.0.0.1\", 5]");
        assert!(k.starts_with("network.bootstrap"), "{k}");
        // Duplicates are dropped, not counted twice.
        let c = ok(
            "[network]\nbootstrap = [\"10.0.0.1\", \"10.0.0.1:58008\", \"10.0.0.2\", \"10.0.0.3\"]",
        );
        assert_eq!(c.network.bootstrap.len(), 3);
    }

    #[test]
    fn routing_values() {
        assert_eq!(
            ok("[routing]\nmode = \"onion\"").routing.mode,
            RoutingMode::Onion
        );
        assert_key("[routing]\nkey_rotation = \"0s\"", "routing.key_rotation");
        assert_key(
            "[routing]\nkey_rotation = \"1h\"\nkey_grace = \"4h\"",
            "routing.key_grace",
        );
        assert_eq!(
            ok("[routing]\nkey_rotation = \"10s\"\nkey_grace = \"5s\"")
                .routing
                .key_schedule()
                .grace(),
            5
        );
        assert_key("[routing]\nmode = \"broadcast\"", "routing.mode");
        assert_key("[routing]\nhops = 0", "routing.hops");
        assert_key("[routing]\nhops = 5", "routing.hops");
        assert_eq!(ok("[routing]\nhops = 1").routing.hops, 1);

        assert_key("[routing]\nttl = \"7x\"", "routing.ttl");
        assert_key("[routing]\nttl = \"soon\"", "routing.ttl");
        assert_key("[routing]\nttl = 3600", "routing.ttl");
        assert_key("[routing]\nttl = \"0s\"", "routing.ttl");
        assert_key("[routing]\nttl = \"500ms\"", "routing.ttl");
        assert_key("[routing]\nttl = \"31d\"", "routing.ttl");
        assert_eq!(
            ok("[routing]\nttl = \"1s\"").routing.ttl,
            Duration::from_secs(1)
        );
        assert_eq!(ok("[routing]\nttl = \"30d\"").routing.ttl, MAX_TTL);
        assert_eq!(
            ok("[routing]\nttl = \"1h 30m\"").routing.ttl,
            Duration::from_secs(5400)
        );

        assert_key("[routing]\nretry_max = \"1s\"", "routing.retry_max");
        assert_key("[routing]\nretry_max = \"8d\"", "routing.retry_max");
        assert_eq!(
            ok("[routing]\nretry_max = \"6h\"").routing.retry_max,
            Duration::from_secs(6 * 3600)
        );

        let r = assert_key("[routing]\nshards = 2", "routing.shards");
        assert!(r.contains("not available yet"), "{r}");
        assert_key("[routing]\nshards = 0", "routing.shards");
        assert_key("[routing]\nshards_needed = 0", "routing.shards_needed");
        let r = assert_key("[routing]\nshards_needed = 2", "routing.shards_needed");
        assert!(r.contains("routing.shards (1)"), "{r}");
    }

    #[test]
    fn limits_values() {
        let l = ok("[limits]\npackets_per_sec = 10\npacket_burst = 20\nmax_ttl = \"7d\"\nhandshakes_per_ip = 2\nhandshakes_total = 4\nbackoff = \"30s\"").limits;
        assert_eq!(l.packets_per_sec, 10);
        assert_eq!(l.packet_burst, 20);
        assert_eq!(l.max_ttl, Duration::from_secs(7 * 86400));
        assert_eq!((l.handshakes_per_ip, l.handshakes_total), (2, 4));
        assert_eq!(l.backoff, Duration::from_secs(30));
        assert_key("[limits]\npackets_per_sec = 0", "limits.packets_per_sec");
        assert_key("[limits]\nbyte_burst = 1000", "limits.byte_burst");
        assert_key("[limits]\nmax_ttl = \"31d\"", "limits.max_ttl");
        let r = assert_key("[limits]\nmax_ttl = \"1d\"", "limits.max_ttl");
        assert!(r.contains("routing.ttl"), "{r}");
        assert_eq!(
            ok("[routing]\nttl = \"1h\"\n[limits]\nmax_ttl = \"1h\"")
                .limits
                .max_ttl,
            Duration::from_secs(3600)
        );
        let r = assert_key(
            "[limits]\nhandshakes_per_ip = 9\nhandshakes_total = 8",
            "limits.handshakes_per_ip",
        );
        assert!(r.contains("from 1 to 8"), "{r}");
        assert_key("[limits]\nbackoff = \"0s\"", "limits.backoff");
        assert_key("[limits]\nburst = 3", "limits.burst");
    }

    #[test]
    fn replay_tags_per_key_default_bounds_and_message() {
        assert_eq!(
            ok("").limits.replay_tags_per_key,
            crate::store::replay::REPLAY_TAGS_PER_KEY
        );
        assert_eq!(
            ok("[limits]\nreplay_tags_per_key = 64")
                .limits
                .replay_tags_per_key,
            64
        );
        assert_eq!(
            ok("[limits]\nreplay_tags_per_key = 100000000")
                .limits
                .replay_tags_per_key,
            MAX_REPLAY_TAGS_PER_KEY
        );
        for bad in ["63", "0", "-1", "100000001"] {
            let r = assert_key(
                &format!("[limits]\nreplay_tags_per_key = {bad}"),
                "limits.replay_tags_per_key",
            );
            assert!(r.contains("from 64 to 100000000"), "{r}");
        }
        assert_key(
            "[limits]\nreplay_tags_per_key = \"many\"",
            "limits.replay_tags_per_key",
        );
        // The whole message names the file, the key and why.
        let e = parse(
            "[limits]\nreplay_tags_per_key = 10",
            Some(Path::new("/etc/hermes/node.toml")),
            &env(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("/etc/hermes/node.toml"), "{e}");
        assert!(e.contains("limits.replay_tags_per_key"), "{e}");
        assert!(e.contains("not 10"), "{e}");
    }

    #[test]
    fn client_values() {
        assert_eq!(
            ok("[client]\nlegacy_port = 60085").client.legacy_port,
            60085
        );
        assert_key("[client]\nlegacy_port = 65536", "client.legacy_port");
        assert_key("[client]\nlegacy_port = -1", "client.legacy_port");
        assert_key("[client]\nlegacy_port = 58008", "client.legacy_port");
        // A different loopback address for the peer port does not clash.
        let c = ok("[node]\nlisten = \"127.0.0.2:60085\"\n[client]\nlegacy_port = 60085");
        assert_eq!(c.client.legacy_port, 60085);
        assert_key("[client]\nsocket = 7", "client.socket");
    }

    #[test]
    fn socket_path_length() {
        let long = format!("/{}", "s".repeat(99));
        assert_eq!(long.len(), 100);
        assert_key(&format!("[client]\nsocket = \"{long}\""), "client.socket");
        let fits = format!("/{}", "s".repeat(98));
        assert_eq!(
            ok(&format!("[client]\nsocket = \"{fits}\"")).client.socket,
            PathBuf::from(fits)
        );
        // The default socket inside a long data_dir is refused under client.socket.
        let dir = format!("/{}", "d".repeat(90));
        let r = assert_key(&format!("[node]\ndata_dir = \"{dir}\""), "client.socket");
        assert!(r.contains("set client.socket"), "{r}");
        // ... and fine once the socket is set elsewhere.
        let c = ok(&format!(
            "[node]\ndata_dir = \"{dir}\"\n[client]\nsocket = \"/run/h.sock\""
        ));
        assert_eq!(c.client.socket, Path::new("/run/h.sock"));
    }

    #[test]
    fn relative_paths_are_taken_from_the_file_folder() {
        let c = parse_at("[node]\ndata_dir = \"data\"", "/srv/n1/node.toml").unwrap();
        assert_eq!(c.node.data_dir, Path::new("/srv/n1/data"));
        assert_eq!(c.client.socket, Path::new("/srv/n1/data/hermes.sock"));
        let c = parse_at(
            "[node]\ndata_dir = \"../d\"\n[client]\nsocket = \"s/h.sock\"",
            "/srv/n1/node.toml",
        )
        .unwrap();
        assert_eq!(c.node.data_dir, Path::new("/srv/n1/../d"));
        assert_eq!(c.client.socket, Path::new("/srv/n1/s/h.sock"));
        // Absolute stays absolute; ~ is $HOME.
        let c = parse_at(
            "[node]\ndata_dir = \"/abs\"\n[client]\nsocket = \"~/h.sock\"",
            "/srv/n1/node.toml",
        )
        .unwrap();
        assert_eq!(c.node.data_dir, Path::new("/abs"));
        assert_eq!(c.client.socket, Path::new("/home/u/h.sock"));
        // A file named by a relative path anchors relatively ("as given").
        let c = parse_at("[node]\ndata_dir = \"data\"", "node.toml").unwrap();
        assert_eq!(c.node.data_dir, Path::new("data"));
        let c = parse_at("[node]\ndata_dir = \"data\"", "conf/node.toml").unwrap();
        assert_eq!(c.node.data_dir, Path::new("conf/data"));
    }

    #[test]
    fn syntax_errors_are_one_line_with_place() {
        let r = assert_key("[node]\nlisten = \n", "(syntax)");
        assert!(r.starts_with("line 2, column "), "{r}");
        assert_key("[node]\nrelay = true\nrelay = false\n", "(syntax)");
        assert_key("[node\n", "(syntax)");
    }

    #[test]
    fn read_errors_display() {
        let e = ConfigError::NotFound {
            path: PathBuf::from("/x/node.toml"),
        };
        assert_eq!(e.to_string(), "/x/node.toml: no such config file");
        let e = ConfigError::Read {
            path: PathBuf::from("/x/node.toml"),
            source: std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied"),
        };
        assert_eq!(e.to_string(), "/x/node.toml: cannot read: denied");
    }

    #[test]
    fn add_bootstrap_limit() {
        let mut c = ok("[network]\nbootstrap = [\"10.0.0.1\"]");
        c.add_bootstrap(&["10.0.0.2".into(), "10.0.0.1".into()])
            .unwrap();
        assert_eq!(
            c.network.bootstrap,
            vec![sa("10.0.0.1:58008"), sa("10.0.0.2:58008")]
        );
        let before = c.clone();
        let err = c
            .add_bootstrap(&["10.0.0.3:1".into(), "10.0.0.4".into()])
            .unwrap_err();
        let shown = err.to_string();
        assert!(
            shown.starts_with("command line: network.bootstrap: 4 bootstrap addresses in all"),
            "{shown}"
        );
        assert!(shown.contains("/etc/hermes/node.toml"), "{shown}");
        assert_eq!(c, before, "unchanged on error");
        c.add_bootstrap(&["10.0.0.3:1".into()]).unwrap();
        assert_eq!(c.network.bootstrap.len(), 3);

        let mut d = parse("", None, &env()).unwrap();
        let four: Vec<String> = (1..=4).map(|i| format!("10.0.0.{i}")).collect();
        let err = d.add_bootstrap(&four).unwrap_err();
        assert_eq!(
            err.to_string(),
            "command line: network.bootstrap: 4 bootstrap addresses given; at most 3 are allowed"
        );
        let err = d.add_bootstrap(&["host.example".into()]).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("command line: network.bootstrap: "));
        d.add_bootstrap(&four[..3]).unwrap();
        assert_eq!(d.network.bootstrap.len(), 3);
    }

    #[test]
    fn peer_addresses() {
        assert_eq!(parse_peer_addr("192.0.2.7"), Ok(sa("192.0.2.7:58008")));
        assert_eq!(parse_peer_addr("192.0.2.7:9"), Ok(sa("192.0.2.7:9")));
        assert_eq!(parse_peer_addr(" 127.0.0.3 "), Ok(sa("127.0.0.3:58008")));
        assert_eq!(parse_peer_addr("::1"), Ok(sa("[::1]:58008")));
        assert_eq!(parse_peer_addr("[::1]"), Ok(sa("[::1]:58008")));
        assert_eq!(
            parse_peer_addr("[2001:db8::1]:5"),
            Ok(sa("[2001:db8::1]:5"))
        );
        for bad in [
            "",
            "example.org",
            "example.org:58008",
            "1.2.3",
            "1.2.3.4:",
            "1.2.3.4:65536",
            "1.2.3.4:x",
            "0.0.0.0",
            "[::]:58008",
            "1.2.3.4:0",
            "1.2.3.4 x\n",
            "::1:58008:",
        ] {
            match parse_peer_addr(bad) {
                Err(reason) => assert!(!reason.contains('\n'), "{reason:?}"),
                Ok(a) => panic!("{bad:?} accepted as {a}"),
            }
        }
        // Surrounding white space (a trailing newline from a script) is ignored.
        assert_eq!(parse_peer_addr("1.2.3.4\n"), Ok(sa("1.2.3.4:58008")));
        let r = parse_peer_addr("1.2.3.4:70000").unwrap_err();
        assert!(r.contains("port"), "{r}");
        let r = parse_peer_addr("example.org").unwrap_err();
        assert!(r.contains("\"example.org\""), "{r}");
    }

    #[test]
    fn lookup_order() {
        let all = Env {
            hermes_config: Some("/env/node.toml".into()),
            xdg_config_home: Some("/xdg".into()),
            xdg_data_home: None,
            home: Some("/home/u".into()),
        };
        assert_eq!(
            locate(Some(Path::new("/explicit.toml")), &all),
            Location::Required("/explicit.toml".into())
        );
        assert_eq!(
            locate(None, &all),
            Location::Required("/env/node.toml".into())
        );
        let no_env = Env {
            hermes_config: Some("".into()),
            ..all.clone()
        };
        assert_eq!(
            locate(None, &no_env),
            Location::Optional("/xdg/hermes/node.toml".into())
        );
        let home_only = Env {
            hermes_config: None,
            xdg_config_home: None,
            ..all.clone()
        };
        assert_eq!(
            locate(None, &home_only),
            Location::Optional("/home/u/.config/hermes/node.toml".into())
        );
        let relative_xdg = Env {
            xdg_config_home: Some("rel".into()),
            ..home_only.clone()
        };
        assert_eq!(
            locate(None, &relative_xdg),
            Location::Optional("/home/u/.config/hermes/node.toml".into())
        );
        assert_eq!(locate(None, &Env::default()), Location::Defaults);
    }

    #[test]
    fn load_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let base = Env {
            home: Some(root.join("home").into_os_string()),
            ..Env::default()
        };

        // Nothing anywhere: the defaults.
        let c = load_with_env(None, &base).unwrap();
        assert_eq!(c.source, None);
        assert_eq!(c.node.data_dir, root.join("home/.local/share/hermes"));

        // An explicit path must exist, and so must $HERMES_CONFIG.
        let missing = root.join("missing.toml");
        let err = load_with_env(Some(&missing), &base).unwrap_err();
        assert!(
            matches!(&err, ConfigError::NotFound { path } if *path == missing),
            "{err}"
        );
        let env_missing = Env {
            hermes_config: Some(missing.clone().into_os_string()),
            ..base.clone()
        };
        assert!(matches!(
            load_with_env(None, &env_missing),
            Err(ConfigError::NotFound { .. })
        ));

        // The per-user file is used when it exists.
        let user = root.join("home/.config/hermes");
        std::fs::create_dir_all(&user).unwrap();
        std::fs::write(user.join("node.toml"), "[node]\ndata_dir = \"d\"\n").unwrap();
        let c = load_with_env(None, &base).unwrap();
        assert_eq!(c.source, Some(user.join("node.toml")));
        assert_eq!(c.node.data_dir, user.join("d"));

        // An explicit file wins, and errors name it.
        let explicit = root.join("x.toml");
        std::fs::write(&explicit, "[node]\nlisen = 1\n").unwrap();
        let err = load_with_env(Some(&explicit), &base).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: node.lisen: unknown key; did you mean `listen`?",
                explicit.display()
            )
        );

        // A folder cannot be read.
        let err = load_with_env(Some(root), &base).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
        assert!(err.to_string().contains(": cannot read: "), "{err}");
    }

    #[test]
    fn shipped_file_is_the_defaults() {
        let e = env();
        let shipped = parse(SHIPPED, Some(Path::new("/etc/hermes/node.toml")), &e).unwrap();
        let defaults = parse("", None, &e).unwrap();
        assert_eq!(
            Config {
                source: None,
                ..shipped
            },
            defaults
        );
    }

    #[test]
    fn shipped_file_documents_every_key() {
        let table: toml::Table = SHIPPED.parse().unwrap();
        let sections = [
            ("node", &["listen", "data_dir", "advertise", "relay"][..]),
            (
                "network",
                &["bootstrap", "min_neighbours", "max_neighbours"][..],
            ),
            (
                "routing",
                &[
                    "mode",
                    "hops",
                    "ttl",
                    "shards",
                    "shards_needed",
                    "retry_max",
                    "key_rotation",
                    "key_grace",
                ][..],
            ),
            ("client", &["socket", "legacy_port"][..]),
            ("log", &["level", "format"][..]),
            (
                "limits",
                &[
                    "packets_per_sec",
                    "packet_burst",
                    "bytes_per_sec",
                    "byte_burst",
                    "new_entries_per_min",
                    "gossip_records_per_min",
                    "replay_tags_per_key",
                    "max_ttl",
                    "handshakes_per_ip",
                    "handshakes_total",
                    "backoff",
                ][..],
            ),
        ];
        assert_eq!(table.len(), sections.len());
        for (section, keys) in sections {
            let t = table[section].as_table().unwrap();
            assert_eq!(t.len(), keys.len(), "[{section}]");
            for k in keys {
                assert!(t.contains_key(*k), "{section}.{k} missing");
            }
        }
    }
}
