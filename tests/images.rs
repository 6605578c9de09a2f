//! The examples image, built through the Engine API and run for real.
//!
//! Needs a Docker engine (`scripts/start-docker.sh` starts one). Containers
//! are created, started, waited for, read and removed through bollard, the
//! same calls the executor makes.

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{LogsOptionsBuilder, RemoveContainerOptionsBuilder};
use bollard::Docker;
use futures::StreamExt;
use tcp_task::docker::connect_docker;
use tcp_task::images::{
    build_server_image, ensure_examples_image, EXAMPLES_IMAGE, IMAGE_LABEL, TOOLS_DIGEST,
    TOOLS_DIGEST_LABEL,
};

/// What a finished container left behind.
#[derive(Debug)]
struct Run {
    code: i64,
    stdout: String,
    stderr: String,
}

/// Options for [`run`] beyond the command.
#[derive(Default)]
struct Opts<'a> {
    /// [`EXAMPLES_IMAGE`] when `None`.
    image: Option<&'a str>,
    user: Option<&'a str>,
    env: Vec<&'a str>,
    host: HostConfig,
}

async fn docker_with_image() -> Docker {
    let docker = connect_docker()
        .await
        .expect("Docker engine needed for this test");
    ensure_examples_image(&docker)
        .await
        .expect("build the examples image");
    docker
}

async fn run(docker: &Docker, cmd: &[&str], opts: Opts<'_>) -> Run {
    let body = ContainerCreateBody {
        image: Some(opts.image.unwrap_or(EXAMPLES_IMAGE).to_string()),
        cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
        user: opts.user.map(String::from),
        env: Some(opts.env.iter().map(|s| s.to_string()).collect()),
        labels: Some([("tcp-task.test".to_string(), "images".to_string())].into()),
        network_disabled: Some(true),
        host_config: Some(opts.host),
        ..Default::default()
    };
    let id = docker
        .create_container(None, body)
        .await
        .expect("create container")
        .id;
    docker
        .start_container(&id, None)
        .await
        .expect("start container");
    let code = match docker.wait_container(&id, None).next().await {
        Some(Ok(r)) => r.status_code,
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
        other => panic!("waiting for {id}: {other:?}"),
    };
    let mut logs = docker.logs(
        &id,
        Some(
            LogsOptionsBuilder::default()
                .stdout(true)
                .stderr(true)
                .build(),
        ),
    );
    let (mut stdout, mut stderr) = (String::new(), String::new());
    while let Some(chunk) = logs.next().await {
        match chunk.expect("read logs") {
            bollard::container::LogOutput::StdErr { message } => {
                stderr.push_str(&String::from_utf8_lossy(&message))
            }
            other => stdout.push_str(&other.to_string()),
        }
    }
    docker
        .remove_container(
            &id,
            Some(RemoveContainerOptionsBuilder::default().force(true).build()),
        )
        .await
        .expect("remove container");
    Run {
        code,
        stdout,
        stderr,
    }
}

async fn stdout_of(docker: &Docker, cmd: &[&str]) -> String {
    let run = run(docker, cmd, Opts::default()).await;
    assert_eq!(run.code, 0, "{cmd:?} failed: {run:?}");
    run.stdout
}

#[tokio::test]
async fn example_tasks_give_their_answers() {
    let docker = docker_with_image().await;
    assert_eq!(stdout_of(&docker, &["sum", "1", "2", "3"]).await, "6\n");
    assert_eq!(
        stdout_of(&docker, &["primes", "--count", "1000000"]).await,
        "78498\n"
    );
    assert_eq!(
        stdout_of(&docker, &["pi", "50"]).await,
        "3.14159265358979323846264338327950288419716939937510\n"
    );
    assert_eq!(stdout_of(&docker, &["multiply", "2", "3.5"]).await, "7\n");
}

#[tokio::test]
async fn applets_run_by_name_by_path_and_through_the_binary() {
    let docker = docker_with_image().await;
    // `sum` goes through PATH=/bin, `/bin/sum` through the symlink directly.
    assert_eq!(stdout_of(&docker, &["/bin/sum", "1", "2"]).await, "3\n");
    assert_eq!(
        stdout_of(&docker, &["tcp-task-tools", "sum", "1", "2"]).await,
        "3\n"
    );
    let params = run(
        &docker,
        &["sum"],
        Opts {
            env: vec![r#"TASK_PARAMS={"numbers":[1,2,3]}"#],
            ..Opts::default()
        },
    )
    .await;
    assert_eq!(
        (params.code, params.stdout.as_str()),
        (0, "6\n"),
        "{params:?}"
    );
    let bad = run(&docker, &["sum", "one"], Opts::default()).await;
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.contains("usage: sum"), "{bad:?}");
}

#[tokio::test]
async fn nobody_exists_and_can_use_tmp_only() {
    let docker = docker_with_image().await;
    let nobody = |cmd: &'static [&'static str]| {
        let docker = docker.clone();
        async move {
            run(
                &docker,
                cmd,
                Opts {
                    user: Some("nobody"),
                    ..Opts::default()
                },
            )
            .await
        }
    };
    assert_eq!(nobody(&["id"]).await.stdout, "uid=65534 gid=65534\n");
    let tmp = nobody(&["writefile", "/tmp/scratch"]).await;
    assert_eq!(
        (tmp.code, tmp.stdout.as_str()),
        (0, "wrote /tmp/scratch\n"),
        "{tmp:?}"
    );
    let etc = nobody(&["writefile", "/etc/nope"]).await;
    assert_eq!(etc.code, 1, "{etc:?}");
    assert!(etc.stderr.contains("Permission denied"), "{etc:?}");
}

#[tokio::test]
async fn the_image_carries_its_labels_env_and_is_not_rebuilt() {
    let docker = docker_with_image().await;
    assert!(
        !ensure_examples_image(&docker).await.unwrap(),
        "a current image must not be rebuilt"
    );
    let image = docker.inspect_image(EXAMPLES_IMAGE).await.unwrap();
    let config = image.config.expect("image config");
    let labels = config.labels.expect("labels");
    assert_eq!(
        labels.get(IMAGE_LABEL).map(String::as_str),
        Some("examples")
    );
    assert_eq!(
        labels.get(TOOLS_DIGEST_LABEL).map(String::as_str),
        Some(TOOLS_DIGEST)
    );
    assert!(config
        .env
        .unwrap_or_default()
        .contains(&"PATH=/bin".to_string()));
}

#[tokio::test]
async fn forkbomb_stops_at_the_pids_limit_and_signals_work_under_init() {
    let docker = docker_with_image().await;
    let bomb = run(
        &docker,
        &["forkbomb"],
        Opts {
            host: HostConfig {
                pids_limit: Some(32),
                init: Some(true),
                ..HostConfig::default()
            },
            ..Opts::default()
        },
    )
    .await;
    assert_eq!(bomb.code, 3, "{bomb:?}");
    assert!(bomb.stderr.starts_with("fork failed: "), "{bomb:?}");

    let killed = run(
        &docker,
        &["killself", "TERM"],
        Opts {
            host: HostConfig {
                init: Some(true),
                ..HostConfig::default()
            },
            ..Opts::default()
        },
    )
    .await;
    assert_eq!(killed.code, 128 + 15, "{killed:?}");
}

/// The server image around a static tcp-task runs it with no network and
/// nothing else in the image. A static build takes minutes (a release build
/// of every dependency for an explicit target), so the default run skips
/// this test (nextest counts it as skipped); run it with a static build
/// (docs/DEPLOY.md says how to make one):
///
/// ```sh
/// TCP_TASK_SERVER_BINARY=target/x86_64-unknown-linux-gnu/release/tcp-task \
///   cargo nextest run --test images --run-ignored only
/// ```
///
/// The refusal of a dynamic binary is tested in tests/cli.rs and in
/// src/images.rs always.
#[tokio::test]
#[ignore = "needs TCP_TASK_SERVER_BINARY, a static tcp-task build (about 20 minutes to make here)"]
async fn the_server_image_runs_its_static_tcp_task() {
    let path = std::env::var("TCP_TASK_SERVER_BINARY")
        .expect("set TCP_TASK_SERVER_BINARY to a static tcp-task build (docs/DEPLOY.md)");
    let binary = std::fs::read(&path).expect("TCP_TASK_SERVER_BINARY is readable");
    let docker = connect_docker().await.expect("Docker engine needed");
    let tag = "tcp-task-server:images-test";
    build_server_image(&docker, tag, &path, &binary)
        .await
        .expect("the server image builds");
    let image = docker.inspect_image(tag).await.expect("inspect");
    let config = image.config.expect("an image config");
    assert_eq!(config.entrypoint, Some(vec!["/bin/tcp-task".to_owned()]));
    let labels = config.labels.unwrap_or_default();
    assert_eq!(labels.get(IMAGE_LABEL).map(String::as_str), Some("server"));
    let opts = Opts {
        image: Some(tag),
        ..Opts::default()
    };
    let run = run(&docker, &["--version"], opts).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stdout.trim(),
        format!("tcp-task {}", env!("CARGO_PKG_VERSION"))
    );
    docker
        .remove_image(
            tag,
            None::<bollard::query_parameters::RemoveImageOptions>,
            None,
        )
        .await
        .expect("remove the test's image");
}
