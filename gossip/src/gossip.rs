//! One node's gossip: membership, the replicated state, and anti-entropy between them.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::state::{Limits, StateMsg};
use crate::{
    ClusterState, Event, LoadSummary, MAX_FRAME_BYTES, MemberInfo, Membership, MembershipConfig,
    NodeId, Peer, Timer,
};

/// Rounds a node may start at once, per anti-entropy period, to a peer whose exchange was
/// cut short by the message limit (a node that lacks much catches up at this pace).
const MAX_FOLLOW_UPS: u32 = 8;

/// A gossip message between nodes, as it goes on the wire (postcard).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Wire {
    /// A membership datagram (foca's own encoding inside).
    Swim(Bytes),
    /// An anti-entropy message and who sent it.
    State {
        /// The sender.
        from: Peer,
        /// The message.
        msg: StateMsg,
    },
}

/// A gossip timer: schedule it as asked, hand it back to [`Gossip::handle_timer`].
#[derive(Clone, Debug, PartialEq)]
pub enum GossipTimer {
    /// A membership timer.
    Swim(Timer),
    /// Time for an anti-entropy round with a random live member.
    AntiEntropy,
    /// Time to forget members dead for longer than the grace period.
    CollectGarbage,
    /// Another anti-entropy round with this peer: the last one was cut short by the message
    /// limit.
    FollowUp(Peer),
}

/// Settings of a node's gossip.
#[derive(Clone, Debug)]
pub struct GossipConfig {
    /// Membership timing.
    pub membership: MembershipConfig,
    /// How often a round of anti-entropy starts.
    pub anti_entropy_every: Duration,
    /// How much one anti-entropy message may carry.
    pub limits: Limits,
    /// How long a dead member's record is kept (shown as down) before it is forgotten.
    pub dead_grace: Duration,
    /// The cluster size the timing is tuned for.
    pub expected_members: u32,
}

impl GossipConfig {
    /// LAN settings for about `expected_members` nodes.
    pub fn lan(expected_members: u32) -> GossipConfig {
        let membership = MembershipConfig::lan(expected_members);
        GossipConfig {
            anti_entropy_every: membership.probe_period,
            membership,
            limits: Limits::default(),
            dead_grace: Duration::from_secs(60),
            expected_members,
        }
    }
}

/// Whether a member is alive, as this node sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberState {
    /// Alive (or this node itself).
    Alive,
    /// Declared dead (left, or failed to answer); forgotten after the grace period.
    Down,
}

/// A member as this node knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    /// Its record.
    pub info: MemberInfo,
    /// Its last published load.
    pub load: LoadSummary,
    /// Alive or down.
    pub state: MemberState,
    /// Milliseconds (of this node's clock) since it was last heard of as alive; 0 for
    /// alive members.
    pub down_for_ms: u64,
}

/// Why a gossip input was refused. The state is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum GossipError {
    /// The bytes are not a gossip message.
    #[error("malformed gossip message: {0}")]
    Malformed(String),
    /// The membership core refused the datagram.
    #[error(transparent)]
    Membership(#[from] crate::MembershipError),
}

/// The gossip of one node: SWIM membership plus the replicated cluster state.
///
/// Driving it: feed one input ([`Gossip::handle_message`], [`Gossip::handle_timer`],
/// [`Gossip::join`], [`Gossip::leave`], [`Gossip::set_load`]) with the current time in
/// milliseconds of the node's clock, then drain [`Gossip::take_sends`],
/// [`Gossip::take_timers`] and [`Gossip::take_events`]. Randomness comes from the seed.
pub struct Gossip {
    membership: Membership,
    state: ClusterState,
    rng: StdRng,
    config: GossipConfig,
    sends: Vec<(Peer, Bytes)>,
    timers: Vec<(Duration, GossipTimer)>,
    events: Vec<Event>,
    /// Members declared down, and when.
    down_since: BTreeMap<NodeId, u64>,
    /// Member records of nodes membership has not seen (yet), and since when.
    unseen: BTreeMap<NodeId, u64>,
    /// Follow-up rounds started in this anti-entropy period.
    follow_ups: u32,
    stats: GossipStats,
}

/// Counters of a node's gossip, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GossipStats {
    /// Anti-entropy rounds started.
    pub rounds: u64,
    /// Datagrams sent (membership and state).
    pub sent: u64,
    /// Bytes of those datagrams.
    pub sent_bytes: u64,
    /// The largest datagram made, in bytes.
    #[serde(default)]
    pub largest: u64,
    /// Datagrams not sent because they would not fit a frame (never expected: messages are
    /// bounded by [`GossipConfig::limits`]).
    #[serde(default)]
    pub oversized: u64,
    /// Anti-entropy rounds started at once after one cut short by the message limit.
    #[serde(default)]
    pub follow_ups: u64,
    /// How many entries of each kind the replicated state holds now.
    #[serde(default)]
    pub sizes: crate::state::StateSizes,
}

impl Gossip {
    /// The gossip of node `me` describing itself with `info`.
    pub fn new(me: Peer, info: MemberInfo, config: GossipConfig, seed: u64) -> Gossip {
        let membership = Membership::new(
            me.clone(),
            &config.membership,
            config.expected_members,
            seed,
        );
        let state = ClusterState::new(info, me.generation);
        let mut g = Gossip {
            membership,
            state,
            rng: StdRng::seed_from_u64(seed ^ 0x0005_eed0_fa7e),
            sends: Vec::new(),
            timers: Vec::new(),
            events: Vec::new(),
            down_since: BTreeMap::new(),
            unseen: BTreeMap::new(),
            follow_ups: 0,
            stats: GossipStats::default(),
            config,
        };
        g.timers
            .push((g.config.anti_entropy_every, GossipTimer::AntiEntropy));
        g.timers
            .push((g.config.dead_grace / 4, GossipTimer::CollectGarbage));
        g
    }

    /// This node's identity.
    pub fn me(&self) -> &Peer {
        self.membership.me()
    }

    /// Asks `seed` to let this node in.
    pub fn join(&mut self, seed: Peer, now_ms: u64) -> Result<(), GossipError> {
        self.membership.join(seed)?;
        self.collect_membership(now_ms);
        Ok(())
    }

    /// Tells the others this node leaves.
    pub fn leave(&mut self, now_ms: u64) -> Result<(), GossipError> {
        self.membership.leave()?;
        self.collect_membership(now_ms);
        Ok(())
    }

    /// Publishes this node's current load.
    pub fn set_load(&mut self, load: LoadSummary) {
        self.state.set_load(load);
    }

    /// This node claims a graph (a session's entry) for the scheduling layer: see
    /// [`ClusterState::claim`]. Returns the epoch claimed, `None` when the session ended.
    pub fn claim(
        &mut self,
        graph: u128,
        ownership: crate::state::Ownership,
        now_ms: u64,
    ) -> Option<u64> {
        self.state.claim(graph, ownership, now_ms)
    }

    /// This node no longer owns a graph (its session ended; `closed`: by its client): the
    /// entry becomes a tombstone (see [`ClusterState::release_owner`]).
    pub fn release_owner(&mut self, graph: u128, closed: bool, now_ms: u64) -> bool {
        let me = self.membership.me().node.clone();
        self.state.release_owner(graph, &me, closed, now_ms)
    }

    /// Writes a dataset entry (for the scheduling layer: the owner of its session).
    pub fn set_dataset(&mut self, name: &str, dataset: crate::state::Dataset, now_ms: u64) {
        self.state.set_dataset(name, dataset, now_ms);
    }

    /// Publishes a new record of this node (e.g. its addresses changed).
    pub fn set_info(&mut self, info: MemberInfo) {
        self.state.set_info(info);
    }

    /// A message from another node.
    pub fn handle_message(&mut self, data: &[u8], now_ms: u64) -> Result<(), GossipError> {
        let limits = rdask_graph::bounded::Limits::for_message(data.len());
        let wire: Wire = rdask_graph::bounded::decode(data, limits)
            .map_err(|e| GossipError::Malformed(e.to_string()))?;
        match wire {
            Wire::Swim(bytes) => {
                let r = self.membership.handle_data(&bytes);
                self.collect_membership(now_ms);
                r?;
            }
            Wire::State { from, msg } => self.handle_state(from, msg, now_ms),
        }
        Ok(())
    }

    /// A timer that fired.
    pub fn handle_timer(&mut self, timer: GossipTimer, now_ms: u64) {
        match timer {
            GossipTimer::Swim(t) => {
                // A stale or refused timer changes nothing.
                let _ = self.membership.handle_timer(t);
                self.collect_membership(now_ms);
            }
            GossipTimer::AntiEntropy => {
                let n = self.membership.live_count();
                if n > 0 {
                    let pick = self.rng.random_range(0..n);
                    let to = self.membership.live().nth(pick).cloned();
                    if let Some(to) = to {
                        self.stats.rounds += 1;
                        self.send_state(to, StateMsg::Hash(self.state.hashes()));
                    }
                }
                self.follow_ups = 0;
                self.timers
                    .push((self.config.anti_entropy_every, GossipTimer::AntiEntropy));
            }
            GossipTimer::FollowUp(to) => {
                if self.membership.is_live(&to.node) {
                    self.stats.rounds += 1;
                    self.stats.follow_ups += 1;
                    self.send_state(to, StateMsg::Hash(self.state.hashes()));
                }
            }
            GossipTimer::CollectGarbage => {
                let grace = self.config.dead_grace.as_millis() as u64;
                let expired: Vec<NodeId> = self
                    .down_since
                    .iter()
                    .filter(|(_, at)| now_ms.saturating_sub(**at) >= grace)
                    .map(|(n, _)| n.clone())
                    .collect();
                for n in expired {
                    self.down_since.remove(&n);
                    self.state.remove(&n, now_ms);
                }
                // Records of nodes membership never saw (gossiped ids that never joined)
                // go after the grace period too.
                let me = self.membership.me().node.clone();
                let seen: Vec<NodeId> = self
                    .state
                    .members()
                    .map(|(n, _)| n.clone())
                    .filter(|n| {
                        *n == me || self.membership.is_live(n) || self.down_since.contains_key(n)
                    })
                    .collect();
                for n in seen {
                    self.unseen.remove(&n);
                }
                let unseen: Vec<NodeId> = self
                    .state
                    .members()
                    .map(|(n, _)| n.clone())
                    .filter(|n| {
                        *n != me && !self.membership.is_live(n) && !self.down_since.contains_key(n)
                    })
                    .collect();
                self.unseen.retain(|n, _| unseen.contains(n));
                for n in unseen {
                    let since = *self.unseen.entry(n.clone()).or_insert(now_ms);
                    if now_ms.saturating_sub(since) >= grace {
                        self.unseen.remove(&n);
                        self.state.remove(&n, now_ms);
                    }
                }
                self.state.collect_garbage(now_ms, 4 * grace, grace);
                self.timers
                    .push((self.config.dead_grace / 4, GossipTimer::CollectGarbage));
            }
        }
    }

    /// Messages to send.
    pub fn take_sends(&mut self) -> Vec<(Peer, Bytes)> {
        self.stats.sent += self.sends.len() as u64;
        self.stats.sent_bytes += self.sends.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
        std::mem::take(&mut self.sends)
    }

    /// What this node's gossip did so far, and the size of its replicated state.
    pub fn stats(&self) -> GossipStats {
        GossipStats {
            sizes: self.state.sizes(),
            ..self.stats
        }
    }

    /// Timers to schedule.
    pub fn take_timers(&mut self) -> Vec<(Duration, GossipTimer)> {
        std::mem::take(&mut self.timers)
    }

    /// Member list changes since the last call.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// The members this node knows, itself included, by node id.
    pub fn members(&self, now_ms: u64) -> Vec<MemberView> {
        let me = &self.membership.me().node;
        let live: std::collections::BTreeSet<&NodeId> =
            self.membership.live().map(|p| &p.node).collect();
        self.state
            .members()
            // A record gossiped before the membership protocol here has seen the node up
            // (it is joining) is not a member yet: listing it as down would have it taken
            // for dead, and its arrival for a return.
            .filter(|(node, _)| {
                *node == me || live.contains(node) || self.down_since.contains_key(*node)
            })
            .map(|(node, info)| {
                let alive = node == me || live.contains(node);
                MemberView {
                    info: info.clone(),
                    load: self.state.load(node).unwrap_or_default(),
                    state: if alive {
                        MemberState::Alive
                    } else {
                        MemberState::Down
                    },
                    down_for_ms: if alive {
                        0
                    } else {
                        self.down_since
                            .get(node)
                            .map_or(0, |at| now_ms.saturating_sub(*at))
                    },
                }
            })
            .collect()
    }

    /// Whether this node holds `node` for alive.
    pub fn is_live(&self, node: &NodeId) -> bool {
        self.membership.is_live(node)
    }

    /// How many members this node holds for alive (itself excluded).
    pub fn live_count(&self) -> usize {
        self.membership.live_count()
    }

    /// The members held alive (itself excluded).
    pub fn live(&self) -> impl Iterator<Item = &Peer> {
        self.membership.live()
    }

    /// The replicated state.
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    fn send_state(&mut self, to: Peer, msg: StateMsg) {
        let wire = Wire::State {
            from: self.membership.me().clone(),
            msg,
        };
        if let Ok(bytes) = postcard::to_allocvec(&wire) {
            self.stats.largest = self.stats.largest.max(bytes.len() as u64);
            if bytes.len() > MAX_FRAME_BYTES {
                self.stats.oversized += 1;
                return;
            }
            self.sends.push((to, Bytes::from(bytes)));
        }
    }

    /// The exchange with `peer` was cut short by the message limit: another round with it
    /// soon (a few per period at most).
    fn follow_up(&mut self, peer: Peer) {
        if self.follow_ups < MAX_FOLLOW_UPS {
            self.follow_ups += 1;
            let after = self.config.anti_entropy_every / (2 * MAX_FOLLOW_UPS);
            self.timers.push((after, GossipTimer::FollowUp(peer)));
        }
    }

    fn handle_state(&mut self, from: Peer, msg: StateMsg, now_ms: u64) {
        let limits = self.config.limits;
        match msg {
            StateMsg::Hash(h) => {
                if let Some(digest) = self.state.digest_for(&h) {
                    self.send_state(from, StateMsg::Digest(digest));
                }
            }
            StateMsg::Digest(theirs) => {
                let (sync, cut) = self.state.sync_for(&theirs, limits);
                if let Some(sync) = sync {
                    self.send_state(from.clone(), StateMsg::Sync(Box::new(sync)));
                }
                if cut {
                    self.follow_up(from);
                }
            }
            StateMsg::Sync(mut sync) => {
                // A removal made elsewhere does not apply to a member this node sees alive:
                // that member refutes it when it hears of it.
                let delta = std::mem::take(&mut sync.delta);
                let mut delta = delta;
                delta.removed.retain(|(n, _)| !self.membership.is_live(n));
                self.state.merge(delta, now_ms);
                let (answer, cut) = self.state.answer(&sync, limits);
                if let Some(answer) = answer {
                    self.send_state(from.clone(), StateMsg::Sync(Box::new(answer)));
                }
                if cut {
                    self.follow_up(from);
                }
            }
        }
    }

    fn collect_membership(&mut self, now_ms: u64) {
        for (to, data) in self.membership.take_sends() {
            if let Ok(bytes) = postcard::to_allocvec(&Wire::Swim(data)) {
                self.sends.push((to, Bytes::from(bytes)));
            }
        }
        for (after, t) in self.membership.take_timers() {
            self.timers.push((after, GossipTimer::Swim(t)));
        }
        for e in self.membership.take_events() {
            match &e {
                Event::Up(p) => {
                    self.down_since.remove(&p.node);
                    // A new member learns the state at once instead of at a random round.
                    let h = self.state.hashes();
                    self.send_state(p.clone(), StateMsg::Hash(h));
                }
                Event::Down(p) => {
                    self.down_since.entry(p.node.clone()).or_insert(now_ms);
                }
                Event::Rejoined(me) => {
                    // Declared dead by the others (a partition, a pause): this node's entries
                    // start a new generation, which beats the tombstones they made.
                    self.state.renew(me.generation);
                }
                _ => {}
            }
            self.events.push(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Ownership;

    fn node(i: u32) -> (Peer, MemberInfo) {
        let id = NodeId(format!("12D3KooWGossipTestNode{i:030}").into());
        let peer = Peer {
            node: id.clone(),
            addr: format!("/ip4/127.0.0.1/tcp/{}", 4000 + i).into(),
            generation: 1,
        };
        let info = MemberInfo {
            id,
            addresses: vec![peer.addr.to_string()],
            nthreads: 2,
            memory_bytes: 1 << 30,
            functions_digest: 7,
            functions: 3,
            version: "test".into(),
            protocol: crate::PROTOCOL_VERSION,
            resources: Vec::new(),
            dashboard: String::new(),
            memory_limit: 0,
            data_port: 0,
            name: String::new(),
        };
        (peer, info)
    }

    /// Nodes driven in virtual time: datagrams delivered at once (each checked against the
    /// frame), timers fired in order.
    struct Cluster {
        cores: Vec<Gossip>,
        timers: Vec<(u64, u64, usize, GossipTimer)>,
        seq: u64,
        now: u64,
        largest: usize,
    }

    impl Cluster {
        fn drain(&mut self) {
            loop {
                let mut any = false;
                for i in 0..self.cores.len() {
                    for (after, t) in self.cores[i].take_timers() {
                        self.seq += 1;
                        self.timers
                            .push((self.now + after.as_millis() as u64, self.seq, i, t));
                    }
                    for (to, bytes) in self.cores[i].take_sends() {
                        any = true;
                        assert!(bytes.len() <= MAX_FRAME_BYTES, "{} bytes", bytes.len());
                        self.largest = self.largest.max(bytes.len());
                        let j = self
                            .cores
                            .iter()
                            .position(|c| c.me().node == to.node)
                            .expect("a known node");
                        let _ = self.cores[j].handle_message(&bytes, self.now);
                    }
                }
                if !any {
                    return;
                }
            }
        }

        fn step(&mut self) {
            self.drain();
            let (k, _) = self
                .timers
                .iter()
                .enumerate()
                .min_by_key(|(_, (at, seq, _, _))| (*at, *seq))
                .expect("timers");
            let (at, _, i, t) = self.timers.swap_remove(k);
            self.now = self.now.max(at);
            self.cores[i].handle_timer(t, self.now);
            self.drain();
        }
    }

    /// 100,000 live sessions on one node: two nodes that join learn them all through
    /// datagrams that each fit the frame.
    #[test]
    fn nodes_that_join_learn_a_hundred_thousand_sessions_in_bounded_datagrams() {
        let config = GossipConfig::lan(3);
        let mut cores: Vec<Gossip> = (0..3)
            .map(|i| {
                let (peer, info) = node(i);
                Gossip::new(peer, info, config.clone(), u64::from(i) + 1)
            })
            .collect();
        let owner = cores[0].me().node.clone();
        for s in 0..100_000u64 {
            let o = Ownership {
                owner: owner.clone(),
                epoch: 1,
                backups: vec![cores[1].me().node.clone(), cores[2].me().node.clone()],
            };
            cores[0].claim(u128::from(crate::keyed::mix(s)) << 64, o, 0);
        }
        let seed = cores[0].me().clone();
        cores[1].join(seed.clone(), 0).unwrap();
        cores[2].join(seed, 0).unwrap();
        let mut c = Cluster {
            cores,
            timers: Vec::new(),
            seq: 0,
            now: 0,
            largest: 0,
        };
        while c.cores[1..]
            .iter()
            .any(|g| g.state().sizes().owners < 100_000)
        {
            assert!(
                c.now < 120_000,
                "not learnt within 120 s: {:?}",
                c.cores[2].state().sizes()
            );
            c.step();
        }
        let h = c.cores[0].state().hashes().owners;
        assert!(c.cores.iter().all(|g| g.state().hashes().owners == h));
        assert!(c.cores.iter().all(|g| g.stats().oversized == 0));
        eprintln!(
            "learnt in {:.1} virtual s; largest datagram {} bytes; follow-up rounds {}",
            c.now as f64 / 1000.0,
            c.largest,
            c.cores.iter().map(|g| g.stats().follow_ups).sum::<u64>()
        );
    }
}
