//! Who may use the server: token files, the token check, and the brake on
//! addresses that keep guessing.
//!
//! A server with no tokens lets anyone who reaches its port run containers,
//! which on a Docker host means root. With tokens, every connection must
//! present one of them in its hello; the comparison takes the same time
//! whatever the guess, and an address that fails too often is turned away
//! for a while without its token being looked at.
//!
//! Tokens are secrets: nothing in this crate prints them, and error messages
//! name the file or the address, never the token.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// Failed authentications from one address, within
/// [`DEFAULT_AUTH_FAILURE_WINDOW`], after which it is blocked.
pub const DEFAULT_MAX_AUTH_FAILURES: u32 = 5;

/// How far back failures count, and how long a block lasts.
pub const DEFAULT_AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Addresses whose failures are remembered at once. Past it, expired entries
/// are dropped; if none has expired, a new address is not tracked (it still
/// needs a valid token). This keeps an attacker with many addresses from
/// growing the table without bound.
pub const MAX_TRACKED_ADDRESSES: usize = 65_536;

/// Why a token file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read the token file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// An empty file is refused rather than read as "no token required": a
    /// server started with `--token-file` must never end up open to all.
    #[error("the token file {} holds no token; write one token per line (blank lines and lines starting with # are skipped)", path.display())]
    Empty { path: PathBuf },
}

/// Reads the tokens of a token file: one per line, surrounding whitespace
/// trimmed, blank lines and lines starting with `#` skipped. Several tokens
/// may be valid at once, which is how a token is rotated: add the new one,
/// move the clients over, remove the old one.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("tokens");
/// std::fs::write(&path, "# ops team\nfirst-token\n\nsecond-token\n").unwrap();
/// let tokens = tcp_task::auth::load_token_file(&path).unwrap();
/// assert_eq!(tokens.len(), 2);
/// ```
pub fn load_token_file(path: impl AsRef<Path>) -> Result<Vec<String>, TokenFileError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let tokens: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(String::from)
        .collect();
    if tokens.is_empty() {
        return Err(TokenFileError::Empty {
            path: path.to_owned(),
        });
    }
    warn_if_others_can_read(path);
    Ok(tokens)
}

/// Like ssh with its keys: a token file others can read is worth a warning,
/// not a refusal (the operator may have reasons).
fn warn_if_others_can_read(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    file = %path.display(),
                    "the token file can be read by other users; restrict it with `chmod 600`"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// The index of the token `offered` matches, if any. Every token is compared
/// in full whatever the result, so the time taken does not tell how close a
/// guess came (only its length against each token's, which is no secret
/// worth having). The index is what a per-token policy would key on.
pub(crate) fn matching_token(tokens: &[String], offered: &str) -> Option<usize> {
    use subtle::ConditionallySelectable;
    let mut found = subtle::Choice::from(0);
    let mut index = 0u64;
    for (i, token) in tokens.iter().enumerate() {
        let equal = token.as_bytes().ct_eq(offered.as_bytes());
        index = u64::conditional_select(&index, &(i as u64), equal);
        found |= equal;
    }
    bool::from(found).then_some(index as usize)
}

/// Remembers failed authentications per address and says which addresses
/// are blocked: after `max_failures` failures within `window` of the first,
/// an address is blocked for `window`.
///
/// IPv6 addresses count per /64, the block a single host is usually given;
/// otherwise one machine could guess from 2^64 addresses.
#[derive(Debug)]
pub(crate) struct FailedLogins {
    max_failures: u32,
    window: Duration,
    by_address: Mutex<HashMap<IpAddr, Failures>>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    since: Instant,
    blocked_until: Option<Instant>,
}

impl Failures {
    fn expired(&self, now: Instant, window: Duration) -> bool {
        match self.blocked_until {
            Some(until) => now >= until,
            None => now.duration_since(self.since) >= window,
        }
    }
}

impl FailedLogins {
    pub fn new(max_failures: u32, window: Duration) -> FailedLogins {
        FailedLogins {
            max_failures: max_failures.max(1),
            window,
            by_address: Mutex::default(),
        }
    }

    /// How much longer `ip` stays blocked, if it is.
    pub fn blocked_for(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let table = self.by_address.lock().unwrap();
        let until = table.get(&key(ip))?.blocked_until?;
        (now < until).then(|| until - now)
    }

    /// Counts one failure of `ip`. Returns the failures counted in the
    /// current window, and whether this one started a block.
    pub fn record(&self, ip: IpAddr, now: Instant) -> (u32, bool) {
        let mut table = self.by_address.lock().unwrap();
        let key = key(ip);
        if !table.contains_key(&key) && table.len() >= MAX_TRACKED_ADDRESSES {
            let window = self.window;
            table.retain(|_, failures| !failures.expired(now, window));
            if table.len() >= MAX_TRACKED_ADDRESSES {
                return (1, false);
            }
        }
        let failures = table.entry(key).or_insert(Failures {
            count: 0,
            since: now,
            blocked_until: None,
        });
        if failures.expired(now, self.window) {
            *failures = Failures {
                count: 0,
                since: now,
                blocked_until: None,
            };
        }
        failures.count += 1;
        let starts_block = failures.count >= self.max_failures && failures.blocked_until.is_none();
        if starts_block {
            failures.blocked_until = Some(now + self.window);
        }
        (failures.count, starts_block)
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.by_address.lock().unwrap().len()
    }
}

/// The address failures are counted under: IPv4 as is (IPv4-mapped IPv6
/// too), IPv6 by its /64 prefix.
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u64::MAX as u128))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(60);

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_matching_token_is_found_wherever_it_is() {
        let tokens: Vec<String> = ["alpha", "beta", "gamma"].map(String::from).into();
        assert_eq!(matching_token(&tokens, "alpha"), Some(0));
        assert_eq!(matching_token(&tokens, "gamma"), Some(2));
        assert_eq!(matching_token(&tokens, "gamm"), None);
        assert_eq!(matching_token(&tokens, "gammaa"), None);
        assert_eq!(matching_token(&tokens, ""), None);
        assert_eq!(matching_token(&[], "alpha"), None);
    }

    #[test]
    fn an_address_is_blocked_after_the_maximum_and_freed_after_the_window() {
        let limiter = FailedLogins::new(3, WINDOW);
        let t0 = Instant::now();
        let peer = ip("192.0.2.7");
        assert_eq!(limiter.record(peer, t0), (1, false));
        assert_eq!(limiter.record(peer, t0), (2, false));
        assert_eq!(limiter.blocked_for(peer, t0), None);
        assert_eq!(limiter.record(peer, t0 + WINDOW / 2), (3, true));
        let later = t0 + WINDOW / 2 + Duration::from_secs(1);
        assert_eq!(
            limiter.blocked_for(peer, later),
            Some(WINDOW - Duration::from_secs(1))
        );
        // Another address is not affected.
        assert_eq!(limiter.blocked_for(ip("192.0.2.8"), later), None);
        // The block lasts a whole window from the failure that started it.
        assert_eq!(limiter.blocked_for(peer, t0 + WINDOW + WINDOW / 2), None);
        assert_eq!(limiter.record(peer, t0 + WINDOW + WINDOW / 2), (1, false));
    }

    #[test]
    fn failures_spread_wider_than_the_window_do_not_block() {
        let limiter = FailedLogins::new(3, WINDOW);
        let t0 = Instant::now();
        let peer = ip("192.0.2.7");
        for i in 0..10 {
            let (count, blocks) = limiter.record(peer, t0 + WINDOW * i);
            assert_eq!((count, blocks), (1, false));
        }
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let limiter = FailedLogins::new(2, WINDOW);
        let t0 = Instant::now();
        limiter.record(ip("2001:db8::1"), t0);
        limiter.record(ip("2001:db8::ffff:2"), t0);
        assert!(limiter.blocked_for(ip("2001:db8::3"), t0).is_some());
        assert!(limiter.blocked_for(ip("2001:db8:0:1::3"), t0).is_none());
        limiter.record(ip("::ffff:192.0.2.1"), t0);
        limiter.record(ip("192.0.2.1"), t0);
        assert!(limiter.blocked_for(ip("192.0.2.1"), t0).is_some());
    }

    #[test]
    fn the_table_stays_bounded_under_many_addresses() {
        let limiter = FailedLogins::new(2, WINDOW);
        let t0 = Instant::now();
        for i in 0..(MAX_TRACKED_ADDRESSES as u32 + 1000) {
            limiter.record(IpAddr::V4(i.into()), t0);
        }
        assert_eq!(limiter.tracked(), MAX_TRACKED_ADDRESSES);
        // Once the old entries expire, new addresses are tracked again.
        let later = t0 + WINDOW;
        limiter.record(ip("198.51.100.1"), later);
        limiter.record(ip("198.51.100.1"), later);
        assert!(limiter.blocked_for(ip("198.51.100.1"), later).is_some());
        assert_eq!(limiter.tracked(), 1);
    }

    #[test]
    fn token_files_skip_comments_and_blank_lines_and_refuse_to_be_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(
            &path,
            "# comment\n\n  one  \r\ntwo\n   # indented comment\n",
        )
        .unwrap();
        assert_eq!(load_token_file(&path).unwrap(), ["one", "two"]);

        std::fs::write(&path, "# only comments\n\n").unwrap();
        let err = load_token_file(&path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("holds no token"), "{err}");

        let missing = dir.path().join("missing");
        let err = load_token_file(&missing).unwrap_err().to_string();
        assert!(err.contains(&missing.display().to_string()), "{err}");
    }
}
