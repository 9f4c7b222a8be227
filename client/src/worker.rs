//! Tasks that submit tasks: a task function reaches its own cluster (Dask's
//! `worker_client`, `secede`).

use rdask_actors::NodeMsg;

use crate::{Client, Error, NodeStatus, Result, blocking};

/// A client of the cluster this task function runs on, for a task that submits more tasks
/// and waits for them (Dask's `worker_client`). Blocking, as task functions are plain
/// functions on the node's task threads.
///
/// The task gives its thread slot up first ([`secede`]): while it waits, the tasks it
/// submitted (and any others) run in its place, so a pool full of waiting parents cannot
/// deadlock. The client talks to the node the task runs on, in process; its graphs are that
/// node's to schedule, anywhere in the cluster. Dropping it releases what it submitted.
/// It is never the default client.
///
/// ```
/// #[rdask::task]
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// /// Submits one task per term and waits for them, from inside a task.
/// #[rdask::task]
/// fn sum_of_squares(n: u64) -> Result<u64, rdask::Error> {
///     let client = rdask::worker_client()?;
///     let terms = client.map(square, 1..=n);
///     Ok(client.gather(&terms)?.into_iter().sum())
/// }
///
/// # fn main() -> rdask::Result<()> {
/// // One thread: the parent gives its slot to its children while it waits.
/// let client = rdask::Client::local_with_threads(1)?;
/// assert_eq!(rdask::block_on(client.submit(sum_of_squares, (4,)).result())?, 30);
/// # Ok(())
/// # }
/// ```
///
/// Errors: [`crate::Error::NotInTask`] outside a task function running on a node.
pub fn worker_client() -> Result<blocking::Client> {
    let client = Client::of_running_task()?;
    secede();
    Ok(blocking::Client::from(client))
}

/// The task function running on this thread gives its thread slot up (Dask's `secede`):
/// call it before waiting on something that other tasks produce. A new thread takes the
/// slot at once; this task runs on to its end outside the node's thread count. Returns
/// whether the slot was given up now (`false` outside a task or when given up already).
/// [`worker_client`] calls it.
pub fn secede() -> bool {
    rdask_actors::secede()
}

/// The node this task function runs on (Dask's `get_worker()`): its id, `--name`,
/// addresses, threads and load, as `client.nodes()` lists it. The id, name or an address
/// can be given to [`crate::TaskOptions::workers`].
///
/// ```
/// #[rdask::task]
/// fn where_am_i() -> String {
///     rdask::get_worker().map(|n| n.member.id.0.to_string()).unwrap_or_default()
/// }
///
/// # fn main() -> rdask::Result<()> {
/// let client = rdask::Client::local()?;
/// let id = rdask::block_on(client.submit(where_am_i, ()).result())?;
/// assert_eq!(id, client.node_id());
/// # Ok(())
/// # }
/// ```
///
/// Errors: [`crate::Error::NotInTask`] outside a task function running on a node.
pub fn get_worker() -> Result<NodeStatus> {
    let node = rdask_actors::current_node().ok_or(Error::NotInTask)?;
    let (tx, rx) = ractor::concurrency::oneshot();
    node.send_message(NodeMsg::Status(tx.into()))
        .map_err(|_| Error::Closed)?;
    // A task thread is not a thread of the node's runtime: blocking here is safe.
    futures::executor::block_on(rx).map_err(|_| Error::Closed)
}
