use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use ractor::ActorRef;

use crate::core::{Job, TaskDone, TaskId};
use crate::protocol::TaskEvent;
use rdask_graph::Key;

/// Task-stream events kept per thread (the oldest go first).
const EVENTS_PER_THREAD: usize = 2_000;

/// A task that ran, as a thread records it (times relative to the pool's start).
struct RawEvent {
    key: Key,
    start_ns: u64,
    elapsed_ns: u64,
    ok: bool,
}

/// One thread's recent events. Only that thread writes; a reader takes the lock briefly.
type Ring = Arc<Mutex<VecDeque<RawEvent>>>;
use crate::shell::NodeMsg;

/// What every thread of one pool shares: enough to start another thread like it.
struct Shared {
    name: String,
    jobs: Receiver<Job>,
    done: Sender<TaskDone>,
    pending_wake: Arc<AtomicBool>,
    notify: Arc<dyn Fn() + Send + Sync>,
    /// The node the pool runs tasks for (none for a pool without a node actor).
    node: Option<ActorRef<NodeMsg>>,
    /// When the pool started, on both clocks: event times are kept relative to it.
    base: (Instant, u64),
    /// Each thread's recent events, by thread number.
    rings: Mutex<Vec<Ring>>,
    /// Nanoseconds task functions ran, in all.
    compute_ns: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// A new thread's ring and number.
    fn ring(&self) -> (u32, Ring) {
        let ring: Ring = Arc::new(Mutex::new(VecDeque::with_capacity(64)));
        let mut rings = self.rings.lock().expect("rings");
        rings.push(ring.clone());
        ((rings.len() - 1) as u32, ring)
    }
}

/// The task running on this thread, if it is a pool thread running one.
struct Current {
    shared: Arc<Shared>,
    task: TaskId,
    /// The task gave its slot up: a new thread took it, and this one ends with the task.
    seceded: bool,
}

thread_local! {
    static CURRENT: RefCell<Option<Current>> = const { RefCell::new(None) };
}

/// The node actor of the task function running on this thread (`None` outside a task of
/// a node's pool): a task reaches its own cluster through it (the client crate's
/// `worker_client`).
pub fn current_node() -> Option<ActorRef<NodeMsg>> {
    CURRENT.with(|c| c.borrow().as_ref().and_then(|c| c.shared.node.clone()))
}

/// The task function running on this thread gives its slot up (Dask's `secede`): it is
/// about to wait for other tasks, and must not keep them from running. A new pool thread
/// takes the slot at once and the node counts one task less as running; this thread ends
/// when the task returns. Returns whether the slot was given up now (`false` outside a
/// task, or when it was given up already).
pub fn secede() -> bool {
    CURRENT.with(|c| {
        let mut c = c.borrow_mut();
        let Some(cur) = c.as_mut() else { return false };
        if cur.seceded {
            return false;
        }
        let shared = cur.shared.clone();
        let name = format!("{}-seceded", shared.name);
        let spawned = std::thread::Builder::new().name(name).spawn({
            let shared = shared.clone();
            move || worker(shared)
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not start a thread to take a seceding task's slot");
            return false;
        }
        cur.seceded = true;
        if let Some(node) = &shared.node {
            let _ = node.send_message(NodeMsg::Seceded(cur.task));
        }
        true
    })
}

/// A dedicated pool of OS threads that run task functions.
///
/// Task functions never run on the async runtime: a long or blocking task cannot stall the
/// node's message handling. Finished tasks are queued in one channel and the owner is
/// woken by `notify` only when that queue goes from empty-and-seen to non-empty, so a burst
/// of tiny tasks costs one wake-up, not one message per task.
pub struct TaskPool {
    jobs: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
}

/// The receiving side of a pool's completions.
pub struct Completions {
    done: Receiver<TaskDone>,
    pending_wake: Arc<AtomicBool>,
}

impl Completions {
    /// Takes every completion queued so far. Call this when woken; completions queued
    /// after this call wake the owner again.
    pub fn drain(&self) -> impl Iterator<Item = TaskDone> + '_ {
        self.pending_wake.store(false, Ordering::SeqCst);
        self.done.try_iter()
    }
}

impl TaskPool {
    /// Starts `nthreads` threads named `{name}-{i}`. `notify` wakes the owner, who then
    /// calls [`Completions::drain`].
    ///
    /// `node`: the node actor whose tasks it runs, told when a task secedes ([`secede`])
    /// and reachable by task functions ([`current_node`]).
    pub fn start(
        name: &str,
        nthreads: usize,
        notify: Arc<dyn Fn() + Send + Sync>,
        node: Option<ActorRef<NodeMsg>>,
    ) -> std::io::Result<(TaskPool, Completions)> {
        let (job_tx, job_rx) = crossbeam_channel::unbounded::<Job>();
        let (done_tx, done_rx) = crossbeam_channel::unbounded::<TaskDone>();
        let pending_wake = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            name: name.to_string(),
            jobs: job_rx,
            done: done_tx,
            pending_wake: pending_wake.clone(),
            notify,
            node,
            base: (Instant::now(), crate::gossip_shell::now_ms()),
            rings: Mutex::new(Vec::new()),
            compute_ns: std::sync::atomic::AtomicU64::new(0),
        });
        let mut threads = Vec::with_capacity(nthreads);
        for i in 0..nthreads.max(1) {
            let shared = shared.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || worker(shared))?,
            );
        }
        Ok((
            TaskPool {
                jobs: Some(job_tx),
                threads,
                shared,
            },
            Completions {
                done: done_rx,
                pending_wake,
            },
        ))
    }

    /// Queues jobs for the threads.
    pub fn run(&self, jobs: impl IntoIterator<Item = Job>) {
        if let Some(tx) = &self.jobs {
            for j in jobs {
                // Only fails when every thread is gone, i.e. during shutdown.
                let _ = tx.send(j);
            }
        }
    }

    /// The number of threads.
    pub fn nthreads(&self) -> usize {
        self.threads.len()
    }

    /// Microseconds task functions ran on this pool, in all.
    pub fn compute_us(&self) -> u64 {
        self.shared.compute_ns.load(Ordering::Relaxed) / 1_000
    }

    /// Tasks that ended after `since_ms` (ms since the Unix epoch), oldest first, at most
    /// the last few thousand per thread: the dashboard's task stream.
    pub fn events_since(&self, since_ms: u64) -> Vec<TaskEvent> {
        let base_ms = self.shared.base.1;
        let since_ns = since_ms.saturating_sub(base_ms).saturating_mul(1_000_000);
        let rings: Vec<Ring> = self.shared.rings.lock().expect("rings").clone();
        let mut out = Vec::new();
        for (thread, ring) in rings.iter().enumerate() {
            let ring = ring.lock().expect("ring");
            for e in ring.iter().filter(|e| e.start_ns + e.elapsed_ns > since_ns) {
                out.push(TaskEvent {
                    key: e.key.clone(),
                    thread: thread as u32,
                    start_ms: base_ms + e.start_ns / 1_000_000,
                    duration_us: e.elapsed_ns / 1_000,
                    ok: e.ok,
                });
            }
        }
        out.sort_by_key(|e| e.start_ms);
        out
    }
}

impl Drop for TaskPool {
    fn drop(&mut self) {
        // Closing the queue lets each thread exit after its current task; they are not
        // joined, so a long task cannot hold up shutdown.
        self.jobs.take();
    }
}

/// How long an idle task thread keeps looking for work before it sleeps. Waking a sleeping
/// thread costs tens of microseconds on virtual machines, more than most tiny tasks take;
/// a short look-out keeps chains of dependent tasks and bursts of small ones from paying it
/// at every step, and costs an idle node nothing once it passes.
const SPIN: std::time::Duration = std::time::Duration::from_micros(50);

fn next_job(jobs: &Receiver<Job>) -> Option<Job> {
    let start = Instant::now();
    loop {
        match jobs.try_recv() {
            Ok(job) => return Some(job),
            Err(crossbeam_channel::TryRecvError::Disconnected) => return None,
            Err(crossbeam_channel::TryRecvError::Empty) => {}
        }
        if start.elapsed() > SPIN {
            return jobs.recv().ok();
        }
        std::hint::spin_loop();
    }
}

fn worker(shared: Arc<Shared>) {
    let (_, ring) = shared.ring();
    while let Some(job) = next_job(&shared.jobs) {
        let start = Instant::now();
        CURRENT.with(|c| {
            *c.borrow_mut() = Some(Current {
                shared: shared.clone(),
                task: job.task,
                seceded: false,
            })
        });
        let result = job.entry.call(&job.args);
        let seceded = CURRENT.with(|c| c.borrow_mut().take().is_some_and(|c| c.seceded));
        let elapsed_ns = start.elapsed().as_nanos() as u64;
        shared.compute_ns.fetch_add(elapsed_ns, Ordering::Relaxed);
        {
            let mut ring = ring.lock().expect("ring");
            if ring.len() == EVENTS_PER_THREAD {
                ring.pop_front();
            }
            ring.push_back(RawEvent {
                key: job.key.clone(),
                start_ns: start.duration_since(shared.base.0).as_nanos() as u64,
                elapsed_ns,
                ok: result.is_ok(),
            });
        }
        if let Err(e) = &result {
            tracing::debug!(key = %job.key, error = %e, "task failed");
        }
        if shared
            .done
            .send(TaskDone {
                task: job.task,
                result,
                elapsed_ns,
            })
            .is_err()
        {
            return;
        }
        if !shared.pending_wake.swap(true, Ordering::SeqCst) {
            (shared.notify)();
        }
        if seceded {
            // Another thread took this one's slot.
            return;
        }
    }
}
