//! `rdask-bench --compare`: the workloads of the side-by-side comparison with Dask
//! (`benches/compare/compare.py` runs both and prints the table), as JSON lines:
//! `{"setting": …, "workload": …, "unit": …, "values": […]}`.
//!
//! Settings, with the same threads as the Dask side:
//! - `local`: the in-process cluster, 2 task threads (Dask: `LocalCluster(processes=False,
//!   n_workers=1, threads_per_worker=2)`);
//! - `network`: one node process of 2 threads, the client in this process (Dask: one worker
//!   process of 2 threads);
//! - `cluster`: 4 node processes of 2 threads (Dask: 4 worker processes of 2 threads), for
//!   the sleep tasks; 2 of them for the transfer.

use std::time::Instant;

use rdask::Client;
use rdask::builtins::{add, inc, sleep_ms};

use crate::{Args, start_cluster, start_node};

/// One figure's values, as a JSON line.
fn emit(setting: &str, workload: &str, unit: &str, values: &[f64]) {
    let values: Vec<String> = values.iter().map(|v| format!("{v:.3}")).collect();
    println!(
        "{{\"setting\": \"{setting}\", \"workload\": \"{workload}\", \"unit\": \"{unit}\", \"values\": [{}]}}",
        values.join(", ")
    );
}

fn tiny(client: &Client, n: usize, repeats: usize) -> rdask::Result<Vec<f64>> {
    let mut out = Vec::new();
    for _ in 0..repeats {
        let start = Instant::now();
        let futs = client.map(inc, 0..n as i64);
        let values = rdask::block_on(client.gather(&futs))?;
        assert_eq!(values[n - 1], n as i64);
        out.push(n as f64 / start.elapsed().as_secs_f64());
    }
    Ok(out)
}

fn round_trips(client: &Client, n: usize) -> rdask::Result<Vec<f64>> {
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        let v = rdask::block_on(client.submit(inc, (i as i64,)).result())?;
        lat.push(start.elapsed().as_secs_f64() * 1e6);
        assert_eq!(v, i as i64 + 1);
    }
    Ok(lat)
}

fn chain(client: &Client, n: usize, repeats: usize) -> rdask::Result<Vec<f64>> {
    let mut out = Vec::new();
    for _ in 0..repeats {
        let start = Instant::now();
        let mut f = client.submit(inc, (0,));
        for _ in 1..n {
            f = client.submit(inc, (&f,));
        }
        assert_eq!(rdask::block_on(f.result())?, n as i64);
        out.push(start.elapsed().as_secs_f64() * 1e6 / n as f64);
    }
    Ok(out)
}

fn tree(client: &Client, leaves: usize, repeats: usize) -> rdask::Result<Vec<f64>> {
    let mut out = Vec::new();
    for _ in 0..repeats {
        let start = Instant::now();
        let mut level: Vec<_> = client.map(inc, 0..leaves as i64);
        while level.len() > 1 {
            level = level
                .chunks(2)
                .map(|p| client.submit(add, (&p[0], &p[1])))
                .collect();
        }
        let total = rdask::block_on(level[0].result())?;
        assert_eq!(total, (1..=leaves as i64).sum::<i64>());
        out.push(start.elapsed().as_secs_f64());
    }
    Ok(out)
}

/// The common workloads of one setting.
fn common(setting: &str, client: &Client, args: &Args) -> rdask::Result<()> {
    let r = args.repeats;
    let lat = round_trips(client, 1_000)?;
    emit(setting, "1,000 round trips", "µs", &lat);
    emit(
        setting,
        "20,000 tiny tasks (map + gather)",
        "tasks/s",
        &tiny(client, 20_000, r)?,
    );
    emit(
        setting,
        "100,000 tiny tasks (map + gather)",
        "tasks/s",
        &tiny(client, 100_000, r)?,
    );
    emit(
        setting,
        "chain of 5,000, per hop",
        "µs",
        &chain(client, 5_000, r)?,
    );
    emit(
        setting,
        "tree reduction, 8,192 leaves",
        "s",
        &tree(client, 8_192, r)?,
    );
    Ok(())
}

/// Every rdask figure of the comparison.
pub(crate) fn run(args: &Args) -> rdask::Result<()> {
    // Local: the in-process cluster.
    let mut startup = Vec::new();
    for _ in 0..args.repeats {
        let start = Instant::now();
        let client = Client::local_with_threads(args.nthreads)?;
        rdask::block_on(client.submit(inc, (1,)).result())?;
        startup.push(start.elapsed().as_secs_f64() * 1e3);
    }
    emit("local", "startup to first result", "ms", &startup);
    {
        let client = Client::local_with_threads(args.nthreads)?;
        common("local", &client, args)?;
    }

    // Network: one node process.
    let mut startup = Vec::new();
    for _ in 0..args.repeats {
        let start = Instant::now();
        let (node, addr) = start_node(args.nthreads, None);
        let client = Client::connect(&addr)?;
        rdask::block_on(client.submit(inc, (1,)).result())?;
        startup.push(start.elapsed().as_secs_f64() * 1e3);
        drop(client);
        drop(node);
    }
    emit("network", "startup to first result", "ms", &startup);
    {
        let (_node, addr) = start_node(args.nthreads, None);
        let client = Client::connect(&addr)?;
        common("network", &client, args)?;
    }

    // Cluster: sleep tasks on 4 × 2 threads; 256 MiB between two nodes.
    let n = args.cluster.max(2);
    let (nodes, client) = start_cluster(n, args.nthreads)?;
    let slots = (n * args.nthreads) as f64;
    let ideal = args.sleeps as f64 * 0.050 / slots;
    let mut eff = Vec::new();
    for _ in 0..args.repeats.min(3) {
        let start = Instant::now();
        let futs = client.map(sleep_ms, std::iter::repeat_n(50u64, args.sleeps));
        rdask::block_on(client.gather(&futs))?;
        eff.push(ideal / start.elapsed().as_secs_f64());
    }
    emit(
        "cluster",
        &format!(
            "{} × 50 ms sleeps on {n} × {} threads, efficiency",
            args.sleeps, args.nthreads
        ),
        "ratio",
        &eff,
    );
    let rates = crate::transfer_rates(&client, args.mib, args.repeats.min(3), 0)?;
    emit(
        "cluster",
        &format!("{} MiB between two nodes", args.mib),
        "MB/s",
        &rates,
    );
    drop(nodes);
    Ok(())
}
