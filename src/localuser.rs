//! Who is on the other end of a local TCP connection.
//!
//! The legacy text port listens on 127.0.0.1, where every local user can
//! connect; the daemon serves only its own user. On Linux the kernel lists
//! every TCP socket with its owner's uid in `/proc/net/tcp` (and
//! `/proc/net/tcp6`), as identd reads it: the client's socket is the row
//! whose local address is the connection's remote end and whose remote
//! address is our end. Where that cannot be read, the owner is unknown and
//! the connection is refused.

use std::net::{IpAddr, SocketAddr};

/// The tables the kernel lists TCP sockets in.
const TABLES: [&str; 2] = ["/proc/net/tcp", "/proc/net/tcp6"];

/// The uid of the process owning the local socket `client` that is
/// connected to our socket `server`; None if it cannot be known.
pub fn owner_of(client: SocketAddr, server: SocketAddr) -> Option<u32> {
    TABLES.iter().find_map(|t| {
        let text = std::fs::read_to_string(t).ok()?;
        find_owner(&text, client, server)
    })
}

/// This process's effective uid.
pub fn my_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Finds the row `client -> server` in the text of a `/proc/net/tcp*` table.
pub fn find_owner(table: &str, client: SocketAddr, server: SocketAddr) -> Option<u32> {
    let (local, remote) = (proc_addr(client), proc_addr(server));
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx:rx tr:when retrnsmt uid ...
        if f.len() > 7 && f[1].eq_ignore_ascii_case(&local) && f[2].eq_ignore_ascii_case(&remote) {
            f[7].parse().ok()
        } else {
            None
        }
    })
}

/// An address as the kernel prints it: the IP's 32-bit words in host byte
/// order, in hex, then the port in hex.
fn proc_addr(a: SocketAddr) -> String {
    let ip = match a.ip() {
        IpAddr::V4(v4) => format!("{:08X}", u32::from_ne_bytes(v4.octets())),
        IpAddr::V6(v6) => v6
            .octets()
            .chunks_exact(4)
            .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
            .collect(),
    };
    format!("{ip}:{:04X}", a.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:EA60 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1 1 0 100 0 0 10 0
   1: 0100007F:D431 0100007F:EA60 01 00000000:00000000 00:00000000 00000000  1001        0 2 1 0 20 4 30 10 -1
   2: 0100007F:EA60 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 3 1 0 20 4 30 10 -1
";

    #[test]
    fn finds_the_client_row() {
        if cfg!(target_endian = "big") {
            return; // the sample is a little-endian machine's
        }
        let server: SocketAddr = "127.0.0.1:60000".parse().unwrap();
        let client: SocketAddr = "127.0.0.1:54321".parse().unwrap();
        assert_eq!(find_owner(TABLE, client, server), Some(1001));
        // Our own end of the connection is not the client.
        assert_eq!(find_owner(TABLE, server, client), Some(1000));
        let other: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(find_owner(TABLE, other, server), None);
        assert_eq!(find_owner("", client, server), None);
        assert_eq!(find_owner("header\n garbage", client, server), None);
    }

    #[test]
    fn finds_a_real_connection_of_this_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        let stream = std::net::TcpStream::connect(server).unwrap();
        let client = stream.local_addr().unwrap();
        let (_conn, seen) = listener.accept().unwrap();
        assert_eq!(seen, client);
        if std::path::Path::new("/proc/net/tcp").exists() {
            assert_eq!(owner_of(client, server), Some(my_uid()));
        }
    }
}
