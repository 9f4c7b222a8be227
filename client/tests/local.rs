//! The in-process local cluster, `Client::local()`.

use std::time::Duration;

use rdask::{Client, Error, TaskErrorKind, TaskFn};

#[rdask::task]
fn inc(x: i64) -> i64 {
    x + 1
}

#[rdask::task]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

#[rdask::task]
fn boom(x: i64) -> i64 {
    if x > 0 {
        panic!("boom at {x}");
    }
    x
}

#[rdask::task(name = "custom::name", prefix = "renamed")]
fn pair(a: String, b: u8) -> (String, u8) {
    (a, b)
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Point {
    x: f64,
    y: f64,
}

#[rdask::task]
fn norm(p: Point) -> f64 {
    (p.x * p.x + p.y * p.y).sqrt()
}

fn bounded<T: Send + 'static>(body: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(body());
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("test finished within 60 s")
}

#[test]
fn a_local_cluster_runs_thousands_of_dependent_tasks() {
    bounded(|| {
        let client = Client::local_with_threads(2).unwrap();
        assert!(client.to_string().contains("inproc://local"));
        assert_eq!(client.nthreads(), 2);
        let xs = client.map(inc, 0..2000i64);
        let chained: Vec<_> = xs.iter().map(|x| client.submit(inc, (x,))).collect();
        let sum = chained
            .chunks(2)
            .map(|p| client.submit(add, (&p[0], &p[1])))
            .collect::<Vec<_>>();
        let values = rdask::block_on(client.gather(&sum)).unwrap();
        assert_eq!(values.len(), 1000);
        assert_eq!(values.iter().sum::<i64>(), (2..2002).sum::<i64>());
    });
}

#[test]
fn futures_can_be_awaited_on_any_executor() {
    bounded(|| {
        let client = Client::local().unwrap();
        let f = client.submit(add, (1, 2));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(async { f.clone().await }).unwrap(), 3);
        assert_eq!(futures::executor::block_on(f.result()).unwrap(), 3);
    });
}

#[test]
fn custom_names_prefixes_and_struct_arguments_work() {
    assert_eq!(pair.name(), "custom::name");
    assert_eq!(inc.name(), concat!(module_path!(), "::inc"));
    bounded(|| {
        let client = Client::local().unwrap();
        let f = client.submit(pair, ("a".to_string(), 7u8));
        assert!(f.key().as_str().starts_with("renamed-"), "{}", f.key());
        assert_eq!(f.key().prefix(), "renamed");
        assert_eq!(rdask::block_on(f.result()).unwrap(), ("a".to_string(), 7));
        let n = client.submit(norm, (Point { x: 3.0, y: 4.0 },));
        assert_eq!(rdask::block_on(n.result()).unwrap(), 5.0);
    });
}

#[test]
fn a_panic_fails_the_task_and_its_dependents_and_the_cluster_goes_on() {
    bounded(|| {
        let client = Client::local().unwrap();
        let xs = client.map(boom, [0i64, 1, 0]);
        let dependent = client.submit(add, (&xs[0], &xs[1]));
        let err = rdask::block_on(dependent.result()).unwrap_err();
        let task = err.task_error().expect("a task error");
        assert_eq!(task.kind, TaskErrorKind::Panicked);
        assert_eq!(&*task.message, "boom at 1");
        assert_eq!(&task.key, xs[1].key());
        assert_eq!(rdask::block_on(xs[2].result()).unwrap(), 0);
        // gather returns the first error
        assert!(rdask::block_on(client.gather(&xs)).is_err());
        assert_eq!(
            rdask::block_on(client.submit(inc, (1,)).result()).unwrap(),
            2
        );
    });
}

#[test]
fn an_unregistered_function_is_rejected_with_a_clear_error() {
    // A handle whose name no function is registered under.
    const GHOST: TaskFn<fn(i64) -> i64, (i64,), i64> =
        TaskFn::new("nowhere::ghost", "ghost", |x| x);
    bounded(|| {
        let client = Client::local().unwrap();
        let err = rdask::block_on(client.submit(GHOST, (1,)).result()).unwrap_err();
        assert!(err.is_unknown_function(), "{err}");
        assert!(err.to_string().contains("nowhere::ghost"), "{err}");
    });
}

#[test]
fn futures_of_one_client_cannot_be_used_by_another() {
    bounded(|| {
        let a = Client::local().unwrap();
        let b = Client::local().unwrap();
        let x = a.submit(inc, (1,));
        let y = b.submit(inc, (&x,));
        assert!(matches!(
            rdask::block_on(y.result()),
            Err(Error::ForeignFuture(_))
        ));
    });
}

#[test]
fn dropping_futures_frees_their_results_and_closing_stops_the_cluster() {
    bounded(|| {
        let client = Client::local().unwrap();
        let stored = |c: &Client| rdask::block_on(c.nodes()).unwrap()[0].load.stored;
        let xs = client.map(inc, 0..500i64);
        rdask::block_on(client.gather(&xs)).unwrap();
        assert_eq!(stored(&client), 500);
        drop(xs);
        // releases travel in order behind submissions: once a later submission has a
        // value, the node has seen them
        let probe = client.submit(inc, (0,));
        rdask::block_on(probe.result()).unwrap();
        assert_eq!(stored(&client), 1);
        let kept = client.submit(inc, (1,));
        client.close();
        assert!(matches!(rdask::block_on(kept.result()), Err(Error::Closed)));
    });
}

#[rdask::task]
fn total(xs: Vec<i64>) -> i64 {
    xs.iter().sum()
}

#[rdask::task]
fn weigh(m: std::collections::BTreeMap<String, i64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[rdask::task]
fn label(x: i64) -> String {
    format!("#{x}")
}

#[rdask::task]
fn swap(p: (i64, String)) -> (String, i64) {
    (p.1, p.0)
}

#[test]
fn collections_of_delayed_values_are_arguments_of_the_collections_of_their_values() {
    bounded(|| {
        use rdask::delayed;
        let client = rdask::blocking::Client::local_with_threads(2).unwrap();
        // Dask's delayed(sum)([delayed(inc)(i) for i in range(100)]).
        let parts: Vec<_> = (0..100i64).map(|i| delayed(inc, (i,))).collect();
        let sum = delayed(total, (&parts,));
        assert_eq!(client.compute(&sum).unwrap(), (1..=100).sum::<i64>());
        // Shared parts run once; a list mixing nothing else, an empty list, a map, a pair.
        let twice = delayed(add, (&sum, &delayed(total, (parts.clone(),))));
        assert_eq!(client.compute(&twice).unwrap(), 2 * (1..=100).sum::<i64>());
        let empty: Vec<rdask::Delayed<i64>> = Vec::new();
        assert_eq!(client.compute(&delayed(total, (&empty,))).unwrap(), 0);
        let named: std::collections::BTreeMap<String, _> = [("a", 1i64), ("b", 2)]
            .into_iter()
            .map(|(k, x)| (k.to_string(), delayed(inc, (x,))))
            .collect();
        assert_eq!(
            client.compute(&delayed(weigh, (&named,))).unwrap(),
            "a=2,b=3"
        );
        let p = delayed(swap, ((&delayed(inc, (41,)), &delayed(label, (7,))),));
        assert_eq!(client.compute(&p).unwrap(), ("#7".to_string(), 42));
        // Submitted directly too, and through the async client.
        let f = client.submit(total, (&parts,));
        assert_eq!(f.result().unwrap(), (1..=100).sum::<i64>());
        let a = rdask::block_on(client.asynchronous().compute(&sum)).unwrap();
        assert_eq!(a, (1..=100).sum::<i64>());
    });
}
