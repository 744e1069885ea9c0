//! `--filter=noextents`: the export looks fully allocated. Block status
//! reports every range as data, and structured READs carry their data
//! whole, never a hole chunk: a client learns nothing of sparseness (as
//! with a file on a filesystem whose holes are slow to find). Nothing per
//! request: it only changes what the export says it can do.

use super::Filter;
use super::params::Param;
use super::params::Params;
use crate::export::Export;

pub const PARAMS: &[Param] = &[];

struct NoExtents;

pub fn build(_: &Params) -> Result<Box<dyn Filter>, String> {
    Ok(Box::new(NoExtents))
}

impl Filter for NoExtents {
    fn name(&self) -> &'static str {
        "noextents"
    }

    fn shape(&mut self, export: &mut Export) {
        export.caps.extents = false;
        export.caps.sparse_reads = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::test_export;

    #[test]
    fn the_export_says_nothing_of_holes() {
        let mut ex = test_export(false, 1);
        build(&Params::default())
            .expect("no parameters")
            .shape(&mut ex);
        assert!(!ex.caps.extents && !ex.caps.sparse_reads);
        assert!(ex.caps.zero, "the rest stays");
    }
}
