//! Messages between a client and the node it talks to (`/rdask/client/1`).

use bytes::Bytes;
use rdask_gossip::{LoadSummary, MemberInfo, MemberState};
use rdask_graph::{GraphError, GraphId, Key, TaskError, TaskSpec};
use serde::{Deserialize, Serialize};

/// One graph of a [`ClientRequest::Submit`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphSubmission {
    /// The graph's id, chosen by the client: submitting the same id again is a no-op.
    pub id: GraphId,
    /// Its tasks.
    pub tasks: Vec<TaskSpec>,
    /// Keys the client holds futures for: their results are kept until released.
    pub keep: Vec<Key>,
}

/// A request from a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequest {
    /// The first message: the client's protocol version.
    Hello {
        /// [`rdask_gossip::PROTOCOL_VERSION`] of the client.
        protocol: u32,
        /// The client's rdask version, for logs.
        version: String,
    },
    /// Graphs to run, in order (a later one may depend on an earlier one).
    Submit {
        /// The graphs.
        graphs: Vec<GraphSubmission>,
    },
    /// The results of these keys: answered when all are finished, or after `wait_ms`
    /// milliseconds with [`KeyResult::Pending`] for those that are not.
    Gather {
        /// The keys, answered in this order.
        keys: Vec<Key>,
        /// How long the node may hold the request.
        wait_ms: u32,
    },
    /// The client dropped its futures for these keys.
    Release {
        /// The keys (one release per earlier `keep`).
        keys: Vec<Key>,
    },
    /// What the node knows of the cluster.
    Info,
}

/// The outcome of one graph of a [`ClientRequest::Submit`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SubmitOutcome {
    /// Accepted (or already known by its id).
    Accepted,
    /// Rejected: nothing of it runs.
    Rejected(GraphError),
}

/// The state of one key in a [`ClientResponse::Results`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyResult {
    /// The encoded value.
    Value(Bytes),
    /// The task, or one it depends on, failed.
    Error(TaskError),
    /// Not finished yet.
    Pending,
    /// The node has no such key (never submitted, or released).
    Unknown,
}

/// What a node reports about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Its member record.
    pub member: MemberInfo,
    /// Its load (for other nodes: as last gossiped).
    pub load: LoadSummary,
    /// Alive, or declared down (kept for a grace period, then forgotten).
    pub state: MemberState,
    /// For a down member: milliseconds since it was declared down.
    pub down_for_ms: u64,
}

/// A reply to a [`ClientRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientResponse {
    /// Answer to `Hello`: the node the client talks to.
    Welcome(NodeStatus),
    /// Answer to `Submit`: one outcome per graph, in order.
    Submitted(Vec<SubmitOutcome>),
    /// Answer to `Gather`: one result per key, in order.
    Results(Vec<KeyResult>),
    /// Answer to `Release`.
    Released,
    /// Answer to `Info`: the members of the cluster this node knows, itself first.
    Info(Vec<NodeStatus>),
    /// The request could not be served (e.g. an incompatible protocol version).
    Refused(String),
}
