//! Which kept results go: those past their time, then the oldest while
//! there are too many or they hold too many bytes. A plain function of
//! what is kept, so the rule is tested without a server.

use std::time::Instant;

use crate::task::TaskId;

/// An ended task whose result is kept.
#[derive(Debug, Clone)]
pub(crate) struct KeptResult {
    pub id: TaskId,
    pub ended_at: Instant,
    pub expires_at: Instant,
    pub bytes: u64,
}

/// The bounds on what is kept.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    pub max_count: usize,
    pub max_bytes: u64,
}

/// The results to forget at `now`, oldest first.
pub(crate) fn to_forget(now: Instant, mut kept: Vec<KeptResult>, bounds: Bounds) -> Vec<TaskId> {
    kept.sort_by_key(|k| k.ended_at);
    let (expired, left): (Vec<_>, Vec<_>) = kept.into_iter().partition(|k| k.expires_at <= now);
    let mut gone: Vec<TaskId> = expired.into_iter().map(|k| k.id).collect();
    let mut bytes: u64 = left.iter().map(|k| k.bytes).sum();
    let mut oldest = 0;
    while left.len() - oldest > bounds.max_count || bytes > bounds.max_bytes {
        let k = &left[oldest];
        bytes -= k.bytes;
        gone.push(k.id.clone());
        oldest += 1;
    }
    gone
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn kept(n: u128, ended: Instant, ttl: Duration, bytes: u64) -> KeptResult {
        KeptResult {
            id: TaskId::from_random(n),
            ended_at: ended,
            expires_at: ended + ttl,
            bytes,
        }
    }

    #[test]
    fn expired_results_go_then_the_oldest_past_the_bounds() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let results = vec![
            kept(3, t0 + s(3), s(100), 10),
            kept(1, t0 + s(1), s(100), 10),
            kept(9, t0, s(5), 10),
            kept(2, t0 + s(2), s(100), 10),
        ];
        let now = t0 + s(6);
        let loose = Bounds {
            max_count: 10,
            max_bytes: 1000,
        };
        assert_eq!(
            to_forget(now, results.clone(), loose),
            vec![TaskId::from_random(9)]
        );
        let two = Bounds {
            max_count: 2,
            max_bytes: 1000,
        };
        assert_eq!(
            to_forget(now, results.clone(), two),
            vec![TaskId::from_random(9), TaskId::from_random(1)]
        );
        let few_bytes = Bounds {
            max_count: 10,
            max_bytes: 15,
        };
        assert_eq!(
            to_forget(now, results, few_bytes),
            vec![
                TaskId::from_random(9),
                TaskId::from_random(1),
                TaskId::from_random(2)
            ]
        );
    }
}
