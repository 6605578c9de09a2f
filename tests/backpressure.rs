//! Backpressure reaches a real container. A task writes numbered lines
//! without pause (the `counter` applet) to a client that stops reading; the
//! task also keeps the count of lines it has written in a file, which the
//! test reads through the Engine API's archive download, outside the data
//! path. A real server with a small `max_buffered_output`, the Docker
//! executor, and a client that speaks the protocol by hand over a socket
//! with a small receive buffer, reading frame by frame so that it never
//! holds more than it has decoded.
//!
//! While the client reads nothing, the count stops; what the task wrote
//! minus what the client received stays under a bound made of the budget,
//! the kernel's TCP queues between server and client, and the fixed buffers
//! on the engine's side (itemised at [`ENGINE_AND_WRITER_SLACK`]). Once the
//! client reads again, the count moves on, and every line arrives, in order.

mod common;

use common::engine::{container_running, read_file, RemoveOnPanic};
use common::{task, Harness};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tcp_task::codec::{decode_body, encode_body};
use tcp_task::executor::ExecutorConfig;
use tcp_task::protocol::{
    ClientMessage, Hello, OutputStream, ServerMessage, DEFAULT_MAX_FRAME_LEN,
};
use tcp_task::{Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Each line is its number in 15 digits and `\n`.
const LINE: u64 = 16;
/// 16 MB of output: far more than every buffer on the way together.
const LINES: u64 = 1_000_000;
/// What `counter` writes at once (256 lines). A pipe write of at most
/// PIPE_BUF bytes is all or nothing, so a write blocked on a full pipe has
/// written nothing; the bound still allows one such batch.
const BATCH: u64 = 256 * LINE;
/// The server's `max_buffered_output`: output bytes that may wait for the
/// client in the server, per connection.
const BUDGET: u64 = 64 * 1024;
/// The client socket's receive buffer, as asked (Linux doubles it, for its
/// bookkeeping; the test reads back what the kernel granted).
const CLIENT_RCVBUF: u32 = 16 * 1024;
/// Where the task keeps its count.
const COUNT_FILE: &str = "/tmp/count";

/// Bytes that may sit between the task's `write` and the client's socket
/// besides the budget and the TCP queues:
/// - the task's stdout pipe (64 KiB), the runtime shim's copy buffer
///   (32 KiB), the FIFO to dockerd (64 KiB) and dockerd's copy buffer
///   (32 KiB): 192 KiB;
/// - dockerd's per-attach `BytesPipe` (moby `pkg/ioutils/bytespipe.go`): a
///   write blocks before it would add a buffer once 1e6 bytes are held
///   (`blockThreshold`), and the last buffer added holds at most 1e6
///   (`maxCap`), so under 2e6 bytes; then the 32 KiB copy out of it;
/// - the attach connection from dockerd to the server, a Unix socket whose
///   sender may queue `net.core.wmem_default` (208 KiB here) of buffers,
///   and one more write past it: 416 KiB allowed (224 KiB seen);
/// - in the server, the attach stream's read buffer and the engine frame
///   the relay holds while it waits for budget (≤ 40 KiB each), and the
///   connection writer's buffer, which a frame enters when its budget is
///   given back: flushed from 8 KiB on, so at most that plus one 64 KiB
///   chunk and its header.
///
/// About 2.85 MB at worst; the bound allows 3 MiB. (Seen: 1.2 to 1.45 MB,
/// 1 MB or so of it in dockerd's `BytesPipe`.)
const ENGINE_AND_WRITER_SLACK: u64 = 3 * 1024 * 1024;

/// A client that speaks the protocol by hand, reading exactly one frame
/// at a time, so that nothing is held in the test's memory undecoded.
struct Peer {
    stream: TcpStream,
    /// The receive buffer the kernel granted.
    rcvbuf: u64,
    /// Output payload bytes decoded so far.
    received: u64,
    check: LineCheck,
}

impl Peer {
    async fn connect(addr: SocketAddr) -> Peer {
        let socket = TcpSocket::new_v4().unwrap();
        // Before connecting, so that the window the client offers is small
        // from the start.
        socket.set_recv_buffer_size(CLIENT_RCVBUF).unwrap();
        let rcvbuf = u64::from(socket.recv_buffer_size().unwrap());
        let stream = socket.connect(addr).await.unwrap();
        let mut peer = Peer {
            stream,
            rcvbuf,
            received: 0,
            check: LineCheck::default(),
        };
        peer.send_body(&encode_body(&Hello::new("backpressure-test", None)).unwrap())
            .await;
        match peer.read().await {
            ServerMessage::Welcome(_) => {}
            other => panic!("expected Welcome, got {other:?}"),
        }
        peer
    }

    async fn send_body(&mut self, body: &[u8]) {
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        self.stream.write_all(&frame).await.unwrap();
    }

    async fn send(&mut self, message: &ClientMessage) {
        self.send_body(&encode_body(message).unwrap()).await;
    }

    /// The next frame, read exactly (length, then body).
    async fn read(&mut self) -> ServerMessage {
        let read = async {
            let mut length = [0u8; 4];
            self.stream.read_exact(&mut length).await?;
            let length = u32::from_be_bytes(length);
            assert!(length <= DEFAULT_MAX_FRAME_LEN, "a {length}-byte frame");
            let mut body = vec![0u8; length as usize];
            self.stream.read_exact(&mut body).await?;
            Ok::<_, std::io::Error>(body)
        };
        let body = tokio::time::timeout(Duration::from_secs(60), read)
            .await
            .expect("no frame from the server within 60 s")
            .expect("the server closed the connection");
        decode_body(&body).expect("a frame that decodes")
    }

    /// Reads task frames, checking the output, until more than `bytes` of
    /// output have been received or the task has ended; returns its
    /// terminal frame if it came.
    async fn read_output_until(&mut self, bytes: u64) -> Option<ServerMessage> {
        while self.received <= bytes {
            match self.read().await {
                ServerMessage::Output { stream, chunk, .. } => {
                    assert_eq!(stream, OutputStream::Stdout, "stderr: {chunk:?}");
                    self.check.feed(&chunk);
                    self.received += chunk.len() as u64;
                }
                ServerMessage::Accepted { .. } | ServerMessage::Progress { .. } => {}
                ServerMessage::Failed { error, .. } => panic!(
                    "the task could not run: {error:?} (if `counter` is not found, the \
                     examples image was rebuilt from a tools binary without it, e.g. by \
                     another checkout's tests; run again)"
                ),
                end @ ServerMessage::Exited { .. } => return Some(end),
                other => panic!("unexpected frame {other:?}"),
            }
        }
        None
    }
}

/// Checks that the output is exactly line 0, line 1, … in order.
#[derive(Default)]
struct LineCheck {
    offset: u64,
    line: Vec<u8>,
}

impl LineCheck {
    fn feed(&mut self, chunk: &[u8]) {
        for &byte in chunk {
            let number = self.offset / LINE;
            if self.offset.is_multiple_of(LINE) {
                self.line = format!("{number:015}\n").into_bytes();
            }
            let expected = self.line[(self.offset % LINE) as usize];
            assert_eq!(
                byte, expected,
                "byte {} (line {number}) is {byte:#04x}, not {expected:#04x}",
                self.offset
            );
            self.offset += 1;
        }
    }
}

/// The kernel's queues of the TCP connection between `server` (the
/// listening address) and the client socket at `client`, from
/// `/proc/net/tcp`: bytes the server wrote that the client's kernel has
/// not acknowledged, and bytes the client's kernel holds that the client
/// has not read.
fn tcp_queues(server: SocketAddr, client: SocketAddr) -> (u64, u64) {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let mut server_tx = None;
    let mut client_rx = None;
    for row in table.lines().skip(1) {
        let fields: Vec<&str> = row.split_whitespace().collect();
        let port = |field: &str| {
            let hex = field.rsplit_once(':').expect("address:port").1;
            u16::from_str_radix(hex, 16).expect("a port")
        };
        let (local, remote) = (port(fields[1]), port(fields[2]));
        let (tx, rx) = fields[4].split_once(':').expect("tx_queue:rx_queue");
        let (tx, rx) = (
            u64::from_str_radix(tx, 16).unwrap(),
            u64::from_str_radix(rx, 16).unwrap(),
        );
        if local == server.port() && remote == client.port() {
            server_tx = Some(tx);
        }
        if local == client.port() && remote == server.port() {
            client_rx = Some(rx);
        }
    }
    (
        server_tx.expect("the server's socket in /proc/net/tcp"),
        client_rx.expect("the client's socket in /proc/net/tcp"),
    )
}

/// The count the task keeps in its file.
async fn count(h: &Harness, container: &str) -> u64 {
    let bytes = read_file(&h.docker, container, COUNT_FILE)
        .await
        .unwrap_or_else(|e| {
            panic!("{e}; if the container is gone, the task ran to its end unread")
        });
    let text = String::from_utf8(bytes).expect("the count is text");
    text.trim().parse().expect("the count is a number")
}

/// Waits (up to 60 s) until two reads of the count, 1.5 s apart, are
/// equal (and past 0: the task has begun writing); returns it.
async fn stalled_count(h: &Harness, container: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut first = count(h, container).await;
    loop {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let second = count(h, container).await;
        if second == first && second > 0 {
            eprintln!("count stalled at {second} lines (read twice, 1.5 s apart)");
            return second;
        }
        assert!(
            Instant::now() < deadline,
            "the task's count never stopped while the client read nothing: {first}, then {second}"
        );
        first = second;
    }
}

/// Asserts that what the task wrote minus what the client received is
/// within the bound, and says how it was made up.
fn assert_bounded(stalled: u64, peer: &Peer, server: SocketAddr) {
    let client = peer.stream.local_addr().unwrap();
    let (server_tx, client_rx) = tcp_queues(server, client);
    assert!(
        client_rx <= peer.rcvbuf,
        "{client_rx} bytes queued for a {}-byte receive buffer",
        peer.rcvbuf
    );
    let produced = stalled * LINE + BATCH;
    let in_flight = produced - peer.received;
    let bound = BUDGET + server_tx + client_rx + ENGINE_AND_WRITER_SLACK;
    eprintln!(
        "produced <= {produced}, received {}: {in_flight} in flight; bound {bound} = budget {BUDGET} \
         + server TCP send queue {server_tx} + client TCP receive queue {client_rx} (receive buffer \
         {}) + engine and writer slack {ENGINE_AND_WRITER_SLACK}",
        peer.received, peer.rcvbuf
    );
    assert!(
        in_flight <= bound,
        "{in_flight} bytes between the task and the client, over the bound of {bound}: \
         something buffers without bound"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_stops_the_containers_writes() {
    let h = Harness::new(ExecutorConfig {
        output_limit_bytes: 2 * LINES * LINE,
        ..ExecutorConfig::default()
    })
    .await;
    let _cleanup = RemoveOnPanic::new(h.exec.instance_id());
    let config = ServerConfig {
        max_buffered_output: BUDGET as usize,
        ..ServerConfig::default()
    };
    let server = Server::new(config, h.exec.clone())
        .spawn("127.0.0.1:0")
        .await
        .unwrap();
    let addr = server.local_addr();
    let mut peer = Peer::connect(addr).await;
    let lines = LINES.to_string();
    let command = ["counter", &lines, COUNT_FILE];
    let spec = Box::new(task(command));
    peer.send(&ClientMessage::Submit {
        id: 1,
        spec,
        detach: false,
    })
    .await;

    // (1) The client reads nothing from here on: the task's count stops,
    // far short of its end.
    let container = container_running(&h.docker, h.exec.instance_id(), &command.join(" "))
        .await
        .id
        .expect("an id");
    let stalled = stalled_count(&h, &container).await;
    assert!(
        stalled < LINES,
        "the task wrote all {LINES} lines to a client that read none"
    );
    // (2) Only a bounded amount is anywhere in between.
    assert_bounded(stalled, &peer, addr);

    // (3) Reading again: more arrives than the task had written when it
    // stalled, so it moved on; stop again and see the count stopped later.
    let more = stalled * LINE + BATCH;
    assert!(peer.read_output_until(more).await.is_none(), "ended early");
    let resumed = stalled_count(&h, &container).await;
    assert!(resumed > stalled, "the count did not move: {resumed}");
    assert_bounded(resumed, &peer, addr);

    // And to the end: every line, in order, then a clean exit.
    let end = peer.read_output_until(u64::MAX).await;
    match end {
        Some(ServerMessage::Exited { outcome, .. }) => {
            assert!(outcome.success(), "{outcome:?}");
            assert!(!outcome.output_truncated);
        }
        other => panic!("expected the task to exit, got {other:?}"),
    }
    assert_eq!(peer.received, LINES * LINE, "every line arrived");

    drop(peer);
    // Before the shutdown, whose safety net would hide leftovers.
    h.assert_clean().await;
    server.shutdown().await;
}
