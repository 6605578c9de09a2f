//! The pools: per key, containers started ahead of time, handed out one at
//! a time, refilled in the background, within a global budget.
//!
//! - A catalog entry with `warm = N` keeps N ready, always.
//! - A generic key warms up on demand (`demand_threshold` requests within
//!   `demand_window_ms`) to `on_demand` containers, and cools down to none
//!   after `idle_ms` without a request.
//! - A container handed out is replaced when its task ends, or at once
//!   when the pool ran dry (see [`Pool::take`]).
//! - A container whose attach stream closes while idle (it died, or someone
//!   killed it) leaves the pool at once and is replaced; [`Pool::take`] also
//!   skips any that closed, so a dead container is never handed out.
//! - Removal is in the background, off the task's path; [`Pool::settle`]
//!   waits for it, and [`Pool::drain`] empties every pool at shutdown.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::watch;

use super::container::{Launcher, Record, WarmContainer};
use super::key::PoolKey;
use crate::executor::config::WarmConfig;
use crate::executor::stats::PoolStats;
use crate::task::TaskError;

/// How often the pools are checked for cooling down and failed refills.
const TICK: Duration = Duration::from_millis(500);
/// Wait after a failed refill before trying that key again.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// How long a container's agent may take after a task to say it is ready
/// for the next (the reset included); then the container is removed.
const READY_AGAIN: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub(crate) struct Pool {
    launcher: Launcher,
    config: WarmConfig,
    state: Mutex<State>,
    /// Background jobs (refills, removals) still running.
    pending: watch::Sender<usize>,
    serial: AtomicU64,
    ticker: OnceLock<()>,
}

#[derive(Debug, Default)]
struct State {
    pools: HashMap<PoolKey, KeyPool>,
    closed: bool,
}

#[derive(Debug)]
struct KeyPool {
    target: u32,
    /// Set by the catalog: never cools down.
    fixed: bool,
    idle: Vec<WarmContainer>,
    starting: u32,
    in_use: u32,
    hits: u64,
    misses: u64,
    recent: VecDeque<Instant>,
    last_request: Instant,
    retry_at: Option<Instant>,
    /// The program of the latest task for this key: new containers read it
    /// ahead (the agent's `--prefetch`).
    program: Option<String>,
}

impl KeyPool {
    fn new() -> KeyPool {
        KeyPool {
            target: 0,
            fixed: false,
            idle: Vec::new(),
            starting: 0,
            in_use: 0,
            hits: 0,
            misses: 0,
            recent: VecDeque::new(),
            last_request: Instant::now(),
            retry_at: None,
            program: None,
        }
    }

    fn warm(&self) -> u32 {
        self.idle.len() as u32 + self.starting
    }
}

impl Pool {
    pub fn new(launcher: Launcher) -> Pool {
        let config = launcher.config.warm.clone();
        Pool {
            launcher,
            config,
            state: Mutex::new(State::default()),
            pending: watch::Sender::new(0),
            serial: AtomicU64::new(1),
            ticker: OnceLock::new(),
        }
    }

    // Every update under the lock is a few plain assignments, so a panic
    // elsewhere cannot leave the state half-changed: poison is harmless.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `count` more containers for `key` warm from now on (a catalog
    /// entry's `warm`; entries with the same key share one pool, the sum).
    pub fn keep(self: &Arc<Self>, key: PoolKey, count: u32, program: &str) {
        {
            let mut state = self.lock();
            let pool = state.pools.entry(key.clone()).or_insert_with(KeyPool::new);
            pool.program = Some(program.to_owned());
            if !pool.fixed {
                pool.fixed = true;
                pool.target = 0;
            }
            pool.target += count;
        }
        self.replenish(&key);
    }

    /// A ready container for `key`, or `None` (a miss: run cold). Counts
    /// the request towards warming the key up.
    ///
    /// What it took is refilled at once only when the pool ran dry;
    /// otherwise when the task gives the container back (or at the next
    /// tick), so that a short task does not share dockerd and the CPU with
    /// the container start it caused.
    pub fn take(self: &Arc<Self>, key: &PoolKey, program: &str) -> Option<Lease> {
        let (taken, dead, dry) = {
            let mut state = self.lock();
            let pool = state.pools.entry(key.clone()).or_insert_with(KeyPool::new);
            note_request(pool, &self.config);
            if pool.program.as_deref() != Some(program) {
                pool.program = Some(program.to_owned());
            }
            let mut dead = Vec::new();
            let mut taken = None;
            while let Some(container) = pool.idle.pop() {
                if container.closed.is_cancelled() {
                    dead.push(container);
                } else {
                    taken = Some(container);
                    break;
                }
            }
            let dry = pool.idle.is_empty();
            // A named client's pool can start with a container that never
            // served anyone (a catalog entry's `warm` ones are anonymous).
            if taken.is_none() {
                taken = key.anonymous().and_then(|k| take_fresh(&mut state, &k));
            }
            let pool = state.pools.entry(key.clone()).or_insert_with(KeyPool::new);
            match taken {
                Some(_) => {
                    pool.hits += 1;
                    pool.in_use += 1;
                }
                None => pool.misses += 1,
            }
            (taken, dead, dry)
        };
        if let Some(anonymous) = key.anonymous() {
            self.replenish(&anonymous);
        }
        dead.into_iter().for_each(|c| self.retire(c));
        if dry {
            self.replenish(key);
        }
        taken.map(|mut container| {
            container.uses += 1;
            Lease {
                pool: self.clone(),
                key: key.clone(),
                container: Some(container),
                pooled: true,
            }
        })
    }

    /// Launches a container of `key` for one task now, waiting up to
    /// `ready` for it (an HTTP task that found none ready). It belongs to
    /// no pool: it is removed once the task is done with it.
    pub async fn launch_now(
        self: &Arc<Self>,
        key: &PoolKey,
        ready: Duration,
    ) -> Result<Lease, TaskError> {
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let mut container = self.launcher.launch(key, serial, None, ready).await?;
        container.uses = 1;
        Ok(Lease {
            pool: self.clone(),
            key: key.clone(),
            container: Some(container),
            pooled: false,
        })
    }

    /// Takes back a container after a task: idle again when it may serve
    /// more tasks and its agent says it is ready again (after a reset, for
    /// a `reset` key), else removed. Either way the pool is topped up.
    fn give_back(self: &Arc<Self>, key: &PoolKey, container: WarmContainer, reusable: bool) {
        let may_serve = reusable
            && !self.lock().closed
            && container.uses < key.reuse
            && !container.closed.is_cancelled();
        if !may_serve {
            return self.returned(key, container, false);
        }
        let pool = self.clone();
        let key = key.clone();
        self.background(async move {
            let mut container = container;
            let ready = ready_again(&mut container).await;
            pool.returned(&key, container, ready);
        });
    }

    /// A container is back from a task: idle when `fit`, else removed.
    fn returned(self: &Arc<Self>, key: &PoolKey, container: WarmContainer, fit: bool) {
        let unused = {
            let mut state = self.lock();
            let closed = state.closed;
            match state.pools.get_mut(key) {
                Some(pool) => {
                    pool.in_use = pool.in_use.saturating_sub(1);
                    // Its death watch, set when it was filled, still holds.
                    if fit && !closed && !container.closed.is_cancelled() {
                        pool.idle.push(container);
                        None
                    } else {
                        Some(container)
                    }
                }
                None => Some(container),
            }
        };
        if let Some(container) = unused {
            self.retire(container);
        }
        self.replenish(key);
    }

    /// A leased container left the pool for good (see [`Lease::keep`]).
    fn hand_over(self: &Arc<Self>, key: &PoolKey) {
        if let Some(pool) = self.lock().pools.get_mut(key) {
            pool.in_use = pool.in_use.saturating_sub(1);
        }
        self.replenish(key);
    }

    /// Removes a container in the background.
    fn retire(self: &Arc<Self>, container: WarmContainer) {
        self.background(async move {
            if let Err(e) = container.guard.remove().await {
                tracing::warn!(error = %e, "a warm container could not be removed");
            }
        });
    }

    /// Runs `job` in the background, counted until it ends.
    fn background(self: &Arc<Self>, job: impl Future<Output = ()> + Send + 'static) {
        self.pending.send_modify(|n| *n += 1);
        let pool = self.clone();
        tokio::spawn(async move {
            job.await;
            pool.pending.send_modify(|n| *n -= 1);
        });
    }

    /// Starts as many containers for `key` as its target, the budget and a
    /// recent failure allow.
    fn replenish(self: &Arc<Self>, key: &PoolKey) {
        self.start_ticker();
        let (count, program) = {
            let mut state = self.lock();
            let room = self.room(&state, key);
            let Some(pool) = state.pools.get_mut(key) else {
                return;
            };
            if pool.retry_at.is_some_and(|at| Instant::now() < at) {
                return;
            }
            let count = pool.target.saturating_sub(pool.warm()).min(room);
            pool.starting += count;
            (count, pool.program.clone())
        };
        for _ in 0..count {
            self.spawn_fill(key.clone(), program.clone());
        }
    }

    /// How many more containers the global budget allows, for `key`.
    fn room(&self, state: &State, key: &PoolKey) -> u32 {
        if state.closed || !self.config.enabled {
            return 0;
        }
        let count: u32 = state.pools.values().map(KeyPool::warm).sum();
        let memory: u64 = state
            .pools
            .iter()
            .map(|(k, p)| k.memory_bytes * u64::from(p.warm()))
            .sum();
        let by_count = self.config.max_containers.saturating_sub(count);
        let free_memory = self.config.max_memory_bytes.saturating_sub(memory);
        let by_memory = free_memory / key.memory_bytes.max(1);
        by_count.min(u32::try_from(by_memory).unwrap_or(u32::MAX))
    }

    fn spawn_fill(self: &Arc<Self>, key: PoolKey, program: Option<String>) {
        let pool = self.clone();
        self.background(async move {
            let serial = pool.serial.fetch_add(1, Ordering::Relaxed);
            let ready = Duration::from_millis(pool.config.ready_timeout_ms);
            let launched = pool
                .launcher
                .launch(&key, serial, program.as_deref(), ready)
                .await;
            pool.filled(&key, launched);
        });
    }

    /// A refill finished: the container joins the pool, unless the pool
    /// shrank or closed meanwhile.
    fn filled(self: &Arc<Self>, key: &PoolKey, launched: Result<WarmContainer, TaskError>) {
        let surplus = {
            let mut state = self.lock();
            let closed = state.closed;
            let Some(pool) = state.pools.get_mut(key) else {
                return;
            };
            pool.starting = pool.starting.saturating_sub(1);
            match launched {
                Ok(container) if !closed && pool.warm() < pool.target => {
                    pool.retry_at = None;
                    self.watch_death(key, &container);
                    pool.idle.push(container);
                    None
                }
                Ok(container) => Some(container),
                Err(e) => {
                    tracing::warn!(pool = %key, error = %e, "a warm container could not be started");
                    pool.retry_at = Some(Instant::now() + RETRY_AFTER);
                    None
                }
            }
        };
        if let Some(container) = surplus {
            self.retire(container);
        }
    }

    /// When an idle container's stream closes, it leaves the pool and is
    /// replaced, without waiting for someone to try it.
    fn watch_death(self: &Arc<Self>, key: &PoolKey, container: &WarmContainer) {
        let weak: Weak<Pool> = Arc::downgrade(self);
        let closed = container.closed.clone();
        let id = container.id.clone();
        let key = key.clone();
        tokio::spawn(async move {
            closed.cancelled().await;
            if let Some(pool) = weak.upgrade() {
                pool.forget_dead(&key, &id);
            }
        });
    }

    fn forget_dead(self: &Arc<Self>, key: &PoolKey, id: &str) {
        let dead = {
            let mut state = self.lock();
            let Some(pool) = state.pools.get_mut(key) else {
                return;
            };
            let at = pool.idle.iter().position(|c| c.id == id);
            at.map(|i| pool.idle.swap_remove(i))
        };
        if let Some(container) = dead {
            tracing::info!(container = %container.id, "a warm container died while idle; replacing it");
            self.retire(container);
            self.replenish(key);
        }
    }

    /// Starts the periodic check, once, on first use (it needs a runtime).
    fn start_ticker(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        self.ticker.get_or_init(|| {
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(TICK).await;
                    let Some(pool) = weak.upgrade() else { return };
                    if !pool.tick() {
                        return;
                    }
                }
            });
        });
    }

    /// Cools idle on-demand pools down and retries failed refills. False
    /// once the pools are closed.
    fn tick(self: &Arc<Self>) -> bool {
        let idle_for = Duration::from_millis(self.config.idle_ms);
        let (keys, cold) = {
            let mut state = self.lock();
            if state.closed {
                return false;
            }
            let mut cold = Vec::new();
            for pool in state.pools.values_mut() {
                if !pool.fixed && pool.last_request.elapsed() > idle_for {
                    pool.target = 0;
                    cold.append(&mut pool.idle);
                }
            }
            // A key is forgotten once nothing of it is left and its last
            // request is too old to count towards demand.
            let window = Duration::from_millis(self.config.demand_window_ms);
            state.pools.retain(|_, p| {
                p.fixed
                    || p.target > 0
                    || p.starting + p.in_use > 0
                    || p.last_request.elapsed() <= window
            });
            (state.pools.keys().cloned().collect::<Vec<_>>(), cold)
        };
        cold.into_iter().for_each(|c| self.retire(c));
        keys.iter().for_each(|key| self.replenish(key));
        true
    }

    pub fn stats(&self) -> Vec<PoolStats> {
        let state = self.lock();
        let mut pools: Vec<PoolStats> = state
            .pools
            .iter()
            .map(|(key, pool)| PoolStats {
                key: key.to_string(),
                warm: pool.idle.len() as u64,
                in_use: u64::from(pool.in_use),
                hits: pool.hits,
                misses: pool.misses,
            })
            .collect();
        pools.sort_by(|a, b| a.key.cmp(&b.key));
        pools
    }

    /// Waits until no refill or removal is running.
    pub async fn settle(&self) {
        let mut pending = self.pending.subscribe();
        let _ = pending.wait_for(|n| *n == 0).await;
    }

    /// Stops refilling, removes every idle container, and waits for the
    /// background work: the pools are empty when it returns.
    pub async fn drain(self: &Arc<Self>) {
        let idle: Vec<WarmContainer> = {
            let mut state = self.lock();
            state.closed = true;
            state
                .pools
                .values_mut()
                .flat_map(|p| std::mem::take(&mut p.idle))
                .collect()
        };
        idle.into_iter().for_each(|c| self.retire(c));
        self.settle().await;
    }
}

/// A container handed to one task. Given back with [`Lease::finish`]; if
/// the task's future is dropped instead, `Drop` gives it back as unfit, so
/// it is removed and the pool's count stays right.
#[derive(Debug)]
pub(crate) struct Lease {
    pool: Arc<Pool>,
    key: PoolKey,
    container: Option<WarmContainer>,
    /// False for a container launched for this one task (an HTTP task
    /// that found none ready): it is removed after, and no pool counts it.
    pooled: bool,
}

impl Lease {
    /// The container; `None` only after `finish`, which consumes the lease.
    pub fn container(&mut self) -> Option<&mut WarmContainer> {
        self.container.as_mut()
    }

    /// Takes the container out of the pool for good without removing it
    /// (a kept task's); the pool makes another. Gives its id.
    pub fn keep(mut self) -> Option<String> {
        let container = self.container.take()?;
        self.pool.hand_over(&self.key);
        Some(container.guard.keep())
    }

    /// Gives the container back; `reusable` when it may serve another task.
    pub fn finish(mut self, reusable: bool) {
        if let Some(container) = self.container.take() {
            self.release(container, reusable);
        }
    }

    fn release(&self, container: WarmContainer, reusable: bool) {
        if self.pooled {
            self.pool.give_back(&self.key, container, reusable);
        } else {
            self.pool.retire(container);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(container) = self.container.take() {
            self.release(container, false);
        }
    }
}

/// A live container of `key`'s pool that never served a task, taken out.
fn take_fresh(state: &mut State, key: &PoolKey) -> Option<WarmContainer> {
    let pool = state.pools.get_mut(key)?;
    let at = pool
        .idle
        .iter()
        .position(|c| c.uses == 0 && !c.closed.is_cancelled())?;
    Some(pool.idle.swap_remove(at))
}

/// Waits for the agent to say it is ready for another task, which it does
/// once it has ended what the last task left running and, for a `reset`
/// key, reset the container and checked it. Anything else (the container
/// ended: a failed reset; a stray frame; no answer in [`READY_AGAIN`])
/// makes the container unfit.
async fn ready_again(container: &mut WarmContainer) -> bool {
    let answer = tokio::time::timeout(READY_AGAIN, container.records.recv()).await;
    match answer {
        Ok(Some(Record::Ready)) => true,
        Ok(None) => {
            let why = container
                .diagnostics
                .lock()
                .map(|d| d.clone())
                .unwrap_or_default();
            tracing::info!(container = %container.id, reason = %why.trim(), "a warm container was not fit for another task; removing it");
            false
        }
        Ok(Some(_)) | Err(_) => false,
    }
}

/// Counts a request for a key; enough of them in the window warm a
/// generic key up.
fn note_request(pool: &mut KeyPool, config: &WarmConfig) {
    let now = Instant::now();
    pool.last_request = now;
    let window = Duration::from_millis(config.demand_window_ms);
    while pool
        .recent
        .front()
        .is_some_and(|t| now.duration_since(*t) > window)
    {
        pool.recent.pop_front();
    }
    pool.recent.push_back(now);
    let threshold = config.demand_threshold as usize;
    if !pool.fixed && threshold > 0 && pool.recent.len() >= threshold {
        pool.target = pool.target.max(config.on_demand);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demand_warms_generic_keys_up_and_leaves_fixed_ones_alone() {
        let config = WarmConfig {
            demand_threshold: 3,
            on_demand: 2,
            ..WarmConfig::default()
        };
        let mut pool = KeyPool::new();
        note_request(&mut pool, &config);
        note_request(&mut pool, &config);
        assert_eq!(pool.target, 0);
        note_request(&mut pool, &config);
        assert_eq!(pool.target, 2);
        let mut fixed = KeyPool::new();
        fixed.fixed = true;
        fixed.target = 5;
        for _ in 0..10 {
            note_request(&mut fixed, &config);
        }
        assert_eq!(fixed.target, 5);
        let never = WarmConfig {
            demand_threshold: 0,
            ..config
        };
        let mut pool = KeyPool::new();
        for _ in 0..10 {
            note_request(&mut pool, &never);
        }
        assert_eq!(pool.target, 0);
    }
}
