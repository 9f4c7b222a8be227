//! Graceful leave: a node told to stop hands over its work, its results and its graphs
//! before it goes, so that nothing it computed is computed again.
//!
//! 1. It tells every member it is leaving ([`PeerMsg::Leaving`]): nothing more is placed on
//!    it, and it is no longer anyone's backup.
//! 2. Tasks of other owners queued here go back to their owners
//!    ([`PeerMsg::Returned`]); new assignments are returned at once. Nothing new starts.
//! 3. Once the running tasks have finished, every result kept here is copied to a peer
//!    ([`PeerMsg::Take`]: results of other owners to their owner, its own graphs' results
//!    to its first backup), which fetches it and answers [`PeerMsg::Stored`].
//! 4. Then the node sends its last changes to its backups and asks the first one to take
//!    its graphs over now ([`PeerMsg::HandOver`]); the take-over is the one of a dead owner
//!    (see `failover.rs`), with the leaving node answering like any member. Its own state is
//!    dropped without releases: the tasks belong to the new owner.
//! 5. [`NodeCore::left`] then says the node may stop.

use rdask_graph::Key;
use rustc_hash::FxHashSet;

use super::{FetchWaiter, ForeignState, Gone, NodeCore, State};
use crate::protocol::{PeerMsg, Replica};

/// Where a leaving node is.
#[derive(Default)]
pub(super) struct Leaving {
    /// Copies asked for ([`PeerMsg::Take`] sent).
    stores_sent: bool,
    /// Copies not confirmed yet, by key (the owner named in the answer may be the one
    /// that took the graphs over since).
    pending: FxHashSet<Key>,
    /// [`PeerMsg::HandOver`] sent (or nothing to hand over).
    pub(super) handed_over: bool,
    /// The node that takes over its graphs.
    successor: Option<u32>,
    /// Everything is handed over.
    done: bool,
}

impl NodeCore {
    /// The node is told to stop: it hands its queued tasks back to their owners, lets its
    /// running tasks finish, copies its results to peers and hands its graphs to its first
    /// backup. [`NodeCore::left`] says when that is done.
    pub fn handle_leave(&mut self) {
        if self.leaving.is_some() {
            return;
        }
        self.leaving = Some(Leaving::default());
        let mut peers: Vec<u32> = (1..self.peers.len() as u32)
            .filter(|&p| self.peers[p as usize].alive)
            .collect();
        peers.sort_unstable();
        for p in peers {
            self.send(p, PeerMsg::Leaving);
        }
        // Tasks of other owners that have not started go back.
        let mut queued: Vec<(u32, Key, u32)> = self
            .foreign
            .iter()
            .filter_map(|s| s.item.as_ref())
            .filter(|f| f.state != ForeignState::Running && !f.cancelled)
            .map(|f| (f.owner, f.key.clone(), f.hops))
            .collect();
        queued.sort_unstable_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        for (owner, key, hops) in queued {
            self.release_foreign(owner, key.clone(), hops);
            self.send(owner, PeerMsg::Returned { key, hops });
        }
        self.leave_progress();
    }

    /// Whether a node told to leave has handed everything over (it may stop now).
    pub fn left(&self) -> bool {
        self.leaving.as_ref().is_some_and(|l| l.done)
    }

    /// Whether the node was told to leave.
    pub fn is_leaving(&self) -> bool {
        self.leaving.is_some()
    }

    /// Moves a leave forward: called after every input.
    pub(super) fn leave_progress(&mut self) {
        let Some(l) = &self.leaving else { return };
        if l.done || self.in_flight > 0 {
            return;
        }
        if !l.stores_sent {
            let pending = self.send_copies();
            let l = self.leaving.as_mut().expect("leaving");
            l.pending = pending;
            l.stores_sent = true;
        }
        let l = self.leaving.as_ref().expect("leaving");
        if !l.pending.is_empty() || l.handed_over {
            return;
        }
        let owns = !self.sessions.is_empty() || !self.index.is_empty();
        let successor = if owns {
            self.backups.first().copied()
        } else {
            None
        };
        if let Some(b) = successor {
            // The backups get the last changes first (same stream, in order). The state
            // stays until the successor's take-over reaches this node (see `handed`).
            self.flush_replica();
            // Every peer not known dead, members or not yet (a node that just joined may
            // already have stolen tasks of this node's graphs).
            let members = (1..self.peers.len())
                .filter(|&p| !self.peers[p].dead && !self.peers[p].leaving)
                .map(|p| self.peers[p].node.clone())
                .collect();
            self.send(b, PeerMsg::HandOver { members });
        }
        let l = self.leaving.as_mut().expect("leaving");
        l.handed_over = true;
        l.successor = successor;
        l.done = successor.is_none();
    }

    /// Asks peers to copy every result kept here; the copies to wait for.
    fn send_copies(&mut self) -> FxHashSet<Key> {
        let mut pending = FxHashSet::default();
        let me = self.peers[0].node.clone();
        // Results of other owners: to the owner itself, or (the owner leaving too, or
        // gone) to another peer, which tells whoever owns the graph then.
        let mut held: Vec<(u32, Key)> = self.held.keys().cloned().collect();
        held.sort_unstable();
        let others: Vec<u32> = self
            .candidates
            .iter()
            .copied()
            .filter(|&p| p != 0)
            .collect();
        for (o, key) in held {
            let peer = &self.peers[o as usize];
            let to = if peer.alive && !peer.leaving && peer.eligible {
                o
            } else if others.is_empty() {
                continue;
            } else {
                let mut h = rustc_hash::FxHasher::default();
                std::hash::Hash::hash(&key, &mut h);
                others[(std::hash::Hasher::finish(&h) % others.len() as u64) as usize]
            };
            let owner = self.peers[o as usize].node.clone();
            let size = self.held[&(o, key.clone())].len() as u64;
            self.send(
                to,
                PeerMsg::Take {
                    owner,
                    key: key.clone(),
                    size,
                },
            );
            pending.insert(key);
        }
        // Results of this node's graphs: to the backup that takes the graphs over.
        if let Some(&b) = self.backups.first() {
            let mut own: Vec<(Key, u64)> = self
                .slots
                .iter()
                .filter_map(|s| s.item.as_ref())
                .filter_map(|t| match t.state {
                    State::Memory {
                        value: Some(_),
                        size,
                        ..
                    } => Some((t.key.clone(), size)),
                    _ => None,
                })
                .collect();
            own.sort_unstable();
            for (key, size) in own {
                self.send(
                    b,
                    PeerMsg::Take {
                        owner: me.clone(),
                        key: key.clone(),
                        size,
                    },
                );
                pending.insert(key);
            }
        }
        pending
    }

    /// A leaving peer asks for a copy of a result it keeps.
    pub(super) fn take(&mut self, from: u32, owner: rdask_gossip::NodeId, key: Key, size: u64) {
        let o = self.owner_of(&owner);
        if o == 0
            && !self.recovery.is_empty()
            && self
                .index
                .get(&key)
                .and_then(|id| self.task(*id))
                .is_some_and(|t| matches!(t.state, State::Waiting))
        {
            // A result of a take-over still waiting for inventories: the leaving node's
            // copy may be the only one (its inventory, sent before, names it), so it is
            // fetched and kept for the rebuild, not waved through.
            self.fetch(0, key, vec![from], FetchWaiter::Adopt(from));
            return;
        }
        let here = if o == 0 {
            if self
                .index
                .get(&key)
                .and_then(|id| self.task(*id))
                .is_some_and(|t| matches!(t.state, State::Remote { .. }))
            {
                // Its news of the task was lost or is late: finished there.
                self.remote_done(from, key.clone(), size, None, 0, 0);
            }
            match self.index.get(&key).and_then(|id| self.task(*id)) {
                Some(t) => !matches!(t.state, State::Memory { value: None, .. }),
                // Not known (any more): nothing to keep.
                None => true,
            }
        } else {
            self.held.contains_key(&(o, key.clone()))
        };
        if here {
            self.send(from, PeerMsg::Stored { owner, key });
            return;
        }
        self.fetch(o, key, vec![from], FetchWaiter::Take(from));
    }

    /// A peer kept a copy of a result this leaving node had.
    pub(super) fn stored(&mut self, key: Key) {
        if let Some(l) = &mut self.leaving {
            l.pending.remove(&key);
        }
    }

    /// A peer is leaving: nothing more is placed on it, and it keeps no copies.
    pub(super) fn peer_leaving(&mut self, p: u32) {
        self.peers[p as usize].leaving = true;
        self.refresh_candidates();
        self.update_backups();
    }

    /// A task placed on `from` comes back unstarted.
    pub(super) fn returned(&mut self, from: u32, key: Key, hops: u32) {
        if !self.peers[from as usize].leaving {
            // Only a leaving node gives work back: its `Leaving` did not reach this node (it
            // did not know this node yet). Nothing more is placed on it.
            self.peer_leaving(from);
        }
        let Some((id, node, known)) = self.placed_remote(&key) else {
            return;
        };
        if node != from && hops < known {
            return;
        }
        self.place_again(id, hops);
    }

    /// This node handed its graphs over: it forgets them without releasing anything (the
    /// tasks, their results on peers and the clients' futures now belong to the successor).
    /// Clients waiting here are told `Moved` (a gather's timer firing later would answer
    /// "unknown" for keys forgotten here, which reads as lost results).
    pub(super) fn step_down(&mut self) {
        if let Some(why) = self.moved_away() {
            self.send_waiters_on(&why);
        }
        for idx in 0..self.slots.len() {
            let slot = &mut self.slots[idx];
            if let Some(t) = slot.item.take() {
                slot.generation = slot.generation.wrapping_add(1);
                self.free.push(idx as u32);
                if let State::Memory {
                    value: Some(_),
                    size,
                    ..
                } = t.state
                {
                    self.stored -= 1;
                    self.memory_used -= size;
                }
            }
        }
        self.index.clear();
        // Only this node's own tasks were queued (others' went back).
        self.ready.clear();
        self.blocked.clear();
        self.ready_count = 0;
        self.unfinished = 0;
        self.no_worker.clear();
        self.retry.clear();
        self.fetches.retain(|(o, _), _| *o != 0);
        self.sessions.clear();
        self.backups.clear();
        self.replica_out = Replica::default();
    }

    /// The successor's take-over reached this leaving node: it forgets its graphs, and its
    /// part is done.
    pub(super) fn handed(&mut self) {
        if let Some(l) = &mut self.leaving
            && l.handed_over
            && !l.done
        {
            l.done = true;
            self.step_down();
        }
    }

    /// Why a client request about graphs is not answered here: this node handed its graphs
    /// over and forgot them. The client, told `Moved`, re-attaches to the owner the table
    /// names (an answer of "unknown key" would read as a lost result).
    pub fn moved_away(&self) -> Option<String> {
        let l = self.leaving.as_ref()?;
        let successor = l.successor.filter(|_| l.done)?;
        Some(format!(
            "{} left the cluster: {} took its graphs over",
            self.node, self.peers[successor as usize].node
        ))
    }

    /// Answers every gather waiting here with `Moved` (`why`): the client re-attaches to
    /// the owner the ownership table names.
    pub(super) fn send_waiters_on(&mut self, why: &str) {
        let mut waiting: Vec<super::RequestId> = self.waiters.keys().copied().collect();
        waiting.sort_unstable();
        self.waiters.clear();
        for r in waiting {
            self.replies
                .push((r, crate::protocol::ClientResponse::Moved(why.to_string())));
        }
    }

    /// Answers `request` with `Moved` if this node handed its graphs over (see
    /// [`NodeCore::moved_away`]); whether it did.
    pub(super) fn refused_as_moved(&mut self, request: super::RequestId) -> bool {
        match self.moved_away() {
            Some(why) => {
                self.replies
                    .push((request, crate::protocol::ClientResponse::Moved(why)));
                true
            }
            None => false,
        }
    }

    /// An assignment reaching a leaving node goes back to its owner.
    pub(super) fn refuse_while_leaving(&mut self, owner: u32, key: Key, hops: u32) {
        self.tombstone(owner, key.clone(), Gone::Released(hops));
        self.send(owner, PeerMsg::Returned { key, hops });
    }
}
