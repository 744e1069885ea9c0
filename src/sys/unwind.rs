//! The unwinder's entry points, as stubs, so that a release build does not
//! load `libgcc_s.so.1`.
//!
//! Why: the standard library refers to ten `_Unwind_*` functions (for
//! panics that unwind, and for backtraces), and those references alone make
//! the dynamic linker load `libgcc_s` at every start, whose constructor then
//! probes the CPU with CPUID, an instruction that traps to the hypervisor in a
//! VM. On the 2-core VMs we measure on, that library cost 0.09–0.13 ms of a
//! socket-activated cold start of about 2 ms (`coldstart.py`; the C floor
//! program linked against `libgcc_s` for the comparison started 0.13 ms
//! later): 5 to 7 % of the whole start, a third of what it cost beyond the
//! floor program's.
//!
//! Why it is safe: a release build aborts on panic (`panic = "abort"`), so
//! nothing ever unwinds: the personality routine and `_Unwind_Resume` are
//! never reached, and `_Unwind_Backtrace` is only asked for a panic's
//! backtrace under `RUST_BACKTRACE`, which the stripped release binary could
//! not name anyway. What changes: such a backtrace prints no frames. Debug
//! and test builds unwind (the test harness catches panics) and the static
//! build links the real unwinder statically, so neither gets these (see the
//! `cfg` in `sys.rs`). Defined here, the symbols satisfy every reference
//! before the linker reaches `-lgcc_s`, which `--as-needed` then leaves out;
//! `.ci/run` checks that the release binary does not name it.

use std::ffi::{c_int, c_void};

/// `_URC_END_OF_STACK`: a walk that found no frame.
const END_OF_STACK: c_int = 5;

/// A backtrace of no frames: the callback is never called.
#[unsafe(no_mangle)]
pub extern "C" fn _Unwind_Backtrace(_trace: *mut c_void, _arg: *mut c_void) -> c_int {
    END_OF_STACK
}

/// Never reached: nothing unwinds under `panic = "abort"`. Aborting is what
/// a failed unwind would do.
#[unsafe(no_mangle)]
pub extern "C" fn _Unwind_Resume(_exception: *mut c_void) -> ! {
    std::process::abort()
}

/// Called only for a frame of a backtrace or of an unwind, of which there
/// are none; answers "no address".
///
/// # Safety
///
/// `before` is null or points to an `int` the caller owns, as the
/// unwinder's interface says.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _Unwind_GetIPInfo(_ctx: *mut c_void, before: *mut c_int) -> usize {
    if !before.is_null() {
        // SAFETY: the caller's promise (above): a non-null `before` is an
        // int of theirs, for us to say whether the address is that of the
        // instruction before the call.
        unsafe { *before = 0 };
    }
    0
}

// The rest: asked of a frame only during an unwind or a backtrace walk,
// neither of which ever yields a frame here. Each answers "nothing".

#[unsafe(no_mangle)]
pub extern "C" fn _Unwind_GetIP(_ctx: *mut c_void) -> usize {
    0
}

#[unsafe(no_mangle)]
pub extern "C" fn _Unwind_GetRegionStart(_ctx: *mut c_void) -> usize {
    0
}

#[unsafe(no_mangle)]
pub extern "C" fn _Unwind_GetDataRelBase(_ctx: *mut c_void) -> usize {
    0
}

#[unsafe(no_mangle)]
pub extern "C" fn _Unwind_GetTextRelBase(_ctx: *mut c_void) -> usize {
    0
}

#[unsafe(no_mangle)]
pub extern "C" fn _Unwind_GetLanguageSpecificData(_ctx: *mut c_void) -> *mut c_void {
    std::ptr::null_mut()
}

#[unsafe(no_mangle)]
pub extern "C" fn _Unwind_SetGR(_ctx: *mut c_void, _reg: c_int, _value: usize) {}

#[unsafe(no_mangle)]
pub extern "C" fn _Unwind_SetIP(_ctx: *mut c_void, _value: usize) {}
