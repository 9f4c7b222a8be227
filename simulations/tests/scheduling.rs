//! Simulation tests of scheduling without a scheduler: many nodes, one production core
//! each, a network that loses, duplicates and reorders, nodes that die (owners included).
//! CI runs a few hundred seeds; set `RDASK_SIM_SEEDS` for more
//! (`RDASK_SIM_SEEDS=20000 cargo test --release -p rdask-sim --test scheduling`), or use
//! the seed runner:
//! `cargo run --release -p rdask-sim --bin rdask-sim -- --scenario graphs-chaos --seeds 5000`.

use rdask_sim::{Shape, graphs_chaos, graphs_chaos_between, steal_efficiency};

fn seeds(ci: u64) -> u64 {
    std::env::var("RDASK_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(ci)
}

#[test]
fn owners_die_and_every_graph_still_completes_with_reference_results() {
    // 3 to 32 nodes; any node may die, the owners of graphs and their backups included.
    let mut sums = [0u64; 12];
    let n = seeds(500);
    for seed in 0..n {
        let r = graphs_chaos_between(seed + 1_000_000, 3, 32);
        assert!(
            r.violations.is_empty(),
            "seed {} ({} nodes): {:?}\nreplay: cargo run --release -p rdask-sim --bin rdask-sim -- \
             --scenario graphs-chaos --seed {} --max-nodes 32",
            seed + 1_000_000,
            r.nodes,
            r.violations,
            seed + 1_000_000
        );
        for (s, v) in sums.iter_mut().zip([
            r.stats.stolen,
            r.stats.takeovers,
            r.stats.adopted,
            r.stats.reattached,
            r.stats.recomputed,
            r.stats.replaced,
            r.stats.crashes,
            r.stats.partitions,
            r.stats.suspicions_refuted,
            r.stats.peers_back,
            r.stats.stepped_down,
            r.stats.pauses,
        ]) {
            *s += v;
        }
    }
    println!(
        "{n} seeds, recovery paths exercised: steals {}, owner take-overs {}, tasks adopted \
         from members {}, clients re-attached {}, results recomputed {}, tasks placed again \
         {}, nodes crashed {}, partitions {}, suspicions refuted {}, peers back after a heal \
         {}, stale owners stepped down {}, nodes paused for memory {}",
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
        sums[11]
    );
    assert!(
        sums.iter().all(|&s| s > 0),
        "a recovery path never ran: {sums:?}"
    );
}

#[test]
fn random_graphs_on_a_lossy_cluster_that_loses_nodes_give_reference_results() {
    let mut sums = [0u64; 9];
    let mut biggest = 0;
    for seed in 0..seeds(200) {
        let r = graphs_chaos(seed, None);
        assert!(
            r.violations.is_empty(),
            "seed {seed} ({} nodes): {:?}\nreplay: cargo run --release -p rdask-sim --bin rdask-sim -- \
             --scenario graphs-chaos --seed {seed}",
            r.nodes,
            r.violations
        );
        biggest = biggest.max(r.nodes);
        for (s, v) in sums.iter_mut().zip([
            r.tasks_remote,
            r.stats.stolen,
            r.stats.fetched,
            r.stats.retries,
            r.lost,
            r.errors,
            r.stats.crashes,
            r.stats.replaced,
            r.stats.recomputed,
        ]) {
            *s += v;
        }
    }
    // Every path was exercised: remote placement, stealing, fetching, retries after loss,
    // errors crossing nodes, nodes dying (their tasks placed again, their results computed
    // again from lineage); and large clusters were drawn.
    assert!(sums.iter().all(|&s| s > 0), "{sums:?}");
    assert!(biggest > 40, "largest cluster drawn: {biggest}");
}

#[test]
fn the_same_seed_gives_the_same_run() {
    for seed in [3, 77] {
        assert_eq!(graphs_chaos(seed, Some(12)), graphs_chaos(seed, Some(12)));
    }
    assert_ne!(
        graphs_chaos(1, Some(12)).trace_hash,
        graphs_chaos(2, Some(12)).trace_hash
    );
}

#[test]
fn a_large_cluster_runs_graphs_submitted_to_many_entry_nodes() {
    let r = graphs_chaos(11, Some(200));
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    assert!(r.tasks_remote > 0);
}

#[test]
fn idle_nodes_steal_work_submitted_to_one_node() {
    for shape in [Shape::Map, Shape::Random] {
        let e = steal_efficiency(1, 8, shape);
        assert!(e.violations.is_empty(), "{:?}", e.violations);
        assert!(e.stolen > 0, "{shape:?}: nothing was stolen");
        // Virtual time: deterministic. Within half of the ideal, and close to a central
        // scheduler that knows everything.
        assert!(e.ratio < 1.5, "{shape:?}: {e:?}");
        assert!(e.ratio < e.oracle * 1.3, "{shape:?}: {e:?}");
    }
}
