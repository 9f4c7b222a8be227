//! Many nodes running graphs together: the scheduling scenarios.
//!
//! Every node is the production [`NodeCore`]; the simulator plays the thread pools (tasks
//! take the virtual time the plan gives them), the network between nodes (latency,
//! bandwidth, loss, duplication and the reordering that random delays cause) and the
//! clients (submit to an entry node, gather with long polls, release).
//!
//! - [`graphs_chaos`]: random DAGs (wide maps, chains, trees, diamonds, random mixes; skewed
//!   run times and sizes; some tasks fail) submitted by several clients to several entry
//!   nodes of 3 to 200 nodes, over a lossy network. Checked at every step: no task runs
//!   twice or before its inputs are computed, no request is answered twice; at the end:
//!   every graph completed with the values (or the errors) of a sequential reference
//!   evaluation; once the graphs are done and the faults over, the cluster falls silent
//!   (no peer message after [`SETTLE_US`]) and, when no message was lost, nothing stays
//!   behind on any node. Client sessions come and go: each attaches to its entry node (and
//!   again wherever it re-attaches), and once its graph is done closes, drops its
//!   connection without a word, or stays; some publish their results first and have them
//!   unpublished later; many tiny sessions come and go beside the graphs. Checked: a
//!   take-over never brings back a session its client closed (with no message lost, a
//!   backup never even claims one), no session its client closed or dropped is owned by any
//!   node at the end, and the replicated ownership table (the real [`ClusterState`], gossip
//!   modelled as instant) reaches a lagging replica through anti-entropy messages that each
//!   fit the gossip frame.
//! - [`steal_efficiency`]: one graph submitted to one node of P single-thread nodes; the
//!   makespan against the lower bound max(T1/P, T∞), and against an oracle central
//!   scheduler (greedy list scheduling with free communication) on the same graph.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rdask_actors::protocol::{
    ClientResponse, GraphSubmission, KeyResult, PeerBatch, PeerMsg, SubmitOutcome,
};
use rdask_actors::{CoreStats, Job, NodeCore, OwnerWrite, PeerUpdate, RequestId, TaskDone};
use rdask_gossip::{
    ClusterState, Limits, MAX_FRAME_BYTES, MemberInfo, NodeId, Ownership, PROTOCOL_VERSION, Peer,
    StateMsg, Wire,
};
use rdask_graph::registry::{decode_arg, encode_output};
use rdask_graph::{
    Arg, GraphId, Key, Placement, Registry, TaskEntry, TaskErrorKind, TaskFailure, TaskSpec, value,
};

/// Quiescence. A cluster with nothing to do falls silent: once every graph is done (its
/// client released it) and the faults are over (the last crash, leave, join, partition,
/// heal, membership news or memory change), its nodes stop messaging each other within
/// [`SETTLE_US`], and then, if the network lost nothing, hold nothing. A run ends once no peer message was sent for
/// [`QUIET_US`] (the nodes tick on all the while: retries and clean-ups run on the clock).
///
/// `QUIET_US` is longer than the longest wait of the core between two messages of one
/// exchange (assignments are sent again after up to 32 s), so that a slow endless exchange
/// is seen, not taken for silence.
const QUIET_US: u64 = 40_000_000;
/// How long after the last graph and the last fault peer messages may still flow: as long
/// as a graph may take ([`STALL_US`]). What legitimately follows them is releases, a
/// take-over's inventories (3 tries, 1 s apart), a dead owner's leftovers dropped after
/// 10 s, a hand-over given up after 30 s, retries backing off to 32 s; and, after a
/// partition, a node that took over an owner's sessions from the minority side computing a
/// graph again that its client already has (work done twice, as documented). Seeds
/// 8,000,000–8,019,999 and 3,000,000–3,019,999 (`--max-nodes 32`) fall silent within
/// 29.3 s; a loop never does (`rdask-sim` prints the longest, [`ClusterReport::settle_us`]).
const SETTLE_US: u64 = STALL_US;

/// A value of the simulated tasks: a hash and padding that gives it its size.
type SimValue = (u64, Vec<u8>);

fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn combine(args: &[Bytes]) -> Result<Vec<u8>, TaskFailure> {
    // The last argument is (seed, size); the others are inputs.
    let n = args.len() - 1;
    let (seed, size): (u64, u32) = decode_arg(args, n)?;
    let mut h = mix(seed);
    for i in 0..n {
        let (v, _pad): SimValue = decode_arg(args, i)?;
        h = mix(h ^ v.rotate_left(7 * i as u32 + 1));
    }
    encode_output(&(h, vec![0u8; size as usize]))
}

fn fail(args: &[Bytes]) -> Result<Vec<u8>, TaskFailure> {
    let (seed, _): (u64, u32) = decode_arg(args, args.len() - 1)?;
    Err(TaskFailure::Failed(format!("injected failure {seed}")))
}

macro_rules! entries {
    ($($name:ident = $text:literal, $arity:literal, $f:ident;)*) => {
        $(static $name: TaskEntry = TaskEntry { name: $text, arity: $arity, invoke: $f };)*
    };
}
entries! {
    C0 = "sim::leaf", 1, combine;
    C1 = "sim::combine1", 2, combine;
    C2 = "sim::combine2", 3, combine;
    C3 = "sim::combine3", 4, combine;
    C4 = "sim::combine4", 5, combine;
    F0 = "sim::fail0", 1, fail;
    F1 = "sim::fail1", 2, fail;
    F2 = "sim::fail2", 3, fail;
    F3 = "sim::fail3", 4, fail;
    F4 = "sim::fail4", 5, fail;
}

fn registry() -> &'static Registry {
    static R: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();
    R.get_or_init(|| Registry::from_entries([&C0, &C1, &C2, &C3, &C4, &F0, &F1, &F2, &F3, &F4]))
}

const COMBINE: [&str; 5] = [
    "sim::leaf",
    "sim::combine1",
    "sim::combine2",
    "sim::combine3",
    "sim::combine4",
];
const FAIL: [&str; 5] = [
    "sim::fail0",
    "sim::fail1",
    "sim::fail2",
    "sim::fail3",
    "sim::fail4",
];

/// One planned task.
#[derive(Clone)]
struct PlanTask {
    key: Key,
    inputs: Vec<usize>,
    seed: u64,
    size: u32,
    cost_us: u64,
    fails: bool,
    /// Nodes it is restricted to, and whether loosely.
    placement: Option<(Vec<usize>, bool)>,
    /// GPUs it holds while it runs.
    gpus: u64,
}

/// A planned graph: tasks in topological order, and the ones the client keeps.
#[derive(Clone)]
struct PlanGraph {
    tasks: Vec<PlanTask>,
    keep: Vec<usize>,
}

/// DAG shapes the scenarios draw from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Independent tasks.
    Map,
    /// Several chains of dependent tasks.
    Chains,
    /// A binary tree reduction.
    Tree,
    /// Fan-out from one task, fan-in through a tree.
    Diamond,
    /// Each task takes up to four earlier tasks, recent ones more often.
    Random,
}

/// The shapes, in the order tables print them.
pub const SHAPES: [Shape; 5] = [
    Shape::Map,
    Shape::Chains,
    Shape::Tree,
    Shape::Diamond,
    Shape::Random,
];

/// Run times: log-uniform between `lo` and `hi` microseconds (skewed: most are short).
fn cost(rng: &mut StdRng, lo: u64, hi: u64) -> u64 {
    let (a, b) = ((lo as f64).ln(), (hi as f64).ln());
    rng.random_range(a..=b).exp() as u64
}

/// Value sizes: mostly tiny, some of kilobytes, a few of a MiB.
fn size(rng: &mut StdRng, big: bool) -> u32 {
    match rng.random_range(0..100) {
        0..=79 => rng.random_range(0..64),
        80..=96 => rng.random_range(64..16_384),
        _ if big => rng.random_range(16_384..1 << 20),
        _ => rng.random_range(64..16_384),
    }
}

fn make_graph(
    rng: &mut StdRng,
    shape: Shape,
    n: usize,
    tag: &str,
    costs: (u64, u64),
    fail_rate: f64,
    big: bool,
) -> PlanGraph {
    let mut tasks: Vec<PlanTask> = Vec::new();
    let push = |rng: &mut StdRng, tasks: &mut Vec<PlanTask>, inputs: Vec<usize>| {
        let i = tasks.len();
        tasks.push(PlanTask {
            key: Key::from(format!("{tag}-{i}")),
            inputs,
            seed: rng.random(),
            size: size(rng, big),
            cost_us: cost(rng, costs.0, costs.1),
            fails: rng.random_bool(fail_rate),
            placement: None,
            gpus: 0,
        });
        i
    };
    match shape {
        Shape::Map => {
            for _ in 0..n {
                push(rng, &mut tasks, vec![]);
            }
        }
        Shape::Chains => {
            let chains = rng.random_range(1..=8usize.min(n));
            let mut heads: Vec<Option<usize>> = vec![None; chains];
            for i in 0..n {
                let c = i % chains;
                let inputs = heads[c].into_iter().collect();
                heads[c] = Some(push(rng, &mut tasks, inputs));
            }
        }
        Shape::Tree | Shape::Diamond => {
            let mut level: Vec<usize> = if shape == Shape::Tree {
                (0..n.div_ceil(2).max(1))
                    .map(|_| push(rng, &mut tasks, vec![]))
                    .collect()
            } else {
                let root = push(rng, &mut tasks, vec![]);
                (0..(n / 2).max(1))
                    .map(|_| push(rng, &mut tasks, vec![root]))
                    .collect()
            };
            while level.len() > 1 {
                level = level
                    .chunks(2)
                    .map(|c| push(rng, &mut tasks, c.to_vec()))
                    .collect();
            }
        }
        Shape::Random => {
            for i in 0..n {
                let k = if i == 0 {
                    0
                } else {
                    rng.random_range(0..=4usize.min(i))
                };
                let mut inputs: Vec<usize> = (0..k)
                    .map(|_| {
                        let back = rng.random_range(1..=i.min(16));
                        i - back
                    })
                    .collect();
                inputs.sort_unstable();
                inputs.dedup();
                push(rng, &mut tasks, inputs);
            }
        }
    }
    // Keep the sinks, and a few others.
    let mut used = vec![false; tasks.len()];
    for t in &tasks {
        for &i in &t.inputs {
            used[i] = true;
        }
    }
    let keep = (0..tasks.len())
        .filter(|&i| !used[i] || rng.random_bool(0.05))
        .collect();
    PlanGraph { tasks, keep }
}

/// What a sequential evaluation gives for each task of a graph: the encoded value, or the
/// failing tasks one of which must be the cause of its error.
fn reference(g: &PlanGraph) -> Vec<Result<Bytes, BTreeSet<Key>>> {
    let mut out: Vec<Result<Bytes, BTreeSet<Key>>> = Vec::with_capacity(g.tasks.len());
    for t in &g.tasks {
        let mut causes = BTreeSet::new();
        let mut args = Vec::new();
        for &i in &t.inputs {
            match &out[i] {
                Ok(b) => args.push(b.clone()),
                Err(c) => causes.extend(c.iter().cloned()),
            }
        }
        if t.fails && causes.is_empty() {
            causes.insert(t.key.clone());
        }
        if !causes.is_empty() {
            out.push(Err(causes));
            continue;
        }
        args.push(value::encode(&(t.seed, t.size)).expect("encodable"));
        out.push(Ok(Bytes::from(combine(&args).expect("reference runs"))));
    }
    out
}

fn gpu_amounts(gpus: u64) -> Vec<(std::sync::Arc<str>, u64)> {
    if gpus > 0 {
        vec![("GPU".into(), gpus)]
    } else {
        Vec::new()
    }
}

fn node_name(i: usize) -> NodeId {
    NodeId(format!("node{i:03}").into())
}

/// The member record of a simulated node (for the replicated table's collectors).
fn sim_info(name: &NodeId) -> MemberInfo {
    MemberInfo {
        id: name.clone(),
        addresses: vec![format!("/sim/{name}")],
        nthreads: 1,
        memory_bytes: 0,
        functions_digest: registry().digest(),
        functions: 10,
        version: "sim".into(),
        protocol: PROTOCOL_VERSION,
        resources: Vec::new(),
        dashboard: String::new(),
        memory_limit: 0,
        data_port: 0,
        name: String::new(),
    }
}

/// The size of an anti-entropy message as the gossip core frames it.
fn wire_size(msg: StateMsg) -> usize {
    let from = Peer {
        node: NodeId("12D3KooWSimulatedGossipPeerOfTheOwnershipTable0000".into()),
        addr: "/ip4/10.0.0.1/tcp/4001".into(),
        generation: 1,
    };
    postcard::to_allocvec(&Wire::State { from, msg }).map_or(usize::MAX, |b| b.len())
}

fn submission(id: u128, g: &PlanGraph) -> GraphSubmission {
    let tasks = g
        .tasks
        .iter()
        .map(|t| {
            let mut args: Vec<Arg> = t
                .inputs
                .iter()
                .map(|&i| Arg::Key(g.tasks[i].key.clone()))
                .collect();
            args.push(Arg::Value(
                value::encode(&(t.seed, t.size)).expect("encodable"),
            ));
            let names = if t.fails { &FAIL } else { &COMBINE };
            TaskSpec {
                key: t.key.clone(),
                function: names[t.inputs.len()].into(),
                args,
                placement: t.placement.as_ref().map(|(nodes, loose)| Placement {
                    nodes: nodes.iter().map(|&n| node_name(n).0).collect(),
                    loose: *loose,
                }),
                resources: if t.gpus > 0 {
                    vec![("GPU".into(), t.gpus)]
                } else {
                    Vec::new()
                },
                priority: 0,
                retries: 0,
            }
        })
        .collect();
    GraphSubmission {
        id: GraphId(id),
        tasks,
        keep: g.keep.iter().map(|&i| g.tasks[i].key.clone()).collect(),
    }
}

/// The network and faults of a run.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Smallest one-way latency, µs.
    pub latency_us: (u64, u64),
    /// Bytes per µs.
    pub bandwidth: u64,
    /// Chance that a batch is lost.
    pub loss: f64,
    /// Chance that a batch arrives twice.
    pub duplicate: f64,
}

impl NetConfig {
    /// A LAN with no faults.
    pub fn lan() -> NetConfig {
        NetConfig {
            latency_us: (50, 300),
            bandwidth: 1_000,
            loss: 0.0,
            duplicate: 0.0,
        }
    }
}

/// What a scheduling run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterReport {
    /// The seed.
    pub seed: u64,
    /// Nodes.
    pub nodes: usize,
    /// A hash of every event in order: equal for equal seeds.
    pub trace_hash: u64,
    /// Tasks that ran, and how many on nodes other than their graph's owner.
    pub tasks_run: u64,
    /// Tasks run away from their owner.
    pub tasks_remote: u64,
    /// Keys that ended in an error.
    pub errors: u64,
    /// Summed counters of every node.
    pub stats: Stats,
    /// Batches lost and duplicated by the network.
    pub lost: u64,
    /// Batches delivered twice.
    pub duplicated: u64,
    /// Virtual µs from the first submission to the last graph's results.
    pub makespan_us: u64,
    /// Virtual µs from the moment the cluster settled (its last graph done, its last fault
    /// over) to its last peer message: how long it took to fall silent.
    pub settle_us: u64,
    /// Invariant violations (empty when the run is correct).
    pub violations: Vec<String>,
}

/// Summed [`CoreStats`] of the nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Tasks placed on a peer by their owner.
    pub placed_remote: u64,
    /// Steal requests.
    pub steal_requests: u64,
    /// Tasks moved by stealing.
    pub stolen: u64,
    /// Values fetched between nodes.
    pub fetched: u64,
    /// Assignments sent again.
    pub retries: u64,
    /// Nodes crashed by the scenario.
    pub crashes: u64,
    /// Results lost with a node and computed again.
    pub recomputed: u64,
    /// Tasks placed again after their node died.
    pub replaced: u64,
    /// Tasks that ran more than once (allowed only when a node died).
    pub reruns: u64,
    /// Graphs of dead owners taken over by a backup.
    pub takeovers: u64,
    /// Tasks a take-over found held or running on members (not computed again).
    pub adopted: u64,
    /// Dead owners whose leftovers members dropped, no take-over claiming them.
    pub orphans_dropped: u64,
    /// Clients that re-attached to a new owner after their entry node died.
    pub reattached: u64,
    /// Nodes stopped gracefully (they handed their work over first).
    pub leaves: u64,
    /// Nodes that joined during the run (restarts).
    pub joins: u64,
    /// Graphs a client submitted again after a re-attach (their copies were lost).
    pub resubmitted: u64,
    /// Partitions (a minority of nodes cut off from the rest, then healed).
    pub partitions: u64,
    /// Keys given up after their allowed failures, all on nodes a partition cut off.
    pub given_up: u64,
    /// Nodes declared dead across a partition (by one node each).
    pub declared_across: u64,
    /// Nodes suspected across a partition that healed before they were declared dead.
    pub suspicions_refuted: u64,
    /// Peers declared dead across a partition that came back when it healed.
    pub peers_back: u64,
    /// Owners that stepped down after a partition (their graphs taken over meanwhile).
    pub stepped_down: u64,
    /// Take-overs put off by a node that saw only a minority of the cluster alive.
    pub no_quorum: u64,
    /// Times a node paused under memory pressure.
    pub pauses: u64,
    /// Client sessions that ended at their owner (closed, or idle past the grace).
    pub sessions_ended: u64,
    /// Take-overs of sessions that had ended, refused by the ownership table.
    pub sessions_refused: u64,
    /// Sessions closed by their clients.
    pub closed: u64,
    /// Datasets published (and unpublished later).
    pub published: u64,
    /// The largest anti-entropy message of the ownership table, in bytes.
    pub largest_state_msg: u64,
}

impl Stats {
    fn add(&mut self, s: CoreStats) {
        self.placed_remote += s.placed_remote;
        self.steal_requests += s.steal_requests;
        self.stolen += s.stolen;
        self.fetched += s.fetched;
        self.retries += s.retries;
        self.recomputed += s.recomputed;
        self.replaced += s.replaced;
        self.takeovers += s.takeovers;
        self.adopted += s.adopted;
        self.orphans_dropped += s.orphans_dropped;
        self.peers_back += s.peers_back;
        self.stepped_down += s.stepped_down;
        self.no_quorum += s.no_quorum;
        self.pauses += s.pauses;
        self.sessions_ended += s.sessions_ended;
        self.sessions_refused += s.sessions_refused;
    }
}

enum Event {
    Submit(usize),
    Deliver(usize, usize, PeerBatch),
    JobDone(usize, TaskDone, Key),
    Tick(usize),
    Members,
    Expire(usize, RequestId),
    Gather(usize),
    /// A node dies (SIGKILL): it stops, its messages and running tasks are lost.
    Crash(usize),
    /// Membership declares a crashed node (second) dead to one node (first): each node
    /// learns it at its own time.
    Detect(usize, usize),
    /// A client whose entry node died looks for the graph's owner.
    Reattach(usize),
    /// A node is told to stop (SIGTERM): it hands its work over, then goes.
    Leave(usize),
    /// A new node joins (a restarted machine: a new identity).
    Join,
    /// The network splits: these nodes (a minority) and the rest no longer reach each
    /// other, until `Heal`.
    Partition(Vec<usize>),
    /// The partition ends.
    Heal,
    /// Membership at the first node suspects the second (a partition between them): it is
    /// declared dead unless the partition healed meanwhile.
    Suspect(usize, usize),
    /// Membership at the first node sees the second alive again (the partition healed).
    Revive(usize, usize),
    /// A node's process memory is now this many bytes (as its shell would measure it):
    /// over the pause mark of [`SIM_MEMORY_LIMIT`] it pauses, below it resumes.
    Memory(usize, u64),
    /// The ownership table's answer to a node's claim reaches it (the shell hands it back).
    Claimed(usize, GraphId, Option<u64>),
    /// The client of a graph that is done closes, drops its connection, or stays.
    End(usize),
    /// A client (of any node) unpublishes the dataset a graph's client published.
    Unpublish(usize),
}

/// The longest makespan a `graphs-chaos` run may take (virtual µs). Seeds 3,000,000–3,019,999
/// take at most 76 s; tasks that waited for a worker's two-minute record to expire took over
/// 120 s.
pub const STALL_US: u64 = 100_000_000;

/// Every simulated node's memory limit (`--memory-limit`): far above what results take, so
/// only the scenario's memory pressure (`Event::Memory`) pauses a node.
pub const SIM_MEMORY_LIMIT: u64 = 1 << 40;

enum ClientOp {
    Submit(usize),
    Gather(usize),
    Release,
    Attach,
    Close,
    Publish(usize),
    Unpublish,
}

/// How the client of a graph ends its session once the graph is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// `close()`: the session ends at once (or once its dataset is unpublished).
    Close,
    /// The connection breaks and the client never comes back: the session ends after the
    /// grace.
    Drop,
    /// The client stays connected until the run ends.
    Stay,
}

struct SimNode {
    core: NodeCore,
    /// Dead (the scenario killed it, or it left).
    crashed: bool,
    /// Told to leave, not gone yet.
    leaving: bool,
    /// When it was told to leave.
    leave_at: u64,
    /// The nodes this node's membership has declared dead.
    dead_seen: Vec<bool>,
    /// GPUs it offers, and GPUs held by tasks handed to its pool.
    gpus: u64,
    gpus_busy: u64,
    nthreads: u32,
    busy: u32,
    queue: VecDeque<Job>,
    next_request: u64,
}

impl SimNode {
    /// A fresh node named `name`, seeing dead the nodes marked in `dead_seen`.
    fn new(name: &NodeId, nthreads: u32, dead_seen: Vec<bool>) -> SimNode {
        let mut core = NodeCore::new(&name.0, registry(), nthreads);
        core.set_memory_limit(Some(SIM_MEMORY_LIMIT));
        SimNode {
            core,
            crashed: false,
            leaving: false,
            leave_at: 0,
            dead_seen,
            gpus: 0,
            gpus_busy: 0,
            nthreads,
            busy: 0,
            queue: VecDeque::new(),
            next_request: 0,
        }
    }
}

struct GraphRun {
    plan: PlanGraph,
    entry: usize,
    expected: Vec<Result<Bytes, BTreeSet<Key>>>,
    submission: Option<GraphSubmission>,
    /// The client's copy of its graph, submitted again should every other be lost.
    copy: GraphSubmission,
    done_at: Option<u64>,
    /// Since when the client has been looking for a new owner.
    orphaned_at: Option<u64>,
    /// Whether the client moved to another node (then a key unknown there is submitted
    /// again rather than a violation).
    moved: bool,
    resubmits: u64,
    /// How the client ends its session once the graph is done.
    ending: Ending,
    /// Whether the client publishes its results (then has them unpublished later).
    publish: bool,
    /// The node a connection of the client carries the session to (it sent `Attach`).
    attached: Option<usize>,
    /// The dataset published, while it is.
    dataset: Option<String>,
}

struct Sim {
    rng: StdRng,
    net: NetConfig,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: BTreeMap<u64, Event>,
    /// Events that are not ticks or membership refreshes: the run ends when none is left.
    live_events: u64,
    nodes: Vec<SimNode>,
    names: Vec<NodeId>,
    by_name: BTreeMap<NodeId, usize>,
    graphs: Vec<GraphRun>,
    ops: BTreeMap<(usize, RequestId), ClientOp>,
    /// Key → (graph, task index) for checks.
    plan_of: BTreeMap<Key, (usize, usize)>,
    started: BTreeSet<Key>,
    finished: BTreeSet<Key>,
    trace: u64,
    report: ClusterReport,
    first_submit: Option<u64>,
    /// A key whose messages are printed (`RDASK_SIM_WATCH=key`), to debug a failing seed.
    watch: Option<Key>,
    /// The replicated state (gossip modelled as instant): the ownership and dataset
    /// tables and the members' records, with the production rules for claims; every
    /// (session, epoch) claimed, with its claimant.
    table: ClusterState,
    claims: BTreeMap<(u64, u64), usize>,
    /// A replica of the table that learns it by anti-entropy rounds (every message encoded
    /// and checked against the gossip frame).
    mirror: ClusterState,
    /// Sessions whose clients closed them (at their owner) or dropped their connection:
    /// no node may own them at the end (nor may a take-over bring a closed one back).
    closed: BTreeSet<u64>,
    dropped: BTreeSet<u64>,
    /// How long a session no connection carries is kept (set on every node).
    session_grace_us: u64,
    /// The side of the current partition each node is on (all 0 when there is none).
    side: Vec<u8>,
    /// (observer, node) pairs declared dead across the partition.
    cut_dead: BTreeSet<(usize, usize)>,
    /// Faults scheduled and not yet happened (crashes, leaves, joins, partitions, heals,
    /// membership news, memory changes, clients re-attaching), and when the last happened.
    faults_pending: u64,
    last_fault_at: u64,
    /// When the last peer batch was sent.
    last_send_at: u64,
    /// Peer batches sent more than [`SETTLE_US`] after the cluster settled, and a few of
    /// them.
    late_sends: u64,
    late_sample: Vec<String>,
}

/// Whether an event is a fault (or a client's move): the cluster settles once none is left.
fn is_fault(e: &Event) -> bool {
    matches!(
        e,
        Event::Crash(_)
            | Event::Detect(..)
            | Event::Reattach(_)
            | Event::Leave(_)
            | Event::Join
            | Event::Partition(_)
            | Event::Heal
            | Event::Suspect(..)
            | Event::Revive(..)
            | Event::Memory(..)
    )
}

/// A short description of a peer message for diagnostics: its kind and its key.
fn describe_msg(m: &PeerMsg) -> String {
    let text = format!("{m:?}");
    let kind: String = text.chars().take_while(|c| c.is_alphanumeric()).collect();
    let key = text
        .find("Key(")
        .map(|at| {
            let rest = &text[at + 4..];
            rest[..rest.find(')').unwrap_or(rest.len())].to_string()
        })
        .unwrap_or_default();
    format!("{kind} {key}")
}

impl Sim {
    fn new(seed: u64, n: usize, nthreads: u32, net: NetConfig) -> Sim {
        let mut names = Vec::new();
        let mut nodes = Vec::new();
        for i in 0..n {
            let name = node_name(i);
            nodes.push(SimNode::new(&name, nthreads, vec![false; n]));
            names.push(name);
        }
        let by_name = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();
        let mut table = ClusterState::new(sim_info(&NodeId("table".into())), 1);
        for name in &names {
            let record =
                ClusterState::new(sim_info(name), 1).entries_of(std::slice::from_ref(name));
            table.merge(record, 0);
        }
        let mirror = ClusterState::new(sim_info(&NodeId("mirror".into())), 1);
        Sim {
            rng: StdRng::seed_from_u64(seed),
            net,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            live_events: 0,
            nodes,
            names,
            by_name,
            graphs: Vec::new(),
            ops: BTreeMap::new(),
            plan_of: BTreeMap::new(),
            started: BTreeSet::new(),
            finished: BTreeSet::new(),
            trace: seed,
            report: ClusterReport {
                seed,
                nodes: n,
                ..ClusterReport::default()
            },
            first_submit: None,
            watch: std::env::var("RDASK_SIM_WATCH").ok().map(Key::from),
            table,
            claims: BTreeMap::new(),
            mirror,
            closed: BTreeSet::new(),
            dropped: BTreeSet::new(),
            session_grace_us: rdask_actors::SESSION_GRACE_MS * 1000,
            side: vec![0; n],
            cut_dead: BTreeSet::new(),
            faults_pending: 0,
            last_fault_at: 0,
            last_send_at: 0,
            late_sends: 0,
            late_sample: Vec::new(),
        }
    }

    /// When the cluster settled: the last graph done and the last fault over (`None` while
    /// a graph is open or a fault is to come).
    fn settled_at(&self) -> Option<u64> {
        if self.faults_pending > 0 {
            return None;
        }
        let mut last = self.last_fault_at;
        for g in &self.graphs {
            last = last.max(g.done_at?);
        }
        Some(last)
    }

    fn at(&mut self, delay: u64, e: Event) {
        self.seq += 1;
        if !matches!(e, Event::Tick(_) | Event::Members | Event::Expire(..)) {
            self.live_events += 1;
        }
        if is_fault(&e) {
            self.faults_pending += 1;
        }
        self.events.insert(self.seq, e);
        self.queue.push(Reverse((self.now + delay, self.seq)));
    }

    fn note(&mut self, a: u64, b: u64) {
        self.trace = mix(self.trace ^ mix(a ^ self.now.rotate_left(20) ^ b.rotate_left(40)));
    }

    fn add_graph(&mut self, plan: PlanGraph, entry: usize, at: u64) {
        let g = self.graphs.len();
        for (i, t) in plan.tasks.iter().enumerate() {
            self.plan_of.insert(t.key.clone(), (g, i));
        }
        let expected = reference(&plan);
        let copy = submission(
            (u128::from(self.rng.random::<u64>()) << 64) | g as u128,
            &plan,
        );
        self.graphs.push(GraphRun {
            plan,
            entry,
            expected,
            submission: Some(copy.clone()),
            copy,
            done_at: None,
            orphaned_at: None,
            moved: false,
            resubmits: 0,
            ending: Ending::Stay,
            publish: false,
            attached: None,
            dataset: None,
        });
        self.at(at, Event::Submit(g));
    }

    fn members(&mut self) {
        for i in 0..self.nodes.len() {
            self.members_of(i);
        }
    }

    /// Hands node `i` the cluster as its membership sees it.
    fn members_of(&mut self, i: usize) {
        if self.nodes[i].crashed {
            return;
        }
        let updates: Vec<PeerUpdate> = self
            .nodes
            .iter()
            .zip(&self.names)
            .enumerate()
            .map(|(j, (n, name))| PeerUpdate {
                node: name.clone(),
                nthreads: n.nthreads,
                functions_digest: registry().digest(),
                alive: !self.nodes[i].dead_seen[j],
                load: n.core.load(),
                resources: gpu_amounts(n.gpus),
                aliases: Vec::new(),
            })
            .collect();
        self.nodes[i].core.handle_members(&updates);
        self.drain(i);
    }

    fn request(&mut self, node: usize, op: ClientOp) -> RequestId {
        let n = &mut self.nodes[node];
        n.next_request += 1;
        let id = RequestId(n.next_request);
        self.ops.insert((node, id), op);
        id
    }

    /// Drains a node's outputs in the documented order.
    fn drain(&mut self, i: usize) {
        loop {
            let replies = self.nodes[i].core.take_replies();
            if replies.is_empty() {
                break;
            }
            for (id, resp) in replies {
                self.reply(i, id, resp);
            }
        }
        let running = self.nodes[i].core.load().running;
        let jobs = self.nodes[i].core.take_jobs();
        // Paused for memory: one task at a time, and only when none runs.
        if self.nodes[i].core.is_paused() && (jobs.len() > 1 || (running > 0 && !jobs.is_empty())) {
            self.report.violations.push(format!(
                "node {i} started {} tasks while paused for memory with {running} running",
                jobs.len()
            ));
        }
        for job in jobs {
            self.note(1, job.key.as_str().len() as u64);
            if self.watch.as_ref() == Some(&job.key) {
                eprintln!("{:>10} node {i} starts {}", self.now, job.key);
            }
            if !self.started.insert(job.key.clone()) {
                // A task runs twice only when a failure forces it: a node died, or a node
                // left while the network lost messages of its hand-over.
                let forced = self.report.stats.crashes > 0
                    || self.report.stats.declared_across > 0
                    || (self.report.stats.leaves > 0 && self.report.lost > 0);
                if !forced {
                    self.report
                        .violations
                        .push(format!("{} ran twice (on node {i})", job.key));
                }
                self.report.stats.reruns += 1;
            }
            if let Some(&(g, t)) = self.plan_of.get(&job.key) {
                for &d in &self.graphs[g].plan.tasks[t].inputs {
                    let dk = &self.graphs[g].plan.tasks[d].key;
                    if !self.finished.contains(dk) {
                        self.report
                            .violations
                            .push(format!("{} started before its input {dk}", job.key));
                    }
                }
                if i != self.graphs[g].entry {
                    self.report.tasks_remote += 1;
                }
                let gpus = self.graphs[g].plan.tasks[t].gpus;
                self.nodes[i].gpus_busy += gpus;
                if self.nodes[i].gpus_busy > self.nodes[i].gpus {
                    self.report.violations.push(format!(
                        "{} needs {gpus} GPU and node {i} (with {}) now runs tasks holding {}",
                        job.key, self.nodes[i].gpus, self.nodes[i].gpus_busy
                    ));
                }
                if let Some((nodes, false)) = &self.graphs[g].plan.tasks[t].placement
                    && !nodes.contains(&i)
                {
                    self.report.violations.push(format!(
                        "{} is restricted to nodes {nodes:?} and ran on node {i}",
                        job.key
                    ));
                }
            }
            self.nodes[i].queue.push_back(job);
        }
        self.start_jobs(i);
        for (to, batch) in self.nodes[i].core.take_sends() {
            self.sent(i, &to, &batch);
            let Some(&j) = self.by_name.get(&to) else {
                self.report
                    .violations
                    .push(format!("node {i} sent to an unknown node {to}"));
                continue;
            };
            self.transmit(i, j, batch);
        }
        for (id, ms) in self.nodes[i].core.take_timers() {
            self.at(u64::from(ms) * 1000, Event::Expire(i, id));
        }
        if self.nodes[i].leaving && !self.nodes[i].crashed && self.nodes[i].core.left() {
            // Handed everything over: the node goes (its last batches are on their way).
            self.gone(i);
        }
        let now_ms = self.now / 1000;
        for (name, dataset) in self.nodes[i].core.take_dataset_writes() {
            self.table.set_dataset(&name, dataset, now_ms);
        }
        for w in self.nodes[i].core.take_owner_writes() {
            match w {
                OwnerWrite::Claim { graph, epoch } => self.claim(i, graph, epoch),
                OwnerWrite::Release { graph, closed } => {
                    self.table
                        .release_owner(graph.0, &self.names[i], closed, now_ms);
                }
            }
        }
    }

    /// Node `i` claims a session in the table (the production rules: a first claim
    /// outranks another owner's entry or a tombstone; a take-over of a session that ended
    /// is refused); the outcome goes back to the node as its shell would hand it back.
    fn claim(&mut self, i: usize, graph: GraphId, epoch: u64) {
        let session = (graph.0 >> 64) as u64;
        let own = Ownership {
            owner: self.names[i].clone(),
            epoch,
            backups: Vec::new(),
        };
        let taken = self.table.claim(graph.0, own, self.now / 1000);
        match taken {
            Some(e) => {
                if let Some(&other) = self.claims.get(&(session, e))
                    && other != i
                {
                    self.report.violations.push(format!(
                        "session {session:x} has two owners in epoch {e}: nodes {other} and {i}"
                    ));
                }
                self.claims.insert((session, e), i);
                if epoch != 1 && self.closed.contains(&session) {
                    self.report.violations.push(format!(
                        "node {i} took over session {session:x}, which its client had closed"
                    ));
                }
            }
            None => {
                // A backup claimed a session that had ended: its owner's word did not reach
                // it (a lost message), else it would not have.
                if self.report.lost == 0 {
                    self.report.violations.push(format!(
                        "node {i} claimed session {session:x}, which had ended, with no message lost"
                    ));
                }
            }
        }
        let delay = self.rng.random_range(0..2_000);
        self.at(delay, Event::Claimed(i, graph, taken));
    }

    /// Node `i` sends a batch: noted for the quiescence check.
    fn sent(&mut self, i: usize, to: &NodeId, batch: &PeerBatch) {
        self.last_send_at = self.now;
        if let Some(settled) = self.settled_at()
            && self.now > settled + SETTLE_US
        {
            self.late_sends += 1;
            if self.late_sample.len() < 6 {
                let msgs: Vec<String> = batch.msgs.iter().take(3).map(describe_msg).collect();
                self.late_sample.push(format!(
                    "at {:.1} s node {i} -> {to}: {}",
                    self.now as f64 / 1e6,
                    msgs.join(", ")
                ));
            }
        }
    }

    /// With `RDASK_SIM_WATCH` set, the watched key's messages the network loses.
    fn watch_lost(&self, from: usize, to: usize, batch: &PeerBatch) {
        let Some(k) = &self.watch else { return };
        for m in &batch.msgs {
            let text = format!("{m:?}");
            if text.contains(k.as_str()) {
                eprintln!(
                    "{:>10} {from}->{to} LOST {}",
                    self.now,
                    &text[..text.len().min(300)]
                );
            }
        }
    }

    fn transmit(&mut self, from: usize, to: usize, batch: PeerBatch) {
        if self.nodes[from].crashed || self.nodes[to].crashed {
            return;
        }
        if self.side[from] != self.side[to] {
            self.report.lost += 1;
            self.watch_lost(from, to, &batch);
            return;
        }
        let bytes: u64 = batch
            .msgs
            .iter()
            .map(|m| match m {
                PeerMsg::Data { value: Some(v), .. } => v.len() as u64,
                _ => 64,
            })
            .sum();
        let (lo, hi) = self.net.latency_us;
        let delay = self.rng.random_range(lo..=hi) + bytes / self.net.bandwidth.max(1);
        self.note(2, (from * 1000 + to) as u64);
        if self.net.loss > 0.0 && self.rng.random_bool(self.net.loss) {
            self.report.lost += 1;
            self.watch_lost(from, to, &batch);
            return;
        }
        if self.net.duplicate > 0.0 && self.rng.random_bool(self.net.duplicate) {
            self.report.duplicated += 1;
            let later = delay + self.rng.random_range(0..=hi * 4);
            self.at(later, Event::Deliver(from, to, batch.clone()));
        }
        self.at(delay, Event::Deliver(from, to, batch));
    }

    fn start_jobs(&mut self, i: usize) {
        while self.nodes[i].busy < self.nodes[i].nthreads {
            let Some(job) = self.nodes[i].queue.pop_front() else {
                break;
            };
            self.nodes[i].busy += 1;
            let cost = self
                .plan_of
                .get(&job.key)
                .map_or(1, |&(g, t)| self.graphs[g].plan.tasks[t].cost_us);
            let result = job.entry.call(&job.args);
            let done = TaskDone {
                task: job.task,
                result,
                elapsed_ns: cost * 1000,
            };
            self.at(cost.max(1), Event::JobDone(i, done, job.key));
            self.report.tasks_run += 1;
        }
    }

    fn reply(&mut self, node: usize, id: RequestId, resp: ClientResponse) {
        self.note(3, id.0);
        let Some(op) = self.ops.remove(&(node, id)) else {
            self.report
                .violations
                .push(format!("node {node} answered request {id:?} twice"));
            return;
        };
        match (op, resp) {
            (ClientOp::Submit(g) | ClientOp::Gather(g), ClientResponse::Moved(_)) => {
                // The entry node stepped down after a partition: the client looks for the
                // new owner.
                if node == self.graphs[g].entry && self.graphs[g].done_at.is_none() {
                    self.graphs[g].orphaned_at.get_or_insert(self.now);
                    self.at(100_000, Event::Reattach(g));
                }
            }
            (ClientOp::Submit(g), ClientResponse::Submitted(_)) if node != self.graphs[g].entry => {
            }
            (ClientOp::Submit(g), ClientResponse::Submitted(outcomes)) => {
                if outcomes != [SubmitOutcome::Accepted] {
                    self.report
                        .violations
                        .push(format!("graph {g} refused: {outcomes:?}"));
                    return;
                }
                self.at(0, Event::Gather(g));
            }
            (ClientOp::Gather(g), ClientResponse::Results(results)) => {
                if node != self.graphs[g].entry {
                    // An answer from a node the client has left.
                    return;
                }
                if self.graphs[g].done_at.is_some() {
                    self.report
                        .violations
                        .push(format!("graph {g} was delivered twice"));
                    return;
                }
                let unknown: Vec<Key> = self
                    .kept_keys(g)
                    .into_iter()
                    .zip(&results)
                    .filter(|(_, r)| matches!(r, KeyResult::Unknown))
                    .map(|(k, _)| k)
                    .collect();
                if !unknown.is_empty() && std::env::var("DBG").is_ok() {
                    let lines: Vec<Option<String>> = unknown
                        .iter()
                        .take(3)
                        .map(|k| self.nodes[node].core.describe(k))
                        .collect();
                    eprintln!(
                        "{} gather {g} at {node}: unknown {:?} {lines:?}",
                        self.now,
                        &unknown[..unknown.len().min(3)]
                    );
                }
                let stepped_down = self.nodes[node].core.stats().stepped_down > 0;
                if !unknown.is_empty() && (self.graphs[g].moved || stepped_down) {
                    // The new owner lost these (a copy that never reached a backup), or the
                    // entry node stepped down (it answers the resubmission `Moved`): the
                    // client submits its own copy again.
                    self.resubmit(g, unknown);
                    return;
                }
                if self.check(g, &results) {
                    self.graphs[g].done_at = Some(self.now);
                    let keys = self.kept_keys(g);
                    let entry = self.graphs[g].entry;
                    if self.graphs[g].publish && !keys.is_empty() {
                        // Published first: the results outlive the client's futures.
                        let name = format!("data-{g}");
                        let session = (self.graphs[g].copy.id.0 >> 64) as u64;
                        let r = self.request(entry, ClientOp::Publish(g));
                        self.nodes[entry]
                            .core
                            .handle_publish(r, name, session, keys.clone());
                    }
                    let r = self.request(entry, ClientOp::Release);
                    self.nodes[entry].core.handle_release(r, keys);
                    let delay = self.rng.random_range(0..500_000);
                    self.at(delay, Event::End(g));
                } else {
                    self.at(1000, Event::Gather(g));
                }
            }
            (ClientOp::Release | ClientOp::Unpublish, ClientResponse::Released) => {}
            (ClientOp::Attach, ClientResponse::Attached) => {}
            (ClientOp::Close, ClientResponse::Closed) => {}
            (ClientOp::Publish(g), ClientResponse::Published) => {
                self.report.stats.published += 1;
                self.graphs[g].dataset = Some(format!("data-{g}"));
                let delay = self.rng.random_range(500_000..3_000_000);
                self.at(delay, Event::Unpublish(g));
            }
            // The entry stepped down meanwhile (a partition healed): nothing published.
            (ClientOp::Publish(_), ClientResponse::Refused(_) | ClientResponse::Moved(_)) => {}
            (_, other) => self
                .report
                .violations
                .push(format!("unexpected answer {other:?}")),
        }
    }

    /// Node `i` is gone: it stops, and the others' membership finds out (a leaving node's
    /// notice spreads like a failure's detection, sooner).
    fn gone(&mut self, i: usize) {
        self.last_fault_at = self.now;
        self.nodes[i].crashed = true;
        self.nodes[i].queue.clear();
        let leaving = self.nodes[i].leaving;
        for o in 0..self.nodes.len() {
            let delay = if leaving {
                self.rng.random_range(50_000..500_000)
            } else {
                self.rng.random_range(1_000_000..3_000_000)
            };
            self.at(delay, Event::Detect(o, i));
        }
        self.table.remove(&self.names[i], self.now / 1000);
        // Clients connected to it see their connection drop.
        for g in 0..self.graphs.len() {
            if self.graphs[g].attached == Some(i) {
                self.graphs[g].attached = None;
            }
            if self.graphs[g].entry == i && self.graphs[g].done_at.is_none() {
                self.graphs[g].orphaned_at = Some(self.now);
                let delay = self.rng.random_range(100_000..800_000);
                self.at(delay, Event::Reattach(g));
            }
        }
    }

    /// The network splits `group` from the rest: messages between the sides are lost, and
    /// each side's membership suspects the other's nodes (declared dead after 1–3 s unless
    /// the partition heals first).
    fn partition(&mut self, group: &[usize]) {
        self.note(9, group.len() as u64);
        self.report.stats.partitions += 1;
        for &i in group {
            self.side[i] = 1;
        }
        for o in 0..self.nodes.len() {
            for i in 0..self.nodes.len() {
                if self.side[o] != self.side[i] && !self.nodes[o].crashed {
                    let delay = self.rng.random_range(1_000_000..3_000_000);
                    self.at(delay, Event::Suspect(o, i));
                }
            }
        }
    }

    /// The partition ends: each node's membership sees the nodes it declared dead across it
    /// alive again, each at its own time.
    fn heal(&mut self) {
        self.note(10, 0);
        self.side.iter_mut().for_each(|s| *s = 0);
        for (o, i) in std::mem::take(&mut self.cut_dead) {
            let delay = self.rng.random_range(0..1_000_000);
            self.at(delay, Event::Revive(o, i));
        }
    }

    /// A new node joins the cluster.
    fn join(&mut self) {
        let j = self.nodes.len();
        let name = node_name(j);
        self.note(8, j as u64);
        self.report.stats.joins += 1;
        let nthreads = self.nodes[0].nthreads;
        let dead: Vec<bool> = self.nodes.iter().map(|n| n.crashed).collect();
        for n in &mut self.nodes {
            n.dead_seen.push(false);
        }
        let mut dead_seen = dead;
        dead_seen.push(false);
        self.nodes.push(SimNode::new(&name, nthreads, dead_seen));
        self.nodes[j]
            .core
            .set_session_grace(self.session_grace_us / 1000);
        let record = ClusterState::new(sim_info(&name), 1).entries_of(std::slice::from_ref(&name));
        self.table.merge(record, self.now / 1000);
        self.side.push(0);
        self.by_name.insert(name.clone(), j);
        self.names.push(name);
        let offset = self.rng.random_range(0..10_000);
        self.at(offset, Event::Tick(j));
        // Members learn of it (and it of them) when their membership is next refreshed,
        // each at its own time.
        for i in 0..=j {
            let delay = self.rng.random_range(0..1_000_000);
            self.at(delay, Event::Detect(i, usize::MAX));
        }
    }

    /// A client whose entry node died: it asks any node for the owner of its session (the
    /// replicated table) and moves there once a live node owns it; with no owner after
    /// 15 s, it submits its own copy to a live node.
    fn reattach(&mut self, g: usize) {
        let Some(since) = self.graphs[g].orphaned_at else {
            return;
        };
        let session = (self.graphs[g].copy.id.0 >> 64) as u64;
        let entry = self.graphs[g].entry;
        let owner = self
            .table
            .owner(u128::from(session) << 64)
            .and_then(|o| self.by_name.get(&o.owner).copied())
            .filter(|&n| n != entry && !self.nodes[n].crashed);
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|&n| !self.nodes[n].crashed)
            .collect();
        let target = match owner {
            Some(n) => n,
            None if self.now >= since + 15_000_000 && !live.is_empty() => {
                live[self.rng.random_range(0..live.len())]
            }
            None => {
                self.at(500_000, Event::Reattach(g));
                return;
            }
        };
        self.note(6, (g * 1000 + target) as u64);
        self.report.stats.reattached += 1;
        let run = &mut self.graphs[g];
        run.entry = target;
        run.orphaned_at = None;
        run.moved = true;
        self.attach(g, target);
        if owner.is_some() {
            self.at(0, Event::Gather(g));
        } else {
            let keys = self.kept_keys(g);
            self.resubmit(g, keys);
        }
    }

    /// The client of graph `g` connects to `node` and attaches its session there; the
    /// connection it had (if its node lives) closes.
    fn attach(&mut self, g: usize, node: usize) {
        let session = (self.graphs[g].copy.id.0 >> 64) as u64;
        if self.graphs[g].attached == Some(node) {
            return;
        }
        if let Some(old) = self.graphs[g].attached.take()
            && !self.nodes[old].crashed
        {
            self.nodes[old].core.handle_detach(session);
            self.drain(old);
        }
        if self.nodes[node].crashed {
            return;
        }
        let r = self.request(node, ClientOp::Attach);
        self.nodes[node].core.handle_attach(r, session);
        self.graphs[g].attached = Some(node);
        self.drain(node);
    }

    /// The client of graph `g` (done) ends its session as planned.
    fn end(&mut self, g: usize) {
        let session = (self.graphs[g].copy.id.0 >> 64) as u64;
        let entry = self.graphs[g].entry;
        match self.graphs[g].ending {
            Ending::Stay => {}
            Ending::Close if !self.nodes[entry].crashed => {
                self.note(11, session);
                self.report.stats.closed += 1;
                // Closed where it is owned: no node may own it from now on (once its
                // dataset is unpublished).
                if self.nodes[entry].core.owns_session(session) && self.graphs[g].dataset.is_none()
                {
                    self.closed.insert(session);
                } else {
                    self.dropped.insert(session);
                }
                let r = self.request(entry, ClientOp::Close);
                self.nodes[entry].core.handle_close(r, session);
                self.graphs[g].attached = None;
                self.drain(entry);
            }
            Ending::Close | Ending::Drop => {
                self.note(12, session);
                self.dropped.insert(session);
                if let Some(n) = self.graphs[g].attached.take()
                    && !self.nodes[n].crashed
                {
                    self.nodes[n].core.handle_detach(session);
                    self.drain(n);
                }
            }
        }
    }

    /// A client of a random live node unpublishes graph `g`'s dataset, as the table holds
    /// it.
    fn unpublish(&mut self, g: usize) {
        let Some(name) = self.graphs[g].dataset.take() else {
            return;
        };
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|&n| !self.nodes[n].crashed)
            .collect();
        let Some(dataset) = self.table.dataset(&name).cloned() else {
            return;
        };
        if live.is_empty() {
            return;
        }
        let u = live[self.rng.random_range(0..live.len())];
        let owner = self
            .table
            .owner(u128::from(dataset.session) << 64)
            .map(|o| o.owner.clone());
        let r = self.request(u, ClientOp::Unpublish);
        self.nodes[u].core.handle_unpublish(r, name, dataset, owner);
        self.drain(u);
    }

    /// Anti-entropy rounds between the table and its replica, both ways (the table's
    /// collectors run too): every message is encoded and must fit the gossip frame.
    fn sync_mirror(&mut self, rounds: usize) {
        let now_ms = self.now / 1000;
        self.table.collect_garbage(now_ms, 240_000, 60_000);
        self.mirror.collect_garbage(now_ms, 240_000, 60_000);
        let limits = Limits::default();
        for r in 0..rounds {
            let (a, b) = if r % 2 == 0 {
                (&mut self.table, &mut self.mirror)
            } else {
                (&mut self.mirror, &mut self.table)
            };
            let mut sizes = vec![wire_size(StateMsg::Hash(a.hashes()))];
            if let Some(d) = b.digest_for(&a.hashes()) {
                let (s3, _) = a.sync_for(&d, limits);
                sizes.push(wire_size(StateMsg::Digest(d)));
                if let Some(mut s3) = s3 {
                    sizes.push(wire_size(StateMsg::Sync(Box::new(s3.clone()))));
                    b.merge(std::mem::take(&mut s3.delta), now_ms);
                    if let (Some(mut s4), _) = b.answer(&s3, limits) {
                        sizes.push(wire_size(StateMsg::Sync(Box::new(s4.clone()))));
                        a.merge(std::mem::take(&mut s4.delta), now_ms);
                        if let (Some(s5), _) = a.answer(&s4, limits) {
                            sizes.push(wire_size(StateMsg::Sync(Box::new(s5.clone()))));
                            b.merge(s5.delta, now_ms);
                        }
                    }
                }
            }
            for n in sizes {
                self.report.stats.largest_state_msg =
                    self.report.stats.largest_state_msg.max(n as u64);
                if n > MAX_FRAME_BYTES {
                    self.report.violations.push(format!(
                        "an anti-entropy message of {n} bytes exceeds the gossip frame"
                    ));
                }
            }
        }
    }

    /// Submits the client's copy of graph `g` again, under a new id of its session,
    /// keeping futures of `keep`.
    fn resubmit(&mut self, g: usize, keep: Vec<Key>) {
        self.report.stats.resubmitted += 1;
        let run = &mut self.graphs[g];
        run.resubmits += 1;
        let mut sub = run.copy.clone();
        sub.id = GraphId(sub.id.0 + (u128::from(run.resubmits) << 32));
        sub.keep = keep;
        run.submission = Some(sub);
        self.at(0, Event::Submit(g));
    }

    fn kept_keys(&self, g: usize) -> Vec<Key> {
        let plan = &self.graphs[g].plan;
        plan.keep
            .iter()
            .map(|&i| plan.tasks[i].key.clone())
            .collect()
    }

    /// Checks a gather's answer against the reference; whether it is complete.
    fn check(&mut self, g: usize, results: &[KeyResult]) -> bool {
        let mut complete = true;
        let keep = self.graphs[g].plan.keep.clone();
        for (&i, r) in keep.iter().zip(results) {
            let key = self.graphs[g].plan.tasks[i].key.clone();
            match (r, &self.graphs[g].expected[i]) {
                (KeyResult::Value(b), Ok(v)) => {
                    if b != v {
                        self.report
                            .violations
                            .push(format!("{key} has a wrong value"));
                    }
                }
                (KeyResult::Error(e), _)
                    if e.kind == TaskErrorKind::Lost && self.report.stats.declared_across > 0 =>
                {
                    // Each node a partition cut off, once declared dead, counts as a failed
                    // attempt of the tasks placed on it (the allowed failures): a task placed
                    // on several of them in turn is given up, as documented.
                    self.report.stats.given_up += 1;
                }
                (KeyResult::Error(e), Err(causes)) => {
                    if !causes.contains(&e.key) {
                        self.report.violations.push(format!(
                            "{key} failed with cause {}, expected one of {causes:?}",
                            e.key
                        ));
                    }
                    self.report.errors += 1;
                }
                (KeyResult::Pending, _) => complete = false,
                (other, _) => self
                    .report
                    .violations
                    .push(format!("{key}: unexpected {other:?}")),
            }
        }
        complete
    }

    fn run(&mut self, limit_us: u64) {
        self.members();
        for i in 0..self.nodes.len() {
            let offset = self.rng.random_range(0..10_000);
            self.at(offset, Event::Tick(i));
        }
        self.at(1_000_000, Event::Members);
        // Once every graph is done and the faults are over, the run ends when the cluster
        // has been quiet for `QUIET_US`; a cluster that is not quiet `SETTLE_US` after
        // that is stopped `QUIET_US` later (it may never be).
        let mut timed_out = false;
        while let Some(Reverse((t, seq))) = self.queue.pop() {
            if let Some(settled) = self.settled_at() {
                // Sessions whose clients went without closing end after their grace: the
                // run lasts at least that long after the graphs.
                let sessions_over = settled + self.session_grace_us + 1_000_000;
                if self.live_events == 0
                    && t > self.last_send_at.max(settled) + QUIET_US
                    && t > sessions_over
                {
                    break;
                }
                if t > settled.max(sessions_over) + SETTLE_US + QUIET_US {
                    break;
                }
            }
            if t > limit_us {
                let kinds: Vec<String> = self
                    .events
                    .values()
                    .filter_map(|e| match e {
                        Event::Submit(g) => Some(format!("submit {g}")),
                        Event::Gather(g) => Some(format!("gather {g}")),
                        Event::Deliver(f, t, b) => {
                            Some(format!("deliver {f}->{t} {:?}", b.msgs.first()))
                        }
                        Event::JobDone(i, _, k) => Some(format!("done {i} {k}")),
                        _ => None,
                    })
                    .take(5)
                    .collect();
                self.report.violations.push(format!(
                    "not finished after {} virtual s: {}; in flight {kinds:?}",
                    limit_us / 1_000_000,
                    self.unfinished()
                ));
                timed_out = true;
                break;
            }
            self.now = t;
            let e = self.events.remove(&seq).expect("scheduled");
            if self.watch.is_some() {
                self.print_fault(&e);
            }
            if !matches!(e, Event::Tick(_) | Event::Members | Event::Expire(..)) {
                self.live_events -= 1;
            }
            if is_fault(&e) {
                self.faults_pending -= 1;
                self.last_fault_at = self.now;
            }
            match e {
                Event::Submit(g) => {
                    self.first_submit.get_or_insert(self.now);
                    let entry = self.graphs[g].entry;
                    if self.nodes[entry].crashed {
                        // The client finds out when it looks for the owner.
                        self.graphs[g].orphaned_at.get_or_insert(self.now);
                        self.at(500_000, Event::Reattach(g));
                        continue;
                    }
                    self.attach(g, entry);
                    let sub = self.graphs[g].submission.take().expect("submitted once");
                    let r = self.request(entry, ClientOp::Submit(g));
                    self.nodes[entry].core.handle_submit(r, vec![sub]);
                    self.drain(entry);
                }
                Event::Gather(g) => {
                    let entry = self.graphs[g].entry;
                    if self.nodes[entry].crashed || self.graphs[g].done_at.is_some() {
                        continue;
                    }
                    let keys = self.kept_keys(g);
                    let r = self.request(entry, ClientOp::Gather(g));
                    self.nodes[entry].core.handle_gather(r, keys, 600_000);
                    self.drain(entry);
                }
                Event::Deliver(_, to, _) if self.nodes[to].crashed => {}
                Event::Deliver(from, to, _) if self.side[from] != self.side[to] => {
                    // In flight when the network split.
                    self.report.lost += 1;
                }
                Event::JobDone(i, ..) | Event::Tick(i) | Event::Expire(i, _)
                    if self.nodes[i].crashed => {}
                Event::Crash(i) => {
                    if !self.nodes[i].crashed {
                        self.note(5, i as u64);
                        self.report.stats.crashes += 1;
                        self.gone(i);
                    }
                }
                Event::Reattach(g) => self.reattach(g),
                Event::Leave(i) => {
                    if !self.nodes[i].crashed && !self.nodes[i].leaving {
                        self.note(7, i as u64);
                        self.nodes[i].leaving = true;
                        self.nodes[i].leave_at = self.now;
                        self.report.stats.leaves += 1;
                        self.nodes[i].core.handle_leave();
                        self.drain(i);
                    }
                }
                Event::Join => self.join(),
                Event::Memory(i, bytes) => {
                    if !self.nodes[i].crashed {
                        self.note(9, i as u64);
                        self.nodes[i].core.handle_process_memory(bytes);
                        self.drain(i);
                    }
                }
                Event::Partition(group) => self.partition(&group),
                Event::Heal => self.heal(),
                Event::Suspect(o, i) => {
                    if self.side[o] != self.side[i] && !self.nodes[i].crashed {
                        self.cut_dead.insert((o, i));
                        self.report.stats.declared_across += 1;
                        self.nodes[o].dead_seen[i] = true;
                        self.members_of(o);
                    } else {
                        self.report.stats.suspicions_refuted += 1;
                    }
                }
                Event::Revive(o, i) => {
                    if !self.nodes[i].crashed && self.nodes[o].dead_seen[i] {
                        self.nodes[o].dead_seen[i] = false;
                        self.members_of(o);
                    }
                }
                Event::Detect(o, i) => {
                    // `usize::MAX`: only a refresh of the members (someone joined).
                    if i != usize::MAX {
                        self.nodes[o].dead_seen[i] = true;
                    }
                    self.members_of(o);
                }
                Event::Deliver(from, to, batch) => {
                    self.note(4, (from * 1000 + to) as u64);
                    if let Some(k) = &self.watch {
                        for m in &batch.msgs {
                            let text = format!("{m:?}");
                            if text.contains(k.as_str()) {
                                eprintln!(
                                    "{:>10} {from}->{to} {}",
                                    self.now,
                                    &text[..text.len().min(300)]
                                );
                            }
                        }
                    }
                    let name = self.names[from].clone();
                    self.nodes[to].core.handle_peer(&name, batch);
                    self.drain(to);
                }
                Event::JobDone(i, done, key) => {
                    self.nodes[i].busy -= 1;
                    if let Some(&(g, t)) = self.plan_of.get(&key) {
                        self.nodes[i].gpus_busy -= self.graphs[g].plan.tasks[t].gpus;
                    }
                    self.finished.insert(key);
                    self.nodes[i].core.handle_task_done(done);
                    self.drain(i);
                }
                Event::Tick(i) => {
                    if self.nodes[i].leaving && self.now > self.nodes[i].leave_at + 30_000_000 {
                        // The hand-over did not finish (messages lost): the node stops
                        // anyway, as a crash would.
                        self.report.stats.crashes += 1;
                        self.gone(i);
                        continue;
                    }
                    self.nodes[i].core.handle_tick(self.now / 1000);
                    self.drain(i);
                    self.at(10_000, Event::Tick(i));
                }
                Event::Members => {
                    self.members();
                    // As each node's shell does every second: datasets it published that
                    // the table says were unpublished (the unpublishing node's word may have
                    // been lost) are released.
                    for i in 0..self.nodes.len() {
                        if self.nodes[i].crashed {
                            continue;
                        }
                        let gone: Vec<String> = self.nodes[i]
                            .core
                            .published_names()
                            .into_iter()
                            .filter(|n| self.table.dataset_removed(n))
                            .collect();
                        if !gone.is_empty() {
                            self.nodes[i].core.handle_unpublished(gone);
                            self.drain(i);
                        }
                    }
                    self.sync_mirror(2);
                    self.at(1_000_000, Event::Members);
                }
                Event::Claimed(i, graph, taken) => {
                    if !self.nodes[i].crashed {
                        self.nodes[i].core.handle_claimed(graph, taken);
                        self.drain(i);
                    }
                }
                Event::End(g) => self.end(g),
                Event::Unpublish(g) => self.unpublish(g),
                Event::Expire(i, id) => {
                    self.nodes[i].core.handle_wait_expired(id);
                    self.drain(i);
                }
            }
        }
        let first = self.first_submit.unwrap_or(0);
        self.report.makespan_us = self
            .graphs
            .iter()
            .filter_map(|g| g.done_at)
            .max()
            .unwrap_or(0)
            .saturating_sub(first);
        for n in &self.nodes {
            self.report.stats.add(n.core.stats());
        }
        // Whatever the network did, a node accounts exactly the values it holds (memory it
        // does not hold would pause it for nothing).
        for (i, n) in self.nodes.iter().enumerate() {
            let load = n.core.load();
            let held = n.core.values_held();
            if !n.crashed && (load.stored, load.memory_used) != held {
                self.report.violations.push(format!(
                    "node {i} accounts {} values of {} bytes and holds {} of {} bytes",
                    load.stored, load.memory_used, held.0, held.1
                ));
            }
        }
        if !timed_out && self.graphs.iter().any(|g| g.done_at.is_none()) {
            self.report.violations.push(format!(
                "the run stopped with graphs unfinished: {}",
                self.unfinished()
            ));
        }
        if let Some(settled) = self.settled_at() {
            self.report.settle_us = self.last_send_at.saturating_sub(settled);
        }
        if let Some(settled) = self.settled_at()
            && self.late_sends > 0
        {
            let left = self.leftovers();
            self.report.violations.push(format!(
                "not quiet: the last graph and the last fault were over at {:.1} virtual s, and \
                 {} peer batches were sent more than {} s later, the last at {:.1} s: {:?}; {}",
                settled as f64 / 1e6,
                self.late_sends,
                SETTLE_US / 1_000_000,
                self.last_send_at as f64 / 1e6,
                self.late_sample,
                if left.is_empty() {
                    "the nodes hold nothing".to_string()
                } else {
                    let more = left.len().saturating_sub(6);
                    format!("still held: {:?} ({more} more)", &left[..left.len().min(6)])
                }
            ));
        }
    }

    /// With `RDASK_SIM_WATCH` set, faults are printed beside the watched key's messages.
    fn print_fault(&self, e: &Event) {
        let text = match e {
            Event::Crash(i) => format!("node {i} crashes"),
            Event::Leave(i) => format!("node {i} is told to leave"),
            Event::Join => format!("node {} joins", self.nodes.len()),
            Event::Partition(group) => format!("partition: {group:?} cut off"),
            Event::Heal => "the partition heals".into(),
            Event::Suspect(o, i) if self.side[*o] != self.side[*i] => {
                format!("node {o} declares node {i} dead (across the partition)")
            }
            Event::Revive(o, i) if self.nodes[*o].dead_seen[*i] => {
                format!("node {o} sees node {i} alive again")
            }
            Event::Detect(o, i) if *i != usize::MAX && !self.nodes[*o].dead_seen[*i] => {
                format!("node {o} learns node {i} is gone")
            }
            Event::Memory(i, b) => format!("node {i}'s memory is now {b} bytes"),
            _ => return,
        };
        eprintln!("{:>10} {text}", self.now);
    }

    fn unfinished(&self) -> String {
        let open: Vec<usize> = (0..self.graphs.len())
            .filter(|&g| self.graphs[g].done_at.is_none())
            .collect();
        let loads: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{i}:{:?}/{:?}", n.core.load(), n.core.foreign_keys()))
            .take(8)
            .collect();
        let mut stuck = Vec::new();
        for &g in &open {
            let run = &self.graphs[g];
            let lines: Vec<String> = run
                .plan
                .tasks
                .iter()
                .filter_map(|t| self.nodes[run.entry].core.describe(&t.key))
                .filter(|l| !l.contains(": in memory"))
                .take(4)
                .collect();
            stuck.push(format!("graph {g} at node {}", run.entry));
            stuck.extend(lines);
            for &i in run.plan.keep.iter().take(4) {
                stuck.extend(self.nodes[run.entry].core.describe(&run.plan.tasks[i].key));
            }
        }
        format!("graphs {open:?} open; unfinished {stuck:?}; loads {loads:?}")
    }

    /// After the run: no node owns a session its client closed or dropped (their grace is
    /// over), and the table's replica converged through bounded messages.
    fn check_sessions(&mut self) {
        for (i, n) in self.nodes.iter().enumerate() {
            if n.crashed {
                continue;
            }
            for s in n.core.owned_sessions() {
                if self.closed.contains(&s) || self.dropped.contains(&s) {
                    let how = if self.closed.contains(&s) {
                        "closed"
                    } else {
                        "dropped"
                    };
                    self.report.violations.push(format!(
                        "node {i} still owns session {s:x}, which its client {how} ({})",
                        n.core.describe_session(s)
                    ));
                }
            }
        }
        // The live entries agree (tombstones may differ for a moment: each node drops them
        // a grace period after it got them).
        let live = |s: &ClusterState| {
            let mut owners: Vec<(u128, Ownership)> =
                s.owners().map(|(g, o)| (g, o.clone())).collect();
            owners.sort_by_key(|(g, _)| *g);
            let datasets: Vec<(String, rdask_gossip::Dataset)> = s
                .datasets()
                .map(|(n, d)| (n.to_string(), d.clone()))
                .collect();
            let members: Vec<NodeId> = s.members().map(|(n, _)| n.clone()).collect();
            (owners, datasets, members.len())
        };
        for _ in 0..20 {
            if live(&self.table) == live(&self.mirror) {
                break;
            }
            self.sync_mirror(2);
        }
        if live(&self.table) != live(&self.mirror) {
            self.report.violations.push(format!(
                "the table's replica did not converge: {:?} against {:?}",
                self.mirror.sizes(),
                self.table.sizes()
            ));
        }
    }

    /// After the run: with no message lost (duplicates are harmless), every node holds
    /// nothing. (A lost release leaves a value behind, a lost copy of a backup's change a
    /// spec; and so does a take-over of the sessions of an owner cut off by a partition,
    /// whose client released its futures there: these are not checked.)
    fn check_empty(&mut self) {
        let left = self.leftovers();
        self.report.violations.extend(left);
    }

    /// What live nodes still keep: keys of their graphs, results and tasks of others',
    /// copies of others' graphs, memory.
    fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if n.crashed {
                continue;
            }
            let (held, pending) = n.core.foreign_keys();
            let keeps = n.core.tracked_keys() != 0 || held != 0 || pending != 0;
            if keeps {
                left.push(format!(
                    "node {i} keeps {} keys of its graphs ({:?}), {held} results ({:?}) and {pending} tasks of others",
                    n.core.tracked_keys(),
                    n.core.tracked_sample(3),
                    n.core.held_sample(3)
                ));
            }
            let (owners, specs) = n.core.replica_keys();
            if specs != 0 {
                left.push(format!(
                    "node {i} keeps copies of {specs} tasks of {owners} owners: {:?}",
                    n.core.replica_sample()
                ));
            }
            let load = n.core.load();
            if (load.memory_used != 0 || load.stored != 0) && !keeps {
                left.push(format!(
                    "node {i} accounts memory it does not hold: {load:?}"
                ));
            }
        }
        left
    }
}

/// The `graphs-chaos` scenario for one seed: `nodes` nodes (drawn from 3 to 200 when
/// `None`), random graphs from several clients on several entry nodes, a network that
/// loses, duplicates and reorders messages.
pub fn graphs_chaos(seed: u64, nodes: Option<usize>) -> ClusterReport {
    chaos(seed, |rng| {
        nodes.unwrap_or_else(|| match rng.random_range(0..10) {
            0..=5 => rng.random_range(3..=8),
            6..=8 => rng.random_range(9..=40),
            _ => rng.random_range(41..=200),
        })
    })
}

/// [`graphs_chaos`] on a cluster of `lo..=hi` nodes (drawn uniformly).
pub fn graphs_chaos_between(seed: u64, lo: usize, hi: usize) -> ClusterReport {
    chaos(seed, |rng| rng.random_range(lo.max(3)..=hi.max(lo.max(3))))
}

fn chaos(seed: u64, nodes: impl FnOnce(&mut StdRng) -> usize) -> ClusterReport {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_c4a0);
    let n = nodes(&mut rng);
    let faulty = rng.random_bool(0.6);
    let net = NetConfig {
        latency_us: (20, rng.random_range(100..=3_000)),
        bandwidth: rng.random_range(100..=2_000),
        loss: if faulty {
            rng.random_range(0.0..0.05)
        } else {
            0.0
        },
        duplicate: if faulty {
            rng.random_range(0.0..0.02)
        } else {
            0.0
        },
    };
    let nthreads = rng.random_range(1..=4);
    let mut sim = Sim::new(seed, n, nthreads, net);
    // Some nodes offer GPUs; some tasks need one or two.
    let gpu_nodes = if rng.random_bool(0.5) {
        rng.random_range(1..=n.min(4))
    } else {
        0
    };
    for _ in 0..gpu_nodes {
        let i = rng.random_range(0..n);
        let node = &mut sim.nodes[i];
        node.gpus = rng.random_range(1..=2);
        node.core.set_resources(gpu_amounts(node.gpus));
    }
    let most_gpus = sim.nodes.iter().map(|n| n.gpus).max().unwrap_or(0);
    let graphs = rng.random_range(1..=6);
    let fail_rate = if rng.random_bool(0.3) { 0.02 } else { 0.0 };
    for g in 0..graphs {
        let shape = SHAPES[rng.random_range(0..SHAPES.len())];
        let size = rng.random_range(1..=250);
        let mut plan = make_graph(
            &mut rng,
            shape,
            size,
            &format!("g{g}"),
            (50, 50_000),
            fail_rate,
            true,
        );
        // Some tasks are restricted to one or two nodes, hard or loose; some need GPUs.
        for t in &mut plan.tasks {
            if most_gpus > 0 && rng.random_bool(0.1) {
                // Satisfiable: some node has that many (a GPU task is not also pinned).
                t.gpus = rng.random_range(1..=most_gpus);
                continue;
            }
            if rng.random_bool(0.05) {
                let k = rng.random_range(1..=2);
                let nodes = (0..k).map(|_| rng.random_range(0..n)).collect();
                t.placement = Some((nodes, rng.random_bool(0.5)));
            }
        }
        let entry = rng.random_range(0..n);
        let at = rng.random_range(0..200_000);
        sim.add_graph(plan, entry, at);
    }
    // Some runs lose nodes mid-run, owners (entry nodes) and their backups included: not
    // one a task is pinned to, nor one with GPUs (tasks needing them would wait forever).
    if n >= 3 && rng.random_bool(0.4) {
        let mut spared = vec![false; n];
        for g in &sim.graphs {
            for t in &g.plan.tasks {
                if let Some((nodes, _)) = &t.placement {
                    for &p in nodes {
                        spared[p] = true;
                    }
                }
            }
        }
        for (i, node) in sim.nodes.iter().enumerate() {
            if node.gpus > 0 {
                spared[i] = true;
            }
        }
        let victims: Vec<usize> = (0..n).filter(|&i| !spared[i]).collect();
        let k = rng.random_range(1..=3usize).min(victims.len());
        for v in 0..k {
            let at = rng.random_range(0..400_000);
            sim.at(at, Event::Crash(victims[v * victims.len() / k.max(1)]));
        }
    }
    // Some runs restart nodes one after another (a rolling restart): a new node joins, then
    // an old one is told to stop and hands its work over. Drawn apart, so that the rest of
    // a seed's run stays what it was.
    let mut rr = StdRng::seed_from_u64(seed ^ 0x1eaf_1eaf);
    if n >= 3 && rr.random_bool(0.3) {
        let spared: Vec<bool> = (0..n)
            .map(|i| {
                sim.nodes[i].gpus > 0
                    || sim.graphs.iter().any(|g| {
                        g.plan.tasks.iter().any(|t| {
                            t.placement
                                .as_ref()
                                .is_some_and(|(nodes, _)| nodes.contains(&i))
                        })
                    })
            })
            .collect();
        let mut victims: Vec<usize> = (0..n).filter(|&i| !spared[i]).collect();
        let k = rr.random_range(1..=4usize).min(victims.len());
        let mut at = rr.random_range(0..300_000);
        for _ in 0..k {
            let v = victims.remove(rr.random_range(0..victims.len()));
            sim.at(at, Event::Join);
            sim.at(at + 50_000, Event::Leave(v));
            at += rr.random_range(100_000..400_000);
        }
    }
    // Some runs split the network: a minority of nodes is cut off from the rest for a while
    // (each side taking the other for dead if it lasts), then the partition heals.
    let mut pr = StdRng::seed_from_u64(seed ^ 0x5917_c0de);
    if n >= 3 && pr.random_bool(0.25) {
        let k = pr.random_range(1..=(n - 1) / 2);
        let mut all: Vec<usize> = (0..n).collect();
        let group: Vec<usize> = (0..k)
            .map(|_| all.remove(pr.random_range(0..all.len())))
            .collect();
        let at = pr.random_range(0..400_000);
        sim.at(at, Event::Partition(group));
        sim.at(at + pr.random_range(300_000..8_000_000), Event::Heal);
    }
    // Some runs put nodes under memory pressure for a while: each pauses (one task at a
    // time, only when none runs; takes no work, gets none placed on it, its queue is for
    // thieves), then resumes. Drawn apart too.
    let mut mp = StdRng::seed_from_u64(seed ^ 0x9a05_ed00);
    if mp.random_bool(0.3) {
        let k = mp.random_range(1..=(n / 2).max(1));
        for _ in 0..k {
            let v = mp.random_range(0..n);
            let at = mp.random_range(0..400_000);
            let high = SIM_MEMORY_LIMIT / 10 * 9;
            sim.at(at, Event::Memory(v, high));
            sim.at(at + mp.random_range(50_000..3_000_000), Event::Memory(v, 0));
        }
    }
    // Client sessions come and go: each graph's client closes, drops its connection or
    // stays once its graph is done, some publish first; many tiny sessions come and go
    // beside them. Drawn apart too.
    let mut ch = StdRng::seed_from_u64(seed ^ 0x5e55_1075);
    sim.session_grace_us = ch.random_range(1..=30) * 1_000_000;
    for node in &mut sim.nodes {
        node.core.set_session_grace(sim.session_grace_us / 1000);
    }
    let tiny = ch.random_range(0..=30);
    for t in 0..tiny {
        let shape = if ch.random_bool(0.5) {
            Shape::Map
        } else {
            Shape::Chains
        };
        let size = ch.random_range(1..=3);
        let plan = make_graph(
            &mut ch,
            shape,
            size,
            &format!("t{t}"),
            (50, 2_000),
            0.0,
            false,
        );
        let entry = ch.random_range(0..n);
        let at = ch.random_range(0..2_000_000);
        sim.add_graph(plan, entry, at);
    }
    for g in &mut sim.graphs {
        g.ending = match ch.random_range(0..10) {
            0..=4 => Ending::Close,
            5..=7 => Ending::Drop,
            _ => Ending::Stay,
        };
        g.publish = ch.random_bool(0.15);
    }
    sim.run(600_000_000);
    sim.check_sessions();
    // Faults cost seconds (detection, retries backing off to 32 s, a partition of up to
    // 8 s); a run far longer than any seen stalled somewhere until a record expired.
    if sim.report.makespan_us > STALL_US {
        sim.report.violations.push(format!(
            "the graphs took {:.1} virtual s: a stall (more than {} s)",
            sim.report.makespan_us as f64 / 1e6,
            STALL_US / 1_000_000
        ));
    }
    if sim.report.lost == 0 && sim.report.violations.is_empty() {
        sim.check_empty();
    }
    sim.report.trace_hash = sim.trace;
    sim.report.clone()
}

/// One row of the stealing-efficiency table.
#[derive(Clone, Debug)]
pub struct Efficiency {
    /// Processors (single-thread nodes).
    pub p: usize,
    /// The DAG shape.
    pub shape: Shape,
    /// Makespan / max(T1/P, T∞) for rdask.
    pub ratio: f64,
    /// The same for the oracle central scheduler.
    pub oracle: f64,
    /// Tasks moved by stealing.
    pub stolen: u64,
    /// Invariant violations.
    pub violations: Vec<String>,
}

/// The `steal-efficiency` scenario for one seed: a graph of `shape` submitted to node 0 of
/// `p` single-thread nodes.
pub fn steal_efficiency(seed: u64, p: usize, shape: Shape) -> Efficiency {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xeff1_c1e7);
    let n = (p * 16).max(64);
    let plan = make_graph(&mut rng, shape, n, "s", (1_000, 100_000), 0.0, false);
    let costs: Vec<u64> = plan.tasks.iter().map(|t| t.cost_us).collect();
    let t1: u64 = costs.iter().sum();
    let mut path = vec![0u64; plan.tasks.len()];
    for (i, t) in plan.tasks.iter().enumerate() {
        path[i] = t.cost_us + t.inputs.iter().map(|&d| path[d]).max().unwrap_or(0);
    }
    let tinf = path.iter().copied().max().unwrap_or(0);
    let bound = (t1 as f64 / p as f64).max(tinf as f64);
    let oracle = oracle_makespan(&plan, p) as f64 / bound;
    let mut sim = Sim::new(seed, p, 1, NetConfig::lan());
    sim.add_graph(plan, 0, 0);
    sim.run(3_600_000_000);
    Efficiency {
        p,
        shape,
        ratio: sim.report.makespan_us as f64 / bound,
        oracle,
        stolen: sim.report.stats.stolen,
        violations: sim.report.violations,
    }
}

/// Greedy list scheduling by a central scheduler that knows everything and moves data for
/// free: whenever a processor is free it takes the ready task that came first.
fn oracle_makespan(plan: &PlanGraph, p: usize) -> u64 {
    let n = plan.tasks.len();
    let mut waiting: Vec<usize> = plan.tasks.iter().map(|t| t.inputs.len()).collect();
    let mut dependents = vec![Vec::new(); n];
    for (i, t) in plan.tasks.iter().enumerate() {
        for &d in &t.inputs {
            dependents[d].push(i);
        }
    }
    let mut ready: BinaryHeap<Reverse<usize>> =
        (0..n).filter(|&i| waiting[i] == 0).map(Reverse).collect();
    let mut running: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    let mut now = 0;
    let mut free = p;
    loop {
        while free > 0 {
            let Some(Reverse(i)) = ready.pop() else { break };
            free -= 1;
            running.push(Reverse((now + plan.tasks[i].cost_us, i)));
        }
        let Some(Reverse((t, i))) = running.pop() else {
            break;
        };
        now = t;
        free += 1;
        for &d in &dependents[i] {
            waiting[d] -= 1;
            if waiting[d] == 0 {
                ready.push(Reverse(d));
            }
        }
    }
    now
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdask_gossip::LoadSummary;

    #[test]
    fn the_reference_is_deterministic_and_errors_name_their_cause() {
        let mut rng = StdRng::seed_from_u64(3);
        let g = make_graph(&mut rng, Shape::Random, 100, "x", (1, 10), 0.1, false);
        assert_eq!(reference(&g), reference(&g));
        assert!(reference(&g).iter().any(|r| r.is_err()));
    }

    #[test]
    fn the_oracle_reaches_the_bound_on_a_wide_map_of_equal_tasks() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut g = make_graph(&mut rng, Shape::Map, 64, "m", (1, 10), 0.0, false);
        for t in &mut g.tasks {
            t.cost_us = 10;
        }
        assert_eq!(oracle_makespan(&g, 8), 80);
    }

    #[test]
    fn load_is_zero_for_an_idle_cluster() {
        let sim = Sim::new(1, 3, 1, NetConfig::lan());
        assert!(
            sim.nodes
                .iter()
                .all(|n| n.core.load() == LoadSummary::default())
        );
    }
}
