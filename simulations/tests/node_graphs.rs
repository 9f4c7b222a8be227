//! Simulation tests of one node's state machine. CI runs a few hundred seeds; set
//! `RDASK_SIM_SEEDS` for more (`RDASK_SIM_SEEDS=20000 cargo test -p rdask-sim --release`).

use rdask_sim::{SimConfig, node_graphs};

fn seeds() -> u64 {
    std::env::var("RDASK_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300)
}

#[test]
fn random_graphs_give_reference_results_and_leave_nothing_behind() {
    let cfg = SimConfig::default();
    let (mut tasks, mut errors, mut partial, mut cancelled) = (0, 0, 0, 0);
    for seed in 0..seeds() {
        let r = node_graphs(seed, &cfg);
        assert!(
            r.violations.is_empty(),
            "seed {seed}: {:?}\nreplay: cargo run -p rdask-sim --bin rdask-sim -- --scenario node-graphs --seed {seed}",
            r.violations
        );
        tasks += r.tasks_run;
        errors += r.errors;
        partial += r.partial_gathers;
        cancelled += r.not_run;
    }
    // every path was exercised
    assert!(
        tasks > 1000 && errors > 0 && partial > 0 && cancelled > 0,
        "{tasks} {errors} {partial} {cancelled}"
    );
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let cfg = SimConfig {
        graphs: 10,
        max_tasks: 100,
        ..SimConfig::default()
    };
    for seed in [1, 42, 4242] {
        assert_eq!(node_graphs(seed, &cfg), node_graphs(seed, &cfg));
    }
    assert_ne!(
        node_graphs(1, &cfg).trace_hash,
        node_graphs(2, &cfg).trace_hash
    );
}

#[test]
fn many_threads_and_no_failures_run_every_task_once() {
    let cfg = SimConfig {
        graphs: 4,
        max_tasks: 200,
        nthreads: 16,
        fail_rate: 0.0,
    };
    for seed in 0..20 {
        let r = node_graphs(seed, &cfg);
        assert!(r.violations.is_empty(), "seed {seed}: {:?}", r.violations);
        assert_eq!(r.errors, 0);
    }
}
