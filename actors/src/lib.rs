//! The state machines of an rdask node and their ractor shells.
//!
//! - [`NodeCore`] (module `core`) is the pure state machine of one node: it accepts graphs,
//!   tracks every task's state, decides which ready tasks start, stores results and answers
//!   the client. It does no I/O, reads no clock and spawns nothing: inputs come in through
//!   `handle_*` methods, outputs leave through `take_*` methods, in the order documented on
//!   the type.
//! - [`TaskPool`] runs task functions on dedicated OS threads, never on the async runtime.
//! - [`NodeActor`] is the thin ractor shell that feeds the core from client requests,
//!   finished tasks, batches from other nodes, the gossiped members and a 25 ms clock, and
//!   drains its outputs to the reply channels, the pool and the network ([`PeerSend`]).
//! - [`GossipActor`] is the ractor shell of the gossip core (membership and the replicated
//!   cluster state): it hands it datagrams, timers and the clock, and sends what it asks.
//! - [`protocol`] holds the messages of the client protocol and of the node-to-node
//!   protocol, shared by the in-process client and the network codecs.

mod core;
mod gossip_shell;
mod pool;
pub mod protocol;
mod shell;

pub use crate::core::{
    CoreStats, DEFAULT_MAX_TASKS_PER_SUBMIT, Job, NodeCore, OwnerWrite, PeerUpdate, RequestId,
    SESSION_GRACE_MS, TaskDone,
};
pub use gossip_shell::{
    DatasetReply, GossipActor, GossipArgs, GossipMsg, GossipSend, LOAD_EVERY, MembersWatch, now_ms,
    spawn_gossip,
};
pub use pool::{Completions, TaskPool, current_node, secede};
pub use shell::{NodeActor, NodeArgs, NodeMsg, PeerSend, ReplyTo, spawn_node};
