use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::Key;

/// One argument of a task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Arg {
    /// A literal value, already encoded with [`crate::value::encode`].
    Value(#[serde(with = "crate::detached")] Bytes),
    /// The result of another task, resolved on the cluster: the value never travels
    /// through the client.
    Key(Key),
}

/// What to run for one key: a registered function and its arguments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The key this task's result is stored under.
    pub key: Key,
    /// The registered name of the task function (see [`crate::registry`]).
    pub function: Arc<str>,
    /// The arguments in call order.
    pub args: Vec<Arg>,
    /// Where it may run; `None`: anywhere its function is.
    pub placement: Option<Placement>,
    /// Abstract resources it holds while it runs (Dask's `resources=`): it runs only on
    /// nodes started with at least as much of each (`--resources GPU=2`), and no more such
    /// tasks run at once on a node than its amounts allow.
    pub resources: Vec<(Arc<str>, u64)>,
    /// Among ready tasks of a node, higher runs first (Dask's `priority=`); equal ones in
    /// submission order.
    pub priority: i32,
    /// Times the function is run again after it fails (returns `Err` or panics) before the
    /// failure is final (Dask's `retries=`).
    pub retries: u8,
}

/// A restriction of where a task runs (Dask's `workers=` and `allow_other_workers=`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Node ids (peer ids in text form) the task runs on.
    pub nodes: Vec<Arc<str>>,
    /// When none of `nodes` is alive: run elsewhere (`true`) or wait for one (`false`).
    pub loose: bool,
}

impl TaskSpec {
    /// A task calling `function` with `args`, stored under `key`.
    pub fn new(key: Key, function: impl Into<Arc<str>>, args: Vec<Arg>) -> TaskSpec {
        TaskSpec {
            key,
            function: function.into(),
            args,
            placement: None,
            resources: Vec::new(),
            priority: 0,
            retries: 0,
        }
    }

    /// The keys this task depends on, in argument order (a key may repeat).
    pub fn dependencies(&self) -> impl Iterator<Item = &Key> {
        self.args.iter().filter_map(|a| match a {
            Arg::Key(k) => Some(k),
            Arg::Value(_) => None,
        })
    }
}
