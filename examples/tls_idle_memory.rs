//! The heap one idle TLS session keeps after its handshake (issue 13 asks for
//! at most 64 KiB per idle TLS connection).
//!
//! Makes test certificates with `openssl`, opens N sessions against in-process
//! rustls clients over socketpairs, completes each handshake, moves a request
//! and a 1 MiB reply through each (so that every buffer has been used), then
//! compares the C heap in use (glibc's mallinfo2, main thread) before and after
//! dropping the server sessions only.
//!
//!     cargo run --release --example tls_idle_memory [N]

#[cfg(all(feature = "tls", target_env = "gnu"))]
#[path = "../tests/common/certs.rs"]
mod certs;
#[cfg(all(feature = "tls", target_env = "gnu"))]
#[path = "../tests/common/tls_client.rs"]
mod tls_client;

#[cfg(all(feature = "tls", target_env = "gnu"))]
fn main() {
    use nbdlite::sys::heap_in_use;
    use nbdlite::tls::{Session, TlsMode, TlsOptions, server_config};
    use rustls::version::{TLS12, TLS13};

    let n: usize = std::env::args()
        .nth(1)
        .map_or(200, |a| a.parse().expect("N: a number"));
    if !certs::have_openssl() {
        eprintln!("tls_idle_memory: needs the openssl command");
        std::process::exit(1);
    }
    let root = std::path::PathBuf::from(format!("/tmp/nbdlite-idle-{}", std::process::id()));
    std::fs::create_dir_all(&root).expect("temp dir");
    let c = certs::make(&root);
    let reply = vec![7u8; 1 << 20];
    println!(
        "size_of::<Session>() = {} bytes",
        std::mem::size_of::<Session>()
    );
    for (label, verify_peer, versions) in [
        ("TLS 1.3", false, &[&TLS13][..]),
        ("TLS 1.2", false, &[&TLS12][..]),
        ("TLS 1.3, verified client certificate", true, &[&TLS13][..]),
    ] {
        let cfg = server_config(&TlsOptions {
            asked: Some(TlsMode::Require),
            certificates: Some(c.dir.clone()),
            verify_peer,
            psk: None,
        })
        .expect("server config");
        let auth = verify_peer.then_some(c.dir.as_path());
        let client = tls_client::client_config(&c.dir, auth, versions);
        let mut clients = Vec::with_capacity(n);
        let mut servers = Vec::with_capacity(n);
        for _ in 0..n {
            let mut p = tls_client::Pair::start(cfg.clone(), client.clone()).expect("start");
            p.handshake().expect("handshake");
            assert_eq!(p.client_to_server(&[1u8; 32]).len(), 32);
            assert_eq!(
                p.server_to_client(&[&[2u8; 16], &reply]).len(),
                reply.len() + 16
            );
            let tls_client::Pair {
                client,
                csock,
                server,
                ssock,
            } = p;
            clients.push((client, csock, ssock));
            servers.push(server);
        }
        let with = heap_in_use();
        drop(servers);
        let without = heap_in_use();
        println!(
            "{label}: {} bytes of heap per idle session ({n} sessions)",
            with.saturating_sub(without) / n
        );
        drop(clients);
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[cfg(not(all(feature = "tls", target_env = "gnu")))]
fn main() {
    eprintln!("tls_idle_memory: needs the tls feature and glibc");
}
