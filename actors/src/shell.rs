use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use rdask_gossip::{
    Dataset, MemberInfo, MemberState, MemberView, NodeId, Ownership, PROTOCOL_VERSION,
};
use rdask_graph::Registry;
use rustc_hash::FxHashMap;

use crate::core::{NodeCore, OwnerWrite, PeerUpdate, RequestId};
use crate::gossip_shell::{GossipMsg, LOAD_EVERY};
use crate::pool::{Completions, TaskPool};
use crate::protocol::{
    ClientRequest, ClientResponse, NodeLimits, NodeSnapshot, NodeStatus, PeerBatch, PrefixProgress,
    SessionSummary, TransferEvent,
};

/// How often the core is handed the clock ([`NodeCore::handle_tick`]).
const TICK_EVERY: Duration = Duration::from_millis(25);

/// Where the answer to a request goes: a closure that sends it (over a oneshot channel for
/// an in-process client, back to the network loop for a remote one).
pub type ReplyTo = Box<dyn FnOnce(ClientResponse) + Send>;

/// Where a node sends batches for other nodes: the network layer (`/rdask/node/1`). It
/// must not block; a batch it cannot deliver is dropped (the core retries what is lost).
pub type PeerSend = Box<dyn Fn(NodeId, PeerBatch) + Send + Sync>;

/// Messages of the [`NodeActor`].
pub enum NodeMsg {
    /// A client request and where to send the answer.
    Request(ClientRequest, ReplyTo),
    /// The pool has finished tasks.
    TasksDone,
    /// The earliest timer may have expired.
    Timer,
    /// The node's own status.
    Status(RpcReplyPort<NodeStatus>),
    /// The node's listen addresses changed.
    SetAddresses(Vec<String>),
    /// The address of the node's dashboard (`http://host:port`).
    SetDashboard(String),
    /// The node now gossips with a cluster through this actor.
    SetGossip(ActorRef<GossipMsg>),
    /// Time to publish the load into the gossiped state (and to refresh the members).
    PublishLoad,
    /// A batch of messages from another node, with the reader's place in the node's
    /// inbox (released once the batch is handled: readers wait for one, so batches cannot
    /// pile up faster than the node handles them).
    Peer(NodeId, PeerBatch, Option<tokio::sync::OwnedSemaphorePermit>),
    /// The members of the cluster as gossiped (the answer to a `GossipMsg::Members`).
    Members(Vec<MemberView>),
    /// The clock: sent every 25 ms.
    Tick,
    /// A running task gave its thread slot up to wait for other tasks (see
    /// [`crate::pool::secede`]).
    Seceded(crate::core::TaskId),
    /// The node is told to stop: hand everything over, then call the closure (see
    /// [`NodeCore::handle_leave`]).
    Leave(Box<dyn FnOnce() + Send>),
    /// A client connection that carried this session (it sent `Attach`) closed.
    Detached(u64),
    /// The outcome of a claim of the ownership table (see [`NodeCore::handle_claimed`]).
    Claimed(rdask_graph::GraphId, Option<u64>),
    /// Datasets this node published that the replicated table says were unpublished.
    Unpublished(Vec<String>),
}

/// What a node actor starts with.
pub struct NodeArgs {
    /// The node's member record (its id is also the node name in task errors).
    pub member: MemberInfo,
    /// The task functions it can run.
    pub registry: &'static Registry,
    /// Threads of its task pool.
    pub nthreads: usize,
    /// Where batches for other nodes go; `None` for a lone node without network.
    pub send_peer: Option<PeerSend>,
    /// The memory limit in bytes (`--memory-limit`); `None`: no limit. Near it the node
    /// pauses (see [`NodeCore::set_memory_limit`]).
    pub memory_limit: Option<u64>,
    /// What it accepts from clients (told them in `Welcome`; the core enforces the tasks
    /// per submission).
    pub limits: NodeLimits,
}

/// Every how many ticks the process's memory is measured (when there is a limit).
const MEMORY_EVERY_TICKS: u32 = 4;

/// The resident set size of this process in bytes (Linux; `None` elsewhere).
pub(crate) fn process_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}

/// The ractor shell around [`NodeCore`]: one loop that feeds the core and drains its
/// outputs (replies, then jobs to the pool, then batches for peers, then timers).
pub struct NodeActor;

/// The state of a running [`NodeActor`].
pub struct NodeState {
    core: NodeCore,
    pool: TaskPool,
    completions: Completions,
    pending: FxHashMap<RequestId, ReplyTo>,
    next_request: u64,
    member: MemberInfo,
    /// Timers the core asked for, earliest first; one wake-up is armed for the earliest.
    deadlines: BinaryHeap<Reverse<(Instant, RequestId)>>,
    armed: Option<Instant>,
    gossip: Option<ActorRef<GossipMsg>>,
    send_peer: Option<PeerSend>,
    /// The origin of the monotonic clock handed to the core.
    started: Instant,
    /// Whether the process's memory is measured for the core (there is a limit).
    measure_memory: bool,
    /// Ticks so far.
    ticks: u32,
    /// Told when a leave is complete.
    left: Option<Box<dyn FnOnce() + Send>>,
    /// The last progress walk and when it was made: reused for half a second, so that
    /// dashboards watching cannot keep the node walking its tasks.
    progress: Option<(Instant, Vec<PrefixProgress>, Vec<SessionSummary>)>,
    /// The dataset table of a node without gossip (a local cluster); with gossip, the
    /// replicated state holds it.
    datasets: std::collections::BTreeMap<String, Dataset>,
    /// What the node accepts from clients.
    limits: NodeLimits,
}

/// The resources a member offers, as the core counts them.
fn resources_of(info: &MemberInfo) -> Vec<(Arc<str>, u64)> {
    info.resources
        .iter()
        .map(|(n, a)| (Arc::from(n.as_str()), *a))
        .collect()
}

/// Starts a node actor (unnamed: several nodes may share a process).
pub async fn spawn_node(
    args: NodeArgs,
) -> Result<(ActorRef<NodeMsg>, tokio::task::JoinHandle<()>), ractor::SpawnErr> {
    Actor::spawn(None, NodeActor, args).await
}

impl NodeState {
    fn status(&self) -> NodeStatus {
        NodeStatus {
            member: self.member.clone(),
            load: self.core.load(),
            state: MemberState::Alive,
            down_for_ms: 0,
        }
    }

    /// What the node is doing, for the dashboard.
    fn snapshot(&mut self, events_since_ms: u64) -> NodeSnapshot {
        let fresh = self
            .progress
            .as_ref()
            .is_some_and(|(at, _, _)| at.elapsed() < Duration::from_millis(500));
        if !fresh {
            let (progress, sessions) = self.core.progress();
            self.progress = Some((Instant::now(), progress, sessions));
        }
        let (_, progress, sessions) = self.progress.as_ref().expect("filled above");
        // The core's clock counts from the node's start; the snapshot's, from the epoch.
        let wall = crate::gossip_shell::now_ms();
        let uptime = self.started.elapsed().as_millis() as u64;
        let offset = wall.saturating_sub(uptime);
        let transfers = self
            .core
            .transfers_since(events_since_ms.saturating_sub(offset))
            .into_iter()
            .map(|(key, from, bytes, at)| TransferEvent {
                key,
                from,
                bytes,
                at_ms: offset + at,
            })
            .collect();
        NodeSnapshot {
            transfers,
            status: self.status(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            now_ms: crate::gossip_shell::now_ms(),
            stats: self.core.stats(),
            compute_us: self.pool.compute_us(),
            progress: progress.clone(),
            sessions: sessions.clone(),
            events: self.pool.events_since(events_since_ms),
        }
    }

    fn drain(&mut self, myself: &ActorRef<NodeMsg>) {
        for (id, response) in self.core.take_replies() {
            if let Some(reply) = self.pending.remove(&id) {
                reply(response);
            }
        }
        let jobs = self.core.take_jobs();
        if !jobs.is_empty() {
            self.pool.run(jobs);
        }
        let sends = self.core.take_sends();
        if !sends.is_empty() {
            match &self.send_peer {
                Some(send) => {
                    for (to, batch) in sends {
                        send(to, batch);
                    }
                }
                None => tracing::debug!(
                    batches = sends.len(),
                    "a node without network dropped batches for peers"
                ),
            }
        }
        for (name, dataset) in self.core.take_dataset_writes() {
            match &self.gossip {
                Some(g) => {
                    let _ = g.send_message(GossipMsg::SetDataset(name, dataset));
                }
                None if dataset.removed => {
                    self.datasets.remove(&name);
                }
                None => {
                    self.datasets.insert(name, dataset);
                }
            }
        }
        let writes = self.core.take_owner_writes();
        if !writes.is_empty()
            && let Some(g) = &self.gossip
        {
            let backups = self.core.backups();
            for w in writes {
                let msg = match w {
                    OwnerWrite::Claim { graph, epoch } => {
                        let me = myself.clone();
                        GossipMsg::Claim(
                            graph.0,
                            Ownership {
                                owner: self.member.id.clone(),
                                epoch,
                                backups: backups.clone(),
                            },
                            Box::new(move |taken| {
                                let _ = me.send_message(NodeMsg::Claimed(graph, taken));
                            }),
                        )
                    }
                    OwnerWrite::Release { graph, closed } => {
                        GossipMsg::ReleaseOwner(graph.0, closed)
                    }
                };
                let _ = g.send_message(msg);
            }
        }
        if self.core.left()
            && let Some(done) = self.left.take()
        {
            done();
        }
        let timers = self.core.take_timers();
        if !timers.is_empty() {
            let now = Instant::now();
            for (id, ms) in timers {
                self.deadlines
                    .push(Reverse((now + Duration::from_millis(u64::from(ms)), id)));
            }
            self.arm(myself, now);
        }
    }

    /// Makes sure a wake-up is armed for the earliest deadline.
    fn arm(&mut self, myself: &ActorRef<NodeMsg>, now: Instant) {
        if let Some(Reverse((earliest, _))) = self.deadlines.peek()
            && self.armed.is_none_or(|a| *earliest < a)
        {
            self.armed = Some(*earliest);
            myself.send_after(earliest.saturating_duration_since(now), || NodeMsg::Timer);
        }
    }

    /// Asks the gossip actor for the members; the answer comes back as
    /// [`NodeMsg::Members`].
    fn refresh_members(&self, myself: &ActorRef<NodeMsg>) {
        if let Some(g) = &self.gossip {
            let me = myself.clone();
            let ask = GossipMsg::Members(Box::new(move |members| {
                let _ = me.send_message(NodeMsg::Members(members));
            }));
            let _ = g.send_message(ask);
        }
    }

    /// Hands every expired deadline to the core.
    fn expire(&mut self, myself: &ActorRef<NodeMsg>) {
        let now = Instant::now();
        self.armed = None;
        while let Some(Reverse((deadline, id))) = self.deadlines.peek().copied() {
            if deadline > now {
                break;
            }
            self.deadlines.pop();
            self.core.handle_wait_expired(id);
        }
        self.arm(myself, now);
    }
}

impl Actor for NodeActor {
    type Msg = NodeMsg;
    type State = NodeState;
    type Arguments = NodeArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<NodeMsg>,
        args: NodeArgs,
    ) -> Result<NodeState, ActorProcessingErr> {
        let me = myself.clone();
        let notify: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            let _ = me.send_message(NodeMsg::TasksDone);
        });
        let (pool, completions) =
            TaskPool::start("rdask-worker", args.nthreads, notify, Some(myself.clone()))?;
        myself.send_interval(TICK_EVERY, || NodeMsg::Tick);
        let mut core = NodeCore::new(&args.member.id.0, args.registry, args.nthreads as u32);
        core.set_resources(resources_of(&args.member));
        core.set_memory_limit(args.memory_limit);
        core.set_max_tasks_per_submit(args.limits.max_tasks_per_submit);
        if let Some(limit) = args.memory_limit {
            tracing::info!(limit_mb = limit >> 20, "memory limit");
        }
        Ok(NodeState {
            core,
            pool,
            completions,
            pending: FxHashMap::default(),
            next_request: 0,
            member: args.member,
            deadlines: BinaryHeap::new(),
            armed: None,
            gossip: None,
            send_peer: args.send_peer,
            measure_memory: args.memory_limit.is_some(),
            ticks: 0,
            started: Instant::now(),
            left: None,
            datasets: Default::default(),
            progress: None,
            limits: args.limits,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<NodeMsg>,
        message: NodeMsg,
        state: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            NodeMsg::TasksDone => {
                let done: Vec<_> = state.completions.drain().collect();
                for d in done {
                    state.core.handle_task_done(d);
                }
            }
            NodeMsg::Request(request, reply) => {
                let id = RequestId(state.next_request);
                state.next_request += 1;
                match request {
                    ClientRequest::Hello { protocol, version } => {
                        if protocol != PROTOCOL_VERSION {
                            tracing::warn!(
                                client_protocol = protocol,
                                client_version = %version,
                                "refused a client with an incompatible protocol version"
                            );
                            reply(ClientResponse::Refused(format!(
                                "protocol version mismatch: the client speaks {protocol}, this node \
                                 (rdask {}) speaks {PROTOCOL_VERSION}; use the same rdask version",
                                state.member.version
                            )));
                        } else {
                            reply(ClientResponse::Welcome(state.status(), state.limits));
                        }
                        return Ok(());
                    }
                    ClientRequest::Info => {
                        let me = state.status();
                        match &state.gossip {
                            None => reply(ClientResponse::Info(vec![me])),
                            Some(gossip) => {
                                // The gossip actor knows the cluster; this node's own entry
                                // is fresh from here.
                                let ask = GossipMsg::Members(Box::new(move |members| {
                                    let mut nodes = vec![me.clone()];
                                    nodes.extend(
                                        members
                                            .into_iter()
                                            .filter(|m| m.info.id != me.member.id)
                                            .map(|m| NodeStatus {
                                                member: m.info,
                                                load: m.load,
                                                state: m.state,
                                                down_for_ms: m.down_for_ms,
                                            }),
                                    );
                                    reply(ClientResponse::Info(nodes));
                                }));
                                if let Err(ractor::MessagingErr::SendErr(GossipMsg::Members(f))) =
                                    gossip.send_message(ask)
                                {
                                    f(Vec::new());
                                }
                            }
                        }
                        return Ok(());
                    }
                    ClientRequest::WhoHas { .. } | ClientRequest::Status { .. }
                        if let Some(why) = state.core.moved_away() =>
                    {
                        reply(ClientResponse::Moved(why));
                        return Ok(());
                    }
                    ClientRequest::WhoHas { keys } => {
                        reply(ClientResponse::Holders(state.core.who_has(&keys)));
                        return Ok(());
                    }
                    ClientRequest::Status { keys } => {
                        reply(ClientResponse::Statuses(state.core.key_statuses(&keys)));
                        return Ok(());
                    }
                    ClientRequest::Explain { keys } => {
                        let lines = keys.iter().map(|k| state.core.describe(k)).collect();
                        reply(ClientResponse::Explained(lines));
                        return Ok(());
                    }
                    ClientRequest::Owner { graph } => {
                        let key = graph.0 >> 64 << 64;
                        match &state.gossip {
                            None => {
                                let me = state.member.id.clone();
                                let owned = state.core.owns_session((graph.0 >> 64) as u64);
                                reply(ClientResponse::Owner(owned.then(|| Ownership {
                                    owner: me,
                                    epoch: 1,
                                    backups: Vec::new(),
                                })));
                            }
                            Some(gossip) => {
                                let ask = GossipMsg::Owner(
                                    key,
                                    Box::new(move |o| reply(ClientResponse::Owner(o))),
                                );
                                if let Err(ractor::MessagingErr::SendErr(GossipMsg::Owner(_, f))) =
                                    gossip.send_message(ask)
                                {
                                    f(None);
                                }
                            }
                        }
                        return Ok(());
                    }
                    ClientRequest::GetDataset { name } => {
                        match &state.gossip {
                            None => {
                                let me = state.member.id.clone();
                                reply(ClientResponse::Dataset(
                                    state.datasets.get(&name).map(|d| (d.clone(), Some(me))),
                                ));
                            }
                            Some(gossip) => {
                                let ask = GossipMsg::Dataset(
                                    name,
                                    Box::new(move |d| reply(ClientResponse::Dataset(d))),
                                );
                                if let Err(ractor::MessagingErr::SendErr(GossipMsg::Dataset(
                                    _,
                                    f,
                                ))) = gossip.send_message(ask)
                                {
                                    f(None);
                                }
                            }
                        }
                        return Ok(());
                    }
                    ClientRequest::ListDatasets => {
                        match &state.gossip {
                            None => {
                                reply(ClientResponse::Datasets(
                                    state.datasets.keys().cloned().collect(),
                                ));
                            }
                            Some(gossip) => {
                                let ask = GossipMsg::Datasets(Box::new(move |names| {
                                    reply(ClientResponse::Datasets(names))
                                }));
                                if let Err(ractor::MessagingErr::SendErr(GossipMsg::Datasets(f))) =
                                    gossip.send_message(ask)
                                {
                                    f(Vec::new());
                                }
                            }
                        }
                        return Ok(());
                    }
                    ClientRequest::Publish {
                        name,
                        session,
                        keys,
                    } => {
                        state.pending.insert(id, reply);
                        state.core.handle_publish(id, name, session, keys);
                    }
                    ClientRequest::Unpublish {
                        name,
                        dataset,
                        owner,
                    } => {
                        state.pending.insert(id, reply);
                        state.core.handle_unpublish(id, name, dataset, owner);
                    }
                    ClientRequest::Replicate { keys, n } => {
                        state.pending.insert(id, reply);
                        state.core.handle_replicate(id, keys, n);
                    }
                    ClientRequest::Snapshot { events_since_ms } => {
                        reply(ClientResponse::Snapshot(Box::new(
                            state.snapshot(events_since_ms),
                        )));
                        return Ok(());
                    }
                    ClientRequest::Dag { session, limit } => {
                        let (nodes, more) = state.core.dag(session, limit as usize);
                        reply(ClientResponse::Dag(nodes, more));
                        return Ok(());
                    }
                    ClientRequest::Retry { keys } => {
                        state.pending.insert(id, reply);
                        state.core.handle_retry(id, keys);
                    }
                    ClientRequest::Rebalance { keys } => {
                        state.pending.insert(id, reply);
                        state.core.handle_rebalance(id, keys);
                    }
                    ClientRequest::Forward { owner, request } => {
                        state.pending.insert(id, reply);
                        state.core.handle_forward(id, &owner, request);
                    }
                    ClientRequest::Submit { graphs } => {
                        state.pending.insert(id, reply);
                        state.core.handle_submit(id, graphs);
                    }
                    ClientRequest::Attach { session } => {
                        state.pending.insert(id, reply);
                        state.core.handle_attach(id, session);
                    }
                    ClientRequest::Close { session } => {
                        state.pending.insert(id, reply);
                        state.core.handle_close(id, session);
                    }
                    ClientRequest::Gather { keys, wait_ms } => {
                        state.pending.insert(id, reply);
                        state.core.handle_gather(id, keys, wait_ms);
                    }
                    ClientRequest::AwaitStatus { keys, all, wait_ms } => {
                        state.pending.insert(id, reply);
                        state.core.handle_await_status(id, keys, all, wait_ms);
                    }
                    ClientRequest::Release { keys } => {
                        state.pending.insert(id, reply);
                        state.core.handle_release(id, keys);
                    }
                }
            }
            NodeMsg::Timer => state.expire(&myself),
            NodeMsg::Seceded(task) => state.core.handle_seceded(task),
            NodeMsg::Status(port) => {
                let _ = port.send(state.status());
                return Ok(());
            }
            NodeMsg::SetDashboard(link) => {
                state.member.dashboard = link;
                if let Some(g) = &state.gossip {
                    let _ = g.send_message(GossipMsg::SetInfo(state.member.clone()));
                }
                return Ok(());
            }
            NodeMsg::SetAddresses(addrs) => {
                state.member.addresses = addrs;
                if let Some(g) = &state.gossip {
                    let _ = g.send_message(GossipMsg::SetInfo(state.member.clone()));
                }
                return Ok(());
            }
            NodeMsg::SetGossip(gossip) => {
                let _ = gossip.send_message(GossipMsg::SetInfo(state.member.clone()));
                // Members reach the core on every change (and with fresh loads every
                // second): what a client is shown is what placement uses.
                let me = myself.clone();
                let _ = gossip.send_message(GossipMsg::Watch(Box::new(move |members| {
                    let _ = me.send_message(NodeMsg::Members(members));
                })));
                state.gossip = Some(gossip);
                myself.send_interval(LOAD_EVERY, || NodeMsg::PublishLoad);
                return Ok(());
            }
            NodeMsg::PublishLoad => {
                if let Some(g) = &state.gossip {
                    let _ = g.send_message(GossipMsg::SetLoad(state.core.load()));
                    let names = state.core.published_names();
                    if !names.is_empty() {
                        let me = myself.clone();
                        let _ = g.send_message(GossipMsg::Unpublished(
                            names,
                            Box::new(move |gone| {
                                if !gone.is_empty() {
                                    let _ = me.send_message(NodeMsg::Unpublished(gone));
                                }
                            }),
                        ));
                    }
                }
                state.refresh_members(&myself);
                return Ok(());
            }
            NodeMsg::Members(members) => {
                let updates: Vec<PeerUpdate> = members
                    .into_iter()
                    .map(|m| PeerUpdate {
                        resources: resources_of(&m.info),
                        aliases: aliases_of(&m.info),
                        node: m.info.id,
                        nthreads: m.info.nthreads,
                        functions_digest: m.info.functions_digest,
                        alive: m.state == MemberState::Alive,
                        load: m.load,
                    })
                    .collect();
                state.core.handle_members(&updates);
            }
            NodeMsg::Peer(from, batch, place) => {
                state.core.handle_peer(&from, batch);
                drop(place);
            }
            NodeMsg::Detached(session) => state.core.handle_detach(session),
            NodeMsg::Claimed(graph, epoch) => state.core.handle_claimed(graph, epoch),
            NodeMsg::Unpublished(names) => state.core.handle_unpublished(names),
            NodeMsg::Leave(done) => {
                tracing::info!("leaving: handing work, results and graphs over to peers");
                state.left = Some(done);
                state.core.handle_leave();
            }
            NodeMsg::Tick => {
                let now = state.started.elapsed().as_millis() as u64;
                state.core.handle_tick(now);
                state.ticks = state.ticks.wrapping_add(1);
                if state.measure_memory
                    && state.ticks.is_multiple_of(MEMORY_EVERY_TICKS)
                    && let Some(rss) = process_memory()
                {
                    state.core.handle_process_memory(rss);
                }
            }
        }
        state.drain(&myself);
        Ok(())
    }
}

/// The names a client may give a member instead of its id: its `--name`, each address as
/// gossiped (a multiaddr), with and without its `/p2p/…` part, and as `host:port`.
fn aliases_of(info: &MemberInfo) -> Vec<Arc<str>> {
    let mut out: Vec<Arc<str>> = Vec::new();
    if !info.name.is_empty() {
        out.push(Arc::from(info.name.as_str()));
    }
    for a in &info.addresses {
        out.push(Arc::from(a.as_str()));
        match a.find("/p2p/") {
            Some(at) => out.push(Arc::from(&a[..at])),
            None => out.push(Arc::from(format!("{a}/p2p/{}", info.id.0).as_str())),
        }
        if let Some(hp) = rdask_gossip::host_port(a) {
            out.push(Arc::from(hp.as_str()));
        }
    }
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_may_be_named_by_its_name_and_addresses() {
        let mut info = MemberInfo {
            id: NodeId(Arc::from("12D3KooWx")),
            addresses: vec!["/ip4/10.0.0.2/tcp/4001/p2p/12D3KooWx".into()],
            nthreads: 1,
            memory_bytes: 0,
            functions_digest: 0,
            functions: 0,
            version: String::new(),
            protocol: 0,
            resources: Vec::new(),
            dashboard: String::new(),
            memory_limit: 0,
            data_port: 0,
            name: "gpu-1".into(),
        };
        let names: Vec<String> = aliases_of(&info).iter().map(|a| a.to_string()).collect();
        assert_eq!(
            names,
            [
                "gpu-1",
                "/ip4/10.0.0.2/tcp/4001/p2p/12D3KooWx",
                "/ip4/10.0.0.2/tcp/4001",
                "10.0.0.2:4001"
            ]
        );
        info.addresses = vec!["/ip4/10.0.0.2/tcp/4001".into()];
        let names: Vec<String> = aliases_of(&info).iter().map(|a| a.to_string()).collect();
        assert_eq!(
            names,
            [
                "gpu-1",
                "/ip4/10.0.0.2/tcp/4001",
                "/ip4/10.0.0.2/tcp/4001/p2p/12D3KooWx",
                "10.0.0.2:4001"
            ]
        );
    }
}
