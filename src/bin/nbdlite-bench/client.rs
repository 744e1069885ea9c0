//! Connecting and the handshake, done blocking (with a timeout) before the
//! event loop takes a socket over: the handshake is set-up, not what is measured.
//!
//! Fixed newstyle with `NBD_OPT_GO` (falling back to `NBD_OPT_EXPORT_NAME` for
//! servers that do not know GO), or oldstyle. Structured replies are never
//! asked for, so every reply is a simple one and a READ's data follows its header.
//!
//! With TLS (`nbds` URIs): `NBD_OPT_STARTTLS` first, and once the server has
//! acknowledged it, the TLS handshake and the same options inside TLS. Any
//! refusal ends there: an `nbds` URI never falls back to plaintext.

use std::io::{self, Read, Write};

use nbdlite::client_proto::{
    self, CFLAG_FIXED_NEWSTYLE, CFLAG_NO_ZEROES, ERR_POLICY, ERR_TLS_REQD, ERR_UNSUP, Export,
    FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, Greeting, INFO_BLOCK_SIZE, Info, OPT_EXPORT_NAME, OPT_GO,
    OPT_STARTTLS, Parse, REP_ACK, REP_ERROR_BIT, REP_INFO, ReadError, client_flags,
    export_name_reply, info, info_data, option, option_reply_header,
};
use nbdlite::error::plain;

use crate::stream::{HANDSHAKE_TIMEOUT, Stream};
use crate::tls::{self, Session};
use crate::uri::Target;

/// Replies to one GO we accept before its final one.
const MAX_GO_REPLIES: usize = 64;
/// Option replies longer than this are garbage, not something to allocate for.
const MAX_OPTION_REPLY: u32 = 1 << 20;
/// The longest message read whole: the oldstyle greeting.
const MAX_MESSAGE: usize = client_proto::OLDSTYLE_GREETING_LEN;

/// What the handshake told us about the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportInfo {
    pub size: u64,
    pub tflags: u16,
    /// The largest request the server takes (NBD_INFO_BLOCK_SIZE), if it said.
    pub max_block: Option<u32>,
}

impl ExportInfo {
    fn of(e: Export, max_block: Option<u32>) -> ExportInfo {
        ExportInfo {
            size: e.size,
            tflags: e.flags,
            max_block,
        }
    }
}

/// A negotiated connection: its socket (still blocking), and its TLS
/// session if it has one.
pub struct Link {
    pub stream: Stream,
    pub tls: Option<Box<Session>>,
}

/// Connects to `target` and negotiates, with TLS when `tls` is given (it is
/// for `nbds` targets).
pub fn open(target: &Target, tls: Option<&tls::Client>) -> Result<(Link, ExportInfo), String> {
    let mut stream = Stream::connect(&target.address, HANDSHAKE_TIMEOUT)?;
    let export = target.export.as_bytes();
    let Some(client) = tls else {
        let info = handshake(&mut stream, export)?;
        return Ok((Link { stream, tls: None }, info));
    };
    let no_zeroes = starttls(&mut stream)?;
    let mut session = client.handshake(&mut stream)?;
    // With TLS 1.3 a server judges our certificate after our handshake is
    // over: a refusal shows as a hang-up at the first option.
    let (result, broke) = {
        let mut over = Watched {
            s: session.blocking(&mut stream),
            broke: false,
        };
        (options(&mut over, export, no_zeroes), over.broke)
    };
    let info = result.map_err(|e| {
        if broke {
            format!("{e} ({})", client.hung_up())
        } else {
            e
        }
    })?;
    let tls = Some(Box::new(session));
    Ok((Link { stream, tls }, info))
}

/// A stream that remembers whether the connection itself failed (an error
/// or the end of the stream), rather than the server refusing something.
struct Watched<S> {
    s: S,
    broke: bool,
}

impl<S: Read> Read for Watched<S> {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        let r = self.s.read(b);
        self.broke |= r.is_err() || matches!(r, Ok(0) if !b.is_empty());
        r
    }
}

impl<S: Write> Write for Watched<S> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let r = self.s.write(b);
        self.broke |= r.is_err();
        r
    }

    fn flush(&mut self) -> io::Result<()> {
        let r = self.s.flush();
        self.broke |= r.is_err();
        r
    }
}

/// The server's greeting, either style.
fn greeting<S: Read>(s: &mut S) -> Result<Greeting, String> {
    read_message(s, "greeting", nbdlite::client_proto::greeting)
}

/// Runs the client side of the handshake on any byte stream.
pub fn handshake<S: Read + Write>(s: &mut S, export: &[u8]) -> Result<ExportInfo, String> {
    match greeting(s)? {
        Greeting::Newstyle { flags } => newstyle(s, flags, export),
        // The server sends size and flags and that is all.
        Greeting::Oldstyle(e) => Ok(ExportInfo::of(e, None)),
    }
}

/// The handshake up to the server's acknowledgement of `NBD_OPT_STARTTLS`,
/// after which TLS starts. Returns whether the server leaves out the zeroes
/// after EXPORT_NAME's reply (said once, before TLS, and true inside it).
pub fn starttls<S: Read + Write>(s: &mut S) -> Result<bool, String> {
    let flags = match greeting(s)? {
        Greeting::Oldstyle(_) => {
            return Err("the server speaks the oldstyle handshake, which cannot start TLS".into());
        }
        Greeting::Newstyle { flags } if flags & FLAG_FIXED_NEWSTYLE == 0 => {
            return Err("the server does not speak fixed newstyle, so it cannot start TLS".into());
        }
        Greeting::Newstyle { flags } => flags,
    };
    let no_zeroes = answer_flags(s, flags)?;
    write_all(s, &option(OPT_STARTTLS, &[]))?;
    let (kind, body) = option_reply(s, OPT_STARTTLS)?;
    match kind {
        REP_ACK => Ok(no_zeroes),
        ERR_POLICY | ERR_UNSUP => Err(format!(
            "the server does not offer TLS (STARTTLS: {}{})",
            rep_error_name(kind),
            message(&body)
        )),
        k if k & REP_ERROR_BIT != 0 => Err(format!(
            "server refused STARTTLS: {}{}",
            rep_error_name(k),
            message(&body)
        )),
        k => Err(format!("server answered STARTTLS with reply type {k}")),
    }
}

fn newstyle<S: Read + Write>(s: &mut S, flags: u16, export: &[u8]) -> Result<ExportInfo, String> {
    if flags & FLAG_FIXED_NEWSTYLE == 0 {
        // Without fixed newstyle an unknown option kills the connection; only
        // EXPORT_NAME is safe.
        write_all(s, &client_flags(0))?;
        return export_name(s, export, false);
    }
    let no_zeroes = answer_flags(s, flags)?;
    options(s, export, no_zeroes)
}

/// Answers a fixed-newstyle server's flags; returns whether it leaves out the
/// zeroes after EXPORT_NAME's reply.
fn answer_flags<S: Write>(s: &mut S, flags: u16) -> Result<bool, String> {
    let no_zeroes = flags & FLAG_NO_ZEROES != 0;
    let cflags = CFLAG_FIXED_NEWSTYLE | if no_zeroes { CFLAG_NO_ZEROES } else { 0 };
    write_all(s, &client_flags(cflags))?;
    Ok(no_zeroes)
}

/// The options that choose the export: GO, or EXPORT_NAME if GO is unknown.
fn options<S: Read + Write>(
    s: &mut S,
    export: &[u8],
    no_zeroes: bool,
) -> Result<ExportInfo, String> {
    match go(s, export)? {
        Some(info) => Ok(info),
        None => export_name(s, export, no_zeroes),
    }
}

/// `NBD_OPT_GO`, asking for the block sizes too (the maximum is checked
/// before the run); `None` if the server does not support GO.
fn go<S: Read + Write>(s: &mut S, export: &[u8]) -> Result<Option<ExportInfo>, String> {
    // One item asked for: INFO_EXPORT comes anyway.
    write_all(s, &option(OPT_GO, &info_data(export, &[INFO_BLOCK_SIZE])))?;
    let mut export_info = None;
    let mut max_block = None;
    // A server may send some INFO replies before its ACK, not endlessly many.
    for _ in 0..MAX_GO_REPLIES {
        let (kind, body) = option_reply(s, OPT_GO)?;
        match kind {
            REP_ACK => {
                let e = export_info.ok_or("server finished GO without sending the export size")?;
                return Ok(Some(ExportInfo::of(e, max_block)));
            }
            // Other items, and items we cannot read, are not errors: skip them.
            REP_INFO => match info(&body) {
                Ok(Info::Export(e)) => export_info = Some(e),
                Ok(Info::BlockSize { max, .. }) => max_block = Some(max),
                _ => {}
            },
            ERR_UNSUP => return Ok(None),
            k if k & REP_ERROR_BIT != 0 => {
                return Err(format!(
                    "server refused export '{}': {}{}{}",
                    shown(export),
                    rep_error_name(k),
                    message(&body),
                    if k == ERR_TLS_REQD {
                        " (use an nbds:// or nbds+unix:// URI)"
                    } else {
                        ""
                    }
                ));
            }
            // Other replies (REP_SERVER...) are not errors; skip them.
            _ => {}
        }
    }
    Err(format!("server sent over {MAX_GO_REPLIES} replies to GO"))
}

/// An export name for a message: at most 64 characters of it.
fn shown(export: &[u8]) -> String {
    let name = String::from_utf8_lossy(export);
    match name.char_indices().nth(64) {
        Some((i, _)) => format!("{}...", &name[..i]),
        None => name.into_owned(),
    }
}

/// `NBD_OPT_EXPORT_NAME`: the server answers with size and flags, or hangs up.
fn export_name<S: Read + Write>(
    s: &mut S,
    export: &[u8],
    no_zeroes: bool,
) -> Result<ExportInfo, String> {
    write_all(s, &option(OPT_EXPORT_NAME, export))?;
    let e = read_message(s, "EXPORT_NAME reply", |b| export_name_reply(b, no_zeroes))
        .map_err(|e| format!("{e} (does export '{}' exist?)", shown(export)))?;
    Ok(ExportInfo::of(e, None))
}

/// Reads one option reply to `opt`: its type and its data.
fn option_reply<S: Read>(s: &mut S, opt: u32) -> Result<(u32, Vec<u8>), String> {
    let h = read_message(s, "option reply", option_reply_header)?;
    if h.opt != opt {
        return Err("option reply to an option we did not send".into());
    }
    if h.len > MAX_OPTION_REPLY {
        return Err(format!(
            "option reply of {} bytes is implausibly long",
            h.len
        ));
    }
    let mut body = vec![0u8; h.len as usize];
    read_exact(s, &mut body, "option reply data")?;
    Ok((h.kind, body))
}

fn rep_error_name(k: u32) -> String {
    match k & !(1 << 31) {
        1 => "unsupported".into(),
        2 => "forbidden by policy".into(),
        3 => "invalid".into(),
        4 => "unsupported platform".into(),
        5 => "TLS required".into(),
        6 => "unknown export".into(),
        7 => "server shutting down".into(),
        8 => "block size required".into(),
        9 => "too big".into(),
        10 => "extended headers required".into(),
        n => format!("error {n}"),
    }
}

/// The error message a server may put in an error reply, as ": text", on
/// one line.
fn message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        let one_line = text
            .chars()
            .take(200)
            .map(|c| if c.is_control() { ' ' } else { c });
        format!(": {}", one_line.collect::<String>())
    }
}

/// Reads one `what` (none of what comes after it), as `parse` decodes it.
fn read_message<S: Read, T>(
    s: &mut S,
    what: &str,
    parse: impl Fn(&[u8]) -> Parse<T>,
) -> Result<T, String> {
    let read = |b: &mut [u8]| read_exact(s, b, what);
    client_proto::read_message(read, MAX_MESSAGE, parse).map_err(|e| match e {
        ReadError::Read(e) => e,
        ReadError::Malformed(e) => format!("not an NBD server ({e})"),
    })
}

fn read_exact<S: Read>(s: &mut S, buf: &mut [u8], what: &str) -> Result<(), String> {
    s.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => format!("server closed the connection during the {what}"),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!(
            "no {what} from the server within {}s (at its connection limit? qemu-nbd needs --shared=N)",
            HANDSHAKE_TIMEOUT.as_secs()
        ),
        _ => format!("reading the {what}: {}", plain(&e)),
    })
}

/// Writes `buf` and flushes (over TLS, rustls holds the records till then).
fn write_all<S: Write>(s: &mut S, buf: &[u8]) -> Result<(), String> {
    s.write_all(buf)
        .and_then(|()| s.flush())
        .map_err(|e| format!("writing to the server: {}", plain(&e)))
}

#[cfg(test)]
mod tests;
