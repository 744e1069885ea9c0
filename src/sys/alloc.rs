//! A global allocator that remembers the largest single allocation, so a harness
//! can tell an allocation sized by an unchecked length from the wire (which would
//! be huge) from the server's own bounded buffers.
//!
//! A binary opts in with
//! `#[global_allocator] static A: nbdlite::fuzzing::alloc::Counting = Counting;`.
//! Compiled only with the `fuzzing` feature; here because it is unsafe code.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    /// Per thread, so tests running in parallel do not see each other's buffers.
    /// Const-initialised and without a destructor: touching it never allocates.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // Fails only while the thread is being torn down; nothing to record then.
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

/// The system allocator, plus a record of the largest request.
pub struct Counting;

// SAFETY: every call is forwarded unchanged to `System`; the only addition is
// a store to a thread-local cell, which cannot allocate or unwind.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Forgets what was allocated so far.
pub fn reset() {
    LARGEST.with(|l| l.set(0));
}

/// The largest single allocation by this thread since `reset` (0 when
/// `Counting` is not the global allocator).
pub fn largest() -> usize {
    LARGEST.with(Cell::get)
}
