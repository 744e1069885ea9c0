//! Loading the TLS configuration from nbdkit's certificate directory: what
//! loads, and the one-line error for each way the files can be wrong, in the
//! library and through the command line (with `-o`, `--tls-psk` and a bad mode).
#![cfg(feature = "tls")]

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::TempDir;
use common::certs::{self, Certs};
use nbdlite::tls::config::{default_dirs, fastest_first};
use nbdlite::tls::{TlsMode, TlsOptions, server_config};

fn opts(dir: &Path, verify_peer: bool) -> TlsOptions {
    TlsOptions {
        asked: Some(TlsMode::Require),
        certificates: Some(dir.to_path_buf()),
        verify_peer,
        psk: None,
    }
}

#[track_caller]
fn error(dir: &Path, verify_peer: bool) -> String {
    match server_config(&opts(dir, verify_peer)) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// A copy of the good directory, to spoil one file in.
fn copy(c: &Certs, tmp: &TempDir, name: &str) -> PathBuf {
    let d = tmp.join(name);
    fs::create_dir_all(&d).unwrap();
    for f in [
        "ca-cert.pem",
        "server-cert.pem",
        "server-key.pem",
        "ca-crl.pem",
    ] {
        fs::copy(c.dir.join(f), d.join(f)).unwrap();
    }
    d
}

#[test]
fn good_directory_loads_without_resumption_state() {
    let tmp = TempDir::new();
    let Some(c) = certs::make_or_skip(tmp.path()) else {
        return;
    };
    for verify in [false, true] {
        let cfg = server_config(&opts(&c.dir, verify)).unwrap();
        assert_eq!(cfg.send_tls13_tickets, 0);
        assert!(!cfg.session_storage.can_cache());
        assert!(!cfg.ticketer.enabled());
        assert!(cfg.alpn_protocols.is_empty());
        assert!(cfg.ignore_client_order, "the server picks the cipher suite");
    }
    // The CRL is optional.
    let d = copy(&c, &tmp, "nocrl");
    fs::remove_file(d.join("ca-crl.pem")).unwrap();
    server_config(&opts(&d, true)).unwrap();
}

#[test]
fn rsa_keys_load_and_a_mismatch_is_caught() {
    let tmp = TempDir::new();
    let Some(c) = certs::make_or_skip(tmp.path()) else {
        return;
    };
    let d = copy(&c, &tmp, "rsa");
    certs::rsa_pair(&c, &d, "server");
    server_config(&opts(&d, false)).unwrap();
    certs::rsa_pair(&c, &d, "other");
    // An RSA key for another RSA certificate, and an EC key for an RSA certificate.
    for wrong in ["other-key.pem".into(), c.dir.join("server-key.pem")] {
        fs::copy(d.join(wrong), d.join("server-key.pem")).unwrap();
        assert_eq!(
            error(&d, false),
            format!(
                "{}/server-key.pem: does not match the certificate in {}/server-cert.pem",
                d.display(),
                d.display()
            )
        );
    }
}

#[test]
fn missing_and_empty_files_are_named() {
    let tmp = TempDir::new();
    let Some(c) = certs::make_or_skip(tmp.path()) else {
        return;
    };
    for f in ["ca-cert.pem", "server-cert.pem", "server-key.pem"] {
        let d = copy(&c, &tmp, &format!("no-{f}"));
        fs::remove_file(d.join(f)).unwrap();
        assert_eq!(
            error(&d, false),
            format!("{}/{f}: No such file or directory", d.display())
        );
        fs::write(d.join(f), "").unwrap();
        let msg = error(&d, false);
        assert!(
            msg.starts_with(&format!("{}/{f}: no ", d.display())),
            "{msg}"
        );
        assert_eq!(msg.lines().count(), 1);
    }
    assert!(error(Path::new("/nonexistent/pki"), false).starts_with("/nonexistent/pki/"));
}

#[test]
fn garbage_is_refused() {
    let tmp = TempDir::new();
    let Some(c) = certs::make_or_skip(tmp.path()) else {
        return;
    };
    // A key where the CA belongs: no certificate in it.
    let d = copy(&c, &tmp, "key-as-ca");
    fs::copy(d.join("server-key.pem"), d.join("ca-cert.pem")).unwrap();
    assert!(error(&d, false).contains("ca-cert.pem: no certificate in it"));
    // A PEM block that is no certificate at all.
    let d = copy(&c, &tmp, "bad-ca");
    let junk = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    fs::write(d.join("ca-cert.pem"), junk).unwrap();
    assert!(error(&d, false).contains("ca-cert.pem: not a usable CA certificate"));
    // A CRL that does not parse: found when the verifier is built.
    let d = copy(&c, &tmp, "bad-crl");
    fs::write(
        d.join("ca-crl.pem"),
        junk.replace("CERTIFICATE", "X509 CRL"),
    )
    .unwrap();
    let msg = error(&d, true);
    assert!(
        msg.starts_with(&format!("{}/ca-crl.pem: ", d.display())),
        "{msg}"
    );
    // Broken PEM framing.
    let d = copy(&c, &tmp, "bad-pem");
    fs::write(
        d.join("server-cert.pem"),
        "-----BEGIN CERTIFICATE-----\nAAAA\n",
    )
    .unwrap();
    assert!(error(&d, false).contains("server-cert.pem: not valid PEM"));
}

#[test]
fn unreadable_key_is_named() {
    if nbdlite::os::geteuid() == 0 {
        common::skip("running as root, who reads any file");
        return;
    }
    let tmp = TempDir::new();
    let Some(c) = certs::make_or_skip(tmp.path()) else {
        return;
    };
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(
        c.dir.join("server-key.pem"),
        fs::Permissions::from_mode(0o000),
    )
    .unwrap();
    assert_eq!(
        error(&c.dir, false),
        format!("{}/server-key.pem: Permission denied", c.dir.display())
    );
}

#[test]
fn nbdkit_default_directories() {
    assert_eq!(
        default_dirs(true, Some(Path::new("/root"))),
        [PathBuf::from("/etc/pki/nbdkit")]
    );
    assert_eq!(
        default_dirs(false, Some(Path::new("/home/u"))),
        [
            PathBuf::from("/home/u/.pki/nbdkit"),
            PathBuf::from("/home/u/.config/pki/nbdkit")
        ]
    );
    assert!(default_dirs(false, None).is_empty());
    // Without --tls-certificates, and (on a test machine) no certificates where nbdkit looks.
    let o = TlsOptions {
        asked: Some(TlsMode::On),
        ..TlsOptions::default()
    };
    if let Err(e) = server_config(&o) {
        let msg = e.to_string();
        assert!(
            msg.starts_with("--tls=on: no TLS certificates found in "),
            "{msg}"
        );
        assert!(
            msg.ends_with("give --tls-certificates=DIR (see nbdlite(1))"),
            "{msg}"
        );
    }
}

/// The same mistakes, and the other misuse, through the command line: one
/// `nbdlite: ...` line naming the problem, exit 1, nothing on stdout.
#[test]
fn misuse_at_start_is_one_line_and_exit_1() {
    let tmp = TempDir::new();
    let Some(c) = certs::make_or_skip(tmp.path()) else {
        return;
    };
    let missing = tmp.join("none");
    let mismatch = copy(&c, &tmp, "mismatch");
    fs::copy(
        c.dir.join("client-key.pem"),
        mismatch.join("server-key.pem"),
    )
    .unwrap();
    // Unreadable even by root: a directory where the key belongs.
    let unreadable = copy(&c, &tmp, "unreadable");
    fs::remove_file(unreadable.join("server-key.pem")).unwrap();
    fs::create_dir(unreadable.join("server-key.pem")).unwrap();
    let psk = tmp.join("keys.psk");
    fs::write(&psk, "alice:0123456789abcdef0123456789abcdef\n").unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let cert_dir = |d: &Path| vec!["--tls=require".into(), "--tls-certificates".into(), s(d)];
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            cert_dir(&missing),
            format!("{}/ca-cert.pem: No such file or directory", s(&missing)),
        ),
        (cert_dir(&mismatch), "does not match the certificate".into()),
        (
            cert_dir(&unreadable),
            format!("{}/server-key.pem: Is a directory", s(&unreadable)),
        ),
        (
            [cert_dir(&c.dir), vec!["-o".into()]].concat(),
            "--tls=require cannot be used with -o".into(),
        ),
        (
            vec!["--tls=require".into(), format!("--tls-psk={}", s(&psk))],
            "--tls-psk: TLS with pre-shared keys is not supported".into(),
        ),
        (
            vec!["--tls-psk".into(), s(&psk)],
            "--tls-psk: TLS with pre-shared keys is not supported".into(),
        ),
        (
            vec!["--tls=maybe".into()],
            "--tls: expecting off, on or require".into(),
        ),
    ];
    let sock = tmp.join("sock");
    for (args, needle) in cases {
        let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
        // --run: a server that wrongly starts ends at once instead of forking.
        all.extend([
            "-U",
            sock.to_str().unwrap(),
            "memory",
            "1M",
            "--run",
            "true",
        ]);
        let (code, out, err) = common::nbdlite_in(tmp.path(), &all);
        assert_eq!(code, Some(1), "{all:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{all:?}: one line expected: {err}");
        assert!(
            err.starts_with("nbdlite: ") && err.contains(&needle),
            "{all:?}: {err}"
        );
        assert!(out.is_empty(), "{all:?}: {out}");
        assert!(!sock.exists(), "{all:?} left a socket");
    }
}

#[test]
fn the_cipher_suite_this_cpu_encrypts_fastest_comes_first() {
    use rustls::CipherSuite::*;
    let all = nbdlite::tls::provider().cipher_suites;
    let order = |aes: bool| -> Vec<rustls::CipherSuite> {
        fastest_first(all.clone(), aes)
            .iter()
            .map(|s| s.suite())
            .collect()
    };
    let at = |v: &[rustls::CipherSuite], s| v.iter().position(|&x| x == s).unwrap();
    for (aes, first, second, third) in [
        (true, "AES_128", "AES_256", "CHACHA20"),
        (false, "CHACHA20", "AES_128", "AES_256"),
    ] {
        let v = order(aes);
        assert_eq!(v.len(), all.len());
        // Within each version and key type, by bulk cipher.
        for family in [
            [
                TLS13_AES_128_GCM_SHA256,
                TLS13_AES_256_GCM_SHA384,
                TLS13_CHACHA20_POLY1305_SHA256,
            ],
            [
                TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            ],
            [
                TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
                TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
                TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
            ],
        ] {
            let mut f = family.to_vec();
            f.sort_by_key(|&s| at(&v, s));
            let names: Vec<String> = f.iter().map(|s| format!("{s:?}")).collect();
            assert!(
                names[0].contains(first) && names[1].contains(second) && names[2].contains(third),
                "aes {aes}: {names:?}"
            );
        }
    }
}
