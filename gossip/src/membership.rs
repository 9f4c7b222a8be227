//! SWIM membership through `foca`, wrapped as an rdask core.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::Duration;

use bytes::Bytes;
use foca::{AccumulatingRuntime, Foca, NoCustomBroadcast, OwnedNotification, PostcardCodec};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::NodeId;

/// A member as the membership protocol knows it: the node's identity, the address peers
/// reach it at, and a generation that a restarted node raises so that its new life wins
/// over its old one.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Peer {
    /// The node (its libp2p peer id).
    pub node: NodeId,
    /// An address it listens on (a multiaddr as text).
    pub addr: std::sync::Arc<str>,
    /// Raised on every restart.
    pub generation: u64,
}

impl foca::Identity for Peer {
    type Addr = NodeId;

    fn renew(&self) -> Option<Self> {
        Some(Peer {
            generation: self.generation + 1,
            ..self.clone()
        })
    }

    fn addr(&self) -> NodeId {
        self.node.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

/// A membership timer: schedule it as asked by [`Membership::take_timers`], hand it back
/// to [`Membership::handle_timer`] when it fires. Stale timers are recognised and ignored.
pub type Timer = foca::Timer<Peer>;

/// A change of the member list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A member is alive (joined, or came back).
    Up(Peer),
    /// A member is down (left, or declared dead after suspicion).
    Down(Peer),
    /// This node was declared down by the others and rejoined under a new generation.
    Rejoined(Peer),
    /// This node has no live peer left.
    Isolated,
    /// This node has live peers again.
    Connected,
    /// A probe of this member went unanswered, directly and indirectly: it is suspected
    /// (it is declared down unless it refutes in time).
    ProbeFailed(Peer),
}

/// Timing of the protocol.
#[derive(Clone, Debug)]
pub struct MembershipConfig {
    /// How often a random member is probed.
    pub probe_period: Duration,
    /// How long a direct probe may take before indirect probes are sent.
    pub probe_rtt: Duration,
    /// Members asked to probe indirectly.
    pub indirect_probes: usize,
    /// How long a suspected member has to refute before it is declared down.
    pub suspect_to_down: Duration,
    /// How long a down member is remembered (so it is not re-added by stale gossip).
    pub remember_down: Duration,
    /// Largest datagram.
    pub max_packet: usize,
}

impl MembershipConfig {
    /// Settings for a LAN (probe every second, suspicion scaled to the cluster size).
    pub fn lan(expected_members: u32) -> MembershipConfig {
        let c = foca::Config::new_lan(NonZeroU32::new(expected_members.max(1)).expect("non-zero"));
        MembershipConfig {
            probe_period: c.probe_period,
            probe_rtt: c.probe_rtt,
            indirect_probes: c.num_indirect_probes.get(),
            suspect_to_down: c.suspect_to_down_after,
            remember_down: c.remove_down_after.unwrap_or(Duration::from_secs(15)),
            max_packet: c.max_packet_size.get(),
        }
    }

    fn to_foca(&self, expected_members: u32) -> foca::Config {
        let mut c =
            foca::Config::new_lan(NonZeroU32::new(expected_members.max(1)).expect("non-zero"));
        c.probe_period = self.probe_period;
        c.probe_rtt = self.probe_rtt;
        c.num_indirect_probes =
            std::num::NonZeroUsize::new(self.indirect_probes.max(1)).expect("non-zero");
        c.suspect_to_down_after = self.suspect_to_down;
        c.remove_down_after = Some(self.remember_down);
        c.max_packet_size =
            std::num::NonZeroUsize::new(self.max_packet.max(512)).expect("non-zero");
        c
    }
}

/// An error of the membership core. The state is unchanged by a rejected input.
#[derive(Debug, thiserror::Error)]
#[error("membership: {0}")]
pub struct MembershipError(String);

/// SWIM membership of one node.
///
/// Driving it: feed one input ([`Membership::handle_data`] for a datagram from a peer,
/// [`Membership::handle_timer`] for a timer that fired, [`Membership::join`],
/// [`Membership::leave`]), then drain [`Membership::take_sends`] (datagrams to send),
/// [`Membership::take_timers`] (timers to schedule) and [`Membership::take_events`]
/// (member list changes). Randomness comes from the seed given at construction.
pub struct Membership {
    foca: Foca<Peer, PostcardCodec, StdRng, NoCustomBroadcast>,
    runtime: AccumulatingRuntime<Peer>,
    events: Vec<Event>,
    /// The live view: members up now, by node.
    up: BTreeMap<NodeId, Peer>,
}

impl Membership {
    /// The membership of the node `me`, with its own random stream from `seed`.
    pub fn new(
        me: Peer,
        config: &MembershipConfig,
        expected_members: u32,
        seed: u64,
    ) -> Membership {
        Membership {
            foca: Foca::new(
                me,
                config.to_foca(expected_members),
                StdRng::seed_from_u64(seed),
                PostcardCodec,
            ),
            runtime: AccumulatingRuntime::new(),
            events: Vec::new(),
            up: BTreeMap::new(),
        }
    }

    /// This node's identity (its generation changes when it rejoins).
    pub fn me(&self) -> &Peer {
        self.foca.identity()
    }

    /// Asks `seed` to let this node in.
    pub fn join(&mut self, seed: Peer) -> Result<(), MembershipError> {
        self.foca
            .announce(seed, &mut self.runtime)
            .map_err(|e| MembershipError(e.to_string()))?;
        self.collect();
        Ok(())
    }

    /// A datagram from a peer. Malformed data is an error and changes nothing.
    pub fn handle_data(&mut self, data: &[u8]) -> Result<(), MembershipError> {
        let r = self
            .foca
            .handle_data(data, &mut self.runtime)
            .map_err(|e| MembershipError(e.to_string()));
        self.collect();
        r
    }

    /// A timer that fired.
    pub fn handle_timer(&mut self, timer: Timer) -> Result<(), MembershipError> {
        let r = self
            .foca
            .handle_timer(timer, &mut self.runtime)
            .map_err(|e| MembershipError(e.to_string()));
        self.collect();
        r
    }

    /// Tells the others this node leaves (a clean shutdown).
    pub fn leave(&mut self) -> Result<(), MembershipError> {
        let r = self
            .foca
            .leave_cluster(&mut self.runtime)
            .map_err(|e| MembershipError(e.to_string()));
        self.collect();
        r
    }

    /// Datagrams to send, in order.
    pub fn take_sends(&mut self) -> Vec<(Peer, Bytes)> {
        std::iter::from_fn(|| self.runtime.to_send()).collect()
    }

    /// Timers to schedule: hand each back to [`Membership::handle_timer`] after its delay.
    pub fn take_timers(&mut self) -> Vec<(Duration, Timer)> {
        std::iter::from_fn(|| self.runtime.to_schedule()).collect()
    }

    /// Member list changes since the last call.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// The members this node holds for alive now (itself excluded), by node id.
    pub fn live(&self) -> impl Iterator<Item = &Peer> {
        self.up.values()
    }

    /// Whether this node holds `node` for alive.
    pub fn is_live(&self, node: &NodeId) -> bool {
        self.up.contains_key(node)
    }

    /// How many members this node holds for alive (itself excluded).
    pub fn live_count(&self) -> usize {
        self.up.len()
    }

    fn collect(&mut self) {
        while let Some(n) = self.runtime.to_notify() {
            let event = match n {
                OwnedNotification::MemberUp(p) => {
                    self.up.insert(p.node.clone(), p.clone());
                    Event::Up(p)
                }
                OwnedNotification::MemberDown(p) => {
                    if self.up.get(&p.node) == Some(&p) {
                        self.up.remove(&p.node);
                    }
                    Event::Down(p)
                }
                OwnedNotification::Rename(old, new) => {
                    if self.up.get(&old.node) == Some(&old) {
                        self.up.insert(new.node.clone(), new.clone());
                    }
                    Event::Up(new)
                }
                OwnedNotification::Rejoin(me) => Event::Rejoined(me),
                OwnedNotification::Idle => Event::Isolated,
                OwnedNotification::Active => Event::Connected,
                OwnedNotification::Defunct => Event::Isolated,
                OwnedNotification::ProbeFailed(_, p) => Event::ProbeFailed(p),
                // Every datagram in and out: not a member list change.
                OwnedNotification::DataReceived(_) | OwnedNotification::DataSent(_) => continue,
            };
            self.events.push(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(i: u32) -> Peer {
        Peer {
            node: NodeId(format!("n{i}").into()),
            addr: format!("/mem/{i}").into(),
            generation: 0,
        }
    }

    /// Delivers every pending datagram between the cores, at once, until none is left.
    fn exchange(cores: &mut [Membership]) {
        for _ in 0..100 {
            let mut moved = false;
            for i in 0..cores.len() {
                for (to, data) in cores[i].take_sends() {
                    let j: usize = to.node.0[1..].parse().unwrap();
                    cores[j].handle_data(&data).unwrap();
                    moved = true;
                }
            }
            if !moved {
                return;
            }
        }
    }

    #[test]
    fn two_nodes_that_join_see_each_other_and_a_leave_is_seen() {
        let config = MembershipConfig::lan(2);
        let mut cores = vec![
            Membership::new(peer(0), &config, 2, 1),
            Membership::new(peer(1), &config, 2, 2),
        ];
        cores[1].join(peer(0)).unwrap();
        exchange(&mut cores);
        assert_eq!(cores[0].live().collect::<Vec<_>>(), vec![&peer(1)]);
        assert_eq!(cores[1].live().collect::<Vec<_>>(), vec![&peer(0)]);
        assert!(cores[0].take_events().contains(&Event::Up(peer(1))));
        assert!(!cores[0].take_timers().is_empty(), "probing is scheduled");
        cores[1].leave().unwrap();
        exchange(&mut cores);
        assert_eq!(cores[0].live_count(), 0);
        assert!(cores[0].take_events().contains(&Event::Down(peer(1))));
    }

    #[test]
    fn malformed_data_is_an_error_and_changes_nothing() {
        let config = MembershipConfig::lan(2);
        let mut m = Membership::new(peer(0), &config, 2, 1);
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for len in 0..300 {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = m.handle_data(&data);
        }
        assert!(m.handle_data(&[0xff; 8]).is_err());
        assert_eq!(m.live_count(), 0);
    }
}
