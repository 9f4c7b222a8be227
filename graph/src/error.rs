use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::Key;

/// Why a graph was rejected. A rejected graph runs nothing: the node's state is unchanged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum GraphError {
    /// Two tasks of the graph share a key.
    #[error("duplicate key {key} in graph")]
    DuplicateKey {
        /// The repeated key.
        key: Key,
    },
    /// A task refers to a key that is neither in the graph nor already known to the node.
    #[error("task {key} depends on {missing}, which is neither in the graph nor on the cluster")]
    MissingDependency {
        /// The task with the dangling reference.
        key: Key,
        /// The key it refers to.
        missing: Key,
    },
    /// The graph's dependencies form a cycle through this key.
    #[error("the graph has a cycle through {key}")]
    Cycle {
        /// A key on the cycle.
        key: Key,
    },
    /// A task names a function that is not registered on the node.
    #[error(
        "task {key} calls unknown function `{function}`: it is not registered in this node's binary \
         (mark it #[rdask::task] and build the node binary with the crate that defines it)"
    )]
    UnknownFunction {
        /// The task that names the function.
        key: Key,
        /// The function name as submitted.
        function: Arc<str>,
    },
    /// A graph id was reused for a different graph.
    #[error("graph id {graph} was already used for a different graph")]
    GraphIdReused {
        /// The graph id, as hex.
        graph: String,
    },
    /// The submission holds more tasks than the node accepts at once: nothing of it runs.
    #[error(
        "the submission has {tasks} tasks, over the limit of {limit} tasks per submission \
         (--max-tasks-per-submit): submit it in parts"
    )]
    TooManyTasks {
        /// Tasks in the submission.
        tasks: u64,
        /// The node's limit.
        limit: u64,
    },
}

/// The kind of a [`TaskError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskErrorKind {
    /// The task function panicked.
    Panicked,
    /// The task function returned `Err`.
    Failed,
    /// An argument could not be decoded as the type the function takes.
    BadArgument,
    /// The function's result could not be encoded.
    BadOutput,
    /// The function is not registered on the node that was asked to run it.
    UnknownFunction,
    /// The task was released or cancelled before it finished.
    Cancelled,
    /// The nodes that ran the task died too many times (Dask's `KilledWorker`).
    Lost,
}

/// A task that did not produce a value: the error carried by its future and by the futures
/// of every task that depends on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskError {
    /// What went wrong.
    pub kind: TaskErrorKind,
    /// The message: the panic payload, the `Err` value's `Display`, or the decoding error.
    pub message: Arc<str>,
    /// The key of the task where the error was raised (for a dependent, the failed input).
    pub key: Key,
    /// The node where it was raised, when known.
    pub node: Option<Arc<str>>,
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            TaskErrorKind::Panicked => "panicked",
            TaskErrorKind::Failed => "failed",
            TaskErrorKind::BadArgument => "got an argument of the wrong type",
            TaskErrorKind::BadOutput => "returned a value that could not be encoded",
            TaskErrorKind::UnknownFunction => "calls an unknown function",
            TaskErrorKind::Cancelled => "was cancelled",
            TaskErrorKind::Lost => "was lost",
        };
        write!(f, "task {} {what}: {}", self.key, self.message)?;
        if let Some(node) = &self.node {
            write!(f, " (on node {node})")?;
        }
        Ok(())
    }
}

impl std::error::Error for TaskError {}
