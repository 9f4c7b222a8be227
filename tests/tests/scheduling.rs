//! Scheduling across a real cluster: tasks submitted to one node run on its peers too.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdask::{Client, MemberState, NodeStatus};
use rdask_tests::{NodeProcess, where_am_i};

const NODE: &str = env!("CARGO_BIN_EXE_rdask-test-node");

/// Runs a test body with a deadline, so that a hang fails the test instead of CI.
fn bounded<T: Send + 'static>(secs: u64, body: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(body());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(v) => v,
        Err(_) => panic!("test did not finish within {secs} s"),
    }
}

fn alive(nodes: &[NodeStatus]) -> usize {
    nodes
        .iter()
        .filter(|n| n.state == MemberState::Alive)
        .count()
}

/// Waits (at most `secs` seconds) until the node at `addr` sees `n` live members.
fn wait_for_members(addr: &str, n: usize, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let client = Client::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    loop {
        let nodes = rdask::block_on(client.nodes()).expect("nodes");
        if alive(&nodes) == n {
            return;
        }
        if Instant::now() > deadline {
            panic!("{addr}: {n} live members not seen within {secs} s; last view: {nodes:#?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn tasks_submitted_to_one_node_run_across_the_cluster() {
    let first = NodeProcess::start(NODE, &["--nthreads", "2"]);
    let seed = first.multiaddr.clone();
    let mut nodes = vec![first];
    for _ in 0..3 {
        nodes.push(NodeProcess::start(
            NODE,
            &["--nthreads", "2", "--join", &seed],
        ));
    }
    let addrs: Vec<String> = nodes.iter().map(|n| n.multiaddr.clone()).collect();
    let pids: Vec<u32> = nodes.iter().map(|n| n.pid()).collect();

    let counts = bounded(120, move || {
        for a in &addrs {
            wait_for_members(a, 4, 30);
        }
        // The node loop hands the gossiped members to its core once a second.
        std::thread::sleep(Duration::from_millis(1_500));
        let client = Client::connect(&addrs[0]).expect("connect");
        let started = Instant::now();
        let futures = client.map(where_am_i, 0..2_000u64);
        let results = rdask::block_on(client.gather(&futures)).expect("gather");
        let elapsed = started.elapsed();
        assert_eq!(results.len(), 2_000);
        let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
        for (i, (x, pid)) in results.into_iter().enumerate() {
            assert_eq!(x, i as u64, "result {i} is another task's");
            *counts.entry(pid).or_default() += 1;
        }
        println!("2,000 tasks in {elapsed:?}; tasks per process: {counts:?}");
        counts
    });
    for pid in counts.keys() {
        assert!(
            pids.contains(pid),
            "a task ran in process {pid}, not a node"
        );
    }
    assert!(
        counts.len() >= 3,
        "tasks ran in only {} processes: {counts:?}",
        counts.len()
    );
    drop(nodes);
}
