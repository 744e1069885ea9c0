//! The memory attacks of issue 14, as a hostile client would make them: crowds
//! of clients that each get the server to hold memory and then stop. Shared by
//! `tests/memory_budget.rs` and `tests/measure_memory.rs` (which measures
//! them against any build), so that the figures and the test come from the
//! same clients. Mounted beside `wire` (`#[path]`), whose client it uses.
#![allow(dead_code)]

use std::io::{ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::wire::{CMD_READ, CMD_WRITE, Client, request};

/// The clients of one attack, kept connected until dropped.
pub struct Crowd {
    pub clients: Vec<UnixStream>,
    /// Bytes the server (and the kernel's socket buffers) took from them.
    pub sent: u64,
}

/// `n` clients past the handshake (compact headers, simple replies).
fn ready(sock: &Path, n: usize) -> Vec<UnixStream> {
    (0..n)
        .map(|_| Client::ready(sock, false, false, false).0.s)
        .collect()
}

/// Sends `want[i]` bytes (from `head[i]`, then zeroes) to each client, without
/// blocking on any: round after round, until every client has sent its share
/// or none has made progress for `idle` (the server stopped reading).
fn push(clients: &[UnixStream], head: &[Vec<u8>], want: &[u64], idle: Duration) -> u64 {
    let zeroes = vec![0u8; 1 << 20];
    let mut done = vec![0u64; clients.len()];
    for c in clients {
        c.set_nonblocking(true).expect("non-blocking");
    }
    let mut last_progress = Instant::now();
    while last_progress.elapsed() < idle {
        let mut moved = false;
        for (i, mut c) in clients.iter().enumerate() {
            while done[i] < want[i] {
                let at = done[i] as usize;
                let bytes = match head[i].get(at..) {
                    Some(rest) if !rest.is_empty() => rest,
                    _ => {
                        let left = (want[i] - done[i]) as usize;
                        &zeroes[..left.min(zeroes.len())]
                    }
                };
                match c.write(bytes) {
                    Ok(n) => {
                        done[i] += n as u64;
                        moved = true;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => break, // dropped by the server: that is its right
                }
            }
        }
        if done.iter().zip(want).all(|(d, w)| d >= w) {
            break;
        }
        if moved {
            last_progress = Instant::now();
        } else {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    done.iter().sum()
}

/// `n` clients that each send a WRITE header for `len` bytes and `sent` bytes
/// of its payload, then stall. They push until the server has taken nothing
/// for `patience`.
pub fn stalled_writes(sock: &Path, n: usize, len: u64, sent: u64, patience: Duration) -> Crowd {
    let clients = ready(sock, n);
    let hdr = request(false, 0, CMD_WRITE, 1, 0, len);
    let heads = vec![hdr.clone(); n];
    let want = vec![hdr.len() as u64 + sent; n];
    let sent = push(&clients, &heads, &want, patience);
    Crowd { clients, sent }
}

/// `n` clients that each ask for `count` READs of `len` bytes and never read
/// the replies.
pub fn unread_reads(sock: &Path, n: usize, count: u64, len: u64) -> Crowd {
    let clients = ready(sock, n);
    let batch: Vec<u8> = (0..count)
        .flat_map(|i| request(false, 0, CMD_READ, i, i * len, len))
        .collect();
    let want = vec![batch.len() as u64; n];
    let heads = vec![batch; n];
    let sent = push(&clients, &heads, &want, Duration::from_millis(500));
    Crowd { clients, sent }
}

/// `n` clients past the handshake that send nothing more.
pub fn idle(sock: &Path, n: usize) -> Crowd {
    Crowd {
        clients: ready(sock, n),
        sent: 0,
    }
}

/// `n` clients past the handshake that each send the first 10 bytes of a
/// request header, then nothing.
pub fn half_sent_headers(sock: &Path, n: usize) -> Crowd {
    let mut clients = ready(sock, n);
    let hdr = request(false, 0, CMD_READ, 1, 0, 4096);
    for c in &mut clients {
        c.write_all(&hdr[..10]).expect("send half a header");
    }
    Crowd {
        clients,
        sent: 10 * n as u64,
    }
}

/// Up to `n` clients past the handshake (GO, compact headers), each sending
/// `requests` at once (whose replies it never reads); those the server turns
/// away at its connection limit are counted, not kept.
pub fn ready_some(sock: &Path, n: usize, requests: &[u8]) -> (Vec<UnixStream>, usize) {
    let mut kept = Vec::new();
    for _ in 0..n {
        if let Ok(mut s) = try_ready(sock)
            && s.write_all(requests).is_ok()
        {
            kept.push(s);
        }
    }
    let refused = n - kept.len();
    (kept, refused)
}

/// A handshake that may fail: the server closes a client it turns away.
pub fn try_ready(sock: &Path) -> std::io::Result<UnixStream> {
    use std::io::Read;
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting)?;
    let mut hello = 3u32.to_be_bytes().to_vec(); // FIXED_NEWSTYLE | NO_ZEROES
    hello.extend_from_slice(&0x4948_4156_454F_5054u64.to_be_bytes()); // IHAVEOPT
    hello.extend_from_slice(&7u32.to_be_bytes()); // GO
    hello.extend_from_slice(&6u32.to_be_bytes());
    hello.extend_from_slice(&[0; 6]); // no name, no information asked for
    s.write_all(&hello)?;
    loop {
        let mut head = [0u8; 20];
        s.read_exact(&mut head)?;
        let kind = u32::from_be_bytes([head[12], head[13], head[14], head[15]]);
        let len = u32::from_be_bytes([head[16], head[17], head[18], head[19]]);
        std::io::copy(&mut (&mut s).take(u64::from(len)), &mut std::io::sink())?;
        match kind {
            1 => return Ok(s), // ACK
            3 => {}            // INFO
            _ => return Err(ErrorKind::InvalidData.into()),
        }
    }
}
