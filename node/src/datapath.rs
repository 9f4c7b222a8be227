//! The data path: batches that carry large values go between nodes over a plain TCP
//! connection of their own, beside libp2p.
//!
//! libp2p's noise encryption over yamux's 16 KiB frames carries about 600 MB/s on a
//! 2-core machine, where plain TCP carries several GB/s (see BENCHMARKS.md, "The network
//! stack alone"). So a batch whose values add up to [`DATA_PATH_MIN_BYTES`] or more goes to
//! the peer's data port instead: the same frames as `/rdask/node/1`
//! ([`crate::codec::write_peer_batch`]), on a connection that is authenticated but not
//! encrypted (as Dask's TCP comm is neither).
//!
//! Authentication: the accepting node sends a fresh 32-byte nonce; the connecting node
//! answers with its libp2p public key and its signature of the nonce and the accepting
//! node's peer id. The accepting node takes the batches of that connection as coming from
//! the peer id of that key, so no node can speak for another, and a signature made for one
//! node cannot be replayed to another. The accepting node confirms with one byte.
//!
//! The core does not rely on the order of batches (every message is idempotent and may be
//! reordered), so values overtaking other messages on the second connection is safe. A
//! data connection that cannot be made or breaks marks the peer's data path as unusable for
//! a while: its batches are dropped (the core asks again) and the next ones go by libp2p.
//! A cluster with a secret has no data path: every byte then goes through the secret's
//! cipher and noise.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::AsyncWriteExt;
use libp2p::PeerId;
use libp2p::identity::{Keypair, PublicKey};
use ractor::ActorRef;
use rdask_actors::NodeMsg;
use rdask_actors::protocol::{PeerBatch, PeerMsg};
use rdask_gossip::NodeId;
use tokio::io::{AsyncReadExt, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

use crate::codec::{read_peer_batch, write_peer_batch};

/// Batches whose values add up to this many bytes or more take the data path.
pub const DATA_PATH_MIN_BYTES: u64 = 64 * 1024;
/// The first bytes a data port sends, before its nonce.
const MAGIC: &[u8; 13] = b"rdask-data/1\n";
/// How long a handshake may take, on either side.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a peer whose data path failed is reached by libp2p only.
const BROKEN_FOR: Duration = Duration::from_secs(30);
/// Largest public key or signature accepted in a handshake.
const MAX_KEY_BYTES: usize = 512;
/// Most batches written between two flushes.
const BATCHES_PER_FLUSH: usize = 16;
/// A batch's write may take this long, plus [`WRITE_SECS_PER_MB`] per MB of it: a peer
/// that stops reading (dead, cut off) fails the data path instead of holding it.
const WRITE_BASE: Duration = Duration::from_secs(10);
/// See [`WRITE_BASE`]: 0.1 s per MB, i.e. no slower than 10 MB/s.
const WRITE_SECS_PER_MB: f64 = 0.1;

/// What went over the data path, and how many requests the node's remote clients sent,
/// for `/metrics`.
#[derive(Debug, Default)]
pub struct DataStats {
    /// Bytes of values sent to peers over data connections.
    pub sent_bytes: std::sync::atomic::AtomicU64,
    /// Bytes of values received from peers over data connections.
    pub received_bytes: std::sync::atomic::AtomicU64,
    /// Requests read from client sessions.
    pub client_requests: std::sync::atomic::AtomicU64,
}

/// The bytes of values a batch carries.
pub fn value_bytes(batch: &PeerBatch) -> u64 {
    batch
        .msgs
        .iter()
        .map(|m| match m {
            PeerMsg::Data { value: Some(v), .. } => v.len() as u64,
            _ => 0,
        })
        .sum()
}

/// What the connecting node signs: the accepting node's nonce and peer id.
fn signed_text(nonce: &[u8; 32], acceptor: &PeerId) -> Vec<u8> {
    let mut text = Vec::with_capacity(64 + 12);
    text.extend_from_slice(b"rdask-data/1");
    text.extend_from_slice(nonce);
    text.extend_from_slice(&acceptor.to_bytes());
    text
}

/// Bulky batches queued for one peer's data connection; past it they go by libp2p.
const LANE_QUEUE: usize = 256;

/// The sending side: one connection and writer task per peer, opened on the first bulky
/// batch for it.
pub(crate) struct DataLanes {
    keypair: Keypair,
    /// Where peers accept data connections, from their gossiped member records.
    ports: RwLock<HashMap<PeerId, (String, u16)>>,
    links: Mutex<HashMap<PeerId, mpsc::Sender<PeerBatch>>>,
    /// Peers whose data path failed, until when.
    broken: Arc<Mutex<HashMap<PeerId, Instant>>>,
    runtime: tokio::runtime::Handle,
    max_frame: usize,
    max_value: u64,
    stats: Arc<DataStats>,
}

impl DataLanes {
    /// Lanes that sign with this node's `keypair` (must be called within a tokio runtime).
    pub(crate) fn new(
        keypair: Keypair,
        max_frame: usize,
        max_value: u64,
        stats: Arc<DataStats>,
    ) -> DataLanes {
        DataLanes {
            stats,
            keypair,
            ports: RwLock::new(HashMap::new()),
            links: Mutex::new(HashMap::new()),
            broken: Arc::default(),
            runtime: tokio::runtime::Handle::current(),
            max_frame,
            max_value,
        }
    }

    /// Records where peers accept data connections: (node, host, port), port 0 for none.
    pub(crate) fn set_ports(&self, members: impl IntoIterator<Item = (NodeId, String, u16)>) {
        let ports = members
            .into_iter()
            .filter(|(_, host, port)| *port != 0 && !host.is_empty())
            .filter_map(|(node, host, port)| Some((node.0.parse::<PeerId>().ok()?, (host, port))))
            .collect();
        *self.ports.write().expect("data ports") = ports;
    }

    /// Queues `batch` for `peer` on the data path, or gives it back when it should go by
    /// libp2p (small, no data port known, or the data path failed lately).
    pub(crate) fn send(&self, peer: PeerId, batch: PeerBatch) -> Result<(), PeerBatch> {
        if value_bytes(&batch) < DATA_PATH_MIN_BYTES {
            return Err(batch);
        }
        {
            let mut broken = self.broken.lock().expect("broken lanes");
            match broken.get(&peer) {
                Some(until) if *until > Instant::now() => return Err(batch),
                Some(_) => {
                    broken.remove(&peer);
                }
                None => {}
            }
        }
        let Some(addr) = self.ports.read().expect("data ports").get(&peer).cloned() else {
            return Err(batch);
        };
        let mut links = self.links.lock().expect("data links");
        let batch = match links.get(&peer) {
            Some(tx) => match tx.try_send(batch) {
                Ok(()) => return Ok(()),
                // Full: the data connection is behind; libp2p carries this one.
                Err(mpsc::error::TrySendError::Full(batch)) => return Err(batch),
                Err(mpsc::error::TrySendError::Closed(batch)) => batch,
            },
            None => batch,
        };
        let (tx, rx) = mpsc::channel(LANE_QUEUE);
        let _ = tx.try_send(batch);
        links.insert(peer, tx);
        self.runtime.spawn(data_writer(
            peer,
            addr,
            rx,
            Writer {
                keypair: self.keypair.clone(),
                broken: self.broken.clone(),
                stats: self.stats.clone(),
                max_frame: self.max_frame,
                max_value: self.max_value,
            },
        ));
        Ok(())
    }
}

/// Connects to `peer`'s data port and proves this node's identity.
async fn connect(
    peer: PeerId,
    (host, port): &(String, u16),
    keypair: &Keypair,
) -> std::io::Result<TcpStream> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut s = TcpStream::connect((host.as_str(), *port)).await?;
    s.set_nodelay(true)?;
    let mut hello = [0u8; 13 + 32];
    s.read_exact(&mut hello).await?;
    if &hello[..13] != MAGIC {
        return Err(bad("not an rdask data port"));
    }
    let nonce: [u8; 32] = hello[13..].try_into().expect("32 bytes");
    let key = keypair.public().encode_protobuf();
    let sig = keypair
        .sign(&signed_text(&nonce, &peer))
        .map_err(|e| bad(&e.to_string()))?;
    let mut answer = Vec::with_capacity(4 + key.len() + sig.len());
    answer.extend_from_slice(&(key.len() as u16).to_le_bytes());
    answer.extend_from_slice(&key);
    answer.extend_from_slice(&(sig.len() as u16).to_le_bytes());
    answer.extend_from_slice(&sig);
    s.write_all(&answer).await?;
    let mut ok = [0u8; 1];
    s.read_exact(&mut ok).await?;
    if ok[0] != 1 {
        return Err(bad("the peer refused the handshake"));
    }
    Ok(s)
}

/// What a data writer works with.
struct Writer {
    keypair: Keypair,
    broken: Arc<Mutex<HashMap<PeerId, Instant>>>,
    stats: Arc<DataStats>,
    max_frame: usize,
    max_value: u64,
}

/// Writes the bulky batches for one peer on its data connection. On a failure (no
/// connection, a write that takes too long, a broken socket) it drops what is queued, marks
/// the peer's data path broken for a while and ends: the next bulky batch after that starts
/// a writer that looks the peer's data port up afresh (it may have restarted elsewhere).
async fn data_writer(
    peer: PeerId,
    addr: (String, u16),
    mut rx: mpsc::Receiver<PeerBatch>,
    w: Writer,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let Writer {
        keypair,
        broken,
        stats,
        max_frame,
        max_value,
    } = w;
    let mut conn = None;
    while let Some(first) = rx.recv().await {
        let result = async {
            let w = match &mut conn {
                Some(w) => w,
                None => {
                    let s = tokio::time::timeout(HANDSHAKE_TIMEOUT, connect(peer, &addr, &keypair))
                        .await
                        .map_err(|_| {
                            std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                "no handshake in time",
                            )
                        })??;
                    tracing::debug!(%peer, host = %addr.0, port = addr.1, "data connection open");
                    conn.insert(s.compat_write())
                }
            };
            let mut next = Some(first);
            let mut written = 0;
            while let Some(batch) = next.take() {
                let bytes = value_bytes(&batch);
                let limit =
                    WRITE_BASE + Duration::from_secs_f64(bytes as f64 / 1e6 * WRITE_SECS_PER_MB);
                let write = write_peer_batch(w, batch, max_frame, max_value);
                let dropped = tokio::time::timeout(limit, write).await.map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("a batch of {bytes} bytes not written within {limit:?}"),
                    )
                })??;
                for reason in dropped {
                    tracing::warn!(%peer, "dropped a message for a peer: {reason}");
                }
                stats.sent_bytes.fetch_add(bytes, Relaxed);
                written += 1;
                if written < BATCHES_PER_FLUSH {
                    next = rx.try_recv().ok();
                }
            }
            tokio::time::timeout(WRITE_BASE, w.flush())
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "flush timed out"))?
        }
        .await;
        if let Err(e) = result {
            let mut dropped = 1;
            while rx.try_recv().is_ok() {
                dropped += 1;
            }
            broken
                .lock()
                .expect("broken lanes")
                .insert(peer, Instant::now() + BROKEN_FOR);
            tracing::info!(%peer, host = %addr.0, port = addr.1, error = %e, dropped,
                "the data path to a peer failed; its values go by libp2p for a while");
            return;
        }
    }
}

/// Data connections accepted at once (handshakes included): a member opens one.
const MAX_DATA_CONNECTIONS: usize = 256;

/// Accepts data connections on `listener` and hands their batches to `actor` as coming
/// from the peer each one proved to be (`me` is this node's peer id).
pub(crate) async fn serve_data(
    listener: TcpListener,
    me: PeerId,
    actor: ActorRef<NodeMsg>,
    inbox: Arc<tokio::sync::Semaphore>,
    stats: Arc<DataStats>,
    max_frame: usize,
    max_value: u64,
) {
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_DATA_CONNECTIONS));
    loop {
        let (socket, from) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "the data port failed to accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = connections.clone().try_acquire_owned() else {
            tracing::warn!(%from, "refused a data connection: {MAX_DATA_CONNECTIONS} open already");
            continue;
        };
        let actor = actor.clone();
        let stats = stats.clone();
        let inbox = inbox.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _ = socket.set_nodelay(true);
            let mut socket = socket;
            let peer = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept(&mut socket, me)).await
            {
                Ok(Ok(peer)) => peer,
                Ok(Err(e)) => {
                    tracing::info!(%from, error = %e, "refused a data connection");
                    return;
                }
                Err(_) => {
                    tracing::info!(%from, "refused a data connection: no handshake in time");
                    return;
                }
            };
            tracing::debug!(%peer, %from, "a peer opened a data connection");
            let node = NodeId(peer.to_base58().into());
            let mut reader = socket.compat();
            loop {
                match read_peer_batch(&mut reader, max_frame, max_value).await {
                    Ok(batch) => {
                        stats
                            .received_bytes
                            .fetch_add(value_bytes(&batch), std::sync::atomic::Ordering::Relaxed);
                        let place = inbox.clone().acquire_owned().await.ok();
                        if actor
                            .send_message(NodeMsg::Peer(node.clone(), batch, place))
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return,
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "dropped a bad batch on a data connection; closing it");
                        return;
                    }
                }
            }
        });
    }
}

/// The accepting side of a handshake: the peer id the other side proved to be.
pub(crate) async fn accept<S>(socket: &mut S, me: PeerId) -> std::io::Result<PeerId>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let nonce: [u8; 32] = rand::random();
    let mut hello = Vec::with_capacity(45);
    hello.extend_from_slice(MAGIC);
    hello.extend_from_slice(&nonce);
    socket.write_all(&hello).await?;
    let key = read_short(socket).await?;
    let sig = read_short(socket).await?;
    let key =
        PublicKey::try_decode_protobuf(&key).map_err(|e| bad(format!("not a public key: {e}")))?;
    if !key.verify(&signed_text(&nonce, &me), &sig) {
        return Err(bad("the signature does not match".into()));
    }
    socket.write_all(&[1]).await?;
    Ok(key.to_peer_id())
}

/// A length-prefixed (u16) piece of a handshake, at most [`MAX_KEY_BYTES`].
async fn read_short<S: tokio::io::AsyncRead + Unpin>(socket: &mut S) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    socket.read_exact(&mut len).await?;
    let len = u16::from_le_bytes(len) as usize;
    if len == 0 || len > MAX_KEY_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a handshake field of {len} bytes"),
        ));
    }
    let mut buf = vec![0u8; len];
    socket.read_exact(&mut buf).await?;
    Ok(buf)
}

/// The data port a node listens on, for its member record: `(host, port)` of a peer is its
/// advertised address's host and this port.
pub fn host_of(multiaddr: &str) -> Option<String> {
    use libp2p::multiaddr::Protocol;
    let addr: libp2p::Multiaddr = multiaddr.parse().ok()?;
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(ip.to_string()),
        Protocol::Ip6(ip) => Some(ip.to_string()),
        Protocol::Dns(h) | Protocol::Dns4(h) | Protocol::Dns6(h) => Some(h.to_string()),
        _ => None,
    })
}

/// Binds the data port: the host of the first listen address, `port` (0: any free one).
pub(crate) async fn bind(listen: &libp2p::Multiaddr, port: u16) -> std::io::Result<TcpListener> {
    let host = host_of(&listen.to_string()).unwrap_or_else(|| "0.0.0.0".into());
    let ip: std::net::IpAddr = host
        .parse()
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    TcpListener::bind(SocketAddr::new(ip, port)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rdask_actors::protocol::LoadHint;

    fn bulky(n: usize) -> PeerBatch {
        PeerBatch {
            load: LoadHint::default(),
            msgs: vec![PeerMsg::Data {
                owner: NodeId("owner".into()),
                key: "k-1".into(),
                value: Some(Bytes::from(vec![7u8; n])),
            }],
        }
    }

    #[test]
    fn only_batches_with_enough_value_bytes_take_the_data_path() {
        assert_eq!(value_bytes(&bulky(10)), 10);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let lanes = DataLanes::new(
            Keypair::generate_ed25519(),
            1 << 20,
            1 << 30,
            Arc::default(),
        );
        let peer = Keypair::generate_ed25519().public().to_peer_id();
        // Small: by libp2p.
        assert!(lanes.send(peer, bulky(100)).is_err());
        // Large, but no data port known: by libp2p.
        assert!(lanes.send(peer, bulky(1 << 20)).is_err());
    }

    #[tokio::test]
    async fn a_handshake_proves_the_peer_id_and_a_forged_one_is_refused() {
        let me = Keypair::generate_ed25519();
        let me_id = me.public().to_peer_id();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut out = Vec::new();
            for _ in 0..3 {
                let (mut s, _) = listener.accept().await.unwrap();
                out.push(accept(&mut s, me_id).await.map_err(|e| e.to_string()));
            }
            out
        });
        let honest = Keypair::generate_ed25519();
        let target = ("127.0.0.1".to_string(), addr.port());
        connect(me_id, &target, &honest).await.unwrap();
        // Signed for another node: refused.
        let other = Keypair::generate_ed25519().public().to_peer_id();
        assert!(connect(other, &target, &honest).await.is_err());
        // Garbage: refused.
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut hello = [0u8; 45];
        s.read_exact(&mut hello).await.unwrap();
        s.write_all(&[0xff, 0xff, 1, 2, 3]).await.unwrap();
        let results = server.await.unwrap();
        assert_eq!(results[0], Ok(honest.public().to_peer_id()));
        assert!(
            results[1].as_ref().unwrap_err().contains("signature"),
            "{results:?}"
        );
        assert!(
            results[2].as_ref().unwrap_err().contains("handshake field"),
            "{results:?}"
        );
    }
}
