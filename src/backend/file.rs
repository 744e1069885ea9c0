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
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::rc::Rc;

use super::{Access, Backend, Caps, Extent};
use crate::aio::Engine;
use crate::proto::{STATE_HOLE, STATE_ZERO};
use crate::sys;

/// nbdkit's `fadvise=`: how the file will be read, told to the kernel.
pub use crate::sys::Advice as Fadvise;

/// nbdkit's `cache=`: whether the page cache keeps what clients read and
/// write (`None`: what was read or written is dropped from it after).
pub use crate::aio::CacheMode;

/// What `file` takes besides what it serves, for one file or for each
/// file of a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileOptions {
    pub fadvise: Fadvise,
    pub cache: CacheMode,
}

impl Default for FileOptions {
    fn default() -> FileOptions {
        FileOptions {
            fadvise: Fadvise::Normal,
            cache: CacheMode::Default,
        }
    }
}

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
    pub fn open(
        path: &Path,
        read_only: bool,
        sync_io: bool,
        options: FileOptions,
    ) -> io::Result<File> {
        let image = Image::open(path, read_only, options)?;
        if let Some(e) = &image.not_writable {
            log::warn!("{}: {e}: serving read-only", path.display());
        }
        let file = Rc::new(image.file);
        Ok(File {
            engine: Engine::with_cache(file.clone(), sync_io, options.cache),
            file,
            size: image.size,
            read_only: image.read_only,
            block_device: image.block_device,
            min_block: image.min_block,
        })
    }
}

/// A regular file or block device, open for serving: `file`'s one, or one
/// of a directory's (`dir=`).
pub(super) struct Image {
    pub file: fs::File,
    pub size: u64,
    pub read_only: bool,
    pub block_device: bool,
    /// A block device's logical sector size, else 1.
    pub min_block: u32,
    /// Which file it is (device, inode): two names of one file are one image.
    pub id: (u64, u64),
    /// Why it could not be opened for writing, where it was opened read-only
    /// though read-write was asked for.
    pub not_writable: Option<io::Error>,
}

impl Image {
    /// Opens `path` (following symbolic links) read-write unless
    /// `read_only`, falling back to read-only when it may not be written.
    /// Anything but a regular file or a block device is refused before it
    /// is opened (opening a FIFO waits for a writer; a character device may
    /// act on being opened); one swapped in between is opened without
    /// waiting (O_NONBLOCK, cleared after) and refused.
    pub fn open(path: &Path, read_only: bool, options: FileOptions) -> io::Result<Image> {
        let before = fs::metadata(path)?;
        servable(before.file_type())?;
        let (file, not_writable) = open_for(path, read_only)?;
        let meta = file.metadata()?;
        let id = (meta.dev(), meta.ino());
        if id != (before.dev(), before.ino()) {
            return Err(io::Error::other("replaced while being opened"));
        }
        servable(meta.file_type())?;
        sys::clear_nonblocking(file.as_fd())?;
        let block_device = meta.file_type().is_block_device();
        let size = (&file).seek(SeekFrom::End(0))?;
        let min_block = if block_device {
            sys::logical_sector_size(file.as_fd()).unwrap_or(512)
        } else {
            1
        };
        if options.fadvise != Fadvise::Normal
            && let Err(e) = sys::advise(file.as_fd(), options.fadvise)
        {
            log::debug!("{}: fadvise: {e} (a hint: ignored)", path.display());
        }
        Ok(Image {
            file,
            size,
            read_only: read_only || not_writable.is_some(),
            block_device,
            min_block,
            id,
            not_writable,
        })
    }
}

/// A regular file or a block device may be served; a directory is EISDIR
/// (what opening one for writing says).
fn servable(kind: fs::FileType) -> io::Result<()> {
    if kind.is_dir() {
        return Err(io::Error::from_raw_os_error(libc::EISDIR));
    }
    if kind.is_file() || kind.is_block_device() {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        "not a regular file or block device",
    ))
}

/// Opens `path` without waiting, read-write unless `read_only` or it may not
/// be written; with why not, when it fell back to reading.
fn open_for(path: &Path, read_only: bool) -> io::Result<(fs::File, Option<io::Error>)> {
    let open = |write: bool| {
        OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
    };
    if read_only {
        return Ok((open(false)?, None));
    }
    match open(true) {
        Ok(f) => Ok((f, None)),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EACCES | libc::EPERM | libc::EROFS)
            ) =>
        {
            Ok((open(false)?, Some(e)))
        }
        Err(e) => Err(e),
    }
}

/// What block status needs of a file: the file, whether it is a block
/// device (all data), and its size as served.
pub(super) struct Layout<'a> {
    pub file: &'a fs::File,
    pub block_device: bool,
    pub size: u64,
}

impl Layout<'_> {
    /// Block status (SEEK_DATA / SEEK_HOLE): at most `max` extents from
    /// `offset`, covering at least one byte.
    pub fn extents(
        &self,
        offset: u64,
        len: u64,
        max: usize,
        out: &mut Vec<Extent>,
    ) -> io::Result<()> {
        let (fd, size) = (self.file.as_fd(), self.size);
        let end = offset.saturating_add(len).min(size);
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
            let data = sys::seek_data(fd, pos)?.unwrap_or(size).min(size);
            let (run_end, flags) = if data > pos {
                (data, STATE_HOLE | STATE_ZERO)
            } else {
                let hole = sys::seek_hole(fd, pos)?.unwrap_or(size).min(size);
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
        let layout = Layout {
            file: &self.file,
            block_device: self.block_device,
            size: self.size,
        };
        layout.extents(offset, len, max, out)
    }
}
