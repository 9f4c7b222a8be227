//! # rdask
//!
//! A Dask-like distributed task cluster for Rust with no central scheduler: every node runs
//! the same binary, and any node is an entry point for clients.
//!
//! - Mark plain functions with [`#[rdask::task]`](macro@task) to make them runnable on the
//!   cluster.
//! - [`Client::local()`] starts an in-process cluster; [`Client::connect`] reaches a
//!   running `rdask-node`.
//! - [`Client::submit`] and [`Client::map`] return [`Future`]s; futures passed as
//!   arguments become dependencies resolved on the cluster; [`Client::gather`] and
//!   [`Future::result`] (or `fut.await`) bring values back.
//!
//! ```
//! #[rdask::task]
//! fn inc(x: i64) -> i64 {
//!     x + 1
//! }
//!
//! #[rdask::task]
//! fn add(a: i64, b: i64) -> i64 {
//!     a + b
//! }
//!
//! # fn main() -> rdask::Result<()> {
//! let client = rdask::Client::local()?;
//! let xs = client.map(inc, 0..10);           // ten tasks
//! let total = client.submit(add, (&xs[0], &xs[9]));
//! assert_eq!(rdask::block_on(total.result())?, 1 + 10);
//! assert_eq!(inc(1), 2);                     // still a plain function
//! # Ok(())
//! # }
//! ```

// Lets `#[rdask::task]` be used inside this crate too.
extern crate self as rdask;

mod address;
pub mod blocking;
mod client;
mod copies;
mod datasets;
mod delayed;
mod error;
mod future;
mod options;
mod packed;
mod wait;
mod worker;

pub use address::parse_address;
pub use client::Client;
pub use delayed::{Delayed, delayed, delayed_with};
pub use error::{Error, Result};
pub use future::{Args, Future, FutureStatus, IntoArg};
pub use options::TaskOptions;
pub use rdask_actors::protocol::NodeStatus;
pub use rdask_gossip::{LoadSummary, MemberInfo, MemberState};
pub use rdask_graph::{GraphError, Key, TaskError, TaskErrorKind, TaskFn};
pub use wait::{AsCompleted, ProgressSummary, ReturnWhen, Waited};
pub use worker::{get_worker, secede, worker_client};

/// Registers a plain Rust function as a task function that the cluster can run.
///
/// ```
/// #[rdask::task]
/// fn parse(text: String) -> Result<u64, std::num::ParseIntError> {
///     text.trim().parse()
/// }
/// # assert_eq!(parse("7".into()), Ok(7));
/// ```
///
/// - Arguments and the value are any serde types, moved by value (owned types:
///   `String`, not `&str`). A function returning `Result<T, E>` gives futures of `T`; an
///   `Err` becomes a task error carrying `E`'s `Display`.
/// - The function is registered under the stable name `crate::module::function` (set
///   another with `#[rdask::task(name = "…")]`) with no call needed in `main`; its keys
///   are named after it (`parse-…`; set another with `prefix = "…"`).
/// - It stays callable as a normal function: the macro turns the name into a typed handle
///   that dereferences to the function.
/// - It cannot be `async`, generic, or a method.
///
/// A node runs only the functions compiled into its binary: the local cluster runs every
/// task function of the program; a separate node needs a binary built with the crate that
/// defines them (see [`node_main!`]).
pub use rdask_macros::task;

/// Task functions built into every node (`rdask-node` runs these and nothing else).
pub mod builtins {
    pub use rdask_node::builtins::*;
}

/// The whole program of a node binary that carries your task functions, without choosing
/// its allocator: prefer [`node_main!`], which also makes mimalloc the allocator as in the
/// stock `rdask-node` (with the system's allocator large values move about 3× slower). Call
/// this from your own `main` when you set a global allocator yourself:
///
/// ```no_run
/// // src/bin/my-node.rs
/// use my_tasks as _; // the crate with your #[rdask::task] functions
///
/// #[global_allocator]
/// static ALLOC: std::alloc::System = std::alloc::System; // your choice
///
/// fn main() {
///     rdask::node_main()
/// }
/// # mod my_tasks {}
/// ```
///
/// It accepts the same command line as `rdask-node` (`--listen`, `--join`, `--nthreads`,
/// …). Name every crate whose task functions the node should carry (`use that_crate as
/// _;`): a crate that is never named is left out by the linker with its functions. A node
/// started this way warns that it may run on the system's allocator.
pub fn node_main() {
    rdask_node::main()
}

/// Declares a node binary's `main` and its allocator (mimalloc, as the stock `rdask-node`
/// uses): the whole program of a node that carries your task functions.
///
/// ```no_run
/// // src/bin/my-node.rs
/// use my_tasks as _; // the crate with your #[rdask::task] functions
///
/// rdask::node_main!();
/// # mod my_tasks {}
/// ```
///
/// The binary takes the same command line as `rdask-node`. See [`node_main()`](fn@node_main)
/// to choose another allocator.
#[macro_export]
macro_rules! node_main {
    () => {
        #[global_allocator]
        static RDASK_NODE_ALLOCATOR: $crate::__private::MiMalloc = $crate::__private::MiMalloc;

        fn main() {
            $crate::__private::node_main_with_mimalloc()
        }
    };
}

/// Runs a future to completion on the current thread: a small bridge for programs that
/// are not async themselves (`rdask::block_on(fut.result())`).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    futures::executor::block_on(future)
}

/// Items used by code that `#[rdask::task]` generates. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use rdask_graph::__private::*;
    pub use rdask_node::allocator::MiMalloc;

    /// `main` of a node declared by `rdask::node_main!()`.
    pub fn node_main_with_mimalloc() {
        rdask_node::main_with(rdask_node::allocator::Declared::MiMalloc)
    }
}

/// The README's examples, compiled and run as doctests so that they stay true.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
