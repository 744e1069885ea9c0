//! `--filter=limit`: at most N clients at once (default 1; 0: no limit), as
//! nbdkit's. A client beyond the limit is turned away as it connects (its
//! socket closed before the greeting); one that got in while others were
//! still negotiating is refused as it chooses the export (GO gets an error,
//! EXPORT_NAME ends the connection), so slow handshakes cannot get more in.
//! A client counts once it has opened the export.

use std::time::Instant;

use super::params::Param;
use super::params::Params;
use super::{Conn, Filter};

pub const PARAMS: &[Param] = &[Param::new("limit", "N", "clients at once (1; 0: no limit)")];

#[derive(Debug)]
struct Limit {
    /// 0: none.
    limit: usize,
    /// Clients that opened the export and have not gone.
    open: usize,
}

pub fn build(params: &Params) -> Result<Box<dyn Filter>, String> {
    let limit = params
        .parsed("limit", |v| {
            v.parse::<u32>()
                .map_err(|_| format!("could not parse '{v}' as a number of clients"))
        })?
        .unwrap_or(1);
    Ok(Box::new(Limit {
        limit: limit as usize,
        open: 0,
    }))
}

impl Limit {
    fn full(&self) -> bool {
        self.limit > 0 && self.open >= self.limit
    }
}

impl Filter for Limit {
    fn name(&self) -> &'static str {
        "limit"
    }

    fn connect(&mut self, _: Instant) -> bool {
        if self.full() {
            log::warn!(
                "limit: too many clients connected ({}), connection rejected",
                self.open
            );
            return false;
        }
        true
    }

    fn may_open(&self) -> bool {
        !self.full()
    }

    fn open(&mut self, _: Conn, _: Instant) -> Option<Instant> {
        self.open += 1;
        None
    }

    fn closed(&mut self, _: Conn, _: Instant) {
        self.open = self.open.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(v: &str) -> Result<Box<dyn Filter>, String> {
        build(&Params(vec![("limit".into(), v.into())]))
    }

    #[test]
    fn clients_beyond_the_limit_are_refused_until_one_goes() {
        let now = Instant::now();
        let mut f = limit("2").expect("valid");
        let (a, b) = (Conn { id: 1 }, Conn { id: 2 });
        assert!(f.connect(now) && f.may_open());
        f.open(a, now);
        f.open(b, now);
        assert!(!f.connect(now) && !f.may_open());
        f.closed(a, now);
        assert!(f.connect(now) && f.may_open());
    }

    #[test]
    fn zero_is_no_limit_and_one_the_default() {
        let now = Instant::now();
        let mut none = limit("0").expect("valid");
        for id in 0..100 {
            none.open(Conn { id }, now);
        }
        assert!(none.connect(now));
        let mut one = build(&Params::default()).expect("valid");
        one.open(Conn { id: 1 }, now);
        assert!(!one.may_open());
        assert!(limit("-1").is_err());
        assert!(limit("many").is_err());
    }
}
