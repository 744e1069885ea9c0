//! Naming a connection from something that may outlive it: a readiness event
//! gathered before it closed, an operation in the I/O engine, a place in a
//! queue for memory or for the engine's room, a deadline.
//!
//! Slab keys are reused as soon as a connection goes, so a key alone could
//! name its successor. An `Origin` adds a generation (the low bits of the
//! connection's serial number) and the server compares both before it hands
//! anything over (`Server::route`): a stale event is dropped there, once.

use mio::Token;

/// Bits of the serial number a generation keeps. A token holds the generation
/// above the key, and its top bit stays clear: the server's own tokens
/// (listeners, signals, the engine) count down from `usize::MAX`.
const GENERATION_BITS: u32 = 31;
const GENERATION_MASK: u64 = (1 << GENERATION_BITS) - 1;
/// Bits of a token that hold the slab key.
const KEY_BITS: u32 = 32;
const KEY_MASK: usize = (1 << KEY_BITS) - 1;

/// A connection, as something that outlives it names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Origin {
    pub key: usize,
    /// The low bits of its serial number: two connections that share a slab
    /// key 2^31 connections apart are the only ones it cannot tell apart.
    generation: u32,
}

impl Origin {
    /// Connection `serial`, in slab slot `key`.
    pub fn new(key: usize, serial: u64) -> Origin {
        Origin {
            key,
            generation: (serial & GENERATION_MASK) as u32, // masked to 31 bits
        }
    }

    /// The token its descriptors are registered with.
    pub fn token(self) -> Token {
        debug_assert!(self.key <= KEY_MASK, "slab key beyond 2^32");
        Token((self.generation as usize) << KEY_BITS | self.key)
    }

    /// The connection a Poll token names, if it names one (the server's own
    /// tokens have the top bit set).
    pub fn of_token(t: Token) -> Option<Origin> {
        let generation = t.0 >> KEY_BITS;
        (generation <= GENERATION_MASK as usize).then_some(Origin {
            key: t.0 & KEY_MASK,
            generation: generation as u32, // ≤ GENERATION_MASK when it counts
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_key_and_generation() {
        let o = Origin::new(7, 42);
        assert_eq!(Origin::of_token(o.token()), Some(o));
        let wrapped = Origin::new(7, 42 + (1 << GENERATION_BITS));
        assert_eq!(wrapped, o, "only the low bits count");
        assert_ne!(Origin::new(7, 43), o, "a successor in the same slot");
        assert_eq!(Origin::of_token(Token(usize::MAX)), None);
        assert_eq!(Origin::of_token(Token(usize::MAX - 4200)), None);
    }
}
