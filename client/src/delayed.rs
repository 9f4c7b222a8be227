//! Lazy graphs (Dask's `delayed`): calls of task functions recorded, not run, until they
//! are computed or persisted — together, sharing their common parts.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::marker::PhantomData;
use std::sync::Arc;

use rdask_graph::{Arg, Key, TaskFn, TaskSpec};
use serde::de::DeserializeOwned;

use crate::client::{ClientInner, pure_key};
use crate::future::{ArgContext, FutureShared};
use crate::{Args, Client, Error, Future, IntoArg, Result, TaskOptions};

/// What an argument names: an existing future, or another delayed call.
#[derive(Clone)]
pub(crate) enum Dep {
    Future(Arc<FutureShared>),
    Delayed(Arc<Node>),
}

/// One recorded call.
pub(crate) struct Node {
    pub(crate) key: Key,
    /// `Err`: an argument could not be encoded (reported when computed).
    spec: Result<TaskSpec>,
    deps: Vec<Dep>,
}

impl Node {
    /// A call recorded for its users' graphs (e.g. the packing of a collection of futures).
    pub(crate) fn new(key: Key, spec: TaskSpec, deps: Vec<Dep>) -> Node {
        Node {
            key,
            spec: Ok(spec),
            deps,
        }
    }
}

/// A call of a task function recorded for later: see [`delayed`].
///
/// Pass it (or a reference) as an argument of other delayed calls — or of
/// [`Client::submit`] — to build a graph; [`Client::compute`] gives its value,
/// [`Client::persist`] a [`Future`] of it. Nothing runs until then. A delayed value keeps the
/// futures it names alive.
pub struct Delayed<T> {
    pub(crate) node: Arc<Node>,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for Delayed<T> {
    fn clone(&self) -> Self {
        Delayed {
            node: self.node.clone(),
            _t: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Delayed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "<Delayed: {} ({})>",
            self.node.key,
            std::any::type_name::<T>()
        )
    }
}

/// Records a call of `task` with `args` (values, futures or other delayed values, one per
/// parameter) without running it (Dask's `delayed(f)(*args)`).
///
/// ```
/// #[rdask::task]
/// fn inc(x: i64) -> i64 { x + 1 }
/// #[rdask::task]
/// fn add(a: i64, b: i64) -> i64 { a + b }
///
/// # fn main() -> rdask::Result<()> {
/// use rdask::delayed;
/// let a = delayed(inc, (1,));
/// let b = delayed(inc, (&a,));
/// let c = delayed(add, (&a, &b)); // `a` is computed once
/// let client = rdask::Client::local()?;
/// assert_eq!(rdask::block_on(client.compute(&c))?, 2 + 3);
/// assert!(c.to_dot().contains("->"));
/// # Ok(())
/// # }
/// ```
pub fn delayed<F, P, O, A: Args<P>>(task: TaskFn<F, P, O>, args: A) -> Delayed<O> {
    delayed_with(task, args, &TaskOptions::default())
}

/// [`delayed`] with the options of a submission (key, pure, priority, retries, placement,
/// resources).
pub fn delayed_with<F, P, O, A: Args<P>>(
    task: TaskFn<F, P, O>,
    args: A,
    options: &TaskOptions,
) -> Delayed<O> {
    let mut key = match options.key_for(None) {
        Some(k) => Key::from(k.as_str()),
        None => Key::with_hash(task.prefix(), rand::random::<u64>()),
    };
    let cx = ArgContext::new(None, &key);
    let args = args.into_args(&cx);
    let deps = cx.deps.into_inner();
    let spec = args.map(|args| {
        if options.is_pure() && options.key_for(None).is_none() {
            key = pure_key(task.prefix(), task.name(), &args);
        }
        let mut spec = TaskSpec::new(key.clone(), task.name(), args);
        options.apply(&mut spec);
        spec
    });
    Delayed {
        node: Arc::new(Node { key, spec, deps }),
        _t: PhantomData,
    }
}

impl<T> Delayed<T> {
    /// The key its value will have.
    pub fn key(&self) -> &Key {
        &self.node.key
    }

    /// The graph it stands for, in Graphviz DOT: one node per call (and per future it
    /// names), an edge from each input to its user (Dask's `visualize`).
    pub fn to_dot(&self) -> String {
        dot(std::slice::from_ref(&self.node))
    }

    /// Writes [`Delayed::to_dot`] to `path` (render it with `dot -Tsvg`).
    pub fn visualize(&self, path: impl AsRef<std::path::Path>) -> std::io::Result<()> {
        std::fs::write(path, self.to_dot())
    }

    /// [`Client::persist`] on the default client ([`Client::current`]).
    pub fn persist(&self) -> Result<Future<T>> {
        Ok(Client::current()?.persist(self))
    }
}

impl<T: DeserializeOwned> Delayed<T> {
    /// [`Client::compute`] on the default client ([`Client::current`]).
    pub async fn compute(&self) -> Result<T> {
        Client::current()?.compute(self).await
    }
}

impl<T> IntoArg<T> for &Delayed<T> {
    fn into_arg(self, cx: &ArgContext<'_>) -> Result<Arg> {
        cx.deps.borrow_mut().push(Dep::Delayed(self.node.clone()));
        Ok(Arg::Key(self.node.key.clone()))
    }
}

impl<T> IntoArg<T> for Delayed<T> {
    fn into_arg(self, cx: &ArgContext<'_>) -> Result<Arg> {
        (&self).into_arg(cx)
    }
}

/// The specs of every delayed call that `deps` need (inputs first; each once), checked
/// against the client that will run them; then `last`.
pub(crate) fn with_delayed(
    client: &Arc<ClientInner>,
    deps: Vec<Dep>,
    last: TaskSpec,
) -> Result<Vec<TaskSpec>> {
    let mut out = closure(client, deps, &mut HashSet::new())?;
    out.push(last);
    Ok(out)
}

/// The specs of the delayed calls reachable from `roots` that are not in `seen` (which
/// gains them), inputs before their users. Only what the roots need is there (culling).
fn closure(
    client: &Arc<ClientInner>,
    roots: Vec<Dep>,
    seen: &mut HashSet<Key>,
) -> Result<Vec<TaskSpec>> {
    let mut out = Vec::new();
    // Iterative post-order: long chains do not grow the call stack.
    let mut stack: Vec<(Dep, bool)> = roots.into_iter().rev().map(|d| (d, false)).collect();
    while let Some((dep, expanded)) = stack.pop() {
        match dep {
            Dep::Future(f) => {
                if !Arc::ptr_eq(&f.client, client) {
                    return Err(Error::ForeignFuture(f.key.clone()));
                }
                if f.cancelled.load(std::sync::atomic::Ordering::Acquire) {
                    return Err(Error::Cancelled(f.key.clone()));
                }
            }
            Dep::Delayed(node) => {
                if expanded {
                    out.push(node.spec.clone()?);
                    continue;
                }
                if !seen.insert(node.key.clone()) {
                    continue;
                }
                stack.push((Dep::Delayed(node.clone()), true));
                for d in node.deps.iter().rev() {
                    stack.push((d.clone(), false));
                }
            }
        }
    }
    Ok(out)
}

fn dot(roots: &[Arc<Node>]) -> String {
    let mut out = String::from("digraph rdask {\n  rankdir=BT;\n  node [shape=ellipse];\n");
    let mut ids: HashMap<Key, usize> = HashMap::new();
    let mut stack: Vec<Dep> = roots.iter().cloned().map(Dep::Delayed).collect();
    let mut edges = Vec::new();
    let label = |k: &Key| k.as_str().replace('"', "'");
    while let Some(dep) = stack.pop() {
        let (key, shape, deps) = match &dep {
            Dep::Future(f) => (f.key.clone(), "box", Vec::new()),
            Dep::Delayed(n) => (n.key.clone(), "ellipse", n.deps.clone()),
        };
        if ids.contains_key(&key) {
            continue;
        }
        let id = ids.len();
        ids.insert(key.clone(), id);
        let _ = writeln!(out, "  n{id} [label=\"{}\", shape={shape}];", label(&key));
        for d in deps {
            let k = match &d {
                Dep::Future(f) => f.key.clone(),
                Dep::Delayed(n) => n.key.clone(),
            };
            edges.push((k, key.clone()));
            stack.push(d);
        }
    }
    for (from, to) in edges {
        let _ = writeln!(out, "  n{} -> n{};", ids[&from], ids[&to]);
    }
    out.push_str("}\n");
    out
}

impl Client {
    /// Starts computing `value` and its inputs on the cluster and returns the future of
    /// its value (Dask's `persist`): only the calls it needs are sent (culling), calls
    /// already on the cluster (by key) are not run again, and each linear chain of calls
    /// (every call but the last used only by the next) runs as one task (fusion).
    pub fn persist<T>(&self, value: &Delayed<T>) -> Future<T> {
        self.persist_all(std::slice::from_ref(value)).remove(0)
    }

    /// [`Client::persist`] of several values as one graph: their common parts run once.
    pub fn persist_all<T>(&self, values: &[Delayed<T>]) -> Vec<Future<T>> {
        let inner = self.inner();
        let roots: Vec<Dep> = values
            .iter()
            .map(|v| Dep::Delayed(v.node.clone()))
            .collect();
        let keys: Vec<Key> = values.iter().map(|v| v.node.key.clone()).collect();
        match closure(inner, roots, &mut HashSet::new()) {
            Ok(specs) => {
                // Linear chains run as one task each (their inner keys are not kept).
                let keep: HashSet<Key> = keys.iter().cloned().collect();
                let specs = rdask_graph::fuse::fuse_chains(specs, &keep);
                self.submit_specs(specs, keys, None)
            }
            Err(e) => self.submit_specs(Vec::new(), keys, Some(e)),
        }
    }

    /// Computes `value` on the cluster and brings it back (Dask's `compute`).
    pub async fn compute<T: DeserializeOwned>(&self, value: &Delayed<T>) -> Result<T> {
        self.persist(value).result().await
    }

    /// Computes several values as one graph (their common parts once) and brings them
    /// back, in order.
    pub async fn compute_all<T: DeserializeOwned>(&self, values: &[Delayed<T>]) -> Result<Vec<T>> {
        let futures = self.persist_all(values);
        self.gather(&futures).await
    }
}
