//! Option haggling: the newstyle handshake as a state machine.
//!
//! Pure apart from logging: it is fed the bytes received so far and appends its
//! replies to a byte vector. The connection does the I/O.

use crate::export::{BASE_ALLOCATION_ID, Export};
use crate::proto::option::{self, *};
use crate::proto::reply::Style;
use crate::proto::*;
use crate::transmission::Session;

/// nbdkit's limit: a client that has sent this many options without choosing an
/// export is not going to.
const MAX_OPTIONS: u32 = 32;
/// Option data we are willing to hold for the META_CONTEXT options (an export
/// name and a few queries of up to 4096 bytes each); larger data is skipped, not
/// buffered.
pub const MAX_OPTION_DATA: u32 = 64 * 1024;
/// INFO and GO: a name (≤ 4096 bytes) and its length, then this many information
/// requests at most (four types are defined; clients ask for each once).
const MAX_INFO_REQUESTS: u32 = 64;
const MAX_INFO_DATA: u32 = 4 + MAX_STRING as u32 + 2 + 2 * MAX_INFO_REQUESTS;

/// The most data we buffer for option `opt`: what it can legitimately need.
/// Options that take no data, and unknown ones, get none: their data is
/// answered as soon as the header arrives, and skipped.
fn data_limit(opt: u32) -> u32 {
    match opt {
        OPT_EXPORT_NAME => MAX_STRING as u32,
        OPT_INFO | OPT_GO => MAX_INFO_DATA,
        OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => MAX_OPTION_DATA,
        _ => 0,
    }
}

/// What the connection should do after a step.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `consumed` bytes were used; 0 means more input is needed.
    Continue(usize),
    /// A reply is queued; discard the next `skip` bytes of option data.
    Skip { consumed: usize, skip: u64 },
    /// The handshake is over: serve requests.
    Transmission { consumed: usize, session: Session },
    /// The client sent ABORT: send the ACK, then close.
    Abort,
    /// The client broke a MUST (or we cannot answer it): send what is queued, then close.
    Close(&'static str),
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
}

impl Default for Handshake {
    fn default() -> Self {
        Handshake {
            flags_read: false,
            no_zeroes: false,
            style: Style::Simple,
            meta: MetaSelection::default(),
            options: 0,
        }
    }
}

impl Handshake {
    /// Handles at most one message at the front of `input`.
    pub fn step(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        ex: &Export,
        shutting_down: bool,
    ) -> Outcome {
        if !self.flags_read {
            return match parse_client_flags(input) {
                Parse::Done(flags, n) => self.client_flags(flags, n),
                _ => Outcome::Continue(0),
            };
        }
        let hdr = match parse_option_header(input) {
            Parse::Done(h, _) => h,
            Parse::NeedMore => return Outcome::Continue(0),
            Parse::Malformed(why) => return Outcome::Close(why),
        };
        if self.options == MAX_OPTIONS && hdr.opt != OPT_ABORT {
            return Outcome::Close("too many options without choosing an export");
        }
        if hdr.len > data_limit(hdr.opt) {
            self.options += 1;
            return self.oversized(hdr, out, shutting_down);
        }
        let total = OPTION_HEADER_LEN + hdr.len as usize;
        if input.len() < total {
            return Outcome::Continue(0);
        }
        self.options += 1;
        let data = &input[OPTION_HEADER_LEN..total];
        log::debug!(
            "option {} ({}), {} bytes",
            option_name(hdr.opt),
            hdr.opt,
            hdr.len
        );
        if shutting_down && hdr.opt != OPT_ABORT {
            if hdr.opt == OPT_EXPORT_NAME {
                return Outcome::Close("shutting down");
            }
            error(out, hdr.opt, REP_ERR_SHUTDOWN, "server is shutting down");
            return Outcome::Continue(total);
        }
        self.option(hdr.opt, data, out, ex, total)
    }

    fn client_flags(&mut self, flags: u32, n: usize) -> Outcome {
        if flags & !(CFLAG_FIXED_NEWSTYLE | CFLAG_NO_ZEROES) != 0 {
            return Outcome::Close("client sent unknown handshake flags");
        }
        // A client without FIXED_NEWSTYLE is served as if it had set it, as the spec allows.
        self.no_zeroes = flags & CFLAG_NO_ZEROES != 0;
        self.flags_read = true;
        Outcome::Continue(n)
    }

    /// An option whose data we will not hold: answer it now and skip the data.
    fn oversized(&mut self, hdr: OptionHeader, out: &mut Vec<u8>, shutting_down: bool) -> Outcome {
        let skip = u64::from(hdr.len);
        log::debug!(
            "option {} ({}), {} bytes: not buffered",
            option_name(hdr.opt),
            hdr.opt,
            hdr.len
        );
        match hdr.opt {
            // No way to answer: the spec has the server hang up.
            OPT_EXPORT_NAME => return Outcome::Close("EXPORT_NAME too long"),
            OPT_ABORT => {
                put_reply(out, hdr.opt, REP_ACK, &[]);
                return Outcome::Abort;
            }
            _ if shutting_down => error(out, hdr.opt, REP_ERR_SHUTDOWN, "server is shutting down"),
            OPT_LIST | OPT_STARTTLS | OPT_STRUCTURED_REPLY | OPT_EXTENDED_HEADERS => {
                error(out, hdr.opt, REP_ERR_INVALID, "this option takes no data")
            }
            OPT_INFO | OPT_GO | OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                if hdr.opt == OPT_SET_META_CONTEXT {
                    self.meta = MetaSelection::default();
                }
                error(out, hdr.opt, REP_ERR_TOO_BIG, "option data too long")
            }
            _ => error(out, hdr.opt, REP_ERR_UNSUP, "unknown option"),
        }
        Outcome::Skip {
            consumed: OPTION_HEADER_LEN,
            skip,
        }
    }

    fn option(
        &mut self,
        opt: u32,
        data: &[u8],
        out: &mut Vec<u8>,
        ex: &Export,
        total: usize,
    ) -> Outcome {
        match opt {
            OPT_EXPORT_NAME => return self.export_name(data, out, ex, total),
            OPT_ABORT => {
                put_reply(out, opt, REP_ACK, &[]);
                return Outcome::Abort;
            }
            OPT_GO => {
                if let Some(name) = self.info(opt, data, out, ex) {
                    return Outcome::Transmission {
                        consumed: total,
                        session: self.session(ex, name),
                    };
                }
            }
            OPT_INFO => {
                self.info(opt, data, out, ex);
            }
            OPT_LIST => list(data, out, ex),
            OPT_STARTTLS if !data.is_empty() => {
                error(out, opt, REP_ERR_INVALID, "STARTTLS takes no data")
            }
            OPT_STARTTLS => error(
                out,
                opt,
                REP_ERR_POLICY,
                "TLS is not supported by this server",
            ),
            OPT_STRUCTURED_REPLY => self.structured_reply(data, out, ex),
            OPT_EXTENDED_HEADERS => self.extended_headers(data, out, ex),
            OPT_LIST_META_CONTEXT => self.list_meta(data, out, ex),
            OPT_SET_META_CONTEXT => self.set_meta(data, out, ex),
            _ => error(out, opt, REP_ERR_UNSUP, "unsupported option"),
        }
        Outcome::Continue(total)
    }

    fn export_name(
        &mut self,
        name: &[u8],
        out: &mut Vec<u8>,
        ex: &Export,
        total: usize,
    ) -> Outcome {
        if self.style == Style::Extended {
            return Outcome::Close("EXPORT_NAME after extended headers");
        }
        if !ex.matches(name) {
            log::info!(
                "client asked for unknown export {:?}",
                String::from_utf8_lossy(name)
            );
            return Outcome::Close("unknown export");
        }
        let session = self.session(ex, name);
        put_export_name_reply(out, ex.size, session.flags, self.no_zeroes);
        Outcome::Transmission {
            consumed: total,
            session,
        }
    }

    /// INFO and GO; the export name asked for when it was accepted (ACK sent).
    fn info<'a>(
        &mut self,
        opt: u32,
        data: &'a [u8],
        out: &mut Vec<u8>,
        ex: &Export,
    ) -> Option<&'a [u8]> {
        let req = match parse_info_request(data) {
            Ok(r) => r,
            Err(why) => {
                error(out, opt, REP_ERR_INVALID, why);
                return None;
            }
        };
        if !ex.matches(req.name) {
            error(out, opt, REP_ERR_UNKNOWN, "unknown export name");
            return None;
        }
        let flags = self.session(ex, req.name).flags;
        put_info_export(out, opt, ex.size, flags);
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
        Some(req.name)
    }

    fn structured_reply(&mut self, data: &[u8], out: &mut Vec<u8>, ex: &Export) {
        let opt = OPT_STRUCTURED_REPLY;
        match self.style {
            _ if !data.is_empty() => {
                error(out, opt, REP_ERR_INVALID, "STRUCTURED_REPLY takes no data")
            }
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
            }
        }
    }

    fn extended_headers(&mut self, data: &[u8], out: &mut Vec<u8>, ex: &Export) {
        let opt = OPT_EXTENDED_HEADERS;
        match self.style {
            _ if !data.is_empty() => {
                error(out, opt, REP_ERR_INVALID, "EXTENDED_HEADERS takes no data")
            }
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
            }
        }
    }

    fn list_meta(&mut self, data: &[u8], out: &mut Vec<u8>, ex: &Export) {
        let opt = OPT_LIST_META_CONTEXT;
        let req = match parse_meta_request(data) {
            Ok(r) => r,
            Err(why) => return error(out, opt, REP_ERR_INVALID, why),
        };
        if !ex.matches(req.name) {
            return error(out, opt, REP_ERR_UNKNOWN, "unknown export name");
        }
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
    }

    fn set_meta(&mut self, data: &[u8], out: &mut Vec<u8>, ex: &Export) {
        let opt = OPT_SET_META_CONTEXT;
        // The new selection replaces the old one, even when this request fails.
        self.meta = MetaSelection::default();
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
        if !ex.matches(req.name) {
            return error(out, opt, REP_ERR_UNKNOWN, "unknown export name");
        }
        // Unknown namespaces and leaves are ignored; bare `base:` selects nothing.
        if req.queries.contains(&BASE_ALLOCATION) {
            put_meta_context(out, opt, BASE_ALLOCATION_ID, BASE_ALLOCATION);
            self.meta = MetaSelection {
                export: req.name.to_vec(),
                base_allocation: true,
            };
        }
        put_reply(out, opt, REP_ACK, &[]);
    }

    /// Transmission settings for entering `name` now. Contexts count only if the
    /// last SET_META_CONTEXT named the same export.
    fn session(&self, ex: &Export, name: &[u8]) -> Session {
        let meta = self.meta.base_allocation && self.meta.export == name;
        Session {
            style: self.style,
            flags: ex.flags(self.style, meta),
            meta,
        }
    }
}

fn list(data: &[u8], out: &mut Vec<u8>, ex: &Export) {
    if !data.is_empty() {
        return error(out, OPT_LIST, REP_ERR_INVALID, "LIST takes no data");
    }
    put_server(out, &ex.name, ex.description.as_deref().unwrap_or_default());
    put_reply(out, OPT_LIST, REP_ACK, &[]);
}

/// An error reply with a message for humans.
fn error(out: &mut Vec<u8>, opt: u32, reply: u32, msg: &str) {
    log::debug!("option {}: error {:#x}: {msg}", option_name(opt), reply);
    option::put_reply(out, opt, reply, msg.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::test_export;
    use crate::proto::option::testing::{info_data, meta_data, option as opt};

    fn export() -> Export {
        test_export(false, 1)
    }

    /// Reply types found in `out`, in order.
    fn reply_types(mut out: &[u8]) -> Vec<u32> {
        let mut v = Vec::new();
        while out.len() >= 20 {
            assert_eq!(be64(out), OPT_REPLY_MAGIC);
            v.push(be32(&out[12..]));
            let len = be32(&out[16..]) as usize;
            out = &out[20 + len..];
        }
        assert!(out.is_empty());
        v
    }

    fn started() -> Handshake {
        let mut h = Handshake::default();
        assert_eq!(
            h.step(&3u32.to_be_bytes(), &mut Vec::new(), &export(), false),
            Outcome::Continue(4)
        );
        h
    }

    fn run(h: &mut Handshake, o: u32, data: &[u8]) -> (Outcome, Vec<u32>) {
        let mut out = Vec::new();
        let outcome = h.step(&opt(o, data), &mut out, &export(), false);
        (outcome, reply_types(&out))
    }

    #[test]
    fn unknown_client_flags_close() {
        let mut h = Handshake::default();
        let o = h.step(&4u32.to_be_bytes(), &mut Vec::new(), &export(), false);
        assert!(matches!(o, Outcome::Close(_)));
    }

    #[test]
    fn go_every_prefix_then_transmission() {
        let mut h = started();
        let msg = opt(OPT_GO, &info_data(b"", &[INFO_NAME, INFO_DESCRIPTION]));
        for i in 0..msg.len() {
            assert_eq!(
                h.step(&msg[..i], &mut Vec::new(), &export(), false),
                Outcome::Continue(0)
            );
        }
        let mut out = Vec::new();
        let o = h.step(&msg, &mut out, &export(), false);
        assert!(matches!(o, Outcome::Transmission { consumed, .. } if consumed == msg.len()));
        assert_eq!(
            reply_types(&out),
            vec![REP_INFO, REP_INFO, REP_INFO, REP_INFO, REP_ACK]
        );
    }

    #[test]
    fn unknown_export() {
        let mut h = started();
        let (o, r) = run(&mut h, OPT_INFO, &info_data(b"nope", &[]));
        assert!(matches!(o, Outcome::Continue(_)));
        assert_eq!(r, vec![REP_ERR_UNKNOWN]);
        let (o, _) = run(&mut h, OPT_EXPORT_NAME, b"nope");
        assert!(matches!(o, Outcome::Close(_)));
    }

    #[test]
    fn unknown_option_and_bad_data() {
        let mut h = started();
        assert_eq!(run(&mut h, 99, b"xyz").1, vec![REP_ERR_UNSUP]);
        assert_eq!(run(&mut h, OPT_LIST, b"x").1, vec![REP_ERR_INVALID]);
        assert_eq!(run(&mut h, OPT_STARTTLS, b"").1, vec![REP_ERR_POLICY]);
        assert_eq!(run(&mut h, OPT_STARTTLS, b"x").1, vec![REP_ERR_INVALID]);
        assert_eq!(run(&mut h, OPT_INFO, b"\0\0").1, vec![REP_ERR_INVALID]);
        assert_eq!(run(&mut h, OPT_LIST, b"").1, vec![REP_SERVER, REP_ACK]);
    }

    #[test]
    fn meta_contexts() {
        let mut h = started();
        // SET before structured replies
        let set = meta_data(b"", &[BASE_ALLOCATION]);
        assert_eq!(
            run(&mut h, OPT_SET_META_CONTEXT, &set).1,
            vec![REP_ERR_INVALID]
        );
        assert_eq!(run(&mut h, OPT_STRUCTURED_REPLY, b"").1, vec![REP_ACK]);
        assert_eq!(
            run(&mut h, OPT_STRUCTURED_REPLY, b"").1,
            vec![REP_ERR_INVALID]
        );
        let all = meta_data(b"", &[]);
        assert_eq!(
            run(&mut h, OPT_LIST_META_CONTEXT, &all).1,
            vec![REP_META_CONTEXT, REP_ACK]
        );
        let wild = meta_data(b"", &[b"base:", b"x-foo:bar"]);
        assert_eq!(
            run(&mut h, OPT_LIST_META_CONTEXT, &wild).1,
            vec![REP_META_CONTEXT, REP_ACK]
        );
        let other = meta_data(b"", &[b"base:nothing", b"qemu:dirty-bitmap:a"]);
        assert_eq!(run(&mut h, OPT_LIST_META_CONTEXT, &other).1, vec![REP_ACK]);
        let bare = meta_data(b"", &[b"base:"]);
        assert_eq!(run(&mut h, OPT_SET_META_CONTEXT, &bare).1, vec![REP_ACK]);
        let mut bad = set.clone();
        bad[11] = 200; // query length runs past the option
        assert_eq!(
            run(&mut h, OPT_SET_META_CONTEXT, &bad).1,
            vec![REP_ERR_INVALID]
        );
        assert_eq!(
            run(&mut h, OPT_SET_META_CONTEXT, &set).1,
            vec![REP_META_CONTEXT, REP_ACK]
        );
        // contexts belong to the export name they were set for
        let (o, _) = run(&mut h, OPT_GO, &info_data(b"disk", &[]));
        let Outcome::Transmission { session, .. } = o else {
            panic!("{o:?}")
        };
        assert!(!session.meta);
        let mut h2 = started();
        run(&mut h2, OPT_STRUCTURED_REPLY, b"");
        run(&mut h2, OPT_SET_META_CONTEXT, &set);
        let (o, _) = run(&mut h2, OPT_GO, &info_data(b"", &[]));
        let Outcome::Transmission { session, .. } = o else {
            panic!("{o:?}")
        };
        assert!(session.meta && session.style == Style::Structured);
    }

    #[test]
    fn extended_headers() {
        let mut h = started();
        assert_eq!(
            run(&mut h, OPT_EXTENDED_HEADERS, b"x").1,
            vec![REP_ERR_INVALID]
        );
        assert_eq!(run(&mut h, OPT_EXTENDED_HEADERS, b"").1, vec![REP_ACK]);
        assert_eq!(
            run(&mut h, OPT_EXTENDED_HEADERS, b"").1,
            vec![REP_ERR_INVALID]
        );
        assert_eq!(
            run(&mut h, OPT_STRUCTURED_REPLY, b"").1,
            vec![REP_ERR_EXT_HEADER_REQD]
        );
        let (o, _) = run(&mut h, OPT_EXPORT_NAME, b"");
        assert!(matches!(o, Outcome::Close(_)));
    }

    #[test]
    fn too_many_options() {
        let mut h = started();
        for _ in 0..MAX_OPTIONS {
            assert!(matches!(run(&mut h, 99, b"").0, Outcome::Continue(_)));
        }
        assert!(matches!(run(&mut h, 99, b"").0, Outcome::Close(_)));
    }

    #[test]
    fn oversized_option_is_skipped() {
        let header = |opt: u32, len: u32| {
            let mut hdr = IHAVEOPT.to_be_bytes().to_vec();
            hdr.extend_from_slice(&opt.to_be_bytes());
            hdr.extend_from_slice(&len.to_be_bytes());
            hdr
        };
        // Answered from the header alone: nothing of the data is needed.
        for (opt, len, reply) in [
            (OPT_GO, 1 << 30, REP_ERR_TOO_BIG),
            (OPT_INFO, MAX_INFO_DATA + 1, REP_ERR_TOO_BIG),
            (OPT_SET_META_CONTEXT, MAX_OPTION_DATA + 1, REP_ERR_TOO_BIG),
            (OPT_LIST, u32::MAX, REP_ERR_INVALID),
            (OPT_STRUCTURED_REPLY, 1, REP_ERR_INVALID),
            (OPT_EXTENDED_HEADERS, 4097, REP_ERR_INVALID),
            (0x4242, u32::MAX, REP_ERR_UNSUP),
        ] {
            let mut h = started();
            let mut out = Vec::new();
            let o = h.step(&header(opt, len), &mut out, &export(), false);
            let skip = u64::from(len);
            assert_eq!(o, Outcome::Skip { consumed: 16, skip }, "{opt}");
            assert_eq!(reply_types(&out), vec![reply], "{opt}");
        }
        let mut h = started();
        let o = h.step(
            &header(OPT_EXPORT_NAME, 4097),
            &mut Vec::new(),
            &export(),
            false,
        );
        assert!(matches!(o, Outcome::Close(_)));
        // A GO naming a 4096-byte export and asking for every item fits.
        let name = vec![b'x'; MAX_STRING];
        let go = opt(OPT_GO, &info_data(&name, &[0, 1, 2, 3]));
        let mut out = Vec::new();
        let o = started().step(&go, &mut out, &export(), false);
        assert_eq!(o, Outcome::Continue(go.len()));
        assert_eq!(reply_types(&out), vec![REP_ERR_UNKNOWN]);
    }

    #[test]
    fn shutdown_refuses_options() {
        let mut h = started();
        let mut out = Vec::new();
        let o = h.step(&opt(OPT_LIST, b""), &mut out, &export(), true);
        assert!(matches!(o, Outcome::Continue(_)));
        assert_eq!(reply_types(&out), vec![REP_ERR_SHUTDOWN]);
        out.clear();
        let o = h.step(&opt(OPT_ABORT, b""), &mut out, &export(), true);
        assert_eq!(o, Outcome::Abort);
        assert_eq!(reply_types(&out), vec![REP_ACK]);
    }
}
