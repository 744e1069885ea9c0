//! qemu-io and qemu-img against nbdlite: the client most users run. qemu 10
//! negotiates extended headers, so these also exercise the 64-bit protocol.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{
    Server, TempDir, bin, have, qemu_img, qemu_io, qemu_io_command, run, run_ok, sparse_file,
};

/// `qemu-img convert -f raw -O raw FROM TO` (`-n`: into an existing target).
fn convert(from: &str, to: &str, existing: bool) {
    let mut args = vec!["convert"];
    if existing {
        args.push("-n");
    }
    args.extend(["-f", "raw", "-O", "raw", from, to]);
    qemu_img(&args);
}

/// `qemu-img compare`: the two raw images hold the same bytes.
fn compare(a: &str, b: &str) {
    qemu_img(&["compare", "-f", "raw", "-F", "raw", a, b]);
}

/// `qemu-img map` of a raw image, as JSON.
fn map(uri: &str) -> String {
    qemu_img(&["map", "--output=json", "-f", "raw", uri])
}

/// Deterministic bytes that differ at every offset.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect()
}

#[track_caller]
fn assert_same_file(a: &Path, b: &Path) {
    let (x, y) = (fs::read(a).unwrap(), fs::read(b).unwrap());
    assert_eq!(x.len(), y.len(), "sizes differ");
    if let Some(i) = x.iter().zip(&y).position(|(p, q)| p != q) {
        panic!("{} and {} differ at byte {i}", a.display(), b.display());
    }
}

#[test]
fn memory_write_read_zero_discard_map() {
    if !have(&["qemu-io", "qemu-img"]) {
        return;
    }
    let srv = Server::start(&["memory", "64M"]);
    let uri = srv.uri();
    qemu_io(
        &uri,
        &[
            "write -P 0xab 0 1M",
            "read -P 0xab 0 1M",
            "write -P 0x11 3m 12345",
            "read -P 0x11 3m 12345",
            "read -P 0 2m 1m",
            "write -z -u 64k 64k",
            "read -P 0 64k 64k",
            "discard 512k 512k",
            "read -P 0 512k 512k",
            "flush",
        ],
    );
    let map = map(&uri);
    // data at 0..64k, a hole where zeroed with unmap, data 128k..512k, then a hole
    // from the discard on to the data at 3M
    assert!(map.contains(r#""start": 0, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true"#), "{map}");
    assert!(map.contains(r#""start": 65536, "length": 65536, "depth": 0, "present": true, "zero": true, "data": false"#), "{map}");
    assert!(map.contains(r#""start": 524288, "length": 2621440, "depth": 0, "present": true, "zero": true, "data": false"#), "{map}");
}

#[test]
fn extended_headers_are_negotiated_and_used() {
    if !have(&["qemu-io"]) {
        return;
    }
    let srv = Server::start(&["memory", "64M"]);
    let out = run(
        qemu_io_command(
            &srv.uri(),
            &[
                "write -P 0x5a 1m 256k",
                "read -P 0x5a 1m 256k",
                "write -z -u 2m 1m",
                "discard 4m 1m",
                "flush",
                "map",
            ],
        )
        .args(["--trace", "nbd_*"]),
        60,
    );
    let trace = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{trace}");
    assert!(
        trace.contains("Received option reply 11 (extended headers), type 1 (ack)"),
        "extended headers not acknowledged:\n{trace}"
    );
    for cmd in [
        "(write)",
        "(read)",
        "(write zeroes)",
        "(trim)",
        "(flush)",
        "(block status)",
    ] {
        assert!(
            trace.contains(cmd),
            "no {cmd} request in the trace:\n{trace}"
        );
    }
    assert!(!String::from_utf8_lossy(&out.stdout).contains("failed"));
}

#[test]
fn without_structured_replies_qemu_falls_back() {
    if !have(&["qemu-io"]) {
        return;
    }
    let srv = Server::start(&["--no-sr", "memory", "8M"]);
    qemu_io(
        &srv.uri(),
        &[
            "write -P 7 0 64k",
            "read -P 7 0 64k",
            "write -z 0 4k",
            "read -P 0 0 4k",
        ],
    );
}

#[test]
fn convert_a_file_export_out_and_in() {
    if !have(&["qemu-img"]) {
        return;
    }
    let dir = TempDir::new();
    let src = dir.join("src.raw");
    fs::write(&src, noise(24 << 20, 1)).unwrap();
    let srv = Server::start(&["file", src.to_str().unwrap()]);
    // Out: export -> file, byte-identical.
    let copy = dir.join("copy.raw");
    convert(&srv.uri(), copy.to_str().unwrap(), false);
    assert_same_file(&src, &copy);
    compare(&srv.uri(), copy.to_str().unwrap());
    drop(srv);

    // In: file -> a file export of the same size.
    let target = dir.join("target.raw");
    fs::write(&target, vec![0u8; 24 << 20]).unwrap();
    let srv = Server::start(&["file", target.to_str().unwrap()]);
    convert(src.to_str().unwrap(), &srv.uri(), true);
    drop(srv); // every reply was acknowledged before qemu-img exited
    assert_same_file(&src, &target);
}

#[test]
fn sparse_file_holes_survive() {
    if !have(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = TempDir::new();
    let img = dir.join("sparse.raw");
    sparse_file(&img, 32 << 20);
    let srv = Server::start(&["file", img.to_str().unwrap()]);
    qemu_io(&srv.uri(), &["write -P 0x42 8m 1m"]);
    let map = map(&srv.uri());
    assert!(map.contains(r#""start": 0, "length": 8388608, "depth": 0, "present": true, "zero": true, "data": false"#), "{map}");
    assert!(map.contains(r#""start": 8388608, "length": 1048576, "depth": 0, "present": true, "zero": false, "data": true"#), "{map}");
    let copy = dir.join("copy.raw");
    convert(&srv.uri(), copy.to_str().unwrap(), false);
    assert_same_file(&img, &copy);
    // Discard punches a hole in the file itself.
    qemu_io(&srv.uri(), &["discard 8m 1m", "read -P 0 8m 1m"]);
}

#[test]
fn read_only_file_export() {
    if !have(&["qemu-io"]) {
        return;
    }
    let dir = TempDir::new();
    let img = dir.join("ro.raw");
    fs::write(&img, vec![9u8; 1 << 20]).unwrap();
    let srv = Server::start(&["-r", "file", img.to_str().unwrap()]);
    let out = run(&mut qemu_io_command(&srv.uri(), &["write -P 1 0 4k"]), 60);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("failed") || text.contains("read-only") || !out.status.success(),
        "{text}"
    );
    let out = run_ok(
        qemu_io_command(&srv.uri(), &["read -P 9 0 1M"]).arg("-r"),
        60,
    );
    assert!(!out.contains("failed"), "{out}");
    assert_eq!(fs::read(&img).unwrap(), vec![9u8; 1 << 20]);
}

#[test]
fn a_gibibyte_through_memory() {
    if !have(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = TempDir::new();
    let srv = Server::start(&["memory", "1G"]);
    qemu_io(
        &srv.uri(),
        &[
            "write -P 0x61 0 32M",
            "write -P 0x62 500M 64M",
            "write -P 0x63 1000M 24M",
        ],
    );
    let out = dir.join("out.raw");
    convert(&srv.uri(), out.to_str().unwrap(), false);
    compare(&srv.uri(), out.to_str().unwrap());
    let f = fs::File::open(&out).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 1 << 30);
}

/// One server on a Unix socket and a TCP port: what is written over one is read
/// over the other. The clients run under `--run`, which hands them `$port` (the
/// port the kernel chose for `-p 0`) and `$uri` (the Unix socket's URI).
#[test]
fn tcp_and_unix_at_once() {
    if !have(&["qemu-io"]) {
        return;
    }
    let dir = TempDir::new();
    let sock = dir.join("sock");
    let clients = "qemu-io -f raw \"nbd://127.0.0.1:$port\" -c 'write -P 3 0 64k' && \
                   qemu-io -f raw \"$uri\" -c 'read -P 3 0 64k'";
    let out = run_ok(
        Command::new(bin())
            .args(["-U", sock.to_str().unwrap(), "-i", "127.0.0.1", "-p", "0"])
            .args(["memory", "8M", "--run", clients]),
        120,
    );
    assert!(!out.contains("failed"), "{out}");
    assert_eq!(out.matches("64 KiB, 1 ops").count(), 2, "{out}");
}
