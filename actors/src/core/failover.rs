//! Owner fail-over: backups, take-over, and the members' side of it.
//!
//! - **Backups.** Every owner keeps copies of its graphs (task specs, the futures clients
//!   hold, its sessions) on [`BACKUPS`] peers chosen by rendezvous hashing of the owner's
//!   name with each live member's: every node computes the same order from the same
//!   membership. New backups get a full copy; afterwards each submission, release and
//!   forgotten task is forwarded with the next batch (a bounded cost per task).
//! - **Take-over.** When membership declares an owner dead, the first live node in its
//!   rendezvous order that holds a copy takes over: it raises the epoch of the owner's
//!   sessions, inserts the copied graphs without placing anything, and asks every live
//!   member ([`PeerMsg::Recover`]) what it holds and runs for the dead owner. A member hands
//!   those tasks and results to the new owner (they are re-keyed, and messages naming the
//!   dead owner are read as naming the new one) and answers with an
//!   [`PeerMsg::Inventory`]. Once every member answered (or after a few seconds), the new
//!   owner rebuilds the state: results held somewhere are finished, tasks running
//!   somewhere stay there, what nobody needs is dropped and the rest is placed again.
//! - **Orphans.** A member keeps a dead owner's tasks and results for [`ORPHAN_MS`],
//!   waiting for a take-over, and drops them after that.

use std::cmp::Reverse;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};

use rdask_gossip::NodeId;
use std::sync::Arc;

use rdask_graph::{Arg, GraphId, Key, TaskError, TaskSpec};
use rustc_hash::{FxHashMap, FxHashSet, FxHasher};

use super::{
    ArgSlot, FetchWaiter, GraphSubmission, NodeCore, RETRY_MS, State, TOMBSTONE_MS, Task, TaskId,
};
use crate::protocol::{PeerMsg, Replica, epoch_generation, next_epoch};

/// Copies of an owner's graphs kept elsewhere.
pub(super) const BACKUPS: usize = 2;
/// How long a member keeps a dead owner's tasks and results for a take-over.
pub(super) const ORPHAN_MS: u64 = 10_000;
/// How long a new owner waits for a member's inventory before asking again.
const RECOVER_RETRY_MS: u64 = 1_000;
/// Times it asks before it rebuilds without that member's answer.
const RECOVER_TRIES: u32 = 3;
/// Longest a node asked to take over a leaving owner waits to know every member that
/// owner knows.
const HANDOVER_WAIT_MS: u64 = 5_000;
/// A hand-over to a thief this recent may still be on its way (the thief not knowing it
/// has the task yet).
const MOVE_IN_TRANSIT_MS: u64 = 2_000;
/// Tasks per replica message (a full copy of a large owner is sent in parts).
const REPLICA_CHUNK: usize = 20_000;
/// How long a peer declared dead still counts as a member for a take-over's quorum.
const QUORUM_WINDOW_MS: u64 = 60_000;
/// Hops of tasks inserted by a take-over start at `generation << EPOCH_HOPS` (one more
/// generation per take-over): above any
/// assignment of the dead owner a member may still remember.
const EPOCH_HOPS: u32 = 20;

/// What a backup keeps of another owner's graphs. Changes commute (a forgotten task is
/// remembered for a while; reference counts may go below zero for a while), so that
/// messages reordered by the network give the same copy.
#[derive(Default)]
pub(super) struct Kept {
    sessions: FxHashMap<u64, u64>,
    /// Graph ids accepted, by session.
    graphs: FxHashMap<u64, FxHashMap<GraphId, u64>>,
    specs: FxHashMap<Key, TaskSpec>,
    refs: FxHashMap<Key, i64>,
    forgotten: FxHashMap<Key, u64>,
    forgotten_order: VecDeque<(u64, Key)>,
    /// Datasets published: name → (session, keys).
    published: FxHashMap<String, (u64, Vec<Key>)>,
    /// Sessions that ended, with the epoch they ended in and when this node heard of it:
    /// a late copy of an older epoch does not bring them back.
    closed: FxHashMap<u64, (u64, u64)>,
    closed_order: VecDeque<(u64, u64)>,
}

/// A take-over waiting for inventories.
pub(super) struct Recovery {
    epoch: u64,
    /// The old owner handed over (it is alive, leaving).
    handover: bool,
    /// Members that have not answered yet.
    pending: FxHashSet<u32>,
    due_ms: u64,
    tries: u32,
    /// Results held by members: key → (holders, size).
    held: FxHashMap<Key, (Vec<u32>, u64)>,
    /// Tasks queued or running on members: key → (node, hops).
    running: FxHashMap<Key, (u32, u32)>,
    /// Tasks that failed on members.
    erred: FxHashMap<Key, TaskError>,
}

impl Replica {
    fn is_empty(&self) -> bool {
        self.sessions.is_empty()
            && self.tasks.is_empty()
            && self.graphs.is_empty()
            && self.keep.is_empty()
            && self.released.is_empty()
            && self.forgotten.is_empty()
            && self.closed.is_empty()
            && self.published.is_empty()
            && self.unpublished.is_empty()
    }
}

/// The entries of `map` (keyed by owner and key) that belong to owner `o`, in key order.
fn owned_by<V>(map: &FxHashMap<(u32, Key), V>, o: u32) -> Vec<(u32, Key)> {
    let mut keys: Vec<(u32, Key)> = map.keys().filter(|(w, _)| *w == o).cloned().collect();
    keys.sort_unstable();
    keys
}

/// An inventory of nothing: the answer of a node that keeps nothing of `old`.
fn empty_inventory(old: NodeId) -> PeerMsg {
    PeerMsg::Inventory {
        old,
        held: Vec::new(),
        running: Vec::new(),
        moved: Vec::new(),
        erred: Vec::new(),
    }
}

fn rendezvous(owner: &str, member: &str) -> u64 {
    let mut h = FxHasher::default();
    owner.hash(&mut h);
    member.hash(&mut h);
    let mut x = h.finish();
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl NodeCore {
    /// Members eligible to keep copies of `owner`'s graphs, in rendezvous order (alive or
    /// not).
    fn rendezvous_order(&self, owner: u32) -> Vec<u32> {
        let name = &self.peers[owner as usize].node.0;
        let leaving = self.leaving.is_some();
        let mut order: Vec<(u64, u32)> = (0..self.peers.len() as u32)
            .filter(|&p| p != owner)
            .filter(|&p| {
                if p == 0 {
                    !leaving
                } else {
                    self.peers[p as usize].eligible && !self.peers[p as usize].leaving
                }
            })
            .map(|p| (rendezvous(name, &self.peers[p as usize].node.0), p))
            .collect();
        order.sort_unstable();
        order.into_iter().map(|(_, p)| p).collect()
    }

    /// Chooses this node's backups again (after a membership change); new ones get a full
    /// copy, former ones are told to drop theirs.
    pub(super) fn update_backups(&mut self) {
        if self.leaving.as_ref().is_some_and(|l| l.handed_over) {
            // Handed over: the successor owns the graphs now; no new copy may appear.
            return;
        }
        let backups: Vec<u32> = self
            .rendezvous_order(0)
            .into_iter()
            .filter(|&p| self.peers[p as usize].alive)
            .take(BACKUPS)
            .collect();
        if backups == self.backups {
            return;
        }
        let old = std::mem::replace(&mut self.backups, backups);
        for &p in &old {
            if !self.backups.contains(&p) && self.peers[p as usize].alive {
                self.send(p, PeerMsg::ReplicaEnd);
            }
        }
        let fresh: Vec<u32> = self
            .backups
            .iter()
            .copied()
            .filter(|p| !old.contains(p))
            .collect();
        if fresh.is_empty() || (self.sessions.is_empty() && self.unfinished == 0) {
            return;
        }
        // What the old backups were about to get is in the snapshot too; they get it as
        // usual with the next batch.
        for part in self.snapshot() {
            for &p in &fresh {
                self.send(p, PeerMsg::Replica(Box::new(part.clone())));
            }
        }
    }

    /// A full copy of this node's graphs, in parts.
    fn snapshot(&self) -> Vec<Replica> {
        let mut tasks = Vec::new();
        let mut keep = Vec::new();
        for slot in &self.slots {
            let Some(t) = &slot.item else { continue };
            if t.cancelled {
                continue;
            }
            tasks.push(self.spec_of(t));
            for _ in 0..t.client_refs {
                keep.push(t.key.clone());
            }
        }
        let mut parts = Vec::new();
        let mut first = Replica {
            reset: true,
            sessions: self.sessions.iter().map(|(&s, &e)| (s, e)).collect(),
            graphs: self
                .graph_order
                .iter()
                .filter_map(|g| self.graphs.get(g).map(|f| (*g, *f)))
                .collect(),
            keep,
            published: self
                .published
                .iter()
                .map(|(n, (s, k))| (n.clone(), *s, k.clone()))
                .collect(),
            ..Replica::default()
        };
        first.sessions.sort_unstable();
        first.published.sort_unstable();
        let mut rest = tasks.split_off(tasks.len().min(REPLICA_CHUNK));
        first.tasks = tasks;
        parts.push(first);
        while !rest.is_empty() {
            let more = rest.split_off(rest.len().min(REPLICA_CHUNK));
            parts.push(Replica {
                tasks: std::mem::replace(&mut rest, more),
                ..Replica::default()
            });
        }
        parts
    }

    /// The spec a task was submitted with.
    fn spec_of(&self, t: &Task) -> TaskSpec {
        let args = t
            .args
            .iter()
            .map(|a| match a {
                ArgSlot::Value(b) => Arg::Value(b.clone()),
                ArgSlot::Dep(d) => Arg::Key(
                    self.task(*d)
                        .map(|d| d.key.clone())
                        .unwrap_or_else(|| Key::from("<gone>")),
                ),
            })
            .collect();
        TaskSpec {
            key: t.key.clone(),
            function: t.entry.name.into(),
            args,
            placement: self.placement_names(&t.placement),
            resources: t.resources.to_vec(),
            priority: super::user_priority(t.priority),
            retries: t.retries,
        }
    }

    /// Sends the backups what changed since the last batch.
    pub(super) fn flush_replica(&mut self) {
        if self.replica_out.is_empty() {
            return;
        }
        let out = std::mem::take(&mut self.replica_out);
        if self.backups.is_empty() {
            return;
        }
        let backups = self.backups.clone();
        let (last, rest) = backups.split_last().expect("not empty");
        for &p in rest {
            self.send(p, PeerMsg::Replica(Box::new(out.clone())));
        }
        self.send(*last, PeerMsg::Replica(Box::new(out)));
    }

    /// A copy of `owner`'s graphs (or a change to it) arrived.
    pub(super) fn replica(&mut self, owner: u32, r: Replica) {
        if let Some(&(to, _)) = self.alias.get(&owner) {
            if to == 0 {
                // Taken over here: futures its clients dropped meanwhile are released on the
                // tasks this node now owns (else their results would be kept, or computed
                // again, for nobody).
                for k in r.released {
                    self.client_release(k);
                }
            }
            return;
        }
        let now = self.now_ms;
        let kept = self.replicas.entry(owner).or_default();
        if r.reset {
            // A full copy; tasks forgotten since it was made stay forgotten (the network
            // may deliver the copy after a later change).
            let forgotten = std::mem::take(&mut kept.forgotten);
            let order = std::mem::take(&mut kept.forgotten_order);
            let closed = std::mem::take(&mut kept.closed);
            let closed_order = std::mem::take(&mut kept.closed_order);
            *kept = Kept {
                forgotten,
                forgotten_order: order,
                closed,
                closed_order,
                ..Kept::default()
            };
        }
        for (s, e) in r.closed {
            // The session ended: never taken over from this copy.
            kept.sessions.remove(&s);
            kept.graphs.remove(&s);
            kept.published.retain(|_, (ps, _)| *ps != s);
            let c = kept.closed.entry(s).or_insert((e, now));
            *c = (c.0.max(e), now);
            kept.closed_order.push_back((now, s));
        }
        for (s, e) in r.sessions {
            if kept.closed.get(&s).is_some_and(|(ce, _)| e <= *ce) {
                continue;
            }
            kept.closed.remove(&s);
            kept.sessions.insert(s, e);
        }
        for (g, f) in r.graphs {
            let s = (g.0 >> 64) as u64;
            if !kept.closed.contains_key(&s) {
                kept.graphs.entry(s).or_default().insert(g, f);
            }
        }
        for (n, s, keys) in r.published {
            kept.published.insert(n, (s, keys));
        }
        for n in r.unpublished {
            kept.published.remove(&n);
        }
        for t in r.tasks {
            if !kept.forgotten.contains_key(&t.key) {
                kept.specs.insert(t.key.clone(), t);
            }
        }
        let mut count = |k: Key, by: i64| {
            let n = kept.refs.entry(k.clone()).or_default();
            *n += by;
            if *n == 0 {
                kept.refs.remove(&k);
            }
        };
        for k in r.keep {
            count(k, 1);
        }
        for k in r.released {
            count(k, -1);
        }
        for k in r.forgotten {
            kept.specs.remove(&k);
            kept.refs.remove(&k);
            kept.forgotten.insert(k.clone(), now);
            kept.forgotten_order.push_back((now, k));
        }
        while let Some((at, _)) = kept.forgotten_order.front() {
            if at + TOMBSTONE_MS > now {
                break;
            }
            let (at, k) = kept.forgotten_order.pop_front().expect("peeked");
            if kept.forgotten.get(&k) == Some(&at) {
                kept.forgotten.remove(&k);
            }
        }
        while let Some(&(at, s)) = kept.closed_order.front() {
            if at + TOMBSTONE_MS > now {
                break;
            }
            kept.closed_order.pop_front();
            if kept.closed.get(&s).is_some_and(|(_, t)| *t == at) {
                kept.closed.remove(&s);
            }
        }
    }

    /// A few keys of the copies kept here (for diagnostics).
    pub fn replica_sample(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .replicas
            .iter()
            .flat_map(|(o, k)| {
                let owner = &self.peers[*o as usize].node;
                k.specs.keys().map(move |k| format!("{owner}:{k}"))
            })
            .collect();
        v.sort();
        v.truncate(6);
        v
    }

    /// Copies of other owners' graphs kept here: (owners, tasks).
    pub fn replica_keys(&self) -> (usize, usize) {
        (
            self.replicas.len(),
            self.replicas.values().map(|k| k.specs.len()).sum(),
        )
    }

    /// After a membership change: owners that died and whose graphs this node should take
    /// over (the first live node of their rendezvous order, among those with a copy here).
    pub(super) fn check_takeovers(&mut self) {
        let mut dead: Vec<u32> = self
            .replicas
            .keys()
            .copied()
            .filter(|&o| !self.peers[o as usize].alive)
            .collect();
        dead.sort_unstable();
        for o in dead {
            let order = self.rendezvous_order(o);
            let Some(rank) = order.iter().position(|&p| p == 0) else {
                continue;
            };
            if order[..rank].iter().all(|&p| !self.peers[p as usize].alive) {
                if !self.has_quorum() {
                    // Cut off with a minority, maybe: the owner may be alive on the other
                    // side, where a take-over can happen. The client falls back to its
                    // own copy should nobody take over.
                    self.stats.no_quorum += 1;
                    continue;
                }
                self.take_over(o, &[]);
            }
        }
    }

    /// Whether this node sees at least half of the cluster alive: itself and the live members
    /// against those and the members declared dead in the last [`QUORUM_WINDOW_MS`] (nodes
    /// that left gracefully do not count). A node cut off with a minority does not take
    /// over the owners it cannot see, so that, once membership has settled, only one side
    /// of a partition owns a graph.
    fn has_quorum(&self) -> bool {
        let (mut alive, mut known) = (1u32, 1u32);
        for peer in &self.peers[1..] {
            if peer.leaving {
                continue;
            }
            if peer.alive {
                alive += 1;
                known += 1;
            } else if peer.dead && self.now_ms < peer.dead_since + QUORUM_WINDOW_MS {
                known += 1;
            }
        }
        // Half is enough: in a cluster of two, the survivor takes over (should the other
        // be alive behind a partition, the higher epoch wins when it heals).
        2 * alive >= known
    }

    /// Membership had declared `p` dead, and now sees it alive again (a partition healed, a
    /// long pause ended). What each side wrote off stays written off: this node drops what
    /// it keeps for `p`'s graphs and tells `p` ([`PeerMsg::Forgot`]), which writes off what
    /// its graphs had here. Messages naming `p` name `p` again (it may own new graphs); if
    /// this node took `p`'s graphs over, `p` steps down ([`PeerMsg::Superseded`]).
    pub(super) fn peer_back(&mut self, p: u32) {
        self.stats.peers_back += 1;
        self.peers[p as usize].revived = true;
        tracing::warn!(
            peer = %self.peers[p as usize].node,
            "a peer declared dead is alive again (a partition healed?): what was written off stays written off"
        );
        self.orphans.remove(&p);
        if let Some((to, epoch)) = self.alias.remove(&p)
            && to == 0
        {
            let mut sessions: Vec<u64> = self
                .taken
                .get(&p)
                .map(|t| t.iter().copied().collect())
                .unwrap_or_default();
            sessions.sort_unstable();
            self.send(p, PeerMsg::Superseded { sessions, epoch });
        }
        self.drop_owner(p);
        self.send(p, PeerMsg::Forgot);
    }

    /// `p` had declared this node dead and dropped what it kept for this node's graphs
    /// (see [`NodeCore::peer_back`]): they are placed or computed again, and what this node
    /// keeps for `p`'s graphs goes too (`p` wrote it off).
    pub(super) fn forgot_by(&mut self, p: u32) {
        self.write_off(p, false);
        if !self.alias.contains_key(&p) {
            self.drop_owner(p);
        }
    }

    /// `from` took over this node's graphs (in `epoch`) while this node was taken for dead:
    /// this node stops owning them. Clients waiting here are told to find the new owner
    /// ([`ClientResponse::Moved`], also the answer to any later submission to these
    /// sessions); tasks of these graphs running here finish unheard; results held by
    /// members are released (members that took the take-over's inventory re-keyed theirs
    /// and are not touched).
    pub(super) fn superseded(&mut self, from: u32, sessions: &[u64], epoch: u64) {
        let stale: Vec<u64> = sessions
            .iter()
            .copied()
            .filter(|s| self.sessions.get(s).is_some_and(|&e| e < epoch))
            .collect();
        if stale.is_empty() {
            return;
        }
        self.stats.stepped_down += 1;
        tracing::warn!(
            by = %self.peers[from as usize].node,
            epoch,
            sessions = stale.len(),
            "another node took over this node's graphs while it was taken for dead: stepping down"
        );
        for s in &stale {
            self.sessions.remove(s);
            self.superseded.insert(*s, from);
        }
        for list in self.taken.values_mut() {
            list.retain(|s| !stale.contains(s));
        }
        if !self.sessions.is_empty() {
            // Tasks are not filed by session: with other sessions still owned here, the
            // stepped-down ones finish here too (their clients, sent elsewhere by their next
            // submission, get their results once, from whichever owner they ask).
            return;
        }
        // Waiting clients find the new owner.
        let text = format!(
            "{} stepped down as the owner of this client's graphs: {} took them over",
            self.node, self.peers[from as usize].node
        );
        self.send_waiters_on(&text);
        // Every task of this node's graphs goes; one running here finishes unheard.
        for idx in 0..self.slots.len() {
            let id = TaskId {
                idx: idx as u32,
                generation: self.slots[idx].generation,
            };
            let Some(t) = self.slots[idx].item.as_mut() else {
                continue;
            };
            let key = t.key.clone();
            if self.index.get(&key) == Some(&id) {
                self.index.remove(&key);
            }
            if matches!(t.state, State::Running) {
                t.cancelled = true;
                t.spec_refs = 0;
                t.client_refs = 0;
                t.deps.clear();
                t.dependents.clear();
                t.waiters.clear();
                continue;
            }
            let hops = t.hops;
            let t = self.slots[idx].item.take().expect("present");
            self.slots[idx].generation = self.slots[idx].generation.wrapping_add(1);
            self.free.push(idx as u32);
            match t.state {
                State::Ready => self.ready_count -= 1,
                State::Memory {
                    value,
                    holders,
                    size,
                } => {
                    if value.is_some() {
                        self.stored -= 1;
                        self.memory_used -= size;
                    }
                    for h in holders {
                        self.release_at_hops(h, key.clone(), hops);
                    }
                }
                State::Remote { node, .. } => self.release_at_hops(node, key, hops),
                _ => {}
            }
        }
        self.unfinished = 0;
        self.no_worker.clear();
        self.fetches.retain(|(o, _), _| *o != 0);
        self.graphs
            .retain(|g, _| !stale.contains(&((g.0 >> 64) as u64)));
        self.graph_order
            .retain(|g| !stale.contains(&((g.0 >> 64) as u64)));
        // The backups' copies are reset by a fresh (empty) snapshot.
        self.backups.clear();
        self.replica_out = Replica::default();
        self.update_backups();
    }

    /// Takes over the graphs of the dead owner `old` (in an epoch marked with this node's
    /// name: distinct from another node's that thinks itself first, see [`next_epoch`]).
    /// `also`: peers to ask as well (the leaving owner's view of the members).
    fn take_over(&mut self, old: u32, also: &[NodeId]) {
        let Some(kept) = self.replicas.remove(&old) else {
            return;
        };
        if kept.sessions.is_empty() && kept.specs.is_empty() {
            return;
        }
        let epoch = next_epoch(
            kept.sessions.values().copied().max().unwrap_or(1),
            &self.node,
        );
        self.stats.takeovers += 1;
        self.alias.insert(old, (0, epoch));
        self.orphans.remove(&old);
        // Graphs the dead owner accepted are known here now (a client may send one again).
        let mut graphs: Vec<(GraphId, u64)> = kept.graphs.into_values().flatten().collect();
        graphs.sort_unstable();
        for (g, f) in graphs {
            if self.graphs.insert(g, f).is_none() {
                self.graph_order.push_back(g);
            }
            if !self.backups.is_empty() {
                self.replica_out.graphs.push((g, f));
            }
        }
        let mut sessions: Vec<(u64, u64)> = kept.sessions.into_iter().collect();
        sessions.sort_unstable();
        self.taken
            .entry(old)
            .or_default()
            .extend(sessions.iter().map(|&(s, _)| s));
        for (s, _) in sessions {
            self.own_session(s, epoch);
            if !self.backups.is_empty() {
                self.replica_out.sessions.push((s, epoch));
            }
        }
        // Its datasets: their references are among the copied futures.
        let mut published: Vec<(String, (u64, Vec<Key>))> = kept.published.into_iter().collect();
        published.sort_unstable();
        for (n, (s, keys)) in published {
            if !self.backups.is_empty() {
                self.replica_out
                    .published
                    .push((n.clone(), s, keys.clone()));
            }
            if self.published.insert(n, (s, keys)).is_none() {
                self.dataset_count(s, 1);
            }
        }
        // The copied tasks, those whose inputs are all known (a lost message may have left
        // holes), as one graph; nothing is placed until the inventories are in.
        let mut specs: Vec<TaskSpec> = kept.specs.into_values().collect();
        specs.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        loop {
            let keys: FxHashSet<&Key> = specs.iter().map(|t| &t.key).collect();
            let complete = |t: &TaskSpec| {
                t.dependencies()
                    .all(|d| keys.contains(d) || self.index.contains_key(d))
            };
            let before = specs.len();
            let kept: Vec<bool> = specs.iter().map(complete).collect();
            let mut i = 0;
            specs.retain(|_| {
                i += 1;
                kept[i - 1]
            });
            if specs.len() == before {
                break;
            }
        }
        let mut keep: Vec<Key> = Vec::new();
        let mut refs: Vec<(Key, i64)> = kept.refs.into_iter().collect();
        refs.sort_unstable();
        for (k, n) in refs {
            for _ in 0..n.max(0) {
                keep.push(k.clone());
            }
        }
        if !self.backups.is_empty() {
            self.replica_out.tasks.extend(specs.iter().cloned());
            self.replica_out.keep.extend(keep.iter().cloned());
        }
        self.adopting = Some(Vec::new());
        let id = GraphId(1u128 << 127 | u128::from(epoch) << 64 | u128::from(old));
        if let Err(e) = self.submit(GraphSubmission {
            id,
            tasks: specs,
            keep,
        }) {
            tracing::warn!(error = %e, "the copied graphs of a dead owner are not valid");
        }
        let adopted = self.adopting.take().unwrap_or_default();
        let base = (epoch_generation(epoch) as u32) << EPOCH_HOPS;
        for &id in &adopted {
            if let Some(t) = self.task_mut(id) {
                t.hops = t.hops.max(base);
            }
        }
        // What this node itself kept for the dead owner.
        let mut held = FxHashMap::default();
        let mine: Vec<(u32, Key)> = owned_by(&self.held, old);
        for k in mine {
            let v = self.held.remove(&k).expect("listed");
            self.held_hops.remove(&k);
            held.insert(k.1, v);
        }
        let foreign: Vec<Key> = owned_by(&self.foreign_index, old)
            .into_iter()
            .map(|(_, k)| k)
            .collect();
        for k in foreign {
            // Queued or running here: placed again by the rebuild (a running copy's value
            // is dropped when it returns). The copies here are void, not later placements
            // (should the old owner come back and place it here).
            self.release_foreign(old, k, 0);
        }
        let mut pending: FxHashSet<u32> = self
            .candidates
            .iter()
            .copied()
            .filter(|&p| p != 0)
            .collect();
        for m in also {
            let p = self.intern(m);
            if p != 0 && p != old && !self.peers[p as usize].dead {
                pending.insert(p);
            }
        }
        if self.peers[old as usize].alive {
            // A leaving owner handing over: it answers too.
            pending.insert(old);
        }
        let name = self.peers[old as usize].node.clone();
        let mut sorted: Vec<u32> = pending.iter().copied().collect();
        sorted.sort_unstable();
        let handover = !also.is_empty();
        for p in sorted {
            self.send(
                p,
                PeerMsg::Recover {
                    old: name.clone(),
                    epoch,
                    handover,
                },
            );
        }
        self.recovery.insert(
            old,
            Recovery {
                epoch,
                handover,
                pending,
                due_ms: self.now_ms + RECOVER_RETRY_MS,
                tries: 1,
                held: FxHashMap::default(),
                running: FxHashMap::default(),
                erred: FxHashMap::default(),
            },
        );
        self.adopted_here.insert(old, (adopted, held));
        if self.recovery[&old].pending.is_empty() {
            self.rebuild(old);
        }
    }

    /// A leaving owner asks this node, its first backup, to take its graphs over now.
    ///
    /// Its tasks running here finish first (their values are then taken over with the rest,
    /// not computed again); those queued here are placed again by the take-over.
    ///
    /// It also waits (at most [`HANDOVER_WAIT_MS`]) until it knows every member the leaving
    /// node knows, so that none is left out of the inventory: a node that has just joined
    /// may not know them all yet.
    pub(super) fn handed_over_to_me(&mut self, from: u32, members: Vec<NodeId>) {
        if self.handovers.iter().any(|h| h.0 == from) {
            return;
        }
        if !self.replicas.contains_key(&from) {
            // No copy here (it was never sent): the leaving node need not wait.
            let old = self.peers[from as usize].node.clone();
            self.send(
                from,
                PeerMsg::Recover {
                    old,
                    epoch: 0,
                    handover: true,
                },
            );
            return;
        }
        let mut queued: Vec<Key> = self
            .foreign_index
            .iter()
            .filter(|((o, _), _)| *o == from)
            .filter(|(_, id)| {
                self.foreign_ref(**id)
                    .is_some_and(|f| f.state != super::ForeignState::Running)
            })
            .map(|((_, k), _)| k.clone())
            .collect();
        queued.sort_unstable();
        for k in queued {
            self.release_foreign(from, k, 0);
        }
        let me = self.peers[0].node.clone();
        let members = members.into_iter().filter(|m| *m != me).collect();
        self.handovers
            .push((from, members, self.now_ms + HANDOVER_WAIT_MS));
        self.handover_progress();
    }

    /// Hand-overs whose tasks running here have finished are taken over.
    pub(super) fn handover_progress(&mut self) {
        if self.handovers.is_empty() {
            return;
        }
        let now = self.now_ms;
        let running: FxHashSet<u32> = self
            .foreign_index
            .keys()
            .map(|(o, _)| *o)
            .filter(|o| self.handovers.iter().any(|h| h.0 == *o))
            .collect();
        let known = |core: &NodeCore, members: &[NodeId]| {
            members.iter().all(|m| {
                core.peer_index
                    .get(m)
                    .is_some_and(|&p| core.peers[p as usize].alive)
            })
        };
        let mut ready = Vec::new();
        let mut waiting = Vec::new();
        for (o, members, until) in std::mem::take(&mut self.handovers) {
            let go = !running.contains(&o) && (known(self, &members) || now >= until);
            if go {
                ready.push((o, members));
            } else {
                waiting.push((o, members, until));
            }
        }
        self.handovers = waiting;
        for (o, members) in ready {
            self.take_over(o, &members);
        }
    }

    /// A new owner took over the dead owner `old`: what this node keeps for it is now
    /// `from`'s; answer with what that is.
    pub(super) fn recover(&mut self, from: u32, old: NodeId, epoch: u64, handover: bool) {
        let o = self.intern(&old);
        if o == 0 {
            // This node handed its graphs over (it is leaving): its results are copied
            // already; the errors of its tasks are final.
            let mut erred: Vec<TaskError> = self
                .slots
                .iter()
                .filter_map(|s| s.item.as_ref())
                .filter_map(|t| match &t.state {
                    State::Erred(e) => Some((**e).clone()),
                    _ => None,
                })
                .collect();
            erred.sort_unstable_by(|a, b| a.key.cmp(&b.key));
            self.send(
                from,
                PeerMsg::Inventory {
                    old,
                    held: Vec::new(),
                    running: Vec::new(),
                    moved: Vec::new(),
                    erred,
                },
            );
            self.handed();
            return;
        }
        let peer = &self.peers[o as usize];
        if peer.alive && peer.revived {
            // The old owner was taken for dead and is back (a partition healed): it keeps
            // what it owns until the new owner's word makes it step down, and what this
            // node keeps for it stays its own.
            self.send(from, empty_inventory(old));
            return;
        }
        if peer.alive && !peer.leaving && !handover {
            // Alive as far as this node knows: its death has not reached this node yet (the
            // new owner asks again), or the new owner is wrong about it (cut off from it);
            // either way what this node keeps for it stays its own for now.
            return;
        }
        if let Some(&(to, e)) = self.alias.get(&o)
            && (to != from || e != epoch)
        {
            if to == 0 && epoch > e {
                // Two nodes took over the same owner (their views of the members differed):
                // the higher epoch owns its sessions, this node steps down.
                let mut sessions: Vec<u64> = self
                    .taken
                    .get(&o)
                    .map(|t| t.iter().copied().collect())
                    .unwrap_or_default();
                sessions.sort_unstable();
                self.superseded(from, &sessions, epoch);
            }
            // Another take-over came first: its owner keeps what was here.
            self.send(from, empty_inventory(old));
            return;
        }
        let peer = &mut self.peers[o as usize];
        if !peer.alive && !peer.dead && !handover {
            // Not listed by this node's membership yet (this node joined since): dead on the
            // new owner's word, so that membership listing it alive later reads as its return
            // (`peer_back`: the alias goes, it is told `Forgot`) and not as a member that
            // never left, whose every message the alias would void for good.
            peer.dead = true;
            peer.dead_since = self.now_ms;
        }
        self.alias.insert(o, (from, epoch));
        self.orphans.remove(&o);
        self.replicas.remove(&o);
        let mut held = Vec::new();
        let keys: Vec<(u32, Key)> = owned_by(&self.held, o);
        for k in keys {
            let v = self.held.remove(&k).expect("listed");
            held.push((k.1.clone(), v.len() as u64));
            if let Some(h) = self.held_hops.remove(&k) {
                self.held_hops.insert((from, k.1.clone()), h);
            }
            if let Some(same) = self.held.insert((from, k.1), v) {
                // The new owner's own copy of the same key: one value, counted once.
                self.stored -= 1;
                self.memory_used -= same.len() as u64;
            }
        }
        let mut running = Vec::new();
        let keys: Vec<(u32, Key)> = owned_by(&self.foreign_index, o);
        for k in keys {
            let id = self.foreign_index.remove(&k).expect("listed");
            if let Some(f) = self.foreign_mut(id) {
                f.owner = from;
                running.push((k.1.clone(), f.hops));
                for a in &mut f.args {
                    if let super::ForeignArg::Input { holders, .. } = a {
                        for h in holders.iter_mut() {
                            if *h == o {
                                *h = from;
                            }
                        }
                    }
                }
            }
            self.foreign_index.insert((from, k.1), id);
        }
        let mut moved = Vec::new();
        let mut erred = Vec::new();
        let keys: Vec<(u32, Key)> = owned_by(&self.gone, o);
        for k in keys {
            let (g, at) = self.gone.remove(&k).expect("listed");
            if let super::Gone::Erred(e) = &g {
                erred.push(e.clone());
            }
            if let super::Gone::Moved(thief, hops) = g
                && thief != from
                && self.peers[thief as usize].alive
                && at + MOVE_IN_TRANSIT_MS > self.now_ms
            {
                // In transit, maybe: the thief may not know it has it yet.
                moved.push((k.1.clone(), self.peers[thief as usize].node.clone(), hops));
            }
            self.gone.insert((from, k.1.clone()), (g, at));
            self.gone_order.push_back((at, from, k.1));
        }
        let keys: Vec<(u32, Key)> = owned_by(&self.fetches, o);
        for k in keys {
            let mut f = self.fetches.remove(&k).expect("listed");
            for h in f.holders.iter_mut() {
                if *h == o {
                    *h = from;
                }
            }
            if !f.holders.contains(&from) {
                f.holders.push(from);
            }
            f.due_ms = self.now_ms;
            self.fetches.insert((from, k.1), f);
        }
        held.sort_unstable();
        running.sort_unstable();
        moved.sort_unstable();
        tracing::info!(
            old = %old,
            new_owner = %self.peers[from as usize].node,
            held = held.len(),
            running = running.len(),
            "handed what this node keeps of a dead or leaving owner to its successor"
        );
        erred.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        self.send(
            from,
            PeerMsg::Inventory {
                old,
                held,
                running,
                moved,
                erred,
            },
        );
    }

    /// A member's answer to a take-over of this node.
    pub(super) fn inventory(
        &mut self,
        from: u32,
        old: NodeId,
        held: Vec<(Key, u64)>,
        running: Vec<(Key, u32)>,
        moved: Vec<(Key, NodeId, u32)>,
        erred: Vec<TaskError>,
    ) {
        let o = self.intern(&old);
        // A task handed to a thief runs there (the thief's own answer, when it has it, says
        // the same or more hops).
        let moved: Vec<(Key, u32, u32)> = moved
            .into_iter()
            .map(|(k, thief, hops)| (k, self.intern(&thief), hops))
            .collect();
        match self.recovery.get_mut(&o) {
            Some(r) => {
                r.pending.remove(&from);
                for e in erred {
                    r.erred.insert(e.key.clone(), e);
                }
                for (k, size) in held {
                    let e = r.held.entry(k).or_insert_with(|| (Vec::new(), size));
                    if !e.0.contains(&from) {
                        e.0.push(from);
                    }
                }
                for (k, thief, hops) in moved {
                    if thief == o {
                        // Stolen back by the old owner: it ran its own task.
                        continue;
                    }
                    let e = r.running.entry(k).or_insert((thief, hops));
                    if hops > e.1 {
                        *e = (thief, hops);
                    }
                }
                for (k, hops) in running {
                    let e = r.running.entry(k).or_insert((from, hops));
                    if hops >= e.1 {
                        *e = (from, hops);
                    }
                }
                if r.pending.is_empty() {
                    self.rebuild(o);
                }
            }
            None => {
                // Late: the state was rebuilt without this answer. Copies are welcome if
                // the value is finished; anything else is not needed there.
                for (k, size) in held {
                    self.holding(from, k, size);
                }
                for (k, _) in running {
                    let placed_there = self
                        .index
                        .get(&k)
                        .and_then(|id| self.task(*id))
                        .is_some_and(
                            |t| matches!(t.state, State::Remote { node, .. } if node == from),
                        );
                    if !placed_there {
                        self.release_at(from, k);
                    }
                }
            }
        }
    }

    /// News of a task of a take-over still waiting for inventories (a Done or a copy
    /// reported by `from`): kept for the rebuild. Whether there was such a take-over.
    pub(super) fn recovering(
        &mut self,
        from: u32,
        key: &Key,
        size: u64,
        error: Option<&TaskError>,
    ) -> bool {
        let Some(r) = self.recovery.values_mut().next() else {
            return false;
        };
        match error {
            Some(e) => {
                r.erred.insert(key.clone(), e.clone());
            }
            None => {
                let e = r
                    .held
                    .entry(key.clone())
                    .or_insert_with(|| (Vec::new(), size));
                e.1 = e.1.max(size);
                if !e.0.contains(&from) {
                    e.0.push(from);
                }
            }
        }
        true
    }

    /// The clock for fail-over: inventories not in, orphans waited for long enough.
    pub(super) fn failover_tick(&mut self) {
        let now = self.now_ms;
        let mut due: Vec<u32> = self
            .recovery
            .iter()
            .filter(|(_, r)| r.due_ms <= now)
            .map(|(&o, _)| o)
            .collect();
        due.sort_unstable();
        for o in due {
            let r = self.recovery.get_mut(&o).expect("listed");
            r.pending.retain(|&p| self.peers[p as usize].alive);
            if r.tries >= RECOVER_TRIES || r.pending.is_empty() {
                let missing: Vec<String> = r
                    .pending
                    .iter()
                    .map(|&p| self.peers[p as usize].node.to_string())
                    .collect();
                if !missing.is_empty() {
                    tracing::warn!(
                        ?missing,
                        "rebuilding without the inventories of some members"
                    );
                }
                self.rebuild(o);
                continue;
            }
            r.tries += 1;
            r.due_ms = now + RECOVER_RETRY_MS;
            let (epoch, handover) = (r.epoch, r.handover);
            let mut ask: Vec<u32> = r.pending.iter().copied().collect();
            ask.sort_unstable();
            let name = self.peers[o as usize].node.clone();
            for p in ask {
                self.send(
                    p,
                    PeerMsg::Recover {
                        old: name.clone(),
                        epoch,
                        handover,
                    },
                );
            }
        }
        let mut expired: Vec<u32> = self
            .orphans
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(&o, _)| o)
            .collect();
        expired.sort_unstable();
        for o in expired {
            self.orphans.remove(&o);
            if !self.peers[o as usize].alive && !self.alias.contains_key(&o) {
                self.drop_owner(o);
                // Another backup took over (or none could): this copy is not needed.
                self.replicas.remove(&o);
            }
        }
    }

    /// Drops every task and result of the owner `o` kept here.
    pub(super) fn drop_owner(&mut self, o: u32) {
        let foreign: Vec<Key> = owned_by(&self.foreign_index, o)
            .into_iter()
            .map(|(_, k)| k)
            .collect();
        let held: Vec<Key> = owned_by(&self.held, o)
            .into_iter()
            .map(|(_, k)| k)
            .collect();
        if foreign.is_empty() && held.is_empty() {
            return;
        }
        // Void the assignments this node had of them, not later ones: the owner places
        // again what it writes off (see `forgot_by`), with more hops, and possibly here.
        // (Voiding every assignment turned those away unanswered until the record
        // expired, minutes later.)
        for k in foreign {
            self.release_foreign(o, k, 0);
        }
        for k in held {
            let hops = self.held_hops.get(&(o, k.clone())).copied().unwrap_or(1);
            self.release_foreign(o, k, hops);
        }
        self.stats.orphans_dropped += 1;
    }

    /// Every member answered (or the wait is over): the state of the dead owner's graphs is
    /// rebuilt from what the members hold and run, and what is missing is placed again.
    fn rebuild(&mut self, old: u32) {
        let Some(r) = self.recovery.remove(&old) else {
            return;
        };
        let Some((adopted, mut here)) = self.adopted_here.remove(&old) else {
            return;
        };
        let now = self.now_ms;
        // Finished where a value is held (here first); running where a member runs it.
        for &id in &adopted {
            let Some(t) = self.task(id) else { continue };
            if !matches!(t.state, State::Waiting) {
                continue;
            }
            let key = t.key.clone();
            if let Some(e) = r.erred.get(&key) {
                // Failed already: final (its dependents fail with it).
                let e = Arc::new(e.clone());
                self.finish(id, Err(e));
                self.stats.adopted += 1;
            } else if let Some(v) = here.remove(&key) {
                // The value is already counted in this node's memory.
                let size = v.len() as u64;
                let t = self.task_mut(id).expect("exists");
                t.state = State::Memory {
                    value: Some(v),
                    holders: Vec::new(),
                    size,
                };
                // Gathers that came in during the recovery.
                let waiters = std::mem::take(&mut t.waiters);
                self.unfinished -= 1;
                self.stats.adopted += 1;
                for w in waiters {
                    self.waiter_progress(w);
                }
            } else if let Some((holders, size)) = r.held.get(&key) {
                let holders: Vec<u32> = holders
                    .iter()
                    .copied()
                    .filter(|&h| self.peers[h as usize].alive)
                    .collect();
                if holders.is_empty() {
                    continue;
                }
                let t = self.task_mut(id).expect("exists");
                t.state = State::Memory {
                    value: None,
                    holders,
                    size: *size,
                };
                let waiters = std::mem::take(&mut t.waiters);
                self.unfinished -= 1;
                self.stats.adopted += 1;
                for w in waiters {
                    self.fetch_own(id, FetchWaiter::Gather(w));
                }
            } else if let Some(&(node, hops)) = r.running.get(&key)
                && self.peers[node as usize].alive
            {
                let due_ms = now + RETRY_MS;
                let t = self.task_mut(id).expect("exists");
                t.hops = hops;
                t.state = State::Remote {
                    node,
                    due_ms,
                    acks: 0,
                    hops,
                };
                self.retry.push(Reverse((due_ms, id.idx, id.generation)));
                self.peers[node as usize].assigned_since += 1;
                self.stats.adopted += 1;
            }
        }
        // Values kept here for keys the copy did not have.
        for (_, v) in here {
            self.stored -= 1;
            self.memory_used -= v.len() as u64;
        }
        // Every other copy on members is known, or dropped; tasks running where the
        // rebuilt state does not expect them are stopped.
        let mut held: Vec<(Key, (Vec<u32>, u64))> = r.held.into_iter().collect();
        held.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (k, (holders, size)) in held {
            for h in holders {
                self.holding(h, k.clone(), size);
            }
        }
        let mut running: Vec<(Key, (u32, u32))> = r.running.into_iter().collect();
        running.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (k, (node, _)) in running {
            let expected = self
                .index
                .get(&k)
                .and_then(|id| self.task(*id))
                .is_some_and(|t| match t.state {
                    State::Remote { node: n, .. } => n == node,
                    State::Memory { ref holders, .. } => holders.contains(&node),
                    _ => false,
                });
            if !expected {
                self.release_at(node, k);
            }
        }
        // Counts follow from the states.
        for &id in &adopted {
            let Some(t) = self.task(id) else { continue };
            let waiting = t
                .deps
                .iter()
                .filter(|d| !self.task(**d).is_some_and(|dt| dt.state.available()))
                .count() as u32;
            let pending = t
                .dependents
                .iter()
                .filter(|d| self.task(**d).is_some_and(|dt| !dt.state.finished()))
                .count() as u32;
            let t = self.task_mut(id).expect("exists");
            t.waiting_on = waiting;
            t.pending_dependents = pending;
        }
        // What nobody needs is not computed, nor left running (dependents first).
        for &id in adopted.iter().rev() {
            let Some(t) = self.task(id) else { continue };
            if !matches!(t.state, State::Waiting | State::Remote { .. })
                || t.client_refs > 0
                || t.pending_dependents > 0
            {
                continue;
            }
            let deps = t.deps.clone();
            if let State::Remote { node, .. } = t.state {
                let key = t.key.clone();
                self.release_at(node, key);
                self.peers[node as usize].assigned_since =
                    self.peers[node as usize].assigned_since.saturating_sub(1);
            }
            self.task_mut(id).expect("exists").state = State::Released;
            self.unfinished -= 1;
            for d in deps {
                if let Some(dt) = self.task_mut(d)
                    && dt.pending_dependents > 0
                {
                    dt.pending_dependents -= 1;
                }
            }
        }
        // Gathers waiting on values now known to be held elsewhere fetch them.
        for &id in &adopted {
            let Some(t) = self.task_mut(id) else { continue };
            if matches!(t.state, State::Memory { value: None, .. }) && !t.waiters.is_empty() {
                let waiters = std::mem::take(&mut t.waiters);
                for w in waiters {
                    self.fetch_own(id, super::FetchWaiter::Gather(w));
                }
            } else if matches!(t.state, State::Memory { value: Some(_), .. }) {
                let waiters = std::mem::take(&mut t.waiters);
                for w in waiters {
                    self.waiter_progress(w);
                }
            }
        }
        for &id in &adopted {
            if self
                .task(id)
                .is_some_and(|t| matches!(t.state, State::Waiting) && t.waiting_on == 0)
            {
                self.place(id);
            }
        }
        for &id in &adopted {
            if self.task(id).is_some_and(|t| t.state.finished()) {
                self.maybe_forget(id);
            }
        }
        tracing::info!(
            owner = %self.peers[old as usize].node,
            epoch = r.epoch,
            tasks = adopted.len(),
            adopted = self.stats.adopted,
            "took over the graphs of a dead or leaving owner"
        );
    }

    /// The owner named in a message: a dead owner taken over reads as its successor.
    pub(super) fn owner_of(&mut self, node: &NodeId) -> u32 {
        let p = self.intern(node);
        match self.alias.get(&p) {
            Some(&(to, _)) => to,
            None => p,
        }
    }
}
