//! Collections of futures (or of delayed values) as arguments: a `Vec` (or slice), a pair
//! or triple, or a map of futures is an argument of the collection of their values,
//! resolved on the cluster. The values are packed into one by a built-in task of the same
//! graph ([`rdask_graph::pack`]); nothing travels through the client. Dask's
//! `delayed(sum)([delayed(inc)(i) for i in …])` is `delayed(sum, (parts,))` with
//! `parts: Vec<Delayed<i64>>`.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Arc;

use rdask_graph::pack::PACK;
use rdask_graph::{Arg, TaskSpec, value};
use serde::Serialize;

use crate::client::pure_key;
use crate::delayed::{Dep, Node};
use crate::future::{ArgContext, FutureShared, check_future};
use crate::{Delayed, Error, Future, IntoArg, Result, blocking};

/// One part of a packed collection.
enum Part<'a> {
    /// An encoded value (a map's key).
    Value(bytes::Bytes),
    /// A future's value.
    Future(&'a Arc<FutureShared>),
    /// A delayed call's value (computed in the same graph).
    Delayed(&'a Arc<Node>),
}

/// The argument naming `parts` packed after `header` (a sequence's or map's length; none
/// for a tuple): a pack task in the same graph, keyed by what it packs (the same
/// collection packs once).
fn packed(cx: &ArgContext<'_>, header: Option<usize>, parts: Vec<Part<'_>>) -> Result<Arg> {
    let header = match header {
        Some(n) => value::encode(&n).map_err(|e| Error::Encode(e.to_string()))?,
        None => bytes::Bytes::new(),
    };
    let mut args = Vec::with_capacity(parts.len() + 1);
    args.push(Arg::Value(header));
    let mut deps = Vec::new();
    for p in parts {
        match p {
            Part::Value(b) => args.push(Arg::Value(b)),
            Part::Future(f) => {
                check_future(f, cx)?;
                deps.push(Dep::Future(f.clone()));
                args.push(Arg::Key(f.key.clone()));
            }
            Part::Delayed(node) => {
                deps.push(Dep::Delayed(node.clone()));
                args.push(Arg::Key(node.key.clone()));
            }
        }
    }
    let key = pure_key("pack", PACK, &args);
    let spec = TaskSpec::new(key.clone(), PACK, args);
    cx.deps
        .borrow_mut()
        .push(Dep::Delayed(Arc::new(Node::new(key.clone(), spec, deps))));
    Ok(Arg::Key(key))
}

fn sequence<'a>(
    cx: &ArgContext<'_>,
    parts: impl ExactSizeIterator<Item = Part<'a>>,
) -> Result<Arg> {
    let n = parts.len();
    packed(cx, Some(n), parts.collect())
}

fn map<'a, K: Serialize + 'a>(
    cx: &ArgContext<'_>,
    entries: impl ExactSizeIterator<Item = (&'a K, Part<'a>)>,
) -> Result<Arg> {
    let n = entries.len();
    let mut parts = Vec::with_capacity(2 * n);
    for (k, part) in entries {
        parts.push(Part::Value(
            value::encode(k).map_err(|e| Error::Encode(e.to_string()))?,
        ));
        parts.push(part);
    }
    packed(cx, Some(n), parts)
}

impl<T> IntoArg<Vec<T>> for &[Future<T>] {
    fn into_arg(self, cx: &ArgContext<'_>) -> Result<Arg> {
        sequence(cx, self.iter().map(|f| Part::Future(&f.shared)))
    }
}

impl<T> IntoArg<Vec<T>> for &Vec<Future<T>> {
    fn into_arg(self, cx: &ArgContext<'_>) -> Result<Arg> {
        self.as_slice().into_arg(cx)
    }
}

impl<T> IntoArg<Vec<T>> for Vec<Future<T>> {
    fn into_arg(self, cx: &ArgContext<'_>) -> Result<Arg> {
        self.as_slice().into_arg(cx)
    }
}

impl<T> IntoArg<Vec<T>> for &[blocking::Future<T>] {
    fn into_arg(self, cx: &ArgContext<'_>) -> Result<Arg> {
        sequence(cx, self.iter().map(|f| Part::Future(&f.inner.shared)))
    }
}

impl<T> IntoArg<Vec<T>> for &Vec<blocking::Future<T>> {
    fn into_arg(self, cx: &ArgContext<'_>) -> Result<Arg> {
        self.as_slice().into_arg(cx)
    }
}

impl<T> IntoArg<Vec<T>> for Vec<blocking::Future<T>> {
    fn into_arg(self, cx: &ArgContext<'_>) -> Result<Arg> {
        self.as_slice().into_arg(cx)
    }
}

impl<A, B> IntoArg<(A, B)> for (&Future<A>, &Future<B>) {
    fn into_arg(self, cx: &ArgContext<'_>) -> Result<Arg> {
        let parts = vec![Part::Future(&self.0.shared), Part::Future(&self.1.shared)];
        packed(cx, None, parts)
    }
}

impl<A, B, C> IntoArg<(A, B, C)> for (&Future<A>, &Future<B>, &Future<C>) {
    fn into_arg(self, cx: &ArgContext<'_>) -> Result<Arg> {
        let parts = vec![
            Part::Future(&self.0.shared),
            Part::Future(&self.1.shared),
            Part::Future(&self.2.shared),
        ];
        packed(cx, None, parts)
    }
}

impl<K: Serialize + Eq + Hash, V> IntoArg<HashMap<K, V>> for &HashMap<K, Future<V>> {
    fn into_arg(self, cx: &ArgContext<'_>) -> Result<Arg> {
        map(cx, self.iter().map(|(k, f)| (k, Part::Future(&f.shared))))
    }
}

impl<K: Serialize + Eq + Hash, V> IntoArg<HashMap<K, V>> for HashMap<K, Future<V>> {
    fn into_arg(self, cx: &ArgContext<'_>) -> Result<Arg> {
        (&self).into_arg(cx)
    }
}

impl<K: Serialize + Ord, V> IntoArg<BTreeMap<K, V>> for &BTreeMap<K, Future<V>> {
    fn into_arg(self, cx: &ArgContext<'_>) -> Result<Arg> {
        map(cx, self.iter().map(|(k, f)| (k, Part::Future(&f.shared))))
    }
}

impl<K: Serialize + Ord, V> IntoArg<BTreeMap<K, V>> for BTreeMap<K, Future<V>> {
    fn into_arg(self, cx: &ArgContext<'_>) -> Result<Arg> {
        (&self).into_arg(cx)
    }
}

impl<T> IntoArg<Vec<T>> for &[Delayed<T>] {
    fn into_arg(self, cx: &ArgContext<'_>) -> Result<Arg> {
        sequence(cx, self.iter().map(|d| Part::Delayed(&d.node)))
    }
}

impl<T> IntoArg<Vec<T>> for &Vec<Delayed<T>> {
    fn into_arg(self, cx: &ArgContext<'_>) -> Result<Arg> {
        self.as_slice().into_arg(cx)
    }
}

impl<T> IntoArg<Vec<T>> for Vec<Delayed<T>> {
    fn into_arg(self, cx: &ArgContext<'_>) -> Result<Arg> {
        self.as_slice().into_arg(cx)
    }
}

impl<A, B> IntoArg<(A, B)> for (&Delayed<A>, &Delayed<B>) {
    fn into_arg(self, cx: &ArgContext<'_>) -> Result<Arg> {
        let parts = vec![Part::Delayed(&self.0.node), Part::Delayed(&self.1.node)];
        packed(cx, None, parts)
    }
}

impl<A, B, C> IntoArg<(A, B, C)> for (&Delayed<A>, &Delayed<B>, &Delayed<C>) {
    fn into_arg(self, cx: &ArgContext<'_>) -> Result<Arg> {
        let parts = vec![
            Part::Delayed(&self.0.node),
            Part::Delayed(&self.1.node),
            Part::Delayed(&self.2.node),
        ];
        packed(cx, None, parts)
    }
}

impl<K: Serialize + Eq + Hash, V> IntoArg<HashMap<K, V>> for &HashMap<K, Delayed<V>> {
    fn into_arg(self, cx: &ArgContext<'_>) -> Result<Arg> {
        map(cx, self.iter().map(|(k, d)| (k, Part::Delayed(&d.node))))
    }
}

impl<K: Serialize + Eq + Hash, V> IntoArg<HashMap<K, V>> for HashMap<K, Delayed<V>> {
    fn into_arg(self, cx: &ArgContext<'_>) -> Result<Arg> {
        (&self).into_arg(cx)
    }
}

impl<K: Serialize + Ord, V> IntoArg<BTreeMap<K, V>> for &BTreeMap<K, Delayed<V>> {
    fn into_arg(self, cx: &ArgContext<'_>) -> Result<Arg> {
        map(cx, self.iter().map(|(k, d)| (k, Part::Delayed(&d.node))))
    }
}

impl<K: Serialize + Ord, V> IntoArg<BTreeMap<K, V>> for BTreeMap<K, Delayed<V>> {
    fn into_arg(self, cx: &ArgContext<'_>) -> Result<Arg> {
        (&self).into_arg(cx)
    }
}
