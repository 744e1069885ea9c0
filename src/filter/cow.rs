//! `--filter=cow`: its parameters, checked on the command line; the overlay
//! itself (`crate::cow`) is a layer of storage, made at start-up.

use std::path::PathBuf;

use super::params::Param;
use super::params::{Params, boolean, size};
use super::{Filter, Layer};
use crate::backend::Backend;
use crate::cow::{Cow, DEFAULT_BLOCK, MAX_BLOCK, MIN_BLOCK, OnRead, Settings};

pub const PARAMS: &[Param] = &[
    Param::new(
        "cow-block-size",
        "SIZE",
        "the overlay's block: a power of two, 4K to 32M (64K)",
    ),
    Param::new(
        "cow-on-read",
        "false|true|/PATH",
        "reads copy blocks up too (while PATH exists)",
    ),
    Param::new("cow-on-cache", "BOOL", "cache requests copy blocks up"),
    Param::new(
        "cow-per-client",
        "BOOL",
        "an overlay for each connection, dropped when it goes",
    ),
];

/// The filter as the command line builds it: its settings, until start-up
/// takes them for the layer.
struct CowFilter(Option<Settings>);

pub fn build(params: &Params) -> Result<Box<dyn Filter>, String> {
    Ok(Box::new(CowFilter(Some(settings(params)?))))
}

fn settings(params: &Params) -> Result<Settings, String> {
    let block_size = params
        .parsed("cow-block-size", block)?
        .unwrap_or(DEFAULT_BLOCK);
    let on_read = params
        .parsed("cow-on-read", on_read)?
        .unwrap_or(OnRead::Never);
    Ok(Settings {
        block_size,
        on_read,
        on_cache: params.parsed("cow-on-cache", boolean)?.unwrap_or(false),
        per_client: params.parsed("cow-per-client", boolean)?.unwrap_or(false),
    })
}

fn block(s: &str) -> Result<u64, String> {
    let n = size(s)?;
    if !n.is_power_of_two() || !(MIN_BLOCK..=MAX_BLOCK).contains(&n) {
        return Err(format!("'{s}' is not a power of two from 4K to 32M"));
    }
    Ok(n)
}

fn on_read(s: &str) -> Result<OnRead, String> {
    if s.starts_with('/') {
        return Ok(OnRead::While(PathBuf::from(s)));
    }
    match boolean(s) {
        Ok(true) => Ok(OnRead::Always),
        Ok(false) => Ok(OnRead::Never),
        Err(_) => Err(format!("'{s}' is not true, false or an absolute path")),
    }
}

impl Filter for CowFilter {
    fn name(&self) -> &'static str {
        "cow"
    }

    fn layer(&mut self) -> Option<Box<dyn Layer>> {
        self.0
            .take()
            .map(|s| Box::new(CowLayer(s)) as Box<dyn Layer>)
    }
}

struct CowLayer(Settings);

impl Layer for CowLayer {
    fn read_only_below(&self) -> bool {
        true
    }

    fn wrap(self: Box<Self>, below: Box<dyn Backend>) -> Result<Box<dyn Backend>, String> {
        Ok(Box::new(Cow::new(self.0, below)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(kv: &[(&str, &str)]) -> Result<Settings, String> {
        let p = kv.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        settings(&Params(p.collect()))
    }

    #[test]
    fn parameters() {
        let s = parse(&[]).unwrap();
        assert_eq!(s.block_size, 64 << 10);
        assert_eq!(
            (s.on_read, s.on_cache, s.per_client),
            (OnRead::Never, false, false)
        );
        let s = parse(&[
            ("cow-block-size", "4M"),
            ("cow-on-read", "/run/warm"),
            ("cow-on-cache", "true"),
            ("cow-per-client", "yes"),
        ])
        .unwrap();
        assert_eq!(s.block_size, 4 << 20);
        assert_eq!(s.on_read, OnRead::While("/run/warm".into()));
        assert!(s.on_cache && s.per_client);
        assert_eq!(
            parse(&[("cow-on-read", "on")]).unwrap().on_read,
            OnRead::Always
        );
        for (k, v) in [
            ("cow-block-size", "3000"),
            ("cow-block-size", "2K"),
            ("cow-block-size", "64M"),
            ("cow-on-read", "relative/path"),
            ("cow-per-client", "sometimes"),
        ] {
            let e = parse(&[(k, v)]).unwrap_err();
            assert!(e.starts_with(k), "{e}");
        }
    }

    #[test]
    fn a_layer_once() {
        let mut f = build(&Params::default()).unwrap();
        assert!(f.layer().is_some());
        assert!(f.layer().is_none(), "taken");
    }
}
