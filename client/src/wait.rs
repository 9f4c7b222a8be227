//! Waiting on many futures: [`Client::wait`] and [`AsCompleted`] (Dask's `wait` and
//! `as_completed`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::client::ClientInner;
use crate::future::FutureShared;
use crate::{Client, Future, FutureStatus, Result};

/// The pause after a round that brought nothing new (a submission not yet accepted); it
/// doubles up to [`MAX_PAUSE`] while that lasts. A round that waits returns when a future
/// completes, not after a pause.
const FIRST_PAUSE: Duration = Duration::from_millis(1);
const MAX_PAUSE: Duration = Duration::from_millis(100);

/// How long a node holds a wait before it answers anyway (the client then asks again): a
/// bound on how late a cancellation made by another client is seen.
const AWAIT: Duration = Duration::from_secs(2);

/// When [`Client::wait`] returns (Dask's `return_when`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReturnWhen {
    /// Once every future is done (finished, failed, cancelled or lost).
    AllCompleted,
    /// Once any future is done.
    FirstCompleted,
    /// Once any future failed, or every future is done.
    FirstException,
}

/// What [`Client::wait`] found: the futures that are done and those that are not, each in
/// the order given.
#[derive(Debug)]
pub struct Waited<T> {
    /// Finished, failed, cancelled or lost.
    pub done: Vec<Future<T>>,
    /// Still pending.
    pub not_done: Vec<Future<T>>,
}

/// Waits until `enough` holds for the states of `futures` (on the client's runtime);
/// returns the states. The nodes answer when a future completes (every one when `all`),
/// so a completion is seen as soon as its answer arrives.
async fn poll_until(
    inner: &Arc<ClientInner>,
    futures: Vec<Arc<FutureShared>>,
    all: bool,
    enough: fn(&[FutureStatus]) -> bool,
) -> Result<Vec<FutureStatus>> {
    let me = inner.clone();
    inner
        .spawn(async move {
            let items: Vec<&Arc<FutureShared>> = futures.iter().collect();
            let mut statuses = me.statuses(&items).await?;
            let mut pause = FIRST_PAUSE;
            loop {
                if enough(&statuses) {
                    return Ok(statuses);
                }
                let pending: Vec<usize> = (0..statuses.len())
                    .filter(|&i| !statuses[i].is_done())
                    .collect();
                let got = me.await_statuses(&items, &pending, all, AWAIT).await?;
                let mut progress = false;
                for (&i, s) in pending.iter().zip(got) {
                    progress |= s.is_done();
                    statuses[i] = s;
                }
                if progress {
                    pause = FIRST_PAUSE;
                } else {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_PAUSE);
                }
            }
        })
        .await?
}

impl Client {
    /// Waits until the futures are done as `when` says, and returns which are done and
    /// which are not (Dask's `wait`). Nothing is fetched: await the futures (or
    /// [`Client::gather`]) for the values.
    ///
    /// ```
    /// # #[rdask::task] fn inc(x: i64) -> i64 { x + 1 }
    /// # fn main() -> rdask::Result<()> {
    /// use rdask::ReturnWhen;
    /// let client = rdask::Client::local()?;
    /// let futures = client.map(inc, 0..8);
    /// let waited = rdask::block_on(client.wait(&futures, ReturnWhen::AllCompleted))?;
    /// assert_eq!((waited.done.len(), waited.not_done.len()), (8, 0));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn wait<T>(&self, futures: &[Future<T>], when: ReturnWhen) -> Result<Waited<T>> {
        let enough: fn(&[FutureStatus]) -> bool = match when {
            ReturnWhen::AllCompleted => |s| s.iter().all(|s| s.is_done()),
            ReturnWhen::FirstCompleted => |s| s.is_empty() || s.iter().any(|s| s.is_done()),
            ReturnWhen::FirstException => {
                |s| s.iter().all(|s| s.is_done()) || s.contains(&FutureStatus::Error)
            }
        };
        let all = when == ReturnWhen::AllCompleted;
        let shared = futures.iter().map(|f| f.shared.clone()).collect();
        let statuses = poll_until(self.inner(), shared, all, enough).await?;
        let mut waited = Waited {
            done: Vec::new(),
            not_done: Vec::new(),
        };
        for (f, s) in futures.iter().zip(statuses) {
            if s.is_done() {
                waited.done.push(f.clone());
            } else {
                waited.not_done.push(f.clone());
            }
        }
        Ok(waited)
    }

    /// The futures in the order they complete (Dask's `as_completed`); more can be added
    /// while iterating.
    ///
    /// ```
    /// # #[rdask::task] fn inc(x: i64) -> i64 { x + 1 }
    /// # fn main() -> rdask::Result<()> {
    /// let client = rdask::Client::local()?;
    /// let mut done = client.as_completed(client.map(inc, 0..4));
    /// let mut total = 0;
    /// rdask::block_on(async {
    ///     while let Some(f) = done.next().await {
    ///         let x = f?.result().await?;
    ///         if x == 1 {
    ///             done.add(client.submit(inc, (100,))); // grows while in use
    ///         }
    ///         total += x;
    ///     }
    ///     Ok::<_, rdask::Error>(())
    /// })?;
    /// assert_eq!(total, 1 + 2 + 3 + 4 + 101);
    /// # Ok(())
    /// # }
    /// ```
    pub fn as_completed<T>(&self, futures: impl IntoIterator<Item = Future<T>>) -> AsCompleted<T> {
        AsCompleted {
            inner: self.inner().clone(),
            pending: futures.into_iter().collect(),
            ready: VecDeque::new(),
        }
    }
}

/// Futures handed out as they complete: see [`Client::as_completed`].
pub struct AsCompleted<T> {
    inner: Arc<ClientInner>,
    pending: Vec<Future<T>>,
    ready: VecDeque<Future<T>>,
}

impl<T> AsCompleted<T> {
    /// Adds a future to those waited for.
    pub fn add(&mut self, future: Future<T>) {
        self.pending.push(future);
    }

    /// Futures not handed out yet.
    pub fn len(&self) -> usize {
        self.pending.len() + self.ready.len()
    }

    /// Whether every future was handed out.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next future to complete (finished, failed, cancelled or lost); `None` once every
    /// future was handed out. Futures that complete together come out in the order they
    /// were added.
    pub async fn next(&mut self) -> Option<Result<Future<T>>> {
        if let Some(f) = self.ready.pop_front() {
            return Some(Ok(f));
        }
        if self.pending.is_empty() {
            return None;
        }
        let shared = self.pending.iter().map(|f| f.shared.clone()).collect();
        let statuses = match poll_until(&self.inner, shared, false, |s| {
            s.iter().any(|s| s.is_done())
        })
        .await
        {
            Ok(s) => s,
            Err(e) => return Some(Err(e)),
        };
        let mut still = Vec::new();
        for (f, s) in std::mem::take(&mut self.pending).into_iter().zip(statuses) {
            if s.is_done() {
                self.ready.push_back(f);
            } else {
                still.push(f);
            }
        }
        self.pending = still;
        self.ready.pop_front().map(Ok)
    }
}

impl<T: DeserializeOwned> AsCompleted<T> {
    /// The next future to complete with its result (Dask's `with_results=True`).
    pub async fn next_with_result(&mut self) -> Option<(Future<T>, Result<T>)> {
        match self.next().await? {
            Ok(f) => {
                let r = f.result().await;
                Some((f, r))
            }
            Err(e) => {
                // The cluster could not be asked: hand out a pending future with the error.
                let f = self.pending.pop()?;
                Some((f, Err(e)))
            }
        }
    }
}

/// How often [`Client::progress`] redraws while nothing completes all the futures.
const PROGRESS_TICK: Duration = Duration::from_millis(100);

/// What [`Client::progress`] saw once every future was done.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProgressSummary {
    /// Futures with a value.
    pub finished: usize,
    /// Futures whose task (or an input's) failed.
    pub errors: usize,
    /// Futures cancelled or lost.
    pub other: usize,
}

impl Client {
    /// Shows a progress bar per task prefix (`inc`, `add`, …) on the terminal until every
    /// future is done (Dask's `progress`), and returns what they ended as. Nothing is drawn
    /// when standard error is not a terminal.
    pub async fn progress<T>(&self, futures: &[Future<T>]) -> Result<ProgressSummary> {
        use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
        let shared: Vec<Arc<FutureShared>> = futures.iter().map(|f| f.shared.clone()).collect();
        let me = self.inner().clone();
        me.clone()
            .spawn(async move {
                let bars = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
                let style =
                    ProgressStyle::with_template("{prefix:>16} [{bar:40}] {pos}/{len} {msg}")
                        .expect("a valid template")
                        .progress_chars("=> ");
                // One bar per prefix, in order of first appearance.
                let mut prefixes: Vec<String> = Vec::new();
                let mut of: Vec<usize> = Vec::with_capacity(shared.len());
                for f in &shared {
                    let p = f.key.prefix().to_string();
                    let i = match prefixes.iter().position(|q| *q == p) {
                        Some(i) => i,
                        None => {
                            prefixes.push(p);
                            prefixes.len() - 1
                        }
                    };
                    of.push(i);
                }
                let mut totals = vec![0u64; prefixes.len()];
                for &i in &of {
                    totals[i] += 1;
                }
                let shown: Vec<ProgressBar> = prefixes
                    .iter()
                    .zip(&totals)
                    .map(|(p, &n)| {
                        let bar = bars.add(ProgressBar::new(n));
                        bar.set_style(style.clone());
                        bar.set_prefix(p.clone());
                        bar
                    })
                    .collect();
                loop {
                    let items: Vec<&Arc<FutureShared>> = shared.iter().collect();
                    let statuses = me.statuses(&items).await?;
                    let mut done = vec![0u64; prefixes.len()];
                    let mut failed = vec![0u64; prefixes.len()];
                    let mut summary = ProgressSummary::default();
                    for (&i, s) in of.iter().zip(&statuses) {
                        match s {
                            FutureStatus::Pending => continue,
                            FutureStatus::Finished => summary.finished += 1,
                            FutureStatus::Error => {
                                summary.errors += 1;
                                failed[i] += 1;
                            }
                            FutureStatus::Cancelled | FutureStatus::Lost => summary.other += 1,
                        }
                        done[i] += 1;
                    }
                    for ((bar, &d), &e) in shown.iter().zip(&done).zip(&failed) {
                        bar.set_position(d);
                        if e > 0 {
                            bar.set_message(format!("{e} failed"));
                        }
                    }
                    if statuses.iter().all(|s| s.is_done()) {
                        for bar in &shown {
                            bar.finish();
                        }
                        return Ok(summary);
                    }
                    // Answered when the last one is done, or after a tick (to redraw).
                    let pending: Vec<usize> = (0..statuses.len())
                        .filter(|&i| !statuses[i].is_done())
                        .collect();
                    let started = std::time::Instant::now();
                    let got = me
                        .await_statuses(&items, &pending, true, PROGRESS_TICK)
                        .await?;
                    if !got.iter().all(|s| s.is_done()) {
                        // Held for a tick, or answered at once (a submission still on its
                        // way): redraw no more often than once a tick.
                        tokio::time::sleep(PROGRESS_TICK.saturating_sub(started.elapsed())).await;
                    }
                }
            })
            .await?
    }
}
