//! `core-cost`: the node core's own cost per task, with no threads, network or clock — a
//! figure that machine noise does not move when counted in instructions:
//!
//! ```text
//! cargo build --release -p rdask-benches --bin core-cost
//! valgrind --tool=callgrind --toggle-collect='core_cost::drive' \
//!     --callgrind-out-file=/dev/null target/release/core-cost 20000
//! # instructions per task = collected / 40000   (two graphs of 20,000 tasks)
//! ```
//!
//! It drives one `NodeCore` through what a node does for `n` independent tiny tasks
//! submitted as one graph (submit, dispatch, run, complete, gather, release), then for a
//! chain of `n` dependent tasks, calling the task functions on this thread. The graphs are
//! built before, outside `drive`: only the core's work (and the calls of `inc`) is counted.
//! Without an argument it also prints the wall time per task.

use std::time::Instant;

use rdask::builtins::inc;
use rdask_actors::protocol::{ClientResponse, GraphSubmission, KeyResult};
use rdask_actors::{NodeCore, RequestId, TaskDone};
use rdask_graph::{Arg, GraphId, Key, Registry, TaskSpec, value};

fn run_all(core: &mut NodeCore) -> usize {
    let mut ran = 0;
    loop {
        let jobs = core.take_jobs();
        if jobs.is_empty() {
            return ran;
        }
        for j in jobs {
            let result = j.entry.call(&j.args);
            core.handle_task_done(TaskDone {
                task: j.task,
                result,
                elapsed_ns: 1_000,
            });
            ran += 1;
        }
    }
}

fn graph(id: u128, n: usize, chained: bool) -> (GraphSubmission, Vec<Key>) {
    let name = inc.name();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let key = Key::with_hash(if chained { "chain" } else { "inc" }, i as u64);
        let arg = if chained && i > 0 {
            Arg::Key(
                tasks
                    .last()
                    .map(|t: &TaskSpec| t.key.clone())
                    .expect("previous"),
            )
        } else {
            Arg::Value(value::encode(&(i as i64)).expect("encode"))
        };
        tasks.push(TaskSpec::new(key, name, vec![arg]));
    }
    let keep: Vec<Key> = if chained {
        tasks
            .last()
            .map(|t| vec![t.key.clone()])
            .unwrap_or_default()
    } else {
        tasks.iter().map(|t| t.key.clone()).collect()
    };
    (
        GraphSubmission {
            id: GraphId(id),
            tasks,
            keep: keep.clone(),
        },
        keep,
    )
}

/// Everything the core does for one graph, from submission to release (what callgrind
/// counts with `--toggle-collect='core_cost::drive'`).
#[inline(never)]
fn drive(core: &mut NodeCore, g: GraphSubmission, keep: Vec<Key>) {
    let n = g.tasks.len();
    core.handle_submit(RequestId(1), vec![g]);
    let ran = run_all(core);
    assert_eq!(ran, n);
    core.handle_gather(RequestId(2), keep.clone(), 0);
    let replies = core.take_replies();
    match replies.last() {
        Some((_, ClientResponse::Results(r))) => {
            assert!(r.iter().all(|r| matches!(r, KeyResult::Value(_))));
        }
        other => panic!("no results: {other:?}"),
    }
    core.handle_release(RequestId(3), keep);
    core.take_replies();
}

/// The allocator of the stock `rdask-node` (see BENCHMARKS.md for the figure with glibc's).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("a number of tasks"))
        .unwrap_or(100_000);
    let timed = std::env::args().nth(1).is_none();
    let mut core = NodeCore::new("bench-node", Registry::global(), 2);
    let (independent, keep_a) = graph(1 << 64 | 1, n, false);
    let (chain, keep_b) = graph(1 << 64 | 2, n, true);
    let start = Instant::now();
    if n > 0 {
        drive(&mut core, independent, keep_a);
        drive(&mut core, chain, keep_b);
    }
    if timed {
        let per = start.elapsed().as_secs_f64() * 1e9 / (2 * n.max(1)) as f64;
        println!(
            "{n} independent tasks, then a chain of {n}: {per:.0} ns per task in the core (with the calls of inc)"
        );
    }
}
