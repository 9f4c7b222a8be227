//! The pure state machine of one node.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use bytes::Bytes;
use rdask_gossip::LoadSummary;
use rdask_graph::{
    Arg, Graph, GraphError, GraphId, Key, Registry, TaskEntry, TaskError, TaskErrorKind,
    TaskFailure,
};
use rustc_hash::{FxHashMap, FxHasher};

use crate::protocol::{ClientResponse, GraphSubmission, KeyResult, SubmitOutcome};

/// How many graph ids a node remembers to recognise resubmissions.
const REMEMBERED_GRAPHS: usize = 65_536;
/// Queued work per thread the core aims to keep handed to the pool, in nanoseconds of
/// estimated run time: enough to keep threads busy between two turns of the node's loop,
/// little enough that priorities still matter and that later work stealing finds work.
const TARGET_QUEUED_NS: f64 = 1_000_000.0;

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

enum ArgSlot {
    Value(Bytes),
    Dep(TaskId),
}

enum State {
    /// Some dependency is not finished.
    Waiting,
    /// All dependencies are in memory; in the ready queue.
    Ready,
    /// Handed to the pool.
    Running,
    /// Finished with a value.
    Memory(Bytes),
    /// Finished with an error (its own or a dependency's).
    Erred(Arc<TaskError>),
}

impl State {
    fn finished(&self) -> bool {
        matches!(self, State::Memory(_) | State::Erred(_))
    }
}

struct Task {
    key: Key,
    entry: &'static TaskEntry,
    args: Vec<ArgSlot>,
    /// Distinct dependencies.
    deps: Vec<TaskId>,
    dependents: Vec<TaskId>,
    /// Dependencies not yet in memory.
    waiting_on: u32,
    /// Dependents not yet finished: the value must stay while this is above zero.
    pending_dependents: u32,
    /// Futures the client holds for this key.
    client_refs: u32,
    /// Gather requests waiting for this task.
    waiters: Vec<RequestId>,
    /// Nobody needs the value any more: drop it when the running function returns.
    cancelled: bool,
    /// Position in the node's run order: lower runs first.
    priority: u64,
    state: State,
}

struct Slot {
    generation: u32,
    task: Option<Task>,
}

struct Waiter {
    ids: Vec<Option<TaskId>>,
    remaining: u32,
}

type Outcome = Result<Bytes, Arc<TaskError>>;

/// The state machine of one node: graphs in, tasks to run out, results stored and served.
///
/// Driving it (what [`crate::NodeActor`] does, and what a simulator does):
///
/// 1. feed one input: [`NodeCore::handle_submit`], [`NodeCore::handle_gather`],
///    [`NodeCore::handle_release`], [`NodeCore::handle_task_done`] or
///    [`NodeCore::handle_wait_expired`];
/// 2. drain the outputs in this order: [`NodeCore::take_replies`] (answers to requests),
///    [`NodeCore::take_jobs`] (tasks to start; this is also when ready tasks are chosen),
///    [`NodeCore::take_timers`] (wake-ups to schedule: call `handle_wait_expired` when one
///    fires).
///
/// Nothing in it reads a clock, draws randomness or does I/O; iteration orders are
/// deterministic, so the same inputs give the same outputs.
pub struct NodeCore {
    node: Arc<str>,
    registry: &'static Registry,
    nthreads: u32,
    slots: Vec<Slot>,
    free: Vec<u32>,
    index: FxHashMap<Key, TaskId>,
    /// Ready tasks by (priority, slot, generation); stale entries are skipped when popped.
    ready: BinaryHeap<Reverse<(u64, u32, u32)>>,
    graphs: FxHashMap<GraphId, u64>,
    graph_order: VecDeque<GraphId>,
    waiters: FxHashMap<RequestId, Waiter>,
    next_priority: u64,
    in_flight: u32,
    avg_ns: Option<f64>,
    unfinished: u64,
    stored: u64,
    memory_used: u64,
    replies: Vec<(RequestId, ClientResponse)>,
    jobs: Vec<Job>,
    timers: Vec<(RequestId, u32)>,
}

impl NodeCore {
    /// A core for the node named `node`, running functions of `registry` on `nthreads`
    /// threads.
    pub fn new(node: &str, registry: &'static Registry, nthreads: u32) -> NodeCore {
        NodeCore {
            node: Arc::from(node),
            registry,
            nthreads: nthreads.max(1),
            slots: Vec::new(),
            free: Vec::new(),
            index: FxHashMap::default(),
            ready: BinaryHeap::new(),
            graphs: FxHashMap::default(),
            graph_order: VecDeque::new(),
            waiters: FxHashMap::default(),
            next_priority: 0,
            in_flight: 0,
            avg_ns: None,
            unfinished: 0,
            stored: 0,
            memory_used: 0,
            replies: Vec::new(),
            jobs: Vec::new(),
            timers: Vec::new(),
        }
    }

    /// The node's current load.
    pub fn load(&self) -> LoadSummary {
        LoadSummary {
            queued: self.unfinished - u64::from(self.in_flight),
            running: u64::from(self.in_flight),
            stored: self.stored,
            memory_used: self.memory_used,
        }
    }

    /// Number of keys the node tracks (unfinished tasks and stored results).
    pub fn tracked_keys(&self) -> usize {
        self.index.len()
    }

    // ----- inputs -------------------------------------------------------------------

    /// Graphs from a client, in order. Replies `Submitted` with one outcome per graph.
    pub fn handle_submit(&mut self, request: RequestId, graphs: Vec<GraphSubmission>) {
        let outcomes = graphs
            .into_iter()
            .map(|g| match self.submit(g) {
                Ok(()) => SubmitOutcome::Accepted,
                Err(e) => SubmitOutcome::Rejected(e),
            })
            .collect();
        self.replies
            .push((request, ClientResponse::Submitted(outcomes)));
    }

    /// The client wants the results of `keys`: replied when all are finished, at once when
    /// `wait_ms` is 0, otherwise after a timer of `wait_ms` (see [`NodeCore::take_timers`]).
    pub fn handle_gather(&mut self, request: RequestId, keys: Vec<Key>, wait_ms: u32) {
        let ids: Vec<Option<TaskId>> = keys.iter().map(|k| self.index.get(k).copied()).collect();
        let mut remaining = 0;
        for id in ids.iter().flatten() {
            if let Some(t) = self.task(*id)
                && !t.state.finished()
            {
                remaining += 1;
            }
        }
        if remaining == 0 || wait_ms == 0 {
            let results = self.results(&ids);
            self.replies
                .push((request, ClientResponse::Results(results)));
            return;
        }
        for id in ids.iter().flatten() {
            if let Some(t) = self.task_mut(*id)
                && !t.state.finished()
            {
                t.waiters.push(request);
            }
        }
        self.waiters.insert(request, Waiter { ids, remaining });
        self.timers.push((request, wait_ms));
    }

    /// A gather's timer fired: reply with what is finished. Stale timers are ignored.
    pub fn handle_wait_expired(&mut self, request: RequestId) {
        if let Some(w) = self.waiters.remove(&request) {
            let results = self.results(&w.ids);
            self.replies
                .push((request, ClientResponse::Results(results)));
        }
    }

    /// The client dropped one future per key. Values nobody needs any more are dropped;
    /// tasks nobody needs any more are cancelled. Replies `Released`.
    pub fn handle_release(&mut self, request: RequestId, keys: Vec<Key>) {
        for k in keys {
            if let Some(&id) = self.index.get(&k)
                && let Some(t) = self.task_mut(id)
                && t.client_refs > 0
            {
                t.client_refs -= 1;
                self.maybe_forget(id);
            }
        }
        self.replies.push((request, ClientResponse::Released));
    }

    /// The pool finished a task.
    pub fn handle_task_done(&mut self, done: TaskDone) {
        let Some(task) = self.task_mut(done.task) else {
            return;
        };
        if !matches!(task.state, State::Running) {
            return;
        }
        self.in_flight -= 1;
        let x = done.elapsed_ns as f64;
        self.avg_ns = Some(match self.avg_ns {
            None => x,
            Some(a) => a * 0.9 + x * 0.1,
        });
        let task = self.task_mut(done.task).expect("checked above");
        if task.cancelled {
            self.remove(done.task);
            return;
        }
        let outcome = match done.result {
            Ok(v) => Ok(Bytes::from(v)),
            Err(f) => {
                let key = task.key.clone();
                Err(Arc::new(self.task_error(key, f)))
            }
        };
        self.finish(done.task, outcome);
    }

    // ----- outputs ------------------------------------------------------------------

    /// Replies to send, in the order they were produced.
    pub fn take_replies(&mut self) -> Vec<(RequestId, ClientResponse)> {
        std::mem::take(&mut self.replies)
    }

    /// Tasks to start now, highest priority first.
    pub fn take_jobs(&mut self) -> Vec<Job> {
        self.dispatch();
        std::mem::take(&mut self.jobs)
    }

    /// Timers to set: call [`NodeCore::handle_wait_expired`] with the request after the
    /// given number of milliseconds.
    pub fn take_timers(&mut self) -> Vec<(RequestId, u32)> {
        std::mem::take(&mut self.timers)
    }

    // ----- internals ----------------------------------------------------------------

    fn task(&self, id: TaskId) -> Option<&Task> {
        let slot = self.slots.get(id.idx as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.task.as_ref()
    }

    fn task_mut(&mut self, id: TaskId) -> Option<&mut Task> {
        let slot = self.slots.get_mut(id.idx as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.task.as_mut()
    }

    fn submit(&mut self, g: GraphSubmission) -> Result<(), GraphError> {
        let fingerprint = {
            let mut h = FxHasher::default();
            for t in &g.tasks {
                t.key.hash(&mut h);
            }
            h.finish()
        };
        if let Some(&old) = self.graphs.get(&g.id) {
            return if old == fingerprint {
                Ok(())
            } else {
                Err(GraphError::GraphIdReused {
                    graph: g.id.to_string(),
                })
            };
        }
        // A key that already exists is the same task: keep the existing one (as Dask does).
        let tasks = g
            .tasks
            .into_iter()
            .filter(|t| !self.index.contains_key(&t.key))
            .collect();
        let registry = self.registry;
        let valid =
            Graph::new(tasks).validate(|k| self.index.contains_key(k), |f| registry.contains(f))?;
        let mut failed = Vec::new();
        for spec in valid.into_tasks() {
            let entry = registry
                .get(&spec.function)
                .expect("validated against the registry");
            if let Some(f) = self.insert(spec.key, entry, spec.args) {
                failed.push(f);
            }
        }
        for k in &g.keep {
            if let Some(&id) = self.index.get(k)
                && let Some(t) = self.task_mut(id)
            {
                t.client_refs += 1;
            }
        }
        // Tasks whose inputs had already failed fail now, once the client's references are
        // counted (so their errors are kept for the client).
        for (id, e) in failed {
            self.finish(id, Err(e));
        }
        self.graphs.insert(g.id, fingerprint);
        self.graph_order.push_back(g.id);
        if self.graph_order.len() > REMEMBERED_GRAPHS
            && let Some(old) = self.graph_order.pop_front()
        {
            self.graphs.remove(&old);
        }
        Ok(())
    }

    /// Adds a task; returns it with the error of a failed input, if one had failed.
    fn insert(
        &mut self,
        key: Key,
        entry: &'static TaskEntry,
        spec_args: Vec<Arg>,
    ) -> Option<(TaskId, Arc<TaskError>)> {
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

        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    task: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let id = TaskId {
            idx,
            generation: self.slots[idx as usize].generation,
        };
        let mut waiting_on = 0;
        let mut failed = None;
        for &d in &deps {
            let dt = self.task_mut(d).expect("dependency exists");
            dt.dependents.push(id);
            dt.pending_dependents += 1;
            match &dt.state {
                State::Memory(_) => {}
                State::Erred(e) => failed = Some(e.clone()),
                _ => waiting_on += 1,
            }
        }
        let priority = self.next_priority;
        self.next_priority += 1;
        self.index.insert(key.clone(), id);
        self.slots[idx as usize].task = Some(Task {
            key,
            entry,
            args,
            deps,
            dependents: Vec::new(),
            waiting_on,
            pending_dependents: 0,
            client_refs: 0,
            waiters: Vec::new(),
            cancelled: false,
            priority,
            state: State::Waiting,
        });
        self.unfinished += 1;
        if let Some(e) = failed {
            return Some((id, e));
        }
        if waiting_on == 0 {
            self.make_ready(id);
        }
        None
    }

    fn make_ready(&mut self, id: TaskId) {
        if let Some(t) = self.task_mut(id) {
            t.state = State::Ready;
            let priority = t.priority;
            self.ready.push(Reverse((priority, id.idx, id.generation)));
        }
    }

    /// Marks a task finished and propagates: dependents become ready or, on error, fail
    /// with the same cause; waiters progress; values nobody needs are dropped.
    fn finish(&mut self, root: TaskId, outcome: Outcome) {
        let mut work = vec![(root, outcome)];
        while let Some((id, outcome)) = work.pop() {
            let Some(task) = self.task_mut(id) else {
                continue;
            };
            if task.state.finished() {
                continue;
            }
            let dependents = std::mem::take(&mut task.dependents);
            let waiters = std::mem::take(&mut task.waiters);
            // A finished task no longer needs its inputs' ids.
            let deps = std::mem::take(&mut task.deps);
            let error = match outcome {
                Ok(bytes) => {
                    let len = bytes.len() as u64;
                    task.state = State::Memory(bytes);
                    self.stored += 1;
                    self.memory_used += len;
                    None
                }
                Err(e) => {
                    task.state = State::Erred(e.clone());
                    Some(e)
                }
            };
            match error {
                None => {
                    for &d in &dependents {
                        if let Some(dt) = self.task_mut(d)
                            && matches!(dt.state, State::Waiting)
                        {
                            dt.waiting_on -= 1;
                            if dt.waiting_on == 0 {
                                self.make_ready(d);
                            }
                        }
                    }
                }
                Some(e) => {
                    for &d in &dependents {
                        work.push((d, Err(e.clone())));
                    }
                }
            }
            self.unfinished -= 1;
            for w in waiters {
                self.waiter_progress(w);
            }
            for d in deps {
                if let Some(dt) = self.task_mut(d) {
                    dt.pending_dependents -= 1;
                    self.maybe_forget(d);
                }
            }
            self.maybe_forget(id);
        }
    }

    /// Drops a task nobody needs: a finished one's value is freed, an unfinished one is
    /// cancelled (and so are inputs only it needed).
    fn maybe_forget(&mut self, root: TaskId) {
        let mut work = vec![root];
        while let Some(id) = work.pop() {
            let Some(t) = self.task(id) else { continue };
            if t.client_refs > 0 || t.pending_dependents > 0 || t.cancelled {
                continue;
            }
            match t.state {
                State::Memory(_) | State::Erred(_) => self.remove(id),
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
                State::Waiting | State::Ready => {
                    let deps = t.deps.clone();
                    self.unfinished -= 1;
                    self.remove(id);
                    self.release_inputs(&deps, &mut work);
                }
            }
        }
    }

    fn release_inputs(&mut self, deps: &[TaskId], work: &mut Vec<TaskId>) {
        for &d in deps {
            if let Some(dt) = self.task_mut(d) {
                dt.pending_dependents -= 1;
                work.push(d);
            }
        }
    }

    fn remove(&mut self, id: TaskId) {
        let slot = &mut self.slots[id.idx as usize];
        let Some(task) = slot.task.take() else { return };
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(id.idx);
        if let State::Memory(b) = &task.state {
            self.stored -= 1;
            self.memory_used -= b.len() as u64;
        }
        if self.index.get(&task.key) == Some(&id) {
            self.index.remove(&task.key);
        }
        for w in task.waiters {
            self.waiter_progress(w);
        }
    }

    fn waiter_progress(&mut self, request: RequestId) {
        let Some(w) = self.waiters.get_mut(&request) else {
            return;
        };
        w.remaining -= 1;
        if w.remaining == 0 {
            let w = self.waiters.remove(&request).expect("present");
            let results = self.results(&w.ids);
            self.replies
                .push((request, ClientResponse::Results(results)));
        }
    }

    fn results(&self, ids: &[Option<TaskId>]) -> Vec<KeyResult> {
        ids.iter()
            .map(|id| match id.and_then(|id| self.task(id)) {
                None => KeyResult::Unknown,
                Some(t) => match &t.state {
                    State::Memory(b) => KeyResult::Value(b.clone()),
                    State::Erred(e) => KeyResult::Error((**e).clone()),
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

    /// How many tasks the pool should hold at once: the threads, plus enough queued work
    /// (by the measured average run time) to keep them busy between turns of the loop.
    fn capacity(&self) -> u32 {
        let extra = match self.avg_ns {
            None => 1,
            Some(avg) => (TARGET_QUEUED_NS / avg.max(1_000.0)).min(255.0) as u32,
        };
        self.nthreads * (1 + extra)
    }

    fn dispatch(&mut self) {
        let capacity = self.capacity();
        while self.in_flight < capacity {
            let Some(Reverse((_, idx, generation))) = self.ready.pop() else {
                break;
            };
            let id = TaskId { idx, generation };
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
                        Some(State::Memory(b)) => b.clone(),
                        _ => unreachable!("a ready task's inputs are in memory"),
                    },
                })
                .collect();
            let job = Job {
                task: id,
                key: task.key.clone(),
                entry: task.entry,
                args,
            };
            self.task_mut(id).expect("exists").state = State::Running;
            self.in_flight += 1;
            self.jobs.push(job);
        }
    }
}

#[cfg(test)]
mod tests;
