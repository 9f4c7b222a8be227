//! End-to-end tests: the rdask client against real node processes over loopback.

use rdask::{Client, Error, TaskErrorKind};
use rdask_tests::{NodeProcess, add, bounded, explode, halve, inc, join};

const NODE: &str = env!("CARGO_BIN_EXE_rdask-test-node");

fn block<F: std::future::Future>(f: F) -> F::Output {
    rdask::block_on(f)
}

#[test]
fn the_client_connects_with_every_address_form() {
    let node = NodeProcess::start(NODE, &["--nthreads", "2"]);
    let p = node.port;
    let forms = vec![
        format!("tcp://127.0.0.1:{p}"),
        format!("127.0.0.1:{p}"),
        format!("tcp://localhost:{p}"),
        format!("/ip4/127.0.0.1/tcp/{p}"),
        format!("/dns/localhost/tcp/{p}"),
        node.multiaddr.clone(),
    ];
    let peer = node.peer_id.clone();
    bounded(60, move || {
        for address in forms {
            let client = Client::connect(&address).unwrap_or_else(|e| panic!("{address}: {e}"));
            assert_eq!(client.node_id(), peer);
            assert_eq!(client.nthreads(), 2);
            let shown = client.to_string();
            assert!(
                shown.contains(&address) && shown.contains("threads=2"),
                "{shown}"
            );
            assert_eq!(
                block(client.submit(inc, (41,)).result()).unwrap(),
                42,
                "{address}"
            );
        }
    });
}

#[test]
fn a_thousand_tasks_with_dependencies_give_the_right_values() {
    let node = NodeProcess::start(NODE, &[]);
    let address = format!("tcp://127.0.0.1:{}", node.port);
    bounded(120, move || {
        let client = Client::connect(&address).unwrap();
        // 512 leaves, a reduction tree of 511 adds over them: 1,023 tasks.
        let leaves = client.map(inc, 0..512i64);
        let mut level = leaves.clone();
        while level.len() > 1 {
            level = level
                .chunks(2)
                .map(|p| client.submit(add, (&p[0], &p[1])))
                .collect();
        }
        let total = block(level[0].result()).unwrap();
        assert_eq!(total, (1..=512).sum::<i64>());
        let values = block(client.gather(&leaves)).unwrap();
        assert_eq!(values, (1..=512).collect::<Vec<i64>>());
        // values of any serde type, and literal arguments mixed with futures
        let s = client.submit(
            join,
            (vec!["a".to_string(), "b".to_string()], "-".to_string()),
        );
        assert_eq!(block(s.result()).unwrap(), "a-b");
        let mixed = client.submit(add, (100, &level[0]));
        assert_eq!(block(mixed.result()).unwrap(), total + 100);
    });
}

#[test]
fn a_panicking_task_fails_its_dependents_with_its_message_and_the_node_keeps_serving() {
    let node = NodeProcess::start(NODE, &[]);
    let address = node.multiaddr.clone();
    let peer = node.peer_id.clone();
    let mut node = bounded(60, move || {
        let client = Client::connect(&address).unwrap();
        let bad = client.submit(explode, (7,));
        let child = client.submit(inc, (&bad,));
        let grandchild = client.submit(add, (&child, 1));
        for f in [&bad, &child, &grandchild] {
            let err = block(f.result()).unwrap_err();
            let task = err
                .task_error()
                .unwrap_or_else(|| panic!("not a task error: {err}"));
            assert_eq!(task.kind, TaskErrorKind::Panicked);
            assert_eq!(&*task.message, "exploded on 7");
            assert_eq!(
                task.key,
                *bad.key(),
                "the cause names the task that panicked"
            );
            assert_eq!(task.node.as_deref(), Some(peer.as_str()));
            assert!(err.to_string().contains("exploded on 7"), "{err}");
        }
        // an Err return is an error too
        let odd = client.submit(halve, (3,));
        let err = block(odd.result()).unwrap_err();
        assert_eq!(err.task_error().unwrap().kind, TaskErrorKind::Failed);
        assert!(err.to_string().contains("3 is odd"), "{err}");
        // and the node still runs a new graph
        let xs = client.map(halve, (0..100).map(|i| i * 2));
        assert_eq!(
            block(client.gather(&xs)).unwrap(),
            (0..100).collect::<Vec<i64>>()
        );
        node
    });
    assert!(node.is_running());
}

#[test]
fn an_unknown_function_is_a_clear_error_and_nothing_runs() {
    // A function this test binary has but the node binary does not.
    #[rdask::task]
    fn only_here(x: i64) -> i64 {
        x
    }
    let node = NodeProcess::start(NODE, &[]);
    let address = node.multiaddr.clone();
    bounded(60, move || {
        let client = Client::connect(&address).unwrap();
        let f = client.submit(only_here, (1,));
        let err = block(f.result()).unwrap_err();
        assert!(err.is_unknown_function(), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("only_here") && text.contains("unknown function"),
            "{text}"
        );
        // a task depending on it is rejected too, naming the missing input
        let g = client.submit(inc, (&f,));
        assert!(matches!(block(g.result()), Err(Error::GraphRejected(_))));
        let nodes = block(client.nodes()).unwrap();
        assert_eq!(nodes[0].load.stored, 0, "nothing ran");
        assert_eq!(block(client.submit(inc, (1,)).result()).unwrap(), 2);
    });
}

#[test]
fn dropped_futures_and_a_closed_client_release_their_results() {
    let node = NodeProcess::start(NODE, &[]);
    let address = node.multiaddr.clone();
    bounded(60, move || {
        let observer = Client::connect(&address).unwrap();
        let stored = || block(observer.nodes()).unwrap()[0].load.stored;

        let client = Client::connect(&address).unwrap();
        let xs = client.map(inc, 0..100i64);
        block(client.gather(&xs)).unwrap();
        assert_eq!(stored(), 100);
        drop(xs);
        // releases travel in order behind submissions: once a later submission has a
        // value, the node has seen them
        let probe = client.submit(inc, (0,));
        block(probe.result()).unwrap();
        assert_eq!(stored(), 1);

        let kept = client.map(inc, 0..50i64);
        block(client.gather(&kept)).unwrap();
        assert_eq!(stored(), 51);
        client.close();
        assert_eq!(
            stored(),
            0,
            "closing the client releases everything it held"
        );
        assert!(matches!(block(kept[0].result()), Err(Error::Closed)));
    });
}

/// An idle node (nothing to hand over) stops well under a second after SIGTERM, cleanly:
/// rolling restarts and scripts do not wait on it.
#[test]
fn a_node_stops_cleanly_and_at_once_on_sigterm() {
    let node = NodeProcess::start(NODE, &[]);
    let started = std::time::Instant::now();
    let status = node
        .terminate()
        .expect("the node exits within 10 s of SIGTERM");
    let took = started.elapsed();
    assert!(status.success(), "{status:?}");
    // It used to wait out a 5 s limit on tasks that never end; the bound leaves room for a
    // loaded machine.
    assert!(
        took < std::time::Duration::from_secs(4),
        "stopping took {took:?}"
    );
}

#[test]
fn connecting_to_nothing_is_a_clear_error() {
    // Bind and drop to find a port with no listener.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = bounded(30, move || {
        Client::connect(&format!("127.0.0.1:{port}")).unwrap_err()
    });
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    assert!(matches!(
        Client::connect("not an address"),
        Err(Error::BadAddress { .. })
    ));
}

#[test]
fn an_identity_file_gives_the_same_peer_id_on_every_start() {
    let dir = std::env::temp_dir().join(format!("rdask-identity-{}", std::process::id()));
    let file = dir.join("node.key");
    let file = file.to_str().unwrap();
    let first = NodeProcess::start(NODE, &["--identity", file]);
    let id = first.peer_id.clone();
    drop(first);
    let second = NodeProcess::start(NODE, &["--identity", file]);
    assert_eq!(second.peer_id, id);
    drop(second);
    let other = NodeProcess::start(NODE, &[]);
    assert_ne!(
        other.peer_id, id,
        "without the file a node gets a new identity"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_cluster_with_a_secret_admits_only_nodes_and_clients_that_have_it() {
    let dir = std::env::temp_dir().join(format!("rdask-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("secret");
    std::fs::write(&file, "correct horse battery staple\n").unwrap();
    let a = NodeProcess::start(
        NODE,
        &[
            "--nthreads",
            "2",
            "--cluster-secret-file",
            file.to_str().unwrap(),
        ],
    );
    let b = NodeProcess::start(
        NODE,
        &[
            "--nthreads",
            "2",
            "--cluster-secret",
            "correct horse battery staple",
            "--join",
            &a.multiaddr,
        ],
    );
    // No secret, and a wrong one: neither gets in.
    let c = NodeProcess::start(NODE, &["--nthreads", "2", "--join", &a.multiaddr]);
    let d = NodeProcess::start(
        NODE,
        &[
            "--nthreads",
            "2",
            "--cluster-secret",
            "wrong",
            "--join",
            &a.multiaddr,
        ],
    );
    let address = format!("tcp://127.0.0.1:{}", a.port);
    let members = [a.peer_id.clone(), b.peer_id.clone()];
    bounded(120, move || {
        let client = Client::connect_with_secret(&address, "correct horse battery staple")
            .expect("the right secret connects");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let nodes = block(client.nodes()).unwrap();
            if nodes.len() == 2 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{nodes:#?}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        // Long enough for the outsiders to have tried to join several times.
        std::thread::sleep(std::time::Duration::from_secs(3));
        let mut ids: Vec<String> = block(client.nodes())
            .unwrap()
            .into_iter()
            .map(|n| n.member.id.0.to_string())
            .collect();
        ids.sort();
        let mut want = members.to_vec();
        want.sort();
        assert_eq!(ids, want, "only the nodes with the secret are members");
        let futures = client.map(inc, 0..100i64);
        let values = block(client.gather(&futures)).unwrap();
        assert_eq!(values, (1..=100).collect::<Vec<i64>>());

        for (secret, what) in [(None, "no secret"), (Some("wrong"), "a wrong secret")] {
            let refused = match secret {
                None => Client::connect(&address),
                Some(s) => Client::connect_with_secret(&address, s),
            };
            let e = refused.err().unwrap_or_else(|| panic!("{what} connected"));
            assert!(
                matches!(e, Error::Connect { .. }) && e.to_string().contains("secret"),
                "{what}: {e}"
            );
        }
    });
    drop((a, b, c, d));
    let _ = std::fs::remove_dir_all(dir);
}
