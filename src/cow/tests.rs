//! The cow engine against a model: batches of random requests, in flight
//! together (their bytes apart, their blocks often shared, so that
//! read-modify-writes of one block meet), over RAM below and an overlay file
//! under each engine; every read checked against what the model holds, and
//! block status never calling zeroes what is not.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::engine::Core;
use super::{OnRead, Settings};
use crate::aio::{Done, Engine, Op};
use crate::backend::{Access, Backend, Below, Memory};
use crate::proto::STATE_ZERO;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// RAM of `size` bytes holding `data`, as the layer below.
fn below(data: &[u8]) -> Below {
    let mut m = Memory::new(data.len() as u64);
    let Access::Now(store) = m.access() else {
        unreachable!("RAM is at hand")
    };
    store.write(data, 0, false).unwrap();
    Below::new(Box::new(m))
}

fn core(data: &[u8], sync: bool, per_client: bool, bs: u64) -> Core {
    let file = super::overlay::create(&std::env::temp_dir()).unwrap();
    let settings = Settings {
        block_size: bs,
        on_read: OnRead::Never,
        on_cache: true,
        per_client,
    };
    Core::new(
        settings,
        below(data),
        Engine::new(std::rc::Rc::new(file), sync),
    )
}

/// Runs the engine until `n` requests are done (bounded).
fn settle(c: &mut Core, n: usize) -> Vec<Done> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while out.len() < n {
        c.run();
        c.reap(&mut out);
        assert!(Instant::now() < deadline, "{} of {n} done", out.len());
        if out.len() < n && !c.busy() {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    out
}

/// A request of a batch: what it is, and (for a read) what it must read.
struct Sent {
    conn: u64,
    offset: usize,
    len: usize,
    read: bool,
}

/// One batch: requests whose bytes do not overlap, sent together; the model
/// of each connection's view changed as they will change it.
fn batch(c: &mut Core, rng: &mut Rng, models: &mut HashMap<u64, Vec<u8>>, size: usize) {
    let mut taken: Vec<(usize, usize)> = Vec::new();
    let mut sent: HashMap<u64, Sent> = HashMap::new();
    let mut reads_want: HashMap<u64, Vec<u8>> = HashMap::new();
    for tag in 0..1 + rng.below(12) {
        let len = 1 + rng.below(3 * 8192) as usize;
        let offset = rng.below((size - len) as u64) as usize;
        if taken
            .iter()
            .any(|&(o, l)| offset < o + l && o < offset + len)
        {
            continue;
        }
        taken.push((offset, len));
        let conn = 1 + rng.below(3);
        let v = c.view_of(conn);
        let model = match models.entry(v) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(models_base(c)),
        };
        let fill = rng.next() as u8;
        let fua = rng.below(4) == 0;
        let (offset64, len64) = (offset as u64, len as u64);
        let op = match rng.below(7) {
            0 | 1 => {
                reads_want.insert(tag, model[offset..offset + len].to_vec());
                Op::Read {
                    offset: offset64,
                    buf: vec![0xee; len],
                }
            }
            2 | 3 => {
                model[offset..offset + len].fill(fill);
                Op::Write {
                    offset: offset64,
                    buf: vec![fill; len],
                    fua,
                }
            }
            4 => {
                model[offset..offset + len].fill(0);
                let may_trim = rng.below(2) == 0;
                let (fast, fua) = (false, fua);
                Op::Zero {
                    offset: offset64,
                    len: len64,
                    may_trim,
                    fast,
                    fua,
                }
            }
            5 => {
                model[offset..offset + len].fill(0);
                Op::Trim {
                    offset: offset64,
                    len: len64,
                    fua,
                }
            }
            _ if rng.below(2) == 0 => Op::Flush,
            _ => Op::Cache {
                offset: offset64,
                len: len64,
            },
        };
        let read = matches!(op, Op::Read { .. });
        c.submit(op, tag, conn);
        sent.insert(
            tag,
            Sent {
                conn,
                offset,
                len,
                read,
            },
        );
    }
    for d in settle(c, sent.len()) {
        let s = &sent[&d.tag];
        assert!(
            d.result.is_ok(),
            "{:?} at {} of {}",
            d.result,
            s.offset,
            s.len
        );
        if s.read {
            assert!(
                d.buf == reads_want[&d.tag],
                "read {} {} of conn {}",
                s.offset,
                s.len,
                s.conn
            );
        }
    }
}

/// What a view that was never written reads as: the layer below.
fn models_base(c: &mut Core) -> Vec<u8> {
    let mut v = vec![0; c.g.size as usize];
    c.below.read_now(&mut v, 0).unwrap().unwrap();
    v
}

/// Block status as `conn` sees it never calls zeroes what is not.
fn check_extents(c: &mut Core, conn: u64, model: &[u8]) {
    let mut out = Vec::new();
    c.extents(conn, 0, model.len() as u64, usize::MAX, &mut out)
        .unwrap();
    let mut pos = 0usize;
    for e in &out {
        let end = (pos + e.len as usize).min(model.len());
        if e.flags & STATE_ZERO != 0 {
            assert!(
                model[pos..end].iter().all(|&b| b == 0),
                "zero at {pos}..{end}"
            );
        }
        pos = end;
    }
    assert_eq!(pos, model.len(), "extents cover the export");
}

fn random_requests(sync: bool, per_client: bool, bs: u64, seed: u64) {
    random_requests_reading(sync, per_client, bs, seed, OnRead::Never);
}

fn random_requests_reading(sync: bool, per_client: bool, bs: u64, seed: u64, on_read: OnRead) {
    let size = (2 << 20) - 1000; // the last block is short
    let mut rng = Rng(seed);
    let data: Vec<u8> = (0..size).map(|_| rng.next() as u8).collect();
    let mut c = core(&data, sync, per_client, bs);
    c.settings.on_read = on_read;
    let mut models: HashMap<u64, Vec<u8>> = HashMap::new();
    for round in 0..300 {
        batch(&mut c, &mut rng, &mut models, size);
        if per_client && round % 50 == 49 {
            // A client goes, its overlay with it (the server never gives its
            // number to another: here a new client under it starts afresh).
            c.client_gone(1);
            models.remove(&1);
        }
    }
    for (&v, model) in &models {
        check_extents(&mut c, v, model);
    }
    assert!(c.jobs.is_empty());
    assert!(c.locks.is_empty(), "every lock let go");
    assert_eq!(c.scratch_held(), 0, "every scratch buffer given back");
}

#[test]
fn random_requests_shared_overlay() {
    random_requests(true, false, 8192, 0x9e37_79b9_7f4a_7c15);
    random_requests(false, false, 65536, 0x1234_5678_9abc_def1);
}

#[test]
fn random_requests_overlay_per_client() {
    random_requests(true, true, 65536, 0x0bad_cafe_f00d_1234);
    random_requests(false, true, 4096, 0x5555_aaaa_3333_cccc);
}

#[test]
fn random_requests_copying_up_on_read() {
    random_requests_reading(false, false, 4096, 0x7777_1234_abcd_0001, OnRead::Always);
    random_requests_reading(true, true, 65536, 0x3141_5926_5358_9793, OnRead::Always);
}

#[test]
fn fast_zero_only_without_a_write() {
    let data = vec![1u8; 1 << 20];
    let mut c = core(&data, true, false, 65536);
    let zero = |offset, len| Op::Zero {
        offset,
        len,
        may_trim: true,
        fast: true,
        fua: false,
    };
    c.submit(zero(65536, 65536), 1, 1);
    c.submit(zero(100, 1000), 2, 1);
    let done = settle(&mut c, 2);
    for d in done {
        match d.tag {
            1 => assert!(d.result.is_ok()),
            _ => assert_eq!(
                d.result.unwrap_err().kind(),
                std::io::ErrorKind::Unsupported
            ),
        }
    }
}

#[test]
fn a_long_cache_request_copies_up_a_window_at_a_time() {
    let size = 24 << 20;
    let data: Vec<u8> = (0..size).map(|i| (i / 4096) as u8).collect();
    let mut c = core(&data, false, false, 4096);
    c.submit(
        Op::Cache {
            offset: 1000,
            len: 20 << 20,
        },
        1,
        1,
    );
    let mut out = Vec::new();
    let mut most = 0;
    while out.is_empty() {
        c.run();
        c.reap(&mut out);
        most = most.max(c.scratch_held());
        std::thread::sleep(Duration::from_micros(100));
    }
    assert!(out[0].result.is_ok());
    assert!(most <= 8 << 20, "{most} bytes held at once");
    let map = c.map(0).expect("the shared view");
    let g = c.g;
    for b in g.blocks(1000, 20 << 20) {
        assert_eq!(map.get(b).state, super::map::State::Data, "block {b}");
    }
    assert_eq!(
        map.get(g.block(1000 + (20 << 20)) + 1).state,
        super::map::State::Below
    );
}
