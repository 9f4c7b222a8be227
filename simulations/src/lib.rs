//! Deterministic simulation of rdask's state machines.
//!
//! The simulator drives the same [`rdask_actors::NodeCore`] the node runs in production, with virtual
//! time, a virtual pool of task threads and a seeded random number generator. Nothing reads
//! the clock or draws unseeded randomness, so the same seed gives the same run, bit for bit;
//! [`SimReport::trace_hash`] proves it.
//!
//! The scenario [`node_graphs`] submits random graphs (random shapes, tasks that fail,
//! inputs shared across graphs), gathers with timeouts, releases futures at random times,
//! and checks what a user relies on:
//!
//! - every kept key ends with the value a direct, sequential evaluation gives, or with the
//!   error of the first failed task it depends on;
//! - no task runs twice, and no task runs before its inputs are finished;
//! - a gather is answered exactly once, with finished values or `Pending`;
//! - once everything is released, the node holds nothing.
//!
//! The membership scenarios ([`membership`]) run many nodes' [`rdask_gossip::Membership`]
//! cores over a simulated network with latency, reordering, duplication, loss, partitions,
//! crashes and restarts, encoding every message through the real codec.

pub mod cluster;
mod graphs;
pub mod membership;

pub use cluster::{
    ClusterReport, Efficiency, SHAPES, Shape, graphs_chaos, graphs_chaos_between, steal_efficiency,
};
pub use graphs::{SimConfig, SimReport, node_graphs};
pub use membership::{MembershipReport, SCENARIOS, run_membership};
