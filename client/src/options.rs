//! Options of one submission.

use std::sync::Arc;

use rdask_graph::Placement;

/// How a task submitted with [`crate::Client::submit_with`] runs.
///
/// ```
/// # #[rdask::task]
/// # fn inc(x: i64) -> i64 { x + 1 }
/// # fn main() -> rdask::Result<()> {
/// let client = rdask::Client::local()?;
/// let here = client.node_id().to_string();
/// let options = rdask::TaskOptions::new().workers([here]);
/// let f = client.submit_with(inc, (1,), &options);
/// assert_eq!(rdask::block_on(f.result())?, 2);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskOptions {
    workers: Vec<Arc<str>>,
    allow_other_workers: bool,
}

impl TaskOptions {
    /// No restriction: the task runs where the cluster places it.
    pub fn new() -> TaskOptions {
        TaskOptions::default()
    }

    /// Runs the task only on these nodes (their ids, as [`crate::Client::nodes`] shows
    /// them). While none of them is alive, the task waits (unless
    /// [`TaskOptions::allow_other_workers`]); work stealing never moves it elsewhere.
    pub fn workers<I, S>(mut self, nodes: I) -> TaskOptions
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.workers = nodes.into_iter().map(|n| Arc::from(n.as_ref())).collect();
        self
    }

    /// Makes [`TaskOptions::workers`] a preference: the task runs elsewhere when none of
    /// them is alive, and may be stolen by any node.
    pub fn allow_other_workers(mut self, allow: bool) -> TaskOptions {
        self.allow_other_workers = allow;
        self
    }

    pub(crate) fn placement(&self) -> Option<Placement> {
        (!self.workers.is_empty()).then(|| Placement {
            nodes: self.workers.clone(),
            loose: self.allow_other_workers,
        })
    }
}
