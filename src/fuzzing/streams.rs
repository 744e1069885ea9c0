//! Byte streams a client could send, built from a seeded xorshift generator:
//! for the randomized tests, and for the fuzz targets' seed corpora.

use crate::client_proto::*;
use crate::proto::reply::Style;

use super::Config;

/// xorshift64: small, seeded, the same on every platform.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // xorshift has one fixed point; mix the seed so 0 is usable too.
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform enough in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True one time in `n`.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
}

/// A plausible handshake: client flags, some options (valid, invalid and
/// unknown ones), then GO or EXPORT_NAME. Returns the stream and the reply
/// style the server will have agreed to, so requests can follow.
pub fn handshake(rng: &mut Rng, cfg: &Config) -> (Vec<u8>, Style) {
    let mut v = client_flags(*rng.pick(&[3u32, 3, 1, 2, 0])).to_vec();
    let mut style = Style::Simple;
    for _ in 0..rng.below(6) {
        let (opt, data) = some_option(rng);
        match opt {
            OPT_SR if data.is_empty() && !cfg.no_sr && style == Style::Simple => {
                style = Style::Structured
            }
            OPT_EH if data.is_empty() && !cfg.no_sr => style = Style::Extended,
            _ => {}
        }
        v.extend(option(opt, &data));
    }
    let name = *rng.pick(&[&b""[..], &b"disk"[..], &b"other"[..]]);
    if style != Style::Extended && rng.one_in(4) {
        v.extend(option(OPT_EXPORT_NAME, name));
    } else {
        v.extend(option(
            OPT_GO,
            &info_data(name, &[INFO_NAME, INFO_BLOCK_SIZE]),
        ));
    }
    (v, style)
}

/// One option, mostly well-formed.
fn some_option(rng: &mut Rng) -> (u32, Vec<u8>) {
    let name = *rng.pick(&[&b""[..], &b"disk"[..], &b"nope"[..]]);
    let queries: &[&[u8]] = match rng.below(3) {
        0 => &[],
        1 => &[BASE_ALLOCATION],
        _ => &[b"base:", b"qemu:dirty-bitmap:x"],
    };
    match rng.below(11) {
        0 => (OPT_LIST, Vec::new()),
        1 => (OPT_SR, Vec::new()),
        2 => (OPT_EH, Vec::new()),
        3 => (OPT_INFO, info_data(name, &[INFO_NAME, INFO_DESCRIPTION])),
        4 | 5 => (OPT_SET_META, meta_data(name, queries)),
        6 => (OPT_LIST_META, meta_data(name, queries)),
        7 => (OPT_STARTTLS, Vec::new()),
        8 => (
            rng.below(40) as u32,
            vec![rng.byte(); rng.below(9) as usize],
        ),
        9 => (OPT_INFO, vec![0, 0, 0, 200, 1]),
        _ => (OPT_LIST, vec![1]),
    }
}

/// Requests for a session in `style` on an export of `size` bytes: mostly
/// valid, some out of range, misaligned or with bad flags; sometimes ended by
/// DISC. Most lengths (and so WRITE payloads) are at most `max_len` (> 0).
pub fn requests(rng: &mut Rng, style: Style, size: u64, count: u64, max_len: u64) -> Vec<u8> {
    let extended = style == Style::Extended;
    let mut v = Vec::new();
    for cookie in 0..count {
        let kind = *rng.pick(&[
            CMD_READ,
            CMD_READ,
            CMD_WRITE,
            CMD_WRITE,
            CMD_FLUSH,
            CMD_TRIM,
            CMD_ZERO,
            CMD_CACHE,
            CMD_BLOCK_STATUS,
            9,
        ]);
        let len = match rng.below(8) {
            0 => 0,
            1 => size.saturating_sub(rng.below(size.max(1))),
            _ => 1 + rng.below(max_len),
        };
        let offset = match rng.below(8) {
            0 => size.saturating_sub(len / 2),
            1 => u64::MAX - rng.below(4),
            _ => rng.below(size.max(1)),
        } & !(if rng.one_in(2) { 511 } else { 0 });
        let mut flags = *rng.pick(&[0, 0, 0, F_FUA, F_DF, F_REQ_ONE, F_NO_HOLE]);
        if kind == CMD_BLOCK_STATUS && extended && rng.one_in(2) {
            // The payload form: effect length and the one context id.
            flags |= F_PAYLOAD_LEN;
            let payload = block_status_payload(len, &[crate::export::BASE_ALLOCATION_ID]);
            v.extend(request(
                true,
                flags,
                kind,
                cookie,
                offset,
                payload.len() as u64,
            ));
            v.extend(payload);
            continue;
        }
        v.extend(request(extended, flags, kind, cookie, offset, len));
        if kind == CMD_WRITE {
            let fill = rng.byte();
            v.extend(std::iter::repeat_n(fill, len as usize)); // len ≤ size + max_len
        }
    }
    if rng.one_in(2) {
        v.extend(request(extended, 0, CMD_DISC, count, 0, 0));
    }
    v
}

/// Corrupts `v` a little: flipped bits, inserted or deleted bytes, a
/// truncation, or a length field made huge.
pub fn mutate(rng: &mut Rng, v: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(3) {
        if v.is_empty() {
            v.push(rng.byte());
            continue;
        }
        let at = rng.below(v.len() as u64) as usize;
        match rng.below(5) {
            0 => v[at] ^= 1 << rng.below(8),
            1 => v.insert(at, rng.byte()),
            2 => {
                v.remove(at);
            }
            3 => v.truncate(at),
            _ => {
                let end = (at + 4).min(v.len());
                v[at..end].fill(0xff);
            }
        }
    }
}
