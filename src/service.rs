//! Running under a service manager: the `sd_notify` readiness protocol.
//!
//! When systemd starts the daemon with `Type=notify`, it sets `NOTIFY_SOCKET`
//! to a Unix datagram socket (a path, or an abstract name written `@name`).
//! The daemon sends one datagram of newline-separated `KEY=VALUE` lines per
//! state change: `READY=1` once it accepts clients and peers, `STATUS=...`
//! with the neighbour count as it changes, `RELOADING=1` (with
//! `MONOTONIC_USEC=`) ... `READY=1` around a
//! SIGHUP reload, and `STOPPING=1` when it starts to leave. Without
//! `NOTIFY_SOCKET` every call does nothing. A failed send is reported to the
//! caller (to log), never fatal: the node works the same without a manager.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

/// The environment variable naming the service manager's socket.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// Where notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Path(PathBuf),
    /// A Linux abstract socket name (without the leading `@` or NUL).
    Abstract(Vec<u8>),
}

/// Sends `sd_notify` messages to the service manager, if there is one.
#[derive(Debug, Default)]
pub struct Notifier {
    target: Option<Target>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot notify the service manager at {target}: {source}")]
pub struct NotifyError {
    target: String,
    source: std::io::Error,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`; a no-op notifier when it is unset or empty.
    pub fn from_env() -> Notifier {
        Notifier::from_value(std::env::var_os(NOTIFY_SOCKET_ENV).as_deref())
    }

    fn from_value(v: Option<&std::ffi::OsStr>) -> Notifier {
        use std::os::unix::ffi::OsStrExt;
        let target = match v.map(|v| v.as_bytes()) {
            None | Some([]) => None,
            Some([b'@', name @ ..]) => Some(Target::Abstract(name.to_vec())),
            Some(_) => v.map(|p| Target::Path(PathBuf::from(p))),
        };
        Notifier { target }
    }

    /// Whether a service manager listens.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends `state` (e.g. `"READY=1\nSTATUS=3 neighbours"`) as one datagram.
    pub fn notify(&self, state: &str) -> Result<(), NotifyError> {
        let Some(target) = &self.target else {
            return Ok(());
        };
        let label = match target {
            Target::Path(p) => p.display().to_string(),
            Target::Abstract(n) => format!("@{}", String::from_utf8_lossy(n)),
        };
        let err = |source| NotifyError {
            target: label.clone(),
            source,
        };
        let sock = UnixDatagram::unbound().map_err(err)?;
        match target {
            Target::Path(p) => sock.send_to(state.as_bytes(), p).map_err(err)?,
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name).map_err(err)?;
                sock.send_to_addr(state.as_bytes(), &addr).map_err(err)?
            }
        };
        Ok(())
    }
}

/// The `STATUS=` line for a neighbour count.
pub fn status_line(neighbours: usize) -> String {
    match neighbours {
        0 => "STATUS=no neighbours".to_string(),
        1 => "STATUS=1 neighbour".to_string(),
        n => format!("STATUS={n} neighbours"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_or_empty_is_a_no_op() {
        assert!(!Notifier::from_value(None).enabled());
        assert!(!Notifier::from_value(Some("".as_ref())).enabled());
        assert!(Notifier::from_value(None).notify("READY=1").is_ok());
    }

    #[test]
    fn datagrams_reach_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::from_value(Some(path.as_os_str()));
        n.notify("READY=1\nSTATUS=no neighbours").unwrap();
        let mut buf = [0u8; 256];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=no neighbours");
    }

    #[test]
    fn datagrams_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("hermes-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::from_value(Some(format!("@{name}").as_ref()));
        n.notify("STOPPING=1").unwrap();
        let mut buf = [0u8; 64];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1");
    }

    #[test]
    fn a_missing_socket_is_an_error_not_a_panic() {
        let n = Notifier::from_value(Some("/nonexistent/hermes-notify".as_ref()));
        assert!(n.notify("READY=1").is_err());
        assert_eq!(status_line(1), "STATUS=1 neighbour");
    }
}
