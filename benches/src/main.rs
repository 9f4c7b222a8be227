//! `rdask-bench`: the foundation's figures, on the local cluster and against a separate
//! node process.
//!
//! ```text
//! cargo run --release -p rdask-benches --bin rdask-bench
//! cargo run --release -p rdask-benches --bin rdask-bench -- --repeats 7 --tasks 100000
//! ```
//!
//! Workloads: tiny tasks through `map` + `gather` (tasks/s), sequential submit→result round
//! trips (median and p99), a chain of dependent tasks (µs per hop), on the local cluster,
//! on one node process, and on a cluster of `--cluster` node processes (all work submitted
//! to the first); on the cluster also 400 tasks sleeping 50 ms (efficiency = ideal
//! makespan / makespan), as the first graph of a new cluster and on a running one, and a 256 MiB value moved between two nodes (MB/s). Each figure is
//! the median of several repetitions; the min–max range is printed beside it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;

mod compare;

/// mimalloc, as the stock `rdask-node` uses (the node processes of the network figures are
/// this binary too); the system's with `--features system-alloc`.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The allocator of this binary and its node processes, for the figures' header.
const ALLOCATOR: &str = if cfg!(feature = "system-alloc") {
    "system allocator"
} else {
    "mimalloc"
};
use rdask::builtins::{identity, inc, sleep_ms};
use rdask::{Client, MemberState, TaskOptions};

/// `mib` MiB of bytes (the value moved between nodes).
#[rdask::task]
fn blob(mib: u32, seed: u64) -> bytes::Bytes {
    let mut v = vec![0u8; mib as usize * 1024 * 1024];
    for (i, b) in v.iter_mut().enumerate().step_by(4096) {
        *b = (seed as usize + i) as u8;
    }
    v.into()
}

/// `x + 1` after `ms` milliseconds (the leaves of the fail-over graph).
#[rdask::task]
fn slow_leaf(x: i64, ms: u64) -> i64 {
    std::thread::sleep(Duration::from_millis(ms));
    x + 1
}

/// `a + b` (the reduction of the fail-over graph).
#[rdask::task]
fn plus(a: i64, b: i64) -> i64 {
    a + b
}

/// The length of `data` (reading it proves it arrived).
#[rdask::task]
fn byte_len(data: bytes::Bytes) -> u64 {
    data.len() as u64
}

#[derive(Parser, Debug)]
#[command(about = "rdask foundation benchmarks")]
struct Args {
    /// Tiny tasks per map + gather run.
    #[arg(long, default_value_t = 20_000)]
    tasks: usize,
    /// Sequential round trips per run.
    #[arg(long, default_value_t = 1_000)]
    round_trips: usize,
    /// Length of the dependent chain.
    #[arg(long, default_value_t = 5_000)]
    chain: usize,
    /// Repetitions of each workload.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Task threads of the cluster.
    #[arg(long, default_value_t = 2)]
    nthreads: usize,
    /// Only the local cluster.
    #[arg(long)]
    local_only: bool,
    /// Node processes of the cluster figures (0: none).
    #[arg(long, default_value_t = 4)]
    cluster: usize,
    /// Sleep tasks of the efficiency figure.
    #[arg(long, default_value_t = 400)]
    sleeps: usize,
    /// MiB moved between two nodes.
    #[arg(long, default_value_t = 256)]
    mib: u32,
    /// Only the owner fail-over figure: a fresh cluster of `--cluster` nodes per run, a
    /// graph of 1,024 leaves of 5 ms and a tree of 1,023 additions, with and without a
    /// SIGKILL of the node that owns it 300 ms in.
    #[arg(long)]
    failover: bool,
    /// The rdask side of the comparison with Dask, as JSON lines (see
    /// `benches/compare/compare.py`, which runs both sides).
    #[arg(long)]
    compare: bool,
    /// Only the dashboard figure: tiny-task throughput of a node process with and without
    /// its dashboard watched (the live stream open, and the cluster view asked for four
    /// times a second), runs interleaved.
    #[arg(long)]
    dashboard: bool,
    /// Only the transfer figure: `--mib` MiB between two node processes, with the data
    /// path (plain TCP beside libp2p) and without it (`--no-data-path`: all by libp2p),
    /// two clusters measured in turn.
    #[arg(long)]
    transfer: bool,
    /// Only the first-graph figure: `--sleeps` tasks of 50 ms submitted to a new cluster of
    /// `--cluster` nodes the moment the client lists them all, a new cluster per run.
    #[arg(long)]
    first_graph: bool,
    /// Run as a node (used by the benchmark itself for the network figures).
    #[arg(long, hide = true, num_args = 0.., allow_hyphen_values = true)]
    node: Option<Vec<String>>,
}

struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

fn spread(mut xs: Vec<f64>) -> Spread {
    xs.sort_by(f64::total_cmp);
    Spread {
        median: xs[xs.len() / 2],
        min: xs[0],
        max: xs[xs.len() - 1],
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

struct Figures {
    tasks_per_s: Spread,
    rt_median_us: Spread,
    rt_p99_us: Spread,
    hop_us: Spread,
}

fn measure(client: &Client, args: &Args) -> rdask::Result<Figures> {
    // warm up
    let warm = client.map(inc, 0..1000i64);
    rdask::block_on(client.gather(&warm))?;
    drop(warm);

    let mut tps = Vec::new();
    for _ in 0..args.repeats {
        let start = Instant::now();
        let futs = client.map(inc, 0..args.tasks as i64);
        let values = rdask::block_on(client.gather(&futs))?;
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(values.len(), args.tasks);
        assert_eq!(values[args.tasks - 1], args.tasks as i64);
        tps.push(args.tasks as f64 / secs);
    }

    let mut medians = Vec::new();
    let mut p99s = Vec::new();
    for _ in 0..args.repeats {
        let mut lat = Vec::with_capacity(args.round_trips);
        for i in 0..args.round_trips {
            let start = Instant::now();
            let v = rdask::block_on(client.submit(identity, (i as u64,)).result())?;
            lat.push(start.elapsed().as_secs_f64() * 1e6);
            assert_eq!(v, i as u64);
        }
        lat.sort_by(f64::total_cmp);
        medians.push(percentile(&lat, 0.5));
        p99s.push(percentile(&lat, 0.99));
    }

    let mut hops = Vec::new();
    for _ in 0..args.repeats {
        let start = Instant::now();
        let mut f = client.submit(inc, (0i64,));
        for _ in 1..args.chain {
            f = client.submit(inc, (&f,));
        }
        let v = rdask::block_on(f.result())?;
        assert_eq!(v, args.chain as i64);
        hops.push(start.elapsed().as_secs_f64() * 1e6 / args.chain as f64);
    }
    Ok(Figures {
        tasks_per_s: spread(tps),
        rt_median_us: spread(medians),
        rt_p99_us: spread(p99s),
        hop_us: spread(hops),
    })
}

fn print(label: &str, f: &Figures, args: &Args) {
    let row = |name: String, s: &Spread, unit: &str| {
        println!(
            "{label:<8} {name:<36} {:>12.1} {unit:<8} ({:.1} – {:.1})",
            s.median, s.min, s.max
        );
    };
    row(
        format!("{} tiny tasks, map + gather", args.tasks),
        &f.tasks_per_s,
        "tasks/s",
    );
    row(
        format!("{} round trips, median", args.round_trips),
        &f.rt_median_us,
        "µs",
    );
    row(
        format!("{} round trips, p99", args.round_trips),
        &f.rt_p99_us,
        "µs",
    );
    row(format!("chain of {}, per hop", args.chain), &f.hop_us, "µs");
}

struct NodeProcess(Child);

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_node(nthreads: usize, join: Option<&str>) -> (NodeProcess, String) {
    let (node, addr, _) = start_node_with_dashboard(nthreads, join, &[]);
    (node, addr)
}

/// A node process, its address and its dashboard's (`127.0.0.1:PORT`).
fn start_node_with_dashboard(
    nthreads: usize,
    join: Option<&str>,
    extra: &[&str],
) -> (NodeProcess, String, String) {
    let exe = std::env::current_exe().expect("own path");
    let threads = nthreads.to_string();
    let mut node_args = vec![
        "--node",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--nthreads",
        &threads,
        "--dashboard-address",
        "127.0.0.1:0",
    ];
    if let Some(seed) = join {
        node_args.extend(["--join", seed]);
    }
    node_args.extend(extra);
    let mut child = Command::new(exe)
        .args(node_args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start a node process");
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(a) = line.strip_prefix("listening on ") {
                let _ = tx.send(a.to_string());
            } else if let Some(d) = line.strip_prefix("dashboard at http://") {
                let _ = tx.send(d.trim_end_matches('/').to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the node prints its address");
    // None with RDASK_NO_DASHBOARD set.
    let no_dashboard =
        std::env::var_os("RDASK_NO_DASHBOARD").is_some_and(|v| !v.is_empty() && v != "0");
    let dashboard = if no_dashboard {
        String::new()
    } else {
        rx.recv_timeout(Duration::from_secs(30))
            .expect("the node prints its dashboard")
    };
    (NodeProcess(child), addr, dashboard)
}

/// Watches a dashboard as a busy page would, until `stop`: the live stream open (read as
/// it comes) and the cluster view asked for every 250 ms. Returns the requests answered.
fn watch(
    dashboard: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    let stream_host = dashboard.clone();
    let stream_stop = stop.clone();
    std::thread::spawn(move || {
        if let Ok(mut s) = std::net::TcpStream::connect(&stream_host) {
            let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
            let _ = write!(
                s,
                "GET /api/v1/stream HTTP/1.1\r\nHost: {stream_host}\r\n\r\n"
            );
            let mut buf = [0u8; 65536];
            while !stream_stop.load(Ordering::Relaxed) {
                let _ = s.read(&mut buf);
            }
        }
    });
    std::thread::spawn(move || {
        let mut answered = 0;
        while !stop.load(Ordering::Relaxed) {
            if let Ok(mut s) = std::net::TcpStream::connect(&dashboard) {
                let _ = write!(
                    s,
                    "GET /api/v1/cluster HTTP/1.1\r\nHost: {dashboard}\r\nConnection: close\r\n\r\n"
                );
                let mut body = Vec::new();
                if s.read_to_end(&mut body).is_ok() && body.starts_with(b"HTTP/1.1 200") {
                    answered += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        answered
    })
}

/// Tiny-task throughput of one node process, without and with its dashboard watched.
fn dashboard_figure(args: &Args) -> rdask::Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (_node, addr, dashboard) = start_node_with_dashboard(args.nthreads, None, &[]);
    let client = Client::connect(&addr)?;
    let run = || -> rdask::Result<f64> {
        let start = Instant::now();
        let futs = client.map(inc, 0..args.tasks as i64);
        let values = rdask::block_on(client.gather(&futs))?;
        assert_eq!(values.len(), args.tasks);
        Ok(args.tasks as f64 / start.elapsed().as_secs_f64())
    };
    run()?; // warm-up
    let (mut quiet, mut watched) = (Vec::new(), Vec::new());
    let mut answered = 0;
    for _ in 0..args.repeats {
        quiet.push(run()?);
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let watcher = watch(dashboard.clone(), stop.clone());
        std::thread::sleep(Duration::from_millis(300));
        watched.push(run()?);
        stop.store(true, Ordering::Relaxed);
        answered += watcher.join().unwrap_or(0);
    }
    let (q, w) = (spread(quiet), spread(watched));
    println!(
        "{:<8} {:<36} {:>12.0} {:<8} ({:.0} – {:.0})",
        "network",
        format!("{} tiny tasks, dashboard closed", args.tasks),
        q.median,
        "tasks/s",
        q.min,
        q.max
    );
    println!(
        "{:<8} {:<36} {:>12.0} {:<8} ({:.0} – {:.0}); {answered} cluster views served meanwhile",
        "network",
        format!("{} tiny tasks, dashboard watched", args.tasks),
        w.median,
        "tasks/s",
        w.min,
        w.max
    );
    println!("watched ÷ closed: {:.3}", w.median / q.median);
    Ok(())
}

fn main() -> rdask::Result<()> {
    let args = Args::parse();
    if let Some(node_args) = args.node {
        let cli =
            rdask_node::Cli::parse_from(std::iter::once("rdask-node".to_string()).chain(node_args));
        std::process::exit(rdask_node::run_cli(cli));
    }
    if args.compare {
        return compare::run(&args);
    }
    println!(
        "rdask {} — {} task threads, {} repetitions each, {ALLOCATOR}, median (min – max)",
        env!("CARGO_PKG_VERSION"),
        args.nthreads,
        args.repeats
    );
    if args.failover {
        return failover(&args);
    }
    if args.dashboard {
        return dashboard_figure(&args);
    }
    if args.transfer {
        return transfer_figure(&args);
    }
    if args.first_graph {
        return cluster(&args, true);
    }
    {
        let client = Client::local_with_threads(args.nthreads)?;
        let f = measure(&client, &args)?;
        print("local", &f, &args);
    }
    if !args.local_only {
        let (_node, addr) = start_node(args.nthreads, None);
        let client = Client::connect(&addr)?;
        let f = measure(&client, &args)?;
        print("network", &f, &args);
    }
    if !args.local_only && args.cluster > 1 {
        cluster(&args, false)?;
    }
    Ok(())
}

/// The figures of a cluster of node processes, all work submitted to the first.
/// (`first_only`: the first-graph figure alone.)
fn cluster(args: &Args, first_only: bool) -> rdask::Result<()> {
    let n = args.cluster;
    let label = format!("{n} nodes");
    // Sleep tasks: efficiency = ideal makespan / makespan.
    let slots = (n * args.nthreads) as f64;
    let ideal = args.sleeps as f64 * 0.050 / slots;
    let sleeps = |client: &Client| -> rdask::Result<f64> {
        let start = Instant::now();
        let futs = client.map(sleep_ms, std::iter::repeat_n(50u64, args.sleeps));
        rdask::block_on(client.gather(&futs))?;
        Ok(start.elapsed().as_secs_f64())
    };
    let efficiency = |what: &str, spans: Vec<f64>| {
        let e = spread(spans.iter().map(|s| ideal / s).collect());
        let m = spread(spans);
        println!(
            "{label:<8} {:<36} {:>12.3} {:<8} ({:.3} – {:.3}); makespan {:.3} s, ideal {ideal:.3} s",
            format!("{} × 50 ms sleeps, {what}", args.sleeps),
            e.median,
            "",
            e.min,
            e.max,
            m.median
        );
    };

    // The first graph of a new cluster, submitted the moment the client lists every node:
    // what a user's first run sees.
    let mut first = Vec::new();
    for _ in 0..args.repeats.min(3) {
        let (nodes, client) = start_cluster(n, args.nthreads)?;
        first.push(sleeps(&client)?);
        drop(nodes);
    }
    efficiency("first graph", first);
    if first_only {
        return Ok(());
    }

    let (nodes, client) = start_cluster(n, args.nthreads)?;
    let f = measure(&client, args)?;
    print(&label, &f, args);
    let mut spans = Vec::new();
    for _ in 0..args.repeats.min(3) {
        spans.push(sleeps(&client)?);
    }
    efficiency("efficiency", spans);

    let r = spread(transfer_rates(&client, args.mib, args.repeats.min(3), 0)?);
    println!(
        "{label:<8} {:<36} {:>12.1} {:<8} ({:.1} – {:.1})",
        format!("{} MiB between two nodes", args.mib),
        r.median,
        "MB/s",
        r.min,
        r.max
    );
    drop(nodes);
    Ok(())
}

/// The transfer figure, with and without the data path (see `--transfer`).
fn transfer_figure(args: &Args) -> rdask::Result<()> {
    let (fast_nodes, fast) = start_cluster_with(2, args.nthreads, &[])?;
    let (_slow_nodes, slow) = start_cluster_with(2, args.nthreads, &["--no-data-path"])?;
    // The receiving node (the client's entry node) and the sending one of the data-path
    // cluster: their page faults and CPU time per transfer show where a slow one goes.
    let (receiver, sender) = (fast_nodes[0].0.id(), fast_nodes[1].0.id());
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for r in 0..args.repeats as u64 {
        let before = (proc_stat(receiver), proc_stat(sender));
        with.extend(transfer_rates(&fast, args.mib, 1, 1_000 + r)?);
        let after = (proc_stat(receiver), proc_stat(sender));
        without.extend(transfer_rates(&slow, args.mib, 1, 2_000 + r)?);
        let delta = |b: Option<(u64, u64)>, a: Option<(u64, u64)>| match (b, a) {
            (Some(b), Some(a)) => format!("{} faults, {} ms CPU", a.0 - b.0, (a.1 - b.1) * 10),
            _ => "?".to_string(),
        };
        println!(
            "repetition {}: {:.0} MB/s with the data path (receiver {}; sender, making the \
             value too: {}), {:.0} MB/s libp2p only",
            r + 1,
            with[with.len() - 1],
            delta(before.0, after.0),
            delta(before.1, after.1),
            without[without.len() - 1]
        );
    }
    let (a, b) = (spread(with), spread(without));
    for (name, s) in [("with the data path", &a), ("libp2p only", &b)] {
        println!(
            "{:<44} {:>10.1} MB/s ({:.1} – {:.1})",
            format!("{} MiB between two nodes, {name}", args.mib),
            s.median,
            s.min,
            s.max
        );
    }
    println!("ratio of the medians: {:.2}", a.median / b.median);
    Ok(())
}

/// Minor page faults and CPU time (user + system, in clock ticks of 10 ms) of process
/// `pid` so far (Linux: `/proc/PID/stat`).
fn proc_stat(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After `pid (comm) `: state is field 3; minflt is field 10, utime 14, stime 15.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
    let num = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some((num(7)?, num(11)? + num(12)?))
}

/// MB/s of a value of `mib` MiB made on the cluster's second node and read on its first
/// (one figure per repetition).
fn transfer_rates(client: &Client, mib: u32, repeats: usize, seed: u64) -> rdask::Result<Vec<f64>> {
    let members = rdask::block_on(client.nodes())?;
    let here = members[0].member.id.0.to_string();
    let there = members[1].member.id.0.to_string();
    let mut rates = Vec::new();
    for r in 0..repeats {
        let data = client.submit_with(
            blob,
            (mib, seed + r as u64),
            &TaskOptions::new().workers([&there]),
        );
        let made = client.submit_with(byte_len, (&data,), &TaskOptions::new().workers([&there]));
        rdask::block_on(made.result())?;
        let start = Instant::now();
        let moved = client.submit_with(byte_len, (&data,), &TaskOptions::new().workers([&here]));
        let len = rdask::block_on(moved.result())?;
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(len, u64::from(mib) << 20);
        rates.push(len as f64 / secs / 1e6);
    }
    Ok(rates)
}

/// Starts `n` node processes joined into one cluster and a client of the first, as soon as
/// the client lists every member alive (placement knows them by then).
fn start_cluster(n: usize, nthreads: usize) -> rdask::Result<(Vec<NodeProcess>, Client)> {
    start_cluster_with(n, nthreads, &[])
}

/// [`start_cluster`], every node started with the `extra` options.
fn start_cluster_with(
    n: usize,
    nthreads: usize,
    extra: &[&str],
) -> rdask::Result<(Vec<NodeProcess>, Client)> {
    let (first, seed, _) = start_node_with_dashboard(nthreads, None, extra);
    let mut nodes = vec![first];
    for _ in 1..n {
        nodes.push(start_node_with_dashboard(nthreads, Some(&seed), extra).0);
    }
    let client = Client::connect(&seed)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let alive = rdask::block_on(client.nodes())?
            .iter()
            .filter(|m| m.state == MemberState::Alive)
            .count();
        if alive == n {
            break;
        }
        assert!(Instant::now() < deadline, "the cluster did not form");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((nodes, client))
}

/// Time to the result of a 2,047-task graph, with and without a SIGKILL of its owner (the
/// client's entry node) 300 ms in: the client re-attaches to the backup that takes over.
fn failover(args: &Args) -> rdask::Result<()> {
    let n = args.cluster.max(3);
    let mut plain = Vec::new();
    let mut killed = Vec::new();
    for _ in 0..args.repeats.min(3) {
        for kill in [false, true] {
            let (mut nodes, client) = start_cluster(n, args.nthreads)?;
            let start = Instant::now();
            let mut level: Vec<_> = (0..1024i64)
                .map(|i| client.submit(slow_leaf, (i, 5u64)))
                .collect();
            while level.len() > 1 {
                level = level
                    .chunks(2)
                    .map(|p| client.submit(plus, (&p[0], &p[1])))
                    .collect();
            }
            let total = level.pop().expect("root");
            if kill {
                std::thread::sleep(Duration::from_millis(300));
                drop(nodes.remove(0));
            }
            let got = rdask::block_on(total.result()).map_err(|e| {
                eprintln!(
                    "run {} failed after {:?} (client re-attached {} times): {e}",
                    if kill {
                        "with the owner killed"
                    } else {
                        "without failure"
                    },
                    start.elapsed(),
                    client.reattached()
                );
                e
            })?;
            assert_eq!(got, (1..=1024i64).sum::<i64>());
            let secs = start.elapsed().as_secs_f64();
            if kill {
                assert_eq!(client.reattached(), 1);
                killed.push(secs);
            } else {
                plain.push(secs);
            }
            drop(client);
            drop(nodes);
        }
    }
    let (p, k) = (spread(plain), spread(killed));
    println!(
        "{n} nodes  2,047-task graph, no failure             {:>8.3} s  ({:.3} – {:.3})",
        p.median, p.min, p.max
    );
    println!(
        "{n} nodes  same, owner SIGKILLed 300 ms in          {:>8.3} s  ({:.3} – {:.3}); ratio {:.2}, {:.3} s lost",
        k.median,
        k.min,
        k.max,
        k.median / p.median,
        k.median - p.median
    );
    Ok(())
}
