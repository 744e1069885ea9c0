//! The exports a server offers, as the handshake sees them: the one export
//! every backend but `file dir=` serves, whatever name a client gives (as
//! nbdkit's plugins do: qemu and scripts pass names of their own), or one
//! export per file of a directory, chosen by name.
//!
//! The handshake lists them (LIST), describes one (INFO) and enters one (GO,
//! EXPORT_NAME) through here. What a connection entered then travels in its
//! `Agreement` (size, caps), so that no request ever looks its export up.

use std::borrow::Cow;

use crate::backend::{Exports, Found};
use crate::export::Export;

/// Most characters of a refused name the log line shows.
const SHOWN: usize = 64;

/// The exports, for one connection's handshake.
pub struct Catalog<'a> {
    /// The server's export: the one served, or, where exports are chosen by
    /// name, what they all share (flags, block sizes, TLS, as the filters
    /// shaped them).
    server: &'a Export,
    /// Exports chosen by name (`file dir=`), if the backend serves several.
    named: Option<&'a mut dyn Exports>,
    /// The connection asking (as in log lines).
    conn: u64,
}

impl<'a> Catalog<'a> {
    pub fn new(server: &'a Export, named: Option<&'a mut dyn Exports>, conn: u64) -> Catalog<'a> {
        Catalog {
            server,
            named,
            conn,
        }
    }

    /// One export, reached by any name.
    #[cfg(test)]
    pub fn single(server: &'a Export) -> Catalog<'a> {
        Catalog::new(server, None, 0)
    }

    /// What every export shares: handshake flags, TLS, structured replies.
    pub fn server(&self) -> &'a Export {
        self.server
    }

    /// LIST: each export's name and description, in order, to `each`; how
    /// many. Err: they could not be read (said in the log).
    pub fn list(&mut self, mut each: impl FnMut(&[u8], &[u8])) -> Result<usize, ()> {
        let Some(named) = &mut self.named else {
            let description = self.server.description.as_deref().unwrap_or_default();
            each(&self.server.name, description);
            return Ok(1);
        };
        match named.names() {
            Ok(names) => {
                names.iter().for_each(|n| each(n, b""));
                Ok(names.len())
            }
            Err(e) => {
                log::warn!("cannot list the exports: {e}");
                Err(())
            }
        }
    }

    /// INFO: the export `name` names, as a client entering it would see it;
    /// None (and a log line) if there is none.
    pub fn describe(&mut self, name: &[u8]) -> Option<Cow<'a, Export>> {
        let server = self.server;
        match &mut self.named {
            None => Some(Cow::Borrowed(server)),
            Some(named) => entered(server, name, named.probe(name)),
        }
    }

    /// GO, EXPORT_NAME: the export `name` names, opened for this
    /// connection; None (and a log line) if there is none.
    pub fn open(&mut self, name: &[u8]) -> Option<Cow<'a, Export>> {
        let server = self.server;
        match &mut self.named {
            None => Some(Cow::Borrowed(server)),
            Some(named) => entered(server, name, named.open(name, self.conn)),
        }
    }
}

/// The export a file found by name is, or None (said in the log) for a name
/// that is refused.
fn entered<'a>(
    server: &Export,
    name: &[u8],
    found: Result<Found, String>,
) -> Option<Cow<'a, Export>> {
    match found {
        Ok(f) => Some(Cow::Owned(export_of(server, name, f))),
        Err(why) => {
            log::warn!("export {}: {why}: refused", shown(name));
            None
        }
    }
}

/// A file's export: what every export shares (the server's, as the filters
/// shaped it), with the file's own name, size, block size, and read-only
/// where the file cannot be written.
fn export_of(server: &Export, name: &[u8], f: Found) -> Export {
    let mut caps = server.caps;
    caps.read_only |= f.read_only;
    caps.min_block = caps.min_block.max(f.min_block);
    Export {
        name: name.to_vec(),
        description: None,
        size: f.size,
        caps,
        no_sr: server.no_sr,
        handshake_flags: server.handshake_flags,
        tls: server.tls,
        max_request: server.max_request,
        block_override: server.block_override,
    }
}

/// A client's name, fit for a log line: quoted, escaped, and cut short.
fn shown(name: &[u8]) -> String {
    let text = String::from_utf8_lossy(name);
    let s: String = text.chars().take(SHOWN).collect();
    match s.len() < text.len() {
        true => format!("{s:?}... ({} bytes)", name.len()),
        false => format!("{s:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::test_export;

    /// Two files: "a" (writable, 100 bytes) and "ro" (read-only, a block
    /// device of 512-byte sectors); opens recorded.
    #[derive(Default)]
    struct Two {
        opened: Vec<(Vec<u8>, u64)>,
    }

    impl Exports for Two {
        fn names(&mut self) -> std::io::Result<Vec<Vec<u8>>> {
            Ok(vec![b"a".to_vec(), b"ro".to_vec()])
        }

        fn probe(&mut self, name: &[u8]) -> Result<Found, String> {
            match name {
                b"a" => Ok(Found {
                    size: 100,
                    read_only: false,
                    min_block: 1,
                }),
                b"ro" => Ok(Found {
                    size: 4096,
                    read_only: true,
                    min_block: 512,
                }),
                _ => Err("no such file".into()),
            }
        }

        fn open(&mut self, name: &[u8], conn: u64) -> Result<Found, String> {
            let f = self.probe(name)?;
            self.opened.push((name.to_vec(), conn));
            Ok(f)
        }
    }

    #[test]
    fn one_export_answers_every_name() {
        let ex = test_export(false, 1);
        let mut c = Catalog::single(&ex);
        let mut listed = Vec::new();
        assert_eq!(c.list(|n, d| listed.push((n.to_vec(), d.to_vec()))), Ok(1));
        assert_eq!(listed, [(b"disk".to_vec(), b"a test disk".to_vec())]);
        for name in [&b""[..], b"anything", b"../x"] {
            assert!(matches!(c.open(name), Some(Cow::Borrowed(_))));
        }
    }

    #[test]
    fn named_exports_carry_their_own_facts() {
        let ex = test_export(false, 1);
        let mut two = Two::default();
        let mut c = Catalog::new(&ex, Some(&mut two), 7);
        let mut listed = Vec::new();
        assert_eq!(c.list(|n, _| listed.push(n.to_vec())), Ok(2));
        assert_eq!(listed, [b"a".to_vec(), b"ro".to_vec()]);
        let a = c.describe(b"a").expect("a file");
        assert_eq!(
            (a.size, a.caps.read_only, &a.name[..]),
            (100, false, &b"a"[..])
        );
        assert_eq!(a.description, None);
        let ro = c.open(b"ro").expect("a file");
        assert!(ro.caps.read_only && ro.caps.min_block == 512);
        assert_eq!(ro.block_sizes().0, 512);
        assert!(c.open(b"nope").is_none());
        assert!(c.describe(b"").is_none());
        assert_eq!(two.opened, [(b"ro".to_vec(), 7)], "INFO opens nothing");
    }

    #[test]
    fn a_read_only_server_keeps_every_export_read_only() {
        let ex = test_export(true, 1);
        let mut two = Two::default();
        let mut c = Catalog::new(&ex, Some(&mut two), 1);
        assert!(c.open(b"a").expect("a file").caps.read_only);
    }

    #[test]
    fn hostile_names_are_shown_short_and_escaped() {
        assert_eq!(shown(b"a\0b"), "\"a\\0b\"");
        assert_eq!(shown(b"../x"), "\"../x\"");
        let long = shown(&[b'x'; 4096]);
        assert!(long.len() < 100 && long.contains("4096 bytes"), "{long}");
        assert_eq!(shown(b"\xff"), "\"\u{fffd}\"");
    }
}
