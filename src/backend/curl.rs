//! `curl`: an object on a web server, read-only. Its size is found at
//! start-up (`crate::curl::probe`), and reads go through the pool of HTTP
//! connections, an asynchronous engine like a file's (`Access::Engine`).

use std::io;

use super::{Access, Backend, Caps, Extent};
use crate::aio::Engine;
use crate::curl::{CurlSpec, Options, Pool, probe};

pub struct Curl {
    size: u64,
    engine: Engine,
}

impl Curl {
    /// Reads the parameters' secrets, asks the server for the object's size,
    /// and checks that it honours `Range`. May block (start-up only), at
    /// most the request timeout per request. The error is one line.
    pub fn open(spec: &CurlSpec) -> Result<Curl, String> {
        let options = Options::new(spec)?;
        let found = probe::probe(&options)?;
        log::debug!("curl: {} is {} bytes", found.settings.url, found.size);
        Ok(Curl {
            size: found.size,
            engine: Engine::remote(Box::new(Pool::new(found.settings, found.size))),
        })
    }
}

impl Backend for Curl {
    fn size(&self) -> u64 {
        self.size
    }

    fn caps(&self) -> Caps {
        Caps {
            read_only: true,
            zero: true,
            fast_zero: false,
            extents: true,
            sparse_reads: false,
            min_block: 1,
            multi_conn: true,
        }
    }

    fn access(&mut self) -> Access<'_> {
        Access::Engine(&mut self.engine)
    }

    /// All data: HTTP says nothing of holes.
    fn extents(
        &mut self,
        offset: u64,
        len: u64,
        _max: usize,
        out: &mut Vec<Extent>,
    ) -> io::Result<()> {
        let end = offset.saturating_add(len).min(self.size);
        out.push(Extent {
            len: end.max(offset + 1) - offset,
            flags: 0,
        });
        Ok(())
    }
}
