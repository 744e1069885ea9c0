//! The option haggling and whatever follows it, from the client's first byte,
//! in the chunking the input chooses. Input format: `nbdlite::fuzzing::Input`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nbdlite::fuzzing::{Start, alloc::Counting, fuzz_one};

#[global_allocator]
static ALLOC: Counting = Counting;

fuzz_target!(|data: &[u8]| fuzz_one(Start::Handshake, data));
