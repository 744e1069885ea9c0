//! Each NBD option decided in one place: what data it takes, how much of it we
//! hold, and what it answers, including to data we would not hold.
//!
//! Which export a name reaches is the catalog's to say (`crate::catalog`):
//! any name reaches the one export most backends serve, a file's name one of
//! `file dir=`'s; names over 4096 bytes, which the spec forbids, are refused
//! by the parsers.

use super::{Handshake, MAX_OPTIONS, MetaSelection};
use crate::catalog::Catalog;
use crate::export::BASE_ALLOCATION_ID;
use crate::proto::option::{self, *};
use crate::proto::reply::Style;
use crate::proto::*;
use crate::tls::TlsMode;

/// Option data we are willing to hold for the META_CONTEXT options (an export
/// name and a few queries of up to 4096 bytes each); larger data is skipped, not
/// buffered.
pub const MAX_OPTION_DATA: u32 = 64 * 1024;
/// INFO and GO: a name (≤ 4096 bytes) and its length, then this many information
/// requests at most (four types are defined; clients ask for each once).
const MAX_INFO_REQUESTS: u32 = 64;
pub const MAX_INFO_DATA: u32 = 4 + MAX_STRING as u32 + 2 + 2 * MAX_INFO_REQUESTS;

/// An option's data as its handler gets it.
#[derive(Debug, Clone, Copy)]
pub enum Data<'a> {
    /// All of it: it fit the option's limit.
    Held(&'a [u8]),
    /// More than the option's limit: not held, and skipped after the answer.
    TooLong,
}

/// What a handler decided; replies are already queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Negotiation goes on.
    Replied,
    /// The export is chosen: serve requests.
    Transmission(crate::agreement::Agreement),
    /// ACK sent: TLS begins.
    StartTls,
    /// ACK sent: close.
    Abort,
    /// Close after what is queued.
    Close(&'static str),
}

type NoDataHandler = fn(&mut Handshake, &mut Vec<u8>, &mut Catalog) -> Answer;
type DataHandler = fn(&mut Handshake, Data, &mut Vec<u8>, &mut Catalog) -> Answer;

/// An option's entry in the table.
#[derive(Clone, Copy)]
pub enum Rule {
    /// Takes no data: any is refused with ERR_INVALID from the header alone.
    NoData(NoDataHandler),
    /// Takes up to this many bytes; the handler answers larger data too.
    Data(u32, DataHandler),
    /// An option we do not know: ERR_UNSUP, whatever its data (skipped).
    Unknown,
}

impl Rule {
    /// The most data held for this option.
    pub fn limit(&self) -> u32 {
        match self {
            Rule::NoData(_) | Rule::Unknown => 0,
            Rule::Data(limit, _) => *limit,
        }
    }
}

/// The table: one entry per option.
pub fn rule(opt: u32) -> Rule {
    match opt {
        OPT_EXPORT_NAME => Rule::Data(MAX_STRING as u32, Handshake::export_name),
        OPT_ABORT => Rule::Data(0, Handshake::abort),
        OPT_LIST => Rule::NoData(Handshake::list),
        OPT_STARTTLS => Rule::NoData(Handshake::starttls),
        OPT_INFO => Rule::Data(MAX_INFO_DATA, Handshake::info),
        OPT_GO => Rule::Data(MAX_INFO_DATA, Handshake::go),
        OPT_STRUCTURED_REPLY => Rule::NoData(Handshake::structured_reply),
        OPT_EXTENDED_HEADERS => Rule::NoData(Handshake::extended_headers),
        OPT_LIST_META_CONTEXT => Rule::Data(MAX_OPTION_DATA, Handshake::list_meta),
        OPT_SET_META_CONTEXT => Rule::Data(MAX_OPTION_DATA, Handshake::set_meta),
        _ => Rule::Unknown,
    }
}

/// An error reply with a message for humans.
pub fn error(out: &mut Vec<u8>, opt: u32, reply: u32, msg: &str) -> Answer {
    log::debug!("option {}: error {:#x}: {msg}", option_name(opt), reply);
    option::put_reply(out, opt, reply, msg.as_bytes());
    Answer::Replied
}

fn too_big(out: &mut Vec<u8>, opt: u32) -> Answer {
    error(out, opt, REP_ERR_TOO_BIG, "option data too long")
}

impl Handshake {
    fn export_name(&mut self, data: Data, out: &mut Vec<u8>, cat: &mut Catalog) -> Answer {
        let Data::Held(name) = data else {
            // No way to answer: the spec has the server hang up.
            return Answer::Close("EXPORT_NAME too long");
        };
        if self.style == Style::Extended {
            return Answer::Close("EXPORT_NAME after extended headers");
        }
        // No way to refuse it either: an unknown name is a hang-up.
        let Some(ex) = cat.open(name) else {
            return Answer::Close("EXPORT_NAME names no export");
        };
        let session = self.session(&ex, name);
        put_export_name_reply(out, ex.size, session.flags, self.no_zeroes);
        Answer::Transmission(session)
    }

    /// Data with ABORT is ignored: the client is leaving either way.
    fn abort(&mut self, _: Data, out: &mut Vec<u8>, _: &mut Catalog) -> Answer {
        put_reply(out, OPT_ABORT, REP_ACK, &[]);
        Answer::Abort
    }

    /// LIST: each export, then ACK; the client may then ask about each: as
    /// many options again are allowed per export listed (however often it
    /// lists: the allowance does not grow with each LIST, whose directory
    /// read costs the loop's time).
    fn list(&mut self, out: &mut Vec<u8>, cat: &mut Catalog) -> Answer {
        let Ok(n) = cat.list(|name, description| put_server(out, name, description)) else {
            return error(out, OPT_LIST, REP_ERR_PLATFORM, "cannot list the exports");
        };
        let more = u32::try_from(n).unwrap_or(u32::MAX).saturating_add(1);
        self.allowed = self.allowed.max(MAX_OPTIONS.saturating_mul(more));
        put_reply(out, OPT_LIST, REP_ACK, &[]);
        Answer::Replied
    }

    /// STARTTLS: ACK, and the negotiation starts over inside TLS, forgetting
    /// everything agreed in plaintext (a man in the middle could have chosen it).
    fn starttls(&mut self, out: &mut Vec<u8>, cat: &mut Catalog) -> Answer {
        let opt = OPT_STARTTLS;
        if cat.server().tls == TlsMode::Off {
            return error(
                out,
                opt,
                REP_ERR_POLICY,
                "TLS is not enabled on this server",
            );
        }
        if self.tls {
            return error(out, opt, REP_ERR_INVALID, "TLS is already in use");
        }
        put_reply(out, opt, REP_ACK, &[]);
        *self = Handshake {
            flags_read: true,
            no_zeroes: self.no_zeroes,
            options: self.options,
            allowed: self.allowed,
            tls: true,
            ..Handshake::default()
        };
        Answer::StartTls
    }

    fn info(&mut self, data: Data, out: &mut Vec<u8>, cat: &mut Catalog) -> Answer {
        self.info_or_go(OPT_INFO, data, out, cat);
        Answer::Replied
    }

    fn go(&mut self, data: Data, out: &mut Vec<u8>, cat: &mut Catalog) -> Answer {
        match self.info_or_go(OPT_GO, data, out, cat) {
            Some(session) => Answer::Transmission(session),
            None => Answer::Replied,
        }
    }

    /// INFO and GO: the export's details; the session GO would enter, once the
    /// export is accepted (ACK sent). A name that reaches no export gets
    /// ERR_UNKNOWN (and the client may try another).
    fn info_or_go(
        &mut self,
        opt: u32,
        data: Data,
        out: &mut Vec<u8>,
        cat: &mut Catalog,
    ) -> Option<crate::agreement::Agreement> {
        let Data::Held(data) = data else {
            too_big(out, opt);
            return None;
        };
        let req = match parse_info_request(data) {
            Ok(r) => r,
            Err(why) => {
                error(out, opt, REP_ERR_INVALID, why);
                return None;
            }
        };
        let found = match opt {
            OPT_GO => cat.open(req.name),
            _ => cat.describe(req.name),
        };
        let Some(ex) = found else {
            error(out, opt, REP_ERR_UNKNOWN, "unknown export");
            return None;
        };
        let session = self.session(&ex, req.name);
        put_info_export(out, opt, ex.size, session.flags);
        if req.wants(INFO_NAME) {
            put_info_string(out, opt, INFO_NAME, &ex.name);
        }
        if let (true, Some(d)) = (req.wants(INFO_DESCRIPTION), &ex.description) {
            put_info_string(out, opt, INFO_DESCRIPTION, d);
        }
        // Always sent: the spec lets a server volunteer it, and clients that
        // did not ask simply ignore it.
        let (min, preferred, max) = ex.block_sizes();
        put_info_block_size(out, opt, min, preferred, max);
        put_reply(out, opt, REP_ACK, &[]);
        Some(session)
    }

    fn structured_reply(&mut self, out: &mut Vec<u8>, cat: &mut Catalog) -> Answer {
        let (opt, ex) = (OPT_STRUCTURED_REPLY, cat.server());
        match self.style {
            _ if ex.no_sr => error(out, opt, REP_ERR_UNSUP, "structured replies are disabled"),
            Style::Extended => error(
                out,
                opt,
                REP_ERR_EXT_HEADER_REQD,
                "extended headers already negotiated",
            ),
            Style::Structured => error(
                out,
                opt,
                REP_ERR_INVALID,
                "structured replies already negotiated",
            ),
            Style::Simple => {
                self.style = Style::Structured;
                put_reply(out, opt, REP_ACK, &[]);
                Answer::Replied
            }
        }
    }

    fn extended_headers(&mut self, out: &mut Vec<u8>, cat: &mut Catalog) -> Answer {
        let (opt, ex) = (OPT_EXTENDED_HEADERS, cat.server());
        match self.style {
            _ if ex.no_sr => error(out, opt, REP_ERR_UNSUP, "structured replies are disabled"),
            Style::Extended => error(
                out,
                opt,
                REP_ERR_INVALID,
                "extended headers already negotiated",
            ),
            _ => {
                self.style = Style::Extended;
                put_reply(out, opt, REP_ACK, &[]);
                Answer::Replied
            }
        }
    }

    fn list_meta(&mut self, data: Data, out: &mut Vec<u8>, _: &mut Catalog) -> Answer {
        let opt = OPT_LIST_META_CONTEXT;
        let Data::Held(data) = data else {
            return too_big(out, opt);
        };
        let req = match parse_meta_request(data) {
            Ok(r) => r,
            Err(why) => return error(out, opt, REP_ERR_INVALID, why),
        };
        // No query lists everything; `base:` is the namespace wildcard.
        let all = req.queries.is_empty();
        if all
            || req
                .queries
                .iter()
                .any(|q| *q == b"base:" || *q == BASE_ALLOCATION)
        {
            put_meta_context(out, opt, 0, BASE_ALLOCATION);
        }
        put_reply(out, opt, REP_ACK, &[]);
        Answer::Replied
    }

    fn set_meta(&mut self, data: Data, out: &mut Vec<u8>, _: &mut Catalog) -> Answer {
        let opt = OPT_SET_META_CONTEXT;
        // The new selection replaces the old one, even when this request fails.
        self.meta = MetaSelection::default();
        let Data::Held(data) = data else {
            return too_big(out, opt);
        };
        if self.style == Style::Simple {
            return error(
                out,
                opt,
                REP_ERR_INVALID,
                "negotiate structured replies first",
            );
        }
        let req = match parse_meta_request(data) {
            Ok(r) => r,
            Err(why) => return error(out, opt, REP_ERR_INVALID, why),
        };
        // Unknown namespaces and leaves are ignored; bare `base:` selects nothing.
        if req.queries.contains(&BASE_ALLOCATION) {
            put_meta_context(out, opt, BASE_ALLOCATION_ID, BASE_ALLOCATION);
            self.meta = MetaSelection {
                export: req.name.to_vec(),
                base_allocation: true,
            };
        }
        put_reply(out, opt, REP_ACK, &[]);
        Answer::Replied
    }
}
