use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::Key;

/// One argument of a task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Arg {
    /// A literal value, already encoded with [`crate::value::encode`].
    Value(Bytes),
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
}

impl TaskSpec {
    /// A task calling `function` with `args`, stored under `key`.
    pub fn new(key: Key, function: impl Into<Arc<str>>, args: Vec<Arg>) -> TaskSpec {
        TaskSpec {
            key,
            function: function.into(),
            args,
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
