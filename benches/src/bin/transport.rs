//! `transport`: what the network stack itself costs, apart from rdask. Two tokio runtimes
//! of one thread each (as a client and a node with `--io-threads 1`) talk over loopback:
//!
//! - plain TCP (`tokio::net`), as Dask's default TCP comm would;
//! - libp2p as rdask uses it (TCP + noise + yamux, one `libp2p_stream` stream);
//! - the same with a cluster secret (libp2p's private network under noise).
//!
//! For each: the median and p99 of 64-byte request → reply round trips, and the rate of a
//! 256 MiB one-way transfer (written in 1 MiB pieces, then one byte back).
//!
//! ```text
//! cargo run --release -p rdask-benches --bin transport [-- ROUND_TRIPS MIB]
//! ```

use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, StreamProtocol, swarm::SwarmEvent};
use rdask_node::ClusterSecret;
use rdask_node::net::build_swarm;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const PROTOCOL: StreamProtocol = StreamProtocol::new("/rdask-bench/transport/1");
const PIECE: usize = 1 << 20;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// A connection either stack gives: exact reads, and writes that flush.
trait Conn {
    fn recv(&mut self, buf: &mut [u8]) -> impl std::future::Future<Output = std::io::Result<()>>;
    fn send(&mut self, data: &[u8]) -> impl std::future::Future<Output = std::io::Result<()>>;
}

impl Conn for tokio::net::TcpStream {
    async fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        self.read_exact(buf).await.map(|_| ())
    }
    async fn send(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.write_all(data).await?;
        self.flush().await
    }
}

impl Conn for libp2p::Stream {
    async fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        AsyncReadExt::read_exact(self, buf).await
    }
    async fn send(&mut self, data: &[u8]) -> std::io::Result<()> {
        AsyncWriteExt::write_all(self, data).await?;
        AsyncWriteExt::flush(self).await
    }
}

/// The server's side of one connection: echo 64-byte requests; a request whose first
/// byte is 1 announces a transfer of the next 8 bytes' worth, answered with one byte.
async fn serve(mut c: impl Conn) {
    let mut msg = [0u8; 64];
    let mut piece = vec![0u8; PIECE];
    loop {
        if c.recv(&mut msg).await.is_err() {
            return;
        }
        if msg[0] == 1 {
            let mut left = u64::from_le_bytes(msg[1..9].try_into().expect("8 bytes")) as usize;
            while left > 0 {
                let n = left.min(PIECE);
                if c.recv(&mut piece[..n]).await.is_err() {
                    return;
                }
                left -= n;
            }
            if c.send(&msg[..1]).await.is_err() {
                return;
            }
        } else if c.send(&msg).await.is_err() {
            return;
        }
    }
}

struct Figures {
    rt_median_us: f64,
    rt_p99_us: f64,
    mb_per_s: f64,
}

/// The client's side: round trips, then a transfer.
async fn drive(mut c: impl Conn, round_trips: usize, mib: usize) -> Figures {
    let mut msg = [7u8; 64];
    let mut back = [0u8; 64];
    let mut lat = Vec::with_capacity(round_trips);
    for _ in 0..round_trips {
        let t = Instant::now();
        c.send(&msg).await.expect("send");
        c.recv(&mut back).await.expect("receive");
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    lat.sort_by(f64::total_cmp);
    let total = mib * PIECE;
    msg[0] = 1;
    msg[1..9].copy_from_slice(&(total as u64).to_le_bytes());
    let piece = vec![42u8; PIECE];
    let t = Instant::now();
    c.send(&msg).await.expect("send");
    for _ in 0..mib {
        c.send(&piece).await.expect("send");
    }
    c.recv(&mut back[..1]).await.expect("ack");
    let secs = t.elapsed().as_secs_f64();
    Figures {
        rt_median_us: lat[lat.len() / 2],
        rt_p99_us: lat[((lat.len() - 1) as f64 * 0.99) as usize],
        mb_per_s: total as f64 / secs / 1e6,
    }
}

fn plain_tcp(round_trips: usize, mib: usize) -> Figures {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        runtime().block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            addr_tx
                .send(listener.local_addr().expect("addr"))
                .expect("send");
            let (socket, _) = listener.accept().await.expect("accept");
            socket.set_nodelay(true).expect("nodelay");
            serve(socket).await;
        })
    });
    let addr = addr_rx.recv().expect("address");
    runtime().block_on(async move {
        let socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
        socket.set_nodelay(true).expect("nodelay");
        drive(socket, round_trips, mib).await
    })
}

fn libp2p(round_trips: usize, mib: usize, secret: Option<ClusterSecret>) -> Figures {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel::<Multiaddr>();
    std::thread::spawn(move || {
        runtime().block_on(async move {
            let mut swarm = build_swarm(Keypair::generate_ed25519(), secret.as_ref(), |_| {
                libp2p_stream::Behaviour::new()
            })
            .expect("a swarm");
            let mut incoming = swarm
                .behaviour()
                .new_control()
                .accept(PROTOCOL)
                .expect("accept");
            swarm
                .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("addr"))
                .expect("listen");
            let peer = *swarm.local_peer_id();
            tokio::spawn(async move {
                loop {
                    if let SwarmEvent::NewListenAddr { address, .. } =
                        swarm.select_next_some().await
                    {
                        let _ = addr_tx.send(address.with_p2p(peer).expect("p2p"));
                    }
                }
            });
            let (_, stream) = incoming.next().await.expect("a stream");
            serve(stream).await;
        })
    });
    let addr = addr_rx.recv().expect("address");
    runtime().block_on(async move {
        let mut swarm = build_swarm(Keypair::generate_ed25519(), secret.as_ref(), |_| {
            libp2p_stream::Behaviour::new()
        })
        .expect("a swarm");
        let mut control = swarm.behaviour().new_control();
        swarm.dial(addr).expect("dial");
        let peer = loop {
            if let SwarmEvent::ConnectionEstablished { peer_id, .. } =
                swarm.select_next_some().await
            {
                break peer_id;
            }
        };
        tokio::spawn(async move {
            loop {
                swarm.select_next_some().await;
            }
        });
        let stream =
            tokio::time::timeout(Duration::from_secs(10), control.open_stream(peer, PROTOCOL))
                .await
                .expect("in time")
                .expect("a stream");
        drive(stream, round_trips, mib).await
    })
}

fn main() {
    let mut args = std::env::args().skip(1);
    let round_trips: usize = args
        .next()
        .map_or(5_000, |a| a.parse().expect("round trips"));
    let mib: usize = args.next().map_or(256, |a| a.parse().expect("MiB"));
    println!(
        "loopback, one runtime thread per side; {round_trips} round trips of 64 bytes, {mib} MiB one way"
    );
    println!(
        "{:<34} {:>12} {:>12} {:>12}",
        "stack", "median µs", "p99 µs", "MB/s"
    );
    let secret = ClusterSecret::new("transport benchmark").expect("a secret");
    for (name, f) in [
        ("plain TCP", plain_tcp(round_trips, mib)),
        ("libp2p TCP + noise + yamux", libp2p(round_trips, mib, None)),
        (
            "the same + cluster secret (pnet)",
            libp2p(round_trips, mib, Some(secret)),
        ),
    ] {
        println!(
            "{name:<34} {:>12.1} {:>12.1} {:>12.0}",
            f.rt_median_us, f.rt_p99_us, f.mb_per_s
        );
    }
}
