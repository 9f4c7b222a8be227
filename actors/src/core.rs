//! The pure state machine of one node: owner of the graphs its clients submit, and worker
//! for every owner in the cluster.
//!
//! - **Owner.** A graph belongs to the node that accepted it. For each of its tasks the
//!   owner keeps the state (waiting, ready here, running here, placed on a peer, finished
//!   with its value here and/or on holders, erred), places every task that becomes ready,
//!   learns completions and answers the client.
//! - **Worker.** A node runs tasks placed on it by owners (its own ones straight from its
//!   owner role, other owners' through [`PeerMsg::Assign`]), fetches their inputs from the
//!   holders, keeps their results until the owner releases them, and serves them to peers.
//! - **Stealing.** An idle node asks a loaded peer for work; the victim hands over up to
//!   half of its queued, not-started tasks worth moving and tells their owners where they
//!   went.
//!
//! Messages between nodes are idempotent and the owner retries what is not answered, so a
//! lost, late, duplicated or reordered message never loses a task nor runs one twice.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use bytes::Bytes;
use rdask_gossip::{LoadSummary, NodeId};
use rdask_graph::{
    Arg, Graph, GraphError, GraphId, Key, Placement, Registry, TaskEntry, TaskError, TaskErrorKind,
    TaskFailure,
};
use rustc_hash::{FxHashMap, FxHasher};

use crate::protocol::{
    AssignArg, Assignment, ClientResponse, GraphSubmission, KeyResult, KeyStatus, LoadHint,
    PeerBatch, PeerMsg, Replica, SubmitOutcome,
};

mod copies;
mod datasets;
mod failover;
mod leave;
mod observe;
mod sessions;
use failover::{Kept, ORPHAN_MS, Recovery};
use leave::Leaving;
use sessions::Lifetimes;
pub use sessions::{OwnerWrite, SESSION_GRACE_MS};

/// How many graph ids a node remembers to recognise resubmissions.
const REMEMBERED_GRAPHS: usize = 65_536;
/// Most peers a node keeps records of (members, and nodes named by clients and peers); see
/// [`NodeCore::intern`].
const MAX_PEERS: usize = 65_536;
/// The one peer every name past [`MAX_PEERS`] stands for: never alive.
const TOO_MANY_PEERS: &str = "(too many peer names)";
/// The default of [`NodeCore::set_max_tasks_per_submit`] (`--max-tasks-per-submit`).
pub const DEFAULT_MAX_TASKS_PER_SUBMIT: u64 = 2_000_000;
/// Most tasks per thread the pool holds at once, however short.
const MAX_POOL_DEPTH: u32 = 256;
/// Queued work per thread the core aims to keep handed to the pool, in nanoseconds of
/// estimated run time: enough to keep threads busy between two turns of the node's loop,
/// little enough that priorities still matter and that thieves find work.
const TARGET_QUEUED_NS: f64 = 1_000_000.0;
/// How long an owner waits for news of a task placed on a peer before it sends the
/// assignment again: doubling, up to [`MAX_RETRY_MS`], with each answer of the worker that
/// it has the task ([`PeerMsg::Accepted`]: a long task), not with silence (lost messages).
const RETRY_MS: u64 = 2_000;
const MAX_RETRY_MS: u64 = 32_000;
/// How long a fetch waits for its data before it asks again (another holder if any).
const FETCH_RETRY_MS: u64 = 2_000;
/// How long a worker remembers tasks it released, handed away or saw fail, so that a late
/// or repeated assignment is recognised.
const TOMBSTONE_MS: u64 = 120_000;
/// How long a thief waits for the answer to a steal request.
const STEAL_TIMEOUT_MS: u64 = 1_000;
/// Longest pause between steal attempts of an idle node that found nothing.
const MAX_STEAL_BACKOFF_MS: u64 = 100;
/// How long after its last task an idle node probes random peers for work.
const PROBE_WINDOW_MS: u64 = 1_000;
/// Times a task may be lost with the node running it before it fails (Dask's
/// `allowed-failures`).
const MAX_ATTEMPTS: u8 = 3;
/// Empty answers to steal requests after which an idle node slows down.
const STEAL_PROBES: u32 = 8;
/// Run time assumed for a task prefix never measured.
const DEFAULT_TASK_NS: f64 = 1_000_000.0;
/// Cost of moving a task to another node, in nanoseconds, beside its input bytes.
const MOVE_COST_NS: f64 = 200_000.0;
/// Bytes per nanosecond assumed for moving inputs between nodes (1 GB/s).
const BYTES_PER_NS: f64 = 1.0;
/// Inputs at least this large pin a task to their holder, however busy.
const HEAVY_INPUT_BYTES: u64 = 1 << 20;
/// Values from peers remembered for the dashboard.
const TRANSFERS_KEPT: usize = 1_000;

/// Bit of [`TaskId::idx`] marking a task run for another owner.
const FOREIGN: u32 = 1 << 31;
/// The share of `--memory-limit` at which a node pauses: one task at a time, and no
/// work from peers until its memory is below it again (Dask's `pause` fraction).
pub(crate) const PAUSE_FRACTION: f64 = 0.8;

/// Identifies a client request whose reply the core may produce later.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// A task's slot in the core, with a generation so that a stale reference (a completion of
/// a task that was cancelled and whose slot was reused) is recognised and ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId {
    idx: u32,
    generation: u32,
}

impl TaskId {
    fn foreign(self) -> bool {
        self.idx & FOREIGN != 0
    }
    fn slot(self) -> usize {
        (self.idx & !FOREIGN) as usize
    }
}

/// A task the core started: to be run by the pool, which answers with a [`TaskDone`].
#[derive(Debug)]
pub struct Job {
    /// The task, to be echoed in [`TaskDone::task`].
    pub task: TaskId,
    /// Its key (for logs and errors).
    pub key: Key,
    /// The function to call.
    pub entry: &'static TaskEntry,
    /// Encoded arguments, in call order (shared, not copied).
    pub args: Vec<Bytes>,
}

/// A finished run of a [`Job`].
#[derive(Debug)]
pub struct TaskDone {
    /// The task, from [`Job::task`].
    pub task: TaskId,
    /// The encoded value, or why there is none.
    pub result: Result<Vec<u8>, TaskFailure>,
    /// How long the function ran, measured by the pool.
    pub elapsed_ns: u64,
}

/// What the shell knows of one member of the cluster (from the gossiped state).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerUpdate {
    /// The member.
    pub node: NodeId,
    /// Threads of its pool.
    pub nthreads: u32,
    /// Digest of its task functions: tasks are placed only where the functions are.
    pub functions_digest: u64,
    /// Whether membership considers it alive.
    pub alive: bool,
    /// Its load as last gossiped.
    pub load: LoadSummary,
    /// The resources it offers to tasks.
    pub resources: Vec<(Arc<str>, u64)>,
    /// Other names a client may give it where a node id is expected
    /// (`TaskOptions::workers`): its `--name` and its addresses.
    pub aliases: Vec<Arc<str>>,
}

/// Counters of what the core did, for tests, simulations and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CoreStats {
    /// Tasks that ran here (for any owner).
    pub tasks_run: u64,
    /// Failed runs run again (`retries`).
    pub task_retries: u64,
    /// Running tasks that gave their thread slot up to wait for other tasks.
    pub seceded: u64,
    /// Copies of results started by `replicate` and `rebalance`.
    pub copies_made: u64,
    /// Failed tasks run again at a client's request (`retry`).
    pub retried: u64,
    /// Tasks of this node's graphs placed on a peer.
    pub placed_remote: u64,
    /// Steal requests sent.
    pub steal_requests: u64,
    /// Tasks received from victims.
    pub stolen: u64,
    /// Tasks handed to thieves.
    pub given: u64,
    /// Times the node paused because its memory reached the pause mark of its limit.
    pub pauses: u64,
    /// Values fetched from peers.
    pub fetched: u64,
    /// Bytes of values fetched from peers.
    pub fetched_bytes: u64,
    /// Assignments sent again after no news.
    pub retries: u64,
    /// Peers this node saw declared dead.
    pub peers_lost: u64,
    /// Results of this node's graphs lost with a node (computed again when needed).
    pub recomputed: u64,
    /// Tasks of this node's graphs placed again after their node died.
    pub replaced: u64,
    /// Graphs of dead owners taken over.
    pub takeovers: u64,
    /// Tasks whose state a take-over found on the members (held or running), so that they
    /// were not computed again.
    pub adopted: u64,
    /// Dead owners whose tasks and results here were dropped, no take-over claiming them.
    pub orphans_dropped: u64,
    /// Peers declared dead that came back (a partition healed): what was written off on
    /// either side stays written off.
    pub peers_back: u64,
    /// Times this node stepped down as the owner of graphs another node took over while
    /// it was taken for dead.
    pub stepped_down: u64,
    /// Take-overs put off because this node saw only a minority of the cluster alive.
    pub no_quorum: u64,
    /// Client sessions that ended here (closed by their clients, or idle too long).
    #[serde(default)]
    pub sessions_ended: u64,
    /// Sessions taken over and then dropped: they had ended before their owner died.
    #[serde(default)]
    pub sessions_refused: u64,
}

enum ArgSlot {
    Value(Bytes),
    Dep(TaskId),
}

enum State {
    /// Some dependency is not finished.
    Waiting,
    /// Placed here; some inputs are being fetched from peers (`waiting_on` counts them).
    Fetching,
    /// All inputs are here; in the ready queue.
    Ready,
    /// Handed to the pool.
    Running,
    /// Placed on a peer (or moved there by stealing); no news yet. `hops` counts the
    /// hand-overs the owner knows of; `acks` the times the peer said it has the task (each
    /// doubles the wait before the assignment is sent again).
    Remote {
        node: u32,
        due_ms: u64,
        acks: u32,
        hops: u32,
    },
    /// Finished with a value: a copy here and/or on remote holders.
    Memory {
        value: Option<Bytes>,
        holders: Vec<u32>,
        size: u64,
    },
    /// Finished with an error (its own or a dependency's).
    Erred(Arc<TaskError>),
    /// Restricted to nodes none of which is alive: placed when one is.
    NoWorker,
    /// Finished, and its value dropped as nobody needed it; the spec stays while
    /// dependents exist, to recompute it if a dependent's value is lost (lineage).
    Released,
}

impl State {
    fn finished(&self) -> bool {
        matches!(
            self,
            State::Memory { .. } | State::Erred(_) | State::Released
        )
    }

    /// A finished value that some node (alive, as far as this node knows) holds.
    fn available(&self) -> bool {
        matches!(self, State::Memory { value, holders, .. } if value.is_some() || !holders.is_empty())
    }
}

struct Task {
    key: Key,
    /// The client session whose graph submitted it (0 for a take-over's copies), for the
    /// dashboard.
    session: u64,
    entry: &'static TaskEntry,
    args: Vec<ArgSlot>,
    /// Distinct dependencies.
    deps: Vec<TaskId>,
    dependents: Vec<TaskId>,
    /// Dependencies not yet finished (then: inputs not yet fetched).
    waiting_on: u32,
    /// Dependents not yet finished: the value must stay while this is above zero.
    pending_dependents: u32,
    /// Dependents that exist at all: the spec must stay while this is above zero.
    spec_refs: u32,
    /// Times it was lost with the node running it.
    attempts: u8,
    /// Futures the client holds for this key.
    client_refs: u32,
    /// Gather requests waiting for this task.
    waiters: Vec<RequestId>,
    /// Nobody needs the value any more: drop it when the running function returns.
    cancelled: bool,
    /// Position in the node's run order: lower runs first.
    priority: u64,
    /// Runs left after a failure (`retries`).
    retries: u8,
    /// Hand-overs so far (see [`Assignment::hops`]).
    hops: u32,
    /// Expected run time when handed to the pool.
    est_ns: f32,
    /// Resources it holds while it runs.
    resources: Amounts,
    /// Where it may run.
    placement: Option<Box<Restrict>>,
    state: State,
}

struct Slot<T> {
    generation: u32,
    item: Option<T>,
}

/// What identifies a graph's content: its keys in order.
fn fingerprint(g: &GraphSubmission) -> u64 {
    let mut h = FxHasher::default();
    for t in &g.tasks {
        t.key.hash(&mut h);
    }
    h.finish()
}

/// How long an owner waits before it sends an assignment again, after the worker said
/// `acks` times that it has the task.
fn retry_wait(acks: u32) -> u64 {
    (RETRY_MS << acks.min(4)).min(MAX_RETRY_MS)
}

/// A task's place among ready ones (lower runs first): the user's priority (higher first),
/// then submission order.
fn task_priority(user: i32, seq: u64) -> u64 {
    ((i64::from(i32::MAX) - i64::from(user)) as u64) << 32 | (seq & 0xffff_ffff)
}

/// The user's priority of a task's place among ready ones (see [`task_priority`]).
pub(crate) fn user_priority(priority: u64) -> i32 {
    (i64::from(i32::MAX) - (priority >> 32) as i64) as i32
}

/// Folds a measured run time into the estimate of its key prefix (moving average).
fn update_estimate(estimates: &mut FxHashMap<Box<str>, f64>, prefix: &str, elapsed_ns: u64) {
    let x = elapsed_ns as f64;
    match estimates.get_mut(prefix) {
        Some(a) => *a = *a * 0.8 + x * 0.2,
        None => {
            estimates.insert(prefix.into(), x);
        }
    }
}

/// A free slot of a slab (reused, or a new one): its index and generation.
fn alloc_slot<T>(slots: &mut Vec<Slot<T>>, free: &mut Vec<u32>) -> (u32, u32) {
    let idx = free.pop().unwrap_or_else(|| {
        slots.push(Slot {
            generation: 0,
            item: None,
        });
        (slots.len() - 1) as u32
    });
    (idx, slots[idx as usize].generation)
}

/// Where a task stands, for a client's `status()`.
fn status_of(t: &Task) -> KeyStatus {
    match &t.state {
        State::Memory { .. } => KeyStatus::Finished,
        State::Erred(e) => KeyStatus::Error((**e).clone()),
        State::Released => KeyStatus::Unknown,
        _ if t.cancelled => KeyStatus::Unknown,
        _ => KeyStatus::Pending,
    }
}

/// A client request held until tasks finish: a gather (answered with the results) or an
/// await of statuses (answered with the statuses).
struct Waiter {
    ids: Vec<Option<TaskId>>,
    remaining: u32,
    statuses: bool,
}

type Outcome = Result<(Option<Bytes>, Vec<u32>, u64), Arc<TaskError>>;

/// A task of another owner, run here.
struct Foreign {
    owner: u32,
    key: Key,
    entry: &'static TaskEntry,
    args: Vec<ForeignArg>,
    missing: u32,
    priority: u64,
    /// Runs left after a failure.
    retries: u8,
    hops: u32,
    est_ns: f32,
    resources: Amounts,
    placement: Option<Box<Restrict>>,
    state: ForeignState,
    cancelled: bool,
}

enum ForeignArg {
    Value(Bytes),
    Input {
        key: Key,
        size: u64,
        holders: Vec<u32>,
        value: Option<Bytes>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ForeignState {
    Fetching,
    Queued,
    Running,
}

/// A placement restriction with the nodes as peer indices.
struct Restrict {
    nodes: Vec<u32>,
    loose: bool,
}

/// Whether a task with this restriction may be handed to `p`.
fn allows(r: &Option<Box<Restrict>>, p: u32) -> bool {
    r.as_ref().is_none_or(|r| r.loose || r.nodes.contains(&p))
}

/// What to do with an assignment of a task that was here before.
enum Seen {
    /// Placed here again (more hops than what was released or handed on): run it.
    Again,
    /// A stale copy: ignore it.
    Stale,
    /// An owner's assignment of a task released here, covering up to these hops: tell
    /// the owner (it may still count on it).
    Dropped(u32),
    /// Handed on: tell the owner where.
    Moved(u32, u32),
    /// It failed here: repeat the error.
    Erred(TaskError),
}

/// What a worker remembers of a task of another owner that is no longer here.
enum Gone {
    /// Released by the owner, covering assignments of at most this many hops.
    Released(u32),
    Moved(u32, u32),
    Erred(TaskError),
}

/// Who waits for a fetched value.
#[derive(Clone, Copy)]
enum FetchWaiter {
    /// A task of this node's graphs placed here.
    Own(TaskId),
    /// A gather request of this node's client.
    Gather(RequestId),
    /// Argument `usize` of a task of another owner.
    Foreign(TaskId, u32),
    /// A copy asked for by this leaving peer (answer [`PeerMsg::Stored`] when it is here).
    Take(u32),
    /// A copy of a result of a take-over still waiting for inventories, handed by this
    /// leaving peer: kept for the rebuild (and [`PeerMsg::Stored`] answered).
    Adopt(u32),
    /// Nobody: the owner checks that its holders still have the value (a holder that
    /// lacks it answers so, and the value is computed again).
    Check,
}

struct Fetch {
    holders: Vec<u32>,
    next: usize,
    due_ms: u64,
    waiters: Vec<FetchWaiter>,
}

/// What this node knows of a peer (index 0 is the node itself).
struct Peer {
    node: NodeId,
    nthreads: u32,
    eligible: bool,
    alive: bool,
    /// Queued + running at its last report (batch or gossip).
    reported: u64,
    /// Its stealable queue at its last report.
    queued: u64,
    /// Tasks this node assigned to it since that report.
    assigned_since: u64,
    /// The resources it offers to tasks.
    resources: Amounts,
    /// It said it is leaving: nothing more is placed on it.
    leaving: bool,
    /// Membership declared it dead, or a take-over of its graphs did before membership
    /// listed it (a peer not heard of yet is not alive, nor dead).
    dead: bool,
    /// When this node learnt it dead (counts against a take-over's quorum for a while).
    dead_since: u64,
    /// Declared dead once, and back since (a partition healed).
    revived: bool,
    /// It said it is paused (its memory is near its limit): nothing is placed on it.
    paused: bool,
    outbox: Vec<PeerMsg>,
}

/// Amounts of named resources.
type Amounts = Box<[(Arc<str>, u64)]>;

/// Whether `have` holds at least `need` of every resource.
fn fits(have: &[(Arc<str>, u64)], need: &[(Arc<str>, u64)]) -> bool {
    need.iter()
        .all(|(n, a)| have.iter().any(|(m, b)| m == n && b >= a))
}

/// The state machine of one node: graphs in, tasks to run and messages to peers out,
/// results stored and served.
///
/// Driving it (what [`crate::NodeActor`] does, and what a simulator does):
///
/// 1. feed one input: [`NodeCore::handle_submit`], [`NodeCore::handle_gather`],
///    [`NodeCore::handle_release`], [`NodeCore::handle_task_done`],
///    [`NodeCore::handle_wait_expired`], [`NodeCore::handle_peer`] (a batch from another
///    node), [`NodeCore::handle_members`] (the cluster as gossiped),
///    [`NodeCore::handle_tick`] (the clock, a few tens of times per second), the client
///    session's inputs ([`NodeCore::handle_attach`], [`NodeCore::handle_detach`],
///    [`NodeCore::handle_close`], [`NodeCore::handle_claimed`]) or the others named
///    `handle_*`;
/// 2. drain the outputs in this order: [`NodeCore::take_replies`] (answers to requests),
///    [`NodeCore::take_jobs`] (tasks to start; this is also when ready tasks are chosen and
///    an idle node asks for work), [`NodeCore::take_sends`] (batches for peers),
///    [`NodeCore::take_dataset_writes`] and [`NodeCore::take_owner_writes`] (for the
///    replicated tables), [`NodeCore::take_timers`] (wake-ups to schedule: call
///    `handle_wait_expired` when one fires).
///
/// Nothing in it reads a clock, draws unseeded randomness or does I/O; iteration orders are
/// deterministic, so the same inputs give the same outputs.
pub struct NodeCore {
    node: Arc<str>,
    registry: &'static Registry,
    nthreads: u32,
    slots: Vec<Slot<Task>>,
    free: Vec<u32>,
    index: FxHashMap<Key, TaskId>,
    /// Ready tasks by (priority, task id); stale entries are skipped when popped.
    ready: BinaryHeap<Reverse<(u64, u32, u32)>>,
    /// Live entries of `ready`.
    ready_count: u32,
    graphs: FxHashMap<GraphId, u64>,
    graph_order: VecDeque<GraphId>,
    waiters: FxHashMap<RequestId, Waiter>,
    /// Members by their names and addresses (see [`PeerUpdate::aliases`]).
    aliases: FxHashMap<Arc<str>, NodeId>,
    next_priority: u64,
    in_flight: u32,
    /// Running tasks that gave their thread slot up (not counted in `in_flight`).
    seceded: rustc_hash::FxHashSet<TaskId>,
    /// Expected run time of the tasks handed to the pool.
    pool_ns: f64,
    /// Resources not held by running tasks.
    available: Vec<(Arc<str>, u64)>,
    /// Ready tasks waiting for resources held by running ones.
    blocked: Vec<Reverse<(u64, u32, u32)>>,
    prefix_ns: FxHashMap<Box<str>, f64>,
    unfinished: u64,
    stored: u64,
    memory_used: u64,
    /// The node's memory limit in bytes (`--memory-limit`), if any.
    memory_limit: Option<u64>,
    /// Most tasks one submission may hold.
    max_tasks_per_submit: u64,
    /// The process's memory as the shell last measured it.
    process_memory: u64,
    /// Memory is at or above [`PAUSE_FRACTION`] of the limit: one task at a time.
    paused: bool,
    /// The stack of `maybe_forget`'s walk, kept to save an allocation per call.
    forget_stack: Vec<TaskId>,

    // worker role
    foreign: Vec<Slot<Foreign>>,
    foreign_free: Vec<u32>,
    foreign_index: FxHashMap<(u32, Key), TaskId>,
    foreign_pending: u64,
    held: FxHashMap<(u32, Key), Bytes>,
    /// Hops of held results computed here from an assignment that changed hands (placed
    /// again or stolen): a late release of an earlier copy does not drop them.
    held_hops: FxHashMap<(u32, Key), u32>,
    gone: FxHashMap<(u32, Key), (Gone, u64)>,
    gone_order: VecDeque<(u64, u32, Key)>,
    fetches: FxHashMap<(u32, Key), Fetch>,

    // the cluster
    peers: Vec<Peer>,
    peer_index: FxHashMap<NodeId, u32>,
    /// Peers that may run tasks (eligible and alive), this node first.
    candidates: Vec<u32>,
    /// Tasks waiting for a node they are restricted to.
    no_worker: Vec<TaskId>,
    dirty: Vec<u32>,
    retry: BinaryHeap<Reverse<(u64, u32, u32)>>,
    rng: u64,
    now_ms: u64,
    steal_due_ms: u64,
    steal_backoff_ms: u64,
    steal_pending: Option<u64>,
    steal_misses: u32,
    /// When this node last started a task.
    last_work_ms: u64,
    stats: CoreStats,

    /// Client sessions whose graphs this node owns (the upper half of their graph ids),
    /// with the epoch of that ownership.
    sessions: FxHashMap<u64, u64>,
    /// Changes to the replicated ownership table (see `sessions.rs`).
    owner_writes: Vec<OwnerWrite>,
    /// When sessions end (see `sessions.rs`).
    lifetimes: Lifetimes,

    // fail-over (see `failover.rs`)
    /// This node's backups, first to take over first.
    backups: Vec<u32>,
    /// What the backups have not been sent yet.
    replica_out: Replica,
    /// Copies of other owners' graphs, by owner.
    replicas: FxHashMap<u32, Kept>,
    /// Dead owners whose tasks and results here now belong to another node (with the
    /// epoch of that take-over).
    alias: FxHashMap<u32, (u32, u64)>,
    /// Dead owners whose tasks and results here wait for a take-over until this time.
    orphans: FxHashMap<u32, u64>,
    /// Sessions this node stepped down from (another node took them over while this one was
    /// taken for dead), with the node that did: their submissions are answered `Moved`.
    superseded: FxHashMap<u64, u32>,
    /// The sessions this node took over, by the owner it took them from.
    taken: FxHashMap<u32, rustc_hash::FxHashSet<u64>>,
    /// Take-overs waiting for the members' inventories, by dead owner.
    recovery: FxHashMap<u32, Recovery>,
    /// Tasks inserted by a take-over, in order, not to be placed before the inventories
    /// are in (`Some` while inserting).
    adopting: Option<Vec<TaskId>>,
    /// Per take-over waiting for inventories: the tasks it inserted and the dead owner's
    /// values this node kept.
    adopted_here: FxHashMap<u32, (Vec<TaskId>, FxHashMap<Key, Bytes>)>,
    /// Set once the node is told to stop (see `leave.rs`).
    leaving: Option<Leaving>,
    /// Leaving owners that asked this node to take over, waiting for their tasks running
    /// here to finish.
    handovers: Vec<(u32, Vec<NodeId>, u64)>,

    // datasets (see `datasets.rs`)
    /// Datasets published here (or by the owners this node took over), with their session
    /// and the keys they hold a reference on.
    published: FxHashMap<String, (u64, Vec<Key>)>,
    /// Dataset entries for the replicated table.
    dataset_writes: Vec<(String, rdask_gossip::Dataset)>,
    /// Client requests forwarded to a peer, by request id: the peer, and the answer to
    /// give should it go.
    forwards: FxHashMap<u64, (u32, ClientResponse)>,
    /// Requests peers forwarded here, by this node's id for them: the peer and its id.
    forwarded_in: FxHashMap<u64, (u32, u64)>,
    next_forwarded: u64,
    /// Results a rebalance moves, by key: from which node to which (see `copies.rs`).
    moving: FxHashMap<Key, (u32, u32)>,
    /// The last values that arrived from peers: key, from, bytes, when (this node's clock).
    transfers: VecDeque<(Key, u32, u64, u64)>,

    replies: Vec<(RequestId, ClientResponse)>,
    jobs: Vec<Job>,
    timers: Vec<(RequestId, u32)>,
}

impl NodeCore {
    /// A core for the node named `node`, running functions of `registry` on `nthreads`
    /// threads. Alone until [`NodeCore::handle_members`] tells it of peers.
    pub fn new(node: &str, registry: &'static Registry, nthreads: u32) -> NodeCore {
        let me = NodeId(Arc::from(node));
        let mut seed = FxHasher::default();
        node.hash(&mut seed);
        let mut peer_index = FxHashMap::default();
        peer_index.insert(me.clone(), 0);
        NodeCore {
            node: me.0.clone(),
            registry,
            nthreads: nthreads.max(1),
            slots: Vec::new(),
            free: Vec::new(),
            index: FxHashMap::default(),
            ready: BinaryHeap::new(),
            ready_count: 0,
            graphs: FxHashMap::default(),
            graph_order: VecDeque::new(),
            waiters: FxHashMap::default(),
            aliases: FxHashMap::default(),
            next_priority: 0,
            in_flight: 0,
            seceded: Default::default(),
            pool_ns: 0.0,
            available: Vec::new(),
            blocked: Vec::new(),
            prefix_ns: FxHashMap::default(),
            unfinished: 0,
            stored: 0,
            memory_used: 0,
            memory_limit: None,
            max_tasks_per_submit: DEFAULT_MAX_TASKS_PER_SUBMIT,
            process_memory: 0,
            paused: false,
            forget_stack: Vec::new(),
            foreign: Vec::new(),
            foreign_free: Vec::new(),
            foreign_index: FxHashMap::default(),
            foreign_pending: 0,
            held: FxHashMap::default(),
            held_hops: FxHashMap::default(),
            gone: FxHashMap::default(),
            gone_order: VecDeque::new(),
            fetches: FxHashMap::default(),
            peers: vec![Peer {
                node: me,
                nthreads: nthreads.max(1),
                eligible: true,
                alive: true,
                reported: 0,
                queued: 0,
                assigned_since: 0,
                resources: Amounts::default(),
                leaving: false,
                dead: false,
                dead_since: 0,
                revived: false,
                paused: false,
                outbox: Vec::new(),
            }],
            peer_index,
            candidates: vec![0],
            no_worker: Vec::new(),
            dirty: Vec::new(),
            retry: BinaryHeap::new(),
            rng: seed.finish() | 1,
            now_ms: 0,
            steal_due_ms: 0,
            steal_backoff_ms: 0,
            steal_pending: None,
            steal_misses: 0,
            last_work_ms: 0,
            stats: CoreStats::default(),
            sessions: Default::default(),
            owner_writes: Vec::new(),
            lifetimes: Lifetimes::default(),
            backups: Vec::new(),
            replica_out: Replica::default(),
            replicas: FxHashMap::default(),
            alias: FxHashMap::default(),
            superseded: FxHashMap::default(),
            taken: FxHashMap::default(),
            orphans: FxHashMap::default(),
            recovery: FxHashMap::default(),
            adopting: None,
            adopted_here: FxHashMap::default(),
            leaving: None,
            handovers: Vec::new(),
            published: FxHashMap::default(),
            dataset_writes: Vec::new(),
            forwards: FxHashMap::default(),
            forwarded_in: FxHashMap::default(),
            next_forwarded: 0,
            moving: FxHashMap::default(),
            transfers: VecDeque::new(),
            replies: Vec::new(),
            jobs: Vec::new(),
            timers: Vec::new(),
        }
    }

    /// The node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The node's current load.
    pub fn load(&self) -> LoadSummary {
        LoadSummary {
            queued: u64::from(self.ready_count),
            running: u64::from(self.in_flight),
            stored: self.stored,
            memory_used: self.memory_used,
            paused: self.paused,
        }
    }

    /// Sets the node's memory limit in bytes (`None`: no limit). At [`PAUSE_FRACTION`] of
    /// it, measured as the larger of the results held here and the process's memory
    /// ([`NodeCore::handle_process_memory`]), the node pauses until its memory is below
    /// that mark again: it asks peers for no work, peers place nothing on it and may take
    /// its queued tasks, and it runs what stays queued here one task at a time, only when
    /// nothing else runs (so that a graph whose next tasks would free memory cannot hang).
    pub fn set_memory_limit(&mut self, limit: Option<u64>) {
        self.memory_limit = limit.filter(|&l| l > 0);
        self.update_pause();
    }

    /// Most tasks one submission may hold (`--max-tasks-per-submit`): a larger one is
    /// rejected whole, naming the limit.
    pub fn set_max_tasks_per_submit(&mut self, limit: u64) {
        self.max_tasks_per_submit = limit;
    }

    /// The process's memory in bytes, as the shell measured it (resident set size).
    pub fn handle_process_memory(&mut self, bytes: u64) {
        self.process_memory = bytes;
        self.update_pause();
    }

    /// Whether the node is paused for memory (see [`NodeCore::set_memory_limit`]).
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    fn update_pause(&mut self) {
        let Some(limit) = self.memory_limit else {
            self.paused = false;
            return;
        };
        let used = self.memory_used.max(self.process_memory);
        let paused = used as f64 >= PAUSE_FRACTION * limit as f64;
        if paused != self.paused {
            self.paused = paused;
            let (used_mb, limit_mb) = (used >> 20, limit >> 20);
            if paused {
                tracing::warn!(
                    used_mb,
                    limit_mb,
                    "memory at {:.0}% of the limit: pausing (no task starts until it is below)",
                    PAUSE_FRACTION * 100.0
                );
                self.stats.pauses += 1;
            } else {
                tracing::info!(used_mb, limit_mb, "memory below the pause mark: resuming");
            }
        }
    }

    /// Number of keys the node tracks (unfinished tasks and stored results of its graphs).
    pub fn tracked_keys(&self) -> usize {
        self.index.len()
    }

    /// Results of other owners' graphs held here, and tasks of theirs not finished.
    pub fn foreign_keys(&self) -> (usize, u64) {
        (self.held.len(), self.foreign_pending)
    }

    /// The values this node holds, counted afresh: (values, bytes). [`NodeCore::load`]
    /// must say the same (`stored`, `memory_used`); tests and simulations check it.
    pub fn values_held(&self) -> (u64, u64) {
        let own = self
            .slots
            .iter()
            .filter_map(|s| s.item.as_ref())
            .filter_map(|t| match &t.state {
                State::Memory { value: Some(v), .. } => Some(v.len() as u64),
                _ => None,
            });
        let kept = self
            .adopted_here
            .values()
            .flat_map(|(_, kept)| kept.values());
        let sizes = own.chain(self.held.values().chain(kept).map(|v| v.len() as u64));
        sizes.fold((0, 0), |(n, bytes), len| (n + 1, bytes + len))
    }

    /// A one-line description of a key of this node's graphs, for logs and diagnostics:
    /// its state and, when waiting, for how many inputs.
    pub fn describe(&self, key: &Key) -> Option<String> {
        let Some(t) = self.index.get(key).and_then(|id| self.task(*id)) else {
            return self.describe_foreign(key);
        };
        let state = match &t.state {
            State::Waiting => format!("waiting for {} inputs", t.waiting_on),
            State::Fetching => format!("fetching {} inputs", t.waiting_on),
            State::Ready => "ready".into(),
            State::Running => "running".into(),
            State::Remote { node, hops, .. } => {
                let peer = &self.peers[*node as usize];
                format!(
                    "placed on {} (hops {hops}; {})",
                    peer.node,
                    if peer.alive { "alive" } else { "not alive" }
                )
            }
            State::Memory { value, holders, .. } => format!(
                "in memory{} on {} other nodes",
                if value.is_some() { " here and" } else { "" },
                holders.len()
            ),
            State::Erred(_) => "erred".into(),
            State::NoWorker => "waiting for a node it may run on".into(),
            State::Released => "released".into(),
        };
        let deps: Vec<String> = t
            .deps
            .iter()
            .filter_map(|d| self.task(*d))
            .map(|d| {
                format!(
                    "{}:{}",
                    d.key,
                    if d.state.available() { "ok" } else { "missing" }
                )
            })
            .collect();
        Some(format!("{key}: {state}; inputs [{}]", deps.join(", ")))
    }

    /// What this node knows of another owner's task `key` it runs or ran.
    fn describe_foreign(&self, key: &Key) -> Option<String> {
        let (owner, id) = self
            .foreign_index
            .iter()
            .find(|((_, k), _)| k == key)
            .map(|((o, _), id)| (*o, *id))?;
        let f = self.foreign_ref(id)?;
        let fetches: Vec<String> = f
            .args
            .iter()
            .filter_map(|a| match a {
                ForeignArg::Input {
                    key, value: None, ..
                } => Some(format!(
                    "{key} from {:?}",
                    self.fetches.get(&(owner, key.clone())).map(|f| f
                        .holders
                        .iter()
                        .map(|h| self.peers[*h as usize].node.0.to_string())
                        .collect::<Vec<_>>())
                )),
                _ => None,
            })
            .collect();
        Some(format!(
            "{key} (for {}): {:?}, {} inputs missing {fetches:?}",
            self.peers[owner as usize].node, f.state, f.missing
        ))
    }

    /// What the core says of a few of the keys it tracks (for diagnostics).
    pub fn tracked_sample(&self, n: usize) -> Vec<String> {
        let mut keys: Vec<&Key> = self.index.keys().collect();
        keys.sort();
        keys.into_iter()
            .take(n)
            .filter_map(|k| self.describe(k))
            .collect()
    }

    /// A few results of other owners kept here, as (owner, key) (for diagnostics).
    pub fn held_sample(&self, n: usize) -> Vec<String> {
        let mut v: Vec<String> = self
            .held
            .keys()
            .map(|(o, k)| format!("{}:{k}", self.peers[*o as usize].node))
            .collect();
        v.sort();
        v.truncate(n);
        v
    }

    /// Whether this node owns graphs of the client session `session`.
    pub fn owns_session(&self, session: u64) -> bool {
        self.sessions.contains_key(&session)
    }

    /// What the core did so far.
    pub fn stats(&self) -> CoreStats {
        self.stats
    }

    // ----- inputs: the client -------------------------------------------------------

    /// Graphs from a client, in order. Replies `Submitted` with one outcome per graph.
    pub fn handle_submit(&mut self, request: RequestId, graphs: Vec<GraphSubmission>) {
        if self.refused_as_moved(request) {
            return;
        }
        if let Some(g) = graphs
            .iter()
            .find(|g| self.superseded.contains_key(&((g.id.0 >> 64) as u64)))
        {
            // The session's graphs were taken over while this node was taken for dead.
            let owner = self.superseded[&((g.id.0 >> 64) as u64)];
            let reply = ClientResponse::Moved(format!(
                "{} stepped down as the owner of this session's graphs: {} took them over",
                self.node, self.peers[owner as usize].node
            ));
            self.replies.push((request, reply));
            return;
        }
        let tasks: u64 = graphs.iter().map(|g| g.tasks.len() as u64).sum();
        if tasks > self.max_tasks_per_submit {
            let e = GraphError::TooManyTasks {
                tasks,
                limit: self.max_tasks_per_submit,
            };
            let outcomes = vec![SubmitOutcome::Rejected(e); graphs.len()];
            self.replies
                .push((request, ClientResponse::Submitted(outcomes)));
            return;
        }
        let outcomes = graphs
            .into_iter()
            .map(|g| {
                // The backups get a copy of every graph accepted.
                let copy = (!self.backups.is_empty()).then(|| (g.tasks.clone(), g.keep.clone()));
                match self.submit(g) {
                    Ok(()) => {
                        if let Some((tasks, keep)) = copy {
                            self.replica_out.tasks.extend(tasks);
                            self.replica_out.keep.extend(keep);
                        }
                        SubmitOutcome::Accepted
                    }
                    Err(e) => SubmitOutcome::Rejected(e),
                }
            })
            .collect();
        self.replies
            .push((request, ClientResponse::Submitted(outcomes)));
    }

    /// The nodes that hold the values of `keys` (this node first when it does).
    pub fn who_has(&self, keys: &[Key]) -> Vec<Vec<NodeId>> {
        keys.iter()
            .map(|k| match self.index.get(k).and_then(|id| self.task(*id)) {
                Some(Task {
                    state: State::Memory { value, holders, .. },
                    ..
                }) => value
                    .is_some()
                    .then_some(0)
                    .into_iter()
                    .chain(holders.iter().copied())
                    .map(|p| self.peers[p as usize].node.clone())
                    .collect(),
                _ => Vec::new(),
            })
            .collect()
    }

    /// Where `keys` stand, without their values (a future's `status()`).
    pub fn key_statuses(&self, keys: &[Key]) -> Vec<KeyStatus> {
        keys.iter()
            .map(|k| match self.index.get(k).and_then(|id| self.task(*id)) {
                None => KeyStatus::Unknown,
                Some(t) => status_of(t),
            })
            .collect()
    }

    /// The client wants the results of `keys`: replied when all are finished (and their
    /// values fetched here from their holders), at once when `wait_ms` is 0, otherwise after
    /// a timer of `wait_ms` (see [`NodeCore::take_timers`]).
    pub fn handle_gather(&mut self, request: RequestId, keys: Vec<Key>, wait_ms: u32) {
        if self.refused_as_moved(request) {
            return;
        }
        let ids: Vec<Option<TaskId>> = keys.iter().map(|k| self.index.get(k).copied()).collect();
        let mut unfinished = Vec::new();
        let mut remote = Vec::new();
        for id in ids.iter().flatten() {
            if let Some(t) = self.task(*id) {
                match &t.state {
                    State::Memory { value: None, .. } => remote.push(*id),
                    s if !s.finished() => unfinished.push(*id),
                    _ => {}
                }
            }
        }
        let remaining = (unfinished.len() + remote.len()) as u32;
        if remaining > 0 {
            for id in &remote {
                self.fetch_own(*id, FetchWaiter::Gather(request));
            }
        }
        if remaining == 0 || wait_ms == 0 {
            let results = self.results(&ids);
            self.replies
                .push((request, ClientResponse::Results(results)));
            return;
        }
        for id in unfinished {
            if let Some(t) = self.task_mut(id) {
                t.waiters.push(request);
            }
        }
        self.waiters.insert(
            request,
            Waiter {
                ids,
                remaining,
                statuses: false,
            },
        );
        self.timers.push((request, wait_ms));
    }

    /// The client waits for `keys` (`wait`, `as_completed`): replied with their statuses
    /// once one of them is done (finished, failed, released or unknown here) — every one
    /// when `all` — at once if that holds already or `wait_ms` is 0, otherwise when the
    /// task finishes or after a timer of `wait_ms`.
    pub fn handle_await_status(
        &mut self,
        request: RequestId,
        keys: Vec<Key>,
        all: bool,
        wait_ms: u32,
    ) {
        if self.refused_as_moved(request) {
            return;
        }
        let ids: Vec<Option<TaskId>> = keys.iter().map(|k| self.index.get(k).copied()).collect();
        let unfinished: Vec<TaskId> = ids
            .iter()
            .flatten()
            .copied()
            .filter(|&id| {
                self.task(id)
                    .is_some_and(|t| !t.state.finished() && !t.cancelled)
            })
            .collect();
        // A key unknown here counts as done (the client sees it lost or cancelled).
        let enough = if all {
            unfinished.is_empty()
        } else {
            unfinished.len() < ids.len() || ids.is_empty()
        };
        if enough || wait_ms == 0 {
            let statuses = self.statuses(&ids);
            self.replies
                .push((request, ClientResponse::Statuses(statuses)));
            return;
        }
        for &id in &unfinished {
            if let Some(t) = self.task_mut(id) {
                t.waiters.push(request);
            }
        }
        let remaining = if all { unfinished.len() as u32 } else { 1 };
        self.waiters.insert(
            request,
            Waiter {
                ids,
                remaining,
                statuses: true,
            },
        );
        self.timers.push((request, wait_ms));
    }

    /// A held request's timer fired: reply with where its keys stand. Stale timers are
    /// ignored.
    pub fn handle_wait_expired(&mut self, request: RequestId) {
        if let Some(w) = self.waiters.remove(&request) {
            self.reply_waiter(request, w);
        }
    }

    fn reply_waiter(&mut self, request: RequestId, w: Waiter) {
        let reply = if w.statuses {
            ClientResponse::Statuses(self.statuses(&w.ids))
        } else {
            ClientResponse::Results(self.results(&w.ids))
        };
        self.replies.push((request, reply));
    }

    /// The client retries failed keys (Dask's `future.retry()`): each failed task among
    /// `keys` and the failed tasks they depend on run again (their inputs computed again if
    /// they were freed). Replies `Retried` with how many.
    pub fn handle_retry(&mut self, request: RequestId, keys: Vec<Key>) {
        if self.refused_as_moved(request) {
            return;
        }
        let mut roots = Vec::new();
        let mut stack: Vec<TaskId> = keys
            .iter()
            .filter_map(|k| self.index.get(k).copied())
            .collect();
        let mut seen = rustc_hash::FxHashSet::default();
        while let Some(id) = stack.pop() {
            if !seen.insert(id) {
                continue;
            }
            let Some(t) = self.task_mut(id) else { continue };
            if !matches!(t.state, State::Erred(_)) {
                continue;
            }
            t.state = State::Released;
            roots.push(id);
            stack.extend(t.deps.iter().copied());
        }
        let n = roots.len() as u64;
        self.stats.retried += n;
        self.revive(roots);
        self.replies.push((request, ClientResponse::Retried(n)));
    }

    /// The client dropped one future per key. Values nobody needs any more are dropped;
    /// tasks nobody needs any more are cancelled. Replies `Released`.
    pub fn handle_release(&mut self, request: RequestId, keys: Vec<Key>) {
        for k in keys {
            self.client_release(k);
        }
        self.replies.push((request, ClientResponse::Released));
    }

    /// A client dropped one future of `k`: one reference less (the backups are told), and
    /// the task goes if nothing else needs it.
    pub(super) fn client_release(&mut self, k: Key) {
        if let Some(&id) = self.index.get(&k)
            && let Some(t) = self.task_mut(id)
            && t.client_refs > 0
        {
            t.client_refs -= 1;
            if !self.backups.is_empty() {
                self.replica_out.released.push(k);
            }
            self.maybe_forget(id);
        }
    }

    // ----- inputs: the pool, the clock, the cluster ----------------------------------

    /// A running task gave its thread slot up while it waits for other tasks (a new pool
    /// thread took it): it no longer counts as running, so another task starts.
    pub fn handle_seceded(&mut self, task: TaskId) {
        let running = if task.foreign() {
            self.foreign_ref(task)
                .is_some_and(|f| f.state == ForeignState::Running)
        } else {
            self.task(task)
                .is_some_and(|t| matches!(t.state, State::Running))
        };
        if running && self.seceded.insert(task) {
            self.in_flight -= 1;
            self.stats.seceded += 1;
        }
    }

    /// A running task returned: its slot is free (unless it gave it up already).
    fn free_slot(&mut self, task: TaskId) {
        // Almost always empty: no hashing on the hot path then.
        if self.seceded.is_empty() || !self.seceded.remove(&task) {
            self.in_flight -= 1;
        }
    }

    /// The pool finished a task.
    pub fn handle_task_done(&mut self, done: TaskDone) {
        if done.task.foreign() {
            self.foreign_done(done);
            return;
        }
        let Some(task) = self.task_mut(done.task) else {
            return;
        };
        if !matches!(task.state, State::Running) {
            return;
        }
        self.free_slot(done.task);
        self.stats.tasks_run += 1;
        self.measure(done.task, done.elapsed_ns);
        let task = self.task_mut(done.task).expect("checked above");
        if task.cancelled {
            if task.spec_refs > 0 {
                // Tasks naming it exist: its spec stays (lineage, and backups' copies).
                task.cancelled = false;
                task.state = State::Released;
                let key = task.key.clone();
                self.index.entry(key).or_insert(done.task);
                return;
            }
            for d in self.remove(done.task) {
                self.maybe_forget(d);
            }
            return;
        }
        if done.result.is_err() && task.retries > 0 {
            // Run it again (Dask's `retries=`).
            task.retries -= 1;
            self.stats.task_retries += 1;
            self.make_ready(done.task);
            return;
        }
        let outcome = match done.result {
            Ok(v) => {
                let v = Bytes::from(v);
                let len = v.len() as u64;
                Ok((Some(v), Vec::new(), len))
            }
            Err(f) => {
                let key = task.key.clone();
                Err(Arc::new(self.task_error(key, f)))
            }
        };
        self.finish(done.task, outcome);
    }

    /// The clock: retries what peers did not answer, forgets old tombstones and lets an
    /// idle node ask for work again. `now_ms` is any monotonic millisecond count.
    pub fn handle_tick(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        let now = self.now_ms;
        // Placed tasks with no news.
        while let Some(&Reverse((due, idx, generation))) = self.retry.peek() {
            if due > now {
                break;
            }
            self.retry.pop();
            let id = TaskId { idx, generation };
            let Some(t) = self.task(id) else { continue };
            let State::Remote {
                node,
                due_ms,
                acks,
                hops,
            } = t.state
            else {
                continue;
            };
            if due_ms != due {
                continue;
            }
            if self.peers[node as usize].dead {
                // Its node died: place it again.
                self.requeue(id);
                continue;
            }
            // No news: the assignment or the answer was lost (or the peer has the task and
            // its answer to the last retry was lost). The wait grows only with the peer's
            // answers, so that a few messages lost in a row cost seconds, not minutes.
            let next = now + retry_wait(acks);
            self.task_mut(id).expect("exists").state = State::Remote {
                node,
                due_ms: next,
                acks,
                hops,
            };
            self.retry.push(Reverse((next, idx, generation)));
            self.stats.retries += 1;
            let a = self.assignment(id);
            self.send(node, PeerMsg::Assign(a));
        }
        // Fetches with no answer.
        let mut due: Vec<(u32, Key)> = self
            .fetches
            .iter()
            .filter(|(_, f)| f.due_ms <= now)
            .map(|(k, _)| k.clone())
            .collect();
        due.sort();
        for k in due {
            if !self.fetch_needed(&k) {
                self.fetches.remove(&k);
                continue;
            }
            if k.0 == 0 {
                let holders = self.own_holders(&k.1);
                if !holders.is_empty() {
                    self.fetches.get_mut(&k).expect("listed").holders = holders;
                }
            }
            let f = self.fetches.get_mut(&k).expect("listed");
            f.next = (f.next + 1) % f.holders.len().max(1);
            f.due_ms = now + FETCH_RETRY_MS;
            let to = f.holders.get(f.next).copied();
            if let Some(to) = to {
                let owner = self.peers[k.0 as usize].node.clone();
                self.send(to, PeerMsg::Fetch { owner, key: k.1 });
            }
        }
        // Tombstones.
        while let Some((at, _, _)) = self.gone_order.front() {
            if at + TOMBSTONE_MS > now {
                break;
            }
            let (at, owner, key) = self.gone_order.pop_front().expect("peeked");
            let k = (owner, key);
            if self.gone.get(&k).is_some_and(|(_, t)| *t == at) {
                self.gone.remove(&k);
            }
        }
        if let Some(sent) = self.steal_pending
            && sent + STEAL_TIMEOUT_MS <= now
        {
            self.steal_pending = None;
        }
        self.sessions_tick();
        self.failover_tick();
    }

    /// The cluster as the gossiped state shows it. Tasks are placed only on live members
    /// with the same task functions as this node.
    pub fn handle_members(&mut self, members: &[PeerUpdate]) {
        let digest = self.registry.digest();
        let mut lost = Vec::new();
        let mut back = Vec::new();
        self.aliases.clear();
        for m in members {
            for a in &m.aliases {
                self.aliases.insert(a.clone(), m.node.clone());
            }
        }
        // A member's id always names that member, whatever another calls itself.
        for m in members {
            self.aliases.insert(m.node.0.clone(), m.node.clone());
        }
        for m in members {
            if m.node.0 == self.node {
                continue;
            }
            let p = self.intern_member(&m.node);
            let peer = &mut self.peers[p as usize];
            if !peer.dead && !m.alive {
                // Alive before, or only heard of (a result of its graphs may be kept here).
                lost.push(p);
                peer.dead_since = self.now_ms;
            }
            if peer.dead && m.alive && !peer.leaving {
                // Declared dead, and back: a partition healed, a long pause ended. (A node
                // that said it was leaving does not come back: membership flapping while it
                // finishes its goodbye is not a return.)
                back.push(p);
            }
            peer.nthreads = m.nthreads.max(1);
            peer.alive = m.alive;
            peer.dead = !m.alive;
            peer.eligible = m.functions_digest == digest;
            if *peer.resources != *m.resources {
                peer.resources = m.resources.clone().into_boxed_slice();
            }
            if peer.assigned_since == 0 {
                peer.reported = m.load.queued + m.load.running;
                peer.queued = m.load.queued;
                peer.paused = m.load.paused;
            }
        }
        self.refresh_candidates();
        for p in lost {
            self.peer_lost(p);
        }
        for p in back {
            self.peer_back(p);
        }
        self.update_backups();
        self.check_takeovers();
        for id in std::mem::take(&mut self.no_worker) {
            if self
                .task(id)
                .is_some_and(|t| matches!(t.state, State::NoWorker))
            {
                self.place(id);
            }
        }
    }

    /// The peers tasks may be placed on: this node, and live members with the same
    /// functions that are not leaving.
    fn refresh_candidates(&mut self) {
        self.candidates = (0..self.peers.len() as u32)
            .filter(|&p| {
                let peer = &self.peers[p as usize];
                p == 0 || (peer.alive && peer.eligible && !peer.leaving)
            })
            .collect();
    }

    /// Membership declared `p` dead: what it ran for this node's graphs is placed again,
    /// results only it held are computed again if still needed (from their inputs, and
    /// theirs, as far back as needed), and what this node ran or kept for it as an owner is
    /// dropped.
    fn peer_lost(&mut self, p: u32) {
        self.stats.peers_lost += 1;
        self.forwards_lost(p);
        self.moves_lost(p);
        // Worker side: tasks and results of graphs `p` owned wait for a take-over.
        if !self.alias.contains_key(&p) {
            self.orphans.insert(p, self.now_ms + ORPHAN_MS);
        }
        self.write_off(p, true);
    }

    /// What this node's graphs had on `p` is gone: tasks queued or running there are placed
    /// again, results only it held are computed again if still needed, fetches from it go
    /// elsewhere. `crashed`: `p` died (the attempt counts against the task); otherwise `p`
    /// is alive but dropped this node's work (see [`PeerMsg::Forgot`]).
    pub(super) fn write_off(&mut self, p: u32, crashed: bool) {
        let mut lost = Vec::new();
        let mut replace = Vec::new();
        for idx in 0..self.slots.len() {
            let generation = self.slots[idx].generation;
            let id = TaskId {
                idx: idx as u32,
                generation,
            };
            let Some(t) = self.slots[idx].item.as_mut() else {
                continue;
            };
            match &mut t.state {
                State::Memory { value, holders, .. } if holders.contains(&p) => {
                    holders.retain(|&h| h != p);
                    if value.is_none() && holders.is_empty() {
                        lost.push(id);
                    }
                }
                State::Remote { node, .. } if *node == p => replace.push(id),
                _ => {}
            }
        }
        // Fetches: ask another holder (or the owner) instead.
        let keys: Vec<(u32, Key)> = self
            .fetches
            .iter()
            .filter(|(_, f)| f.holders.contains(&p))
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            let owner_alive = k.0 != 0 && k.0 != p && self.peers[k.0 as usize].alive;
            // This node's own results: whoever holds them now (copies announced since).
            let current = if k.0 == 0 {
                self.own_holders(&k.1)
            } else {
                Vec::new()
            };
            let f = self.fetches.get_mut(&k).expect("listed");
            let was = f.holders.get(f.next).copied();
            f.holders.retain(|&h| h != p);
            for h in current {
                if !f.holders.contains(&h) {
                    f.holders.push(h);
                }
            }
            if f.holders.is_empty() && owner_alive {
                f.holders.push(k.0);
            }
            f.next = 0;
            if was == Some(p)
                && let Some(&to) = f.holders.first()
            {
                let owner = self.peers[k.0 as usize].node.clone();
                self.send(
                    to,
                    PeerMsg::Fetch {
                        owner,
                        key: k.1.clone(),
                    },
                );
            }
        }
        self.stats.recomputed += lost.len() as u64;
        self.stats.replaced += replace.len() as u64;
        if !lost.is_empty() || !replace.is_empty() {
            tracing::info!(
                peer = %self.peers[p as usize].node,
                lost = lost.len(),
                replaced = replace.len(),
                "a peer is gone: its unique results are lost, its tasks placed again"
            );
        }
        // Values nobody needs are simply gone; needed ones are computed again.
        let mut needed = Vec::new();
        for id in lost {
            // Dropping one may have dropped another of the list (an input only it needed).
            let Some(t) = self.task_mut(id) else { continue };
            if !matches!(t.state, State::Memory { .. }) {
                continue;
            }
            t.state = State::Released;
            if t.client_refs > 0 || t.pending_dependents > 0 {
                needed.push(id);
            } else {
                self.maybe_forget(id);
            }
        }
        let dead_name = self.peers[p as usize].node.0.clone();
        for id in replace {
            // A task given up earlier in this loop may have failed or cancelled others of
            // the list (its dependents, inputs only they needed): those stay as they are.
            let Some(t) = self.task_mut(id) else { continue };
            if !matches!(t.state, State::Remote { node, .. } if node == p) || t.cancelled {
                continue;
            }
            if crashed {
                t.attempts = t.attempts.saturating_add(1);
            }
            if t.attempts > MAX_ATTEMPTS {
                let e = TaskError {
                    kind: TaskErrorKind::Lost,
                    message: Arc::from(format!(
                        "the task was lost {} times with the node running it; it is not run again",
                        t.attempts
                    )),
                    key: t.key.clone(),
                    node: Some(dead_name.clone()),
                };
                // It counts as unfinished until this error finishes it.
                t.state = State::Waiting;
                self.finish(id, Err(Arc::new(e)));
                continue;
            }
            t.state = State::Waiting;
            self.requeue(id);
        }
        if !needed.is_empty() {
            self.revive(needed);
        }
    }

    /// Computes again finished tasks whose values are gone (`Released`) and that are
    /// needed, with every input of theirs that is gone too; their unfinished dependents
    /// wait for them again.
    fn revive(&mut self, roots: Vec<TaskId>) {
        let mut revived = Vec::new();
        let mut broken = Vec::new();
        let mut stack = roots;
        while let Some(id) = stack.pop() {
            let Some(t) = self.task_mut(id) else { continue };
            if !matches!(t.state, State::Released) {
                continue;
            }
            t.state = State::Waiting;
            self.unfinished += 1;
            revived.push(id);
            let ndeps = self.task(id).map_or(0, |t| t.deps.len());
            for i in 0..ndeps {
                let d = self.task(id).expect("revived").deps[i];
                match self.task_mut(d) {
                    Some(dt) => {
                        dt.pending_dependents += 1;
                        if matches!(dt.state, State::Released) {
                            stack.push(d);
                        }
                    }
                    // Lineage kept every input of a finished task; should one be missing
                    // all the same, the task fails rather than waits forever.
                    None => broken.push(id),
                }
            }
            // Gathers that waited for its value from the lost holder wait for it again.
            let key = self.task(id).expect("revived").key.clone();
            if let Some(f) = self.fetches.remove(&(0, key)) {
                for w in f.waiters {
                    if let FetchWaiter::Gather(r) = w {
                        self.task_mut(id).expect("revived").waiters.push(r);
                    }
                }
            }
        }
        // Unfinished dependents that counted on these values wait for them again.
        let mut dependents = Vec::new();
        for &id in &revived {
            let t = self.task(id).expect("revived");
            dependents.extend(t.dependents.iter().copied());
        }
        for d in dependents {
            self.requeue(d);
        }
        // Inputs first: the deepest revived tasks were pushed last.
        for id in revived.into_iter().rev() {
            // An error finishing a broken task below may have finished (or dropped) others.
            let Some(t) = self.task(id) else { continue };
            if !matches!(t.state, State::Waiting) {
                continue;
            }
            if broken.contains(&id) {
                let key = t.key.clone();
                let e = TaskError {
                    kind: TaskErrorKind::Lost,
                    message: Arc::from(
                        "its value was lost and an input needed to compute it again is gone",
                    ),
                    key,
                    node: Some(self.node.clone()),
                };
                self.finish(id, Err(Arc::new(e)));
            } else {
                self.requeue(id);
            }
        }
    }

    /// An unfinished task whose inputs may have changed availability: it waits for the
    /// missing ones (taken back from wherever it was queued), or is placed again.
    fn requeue(&mut self, id: TaskId) {
        let Some(t) = self.task(id) else { return };
        let (ready, remote) = match t.state {
            State::Waiting | State::Fetching | State::NoWorker => (false, None),
            State::Ready => (true, None),
            State::Remote { node, .. } => (false, Some((node, t.key.clone()))),
            // Running here (it has its inputs) or finished: nothing to do.
            _ => return,
        };
        if let Some((node, key)) = remote {
            if self.peers[node as usize].alive {
                self.release_at(node, key);
            }
            self.peers[node as usize].assigned_since =
                self.peers[node as usize].assigned_since.saturating_sub(1);
        }
        if ready {
            self.ready_count -= 1;
        }
        let t = self.task(id).expect("exists");
        let missing = t
            .deps
            .iter()
            .filter(|d| !self.task(**d).is_some_and(|dt| dt.state.available()))
            .count() as u32;
        let t = self.task_mut(id).expect("exists");
        t.state = State::Waiting;
        t.waiting_on = missing;
        if missing == 0 {
            self.place(id);
        }
    }

    /// A batch of messages from the peer `from`. Messages that make no sense (unknown
    /// tasks, unknown functions, stale news) are ignored or answered with an error; none
    /// panics the node.
    pub fn handle_peer(&mut self, from: &NodeId, batch: PeerBatch) {
        if from.0 == self.node {
            return;
        }
        let p = self.intern(from);
        let mut batch = batch;
        if self.left() {
            // This node handed its graphs over: news of them is its successor's, and must
            // not be answered here (a release would drop a result the successor counts on).
            batch.msgs.retain(|m| {
                !matches!(
                    m,
                    PeerMsg::Done { .. }
                        | PeerMsg::Holding { .. }
                        | PeerMsg::Moved { .. }
                        | PeerMsg::Returned { .. }
                        | PeerMsg::Dropped { .. }
                        | PeerMsg::Accepted { .. }
                )
            });
        }
        if self.alias.contains_key(&p) {
            // An owner taken over: what it sent is void, but for its answer to the take-over
            // and its last changes (it was handing over, alive: clients it still served may
            // have dropped futures).
            batch
                .msgs
                .retain(|m| matches!(m, PeerMsg::Inventory { .. } | PeerMsg::Replica(_)));
            if batch.msgs.is_empty() {
                return;
            }
        }
        {
            let peer = &mut self.peers[p as usize];
            peer.reported = u64::from(batch.load.queued) + u64::from(batch.load.running);
            peer.queued = u64::from(batch.load.queued);
            peer.nthreads = batch.load.nthreads.max(1);
            peer.paused = batch.load.paused;
            peer.assigned_since = 0;
        }
        for msg in batch.msgs {
            match msg {
                PeerMsg::Assign(a) => self.accept(a, false),
                PeerMsg::Done {
                    key,
                    size,
                    error,
                    elapsed_ns,
                    hops,
                } => self.remote_done(p, key, size, error, elapsed_ns, hops),
                PeerMsg::Holding { key, size } => self.holding(p, key, size),
                PeerMsg::Moved { key, to, hops } => {
                    let to = self.intern(&to);
                    self.moved(key, to, hops);
                }
                PeerMsg::Fetch { owner, key } => self.serve(p, owner, key),
                PeerMsg::Data { owner, key, value } => self.data(p, owner, key, value),
                PeerMsg::Forgotten { key } => self.forgotten(p, key),
                PeerMsg::Release { owner, keys, hops } => {
                    let o = self.owner_of(&owner);
                    if o != 0 {
                        for k in keys {
                            self.release_foreign(o, k, hops);
                        }
                    }
                }
                PeerMsg::Steal { want } => self.give(p, want),
                PeerMsg::Stolen { tasks, busiest } => {
                    self.steal_pending = None;
                    if let Some((node, queued)) = busiest {
                        let b = self.intern(&node);
                        if b != 0 && self.peers[b as usize].alive {
                            let peer = &mut self.peers[b as usize];
                            peer.queued = peer.queued.max(u64::from(queued));
                        }
                    }
                    if tasks.is_empty() {
                        // Look elsewhere at once a few times, then slow down.
                        self.steal_misses += 1;
                        if self.steal_misses > STEAL_PROBES {
                            self.steal_backoff_ms =
                                (self.steal_backoff_ms * 2).clamp(10, MAX_STEAL_BACKOFF_MS);
                            self.steal_due_ms = self.now_ms + self.steal_backoff_ms;
                        }
                    } else {
                        self.steal_misses = 0;
                        self.steal_backoff_ms = 0;
                        self.stats.stolen += tasks.len() as u64;
                    }
                    for a in tasks {
                        self.accept(a, true);
                    }
                }
                PeerMsg::Replica(r) => self.replica(p, *r),
                PeerMsg::ReplicaEnd => {
                    self.replicas.remove(&p);
                }
                PeerMsg::Recover {
                    old,
                    epoch,
                    handover,
                } => self.recover(p, old, epoch, handover),
                PeerMsg::Inventory {
                    old,
                    held,
                    running,
                    moved,
                    erred,
                } => self.inventory(p, old, held, running, moved, erred),
                PeerMsg::Leaving => self.peer_leaving(p),
                PeerMsg::Returned { key, hops } => self.returned(p, key, hops),
                PeerMsg::Dropped { key, hops } => self.dropped(p, key, hops),
                PeerMsg::Accepted { key, hops } => self.accepted(p, key, hops),
                PeerMsg::Take { owner, key, size } => self.take(p, owner, key, size),
                PeerMsg::Stored { key, .. } => self.stored(key),
                PeerMsg::HandOver { members } => self.handed_over_to_me(p, members),
                PeerMsg::Forgot => self.forgot_by(p),
                PeerMsg::Superseded { sessions, epoch } => self.superseded(p, &sessions, epoch),
                PeerMsg::Forward { req, request } => self.forwarded_in(p, req, request),
                PeerMsg::Forwarded { req, reply } => self.forwarded_back(p, req, reply),
                PeerMsg::Unpublished { name, keys } => self.unpublished(name, keys),
            }
        }
    }

    // ----- outputs ------------------------------------------------------------------

    /// Replies to send, in the order they were produced.
    pub fn take_replies(&mut self) -> Vec<(RequestId, ClientResponse)> {
        self.route_forwarded();
        std::mem::take(&mut self.replies)
    }

    /// Tasks to start now, highest priority first. An idle node asks a peer for work here.
    pub fn take_jobs(&mut self) -> Vec<Job> {
        self.update_pause();
        self.dispatch();
        self.maybe_steal();
        std::mem::take(&mut self.jobs)
    }

    /// Batches for peers, one per peer with something to say.
    pub fn take_sends(&mut self) -> Vec<(NodeId, PeerBatch)> {
        self.route_forwarded();
        self.handover_progress();
        self.leave_progress();
        self.flush_replica();
        if self.dirty.is_empty() {
            return Vec::new();
        }
        let load = LoadHint {
            queued: self.ready_count,
            running: self.in_flight,
            nthreads: self.nthreads,
            paused: self.paused,
        };
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty
            .into_iter()
            .map(|p| {
                let peer = &mut self.peers[p as usize];
                let msgs = std::mem::take(&mut peer.outbox);
                (peer.node.clone(), PeerBatch { load, msgs })
            })
            .collect()
    }

    /// This node's backups (the nodes that keep copies of its graphs), first first.
    pub fn backups(&self) -> Vec<NodeId> {
        self.backups
            .iter()
            .map(|&b| self.peers[b as usize].node.clone())
            .collect()
    }

    /// Timers to set: call [`NodeCore::handle_wait_expired`] with the request after the
    /// given number of milliseconds.
    pub fn take_timers(&mut self) -> Vec<(RequestId, u32)> {
        std::mem::take(&mut self.timers)
    }

    // ----- internals: tasks of this node's graphs -------------------------------------

    fn task(&self, id: TaskId) -> Option<&Task> {
        if id.foreign() {
            return None;
        }
        let slot = self.slots.get(id.slot())?;
        if slot.generation != id.generation {
            return None;
        }
        slot.item.as_ref()
    }

    fn task_mut(&mut self, id: TaskId) -> Option<&mut Task> {
        if id.foreign() {
            return None;
        }
        let slot = self.slots.get_mut(id.slot())?;
        if slot.generation != id.generation {
            return None;
        }
        slot.item.as_mut()
    }

    fn submit(&mut self, g: GraphSubmission) -> Result<(), GraphError> {
        let fingerprint = fingerprint(&g);
        if let Some(&old) = self.graphs.get(&g.id) {
            return if old == fingerprint {
                Ok(())
            } else {
                Err(GraphError::GraphIdReused {
                    graph: g.id.to_string(),
                })
            };
        }
        // Every key the graph names, as task or input (to revive dropped ones below).
        let named: Vec<Key> = g
            .tasks
            .iter()
            .flat_map(|t| std::iter::once(&t.key).chain(t.dependencies()))
            .filter(|k| self.index.contains_key(*k))
            .cloned()
            .collect();
        // A key that already exists is the same task: keep the existing one (as Dask does).
        let tasks = g
            .tasks
            .into_iter()
            .filter(|t| !self.index.contains_key(&t.key))
            .collect();
        let registry = self.registry;
        // A take-over's copies (inserted while adopting) come under an id of its own.
        let session = if self.adopting.is_some() {
            0
        } else {
            (g.id.0 >> 64) as u64
        };
        let valid =
            Graph::new(tasks).validate(|k| self.index.contains_key(k), |f| registry.contains(f))?;
        let mut failed = Vec::new();
        let mut ready = Vec::new();
        for spec in valid.into_tasks() {
            let entry = registry
                .get(&spec.function)
                .expect("validated against the registry");
            let placement = spec.placement.map(|pl| self.restrict(&pl.nodes, pl.loose));
            let resources = spec.resources.into_boxed_slice();
            let how = (spec.priority, spec.retries, session);
            match self.insert(spec.key, entry, spec.args, placement, resources, how) {
                Inserted::Failed(id, e) => failed.push((id, e)),
                Inserted::Ready(id) => ready.push(id),
                Inserted::Waiting => {}
            }
        }
        for k in &g.keep {
            if let Some(&id) = self.index.get(k)
                && let Some(t) = self.task_mut(id)
            {
                t.client_refs += 1;
            }
        }
        // Keys this graph names whose values were dropped are computed again (lineage).
        let released: Vec<TaskId> = named
            .iter()
            .filter_map(|k| self.index.get(k).copied())
            .filter(|&id| {
                self.task(id).is_some_and(|t| {
                    matches!(t.state, State::Released)
                        && (t.client_refs > 0 || t.pending_dependents > 0)
                })
            })
            .collect();
        if !released.is_empty() {
            self.revive(released);
        }
        // Tasks whose inputs had already failed fail now, once the client's references are
        // counted (so their errors are kept for the client).
        for (id, e) in failed {
            self.finish(id, Err(e));
        }
        for id in ready {
            // A failure above may have cancelled it (nothing needs it any more).
            if self
                .task(id)
                .is_some_and(|t| matches!(t.state, State::Waiting))
            {
                self.place(id);
            }
        }
        self.graphs.insert(g.id, fingerprint);
        self.graph_order.push_back(g.id);
        if !self.backups.is_empty() && self.adopting.is_none() {
            self.replica_out.graphs.push((g.id, fingerprint));
        }
        let session = (g.id.0 >> 64) as u64;
        if self.adopting.is_some() {
            // A take-over's graphs: their sessions are claimed by the take-over.
        } else if !self.sessions.contains_key(&session) {
            // A graph id is (session << 64) | counter: one entry of the ownership table per
            // session stands for all its graphs.
            self.own_session(session, 1);
            if !self.backups.is_empty() {
                self.replica_out.sessions.push((session, 1));
            }
        }
        if self.graph_order.len() > REMEMBERED_GRAPHS
            && let Some(old) = self.graph_order.pop_front()
        {
            self.graphs.remove(&old);
        }
        Ok(())
    }

    /// Adds a task.
    fn insert(
        &mut self,
        key: Key,
        entry: &'static TaskEntry,
        spec_args: Vec<Arg>,
        placement: Option<Box<Restrict>>,
        resources: Amounts,
        (user_priority, retries, session): (i32, u8, u64),
    ) -> Inserted {
        let mut args = Vec::with_capacity(spec_args.len());
        let mut deps = Vec::new();
        for a in spec_args {
            match a {
                Arg::Value(b) => args.push(ArgSlot::Value(b)),
                Arg::Key(k) => {
                    let id = self.index[&k];
                    deps.push(id);
                    args.push(ArgSlot::Dep(id));
                }
            }
        }
        deps.sort_unstable();
        deps.dedup();

        let (idx, generation) = alloc_slot(&mut self.slots, &mut self.free);
        let id = TaskId { idx, generation };
        let mut waiting_on = 0;
        let mut failed = None;
        for &d in &deps {
            let dt = self.task_mut(d).expect("dependency exists");
            dt.dependents.push(id);
            dt.pending_dependents += 1;
            dt.spec_refs += 1;
            match &dt.state {
                State::Memory { .. } => {}
                State::Erred(e) => failed = Some(e.clone()),
                _ => waiting_on += 1,
            }
        }
        let priority = task_priority(user_priority, self.next_priority);
        self.next_priority += 1;
        self.index.insert(key.clone(), id);
        if let Some(adopted) = &mut self.adopting {
            adopted.push(id);
        }
        self.slots[idx as usize].item = Some(Task {
            key,
            session,
            entry,
            args,
            deps,
            dependents: Vec::new(),
            waiting_on,
            pending_dependents: 0,
            spec_refs: 0,
            attempts: 0,
            client_refs: 0,
            waiters: Vec::new(),
            cancelled: false,
            priority,
            retries,
            hops: 0,
            est_ns: 0.0,
            resources,
            placement,
            state: State::Waiting,
        });
        self.unfinished += 1;
        match failed {
            Some(e) => Inserted::Failed(id, e),
            None if waiting_on == 0 => Inserted::Ready(id),
            None => Inserted::Waiting,
        }
    }

    /// Chooses where a task whose dependencies are finished runs, and sends it there.
    fn place(&mut self, id: TaskId) {
        if self.adopting.is_some() || self.leaving.is_some() {
            // A take-over in progress: placed once the members said what they hold. A
            // leaving node places nothing: its successor will.
            return;
        }
        let restricted = self
            .task(id)
            .is_some_and(|t| t.placement.is_some() || !t.resources.is_empty());
        let target = if self.candidates.len() <= 1 && !restricted {
            Some(0)
        } else {
            self.choose(id)
        };
        match target {
            Some(0) => self.place_here(id),
            Some(node) => self.place_remote(id, node),
            None => {
                self.task_mut(id).expect("placing a live task").state = State::NoWorker;
                self.no_worker.push(id);
            }
        }
    }

    /// Interns the nodes of a placement restriction (ids, or names and addresses of
    /// members).
    fn restrict(&mut self, nodes: &[Arc<str>], loose: bool) -> Box<Restrict> {
        let nodes = nodes
            .iter()
            .map(|n| {
                let id = match self.aliases.get(n) {
                    Some(id) => id.clone(),
                    None => NodeId(n.clone()),
                };
                self.intern(&id)
            })
            .collect();
        Box::new(Restrict { nodes, loose })
    }

    /// Where a task goes; `None` when it is restricted to nodes none of which is alive.
    fn choose(&mut self, id: TaskId) -> Option<u32> {
        let (ra, rb) = (self.next_random(), self.next_random());
        let t = self.task(id).expect("placing a live task");
        let needs = &t.resources;
        let ok = |p: u32| {
            (p == 0 || self.candidates.contains(&p))
                && (needs.is_empty() || fits(&self.peers[p as usize].resources, needs))
        };
        if let Some(r) = &t.placement {
            let best = r.nodes.iter().copied().filter(|&p| ok(p)).min_by(|&a, &b| {
                self.load_per_thread(a)
                    .total_cmp(&self.load_per_thread(b))
                    .then(a.cmp(&b))
            });
            match best {
                Some(p) => return Some(p),
                None if !r.loose => return None,
                None => {}
            }
        }
        // Members that may run it (all candidates, unless it needs resources).
        let filtered: Vec<u32>;
        let cands: &[u32] = if needs.is_empty() {
            &self.candidates
        } else {
            filtered = self.candidates.iter().copied().filter(|&p| ok(p)).collect();
            &filtered
        };
        match cands.len() {
            0 => return None,
            1 => return Some(cands[0]),
            _ => {}
        }
        // Bytes of its inputs per holder.
        let mut bytes: Vec<(u32, u64)> = Vec::new();
        for d in &t.deps {
            if let Some(State::Memory {
                value,
                holders,
                size,
            }) = self.task(*d).map(|t| &t.state)
            {
                let here = value.is_some().then_some(0u32);
                for h in here.into_iter().chain(holders.iter().copied()) {
                    match bytes.iter_mut().find(|(p, _)| *p == h) {
                        Some((_, b)) => *b += size,
                        None => bytes.push((h, *size)),
                    }
                }
            }
        }
        let best = bytes
            .iter()
            .filter(|(p, _)| ok(*p))
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
            .copied();
        // A task shorter than a trip to a peer is not worth shipping: it runs where its
        // inputs are, or here.
        let tiny = self.estimate_ns(&t.key) < MOVE_COST_NS;
        if let Some((holder, b)) = best {
            if (b >= HEAVY_INPUT_BYTES || tiny || self.has_room(holder))
                && !self.is_paused_peer(holder)
            {
                return Some(holder);
            }
        } else if (tiny || self.has_room(0)) && ok(0) && !self.paused {
            return Some(0);
        }
        // Two random choices over the load; this node wins ties.
        let n = cands.len() as u64;
        let ia = ra % n;
        let ib = (ia + 1 + rb % (n - 1)) % n;
        let (a, b) = (cands[ia as usize], cands[ib as usize]);
        let (la, lb) = (self.load_per_thread(a), self.load_per_thread(b));
        Some(if la < lb || (la == lb && a < b) { a } else { b })
    }

    /// Whether `p` has a thread (by this node's estimate) for one more task.
    fn has_room(&self, p: u32) -> bool {
        if self.is_paused_peer(p) {
            return false;
        }
        if p == 0 {
            self.in_flight + self.ready_count < self.nthreads
        } else {
            let peer = &self.peers[p as usize];
            peer.reported + peer.assigned_since < u64::from(peer.nthreads)
        }
    }

    /// Whether `p` said it is paused for memory.
    fn is_paused_peer(&self, p: u32) -> bool {
        if p == 0 {
            self.paused
        } else {
            self.peers[p as usize].paused
        }
    }

    fn load_per_thread(&self, p: u32) -> f64 {
        if self.is_paused_peer(p) {
            // Last choice: a paused node runs nothing until its memory is down.
            return f64::INFINITY;
        }
        if p == 0 {
            f64::from(self.in_flight + self.ready_count) / f64::from(self.nthreads)
        } else {
            let peer = &self.peers[p as usize];
            (peer.reported + peer.assigned_since) as f64 / f64::from(peer.nthreads)
        }
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: seeded from the node's name; deterministic.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Runs a task here: ready now when its inputs are here, otherwise once fetched.
    fn place_here(&mut self, id: TaskId) {
        let t = self.task(id).expect("placing a live task");
        let missing: Vec<TaskId> = t
            .deps
            .iter()
            .copied()
            .filter(|d| {
                matches!(
                    self.task(*d).map(|t| &t.state),
                    Some(State::Memory { value: None, .. })
                )
            })
            .collect();
        if missing.is_empty() {
            self.make_ready(id);
            return;
        }
        let t = self.task_mut(id).expect("exists");
        t.state = State::Fetching;
        t.waiting_on = missing.len() as u32;
        for d in missing {
            self.fetch_own(d, FetchWaiter::Own(id));
        }
    }

    fn place_remote(&mut self, id: TaskId, node: u32) {
        let due_ms = self.now_ms + RETRY_MS;
        let t = self.task_mut(id).expect("placing a live task");
        t.hops = t.hops.saturating_add(1);
        t.state = State::Remote {
            node,
            due_ms,
            acks: 0,
            hops: t.hops,
        };
        self.retry.push(Reverse((due_ms, id.idx, id.generation)));
        self.peers[node as usize].assigned_since += 1;
        self.stats.placed_remote += 1;
        let a = self.assignment(id);
        self.send(node, PeerMsg::Assign(a));
    }

    /// The assignment of a task whose inputs are finished.
    fn assignment(&self, id: TaskId) -> Assignment {
        let t = self.task(id).expect("assigning a live task");
        let args = t
            .args
            .iter()
            .map(|a| match a {
                ArgSlot::Value(b) => AssignArg::Value(b.clone()),
                ArgSlot::Dep(d) => {
                    let dt = self.task(*d).expect("inputs of a live task are kept");
                    let (size, holders) = match &dt.state {
                        State::Memory {
                            value,
                            holders,
                            size,
                        } => {
                            let here = value.is_some().then_some(0u32);
                            let holders = here
                                .into_iter()
                                .chain(holders.iter().copied())
                                .map(|h| self.peers[h as usize].node.clone())
                                .collect();
                            (*size, holders)
                        }
                        _ => (0, Vec::new()),
                    };
                    AssignArg::Input {
                        key: dt.key.clone(),
                        size,
                        holders,
                    }
                }
            })
            .collect();
        Assignment {
            owner: self.peers[0].node.clone(),
            key: t.key.clone(),
            function: Arc::from(t.entry.name),
            args,
            priority: t.priority,
            placement: self.placement_names(&t.placement),
            resources: t.resources.to_vec(),
            hops: t.hops,
            retries: t.retries,
        }
    }

    fn make_ready(&mut self, id: TaskId) {
        if let Some(t) = self.task_mut(id) {
            t.state = State::Ready;
            let priority = t.priority;
            self.ready.push(Reverse((priority, id.idx, id.generation)));
            self.ready_count += 1;
        }
    }

    /// Marks a task finished and propagates: dependents are placed or, on error, fail
    /// with the same cause; waiters progress; values nobody needs are dropped.
    fn finish(&mut self, root: TaskId, outcome: Outcome) {
        // Dependents failed by this task's failure; empty (no allocation) on success.
        let mut work = Vec::new();
        let mut next = Some((root, outcome));
        while let Some((id, outcome)) = next.take().or_else(|| work.pop()) {
            let Some(task) = self.task_mut(id) else {
                continue;
            };
            if task.state.finished() {
                continue;
            }
            let waiters = std::mem::take(&mut task.waiters);
            let mut remote_only = false;
            let mut local = None;
            let error = match outcome {
                Ok((value, holders, size)) => {
                    if value.is_some() {
                        local = Some(size);
                    } else {
                        remote_only = true;
                    }
                    task.state = State::Memory {
                        value,
                        holders,
                        size,
                    };
                    None
                }
                Err(e) => {
                    task.state = State::Erred(e.clone());
                    Some(e)
                }
            };
            if let Some(size) = local {
                self.stored += 1;
                self.memory_used += size;
            }
            self.unfinished -= 1;
            // Dependents and inputs stay listed (lineage); walk them by position, as placing
            // a dependent does not change this task's lists.
            let ndependents = self.task(id).map_or(0, |t| t.dependents.len());
            for i in 0..ndependents {
                let d = self.task(id).expect("being finished").dependents[i];
                match &error {
                    None => {
                        if let Some(dt) = self.task_mut(d)
                            && matches!(dt.state, State::Waiting)
                        {
                            dt.waiting_on -= 1;
                            if dt.waiting_on == 0 {
                                self.place(d);
                            }
                        }
                    }
                    Some(e) => work.push((d, Err(e.clone()))),
                }
            }
            for w in waiters {
                // A gather needs the value here; an await of statuses does not.
                let gather = self.waiters.get(&w).is_none_or(|x| !x.statuses);
                if remote_only && gather {
                    self.fetch_own(id, FetchWaiter::Gather(w));
                } else {
                    self.waiter_progress(w);
                }
            }
            let ndeps = self.task(id).map_or(0, |t| t.deps.len());
            for i in 0..ndeps {
                let Some(d) = self.task(id).map(|t| t.deps[i]) else {
                    break;
                };
                if let Some(dt) = self.task_mut(d) {
                    dt.pending_dependents -= 1;
                    self.maybe_forget(d);
                }
            }
            self.maybe_forget(id);
        }
    }

    /// Drops a task nobody needs: a finished one's value is freed (here and on its
    /// holders), an unfinished one is cancelled (and so are inputs only it needed).
    fn maybe_forget(&mut self, root: TaskId) {
        // The walk's stack is kept between calls (called twice per finished task).
        let mut work = std::mem::take(&mut self.forget_stack);
        work.push(root);
        while let Some(id) = work.pop() {
            let Some(t) = self.task(id) else { continue };
            if t.client_refs > 0 || t.pending_dependents > 0 || t.cancelled {
                continue;
            }
            match t.state {
                // An error is final: nothing to recompute. Its spec stays while dependents
                // exist (they name it; a backup's copy of them must too).
                State::Erred(_) => {
                    if t.spec_refs == 0 {
                        work.extend(self.remove(id));
                    }
                }
                State::Memory { .. } | State::Released => {
                    if t.spec_refs == 0 {
                        work.extend(self.remove(id));
                    } else {
                        self.drop_value(id);
                    }
                }
                State::Running => {
                    // The function is running: drop its value when it returns. The key is
                    // forgotten now, so a later graph naming it is refused instead of
                    // waiting for a value that will never be kept.
                    let deps = t.deps.clone();
                    let key = t.key.clone();
                    self.task_mut(id).expect("exists").cancelled = true;
                    if self.index.get(&key) == Some(&id) {
                        self.index.remove(&key);
                    }
                    self.unfinished -= 1;
                    self.release_inputs(&deps, &mut work);
                }
                State::Remote { node, .. } => {
                    let deps = t.deps.clone();
                    let key = t.key.clone();
                    let keep_spec = t.spec_refs > 0;
                    self.release_at(node, key);
                    self.unfinished -= 1;
                    if keep_spec {
                        self.task_mut(id).expect("exists").state = State::Released;
                    } else {
                        work.extend(self.remove(id));
                    }
                    self.release_inputs(&deps, &mut work);
                }
                State::Waiting | State::Ready | State::Fetching | State::NoWorker => {
                    let deps = t.deps.clone();
                    let keep_spec = t.spec_refs > 0;
                    if matches!(t.state, State::Ready) {
                        self.ready_count -= 1;
                    }
                    self.unfinished -= 1;
                    if keep_spec {
                        // Not needed now; its spec stays while tasks naming it exist
                        // (lineage, and a backup's copy of them).
                        self.task_mut(id).expect("exists").state = State::Released;
                    } else {
                        work.extend(self.remove(id));
                    }
                    self.release_inputs(&deps, &mut work);
                }
            }
        }
        self.forget_stack = work;
    }

    fn release_inputs(&mut self, deps: &[TaskId], work: &mut Vec<TaskId>) {
        for &d in deps {
            if let Some(dt) = self.task_mut(d) {
                dt.pending_dependents -= 1;
                work.push(d);
            }
        }
    }

    /// Keeps a finished task's spec for lineage, and drops its value (here and on its
    /// holders).
    fn drop_value(&mut self, id: TaskId) {
        let t = self.task_mut(id).expect("exists");
        let old = std::mem::replace(&mut t.state, State::Released);
        let key = t.key.clone();
        if let State::Memory {
            value,
            holders,
            size,
        } = old
        {
            if value.is_some() {
                self.stored -= 1;
                self.memory_used -= size;
            }
            for h in holders {
                self.release_at(h, key.clone());
            }
        }
    }

    /// Frees a task's slot; returns its inputs that may now be forgotten too (the caller
    /// runs [`NodeCore::maybe_forget`] on them: no recursion along long chains).
    #[must_use]
    fn remove(&mut self, id: TaskId) -> Vec<TaskId> {
        let slot = &mut self.slots[id.slot()];
        let Some(task) = slot.item.take() else {
            return Vec::new();
        };
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(id.idx);
        if let State::Memory {
            value,
            holders,
            size,
        } = &task.state
        {
            if value.is_some() {
                self.stored -= 1;
                self.memory_used -= size;
            }
            for &h in holders {
                self.release_at_hops(h, task.key.clone(), task.hops);
            }
        }
        if self.index.get(&task.key) == Some(&id) {
            self.index.remove(&task.key);
        }
        if !self.backups.is_empty() {
            self.replica_out.forgotten.push(task.key.clone());
        }
        for w in task.waiters {
            self.waiter_progress(w);
        }
        let mut freed = Vec::new();
        for d in task.deps {
            if let Some(dt) = self.task_mut(d) {
                dt.spec_refs -= 1;
                if dt.spec_refs == 0 && matches!(dt.state, State::Released | State::Erred(_)) {
                    freed.push(d);
                }
            }
        }
        freed
    }

    fn waiter_progress(&mut self, request: RequestId) {
        let Some(w) = self.waiters.get_mut(&request) else {
            return;
        };
        w.remaining = w.remaining.saturating_sub(1);
        if w.remaining == 0 {
            let w = self.waiters.remove(&request).expect("present");
            self.reply_waiter(request, w);
        }
    }

    fn statuses(&self, ids: &[Option<TaskId>]) -> Vec<KeyStatus> {
        ids.iter()
            .map(|id| match id.and_then(|id| self.task(id)) {
                None => KeyStatus::Unknown,
                Some(t) => status_of(t),
            })
            .collect()
    }

    fn results(&self, ids: &[Option<TaskId>]) -> Vec<KeyResult> {
        ids.iter()
            .map(|id| match id.and_then(|id| self.task(id)) {
                None => KeyResult::Unknown,
                Some(t) => match &t.state {
                    State::Memory { value: Some(b), .. } => KeyResult::Value(b.clone()),
                    State::Erred(e) => KeyResult::Error((**e).clone()),
                    State::Released => KeyResult::Unknown,
                    _ if t.cancelled => KeyResult::Unknown,
                    _ => KeyResult::Pending,
                },
            })
            .collect()
    }

    fn task_error(&self, key: Key, failure: TaskFailure) -> TaskError {
        let kind = match &failure {
            TaskFailure::Failed(_) => TaskErrorKind::Failed,
            TaskFailure::Panicked(_) => TaskErrorKind::Panicked,
            TaskFailure::BadArgument { .. } | TaskFailure::WrongArity { .. } => {
                TaskErrorKind::BadArgument
            }
            TaskFailure::BadOutput(_) => TaskErrorKind::BadOutput,
        };
        TaskError {
            kind,
            message: Arc::from(failure.to_string()),
            key,
            node: Some(self.node.clone()),
        }
    }

    /// A peer finished (or failed) a task of this node's graphs.
    fn remote_done(
        &mut self,
        from: u32,
        key: Key,
        size: u64,
        error: Option<TaskError>,
        elapsed_ns: u64,
        hops: u32,
    ) {
        let id = self.index.get(&key).copied();
        let waiting = id
            .and_then(|id| self.task(id))
            .is_some_and(|t| matches!(t.state, State::Waiting));
        // A take-over still waiting for inventories: news for its rebuild.
        if waiting && self.recovering(from, &key, size, error.as_ref()) {
            return;
        }
        let state = id.and_then(|id| self.task(id)).map(|t| &t.state);
        match state {
            Some(State::Remote { node, .. }) => {
                let node = *node;
                let id = id.expect("found");
                // Stolen on the way, maybe: releases must cover the copy that ran.
                let t = self.task_mut(id).expect("found");
                t.hops = t.hops.max(hops);
                self.peers[node as usize].assigned_since =
                    self.peers[node as usize].assigned_since.saturating_sub(1);
                update_estimate(&mut self.prefix_ns, key.prefix(), elapsed_ns);
                let outcome = match error {
                    None => Ok((None, vec![from], size)),
                    Some(e) => Err(Arc::new(e)),
                };
                self.finish(id, outcome);
            }
            Some(State::Memory { holders, .. }) if holders.contains(&from) => {}
            Some(State::Erred(_)) if error.is_some() => {}
            _ => {
                // Nobody here needs it (released, or already computed elsewhere). The
                // release covers the copy that ran (handed on more often than this node may
                // know): naming fewer hops would lower the worker's record of the release,
                // and a late duplicate of the hand-over would run the task again.
                if error.is_none() {
                    let known = self.index.get(&key).and_then(|id| self.task(*id));
                    let covers = known.map_or(u32::MAX, |t| t.hops).max(hops);
                    self.release_at_hops(from, key, covers);
                }
            }
        }
    }

    /// A peer keeps a copy of a result of this node's graphs.
    fn holding(&mut self, from: u32, key: Key, size: u64) {
        if self
            .index
            .get(&key)
            .and_then(|id| self.task(*id))
            .is_some_and(|t| matches!(t.state, State::Waiting))
            && self.recovering(from, &key, size, None)
        {
            return;
        }
        if let Some(&id) = self.index.get(&key)
            && let Some(t) = self.task_mut(id)
            && let State::Memory { holders, .. } = &mut t.state
        {
            if !holders.contains(&from) {
                holders.push(from);
            }
            self.moved_copy(from, &key);
            return;
        }
        self.release_at(from, key);
    }

    /// The node `from` dropped `key` at up to `hops` (see [`PeerMsg::Dropped`]): if the
    /// task is placed there with no more hops, nobody runs it, and it is placed again with
    /// more hops than the node's record (so that it runs there should it be placed there).
    fn dropped(&mut self, from: u32, key: Key, hops: u32) {
        let Some((id, node, known)) = self.placed_remote(&key) else {
            return;
        };
        if node != from || known > hops {
            return;
        }
        // Placed again with more hops. The release that goes first replaces the node's
        // record, even one that voids every assignment (`u32::MAX`: the key was released
        // there while this node did not know it, and was submitted again since).
        self.place_again(id, if hops == u32::MAX { known } else { hops });
    }

    /// The node `from` has the task `key` it was placed on (its answer to an assignment sent
    /// again): the owner waits twice as long before it asks again (up to
    /// [`MAX_RETRY_MS`]); a long task is not a lost message.
    fn accepted(&mut self, from: u32, key: Key, hops: u32) {
        let Some((id, node, known)) = self.placed_remote(&key) else {
            return;
        };
        if node != from || hops < known {
            return;
        }
        let now = self.now_ms;
        if let Some(Task {
            state: State::Remote { acks, due_ms, .. },
            ..
        }) = self.task_mut(id)
        {
            *acks = acks.saturating_add(1);
            *due_ms = now + retry_wait(*acks);
            let due = *due_ms;
            self.retry.push(Reverse((due, id.idx, id.generation)));
        }
    }

    /// The task of this node's graphs named `key`, the node it is placed on and the hops
    /// of that assignment, if it is placed on a peer.
    fn placed_remote(&self, key: &Key) -> Option<(TaskId, u32, u32)> {
        let id = *self.index.get(key)?;
        match self.task(id)?.state {
            State::Remote { node, hops, .. } => Some((id, node, hops)),
            _ => None,
        }
    }

    /// Places task `id` again, with more hops than `hops` (the record of the node that
    /// gave it back or dropped it).
    fn place_again(&mut self, id: TaskId, hops: u32) {
        if let Some(t) = self.task_mut(id) {
            t.hops = t.hops.max(hops);
            self.requeue(id);
        }
    }

    /// A task of this node's graphs was stolen from the node it was placed on.
    fn moved(&mut self, key: Key, to: u32, hops: u32) {
        let id = self.index.get(&key).copied();
        let finished = id
            .and_then(|id| self.task(id))
            .is_none_or(|t| match &t.state {
                // Word of a hand-over before one this node has heard of (the copy that
                // ran, handed on more often) is old news: the thief's copy went on, maybe
                // to the holder. A release there would be sent on along the hand-overs and
                // drop the value this node counts on.
                State::Memory { holders, .. } => !holders.contains(&to) && hops >= t.hops,
                s => s.finished(),
            });
        if finished {
            // Done already (a copy placed before ran it, or the task is gone): nobody needs
            // the thief's copy, which would otherwise wait for inputs dropped since, and
            // keep asking for them. The release covers that copy and the ones handed on
            // from it.
            if to != 0 {
                self.release_at_hops(to, key, hops);
            }
            return;
        }
        let Some(id) = id else { return };
        let now = self.now_ms;
        // A thief this node has not heard of yet (it just joined) is not dead.
        let to_alive = !self.peers[to as usize].dead;
        let Some(t) = self.task_mut(id) else { return };
        let State::Remote { hops: known, .. } = t.state else {
            return;
        };
        if hops <= known {
            return;
        }
        t.hops = hops;
        if to == 0 {
            // Handed to this node, and that hand-over was lost: nobody runs it.
            self.place_here(id);
            return;
        }
        if !to_alive {
            // Moved to a node that died since: place it again.
            t.state = State::Remote {
                node: to,
                due_ms: now,
                acks: 0,
                hops,
            };
            self.requeue(id);
            return;
        }
        let due_ms = now + RETRY_MS;
        t.state = State::Remote {
            node: to,
            due_ms,
            acks: 0,
            hops,
        };
        self.retry.push(Reverse((due_ms, id.idx, id.generation)));
    }

    /// Asks a holder for a result of this node's graphs, for `waiter`.
    fn fetch_own(&mut self, id: TaskId, waiter: FetchWaiter) {
        let Some(t) = self.task(id) else { return };
        let State::Memory { holders, .. } = &t.state else {
            return;
        };
        let holders = holders.clone();
        let key = t.key.clone();
        self.fetch(0, key, holders, waiter);
    }

    fn fetch(&mut self, owner: u32, key: Key, mut holders: Vec<u32>, waiter: FetchWaiter) {
        holders.retain(|&h| h != 0);
        if owner != 0 && !holders.contains(&owner) {
            // Last resort: the owner knows more (and says so when the result is forgotten).
            holders.push(owner);
        }
        let k = (owner, key);
        if let Some(f) = self.fetches.get_mut(&k) {
            f.waiters.push(waiter);
            return;
        }
        // Prefer a holder other than the owner: owners are busy answering clients.
        let start = if holders.len() > 1 && holders[0] == owner {
            1
        } else {
            0
        };
        let Some(&to) = holders.get(start) else {
            return;
        };
        let owner_id = self.peers[owner as usize].node.clone();
        self.send(
            to,
            PeerMsg::Fetch {
                owner: owner_id,
                key: k.1.clone(),
            },
        );
        self.fetches.insert(
            k,
            Fetch {
                holders,
                next: start,
                due_ms: self.now_ms + FETCH_RETRY_MS,
                waiters: vec![waiter],
            },
        );
    }

    /// The owner of a result this node fetches no longer knows it: the tasks of that owner
    /// waiting for it were released (the release was lost or is late).
    fn forgotten(&mut self, owner: u32, key: Key) {
        let Some(f) = self.fetches.remove(&(owner, key.clone())) else {
            return;
        };
        for w in f.waiters {
            match w {
                FetchWaiter::Foreign(id, _) => {
                    if let Some(t) = self.foreign_ref(id)
                        && t.owner == owner
                    {
                        // The copies here, not a later placement (which would be turned
                        // away until the record expires).
                        let key = t.key.clone();
                        self.release_foreign(owner, key, 0);
                    }
                }
                FetchWaiter::Take(p) => {
                    // A leaving peer's copy nobody needs: nothing to keep.
                    let owner = self.peers[owner as usize].node.clone();
                    let key = key.clone();
                    self.send(p, PeerMsg::Stored { owner, key });
                }
                _ => {}
            }
        }
    }

    /// The live nodes holding a result of this node's graphs.
    fn own_holders(&self, key: &Key) -> Vec<u32> {
        match self
            .index
            .get(key)
            .and_then(|id| self.task(*id))
            .map(|t| &t.state)
        {
            Some(State::Memory { holders, .. }) => holders
                .iter()
                .copied()
                .filter(|&h| self.peers[h as usize].alive)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Whether someone still waits for a fetch (waiters may have been released since).
    fn fetch_needed(&self, k: &(u32, Key)) -> bool {
        let Some(f) = self.fetches.get(k) else {
            return false;
        };
        f.waiters.iter().any(|w| match *w {
            FetchWaiter::Own(id) => self
                .task(id)
                .is_some_and(|t| matches!(t.state, State::Fetching)),
            FetchWaiter::Gather(r) => self.waiters.contains_key(&r),
            FetchWaiter::Foreign(id, _) => self
                .foreign_ref(id)
                .is_some_and(|f| f.state == ForeignState::Fetching),
            FetchWaiter::Take(p) | FetchWaiter::Adopt(p) => self.peers[p as usize].alive,
            FetchWaiter::Check => {
                k.0 == 0
                    && self
                        .index
                        .get(&k.1)
                        .and_then(|id| self.task(*id))
                        .is_some_and(|t| matches!(t.state, State::Memory { value: None, .. }))
            }
        })
    }

    /// A peer asks for a value held here.
    fn serve(&mut self, from: u32, owner: NodeId, key: Key) {
        let o = self.owner_of(&owner);
        if o == 0 {
            // A holder asking for its own copy has lost it.
            self.holder_lacks(from, &key);
        }
        let value = if o == 0 {
            match self.index.get(&key).and_then(|id| self.task(*id)) {
                Some(Task {
                    state: State::Memory { value: None, .. },
                    ..
                }) => {
                    // Asked as the last resort: the holders failed the asker, maybe because
                    // they lost the value. The owner fetches it itself: a holder that lacks
                    // it says so, and it is computed again (its dependents with it).
                    let id = self.index[&key];
                    self.fetch_own(id, FetchWaiter::Check);
                    None
                }
                Some(Task {
                    state: State::Memory { value, .. },
                    ..
                }) => value.clone(),
                // Finished with no value to come: dropped as nobody needed it (its spec
                // kept for lineage), or failed. What waits for it is not needed either
                // (the value stays while a dependent is unfinished): it goes, rather than
                // ask the holders round and round for a value none of them has.
                Some(Task {
                    state: State::Released | State::Erred(_),
                    ..
                })
                | None => {
                    self.send(from, PeerMsg::Forgotten { key });
                    return;
                }
                // Being computed (again): not yet.
                Some(_) => None,
            }
        } else {
            self.held.get(&(o, key.clone())).cloned()
        };
        self.send(from, PeerMsg::Data { owner, key, value });
    }

    /// A value (or the news that the peer has none) arrived.
    fn data(&mut self, from: u32, owner: NodeId, key: Key, value: Option<Bytes>) {
        let o = self.owner_of(&owner);
        let k = (o, key);
        let Some(value) = value else {
            if o == 0 {
                self.holder_lacks(from, &k.1);
            }
            if !self.fetch_needed(&k) {
                self.fetches.remove(&k);
                return;
            }
            // Ask the next holder.
            if let Some(f) = self.fetches.get_mut(&k)
                && f.holders.get(f.next) == Some(&from)
            {
                f.next = (f.next + 1) % f.holders.len().max(1);
                f.due_ms = self.now_ms + FETCH_RETRY_MS;
                let to = f.holders[f.next];
                if to != from {
                    self.send(
                        to,
                        PeerMsg::Fetch {
                            owner,
                            key: k.1.clone(),
                        },
                    );
                }
            }
            return;
        };
        let Some(f) = self.fetches.remove(&k) else {
            return;
        };
        self.stats.fetched += 1;
        self.stats.fetched_bytes += value.len() as u64;
        if self.transfers.len() == TRANSFERS_KEPT {
            self.transfers.pop_front();
        }
        self.transfers
            .push_back((k.1.clone(), from, value.len() as u64, self.now_ms));
        let (o, key) = k;
        if o == 0 {
            if let Some(&id) = self.index.get(&key)
                && let Some(t) = self.task_mut(id)
                && let State::Memory {
                    value: v @ None,
                    size,
                    ..
                } = &mut t.state
            {
                let len = value.len() as u64;
                *v = Some(value.clone());
                // Counted as it is, and uncounted alike when dropped (a size reported by a
                // holder may have been a guess).
                *size = len;
                self.stored += 1;
                self.memory_used += len;
                self.moved_copy(0, &key);
            }
        } else {
            self.keep_foreign(o, key.clone(), value.clone());
        }
        for w in f.waiters {
            match w {
                FetchWaiter::Gather(r) => self.waiter_progress(r),
                FetchWaiter::Own(id) => {
                    if let Some(t) = self.task_mut(id)
                        && matches!(t.state, State::Fetching)
                    {
                        t.waiting_on -= 1;
                        if t.waiting_on == 0 {
                            self.make_ready(id);
                        }
                    }
                }
                FetchWaiter::Foreign(id, i) => self.foreign_input(id, i, &value),
                FetchWaiter::Adopt(p) => {
                    if let Some((_, kept)) = self.adopted_here.values_mut().next()
                        && kept.insert(key.clone(), value.clone()).is_none()
                    {
                        // Counted as this node's memory, as the rebuild expects.
                        self.stored += 1;
                        self.memory_used += value.len() as u64;
                    }
                    let owner = self.peers[0].node.clone();
                    self.send(
                        p,
                        PeerMsg::Stored {
                            owner,
                            key: key.clone(),
                        },
                    );
                }
                FetchWaiter::Take(p) => {
                    let owner = self.peers[o as usize].node.clone();
                    self.send(
                        p,
                        PeerMsg::Stored {
                            owner,
                            key: key.clone(),
                        },
                    );
                }
                FetchWaiter::Check => {}
            }
        }
    }

    /// A holder of a result of this node's graphs says it does not have it (it dropped it):
    /// it is no longer counted as a holder, and a result nobody holds any more is computed
    /// again if needed.
    fn holder_lacks(&mut self, from: u32, key: &Key) {
        let Some(&id) = self.index.get(key) else {
            return;
        };
        let Some(t) = self.task_mut(id) else { return };
        let State::Memory {
            value: None,
            holders,
            ..
        } = &mut t.state
        else {
            return;
        };
        if !holders.contains(&from) {
            return;
        }
        holders.retain(|&h| h != from);
        if !holders.is_empty() {
            return;
        }
        t.state = State::Released;
        let needed = t.client_refs > 0 || t.pending_dependents > 0;
        tracing::info!(key = %t.key, needed, "a holder lacks a result nobody else holds");
        self.stats.recomputed += 1;
        if needed {
            self.revive(vec![id]);
        } else {
            self.maybe_forget(id);
        }
    }

    /// A task left the pool: its estimate leaves the pool's budget, its run time feeds
    /// the estimate of its prefix.
    fn measure(&mut self, id: TaskId, elapsed_ns: u64) {
        // Fields borrowed apart: the key is read where it lies, not copied.
        let (key, est, held) = if id.foreign() {
            let f = self.foreign[id.slot()]
                .item
                .as_ref()
                .expect("a running task");
            (&f.key, f.est_ns, !f.resources.is_empty())
        } else {
            let t = self.slots[id.slot()].item.as_ref().expect("a running task");
            (&t.key, t.est_ns, !t.resources.is_empty())
        };
        self.pool_ns = (self.pool_ns - f64::from(est)).max(0.0);
        update_estimate(&mut self.prefix_ns, key.prefix(), elapsed_ns);
        if held {
            let needs = if id.foreign() {
                self.foreign_ref(id).expect("running").resources.clone()
            } else {
                self.task(id).expect("running").resources.clone()
            };
            for (n, a) in needs.iter() {
                if let Some((_, b)) = self.available.iter_mut().find(|(m, _)| m == n) {
                    *b += a;
                }
            }
            // Tasks that waited for these resources may start now.
            for e in self.blocked.drain(..) {
                self.ready.push(e);
            }
        }
    }

    /// The resources this node offers to tasks (`--resources`).
    pub fn set_resources(&mut self, resources: Vec<(Arc<str>, u64)>) {
        self.peers[0].resources = resources.clone().into_boxed_slice();
        self.available = resources;
    }

    /// Expected run time of a task, from what its prefix measured (a prefix never seen
    /// is assumed to take [`DEFAULT_TASK_NS`]).
    fn estimate_ns(&self, key: &Key) -> f64 {
        self.prefix_ns
            .get(key.prefix())
            .copied()
            .unwrap_or(DEFAULT_TASK_NS)
    }

    /// Whether the pool takes one more task of `est_ns`: every thread gets one, and beyond
    /// that the pool holds about [`TARGET_QUEUED_NS`] of expected work per thread (enough
    /// to keep threads busy between turns of the loop; what stays queued here can still
    /// be stolen).
    fn pool_takes(&self, est_ns: f64) -> bool {
        self.in_flight < self.nthreads
            || (self.pool_ns + est_ns <= f64::from(self.nthreads) * TARGET_QUEUED_NS
                && self.in_flight < self.nthreads * MAX_POOL_DEPTH)
    }

    /// Whether every input of `t` has its value on this node.
    fn inputs_here(&self, t: &Task) -> bool {
        t.deps.iter().all(|d| {
            matches!(
                self.task(*d).map(|t| &t.state),
                Some(State::Memory { value: Some(_), .. })
            )
        })
    }

    /// A ready task whose inputs are not all here: inputs whose values are gone are
    /// computed again, and the task waits for them (or fetches them) again.
    fn unready(&mut self, id: TaskId) {
        let gone: Vec<TaskId> = self
            .task(id)
            .map(|t| {
                t.deps
                    .iter()
                    .copied()
                    .filter(|d| {
                        self.task(*d)
                            .is_some_and(|dt| matches!(dt.state, State::Released))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if gone.is_empty() {
            self.requeue(id);
        } else {
            // Reviving them waits this task (one of their dependents) for them again.
            self.revive(gone);
        }
    }

    fn dispatch(&mut self) {
        if self.leaving.is_some() {
            return;
        }
        while let Some(&Reverse((_, idx, generation))) = self.ready.peek() {
            // Paused for memory: one task at a time, and only when nothing runs, so that a
            // graph whose next tasks would free memory (a reduction) cannot hang.
            if self.paused && self.in_flight > 0 {
                break;
            }
            let id = TaskId { idx, generation };
            let key = if id.foreign() {
                match self.foreign_ref(id) {
                    Some(f) if f.state == ForeignState::Queued => &f.key,
                    _ => {
                        self.ready.pop();
                        continue;
                    }
                }
            } else {
                match self.task(id) {
                    Some(t) if matches!(t.state, State::Ready) => {
                        if !self.inputs_here(t) {
                            // Should not happen; a node never panics on its own state either:
                            // the task waits for its inputs again.
                            tracing::warn!(key = %t.key, "a ready task's input is not here; it waits for it again");
                            self.ready.pop();
                            self.unready(id);
                            continue;
                        }
                        &t.key
                    }
                    _ => {
                        self.ready.pop();
                        continue;
                    }
                }
            };
            let est = self.estimate_ns(key);
            if !self.pool_takes(est) {
                break;
            }
            let entry = self.ready.pop().expect("peeked");
            let needs = if id.foreign() {
                &self.foreign_ref(id).expect("checked").resources
            } else {
                &self.task(id).expect("checked").resources
            };
            if !needs.is_empty() {
                if !fits(&self.available, needs) {
                    self.blocked.push(entry);
                    continue;
                }
                let needs = needs.clone();
                for (n, a) in needs.iter() {
                    if let Some((_, b)) = self.available.iter_mut().find(|(m, _)| m == n) {
                        *b -= a;
                    }
                }
            }
            self.pool_ns += est;
            if id.foreign() {
                self.foreign_mut(id).expect("checked").est_ns = est as f32;
                if let Some(job) = self.start_foreign(id) {
                    self.ready_count -= 1;
                    self.in_flight += 1;
                    self.jobs.push(job);
                    self.last_work_ms = self.now_ms;
                }
                continue;
            }
            let Some(task) = self.task(id) else { continue };
            if !matches!(task.state, State::Ready) {
                continue;
            }
            let args = task
                .args
                .iter()
                .map(|a| match a {
                    ArgSlot::Value(b) => b.clone(),
                    ArgSlot::Dep(d) => match self.task(*d).map(|t| &t.state) {
                        Some(State::Memory { value: Some(b), .. }) => b.clone(),
                        _ => unreachable!("checked by inputs_here"),
                    },
                })
                .collect();
            let job = Job {
                task: id,
                key: task.key.clone(),
                entry: task.entry,
                args,
            };
            let t = self.task_mut(id).expect("exists");
            t.state = State::Running;
            t.est_ns = est as f32;
            self.ready_count -= 1;
            self.in_flight += 1;
            self.jobs.push(job);
            self.last_work_ms = self.now_ms;
        }
    }

    // ----- internals: the cluster ---------------------------------------------------

    fn intern(&mut self, node: &NodeId) -> u32 {
        if let Some(&p) = self.peer_index.get(node) {
            return p;
        }
        if self.peers.len() >= MAX_PEERS {
            // Names come from clients and peers as well as from membership: past the bound,
            // every new name is one peer that is never alive (tasks restricted to it wait,
            // nothing is sent to it), so that naming millions of nodes costs nothing.
            let sink = NodeId(TOO_MANY_PEERS.into());
            if let Some(&p) = self.peer_index.get(&sink) {
                return p;
            }
            return self.add_peer(sink);
        }
        self.add_peer(node.clone())
    }

    /// The index of a member as membership lists it: always its own, whatever names others
    /// made up (the member table is bounded by the gossiped state).
    fn intern_member(&mut self, node: &NodeId) -> u32 {
        match self.peer_index.get(node) {
            Some(&p) => p,
            None => self.add_peer(node.clone()),
        }
    }

    fn add_peer(&mut self, node: NodeId) -> u32 {
        let p = self.peers.len() as u32;
        self.peers.push(Peer {
            node: node.clone(),
            nthreads: 1,
            eligible: false,
            alive: false,
            reported: 0,
            queued: 0,
            assigned_since: 0,
            resources: Amounts::default(),
            leaving: false,
            dead: false,
            dead_since: 0,
            revived: false,
            paused: false,
            outbox: Vec::new(),
        });
        self.peer_index.insert(node, p);
        p
    }

    fn send(&mut self, to: u32, msg: PeerMsg) {
        debug_assert!(to != 0, "a node does not message itself");
        let peer = &mut self.peers[to as usize];
        if peer.outbox.is_empty() {
            self.dirty.push(to);
        }
        peer.outbox.push(msg);
    }

    /// An idle node (free threads, nothing queued) asks a loaded peer for work.
    fn maybe_steal(&mut self) {
        if self.candidates.len() <= 1
            || self.leaving.is_some()
            || self.paused
            || self.steal_pending.is_some()
            || self.ready_count > 0
            || self.in_flight >= self.nthreads
            || self.steal_due_ms > self.now_ms
        {
            return;
        }
        // Victims: peers with queued work, chosen at random in proportion to it.
        let total: u64 = self.candidates[1..]
            .iter()
            .map(|&p| self.peers[p as usize].queued)
            .sum();
        if total == 0 && self.now_ms > self.last_work_ms + PROBE_WINDOW_MS {
            // Idle for a while and nobody is known to have work: wait for the gossiped
            // loads rather than chatter.
            self.steal_due_ms = self.now_ms + MAX_STEAL_BACKOFF_MS;
            return;
        }
        let victim = if total == 0 {
            // Nobody is known to have work (what this node heard may be old): probe a
            // random peer; its answer carries its load.
            let n = self.candidates.len() as u64 - 1;
            let i = 1 + (self.next_random() % n) as usize;
            self.candidates[i]
        } else {
            let mut pick = self.next_random() % total;
            let mut victim = self.candidates[1];
            for &p in &self.candidates[1..] {
                let q = self.peers[p as usize].queued;
                if pick < q {
                    victim = p;
                    break;
                }
                pick -= q;
            }
            victim
        };
        // Ask for as much as the victim can spare: it gives half of its queue at most.
        let want = u32::MAX;
        self.steal_pending = Some(self.now_ms);
        self.stats.steal_requests += 1;
        self.send(victim, PeerMsg::Steal { want });
    }

    /// A thief asks for work: hand over up to half of the queued, not-started tasks worth
    /// moving (the last to run here first), and tell their owners.
    fn give(&mut self, thief: u32, want: u32) {
        let mut tasks = Vec::new();
        let stealable = self.ready_count;
        let busy = self.in_flight >= self.nthreads || self.paused;
        let mut n = (stealable / 2).min(want);
        if n == 0 && stealable > 0 && busy {
            n = 1;
        }
        if n > 0 && self.peers[thief as usize].eligible && self.leaving.is_none() {
            let mut all = std::mem::take(&mut self.ready).into_vec();
            all.append(&mut self.blocked);
            // Highest priority value (last to run) first.
            all.sort_unstable_by(|a, b| b.cmp(a));
            let mut keep = Vec::with_capacity(all.len());
            for Reverse((prio, idx, generation)) in all {
                let id = TaskId { idx, generation };
                if tasks.len() as u32 >= n || !self.worth_moving(id) || !self.may_run_on(id, thief)
                {
                    keep.push(Reverse((prio, idx, generation)));
                    continue;
                }
                match self.hand_over(id, thief) {
                    Some(a) => tasks.push(a),
                    None => continue,
                }
            }
            self.ready = BinaryHeap::from(keep);
        }
        self.stats.given += tasks.len() as u64;
        let busiest = self.candidates[1..]
            .iter()
            .filter(|&&p| p != thief)
            .map(|&p| (self.peers[p as usize].queued, p))
            .filter(|&(q, _)| q > 0)
            .max()
            .map(|(q, p)| {
                (
                    self.peers[p as usize].node.clone(),
                    q.min(u64::from(u32::MAX)) as u32,
                )
            });
        self.send(thief, PeerMsg::Stolen { tasks, busiest });
    }

    fn may_run_on(&self, id: TaskId, p: u32) -> bool {
        let have = &self.peers[p as usize].resources;
        if id.foreign() {
            self.foreign_ref(id)
                .is_none_or(|f| allows(&f.placement, p) && fits(have, &f.resources))
        } else {
            self.task(id)
                .is_none_or(|t| allows(&t.placement, p) && fits(have, &t.resources))
        }
    }

    fn worth_moving(&self, id: TaskId) -> bool {
        let (key, bytes) = if id.foreign() {
            let Some(f) = self.foreign_ref(id) else {
                return true;
            };
            let bytes = f
                .args
                .iter()
                .map(|a| match a {
                    ForeignArg::Input { size, .. } => *size,
                    ForeignArg::Value(_) => 0,
                })
                .sum::<u64>();
            (&f.key, bytes)
        } else {
            let Some(t) = self.task(id) else { return true };
            let bytes = t
                .deps
                .iter()
                .filter_map(|d| match self.task(*d).map(|t| &t.state) {
                    Some(State::Memory { size, .. }) => Some(*size),
                    _ => None,
                })
                .sum::<u64>();
            (&t.key, bytes)
        };
        self.estimate_ns(key) > MOVE_COST_NS + bytes as f64 / BYTES_PER_NS
    }

    fn placement_names(&self, r: &Option<Box<Restrict>>) -> Option<Placement> {
        r.as_ref().map(|r| Placement {
            nodes: r
                .nodes
                .iter()
                .map(|&p| self.peers[p as usize].node.0.clone())
                .collect(),
            loose: r.loose,
        })
    }

    /// Takes a queued task out of this node's queue for `thief`; `None` for a stale entry.
    fn hand_over(&mut self, id: TaskId, thief: u32) -> Option<Assignment> {
        if id.foreign() {
            let f = self.foreign_ref(id)?;
            if f.state != ForeignState::Queued {
                return None;
            }
            let owner = f.owner;
            let key = f.key.clone();
            let mut a = self.foreign_assignment(id);
            a.hops = a.hops.saturating_add(1);
            let hops = a.hops;
            self.remove_foreign(id);
            self.ready_count -= 1;
            self.tombstone(owner, key.clone(), Gone::Moved(thief, hops));
            if owner != thief {
                let to = self.peers[thief as usize].node.clone();
                self.send(owner, PeerMsg::Moved { key, to, hops });
            }
            Some(a)
        } else {
            let t = self.task(id)?;
            if !matches!(t.state, State::Ready) {
                return None;
            }
            let due_ms = self.now_ms + RETRY_MS;
            let t = self.task_mut(id).expect("exists");
            t.hops = t.hops.saturating_add(1);
            let hops = t.hops;
            t.state = State::Remote {
                node: thief,
                due_ms,
                acks: 0,
                hops,
            };
            let a = self.assignment(id);
            self.retry.push(Reverse((due_ms, id.idx, id.generation)));
            self.ready_count -= 1;
            Some(a)
        }
    }

    // ----- internals: tasks of other owners -----------------------------------------

    fn foreign_ref(&self, id: TaskId) -> Option<&Foreign> {
        let slot = self.foreign.get(id.slot())?;
        if slot.generation != id.generation {
            return None;
        }
        slot.item.as_ref()
    }

    fn foreign_mut(&mut self, id: TaskId) -> Option<&mut Foreign> {
        let slot = self.foreign.get_mut(id.slot())?;
        if slot.generation != id.generation {
            return None;
        }
        slot.item.as_mut()
    }

    fn remove_foreign(&mut self, id: TaskId) -> Option<Foreign> {
        let slot = self.foreign.get_mut(id.slot())?;
        if slot.generation != id.generation {
            return None;
        }
        let f = slot.item.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.foreign_free.push(id.slot() as u32);
        let k = (f.owner, f.key.clone());
        if self.foreign_index.get(&k) == Some(&id) {
            self.foreign_index.remove(&k);
        }
        self.foreign_pending -= 1;
        Some(f)
    }

    fn tombstone(&mut self, owner: u32, key: Key, gone: Gone) {
        let now = self.now_ms;
        self.gone.insert((owner, key.clone()), (gone, now));
        self.gone_order.push_back((now, owner, key));
    }

    /// An assignment from an owner (or, `stolen`, from a victim).
    fn accept(&mut self, a: Assignment, stolen: bool) {
        let owner = self.owner_of(&a.owner);
        if owner == 0 {
            // One of this node's own tasks, stolen back from a peer it was placed on.
            // A copy with no more hops than the owner knows of is a stale duplicate.
            if let Some(&id) = self.index.get(&a.key)
                && let Some(t) = self.task_mut(id)
                && let State::Remote { node, hops, .. } = t.state
                && a.hops > hops
            {
                t.hops = a.hops;
                self.peers[node as usize].assigned_since =
                    self.peers[node as usize].assigned_since.saturating_sub(1);
                self.place_here(id);
            }
            return;
        }
        let k = (owner, a.key.clone());
        if let Some(&id) = self.foreign_index.get(&k) {
            // Known already; a repeated assignment carries the owner's latest holders of
            // the inputs (holders die; lost inputs are computed again elsewhere).
            self.refresh_holders(owner, &a.args);
            if !stolen && let Some(hops) = self.foreign_ref(id).map(|f| f.hops) {
                // The owner heard nothing for a while: the task is here.
                self.send(owner, PeerMsg::Accepted { key: a.key, hops });
            }
            return;
        }
        if let Some(v) = self.held.get(&k) {
            // The value answers this assignment now: a late release of an earlier one
            // must not drop it.
            let size = v.len() as u64;
            if a.hops > 1 {
                let h = self.held_hops.entry(k).or_insert(0);
                *h = (*h).max(a.hops);
            }
            self.report_done(owner, a.key, Ok(size), 0, a.hops);
            return;
        }
        // A task that was here before: a copy with more hops is a new placement (after a
        // release, or stolen back after a hand-over); so is an owner's assignment with at
        // least the hops of the hand-over (which counted one more than the assignment it
        // handed on): the owner placed the task here again (the thief gave it back when it
        // left, or was written off, or a new owner rebuilt the graph). A repeat of the
        // assignment that was handed on is answered with where the task went; anything
        // else is a stale copy.
        let seen = self.gone.get(&k).map(|(gone, _)| match gone {
            Gone::Released(h) if a.hops > *h => Seen::Again,
            Gone::Moved(_, h) if a.hops > *h || (!stolen && a.hops == *h) => Seen::Again,
            Gone::Moved(to, h) if !stolen => Seen::Moved(*to, *h),
            Gone::Erred(e) => Seen::Erred(e.clone()),
            Gone::Released(h) if !stolen => Seen::Dropped(*h),
            _ => Seen::Stale,
        });
        match seen {
            None => {}
            Some(Seen::Again) => {
                self.gone.remove(&k);
            }
            Some(Seen::Stale) => return,
            // The owner may still count on this assignment (the release here covered a
            // placement it made since, or its news was lost): it is told, and places the
            // task again.
            Some(Seen::Dropped(hops)) => {
                self.send(owner, PeerMsg::Dropped { key: a.key, hops });
                return;
            }
            // The owner lost track of it: say where it went.
            Some(Seen::Moved(to, hops)) => {
                let to = self.peers[to as usize].node.clone();
                self.send(
                    owner,
                    PeerMsg::Moved {
                        key: a.key,
                        to,
                        hops,
                    },
                );
                return;
            }
            Some(Seen::Erred(e)) => {
                self.report_done(owner, a.key, Err(e), 0, a.hops);
                return;
            }
        }
        if self.leaving.is_some() {
            self.refuse_while_leaving(owner, a.key, a.hops);
            return;
        }
        let placement = a
            .placement
            .as_ref()
            .map(|pl| self.restrict(&pl.nodes, pl.loose));
        let refusal = match self.registry.get(&a.function) {
            None => Err((
                TaskErrorKind::UnknownFunction,
                format!(
                    "unknown function {:?} on node {}: it is not compiled into this node",
                    a.function, self.node
                ),
            )),
            Some(_) if !fits(&self.peers[0].resources, &a.resources) => Err((
                TaskErrorKind::BadArgument,
                format!(
                    "node {} lacks the resources {:?} the task asks for (it has {:?})",
                    self.node, a.resources, self.peers[0].resources
                ),
            )),
            Some(entry) => Ok(entry),
        };
        let entry = match refusal {
            Ok(entry) => entry,
            Err((kind, message)) => {
                let e = TaskError {
                    kind,
                    message: Arc::from(message),
                    key: a.key.clone(),
                    node: Some(self.node.clone()),
                };
                self.tombstone(owner, a.key.clone(), Gone::Erred(e.clone()));
                self.report_done(owner, a.key, Err(e), 0, a.hops);
                return;
            }
        };
        let mut args = Vec::with_capacity(a.args.len());
        let mut fetch = Vec::new();
        for (i, arg) in a.args.into_iter().enumerate() {
            match arg {
                AssignArg::Value(b) => args.push(ForeignArg::Value(b)),
                AssignArg::Input { key, size, holders } => {
                    let value = self.held.get(&(owner, key.clone())).cloned();
                    // Only members are asked: a name nobody gossips is not a holder.
                    let holders: Vec<u32> = holders.iter().map(|h| self.intern(h)).collect();
                    let holders: Vec<u32> = holders
                        .into_iter()
                        .filter(|&h| h == owner || self.peers[h as usize].alive)
                        .collect();
                    if value.is_none() {
                        fetch.push((i as u32, key.clone(), holders.clone()));
                    }
                    args.push(ForeignArg::Input {
                        key,
                        size,
                        holders,
                        value,
                    });
                }
            }
        }
        let (idx, generation) = alloc_slot(&mut self.foreign, &mut self.foreign_free);
        let id = TaskId {
            idx: idx | FOREIGN,
            generation,
        };
        let missing = fetch.len() as u32;
        self.foreign[idx as usize].item = Some(Foreign {
            owner,
            key: a.key.clone(),
            entry,
            args,
            missing,
            priority: a.priority,
            retries: a.retries,
            hops: a.hops,
            est_ns: 0.0,
            resources: a.resources.into_boxed_slice(),
            placement,
            state: if missing == 0 {
                ForeignState::Queued
            } else {
                ForeignState::Fetching
            },
            cancelled: false,
        });
        self.foreign_index.insert(k, id);
        self.foreign_pending += 1;
        if missing == 0 {
            self.ready
                .push(Reverse((a.priority, id.idx, id.generation)));
            self.ready_count += 1;
        }
        for (i, key, holders) in fetch {
            self.fetch(owner, key, holders, FetchWaiter::Foreign(id, i));
        }
    }

    /// Adds the holders named in an assignment to the fetches of its inputs.
    fn refresh_holders(&mut self, owner: u32, args: &[AssignArg]) {
        for arg in args {
            let AssignArg::Input { key, holders, .. } = arg else {
                continue;
            };
            let k = (owner, key.clone());
            if !self.fetches.contains_key(&k) {
                continue;
            }
            if let Some(v) = self.held.get(&k).cloned() {
                let owner_id = self.peers[owner as usize].node.clone();
                self.data(0, owner_id, key.clone(), Some(v));
                continue;
            }
            let named: Vec<u32> = holders.iter().map(|h| self.intern(h)).collect();
            let alive: Vec<u32> = named
                .into_iter()
                .filter(|&h| h != 0 && self.peers[h as usize].alive)
                .collect();
            let now = self.now_ms;
            let f = self.fetches.get_mut(&k).expect("checked");
            let mut ask = None;
            for h in alive {
                if !f.holders.contains(&h) {
                    // Ask the newcomer now: the old holders did not answer.
                    f.holders.insert(0, h);
                    f.next = 0;
                    f.due_ms = now + FETCH_RETRY_MS;
                    ask = Some(h);
                }
            }
            if let Some(h) = ask {
                let owner_id = self.peers[owner as usize].node.clone();
                self.send(
                    h,
                    PeerMsg::Fetch {
                        owner: owner_id,
                        key: key.clone(),
                    },
                );
            }
        }
    }

    /// A fetched input of a task of another owner arrived.
    fn foreign_input(&mut self, id: TaskId, i: u32, value: &Bytes) {
        let Some(f) = self.foreign_mut(id) else {
            return;
        };
        if let Some(ForeignArg::Input {
            value: v @ None, ..
        }) = f.args.get_mut(i as usize)
        {
            *v = Some(value.clone());
            f.missing -= 1;
            if f.missing == 0 && f.state == ForeignState::Fetching {
                f.state = ForeignState::Queued;
                let prio = f.priority;
                self.ready.push(Reverse((prio, id.idx, id.generation)));
                self.ready_count += 1;
            }
        }
    }

    /// Keeps a result of another owner here, and tells the owner when it is a copy.
    fn keep_foreign(&mut self, owner: u32, key: Key, value: Bytes) {
        let k = (owner, key);
        if self.held.contains_key(&k) {
            return;
        }
        let size = value.len() as u64;
        self.stored += 1;
        self.memory_used += size;
        self.held.insert(k.clone(), value);
        self.send(owner, PeerMsg::Holding { key: k.1, size });
    }

    fn start_foreign(&mut self, id: TaskId) -> Option<Job> {
        let f = self.foreign_mut(id)?;
        if f.state != ForeignState::Queued {
            return None;
        }
        f.state = ForeignState::Running;
        let args = f
            .args
            .iter()
            .map(|a| match a {
                ForeignArg::Value(b) => b.clone(),
                ForeignArg::Input { value, .. } => value.clone().unwrap_or_default(),
            })
            .collect();
        Some(Job {
            task: id,
            key: f.key.clone(),
            entry: f.entry,
            args,
        })
    }

    fn foreign_assignment(&self, id: TaskId) -> Assignment {
        let f = self.foreign_ref(id).expect("live foreign task");
        let args = f
            .args
            .iter()
            .map(|a| match a {
                ForeignArg::Value(b) => AssignArg::Value(b.clone()),
                ForeignArg::Input {
                    key, size, holders, ..
                } => {
                    let mut names: Vec<NodeId> = Vec::with_capacity(holders.len() + 1);
                    if self.held.contains_key(&(f.owner, key.clone())) {
                        names.push(self.peers[0].node.clone());
                    }
                    names.extend(holders.iter().map(|&h| self.peers[h as usize].node.clone()));
                    AssignArg::Input {
                        key: key.clone(),
                        size: *size,
                        holders: names,
                    }
                }
            })
            .collect();
        Assignment {
            owner: self.peers[f.owner as usize].node.clone(),
            key: f.key.clone(),
            function: Arc::from(f.entry.name),
            args,
            priority: f.priority,
            placement: self.placement_names(&f.placement),
            resources: f.resources.to_vec(),
            hops: f.hops,
            retries: f.retries,
        }
    }

    fn foreign_done(&mut self, done: TaskDone) {
        let Some(f) = self.foreign_ref(done.task) else {
            return;
        };
        if f.state != ForeignState::Running {
            return;
        }
        self.free_slot(done.task);
        self.stats.tasks_run += 1;
        self.measure(done.task, done.elapsed_ns);
        if done.result.is_err()
            && let Some(f) = self.foreign_mut(done.task)
            && f.retries > 0
            && !f.cancelled
        {
            // Run it again (Dask's `retries=`).
            f.retries -= 1;
            f.state = ForeignState::Queued;
            let prio = f.priority;
            self.stats.task_retries += 1;
            self.ready
                .push(Reverse((prio, done.task.idx, done.task.generation)));
            self.ready_count += 1;
            return;
        }
        let f = self.remove_foreign(done.task).expect("checked above");
        if f.cancelled {
            return;
        }
        match done.result {
            Ok(v) => {
                let size = v.len() as u64;
                let k = (f.owner, f.key.clone());
                self.stored += 1;
                self.memory_used += size;
                let v = Bytes::from(v);
                if let Some(copy) = self.held.insert(k.clone(), v.clone()) {
                    // A copy fetched meanwhile (an input of another task here): one value,
                    // counted once.
                    self.stored -= 1;
                    self.memory_used -= copy.len() as u64;
                }
                if f.hops > 1 {
                    self.held_hops.insert(k.clone(), f.hops);
                }
                // A task here may have been fetching this very value (computed again here
                // after its holder died).
                if self.fetches.contains_key(&k) {
                    let owner = self.peers[f.owner as usize].node.clone();
                    self.data(0, owner, k.1, Some(v));
                }
                self.report_done(f.owner, f.key, Ok(size), done.elapsed_ns, f.hops);
            }
            Err(failure) => {
                let e = self.task_error(f.key.clone(), failure);
                self.tombstone(f.owner, f.key.clone(), Gone::Erred(e.clone()));
                self.report_done(f.owner, f.key, Err(e), done.elapsed_ns, f.hops);
            }
        }
    }

    /// Tells `owner` that its task `key` finished here: with a value of `size` bytes kept
    /// here, or with an error.
    fn report_done(
        &mut self,
        owner: u32,
        key: Key,
        outcome: Result<u64, TaskError>,
        elapsed_ns: u64,
        hops: u32,
    ) {
        let (size, error) = match outcome {
            Ok(size) => (size, None),
            Err(e) => (0, Some(e)),
        };
        self.send(
            owner,
            PeerMsg::Done {
                key,
                size,
                error,
                elapsed_ns,
                hops,
            },
        );
    }

    /// Tells `node` that a result (or task) of this node's graphs is needed no more.
    fn release_at(&mut self, node: u32, key: Key) {
        // A key this node no longer knows: every earlier assignment of it is void (a
        // graph naming the key anew is accepted once the worker forgets the release).
        let hops = self
            .index
            .get(&key)
            .and_then(|id| self.task(*id))
            .map_or(u32::MAX, |t| t.hops);
        self.release_at_hops(node, key, hops);
    }

    /// [`NodeCore::release_at`] naming the hand-overs the release covers: a later
    /// assignment of the same task (placed again: more hops) is not void.
    fn release_at_hops(&mut self, node: u32, key: Key, hops: u32) {
        let owner = self.peers[0].node.clone();
        self.send(
            node,
            PeerMsg::Release {
                owner,
                keys: vec![key],
                hops,
            },
        );
    }

    /// The owner `owner` needs `key` no more: drop its value, or do not run it. A task
    /// handed to a thief has its release forwarded there.
    fn release_foreign(&mut self, owner: u32, key: Key, hops: u32) {
        let k = (owner, key);
        // The release covers whatever copy of the task is here or was handed on from here
        // (the owner may not have heard of the hand-over yet).
        let mut hops = hops;
        if let Some(f) = self
            .foreign_index
            .get(&k)
            .and_then(|id| self.foreign_ref(*id))
        {
            hops = hops.max(f.hops);
        }
        if let Some((Gone::Moved(thief, moved_hops), _)) = self.gone.get(&k) {
            let thief = *thief;
            hops = hops.max(*moved_hops);
            if thief != 0 && thief != owner {
                let owner = self.peers[owner as usize].node.clone();
                self.send(
                    thief,
                    PeerMsg::Release {
                        owner,
                        keys: vec![k.1.clone()],
                        hops,
                    },
                );
            }
        }
        let newer = self.held_hops.get(&k).is_some_and(|&h| h > hops);
        if newer {
            // A late release of an earlier assignment: the value computed since stays.
            return;
        }
        self.held_hops.remove(&k);
        if let Some(v) = self.held.remove(&k) {
            self.stored -= 1;
            self.memory_used -= v.len() as u64;
        }
        if let Some(&id) = self.foreign_index.get(&k) {
            let f = self.foreign_mut(id).expect("indexed");
            match f.state {
                ForeignState::Running => {
                    f.cancelled = true;
                    self.foreign_index.remove(&k);
                }
                ForeignState::Queued => {
                    self.ready_count -= 1;
                    self.remove_foreign(id);
                }
                ForeignState::Fetching => {
                    self.remove_foreign(id);
                }
            }
        }
        self.tombstone(k.0, k.1, Gone::Released(hops));
    }
}

enum Inserted {
    Waiting,
    Ready(TaskId),
    Failed(TaskId, Arc<TaskError>),
}

#[cfg(test)]
mod tests;
