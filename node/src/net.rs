//! libp2p plumbing: the node's swarm and event loop, client sessions, streams between
//! nodes, and the client side of a connection.
//!
//! A client opens one stream of `/rdask/client/1` (a *session*) and sends length-prefixed
//! postcard [`Envelope`]s of requests over it; the node answers each with an envelope of the
//! same id. One ordered stream means a client can pipeline (a submission and the request
//! for its result leave back to back and are handled in that order) and pays no stream
//! set-up per request. Nothing here makes a scheduling decision: requests go to the node
//! actor with a reply closure, and replies go back out on their session.
//!
//! Nodes talk over `/rdask/node/1`: each node opens one long-lived stream to each peer it
//! has something to say to, and writes [`rdask_actors::protocol::PeerBatch`]es on it (see
//! [`crate::codec::write_peer_batch`]); the peer reads them on a task of its own and hands
//! them to its node actor. Each direction has its own stream. A batch that cannot be
//! delivered (no connection, a broken stream) is dropped: the core retries what is lost.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::StreamProtocol;
use libp2p::identity::Keypair;
use libp2p::request_response;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, SwarmBuilder, identify, noise, ping, tcp, yamux};
use ractor::ActorRef;
use rdask_actors::protocol::{ClientRequest, ClientResponse, PeerBatch};
use rdask_actors::{GossipMsg, NodeMsg, ReplyTo};
use rdask_gossip::{NodeId, Peer};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};

use crate::codec::{
    CLIENT_PROTOCOL, EncodeError, Encoded, Envelope, NODE_PROTOCOL, encode_message, read_frame,
    read_message, read_peer_batch, write_peer_batch,
};
use crate::secret::ClusterSecret;

/// The identify protocol version: peers announcing another one are refused.
pub const IDENTIFY_PROTOCOL: &str = "/rdask/4";

/// How long a connection with no open stream stays up.
const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Requests of one session read ahead of their replies being written; further requests
/// wait to be read (a client that does not read its replies is not read either).
const MAX_IN_FLIGHT: usize = 256;
/// Most client sessions one stream may carry (a client attaches one).
const MAX_SESSIONS_PER_STREAM: usize = 16;
/// How long opening a stream to a peer (dialing it if needed) may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Most batches written to a peer between two flushes.
const BATCHES_PER_FLUSH: usize = 64;
/// Most batches queued for one peer: past it, batches are dropped as on a broken stream
/// (the peer stopped reading; its writes time out soon).
const LINK_QUEUE: usize = 4096;

/// An error setting up the network.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The transport or the behaviour could not be built.
    #[error("cannot build the network stack: {0}")]
    Build(String),
    /// A listen address could not be used.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// A peer could not be reached.
    #[error("cannot connect to {addr}: {reason}")]
    Dial {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
}

pub use behaviour::{NodeBehaviour, NodeBehaviourEvent};

mod behaviour {
    // The derive generates an event enum without documentation.
    #![allow(missing_docs)]
    use super::*;

    /// The behaviours of a node.
    #[derive(NetworkBehaviour)]
    pub struct NodeBehaviour {
        /// Streams of `/rdask/client/1` (client sessions) and `/rdask/node/1` (batches
        /// between nodes).
        pub streams: libp2p_stream::Behaviour,
        /// `/rdask/gossip/1`: membership and state datagrams between nodes.
        pub gossip: request_response::Behaviour<GossipCodec>,
        /// Exchange of protocol versions and addresses with peers.
        pub identify: identify::Behaviour,
        /// Liveness of connections.
        pub ping: ping::Behaviour,
        /// Bounds on connections (`--max-connections`).
        pub limits: libp2p::connection_limits::Behaviour,
    }
}

/// Builds a swarm over TCP + noise + yamux, with DNS resolution. With a cluster secret,
/// every connection is first wrapped in libp2p's private-network cipher keyed by it (see
/// [`crate::secret`]): peers without the same secret cannot connect.
pub fn build_swarm<B: NetworkBehaviour>(
    keypair: Keypair,
    secret: Option<&ClusterSecret>,
    behaviour: impl FnOnce(&Keypair) -> B,
) -> Result<Swarm<B>, NetError> {
    let build = |e: &dyn std::fmt::Display| NetError::Build(e.to_string());
    let builder = SwarmBuilder::with_existing_identity(keypair).with_tokio();
    let tcp_config = || tcp::Config::default().nodelay(true);
    Ok(match secret {
        None => builder
            .with_tcp(tcp_config(), noise::Config::new, yamux::Config::default)
            .map_err(|e| build(&e))?
            .with_dns()
            .map_err(|e| build(&e))?
            .with_behaviour(|k| behaviour(k))
            .map_err(|e| build(&e))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_TIMEOUT))
            .build(),
        Some(secret) => {
            use libp2p::Transport;
            use libp2p::core::upgrade::Version;
            use libp2p::pnet::PnetConfig;
            let psk = secret.key();
            builder
                .with_other_transport(|key| {
                    let noise = noise::Config::new(key)?;
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                        tcp::tokio::Transport::new(tcp_config())
                            .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
                            .upgrade(Version::V1Lazy)
                            .authenticate(noise)
                            .multiplex(yamux::Config::default()),
                    )
                })
                .map_err(|e| build(&e))?
                .with_dns()
                .map_err(|e| build(&e))?
                .with_behaviour(|k| behaviour(k))
                .map_err(|e| build(&e))?
                .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_TIMEOUT))
                .build()
        }
    })
}

/// The gossip protocol's name.
pub const GOSSIP_PROTOCOL: StreamProtocol = StreamProtocol::new("/rdask/gossip/1");
/// How often an unreachable `--join` address is tried again.
const JOIN_RETRY: Duration = Duration::from_secs(2);
/// Largest gossip datagram (the gossip core makes none larger).
const MAX_GOSSIP_FRAME: usize = rdask_gossip::MAX_FRAME_BYTES;
/// Gossip datagrams waiting to be sent; more are dropped (gossip repeats itself).
pub(crate) const GOSSIP_QUEUE: usize = 4096;
/// Incoming gossip datagrams handed to the gossip actor and not handled yet; more are
/// dropped.
const GOSSIP_INBOX: usize = 4096;

/// The codec of `/rdask/gossip/1`: one bounded frame of bytes, answered by nothing.
#[derive(Clone, Default)]
pub struct GossipCodec;

impl request_response::Codec for GossipCodec {
    type Protocol = StreamProtocol;
    type Request = Bytes;
    type Response = ();

    async fn read_request<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Bytes> {
        read_frame::<Bytes, _>(io, MAX_GOSSIP_FRAME).await
    }

    async fn read_response<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
    ) -> std::io::Result<()> {
        Ok(())
    }

    async fn write_request<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Bytes,
    ) -> std::io::Result<()> {
        crate::codec::write_frame(io, &req, MAX_GOSSIP_FRAME).await
    }

    async fn write_response<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
        _: (),
    ) -> std::io::Result<()> {
        Ok(())
    }
}

/// Connections one peer may hold to a node at once: a member needs one or two (both may
/// dial at once), a client one per process; more is someone opening connections to exhaust
/// the node.
const MAX_CONNECTIONS_PER_PEER: u32 = 8;
/// Connection handshakes under way at once.
const MAX_PENDING_CONNECTIONS: u32 = 256;

/// Builds the node's behaviours, accepting at most `max_connections` connections at once.
pub fn node_behaviour(key: &Keypair, agent: String, max_connections: u32) -> NodeBehaviour {
    use libp2p::connection_limits::{Behaviour, ConnectionLimits};
    let limits = ConnectionLimits::default()
        .with_max_established_incoming(Some(max_connections))
        .with_max_established(Some(max_connections.saturating_mul(2)))
        .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER))
        .with_max_pending_incoming(Some(MAX_PENDING_CONNECTIONS));
    NodeBehaviour {
        streams: libp2p_stream::Behaviour::new(),
        gossip: request_response::Behaviour::with_codec(
            GossipCodec,
            [(GOSSIP_PROTOCOL, request_response::ProtocolSupport::Full)],
            request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
        ),
        identify: identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL.to_string(), key.public())
                .with_agent_version(agent),
        ),
        ping: ping::Behaviour::default(),
        limits: Behaviour::new(limits),
    }
}

/// What a node accepts from its clients, and how long it waits for them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SessionLimits {
    /// Largest frame (`--max-frame-bytes`).
    pub max_frame: usize,
    /// Largest value (`--max-value-bytes`).
    pub max_value: u64,
    /// Most client sessions at once (`--max-client-sessions`).
    pub max_sessions: usize,
}

/// Accepts client sessions and serves each on its own task, at most
/// [`SessionLimits::max_sessions`] at once: a session over it is answered with a refusal
/// that names the limit, and closed.
pub(crate) async fn accept_sessions(
    mut incoming: libp2p_stream::IncomingStreams,
    actor: ActorRef<NodeMsg>,
    limits: SessionLimits,
    stats: Arc<crate::datapath::DataStats>,
) {
    let sessions = Arc::new(Semaphore::new(limits.max_sessions));
    while let Some((peer, stream)) = incoming.next().await {
        match sessions.clone().try_acquire_owned() {
            Ok(permit) => {
                tracing::debug!(%peer, "client session opened");
                let actor = actor.clone();
                let stats = stats.clone();
                tokio::spawn(async move {
                    serve_session(peer, stream, actor, limits, stats).await;
                    drop(permit);
                });
            }
            Err(_) => {
                tracing::warn!(
                    %peer,
                    max = limits.max_sessions,
                    "refused a client session: too many at once (--max-client-sessions)"
                );
                tokio::spawn(refuse_session(stream, limits));
            }
        }
    }
}

/// Answers the first request of a session the node cannot take with a refusal, and ends it.
async fn refuse_session(stream: libp2p::Stream, limits: SessionLimits) {
    let (mut reader, mut writer) = stream.split();
    let answer = async {
        let first: Envelope<ClientRequest> =
            read_message(&mut reader, limits.max_frame, limits.max_value).await?;
        let reply = Envelope {
            id: first.id,
            body: ClientResponse::Refused(format!(
                "this node serves at most {} client sessions at once (--max-client-sessions)",
                limits.max_sessions
            )),
        };
        let encoded = encode_message(&reply, limits.max_frame, limits.max_value)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        encoded.write(&mut writer).await?;
        writer.close().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), answer).await;
}

/// How long writing `bytes` to a client or a peer may take: 30 s, plus one second per MB
/// (a reader slower than 1 MB/s is taken for one that stopped reading).
pub(crate) fn write_timeout(bytes: u64) -> Duration {
    Duration::from_secs(30) + Duration::from_micros(bytes)
}

/// Reads requests of one session in order and hands them to the node actor; a writer task
/// sends the replies, several frames per flush.
///
/// Memory stays bounded whatever the client does: at most [`MAX_IN_FLIGHT`] requests are
/// read ahead of their replies being *written* (a client that stops reading stops being
/// read), and every write has a time limit ([`write_timeout`]). The session ends (with a
/// logged reason) on a malformed or oversized frame, a write that times out or fails, or the
/// client closing it; the stream is then closed both ways, so the client learns it at once.
/// A reply that cannot be sent (over a limit) is replaced by a refusal naming the limit.
///
/// When the stream ends, the node actor is told which client sessions it carried
/// (`Attach`), so that the core starts their clocks (a client that does not re-attach ends
/// its session).
async fn serve_session(
    peer: PeerId,
    stream: libp2p::Stream,
    actor: ActorRef<NodeMsg>,
    limits: SessionLimits,
    stats: Arc<crate::datapath::DataStats>,
) {
    let (mut reader, mut writer) = stream.split();
    let (tx, mut rx) =
        mpsc::unbounded_channel::<(Envelope<ClientResponse>, OwnedSemaphorePermit)>();
    let (writer_done_tx, mut writer_done) = oneshot::channel::<()>();
    let writer_task = tokio::spawn(async move {
        let mut flushed = true;
        loop {
            let next = if flushed {
                rx.recv().await
            } else {
                match rx.try_recv() {
                    Ok(next) => Some(next),
                    Err(mpsc::error::TryRecvError::Empty) => {
                        let flush = tokio::time::timeout(write_timeout(0), writer.flush());
                        if !matches!(flush.await, Ok(Ok(()))) {
                            tracing::warn!(%peer, "cannot flush replies; ending the session");
                            break;
                        }
                        flushed = true;
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                }
            };
            let Some((envelope, permit)) = next else {
                let _ = tokio::time::timeout(write_timeout(0), writer.close()).await;
                break;
            };
            let encoded = match encode_message(&envelope, limits.max_frame, limits.max_value) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "a reply cannot be sent; refusing the request instead");
                    let refusal = Envelope {
                        id: envelope.id,
                        body: ClientResponse::Refused(format!("the reply cannot be sent: {e}")),
                    };
                    match encode_message(&refusal, limits.max_frame, limits.max_value) {
                        Ok(e) => e,
                        Err(_) => break,
                    }
                }
            };
            let write = tokio::time::timeout(
                write_timeout(encoded.wire_len()),
                encoded.write(&mut writer),
            );
            match write.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "cannot write a reply; ending the session");
                    break;
                }
                Err(_) => {
                    tracing::warn!(%peer, bytes = encoded.wire_len(), "the client does not read its replies; ending the session");
                    break;
                }
            }
            flushed = false;
            drop(permit);
        }
        let _ = writer_done_tx.send(());
        // Keep the write half until the reader ends too: dropping both ends the stream.
        writer
    });
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    // Client sessions this stream carries (a client sends one `Attach`; a few at most).
    let mut carried: Vec<u64> = Vec::new();
    loop {
        let read = read_message::<Envelope<ClientRequest>, _>(
            &mut reader,
            limits.max_frame,
            limits.max_value,
        );
        let envelope = tokio::select! {
            r = read => match r {
                Ok(e) => {
                    stats.client_requests.fetch_add(1, Ordering::Relaxed);
                    e
                }
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "dropped a malformed client frame; ending the session");
                    break;
                }
            },
            _ = &mut writer_done => break,
        };
        let permit = tokio::select! {
            p = in_flight.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut writer_done => break,
        };
        if let ClientRequest::Attach { session } = &envelope.body {
            if carried.len() >= MAX_SESSIONS_PER_STREAM {
                let body = ClientResponse::Refused(format!(
                    "at most {MAX_SESSIONS_PER_STREAM} client sessions on one connection"
                ));
                let _ = tx.send((
                    Envelope {
                        id: envelope.id,
                        body,
                    },
                    permit,
                ));
                continue;
            }
            carried.push(*session);
        }
        let tx = tx.clone();
        let id = envelope.id;
        let reply: ReplyTo = Box::new(move |body| {
            // The permit is released once the reply is written (or the session ended).
            let _ = tx.send((Envelope { id, body }, permit));
        });
        if actor
            .send_message(NodeMsg::Request(envelope.body, reply))
            .is_err()
        {
            tracing::warn!("node actor is gone; ending a client session");
            break;
        }
    }
    drop(tx);
    tracing::debug!(%peer, "client session closed");
    for session in carried {
        let _ = actor.send_message(NodeMsg::Detached(session));
    }
    // The writer ends once every reply still owed has been sent (or it failed).
    if let Ok(writer) = writer_task.await {
        drop(writer);
    }
    drop(reader);
}

/// The streams of `/rdask/node/1` to other nodes: one per peer, opened by a writer task of
/// its own on the first batch for that peer, and again on the next batch after a failure.
pub(crate) struct PeerLinks {
    control: libp2p_stream::Control,
    /// The data path, for batches carrying large values (see [`crate::datapath`]).
    data: Option<Arc<crate::datapath::DataLanes>>,
    links: Mutex<HashMap<PeerId, mpsc::Sender<PeerBatch>>>,
    runtime: tokio::runtime::Handle,
    max_frame: usize,
    max_value: u64,
}

impl PeerLinks {
    /// Links opened through `control`, their writers spawned on the current tokio runtime
    /// (must be called within one).
    pub(crate) fn new(
        control: libp2p_stream::Control,
        data: Option<Arc<crate::datapath::DataLanes>>,
        max_frame: usize,
        max_value: u64,
    ) -> Self {
        PeerLinks {
            control,
            data,
            links: Mutex::new(HashMap::new()),
            runtime: tokio::runtime::Handle::current(),
            max_frame,
            max_value,
        }
    }

    /// Queues a batch for the node `to` (its id is its peer id in base58). Never blocks.
    pub(crate) fn send(&self, to: NodeId, batch: PeerBatch) {
        let peer = match PeerId::from_str(&to.0) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(peer = %to.0, error = %e, "dropped a batch for a node whose id is not a peer id");
                return;
            }
        };
        let batch = match &self.data {
            Some(data) => match data.send(peer, batch) {
                Ok(()) => return,
                Err(batch) => batch,
            },
            None => batch,
        };
        let mut links = self.links.lock().expect("peer links");
        let batch = match links.get(&peer) {
            Some(tx) => match tx.try_send(batch) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // The peer reads slower than this node writes to it, for long: the
                    // batch is lost like one on a broken stream (the core asks again).
                    tracing::debug!(%peer, "dropped a batch: {LINK_QUEUE} queued for the peer");
                    return;
                }
                // The writer is gone (it ends only if it panicked): start another.
                Err(mpsc::error::TrySendError::Closed(batch)) => batch,
            },
            None => batch,
        };
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        let _ = tx.try_send(batch);
        links.insert(peer, tx);
        self.runtime.spawn(peer_writer(
            peer,
            self.control.clone(),
            rx,
            self.max_frame,
            self.max_value,
        ));
    }
}

/// Drops what is queued for a peer whose stream could not be used; returns how many.
fn drop_queued(rx: &mut mpsc::Receiver<PeerBatch>) -> usize {
    let mut n = 0;
    while rx.try_recv().is_ok() {
        n += 1;
    }
    n
}

/// An open stream to a peer.
struct Link {
    writer: futures::io::WriteHalf<libp2p::Stream>,
    /// Fires when the peer closes its side of the stream (it never writes on it): the
    /// stream is dead, and a write on it could wait forever for flow-control credit.
    closed: oneshot::Receiver<()>,
}

impl Link {
    fn new(stream: libp2p::Stream) -> Link {
        let (mut reader, writer) = stream.split();
        let (tx, closed) = oneshot::channel();
        tokio::spawn(async move {
            let mut byte = [0u8; 1];
            let _ = reader.read(&mut byte).await;
            let _ = tx.send(());
        });
        Link { writer, closed }
    }

    fn is_closed(&mut self) -> bool {
        !matches!(
            self.closed.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        )
    }
}

/// Writes the batches for one peer on its stream, several per flush; opens the stream on
/// the first batch and after a failure. Ends when the [`PeerLinks`] are dropped.
async fn peer_writer(
    peer: PeerId,
    mut control: libp2p_stream::Control,
    mut rx: mpsc::Receiver<PeerBatch>,
    max_frame: usize,
    max_value: u64,
) {
    let mut link: Option<Link> = None;
    while let Some(first) = rx.recv().await {
        if link.as_mut().is_some_and(Link::is_closed) {
            tracing::debug!(%peer, "the peer closed the stream; opening another");
            link = None;
        }
        let mut l = match link.take() {
            Some(l) => l,
            None => {
                let opened =
                    tokio::time::timeout(OPEN_TIMEOUT, control.open_stream(peer, NODE_PROTOCOL))
                        .await;
                match opened {
                    Ok(Ok(s)) => {
                        tracing::debug!(%peer, "opened a stream to a peer");
                        Link::new(s)
                    }
                    Ok(Err(e)) => {
                        let dropped = 1 + drop_queued(&mut rx);
                        tracing::debug!(%peer, error = %e, dropped, "cannot open a stream to a peer; dropped its batches");
                        continue;
                    }
                    Err(_) => {
                        let dropped = 1 + drop_queued(&mut rx);
                        tracing::debug!(%peer, dropped, "no stream to a peer within {OPEN_TIMEOUT:?}; dropped its batches");
                        continue;
                    }
                }
            }
        };
        let Link { writer, closed } = &mut l;
        let write = async {
            let mut next = Some(first);
            let mut written = 0;
            while let Some(batch) = next.take() {
                let bytes = crate::datapath::value_bytes(&batch);
                let write = write_peer_batch(writer, batch, max_frame, max_value);
                let dropped = tokio::time::timeout(write_timeout(bytes), write)
                    .await
                    .map_err(|_| {
                        std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("a batch of {bytes} bytes not written in time"),
                        )
                    })??;
                for reason in dropped {
                    tracing::warn!(%peer, "dropped a message for a peer: {reason}");
                }
                written += 1;
                if written < BATCHES_PER_FLUSH {
                    next = rx.try_recv().ok();
                }
            }
            tokio::time::timeout(write_timeout(0), writer.flush())
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "flush timed out"))?
        };
        let result = tokio::select! {
            r = write => r,
            _ = closed => Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "the peer closed the stream",
            )),
        };
        match result {
            Ok(()) => link = Some(l),
            Err(e) => {
                let dropped = drop_queued(&mut rx);
                tracing::debug!(%peer, error = %e, dropped, "the stream to a peer broke; dropped its batches");
            }
        }
    }
    if let Some(mut l) = link {
        let _ = l.writer.close().await;
    }
}

/// Batches from peers handed to the node actor and not handled yet, in all: a reader
/// waits for a place (so a peer that sends faster than the node handles is slowed by TCP's
/// flow control, not queued in memory).
pub(crate) const INBOX_BATCHES: usize = 1024;

/// The node's inbox of peer batches: places, one per batch handed to the actor.
pub(crate) fn inbox() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(INBOX_BATCHES))
}

/// Streams of `/rdask/node/1` one peer may have open to a node at once: a member opens one
/// (and another after a failure, while the old one drains).
const STREAMS_PER_PEER: usize = 4;

/// Accepts streams of `/rdask/node/1` from other nodes and reads each on its own task, at
/// most [`STREAMS_PER_PEER`] per peer.
pub(crate) async fn accept_peer_streams(
    mut incoming: libp2p_stream::IncomingStreams,
    actor: ActorRef<NodeMsg>,
    inbox: Arc<Semaphore>,
    max_frame: usize,
    max_value: u64,
) {
    let open: Arc<Mutex<HashMap<PeerId, usize>>> = Arc::default();
    while let Some((peer, stream)) = incoming.next().await {
        {
            let mut open = open.lock().expect("open streams");
            let n = open.entry(peer).or_default();
            if *n >= STREAMS_PER_PEER {
                tracing::warn!(%peer, "refused a stream: the peer has {STREAMS_PER_PEER} open");
                drop(stream);
                continue;
            }
            *n += 1;
        }
        tracing::debug!(%peer, "a peer opened a stream");
        let (actor, inbox, open) = (actor.clone(), inbox.clone(), open.clone());
        tokio::spawn(async move {
            serve_peer_stream(peer, stream, actor, inbox, max_frame, max_value).await;
            let mut open = open.lock().expect("open streams");
            if let Some(n) = open.get_mut(&peer) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&peer);
                }
            }
        });
    }
}

/// Reads the batches of one peer's stream and hands them to the node actor, in order,
/// each when the inbox has a place for it. A malformed batch or one with a value over the
/// limit ends the stream (with a logged reason); the peer opens another for its next batch.
async fn serve_peer_stream(
    peer: PeerId,
    mut stream: libp2p::Stream,
    actor: ActorRef<NodeMsg>,
    inbox: Arc<Semaphore>,
    max_frame: usize,
    max_value: u64,
) {
    // The sender is the authenticated peer of the connection, whatever the batch says.
    let from = NodeId(peer.to_base58().into());
    loop {
        match read_peer_batch(&mut stream, max_frame, max_value).await {
            Ok(batch) => {
                let place = inbox.clone().acquire_owned().await.ok();
                if actor
                    .send_message(NodeMsg::Peer(from.clone(), batch, place))
                    .is_err()
                {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                tracing::debug!(%peer, "a peer closed its stream");
                break;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::OutOfMemory
                ) =>
            {
                tracing::warn!(%peer, error = %e, "dropped a bad batch from a peer; ending its stream");
                break;
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "the stream of a peer failed");
                break;
            }
        }
    }
    let _ = stream.close().await;
}

/// The gossip side of the node's event loop.
pub(crate) struct GossipWiring {
    /// The gossip actor.
    pub actor: ActorRef<GossipMsg>,
    /// Datagrams it wants sent.
    pub outgoing: mpsc::Receiver<(Peer, Bytes)>,
    /// Addresses given with `--join`: once a connection to one is up, that peer is asked
    /// to let this node in.
    pub joins: Vec<Multiaddr>,
}

fn without_p2p(a: &Multiaddr) -> Multiaddr {
    a.iter()
        .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
        .collect()
}

/// Runs the node's event loop until `shutdown` turns true.
pub(crate) async fn run_node_swarm(
    mut swarm: Swarm<NodeBehaviour>,
    actor: ActorRef<NodeMsg>,
    mut shutdown: watch::Receiver<bool>,
    mut addresses: Vec<Multiaddr>,
    mut gossip: GossipWiring,
) {
    // Join addresses not joined yet, and the dials under way to them. A failed dial is
    // retried: seeds may start after this node.
    let mut unjoined: Vec<Multiaddr> = std::mem::take(&mut gossip.joins);
    let mut dialing: HashMap<libp2p::swarm::ConnectionId, Multiaddr> = HashMap::new();
    let mut retry = tokio::time::interval(JOIN_RETRY);
    let gossip_inbox = Arc::new(Semaphore::new(GOSSIP_INBOX));
    loop {
        tokio::select! {
            _ = retry.tick(), if !unjoined.is_empty() => {
                for addr in &unjoined {
                    if dialing.values().any(|a| a == addr) {
                        continue;
                    }
                    let opts = libp2p::swarm::dial_opts::DialOpts::unknown_peer_id()
                        .address(addr.clone())
                        .build();
                    let id = opts.connection_id();
                    tracing::info!(%addr, "joining");
                    match swarm.dial(opts) {
                        Ok(()) => {
                            dialing.insert(id, addr.clone());
                        }
                        Err(e) => tracing::warn!(%addr, error = %e, "cannot dial a join address"),
                    }
                }
            }
            Some((to, data)) = gossip.outgoing.recv() => {
                match (to.node.0.parse::<PeerId>(), to.addr.parse::<Multiaddr>()) {
                    (Ok(peer), Ok(addr)) => {
                        // Let the other behaviours dial it too (streams of `/rdask/node/1`
                        // to a member are opened by peer id).
                        swarm.add_peer_address(peer, addr.clone());
                        swarm.behaviour_mut().gossip.send_request_with_addresses(&peer, data, vec![addr]);
                    }
                    _ => tracing::debug!(peer = %to.node, addr = %to.addr, "cannot address a gossip peer"),
                }
            }
            event = swarm.select_next_some() => match event {
                SwarmEvent::Behaviour(NodeBehaviourEvent::Gossip(request_response::Event::Message {
                    message: request_response::Message::Request { request, channel, .. },
                    ..
                })) => {
                    match gossip_inbox.clone().try_acquire_owned() {
                        Ok(place) => {
                            let _ = gossip.actor.send_message(GossipMsg::Incoming(request, Some(place)));
                        }
                        Err(_) => tracing::debug!("dropped a gossip datagram: {GOSSIP_INBOX} waiting"),
                    }
                    let _ = swarm.behaviour_mut().gossip.send_response(channel, ());
                }
                SwarmEvent::Behaviour(NodeBehaviourEvent::Gossip(request_response::Event::OutboundFailure {
                    peer, error, ..
                })) => {
                    tracing::debug!(%peer, %error, "a gossip datagram was not delivered");
                }
                SwarmEvent::Behaviour(NodeBehaviourEvent::Identify(identify::Event::Received {
                    peer_id,
                    info,
                    ..
                })) => {
                    if info.protocol_version != IDENTIFY_PROTOCOL {
                        tracing::warn!(
                            peer = %peer_id,
                            theirs = %info.protocol_version,
                            ours = IDENTIFY_PROTOCOL,
                            agent = %info.agent_version,
                            "refusing a peer with an incompatible protocol version"
                        );
                        let _ = swarm.disconnect_peer_id(peer_id);
                    } else {
                        tracing::info!(peer = %peer_id, agent = %info.agent_version, "connected to a peer");
                    }
                }
                SwarmEvent::Behaviour(_) => {}
                SwarmEvent::NewListenAddr { address, .. } => {
                    tracing::info!(%address, "listening");
                    addresses.push(address);
                    let _ = actor.send_message(NodeMsg::SetAddresses(
                        addresses.iter().map(|a| a.to_string()).collect(),
                    ));
                }
                SwarmEvent::ExpiredListenAddr { address, .. } => {
                    addresses.retain(|a| a != &address);
                }
                SwarmEvent::ConnectionEstablished { peer_id, endpoint, connection_id, .. } => {
                    tracing::debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), "connection established");
                    if let Some(join) = dialing.remove(&connection_id) {
                        unjoined.retain(|a| a != &join);
                        let seed = Peer {
                            node: rdask_gossip::NodeId(peer_id.to_string().into()),
                            addr: without_p2p(&join).to_string().into(),
                            generation: 0,
                        };
                        let _ = gossip.actor.send_message(GossipMsg::Join(seed));
                    }
                }
                SwarmEvent::ConnectionClosed { peer_id, cause, .. } => {
                    tracing::debug!(peer = %peer_id, ?cause, "connection closed");
                }
                SwarmEvent::IncomingConnectionError { send_back_addr, error, .. } => {
                    tracing::info!(from = %send_back_addr, %error, "refused an incoming connection");
                }
                SwarmEvent::OutgoingConnectionError { peer_id, error, connection_id } => {
                    if let Some(join) = dialing.remove(&connection_id) {
                        tracing::warn!(addr = %join, %error, "cannot reach a join address; retrying");
                    } else {
                        tracing::debug!(?peer_id, %error, "could not connect to a peer");
                    }
                }
                _ => {}
            },
            _ = shutdown.changed() => break,
        }
    }
}

/// Why a request to a remote node failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RemoteError {
    /// The session is gone (the node went away, or refused a frame and closed it).
    #[error("{0}")]
    Lost(String),
    /// The connection was closed by this side.
    #[error("the connection was closed")]
    Closed,
    /// The request cannot be sent: it is over a limit of the node (nothing was sent; the
    /// session goes on).
    #[error("{0}")]
    TooLarge(EncodeError),
}

type Pending = Arc<Mutex<PendingState>>;

#[derive(Default)]
struct PendingState {
    waiting: HashMap<u64, oneshot::Sender<Result<ClientResponse, RemoteError>>>,
    /// Set when the session ended: later requests fail at once with it.
    ended: Option<RemoteError>,
}

/// A client's session with one node over `/rdask/client/1`.
///
/// Requests are written in the order [`RemoteNode::send`] is called and the node handles
/// them in that order. Cloning shares the session; it ends when the last clone is dropped.
#[derive(Clone)]
pub struct RemoteNode {
    inner: Arc<RemoteInner>,
}

struct RemoteInner {
    out: mpsc::UnboundedSender<Encoded>,
    /// The node's limits on frames and values (the defaults until it tells its own, see
    /// [`RemoteNode::set_limits`]): what is sent is checked against them, and what is read.
    limits: Arc<(AtomicU64, AtomicU64)>,
    pending: Pending,
    next_id: std::sync::atomic::AtomicU64,
    peer: PeerId,
    addr: Multiaddr,
    _stop: watch::Sender<bool>,
}

impl std::fmt::Debug for RemoteNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteNode({} at {})", self.inner.peer, self.inner.addr)
    }
}

/// `host:port` of a multiaddr (`/ip4/127.0.0.1/tcp/4001` → `127.0.0.1:4001`), as a user
/// would write it; the multiaddr itself when it is not of that form.
pub fn host_port(addr: &Multiaddr) -> String {
    let text = addr.to_string();
    rdask_gossip::host_port(&text).unwrap_or(text)
}

/// One sentence for a failed dial, by its cause (libp2p's own message nests the same cause
/// several times): refused, timed out, unreachable, unresolved, or a failed handshake.
fn dial_reason(error: &libp2p::swarm::DialError, at: &str, hint: &str) -> String {
    use std::io::ErrorKind;
    // The chain of causes, outermost first; an I/O error's kind says what happened (an
    // `io::Error` wrapping another hides the inner one's kind from `source()`: its text is
    // read too).
    let mut kinds = Vec::new();
    let mut texts = Vec::new();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = match error {
        libp2p::swarm::DialError::Transport(errors) => errors
            .first()
            .map(|(_, e)| e as &(dyn std::error::Error + 'static)),
        other => Some(other),
    };
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            kinds.push(io.kind());
        }
        texts.push(e.to_string().to_lowercase());
        cause = e.source();
    }
    let said = |what: &str| texts.iter().any(|t| t.contains(what));
    let innermost = texts.last().cloned().unwrap_or_else(|| error.to_string());
    if kinds.contains(&ErrorKind::ConnectionRefused) || said("connection refused") {
        format!("connection refused: is an rdask-node listening at {at}?")
    } else if kinds.contains(&ErrorKind::TimedOut) || said("timed out") {
        format!("timed out: is {at} reachable from here (address, firewall)?")
    } else if kinds.iter().any(|k| {
        matches!(
            k,
            ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable
        )
    }) || said("unreachable")
    {
        format!("{at} is unreachable from here ({innermost})")
    } else if said("resolve") || said("lookup") || said("dns") {
        format!("cannot resolve the address {at} ({innermost})")
    } else {
        format!("connected to {at}, but the handshake failed. {hint}")
    }
}

fn end_session(pending: &Pending, error: RemoteError) {
    let mut p = pending.lock().expect("pending requests");
    p.ended.get_or_insert(error.clone());
    for (_, waiter) in p.waiting.drain() {
        let _ = waiter.send(Err(error.clone()));
    }
}

impl RemoteNode {
    /// Dials `addr` (with or without a `/p2p/<peer id>` suffix), waits for the connection
    /// (at most `timeout`) and opens a session. Must be called within a tokio runtime.
    ///
    /// A cluster started with a secret accepts only connections made with the same one
    /// (`secret`); without it the handshake fails or times out, and the error says so.
    pub async fn connect(
        addr: Multiaddr,
        max_frame: usize,
        timeout: Duration,
        secret: Option<&ClusterSecret>,
    ) -> Result<RemoteNode, NetError> {
        let hint = if secret.is_some() {
            "Is it an rdask-node with the same cluster secret as yours?"
        } else {
            "Is it an rdask-node? If its cluster has a secret, set RDASK_CLUSTER_SECRET to it."
        };
        let at = host_port(&addr);
        let mut swarm = build_swarm(Keypair::generate_ed25519(), secret, |_| {
            libp2p_stream::Behaviour::new()
        })?;
        let mut control = swarm.behaviour().new_control();
        let dial_err = |reason: String| NetError::Dial {
            addr: addr.clone(),
            reason,
        };
        swarm
            .dial(addr.clone())
            .map_err(|e| dial_err(e.to_string()))?;
        let peer = tokio::time::timeout(timeout, async {
            loop {
                match swarm.select_next_some().await {
                    SwarmEvent::ConnectionEstablished { peer_id, .. } => return Ok(peer_id),
                    SwarmEvent::OutgoingConnectionError { error, .. } => {
                        tracing::debug!(%error, "dial failed");
                        return Err(dial_err(dial_reason(&error, &at, hint)));
                    }
                    _ => {}
                }
            }
        })
        .await
        .map_err(|_| {
            dial_err(format!(
                "no answer from {at} within {timeout:?}: is it reachable from here (address, \
                 firewall)? {hint}"
            ))
        })??;

        let (stop, mut stopped) = watch::channel(false);
        // The swarm must keep being polled for its connections to make progress.
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    event = swarm.select_next_some() => {
                        if let SwarmEvent::ConnectionClosed { cause, .. } = event {
                            tracing::debug!(?cause, "connection to the node closed");
                        }
                    }
                    _ = stopped.changed() => break,
                }
            }
        });
        let stream = tokio::time::timeout(timeout, control.open_stream(peer, CLIENT_PROTOCOL))
            .await
            .map_err(|_| dial_err("the node did not accept a session in time".into()))?
            .map_err(|e| {
                tracing::debug!(error = %e, "no client session");
                dial_err(format!(
                    "{at} does not speak the rdask client protocol: is it an rdask-node of a \
                     compatible version?"
                ))
            })?;
        let (mut reader, mut writer) = stream.split();
        let pending: Pending = Arc::default();

        let (out, mut out_rx) = mpsc::unbounded_channel::<Encoded>();
        let writer_pending = pending.clone();
        tokio::spawn(async move {
            while let Some(first) = out_rx.recv().await {
                let mut result = first.write(&mut writer).await;
                while result.is_ok() {
                    match out_rx.try_recv() {
                        Ok(more) => result = more.write(&mut writer).await,
                        Err(_) => break,
                    }
                }
                let result = match result {
                    Ok(()) => writer.flush().await,
                    Err(e) => Err(e),
                };
                if let Err(e) = result {
                    end_session(
                        &writer_pending,
                        RemoteError::Lost(format!("cannot send: {e}")),
                    );
                    return;
                }
            }
            let _ = writer.close().await;
        });
        let reader_pending = pending.clone();
        let limits = Arc::new((
            AtomicU64::new(max_frame as u64),
            AtomicU64::new(crate::codec::DEFAULT_MAX_VALUE),
        ));
        let reader_limits = limits.clone();
        tokio::spawn(async move {
            loop {
                let max_frame = reader_limits.0.load(Ordering::Relaxed) as usize;
                let max_value = reader_limits.1.load(Ordering::Relaxed);
                match read_message::<Envelope<ClientResponse>, _>(&mut reader, max_frame, max_value)
                    .await
                {
                    Ok(env) => {
                        let waiter = reader_pending
                            .lock()
                            .expect("pending requests")
                            .waiting
                            .remove(&env.id);
                        if let Some(w) = waiter {
                            let _ = w.send(Ok(env.body));
                        }
                    }
                    Err(e) => {
                        let reason = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                            "the node closed the session".to_string()
                        } else {
                            format!("session failed: {e}")
                        };
                        end_session(&reader_pending, RemoteError::Lost(reason));
                        return;
                    }
                }
            }
        });
        Ok(RemoteNode {
            inner: Arc::new(RemoteInner {
                out,
                limits,
                pending,
                next_id: std::sync::atomic::AtomicU64::new(1),
                peer,
                addr,
                _stop: stop,
            }),
        })
    }

    /// Queues a request now (so requests reach the node in call order) and returns the
    /// future of its response.
    pub fn send(
        &self,
        request: ClientRequest,
    ) -> impl std::future::Future<Output = Result<ClientResponse, RemoteError>> + Send + 'static
    {
        let queued = self
            .try_send(request)
            .map_err(|(e, _)| RemoteError::TooLarge(e));
        async move { queued?.await }
    }

    /// [`RemoteNode::send`], but a request over the node's limits is given back with the
    /// reason at once (nothing was sent), so that the caller can split it.
    #[allow(clippy::type_complexity)]
    pub fn try_send(
        &self,
        request: ClientRequest,
    ) -> Result<
        impl std::future::Future<Output = Result<ClientResponse, RemoteError>> + Send + 'static,
        (EncodeError, ClientRequest),
    > {
        let id = self
            .inner
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let envelope = Envelope { id, body: request };
        let encoded = match encode_message(
            &envelope,
            self.inner.limits.0.load(Ordering::Relaxed) as usize,
            self.inner.limits.1.load(Ordering::Relaxed),
        ) {
            Ok(e) => e,
            Err(e) => return Err((e, envelope.body)),
        };
        let (tx, rx) = oneshot::channel();
        let queued = {
            let mut p = self.inner.pending.lock().expect("pending requests");
            match &p.ended {
                Some(e) => Err(e.clone()),
                None => {
                    p.waiting.insert(id, tx);
                    self.inner
                        .out
                        .send(encoded)
                        .map_err(|_| RemoteError::Closed)
                }
            }
        };
        Ok(async move {
            queued?;
            rx.await.map_err(|_| RemoteError::Closed)?
        })
    }

    /// Adopts the node's limits on frames and values (from its `Welcome`): requests over
    /// them fail at once with [`RemoteError::TooLarge`], naming the limit.
    pub fn set_limits(&self, max_frame: u64, max_value: u64) {
        self.inner.limits.0.store(max_frame, Ordering::Relaxed);
        self.inner.limits.1.store(max_value, Ordering::Relaxed);
    }

    /// Sends a request and waits for its response.
    pub async fn request(&self, request: ClientRequest) -> Result<ClientResponse, RemoteError> {
        self.send(request).await
    }

    /// The node's identity.
    pub fn peer_id(&self) -> PeerId {
        self.inner.peer
    }

    /// The address it was reached at.
    pub fn address(&self) -> &Multiaddr {
        &self.inner.addr
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdask_actors::protocol::{LoadHint, PeerMsg};

    fn batch(key: &str, size: usize) -> PeerBatch {
        PeerBatch {
            load: LoadHint::default(),
            msgs: vec![PeerMsg::Data {
                owner: NodeId("owner".into()),
                key: key.into(),
                value: Some(vec![5u8; size].into()),
            }],
        }
    }

    /// A node's links reach a peer known only by the address gossip gave the swarm, and
    /// open a new stream after the peer ended the last one (here: it refused a value over
    /// its limit).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn links_dial_by_peer_id_and_reopen_a_stream_the_peer_ended() {
        let mut a = build_swarm(Keypair::generate_ed25519(), None, |k| {
            node_behaviour(k, "test".into(), 64)
        })
        .unwrap();
        let mut b = build_swarm(Keypair::generate_ed25519(), None, |_| {
            libp2p_stream::Behaviour::new()
        })
        .unwrap();
        b.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
            .unwrap();
        let addr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = b.select_next_some().await {
                break address;
            }
        };
        let (a_id, b_id) = (*a.local_peer_id(), *b.local_peer_id());
        let mut incoming = b.behaviour().new_control().accept(NODE_PROTOCOL).unwrap();
        a.add_peer_address(b_id, addr);
        let links = PeerLinks::new(a.behaviour().streams.new_control(), None, 1 << 20, 1 << 20);
        tokio::spawn(async move {
            loop {
                a.select_next_some().await;
            }
        });
        tokio::spawn(async move {
            loop {
                b.select_next_some().await;
            }
        });
        let to = NodeId(b_id.to_base58().into());
        let within = Duration::from_secs(20);

        links.send(to.clone(), batch("big", 5_000));
        let (from, mut first) = tokio::time::timeout(within, incoming.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(from, a_id);
        let err = read_peer_batch(&mut first, 1 << 20, 1_000)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        first.close().await.unwrap();
        drop(first);
        tokio::time::sleep(Duration::from_millis(300)).await;

        let small = batch("small", 10);
        links.send(to.clone(), small.clone());
        links.send(NodeId("not a peer id".into()), small.clone());
        let (_, mut second) = tokio::time::timeout(within, incoming.next())
            .await
            .expect("a new stream")
            .unwrap();
        let got = read_peer_batch(&mut second, 1 << 20, 1_000).await.unwrap();
        assert_eq!(got, small);
    }
}
