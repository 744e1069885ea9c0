//! The handshake as a client speaks it: the client's flags and options out;
//! the greeting, option replies and their data, and EXPORT_NAME's reply in.

use super::*;

/// The client's flags: the 4 bytes that answer a newstyle greeting.
pub fn client_flags(flags: u32) -> [u8; 4] {
    flags.to_be_bytes()
}

/// An option header announcing `len` bytes of data (a test may announce
/// more or less than it sends).
pub fn option_header(opt: u32, len: u32) -> [u8; OPTION_HEADER_LEN] {
    let mut h = [0u8; OPTION_HEADER_LEN];
    h[..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
    h[8..12].copy_from_slice(&opt.to_be_bytes());
    h[12..].copy_from_slice(&len.to_be_bytes());
    h
}

/// A whole option: its header, then `data`. EXPORT_NAME's data is the name;
/// INFO's and GO's come from `info_data`, the META_CONTEXT options' from
/// `meta_data`; ABORT, LIST, STARTTLS, STRUCTURED_REPLY and EXTENDED_HEADERS
/// take none.
pub fn option(opt: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(OPTION_HEADER_LEN + data.len());
    v.extend_from_slice(&option_header(opt, data.len() as u32));
    v.extend_from_slice(data);
    v
}

/// INFO and GO data: the export name, then the information requests.
pub fn info_data(name: &[u8], items: &[u16]) -> Vec<u8> {
    let mut v = Vec::with_capacity(6 + name.len() + 2 * items.len());
    v.extend_from_slice(&(name.len() as u32).to_be_bytes());
    v.extend_from_slice(name);
    v.extend_from_slice(&(items.len() as u16).to_be_bytes());
    for i in items {
        v.extend_from_slice(&i.to_be_bytes());
    }
    v
}

/// LIST_META_CONTEXT and SET_META_CONTEXT data: the export name, then the
/// queries, each with its length.
pub fn meta_data(name: &[u8], queries: &[&[u8]]) -> Vec<u8> {
    let mut v = (name.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(name);
    v.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        v.extend_from_slice(&(q.len() as u32).to_be_bytes());
        v.extend_from_slice(q);
    }
    v
}

/// An export's size and transmission flags, however the server told them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Export {
    pub size: u64,
    pub flags: u16,
}

/// What the server's first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Greeting {
    /// Options may follow, once the client has sent its flags.
    Newstyle { flags: u16 },
    /// The whole handshake: transmission follows at once.
    Oldstyle(Export),
}

/// The greeting: 18 bytes newstyle, 152 oldstyle (whose 124 bytes of
/// padding are not looked at).
pub fn greeting(buf: &[u8]) -> Parse<Greeting> {
    if buf.len() >= 8 && u64_at(buf, 0) != NBDMAGIC {
        return Parse::Malformed("bad greeting magic");
    }
    if let Some(n) = short(buf, 16) {
        return Parse::NeedMore(n);
    }
    match u64_at(buf, 8) {
        IHAVEOPT => match short(buf, GREETING_LEN) {
            Some(n) => Parse::NeedMore(n),
            None => Parse::Done(
                Greeting::Newstyle {
                    flags: u16_at(buf, 16),
                },
                GREETING_LEN,
            ),
        },
        OLDSTYLE_MAGIC => match short(buf, OLDSTYLE_GREETING_LEN) {
            Some(n) => Parse::NeedMore(n),
            None => Parse::Done(
                Greeting::Oldstyle(Export {
                    size: u64_at(buf, 16),
                    // The low half of a 32-bit field.
                    flags: u16_at(buf, 26),
                }),
                OLDSTYLE_GREETING_LEN,
            ),
        },
        _ => Parse::Malformed("unknown handshake style"),
    }
}

/// The reply to EXPORT_NAME: size and flags, then 124 zeroes (not looked
/// at) unless both sides said NO_ZEROES.
pub fn export_name_reply(buf: &[u8], no_zeroes: bool) -> Parse<Export> {
    let len = if no_zeroes { 10 } else { 10 + 124 };
    if let Some(n) = short(buf, len) {
        return Parse::NeedMore(n);
    }
    let e = Export {
        size: u64_at(buf, 0),
        flags: u16_at(buf, 8),
    };
    Parse::Done(e, len)
}

/// An option reply's header; `len` bytes of data follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptReplyHeader {
    pub opt: u32,
    pub kind: u32,
    pub len: u32,
}

pub fn option_reply_header(buf: &[u8]) -> Parse<OptReplyHeader> {
    if buf.len() >= 8 && u64_at(buf, 0) != OPT_REPLY_MAGIC {
        return Parse::Malformed("bad option reply magic");
    }
    if let Some(n) = short(buf, OPT_REPLY_HEADER_LEN) {
        return Parse::NeedMore(n);
    }
    let h = OptReplyHeader {
        opt: u32_at(buf, 8),
        kind: u32_at(buf, 12),
        len: u32_at(buf, 16),
    };
    Parse::Done(h, OPT_REPLY_HEADER_LEN)
}

/// True for the reply that ends an option's replies: ACK or an error.
pub fn is_final(kind: u32) -> bool {
    kind == REP_ACK || kind & REP_ERROR_BIT != 0
}

/// One option reply, its data included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptReply {
    pub opt: u32,
    pub kind: u32,
    pub data: Vec<u8>,
}

impl OptReply {
    pub fn is_final(&self) -> bool {
        is_final(self.kind)
    }
}

/// A whole option reply. Its data is left to `info`, `server_entry` and
/// `meta_context`, by its type; an error's is a message.
pub fn option_reply(buf: &[u8]) -> Parse<OptReply> {
    let (h, _) = match option_reply_header(buf).value() {
        Ok(v) => v,
        Err(p) => return p,
    };
    let end = OPT_REPLY_HEADER_LEN + h.len as usize;
    if let Some(n) = short(buf, end) {
        return Parse::NeedMore(n);
    }
    let r = OptReply {
        opt: h.opt,
        kind: h.kind,
        data: buf[OPT_REPLY_HEADER_LEN..end].to_vec(),
    };
    Parse::Done(r, end)
}

/// One item of INFO's or GO's replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Info<'a> {
    Export(Export),
    Name(&'a [u8]),
    Description(&'a [u8]),
    BlockSize {
        min: u32,
        preferred: u32,
        max: u32,
    },
    /// An item this client does not know, by its type.
    Unknown(u16),
}

/// The data of an `NBD_REP_INFO`: the item's type, then the item.
pub fn info(data: &[u8]) -> Result<Info<'_>, &'static str> {
    if data.len() < 2 {
        return Err("information reply without a type");
    }
    let item = &data[2..];
    let exact = |n: usize| {
        if item.len() == n {
            Ok(item)
        } else {
            Err("information reply of the wrong length")
        }
    };
    Ok(match u16_at(data, 0) {
        INFO_EXPORT => {
            let d = exact(10)?;
            Info::Export(Export {
                size: u64_at(d, 0),
                flags: u16_at(d, 8),
            })
        }
        INFO_BLOCK_SIZE => {
            let d = exact(12)?;
            Info::BlockSize {
                min: u32_at(d, 0),
                preferred: u32_at(d, 4),
                max: u32_at(d, 8),
            }
        }
        INFO_NAME => Info::Name(string(item)?),
        INFO_DESCRIPTION => Info::Description(string(item)?),
        t => Info::Unknown(t),
    })
}

/// The data of an `NBD_REP_SERVER` (LIST): an export's name and description.
pub fn server_entry(data: &[u8]) -> Result<(&[u8], &[u8]), &'static str> {
    if data.len() < 4 {
        return Err("export entry without a name length");
    }
    let n = u32_at(data, 0) as usize;
    if n > data.len() - 4 {
        return Err("export name runs past the reply");
    }
    let (name, description) = data[4..].split_at(n);
    Ok((string(name)?, string(description)?))
}

/// The data of an `NBD_REP_META_CONTEXT`: the context's id and name.
pub fn meta_context(data: &[u8]) -> Result<(u32, &[u8]), &'static str> {
    if data.len() <= 4 {
        return Err("meta context without a name");
    }
    Ok((u32_at(data, 0), string(&data[4..])?))
}

/// A string the spec allows: at most 4096 bytes.
fn string(s: &[u8]) -> Result<&[u8], &'static str> {
    if s.len() > MAX_STRING {
        Err("string longer than 4096 bytes")
    } else {
        Ok(s)
    }
}
