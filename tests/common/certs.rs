//! Test certificates, made with the `openssl` command in a directory the test
//! owns, under the file names nbdkit, libnbd and qemu look for.
//!
//! `make` lays out three directories, each usable as a client's
//! `tls-certificates=DIR` (libnbd) or `tls-creds-x509,dir=DIR` (qemu):
//! - `dir`: `ca-cert.pem`, `server-cert.pem`, `server-key.pem` (for localhost,
//!   127.0.0.1 and ::1), `ca-crl.pem` (revoking the `revoked` client), and a
//!   good client's `client-cert.pem` and `client-key.pem`: the server's
//!   `--tls-certificates` directory and a valid client's at once;
//! - `selfsigned`: the same CA, with a self-signed client certificate;
//! - `revoked`: the same CA, with a client certificate the CRL revokes.
//!
//! Keys are ECDSA P-256 (fast to make); `rsa_pair` makes an RSA pair.
//! Also compiled into the bench's unit tests (`#[path]`), so it uses std only
//! (and `skipped.rs`, included there too).
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct Certs {
    pub dir: PathBuf,
    pub selfsigned: PathBuf,
    pub revoked: PathBuf,
}

/// Whether the `openssl` command runs here.
pub fn have_openssl() -> bool {
    Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `make(dir)`, or `None` after a skip when openssl is missing; under
/// NBDLITE_REQUIRE_INTEROP=1 a missing openssl fails the test instead (see
/// `skipped.rs`, which the includer of this file declares beside it).
#[track_caller]
pub fn make_or_skip(dir: &Path) -> Option<Certs> {
    if have_openssl() {
        return Some(make(dir));
    }
    super::skipped::missing_tool("openssl");
    None
}

/// Runs `openssl ARGS` in `dir` (ARGS split at spaces: no argument here has
/// one); panics with its stderr if it fails.
#[track_caller]
pub fn openssl(dir: &Path, args: &str) {
    let out = Command::new("openssl")
        .args(args.split_whitespace())
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const EXTENSIONS: &str = "\
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
";

/// An `openssl ca` configuration: only revocation and CRLs use it.
fn ca_config(dir: &Path) -> String {
    format!(
        "[ca]\ndefault_ca = test\n[test]\ndatabase = {d}/index.txt\ncrlnumber = {d}/crlnumber\n\
         certificate = {d}/ca-cert.pem\nprivate_key = {d}/ca-key.pem\n\
         default_md = sha256\ndefault_crl_days = 30\ncrl_extensions = crl_ext\n\
         [crl_ext]\nauthorityKeyIdentifier = keyid\n",
        d = dir.display()
    )
}

/// A new P-256 key in `name`.
fn key(dir: &Path, name: &str) {
    openssl(
        dir,
        &format!("genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out {name}"),
    );
}

/// A certificate for `key`, named `cn`, signed by the CA in `dir`, with the
/// extensions of `section`.
fn signed(dir: &Path, key: &str, cert: &str, cn: &str, section: &str) {
    openssl(
        dir,
        &format!("req -new -key {key} -subj /CN={cn} -out {cert}.csr"),
    );
    openssl(
        dir,
        &format!(
            "x509 -req -in {cert}.csr -CA ca-cert.pem -CAkey ca-key.pem -CAcreateserial \
             -days 30 -extfile ext.cnf -extensions {section} -out {cert}"
        ),
    );
}

/// Makes the certificates under `root` (which must exist; its path has no spaces).
pub fn make(root: &Path) -> Certs {
    let dir = root.join("pki");
    let selfsigned = root.join("selfsigned");
    let revoked = root.join("revoked");
    for d in [&dir, &selfsigned, &revoked] {
        fs::create_dir_all(d).expect("create certificate dir");
    }
    fs::write(dir.join("ext.cnf"), EXTENSIONS).expect("write ext.cnf");
    fs::write(dir.join("ca.cnf"), ca_config(&dir)).expect("write ca.cnf");
    fs::write(dir.join("index.txt"), "").expect("write index.txt");
    fs::write(dir.join("crlnumber"), "01\n").expect("write crlnumber");

    key(&dir, "ca-key.pem");
    openssl(
        &dir,
        "req -x509 -new -key ca-key.pem -subj /CN=nbdlite-test-CA -days 30 \
         -config ext.cnf -extensions ca -out ca-cert.pem",
    );
    key(&dir, "server-key.pem");
    signed(
        &dir,
        "server-key.pem",
        "server-cert.pem",
        "localhost",
        "server",
    );
    key(&dir, "client-key.pem");
    signed(
        &dir,
        "client-key.pem",
        "client-cert.pem",
        "good-client",
        "client",
    );

    key(&revoked, "client-key.pem");
    let r = revoked.display();
    let revoked_cert = format!("{r}/client-cert.pem");
    signed(
        &dir,
        &format!("{r}/client-key.pem"),
        &revoked_cert,
        "revoked-client",
        "client",
    );
    openssl(&dir, &format!("ca -config ca.cnf -revoke {revoked_cert}"));
    openssl(&dir, "ca -config ca.cnf -gencrl -out ca-crl.pem");

    // Same name as the good client, not signed by the CA.
    key(&selfsigned, "client-key.pem");
    openssl(
        &selfsigned,
        "req -x509 -new -key client-key.pem -subj /CN=good-client -days 30 \
         -addext basicConstraints=critical,CA:FALSE -addext extendedKeyUsage=clientAuth \
         -out client-cert.pem",
    );
    for d in [&selfsigned, &revoked] {
        fs::copy(dir.join("ca-cert.pem"), d.join("ca-cert.pem")).expect("copy ca-cert.pem");
    }
    Certs {
        dir,
        selfsigned,
        revoked,
    }
}

/// An RSA-2048 key and a certificate for localhost signed by the CA of
/// `certs`, as `{prefix}-key.pem` and `{prefix}-cert.pem` in `out`.
pub fn rsa_pair(certs: &Certs, out: &Path, prefix: &str) {
    let (key, cert) = (
        out.join(format!("{prefix}-key.pem")),
        out.join(format!("{prefix}-cert.pem")),
    );
    let (key, cert) = (key.display().to_string(), cert.display().to_string());
    openssl(
        out,
        &format!("genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out {key}"),
    );
    signed(&certs.dir, &key, &cert, "localhost", "server");
}
