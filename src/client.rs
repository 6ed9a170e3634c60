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

impl Client {
    /// Sends every request of `reqs` over this one connection, keeping up to
    /// `window` unanswered, and hands each answer to `each` in order (the
    /// daemon answers pushes in the order they were sent). A request that
    /// `reqs` gives as `Err` is not sent; its error goes to `each` in its
    /// place in the order.
    pub fn pipeline<I, E>(
        &mut self,
        reqs: I,
        window: usize,
        mut each: impl FnMut(Result<Response, E>) -> Result<(), ClientError>,
    ) -> Result<(), ClientError>
    where
        I: IntoIterator<Item = Result<Request, E>>,
    {
        self.stream
            .set_read_timeout(Some(REQUEST_TIMEOUT))
            .map_err(|e| ClientError::Io(e.into()))?;
        let window = window.max(1);
        // Answers still to come, in order: `Ok(())` for a sent request, the
        // error of one that was not.
        let mut pending: std::collections::VecDeque<Result<(), E>> = Default::default();
        let mut in_flight = 0;
        for req in reqs {
            match req {
                Ok(req) => {
                    while in_flight >= window {
                        self.answer_next(&mut pending, &mut in_flight, &mut each)?;
                    }
                    write_frame(&mut self.stream, &req)?;
                    pending.push_back(Ok(()));
                    in_flight += 1;
                }
                Err(e) => pending.push_back(Err(e)),
            }
            // Hand out the errors at the front without waiting.
            while matches!(pending.front(), Some(Err(_))) {
                if let Some(Err(e)) = pending.pop_front() {
                    each(Err(e))?;
                }
            }
        }
        while !pending.is_empty() {
            self.answer_next(&mut pending, &mut in_flight, &mut each)?;
        }
        Ok(())
    }

    fn answer_next<E>(
        &mut self,
        pending: &mut std::collections::VecDeque<Result<(), E>>,
        in_flight: &mut usize,
        each: &mut impl FnMut(Result<Response, E>) -> Result<(), ClientError>,
    ) -> Result<(), ClientError> {
        match pending.pop_front() {
            Some(Ok(())) => {
                let r = read_frame(&mut self.stream)?;
                *in_flight -= 1;
                each(Ok(r))
            }
            Some(Err(e)) => each(Err(e)),
            None => Ok(()),
        }
    }
}

/// Why a line of `push --each-line` was not sent.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("line {line}: over the {max}-byte limit")]
    TooLong { line: usize, max: usize },
    #[error("line {line}: not valid UTF-8")]
    NotUtf8 { line: usize },
    #[error("cannot read standard input: {0}")]
    Read(#[from] std::io::Error),
}

/// The lines of `reader` (without their `\n`, or `\r\n`), each refused once
/// it passes `max` bytes without holding more than `max + 1` of it.
pub struct Lines<R> {
    reader: R,
    max: usize,
    line: usize,
    done: bool,
}

impl<R: std::io::BufRead> Lines<R> {
    pub fn new(reader: R, max: usize) -> Lines<R> {
        Lines {
            reader,
            max,
            line: 0,
            done: false,
        }
    }
}

impl<R: std::io::BufRead> Iterator for Lines<R> {
    type Item = Result<String, LineError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut buf = Vec::new();
        let mut too_long = false;
        let mut any = false;
        loop {
            let chunk = match self.reader.fill_buf() {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e.into()));
                }
            };
            if chunk.is_empty() {
                self.done = true;
                if !any {
                    return None;
                }
                break;
            }
            any = true;
            let (part, found) = match chunk.iter().position(|b| *b == b'\n') {
                Some(i) => (&chunk[..i], Some(i + 1)),
                None => (chunk, None),
            };
            if buf.len() + part.len() > self.max + 1 {
                too_long = true;
            } else {
                buf.extend_from_slice(part);
            }
            let used = found.unwrap_or(chunk.len());
            self.reader.consume(used);
            if found.is_some() {
                break;
            }
        }
        self.line += 1;
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        if too_long || buf.len() > self.max {
            return Some(Err(LineError::TooLong {
                line: self.line,
                max: self.max,
            }));
        }
        Some(String::from_utf8(buf).map_err(|_| LineError::NotUtf8 { line: self.line }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lines(input: &[u8], max: usize) -> Vec<Result<String, String>> {
        Lines::new(std::io::BufReader::with_capacity(7, input), max)
            .map(|r| r.map_err(|e| e.to_string()))
            .collect()
    }

    #[test]
    fn lines_split_and_refuse_long_ones() {
        assert_eq!(
            lines(b"a\nbb\r\n\nccc", 3),
            vec![
                Ok("a".into()),
                Ok("bb".into()),
                Ok("".into()),
                Ok("ccc".into())
            ]
        );
        assert_eq!(
            lines(b"abcd\nok\n", 3),
            vec![Err("line 1: over the 3-byte limit".into()), Ok("ok".into())]
        );
        assert_eq!(lines(b"", 3), Vec::<Result<String, String>>::new());
        assert_eq!(
            lines(b"\xff\n", 3),
            vec![Err("line 1: not valid UTF-8".into())]
        );
    }

    proptest! {
        #[test]
        fn lines_match_split(text in "[a-c\n]{0,60}", max in 1usize..8) {
            let want: Vec<Result<String, String>> = {
                let mut parts: Vec<&str> = text.split('\n').collect();
                if text.is_empty() || text.ends_with('\n') {
                    parts.pop();
                }
                parts
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        if p.len() > max {
                            Err(format!("line {}: over the {max}-byte limit", i + 1))
                        } else {
                            Ok(p.to_string())
                        }
                    })
                    .collect()
            };
            prop_assert_eq!(lines(text.as_bytes(), max), want);
        }
    }
}
