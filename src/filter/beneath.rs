//! Stages named below a layer (`--filter=cow --filter=delay`: in nbdkit the
//! delay sits below the overlay, on what it reads from the backend). They
//! run on the requests the layer makes of the backend as they would on a
//! client's: moved, cut short, held on a timer of the loop, failed. At
//! start-up they are prepared and shape what the layer sees, from the
//! backend up, as the stack does for the export (`Staged::new`). `Staged`
//! takes the backend's place under the layer; the stages stay in the stack
//! as well, as `Proxy`s that let every request pass and hand on the rest:
//! clients connecting and opening (`connect`, `may_open`), connections
//! opening and closing, reports, their own wakes, a wish to exit.
//!
//! Block status asked of the backend goes through the stages too, at once:
//! a stage that would hold it cannot (it is answered on the spot), one that
//! fails it fails it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::rc::Rc;
use std::time::Instant;

use mio::{Registry, Token};

use super::due::Due;
use super::{Call, Conn, Filter, StartupRead, Verdict};
use crate::aio::{Done, Engine, Op, Remote, Tag};
use crate::backend::{Access, Backend, Below, Caps, Extent, nbd_errno};
use crate::buf::all_zero;
use crate::export::Export;
use crate::proto::*;

/// Stages, first nearest the client, shared by the backend that runs them
/// and the stack's proxies. The loop calls one of them at a time, and none
/// calls another while it holds them: never borrowed twice.
pub type Shared = Rc<RefCell<Vec<Box<dyn Filter>>>>;

/// A stage below a layer, as the stack sees it.
pub struct Proxy {
    stages: Shared,
    i: usize,
    name: &'static str,
}

impl Proxy {
    /// A proxy for each of `stages`.
    pub fn all(stages: &Shared) -> Vec<Box<dyn Filter>> {
        let names: Vec<&'static str> = stages.borrow().iter().map(|f| f.name()).collect();
        names
            .into_iter()
            .enumerate()
            .map(|(i, name)| {
                let stages = stages.clone();
                Box::new(Proxy { stages, i, name }) as Box<dyn Filter>
            })
            .collect()
    }
}

impl Proxy {
    /// Its stage. `i` indexes `stages`, which `all` made it from and which
    /// never changes length after: always in bounds.
    fn stage(&self) -> std::cell::RefMut<'_, Box<dyn Filter>> {
        // As `Shared`: never borrowed twice.
        std::cell::RefMut::map(self.stages.borrow_mut(), |s| &mut s[self.i])
    }
}

/// Everything but requests (which the stage sees below the layer) and
/// start-up (`Staged::new` prepares and shapes it there).
impl Filter for Proxy {
    fn name(&self) -> &'static str {
        self.name
    }

    fn connect(&mut self, now: Instant) -> bool {
        self.stage().connect(now)
    }

    fn may_open(&self) -> bool {
        self.stage().may_open()
    }

    fn open(&mut self, c: Conn, now: Instant) -> Option<Instant> {
        self.stage().open(c, now)
    }

    fn close_delay(&mut self, c: Conn, now: Instant) -> Option<Instant> {
        self.stage().close_delay(c, now)
    }

    fn closed(&mut self, c: Conn, now: Instant) {
        self.stage().closed(c, now)
    }

    fn report(&mut self, now: Instant) {
        self.stage().report(now)
    }

    fn wake_at(&self) -> Option<Instant> {
        self.stage().wake_at()
    }

    fn wake(&mut self, now: Instant) {
        self.stage().wake(now)
    }

    fn wants_exit(&self) -> bool {
        self.stage().wants_exit()
    }
}

/// The backend with stages over it.
pub struct Staged {
    core: Rc<RefCell<Core>>,
    engine: Engine,
    size: u64,
    caps: Caps,
}

impl Staged {
    /// `backend` under `stages`, which are prepared (reading through the
    /// stages below each and the backend) and shape what it serves, from
    /// the backend up, as the stack does for the export. Err: a stage
    /// cannot start (one line, with its name).
    pub fn new(stages: Shared, mut backend: Box<dyn Backend>) -> Result<Staged, String> {
        let mut shape = Export::new(backend.size(), backend.caps());
        super::prepare(&mut stages.borrow_mut(), backend.as_mut(), &mut shape)?;
        let core = Rc::new(RefCell::new(Core {
            stages,
            below: Below::new(backend),
            held: Due::default(),
            sent: HashMap::new(),
            done: Vec::new(),
        }));
        Ok(Staged {
            engine: Engine::remote(Box::new(Io(core.clone()))),
            core,
            size: shape.size,
            caps: shape.caps,
        })
    }
}

impl Backend for Staged {
    fn size(&self) -> u64 {
        self.size
    }

    fn caps(&self) -> Caps {
        self.caps
    }

    fn access(&mut self) -> Access<'_> {
        Access::Engine(&mut self.engine)
    }

    fn extents(&mut self, o: u64, l: u64, max: usize, out: &mut Vec<Extent>) -> io::Result<()> {
        self.extents_for(0, o, l, max, out)
    }

    fn extents_for(
        &mut self,
        conn: u64,
        offset: u64,
        len: u64,
        max: usize,
        out: &mut Vec<Extent>,
    ) -> io::Result<()> {
        // As `Shared`: never borrowed twice.
        self.core.borrow_mut().extents(conn, offset, len, max, out)
    }

    fn closed(&mut self, conn: u64) {
        self.core.borrow_mut().below.backend().closed(conn);
    }

    /// At start-up, through the stages (as a client's read would go,
    /// never held): a filter above the layer that reads then (partition)
    /// sees what the stages make of the backend.
    fn read_at_start(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        // As `Shared`: never borrowed twice.
        let mut core = self.core.borrow_mut();
        let Core { stages, below, .. } = &mut *core;
        let mut read = StartupRead {
            filters: &mut stages.borrow_mut(),
            backend: below.backend(),
        };
        read.read(buf, offset).map_err(io::Error::other)
    }
}

/// An operation a stage holds, and the stage that held it.
struct Held {
    op: Op,
    tag: Tag,
    call: Call,
    stage: usize,
}

/// An operation in the backend.
struct Sent {
    /// What the stages saw of it.
    call: Call,
    /// The length of the READ the layer asked for (0 for anything else):
    /// a read a stage cut short is filled out with zeroes to it on its way back.
    asked: usize,
}

struct Core {
    stages: Shared,
    below: Below,
    held: Due<Held>,
    /// Operations in the backend, by tag.
    sent: HashMap<Tag, Sent>,
    /// Answered by a stage.
    done: Vec<Done>,
}

impl Core {
    /// An operation on its way down from stage `from`.
    fn down(&mut self, op: Op, tag: Tag, mut call: Call, from: usize, now: Instant) {
        let (verdict, stage) = run_stages(&self.stages, &mut call, from, now);
        match verdict {
            Verdict::Pass => self.pass(op, tag, call, stage, now),
            Verdict::Fail(errno) => self.answer(tag, &call, errno, stage, now),
            Verdict::Disconnect(_) => self.answer(tag, &call, EIO, stage, now),
            Verdict::Zeroes => self.zeroes(op, tag, &call, stage, now),
            Verdict::Hold(at) => {
                let held = Held {
                    op,
                    tag,
                    call,
                    stage,
                };
                self.held.hold(held, at);
            }
        }
    }

    /// An operation every stage let pass (`depth`: below the last), as
    /// they moved and cut it, to the backend.
    fn pass(&mut self, op: Op, tag: Tag, call: Call, depth: usize, now: Instant) {
        let asked = match &op {
            Op::Read { buf, .. } => buf.len(),
            _ => 0,
        };
        let op = match moved(op, &call) {
            Moved::Op(op) => op,
            // Wholly past the end of what is below: as if a stage said so.
            Moved::Zeroes(op) => return self.zeroes(op, tag, &call, depth, now),
            Moved::Refused => return self.answer(tag, &call, ENOSPC, depth, now),
        };
        self.sent.insert(tag, Sent { call, asked });
        if let Err((_, tag)) = self.below.submit(op, tag, call.conn) {
            // Never: the backend's engine has room for all of ours.
            self.sent.remove(&tag);
            self.answer(tag, &call, EIO, depth, now);
        }
    }

    /// Answers an operation a stage failed, and tells the stages above it.
    fn answer(&mut self, tag: Tag, call: &Call, errno: u32, stage: usize, now: Instant) {
        up(&self.stages, call, errno, stage, now);
        self.done.push(Done {
            tag,
            // NBD's error numbers are Linux's.
            result: Err(io::Error::from_raw_os_error(errno as i32)),
            buf: Vec::new(),
        });
    }

    /// A stage answers with zeroes (past the end of what is below it): a
    /// read gets them; a write succeeds if it writes zeroes, else ENOSPC.
    fn zeroes(&mut self, op: Op, tag: Tag, call: &Call, stage: usize, now: Instant) {
        let (result, buf) = match op {
            Op::Read { mut buf, .. } => {
                buf.fill(0);
                (Ok(()), buf)
            }
            Op::Write { buf, .. } if !all_zero(&buf) => {
                (Err(io::Error::from_raw_os_error(libc::ENOSPC)), buf)
            }
            Op::Write { buf, .. } => (Ok(()), buf),
            _ => (Ok(()), Vec::new()),
        };
        let errno = result.as_ref().err().map_or(0, nbd_errno);
        up(&self.stages, call, errno, stage, now);
        self.done.push(Done { tag, result, buf });
    }

    /// Operations whose hold is over go on down.
    fn release(&mut self, now: Instant) {
        while let Some(h) = self.held.release(now, false) {
            self.down(h.op, h.tag, h.call, h.stage + 1, now);
        }
    }

    fn extents(
        &mut self,
        conn: u64,
        offset: u64,
        len: u64,
        max: usize,
        out: &mut Vec<Extent>,
    ) -> io::Result<()> {
        let now = Instant::now();
        let mut call = Call {
            conn,
            kind: CMD_BLOCK_STATUS,
            flags: 0,
            offset,
            len,
            started: now,
        };
        let depth = self.stages.borrow().len();
        let (verdict, stage) = run_stages(&self.stages, &mut call, 0, now);
        let errno = match verdict {
            // A hold cannot be kept here: at once.
            Verdict::Pass | Verdict::Hold(_) => {
                let r = (self.below.backend()).extents_for(conn, call.offset, call.len, max, out);
                let errno = r.as_ref().err().map_or(0, nbd_errno);
                up(&self.stages, &call, errno, depth, now);
                return r;
            }
            Verdict::Fail(errno) => errno,
            Verdict::Disconnect(_) => EIO,
            Verdict::Zeroes => {
                out.push(Extent {
                    len: call.len,
                    flags: STATE_HOLE | STATE_ZERO,
                });
                0
            }
        };
        if errno == 0 {
            up(&self.stages, &call, 0, stage, now);
            return Ok(());
        }
        up(&self.stages, &call, errno, stage, now);
        Err(io::Error::from_raw_os_error(errno as i32))
    }
}

/// The stages from `from` down (see `filter::down`).
fn run_stages(stages: &Shared, call: &mut Call, from: usize, now: Instant) -> (Verdict, usize) {
    super::down(&mut stages.borrow_mut(), call, from, now)
}

/// An outcome on its way up from stage `from` (see `filter::up`).
fn up(stages: &Shared, call: &Call, errno: u32, from: usize, now: Instant) {
    super::up(&mut stages.borrow_mut(), call, errno, from, now);
}

/// What the stages see of an operation.
fn call_of(op: &Op, conn: u64, now: Instant) -> Call {
    let fua = |f: bool| if f { CMD_FLAG_FUA } else { 0 };
    let (kind, flags, offset, len) = match op {
        Op::Read { offset, buf } => (CMD_READ, 0, *offset, buf.len() as u64),
        Op::Write {
            offset,
            buf,
            fua: f,
        } => (CMD_WRITE, fua(*f), *offset, buf.len() as u64),
        Op::Flush => (CMD_FLUSH, 0, 0, 0),
        Op::Trim {
            offset,
            len,
            fua: f,
        } => (CMD_TRIM, fua(*f), *offset, *len),
        Op::Zero {
            offset,
            len,
            may_trim,
            fast,
            fua: f,
        } => {
            let mut flags = fua(*f);
            if !may_trim {
                flags |= CMD_FLAG_NO_HOLE;
            }
            if *fast {
                flags |= CMD_FLAG_FAST_ZERO;
            }
            (CMD_WRITE_ZEROES, flags, *offset, *len)
        }
        Op::Cache { offset, len } => (CMD_CACHE, 0, *offset, *len),
    };
    Call {
        conn,
        kind,
        flags,
        offset,
        len,
        started: now,
    }
}

/// What becomes of an operation the stages let pass.
#[derive(Debug)]
enum Moved {
    /// To the backend.
    Op(Op),
    /// A READ or WRITE cut to nothing: it lies wholly past the end of what
    /// is below (`Core::zeroes`).
    Zeroes(Op),
    /// A WRITE cut short whose payload past the cut is not zeroes: nothing
    /// can store it (ENOSPC).
    Refused,
}

/// `op` where the stages moved it (its offset; its flags) and cut it short
/// where what is below ends (its length: see `Call::len`). A READ reads only
/// what is below (`Sent::asked`: the rest comes back as zeroes); a WRITE
/// writes only what is below, if the rest is zeroes.
fn moved(op: Op, call: &Call) -> Moved {
    let (offset, len, fua) = (call.offset, call.len, call.flags & CMD_FLAG_FUA != 0);
    // A stage only ever shortens: `len` is at most the buffer's length.
    let cut = usize::try_from(len).unwrap_or(usize::MAX);
    Moved::Op(match op {
        Op::Read { ref buf, .. } | Op::Write { ref buf, .. } if len == 0 && !buf.is_empty() => {
            return Moved::Zeroes(op);
        }
        Op::Read { mut buf, .. } => {
            buf.truncate(cut);
            Op::Read { offset, buf }
        }
        Op::Write { mut buf, .. } => {
            if buf.get(cut..).is_some_and(|tail| !all_zero(tail)) {
                return Moved::Refused;
            }
            buf.truncate(cut);
            Op::Write { offset, buf, fua }
        }
        Op::Flush => Op::Flush,
        Op::Trim { .. } => Op::Trim { offset, len, fua },
        Op::Zero { fast, .. } => Op::Zero {
            offset,
            len,
            may_trim: call.flags & CMD_FLAG_NO_HOLE == 0,
            fast,
            fua,
        },
        Op::Cache { .. } => Op::Cache { offset, len },
    })
}

/// The core as the engine the layer above drives.
struct Io(Rc<RefCell<Core>>);

impl Io {
    fn core(&self) -> std::cell::RefMut<'_, Core> {
        // As `Shared`: never borrowed twice.
        self.0.borrow_mut()
    }
}

impl Remote for Io {
    fn submit(&mut self, op: Op, tag: Tag) {
        self.submit_from(op, tag, 0);
    }

    fn submit_from(&mut self, op: Op, tag: Tag, conn: u64) {
        let now = Instant::now();
        let call = call_of(&op, conn, now);
        self.core().down(op, tag, call, 0, now);
    }

    fn run(&mut self) {
        let mut core = self.core();
        core.release(Instant::now());
        core.below.run();
    }

    fn reap(&mut self, out: &mut Vec<Done>) {
        let mut core = self.core();
        let from = out.len();
        core.below.reap(out);
        let now = Instant::now();
        let depth = core.stages.borrow().len();
        for d in &mut out[from..] {
            if let Some(sent) = core.sent.remove(&d.tag) {
                let errno = d.result.as_ref().err().map_or(0, nbd_errno);
                if errno == 0 && d.buf.len() < sent.asked {
                    d.buf.resize(sent.asked, 0); // past a cut: zeroes
                }
                up(&core.stages, &sent.call, errno, depth, now);
            }
        }
        out.append(&mut core.done);
    }

    fn busy(&self) -> bool {
        let mut core = self.core();
        !core.done.is_empty() || core.below.busy()
    }

    fn in_flight(&self) -> usize {
        let core = self.core();
        core.held.len() + core.sent.len() + core.done.len()
    }

    fn attach(&mut self, registry: &Registry, top: usize) -> io::Result<()> {
        self.core().below.attach(registry, Token(top), top - 1)
    }

    fn ready(&mut self, source: usize) {
        if let Some(i) = source.checked_sub(1) {
            self.core().below.ready(i);
        }
    }

    fn deadline(&self) -> Option<Instant> {
        let mut core = self.core();
        let held = core.held.next();
        [held, core.below.deadline()].into_iter().flatten().min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_as_stages_see_them_and_back() {
        let now = Instant::now();
        let zero = Op::Zero {
            offset: 10,
            len: 20,
            may_trim: false,
            fast: true,
            fua: true,
        };
        let mut call = call_of(&zero, 7, now);
        assert_eq!(call.kind, CMD_WRITE_ZEROES);
        assert_eq!(
            call.flags,
            CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO | CMD_FLAG_FUA
        );
        assert_eq!((call.conn, call.offset, call.len), (7, 10, 20));
        // A stage moves it and drops FUA.
        call.offset = 110;
        call.flags &= !CMD_FLAG_FUA;
        match moved(zero, &call) {
            Moved::Op(Op::Zero {
                offset: 110,
                len: 20,
                may_trim: false,
                fast: true,
                fua: false,
            }) => {}
            op => panic!("{op:?}"),
        }
        let read = Op::Read {
            offset: 5,
            buf: vec![0; 3],
        };
        let call = call_of(&read, 1, now);
        assert_eq!((call.kind, call.len), (CMD_READ, 3));
    }

    #[test]
    fn a_cut_reads_and_writes_only_what_is_below() {
        let now = Instant::now();
        let cut = |op: &Op, len| Call {
            len,
            ..call_of(op, 1, now)
        };
        let read = Op::Read {
            offset: 0,
            buf: vec![7; 8],
        };
        let call = cut(&read, 3);
        match moved(read, &call) {
            Moved::Op(Op::Read { buf, .. }) => assert_eq!(buf.len(), 3),
            m => panic!("{m:?}"),
        }
        let write = |tail: u8| Op::Write {
            offset: 0,
            buf: vec![1, 1, tail, 0],
            fua: false,
        };
        let call = cut(&write(0), 2);
        match moved(write(0), &call) {
            Moved::Op(Op::Write { buf, .. }) => assert_eq!(buf, [1, 1]),
            m => panic!("{m:?}"),
        }
        assert!(matches!(moved(write(5), &call), Moved::Refused));
        let call = cut(&write(0), 0);
        assert!(matches!(moved(write(0), &call), Moved::Zeroes(_)));
        let trim = Op::Trim {
            offset: 0,
            len: 10,
            fua: false,
        };
        let call = cut(&trim, 4);
        assert!(matches!(
            moved(trim, &call),
            Moved::Op(Op::Trim { len: 4, .. })
        ));
    }

    fn stages(filters: &[(&str, &[(&str, &str)])]) -> Shared {
        let build = |(name, kv): &(&str, &[(&str, &str)])| {
            let p = kv.iter().map(|(k, v)| (k.to_string(), v.to_string()));
            let build = crate::filter::registry::lookup(name)
                .expect("a filter")
                .build;
            build(&crate::filter::params::Params(p.collect())).expect("valid")
        };
        Rc::new(RefCell::new(filters.iter().map(build).collect()))
    }

    #[test]
    fn stages_are_prepared_from_the_backend_up() {
        let memory = || Box::new(crate::backend::Memory::new(1000));
        let s = stages(&[
            ("offset", &[("offset", "100")]),
            ("truncate", &[("truncate", "600")]),
        ]);
        let staged = Staged::new(s, memory()).expect("fits");
        assert_eq!(staged.size(), 500, "truncated to 600, then 100 off");
        let s = stages(&[("offset", &[("offset", "2000")])]);
        let e = Staged::new(s, memory()).err().expect("past the end");
        assert!(e.starts_with("offset filter: "), "{e}");
    }
}
