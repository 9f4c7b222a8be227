//! Micro-benchmarks of the hot path (criterion):
//!
//! ```text
//! cargo bench -p rdask-benches --bench hot_path
//! ```
//!
//! - `codec`: a batch of 1,000 `Done` messages between nodes, written and read back;
//! - `graph`: validating and ordering a graph of 10,000 tasks (a map and a reduction);
//! - `core`: the node core's work for 1,000 tiny tasks submitted as one graph (submit,
//!   dispatch, call, complete, gather, release), on one thread;
//! - `gossip`: merging the member records and loads of 100 nodes into a state.

// criterion_group! makes a public function without documentation.
#![allow(missing_docs)]

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use rdask::builtins::inc;
use rdask_actors::protocol::{ClientResponse, GraphSubmission, LoadHint, PeerBatch, PeerMsg};
use rdask_actors::{NodeCore, RequestId, TaskDone};
use rdask_gossip::{ClusterState, LoadSummary, MemberInfo, NodeId};
use rdask_graph::{Arg, Graph, GraphId, Key, Registry, TaskSpec, value};

fn codec(c: &mut Criterion) {
    let batch = PeerBatch {
        load: LoadHint {
            queued: 3,
            running: 2,
            nthreads: 2,
            paused: false,
        },
        msgs: (0..1_000u64)
            .map(|i| PeerMsg::Done {
                key: Key::with_hash("inc", i),
                size: 9,
                error: None,
                elapsed_ns: 1_500,
                hops: 0,
            })
            .collect(),
    };
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1_000));
    g.bench_function("peer batch of 1,000 Done, write + read", |b| {
        b.iter(|| {
            futures::executor::block_on(async {
                let mut buf = futures::io::Cursor::new(Vec::with_capacity(64 * 1024));
                rdask_node::codec::write_peer_batch(&mut buf, batch.clone(), 1 << 26, 1 << 30)
                    .await
                    .expect("write");
                buf.set_position(0);
                rdask_node::codec::read_peer_batch(&mut buf, 1 << 26, 1 << 30)
                    .await
                    .expect("read")
            })
        })
    });
    g.finish();
}

/// A map of `n / 2` tasks and a chain that adds them up.
fn specs(n: usize, salt: u64) -> Vec<TaskSpec> {
    let name = inc.name();
    let add = rdask::builtins::add.name();
    let half = n / 2;
    let mut out: Vec<TaskSpec> = (0..half)
        .map(|i| {
            TaskSpec::new(
                Key::with_hash("inc", salt ^ i as u64),
                name,
                vec![Arg::Value(value::encode(&(i as i64)).expect("encode"))],
            )
        })
        .collect();
    for i in 1..half {
        let prev = if i == 1 {
            out[0].key.clone()
        } else {
            out.last().expect("previous").key.clone()
        };
        out.push(TaskSpec::new(
            Key::with_hash("add", salt ^ i as u64),
            add,
            vec![Arg::Key(prev), Arg::Key(out[i].key.clone())],
        ));
    }
    out
}

fn graph(c: &mut Criterion) {
    let registry = Registry::global();
    let tasks = specs(10_000, 1);
    let mut g = c.benchmark_group("graph");
    g.throughput(Throughput::Elements(tasks.len() as u64));
    g.bench_function("validate and order 10,000 tasks", |b| {
        b.iter_batched(
            || tasks.clone(),
            |t| {
                Graph::new(t)
                    .validate(|_| false, |f| registry.contains(f))
                    .expect("valid")
                    .into_tasks()
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn core(c: &mut Criterion) {
    let mut g = c.benchmark_group("core");
    g.throughput(Throughput::Elements(1_000));
    let mut core = NodeCore::new("bench-node", Registry::global(), 2);
    let mut round = 0u64;
    g.bench_function("1,000 tiny tasks: submit to release", |b| {
        b.iter(|| {
            round += 1;
            let tasks: Vec<TaskSpec> = (0..1_000u64)
                .map(|i| {
                    TaskSpec::new(
                        Key::with_hash("inc", round << 20 | i),
                        inc.name(),
                        vec![Arg::Value(value::encode(&(i as i64)).expect("encode"))],
                    )
                })
                .collect();
            let keep: Vec<Key> = tasks.iter().map(|t| t.key.clone()).collect();
            core.handle_submit(
                RequestId(1),
                vec![GraphSubmission {
                    id: GraphId(1 << 64 | u128::from(round)),
                    tasks,
                    keep: keep.clone(),
                }],
            );
            loop {
                let jobs = core.take_jobs();
                if jobs.is_empty() {
                    break;
                }
                for j in jobs {
                    let result = j.entry.call(&j.args);
                    core.handle_task_done(TaskDone {
                        task: j.task,
                        result,
                        elapsed_ns: 1_000,
                    });
                }
            }
            core.handle_gather(RequestId(2), keep.clone(), 0);
            let replies = core.take_replies();
            assert!(matches!(
                replies.last(),
                Some((_, ClientResponse::Results(_)))
            ));
            core.handle_release(RequestId(3), keep);
            core.take_replies();
        })
    });
    g.finish();
}

fn member(i: u32) -> MemberInfo {
    MemberInfo {
        id: NodeId(format!("node-{i}").into()),
        addresses: vec![format!("/ip4/10.0.0.{}/tcp/4001", i % 250)],
        nthreads: 8,
        memory_bytes: 1 << 34,
        memory_limit: 0,
        data_port: 0,
        name: String::new(),
        functions_digest: 7,
        functions: 11,
        version: "0.1.0".into(),
        protocol: rdask_gossip::PROTOCOL_VERSION,
        resources: Vec::new(),
        dashboard: String::new(),
    }
}

fn gossip(c: &mut Criterion) {
    // A delta holding 100 members' records and loads, as anti-entropy brings them.
    let mut source = ClusterState::new(member(0), 1);
    for i in 1..100 {
        let mut other = ClusterState::new(member(i), 1);
        other.set_load(LoadSummary {
            queued: u64::from(i),
            running: 2,
            stored: 10,
            memory_used: 1 << 20,
            paused: false,
        });
        source.merge(other.entries_of(&[NodeId(format!("node-{i}").into())]), 0);
    }
    let fresh = ClusterState::new(member(500), 1);
    let limits = rdask_gossip::Limits {
        members: 1_000,
        ..Default::default()
    };
    let delta = source
        .sync_for(&fresh.digest(), limits)
        .0
        .expect("the fresh node lacks everything")
        .delta;
    let mut g = c.benchmark_group("gossip");
    g.throughput(Throughput::Elements(100));
    g.bench_function("merge 100 members' records and loads", |b| {
        b.iter_batched(
            || (ClusterState::new(member(500), 1), delta.clone()),
            |(mut state, delta)| {
                state.merge(delta, 0);
                state.hash()
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, codec, graph, core, gossip);
criterion_main!(benches);
