//! The replicated cluster state: member records and load summaries, the ownership table and
//! the dataset table, merged as CRDTs and spread by push-pull anti-entropy in bounded
//! messages.
//!
//! Member records and loads have a single writer (the node they describe), so each is an
//! `LWWReg` whose marker is a [`Version`]: the writer's generation (raised on every restart)
//! and a counter. Merging keeps the higher version, which makes merges commutative,
//! associative and idempotent whatever order gossip delivers them in. A removed member
//! leaves a tombstone (its last version) so that stale gossip cannot bring it back.
//!
//! Ownership entries (graph → owner, epoch, backups) and dataset entries (name → session,
//! keys) are keyed tables of registers. A removed entry leaves a tombstone: a register
//! marked above the entry it removes, so that stale gossip cannot bring the entry back.
//! Tombstones spread to every node while they are young and each node drops them a grace
//! period after it got them, so the state does not grow forever (a node that dropped one is
//! not handed it again, see `keyed.rs`); entries whose owner left the member table, and
//! datasets whose session has no owner, are removed by a collector.
//!
//! Anti-entropy round (initiator A, random live peer B). No message holds more than
//! [`Limits::bytes`], however large the state:
//! 1. A → B `Hash`: one hash per table. Equal states stop here, so a converged cluster pays
//!    a few bytes per round whatever its size.
//! 2. B → A `Digest`: for each table whose hash differs: the member versions (node → record
//!    version, load version; a table of at most [`MAX_MEMBER_RECORDS`] nodes), or the
//!    bucket hashes of a keyed table (its entries split by a hash of their keys into
//!    buckets of about 64 entries).
//! 3. A → B `Sync`: A's member entries newer than B's (at most [`Limits::members`]) and the
//!    nodes where B is newer; for the buckets whose hashes differ, A's (key, entry hash)
//!    pairs.
//! 4. B → A `Sync`: what A asked for; B's entries of those buckets that A lacks or holds
//!    otherwise, and the keys of A's that B lacks or holds otherwise.
//! 5. A → B `Sync`: the entries B asked for.
//!
//! A message cut short by its limit leaves the rest for the next round, which the node that
//! cut it starts soon (see `Gossip`).

use std::collections::BTreeMap;

use crdts::{CvRDT, LWWReg};
use serde::{Deserialize, Serialize};

pub use crate::keyed::{BucketList, Buckets};
use crate::keyed::{Keyed, StableHash, Tombstone, fnv, mix};
use crate::{LoadSummary, MemberInfo, NodeId, next_epoch};

/// Most member records (and as many removed members) a node keeps: records under further
/// ids are ignored until room is made. Bounds the member part of a digest.
pub const MAX_MEMBER_RECORDS: usize = 4096;
/// Longest node id accepted from gossip (a libp2p peer id is about 52 bytes).
pub const MAX_ID_BYTES: usize = 128;
/// Longest dataset name accepted.
pub const MAX_NAME_BYTES: usize = 1024;
/// Most bytes of one anti-entropy message: half of [`crate::MAX_FRAME_BYTES`], so that the
/// envelope and an entry that alone is larger still fit.
pub const MAX_MESSAGE_BYTES: usize = crate::MAX_FRAME_BYTES / 2;
/// Largest single entry (a dataset of many keys) accepted and sent.
pub const MAX_ENTRY_BYTES: usize = MAX_MESSAGE_BYTES;
/// How long a node keeps a tombstone of the ownership or dataset table, unless told
/// otherwise by [`ClusterState::collect_garbage`] (four times the members' grace period).
pub const TOMBSTONE_MS: u64 = 240_000;

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
/// breaks ties, so two claims of one epoch converge to the same winner everywhere; a
/// tombstone (`removed`) wins over the entry of its epoch and owner.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OwnerMark {
    /// The epoch.
    pub epoch: u64,
    /// The claiming owner.
    pub owner: NodeId,
    /// The entry was removed (its session ended).
    pub removed: bool,
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

impl StableHash for NodeId {
    fn stable_hash(&self) -> u64 {
        fnv(self.0.as_bytes())
    }
}

impl StableHash for OwnerMark {
    fn stable_hash(&self) -> u64 {
        mix(self.epoch) ^ self.owner.stable_hash().rotate_left(7) ^ u64::from(self.removed)
    }
}

impl StableHash for DatasetMark {
    fn stable_hash(&self) -> u64 {
        mix(self.stamp) ^ self.writer.stable_hash().rotate_left(7)
    }
}

impl Tombstone for LWWReg<Ownership, OwnerMark> {
    fn is_tombstone(&self) -> bool {
        self.marker.removed
    }
}

impl Tombstone for LWWReg<Dataset, DatasetMark> {
    fn is_tombstone(&self) -> bool {
        self.val.removed
    }
}

/// One hash per table: what an anti-entropy round starts with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hashes {
    /// Member records, loads and removed members.
    pub members: u64,
    /// The ownership table.
    pub owners: u64,
    /// The dataset table.
    pub datasets: u64,
}

/// What a node holds of the tables whose hashes differ from a peer's (the answer to
/// [`StateMsg::Hash`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Digest {
    /// The member versions, sorted by node, if the member tables differ.
    pub members: Option<Vec<DigestEntry>>,
    /// The bucket hashes of the ownership table, if it differs.
    pub owners: Option<Buckets>,
    /// The bucket hashes of the dataset table, if it differs.
    pub datasets: Option<Buckets>,
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
    /// Ownership entries by graph id (tombstones included).
    pub owners: Vec<(u128, LWWReg<Ownership, OwnerMark>)>,
    /// Dataset entries by name (tombstones included).
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

/// The entries a peer holds newer versions of (or holds otherwise): asked for in a
/// [`Sync`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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

/// Entries, the entries wanted back, and the entries of buckets to compare (steps 3 to 5
/// of a round).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sync {
    /// Entries for the receiver.
    pub delta: Delta,
    /// Entries the sender wants.
    pub want: Wanted,
    /// Buckets of the ownership table to compare with the receiver's.
    pub owners: Vec<BucketList<u128>>,
    /// Buckets of the dataset table to compare with the receiver's.
    pub datasets: Vec<BucketList<String>>,
}

impl Sync {
    /// Whether it carries nothing.
    pub fn is_empty(&self) -> bool {
        self.delta.is_empty()
            && self.want.is_empty()
            && self.owners.is_empty()
            && self.datasets.is_empty()
    }
}

/// An anti-entropy message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StateMsg {
    /// Round start: the initiator's table hashes.
    Hash(Hashes),
    /// The answer when hashes differ.
    Digest(Digest),
    /// Entries, wants and buckets to compare.
    Sync(Box<Sync>),
}

/// How much one anti-entropy message may carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes (postcard) of the message's entries, lists and wants.
    pub bytes: usize,
    /// Member records and loads (each a few hundred bytes).
    pub members: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            bytes: MAX_MESSAGE_BYTES,
            members: 64,
        }
    }
}

/// The bytes left in a message being built.
struct Budget {
    left: usize,
    /// Something did not fit.
    cut: bool,
    /// Something was added.
    used: bool,
}

impl Budget {
    fn new(bytes: usize) -> Budget {
        Budget {
            left: bytes,
            cut: false,
            used: false,
        }
    }

    /// Takes room for `item` if it fits (the first item of a message always fits: it was
    /// checked against [`MAX_ENTRY_BYTES`] when it was taken in).
    fn take<T: Serialize + ?Sized>(&mut self, item: &T) -> bool {
        if self.cut {
            return false;
        }
        let size = postcard::experimental::serialized_size(item).unwrap_or(usize::MAX);
        if size <= self.left || (!self.used && size <= MAX_ENTRY_BYTES) {
            self.left = self.left.saturating_sub(size);
            self.used = true;
            true
        } else {
            self.cut = true;
            false
        }
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
    owners: Keyed<u128, Ownership, OwnerMark>,
    /// Published datasets by name (with tombstones of unpublished ones).
    datasets: Keyed<String, Dataset, DatasetMark>,
    /// The hash of the member tables, computed when first asked after a change.
    members_hash: std::cell::Cell<Option<u64>>,
    /// How long tombstones of the keyed tables are kept here.
    tombstone_ms: u64,
    /// This node's clock, as last handed in (for the age of tombstones).
    now_ms: u64,
}

/// How many entries of each kind a node holds (for tests, metrics and logs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateSizes {
    /// Member records.
    pub members: usize,
    /// Removed members (tombstones).
    pub removed_members: usize,
    /// Live ownership entries.
    pub owners: usize,
    /// Ownership tombstones.
    pub owner_tombstones: usize,
    /// Published datasets.
    pub datasets: usize,
    /// Dataset tombstones.
    pub dataset_tombstones: usize,
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
            owners: Keyed::default(),
            datasets: Keyed::default(),
            members_hash: std::cell::Cell::new(None),
            tombstone_ms: TOMBSTONE_MS,
            now_ms: 0,
        };
        s.set_info(me);
        s.set_load(LoadSummary::default());
        s
    }

    fn next_version(&mut self) -> Version {
        self.members_hash.set(None);
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
    pub fn members(&self) -> impl ExactSizeIterator<Item = (&NodeId, &MemberInfo)> {
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

    /// Writes an ownership entry as it is (the register with the higher marker wins);
    /// returns whether it was taken. Nodes claim through [`ClusterState::claim`].
    pub fn set_owner(&mut self, graph: u128, ownership: Ownership) -> bool {
        let marker = OwnerMark {
            epoch: ownership.epoch,
            owner: ownership.owner.clone(),
            removed: false,
        };
        self.owners.put(
            graph,
            LWWReg {
                val: ownership,
                marker,
            },
            0,
        )
    }

    /// A node claims `graph` (a session's entry). A claim of epoch 1 is a first claim (a
    /// client submitted there): it outranks an entry another node holds (its owner died
    /// and nobody took over; the client came back elsewhere) and a tombstone (the session
    /// ended and its client came back), by taking the next epoch above theirs. A claim of
    /// a higher epoch is a take-over: refused when the session ended (a tombstone), so that
    /// a backup never brings back a closed session. Returns the epoch claimed (`None`:
    /// refused); a lower claim than the entry held is not taken, and changes nothing.
    pub fn claim(&mut self, graph: u128, mut ownership: Ownership, now_ms: u64) -> Option<u64> {
        self.now_ms = self.now_ms.max(now_ms);
        let first = ownership.epoch == 1;
        if let Some(held) = self.owners.get(&graph).map(|s| &s.reg.marker) {
            if held.removed && !first {
                return None;
            }
            if first && (held.removed || held.owner != ownership.owner) {
                ownership.epoch = next_epoch(held.epoch, &ownership.owner.0);
            } else if first {
                // This node's own entry (a claim repeated): it stands.
                return Some(held.epoch);
            }
        }
        let epoch = ownership.epoch;
        let marker = OwnerMark {
            epoch,
            owner: ownership.owner.clone(),
            removed: false,
        };
        self.owners.put(
            graph,
            LWWReg {
                val: ownership,
                marker,
            },
            now_ms,
        );
        Some(epoch)
    }

    /// `owner` no longer owns `graph` (its session ended): its entry becomes a tombstone.
    /// An entry of another owner (a take-over in a higher epoch) is not touched, unless the
    /// session's client closed it (`closed`): then the session is over whoever owns it (a
    /// node that took it over behind a partition while its client stayed with `owner`).
    pub fn release_owner(
        &mut self,
        graph: u128,
        owner: &NodeId,
        closed: bool,
        now_ms: u64,
    ) -> bool {
        self.now_ms = self.now_ms.max(now_ms);
        let Some(slot) = self.owners.get(&graph) else {
            return false;
        };
        if slot.reg.marker.removed || (slot.reg.marker.owner != *owner && !closed) {
            return false;
        }
        let mut reg = slot.reg.clone();
        reg.marker.removed = true;
        self.owners.put(graph, reg, now_ms)
    }

    /// Who owns `graph`, as far as this node knows (none once its session ended).
    pub fn owner(&self, graph: u128) -> Option<&Ownership> {
        self.owners
            .get(&graph)
            .filter(|s| !s.reg.marker.removed)
            .map(|s| &s.reg.val)
    }

    /// Whether `graph`'s entry is a tombstone (its session ended).
    pub fn owner_removed(&self, graph: u128) -> bool {
        self.owners
            .get(&graph)
            .is_some_and(|s| s.reg.marker.removed)
    }

    /// The live ownership entries, in no meaningful order.
    pub fn owners(&self) -> impl Iterator<Item = (u128, &Ownership)> {
        self.owners
            .iter()
            .filter(|(_, s)| !s.reg.marker.removed)
            .map(|(g, s)| (*g, &s.reg.val))
    }

    /// Writes a dataset entry at `now_ms` of this node's clock (stamped past the entry it
    /// replaces, so it wins wherever the earlier one went).
    pub fn set_dataset(&mut self, name: &str, dataset: Dataset, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        let name = name.to_string();
        let stamp = self
            .datasets
            .get(&name)
            .map_or(now_ms, |s| now_ms.max(s.reg.marker.stamp + 1));
        let marker = DatasetMark {
            stamp,
            writer: self.me.clone(),
        };
        self.datasets.put(
            name,
            LWWReg {
                val: dataset,
                marker,
            },
            now_ms,
        );
    }

    /// A published dataset (none once unpublished).
    pub fn dataset(&self, name: &str) -> Option<&Dataset> {
        self.datasets
            .get(&name.to_string())
            .map(|s| &s.reg.val)
            .filter(|d| !d.removed)
    }

    /// Whether `name` was unpublished (the entry is a tombstone).
    pub fn dataset_removed(&self, name: &str) -> bool {
        self.datasets
            .get(&name.to_string())
            .is_some_and(|s| s.reg.val.removed)
    }

    /// The published datasets, by name.
    pub fn datasets(&self) -> impl Iterator<Item = (&str, &Dataset)> {
        let mut v: Vec<(&str, &Dataset)> = self
            .datasets
            .iter()
            .filter(|(_, s)| !s.reg.val.removed)
            .map(|(n, s)| (n.as_str(), &s.reg.val))
            .collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v.into_iter()
    }

    /// Number of member records held.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether no record is held (never true: a node holds its own).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// How many entries of each kind this node holds.
    pub fn sizes(&self) -> StateSizes {
        let owner_tombstones = self
            .owners
            .iter()
            .filter(|(_, s)| s.reg.marker.removed)
            .count();
        let dataset_tombstones = self
            .datasets
            .iter()
            .filter(|(_, s)| s.reg.val.removed)
            .count();
        StateSizes {
            members: self.members.len(),
            removed_members: self.removed.len(),
            owners: self.owners.len() - owner_tombstones,
            owner_tombstones,
            datasets: self.datasets.len() - dataset_tombstones,
            dataset_tombstones,
        }
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
        self.members_hash.set(None);
        self.members.remove(node);
        self.loads.remove(node);
        let entry = self.removed.entry(node.clone()).or_insert((v, now_ms));
        if v > entry.0 {
            *entry = (v, now_ms);
        }
        if self.removed.len() > MAX_MEMBER_RECORDS {
            // The oldest tombstone goes first.
            if let Some(oldest) = self
                .removed
                .iter()
                .min_by_key(|(n, (_, at))| (*at, (*n).clone()))
                .map(|(n, _)| n.clone())
            {
                self.removed.remove(&oldest);
            }
        }
    }

    /// The collectors: drops tombstones older than `tombstone_ms`; removes (with a
    /// tombstone) ownership entries whose owner has had no member record for `orphan_ms`
    /// (it died and nobody took its sessions over) and datasets whose session has had no
    /// owner for as long (its results are gone).
    pub fn collect_garbage(&mut self, now_ms: u64, tombstone_ms: u64, orphan_ms: u64) {
        self.tombstone_ms = tombstone_ms;
        self.now_ms = self.now_ms.max(now_ms);
        let before = self.removed.len();
        self.removed
            .retain(|_, (_, at)| now_ms.saturating_sub(*at) < tombstone_ms);
        if self.removed.len() != before {
            self.members_hash.set(None);
        }
        let expired = |removed: bool, at: u64| removed && now_ms.saturating_sub(at) >= tombstone_ms;
        self.owners
            .retain(|_, s| !expired(s.reg.marker.removed, s.at));
        self.datasets
            .retain(|_, s| !expired(s.reg.val.removed, s.at));
        // Ownership entries of owners gone from the member table.
        let mut orphaned = Vec::new();
        let mut cleared = Vec::new();
        for (g, s) in self.owners.iter() {
            if s.reg.marker.removed {
                continue;
            }
            let gone = s.reg.val.owner != self.me && !self.members.contains_key(&s.reg.val.owner);
            match (gone, s.orphan) {
                (false, 0) => {}
                (false, _) => cleared.push(*g),
                (true, 0) => orphaned.push((*g, now_ms.max(1))),
                (true, since) if now_ms.saturating_sub(since) >= orphan_ms => {
                    orphaned.push((*g, 0));
                }
                (true, _) => {}
            }
        }
        for g in cleared {
            if let Some(s) = self.owners.get_mut(&g) {
                s.orphan = 0;
            }
        }
        for (g, since) in orphaned {
            if since > 0 {
                if let Some(s) = self.owners.get_mut(&g) {
                    s.orphan = since;
                }
                continue;
            }
            let Some(s) = self.owners.get(&g) else {
                continue;
            };
            let mut reg = s.reg.clone();
            reg.marker.removed = true;
            self.owners.put(g, reg, now_ms);
        }
        // Datasets whose session has no owner.
        let mut orphaned = Vec::new();
        let mut cleared = Vec::new();
        for (name, s) in self.datasets.iter() {
            if s.reg.val.removed {
                continue;
            }
            let gone = self.owner(u128::from(s.reg.val.session) << 64).is_none();
            match (gone, s.orphan) {
                (false, 0) => {}
                (false, _) => cleared.push(name.clone()),
                (true, 0) => orphaned.push((name.clone(), now_ms.max(1))),
                (true, since) if now_ms.saturating_sub(since) >= orphan_ms => {
                    orphaned.push((name.clone(), 0));
                }
                (true, _) => {}
            }
        }
        for n in cleared {
            if let Some(s) = self.datasets.get_mut(&n) {
                s.orphan = 0;
            }
        }
        for (n, since) in orphaned {
            if since > 0 {
                if let Some(s) = self.datasets.get_mut(&n) {
                    s.orphan = since;
                }
                continue;
            }
            let Some(d) = self.datasets.get(&n).map(|s| s.reg.val.clone()) else {
                continue;
            };
            self.set_dataset(&n, Dataset { removed: true, ..d }, now_ms);
        }
    }

    fn tombstoned(&self, node: &NodeId, v: Version) -> bool {
        self.removed.get(node).is_some_and(|(dead, _)| v <= *dead)
    }

    /// Whether a record or load of `node` may be taken in: ids are bounded in length, and
    /// the member table in size.
    fn room_for(&self, node: &NodeId) -> bool {
        node.0.len() <= MAX_ID_BYTES
            && (self.members.contains_key(node)
                || self.loads.contains_key(node)
                || self.members.len().max(self.loads.len()) < MAX_MEMBER_RECORDS)
    }

    /// Merges entries from a peer. Returns whether anything changed. A removal of this node
    /// itself is refuted by publishing its entries again.
    pub fn merge(&mut self, delta: Delta, now_ms: u64) -> bool {
        self.now_ms = self.now_ms.max(now_ms);
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
            if node.0.len() > MAX_ID_BYTES {
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
            if node == self.me || self.tombstoned(&node, reg.marker) || !self.room_for(&node) {
                continue;
            }
            changed |= merge_reg(&mut self.members, node, reg);
        }
        for (node, reg) in delta.loads {
            if node == self.me || self.tombstoned(&node, reg.marker) || !self.room_for(&node) {
                continue;
            }
            changed |= merge_reg(&mut self.loads, node, reg);
        }
        if changed {
            self.members_hash.set(None);
        }
        for (graph, reg) in delta.owners {
            let o = &reg.val;
            if o.owner.0.len() > MAX_ID_BYTES
                || reg.marker.owner.0.len() > MAX_ID_BYTES
                || o.backups.len() > 16
                || o.backups.iter().any(|b| b.0.len() > MAX_ID_BYTES)
            {
                continue;
            }
            changed |= self.owners.put(graph, reg, now_ms);
        }
        for (name, reg) in delta.datasets {
            if name.len() > MAX_NAME_BYTES
                || reg.marker.writer.0.len() > MAX_ID_BYTES
                || postcard::experimental::serialized_size(&reg)
                    .map_or(true, |s| s > MAX_ENTRY_BYTES)
            {
                continue;
            }
            changed |= self.datasets.put(name, reg, now_ms);
        }
        changed
    }

    /// The hash of each table: equal states hash equal.
    pub fn hashes(&self) -> Hashes {
        Hashes {
            members: self.members_hash(),
            owners: self.owners.hash(),
            datasets: self.datasets.hash(),
        }
    }

    /// One hash of everything held.
    pub fn hash(&self) -> u64 {
        let h = self.hashes();
        mix(h.members ^ mix(h.owners ^ mix(h.datasets)))
    }

    /// Every version held: the member versions and every table's bucket hashes.
    pub fn digest(&self) -> Digest {
        Digest {
            members: Some(self.member_digest()),
            owners: Some(self.owners.digest()),
            datasets: Some(self.datasets.digest()),
        }
    }

    /// The answer to a peer's round start (step 2): what this node holds of the tables
    /// whose hashes differ; `None` when none does.
    pub fn digest_for(&self, theirs: &Hashes) -> Option<Digest> {
        let mine = self.hashes();
        if mine == *theirs {
            return None;
        }
        Some(Digest {
            members: (mine.members != theirs.members).then(|| self.member_digest()),
            owners: (mine.owners != theirs.owners).then(|| self.owners.digest()),
            datasets: (mine.datasets != theirs.datasets).then(|| self.datasets.digest()),
        })
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

    fn members_hash(&self) -> u64 {
        if let Some(h) = self.members_hash.get() {
            return h;
        }
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
        self.members_hash.set(Some(h));
        h
    }

    /// The first message of the exchange for a peer's digest (step 3): this node's member
    /// entries newer than the peer's, the nodes where the peer is newer, and this node's
    /// entries of the buckets whose hashes differ. `None` when nothing differs; the flag
    /// says whether the message was cut short by `limits` (a later round does the rest).
    pub fn sync_for(&self, digest: &Digest, limits: Limits) -> (Option<Sync>, bool) {
        let mut budget = Budget::new(limits.bytes);
        let mut sync = Sync::default();
        if let Some(members) = &digest.members {
            self.member_delta(members, limits.members, &mut budget, &mut sync);
        }
        if let Some(b) = &digest.owners {
            for i in self.owners.differing(b) {
                let list = self.owners.list(b.bits, i);
                if !budget.take(&list) {
                    break;
                }
                sync.owners.push(list);
            }
        }
        if let Some(b) = &digest.datasets {
            for i in self.datasets.differing(b) {
                let list = self.datasets.list(b.bits, i);
                if !budget.take(&list) {
                    break;
                }
                sync.datasets.push(list);
            }
        }
        ((!sync.is_empty()).then_some(sync), budget.cut)
    }

    /// The answer to a peer's [`Sync`] (steps 4 and 5; merge its delta first): the entries
    /// it asked for, this node's entries of the buckets it listed that it lacks or holds
    /// otherwise, and the keys of its lists this node wants. `None` when there is nothing
    /// to say; the flag says whether the answer was cut short by `limits`.
    pub fn answer(&self, sync: &Sync, limits: Limits) -> (Option<Sync>, bool) {
        let mut budget = Budget::new(limits.bytes);
        let mut out = Sync::default();
        let mut members = 0;
        for n in sync.want.nodes.iter().take(limits.members) {
            if let Some(r) = self.members.get(n) {
                let e = (n.clone(), r.clone());
                if members >= limits.members || !budget.take(&e) {
                    break;
                }
                members += 1;
                out.delta.members.push(e);
            }
            if let Some(r) = self.loads.get(n) {
                let e = (n.clone(), r.clone());
                if !budget.take(&e) {
                    break;
                }
                out.delta.loads.push(e);
            }
        }
        for g in &sync.want.owners {
            if let Some(s) = self.owners.get(g) {
                let e = (*g, s.reg.clone());
                if !budget.take(&e) {
                    break;
                }
                out.delta.owners.push(e);
            }
        }
        for n in &sync.want.datasets {
            if let Some(s) = self.datasets.get(n) {
                let e = (n.clone(), s.reg.clone());
                if !budget.take(&e) {
                    break;
                }
                out.delta.datasets.push(e);
            }
        }
        // A tombstone goes to a peer that lacks it while it is young here.
        let young = |at: u64| self.now_ms.saturating_sub(at) < self.tombstone_ms / 2;
        'lists: for list in &sync.owners {
            let (send, want) = self.owners.compare(list, |s| young(s.at));
            for (g, reg) in send {
                let e = (g, reg.clone());
                if !budget.take(&e) {
                    break 'lists;
                }
                out.delta.owners.push(e);
            }
            for g in want {
                if !budget.take(&g) {
                    break 'lists;
                }
                out.want.owners.push(g);
            }
        }
        'lists: for list in &sync.datasets {
            let (send, want) = self.datasets.compare(list, |s| young(s.at));
            for (n, reg) in send {
                let e = (n, reg.clone());
                if !budget.take(&e) {
                    break 'lists;
                }
                out.delta.datasets.push(e);
            }
            for n in want {
                if !budget.take(&n) {
                    break 'lists;
                }
                out.want.datasets.push(n);
            }
        }
        ((!out.is_empty()).then_some(out), budget.cut)
    }

    /// The member part of step 3: entries newer than the peer's `theirs` (sorted by node),
    /// the nodes whose newer entries to ask for, and removals the peer has not seen.
    fn member_delta(
        &self,
        theirs: &[DigestEntry],
        max: usize,
        budget: &mut Budget,
        out: &mut Sync,
    ) {
        use std::cmp::Ordering;
        let mut count = 0;
        let mine = self.entries_sorted();
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
                && count < max
                && their_rec.is_none_or(|r| reg.marker > r)
            {
                let e = (node.clone(), reg.clone());
                if budget.take(&e) {
                    out.delta.members.push(e);
                    count += 1;
                }
            }
            if let Some(reg) = my_load
                && count < max
                && their_load.is_none_or(|l| reg.marker > l)
            {
                let e = (node.clone(), reg.clone());
                if budget.take(&e) {
                    out.delta.loads.push(e);
                    count += 1;
                }
            }
            if let (Some(r), Some(l)) = (their_rec, their_load)
                && out.want.nodes.len() < max
                && node.0.len() <= MAX_ID_BYTES
                && !self.tombstoned(node, r.max(l))
                && (my_rec.is_none_or(|m| m.marker < r) || my_load.is_none_or(|m| m.marker < l))
                && budget.take(node)
            {
                out.want.nodes.push(node.clone());
            }
        }
        if !self.removed.is_empty() {
            let theirs: BTreeMap<&NodeId, (Version, Version)> =
                theirs.iter().map(|(n, r, l)| (n, (*r, *l))).collect();
            for (node, (v, _)) in &self.removed {
                if theirs.get(node).is_some_and(|(r, l)| r.max(l) <= v) {
                    let e = (node.clone(), *v);
                    if !budget.take(&e) {
                        break;
                    }
                    out.delta.removed.push(e);
                }
            }
        }
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
            name: String::new(),
            functions_digest: 7,
            functions: 3,
            version: "0.1.0".into(),
            protocol: PROTOCOL_VERSION,
            resources: Vec::new(),

            dashboard: String::new(),
        }
    }

    /// The size of a message on the wire, as the gossip core frames it.
    fn wire_size(msg: &StateMsg) -> usize {
        let from = crate::Peer {
            node: NodeId("12D3KooWAbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefgh".into()),
            addr: "/ip4/127.0.0.1/tcp/40001".into(),
            generation: 1,
        };
        postcard::to_allocvec(&crate::Wire::State {
            from,
            msg: msg.clone(),
        })
        .unwrap()
        .len()
    }

    /// One full anti-entropy round from `a` to `b`, as the messages would go (each through
    /// the wire encoding, and each checked against the frame); returns the messages' sizes
    /// and whether a part was cut short.
    fn round_with(
        a: &mut ClusterState,
        b: &mut ClusterState,
        limits: Limits,
        now: u64,
    ) -> (Vec<usize>, bool) {
        fn pass(msg: StateMsg, sizes: &mut Vec<usize>) -> StateMsg {
            let n = wire_size(&msg);
            assert!(n <= crate::MAX_FRAME_BYTES, "a message of {n} bytes");
            sizes.push(n);
            msg
        }
        let mut sizes = Vec::new();
        let hello = pass(StateMsg::Hash(a.hashes()), &mut sizes);
        let StateMsg::Hash(h) = hello else {
            unreachable!()
        };
        let Some(d) = b.digest_for(&h) else {
            return (sizes, false);
        };
        let StateMsg::Digest(d) = pass(StateMsg::Digest(d), &mut sizes) else {
            unreachable!()
        };
        let (s3, mut cut) = a.sync_for(&d, limits);
        let Some(s3) = s3 else { return (sizes, cut) };
        let StateMsg::Sync(mut s3) = pass(StateMsg::Sync(Box::new(s3)), &mut sizes) else {
            unreachable!()
        };
        b.merge(std::mem::take(&mut s3.delta), now);
        let (s4, c) = b.answer(&s3, limits);
        cut |= c;
        let Some(s4) = s4 else { return (sizes, cut) };
        let StateMsg::Sync(mut s4) = pass(StateMsg::Sync(Box::new(s4)), &mut sizes) else {
            unreachable!()
        };
        a.merge(std::mem::take(&mut s4.delta), now);
        let (s5, c) = a.answer(&s4, limits);
        cut |= c;
        let Some(s5) = s5 else { return (sizes, cut) };
        let StateMsg::Sync(mut s5) = pass(StateMsg::Sync(Box::new(s5)), &mut sizes) else {
            unreachable!()
        };
        b.merge(std::mem::take(&mut s5.delta), now);
        (sizes, cut)
    }

    fn round(a: &mut ClusterState, b: &mut ClusterState) {
        round_with(a, b, Limits::default(), 0);
    }

    #[test]
    fn two_states_converge_in_one_round_and_then_exchange_only_a_hash() {
        let mut a = ClusterState::new(info(0, 2), 1);
        let mut b = ClusterState::new(info(1, 4), 1);
        round(&mut a, &mut b);
        assert_eq!(a.hash(), b.hash());
        assert_eq!(a.member(&NodeId("n1".into())).unwrap().nthreads, 4);
        assert_eq!(b.member(&NodeId("n0".into())).unwrap().nthreads, 2);
        assert!(b.digest_for(&a.hashes()).is_none());
        let (sync, _) = a.sync_for(&b.digest(), Limits::default());
        assert!(sync.is_none());
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
        b.collect_garbage(100_000, 1_000, 1_000_000);
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
        a.collect_garbage(5_000, 10_000, 1_000_000);
        assert_eq!(a.removed.len(), 1);
        a.collect_garbage(11_001, 10_000, 1_000_000);
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
        let limits = Limits {
            members: 16,
            ..Limits::default()
        };
        let (sync, _) = a.sync_for(&fresh.digest(), limits);
        let sync = sync.unwrap();
        assert_eq!(sync.delta.members.len() + sync.delta.loads.len(), 16);
    }

    fn session(s: u64) -> u128 {
        u128::from(s) << 64
    }

    fn own(owner: &str, epoch: u64) -> Ownership {
        Ownership {
            owner: NodeId(owner.into()),
            epoch,
            backups: vec![NodeId("n9".into())],
        }
    }

    #[test]
    fn a_released_entry_stays_removed_and_its_tombstone_expires() {
        let mut a = ClusterState::new(info(0, 1), 1);
        let mut b = ClusterState::new(info(1, 1), 1);
        assert_eq!(a.claim(session(7), own("n0", 1), 0), Some(1));
        round(&mut a, &mut b);
        let stale = b.clone();
        assert_eq!(b.owner(session(7)).unwrap().owner.0.as_ref(), "n0");
        // The owner ends the session; another node's release changes nothing.
        assert!(!a.release_owner(session(7), &NodeId("n1".into()), false, 10));
        assert!(a.release_owner(session(7), &NodeId("n0".into()), false, 10));
        assert!(a.owner(session(7)).is_none() && a.owner_removed(session(7)));
        round(&mut a, &mut b);
        assert!(b.owner(session(7)).is_none());
        assert_eq!(a.hash(), b.hash());
        // Stale gossip (a node that missed the release) does not bring the entry back.
        let mut c = stale;
        round(&mut c, &mut a);
        round(&mut a, &mut c);
        assert!(a.owner(session(7)).is_none() && c.owner(session(7)).is_none());
        // A close through a node the table does not name ends the session all the same.
        b.claim(session(9), own("n1", 1), 0);
        assert!(!b.release_owner(session(9), &NodeId("n0".into()), false, 0));
        assert!(b.release_owner(session(9), &NodeId("n0".into()), true, 0));
        assert!(b.owner(session(9)).is_none());
        // A backup's take-over of the ended session is refused.
        assert_eq!(
            b.claim(session(7), own("n1", next_epoch(1, "n1")), 20),
            None
        );
        // The client came back and submitted again: a first claim outranks the tombstone.
        let epoch = b.claim(session(7), own("n1", 1), 30).unwrap();
        assert!(epoch > 1);
        round(&mut b, &mut a);
        assert_eq!(a.owner(session(7)).unwrap().owner.0.as_ref(), "n1");
        assert_eq!(a.owner(session(7)).unwrap().epoch, epoch);
        // Tombstones go after their grace period, live entries stay.
        assert!(a.claim(session(8), own("n0", 1), 0).is_some());
        assert!(a.release_owner(session(8), &NodeId("n0".into()), false, 100));
        a.collect_garbage(1_000, 10_000, 1_000_000);
        assert_eq!(a.sizes().owner_tombstones, 1);
        a.collect_garbage(10_100, 10_000, 1_000_000);
        assert_eq!(a.sizes().owner_tombstones, 0);
        assert_eq!(a.sizes().owners, 1);
    }

    #[test]
    fn a_young_tombstone_reaches_a_node_that_never_saw_its_entry() {
        let mut a = ClusterState::new(info(0, 1), 1);
        let mut b = ClusterState::new(info(1, 1), 1);
        // A session that lived between two rounds.
        a.claim(session(3), own("n0", 1), 0);
        a.release_owner(session(3), &NodeId("n0".into()), false, 5);
        round(&mut b, &mut a);
        round(&mut a, &mut b);
        assert_eq!(b.sizes().owner_tombstones, 1);
        assert_eq!(a.hash(), b.hash());
    }

    #[test]
    fn a_tombstone_dropped_here_is_not_fetched_back_from_a_peer_that_still_has_it() {
        let mut a = ClusterState::new(info(0, 1), 1);
        let mut b = ClusterState::new(info(1, 1), 1);
        a.claim(session(3), own("n0", 1), 0);
        round(&mut a, &mut b);
        a.release_owner(session(3), &NodeId("n0".into()), false, 0);
        round(&mut a, &mut b);
        assert_eq!(b.sizes().owner_tombstones, 1);
        // a drops it first; b, which got it a little later, still has it: neither sends it
        // to the other (it is old at b too).
        b.collect_garbage(9_999, 10_000, 1_000_000);
        a.collect_garbage(10_000, 10_000, 1_000_000);
        assert_eq!(a.sizes().owner_tombstones, 0);
        round(&mut a, &mut b);
        round(&mut b, &mut a);
        assert_eq!(a.sizes().owner_tombstones, 0);
        b.collect_garbage(10_000, 10_000, 1_000_000);
        assert_eq!(a.hash(), b.hash());
    }

    #[test]
    fn entries_of_owners_gone_from_the_member_table_and_their_datasets_are_collected() {
        let mut a = ClusterState::new(info(0, 1), 1);
        a.merge(
            ClusterState::new(info(1, 1), 1).entries_of(&[NodeId("n1".into())]),
            0,
        );
        a.claim(session(1), own("n1", 1), 0);
        a.claim(session(2), own("n0", 1), 0);
        let d = Dataset {
            session: 1,
            keys: vec!["k".into()],
            removed: false,
        };
        a.set_dataset("d", d, 0);
        a.collect_garbage(1_000, 240_000, 60_000);
        assert_eq!(a.sizes().owners, 2, "n1 is a member");
        a.remove(&NodeId("n1".into()), 2_000);
        a.collect_garbage(3_000, 240_000, 60_000);
        a.collect_garbage(62_000, 240_000, 60_000);
        assert_eq!(a.sizes().owners, 2, "not gone for the whole grace yet");
        a.collect_garbage(63_000, 240_000, 60_000);
        assert!(a.owner(session(1)).is_none() && a.owner(session(2)).is_some());
        assert!(a.dataset("d").is_some());
        a.collect_garbage(64_000, 240_000, 60_000);
        a.collect_garbage(124_000, 240_000, 60_000);
        assert!(
            a.dataset("d").is_none(),
            "its session has no owner any more"
        );
    }

    #[test]
    fn the_member_table_is_bounded_and_long_ids_are_refused() {
        let mut a = ClusterState::new(info(0, 1), 1);
        let mut delta = Delta::default();
        for i in 1..MAX_MEMBER_RECORDS as u32 + 100 {
            delta.members.extend(
                ClusterState::new(info(i, 1), 1)
                    .entries_of(&[NodeId(format!("n{i}").into())])
                    .members,
            );
        }
        let mut long = info(1, 1);
        long.id = NodeId("x".repeat(MAX_ID_BYTES + 1).into());
        delta.members.extend(
            ClusterState::new(long.clone(), 1)
                .entries_of(&[long.id.clone()])
                .members,
        );
        a.merge(delta, 0);
        assert_eq!(a.len(), MAX_MEMBER_RECORDS);
        assert!(a.member(&long.id).is_none());
        // The digest of a full member table still fits a message.
        let full = StateMsg::Digest(a.digest());
        assert!(
            wire_size(&full) <= MAX_MESSAGE_BYTES,
            "{}",
            wire_size(&full)
        );
    }

    /// A graph id of one of `n` sessions (spread like random client ids).
    fn graph(i: u64) -> u128 {
        session(crate::keyed::mix(i))
    }

    fn owner_name(i: u64) -> String {
        format!("12D3KooWNodeOwner{:035}", i % 7)
    }

    /// 100,000 live sessions: every message of every round fits the frame, a node that
    /// knows none of them catches up, and two nodes that differ in a few entries converge
    /// in one round of small messages.
    #[test]
    fn a_hundred_thousand_sessions_converge_in_bounded_messages() {
        const N: u64 = 100_000;
        let mut a = ClusterState::new(info(0, 1), 1);
        for i in 0..N {
            let o = Ownership {
                owner: NodeId(owner_name(i).into()),
                epoch: 1,
                backups: vec![
                    NodeId(owner_name(i + 1).into()),
                    NodeId(owner_name(i + 2).into()),
                ],
            };
            a.claim(graph(i), o, 0);
        }
        assert_eq!(a.sizes().owners, N as usize);
        // What the old protocol sent: every version in one digest.
        let flat: Vec<(u128, OwnerMark)> = a
            .owners
            .iter()
            .map(|(g, s)| (*g, s.reg.marker.clone()))
            .collect();
        let flat = postcard::to_allocvec(&flat).unwrap().len();
        assert!(flat > crate::MAX_FRAME_BYTES);
        let digest = StateMsg::Digest(a.digest_for(&Hashes::default()).unwrap());
        let digest_bytes = wire_size(&digest);
        assert!(digest_bytes < 64 * 1024, "{digest_bytes}");
        eprintln!(
            "100,000 sessions: one flat digest {flat} bytes; bucket digest {digest_bytes} bytes"
        );

        // A fresh node catches up, round after round (both ways, as peers pick each other).
        let mut b = ClusterState::new(info(1, 1), 1);
        let mut rounds = 0;
        let mut largest = 0;
        while a.hash() != b.hash() {
            rounds += 1;
            assert!(rounds < 200, "no convergence after {rounds} rounds");
            let (sizes, _) = if rounds % 2 == 0 {
                round_with(&mut a, &mut b, Limits::default(), 0)
            } else {
                round_with(&mut b, &mut a, Limits::default(), 0)
            };
            largest = largest.max(sizes.into_iter().max().unwrap_or(0));
        }
        assert_eq!(b.sizes().owners, N as usize);
        eprintln!("a fresh node caught up in {rounds} rounds; largest message {largest} bytes");

        // A few changes on each side: one round, small messages.
        for i in 0..5 {
            a.release_owner(graph(i), &NodeId(owner_name(i).into()), false, 1);
            b.claim(graph(N + i), own("n1", 1), 1);
        }
        let (sizes, cut) = round_with(&mut b, &mut a, Limits::default(), 2);
        assert!(!cut);
        assert_eq!(a.hash(), b.hash(), "one round: {sizes:?}");
        assert!(sizes.iter().all(|&n| n < 256 * 1024), "{sizes:?}");
        assert_eq!(a.sizes().owners, N as usize);
        assert_eq!(a.sizes().owner_tombstones, 5);
    }
}
