//! Prints frames as docs/PROTOCOL.md shows them (`OFFSET  HEX…  ASCII`):
//! a help for writing the document's examples, which tests/protocol_doc.rs
//! then checks against the codec.
//!
//! `cargo run --example hexdump_frames`

use bytes::{Bytes, BytesMut};
use tcp_task::codec::FrameCodec;
use tcp_task::protocol::*;
use tokio_util::codec::Encoder;

fn dump<T: serde::Serialize + std::fmt::Debug>(m: T) {
    let mut b = BytesMut::new();
    println!("{m:#?}");
    FrameCodec::<()>::default().encode(m, &mut b).unwrap();
    println!("({} bytes)", b.len());
    for (i, c) in b.chunks(16).enumerate() {
        let hex: Vec<String> = c.iter().map(|x| format!("{x:02x}")).collect();
        let asc: String = c
            .iter()
            .map(|&x| if x.is_ascii_graphic() { x as char } else { '.' })
            .collect();
        println!("{:04x}  {:<48} {}", i * 16, hex.join(" "), asc);
    }
    println!();
}

fn main() {
    let task = TaskId::parse("c7kq2mx4hzt5wnb3dp6e").unwrap();
    dump(Hello::new("cli", Some("s3cret".into())));
    dump(ServerMessage::Welcome(Welcome {
        version: PROTOCOL_VERSION,
        server: tcp_task::server::server_name(),
        limits: tcp_task::ServerConfig::default().limits(),
    }));
    let mut spec = TaskSpec::image("tcp-task-examples:0.1.0", ["sum", "1", "2"]);
    spec.timeout_ms = Some(5000);
    dump(ClientMessage::Submit {
        id: 1,
        spec: Box::new(spec),
        detach: false,
    });
    dump(ServerMessage::Accepted {
        id: 1,
        task: task.clone(),
    });
    dump(ClientMessage::Attach {
        id: 2,
        task: task.clone(),
        from: Offsets {
            stdout: 6,
            stderr: 0,
        },
        follow: true,
    });
    dump(ServerMessage::Output {
        id: 2,
        stream: OutputStream::Stdout,
        chunk: Bytes::from_static(b"out 1\n"),
    });
    dump(ClientMessage::List { id: 3, all: true });
    dump(ServerMessage::TaskList {
        id: 3,
        tasks: vec![TaskInfo {
            id: task,
            image: "tcp-task-examples:0.1.0".into(),
            command: vec!["mixed".into(), "2".into()],
            detached: true,
            created_ms: 1_700_000_000_000,
            state: TaskState::Ended(Outcome {
                ending: Ending::Exited,
                exit_code: Some(0),
                signal: None,
                duration_ms: 230,
                output_truncated: false,
            }),
            output_bytes: 24,
        }],
    });
}
