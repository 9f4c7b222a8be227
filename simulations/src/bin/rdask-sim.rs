//! The seed runner.
//!
//! ```text
//! rdask-sim [--scenario NAME] [--seed S] [--seeds N] [--nodes N] [--max-nodes N] [--show-slow]
//! ```
//!
//! Runs a scenario for one seed (or `--seeds N` seeds from `--seed`), prints a summary and,
//! last, a line `trace <hex>` hashing every event of the runs: the same arguments always
//! give the same hash. A broken invariant prints the steps and the command that replays it,
//! and exits non-zero. Scenarios: `node-graphs` (one node's task state machine) and the
//! membership scenarios `join`, `crash`, `loss`, `partition`, `restart`,
//! `membership-chaos` (the default). `graphs-chaos` also reports the longest makespan and
//! how many runs took over a virtual minute; `--show-slow` lists those runs (a run over
//! 100 virtual s is a stall, and fails; so is a cluster that goes on messaging, or keeps
//! accounts memory it does not hold, once its graphs are done). The replay command names every
//! option that shapes the run (`--max-nodes`, `--nodes`).

use rdask_sim::{
    SCENARIOS, SHAPES, SimConfig, graphs_chaos, graphs_chaos_between, node_graphs, run_membership,
    steal_efficiency,
};

fn usage() -> String {
    format!(
        "usage: rdask-sim [--scenario NAME] [--seed S (default 0)] [--seeds N (default 1)] [--nodes N (default 8)]\n\
         \x20      [--max-nodes N (graphs-chaos: clusters of 3..=N nodes)] [--show-slow (graphs-chaos: list runs over a virtual minute)]\n\
         scenarios: graphs-chaos, steal-efficiency, node-graphs, {} (default membership-chaos)",
        SCENARIOS.join(", ")
    )
}

fn quantiles(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{}", usage());
        return;
    }
    let get = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(String::as_str)
    };
    let num = |flag: &str, default: u64| match get(flag) {
        None => default,
        Some(v) => v.parse().unwrap_or_else(|_| {
            eprintln!("{flag} takes a number\n{}", usage());
            std::process::exit(2)
        }),
    };
    let scenario = get("--scenario").unwrap_or("membership-chaos");
    let from = num("--seed", 0);
    let count = num("--seeds", 1);
    let nodes = num("--nodes", 8).max(2) as usize;
    let mut trace: u64 = 0;
    let mut failed = 0u64;

    if scenario == "graphs-chaos" {
        let fixed = get("--nodes").map(|_| nodes);
        let max_nodes = get("--max-nodes").map(|_| num("--max-nodes", 32) as usize);
        // The command that replays one seed: every option that shapes a run (`--max-nodes`
        // draws the cluster's size from 3..=N, and wins over `--nodes`).
        let replay = |seed: u64| {
            let shape = match (max_nodes, fixed) {
                (Some(m), _) => format!(" --max-nodes {m}"),
                (None, Some(n)) => format!(" --nodes {n}"),
                (None, None) => String::new(),
            };
            format!(
                "cargo run --release -p rdask-sim --bin rdask-sim -- --scenario graphs-chaos --seed {seed}{shape}"
            )
        };
        let started = std::time::Instant::now();
        let mut sums = [0u64; 28];
        let mut largest_state_msg = 0u64;
        // The longest makespan and its seed, and how many runs took over a minute: a
        // graph that completes only after a long stall passes the checks, but shows here.
        let mut slowest = (0u64, from);
        // The longest a cluster took to fall silent once settled, and its seed.
        let mut settle = (0u64, from);
        let mut over_a_minute = 0u64;
        let show_slow = args.iter().any(|a| a == "--show-slow");
        for seed in from..from + count {
            let run = std::panic::catch_unwind(|| match max_nodes {
                Some(m) => graphs_chaos_between(seed, 3, m),
                None => graphs_chaos(seed, fixed),
            });
            let r = match run {
                Ok(r) => r,
                Err(_) => {
                    failed += 1;
                    eprintln!(
                        "graphs-chaos seed {seed} PANICKED\n  replay: {}",
                        replay(seed)
                    );
                    continue;
                }
            };
            trace = trace.rotate_left(5) ^ r.trace_hash;
            if r.makespan_us > slowest.0 {
                slowest = (r.makespan_us, seed);
            }
            if r.settle_us > settle.0 {
                settle = (r.settle_us, seed);
            }
            if r.makespan_us > 60_000_000 {
                over_a_minute += 1;
                if show_slow {
                    eprintln!(
                        "graphs-chaos seed {seed} ({} nodes): makespan {:.1} virtual s; crashes {}, partitions {}, leaves {}, steals {}, pauses {}, batches lost {}",
                        r.nodes,
                        r.makespan_us as f64 / 1e6,
                        r.stats.crashes,
                        r.stats.partitions,
                        r.stats.leaves,
                        r.stats.stolen,
                        r.stats.pauses,
                        r.lost
                    );
                }
            }
            for (s, v) in sums.iter_mut().zip([
                r.tasks_run,
                r.tasks_remote,
                r.errors,
                r.stats.placed_remote,
                r.stats.stolen,
                r.stats.fetched,
                r.stats.retries,
                r.lost,
                r.duplicated,
                r.stats.crashes,
                r.stats.replaced,
                r.stats.recomputed,
                r.stats.reruns,
                r.stats.takeovers,
                r.stats.adopted,
                r.stats.orphans_dropped,
                r.stats.reattached,
                r.stats.resubmitted,
                r.stats.partitions,
                r.stats.suspicions_refuted,
                r.stats.peers_back,
                r.stats.stepped_down,
                r.stats.no_quorum,
                r.stats.pauses,
                r.stats.closed,
                r.stats.sessions_ended,
                r.stats.sessions_refused,
                r.stats.published,
            ]) {
                *s += v;
            }
            largest_state_msg = largest_state_msg.max(r.stats.largest_state_msg);
            if count == 1 {
                println!(
                    "seed {seed}: {} nodes, {} tasks ({} away from their owner), makespan {:.3} virtual s",
                    r.nodes,
                    r.tasks_run,
                    r.tasks_remote,
                    r.makespan_us as f64 / 1e6
                );
            }
            if !r.violations.is_empty() {
                failed += 1;
                eprintln!(
                    "graphs-chaos seed {seed} ({} nodes) FAILED: {:?}",
                    r.nodes, r.violations
                );
                eprintln!("  replay: {}", replay(seed));
            }
        }
        println!(
            "graphs-chaos: {count} seeds from {from}: {} passed, {failed} failed in {:.1} s; tasks run {}, \
             away from their owner {}, error results {}; placed remote {}, stolen {}, fetched {}, \
             retried {}; batches lost {}, duplicated {}; nodes crashed {}: tasks placed again {}, \
             results computed again {}, tasks run again {}\n  recovery paths: steals {}, owner \
             take-overs {} (tasks adopted from members {}), clients re-attached {}, graphs \
             submitted again by their client {}, dead owners' leftovers dropped {}, results \
             recomputed {}\n  partitions {}: suspicions refuted {}, peers back after a heal {}, \
             stale owners stepped down {}, take-overs put off for want of a quorum {}\n  \
             nodes paused for memory {}\n  sessions: closed by their clients {}, ended at \
             their owners {}, take-overs of ended sessions refused {}, datasets published {}; \
             largest anti-entropy message of the tables {largest_state_msg} bytes\n  \
             makespan: longest {:.1} virtual s (seed {}), {over_a_minute} runs over a minute\n  \
             quiet after the last graph and fault within {:.1} virtual s (seed {})",
            count - failed,
            started.elapsed().as_secs_f64(),
            sums[0],
            sums[1],
            sums[2],
            sums[3],
            sums[4],
            sums[5],
            sums[6],
            sums[7],
            sums[8],
            sums[9],
            sums[10],
            sums[11],
            sums[12],
            sums[4],
            sums[13],
            sums[14],
            sums[16],
            sums[17],
            sums[15],
            sums[11],
            sums[18],
            sums[19],
            sums[20],
            sums[21],
            sums[22],
            sums[23],
            sums[24],
            sums[25],
            sums[26],
            sums[27],
            slowest.0 as f64 / 1e6,
            slowest.1,
            settle.0 as f64 / 1e6,
            settle.1
        );
    } else if scenario == "steal-efficiency" {
        let ps: Vec<usize> = match get("--nodes") {
            Some(_) => vec![nodes],
            None => vec![2, 4, 8, 16, 32, 64, 128, 256],
        };
        let per = count.max(1);
        println!(
            "makespan / max(T1/P, T_inf), {per} seeds per cell: median (p99) rdask | oracle central scheduler"
        );
        print!("{:>5}", "P");
        for s in SHAPES {
            print!(" {:>26}", format!("{s:?}"));
        }
        println!();
        let mut all = Vec::new();
        for &p in &ps {
            print!("{p:>5}");
            for shape in SHAPES {
                let mut r = Vec::new();
                let mut o = Vec::new();
                for seed in from..from + per {
                    let e = steal_efficiency(seed, p, shape);
                    if !e.violations.is_empty() {
                        failed += 1;
                        eprintln!(
                            "steal-efficiency seed {seed} P={p} {shape:?} FAILED: {:?}\n  replay: \
                             cargo run --release -p rdask-sim --bin rdask-sim -- --scenario \
                             steal-efficiency --seed {seed} --nodes {p}",
                            e.violations
                        );
                    }
                    trace = trace.rotate_left(5) ^ e.ratio.to_bits();
                    r.push(e.ratio);
                    o.push(e.oracle);
                }
                all.extend(r.iter().copied());
                let (m, p99) = quantiles(&mut r);
                let (om, _) = quantiles(&mut o);
                print!(" {:>26}", format!("{m:.2} ({p99:.2}) | {om:.2}"));
            }
            println!();
        }
        let (m, p99) = quantiles(&mut all);
        println!("all cells: median {m:.3}, p99 {p99:.3}");
    } else if scenario == "node-graphs" {
        let cfg = SimConfig::default();
        let (mut tasks, mut errors, mut partial, mut not_run) = (0, 0, 0, 0);
        for seed in from..from + count {
            let r = node_graphs(seed, &cfg);
            trace = trace.rotate_left(5) ^ r.trace_hash;
            tasks += r.tasks_run;
            errors += r.errors;
            partial += r.partial_gathers;
            not_run += r.not_run;
            if !r.violations.is_empty() {
                failed += 1;
                eprintln!("seed {seed} FAILED: {:?}", r.violations);
                eprintln!(
                    "  replay: cargo run -p rdask-sim --bin rdask-sim -- --scenario node-graphs --seed {seed}"
                );
            }
        }
        println!(
            "node-graphs: {count} seeds from {from}: {} passed, {failed} failed; tasks run {tasks}, \
             error results {errors}, partial gathers {partial}, tasks not run {not_run}",
            count - failed
        );
    } else {
        let Some(&name) = SCENARIOS.iter().find(|s| **s == scenario) else {
            eprintln!("unknown scenario `{scenario}`\n{}", usage());
            std::process::exit(2)
        };
        let started = std::time::Instant::now();
        let mut virtual_s = 0.0;
        for seed in from..from + count {
            let r = run_membership(name, seed, nodes);
            trace = trace.rotate_left(5) ^ r.trace_hash;
            virtual_s += r.virtual_s;
            if count == 1 {
                println!(
                    "{name}: seed {seed}, {nodes} nodes: join converged in {}, crash seen by all in {}, \
                     {} live nodes declared down, {} messages ({} bytes) in {:.1} virtual s",
                    r.join_converged_s
                        .map_or("-".into(), |s| format!("{s:.2} s")),
                    r.crash_detected_s
                        .map_or("-".into(), |s| format!("{s:.2} s")),
                    r.false_downs,
                    r.messages,
                    r.bytes,
                    r.virtual_s
                );
            }
            if !r.violations.is_empty() {
                failed += 1;
                eprintln!("{name} seed {seed} FAILED: {:?}", r.violations);
                eprintln!(
                    "  replay: cargo run -p rdask-sim --bin rdask-sim -- --scenario {name} --seed {seed} --nodes {nodes}"
                );
            }
        }
        let real = started.elapsed().as_secs_f64();
        println!(
            "{name}: {count} seeds from {from}, {nodes} nodes: {} passed, {failed} failed; \
             {virtual_s:.0} virtual s in {real:.2} real s ({:.0}x real time)",
            count - failed,
            virtual_s / real.max(1e-9)
        );
    }
    println!("trace {trace:016x}");
    if failed > 0 {
        std::process::exit(1);
    }
}
