//! The HTTP listener's settings (`[http]` in the config file): where it
//! listens, and a named bound on everything a client sends it.

use serde::Deserialize;
use std::time::Duration;

pub const DEFAULT_HTTP_MAX_CONNECTIONS: usize = 256;
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;

/// The `[http]` table. Off unless `listen` (or `serve --http`) names an
/// address; every bound has a default.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the HTTP listener; `serve --http` overrides it.
    pub listen: Option<String>,
    /// HTTP connections served at once; more are closed as they come.
    pub max_connections: usize,
    /// Time a client has to send a request's headers. It runs from the
    /// moment the server waits for a request, so it is also how long a
    /// kept-alive connection may sit idle, and it bounds the TLS handshake.
    #[serde(with = "secs")]
    pub header_read_timeout: Duration,
    /// The most bytes of a request's headers (hyper's read buffer; at
    /// least 8192).
    pub max_header_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig {
            listen: None,
            max_connections: DEFAULT_HTTP_MAX_CONNECTIONS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
        }
    }
}

mod secs {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}
