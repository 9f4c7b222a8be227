//! Surviving the loss of a node: real processes, SIGKILL, results still right.

use std::time::{Duration, Instant};

use rdask::{Client, MemberState};
use rdask_tests::{NodeProcess, add, bounded, logged_add, logged_inc, slow_inc};

const NODE: &str = env!("CARGO_BIN_EXE_rdask-test-node");

/// One cluster at a time: these tests time failures of 4–8 node processes, and several such
/// clusters at once on a small machine make membership see failures that did not happen.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits until the node at `addr` sees `n` live members.
fn wait_for_alive(client: &Client, n: usize, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let nodes = rdask::block_on(client.nodes()).expect("nodes");
        if nodes
            .iter()
            .filter(|m| m.state == MemberState::Alive)
            .count()
            == n
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{n} live members not seen: {nodes:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Why a graph is late: the entry node's view of every key of `keys` that is not done, and
/// what the nodes at `addrs` say of the keys placed on others (each asked for at most 10 s).
fn explain_everywhere(client: &Client, addrs: &[String], keys: &[rdask::Key]) -> String {
    let ask = |c: &Client, keys: &[rdask::Key]| {
        let (tx, rx) = std::sync::mpsc::channel();
        let (c, keys) = (c.clone(), keys.to_vec());
        std::thread::spawn(move || {
            let _ = tx.send(rdask::block_on(c.explain_keys(&keys)));
        });
        rx.recv_timeout(Duration::from_secs(10))
            .map_err(|_| "no answer within 10 s".to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
    };
    let lines = match ask(client, keys) {
        Ok(lines) => lines,
        Err(e) => return format!("the entry node did not explain: {e}"),
    };
    let late: Vec<&String> = lines
        .iter()
        .filter(|l| !l.contains("in memory") && !l.contains("released"))
        .collect();
    let stuck: Vec<rdask::Key> = keys
        .iter()
        .zip(&lines)
        .filter(|(_, l)| l.contains("placed on"))
        .map(|(k, _)| k.clone())
        .collect();
    let mut others = Vec::new();
    for addr in addrs {
        match Client::connect(addr) {
            Ok(c) => others.push((addr.clone(), ask(&c, &stuck))),
            Err(e) => others.push((addr.clone(), Err(e.to_string()))),
        }
    }
    format!("not done: {late:#?}; the nodes: {others:#?}")
}

#[test]
fn killing_a_node_mid_graph_loses_time_not_results() {
    let _one = one_at_a_time();
    lose_a_node_mid_graph(Stop::Kill, Victim::Worker);
}

#[test]
fn stopping_a_node_mid_graph_loses_time_not_results() {
    let _one = one_at_a_time();
    lose_a_node_mid_graph(Stop::Term, Victim::Worker);
}

#[test]
fn killing_the_owner_mid_graph_loses_time_not_results() {
    let _one = one_at_a_time();
    lose_a_node_mid_graph(Stop::Kill, Victim::Owner);
}

/// Which node goes.
#[derive(PartialEq)]
enum Victim {
    /// One the client is not connected to.
    Worker,
    /// The client's entry node, owner of its graphs: a backup takes over and the client
    /// re-attaches to it.
    Owner,
}

/// How the node goes.
enum Stop {
    /// SIGKILL: nobody is told; membership finds out.
    Kill,
    /// SIGTERM: the node announces that it leaves (its results are computed again
    /// elsewhere; handing them over first is not there yet).
    Term,
}

fn lose_a_node_mid_graph(how: Stop, who: Victim) {
    let first = NodeProcess::start(NODE, &["--nthreads", "2", "--cluster-size", "4"]);
    let seed = first.multiaddr.clone();
    let mut others: Vec<NodeProcess> = (0..3)
        .map(|_| {
            NodeProcess::start(
                NODE,
                &["--nthreads", "2", "--cluster-size", "4", "--join", &seed],
            )
        })
        .collect();
    let entry = first.multiaddr.clone();
    let addrs: Vec<String> = std::iter::once(first.multiaddr.clone())
        .chain(others.iter().map(|n| n.multiaddr.clone()))
        .collect();
    let client = bounded(60, move || {
        let client = Client::connect(&entry).expect("connect");
        wait_for_alive(&client, 4, 30);
        // The node loop hands the gossiped members to its core once a second.
        std::thread::sleep(Duration::from_millis(1_500));
        client
    });
    // 1,024 leaves of 5 ms each and a tree of 1,023 additions over them (2,047 tasks),
    // all submitted to the first node; only the total is kept, so intermediate results
    // held by the victim are gone with it and must be computed again from their inputs.
    let mut level: Vec<_> = (0..1024i64)
        .map(|i| client.submit(slow_inc, (i, 5u64)))
        .collect();
    let mut keys: Vec<rdask::Key> = level.iter().map(|f| f.key().clone()).collect();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|p| client.submit(add, (&p[0], &p[1])))
            .collect();
        keys.extend(level.iter().map(|f| f.key().clone()));
    }
    let total = level.pop().expect("root");
    std::thread::sleep(Duration::from_millis(300));
    let mut first = Some(first);
    let victim = match who {
        Victim::Worker => others.remove(1),
        Victim::Owner => first.take().expect("the first node"),
    };
    let pid = victim.pid();
    match how {
        Stop::Kill => victim.kill(),
        Stop::Term => {
            victim.terminate().expect("the node exits on SIGTERM");
        }
    }
    let started = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(rdask::block_on(total.result()));
    });
    let got = match rx.recv_timeout(Duration::from_secs(90)) {
        Ok(got) => got,
        Err(_) => panic!(
            "the total did not arrive within 90 s; {}",
            explain_everywhere(&client, &addrs, &keys)
        ),
    };
    let expected: i64 = (0..1024i64).map(|i| i + 1).sum();
    assert_eq!(got.expect("the total"), expected);
    println!(
        "node {pid} stopped 300 ms in; the total arrived {:?} later (client re-attached {} times)",
        started.elapsed(),
        client.reattached()
    );
    if who == Victim::Owner {
        assert_eq!(client.reattached(), 1);
        assert_ne!(client.node_id(), "");
    }
    drop((first, others));
}

/// A rolling restart: while a graph runs, every node in turn gets a successor and is then
/// stopped with SIGTERM (the owner of the graph included). Every result is right, every
/// task ran exactly once, the client followed its graphs.
#[test]
fn a_rolling_restart_of_every_node_recomputes_nothing() {
    let _one = one_at_a_time();
    let dir = std::env::temp_dir().join(format!("rdask-rolling-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let log = dir.join("runs.log").display().to_string();
    let _ = std::fs::remove_file(&log);
    let args = ["--nthreads", "2", "--cluster-size", "4"];
    let first = NodeProcess::start(NODE, &args);
    let seed = first.multiaddr.clone();
    let mut nodes: Vec<NodeProcess> = vec![first];
    for _ in 0..3 {
        let mut a = args.to_vec();
        a.extend(["--join", &seed]);
        nodes.push(NodeProcess::start(NODE, &a));
    }
    let entry = seed.clone();
    let client = bounded(60, move || {
        let client = Client::connect(&entry).expect("connect");
        wait_for_alive(&client, 4, 30);
        std::thread::sleep(Duration::from_millis(1_500));
        client
    });
    // 256 leaves of 150 ms and a tree of 255 additions: about 5 s of work on 8 threads,
    // stretched by the restarts, so that every restart happens while it runs.
    let leaves = 256i64;
    let mut level: Vec<_> = (0..leaves)
        .map(|i| client.submit(logged_inc, (i, 150u64, log.clone())))
        .collect();
    let mut keys: Vec<rdask::Key> = level.iter().map(|f| f.key().clone()).collect();
    let mut tag = 0u64;
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|p| {
                tag += 1;
                client.submit(logged_add, (&p[0], &p[1], tag, log.clone()))
            })
            .collect();
        keys.extend(level.iter().map(|f| f.key().clone()));
    }
    let total = level.pop().expect("root");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(rdask::block_on(total.result()));
    });
    // Every original node, oldest first: a successor joins, then the node stops.
    let watcher = Client::connect(&nodes.last().expect("a node").multiaddr).expect("connect");
    let wait_for_member = |peer: &str, secs: u64| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            let nodes = rdask::block_on(watcher.nodes()).unwrap_or_default();
            if nodes
                .iter()
                .any(|m| &*m.member.id.0 == peer && m.state == MemberState::Alive)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the new node {peer} did not join within {secs} s");
    };
    let started = Instant::now();
    let mut stopped = Vec::new();
    let mut stopped_pids = Vec::new();
    for _ in 0..4 {
        let join = nodes.last().expect("a live node").multiaddr.clone();
        let mut a = args.to_vec();
        a.extend(["--join", &join]);
        let successor = NodeProcess::start(NODE, &a);
        // As a rolling restart waits for the new node to be ready: the cluster lists it,
        // and a node's loop refreshes its members once a second.
        wait_for_member(&successor.peer_id, 20);
        std::thread::sleep(Duration::from_millis(1_200));
        let old = nodes.remove(0);
        stopped_pids.push(old.pid());
        let status = old
            .terminate()
            .expect("the node hands over and exits within 10 s");
        stopped.push(status);
        nodes.push(successor);
    }
    let got = match rx.recv_timeout(Duration::from_secs(90)) {
        Ok(got) => got,
        Err(_) => {
            let addrs: Vec<String> = nodes.iter().map(|n| n.multiaddr.clone()).collect();
            panic!(
                "the total did not arrive within 90 s (nodes stopped in this order: \
                 {stopped_pids:?}; the client is at {} after {} re-attaches); {}",
                client.node_id(),
                client.reattached(),
                explain_everywhere(&client, &addrs, &keys)
            );
        }
    };
    let expected: i64 = (0..leaves).map(|i| i + 1).sum();
    assert_eq!(got.expect("the total"), expected);
    // At least once: the owner left; again if the node that took over left later.
    assert!(client.reattached() >= 1, "the client followed its graphs");
    let text = std::fs::read_to_string(&log).expect("the run log");
    // Lines are "inc X PID" / "add TAG PID": the task, and the node process it ran in.
    let mut runs: std::collections::BTreeMap<String, Vec<&str>> = Default::default();
    for line in text.lines() {
        let (task, pid) = line.rsplit_once(' ').unwrap_or((line, "?"));
        runs.entry(task.to_string()).or_default().push(pid);
    }
    let twice: Vec<(&String, &Vec<&str>)> = runs.iter().filter(|(_, p)| p.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "tasks computed again (with the processes they ran in; nodes stopped in this \
         order: {stopped_pids:?}): {twice:?}"
    );
    assert_eq!(runs.len(), (leaves as usize) * 2 - 1, "every task ran");
    println!(
        "rolling restart of 4 nodes: total right after {:?}; {} tasks, {} computed more than \
         once; client re-attached {} times",
        started.elapsed(),
        runs.len(),
        twice.len(),
        client.reattached()
    );
    let _ = std::fs::remove_dir_all(&dir);
    drop(nodes);
}
