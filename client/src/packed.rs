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

/// What stands for one value of a collection: a future (async or blocking) or a delayed call.
trait Packable {
    fn part(&self) -> Part<'_>;
}

impl<T> Packable for Future<T> {
    fn part(&self) -> Part<'_> {
        Part::Future(&self.shared)
    }
}

impl<T> Packable for blocking::Future<T> {
    fn part(&self) -> Part<'_> {
        Part::Future(&self.inner.shared)
    }
}

impl<T> Packable for Delayed<T> {
    fn part(&self) -> Part<'_> {
        Part::Delayed(&self.node)
    }
}

/// `Vec`s and slices of `$item`s are arguments of `Vec`s of their values.
macro_rules! sequences_of {
    ($($item:ident)::+) => {
        impl<T> IntoArg<Vec<T>> for &[$($item)::+<T>] {
            fn into_arg(self, cx: &ArgContext<'_>) -> Result<Arg> {
                sequence(cx, self.iter().map(Packable::part))
            }
        }

        impl<T> IntoArg<Vec<T>> for &Vec<$($item)::+<T>> {
            fn into_arg(self, cx: &ArgContext<'_>) -> Result<Arg> {
                self.as_slice().into_arg(cx)
            }
        }

        impl<T> IntoArg<Vec<T>> for Vec<$($item)::+<T>> {
            fn into_arg(self, cx: &ArgContext<'_>) -> Result<Arg> {
                self.as_slice().into_arg(cx)
            }
        }
    };
}

/// Pairs, triples and maps of `$item`s are arguments of pairs, triples and maps of their
/// values.
macro_rules! tuples_and_maps_of {
    ($item:ident) => {
        impl<A, B> IntoArg<(A, B)> for (&$item<A>, &$item<B>) {
            fn into_arg(self, cx: &ArgContext<'_>) -> Result<Arg> {
                packed(cx, None, vec![self.0.part(), self.1.part()])
            }
        }

        impl<A, B, C> IntoArg<(A, B, C)> for (&$item<A>, &$item<B>, &$item<C>) {
            fn into_arg(self, cx: &ArgContext<'_>) -> Result<Arg> {
                packed(cx, None, vec![self.0.part(), self.1.part(), self.2.part()])
            }
        }

        impl<K: Serialize + Eq + Hash, V> IntoArg<HashMap<K, V>> for &HashMap<K, $item<V>> {
            fn into_arg(self, cx: &ArgContext<'_>) -> Result<Arg> {
                map(cx, self.iter().map(|(k, v)| (k, v.part())))
            }
        }

        impl<K: Serialize + Eq + Hash, V> IntoArg<HashMap<K, V>> for HashMap<K, $item<V>> {
            fn into_arg(self, cx: &ArgContext<'_>) -> Result<Arg> {
                (&self).into_arg(cx)
            }
        }

        impl<K: Serialize + Ord, V> IntoArg<BTreeMap<K, V>> for &BTreeMap<K, $item<V>> {
            fn into_arg(self, cx: &ArgContext<'_>) -> Result<Arg> {
                map(cx, self.iter().map(|(k, v)| (k, v.part())))
            }
        }

        impl<K: Serialize + Ord, V> IntoArg<BTreeMap<K, V>> for BTreeMap<K, $item<V>> {
            fn into_arg(self, cx: &ArgContext<'_>) -> Result<Arg> {
                (&self).into_arg(cx)
            }
        }
    };
}

sequences_of!(Future);
sequences_of!(blocking::Future);
sequences_of!(Delayed);
tuples_and_maps_of!(Future);
tuples_and_maps_of!(Delayed);
