//! Triggers: what connects a queue or a topic subscription to a function.
//! Each trigger runs a loop that leases batches from its source and invokes
//! the function, at most `max_concurrency` invocations at once and at most
//! `rate_limit` per second; the rest waits durably in the source. Retries,
//! backoff and dead-lettering are the source's, through the delivery engine.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sluice_broker::context::{self, EventContext};
use sluice_broker::delivery::{self, Release, ReleaseCause};
use sluice_broker::{Broker, Delivery, Error as BrokerError, Nack};
use sluice_types::metrics::{COUNT_BUCKETS, Histogram};
use sluice_types::{HumanDuration, Name};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::lineage::DeadLettered;
use crate::{Error, Functions, Input, Result, Target};

/// Limits on a trigger's settings.
pub mod limits {
    use sluice_types::HumanDuration;
    pub const BATCH_MAX: u32 = 1_000;
    pub const WINDOW_MAX: HumanDuration = HumanDuration::from_millis(5 * 60 * 1000);
    pub const CONCURRENCY_MAX: u32 = 1_000;
    pub const RATE_MAX: f64 = 100_000.0;
}

/// Where a trigger's events come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Source {
    /// A queue: each message becomes a CloudEvent of type `sluice.queue.message`.
    Queue(String),
    /// A pull subscription of a topic: its CloudEvents as published.
    Subscription { topic: String, subscription: String },
}

/// A trigger's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerConfig {
    pub function: String,
    /// The alias invoked (default `live`).
    #[serde(default = "live")]
    pub alias: String,
    pub source: Source,
    /// Most events per invocation.
    #[serde(default = "one")]
    pub batch_size: u32,
    /// How long to wait to fill a batch once its first event is in.
    #[serde(default)]
    pub batch_window: HumanDuration,
    /// Most invocations of this trigger at once.
    #[serde(default = "four")]
    pub max_concurrency: u32,
    /// Most invocations started per second, if set.
    #[serde(default)]
    pub rate_limit: Option<f64>,
    /// A paused trigger leases nothing; events wait in the source.
    #[serde(default)]
    pub paused: bool,
}

fn live() -> String {
    crate::LIVE.to_owned()
}
fn one() -> u32 {
    1
}
fn four() -> u32 {
    4
}

impl TriggerConfig {
    /// Checks every setting; the message names the setting.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.batch_size == 0 || self.batch_size > limits::BATCH_MAX {
            return Err(format!(
                "batch_size {} is outside 1..={}",
                self.batch_size,
                limits::BATCH_MAX
            ));
        }
        if self.batch_window > limits::WINDOW_MAX {
            return Err(format!(
                "batch_window {} is over {}",
                self.batch_window,
                limits::WINDOW_MAX
            ));
        }
        if self.max_concurrency == 0 || self.max_concurrency > limits::CONCURRENCY_MAX {
            return Err(format!(
                "max_concurrency {} is outside 1..={}",
                self.max_concurrency,
                limits::CONCURRENCY_MAX
            ));
        }
        if let Some(r) = self.rate_limit
            && !(r > 0.0 && r <= limits::RATE_MAX)
        {
            return Err(format!(
                "rate_limit {r} is outside (0, {}]",
                limits::RATE_MAX
            ));
        }
        crate::registry::check_alias(&self.alias)
    }

    fn queue(&self) -> String {
        match &self.source {
            Source::Queue(q) => q.clone(),
            Source::Subscription {
                topic,
                subscription,
            } => Broker::subscription_queue(topic, subscription),
        }
    }
}

/// Token bucket for a trigger's rate limit: a pure core over milliseconds.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    last_ms: u64,
}

impl RateLimiter {
    /// A bucket allowing `per_sec` on average with bursts of up to one second's worth (at least 1).
    pub fn new(per_sec: f64, now_ms: u64) -> Self {
        let burst = per_sec.max(1.0);
        Self {
            per_sec,
            burst,
            tokens: burst,
            last_ms: now_ms,
        }
    }

    /// Takes a token at `now_ms`, or says how many milliseconds until one is there.
    pub fn try_acquire(&mut self, now_ms: u64) -> std::result::Result<(), u64> {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        self.last_ms = self.last_ms.max(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err((((1.0 - self.tokens) / self.per_sec) * 1000.0)
                .ceil()
                .max(1.0) as u64)
        }
    }
}

/// Counters of one trigger since the server started.
#[derive(Debug)]
pub struct TriggerStats {
    pub invocations: AtomicU64,
    pub events: AtomicU64,
    /// Invocations that failed as a whole (error, trap, timeout, commit refused).
    pub errors: AtomicU64,
    pub partial_failures: AtomicU64,
    pub in_flight: AtomicU64,
    /// The most invocations that ran at once.
    pub max_in_flight: AtomicU64,
    /// Times a batch waited for a concurrency slot.
    pub throttled_concurrency: AtomicU64,
    /// Times an invocation waited for the rate limit.
    pub throttled_rate: AtomicU64,
    /// Events stopped as loops (past the hop limit).
    pub loops_stopped: AtomicU64,
    /// Times the trigger paused because a budget governing it was exhausted.
    pub throttled_budget: AtomicU64,
    /// The exhausted budget the trigger waits on, if any.
    pub budget_paused: Mutex<Option<String>>,
    /// Events per invocation.
    pub batch_sizes: Histogram,
    pub last_error: Mutex<Option<String>>,
}

impl Default for TriggerStats {
    fn default() -> Self {
        Self {
            invocations: AtomicU64::new(0),
            events: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            partial_failures: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            throttled_concurrency: AtomicU64::new(0),
            throttled_rate: AtomicU64::new(0),
            loops_stopped: AtomicU64::new(0),
            throttled_budget: AtomicU64::new(0),
            budget_paused: Mutex::new(None),
            batch_sizes: Histogram::new(COUNT_BUCKETS),
            last_error: Mutex::new(None),
        }
    }
}

/// A trigger as answered by get and list.
#[derive(Debug, Clone)]
pub struct TriggerInfo {
    pub name: String,
    pub config: TriggerConfig,
    pub stats: Arc<TriggerStats>,
}

struct Running {
    config: TriggerConfig,
    stats: Arc<TriggerStats>,
    stop: CancellationToken,
    paused: watch::Sender<bool>,
}

/// The triggers of a server and their loops.
#[derive(Clone)]
pub struct Triggers {
    inner: Arc<TriggersInner>,
}

struct TriggersInner {
    functions: Functions,
    broker: Broker,
    running: Mutex<HashMap<String, Running>>,
    lock: tokio::sync::Mutex<()>,
    cancel: CancellationToken,
    hops_max: u32,
}

fn trigger_key(name: &str) -> Vec<u8> {
    let mut k = b"t\0".to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

impl Triggers {
    /// Loads the stored triggers and starts their loops, which stop when `cancel` is.
    /// Events `hops_max` hops from their root are not handled: they are stopped as loops.
    pub fn start(
        functions: Functions,
        broker: Broker,
        cancel: CancellationToken,
        hops_max: u32,
    ) -> Result<Self> {
        let this = Self {
            inner: Arc::new(TriggersInner {
                functions: functions.clone(),
                broker,
                running: Mutex::new(HashMap::new()),
                lock: tokio::sync::Mutex::new(()),
                cancel,
                hops_max,
            }),
        };
        for (k, v) in functions.inner.ks.range(b"t\0", b"t\x01", usize::MAX)? {
            let name = String::from_utf8_lossy(&k[2..]).into_owned();
            let config: TriggerConfig =
                serde_json::from_slice(&v).map_err(|e| Error::Corrupt(e.to_string()))?;
            this.launch(&name, config, Arc::default());
        }
        Ok(this)
    }

    fn launch(&self, name: &str, config: TriggerConfig, stats: Arc<TriggerStats>) {
        let stop = self.inner.cancel.child_token();
        let (paused_tx, paused_rx) = watch::channel(config.paused);
        let runner = Runner {
            name: name.to_owned(),
            config: config.clone(),
            stats: stats.clone(),
            functions: self.inner.functions.clone(),
            broker: self.inner.broker.clone(),
            stop: stop.clone(),
            paused: paused_rx,
            hops_max: self.inner.hops_max,
        };
        tokio::spawn(runner.run());
        let old = self.inner.running.lock().unwrap().insert(
            name.to_owned(),
            Running {
                config,
                stats,
                stop,
                paused: paused_tx,
            },
        );
        if let Some(old) = old {
            old.stop.cancel();
        }
    }

    /// Creates or replaces trigger `name`. Returns whether it was created.
    pub async fn put(&self, name: &Name, config: TriggerConfig) -> Result<bool> {
        config.validate().map_err(Error::InvalidSettings)?;
        self.inner
            .functions
            .resolve(&config.function, &Target::Alias(config.alias.clone()))?;
        match &config.source {
            Source::Queue(q) => {
                self.inner.broker.get_queue(q)?;
            }
            Source::Subscription {
                topic,
                subscription,
            } => {
                let sub = self.inner.broker.get_subscription(topic, subscription)?;
                if !matches!(sub.config.target, sluice_broker::Target::Pull) {
                    return Err(Error::InvalidSettings(format!(
                        "subscription {subscription:?} forwards to a queue; trigger on that queue instead"
                    )));
                }
            }
        }
        let _lock = self.inner.lock.lock().await;
        let queue = config.queue();
        let taken = self
            .inner
            .running
            .lock()
            .unwrap()
            .iter()
            .find_map(|(n, r)| {
                (n != name.as_str() && r.config.queue() == queue).then(|| n.clone())
            });
        if let Some(other) = taken {
            return Err(Error::InvalidSettings(format!(
                "trigger {other:?} already consumes {queue:?}; a source feeds one trigger"
            )));
        }
        let store = &self.inner.functions.inner.store;
        let mut batch = store.batch();
        batch.put(
            &self.inner.functions.inner.ks,
            trigger_key(name.as_str()),
            crate::encode(&config),
        );
        store.commit(batch).await?;
        let stats = self
            .inner
            .running
            .lock()
            .unwrap()
            .get(name.as_str())
            .map(|r| r.stats.clone());
        let created = stats.is_none();
        self.launch(name.as_str(), config, stats.unwrap_or_default());
        Ok(created)
    }

    /// One trigger.
    pub fn get(&self, name: &str) -> Result<TriggerInfo> {
        let running = self.inner.running.lock().unwrap();
        let r = running
            .get(name)
            .ok_or_else(|| Error::TriggerNotFound(name.to_owned()))?;
        Ok(TriggerInfo {
            name: name.to_owned(),
            config: r.config.clone(),
            stats: r.stats.clone(),
        })
    }

    /// Every trigger, by name.
    pub fn list(&self) -> Vec<TriggerInfo> {
        let running = self.inner.running.lock().unwrap();
        let mut all: Vec<TriggerInfo> = running
            .iter()
            .map(|(n, r)| TriggerInfo {
                name: n.clone(),
                config: r.config.clone(),
                stats: r.stats.clone(),
            })
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Stops and deletes a trigger; invocations under way finish.
    pub async fn delete(&self, name: &str) -> Result<()> {
        let _lock = self.inner.lock.lock().await;
        self.get(name)?;
        let store = &self.inner.functions.inner.store;
        let mut batch = store.batch();
        batch.delete(&self.inner.functions.inner.ks, trigger_key(name));
        store.commit(batch).await?;
        if let Some(r) = self.inner.running.lock().unwrap().remove(name) {
            r.stop.cancel();
        }
        Ok(())
    }

    /// Pauses (or resumes) a trigger, durably.
    /// Pauses or resumes a trigger. Resuming also lets it run past the budgets now
    /// exhausted for it, until their periods end.
    pub async fn set_paused(&self, name: &str, paused: bool) -> Result<TriggerInfo> {
        let _lock = self.inner.lock.lock().await;
        let mut config = self.get(name)?.config;
        if !paused {
            self.inner.functions.resume_budgets(name, &config.function);
        }
        config.paused = paused;
        let store = &self.inner.functions.inner.store;
        let mut batch = store.batch();
        batch.put(
            &self.inner.functions.inner.ks,
            trigger_key(name),
            crate::encode(&config),
        );
        store.commit(batch).await?;
        let mut running = self.inner.running.lock().unwrap();
        let r = running
            .get_mut(name)
            .ok_or_else(|| Error::TriggerNotFound(name.to_owned()))?;
        r.config.paused = paused;
        let _ = r.paused.send(paused);
        Ok(TriggerInfo {
            name: name.to_owned(),
            config: r.config.clone(),
            stats: r.stats.clone(),
        })
    }

    /// Triggers that invoke `function`.
    pub fn of_function(&self, function: &str) -> Vec<String> {
        let running = self.inner.running.lock().unwrap();
        running
            .iter()
            .filter(|(_, r)| r.config.function == function)
            .map(|(n, _)| n.clone())
            .collect()
    }
}

/// The loop of one trigger.
struct Runner {
    name: String,
    config: TriggerConfig,
    stats: Arc<TriggerStats>,
    functions: Functions,
    broker: Broker,
    stop: CancellationToken,
    paused: watch::Receiver<bool>,
    hops_max: u32,
}

/// Added to the function's timeout to make a trigger's lease.
const LEASE_MARGIN_MS: u64 = 5_000;

/// How long a receive waits for the first event.
const POLL: HumanDuration = HumanDuration::from_millis(1_000);

impl Runner {
    async fn run(mut self) {
        let queue = self.config.queue();
        let slots = Arc::new(Semaphore::new(self.config.max_concurrency as usize));
        let mut rate = self
            .config
            .rate_limit
            .map(|r| RateLimiter::new(r, self.broker.now_ms()));
        let mut budgets = self.functions.budget_changes();
        loop {
            if self.stop.is_cancelled() {
                return;
            }
            if *self.paused.borrow() {
                tokio::select! {
                    _ = self.paused.changed() => continue,
                    _ = self.stop.cancelled() => return,
                }
            }
            // A function or alias deleted under a trigger: lease nothing (every lease
            // would count as an attempt and could dead-letter events that never ran).
            let target = Target::Alias(self.config.alias.clone());
            if let Err(e) = self.functions.resolve(&self.config.function, &target) {
                self.note_error(e.to_string());
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = self.stop.cancelled() => return,
                }
            }
            let slot = match slots.clone().try_acquire_owned() {
                Ok(s) => s,
                Err(_) => {
                    self.stats
                        .throttled_concurrency
                        .fetch_add(1, Ordering::Relaxed);
                    tokio::select! {
                        s = slots.clone().acquire_owned() => s.expect("never closed"),
                        _ = self.stop.cancelled() => return,
                    }
                }
            };
            // Budgets: an exhausted one pauses the trigger; events wait in the source
            // until the period rolls over, the budget is raised or an operator resumes.
            let admission = match self.functions.admit(&self.name, &self.config.function) {
                Ok(a) => {
                    self.stats.budget_paused.lock().unwrap().take();
                    a
                }
                Err(budget) => {
                    let newly = self
                        .stats
                        .budget_paused
                        .lock()
                        .unwrap()
                        .replace(budget.clone())
                        .is_none();
                    if newly {
                        self.stats.throttled_budget.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(trigger = %self.name, %budget, "budget exhausted: trigger paused");
                    }
                    drop(slot);
                    tokio::select! {
                        _ = budgets.changed() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = self.stop.cancelled() => return,
                    }
                    continue;
                }
            };
            if let Some(r) = &mut rate {
                loop {
                    match r.try_acquire(self.broker.now_ms()) {
                        Ok(()) => break,
                        Err(wait_ms) => {
                            self.stats.throttled_rate.fetch_add(1, Ordering::Relaxed);
                            tokio::select! {
                                _ = tokio::time::sleep(Duration::from_millis(wait_ms)) => {}
                                _ = self.stop.cancelled() => return,
                            }
                        }
                    }
                }
            }
            let deliveries = match self.lease(&queue).await {
                Ok(d) => d,
                Err(e) => {
                    self.note_error(format!("receiving from {queue:?}: {e}"));
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = self.stop.cancelled() => return,
                    }
                }
            };
            if deliveries.is_empty() {
                continue;
            }
            let invocation = Invocation {
                trigger: self.name.clone(),
                config: self.config.clone(),
                queue: queue.clone(),
                stats: self.stats.clone(),
                functions: self.functions.clone(),
                broker: self.broker.clone(),
                hops_max: self.hops_max,
            };
            tokio::spawn(async move {
                invocation.run(deliveries, admission).await;
                drop(slot);
            });
        }
    }

    /// Leases up to a batch: waits for the first event, then up to the batch window for more.
    async fn lease(&self, queue: &str) -> std::result::Result<Vec<Delivery>, BrokerError> {
        let size = self.config.batch_size as usize;
        let lease = self.lease_timeout();
        let mut got = self
            .broker
            .lease(queue, size, POLL, Some(lease), &self.stop)
            .await?;
        if got.is_empty() || got.len() >= size || self.config.batch_window == HumanDuration::ZERO {
            return Ok(got);
        }
        let until = tokio::time::Instant::now() + self.config.batch_window.to_std();
        while got.len() < size {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let wait = HumanDuration::from_millis(left.as_millis() as u64);
            let more = self
                .broker
                .lease(queue, size - got.len(), wait, Some(lease), &self.stop)
                .await?;
            if more.is_empty() {
                break;
            }
            got.extend(more);
        }
        Ok(got)
    }

    /// The lease on a batch: the function's timeout and a margin for waiting
    /// on a concurrency permit and the commit. After a crash, a batch that was
    /// leased is delivered again when this runs out.
    fn lease_timeout(&self) -> HumanDuration {
        let timeout = self
            .functions
            .resolve(
                &self.config.function,
                &Target::Alias(self.config.alias.clone()),
            )
            .and_then(|v| self.functions.version_meta(&self.config.function, v))
            .map(|v| v.settings.timeout)
            .unwrap_or(HumanDuration::from_millis(30_000));
        let ms = (timeout.as_millis() + LEASE_MARGIN_MS).clamp(1_000, 12 * 3600 * 1000);
        HumanDuration::from_millis(ms)
    }

    fn note_error(&self, e: String) {
        tracing::warn!(trigger = %self.name, error = %e, "trigger");
        *self.stats.last_error.lock().unwrap() = Some(e);
    }
}

/// One batch on its way through the function.
struct Invocation {
    trigger: String,
    config: TriggerConfig,
    queue: String,
    stats: Arc<TriggerStats>,
    functions: Functions,
    broker: Broker,
    hops_max: u32,
}

impl Invocation {
    async fn run(self, deliveries: Vec<Delivery>, admission: crate::Admission) {
        let (deliveries, events) = self.stop_loops(deliveries).await;
        if deliveries.is_empty() {
            return;
        }
        let in_flight = self.stats.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        self.stats
            .max_in_flight
            .fetch_max(in_flight, Ordering::AcqRel);
        self.stats.invocations.fetch_add(1, Ordering::Relaxed);
        self.stats
            .events
            .fetch_add(deliveries.len() as u64, Ordering::Relaxed);
        self.stats.batch_sizes.observe(deliveries.len() as f64);
        let input = Input {
            queue: self.queue.clone(),
            receipts: deliveries.iter().map(|d| d.receipt.clone()).collect(),
            trigger: Some(self.trigger.clone()),
            attempt: deliveries
                .iter()
                .map(|d| d.receive_count)
                .max()
                .unwrap_or(1),
            admission: Some(Arc::new(admission)),
        };
        let target = Target::Alias(self.config.alias.clone());
        let result = self
            .functions
            .invoke(&self.config.function, &target, &events, Some(input))
            .await;
        let failure = match result {
            Ok(r) => {
                if let sluice_runtime::Outcome::PartialFailure(failed) = &r.outcome
                    && r.commit_error.is_none()
                {
                    self.stats.partial_failures.fetch_add(1, Ordering::Relaxed);
                    // The commit nacked these with their reasons.
                    let nacked: Vec<(&Delivery, &Map<String, Value>, &str)> = deliveries
                        .iter()
                        .zip(&events)
                        .filter_map(|(d, e)| {
                            let id = e.get("id").and_then(Value::as_str)?;
                            let f = failed.iter().find(|f| f.id == id)?;
                            Some((d, e, f.reason.as_str()))
                        })
                        .collect();
                    self.note_dead_letters(&nacked);
                }
                r.failed()
            }
            Err(e) => Some(e.to_string()),
        };
        if let Some(reason) = failure {
            let nacked: Vec<(&Delivery, &Map<String, Value>, &str)> = deliveries
                .iter()
                .zip(&events)
                .map(|(d, e)| (d, e, reason.as_str()))
                .collect();
            self.note_dead_letters(&nacked);
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            *self.stats.last_error.lock().unwrap() = Some(reason.clone());
            // Nothing was committed: release the batch for a retry with the
            // source's backoff, or dead-letter it with the function's error.
            let receipts: Vec<String> = deliveries.iter().map(|d| d.receipt.clone()).collect();
            let nack = Nack {
                delay: None,
                reason: Some(reason),
            };
            if let Err(e) = self.broker.nack(&self.queue, &receipts, nack).await {
                tracing::warn!(trigger = %self.trigger, error = %e, "nack after a failed invocation");
            }
        }
        self.stats.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Invocation {
    /// Records in lineage which of the nacked events the nack moves to the dead-letter
    /// queue: the source's own release decision, made ahead of the nack.
    fn note_dead_letters(&self, nacked: &[(&Delivery, &Map<String, Value>, &str)]) {
        if nacked.is_empty() {
            return;
        }
        let Ok(info) = self.broker.get_queue(&self.queue) else {
            return;
        };
        let now = self.broker.now_ms();
        for (d, event, reason) in nacked {
            let cause = ReleaseCause::Nacked {
                delay_ms: None,
                reason: Some((*reason).to_owned()),
            };
            if let Release::DeadLetter(why) =
                delivery::release(&info.config, d.receive_count, cause, now, 0.0)
            {
                let record = DeadLettered {
                    queue: self.queue.clone(),
                    dead_letter_queue: info
                        .config
                        .dead_letter_queue
                        .as_ref()
                        .map(|n| n.to_string()),
                    reason: why.code().to_owned(),
                    attempts: d.receive_count,
                    at_ms: now,
                };
                self.functions.note_dead_letter(event, &record);
            }
        }
    }

    /// Takes out of the batch every event whose handling would extend its chain past
    /// `hops_max` hops: it goes to the source's dead-letter queue with reason
    /// `loop_detected` (or is removed if there is none) and an alert carrying the event
    /// is published. Returns the rest with their events.
    async fn stop_loops(
        &self,
        deliveries: Vec<Delivery>,
    ) -> (Vec<Delivery>, Vec<Map<String, Value>>) {
        let mut keep = Vec::with_capacity(deliveries.len());
        let mut events = Vec::with_capacity(deliveries.len());
        let mut stopped = Vec::new();
        for d in deliveries {
            let event = as_event(&self.config.source, &d);
            let id = event.get("id").and_then(Value::as_str).unwrap_or_default();
            let hops = EventContext::of(id, &event).hops;
            if context::within_hops(hops, self.hops_max) {
                keep.push(d);
                events.push(event);
            } else {
                stopped.push((d, event, hops));
            }
        }
        if stopped.is_empty() {
            return (keep, events);
        }
        self.stats
            .loops_stopped
            .fetch_add(stopped.len() as u64, Ordering::Relaxed);
        let receipts: Vec<String> = stopped.iter().map(|(d, _, _)| d.receipt.clone()).collect();
        if let Err(e) = self.broker.stop_loops(&self.queue, &receipts).await {
            // The leases run out and the events come back to be stopped again.
            tracing::warn!(trigger = %self.trigger, error = %e, "stopping looping events");
            return (keep, events);
        }
        let dead_letter_queue = self
            .broker
            .get_queue(&self.queue)
            .ok()
            .and_then(|q| q.config.dead_letter_queue.map(|n| n.to_string()));
        let now = self.broker.now_ms();
        for (d, event, hops) in stopped {
            let record = DeadLettered {
                queue: self.queue.clone(),
                dead_letter_queue: dead_letter_queue.clone(),
                reason: "loop_detected".into(),
                attempts: d.receive_count,
                at_ms: now,
            };
            self.functions.note_dead_letter(&event, &record);
            let id = event
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            tracing::warn!(trigger = %self.trigger, event = %id, hops, "event loop stopped");
            let data = json!({
                "trigger": self.trigger,
                "function": self.config.function,
                "queue": self.queue,
                "hops": hops,
                "max_hops": self.hops_max,
                "event": event,
            });
            crate::alerts::publish(&self.broker, "/sluice/triggers", "loop_detected", &id, data)
                .await;
        }
        (keep, events)
    }
}

/// The CloudEvent a delivery stands for: a subscription's event as published,
/// or a queue message wrapped as `sluice.queue.message`.
pub fn as_event(source: &Source, d: &Delivery) -> Map<String, Value> {
    if let Source::Subscription { .. } = source
        && let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(&d.body)
    {
        return m;
    }
    let queue = match source {
        Source::Queue(q) => q.as_str(),
        Source::Subscription { topic, .. } => topic.as_str(),
    };
    let mut m = Map::new();
    m.insert("specversion".into(), "1.0".into());
    m.insert("id".into(), d.id.clone().into());
    m.insert("source".into(), format!("sluice://queues/{queue}").into());
    m.insert("type".into(), "sluice.queue.message".into());
    m.insert(
        "time".into(),
        sluice_types::format_rfc3339_ms(d.sent_ms).into(),
    );
    m.insert("datacontenttype".into(), "application/json".into());
    m.insert(
        "data".into(),
        serde_json::from_slice(&d.body).unwrap_or(Value::Null),
    );
    if let Some(g) = &d.group {
        m.insert("sluicegroup".into(), g.clone().into());
    }
    m.insert("sluiceattempt".into(), d.receive_count.to_string().into());
    lift_context(&mut m, d);
    m
}

/// Gives a queue message's wrapper event the context the message carries: in its
/// attributes when a function sent it, in its body when a subscription forwarded an event
/// into the queue. A message without one is a root.
fn lift_context(m: &mut Map<String, Value>, d: &Delivery) {
    use sluice_broker::context::{
        CAUSATION_ID, CORRELATION_ID, HOP_COUNT, INVOCATION_ID, TRACEPARENT, TRACESTATE,
    };
    let attributes: Map<String, Value> = serde_json::from_slice(&d.attributes).unwrap_or_default();
    let carrier = if attributes.contains_key(TRACEPARENT) {
        attributes
    } else if attributes.contains_key("topic")
        && let Some(Value::Object(event)) = m.get("data")
    {
        event.clone()
    } else {
        return;
    };
    for k in [
        TRACEPARENT,
        TRACESTATE,
        CORRELATION_ID,
        CAUSATION_ID,
        INVOCATION_ID,
    ] {
        if let Some(Value::String(v)) = carrier.get(k) {
            m.insert(k.into(), v.clone().into());
        }
    }
    if let Some(h) = carrier.get(HOP_COUNT) {
        let hops = match h {
            Value::String(s) => s.parse::<u64>().ok(),
            v => v.as_u64(),
        };
        if let Some(hops) = hops {
            m.insert(HOP_COUNT.into(), hops.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limiter_table() {
        // (now_ms, expected) for a limit of 2/s: a burst of 2, then one every 500 ms.
        let steps: [(u64, std::result::Result<(), u64>); 7] = [
            (0, Ok(())),
            (0, Ok(())),
            (0, Err(500)),
            (250, Err(250)),
            (500, Ok(())),
            (500, Err(500)),
            (2000, Ok(())),
        ];
        let mut r = RateLimiter::new(2.0, 0);
        for (i, (now, want)) in steps.into_iter().enumerate() {
            assert_eq!(r.try_acquire(now), want, "step {i}");
        }
        // A fractional rate: one every 4 s.
        let mut slow = RateLimiter::new(0.25, 0);
        assert_eq!(slow.try_acquire(0), Ok(()));
        assert_eq!(slow.try_acquire(1000), Err(3000));
        assert_eq!(slow.try_acquire(4000), Ok(()));
    }

    #[test]
    fn config_limits() {
        let ok = TriggerConfig {
            function: "f".into(),
            alias: "live".into(),
            source: Source::Queue("q".into()),
            batch_size: 10,
            batch_window: HumanDuration::ZERO,
            max_concurrency: 3,
            rate_limit: None,
            paused: false,
        };
        assert_eq!(ok.validate(), Ok(()));
        let cases = [
            (
                TriggerConfig {
                    batch_size: 0,
                    ..ok.clone()
                },
                "batch_size",
            ),
            (
                TriggerConfig {
                    batch_size: 1001,
                    ..ok.clone()
                },
                "batch_size",
            ),
            (
                TriggerConfig {
                    batch_window: HumanDuration::from_millis(3_600_000),
                    ..ok.clone()
                },
                "batch_window",
            ),
            (
                TriggerConfig {
                    max_concurrency: 0,
                    ..ok.clone()
                },
                "max_concurrency",
            ),
            (
                TriggerConfig {
                    rate_limit: Some(0.0),
                    ..ok.clone()
                },
                "rate_limit",
            ),
            (
                TriggerConfig {
                    rate_limit: Some(f64::NAN),
                    ..ok.clone()
                },
                "rate_limit",
            ),
            (
                TriggerConfig {
                    alias: "1".into(),
                    ..ok.clone()
                },
                "alias",
            ),
        ];
        for (c, want) in cases {
            let err = c.validate().unwrap_err();
            assert!(err.starts_with(want), "{err:?} should start with {want:?}");
        }
    }

    #[test]
    fn queue_messages_become_cloudevents() {
        let d = Delivery {
            id: "m1".into(),
            seq: 1,
            body: br#"{"order":7}"#.to_vec(),
            attributes: b"{}".to_vec(),
            group: Some("g".into()),
            receipt: "r".into(),
            receive_count: 2,
            first_receive_ms: 0,
            sent_ms: 0,
            lease_deadline_ms: 0,
            dead_letter: None,
        };
        let e = as_event(&Source::Queue("orders".into()), &d);
        assert_eq!(e["id"], "m1");
        assert_eq!(e["source"], "sluice://queues/orders");
        assert_eq!(e["data"]["order"], 7);
        assert_eq!(e["sluicegroup"], "g");
        assert_eq!(e["sluiceattempt"], "2");
        let sub = Source::Subscription {
            topic: "t".into(),
            subscription: "s".into(),
        };
        let d2 = Delivery {
            body: br#"{"specversion":"1.0","id":"x","source":"s","type":"t"}"#.to_vec(),
            ..d
        };
        assert_eq!(as_event(&sub, &d2)["id"], "x");
    }
}
