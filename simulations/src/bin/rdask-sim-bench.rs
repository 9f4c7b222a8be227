//! The membership simulation benchmark: how SWIM and the replicated state behave as the
//! cluster grows, in protocol periods of virtual time.
//!
//! ```text
//! cargo run --release -p rdask-sim --bin rdask-sim-bench            # N = 10, 100, 1000
//! cargo run --release -p rdask-sim --bin rdask-sim-bench -- 10 100  # chosen sizes
//! ```

use std::time::Instant;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rdask_sim::membership::{Cluster, NetConfig, Op};

struct Row {
    n: usize,
    join_periods: f64,
    leave_periods: f64,
    first_probe_periods: f64,
    first_detection_periods: f64,
    all_detection_periods: f64,
    fp_1: f64,
    fp_5: f64,
    bytes_per_node_period: f64,
    speedup: f64,
}

/// Periods until `done` holds, checking every tenth of a period (at most `limit` periods).
fn periods_until(c: &mut Cluster, period: u64, limit: u64, done: impl Fn(&Cluster) -> bool) -> f64 {
    let start = c.now();
    while c.now() - start < limit * period {
        if done(c) {
            break;
        }
        c.run_until(c.now() + period / 10);
    }
    (c.now() - start) as f64 / period as f64
}

fn measure(n: usize, seed: u64) -> Row {
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut c = Cluster::new(seed, n, NetConfig::default());
    let period = c.config().probe_period.as_micros() as u64;
    // Form the cluster: each node joins through a random earlier one.
    c.apply(&Op::Start(0));
    for i in 1..n {
        c.apply(&Op::Start(i));
        let via = rng.random_range(0..i);
        c.apply(&Op::Join(i, via));
        if i % 50 == 0 {
            c.run_until(c.now() + period / 10);
        }
    }
    periods_until(&mut c, period, 400, |c| c.converged());

    // Steady state: bytes per node per period.
    let (b0, t0) = (c.bytes, c.now());
    c.apply(&Op::Wait(20 * period));
    let bytes_per_node_period =
        (c.bytes - b0) as f64 / n as f64 / ((c.now() - t0) as f64 / period as f64);

    // Joins and leaves known to all (means over five newcomers).
    let (mut join_sum, mut leave_sum) = (0.0, 0.0);
    let samples = 5;
    for _ in 0..samples {
        let newcomer = c.add_node();
        c.apply(&Op::Start(newcomer));
        let via = loop {
            let v = rng.random_range(0..c.len());
            if c.running(v) && v != newcomer {
                break v;
            }
        };
        c.apply(&Op::Join(newcomer, via));
        join_sum += periods_until(&mut c, period, 400, |c| {
            (0..c.len())
                .filter(|&i| i != newcomer && c.running(i))
                .all(|i| c.sees(i, newcomer))
        });
        c.apply(&Op::Leave(newcomer));
        leave_sum += periods_until(&mut c, period, 400, |c| {
            (0..c.len())
                .filter(|&i| c.running(i))
                .all(|i| !c.sees(i, newcomer))
        });
    }
    let join_periods = join_sum / samples as f64;
    let leave_periods = leave_sum / samples as f64;

    // Crashes, one after the other: first failed probe (SWIM's detection), declared down by
    // someone, and known to all.
    let (mut first_probe, mut first_down, mut all_down) = (0.0, 0.0, 0.0);
    let crashes = 5;
    for _ in 0..crashes {
        let victim = loop {
            let v = rng.random_range(1..c.len());
            if c.running(v) {
                break v;
            }
        };
        let crash_at = c.now();
        c.suspected.remove(&victim);
        c.apply(&Op::Crash(victim));
        all_down += periods_until(&mut c, period, 2 * n as u64 + 400, |c| {
            (0..c.len())
                .filter(|&i| c.running(i))
                .all(|i| !c.sees(i, victim))
        });
        let first = (0..c.len())
            .filter_map(|i| c.downs.get(&(i, victim)))
            .min()
            .copied()
            .unwrap_or(c.now());
        first_down += first.saturating_sub(crash_at) as f64 / period as f64;
        first_probe += c
            .suspected
            .get(&victim)
            .map_or(0.0, |t| t.saturating_sub(crash_at) as f64 / period as f64);
    }
    let first_probe_periods = first_probe / crashes as f64;
    let first_detection_periods = first_down / crashes as f64;
    let all_detection_periods = all_down / crashes as f64;

    // False positives at 1% and 5% loss.
    let mut fp = |loss: f64| {
        let before = c.false_downs;
        c.apply(&Op::Loss(loss));
        let periods = 50;
        c.apply(&Op::Wait(periods * period));
        c.apply(&Op::Loss(0.0));
        let running = (0..c.len()).filter(|&i| c.running(i)).count() as f64;
        (c.false_downs - before) as f64 * 1000.0 / (running * periods as f64)
    };
    let fp_1 = fp(0.01);
    let fp_5 = fp(0.05);
    let speedup = c.now() as f64 / 1e6 / started.elapsed().as_secs_f64();
    Row {
        n,
        join_periods,
        leave_periods,
        first_probe_periods,
        first_detection_periods,
        all_detection_periods,
        fp_1,
        fp_5,
        bytes_per_node_period,
        speedup,
    }
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10, 100, 1000]
    } else {
        sizes
    };
    println!(
        "{:>6} {:>9} {:>7} {:>10} {:>12} {:>11} {:>10} {:>8} {:>8} {:>14} {:>9}",
        "nodes",
        "join→all",
        "/ ln N",
        "leave→all",
        "crash:probe",
        "crash:down",
        "crash:all",
        "FP‰ 1%",
        "FP‰ 5%",
        "B/node/period",
        "sim/real"
    );
    for n in sizes {
        let r = measure(n, 42);
        let ln = (r.n as f64).ln();
        println!(
            "{:>6} {:>9.1} {:>7.2} {:>10.1} {:>12.2} {:>11.1} {:>10.1} {:>8.2} {:>8.2} {:>14.0} {:>8.0}x",
            r.n,
            r.join_periods,
            r.join_periods / ln,
            r.leave_periods,
            r.first_probe_periods,
            r.first_detection_periods,
            r.all_detection_periods,
            r.fp_1,
            r.fp_5,
            r.bytes_per_node_period,
            r.speedup
        );
    }
    println!(
        "periods are protocol periods (1 s of virtual time), means over 5 joins, leaves and crashes; crash:probe = first \
         failed probe of the dead node (SWIM's detection), crash:down = first node to declare it \
         down (after the suspicion timeout), crash:all = every node; FP‰: live nodes declared down \
         per 1,000 node-periods"
    );
}
