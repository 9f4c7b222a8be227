//! The futures API a Dask user expects, against a real cluster of node processes: status,
//! cancel, timeouts, retries, pure and explicit keys, priorities, `wait`, `as_completed`
//! and `map_args`.

use std::time::{Duration, Instant};

use rdask::{Client, Error, FutureStatus, ReturnWhen, TaskOptions};
use rdask_tests::{NodeProcess, bounded, flaky, http_get, inc, logged_inc, slow_inc, sum_of_incs};

const NODE: &str = env!("CARGO_BIN_EXE_rdask-test-node");

/// The tests of this file run one at a time: the default client is one per process.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Two nodes of one thread each, joined; a client of the first.
fn cluster() -> (Vec<NodeProcess>, Client) {
    let a = NodeProcess::start(NODE, &["--nthreads", "1"]);
    let b = NodeProcess::start(NODE, &["--nthreads", "1", "--join", &a.multiaddr]);
    let client = Client::connect(&a.multiaddr).expect("connect");
    let deadline = Instant::now() + Duration::from_secs(30);
    while rdask::block_on(client.nodes()).expect("nodes").len() < 2 {
        assert!(Instant::now() < deadline, "the two nodes did not meet");
        std::thread::sleep(Duration::from_millis(100));
    }
    (vec![a, b], client)
}

fn temp_log(name: &str) -> String {
    let path = std::env::temp_dir().join(format!("rdask-{name}-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path.to_string_lossy().into_owned()
}

fn runs(log: &str) -> usize {
    std::fs::read_to_string(log).map_or(0, |t| t.lines().count())
}

#[test]
fn status_timeout_and_cancel_of_running_work_frees_the_nodes() {
    let _one = serial();
    bounded(120, || {
        let (_nodes, client) = cluster();
        let slow = client.submit(slow_inc, (1, 3_000));
        assert_eq!(
            rdask::block_on(slow.status()).unwrap(),
            FutureStatus::Pending
        );
        assert!(!rdask::block_on(slow.done()).unwrap());
        match rdask::block_on(slow.result_timeout(Duration::from_millis(200))) {
            Err(Error::Timeout(_)) => {}
            other => panic!("expected a timeout, got {other:?}"),
        }
        let quick = client.submit(inc, (41,));
        assert_eq!(rdask::block_on(quick.result()).unwrap(), 42);
        assert_eq!(
            rdask::block_on(quick.status()).unwrap(),
            FutureStatus::Finished
        );
        // who_has names a member of the cluster for a finished value, nobody for one
        // still running.
        let members: Vec<String> = rdask::block_on(client.nodes())
            .unwrap()
            .iter()
            .map(|n| n.member.id.0.to_string())
            .collect();
        let holders = rdask::block_on(client.who_has(&[quick.clone(), slow.clone()])).unwrap();
        // (where it ran, and the entry node once the client fetched it from there)
        assert!(!holders[0].is_empty(), "{holders:?}");
        assert!(
            holders[0].iter().all(|h| members.contains(h)),
            "{holders:?} {members:?}"
        );
        assert!(holders[1].is_empty(), "{holders:?}");

        // A graph of 40 one-second tasks on two one-thread nodes, cancelled: the nodes are
        // idle again once the two running functions return, not after 20 s.
        let many = client.map_args(slow_inc, (0..40).map(|i| (i, 1_000u64)));
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        for f in &many {
            f.cancel();
        }
        slow.cancel();
        assert_eq!(
            rdask::block_on(many[0].status()).unwrap(),
            FutureStatus::Cancelled
        );
        match rdask::block_on(many[39].result()) {
            Err(Error::Cancelled(k)) => assert_eq!(&k, many[39].key()),
            other => panic!("expected a cancellation, got {other:?}"),
        }
        // A cancelled future cannot be used as an argument.
        let dependent = client.submit(inc, (&many[3],));
        assert!(matches!(
            rdask::block_on(dependent.result()),
            Err(Error::Cancelled(_))
        ));
        loop {
            let nodes = rdask::block_on(client.nodes()).unwrap();
            let busy: u64 = nodes.iter().map(|n| n.load.queued + n.load.running).sum();
            if busy == 0 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "still busy after cancelling: {busy} tasks"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    });
}

#[test]
fn a_task_retried_after_two_failures_succeeds_and_one_retry_is_not_enough() {
    let _one = serial();
    bounded(120, || {
        let (_nodes, client) = cluster();
        let log = temp_log("flaky");
        let twice = TaskOptions::new().retries(2);
        let f = client.submit_with(flaky, (7, 2, log.clone()), &twice);
        assert_eq!(rdask::block_on(f.result()).unwrap(), 7);
        assert_eq!(runs(&log), 3, "two failed runs, then one that succeeded");

        let once = TaskOptions::new().retries(1);
        let g = client.submit_with(flaky, (8, 2, log.clone()), &once);
        let e = rdask::block_on(g.result()).unwrap_err();
        let te = e.task_error().expect("a task error");
        assert!(te.message.contains("fails on purpose"), "{te}");
        assert_eq!(rdask::block_on(g.status()).unwrap(), FutureStatus::Error);
        // `retry()` runs it (and a failed input) again: its third run succeeds, and a
        // dependent that failed with it is retried through it.
        let h = client.submit(inc, (&g,));
        assert!(rdask::block_on(h.result()).is_err());
        assert!(
            rdask::block_on(h.retry()).unwrap(),
            "the failed tasks run again"
        );
        assert_eq!(rdask::block_on(h.result()).unwrap(), 9);
        assert_eq!(rdask::block_on(g.result()).unwrap(), 8);
        assert!(
            !rdask::block_on(g.retry()).unwrap(),
            "nothing failed any more"
        );
        // Gathering keeps each future's outcome: failures are skipped, not fatal.
        let halves = client.map(rdask_tests::halve, 0..6);
        let each = rdask::block_on(client.gather_results(&halves)).unwrap();
        let ok: Vec<i64> = each
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect();
        assert_eq!(ok, vec![0, 1, 2]);
        let odd = each[1]
            .as_ref()
            .unwrap_err()
            .task_error()
            .expect("a task error");
        assert_eq!(&odd.key, halves[1].key());
        assert!(rdask::block_on(client.gather(&halves)).is_err());
        let _ = std::fs::remove_file(&log);
    });
}

#[test]
fn pure_and_explicit_keys_reuse_results_across_clients() {
    let _one = serial();
    bounded(120, || {
        let (nodes, client) = cluster();
        let log = temp_log("pure");
        let pure = TaskOptions::new().pure(true);
        let a = client.submit_with(logged_inc, (5, 0, log.clone()), &pure);
        assert_eq!(rdask::block_on(a.result()).unwrap(), 6);
        // The same call from another client of the same node: the same key, and nothing
        // runs again while the first client holds the result.
        let other = Client::connect(&nodes[0].multiaddr).expect("connect");
        let b = other.submit_with(logged_inc, (5, 0, log.clone()), &pure);
        assert_eq!(a.key(), b.key());
        assert_eq!(rdask::block_on(b.result()).unwrap(), 6);
        let c = client.submit_with(logged_inc, (6, 0, log.clone()), &pure);
        assert_ne!(a.key(), c.key(), "other arguments, another key");
        assert_eq!(rdask::block_on(c.result()).unwrap(), 7);
        assert_eq!(runs(&log), 2);

        // Scattered values: sent once, used by many tasks on any node, keyed by content.
        let parts: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let scattered = client.scatter(&parts);
        assert_eq!(client.scatter(&parts).key(), scattered.key());
        let joined = client.map_args(
            rdask_tests::join,
            ["-", "+", "/"].map(|sep| (&scattered, sep.to_string())),
        );
        assert_eq!(
            rdask::block_on(client.gather(&joined)).unwrap(),
            vec!["a-b-c", "a+b+c", "a/b/c"]
        );
        let many = client.scatter_many(&[1i64, 2, 1]);
        assert_eq!(many[0].key(), many[2].key());
        let sums = client.map_args(rdask_tests::add, [(&many[0], &many[1])]);
        assert_eq!(rdask::block_on(sums[0].result()).unwrap(), 3);

        let named = TaskOptions::new().key("answer");
        let x = client.submit_with(inc, (41,), &named);
        assert_eq!(x.key().as_str(), "answer");
        assert_eq!(rdask::block_on(x.result()).unwrap(), 42);
        let xs = client.map_with(inc, [1, 2], &named);
        assert_eq!(xs[1].key().as_str(), "answer-1");
        assert_eq!(rdask::block_on(client.gather(&xs)).unwrap(), vec![2, 3]);
        let _ = std::fs::remove_file(&log);
    });
}

#[test]
fn higher_priority_tasks_run_first_on_a_busy_node() {
    let _one = serial();
    bounded(120, || {
        let client = Client::local_with_threads(1).expect("local cluster");
        let log = temp_log("priority");
        // The one thread is busy; then low, high and default tasks queue behind it.
        let blocker = client.submit(logged_inc, (0, 500, log.clone()));
        std::thread::sleep(Duration::from_millis(100));
        let low = TaskOptions::new().priority(-5);
        let high = TaskOptions::new().priority(10);
        let l = client.map_args_with(logged_inc, (1..4).map(|i| (i, 0, log.clone())), &low);
        let d = client.submit(logged_inc, (10, 0, log.clone()));
        let h = client.submit_with(logged_inc, (20, 0, log.clone()), &high);
        rdask::block_on(client.wait(&l, ReturnWhen::AllCompleted)).unwrap();
        for f in [&blocker, &d, &h] {
            rdask::block_on(f.result()).unwrap();
        }
        let order: Vec<i64> = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(|l| l.split(' ').nth(1).unwrap().parse().unwrap())
            .collect();
        assert_eq!(order, vec![0, 20, 10, 1, 2, 3]);
        let _ = std::fs::remove_file(&log);
    });
}

#[test]
fn wait_and_as_completed_follow_completion_order() {
    let _one = serial();
    bounded(120, || {
        // as_completed: 900, 100 and 500 ms tasks running at once come out fastest first,
        // and one added while iterating comes out too.
        let local = Client::local_with_threads(3).expect("local cluster");
        let futures = local.map_args(slow_inc, [(3, 900u64), (1, 100), (2, 500)]);
        let mut done = local.as_completed(futures);
        let mut seen = Vec::new();
        rdask::block_on(async {
            while let Some((_, r)) = done.next_with_result().await {
                let v = r.unwrap();
                seen.push(v);
                if v == 2 {
                    done.add(local.submit(slow_inc, (99, 0)));
                }
            }
        });
        assert_eq!(seen.len(), 4, "{seen:?}");
        assert_eq!(seen[0], 2, "{seen:?}");
        let at = |v| seen.iter().position(|&x| x == v).unwrap();
        assert!(at(3) < at(4) && seen.contains(&100), "{seen:?}");
        drop(local);

        let (_nodes, client) = cluster();

        let slow = client.submit(slow_inc, (1, 2_000));
        let fast = client.submit(slow_inc, (2, 10));
        let both = [slow.clone(), fast.clone()];
        let w = rdask::block_on(client.wait(&both, ReturnWhen::FirstCompleted)).unwrap();
        assert_eq!(w.done.len(), 1);
        assert_eq!(w.done[0].key(), fast.key());
        assert_eq!(w.not_done[0].key(), slow.key());

        let failing = client.submit(flaky, (3, 5, temp_log("never")));
        let w = rdask::block_on(
            client.wait(&[slow.clone(), failing.clone()], ReturnWhen::FirstException),
        )
        .unwrap();
        assert_eq!(w.done.len(), 1);
        assert_eq!(w.done[0].key(), failing.key());
        let all = rdask::block_on(client.wait(&both, ReturnWhen::AllCompleted)).unwrap();
        assert_eq!(all.done.len(), 2);
        // progress: quiet here (not a terminal), it returns once all are done.
        let more = client.map_args(slow_inc, (0..6).map(|i| (i, 50u64)));
        let mut mixed = vec![slow.clone(), failing.clone()];
        mixed.extend(more);
        let summary = rdask::block_on(client.progress(&mixed)).unwrap();
        assert_eq!(
            summary,
            rdask::ProgressSummary {
                finished: 7,
                errors: 1,
                other: 0
            }
        );
    });
}

/// One script, written twice: for the async client and for the blocking one.
async fn script_async(client: &Client) -> (i64, Vec<i64>, FutureStatus) {
    let xs = client.map(inc, 0..20);
    let sums = client.map_args(rdask_tests::add, xs.iter().zip(xs.iter().rev()));
    let total = client.submit(rdask_tests::add, (&sums[0], &sums[19]));
    let values = client.gather(&sums).await.unwrap();
    (total.await.unwrap(), values, xs[0].status().await.unwrap())
}

fn script_blocking(client: &rdask::blocking::Client) -> (i64, Vec<i64>, FutureStatus) {
    let xs = client.map(inc, 0..20);
    let sums = client.map_args(rdask_tests::add, xs.iter().zip(xs.iter().rev()));
    let total = client.submit(rdask_tests::add, (&sums[0], &sums[19]));
    let values = client.gather(&sums).unwrap();
    (total.result().unwrap(), values, xs[0].status().unwrap())
}

#[test]
fn a_blocking_and_an_async_client_give_the_same_results_and_the_last_is_the_default() {
    let _one = serial();
    bounded(120, || {
        let (nodes, client) = cluster();
        let by_async = rdask::block_on(script_async(&client));
        let blocking = rdask::blocking::Client::connect(&nodes[1].multiaddr).expect("connect");
        // The last client created is the default one.
        assert_eq!(
            Client::current().unwrap().session_id(),
            blocking.asynchronous().session_id()
        );
        let by_blocking = script_blocking(&blocking);
        assert_eq!(by_async, by_blocking);
        assert_eq!(by_async.0, 2 * 21);
        assert_eq!(by_async.2, FutureStatus::Finished);
        // Opting out leaves no default; a handle from `current()` shares the client.
        blocking.set_as_default(false);
        assert!(matches!(Client::current(), Err(Error::NoDefaultClient)));
        client.set_as_default(true);
        let again = Client::current().unwrap();
        assert_eq!(again.session_id(), client.session_id());
        drop(again);
        assert_eq!(
            rdask::block_on(client.submit(inc, (1,)).result()).unwrap(),
            2
        );
    });
}

#[test]
fn delayed_graphs_run_shared_parts_once_and_mix_with_futures() {
    let _one = serial();
    bounded(120, || {
        let (_nodes, client) = cluster();
        let log = temp_log("delayed");
        // a diamond: `a` feeds `b` and `c`, both feed `d`; nothing runs before compute.
        let a = rdask::delayed(logged_inc, (1, 0, log.clone()));
        let b = rdask::delayed(logged_inc, (&a, 0, log.clone()));
        let c = rdask::delayed(logged_inc, (&a, 0, log.clone()));
        let d = rdask::delayed(rdask_tests::add, (&b, &c));
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(runs(&log), 0, "delayed calls run only when computed");
        assert_eq!(rdask::block_on(client.compute(&d)).unwrap(), 3 + 3);
        assert_eq!(runs(&log), 3, "a ran once for both of its users");

        // Several values computed together share their parts; an unused branch is culled.
        let unused = rdask::delayed(logged_inc, (&a, 1, log.clone()));
        let e = rdask::delayed(logged_inc, (&b, 0, log.clone()));
        let both = rdask::block_on(client.compute_all(&[b.clone(), e.clone()])).unwrap();
        assert_eq!(both, vec![3, 4]);
        assert_eq!(runs(&log), 3 + 3, "a, b and e (not the unused branch)");
        drop(unused);

        // Futures as arguments of delayed calls, delayed values as arguments of submit.
        let f = client.submit(inc, (10,));
        let g = rdask::delayed(rdask_tests::add, (&f, &d));
        let h = client.submit(inc, (&g,));
        assert_eq!(rdask::block_on(h.result()).unwrap(), 11 + 6 + 1);
        // persist gives a future; the default client computes too.
        let p = client.persist(&g);
        assert_eq!(rdask::block_on(p.result()).unwrap(), 17);
        assert_eq!(rdask::block_on(g.compute()).unwrap(), 17);

        // The graph as DOT: five calls and the future, six edges.
        let dot = g.to_dot();
        assert_eq!(dot.matches("->").count(), 6, "{dot}");
        assert_eq!(dot.matches("shape=box").count(), 1, "{dot}");

        // A linear chain runs as one task: each call runs once, and the inner ones are
        // never tasks of their own (unfused, the first call's value would be held while the
        // second, 300 ms long, runs).
        let before = runs(&log);
        let mut chain = rdask::delayed(logged_inc, (100, 300, log.clone()));
        let first = chain.clone();
        for _ in 0..4 {
            chain = rdask::delayed(logged_inc, (&chain, 300, log.clone()));
        }
        let running = client.persist(&chain);
        std::thread::sleep(Duration::from_millis(450));
        let explained = rdask::block_on(client.explain_keys(&[first.key().clone()])).unwrap();
        assert!(
            explained[0].contains("unknown"),
            "the chain's first call was fused, not a task: {explained:?}"
        );
        assert_eq!(rdask::block_on(running.result()).unwrap(), 105);
        assert_eq!(runs(&log), before + 5, "every call of the chain ran once");
        let _ = std::fs::remove_file(&log);
    });
}

#[test]
fn a_dropped_future_releases_its_value_on_the_node() {
    let _one = serial();
    bounded(120, || {
        let (_nodes, client) = cluster();
        let stored = || -> u64 {
            rdask::block_on(client.nodes())
                .unwrap()
                .iter()
                .map(|n| n.load.memory_used)
                .sum()
        };
        let before = stored();
        let big = client.submit(rdask_tests::blob, (4, 7));
        let value = rdask::block_on(big.result()).unwrap();
        assert_eq!(value.len(), 4 << 20);
        let held = stored();
        assert!(held >= before + (4 << 20), "{before} → {held}");
        drop(big);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = stored();
            if now < before + (1 << 20) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "still {now} bytes held after the future was dropped (before: {before})"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    });
}

#[test]
fn a_dataset_published_through_one_node_is_read_and_unpublished_through_another() {
    let _one = serial();
    bounded(120, || {
        let (nodes, publisher) = cluster();
        let numbers = publisher.map(inc, 0..20i64);
        rdask::block_on(publisher.publish_dataset("numbers", &numbers)).expect("publish");
        match rdask::block_on(publisher.publish_dataset("numbers", &numbers)) {
            Err(Error::DatasetExists(name)) => assert_eq!(name, "numbers"),
            other => panic!("expected DatasetExists, got {other:?}"),
        }
        // The publisher goes: the dataset keeps the results.
        drop(numbers);
        publisher.close();

        // A second client, of the other node, sees the name once gossip brings it.
        let reader = Client::connect(&nodes[1].multiaddr).expect("connect to the second node");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !rdask::block_on(reader.list_datasets())
            .expect("list")
            .contains(&"numbers".to_string())
        {
            assert!(
                Instant::now() < deadline,
                "the dataset never reached the second node"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let got: Vec<rdask::Future<i64>> =
            rdask::block_on(reader.get_dataset("numbers")).expect("get");
        assert_eq!(
            rdask::block_on(reader.gather(&got)).expect("gather through the other node"),
            (1..=20).collect::<Vec<i64>>()
        );
        assert_eq!(
            rdask::block_on(got[3].status()).unwrap(),
            FutureStatus::Finished
        );
        // A dataset future as an argument: fine at its owner's node only; elsewhere the
        // node names the key it does not know.
        match rdask::block_on(reader.submit(inc, (&got[0],)).result()) {
            Err(Error::GraphRejected(e)) => {
                assert!(e.to_string().contains(got[0].key().as_str()), "{e}")
            }
            other => panic!("expected a rejected graph, got {other:?}"),
        }
        match rdask::block_on(reader.get_dataset::<i64>("nothing")) {
            Err(Error::NoDataset(name)) => assert_eq!(name, "nothing"),
            other => panic!("expected NoDataset, got {other:?}"),
        }

        // Unpublished through the second node: the name goes, and the owner releases the
        // results (nobody else holds them).
        rdask::block_on(reader.unpublish_dataset("numbers")).expect("unpublish");
        assert!(
            !rdask::block_on(reader.list_datasets())
                .unwrap()
                .contains(&"numbers".to_string())
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match rdask::block_on(got[0].status()).unwrap() {
                FutureStatus::Lost => break,
                s => assert!(
                    Instant::now() < deadline,
                    "the owner still holds the result after the unpublish: {s:?}"
                ),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
}

#[test]
fn tasks_submit_tasks_and_wait_for_them_without_holding_a_thread() {
    let _one = serial();
    bounded(120, || {
        // Two nodes of one thread each and four parents at once: were a waiting parent to
        // keep its thread, two parents would wait forever for children with no thread.
        let (_nodes, client) = cluster();
        let parents: Vec<_> = [10i64, 20, 30, 40]
            .iter()
            .map(|&n| client.submit(sum_of_incs, (n,)))
            .collect();
        let sums = rdask::block_on(client.gather(&parents)).expect("the parents finish");
        let expected: Vec<i64> = [10i64, 20, 30, 40].iter().map(|&n| (1..=n).sum()).collect();
        assert_eq!(sums, expected);
        // Outside a task, worker_client is a clear error.
        assert!(matches!(rdask::worker_client(), Err(Error::NotInTask)));
    });
}

#[test]
fn replicate_broadcast_and_rebalance_move_copies_between_nodes() {
    let _one = serial();
    bounded(120, || {
        let (_nodes, client) = cluster();
        let members: Vec<String> = rdask::block_on(client.nodes())
            .unwrap()
            .iter()
            .map(|n| n.member.id.0.to_string())
            .collect();
        // Eight results pinned to the first node.
        let here = TaskOptions::new().workers([members[0].clone()]);
        let pinned: Vec<_> = (0..8i64)
            .map(|i| client.submit_with(inc, (i,), &here))
            .collect();
        rdask::block_on(client.wait(&pinned, ReturnWhen::AllCompleted)).unwrap();
        let before = rdask::block_on(client.who_has(&pinned)).unwrap();
        assert!(
            before.iter().all(|h| h == &vec![members[0].clone()]),
            "{before:?}"
        );

        // Rebalance: half of them move to the other node, each held once. (Until the
        // entry node's core has taken the other node in, about a second after gossip
        // lists it, there is nowhere to move to.)
        let deadline = Instant::now() + Duration::from_secs(20);
        let moved = loop {
            let moved = rdask::block_on(client.rebalance(&pinned)).expect("rebalance");
            if moved > 0 || Instant::now() > deadline {
                break moved;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        assert_eq!(moved, 4);
        let after = rdask::block_on(client.who_has(&pinned)).unwrap();
        let on_second = after
            .iter()
            .filter(|h| h == &&vec![members[1].clone()])
            .count();
        assert_eq!(on_second, 4, "{after:?}");
        assert!(after.iter().all(|h| h.len() == 1), "{after:?}");
        // The values are still right, wherever they are.
        assert_eq!(
            rdask::block_on(client.gather(&pinned)).unwrap(),
            (1..=8).collect::<Vec<i64>>()
        );

        // Replicate: two holders each.
        rdask::block_on(client.replicate(&pinned[..3], 2)).expect("replicate");
        let copies = rdask::block_on(client.who_has(&pinned[..3])).unwrap();
        assert!(copies.iter().all(|h| h.len() == 2), "{copies:?}");

        // Broadcast: every node holds the scattered value.
        let table = rdask::block_on(client.scatter_broadcast(&vec![1u8; 1000])).unwrap();
        let holders = rdask::block_on(client.who_has(std::slice::from_ref(&table))).unwrap();
        assert_eq!(holders[0].len(), 2, "{holders:?}");
    });
}

#[test]
fn collections_of_futures_are_arguments_of_the_collections_of_their_values() {
    let _one = serial();
    bounded(120, || {
        let (_nodes, client) = cluster();
        let xs = client.map(inc, 0..100i64);
        // A Vec of futures for a Vec<i64> parameter: packed on the cluster.
        let total = client.submit(rdask::builtins::sum, (&xs,));
        assert_eq!(
            rdask::block_on(total.result()).unwrap(),
            (1..=100).sum::<i64>()
        );
        // A pair, and a map.
        let d = client.submit(rdask_tests::pair_diff, ((&xs[9], &xs[2]),));
        assert_eq!(rdask::block_on(d.result()).unwrap(), 7);
        let m: std::collections::BTreeMap<String, rdask::Future<i64>> = [
            ("b".to_string(), xs[1].clone()),
            ("a".to_string(), xs[0].clone()),
        ]
        .into();
        let shown = client.submit(rdask_tests::show_map, (m,));
        assert_eq!(rdask::block_on(shown.result()).unwrap(), "a=1,b=2");
        // The same in a delayed graph, and an empty collection.
        let lazy = rdask::delayed(rdask::builtins::sum, (&xs[..10],));
        assert_eq!(rdask::block_on(client.compute(&lazy)).unwrap(), 55);
        let none: Vec<rdask::Future<i64>> = Vec::new();
        let zero = client.submit(rdask::builtins::sum, (none,));
        assert_eq!(rdask::block_on(zero.result()).unwrap(), 0);
    });
}

#[test]
fn waits_are_woken_by_the_completion_not_by_polling() {
    let _one = serial();
    bounded(120, || {
        let node = NodeProcess::start(NODE, &["--nthreads", "2"]);
        let client = Client::connect(&node.multiaddr).expect("connect");
        let metrics = format!("{}/metrics", node.dashboard.as_ref().expect("a dashboard"));
        let requests = || -> u64 {
            let (_, body) = http_get(&metrics);
            body.lines()
                .find_map(|l| l.strip_prefix("rdask_client_requests_total "))
                .expect("the requests counter")
                .trim()
                .parse()
                .expect("a count")
        };
        for when in [ReturnWhen::AllCompleted, ReturnWhen::FirstCompleted] {
            let slow = client.submit(slow_inc, (1, 1_500));
            let slower = client.submit(slow_inc, (2, 1_600));
            rdask::block_on(slow.status()).unwrap(); // accepted by the node
            let before = requests();
            let both = [slow.clone(), slower.clone()];
            let w = rdask::block_on(client.wait(&both, when)).unwrap();
            let asked = requests() - before;
            assert!(!w.done.is_empty(), "{when:?}");
            // One look, then a request the node answers when the tasks finish (polling
            // with pauses up to 100 ms would ask about 20 times in 1.5 s).
            assert!(asked <= 4, "{when:?}: {asked} requests for one wait");
            rdask::block_on(client.wait(&both, ReturnWhen::AllCompleted)).unwrap();
        }
    });
}
