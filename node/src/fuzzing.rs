//! Entry points for fuzzing every decoder of bytes from outside the process.
//!
//! Each function takes arbitrary bytes and must return: no panic, no abort, no allocation
//! the bytes do not pay for, no endless loop. The `cargo fuzz` targets in `fuzz/` call
//! them, and the ordinary test suite replays the kept corpora and every input that ever
//! crashed one (`node/tests/fuzz_corpora.rs`), so that they run on stable in CI too.

use std::sync::OnceLock;

use bytes::Bytes;
use futures::io::Cursor;
use rdask_actors::protocol::{ClientRequest, ClientResponse, GraphSubmission};
use rdask_actors::{NodeCore, RequestId};
use rdask_graph::{Graph, GraphId, Registry, TaskSpec, bounded, value};

use crate::codec::{Envelope, read_message, read_peer_batch};

/// A fuzz target: arbitrary bytes in, nothing out.
pub type Target = fn(&[u8]);

/// The targets, by name (the folder of their corpus under `fuzz/corpus/`).
pub const TARGETS: [(&str, Target); 8] = [
    ("client_request", client_request),
    ("client_response", client_response),
    ("peer_batch", peer_batch),
    ("gossip", gossip),
    ("handshake", handshake),
    ("graph", graph),
    ("builtins", builtins),
    ("task_arguments", task_arguments),
];

/// Limits small enough that a fuzzer explores past them quickly.
const MAX_FRAME: usize = 1 << 16;
const MAX_VALUE: u64 = 1 << 20;

fn block<F: std::future::Future>(f: F) -> F::Output {
    futures::executor::block_on(f)
}

/// A message of the client protocol, as a node reads it.
pub fn client_request(data: &[u8]) {
    let _ = block(read_message::<Envelope<ClientRequest>, _>(
        &mut Cursor::new(data),
        MAX_FRAME,
        MAX_VALUE,
    ));
}

/// A message of the client protocol, as a client reads a node's answer.
pub fn client_response(data: &[u8]) {
    let _ = block(read_message::<Envelope<ClientResponse>, _>(
        &mut Cursor::new(data),
        MAX_FRAME,
        MAX_VALUE,
    ));
}

/// Batches of the node protocol (or of the data path after its handshake), read one after
/// another as a peer's stream is, each handed to a node's core.
pub fn peer_batch(data: &[u8]) {
    let mut core = NodeCore::new("fuzzed-node", Registry::global(), 2);
    let mut stream = Cursor::new(data);
    while let Ok(batch) = block(read_peer_batch(&mut stream, MAX_FRAME, MAX_VALUE)) {
        core.handle_peer(&rdask_gossip::NodeId("fuzzer".into()), batch);
        drain(&mut core);
    }
}

/// A gossip datagram, handed to a node's gossip core.
pub fn gossip(data: &[u8]) {
    let me = rdask_gossip::Peer {
        node: rdask_gossip::NodeId("fuzzed-node".into()),
        addr: "/ip4/127.0.0.1/tcp/1".into(),
        generation: 1,
    };
    let info = crate::member_info(
        me.node.clone(),
        vec![me.addr.to_string()],
        2,
        Registry::global(),
        &crate::NodeConfig::in_process(2),
        0,
    );
    let mut g = rdask_gossip::Gossip::new(me, info, rdask_gossip::GossipConfig::lan(16), 7);
    let _ = g.handle_message(data, 1_000);
    let _ = g.take_sends();
    let _ = g.take_events();
}

/// The accepting side of the data path's handshake, reading `data` as the other side's.
pub fn handshake(data: &[u8]) {
    let me = local_peer();
    let mut socket = Scripted { input: data, at: 0 };
    let _ = block(crate::datapath::accept(&mut socket, me));
}

/// A graph as a client submits it: decoded, validated against the registry, and
/// submitted to a node's core (which places and runs nothing without a pool, but accepts,
/// orders and plans).
pub fn graph(data: &[u8]) {
    let Ok(tasks) =
        bounded::decode::<Vec<TaskSpec>>(data, bounded::Limits::for_message(data.len()))
    else {
        return;
    };
    let registry = Registry::global();
    let _ =
        Graph::new(tasks.clone()).validate(|k| k.as_str().len() % 2 == 0, |f| registry.contains(f));
    let mut core = NodeCore::new("fuzzed-node", registry, 2);
    let keep = tasks.iter().take(4).map(|t| t.key.clone()).collect();
    core.handle_submit(
        RequestId(1),
        vec![GraphSubmission {
            id: GraphId(1 << 64),
            tasks,
            keep,
        }],
    );
    drain(&mut core);
}

/// A built-in task function (picked by the first byte) called with arbitrary arguments
/// (the rest, as a list of byte strings). Left out: `rdask::builtins::panic`, whose panic
/// is its purpose (caught by the pool, but a fuzzer counts any panic), and sleeps the
/// function would really take (up to its bound of ten minutes).
pub fn builtins(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let names = crate::builtins::names();
    let name = names[pick as usize % names.len()];
    if name == crate::builtins::panic.name() {
        return;
    }
    let args: Vec<Bytes> =
        match bounded::decode::<Vec<Vec<u8>>>(rest, bounded::Limits::for_message(rest.len())) {
            Ok(a) => a.into_iter().map(Bytes::from).collect(),
            Err(_) => vec![Bytes::copy_from_slice(rest)],
        };
    if name == crate::builtins::sleep_ms.name()
        && let [arg] = &args[..]
        && value::decode::<u64>(arg).is_ok_and(|ms| ms <= crate::builtins::MAX_SLEEP_MS)
    {
        return;
    }
    let entry = Registry::global()
        .get(name)
        .expect("a built-in is registered");
    let _ = entry.call(&args);
}

/// A recursive argument type of a user's task function (a tree), decoded as the wrapper
/// `#[rdask::task]` generates decodes arguments.
pub fn task_arguments(data: &[u8]) {
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    enum Tree {
        Leaf(u64),
        Node(Vec<Tree>),
        Pair(Box<Tree>, Box<Tree>),
        Named(std::collections::BTreeMap<String, Tree>),
        Nothing(Vec<()>),
    }
    let args = [Bytes::copy_from_slice(data)];
    let _ = rdask_graph::registry::decode_arg::<Tree>(&args, 0);
}

/// Drains a core's outputs, as a shell would after each input.
fn drain(core: &mut NodeCore) {
    let _ = core.take_replies();
    let _ = core.take_jobs();
    let _ = core.take_sends();
    let _ = core.take_owner_writes();
    let _ = core.take_dataset_writes();
    let _ = core.take_timers();
}

fn local_peer() -> libp2p::PeerId {
    static ME: OnceLock<libp2p::PeerId> = OnceLock::new();
    *ME.get_or_init(|| {
        libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    })
}

/// A socket that reads from a script and swallows what is written.
struct Scripted<'a> {
    input: &'a [u8],
    at: usize,
}

impl tokio::io::AsyncRead for Scripted<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let n = buf.remaining().min(self.input.len() - self.at);
        let at = self.at;
        buf.put_slice(&self.input[at..at + n]);
        self.at += n;
        std::task::Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for Scripted<'_> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
