use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use ractor::ActorRef;
use rdask_actors::NodeMsg;
use rdask_actors::protocol::{
    ClientRequest, ClientResponse, ForwardedRequest, GraphSubmission, KeyResult, KeyStatus,
    NodeStatus, SubmitOutcome,
};
use rdask_gossip::PROTOCOL_VERSION;
use rdask_graph::{Arg, GraphId, Key, Registry, TaskFn, TaskSpec};
use rdask_node::{ClusterSecret, NodeConfig, NodeHandle, RemoteNode};
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use crate::address::parse_address;
use crate::future::{ArgContext, Args, FutureShared, FutureStatus, IntoArg, Submitted, decode};
use crate::{Error, Future, Result, TaskOptions};

/// How long the node may hold a gather before answering with what is ready (the client
/// then asks again).
const LONG_POLL_MS: u32 = 5_000;
/// How long `connect` waits for the node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most queued operations sent in one message.
const RELEASE_BATCH: usize = 4_096;
/// How often dropped futures are released on the node when nothing else is sent.
const RELEASE_INTERVAL: Duration = Duration::from_millis(50);
/// How often the flusher looks at the outbox while submissions keep coming. A request for
/// results sends the outbox at once; this only bounds how long a submission nobody waits
/// for may wait to leave.
const FLUSH_TICK: Duration = Duration::from_millis(1);
/// Empty looks after which the flusher sleeps until the next submission wakes it.
const QUIET_TICKS: u32 = 20;
/// Most tasks sent in one submission message.
const SUBMIT_BATCH: usize = 100_000;
/// How long a client whose node died looks for the new owner of its graphs.
const REATTACH_TIMEOUT: Duration = Duration::from_secs(60);
/// After this long with no live owner of its graphs in the ownership table (none took
/// over), the client submits its own copies to the node it reached.
const TAKEOVER_WAIT: Duration = Duration::from_secs(15);
/// How long a connection attempt to one member may take while re-attaching.
const REATTACH_DIAL: Duration = Duration::from_secs(2);
/// Times a lost key is submitted again after re-attaching, per wait.
const RESUBMITS: u32 = 3;

/// How the client reaches its node. Both ways keep the order of requests: a submission
/// and the gather of its result may be sent back to back.
#[derive(Clone)]
enum Conn {
    /// The node runs in this process: requests are messages to its actor.
    Local(ActorRef<NodeMsg>),
    /// The node is reached over a `/rdask/client/1` session.
    Remote(RemoteNode),
}

impl Conn {
    /// Queues `request` now and returns the future of its response.
    fn send(&self, request: ClientRequest) -> BoxFuture<'static, Result<ClientResponse>> {
        let response = match self {
            Conn::Local(actor) => {
                let (tx, rx) = oneshot::channel();
                let sent = actor.send_message(NodeMsg::Request(
                    request,
                    Box::new(move |r| {
                        let _ = tx.send(r);
                    }),
                ));
                async move {
                    sent.map_err(|_| Error::Closed)?;
                    rx.await.map_err(|_| Error::Closed)
                }
                .boxed()
            }
            Conn::Remote(remote) => remote.send(request).map(map_remote).boxed(),
        };
        response.map(settle).boxed()
    }
}

/// A remote node's answer, as the client's result.
fn map_remote(
    r: std::result::Result<ClientResponse, rdask_node::RemoteError>,
) -> Result<ClientResponse> {
    r.map_err(|e| match e {
        rdask_node::RemoteError::Closed => Error::Closed,
        rdask_node::RemoteError::Lost(m) => Error::ConnectionLost(m),
        rdask_node::RemoteError::TooLarge(e) => Error::TooLarge(e.to_string()),
    })
}

/// A node's answer, with refusals and step-downs as errors.
fn settle(r: Result<ClientResponse>) -> Result<ClientResponse> {
    r.and_then(settle_response)
}

/// Refusals and step-downs as errors.
fn settle_response(r: ClientResponse) -> Result<ClientResponse> {
    match r {
        ClientResponse::Refused(reason) => Err(Error::Refused(reason)),
        // The node stepped down as this client's owner: like a lost connection, the client
        // looks for the new owner.
        ClientResponse::Moved(reason) => Err(Error::ConnectionLost(reason)),
        r => Ok(r),
    }
}

#[derive(Default)]
struct Outbox {
    graphs: Vec<GraphSubmission>,
    acks: Vec<oneshot::Sender<Result<()>>>,
    released: Vec<Key>,
}

/// A submission sent over a remote connection and not answered yet: sent again (same
/// graph ids) to the node the client re-attaches to.
struct Unacked {
    seq: u64,
    graphs: Vec<GraphSubmission>,
    acks: Vec<oneshot::Sender<Result<()>>>,
}

pub(crate) struct ClientInner {
    me: Weak<ClientInner>,
    id: u64,
    counter: AtomicU64,
    /// The connection to the entry node (replaced when the client re-attaches).
    conn: Mutex<Conn>,
    /// Raised by every re-attach.
    generation: AtomicU64,
    /// One re-attach at a time.
    reattaching: tokio::sync::Mutex<()>,
    /// Submissions not answered yet (remote connections only), oldest first.
    unacked: Mutex<VecDeque<Unacked>>,
    next_seq: AtomicU64,
    /// The client's copy of the graphs of its live futures (remote connections only), by
    /// key: submitted again should the cluster lose them with their owner.
    retained: Mutex<HashMap<Key, Arc<Vec<TaskSpec>>>>,
    /// Submissions and releases not yet sent, sent together in order (see `flush`).
    outbox: Mutex<Outbox>,
    /// Wakes the task that flushes the outbox.
    outbox_ready: Arc<tokio::sync::Notify>,
    /// Whether the flusher waits to be woken (rather than looking by itself).
    flusher_idle: AtomicBool,
    handle: tokio::runtime::Handle,
    /// Keys of live futures, with how many futures hold each (a pure or explicit key may
    /// be held by several).
    live: Mutex<HashMap<Key, usize>>,
    closed: AtomicBool,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    local: Mutex<Option<NodeHandle>>,
    address: String,
    /// The cluster secret the client connects with, if any (re-attaching needs it too).
    secret: Option<ClusterSecret>,
    /// The entry node, as it said when the client connected (or re-attached).
    welcome: Mutex<NodeStatus>,
    /// The cluster as last seen (at connect, and by every `nodes()`), for `Display`.
    cluster: Mutex<Vec<NodeStatus>>,
}

/// A connection to an rdask cluster: the entry point for submitting work.
///
/// `Client::local()` starts an in-process cluster (no separate process, no network);
/// `Client::connect("tcp://host:4001")` talks to a running `rdask-node` through any one of
/// its members. `submit` and `map` return [`Future`]s at once; their values are awaited
/// with `fut.await`, [`Future::result`] or [`Client::gather`]. Dropping the client (or
/// [`Client::close`]) releases everything it holds on the cluster.
///
/// ```
/// #[rdask::task]
/// fn double(x: i64) -> i64 {
///     2 * x
/// }
///
/// # fn main() -> rdask::Result<()> {
/// let client = rdask::Client::local()?;
/// let a = client.submit(double, (21,));
/// let b = client.submit(double, (&a,)); // depends on `a`, resolved on the cluster
/// assert_eq!(rdask::block_on(b.result())?, 84);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
    /// Shared by the clones of this client: the last one dropped closes it.
    closer: Arc<Closer>,
}

/// Closes the client when the last handle goes.
struct Closer(Arc<ClientInner>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The default client: the last one created (unless it asked not to be), for delayed
/// values and collections that are not given one.
static DEFAULT: Mutex<std::sync::Weak<Closer>> = Mutex::new(std::sync::Weak::new());

/// Where the local cluster's dashboard listens, by the environment.
fn local_dashboard() -> Result<Option<std::net::SocketAddr>> {
    if std::env::var_os("RDASK_NO_DASHBOARD").is_some_and(|v| !v.is_empty() && v != "0") {
        return Ok(None);
    }
    match std::env::var("RDASK_DASHBOARD_ADDRESS") {
        Ok(a) => a.parse().map(Some).map_err(|e| {
            Error::LocalCluster(format!(
                "RDASK_DASHBOARD_ADDRESS={a:?} is not host:port: {e}"
            ))
        }),
        Err(_) => Ok(Some(std::net::SocketAddr::from(([127, 0, 0, 1], 8787)))),
    }
}

fn runtime(workers: usize) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("rdask-client")
        .enable_all()
        .build()
        .map_err(|e| Error::LocalCluster(format!("cannot start the async runtime: {e}")))
}

/// Runs `f` on `rt` and waits for it from this (non-async) thread.
fn run_on<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    rt.spawn(async move {
        let _ = tx.send(f.await);
    });
    rx.recv().map_err(|_| Error::Closed)
}

/// The key of a pure call: `prefix-` and 128 bits of the SHA-256 of the function's name and
/// the encoded arguments (the same on every client and every build; a scattered gigabyte
/// is hashed in about a second with the CPU's SHA instructions).
pub(crate) fn pure_key(prefix: &str, function: &str, args: &[Arg]) -> Key {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(function.as_bytes());
    for a in args {
        let (tag, bytes) = match a {
            Arg::Value(b) => (b"v", &b[..]),
            Arg::Key(k) => (b"k", k.as_str().as_bytes()),
        };
        h.update(tag);
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
    let digest = h.finalize();
    let h = u128::from_le_bytes(digest[..16].try_into().expect("16 bytes of 32"));
    Key::from(format!("{prefix}-{h:032x}").as_str())
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Client {
    /// Starts an in-process cluster on this machine's cores and connects to it.
    ///
    /// The cluster runs every `#[rdask::task]` function linked into this program.
    pub fn local() -> Result<Client> {
        Client::local_with_threads(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// Starts an in-process cluster with `nthreads` task threads.
    ///
    /// Like Dask's `LocalCluster`, it serves a dashboard, on `127.0.0.1:8787` (another free
    /// port if that one is taken; [`Client::dashboard_link`] says which):
    /// `RDASK_DASHBOARD_ADDRESS=host:port` chooses the address, `RDASK_NO_DASHBOARD=1`
    /// turns it off.
    pub fn local_with_threads(nthreads: usize) -> Result<Client> {
        let rt = runtime(2)?;
        let mut config = NodeConfig::in_process(nthreads);
        config.dashboard = local_dashboard()?;
        let node = run_on(&rt, async move {
            let node = rdask_node::start(config, Registry::global())
                .await
                .map_err(|e| Error::LocalCluster(e.to_string()))?;
            let status = node
                .status()
                .await
                .ok_or_else(|| Error::LocalCluster("the node did not start".into()))?;
            Ok::<_, Error>((node, status))
        })??;
        let (node, status) = node;
        let conn = Conn::Local(node.actor());
        let client = Client::new(rt, conn, Some(node), "inproc://local".into(), status, None);
        client.set_as_default(true);
        Ok(client)
    }

    /// Connects to a running node: `tcp://host:port`, `host:port`, or a multiaddr such as
    /// `/ip4/127.0.0.1/tcp/4001` or `/dns/seed/tcp/4001`.
    ///
    /// A cluster started with a secret (`rdask-node --cluster-secret`) accepts only clients
    /// that have it: this reads it from `RDASK_CLUSTER_SECRET` (or the file named by
    /// `RDASK_CLUSTER_SECRET_FILE`); [`Client::connect_with_secret`] takes it directly.
    pub fn connect(address: &str) -> Result<Client> {
        let secret = ClusterSecret::from_env().map_err(|reason| Error::Connect {
            address: address.trim().to_string(),
            reason,
        })?;
        Client::connect_inner(address, secret)
    }

    /// Connects to a node of a cluster that has a secret (a passphrase, or a libp2p
    /// `swarm.key`): see [`Client::connect`].
    pub fn connect_with_secret(address: &str, secret: &str) -> Result<Client> {
        let secret = ClusterSecret::new(secret).map_err(|reason| Error::Connect {
            address: address.trim().to_string(),
            reason,
        })?;
        Client::connect_inner(address, Some(secret))
    }

    fn connect_inner(address: &str, secret: Option<ClusterSecret>) -> Result<Client> {
        let addr = parse_address(address)?;
        let rt = runtime(1)?;
        let shown = address.trim().to_string();
        let connect_err = {
            let shown = shown.clone();
            move |reason: String| Error::Connect {
                address: shown.clone(),
                reason,
            }
        };
        let (remote, status) = run_on(&rt, async move {
            let remote = RemoteNode::connect(
                addr,
                rdask_node::codec::DEFAULT_MAX_FRAME,
                CONNECT_TIMEOUT,
                secret.as_ref(),
            )
            .await
            .map_err(|e| match e {
                // The address is said once, as the user gave it.
                rdask_node::net::NetError::Dial { reason, .. } => connect_err(reason),
                other => connect_err(other.to_string()),
            })?;
            let conn = Conn::Remote(remote.clone());
            let hello = ClientRequest::Hello {
                protocol: PROTOCOL_VERSION,
                version: env!("CARGO_PKG_VERSION").to_string(),
            };
            match conn.send(hello).await? {
                ClientResponse::Welcome(status, limits) => {
                    remote.set_limits(limits.max_frame_bytes, limits.max_value_bytes);
                    Ok((remote, status))
                }
                other => Err(Error::Protocol(format!(
                    "unexpected answer to hello: {other:?}"
                ))),
            }
        })??;
        let client = Client::new(rt, Conn::Remote(remote), None, shown, status, secret);
        client.set_as_default(true);
        // Learn the cluster for `Display`; a failure here shows up on the next request.
        let _ = futures::executor::block_on(client.nodes());
        Ok(client)
    }

    fn new(
        rt: tokio::runtime::Runtime,
        conn: Conn,
        local: Option<NodeHandle>,
        address: String,
        welcome: NodeStatus,
        secret: Option<ClusterSecret>,
    ) -> Client {
        let id = splitmix64(rand::random::<u64>());
        tracing::debug!(client = id, %address, "client connected");
        let inner = Arc::new_cyclic(|me| ClientInner {
            me: me.clone(),
            id,
            counter: AtomicU64::new(0),
            conn: Mutex::new(conn),
            generation: AtomicU64::new(0),
            reattaching: tokio::sync::Mutex::new(()),
            unacked: Mutex::new(VecDeque::new()),
            next_seq: AtomicU64::new(0),
            retained: Mutex::new(HashMap::new()),
            outbox: Mutex::new(Outbox::default()),
            outbox_ready: Arc::new(tokio::sync::Notify::new()),
            flusher_idle: AtomicBool::new(true),
            handle: rt.handle().clone(),
            live: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            runtime: Mutex::new(Some(rt)),
            local: Mutex::new(local),
            address,
            secret,
            cluster: Mutex::new(vec![welcome.clone()]),
            welcome: Mutex::new(welcome),
        });
        // The connection carries this client's session: the node that owns it keeps it
        // while some connection does (and a while after, for a re-attach). Queued before
        // anything else; the answer says nothing more.
        drop(inner.conn().send(ClientRequest::Attach { session: id }));
        // The flusher sends what the outbox holds when no request of the user does it
        // first: woken by the first submission after a quiet spell, it then looks every
        // FLUSH_TICK until the outbox stays empty for a while, so a busy client pays no
        // wake-up per submission. Released keys also leave every RELEASE_INTERVAL.
        let weak = Arc::downgrade(&inner);
        let ready = inner.outbox_ready.clone();
        inner.handle.spawn(async move {
            let mut tick = tokio::time::interval(RELEASE_INTERVAL);
            loop {
                let woken = tokio::select! {
                    _ = ready.notified() => true,
                    _ = tick.tick() => false,
                };
                let Some(inner) = weak.upgrade() else { break };
                if inner.closed.load(Ordering::Acquire) {
                    break;
                }
                if woken {
                    let mut quiet = 0;
                    while quiet < QUIET_TICKS {
                        tokio::time::sleep(FLUSH_TICK).await;
                        if inner.closed.load(Ordering::Acquire) {
                            return;
                        }
                        if inner.flush() { quiet = 0 } else { quiet += 1 }
                    }
                    // A submission made before this store did not wake us: send it now.
                    inner.flusher_idle.store(true, Ordering::SeqCst);
                }
                inner.flush();
            }
        });
        Client {
            closer: Arc::new(Closer(inner.clone())),
            inner,
        }
    }

    /// A client of the node whose task is running on this thread: see
    /// [`crate::worker_client`]. Not the default client.
    pub(crate) fn of_running_task() -> Result<Client> {
        let node = rdask_actors::current_node().ok_or(Error::NotInTask)?;
        let rt = runtime(1)?;
        let actor = node.clone();
        let status = run_on(&rt, async move {
            ractor::call!(actor, NodeMsg::Status).map_err(|_| Error::Closed)
        })??;
        Ok(Client::new(
            rt,
            Conn::Local(node),
            None,
            "inproc://worker".into(),
            status,
            None,
        ))
    }

    /// Submits `specs` as one graph and returns a future per key of `keys` (all failing
    /// with `failed`, and nothing sent, when a spec could not be built).
    pub(crate) fn submit_specs<T>(
        &self,
        specs: Vec<TaskSpec>,
        keys: Vec<Key>,
        failed: Option<Error>,
    ) -> Vec<Future<T>> {
        let submitted = match failed {
            Some(e) => futures::future::ready(Err(e)).boxed().shared(),
            None => self.inner.submit_graph(specs, keys.clone()),
        };
        keys.into_iter()
            .map(|k| Future::new(self.inner.future(k, submitted.clone())))
            .collect()
    }

    pub(crate) fn inner(&self) -> &Arc<ClientInner> {
        &self.inner
    }

    /// The default client: the last one created that did not opt out with
    /// [`Client::set_as_default`]`(false)` and is not closed (Dask's `Client.current()`).
    /// A handle to the same client: clones share the connection, and the client closes when
    /// the last handle is dropped or [`Client::close`]d.
    pub fn current() -> Result<Client> {
        let closer = DEFAULT
            .lock()
            .expect("default client")
            .upgrade()
            .ok_or(Error::NoDefaultClient)?;
        if closer.0.closed.load(Ordering::Acquire) {
            return Err(Error::NoDefaultClient);
        }
        Ok(Client {
            inner: closer.0.clone(),
            closer,
        })
    }

    /// Makes this client the default one ([`Client::current`]), or (`false`) stops it
    /// being the default. Every client is made the default when it is created.
    pub fn set_as_default(&self, yes: bool) {
        let mut default = DEFAULT.lock().expect("default client");
        if yes {
            *default = Arc::downgrade(&self.closer);
        } else if std::ptr::eq(default.as_ptr(), Arc::as_ptr(&self.closer)) {
            *default = std::sync::Weak::new();
        }
    }

    /// Runs `task` on the cluster with `args` (a tuple with one value or future per
    /// parameter) and returns the future of its value at once.
    ///
    /// Arguments that are futures make dependencies, resolved on the cluster. Errors
    /// (a rejected graph, a failed task, an argument that cannot be encoded) come out of
    /// the future.
    pub fn submit<F, P, O, A: Args<P>>(&self, task: TaskFn<F, P, O>, args: A) -> Future<O> {
        self.submit_with(task, args, &TaskOptions::default())
    }

    /// [`Client::submit`] with options: its key (explicit, or `pure`: a hash of the call),
    /// priority, retries, where the task may run and what resources it holds.
    ///
    /// ```
    /// # #[rdask::task] fn inc(x: i64) -> i64 { x + 1 }
    /// # fn main() -> rdask::Result<()> {
    /// let client = rdask::Client::local()?;
    /// let pure = rdask::TaskOptions::new().pure(true);
    /// let a = client.submit_with(inc, (1,), &pure);
    /// let b = client.submit_with(inc, (1,), &pure); // the same call: the same task
    /// assert_eq!(a.key(), b.key());
    /// assert_eq!(rdask::block_on(b.result())?, 2);
    /// # Ok(())
    /// # }
    /// ```
    pub fn submit_with<F, P, O, A: Args<P>>(
        &self,
        task: TaskFn<F, P, O>,
        args: A,
        options: &TaskOptions,
    ) -> Future<O> {
        let (key, specs) = self.spec(&task, args, options, None);
        let submitted = match specs {
            Ok(specs) => self.inner.submit_graph(specs, vec![key.clone()]),
            Err(e) => futures::future::ready(Err(e)).boxed().shared(),
        };
        Future::new(self.inner.future(key, submitted))
    }

    /// The key of one call of `task` (`index`: its place in a map) and its spec, after the
    /// specs of the delayed values its arguments name.
    fn spec<F, P, O, A: Args<P>>(
        &self,
        task: &TaskFn<F, P, O>,
        args: A,
        options: &TaskOptions,
        index: Option<usize>,
    ) -> (Key, Result<Vec<TaskSpec>>) {
        let mut key = match options.key_for(index) {
            Some(k) => Key::from(k.as_str()),
            None => self.inner.next_key(task.prefix()),
        };
        let cx = ArgContext::new(Some(&self.inner), &key);
        let args = args.into_args(&cx);
        let deps = cx.deps.into_inner();
        let args = match args {
            Ok(args) => args,
            Err(e) => return (key, Err(e)),
        };
        if options.is_pure() && options.key_for(index).is_none() {
            key = pure_key(task.prefix(), task.name(), &args);
        }
        let mut spec = TaskSpec::new(key.clone(), task.name(), args);
        options.apply(&mut spec);
        // Delayed values among the arguments are computed with it.
        (
            key,
            Ok(spec).and_then(|s| crate::delayed::with_delayed(&self.inner, deps, s)),
        )
    }

    /// Sends `value` to the cluster and returns a future of it (Dask's `scatter`): pass
    /// the future to many tasks and the value travels from the client once. The key is a
    /// hash of the value, so scattering the same value again gives the same future.
    ///
    /// ```
    /// # #[rdask::task] fn count(words: Vec<String>, w: String) -> usize {
    /// #     words.iter().filter(|x| **x == w).count()
    /// # }
    /// # fn main() -> rdask::Result<()> {
    /// let client = rdask::Client::local()?;
    /// let words: Vec<String> = "a b a c a".split(' ').map(String::from).collect();
    /// let text = client.scatter(&words);
    /// let counts = client.map_args(count, ["a", "b"].map(|w| (&text, w.to_string())));
    /// assert_eq!(rdask::block_on(client.gather(&counts))?, vec![3, 1]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn scatter<T: serde::Serialize>(&self, value: &T) -> Future<T> {
        self.scatter_many(std::iter::once(value)).remove(0)
    }

    /// [`Client::scatter`] of many values at once (one submission): one future each.
    pub fn scatter_many<'a, T: serde::Serialize + 'a>(
        &self,
        values: impl IntoIterator<Item = &'a T>,
    ) -> Vec<Future<T>> {
        let mut specs = Vec::new();
        let mut keys = Vec::new();
        let mut failed = None;
        for v in values {
            match rdask_graph::value::encode(v) {
                Ok(bytes) => {
                    let args = vec![Arg::Value(bytes)];
                    let key = pure_key("scatter", rdask_node::builtins::SCATTER, &args);
                    specs.push(TaskSpec::new(
                        key.clone(),
                        rdask_node::builtins::SCATTER,
                        args,
                    ));
                    keys.push(key);
                }
                Err(e) => {
                    failed.get_or_insert(Error::Encode(e.to_string()));
                    keys.push(self.inner.next_key("scatter"));
                }
            }
        }
        // A value scattered twice in one call is one task.
        let mut seen = std::collections::HashSet::new();
        specs.retain(|s| seen.insert(s.key.clone()));
        self.submit_specs(specs, keys, failed)
    }

    /// Runs a one-parameter `task` on every item (values or futures), as one graph.
    pub fn map<F, P, O, I>(&self, task: TaskFn<F, (P,), O>, items: I) -> Vec<Future<O>>
    where
        I: IntoIterator,
        I::Item: IntoArg<P>,
    {
        self.map_args(task, items.into_iter().map(|x| (x,)))
    }

    /// [`Client::map`] with options (applied to every task; an explicit key `k` gives task
    /// `i` the key `k-i`).
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
        self.map_args_with(task, items.into_iter().map(|x| (x,)), options)
    }

    /// Runs `task` on every tuple of arguments, as one graph: several iterators zipped
    /// together map a task of several parameters (Dask's `client.map(f, xs, ys)`).
    ///
    /// ```
    /// # #[rdask::task] fn add(a: i64, b: i64) -> i64 { a + b }
    /// # fn main() -> rdask::Result<()> {
    /// let client = rdask::Client::local()?;
    /// let sums = client.map_args(add, (0..3).zip(10..13));
    /// assert_eq!(rdask::block_on(client.gather(&sums))?, vec![10, 12, 14]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn map_args<F, P, O, I>(&self, task: TaskFn<F, P, O>, items: I) -> Vec<Future<O>>
    where
        I: IntoIterator,
        I::Item: Args<P>,
    {
        self.map_args_with(task, items, &TaskOptions::default())
    }

    /// [`Client::map_args`] with options.
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
        let mut specs = Vec::new();
        let mut keys = Vec::new();
        let mut failed = None;
        // Delayed values shared by several items are sent once.
        let mut seen = std::collections::HashSet::new();
        for (i, item) in items.into_iter().enumerate() {
            let (key, spec) = self.spec(&task, item, options, Some(i));
            match spec {
                Ok(list) => specs.extend(list.into_iter().filter(|s| seen.insert(s.key.clone()))),
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
            keys.push(key);
        }
        self.submit_specs(specs, keys, failed)
    }

    /// Waits for every future and returns each one's outcome, in order: values and errors
    /// side by side (Dask's `gather(errors="skip")` is `.into_iter().filter_map(Result::ok)`).
    /// The outer error is the client's own (closed, the cluster unreachable).
    ///
    /// ```
    /// # #[rdask::task] fn half(x: i64) -> Result<i64, String> {
    /// #     if x % 2 == 0 { Ok(x / 2) } else { Err(format!("{x} is odd")) }
    /// # }
    /// # fn main() -> rdask::Result<()> {
    /// let client = rdask::Client::local()?;
    /// let halves = client.map(half, 0..4);
    /// let each = rdask::block_on(client.gather_results(&halves))?;
    /// let ok: Vec<i64> = each.into_iter().filter_map(Result::ok).collect();
    /// assert_eq!(ok, vec![0, 1]);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn gather_results<T: DeserializeOwned>(
        &self,
        futures: &[Future<T>],
    ) -> Result<Vec<Result<T>>> {
        let shared: Vec<&Arc<FutureShared>> = futures.iter().map(|f| &f.shared).collect();
        let values = self.inner.fetch_each(&shared, false).await?;
        Ok(futures
            .iter()
            .zip(values)
            .map(|(f, b)| b.and_then(|b| decode(f.key(), &b)))
            .collect())
    }

    /// Waits for the values of many futures, in order. The first error is returned.
    pub async fn gather<T: DeserializeOwned>(&self, futures: &[Future<T>]) -> Result<Vec<T>> {
        let shared: Vec<&Arc<FutureShared>> = futures.iter().map(|f| &f.shared).collect();
        let values = self.inner.fetch(&shared).await?;
        futures
            .iter()
            .zip(values)
            .map(|(f, b)| decode(f.key(), &b))
            .collect()
    }

    /// The nodes of the cluster with their state and load, as the entry node knows them
    /// (Dask's `scheduler_info()`).
    pub async fn nodes(&self) -> Result<Vec<NodeStatus>> {
        self.inner.check_open()?;
        self.inner.flush();
        match self.inner.conn().send(ClientRequest::Info).await? {
            ClientResponse::Info(nodes) => {
                *self.inner.cluster.lock().expect("cluster") = nodes.clone();
                Ok(nodes)
            }
            other => Err(Error::Protocol(format!(
                "unexpected answer to info: {other:?}"
            ))),
        }
    }

    /// What the entry node (the owner of this client's graphs) knows of a future's task:
    /// its state (waiting for how many inputs, where it runs, who holds its value) and
    /// whether each input is available — to see why a result is late.
    pub async fn explain<T>(&self, future: &Future<T>) -> Result<String> {
        let mut lines = self
            .explain_keys(std::slice::from_ref(future.key()))
            .await?;
        Ok(lines.pop().unwrap_or_default())
    }

    /// [`Client::explain`] for keys (of futures, or inputs named by an explanation).
    pub async fn explain_keys(&self, keys: &[Key]) -> Result<Vec<String>> {
        self.inner.check_open()?;
        self.inner.flush();
        let request = ClientRequest::Explain {
            keys: keys.to_vec(),
        };
        match self.inner.conn().send(request).await? {
            ClientResponse::Explained(lines) => Ok(lines
                .into_iter()
                .zip(keys)
                .map(|(l, k)| l.unwrap_or_else(|| format!("{k}: unknown to this node")))
                .collect()),
            other => Err(Error::Protocol(format!(
                "unexpected answer to explain: {other:?}"
            ))),
        }
    }

    /// The nodes that hold each future's value, in order (Dask's `who_has`): node ids as
    /// [`Client::nodes`] shows them; empty while a value is not computed (or was lost).
    pub async fn who_has<T>(&self, futures: &[Future<T>]) -> Result<Vec<Vec<String>>> {
        self.inner.check_open()?;
        self.inner.flush();
        let keys: Vec<Key> = futures.iter().map(|f| f.key().clone()).collect();
        match self
            .inner
            .conn()
            .send(ClientRequest::WhoHas { keys })
            .await?
        {
            ClientResponse::Holders(h) if h.len() == futures.len() => Ok(h
                .into_iter()
                .map(|nodes| nodes.into_iter().map(|n| n.0.to_string()).collect())
                .collect()),
            other => Err(Error::Protocol(format!(
                "unexpected answer to who_has: {other:?}"
            ))),
        }
    }

    /// Sends `request` to the entry node after what the client queued, re-attaching (and
    /// asking again) when the entry node is lost.
    pub(crate) async fn request(&self, request: ClientRequest) -> Result<ClientResponse> {
        self.inner.check_open()?;
        self.inner.flush();
        loop {
            let generation = self.inner.generation.load(Ordering::Acquire);
            match self.inner.conn().send(request.clone()).await {
                Err(Error::ConnectionLost(reason)) if self.inner.remote() => {
                    self.inner.reattach(generation, &reason).await?;
                }
                r => return r,
            }
        }
    }

    /// A future of this client for a result of `session`'s graphs (a published dataset):
    /// it reads the value through the entry node, and holds no reference of its own.
    pub(crate) fn borrowed_future<T>(&self, key: Key, session: u64) -> Future<T> {
        let ready: Submitted = futures::future::ready(Ok(())).boxed().shared();
        Future::new(Arc::new(FutureShared {
            key,
            client: self.inner.clone(),
            submitted: ready,
            cancelled: AtomicBool::new(false),
            borrowed: Some(session),
        }))
    }

    /// The id of this client's session: the upper half of the ids of the graphs it
    /// submits.
    pub fn session_id(&self) -> u64 {
        self.inner.id
    }

    /// The node that owns (schedules) the graphs of client session `session`, by the
    /// cluster's replicated ownership table as the entry node knows it; `None` when it
    /// knows no owner (yet). Every node learns the entry within a few gossip rounds.
    pub async fn session_owner(&self, session: u64) -> Result<Option<String>> {
        self.inner.check_open()?;
        let graph = GraphId(u128::from(session) << 64);
        match self
            .inner
            .conn()
            .send(ClientRequest::Owner { graph })
            .await?
        {
            ClientResponse::Owner(o) => Ok(o.map(|o| o.owner.0.to_string())),
            other => Err(Error::Protocol(format!(
                "unexpected answer to owner: {other:?}"
            ))),
        }
    }

    /// The address the client was given (`inproc://local` for the local cluster).
    pub fn address(&self) -> &str {
        &self.inner.address
    }

    /// The identity of the node this client talks to (its entry node: after its entry
    /// node died, the one it re-attached to).
    pub fn node_id(&self) -> String {
        self.inner
            .welcome
            .lock()
            .expect("welcome")
            .member
            .id
            .0
            .to_string()
    }

    /// The address of the dashboard of the node this client talks to
    /// (`http://host:port/`; every node's shows the whole cluster), if it serves one (Dask's
    /// `client.dashboard_link`).
    pub fn dashboard_link(&self) -> Option<String> {
        let welcome = self.inner.welcome.lock().expect("welcome");
        let link = &welcome.member.dashboard;
        (!link.is_empty()).then(|| format!("{link}/"))
    }

    /// Task threads of the node this client talks to (as it said when the client connected).
    pub fn nthreads(&self) -> u32 {
        self.inner.welcome.lock().expect("welcome").member.nthreads
    }

    /// How many times the client moved to another node after its entry node died.
    pub fn reattached(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// Releases everything the client holds on the cluster, ends its session (unless it
    /// published datasets: then the session lives until they are unpublished) and closes
    /// the connection (the in-process cluster of `Client::local()` stops), for every handle
    /// of it. Futures of this client then fail with [`Error::Closed`]. Dropping the last
    /// handle does the same. A client that goes without closing (its process died, or its
    /// connection broke and it did not re-attach) has its session ended two minutes later;
    /// the results it held futures of stay until released.
    pub fn close(self) {
        self.inner.close();
    }
}

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cluster = self.inner.cluster.lock().expect("cluster");
        let alive = cluster
            .iter()
            .filter(|n| n.state == rdask_gossip::MemberState::Alive);
        let (nodes, threads, memory) = alive.fold((0, 0, 0u64), |(n, t, m), s| {
            (n + 1, t + s.member.nthreads, m + s.member.memory_bytes)
        });
        let welcome = self.inner.welcome.lock().expect("welcome");
        write!(
            f,
            "<Client: {} node={} nodes={nodes} threads={threads} memory={:.2} GiB",
            self.inner.address,
            welcome.member.id,
            memory as f64 / (1u64 << 30) as f64
        )?;
        if !welcome.member.dashboard.is_empty() {
            write!(f, " dashboard={}/", welcome.member.dashboard)?;
        }
        f.write_str(">")
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl ClientInner {
    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    pub(crate) fn next_key(&self, prefix: &str) -> Key {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        Key::with_hash(prefix, splitmix64(self.id ^ splitmix64(n)))
    }

    pub(crate) fn future(self: &Arc<Self>, key: Key, submitted: Submitted) -> Arc<FutureShared> {
        Arc::new(FutureShared {
            key,
            client: self.clone(),
            submitted,
            cancelled: AtomicBool::new(false),
            borrowed: None,
        })
    }

    /// The connection to the entry node.
    fn conn(&self) -> Conn {
        self.conn.lock().expect("connection").clone()
    }

    fn remote(&self) -> bool {
        matches!(*self.conn.lock().expect("connection"), Conn::Remote(_))
    }

    pub(crate) fn submit_graph(&self, tasks: Vec<TaskSpec>, keep: Vec<Key>) -> Submitted {
        if self.check_open().is_err() {
            return futures::future::ready(Err(Error::Closed)).boxed().shared();
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let id = GraphId((u128::from(self.id) << 64) | u128::from(n));
        {
            let mut live = self.live.lock().expect("live set");
            for k in &keep {
                *live.entry(k.clone()).or_insert(0) += 1;
            }
        }
        if self.remote() {
            // The client's copy, in case the cluster loses the graph with its owner.
            let copy = Arc::new(tasks.clone());
            let mut retained = self.retained.lock().expect("retained graphs");
            for k in &keep {
                retained.insert(k.clone(), copy.clone());
            }
        }
        let (tx, rx) = oneshot::channel();
        let first = {
            let mut outbox = self.outbox.lock().expect("outbox");
            outbox.graphs.push(GraphSubmission { id, tasks, keep });
            outbox.acks.push(tx);
            outbox.graphs.len() == 1
        };
        if first && self.flusher_idle.swap(false, Ordering::SeqCst) {
            self.outbox_ready.notify_one();
        }
        async move { rx.await.unwrap_or(Err(Error::Closed)) }
            .boxed()
            .shared()
    }

    pub(crate) fn release(&self, key: &Key) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        let last = {
            let mut live = self.live.lock().expect("live set");
            match live.get_mut(key) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                _ => {
                    live.remove(key);
                    true
                }
            }
        };
        if last {
            self.retained.lock().expect("retained graphs").remove(key);
        }
        let full = {
            let mut outbox = self.outbox.lock().expect("outbox");
            outbox.released.push(key.clone());
            outbox.released.len() >= RELEASE_BATCH
        };
        if full {
            self.flush();
        }
    }

    /// Sends what the outbox holds: the queued graphs as one submission, then the released
    /// keys. Called before any other request, so that every request reaches the node after
    /// the submissions and releases made before it; the outbox stays locked while the
    /// messages are queued on the connection, which keeps that order between threads.
    ///
    /// Returns whether anything was sent.
    fn flush(&self) -> bool {
        let mut outbox = self.outbox.lock().expect("outbox");
        let sent = !outbox.graphs.is_empty() || !outbox.released.is_empty();
        let conn = self.conn();
        while !outbox.graphs.is_empty() {
            // Bound one message: split very large batches.
            let mut tasks = 0;
            let take = outbox
                .graphs
                .iter()
                .take_while(|g| {
                    tasks += g.tasks.len();
                    tasks <= SUBMIT_BATCH
                })
                .count()
                .max(1);
            let graphs: Vec<GraphSubmission> = outbox.graphs.drain(..take).collect();
            let acks: Vec<_> = outbox.acks.drain(..take).collect();
            match &conn {
                Conn::Remote(remote) => self.submit_remote(remote, graphs, acks),
                Conn::Local(_) => {
                    let response = conn.send(ClientRequest::Submit { graphs });
                    self.handle.spawn(async move {
                        let outcomes = submit_outcomes(response.await, acks.len());
                        for (ack, outcome) in acks.into_iter().zip(outcomes) {
                            let _ = ack.send(outcome);
                        }
                    });
                }
            }
        }
        if !outbox.released.is_empty() {
            let keys = std::mem::take(&mut outbox.released);
            // The answer carries nothing.
            drop(conn.send(ClientRequest::Release { keys }));
        }
        sent
    }

    /// Sends new graphs to a remote node, kept until answered (sent again after a
    /// re-attach). Graphs over a limit of the node are not sent: a submission too large as
    /// a whole is split into its graphs, and a graph too large by itself fails its futures
    /// at once with the reason, naming the limit.
    fn submit_remote(
        &self,
        remote: &RemoteNode,
        graphs: Vec<GraphSubmission>,
        acks: Vec<oneshot::Sender<Result<()>>>,
    ) {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        self.unacked.lock().expect("unacked").push_back(Unacked {
            seq,
            graphs: graphs.clone(),
            acks,
        });
        match remote.try_send(ClientRequest::Submit { graphs }) {
            Ok(response) => {
                self.await_submission(seq, response.map(map_remote).map(settle).boxed())
            }
            Err((error, request)) => {
                let entry = {
                    let mut unacked = self.unacked.lock().expect("unacked");
                    let at = unacked.iter().position(|u| u.seq == seq);
                    at.and_then(|i| unacked.remove(i))
                };
                let (Some(entry), ClientRequest::Submit { graphs }) = (entry, request) else {
                    return;
                };
                if graphs.len() > 1 {
                    for (g, ack) in graphs.into_iter().zip(entry.acks) {
                        self.submit_remote(remote, vec![g], vec![ack]);
                    }
                } else {
                    for ack in entry.acks {
                        let _ = ack.send(Err(Error::TooLarge(error.to_string())));
                    }
                }
            }
        }
    }

    /// Sends the unanswered submission `seq` on `conn`; its answer settles its futures, a
    /// lost connection makes the client re-attach (which sends it again).
    fn send_submission(&self, conn: &Conn, seq: u64, graphs: Vec<GraphSubmission>) {
        let response = conn.send(ClientRequest::Submit { graphs });
        self.await_submission(seq, response);
    }

    /// Settles the futures of submission `seq` by its `response`.
    fn await_submission(&self, seq: u64, response: BoxFuture<'static, Result<ClientResponse>>) {
        let generation = self.generation.load(Ordering::Acquire);
        let me = self.me.clone();
        self.handle.spawn(async move {
            let response = response.await;
            let Some(inner) = me.upgrade() else { return };
            if let Err(Error::ConnectionLost(reason)) = &response
                && inner.reattach(generation, reason).await.is_ok()
            {
                return;
            }
            let entry = {
                let mut unacked = inner.unacked.lock().expect("unacked");
                let at = unacked.iter().position(|u| u.seq == seq);
                at.and_then(|i| unacked.remove(i))
            };
            if let Some(entry) = entry {
                let outcomes = submit_outcomes(response, entry.acks.len());
                for (ack, outcome) in entry.acks.into_iter().zip(outcomes) {
                    let _ = ack.send(outcome);
                }
            }
        });
    }

    /// The entry node is gone (`reason`): finds the node that owns this client's graphs now
    /// (by the replicated ownership table, asking the members the client knows), connects
    /// to it and sends again the submissions it did not answer. Another caller that saw
    /// the same loss waits for the same re-attach. Fails when no member can be reached
    /// within [`REATTACH_TIMEOUT`].
    pub(crate) async fn reattach(&self, seen: u64, reason: &str) -> Result<()> {
        // On the client's runtime: the caller may be any executor (`block_on`).
        let me = self.me.upgrade().ok_or(Error::Closed)?;
        let reason = reason.to_string();
        self.handle
            .spawn(async move { me.find_owner(seen, &reason).await })
            .await
            .map_err(|_| Error::Closed)?
    }

    async fn find_owner(&self, seen: u64, reason: &str) -> Result<()> {
        let _one = self.reattaching.lock().await;
        if self.generation.load(Ordering::Acquire) != seen {
            return Ok(());
        }
        self.check_open()?;
        let dead = self.welcome.lock().expect("welcome").member.id.clone();
        tracing::warn!(node = %dead, %reason, "lost the entry node; looking for the new owner of this client's graphs");
        let started = Instant::now();
        let session = GraphId(u128::from(self.id) << 64);
        let mut tried = 0u32;
        let (remote, status) = loop {
            if started.elapsed() > REATTACH_TIMEOUT {
                return Err(Error::ConnectionLost(format!(
                    "{reason}; no member of the cluster could be reached within {REATTACH_TIMEOUT:?}"
                )));
            }
            if tried > 0 {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            tried += 1;
            let members: Vec<NodeStatus> = self.cluster.lock().expect("cluster").clone();
            let mut chosen = None;
            for m in members
                .iter()
                .filter(|m| m.member.id != dead && m.state == rdask_gossip::MemberState::Alive)
            {
                let Some((remote, status)) =
                    dial_member(&m.member.addresses, self.secret.as_ref()).await
                else {
                    continue;
                };
                let conn = Conn::Remote(remote.clone());
                // Learn the cluster afresh.
                if let Ok(ClientResponse::Info(nodes)) = conn.send(ClientRequest::Info).await {
                    *self.cluster.lock().expect("cluster") = nodes;
                }
                let owner = match conn.send(ClientRequest::Owner { graph: session }).await {
                    Ok(ClientResponse::Owner(o)) => o.map(|o| o.owner),
                    _ => continue,
                };
                match owner {
                    // The node that took over.
                    Some(o) if o == status.member.id => chosen = Some((remote, status)),
                    // Not known here yet (the table spreads by gossip), or never recorded
                    // (nothing was accepted): after a while the client's own copies go here.
                    None if started.elapsed() > TAKEOVER_WAIT => chosen = Some((remote, status)),
                    None => {}
                    Some(o) if o != dead => {
                        let addresses = self
                            .cluster
                            .lock()
                            .expect("cluster")
                            .iter()
                            .find(|n| n.member.id == o)
                            .map(|n| n.member.addresses.clone())
                            .unwrap_or_default();
                        if let Some(found) = dial_member(&addresses, self.secret.as_ref()).await {
                            chosen = Some(found);
                        }
                    }
                    // Not taken over yet; after a while, the client's own copies go here.
                    Some(_) if started.elapsed() > TAKEOVER_WAIT => chosen = Some((remote, status)),
                    Some(_) => {}
                }
                break;
            }
            if let Some(c) = chosen {
                break c;
            }
        };
        tracing::info!(node = %status.member.id, "re-attached to the cluster");
        let conn = Conn::Remote(remote);
        drop(conn.send(ClientRequest::Attach { session: self.id }));
        {
            // Hold the outbox: nothing new is sent before the unanswered submissions.
            let _outbox = self.outbox.lock().expect("outbox");
            *self.conn.lock().expect("connection") = conn.clone();
            *self.welcome.lock().expect("welcome") = status;
            self.generation.fetch_add(1, Ordering::AcqRel);
            let again: Vec<(u64, Vec<GraphSubmission>)> = self
                .unacked
                .lock()
                .expect("unacked")
                .iter()
                .map(|u| (u.seq, u.graphs.clone()))
                .collect();
            for (seq, graphs) in again {
                self.send_submission(&conn, seq, graphs);
            }
        }
        Ok(())
    }

    /// Asks the entry node to run the failed tasks of `keys` again; how many run again.
    pub(crate) async fn retry(&self, keys: &[Key]) -> Result<u64> {
        self.check_open()?;
        self.flush();
        loop {
            let generation = self.generation.load(Ordering::Acquire);
            let request = ClientRequest::Retry {
                keys: keys.to_vec(),
            };
            match self.conn().send(request).await {
                Ok(ClientResponse::Retried(n)) => return Ok(n),
                Err(Error::ConnectionLost(reason)) if self.remote() => {
                    self.reattach(generation, &reason).await?;
                }
                Err(e) => return Err(e),
                Ok(other) => {
                    return Err(Error::Protocol(format!(
                        "unexpected answer to retry: {other:?}"
                    )));
                }
            }
        }
    }

    /// Submits again the client's copies of the graphs of `keys`, which the cluster lost
    /// (with their owner, before any backup had them): under new graph ids, holding futures
    /// for these keys only (the others are still counted). Whether every key had a copy.
    fn resubmit_lost(&self, keys: &[Key]) -> bool {
        let mut graphs: Vec<(Arc<Vec<TaskSpec>>, Vec<Key>)> = Vec::new();
        {
            let retained = self.retained.lock().expect("retained graphs");
            for k in keys {
                let Some(copy) = retained.get(k) else {
                    return false;
                };
                match graphs.iter_mut().find(|(g, _)| Arc::ptr_eq(g, copy)) {
                    Some((_, keep)) => keep.push(k.clone()),
                    None => graphs.push((copy.clone(), vec![k.clone()])),
                }
            }
        }
        tracing::warn!(
            keys = keys.len(),
            "the cluster lost results with their owner; submitting them again"
        );
        let mut outbox = self.outbox.lock().expect("outbox");
        for (tasks, keep) in graphs {
            let n = self.counter.fetch_add(1, Ordering::Relaxed);
            let id = GraphId((u128::from(self.id) << 64) | u128::from(n));
            let (tx, _rx) = oneshot::channel();
            outbox.graphs.push(GraphSubmission {
                id,
                tasks: (*tasks).clone(),
                keep,
            });
            outbox.acks.push(tx);
        }
        drop(outbox);
        self.flush();
        true
    }

    /// The values of these futures' keys, waiting as long as they take. A lost entry node
    /// makes the client re-attach and go on waiting there.
    pub(crate) async fn fetch(&self, items: &[&Arc<FutureShared>]) -> Result<Vec<Bytes>> {
        self.fetch_each(items, true).await?.into_iter().collect()
    }

    /// The values of `items`, each with its own outcome. `stop_early`: return at the first
    /// failed item (its error as the `Err` of the whole) instead of waiting for the rest.
    /// The outer `Err` is for the client itself (closed, connection lost for good).
    pub(crate) async fn fetch_each(
        &self,
        items: &[&Arc<FutureShared>],
        stop_early: bool,
    ) -> Result<Vec<Result<Bytes>>> {
        self.check_open()?;
        let mut out: Vec<Option<Result<Bytes>>> = vec![None; items.len()];
        // A future whose argument could not be encoded was never sent.
        for (i, item) in items.iter().enumerate() {
            let early = if let Some(Err(e)) = item.submitted.peek() {
                Some(e.clone())
            } else if item.cancelled.load(Ordering::Acquire) {
                Some(Error::Cancelled(item.key.clone()))
            } else {
                None
            };
            if let Some(e) = early {
                if stop_early {
                    return Err(e);
                }
                out[i] = Some(Err(e));
            }
        }
        self.flush();
        let mut pending: Vec<usize> = (0..items.len()).filter(|&i| out[i].is_none()).collect();
        let mut resubmits = 0;
        while !pending.is_empty() {
            let generation = self.generation.load(Ordering::Acquire);
            let results = match self.gather_round(items, &pending).await {
                Ok(r) => r,
                Err(Error::ConnectionLost(reason)) if self.remote() => {
                    self.reattach(generation, &reason).await?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut still = Vec::new();
            let mut lost = Vec::new();
            for (i, r) in pending.into_iter().zip(results) {
                let failed = match r {
                    KeyResult::Value(b) => {
                        out[i] = Some(Ok(b));
                        continue;
                    }
                    KeyResult::Error(e) => Error::Task(e),
                    KeyResult::Pending => {
                        still.push(i);
                        continue;
                    }
                    KeyResult::Unknown => {
                        // The submission may have been rejected: that is the error to report.
                        match items[i].submitted.clone().await {
                            Err(e) => e,
                            Ok(())
                                if generation > 0
                                    && resubmits < RESUBMITS
                                    && items[i].borrowed.is_none() =>
                            {
                                lost.push(i);
                                still.push(i);
                                continue;
                            }
                            Ok(()) => Error::Lost(items[i].key.clone()),
                        }
                    }
                };
                if stop_early {
                    return Err(failed);
                }
                out[i] = Some(Err(failed));
            }
            if !lost.is_empty() {
                resubmits += 1;
                let keys: Vec<Key> = lost.iter().map(|&i| items[i].key.clone()).collect();
                if !self.resubmit_lost(&keys) {
                    let e = Error::Lost(keys[0].clone());
                    if stop_early {
                        return Err(e);
                    }
                    for &i in &lost {
                        out[i] = Some(Err(Error::Lost(items[i].key.clone())));
                    }
                    still.retain(|i| !lost.contains(i));
                }
            }
            pending = still;
            self.check_open()?;
        }
        Ok(out.into_iter().map(|b| b.expect("filled")).collect())
    }

    /// One long-poll gather of `items[idx]`: this client's own keys from the entry node,
    /// keys of published datasets through it from their owners, all at once. The results
    /// come in the order of `idx`.
    async fn gather_round(
        &self,
        items: &[&Arc<FutureShared>],
        idx: &[usize],
    ) -> Result<Vec<KeyResult>> {
        let ask = |keys| ClientRequest::Gather {
            keys,
            wait_ms: LONG_POLL_MS,
        };
        let answer = |r| match r {
            ClientResponse::Results(r) => Ok(r),
            other => Err(format!("{other:?}")),
        };
        self.round(items, idx, ask, answer, KeyResult::Pending, "gather")
            .await
    }

    /// Where `items[idx]` stand, like [`ClientInner::gather_round`] but without values.
    async fn status_round(
        &self,
        items: &[&Arc<FutureShared>],
        idx: &[usize],
    ) -> Result<Vec<KeyStatus>> {
        let ask = |keys| ClientRequest::Status { keys };
        let answer = |r| match r {
            ClientResponse::Statuses(s) => Ok(s),
            other => Err(format!("{other:?}")),
        };
        self.round(items, idx, ask, answer, KeyStatus::Pending, "status")
            .await
    }

    /// One request per origin of `items[idx]` (made by `ask` from the keys), sent at once;
    /// the answers (taken out by `answer`, one per key; another response shown as text)
    /// in the order of `idx`.
    async fn round<T: Clone>(
        &self,
        items: &[&Arc<FutureShared>],
        idx: &[usize],
        ask: impl Fn(Vec<Key>) -> ClientRequest,
        answer: impl Fn(ClientResponse) -> std::result::Result<Vec<T>, String> + Copy,
        pending: T,
        what: &str,
    ) -> Result<Vec<T>> {
        let groups = by_origin(items, idx);
        let asks = groups.iter().map(|(origin, at)| {
            let keys: Vec<Key> = at.iter().map(|&p| items[idx[p]].key.clone()).collect();
            let n = keys.len();
            let request = ask(keys);
            async move {
                match answer(self.send_for(*origin, request).await?) {
                    Ok(v) if v.len() == n => Ok(v),
                    Ok(v) => Err(Error::Protocol(format!(
                        "{} answers to a {what} of {n} keys",
                        v.len()
                    ))),
                    Err(other) => Err(Error::Protocol(format!(
                        "unexpected answer to {what}: {other}"
                    ))),
                }
            }
        });
        let answers = futures::future::join_all(asks).await;
        let mut out = vec![pending; idx.len()];
        for ((_, at), answer) in groups.iter().zip(answers) {
            for (&p, v) in at.iter().zip(answer?) {
                out[p] = v;
            }
        }
        Ok(out)
    }

    /// Sends a `Gather` or `Status` about keys of `origin`: this client's own (`None`) to
    /// the entry node; a published dataset's to its session's owner (by the ownership
    /// table), forwarded by the entry node. While no owner is known (a take-over under
    /// way), every key is pending.
    async fn send_for(
        &self,
        origin: Option<u64>,
        request: ClientRequest,
    ) -> Result<ClientResponse> {
        let Some(session) = origin else {
            return self.conn().send(request).await;
        };
        let graph = GraphId(u128::from(session) << 64);
        let owner = match self.conn().send(ClientRequest::Owner { graph }).await? {
            ClientResponse::Owner(o) => o.map(|o| o.owner),
            other => {
                return Err(Error::Protocol(format!(
                    "unexpected answer to owner: {other:?}"
                )));
            }
        };
        match owner {
            Some(owner) => {
                let Some(request) = ForwardedRequest::from_request(request) else {
                    return Err(Error::Protocol(
                        "only a gather or a status can be forwarded".into(),
                    ));
                };
                self.conn()
                    .send(ClientRequest::Forward { owner, request })
                    .await
            }
            None => {
                // On the client's runtime: the caller may be any executor.
                self.spawn(async { tokio::time::sleep(Duration::from_millis(200)).await })
                    .await?;
                Ok(match request {
                    ClientRequest::Gather { keys, .. } => {
                        ClientResponse::Results(vec![KeyResult::Pending; keys.len()])
                    }
                    ClientRequest::Status { keys } | ClientRequest::AwaitStatus { keys, .. } => {
                        ClientResponse::Statuses(vec![KeyStatus::Pending; keys.len()])
                    }
                    _ => ClientResponse::Refused("not a gather or a status".into()),
                })
            }
        }
    }

    /// Runs `f` on the client's runtime (its timers and sockets live there) and waits for
    /// it from any executor.
    pub(crate) async fn spawn<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Result<T> {
        self.handle.spawn(f).await.map_err(|_| Error::Closed)
    }

    /// Where these futures stand (no value travels).
    pub(crate) async fn statuses(&self, items: &[&Arc<FutureShared>]) -> Result<Vec<FutureStatus>> {
        self.check_open()?;
        let mut out = vec![FutureStatus::Pending; items.len()];
        let mut ask = Vec::new();
        for (i, item) in items.iter().enumerate() {
            if item.cancelled.load(Ordering::Acquire) {
                out[i] = FutureStatus::Cancelled;
            } else if let Some(Err(_)) = item.submitted.peek() {
                // Never accepted: its error is what `result()` gives.
                out[i] = FutureStatus::Error;
            } else {
                ask.push(i);
            }
        }
        if ask.is_empty() {
            return Ok(out);
        }
        self.flush();
        let statuses = loop {
            let generation = self.generation.load(Ordering::Acquire);
            match self.status_round(items, &ask).await {
                Ok(s) => break s,
                Err(Error::ConnectionLost(reason)) if self.remote() => {
                    self.reattach(generation, &reason).await?;
                }
                Err(e) => return Err(e),
            }
        };
        for (&i, s) in ask.iter().zip(statuses) {
            out[i] = future_status(items[i], s);
        }
        Ok(out)
    }

    /// The statuses of `items[idx]` (as [`ClientInner::statuses`]), answered by the nodes
    /// once one of them is done (`all`: every one), or after `wait`: a wait woken by the
    /// completion itself, not by polling.
    pub(crate) async fn await_statuses(
        &self,
        items: &[&Arc<FutureShared>],
        idx: &[usize],
        all: bool,
        wait: Duration,
    ) -> Result<Vec<FutureStatus>> {
        self.check_open()?;
        if idx
            .iter()
            .any(|&i| items[i].cancelled.load(Ordering::Acquire))
            && !all
        {
            return self.statuses_at(items, idx).await;
        }
        self.flush();
        let statuses = loop {
            let generation = self.generation.load(Ordering::Acquire);
            match self.await_round(items, idx, all, wait).await {
                Ok(s) => break s,
                Err(Error::ConnectionLost(reason)) if self.remote() => {
                    self.reattach(generation, &reason).await?;
                }
                Err(e) => return Err(e),
            }
        };
        // Cancelled meanwhile: said here, whatever the node answered.
        Ok(idx
            .iter()
            .zip(statuses)
            .map(|(&i, s)| {
                if items[i].cancelled.load(Ordering::Acquire) {
                    FutureStatus::Cancelled
                } else {
                    future_status(items[i], s)
                }
            })
            .collect())
    }

    /// [`ClientInner::statuses`] of `items[idx]`, in the order of `idx`.
    async fn statuses_at(
        &self,
        items: &[&Arc<FutureShared>],
        idx: &[usize],
    ) -> Result<Vec<FutureStatus>> {
        let some: Vec<&Arc<FutureShared>> = idx.iter().map(|&i| items[i]).collect();
        self.statuses(&some).await
    }

    /// One `AwaitStatus` per origin of `items[idx]`, sent at once. With `all`, every answer
    /// is awaited; otherwise the first answer that has a key done is enough (the others are
    /// taken as pending; their nodes answer into the void when they time out).
    async fn await_round(
        &self,
        items: &[&Arc<FutureShared>],
        idx: &[usize],
        all: bool,
        wait: Duration,
    ) -> Result<Vec<KeyStatus>> {
        let wait_ms = wait.as_millis().min(u128::from(u32::MAX)) as u32;
        use futures::StreamExt;
        let groups = by_origin(items, idx);
        let mut asks: futures::stream::FuturesUnordered<_> = groups
            .iter()
            .map(|(origin, at)| {
                let keys: Vec<Key> = at.iter().map(|&p| items[idx[p]].key.clone()).collect();
                let n = keys.len();
                let request = ClientRequest::AwaitStatus { keys, all, wait_ms };
                async move {
                    let answer = match self.send_for(*origin, request).await? {
                        ClientResponse::Statuses(s) if s.len() == n => s,
                        ClientResponse::Statuses(s) => {
                            return Err(Error::Protocol(format!(
                                "{} answers to a status of {n} keys",
                                s.len()
                            )));
                        }
                        other => {
                            return Err(Error::Protocol(format!(
                                "unexpected answer to a status: {other:?}"
                            )));
                        }
                    };
                    Ok::<_, Error>((at, answer))
                }
            })
            .collect();
        let mut out = vec![KeyStatus::Pending; idx.len()];
        while let Some(answer) = asks.next().await {
            let (at, answer) = answer?;
            let mut any_done = false;
            for (&p, v) in at.iter().zip(answer) {
                any_done |= !matches!(v, KeyStatus::Pending);
                out[p] = v;
            }
            if any_done && !all {
                break;
            }
        }
        Ok(out)
    }

    fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let local = self.local.lock().expect("local node").take();
        if local.is_none() {
            // Release what this client holds on a remote cluster, and wait (briefly) until
            // every queued operation has reached the node.
            let mut keys: Vec<Key> = self
                .live
                .lock()
                .expect("live set")
                .drain()
                .flat_map(|(k, n)| std::iter::repeat_n(k, n))
                .collect();
            {
                let mut outbox = self.outbox.lock().expect("outbox");
                outbox.graphs.clear();
                outbox.acks.clear();
                keys.append(&mut outbox.released);
            }
            let conn = self.conn();
            let released = conn.send(ClientRequest::Release { keys });
            // Then the session ends (requests of one connection are handled in order).
            let closed = conn.send(ClientRequest::Close { session: self.id });
            let (tx, rx) = std::sync::mpsc::channel();
            self.handle.spawn(async move {
                let _ = released.await;
                let _ = tx.send(closed.await);
            });
            let _ = rx.recv_timeout(Duration::from_secs(5));
        }
        drop(local);
        if let Some(rt) = self.runtime.lock().expect("runtime").take() {
            rt.shutdown_background();
        }
        tracing::debug!(client = self.id, "client closed");
    }
}

/// Positions in `idx` grouped by where their keys are served: this client's own first,
/// then one group per borrowed session.
/// A future's status from its key's status at the node.
fn future_status(item: &FutureShared, s: KeyStatus) -> FutureStatus {
    match s {
        KeyStatus::Pending => FutureStatus::Pending,
        KeyStatus::Finished => FutureStatus::Finished,
        KeyStatus::Error(_) => FutureStatus::Error,
        KeyStatus::Unknown if item.borrowed.is_some() => FutureStatus::Lost,
        KeyStatus::Unknown => match item.submitted.peek() {
            // Not accepted yet: the submission is on its way.
            None => FutureStatus::Pending,
            Some(_) => FutureStatus::Lost,
        },
    }
}

fn by_origin(items: &[&Arc<FutureShared>], idx: &[usize]) -> Vec<(Option<u64>, Vec<usize>)> {
    let mut groups: Vec<(Option<u64>, Vec<usize>)> = Vec::new();
    for (p, &i) in idx.iter().enumerate() {
        let origin = items[i].borrowed;
        match groups.iter_mut().find(|(o, _)| *o == origin) {
            Some((_, at)) => at.push(p),
            None => groups.push((origin, vec![p])),
        }
    }
    groups.sort_by_key(|(o, _)| o.is_some());
    groups
}

/// The futures' outcomes of one submission, from the node's answer.
fn submit_outcomes(response: Result<ClientResponse>, n: usize) -> Vec<Result<()>> {
    match response {
        Ok(ClientResponse::Submitted(o)) if o.len() == n => o
            .into_iter()
            .map(|o| match o {
                SubmitOutcome::Accepted => Ok(()),
                SubmitOutcome::Rejected(e) => Err(Error::GraphRejected(e)),
            })
            .collect(),
        Ok(other) => {
            let e = Error::Protocol(format!("unexpected answer to submit: {other:?}"));
            vec![Err(e); n]
        }
        Err(e) => vec![Err(e); n],
    }
}

/// Connects to a member by any of its addresses and says hello: the session and the
/// member's status, or `None` when none answers.
async fn dial_member(
    addresses: &[String],
    secret: Option<&ClusterSecret>,
) -> Option<(RemoteNode, NodeStatus)> {
    for a in addresses {
        let Ok(addr) = parse_address(a) else { continue };
        let Ok(remote) = tokio::time::timeout(
            REATTACH_DIAL,
            RemoteNode::connect(
                addr,
                rdask_node::codec::DEFAULT_MAX_FRAME,
                REATTACH_DIAL,
                secret,
            ),
        )
        .await
        else {
            continue;
        };
        let Ok(remote) = remote else { continue };
        let hello = ClientRequest::Hello {
            protocol: PROTOCOL_VERSION,
            version: env!("CARGO_PKG_VERSION").to_string(),
        };
        if let Ok(ClientResponse::Welcome(status, limits)) =
            Conn::Remote(remote.clone()).send(hello).await
        {
            remote.set_limits(limits.max_frame_bytes, limits.max_value_bytes);
            return Some((remote, status));
        }
    }
    None
}
