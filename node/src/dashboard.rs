//! The dashboard every node serves: a live web page, a JSON API under `/api/v1/`,
//! `/health`, and Prometheus metrics at `/metrics`.
//!
//! Any node shows the whole cluster, without a central collector: the members and their
//! loads come from the node's replica of the gossiped state; what each member is doing
//! (its task stream, the progress of the graphs it owns) is asked of it on demand, over the
//! client protocol, with bounded answers and a short timeout. The work stays off the
//! node's hot path: a snapshot is a read of the node actor (the task walk behind the
//! progress figures is reused for half a second), and the dashboard's own tasks run on the
//! node's I/O runtime, never on its task threads.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::{Stream, StreamExt};
use libp2p::Multiaddr;
use ractor::ActorRef;
use rdask_actors::NodeMsg;
use rdask_actors::protocol::{
    ClientRequest, ClientResponse, DagNode, NodeSnapshot, NodeStatus, PrefixProgress,
};
use rdask_gossip::{GossipStats, MemberState, NodeId};
use serde::{Deserialize, Serialize};

use crate::net::RemoteNode;

/// The page, served from the binary.
const PAGE: &str = include_str!("dashboard.html");
/// How long a member may take to answer for the cluster view.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the live stream sends.
const STREAM_EVERY: Duration = Duration::from_secs(1);
/// Task-stream events of one node in one answer, at most.
const EVENTS_PER_NODE: usize = 5_000;
/// Tasks of one graph drawn, at most.
const DAG_LIMIT: u32 = 5_000;

/// What the handlers share.
struct Dash {
    actor: ActorRef<NodeMsg>,
    gossip: Option<ActorRef<rdask_actors::GossipMsg>>,
    me: NodeId,
    max_frame: usize,
    /// The cluster secret, to reach other members.
    secret: Option<crate::ClusterSecret>,
    /// What went over the data path.
    data: Arc<crate::datapath::DataStats>,
    /// Sessions to other members, kept between requests (dropped when one fails).
    peers: tokio::sync::Mutex<HashMap<NodeId, RemoteNode>>,
    /// Graphs this dashboard has listed, with when: shown as finished for a while after
    /// their owner forgets them.
    recent: std::sync::Mutex<HashMap<String, (GraphView, std::time::Instant)>>,
}

/// How long a graph its owner has forgotten stays listed.
const RECENT_FOR: Duration = Duration::from_secs(600);

/// Binds `addr`, or, if that port is taken, any free port on the same host (as Dask does,
/// with a warning).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let l = tokio::net::TcpListener::bind(SocketAddr::new(addr.ip(), 0)).await?;
            tracing::warn!(
                wanted = %addr,
                got = %l.local_addr()?,
                "the dashboard's port is taken: serving it on another"
            );
            Ok(l)
        }
        Err(e) => Err(e),
    }
}

/// Serves the dashboard of the node `actor` (named `me`, gossiping through `gossip`) on
/// `listener`, until the returned task is aborted. It reaches other members (with the
/// cluster's `secret`, if any) for the views of the whole cluster.
pub fn serve(
    listener: tokio::net::TcpListener,
    actor: ActorRef<NodeMsg>,
    gossip: Option<ActorRef<rdask_actors::GossipMsg>>,
    me: NodeId,
    max_frame: usize,
    secret: Option<crate::ClusterSecret>,
    data: Arc<crate::datapath::DataStats>,
) -> tokio::task::JoinHandle<()> {
    let dash = Arc::new(Dash {
        actor,
        gossip,
        me,
        max_frame,
        secret,
        data,
        peers: tokio::sync::Mutex::new(HashMap::new()),
        recent: std::sync::Mutex::new(HashMap::new()),
    });
    let app = router(dash);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the dashboard stopped");
        }
    })
}

fn router(dash: Arc<Dash>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/status", get(page))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/api/v1/node", get(api_node))
        .route("/api/v1/nodes", get(api_nodes))
        .route("/api/v1/cluster", get(api_cluster))
        .route("/api/v1/graphs", get(api_graphs))
        .route("/api/v1/graphs/{session}", get(api_graph))
        .route("/api/v1/stream", get(api_stream))
        .with_state(dash)
}

/// An error of the API: a status and a message, as JSON.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

impl Dash {
    /// Asks this node's actor.
    async fn ask(&self, request: ClientRequest) -> Result<ClientResponse, String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.actor
            .send_message(NodeMsg::Request(
                request,
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            ))
            .map_err(|_| "the node is stopping".to_string())?;
        match tokio::time::timeout(Duration::from_secs(5), rx).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err("the node is stopping".into()),
            Err(_) => Err("the node did not answer within 5 s".into()),
        }
    }

    /// Asks another member, over a session kept for the next time.
    async fn ask_peer(
        &self,
        status: &NodeStatus,
        request: ClientRequest,
    ) -> Result<ClientResponse, String> {
        let id = status.member.id.clone();
        let cached = self.peers.lock().await.get(&id).cloned();
        let remote = match cached {
            Some(r) => r,
            None => {
                let addr: Multiaddr = status
                    .member
                    .addresses
                    .iter()
                    .find_map(|a| a.parse().ok())
                    .ok_or_else(|| format!("{id} has no address"))?;
                let r =
                    RemoteNode::connect(addr, self.max_frame, PEER_TIMEOUT, self.secret.as_ref())
                        .await
                        .map_err(|e| e.to_string())?;
                self.peers.lock().await.insert(id.clone(), r.clone());
                r
            }
        };
        match tokio::time::timeout(PEER_TIMEOUT, remote.send(request)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.peers.lock().await.remove(&id);
                Err(e.to_string())
            }
            Err(_) => Err(format!("{id} did not answer within {PEER_TIMEOUT:?}")),
        }
    }

    async fn members(&self) -> Result<Vec<NodeStatus>, String> {
        match self.ask(ClientRequest::Info).await? {
            ClientResponse::Info(nodes) => Ok(nodes),
            other => Err(format!("unexpected answer to info: {other:?}")),
        }
    }

    async fn snapshot_of(
        &self,
        status: &NodeStatus,
        since_ms: u64,
    ) -> Result<NodeSnapshot, String> {
        let request = ClientRequest::Snapshot {
            events_since_ms: since_ms,
        };
        let answer = if status.member.id == self.me {
            self.ask(request).await?
        } else {
            self.ask_peer(status, request).await?
        };
        match answer {
            ClientResponse::Snapshot(mut s) => {
                let skip = s.events.len().saturating_sub(EVENTS_PER_NODE);
                s.events.drain(..skip);
                Ok(*s)
            }
            other => Err(format!("unexpected answer to snapshot: {other:?}")),
        }
    }

    /// Every member as gossip knows it, with what each live one says it is doing.
    async fn cluster(&self, since_ms: u64) -> Result<ClusterView, String> {
        let members = self.members().await?;
        let asks = members.iter().map(|m| async move {
            if m.state != MemberState::Alive {
                return (None, None);
            }
            match self.snapshot_of(m, since_ms).await {
                Ok(s) => (Some(s), None),
                Err(e) => (None, Some(e)),
            }
        });
        let answers = futures::future::join_all(asks).await;
        let nodes = members
            .into_iter()
            .zip(answers)
            .map(|(status, (snapshot, error))| NodeView {
                status,
                snapshot,
                error,
            })
            .collect();
        Ok(ClusterView {
            node: self.me.0.to_string(),
            now_ms: rdask_actors::now_ms(),
            nodes,
        })
    }

    async fn gossip_stats(&self) -> Option<GossipStats> {
        let gossip = self.gossip.as_ref()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        gossip
            .send_message(rdask_actors::GossipMsg::Stats(Box::new(move |s| {
                let _ = tx.send(s);
            })))
            .ok()?;
        tokio::time::timeout(Duration::from_secs(2), rx)
            .await
            .ok()?
            .ok()
    }
}

/// The cluster as one node sees it.
#[derive(Serialize, Deserialize)]
pub struct ClusterView {
    /// The node that answered.
    pub node: String,
    /// Its clock, ms since the Unix epoch.
    pub now_ms: u64,
    /// Every member it knows.
    pub nodes: Vec<NodeView>,
}

/// One member in a [`ClusterView`].
#[derive(Serialize, Deserialize)]
pub struct NodeView {
    /// Its record, state and load as gossiped.
    pub status: NodeStatus,
    /// What it said it is doing (live members that answered).
    pub snapshot: Option<NodeSnapshot>,
    /// Why it did not answer.
    pub error: Option<String>,
}

/// `?since_ms=`: task-stream events that ended after this time (default: the last 30 s).
#[derive(Deserialize)]
struct Since {
    since_ms: Option<u64>,
}

impl Since {
    fn or_recent(&self) -> u64 {
        self.since_ms
            .unwrap_or_else(|| rdask_actors::now_ms().saturating_sub(30_000))
    }
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn health(State(dash): State<Arc<Dash>>) -> Response {
    match dash.members().await {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}

async fn api_node(
    State(dash): State<Arc<Dash>>,
    Query(q): Query<Since>,
) -> ApiResult<NodeSnapshot> {
    let request = ClientRequest::Snapshot {
        events_since_ms: q.or_recent(),
    };
    match dash.ask(request).await.map_err(unavailable)? {
        ClientResponse::Snapshot(s) => Ok(Json(*s)),
        other => Err(unavailable(format!("unexpected answer: {other:?}"))),
    }
}

async fn api_nodes(State(dash): State<Arc<Dash>>) -> ApiResult<Vec<NodeStatus>> {
    dash.members().await.map(Json).map_err(unavailable)
}

async fn api_cluster(
    State(dash): State<Arc<Dash>>,
    Query(q): Query<Since>,
) -> ApiResult<ClusterView> {
    dash.cluster(q.or_recent())
        .await
        .map(Json)
        .map_err(unavailable)
}

/// One client session's graphs, at the node that owns them.
#[derive(Clone, Serialize, Deserialize)]
pub struct GraphView {
    /// `running`, `finished` (every task done or failed), or `released` (its owner has
    /// forgotten it: the client released its results; listed for ten minutes).
    pub status: String,
    /// The session (a 64-bit number, as text: JavaScript's numbers would round it).
    pub session: String,
    /// The node that owns them.
    pub owner: String,
    /// The owner's dashboard.
    pub dashboard: String,
    /// The ownership epoch.
    pub epoch: u64,
    /// Tasks known, finished, failed.
    pub tasks: u64,
    /// Finished ones.
    pub done: u64,
    /// Failed ones.
    pub erred: u64,
    /// The first errors, where they were raised.
    pub errors: Vec<rdask_graph::TaskError>,
    /// Tasks by key prefix and state.
    pub prefixes: Vec<PrefixProgress>,
}

async fn api_graphs(State(dash): State<Arc<Dash>>) -> ApiResult<Vec<GraphView>> {
    let view = dash
        .cluster(rdask_actors::now_ms())
        .await
        .map_err(unavailable)?;
    let mut out = Vec::new();
    for n in view.nodes {
        let Some(s) = n.snapshot else { continue };
        for g in &s.sessions {
            out.push(GraphView {
                status: if g.done + g.erred < g.tasks {
                    "running".into()
                } else {
                    "finished".into()
                },
                session: g.session.to_string(),
                owner: n.status.member.id.0.to_string(),
                dashboard: n.status.member.dashboard.clone(),
                epoch: g.epoch,
                tasks: g.tasks,
                done: g.done,
                erred: g.erred,
                errors: g.errors.clone(),
                prefixes: s
                    .progress
                    .iter()
                    .filter(|p| p.session == g.session)
                    .cloned()
                    .collect(),
            });
        }
    }
    // Graphs listed before and gone since: released, for a while.
    let now = std::time::Instant::now();
    let mut recent = dash.recent.lock().expect("recent graphs");
    for g in &out {
        recent.insert(g.session.clone(), (g.clone(), now));
    }
    recent.retain(|_, (_, seen)| now.duration_since(*seen) < RECENT_FOR);
    let listed: std::collections::HashSet<String> = out.iter().map(|g| g.session.clone()).collect();
    let mut gone: Vec<GraphView> = recent
        .values()
        .filter(|(g, _)| !listed.contains(&g.session))
        .map(|(g, _)| GraphView {
            status: "released".into(),
            ..g.clone()
        })
        .collect();
    gone.sort_by(|a, b| a.session.cmp(&b.session));
    out.extend(gone);
    Ok(Json(out))
}

/// One graph's tasks, for drawing it.
#[derive(Serialize, Deserialize)]
pub struct DagView {
    /// The session (as text, see [`GraphView::session`]).
    pub session: String,
    /// The node that owns it.
    pub owner: String,
    /// Its tasks, inputs first.
    pub tasks: Vec<DagNode>,
    /// Whether it has more tasks than drawn.
    pub truncated: bool,
}

async fn api_graph(
    State(dash): State<Arc<Dash>>,
    Path(session): Path<String>,
) -> ApiResult<DagView> {
    let session: u64 = session.parse().map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("{session:?} is not a session number"),
        )
    })?;
    let graph = rdask_graph::GraphId(u128::from(session) << 64);
    let owner = match dash
        .ask(ClientRequest::Owner { graph })
        .await
        .map_err(unavailable)?
    {
        ClientResponse::Owner(Some(o)) => o.owner,
        _ => {
            // Not in this node's table yet (gossip is a second or so behind): the member
            // that lists the session owns it.
            let view = dash.cluster(u64::MAX).await.map_err(unavailable)?;
            view.nodes
                .iter()
                .find(|n| {
                    n.snapshot
                        .as_ref()
                        .is_some_and(|s| s.sessions.iter().any(|g| g.session == session))
                })
                .map(|n| n.status.member.id.clone())
                .ok_or_else(|| {
                    ApiError(
                        StatusCode::NOT_FOUND,
                        format!("no node owns session {session}"),
                    )
                })?
        }
    };
    let request = ClientRequest::Dag {
        session,
        limit: DAG_LIMIT,
    };
    let answer = if owner == dash.me {
        dash.ask(request).await
    } else {
        let members = dash.members().await.map_err(unavailable)?;
        let status = members
            .into_iter()
            .find(|m| m.member.id == owner)
            .ok_or_else(|| unavailable(format!("the owner {owner} is not a member")))?;
        dash.ask_peer(&status, request).await
    };
    match answer.map_err(unavailable)? {
        ClientResponse::Dag(tasks, truncated) => Ok(Json(DagView {
            session: session.to_string(),
            owner: owner.0.to_string(),
            tasks,
            truncated,
        })),
        other => Err(unavailable(format!("unexpected answer: {other:?}"))),
    }
}

/// The cluster view every second, with the task-stream events since the last one.
async fn api_stream(
    State(dash): State<Arc<Dash>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let start = rdask_actors::now_ms().saturating_sub(30_000);
    let stream = futures::stream::unfold((dash, start, true), |(dash, since, first)| async move {
        if !first {
            tokio::time::sleep(STREAM_EVERY).await;
        }
        let event = match dash.cluster(since).await {
            Ok(view) => {
                let next = view.now_ms.saturating_sub(1_000);
                let e = Event::default()
                    .event("cluster")
                    .json_data(&view)
                    .unwrap_or_else(|e| Event::default().event("error").data(e.to_string()));
                return Some((Ok(e), (dash, next.max(since), false)));
            }
            Err(e) => Event::default().event("error").data(e),
        };
        Some((Ok(event), (dash, since, false)))
    });
    Sse::new(stream.boxed()).keep_alive(KeepAlive::default())
}

/// Prometheus' text format: this node's figures.
async fn metrics(State(dash): State<Arc<Dash>>) -> Response {
    let snapshot = match dash
        .ask(ClientRequest::Snapshot {
            events_since_ms: u64::MAX,
        })
        .await
    {
        Ok(ClientResponse::Snapshot(s)) => s,
        Ok(other) => {
            return (StatusCode::SERVICE_UNAVAILABLE, format!("{other:?}\n")).into_response();
        }
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    };
    let members = dash.members().await.unwrap_or_default();
    let gossip = dash.gossip_stats().await;
    let mut body = render_metrics(&snapshot, &members, gossip);
    for (name, help, v) in [
        (
            "rdask_data_path_sent_bytes_total",
            "Bytes of values sent to peers over the data path (plain TCP beside libp2p).",
            &dash.data.sent_bytes,
        ),
        (
            "rdask_data_path_received_bytes_total",
            "Bytes of values received from peers over the data path.",
            &dash.data.received_bytes,
        ),
        (
            "rdask_client_requests_total",
            "Requests read from the node's remote client sessions.",
            &dash.data.client_requests,
        ),
    ] {
        let v = v.load(std::sync::atomic::Ordering::Relaxed);
        let _ = writeln!(
            body,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Escapes a label value (backslash, quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The metrics text of one node.
pub fn render_metrics(
    s: &NodeSnapshot,
    members: &[NodeStatus],
    gossip: Option<GossipStats>,
) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {v}");
            } else {
                let _ = writeln!(out, "{name}{{{labels}}} {v}");
            }
        }
    };
    let one = |v: u64| vec![(String::new(), v as f64)];
    let mut tasks = Vec::new();
    for p in &s.progress {
        for (state, n) in [
            ("waiting", p.waiting),
            ("queued", p.queued),
            ("processing", p.processing),
            ("memory", p.memory),
            ("released", p.released),
            ("erred", p.erred),
        ] {
            if n > 0 {
                tasks.push((
                    format!("prefix=\"{}\",state=\"{state}\"", label(&p.prefix)),
                    n as f64,
                ));
            }
        }
    }
    family(
        "rdask_tasks",
        "gauge",
        "Tasks of the graphs this node owns, by key prefix and state.",
        &tasks,
    );
    let st = &s.stats;
    family(
        "rdask_tasks_run_total",
        "counter",
        "Tasks run on this node's threads (for any owner).",
        &one(st.tasks_run),
    );
    family(
        "rdask_compute_seconds_total",
        "counter",
        "Seconds task functions ran on this node's threads.",
        &[(String::new(), s.compute_us as f64 / 1e6)],
    );
    family(
        "rdask_transfers_total",
        "counter",
        "Values fetched from other nodes.",
        &one(st.fetched),
    );
    family(
        "rdask_transfer_bytes_total",
        "counter",
        "Bytes of values fetched from other nodes.",
        &one(st.fetched_bytes),
    );
    family(
        "rdask_stored_bytes",
        "gauge",
        "Bytes of results held in memory here.",
        &one(s.status.load.memory_used),
    );
    family(
        "rdask_stored_results",
        "gauge",
        "Results held in memory here.",
        &one(s.status.load.stored),
    );
    family(
        "rdask_memory_limit_bytes",
        "gauge",
        "This node's memory limit (0: none); it pauses at 80% of it.",
        &one(s.status.member.memory_limit),
    );
    family(
        "rdask_paused",
        "gauge",
        "1 while this node is paused for memory (no new work; one task at a time).",
        &one(u64::from(s.status.load.paused)),
    );
    family(
        "rdask_queued_tasks",
        "gauge",
        "Tasks waiting here for inputs or a thread.",
        &one(s.status.load.queued),
    );
    family(
        "rdask_running_tasks",
        "gauge",
        "Tasks running here.",
        &one(s.status.load.running),
    );
    family(
        "rdask_threads",
        "gauge",
        "Task threads of this node.",
        &one(u64::from(s.status.member.nthreads)),
    );
    family(
        "rdask_steals_total",
        "counter",
        "Tasks this node stole from busier peers.",
        &one(st.stolen),
    );
    family(
        "rdask_steal_requests_total",
        "counter",
        "Steal requests this node sent.",
        &one(st.steal_requests),
    );
    family(
        "rdask_placed_remote_total",
        "counter",
        "Tasks of this node's graphs placed on peers.",
        &one(st.placed_remote),
    );
    family(
        "rdask_recomputed_total",
        "counter",
        "Results computed again after their holder was lost.",
        &one(st.recomputed),
    );
    family(
        "rdask_takeovers_total",
        "counter",
        "Graphs of a dead or leaving owner this node took over.",
        &one(st.takeovers),
    );
    family(
        "rdask_uptime_seconds",
        "gauge",
        "Seconds since the node started.",
        &[(String::new(), s.uptime_ms as f64 / 1e3)],
    );
    let mut by_state: Vec<(String, f64)> = Vec::new();
    for state in [MemberState::Alive, MemberState::Down] {
        let n = members.iter().filter(|m| m.state == state).count();
        by_state.push((
            format!("state=\"{}\"", format!("{state:?}").to_lowercase()),
            n as f64,
        ));
    }
    family(
        "rdask_members",
        "gauge",
        "Members of the cluster this node knows, by state.",
        &by_state,
    );
    if let Some(g) = gossip {
        family(
            "rdask_gossip_rounds_total",
            "counter",
            "Anti-entropy rounds this node started.",
            &one(g.rounds),
        );
        family(
            "rdask_gossip_sent_total",
            "counter",
            "Gossip datagrams this node sent.",
            &one(g.sent),
        );
        family(
            "rdask_gossip_sent_bytes_total",
            "counter",
            "Bytes of gossip datagrams this node sent.",
            &one(g.sent_bytes),
        );
        family(
            "rdask_gossip_largest_bytes",
            "gauge",
            "The largest gossip datagram this node made.",
            &one(g.largest),
        );
        let s = g.sizes;
        let entries: Vec<(String, f64)> = [
            ("members", s.members),
            ("removed_members", s.removed_members),
            ("owners", s.owners),
            ("owner_tombstones", s.owner_tombstones),
            ("datasets", s.datasets),
            ("dataset_tombstones", s.dataset_tombstones),
        ]
        .into_iter()
        .map(|(k, v)| (format!("table=\"{k}\""), v as f64))
        .collect();
        family(
            "rdask_gossip_state_entries",
            "gauge",
            "Entries of the replicated state this node holds, by table (tombstones apart).",
            &entries,
        );
    }
    out
}
