use bytes::BytesMut;
use tcp_task::codec::FrameCodec;
use tcp_task::protocol::*;
use tokio_util::codec::Encoder;
fn dump<T: serde::Serialize>(name: &str, m: T) {
    let mut b = BytesMut::new();
    FrameCodec::<()>::default().encode(m, &mut b).unwrap();
    println!("{name} ({} bytes)", b.len());
    for (i, c) in b.chunks(16).enumerate() {
        let hex: Vec<String> = c.iter().map(|x| format!("{x:02x}")).collect();
        let asc: String = c
            .iter()
            .map(|&x| if x.is_ascii_graphic() { x as char } else { '.' })
            .collect();
        println!("{:04x}  {:<48} {}", i * 16, hex.join(" "), asc);
    }
}
fn main() {
    dump("hello", Hello::new("cli", Some("s3cret".into())));
    dump(
        "welcome",
        ServerMessage::Welcome(Welcome {
            version: 1,
            server: "tcp-task 0.1.0".into(),
            limits: tcp_task::ServerConfig::default().limits(),
        }),
    );
    let mut spec = TaskSpec::image("tcp-task-examples:0.1.0", ["sum", "1", "2"]);
    spec.timeout_ms = Some(5000);
    dump(
        "submit",
        ClientMessage::Submit {
            id: 1,
            spec: Box::new(spec),
            detach: false,
        },
    );
    dump(
        "accepted",
        ServerMessage::Accepted {
            id: 1,
            task: tcp_task::TaskId::parse("q7zmdhkxa4vn2cw5bfte").expect("a task id"),
        },
    );
    dump(
        "output",
        ServerMessage::Output {
            id: 1,
            stream: OutputStream::Stdout,
            chunk: bytes::Bytes::from_static(b"3\n"),
        },
    );
    dump(
        "exited",
        ServerMessage::Exited {
            id: 1,
            outcome: Outcome {
                ending: Ending::Exited,
                exit_code: Some(0),
                signal: None,
                duration_ms: 412,
                output_truncated: false,
            },
        },
    );
}
