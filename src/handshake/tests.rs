//! The handshake's unit tests: every option through `Handshake::step`.

use super::options::{MAX_INFO_DATA, MAX_OPTION_DATA};
use super::*;
use crate::client_proto::{self as client, info_data, meta_data, option as opt, option_header};
use crate::export::test_export;

fn export() -> Export {
    test_export(false, 1)
}

/// The one export, reached by any name.
fn one(ex: &Export) -> Catalog<'_> {
    Catalog::single(ex)
}

/// Reply types found in `out`, in order.
fn reply_types(mut out: &[u8]) -> Vec<u32> {
    let mut v = Vec::new();
    while !out.is_empty() {
        let client::Parse::Done(r, n) = client::option_reply(out) else {
            panic!("not whole option replies: {out:02x?}")
        };
        v.push(r.kind);
        out = &out[n..];
    }
    v
}

fn started() -> Handshake {
    let mut h = Handshake::default();
    assert_eq!(
        h.step(
            &3u32.to_be_bytes(),
            &mut Vec::new(),
            &mut one(&export()),
            Gate::Open
        ),
        Outcome::Continue(4)
    );
    h
}

fn run(h: &mut Handshake, o: u32, data: &[u8]) -> (Outcome, Vec<u32>) {
    let mut out = Vec::new();
    let outcome = h.step(&opt(o, data), &mut out, &mut one(&export()), Gate::Open);
    (outcome, reply_types(&out))
}

#[test]
fn unknown_client_flags_close() {
    let mut h = Handshake::default();
    let o = h.step(
        &4u32.to_be_bytes(),
        &mut Vec::new(),
        &mut one(&export()),
        Gate::Open,
    );
    assert!(matches!(o, Outcome::Close(_)));
}

/// `--mask-handshake`: a client may set only the flags offered; without
/// FIXED_NEWSTYLE only EXPORT_NAME (and ABORT) is served, and without
/// NO_ZEROES the EXPORT_NAME reply carries its 124 bytes of padding.
#[test]
fn masked_handshake_flags() {
    let offered = |flags: u16| Export {
        handshake_flags: flags,
        ..export()
    };
    let start = |ex: &Export, flags: u32| {
        let mut h = Handshake::default();
        let o = h.step(
            &flags.to_be_bytes(),
            &mut Vec::new(),
            &mut one(ex),
            Gate::Open,
        );
        (h, o)
    };
    let plain = offered(0);
    assert!(matches!(start(&plain, 1).1, Outcome::Close(_)));
    assert!(matches!(
        start(&offered(FLAG_FIXED_NEWSTYLE), 2).1,
        Outcome::Close(_)
    ));
    let (mut h, o) = start(&plain, 0);
    assert_eq!(o, Outcome::Continue(4));
    for (o, data) in [
        (OPT_LIST, &b""[..]),
        (OPT_GO, &info_data(b"", &[])[..]),
        (OPT_STARTTLS, b""),
        (OPT_STRUCTURED_REPLY, b""),
    ] {
        let mut out = Vec::new();
        let outcome = h.step(&opt(o, data), &mut out, &mut one(&plain), Gate::Open);
        assert_eq!(outcome, Outcome::Continue(16 + data.len()), "{o}");
        assert_eq!(reply_types(&out), vec![REP_ERR_INVALID], "{o}");
    }
    let mut out = Vec::new();
    let o = h.step(
        &opt(OPT_EXPORT_NAME, b"x"),
        &mut out,
        &mut one(&plain),
        Gate::Open,
    );
    assert!(matches!(o, Outcome::Transmission { .. }));
    assert_eq!(out.len(), 8 + 2 + 124, "size, flags and the zeroes");
    assert!(out[10..].iter().all(|&b| b == 0));
    let (mut h, _) = start(&plain, 0);
    let o = h.step(
        &opt(OPT_ABORT, b""),
        &mut Vec::new(),
        &mut one(&plain),
        Gate::Open,
    );
    assert_eq!(o, Outcome::Abort);
}

#[test]
fn go_every_prefix_then_transmission() {
    let mut h = started();
    let msg = opt(OPT_GO, &info_data(b"", &[INFO_NAME, INFO_DESCRIPTION]));
    for i in 0..msg.len() {
        assert_eq!(
            h.step(&msg[..i], &mut Vec::new(), &mut one(&export()), Gate::Open),
            Outcome::Continue(0)
        );
    }
    let mut out = Vec::new();
    let o = h.step(&msg, &mut out, &mut one(&export()), Gate::Open);
    assert!(matches!(o, Outcome::Transmission { consumed, .. } if consumed == msg.len()));
    assert_eq!(
        reply_types(&out),
        vec![REP_INFO, REP_INFO, REP_INFO, REP_INFO, REP_ACK]
    );
}

/// Any name reaches the one export (as with nbdkit's plugins), but one over
/// the 4096 bytes the spec allows.
#[test]
fn any_export_name_but_an_overlong_one() {
    let mut h = started();
    let (o, r) = run(&mut h, OPT_INFO, &info_data(b"nope", &[]));
    assert!(matches!(o, Outcome::Continue(_)));
    assert_eq!(r.last(), Some(&REP_ACK));
    let long = vec![b'x'; MAX_STRING + 1];
    let (o, r) = run(&mut h, OPT_INFO, &info_data(&long, &[]));
    assert!(matches!(o, Outcome::Continue(_)));
    assert_eq!(r, vec![REP_ERR_INVALID]);
    let o = h.step(
        &opt(OPT_EXPORT_NAME, b"nope"),
        &mut Vec::new(),
        &mut one(&export()),
        Gate::Open,
    );
    assert!(matches!(o, Outcome::Transmission { .. }));
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
        let o = h.step(
            &option_header(opt, len),
            &mut out,
            &mut one(&export()),
            Gate::Open,
        );
        let skip = u64::from(len);
        assert_eq!(o, Outcome::Skip { consumed: 16, skip }, "{opt}");
        assert_eq!(reply_types(&out), vec![reply], "{opt}");
    }
    let mut h = started();
    let o = h.step(
        &option_header(OPT_EXPORT_NAME, 4097),
        &mut Vec::new(),
        &mut one(&export()),
        Gate::Open,
    );
    assert!(matches!(o, Outcome::Close(_)));
    // A GO naming a 4096-byte export and asking for every item fits.
    let name = vec![b'x'; MAX_STRING];
    let go = opt(OPT_GO, &info_data(&name, &[0, 1, 2, 3]));
    let mut out = Vec::new();
    let o = started().step(&go, &mut out, &mut one(&export()), Gate::Open);
    assert!(matches!(o, Outcome::Transmission { consumed, .. } if consumed == go.len()));
    assert_eq!(reply_types(&out).last(), Some(&REP_ACK));
}

#[test]
fn shutdown_refuses_options() {
    let mut h = started();
    let mut out = Vec::new();
    let o = h.step(
        &opt(OPT_LIST, b""),
        &mut out,
        &mut one(&export()),
        Gate::ShuttingDown,
    );
    assert!(matches!(o, Outcome::Continue(_)));
    assert_eq!(reply_types(&out), vec![REP_ERR_SHUTDOWN]);
    out.clear();
    let o = h.step(
        &opt(OPT_ABORT, b""),
        &mut out,
        &mut one(&export()),
        Gate::ShuttingDown,
    );
    assert_eq!(o, Outcome::Abort);
    assert_eq!(reply_types(&out), vec![REP_ACK]);
}

#[test]
fn a_refusing_filter_refuses_go_and_export_name_only() {
    let mut h = started();
    let refused = Gate::Refused("limit");
    let mut out = Vec::new();
    let o = h.step(&opt(OPT_LIST, b""), &mut out, &mut one(&export()), refused);
    assert!(matches!(o, Outcome::Continue(_)));
    assert_eq!(reply_types(&out).last(), Some(&REP_ACK), "LIST is answered");
    out.clear();
    let go = opt(OPT_GO, &info_data(b"", &[]));
    let o = h.step(&go, &mut out, &mut one(&export()), refused);
    assert_eq!(o, Outcome::Continue(go.len()), "the client may try again");
    assert_eq!(reply_types(&out), vec![REP_ERR_UNKNOWN]);
    let o = h.step(&go, &mut Vec::new(), &mut one(&export()), Gate::Open);
    assert!(
        matches!(o, Outcome::Transmission { .. }),
        "and get in once it may"
    );
    let name = opt(OPT_EXPORT_NAME, b"");
    let o = started().step(&name, &mut Vec::new(), &mut one(&export()), refused);
    assert!(matches!(o, Outcome::Close(_)));
}

/// Files by name, as `file dir=` serves them: `names` listed, "gone" not
/// listable either.
struct Files {
    names: Vec<Vec<u8>>,
    broken: bool,
}

impl crate::backend::Exports for Files {
    fn names(&mut self) -> std::io::Result<Vec<Vec<u8>>> {
        match self.broken {
            true => Err(std::io::Error::from_raw_os_error(libc::ENOENT)),
            false => Ok(self.names.clone()),
        }
    }

    fn probe(&mut self, name: &[u8]) -> Result<crate::backend::Found, String> {
        match self.names.iter().any(|n| n == name) {
            true => Ok(crate::backend::Found {
                size: 512 * name.len() as u64,
                read_only: false,
                min_block: 1,
            }),
            false => Err("no such file".into()),
        }
    }

    fn open(&mut self, name: &[u8], _: u64) -> Result<crate::backend::Found, String> {
        self.probe(name)
    }
}

fn files(n: usize) -> Files {
    Files {
        names: (0..n).map(|i| format!("f{i}").into_bytes()).collect(),
        broken: false,
    }
}

/// Runs one option against exports chosen by name.
fn run_named(h: &mut Handshake, files: &mut Files, o: u32, data: &[u8]) -> (Outcome, Vec<u8>) {
    let ex = export();
    let mut cat = Catalog::new(&ex, Some(files), 1);
    let mut out = Vec::new();
    let outcome = h.step(&opt(o, data), &mut out, &mut cat, Gate::Open);
    (outcome, out)
}

#[test]
fn a_name_that_reaches_no_export_is_unknown() {
    let mut f = files(2);
    let mut h = started();
    for o in [OPT_INFO, OPT_GO] {
        for name in [&b""[..], b"f9", b"../f0", b"f0\0"] {
            let (outcome, out) = run_named(&mut h, &mut f, o, &info_data(name, &[]));
            assert!(matches!(outcome, Outcome::Continue(_)), "{o} {name:?}");
            assert_eq!(reply_types(&out), vec![REP_ERR_UNKNOWN], "{o} {name:?}");
        }
    }
    let (outcome, out) = run_named(&mut h, &mut f, OPT_INFO, &info_data(b"f1", &[]));
    assert!(matches!(outcome, Outcome::Continue(_)));
    let size = out.windows(10).any(|w| w == [0, 0, 0, 0, 0, 0, 0, 0, 4, 0]);
    assert!(size, "the file's own size, 1024: {out:02x?}");
    let (outcome, _) = run_named(&mut h, &mut f, OPT_GO, &info_data(b"f1", &[]));
    let Outcome::Transmission { session, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(session.size, 1024, "the agreement carries the file's size");
    // EXPORT_NAME has no way to refuse: the client is let go.
    let (outcome, _) = run_named(&mut started(), &mut f, OPT_EXPORT_NAME, b"f9");
    assert!(matches!(outcome, Outcome::Close(_)));
}

#[test]
fn list_names_each_export_and_allows_questions_about_each() {
    let mut f = files(40);
    let mut h = started();
    let (_, out) = run_named(&mut h, &mut f, OPT_LIST, b"");
    let types = reply_types(&out);
    assert_eq!(types.len(), 41);
    assert!(types[..40].iter().all(|&t| t == REP_SERVER) && types[40] == REP_ACK);
    // As nbdkit: MAX_OPTIONS more per export listed, not only MAX_OPTIONS.
    for i in 0..100 {
        let name = format!("f{}", i % 40);
        let (o, _) = run_named(&mut h, &mut f, OPT_INFO, &info_data(name.as_bytes(), &[]));
        assert!(matches!(o, Outcome::Continue(_)), "INFO {i}");
    }
    // Listing again does not raise the allowance further.
    let mut h = started();
    for i in 0..MAX_OPTIONS * 2 {
        let (o, _) = run_named(&mut h, &mut files(1), OPT_LIST, b"");
        assert!(matches!(o, Outcome::Continue(_)), "LIST {i}");
    }
    let (o, _) = run_named(&mut h, &mut files(1), OPT_LIST, b"");
    assert!(matches!(o, Outcome::Close(_)), "{o:?}");
    // Exports that cannot be listed: ERR_PLATFORM, as nbdkit answers.
    let mut broken = Files {
        broken: true,
        ..files(1)
    };
    let (_, out) = run_named(&mut started(), &mut broken, OPT_LIST, b"");
    assert_eq!(reply_types(&out), vec![REP_ERR_PLATFORM]);
}
