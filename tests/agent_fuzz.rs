//! The warm agent's wire format (tools/src/agent_proto.rs, included here by
//! path as the server includes it) against mutated frames: the header check
//! and the payload decoders the agent (task headers) and the server (exit
//! reports) run on what comes over the container's attach stream.
//!
//! Each input is a stream of frames, valid ones edited by the shared
//! mutator (tests/fuzz/), read the way a receiver reads it: a header,
//! checked against the kinds that direction allows and the maximum, then
//! its payload decoded. Nothing may panic, and what decodes must be
//! well-formed: it encodes again, and that encoding decodes to the same
//! value. 20,000 inputs per direction by default; TCP_TASK_FUZZ_INPUTS sets
//! the count (docs/RELIABILITY.md).

#[allow(dead_code)]
#[path = "../tools/src/agent_proto.rs"]
mod agent_proto;
mod fuzz;

use agent_proto::{
    frame, parse_header, ExitReport, ProtoError, TaskHeader, EXIT, FROM_AGENT, HEADER_LEN,
    MAX_PAYLOAD, READY, STARTED, STDERR, STDIN, STDOUT, TASK, TO_AGENT,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Default, Debug)]
struct Tally {
    frames: usize,
    task_headers: usize,
    exit_reports: usize,
    unknown_kind: usize,
    too_long: usize,
    truncated: usize,
    bad_payload: usize,
}

fn text(rng: &mut StdRng, max: usize) -> String {
    let n = rng.random_range(0..=max);
    (0..n)
        .map(|_| char::from(rng.random_range(b' '..=b'~')))
        .collect()
}

fn task_header(rng: &mut StdRng) -> TaskHeader {
    let argv = (0..rng.random_range(1..4)).map(|_| text(rng, 12)).collect();
    let env = (0..rng.random_range(0..3))
        .map(|_| format!("{}={}", text(rng, 6), text(rng, 6)))
        .collect();
    TaskHeader {
        argv,
        env,
        workdir: rng.random_bool(0.5).then(|| format!("/{}", text(rng, 8))),
        stdin: rng.random_bool(0.5),
        tag: text(rng, 16),
    }
}

fn exit_report(rng: &mut StdRng) -> ExitReport {
    let value = rng.random_range(-300..300);
    let oom = rng.random_bool(0.2);
    match rng.random_range(0..4) {
        0 => ExitReport::Exited { code: value, oom },
        1 => ExitReport::Signaled { signal: value, oom },
        2 => ExitReport::SpawnFailed { errno: value },
        _ => ExitReport::WorkdirFailed { errno: value },
    }
}

/// One valid frame of a kind that travels `to_agent` (or the other way).
fn valid_frame(rng: &mut StdRng, to_agent: bool) -> Vec<u8> {
    let chunk = |rng: &mut StdRng| -> Vec<u8> {
        (0..rng.random_range(0..16)).map(|_| rng.random()).collect()
    };
    if to_agent {
        match rng.random_range(0..3) {
            0 | 1 => frame(TASK, &task_header(rng).encode()),
            _ => frame(STDIN, &chunk(rng)),
        }
    } else {
        match rng.random_range(0..5) {
            0 | 1 => frame(EXIT, &exit_report(rng).encode()),
            2 => frame(READY, &[agent_proto::VERSION]),
            3 => frame(STARTED, &rng.random::<u32>().to_be_bytes()),
            _ => frame(
                if rng.random_bool(0.5) { STDOUT } else { STDERR },
                &chunk(rng),
            ),
        }
    }
}

/// Reads `stream` as a receiver does, frame after frame, until it ends or
/// a frame is refused. Panics on any answer that breaks the format's rules.
fn read(stream: &[u8], allowed: &[u8], tally: &mut Tally) {
    let mut rest = stream;
    while !rest.is_empty() {
        let Some(header) = rest.get(..HEADER_LEN) else {
            tally.truncated += 1;
            return;
        };
        let (kind, len) = match parse_header(header.try_into().unwrap(), allowed) {
            Ok(parsed) => parsed,
            Err(ProtoError::UnknownKind(kind)) => {
                assert!(!allowed.contains(&kind));
                tally.unknown_kind += 1;
                return;
            }
            Err(ProtoError::TooLong(len)) => {
                assert!(len > MAX_PAYLOAD);
                tally.too_long += 1;
                return;
            }
            Err(other) => panic!("a header check answered {other:?}"),
        };
        assert!(allowed.contains(&kind) && len <= MAX_PAYLOAD);
        let Some(payload) = rest.get(HEADER_LEN..HEADER_LEN + len) else {
            tally.truncated += 1;
            return;
        };
        rest = &rest[HEADER_LEN + len..];
        tally.frames += 1;
        let decoded = match kind {
            TASK => TaskHeader::decode(payload).map(|header| {
                assert!(!header.argv.is_empty());
                assert!(header.env.iter().all(|kv| kv.contains('=')));
                assert_eq!(TaskHeader::decode(&header.encode()), Ok(header));
                tally.task_headers += 1;
            }),
            EXIT => ExitReport::decode(payload).map(|report| {
                assert_eq!(ExitReport::decode(&report.encode()), Ok(report));
                tally.exit_reports += 1;
            }),
            _ => Ok(()),
        };
        if let Err(error) = decoded {
            assert!(matches!(error, ProtoError::BadPayload(_)), "{error:?}");
            tally.bad_payload += 1;
            return;
        }
    }
}

#[test]
fn mutated_agent_frames_never_panic_the_readers() {
    let inputs = fuzz::inputs(20_000);
    let mut rng = StdRng::seed_from_u64(0xa6e7_f00d_5eed);
    let mut stream = Vec::with_capacity(1024);
    for (to_agent, allowed) in [(true, TO_AGENT), (false, FROM_AGENT)] {
        let started = std::time::Instant::now();
        let mut tally = Tally::default();
        for i in 0..inputs {
            stream.clear();
            for _ in 0..rng.random_range(1..=3) {
                stream.extend(valid_frame(&mut rng, to_agent));
            }
            match i % 16 {
                // Pure noise.
                0 => {
                    stream.clear();
                    stream.extend((0..rng.random_range(0..64)).map(|_| rng.random::<u8>()));
                }
                // Untouched: the valid path.
                1 => {}
                _ => {
                    fuzz::mutate(&mut rng, &mut stream, HEADER_LEN);
                    // Mostly, make the first header's length fit the rest
                    // again, so the payload decoders see the edits.
                    if stream.len() >= HEADER_LEN && rng.random_bool(0.8) {
                        let len = (stream.len() - HEADER_LEN) as u32;
                        stream[1..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
                    }
                }
            }
            read(&stream, allowed, &mut tally);
        }
        let direction = if to_agent {
            "to the agent"
        } else {
            "from the agent"
        };
        eprintln!(
            "agent frames {direction}: {inputs} mutated inputs, 0 panics, {:.1}s: {tally:?}",
            started.elapsed().as_secs_f64()
        );
        // Every outcome was reached, the payload decoders often.
        assert!(tally.bad_payload > inputs / 10, "{tally:?}");
        assert!(tally.unknown_kind > 0 && tally.too_long > 0 && tally.truncated > 0);
        let decoded = if to_agent {
            tally.task_headers
        } else {
            tally.exit_reports
        };
        assert!(decoded > inputs / 20, "{tally:?}");
    }
}
