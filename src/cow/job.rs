//! One client request in the cow engine, from its submission to its `Done`,
//! and the operations it hands to the engines below (`Sub`), each of which
//! comes back as a `Part` that says what to do with its result.

use std::collections::VecDeque;
use std::io;
use std::ops::Range;

use crate::aio::{Op, Tag};

/// A request, as the cow engine sees it. TRIM is a `Zero` that may leave a
/// hole (nbdkit's cow filter: trimmed blocks read as zeroes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Read {
        offset: u64,
        len: u64,
    },
    Write {
        offset: u64,
        len: u64,
        fua: bool,
    },
    Zero {
        offset: u64,
        len: u64,
        hole: bool,
        fast: bool,
        fua: bool,
    },
    Flush,
    Cache {
        offset: u64,
        len: u64,
    },
}

impl Kind {
    /// The request of `op`, and its buffer (empty but for reads and writes).
    pub fn of(op: Op) -> (Kind, Vec<u8>) {
        match op {
            Op::Read { offset, buf } => {
                let len = buf.len() as u64;
                (Kind::Read { offset, len }, buf)
            }
            Op::Write { offset, buf, fua } => {
                let len = buf.len() as u64;
                (Kind::Write { offset, len, fua }, buf)
            }
            Op::Trim { offset, len, fua } => {
                let (hole, fast) = (true, false);
                let k = Kind::Zero {
                    offset,
                    len,
                    hole,
                    fast,
                    fua,
                };
                (k, Vec::new())
            }
            Op::Zero {
                offset,
                len,
                may_trim,
                fast,
                fua,
            } => {
                let hole = may_trim;
                let k = Kind::Zero {
                    offset,
                    len,
                    hole,
                    fast,
                    fua,
                };
                (k, Vec::new())
            }
            Op::Flush => (Kind::Flush, Vec::new()),
            Op::Cache { offset, len } => (Kind::Cache { offset, len }, Vec::new()),
        }
    }

    /// It changes blocks (and so needs its view, and holds its blocks).
    pub fn changes(&self) -> bool {
        matches!(self, Kind::Write { .. } | Kind::Zero { .. })
    }

    /// The bytes it acts on (none for FLUSH).
    pub fn range(&self) -> Option<(u64, u64)> {
        match *self {
            Kind::Read { offset, len }
            | Kind::Write { offset, len, .. }
            | Kind::Zero { offset, len, .. }
            | Kind::Cache { offset, len } => Some((offset, len)),
            Kind::Flush => None,
        }
    }

    pub fn fua(&self) -> bool {
        matches!(
            self,
            Kind::Write { fua: true, .. } | Kind::Zero { fua: true, .. }
        )
    }
}

/// Where a job stands. Each stage hands out its operations and is over
/// when they are all back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// To hold its blocks, if it must.
    Start,
    /// Its blocks held (or none needed): to fill from below what it needs.
    Held,
    /// Filling: blocks copied up from below, or zeroed, into the overlay.
    Fill,
    /// Its own reads, writes or zeroing.
    Main,
    /// The fdatasync that FUA asks for.
    Sync,
}

/// What to do with a sub-operation's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// The job's own buffer went down whole, and comes back with the result.
    Whole,
    /// Read into a buffer of its own, copied into the job's at `at`.
    Piece { at: usize },
    /// Blocks read from below, to be written into their slots.
    FillRead { blocks: Range<u64> },
    /// A write of whole slots (or into slots already holding their blocks):
    /// the blocks hold data in the overlay once it is done. `whole`: from the
    /// job's own buffer, which comes back with the result.
    Mark { blocks: Range<u64>, whole: bool },
    /// Nothing to do after (a sync, a cache hint, zeroing inside a slot).
    Plain,
    /// The slots of a view that is gone, punched: they may be handed out again.
    Release(Range<u32>),
    /// A client's read passed below as it is (no job): its tag.
    Direct { tag: Tag },
}

/// An operation for the layer below (`below`) or the overlay file.
#[derive(Debug)]
pub struct Sub {
    pub below: bool,
    pub op: Op,
    pub part: Part,
    /// Bytes of its buffer that are the engine's own (not the client's).
    pub scratch: usize,
}

impl Sub {
    pub fn overlay(op: Op, part: Part, scratch: usize) -> Sub {
        Sub {
            below: false,
            op,
            part,
            scratch,
        }
    }

    pub fn below(op: Op, part: Part, scratch: usize) -> Sub {
        Sub {
            below: true,
            op,
            part,
            scratch,
        }
    }
}

pub struct Job {
    /// The client request's tag, handed back in its `Done`.
    pub tag: Tag,
    pub conn: u64,
    /// Whose overlay it acts on.
    pub view: u64,
    /// Counted in its view's jobs (a read of a view not yet made is not).
    pub counted: bool,
    pub kind: Kind,
    pub buf: Vec<u8>,
    pub stage: Stage,
    /// The key of the blocks it holds.
    pub lock: Option<usize>,
    /// Operations of this stage not yet handed out (no room below yet).
    pub todo: VecDeque<Sub>,
    /// Operations handed out and not yet back.
    pub flying: usize,
    /// Waiting for room in an engine below (in the stalled list).
    pub stalled: bool,
    /// A read or cache request that copies blocks up from below
    /// (`cow-on-read`, `cow-on-cache`), and the next block it copies.
    pub copies: bool,
    pub cursor: u64,
    pub error: Option<io::Error>,
    /// Overlay data was written or zeroed: FUA then needs its sync.
    pub wrote: bool,
}

impl Job {
    pub fn new(tag: Tag, conn: u64, view: u64, op: Op) -> Job {
        let (kind, buf) = Kind::of(op);
        Job {
            tag,
            conn,
            view,
            counted: false,
            kind,
            buf,
            stage: Stage::Start,
            lock: None,
            todo: VecDeque::new(),
            flying: 0,
            stalled: false,
            copies: false,
            cursor: 0,
            error: None,
            wrote: false,
        }
    }

    /// The first error is the job's; nothing more is handed out. Returns the
    /// scratch bytes of the operations dropped.
    pub fn fail(&mut self, e: io::Error) -> usize {
        if self.error.is_none() {
            self.error = Some(e);
        }
        let mut freed = 0;
        for sub in self.todo.drain(..) {
            freed += sub.scratch;
            let whole = matches!(sub.part, Part::Whole | Part::Mark { whole: true, .. });
            if whole && let Op::Read { buf, .. } | Op::Write { buf, .. } = sub.op {
                self.buf = buf; // the client's buffer, back for its Done
            }
        }
        freed
    }
}

/// An errno as an I/O error.
pub fn errno(n: i32) -> io::Error {
    io::Error::from_raw_os_error(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_of_operations() {
        let (k, buf) = Kind::of(Op::Trim {
            offset: 5,
            len: 10,
            fua: true,
        });
        assert!(buf.is_empty());
        assert!(k.changes() && k.fua());
        assert_eq!(k.range(), Some((5, 10)));
        let (k, buf) = Kind::of(Op::Read {
            offset: 1,
            buf: vec![0; 3],
        });
        assert_eq!((k, buf.len()), (Kind::Read { offset: 1, len: 3 }, 3));
        assert!(!k.changes());
        assert_eq!(Kind::of(Op::Flush).0.range(), None);
    }

    #[test]
    fn a_failed_job_gets_its_buffer_back() {
        let mut j = Job::new(
            1,
            1,
            0,
            Op::Write {
                offset: 0,
                buf: vec![7; 4],
                fua: false,
            },
        );
        let buf = std::mem::take(&mut j.buf);
        let op = Op::Write {
            offset: 0,
            buf,
            fua: false,
        };
        j.todo.push_back(Sub::overlay(op, Part::Whole, 0));
        j.todo.push_back(Sub::overlay(Op::Flush, Part::Plain, 9));
        assert_eq!(j.fail(errno(libc::EIO)), 9);
        assert_eq!(j.buf, vec![7; 4]);
        assert!(j.todo.is_empty());
    }
}
