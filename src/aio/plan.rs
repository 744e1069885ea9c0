//! How one operation becomes system calls, whichever engine makes them.
//!
//! A `Job` cuts its range into bounded pieces and hands them out a few at a
//! time (`next`), then takes each result back (`complete`): short transfers
//! are reissued for the rest, a fallocate mode the filesystem lacks is
//! remembered and the piece redone the next way, and the closing calls go
//! out once everything before them has completed, one at a time: the FUA or
//! FLUSH fdatasync, then, for a file served with cache=none, a write's
//! writeback and the eviction of what was read or written. No I/O here.

use std::io;
use std::ops::Range;

use super::{Op, Tag};

/// The error for FAST_ZERO when the filesystem cannot zero a range without
/// writing it (nbd_errno maps it to ENOTSUP, as the spec asks).
fn not_fast() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "zeroing would not be faster than writing",
    )
}

/// Piece sizes and how many pieces of one operation may be in flight.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Largest single read or write.
    pub rw: usize,
    /// Largest single fallocate that only changes metadata (punch a hole,
    /// ZERO_RANGE where the filesystem does it in place).
    pub falloc: u64,
    /// Largest single allocating fallocate, and the punch before it: it
    /// clears every page, work that grows with its length as a write's does
    /// (a read the kernel hands to the same io_uring worker waits for it).
    pub alloc: u64,
    /// Largest single write of zeroes (at most `ZEROES_LEN`).
    pub zero: usize,
    /// Largest single readahead hint.
    pub cache: u64,
    /// Largest single writeback waited for (cache=none): on the loop's
    /// thread, the disk's time for it is every client's wait.
    pub write_back: u64,
    /// Pieces of one operation in flight at once.
    pub per_op: usize,
}

/// What the filesystem showed it cannot do (EOPNOTSUPP or ENOSYS once): not
/// asked again, as the synchronous backend does.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Lacks {
    pub punch: bool,
    pub zero_range: bool,
    /// fallocate mode 0 (allocate).
    pub alloc: bool,
}

const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
const ZERO_RANGE: i32 = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
const ALLOC: i32 = libc::FALLOC_FL_KEEP_SIZE;

/// Transient errors after which a piece is simply reissued, at most this often per job.
const MAX_RETRIES: u32 = 64;

/// One system call for an engine to make. Ranges index the job's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Call {
    Read {
        at: u64,
        range: Range<usize>,
    },
    Write {
        at: u64,
        range: Range<usize>,
    },
    /// Write `len` bytes of the shared zero buffer.
    WriteZeroes {
        at: u64,
        len: usize,
    },
    Datasync,
    Fallocate {
        mode: i32,
        at: u64,
        len: u64,
    },
    WillNeed {
        at: u64,
        len: u64,
    },
    /// Writes the range back and waits for it (sync_file_range with
    /// WAIT_BEFORE, WRITE and WAIT_AFTER): pages being written back cannot
    /// be dropped from the page cache.
    WriteBack {
        at: u64,
        len: u64,
    },
    /// Drops the range from the page cache (POSIX_FADV_DONTNEED).
    Evict {
        at: u64,
        len: u64,
    },
}

/// How a piece is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum How {
    Data,
    Punch,
    ZeroRange,
    /// NO_HOLE without ZERO_RANGE: punch, then `Alloc` the same range.
    PunchThenAlloc,
    Alloc,
    WriteZeroes,
    Advise,
    Sync,
    /// cache=none: a write's range written back, then...
    WriteBack,
    /// ...dropped from the page cache (a read's too).
    Evict,
}

impl How {
    /// One of the calls after the range (`Job::closing`).
    fn closes(self) -> bool {
        matches!(self, How::Sync | How::WriteBack | How::Evict)
    }
}

/// A piece in flight, given back to `complete` with its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Piece {
    /// Offset relative to the operation's start.
    rel: u64,
    len: u64,
    how: How,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write {
        fua: bool,
    },
    Flush,
    Trim {
        fua: bool,
    },
    Zero {
        may_trim: bool,
        fast: bool,
        fua: bool,
    },
    Cache,
}

/// A range still to do; `how` None: choose when issued.
#[derive(Debug, Clone, Copy)]
struct Todo {
    rel: u64,
    len: u64,
    how: Option<How>,
}

pub(super) struct Job {
    pub tag: Tag,
    kind: Kind,
    start: u64,
    len: u64,
    /// Cursor: `[0, next)` has been handed out once.
    next: u64,
    /// Pieces to (re)do before the cursor moves on.
    redo: Vec<Todo>,
    flying: usize,
    error: Option<io::Error>,
    /// cache=none: what it read or wrote leaves the page cache after.
    evict: bool,
    /// Closing calls completed (`closing`), and whether the next is out.
    closed: usize,
    /// How far the closing writeback has gone (it may go in pieces).
    written_back: u64,
    closing_sent: bool,
    /// Some hole was punched (a TRIM with FUA then needs its sync).
    punched: bool,
    retries: u32,
}

impl Job {
    /// A job for `op`, and the buffer it reads into or writes from (empty
    /// for others); with `evict` (cache=none), what it reads or writes is
    /// dropped from the page cache before it is done.
    pub fn new(op: Op, tag: Tag, evict: bool) -> (Job, Vec<u8>) {
        let (kind, start, len, buf) = match op {
            Op::Read { offset, buf } => (Kind::Read, offset, buf.len() as u64, buf),
            Op::Write { offset, buf, fua } => (Kind::Write { fua }, offset, buf.len() as u64, buf),
            Op::Flush => (Kind::Flush, 0, 0, Vec::new()),
            Op::Trim { offset, len, fua } => (Kind::Trim { fua }, offset, len, Vec::new()),
            Op::Zero {
                offset,
                len,
                may_trim,
                fast,
                fua,
            } => {
                let kind = Kind::Zero {
                    may_trim,
                    fast,
                    fua,
                };
                (kind, offset, len, Vec::new())
            }
            Op::Cache { offset, len } => (Kind::Cache, offset, len, Vec::new()),
        };
        let job = Job {
            tag,
            kind,
            start,
            len,
            next: 0,
            redo: Vec::new(),
            flying: 0,
            error: None,
            evict,
            closed: 0,
            written_back: 0,
            closing_sent: false,
            punched: false,
            retries: 0,
        };
        (job, buf)
    }

    /// Nothing in flight and nothing left to hand out: `result` may be taken.
    pub fn finished(&self) -> bool {
        self.flying == 0
            && (self.error.is_some() || (self.main_done() && self.next_closing().is_none()))
    }

    /// The outcome, once `finished`.
    pub fn result(&mut self) -> io::Result<()> {
        self.error.take().map_or(Ok(()), Err)
    }

    fn main_done(&self) -> bool {
        self.next >= self.len && self.redo.is_empty()
    }

    /// The calls made after the range, in order: the FUA or FLUSH
    /// fdatasync; with cache=none, a write's writeback (waited for, in
    /// pieces of `Limits::write_back`), and the eviction of what was read or
    /// written.
    fn closing(&self) -> [Option<How>; 3] {
        let evict = self.evict && matches!(self.kind, Kind::Read | Kind::Write { .. });
        let written = evict && matches!(self.kind, Kind::Write { .. });
        [
            self.needs_sync().then_some(How::Sync),
            written.then_some(How::WriteBack),
            evict.then_some(How::Evict),
        ]
    }

    /// The closing call owed next, if any.
    fn next_closing(&self) -> Option<How> {
        self.closing().into_iter().flatten().nth(self.closed)
    }

    /// Whether a closing fdatasync is owed.
    fn needs_sync(&self) -> bool {
        match self.kind {
            Kind::Flush => true,
            // A FUA write is its writes, then fdatasync: measured 2-5x the
            // rate of RWF_DSYNC writes at depth 16 (io_uring runs buffered
            // writes to one file one at a time, so each DSYNC write waits for
            // its own journal commit; separate fdatasyncs share commits).
            Kind::Write { fua } => fua,
            Kind::Trim { fua } => fua && self.punched,
            Kind::Zero { fua, .. } => fua,
            Kind::Read | Kind::Cache => false,
        }
    }

    /// The next piece to issue, if one may go now.
    pub fn next(&mut self, lacks: &Lacks, lim: &Limits) -> Option<(Piece, Call)> {
        if self.error.is_some() || self.flying >= lim.per_op {
            return None;
        }
        if let Kind::Trim { .. } = self.kind
            && lacks.punch
        {
            // A hint the filesystem cannot take: done, nothing to sync.
            self.next = self.len;
            self.redo.clear();
        }
        let piece = if self.main_done() {
            if self.flying > 0 || self.closing_sent {
                return None;
            }
            let how = self.next_closing()?;
            self.closing_sent = true;
            match how {
                How::WriteBack => Piece {
                    rel: self.written_back,
                    len: (self.len - self.written_back).min(lim.write_back),
                    how,
                },
                _ => Piece {
                    rel: 0,
                    len: self.len,
                    how,
                },
            }
        } else {
            let (todo, fresh) = match self.redo.pop() {
                Some(t) => (t, false),
                None => {
                    let rest = self.len - self.next;
                    let t = Todo {
                        rel: self.next,
                        len: rest,
                        how: None,
                    };
                    (t, true)
                }
            };
            let how = match todo.how {
                Some(h) => h,
                None => match self.choose(lacks) {
                    Some(h) => h,
                    None => {
                        self.error = Some(not_fast());
                        return None;
                    }
                },
            };
            let n = todo.len.min(self.piece_size(how, lim));
            if fresh {
                self.next += n;
            } else if n < todo.len {
                self.redo.push(Todo {
                    rel: todo.rel + n,
                    len: todo.len - n,
                    how: todo.how,
                });
            }
            Piece {
                rel: todo.rel,
                len: n,
                how,
            }
        };
        self.flying += 1;
        Some((piece, self.call(piece)))
    }

    /// How a fresh range is done, given what the filesystem lacks. None: only
    /// writing zeroes is left and the client asked for FAST_ZERO.
    fn choose(&self, lacks: &Lacks) -> Option<How> {
        match self.kind {
            Kind::Read | Kind::Write { .. } => Some(How::Data),
            Kind::Trim { .. } => Some(How::Punch),
            Kind::Cache => Some(How::Advise),
            Kind::Flush => Some(How::Sync),
            Kind::Zero { may_trim, fast, .. } => {
                if may_trim && !lacks.punch {
                    Some(How::Punch)
                } else if !lacks.zero_range {
                    Some(How::ZeroRange)
                } else if fast {
                    // Punching then allocating frees and clears every page:
                    // on tmpfs no faster than writing zeroes over data.
                    None
                } else if !lacks.punch && !lacks.alloc {
                    Some(How::PunchThenAlloc)
                } else {
                    Some(How::WriteZeroes)
                }
            }
        }
    }

    fn piece_size(&self, how: How, lim: &Limits) -> u64 {
        match how {
            How::Data => lim.rw as u64,
            How::WriteZeroes => lim.zero as u64,
            How::Advise => lim.cache,
            How::Punch | How::ZeroRange => lim.falloc,
            How::PunchThenAlloc | How::Alloc => lim.alloc,
            How::Sync | How::WriteBack | How::Evict => 0,
        }
    }

    fn call(&self, p: Piece) -> Call {
        let at = self.start + p.rel;
        let range = p.rel as usize..(p.rel + p.len) as usize;
        match p.how {
            How::Data if self.kind == Kind::Read => Call::Read { at, range },
            How::Data => Call::Write { at, range },
            How::Punch | How::PunchThenAlloc => Call::Fallocate {
                mode: PUNCH,
                at,
                len: p.len,
            },
            How::ZeroRange => Call::Fallocate {
                mode: ZERO_RANGE,
                at,
                len: p.len,
            },
            How::Alloc => Call::Fallocate {
                mode: ALLOC,
                at,
                len: p.len,
            },
            How::WriteZeroes => Call::WriteZeroes {
                at,
                len: p.len as usize,
            },
            How::Advise => Call::WillNeed { at, len: p.len },
            How::Sync => Call::Datasync,
            How::WriteBack => Call::WriteBack { at, len: p.len },
            How::Evict => Call::Evict { at, len: p.len },
        }
    }

    /// Takes back a piece's result: bytes transferred, or the error.
    pub fn complete(&mut self, p: Piece, res: io::Result<u64>, lacks: &mut Lacks) {
        self.flying -= 1;
        match res {
            Ok(n) => self.completed(p, n),
            // Keeping the page cache clear is a hint, as the hints are to
            // the kernel: a failure changes nothing of the data.
            Err(_) if matches!(p.how, How::WriteBack | How::Evict) => self.completed(p, 0),
            Err(e) if is_unsupported(&e) && p.how != How::Sync => self.unsupported(p, e, lacks),
            Err(e) if is_transient(&e) && self.retries < MAX_RETRIES => {
                self.retries += 1;
                self.reissue(p);
            }
            Err(e) => self.fail(e),
        }
    }

    fn completed(&mut self, p: Piece, n: u64) {
        match p.how {
            How::Data | How::WriteZeroes if n == 0 && p.len > 0 => {
                self.fail(if self.kind == Kind::Read {
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "read past the end of the file",
                    )
                } else {
                    io::Error::from(io::ErrorKind::WriteZero)
                })
            }
            How::Data | How::WriteZeroes if n < p.len => self.redo.push(Todo {
                rel: p.rel + n,
                len: p.len - n,
                how: Some(p.how),
            }),
            How::Punch => self.punched = true,
            How::PunchThenAlloc => self.redo.push(Todo {
                how: Some(How::Alloc),
                ..todo(p)
            }),
            How::WriteBack if p.rel + p.len < self.len => {
                self.written_back = p.rel + p.len;
                self.closing_sent = false;
            }
            How::Sync | How::WriteBack | How::Evict => {
                self.closed += 1;
                self.closing_sent = false;
            }
            _ => {}
        }
    }

    /// EOPNOTSUPP from fallocate: remember it; a TRIM is then done (a hint),
    /// anything else redoes the piece the next way.
    fn unsupported(&mut self, p: Piece, e: io::Error, lacks: &mut Lacks) {
        match p.how {
            How::Punch | How::PunchThenAlloc => lacks.punch = true,
            How::ZeroRange => lacks.zero_range = true,
            How::Alloc => lacks.alloc = true,
            _ => return self.fail(e),
        }
        if !matches!(self.kind, Kind::Trim { .. }) {
            self.redo.push(Todo {
                how: None,
                ..todo(p)
            });
        }
    }

    /// Takes back a piece that `next` handed out but could not be issued.
    pub fn give_back(&mut self, p: Piece) {
        self.flying -= 1;
        self.reissue(p);
    }

    fn reissue(&mut self, p: Piece) {
        if p.how.closes() {
            self.closing_sent = false;
        } else {
            self.redo.push(Todo {
                how: Some(p.how),
                ..todo(p)
            });
        }
    }

    fn fail(&mut self, e: io::Error) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }
}

fn todo(p: Piece) -> Todo {
    Todo {
        rel: p.rel,
        len: p.len,
        how: Some(p.how),
    }
}

fn is_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS))
}

fn is_transient(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN))
}

/// A system call's return as the plan wants it: bytes, or the errno.
pub(super) fn from_res(res: i32) -> io::Result<u64> {
    if res < 0 {
        Err(io::Error::from_raw_os_error(-res))
    } else {
        Ok(res as u64)
    }
}
