//! The ractor shell around the gossip core ([`rdask_gossip::Gossip`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use rdask_gossip::{
    Dataset, Event, Gossip, GossipConfig, GossipTimer, LoadSummary, MemberInfo, MemberView, NodeId,
    Ownership, Peer,
};

/// Where the gossip shell sends datagrams: the network layer.
pub type GossipSend = Box<dyn Fn(Peer, Bytes) + Send + Sync>;

/// Messages of the [`GossipActor`].
pub enum GossipMsg {
    /// A datagram from another node.
    Incoming(Bytes, Option<tokio::sync::OwnedSemaphorePermit>),
    /// A timer of the core fired.
    Timer(GossipTimer),
    /// Ask `seed` to let this node in.
    Join(Peer),
    /// Announce that this node leaves; the closure is called once the messages are handed
    /// to the network.
    Leave(Box<dyn FnOnce() + Send>),
    /// This node's load changed.
    SetLoad(LoadSummary),
    /// This node's record changed (e.g. its addresses).
    SetInfo(MemberInfo),
    /// The members this node knows, itself included.
    Members(Box<dyn FnOnce(Vec<MemberView>) + Send>),
    /// This node claims a graph (a session's entry): see
    /// [`rdask_gossip::ClusterState::claim`]. The closure gets the epoch claimed (`None`:
    /// refused, the session had ended).
    Claim(u128, Ownership, Box<dyn FnOnce(Option<u64>) + Send>),
    /// This node no longer owns a graph (its session ended; `true`: its client closed it).
    ReleaseOwner(u128, bool),
    /// The ownership entry of a graph, as this node knows it.
    Owner(u128, Box<dyn FnOnce(Option<Ownership>) + Send>),
    /// Write a dataset entry (this node owns its session, or a client unpublished it here).
    SetDataset(String, Dataset),
    /// A published dataset, with the owner of its session (by the ownership table).
    Dataset(String, DatasetReply),
    /// The names of the published datasets, sorted.
    Datasets(Box<dyn FnOnce(Vec<String>) + Send>),
    /// Which of these datasets were unpublished (their entries are tombstones).
    Unpublished(Vec<String>, Box<dyn FnOnce(Vec<String>) + Send>),
    /// What the gossip did so far.
    Stats(Box<dyn FnOnce(rdask_gossip::GossipStats) + Send>),
    /// Call this with the members (as [`GossipMsg::Members`] answers) now and whenever a
    /// member comes, goes or returns, before anyone can see the change through
    /// [`GossipMsg::Members`]: the node's core knows a member as soon as the node does.
    Watch(MembersWatch),
}

/// Where the members go on every change of membership: see [`GossipMsg::Watch`].
pub type MembersWatch = Box<dyn Fn(Vec<MemberView>) + Send>;

/// Where the answer to a [`GossipMsg::Dataset`] goes.
pub type DatasetReply = Box<dyn FnOnce(Option<(Dataset, Option<NodeId>)>) + Send>;

/// What a gossip actor starts with.
pub struct GossipArgs {
    /// This node as a member.
    pub me: Peer,
    /// Its record.
    pub info: MemberInfo,
    /// Protocol settings.
    pub config: GossipConfig,
    /// Seed of the core's random choices.
    pub seed: u64,
    /// The network.
    pub send: GossipSend,
}

/// The shell: feeds the gossip core with datagrams, timers and the clock, and sends what it
/// asks to send.
pub struct GossipActor;

/// The state of a running [`GossipActor`].
pub struct GossipState {
    core: Gossip,
    send: GossipSend,
    watch: Option<MembersWatch>,
    /// Members held for alive and member records, when the watcher was last told.
    told: (usize, usize),
}

/// Milliseconds of the wall clock: the shell's clock, handed to the core.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl GossipState {
    fn drain(&mut self, myself: &ActorRef<GossipMsg>, now: u64) {
        for (to, data) in self.core.take_sends() {
            (self.send)(to, data);
        }
        for (after, timer) in self.core.take_timers() {
            myself.send_after(after, move || GossipMsg::Timer(timer));
        }
        let mut changed = false;
        for e in self.core.take_events() {
            changed |= matches!(e, Event::Up(_) | Event::Down(_) | Event::Rejoined(_));
            match e {
                Event::Up(p) => tracing::info!(peer = %p.node, addr = %p.addr, "member up"),
                Event::Down(p) => tracing::info!(peer = %p.node, "member down"),
                Event::Rejoined(p) => {
                    tracing::warn!(
                        generation = p.generation,
                        "declared down by the cluster; rejoined"
                    )
                }
                Event::Isolated => tracing::warn!("no live peer left"),
                Event::Connected => tracing::debug!("connected to the cluster"),
                Event::ProbeFailed(p) => {
                    tracing::debug!(peer = %p.node, "a probe failed; suspected")
                }
            }
        }
        // A member is listed once the membership protocol holds it alive and its record has
        // arrived, in either order: a change of either count is a change of the list.
        let counts = (self.core.live_count(), self.core.state().members().len());
        if let Some(watch) = &self.watch
            && (changed || counts != self.told)
        {
            self.told = counts;
            watch(self.core.members(now));
        }
    }
}

impl Actor for GossipActor {
    type Msg = GossipMsg;
    type State = GossipState;
    type Arguments = GossipArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<GossipMsg>,
        args: GossipArgs,
    ) -> Result<GossipState, ActorProcessingErr> {
        let mut state = GossipState {
            core: Gossip::new(args.me, args.info, args.config, args.seed),
            send: args.send,
            watch: None,
            told: (0, 0),
        };
        state.drain(&myself, now_ms());
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<GossipMsg>,
        message: GossipMsg,
        state: &mut GossipState,
    ) -> Result<(), ActorProcessingErr> {
        let now = now_ms();
        match message {
            GossipMsg::Incoming(data, place) => {
                if let Err(e) = state.core.handle_message(&data, now) {
                    tracing::debug!(error = %e, "dropped a gossip message");
                }
                drop(place);
            }
            GossipMsg::Timer(t) => state.core.handle_timer(t, now),
            GossipMsg::Join(seed) => {
                tracing::info!(seed = %seed.node, addr = %seed.addr, "asking to join");
                if let Err(e) = state.core.join(seed, now) {
                    tracing::warn!(error = %e, "cannot join");
                }
            }
            GossipMsg::Leave(done) => {
                if let Err(e) = state.core.leave(now) {
                    tracing::warn!(error = %e, "cannot announce the leave");
                }
                state.drain(&myself, now);
                done();
                return Ok(());
            }
            GossipMsg::SetLoad(load) => state.core.set_load(load),
            GossipMsg::SetInfo(info) => state.core.set_info(info),
            GossipMsg::Members(reply) => {
                reply(state.core.members(now));
                return Ok(());
            }
            GossipMsg::Claim(graph, ownership, reply) => {
                reply(state.core.claim(graph, ownership, now));
            }
            GossipMsg::ReleaseOwner(graph, closed) => {
                state.core.release_owner(graph, closed, now);
            }
            GossipMsg::Owner(graph, reply) => {
                reply(state.core.state().owner(graph).cloned());
                return Ok(());
            }
            GossipMsg::SetDataset(name, dataset) => state.core.set_dataset(&name, dataset, now),
            GossipMsg::Dataset(name, reply) => {
                let s = state.core.state();
                reply(s.dataset(&name).map(|d| {
                    let owner = s
                        .owner(u128::from(d.session) << 64)
                        .map(|o| o.owner.clone());
                    (d.clone(), owner)
                }));
                return Ok(());
            }
            GossipMsg::Unpublished(names, reply) => {
                let s = state.core.state();
                reply(names.into_iter().filter(|n| s.dataset_removed(n)).collect());
                return Ok(());
            }
            GossipMsg::Stats(reply) => {
                reply(state.core.stats());
                return Ok(());
            }
            GossipMsg::Watch(watch) => {
                watch(state.core.members(now));
                state.told = (state.core.live_count(), state.core.state().members().len());
                state.watch = Some(watch);
            }
            GossipMsg::Datasets(reply) => {
                reply(
                    state
                        .core
                        .state()
                        .datasets()
                        .map(|(n, _)| n.to_string())
                        .collect(),
                );
                return Ok(());
            }
        }
        state.drain(&myself, now);
        Ok(())
    }
}

/// Starts a gossip actor (unnamed).
pub async fn spawn_gossip(
    args: GossipArgs,
) -> Result<(ActorRef<GossipMsg>, tokio::task::JoinHandle<()>), ractor::SpawnErr> {
    Actor::spawn(None, GossipActor, args).await
}

/// How often the node publishes its load into the gossiped state.
pub const LOAD_EVERY: Duration = Duration::from_secs(1);
