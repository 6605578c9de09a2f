//! Pulling from a private registry with and without valid credentials.
//!
//! Each test starts Debian's `docker-registry` (the CNCF distribution
//! registry) on 127.0.0.1 with htpasswd auth in a temporary directory,
//! pushes the examples image into it under a fresh tag, removes the local
//! tag, and runs the executor against it. The engine allows plain HTTP to
//! registries on 127.0.0.0/8.

mod common;

use bollard::auth::DockerCredentials;
use bollard::query_parameters::{PushImageOptions, RemoveImageOptions, TagImageOptions};
use bollard::Docker;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Harness, EXAMPLES_IMAGE};
use tcp_task::executor::{ExecutorConfig, RegistryCredentials};
use tcp_task::protocol::{ErrorKind, RegistryAuth, TaskSpec};
use tcp_task::ProgressEvent;

const USER: &str = "tester";
const PASSWORD: &str = "s3cret-pass";

/// A running registry; killed on drop.
struct Registry {
    child: Child,
    host: String,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ensure_binaries() {
    let have = |p: &str| Path::new(p).exists();
    if have("/usr/bin/docker-registry") && have("/usr/bin/htpasswd") {
        return;
    }
    let apt = |args: &[&str]| {
        // Two tests of this file may install at once: the second waits
        // for the package lock instead of failing on it.
        let status = Command::new("apt-get")
            .args(["-o", "DPkg::Lock::Timeout=300"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .expect("apt-get runs");
        assert!(status.success(), "apt-get {args:?} failed");
    };
    apt(&["update", "-qq"]);
    apt(&["install", "-y", "-qq", "docker-registry", "apache2-utils"]);
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

impl Registry {
    fn start() -> Registry {
        ensure_binaries();
        let dir = tempfile::tempdir().expect("temp dir");
        let htpasswd = Command::new("htpasswd")
            .args(["-Bbn", USER, PASSWORD])
            .output()
            .expect("htpasswd runs");
        assert!(htpasswd.status.success());
        std::fs::write(dir.path().join("htpasswd"), &htpasswd.stdout).expect("write htpasswd");
        let host = format!("127.0.0.1:{}", free_port());
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {root}\n\
             http:\n  addr: {host}\nauth:\n  htpasswd:\n    realm: tcp-task-test\n    path: {pw}\n",
            root = dir.path().join("data").display(),
            pw = dir.path().join("htpasswd").display(),
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("write config");
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry starts");
        let registry = Registry {
            child,
            host,
            _dir: dir,
        };
        registry.wait_ready();
        registry
    }

    fn wait_ready(&self) {
        for _ in 0..200 {
            if std::net::TcpStream::connect(&self.host).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the registry did not listen on {}", self.host);
    }

    fn credentials(&self) -> DockerCredentials {
        DockerCredentials {
            username: Some(USER.into()),
            password: Some(PASSWORD.into()),
            serveraddress: Some(self.host.clone()),
            ..DockerCredentials::default()
        }
    }

    /// Pushes the examples image as `<host>/tcp-task-examples:<tag>` and
    /// removes the local tag, so the executor has to pull it.
    async fn push_examples(&self, docker: &Docker, tag: &str) -> String {
        let repo = format!("{}/tcp-task-examples", self.host);
        let options = TagImageOptions {
            repo: Some(repo.clone()),
            tag: Some(tag.to_owned()),
        };
        docker
            .tag_image(EXAMPLES_IMAGE, Some(options))
            .await
            .expect("tag");
        let reference = format!("{repo}:{tag}");
        let push_options = PushImageOptions {
            tag: Some(tag.to_owned()),
            ..PushImageOptions::default()
        };
        let mut push = docker.push_image(&repo, Some(push_options), Some(self.credentials()));
        while let Some(item) = push.next().await {
            item.expect("push succeeds");
        }
        untag(docker, &reference).await;
        reference
    }
}

async fn untag(docker: &Docker, reference: &str) {
    docker
        .remove_image(reference, None::<RemoveImageOptions>, None)
        .await
        .expect("remove the local tag");
}

async fn image_exists(docker: &Docker, reference: &str) -> bool {
    docker.inspect_image(reference).await.is_ok()
}

fn auth(password: &str) -> Option<RegistryAuth> {
    Some(RegistryAuth {
        username: USER.into(),
        password: password.into(),
        server: None,
    })
}

fn unique_tag(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_credentials_and_missing_images_fail_cleanly() {
    let registry = Registry::start();
    let h = Harness::standard().await;
    let image = registry
        .push_examples(&h.docker, &unique_tag("refused"))
        .await;

    let wrong = h
        .run(TaskSpec {
            registry_auth: auth("wrong-password"),
            ..TaskSpec::image(image.clone(), ["true"])
        })
        .await;
    assert_eq!(
        wrong.error().kind,
        ErrorKind::RegistryAuth,
        "{:?}",
        wrong.error()
    );
    assert!(wrong.error().message.contains(&registry.host));

    eprintln!("wrong credentials: {}", wrong.error().message);
    let anonymous = h.run(TaskSpec::image(image.clone(), ["true"])).await;
    eprintln!("no credentials: {}", anonymous.error().message);
    assert_eq!(anonymous.error().kind, ErrorKind::RegistryAuth);
    assert!(anonymous.error().message.contains("requires credentials"));

    let missing = h
        .run(TaskSpec {
            registry_auth: auth(PASSWORD),
            ..TaskSpec::image(format!("{}/no-such-image:1", registry.host), ["true"])
        })
        .await;
    assert_eq!(
        missing.error().kind,
        ErrorKind::ImageNotFound,
        "{:?}",
        missing.error()
    );

    eprintln!("missing image: {}", missing.error().message);
    // Nothing left behind: no container, no image.
    assert!(!image_exists(&h.docker, &image).await);
    h.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_credentials_from_the_request_or_the_config_pull_and_run() {
    let registry = Registry::start();
    let h = Harness::standard().await;
    let image = registry
        .push_examples(&h.docker, &unique_tag("pulled"))
        .await;

    let run = h
        .run(TaskSpec {
            registry_auth: auth(PASSWORD),
            ..TaskSpec::image(image.clone(), ["echo", "pulled"])
        })
        .await;
    assert!(run.outcome().success(), "{:?}", run.result);
    assert_eq!(run.stdout_text(), "pulled\n");
    let pulling = run
        .progress()
        .iter()
        .filter(|p| matches!(p, ProgressEvent::Pulling { .. }))
        .count();
    assert!(pulling > 0, "no pull progress was reported");
    untag(&h.docker, &image).await;

    // The server's configured credentials for that registry work too.
    let configured = Harness::new(ExecutorConfig {
        registry_auth: BTreeMap::from([(
            registry.host.clone(),
            RegistryCredentials {
                username: USER.into(),
                password: PASSWORD.into(),
            },
        )]),
        ..ExecutorConfig::default()
    })
    .await;
    let run = configured
        .run(TaskSpec::image(image.clone(), ["echo", "configured"]))
        .await;
    assert_eq!(run.stdout_text(), "configured\n", "{:?}", run.result);
    untag(&h.docker, &image).await;
    h.assert_clean().await;
    configured.assert_clean().await;
}
