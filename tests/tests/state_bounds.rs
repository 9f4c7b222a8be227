//! The replicated state stays bounded over a cluster's life: thousands of short client
//! sessions come and go, and the gossip still carries what matters to a node that joins
//! afterwards.
//!
//! By default (what CI runs) 200 sequential clients: about 13 s in a debug build (connecting
//! costs most), 3 s in release. The long version is opt-in through `RDASK_CHURN_CLIENTS`:
//! `RDASK_CHURN_CLIENTS=20000 cargo test --release -p rdask-tests --test state_bounds --
//! --nocapture` (20,000 clients; before sessions ended, anti-entropy stopped after about
//! 16,000: the digest of their ownership entries outgrew the 1 MiB gossip frame, and a
//! dataset published afterwards never reached a third node).

use std::time::{Duration, Instant};

use rdask::{Client, MemberState};
use rdask_tests::{NodeProcess, bounded, http_get, inc};

const NODE: &str = env!("CARGO_BIN_EXE_rdask-test-node");

/// The clients to run (`RDASK_CHURN_CLIENTS`, default 200).
fn clients() -> usize {
    std::env::var("RDASK_CHURN_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

/// Live members the node at `addr` lists.
fn alive(addr: &str) -> usize {
    let client = Client::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let nodes = rdask::block_on(client.nodes()).expect("nodes");
    nodes
        .iter()
        .filter(|n| n.state == MemberState::Alive)
        .count()
}

/// A sample of a node's `/metrics` (`name` with its labels).
fn metric(dashboard: &str, name: &str) -> u64 {
    let (status, body) = http_get(&format!("{dashboard}/metrics"));
    assert_eq!(status, 200);
    let prefix = format!("{name} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {name} in the metrics")) as u64
}

/// A gauge of the replicated state's entries from a node's `/metrics`.
fn entries(dashboard: &str, table: &str) -> u64 {
    metric(
        dashboard,
        &format!("rdask_gossip_state_entries{{table=\"{table}\"}}"),
    )
}

/// Polls `ok` every 200 ms until it holds, at most `secs` seconds.
fn wait_until(secs: u64, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn short_clients_come_and_go_and_a_node_joining_afterwards_learns_the_cluster() {
    let n = clients();
    // About 20 clients a second in a debug build; far more in release.
    let limit = 120 + n as u64 / 10;
    bounded(limit, move || {
        let seed = NodeProcess::start(NODE, &["--nthreads", "1"]);
        let others: Vec<NodeProcess> = (0..2)
            .map(|_| NodeProcess::start(NODE, &["--nthreads", "1", "--join", &seed.multiaddr]))
            .collect();
        let nodes: Vec<&NodeProcess> = std::iter::once(&seed).chain(&others).collect();
        for node in &nodes {
            wait_until(30, "three members", || alive(&node.multiaddr) == 3);
        }

        // Sequential short clients, each on the next node: connect, one task, close.
        let started = Instant::now();
        for i in 0..n {
            let node = nodes[i % 3];
            let client = Client::connect(&node.multiaddr).expect("connect");
            let x = i as i64;
            let f = client.submit(inc, (x,));
            assert_eq!(rdask::block_on(f.result()).expect("result"), x + 1);
            client.close();
            if (i + 1) % 1000 == 0 {
                eprintln!(
                    "{} clients in {:.1} s",
                    i + 1,
                    started.elapsed().as_secs_f64()
                );
            }
        }
        let elapsed = started.elapsed();
        eprintln!(
            "{n} clients in {:.1} s ({:.1} ms each)",
            elapsed.as_secs_f64(),
            elapsed.as_secs_f64() * 1000.0 / n as f64
        );

        // A dataset published last, on the first node; its publisher closes (the session
        // lives on while the dataset is published).
        let publisher = Client::connect(&seed.multiaddr).expect("connect");
        let data = publisher.submit(inc, (41,));
        rdask::block_on(data.result()).expect("result");
        rdask::block_on(publisher.publish_dataset("last", std::slice::from_ref(&data)))
            .expect("publish");
        drop(data);
        publisher.close();

        // Every closed session left the ownership table: only the publisher's remains.
        for node in &nodes {
            let dashboard = node.dashboard.as_deref().expect("a dashboard");
            wait_until(30, "the ownership table back to one entry", || {
                entries(dashboard, "owners") == 1
            });
            let tombstones = entries(dashboard, "owner_tombstones");
            assert!(tombstones <= n as u64 + 1, "{tombstones} tombstones");
            let largest = metric(dashboard, "rdask_gossip_largest_bytes");
            eprintln!(
                "{}: 1 ownership entry, {tombstones} tombstones; largest gossip datagram {largest} bytes",
                node.peer_id
            );
            assert!(largest <= 1 << 20);
        }

        // A node joins afterwards through the second one: it learns every member and the
        // dataset, and reads it.
        let late = NodeProcess::start(NODE, &["--nthreads", "1", "--join", &others[1].multiaddr]);
        wait_until(30, "the late node lists four members", || {
            alive(&late.multiaddr) == 4
        });
        let reader = Client::connect(&late.multiaddr).expect("connect");
        wait_until(30, "the late node knows the dataset", || {
            rdask::block_on(reader.list_datasets()).expect("list") == ["last"]
        });
        let got = rdask::block_on(reader.get_dataset::<i64>("last")).expect("get");
        let values = rdask::block_on(reader.gather(&got)).expect("gather");
        assert_eq!(values, vec![42]);
        let dashboard = late.dashboard.as_deref().expect("a dashboard");
        assert_eq!(entries(dashboard, "owners"), 1);
        assert_eq!(entries(dashboard, "members"), 4);
    });
}
