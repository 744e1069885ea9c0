//! The TLS options as nbdkit spells them: `--tls=off|on|require`,
//! `--tls-certificates=DIR`, `--tls-verify-peer`, `--tls-psk=FILE`.
//!
//! Compiled in every build, so that a plaintext-only nbdlite still accepts
//! nbdkit's command lines that ask for no TLS, and says plainly why it refuses
//! the others.

use std::path::PathBuf;

use crate::error::Error;

/// `--tls`: whether STARTTLS is refused, offered or demanded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// STARTTLS gets ERR_POLICY; only plaintext clients.
    Off,
    /// Clients choose: plaintext and TLS are both served.
    On,
    /// Every option but STARTTLS and ABORT gets ERR_TLS_REQD.
    Require,
}

impl TlsMode {
    /// The value of `$tls` for `--run`, as nbdkit sets it: 0, 1 or 2.
    pub fn number(self) -> u8 {
        match self {
            TlsMode::Off => 0,
            TlsMode::On => 1,
            TlsMode::Require => 2,
        }
    }
}

/// What the command line said about TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// `--tls`, if given.
    pub asked: Option<TlsMode>,
    /// `--tls-certificates`; `None` means nbdkit's default directories.
    pub certificates: Option<PathBuf>,
    /// `--tls-verify-peer`: clients must show a certificate signed by our CA.
    pub verify_peer: bool,
    /// `--tls-psk`: refused at parse time unless TLS is off (see `parse`).
    pub psk: Option<PathBuf>,
}

impl TlsOptions {
    /// The mode in force. Without `--tls`, naming a certificate directory turns
    /// TLS on, as it does in nbdkit. (nbdkit also turns TLS on when its default
    /// directories happen to hold certificates; nbdlite does not, so that the
    /// files lying around a host never change what an unchanged command does.)
    pub fn mode(&self) -> TlsMode {
        match self.asked {
            Some(m) => m,
            None if self.certificates.is_some() || self.psk.is_some() => TlsMode::On,
            None => TlsMode::Off,
        }
    }

    /// `-o` has no option phase, hence no STARTTLS: with `--tls=require` no
    /// client could ever be served. (`--tls=on` with `-o` just never sees TLS.)
    pub fn check_oldstyle(&self, oldstyle: bool) -> Result<(), Error> {
        if oldstyle && self.mode() == TlsMode::Require {
            return Err(Error::usage(
                "--tls=require cannot be used with -o: the oldstyle handshake has no STARTTLS",
            ));
        }
        Ok(())
    }
}

/// Takes the TLS options out of `p`. The caller parses the rest; this only
/// reads its own options, so it may run before or after the others that take
/// values (but before combined short flags, like every value option).
pub fn parse(p: &mut pico_args::Arguments) -> Result<TlsOptions, Error> {
    let bad = |e: pico_args::Error| Error::usage(e.to_string());
    let tls: Option<String> = p.opt_value_from_str("--tls").map_err(bad)?;
    let certificates = path_value(p, "--tls-certificates")?;
    let psk = path_value(p, "--tls-psk")?;
    let verify_peer = p.contains("--tls-verify-peer");
    let asked = tls.as_deref().map(parse_mode).transpose()?;
    for (flag, v) in [("--tls-certificates", &certificates), ("--tls-psk", &psk)] {
        if v.as_ref().is_some_and(|v| v.as_os_str().is_empty()) {
            return Err(Error::usage(format!("{flag}: empty path")));
        }
    }
    let opts = TlsOptions {
        asked,
        certificates,
        verify_peer,
        psk,
    };
    if opts.mode() == TlsMode::Off {
        return Ok(opts);
    }
    if !cfg!(feature = "tls") {
        return Err(Error::usage(
            "this nbdlite was built without TLS: only --tls=off is accepted",
        ));
    }
    if opts.psk.is_some() {
        return Err(Error::usage(
            "--tls-psk: TLS with pre-shared keys is not supported: use --tls-certificates (see nbdlite(1))",
        ));
    }
    Ok(opts)
}

/// `KEY PATH` (any bytes) or `KEY=PATH` (UTF-8: pico-args splits only
/// strings at `=`).
fn path_value(p: &mut pico_args::Arguments, key: &'static str) -> Result<Option<PathBuf>, Error> {
    let bad = |e: pico_args::Error| Error::usage(e.to_string());
    let path = |s: &std::ffi::OsStr| Ok::<_, String>(PathBuf::from(s));
    if let Some(v) = p.opt_value_from_os_str(key, path).map_err(bad)? {
        return Ok(Some(v));
    }
    let v: Option<String> = p.opt_value_from_str(key).map_err(bad)?;
    Ok(v.map(PathBuf::from))
}

fn parse_mode(s: &str) -> Result<TlsMode, Error> {
    match s {
        "off" => Ok(TlsMode::Off),
        "on" => Ok(TlsMode::On),
        "require" => Ok(TlsMode::Require),
        other => Err(Error::usage(format!(
            "--tls: expecting off, on or require, not '{other}'"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(line: &str) -> (Result<TlsOptions, String>, Vec<String>) {
        let mut p =
            pico_args::Arguments::from_vec(line.split_whitespace().map(Into::into).collect());
        let r = parse(&mut p).map_err(|e| e.to_string());
        let rest = p
            .finish()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        (r, rest)
    }

    #[track_caller]
    fn ok(line: &str) -> TlsOptions {
        run(line).0.unwrap()
    }

    #[track_caller]
    fn err(line: &str) -> String {
        run(line).0.unwrap_err()
    }

    #[test]
    fn spellings() {
        assert_eq!(ok("memory 1M"), TlsOptions::default());
        assert_eq!(ok("--tls=off").mode(), TlsMode::Off);
        assert_eq!(ok("--tls off").mode(), TlsMode::Off);
        assert!(err("--tls=maybe").contains("expecting off, on or require, not 'maybe'"));
        assert!(err("--tls-certificates=").contains("--tls-certificates"));
        assert!(err("--tls-psk").contains("--tls-psk"));
        let mut p = pico_args::Arguments::from_vec(vec!["--tls-certificates".into(), "".into()]);
        let e = parse(&mut p).unwrap_err().to_string();
        assert_eq!(e, "--tls-certificates: empty path");
        assert_eq!(
            ok("--tls=off --tls-psk=/a=b").psk,
            Some(PathBuf::from("/a=b"))
        );
        assert_eq!(ok("--tls=off --tls-psk /k").psk, Some(PathBuf::from("/k")));
        let (r, rest) = run("-r --tls=off --tls-verify-peer memory 1M");
        assert!(r.unwrap().verify_peer);
        assert_eq!(rest, ["-r", "memory", "1M"]);
    }

    #[test]
    fn modes_for_dollar_tls() {
        assert_eq!(TlsMode::Off.number(), 0);
        assert_eq!(TlsMode::On.number(), 1);
        assert_eq!(TlsMode::Require.number(), 2);
        let o = TlsOptions {
            certificates: Some("/c".into()),
            ..TlsOptions::default()
        };
        assert_eq!(o.mode(), TlsMode::On);
        let o = TlsOptions {
            asked: Some(TlsMode::Off),
            ..o
        };
        assert_eq!(o.mode(), TlsMode::Off);
    }

    #[test]
    fn off_ignores_the_rest() {
        // nbdkit ignores certificates and keys when TLS is off; so do we, in every build.
        let o = ok("--tls=off --tls-psk=/k --tls-certificates /c");
        assert_eq!(o.mode(), TlsMode::Off);
        assert!(o.check_oldstyle(true).is_ok());
    }

    #[cfg(feature = "tls")]
    #[test]
    fn with_tls() {
        let o = ok("--tls=require --tls-certificates=/etc/x --tls-verify-peer");
        assert_eq!(o.mode(), TlsMode::Require);
        assert_eq!(o.certificates, Some(PathBuf::from("/etc/x")));
        assert!(o.verify_peer);
        assert_eq!(ok("--tls on").mode(), TlsMode::On);
        assert!(err("--tls=on --tls-psk=/k").starts_with("--tls-psk: TLS with pre-shared keys"));
        assert!(err("--tls-psk /k").contains("not supported"));
        let req = ok("--tls=require");
        assert!(req.check_oldstyle(false).is_ok());
        assert!(
            req.check_oldstyle(true)
                .unwrap_err()
                .to_string()
                .contains("-o")
        );
        assert!(ok("--tls=on").check_oldstyle(true).is_ok());
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn without_tls() {
        for line in [
            "--tls=on",
            "--tls require",
            "--tls-certificates=/c",
            "--tls-psk=/k",
        ] {
            assert_eq!(
                err(line),
                "this nbdlite was built without TLS: only --tls=off is accepted"
            );
        }
    }
}
