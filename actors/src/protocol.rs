//! Messages between a client and the node it talks to (`/rdask/client/1`), and between
//! nodes (`/rdask/node/1`).

use std::sync::Arc;

use bytes::Bytes;
use rdask_gossip::{Dataset, LoadSummary, MemberInfo, MemberState, NodeId, Ownership};
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
    /// This connection carries the client session `session` (sent by a client after
    /// `Hello`, and again after every re-attach): while a connection carries it, the node
    /// that owns the session keeps it. Answered `Attached`.
    Attach {
        /// The client's session (the upper half of its graph ids).
        session: u64,
    },
    /// The client closed: its session ends (sent last, after the release of its futures).
    /// A session that holds published datasets ends once they are unpublished. Answered
    /// `Closed`.
    Close {
        /// The client's session.
        session: u64,
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
    /// One line per key on its state at this node, its owner (for diagnostics).
    Explain {
        /// The keys.
        keys: Vec<Key>,
    },
    /// Which node owns this graph, by the replicated ownership table (recorded per client
    /// session: the upper half of the graph id).
    Owner {
        /// The graph.
        graph: GraphId,
    },
    /// Where these keys stand, at once and without their values.
    Status {
        /// The keys, answered in this order.
        keys: Vec<Key>,
    },
    /// Which nodes hold the values of these keys.
    WhoHas {
        /// The keys, answered in this order.
        keys: Vec<Key>,
    },
    /// Publish results of this client's graphs under a name, readable by any client
    /// through any node until unpublished (Dask's `publish_dataset`). The node must own
    /// `session`. Answered `Published`, or `Refused` with the reason.
    Publish {
        /// The dataset's name.
        name: String,
        /// The client's session (the upper half of its graph ids).
        session: u64,
        /// The result keys.
        keys: Vec<Key>,
    },
    /// Unpublish the dataset `name`, as the replicated table holds it (`dataset`): its
    /// results are released by the owner of its session. Answered `Released`.
    Unpublish {
        /// The dataset's name.
        name: String,
        /// The entry as the client read it (see [`ClientRequest::GetDataset`]).
        dataset: Dataset,
        /// The owner of its session, as the client read it.
        owner: Option<NodeId>,
    },
    /// Copy each finished result of `keys` until `n` nodes hold it (every node when there
    /// are fewer). Answered `Copying` with the copies started.
    Replicate {
        /// The keys.
        keys: Vec<Key>,
        /// Nodes that should hold each.
        n: u32,
    },
    /// Move finished results of `keys` from the nodes holding the most bytes of them to
    /// those holding the least. Answered `Copying` with the moves started.
    Rebalance {
        /// The keys.
        keys: Vec<Key>,
    },
    /// Run again the failed tasks of these keys and the failed tasks they depend on (Dask's
    /// `retry`). Answered `Retried` with the number of tasks run again.
    Retry {
        /// The keys.
        keys: Vec<Key>,
    },
    /// What the node is doing, for the dashboard: answered `Snapshot`.
    Snapshot {
        /// Task-stream events that ended after this time (ms since the Unix epoch).
        events_since_ms: u64,
    },
    /// The tasks of one client session this node owns, with their states and inputs (at
    /// most `limit`, for drawing the graph): answered `Dag`.
    Dag {
        /// The session.
        session: u64,
        /// Most tasks returned.
        limit: u32,
    },
    /// A published dataset: answered `Dataset`.
    GetDataset {
        /// Its name.
        name: String,
    },
    /// The names of the published datasets: answered `Datasets`.
    ListDatasets,
    /// A `Gather` or `Status` of keys that another node owns (a dataset another client
    /// published): the node forwards it to `owner` and relays the answer. Answered like the
    /// inner request; with [`KeyResult::Pending`] or [`KeyStatus::Pending`] for every key
    /// when `owner` cannot be reached (the client asks the table for the owner again).
    Forward {
        /// The node that owns the keys, by the ownership table.
        owner: NodeId,
        /// The gather or status.
        request: ForwardedRequest,
    },
    /// The statuses of `keys` (as [`ClientRequest::Status`]), answered once one of them is
    /// done (finished, failed, released or unknown here), or every one when `all`, or
    /// after `wait_ms`: what `wait` and `as_completed` wait on, woken by the completion.
    AwaitStatus {
        /// The keys, answered in this order.
        keys: Vec<Key>,
        /// Wait for every key, not for the first.
        all: bool,
        /// How long the node may hold the request.
        wait_ms: u32,
    },
}

/// A request one node serves for a client of another (see [`ClientRequest::Forward`] and
/// [`PeerMsg::Forward`]): only these three, so that no request nests in another on the wire
/// (a recursive message type would let a few kilobytes of nesting overflow a decoder's
/// stack).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardedRequest {
    /// As [`ClientRequest::Gather`].
    Gather {
        /// The keys, answered in this order.
        keys: Vec<Key>,
        /// How long the owner may hold the request.
        wait_ms: u32,
    },
    /// As [`ClientRequest::Status`].
    Status {
        /// The keys, answered in this order.
        keys: Vec<Key>,
    },
    /// As [`ClientRequest::AwaitStatus`].
    AwaitStatus {
        /// The keys, answered in this order.
        keys: Vec<Key>,
        /// Wait for every key, not for the first.
        all: bool,
        /// How long the owner may hold the request.
        wait_ms: u32,
    },
}

impl ForwardedRequest {
    /// The request, if it is one that can be forwarded (a gather or a status, waited on or
    /// not).
    pub fn from_request(request: ClientRequest) -> Option<ForwardedRequest> {
        match request {
            ClientRequest::Gather { keys, wait_ms } => {
                Some(ForwardedRequest::Gather { keys, wait_ms })
            }
            ClientRequest::Status { keys } => Some(ForwardedRequest::Status { keys }),
            ClientRequest::AwaitStatus { keys, all, wait_ms } => {
                Some(ForwardedRequest::AwaitStatus { keys, all, wait_ms })
            }
            _ => None,
        }
    }

    /// The keys asked about.
    pub fn keys(&self) -> &[Key] {
        match self {
            ForwardedRequest::Gather { keys, .. }
            | ForwardedRequest::Status { keys }
            | ForwardedRequest::AwaitStatus { keys, .. } => keys,
        }
    }
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
    Value(#[serde(with = "rdask_graph::detached")] Bytes),
    /// The task, or one it depends on, failed.
    Error(TaskError),
    /// Not finished yet.
    Pending,
    /// The node has no such key (never submitted, or released).
    Unknown,
}

/// Where a key stands at its owner (the answer to [`ClientRequest::Status`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyStatus {
    /// Waiting, queued or running.
    Pending,
    /// Its value is in memory on the cluster.
    Finished,
    /// The task, or one it depends on, failed.
    Error(TaskError),
    /// The node has no such key (never submitted, released, or its graph was lost).
    Unknown,
}

/// Limits of a node on what a client sends it (the node's flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLimits {
    /// Largest frame of a message, without its values (`--max-frame-bytes`).
    pub max_frame_bytes: u64,
    /// Largest single value (`--max-value-bytes`).
    pub max_value_bytes: u64,
    /// Most tasks in one submission (`--max-tasks-per-submit`).
    pub max_tasks_per_submit: u64,
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
    /// Answer to `Hello`: the node the client talks to, and its limits (a client checks
    /// what it sends against them, so that a message over a limit is an error at once).
    Welcome(NodeStatus, NodeLimits),
    /// Answer to `Attach`.
    Attached,
    /// Answer to `Close`.
    Closed,
    /// Answer to `Submit`: one outcome per graph, in order.
    Submitted(Vec<SubmitOutcome>),
    /// Answer to `Gather`: one result per key, in order.
    Results(Vec<KeyResult>),
    /// Answer to `Release`.
    Released,
    /// Answer to `Info`: the members of the cluster this node knows, itself first.
    Info(Vec<NodeStatus>),
    /// Answer to `Explain`: a line per key (`None`: the node does not own it).
    Explained(Vec<Option<String>>),
    /// Answer to `Owner`: the ownership entry, if the node knows one.
    Owner(Option<Ownership>),
    /// Answer to `Status`: one per key, in order.
    Statuses(Vec<KeyStatus>),
    /// Answer to `WhoHas`: the nodes holding each key's value, in order (empty: not in
    /// memory, or unknown).
    Holders(Vec<Vec<NodeId>>),
    /// Answer to `Publish`.
    Published,
    /// Answer to `Replicate` and `Rebalance`: the copies started.
    Copying(u64),
    /// Answer to `Retry`: the failed tasks that run again.
    Retried(u64),
    /// Answer to `Snapshot`.
    Snapshot(Box<NodeSnapshot>),
    /// Answer to `Dag`: the tasks, and whether there were more than the limit.
    Dag(Vec<DagNode>, bool),
    /// Answer to `GetDataset`: the entry, and the node that owns its session (by the
    /// ownership table), if published.
    Dataset(Option<(Dataset, Option<NodeId>)>),
    /// Answer to `ListDatasets`: the names, sorted.
    Datasets(Vec<String>),
    /// The request could not be served (e.g. an incompatible protocol version).
    Refused(String),
    /// This node no longer owns the client's graphs: another node took them over while
    /// this one was taken for dead (a partition, a long pause). The client finds the new
    /// owner (the ownership table names it) and asks it again.
    Moved(String),
}

/// One task that ran on a node's task threads: a bar of the dashboard's task stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEvent {
    /// The task.
    pub key: Key,
    /// The task thread (0-based; threads started for seceded tasks come after).
    pub thread: u32,
    /// When it started, in ms since the Unix epoch.
    pub start_ms: u64,
    /// How long it ran, in µs.
    pub duration_us: u64,
    /// Whether it returned a value (not an error or a panic).
    pub ok: bool,
}

/// A value that arrived at a node from another (a task's input, a copy, a gather's value):
/// a mark of the dashboard's task stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferEvent {
    /// The value's key.
    pub key: Key,
    /// The node it came from.
    pub from: NodeId,
    /// Its size.
    pub bytes: u64,
    /// When it arrived, in ms since the Unix epoch.
    pub at_ms: u64,
}

/// Tasks of one key prefix of one client session, at the node that owns them, by state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefixProgress {
    /// The client session.
    pub session: u64,
    /// The key prefix (the task function's name, by default).
    pub prefix: String,
    /// Waiting for inputs (or for a node they may run on).
    pub waiting: u64,
    /// Ready, in the owner's queue.
    pub queued: u64,
    /// Running here or placed on a peer.
    pub processing: u64,
    /// Finished, value in memory.
    pub memory: u64,
    /// Finished, value dropped (nobody needs it).
    pub released: u64,
    /// Failed (or an input failed).
    pub erred: u64,
}

/// One client session whose graphs a node owns.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSummary {
    /// The session (the upper half of its graphs' ids; 0: copies adopted by a take-over).
    pub session: u64,
    /// The ownership epoch (raised by each take-over).
    pub epoch: u64,
    /// Tasks known.
    pub tasks: u64,
    /// Finished ones (value in memory or released).
    pub done: u64,
    /// Failed ones.
    pub erred: u64,
    /// The first few errors, where they were raised.
    pub errors: Vec<TaskError>,
}

/// What a node is doing: its part of the dashboard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSnapshot {
    /// The node, its load and its record.
    pub status: NodeStatus,
    /// Milliseconds since the node started.
    pub uptime_ms: u64,
    /// Its clock (ms since the Unix epoch) when the snapshot was taken.
    pub now_ms: u64,
    /// Counters of what it did.
    pub stats: crate::CoreStats,
    /// Microseconds its task functions ran, in all.
    pub compute_us: u64,
    /// Tasks of the graphs it owns, by session and prefix.
    pub progress: Vec<PrefixProgress>,
    /// The sessions it owns.
    pub sessions: Vec<SessionSummary>,
    /// Tasks that ran here recently (bounded).
    pub events: Vec<TaskEvent>,
    /// Values that arrived here from other nodes recently (bounded).
    pub transfers: Vec<TransferEvent>,
}

/// One task of a graph, for drawing it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DagNode {
    /// The task.
    pub key: Key,
    /// `waiting`, `queued`, `processing`, `memory`, `released` or `erred`.
    pub state: String,
    /// Its inputs, as positions in the same list (inputs outside the list are left out).
    pub deps: Vec<u32>,
}

pub use rdask_gossip::{EPOCH_GENERATION_SHIFT, epoch_generation, next_epoch};

// ----- between nodes (`/rdask/node/1`) ------------------------------------------------------

/// One argument of an [`Assignment`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AssignArg {
    /// An encoded literal value.
    Value(#[serde(with = "rdask_graph::detached")] Bytes),
    /// The result of another task of the same owner, to be fetched from one of its holders.
    Input {
        /// Its key.
        key: Key,
        /// Its size in bytes.
        size: u64,
        /// Nodes that hold it (the owner's best knowledge).
        holders: Vec<NodeId>,
    },
}

/// A task handed to a node to run: by its owner (placement) or by a victim of work stealing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The node that owns the task's graph: completions go there.
    pub owner: NodeId,
    /// The task's key.
    pub key: Key,
    /// The registered function to call.
    pub function: Arc<str>,
    /// Its arguments.
    pub args: Vec<AssignArg>,
    /// Position in the owner's run order (lower runs first).
    pub priority: u64,
    /// Where it may run (stealing respects it).
    pub placement: Option<rdask_graph::Placement>,
    /// Resources it holds while it runs (see [`rdask_graph::TaskSpec::resources`]).
    pub resources: Vec<(Arc<str>, u64)>,
    /// How many times the task changed hands (placement and each steal count one): a
    /// copy with no more hops than one already seen is a stale duplicate.
    pub hops: u32,
    /// Times the function is run again here after it fails.
    pub retries: u8,
}

/// A message from one node to another. Every message is idempotent: a message delivered
/// twice, late or not at all never makes a task run twice; lost ones are made good by the
/// sender's retries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMsg {
    /// Run this task (owner or steal victim → worker).
    Assign(Assignment),
    /// A task of the receiver's graphs finished here (worker → owner).
    Done {
        /// The task.
        key: Key,
        /// Size of the value kept here, in bytes.
        size: u64,
        /// Its error, when it failed (no value is kept).
        error: Option<TaskError>,
        /// How long the function ran, in nanoseconds.
        elapsed_ns: u64,
        /// [`Assignment::hops`] of the copy that ran: a release of the value names at
        /// least as many.
        hops: u32,
    },
    /// This node now holds a copy of a result of the receiver's graphs (worker → owner).
    Holding {
        /// The result.
        key: Key,
        /// Its size in bytes.
        size: u64,
    },
    /// A task of the receiver's graphs was handed to another node by work stealing
    /// (victim → owner).
    Moved {
        /// The task.
        key: Key,
        /// Where it went.
        to: NodeId,
        /// Its [`Assignment::hops`] there.
        hops: u32,
    },
    /// Send me this result (any node → holder).
    Fetch {
        /// Owner of the result's graph.
        owner: NodeId,
        /// The result.
        key: Key,
    },
    /// The answer to a [`PeerMsg::Fetch`]: the value, or `None` when not held here.
    Data {
        /// Owner of the result's graph.
        owner: NodeId,
        /// The result.
        key: Key,
        /// The encoded value.
        #[serde(with = "rdask_graph::detached::option")]
        value: Option<Bytes>,
    },
    /// The answer of an owner asked for a result it no longer knows: whatever waits for it
    /// was released (owner → worker).
    Forgotten {
        /// The result.
        key: Key,
    },
    /// The owner needs these results no more: drop them, or do not run them (owner →
    /// worker; a worker that handed a task to a thief forwards its release there).
    Release {
        /// The owner of the tasks.
        owner: NodeId,
        /// The tasks.
        keys: Vec<Key>,
        /// Assignments of these tasks with at most this many hops are void (one placed
        /// again later has more).
        hops: u32,
    },
    /// This node is idle: hand over up to `want` queued tasks (thief → victim).
    Steal {
        /// Most tasks the thief can take.
        want: u32,
    },
    /// The answer to a [`PeerMsg::Steal`]: the tasks handed over (possibly none).
    Stolen {
        /// The tasks, now the thief's to run.
        tasks: Vec<Assignment>,
        /// The peer the victim knows to have the most queued work, and how much: where the
        /// thief may look next.
        busiest: Option<(NodeId, u32)>,
    },
    /// A copy of the sender's graphs (owner → backup).
    Replica(Box<Replica>),
    /// The sender is no longer a backup of the receiver: drop the copy (owner → former
    /// backup).
    ReplicaEnd,
    /// The sender took over the graphs of the dead owner `old` (epoch `epoch`): from now on
    /// its tasks and results kept here belong to the sender; say which (new owner → every
    /// member).
    Recover {
        /// The dead owner.
        old: NodeId,
        /// The epoch of the take-over.
        epoch: u64,
        /// The old owner handed its graphs over (it is leaving, alive): a member answers
        /// even if it has not heard that the old owner is leaving.
        handover: bool,
    },
    /// The sender is leaving the cluster (told to stop): place nothing more on it (leaving
    /// node → every member).
    Leaving,
    /// A task placed on the sender is given back unstarted: place it elsewhere (leaving
    /// node → owner).
    Returned {
        /// The task.
        key: Key,
        /// Its [`Assignment::hops`] at the sender.
        hops: u32,
    },
    /// Take a copy of this result from the sender, which is leaving; answer with
    /// [`PeerMsg::Stored`] once it is here (leaving node → peer).
    Take {
        /// Owner of the result's graph.
        owner: NodeId,
        /// The result.
        key: Key,
        /// Its size in bytes.
        size: u64,
    },
    /// The answer to a [`PeerMsg::Take`]: the copy is kept here, and its owner told.
    Stored {
        /// Owner of the result's graph.
        owner: NodeId,
        /// The result.
        key: Key,
    },
    /// Take over the sender's graphs now: it is leaving, and its results are on their way
    /// or already here (leaving owner → its first backup).
    HandOver {
        /// The live members as the sender knows them: the receiver waits (a few seconds
        /// at most) until it knows them too, so that it asks all of them what they hold.
        members: Vec<NodeId>,
    },
    /// The sender's membership had declared the receiver dead and now sees it alive again
    /// (a partition healed, a long pause ended). The sender dropped every task and result
    /// it kept for the receiver's graphs; the receiver writes off what it had placed on the
    /// sender (placed again, computed again if needed) and drops what it keeps for the
    /// sender's graphs (any member → any member).
    Forgot,
    /// The sender took over these sessions (in this epoch) while the receiver was taken
    /// for dead, or took over the same dead owner in a higher epoch: the receiver steps
    /// down as their owner (new owner → stale owner).
    Superseded {
        /// The sessions taken over.
        sessions: Vec<u64>,
        /// The epoch of the take-over.
        epoch: u64,
    },
    /// A client request forwarded by the node the client is connected to (see
    /// [`ClientRequest::Forward`]): answered with [`PeerMsg::Forwarded`] under the same
    /// `req` (any member → owner).
    Forward {
        /// The forwarding node's request id.
        req: u64,
        /// The gather or status.
        request: ForwardedRequest,
    },
    /// The answer to a [`PeerMsg::Forward`] (owner → forwarding node).
    Forwarded {
        /// The forwarding node's request id.
        req: u64,
        /// The answer.
        reply: ClientResponse,
    },
    /// A client unpublished a dataset of the receiver's sessions through another node: one
    /// reference on each key is released (any member → owner).
    Unpublished {
        /// The dataset's name.
        name: String,
        /// Its keys.
        keys: Vec<Key>,
    },
    /// The answer to a [`PeerMsg::Recover`]: what this node held and ran for `old`, now the
    /// receiver's (member → new owner).
    Inventory {
        /// The dead owner.
        old: NodeId,
        /// Results kept here, with their sizes.
        held: Vec<(Key, u64)>,
        /// Tasks queued, fetching or running here, with their hops.
        running: Vec<(Key, u32)>,
        /// Tasks handed from here to a thief (that may not have them yet), with their hops
        /// there.
        moved: Vec<(Key, NodeId, u32)>,
        /// Tasks that failed here (their errors are final: not run again).
        erred: Vec<TaskError>,
    },
    /// An assignment reached a node that had dropped the task (released, or written off
    /// with its owner) at `hops` or more: it runs nowhere there. The owner places it again
    /// if that assignment is still the one it counts on (worker → owner).
    Dropped {
        /// The task.
        key: Key,
        /// The hops its assignments there are void up to.
        hops: u32,
    },
    /// The worker has this task (queued, fetching its inputs or running): its answer to an
    /// assignment of a task it already has, sent again by an owner that heard nothing
    /// (worker → owner). The owner then waits longer before it asks again: a long task is
    /// not a lost message.
    Accepted {
        /// The task.
        key: Key,
        /// [`Assignment::hops`] of the copy the worker has.
        hops: u32,
    },
}

/// A copy of an owner's graphs kept by one of its backups, so that the graphs survive the
/// owner (owner → backup).
///
/// A message with `reset` replaces what the backup kept; otherwise it adds to it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    /// Drop what was kept before this message.
    pub reset: bool,
    /// Client sessions whose graphs the owner holds, with the epoch of its ownership.
    pub sessions: Vec<(u64, u64)>,
    /// Ids of graphs accepted, with their fingerprints: a client that submits one again to
    /// the node that took over (not knowing whether it arrived) gets it accepted once.
    pub graphs: Vec<(GraphId, u64)>,
    /// Task specs (of any graphs, in any order).
    pub tasks: Vec<TaskSpec>,
    /// One entry per future a client holds on a key.
    pub keep: Vec<Key>,
    /// Client futures dropped (one entry per future).
    pub released: Vec<Key>,
    /// Tasks the owner forgot.
    pub forgotten: Vec<Key>,
    /// Sessions that ended (their clients closed, or went for good), with the epoch they
    /// were owned in: a backup drops them and never takes them over.
    pub closed: Vec<(u64, u64)>,
    /// Datasets published: name, session, keys (their references are in `keep`).
    pub published: Vec<(String, u64, Vec<Key>)>,
    /// Datasets unpublished (their references are in `released`).
    pub unpublished: Vec<String>,
}

/// The sender's load, carried by every batch so that peers place and steal on fresh figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadHint {
    /// Tasks queued and not started (what a thief could take).
    pub queued: u32,
    /// Tasks handed to the thread pool.
    pub running: u32,
    /// Threads of its pool.
    pub nthreads: u32,
    /// It is paused for memory: place nothing on it.
    pub paused: bool,
}

/// Messages from one node to another, sent together.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerBatch {
    /// The sender's load when it sent the batch.
    pub load: LoadHint,
    /// The messages, in order.
    pub msgs: Vec<PeerMsg>,
}
