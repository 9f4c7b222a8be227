//! Values of any size between a client and a node, and the node's limits: what a user
//! relies on when moving large data, and the clear errors past each limit.

use bytes::Bytes;
use rdask::{Client, Error};
use rdask_tests::{NodeProcess, blob, bounded, checksum, inc};

const NODE: &str = env!("CARGO_BIN_EXE_rdask-test-node");

fn block<F: std::future::Future>(f: F) -> F::Output {
    rdask::block_on(f)
}

/// The length and hash [`checksum`] computes, here.
fn local_checksum(data: &[u8]) -> (u64, u64) {
    checksum(Bytes::copy_from_slice(data))
}

/// A scattered 1 GiB value, a 1 GiB result computed on the node and 64 values of 32 MiB
/// gathered in one call all travel between the client and the node, beside the 64 MiB
/// frames: values are bound by `--max-value-bytes` alone.
#[test]
fn values_of_a_gibibyte_travel_both_ways_and_64_of_32_mib_in_one_gather() {
    let node = NodeProcess::start(NODE, &["--nthreads", "2"]);
    let address = format!("tcp://127.0.0.1:{}", node.port);
    bounded(600, move || {
        let client = Client::connect(&address).unwrap();

        // Scatter 1 GiB, checked on the node.
        let gib = {
            let mut v = vec![0u8; 1 << 30];
            for (i, chunk) in v.chunks_mut(1 << 20).enumerate() {
                chunk.fill(i as u8);
            }
            Bytes::from(v)
        };
        let expected = local_checksum(&gib);
        let scattered = client.scatter(&gib);
        drop(gib);
        let sum = client.submit(checksum, (&scattered,));
        assert_eq!(block(sum.result()).unwrap(), expected);
        drop(scattered);

        // A 1 GiB result computed on the node, gathered.
        let big = client.submit(blob, (1024u32, 7u64));
        let on_node = block(client.submit(checksum, (&big,)).result()).unwrap();
        let value: Bytes = block(big.result()).unwrap();
        assert_eq!(value.len(), 1 << 30);
        assert_eq!(local_checksum(&value), on_node);
        drop((value, big));

        // 64 values of 32 MiB in one gather: 2 GiB in one reply.
        let parts: Vec<_> = (0..64u64)
            .map(|i| client.submit(blob, (32u32, i)))
            .collect();
        let sums: Vec<_> = parts
            .iter()
            .map(|p| client.submit(checksum, (p,)))
            .collect();
        let sums = block(client.gather(&sums)).unwrap();
        let values: Vec<Bytes> = block(client.gather(&parts)).unwrap();
        assert_eq!(values.len(), 64);
        for (v, s) in values.iter().zip(&sums) {
            assert_eq!(v.len(), 32 << 20);
            assert_eq!(local_checksum(v), *s);
        }
    });
}

/// Past each limit of the node, a clear error at once that names the limit and its flag,
/// and the client goes on working.
#[test]
fn every_limit_is_a_clear_error_naming_its_flag() {
    let node = NodeProcess::start(
        NODE,
        &[
            "--max-value-bytes",
            "16777216",
            "--max-tasks-per-submit",
            "100",
            "--max-client-sessions",
            "2",
        ],
    );
    let address = format!("tcp://127.0.0.1:{}", node.port);
    bounded(120, move || {
        let client = Client::connect(&address).unwrap();

        // A scattered value over --max-value-bytes: refused before anything is sent.
        let started = std::time::Instant::now();
        let big = Bytes::from(vec![1u8; 17 << 20]);
        let err = block(client.scatter(&big).result()).unwrap_err();
        assert!(matches!(err, Error::TooLarge(_)), "{err}");
        assert!(err.to_string().contains("--max-value-bytes"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(10));

        // A result over it: the task's error, naming the flag.
        let err = block(client.submit(blob, (17u32, 1u64)).result()).unwrap_err();
        assert!(err.to_string().contains("--max-value-bytes"), "{err}");

        // More tasks in one submission than --max-tasks-per-submit: rejected whole.
        let many = client.map(inc, 0..150i64);
        let err = block(many[0].result()).unwrap_err();
        assert!(matches!(err, Error::GraphRejected(_)), "{err}");
        assert!(err.to_string().contains("--max-tasks-per-submit"), "{err}");

        // A third session at once over --max-client-sessions 2 (the first client holds
        // one): refused with the flag named; the first client is not disturbed.
        let second = Client::connect(&address).unwrap();
        let err = Client::connect(&address).unwrap_err();
        assert!(err.to_string().contains("--max-client-sessions"), "{err}");
        drop(second);

        // Within the limits, everything still works on the same session.
        let small = client.scatter(&Bytes::from(vec![2u8; 1 << 20]));
        assert_eq!(block(small.result()).unwrap().len(), 1 << 20);
        assert_eq!(block(client.submit(inc, (1,)).result()).unwrap(), 2);
        let fine = client.map(inc, 0..50i64);
        assert_eq!(block(client.gather(&fine)).unwrap()[49], 50);
    });
}

/// A session the node ends (here: for a frame over its `--max-frame-bytes`) is an error for
/// the requests waiting on it at once, not a hang; the node goes on serving.
#[test]
fn a_session_the_node_ends_is_an_error_at_once() {
    use rdask_node::RemoteNode;
    use rdask_node::rdask_actors_protocol::{ClientRequest, ClientResponse};
    let node = NodeProcess::start(NODE, &["--max-frame-bytes", "4096"]);
    let addr: libp2p::Multiaddr = node.multiaddr.parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let timeout = std::time::Duration::from_secs(10);
        let remote = RemoteNode::connect(addr.clone(), 1 << 20, timeout, None)
            .await
            .unwrap();
        // A gather that waits a minute, then a frame the node refuses.
        let parked = remote.send(ClientRequest::Gather {
            keys: vec!["never-submitted".into()],
            wait_ms: 60_000,
        });
        let started = std::time::Instant::now();
        let oversized = remote.send(ClientRequest::Gather {
            keys: (0..1000).map(|i| format!("key-{i:0>20}").into()).collect(),
            wait_ms: 0,
        });
        let (parked, oversized) =
            tokio::time::timeout(timeout, futures::future::join(parked, oversized))
                .await
                .expect("the session's end is noticed at once");
        assert!(oversized.is_err(), "{oversized:?}");
        // The parked gather is answered (unknown key) or fails with the session: never hangs.
        match parked {
            Ok(ClientResponse::Results(_)) | Err(_) => {}
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() < timeout);
        // The node serves a new session.
        let again = RemoteNode::connect(addr, 1 << 20, timeout, None)
            .await
            .unwrap();
        let info = again.request(ClientRequest::Info).await.unwrap();
        assert!(matches!(info, ClientResponse::Info(_)), "{info:?}");
    });
}
