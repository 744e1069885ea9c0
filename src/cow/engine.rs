//! The cow engine: client requests in (`submit`), completions out (`reap`),
//! and in between, operations on the layer below and on the overlay file,
//! each through its own engine, never waited for. A read of blocks that are
//! all below goes down as it is, in the client's buffer, without a job (what
//! most reads of a little-written overlay are); any other request is a `Job`
//! that goes through stages (`stages.rs`). This file moves operations
//! between the jobs and the engines below.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::ops::Range;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use slab::Slab;

use super::Settings;
use super::job::{Job, Part, Sub, errno};
use super::locks::Locks;
use super::map::{Map, Slots, State};
use super::plan::Geometry;
use crate::aio::{Done, Engine, Op, Tag};
use crate::backend::{Below, Extent};
use crate::proto::{STATE_HOLE, STATE_ZERO};

/// Bytes of buffers of its own (pieces of split reads and writes, blocks
/// filled from below) that the engine's requests may hold at once; one
/// request that needs more runs alone.
const SCRATCH_MAX: usize = 16 << 20;

/// Rounds of reaping per `reap`: completions of data at hand come at once,
/// and a job may go through several stages in one turn.
const REAP_ROUNDS: usize = 8;

/// One client's overlay, or everyone's.
pub(super) struct View {
    pub map: Map,
    /// Jobs of its own in the engine.
    pub jobs: usize,
    /// Its connection has gone: it goes when its last job does.
    pub gone: bool,
}

/// A sub-operation in an engine below: its job (None: the engine's own) and
/// what to do with its result.
struct Flying {
    job: Option<usize>,
    part: Part,
    scratch: usize,
}

pub(super) struct Core {
    pub g: Geometry,
    pub settings: Settings,
    pub below: Below,
    pub overlay: Engine,
    /// By connection with `cow-per-client`, else one, 0.
    pub views: HashMap<u64, View>,
    pub slots: Slots,
    pub locks: Locks,
    pub jobs: Slab<Job>,
    flying: Slab<Flying>,
    /// Jobs to look at again (let go by a lock, or by the scratch limit).
    pub ready: VecDeque<usize>,
    /// Jobs whose operations wait for room in an engine below.
    stalled: Vec<usize>,
    /// Jobs waiting for scratch space.
    pub starved: Vec<usize>,
    /// Slots of views gone, to punch and then hand out again.
    releases: VecDeque<Range<u32>>,
    done: Vec<Done>,
    /// Scratch bytes held.
    scratch: usize,
    /// Reads passed below without a job, not yet back.
    direct: usize,
    reaped: Vec<Done>,
    extents: Vec<Extent>,
}

impl Core {
    pub fn new(settings: Settings, below: Below, overlay: Engine) -> Core {
        let g = Geometry {
            bs: settings.block_size,
            size: below.size(),
        };
        let mut views = HashMap::new();
        if !settings.per_client {
            views.insert(0, View::new());
        }
        Core {
            g,
            settings,
            below,
            overlay,
            views,
            slots: Slots::default(),
            locks: Locks::default(),
            jobs: Slab::new(),
            flying: Slab::new(),
            ready: VecDeque::new(),
            stalled: Vec::new(),
            starved: Vec::new(),
            releases: VecDeque::new(),
            done: Vec::new(),
            scratch: 0,
            direct: 0,
            reaped: Vec::new(),
            extents: Vec::new(),
        }
    }

    /// The view connection `conn` acts on.
    pub fn view_of(&self, conn: u64) -> u64 {
        if self.settings.per_client { conn } else { 0 }
    }

    pub fn map(&self, view: u64) -> Option<&Map> {
        self.views.get(&view).map(|v| &v.map)
    }

    pub fn submit(&mut self, op: Op, tag: Tag, conn: u64) {
        let view = self.view_of(conn);
        let op = match op {
            Op::Read { offset, buf } if self.all_below(view, offset, buf.len() as u64) => {
                return self.read_below(offset, buf, tag, conn);
            }
            op => op,
        };
        let mut job = Job::new(tag, conn, view, op);
        if job.kind.changes() {
            self.views.entry(view).or_insert_with(View::new);
        }
        if let Some(v) = self.views.get_mut(&view) {
            v.jobs += 1;
            job.counted = true;
        }
        let key = self.jobs.insert(job);
        self.advance(key);
    }

    /// A read that can go straight below, as it is: every block it touches
    /// reads from there, and it copies nothing up.
    fn all_below(&self, view: u64, offset: u64, len: u64) -> bool {
        if len == 0 || self.copies_on_read() {
            return false;
        }
        let blocks = self.g.blocks(offset, len);
        self.map(view).is_none_or(|m| {
            m.get(blocks.start).state == State::Below
                && m.same_until(blocks.start, blocks.end) >= blocks.end
        })
    }

    /// A read of blocks that are all below, in the client's buffer, without
    /// a job: most reads of an overlay little written (no copy, and next to
    /// nothing more than the backend's own cost).
    fn read_below(&mut self, offset: u64, mut buf: Vec<u8>, tag: Tag, conn: u64) {
        if let Some(result) = self.below.read_now(&mut buf, offset) {
            return self.done.push(Done { tag, result, buf });
        }
        let f = self.flying.insert(Flying {
            job: None,
            part: Part::Direct { tag },
            scratch: 0,
        });
        match self.below.submit(Op::Read { offset, buf }, f as Tag, conn) {
            Ok(()) => self.direct += 1,
            Err((op, _)) => {
                // No room below (the engine above counts these as its own, so
                // there always is): a job waits for it.
                self.flying.remove(f);
                let key = self
                    .jobs
                    .insert(Job::new(tag, conn, self.view_of(conn), op));
                self.advance(key);
            }
        }
    }

    /// Once per loop turn: jobs that can go on do, views gone give back their
    /// slots, and both engines below send what was queued.
    pub fn run(&mut self) {
        self.progress();
        self.punch_released();
        self.overlay.run();
        self.below.run();
    }

    pub fn reap(&mut self, out: &mut Vec<Done>) {
        let mut reaped = std::mem::take(&mut self.reaped);
        for _ in 0..REAP_ROUNDS {
            self.overlay.reap(&mut reaped);
            self.below.reap(&mut reaped);
            if reaped.is_empty() {
                break;
            }
            for d in reaped.drain(..) {
                // Every tag is a key of `flying`: a missing one cannot happen.
                if let Some(f) = self.flying.try_remove(d.tag as usize) {
                    self.part_done(f, d);
                }
            }
            self.progress();
        }
        self.reaped = reaped;
        out.append(&mut self.done);
    }

    pub fn busy(&mut self) -> bool {
        !self.done.is_empty() || !self.ready.is_empty() || self.overlay.busy() || self.below.busy()
    }

    pub fn in_flight(&self) -> usize {
        self.jobs.len() + self.done.len() + self.direct
    }

    /// The overlay's ring under `top`, the ring below under `top - 1`, and
    /// the sockets of the engine below from `top - 2` down.
    pub fn attach(&mut self, registry: &Registry, top: usize) -> io::Result<()> {
        if let Some(fd) = self.overlay.fd() {
            let fd = std::os::fd::AsRawFd::as_raw_fd(&fd);
            registry.register(&mut SourceFd(&fd), Token(top), Interest::READABLE)?;
        }
        self.below.attach(registry, Token(top - 1), top - 2)
    }

    pub fn ready_source(&mut self, source: usize) {
        // The rings are reaped every turn; sockets are the engine below's.
        if let Some(i) = source.checked_sub(2) {
            self.below.ready(i);
        }
    }

    /// Jobs let go of (by a lock, or scratch) go on; jobs that waited for
    /// room below try again.
    fn progress(&mut self) {
        for _ in 0..self.ready.len() {
            let Some(key) = self.ready.pop_front() else {
                break;
            };
            self.advance(key);
        }
        for key in std::mem::take(&mut self.stalled) {
            if let Some(j) = self.jobs.get_mut(key) {
                j.stalled = false;
                self.advance(key);
            }
        }
    }

    /// Hands the job's pending operations to the engines below while they
    /// have room; a job left with some is stalled until room comes.
    pub fn pump(&mut self, key: usize) {
        let Some(job) = self.jobs.get_mut(key) else {
            return;
        };
        while let Some(sub) = job.todo.pop_front() {
            let room = match sub.below {
                true => self.below.has_room(),
                false => self.overlay.has_room(),
            };
            let tag = self.flying.insert(Flying {
                job: Some(key),
                part: sub.part.clone(),
                scratch: sub.scratch,
            }) as Tag;
            let sent = match (room, sub.below) {
                (false, _) => Err((sub.op, tag)),
                (true, true) => self.below.submit(sub.op, tag, job.conn),
                (true, false) => self.overlay.submit(sub.op, tag),
            };
            if let Err((op, _)) = sent {
                self.flying.remove(tag as usize);
                job.todo.push_front(Sub { op, ..sub });
                if !job.stalled {
                    job.stalled = true;
                    self.stalled.push(key);
                }
                return;
            }
            job.flying += 1;
        }
    }

    /// A sub-operation is back: its result goes to its job, which goes on.
    fn part_done(&mut self, f: Flying, d: Done) {
        self.unscratch(f.scratch);
        let Some(key) = f.job else {
            match f.part {
                Part::Release(slots) => self.slots.release(slots),
                Part::Direct { tag } => {
                    self.direct -= 1;
                    self.done.push(Done { tag, ..d });
                }
                _ => {} // the engine's own operations are these two
            }
            return;
        };
        let Some(job) = self.jobs.get_mut(key) else {
            return; // a job lives until its last part is back: cannot happen
        };
        job.flying -= 1;
        match (f.part, d.result) {
            (Part::Whole | Part::Mark { whole: true, .. }, Err(e)) => {
                job.buf = d.buf;
                self.fail(key, e);
            }
            (Part::Whole, Ok(())) => job.buf = d.buf,
            (_, Err(e)) => self.fail(key, e),
            (Part::Piece { at }, Ok(())) => {
                // A piece comes back in the buffer it went down in, of its
                // run's length, inside the job's: the backend below (or the
                // stages over it) keep that, or the job fails, not the server.
                let into = at
                    .checked_add(d.buf.len())
                    .and_then(|end| job.buf.get_mut(at..end));
                match into {
                    Some(into) => into.copy_from_slice(&d.buf),
                    None => self.fail(key, errno(libc::EIO)),
                }
            }
            // A job that has failed hands out nothing more.
            (Part::FillRead { blocks }, Ok(())) if job.error.is_none() => {
                self.fill_write(key, blocks, d.buf)
            }
            (Part::FillRead { .. }, Ok(())) => {}
            (Part::Mark { blocks, whole }, Ok(())) => {
                if whole {
                    job.buf = d.buf;
                }
                let view = job.view;
                if let Some(v) = self.views.get_mut(&view) {
                    for b in blocks {
                        v.map.set_state(b, State::Data);
                    }
                }
            }
            (Part::Plain | Part::Release(_) | Part::Direct { .. }, Ok(())) => {}
        }
        self.advance(key);
    }

    /// The job fails with `e` (its first error stays).
    pub fn fail(&mut self, key: usize, e: io::Error) {
        if let Some(job) = self.jobs.get_mut(key) {
            let freed = job.fail(e);
            self.unscratch(freed);
        }
    }

    /// Whether `n` scratch bytes may be taken now (then they are); else the
    /// job waits for some to be given back.
    pub fn take_scratch(&mut self, key: usize, n: usize) -> bool {
        if n == 0 || self.scratch == 0 || self.scratch + n <= SCRATCH_MAX {
            self.scratch += n;
            return true;
        }
        self.starved.push(key);
        false
    }

    /// Counts scratch bytes taken without asking (operations that follow
    /// from one already under way).
    pub fn add_scratch(&mut self, n: usize) {
        self.scratch += n;
    }

    #[cfg(test)]
    pub fn scratch_held(&self) -> usize {
        self.scratch
    }

    fn unscratch(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.scratch -= n.min(self.scratch);
        self.ready.extend(self.starved.drain(..));
    }

    /// The job is over: its blocks are let go, its view may go, its `Done`
    /// is ready to be reaped.
    pub fn finish(&mut self, key: usize) {
        // `advance` calls it last, once it has found the job (see `stages.rs`, "Keys").
        let job = self.jobs.remove(key);
        if let Some(lock) = job.lock {
            self.locks.unlock(lock, &mut self.ready);
        }
        if job.counted
            && let Some(v) = self.views.get_mut(&job.view)
        {
            v.jobs -= 1;
            if v.gone && v.jobs == 0 {
                self.drop_view(job.view);
            }
        }
        self.done.push(Done {
            tag: job.tag,
            result: job.error.map_or(Ok(()), Err),
            buf: job.buf,
        });
    }

    /// Connection `conn` has gone: its own overlay goes with its last job.
    pub fn client_gone(&mut self, conn: u64) {
        if !self.settings.per_client {
            return;
        }
        if let Some(v) = self.views.get_mut(&conn) {
            v.gone = true;
            if v.jobs == 0 {
                self.drop_view(conn);
            }
        }
    }

    /// A view goes: its slots' space is punched out of the file, after which
    /// they may be handed out again.
    fn drop_view(&mut self, view: u64) {
        let Some(v) = self.views.remove(&view) else {
            return;
        };
        let slots = v.map.slots();
        log::debug!(
            "cow: conn {view}'s overlay goes: {} blocks, {} KiB of map",
            slots.len(),
            v.map.bytes() >> 10
        );
        self.releases.extend(super::map::runs(&slots));
    }

    fn punch_released(&mut self) {
        while self.overlay.has_room() {
            let Some(r) = self.releases.pop_front() else {
                return;
            };
            let (offset, len) = (self.g.slot_at(r.start), self.g.slot_at(r.end - r.start));
            let part = Part::Release(r);
            let tag = self.flying.insert(Flying {
                job: None,
                part,
                scratch: 0,
            });
            let op = Op::Trim {
                offset,
                len,
                fua: false,
            };
            // has_room said yes: this cannot be refused.
            let _ = self.overlay.submit(op, tag as Tag);
        }
    }

    /// Block status of `[offset, offset + len)` as connection `conn` sees
    /// it: blocks of the overlay as data (zeroed ones as zeroes, trimmed ones
    /// as holes), the rest as the layer below says.
    pub fn extents(
        &mut self,
        conn: u64,
        offset: u64,
        len: u64,
        max: usize,
        out: &mut Vec<Extent>,
    ) -> io::Result<()> {
        let g = self.g;
        let end = offset.saturating_add(len).min(g.size).max(offset + 1);
        let last = g.block(end - 1) + 1;
        let map = self.views.get(&self.view_of(conn)).map(|v| &v.map);
        let mut list = Extents {
            out,
            max,
            full: false,
        };
        let mut push = |n: u64, flags: u32| list.push(n, flags);
        let mut pos = offset;
        while pos < end {
            let b = g.block(pos);
            let state = map.map_or(State::Below, |m| m.get(b).state);
            let stop = map.map_or(last, |m| m.same_until(b, last));
            let upto = g.start(stop).clamp(pos + 1, end);
            let flags = match state {
                State::Below => {
                    let (below, scratch) = (&mut self.below, &mut self.extents);
                    below.extents(pos, upto, max, scratch, &mut push)?;
                    pos = upto;
                    continue;
                }
                State::Data => 0,
                State::Zero { hole: true } => STATE_HOLE | STATE_ZERO,
                State::Zero { hole: false } => STATE_ZERO,
            };
            if !push(upto - pos, flags) {
                break;
            }
            pos = upto;
        }
        Ok(())
    }
}

/// A list of extents being made: at most `max`, each merged with the last
/// where the flags are the same; once one could not be added, none is.
struct Extents<'a> {
    out: &'a mut Vec<Extent>,
    max: usize,
    full: bool,
}

impl Extents<'_> {
    fn push(&mut self, len: u64, flags: u32) -> bool {
        let n = self.out.len();
        match self.out.last_mut() {
            _ if self.full => {}
            Some(last) if last.flags == flags => last.len += len,
            _ if n >= self.max => self.full = true,
            _ => self.out.push(Extent { len, flags }),
        }
        !self.full
    }
}

impl View {
    pub fn new() -> View {
        View {
            map: Map::default(),
            jobs: 0,
            gone: false,
        }
    }
}
