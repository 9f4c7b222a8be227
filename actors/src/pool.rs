use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use ractor::ActorRef;

use crate::core::{Job, TaskDone, TaskId};
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
