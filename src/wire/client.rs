//! The local client protocol: `hermes push/pull/status/id` to the daemon,
//! over the Unix socket.
//!
//! Each frame is a 4-byte big-endian length and a postcard body. A client
//! connection carries a sequence of request/response pairs; a pull is a
//! `Pull` answered with messages, then a `Confirm` of the ids the client has
//! printed, so a pull cut off half way loses nothing.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

use super::{decode_limited, encode_limited, MessageId, WireError};

pub const CLIENT_VERSION: u8 = 1;
/// Largest client frame (a pull answer is split across several frames).
pub const MAX_CLIENT_FRAME: usize = 1 << 20;
/// Most messages one pull answer carries.
pub const MAX_PULL_BATCH: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientFrame<T> {
    pub version: u8,
    pub body: T,
}

/// Append new variants at the end only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Queue a message; `to` is an IP, IP:PORT, node address or contact name.
    Push {
        to: String,
        text: String,
    },
    /// Wait until the message's receipt arrives, or the timeout passes.
    Wait {
        id: MessageId,
        timeout_ms: u64,
    },
    /// Messages received and not yet confirmed, oldest first.
    Pull {
        max: u32,
    },
    /// The client has shown these; remove them from the inbox.
    Confirm {
        ids: Vec<MessageId>,
    },
    Status,
    Id,
    /// Test-only: make a supervised actor fail (honoured only when the
    /// daemon runs with `HERMES_FAULT_INJECTION=1`).
    Fault {
        actor: String,
        kind: String,
    },
    /// The address book.
    Peers,
    /// Name a node: `dest` is an IP, IP:PORT (probed and pinned) or node address.
    ContactAdd {
        name: String,
        dest: String,
    },
    /// Every contact and pinned IP:PORT.
    Contacts,
    /// Forget a contact, or a pinned IP:PORT (`name` is then that address).
    ContactRemove {
        name: String,
    },
    // --- store backup (issue 8) ---
    /// Copy the store, consistently, into a fresh store in the new or empty
    /// dir `path` (absolute); with `with_key` the identity key as well.
    Backup {
        path: String,
        with_key: bool,
    },
    // --- end store backup ---
    // --- operations (issue 12) ---
    /// What waits in the outbox: up to `max` entries (capped at
    /// [`MAX_OUTBOX_LIST`]), the next due first.
    Outbox {
        max: u32,
    },
    /// Stop sending a queued or in-flight message (`id` as `push` printed it).
    OutboxCancel {
        id: String,
    },
    /// Messages received, oldest first, without removing any: `max` of them
    /// (capped at [`MAX_PULL_BATCH`]) after skipping `skip`.
    Peek {
        skip: u32,
        max: u32,
    },
    // --- end operations ---
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Pushed {
        id: MessageId,
    },
    Delivered,
    TimedOut,
    Messages(Vec<InboxMessage>),
    Confirmed {
        removed: u32,
    },
    Status(Box<StatusReport>),
    Id {
        address: String,
    },
    Done,
    /// The request was refused: bad input (`code` 1) or a daemon fault.
    Error {
        code: u8,
        message: String,
    },
    Peers(Vec<PeerStatus>),
    /// Answers `Contacts` (every entry) and `ContactAdd` (the entry added).
    Contacts(Vec<ContactInfo>),
    // --- store backup (issue 8) ---
    /// The backup is written: how many records it holds.
    BackedUp(BackupReport),
    // --- end store backup ---
    // --- operations (issue 12) ---
    /// Answers `Outbox`: `total` entries wait, `entries` are the first of them.
    Outbox {
        total: u64,
        entries: Vec<OutboxItem>,
    },
    // --- end operations ---
    /// As [`Response::Pushed`], with a warning for the user (e.g. a path
    /// shorter than `routing.hops`).
    PushedShort {
        id: MessageId,
        warning: String,
    },
}

/// Most outbox entries one `Outbox` answer lists (about 200 bytes each).
pub const MAX_OUTBOX_LIST: usize = 1000;

/// One outbox entry as `hermes outbox` shows it (also printed as JSON, so
/// field names are part of the contract).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxItem {
    pub id: String,
    /// The recipient's node address.
    pub to: String,
    /// "queued" (never sent yet) or "in flight" (sent, no receipt yet).
    pub state: String,
    /// Sendings so far.
    pub attempts: u32,
    /// Milliseconds since the Unix epoch: when it was pushed, and when the
    /// next sending is due.
    pub created_ms: u64,
    pub next_try_ms: u64,
    /// Seconds since the Unix epoch after which it has failed.
    pub expires_at: u64,
}

/// A bootstrap address and how the last dial to it went, for `status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapStatus {
    pub address: String,
    /// Why the last dial failed; none if it has not failed since it last linked.
    pub last_error: Option<String>,
    /// Seconds since the epoch of that failure.
    pub failed_at: Option<u64>,
}

/// What `hermes store backup` copied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupReport {
    pub path: String,
    /// The backup store's generation (its manifest says the same).
    pub generation: u64,
    pub inbox: u64,
    pub outbox: u64,
    pub drop_list: u64,
    pub peers: u64,
    /// Whether identity.key was copied too.
    pub with_key: bool,
}

/// A delivered message as `pull` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxMessage {
    pub id: MessageId,
    pub sender: String,
    pub sender_ip: String,
    /// Milliseconds since the Unix epoch: sent by the sender's clock,
    /// received by ours.
    pub sent: u64,
    pub received: u64,
    pub text: String,
}

impl InboxMessage {
    /// The seed's pull line, `IP: <sender-ip> MSG:<text>`, with control
    /// characters escaped so that one message stays one line.
    pub fn pull_line(&self) -> String {
        let mut line = format!("IP: {} MSG:", self.sender_ip);
        for c in self.text.chars() {
            if c.is_control() {
                line.extend(c.escape_default());
            } else {
                line.push(c);
            }
        }
        line
    }
}

/// `hermes status`: also printed as JSON, so field names are part of the contract.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub address: String,
    pub listen: String,
    pub neighbours: Vec<NeighbourStatus>,
    pub outbox: OutboxCounts,
    pub inbox: u64,
    pub drop_list: u64,
    pub counters: Counters,
    /// The daemon's version (`hermes --version`).
    pub version: String,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    /// The config file it read; none for the built-in defaults.
    pub config_file: Option<String>,
    pub data_dir: String,
    /// `log.level` in force now (SIGHUP reloads it).
    pub log_level: String,
    /// `network.bootstrap`, with the last error of each.
    pub bootstrap: Vec<BootstrapStatus>,
    /// Things an operator should look at (e.g. no neighbours), one line each.
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeighbourStatus {
    pub address: String,
    pub listen: String,
    /// "in" or "out": who dialled.
    pub direction: String,
    /// Seconds since the link came up.
    pub age_secs: u64,
    /// The last measured round trip, in microseconds (none before the first pong).
    pub rtt_us: Option<u64>,
}

/// One address-book entry as `hermes peers` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub address: String,
    pub listen: String,
    pub relay: bool,
    /// Linked with this node right now.
    pub neighbour: bool,
    /// Seconds since the epoch when the node was last known alive.
    pub last_seen: u64,
    /// Seconds since the epoch of the last link with it.
    pub last_success: Option<u64>,
    /// Dials that failed since the last success.
    pub failures: u32,
    /// The epoch of the packet key its record announces (onion mode), if any.
    pub packet_key_epoch: Option<u64>,
}

/// One contact or pinned address as `hermes contacts list` shows it (also
/// printed as JSON, so field names are part of the contract).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactInfo {
    /// The contact's name, or for a pin the IP:PORT itself.
    pub name: String,
    /// "name" (a contact) or "ip" (a key pinned on first use of an IP:PORT).
    pub kind: String,
    /// The pinned node address (64 hex digits).
    pub address: String,
    /// The IP:PORT probed for the key, when it came from one.
    pub dest: Option<String>,
    /// Seconds since the epoch when the key was pinned.
    pub added: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxCounts {
    pub queued: u64,
    pub in_flight: u64,
    pub delivered: u64,
    pub failed: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub relayed: u64,
    pub dropped: u64,
    pub retried: u64,
    pub replays: u64,
}

pub fn encode<T: Serialize>(body: &T) -> Result<Vec<u8>, WireError> {
    encode_limited(
        &ClientFrame {
            version: CLIENT_VERSION,
            body,
        },
        MAX_CLIENT_FRAME,
    )
}

pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, WireError> {
    match bytes.first() {
        None => return Err(WireError::Malformed),
        Some(&v) if v != CLIENT_VERSION => return Err(WireError::Version(v)),
        _ => {}
    }
    let frame: ClientFrame<T> = decode_limited(bytes, MAX_CLIENT_FRAME)?;
    Ok(frame.body)
}

#[derive(Debug, thiserror::Error)]
pub enum FrameIoError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Wire(#[from] WireError),
}

/// Blocking write of one length-prefixed frame (the client side).
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, body: &T) -> Result<(), FrameIoError> {
    let bytes = encode(body)?;
    let mut buf = Vec::with_capacity(4 + bytes.len());
    buf.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    buf.extend_from_slice(&bytes);
    w.write_all(&buf)?;
    w.flush()?;
    Ok(())
}

/// Blocking read of one length-prefixed frame (the client side).
pub fn read_frame<R: Read, T: for<'a> Deserialize<'a>>(r: &mut R) -> Result<T, FrameIoError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_CLIENT_FRAME {
        return Err(WireError::TooLarge {
            size: len,
            limit: MAX_CLIENT_FRAME,
        }
        .into());
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    Ok(decode(&buf)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pull_line_keeps_one_message_on_one_line() {
        let m = InboxMessage {
            id: MessageId([0; 16]),
            sender: String::new(),
            sender_ip: "127.0.0.2".into(),
            sent: 0,
            received: 0,
            text: "two\nlines\tand é".into(),
        };
        assert_eq!(m.pull_line(), "IP: 127.0.0.2 MSG:two\\nlines\\tand é");
    }

    #[test]
    fn requests_round_trip_through_a_stream() {
        let reqs = vec![
            Request::Push {
                to: "127.0.0.4".into(),
                text: "hi".into(),
            },
            Request::Pull { max: 3 },
            Request::Confirm {
                ids: vec![MessageId::random()],
            },
            Request::Status,
            Request::ContactAdd {
                name: "bob".into(),
                dest: "127.0.0.4:58008".into(),
            },
            Request::Contacts,
            Request::ContactRemove { name: "bob".into() },
            Request::Outbox { max: 10 },
            Request::OutboxCancel {
                id: MessageId::random().to_string(),
            },
            Request::Peek { skip: 16, max: 16 },
        ];
        let mut buf = Vec::new();
        for r in &reqs {
            write_frame(&mut buf, r).unwrap();
        }
        let mut cur = std::io::Cursor::new(buf);
        for r in &reqs {
            let got: Request = read_frame(&mut cur).unwrap();
            assert_eq!(&got, r);
        }
    }

    #[test]
    fn oversized_length_refused_before_allocating() {
        let mut bytes = (u32::MAX).to_be_bytes().to_vec();
        bytes.extend_from_slice(&[1, 2, 3]);
        let r: Result<Request, _> = read_frame(&mut std::io::Cursor::new(bytes));
        assert!(matches!(
            r,
            Err(FrameIoError::Wire(WireError::TooLarge { .. }))
        ));
    }

    /// The client_request fuzz seeds are real frames: each decodes (the new
    /// requests' seeds were written by hand).
    #[test]
    fn fuzz_seeds_decode() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/seeds/client_request");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let bytes = std::fs::read(&path).unwrap();
            if name.starts_with("req_") {
                decode::<Request>(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            } else if name.starts_with("resp_") {
                decode::<Response>(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            } else {
                continue;
            }
            seen += 1;
        }
        assert!(seen >= 20, "{seen} seeds");
        let peek: Request = decode(&std::fs::read(format!("{dir}/req_peek")).unwrap()).unwrap();
        assert_eq!(peek, Request::Peek { skip: 16, max: 16 });
        let out: Response = decode(&std::fs::read(format!("{dir}/resp_outbox")).unwrap()).unwrap();
        assert!(
            matches!(out, Response::Outbox { total: 2, ref entries } if entries[0].state == "in flight")
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode::<Request>(&bytes);
            let _ = decode::<Response>(&bytes);
        }

        #[test]
        fn push_round_trips(to in ".{0,64}", text in ".{0,256}") {
            let req = Request::Push { to, text };
            let bytes = encode(&req).unwrap();
            prop_assert_eq!(decode::<Request>(&bytes).unwrap(), req);
        }

        #[test]
        fn contact_requests_round_trip(name in ".{0,80}", dest in ".{0,80}") {
            for req in [
                Request::ContactAdd { name: name.clone(), dest },
                Request::ContactRemove { name },
                Request::Contacts,
            ] {
                let bytes = encode(&req).unwrap();
                prop_assert_eq!(decode::<Request>(&bytes).unwrap(), req);
            }
        }

        #[test]
        fn contacts_answer_round_trips(
            entries in proptest::collection::vec(
                (".{0,64}", "[a-z]{2,4}", "[0-9a-f]{64}", proptest::option::of(".{0,40}"), any::<u64>()),
                0..8,
            )
        ) {
            let resp = Response::Contacts(
                entries
                    .into_iter()
                    .map(|(name, kind, address, dest, added)| ContactInfo { name, kind, address, dest, added })
                    .collect(),
            );
            let bytes = encode(&resp).unwrap();
            prop_assert_eq!(decode::<Response>(&bytes).unwrap(), resp);
        }
    }
}
