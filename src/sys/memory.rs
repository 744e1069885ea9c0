//! The process's memory as the system sees it: how much the host has, what the
//! allocator holds, and giving its free memory back.

/// The physical memory, in bytes: the default memory budget's base when no
/// cgroup limit is set.
pub fn physical_memory() -> u64 {
    // SAFETY: sysconf takes a constant and touches no memory.
    let (pages, size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    (pages.max(0) as u64).saturating_mul(size.max(0) as u64)
}

/// Gives the allocator's free memory back to the system (glibc keeps freed
/// memory inside its heap; after a crowd of clients has come and gone, that
/// is most of the process). Called when the server has gone quiet.
pub fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Bytes the C allocator has handed out and not had back, in its main arena
/// (glibc's mallinfo2): how the memory of one idle connection is measured, by
/// code running on one thread (`tests/measure.rs`, `tls_idle_memory`).
#[cfg(target_env = "gnu")]
pub fn heap_in_use() -> usize {
    // SAFETY: mallinfo2 only reads the allocator's counters and returns them by value.
    unsafe { libc::mallinfo2() }.uordblks
}

/// Locks `buf`'s pages in RAM (`memory allocator=malloc,mlock=true`), so the
/// disk is never swapped out. Needs CAP_IPC_LOCK, or a locked-memory limit
/// (`memlock_limit`) that leaves room for it.
pub fn mlock(buf: &[u8]) -> std::io::Result<()> {
    if buf.is_empty() {
        return Ok(());
    }
    // SAFETY: mlock reads and writes no memory; the range is one live
    // allocation, which the caller keeps for the life of the process.
    super::cvt(unsafe { libc::mlock(buf.as_ptr().cast(), buf.len()) })?;
    Ok(())
}

/// The soft RLIMIT_MEMLOCK in bytes (`ulimit -l`), `None` when unlimited:
/// what a failed `mlock` is explained with.
pub fn memlock_limit() -> std::io::Result<Option<u64>> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct it is given, which lives on our stack.
    super::cvt(unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) })?;
    Ok((lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur))
}
