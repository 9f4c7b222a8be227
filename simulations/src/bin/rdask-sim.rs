//! The seed runner: `rdask-sim [--seeds N] [--from S] [--seed S]`.
//!
//! Runs the simulation scenarios over many seeds, prints a summary, and for a failing seed
//! prints the command that replays it.

use rdask_sim::{SimConfig, node_graphs};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "usage: rdask-sim [--seeds N (default 1000)] [--from FIRST_SEED] [--seed ONE_SEED]"
        );
        return;
    }
    let (from, count) = match get("--seed") {
        Some(s) => (s, 1),
        None => (get("--from").unwrap_or(0), get("--seeds").unwrap_or(1000)),
    };
    let cfg = SimConfig::default();
    let mut failed = 0;
    let (mut tasks, mut errors, mut partial, mut cancelled) = (0, 0, 0, 0);
    for seed in from..from + count {
        let r = node_graphs(seed, &cfg);
        tasks += r.tasks_run;
        errors += r.errors;
        partial += r.partial_gathers;
        cancelled += r.not_run;
        if count == 1 {
            println!("{r:#?}");
        }
        if !r.violations.is_empty() {
            failed += 1;
            eprintln!("seed {seed} FAILED: {:?}", r.violations);
            eprintln!("  replay: cargo run -p rdask-sim --bin rdask-sim -- --seed {seed}");
        }
    }
    println!(
        "node-graphs: {count} seeds from {from}: {} passed, {failed} failed; tasks run {tasks}, \
         error results {errors}, partial gathers {partial}, tasks not run {cancelled}",
        count - failed
    );
    if failed > 0 {
        std::process::exit(1);
    }
}
