//! Randomized streams through the server's own protocol driver, std only and
//! seeded, so every CI run checks the same tens of thousands of cases: valid
//! handshakes and request streams split at every byte (the server must not care
//! how TCP cut them up), plus mutated and random bytes. Every step is checked by
//! `nbdlite::fuzzing::check`: framing, well-formed replies, bounded output, no
//! loop without progress; and no allocation may be sized by a length field.

use nbdlite::fuzzing::alloc::Counting;
use nbdlite::fuzzing::streams::{Rng, handshake, mutate, requests};
use nbdlite::fuzzing::{self, Config, Run, Start, encode, fuzz_one, run};

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `stream` whole, split once at every byte, and a byte at a time, and
/// demands the same result each time. Returns the number of runs.
fn every_split(cfg: &Config, start: Start, stream: &[u8]) -> usize {
    fuzzing::alloc::reset();
    let whole = run(cfg, start, stream, &[]);
    for at in 1..stream.len() {
        let split = run(cfg, start, stream, &[at, stream.len()]);
        assert_eq!(split, whole, "split at {at} of {stream:02x?} ({cfg:?})");
    }
    assert_eq!(run(cfg, start, stream, &[1]), whole, "byte at a time");
    let largest = fuzzing::alloc::largest();
    assert!(largest <= fuzzing::ALLOC_LIMIT, "allocated {largest} bytes");
    stream.len() + 1
}

/// A random configuration (export, backend, negotiated session).
fn config(rng: &mut Rng) -> Config {
    Config::from_bits(rng.byte(), rng.byte())
}

#[test]
fn valid_handshakes_split_at_every_byte() {
    let mut rng = Rng::new(1);
    let mut runs = 0;
    let mut served = 0;
    for _ in 0..100 {
        let cfg = config(&mut rng);
        let (mut stream, style) = handshake(&mut rng, &cfg);
        let count = rng.below(3);
        stream.extend(requests(&mut rng, style, cfg.size, count, 64));
        runs += every_split(&cfg, Start::Handshake, &stream);
        served += usize::from(run(&cfg, Start::Handshake, &stream, &[]).session.is_some());
    }
    assert!(runs > 10_000, "{runs} runs");
    assert!(served > 20, "only {served} handshakes reached transmission");
}

#[test]
fn valid_requests_split_at_every_byte() {
    let mut rng = Rng::new(2);
    let mut runs = 0;
    for _ in 0..100 {
        let cfg = config(&mut rng);
        let count = 1 + rng.below(4);
        let stream = requests(&mut rng, cfg.style, cfg.size, count, 48);
        runs += every_split(&cfg, Start::Transmission, &stream);
    }
    assert!(runs > 10_000, "{runs} runs");
}

/// The fuzz targets' own iteration on inputs in their format, with random chunkings.
fn fuzz_cases(seed: u64, cases: usize, make: impl Fn(&mut Rng) -> (Start, Vec<u8>)) {
    let mut rng = Rng::new(seed);
    for _ in 0..cases {
        let (start, stream) = make(&mut rng);
        let chunks: Vec<usize> = (0..rng.below(5))
            .map(|_| 1 + rng.below(40) as usize)
            .collect();
        fuzz_one(start, &encode(rng.byte(), rng.byte(), &chunks, &stream));
    }
}

#[test]
fn mutated_streams() {
    fuzz_cases(3, 6000, |rng| {
        let cfg = config(rng);
        let (start, mut stream) = if rng.one_in(2) {
            let (mut s, style) = handshake(rng, &cfg);
            let count = rng.below(3);
            s.extend(requests(rng, style, cfg.size, count, 600));
            (Start::Handshake, s)
        } else {
            let count = 1 + rng.below(6);
            (
                Start::Transmission,
                requests(rng, cfg.style, cfg.size, count, 600),
            )
        };
        mutate(rng, &mut stream);
        (start, stream)
    });
}

#[test]
fn random_bytes() {
    fuzz_cases(4, 6000, |rng| {
        let start = if rng.one_in(2) {
            Start::Handshake
        } else {
            Start::Transmission
        };
        let len = rng.below(160) as usize;
        (start, (0..len).map(|_| rng.byte()).collect())
    });
}

/// Byte streams whose length fields claim far more than is sent: the server
/// must wait (or skip), never allocate for the claim.
#[test]
fn huge_lengths_are_not_allocated() {
    use nbdlite::client_proto::{OPT_LIST, client_flags, option, option_header, request};
    let cfg = Config::from_bits(2, 0); // extended headers
    let mut hs = client_flags(3).to_vec();
    hs.extend(option(1000, &[]));
    hs.extend(option_header(OPT_LIST, u32::MAX));
    hs.extend_from_slice(&[0; 100]);
    every_split(&cfg, Start::Handshake, &hs);
    for (ext, len) in [
        (true, 1 << 40),
        (true, 63 << 20),
        (false, u64::from(u32::MAX)),
    ] {
        let cfg = Config::from_bits(if ext { 2 } else { 0 }, 0);
        let mut s = request(ext, 0, 1, 7, 0, len);
        s.extend_from_slice(&[0; 64]);
        every_split(&cfg, Start::Transmission, &s);
    }
}

/// Writes the fuzz targets' seed corpora (`fuzz/seeds/`). Run by hand:
/// `cargo test --test random_streams -- --ignored write_fuzz_seeds`.
#[test]
#[ignore]
fn write_fuzz_seeds() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let mut rng = Rng::new(5);
    for (target, start) in [
        ("handshake", Start::Handshake),
        ("transmission", Start::Transmission),
    ] {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("a writable fuzz/seeds");
        for i in 0..24 {
            let (a, b) = (rng.byte(), rng.byte());
            let cfg = Config::from_bits(a, b);
            let stream = match start {
                Start::Handshake => {
                    let (mut s, style) = handshake(&mut rng, &cfg);
                    s.extend(requests(&mut rng, style, cfg.size, 3, 600));
                    s
                }
                Start::Transmission => requests(&mut rng, cfg.style, cfg.size, 6, 600),
            };
            let chunks: Vec<usize> = (0..i % 4).map(|_| 1 + rng.below(30) as usize).collect();
            let input = encode(a, b, &chunks, &stream);
            let _: Run = run(&cfg, start, &stream, &chunks);
            std::fs::write(dir.join(format!("seed-{i:02}")), input).expect("seed written");
        }
    }
}
