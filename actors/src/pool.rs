use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use crate::core::{Job, TaskDone};

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
    pub fn start(
        name: &str,
        nthreads: usize,
        notify: Arc<dyn Fn() + Send + Sync>,
    ) -> std::io::Result<(TaskPool, Completions)> {
        let (job_tx, job_rx) = crossbeam_channel::unbounded::<Job>();
        let (done_tx, done_rx) = crossbeam_channel::unbounded::<TaskDone>();
        let pending_wake = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::with_capacity(nthreads);
        for i in 0..nthreads.max(1) {
            let job_rx = job_rx.clone();
            let done_tx = done_tx.clone();
            let pending_wake = pending_wake.clone();
            let notify = notify.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || worker(job_rx, done_tx, pending_wake, notify))?,
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

fn worker(
    jobs: Receiver<Job>,
    done: Sender<TaskDone>,
    pending_wake: Arc<AtomicBool>,
    notify: Arc<dyn Fn() + Send + Sync>,
) {
    while let Some(job) = next_job(&jobs) {
        let start = Instant::now();
        let result = job.entry.call(&job.args);
        let elapsed_ns = start.elapsed().as_nanos() as u64;
        if let Err(e) = &result {
            tracing::debug!(key = %job.key, error = %e, "task failed");
        }
        if done
            .send(TaskDone {
                task: job.task,
                result,
                elapsed_ns,
            })
            .is_err()
        {
            return;
        }
        if !pending_wake.swap(true, Ordering::SeqCst) {
            notify();
        }
    }
}
