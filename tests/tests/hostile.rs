//! A hostile process against a running cluster: it speaks every protocol of a node (the
//! client protocol, the node protocol, gossip, the data port) and sends every class of bad
//! input rdask knows of, while an honest client runs graphs on the same cluster. Every node
//! stays up, its memory stays bounded, and every honest result is right.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::identity::Keypair;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId};
use rdask_graph::{Arg, GraphId, Key, Placement, TaskSpec, value};
use rdask_node::codec::{
    CLIENT_PROTOCOL, DEFAULT_MAX_FRAME, Envelope, NODE_PROTOCOL, encode_message, write_peer_batch,
};
use rdask_node::net::{build_swarm, node_behaviour};
use rdask_node::rdask_actors_protocol::{
    ClientRequest, ClientResponse, GraphSubmission, KeyResult, LoadHint, PeerBatch, PeerMsg,
    SubmitOutcome,
};
use rdask_node::{RemoteError, RemoteNode};
use rdask_tests::{NodeProcess, add, inc, resident_bytes};

const NODE: &str = env!("CARGO_BIN_EXE_rdask-test-node");
const TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn a_hostile_process_cannot_crash_exhaust_or_stall_a_cluster() {
    let common = [
        "--nthreads",
        "2",
        "--no-dashboard",
        "--max-client-sessions",
        "24",
        "--max-tasks-per-submit",
        "5000",
    ];
    let a = NodeProcess::start(NODE, &common);
    let mut b_args = common.to_vec();
    b_args.extend(["--join", &a.multiaddr]);
    let b = NodeProcess::start(NODE, &b_args);
    let a_addr: Multiaddr = a.multiaddr.parse().unwrap();
    let b_addr: Multiaddr = b.multiaddr.parse().unwrap();
    let a_peer: PeerId = a.peer_id.parse().unwrap();
    let b_peer: PeerId = b.peer_id.parse().unwrap();
    let (a_pid, b_pid) = (a.pid(), b.pid());

    // The honest client: graphs of 255 tasks over both nodes, again and again, each result
    // checked, until the attacks are over.
    let honest_address = format!("tcp://127.0.0.1:{}", a.port);
    let attacking = Arc::new(AtomicBool::new(true));
    let rounds = Arc::new(AtomicU64::new(0));
    let honest = {
        let (attacking, rounds) = (attacking.clone(), rounds.clone());
        std::thread::spawn(move || {
            let client =
                rdask::Client::connect(&honest_address).expect("the honest client connects");
            while attacking.load(Ordering::Acquire) || rounds.load(Ordering::Acquire) < 2 {
                let leaves = client.map(inc, 0..128i64);
                let mut level = leaves;
                while level.len() > 1 {
                    level = level
                        .chunks(2)
                        .map(|p| client.submit(add, (&p[0], &p[1])))
                        .collect();
                }
                let total = rdask::block_on(level[0].result()).expect("an honest result");
                assert_eq!(total, (1..=128).sum::<i64>(), "an honest result is wrong");
                rounds.fetch_add(1, Ordering::AcqRel);
            }
        })
    };
    let before = (resident_bytes(a_pid), resident_bytes(b_pid));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(240), async {
            let (mut control, _) = stranger(&a_addr).await;
            hostile_client_frames(&mut control, a_peer).await;
            hostile_client_requests(&a_addr).await;
            too_many_sessions(&a_addr).await;
            let never_reading = tokio::spawn(client_that_never_reads(control.clone(), a_peer));
            hostile_peer(&b_addr, b_peer).await;
            hostile_gossip(&a_addr, a_peer).await;
            hostile_data_port(&b_addr).await;
            never_reading.await.unwrap();
        })
        .await
        .expect("the attacks finish in time");
    });
    let after = (resident_bytes(a_pid), resident_bytes(b_pid));
    attacking.store(false, Ordering::Release);
    honest.join().expect("every honest result is right");
    assert!(rounds.load(Ordering::Acquire) >= 2);

    let mut a = a;
    let mut b = b;
    assert!(a.is_running() && b.is_running(), "a node died");
    // Bounded memory: what the attacks left behind is far below what they sent (hundreds
    // of thousands of requests, millions of nested levels, gigabytes announced).
    for (name, before, after) in [("a", before.0, after.0), ("b", before.1, after.1)] {
        if let (Some(before), Some(after)) = (before, after) {
            let grown = after.saturating_sub(before);
            eprintln!(
                "node {name}: resident {} MiB -> {} MiB",
                before >> 20,
                after >> 20
            );
            assert!(grown < 512 << 20, "node {name} grew by {} MiB", grown >> 20);
        }
    }
    rt.block_on(async {
        node_serves(&a_addr).await;
        node_serves(&b_addr).await;
    });
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

/// Frames a decoder must survive, each on a session of its own: nesting that overflowed a
/// stack, lengths announcing far more than is sent, detached values that never come,
/// garbage.
async fn hostile_client_frames(control: &mut libp2p_stream::Control, node: PeerId) {
    let mut nested = vec![1u8];
    for _ in 0..1_000_000 {
        nested.extend_from_slice(&[18, 0]);
    }
    nested.push(4);
    let frame = |body: &[u8], flags: u32| {
        let mut f = ((body.len() as u32) | flags).to_be_bytes().to_vec();
        f.extend_from_slice(body);
        f
    };
    let huge_lens = {
        let mut f = frame(&[1, 4], 1 << 31);
        let lens = postcard::to_allocvec(&vec![u64::MAX, 1 << 40]).unwrap();
        f.extend(frame(&lens, 0));
        f
    };
    let cases: Vec<Vec<u8>> = vec![
        frame(&nested, 0),
        // 64 MiB announced, 10 bytes sent, then the stream closed.
        [&(64u32 << 20).to_be_bytes()[..], &[0u8; 10]].concat(),
        // The top bit (values follow) with lengths no machine holds.
        huge_lens,
        // Lengths over any frame limit.
        u32::MAX.to_be_bytes().to_vec(),
        frame(&[1, 200, 255, 255, 255, 255, 255, 255, 255, 255, 255, 1], 0),
    ];
    for bytes in cases {
        let mut s = control.open_stream(node, CLIENT_PROTOCOL).await.unwrap();
        let _ = tokio::time::timeout(TIMEOUT, async {
            let _ = s.write_all(&bytes).await;
            let _ = s.flush().await;
            let _ = s.close().await;
            let mut buf = [0u8; 16];
            let _ = s.read(&mut buf).await;
        })
        .await;
    }
}

fn lit<T: serde::Serialize>(v: &T) -> Arg {
    Arg::Value(value::encode(v).unwrap())
}

fn spec(key: &str, function: &str, args: Vec<Arg>) -> TaskSpec {
    TaskSpec::new(Key::from(key), function, args)
}

async fn submit(remote: &RemoteNode, tasks: Vec<TaskSpec>) -> SubmitOutcome {
    let keep = tasks.iter().map(|t| t.key.clone()).collect();
    let graph = GraphSubmission {
        id: GraphId(rand::random::<u128>() | 1),
        tasks,
        keep,
    };
    match remote
        .request(ClientRequest::Submit {
            graphs: vec![graph],
        })
        .await
    {
        Ok(ClientResponse::Submitted(mut o)) => o.remove(0),
        other => panic!("unexpected answer to a submission: {other:?}"),
    }
}

async fn result(remote: &RemoteNode, key: &str) -> KeyResult {
    match remote
        .request(ClientRequest::Gather {
            keys: vec![key.into()],
            wait_ms: 30_000,
        })
        .await
    {
        Ok(ClientResponse::Results(mut r)) => r.remove(0),
        other => panic!("unexpected answer to a gather: {other:?}"),
    }
}

/// Well-formed requests with hostile content: built-ins called to recurse, to allocate
/// without bound, to hold a thread forever; a recursive argument nested a million deep;
/// a sequence announced 2⁶⁰ long; more tasks than allowed; millions of node names.
async fn hostile_client_requests(addr: &Multiaddr) {
    let remote = RemoteNode::connect(addr.clone(), DEFAULT_MAX_FRAME, TIMEOUT, None)
        .await
        .unwrap();
    let self_chain: Bytes = [&[1u8, 12][..], b"rdask::chain", &[2, 0, 0, 0, 0]]
        .concat()
        .into();
    let deep_tree: Bytes = {
        let depth = 1_000_000;
        let mut b = vec![1u8; depth];
        for _ in 0..=depth {
            b.extend_from_slice(&[0, 0]);
        }
        b.into()
    };
    let huge_len: Bytes = postcard::to_allocvec(&(1u64 << 60)).unwrap().into();
    let scatter = spec(
        "scatter-8m",
        "rdask::scatter",
        vec![lit(&Bytes::from(vec![5u8; 8 << 20]))],
    );
    let mut pack_args = vec![lit(&10_000u64)];
    pack_args.extend((0..10_000).map(|_| Arg::Key("scatter-8m".into())));
    let tasks = vec![
        spec(
            "chain-self",
            "rdask::chain",
            vec![Arg::Value(self_chain.clone()), Arg::Value(self_chain)],
        ),
        scatter,
        spec("pack-all", "rdask::pack", pack_args),
        spec(
            "sleep-forever",
            rdask::builtins::sleep_ms.name(),
            vec![lit(&u64::MAX)],
        ),
        spec(
            "tree-deep",
            rdask_tests::tree_sum.name(),
            vec![Arg::Value(deep_tree)],
        ),
        spec(
            "sum-huge",
            rdask::builtins::sum.name(),
            vec![Arg::Value(huge_len)],
        ),
    ];
    assert_eq!(submit(&remote, tasks).await, SubmitOutcome::Accepted);
    for key in [
        "chain-self",
        "pack-all",
        "sleep-forever",
        "tree-deep",
        "sum-huge",
    ] {
        match result(&remote, key).await {
            KeyResult::Error(e) => eprintln!("{key}: {e}"),
            other => panic!("{key}: expected an error, got {other:?}"),
        }
    }
    // More tasks than --max-tasks-per-submit: rejected whole, naming the flag.
    let many: Vec<TaskSpec> = (0..6000)
        .map(|i| spec(&format!("inc-many-{i}"), inc.name(), vec![lit(&1i64)]))
        .collect();
    match submit(&remote, many).await {
        SubmitOutcome::Rejected(e) => assert!(e.to_string().contains("--max-tasks-per-submit")),
        other => panic!("{other:?}"),
    }
    // A task restricted to 100,000 invented nodes: accepted, waits, released.
    let mut restricted = spec("inc-nowhere", inc.name(), vec![lit(&1i64)]);
    restricted.placement = Some(Placement {
        nodes: (0..100_000)
            .map(|i| format!("invented-{i}").into())
            .collect(),
        loose: false,
    });
    assert_eq!(
        submit(&remote, vec![restricted]).await,
        SubmitOutcome::Accepted
    );
    let _ = remote
        .request(ClientRequest::Release {
            keys: vec!["inc-nowhere".into(), "scatter-8m".into()],
        })
        .await;
}

/// More sessions than --max-client-sessions: the ones over it are refused with the flag
/// named; the others (and the honest client) are served.
async fn too_many_sessions(addr: &Multiaddr) {
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..30 {
        let remote = RemoteNode::connect(addr.clone(), DEFAULT_MAX_FRAME, TIMEOUT, None)
            .await
            .unwrap();
        let hello = remote
            .request(ClientRequest::Hello {
                protocol: rdask_gossip::PROTOCOL_VERSION,
                version: "hostile".into(),
            })
            .await;
        match hello {
            Ok(ClientResponse::Welcome(..)) => open.push(remote),
            Ok(ClientResponse::Refused(why)) => {
                assert!(why.contains("--max-client-sessions"), "{why}");
                refused += 1;
            }
            Err(RemoteError::Lost(_)) => refused += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!(refused > 0, "no session was refused");
    drop(open);
}

/// A session that submits graphs and asks for large answers, 50,000 requests, and never
/// reads one answer.
async fn client_that_never_reads(mut control: libp2p_stream::Control, node: PeerId) {
    let Ok(mut s) = control.open_stream(node, CLIENT_PROTOCOL).await else {
        return;
    };
    let _ = tokio::time::timeout(Duration::from_secs(20), async {
        for id in 0..50_000u64 {
            let body = if id % 10 == 0 {
                let tasks = (0..5)
                    .map(|i| {
                        spec(
                            &format!("inc-unread-{id}-{i}"),
                            inc.name(),
                            vec![lit(&1i64)],
                        )
                    })
                    .collect();
                ClientRequest::Submit {
                    graphs: vec![GraphSubmission {
                        id: GraphId((u128::from(id) << 64) | 7),
                        tasks,
                        keep: Vec::new(),
                    }],
                }
            } else {
                ClientRequest::Snapshot { events_since_ms: 0 }
            };
            let request = Envelope { id, body };
            let encoded = encode_message(&request, DEFAULT_MAX_FRAME, 1 << 30).unwrap();
            if encoded.write(&mut s).await.is_err() {
                return;
            }
        }
    })
    .await;
    // Keep the stream open, unread, a while longer: the node must not hold on to it.
    tokio::time::sleep(Duration::from_secs(2)).await;
}

/// The node protocol: garbage, nesting, impossible values, and a flood of fetches whose
/// answers are never read.
async fn hostile_peer(addr: &Multiaddr, node: PeerId) {
    let (mut control, _) = stranger(addr).await;
    // Accept the node's streams back, and never read them.
    let mut incoming = control.accept(NODE_PROTOCOL).unwrap();
    let held = tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Ok(Some(s)) = tokio::time::timeout(Duration::from_secs(15), incoming.next()).await
        {
            kept.push(s);
        }
        kept.len()
    });
    let mut nested = vec![0u8; 2];
    for _ in 0..500_000 {
        nested.extend_from_slice(&[19, 0]);
    }
    let frames: Vec<Vec<u8>> = vec![
        [&(nested.len() as u32).to_be_bytes()[..], &nested].concat(),
        [&(60u32 << 20).to_be_bytes()[..], &[1u8; 100]].concat(),
        vec![0xde, 0xad, 0xbe, 0xef, 1, 2, 3],
    ];
    for bytes in frames {
        if let Ok(mut s) = control.open_stream(node, NODE_PROTOCOL).await {
            let _ = tokio::time::timeout(TIMEOUT, async {
                let _ = s.write_all(&bytes).await;
                let _ = s.close().await;
            })
            .await;
        }
    }
    let owner = rdask_gossip::NodeId(node.to_base58().into());
    if let Ok(mut s) = control.open_stream(node, NODE_PROTOCOL).await {
        let _ = tokio::time::timeout(Duration::from_secs(20), async {
            for round in 0..2000u32 {
                let msgs = (0..50)
                    .map(|i| PeerMsg::Fetch {
                        owner: owner.clone(),
                        key: format!("unknown-{round}-{i}").into(),
                    })
                    .collect();
                let batch = PeerBatch {
                    load: LoadHint {
                        queued: u32::MAX,
                        running: u32::MAX,
                        nthreads: u32::MAX,
                        paused: false,
                    },
                    msgs,
                };
                if write_peer_batch(&mut s, batch, DEFAULT_MAX_FRAME, 1 << 30)
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let _ = s.flush().await;
        })
        .await;
    }
    let _ = held.await;
}

/// Gossip datagrams that are garbage or nested, from a peer that is not a member.
async fn hostile_gossip(addr: &Multiaddr, node: PeerId) {
    let mut swarm = build_swarm(Keypair::generate_ed25519(), None, |k| {
        node_behaviour(k, "hostile".into(), 16)
    })
    .unwrap();
    swarm.dial(addr.clone()).unwrap();
    let started = Instant::now();
    let mut sent = 0;
    let nested = vec![1u8; 400_001];
    while started.elapsed() < Duration::from_secs(15) && sent < 200 {
        tokio::select! {
            _ = swarm.select_next_some() => {}
            _ = tokio::time::sleep(Duration::from_millis(5)) => {
                if swarm.is_connected(&node) {
                    let data: Bytes = match sent % 3 {
                        0 => nested.clone().into(),
                        1 => (0..512).map(|i| (i * 7 + sent) as u8).collect::<Vec<u8>>().into(),
                        _ => vec![1, 0, 0, 255, 255, 255, 255, 15].into(),
                    };
                    swarm.behaviour_mut().gossip.send_request(&node, data);
                    sent += 1;
                }
            }
        }
    }
    assert!(sent > 0, "the gossip stranger never connected");
}

/// The data port: forged handshakes and garbage.
async fn hostile_data_port(addr: &Multiaddr) {
    let remote = RemoteNode::connect(addr.clone(), DEFAULT_MAX_FRAME, TIMEOUT, None)
        .await
        .unwrap();
    let port = match remote.request(ClientRequest::Info).await.unwrap() {
        ClientResponse::Info(nodes) => nodes[0].member.data_port,
        other => panic!("{other:?}"),
    };
    for i in 0..20u8 {
        let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
            continue;
        };
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let _ = tokio::time::timeout(TIMEOUT, async {
            let mut hello = [0u8; 45];
            let _ = s.read_exact(&mut hello).await;
            let bytes: Vec<u8> = match i % 2 {
                0 => [&[36u8, 0][..], &[1u8; 36], &[64, 0], &[2u8; 64]].concat(),
                _ => vec![0xff, 0xff, i, i],
            };
            let _ = s.write_all(&bytes).await;
            let mut ok = [0u8; 1];
            let accepted = s.read(&mut ok).await.is_ok_and(|n| n == 1 && ok[0] == 1);
            assert!(!accepted, "a forged handshake was accepted");
        })
        .await;
    }
}

/// A new client session gets a chain of ten tasks computed right.
async fn node_serves(addr: &Multiaddr) {
    let remote = RemoteNode::connect(addr.clone(), DEFAULT_MAX_FRAME, TIMEOUT, None)
        .await
        .expect("the node accepts a new session");
    let mut tasks = vec![spec("inc-c0", inc.name(), vec![lit(&0i64)])];
    for i in 1..10 {
        tasks.push(spec(
            &format!("inc-c{i}"),
            inc.name(),
            vec![Arg::Key(format!("inc-c{}", i - 1).into())],
        ));
    }
    assert_eq!(submit(&remote, tasks).await, SubmitOutcome::Accepted);
    match result(&remote, "inc-c9").await {
        KeyResult::Value(v) => assert_eq!(value::decode::<i64>(&v).unwrap(), 10),
        other => panic!("{other:?}"),
    }
}
