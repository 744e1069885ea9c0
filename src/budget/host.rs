//! The default budget, from what the host allows: the memory limit of the
//! server's cgroup (v2 `memory.max`, v1 `memory.limit_in_bytes`, as systemd's
//! `MemoryMax=` sets them), else the physical memory.
//!
//! Read once at start-up. The parsing is pure (tested on sample text); only
//! `memory_limit` touches /proc and /sys.

use std::path::{Path, PathBuf};

/// Taken off a cgroup limit before the budget: the program, its buffer pool
/// (16 MiB at most), allocator slack and the kernel's socket buffers, which
/// the cgroup is charged for too.
const OVERHEAD: u64 = 32 << 20;
/// A limit this high is no limit (cgroup v1 writes "unlimited" as about 2^63).
const UNLIMITED: u64 = 1 << 60;

/// Where the memory limit comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The cgroup's (the smallest on the way to the root).
    Cgroup(u64),
    /// None is set: the physical memory.
    Physical(u64),
}

/// The default budget for a server whose backend may hold `disk` bytes of
/// memory itself (a `memory` backend's size): three quarters of what a cgroup
/// limit leaves once the disk and `OVERHEAD` are taken out, or a quarter of the
/// physical memory the disk leaves. A disk larger than three quarters of the
/// limit (thin provisioning) is taken to leave a quarter of it, so the server
/// still works; such a disk cannot be filled anyway (see `overcommitted`).
pub fn default_budget(limit: Limit, disk: u64) -> u64 {
    let leaves = |total: u64| total.saturating_sub(disk).max(total / 4);
    match limit {
        Limit::Cgroup(l) => leaves(l).saturating_sub(OVERHEAD) / 4 * 3,
        Limit::Physical(p) => leaves(p) / 4,
    }
}

/// Whether a disk of `disk` bytes cannot be filled within the limit.
pub fn overcommitted(limit: Limit, disk: u64) -> bool {
    let (Limit::Cgroup(total) | Limit::Physical(total)) = limit;
    disk > total / 4 * 3
}

/// The memory limit this process runs under.
pub fn memory_limit() -> Limit {
    let cgroups = read_small("/proc/self/cgroup");
    // Where systemd and container runtimes mount the hierarchies is tried
    // first: /proc/self/mountinfo is the costliest file to read, and all of
    // this is read before a socket-activated server greets its first client.
    let mountinfo = match located(&cgroups, CONVENTIONAL_MOUNTS, |d| d.is_dir()) {
        true => CONVENTIONAL_MOUNTS.to_string(),
        false => read_small("/proc/self/mountinfo"),
    };
    match cgroup_limit(&cgroups, &mountinfo, |p| {
        Some(read_small(p)).filter(|s| !s.is_empty())
    }) {
        Some(l) => Limit::Cgroup(l),
        None => Limit::Physical(crate::sys::physical_memory()),
    }
}

/// The usual mounts of the cgroup hierarchies (v2 alone, or hybrid with v1's
/// memory controller), written as /proc/self/mountinfo would list them.
const CONVENTIONAL_MOUNTS: &str = "\
0 0 0:0 / /sys/fs/cgroup - cgroup2 cgroup2 rw
0 0 0:0 / /sys/fs/cgroup/unified - cgroup2 cgroup2 rw
0 0 0:0 / /sys/fs/cgroup/memory - cgroup cgroup rw,memory
";

/// Whether each memory cgroup of /proc/self/cgroup has its directory under
/// one of the mounts of `mountinfo` (`is_dir` says which directories exist).
fn located(cgroups: &str, mountinfo: &str, is_dir: impl Fn(&Path) -> bool) -> bool {
    let found = |(v2, path): &(bool, String)| {
        mounts(mountinfo, *v2)
            .iter()
            .any(|(root, mount)| cgroup_dir(mount, root, path).is_some_and(|d| is_dir(&d)))
    };
    memory_cgroups(cgroups).iter().all(found)
}

/// A file of /proc or /sys, or "" if it cannot be read: page by page
/// (`read_to_string` asks for a size these files do not know, then reads 32
/// bytes at a time, growing).
fn read_small(path: impl AsRef<Path>) -> String {
    use std::io::Read;
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let (mut text, mut page) = (Vec::new(), [0u8; 4096]);
    loop {
        match file.read(&mut page) {
            Ok(0) => return String::from_utf8(text).unwrap_or_default(),
            Ok(n) => text.extend_from_slice(&page[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return String::new(),
        }
    }
}

/// The smallest memory limit of this process's cgroups (v2 and v1), from
/// /proc/self/cgroup and /proc/self/mountinfo; `read` reads a limit file.
pub fn cgroup_limit(
    cgroups: &str,
    mountinfo: &str,
    read: impl Fn(&Path) -> Option<String>,
) -> Option<u64> {
    let mut best: Option<u64> = None;
    for (v2, path) in memory_cgroups(cgroups) {
        let file = if v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        for (root, mount) in mounts(mountinfo, v2) {
            let Some(dir) = cgroup_dir(&mount, &root, &path) else {
                continue;
            };
            // The limits of every ancestor apply too, up to the mount.
            for d in dir.ancestors().take_while(|d| d.starts_with(&mount)) {
                let limit = read(&d.join(file)).and_then(|s| parse_limit(&s));
                if let Some(l) = limit {
                    best = Some(best.map_or(l, |b| b.min(l)));
                }
            }
        }
    }
    best
}

/// The memory cgroups of /proc/self/cgroup: (is v2, path).
fn memory_cgroups(text: &str) -> Vec<(bool, String)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let (id, controllers, path) = (f.next()?, f.next()?, f.next()?);
            let v2 = id == "0" && controllers.is_empty();
            let v1 = controllers.split(',').any(|c| c == "memory");
            (v2 || v1).then(|| (v2, path.to_string()))
        })
        .collect()
}

/// Mounts of the cgroup2 file system (`v2`), or of v1 hierarchies with the
/// memory controller: (root within the hierarchy, mount point).
fn mounts(mountinfo: &str, v2: bool) -> Vec<(String, PathBuf)> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            let (root, mount) = (f.get(3)?, f.get(4)?);
            let ok = match (v2, r.first()?) {
                (true, &"cgroup2") => true,
                (false, &"cgroup") => r.get(2)?.split(',').any(|o| o == "memory"),
                _ => false,
            };
            ok.then(|| (unescape(root), PathBuf::from(unescape(mount))))
        })
        .collect()
}

/// Where cgroup `path` is under a mount of its hierarchy whose root is `root`.
fn cgroup_dir(mount: &Path, root: &str, path: &str) -> Option<PathBuf> {
    let rel = Path::new(path).strip_prefix(root).ok()?;
    Some(mount.join(rel))
}

/// Mountinfo escapes spaces and the like as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b.get(i + 1..i + 4).and_then(|o| {
            let o = std::str::from_utf8(o).ok()?;
            u8::from_str_radix(o, 8).ok()
        });
        match (b[i], oct) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A limit file's value: bytes, or None for "max" and values that mean none.
fn parse_limit(s: &str) -> Option<u64> {
    s.trim().parse::<u64>().ok().filter(|&l| l < UNLIMITED)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn defaults() {
        let two = Limit::Cgroup(2 * GIB);
        assert_eq!(default_budget(two, 0), (2 * GIB - OVERHEAD) / 4 * 3);
        assert_eq!(default_budget(two, GIB), (GIB - OVERHEAD) / 4 * 3);
        // Thin provisioning: a quarter of the limit is left for the rest.
        assert_eq!(default_budget(two, 10 * GIB), (GIB / 2 - OVERHEAD) / 4 * 3);
        assert!(overcommitted(two, 10 * GIB) && !overcommitted(two, GIB));
        assert_eq!(default_budget(Limit::Physical(8 * GIB), 0), 2 * GIB);
        assert_eq!(
            default_budget(Limit::Cgroup(16 * MIB), 0),
            0,
            "MIN_BUDGET applies"
        );
    }

    /// A hybrid host as this one: v1 memory controller, v2 without it.
    const HYBRID_CGROUP: &str = "\
9:name=systemd:/
4:memory:/process_api/abc
0::/
";
    const HYBRID_MOUNTS: &str = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
35 30 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 30 0:32 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn v1_hierarchy_takes_the_smallest_ancestor() {
        let files = |p: &Path| match p.to_str()? {
            "/sys/fs/cgroup/memory/process_api/abc/memory.limit_in_bytes" => {
                Some("9223372036854771712\n".into())
            }
            "/sys/fs/cgroup/memory/process_api/memory.limit_in_bytes" => {
                Some("2147483648\n".into())
            }
            "/sys/fs/cgroup/memory/memory.limit_in_bytes" => Some("9223372036854771712".into()),
            "/sys/fs/cgroup/unified/memory.max" => None, // no memory controller there
            _ => None,
        };
        assert_eq!(
            cgroup_limit(HYBRID_CGROUP, HYBRID_MOUNTS, files),
            Some(2 * GIB)
        );
        assert_eq!(cgroup_limit(HYBRID_CGROUP, HYBRID_MOUNTS, |_| None), None);
    }

    #[test]
    fn v2_in_a_container_whose_root_is_its_cgroup() {
        let cgroups = "0::/system.slice/nbd.service\n";
        let mounts = "\
22 1 0:20 /system.slice /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate
";
        let files = |p: &Path| match p.to_str()? {
            "/sys/fs/cgroup/nbd.service/memory.max" => Some("max\n".into()),
            "/sys/fs/cgroup/memory.max" => Some("536870912\n".into()),
            _ => None,
        };
        assert_eq!(cgroup_limit(cgroups, mounts, files), Some(512 * MIB));
        assert_eq!(unescape(r"/a\040b\\c"), r"/a b\\c");
    }

    #[test]
    fn conventional_mounts_only_where_the_cgroup_is_found() {
        let hybrid = |d: &Path| {
            let dirs = ["/sys/fs/cgroup", "/sys/fs/cgroup/memory/process_api/abc"];
            dirs.iter().any(|e| d == Path::new(e))
        };
        assert!(located(HYBRID_CGROUP, CONVENTIONAL_MOUNTS, hybrid));
        // A container without its own cgroup namespace: the path it is told
        // is not under the mount, which is its own cgroup.
        let container = |d: &Path| d == Path::new("/sys/fs/cgroup");
        assert!(!located("0::/docker/abc\n", CONVENTIONAL_MOUNTS, container));
        assert!(located("0::/\n", CONVENTIONAL_MOUNTS, container));
    }
}
