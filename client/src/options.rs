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
    key: Option<String>,
    pure: bool,
    priority: i32,
    retries: u8,
}

impl TaskOptions {
    /// No restriction: the task runs where the cluster places it.
    pub fn new() -> TaskOptions {
        TaskOptions::default()
    }

    /// Runs the task only on these nodes: their ids, `--name`s or addresses (`host:port`,
    /// or a multiaddr with or without `/p2p/…`), as [`crate::Client::nodes`] shows them.
    /// While none of them is alive, the task waits (unless
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

    /// The key to store the result under, instead of a fresh one (Dask's `key=`). A key
    /// the cluster already knows is the same task: its result is shared, nothing runs
    /// again. With [`crate::Client::map_with`], task `i` gets `{key}-{i}`.
    pub fn key(mut self, key: impl Into<String>) -> TaskOptions {
        self.key = Some(key.into());
        self
    }

    /// Keys the task by a hash of its function and arguments (Dask's `pure=True`): the
    /// same call submitted again — by this client, or another client of the same entry
    /// node (the owner of both) — reuses the result held there instead of running again.
    /// Only for functions whose result depends on their arguments alone.
    pub fn pure(mut self, pure: bool) -> TaskOptions {
        self.pure = pure;
        self
    }

    /// Among tasks ready on a node, higher priorities run first (Dask's `priority=`;
    /// default 0, negative allowed). Tasks of equal priority run in submission order.
    pub fn priority(mut self, priority: i32) -> TaskOptions {
        self.priority = priority;
        self
    }

    /// Runs the function again, up to `retries` times, when it fails (returns `Err` or
    /// panics) before its error is final (Dask's `retries=`).
    pub fn retries(mut self, retries: u8) -> TaskOptions {
        self.retries = retries;
        self
    }

    /// Applies the options that travel with the task to its spec.
    pub(crate) fn apply(&self, spec: &mut rdask_graph::TaskSpec) {
        spec.placement = self.placement();
        spec.resources = self.resources.clone();
        spec.priority = self.priority;
        spec.retries = self.retries;
    }

    /// The key the options ask for, if any (`index`: the task's place in a map).
    pub(crate) fn key_for(&self, index: Option<usize>) -> Option<String> {
        self.key.as_ref().map(|k| match index {
            Some(i) => format!("{k}-{i}"),
            None => k.clone(),
        })
    }

    pub(crate) fn is_pure(&self) -> bool {
        self.pure
    }

    pub(crate) fn placement(&self) -> Option<Placement> {
        (!self.workers.is_empty()).then(|| Placement {
            nodes: self.workers.clone(),
            loose: self.allow_other_workers,
        })
    }
}
