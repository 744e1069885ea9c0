//! sd_notify without libsystemd: one datagram to $NOTIFY_SOCKET, a path or an
//! `@abstract` name, so that `Type=notify` units know when we are ready.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Where readiness messages go, if anywhere.
#[derive(Debug, Clone)]
pub struct Notifier {
    addr: Option<String>,
}

impl Notifier {
    /// From the value of NOTIFY_SOCKET (taken out of the environment by main).
    pub fn new(notify_socket: Option<String>) -> Notifier {
        Notifier {
            addr: notify_socket.filter(|s| !s.is_empty()),
        }
    }

    /// Sends `msg` (e.g. "READY=1\nMAINPID=42"); failures are logged, never fatal.
    pub fn send(&self, msg: &str) {
        let Some(addr) = &self.addr else { return };
        if let Err(e) = send_to(addr, msg) {
            log::warn!("NOTIFY_SOCKET {addr}: {e}");
        }
    }

    pub fn ready(&self) {
        self.send(&format!("READY=1\nMAINPID={}", std::process::id()));
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }
}

fn send_to(addr: &str, msg: &str) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let target = match addr.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None if addr.starts_with('/') => SocketAddr::from_pathname(addr)?,
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not an absolute path or @abstract name",
            ));
        }
    };
    sock.send_to_addr(msg.as_bytes(), &target)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_path_and_abstract() {
        let dir = std::env::temp_dir().join(format!("nbdlite-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("n");
        let rx = UnixDatagram::bind(&path).unwrap();
        Notifier::new(Some(path.to_str().unwrap().into())).send("READY=1");
        let mut b = [0u8; 64];
        let n = rx.recv(&mut b).unwrap();
        assert_eq!(&b[..n], b"READY=1");
        std::fs::remove_dir_all(&dir).unwrap();

        let name = format!("nbdlite-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
            .unwrap();
        Notifier::new(Some(format!("@{name}"))).stopping();
        let n = rx.recv(&mut b).unwrap();
        assert_eq!(&b[..n], b"STOPPING=1");
        // nothing set: nothing happens
        Notifier::new(None).ready();
    }
}
