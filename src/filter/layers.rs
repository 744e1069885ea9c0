//! Filters that are layers of storage over the backend rather than stages of
//! the request path (cow: its overlay is I/O of its own, which a stage, which
//! only judges requests, cannot do). At start-up they are sorted out of the
//! command line's filters and put over the backend, nearest it first; what
//! the server then serves from is the top layer, and the stages run above it.

use std::io;

use super::Filter;
use crate::backend::Backend;
use crate::error::Error;

/// A layer of storage that serves in the place of what is below it.
pub trait Layer {
    /// Nothing is ever written through this layer: the backend is opened
    /// read-only.
    fn read_only_below(&self) -> bool;
    /// Puts the layer over `below`. May block (start-up only); Err is one
    /// line for the user.
    fn wrap(self: Box<Self>, below: Box<dyn Backend>) -> Result<Box<dyn Backend>, String>;
}

/// The layers of the command line's filters, nearest the backend first,
/// each with its filter's name.
pub struct Layers(Vec<(&'static str, Box<dyn Layer>)>);

impl Layers {
    /// Takes the layers out of `filters` (first nearest the client), which
    /// keeps the stages in their order.
    pub fn sort(filters: &mut Vec<Box<dyn Filter>>) -> Layers {
        let mut layers = Vec::new();
        let mut stages = Vec::with_capacity(filters.len());
        for mut f in filters.drain(..) {
            match f.layer() {
                Some(layer) => layers.push((f.name(), layer, stages.len())),
                None => stages.push(f),
            }
        }
        // A stage named after a layer would be below it in nbdkit; here every
        // stage runs above every layer. Say so, once per stage.
        for (name, _, above) in &layers {
            for s in &stages[*above..] {
                log::warn!(
                    "the {} filter acts above the {name} filter, which is a layer over the backend",
                    s.name()
                );
            }
        }
        *filters = stages;
        Layers(layers.into_iter().rev().map(|(n, l, _)| (n, l)).collect())
    }

    /// Whether the backend must be opened read-only.
    pub fn read_only_below(&self) -> bool {
        self.0.iter().any(|(_, l)| l.read_only_below())
    }

    /// Puts every layer over `backend`, nearest it first.
    pub fn wrap(self, mut backend: Box<dyn Backend>) -> Result<Box<dyn Backend>, Error> {
        for (name, layer) in self.0 {
            backend = layer
                .wrap(backend)
                .map_err(|e| Error::Setup(name.into(), io::Error::other(e)))?;
        }
        Ok(backend)
    }
}
