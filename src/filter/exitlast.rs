//! `--filter=exitlast`: the server exits once the last client has gone, as
//! nbdkit's: not before the first one came (a client counts once it has
//! opened the export), so a superserver or a script can start it ahead.

use std::time::Instant;

use super::params::Param;
use super::params::Params;
use super::{Conn, Filter};

pub const PARAMS: &[Param] = &[];

#[derive(Debug, Default)]
struct ExitLast {
    /// Clients that opened the export and have not gone.
    open: usize,
    /// The last one has gone.
    done: bool,
}

pub fn build(_: &Params) -> Result<Box<dyn Filter>, String> {
    Ok(Box::new(ExitLast::default()))
}

impl Filter for ExitLast {
    fn name(&self) -> &'static str {
        "exitlast"
    }

    fn open(&mut self, _: Conn, _: Instant) -> Option<Instant> {
        self.open += 1;
        None
    }

    fn closed(&mut self, _: Conn, _: Instant) {
        self.open = self.open.saturating_sub(1);
        if self.open == 0 {
            log::debug!("exitlast: the last client has gone");
            self.done = true;
        }
    }

    fn wants_exit(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_when_the_last_client_goes_not_before_the_first() {
        let now = Instant::now();
        let mut f = build(&Params::default()).expect("valid");
        assert!(!f.wants_exit(), "no client yet");
        let (a, b) = (Conn { id: 1 }, Conn { id: 2 });
        f.open(a, now);
        f.open(b, now);
        f.closed(a, now);
        assert!(!f.wants_exit(), "one is left");
        f.closed(b, now);
        assert!(f.wants_exit());
    }
}
