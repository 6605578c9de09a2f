//! What a handler answers: a status, a body and its type. Errors are JSON
//! the original task service's clients read (`{"message"}`), with the
//! error kind added, and a status a client can act on.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};
use serde_json::{json, Value};

use crate::task::{ErrorKind, TaskError};

/// A handler's answer.
#[derive(Debug)]
pub(crate) struct Reply {
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
    headers: Vec<(hyper::header::HeaderName, &'static str)>,
}

impl Reply {
    pub fn json(status: StatusCode, value: &Value) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: Bytes::from(value.to_string()),
            headers: Vec::new(),
        }
    }

    pub fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
        Reply {
            status,
            content_type,
            body: body.into(),
            headers: Vec::new(),
        }
    }

    /// `{"message", "kind"}` with the status that fits the kind.
    pub fn error(error: &TaskError) -> Reply {
        let status = status_of(error.kind);
        let body = json!({"message": error.message, "kind": error.kind.as_str()});
        let mut reply = Reply::json(status, &body);
        match status {
            StatusCode::UNAUTHORIZED => reply.headers.push((WWW_AUTHENTICATE, "Bearer")),
            StatusCode::SERVICE_UNAVAILABLE => reply.headers.push((RETRY_AFTER, "1")),
            _ => {}
        }
        reply
    }

    pub fn not_found(path: &str) -> Reply {
        let message = format!(
            "no endpoint at {path}; this server answers /api/status, /metrics, /healthz and \
             /readyz"
        );
        Reply::error(&TaskError::new(ErrorKind::BadRequest, message))
            .with_status(StatusCode::NOT_FOUND)
    }

    pub fn method_not_allowed(path: &str) -> Reply {
        let allowed = if path == "/api/execute" {
            "POST"
        } else {
            "GET"
        };
        let message = format!("{path} answers {allowed} only");
        let mut reply = Reply::error(&TaskError::new(ErrorKind::BadRequest, message))
            .with_status(StatusCode::METHOD_NOT_ALLOWED);
        reply.headers.push((ALLOW, allowed));
        reply
    }

    pub fn with_status(mut self, status: StatusCode) -> Reply {
        self.status = status;
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(self.body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        for (name, value) in self.headers {
            headers.insert(name, HeaderValue::from_static(value));
        }
        response
    }
}

/// The status for an error kind. The original service answered 400 for
/// every task that could not run, and its clients read that: what the
/// request or its image got wrong stays 400. Refusals a client can act on
/// get their own 4xx; what failed on the server's side is 5xx.
pub(crate) fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorKind::PolicyDenied => StatusCode::FORBIDDEN,
        ErrorKind::FrameTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::Busy | ErrorKind::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Engine | ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_REQUEST,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_faults_stay_400_and_server_faults_are_5xx() {
        assert_eq!(status_of(ErrorKind::BadRequest), StatusCode::BAD_REQUEST);
        assert_eq!(status_of(ErrorKind::UnknownTask), StatusCode::BAD_REQUEST);
        assert_eq!(status_of(ErrorKind::ImageNotFound), StatusCode::BAD_REQUEST);
        assert_eq!(status_of(ErrorKind::PolicyDenied), StatusCode::FORBIDDEN);
        assert_eq!(status_of(ErrorKind::Busy), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            status_of(ErrorKind::Engine),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        let reply = Reply::error(&TaskError::new(ErrorKind::Unauthorized, "no"));
        let response = reply.into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[WWW_AUTHENTICATE], "Bearer");
    }
}
