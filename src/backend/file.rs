//! `file`: a regular file or a block device.
//!
//! FLUSH is fdatasync; FUA syncs before the reply. TRIM punches holes, WRITE_ZEROES
//! uses fallocate where the filesystem can, and block status asks the filesystem
//! where the holes are (SEEK_DATA / SEEK_HOLE).

use std::fs::{self, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::Path;

use super::{Backend, Caps, Extent, Zero, not_fast};
use crate::proto::{STATE_HOLE, STATE_ZERO};
use crate::sys;

pub struct File {
    file: fs::File,
    size: u64,
    read_only: bool,
    block_device: bool,
    min_block: u32,
    /// fallocate modes that failed with EOPNOTSUPP once: don't ask again.
    no_punch: bool,
    no_zero_range: bool,
}

impl File {
    /// Opens `path` read-write unless `read_only`; falls back to read-only when
    /// the file may not be written (permissions, read-only filesystem).
    pub fn open(path: &Path, read_only: bool) -> io::Result<File> {
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
        Ok(File {
            file,
            size,
            read_only,
            block_device,
            min_block,
            no_punch: false,
            no_zero_range: false,
        })
    }

    fn sync_if(&self, fua: bool) -> io::Result<()> {
        if fua { self.file.sync_data() } else { Ok(()) }
    }

    /// Tries one fallocate mode; `Ok(false)` when the filesystem does not have it.
    fn try_fallocate(&mut self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<bool> {
        let unsupported = if mode & libc::FALLOC_FL_PUNCH_HOLE != 0 {
            &mut self.no_punch
        } else {
            &mut self.no_zero_range
        };
        if *unsupported {
            return Ok(false);
        }
        match sys::fallocate(self.file.as_fd(), mode, offset, len) {
            Ok(()) => Ok(true),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS)) => {
                *unsupported = true;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let zeroes = vec![0u8; len.min(1 << 20) as usize];
        let mut pos = offset;
        while pos < offset + len {
            let n = (offset + len - pos).min(zeroes.len() as u64) as usize;
            self.file.write_all_at(&zeroes[..n], pos)?;
            pos += n as u64;
        }
        Ok(())
    }
}

const PUNCH: libc::c_int = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
const ZERO_RANGE: libc::c_int = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;

impl Backend for File {
    fn size(&self) -> u64 {
        self.size
    }

    fn caps(&self) -> Caps {
        Caps {
            read_only: self.read_only,
            fast_zero: true,
            sparse_reads: false,
            min_block: self.min_block,
        }
    }

    fn read(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write(&mut self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        self.file.write_all_at(buf, offset)?;
        self.sync_if(fua)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn trim(&mut self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        // A hint: a filesystem without hole punching simply keeps the data.
        if self.try_fallocate(PUNCH, offset, len)? {
            self.sync_if(fua)?;
        }
        Ok(())
    }

    fn zero(&mut self, offset: u64, len: u64, how: Zero, fua: bool) -> io::Result<()> {
        let done = (how.may_trim && self.try_fallocate(PUNCH, offset, len)?)
            || self.try_fallocate(ZERO_RANGE, offset, len)?;
        if !done {
            if how.fast {
                return Err(not_fast());
            }
            self.write_zeroes(offset, len)?;
        }
        self.sync_if(fua)
    }

    fn cache(&mut self, offset: u64, len: u64) -> io::Result<()> {
        sys::fadvise_willneed(self.file.as_fd(), offset, len)
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
