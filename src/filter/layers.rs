//! Filters that are layers of storage over the backend rather than stages of
//! the request path (cow: its overlay is I/O of its own, which a stage, which
//! only judges requests, cannot do). At start-up they are sorted out of the
//! command line's filters and put over the backend, nearest it first; what
//! the server then serves from is the top layer.
//!
//! The order of `--filter`s is kept: stages named before every layer run on
//! the request path, above them; stages named after a layer run below it, on
//! what it asks of the backend (`beneath.rs`), and stay in the stack as
//! proxies for what is not a request.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;

use super::Filter;
use super::beneath::{Proxy, Shared, Staged};
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

/// What goes over the backend.
enum Item {
    /// A layer, with its filter's name.
    Layer(&'static str, Box<dyn Layer>),
    /// Stages between two layers, or between a layer and the backend.
    Stages(Shared),
}

/// The layers of the command line's filters and the stages below them,
/// nearest the backend first.
pub struct Layers(Vec<Item>);

impl Layers {
    /// Takes the layers, and the stages below them, out of `filters` (first
    /// nearest the client), which keeps the stages above every layer, in
    /// order, and a proxy for each stage taken.
    pub fn sort(filters: &mut Vec<Box<dyn Filter>>) -> Layers {
        let mut items: Vec<Item> = Vec::new();
        let mut below: Vec<Box<dyn Filter>> = Vec::new();
        let mut top = Vec::new();
        for mut f in filters.drain(..) {
            match f.layer() {
                Some(layer) => {
                    close_stages(&mut items, &mut below);
                    items.push(Item::Layer(f.name(), layer));
                }
                None if items.is_empty() => top.push(f),
                None => below.push(f),
            }
        }
        close_stages(&mut items, &mut below);
        for item in &items {
            if let Item::Stages(s) = item {
                top.extend(Proxy::all(s));
            }
        }
        *filters = top;
        items.reverse();
        Layers(items)
    }

    /// Whether the backend must be opened read-only.
    pub fn read_only_below(&self) -> bool {
        self.0.iter().any(|item| match item {
            Item::Layer(_, l) => l.read_only_below(),
            Item::Stages(_) => false,
        })
    }

    /// Puts every layer (and the stages below it) over `backend`, nearest
    /// it first.
    pub fn wrap(self, mut backend: Box<dyn Backend>) -> Result<Box<dyn Backend>, Error> {
        for item in self.0 {
            backend = match item {
                Item::Layer(name, layer) => layer
                    .wrap(backend)
                    .map_err(|e| Error::Setup(name.into(), io::Error::other(e)))?,
                // A stage that cannot start (an offset past the end): one
                // line, as one in front of the layers would be.
                Item::Stages(stages) => {
                    Box::new(Staged::new(stages, backend).map_err(Error::Usage)?)
                }
            };
        }
        Ok(backend)
    }
}

/// The stages gathered since the last layer, as one item.
fn close_stages(items: &mut Vec<Item>, below: &mut Vec<Box<dyn Filter>>) {
    if !below.is_empty() {
        items.push(Item::Stages(Rc::new(RefCell::new(std::mem::take(below)))));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::params::Params;
    use crate::filter::registry::lookup;

    fn built(names: &[&str]) -> Vec<Box<dyn Filter>> {
        let make = |n: &&str| (lookup(n).expect("a filter").build)(&Params::default());
        names.iter().map(|n| make(n).expect("valid")).collect()
    }

    #[test]
    fn stages_keep_their_side_of_a_layer() {
        let mut f = built(&["error", "cow", "delay"]);
        let layers = Layers::sort(&mut f);
        let names: Vec<&str> = f.iter().map(|f| f.name()).collect();
        assert_eq!(names, ["error", "delay"], "delay stays, as a proxy");
        assert!(layers.read_only_below());
        let order: Vec<&str> = layers
            .0
            .iter()
            .map(|i| match i {
                Item::Layer(n, _) => *n,
                Item::Stages(_) => "stages",
            })
            .collect();
        assert_eq!(order, ["stages", "cow"], "nearest the backend first");
        let mut f = built(&["delay", "error"]);
        let layers = Layers::sort(&mut f);
        assert!(layers.0.is_empty() && f.len() == 2 && !layers.read_only_below());
    }
}
