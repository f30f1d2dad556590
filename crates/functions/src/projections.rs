//! Projections: a function folding the events of a stream, a category or `$all` into its
//! key-value state, one invocation at a time, each stream's events in order. A projection
//! is a persistent subscription of the event store (a FIFO subscription of `$all` grouped
//! by stream) feeding a trigger with a concurrency of one; the trigger commits the
//! function's state writes with the acknowledgement of the events it folded, so the
//! subscription's position is the projection's checkpoint and every event is folded
//! exactly once. A rebuild folds everything again from an empty state; it is recorded
//! before it starts, so a crash part-way finishes it at the next start.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use sluice_broker::{
    ALL, Broker, Error as BrokerError, STREAM_ATTRIBUTE, Start, StreamSelector, SubscriptionConfig,
};
use sluice_types::Name;

use crate::triggers::{Source, TriggerConfig, Triggers};
use crate::{Error, Functions, Result, Target};

/// Most events one invocation folds.
pub const BATCH_MAX: u32 = 1_000;
/// How long a rebuild waits for the invocation under way to finish.
const DRAIN_WAIT: Duration = Duration::from_secs(120);

/// What a projection reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ProjectionSource {
    /// One stream.
    Stream(String),
    /// Every stream of a category (`order` reads `order-1`, `order-2`, …).
    Category(String),
    /// Every stream.
    All,
}

/// A projection's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectionConfig {
    /// The function that folds events; its key-value state is the projection's state.
    pub function: String,
    #[serde(default = "live")]
    pub alias: String,
    pub source: ProjectionSource,
    /// Most events per invocation (at most one per stream).
    #[serde(default = "hundred")]
    pub batch_size: u32,
}

fn live() -> String {
    crate::LIVE.to_owned()
}

fn hundred() -> u32 {
    100
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    config: ProjectionConfig,
    created_ms: u64,
    /// A rebuild started and has not finished.
    rebuilding: bool,
    rebuilds: u64,
}

/// A projection with where it stands.
#[derive(Debug, Clone)]
pub struct ProjectionInfo {
    pub name: String,
    pub config: ProjectionConfig,
    pub created_ms: u64,
    pub paused: bool,
    pub rebuilding: bool,
    pub rebuilds: u64,
    /// The `$all` position up to which events were taken.
    pub position: u64,
    /// The end of `$all`.
    pub head: u64,
    /// Events of `$all` not yet taken plus those taken and not yet folded (the
    /// former before filtering by the source).
    pub lag: u64,
    pub invocations: u64,
    pub errors: u64,
    pub last_error: Option<String>,
}

fn record_key(name: &str) -> Vec<u8> {
    let mut k = b"p\0".to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

/// The subscription and the trigger of projection `name`.
pub fn resource_name(name: &str) -> String {
    format!("projection-{name}")
}

/// The projections of a server.
#[derive(Clone)]
pub struct Projections {
    functions: Functions,
    triggers: Triggers,
    broker: Broker,
    lock: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl Projections {
    /// Finishes rebuilds a crash interrupted.
    pub async fn start(functions: Functions, triggers: Triggers, broker: Broker) -> Result<Self> {
        let this = Self {
            functions,
            triggers,
            broker,
            lock: Default::default(),
        };
        for (name, record) in this.records()? {
            if record.rebuilding {
                tracing::info!(projection = %name, "finishing a rebuild interrupted by a stop");
                this.finish_rebuild(&name, record).await?;
            }
        }
        Ok(this)
    }

    fn records(&self) -> Result<Vec<(String, Record)>> {
        let ks = &self.functions.inner.ks;
        let mut out = Vec::new();
        for (k, v) in ks.range(b"p\0", b"p\x01", usize::MAX)? {
            let name = String::from_utf8_lossy(&k[2..]).into_owned();
            let r: Record =
                serde_json::from_slice(&v).map_err(|e| Error::Corrupt(e.to_string()))?;
            out.push((name, r));
        }
        Ok(out)
    }

    fn record(&self, name: &str) -> Result<Record> {
        let v = self
            .functions
            .inner
            .ks
            .get(&record_key(name))?
            .ok_or_else(|| Error::ProjectionNotFound(name.to_owned()))?;
        serde_json::from_slice(&v).map_err(|e| Error::Corrupt(e.to_string()))
    }

    async fn put_record(&self, name: &str, record: &Record) -> Result<()> {
        let store = &self.functions.inner.store;
        let mut batch = store.batch();
        batch.put(
            &self.functions.inner.ks,
            record_key(name),
            crate::encode(record),
        );
        store.commit(batch).await?;
        Ok(())
    }

    /// Creates projection `name`, or changes its function, alias or batch size (its
    /// source is fixed: a projection of another source is another projection).
    pub async fn put(&self, name: &Name, config: ProjectionConfig) -> Result<bool> {
        if config.batch_size == 0 || config.batch_size > BATCH_MAX {
            return Err(Error::InvalidSettings(format!(
                "batch_size {} is outside 1..={BATCH_MAX}",
                config.batch_size
            )));
        }
        let selector = match &config.source {
            ProjectionSource::Stream(s) => StreamSelector::Stream(s),
            ProjectionSource::Category(c) => StreamSelector::Category(c),
            ProjectionSource::All => StreamSelector::All,
        };
        selector
            .validate()
            .map_err(|e| Error::InvalidSettings(e.to_string()))?;
        self.functions
            .resolve(&config.function, &Target::Alias(config.alias.clone()))?;
        let _lock = self.lock.lock().await;
        let existing = self.record(name.as_str()).ok();
        if let Some(r) = &existing
            && r.config.source != config.source
        {
            return Err(Error::InvalidSettings(
                "a projection's source is fixed; create another projection".into(),
            ));
        }
        // The function's state is the projection's: two projections cannot share it.
        if let Some((other, _)) = self
            .records()?
            .into_iter()
            .find(|(n, r)| n != name.as_str() && r.config.function == config.function)
        {
            return Err(Error::InvalidSettings(format!(
                "function {:?} already folds projection {other:?}; its state is that projection's",
                config.function
            )));
        }
        let res = resource_name(name.as_str());
        let res_name = Name::new(res.clone()).map_err(|e| Error::InvalidSettings(e.to_string()))?;
        let sub: SubscriptionConfig = serde_json::from_value(json!({
            "start": "earliest",
            "fifo": true,
            "group_attribute": STREAM_ATTRIBUTE,
            "filter": { STREAM_ATTRIBUTE: selector.condition() },
        }))
        .map_err(|e| Error::InvalidSettings(e.to_string()))?;
        if existing.is_none() {
            self.broker.put_subscription(ALL, &res_name, sub).await?;
        }
        let paused = self
            .triggers
            .get(&res)
            .map(|t| t.config.paused)
            .unwrap_or(false);
        self.triggers
            .put(
                &res_name,
                TriggerConfig {
                    function: config.function.clone(),
                    alias: config.alias.clone(),
                    source: Source::Subscription {
                        topic: ALL.to_owned(),
                        subscription: res.clone(),
                    },
                    batch_size: config.batch_size,
                    batch_window: sluice_types::HumanDuration::ZERO,
                    max_concurrency: 1,
                    rate_limit: None,
                    paused,
                },
            )
            .await?;
        let record = Record {
            created_ms: existing
                .as_ref()
                .map_or_else(|| self.broker.now_ms(), |r| r.created_ms),
            rebuilding: false,
            rebuilds: existing.as_ref().map_or(0, |r| r.rebuilds),
            config,
        };
        self.put_record(name.as_str(), &record).await?;
        Ok(existing.is_none())
    }

    /// One projection with its position and lag.
    pub fn get(&self, name: &str) -> Result<ProjectionInfo> {
        let record = self.record(name)?;
        self.info(name, record)
    }

    fn info(&self, name: &str, record: Record) -> Result<ProjectionInfo> {
        let res = resource_name(name);
        let sub = self.broker.get_subscription(ALL, &res)?;
        let head = self.broker.get_topic(ALL)?.stats.next_offset;
        let trigger = self.triggers.get(&res).ok();
        let (paused, invocations, errors, last_error) = match &trigger {
            Some(t) => (
                t.config.paused,
                t.stats.invocations.load(Ordering::Relaxed),
                t.stats.errors.load(Ordering::Relaxed),
                t.stats.last_error.lock().unwrap().clone(),
            ),
            None => (true, 0, 0, None),
        };
        Ok(ProjectionInfo {
            name: name.to_owned(),
            created_ms: record.created_ms,
            paused,
            rebuilding: record.rebuilding,
            rebuilds: record.rebuilds,
            position: sub.cursor,
            head,
            lag: sub.backlog + sub.stats.visible + sub.stats.leased + sub.stats.delayed,
            invocations,
            errors,
            last_error,
            config: record.config,
        })
    }

    /// Every projection, by name.
    pub fn list(&self) -> Result<Vec<ProjectionInfo>> {
        self.records()?
            .into_iter()
            .map(|(name, r)| self.info(&name, r))
            .collect()
    }

    /// Folds every event again from an empty state: pauses the projection, lets the
    /// invocation under way finish, empties the state, moves the checkpoint to the start
    /// of `$all`, and resumes (unless it was paused before).
    pub async fn rebuild(&self, name: &str) -> Result<ProjectionInfo> {
        let _lock = self.lock.lock().await;
        let mut record = self.record(name)?;
        record.rebuilding = true;
        self.put_record(name, &record).await?;
        self.finish_rebuild(name, record).await?;
        self.get(name)
    }

    async fn finish_rebuild(&self, name: &str, mut record: Record) -> Result<()> {
        let res = resource_name(name);
        let was_paused = self.triggers.get(&res)?.config.paused;
        self.triggers.set_paused(&res, true).await?;
        let deadline = tokio::time::Instant::now() + DRAIN_WAIT;
        while self
            .triggers
            .get(&res)?
            .stats
            .in_flight
            .load(Ordering::Acquire)
            > 0
        {
            if tokio::time::Instant::now() > deadline {
                return Err(Error::InvalidSettings(format!(
                    "projection {name:?}: its invocation did not finish within {DRAIN_WAIT:?}; \
                     the rebuild resumes at the next start or the next rebuild"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // One step under the broker's lock: every receipt of the old pass is stale
        // afterwards, so nothing it leased can commit onto the emptied state.
        self.broker
            .rewind_with_state(ALL, &res, Start::Earliest, &record.config.function)
            .await?;
        record.rebuilding = false;
        record.rebuilds += 1;
        self.put_record(name, &record).await?;
        if !was_paused {
            self.triggers.set_paused(&res, false).await?;
        }
        Ok(())
    }

    /// Pauses or resumes the projection.
    pub async fn set_paused(&self, name: &str, paused: bool) -> Result<ProjectionInfo> {
        self.record(name)?;
        self.triggers
            .set_paused(&resource_name(name), paused)
            .await?;
        self.get(name)
    }

    /// Deletes the projection: its trigger, its subscription and its state (the function
    /// stays).
    pub async fn delete(&self, name: &str) -> Result<()> {
        let _lock = self.lock.lock().await;
        let record = self.record(name)?;
        let res = resource_name(name);
        match self.triggers.delete(&res).await {
            Ok(()) | Err(Error::TriggerNotFound(_)) => {}
            Err(e) => return Err(e),
        }
        match self.broker.delete_subscription(ALL, &res).await {
            Ok(()) | Err(BrokerError::SubscriptionNotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.broker.kv_drop(&record.config.function).await?;
        let store = &self.functions.inner.store;
        let mut batch = store.batch();
        batch.delete(&self.functions.inner.ks, record_key(name));
        store.commit(batch).await?;
        Ok(())
    }
}
