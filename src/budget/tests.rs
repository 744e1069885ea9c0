use super::*;

const MIB: usize = 1 << 20;
const KIB: usize = 1 << 10;

fn who(n: u64) -> Origin {
    Origin::new(n as usize, n)
}

#[test]
fn the_connections_share_and_the_largest_request_follow_the_limit() {
    let mut b = Budget::new(256 * MIB);
    let fixed = 512 * KIB;
    let n = b.connection_limit(fixed);
    assert_eq!(n, 192 * MIB / (fixed + FLOOR));
    b.set_connections(n, fixed);
    assert!(b.shared() >= 64 * MIB && b.shared() < 65 * MIB);
    assert_eq!(b.largest_request(), 32 * MIB);
    // Fewer connections leave more to share; more than the limit, no less.
    b.set_connections(10, fixed);
    assert_eq!(b.shared(), 256 * MIB - 10 * (fixed + FLOOR));
    b.set_connections(1 << 40, fixed);
    assert_eq!(b.shared(), 64 * MIB);
    let mut small = Budget::new(0);
    assert_eq!(small.limit(), MIN_BUDGET);
    small.set_connections(small.connection_limit(fixed), fixed);
    assert_eq!(small.largest_request(), 512 * KIB);
    assert_eq!(Budget::new(MIN_BUDGET).connection_limit(64 * MIB), 1);
    assert!(Budget::unlimited().largest_request() >= 64 * MIB);
}

#[test]
fn within_its_floor_a_connection_never_waits() {
    let mut b = Budget::new(64 * MIB);
    b.set_connections(16, 0);
    let mut c = Charge::default();
    b.take(b.shared()); // others hold all of the shared part
    assert!(c.admit(&mut b, who(1), 0, 64 * KIB), "a handshake's read");
    c.settle(&mut b, 128 * KIB);
    assert!(
        c.admit(&mut b, who(1), 128 * KIB, 4 * KIB),
        "a small request"
    );
    assert!(!c.admit(&mut b, who(1), 128 * KIB, MIB), "past its floor");
    assert_eq!(b.waiting(), 1);
    assert!(
        c.admit(&mut b, who(1), 128 * KIB, 64),
        "small again: it leaves"
    );
    assert_eq!(b.waiting(), 0);
}

#[test]
fn the_heaviest_holder_waits_first() {
    let mut b = Budget::new(64 * MIB);
    let shared = b.shared();
    b.take(shared);
    let (mut heavy, mut light, mut late) =
        (Charge::default(), Charge::default(), Charge::default());
    assert!(!heavy.admit(&mut b, who(1), 8 * MIB, MIB));
    assert!(!light.admit(&mut b, who(2), MIB, MIB));
    assert!(!late.admit(&mut b, who(3), MIB, MIB), "as light, but later");
    b.give(MIB);
    assert_eq!(b.ready(), Some(who(2)), "the lightest holder first");
    light.granted();
    assert!(light.admit(&mut b, who(2), MIB, MIB));
    b.take(MIB);
    b.resumed();
    assert_eq!(b.ready(), None, "nothing fits");
    b.give(2 * MIB);
    assert_eq!(b.ready(), Some(who(3)));
    late.granted();
    // A newcomer holding more than the front waits behind it; the front,
    // once resumed, goes ahead of everyone.
    let mut other = Charge::default();
    assert!(!other.admit(&mut b, who(4), 2 * MIB, MIB));
    assert!(late.admit(&mut b, who(3), MIB, MIB));
    b.take(MIB);
    b.resumed();
    assert_eq!(b.ready(), Some(who(4)), "before the heaviest");
    other.granted();
    assert!(other.admit(&mut b, who(4), 2 * MIB, MIB));
    b.resumed();
    assert_eq!(b.waiting(), 1);
}

#[test]
fn a_large_request_at_the_front_is_not_passed() {
    let mut b = Budget::new(64 * MIB);
    b.take(b.shared() - MIB);
    let (mut big, mut small) = (Charge::default(), Charge::default());
    assert!(!big.admit(&mut b, who(1), 0, 16 * MIB));
    assert!(
        !small.admit(&mut b, who(2), MIB, 512 * KIB),
        "it fits, but the large one asked first and holds less"
    );
    assert_eq!(b.ready(), None);
    b.give(16 * MIB);
    assert_eq!(b.ready(), Some(who(1)));
}

#[test]
fn a_gone_connection_leaves_its_place_and_its_lent_buffers_stay_counted() {
    let mut b = Budget::new(64 * MIB);
    let mut c = Charge::default();
    c.settle(&mut b, FLOOR + MIB);
    assert_eq!(b.used(), MIB);
    b.take(b.shared());
    assert!(!c.admit(&mut b, who(7), FLOOR + MIB, MIB));
    c.close(&mut b, 4 * MIB); // its READs still in the engine
    assert_eq!(b.waiting(), 0);
    let others = b.shared();
    assert_eq!(b.used(), others + 4 * MIB);
    b.give(4 * MIB); // reaped
    assert_eq!(b.used(), others);
    assert_eq!(b.ready(), None);
}
