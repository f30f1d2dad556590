//! Queues and the delivery engine of Sluice: leases, acks and nacks, retry backoff,
//! dead-letter queues and redrive, FIFO groups, deduplication, delays and retention.
//!
//! [`Broker`] is the only way in. It owns one [`engine::Engine`] behind a mutex: every
//! operation updates the in-memory delivery state and writes one atomic store batch while
//! holding it, then waits for the batch to be durable after letting go. The decisions
//! themselves live in [`delivery`], a pure core without I/O or clock reads.

pub mod codec;
pub mod config;
pub mod context;
pub mod delivery;
mod engine;
pub mod event;
pub mod filter;
pub mod topic_config;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_store::Store;
use sluice_types::{HumanDuration, Name, SharedClock};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

pub use config::{Backoff, ConfigError, QueueConfig};
pub use engine::Commit;
use engine::Engine;
pub use engine::streams::{
    ALL, AppendResult, Direction, EVENT_SIZE_MAX, GlobalPage, Index, READ_MAX, RecordedEvent,
    SNAPSHOT_SIZE_MAX, STREAM_ATTRIBUTE, Snapshot, StreamActivity, StreamInfo, StreamMetadata,
    StreamPage, StreamSelector, VERSION_ATTRIBUTE,
};
pub use event::EventError;
pub use filter::{Filter, PatternError};
pub use sluice_eventstore::{ExpectedVersion, StreamState, validate_name as validate_stream_name};
pub use topic_config::{Compaction, Start, SubscriptionConfig, Target, TopicConfig};

/// Most messages in one send or receive call.
pub const BATCH_MAX: usize = 1_000;
/// Longest long poll.
pub const WAIT_MAX: HumanDuration = HumanDuration::from_secs(20);
/// Longest accepted group key or dedup id, in bytes.
pub const KEY_LEN_MAX: usize = 128;

/// What went wrong in a broker operation. Each variant maps to one stable API error code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("queue {0:?} does not exist")]
    QueueNotFound(String),
    #[error("invalid queue configuration: {0}")]
    InvalidConfig(#[from] ConfigError),
    #[error("fifo cannot change after a queue is created")]
    FifoImmutable,
    #[error("dead-letter queue {0:?} does not exist")]
    DeadLetterQueueNotFound(String),
    #[error("dead-letter queue {0}")]
    DeadLetterQueueInvalid(String),
    #[error("queue {queue:?} is the dead-letter queue of {used_by:?}; change those first")]
    QueueInUse { queue: String, used_by: Vec<String> },
    #[error("queue {0:?} has no dead-letter queue to redrive from")]
    NoDeadLetterQueue(String),
    #[error("{0}")]
    InvalidMessage(String),
    #[error("message of {size} bytes is larger than the queue's max_message_size of {max}")]
    MessageTooLarge { size: usize, max: u64 },
    #[error("batch of {0} entries is larger than {BATCH_MAX}")]
    BatchTooLarge(usize),
    #[error("{field} {value} is outside {min}..={max}")]
    OutOfRange {
        field: &'static str,
        value: HumanDuration,
        min: HumanDuration,
        max: HumanDuration,
    },
    #[error("{0} messages are leased, the queue's max_in_flight; ack or nack some first")]
    InFlightLimit(u32),
    #[error("receipt is not a receipt issued by this server")]
    ReceiptInvalid,
    #[error("receipt belongs to another queue")]
    ReceiptForeign,
    #[error(
        "receipt is stale: its lease ended and the message was acked, released or leased again"
    )]
    ReceiptStale,
    #[error("storage failed: {0}")]
    Store(#[from] sluice_store::Error),
    #[error(transparent)]
    Corrupt(#[from] codec::Corrupt),
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("topic {0:?} does not exist")]
    TopicNotFound(String),
    #[error("subscription {subscription:?} of topic {topic:?} does not exist")]
    SubscriptionNotFound { topic: String, subscription: String },
    #[error("invalid filter: {0}")]
    InvalidFilter(#[from] PatternError),
    #[error("invalid CloudEvent: {0}")]
    InvalidEvent(EventError),
    #[error("event of {size} bytes is larger than the topic's max_event_size of {max}")]
    EventTooLarge { size: usize, max: u64 },
    #[error("compaction cannot change after a topic is created")]
    CompactionImmutable,
    #[error("topic {0:?} is not compacted")]
    NotCompacted(String),
    #[error("key {key:?} has no live event in topic {topic:?}")]
    KeyNotFound { topic: String, key: String },
    #[error("{0}")]
    PositionOutOfRange(String),
    #[error("target queue {0:?} does not exist")]
    TargetQueueNotFound(String),
    #[error(
        "subscription {subscription:?} forwards its events to queue {queue:?}; receive from that queue"
    )]
    NotPull { subscription: String, queue: String },
    #[error("key {0:?} changed since it was read; the invocation is retried")]
    KvConflict(String),
    #[error("invalid stream name: {0}")]
    InvalidStream(String),
    #[error("stream {0:?} does not exist")]
    StreamNotFound(String),
    #[error("stream {0:?} was hard-deleted; it takes no more events")]
    StreamDeleted(String),
    #[error(
        "stream {stream:?}: expected version {expected}, but its last version is {}",
        current.map_or("none (no events)".to_owned(), |v| v.to_string())
    )]
    WrongExpectedVersion {
        stream: String,
        expected: String,
        /// The stream's last live version (`None`: no live events).
        current: Option<u64>,
    },
    #[error(
        "event id {id:?} is already in stream {stream:?} at version {at}, not where this append \
         would put it; a retry must name the same expected version"
    )]
    EventIdConflict { stream: String, id: String, at: u64 },
    #[error("invalid snapshot: {0}")]
    InvalidSnapshot(String),
    #[error("stream {stream:?} has a snapshot at version {current}, later than {version}")]
    SnapshotStale {
        stream: String,
        version: u64,
        current: u64,
    },
}

/// Broker result.
pub type Result<T> = std::result::Result<T, Error>;

/// A message to send.
#[derive(Debug, Clone, Default)]
pub struct NewMessage {
    /// The body as JSON text.
    pub body: Vec<u8>,
    /// The attributes as JSON object text (`{}` if none).
    pub attributes: Vec<u8>,
    /// FIFO group key.
    pub group: Option<String>,
    /// Dedup id: a repeat within the queue's dedup window is acknowledged, not enqueued.
    pub dedup_id: Option<String>,
    /// Delivery delay, overriding the queue's.
    pub delay: Option<HumanDuration>,
}

/// The outcome of one message of a send.
#[derive(Debug, Clone)]
pub enum SendOutcome {
    /// Enqueued under this id.
    Sent(String),
    /// A duplicate of the message with this id, within the dedup window; not enqueued.
    Duplicate(String),
    /// Rejected; nothing was enqueued for it.
    Failed(Error),
}

/// Why and from where a message was dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterInfo {
    pub source_queue: String,
    /// `lease_expired`, `nacked` or `error`.
    pub reason: String,
    /// The error text given with the last nack.
    pub error: Option<String>,
    pub attempts: u32,
    pub at_ms: u64,
}

/// A message handed to a consumer under a lease.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: String,
    /// Sequence number; for a subscription, the event's topic offset.
    pub seq: u64,
    /// JSON text.
    pub body: Vec<u8>,
    /// JSON object text.
    pub attributes: Vec<u8>,
    pub group: Option<String>,
    pub receipt: String,
    pub receive_count: u32,
    pub first_receive_ms: u64,
    pub sent_ms: u64,
    pub lease_deadline_ms: u64,
    pub dead_letter: Option<DeadLetterInfo>,
}

/// A queue's counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub visible: u64,
    pub leased: u64,
    pub delayed: u64,
    /// Messages of this queue now in its dead-letter queue.
    pub dead_lettered: u64,
    /// Age of the oldest message, if any.
    pub oldest_age_ms: Option<u64>,
    pub sent_total: u64,
    pub expired_total: u64,
    pub dedup_hits_total: u64,
    /// Counts since the server started.
    pub activity: QueueActivity,
}

/// What happened to a queue's messages since the server started (these counters are not
/// persisted; Prometheus treats a restart as a counter reset).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueActivity {
    /// Deliveries (leases), first ones and redeliveries.
    pub received: u64,
    /// Deliveries of a message that had been delivered before.
    pub redelivered: u64,
    pub acked: u64,
    pub nacked: u64,
    /// Leases that ran out before an ack or nack.
    pub lease_expired: u64,
    /// Messages moved from this queue to its dead-letter queue.
    pub dead_letter_moves: u64,
    /// Messages sent (or forwarded) into the queue, and their bytes (body and attributes):
    /// their mean size estimates the bytes the queue holds, for cost.
    pub sent: u64,
    pub sent_bytes: u64,
}

/// A queue's definition and counts.
#[derive(Debug, Clone)]
pub struct QueueInfo {
    pub name: String,
    pub config: QueueConfig,
    pub created_ms: u64,
    pub stats: QueueStats,
}

/// The outcome of one receipt of an ack, nack or extend.
pub type ReceiptOutcome = std::result::Result<(), Error>;

/// How to release nacked messages.
#[derive(Debug, Clone, Default)]
pub struct Nack {
    /// Deliver again after this delay; `None` applies the queue's backoff.
    pub delay: Option<HumanDuration>,
    /// Error text, recorded if the message is dead-lettered.
    pub reason: Option<String>,
}

/// Progress of a redrive call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redrive {
    pub moved: u64,
    /// Messages of this queue still in its dead-letter queue.
    pub remaining: u64,
}

/// The outcome of one event of a publish.
#[derive(Debug, Clone)]
pub enum PublishOutcome {
    /// Stored at this offset.
    Published { id: String, offset: u64 },
    /// The same `source` and `id` were published within the dedup window, at this offset;
    /// not stored again.
    Duplicate { id: String, offset: u64 },
    /// Rejected; nothing was stored for it.
    Failed(Error),
}

/// An event as stored in a topic's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub offset: u64,
    pub published_ms: u64,
    /// Structured-mode CloudEvents JSON.
    pub event: Vec<u8>,
}

/// A page of a topic's log.
#[derive(Debug, Clone)]
pub struct EventPage {
    pub events: Vec<StoredEvent>,
    /// Where the next page starts.
    pub next: u64,
}

/// A topic's counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicStats {
    pub first_offset: u64,
    pub next_offset: u64,
    /// Events retained in the log.
    pub events: u64,
    pub bytes: u64,
    /// Compacted topics: live keys.
    pub keys: Option<u64>,
    pub published_total: u64,
    /// Bytes published since the server started.
    pub published_bytes: u64,
    pub dedup_hits_total: u64,
    pub expired_total: u64,
    pub compacted_total: u64,
}

/// Everything the broker counts, at one moment, for `/metrics`.
#[derive(Debug, Clone)]
pub struct BrokerMetrics {
    /// Queues and subscriptions, by name.
    pub queues: Vec<QueueMetrics>,
    /// Topics (the event store's `$all` among them), by name.
    pub topics: Vec<TopicInfo>,
    pub streams: StreamActivity,
    pub store: sluice_store::Metrics,
}

/// One queue's or subscription's counts.
#[derive(Debug, Clone)]
pub struct QueueMetrics {
    pub name: String,
    /// A subscription's topic and name; `None` for a queue.
    pub subscription: Option<(String, String)>,
    /// A subscription's events after its cursor, before filtering; 0 for a queue.
    pub backlog: u64,
    pub stats: QueueStats,
}

/// A topic's definition and counts.
#[derive(Debug, Clone)]
pub struct TopicInfo {
    pub name: String,
    pub config: TopicConfig,
    pub created_ms: u64,
    pub stats: TopicStats,
    pub subscriptions: Vec<String>,
}

/// A subscription's definition, position and delivery counts.
#[derive(Debug, Clone)]
pub struct SubscriptionInfo {
    pub topic: String,
    pub name: String,
    pub config: SubscriptionConfig,
    pub created_ms: u64,
    /// The next topic offset the subscription has not taken yet.
    pub cursor: u64,
    /// Events after the cursor, before filtering.
    pub backlog: u64,
    /// Delivery counts: `visible` counts retries waiting and FIFO members moved ahead,
    /// not the backlog.
    pub stats: QueueStats,
}

/// Broker settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// How often background work (delays, lease expiry, retention, dedup expiry) runs.
    pub tick: Duration,
    /// Seed of the jitter random source; `None` seeds from the OS.
    pub seed: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(10),
            seed: None,
        }
    }
}

/// The broker handle. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    shared: Arc<Shared>,
}

struct Shared {
    engine: Mutex<Engine>,
    store: Store,
    clock: SharedClock,
}

impl Broker {
    /// Loads every queue from `store` and recovers its delivery state: leases keep their
    /// deadlines, so a message leased before a restart is released when its lease ends.
    pub fn open(store: Store, clock: SharedClock, options: &Options) -> Result<Self> {
        let engine = Engine::open(store.clone(), clock.now_ms(), options.seed)?;
        Ok(Self {
            shared: Arc::new(Shared {
                engine: Mutex::new(engine),
                store,
                clock,
            }),
        })
    }

    /// Runs background work every `options.tick` until `cancel`.
    pub async fn run(self, options: Options, cancel: CancellationToken) {
        let mut interval = tokio::time::interval(options.tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = interval.tick() => {}
            }
            if let Err(e) = self.tick().await {
                tracing::error!(error = %e, "broker background work failed");
            }
        }
    }

    /// Runs due background work once: promotes delayed messages, releases expired leases,
    /// drops messages past retention, forgets expired dedup ids.
    pub async fn tick(&self) -> Result<()> {
        let now = self.now();
        let (mut ticket, woken, checks) = {
            let mut engine = self.lock();
            engine.tick(now)?
        };
        for notify in woken {
            notify.notify_waiters();
        }
        if !checks.is_empty() {
            // Retention reads the oldest records of each queue, stepping over every message
            // deleted since the last check where the queue cannot tell its oldest live one:
            // off the engine lock (and off the runtime's threads), so that sends and
            // receives do not wait for it.
            let messages = self.lock().messages();
            let read = tokio::task::spawn_blocking(move || {
                let found = checks
                    .iter()
                    .map(|c| c.read(&messages, now))
                    .collect::<Result<Vec<_>>>();
                (checks, found)
            });
            let (checks, found) = match read.await {
                Ok(read) => read,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                // The runtime is shutting down.
                Err(_) => return Ok(()),
            };
            let mut engine = self.lock();
            for (check, found) in checks.iter().zip(found?) {
                ticket = engine.finish_retention(check, found, now)?;
            }
        }
        self.shared.store.durable(ticket).await?;
        Ok(())
    }

    fn now(&self) -> u64 {
        self.shared.clock.now_ms()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Engine> {
        self.shared
            .engine
            .lock()
            .expect("broker engine lock poisoned")
    }

    /// Creates queue `name`, or updates its configuration. Returns whether it was created.
    pub async fn put_queue(&self, name: &Name, config: QueueConfig) -> Result<bool> {
        config.validate()?;
        let now = self.now();
        let (created, ticket) = self.lock().put_queue(name, config, now)?;
        self.shared.store.durable(ticket).await?;
        Ok(created)
    }

    /// The definition and counts of queue `name`.
    pub fn get_queue(&self, name: &str) -> Result<QueueInfo> {
        let now = self.now();
        self.lock().queue_info(name, now)
    }

    /// Every queue, by name.
    pub fn list_queues(&self) -> Result<Vec<QueueInfo>> {
        let now = self.now();
        self.lock().list(now)
    }

    /// Deletes queue `name` and its messages.
    pub async fn delete_queue(&self, name: &str) -> Result<()> {
        let (ticket, notify) = self.lock().delete_queue(name)?;
        notify.notify_waiters();
        self.shared.store.durable(ticket).await?;
        Ok(())
    }

    /// Sends messages; each is enqueued, recognised as a duplicate, or rejected on its own.
    pub async fn send(&self, queue: &str, messages: Vec<NewMessage>) -> Result<Vec<SendOutcome>> {
        if messages.len() > BATCH_MAX {
            return Err(Error::BatchTooLarge(messages.len()));
        }
        let now = self.now();
        let (outcomes, ticket, notify) = self.lock().send(queue, messages, now)?;
        // Waiting receivers are woken as soon as the messages are written: a lease written
        // after them is durable only once they are (the journal is in order), and a
        // receive answers only then, so its fsync can be the one this send waits for.
        notify.notify_waiters();
        self.shared.store.durable(ticket).await?;
        Ok(outcomes)
    }

    /// Leases up to `max` messages, waiting up to `wait` for the first one to arrive.
    /// Answers once the leases are durable.
    pub async fn receive(
        &self,
        queue: &str,
        max: usize,
        wait: HumanDuration,
        lease_timeout: Option<HumanDuration>,
        cancel: &CancellationToken,
    ) -> Result<Vec<Delivery>> {
        self.receive_inner(queue, max, wait, lease_timeout, cancel, true)
            .await
    }

    /// Acks `receipts`, then receives as [`Broker::receive`]: a consumer's acks for its
    /// last batch and its next receive in one call. Answers once both the acks and the new
    /// leases are durable (one fsync can cover both: the leases are written after the
    /// acks). The receive's arguments are checked before anything is acked; if the receive
    /// fails afterwards, the acks stand.
    pub async fn ack_and_receive(
        &self,
        queue: &str,
        receipts: &[String],
        max: usize,
        wait: HumanDuration,
        lease_timeout: Option<HumanDuration>,
        cancel: &CancellationToken,
    ) -> Result<(Vec<ReceiptOutcome>, Vec<Delivery>)> {
        check_batch(receipts.len())?;
        check_receive(max, wait, lease_timeout)?;
        let now = self.now();
        let (outcomes, ticket, notify) = self.lock().ack(queue, receipts, now)?;
        // Woken receivers answer only once their leases are durable, which in the journal's
        // order makes these acks durable too.
        if let Some(notify) = notify {
            notify.notify_waiters();
        }
        let received = self
            .receive_inner(queue, max, wait, lease_timeout, cancel, true)
            .await;
        self.shared.store.durable(ticket).await?;
        Ok((outcomes, received?))
    }

    /// As [`Broker::receive`], but answers as soon as the leases are written, without
    /// waiting for them to be durable. For a caller whose every use of the deliveries ends
    /// in a later write it awaits (an ack, a nack, a [`Commit`]): the store's journal is
    /// in order, so that write being durable makes the lease durable too, and a crash
    /// before it only forgets a lease nothing acted on.
    pub async fn lease(
        &self,
        queue: &str,
        max: usize,
        wait: HumanDuration,
        lease_timeout: Option<HumanDuration>,
        cancel: &CancellationToken,
    ) -> Result<Vec<Delivery>> {
        self.receive_inner(queue, max, wait, lease_timeout, cancel, false)
            .await
    }

    async fn receive_inner(
        &self,
        queue: &str,
        max: usize,
        wait: HumanDuration,
        lease_timeout: Option<HumanDuration>,
        cancel: &CancellationToken,
        durable: bool,
    ) -> Result<Vec<Delivery>> {
        check_receive(max, wait, lease_timeout)?;
        let deadline = tokio::time::Instant::now() + wait.to_std();
        loop {
            let notify = self.lock().notify_handle(queue)?;
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = self.now();
            let (deliveries, ticket) = self.lock().receive(queue, max, lease_timeout, now)?;
            if !deliveries.is_empty() {
                if durable {
                    self.shared.store.durable(ticket).await?;
                }
                return Ok(deliveries);
            }
            // A subscription stops each receive after a bounded scan of its log; while
            // unexamined events remain, look again at once instead of waiting.
            if tokio::time::Instant::now() < deadline && self.lock().has_unscanned(queue) {
                tokio::task::yield_now().await;
                continue;
            }
            // Wake up at the deadline, on a send, or on the next background tick at the
            // latest, whichever comes first (delays and lease expiries land on ticks).
            let poll = tokio::time::Instant::now() + Duration::from_millis(250);
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline.min(poll)) => {}
                _ = cancel.cancelled() => return Ok(Vec::new()),
            }
            if tokio::time::Instant::now() >= deadline {
                let now = self.now();
                let (deliveries, ticket) = self.lock().receive(queue, max, lease_timeout, now)?;
                if durable {
                    self.shared.store.durable(ticket).await?;
                }
                return Ok(deliveries);
            }
        }
    }

    /// Acks leased messages: they are removed for good.
    pub async fn ack(&self, queue: &str, receipts: &[String]) -> Result<Vec<ReceiptOutcome>> {
        check_batch(receipts.len())?;
        let now = self.now();
        let (outcomes, ticket, notify) = self.lock().ack(queue, receipts, now)?;
        self.shared.store.durable(ticket).await?;
        if let Some(notify) = notify {
            notify.notify_waiters();
        }
        Ok(outcomes)
    }

    /// Nacks leased messages: released for another attempt, or dead-lettered.
    pub async fn nack(
        &self,
        queue: &str,
        receipts: &[String],
        nack: Nack,
    ) -> Result<Vec<ReceiptOutcome>> {
        check_batch(receipts.len())?;
        if let Some(d) = nack.delay {
            check_range("delay", d, HumanDuration::ZERO, config::limits::DELAY_MAX)?;
        }
        let now = self.now();
        let (outcomes, ticket, woken) = self.lock().nack(queue, receipts, &nack, now)?;
        self.shared.store.durable(ticket).await?;
        for n in woken {
            n.notify_waiters();
        }
        Ok(outcomes)
    }

    /// Extends leases to `lease_timeout` from now.
    pub async fn extend(
        &self,
        queue: &str,
        receipts: &[String],
        lease_timeout: HumanDuration,
    ) -> Result<Vec<ReceiptOutcome>> {
        check_batch(receipts.len())?;
        check_range(
            "lease_timeout",
            lease_timeout,
            config::limits::LEASE_MIN,
            config::limits::LEASE_MAX,
        )?;
        let now = self.now();
        let (outcomes, ticket) = self.lock().extend(queue, receipts, lease_timeout, now)?;
        self.shared.store.durable(ticket).await?;
        Ok(outcomes)
    }

    /// Stops leased messages whose handling would extend an event chain past its hop
    /// limit: into the queue's dead-letter queue with reason `loop_detected`, or removed
    /// if it has none.
    pub async fn stop_loops(
        &self,
        queue: &str,
        receipts: &[String],
    ) -> Result<Vec<ReceiptOutcome>> {
        check_batch(receipts.len())?;
        let now = self.now();
        let (outcomes, ticket, woken) = self.lock().stop_loops(queue, receipts, now)?;
        self.shared.store.durable(ticket).await?;
        for n in woken {
            n.notify_waiters();
        }
        Ok(outcomes)
    }

    /// Everything the broker and its store count, at one moment.
    pub fn metrics(&self) -> Result<BrokerMetrics> {
        self.metrics_with(true)
    }

    /// As [`Broker::metrics`] without the oldest message's age, which costs a store read
    /// per queue: the counts alone, from memory (what usage metering samples each second).
    pub fn counts(&self) -> Result<BrokerMetrics> {
        self.metrics_with(false)
    }

    fn metrics_with(&self, oldest_age: bool) -> Result<BrokerMetrics> {
        let now = self.now();
        let engine = self.lock();
        let (queues, streams) = engine.metrics(now, oldest_age)?;
        let topics = engine.all_topics();
        drop(engine);
        Ok(BrokerMetrics {
            queues,
            topics,
            streams,
            store: self.shared.store.metrics(),
        })
    }

    /// Removes every message of the queue, leased ones included. Returns how many.
    pub async fn purge(&self, queue: &str) -> Result<u64> {
        let (n, ticket) = self.lock().purge(queue)?;
        self.shared.store.durable(ticket).await?;
        Ok(n)
    }

    /// Moves up to `max` of this queue's messages back from its dead-letter queue.
    pub async fn redrive(&self, queue: &str, max: u64) -> Result<Redrive> {
        let now = self.now();
        let (redrive, ticket, notify) = self.lock().redrive(queue, max, now)?;
        self.shared.store.durable(ticket).await?;
        notify.notify_waiters();
        Ok(redrive)
    }

    // ---- topics ----

    /// Creates topic `name`, or updates its configuration. Returns whether it was created.
    pub async fn put_topic(&self, name: &Name, config: TopicConfig) -> Result<bool> {
        config.validate()?;
        let now = self.now();
        let (created, ticket) = self.lock().put_topic(name, config, now)?;
        self.shared.store.durable(ticket).await?;
        Ok(created)
    }

    /// The definition and counts of topic `name`.
    pub fn get_topic(&self, name: &str) -> Result<TopicInfo> {
        self.lock().get_topic(name)
    }

    /// Every topic, by name.
    pub fn list_topics(&self) -> Vec<TopicInfo> {
        self.lock().list_topics()
    }

    /// Deletes topic `name`, its log and its subscriptions.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let (ticket, woken) = self.lock().delete_topic(name)?;
        for n in woken {
            n.notify_waiters();
        }
        self.shared.store.durable(ticket).await?;
        Ok(())
    }

    /// Publishes structured-mode CloudEvents; each is stored, recognised as a duplicate, or
    /// rejected on its own. Answers once the stored ones are durable.
    pub async fn publish(
        &self,
        topic: &str,
        events: Vec<serde_json::Map<String, serde_json::Value>>,
    ) -> Result<Vec<PublishOutcome>> {
        if events.len() > BATCH_MAX {
            return Err(Error::BatchTooLarge(events.len()));
        }
        let now = self.now();
        let (outcomes, ticket, woken) = self.lock().publish(topic, events, now)?;
        self.shared
            .store
            .durable(ticket)
            .instrument(tracing::info_span!(target: context::TRACE_TARGET, "store.commit"))
            .await?;
        for n in woken {
            n.notify_waiters();
        }
        Ok(outcomes)
    }

    /// Up to `limit` events of `topic` from a position (an offset past the end reads
    /// nothing).
    pub fn read_events(&self, topic: &str, from: Start, limit: usize) -> Result<EventPage> {
        let engine = self.lock();
        let offset = match from {
            Start::Offset(n) => n,
            Start::Time(ms) => engine.offset_at_time(topic, ms)?,
            Start::Earliest => 0,
            Start::Latest => engine.get_topic(topic)?.stats.next_offset,
        };
        engine.read_events(topic, offset, limit)
    }

    /// Notified whenever events are published to `topic` (for live readers).
    pub fn topic_waker(&self, topic: &str) -> Result<Waker> {
        self.lock().topic_notify(topic)
    }

    /// The latest event of `key` in compacted topic `topic`.
    pub fn table_get(&self, topic: &str, key: &str) -> Result<StoredEvent> {
        self.lock().table_get(topic, key)
    }

    /// Up to `limit` live keys of compacted topic `topic` after `after`, with their events.
    pub fn table_page(
        &self,
        topic: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, StoredEvent)>> {
        self.lock().table_page(topic, after, limit)
    }

    // ---- subscriptions ----

    /// The name under which the queue operations (`receive`, `ack`, `nack`, `extend`,
    /// `redrive`) reach subscription `sub` of `topic`.
    pub fn subscription_queue(topic: &str, sub: &str) -> String {
        engine::subscription_queue(topic, sub)
    }

    /// Creates subscription `sub` on `topic`, or updates it. Returns whether it was created.
    pub async fn put_subscription(
        &self,
        topic: &str,
        sub: &Name,
        config: SubscriptionConfig,
    ) -> Result<bool> {
        config.validate()?;
        let now = self.now();
        let (created, ticket) = self.lock().put_subscription(topic, sub, config, now)?;
        self.shared.store.durable(ticket).await?;
        Ok(created)
    }

    pub fn get_subscription(&self, topic: &str, sub: &str) -> Result<SubscriptionInfo> {
        let now = self.now();
        self.lock().get_subscription(topic, sub, now)
    }

    pub fn list_subscriptions(&self, topic: &str) -> Result<Vec<SubscriptionInfo>> {
        let now = self.now();
        self.lock().list_subscriptions(topic, now)
    }

    /// Deletes subscription `sub` of `topic` and its delivery state.
    pub async fn delete_subscription(&self, topic: &str, sub: &str) -> Result<()> {
        let (ticket, notify) = self.lock().delete_subscription(topic, sub)?;
        notify.notify_waiters();
        self.shared.store.durable(ticket).await?;
        Ok(())
    }

    /// Moves subscription `sub` to a position; returns the offset it now starts from.
    /// Its leases and pending retries are dropped: delivery starts again from there.
    pub async fn seek(&self, topic: &str, sub: &str, to: Start) -> Result<u64> {
        let (offset, ticket, notify) = self.lock().seek(topic, sub, to)?;
        self.shared.store.durable(ticket).await?;
        notify.notify_waiters();
        Ok(offset)
    }

    /// Moves subscription `sub` of `topic` to `to` and deletes the key-value state of
    /// `scope`, with no commit in between: a projection's rebuild. Receipts leased before
    /// are stale afterwards, so nothing folded before can commit onto the emptied state.
    pub async fn rewind_with_state(
        &self,
        topic: &str,
        sub: &str,
        to: Start,
        scope: &str,
    ) -> Result<u64> {
        let (offset, ticket, notify) = {
            let mut engine = self.lock();
            let (offset, _, notify) = engine.seek(topic, sub, to)?;
            // The later write's ticket covers the earlier: the journal is in order.
            (offset, engine.kv_drop(scope)?, notify)
        };
        self.shared.store.durable(ticket).await?;
        notify.notify_waiters();
        Ok(offset)
    }

    // ---- function state and invocation commits ----

    /// The committed value of `key` in the key-value state of `scope` (a function).
    pub fn kv_get(&self, scope: &str, key: &str) -> Result<Option<Vec<u8>>> {
        self.lock().kv_get(scope, key)
    }

    /// Keys of `scope` starting with `prefix`, after `after`, at most `limit`, in order.
    pub fn kv_list(
        &self,
        scope: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        self.lock().kv_list(scope, prefix, after, limit)
    }

    /// Deletes all key-value state of `scope`.
    pub async fn kv_drop(&self, scope: &str) -> Result<()> {
        let ticket = self.lock().kv_drop(scope)?;
        self.shared.store.durable(ticket).await?;
        Ok(())
    }

    /// Whether `event` could be published to `topic` now (the topic exists, the
    /// event is a valid CloudEvent within the topic's limits).
    pub fn check_publish(
        &self,
        topic: &str,
        event: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<()> {
        let now = self.now();
        self.lock().check_publish(topic, event, now)
    }

    /// Whether `message` could be sent to `queue` now.
    pub fn check_send(&self, queue: &str, message: &NewMessage) -> Result<()> {
        self.lock().check_send(queue, message)
    }

    /// Commits an invocation's ack, nacks and effects in one atomic batch, or
    /// nothing (an error says why: a receipt no longer held, a changed key, an
    /// effect no longer valid). Answers once the batch is durable.
    pub async fn commit(&self, commit: Commit) -> Result<()> {
        let receipts = commit.ack.len() + commit.nack.len();
        if receipts > BATCH_MAX {
            return Err(Error::BatchTooLarge(receipts));
        }
        let now = self.now();
        let (ticket, woken) = self.lock().commit(commit, now)?;
        self.shared.store.durable(ticket).await?;
        for n in woken {
            n.notify_waiters();
        }
        Ok(())
    }

    // ---- event store ----

    /// Appends events to `stream` atomically if `expected` holds. A retry of an append
    /// that already happened (the same event ids at the position `expected` names) answers
    /// as it did without writing. Answers once the append is durable.
    pub async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<serde_json::Map<String, serde_json::Value>>,
    ) -> Result<AppendResult> {
        let now = self.now();
        let (result, ticket, woken) = self.lock().append(stream, expected, events, now)?;
        self.shared.store.durable(ticket).await?;
        for n in woken {
            n.notify_waiters();
        }
        Ok(result)
    }

    /// Up to `limit` visible events of `stream` from version `from` (default: the first
    /// going forward, the last going backward).
    pub fn read_stream(
        &self,
        stream: &str,
        from: Option<u64>,
        direction: Direction,
        limit: usize,
    ) -> Result<StreamPage> {
        let now = self.now();
        self.lock().read_stream(stream, from, direction, limit, now)
    }

    /// Up to `limit` visible events of `$all` from position `from`, in commit order.
    pub fn read_all(&self, from: u64, limit: usize) -> Result<GlobalPage> {
        let now = self.now();
        self.lock().read_all(from, limit, now)
    }

    /// Up to `limit` visible events of a category or an event type from position `from`.
    pub fn read_index(&self, index: Index<'_>, from: u64, limit: usize) -> Result<GlobalPage> {
        let now = self.now();
        self.lock().read_index(index, from, limit, now)
    }

    /// What is known of `stream` (also of one that only has metadata).
    pub fn stream_info(&self, stream: &str) -> Result<StreamInfo> {
        self.lock().stream_info(stream)
    }

    /// Replaces the metadata of `stream`.
    pub async fn set_stream_metadata(&self, stream: &str, metadata: StreamMetadata) -> Result<()> {
        let now = self.now();
        let ticket = self.lock().set_metadata(stream, metadata, now)?;
        self.shared.store.durable(ticket).await?;
        Ok(())
    }

    /// Deletes `stream` if `expected` holds: soft, or hard (a tombstone).
    pub async fn delete_stream(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        hard: bool,
    ) -> Result<()> {
        let now = self.now();
        let ticket = self.lock().delete_stream(stream, expected, hard, now)?;
        self.shared.store.durable(ticket).await?;
        Ok(())
    }

    /// Saves the snapshot of `stream` at `version`.
    pub async fn save_snapshot(
        &self,
        stream: &str,
        version: u64,
        data: serde_json::Value,
    ) -> Result<()> {
        let now = self.now();
        let ticket = self.lock().save_snapshot(stream, version, data, now)?;
        self.shared.store.durable(ticket).await?;
        Ok(())
    }

    /// The latest snapshot of `stream`, if any.
    pub fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>> {
        self.lock().load_snapshot(stream)
    }

    /// Notified whenever events are appended to any stream (for live readers).
    pub fn streams_waker(&self) -> Waker {
        self.lock()
            .topic_notify(ALL)
            .expect("the $all topic exists from the first start")
    }

    /// A new random CloudEvent id (a version 4 UUID), as publish gives events without one.
    pub fn new_event_id(&self) -> String {
        self.lock().new_event_id()
    }

    /// 128 bits from the broker's random source (new trace and span ids).
    pub fn random(&self) -> u128 {
        self.lock().random()
    }

    /// Now, by the broker's clock, in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        self.now()
    }

    /// Wakes every long poll (used at shutdown, together with cancelling their token).
    pub fn wake_all(&self) {
        for n in self.lock().all_notifies() {
            n.notify_waiters();
        }
    }

    /// Whether the store still takes writes.
    pub fn is_healthy(&self) -> bool {
        self.shared.store.is_healthy()
    }
}

/// A receive's own arguments: how many, how long to wait, and the lease it asks for.
fn check_receive(
    max: usize,
    wait: HumanDuration,
    lease_timeout: Option<HumanDuration>,
) -> Result<()> {
    if max == 0 || max > BATCH_MAX {
        return Err(Error::InvalidMessage(format!(
            "max must be 1..={BATCH_MAX}"
        )));
    }
    check_range("wait", wait, HumanDuration::ZERO, WAIT_MAX)?;
    if let Some(lease) = lease_timeout {
        check_range(
            "lease_timeout",
            lease,
            config::limits::LEASE_MIN,
            config::limits::LEASE_MAX,
        )?;
    }
    Ok(())
}

fn check_batch(n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::InvalidMessage("receipts must not be empty".into()));
    }
    if n > BATCH_MAX {
        return Err(Error::BatchTooLarge(n));
    }
    Ok(())
}

fn check_range(
    field: &'static str,
    value: HumanDuration,
    min: HumanDuration,
    max: HumanDuration,
) -> Result<()> {
    if value < min || value > max {
        return Err(Error::OutOfRange {
            field,
            value,
            min,
            max,
        });
    }
    Ok(())
}

/// Wakes whoever waits for new messages or events.
pub type Waker = Arc<Notify>;
