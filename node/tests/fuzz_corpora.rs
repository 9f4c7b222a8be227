//! The fuzz targets' kept corpora, and every input that once crashed one, replayed on
//! stable: each decoder of outside bytes must still return on all of them (no panic, no
//! abort, no hang). The fuzzers themselves run with `cargo fuzz` (see `fuzz/README.md`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rdask_node::fuzzing::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn inputs(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
    files.sort();
    files
        .into_iter()
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).expect("readable corpus file");
            (p, bytes)
        })
        .collect()
}

/// Runs `f` on `data` on a thread with the stack of a task thread or an I/O thread (2 MiB),
/// so that a recursion that would overflow it in production fails here too.
fn run(f: fn(&[u8]), data: Vec<u8>) {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || f(&data))
        .expect("a thread")
        .join()
        .expect("the target returned without panicking");
}

#[test]
fn every_kept_input_and_every_past_crash_is_handled() {
    let mut total = 0;
    for (name, f) in TARGETS {
        let corpus = inputs(&fuzz_dir().join("corpus").join(name));
        let crashes = inputs(&fuzz_dir().join("regressions").join(name));
        assert!(
            !corpus.is_empty(),
            "no corpus for the fuzz target {name}: run it (fuzz/README.md) and keep its corpus"
        );
        for (path, data) in corpus.into_iter().chain(crashes) {
            let started = Instant::now();
            run(f, data);
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{name}: {} took {:?}",
                path.display(),
                started.elapsed()
            );
            total += 1;
        }
    }
    assert!(total > 0);
}

/// A few thousand pseudo-random inputs per target, and inputs made of each target's corpus
/// with bytes flipped: a smoke test of the targets themselves on every CI run.
#[test]
fn the_targets_survive_random_and_mutated_inputs() {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for (name, f) in TARGETS {
        let mut seeds: Vec<Vec<u8>> = inputs(&fuzz_dir().join("corpus").join(name))
            .into_iter()
            .map(|(_, d)| d)
            .take(64)
            .collect();
        seeds.push(Vec::new());
        for i in 0..500 {
            let mut data = seeds[i % seeds.len()].clone();
            let len = (next() % 256) as usize;
            if data.is_empty() || i % 3 == 0 {
                data = (0..len).map(|_| next() as u8).collect();
            } else {
                for _ in 0..1 + next() % 4 {
                    let at = (next() as usize) % data.len();
                    data[at] = next() as u8;
                }
            }
            let started = Instant::now();
            run(f, data);
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{name}: a random input took {:?}",
                started.elapsed()
            );
        }
    }
}

/// Writes the seed inputs the corpora started from: valid messages of every protocol, so
/// that the fuzzers begin deep inside the decoders. Run by hand:
/// `cargo test -p rdask-node --test fuzz_corpora -- --ignored`.
#[test]
#[ignore]
fn write_seed_corpora() {
    use bytes::Bytes;
    use rdask_graph::{Arg, GraphId, Key, TaskSpec, value};
    use rdask_node::codec::{Envelope, encode_message, write_peer_batch};
    use rdask_node::rdask_actors_protocol::*;

    fn save(target: &str, name: &str, data: &[u8]) {
        let dir = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
    }
    fn message<T: serde::Serialize>(msg: &T) -> Vec<u8> {
        let mut wire = Vec::new();
        let encoded = encode_message(msg, 1 << 16, 1 << 20).unwrap();
        futures::executor::block_on(encoded.write(&mut wire)).unwrap();
        wire
    }
    let v = |x: i64| Arg::Value(value::encode(&x).unwrap());
    let big = Arg::Value(Bytes::from(vec![7u8; 5000]));
    let spec = |k: &str, f: &str, args: Vec<Arg>| TaskSpec::new(Key::from(k), f, args);
    let tasks = vec![
        spec("inc-1", "rdask::builtins::inc", vec![v(1)]),
        spec(
            "add-2",
            "rdask::builtins::add",
            vec![Arg::Key("inc-1".into()), v(2)],
        ),
        spec("scatter-3", "rdask::scatter", vec![big]),
        spec(
            "pack-4",
            "rdask::pack",
            vec![v(2), Arg::Key("inc-1".into()), Arg::Key("add-2".into())],
        ),
    ];
    let keys: Vec<Key> = tasks.iter().map(|t| t.key.clone()).collect();
    let requests = vec![
        ClientRequest::Hello {
            protocol: 3,
            version: "0.1.0".into(),
        },
        ClientRequest::Submit {
            graphs: vec![GraphSubmission {
                id: GraphId(1 << 64 | 1),
                tasks: tasks.clone(),
                keep: keys.clone(),
            }],
        },
        ClientRequest::Gather {
            keys: keys.clone(),
            wait_ms: 10,
        },
        ClientRequest::Release { keys: keys.clone() },
        ClientRequest::Forward {
            owner: rdask_gossip::NodeId("owner".into()),
            request: ForwardedRequest::Status { keys: keys.clone() },
        },
        ClientRequest::Snapshot { events_since_ms: 0 },
    ];
    for (i, r) in requests.into_iter().enumerate() {
        save(
            "client_request",
            &i.to_string(),
            &message(&Envelope {
                id: i as u64,
                body: r,
            }),
        );
    }
    let responses = vec![
        ClientResponse::Results(vec![
            KeyResult::Value(Bytes::from(vec![1u8; 6000])),
            KeyResult::Value(Bytes::from_static(b"\x02")),
            KeyResult::Pending,
            KeyResult::Unknown,
        ]),
        ClientResponse::Submitted(vec![SubmitOutcome::Accepted]),
        ClientResponse::Refused("no".into()),
        ClientResponse::Holders(vec![vec![rdask_gossip::NodeId("a".into())]]),
    ];
    for (i, r) in responses.into_iter().enumerate() {
        save(
            "client_response",
            &i.to_string(),
            &message(&Envelope {
                id: i as u64,
                body: r,
            }),
        );
    }
    let owner = rdask_gossip::NodeId("fuzzer".into());
    let batches = vec![
        PeerBatch {
            load: LoadHint::default(),
            msgs: vec![
                PeerMsg::Assign(Assignment {
                    owner: owner.clone(),
                    key: "inc-9".into(),
                    function: "rdask::builtins::inc".into(),
                    args: vec![AssignArg::Value(value::encode(&1i64).unwrap())],
                    priority: 0,
                    placement: None,
                    resources: vec![],
                    hops: 1,
                    retries: 0,
                }),
                PeerMsg::Fetch {
                    owner: owner.clone(),
                    key: "inc-9".into(),
                },
                PeerMsg::Steal { want: 2 },
            ],
        },
        PeerBatch {
            load: LoadHint::default(),
            msgs: vec![
                PeerMsg::Data {
                    owner: owner.clone(),
                    key: "x-1".into(),
                    value: Some(Bytes::from(vec![3u8; 5000])),
                },
                PeerMsg::Done {
                    key: "x-1".into(),
                    size: 5000,
                    error: None,
                    elapsed_ns: 10,
                    hops: 1,
                },
                PeerMsg::Release {
                    owner: owner.clone(),
                    keys: vec!["x-1".into()],
                    hops: 1,
                },
                PeerMsg::Recover {
                    old: owner.clone(),
                    epoch: 1 << 32,
                    handover: false,
                },
            ],
        },
    ];
    for (i, b) in batches.into_iter().enumerate() {
        let mut wire = Vec::new();
        futures::executor::block_on(write_peer_batch(&mut wire, b, 1 << 16, 1 << 20)).unwrap();
        save("peer_batch", &i.to_string(), &wire);
    }
    // Gossip: what a node sends when it joins and probes.
    let peer = |n: &str| rdask_gossip::Peer {
        node: rdask_gossip::NodeId(n.into()),
        addr: "/ip4/127.0.0.1/tcp/1".into(),
        generation: 1,
    };
    let info = |n: &str| {
        let mut m: rdask_gossip::MemberInfo = serde_json::from_value(serde_json::json!({
            "id": n, "addresses": [], "nthreads": 2, "memory_bytes": 0,
            "functions_digest": 0, "functions": 0, "version": "0.1.0", "protocol": 3,
            "resources": []
        }))
        .unwrap();
        m.addresses.push("/ip4/127.0.0.1/tcp/1".into());
        m
    };
    let mut a =
        rdask_gossip::Gossip::new(peer("a"), info("a"), rdask_gossip::GossipConfig::lan(4), 1);
    a.join(peer("fuzzed-node"), 0).unwrap();
    for t in 0..3u64 {
        for (to, timer) in a.take_timers() {
            let _ = to;
            a.handle_timer(timer, 1000 * (t + 1));
        }
    }
    for (i, (_, data)) in a.take_sends().into_iter().enumerate().take(16) {
        save("gossip", &i.to_string(), &data);
    }
    // The handshake: a public key and a (wrong) signature.
    let key = libp2p::identity::Keypair::generate_ed25519();
    let pk = key.public().encode_protobuf();
    let mut hs = (pk.len() as u16).to_le_bytes().to_vec();
    hs.extend(&pk);
    hs.extend(64u16.to_le_bytes());
    hs.extend([9u8; 64]);
    save("handshake", "0", &hs);
    save("graph", "0", &postcard::to_allocvec(&tasks).unwrap());
    for (i, name) in rdask_node::builtins::names().iter().enumerate() {
        let args: Vec<Vec<u8>> = match *name {
            "rdask::chain" => vec![
                value::encode(&(1u64, "rdask::builtins::inc", vec![(0u8, 0u32)]))
                    .unwrap()
                    .to_vec(),
                value::encode(&1i64).unwrap().to_vec(),
            ],
            "rdask::builtins::sum" => vec![value::encode(&vec![1i64, 2, 3]).unwrap().to_vec()],
            "rdask::builtins::fail" => vec![value::encode("no").unwrap().to_vec()],
            _ => vec![
                value::encode(&1i64).unwrap().to_vec(),
                value::encode(&2i64).unwrap().to_vec(),
            ],
        };
        let mut data = vec![i as u8];
        data.extend(postcard::to_allocvec(&args).unwrap());
        save("builtins", &i.to_string(), &data);
    }
    save("task_arguments", "0", &[1, 3, 0, 5, 1, 0, 2, 0, 1, 0, 2]);
}
