//! Your own node binary, carrying your task functions. It takes the same command line as
//! `rdask-node`:
//!
//! ```text
//! cargo run --release --example own_node -- --listen /ip4/127.0.0.1/tcp/4002
//! cargo run --release --example own_client -- tcp://127.0.0.1:4002
//! ```

#[path = "shared/tasks.rs"]
mod tasks;

// `main`, with mimalloc as the allocator (as the stock `rdask-node`).
rdask::node_main!();
