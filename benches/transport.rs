//! Transport benchmarks: remote calls over QUIC against raw baselines measured in the same run.
//!
//! The design bars (DESIGN.md §Performance bars) are ratios to a raw quinn stream measured on
//! the same machine in the same run; every peer below is one [`Peer`] and every group measures
//! each of them side by side:
//!
//! | group            | what one iteration is                                   | bar for Skiff  |
//! |------------------|---------------------------------------------------------|----------------|
//! | `rtt`            | one warm request/response of a 64-byte payload           | ≤ 1.1× quinn   |
//! | `rtt_local`      | the same, everything on one current-thread runtime       | ≤ 1.1× quinn   |
//! | `rtt_local_task` | `rtt_local` with the timed loop a task of the set, not the future the set runs until | — (no bar; the bar is judged on `rtt_local`) |
//! | `rtt_vm_thread`  | `rtt` with an echo that calls a host native: run on the server's VM thread, not inline | — (no bar; `rtt`'s bar is judged on `rtt`) |
//! | `calls_inflight` | one call, with 1/8/32/128 calls kept in flight          | ≥ 0.8× quinn calls/s at 32–128 |
//! | `bulk256m`       | 256 MiB sent to the peer and acknowledged               | ≥ 0.7× quinn throughput |
//!
//! Peers:
//! - `skiff`: two Skiff nodes ([`skiff::node::Node`]) in this process on 127.0.0.1 with pinned
//!   self-signed dev certificates. The server node has loaded
//!   `fn echo(x) { x }`, `fn size(data) { len(data) }` and `fn echo_host(x) { same(x) }`
//!   (`same`: a host native returning its argument); a call is
//!   [`Node::call`](skiff::node::Node::call) of an exported function by name: the wire
//!   protocol, the server running the function, the response back. `echo` and `size` are
//!   effect-free, so the server answers them on the connection's thread (an inline answer,
//!   docs/ARCHITECTURE.md); `echo_host`, with its host native, runs on the server's VM thread
//!   (`rtt_vm_thread`: what a call of a function with host natives pays). `call` sends
//!   the 64-byte payload as a bytes value to `echo`; `bulk` passes the bulk value (one
//!   256 MiB bytes value, built once, outside the timing) to `size`, so it travels as a
//!   sidecar that the sender hashes and the receiver re-hashes and verifies before the call
//!   runs. The server announces a sidecar retain budget of 0, so the sidecar dedup (which
//!   would skip a value the peer already holds) never applies: every iteration sends every
//!   byte. The connection and the first (cold) call are made before timing.
//! - `quinn`: a raw quinn stream echo / bulk sink. Both endpoints are
//!   [`skiff_transport::Endpoint`]s on 127.0.0.1 with pinned self-signed dev certificates
//!   (mutual TLS 1.3, exactly the handshake and transport options a Skiff node uses); above
//!   that, plain quinn: one bidirectional stream per call, no framing, no hashing; bulk
//!   writes the same 256 MiB value as Skiff sends, in one write (as Skiff's sender does).
//! - `tcp`: raw tokio TCP on 127.0.0.1 (no TLS, `TCP_NODELAY`), as a second line: one
//!   connection, length-prefixed frames, calls pipelined with responses matched in order; bulk
//!   (the same value, in 1 MiB slices) on a second connection.
//!
//! `rtt` and `calls_inflight` run on a 2-worker runtime (Skiff's nodes started with
//! [`Node::start`]: each VM on a thread of its own). `rtt_local` builds every peer again on a
//! current-thread runtime that the bench thread drives: Skiff's nodes started with
//! [`Node::start_local`] (endpoint, drivers, VMs and caller on that one thread), the
//! baselines' endpoints and server tasks on that runtime too. Its timed loop is the future
//! the `LocalSet` runs until (`LocalSet::block_on`), which the set polls again each time a
//! task of the set is woken from outside it (by the I/O driver: twice per Skiff round
//! trip), and which an answer wakes from within the set only for the next scheduler pass.
//! `rtt_local_task` spawns the same loop as a task of the set instead, as `rtt` spawns its
//! loop as a task of its runtime: a caller that is a task of the set is woken and run
//! within the pass that read its answer.
//!
//! The peers of a row take turns ([`timed_in_turn`], `support/paired.rs`): a sample of one
//! peer runs a block of its iterations (64 calls, 16 × the in-flight level, or one
//! transfer), then a block of each other peer's, and so on, Skiff and quinn swapping
//! places every other round (`Rounds::order`); every round's times, all peers', are kept,
//! and give the row's paired ratio (`<criterion home>/paired/<row>.json`; measured one
//! after the other, the ratio of two criterion medians moved by a fifth and more between
//! runs of the same code, `rtt_local` 0.94–1.40 in one hour). A row thus takes about as
//! long as all its peers' iterations together. The file also gives every peer's
//! CPU per iteration and the cores it kept busy, and the bulk row the time one core takes
//! to hash its bytes: together they say whether a gap is work (CPU) or waiting (cores idle).
//!
//! Every peer is checked once before timing: the echo must return the payload and the bulk
//! sink must acknowledge every byte (for `skiff`: `size` returns the byte count).
//!
//! Run: `CARGO_TARGET_DIR=/work/target-bench cargo bench --bench transport`; see
//! `benches/README.md` for the whole suite and the report script. With
//! `SKIFF_RTT_LOOP=<peer>:<calls>` set, the binary runs no benchmark but a loop of one
//! `rtt_local` peer's round trips, for profilers ([`rtt_local_loop`]); with
//! `SKIFF_BULK_LOOP=<peer>:<transfers>`, a loop of one peer's bulk transfers
//! ([`bulk_loop`]).

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use skiff::node::{Node, NodeConfig, NodeError};
use skiff::{ExecIo, Limits, NativeCtx, NativeError, Portable, Value};
use skiff_transport::cert::generate_self_signed;
use skiff_transport::{ClientAuth, Endpoint, EndpointConfig, Trust};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tokio::task::LocalSet;

#[path = "support/entry.rs"]
mod entry;
#[path = "support/paired.rs"]
mod paired;
use paired::{blocks, measuring, Rounds, TurnStart};

/// Size of one call's payload (a small call request).
const CALL_BYTES: usize = 64;
/// Bulk transfer size: 256 MiB, or 4 MiB under `cargo test --benches` (no `--bench` flag, as
/// in CI), where each benchmark runs once as a check in a debug build.
fn bulk_bytes() -> usize {
    if measuring() {
        256 << 20
    } else {
        4 << 20
    }
}
/// The TCP baseline writes the bulk value in slices of this size (its frames).
const BULK_CHUNK: usize = 1 << 20;
/// In-flight levels measured by `calls_inflight`.
const INFLIGHT: [usize; 4] = [1, 8, 32, 128];

/// First byte of a quinn stream: what the server does with it.
const MODE_ECHO: u8 = 0;
const MODE_BULK: u8 = 1;
/// First byte of a TCP connection.
const TCP_ECHO: u8 = 0;
const TCP_BULK: u8 = 1;

type Fut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Something that answers calls: a baseline or a Skiff node.
trait Peer: Send + Sync {
    /// Name used as the criterion function id (the column in the report).
    fn name(&self) -> &'static str;
    /// One request/response: the peer returns `payload` (a Skiff node: runs an echo function).
    fn call<'a>(&'a self, payload: &'a Bytes) -> Fut<'a, Vec<u8>>;
    /// Sends `data` as one transfer; returns the byte count the far side acknowledged.
    fn bulk<'a>(&'a self, data: &'a Bytes) -> Fut<'a, u64>;
}

// ---------------------------------------------------------------------------------------
// Skiff nodes
// ---------------------------------------------------------------------------------------

/// What the server node loads: the functions the client calls by name. `same` is a host
/// native ([`same`]), not declared effect-free: a function calling it runs on the server's
/// VM thread.
const SERVER_SCRIPT: &str =
    "fn echo(x) { x }\nfn size(data) { len(data) }\nfn echo_host(x) { same(x) }\n";

/// The server's host native `same(x)`: returns `x`.
fn same(_: &mut NativeCtx<'_>, args: &[Value]) -> Result<Value, NativeError> {
    match args {
        [x] => Ok(x.clone()),
        _ => Err(NativeError::error("ArityError", "same(x) takes 1 argument")),
    }
}

struct SkiffPeer {
    /// The function `call` calls: `echo`, or `echo_host` (see [`SERVER_SCRIPT`]).
    echo: &'static str,
    client: Node,
    /// Serves every call; kept alive for the duration of the bench.
    _server: Node,
}

impl SkiffPeer {
    /// Two nodes; with `local`, their VM loops are tasks of it ([`Node::start_local`]).
    /// Whose `call` calls `echo` (a function of [`SERVER_SCRIPT`]).
    async fn start(local: Option<&LocalSet>, echo: &'static str) -> SkiffPeer {
        let server_cert = generate_self_signed("server").expect("server cert");
        let client_cert = generate_self_signed("client").expect("client cert");

        let mut config = NodeConfig::new("server", server_cert.identity().unwrap());
        config.client_auth = Some(ClientAuth::pinned([client_cert.fingerprint()]));
        config.io = Arc::new(ExecIo::null);
        // No sidecar dedup: every bulk call carries its 256 MiB (see the module doc).
        config.wire.sidecar_retain_bytes = 0;
        config.natives.push(("same".into(), Arc::new(same)));
        let server = start_node(config, local).await.expect("start server node");
        let mut compiler = skiff::Engine::new(Limits::default());
        compiler.register_native("same", same);
        let module = compiler
            .compile(SERVER_SCRIPT, "bench.skiff")
            .expect("compile server script");
        server.load(&module).await.expect("load server script");

        let mut config = NodeConfig::new("client", client_cert.identity().unwrap());
        config.client_auth = Some(ClientAuth::pinned([server_cert.fingerprint()]));
        config.io = Arc::new(ExecIo::null);
        let client = start_node(config, local).await.expect("start client node");
        let addr = server.local_addr().unwrap().to_string();
        client.add_peer(
            skiff_transport::Peer::new("server", &addr, Some(server_cert.fingerprint()))
                .expect("peer entry"),
        );

        let peer = SkiffPeer {
            echo,
            client,
            _server: server,
        };
        // The cold call (dial, TLS handshake, hello) happens here, not in a timed loop.
        let p = payload();
        assert_eq!(peer.call(&p).await, p.as_ref(), "skiff: cold echo");
        peer
    }
}

async fn start_node(config: NodeConfig, local: Option<&LocalSet>) -> Result<Node, NodeError> {
    match local {
        Some(local) => Node::start_local(config, local).await,
        None => Node::start(config).await,
    }
}

impl Peer for SkiffPeer {
    fn name(&self) -> &'static str {
        "skiff"
    }

    fn call<'a>(&'a self, payload: &'a Bytes) -> Fut<'a, Vec<u8>> {
        Box::pin(async move {
            let arg = Portable::Bytes(payload.clone());
            match self.client.call("server", self.echo, vec![arg], None).await {
                Ok(Portable::Bytes(b)) => b.to_vec(),
                other => panic!("skiff: {} returned {other:?}", self.echo),
            }
        })
    }

    fn bulk<'a>(&'a self, data: &'a Bytes) -> Fut<'a, u64> {
        Box::pin(async move {
            let arg = Portable::Bytes(data.clone());
            match self.client.call("server", "size", vec![arg], None).await {
                Ok(Portable::Int(n)) => n as u64,
                other => panic!("skiff: size returned {other:?}"),
            }
        })
    }
}

// ---------------------------------------------------------------------------------------
// quinn baseline
// ---------------------------------------------------------------------------------------

struct QuinnPeer {
    conn: quinn::Connection,
    // Kept alive for the duration of the bench.
    _client: Endpoint,
    _server: Endpoint,
}

impl QuinnPeer {
    async fn start() -> QuinnPeer {
        let server_cert = generate_self_signed("bench-server").expect("server cert");
        let client_cert = generate_self_signed("bench-client").expect("client cert");
        let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let server = Endpoint::bind(
            loopback,
            EndpointConfig::new(
                server_cert.identity().unwrap(),
                ClientAuth::pinned([client_cert.fingerprint()]),
            ),
        )
        .expect("bind server");
        let client = Endpoint::bind(
            loopback,
            EndpointConfig::new(
                client_cert.identity().unwrap(),
                ClientAuth::pinned([server_cert.fingerprint()]),
            ),
        )
        .expect("bind client");
        tokio::spawn(quinn_server(server.clone()));
        let conn = client
            .connect(
                server.local_addr().unwrap(),
                "bench-server",
                &Trust::Pinned(server_cert.fingerprint()),
            )
            .await
            .expect("connect");
        QuinnPeer {
            conn,
            _client: client,
            _server: server,
        }
    }
}

async fn quinn_server(ep: Endpoint) {
    while let Some(accepting) = ep.accept().await {
        tokio::spawn(async move {
            let Ok((conn, _id)) = accepting.establish().await else {
                return;
            };
            while let Ok((send, recv)) = conn.accept_bi().await {
                tokio::spawn(quinn_stream(send, recv));
            }
        });
    }
}

async fn quinn_stream(mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let mut mode = [0u8];
    if recv.read_exact(&mut mode).await.is_err() {
        return;
    }
    match mode[0] {
        MODE_ECHO => {
            let Ok(data) = recv.read_to_end(1 << 20).await else {
                return;
            };
            let _ = send.write_all(&data).await;
        }
        MODE_BULK => {
            let mut total = 0u64;
            while let Ok(Some(chunk)) = recv.read_chunk(usize::MAX, true).await {
                total += chunk.bytes.len() as u64;
            }
            let _ = send.write_all(&total.to_le_bytes()).await;
        }
        _ => {}
    }
    let _ = send.finish();
}

impl Peer for QuinnPeer {
    fn name(&self) -> &'static str {
        "quinn"
    }

    fn call<'a>(&'a self, payload: &'a Bytes) -> Fut<'a, Vec<u8>> {
        Box::pin(async move {
            let (mut send, mut recv) = self.conn.open_bi().await.expect("open_bi");
            send.write_all_chunks(&mut [Bytes::from_static(&[MODE_ECHO]), payload.clone()])
                .await
                .expect("write");
            send.finish().expect("finish");
            recv.read_to_end(1 << 20).await.expect("read")
        })
    }

    fn bulk<'a>(&'a self, data: &'a Bytes) -> Fut<'a, u64> {
        Box::pin(async move {
            let (mut send, mut recv) = self.conn.open_bi().await.expect("open_bi");
            send.write_all(&[MODE_BULK]).await.expect("write");
            // One write of the whole value, as Skiff's sender makes: quinn took less time
            // per transfer that way than in 1 MiB slices (benches/README.md).
            send.write_chunk(data.clone()).await.expect("write");
            send.finish().expect("finish");
            let ack = recv.read_to_end(8).await.expect("read ack");
            u64::from_le_bytes(ack.try_into().expect("8-byte ack"))
        })
    }
}

// ---------------------------------------------------------------------------------------
// TCP baseline
// ---------------------------------------------------------------------------------------

struct TcpPeer {
    /// Write side of the call connection; `pending` is pushed under this lock so responses
    /// (which come back in order) match their calls.
    writer: tokio::sync::Mutex<tokio::net::tcp::OwnedWriteHalf>,
    pending: Arc<Mutex<VecDeque<oneshot::Sender<Vec<u8>>>>>,
    bulk: tokio::sync::Mutex<TcpStream>,
}

impl TcpPeer {
    async fn start() -> TcpPeer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind tcp");
        let addr = listener.local_addr().unwrap();
        tokio::spawn(tcp_server(listener));

        let calls = connect_tcp(addr, TCP_ECHO).await;
        let (mut reader, writer) = calls.into_split();
        let pending: Arc<Mutex<VecDeque<oneshot::Sender<Vec<u8>>>>> = Arc::default();
        let waiting = pending.clone();
        tokio::spawn(async move {
            loop {
                let mut len = [0u8; 4];
                if reader.read_exact(&mut len).await.is_err() {
                    return;
                }
                let mut data = vec![0u8; u32::from_le_bytes(len) as usize];
                if reader.read_exact(&mut data).await.is_err() {
                    return;
                }
                let Some(tx) = waiting.lock().unwrap().pop_front() else {
                    return;
                };
                let _ = tx.send(data);
            }
        });
        TcpPeer {
            writer: tokio::sync::Mutex::new(writer),
            pending,
            bulk: tokio::sync::Mutex::new(connect_tcp(addr, TCP_BULK).await),
        }
    }
}

async fn connect_tcp(addr: SocketAddr, mode: u8) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect tcp");
    stream.set_nodelay(true).unwrap();
    stream.write_all(&[mode]).await.unwrap();
    stream
}

async fn tcp_server(listener: TcpListener) {
    while let Ok((mut stream, _)) = listener.accept().await {
        stream.set_nodelay(true).unwrap();
        tokio::spawn(async move {
            let mut mode = [0u8];
            if stream.read_exact(&mut mode).await.is_err() {
                return;
            }
            match mode[0] {
                TCP_ECHO => {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
                TCP_BULK => {
                    let mut buf = vec![0u8; BULK_CHUNK];
                    loop {
                        let mut len = [0u8; 8];
                        if stream.read_exact(&mut len).await.is_err() {
                            return;
                        }
                        let mut left = u64::from_le_bytes(len);
                        let mut total = 0u64;
                        while left > 0 {
                            let want = left.min(buf.len() as u64) as usize;
                            match stream.read(&mut buf[..want]).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
                                    left -= n as u64;
                                    total += n as u64;
                                }
                            }
                        }
                        if stream.write_all(&total.to_le_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
                _ => {}
            }
        });
    }
}

impl Peer for TcpPeer {
    fn name(&self) -> &'static str {
        "tcp"
    }

    fn call<'a>(&'a self, payload: &'a Bytes) -> Fut<'a, Vec<u8>> {
        Box::pin(async move {
            let mut frame = Vec::with_capacity(4 + payload.len());
            frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            frame.extend_from_slice(payload);
            let (tx, rx) = oneshot::channel();
            {
                let mut w = self.writer.lock().await;
                self.pending.lock().unwrap().push_back(tx);
                w.write_all(&frame).await.expect("write");
            }
            rx.await.expect("response")
        })
    }

    fn bulk<'a>(&'a self, data: &'a Bytes) -> Fut<'a, u64> {
        Box::pin(async move {
            let mut s = self.bulk.lock().await;
            let total = data.len() as u64;
            s.write_all(&total.to_le_bytes()).await.expect("write");
            for slice in data.chunks(BULK_CHUNK) {
                s.write_all(slice).await.expect("write");
            }
            let mut ack = [0u8; 8];
            s.read_exact(&mut ack).await.expect("read ack");
            u64::from_le_bytes(ack)
        })
    }
}

// ---------------------------------------------------------------------------------------
// The benchmarks
// ---------------------------------------------------------------------------------------

/// Every peer measured, in report order: the Skiff node first (its VM loops tasks of
/// `local` when given).
async fn start_peers(local: Option<&LocalSet>) -> Vec<Arc<dyn Peer>> {
    let skiff: Arc<dyn Peer> = Arc::new(SkiffPeer::start(local, "echo").await);
    let quinn: Arc<dyn Peer> = Arc::new(QuinnPeer::start().await);
    let tcp: Arc<dyn Peer> = Arc::new(TcpPeer::start().await);
    vec![skiff, quinn, tcp]
}

fn payload() -> Bytes {
    Bytes::from((0..CALL_BYTES).map(|i| i as u8).collect::<Vec<u8>>())
}

/// What every peer's bulk transfer sends: one value of [`bulk_bytes`] bytes, which no peer
/// reads from a cache-sized buffer it repeats.
fn bulk_value() -> Bytes {
    Bytes::from(vec![0xa5u8; bulk_bytes()])
}

/// The one-time correctness check: echo returns the payload, bulk (`data`) is fully
/// acknowledged.
fn check(rt: &Runtime, peer: &dyn Peer, data: &Bytes) {
    let p = payload();
    rt.block_on(async {
        assert_eq!(peer.call(&p).await, p.as_ref(), "{}: echo", peer.name());
        let acked = peer.bulk(data).await;
        assert_eq!(acked, bulk_bytes() as u64, "{}: bulk", peer.name());
    });
}

/// Runs `calls` calls with `inflight` of them outstanding at any time.
async fn run_inflight(peer: Arc<dyn Peer>, payload: Bytes, calls: u64, inflight: usize) {
    let per = calls / inflight as u64;
    let extra = calls % inflight as u64;
    let tasks: Vec<_> = (0..inflight as u64)
        .map(|i| {
            let peer = peer.clone();
            let payload = payload.clone();
            let n = per + u64::from(i < extra);
            tokio::spawn(async move {
                for _ in 0..n {
                    let r = peer.call(&payload).await;
                    debug_assert_eq!(r.len(), payload.len());
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("call task");
    }
}

/// What one iteration of a group is.
#[derive(Clone)]
enum Work {
    /// One call, the next one started when it returns.
    Call,
    /// One call, with this many kept in flight (tasks of the 2-worker runtime).
    InFlight(usize),
    /// One bulk transfer of this value.
    Bulk(Bytes),
}

impl Work {
    /// Iterations of one peer between turns of the others: a few milliseconds of calls
    /// (with `n` in flight, enough for the window to fill), or one transfer.
    fn block(&self) -> u64 {
        match self {
            Work::Call => 64,
            Work::InFlight(n) => 16 * *n as u64,
            Work::Bulk(_) => 1,
        }
    }

    /// `iters` iterations of `peer` (calls carry `payload`).
    async fn run(&self, peer: &Arc<dyn Peer>, iters: u64, payload: &Bytes) {
        match self {
            Work::Call => {
                for _ in 0..iters {
                    peer.call(payload).await;
                }
            }
            Work::InFlight(n) => run_inflight(peer.clone(), payload.clone(), iters, *n).await,
            Work::Bulk(data) => {
                for _ in 0..iters {
                    peer.bulk(data).await;
                }
            }
        }
    }
}

/// The time `iters` iterations of `peers[which]` take, measured in turns with the group's
/// other peers: rounds of [`Work::block`] iterations of each peer in order, only
/// `peers[which]`'s counted for criterion. Every round's times, all peers', go to `rounds`.
async fn timed_in_turn(
    peers: Vec<Arc<dyn Peer>>,
    which: usize,
    work: Work,
    iters: u64,
    rounds: Arc<Rounds>,
) -> Duration {
    let payload = payload();
    let mut timed = Duration::ZERO;
    for n in blocks(iters, work.block()) {
        let mut round = Vec::with_capacity(peers.len());
        for at in rounds.order(peers.len()) {
            let start = TurnStart::now();
            work.run(&peers[at], n, &payload).await;
            round.push((at, start.finish(n)));
        }
        timed += rounds.record(round, which);
    }
    timed
}

/// Seconds one core takes to hash a bulk transfer's bytes with the wire's sidecar hasher:
/// the best of three, as for any pure computation on a shared host.
fn hash_time(data: &Bytes) -> f64 {
    (0..3)
        .map(|_| {
            let start = Instant::now();
            let mut hasher = skiff_wire::value::SidecarHasher::new();
            hasher.update(data);
            std::hint::black_box(hasher.finish());
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// Measures `work` for every peer of `peers` in group `g`, in turns ([`timed_in_turn`]), the
/// timed loop a task of `rt` (as a node's caller would be: timing it from `block_on` on the
/// bench thread would add a cross-thread wake-up per call).
fn bench_in_turn(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    row: &str,
    rt: &Runtime,
    peers: &[Arc<dyn Peer>],
    work: Work,
) {
    let rounds = Arc::new(Rounds::default());
    for (which, peer) in peers.iter().enumerate() {
        let bench = |b: &mut criterion::Bencher<'_>| {
            b.iter_custom(|iters| {
                let (peers, work, rounds) = (peers.to_vec(), work.clone(), rounds.clone());
                rt.block_on(async move {
                    tokio::spawn(timed_in_turn(peers, which, work, iters, rounds))
                        .await
                        .expect("timed task")
                })
            })
        };
        match &work {
            Work::InFlight(n) => g.bench_function(BenchmarkId::new(peer.name(), n), bench),
            Work::Call | Work::Bulk(_) => g.bench_function(peer.name(), bench),
        };
    }
    let names: Vec<&str> = peers.iter().map(|p| p.name()).collect();
    rounds.write(row, &names, || match &work {
        // Skiff hashes a bulk transfer's bytes twice (sender, receiver): what one pass costs.
        Work::Bulk(data) => format!(", \"hash_per_iter\": {:.6}", hash_time(data)),
        Work::Call | Work::InFlight(_) => String::new(),
    });
}

/// [`bench_in_turn`] for the peers of the one-thread rows, which run on `local` driven by
/// `rt` on the bench thread: the timed loop is the future the set runs until, or (`as_task`)
/// a task of the set.
fn bench_local(
    c: &mut Criterion,
    row: &str,
    local: &LocalSet,
    rt: &Runtime,
    peers: &[Arc<dyn Peer>],
    as_task: bool,
) {
    let mut g = c.benchmark_group(row);
    g.sample_size(30).measurement_time(Duration::from_secs(2));
    let rounds = Arc::new(Rounds::default());
    for which in 0..peers.len() {
        g.bench_function(peers[which].name(), |b| {
            b.iter_custom(|iters| {
                let run = timed_in_turn(peers.to_vec(), which, Work::Call, iters, rounds.clone());
                if as_task {
                    let task = local.spawn_local(run);
                    local.block_on(rt, task).expect("timed task")
                } else {
                    local.block_on(rt, run)
                }
            })
        });
    }
    let names: Vec<&str> = peers.iter().map(|p| p.name()).collect();
    rounds.write(row, &names, String::new);
    g.finish();
}

/// The peers of the one-thread rows: a current-thread runtime (which the bench thread
/// drives) and, in it, the set holding the Skiff nodes (all their tasks:
/// `Node::start_local`); the baselines' endpoints and server tasks on that runtime too.
fn one_thread_peers() -> (Runtime, LocalSet, Vec<Arc<dyn Peer>>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("local runtime");
    let local = LocalSet::new();
    let peers = local.block_on(&rt, start_peers(Some(&local)));
    (rt, local, peers)
}

/// The runtime of every row but the one-thread ones: two workers, as a small host has.
fn two_worker_runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn transport(c: &mut Criterion) {
    let rt = two_worker_runtime();
    let peers = rt.block_on(start_peers(None));
    let bulk = bulk_value();
    for peer in &peers {
        check(&rt, peer.as_ref(), &bulk);
    }

    let mut g = c.benchmark_group("rtt");
    g.sample_size(30).measurement_time(Duration::from_secs(2));
    bench_in_turn(&mut g, "rtt", &rt, &peers, Work::Call);
    g.finish();

    // The same round trip through the server's VM thread (an echo calling a host native),
    // against the same quinn echo. (Its start checks the echo once.)
    let on_vm_thread: Arc<dyn Peer> = Arc::new(rt.block_on(SkiffPeer::start(None, "echo_host")));
    let quinn = peers
        .iter()
        .find(|p| p.name() == "quinn")
        .expect("quinn peer");
    let mut g = c.benchmark_group("rtt_vm_thread");
    g.sample_size(30).measurement_time(Duration::from_secs(2));
    bench_in_turn(
        &mut g,
        "rtt_vm_thread",
        &rt,
        &[on_vm_thread, quinn.clone()],
        Work::Call,
    );
    g.finish();

    // The same round trip on one thread.
    let (local_rt, local, local_peers) = one_thread_peers();
    let p = payload();
    for peer in &local_peers {
        let echoed = local.block_on(&local_rt, peer.call(&p));
        assert_eq!(echoed, p.as_ref(), "{}: echo on one thread", peer.name());
    }
    bench_local(c, "rtt_local", &local, &local_rt, &local_peers, false);
    bench_local(c, "rtt_local_task", &local, &local_rt, &local_peers, true);
    drop(local_peers);

    let mut g = c.benchmark_group("calls_inflight");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(1));
    for &n in &INFLIGHT {
        let row = format!("calls_inflight/{n}");
        bench_in_turn(&mut g, &row, &rt, &peers, Work::InFlight(n));
    }
    g.finish();

    let mut g = c.benchmark_group("bulk256m");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Bytes(bulk_bytes() as u64));
    bench_in_turn(&mut g, "bulk256m", &rt, &peers, Work::Bulk(bulk));
    g.finish();
}

/// The environment variables that turn the bench binary into a profiling loop
/// ([`rtt_local_loop`], [`bulk_loop`]) instead of the benchmarks.
const RTT_LOOP_VAR: &str = "SKIFF_RTT_LOOP";
const BULK_LOOP_VAR: &str = "SKIFF_BULK_LOOP";

/// The peer and the count a loop variable `var` names (`<skiff|quinn|tcp>:<count>`).
fn loop_spec<'a>(var: &str, spec: &'a str) -> Result<(&'a str, u64), String> {
    let bad = || format!("{var}: expected <skiff|quinn|tcp>:<count>, got {spec:?}");
    let (name, count) = spec.split_once(':').ok_or_else(bad)?;
    let count: u64 = count.parse().map_err(|_| bad())?;
    if !["skiff", "quinn", "tcp"].contains(&name) {
        return Err(bad());
    }
    Ok((name, count))
}

/// The peer of `peers` named `name` (each loop starts all three).
fn peer_named<'a>(peers: &'a [Arc<dyn Peer>], name: &str) -> &'a Arc<dyn Peer> {
    peers
        .iter()
        .find(|p| p.name() == name)
        .expect("every peer started")
}

/// `SKIFF_RTT_LOOP=<peer>:<calls>`: `calls` warm round trips of one peer of `rtt_local`
/// (`skiff`, `quinn` or `tcp`), each peer built as that row builds it, everything on one
/// current-thread runtime, then the time per call on stderr. Profilers run this loop twice
/// with different `calls` and read the difference: per call, with the start-up (certificates,
/// handshakes, the first calls) taken out (benches/README.md, "Twenty-sixth session").
fn rtt_local_loop(spec: &str) -> Result<(), String> {
    let (name, calls) = loop_spec(RTT_LOOP_VAR, spec)?;
    let (rt, local, peers) = one_thread_peers();
    let peer = peer_named(&peers, name);
    let p = payload();
    let elapsed = local.block_on(&rt, async {
        assert_eq!(
            peer.call(&p).await,
            p.as_ref(),
            "{name}: echo on one thread"
        );
        let start = Instant::now();
        Work::Call.run(peer, calls, &p).await;
        start.elapsed()
    });
    eprintln!(
        "{name}: {calls} calls, {:.2} µs per call",
        elapsed.as_secs_f64() * 1e6 / calls.max(1) as f64
    );
    Ok(())
}

/// `SKIFF_BULK_LOOP=<peer>:<transfers>`: `transfers` bulk transfers of one peer of
/// `bulk256m`, on the 2-worker runtime as that row runs them (256 MiB each with `--bench`
/// among the arguments, else 4 MiB), after the row's check; then the time per transfer on
/// stderr. For `perf sched`, `perf stat` and the like: where a transfer's cores wait
/// (benches/README.md, "Twenty-seventh session").
fn bulk_loop(spec: &str) -> Result<(), String> {
    let (name, transfers) = loop_spec(BULK_LOOP_VAR, spec)?;
    let rt = two_worker_runtime();
    let peers = rt.block_on(start_peers(None));
    let peer = peer_named(&peers, name).clone();
    let bulk = bulk_value();
    check(&rt, peer.as_ref(), &bulk);
    let elapsed = rt.block_on(async move {
        tokio::spawn(async move {
            let start = Instant::now();
            Work::Bulk(bulk).run(&peer, transfers, &payload()).await;
            start.elapsed()
        })
        .await
        .expect("bulk loop task")
    });
    eprintln!(
        "{name}: {transfers} transfers of {} bytes, {:.1} ms per transfer",
        bulk_bytes(),
        elapsed.as_secs_f64() * 1e3 / transfers.max(1) as f64
    );
    Ok(())
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1));
    targets = transport
}

fn main() {
    entry::run(
        &[(RTT_LOOP_VAR, rtt_local_loop), (BULK_LOOP_VAR, bulk_loop)],
        benches,
    );
}
