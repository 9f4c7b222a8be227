//! A real cluster: several node processes on loopback joined through gossip.

use std::time::{Duration, Instant};

use rdask::{Client, MemberState, NodeStatus};
use rdask_tests::NodeProcess;

const NODE: &str = env!("CARGO_BIN_EXE_rdask-test-node");

/// Asks the node at `addr` for the cluster until `ok` holds, at most `secs` seconds.
fn wait_for(
    addr: &str,
    secs: u64,
    what: &str,
    ok: impl Fn(&[NodeStatus]) -> bool,
) -> Vec<NodeStatus> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let client = Client::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    loop {
        let nodes = rdask::block_on(client.nodes()).expect("nodes");
        if ok(&nodes) {
            return nodes;
        }
        if Instant::now() > deadline {
            panic!("{addr}: {what} not seen within {secs} s; last view: {nodes:#?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn alive(nodes: &[NodeStatus]) -> Vec<String> {
    let mut ids: Vec<String> = nodes
        .iter()
        .filter(|n| n.state == MemberState::Alive)
        .map(|n| n.member.id.0.to_string())
        .collect();
    ids.sort();
    ids
}

#[test]
fn five_nodes_join_through_one_seed_and_a_killed_one_is_dropped_by_all() {
    let seed = NodeProcess::start(NODE, &["--nthreads", "1"]);
    let seed_addr = seed.multiaddr.clone();
    let mut nodes = vec![seed];
    for _ in 0..4 {
        nodes.push(NodeProcess::start(
            NODE,
            &["--nthreads", "1", "--join", &seed_addr],
        ));
    }
    let mut ids: Vec<String> = nodes.iter().map(|n| n.peer_id.clone()).collect();
    ids.sort();

    // every node lists all five, with their records
    for n in &nodes {
        let view = wait_for(&n.multiaddr, 30, "all five members", |v| alive(v) == ids);
        assert!(
            view.iter()
                .all(|m| m.member.nthreads == 1 && m.member.functions > 0)
        );
    }

    // SIGKILL one: the rest drop it
    let victim = nodes.remove(2);
    let victim_id = victim.peer_id.clone();
    drop(victim); // kills the process
    ids.retain(|i| *i != victim_id);
    for n in &nodes {
        wait_for(&n.multiaddr, 60, "the killed member dropped", |v| {
            alive(v) == ids
        });
    }

    // a new node joins through another member, and all see it
    let newcomer = NodeProcess::start(NODE, &["--nthreads", "1", "--join", &nodes[3].multiaddr]);
    ids.push(newcomer.peer_id.clone());
    ids.sort();
    nodes.push(newcomer);
    for n in &nodes {
        wait_for(&n.multiaddr, 30, "the newcomer", |v| alive(v) == ids);
    }

    // a node that stops cleanly announces it leaves: the others see it at once
    let leaving = nodes.remove(0);
    let leaving_id = leaving.peer_id.clone();
    assert!(leaving.terminate().is_some_and(|s| s.success()));
    ids.retain(|i| *i != leaving_id);
    for n in &nodes {
        wait_for(&n.multiaddr, 10, "the leave", |v| alive(v) == ids);
    }
}

#[test]
fn a_restarted_node_with_the_same_identity_rejoins() {
    let dir = std::env::temp_dir().join(format!("rdask-rejoin-{}", std::process::id()));
    let key = dir.join("node.key");
    let key = key.to_str().unwrap().to_string();
    let seed = NodeProcess::start(NODE, &["--nthreads", "1"]);
    let args = [
        "--nthreads",
        "1",
        "--identity",
        &key,
        "--join",
        &seed.multiaddr,
    ];
    let member = NodeProcess::start(NODE, &args);
    let id = member.peer_id.clone();
    wait_for(&seed.multiaddr, 30, "the member", |v| {
        alive(v).contains(&id)
    });
    drop(member); // SIGKILL
    let again = NodeProcess::start(NODE, &args);
    assert_eq!(again.peer_id, id);
    wait_for(&seed.multiaddr, 60, "the member back", |v| {
        v.iter()
            .any(|m| *m.member.id.0 == *id && m.state == MemberState::Alive)
            && alive(v).len() == 2
    });
    let _ = std::fs::remove_dir_all(dir);
}
