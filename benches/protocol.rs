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
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use futures::{StreamExt, TryStreamExt};
use std::future::Future;
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::{Mutex, Semaphore};
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

async fn tcp_task_round_trip(client: &Client, payload: &Bytes) {
    let (_, echoed) = client.ping_with(payload.clone()).await.unwrap();
    debug_assert_eq!(&echoed, payload);
    black_box(echoed);
}

async fn tcp_task_pipelined(client: &Client, payload: &Bytes, n: usize) {
    futures::stream::iter(0..n)
        .map(|_| client.ping_with(payload.clone()))
        .buffer_unordered(WINDOW)
        .try_for_each(|(_, echoed)| {
            black_box(echoed);
            futures::future::ready(Ok(()))
        })
        .await
        .unwrap();
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

async fn tarpc_round_trip(client: &EchoClient, payload: &Bytes) {
    let echoed = client
        .echo(tarpc::context::current(), payload.clone())
        .await
        .unwrap();
    debug_assert_eq!(&echoed, payload);
    black_box(echoed);
}

async fn tarpc_pipelined(client: &EchoClient, payload: &Bytes, n: usize) {
    futures::stream::iter(0..n)
        .map(|_| client.echo(tarpc::context::current(), payload.clone()))
        .buffer_unordered(WINDOW)
        .try_for_each(|echoed| {
            black_box(echoed);
            futures::future::ready(Ok(()))
        })
        .await
        .unwrap();
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
        tcp_task_round_trip(&tcp_task, &payload()).await;
        tarpc_round_trip(&tarpc, &payload()).await;
        Peers {
            raw,
            _server: server,
            tcp_task,
            tarpc,
        }
    })
}

fn rtt(c: &mut Criterion, rt: &Runtime, peers: &Peers) {
    let mut group = c.benchmark_group("rtt");
    group
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));

    group.bench_function("raw_tcp", |b| {
        b.iter_custom(|iters| {
            let raw = peers.raw.clone();
            timed_on(rt, iters, |iters| async move {
                let mut raw = raw.lock().await;
                let start = Instant::now();
                for _ in 0..iters {
                    raw.round_trip().await;
                }
                start.elapsed()
            })
        })
    });

    group.bench_function("tcp_task", |b| {
        b.iter_custom(|iters| {
            let client = peers.tcp_task.clone();
            timed_on(rt, iters, |iters| async move {
                let payload = payload();
                let start = Instant::now();
                for _ in 0..iters {
                    tcp_task_round_trip(&client, &payload).await;
                }
                start.elapsed()
            })
        })
    });

    group.bench_function("tarpc", |b| {
        b.iter_custom(|iters| {
            let client = peers.tarpc.clone();
            timed_on(rt, iters, |iters| async move {
                let payload = payload();
                let start = Instant::now();
                for _ in 0..iters {
                    tarpc_round_trip(&client, &payload).await;
                }
                start.elapsed()
            })
        })
    });
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

    group.bench_function("raw_tcp", |b| {
        b.iter_custom(|iters| {
            let raw = peers.raw.clone();
            timed_on(rt, iters, |iters| async move {
                let mut raw = raw.lock().await;
                let start = Instant::now();
                for _ in 0..iters {
                    raw.pipelined(PIPELINED_REQUESTS).await;
                }
                start.elapsed()
            })
        })
    });

    group.bench_function("tcp_task", |b| {
        b.iter_custom(|iters| {
            let client = peers.tcp_task.clone();
            timed_on(rt, iters, |iters| async move {
                let payload = payload();
                let start = Instant::now();
                for _ in 0..iters {
                    tcp_task_pipelined(&client, &payload, PIPELINED_REQUESTS).await;
                }
                start.elapsed()
            })
        })
    });

    group.bench_function("tarpc", |b| {
        b.iter_custom(|iters| {
            let client = peers.tarpc.clone();
            timed_on(rt, iters, |iters| async move {
                let payload = payload();
                let start = Instant::now();
                for _ in 0..iters {
                    tarpc_pipelined(&client, &payload, PIPELINED_REQUESTS).await;
                }
                start.elapsed()
            })
        })
    });
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
