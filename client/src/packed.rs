//! Collections of futures as arguments: a `Vec` (or slice), a pair or triple, or a map of
//! futures is an argument of the collection of their values, resolved on the cluster. The
//! values are packed into one by a built-in task of the same graph
//! ([`rdask_graph::pack`]); nothing travels through the client.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Arc;

use rdask_graph::pack::PACK;
use rdask_graph::{Arg, TaskSpec, value};
use serde::Serialize;

use crate::client::pure_key;
use crate::delayed::{Dep, Node};
use crate::future::{ArgContext, FutureShared, check_future};
use crate::{Error, Future, IntoArg, Result, blocking};

/// One part of a packed collection.
enum Part<'a> {
    /// An encoded value (a map's key).
    Value(bytes::Bytes),
    /// A future's value.
    Future(&'a Arc<FutureShared>),
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
    futures: impl ExactSizeIterator<Item = &'a Arc<FutureShared>>,
) -> Result<Arg> {
    let n = futures.len();
    packed(cx, Some(n), futures.map(Part::Future).collect())
}

fn map<'a, K: Serialize + 'a>(
    cx: &ArgContext<'_>,
    entries: impl ExactSizeIterator<Item = (&'a K, &'a Arc<FutureShared>)>,
) -> Result<Arg> {
    let n = entries.len();
    let mut parts = Vec::with_capacity(2 * n);
    for (k, f) in entries {
        parts.push(Part::Value(
            value::encode(k).map_err(|e| Error::Encode(e.to_string()))?,
        ));
        parts.push(Part::Future(f));
    }
    packed(cx, Some(n), parts)
}

impl<T> IntoArg<Vec<T>> for &[Future<T>] {
    fn into_arg(self, cx: &ArgContext<'_>) -> Result<Arg> {
        sequence(cx, self.iter().map(|f| &f.shared))
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
        sequence(cx, self.iter().map(|f| &f.inner.shared))
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
        map(cx, self.iter().map(|(k, f)| (k, &f.shared)))
    }
}

impl<K: Serialize + Eq + Hash, V> IntoArg<HashMap<K, V>> for HashMap<K, Future<V>> {
    fn into_arg(self, cx: &ArgContext<'_>) -> Result<Arg> {
        (&self).into_arg(cx)
    }
}

impl<K: Serialize + Ord, V> IntoArg<BTreeMap<K, V>> for &BTreeMap<K, Future<V>> {
    fn into_arg(self, cx: &ArgContext<'_>) -> Result<Arg> {
        map(cx, self.iter().map(|(k, f)| (k, &f.shared)))
    }
}

impl<K: Serialize + Ord, V> IntoArg<BTreeMap<K, V>> for BTreeMap<K, Future<V>> {
    fn into_arg(self, cx: &ArgContext<'_>) -> Result<Arg> {
        (&self).into_arg(cx)
    }
}
