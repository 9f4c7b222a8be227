use std::path::PathBuf;

use clap::Parser;
use libp2p::Multiaddr;

use crate::codec::{DEFAULT_MAX_FRAME, DEFAULT_MAX_VALUE};

/// Default of `--max-connections`.
pub(crate) const DEFAULT_MAX_CONNECTIONS: u32 = 1024;
/// Default of `--max-client-sessions`.
pub(crate) const DEFAULT_MAX_SESSIONS: usize = 512;

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

    /// Largest message accepted or sent, in bytes, without the values it carries (a
    /// submission's task specs, a gather's keys).
    #[arg(long, env = "RDASK_MAX_FRAME_BYTES", default_value_t = DEFAULT_MAX_FRAME)]
    pub max_frame_bytes: usize,

    /// Largest single value (scattered data, a task's argument or result) sent to or
    /// accepted from a client or another node, in bytes. Values travel beside the frames,
    /// so they are not bound by --max-frame-bytes; a task whose result is larger fails.
    #[arg(long, env = "RDASK_MAX_VALUE_BYTES", default_value_t = DEFAULT_MAX_VALUE)]
    pub max_value_bytes: u64,

    /// Most connections this node accepts at once (clients, peers and the dashboards of
    /// other members); more are refused at the handshake.
    #[arg(long, env = "RDASK_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: u32,

    /// Most client sessions this node serves at once; a client over it is refused with an
    /// error naming this flag.
    #[arg(long, env = "RDASK_MAX_CLIENT_SESSIONS", default_value_t = DEFAULT_MAX_SESSIONS)]
    pub max_client_sessions: usize,

    /// Most tasks one submission may hold; a larger one is rejected whole, naming this flag
    /// (the client splits nothing: submit in parts).
    #[arg(
        long,
        env = "RDASK_MAX_TASKS_PER_SUBMIT",
        default_value_t = rdask_actors::DEFAULT_MAX_TASKS_PER_SUBMIT
    )]
    pub max_tasks_per_submit: u64,

    /// A name for this node, unique in its cluster (e.g. `gpu-1`): clients may give it
    /// where a node id is expected (`TaskOptions::workers`), `rdask status` and the
    /// dashboard show it, and tasks read it (`rdask::get_worker()`).
    #[arg(long, env = "RDASK_NODE_NAME", value_parser = parse_name)]
    pub name: Option<String>,
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

    /// Memory this node may use: bytes with an optional unit (`4GiB`, `512MiB`, `8e9`,
    /// `4Gi` as Kubernetes writes it), a fraction of the machine's memory (`0.5`), `auto`
    /// (the container's limit if there is one, else the machine's memory) or `none`. At 80%
    /// of it (results held, or the process's resident memory if larger) the node pauses
    /// until its memory is below that again: no new work, peers take its queued tasks, and
    /// what stays runs one task at a time.
    #[arg(
        long,
        env = "RDASK_MEMORY_LIMIT",
        value_parser = parse_memory_limit,
        default_value = "auto"
    )]
    pub memory_limit: MemoryLimit,

    /// The cluster secret, a passphrase (or a libp2p `swarm.key`) every member and client
    /// must share: connections without it are refused. Prefer the environment variable
    /// (or --cluster-secret-file) to keep it out of process listings. Clients read
    /// RDASK_CLUSTER_SECRET too.
    #[arg(long, env = "RDASK_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,

    /// A file holding the cluster secret (see --cluster-secret), e.g. a mounted
    /// Kubernetes Secret.
    #[arg(
        long,
        env = "RDASK_CLUSTER_SECRET_FILE",
        conflicts_with = "cluster_secret"
    )]
    pub cluster_secret_file: Option<PathBuf>,

    /// The TCP port of the data path: batches carrying large values go to peers over a
    /// plain TCP connection (authenticated by the node's key, not encrypted) beside libp2p,
    /// several times faster. 0: any free port. Off with a cluster secret.
    #[arg(long, env = "RDASK_DATA_PORT", default_value_t = 0)]
    pub data_port: u16,

    /// No data path: every value goes through libp2p (encrypted by noise).
    #[arg(
        long,
        env = "RDASK_NO_DATA_PATH",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub no_data_path: bool,

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
    /// The limit on one value sent between nodes or to and from clients.
    pub max_value: u64,
    /// The limit on connections at once (`--max-connections`).
    pub max_connections: u32,
    /// The limit on client sessions at once (`--max-client-sessions`).
    pub max_sessions: usize,
    /// The limit on tasks per submission (`--max-tasks-per-submit`).
    pub max_tasks_per_submit: u64,
    /// Resources offered to tasks.
    pub resources: Vec<(String, u64)>,
    /// The node's name (`--name`); empty: none.
    pub name: String,
    /// Where the dashboard listens; `None`: no dashboard.
    pub dashboard: Option<std::net::SocketAddr>,
    /// The memory limit in bytes; `None`: none.
    pub memory_limit: Option<u64>,
    /// The cluster secret, if any: connections are made and accepted only with it.
    pub secret: Option<crate::ClusterSecret>,
    /// The data path's port (0: any free one); `None`: no data path.
    pub data_port: Option<u16>,
}

/// `--memory-limit`, as given.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MemoryLimit {
    /// The container's limit (cgroup), else the machine's memory.
    Auto,
    /// No limit.
    Unlimited,
    /// This many bytes.
    Bytes(u64),
    /// This share of the machine's memory (0 < f ≤ 1).
    Fraction(f64),
}

/// Parses `--memory-limit`: `auto`, `none` (or `0`), a fraction such as `0.5`, or bytes
/// with an optional unit: `4GiB`, `4Gi`, `4G`, `4GB`, `512MiB`, `8e9`, `1000000`.
pub fn parse_memory_limit(text: &str) -> Result<MemoryLimit, String> {
    let t = text.trim();
    match t.to_ascii_lowercase().as_str() {
        "auto" => return Ok(MemoryLimit::Auto),
        "none" | "0" | "" => return Ok(MemoryLimit::Unlimited),
        _ => {}
    }
    let split = t
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: f64 = number.trim().parse().map_err(|_| {
        format!("`{t}`: expected bytes (4GiB, 512MiB, 8e9), a fraction (0.5), auto or none")
    })?;
    if !n.is_finite() || n < 0.0 {
        return Err(format!("`{t}`: the limit must be a positive amount"));
    }
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" if n <= 1.0 => return Ok(MemoryLimit::Fraction(n)),
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "ki" | "kib" => 1024.0,
        "mi" | "mib" => 1024.0 * 1024.0,
        "gi" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "ti" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        u => {
            return Err(format!(
                "`{t}`: unknown unit `{u}` (use B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
            ));
        }
    };
    let bytes = n * scale;
    if bytes >= u64::MAX as f64 {
        return Err(format!("`{t}`: too large"));
    }
    Ok(MemoryLimit::Bytes(bytes as u64))
}

/// The memory limit of the cgroup this process runs in (a container's), if it has one.
fn cgroup_memory_limit() -> Option<u64> {
    [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|p| std::fs::read_to_string(p).ok())
    .filter_map(|s| s.trim().parse::<u64>().ok())
    // cgroup v1 writes a huge number for "no limit".
    .find(|&l| l > 0 && l < (1 << 62))
}

impl MemoryLimit {
    /// The limit in bytes on a machine with `machine` bytes of memory (0: unknown).
    pub fn resolve(self, machine: u64) -> Option<u64> {
        let known = (machine > 0).then_some(machine);
        match self {
            MemoryLimit::Unlimited => None,
            MemoryLimit::Bytes(b) => Some(b),
            MemoryLimit::Fraction(f) => known.map(|m| (m as f64 * f) as u64),
            MemoryLimit::Auto => match (cgroup_memory_limit(), known) {
                (Some(c), Some(m)) => Some(c.min(m)),
                (c, m) => c.or(m),
            },
        }
        .filter(|&b| b > 0)
    }
}

/// `--name`: 1–64 letters, digits, `-`, `_` or `.`.
pub(crate) fn parse_name(text: &str) -> Result<String, String> {
    let ok = !text.is_empty()
        && text.len() <= 64
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(text.to_string())
    } else {
        Err(format!(
            "{text:?} is not a node name: use 1 to 64 letters, digits, '-', '_' or '.'"
        ))
    }
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
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_sessions: DEFAULT_MAX_SESSIONS,
            max_tasks_per_submit: rdask_actors::DEFAULT_MAX_TASKS_PER_SUBMIT,
            resources: Vec::new(),
            name: String::new(),
            dashboard: None,
            memory_limit: None,
            secret: None,
            data_port: None,
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
        if self.max_frame_bytes >= 1 << 31 {
            return Err(
                "--max-frame-bytes must be under 2 GiB (values travel beside frames)".into(),
            );
        }
        if self.max_connections == 0 || self.max_client_sessions == 0 {
            return Err("--max-connections and --max-client-sessions must be at least 1".into());
        }
        // A variable set to nothing (`RDASK_CLUSTER_SECRET=`) counts as unset.
        let given = self
            .cluster_secret
            .as_ref()
            .filter(|t| !t.trim().is_empty());
        let file = self
            .cluster_secret_file
            .as_ref()
            .filter(|p| !p.as_os_str().is_empty());
        let secret = match (given, file) {
            (Some(text), _) => Some(
                crate::ClusterSecret::new(text).map_err(|e| format!("--cluster-secret: {e}"))?,
            ),
            (None, Some(path)) => Some(crate::ClusterSecret::from_file(path)?),
            (None, None) => None,
        };
        Ok(NodeConfig {
            data_port: (!self.no_data_path).then_some(self.data_port),
            secret,
            listen: self.listen,
            join: self.join,
            advertise: self.advertise,
            cluster_size: self.cluster_size.max(1),
            nthreads: self.nthreads.unwrap_or_else(default_threads),
            identity: self.identity,
            max_frame: self.max_frame_bytes,
            max_value: self.max_value_bytes,
            max_connections: self.max_connections,
            max_sessions: self.max_client_sessions,
            max_tasks_per_submit: self.max_tasks_per_submit,
            resources: self.resources.0,
            name: self.name.unwrap_or_default(),
            dashboard: (!self.no_dashboard).then_some(self.dashboard_address),
            memory_limit: self.memory_limit.resolve(crate::machine_memory()),
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

    #[test]
    fn memory_limits_parse_as_dask_and_kubernetes_write_them() {
        use MemoryLimit::*;
        for (text, want) in [
            ("auto", Auto),
            ("none", Unlimited),
            ("0", Unlimited),
            ("4GiB", Bytes(4 << 30)),
            ("4Gi", Bytes(4 << 30)),
            ("512MiB", Bytes(512 << 20)),
            ("4GB", Bytes(4_000_000_000)),
            ("4G", Bytes(4_000_000_000)),
            ("8e9", Bytes(8_000_000_000)),
            ("1000000", Bytes(1_000_000)),
            ("4294967296", Bytes(4 << 30)),
            ("0.5", Fraction(0.5)),
        ] {
            assert_eq!(parse_memory_limit(text).unwrap(), want, "{text}");
        }
        for (bad, says) in [
            ("lots", "expected bytes"),
            ("4 parsecs", "unknown unit"),
            ("-1GB", "positive"),
        ] {
            let e = parse_memory_limit(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert_eq!(Fraction(0.5).resolve(8 << 30), Some(4 << 30));
        assert_eq!(Bytes(1 << 30).resolve(0), Some(1 << 30));
        assert_eq!(Unlimited.resolve(8 << 30), None);
        // Auto never exceeds the machine.
        assert!(Auto.resolve(8 << 30).is_some_and(|l| l <= 8 << 30));
    }
}
