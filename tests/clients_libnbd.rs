//! libnbd's tools against nbdlite: nbdinfo for what is advertised, nbdsh for
//! every command and error, nbdcopy for bulk multi-connection copies, and
//! libnbd starting the server itself by socket activation.

mod common;

use std::fs;
use std::process::Command;

use common::{Server, TempDir, bin, have, json_field, nbdinfo, nbdsh, nbdsh_command, run_ok};

#[test]
fn nbdinfo_shows_every_capability() {
    if !have(&["nbdinfo"]) {
        return;
    }
    let srv = Server::start(&["memory", "64M"]);
    let j = nbdinfo(&["--json", &srv.uri()]);
    assert_eq!(json_field(&j, "protocol"), "\"newstyle-fixed\"");
    assert_eq!(json_field(&j, "structured"), "true");
    assert!(j.contains("\"base:allocation\""), "{j}");
    for cap in [
        "can_flush",
        "can_fua",
        "can_trim",
        "can_zero",
        "can_fast_zero",
        "can_df",
        "can_multi_conn",
        "can_cache",
    ] {
        assert_eq!(json_field(&j, cap), "true", "{cap}: {j}");
    }
    assert_eq!(json_field(&j, "is_read_only"), "false");
    assert_eq!(json_field(&j, "block_size_minimum"), "1");
    assert_eq!(json_field(&j, "block_size_preferred"), "4096");
    assert_eq!(json_field(&j, "block_size_maximum"), "33554432");
    assert_eq!(json_field(&j, "export-size"), "67108864");

    let ro = Server::start(&["-r", "memory", "1M"]);
    let j = nbdinfo(&["--json", &ro.uri()]);
    assert_eq!(json_field(&j, "is_read_only"), "true");
    assert_eq!(json_field(&j, "can_trim"), "false");
    assert_eq!(json_field(&j, "can_zero"), "false");
}

#[test]
fn nbdinfo_list_and_map() {
    if !have(&["nbdinfo", "nbdsh"]) {
        return;
    }
    let srv = Server::start(&[
        "-e",
        "disk0",
        "--description",
        "scratch disk",
        "memory",
        "4M",
    ]);
    let list = nbdinfo(&["--list", &srv.uri()]);
    assert!(
        list.contains("disk0") && list.contains("scratch disk"),
        "{list}"
    );
    nbdsh(&srv.uri_export("disk0"), "h.pwrite(b'x' * 65536, 1048576)");
    let map = nbdinfo(&["--map", &srv.uri_export("disk0")]);
    // "offset length type description"
    let lines: Vec<Vec<&str>> = map
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(&lines[0][..3], ["0", "1048576", "3"], "{map}");
    assert_eq!(&lines[1][..3], ["1048576", "65536", "0"], "{map}");
    assert_eq!(lines[2][0], "1114112", "{map}");
}

#[test]
fn nbdsh_every_command() {
    if !have(&["nbdsh"]) {
        return;
    }
    let srv = Server::start(&["memory", "8M"]);
    let out = nbdsh(
        &srv.uri(),
        r#"
import nbd
h.pwrite(b"\x11" * 8192, 4096, nbd.CMD_FLAG_FUA)
assert h.pread(8192, 4096) == b"\x11" * 8192
h.flush()
h.trim(4096, 4096)
assert h.pread(4096, 4096) == bytes(4096)
h.zero(4096, 8192, nbd.CMD_FLAG_NO_HOLE)
assert h.pread(4096, 8192) == bytes(4096)
h.zero(65536, 65536, nbd.CMD_FLAG_FAST_ZERO)
h.cache(1048576, 0)
h.pwrite(b"\x22" * 32768, 1048576)
entries = []
def f(meta, offset, e, err):
    entries.append((meta, list(e)))
h.block_status(2 << 20, 0, f)
meta, e = entries[0]
assert meta == "base:allocation", meta
# (offset, length, flags) of each extent
ext, off = [], 0
for i in range(0, len(e), 2):
    ext.append((off, e[i], e[i + 1]))
    off += e[i]
assert (1048576, 32768, 0) in ext, ext
assert any(o == 65536 and f == 3 for (o, l, f) in ext) or any(o < 65536 and o + l >= 131072 and f == 3 for (o, l, f) in ext), ext
entries.clear()
h.block_status(2 << 20, 0, f, nbd.CMD_FLAG_REQ_ONE)
assert len(entries[0][1]) == 2, entries
print(h.pread_structured and "ok")
"#,
    );
    assert!(out.contains("ok"), "{out}");
}

#[test]
fn nbdsh_error_cases() {
    if !have(&["nbdsh"]) {
        return;
    }
    let srv = Server::start(&["memory", "1M"]);
    let out = nbdsh(
        &srv.uri(),
        r#"
import nbd, errno
h.set_strict_mode(0)
def err(f):
    try:
        f()
    except nbd.Error as e:
        return e.errno
    return 0
print("read-past-end", err(lambda: h.pread(2, (1 << 20) - 1)))
print("write-past-end", err(lambda: h.pwrite(b"ab", (1 << 20) - 1)))
print("trim-past-end", err(lambda: h.trim(2, (1 << 20) - 1)))
print("zero-read", err(lambda: h.pread(0, 0)))
print("zero-write", err(lambda: h.pwrite(b"", 0)))
print("bad-flag", err(lambda: h.pread(512, 0, 0x80)))
print("still", h.pread(4, 0) == bytes(4))
"#,
    );
    for (k, v) in [
        ("read-past-end", "EINVAL"),
        ("write-past-end", "ENOSPC"),
        ("trim-past-end", "EINVAL"),
        ("zero-read", "0"),
        ("zero-write", "0"),
        ("bad-flag", "EINVAL"),
        ("still", "True"),
    ] {
        assert!(
            out.contains(&format!("{k} {v}\n")),
            "{k} should be {v}:\n{out}"
        );
    }
    let ro = Server::start(&["-r", "memory", "1M"]);
    let out = nbdsh(
        &ro.uri(),
        r#"
import nbd
h.set_strict_mode(0)
try:
    h.pwrite(b"x", 0)
except nbd.Error as e:
    print("errno", e.errno)
"#,
    );
    assert!(out.contains("errno EPERM\n"), "EPERM expected: {out}");
}

#[test]
fn multi_conn_writes_are_visible_everywhere() {
    if !have(&["nbdsh"]) {
        return;
    }
    let srv = Server::start(&["memory", "1M"]);
    let uri = srv.uri();
    let out = nbdsh(
        &uri,
        &format!(
            r#"
import nbd
assert h.can_multi_conn()
h2 = nbd.NBD()
h2.connect_uri("{uri}")
h.pwrite(b"shared", 512)
h.flush()
print(h2.pread(6, 512))
"#
        ),
    );
    assert!(out.contains("b'shared'"), "{out}");
}

#[test]
fn single_mode_under_connect_command() {
    if !have(&["nbdsh"]) {
        return;
    }
    let out = run_ok(
        nbdsh_command().args([
            "-c",
            &format!(
                r#"
h.connect_command(["{}", "-s", "memory", "1M"])
h.pwrite(b"stdio", 0)
print(bytes(h.pread(5, 0)), h.get_size())
"#,
                bin()
            ),
        ]),
        60,
    );
    assert!(out.contains("b'stdio' 1048576"), "{out}");
}

#[test]
fn libnbd_starts_it_by_socket_activation() {
    if !have(&["nbdinfo"]) {
        return;
    }
    let out = nbdinfo(&["--size", "--", "[", bin(), "memory", "1M", "]"]);
    assert_eq!(out.trim(), "1048576");
}

#[test]
fn nbdcopy_four_connections_in_and_out() {
    if !have(&["nbdcopy"]) {
        return;
    }
    let dir = TempDir::new();
    let src = dir.join("src.raw");
    let data: Vec<u8> = (0..16u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    fs::write(&src, &data).unwrap();
    let srv = Server::start(&["memory", "16M"]);
    let nbdcopy = |args: &[&str]| run_ok(Command::new("nbdcopy").args(args), 120);
    nbdcopy(&[
        "--connections=4",
        "--flush",
        src.to_str().unwrap(),
        &srv.uri(),
    ]);
    let back = dir.join("back.raw");
    nbdcopy(&["--connections=4", &srv.uri(), back.to_str().unwrap()]);
    assert!(fs::read(&back).unwrap() == data, "copy differs");

    // The pattern export copied out: every 8-byte word is its own offset.
    let pat = Server::start(&["pattern", "4M"]);
    let out = dir.join("pattern.raw");
    nbdcopy(&[&pat.uri(), out.to_str().unwrap()]);
    let p = fs::read(&out).unwrap();
    for at in [0usize, 8, 4096, (4 << 20) - 8] {
        assert_eq!(
            u64::from_be_bytes(p[at..at + 8].try_into().unwrap()),
            at as u64
        );
    }
}
