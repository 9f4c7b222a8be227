//! What the dashboard reads of the core: tasks by session, prefix and state, and one
//! session's graph. Computed on demand by walking the tasks (no cost per task while
//! nobody looks); the shell bounds how often.

use rustc_hash::FxHashMap;

use super::{NodeCore, State, Task};
use crate::protocol::{DagNode, PrefixProgress, SessionSummary};

/// Errors listed per session.
const ERRORS_SHOWN: usize = 5;

fn state_name(s: &State) -> &'static str {
    match s {
        State::Waiting | State::Fetching | State::NoWorker => "waiting",
        State::Ready => "queued",
        State::Running | State::Remote { .. } => "processing",
        State::Memory { .. } => "memory",
        State::Released => "released",
        State::Erred(_) => "erred",
    }
}

impl NodeCore {
    fn tasks(&self) -> impl Iterator<Item = &Task> {
        self.slots.iter().filter_map(|s| s.item.as_ref())
    }

    /// The tasks of the graphs this node owns, by session and key prefix, and a summary
    /// per session (sorted).
    pub fn progress(&self) -> (Vec<PrefixProgress>, Vec<SessionSummary>) {
        let mut by_prefix: FxHashMap<(u64, &str), PrefixProgress> = FxHashMap::default();
        let mut sessions: FxHashMap<u64, SessionSummary> = FxHashMap::default();
        for t in self.tasks() {
            let p = by_prefix
                .entry((t.session, t.key.prefix()))
                .or_insert_with(|| PrefixProgress {
                    session: t.session,
                    prefix: t.key.prefix().to_string(),
                    ..Default::default()
                });
            let s = sessions.entry(t.session).or_insert_with(|| SessionSummary {
                session: t.session,
                epoch: self.sessions.get(&t.session).copied().unwrap_or(0),
                ..Default::default()
            });
            s.tasks += 1;
            match &t.state {
                State::Waiting | State::Fetching | State::NoWorker => p.waiting += 1,
                State::Ready => p.queued += 1,
                State::Running | State::Remote { .. } => p.processing += 1,
                State::Memory { .. } => {
                    p.memory += 1;
                    s.done += 1;
                }
                State::Released => {
                    p.released += 1;
                    s.done += 1;
                }
                State::Erred(e) => {
                    p.erred += 1;
                    s.erred += 1;
                    if s.errors.len() < ERRORS_SHOWN && !s.errors.iter().any(|x| x.key == e.key) {
                        s.errors.push((**e).clone());
                    }
                }
            }
        }
        let mut progress: Vec<PrefixProgress> = by_prefix.into_values().collect();
        progress.sort_by(|a, b| (a.session, &a.prefix).cmp(&(b.session, &b.prefix)));
        let mut sessions: Vec<SessionSummary> = sessions.into_values().collect();
        sessions.sort_by_key(|s| s.session);
        (progress, sessions)
    }

    /// Values that arrived from peers at or after `since_ms` (this node's clock): key, the
    /// node it came from, size, when.
    pub fn transfers_since(
        &self,
        since_ms: u64,
    ) -> Vec<(rdask_graph::Key, rdask_gossip::NodeId, u64, u64)> {
        self.transfers
            .iter()
            .filter(|t| t.3 >= since_ms)
            .map(|(k, from, bytes, at)| {
                (
                    k.clone(),
                    self.peers[*from as usize].node.clone(),
                    *bytes,
                    *at,
                )
            })
            .collect()
    }

    /// The tasks of `session` this node owns, inputs first, at most `limit` of them; and
    /// whether there were more.
    pub fn dag(&self, session: u64, limit: usize) -> (Vec<DagNode>, bool) {
        let mut ids: Vec<super::TaskId> = Vec::new();
        let mut more = false;
        for (idx, slot) in self.slots.iter().enumerate() {
            if let Some(t) = &slot.item
                && t.session == session
            {
                if ids.len() == limit {
                    more = true;
                    break;
                }
                ids.push(super::TaskId {
                    idx: idx as u32,
                    generation: slot.generation,
                });
            }
        }
        // Inputs before their users: by depth (longest chain of inputs within the list).
        let at: FxHashMap<super::TaskId, usize> =
            ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        let mut depth = vec![0u32; ids.len()];
        let mut changed = true;
        let mut rounds = 0;
        while changed && rounds < 64 {
            changed = false;
            rounds += 1;
            for (i, id) in ids.iter().enumerate() {
                let t = self.task(*id).expect("listed");
                for d in &t.deps {
                    if let Some(&j) = at.get(d)
                        && depth[i] <= depth[j]
                    {
                        depth[i] = depth[j] + 1;
                        changed = true;
                    }
                }
            }
        }
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| (depth[i], i));
        let pos: FxHashMap<usize, u32> = order
            .iter()
            .enumerate()
            .map(|(p, &i)| (i, p as u32))
            .collect();
        let nodes = order
            .iter()
            .map(|&i| {
                let t = self.task(ids[i]).expect("listed");
                DagNode {
                    key: t.key.clone(),
                    state: state_name(&t.state).to_string(),
                    deps: t
                        .deps
                        .iter()
                        .filter_map(|d| at.get(d).map(|j| pos[j]))
                        .collect(),
                }
            })
            .collect();
        (nodes, more)
    }
}
