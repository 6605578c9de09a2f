//! HTTP tasks, the original task service's contract, end to end: a real
//! `tcp-task serve --http`, the HTTP examples image built from this
//! repository's tools (`http-tasks`: sum and multiply as an HTTP server),
//! `POST /api/execute` with curl — the answers and every error the
//! original's clients must be able to act on — and `tcp-task call` and a
//! warm catalog entry over the binary protocol. Nothing is left running.

mod cli_server;
mod curl;

use cli_server::Server;
use curl::{curl, sample};
use serde_json::{json, Value};
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tcp_task::images::{EXAMPLES_IMAGE, HTTP_EXAMPLES_IMAGE, HTTP_EXAMPLES_PORT};
use tcp_task::{Client, Error, ErrorKind, TaskSpec};

fn start(args: &[&str], config: &str) -> Server {
    let mut all: Vec<&OsStr> = vec![OsStr::new("--http"), OsStr::new("127.0.0.1:0")];
    all.extend(args.iter().map(OsStr::new));
    Server::with_config(&all, config, "")
}

fn execute_url(server: &Server) -> String {
    format!("http://{}/api/execute", server.http.as_deref().unwrap())
}

/// `POST /api/execute` with `body`, and `extra` curl arguments.
fn execute(server: &Server, body: &Value, extra: &[&str]) -> curl::Answer {
    let body = body.to_string();
    let url = execute_url(server);
    let mut args = vec![
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &body,
    ];
    args.extend_from_slice(extra);
    args.push(&url);
    curl(&args)
}

/// The original contract's request for the HTTP examples image.
fn request(task: &str, params: Value) -> Value {
    let (image, tag) = HTTP_EXAMPLES_IMAGE.split_once(':').unwrap();
    json!({"image": image, "tag": tag, "port": HTTP_EXAMPLES_PORT, "task": task, "params": params})
}

#[test]
fn api_execute_answers_as_the_original_service_did() {
    let server = start(&[], "");
    let sum = execute(&server, &request("sum", json!([1, 2, 3.5])), &[]);
    assert_eq!(sum.status, 200, "{}", sum.body);
    let body = sum.json();
    assert_eq!(body["result"], json!(6.5));
    assert!(body["message"].as_str().unwrap().contains("sum"), "{body}");
    let product = execute(
        &server,
        &request("multiply", json!({"numbers": [6, 7]})),
        &[],
    );
    assert_eq!(
        (product.status, product.json()["result"].clone()),
        (200, json!(42))
    );
    // An image given with its tag in `image`, and the port as a string.
    let whole =
        json!({"image": HTTP_EXAMPLES_IMAGE, "port": "8080", "task": "sum", "params": [2, 2]});
    let answer = execute(&server, &whole, &[]);
    assert_eq!(
        (answer.status, answer.json()["result"].clone()),
        (200, json!(4))
    );
    server.assert_clean();
    let metrics = curl(&[&format!(
        "http://{}/metrics",
        server.http.as_deref().unwrap()
    )])
    .body;
    let done = r#"tcptask_http_requests_total{endpoint="/api/execute",code="200"}"#;
    assert_eq!(sample(&metrics, done), Some(3.0), "{metrics}");
}

/// Each failure: its status, its `kind`, and words of its message.
fn assert_error(answer: &curl::Answer, status: u16, kind: &str, words: &[&str]) {
    assert_eq!(answer.status, status, "{}", answer.body);
    let body = answer.json();
    assert_eq!(body["kind"], kind, "{body}");
    let message = body["message"].as_str().expect("a message");
    for word in words {
        assert!(message.contains(word), "`{word}` not in: {message}");
    }
}

#[test]
fn api_execute_errors_are_clear_json_with_statuses_to_act_on() {
    let server = start(&[], "[http]\nmax_body_bytes = 4096\nmax_json_depth = 8\n");
    let url = execute_url(&server);

    let bad_json = curl(&["--data-binary", "{not json", &url]);
    assert_error(&bad_json, 400, "bad_request", &["not valid JSON"]);
    let no_port = execute(&server, &json!({"image": "x", "task": "sum"}), &[]);
    assert_error(&no_port, 400, "bad_request", &["port"]);
    let deep = format!("{}{}", "[".repeat(9), "]".repeat(9));
    let too_deep = curl(&["--data-binary", &deep, &url]);
    assert_error(&too_deep, 400, "bad_request", &["max_json_depth"]);
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(5000));
    let too_big = curl(&["--data-binary", &big, &url]);
    assert_error(&too_big, 413, "body_too_large", &["4096"]);

    // The image's server answers 404 for a task it does not have, and 400
    // for parameters it cannot read: the task failed, 400, with its status.
    let unknown = execute(&server, &request("pow", json!([2, 3])), &[]);
    assert_error(&unknown, 400, "task_failed", &["HTTP 404", "unknown task"]);
    let bad_params = execute(&server, &request("sum", json!("three")), &[]);
    assert_error(
        &bad_params,
        400,
        "task_failed",
        &["HTTP 400", "no list of numbers"],
    );

    // Nothing listens on the port asked for: the task's timeout bounds the
    // wait, and the message holds the server's own last lines.
    let mut wrong_port = request("sum", json!([1]));
    wrong_port["port"] = json!(9999);
    wrong_port["timeout_ms"] = json!(3000);
    let started = Instant::now();
    let never = execute(&server, &wrong_port, &[]);
    assert_error(
        &never,
        400,
        "not_listening",
        &["port 9999", "listening on port 8080"],
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );

    // An image whose default command ends at once (the examples image
    // prints its help): the container exited, with its output.
    let (image, tag) = EXAMPLES_IMAGE.split_once(':').unwrap();
    let exits = json!({"image": image, "tag": tag, "port": 8080, "task": "sum", "params": [1]});
    let exited = execute(&server, &exits, &[]);
    assert_error(
        &exited,
        400,
        "task_exited",
        &["before it listened", "applets"],
    );

    let missing = json!({"image": "tcp-task-no-such-image", "tag": "0", "port": 80, "task": "t"});
    assert_error(
        &execute(&server, &missing, &[]),
        400,
        "image_not_found",
        &["tcp-task-no-such-image"],
    );
    let bad_name = execute(&server, &request("sum x", json!([1])), &[]);
    assert_error(&bad_name, 400, "bad_request", &["task name"]);

    // A body that never finishes: 408 after body_read_timeout (10 s).
    let mut slow = TcpStream::connect(server.http.as_deref().unwrap()).unwrap();
    let head = "POST /api/execute HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"image\":";
    slow.write_all(head.as_bytes()).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reply = Vec::new();
    let _ = slow.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    server.assert_clean();
}

#[test]
fn tokens_and_client_rules_apply_to_api_execute() {
    let token = "http-client-token-1234";
    let config =
        format!("[clients.web]\ntoken = \"{token}\"\nimages = [\"tcp-task-examples:*\"]\n");
    let server = start(&[], &config);
    let no_token = execute(&server, &request("sum", json!([1])), &[]);
    assert_error(&no_token, 401, "unauthorized", &["Authorization: Bearer"]);
    let bearer = format!("Authorization: Bearer {token}");
    let refused = execute(&server, &request("sum", json!([1])), &["-H", &bearer]);
    assert_error(&refused, 403, "policy_denied", &["web"]);
    let metrics = curl(&[&format!(
        "http://{}/metrics",
        server.http.as_deref().unwrap()
    )])
    .body;
    let denied = r#"tcptask_requests_refused_total{kind="policy_denied"}"#;
    assert_eq!(sample(&metrics, denied), Some(1.0), "{metrics}");
    server.assert_clean();
}

#[test]
fn call_prints_the_result_over_the_binary_protocol() {
    let server = Server::start();
    let port = HTTP_EXAMPLES_PORT.to_string();
    let out = server.run(&[
        "call",
        HTTP_EXAMPLES_IMAGE,
        "sum",
        "--port",
        &port,
        "--params",
        "[1, 2]",
    ]);
    assert_eq!((out.code, out.stdout_text().trim()), (0, "3"), "{out:?}");
    let raw = server.run(&[
        "call",
        "--raw",
        HTTP_EXAMPLES_IMAGE,
        "multiply",
        "--port",
        &port,
        "--params",
        "[6, 7]",
    ]);
    let answer: Value = serde_json::from_str(raw.stdout_text().trim()).expect("JSON");
    assert_eq!(answer, json!({"result": 42}), "{raw:?}");
    let failed = server.run(&["call", HTTP_EXAMPLES_IMAGE, "nope", "--port", &port]);
    assert_eq!(failed.code, 125, "{failed:?}");
    assert!(failed.one_line_error().contains("HTTP 404"), "{failed:?}");
    // The server's command given on the command line: it listens late.
    let late = server.run(&[
        "call",
        HTTP_EXAMPLES_IMAGE,
        "sum",
        "--port",
        "9000",
        "--params",
        "[5]",
        "http-tasks",
        "9000",
        "--delay-ms",
        "700",
    ]);
    assert_eq!((late.code, late.stdout_text().trim()), (0, "5"), "{late:?}");
    server.assert_clean();
}

#[test]
fn a_warm_catalog_http_task_answers_from_a_listening_container() {
    let catalog = format!(
        "[catalog.add]\nimage = \"{HTTP_EXAMPLES_IMAGE}\"\nport = {HTTP_EXAMPLES_PORT}\ntask = \"sum\"\nwarm = 1\n"
    );
    let server = start(&[], &catalog);
    // The warm container: started, its server listening, network none and
    // no port published on the host.
    let deadline = Instant::now() + Duration::from_secs(60);
    let warm = loop {
        let found: Vec<_> = server
            .containers()
            .into_iter()
            .filter(cli_server::is_warm)
            .collect();
        if let Some(container) = found
            .into_iter()
            .find(|c| c.state.as_ref().map(|s| s.to_string()) == Some("running".into()))
        {
            break container;
        }
        assert!(
            Instant::now() < deadline,
            "no warm container for the HTTP task"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let (runtime, docker) = cli_server::engine();
    let inspected = runtime
        .block_on(docker.inspect_container(warm.id.as_deref().unwrap(), None))
        .unwrap();
    let host = inspected.host_config.unwrap();
    assert_eq!(host.network_mode.as_deref(), Some("none"));
    assert!(host.port_bindings.unwrap_or_default().is_empty());
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
    // Wait until the pool says it is ready, then the task takes it.
    let ready_by = Instant::now() + Duration::from_secs(60);
    loop {
        let metrics = curl(&[&format!(
            "http://{}/metrics",
            server.http.as_deref().unwrap()
        )])
        .body;
        if sample(&metrics, "tcptask_warm_ready_containers") == Some(1.0) {
            break;
        }
        assert!(
            Instant::now() < ready_by,
            "the pool never got ready:\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = server.run(&["task", "add", "--params", "[20, 22]"]);
    assert_eq!(out.code, 0, "{out:?}");
    let answer: Value = serde_json::from_str(out.stdout_text().trim()).expect("the answer");
    assert_eq!(answer, json!({"result": 42}));
    let metrics = curl(&[&format!(
        "http://{}/metrics",
        server.http.as_deref().unwrap()
    )])
    .body;
    let warm_done = r#"tcptask_tasks_total{outcome="exited",path="warm"}"#;
    assert_eq!(sample(&metrics, warm_done), Some(1.0), "{metrics}");
    server.assert_clean();
}

/// An HTTP task's answer goes to the client that asked: it cannot be
/// detached (no log of it is kept to replay), and the refusal says so
/// before anything starts.
#[test]
fn an_http_task_cannot_be_detached() {
    let server = Server::start();
    let spec = TaskSpec::http(HTTP_EXAMPLES_IMAGE, HTTP_EXAMPLES_PORT, "sum", None);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let refused = runtime.block_on(async {
        let client = Client::connect(server.addr.as_str()).await.unwrap();
        client.run_detached(spec).await
    });
    match refused {
        Err(Error::Remote(e)) => {
            assert_eq!(e.kind, ErrorKind::BadRequest, "{e}");
            assert!(e.message.contains("cannot be detached"), "{e}");
        }
        other => panic!("a detached HTTP task was not refused: {other:?}"),
    }
    server.assert_clean();
}
