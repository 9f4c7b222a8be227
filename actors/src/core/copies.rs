//! Copies of results on demand: `replicate` (more holders) and `rebalance` (even out the
//! bytes held per node), for results of this node's graphs.
//!
//! Both reuse the hand-over path of a leave: the owner sends [`PeerMsg::Take`] to a node,
//! which fetches the value from a holder, keeps it, and tells the owner it holds it
//! ([`PeerMsg::Holding`]). A rebalance then drops the copy on the node it moved from.

use rdask_graph::Key;

use super::{NodeCore, RequestId, State};
use crate::protocol::{ClientResponse, PeerMsg};

/// A stable order of the candidate nodes per key (rendezvous hashing), so that copies of
/// different keys spread over different nodes.
fn rank(key: &Key, node: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_str().bytes().chain([0xff]).chain(node.bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl NodeCore {
    /// The nodes (by peer index, 0 for this one) holding a finished result of this node's
    /// graphs, and its size; `None` if it is not in memory.
    fn copies_of(&self, key: &Key) -> Option<(Vec<u32>, u64)> {
        let t = self.index.get(key).and_then(|id| self.task(*id))?;
        match &t.state {
            State::Memory {
                value,
                holders,
                size,
            } => Some((
                value
                    .is_some()
                    .then_some(0)
                    .into_iter()
                    .chain(holders.iter().copied())
                    .collect(),
                *size,
            )),
            _ => None,
        }
    }

    /// Copies each finished result of `keys` to live nodes until `n` nodes hold it (every
    /// node when there are fewer). Unfinished or unknown keys are skipped. Replies
    /// `Replicated` with the copies started.
    pub fn handle_replicate(&mut self, request: RequestId, keys: Vec<Key>, n: u32) {
        if self.refused_as_moved(request) {
            return;
        }
        let me = self.peers[0].node.clone();
        let mut started = 0u64;
        for key in keys {
            let Some((have, size)) = self.copies_of(&key) else {
                continue;
            };
            let want = (n as usize).min(self.candidates.len());
            if have.len() >= want {
                continue;
            }
            let mut targets: Vec<u32> = self
                .candidates
                .iter()
                .copied()
                .filter(|p| !have.contains(p))
                .collect();
            targets.sort_by_key(|&p| rank(&key, &self.peers[p as usize].node.0));
            for p in targets.into_iter().take(want - have.len()) {
                started += 1;
                if p == 0 {
                    if let Some(&id) = self.index.get(&key) {
                        self.fetch_own(id, super::FetchWaiter::Check);
                    }
                } else {
                    self.send(
                        p,
                        PeerMsg::Take {
                            owner: me.clone(),
                            key: key.clone(),
                            size,
                        },
                    );
                }
            }
        }
        self.stats.copies_made += started;
        self.replies
            .push((request, ClientResponse::Copying(started)));
    }

    /// Moves finished results of `keys` (each held by one node) from the nodes holding the
    /// most bytes of them to the nodes holding the least, until no move would bring the two
    /// closer (Dask's `rebalance`). Replies `Copying` with the moves started; each copy is
    /// dropped from the node it left once the new holder has it.
    pub fn handle_rebalance(&mut self, request: RequestId, keys: Vec<Key>) {
        if self.refused_as_moved(request) {
            return;
        }
        let nodes = self.candidates.clone();
        let mut bytes: Vec<u64> = vec![0; self.peers.len()];
        let mut single: Vec<(Key, u32, u64)> = Vec::new();
        for key in keys {
            let Some((have, size)) = self.copies_of(&key) else {
                continue;
            };
            for &p in &have {
                bytes[p as usize] += size;
            }
            if let [only] = have[..]
                && !self.moving.contains_key(&key)
            {
                single.push((key, only, size));
            }
        }
        // Largest first: fewer moves for the same balance.
        single.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
        let me = self.peers[0].node.clone();
        let mut started = 0u64;
        for (key, from, size) in single {
            let Some(&to) = nodes.iter().min_by_key(|&&p| {
                (
                    bytes[p as usize],
                    rank(&key, &self.peers[p as usize].node.0),
                )
            }) else {
                break;
            };
            // Only a move that narrows the gap between the two nodes.
            if to == from || bytes[to as usize] + size >= bytes[from as usize] {
                continue;
            }
            bytes[from as usize] -= size;
            bytes[to as usize] += size;
            started += 1;
            self.moving.insert(key.clone(), (from, to));
            if to == 0 {
                if let Some(&id) = self.index.get(&key) {
                    self.fetch_own(id, super::FetchWaiter::Check);
                }
            } else {
                self.send(
                    to,
                    PeerMsg::Take {
                        owner: me.clone(),
                        key,
                        size,
                    },
                );
            }
        }
        self.stats.copies_made += started;
        self.replies
            .push((request, ClientResponse::Copying(started)));
    }

    /// `p` is gone: moves to or from it are off (the copy stays where it was, or was lost
    /// with `p` and is computed again if needed).
    pub(super) fn moves_lost(&mut self, p: u32) {
        self.moving.retain(|_, (from, to)| *from != p && *to != p);
    }

    /// A node now holds `key` (a copy arrived there, or here when `at` is 0): a copy moved
    /// by a rebalance is dropped where it came from.
    pub(super) fn moved_copy(&mut self, at: u32, key: &Key) {
        let Some(&(from, to)) = self.moving.get(key) else {
            return;
        };
        if to != at {
            return;
        }
        self.moving.remove(key);
        let Some(&id) = self.index.get(key) else {
            return;
        };
        let Some(t) = self.task_mut(id) else { return };
        let State::Memory {
            value,
            holders,
            size,
        } = &mut t.state
        else {
            return;
        };
        if from == 0 {
            if value.take().is_some() {
                let size = *size;
                self.stored -= 1;
                self.memory_used -= size;
            }
        } else if let Some(i) = holders.iter().position(|&h| h == from) {
            holders.swap_remove(i);
            self.release_at(from, key.clone());
        }
    }
}
