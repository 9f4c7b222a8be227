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
    resources: Vec<(Arc<str>, u64)>,
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

    /// Abstract resources the task holds while it runs (Dask's `resources=`), like
    /// `[("GPU", 1)]`: it runs only on nodes started with at least that much of each
    /// (`rdask-node --resources GPU=2`), never more such tasks at once than the node's
    /// amounts allow, and waits while no live node has them.
    pub fn resources<I, S>(mut self, amounts: I) -> TaskOptions
    where
        I: IntoIterator<Item = (S, u64)>,
        S: AsRef<str>,
    {
        self.resources = amounts
            .into_iter()
            .map(|(n, a)| (Arc::from(n.as_ref()), a))
            .collect();
        self
    }

    pub(crate) fn resource_list(&self) -> Vec<(Arc<str>, u64)> {
        self.resources.clone()
    }

    pub(crate) fn placement(&self) -> Option<Placement> {
        (!self.workers.is_empty()).then(|| Placement {
            nodes: self.workers.clone(),
            loose: self.allow_other_workers,
        })
    }
}
