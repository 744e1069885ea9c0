//! The handshake against scripted servers, which speak through the
//! server's own encoders.

use nbdlite::client_proto::u32_at;
use nbdlite::proto::option::{greeting_oldstyle, put_info_block_size, put_info_export, put_reply};

use super::*;

/// A scripted server: what it says, and what the client wrote.
struct Script {
    input: io::Cursor<Vec<u8>>,
    output: Vec<u8>,
}

impl Read for Script {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        self.input.read(b)
    }
}

impl Write for Script {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn script(parts: &[&[u8]]) -> Script {
    Script {
        input: io::Cursor::new(parts.concat()),
        output: Vec::new(),
    }
}

fn reply(opt: u32, kind: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    put_reply(&mut v, opt, kind, data);
    v
}

fn greeting() -> Vec<u8> {
    use nbdlite::proto::option::{HANDSHAKE_FLAGS, greeting_newstyle};
    greeting_newstyle(HANDSHAKE_FLAGS).to_vec()
}

fn info_export(size: u64, flags: u16) -> Vec<u8> {
    let mut v = Vec::new();
    put_info_export(&mut v, OPT_GO, size, flags);
    v
}

fn block_size(min: u32, preferred: u32, max: u32) -> Vec<u8> {
    let mut v = Vec::new();
    put_info_block_size(&mut v, OPT_GO, min, preferred, max);
    v
}

#[test]
fn go() {
    let mut s = script(&[
        &greeting(),
        &info_export(1 << 30, 3),
        &block_size(1, 4096, 32 << 20),
        &reply(OPT_GO, REP_ACK, b""),
    ]);
    let info = handshake(&mut s, b"disk").unwrap();
    assert_eq!(
        info,
        ExportInfo {
            size: 1 << 30,
            tflags: 3,
            max_block: Some(32 << 20),
        }
    );
    assert_eq!(u32_at(&s.output, 0), CFLAG_FIXED_NEWSTYLE | CFLAG_NO_ZEROES);
    assert_eq!(&s.output[4..12], b"IHAVEOPT");
    assert_eq!(u32_at(&s.output, 12), OPT_GO);
    assert_eq!(&s.output[24..28], b"disk");
    // one information request: NBD_INFO_BLOCK_SIZE
    assert_eq!(&s.output[28..], &[0, 1, 0, 3]);
}

#[test]
fn falls_back_to_export_name() {
    let mut s = script(&[
        &greeting(),
        &reply(OPT_GO, ERR_UNSUP, b""),
        &(5u64 << 20).to_be_bytes(),
        &1u16.to_be_bytes(),
    ]);
    let info = handshake(&mut s, b"").unwrap();
    assert_eq!(info.size, 5 << 20);
    assert_eq!(u32_at(&s.output, s.output.len() - 8), OPT_EXPORT_NAME);
}

#[test]
fn oldstyle() {
    let g = greeting_oldstyle(4096, 1);
    assert_eq!(
        handshake(&mut script(&[&g]), b"").unwrap(),
        ExportInfo {
            size: 4096,
            tflags: 1,
            max_block: None,
        }
    );
}

#[test]
fn starttls() {
    let mut s = script(&[&greeting(), &reply(OPT_STARTTLS, REP_ACK, b"")]);
    assert_eq!(super::starttls(&mut s), Ok(true));
    assert_eq!(u32_at(&s.output, 0), CFLAG_FIXED_NEWSTYLE | CFLAG_NO_ZEROES);
    assert_eq!(&s.output[4..12], b"IHAVEOPT");
    assert_eq!(u32_at(&s.output, 12), OPT_STARTTLS);
    assert_eq!(u32_at(&s.output, 16), 0);
    assert_eq!(s.output.len(), 20);
}

#[test]
fn starttls_refusals() {
    let policy = reply(OPT_STARTTLS, ERR_POLICY, b"TLS\nnot enabled");
    let e = super::starttls(&mut script(&[&greeting(), &policy])).unwrap_err();
    assert_eq!(
        e,
        "the server does not offer TLS (STARTTLS: forbidden by policy: TLS not enabled)"
    );
    let old = greeting_oldstyle(4096, 1);
    assert!(
        super::starttls(&mut script(&[&old]))
            .unwrap_err()
            .contains("oldstyle")
    );
    let mut plain_newstyle = greeting();
    plain_newstyle[17] &= !(FLAG_FIXED_NEWSTYLE as u8);
    let e = super::starttls(&mut script(&[&plain_newstyle])).unwrap_err();
    assert!(e.contains("fixed newstyle"), "{e}");
    for r in [
        reply(OPT_STARTTLS, REP_INFO, b""),
        reply(OPT_GO, REP_ACK, b""),
        reply(OPT_STARTTLS, REP_ACK, b"")[..10].to_vec(),
    ] {
        assert!(super::starttls(&mut script(&[&greeting(), &r])).is_err());
    }
}

#[test]
fn garbage_and_refusals_are_errors() {
    let cases: Vec<Vec<u8>> = vec![
        b"HTTP/1.1 400 Bad Request\r\n".to_vec(),
        greeting()[..10].to_vec(),
        [greeting(), reply(OPT_GO, ERR_UNSUP | 5, b"unknown export")].concat(),
        [greeting(), reply(OPT_GO, REP_ACK, b"")].concat(),
        [
            greeting(),
            reply(OPT_GO, REP_INFO, &[0u8; 12])[..25].to_vec(),
        ]
        .concat(),
        [
            greeting(),
            reply(OPT_GO, REP_ACK, &[])[..8].to_vec(),
            vec![0; 16],
        ]
        .concat(),
        [
            greeting(),
            reply(OPT_GO, REP_INFO, b"")[..16].to_vec(),
            u32::MAX.to_be_bytes().to_vec(),
        ]
        .concat(),
    ];
    for c in cases {
        let e = handshake(&mut script(&[&c]), b"x");
        assert!(e.is_err(), "{c:?}");
    }
}
