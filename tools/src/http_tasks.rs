//! `http-tasks [PORT] [--delay-ms N]`: the example tasks as an HTTP server,
//! the shape of the original task service's images. It answers
//!
//! - `POST /task/sum` and `POST /task/multiply` with a JSON body
//!   `{"params": [1, 2, 3]}` (or `{"params": {"numbers": [1, 2, 3]}}`):
//!   200 `{"result": 6}`;
//! - bad JSON or parameters: 400 `{"error": "…"}`; another task: 404;
//!   another method or path: 405 / 404.
//!
//! `--delay-ms N` waits N ms before listening: a slow-starting image, for
//! tests of the server's wait for the port. Plain std: one thread per
//! connection, one request per connection (`Connection: close`), every
//! read bounded in size and time.

use serde_json::{json, Value};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use crate::cli::{parse, Fail};
use crate::examples::arithmetic;

const DEFAULT_PORT: u16 = 8080;
/// The most bytes of a request's head, and of its body.
const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 1024 * 1024;
/// A client that sends nothing for this long is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

pub fn run(args: &[String]) -> Result<(), Fail> {
    let (port, delay_ms) = options(args)?;
    thread::sleep(Duration::from_millis(delay_ms));
    let listener = TcpListener::bind(("0.0.0.0", port))
        .map_err(|e| Fail::Exit(1, format!("cannot listen on port {port}: {e}")))?;
    eprintln!("http-tasks: listening on port {port}");
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                thread::spawn(move || serve(stream));
            }
            Err(e) => eprintln!("http-tasks: accept failed: {e}"),
        }
    }
    Ok(())
}

fn options(args: &[String]) -> Result<(u16, u64), Fail> {
    let (mut port, mut delay_ms) = (DEFAULT_PORT, 0);
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == "--delay-ms" {
            let value = args
                .next()
                .ok_or_else(|| Fail::usage("--delay-ms needs a value"))?;
            delay_ms = parse("--delay-ms", value)?;
        } else {
            port = parse("PORT", arg)?;
        }
    }
    Ok((port, delay_ms))
}

/// One request, one answer, then the connection is closed.
fn serve(stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let Ok(writer) = stream.try_clone() else {
        return;
    };
    let (status, body) = match read_request(BufReader::new(stream)) {
        Ok((method, path, body)) => answer(&method, &path, &body),
        Err((status, message)) => (status, json!({ "error": message })),
    };
    eprintln!("http-tasks: {status}");
    let _ = respond(writer, status, &body);
}

type Refusal = (u16, String);

/// The method, the path and the body of a request.
fn read_request(mut reader: impl BufRead) -> Result<(String, String, Vec<u8>), Refusal> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") && !head.ends_with(b"\n\n") {
        let mut line = Vec::new();
        let read = (&mut reader)
            .take((MAX_HEAD - head.len()) as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| (400, format!("reading the request: {e}")))?;
        if read == 0 {
            return Err((400, "the request ended inside its head".into()));
        }
        head.extend_from_slice(&line);
        if head.len() > MAX_HEAD {
            return Err((431, "request head too large".into()));
        }
    }
    let head = String::from_utf8_lossy(&head);
    let mut lines = head.lines();
    let mut request_line = lines.next().unwrap_or_default().split_whitespace();
    let method = request_line.next().unwrap_or_default().to_owned();
    let path = request_line.next().unwrap_or_default().to_owned();
    let mut length = 0usize;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                length = value
                    .trim()
                    .parse()
                    .map_err(|_| (400, "bad Content-Length".to_string()))?;
            }
            if name.trim().eq_ignore_ascii_case("transfer-encoding") {
                return Err((411, "send a Content-Length, not a chunked body".into()));
            }
        }
    }
    if length > MAX_BODY {
        return Err((413, format!("body larger than {MAX_BODY} bytes")));
    }
    let mut body = vec![0; length];
    reader
        .read_exact(&mut body)
        .map_err(|e| (400, format!("reading the body: {e}")))?;
    Ok((method, path, body))
}

fn answer(method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    let Some(task) = path.strip_prefix("/task/") else {
        return (
            404,
            json!({ "error": format!("no such path {path}; POST /task/NAME") }),
        );
    };
    if method != "POST" {
        return (405, json!({ "error": "tasks answer POST only" }));
    }
    let multiply = match task {
        "sum" => false,
        "multiply" => true,
        other => {
            return (
                404,
                json!({ "error": format!("unknown task {other:?}: sum, multiply") }),
            )
        }
    };
    let numbers = match numbers(body) {
        Ok(numbers) => numbers,
        Err(message) => return (400, json!({ "error": message })),
    };
    match arithmetic(&numbers, multiply) {
        Ok(total) => (200, json!({ "result": result_value(total) })),
        Err(message) => (400, json!({ "error": message })),
    }
}

/// A JSON number for a result that fits one exactly; an integer beyond
/// 64 bits stays exact as a string.
fn result_value(total: String) -> Value {
    if let Ok(int) = total.parse::<i64>() {
        return Value::from(int);
    }
    if let Ok(int) = total.parse::<u64>() {
        return Value::from(int);
    }
    let integer = total.bytes().all(|b| b.is_ascii_digit() || b == b'-');
    match total.parse::<f64>() {
        Ok(float) if !integer => Value::from(float),
        _ => Value::String(total),
    }
}

/// The numbers of `{"params": [..]}` or `{"params": {"numbers": [..]}}`,
/// as text (numbers or strings).
fn numbers(body: &[u8]) -> Result<Vec<String>, String> {
    const SHAPE: &str = r#"send {"params": [1, 2]} or {"params": {"numbers": [1, 2]}}"#;
    let request: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON ({e}); {SHAPE}"))?;
    let params = &request["params"];
    let list = params
        .as_array()
        .or_else(|| params["numbers"].as_array())
        .ok_or_else(|| format!("no list of numbers in params; {SHAPE}"))?;
    list.iter()
        .map(|v| match v {
            Value::Number(n) => Ok(n.to_string()),
            Value::String(s) => Ok(s.clone()),
            other => Err(format!("{other} is not a number; {SHAPE}")),
        })
        .collect()
}

fn respond(mut stream: TcpStream, status: u16, body: &Value) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    };
    let body = body.to_string();
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(request: &str) -> (u16, Value) {
        match read_request(request.as_bytes()) {
            Ok((method, path, body)) => answer(&method, &path, &body),
            Err((status, message)) => (status, json!({ "error": message })),
        }
    }

    fn post(path: &str, body: &str) -> (u16, Value) {
        ask(&format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ))
    }

    #[test]
    fn sums_and_products_in_both_shapes() {
        assert_eq!(
            post("/task/sum", r#"{"params":[1,2,3.5]}"#),
            (200, json!({"result": 6.5}))
        );
        assert_eq!(
            post("/task/multiply", r#"{"params":{"numbers":[6,"7"]}}"#),
            (200, json!({"result": 42}))
        );
        let big = post("/task/multiply", r#"{"params":[9223372036854775807, 10]}"#);
        assert_eq!(big, (200, json!({"result": "92233720368547758070"})));
    }

    #[test]
    fn errors_have_their_statuses() {
        assert_eq!(post("/task/pow", r#"{"params":[1]}"#).0, 404);
        assert_eq!(post("/task/sum", "{nope").0, 400);
        assert_eq!(post("/task/sum", r#"{"params":"x"}"#).0, 400);
        assert_eq!(post("/other", "{}").0, 404);
        assert_eq!(ask("GET /task/sum HTTP/1.1\r\n\r\n").0, 405);
        assert_eq!(
            ask("POST /task/sum HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n").0,
            413
        );
        assert_eq!(
            ask(&format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_HEAD))).0,
            431
        );
        assert_eq!(
            ask("POST /task/sum HTTP/1.1\r\nContent-Length: 10\r\n\r\n{}").0,
            400
        );
    }
}
