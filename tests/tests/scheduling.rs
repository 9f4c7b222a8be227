//! Scheduling across a real cluster: tasks submitted to one node run on its peers too.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdask::{Client, MemberState, NodeStatus, TaskOptions};
use rdask_tests::{NodeProcess, add, blob, bounded, checksum, http_get, inc, where_am_i};

const NODE: &str = env!("CARGO_BIN_EXE_rdask-test-node");

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

/// Starts `n` nodes of 2 threads, the others joining the first.
fn cluster(n: usize) -> (Vec<NodeProcess>, Vec<String>) {
    let first = NodeProcess::start(NODE, &["--nthreads", "2"]);
    let seed = first.multiaddr.clone();
    let mut nodes = vec![first];
    for _ in 1..n {
        nodes.push(NodeProcess::start(
            NODE,
            &["--nthreads", "2", "--join", &seed],
        ));
    }
    let addrs = nodes.iter().map(|n| n.multiaddr.clone()).collect();
    (nodes, addrs)
}

/// Waits until every node sees all members (their cores know them as soon as they do).
fn settle(addrs: &[String]) {
    for a in addrs {
        wait_for_members(a, addrs.len(), 30);
    }
}

#[test]
fn the_first_graph_of_a_new_cluster_runs_on_every_node_the_client_lists() {
    // Three nodes of one thread; six tasks of 600 ms submitted to the first node the moment
    // its client lists all three: placement knows what the client was shown, so each node
    // gets its share at once (not only what it steals later).
    let first = NodeProcess::start(NODE, &["--nthreads", "1"]);
    let seed = first.multiaddr.clone();
    let mut nodes = vec![first];
    for _ in 1..3 {
        nodes.push(NodeProcess::start(
            NODE,
            &["--nthreads", "1", "--join", &seed],
        ));
    }
    let pids: Vec<u32> = nodes.iter().map(|n| n.pid()).collect();
    let counts = bounded(120, move || {
        wait_for_members(&seed, 3, 30);
        let client = Client::connect(&seed).expect("connect");
        let futures = client.map_args(rdask_tests::slow_where, (0..6u64).map(|i| (i, 600u64)));
        let results = rdask::block_on(client.gather(&futures)).expect("gather");
        let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
        for (i, (x, pid)) in results.into_iter().enumerate() {
            assert_eq!(x, i as u64);
            *counts.entry(pid).or_default() += 1;
        }
        counts
    });
    assert_eq!(
        counts.len(),
        3,
        "the first graph ran on {} of 3 nodes: {counts:?} (nodes {pids:?})",
        counts.len()
    );
    assert!(
        counts.values().all(|&c| c == 2),
        "the first graph's six tasks were not spread two per node: {counts:?}"
    );
    drop(nodes);
}

#[test]
fn nodes_are_named_by_their_name_or_address_and_tasks_learn_where_they_run() {
    let a = NodeProcess::start(NODE, &["--nthreads", "1"]);
    let b = NodeProcess::start(
        NODE,
        &[
            "--nthreads",
            "1",
            "--name",
            "gpu-box",
            "--join",
            &a.multiaddr,
        ],
    );
    let (seed, b_id, b_addr, b_port) = (
        a.multiaddr.clone(),
        b.peer_id.clone(),
        b.multiaddr.clone(),
        b.port,
    );
    bounded(120, move || {
        wait_for_members(&seed, 2, 30);
        let client = Client::connect(&seed).expect("connect");
        let nodes = rdask::block_on(client.nodes()).expect("nodes");
        let named = nodes
            .iter()
            .find(|n| n.member.name == "gpu-box")
            .expect("the named node is listed");
        assert_eq!(named.member.id.0.to_string(), b_id);
        let unnamed = nodes
            .iter()
            .find(|n| n.member.id.0.to_string() != b_id)
            .expect("the other");
        assert_eq!(unnamed.member.name, "");
        // By name, by host:port, by multiaddr: the task runs there, and knows it.
        for target in [
            "gpu-box".to_string(),
            format!("127.0.0.1:{b_port}"),
            b_addr.clone(),
        ] {
            let at = TaskOptions::new().workers([target.as_str()]);
            let futures: Vec<_> = (0..4)
                .map(|_| client.submit_with(rdask_tests::my_node, (), &at))
                .collect();
            for (id, name) in rdask::block_on(client.gather(&futures)).expect("gather") {
                assert_eq!(
                    (id.as_str(), name.as_str()),
                    (b_id.as_str(), "gpu-box"),
                    "workers([{target:?}])"
                );
            }
        }
        // Outside a task there is no node to learn.
        assert!(matches!(rdask::get_worker(), Err(rdask::Error::NotInTask)));
    });
    drop((a, b));
}

#[test]
fn tasks_submitted_to_one_node_run_across_the_cluster() {
    let (nodes, addrs) = cluster(4);
    let pids: Vec<u32> = nodes.iter().map(|n| n.pid()).collect();

    let counts = bounded(120, move || {
        settle(&addrs);
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

#[test]
fn two_clients_on_two_entry_nodes_run_graphs_at_once() {
    let (nodes, addrs) = cluster(3);
    bounded(120, move || {
        settle(&addrs);
        let runs: Vec<_> = (0..2)
            .map(|c| {
                let addr = addrs[c].clone();
                std::thread::spawn(move || {
                    let client = Client::connect(&addr).expect("connect");
                    // A tree reduction over 512 leaves, and a chain of 200.
                    let mut level = client.map(inc, (0..512i64).map(|x| x + 1000 * c as i64));
                    while level.len() > 1 {
                        level = level
                            .chunks(2)
                            .map(|p| client.submit(add, (&p[0], &p[1])))
                            .collect();
                    }
                    let mut chain = client.submit(inc, (0i64,));
                    for _ in 1..200 {
                        chain = client.submit(inc, (&chain,));
                    }
                    let total = rdask::block_on(level[0].result()).expect("tree");
                    let end = rdask::block_on(chain.result()).expect("chain");
                    let (session, entry) = (client.session_id(), client.node_id().to_string());
                    // Kept open: a closed client's session ends, and leaves the table.
                    (c, total, end, session, entry, client)
                })
            })
            .collect();
        let mut sessions = Vec::new();
        let mut open = Vec::new();
        for r in runs {
            let (c, total, end, session, entry, client) = r.join().expect("client thread");
            open.push(client);
            let expected: i64 = (0..512i64).map(|x| x + 1000 * c as i64 + 1).sum();
            assert_eq!(total, expected, "client {c}'s tree");
            assert_eq!(end, 200, "client {c}'s chain");
            sessions.push((session, entry));
        }
        // Each entry node owns its client's graphs, and the replicated ownership table
        // says so on every node.
        for addr in &addrs {
            let observer = Client::connect(addr).expect("connect");
            for (session, entry) in &sessions {
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    let owner = rdask::block_on(observer.session_owner(*session)).expect("owner");
                    if owner.as_deref() == Some(entry.as_str()) {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "{addr} names {owner:?} as the owner of session {session:x}, not {entry}"
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        // Once the clients close, their sessions leave the table on every node.
        drop(open);
        for addr in &addrs {
            let observer = Client::connect(addr).expect("connect");
            for (session, _) in &sessions {
                let deadline = Instant::now() + Duration::from_secs(20);
                while let Some(owner) =
                    rdask::block_on(observer.session_owner(*session)).expect("owner")
                {
                    assert!(
                        Instant::now() < deadline,
                        "{addr} still names {owner} as the owner of closed session {session:x}"
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    });
    drop(nodes);
}

#[test]
fn a_256_mib_value_moves_between_two_nodes_intact() {
    let (nodes, addrs) = cluster(2);
    let dashboard = nodes[0].dashboard.clone().expect("a dashboard");
    bounded(300, move || {
        settle(&addrs);
        let client = Client::connect(&addrs[0]).expect("connect");
        let members = rdask::block_on(client.nodes()).expect("nodes");
        let (here, there) = (
            members[0].member.id.0.clone(),
            members[1].member.id.0.clone(),
        );
        assert_eq!(&*here, client.node_id());
        // Made on the other node, summed up on this one: the value crosses the network.
        let data = client.submit_with(blob, (256u32, 7u64), &TaskOptions::new().workers([&*there]));
        let sum = client.submit_with(checksum, (&data,), &TaskOptions::new().workers([&*here]));
        let started = Instant::now();
        let got = rdask::block_on(sum.result()).expect("checksum");
        let elapsed = started.elapsed();
        let expected = checksum(blob(256, 7));
        assert_eq!(got, expected);
        assert_eq!(got.0, 256 << 20);
        println!("256 MiB made on one node and read on the other in {elapsed:?}");
        // It came by the data path (plain TCP beside libp2p), as values this large do.
        let (_, metrics) = http_get(&format!("{dashboard}/metrics"));
        let received: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("rdask_data_path_received_bytes_total "))
            .expect("the data path's counter")
            .parse()
            .expect("a number");
        assert!(received >= 256 << 20, "{received} bytes by the data path");
    });
    drop(nodes);
}

#[test]
fn tasks_that_need_a_gpu_run_only_on_the_node_that_has_one() {
    let plain = NodeProcess::start(NODE, &["--nthreads", "2"]);
    let gpu = NodeProcess::start(
        NODE,
        &[
            "--nthreads",
            "2",
            "--resources",
            "GPU=1",
            "--join",
            &plain.multiaddr,
        ],
    );
    let addrs = vec![plain.multiaddr.clone(), gpu.multiaddr.clone()];
    let gpu_pid = gpu.pid();
    bounded(120, move || {
        settle(&addrs);
        let client = Client::connect(&addrs[0]).expect("connect");
        let needs_gpu = TaskOptions::new().resources([("GPU", 1)]);
        let futures: Vec<_> = (0..40u64)
            .map(|i| client.submit_with(where_am_i, (i,), &needs_gpu))
            .collect();
        let results = rdask::block_on(client.gather(&futures)).expect("gather");
        for (i, (x, pid)) in results.into_iter().enumerate() {
            assert_eq!(x, i as u64);
            assert_eq!(pid, gpu_pid, "task {i} ran without a GPU");
        }
    });
    drop((plain, gpu));
}

#[test]
fn a_node_at_its_memory_limit_pauses_and_its_peers_run_its_clients_tasks() {
    let plain = NodeProcess::start(NODE, &["--nthreads", "2"]);
    // 1 MiB: the process alone is over 80% of it, so this node is paused from its start.
    let tight = NodeProcess::start(
        NODE,
        &[
            "--nthreads",
            "2",
            "--memory-limit",
            "1MiB",
            "--join",
            &plain.multiaddr,
        ],
    );
    let addrs = vec![plain.multiaddr.clone(), tight.multiaddr.clone()];
    let (plain_pid, tight_id) = (plain.pid(), tight.peer_id.clone());
    bounded(120, move || {
        settle(&addrs);
        let client = Client::connect(&addrs[1]).expect("connect");
        let futures = client.map(where_am_i, 0..200u64);
        let results = rdask::block_on(client.gather(&futures)).expect("gather");
        for (i, (x, pid)) in results.into_iter().enumerate() {
            assert_eq!(x, i as u64);
            assert_eq!(pid, plain_pid, "task {i} ran on the paused node");
        }
        let nodes = rdask::block_on(client.nodes()).expect("nodes");
        let me = nodes
            .iter()
            .find(|n| n.member.id.0.as_ref() == tight_id)
            .expect("the paused node is listed");
        assert!(me.load.paused, "{me:?}");
        assert_eq!(me.member.memory_limit, 1 << 20);
    });
    drop((plain, tight));
}
