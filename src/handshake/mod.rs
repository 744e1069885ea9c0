//! Option haggling: the newstyle handshake as a state machine.
//!
//! Pure apart from logging: it is fed the bytes received so far and appends its
//! replies to a byte vector. The connection does the I/O. What each option
//! takes and answers is decided in one table, `options::rule`.

mod options;
#[cfg(test)]
mod tests;

use crate::agreement::Agreement;
use crate::catalog::Catalog;
use crate::export::Export;
use crate::proto::option::*;
use crate::proto::reply::Style;
use crate::proto::*;
use crate::tls::TlsMode;

use options::{Answer, Data, Rule};

/// nbdkit's limit: a client that has sent this many options without choosing an
/// export is not going to. A LIST raises it by as many again for each export
/// listed (as nbdkit does), so that a client may ask about each in turn
/// (`nbdinfo --list`).
const MAX_OPTIONS: u32 = 32;

/// What the connection should do after a step.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `consumed` bytes were used; 0 means more input is needed.
    Continue(usize),
    /// A reply is queued; discard the next `skip` bytes of option data.
    Skip { consumed: usize, skip: u64 },
    /// The handshake is over: serve requests.
    Transmission { consumed: usize, session: Agreement },
    /// STARTTLS was accepted (ACK queued): everything after `consumed` bytes is
    /// TLS, and the handshake starts over inside it.
    StartTls { consumed: usize },
    /// The client sent ABORT: send the ACK, then close.
    Abort,
    /// The client broke a MUST (or we cannot answer it): send what is queued, then close.
    Close(&'static str),
}

/// Whether a client may choose the export now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Open,
    /// A filter (named) admits no more clients now (limit): GO is refused
    /// (the client may try again), EXPORT_NAME ends the connection.
    Refused(&'static str),
    /// The server is shutting down: every option but ABORT is refused.
    ShuttingDown,
}

/// Which metadata context a client selected, and for which export name.
#[derive(Debug, Default)]
struct MetaSelection {
    export: Vec<u8>,
    base_allocation: bool,
}

#[derive(Debug)]
pub struct Handshake {
    /// The client's flags have arrived.
    flags_read: bool,
    no_zeroes: bool,
    style: Style,
    meta: MetaSelection,
    options: u32,
    /// Options allowed before the client must choose: `MAX_OPTIONS`, or
    /// more after a LIST.
    allowed: u32,
    /// STARTTLS succeeded: this negotiation runs inside TLS.
    tls: bool,
}

impl Default for Handshake {
    fn default() -> Self {
        Handshake {
            flags_read: false,
            no_zeroes: false,
            style: Style::Simple,
            meta: MetaSelection::default(),
            options: 0,
            allowed: MAX_OPTIONS,
            tls: false,
        }
    }
}

impl Handshake {
    /// Handles at most one message at the front of `input`, answering from
    /// `cat` (the exports offered, and what they share).
    pub fn step(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        cat: &mut Catalog,
        gate: Gate,
    ) -> Outcome {
        let ex = cat.server();
        if !self.flags_read {
            return match parse_client_flags(input) {
                Parse::Done(flags, n) => self.client_flags(flags, n, ex),
                _ => Outcome::Continue(0),
            };
        }
        let hdr = match parse_option_header(input) {
            Parse::Done(h, _) => h,
            Parse::NeedMore => return Outcome::Continue(0),
            Parse::Malformed(why) => return Outcome::Close(why),
        };
        if self.options >= self.allowed && hdr.opt != OPT_ABORT {
            return Outcome::Close("too many options without choosing an export");
        }
        let rule = options::rule(hdr.opt);
        let total = OPTION_HEADER_LEN + hdr.len as usize;
        let held = hdr.len <= rule.limit();
        if held && input.len() < total {
            return Outcome::Continue(0);
        }
        self.options += 1;
        log::debug!(
            "option {} ({}), {} bytes{}",
            option_name(hdr.opt),
            hdr.opt,
            hdr.len,
            if held { "" } else { ": not buffered" }
        );
        let data = if held {
            Data::Held(&input[OPTION_HEADER_LEN..total])
        } else {
            Data::TooLong
        };
        let answer = match gate {
            Gate::ShuttingDown if hdr.opt != OPT_ABORT => shutdown_answer(hdr.opt, out),
            _ if !fixed_newstyle(ex) && !matches!(hdr.opt, OPT_EXPORT_NAME | OPT_ABORT) => {
                options::error(
                    out,
                    hdr.opt,
                    REP_ERR_INVALID,
                    "only EXPORT_NAME: the server does not offer fixed newstyle",
                )
            }
            _ if self.tls_required(ex) && !matches!(hdr.opt, OPT_STARTTLS | OPT_ABORT) => {
                tls_required_answer(hdr.opt, out)
            }
            Gate::Refused(by) if matches!(hdr.opt, OPT_GO | OPT_EXPORT_NAME) => {
                refused_answer(hdr.opt, by, out)
            }
            _ => self.answer(hdr.opt, rule, data, out, cat),
        };
        match (answer, held) {
            (Answer::Replied, true) => Outcome::Continue(total),
            (Answer::Replied, false) => Outcome::Skip {
                consumed: OPTION_HEADER_LEN,
                skip: u64::from(hdr.len),
            },
            (Answer::Transmission(session), _) => Outcome::Transmission {
                consumed: total,
                session,
            },
            (Answer::StartTls, _) => Outcome::StartTls { consumed: total },
            (Answer::Abort, _) => Outcome::Abort,
            (Answer::Close(why), _) => Outcome::Close(why),
        }
    }

    /// Runs an option's entry of the table on its data.
    fn answer(
        &mut self,
        opt: u32,
        rule: Rule,
        data: Data,
        out: &mut Vec<u8>,
        cat: &mut Catalog,
    ) -> Answer {
        match (rule, data) {
            (Rule::NoData(_), Data::TooLong) => {
                options::error(out, opt, REP_ERR_INVALID, "this option takes no data")
            }
            (Rule::NoData(run), Data::Held(_)) => run(self, out, cat),
            (Rule::Data(_, run), data) => run(self, data, out, cat),
            (Rule::Unknown, _) => options::error(out, opt, REP_ERR_UNSUP, "unknown option"),
        }
    }

    /// `--tls=require` and still in plaintext: nothing but STARTTLS and ABORT.
    fn tls_required(&self, ex: &Export) -> bool {
        ex.tls == TlsMode::Require && !self.tls
    }

    /// The client's flags: only those the greeting offered (client flags
    /// mirror the server's, bit for bit).
    fn client_flags(&mut self, flags: u32, n: usize, ex: &Export) -> Outcome {
        if flags & !u32::from(ex.handshake_flags) != 0 {
            return Outcome::Close("client sent handshake flags the server did not offer");
        }
        // A client without FIXED_NEWSTYLE is served as if it had set it, as
        // the spec allows, when the server offers it (see `fixed_newstyle`).
        self.no_zeroes = flags & CFLAG_NO_ZEROES != 0;
        self.flags_read = true;
        Outcome::Continue(n)
    }

    /// Transmission settings for entering `name` now. Contexts count only if the
    /// last SET_META_CONTEXT named the same export.
    fn session(&self, ex: &Export, name: &[u8]) -> Agreement {
        let meta = self.meta.base_allocation && self.meta.export == name;
        Agreement::new(ex, self.style, meta)
    }
}

/// Whether the greeting offered FIXED_NEWSTYLE. Without it (`--mask-handshake`
/// with bit 0 clear, to test how clients cope with an old server) a client
/// may send only EXPORT_NAME (or ABORT, to leave); anything else is
/// refused, as nbdkit does.
fn fixed_newstyle(ex: &Export) -> bool {
    ex.handshake_flags & FLAG_FIXED_NEWSTYLE != 0
}

/// Before TLS, under `--tls=require`: options are refused with ERR_TLS_REQD
/// (their data read and discarded); EXPORT_NAME cannot be refused, so the
/// client is let go.
fn tls_required_answer(opt: u32, out: &mut Vec<u8>) -> Answer {
    if opt == OPT_EXPORT_NAME {
        return Answer::Close("EXPORT_NAME without TLS, which is required");
    }
    options::error(out, opt, REP_ERR_TLS_REQD, "TLS is required: use STARTTLS")
}

/// A filter admits no more clients now: GO gets ERR_UNKNOWN (as nbdkit
/// answers an export that failed to open), and the client may try again;
/// EXPORT_NAME has no way to be refused, so the client is let go.
fn refused_answer(opt: u32, by: &str, out: &mut Vec<u8>) -> Answer {
    log::warn!("the {by} filter admits no more clients now: refusing the export");
    if opt == OPT_EXPORT_NAME {
        return Answer::Close("refused by a filter");
    }
    let msg = format!("the {by} filter admits no more clients now");
    options::error(out, opt, REP_ERR_UNKNOWN, &msg)
}

/// While the server shuts down, options (but ABORT) are refused; EXPORT_NAME
/// has no way to be refused, so the client is let go.
fn shutdown_answer(opt: u32, out: &mut Vec<u8>) -> Answer {
    if opt == OPT_EXPORT_NAME {
        return Answer::Close("shutting down");
    }
    options::error(out, opt, REP_ERR_SHUTDOWN, "server is shutting down")
}
