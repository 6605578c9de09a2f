//! Property tests of the frame codec.
//!
//! - Every message, of every variant and with arbitrary field values,
//!   round-trips through `FrameCodec`: alone, and in a stream of frames cut
//!   into pieces at arbitrary points, as TCP may deliver them.
//! - Whatever bytes arrive, the decoder never panics, and what it does
//!   answer is consistent: `Ok(None)` consumes nothing, `Ok(Some)` consumes
//!   exactly one whole frame, a declared length over the maximum is refused
//!   before anything else, and a malformed body consumes its frame.
//!
//! Besides the proptest properties, `mutated_frames_never_panic_the_decoders`
//! feeds each decoder (client frames as the server decodes them, server
//! frames as the client does, the hello) seeded, mutated real frames
//! (flipped bits, inserted and deleted bytes, bincode's varint markers,
//! truncation, fixed-up length prefixes), which reach deeper into the body
//! decoder than uniform noise: 20,000 each by default, 1,000,000 each with
//! TCP_TASK_FUZZ_INPUTS=1000000 (docs/RELIABILITY.md).

mod fuzz;

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;
use tokio_util::codec::{Decoder, Encoder};

use tcp_task::codec::{CodecError, FrameCodec};
use tcp_task::protocol::{
    CatalogEntryInfo, ClientMessage, Ending, EngineStatus, ErrorKind, Hello, Limits, NodeStatus,
    Offsets, Outcome, OutputStream, PoolStatus, ProgressEvent, RegistryAuth, ServerMessage,
    ServerStatus, Task, TaskError, TaskId, TaskInfo, TaskSpec, TaskState, Usage, Welcome,
    DEFAULT_MAX_FRAME_LEN, MAGIC, MAX_CHUNK_LEN, PROTOCOL_VERSION,
};

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------

/// Integers around bincode's varint boundaries (250/251, 2^16, 2^32) as well
/// as anywhere.
fn varint() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        0..251u64,
        prop::sample::select(vec![
            250u64,
            251,
            252,
            255,
            256,
            65_535,
            65_536,
            u32::MAX as u64,
            u32::MAX as u64 + 1,
            u64::MAX
        ]),
        any::<u64>(),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z0-9:/._-]{1,24}",
        prop::collection::vec(any::<char>(), 0..24).prop_map(String::from_iter),
    ]
}

fn opt<T: Debug + Clone>(s: impl Strategy<Value = T>) -> impl Strategy<Value = Option<T>> {
    prop::option::of(s)
}

fn chunk() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        Just(Bytes::new()),
        prop::collection::vec(any::<u8>(), 1..64).prop_map(Bytes::from),
        // Sometimes a chunk of the largest size, so that a frame needs a
        // multi-byte length in its body.
        (any::<u8>(), 64..=MAX_CHUNK_LEN)
            .prop_map(|(b, n)| Bytes::from(vec![b; n]))
            .no_shrink(),
    ]
}

fn pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec((text(), text()), 0..4)
}

fn request_id() -> impl Strategy<Value = u64> {
    varint()
}

fn task() -> impl Strategy<Value = Task> {
    prop_oneof![
        (text(), prop::collection::vec(text(), 0..4))
            .prop_map(|(image, command)| Task::Image { image, command }),
        (text(), prop::collection::vec(text(), 0..4), opt(text()))
            .prop_map(|(name, args, params)| Task::Named { name, args, params }),
        (
            text(),
            any::<u16>(),
            text(),
            opt(text()),
            prop::collection::vec(text(), 0..4)
        )
            .prop_map(|(image, port, task, params, command)| Task::Http {
                image,
                port,
                task,
                params,
                command
            }),
    ]
}

fn registry_auth() -> impl Strategy<Value = RegistryAuth> {
    (text(), text(), opt(text())).prop_map(|(username, password, server)| RegistryAuth {
        username,
        password,
        server,
    })
}

fn task_spec() -> impl Strategy<Value = TaskSpec> {
    let first = (
        task(),
        pairs(),
        opt(text()),
        opt(text()),
        any::<bool>(),
        opt(varint()),
        opt(varint()),
    );
    let second = (
        opt(any::<i64>()),
        opt(text()),
        any::<bool>(),
        opt(varint()),
        pairs(),
        opt(registry_auth()),
    );
    (first, second).prop_map(
        |(
            (task, env, workdir, user, stdin, memory_bytes, nano_cpus),
            (pids_limit, network, read_only_root, timeout_ms, labels, registry_auth),
        )| TaskSpec {
            task,
            env,
            workdir,
            user,
            stdin,
            memory_bytes,
            nano_cpus,
            pids_limit,
            network,
            read_only_root,
            timeout_ms,
            labels,
            registry_auth,
        },
    )
}

fn output_stream() -> impl Strategy<Value = OutputStream> {
    prop_oneof![Just(OutputStream::Stdout), Just(OutputStream::Stderr)]
}

fn progress_event() -> impl Strategy<Value = ProgressEvent> {
    prop_oneof![
        any::<u32>().prop_map(|position| ProgressEvent::Queued { position }),
        (text(), text(), opt(varint()), opt(varint())).prop_map(
            |(layer, status, current, total)| ProgressEvent::Pulling {
                layer,
                status,
                current,
                total
            }
        ),
        text().prop_map(|container| ProgressEvent::Created { container }),
        Just(ProgressEvent::Started),
        any::<u32>().prop_map(|attempts| ProgressEvent::Resumed { attempts }),
        (text(), opt(text())).prop_map(|(state, node)| ProgressEvent::Scheduling { state, node }),
    ]
}

fn task_id() -> impl Strategy<Value = TaskId> {
    any::<u128>().prop_map(TaskId::from_random)
}

fn offsets() -> impl Strategy<Value = Offsets> {
    (varint(), varint()).prop_map(|(stdout, stderr)| Offsets { stdout, stderr })
}

fn task_state() -> impl Strategy<Value = TaskState> {
    prop_oneof![
        Just(TaskState::Running),
        outcome().prop_map(TaskState::Ended),
        task_error().prop_map(TaskState::Failed),
    ]
}

fn task_info() -> impl Strategy<Value = TaskInfo> {
    (
        task_id(),
        text(),
        prop::collection::vec(text(), 0..3),
        any::<bool>(),
        varint(),
        task_state(),
        varint(),
    )
        .prop_map(
            |(id, image, command, detached, created_ms, state, output_bytes)| TaskInfo {
                id,
                image,
                command,
                detached,
                created_ms,
                state,
                output_bytes,
            },
        )
}

/// Every `Ending`; the match makes a new variant a compile error here until
/// the list includes it.
fn ending() -> impl Strategy<Value = Ending> {
    const ALL: [Ending; 6] = [
        Ending::Exited,
        Ending::Signaled,
        Ending::TimedOut,
        Ending::OomKilled,
        Ending::Cancelled,
        Ending::OutputLimit,
    ];
    fn _every_variant_is_listed(e: Ending) {
        match e {
            Ending::Exited
            | Ending::Signaled
            | Ending::TimedOut
            | Ending::OomKilled
            | Ending::Cancelled
            | Ending::OutputLimit => {}
        }
    }
    prop::sample::select(ALL.to_vec())
}

fn usage() -> impl Strategy<Value = Usage> {
    (varint(), varint(), varint()).prop_map(|(cpu_user_us, cpu_system_us, peak_memory_bytes)| {
        Usage {
            cpu_user_us,
            cpu_system_us,
            peak_memory_bytes,
        }
    })
}

fn outcome() -> impl Strategy<Value = Outcome> {
    (
        ending(),
        opt(any::<i32>()),
        opt(any::<i32>()),
        varint(),
        any::<bool>(),
        opt(usage()),
    )
        .prop_map(
            |(ending, exit_code, signal, duration_ms, output_truncated, usage)| Outcome {
                ending,
                exit_code,
                signal,
                duration_ms,
                output_truncated,
                usage,
            },
        )
}

/// Every `ErrorKind`, kept complete by the same exhaustive match.
fn error_kind() -> impl Strategy<Value = ErrorKind> {
    use ErrorKind::*;
    const ALL: [ErrorKind; 25] = [
        BadRequest,
        PolicyDenied,
        Busy,
        DuplicateId,
        UnknownRequest,
        UnknownTask,
        ImageNotFound,
        RegistryAuth,
        CommandNotFound,
        CommandNotInvokable,
        Engine,
        ShuttingDown,
        Unauthorized,
        Protocol,
        FrameTooLarge,
        VersionMismatch,
        Timeout,
        Internal,
        NotListening,
        TaskExited,
        TaskFailed,
        NoSuchTask,
        Detached,
        Unsupported,
        Unschedulable,
    ];
    fn _every_variant_is_listed(k: ErrorKind) {
        match k {
            BadRequest | PolicyDenied | Busy | DuplicateId | UnknownRequest | UnknownTask
            | ImageNotFound | RegistryAuth | CommandNotFound | CommandNotInvokable | Engine
            | ShuttingDown | Unauthorized | Protocol | FrameTooLarge | VersionMismatch
            | Timeout | Internal | NotListening | TaskExited | TaskFailed | NoSuchTask
            | Detached | Unsupported | Unschedulable => {}
        }
    }
    prop::sample::select(ALL.to_vec())
}

fn task_error() -> impl Strategy<Value = TaskError> {
    (error_kind(), text()).prop_map(|(kind, message)| TaskError { kind, message })
}

fn engine_status() -> impl Strategy<Value = EngineStatus> {
    (any::<bool>(), opt(text()), opt(text()), opt(text())).prop_map(
        |(reachable, version, api_version, error)| EngineStatus {
            reachable,
            version,
            api_version,
            error,
        },
    )
}

fn pool_status() -> impl Strategy<Value = PoolStatus> {
    (text(), varint(), varint(), varint(), varint()).prop_map(
        |(key, warm, in_use, hits, misses)| PoolStatus {
            key,
            warm,
            in_use,
            hits,
            misses,
        },
    )
}

fn server_status() -> impl Strategy<Value = ServerStatus> {
    let counts = (varint(), varint(), varint(), varint(), varint());
    (
        (text(), any::<u16>(), varint()),
        counts,
        engine_status(),
        varint(),
        prop::collection::vec(pool_status(), 0..3),
        (varint(), varint()),
        prop::collection::vec(node_status(), 0..3),
    )
        .prop_map(
            |(
                (server, protocol_version, uptime_ms),
                (connections, running, queued, finished, failed),
                engine,
                catalog_size,
                pools,
                (retained, retained_bytes),
                nodes,
            )| ServerStatus {
                server,
                protocol_version,
                uptime_ms,
                connections,
                running,
                queued,
                finished,
                failed,
                engine,
                catalog_size,
                pools,
                retained,
                retained_bytes,
                nodes,
            },
        )
}

fn node_status() -> impl Strategy<Value = NodeStatus> {
    (
        (text(), text(), text()),
        any::<bool>(),
        (varint(), varint(), varint()),
    )
        .prop_map(
            |((name, state, availability), manager, (nano_cpus, memory_bytes, tasks))| NodeStatus {
                name,
                state,
                availability,
                manager,
                nano_cpus,
                memory_bytes,
                tasks,
            },
        )
}

fn catalog_entry() -> impl Strategy<Value = CatalogEntryInfo> {
    (
        text(),
        text(),
        text(),
        prop::collection::vec(text(), 0..4),
        opt(varint()),
        opt(varint()),
        opt(varint()),
    )
        .prop_map(
            |(name, description, image, command, memory_bytes, nano_cpus, timeout_ms)| {
                CatalogEntryInfo {
                    name,
                    description,
                    image,
                    command,
                    memory_bytes,
                    nano_cpus,
                    timeout_ms,
                }
            },
        )
}

fn limits() -> impl Strategy<Value = Limits> {
    (any::<u32>(), any::<u32>(), any::<u32>(), varint()).prop_map(
        |(max_frame_len, max_chunk_len, max_tasks_per_connection, idle_timeout_ms)| Limits {
            max_frame_len,
            max_chunk_len,
            max_tasks_per_connection,
            idle_timeout_ms,
        },
    )
}

fn welcome() -> impl Strategy<Value = Welcome> {
    (any::<u16>(), text(), limits()).prop_map(|(version, server, limits)| Welcome {
        version,
        server,
        limits,
    })
}

fn hello() -> impl Strategy<Value = Hello> {
    prop_oneof![
        (text(), opt(text())).prop_map(|(client, token)| Hello::new(client, token)),
        (any::<[u8; 4]>(), any::<u16>(), text(), opt(text())).prop_map(
            |(magic, version, client, token)| Hello {
                magic,
                version,
                client,
                token
            }
        ),
    ]
}

fn client_message() -> impl Strategy<Value = ClientMessage> {
    prop_oneof![
        (request_id(), task_spec(), any::<bool>()).prop_map(|(id, spec, detach)| {
            ClientMessage::Submit {
                id,
                spec: Box::new(spec),
                detach,
            }
        }),
        (request_id(), chunk()).prop_map(|(id, chunk)| ClientMessage::Stdin { id, chunk }),
        request_id().prop_map(|id| ClientMessage::StdinClose { id }),
        request_id().prop_map(|id| ClientMessage::Cancel { id }),
        (request_id(), chunk()).prop_map(|(id, payload)| ClientMessage::Ping { id, payload }),
        request_id().prop_map(|id| ClientMessage::Status { id }),
        request_id().prop_map(|id| ClientMessage::ListCatalog { id }),
        (request_id(), task_id(), offsets(), any::<bool>()).prop_map(|(id, task, from, follow)| {
            ClientMessage::Attach {
                id,
                task,
                from,
                follow,
            }
        }),
        (request_id(), task_id()).prop_map(|(id, task)| ClientMessage::Wait { id, task }),
        (request_id(), task_id(), any::<i32>())
            .prop_map(|(id, task, signal)| ClientMessage::Kill { id, task, signal }),
        (request_id(), task_id(), any::<bool>())
            .prop_map(|(id, task, force)| ClientMessage::Remove { id, task, force }),
        (request_id(), any::<bool>()).prop_map(|(id, all)| ClientMessage::List { id, all }),
    ]
}

/// Which variant a client message is; exhaustive, so that a new variant must
/// be added to the strategy above and to the coverage test.
fn client_variant(message: &ClientMessage) -> usize {
    match message {
        ClientMessage::Submit { .. } => 0,
        ClientMessage::Stdin { .. } => 1,
        ClientMessage::StdinClose { .. } => 2,
        ClientMessage::Cancel { .. } => 3,
        ClientMessage::Ping { .. } => 4,
        ClientMessage::Status { .. } => 5,
        ClientMessage::ListCatalog { .. } => 6,
        ClientMessage::Attach { .. } => 7,
        ClientMessage::Wait { .. } => 8,
        ClientMessage::Kill { .. } => 9,
        ClientMessage::Remove { .. } => 10,
        ClientMessage::List { .. } => 11,
    }
}
const CLIENT_VARIANTS: usize = 12;

fn server_message() -> impl Strategy<Value = ServerMessage> {
    prop_oneof![
        welcome().prop_map(ServerMessage::Welcome),
        (request_id(), task_id()).prop_map(|(id, task)| ServerMessage::Accepted { id, task }),
        (request_id(), progress_event())
            .prop_map(|(id, event)| ServerMessage::Progress { id, event }),
        (request_id(), output_stream(), chunk())
            .prop_map(|(id, stream, chunk)| ServerMessage::Output { id, stream, chunk }),
        (request_id(), outcome()).prop_map(|(id, outcome)| ServerMessage::Exited { id, outcome }),
        (request_id(), task_error()).prop_map(|(id, error)| ServerMessage::Failed { id, error }),
        (request_id(), chunk()).prop_map(|(id, payload)| ServerMessage::Pong { id, payload }),
        (request_id(), server_status()).prop_map(|(id, status)| ServerMessage::StatusReply {
            id,
            status: Box::new(status),
        }),
        (request_id(), prop::collection::vec(catalog_entry(), 0..3))
            .prop_map(|(id, entries)| ServerMessage::CatalogReply { id, entries }),
        (opt(request_id()), task_error())
            .prop_map(|(id, error)| ServerMessage::Error { id, error }),
        request_id().prop_map(|id| ServerMessage::Done { id }),
        (request_id(), prop::collection::vec(task_info(), 0..3))
            .prop_map(|(id, tasks)| ServerMessage::TaskList { id, tasks }),
        (request_id(), any::<u32>())
            .prop_map(|(id, bytes)| ServerMessage::StdinCredit { id, bytes }),
    ]
}

fn server_variant(message: &ServerMessage) -> usize {
    match message {
        ServerMessage::Welcome(_) => 0,
        ServerMessage::Accepted { .. } => 1,
        ServerMessage::Progress { .. } => 2,
        ServerMessage::Output { .. } => 3,
        ServerMessage::Exited { .. } => 4,
        ServerMessage::Failed { .. } => 5,
        ServerMessage::Pong { .. } => 6,
        ServerMessage::StatusReply { .. } => 7,
        ServerMessage::CatalogReply { .. } => 8,
        ServerMessage::Error { .. } => 9,
        ServerMessage::Done { .. } => 10,
        ServerMessage::TaskList { .. } => 11,
        ServerMessage::StdinCredit { .. } => 12,
    }
}
const SERVER_VARIANTS: usize = 13;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn encode<M: Serialize + Clone, D>(codec: &mut FrameCodec<D>, message: &M) -> BytesMut {
    let mut buf = BytesMut::new();
    codec.encode(message.clone(), &mut buf).expect("encodes");
    buf
}

fn declared_len(buf: &[u8]) -> Option<usize> {
    buf.get(..4)
        .map(|p| u32::from_be_bytes(p.try_into().unwrap()) as usize)
}

/// Decodes one message from a buffer holding one frame.
fn decode_one<D: DeserializeOwned>(max: u32, body_frame: &[u8]) -> Result<Option<D>, CodecError> {
    let mut codec = FrameCodec::<D>::new(max);
    let mut buf = BytesMut::from(body_frame);
    codec.decode(&mut buf)
}

#[derive(Default, Debug)]
struct Tally {
    decoded: usize,
    incomplete: usize,
    too_large: usize,
    malformed: usize,
}

/// Feeds `buf` to a decoder until it needs more bytes or fails, checking
/// after every call that the decoder did what its contract says. Panics (so
/// fails the test) on any breach; a panic inside `decode` fails it too.
fn drain<D>(max: u32, buf: &mut BytesMut, tally: &mut Tally)
where
    D: DeserializeOwned + Serialize + Clone + PartialEq + Debug,
{
    let mut codec = FrameCodec::<D>::new(max);
    loop {
        let before = buf.clone();
        let declared = declared_len(&before);
        match codec.decode(buf) {
            Ok(Some(message)) => {
                tally.decoded += 1;
                let declared = declared.expect("a frame has a length prefix");
                assert!(declared <= max as usize, "decoded a frame over the maximum");
                assert_eq!(
                    before.len() - buf.len(),
                    4 + declared,
                    "a decoded frame consumes exactly its prefix and body"
                );
                assert_eq!(&buf[..], &before[4 + declared..], "the rest is untouched");
                // Whatever was decoded is a valid message: it re-encodes, and
                // the re-encoding decodes to the same value.
                let again = encode(&mut FrameCodec::<D>::new(u32::MAX), &message);
                let round = decode_one::<D>(u32::MAX, &again)
                    .expect("a decoded message re-encodes to a valid frame")
                    .expect("a whole frame");
                assert_eq!(round, message);
            }
            Ok(None) => {
                tally.incomplete += 1;
                assert_eq!(&buf[..], &before[..], "Ok(None) consumes nothing");
                if let Some(declared) = declared {
                    assert!(declared <= max as usize);
                    assert!(
                        before.len() < 4 + declared,
                        "a whole frame was left undecoded"
                    );
                }
                return;
            }
            Err(CodecError::FrameTooLarge { len, max: limit }) => {
                tally.too_large += 1;
                assert_eq!(Some(len), declared);
                assert_eq!(limit, max as usize);
                assert!(len > limit);
                return;
            }
            Err(CodecError::Malformed(_)) => {
                tally.malformed += 1;
                let declared = declared.expect("a malformed frame had a length prefix");
                assert!(declared <= max as usize);
                assert_eq!(
                    before.len() - buf.len(),
                    4 + declared,
                    "a malformed frame is consumed whole"
                );
                return;
            }
            Err(CodecError::Io(e)) => panic!("the decoder reported I/O on a buffer: {e}"),
        }
    }
}

/// Encodes `messages` into one stream, delivers it in pieces cut at `cuts`
/// (positions, any order, may repeat), decoding after every piece, and
/// checks that exactly `messages` come out, in order, each only once whole.
fn split_roundtrip<M>(messages: &[M], cuts: &[usize]) -> Result<(), TestCaseError>
where
    M: Serialize + DeserializeOwned + Clone + PartialEq + Debug,
{
    let mut codec = FrameCodec::<M>::default();
    let mut stream = BytesMut::new();
    let mut ends = Vec::new();
    for message in messages {
        codec.encode(message.clone(), &mut stream).unwrap();
        ends.push(stream.len());
    }
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    cuts.push(stream.len());
    cuts.sort_unstable();

    let mut buf = BytesMut::new();
    let mut decoded = Vec::new();
    let mut fed = 0;
    for cut in cuts {
        buf.extend_from_slice(&stream[fed..cut]);
        fed = cut;
        while let Some(message) = codec
            .decode(&mut buf)
            .map_err(|e| TestCaseError::fail(format!("valid stream failed to decode: {e}")))?
        {
            // A message comes out only once all its bytes have arrived.
            prop_assert!(ends[decoded.len()] <= fed);
            decoded.push(message);
        }
    }
    prop_assert_eq!(&decoded[..], messages);
    prop_assert!(buf.is_empty());
    Ok(())
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(Config { cases: 2_000, ..Config::default() })]

    #[test]
    fn client_messages_round_trip(message in client_message()) {
        let mut codec = FrameCodec::<ClientMessage>::default();
        let mut buf = encode(&mut codec, &message);
        prop_assert_eq!(declared_len(&buf), Some(buf.len() - 4));
        prop_assert_eq!(codec.decode(&mut buf).unwrap(), Some(message));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn server_messages_round_trip(message in server_message()) {
        let mut codec = FrameCodec::<ServerMessage>::default();
        let mut buf = encode(&mut codec, &message);
        prop_assert_eq!(declared_len(&buf), Some(buf.len() - 4));
        prop_assert_eq!(codec.decode(&mut buf).unwrap(), Some(message));
        prop_assert!(buf.is_empty());
    }

    /// The hello round-trips, and its body starts with the magic bytes as
    /// they are, then the version: what a server of any version reads first.
    #[test]
    fn hello_round_trips_with_magic_first(hello in hello()) {
        let mut codec = FrameCodec::<Hello>::default();
        let mut buf = encode(&mut codec, &hello);
        prop_assert_eq!(&buf[4..8], &hello.magic[..]);
        prop_assert_eq!(bincode_u16_prefix(&buf[8..]), hello.version);
        prop_assert_eq!(codec.decode(&mut buf).unwrap(), Some(hello));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn client_streams_split_anywhere_decode_in_order(
        messages in prop::collection::vec(client_message(), 1..6),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        split_roundtrip(&messages, &cuts)?;
    }

    #[test]
    fn server_streams_split_anywhere_decode_in_order(
        messages in prop::collection::vec(server_message(), 1..6),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        split_roundtrip(&messages, &cuts)?;
    }
}

proptest! {
    #![proptest_config(Config { cases: 20_000, ..Config::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        max in prop_oneof![Just(DEFAULT_MAX_FRAME_LEN), 0..64u32],
    ) {
        let mut tally = Tally::default();
        drain::<ClientMessage>(max, &mut BytesMut::from(&bytes[..]), &mut tally);
        drain::<ServerMessage>(max, &mut BytesMut::from(&bytes[..]), &mut tally);
        drain::<Hello>(max, &mut BytesMut::from(&bytes[..]), &mut tally);
    }

    /// A valid length prefix (at most the bytes that follow, so the body is
    /// whole and reaches the body decoder), then garbage; several such
    /// frames in a row.
    #[test]
    fn valid_prefixes_with_garbage_bodies_never_panic_the_decoder(
        frames in prop::collection::vec(
            (prop::collection::vec(any::<u8>(), 0..96), any::<u32>()),
            1..4,
        ),
    ) {
        let mut stream = BytesMut::new();
        for (garbage, take) in &frames {
            let len = if garbage.is_empty() { 0 } else { *take as usize % (garbage.len() + 1) };
            stream.put_u32(len as u32);
            stream.extend_from_slice(&garbage[..len]);
        }
        let mut tally = Tally::default();
        drain::<ClientMessage>(DEFAULT_MAX_FRAME_LEN, &mut stream.clone(), &mut tally);
        drain::<ServerMessage>(DEFAULT_MAX_FRAME_LEN, &mut stream.clone(), &mut tally);
        drain::<Hello>(DEFAULT_MAX_FRAME_LEN, &mut stream, &mut tally);
        // Every body is whole and small: none is too large, and `drain`
        // checks that none is left waiting for bytes.
        prop_assert_eq!(tally.too_large, 0);
    }
}

/// Reads the u16 at the start of `bytes` as bincode 2's standard
/// configuration writes it (varint: one byte below 251, else 251 and two
/// little-endian bytes). Written out here so the check does not go through
/// the codec it checks.
fn bincode_u16_prefix(bytes: &[u8]) -> u16 {
    match bytes[0] {
        b @ 0..=250 => b as u16,
        251 => u16::from_le_bytes([bytes[1], bytes[2]]),
        other => panic!("not a u16 varint: first byte {other}"),
    }
}

/// The strategies reach every variant of both message enums (so no variant
/// escapes the properties above).
#[test]
fn strategies_cover_every_variant() {
    let mut runner = TestRunner::deterministic();
    let mut client_seen = [false; CLIENT_VARIANTS];
    let mut server_seen = [false; SERVER_VARIANTS];
    let client = client_message();
    let server = server_message();
    for _ in 0..2_000 {
        let m = client.new_tree(&mut runner).unwrap().current();
        client_seen[client_variant(&m)] = true;
        let m = server.new_tree(&mut runner).unwrap().current();
        server_seen[server_variant(&m)] = true;
    }
    assert!(client_seen.iter().all(|s| *s), "{client_seen:?}");
    assert!(server_seen.iter().all(|s| *s), "{server_seen:?}");
}

/// An encoded hello with the real magic and version is what the server's
/// handshake expects to see at the start of its first frame.
#[test]
fn hello_new_carries_this_builds_magic_and_version() {
    let hello = Hello::new("client", Some("token".into()));
    let buf = encode(&mut FrameCodec::<()>::default(), &hello);
    assert_eq!(&buf[4..8], &MAGIC);
    assert_eq!(bincode_u16_prefix(&buf[8..]), PROTOCOL_VERSION);
}

/// The codec bounds what one body may make the decoder reserve; that bound
/// must not refuse valid frames. Frames of 8 MiB (the largest maximum the
/// design allows) decode, whether the body is one long string or the
/// densest run of tiny ones.
#[test]
fn largest_valid_frames_still_decode() {
    const MAX: u32 = 8 * 1024 * 1024;
    let overhead = {
        let empty = ClientMessage::Submit {
            id: 1,
            spec: Box::new(TaskSpec::image("", Vec::<String>::new())),
            detach: false,
        };
        encode(&mut FrameCodec::<()>::default(), &empty).len() - 4
    };
    // One string filling the frame (its length prefix takes 5 bytes).
    let long = ClientMessage::Submit {
        id: 1,
        spec: Box::new(TaskSpec::image(
            "x".repeat(MAX as usize - overhead - 4),
            Vec::<String>::new(),
        )),
        detach: false,
    };
    // A million empty strings, one byte each.
    let dense = ClientMessage::Submit {
        id: 1,
        spec: Box::new(TaskSpec::image("", vec![String::new(); 1 << 20])),
        detach: false,
    };
    for (message, exactly_max) in [(long, true), (dense, false)] {
        let mut buf = encode(&mut FrameCodec::<()>::new(u32::MAX), &message);
        let len = declared_len(&buf).unwrap();
        assert!(len <= MAX as usize);
        assert!(!exactly_max || len == MAX as usize, "{len}");
        let decoded = FrameCodec::<ClientMessage>::new(MAX)
            .decode(&mut buf)
            .expect("a valid frame within the maximum decodes");
        assert_eq!(decoded, Some(message));
    }
}

// ---------------------------------------------------------------------------
// A million mutated frames
// ---------------------------------------------------------------------------

/// Which message type a corpus frame holds.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Client,
    Server,
    Hello,
}

fn corpus() -> Vec<(Kind, Vec<u8>)> {
    // Small bodies only: mutation works best where the structure is dense.
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        proptest::test_runner::TestRng::deterministic_rng(
            proptest::test_runner::RngAlgorithm::ChaCha,
        ),
    );
    let mut corpus = Vec::new();
    let mut codec = FrameCodec::<()>::new(u32::MAX);
    let client = client_message();
    let server = server_message();
    let hellos = hello();
    while corpus.len() < 600 {
        let mut buf = BytesMut::new();
        let kind = match corpus.len() % 3 {
            0 => {
                let m = client.new_tree(&mut runner).unwrap().current();
                codec.encode(m, &mut buf).unwrap();
                Kind::Client
            }
            1 => {
                let m = server.new_tree(&mut runner).unwrap().current();
                codec.encode(m, &mut buf).unwrap();
                Kind::Server
            }
            _ => {
                let m = hellos.new_tree(&mut runner).unwrap().current();
                codec.encode(m, &mut buf).unwrap();
                Kind::Hello
            }
        };
        if buf.len() <= 512 {
            corpus.push((kind, buf.to_vec()));
        }
    }
    corpus
}

/// Most of the time, makes the prefix match the body again, so the mutated
/// body reaches the body decoder instead of stopping at "incomplete".
fn fix_prefix(rng: &mut StdRng, frame: &mut [u8]) {
    if frame.len() >= 4 && rng.random_bool(0.85) {
        let body = (frame.len() - 4) as u32;
        frame[..4].copy_from_slice(&body.to_be_bytes());
    }
}

#[test]
fn mutated_frames_never_panic_the_decoders() {
    // Per decoder; TCP_TASK_FUZZ_INPUTS=1000000 for the run at scale.
    let inputs = fuzz::inputs(20_000);
    let corpus = corpus();
    let mut rng = StdRng::seed_from_u64(0x7cb7_a5c0_dec0);
    let mut buf = BytesMut::with_capacity(4096);
    let mut frame = Vec::with_capacity(2048);
    // The server's decoder of client frames, the client's of server frames,
    // and the hello's.
    for decoder in [Kind::Client, Kind::Server, Kind::Hello] {
        let started = std::time::Instant::now();
        let mut tally = Tally::default();
        for i in 0..inputs {
            frame.clear();
            // Mostly a frame of the decoder's own type; now and then another
            // type's, two frames back to back, or pure noise.
            let base = loop {
                let (kind, base) = &corpus[rng.random_range(0..corpus.len())];
                if *kind as u8 == decoder as u8 || rng.random_bool(0.25) {
                    break base;
                }
            };
            match i % 16 {
                0 => {
                    for _ in 0..rng.random_range(0..64) {
                        frame.push(rng.random());
                    }
                }
                1 => {
                    frame.extend_from_slice(base);
                    let (_, next) = &corpus[rng.random_range(0..corpus.len())];
                    frame.extend_from_slice(next);
                }
                _ => frame.extend_from_slice(base),
            }
            if i % 16 != 0 {
                fuzz::mutate(&mut rng, &mut frame, 4);
                fix_prefix(&mut rng, &mut frame);
            }
            // Now and then a small maximum, so the size check is exercised too.
            let max = if i % 32 == 5 {
                rng.random_range(0..64)
            } else {
                DEFAULT_MAX_FRAME_LEN
            };
            buf.clear();
            buf.extend_from_slice(&frame);
            match decoder {
                Kind::Client => drain::<ClientMessage>(max, &mut buf, &mut tally),
                Kind::Server => drain::<ServerMessage>(max, &mut buf, &mut tally),
                Kind::Hello => drain::<Hello>(max, &mut buf, &mut tally),
            }
        }
        eprintln!(
            "{decoder:?} frames: {inputs} mutated inputs, 0 panics, {:.1}s: {tally:?}",
            started.elapsed().as_secs_f64()
        );
        // The inputs reached every outcome, most of them the body decoder.
        assert!(tally.decoded > inputs / 40, "{tally:?}");
        assert!(tally.malformed > inputs / 4, "{tally:?}");
        assert!(tally.incomplete > 0 && tally.too_large > 0, "{tally:?}");
    }
}
