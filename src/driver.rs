//! The pure half of a connection: what the bytes at the front of its input mean
//! and what goes back.
//!
//! No sockets and no clock. `Conn` hands it the bytes received so far and drops
//! as many as it says it used; the fuzz targets and the randomized tests hand it
//! arbitrary bytes in arbitrary pieces. Keeping this logic out of `Conn` is what
//! makes the code they exercise the very code the server runs.

use crate::buf::Out;
use crate::export::MAX_REQUEST;
use crate::handshake::{Handshake, Outcome};
use crate::proto::request::parse_request;
use crate::proto::{CMD_DISC, Parse};
use crate::transmission::{self, Env, Session};

/// Where a connection is in the protocol.
#[derive(Debug)]
pub enum Phase {
    Handshake(Handshake),
    Transmission(Session),
}

/// How far handling the buffered input got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Handled a message.
    Some,
    /// The message at the front is incomplete.
    NeedInput,
    /// End the connection (after sending what is queued).
    Close(&'static str),
}

/// One connection's protocol state.
#[derive(Debug)]
pub struct Driver {
    phase: Phase,
    /// Input bytes still to be thrown away (option data or a WRITE payload we refused).
    skip: u64,
    /// Total bytes the message at the front needs: how much to read next.
    need: usize,
    /// A request arrived while the server was shutting down (and was refused).
    refused_in_shutdown: bool,
}

impl Driver {
    /// Log lines name the connection through `logging::conn_scope`, which
    /// the connection holds while it drives us.
    pub fn new(phase: Phase) -> Driver {
        Driver {
            phase,
            skip: 0,
            need: 0,
            refused_in_shutdown: false,
        }
    }

    pub fn in_handshake(&self) -> bool {
        matches!(self.phase, Phase::Handshake(_))
    }

    /// The transmission settings, once the handshake is over.
    pub fn session(&self) -> Option<Session> {
        match self.phase {
            Phase::Transmission(s) => Some(s),
            Phase::Handshake(_) => None,
        }
    }

    /// Input bytes still to be discarded before the next message.
    pub fn skip(&self) -> u64 {
        self.skip
    }

    /// Bytes the message at the front needs in all (0: no more than a header),
    /// never more than the largest request we serve plus its header.
    pub fn need(&self) -> usize {
        self.need
    }

    pub fn refused_in_shutdown(&self) -> bool {
        self.refused_in_shutdown
    }

    /// Handles the message at the front of `input`, if it is complete, queueing
    /// any reply on `out`. Returns how many bytes of `input` were used: the caller
    /// drops them before the next call.
    pub fn one(&mut self, input: &[u8], env: &mut Env, out: &mut Out) -> (usize, Progress) {
        let mut skipped = 0;
        if self.skip > 0 {
            let n = self.skip.min(input.len() as u64);
            skipped = n as usize; // ≤ input.len()
            self.skip -= n;
            if self.skip > 0 {
                return (skipped, Progress::NeedInput);
            }
        }
        let input = &input[skipped..];
        let (used, progress) = match &mut self.phase {
            Phase::Handshake(hs) => {
                let mut replies = Vec::new();
                let outcome = hs.step(input, &mut replies, env.export, env.shutting_down);
                out.put(&replies);
                self.handshake_outcome(outcome)
            }
            Phase::Transmission(s) => {
                let s = *s;
                self.request(&s, input, env, out)
            }
        };
        (skipped + used, progress)
    }

    fn handshake_outcome(&mut self, outcome: Outcome) -> (usize, Progress) {
        match outcome {
            Outcome::Continue(0) => (0, Progress::NeedInput),
            Outcome::Continue(n) => (n, Progress::Some),
            Outcome::Skip { consumed, skip } => {
                self.skip = skip;
                (consumed, Progress::Some)
            }
            Outcome::Transmission { consumed, session } => {
                log::debug!(
                    "transmission: {:?}, flags {:#x}, base:allocation {}",
                    session.style,
                    session.flags,
                    session.meta
                );
                self.phase = Phase::Transmission(session);
                (consumed, Progress::Some)
            }
            Outcome::Abort => (0, Progress::Close("client aborted")),
            Outcome::Close(why) => {
                log::warn!("handshake: {why}: disconnecting");
                (0, Progress::Close(why))
            }
        }
    }

    fn request(
        &mut self,
        s: &Session,
        input: &[u8],
        env: &mut Env,
        out: &mut Out,
    ) -> (usize, Progress) {
        let (req, hdr) = match parse_request(input, s.extended()) {
            Parse::Done(req, n) => (req, n),
            Parse::NeedMore => return (0, Progress::NeedInput),
            Parse::Malformed(why) => {
                log::warn!("{why}: disconnecting");
                return (0, Progress::Close(why));
            }
        };
        if req.kind == CMD_DISC {
            return (0, Progress::Close("client sent DISC"));
        }
        if req.payload > MAX_REQUEST {
            if s.extended() {
                log::warn!("payload of {} bytes: disconnecting", req.payload);
                return (0, Progress::Close("payload too large"));
            }
            // Compact WRITE: refuse it, then read past its payload without keeping it.
            log::warn!("WRITE of {} bytes refused", req.payload);
            transmission::error(s, &req, out, crate::proto::EINVAL, "request too large");
            self.skip = req.payload;
            return (hdr, Progress::Some);
        }
        let total = hdr + req.payload as usize; // payload ≤ MAX_REQUEST, checked
        if input.len() < total {
            self.need = total;
            return (0, Progress::NeedInput);
        }
        self.refused_in_shutdown |= env.shutting_down;
        transmission::handle(s, env, &req, &input[hdr..total], out);
        self.need = 0;
        (total, Progress::Some)
    }
}
