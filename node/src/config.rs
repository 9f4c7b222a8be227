use std::path::PathBuf;

use clap::Parser;
use libp2p::Multiaddr;

use crate::codec::{DEFAULT_MAX_FRAME, DEFAULT_MAX_VALUE};

/// The `rdask-node` command line.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "rdask-node",
    version,
    about = "An rdask node: every machine of an rdask cluster runs the same one",
    long_about = "An rdask node: every machine of an rdask cluster runs the same one. \
                  It accepts graphs from clients, runs their tasks on its threads and serves \
                  their results. Logging is controlled by RUST_LOG (e.g. RUST_LOG=debug)."
)]
pub struct Cli {
    /// Address to listen on, as a multiaddr (repeatable).
    #[arg(
        long,
        env = "RDASK_LISTEN",
        value_delimiter = ',',
        default_value = "/ip4/0.0.0.0/tcp/4001"
    )]
    pub listen: Vec<Multiaddr>,

    /// A member of the cluster to join, as a multiaddr, e.g. /dns/seed/tcp/4001 (repeatable).
    #[arg(long, env = "RDASK_JOIN", value_delimiter = ',')]
    pub join: Vec<Multiaddr>,

    /// The address other nodes should dial to reach this one [default: a listen address,
    /// preferring one that is not loopback].
    #[arg(long, env = "RDASK_ADVERTISE")]
    pub advertise: Option<Multiaddr>,

    /// The cluster size the failure detector is tuned for: suspicion lasts longer in larger
    /// clusters (fewer false alarms), shorter in small ones (faster detection).
    #[arg(long, env = "RDASK_CLUSTER_SIZE", default_value_t = 16)]
    pub cluster_size: u32,

    /// Threads that run task functions [default: the machine's cores].
    #[arg(long, env = "RDASK_NTHREADS")]
    pub nthreads: Option<usize>,

    /// File holding the node's key (created if missing): the same file gives the same
    /// peer id on every start. Without it the node gets a new identity each time.
    #[arg(long, env = "RDASK_IDENTITY")]
    pub identity: Option<PathBuf>,

    /// Threads of the async runtime that serves the network and the node's own loop (task
    /// functions run on their own --nthreads threads).
    #[arg(long, env = "RDASK_IO_THREADS", default_value_t = 1)]
    pub io_threads: usize,

    /// Largest message accepted or sent, in bytes.
    #[arg(long, env = "RDASK_MAX_FRAME_BYTES", default_value_t = DEFAULT_MAX_FRAME)]
    pub max_frame_bytes: usize,

    /// Largest single value (a task's result) sent to or accepted from another node, in
    /// bytes. Values travel beside the frames, so they are not bound by --max-frame-bytes.
    #[arg(long, env = "RDASK_MAX_VALUE_BYTES", default_value_t = DEFAULT_MAX_VALUE)]
    pub max_value_bytes: u64,

    /// Abstract resources this node offers to tasks that ask for them, as NAME=AMOUNT
    /// pairs (`GPU=2,MEM=8e9`): such a task runs only on nodes with enough of each, and no
    /// more of them at once than the amounts allow.
    #[arg(long, env = "RDASK_RESOURCES", value_parser = parse_resources, default_value = "")]
    pub resources: Resources,

    /// Where the dashboard (web page, JSON API, /metrics, /health) listens; the default is
    /// loopback only: `0.0.0.0:8787` exposes it. If the port is taken, another is used.
    #[arg(
        long,
        env = "RDASK_DASHBOARD_ADDRESS",
        default_value = "127.0.0.1:8787"
    )]
    pub dashboard_address: std::net::SocketAddr,

    /// Serve no dashboard.
    #[arg(
        long,
        env = "RDASK_NO_DASHBOARD",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub no_dashboard: bool,

    /// Print the task functions compiled into this binary and exit.
    #[arg(long)]
    pub list_functions: bool,
}

/// How to run a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Listen addresses; none for a node without network.
    pub listen: Vec<Multiaddr>,
    /// Members to join through (dialed at start, and again until reached).
    pub join: Vec<Multiaddr>,
    /// The address advertised to other nodes.
    pub advertise: Option<Multiaddr>,
    /// The cluster size the failure detector is tuned for.
    pub cluster_size: u32,
    /// Threads of the task pool.
    pub nthreads: usize,
    /// The identity file, if any.
    pub identity: Option<PathBuf>,
    /// The frame limit of the client and node protocols.
    pub max_frame: usize,
    /// The limit on one value sent between nodes.
    pub max_value: u64,
    /// Resources offered to tasks.
    pub resources: Vec<(String, u64)>,
    /// Where the dashboard listens; `None`: no dashboard.
    pub dashboard: Option<std::net::SocketAddr>,
}

/// `--resources`: NAME=AMOUNT pairs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources(pub Vec<(String, u64)>);

/// Parses `GPU=2,MEM=8e9` (amounts are whole numbers; `8e9` and `8000000000` are the same).
pub fn parse_resources(text: &str) -> Result<Resources, String> {
    let mut out: Vec<(String, u64)> = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, amount) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}`: expected NAME=AMOUNT, like GPU=2"))?;
        let name = name.trim();
        if name.is_empty() {
            return Err(format!("`{part}`: the resource has no name"));
        }
        let amount: f64 = amount
            .trim()
            .parse()
            .map_err(|_| format!("`{part}`: `{}` is not a number", amount.trim()))?;
        if !(0.0..=u64::MAX as f64).contains(&amount) || amount.fract() != 0.0 {
            return Err(format!("`{part}`: the amount must be a whole number ≥ 0"));
        }
        if out.iter().any(|(n, _)| n == name) {
            return Err(format!("resource `{name}` is given twice"));
        }
        out.push((name.to_string(), amount as u64));
    }
    Ok(Resources(out))
}

impl NodeConfig {
    /// A node without network, with `nthreads` task threads (the local cluster).
    pub fn in_process(nthreads: usize) -> NodeConfig {
        NodeConfig {
            listen: Vec::new(),
            join: Vec::new(),
            advertise: None,
            cluster_size: 16,
            nthreads,
            identity: None,
            max_frame: DEFAULT_MAX_FRAME,
            max_value: DEFAULT_MAX_VALUE,
            resources: Vec::new(),
            dashboard: None,
        }
    }
}

/// The machine's cores.
pub(crate) fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Cli {
    /// The node configuration these options describe.
    pub fn into_config(self) -> Result<NodeConfig, String> {
        if self.nthreads == Some(0) {
            return Err("--nthreads must be at least 1".into());
        }
        if self.max_frame_bytes < 1024 {
            return Err("--max-frame-bytes must be at least 1024".into());
        }
        Ok(NodeConfig {
            listen: self.listen,
            join: self.join,
            advertise: self.advertise,
            cluster_size: self.cluster_size.max(1),
            nthreads: self.nthreads.unwrap_or_else(default_threads),
            identity: self.identity,
            max_frame: self.max_frame_bytes,
            max_value: self.max_value_bytes,
            resources: self.resources.0,
            dashboard: (!self.no_dashboard).then_some(self.dashboard_address),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_parse_with_clear_errors() {
        assert_eq!(parse_resources("").unwrap(), Resources::default());
        assert_eq!(
            parse_resources("GPU=2, MEM=8e9").unwrap().0,
            vec![("GPU".to_string(), 2), ("MEM".to_string(), 8_000_000_000)]
        );
        for (bad, says) in [
            ("GPU", "NAME=AMOUNT"),
            ("=2", "no name"),
            ("GPU=two", "not a number"),
            ("GPU=1.5", "whole number"),
            ("GPU=-1", "whole number"),
            ("GPU=1,GPU=2", "twice"),
        ] {
            let e = parse_resources(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
