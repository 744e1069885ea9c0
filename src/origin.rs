//! Naming a connection from something that may outlive it: an operation in
//! the I/O engine, a place in a queue for memory or for the engine's room.

/// A connection, as something outlives it may name it: its slab key and its
/// serial (keys are reused, serials are not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub key: usize,
    pub serial: u64,
}
