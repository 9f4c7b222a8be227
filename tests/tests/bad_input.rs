//! Bad input over the network: a node never crashes on what it receives, and loses nothing.

use std::io::Write;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::identity::Keypair;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId};
use rand::{RngExt, SeedableRng};
use rdask_node::codec::{CLIENT_PROTOCOL, DEFAULT_MAX_FRAME, NODE_PROTOCOL, write_peer_batch};
use rdask_node::net::build_swarm;
use rdask_node::rdask_actors_protocol::{
    AssignArg, Assignment, ClientRequest, ClientResponse, GraphSubmission, KeyResult, LoadHint,
    PeerBatch, PeerMsg, SubmitOutcome,
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
    let remote = RemoteNode::connect(
        addr.clone(),
        DEFAULT_MAX_FRAME,
        Duration::from_secs(10),
        None,
    )
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
fn random_bytes_and_forged_handshakes_on_the_data_port_do_not_crash_it() {
    let mut node = NodeProcess::start(NODE, &[]);
    let addr: Multiaddr = node.multiaddr.parse().unwrap();
    // The data port, from the node's member record.
    let port = bounded(30, async {
        let remote = RemoteNode::connect(
            addr.clone(),
            DEFAULT_MAX_FRAME,
            Duration::from_secs(10),
            None,
        )
        .await
        .unwrap();
        match remote.request(ClientRequest::Info).await.unwrap() {
            ClientResponse::Info(nodes) => nodes[0].member.data_port,
            other => panic!("unexpected {other:?}"),
        }
    });
    assert_ne!(port, 0, "a node without a secret has a data port");
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for i in 0..30 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut hello = [0u8; 45];
        let _ = std::io::Read::read_exact(&mut s, &mut hello);
        assert_eq!(&hello[..13], b"rdask-data/1\n");
        let bytes: Vec<u8> = match i % 3 {
            // A key and a signature of plausible sizes, both wrong.
            0 => [&[36u8, 0][..], &[1u8; 36], &[64, 0], &[2u8; 64]].concat(),
            // A field announced far too large.
            1 => vec![0xff, 0xff, 0, 0],
            _ => (0..rng.random_range(1..4096))
                .map(|_| rng.random())
                .collect(),
        };
        let _ = s.write_all(&bytes);
        // Refused: the connection is closed without the byte that accepts it.
        let mut ok = [0u8; 1];
        let accepted = std::io::Read::read(&mut s, &mut ok).is_ok_and(|n| n == 1 && ok[0] == 1);
        assert!(!accepted, "a forged handshake was accepted");
    }
    assert!(node.is_running(), "the node died on its data port");
    bounded(60, node_still_serves(&addr));
    assert!(node.is_running());
}

#[test]
fn an_oversized_frame_is_refused_and_the_node_keeps_serving() {
    let mut node = NodeProcess::start(NODE, &["--max-frame-bytes", "1048576"]);
    let addr: Multiaddr = node.multiaddr.parse().unwrap();
    bounded(120, async {
        // A client whose own limit is far larger than the node's.
        let big = RemoteNode::connect(addr.clone(), 1 << 30, Duration::from_secs(10), None)
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
        let mut swarm = build_swarm(Keypair::generate_ed25519(), None, |_| {
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

/// A peer that dials `addr` and can open streams; its swarm is polled in the background.
async fn stranger(addr: &Multiaddr) -> (libp2p_stream::Control, PeerId) {
    let mut swarm = build_swarm(Keypair::generate_ed25519(), None, |_| {
        libp2p_stream::Behaviour::new()
    })
    .unwrap();
    let me = *swarm.local_peer_id();
    let control = swarm.behaviour().new_control();
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
    (control, me)
}

#[test]
fn bad_batches_from_a_peer_end_its_stream_and_nonsense_messages_are_ignored() {
    let mut node = NodeProcess::start(NODE, &["--max-value-bytes", "1000"]);
    let addr: Multiaddr = node.multiaddr.parse().unwrap();
    let peer: PeerId = node.peer_id.parse().unwrap();
    bounded(120, async {
        let (mut control, me) = stranger(&addr).await;
        let me = rdask_gossip::NodeId(me.to_base58().into());
        let node_id = rdask_gossip::NodeId(peer.to_base58().into());
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        // Garbage frames, and headers announcing values that never come or are too large.
        for i in 0..60usize {
            let mut stream = control.open_stream(peer, NODE_PROTOCOL).await.unwrap();
            let mut bytes: Vec<u8> = if i % 3 == 0 {
                let len = rng.random_range(0..(64 + i * 8));
                let mut body: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                if body.len() > 8 {
                    body[4] = 1; // one message, then noise
                }
                let mut frame = (body.len() as u32).to_be_bytes().to_vec();
                frame.extend_from_slice(&body);
                frame
            } else {
                let size = if i % 3 == 1 { 5_000 } else { 500 };
                let batch = PeerBatch {
                    load: LoadHint::default(),
                    msgs: vec![PeerMsg::Data {
                        owner: node_id.clone(),
                        key: "k".into(),
                        value: Some(vec![9u8; size].into()),
                    }],
                };
                let mut wire = Vec::new();
                write_peer_batch(&mut wire, batch, DEFAULT_MAX_FRAME, u64::MAX)
                    .await
                    .unwrap();
                wire.truncate(wire.len() - size / 2); // the value cut short
                wire
            };
            bytes.extend((0..rng.random_range(0..32)).map(|_| rng.random::<u8>()));
            let _ = stream.write_all(&bytes).await;
            let _ = stream.flush().await;
            let _ = stream.close().await;
        }
        // Well-formed batches of messages that make no sense to the node: answers to
        // unknown nodes, to this stranger (which accepts no stream) and to ids that are no
        // peer ids are dropped.
        let nobody = rdask_gossip::NodeId("not-a-peer-id".into());
        let mut assign = |owner: &rdask_gossip::NodeId, function: &str, args: Vec<AssignArg>| {
            PeerMsg::Assign(Assignment {
                owner: owner.clone(),
                key: format!("nonsense-{}", rng.random::<u32>()).into(),
                function: function.into(),
                args,
                priority: u64::MAX,
                hops: u32::MAX,
                retries: u8::MAX,
                placement: None,
                resources: vec![("GPU".into(), u64::MAX)],
            })
        };
        let inc = rdask_tests::inc.name();
        let msgs = vec![
            assign(&nobody, "no-such-function", vec![]),
            assign(&me, inc, vec![AssignArg::Value(vec![0xff; 3].into())]),
            assign(&me, inc, vec![]),
            assign(
                &me,
                inc,
                vec![AssignArg::Input {
                    key: "somewhere".into(),
                    size: u64::MAX,
                    holders: vec![nobody.clone(), me.clone(), node_id.clone()],
                }],
            ),
            assign(&node_id, inc, vec![]),
            PeerMsg::Done {
                key: "never-placed".into(),
                size: 1,
                error: None,
                elapsed_ns: u64::MAX,
                hops: u32::MAX,
            },
            PeerMsg::Holding {
                key: "never-placed".into(),
                size: u64::MAX,
            },
            PeerMsg::Moved {
                key: "never-placed".into(),
                to: nobody.clone(),
                hops: u32::MAX,
            },
            PeerMsg::Fetch {
                owner: nobody.clone(),
                key: "k".into(),
            },
            PeerMsg::Fetch {
                owner: node_id.clone(),
                key: "k".into(),
            },
            PeerMsg::Data {
                owner: nobody.clone(),
                key: "k".into(),
                value: Some(vec![1u8; 10].into()),
            },
            PeerMsg::Data {
                owner: node_id.clone(),
                key: "k".into(),
                value: None,
            },
            PeerMsg::Release {
                hops: u32::MAX,
                owner: nobody.clone(),
                keys: vec!["k".into(); 100],
            },
            PeerMsg::Release {
                hops: u32::MAX,
                owner: node_id.clone(),
                keys: vec!["k".into(); 100],
            },
            PeerMsg::Forgotten {
                key: "never-placed".into(),
            },
            PeerMsg::Steal { want: u32::MAX },
            PeerMsg::Stolen {
                tasks: vec![Assignment {
                    owner: node_id.clone(),
                    key: "stolen".into(),
                    function: inc.into(),
                    args: vec![],
                    priority: 0,
                    hops: u32::MAX,
                    retries: u8::MAX,
                    placement: Some(rdask_graph::Placement {
                        nodes: vec!["nowhere".into()],
                        loose: false,
                    }),
                    resources: Vec::new(),
                }],
                busiest: Some((nobody.clone(), u32::MAX)),
            },
        ];
        let mut stream = control.open_stream(peer, NODE_PROTOCOL).await.unwrap();
        for round in 0..3 {
            let batch = PeerBatch {
                load: LoadHint {
                    queued: u32::MAX,
                    running: u32::MAX,
                    nthreads: if round == 0 { 0 } else { u32::MAX },
                    paused: round == 2,
                },
                msgs: msgs.clone(),
            };
            write_peer_batch(&mut stream, batch, DEFAULT_MAX_FRAME, u64::MAX)
                .await
                .unwrap();
        }
        stream.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        node_still_serves(&addr).await;
    });
    assert!(node.is_running());
}

#[test]
fn a_graph_with_an_unknown_function_is_rejected_whole_and_nothing_of_it_runs() {
    let node = NodeProcess::start(NODE, &[]);
    let addr: Multiaddr = node.multiaddr.parse().unwrap();
    bounded(60, async {
        let remote = RemoteNode::connect(
            addr.clone(),
            DEFAULT_MAX_FRAME,
            Duration::from_secs(10),
            None,
        )
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
        let remote = RemoteNode::connect(addr, DEFAULT_MAX_FRAME, Duration::from_secs(10), None)
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
        let mut swarm = build_swarm(Keypair::generate_ed25519(), None, |k| Stranger {
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
