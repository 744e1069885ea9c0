//! `file`: a regular file or a block device.
//!
//! Its data goes through the asynchronous engine (`crate::aio`): reads, writes,
//! FLUSH (fdatasync), FUA (durable before the reply), TRIM (punched holes),
//! WRITE_ZEROES (fallocate where the filesystem can) and CACHE (readahead) are
//! submitted without blocking and completed on the event loop. Block status asks
//! the filesystem where the holes are (SEEK_DATA / SEEK_HOLE), at once.

use std::fs::{self, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::Path;
use std::rc::Rc;

use super::{Access, Backend, Caps, Extent};
use crate::aio::Engine;
use crate::proto::{STATE_HOLE, STATE_ZERO};
use crate::sys;

pub struct File {
    /// Shared with the engine, whose in-flight operations keep it open.
    file: Rc<fs::File>,
    engine: Engine,
    size: u64,
    read_only: bool,
    block_device: bool,
    min_block: u32,
}

impl File {
    /// Opens `path` read-write unless `read_only`; falls back to read-only when
    /// the file may not be written (permissions, read-only filesystem). Its I/O
    /// goes through io_uring unless that is missing or `sync_io` asks otherwise.
    pub fn open(path: &Path, read_only: bool, sync_io: bool) -> io::Result<File> {
        let (mut file, read_only) = if read_only {
            (OpenOptions::new().read(true).open(path)?, true)
        } else {
            match OpenOptions::new().read(true).write(true).open(path) {
                Ok(f) => (f, false),
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EACCES | libc::EPERM | libc::EROFS)
                    ) =>
                {
                    log::warn!("{}: {e}: serving read-only", path.display());
                    (OpenOptions::new().read(true).open(path)?, true)
                }
                Err(e) => return Err(e),
            }
        };
        let kind = file.metadata()?.file_type();
        if kind.is_dir() {
            // What opening one for writing says; -r opens it for reading.
            return Err(io::Error::from_raw_os_error(libc::EISDIR));
        }
        let block_device = kind.is_block_device();
        if !block_device && !kind.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file or block device",
            ));
        }
        let size = file.seek(SeekFrom::End(0))?;
        let min_block = if block_device {
            sys::logical_sector_size(file.as_fd()).unwrap_or(512)
        } else {
            1
        };
        let file = Rc::new(file);
        Ok(File {
            engine: Engine::new(file.clone(), sync_io),
            file,
            size,
            read_only,
            block_device,
            min_block,
        })
    }
}

impl Backend for File {
    fn size(&self) -> u64 {
        self.size
    }

    fn caps(&self) -> Caps {
        Caps {
            read_only: self.read_only,
            zero: true,
            fast_zero: true,
            extents: true,
            sparse_reads: false,
            min_block: self.min_block,
            multi_conn: true,
        }
    }

    fn access(&mut self) -> Access<'_> {
        Access::Engine(&mut self.engine)
    }

    /// Straight from the file (start-up only: this may wait on the disk).
    fn read_at_start(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn extents(
        &mut self,
        offset: u64,
        len: u64,
        max: usize,
        out: &mut Vec<Extent>,
    ) -> io::Result<()> {
        let fd = self.file.as_fd();
        let end = offset.saturating_add(len).min(self.size);
        if self.block_device {
            out.push(Extent {
                len: end.max(offset + 1) - offset,
                flags: 0,
            });
            return Ok(());
        }
        let mut pos = offset;
        let mut count = 0;
        while pos < end.max(offset + 1) && count < max {
            // Where does data next start? None: only a hole is left.
            let data = sys::seek_data(fd, pos)?.unwrap_or(self.size).min(self.size);
            let (run_end, flags) = if data > pos {
                (data, STATE_HOLE | STATE_ZERO)
            } else {
                let hole = sys::seek_hole(fd, pos)?.unwrap_or(self.size).min(self.size);
                (hole.max(pos + 1), 0)
            };
            out.push(Extent {
                len: run_end - pos,
                flags,
            });
            count += 1;
            pos = run_end;
        }
        Ok(())
    }
}
