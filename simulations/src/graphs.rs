use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rdask_actors::protocol::{ClientResponse, GraphSubmission, KeyResult, SubmitOutcome};
use rdask_actors::{Job, NodeCore, RequestId, TaskDone};
use rdask_graph::registry::{decode_arg, encode_output};
use rdask_graph::{
    Arg, GraphId, Key, Registry, TaskEntry, TaskErrorKind, TaskFailure, TaskSpec, value,
};

fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn leaf(args: &[Bytes]) -> Result<Vec<u8>, TaskFailure> {
    encode_output(&mix(decode_arg::<u64>(args, 0)?))
}
fn combine2(args: &[Bytes]) -> Result<Vec<u8>, TaskFailure> {
    let a: u64 = decode_arg(args, 0)?;
    let b: u64 = decode_arg(args, 1)?;
    encode_output(&mix(a ^ b.rotate_left(17)))
}
fn combine3(args: &[Bytes]) -> Result<Vec<u8>, TaskFailure> {
    let a: u64 = decode_arg(args, 0)?;
    let b: u64 = decode_arg(args, 1)?;
    let c: u64 = decode_arg(args, 2)?;
    encode_output(&mix(a ^ b.rotate_left(17) ^ c.rotate_left(41)))
}
fn fail(args: &[Bytes]) -> Result<Vec<u8>, TaskFailure> {
    let x: u64 = decode_arg(args, 0)?;
    Err(TaskFailure::Failed(format!("injected failure {x}")))
}

static LEAF: TaskEntry = TaskEntry {
    name: "sim::leaf",
    arity: 1,
    invoke: leaf,
};
static COMBINE2: TaskEntry = TaskEntry {
    name: "sim::combine2",
    arity: 2,
    invoke: combine2,
};
static COMBINE3: TaskEntry = TaskEntry {
    name: "sim::combine3",
    arity: 3,
    invoke: combine3,
};
static FAIL: TaskEntry = TaskEntry {
    name: "sim::fail",
    arity: 1,
    invoke: fail,
};

fn registry() -> &'static Registry {
    static R: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();
    R.get_or_init(|| Registry::from_entries([&LEAF, &COMBINE2, &COMBINE3, &FAIL]))
}

/// The shape of one simulated run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Graphs submitted.
    pub graphs: usize,
    /// Most tasks per graph.
    pub max_tasks: usize,
    /// Task threads of the node.
    pub nthreads: u32,
    /// Chance that a task is an injected failure.
    pub fail_rate: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            graphs: 6,
            max_tasks: 60,
            nthreads: 2,
            fail_rate: 0.03,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// A hash of every event in order: equal for equal seeds.
    pub trace_hash: u64,
    /// Tasks that ran.
    pub tasks_run: u64,
    /// Keys that ended in an error.
    pub errors: u64,
    /// Gathers answered by their timer with some key pending.
    pub partial_gathers: u64,
    /// Tasks of accepted graphs that never ran: released before they started, or
    /// depending on a failed task.
    pub not_run: u64,
    /// Virtual time at the end, in microseconds.
    pub virtual_us: u64,
    /// Invariant violations (empty when the run is correct).
    pub violations: Vec<String>,
}

enum Event {
    Submit(usize),
    Finish(usize),
    Expire(RequestId),
    Release(usize),
    Gather(usize),
}

#[derive(Clone)]
enum Expected {
    Value(u64),
    Error(Key),
    /// Depends on several failing tasks: whichever fails first is the cause.
    ErrorAmong(BTreeSet<Key>),
}

struct Sim {
    rng: StdRng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    events: Vec<Option<Event>>,
    core: NodeCore,
    idle_threads: u32,
    pool_queue: VecDeque<Job>,
    running: Vec<Option<Job>>,
    trace: u64,
    report: SimReport,
    started: BTreeSet<Key>,
    finished: BTreeSet<Key>,
    deps: BTreeMap<Key, Vec<Key>>,
    expected: BTreeMap<Key, Expected>,
    graphs: Vec<GraphSubmission>,
    accepted: BTreeSet<usize>,
    gathers: BTreeMap<RequestId, (usize, Vec<Key>)>,
    next_request: u64,
}

impl Sim {
    fn at(&mut self, delay: u64, e: Event) {
        self.seq += 1;
        self.events.push(Some(e));
        self.queue
            .push(Reverse((self.now + delay, self.seq, self.events.len() - 1)));
    }

    fn note(&mut self, what: &str) {
        for b in what.bytes().chain(self.now.to_le_bytes()) {
            self.trace = mix(self.trace ^ u64::from(b));
        }
    }

    fn request(&mut self) -> RequestId {
        self.next_request += 1;
        RequestId(self.next_request)
    }

    /// Drains the core in the documented order: replies, jobs, timers.
    fn drain(&mut self) {
        for (id, resp) in self.core.take_replies() {
            self.note(&format!("reply {}", id.0));
            if let ClientResponse::Results(results) = resp {
                let Some((graph, keys)) = self.gathers.remove(&id) else {
                    self.report.violations.push(format!(
                        "a gather was answered twice or never asked: {id:?}"
                    ));
                    continue;
                };
                // As a client does: ask again while something is pending, release the
                // futures some time after every value is in.
                let delay = self.rng.random_range(0..40_000);
                if self.check_results(&keys, &results) {
                    self.at(delay, Event::Release(graph));
                } else {
                    self.at(delay / 8, Event::Gather(graph));
                }
            }
        }
        for job in self.core.take_jobs() {
            self.note(&format!("start {}", job.key));
            if !self.started.insert(job.key.clone()) {
                self.report
                    .violations
                    .push(format!("{} started twice", job.key));
            }
            for d in self.deps.get(&job.key).into_iter().flatten() {
                if !self.finished.contains(d) {
                    self.report
                        .violations
                        .push(format!("{} started before its input {d}", job.key));
                }
            }
            self.pool_queue.push_back(job);
        }
        for (id, ms) in self.core.take_timers() {
            self.at(u64::from(ms) * 1000, Event::Expire(id));
        }
        while self.idle_threads > 0 {
            let Some(job) = self.pool_queue.pop_front() else {
                break;
            };
            self.idle_threads -= 1;
            let duration = 1 + mix(self.trace ^ job.task_hash()) % 2_000;
            self.running.push(Some(job));
            let slot = self.running.len() - 1;
            self.at(duration, Event::Finish(slot));
        }
    }

    /// Checks a gather's answer; returns whether every key was finished.
    fn check_results(&mut self, keys: &[Key], results: &[KeyResult]) -> bool {
        let mut complete = true;
        for (k, r) in keys.iter().zip(results) {
            match (r, self.expected.get(k)) {
                (KeyResult::Value(b), Some(Expected::Value(v))) => {
                    if value::decode::<u64>(b).ok() != Some(*v) {
                        self.report
                            .violations
                            .push(format!("{k} has a wrong value"));
                    }
                }
                (KeyResult::Error(e), Some(Expected::Error(cause))) => {
                    if &e.key != cause || e.kind != TaskErrorKind::Failed {
                        self.report.violations.push(format!(
                            "{k} failed with cause {} ({:?}), expected {cause}",
                            e.key, e.kind
                        ));
                    }
                    self.report.errors += 1;
                }
                (KeyResult::Error(e), Some(Expected::ErrorAmong(causes))) => {
                    if !causes.contains(&e.key) {
                        self.report
                            .violations
                            .push(format!("{k} failed with an unrelated cause {}", e.key));
                    }
                    self.report.errors += 1;
                }
                (KeyResult::Pending, _) => {
                    self.report.partial_gathers += 1;
                    complete = false;
                }
                (other, _) => self
                    .report
                    .violations
                    .push(format!("{k}: unexpected {other:?}")),
            }
        }
        complete
    }
}

trait TaskHash {
    fn task_hash(&self) -> u64;
}
impl TaskHash for Job {
    fn task_hash(&self) -> u64 {
        self.key
            .as_str()
            .bytes()
            .fold(0, |h, b| mix(h ^ u64::from(b)))
    }
}

/// The graphs of a run, each task's inputs, and each task's expected result.
type Plan = (
    Vec<GraphSubmission>,
    BTreeMap<Key, Vec<Key>>,
    BTreeMap<Key, Expected>,
);

/// Builds the random graphs of a run and their expected results.
fn make_graphs(rng: &mut StdRng, cfg: &SimConfig) -> Plan {
    let mut graphs = Vec::new();
    let mut deps = BTreeMap::new();
    let mut expected: BTreeMap<Key, Expected> = BTreeMap::new();
    // Keys of earlier graphs that later graphs may use (kept by their graph).
    let mut shared: Vec<Key> = Vec::new();
    for g in 0..cfg.graphs {
        let n = rng.random_range(1..=cfg.max_tasks);
        let mut tasks = Vec::new();
        let mut local: Vec<Key> = Vec::new();
        for i in 0..n {
            let key = Key::from(format!("t{g}x{i}-{g}"));
            let pool_len = local.len() + shared.len().min(8);
            let arity = if pool_len == 0 {
                0
            } else {
                rng.random_range(0..=3usize.min(pool_len))
            };
            let mut inputs = Vec::new();
            for _ in 0..arity {
                let j = rng.random_range(0..pool_len);
                let k = if j < local.len() {
                    local[j].clone()
                } else {
                    shared[shared.len() - 1 - (j - local.len())].clone()
                };
                inputs.push(k);
            }
            let fails = rng.random_bool(cfg.fail_rate);
            let seed_arg: u64 = rng.random();
            let (function, args): (&str, Vec<Arg>) = if fails || arity == 0 {
                let f = if fails { "sim::fail" } else { "sim::leaf" };
                let mut args = vec![Arg::Value(value::encode(&seed_arg).unwrap())];
                // a failing task may have inputs too: give it one through combine? keep it a leaf
                if fails {
                    inputs.clear();
                }
                (f, std::mem::take(&mut args))
            } else {
                let f = ["sim::leaf", "sim::combine2", "sim::combine3"][arity - 1];
                let args = if arity == 1 {
                    // a one-input task: leaf of the input's value
                    vec![Arg::Key(inputs[0].clone())]
                } else {
                    inputs.iter().map(|k| Arg::Key(k.clone())).collect()
                };
                (f, args)
            };
            // expected result
            let exp = if function == "sim::fail" {
                Expected::Error(key.clone())
            } else if inputs.is_empty() {
                Expected::Value(mix(seed_arg))
            } else {
                let mut vals = Vec::new();
                let mut err = None;
                for k in &inputs {
                    match &expected[k] {
                        Expected::Value(v) => vals.push(*v),
                        Expected::Error(c) => {
                            err.get_or_insert(c.clone());
                        }
                        Expected::ErrorAmong(_) => unreachable!("set after all graphs are built"),
                    }
                }
                match err {
                    // the first failure to happen is not known in advance when two inputs
                    // fail; keep graphs where the cause is unique
                    Some(c) => Expected::Error(c),
                    None => Expected::Value(match vals.as_slice() {
                        [a] => mix(*a),
                        [a, b] => mix(a ^ b.rotate_left(17)),
                        [a, b, c] => mix(a ^ b.rotate_left(17) ^ c.rotate_left(41)),
                        _ => unreachable!(),
                    }),
                }
            };
            expected.insert(key.clone(), exp);
            deps.insert(key.clone(), inputs);
            tasks.push(TaskSpec::new(key.clone(), function, args));
            local.push(key);
        }
        // Submission order differs from dependency order.
        for i in (1..tasks.len()).rev() {
            let j = rng.random_range(0..=i);
            tasks.swap(i, j);
        }
        let keep: Vec<Key> = local.clone();
        shared.extend(local.iter().rev().take(4).cloned());
        graphs.push(GraphSubmission {
            id: GraphId(g as u128 + 1),
            tasks,
            keep,
        });
    }
    (graphs, deps, expected)
}

/// The failing tasks a key depends on (itself included). With two or more, whichever fails
/// first (a race the user cannot control) becomes the reported cause.
fn failure_causes(
    key: &Key,
    deps: &BTreeMap<Key, Vec<Key>>,
    expected: &BTreeMap<Key, Expected>,
) -> BTreeSet<Key> {
    let mut causes = BTreeSet::new();
    let mut stack = vec![key.clone()];
    let mut seen = BTreeSet::new();
    while let Some(k) = stack.pop() {
        if !seen.insert(k.clone()) {
            continue;
        }
        if let Some(Expected::Error(c)) = expected.get(&k)
            && c == &k
        {
            causes.insert(k.clone());
        }
        stack.extend(deps[&k].iter().cloned());
    }
    causes
}

/// Runs the single-node graphs scenario for one seed.
pub fn node_graphs(seed: u64, cfg: &SimConfig) -> SimReport {
    let mut rng = StdRng::seed_from_u64(seed);
    let (graphs, deps, mut expected) = make_graphs(&mut rng, cfg);
    let ambiguous: Vec<(Key, BTreeSet<Key>)> = expected
        .keys()
        .map(|k| (k.clone(), failure_causes(k, &deps, &expected)))
        .filter(|(_, causes)| causes.len() > 1)
        .collect();
    for (k, causes) in ambiguous {
        expected.insert(k, Expected::ErrorAmong(causes));
    }
    let mut sim = Sim {
        rng,
        now: 0,
        seq: 0,
        queue: BinaryHeap::new(),
        events: Vec::new(),
        core: NodeCore::new("sim-node", registry(), cfg.nthreads),
        idle_threads: cfg.nthreads,
        pool_queue: VecDeque::new(),
        running: Vec::new(),
        trace: seed,
        report: SimReport {
            seed,
            trace_hash: 0,
            tasks_run: 0,
            errors: 0,
            partial_gathers: 0,
            not_run: 0,
            virtual_us: 0,
            violations: Vec::new(),
        },
        started: BTreeSet::new(),
        finished: BTreeSet::new(),
        deps,
        expected,
        graphs,
        accepted: BTreeSet::new(),
        gathers: BTreeMap::new(),
        next_request: 0,
    };
    let mut t = 0;
    for g in 0..sim.graphs.len() {
        t += sim.rng.random_range(0..3_000);
        sim.at(t, Event::Submit(g));
        if sim.rng.random_bool(0.2) {
            // The client drops its futures early: unfinished work is cancelled.
            let release_at = t + sim.rng.random_range(0..5_000);
            sim.at(release_at, Event::Release(g));
        } else {
            let gather_at = t + sim.rng.random_range(0..20_000);
            sim.at(gather_at, Event::Gather(g));
        }
    }
    let mut steps = 0u64;
    while let Some(Reverse((time, _, idx))) = sim.queue.pop() {
        steps += 1;
        if steps > 10_000_000 {
            sim.report.violations.push("the run did not settle".into());
            break;
        }
        sim.now = time;
        let event = sim.events[idx].take().expect("each event fires once");
        match event {
            Event::Submit(g) => {
                let id = sim.request();
                sim.note(&format!("submit {g}"));
                let graph = sim.graphs[g].clone();
                sim.core.handle_submit(id, vec![graph]);
                for (_, r) in sim.core.take_replies() {
                    match r {
                        ClientResponse::Submitted(o) if o == [SubmitOutcome::Accepted] => {
                            sim.accepted.insert(g);
                        }
                        // Depends on a key of an earlier graph already released: refused.
                        ClientResponse::Submitted(o) => sim.note(&format!("rejected {o:?}")),
                        other => sim
                            .report
                            .violations
                            .push(format!("submit answered {other:?}")),
                    }
                }
            }
            Event::Gather(g) => {
                if sim.accepted.contains(&g) {
                    let keys: Vec<Key> = sim.graphs[g].keep.clone();
                    let id = sim.request();
                    let wait = sim.rng.random_range(0..20u32);
                    sim.gathers.insert(id, (g, keys.clone()));
                    sim.core.handle_gather(id, keys, wait);
                }
            }
            Event::Release(g) => {
                if sim.accepted.contains(&g) {
                    let id = sim.request();
                    sim.note(&format!("release {g}"));
                    sim.core.handle_release(id, sim.graphs[g].keep.clone());
                }
            }
            Event::Expire(id) => sim.core.handle_wait_expired(id),
            Event::Finish(slot) => {
                let job = sim.running[slot].take().expect("a job finishes once");
                sim.idle_threads += 1;
                sim.report.tasks_run += 1;
                sim.note(&format!("finish {}", job.key));
                sim.finished.insert(job.key.clone());
                let result = job.entry.call(&job.args);
                sim.core.handle_task_done(TaskDone {
                    task: job.task,
                    result,
                    elapsed_ns: 1_000,
                });
            }
        }
        sim.drain();
    }
    // Every graph was released: the node must hold nothing.
    if sim.core.tracked_keys() != 0 {
        sim.report.violations.push(format!(
            "{} keys left after every release",
            sim.core.tracked_keys()
        ));
    }
    let load = sim.core.load();
    if load.stored != 0 || load.memory_used != 0 || load.queued != 0 || load.running != 0 {
        sim.report
            .violations
            .push(format!("load left after every release: {load:?}"));
    }
    if !sim.gathers.is_empty() {
        sim.report
            .violations
            .push(format!("{} gathers never answered", sim.gathers.len()));
    }
    let total: usize = sim
        .accepted
        .iter()
        .map(|&g| sim.graphs[g].tasks.len())
        .sum();
    sim.report.not_run = total as u64 - sim.started.len() as u64;
    sim.report.virtual_us = sim.now;
    sim.report.trace_hash = sim.trace;
    sim.report
}
