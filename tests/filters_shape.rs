//! The filters that shape what clients see and how fast they get it:
//! noextents, nozero, blocksize-policy and rate, with real clients (nbdsh,
//! nbdinfo, nbdcopy, qemu-io, nbdlite-bench) and the raw client (extended
//! headers), over every backend, under TLS and socket activation, stacked
//! with delay in the orders that matter, and misused on the command line.
//!
//! Timing assertions are one-sided where the server decides (a rate or a
//! delay cannot make a client faster than allowed) and generous where the
//! machine's load decides.

mod common;
#[path = "common/wire.rs"]
mod wire;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::{
    Server, TempDir, bin, have, json_field, nbdinfo, nbdlite_in, nbdsh, qemu_io, run_ok,
    socket_activate,
};
use wire::{Chunk, Client};

const MIB: u64 = 1 << 20;

/// A backend to run a filter over: the server's arguments after the
/// filters' own, and whether file I/O goes without io_uring.
struct Backend {
    name: &'static str,
    args: Vec<String>,
    sync_io: bool,
    writable: bool,
}

/// memory, file (io_uring and the fallback), null and pattern, 16 MiB each;
/// the file in `dir`.
fn backends(dir: &TempDir) -> Vec<Backend> {
    let file = |n: &str| {
        let p = dir.join(n);
        common::sparse_file(&p, 16 * MIB);
        p.display().to_string()
    };
    let b = |name, args: &[&str], sync_io, writable| Backend {
        name,
        args: args.iter().map(|s| s.to_string()).collect(),
        sync_io,
        writable,
    };
    vec![
        b("memory", &["memory", "16M"], false, true),
        b("file", &["file", &file("uring.img")], false, true),
        b(
            "file (no io_uring)",
            &["file", &file("sync.img")],
            true,
            true,
        ),
        b("null", &["null", "16M"], false, true),
        b("pattern", &["pattern", "16M"], false, false),
    ]
}

/// nbdlite `filters… BACKEND… params…`, with NBDLITE_IO_URING=0 if asked.
fn start(filters: &[&str], b: &Backend, params: &[&str]) -> Server {
    let mut cmd = Command::new(bin());
    if b.sync_io {
        cmd.env("NBDLITE_IO_URING", "0");
    }
    let mut args: Vec<&str> = filters.to_vec();
    args.extend(b.args.iter().map(String::as_str));
    args.extend(params);
    Server::start_with(cmd, &args)
}

fn memory(filters: &[&str], params: &[&str]) -> Server {
    let b = Backend {
        name: "memory",
        args: vec!["memory".into(), "16M".into()],
        sync_io: false,
        writable: true,
    };
    start(filters, &b, params)
}

/// nbdsh's `fails(f, 'EINVAL')`: `f()` must fail with that error.
const FAILS: &str = "
def fails(f, errno):
    try:
        f()
    except nbd.Error as e:
        assert e.errno == errno, (e.errno, errno)
    else:
        assert False, 'no ' + errno
";

/// `nbdinfo --map`'s lines as (offset, length, type).
fn map(uri: &str) -> Vec<(u64, u64, u32)> {
    nbdinfo(&["--map", uri])
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn noextents_reports_all_data_over_every_backend() {
    if !have(&["nbdinfo", "nbdsh"]) {
        return;
    }
    let dir = TempDir::new();
    for b in backends(&dir) {
        let plain = start(&[], &b, &[]);
        let srv = start(&["--filter=noextents"], &b, &[]);
        if b.writable {
            nbdsh(&srv.uri(), "h.pwrite(b'x' * 65536, 1048576)");
            nbdsh(&plain.uri(), "h.pwrite(b'x' * 65536, 1048576)");
        }
        let all = map(&srv.uri());
        assert_eq!(all, vec![(0, 16 * MIB, 0)], "{}", b.name);
        if b.name != "pattern" {
            assert_ne!(map(&plain.uri()), all, "{}: holes without it", b.name);
        }
        // The data is what it was.
        let check = format!(
            "assert h.pread(4096, 1048576) == {}",
            match (b.writable, b.name) {
                (true, "null") => "bytes(4096)",
                (true, _) => "b'x' * 4096",
                _ => "h.pread(4096, 1048576)",
            }
        );
        nbdsh(&srv.uri(), &check);
    }
}

/// Extended headers and structured replies through the raw client: block
/// status (its extended form) says data, a READ of a hole comes back as
/// data, and what nozero and blocksize-policy change answers as it should.
#[test]
fn extended_headers_through_the_filters() {
    let srv = memory(
        &[
            "--filter=noextents",
            "--filter=nozero",
            "--filter=blocksize-policy",
        ],
        &["blocksize-error-policy=error", "blocksize-minimum=512"],
    );
    for (sr, eh) in [(true, false), (true, true)] {
        let (mut c, size, flags) = Client::ready(&srv.sock, sr, eh, true);
        assert_eq!(size, 16 * MIB);
        assert_eq!(
            flags & wire::TF_SEND_WRITE_ZEROES,
            0,
            "nozero takes it away"
        );
        c.request(0, wire::CMD_BLOCK_STATUS, 1, 0, 8 * MIB, &[]);
        let rs = c.replies(None);
        assert_eq!(wire::descriptors(&rs[0]), vec![(8 * MIB, 0)], "eh {eh}");
        c.request(0, wire::CMD_READ, 2, 4096, 65536, &[]);
        for r in c.replies(None) {
            match r.chunk() {
                Some(Chunk::Data { data, .. }) => assert_eq!(data, &[0; 65536][..]),
                other => panic!("eh {eh}: {other:?}"),
            }
        }
        assert_eq!(c.read(0, 100, 512), Err(wire::EINVAL), "misaligned");
        assert_eq!(c.cmd(0, wire::CMD_ZERO, 0, 4096), wire::EINVAL);
        assert_eq!(c.write(512, &[7; 512]), 0);
        assert_eq!(c.read(0, 512, 512).unwrap(), vec![7; 512]);
    }
}

#[test]
fn nozero_modes_as_nbdsh_sees_them() {
    if !have(&["nbdsh", "nbdinfo"]) {
        return;
    }
    let fast = "lambda: h.zero(4096, 0, nbd.CMD_FLAG_FAST_ZERO)";
    for (params, script) in [
        (
            vec![],
            "assert not h.can_zero() and not h.can_fast_zero()\n\
             h.pwrite(bytes(65536), 0)"
                .to_string(),
        ),
        (
            vec!["zeromode=emulate"],
            format!(
                "assert h.can_zero() and h.can_fast_zero()\n\
                 fails({fast}, 'ENOTSUP')\n\
                 h.pwrite(b'x' * 8192, 0)\n\
                 h.zero(4096, 0)\n\
                 assert h.pread(8192, 0) == bytes(4096) + b'x' * 4096"
            ),
        ),
        (
            vec!["zeromode=emulate", "fastzeromode=none"],
            "assert h.can_zero() and not h.can_fast_zero()".to_string(),
        ),
        (
            vec!["zeromode=plugin", "fastzeromode=slow"],
            format!(
                "assert h.can_fast_zero()\n\
                 fails({fast}, 'ENOTSUP')\n\
                 h.zero(4096, 0)"
            ),
        ),
        (
            vec!["zeromode=notrim", "fastzeromode=ignore"],
            "h.pwrite(b'x' * 4096, 0)\n\
             h.zero(4096, 0, nbd.CMD_FLAG_FAST_ZERO)\n\
             assert h.pread(4096, 0) == bytes(4096)"
                .to_string(),
        ),
    ] {
        let srv = memory(&["--filter=nozero"], &params);
        nbdsh(&srv.uri(), &format!("{FAILS}\n{script}"));
    }
    // Read-only: nothing to offer either way.
    let ro = memory(&["-r", "--filter=nozero"], &["zeromode=emulate"]);
    let j = nbdinfo(&["--json", &ro.uri()]);
    assert_eq!(json_field(&j, "can_zero"), "false");
}

/// nbdkit's test-nozero, on files (io_uring and without): zeroing never
/// punches a hole in emulate and notrim modes, and the data is the same
/// whatever the mode; zeromode=plugin may punch.
#[test]
fn nozero_on_files_keeps_blocks_allocated() {
    if !have(&["nbdsh"]) {
        return;
    }
    let dir = TempDir::new();
    let data = vec![b'.'; 2 * MIB as usize];
    for sync_io in [false, true] {
        for (mode, script) in [
            ("none", "h.pwrite(bytes(1048576), 0)"),
            ("emulate", "h.zero(1048576, 0)"),
            ("notrim", "h.zero(1048576, 0)"),
            ("plugin", "h.zero(1048576, 0)"),
        ] {
            let img = dir.join(&format!("{mode}-{sync_io}.img"));
            fs::write(&img, &data).unwrap();
            fs::File::open(&img).unwrap().sync_all().unwrap();
            let blocks = fs::metadata(&img).unwrap().blocks();
            let b = Backend {
                name: "file",
                args: vec!["file".into(), img.display().to_string()],
                sync_io,
                writable: true,
            };
            let srv = start(&["--filter=nozero"], &b, &[&format!("zeromode={mode}")]);
            nbdsh(&srv.uri(), script);
            drop(srv);
            let got = fs::read(&img).unwrap();
            assert!(got[..MIB as usize].iter().all(|&b| b == 0), "{mode}");
            assert!(got[MIB as usize..].iter().all(|&b| b == b'.'), "{mode}");
            let now = fs::metadata(&img).unwrap().blocks();
            if mode == "plugin" {
                assert!(now < blocks, "zeromode=plugin punches: {now} of {blocks}");
            } else {
                assert!(now >= blocks, "{mode} (sync {sync_io}): {now} < {blocks}");
            }
        }
    }
}

/// qemu without WRITE_ZEROES writes its zeroes as data.
#[test]
fn qemu_io_zeroes_without_write_zeroes() {
    if !have(&["qemu-io"]) {
        return;
    }
    let srv = memory(&["--filter=nozero"], &[]);
    let out = qemu_io(
        &srv.uri(),
        &[
            "write -P 7 0 64k",
            "write -z 0 32k",
            "read -P 0 0 32k",
            "read -P 7 32k 32k",
        ],
    );
    assert!(out.contains("wrote 32768/32768"), "{out}");
}

#[test]
fn blocksize_policy_advertises_what_it_is_told() {
    if !have(&["nbdinfo", "nbdsh"]) {
        return;
    }
    let sizes = |params: &[&str]| {
        let srv = memory(&["--filter=blocksize-policy"], params);
        let j = nbdinfo(&["--json", &srv.uri()]);
        let f = |k| json_field(&j, k).parse::<u64>().unwrap();
        (
            f("block_size_minimum"),
            f("block_size_preferred"),
            f("block_size_maximum"),
        )
    };
    assert_eq!(sizes(&["blocksize-preferred=32K"]), (1, 32768, 32 * MIB));
    assert_eq!(sizes(&["blocksize-maximum=1M"]), (1, 4096, MIB));
    let all = [
        "blocksize-minimum=512",
        "blocksize-preferred=64K",
        "blocksize-maximum=4M",
    ];
    assert_eq!(sizes(&all), (512, 65536, 4 * MIB));
    // Allow (the default): a client that ignores them is served anyway.
    let srv = memory(&["--filter=blocksize-policy"], &["blocksize-minimum=4K"]);
    nbdsh(
        &srv.uri(),
        "assert h.get_block_size(nbd.SIZE_MINIMUM) == 4096\n\
         h.set_strict_mode(h.get_strict_mode() & ~nbd.STRICT_ALIGN)\n\
         h.pwrite(b'abc', 1)\n\
         assert h.pread(3, 1) == b'abc'",
    );
}

/// nbdkit's test-blocksize-error-policy, on memory and on a file.
#[test]
fn blocksize_error_policy_refuses_with_einval() {
    if !have(&["nbdsh"]) {
        return;
    }
    let dir = TempDir::new();
    let script = format!(
        "{FAILS}
assert h.get_block_size(nbd.SIZE_MINIMUM) == 512
assert h.get_block_size(nbd.SIZE_PREFERRED) == 4096
assert h.get_block_size(nbd.SIZE_MAXIMUM) == 1024 * 1024
h.set_strict_mode(h.get_strict_mode() & ~nbd.STRICT_ALIGN)
h.pread(512, 0)
h.pread(512, 4096)
h.pread(1024 * 1024, 0)
fails(lambda: h.pread(768, 0), 'EINVAL')
fails(lambda: h.pread(512, 768), 'EINVAL')
fails(lambda: h.pread(256, 0), 'EINVAL')
fails(lambda: h.pread(2 * 1024 * 1024, 0), 'EINVAL')
fails(lambda: h.pwrite(b'x' * 100, 0), 'EINVAL')
fails(lambda: h.trim(100, 512), 'EINVAL')
h.zero(2 * 1024 * 1024, 0)
"
    );
    for b in backends(&dir)
        .into_iter()
        .filter(|b| b.writable && b.name != "null")
    {
        let srv = start(
            &["--filter=blocksize-policy"],
            &b,
            &[
                "blocksize-error-policy=error",
                "blocksize-minimum=512",
                "blocksize-maximum=1M",
            ],
        );
        nbdsh(&srv.uri(), &script);
    }
}

/// A write over blocksize-write-disconnect ends the connection; one at the
/// limit is served, and so are other clients.
#[test]
fn blocksize_write_disconnect() {
    if !have(&["nbdsh"]) {
        return;
    }
    let srv = memory(
        &["--filter=blocksize-policy"],
        &["blocksize-write-disconnect=1M"],
    );
    nbdsh(
        &srv.uri(),
        "assert h.get_block_size(nbd.SIZE_MAXIMUM) == 1024 * 1024
h.set_strict_mode(0)
h.pwrite(b'x' * 1048576, 0)
try:
    h.pwrite(b'x' * 1048577, 0)
    assert False
except nbd.Error as e:
    pass
assert not h.aio_is_ready()",
    );
    nbdsh(&srv.uri(), "assert h.pread(2, 1048575) == b'x\\0'");
}

/// The misaligned read and the fast zero are refused before the delay when
/// blocksize-policy and nozero sit above it, after it when below; the data
/// requests wait either way.
#[test]
fn three_filters_stacked_in_both_orders() {
    if !have(&["nbdsh"]) {
        return;
    }
    let params = [
        "blocksize-error-policy=error",
        "blocksize-minimum=512",
        "zeromode=emulate",
        "delay-read=2",
        "delay-zero=2",
    ];
    let timed = |srv: &Server, what: &str, errno: &str| -> f64 {
        let script = format!(
            "import time
h.set_strict_mode(0)
t = time.monotonic()
try:
    {what}
    e = 'none'
except nbd.Error as ex:
    e = ex.errno
print(e, time.monotonic() - t)"
        );
        let out = nbdsh(&srv.uri(), &script);
        let (got, secs) = out.trim().split_once(' ').unwrap();
        assert_eq!(got, errno, "{what}");
        secs.parse().unwrap()
    };
    let misaligned = "h.pread(100, 0)";
    let fast = "h.zero(4096, 0, nbd.CMD_FLAG_FAST_ZERO)";
    let above = memory(
        &[
            "--filter=blocksize-policy",
            "--filter=nozero",
            "--filter=delay",
        ],
        &params,
    );
    let below = memory(
        &[
            "--filter=delay",
            "--filter=nozero",
            "--filter=blocksize-policy",
        ],
        &params,
    );
    assert!(timed(&above, misaligned, "EINVAL") < 1.5);
    assert!(timed(&above, fast, "ENOTSUP") < 1.5);
    assert!(timed(&above, "h.pread(512, 0)", "none") >= 1.95);
    assert!(timed(&below, misaligned, "EINVAL") >= 1.95);
    assert!(timed(&below, fast, "ENOTSUP") >= 1.95);
    assert!(timed(&below, "h.zero(4096, 0)", "none") >= 1.95);
}

/// nbdkit's test-rate, smaller: nbdcopy (64K requests, as nbdkit's test
/// gets from the blocksize filter) of 3 MiB at 8 Mbit/s (1 MiB/s) with half
/// a second's burst takes 2.5 s or more.
#[test]
fn rate_limits_an_nbdcopy() {
    if !have(&["nbdcopy"]) {
        return;
    }
    let b = Backend {
        name: "pattern",
        args: vec!["pattern".into(), "3M".into()],
        sync_io: false,
        writable: false,
    };
    let srv = start(&["--filter=rate"], &b, &["rate=8M", "burstiness=0.5"]);
    let dir = TempDir::new();
    let t = Instant::now();
    run_ok(
        Command::new("nbdcopy")
            .args(["--request-size=65536", &srv.uri()])
            .arg(dir.join("out")),
        120,
    );
    let secs = t.elapsed().as_secs_f64();
    assert!(
        secs >= 2.3,
        "3 MiB at 1 MiB/s, 0.5 MiB burst, in {secs:.2}s"
    );
    assert_eq!(fs::metadata(dir.join("out")).unwrap().len(), 3 * MIB);
}

/// nbdlite-bench's MiB/s (it exits 0: no request failed).
fn bench(uri: &str, args: &[&str]) -> f64 {
    let out = run_ok(
        Command::new(env!("CARGO_BIN_EXE_nbdlite-bench"))
            .args(args)
            .args(["--json", uri]),
        60,
    );
    json_field(&out, "mib_per_sec").parse().unwrap()
}

/// Each connection's limit, and the server's, measured after the burst:
/// never faster than allowed (10% for the window's edges), and not much
/// slower (generous: the machine may be busy).
#[test]
fn rate_per_connection_and_in_total() {
    let srv = memory(
        &["--filter=rate"],
        &["connection-rate=8M", "burstiness=0.2"],
    );
    let args = ["-s", "64K", "-q", "4", "--warmup", "1", "-t", "2"];
    let two = [&["-c", "2"][..], &args].concat();
    let got = bench(&srv.uri(), &two);
    assert!(
        (1.0..=2.2).contains(&got),
        "2 connections at 1 MiB/s: {got}"
    );
    let srv = memory(
        &["--filter=rate"],
        &["rate=8M", "connection-rate=8M", "burstiness=0.2"],
    );
    let got = bench(&srv.uri(), &two);
    assert!((0.5..=1.1).contains(&got), "1 MiB/s for all: {got}");
    let w = [&["--rw", "randwrite"][..], &two].concat();
    let got = bench(&srv.uri(), &w);
    assert!((0.5..=1.1).contains(&got), "writes, 1 MiB/s: {got}");
}

/// A rewritten rate file takes effect within about a second (the server
/// says so with -v), here from 32 Kbit/s (a 4K read takes a second) to 1
/// Gbit/s.
#[test]
fn a_rate_file_changes_the_rate() {
    if !have(&["nbdsh"]) {
        return;
    }
    let dir = TempDir::new();
    let file = dir.join("rate");
    fs::write(&file, "32K\n").unwrap();
    let srv = memory(
        &["-v", "--filter=rate"],
        &[
            "rate=1G",
            &format!("rate-file={}", file.display()),
            "burstiness=0.1",
        ],
    );
    let timed = |n: u32| -> f64 {
        let script = format!(
            "import time\nt = time.monotonic()\nfor i in range({n}): h.pread(4096, 0)\nprint(time.monotonic() - t)"
        );
        nbdsh(&srv.uri(), &script).trim().parse().unwrap()
    };
    assert!(timed(1) >= 0.8, "the file's 32 Kbit/s");
    rewrite(&file, "1G");
    common::wait_until(10, "the new rate", || {
        srv.log_text()
            .contains("rate adjusted from 32768 to 1073741824")
    });
    let secs = timed(100);
    assert!(secs < 5.0, "100 reads at 1 Gbit/s took {secs:.2}s");
}

/// A client that queues 20 s of reads and leaves does not hold the next
/// client back: what it had waiting is given back.
#[test]
fn a_client_that_leaves_gives_its_bandwidth_back() {
    if !have(&["nbdsh"]) {
        return;
    }
    let srv = memory(&["-v", "--filter=rate"], &["rate=1M"]);
    let (mut c, _, _) = Client::ready(&srv.sock, true, false, false);
    let flood: Vec<u8> = (0..40)
        .flat_map(|i| wire::request(false, 0, wire::CMD_READ, i, i * 65536, 65536))
        .collect();
    c.send(&flood);
    // The first of them are answered (the burst): the rest are held.
    let first = c.replies(None);
    assert_eq!(first.last().map(|r| r.errno()), Some(0));
    drop(c);
    common::wait_until(10, "the flood's connection to close", || {
        srv.log_text().contains("conn 1: closed")
    });
    let out = nbdsh(
        &srv.uri(),
        "import time\nt = time.monotonic()\nh.pread(4096, 0)\nprint(time.monotonic() - t)",
    );
    let secs: f64 = out.trim().parse().unwrap();
    assert!(
        secs < 5.0,
        "a 4K read waited {secs:.2}s behind a client that left"
    );
}

/// Writes `text` into a new file renamed over `file`, as the man page asks.
fn rewrite(file: &Path, text: &str) {
    let new = file.with_extension("new");
    fs::write(&new, text).unwrap();
    fs::rename(&new, file).unwrap();
}

/// The four filters together over every backend, under TLS, and socket
/// activated.
#[test]
fn all_four_over_every_backend_tls_and_activation() {
    if !have(&["nbdsh", "nbdinfo", "systemd-socket-activate"]) {
        return;
    }
    let filters = [
        "--filter=rate",
        "--filter=blocksize-policy",
        "--filter=nozero",
        "--filter=noextents",
    ];
    let params = [
        "rate=8G",
        "blocksize-preferred=64K",
        "zeromode=emulate",
        "blocksize-error-policy=error",
    ];
    let check = |uri: &str, writable: bool| {
        let mut s = "assert h.get_block_size(nbd.SIZE_PREFERRED) == 65536\n".to_string();
        if writable {
            s += "assert h.can_zero() and h.can_fast_zero()\n\
                  h.pwrite(b'y' * 4096, 8192)\n\
                  h.zero(4096, 8192)\n";
        }
        s += "e = []\n\
              h.block_status(1 << 20, 0, lambda ctx, off, ext, err: e.extend(ext))\n\
              assert e == [1 << 20, 0], e\n\
              h.pread(65536, 0)";
        nbdsh(uri, &s);
    };
    let dir = TempDir::new();
    for b in backends(&dir) {
        let srv = start(&filters, &b, &params);
        check(&srv.uri(), b.writable);
    }
    #[cfg(feature = "tls")]
    if let Some(c) = common::certs::make_or_skip(dir.path()) {
        let mut args = vec![
            "--tls=require".to_string(),
            format!("--tls-certificates={}", c.dir.display()),
        ];
        args.extend(filters.iter().map(|s| s.to_string()));
        args.extend(["memory", "16M"].map(String::from));
        args.extend(params.iter().map(|s| s.to_string()));
        let srv = Server::start(&args);
        let uri = format!(
            "nbds+unix:///?socket={}&tls-certificates={}",
            srv.sock.display(),
            c.dir.display()
        );
        let connect = format!("h.set_uri_allow_local_file(True)\nh.connect_uri({uri:?})");
        run_ok(
            common::nbdsh_command().args([
                "-c",
                &connect,
                "-c",
                "assert h.get_tls_negotiated()\n\
                 assert h.get_block_size(nbd.SIZE_PREFERRED) == 65536\n\
                 h.zero(4096, 0)\n\
                 h.pread(4096, 0)",
            ]),
            60,
        );
    }
    let sock = dir.join("activated");
    let mut server = vec![bin()];
    server.extend(filters);
    server.extend(["memory", "16M"]);
    server.extend(params);
    let _sa = socket_activate(&sock, &[], &server);
    check(&format!("nbd+unix:///?socket={}", sock.display()), true);
}

/// A misspelled key, an unknown filter and a bad value: one line, exit 1.
#[test]
fn misuse_is_one_line_and_exit_1() {
    let dir = TempDir::new();
    for (args, says) in [
        ("--filter=rate memory 1M rat=1M", "unknown parameter 'rat'"),
        ("--filter=noextent memory 1M", "unknown filter 'noextent'"),
        ("--filter=rate memory 1M rate=fast", "rate: could not parse"),
        ("--filter=rate memory 1M rate=0", "rate cannot be 0"),
        ("--filter=rate memory 1M burstiness=x", "burstiness"),
        ("--filter=nozero memory 1M zeromode=trim", "zeromode 'trim'"),
        (
            "--filter=nozero memory 1M fastzeromode=x",
            "fastzeromode 'x'",
        ),
        (
            "--filter=blocksize-policy memory 1M blocksize-minimum=3",
            "power of 2",
        ),
        (
            "--filter=blocksize-policy memory 1M blocksize-error-policy=warn",
            "unknown policy 'warn'",
        ),
        (
            "--filter=noextents memory 1M zeromode=none",
            "unknown parameter 'zeromode'",
        ),
    ] {
        let args: Vec<&str> = args.split_whitespace().collect();
        let (code, _, err) = nbdlite_in(dir.path(), &args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("nbdlite: ") && err.contains(says),
            "{args:?}: {err}"
        );
    }
}
