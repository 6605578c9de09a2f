//! A complete program using the client library: connects to a server, runs a
//! generic task and a pre-compiled one at the same time, streams one task's
//! output as it arrives, and feeds another its stdin.
//!
//! Start a server first (`cargo run -- serve`), then:
//!
//! ```text
//! cargo run --example run_task
//! ```

use bytes::Bytes;
use tcp_task::{Client, ErrorKind, TaskEvent, TaskSpec};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::var("TCP_TASK_SERVER").unwrap_or_else(|_| "127.0.0.1:7070".into());
    let client = Client::connect(address.as_str()).await?;
    let image = tcp_task::images::EXAMPLES_IMAGE;

    // Two tasks at once on one connection (and clones of the client share it).
    let (pi, primes) = tokio::join!(
        client.run(TaskSpec::named("pi", ["30"])),
        client.run(TaskSpec::image(image, ["primes", "--count", "1000000"])),
    );
    let pi = pi?.output().await?;
    let primes = primes?.output().await?;
    println!("pi = {}", String::from_utf8_lossy(&pi.stdout).trim());
    println!(
        "primes below a million: {}",
        String::from_utf8_lossy(&primes.stdout).trim()
    );

    // Output as it is produced: one line every 100 ms.
    let mut lines = client
        .run(TaskSpec::image(image, ["lines", "3", "100"]))
        .await?;
    while let Some(event) = lines.next().await {
        if let TaskEvent::Stdout(chunk) = event {
            print!("live: {}", String::from_utf8_lossy(&chunk));
        }
    }
    println!("lines task: {:?}", lines.wait().await?.ending);

    // Stdin: a task can be a filter.
    let mut spec = TaskSpec::image(image, ["cat"]);
    spec.stdin = true;
    let cat = client.run(spec).await?;
    cat.stdin()
        .write(Bytes::from_static(b"round trip\n"))
        .await?;
    cat.stdin().close().await?;
    print!(
        "cat says: {}",
        String::from_utf8_lossy(&cat.output().await?.stdout)
    );

    // Errors carry a kind a program can match on.
    let missing = client
        .run(TaskSpec::image("no-such-image:1", ["true"]))
        .await?
        .wait()
        .await;
    match missing {
        Err(e) if e.kind() == Some(ErrorKind::ImageNotFound) => println!("as expected: {e}"),
        other => println!("unexpected: {other:?}"),
    }
    Ok(())
}
