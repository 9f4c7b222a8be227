//! Membership under the simulated network. CI runs a few seeds per scenario; set
//! `RDASK_SIM_SEEDS` for more.

use rdask_sim::run_membership;

fn seeds() -> u64 {
    std::env::var("RDASK_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(25, |n: u64| n / 20 + 1)
}

fn check(scenario: &'static str, n: usize) {
    for seed in 0..seeds() {
        let r = run_membership(scenario, seed, n);
        assert!(
            r.violations.is_empty(),
            "{scenario} seed {seed} with {n} nodes: {:?}\nreplay: cargo run -p rdask-sim --bin rdask-sim -- --scenario {scenario} --seed {seed} --nodes {n}",
            r.violations
        );
    }
}

#[test]
fn a_join_through_one_seed_converges() {
    check("join", 8);
}

#[test]
fn a_crashed_node_is_declared_dead_by_every_live_member() {
    check("crash", 8);
}

#[test]
fn no_live_node_is_declared_dead_at_one_percent_loss() {
    check("loss", 8);
}

#[test]
fn a_partition_that_heals_converges() {
    check("partition", 8);
}

#[test]
fn a_restarted_node_rejoins() {
    check("restart", 6);
}

#[test]
fn the_cluster_converges_after_chaos() {
    check("membership-chaos", 8);
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    for scenario in ["crash", "membership-chaos"] {
        let a = run_membership(scenario, 7, 8);
        let b = run_membership(scenario, 7, 8);
        assert_eq!(a, b);
        assert_ne!(a.trace_hash, run_membership(scenario, 8, 8).trace_hash);
    }
}
