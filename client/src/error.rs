use rdask_graph::{GraphError, Key, TaskError, TaskErrorKind};

/// Everything that can go wrong for a client, with a message a user can act on.
#[derive(Clone, thiserror::Error)]
pub enum Error {
    /// The graph was rejected by the node: nothing of it ran.
    #[error("graph rejected: {0}")]
    GraphRejected(GraphError),
    /// The task, or a task it depends on, failed. The error names the task where it was
    /// raised, the node, and carries the panic message or the `Err` value's text.
    #[error("{0}")]
    Task(TaskError),
    /// The value arrived but is not of the type the future expects.
    #[error("the result of {key} cannot be decoded as {type_name}: {reason}")]
    Decode {
        /// The key.
        key: Key,
        /// The expected Rust type.
        type_name: &'static str,
        /// The codec's reason.
        reason: String,
    },
    /// An argument could not be encoded.
    #[error("cannot encode an argument: {0}")]
    Encode(String),
    /// The node no longer knows the key (released, or the node restarted).
    #[error("the cluster has no result for {0}: it was released or lost")]
    Lost(Key),
    /// The address could not be understood.
    #[error(
        "invalid address `{address}`: {reason} (expected tcp://host:port, host:port, \
         /ip4/…/tcp/PORT or /dns/…/tcp/PORT)"
    )]
    BadAddress {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The node could not be reached.
    #[error("cannot connect to {address}: {reason}")]
    Connect {
        /// The address.
        address: String,
        /// Why.
        reason: String,
    },
    /// The connection to the node was lost while a request was under way.
    #[error("connection to the cluster lost: {0}")]
    ConnectionLost(String),
    /// The node refused the request (an incompatible version, a limit of the node such as
    /// `--max-client-sessions`; the reason names it).
    #[error("the node refused the request: {0}")]
    Refused(String),
    /// The request is over a limit of the node (`--max-frame-bytes`, `--max-value-bytes`,
    /// named in the message): nothing was sent, and the client goes on.
    #[error("{0}")]
    TooLarge(String),
    /// The node answered something the client did not expect.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
    /// A future of another client was passed as an argument.
    #[error("a future of another client was passed as an argument of {0}")]
    ForeignFuture(Key),
    /// The in-process cluster could not start.
    #[error("cannot start the local cluster: {0}")]
    LocalCluster(String),
    /// The future was cancelled ([`crate::Future::cancel`]).
    #[error("{0} was cancelled")]
    Cancelled(Key),
    /// [`crate::worker_client`] was called outside a task function running on a node.
    #[error("worker_client() works only inside a task function running on a node")]
    NotInTask,
    /// No dataset of that name is published on the cluster.
    #[error("no dataset named {0:?} is published")]
    NoDataset(String),
    /// A dataset of that name is published already (unpublish it first).
    #[error("a dataset named {0:?} is already published")]
    DatasetExists(String),
    /// [`crate::Client::current`] found no open default client.
    #[error("no default client: create one first (Client::local() or Client::connect(…))")]
    NoDefaultClient,
    /// The value did not come within the time given.
    #[error("no result within {0:?}")]
    Timeout(std::time::Duration),
}

impl Error {
    /// Whether the error is an unknown task function (on the submitted task or an input).
    pub fn is_unknown_function(&self) -> bool {
        matches!(
            self,
            Error::GraphRejected(GraphError::UnknownFunction { .. })
                | Error::Task(TaskError {
                    kind: TaskErrorKind::UnknownFunction,
                    ..
                })
        )
    }

    /// The task error, if the error is one.
    pub fn task_error(&self) -> Option<&TaskError> {
        match self {
            Error::Task(e) => Some(e),
            _ => None,
        }
    }
}

/// `Result<T, rdask::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

// `Debug` shows the message, so that `fn main() -> rdask::Result<()>` and `unwrap()` print
// something a user can act on.
impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}
