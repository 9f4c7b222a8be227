//! libp2p plumbing: the node's swarm and event loop, and the client side of a connection.
//!
//! The swarm is owned by one event loop task (a handle plus an event loop): requests from
//! clients are handed to the node actor with a reply closure; replies come back to the loop
//! over a channel and are written to their streams. Nothing here makes a scheduling
//! decision.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, SwarmBuilder, identify, noise, ping, tcp, yamux};
use ractor::ActorRef;
use rdask_actors::protocol::{ClientRequest, ClientResponse};
use rdask_actors::{NodeMsg, ReplyTo};
use tokio::sync::{mpsc, oneshot, watch};

use crate::codec::{CLIENT_PROTOCOL, ClientCodec};

/// The identify protocol version: peers announcing another one are refused.
pub const IDENTIFY_PROTOCOL: &str = concat!("/rdask/", "1");

/// How long a connection with no open stream stays up.
const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long a request may take before the requester gives up on it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);
/// Concurrent requests per connection.
const MAX_STREAMS: usize = 1024;

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
        /// `/rdask/client/1`: requests from clients.
        pub client: request_response::Behaviour<ClientCodec>,
        /// Exchange of protocol versions and addresses with peers.
        pub identify: identify::Behaviour,
        /// Liveness of connections.
        pub ping: ping::Behaviour,
    }
}

/// Builds a swarm over TCP + noise + yamux, with DNS resolution.
pub fn build_swarm<B: NetworkBehaviour>(
    keypair: Keypair,
    behaviour: impl FnOnce(&Keypair) -> B,
) -> Result<Swarm<B>, NetError> {
    let build = |e: &dyn std::fmt::Display| NetError::Build(e.to_string());
    Ok(SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| build(&e))?
        .with_dns()
        .map_err(|e| build(&e))?
        .with_behaviour(|k| behaviour(k))
        .map_err(|e| build(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_TIMEOUT))
        .build())
}

fn client_behaviour(max_frame: usize, support: ProtocolSupport) -> request_response::Behaviour<ClientCodec> {
    request_response::Behaviour::with_codec(
        ClientCodec::new(max_frame),
        [(CLIENT_PROTOCOL, support)],
        request_response::Config::default()
            .with_request_timeout(REQUEST_TIMEOUT)
            .with_max_concurrent_streams(MAX_STREAMS),
    )
}

/// Builds the node's behaviours.
pub fn node_behaviour(key: &Keypair, max_frame: usize, agent: String) -> NodeBehaviour {
    NodeBehaviour {
        client: client_behaviour(max_frame, ProtocolSupport::Inbound),
        identify: identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL.to_string(), key.public())
                .with_agent_version(agent),
        ),
        ping: ping::Behaviour::default(),
    }
}

/// Runs the node's event loop until `shutdown` turns true.
pub(crate) async fn run_node_swarm(
    mut swarm: Swarm<NodeBehaviour>,
    actor: ActorRef<NodeMsg>,
    mut shutdown: watch::Receiver<bool>,
) {
    type Reply = (ResponseChannel<ClientResponse>, ClientResponse);
    let (reply_tx, mut reply_rx) = mpsc::unbounded_channel::<Reply>();
    let mut addresses: Vec<Multiaddr> = swarm.listeners().cloned().collect();
    loop {
        tokio::select! {
            event = swarm.select_next_some() => match event {
                SwarmEvent::Behaviour(NodeBehaviourEvent::Client(event)) => match event {
                    request_response::Event::Message {
                        peer,
                        message: request_response::Message::Request { request, channel, .. },
                        ..
                    } => {
                        tracing::trace!(%peer, "client request");
                        let tx = reply_tx.clone();
                        let reply: ReplyTo = Box::new(move |resp| {
                            let _ = tx.send((channel, resp));
                        });
                        if actor.send_message(NodeMsg::Request(request, reply)).is_err() {
                            tracing::warn!("node actor is gone; dropping a client request");
                        }
                    }
                    request_response::Event::InboundFailure { peer, error, .. } => {
                        tracing::warn!(%peer, %error, "dropped a malformed or failed client request");
                    }
                    other => tracing::trace!(?other, "client protocol event"),
                },
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
                        tracing::debug!(peer = %peer_id, agent = %info.agent_version, "identified peer");
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
                SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                    tracing::debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), "connection established");
                }
                SwarmEvent::ConnectionClosed { peer_id, cause, .. } => {
                    tracing::debug!(peer = %peer_id, ?cause, "connection closed");
                }
                SwarmEvent::IncomingConnectionError { send_back_addr, error, .. } => {
                    tracing::info!(from = %send_back_addr, %error, "refused an incoming connection");
                }
                SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                    tracing::warn!(?peer_id, %error, "could not connect to a peer");
                }
                _ => {}
            },
            Some((channel, resp)) = reply_rx.recv() => {
                if swarm.behaviour_mut().client.send_response(channel, resp).is_err() {
                    tracing::debug!("a client went away before its reply was sent");
                }
            }
            _ = shutdown.changed() => break,
        }
    }
}

/// Why a request to a remote node failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RemoteError {
    /// The connection is gone or the request failed on the way.
    #[error("{0}")]
    Lost(String),
    /// The connection task has ended (the client was closed).
    #[error("the connection was closed")]
    Closed,
}

enum Command {
    Request(ClientRequest, oneshot::Sender<Result<ClientResponse, RemoteError>>),
}

/// A client's connection to one node over `/rdask/client/1`.
///
/// Cloning it shares the connection. The connection task ends when the last clone is
/// dropped.
#[derive(Clone, Debug)]
pub struct RemoteNode {
    tx: mpsc::Sender<Command>,
    peer: PeerId,
    addr: Multiaddr,
}

impl RemoteNode {
    /// Dials `addr` (with or without a `/p2p/<peer id>` suffix) and waits for the
    /// connection, at most `timeout`. Must be called within a tokio runtime.
    pub async fn connect(
        addr: Multiaddr,
        max_frame: usize,
        timeout: Duration,
    ) -> Result<RemoteNode, NetError> {
        let mut swarm = build_swarm(Keypair::generate_ed25519(), |_| {
            client_behaviour(max_frame, ProtocolSupport::Outbound)
        })?;
        let dial_err = |reason: String| NetError::Dial {
            addr: addr.clone(),
            reason,
        };
        swarm.dial(addr.clone()).map_err(|e| dial_err(e.to_string()))?;
        let peer = tokio::time::timeout(timeout, async {
            loop {
                match swarm.select_next_some().await {
                    SwarmEvent::ConnectionEstablished { peer_id, .. } => return Ok(peer_id),
                    SwarmEvent::OutgoingConnectionError { error, .. } => {
                        return Err(dial_err(error.to_string()));
                    }
                    _ => {}
                }
            }
        })
        .await
        .map_err(|_| dial_err(format!("no connection within {timeout:?}")))??;
        swarm.add_peer_address(peer, addr.clone());
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(run_client_swarm(swarm, peer, rx));
        Ok(RemoteNode { tx, peer, addr })
    }

    /// Sends a request and waits for its response.
    pub async fn request(&self, request: ClientRequest) -> Result<ClientResponse, RemoteError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Request(request, tx))
            .await
            .map_err(|_| RemoteError::Closed)?;
        rx.await.map_err(|_| RemoteError::Closed)?
    }

    /// The node's identity.
    pub fn peer_id(&self) -> PeerId {
        self.peer
    }

    /// The address it was reached at.
    pub fn address(&self) -> &Multiaddr {
        &self.addr
    }
}

async fn run_client_swarm(
    mut swarm: Swarm<request_response::Behaviour<ClientCodec>>,
    peer: PeerId,
    mut commands: mpsc::Receiver<Command>,
) {
    type Pending = oneshot::Sender<Result<ClientResponse, RemoteError>>;
    let mut pending: HashMap<OutboundRequestId, Pending> = HashMap::new();
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::Request(request, reply)) => {
                    let id = swarm.behaviour_mut().send_request(&peer, request);
                    pending.insert(id, reply);
                }
                None => break,
            },
            event = swarm.select_next_some() => match event {
                SwarmEvent::Behaviour(request_response::Event::Message {
                    message: request_response::Message::Response { request_id, response },
                    ..
                }) => {
                    if let Some(reply) = pending.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                    request_id, error, ..
                }) => {
                    if let Some(reply) = pending.remove(&request_id) {
                        let _ = reply.send(Err(RemoteError::Lost(error.to_string())));
                    }
                }
                SwarmEvent::ConnectionClosed { cause, .. } => {
                    tracing::debug!(?cause, "connection to the node closed");
                }
                _ => {}
            },
        }
    }
}
