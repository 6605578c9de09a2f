//! Protocol benchmarks: tcp-task against its floor (raw tokio TCP) and its
//! peer (tarpc), all in one process and one run so that the ratios hold on a
//! noisy machine.
//!
//! - `rtt/*`: one request, one answer, a 16-byte payload each way.
//! - `pipelined/*`: 10,000 small requests per iteration on one connection,
//!   at most 256 in flight.
//! - `codec/*`: the frame codec alone, no I/O.
//!
//! Every peer runs on one multi-thread tokio runtime with 2 workers, servers
//! and clients alike. The measured loops run *inside* that runtime (spawned,
//! timed with `iter_custom`), so the criterion thread only waits and the two
//! workers do all the work, as they would in a real program.
//!
//! The tcp-task server gets an executor that refuses every task: ping never
//! reaches an executor, and no container runs here.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode, Throughput,
};
use futures::{StreamExt, TryStreamExt};
use std::fmt::Debug;
use std::future::Future;
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::{Mutex, OwnedMutexGuard, Semaphore};
use tokio_util::codec::{Decoder, Encoder};

use tcp_task::codec::FrameCodec;
use tcp_task::executor::{Executor, ExecutorStats, Plan, TaskIo};
use tcp_task::protocol::{ErrorKind, Outcome, OutputStream, ServerMessage, TaskError};
use tcp_task::{Client, RunningServer, Server, ServerConfig};

/// Payload of every RTT and pipelined request, each way.
const PAYLOAD_LEN: usize = 16;
/// Requests per pipelined iteration.
const PIPELINED_REQUESTS: usize = 10_000;
/// Requests in flight at most, per connection, in the pipelined benchmarks.
const WINDOW: usize = 256;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Runs `iters` iterations of the measured loop on a runtime worker and
/// returns the time they took, measured there.
fn timed_on<F, Fut>(rt: &Runtime, iters: u64, body: F) -> Duration
where
    F: FnOnce(u64) -> Fut,
    Fut: Future<Output = Duration> + Send + 'static,
{
    let job = body(iters);
    rt.block_on(async { tokio::spawn(job).await.expect("the measured task panicked") })
}

fn payload() -> Bytes {
    Bytes::from(vec![0xA5; PAYLOAD_LEN])
}

/// What the measured loops need of every peer.
trait Peer: Send {
    /// One request, one answer.
    fn round_trip(&mut self) -> impl Future<Output = ()> + Send;
    /// `n` requests on one connection, at most `WINDOW` of them unanswered.
    fn pipelined(&mut self, n: usize) -> impl Future<Output = ()> + Send;
}

/// A peer behind a lock is used by one measurement at a time, which holds
/// the lock from before its clock starts until after it stops. (The
/// peer's own futures, not wrapped in another.)
impl<P: Peer> Peer for OwnedMutexGuard<P> {
    fn round_trip(&mut self) -> impl Future<Output = ()> + Send {
        (**self).round_trip()
    }

    fn pipelined(&mut self, n: usize) -> impl Future<Output = ()> + Send {
        (**self).pipelined(n)
    }
}

// ---------------------------------------------------------------------------
// The floor: raw tokio TCP, a 4-byte big-endian length and the payload.
// ---------------------------------------------------------------------------

/// Echoes every length-prefixed frame it receives, writing back all the
/// complete frames of one read with one write.
async fn raw_echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            socket.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let mut buf = BytesMut::with_capacity(64 * 1024);
                loop {
                    match socket.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    let complete = complete_frames(&buf);
                    if complete > 0 {
                        let frames = buf.split_to(complete);
                        if socket.write_all(&frames).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// The length of the longest prefix of `buf` made of whole frames.
fn complete_frames(buf: &[u8]) -> usize {
    let mut at = 0;
    while buf.len() - at >= 4 {
        let len = u32::from_be_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
        if buf.len() - at - 4 < len {
            break;
        }
        at += 4 + len;
    }
    at
}

struct RawConn {
    stream: TcpStream,
    frame: Vec<u8>,
    read_buf: BytesMut,
}

impl RawConn {
    async fn connect(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let mut frame = Vec::with_capacity(4 + PAYLOAD_LEN);
        frame.put_u32(PAYLOAD_LEN as u32);
        frame.extend_from_slice(&payload());
        RawConn {
            stream,
            frame,
            read_buf: BytesMut::with_capacity(64 * 1024),
        }
    }
}

impl Peer for RawConn {
    async fn round_trip(&mut self) {
        self.stream.write_all(&self.frame).await.unwrap();
        let mut answer = [0u8; 4 + PAYLOAD_LEN];
        self.stream.read_exact(&mut answer).await.unwrap();
        debug_assert_eq!(&answer[..], &self.frame[..]);
        black_box(&answer);
    }

    /// `n` requests with at most `WINDOW` unanswered: the writer sends as
    /// many as the window allows in one write, the reader reopens the window
    /// for every whole answer it reads.
    async fn pipelined(&mut self, n: usize) {
        let window = Semaphore::new(WINDOW);
        let (mut reader, mut writer) = self.stream.split();
        let frame = &self.frame;
        let read_buf = &mut self.read_buf;
        let send = async {
            let mut out = Vec::with_capacity(WINDOW * frame.len());
            let mut sent = 0;
            while sent < n {
                window.acquire().await.unwrap().forget();
                let more = window.available_permits().min(n - sent - 1);
                if more > 0 {
                    window.acquire_many(more as u32).await.unwrap().forget();
                }
                out.clear();
                for _ in 0..=more {
                    out.extend_from_slice(frame);
                }
                writer.write_all(&out).await.unwrap();
                sent += 1 + more;
            }
        };
        let receive = async {
            let mut received = 0;
            while received < n {
                let read = reader.read_buf(read_buf).await.unwrap();
                assert!(read > 0, "the raw echo server closed the connection");
                let complete = complete_frames(read_buf);
                let answers = complete / frame.len();
                read_buf.advance(complete);
                received += answers;
                window.add_permits(answers);
            }
        };
        tokio::join!(send, receive);
    }
}

// ---------------------------------------------------------------------------
// tcp-task: a real Server and Client, with an executor that runs nothing.
// ---------------------------------------------------------------------------

/// Refuses every task. The benchmarks measure ping/pong, which never reaches
/// an executor; this one exists because a server needs one.
struct RefuseAll;

impl Executor for RefuseAll {
    async fn run(&self, _plan: Plan, _io: TaskIo) -> Result<Outcome, TaskError> {
        Err(TaskError::new(
            ErrorKind::PolicyDenied,
            "this benchmark server runs no tasks",
        ))
    }

    async fn stats(&self) -> ExecutorStats {
        ExecutorStats::default()
    }
}

async fn tcp_task_pair() -> (RunningServer, Client) {
    let server = Server::new(ServerConfig::default(), RefuseAll)
        .spawn("127.0.0.1:0")
        .await
        .unwrap();
    let client = Client::connect(server.local_addr()).await.unwrap();
    (server, client)
}

/// An RPC client (tcp-task's or tarpc's) with the payload it sends.
struct Rpc<C> {
    client: C,
    payload: Bytes,
}

/// A clone of `client`, made ready to measure once awaited.
fn rpc<C: Clone + Send + 'static>(client: &C) -> impl Future<Output = Rpc<C>> + Send + 'static {
    let client = client.clone();
    async move {
        Rpc {
            client,
            payload: payload(),
        }
    }
}

/// How an RPC client pipelines: `n` calls, at most `WINDOW` in flight, each
/// answer taken as it comes.
async fn pipelined_calls<F, T, E>(n: usize, mut call: impl FnMut() -> F)
where
    F: Future<Output = Result<T, E>>,
    E: Debug,
{
    futures::stream::iter(0..n)
        .map(|_| call())
        .buffer_unordered(WINDOW)
        .try_for_each(|answer| {
            black_box(answer);
            futures::future::ready(Ok(()))
        })
        .await
        .unwrap();
}

impl Peer for Rpc<Client> {
    async fn round_trip(&mut self) {
        let (_, echoed) = self.client.ping_with(self.payload.clone()).await.unwrap();
        debug_assert_eq!(echoed, self.payload);
        black_box(echoed);
    }

    async fn pipelined(&mut self, n: usize) {
        pipelined_calls(n, || self.client.ping_with(self.payload.clone())).await
    }
}

// ---------------------------------------------------------------------------
// The peer: a tarpc echo service over TCP, with tarpc's bincode serde
// transport. TCP_NODELAY on both ends, as tcp-task and the raw floor have it
// (tarpc's own `tcp::connect`/`listen` leave Nagle on, which would only add
// delayed-ACK stalls to its RTT).
// ---------------------------------------------------------------------------

#[tarpc::service]
trait Echo {
    async fn echo(payload: Bytes) -> Bytes;
}

#[derive(Clone)]
struct EchoServer;

impl Echo for EchoServer {
    async fn echo(self, _: tarpc::context::Context, payload: Bytes) -> Bytes {
        payload
    }
}

async fn tarpc_pair() -> EchoClient {
    use tarpc::serde_transport;
    use tarpc::server::{BaseChannel, Channel};
    use tarpc::tokio_serde::formats::Bincode;
    use tarpc::tokio_util::codec::length_delimited::LengthDelimitedCodec;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            socket.set_nodelay(true).unwrap();
            let framed = LengthDelimitedCodec::builder().new_framed(socket);
            let transport = serde_transport::new(framed, Bincode::default());
            // tarpc's documented way to serve: each request's response future
            // on its own task, so requests of one channel run concurrently.
            let channel = BaseChannel::with_defaults(transport)
                .execute(EchoServer.serve())
                .for_each(|response| async move {
                    tokio::spawn(response);
                });
            tokio::spawn(channel);
        }
    });
    let socket = TcpStream::connect(addr).await.unwrap();
    socket.set_nodelay(true).unwrap();
    let framed = LengthDelimitedCodec::builder().new_framed(socket);
    let transport = serde_transport::new(framed, Bincode::default());
    EchoClient::new(tarpc::client::Config::default(), transport).spawn()
}

impl Peer for Rpc<EchoClient> {
    async fn round_trip(&mut self) {
        let echoed = self
            .client
            .echo(tarpc::context::current(), self.payload.clone())
            .await
            .unwrap();
        debug_assert_eq!(echoed, self.payload);
        black_box(echoed);
    }

    async fn pipelined(&mut self, n: usize) {
        pipelined_calls(n, || {
            self.client
                .echo(tarpc::context::current(), self.payload.clone())
        })
        .await
    }
}

// ---------------------------------------------------------------------------
// The benchmarks.
// ---------------------------------------------------------------------------

struct Peers {
    raw: Arc<Mutex<RawConn>>,
    _server: RunningServer,
    tcp_task: Client,
    tarpc: EchoClient,
}

fn peers(rt: &Runtime) -> Peers {
    rt.block_on(async {
        let raw_addr = raw_echo_server().await;
        let raw = Arc::new(Mutex::new(RawConn::connect(raw_addr).await));
        let (server, tcp_task) = tcp_task_pair().await;
        let tarpc = tarpc_pair().await;
        // One exchange each, so every connection is up before measuring.
        raw.lock().await.round_trip().await;
        rpc(&tcp_task).await.round_trip().await;
        rpc(&tarpc).await.round_trip().await;
        Peers {
            raw,
            _server: server,
            tcp_task,
            tarpc,
        }
    })
}

/// The exchange a benchmark group repeats.
#[derive(Clone, Copy)]
enum Exchange {
    RoundTrip,
    Pipelined(usize),
}

/// The measured loop every peer shares. For each sample, on a runtime
/// worker: `open` yields the peer (untimed: for raw TCP this waits for the
/// connection's lock), then `iters` exchanges in a row are timed.
fn bench_peer<P, F>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    name: &str,
    exchange: Exchange,
    open: impl Fn() -> F,
) where
    P: Peer + 'static,
    F: Future<Output = P> + Send + 'static,
{
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let opening = open();
            timed_on(rt, iters, |iters| async move {
                let mut peer = opening.await;
                let start = Instant::now();
                match exchange {
                    Exchange::RoundTrip => {
                        for _ in 0..iters {
                            peer.round_trip().await;
                        }
                    }
                    Exchange::Pipelined(n) => {
                        for _ in 0..iters {
                            peer.pipelined(n).await;
                        }
                    }
                }
                start.elapsed()
            })
        })
    });
}

/// `exchange` against each peer in turn, the floor first.
fn bench_peers(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    peers: &Peers,
    exchange: Exchange,
) {
    bench_peer(group, rt, "raw_tcp", exchange, || {
        peers.raw.clone().lock_owned()
    });
    bench_peer(group, rt, "tcp_task", exchange, || rpc(&peers.tcp_task));
    bench_peer(group, rt, "tarpc", exchange, || rpc(&peers.tarpc));
}

fn rtt(c: &mut Criterion, rt: &Runtime, peers: &Peers) {
    let mut group = c.benchmark_group("rtt");
    group
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    bench_peers(&mut group, rt, peers, Exchange::RoundTrip);
    group.finish();
}

fn pipelined(c: &mut Criterion, rt: &Runtime, peers: &Peers) {
    let mut group = c.benchmark_group("pipelined");
    group
        .throughput(Throughput::Elements(PIPELINED_REQUESTS as u64))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    bench_peers(
        &mut group,
        rt,
        peers,
        Exchange::Pipelined(PIPELINED_REQUESTS),
    );
    group.finish();
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    let small = ServerMessage::Output {
        id: 42,
        stream: OutputStream::Stdout,
        chunk: Bytes::from(vec![0x5A; 16]),
    };
    let mut codec = FrameCodec::<ServerMessage>::default();
    let mut small_frame = BytesMut::new();
    codec.encode(small.clone(), &mut small_frame).unwrap();

    group.throughput(Throughput::Elements(1));
    group.bench_function("encode_small", |b| {
        let mut dst = BytesMut::with_capacity(1024);
        b.iter(|| {
            dst.clear();
            codec.encode(black_box(small.clone()), &mut dst).unwrap();
            black_box(&dst);
        })
    });

    group.bench_function("decode_small", |b| {
        let mut src = BytesMut::with_capacity(1024);
        b.iter(|| {
            src.extend_from_slice(black_box(&small_frame));
            let message = codec.decode(&mut src).unwrap().unwrap();
            black_box(message);
        })
    });

    const BIG: usize = 64 * 1024;
    let big = ServerMessage::Output {
        id: 42,
        stream: OutputStream::Stdout,
        chunk: Bytes::from(vec![0x5A; BIG]),
    };
    group.throughput(Throughput::Bytes(BIG as u64));
    group.bench_function("roundtrip_64k", |b| {
        let mut buf = BytesMut::with_capacity(2 * BIG);
        b.iter(|| {
            codec.encode(black_box(big.clone()), &mut buf).unwrap();
            let message = codec.decode(&mut buf).unwrap().unwrap();
            black_box(message);
        })
    });
    group.finish();
}

fn protocol(c: &mut Criterion) {
    let rt = runtime();
    let peers = peers(&rt);
    rtt(c, &rt, &peers);
    pipelined(c, &rt, &peers);
    codec(c);
    let Peers {
        raw,
        _server: server,
        tcp_task,
        tarpc,
    } = peers;
    drop((raw, tcp_task, tarpc));
    rt.block_on(server.shutdown());
}

criterion_group!(benches, protocol);
criterion_main!(benches);
