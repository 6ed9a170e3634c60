//! The seed's text protocol, on `127.0.0.1:<legacy_port>` when configured.
//!
//! One request per connection: `PUSH IP:<ip> MSG:<text>` answers `SUCCESS` or
//! `FAIL`; `PULL` answers `SUCCESS <n>` and n lines `IP: <ip> MSG:<text>`, or
//! `FAIL` (control characters in a text are escaped, as `hermes pull` does,
//! so the count of lines holds). The seed's client sends no newline and never
//! closes its side, so the answer follows the first read (of at most
//! [`MAX_REQUEST`] bytes). A request that fills that read may have been cut
//! (the seed's client sends one write), so it is answered `FAIL`, as is a
//! push whose text is over the message limit.
//!
//! Only the daemon's own user is served: the owner of the connecting socket
//! is looked up ([`crate::localuser`]) by the Listener; another uid, or one that cannot be
//! found, gets the connection closed without an answer.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::client_session::ClientDeps;
use super::inbox::{Confirm, Pull};
use super::router::Push;

/// The seed's read size.
pub const MAX_REQUEST: usize = 2048;
/// Time for the request to arrive.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Most messages one legacy pull returns.
pub const MAX_LEGACY_PULL: usize = 1000;

/// A parsed legacy request.
#[derive(Debug, PartialEq, Eq)]
pub enum LegacyRequest {
    Push { ip: String, text: String },
    Pull,
}

/// Parses one request; None for anything else.
pub fn parse(raw: &[u8]) -> Option<LegacyRequest> {
    let s = std::str::from_utf8(raw).ok()?;
    let s = s.trim_end_matches(['\r', '\n']);
    if s.trim() == "PULL" {
        return Some(LegacyRequest::Pull);
    }
    let rest = s.strip_prefix("PUSH IP:")?;
    let (ip, text) = rest.split_once(" MSG:")?;
    Some(LegacyRequest::Push {
        ip: ip.trim().to_string(),
        text: text.to_string(),
    })
}

pub async fn serve_legacy(mut stream: TcpStream, deps: ClientDeps) {
    let mut buf = vec![0u8; MAX_REQUEST];
    let n = match tokio::time::timeout(READ_TIMEOUT, stream.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => n,
        _ => return,
    };
    if n == MAX_REQUEST {
        // Possibly cut: answering SUCCESS would deliver a truncated text.
        let _ = stream.write_all(b"FAIL").await;
        let _ = stream.shutdown().await;
        return;
    }
    let answer = match parse(&buf[..n]) {
        Some(LegacyRequest::Push { ip, text }) => {
            match deps.router.send(Push { to: ip, text }).await {
                Ok(Ok(_)) => "SUCCESS".to_string(),
                Ok(Err(e)) => {
                    slog::info!(deps.log, "legacy push refused"; "reason" => %e);
                    "FAIL".to_string()
                }
                Err(_) => "FAIL".to_string(),
            }
        }
        Some(LegacyRequest::Pull) => {
            let msgs = match deps
                .inbox
                .send(Pull {
                    max: MAX_LEGACY_PULL,
                })
                .await
            {
                Ok(Ok(m)) => m,
                _ => {
                    let _ = stream.write_all(b"FAIL").await;
                    return;
                }
            };
            let mut out = format!("SUCCESS {}\n", msgs.len());
            for m in &msgs {
                out.push_str(&m.pull_line());
                out.push('\n');
            }
            if stream.write_all(out.as_bytes()).await.is_ok() && stream.flush().await.is_ok() {
                let ids = msgs.iter().map(|m| m.id).collect();
                let _ = deps.inbox.send(Confirm { ids }).await;
            }
            let _ = stream.shutdown().await;
            return;
        }
        None => "FAIL".to_string(),
    };
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_seed_requests() {
        assert_eq!(parse(b"PULL"), Some(LegacyRequest::Pull));
        assert_eq!(
            parse(b"PUSH IP:127.0.0.4 MSG:hello there"),
            Some(LegacyRequest::Push {
                ip: "127.0.0.4".into(),
                text: "hello there".into()
            })
        );
        assert_eq!(
            parse(b"PUSH IP:1.2.3.4 MSG: MSG:x"),
            Some(LegacyRequest::Push {
                ip: "1.2.3.4".into(),
                text: " MSG:x".into()
            })
        );
        assert_eq!(parse(b"PUSH 1.2.3.4 hi"), None);
        assert_eq!(parse(&[0xff, 0xfe]), None);
        assert_eq!(parse(b""), None);
    }
}
