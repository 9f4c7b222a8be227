//! Membership and the replicated cluster state of rdask (pure, sans-IO).
//!
//! - [`Membership`]: SWIM-style failure detection and membership (probes, indirect probes
//!   through k peers, suspicion with incarnation numbers, refutation), done by `foca` and
//!   driven like every core of rdask: inputs in (`handle_*`), outputs out (`take_*`), time
//!   and randomness handed in. Nothing here does I/O, reads a clock or spawns.
//! - [`NodeId`], [`MemberInfo`], [`LoadSummary`]: what a node says about itself.
//!
//! - [`ClusterState`]: the replicated member records and load summaries, the ownership
//!   table and the dataset table, merged as CRDTs (`crdts::LWWReg` per entry, tombstones for
//!   removed entries) and spread by push-pull anti-entropy whose steady-state cost is a few
//!   hashes per round and whose every message fits [`MAX_FRAME_BYTES`] however large the
//!   state ([`state`]).

mod gossip;
mod keyed;
mod membership;
pub mod state;

use std::fmt;
use std::sync::Arc;

pub use gossip::{
    Gossip, GossipConfig, GossipError, GossipStats, GossipTimer, MemberState, MemberView, Wire,
};
pub use membership::{Event, Membership, MembershipConfig, MembershipError, Peer, Timer};
pub use state::{
    BucketList, Buckets, ClusterState, Dataset, DatasetMark, Delta, Digest, Hashes, Limits,
    MAX_MEMBER_RECORDS, MAX_MESSAGE_BYTES, OwnerMark, Ownership, StateMsg, StateSizes, Sync,
    Version, Wanted,
};

use serde::{Deserialize, Serialize};

/// The version of rdask's wire protocols. Nodes and clients with a different version refuse
/// each other with a clear reason.
pub const PROTOCOL_VERSION: u32 = 4;

/// `host:port` of a member address, a multiaddr's text (`/ip4/10.0.0.2/tcp/4001/p2p/…` →
/// `10.0.0.2:4001`), as a user would write it; `None` without a host and a TCP port.
pub fn host_port(multiaddr: &str) -> Option<String> {
    let parts: Vec<&str> = multiaddr.split('/').collect();
    let mut host = None;
    let mut port = None;
    for w in parts.windows(2) {
        match w[0] {
            "ip4" | "dns" | "dns4" | "dns6" => host = Some(w[1].to_string()),
            "ip6" => host = Some(format!("[{}]", w[1])),
            "tcp" => port = Some(w[1]),
            _ => {}
        }
    }
    Some(format!("{}:{}", host?, port?))
}

/// The largest gossip datagram a node reads (`/rdask/gossip/1`). Every message the gossip
/// core makes fits it, whatever the size of the replicated state.
pub const MAX_FRAME_BYTES: usize = 1 << 20;

/// An ownership epoch is a take-over generation (the upper 32 bits) and the claimant's
/// mark (the lower 32 bits): [`next_epoch`].
pub const EPOCH_GENERATION_SHIFT: u32 = 32;

/// The epoch of a claim by node `claimant` over a session owned in epoch `current`: the
/// next generation, marked with a stable hash of the claimant's name, so that two nodes that
/// each believe they should take over (a partition, membership views not settled yet, a
/// client that submitted again elsewhere) do not claim the same epoch (unless their names
/// hash alike: one chance in 2³²). The higher epoch wins.
pub fn next_epoch(current: u64, claimant: &str) -> u64 {
    // FNV-1a: the same on every node and every build.
    let mut h: u32 = 0x811c_9dc5;
    for b in claimant.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    (((current >> EPOCH_GENERATION_SHIFT) + 1) << EPOCH_GENERATION_SHIFT) | u64::from(h.max(1))
}

/// The take-over generation of an epoch (0 for a session's first owner).
pub fn epoch_generation(epoch: u64) -> u64 {
    epoch >> EPOCH_GENERATION_SHIFT
}

/// A node's identity: its libp2p `PeerId` in its base58 text form.
///
/// Pure crates cannot depend on libp2p, so the identity is carried as its text form, shared
/// (membership copies identities often).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub Arc<str>);

impl Default for NodeId {
    fn default() -> Self {
        NodeId(Arc::from(""))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.0)
    }
}

/// What a node says about itself: the member record gossiped in the cluster state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// The node's identity.
    pub id: NodeId,
    /// Addresses it listens on (multiaddrs as text).
    pub addresses: Vec<String>,
    /// Threads that run task functions.
    pub nthreads: u32,
    /// Memory of the machine in bytes, when known.
    pub memory_bytes: u64,
    /// Digest of the task functions compiled into its binary.
    pub functions_digest: u64,
    /// Number of task functions compiled into its binary.
    pub functions: u32,
    /// The rdask version it runs.
    pub version: String,
    /// The wire protocol version.
    pub protocol: u32,
    /// Abstract resources it offers to tasks (`--resources GPU=2,MEM=8000000000`).
    pub resources: Vec<(String, u64)>,
    /// The address of its dashboard (`http://host:port`), empty when it serves none.
    #[serde(default)]
    pub dashboard: String,
    /// Its memory limit in bytes (`--memory-limit`); 0: none.
    #[serde(default)]
    pub memory_limit: u64,
    /// The TCP port of its data path (large values, beside libp2p) on the host of its
    /// first address; 0: none.
    #[serde(default)]
    pub data_port: u16,
    /// The name its operator gave it (`--name`); empty: none. Clients may name the node by
    /// it (and by its addresses) where a node id is expected.
    #[serde(default)]
    pub name: String,
}

/// A node's load, as gossiped later and reported to clients now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadSummary {
    /// Tasks waiting for inputs or for a thread.
    pub queued: u64,
    /// Tasks running now.
    pub running: u64,
    /// Results held in memory.
    pub stored: u64,
    /// Bytes of results held in memory.
    pub memory_used: u64,
    /// Paused: its memory reached the pause mark of its limit, so it starts no task.
    pub paused: bool,
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_member_address_reads_as_host_port() {
        use super::host_port;
        assert_eq!(
            host_port("/ip4/10.0.0.2/tcp/4001/p2p/12D3KooWx").as_deref(),
            Some("10.0.0.2:4001")
        );
        assert_eq!(host_port("/ip6/::1/tcp/7").as_deref(), Some("[::1]:7"));
        assert_eq!(
            host_port("/dns/seed/tcp/4001").as_deref(),
            Some("seed:4001")
        );
        assert_eq!(host_port("/memory/3"), None);
    }

    use super::*;

    #[test]
    fn member_records_round_trip_through_the_wire_codec() {
        let m = MemberInfo {
            id: NodeId("12D3KooW".into()),
            addresses: vec!["/ip4/127.0.0.1/tcp/4001".into()],
            nthreads: 2,
            memory_bytes: 1 << 30,
            functions_digest: 7,
            functions: 3,
            version: "0.1.0".into(),
            protocol: PROTOCOL_VERSION,
            resources: vec![("GPU".into(), 2)],
            dashboard: String::new(),
            memory_limit: 0,
            data_port: 0,
            name: String::new(),
        };
        let bytes = postcard::to_allocvec(&m).unwrap();
        assert_eq!(postcard::from_bytes::<MemberInfo>(&bytes).unwrap(), m);
    }
}
