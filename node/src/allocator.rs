//! The allocator of node binaries: mimalloc in the stock `rdask-node` and in a node declared
//! with `rdask::node_main!()`.
//!
//! With glibc's allocator a node moves large values about three times slower and spends a
//! quarter more instructions per tiny task: BENCHMARKS.md.

pub use mimalloc::MiMalloc;

/// What a node binary says about its allocator when it starts (see [`crate::main_with`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Declared {
    /// The binary declared mimalloc (the stock node, `rdask::node_main!()`).
    MiMalloc,
    /// The binary did not say: the system's allocator, unless it set one of its own.
    Unknown,
}
