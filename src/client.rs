//! The client side of the local protocol, used by `hermes push`, `pull`,
//! `status` and `id`: blocking, one connection per command.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::wire::client::{read_frame, write_frame, FrameIoError, Request, Response};

/// Time allowed for an ordinary request to be answered.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the hermes daemon is not running (no answer on {socket}: {reason})")]
    NotRunning { socket: PathBuf, reason: String },
    #[error("lost the connection to the daemon: {0}")]
    Io(#[from] FrameIoError),
}

pub struct Client {
    stream: UnixStream,
}

impl Client {
    pub fn connect(socket: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(socket).map_err(|e| ClientError::NotRunning {
            socket: socket.to_path_buf(),
            reason: e.to_string(),
        })?;
        stream
            .set_read_timeout(Some(REQUEST_TIMEOUT))
            .map_err(|e| ClientError::Io(e.into()))?;
        Ok(Client { stream })
    }

    /// Sends one request and reads its answer, allowing `extra` beyond the
    /// usual timeout (for `push --wait`).
    pub fn call_with(&mut self, req: &Request, extra: Duration) -> Result<Response, ClientError> {
        self.stream
            .set_read_timeout(Some(REQUEST_TIMEOUT + extra))
            .map_err(|e| ClientError::Io(e.into()))?;
        write_frame(&mut self.stream, req)?;
        Ok(read_frame(&mut self.stream)?)
    }

    pub fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
        self.call_with(req, Duration::ZERO)
    }
}
