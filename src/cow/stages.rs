//! A job's way through the cow engine, one stage after another:
//!
//! 1. `Start`: a request that changes blocks holds them first, or waits for
//!    them (`locks.rs`);
//! 2. `Held` → `Fill`: blocks it only partly writes, zeroes or trims, that
//!    are not in the overlay yet, are filled first: read from below and
//!    written whole into slots of their own (or zeroed there): the
//!    read-modify-write, done as two stages so that the write is then always
//!    a plain write into slots holding their whole blocks. A read or cache
//!    request that copies up (`cow-on-read`, `cow-on-cache`) copies its
//!    blocks from below here, a window at a time, holding each window;
//! 3. `Main`: its own reads (split where the data comes from different
//!    places, each run read straight into the client's buffer where one run
//!    is all there is), writes or zeroing;
//! 4. `Sync`: with FUA, an fdatasync of the overlay once its writes are done;
//!
//! then it finishes (`Core::finish`). A stage is over when every operation it
//! handed out is back; an error skips to the end.

use std::io;
use std::ops::Range;

use super::OnRead;
use super::engine::{Core, View};
use super::job::{Kind, Part, Stage, Sub, errno};
use super::map::{Entry, State};
use super::plan::{self, Src};
use crate::aio::Op;

/// Bytes copied up from below at a time, for a read or cache request that
/// copies (`cow-on-read`, `cow-on-cache`).
const FILL_WINDOW: u64 = 8 << 20;
/// The most one CACHE request copies up (a hint: doing less is correct);
/// as much as a compact request can ask for.
const COPY_MAX: u64 = 4 << 30;

/// Keys: every `key` given to these functions names a job in `jobs`, so
/// `self.jobs[key]`, wherever it is written below, cannot miss. A job leaves `jobs` only in `Core::finish`,
/// which `advance` calls last (returning at once); everything here runs
/// from `advance` once it has found the job, or (`fill_write`) from the
/// completion of one of its parts, which comes back while it lives
/// (`Job::flying`). `fail` marks a job failed and leaves it in place.
impl Core {
    /// Moves job `key` on as far as it can go now.
    pub(super) fn advance(&mut self, key: usize) {
        loop {
            self.pump(key);
            let Some(job) = self.jobs.get(key) else {
                return;
            };
            if job.flying > 0 || !job.todo.is_empty() {
                return; // the stage is not over
            }
            if job.error.is_some() {
                return self.finish(key);
            }
            let on = match job.stage {
                Stage::Start => self.start(key),
                Stage::Held => self.fill(key),
                Stage::Fill => self.main(key),
                Stage::Main => self.sync(key),
                Stage::Sync => return self.finish(key),
            };
            if !on {
                return; // waiting for its blocks, or for scratch space
            }
        }
    }

    fn set_stage(&mut self, key: usize, stage: Stage) -> bool {
        if let Some(job) = self.jobs.get_mut(key) {
            job.stage = stage;
        }
        true
    }

    /// Holds the job's blocks if it must; false: it waits for them.
    fn start(&mut self, key: usize) -> bool {
        let job = &self.jobs[key];
        let (kind, view) = (job.kind, job.view);
        let Some((offset, len)) = kind.range() else {
            return self.set_stage(key, Stage::Held);
        };
        let blocks = self.g.blocks(offset, len);
        let copies = match kind {
            Kind::Read { .. } => self.copies_on_read() && self.any_below(view, blocks.clone()),
            Kind::Cache { .. } => self.settings.on_cache,
            _ => false,
        };
        if copies {
            // Its blocks are held a window at a time, as it copies them up.
            self.jobs[key].copies = true;
            self.join_view(key); // a read that copies up may be its first
            return self.set_stage(key, Stage::Held);
        }
        if let Kind::Zero { fast: true, .. } = kind
            && !self.zeroes_fast(view, offset, len)
        {
            let slow = io::Error::new(io::ErrorKind::Unsupported, "zeroing would need a write");
            self.fail(key, slow);
            return true;
        }
        if kind.changes() {
            match self.locks.lock(view, blocks, key) {
                Some(lock) => self.jobs[key].lock = Some(lock),
                None => return false,
            }
        }
        self.set_stage(key, Stage::Held)
    }

    /// Makes the job's view if it has none yet, and counts the job in it.
    fn join_view(&mut self, key: usize) {
        let job = &mut self.jobs[key];
        if !job.counted {
            let v = self.views.entry(job.view).or_insert_with(View::new);
            v.jobs += 1;
            job.counted = true;
        }
    }

    /// `cow-on-read`: reads copy what they read from below into the overlay.
    pub(super) fn copies_on_read(&self) -> bool {
        match &self.settings.on_read {
            OnRead::Never => false,
            OnRead::Always => true,
            OnRead::While(path) => path.exists(),
        }
    }

    fn any_below(&self, view: u64, blocks: Range<u64>) -> bool {
        match self.map(view) {
            None => true,
            Some(m) => blocks.into_iter().any(|b| m.get(b).state == State::Below),
        }
    }

    /// A zeroing needs no write: every block it covers only in part reads
    /// as zeroes already.
    fn zeroes_fast(&self, view: u64, offset: u64, len: u64) -> bool {
        let map = self.map(view);
        self.edges(offset, len).into_iter().all(|b| {
            let state = map.map_or(State::Below, |m| m.get(b).state);
            matches!(state, State::Zero { .. })
        })
    }

    /// The blocks `[offset, offset + len)` covers only in part (at most its
    /// first and its last).
    fn edges(&self, offset: u64, len: u64) -> Vec<u64> {
        let (g, end) = (self.g, offset + len);
        let blocks = g.blocks(offset, len);
        let mut v = Vec::with_capacity(2);
        for b in [blocks.start, blocks.end - 1] {
            if !g.covers(b, offset, end) && !v.contains(&b) {
                v.push(b);
            }
        }
        v
    }

    /// Fills what the job needs in the overlay before its own operations:
    /// blocks copied up from below (whole runs of them for a read or cache
    /// request that copies, the partly covered blocks of a write, zeroing or
    /// trim), or zeroed in their slots (a partial write to a zeroed block).
    fn fill(&mut self, key: usize) -> bool {
        let job = &self.jobs[key];
        let (kind, view) = (job.kind, job.view);
        let (copies, zeroes, cursor) = match kind.range() {
            Some((offset, len)) if job.copies => match self.window(key, offset, len) {
                Window::Done => return self.set_stage(key, Stage::Fill),
                Window::Wait => return false,
                Window::Next(copies, to) => (copies, Vec::new(), Some(to)),
            },
            Some((offset, len)) if kind.changes() => {
                let (copies, zeroes) = self.edge_fills(view, kind, offset, len);
                (copies, zeroes, None)
            }
            _ => return self.set_stage(key, Stage::Fill),
        };
        let g = self.g;
        let need: u64 = copies
            .iter()
            .map(|r| g.end(r.end - 1) - g.start(r.start))
            .sum();
        if !self.take_scratch(key, need as usize) {
            return false;
        }
        for blocks in copies {
            let (start, n) = (
                g.start(blocks.start),
                g.end(blocks.end - 1) - g.start(blocks.start),
            );
            let op = Op::Read {
                offset: start,
                buf: vec![0; n as usize], // ≤ FILL_WINDOW, or a block
            };
            let sub = Sub::below(op, Part::FillRead { blocks }, n as usize);
            self.jobs[key].todo.push_back(sub);
        }
        for b in zeroes {
            self.zero_slot(key, view, b);
        }
        match cursor {
            // The next window (if any) once these are done.
            Some(to) => {
                self.jobs[key].cursor = to;
                self.set_stage(key, Stage::Held)
            }
            None => self.set_stage(key, Stage::Fill),
        }
    }

    /// The next window of blocks a read or cache request copies up, held
    /// (the last one let go): a long CACHE holds no more buffers, nor keeps
    /// other clients' writes waiting longer, than a short one.
    fn window(&mut self, key: usize, offset: u64, len: u64) -> Window {
        if let Some(lock) = self.jobs[key].lock.take() {
            self.locks.unlock(lock, &mut self.ready);
        }
        let job = &self.jobs[key];
        let all = self.g.blocks(offset, len.min(COPY_MAX));
        let from = job.cursor.max(all.start);
        if from >= all.end {
            return Window::Done;
        }
        let to = all.end.min(from + (FILL_WINDOW / self.g.bs).max(1));
        let view = job.view;
        let Some(lock) = self.locks.lock(view, from..to, key) else {
            return Window::Wait;
        };
        self.jobs[key].lock = Some(lock);
        let map = self.map(view);
        let mut copies: Vec<Range<u64>> = Vec::new();
        for b in from..to {
            match copies.last_mut() {
                _ if map.is_some_and(|m| m.get(b).state != State::Below) => {}
                Some(r) if r.end == b => r.end = b + 1,
                _ => copies.push(b..b + 1),
            }
        }
        Window::Next(copies, to)
    }

    /// The blocks a write, zeroing or trim covers only in part that must be
    /// filled first: copied up from below, or (a write's) zeroed in a slot.
    fn edge_fills(
        &self,
        view: u64,
        kind: Kind,
        offset: u64,
        len: u64,
    ) -> (Vec<Range<u64>>, Vec<u64>) {
        let map = self.map(view);
        let (mut copies, mut zeroes) = (Vec::new(), Vec::new());
        for b in self.edges(offset, len) {
            match (map.map_or(State::Below, |m| m.get(b).state), kind) {
                (State::Below, _) => copies.push(b..b + 1),
                (State::Zero { .. }, Kind::Write { .. }) => zeroes.push(b),
                _ => {}
            }
        }
        (copies, zeroes)
    }

    /// Block `b` of a write reads as zeroes: its slot is zeroed whole, and
    /// then holds it, for the write to go into.
    fn zero_slot(&mut self, key: usize, view: u64, b: u64) {
        if let Err(e) = self.give_slots(view, b..b + 1) {
            return self.fail(key, e);
        }
        let Some(slot) = self.map(view).and_then(|m| m.get(b).slot) else {
            return; // given just above
        };
        // Zeroes written, not a hole punched: a slot at the end of the file
        // must make the file that long, or reading it would meet its end.
        let g = self.g;
        let len = (g.end(b) - g.start(b)) as usize; // ≤ a block
        self.add_scratch(len);
        let op = Op::Write {
            offset: g.slot_at(slot),
            buf: vec![0; len],
            fua: false,
        };
        let blocks = b..b + 1;
        let part = Part::Mark {
            blocks,
            whole: false,
        };
        let job = &mut self.jobs[key];
        job.todo.push_back(Sub::overlay(op, part, len));
        job.wrote = true;
    }

    /// Blocks read from below for a fill are back: written into slots of
    /// their own (one write where the slots follow each other).
    pub(super) fn fill_write(&mut self, key: usize, blocks: Range<u64>, buf: Vec<u8>) {
        let view = self.jobs[key].view;
        if let Err(e) = self.give_slots(view, blocks.clone()) {
            return self.fail(key, e);
        }
        let (g, start, len) = (self.g, self.g.start(blocks.start), buf.len() as u64);
        let Some(runs) = self.map(view).and_then(|m| plan::writes(m, g, start, len)) else {
            return; // every block was given its slot just above
        };
        // The buffer, or its copies (then it goes): the engine's own.
        self.add_scratch(len as usize);
        let mut subs = Vec::with_capacity(runs.len());
        if let [run] = &runs[..] {
            subs.push(write_sub(run, buf, false));
        } else {
            for run in &runs {
                // The runs tile `[0, len)`: `len` is the buffer's.
                let piece = buf[run.0.at..run.0.at + run.0.len].to_vec();
                subs.push(write_sub(run, piece, false));
            }
        }
        let job = &mut self.jobs[key];
        job.todo.extend(subs);
        job.wrote = true;
    }

    /// Gives every block of `blocks` that has none a slot, consecutive ones
    /// where the file has them; ENOSPC when the overlay has no more.
    fn give_slots(&mut self, view: u64, blocks: Range<u64>) -> io::Result<()> {
        let Some(v) = self.views.get_mut(&view) else {
            return Err(errno(libc::EIO)); // made with the job: cannot happen
        };
        let mut b = blocks.start;
        while b < blocks.end {
            if v.map.get(b).slot.is_some() {
                b += 1; // a block that has one keeps it
                continue;
            }
            // The blocks from `b` that have none, given a run of slots at a time.
            let mut end = b + 1;
            while end < blocks.end && v.map.get(end).slot.is_none() {
                end += 1;
            }
            while b < end {
                let want = (end - b).min(u64::from(u32::MAX)) as u32;
                let Some(run) = self.slots.take(want) else {
                    log::warn!("cow: the overlay is full");
                    return Err(errno(libc::ENOSPC));
                };
                for slot in run {
                    let state = v.map.get(b).state;
                    v.map.set(
                        b,
                        Entry {
                            state,
                            slot: Some(slot),
                        },
                    );
                    b += 1;
                }
            }
        }
        Ok(())
    }

    /// The job's own operations.
    fn main(&mut self, key: usize) -> bool {
        let (kind, copied) = (self.jobs[key].kind, self.jobs[key].copies);
        let ready = match kind {
            Kind::Read { offset, len } => self.main_read(key, offset, len),
            Kind::Write { offset, len, .. } => self.main_write(key, offset, len),
            Kind::Zero {
                offset, len, hole, ..
            } => {
                self.main_zero(key, offset, len, hole);
                true
            }
            Kind::Flush => {
                let sub = Sub::overlay(Op::Flush, Part::Plain, 0);
                self.jobs[key].todo.push_back(sub);
                true
            }
            // Copied up (cow-on-cache): done.
            Kind::Cache { .. } if copied => true,
            Kind::Cache { offset, len } => {
                self.main_cache(key, offset, len);
                true
            }
        };
        ready && self.set_stage(key, Stage::Main)
    }

    /// A read: one run straight into the client's buffer, else each run
    /// into a piece of its own, copied there when it is back (data at hand
    /// below, and zeroes, go straight there).
    fn main_read(&mut self, key: usize, offset: u64, len: u64) -> bool {
        let view = self.jobs[key].view;
        let runs = plan::reads(self.map(view), self.g, offset, len);
        let at_hand = self.below.at_hand();
        let needs_buf = |src: Src| matches!(src, Src::Overlay(_)) || !at_hand && src != Src::Zero;
        if let [run] = runs[..]
            && needs_buf(run.src)
        {
            let job = &mut self.jobs[key];
            let buf = std::mem::take(&mut job.buf);
            job.todo.push_back(read_sub(run.src, buf, Part::Whole, 0));
            return true;
        }
        let need = runs
            .iter()
            .filter(|r| needs_buf(r.src))
            .map(|r| r.len)
            .sum();
        if !self.take_scratch(key, need) {
            return false;
        }
        let job = &mut self.jobs[key];
        let mut failed = None;
        for r in runs {
            // The runs tile `[0, len)`, and a read's buffer is `len` long (`Kind::of`).
            let into = &mut job.buf[r.at..r.at + r.len];
            match r.src {
                Src::Zero => into.fill(0),
                Src::Below(o) if at_hand => {
                    if let Some(Err(e)) = self.below.read_now(into, o) {
                        failed = Some(e);
                    }
                }
                src => {
                    let part = Part::Piece { at: r.at };
                    job.todo
                        .push_back(read_sub(src, vec![0; r.len], part, r.len));
                }
            }
        }
        if let Some(e) = failed {
            self.fail(key, e);
        }
        true
    }

    /// A write: straight from the client's buffer where its slots follow
    /// each other, else a copy for each run of them.
    fn main_write(&mut self, key: usize, offset: u64, len: u64) -> bool {
        let view = self.jobs[key].view;
        if let Err(e) = self.give_slots(view, self.g.blocks(offset, len)) {
            self.fail(key, e);
            return true;
        }
        let Some(runs) = self
            .map(view)
            .and_then(|m| plan::writes(m, self.g, offset, len))
        else {
            return true; // every block was given its slot just above
        };
        if runs.len() > 1 && !self.take_scratch(key, len as usize) {
            return false;
        }
        let job = &mut self.jobs[key];
        job.wrote = true;
        if let [run] = &runs[..] {
            let buf = std::mem::take(&mut job.buf);
            job.todo.push_back(write_sub(run, buf, true));
            return true;
        }
        for run in &runs {
            // The runs tile `[0, len)`, and a write's buffer is `len` long (`Kind::of`).
            let piece = job.buf[run.0.at..run.0.at + run.0.len].to_vec();
            job.todo.push_back(write_sub(run, piece, false));
        }
        true
    }

    /// A zeroing (or trim): whole blocks just read as zeroes from now on
    /// (holes if it may leave them); the part of a block it covers is
    /// zeroed in its slot (a block from below was filled first).
    fn main_zero(&mut self, key: usize, offset: u64, len: u64, hole: bool) {
        let (g, view, end) = (self.g, self.jobs[key].view, offset + len);
        let edges = self.edges(offset, len);
        let Some(v) = self.views.get_mut(&view) else {
            return; // made with the job: cannot happen
        };
        let blocks = g.blocks(offset, len);
        let whole = blocks.start + u64::from(edges.contains(&blocks.start))
            ..blocks.end - u64::from(edges.contains(&(blocks.end - 1)));
        if whole.start < whole.end {
            v.map.set_states(whole, State::Zero { hole });
        }
        let mut subs = Vec::new();
        for b in edges {
            let e = v.map.get(b);
            if let (State::Data, Some(slot)) = (e.state, e.slot) {
                let from = offset.max(g.start(b));
                let op = Op::Zero {
                    offset: g.slot_at(slot) + from - g.start(b),
                    len: end.min(g.end(b)) - from,
                    may_trim: true,
                    fast: false,
                    fua: false,
                };
                subs.push(Sub::overlay(op, Part::Plain, 0));
            }
        }
        let job = &mut self.jobs[key];
        job.wrote |= !subs.is_empty();
        job.todo.extend(subs);
    }

    /// A cache request: passed below for what is there, and to the overlay
    /// file for what is in it.
    fn main_cache(&mut self, key: usize, offset: u64, len: u64) {
        let view = self.jobs[key].view;
        for r in plan::reads(self.map(view), self.g, offset, len) {
            let len = r.len as u64;
            let sub = match r.src {
                Src::Below(offset) => Sub::below(Op::Cache { offset, len }, Part::Plain, 0),
                Src::Overlay(offset) => Sub::overlay(Op::Cache { offset, len }, Part::Plain, 0),
                Src::Zero => continue,
            };
            self.jobs[key].todo.push_back(sub);
        }
    }

    /// FUA: the overlay's data is made durable before the reply.
    fn sync(&mut self, key: usize) -> bool {
        let job = &mut self.jobs[key];
        if job.kind.fua() && job.wrote {
            job.todo.push_back(Sub::overlay(Op::Flush, Part::Plain, 0));
        }
        self.set_stage(key, Stage::Sync)
    }
}

/// What a read or cache request that copies up does next.
enum Window {
    /// Copy these runs of blocks up, then go on from this block.
    Next(Vec<Range<u64>>, u64),
    /// Wait for the blocks (another request holds some).
    Wait,
    /// Everything is copied up.
    Done,
}

/// A read of `buf.len()` bytes from `src` (below or the overlay; zero runs
/// are never read).
fn read_sub(src: Src, buf: Vec<u8>, part: Part, scratch: usize) -> Sub {
    let (below, offset) = match src {
        Src::Below(o) => (true, o),
        Src::Overlay(o) => (false, o),
        Src::Zero => (false, 0),
    };
    let op = Op::Read { offset, buf };
    Sub {
        below,
        op,
        part,
        scratch,
    }
}

/// The write of one run of slots, from `buf` (the client's, if `whole`).
fn write_sub(run: &(plan::Run, Range<u64>), buf: Vec<u8>, whole: bool) -> Sub {
    let offset = match run.0.src {
        Src::Overlay(o) => o,
        _ => 0, // plan::writes makes overlay runs only
    };
    let scratch = if whole { 0 } else { buf.len() };
    let op = Op::Write {
        offset,
        buf,
        fua: false,
    };
    let blocks = run.1.clone();
    Sub::overlay(op, Part::Mark { blocks, whole }, scratch)
}
