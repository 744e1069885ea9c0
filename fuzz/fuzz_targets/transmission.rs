//! Request streams in a session the input's first byte chooses (simple,
//! structured or extended; with or without base:allocation), in the chunking
//! the input chooses. Input format: `nbdlite::fuzzing::Input`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nbdlite::fuzzing::{Start, alloc::Counting, fuzz_one};

#[global_allocator]
static ALLOC: Counting = Counting;

fuzz_target!(|data: &[u8]| fuzz_one(Start::Transmission, data));
