//! The rdask node: the library behind the `rdask-node` binary.
//!
//! Every machine of an rdask cluster runs the same node. A node accepts graphs from
//! clients, runs their tasks on a dedicated thread pool, stores results and answers the
//! client; it gossips membership with its peers, places tasks on them, steals work from
//! them and fetches results from them (`/rdask/node/1`).
//!
//! - [`start`] starts a node inside a tokio runtime and returns a [`NodeHandle`]; the
//!   in-process local cluster of the `rdask` crate uses it;
//! - [`main`] is the whole program of a node binary: command line, logging, signals. A
//!   binary that carries its own task functions is one line:
//!   `fn main() { rdask_node::main() }` (or `rdask::node_main()` through the client crate).

pub mod allocator;
pub mod builtins;
pub mod codec;
mod config;
pub mod dashboard;
pub mod datapath;
pub mod fuzzing;
pub mod net;
pub mod secret;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use ractor::ActorRef;
use rdask_actors::protocol::NodeStatus;
use rdask_actors::{NodeArgs, NodeMsg, spawn_node};
use rdask_gossip::{MemberInfo, NodeId, PROTOCOL_VERSION};
use rdask_graph::Registry;
use tokio::sync::watch;

pub use config::{Cli, MemoryLimit, NodeConfig, Resources, parse_memory_limit, parse_resources};
pub use net::{NetError, RemoteError, RemoteNode};
/// The client protocol's messages (re-exported for tools and tests that speak it).
pub use rdask_actors::protocol as rdask_actors_protocol;
pub use secret::ClusterSecret;

/// The rdask version of this build.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The network could not be set up.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The identity file could not be read or written.
    #[error("identity file {path}: {reason}")]
    Identity {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The binary registers two task functions under one name.
    #[error(
        "task functions registered more than once: {0:?}; give one of each pair another \
         name with #[rdask::task(name = \"…\")]"
    )]
    DuplicateFunctions(Vec<&'static str>),
    /// The node actor could not start.
    #[error("cannot start the node: {0}")]
    Spawn(String),
    /// The dashboard's address could not be bound.
    #[error(
        "cannot serve the dashboard on {addr}: {reason} (--dashboard-address, or --no-dashboard)"
    )]
    Dashboard {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
}

/// The link to a dashboard bound at `bound`: its own address, unless that is unspecified
/// (0.0.0.0), then the host of the advertised multiaddr (or loopback).
fn dashboard_link(bound: SocketAddr, advertised: Option<&Multiaddr>) -> String {
    use libp2p::multiaddr::Protocol;
    let host = if bound.ip().is_unspecified() {
        advertised
            .and_then(|a| {
                a.iter().find_map(|p| match p {
                    Protocol::Ip4(ip) => Some(ip.to_string()),
                    Protocol::Ip6(ip) => Some(format!("[{ip}]")),
                    Protocol::Dns(h) | Protocol::Dns4(h) | Protocol::Dns6(h) => Some(h.to_string()),
                    _ => None,
                })
            })
            .unwrap_or_else(|| "127.0.0.1".into())
    } else if bound.is_ipv6() {
        format!("[{}]", bound.ip())
    } else {
        bound.ip().to_string()
    };
    format!("http://{host}:{}", bound.port())
}

/// Longest a stopping node spends handing its work over before it stops anyway.
pub const LEAVE_TIMEOUT: Duration = Duration::from_secs(30);

/// A running node.
pub struct NodeHandle {
    peer_id: PeerId,
    listen_addrs: Vec<Multiaddr>,
    actor: ActorRef<NodeMsg>,
    gossip: Option<ActorRef<rdask_actors::GossipMsg>>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    dashboard: Option<(SocketAddr, tokio::task::JoinHandle<()>)>,
}

impl NodeHandle {
    /// The node's identity.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The addresses it listened on at start (empty for a node without network).
    pub fn listen_addrs(&self) -> &[Multiaddr] {
        &self.listen_addrs
    }

    /// The address of the node's dashboard, if it serves one.
    pub fn dashboard_addr(&self) -> Option<SocketAddr> {
        self.dashboard.as_ref().map(|(a, _)| *a)
    }

    /// The node actor, for in-process clients.
    pub fn actor(&self) -> ActorRef<NodeMsg> {
        self.actor.clone()
    }

    /// The node's status: its member record and load.
    pub async fn status(&self) -> Option<NodeStatus> {
        ractor::call!(self.actor, NodeMsg::Status).ok()
    }

    /// Hands the node's work over to its peers, as a stop does first (see
    /// [`NodeHandle::shutdown`]): queued tasks go back to their owners, running ones
    /// finish, results are copied to peers and the graphs it owns go to its first backup.
    /// Returns whether that finished within `timeout`. A node without peers has nothing to
    /// hand over.
    pub async fn leave(&self, timeout: Duration) -> bool {
        if self.gossip.is_none() {
            return true;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let msg = NodeMsg::Leave(Box::new(move || {
            let _ = tx.send(());
        }));
        if self.actor.send_message(msg).is_err() {
            return false;
        }
        let done = tokio::time::timeout(timeout, rx).await.is_ok();
        if done {
            tracing::info!("handed everything over");
        } else {
            tracing::warn!(
                ?timeout,
                "the hand-over did not finish in time; stopping anyway"
            );
        }
        done
    }

    /// Stops the node: hands its work over (at most [`LEAVE_TIMEOUT`]), tells the cluster
    /// it leaves, then closes its listeners, connections and task pool.
    pub async fn shutdown(self) {
        self.leave(LEAVE_TIMEOUT).await;
        if let Some((_, task)) = &self.dashboard {
            task.abort();
        }
        if let Some(gossip) = &self.gossip {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let leave = rdask_actors::GossipMsg::Leave(Box::new(move || {
                let _ = tx.send(());
            }));
            if gossip.send_message(leave).is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(1), rx).await;
                // Let the network loop hand the leave notices to the peers.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            gossip.stop(None);
        }
        let _ = self.shutdown.send(true);
        self.actor.stop(Some("shutdown".into()));
        // The actor and the network loop end at once; the accept loops and the data port
        // refresher wait for input that will not come: a second at most, then they are
        // aborted (everything that mattered was handed over by the leave).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        for mut t in self.tasks {
            let _ = tokio::time::timeout_at(deadline, &mut t).await;
            t.abort();
        }
    }
}

/// Loads the keypair in `path`, or creates it there.
pub fn load_or_create_identity(path: &Path) -> Result<Keypair, NodeError> {
    let err = |reason: String| NodeError::Identity {
        path: path.display().to_string(),
        reason,
    };
    match std::fs::read(path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).map_err(|e| err(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key.to_protobuf_encoding().map_err(|e| err(e.to_string()))?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
            }
            std::fs::write(path, bytes).map_err(|e| err(e.to_string()))?;
            Ok(key)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

/// Total memory of this machine in bytes (0 when unknown).
pub(crate) fn machine_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Whether an IP address of `addr` passes `test`.
fn any_ip(addr: &Multiaddr, test: impl Fn(std::net::IpAddr) -> bool) -> bool {
    use libp2p::multiaddr::Protocol;
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => test(ip.into()),
        Protocol::Ip6(ip) => test(ip.into()),
        _ => false,
    })
}

/// The listen address to advertise to peers: a concrete (not unspecified) one, preferring
/// one that is not loopback.
fn pick_advertised(addrs: &[Multiaddr]) -> Option<Multiaddr> {
    let concrete = |a: &&Multiaddr| !any_ip(a, |ip| ip.is_unspecified());
    addrs
        .iter()
        .filter(concrete)
        .find(|a| !any_ip(a, |ip| ip.is_loopback()))
        .or_else(|| addrs.iter().find(concrete))
        .cloned()
}

fn member_info(
    id: NodeId,
    addresses: Vec<String>,
    nthreads: usize,
    registry: &Registry,
    config: &NodeConfig,
    data_port: u16,
) -> MemberInfo {
    MemberInfo {
        id,
        addresses,
        nthreads: nthreads as u32,
        memory_bytes: machine_memory(),
        functions_digest: registry.digest(),
        functions: registry.len() as u32,
        version: VERSION.to_string(),
        protocol: PROTOCOL_VERSION,
        resources: config.resources.clone(),
        dashboard: String::new(),
        memory_limit: config.memory_limit.unwrap_or(0),
        data_port,
        name: config.name.clone(),
    }
}

/// Seed of a node's gossip choices: from the OS, as a production node has no reason to be
/// reproducible (the simulator seeds the same core itself).
fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(rdask_actors::now_ms());
    h.finish()
}

/// Keeps the data path's table of peers' data ports up to date with the gossiped members
/// (five times a second: a cluster that just formed moves its first large values fast).
async fn refresh_data_ports(
    gossip: ractor::ActorRef<rdask_actors::GossipMsg>,
    lanes: std::sync::Arc<datapath::DataLanes>,
) {
    loop {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let ask = rdask_actors::GossipMsg::Members(Box::new(move |m| {
            let _ = tx.send(m);
        }));
        if gossip.send_message(ask).is_err() {
            return;
        }
        if let Ok(members) = rx.await {
            lanes.set_ports(
                members
                    .into_iter()
                    .filter(|m| m.state == rdask_gossip::MemberState::Alive)
                    .filter_map(|m| {
                        let host = m
                            .info
                            .addresses
                            .first()
                            .and_then(|a| datapath::host_of(a))?;
                        Some((m.info.id, host, m.info.data_port))
                    }),
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts a node in the current tokio runtime.
///
/// With no listen address the node has no network at all (the in-process local cluster).
/// Returns once every listener has its address.
pub async fn start(
    config: NodeConfig,
    registry: &'static Registry,
) -> Result<NodeHandle, NodeError> {
    if !registry.duplicates().is_empty() {
        return Err(NodeError::DuplicateFunctions(
            registry.duplicates().to_vec(),
        ));
    }
    // Task functions of this process make no value larger than the node would send.
    rdask_graph::registry::set_max_value_bytes(config.max_value);
    let keypair = match &config.identity {
        Some(path) => load_or_create_identity(path)?,
        None => Keypair::generate_ed25519(),
    };
    let peer_id = keypair.public().to_peer_id();
    // The data path signs its handshakes with the node's key (the swarm takes the key).
    let data_key = keypair.clone();
    let nthreads = config.nthreads.max(1);
    let dashboard_listener = match config.dashboard {
        Some(addr) => Some(
            dashboard::bind(addr)
                .await
                .map_err(|e| NodeError::Dashboard {
                    addr,
                    reason: e.to_string(),
                })?,
        ),
        None => None,
    };
    let dashboard_addr = dashboard_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok());
    let mut member = member_info(
        NodeId(peer_id.to_string().into()),
        Vec::new(),
        nthreads,
        registry,
        &config,
        0,
    );
    member.dashboard = dashboard_addr
        .map(|a| dashboard_link(a, None))
        .unwrap_or_default();
    // The swarm first (when there is a network): the node actor sends to peers through it.
    let swarm = if !config.listen.is_empty() || !config.join.is_empty() {
        let agent = format!("rdask-node/{VERSION}");
        if let Some(secret) = &config.secret {
            tracing::info!(
                fingerprint = %secret.fingerprint(),
                "cluster secret: only members and clients with the same one can connect"
            );
        }
        Some(net::build_swarm(keypair, config.secret.as_ref(), |k| {
            net::node_behaviour(k, agent, config.max_connections)
        })?)
    } else {
        None
    };
    // The data path for large values (not with a secret: it would bypass it).
    let data_listener = match (
        &swarm,
        config.data_port,
        &config.secret,
        config.listen.first(),
    ) {
        (Some(_), Some(port), None, Some(listen)) => Some(
            datapath::bind(listen, port)
                .await
                .map_err(|e| NetError::Listen {
                    addr: listen.clone(),
                    reason: format!("the data port {port}: {e}"),
                })?,
        ),
        (Some(_), Some(_), Some(_), _) => {
            tracing::info!("no data path: with a cluster secret every value goes through libp2p");
            None
        }
        _ => None,
    };
    let data_port = data_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map_or(0, |a| a.port());
    member.data_port = data_port;
    let data_stats = std::sync::Arc::new(datapath::DataStats::default());
    let lanes = data_listener.as_ref().map(|_| {
        std::sync::Arc::new(datapath::DataLanes::new(
            data_key,
            config.max_frame,
            config.max_value,
            data_stats.clone(),
        ))
    });
    let send_peer = swarm.as_ref().map(|swarm| {
        let links = net::PeerLinks::new(
            swarm.behaviour().streams.new_control(),
            lanes.clone(),
            config.max_frame,
            config.max_value,
        );
        Box::new(move |to, batch| links.send(to, batch)) as rdask_actors::PeerSend
    });
    let (actor, actor_task) = spawn_node(NodeArgs {
        member,
        registry,
        nthreads,
        send_peer,
        memory_limit: config.memory_limit,
        limits: rdask_actors::protocol::NodeLimits {
            max_frame_bytes: config.max_frame as u64,
            max_value_bytes: config.max_value,
            max_tasks_per_submit: config.max_tasks_per_submit,
        },
    })
    .await
    .map_err(|e| NodeError::Spawn(e.to_string()))?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = vec![actor_task];
    let inbox = net::inbox();
    let mut listen_addrs = Vec::new();
    let mut gossip_actor = None;

    if let Some(mut swarm) = swarm {
        let mut control = swarm.behaviour().streams.new_control();
        let incoming = control
            .accept(codec::CLIENT_PROTOCOL)
            .map_err(|e| NetError::Build(e.to_string()))?;
        tasks.push(tokio::spawn(net::accept_sessions(
            incoming,
            actor.clone(),
            net::SessionLimits {
                max_frame: config.max_frame,
                max_value: config.max_value,
                max_sessions: config.max_sessions,
            },
            data_stats.clone(),
        )));
        let from_peers = control
            .accept(codec::NODE_PROTOCOL)
            .map_err(|e| NetError::Build(e.to_string()))?;
        tasks.push(tokio::spawn(net::accept_peer_streams(
            from_peers,
            actor.clone(),
            inbox.clone(),
            config.max_frame,
            config.max_value,
        )));
        for addr in &config.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| NetError::Listen {
                    addr: addr.clone(),
                    reason: e.to_string(),
                })?;
        }
        // Wait for the listeners' addresses so that callers (and the printed banner) know
        // them, e.g. the port chosen for `/tcp/0`.
        let wanted = config.listen.len();
        let mut ready = std::collections::HashSet::new();
        let wait = async {
            use futures::StreamExt;
            while ready.len() < wanted {
                match swarm.select_next_some().await {
                    libp2p::swarm::SwarmEvent::NewListenAddr {
                        listener_id,
                        address,
                    } => {
                        ready.insert(listener_id);
                        listen_addrs.push(address);
                    }
                    libp2p::swarm::SwarmEvent::ListenerError { error, .. }
                    | libp2p::swarm::SwarmEvent::ListenerClosed {
                        reason: Err(error), ..
                    } => return Err(error.to_string()),
                    _ => {}
                }
            }
            Ok(())
        };
        match tokio::time::timeout(Duration::from_secs(10), wait).await {
            Ok(Ok(())) => {
                // A listener on 0.0.0.0 (or ::) reports one address per interface, one
                // after another: take them all (until a quiet 300 ms), so that the address
                // advertised is not loopback just because loopback came first.
                if config
                    .listen
                    .iter()
                    .any(|a| any_ip(a, |ip| ip.is_unspecified()))
                {
                    use futures::StreamExt;
                    let quiet = Duration::from_millis(300);
                    while let Ok(event) =
                        tokio::time::timeout(quiet, swarm.select_next_some()).await
                    {
                        if let libp2p::swarm::SwarmEvent::NewListenAddr { address, .. } = event {
                            listen_addrs.push(address);
                        }
                    }
                }
            }
            Ok(Err(reason)) => {
                return Err(NetError::Listen {
                    addr: config.listen[0].clone(),
                    reason,
                }
                .into());
            }
            Err(_) => {
                return Err(NetError::Listen {
                    addr: config.listen[0].clone(),
                    reason: "no address within 10 s".into(),
                }
                .into());
            }
        }
        // This node as a member: an address others can dial, and a generation that a
        // restart with the same identity raises.
        let advertised = config
            .advertise
            .clone()
            .or_else(|| pick_advertised(&listen_addrs))
            .map(|a| a.to_string())
            .unwrap_or_default();
        // The member record lists the advertised address first: peers dial it (and reach
        // the data port on its host); the other listen addresses follow.
        let ordered: Vec<Multiaddr> = advertised
            .parse::<Multiaddr>()
            .ok()
            .into_iter()
            .chain(
                listen_addrs
                    .iter()
                    .filter(|a| a.to_string() != advertised)
                    .cloned(),
            )
            .collect();
        let _ = actor.send_message(NodeMsg::SetAddresses(
            ordered.iter().map(|a| a.to_string()).collect(),
        ));
        let link = dashboard_addr.map(|a| dashboard_link(a, advertised.parse().ok().as_ref()));
        if let Some(link) = &link {
            let _ = actor.send_message(NodeMsg::SetDashboard(link.clone()));
        }
        let me = rdask_gossip::Peer {
            node: NodeId(peer_id.to_string().into()),
            addr: advertised.into(),
            generation: rdask_actors::now_ms(),
        };
        // Gossip is lossy by design: datagrams past the queue are dropped.
        let (gossip_tx, gossip_rx) = tokio::sync::mpsc::channel(net::GOSSIP_QUEUE);
        let (gossip, gossip_task) = rdask_actors::spawn_gossip(rdask_actors::GossipArgs {
            me: me.clone(),
            info: MemberInfo {
                dashboard: link.clone().unwrap_or_default(),
                ..member_info(
                    me.node.clone(),
                    std::iter::once(me.addr.to_string())
                        .chain(
                            listen_addrs
                                .iter()
                                .map(|a| a.to_string())
                                .filter(|a| **a != *me.addr),
                        )
                        .collect(),
                    nthreads,
                    registry,
                    &config,
                    data_port,
                )
            },
            config: rdask_gossip::GossipConfig::lan(config.cluster_size),
            seed: rand_seed(),
            send: Box::new(move |to, data| {
                let _ = gossip_tx.try_send((to, data));
            }),
        })
        .await
        .map_err(|e| NodeError::Spawn(e.to_string()))?;
        tasks.push(gossip_task);
        let _ = actor.send_message(NodeMsg::SetGossip(gossip.clone()));
        gossip_actor = Some(gossip.clone());
        if let (Some(listener), Some(lanes)) = (data_listener, lanes) {
            tasks.push(tokio::spawn(datapath::serve_data(
                listener,
                peer_id,
                actor.clone(),
                inbox.clone(),
                data_stats.clone(),
                config.max_frame,
                config.max_value,
            )));
            tasks.push(tokio::spawn(refresh_data_ports(gossip.clone(), lanes)));
        }
        let wiring = net::GossipWiring {
            actor: gossip,
            outgoing: gossip_rx,
            joins: config.join.clone(),
        };
        tasks.push(tokio::spawn(net::run_node_swarm(
            swarm,
            actor.clone(),
            shutdown_rx,
            ordered,
            wiring,
        )));
    }
    let dashboard = dashboard_listener.map(|listener| {
        let addr = dashboard_addr.expect("a bound listener has an address");
        let task = dashboard::serve(
            listener,
            actor.clone(),
            gossip_actor.clone(),
            NodeId(peer_id.to_string().into()),
            config.max_frame,
            config.secret,
            data_stats,
        );
        tracing::info!(%addr, "dashboard");
        (addr, task)
    });
    Ok(NodeHandle {
        peer_id,
        listen_addrs,
        actor,
        gossip: gossip_actor,
        shutdown,
        tasks,
        dashboard,
    })
}

/// Sets up logging through `tracing`, filtered by `RUST_LOG` (default `info`), in colour
/// only when standard error is a terminal and `NO_COLOR` is not set. Does nothing if a
/// subscriber is already installed.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,libp2p_swarm=warn"));
    // Colour only on a terminal, and never when NO_COLOR is set (https://no-color.org).
    use std::io::IsTerminal;
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .try_init();
}

/// The whole program of a node binary: parses the command line, logs through `tracing`
/// (`RUST_LOG`), starts the node with every task function linked into the binary, prints
/// its identity and addresses, and stops cleanly on SIGINT or SIGTERM.
///
/// A crate's task functions are in the binary only if the binary names that crate: a node
/// binary for functions defined in another crate says `use that_crate as _;`.
pub fn main() {
    main_with(allocator::Declared::Unknown)
}

/// [`main`] of a binary that says which allocator it declared: a node that cannot tell
/// warns at start that the system's allocator is slow on large values.
pub fn main_with(allocator: allocator::Declared) {
    use clap::Parser;
    let cli = Cli::parse();
    init_logging();
    match allocator {
        allocator::Declared::MiMalloc => tracing::info!(allocator = "mimalloc", "starting"),
        allocator::Declared::Unknown => tracing::warn!(
            "this node binary was not declared with `rdask::node_main!()`: unless it sets a \
             global allocator of its own, it runs on the system's, which moves large values \
             about 3x slower than rdask-node (README: Your own node binary)"
        ),
    }
    std::process::exit(run_cli(cli))
}

/// Runs a node from parsed command-line options; returns the process exit code.
pub fn run_cli(cli: Cli) -> i32 {
    init_logging();
    log_task_panics();

    let registry = Registry::global();
    // Keep the built-in functions linked into every node binary.
    let builtins = builtins::names();
    if cli.list_functions {
        for name in registry.names() {
            println!("{name}");
        }
        return 0;
    }
    let io_threads = cli.io_threads.max(1);
    let config = match cli.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rdask-node: {e}");
            return 2;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(io_threads)
        .thread_name("rdask-io")
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rdask-node: cannot start the async runtime: {e}");
            return 1;
        }
    };
    let code = runtime.block_on(async move {
        // Listen for SIGTERM before the address is printed: whoever reads it may stop the
        // node at once.
        let stop = stop_signal();
        let nthreads = config.nthreads;
        let memory = match config.memory_limit {
            Some(l) => format!(
                "memory limit: {:.1} GiB (pauses at 80%)",
                l as f64 / (1u64 << 30) as f64
            ),
            None => "memory limit: none".to_string(),
        };
        let secret = config
            .secret
            .map(|s| format!(", cluster secret {}", s.fingerprint()))
            .unwrap_or_default();
        let node = match start(config, registry).await {
            Ok(n) => n,
            Err(e) => {
                eprintln!("rdask-node: {e}");
                return 1;
            }
        };
        println!("rdask-node {VERSION}");
        println!("peer id: {}", node.peer_id());
        println!(
            "threads: {nthreads}, task functions: {} ({} built in)",
            registry.len(),
            builtins.len()
        );
        println!("{memory}{secret}");
        for a in node.listen_addrs() {
            println!("listening on {a}/p2p/{}", node.peer_id());
        }
        if let Some(a) = node.dashboard_addr() {
            println!("dashboard at http://{a}/");
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        stop.await;
        tracing::info!("shutting down");
        node.shutdown().await;
        0
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    code
}

/// Task panics are reported to the client with their message; in the node's own output
/// they become one log line instead of a panic report with a backtrace.
fn log_task_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let on_worker = std::thread::current()
            .name()
            .is_some_and(|n| n.starts_with("rdask-worker"));
        if on_worker {
            let message = rdask_graph::registry::panic_message(info.payload());
            let location = info.location().map(|l| l.to_string()).unwrap_or_default();
            tracing::warn!(%location, "task panicked: {message}");
        } else {
            default(info)
        }
    }));
}

/// Resolves on SIGINT or SIGTERM; the handlers are installed when this is called, not when
/// it is first polled.
fn stop_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async move {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
