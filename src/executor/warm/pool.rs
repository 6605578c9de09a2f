//! The pools: per key, containers started ahead of time, handed out one at
//! a time, refilled in the background, within a global budget.
//!
//! - A catalog entry with `warm = N` keeps N ready, always.
//! - A generic key warms up on demand (`demand_threshold` requests within
//!   `demand_window_ms`) to `on_demand` containers, and cools down to none
//!   after `idle_ms` without a request.
//! - A container handed out is replaced when its task ends, or at once
//!   when the pool ran dry (see [`Pool::take`]).
//! - A container whose agent's channel closes while idle (it died, or someone
//!   killed it) leaves the pool at once and is replaced; [`Pool::take`] also
//!   skips any that closed, so a dead container is never handed out.
//! - Removal is in the background, off the task's path; [`Pool::settle`]
//!   waits for it, and [`Pool::drain`] empties every pool at shutdown.
//! - Pools follow demand within the budget: each request that finds none
//!   ready grows its pool by one (its `burst`; a single-use pool only once
//!   it is warm at all), so that a burst has
//!   containers started for it while its first tasks run; after
//!   [`SHRINK_AFTER`] without such a miss the pool shrinks by one a tick
//!   back to its base, and once it had no request for as long, its idle
//!   containers beyond that are removed, one a tick.
//! - At most [`MAX_STARTING`] containers start at once, all pools
//!   together: more would only slow each start (the engine serialises
//!   much of it) and leave tasks waiting longer for the first ones.
//! - A task of a pool whose containers serve several tasks (`reuse`) that
//!   finds none ready waits up to [`WAIT_FOR_WARM`] for the next one (a
//!   container coming back from its task, or a new one) instead of paying
//!   for a cold container that would serve it alone.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

use super::channel::Record;
use super::container::{Launcher, WarmContainer};
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
/// Containers starting at once, all pools together.
pub(crate) const MAX_STARTING: u32 = 4;
/// A pool grown by misses shrinks back one container a tick after this
/// long without a miss.
pub(crate) const SHRINK_AFTER: Duration = Duration::from_secs(5);
/// How long a task of a `reuse` pool waits for a container of its pool
/// before it runs cold.
pub(crate) const WAIT_FOR_WARM: Duration = Duration::from_secs(10);

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
    /// The base size: the catalog's `warm`, or `on_demand` once warm.
    target: u32,
    /// Containers added on top by recent misses.
    burst: u32,
    last_miss: Instant,
    /// Tasks waiting for the next ready container, first come first served.
    waiters: VecDeque<oneshot::Sender<WarmContainer>>,
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
            burst: 0,
            last_miss: Instant::now(),
            waiters: VecDeque::new(),
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

    fn wanted(&self) -> u32 {
        self.target + self.burst
    }

    /// The containers the pool has: ready or starting, and for a pool
    /// whose containers come back after their task, those in use too.
    fn size(&self, key: &PoolKey) -> u32 {
        let back = if key.reuse > 1 { self.in_use } else { 0 };
        self.warm() + back
    }

    /// A ready container: to the first task still waiting, else idle.
    fn put_back(&mut self, container: WarmContainer) {
        if let Some(container) = self.offer(container) {
            self.idle.push(container);
        }
    }

    /// Gives `container` to the first task still waiting; it comes back
    /// when none is.
    fn offer(&mut self, mut container: WarmContainer) -> Option<WarmContainer> {
        while let Some(waiter) = self.waiters.pop_front() {
            match waiter.send(container) {
                Ok(()) => {
                    self.in_use += 1;
                    self.hits += 1;
                    return None;
                }
                Err(back) => container = back,
            }
        }
        Some(container)
    }
}

/// What [`Pool::take`] found.
pub(crate) enum Take {
    Hit(Lease),
    /// None ready, but one of the pool's containers will be: wait for it.
    Wait(Waiter),
    /// Run cold.
    Miss,
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
    pub fn take(self: &Arc<Self>, key: &PoolKey, program: &str) -> Take {
        let (taken, dead, dry, waiter) = {
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
            let mut waiter = None;
            match taken {
                Some(_) => {
                    pool.hits += 1;
                    pool.in_use += 1;
                }
                None if key.reuse > 1 => {
                    // One more start for each waiting task that neither a
                    // start nor a container coming back from its task
                    // (in use) already covers.
                    if (pool.starting + pool.in_use) as usize <= pool.waiters.len() {
                        grow(pool, self.config.max_containers);
                    }
                    {
                        let (tx, rx) = oneshot::channel();
                        pool.waiters.push_back(tx);
                        waiter = Some(rx);
                    }
                }
                None => {
                    // Only a pool that is warm at all (the catalog's, or
                    // warmed up by demand) grows: a one-off task leaves
                    // nothing behind.
                    if pool.target > 0 {
                        grow(pool, self.config.max_containers);
                    }
                    pool.misses += 1;
                }
            }
            (taken, dead, dry, waiter)
        };
        if let Some(anonymous) = key.anonymous() {
            self.replenish(&anonymous);
        }
        dead.into_iter().for_each(|c| self.retire(c));
        if dry {
            self.replenish(key);
        }
        if let Some(rx) = waiter {
            return self.wait_or_miss(key, rx);
        }
        match taken {
            Some(container) => Take::Hit(self.lease(key, container)),
            None => Take::Miss,
        }
    }

    /// A waiter for `key`, or a miss when no container of the pool is in
    /// use or starting (the budget is spent, or refills are failing).
    fn wait_or_miss(self: &Arc<Self>, key: &PoolKey, rx: oneshot::Receiver<WarmContainer>) -> Take {
        let coming = self
            .lock()
            .pools
            .get(key)
            .is_some_and(|p| p.starting + p.in_use > 0);
        let waiter = Waiter {
            rx,
            pool: self.clone(),
            key: key.clone(),
        };
        if coming {
            Take::Wait(waiter)
        } else {
            waiter.gave_up();
            Take::Miss
        }
    }

    fn lease(self: &Arc<Self>, key: &PoolKey, mut container: WarmContainer) -> Lease {
        container.uses += 1;
        Lease {
            pool: self.clone(),
            key: key.clone(),
            container: Some(container),
            pooled: true,
        }
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
                        pool.put_back(container);
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
            let count = pool.wanted().saturating_sub(pool.size(key)).min(room);
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
        let count: u32 = state.pools.iter().map(|(k, p)| p.size(k)).sum();
        let memory: u64 = state
            .pools
            .iter()
            .map(|(k, p)| k.memory_bytes * u64::from(p.size(k)))
            .sum();
        let starting: u32 = state.pools.values().map(|p| p.starting).sum();
        let by_count = self.config.max_containers.saturating_sub(count);
        let free_memory = self.config.max_memory_bytes.saturating_sub(memory);
        let by_memory = free_memory / key.memory_bytes.max(1);
        let by_starting = MAX_STARTING.saturating_sub(starting);
        by_count
            .min(by_starting)
            .min(u32::try_from(by_memory).unwrap_or(u32::MAX))
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
            let wanted = pool.size(key) < pool.wanted() || !pool.waiters.is_empty();
            match launched {
                Ok(container) if !closed && wanted => {
                    pool.retry_at = None;
                    self.watch_death(key, &container);
                    pool.put_back(container);
                    None
                }
                Ok(container) => Some(container),
                Err(e) => {
                    tracing::warn!(pool = %key, error = %e, "a warm container could not be started");
                    pool.retry_at = Some(Instant::now() + RETRY_AFTER);
                    // Waiting tasks run cold rather than wait for a retry.
                    pool.waiters.clear();
                    None
                }
            }
        };
        if let Some(container) = surplus {
            self.retire(container);
        }
        // The budget of starts it held may let another pool start one.
        let keys: Vec<PoolKey> = self.lock().pools.keys().cloned().collect();
        keys.iter().for_each(|k| self.replenish(k));
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
            for (key, pool) in state.pools.iter_mut() {
                if !pool.fixed && pool.last_request.elapsed() > idle_for {
                    pool.target = 0;
                    pool.burst = 0;
                    cold.append(&mut pool.idle);
                }
                shrink(pool);
                cold.extend(surplus(pool, key));
            }
            // A key is forgotten once nothing of it is left and its last
            // request is too old to count towards demand.
            let window = Duration::from_millis(self.config.demand_window_ms);
            state.pools.retain(|_, p| {
                p.fixed
                    || p.wanted() > 0
                    || !p.idle.is_empty()
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

/// A miss grows the pool by one, up to the whole budget.
fn grow(pool: &mut KeyPool, max: u32) {
    pool.last_miss = Instant::now();
    pool.burst = (pool.burst + 1).min(max.saturating_sub(pool.target));
}

/// One container less a tick once misses stopped for [`SHRINK_AFTER`].
fn shrink(pool: &mut KeyPool) {
    if pool.burst > 0 && pool.last_miss.elapsed() > SHRINK_AFTER {
        pool.burst -= 1;
    }
}

/// An idle container beyond what the pool wants, taken out, once the pool
/// had no request for [`SHRINK_AFTER`]: one a tick, the oldest first. (A
/// `reuse` pool's containers come back after each task whatever its size,
/// so they are only shed when quiet.)
fn surplus(pool: &mut KeyPool, key: &PoolKey) -> Option<WarmContainer> {
    let quiet = pool.last_request.elapsed() > SHRINK_AFTER;
    let over = pool.size(key) > pool.wanted() && !pool.idle.is_empty();
    (quiet && over).then(|| pool.idle.remove(0))
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

/// A task waiting for the next ready container of its pool. Dropped
/// without having it (the task was cancelled), it gives back whatever was
/// handed to it meanwhile.
pub(crate) struct Waiter {
    rx: oneshot::Receiver<WarmContainer>,
    pool: Arc<Pool>,
    key: PoolKey,
}

impl Waiter {
    /// The container, or `None` after `limit` (or if the pool gave up on
    /// its waiters): run cold.
    pub async fn wait(mut self, limit: Duration) -> Option<Lease> {
        match tokio::time::timeout(limit, &mut self.rx).await {
            Ok(Ok(container)) => Some(self.pool.lease(&self.key, container)),
            _ => {
                self.gave_up();
                None
            }
        }
    }

    /// Counts the miss: the task runs cold.
    fn gave_up(&self) {
        if let Some(pool) = self.pool.lock().pools.get_mut(&self.key) {
            pool.misses += 1;
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.rx.close();
        if let Ok(container) = self.rx.try_recv() {
            self.pool.returned(&self.key, container, true);
        }
    }
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
            let why = container.diagnostics.text().await;
            tracing::info!(container = %container.id, reason = %why, "a warm container was not fit for another task; removing it");
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
    fn misses_grow_a_pool_within_the_budget_and_quiet_shrinks_it() {
        let mut pool = KeyPool::new();
        pool.target = 2;
        for _ in 0..20 {
            grow(&mut pool, 16);
        }
        assert_eq!(pool.wanted(), 16, "never past the budget");
        shrink(&mut pool);
        assert_eq!(pool.burst, 14, "no shrinking right after a miss");
        pool.last_miss = Instant::now() - SHRINK_AFTER - Duration::from_millis(1);
        for _ in 0..20 {
            shrink(&mut pool);
        }
        assert_eq!(pool.wanted(), 2, "back to the base, not below");
    }

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
