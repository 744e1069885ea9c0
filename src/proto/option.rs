//! Handshake-phase wire format: greetings, option headers and payloads, option replies.

use super::*;

/// Bytes in the newstyle greeting: NBDMAGIC, IHAVEOPT, handshake flags.
pub const GREETING_LEN: usize = 18;
/// Bytes in an option header: IHAVEOPT, option, length.
pub const OPTION_HEADER_LEN: usize = 16;
/// Bytes in the oldstyle greeting.
pub const OLDSTYLE_LEN: usize = 152;

/// The newstyle handshake flags nbdlite supports, and offers unless
/// `--mask-handshake` takes some away: FIXED_NEWSTYLE and NO_ZEROES.
pub const HANDSHAKE_FLAGS: u16 = FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES;

/// The newstyle greeting, offering `flags` (`Export::handshake_flags`).
pub fn greeting_newstyle(flags: u16) -> [u8; GREETING_LEN] {
    let mut g = [0u8; GREETING_LEN];
    g[..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    g[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    g[16..].copy_from_slice(&flags.to_be_bytes());
    g
}

/// The whole oldstyle handshake: the server speaks, the client only listens.
/// The 32-bit flags field carries no handshake flags, transmission flags in its low half.
pub fn greeting_oldstyle(size: u64, tflags: u16) -> [u8; OLDSTYLE_LEN] {
    let mut g = [0u8; OLDSTYLE_LEN];
    g[..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    g[8..16].copy_from_slice(&OLDSTYLE_MAGIC.to_be_bytes());
    g[16..24].copy_from_slice(&size.to_be_bytes());
    g[26..28].copy_from_slice(&tflags.to_be_bytes());
    g
}

/// The client's 32-bit flags, which follow our greeting.
pub fn parse_client_flags(buf: &[u8]) -> Parse<u32> {
    if buf.len() < 4 {
        return Parse::NeedMore;
    }
    Parse::Done(be32(buf), 4)
}

/// An option request header; its `len` bytes of data follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub opt: u32,
    pub len: u32,
}

pub fn parse_option_header(buf: &[u8]) -> Parse<OptionHeader> {
    if buf.len() < OPTION_HEADER_LEN {
        return Parse::NeedMore;
    }
    if be64(buf) != IHAVEOPT {
        return Parse::Malformed("bad option magic");
    }
    let hdr = OptionHeader {
        opt: be32(&buf[8..]),
        len: be32(&buf[12..]),
    };
    Parse::Done(hdr, OPTION_HEADER_LEN)
}

/// Appends an option reply header announcing `len` bytes of reply data.
pub fn put_reply_header(out: &mut Vec<u8>, opt: u32, reply: u32, len: u32) {
    out.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&opt.to_be_bytes());
    out.extend_from_slice(&reply.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
}

/// Appends a complete option reply with `data`.
pub fn put_reply(out: &mut Vec<u8>, opt: u32, reply: u32, data: &[u8]) {
    put_reply_header(out, opt, reply, data.len() as u32);
    out.extend_from_slice(data);
}

/// `NBD_REP_INFO` carrying `NBD_INFO_EXPORT`.
pub fn put_info_export(out: &mut Vec<u8>, opt: u32, size: u64, tflags: u16) {
    put_reply_header(out, opt, REP_INFO, 12);
    out.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&tflags.to_be_bytes());
}

/// `NBD_REP_INFO` carrying `NBD_INFO_BLOCK_SIZE`.
pub fn put_info_block_size(out: &mut Vec<u8>, opt: u32, min: u32, preferred: u32, max: u32) {
    put_reply_header(out, opt, REP_INFO, 14);
    out.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    for v in [min, preferred, max] {
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// `NBD_REP_INFO` carrying a string item (`NBD_INFO_NAME`, `NBD_INFO_DESCRIPTION`).
pub fn put_info_string(out: &mut Vec<u8>, opt: u32, item: u16, s: &[u8]) {
    put_reply_header(out, opt, REP_INFO, 2 + s.len() as u32);
    out.extend_from_slice(&item.to_be_bytes());
    out.extend_from_slice(s);
}

/// `NBD_REP_SERVER`: one entry of `NBD_OPT_LIST`.
pub fn put_server(out: &mut Vec<u8>, name: &[u8], description: &[u8]) {
    put_reply_header(
        out,
        OPT_LIST,
        REP_SERVER,
        (4 + name.len() + description.len()) as u32,
    );
    out.extend_from_slice(&(name.len() as u32).to_be_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(description);
}

/// `NBD_REP_META_CONTEXT`.
pub fn put_meta_context(out: &mut Vec<u8>, opt: u32, id: u32, name: &[u8]) {
    put_reply_header(out, opt, REP_META_CONTEXT, 4 + name.len() as u32);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(name);
}

/// The reply to `NBD_OPT_EXPORT_NAME`: size and flags, then 124 zeroes unless
/// both sides agreed on NO_ZEROES.
pub fn put_export_name_reply(out: &mut Vec<u8>, size: u64, tflags: u16, no_zeroes: bool) {
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&tflags.to_be_bytes());
    if !no_zeroes {
        out.extend_from_slice(&[0u8; 124]);
    }
}

/// The data of `NBD_OPT_INFO` / `NBD_OPT_GO`.
#[derive(Debug, PartialEq, Eq)]
pub struct InfoRequest<'a> {
    pub name: &'a [u8],
    /// The requested `NBD_INFO_*` items, two bytes each.
    items: &'a [u8],
}

impl InfoRequest<'_> {
    pub fn items(&self) -> impl Iterator<Item = u16> + '_ {
        self.items.chunks_exact(2).map(be16)
    }

    pub fn wants(&self, item: u16) -> bool {
        self.items().any(|i| i == item)
    }
}

/// Parses INFO/GO data: u32 name length, name, u16 count, count × u16 item.
pub fn parse_info_request(data: &[u8]) -> Result<InfoRequest<'_>, &'static str> {
    if data.len() < 6 {
        return Err("option data too short");
    }
    let namelen = be32(data) as usize;
    if namelen > data.len() - 6 {
        return Err("export name length runs past the option");
    }
    let name = &data[4..4 + namelen];
    let rest = &data[4 + namelen..];
    let n = be16(rest) as usize;
    let items = &rest[2..];
    if items.len() != n * 2 {
        return Err("information request count does not match the option length");
    }
    if name.len() > MAX_STRING {
        return Err("export name too long");
    }
    Ok(InfoRequest { name, items })
}

/// The data of `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`.
#[derive(Debug, PartialEq, Eq)]
pub struct MetaRequest<'a> {
    pub name: &'a [u8],
    pub queries: Vec<&'a [u8]>,
}

/// Parses META_CONTEXT data: u32 name length, name, u32 count, count × (u32 length, query).
/// A length that runs past the data is a syntax error (the spec's MUST ERR_INVALID).
pub fn parse_meta_request(data: &[u8]) -> Result<MetaRequest<'_>, &'static str> {
    let mut rest = data;
    let name = take_string(&mut rest)?;
    if rest.len() < 4 {
        return Err("query count missing");
    }
    let n = be32(rest) as usize;
    rest = &rest[4..];
    // Every query costs at least 4 bytes: bound the count before allocating.
    if n > rest.len() / 4 {
        return Err("query count runs past the option");
    }
    let mut queries = Vec::with_capacity(n);
    for _ in 0..n {
        queries.push(take_string(&mut rest)?);
    }
    if !rest.is_empty() {
        return Err("trailing bytes after the queries");
    }
    if name.len() > MAX_STRING || queries.iter().any(|q| q.len() > MAX_STRING) {
        return Err("string too long");
    }
    Ok(MetaRequest { name, queries })
}

/// Takes a u32-length-prefixed string off the front of `rest`.
fn take_string<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], &'static str> {
    if rest.len() < 4 {
        return Err("string length missing");
    }
    let len = be32(rest) as usize;
    if len > rest.len() - 4 {
        return Err("string length runs past the option");
    }
    let s = &rest[4..4 + len];
    *rest = &rest[4 + len..];
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::client_proto::{info_data as info, meta_data as meta, option_header};

    #[test]
    fn greeting_layout() {
        let g = greeting_newstyle(HANDSHAKE_FLAGS);
        assert_eq!(&g[..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(&g[16..], &[0, 3]);
        assert_eq!(&greeting_newstyle(FLAG_NO_ZEROES)[16..], &[0, 2]);
        let o = greeting_oldstyle(1 << 20, 0x1234);
        assert_eq!(&o[..8], b"NBDMAGIC");
        assert_eq!(be64(&o[8..]), OLDSTYLE_MAGIC);
        assert_eq!(be64(&o[16..]), 1 << 20);
        assert_eq!(be32(&o[24..]), 0x1234);
        assert!(o[28..].iter().all(|&b| b == 0));
    }

    #[test]
    fn option_header_every_prefix() {
        let mut h = option_header(7, 9).to_vec();
        h.push(0xff);
        for i in 0..OPTION_HEADER_LEN {
            assert_eq!(parse_option_header(&h[..i]), Parse::NeedMore);
        }
        assert_eq!(
            parse_option_header(&h),
            Parse::Done(OptionHeader { opt: 7, len: 9 }, 16)
        );
        h[0] ^= 1;
        assert!(matches!(parse_option_header(&h), Parse::Malformed(_)));
    }

    #[test]
    fn info_request() {
        let d = info(b"disk", &[INFO_NAME, INFO_BLOCK_SIZE]);
        let r = parse_info_request(&d).unwrap();
        assert_eq!(r.name, b"disk");
        assert!(r.wants(INFO_BLOCK_SIZE) && r.wants(INFO_NAME) && !r.wants(INFO_DESCRIPTION));
        // every truncation and every extension is refused
        for i in 0..d.len() {
            assert!(parse_info_request(&d[..i]).is_err(), "prefix {i}");
        }
        let mut long = d.clone();
        long.push(0);
        assert!(parse_info_request(&long).is_err());
        // a name length that runs past the data
        let mut bad = d.clone();
        bad[3] = 200;
        assert!(parse_info_request(&bad).is_err());
        assert!(parse_info_request(&info(&[b'x'; 4097], &[])).is_err());
    }

    #[test]
    fn meta_request() {
        let d = meta(b"", &[b"base:", b"qemu:dirty-bitmap:x"]);
        let r = parse_meta_request(&d).unwrap();
        assert_eq!(r.name, b"");
        assert_eq!(r.queries, vec![&b"base:"[..], &b"qemu:dirty-bitmap:x"[..]]);
        for i in 0..d.len() {
            assert!(parse_meta_request(&d[..i]).is_err(), "prefix {i}");
        }
        // a huge count must not allocate
        let mut huge = meta(b"", &[]);
        huge[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_meta_request(&huge).is_err());
        assert_eq!(
            parse_meta_request(&meta(b"x", &[])).unwrap().queries.len(),
            0
        );
    }

    #[test]
    fn replies() {
        let mut out = Vec::new();
        put_info_export(&mut out, OPT_GO, 4096, 3);
        assert_eq!(out.len(), 20 + 12);
        assert_eq!(be64(&out), OPT_REPLY_MAGIC);
        assert_eq!(be32(&out[8..]), OPT_GO);
        assert_eq!(be32(&out[12..]), REP_INFO);
        assert_eq!(be32(&out[16..]), 12);
        out.clear();
        put_export_name_reply(&mut out, 1, 1, false);
        assert_eq!(out.len(), 134);
        out.clear();
        put_export_name_reply(&mut out, 1, 1, true);
        assert_eq!(out.len(), 10);
    }
}
