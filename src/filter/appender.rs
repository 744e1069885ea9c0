//! A file the loop appends to without ever waiting on it: the log and stats
//! filters' output. Lines gather in a bounded buffer (`CAP`); the buffer goes
//! to the file in batches through a small io_uring of the appender's own, one
//! write at a time, started and reaped when its filter is woken (`wake_at`,
//! `pump`), so the loop needs no descriptor for it.
//!
//! Why not write(2): a regular file ignores O_NONBLOCK, and a buffered write
//! can sleep in the kernel (dirty-page throttling, a slow or remote disk).
//! Through the ring a kernel worker makes the write (`Sqe::Append`), never
//! the loop's thread, which only looks for the completion. What the file does
//! not take (the buffer is full, a write failed: ENOSPC, EIO) is dropped and
//! counted (`Appender::lost`), and writing is tried again a second later.
//! Without io_uring (an old kernel, a policy, NBDLITE_IO_URING=0) the writes
//! are plain write(2)s, and may then wait.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::sys::uring::{BufId, Options, Ring, Sqe};

/// Most bytes waiting for the file (besides the one write in the kernel):
/// lines beyond are dropped.
pub const CAP: usize = 4 << 20;
/// Lines are handed to the kernel once this many bytes wait, or once the
/// first has waited `LINGER`: each write costs tens of microseconds (a
/// kernel worker woken, switched to, put back to sleep) whatever its size,
/// so writing per turn of the loop would cost more than the lines themselves.
const BATCH: usize = 256 << 10;
const LINGER: Duration = Duration::from_millis(50);
/// After a failed write, how long before trying again.
const REST: Duration = Duration::from_secs(1);
/// How soon an unfinished write is looked at again: first, and at most.
const LOOK_FIRST: Duration = Duration::from_millis(1);
const LOOK_MAX: Duration = Duration::from_millis(64);
/// How long the last writes may take as the server exits.
pub const FINISH: Duration = Duration::from_secs(5);

/// How the bytes reach the file.
enum Writer {
    /// Not yet decided: the ring is set up by the first write, so an appender
    /// built only to check the command line costs nothing.
    Unstarted,
    Ring(Box<Ring>),
    /// write(2), where io_uring is not to be had.
    Direct,
    /// A write hung at exit and was left to the kernel with its ring
    /// (`give_up`): the file is not touched again (a write(2) to it would
    /// hang the loop); lines given later are dropped and counted.
    Abandoned,
}

/// What the kernel is doing for us.
enum Op {
    Truncate,
    /// `buf[done..len]` is still to be written; it holds `lines` lines.
    Write {
        buf: BufId,
        done: usize,
        len: usize,
        lines: u64,
    },
}

enum State {
    Idle,
    /// One operation is in the kernel; its completion is looked for at
    /// `look`, then after `pause` more.
    Busy {
        op: Op,
        look: Instant,
        pause: Duration,
    },
    /// A write failed: nothing is written until then.
    Resting(Instant),
}

pub struct Appender {
    path: PathBuf,
    file: Rc<File>,
    writer: Writer,
    state: State,
    /// Bytes waiting for the file, whole lines.
    pending: Vec<u8>,
    /// When `pending` last went from empty to not.
    since: Instant,
    /// Empty the file before writing `pending` (`restart`).
    restart: bool,
    /// A buffer back from the kernel, to fill next.
    spare: Vec<u8>,
    /// Lines dropped or not written.
    lost: u64,
    /// The last write failed (said once, until one succeeds).
    failing: bool,
    scratch: Vec<(u64, i32)>,
}

impl Appender {
    /// Opens `path` for appending (emptying it first unless `append`).
    pub fn open(path: &Path, append: bool) -> io::Result<Appender> {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .custom_flags(if append { 0 } else { libc::O_TRUNC })
            .open(path)?;
        Ok(Appender {
            path: path.to_path_buf(),
            file: Rc::new(file),
            writer: Writer::Unstarted,
            state: State::Idle,
            pending: Vec::new(),
            since: Instant::now(),
            restart: false,
            spare: Vec::new(),
            lost: 0,
            failing: false,
            scratch: Vec::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The buffer to append one line to (ending in '\n'), or None if it is
    /// full: the line is dropped, and counted.
    pub fn line(&mut self, now: Instant) -> Option<&mut Vec<u8>> {
        if !self.has_room() {
            self.lost += 1;
            return None;
        }
        if self.pending.is_empty() {
            self.since = now;
        }
        Some(&mut self.pending)
    }

    /// A write hung at exit and the file was given up on (`give_up`).
    fn abandoned(&self) -> bool {
        matches!(self.writer, Writer::Abandoned)
    }

    /// Whether a line would be taken now.
    pub fn has_room(&self) -> bool {
        self.pending.len() < CAP && !self.abandoned()
    }

    /// Appends whole lines at once, or drops them all if they do not fit.
    pub fn push(&mut self, lines: &[u8], now: Instant) {
        if self.abandoned() || self.pending.len() + lines.len() > CAP {
            self.lost += count_lines(lines);
            return;
        }
        if self.pending.is_empty() {
            self.since = now;
        }
        self.pending.extend_from_slice(lines);
    }

    /// What is written from now on replaces the file's contents (and what
    /// was waiting is forgotten).
    pub fn restart(&mut self, now: Instant) {
        self.pending.clear();
        self.restart = true;
        self.since = now;
    }

    /// Lines dropped or not written since the start.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// When `pump` has work: bytes to start writing (a batch, or lines that
    /// have waited long enough), a completion to look for, the end of a rest.
    /// (`pump` called earlier writes what waits at once.)
    pub fn wake_at(&self) -> Option<Instant> {
        if self.abandoned() {
            return None;
        }
        let work = self.restart || !self.pending.is_empty();
        match self.state {
            State::Idle if self.restart || self.pending.len() >= BATCH => Some(self.since),
            State::Idle => work.then_some(self.since + LINGER),
            State::Busy { look, .. } => Some(look),
            State::Resting(until) => work.then_some(until),
        }
    }

    /// Reaps what the kernel finished and starts what is next, when it is
    /// due (a batch, or lines that waited long enough); never waits.
    pub fn pump(&mut self, now: Instant) {
        self.run(now, false);
    }

    /// As `pump`, and whatever waits is written now (a report, an exit).
    pub fn flush(&mut self, now: Instant) {
        self.run(now, true);
    }

    fn run(&mut self, now: Instant, all: bool) {
        if self.abandoned() {
            return self.drop_pending(); // never reaches the file
        }
        let work = self.restart || !self.pending.is_empty();
        if work && matches!(self.writer, Writer::Unstarted) {
            self.writer = start_writer(&self.file, &self.path);
        }
        loop {
            let due = all || self.batch_due(now);
            match &mut self.state {
                State::Busy { .. } => match self.reap() {
                    Some(res) => self.completed(res, now),
                    None => return self.look_later(now),
                },
                State::Resting(until) if now < *until => return,
                State::Resting(_) => self.state = State::Idle,
                State::Idle if self.restart => {
                    self.restart = false;
                    self.start(Op::Truncate, now);
                }
                State::Idle if self.pending.is_empty() || !due => return,
                State::Idle => self.write_pending(now),
            }
        }
    }

    /// Enough waits, or it has waited long enough.
    fn batch_due(&self, now: Instant) -> bool {
        self.pending.len() >= BATCH || now >= self.since + LINGER
    }

    /// Nothing yet from the kernel: looks again later, less and less often.
    fn look_later(&mut self, now: Instant) {
        if let State::Busy { look, pause, .. } = &mut self.state
            && now >= *look
        {
            *look = now + *pause;
            *pause = (*pause * 2).min(LOOK_MAX);
        }
    }

    /// At exit: writes what is waiting, giving up after `within`. A write
    /// the kernel still has then (a disk that hangs, a pipe nobody reads) is
    /// abandoned with its ring: dropping the ring would wait for it, and the
    /// process is about to end, which frees both. The file is then never
    /// written again (`Writer::Abandoned`): lines still given are counted lost.
    pub fn finish(&mut self, within: Duration) {
        let end = Instant::now() + within;
        let mut retried = false;
        loop {
            let now = Instant::now();
            if matches!(self.state, State::Resting(_)) && !retried {
                // One more try now: the rest would outlast the exit.
                retried = true;
                self.state = State::Idle;
            }
            self.flush(now);
            let work = self.restart || !self.pending.is_empty();
            match self.state {
                State::Idle if !work => return,
                State::Busy { .. } if now < end => std::thread::sleep(LOOK_FIRST),
                _ => return self.give_up(),
            }
        }
    }

    /// What waits is lost (and counted), a restart with it.
    fn drop_pending(&mut self) {
        self.lost += count_lines(&self.pending);
        self.pending.clear();
        self.restart = false;
    }

    /// What waits is lost; a write in the kernel is left to it, and the
    /// file is abandoned: nothing is written to it again.
    fn give_up(&mut self) {
        self.drop_pending();
        if let State::Busy { op, .. } = std::mem::replace(&mut self.state, State::Idle) {
            if let Op::Write { lines, .. } = op {
                self.lost += lines;
            }
            log::warn!(
                "{}: still writing after {}s: given up",
                self.path.display(),
                FINISH.as_secs()
            );
            std::mem::forget(std::mem::replace(&mut self.writer, Writer::Abandoned));
        }
    }

    /// Hands `pending` to the kernel (or writes it, without a ring).
    fn write_pending(&mut self, now: Instant) {
        let mut buf = std::mem::replace(&mut self.pending, std::mem::take(&mut self.spare));
        let len = buf.len();
        match &mut self.writer {
            Writer::Ring(ring) => {
                let lines = count_lines(&buf);
                let buf = ring.lend(buf);
                let op = Op::Write {
                    buf,
                    done: 0,
                    len,
                    lines,
                };
                self.start(op, now);
            }
            // Never reached (`run` drops what waits first): still not written.
            Writer::Abandoned => {
                self.lost += count_lines(&buf);
                buf.clear();
                self.spare = buf;
            }
            Writer::Direct | Writer::Unstarted => {
                let res = (&*self.file).write_all(&buf);
                self.wrote(&buf, res.map(|()| len), now);
                buf.clear();
                self.spare = buf;
            }
        }
    }

    /// Starts `op` on the ring (truncating without one: at once).
    fn start(&mut self, op: Op, now: Instant) {
        let ring = match &mut self.writer {
            Writer::Ring(ring) => ring,
            Writer::Abandoned => return, // the file is not touched again
            Writer::Direct | Writer::Unstarted => {
                if let Err(e) = self.file.set_len(0) {
                    log::warn!("{}: truncate: {e}", self.path.display());
                }
                return;
            }
        };
        let sqe = match &op {
            Op::Truncate => Sqe::Truncate { len: 0 },
            Op::Write { buf, done, len, .. } => Sqe::Append {
                buf: *buf,
                range: *done..*len,
            },
        };
        // One operation at a time: the ring always has room.
        let pushed = ring.push(&sqe, 0);
        if let Err(e) = ring.enter() {
            log::warn!("{}: io_uring_enter: {e}", self.path.display());
        }
        self.state = State::Busy {
            op,
            look: now + LOOK_FIRST,
            pause: LOOK_FIRST,
        };
        if !pushed {
            self.completed(-libc::EAGAIN, now);
        }
    }

    /// The one completion the ring may have.
    fn reap(&mut self) -> Option<i32> {
        let Writer::Ring(ring) = &mut self.writer else {
            return None;
        };
        self.scratch.clear();
        ring.reap(&mut self.scratch);
        self.scratch.first().map(|&(_, res)| res)
    }

    /// The operation in the kernel ended with `res` (bytes, or -errno).
    fn completed(&mut self, res: i32, now: Instant) {
        let state = std::mem::replace(&mut self.state, State::Idle);
        let (Writer::Ring(ring), State::Busy { op, .. }) = (&mut self.writer, state) else {
            return;
        };
        match op {
            Op::Truncate if res == -libc::EINVAL || res == -libc::EOPNOTSUPP => {
                // A kernel before 6.9: truncating a small file of ours is quick.
                if let Err(e) = self.file.set_len(0) {
                    log::warn!("{}: truncate: {e}", self.path.display());
                }
            }
            Op::Truncate if res < 0 => {
                let e = io::Error::from_raw_os_error(-res);
                log::warn!("{}: truncate: {e}", self.path.display());
            }
            Op::Truncate => {}
            Op::Write {
                buf,
                done,
                len,
                lines,
            } if res > 0 && done + (res as usize) < len => {
                // A short write: the rest.
                let op = Op::Write {
                    buf,
                    done: done + res as usize,
                    len,
                    lines,
                };
                self.start(op, now);
            }
            Op::Write { buf, done, len, .. } => {
                // The kernel is done with it: nothing names it now.
                let Some(mut b) = ring.take(buf) else { return };
                let r = match res {
                    r if r > 0 => Ok(len),
                    0 => Err(io::Error::from(io::ErrorKind::WriteZero)),
                    r => Err(io::Error::from_raw_os_error(-r)),
                };
                self.wrote(&b[done..len], r, now);
                b.clear();
                self.spare = b;
            }
        }
    }

    /// A write of `bytes` came to `res`: a failure loses them, and rests.
    fn wrote(&mut self, bytes: &[u8], res: io::Result<usize>, now: Instant) {
        match res {
            Ok(_) => {
                if self.failing {
                    log::warn!("{}: writing again", self.path.display());
                    self.failing = false;
                }
            }
            Err(e) => {
                self.lost += count_lines(bytes);
                if !self.failing {
                    log::warn!(
                        "{}: {e}: lines are dropped (and counted) until it takes them again",
                        self.path.display()
                    );
                    self.failing = true;
                }
                self.state = State::Resting(now + REST);
            }
        }
    }
}

impl Drop for Appender {
    fn drop(&mut self) {
        self.finish(FINISH);
    }
}

/// A ring over `file`, or write(2) with a warning saying why not.
fn start_writer(file: &Rc<File>, path: &Path) -> Writer {
    if std::env::var_os("NBDLITE_IO_URING").is_some_and(|v| v == "0") {
        return Writer::Direct;
    }
    match Ring::new(file.clone(), 4, Options::default()) {
        Ok(ring) => Writer::Ring(Box::new(ring)),
        Err(e) => {
            log::warn!(
                "{}: io_uring unavailable ({e:?}): writes to it may stall the server on a slow disk",
                path.display()
            );
            Writer::Direct
        }
    }
}

fn count_lines(b: &[u8]) -> u64 {
    b.iter().filter(|&&c| c == b'\n').count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("nbdlite-appender-{}-{name}", std::process::id()))
    }

    /// Pumps until nothing is left to do (bounded).
    fn drain(a: &mut Appender) {
        for _ in 0..5000 {
            let Some(at) = a.wake_at() else { return };
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            a.flush(Instant::now());
        }
        panic!("the appender never finished");
    }

    #[test]
    fn lines_reach_the_file_in_order_and_restart_replaces_them() {
        let path = temp("order");
        let mut a = Appender::open(&path, false).expect("open");
        for i in 0..1000 {
            let now = Instant::now();
            if let Some(b) = a.line(now) {
                b.extend_from_slice(format!("line {i}\n").as_bytes());
            }
            if i % 100 == 0 {
                a.pump(now);
            }
        }
        drain(&mut a);
        let text = std::fs::read_to_string(&path).expect("read");
        let want: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(text, want);
        a.restart(Instant::now());
        a.push(b"new\n", Instant::now());
        drain(&mut a);
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "new\n");
        assert_eq!(a.lost(), 0);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn without_a_ring_lines_are_written_directly() {
        let path = temp("direct");
        let mut a = Appender::open(&path, false).expect("open");
        a.writer = Writer::Direct;
        a.push(b"one\n", Instant::now());
        a.flush(Instant::now());
        a.restart(Instant::now());
        a.push(b"two\n", Instant::now());
        a.flush(Instant::now());
        assert!(matches!(a.writer, Writer::Direct));
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "two\n");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_full_buffer_drops_lines_and_counts_them() {
        let path = temp("full");
        let mut a = Appender::open(&path, false).expect("open");
        let now = Instant::now();
        let big = vec![b'x'; CAP - 1];
        a.push(&big, now);
        assert!(a.line(now).is_some(), "room for one more");
        a.line(now).expect("room").extend_from_slice(b"\n");
        assert!(a.line(now).is_none());
        a.push(b"a\nb\n", now);
        assert_eq!(a.lost(), 3);
        drop(a); // finishes: writes what was kept
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), CAP as u64);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn an_abandoned_file_is_never_written_again() {
        let path = temp("abandoned");
        let mut a = Appender::open(&path, false).expect("open");
        a.writer = Writer::Abandoned;
        let now = Instant::now();
        a.push(b"one\ntwo\n", now);
        assert!(a.line(now).is_none() && !a.has_room());
        a.restart(now);
        assert_eq!(a.wake_at(), None);
        a.flush(now);
        a.finish(Duration::from_secs(1));
        assert_eq!(a.lost(), 3);
        assert!(matches!(a.writer, Writer::Abandoned));
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), 0);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_failing_file_loses_what_it_was_given_and_rests() {
        // /dev/full: every write fails with ENOSPC.
        let mut a = Appender::open(Path::new("/dev/full"), true).expect("open");
        let now = Instant::now();
        a.push(b"one\ntwo\n", now);
        a.pump(now);
        for _ in 0..1000 {
            if matches!(a.state, State::Resting(_)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
            a.pump(Instant::now());
        }
        assert!(matches!(a.state, State::Resting(_)));
        assert_eq!(a.lost(), 2);
        a.push(b"three\n", now);
        assert!(a.wake_at().expect("work waits") > now + Duration::from_millis(500));
        a.finish(Duration::from_secs(5));
        assert_eq!(a.lost(), 3);
    }
}
