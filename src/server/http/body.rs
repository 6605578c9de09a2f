//! Reading a request's JSON body within the listener's bounds: its size
//! (`max_body_bytes`, checked against Content-Length before anything is
//! read, then while reading), its time (`body_read_timeout`) and the
//! nesting of its JSON (`max_json_depth`, checked before it is parsed).

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::CONTENT_LENGTH;
use hyper::{Request, StatusCode};
use serde_json::{json, Value};

use super::config::HttpConfig;
use super::reply::Reply;

/// The body of `request`, parsed as JSON, or the answer that refuses it.
pub(crate) async fn read_json(
    request: Request<Incoming>,
    config: &HttpConfig,
) -> Result<Value, Reply> {
    let bytes = read_body(request, config).await?;
    check_depth(&bytes, config.max_json_depth).map_err(|message| bad_json(&message))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        bad_json(&format!(
            "the body is not valid JSON ({e}); send a JSON object such as \
             {{\"image\": \"…\", \"port\": 8080, \"task\": \"…\", \"params\": {{}}}}"
        ))
    })
}

async fn read_body(request: Request<Incoming>, config: &HttpConfig) -> Result<Bytes, Reply> {
    let max = config.max_body_bytes;
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(too_large(max));
    }
    let body = Limited::new(request.into_body(), max);
    match tokio::time::timeout(config.body_read_timeout, body.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large(max)),
        Ok(Err(e)) => Err(bad_json(&format!("the body could not be read: {e}"))),
        Err(_) => Err(Reply::json(
            StatusCode::REQUEST_TIMEOUT,
            &json!({
                "message": format!(
                    "the body did not arrive within {:?} (body_read_timeout); send it at once",
                    config.body_read_timeout
                ),
                "kind": "timeout",
            }),
        )),
    }
}

fn too_large(max: usize) -> Reply {
    Reply::json(
        StatusCode::PAYLOAD_TOO_LARGE,
        &json!({
            "message": format!(
                "the body is larger than {max} bytes, this server's max_body_bytes; send less \
                 (large inputs belong in the task's image or its own storage)"
            ),
            "kind": "body_too_large",
        }),
    )
}

fn bad_json(message: &str) -> Reply {
    Reply::json(
        StatusCode::BAD_REQUEST,
        &json!({"message": message, "kind": "bad_request"}),
    )
}

/// Refuses JSON nested deeper than `max` arrays and objects, by a scan
/// that skips strings; the parser then never recurses that deep.
fn check_depth(json: &[u8], max: usize) -> Result<(), String> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in json {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Err(format!(
                        "the JSON body nests arrays and objects deeper than {max} levels \
                         (max_json_depth); flatten it"
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_nesting_but_not_brackets_in_strings() {
        assert!(check_depth(br#"{"a":[1,{"b":2}]}"#, 3).is_ok());
        assert!(check_depth(br#"{"a":[1,{"b":2}]}"#, 2).is_err());
        assert!(check_depth(br#"{"a":"[[[[[[\"[[["}"#, 1).is_ok());
        let deep = "[".repeat(100_000);
        assert!(check_depth(deep.as_bytes(), 32).is_err());
    }
}
