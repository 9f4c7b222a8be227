//! Bad input over the network: a node never crashes on what it receives, and loses nothing.

use std::io::Write;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::identity::Keypair;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId};
use rand::{RngExt, SeedableRng};
use rdask_node::codec::{CLIENT_PROTOCOL, DEFAULT_MAX_FRAME};
use rdask_node::net::build_swarm;
use rdask_node::rdask_actors_protocol::{
    ClientRequest, ClientResponse, GraphSubmission, KeyResult, SubmitOutcome,
};
use rdask_node::{RemoteError, RemoteNode};
use rdask_tests::NodeProcess;

const NODE: &str = env!("CARGO_BIN_EXE_rdask-test-node");

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs an async test body on a fresh runtime with a deadline.
fn bounded<F: std::future::Future>(secs: u64, f: F) -> F::Output {
    runtime()
        .block_on(async { tokio::time::timeout(Duration::from_secs(secs), f).await })
        .unwrap_or_else(|_| panic!("test did not finish within {secs} s"))
}

/// The node answers a normal client: a chain of increments gives its value.
async fn node_still_serves(addr: &Multiaddr) {
    let remote = RemoteNode::connect(addr.clone(), DEFAULT_MAX_FRAME, Duration::from_secs(10))
        .await
        .expect("the node still accepts connections");
    let inc = rdask_tests::inc.name();
    let mut tasks = vec![rdask_graph::TaskSpec::new(
        "inc-0".into(),
        inc,
        vec![rdask_graph::Arg::Value(
            rdask_graph::value::encode(&0i64).unwrap(),
        )],
    )];
    for i in 1..10 {
        tasks.push(rdask_graph::TaskSpec::new(
            format!("inc-{i}").into(),
            inc,
            vec![rdask_graph::Arg::Key(format!("inc-{}", i - 1).into())],
        ));
    }
    let id = rdask_graph::GraphId(rand::random());
    let keep = vec!["inc-9".into()];
    let resp = remote
        .request(ClientRequest::Submit {
            graphs: vec![GraphSubmission { id, tasks, keep }],
        })
        .await
        .unwrap();
    assert_eq!(
        resp,
        ClientResponse::Submitted(vec![SubmitOutcome::Accepted])
    );
    let resp = remote
        .request(ClientRequest::Gather {
            keys: vec!["inc-9".into()],
            wait_ms: 10_000,
        })
        .await
        .unwrap();
    match resp {
        ClientResponse::Results(r) => match &r[0] {
            KeyResult::Value(b) => assert_eq!(rdask_graph::value::decode::<i64>(b).unwrap(), 10),
            other => panic!("expected a value, got {other:?}"),
        },
        other => panic!("unexpected {other:?}"),
    }
    remote
        .request(ClientRequest::Release {
            keys: vec!["inc-9".into()],
        })
        .await
        .unwrap();
}

#[test]
fn random_bytes_on_the_node_port_do_not_crash_it() {
    let mut node = NodeProcess::start(NODE, &[]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for i in 0..50 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", node.port)).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let len = if i % 10 == 0 {
            1 << 20
        } else {
            rng.random_range(1..4096)
        };
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        if i % 3 == 0 {
            // a plausible start of a libp2p handshake, then garbage
            let mut start = b"\x13/multistream/1.0.0\n\x07/noise\n".to_vec();
            start.append(&mut bytes);
            bytes = start;
        }
        // The node may close the connection before reading everything.
        let _ = s.write_all(&bytes);
    }
    assert!(node.is_running(), "the node died on random bytes");
    let addr: Multiaddr = node.multiaddr.parse().unwrap();
    bounded(60, node_still_serves(&addr));
    assert!(node.is_running());
}

#[test]
fn an_oversized_frame_is_refused_and_the_node_keeps_serving() {
    let mut node = NodeProcess::start(NODE, &["--max-frame-bytes", "1048576"]);
    let addr: Multiaddr = node.multiaddr.parse().unwrap();
    bounded(120, async {
        // A client whose own limit is far larger than the node's.
        let big = RemoteNode::connect(addr.clone(), 1 << 30, Duration::from_secs(10))
            .await
            .unwrap();
        let keys = (0..4096).map(|i| format!("{i:01000}").into()).collect();
        let err = big
            .request(ClientRequest::Release { keys })
            .await
            .unwrap_err();
        assert!(matches!(err, RemoteError::Lost(_)), "{err}");
        node_still_serves(&addr).await;
    });
    assert!(node.is_running());
}

#[test]
fn malformed_frames_end_the_session_and_the_node_keeps_serving() {
    let mut node = NodeProcess::start(NODE, &[]);
    let addr: Multiaddr = node.multiaddr.parse().unwrap();
    let peer: PeerId = node.peer_id.parse().unwrap();
    bounded(120, async {
        let mut swarm = build_swarm(Keypair::generate_ed25519(), |_| {
            libp2p_stream::Behaviour::new()
        })
        .unwrap();
        let mut control = swarm.behaviour().new_control();
        swarm.dial(addr.clone()).unwrap();
        loop {
            if let SwarmEvent::ConnectionEstablished { .. } = swarm.select_next_some().await {
                break;
            }
        }
        tokio::spawn(async move {
            loop {
                swarm.select_next_some().await;
            }
        });
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for i in 0..100usize {
            let mut stream = control.open_stream(peer, CLIENT_PROTOCOL).await.unwrap();
            // A frame of the announced length whose body is not a request envelope.
            let len = rng.random_range(0..(64 + i * 8));
            let mut body: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if i % 4 == 0 && body.len() > 2 {
                body[0] = 1; // a plausible id, then a bad request tag
                body[1] = 200;
            }
            let mut frame = (body.len() as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(&body);
            let _ = stream.write_all(&frame).await;
            let _ = stream.flush().await;
            // The node ends the session: reading gives end-of-stream or an error, no answer
            // (a rare random body may decode as a request, which gets a normal answer).
            let mut buf = [0u8; 4];
            let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut buf)).await;
        }
        node_still_serves(&addr).await;
    });
    assert!(node.is_running());
}

#[test]
fn a_graph_with_an_unknown_function_is_rejected_whole_and_nothing_of_it_runs() {
    let node = NodeProcess::start(NODE, &[]);
    let addr: Multiaddr = node.multiaddr.parse().unwrap();
    bounded(60, async {
        let remote = RemoteNode::connect(addr.clone(), DEFAULT_MAX_FRAME, Duration::from_secs(10))
            .await
            .unwrap();
        let one = rdask_graph::Arg::Value(rdask_graph::value::encode(&1i64).unwrap());
        let tasks = vec![
            rdask_graph::TaskSpec::new("inc-a".into(), rdask_tests::inc.name(), vec![one.clone()]),
            rdask_graph::TaskSpec::new("nope-b".into(), "no::such::function", vec![one]),
        ];
        let keep = vec!["inc-a".into(), "nope-b".into()];
        let resp = remote
            .request(ClientRequest::Submit {
                graphs: vec![GraphSubmission {
                    id: rdask_graph::GraphId(1),
                    tasks,
                    keep,
                }],
            })
            .await
            .unwrap();
        match resp {
            ClientResponse::Submitted(o) => match &o[0] {
                SubmitOutcome::Rejected(rdask_graph::GraphError::UnknownFunction {
                    key,
                    function,
                }) => {
                    assert_eq!(key.as_str(), "nope-b");
                    assert_eq!(&**function, "no::such::function");
                }
                other => panic!("expected a rejection, got {other:?}"),
            },
            other => panic!("unexpected {other:?}"),
        }
        let resp = remote
            .request(ClientRequest::Gather {
                keys: vec!["inc-a".into()],
                wait_ms: 0,
            })
            .await
            .unwrap();
        assert_eq!(
            resp,
            ClientResponse::Results(vec![KeyResult::Unknown]),
            "nothing ran"
        );
        match remote.request(ClientRequest::Info).await.unwrap() {
            ClientResponse::Info(nodes) => {
                assert_eq!(nodes[0].load.stored, 0);
                assert_eq!(nodes[0].load.queued, 0);
            }
            other => panic!("unexpected {other:?}"),
        }
    });
}

#[test]
fn a_client_with_another_protocol_version_is_refused_with_a_reason() {
    let node = NodeProcess::start(NODE, &[]);
    let addr: Multiaddr = node.multiaddr.parse().unwrap();
    bounded(60, async {
        let remote = RemoteNode::connect(addr, DEFAULT_MAX_FRAME, Duration::from_secs(10))
            .await
            .unwrap();
        let resp = remote
            .request(ClientRequest::Hello {
                protocol: 9999,
                version: "9.9.9".into(),
            })
            .await
            .unwrap();
        match resp {
            ClientResponse::Refused(reason) => {
                assert!(reason.contains("protocol version"), "{reason}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    });
}

#[test]
fn a_peer_of_another_protocol_version_is_refused() {
    use libp2p::{identify, ping};

    #[derive(libp2p::swarm::NetworkBehaviour)]
    struct Stranger {
        identify: identify::Behaviour,
        ping: ping::Behaviour,
    }

    let mut node = NodeProcess::start(NODE, &[]);
    let addr: Multiaddr = node.multiaddr.parse().unwrap();
    bounded(60, async {
        let mut swarm = build_swarm(Keypair::generate_ed25519(), |k| Stranger {
            identify: identify::Behaviour::new(identify::Config::new(
                "/rdask/999".into(),
                k.public(),
            )),
            ping: ping::Behaviour::default(),
        })
        .unwrap();
        swarm.dial(addr.clone()).unwrap();
        let mut connected = false;
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::ConnectionEstablished { .. } => connected = true,
                SwarmEvent::ConnectionClosed { .. } if connected => break,
                _ => {}
            }
        }
        // and a compatible client still gets in
        node_still_serves(&addr).await;
    });
    assert!(node.is_running());
}
