//! The stock `rdask-node` binary: the built-in task functions and nothing else.

/// mimalloc: a quarter fewer instructions per task in the node core than glibc's allocator
/// (`core-cost` under callgrind, BENCHMARKS.md). A node binary of your own may use it too.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    rdask_node::main_with(rdask_node::allocator::Declared::MiMalloc)
}
