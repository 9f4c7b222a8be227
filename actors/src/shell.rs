use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use rdask_gossip::{MemberInfo, MemberState, PROTOCOL_VERSION};
use rdask_graph::Registry;
use rustc_hash::FxHashMap;

use crate::core::{NodeCore, RequestId};
use crate::gossip_shell::{GossipMsg, LOAD_EVERY};
use crate::pool::{Completions, TaskPool};
use crate::protocol::{ClientRequest, ClientResponse, NodeStatus};

/// Where the answer to a request goes: a closure that sends it (over a oneshot channel for
/// an in-process client, back to the network loop for a remote one).
pub type ReplyTo = Box<dyn FnOnce(ClientResponse) + Send>;

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
    /// The node now gossips with a cluster through this actor.
    SetGossip(ActorRef<GossipMsg>),
    /// Time to publish the load into the gossiped state.
    PublishLoad,
}

/// What a node actor starts with.
pub struct NodeArgs {
    /// The node's member record (its id is also the node name in task errors).
    pub member: MemberInfo,
    /// The task functions it can run.
    pub registry: &'static Registry,
    /// Threads of its task pool.
    pub nthreads: usize,
}

/// The ractor shell around [`NodeCore`]: one loop that feeds the core and drains its
/// outputs (replies, then jobs to the pool, then timers).
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
        let (pool, completions) = TaskPool::start("rdask-worker", args.nthreads, notify)?;
        Ok(NodeState {
            core: NodeCore::new(&args.member.id.0, args.registry, args.nthreads as u32),
            pool,
            completions,
            pending: FxHashMap::default(),
            next_request: 0,
            member: args.member,
            deadlines: BinaryHeap::new(),
            armed: None,
            gossip: None,
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
                            reply(ClientResponse::Welcome(state.status()));
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
                    ClientRequest::Submit { graphs } => {
                        state.pending.insert(id, reply);
                        state.core.handle_submit(id, graphs);
                    }
                    ClientRequest::Gather { keys, wait_ms } => {
                        state.pending.insert(id, reply);
                        state.core.handle_gather(id, keys, wait_ms);
                    }
                    ClientRequest::Release { keys } => {
                        state.pending.insert(id, reply);
                        state.core.handle_release(id, keys);
                    }
                }
            }
            NodeMsg::Timer => state.expire(&myself),
            NodeMsg::Status(port) => {
                let _ = port.send(state.status());
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
                state.gossip = Some(gossip);
                myself.send_interval(LOAD_EVERY, || NodeMsg::PublishLoad);
                return Ok(());
            }
            NodeMsg::PublishLoad => {
                if let Some(g) = &state.gossip {
                    let _ = g.send_message(GossipMsg::SetLoad(state.core.load()));
                }
                return Ok(());
            }
        }
        state.drain(&myself);
        Ok(())
    }
}
