use super::*;
use crate::protocol::{GraphSubmission, next_epoch};
use rdask_graph::{TaskSpec, registry::decode_arg, registry::encode_output, value};

fn inc(args: &[Bytes]) -> Result<Vec<u8>, TaskFailure> {
    encode_output(&(decode_arg::<i64>(args, 0)? + 1))
}
fn add(args: &[Bytes]) -> Result<Vec<u8>, TaskFailure> {
    encode_output(&(decode_arg::<i64>(args, 0)? + decode_arg::<i64>(args, 1)?))
}
fn boom(_: &[Bytes]) -> Result<Vec<u8>, TaskFailure> {
    Err(TaskFailure::Panicked("boom".into()))
}
static INC: TaskEntry = TaskEntry {
    name: "inc",
    arity: 1,
    invoke: inc,
};
static ADD: TaskEntry = TaskEntry {
    name: "add",
    arity: 2,
    invoke: add,
};
static BOOM: TaskEntry = TaskEntry {
    name: "boom",
    arity: 1,
    invoke: boom,
};

fn core() -> NodeCore {
    let registry = Box::leak(Box::new(Registry::from_entries([&INC, &ADD, &BOOM])));
    NodeCore::new("node-a", registry, 2)
}
fn lit(v: i64) -> Arg {
    Arg::Value(value::encode(&v).unwrap())
}
fn key(k: &str) -> Arg {
    Arg::Key(Key::from(k))
}
fn spec(k: &str, f: &str, args: Vec<Arg>) -> TaskSpec {
    TaskSpec::new(Key::from(k), f, args)
}
fn submit(core: &mut NodeCore, id: u128, tasks: Vec<TaskSpec>) -> SubmitOutcome {
    let keep = tasks.iter().map(|t| t.key.clone()).collect();
    core.handle_submit(
        RequestId(id as u64),
        vec![GraphSubmission {
            id: GraphId(id),
            tasks,
            keep,
        }],
    );
    match core.take_replies().pop() {
        Some((_, ClientResponse::Submitted(mut o))) => o.pop().unwrap(),
        other => panic!("unexpected reply {other:?}"),
    }
}
/// Runs every job the core hands out, in order, until it hands out none; returns the keys
/// in the order they ran.
fn run_all(core: &mut NodeCore) -> Vec<String> {
    let mut ran = Vec::new();
    loop {
        let jobs = core.take_jobs();
        if jobs.is_empty() {
            return ran;
        }
        for j in jobs {
            ran.push(j.key.to_string());
            complete(core, j);
        }
    }
}
/// Runs one job the core handed out and tells the core it is done.
fn complete(core: &mut NodeCore, j: Job) {
    let result = j.entry.call(&j.args);
    core.handle_task_done(TaskDone {
        task: j.task,
        result,
        elapsed_ns: 10_000,
    });
}
/// Independent tasks `inc-i` adding one to `i`, for each `i` of `range`.
fn incs(range: std::ops::Range<i64>) -> Vec<TaskSpec> {
    range
        .map(|i| spec(&format!("inc-{i}"), "inc", vec![lit(i)]))
        .collect()
}
fn gather(core: &mut NodeCore, keys: &[&str]) -> Vec<KeyResult> {
    core.handle_gather(
        RequestId(999),
        keys.iter().map(|k| Key::from(*k)).collect(),
        0,
    );
    match core.take_replies().pop() {
        Some((RequestId(999), ClientResponse::Results(r))) => r,
        other => panic!("unexpected reply {other:?}"),
    }
}
fn int(r: &KeyResult) -> i64 {
    match r {
        KeyResult::Value(b) => value::decode(b).unwrap(),
        other => panic!("expected a value, got {other:?}"),
    }
}

#[test]
fn a_chain_of_dependent_tasks_runs_in_order_and_gives_its_value() {
    let mut c = core();
    let mut tasks = vec![spec("inc-0", "inc", vec![lit(0)])];
    for i in 1..100 {
        tasks.push(spec(
            &format!("inc-{i}"),
            "inc",
            vec![key(&format!("inc-{}", i - 1))],
        ));
    }
    tasks.reverse();
    assert_eq!(submit(&mut c, 1, tasks), SubmitOutcome::Accepted);
    let ran = run_all(&mut c);
    assert_eq!(ran.len(), 100);
    assert_eq!(ran[0], "inc-0");
    assert_eq!(int(&gather(&mut c, &["inc-99"])[0]), 100);
    assert_eq!(c.load().queued, 0);
    assert_eq!(c.load().running, 0);
}

#[test]
fn a_failed_task_fails_its_dependents_with_the_same_cause_and_the_node_keeps_serving() {
    let mut c = core();
    submit(
        &mut c,
        1,
        vec![
            spec("boom-1", "boom", vec![lit(1)]),
            spec("inc-1", "inc", vec![key("boom-1")]),
            spec("add-1", "add", vec![key("inc-1"), lit(2)]),
            spec("inc-2", "inc", vec![lit(5)]),
        ],
    );
    let ran = run_all(&mut c);
    assert!(
        !ran.contains(&"inc-1".to_string()),
        "a dependent of a failed task must not run"
    );
    let r = gather(&mut c, &["boom-1", "inc-1", "add-1", "inc-2"]);
    for e in &r[..3] {
        match e {
            KeyResult::Error(e) => {
                assert_eq!(e.kind, TaskErrorKind::Panicked);
                assert_eq!(&*e.message, "boom");
                assert_eq!(e.key.as_str(), "boom-1");
                assert_eq!(e.node.as_deref(), Some("node-a"));
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }
    assert_eq!(int(&r[3]), 6);
    // a new graph depending on the failed key fails at once with the same cause
    submit(&mut c, 2, vec![spec("inc-3", "inc", vec![key("boom-1")])]);
    assert!(run_all(&mut c).is_empty());
    assert!(
        matches!(&gather(&mut c, &["inc-3"])[0], KeyResult::Error(e) if e.key.as_str() == "boom-1")
    );
    // and an unrelated graph runs
    submit(&mut c, 3, vec![spec("inc-4", "inc", vec![lit(1)])]);
    run_all(&mut c);
    assert_eq!(int(&gather(&mut c, &["inc-4"])[0]), 2);
    // A retry of the last key runs the failed chain below it again (and it fails again).
    c.handle_retry(RequestId(77), vec![Key::from("add-1")]);
    assert!(matches!(
        c.take_replies().as_slice(),
        [(RequestId(77), ClientResponse::Retried(3))]
    ));
    assert_eq!(run_all(&mut c), vec!["boom-1".to_string()]);
    assert!(
        matches!(&gather(&mut c, &["add-1"])[0], KeyResult::Error(e) if e.key.as_str() == "boom-1")
    );
}

#[test]
fn a_rejected_graph_runs_nothing_and_changes_nothing() {
    let mut c = core();
    let out = submit(
        &mut c,
        1,
        vec![
            spec("inc-1", "inc", vec![lit(1)]),
            spec("x-1", "nope::missing", vec![]),
        ],
    );
    assert!(matches!(
        out,
        SubmitOutcome::Rejected(GraphError::UnknownFunction { .. })
    ));
    assert!(c.take_jobs().is_empty());
    assert_eq!(c.tracked_keys(), 0);
    let out = submit(&mut c, 2, vec![spec("inc-1", "inc", vec![key("gone-1")])]);
    assert!(matches!(
        out,
        SubmitOutcome::Rejected(GraphError::MissingDependency { .. })
    ));
    assert_eq!(c.tracked_keys(), 0);
    assert_eq!(gather(&mut c, &["inc-1"]), vec![KeyResult::Unknown]);
}

#[test]
fn resubmitting_a_graph_id_is_a_no_op_and_reusing_it_for_another_graph_is_refused() {
    let mut c = core();
    let g = vec![spec("inc-1", "inc", vec![lit(1)])];
    submit(&mut c, 7, g.clone());
    assert_eq!(submit(&mut c, 7, g), SubmitOutcome::Accepted);
    assert_eq!(run_all(&mut c), ["inc-1"]);
    let other = vec![spec("inc-9", "inc", vec![lit(1)])];
    assert!(matches!(
        submit(&mut c, 7, other),
        SubmitOutcome::Rejected(GraphError::GraphIdReused { .. })
    ));
}

#[test]
fn a_gather_waits_for_unfinished_keys_and_a_timer_answers_with_what_is_ready() {
    let mut c = core();
    submit(
        &mut c,
        1,
        vec![
            spec("inc-1", "inc", vec![lit(1)]),
            spec("inc-2", "inc", vec![key("inc-1")]),
        ],
    );
    c.handle_gather(RequestId(50), vec![Key::from("inc-2")], 1000);
    assert!(c.take_replies().is_empty());
    assert_eq!(c.take_timers(), vec![(RequestId(50), 1000)]);
    c.handle_gather(
        RequestId(51),
        vec![Key::from("inc-1"), Key::from("inc-2")],
        1000,
    );
    let jobs = c.take_jobs();
    assert_eq!(jobs.len(), 1);
    let j = &jobs[0];
    c.handle_task_done(TaskDone {
        task: j.task,
        result: j.entry.call(&j.args),
        elapsed_ns: 1,
    });
    c.handle_wait_expired(RequestId(51));
    match c.take_replies().as_slice() {
        [(RequestId(51), ClientResponse::Results(r))] => {
            assert_eq!(int(&r[0]), 2);
            assert_eq!(r[1], KeyResult::Pending);
        }
        other => panic!("unexpected {other:?}"),
    }
    run_all(&mut c);
    match c.take_replies().as_slice() {
        [(RequestId(50), ClientResponse::Results(r))] => assert_eq!(int(&r[0]), 3),
        other => panic!("unexpected {other:?}"),
    }
    // a stale timer does nothing
    c.handle_wait_expired(RequestId(50));
    assert!(c.take_replies().is_empty());
}

#[test]
fn an_await_of_statuses_is_answered_when_a_key_finishes_or_every_key_with_all() {
    let mut c = core();
    submit(
        &mut c,
        1,
        vec![
            spec("inc-1", "inc", vec![lit(1)]),
            spec("inc-2", "inc", vec![key("inc-1")]),
        ],
    );
    let both = || vec![Key::from("inc-1"), Key::from("inc-2")];
    c.handle_await_status(RequestId(60), both(), false, 2_000);
    c.handle_await_status(RequestId(61), both(), true, 2_000);
    c.handle_await_status(RequestId(62), both(), true, 0);
    // Held (with timers), except the one that may not wait.
    match c.take_replies().as_slice() {
        [(RequestId(62), ClientResponse::Statuses(s))] => {
            assert_eq!(s, &vec![KeyStatus::Pending, KeyStatus::Pending])
        }
        other => panic!("unexpected {other:?}"),
    }
    let jobs = c.take_jobs();
    assert_eq!(jobs.len(), 1);
    let j = &jobs[0];
    c.handle_task_done(TaskDone {
        task: j.task,
        result: j.entry.call(&j.args),
        elapsed_ns: 1,
    });
    // The first key finished: the await of any is answered, not the await of all.
    match c.take_replies().as_slice() {
        [(RequestId(60), ClientResponse::Statuses(s))] => {
            assert_eq!(s, &vec![KeyStatus::Finished, KeyStatus::Pending])
        }
        other => panic!("unexpected {other:?}"),
    }
    run_all(&mut c);
    match c.take_replies().as_slice() {
        [(RequestId(61), ClientResponse::Statuses(s))] => {
            assert_eq!(s, &vec![KeyStatus::Finished, KeyStatus::Finished])
        }
        other => panic!("unexpected {other:?}"),
    }
    // Done already, or unknown here: answered at once; stale timers do nothing.
    c.handle_await_status(RequestId(63), vec![Key::from("nope")], false, 2_000);
    c.handle_wait_expired(RequestId(60));
    match c.take_replies().as_slice() {
        [(RequestId(63), ClientResponse::Statuses(s))] => assert_eq!(s, &vec![KeyStatus::Unknown]),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn intermediate_values_are_freed_once_their_dependents_finish_and_their_specs_with_the_last_dependent()
 {
    let mut c = core();
    let tasks = vec![
        spec("inc-1", "inc", vec![lit(1)]),
        spec("inc-2", "inc", vec![key("inc-1")]),
        spec("add-3", "add", vec![key("inc-2"), key("inc-1")]),
    ];
    // the client keeps only the last one
    c.handle_submit(
        RequestId(1),
        vec![GraphSubmission {
            id: GraphId(1),
            tasks,
            keep: vec![Key::from("add-3")],
        }],
    );
    c.take_replies();
    run_all(&mut c);
    // The intermediate values are freed; their specs stay (lineage) until add-3 goes.
    assert_eq!(c.load().stored, 1);
    assert_eq!(c.tracked_keys(), 3);
    assert_eq!(int(&gather(&mut c, &["add-3"])[0]), 5);
    c.handle_release(RequestId(2), vec![Key::from("add-3")]);
    assert_eq!(c.tracked_keys(), 0);
    assert_eq!(c.load(), LoadSummary::default());
}

#[test]
fn releasing_unfinished_work_cancels_it() {
    let mut c = core();
    let tasks: Vec<_> = (0..50)
        .map(|i| spec(&format!("inc-{i}"), "inc", vec![lit(i)]))
        .collect();
    submit(&mut c, 1, tasks);
    let started = c.take_jobs();
    assert!(!started.is_empty() && started.len() < 50);
    c.handle_release(
        RequestId(2),
        (0..50).map(|i| Key::from(format!("inc-{i}"))).collect(),
    );
    for j in started {
        c.handle_task_done(TaskDone {
            task: j.task,
            result: j.entry.call(&j.args),
            elapsed_ns: 1,
        });
    }
    assert!(c.take_jobs().is_empty(), "released tasks must not start");
    assert_eq!(c.tracked_keys(), 0);
    assert_eq!(c.load(), LoadSummary::default());
}

#[test]
fn ready_tasks_start_in_priority_order_and_the_pool_is_not_flooded() {
    let mut c = core();
    let tasks: Vec<_> = (0..1000)
        .map(|i| spec(&format!("inc-{i}"), "inc", vec![lit(i)]))
        .collect();
    submit(&mut c, 1, tasks);
    let first = c.take_jobs();
    assert_eq!(
        first.len(),
        2,
        "before any measurement (1 ms assumed): one task per thread"
    );
    assert_eq!(first[0].key.as_str(), "inc-0");
    assert_eq!(first[1].key.as_str(), "inc-1");
    for j in first {
        c.handle_task_done(TaskDone {
            task: j.task,
            result: j.entry.call(&j.args),
            elapsed_ns: 1_000,
        });
    }
    // tiny tasks: the pool gets a deeper queue
    let next = c.take_jobs();
    assert!(next.len() > 100, "{}", next.len());
    assert!(next.len() <= 2 * 256, "{}", next.len());
    assert_eq!(next[0].key.as_str(), "inc-2");
}

#[test]
fn the_same_inputs_give_the_same_outputs() {
    let trace = || {
        let mut c = core();
        let mut tasks = Vec::new();
        for i in 0..64 {
            tasks.push(spec(&format!("leaf-{i}"), "inc", vec![lit(i)]));
        }
        for i in 0..32 {
            tasks.push(spec(
                &format!("add-{i}"),
                "add",
                vec![
                    key(&format!("leaf-{}", 2 * i)),
                    key(&format!("leaf-{}", 2 * i + 1)),
                ],
            ));
        }
        submit(&mut c, 1, tasks);
        run_all(&mut c)
    };
    assert_eq!(trace(), trace());
}

#[test]
fn a_key_cancelled_while_running_is_unknown_to_later_graphs() {
    let mut c = core();
    submit(&mut c, 1, vec![spec("inc-1", "inc", vec![lit(1)])]);
    let jobs = c.take_jobs();
    c.handle_release(RequestId(2), vec![Key::from("inc-1")]);
    // a later graph naming the cancelled key is refused, not left waiting forever
    let out = submit(&mut c, 3, vec![spec("inc-2", "inc", vec![key("inc-1")])]);
    assert!(
        matches!(
            out,
            SubmitOutcome::Rejected(GraphError::MissingDependency { .. })
        ),
        "{out:?}"
    );
    for j in jobs {
        c.handle_task_done(TaskDone {
            task: j.task,
            result: j.entry.call(&j.args),
            elapsed_ns: 1,
        });
    }
    assert_eq!(c.tracked_keys(), 0);
    // and the same key may be submitted again as a new task
    submit(&mut c, 4, vec![spec("inc-1", "inc", vec![lit(5)])]);
    run_all(&mut c);
    assert_eq!(int(&gather(&mut c, &["inc-1"])[0]), 6);
}

#[test]
fn tasks_holding_a_resource_run_no_more_at_once_than_the_node_has() {
    let mut c = core();
    c.set_resources(vec![("GPU".into(), 1)]);
    let tasks: Vec<_> = (0..5)
        .map(|i| {
            let mut t = spec(&format!("gpu-{i}"), "inc", vec![lit(i)]);
            t.resources = vec![("GPU".into(), 1)];
            t
        })
        .chain([spec("cpu-0", "inc", vec![lit(7)])])
        .collect();
    submit(&mut c, 1, tasks);
    let mut ran = Vec::new();
    loop {
        let jobs = c.take_jobs();
        if jobs.is_empty() {
            break;
        }
        let gpu = jobs
            .iter()
            .filter(|j| j.key.as_str().starts_with("gpu"))
            .count();
        assert!(gpu <= 1, "{gpu} tasks hold the one GPU at once");
        for j in jobs {
            ran.push(j.key.to_string());
            c.handle_task_done(TaskDone {
                task: j.task,
                result: j.entry.call(&j.args),
                elapsed_ns: 1_000,
            });
        }
    }
    assert_eq!(ran.len(), 6, "{ran:?}");
    // The task that needs no GPU did not wait behind those that do.
    assert!(ran[..2].contains(&"cpu-0".to_string()), "{ran:?}");
}

impl NodeCore {
    /// The claims of the ownership table it asked for since the last call.
    fn claims(&mut self) -> Vec<(GraphId, u64)> {
        self.take_owner_writes()
            .into_iter()
            .filter_map(|w| match w {
                OwnerWrite::Claim { graph, epoch } => Some((graph, epoch)),
                OwnerWrite::Release { .. } => None,
            })
            .collect()
    }
}

fn core_named(name: &str) -> NodeCore {
    let registry = Box::leak(Box::new(Registry::from_entries([&INC, &ADD, &BOOM])));
    NodeCore::new(name, registry, 2)
}
fn member(core: &NodeCore, name: &str, alive: bool) -> PeerUpdate {
    PeerUpdate {
        node: NodeId(Arc::from(name)),
        nthreads: 2,
        functions_digest: core.registry.digest(),
        alive,
        load: LoadSummary::default(),
        resources: Vec::new(),
        aliases: Vec::new(),
    }
}
/// Hands every batch `from` has for `to` over to it.
fn deliver(from: &mut NodeCore, to: &mut NodeCore) {
    let me = NodeId(Arc::from(from.node()));
    for (dest, batch) in from.take_sends() {
        if &*dest.0 == to.node() {
            to.handle_peer(&me, batch);
        }
    }
}

#[test]
fn a_backup_takes_over_the_graphs_of_a_dead_owner_and_computes_them() {
    let mut a = core_named("node-a");
    let mut b = core_named("node-b");
    let both =
        |c: &NodeCore, a_alive| vec![member(c, "node-a", a_alive), member(c, "node-b", true)];
    a.handle_members(&both(&a, true));
    b.handle_members(&both(&b, true));
    assert_eq!(a.backups(), vec![NodeId(Arc::from("node-b"))]);
    // Session 7's graph: x = inc(1); y = add(x, 10). The backup gets a copy.
    let id = (7u128 << 64) | 1;
    let g = vec![
        spec("x", "inc", vec![lit(1)]),
        spec("y", "add", vec![key("x"), lit(10)]),
    ];
    assert_eq!(submit(&mut a, id, g), SubmitOutcome::Accepted);
    assert_eq!(a.claims(), vec![(GraphId(7u128 << 64), 1)]);
    deliver(&mut a, &mut b);
    assert_eq!(b.replica_keys(), (1, 2));
    // The owner dies before running anything; the backup learns it and takes over.
    b.handle_members(&both(&b, false));
    assert_eq!(
        b.claims(),
        vec![(GraphId(7u128 << 64), next_epoch(1, "node-b"))]
    );
    assert_eq!(b.stats().takeovers, 1);
    assert!(b.owns_session(7));
    run_all(&mut b);
    let r = gather(&mut b, &["y"]);
    assert_eq!(int(&r[0]), 12);
    // Submitting the same graph again (a client not knowing whether it arrived) is a no-op.
    let again = vec![
        spec("x", "inc", vec![lit(1)]),
        spec("y", "add", vec![key("x"), lit(10)]),
    ];
    assert_eq!(submit(&mut b, id, again), SubmitOutcome::Accepted);
    assert!(run_all(&mut b).is_empty(), "nothing runs twice");
}

#[test]
fn a_leaving_owner_hands_its_results_and_graphs_over_and_nothing_is_computed_again() {
    let mut a = core_named("node-a");
    let mut b = core_named("node-b");
    let all = |c: &NodeCore| vec![member(c, "node-a", true), member(c, "node-b", true)];
    a.handle_members(&all(&a));
    b.handle_members(&all(&b));
    let id = (9u128 << 64) | 1;
    let g = vec![
        spec("x", "inc", vec![lit(1)]),
        spec("y", "add", vec![key("x"), lit(10)]),
    ];
    assert_eq!(submit(&mut a, id, g), SubmitOutcome::Accepted);
    deliver(&mut a, &mut b);
    // x runs on the owner; y is not placed yet when the owner is told to stop.
    let job = a.take_jobs().into_iter().find(|j| j.key.as_str() == "x");
    // The client waits for y at the owner when it is told to stop.
    a.handle_gather(RequestId(5), vec![Key::from("y")], 60_000);
    a.handle_leave();
    if let Some(j) = job {
        let result = j.entry.call(&j.args);
        a.handle_task_done(TaskDone {
            task: j.task,
            result,
            elapsed_ns: 1_000,
        });
    }
    // Leaving, Take x, then (once stored) HandOver; the backup fetches and confirms.
    for _ in 0..10 {
        deliver(&mut a, &mut b);
        deliver(&mut b, &mut a);
    }
    assert!(a.left(), "the leaving owner handed everything over");
    // The waiting client is sent on at once (its timer would have answered "unknown" for
    // keys the node forgot, which reads as lost results).
    assert!(matches!(
        a.take_replies().as_slice(),
        [(RequestId(5), ClientResponse::Moved(_))]
    ));
    a.handle_wait_expired(RequestId(5));
    assert!(a.take_replies().is_empty());
    assert_eq!(b.stats().takeovers, 1);
    // Only y runs at the backup: x's value was handed over, not computed again.
    let ran = run_all(&mut b);
    assert_eq!(ran, vec!["y".to_string()]);
    assert_eq!(int(&gather(&mut b, &["y"])[0]), 12);
    // The client still connected to the node that left is sent on, not told its keys are
    // unknown (which would read as lost results).
    a.handle_gather(RequestId(7), vec![Key::from("y")], 1_000);
    assert!(matches!(
        a.take_replies().as_slice(),
        [(RequestId(7), ClientResponse::Moved(_))]
    ));
}

#[test]
fn a_stale_owner_steps_down_when_a_partition_heals_and_its_client_is_sent_to_the_new_owner() {
    let names = ["node-a", "node-b", "node-c"];
    let mut cores: Vec<NodeCore> = names.iter().map(|n| core_named(n)).collect();
    // `view[i]`: who node i sees alive.
    let members = |c: &NodeCore, alive: [bool; 3]| -> Vec<PeerUpdate> {
        names
            .iter()
            .zip(alive)
            .map(|(n, a)| member(c, n, a))
            .collect()
    };
    for c in cores.iter_mut() {
        let m = members(c, [true; 3]);
        c.handle_members(&m);
    }
    // node-a owns session 5; one backup of it takes over should a die.
    let id = (5u128 << 64) | 1;
    let g = vec![
        spec("x", "inc", vec![lit(1)]),
        spec("y", "add", vec![key("x"), lit(10)]),
    ];
    assert_eq!(submit(&mut cores[0], id, g), SubmitOutcome::Accepted);
    assert_eq!(cores[0].claims(), vec![(GraphId(5u128 << 64), 1)]);
    let (a, rest) = cores.split_at_mut(1);
    let (b, c) = rest.split_at_mut(1);
    let me = NodeId(Arc::from("node-a"));
    for (dest, batch) in a[0].take_sends() {
        match &*dest.0 {
            "node-b" => b[0].handle_peer(&me, batch),
            _ => c[0].handle_peer(&me, batch),
        }
    }
    // A client waits on node-a.
    a[0].handle_gather(RequestId(42), vec![Key::from("y")], 60_000);
    // The network splits a from {b, c}: each side declares the other dead; b and c (a
    // majority) take a's graph over, a (alone) takes over nothing.
    let m = members(&a[0], [true, false, false]);
    a[0].handle_members(&m);
    assert_eq!(a[0].claims(), Vec::new());
    for x in [&mut b[0], &mut c[0]] {
        let m = members(x, [false, true, true]);
        x.handle_members(&m);
    }
    let claims: Vec<_> = [&mut b[0], &mut c[0]]
        .into_iter()
        .flat_map(|x| x.claims())
        .collect();
    assert_eq!(claims.len(), 1, "one take-over: {claims:?}");
    let epoch = claims[0].1;
    assert!(epoch > 1);
    let (new, other) = if b[0].owns_session(5) {
        (&mut b[0], &mut c[0])
    } else {
        (&mut c[0], &mut b[0])
    };
    // The new owner asks the other member for its inventory, then computes the graph.
    for _ in 0..3 {
        deliver(new, other);
        deliver(other, new);
    }
    run_all(new);
    assert_eq!(int(&gather(new, &["y"])[0]), 12);
    // The partition heals: the new owner tells a it was superseded; a steps down.
    let m = members(new, [true; 3]);
    new.handle_members(&m);
    let m = members(&a[0], [true; 3]);
    a[0].handle_members(&m);
    deliver(new, &mut a[0]);
    assert_eq!(a[0].stats().stepped_down, 1);
    assert!(!a[0].owns_session(5));
    // The waiting client is told to go to the new owner, and so is a later submission.
    let replies = a[0].take_replies();
    assert!(
        matches!(
            replies.as_slice(),
            [(RequestId(42), ClientResponse::Moved(_))]
        ),
        "{replies:?}"
    );
    a[0].handle_submit(
        RequestId(43),
        vec![GraphSubmission {
            id: GraphId((5u128 << 64) | 2),
            tasks: vec![spec("z", "inc", vec![lit(2)])],
            keep: vec![Key::from("z")],
        }],
    );
    assert!(matches!(
        a[0].take_replies().as_slice(),
        [(RequestId(43), ClientResponse::Moved(_))]
    ));
    // Nothing of the old graph runs at a any more.
    assert!(run_all(&mut a[0]).is_empty());
}

#[test]
fn a_rebalance_moves_half_of_one_nodes_results_and_drops_them_where_they_were() {
    let mut a = core_named("node-a");
    let mut b = core_named("node-b");
    // Computed on a alone; b joins afterwards.
    let id = (11u128 << 64) | 1;
    let g: Vec<TaskSpec> = (0..4)
        .map(|i| spec(&format!("x{i}"), "inc", vec![lit(i)]))
        .collect();
    assert_eq!(submit(&mut a, id, g), SubmitOutcome::Accepted);
    assert_eq!(run_all(&mut a).len(), 4);
    let all = |c: &NodeCore| vec![member(c, "node-a", true), member(c, "node-b", true)];
    a.handle_members(&all(&a));
    b.handle_members(&all(&b));
    let keys: Vec<Key> = (0..4).map(|i| Key::from(format!("x{i}"))).collect();
    a.handle_rebalance(RequestId(5), keys.clone());
    assert!(matches!(
        a.take_replies().as_slice(),
        [(RequestId(5), ClientResponse::Copying(2))]
    ));
    for _ in 0..6 {
        deliver(&mut a, &mut b);
        deliver(&mut b, &mut a);
    }
    let holders = a.who_has(&keys);
    let on_b = holders
        .iter()
        .filter(|h| h.len() == 1 && &*h[0].0 == "node-b")
        .count();
    assert_eq!(on_b, 2, "{holders:?}");
    assert!(holders.iter().all(|h| h.len() == 1), "{holders:?}");
    // The values are right wherever they are: a fetches the moved ones back for a gather.
    a.handle_gather(RequestId(6), keys.clone(), 1_000);
    for _ in 0..6 {
        deliver(&mut a, &mut b);
        deliver(&mut b, &mut a);
    }
    let replies = a.take_replies();
    let Some((_, ClientResponse::Results(r))) = replies.last() else {
        panic!("no results: {replies:?}");
    };
    assert_eq!(r.iter().map(int).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
}

/// Runs the jobs the core hands out one call of `take_jobs` at a time, and returns the
/// most it handed out at once.
fn run_counting(core: &mut NodeCore) -> (usize, usize) {
    let (mut ran, mut most) = (0, 0);
    loop {
        let jobs = core.take_jobs();
        if jobs.is_empty() {
            return (ran, most);
        }
        most = most.max(jobs.len());
        ran += jobs.len();
        for j in jobs {
            complete(core, j);
        }
    }
}

#[test]
fn a_node_at_its_memory_mark_runs_one_task_at_a_time_until_its_memory_is_down() {
    let mut c = core();
    c.set_memory_limit(Some(1000));
    // The process's resident memory at 85% of the limit.
    c.handle_process_memory(850);
    assert!(c.is_paused() && c.load().paused);
    assert_eq!(submit(&mut c, 1, incs(0..4)), SubmitOutcome::Accepted);
    // One task starts; no other while it runs.
    let first = c.take_jobs();
    assert_eq!(first.len(), 1, "a paused node runs one task at a time");
    assert!(c.take_jobs().is_empty(), "nothing more while one runs");
    assert_eq!(c.load().queued, 3);
    for j in first {
        complete(&mut c, j);
    }
    // Still paused: the rest one by one.
    assert_eq!(run_counting(&mut c), (3, 1));
    let r = gather(&mut c, &["inc-0", "inc-3"]);
    assert_eq!((int(&r[0]), int(&r[1])), (1, 4));
    assert_eq!(c.stats().pauses, 1);
    // Memory back below 80%: no longer paused; tasks start together again.
    c.handle_process_memory(790);
    assert!(!c.is_paused());
    submit(&mut c, 2, incs(10..14));
    let (ran, most) = run_counting(&mut c);
    assert_eq!(ran, 4);
    assert!(most > 1, "{most}");
}

#[test]
fn results_held_count_against_the_memory_limit() {
    let mut c = core();
    // Any stored result is over 80% of a one-byte limit.
    c.set_memory_limit(Some(1));
    assert!(!c.is_paused());
    submit(&mut c, 1, incs(0..4));
    // Not paused yet: they start several at a time; their results pause the node.
    let (ran, most) = run_counting(&mut c);
    assert_eq!(ran, 4);
    assert!(most > 1, "{most}");
    assert!(c.is_paused(), "{:?}", c.load());
    submit(&mut c, 2, incs(10..14));
    assert_eq!(run_counting(&mut c), (4, 1), "paused: one at a time");
    // Lifting the limit ends the pause.
    c.set_memory_limit(None);
    assert!(!c.is_paused());
}

#[test]
fn a_paused_node_places_its_graphs_tasks_on_peers_and_peers_place_nothing_on_it() {
    let mut a = core_named("node-a");
    let mut b = core_named("node-b");
    let view = |c: &NodeCore, a_paused: bool| {
        let mut m = vec![member(c, "node-a", true), member(c, "node-b", true)];
        m[0].load.paused = a_paused;
        m
    };
    a.handle_members(&view(&a, true));
    b.handle_members(&view(&b, true));
    a.set_memory_limit(Some(100));
    a.handle_process_memory(100);
    let tasks = |p: &str| {
        (0..6)
            .map(|i| spec(&format!("{p}-{i}"), "inc", vec![lit(i)]))
            .collect::<Vec<_>>()
    };
    submit(&mut a, 1, tasks("a"));
    assert!(a.take_jobs().is_empty());
    let assigned: usize = a
        .take_sends()
        .iter()
        .filter(|(to, _)| &*to.0 == "node-b")
        .map(|(_, batch)| {
            batch
                .msgs
                .iter()
                .filter(|m| matches!(m, PeerMsg::Assign(_)))
                .count()
        })
        .sum();
    assert_eq!(
        assigned, 6,
        "every task of the paused node's graph goes to its peer"
    );
    // node-b runs its own graph itself, however busy: node-a is paused.
    submit(&mut b, 2, tasks("b"));
    let sent_to_a = b
        .take_sends()
        .iter()
        .filter(|(to, _)| &*to.0 == "node-a")
        .flat_map(|(_, batch)| batch.msgs.iter())
        .filter(|m| matches!(m, PeerMsg::Assign(_)))
        .count();
    assert_eq!(sent_to_a, 0);
}

/// A batch of `msgs` from an idle node.
fn idle_batch(msgs: Vec<PeerMsg>) -> PeerBatch {
    PeerBatch {
        load: LoadHint {
            queued: 0,
            running: 0,
            nthreads: 2,
            paused: false,
        },
        msgs,
    }
}

/// Cores named `names`, each seeing all of them alive.
fn cluster<const N: usize>(names: [&str; N]) -> [NodeCore; N] {
    names.map(|name| {
        let mut c = core_named(name);
        let view: Vec<PeerUpdate> = names.iter().map(|n| member(&c, n, true)).collect();
        c.handle_members(&view);
        c
    })
}

/// The values of `keys` as a client of the owner `o` gets them, fetched from `w`.
fn gather_via(o: &mut NodeCore, w: &mut NodeCore, keys: &[&str]) -> Vec<i64> {
    o.handle_gather(
        RequestId(1),
        keys.iter().map(|k| Key::from(*k)).collect(),
        1_000,
    );
    for _ in 0..3 {
        deliver(w, o);
        deliver(o, w);
    }
    match o.take_replies().as_slice() {
        [(RequestId(1), ClientResponse::Results(r))] => r.iter().map(int).collect(),
        other => panic!("unexpected replies {other:?}"),
    }
}

/// Every message `from` has, by the name of the node it goes to.
fn sends(from: &mut NodeCore) -> std::collections::BTreeMap<String, Vec<PeerMsg>> {
    let mut by_node = std::collections::BTreeMap::<String, Vec<PeerMsg>>::new();
    for (dest, batch) in from.take_sends() {
        by_node
            .entry(dest.0.to_string())
            .or_default()
            .extend(batch.msgs);
    }
    by_node
}

#[test]
fn a_task_stolen_and_given_back_runs_where_its_owner_places_it_again() {
    let names = ["node-o", "node-v", "node-l"];
    let [mut o, mut v, mut l] = names.map(core_named);
    // node-o is paused (its tasks go to peers) and sees node-l paused: they go to node-v.
    for c in [&mut o, &mut v, &mut l] {
        let mut view: Vec<PeerUpdate> = names.iter().map(|n| member(c, n, true)).collect();
        view[0].load.paused = true;
        view[2].load.paused = true;
        c.handle_members(&view);
    }
    o.set_memory_limit(Some(100));
    o.handle_process_memory(100);
    submit(&mut o, 1, incs(0..6));
    deliver(&mut o, &mut v);
    // node-l, idle, steals from node-v before node-v starts anything; node-v tells the
    // owner where the stolen tasks went.
    let id = |n: &str| NodeId(Arc::from(n));
    v.handle_peer(&id("node-l"), idle_batch(vec![PeerMsg::Steal { want: 3 }]));
    let mut out = sends(&mut v);
    let to_l = out.remove("node-l").unwrap_or_default();
    let stolen = to_l
        .iter()
        .map(|m| match m {
            PeerMsg::Stolen { tasks, .. } => tasks.len(),
            _ => 0,
        })
        .sum::<usize>();
    assert!(stolen > 0, "node-l stole: {to_l:?}");
    o.handle_peer(
        &id("node-v"),
        idle_batch(out.remove("node-o").unwrap_or_default()),
    );
    l.handle_peer(&id("node-v"), idle_batch(to_l));
    // node-l is told to stop before it starts them: they go back to the owner, which places
    // them on node-v again.
    l.handle_leave();
    deliver(&mut l, &mut o);
    deliver(&mut o, &mut v);
    // node-v runs them: its record of the hand-over does not turn the new placement away
    // (it used to answer "moved to node-l", which the owner ignored as old news: the tasks
    // stayed placed on node-v, run by nobody, until the record expired two minutes later).
    let mut ran = run_all(&mut v);
    assert_eq!(ran.len(), 5, "{ran:?}");
    // (A paused node keeps one task of its own to run when nothing runs.)
    ran.extend(run_all(&mut o));
    ran.sort();
    let all: Vec<String> = (0..6).map(|i| format!("inc-{i}")).collect();
    assert_eq!(ran, all);
    // The client gets every value (fetched by the owner from node-v).
    let keys: Vec<&str> = all.iter().map(String::as_str).collect();
    let values = gather_via(&mut o, &mut v, &keys);
    assert_eq!(values, (1..7).collect::<Vec<i64>>());
}

#[test]
fn an_assignment_turned_away_as_stale_is_placed_again_at_once() {
    let [mut o, mut w] = cluster(["node-o", "node-w"]);
    // node-o is paused: its task goes to node-w.
    o.set_memory_limit(Some(100));
    o.handle_process_memory(100);
    submit(&mut o, 1, vec![spec("x", "inc", vec![lit(1)])]);
    let assign = sends(&mut o)
        .remove("node-w")
        .expect("an assignment for node-w");
    let from_o = NodeId(Arc::from("node-o"));
    w.handle_peer(&from_o, idle_batch(assign.clone()));
    // node-o had taken node-w for dead and back (a partition healed): node-w drops what it
    // keeps for node-o's graphs. Then a copy of the old assignment arrives (a retry, or a
    // batch delivered twice): it is void, but node-o still counts on it.
    w.handle_peer(&from_o, idle_batch(vec![PeerMsg::Forgot]));
    assert!(
        run_all(&mut w).is_empty(),
        "dropped: {:?}",
        w.describe(&Key::from("x"))
    );
    w.handle_peer(&from_o, idle_batch(assign));
    let told = sends(&mut w).remove("node-o").unwrap_or_default();
    assert!(
        told.iter()
            .any(|m| matches!(m, PeerMsg::Dropped { key, .. } if key.as_str() == "x")),
        "node-w tells the owner: {told:?}"
    );
    // The owner places it again at once (it used to retry the void assignment, turned away
    // without a word, until node-w's record expired two minutes later).
    o.handle_peer(&NodeId(Arc::from("node-w")), idle_batch(told));
    deliver(&mut o, &mut w);
    assert_eq!(run_all(&mut w), vec!["x".to_string()]);
    assert_eq!(gather_via(&mut o, &mut w, &["x"]), vec![2]);
}

#[test]
fn a_key_submitted_again_after_a_worker_voided_it_runs_at_once() {
    let [mut o, mut w] = cluster(["node-o", "node-w"]);
    // node-o released `x` at node-w when it did not know the key (a late report of an
    // earlier copy): node-w voids every assignment of `x` for two minutes.
    let from_o = NodeId(Arc::from("node-o"));
    w.handle_peer(
        &from_o,
        idle_batch(vec![PeerMsg::Release {
            owner: from_o.clone(),
            keys: vec![Key::from("x")],
            hops: u32::MAX,
        }]),
    );
    // The client submits `x` now; node-o, paused, places it on node-w, which turns it away
    // and says so.
    o.set_memory_limit(Some(100));
    o.handle_process_memory(100);
    submit(&mut o, 1, vec![spec("x", "inc", vec![lit(1)])]);
    deliver(&mut o, &mut w);
    assert!(run_all(&mut w).is_empty());
    deliver(&mut w, &mut o);
    // node-o places it there again at once, after a release that replaces node-w's record
    // (it used to retry the void assignment until the record expired).
    deliver(&mut o, &mut w);
    assert_eq!(run_all(&mut w), vec!["x".to_string()]);
    assert_eq!(gather_via(&mut o, &mut w, &["x"]), vec![2]);
}

/// Clients and peers can name any node (task restrictions, holders, thieves): past
/// `MAX_PEERS` names, new ones all stand for one peer that is never alive, so the table
/// stays bounded and such a task waits as for any absent node.
#[test]
fn naming_more_nodes_than_the_peer_bound_keeps_the_table_bounded() {
    let mut c = core();
    let names: Vec<Arc<str>> = (0..MAX_PEERS + 5_000)
        .map(|i| Arc::from(format!("nowhere-{i}")))
        .collect();
    let mut t = spec("inc-1", "inc", vec![lit(1)]);
    t.placement = Some(Placement {
        nodes: names,
        loose: false,
    });
    assert_eq!(submit(&mut c, 1, vec![t]), SubmitOutcome::Accepted);
    assert!(c.peers.len() <= MAX_PEERS + 1, "{}", c.peers.len());
    // The task waits: none of the nodes it may run on is alive, and nothing is sent to
    // the nodes it names.
    assert!(run_all(&mut c).is_empty());
    for now in [1_000, 5_000, 60_000] {
        c.handle_tick(now);
        let sends = c.take_sends();
        assert!(
            sends.is_empty(),
            "{:?}",
            sends
                .iter()
                .map(|(n, b)| (n, b.msgs.len()))
                .collect::<Vec<_>>()
        );
    }
    // A member that joins afterwards is itself, not the peer that stands for the rest.
    let joined = member(&c, "node-late", true);
    c.handle_members(&[member(&c, "node-a", true), joined]);
    let p = c.peer_index[&NodeId("node-late".into())];
    assert_eq!(&*c.peers[p as usize].node.0, "node-late");
    assert!(c.peers[p as usize].alive);
    let sends = c.take_sends();
    assert!(sends.iter().all(|(n, _)| &*n.0 == "node-late"), "{sends:?}");
    // Too many tasks in one submission: rejected whole, naming the flag.
    c.set_max_tasks_per_submit(2);
    let tasks = (0..3)
        .map(|i| spec(&format!("inc-x{i}"), "inc", vec![lit(i)]))
        .collect();
    match submit(&mut c, 2, tasks) {
        SubmitOutcome::Rejected(e) => {
            assert!(e.to_string().contains("--max-tasks-per-submit"), "{e}")
        }
        other => panic!("{other:?}"),
    }
}

/// The releases of the ownership table a core asked for since the last call (its claims
/// are dropped).
fn releases(core: &mut NodeCore) -> Vec<GraphId> {
    core.take_owner_writes()
        .into_iter()
        .filter_map(|w| match w {
            OwnerWrite::Release { graph, .. } => Some(graph),
            OwnerWrite::Claim { .. } => None,
        })
        .collect()
}

fn reply_of(core: &mut NodeCore) -> ClientResponse {
    core.take_replies().pop().expect("a reply").1
}

#[test]
fn a_closed_session_leaves_the_table_and_its_backup_never_takes_it_over() {
    let [mut a, mut b] = cluster(["node-a", "node-b"]);
    a.handle_attach(RequestId(1), 7);
    assert_eq!(reply_of(&mut a), ClientResponse::Attached);
    assert_eq!(
        submit(
            &mut a,
            (7u128 << 64) | 1,
            vec![spec("x", "inc", vec![lit(1)])]
        ),
        SubmitOutcome::Accepted
    );
    assert_eq!(a.claims(), vec![(GraphId(7u128 << 64), 1)]);
    // Session 8 stays open.
    assert_eq!(
        submit(
            &mut a,
            (8u128 << 64) | 1,
            vec![spec("y", "inc", vec![lit(2)])]
        ),
        SubmitOutcome::Accepted
    );
    run_all(&mut a);
    deliver(&mut a, &mut b);
    // The client releases its futures and closes.
    a.handle_release(RequestId(2), vec![Key::from("x")]);
    a.handle_close(RequestId(3), 7);
    assert_eq!(reply_of(&mut a), ClientResponse::Closed);
    assert_eq!(releases(&mut a), vec![GraphId(7u128 << 64)]);
    assert!(!a.owns_session(7) && a.owns_session(8));
    assert_eq!(a.owned_sessions(), vec![8]);
    assert_eq!(a.stats().sessions_ended, 1);
    deliver(&mut a, &mut b);
    // The owner dies: the backup takes over session 8 only.
    b.handle_members(&[member(&b, "node-a", false), member(&b, "node-b", true)]);
    let claims = b.claims();
    assert_eq!(claims.len(), 1, "{claims:?}");
    assert_eq!(claims[0].0, GraphId(8u128 << 64));
    assert!(b.owns_session(8) && !b.owns_session(7));
}

#[test]
fn a_session_nothing_carries_ends_after_the_grace_and_an_attached_one_stays() {
    let mut a = core();
    a.set_session_grace(1_000);
    a.handle_tick(10);
    // Session 1: attached, then its connection breaks and nobody comes back.
    a.handle_attach(RequestId(1), 1);
    // Session 2: attached for the whole test. Session 3: never attached (an old client).
    a.handle_attach(RequestId(2), 2);
    a.take_replies();
    for s in 1..=3u128 {
        let k = format!("k{s}");
        submit(&mut a, (s << 64) | 1, vec![spec(&k, "inc", vec![lit(1)])]);
    }
    a.take_owner_writes();
    run_all(&mut a);
    a.handle_tick(500);
    a.handle_detach(1);
    a.handle_tick(1_009);
    assert!(releases(&mut a).is_empty());
    a.handle_tick(1_010);
    assert_eq!(releases(&mut a), vec![GraphId(3u128 << 64)]);
    a.handle_tick(1_499);
    assert!(releases(&mut a).is_empty());
    // A re-attach within the grace keeps the session.
    a.handle_attach(RequestId(3), 1);
    a.handle_tick(5_000);
    assert!(releases(&mut a).is_empty());
    assert_eq!(a.owned_sessions(), vec![1, 2]);
    a.handle_detach(1);
    a.handle_tick(5_999);
    assert!(releases(&mut a).is_empty());
    a.handle_tick(6_000);
    assert_eq!(releases(&mut a), vec![GraphId(1u128 << 64)]);
    assert_eq!(a.owned_sessions(), vec![2]);
    // The results of a session that ended are not released by it: its client's futures
    // still hold them.
    assert_eq!(int(&gather(&mut a, &["k1"])[0]), 2);
    // The client comes back after its session ended and submits again: a new first claim.
    a.handle_attach(RequestId(4), 1);
    submit(
        &mut a,
        (1u128 << 64) | 2,
        vec![spec("k1b", "inc", vec![lit(5)])],
    );
    assert_eq!(a.claims(), vec![(GraphId(1u128 << 64), 1)]);
    run_all(&mut a);
    assert_eq!(int(&gather(&mut a, &["k1b"])[0]), 6);
}

#[test]
fn a_session_with_a_published_dataset_outlives_its_client_until_the_unpublish() {
    let [mut a, mut b] = cluster(["node-a", "node-b"]);
    a.set_session_grace(1_000);
    a.handle_attach(RequestId(1), 4);
    submit(
        &mut a,
        (4u128 << 64) | 1,
        vec![spec("d", "inc", vec![lit(1)])],
    );
    run_all(&mut a);
    a.handle_publish(RequestId(2), "points".into(), 4, vec![Key::from("d")]);
    a.take_replies();
    a.take_owner_writes();
    a.handle_release(RequestId(3), vec![Key::from("d")]);
    a.handle_close(RequestId(4), 4);
    a.handle_tick(60_000);
    assert!(releases(&mut a).is_empty());
    assert!(a.owns_session(4));
    assert_eq!(int(&gather(&mut a, &["d"])[0]), 2);
    deliver(&mut a, &mut b);
    // Unpublished through another node: the session ends at once (it was closed).
    let entry = match a.take_dataset_writes().pop() {
        Some((_, d)) => d,
        None => panic!("no dataset entry"),
    };
    b.handle_unpublish(
        RequestId(5),
        "points".into(),
        entry,
        Some(NodeId(Arc::from("node-a"))),
    );
    deliver(&mut b, &mut a);
    assert!(!a.owns_session(4));
    assert_eq!(releases(&mut a), vec![GraphId(4u128 << 64)]);
    assert_eq!(
        a.tracked_keys(),
        0,
        "the dataset's reference was the last one"
    );
}

#[test]
fn a_taken_over_dataset_keeps_its_session_and_a_refused_take_over_is_dropped() {
    let [mut a, mut b] = cluster(["node-a", "node-b"]);
    b.set_session_grace(1_000);
    for s in [4u128, 5] {
        submit(
            &mut a,
            (s << 64) | 1,
            vec![spec(&format!("d{s}"), "inc", vec![lit(1)])],
        );
    }
    run_all(&mut a);
    a.handle_publish(RequestId(2), "points".into(), 4, vec![Key::from("d4")]);
    a.take_replies();
    deliver(&mut a, &mut b);
    b.handle_members(&[member(&b, "node-a", false), member(&b, "node-b", true)]);
    let claims = b.claims();
    assert_eq!(claims.len(), 2);
    // The table says session 5 had ended (the owner's word did not reach this backup):
    // dropped; a raised epoch is taken.
    b.handle_claimed(GraphId(5u128 << 64), None);
    b.handle_claimed(GraphId(4u128 << 64), Some(claims[0].1 + 1));
    assert_eq!(b.owned_sessions(), vec![4]);
    assert_eq!(b.stats().sessions_refused, 1);
    assert!(
        releases(&mut b).is_empty(),
        "a refused session is not written again"
    );
    // No client comes back for session 4, but its dataset keeps it.
    b.handle_tick(10_000);
    assert_eq!(b.owned_sessions(), vec![4]);
    b.handle_unpublish(
        RequestId(6),
        "points".into(),
        rdask_gossip::Dataset {
            session: 4,
            keys: vec!["d4".into()],
            removed: false,
        },
        Some(NodeId(Arc::from("node-b"))),
    );
    assert!(
        b.owned_sessions().is_empty(),
        "idle for longer than the grace already"
    );
    assert_eq!(releases(&mut b), vec![GraphId(4u128 << 64)]);
}

/// An assignment of `key` (function `f`, arguments `args`) from the owner `owner`, handed
/// on `hops` times.
fn assignment(owner: &str, key: &str, f: &str, args: Vec<AssignArg>, hops: u32) -> Assignment {
    Assignment {
        owner: NodeId(Arc::from(owner)),
        key: Key::from(key),
        function: Arc::from(f),
        args,
        priority: 0,
        placement: None,
        resources: Vec::new(),
        hops,
        retries: 0,
    }
}

#[test]
fn a_worker_asking_the_owner_for_an_input_it_dropped_is_told_so_and_drops_the_task_waiting_for_it()
{
    let [mut o, mut w] = cluster(["node-o", "node-w"]);
    // node-o runs `x` and `y = x + 1` itself; the client keeps only `y`, so the value of
    // `x` is dropped (its spec stays: `y` names it).
    o.handle_submit(
        RequestId(1),
        vec![GraphSubmission {
            id: GraphId(1),
            tasks: vec![
                spec("x", "inc", vec![lit(1)]),
                spec("y", "inc", vec![key("x")]),
            ],
            keep: vec![Key::from("y")],
        }],
    );
    o.take_replies();
    assert_eq!(run_all(&mut o), vec!["x".to_string(), "y".to_string()]);
    assert!(o.describe(&Key::from("x")).unwrap().contains("released"));
    // A copy of `y` that node-o no longer counts on (placed before it ran `y` itself, and
    // handed on since) reaches node-w: it asks the holder of `x`, node-o.
    let from_o = NodeId(Arc::from("node-o"));
    let input = AssignArg::Input {
        key: Key::from("x"),
        size: 8,
        holders: vec![from_o.clone()],
    };
    let stale = assignment("node-o", "y", "inc", vec![input], 3);
    w.handle_peer(&from_o, idle_batch(vec![PeerMsg::Assign(stale)]));
    assert_eq!(w.foreign_keys(), (0, 1));
    for _ in 0..3 {
        deliver(&mut w, &mut o);
        deliver(&mut o, &mut w);
    }
    // node-o says the value is gone for good, and node-w drops the copy (it used to be told
    // "not here", and to ask the holders round and round, for ever).
    assert_eq!(w.foreign_keys(), (0, 0));
    w.handle_tick(10_000);
    assert!(sends(&mut w).is_empty(), "node-w asks no more");
    assert!(run_all(&mut w).is_empty());
}

#[test]
fn a_copy_stolen_from_a_node_after_its_owner_finished_the_task_elsewhere_is_released() {
    let [mut o, _v, mut t] = cluster(["node-o", "node-v", "node-t"]);
    // node-o has the value of `x` (an earlier copy ran); node-v had a later placement of
    // `x`, which node-t stole from it before node-v heard it was not needed.
    submit(&mut o, 1, vec![spec("x", "inc", vec![lit(1)])]);
    assert_eq!(run_all(&mut o), vec!["x".to_string()]);
    let from_v = NodeId(Arc::from("node-v"));
    let copy = assignment(
        "node-o",
        "x",
        "inc",
        vec![AssignArg::Value(value::encode(&1i64).unwrap())],
        3,
    );
    t.handle_peer(
        &from_v,
        idle_batch(vec![PeerMsg::Stolen {
            tasks: vec![copy],
            busiest: None,
        }]),
    );
    assert_eq!(t.foreign_keys(), (0, 1));
    // node-v tells the owner where its copy went: node-o needs none, and releases it there
    // (it used to ignore the news: the copy ran, or waited for inputs dropped since).
    o.handle_peer(
        &from_v,
        idle_batch(vec![PeerMsg::Moved {
            key: Key::from("x"),
            to: NodeId(Arc::from("node-t")),
            hops: 3,
        }]),
    );
    deliver(&mut o, &mut t);
    assert_eq!(t.foreign_keys(), (0, 0));
    assert!(run_all(&mut t).is_empty());
    assert_eq!(gather_via(&mut o, &mut t, &["x"]), vec![2]);
}

#[test]
fn assignments_lost_in_a_row_are_sent_again_every_two_seconds_and_a_long_task_less_often() {
    let [mut o, mut w] = cluster(["node-o", "node-w"]);
    // node-o is paused: its task goes to node-w.
    o.set_memory_limit(Some(100));
    o.handle_process_memory(100);
    submit(&mut o, 1, vec![spec("x", "inc", vec![lit(1)])]);
    let assigned = |o: &mut NodeCore| {
        let to_w = sends(o).remove("node-w").unwrap_or_default();
        to_w.iter()
            .filter(|m| matches!(m, PeerMsg::Assign(_)))
            .count()
    };
    assert_eq!(assigned(&mut o), 1);
    // The assignment and the next ones are lost: node-o hears nothing, and sends it again
    // every 2 s (it used to wait twice as long each time: five messages lost in a row cost
    // a minute).
    for at in [2_000, 4_000, 6_000, 8_000] {
        o.handle_tick(at - 1);
        assert_eq!(assigned(&mut o), 0, "not before {at} ms");
        o.handle_tick(at);
        assert_eq!(assigned(&mut o), 1, "sent again at {at} ms");
    }
    // The next one arrives: node-w queues the task (a long one, say). Asked again, it says
    // it has it, and node-o waits twice as long each time.
    o.handle_tick(10_000);
    deliver(&mut o, &mut w);
    assert_eq!(w.foreign_keys(), (0, 1));
    let mut at = 10_000;
    for wait in [2_000, 4_000, 8_000, 16_000, 32_000, 32_000] {
        at += wait;
        o.handle_tick(at - 1);
        assert_eq!(assigned(&mut o), 0, "not before {at} ms");
        o.handle_tick(at);
        deliver(&mut o, &mut w);
        let told = sends(&mut w).remove("node-o").unwrap_or_default();
        assert!(
            matches!(told.as_slice(), [PeerMsg::Accepted { key, .. }] if key.as_str() == "x"),
            "node-w has it: {told:?}"
        );
        o.handle_peer(&NodeId(Arc::from("node-w")), idle_batch(told));
    }
    assert_eq!(run_all(&mut w), vec!["x".to_string()]);
    assert_eq!(gather_via(&mut o, &mut w, &["x"]), vec![2]);
}

#[test]
fn a_result_computed_where_a_copy_of_it_was_fetched_meanwhile_is_counted_once() {
    let [mut o, mut w] = cluster(["node-o", "node-w"]);
    // node-o has `x` (it ran it); node-w has a copy of the assignment of `x` queued (one
    // node-o placed before it ran `x` itself).
    submit(&mut o, 1, vec![spec("x", "inc", vec![lit(1)])]);
    assert_eq!(run_all(&mut o), vec!["x".to_string()]);
    let from_o = NodeId(Arc::from("node-o"));
    let one = AssignArg::Value(value::encode(&1i64).unwrap());
    let x = assignment("node-o", "x", "inc", vec![one], 1);
    w.handle_peer(&from_o, idle_batch(vec![PeerMsg::Assign(x)]));
    // Then `y = x + 1` is placed there: node-w fetches `x` from node-o, and keeps the copy.
    let input = AssignArg::Input {
        key: Key::from("x"),
        size: 8,
        holders: vec![from_o.clone()],
    };
    let y = assignment("node-o", "y", "inc", vec![input], 1);
    w.handle_peer(&from_o, idle_batch(vec![PeerMsg::Assign(y)]));
    deliver(&mut w, &mut o);
    deliver(&mut o, &mut w);
    assert_eq!(w.foreign_keys().0, 1);
    // Both run; `x` computed here replaces the copy: two values held, two counted.
    let mut ran = run_all(&mut w);
    ran.sort();
    assert_eq!(ran, vec!["x".to_string(), "y".to_string()]);
    assert_eq!(w.foreign_keys(), (2, 0));
    assert_eq!(w.load().stored, 2);
    assert_eq!(w.values_held(), (w.load().stored, w.load().memory_used));
    // Released, nothing is left, and no memory is counted (it used to count the copy for
    // ever: a node paused for memory it does not hold).
    w.handle_peer(
        &from_o,
        idle_batch(vec![PeerMsg::Release {
            owner: from_o.clone(),
            keys: vec![Key::from("x"), Key::from("y")],
            hops: 1,
        }]),
    );
    assert_eq!(w.foreign_keys(), (0, 0));
    assert_eq!((w.load().stored, w.load().memory_used), (0, 0));
}

#[test]
fn a_result_its_owner_does_not_need_is_released_with_the_hops_of_the_copy_that_ran() {
    let [mut o, _v, mut t] = cluster(["node-o", "node-v", "node-t"]);
    // node-o has `x` (it ran it); node-t stole a later copy of it from node-v (two
    // hand-overs) and runs it.
    submit(&mut o, 1, vec![spec("x", "inc", vec![lit(1)])]);
    assert_eq!(run_all(&mut o), vec!["x".to_string()]);
    let from_v = NodeId(Arc::from("node-v"));
    let one = AssignArg::Value(value::encode(&1i64).unwrap());
    let stolen = PeerMsg::Stolen {
        tasks: vec![assignment("node-o", "x", "inc", vec![one], 2)],
        busiest: None,
    };
    t.handle_peer(&from_v, idle_batch(vec![stolen.clone()]));
    assert_eq!(run_all(&mut t), vec!["x".to_string()]);
    // node-o hears where the copy went, and releases it there; then hears it finished.
    o.handle_peer(
        &from_v,
        idle_batch(vec![PeerMsg::Moved {
            key: Key::from("x"),
            to: NodeId(Arc::from("node-t")),
            hops: 2,
        }]),
    );
    deliver(&mut t, &mut o);
    deliver(&mut o, &mut t);
    assert_eq!(t.foreign_keys(), (0, 0));
    // A late duplicate of node-v's hand-over is recognised: node-o's answer to the `Done`
    // covered the copy that ran (it named node-o's own hops, 0, which lowered node-t's
    // record of the release: the duplicate ran the task again).
    t.handle_peer(&from_v, idle_batch(vec![stolen]));
    assert!(run_all(&mut t).is_empty());
    assert_eq!(t.foreign_keys(), (0, 0));
}

#[test]
fn a_copy_announced_to_a_take_over_waiting_for_inventories_keeps_its_size() {
    let [mut a, mut b, mut c] = cluster(["node-a", "node-b", "node-c"]);
    // node-a owns `x` (the client keeps it); both others get a copy of the graph.
    submit(
        &mut a,
        (7u128 << 64) | 1,
        vec![spec("x", "inc", vec![lit(1)])],
    );
    let from_a = NodeId(Arc::from("node-a"));
    for (dest, batch) in a.take_sends() {
        for n in [&mut b, &mut c] {
            if *dest.0 == *n.node() {
                n.handle_peer(&from_a, batch.clone());
            }
        }
    }
    // node-a dies: the first of the others in its rendezvous order takes over, and waits
    // for the other's inventory.
    for n in [&mut b, &mut c] {
        let view: Vec<PeerUpdate> = ["node-a", "node-b", "node-c"]
            .iter()
            .map(|m| member(n, m, *m != "node-a"))
            .collect();
        n.handle_members(&view);
    }
    let (new, other) = if b.stats().takeovers == 1 {
        (b, c)
    } else {
        (c, b)
    };
    let mut new = new;
    assert_eq!(new.stats().takeovers, 1);
    let m = NodeId(Arc::from(other.node()));
    // The other node announces a copy of `x` (fetched meanwhile) before its inventory.
    new.handle_peer(
        &m,
        idle_batch(vec![PeerMsg::Holding {
            key: Key::from("x"),
            size: 8,
        }]),
    );
    new.handle_peer(
        &m,
        idle_batch(vec![PeerMsg::Inventory {
            old: from_a.clone(),
            held: Vec::new(),
            running: Vec::new(),
            moved: Vec::new(),
            erred: Vec::new(),
        }]),
    );
    // Finished, held there, with its size (it was taken for 0 bytes).
    let id = new.index[&Key::from("x")];
    assert!(matches!(
        &new.task(id).unwrap().state,
        State::Memory { value: None, holders, size: 8 } if holders.len() == 1
    ));
    // The client gathers it (fetched from there) and releases it: nothing is counted.
    new.handle_gather(RequestId(5), vec![Key::from("x")], 1_000);
    let asked = sends(&mut new).remove(other.node()).unwrap_or_default();
    assert!(
        asked.iter().any(|m| matches!(m, PeerMsg::Fetch { .. })),
        "{asked:?}"
    );
    let two = value::encode(&2i64).unwrap();
    let owner = NodeId(Arc::from(new.node()));
    new.handle_peer(
        &m,
        idle_batch(vec![PeerMsg::Data {
            owner,
            key: Key::from("x"),
            value: Some(two),
        }]),
    );
    assert!(matches!(
        new.take_replies().as_slice(),
        [(RequestId(5), ClientResponse::Results(r))] if int(&r[0]) == 2
    ));
    new.handle_release(RequestId(6), vec![Key::from("x")]);
    assert_eq!(new.values_held(), (0, 0));
    assert_eq!((new.load().stored, new.load().memory_used), (0, 0));
}

#[test]
fn a_take_over_heard_before_the_owner_was_listed_does_not_void_the_owner_once_listed_alive() {
    // node-j has just joined: its membership lists nobody yet when node-n, which took over
    // node-o (taken for dead behind a partition), asks it for its inventory.
    let mut j = core_named("node-j");
    let (from_n, from_o) = (NodeId(Arc::from("node-n")), NodeId(Arc::from("node-o")));
    let recover = PeerMsg::Recover {
        old: from_o.clone(),
        epoch: next_epoch(1, "node-n"),
        handover: false,
    };
    j.handle_peer(&from_n, idle_batch(vec![recover]));
    let answer = sends(&mut j).remove("node-n").unwrap_or_default();
    assert!(
        matches!(answer.as_slice(), [PeerMsg::Inventory { .. }]),
        "{answer:?}"
    );
    // Then membership lists node-o alive (the partition healed, or node-j never saw it
    // cut off): node-o is back, told that node-j wrote its graphs off.
    let all: Vec<PeerUpdate> = ["node-j", "node-n", "node-o"]
        .iter()
        .map(|n| member(&j, n, true))
        .collect();
    j.handle_members(&all);
    assert_eq!(j.stats().peers_back, 1);
    let told = sends(&mut j).remove("node-o").unwrap_or_default();
    assert!(
        told.iter().any(|m| matches!(m, PeerMsg::Forgot)),
        "{told:?}"
    );
    // node-o's messages count again: a task it places on node-j runs and is reported to
    // it (they were void for good, read as a dead owner's, and the task was sent again
    // every 2 s for ever).
    let one = AssignArg::Value(value::encode(&1i64).unwrap());
    let x = assignment("node-o", "x", "inc", vec![one], 1);
    j.handle_peer(&from_o, idle_batch(vec![PeerMsg::Assign(x)]));
    assert_eq!(run_all(&mut j), vec!["x".to_string()]);
    let told = sends(&mut j).remove("node-o").unwrap_or_default();
    assert!(
        told.iter()
            .any(|m| matches!(m, PeerMsg::Done { key, .. } if key.as_str() == "x")),
        "{told:?}"
    );
}

#[test]
fn a_late_word_of_an_earlier_hand_over_does_not_release_the_copy_that_ran() {
    let names = ["node-o", "node-v", "node-a", "node-b"];
    let [mut o, mut v, mut a, mut b] = names.map(core_named);
    // node-o is paused and sees node-a and node-b paused: its tasks go to node-v.
    for c in [&mut o, &mut v, &mut a, &mut b] {
        let mut view: Vec<PeerUpdate> = names.iter().map(|n| member(c, n, true)).collect();
        if c.node() == "node-o" {
            for m in [0, 2, 3] {
                view[m].load.paused = true;
            }
        }
        c.handle_members(&view);
    }
    o.set_memory_limit(Some(100));
    o.handle_process_memory(100);
    submit(&mut o, 1, incs(0..12));
    deliver(&mut o, &mut v);
    let id = |n: &str| NodeId(Arc::from(n));
    // `thief` steals `want` tasks from `victim`: what the victim sends the thief, and what
    // it tells the owner.
    let steal = |victim: &mut NodeCore, thief: &str, want: u32| {
        victim.handle_peer(&id(thief), idle_batch(vec![PeerMsg::Steal { want }]));
        let mut out = sends(victim);
        (
            out.remove(thief).unwrap_or_default(),
            out.remove("node-o").unwrap_or_default(),
        )
    };
    // node-a steals two tasks from node-v (hops 2), node-b one of them from node-a (hops 3).
    // node-v's word of its hand-over to node-a is slow; node-a's reaches node-o.
    let (to_a, late_moved) = steal(&mut v, "node-a", 2);
    a.handle_peer(&id("node-v"), idle_batch(to_a));
    let (to_b, moved) = steal(&mut a, "node-b", 1);
    let k = match to_b.as_slice() {
        [PeerMsg::Stolen { tasks, .. }] if tasks.len() == 1 => tasks[0].key.clone(),
        other => panic!("node-b stole one task: {other:?}"),
    };
    assert!(
        late_moved
            .iter()
            .any(|m| matches!(m, PeerMsg::Moved { key, hops: 2, .. } if *key == k)),
        "{late_moved:?}"
    );
    b.handle_peer(&id("node-a"), idle_batch(to_b));
    o.handle_peer(&id("node-a"), idle_batch(moved));
    // node-b runs it and tells node-o, which counts node-b's copy as the value.
    assert_eq!(run_all(&mut b), vec![k.to_string()]);
    deliver(&mut b, &mut o);
    assert_eq!(b.foreign_keys(), (1, 0));
    // Then node-v's word arrives: node-a had the task before it went to node-b. node-o
    // used to take node-a's copy for one more (the task was done), and release it there;
    // node-a sent the release on to node-b, which dropped the value node-o counts on, and
    // the task ran again.
    o.handle_peer(&id("node-v"), idle_batch(late_moved));
    deliver(&mut o, &mut a);
    deliver(&mut a, &mut b);
    assert_eq!(b.foreign_keys(), (1, 0), "node-b keeps the value");
    let i: i64 = k.as_str().trim_start_matches("inc-").parse().unwrap();
    assert_eq!(gather_via(&mut o, &mut b, &[k.as_str()]), vec![i + 1]);
    for c in [&mut o, &mut v, &mut a, &mut b] {
        assert!(!run_all(c).contains(&k.to_string()), "{k} runs again");
    }
}

#[test]
fn a_restriction_names_a_member_by_id_name_or_address_and_ids_win_over_names() {
    let mut o = core_named("node-o");
    let mut view: Vec<PeerUpdate> = ["node-o", "node-a", "node-b"]
        .iter()
        .map(|n| member(&o, n, true))
        .collect();
    view[1].aliases = vec![Arc::from("10.0.0.1:4001")];
    // node-b calls itself "gpu", and also "node-a": another member's id.
    view[2].aliases = vec![Arc::from("gpu"), Arc::from("node-a")];
    o.handle_members(&view);
    let on = |name: &str, k: &str| {
        let mut s = spec(k, "inc", vec![lit(1)]);
        s.placement = Some(rdask_graph::Placement {
            nodes: vec![Arc::from(name)],
            loose: false,
        });
        s
    };
    submit(
        &mut o,
        1,
        vec![
            on("gpu", "inc-g"),
            on("node-a", "inc-a"),
            on("10.0.0.1:4001", "inc-h"),
        ],
    );
    let assigned = |msgs: &[PeerMsg]| -> Vec<String> {
        let mut keys: Vec<String> = msgs
            .iter()
            .filter_map(|m| match m {
                PeerMsg::Assign(a) => Some(a.key.to_string()),
                _ => None,
            })
            .collect();
        keys.sort();
        keys
    };
    let out = sends(&mut o);
    assert_eq!(assigned(&out["node-b"]), vec!["inc-g"]);
    assert_eq!(assigned(&out["node-a"]), vec!["inc-a", "inc-h"]);
}
