//! The filters that serve part of what is below, or more: partition (tables
//! made by sfdisk and sgdisk), offset and truncate, with real clients (qemu-img,
//! nbdcopy, nbdinfo, nbdsh) and the raw client for every reply style on both
//! kinds of backend (data at hand, and through the I/O engine).

mod common;
#[path = "common/wire.rs"]
mod wire;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use common::*;
use wire::*;

/// `len` pseudo-random bytes, different for each `seed`.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn bytes_at(path: &Path, offset: u64, len: u64) -> Vec<u8> {
    let mut v = vec![0u8; len as usize];
    fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut v, offset)
        .unwrap();
    v
}

fn put(path: &Path, offset: u64, data: &[u8]) {
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, offset).unwrap();
}

/// nbdlite with `args` and `--run CMD` in `dir`, which must succeed.
#[track_caller]
fn captive(dir: &Path, args: &[&str], cmd: &str) -> String {
    let mut all = vec!["-U", "-"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--run", cmd]);
    let (code, out, err) = nbdlite_in(dir, &all);
    assert_eq!(code, Some(0), "{all:?}: {err}");
    out
}

/// nbdlite with `args` must refuse to start: exit 1, one line naming `what`.
#[track_caller]
fn refused(dir: &Path, args: &[&str], what: &str) {
    let mut all = vec!["-U", "-"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--run", "true"]);
    let (code, _, err) = nbdlite_in(dir, &all);
    assert_eq!(code, Some(1), "{all:?} should fail: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.starts_with("nbdlite: ") && err.contains(what),
        "{all:?}: {err}"
    );
}

/// (start, sectors) of each partition `sfdisk -d` lists, by number.
fn sfdisk_layout(disk: &Path) -> Vec<(u32, u64, u64)> {
    let dump = run_ok(Command::new("sfdisk").arg("-d").arg(disk), 30);
    dump.lines()
        .filter_map(|l| {
            let (name, rest) = l.split_once(" : ")?;
            let n = name.trim().rsplit(|c: char| !c.is_ascii_digit()).next()?;
            let field = |k: &str| -> Option<u64> {
                let v = rest.split(',').find_map(|f| f.trim().strip_prefix(k))?;
                v.trim().parse().ok()
            };
            Some((n.parse().ok()?, field("start=")?, field("size=")?))
        })
        .collect()
}

/// Each partition of `disk` copied out with qemu-img through the filter
/// equals its bytes on the disk (as dd would copy them).
#[track_caller]
fn each_partition_equals_its_bytes(dir: &Path, disk: &str, parts: &[(u32, u64, u64)]) {
    for &(n, start, sectors) in parts {
        let p = format!("partition={n}");
        let args = ["--filter=partition", "-r", "file", disk, &p];
        captive(dir, &args, r#"qemu-img convert -O raw "$uri" out.raw"#);
        let got = fs::read(dir.join("out.raw")).unwrap();
        let want = bytes_at(&dir.join(disk), start * 512, sectors * 512);
        assert!(got == want, "partition {n}: {} bytes differ", got.len());
    }
}

#[test]
fn mbr_partitions_primary_and_logical_equal_dd_of_them() {
    if !have(&["sfdisk", "qemu-img", "nbdcopy"]) {
        return;
    }
    let dir = TempDir::new();
    let disk = dir.join("disk");
    sparse_file(&disk, 32 << 20);
    let layout = "2048 4096 L -\n8192 8191 L -\n16384 20000 E -\n17000 999 L -\n18100 2000 L -\n";
    fs::write(dir.join("layout"), layout).unwrap();
    run_ok(
        Command::new("sh")
            .args(["-c", "sfdisk -q -X dos disk < layout"])
            .current_dir(dir.path()),
        30,
    );
    let parts: Vec<_> = sfdisk_layout(&disk)
        .into_iter()
        .filter(|&(n, ..)| n != 3) // the extended partition
        .collect();
    assert_eq!(parts.iter().map(|p| p.0).collect::<Vec<_>>(), [1, 2, 5, 6]);
    for &(n, start, sectors) in &parts {
        put(
            &disk,
            start * 512,
            &noise(n.into(), (sectors * 512) as usize),
        );
    }
    each_partition_equals_its_bytes(dir.path(), "disk", &parts);
    // Writes land inside their partition, and nowhere else.
    let before = fs::read(&disk).unwrap();
    fs::write(dir.join("new"), noise(99, 999 * 512)).unwrap();
    captive(
        dir.path(),
        &["--filter=partition", "file", "disk", "partition=5"],
        r#"nbdcopy new "$uri""#,
    );
    let after = fs::read(&disk).unwrap();
    let (s, n) = (17000 * 512, 999 * 512);
    assert_eq!(&after[s..s + n], &fs::read(dir.join("new")).unwrap()[..]);
    assert!(after[..s] == before[..s] && after[s + n..] == before[s + n..]);
    // The extended partition, and partitions that are not there.
    for n in ["3", "4", "7"] {
        let p = format!("partition={n}");
        let what = format!("MBR partition {n} not found");
        refused(
            dir.path(),
            &["--filter=partition", "file", "disk", &p],
            &what,
        );
    }
}

#[test]
fn gpt_partitions_equal_dd_of_them() {
    if !have(&["sgdisk", "qemu-img", "nbdinfo"]) {
        return;
    }
    let dir = TempDir::new();
    let disk = dir.join("disk");
    sparse_file(&disk, 32 << 20);
    run_ok(
        Command::new("sgdisk")
            .args(["-n", "1:2048:+2M", "-n", "2:8192:+1M", "-n", "5:20480:+3M"])
            .arg(&disk),
        30,
    );
    let mut parts = Vec::new();
    for n in [1u32, 2, 5] {
        let info = run_ok(Command::new("sgdisk").arg(format!("-i{n}")).arg(&disk), 30);
        let sector = |what: &str| -> u64 {
            let line = info.lines().find(|l| l.starts_with(what)).unwrap();
            line.split_whitespace().nth(2).unwrap().parse().unwrap()
        };
        let (first, last) = (sector("First sector:"), sector("Last sector:"));
        parts.push((n, first, last - first + 1));
        put(
            &disk,
            first * 512,
            &noise(n.into(), ((last - first + 1) * 512) as usize),
        );
    }
    each_partition_equals_its_bytes(dir.path(), "disk", &parts);
    refused(
        dir.path(),
        &["--filter=partition", "file", "disk", "partition=3"],
        "GPT partition 3 not found",
    );
    let info = captive(
        dir.path(),
        &[
            "--filter=partition",
            "--description",
            "a disk",
            "file",
            "disk",
            "partition=2",
        ],
        r#"nbdinfo "$uri""#,
    );
    assert!(info.contains("partition 2 of GPT disk: a disk"), "{info}");
    assert!(info.contains("export-size: 1048576"), "{info}");
    // The table is read through the filters below: a disk at an offset of a file.
    let outer = dir.join("outer");
    sparse_file(&outer, 40 << 20);
    put(&outer, 1 << 20, &fs::read(&disk).unwrap());
    let args = [
        "--filter=partition",
        "--filter=offset",
        "-r",
        "file",
        "outer",
    ];
    let args = [&args[..], &["offset=1M", "range=32M", "partition=5"]].concat();
    captive(
        dir.path(),
        &args,
        r#"qemu-img convert -O raw "$uri" out.raw"#,
    );
    let (_, first, sectors) = parts[2];
    assert!(fs::read(dir.join("out.raw")).unwrap() == bytes_at(&disk, first * 512, sectors * 512));
}

/// `nbdinfo --map` as (start, length, type) rows.
fn map(dir: &Path, args: &[&str]) -> Vec<(u64, u64, u32)> {
    captive(dir, args, r#"nbdinfo --map "$uri""#)
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
fn offset_serves_a_range_with_its_extents_shifted_and_clipped() {
    if !have(&["nbdinfo", "nbdcopy", "qemu-io"]) {
        return;
    }
    let dir = TempDir::new();
    let f = dir.join("f");
    sparse_file(&f, 4 << 20);
    let k = 1024;
    put(&f, 1536 * k, &noise(1, 64 * 1024));
    // Data across the range's end (3M): extents must stop at the export's end.
    put(&f, 2560 * k, &noise(2, 1 << 20));
    let args = ["--filter=offset", "file", "f", "offset=1M", "range=2M"];
    assert_eq!(
        map(dir.path(), &args),
        [
            (0, 512 * k, 3),
            (512 * k, 64 * k, 0),
            (576 * k, 1536 * k - 576 * k, 3),
            (1536 * k, 512 * k, 0)
        ]
    );
    captive(dir.path(), &args, r#"nbdcopy "$uri" out.raw"#);
    assert!(fs::read(dir.join("out.raw")).unwrap() == bytes_at(&f, 1 << 20, 2 << 20));
    // Past the range: refused, though the file goes on.
    let out = captive(
        dir.path(),
        &args,
        r#"qemu-io -f raw "$uri" -c "r 2047k 1k" -c "r 2047k 2k" || true"#,
    );
    assert!(out.contains("read 1024/1024"), "{out}");
    assert!(
        out.contains("Invalid argument") || out.contains("failed"),
        "{out}"
    );
    // Writes move by the offset too.
    captive(
        dir.path(),
        &args[..4],
        r#"qemu-io -f raw "$uri" -c "w -P 0x5a 0 4k""#,
    );
    assert_eq!(bytes_at(&f, 1 << 20, 4096), vec![0x5a; 4096]);
}

/// A raw client with each reply style on `sock`: READs past the end of what
/// is below are zeroes, across it data then zeroes; zero writes there pass,
/// others fail with ENOSPC (writing nothing); block status says hole.
fn truncated_export_serves(sock: &Path, below: &[u8], size: u64) {
    let real = below.len() as u64;
    for (sr, eh) in [(false, false), (true, false), (true, true)] {
        let (mut c, got, _) = Client::ready(sock, sr, eh, sr);
        assert_eq!(got, size);
        let all = c.read(0, 0, size as usize).unwrap();
        assert_eq!(&all[..real as usize], below, "sr {sr} eh {eh}");
        assert!(all[real as usize..].iter().all(|&b| b == 0));
        let across = c.read(F_DF * u16::from(sr), real - 10, 20).unwrap();
        assert_eq!(&across[..10], &below[real as usize - 10..]);
        assert_eq!(&across[10..], &[0; 10]);
        assert_eq!(c.write(real + 5, &[0; 100]), 0);
        assert_eq!(
            c.write(real - 4, &[7, 7, 7, 7, 0, 0]),
            0,
            "data then zeroes"
        );
        assert_eq!(c.write(real - 2, &[8, 8, 8]), ENOSPC, "data past the end");
        assert_eq!(
            c.read(0, real - 4, 4).unwrap(),
            [7, 7, 7, 7],
            "nothing written"
        );
        assert_eq!(c.write(real, &[1]), ENOSPC);
        assert_eq!(c.cmd(0, CMD_ZERO, real, size - real), 0);
        assert_eq!(c.cmd(0, CMD_TRIM, real - 1, 2), 0);
        assert_eq!(c.cmd(0, CMD_CACHE, 0, size), 0);
        if sr {
            c.request(0, CMD_BLOCK_STATUS, 5, real, size - real, &[]);
            let bs = c.replies(None);
            assert_eq!(descriptors(&bs[0]), [(size - real, 3)], "a hole");
        }
        c.write(real - 4, &below[real as usize - 4..]);
    }
}

#[test]
fn truncate_grows_with_zeroes_in_every_reply_style_on_every_kind_of_backend() {
    let dir = TempDir::new();
    let below = noise(7, 100_000);
    fs::write(dir.join("f"), &below).unwrap();
    // The file's data goes through the I/O engine; the RAM disk's is at hand.
    let s = Server::start(&[
        "--filter=truncate",
        "file",
        &dir.join("f").to_string_lossy(),
        "round-up=64k",
    ]);
    truncated_export_serves(&s.sock, &below, 131_072);
    let m = Server::start(&["--filter=truncate", "memory", "100000", "truncate=3M"]);
    let (mut c, _, _) = Client::ready(&m.sock, true, false, false);
    assert_eq!(c.write(0, &below), 0);
    drop(c);
    truncated_export_serves(&m.sock, &below, 3 << 20);
    // A large READ wholly past the end: one hole chunk, or lent zeroes.
    let (mut c, _, _) = Client::ready(&m.sock, false, false, false);
    assert!(c.read(0, 1 << 20, 2 << 20).unwrap().iter().all(|&b| b == 0));
}

#[test]
fn truncate_with_real_clients() {
    if !have(&["nbdinfo", "nbdcopy", "nbdsh", "qemu-img"]) {
        return;
    }
    let dir = TempDir::new();
    let below = noise(3, 1000);
    fs::write(dir.join("f"), &below).unwrap();
    let args = ["--filter=truncate", "file", "f", "round-up=4k"];
    assert_eq!(map(dir.path(), &args), [(0, 1000, 0), (1000, 3096, 3)]);
    captive(dir.path(), &args, r#"nbdcopy "$uri" out.raw"#);
    let out = fs::read(dir.join("out.raw")).unwrap();
    assert_eq!(out.len(), 4096);
    assert!(out[..1000] == below[..] && out[1000..].iter().all(|&b| b == 0));
    // Smaller: the rest is not served, nor described.
    let small = ["--filter=truncate", "file", "f", "truncate=600"];
    assert_eq!(map(dir.path(), &small), [(0, 600, 0)]);
    let size = captive(dir.path(), &small, r#"nbdinfo --size "$uri""#);
    assert_eq!(size.trim(), "600");
    // nbdsh: writing zeroes past the end works, anything else does not.
    let script = r#"
h.pwrite(bytes(3000), 1000)
try:
    h.pwrite(b"x", 2000)
    raise SystemExit("a write past the end succeeded")
except nbd.Error as e:
    assert e.errnum == errno.ENOSPC, e
assert h.can_fast_zero()
h.zero(3000, 1000, nbd.CMD_FLAG_FAST_ZERO)
print("ok")
"#;
    let cmd = format!("nbdsh -u \"$uri\" -c 'import errno' -c '{script}'");
    let mut all = vec!["-U", "-"];
    all.extend_from_slice(&args);
    all.extend_from_slice(&["--run", &cmd]);
    let (code, out, err) = nbdlite_in(dir.path(), &all);
    assert_eq!((code, out.trim()), (Some(0), "ok"), "{err}");
}

#[test]
fn bad_parameters_are_one_line_and_exit_1() {
    let dir = TempDir::new();
    sparse_file(&dir.join("disk"), 1 << 20);
    let cases: &[(&[&str], &str)] = &[
        (
            &["--filter=partition", "file", "disk"],
            "partition parameter is required",
        ),
        (
            &["--filter=partition", "file", "disk", "partition=0"],
            "invalid partition number",
        ),
        (
            &["--filter=partition", "file", "disk", "partiton=1"],
            "unknown parameter 'partiton'",
        ),
        (
            &["--filter=partition", "file", "disk", "partition=1"],
            "MBR or GPT",
        ),
        (
            &["--filter=offset", "memory", "1M", "offset=x"],
            "offset: could not parse",
        ),
        (
            &["--filter=offset", "memory", "1M", "offset=2M"],
            "larger than the size",
        ),
        (
            &["--filter=offset", "memory", "1M", "offset=1k", "range=1M"],
            "offset+range",
        ),
        (
            &["--filter=offset", "memory", "1M", "rnage=1"],
            "unknown parameter 'rnage'",
        ),
        (
            &["--filter=truncate", "memory", "1M", "round-up=3"],
            "not a power of 2",
        ),
        (
            &["--filter=truncate", "memory", "1M", "round-down=0"],
            "round-down: must be > 0",
        ),
        (
            &["--filter=truncate", "memory", "1M", "truncate=lots"],
            "truncate: could not parse",
        ),
        (
            &[
                "--filter=truncate",
                "memory",
                "1M",
                "round-up=1M",
                "truncate=8E",
            ],
            "too large",
        ),
    ];
    for (args, what) in cases {
        refused(dir.path(), args, what);
    }
}
