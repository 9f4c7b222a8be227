//! The replicated cluster state: member records and load summaries, merged as CRDTs and
//! spread by push-pull anti-entropy with bounded payloads.
//!
//! Every entry has a single writer (the node it describes), so each is an `LWWReg` whose
//! marker is a [`Version`]: the writer's generation (raised on every restart) and a counter.
//! Merging keeps the higher version, which makes merges commutative, associative and
//! idempotent whatever order gossip delivers them in. A removed member leaves a tombstone
//! (its last version) so that stale gossip cannot bring it back; tombstones are dropped
//! after a grace period so the state does not grow forever.
//!
//! Anti-entropy round (initiator A, random live peer B):
//! 1. A → B `Hash(h)`: one 8-byte hash of A's versions. Equal states stop here, so a
//!    converged cluster pays a few bytes per round whatever its size.
//! 2. B → A `Digest`: B's versions (node → record version, load version).
//! 3. A → B `Delta`: A's entries newer than B's (at most `max_entries`), plus the nodes
//!    where B is newer (`want`); B answers with those entries in its own `Delta`.

use std::collections::BTreeMap;

use crdts::{CvRDT, LWWReg};
use serde::{Deserialize, Serialize};

use crate::{LoadSummary, MemberInfo, NodeId};

/// The version of one entry: its writer's generation, then a counter.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Version {
    /// Raised on every restart of the writer.
    pub generation: u64,
    /// Raised on every write within a generation.
    pub counter: u64,
}

/// Versions of the entries of one node: (record, load).
pub type DigestEntry = (NodeId, Version, Version);

/// Who runs a graph: filled by the scheduling layer, replicated here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ownership {
    /// The node that schedules the graph.
    pub owner: NodeId,
    /// Raised by every take-over.
    pub epoch: u64,
    /// Nodes that hold copies of the graph's spec and state.
    pub backups: Vec<NodeId>,
}

/// The marker of an ownership entry: a higher epoch wins; within an epoch, the owner's id
/// breaks ties, so two claims of one epoch converge to the same winner everywhere.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OwnerMark {
    /// The epoch.
    pub epoch: u64,
    /// The claiming owner.
    pub owner: NodeId,
}

/// A published dataset: named results of one client session, kept alive by the node that
/// owns the session (Dask's `publish_dataset`). Readable through any node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dataset {
    /// The client session whose graphs computed the keys (the upper half of their graph
    /// ids): the ownership table names the node that serves them.
    pub session: u64,
    /// The result keys, in the order they were published.
    pub keys: Vec<String>,
    /// Unpublished (a tombstone, dropped after a grace period).
    pub removed: bool,
}

/// The marker of a dataset entry: a later stamp wins; the writer's id breaks ties.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DatasetMark {
    /// Milliseconds of the writer's clock, raised past the entry it replaces.
    pub stamp: u64,
    /// The node that wrote it (the owner of the session).
    pub writer: NodeId,
}

/// The versions a node holds, sent when hashes differ.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Digest {
    /// Member entries.
    pub members: Vec<DigestEntry>,
    /// Ownership entries by graph id.
    pub owners: Vec<(u128, OwnerMark)>,
    /// Dataset entries by name.
    pub datasets: Vec<(String, DatasetMark)>,
}

/// Entries sent to a peer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    /// Member records.
    pub members: Vec<(NodeId, LWWReg<MemberInfo, Version>)>,
    /// Load summaries.
    pub loads: Vec<(NodeId, LWWReg<LoadSummary, Version>)>,
    /// Removed members, with the version they were removed at.
    pub removed: Vec<(NodeId, Version)>,
    /// Ownership entries by graph id.
    pub owners: Vec<(u128, LWWReg<Ownership, OwnerMark>)>,
    /// Dataset entries by name.
    pub datasets: Vec<(String, LWWReg<Dataset, DatasetMark>)>,
}

impl Delta {
    /// Whether it carries nothing.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
            && self.loads.is_empty()
            && self.removed.is_empty()
            && self.owners.is_empty()
            && self.datasets.is_empty()
    }
}

/// An anti-entropy message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StateMsg {
    /// Round start: the initiator's state hash.
    Hash(u64),
    /// The answer when hashes differ: every version the sender holds.
    Digest(Digest),
    /// Entries the receiver lacks, and the entries the sender wants back.
    Delta {
        /// The entries.
        delta: Delta,
        /// Nodes whose newer entries the sender wants.
        want: Vec<NodeId>,
        /// Graphs whose newer ownership entries the sender wants.
        want_owners: Vec<u128>,
        /// Datasets whose newer entries the sender wants.
        want_datasets: Vec<String>,
    },
}

/// The entries a peer holds newer versions of: asked for in a [`StateMsg::Delta`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    /// Nodes whose records or loads.
    pub nodes: Vec<NodeId>,
    /// Graphs whose ownership entries.
    pub owners: Vec<u128>,
    /// Datasets by name.
    pub datasets: Vec<String>,
}

impl Wanted {
    /// Whether nothing is wanted.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.owners.is_empty() && self.datasets.is_empty()
    }
}

/// The replicated state as one node holds it.
#[derive(Clone, Debug)]
pub struct ClusterState {
    me: NodeId,
    generation: u64,
    counter: u64,
    members: BTreeMap<NodeId, LWWReg<MemberInfo, Version>>,
    loads: BTreeMap<NodeId, LWWReg<LoadSummary, Version>>,
    /// Removed members: their last version, and when (ms) the tombstone was made.
    removed: BTreeMap<NodeId, (Version, u64)>,
    /// The ownership table: graph id → owner, epoch, backups.
    owners: BTreeMap<u128, LWWReg<Ownership, OwnerMark>>,
    /// Published datasets by name (with tombstones of unpublished ones).
    datasets: BTreeMap<String, LWWReg<Dataset, DatasetMark>>,
    /// [`ClusterState::hash`], computed when first asked after a change.
    hash_cache: std::cell::Cell<Option<u64>>,
}

impl ClusterState {
    /// The state of a node that starts with `me`, in its `generation`.
    pub fn new(me: MemberInfo, generation: u64) -> ClusterState {
        let mut s = ClusterState {
            me: me.id.clone(),
            generation,
            counter: 0,
            members: BTreeMap::new(),
            loads: BTreeMap::new(),
            removed: BTreeMap::new(),
            owners: BTreeMap::new(),
            datasets: BTreeMap::new(),
            hash_cache: std::cell::Cell::new(None),
        };
        s.set_info(me);
        s.set_load(LoadSummary::default());
        s
    }

    fn next_version(&mut self) -> Version {
        self.hash_cache.set(None);
        self.counter += 1;
        Version {
            generation: self.generation,
            counter: self.counter,
        }
    }

    /// Starts a new generation of this node's entries (the node rejoined after being
    /// declared dead): its record and load are published again with versions that beat
    /// every tombstone of its earlier generation.
    pub fn renew(&mut self, generation: u64) {
        if generation <= self.generation {
            return;
        }
        self.generation = generation;
        self.counter = 0;
        self.republish();
    }

    /// Writes this node's record and load again under new versions.
    fn republish(&mut self) {
        if let Some(info) = self.members.get(&self.me).map(|r| r.val.clone()) {
            self.set_info(info);
        }
        if let Some(load) = self.loads.get(&self.me).map(|r| r.val) {
            self.write_load(load);
        }
    }

    fn write_load(&mut self, load: LoadSummary) {
        let marker = self.next_version();
        self.loads
            .insert(self.me.clone(), LWWReg { val: load, marker });
    }

    /// Publishes a new record of this node.
    pub fn set_info(&mut self, info: MemberInfo) {
        let marker = self.next_version();
        self.members
            .insert(self.me.clone(), LWWReg { val: info, marker });
    }

    /// Publishes this node's load, if it changed.
    pub fn set_load(&mut self, load: LoadSummary) {
        if self.loads.get(&self.me).is_some_and(|r| r.val == load) {
            return;
        }
        self.write_load(load);
    }

    /// The member records, by node.
    pub fn members(&self) -> impl Iterator<Item = (&NodeId, &MemberInfo)> {
        self.members.iter().map(|(k, r)| (k, &r.val))
    }

    /// A member's record.
    pub fn member(&self, node: &NodeId) -> Option<&MemberInfo> {
        self.members.get(node).map(|r| &r.val)
    }

    /// A member's last published load.
    pub fn load(&self, node: &NodeId) -> Option<LoadSummary> {
        self.loads.get(node).map(|r| r.val)
    }

    /// Records who owns `graph`. An entry with a lower (epoch, owner) than the one held is
    /// ignored; returns whether the entry was taken.
    pub fn set_owner(&mut self, graph: u128, ownership: Ownership) -> bool {
        let mark = OwnerMark {
            epoch: ownership.epoch,
            owner: ownership.owner.clone(),
        };
        let taken = merge_keyed(
            &mut self.owners,
            graph,
            LWWReg {
                val: ownership,
                marker: mark,
            },
        );
        if taken {
            self.hash_cache.set(None);
        }
        taken
    }

    /// Who owns `graph`, as far as this node knows.
    pub fn owner(&self, graph: u128) -> Option<&Ownership> {
        self.owners.get(&graph).map(|r| &r.val)
    }

    /// Forgets the ownership entry of a finished graph.
    pub fn forget_owner(&mut self, graph: u128) {
        if self.owners.remove(&graph).is_some() {
            self.hash_cache.set(None);
        }
    }

    /// Writes a dataset entry at `now_ms` of this node's clock (stamped past the entry it
    /// replaces, so it wins wherever the earlier one went).
    pub fn set_dataset(&mut self, name: &str, dataset: Dataset, now_ms: u64) {
        let stamp = self
            .datasets
            .get(name)
            .map_or(now_ms, |r| now_ms.max(r.marker.stamp + 1));
        let marker = DatasetMark {
            stamp,
            writer: self.me.clone(),
        };
        self.datasets.insert(
            name.to_string(),
            LWWReg {
                val: dataset,
                marker,
            },
        );
        self.hash_cache.set(None);
    }

    /// A published dataset (none once unpublished).
    pub fn dataset(&self, name: &str) -> Option<&Dataset> {
        self.datasets
            .get(name)
            .map(|r| &r.val)
            .filter(|d| !d.removed)
    }

    /// The published datasets, by name.
    pub fn datasets(&self) -> impl Iterator<Item = (&str, &Dataset)> {
        self.datasets
            .iter()
            .filter(|(_, r)| !r.val.removed)
            .map(|(n, r)| (n.as_str(), &r.val))
    }

    /// Number of member records held.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether no record is held (never true: a node holds its own).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Forgets a member declared dead, leaving a tombstone made at `now_ms`. This node's
    /// own record is never removed.
    pub fn remove(&mut self, node: &NodeId, now_ms: u64) {
        if node == &self.me {
            return;
        }
        let v = self
            .members
            .get(node)
            .map(|r| r.marker)
            .into_iter()
            .chain(self.loads.get(node).map(|r| r.marker))
            .max()
            .unwrap_or_default();
        self.hash_cache.set(None);
        self.members.remove(node);
        self.loads.remove(node);
        let entry = self.removed.entry(node.clone()).or_insert((v, now_ms));
        if v > entry.0 {
            *entry = (v, now_ms);
        }
    }

    /// Drops tombstones older than `grace_ms`.
    pub fn collect_garbage(&mut self, now_ms: u64, grace_ms: u64) {
        let before = self.removed.len();
        self.removed
            .retain(|_, (_, at)| now_ms.saturating_sub(*at) < grace_ms);
        let datasets = self.datasets.len();
        self.datasets
            .retain(|_, r| !r.val.removed || now_ms.saturating_sub(r.marker.stamp) < grace_ms);
        if self.removed.len() != before || self.datasets.len() != datasets {
            self.hash_cache.set(None);
        }
    }

    fn tombstoned(&self, node: &NodeId, v: Version) -> bool {
        self.removed.get(node).is_some_and(|(dead, _)| v <= *dead)
    }

    /// Merges entries from a peer. Returns whether anything changed. A removal of this node
    /// itself is refuted by publishing its entries again.
    pub fn merge(&mut self, delta: Delta, now_ms: u64) -> bool {
        let mut changed = false;
        for (node, v) in delta.removed {
            if node == self.me {
                // Others removed this node while it lives (it was cut off for a while):
                // publish its entries again with versions that beat the tombstone.
                let mine = self
                    .members
                    .get(&self.me)
                    .map(|r| r.marker)
                    .unwrap_or_default();
                if v >= mine {
                    self.counter = self.counter.max(v.counter);
                    self.republish();
                    changed = true;
                }
                continue;
            }
            let newer_alive = self.members.get(&node).is_some_and(|r| r.marker > v);
            if !newer_alive && !self.tombstoned(&node, v) {
                self.remove(&node, now_ms);
                if let Some(t) = self.removed.get_mut(&node) {
                    t.0 = t.0.max(v);
                }
                changed = true;
            }
        }
        for (node, reg) in delta.members {
            if node == self.me || self.tombstoned(&node, reg.marker) {
                continue;
            }
            changed |= merge_reg(&mut self.members, node, reg);
        }
        for (node, reg) in delta.loads {
            if node == self.me || self.tombstoned(&node, reg.marker) {
                continue;
            }
            changed |= merge_reg(&mut self.loads, node, reg);
        }
        for (graph, reg) in delta.owners {
            changed |= merge_keyed(&mut self.owners, graph, reg);
        }
        for (name, reg) in delta.datasets {
            changed |= merge_keyed(&mut self.datasets, name, reg);
        }
        if changed {
            self.hash_cache.set(None);
        }
        changed
    }

    /// Every version held.
    pub fn digest(&self) -> Digest {
        Digest {
            members: self.member_digest(),
            owners: self
                .owners
                .iter()
                .map(|(g, r)| (*g, r.marker.clone()))
                .collect(),
            datasets: self
                .datasets
                .iter()
                .map(|(n, r)| (n.clone(), r.marker.clone()))
                .collect(),
        }
    }

    fn member_digest(&self) -> Vec<DigestEntry> {
        self.entries_sorted()
            .into_iter()
            .map(|(n, r, l)| {
                (
                    n.clone(),
                    r.map(|r| r.marker).unwrap_or_default(),
                    l.map(|l| l.marker).unwrap_or_default(),
                )
            })
            .collect()
    }

    /// A hash of every version held (and of the tombstones): equal states hash equal.
    pub fn hash(&self) -> u64 {
        if let Some(h) = self.hash_cache.get() {
            return h;
        }
        let h = self.compute_hash();
        self.hash_cache.set(Some(h));
        h
    }

    fn compute_hash(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |x: u64| {
            for b in x.to_le_bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        for (node, rv, lv) in self.member_digest() {
            for b in node.0.bytes() {
                eat(u64::from(b));
            }
            eat(rv.generation);
            eat(rv.counter);
            eat(lv.generation);
            eat(lv.counter);
        }
        for (node, (v, _)) in &self.removed {
            for b in node.0.bytes() {
                eat(u64::from(b) ^ 0xff);
            }
            eat(v.generation);
            eat(v.counter);
        }
        for (graph, r) in &self.owners {
            eat(*graph as u64);
            eat((*graph >> 64) as u64);
            eat(r.marker.epoch);
            for b in r.marker.owner.0.bytes() {
                eat(u64::from(b) ^ 0x7f);
            }
        }
        for (name, r) in &self.datasets {
            for b in name.bytes() {
                eat(u64::from(b) ^ 0x3f);
            }
            eat(r.marker.stamp);
            for b in r.marker.writer.0.bytes() {
                eat(u64::from(b) ^ 0x1f);
            }
        }
        h
    }

    /// What a peer with digest `digest` lacks (at most `max_entries` entries), and what it
    /// knows better: the nodes, graphs and datasets whose newer entries to ask it for.
    pub fn delta_for(&self, digest: &Digest, max_entries: usize) -> (Delta, Wanted) {
        use std::cmp::Ordering;
        let mut delta = Delta::default();
        let mut want = Vec::new();
        let mut budget = max_entries;
        // One linear pass over both sides, sorted by node id (digests are sent sorted; an
        // unsorted one only makes this answer less complete, never wrong).
        let mine = self.entries_sorted();
        let theirs = &digest.members;
        let (mut a, mut b) = (0, 0);
        while a < mine.len() || b < theirs.len() {
            let order = match (mine.get(a), theirs.get(b)) {
                (Some(m), Some(t)) => m.0.cmp(&t.0),
                (Some(_), None) => Ordering::Less,
                _ => Ordering::Greater,
            };
            let (node, my_rec, my_load, their_rec, their_load) = match order {
                Ordering::Less => {
                    let m = mine[a];
                    a += 1;
                    (m.0, m.1, m.2, None, None)
                }
                Ordering::Greater => {
                    let t = &theirs[b];
                    b += 1;
                    (&t.0, None, None, Some(t.1), Some(t.2))
                }
                Ordering::Equal => {
                    let (m, t) = (mine[a], &theirs[b]);
                    a += 1;
                    b += 1;
                    (m.0, m.1, m.2, Some(t.1), Some(t.2))
                }
            };
            if let Some(reg) = my_rec
                && budget > 0
                && their_rec.is_none_or(|r| reg.marker > r)
            {
                delta.members.push((node.clone(), reg.clone()));
                budget -= 1;
            }
            if let Some(reg) = my_load
                && budget > 0
                && their_load.is_none_or(|l| reg.marker > l)
            {
                delta.loads.push((node.clone(), reg.clone()));
                budget -= 1;
            }
            if let (Some(r), Some(l)) = (their_rec, their_load)
                && want.len() < max_entries
                && !self.tombstoned(node, r.max(l))
                && (my_rec.is_none_or(|m| m.marker < r) || my_load.is_none_or(|m| m.marker < l))
            {
                want.push(node.clone());
            }
        }
        if !self.removed.is_empty() {
            let theirs: BTreeMap<&NodeId, (Version, Version)> =
                theirs.iter().map(|(n, r, l)| (n, (*r, *l))).collect();
            for (node, (v, _)) in &self.removed {
                if theirs.get(node).is_some_and(|(r, l)| r.max(l) <= v) {
                    delta.removed.push((node.clone(), *v));
                }
            }
        }
        let their_owners: BTreeMap<u128, &OwnerMark> =
            digest.owners.iter().map(|(g, m)| (*g, m)).collect();
        for (graph, reg) in &self.owners {
            if budget == 0 {
                break;
            }
            if their_owners.get(graph).is_none_or(|m| reg.marker > **m) {
                delta.owners.push((*graph, reg.clone()));
                budget -= 1;
            }
        }
        let want_owners = their_owners
            .iter()
            .filter(|(g, m)| self.owners.get(*g).is_none_or(|r| &r.marker < *m))
            .map(|(g, _)| *g)
            .take(max_entries)
            .collect();
        let their_datasets: BTreeMap<&str, &DatasetMark> = digest
            .datasets
            .iter()
            .map(|(n, m)| (n.as_str(), m))
            .collect();
        for (name, reg) in &self.datasets {
            if budget == 0 {
                break;
            }
            if their_datasets
                .get(name.as_str())
                .is_none_or(|m| reg.marker > **m)
            {
                delta.datasets.push((name.clone(), reg.clone()));
                budget -= 1;
            }
        }
        let want_datasets = their_datasets
            .iter()
            .filter(|(n, m)| self.datasets.get(**n).is_none_or(|r| &r.marker < *m))
            .map(|(n, _)| n.to_string())
            .take(max_entries)
            .collect();
        (
            delta,
            Wanted {
                nodes: want,
                owners: want_owners,
                datasets: want_datasets,
            },
        )
    }

    /// Every node with an entry, sorted, with its record and load registers.
    #[allow(clippy::type_complexity)]
    fn entries_sorted(
        &self,
    ) -> Vec<(
        &NodeId,
        Option<&LWWReg<MemberInfo, Version>>,
        Option<&LWWReg<LoadSummary, Version>>,
    )> {
        let mut out = Vec::with_capacity(self.members.len().max(self.loads.len()));
        let mut m = self.members.iter().peekable();
        let mut l = self.loads.iter().peekable();
        loop {
            match (m.peek(), l.peek()) {
                (None, None) => return out,
                (Some((mk, _)), Some((lk, _))) if mk == lk => {
                    let (k, mr) = m.next().expect("peeked");
                    let (_, lr) = l.next().expect("peeked");
                    out.push((k, Some(mr), Some(lr)));
                }
                (Some((mk, _)), Some((lk, _))) if mk < lk => {
                    let (k, mr) = m.next().expect("peeked");
                    out.push((k, Some(mr), None));
                }
                (Some(_), None) => {
                    let (k, mr) = m.next().expect("peeked");
                    out.push((k, Some(mr), None));
                }
                _ => {
                    let (k, lr) = l.next().expect("peeked");
                    out.push((k, None, Some(lr)));
                }
            }
        }
    }

    /// The entries a peer asked for.
    pub fn entries_of_all(&self, wanted: &Wanted) -> Delta {
        let mut delta = self.entries_of(&wanted.nodes);
        for g in &wanted.owners {
            if let Some(r) = self.owners.get(g) {
                delta.owners.push((*g, r.clone()));
            }
        }
        for n in &wanted.datasets {
            if let Some(r) = self.datasets.get(n) {
                delta.datasets.push((n.clone(), r.clone()));
            }
        }
        delta
    }

    /// The entries of these nodes (an answer to `want`).
    pub fn entries_of(&self, nodes: &[NodeId]) -> Delta {
        let mut delta = Delta::default();
        for n in nodes {
            if let Some(r) = self.members.get(n) {
                delta.members.push((n.clone(), r.clone()));
            }
            if let Some(r) = self.loads.get(n) {
                delta.loads.push((n.clone(), r.clone()));
            }
        }
        delta
    }
}

fn merge_reg<V: PartialEq + Clone>(
    map: &mut BTreeMap<NodeId, LWWReg<V, Version>>,
    node: NodeId,
    reg: LWWReg<V, Version>,
) -> bool {
    merge_keyed(map, node, reg)
}

fn merge_keyed<K: Ord, V: PartialEq, M: Ord>(
    map: &mut BTreeMap<K, LWWReg<V, M>>,
    node: K,
    reg: LWWReg<V, M>,
) -> bool {
    match map.get_mut(&node) {
        Some(mine) if mine.marker >= reg.marker => false,
        Some(mine) => {
            mine.merge(reg);
            true
        }
        None => {
            map.insert(node, reg);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PROTOCOL_VERSION;

    fn info(i: u32, threads: u32) -> MemberInfo {
        MemberInfo {
            id: NodeId(format!("n{i}").into()),
            addresses: vec![format!("/mem/{i}")],
            nthreads: threads,
            memory_bytes: 1 << 30,
            memory_limit: 0,
            data_port: 0,
            functions_digest: 7,
            functions: 3,
            version: "0.1.0".into(),
            protocol: PROTOCOL_VERSION,
            resources: Vec::new(),

            dashboard: String::new(),
        }
    }

    /// One full anti-entropy round from `a` to `b`, as the messages would go.
    fn round(a: &mut ClusterState, b: &mut ClusterState) {
        if a.hash() == b.hash() {
            return;
        }
        let digest_b = b.digest();
        let (delta, wanted) = a.delta_for(&digest_b, 1000);
        b.merge(delta, 0);
        let back = b.entries_of_all(&wanted);
        a.merge(back, 0);
    }

    #[test]
    fn two_states_converge_in_one_round_and_then_exchange_only_a_hash() {
        let mut a = ClusterState::new(info(0, 2), 1);
        let mut b = ClusterState::new(info(1, 4), 1);
        round(&mut a, &mut b);
        assert_eq!(a.hash(), b.hash());
        assert_eq!(a.member(&NodeId("n1".into())).unwrap().nthreads, 4);
        assert_eq!(b.member(&NodeId("n0".into())).unwrap().nthreads, 2);
        let (delta, wanted) = a.delta_for(&b.digest(), 1000);
        assert!(delta.is_empty() && wanted.is_empty());
    }

    #[test]
    fn a_dataset_spreads_both_ways_and_an_unpublish_wins_over_the_older_entry() {
        let mut a = ClusterState::new(info(0, 2), 1);
        let mut b = ClusterState::new(info(1, 4), 1);
        let d = Dataset {
            session: 7,
            keys: vec!["inc-1".into(), "inc-2".into()],
            removed: false,
        };
        // b publishes: a round started by a (b is newer) brings it over.
        b.set_dataset("points", d.clone(), 1_000);
        round(&mut a, &mut b);
        assert_eq!(a.dataset("points"), Some(&d));
        assert_eq!(a.datasets().count(), 1);
        // a unpublishes at a clock behind b's: the stamp still goes past b's entry.
        a.set_dataset(
            "points",
            Dataset {
                removed: true,
                ..d.clone()
            },
            10,
        );
        round(&mut b, &mut a);
        assert_eq!(b.dataset("points"), None);
        assert_eq!(a.hash(), b.hash());
        // The tombstone goes after the grace period.
        b.collect_garbage(100_000, 1_000);
        assert_eq!(b.datasets.len(), 0);
    }

    #[test]
    fn merging_is_order_independent_and_idempotent() {
        let mut writers: Vec<ClusterState> = (0..4)
            .map(|i| ClusterState::new(info(i, i + 1), 1))
            .collect();
        writers[2].set_load(LoadSummary {
            queued: 5,
            ..Default::default()
        });
        writers[2].set_info(info(2, 9));
        let deltas: Vec<Delta> = writers
            .iter()
            .map(|w| w.entries_of(std::slice::from_ref(&w.me)))
            .collect();
        let mut x = ClusterState::new(info(9, 1), 1);
        let mut y = ClusterState::new(info(9, 1), 1);
        for d in deltas.iter() {
            x.merge(d.clone(), 0);
        }
        for d in deltas.iter().rev() {
            y.merge(d.clone(), 0);
            y.merge(d.clone(), 0);
        }
        assert_eq!(x.hash(), y.hash());
        assert_eq!(x.member(&NodeId("n2".into())).unwrap().nthreads, 9);
        assert_eq!(x.load(&NodeId("n2".into())).unwrap().queued, 5);
        // an older version never overwrites a newer one
        let old = ClusterState::new(info(2, 1), 1).entries_of(&[NodeId("n2".into())]);
        assert!(!x.merge(old, 0));
        assert_eq!(x.member(&NodeId("n2".into())).unwrap().nthreads, 9);
    }

    #[test]
    fn a_restart_wins_over_the_old_life_and_a_removal_is_not_undone_by_stale_gossip() {
        let mut a = ClusterState::new(info(0, 1), 1);
        let old_life = ClusterState::new(info(1, 2), 1);
        a.merge(old_life.entries_of(&[NodeId("n1".into())]), 0);
        a.remove(&NodeId("n1".into()), 10);
        assert!(a.member(&NodeId("n1".into())).is_none());
        // stale gossip of the old life is ignored
        assert!(!a.merge(old_life.entries_of(&[NodeId("n1".into())]), 20));
        assert!(a.member(&NodeId("n1".into())).is_none());
        // the restarted node (a higher generation) comes back
        let new_life = ClusterState::new(info(1, 8), 2);
        assert!(a.merge(new_life.entries_of(&[NodeId("n1".into())]), 30));
        assert_eq!(a.member(&NodeId("n1".into())).unwrap().nthreads, 8);
    }

    #[test]
    fn tombstones_are_collected_after_the_grace_period() {
        let mut a = ClusterState::new(info(0, 1), 1);
        a.merge(
            ClusterState::new(info(1, 2), 1).entries_of(&[NodeId("n1".into())]),
            0,
        );
        a.remove(&NodeId("n1".into()), 1_000);
        a.collect_garbage(5_000, 10_000);
        assert_eq!(a.removed.len(), 1);
        a.collect_garbage(11_001, 10_000);
        assert!(a.removed.is_empty());
    }

    #[test]
    fn a_removal_spreads_to_peers_that_still_hold_the_member() {
        let mut a = ClusterState::new(info(0, 1), 1);
        let mut b = ClusterState::new(info(1, 1), 1);
        let c = ClusterState::new(info(2, 1), 1);
        a.merge(c.entries_of(&[NodeId("n2".into())]), 0);
        b.merge(c.entries_of(&[NodeId("n2".into())]), 0);
        round(&mut a, &mut b);
        a.remove(&NodeId("n2".into()), 5);
        round(&mut a, &mut b);
        assert!(b.member(&NodeId("n2".into())).is_none());
        assert_eq!(a.hash(), b.hash());
    }

    #[test]
    fn ownership_converges_to_the_highest_epoch_and_ties_break_the_same_everywhere() {
        let own = |owner: &str, epoch| Ownership {
            owner: NodeId(owner.into()),
            epoch,
            backups: vec![NodeId("n9".into())],
        };
        let mut a = ClusterState::new(info(0, 1), 1);
        let mut b = ClusterState::new(info(1, 1), 1);
        assert!(a.set_owner(7, own("n0", 1)));
        assert!(b.set_owner(7, own("n1", 1))); // a competing claim in the same epoch
        round(&mut a, &mut b);
        assert_eq!(a.owner(7), b.owner(7));
        assert_eq!(&*a.owner(7).unwrap().owner.0, "n1");
        assert!(a.set_owner(7, own("n0", 2))); // a take-over
        assert!(!a.set_owner(7, own("n1", 1)), "a stale claim is ignored");
        round(&mut b, &mut a);
        assert_eq!(b.owner(7).unwrap().epoch, 2);
        assert_eq!(a.hash(), b.hash());
    }

    #[test]
    fn deltas_are_bounded() {
        let mut a = ClusterState::new(info(0, 1), 1);
        for i in 1..100 {
            a.merge(
                ClusterState::new(info(i, 1), 1).entries_of(&[NodeId(format!("n{i}").into())]),
                0,
            );
        }
        let fresh = ClusterState::new(info(500, 1), 1);
        let (delta, _) = a.delta_for(&fresh.digest(), 16);
        assert_eq!(delta.members.len() + delta.loads.len(), 16);
    }
}
