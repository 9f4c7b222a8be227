//! Task graphs for rdask: the pure data layer every other crate builds on.
//!
//! This crate holds no I/O, no clock and no randomness. It defines
//!
//! - [`Key`]: the name of one task and of its result, `prefix-<hash>`; the
//!   prefix groups tasks in progress displays;
//! - [`TaskSpec`] and [`Arg`]: a function name, literal arguments (already
//!   encoded) and references to the results of other tasks;
//! - [`Graph`] and [`Graph::validate`]: rejects a cycle, a reference to a
//!   missing key, a duplicate key or an unknown function with a typed
//!   [`GraphError`] naming the key, and computes a deterministic priority order
//!   ([`ValidGraph`]);
//! - the task function registry ([`registry`]) filled at link time by
//!   `#[rdask::task]`, and [`TaskFn`], the typed handle that macro creates;
//! - the wire encoding of values ([`value`]): postcard.
//!
//! ```
//! use rdask_graph::{Arg, Graph, Key, TaskSpec, value};
//!
//! let a = TaskSpec::new(Key::from("inc-1"), "demo::inc", vec![Arg::Value(value::encode(&1i64).unwrap())]);
//! let b = TaskSpec::new(Key::from("inc-2"), "demo::inc", vec![Arg::Key(Key::from("inc-1"))]);
//! let graph = Graph::new(vec![b, a]);
//! let valid = graph.validate(|_| false, |f| f == "demo::inc").unwrap();
//! // dependencies come first in the priority order
//! assert_eq!(valid.order_keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["inc-1", "inc-2"]);
//! ```

pub mod bounded;
pub mod detached;
mod error;
pub mod fuse;
mod graph;
mod key;
pub mod pack;
pub mod registry;
mod spec;
mod taskfn;
pub mod value;

pub use error::{GraphError, TaskError, TaskErrorKind};
pub use graph::{Graph, ValidGraph};
pub use key::{GraphId, Key};
pub use registry::{Registry, TaskEntry, TaskFailure};
pub use spec::{Arg, Placement, TaskSpec};
pub use taskfn::TaskFn;

/// Items used by code that `#[rdask::task]` generates. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::registry::{TaskEntry, TaskFailure, decode_arg, encode_output};
    pub use crate::taskfn::TaskFn;
    pub use bytes::Bytes;
    pub use inventory;
}
