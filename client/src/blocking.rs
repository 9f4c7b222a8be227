//! The client for programs that are not async: the same surface as [`crate::Client`],
//! every call returning when its answer is in (as `reqwest::blocking` does).
//!
//! ```
//! #[rdask::task]
//! fn square(x: i64) -> i64 {
//!     x * x
//! }
//!
//! # fn main() -> rdask::Result<()> {
//! use rdask::blocking::Client;
//! let client = Client::local()?;
//! let squares = client.map(square, 0..4);
//! let total: i64 = client.gather(&squares)?.into_iter().sum();
//! assert_eq!(total, 14);
//! let f = client.submit(square, (&squares[3],)); // futures as arguments, as in async
//! assert_eq!(f.result()?, 81);
//! # Ok(())
//! # }
//! ```
//!
//! Do not call it from inside an async runtime: a blocking call there stalls the runtime's
//! thread. Use [`crate::Client`] in async code.

use std::time::Duration;

use futures::executor::block_on;
use rdask_graph::{Arg, Key, TaskFn};
use serde::de::DeserializeOwned;

use crate::future::ArgContext;
use crate::{Args, Delayed, FutureStatus, IntoArg, NodeStatus, Result, ReturnWhen, TaskOptions};

/// A blocking client: see [the module](self).
#[derive(Clone)]
pub struct Client {
    inner: crate::Client,
}

/// The handle of a task's value, for blocking code: see [`crate::Future`].
pub struct Future<T> {
    pub(crate) inner: crate::Future<T>,
}

impl<T> Clone for Future<T> {
    fn clone(&self) -> Self {
        Future {
            inner: self.inner.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Future<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.inner, f)
    }
}

fn wrap<T>(futures: Vec<crate::Future<T>>) -> Vec<Future<T>> {
    futures.into_iter().map(|inner| Future { inner }).collect()
}

fn unwrap<T>(futures: &[Future<T>]) -> Vec<crate::Future<T>> {
    futures.iter().map(|f| f.inner.clone()).collect()
}

impl Client {
    /// Starts an in-process cluster on this machine's cores ([`crate::Client::local`]).
    pub fn local() -> Result<Client> {
        crate::Client::local().map(Client::from)
    }

    /// Starts an in-process cluster with `nthreads` task threads.
    pub fn local_with_threads(nthreads: usize) -> Result<Client> {
        crate::Client::local_with_threads(nthreads).map(Client::from)
    }

    /// Connects to a running node ([`crate::Client::connect`]).
    pub fn connect(address: &str) -> Result<Client> {
        crate::Client::connect(address).map(Client::from)
    }

    /// Connects to a node of a cluster that has a secret
    /// ([`crate::Client::connect_with_secret`]).
    pub fn connect_with_secret(address: &str, secret: &str) -> Result<Client> {
        crate::Client::connect_with_secret(address, secret).map(Client::from)
    }

    /// The default client ([`crate::Client::current`]).
    pub fn current() -> Result<Client> {
        crate::Client::current().map(Client::from)
    }

    /// The async client this one wraps (they share the connection).
    pub fn asynchronous(&self) -> &crate::Client {
        &self.inner
    }

    /// See [`crate::Client::set_as_default`].
    pub fn set_as_default(&self, yes: bool) {
        self.inner.set_as_default(yes)
    }

    /// See [`crate::Client::submit`].
    pub fn submit<F, P, O, A: Args<P>>(&self, task: TaskFn<F, P, O>, args: A) -> Future<O> {
        Future {
            inner: self.inner.submit(task, args),
        }
    }

    /// See [`crate::Client::submit_with`].
    pub fn submit_with<F, P, O, A: Args<P>>(
        &self,
        task: TaskFn<F, P, O>,
        args: A,
        options: &TaskOptions,
    ) -> Future<O> {
        Future {
            inner: self.inner.submit_with(task, args, options),
        }
    }

    /// See [`crate::Client::scatter`].
    pub fn scatter<T: serde::Serialize>(&self, value: &T) -> Future<T> {
        Future {
            inner: self.inner.scatter(value),
        }
    }

    /// See [`crate::Client::scatter_many`].
    pub fn scatter_many<'a, T: serde::Serialize + 'a>(
        &self,
        values: impl IntoIterator<Item = &'a T>,
    ) -> Vec<Future<T>> {
        wrap(self.inner.scatter_many(values))
    }

    /// See [`crate::Client::map`].
    pub fn map<F, P, O, I>(&self, task: TaskFn<F, (P,), O>, items: I) -> Vec<Future<O>>
    where
        I: IntoIterator,
        I::Item: IntoArg<P>,
    {
        wrap(self.inner.map(task, items))
    }

    /// See [`crate::Client::map_with`].
    pub fn map_with<F, P, O, I>(
        &self,
        task: TaskFn<F, (P,), O>,
        items: I,
        options: &TaskOptions,
    ) -> Vec<Future<O>>
    where
        I: IntoIterator,
        I::Item: IntoArg<P>,
    {
        wrap(self.inner.map_with(task, items, options))
    }

    /// See [`crate::Client::map_args`].
    pub fn map_args<F, P, O, I>(&self, task: TaskFn<F, P, O>, items: I) -> Vec<Future<O>>
    where
        I: IntoIterator,
        I::Item: Args<P>,
    {
        wrap(self.inner.map_args(task, items))
    }

    /// See [`crate::Client::map_args_with`].
    pub fn map_args_with<F, P, O, I>(
        &self,
        task: TaskFn<F, P, O>,
        items: I,
        options: &TaskOptions,
    ) -> Vec<Future<O>>
    where
        I: IntoIterator,
        I::Item: Args<P>,
    {
        wrap(self.inner.map_args_with(task, items, options))
    }

    /// The values of `futures`, in order; the first error is returned.
    pub fn gather<T: DeserializeOwned>(&self, futures: &[Future<T>]) -> Result<Vec<T>> {
        block_on(self.inner.gather(&unwrap(futures)))
    }

    /// Every future's outcome, in order (see [`crate::Client::gather_results`]).
    pub fn gather_results<T: DeserializeOwned>(
        &self,
        futures: &[Future<T>],
    ) -> Result<Vec<Result<T>>> {
        block_on(self.inner.gather_results(&unwrap(futures)))
    }

    /// See [`crate::Client::wait`].
    pub fn wait<T>(&self, futures: &[Future<T>], when: ReturnWhen) -> Result<Waited<T>> {
        let w = block_on(self.inner.wait(&unwrap(futures), when))?;
        Ok(Waited {
            done: wrap(w.done),
            not_done: wrap(w.not_done),
        })
    }

    /// The futures as they complete, as an iterator that can grow while in use (see
    /// [`crate::Client::as_completed`]).
    pub fn as_completed<T>(&self, futures: impl IntoIterator<Item = Future<T>>) -> AsCompleted<T> {
        AsCompleted {
            inner: self
                .inner
                .as_completed(futures.into_iter().map(|f| f.inner)),
        }
    }

    /// See [`crate::Client::progress`].
    pub fn progress<T>(&self, futures: &[Future<T>]) -> Result<crate::ProgressSummary> {
        block_on(self.inner.progress(&unwrap(futures)))
    }

    /// See [`crate::Client::nodes`].
    pub fn nodes(&self) -> Result<Vec<NodeStatus>> {
        block_on(self.inner.nodes())
    }

    /// See [`crate::Client::who_has`].
    pub fn who_has<T>(&self, futures: &[Future<T>]) -> Result<Vec<Vec<String>>> {
        block_on(self.inner.who_has(&unwrap(futures)))
    }

    /// See [`crate::Client::dashboard_link`].
    pub fn dashboard_link(&self) -> Option<String> {
        self.inner.dashboard_link()
    }

    /// See [`crate::Client::replicate`].
    pub fn replicate<T>(&self, futures: &[Future<T>], n: usize) -> Result<()> {
        block_on(self.inner.replicate(&unwrap(futures), n))
    }

    /// See [`crate::Client::rebalance`].
    pub fn rebalance<T>(&self, futures: &[Future<T>]) -> Result<usize> {
        block_on(self.inner.rebalance(&unwrap(futures)))
    }

    /// See [`crate::Client::scatter_broadcast`].
    pub fn scatter_broadcast<T: serde::Serialize>(&self, value: &T) -> Result<Future<T>> {
        Ok(Future {
            inner: block_on(self.inner.scatter_broadcast(value))?,
        })
    }

    /// See [`crate::Client::publish_dataset`].
    pub fn publish_dataset<T>(&self, name: &str, futures: &[Future<T>]) -> Result<()> {
        block_on(self.inner.publish_dataset(name, &unwrap(futures)))
    }

    /// See [`crate::Client::get_dataset`].
    pub fn get_dataset<T>(&self, name: &str) -> Result<Vec<Future<T>>> {
        Ok(wrap(block_on(self.inner.get_dataset(name))?))
    }

    /// See [`crate::Client::list_datasets`].
    pub fn list_datasets(&self) -> Result<Vec<String>> {
        block_on(self.inner.list_datasets())
    }

    /// See [`crate::Client::unpublish_dataset`].
    pub fn unpublish_dataset(&self, name: &str) -> Result<()> {
        block_on(self.inner.unpublish_dataset(name))
    }

    /// See [`crate::Client::explain`].
    pub fn explain<T>(&self, future: &Future<T>) -> Result<String> {
        block_on(self.inner.explain(&future.inner))
    }

    /// See [`crate::Client::node_id`].
    pub fn node_id(&self) -> String {
        self.inner.node_id()
    }

    /// See [`crate::Client::address`].
    pub fn address(&self) -> &str {
        self.inner.address()
    }

    /// See [`crate::Client::explain_keys`].
    pub fn explain_keys(&self, keys: &[Key]) -> Result<Vec<String>> {
        block_on(self.inner.explain_keys(keys))
    }

    /// See [`crate::Client::session_id`].
    pub fn session_id(&self) -> u64 {
        self.inner.session_id()
    }

    /// See [`crate::Client::session_owner`].
    pub fn session_owner(&self, session: u64) -> Result<Option<String>> {
        block_on(self.inner.session_owner(session))
    }

    /// See [`crate::Client::nthreads`].
    pub fn nthreads(&self) -> u32 {
        self.inner.nthreads()
    }

    /// See [`crate::Client::reattached`].
    pub fn reattached(&self) -> u64 {
        self.inner.reattached()
    }

    /// Starts computing a delayed value and returns the future of its value (see
    /// [`crate::Client::persist`]).
    ///
    /// ```
    /// # #[rdask::task] fn inc(x: i64) -> i64 { x + 1 }
    /// # #[rdask::task] fn add(a: i64, b: i64) -> i64 { a + b }
    /// # fn main() -> rdask::Result<()> {
    /// use rdask::delayed;
    /// let client = rdask::blocking::Client::local()?;
    /// let a = delayed(inc, (1,));
    /// let total = delayed(add, (&a, &delayed(inc, (&a,))));
    /// assert_eq!(client.compute(&total)?, 2 + 3);
    /// assert_eq!(client.persist(&total).result()?, 5);
    /// assert_eq!(client.compute_all(&[a, total])?, vec![2, 5]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn persist<T>(&self, value: &Delayed<T>) -> Future<T> {
        Future {
            inner: self.inner.persist(value),
        }
    }

    /// See [`crate::Client::persist_all`].
    pub fn persist_all<T>(&self, values: &[Delayed<T>]) -> Vec<Future<T>> {
        wrap(self.inner.persist_all(values))
    }

    /// Computes a delayed value and brings it back (see [`crate::Client::compute`]).
    pub fn compute<T: DeserializeOwned>(&self, value: &Delayed<T>) -> Result<T> {
        block_on(self.inner.compute(value))
    }

    /// See [`crate::Client::compute_all`].
    pub fn compute_all<T: DeserializeOwned>(&self, values: &[Delayed<T>]) -> Result<Vec<T>> {
        block_on(self.inner.compute_all(values))
    }

    /// See [`crate::Client::close`].
    pub fn close(self) {
        self.inner.close()
    }
}

impl From<crate::Client> for Client {
    fn from(inner: crate::Client) -> Client {
        Client { inner }
    }
}

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.inner, f)
    }
}

impl<T> Future<T> {
    /// The key of the task.
    pub fn key(&self) -> &Key {
        self.inner.key()
    }

    /// See [`crate::Future::status`].
    pub fn status(&self) -> Result<FutureStatus> {
        block_on(self.inner.status())
    }

    /// See [`crate::Future::done`].
    pub fn done(&self) -> Result<bool> {
        block_on(self.inner.done())
    }

    /// See [`crate::Future::cancel`].
    pub fn cancel(&self) {
        self.inner.cancel()
    }

    /// See [`crate::Future::retry`].
    pub fn retry(&self) -> Result<bool> {
        block_on(self.inner.retry())
    }

    /// See [`crate::Future::is_cancelled`].
    pub fn is_cancelled(&self) -> bool {
        self.inner.is_cancelled()
    }

    /// The async future this one wraps.
    pub fn asynchronous(&self) -> &crate::Future<T> {
        &self.inner
    }
}

impl<T: DeserializeOwned> Future<T> {
    /// Waits for the value.
    pub fn result(&self) -> Result<T> {
        block_on(self.inner.result())
    }

    /// Waits for the value at most `timeout` ([`crate::Error::Timeout`] after that).
    pub fn result_timeout(&self, timeout: Duration) -> Result<T>
    where
        T: Send + 'static,
    {
        block_on(self.inner.result_timeout(timeout))
    }
}

impl<T> IntoArg<T> for &Future<T> {
    fn into_arg(self, cx: &ArgContext<'_>) -> Result<Arg> {
        (&self.inner).into_arg(cx)
    }
}

impl<T> IntoArg<T> for Future<T> {
    fn into_arg(self, cx: &ArgContext<'_>) -> Result<Arg> {
        (&self.inner).into_arg(cx)
    }
}

/// What [`Client::wait`] found.
#[derive(Debug)]
pub struct Waited<T> {
    /// Finished, failed, cancelled or lost.
    pub done: Vec<Future<T>>,
    /// Still pending.
    pub not_done: Vec<Future<T>>,
}

/// Futures handed out as they complete: see [`Client::as_completed`].
pub struct AsCompleted<T> {
    inner: crate::AsCompleted<T>,
}

impl<T> AsCompleted<T> {
    /// Adds a future to those waited for.
    pub fn add(&mut self, future: Future<T>) {
        self.inner.add(future.inner)
    }

    /// Futures not handed out yet.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether every future was handed out.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

impl<T: DeserializeOwned> AsCompleted<T> {
    /// The next future to complete with its result (see
    /// [`crate::AsCompleted::next_with_result`]).
    pub fn next_with_result(&mut self) -> Option<(Future<T>, Result<T>)> {
        block_on(self.inner.next_with_result()).map(|(inner, r)| (Future { inner }, r))
    }
}

impl<T> Iterator for AsCompleted<T> {
    type Item = Result<Future<T>>;

    fn next(&mut self) -> Option<Self::Item> {
        block_on(self.inner.next()).map(|r| r.map(|inner| Future { inner }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// The names of the public methods in the `impl` blocks of `ty` (`impl Client {`,
    /// `impl<T> Future<T> {`, …) of a source text.
    fn methods(source: &str, ty: &str) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        let mut inside = false;
        for line in source.lines() {
            if line.starts_with("impl") && line.ends_with('{') {
                let head = line.trim_end_matches('{').trim();
                // `impl Client`, `impl<T> Future<T>`, `impl<T: DeserializeOwned> Future<T>`:
                // the type is the last word, not a trait's.
                inside = !head.contains(" for ")
                    && head
                        .rsplit(' ')
                        .next()
                        .is_some_and(|t| t == ty || t.starts_with(&format!("{ty}<")));
            } else if line == "}" {
                inside = false;
            } else if inside
                && let Some(rest) = line
                    .strip_prefix("    pub fn ")
                    .or_else(|| line.strip_prefix("    pub async fn "))
            {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                names.insert(name);
            }
        }
        names
    }

    #[test]
    fn the_blocking_client_has_every_method_of_the_async_one() {
        let sources = [
            include_str!("client.rs"),
            include_str!("wait.rs"),
            include_str!("copies.rs"),
            include_str!("datasets.rs"),
            include_str!("delayed.rs"),
            include_str!("future.rs"),
        ];
        let blocking = include_str!("blocking.rs");
        for ty in ["Client", "Future", "AsCompleted"] {
            let wanted: BTreeSet<String> = sources.iter().flat_map(|s| methods(s, ty)).collect();
            assert!(wanted.len() >= 3, "no methods of {ty} found: {wanted:?}");
            let mut have = methods(blocking, ty);
            if blocking.contains(&format!("impl<T> Iterator for {ty}<T> {{")) {
                have.insert("next".to_string()); // `for f in as_completed`
            }
            let missing: Vec<&String> = wanted.difference(&have).collect();
            assert!(
                missing.is_empty(),
                "rdask::blocking::{ty} lacks {missing:?} of rdask::{ty}"
            );
        }
    }
}
