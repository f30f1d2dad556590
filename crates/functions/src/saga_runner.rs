//! Running sagas: each saga's history is an event-store stream (`saga-{id}`), appended with
//! an exact expected version before the orchestrator's commands for it are carried out, so
//! the stream is the saga's state. Commands run as tasks (function invocations with the
//! attempt's idempotency key, timers through the injected clock) whose results come back as
//! the next events. At start, every saga not finished is replayed from its stream and what
//! was under way runs again with the same keys.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sluice_broker::context::{self, TraceParent};
use sluice_broker::{Broker, Direction, Error as BrokerError, ExpectedVersion};
use sluice_sagas::orchestrator::{self, Command, Event, Saga, Status};
use sluice_sagas::{Action, SagaDefinition};
use sluice_types::Name;
use tokio_util::sync::CancellationToken;

use crate::{Error, Functions, Result, Target};

pub use crate::alerts::ALERTS_TOPIC;
/// The topic replies to `send` and `publish` steps go to (created with the first saga): a reply is a
/// CloudEvent with the command's `sagaid`, `sagastep`, `sagaattempt` and `sagakind`
/// attributes and the step's `reply` (or `failure`) type.
pub const REPLIES_TOPIC: &str = "sluice.saga.replies";
/// The runner's subscription of the replies topic.
const REPLIES_SUBSCRIPTION: &str = "runner";
/// The CloudEvent type of a saga's history events.
const HISTORY_TYPE: &str = "sluice.saga.event";

/// A saga's stream.
pub fn stream_of(id: &str) -> String {
    format!("saga-{id}")
}

/// What the index keeps of a saga, for listing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaSummary {
    pub id: String,
    pub definition: String,
    pub version: u32,
    pub status: Status,
    pub started_ms: u64,
    pub updated_ms: u64,
}

/// A saga as answered by get.
#[derive(Debug, Clone)]
pub struct SagaInfo {
    pub summary: SagaSummary,
    pub definition: SagaDefinition,
    pub saga: Saga,
}

/// One history event as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryEvent {
    pub definition: String,
    pub version: u32,
    pub at_ms: u64,
    pub event: Event,
}

struct Active {
    summary: SagaSummary,
    definition: SagaDefinition,
    saga: Saga,
    /// The stream's last version.
    last: u64,
}

/// The sagas of a server.
#[derive(Clone)]
pub struct Sagas {
    inner: Arc<Inner>,
}

struct Inner {
    functions: Functions,
    broker: Broker,
    active: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Active>>>>,
    cancel: CancellationToken,
    /// Whether the reply loop runs.
    replies_started: std::sync::atomic::AtomicBool,
    /// Sagas started and finished since start, by definition (and final status).
    counts: Mutex<SagaCounts>,
}

/// Sagas started and finished since the server started, for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct SagaCounts {
    /// By definition.
    pub started: std::collections::BTreeMap<String, u64>,
    /// By definition and final status (`completed`, `compensated`, …).
    pub finished: std::collections::BTreeMap<(String, String), u64>,
}

fn status_name(s: Status) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn index_key(id: &str) -> Vec<u8> {
    let mut k = b"r\0".to_vec();
    k.extend_from_slice(id.as_bytes());
    k
}

/// Key of an unfinished saga: what a start resumes, without reading every saga ever run.
fn unfinished_key(id: &str) -> Vec<u8> {
    let mut k = b"u\0".to_vec();
    k.extend_from_slice(id.as_bytes());
    k
}

fn history_event(h: &HistoryEvent) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("specversion".into(), "1.0".into());
    m.insert("source".into(), "/sluice/sagas".into());
    m.insert("type".into(), HISTORY_TYPE.into());
    m.insert(
        "data".into(),
        serde_json::to_value(h).expect("history serializes"),
    );
    m
}

impl Sagas {
    /// Resumes every saga not finished, and carries on with them until `cancel`.
    pub async fn start(
        functions: Functions,
        broker: Broker,
        cancel: CancellationToken,
    ) -> Result<Self> {
        let this = Self {
            inner: Arc::new(Inner {
                functions,
                broker,
                active: Mutex::new(HashMap::new()),
                cancel,
                replies_started: Default::default(),
                counts: Mutex::default(),
            }),
        };
        // Sagas were run before: listen for replies again. (A server that never ran one has
        // no saga topics.)
        if this.inner.broker.get_topic(REPLIES_TOPIC).is_ok() {
            this.ensure_replies().await?;
        }
        for summary in this.summaries(true)? {
            if summary.status.is_terminal() {
                continue;
            }
            match this.replay(&summary) {
                Ok(active) => {
                    if active.summary != summary {
                        this.put_summary(&active.summary).await?;
                    }
                    let commands = orchestrator::resume(&active.definition, &active.saga);
                    let id = summary.id.clone();
                    this.inner
                        .active
                        .lock()
                        .unwrap()
                        .insert(id.clone(), Arc::new(tokio::sync::Mutex::new(active)));
                    this.execute(&id, commands);
                }
                Err(Error::SagaNotFound(_)) => {
                    // Indexed, then stopped before its first event: it never started.
                    this.delete_summary(&summary.id).await?;
                }
                Err(e) => tracing::error!(saga = %summary.id, error = %e, "cannot resume saga"),
            }
        }
        Ok(this)
    }

    /// Every saga's summary, or (`unfinished_only`) those of sagas not ended.
    fn summaries(&self, unfinished_only: bool) -> Result<Vec<SagaSummary>> {
        let ks = &self.inner.functions.inner.ks;
        let mut out = Vec::new();
        if unfinished_only {
            for k in ks.keys(b"u\0", b"u\x01", usize::MAX)? {
                if let Some(v) = ks.get(&index_key(&String::from_utf8_lossy(&k[2..])))? {
                    out.push(
                        serde_json::from_slice(&v).map_err(|e| Error::Corrupt(e.to_string()))?,
                    );
                }
            }
            return Ok(out);
        }
        for (_, v) in ks.range(b"r\0", b"r\x01", usize::MAX)? {
            out.push(serde_json::from_slice(&v).map_err(|e| Error::Corrupt(e.to_string()))?);
        }
        Ok(out)
    }

    /// Every history event of saga `id`, in order.
    pub fn history(&self, id: &str) -> Result<Vec<(u64, HistoryEvent)>> {
        let stream = stream_of(id);
        let mut out = Vec::new();
        let mut from = Some(0);
        while let Some(f) = from {
            let page =
                match self
                    .inner
                    .broker
                    .read_stream(&stream, Some(f), Direction::Forward, 1_000)
                {
                    Ok(p) => p,
                    Err(BrokerError::StreamNotFound(_)) => {
                        return Err(Error::SagaNotFound(id.to_owned()));
                    }
                    Err(e) => return Err(e.into()),
                };
            for e in page.events {
                let v: Value =
                    serde_json::from_slice(&e.event).map_err(|e| Error::Corrupt(e.to_string()))?;
                let h: HistoryEvent = serde_json::from_value(v["data"].clone())
                    .map_err(|e| Error::Corrupt(format!("saga history: {e}")))?;
                out.push((e.version, h));
            }
            from = page.next;
        }
        Ok(out)
    }

    /// Rebuilds a saga from its history. The stream is the truth: its first event names the
    /// definition and version, whatever the index says.
    fn replay(&self, summary: &SagaSummary) -> Result<Active> {
        let history = self.history(&summary.id)?;
        let Some((_, first)) = history.first() else {
            return Err(Error::SagaNotFound(summary.id.clone()));
        };
        let definition = self
            .inner
            .functions
            .saga_definition(&first.definition, Some(first.version))?
            .definition;
        let mut summary = summary.clone();
        summary.definition = first.definition.clone();
        summary.version = first.version;
        summary.started_ms = first.at_ms;
        let mut saga = Saga::new(&summary.id, &definition);
        let mut last = 0;
        for (version, h) in &history {
            orchestrator::handle(&definition, &mut saga, &h.event, h.at_ms);
            summary.updated_ms = h.at_ms;
            last = *version;
        }
        summary.status = saga.status;
        Ok(Active {
            summary,
            definition,
            saga,
            last,
        })
    }

    /// Starts a saga of `definition` (its latest version unless `version`) with `input`.
    /// Starting an id that exists answers the existing saga (and `false`).
    pub async fn start_saga(
        &self,
        definition: &str,
        version: Option<u32>,
        id: Option<String>,
        input: Value,
    ) -> Result<(SagaInfo, bool)> {
        let def = self.inner.functions.saga_definition(definition, version)?;
        let id = id.unwrap_or_else(|| self.inner.broker.new_event_id());
        sluice_broker::validate_stream_name(&stream_of(&id))
            .map_err(|e| Error::InvalidSettings(format!("saga id {id:?}: {e}")))?;
        self.ensure_alerts_topic().await?;
        self.ensure_replies().await?;
        let now = self.inner.broker.now_ms();
        let summary = SagaSummary {
            id: id.clone(),
            definition: def.name.clone(),
            version: def.version,
            status: Status::Running,
            started_ms: now,
            updated_ms: now,
        };
        let started = HistoryEvent {
            definition: def.name.clone(),
            version: def.version,
            at_ms: now,
            event: Event::Started { input },
        };
        if let Ok(existing) = self.get(&id) {
            return Ok((existing, false));
        }
        // Indexed first, so a saga whose stream exists is always one the server resumes;
        // an index entry without a stream (a crash in between) is dropped at the next start.
        self.put_summary(&summary).await?;
        match self
            .inner
            .broker
            .append(
                &stream_of(&id),
                ExpectedVersion::NoStream,
                vec![history_event(&started)],
            )
            .await
        {
            Ok(_) => {}
            Err(BrokerError::WrongExpectedVersion { .. }) => return Ok((self.get(&id)?, false)),
            Err(e) => return Err(e.into()),
        }
        *self
            .inner
            .counts
            .lock()
            .unwrap()
            .started
            .entry(def.name.clone())
            .or_default() += 1;
        let mut saga = Saga::new(&id, &def.definition);
        let commands = orchestrator::handle(&def.definition, &mut saga, &started.event, now);
        if saga.status.is_terminal() {
            self.count_finished(&def.name, saga.status);
        }
        let mut active = Active {
            summary,
            definition: def.definition,
            saga,
            last: 0,
        };
        active.summary.status = active.saga.status;
        if active.summary.status != Status::Running {
            self.put_summary(&active.summary).await?;
        }
        let info = SagaInfo {
            summary: active.summary.clone(),
            definition: active.definition.clone(),
            saga: active.saga.clone(),
        };
        self.inner
            .active
            .lock()
            .unwrap()
            .insert(id.clone(), Arc::new(tokio::sync::Mutex::new(active)));
        self.execute(&id, commands);
        Ok((info, true))
    }

    /// Creates the replies topic and the runner's subscription if missing, and starts
    /// reading replies (once).
    async fn ensure_replies(&self) -> Result<()> {
        if self
            .inner
            .replies_started
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Ok(());
        }
        let b = &self.inner.broker;
        if b.get_topic(REPLIES_TOPIC).is_err() {
            let name = Name::new(REPLIES_TOPIC).expect("a valid name");
            b.put_topic(&name, sluice_broker::TopicConfig::default())
                .await?;
        }
        if b.get_subscription(REPLIES_TOPIC, REPLIES_SUBSCRIPTION)
            .is_err()
        {
            let config: sluice_broker::SubscriptionConfig =
                serde_json::from_value(json!({"start": "earliest"}))
                    .map_err(|e| Error::Corrupt(e.to_string()))?;
            let name = Name::new(REPLIES_SUBSCRIPTION).expect("a valid name");
            b.put_subscription(REPLIES_TOPIC, &name, config).await?;
        }
        if !self
            .inner
            .replies_started
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            tokio::spawn(self.clone().reply_loop());
        }
        Ok(())
    }

    /// Turns replies into results of the attempts they answer.
    async fn reply_loop(self) {
        let queue = Broker::subscription_queue(REPLIES_TOPIC, REPLIES_SUBSCRIPTION);
        let stop = self.inner.cancel.clone();
        while !stop.is_cancelled() {
            let got = self
                .inner
                .broker
                .receive(
                    &queue,
                    100,
                    sluice_types::HumanDuration::from_millis(1_000),
                    None,
                    &stop,
                )
                .await;
            let deliveries = match got {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(error = %e, "receiving saga replies failed");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = stop.cancelled() => return,
                    }
                }
            };
            for d in &deliveries {
                if let Some((id, event)) = self.reply_event(&d.body).await {
                    self.feed(&id, event).await;
                }
            }
            let receipts: Vec<String> = deliveries.into_iter().map(|d| d.receipt).collect();
            if !receipts.is_empty()
                && let Err(e) = self.inner.broker.ack(&queue, &receipts).await
            {
                tracing::error!(error = %e, "acking saga replies failed");
            }
        }
    }

    /// The saga and result a reply stands for; `None` for anything that is not the reply
    /// of a running saga's step (it is acknowledged and dropped).
    async fn reply_event(&self, body: &[u8]) -> Option<(String, Event)> {
        let e: Value = serde_json::from_slice(body).ok()?;
        let text = |k: &str| match &e[k] {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        let id = text("sagaid")?;
        let step: usize = text("sagastep")?.parse().ok()?;
        let attempt: u32 = text("sagaattempt")?.parse().ok()?;
        let compensation = text("sagakind")? == "compensation";
        let ty = text("type")?;
        let active = self.inner.active.lock().unwrap().get(&id).cloned()?;
        let definition = active.lock().await.definition.clone();
        let s = definition.steps.get(step)?;
        let action = if compensation {
            s.compensation.as_ref()?
        } else {
            &s.action
        };
        let (reply, failure) = match action {
            Action::Send { reply, failure, .. } | Action::Publish { reply, failure, .. } => {
                (reply, failure)
            }
            Action::Invoke { .. } => return None,
        };
        let data = e.get("data").cloned().unwrap_or(Value::Null);
        let ok = if &ty == reply {
            true
        } else if failure.as_ref() == Some(&ty) {
            false
        } else {
            return None;
        };
        let error = || match &data {
            Value::String(s) => s.clone(),
            Value::Null => format!("replied {ty}"),
            other => other.to_string(),
        };
        let event = match (compensation, ok) {
            (false, true) => Event::ActionSucceeded {
                step,
                attempt,
                output: data.clone(),
            },
            (false, false) => Event::ActionFailed {
                step,
                attempt,
                error: error(),
            },
            (true, true) => Event::CompensationSucceeded { step, attempt },
            (true, false) => Event::CompensationFailed {
                step,
                attempt,
                error: error(),
            },
        };
        Some((id, event))
    }

    async fn ensure_alerts_topic(&self) -> Result<()> {
        Ok(crate::alerts::ensure_topic(&self.inner.broker).await?)
    }

    async fn delete_summary(&self, id: &str) -> Result<()> {
        let store = &self.inner.functions.inner.store;
        let mut batch = store.batch();
        batch.delete(&self.inner.functions.inner.ks, index_key(id));
        batch.delete(&self.inner.functions.inner.ks, unfinished_key(id));
        store.commit(batch).await?;
        Ok(())
    }

    async fn put_summary(&self, s: &SagaSummary) -> Result<()> {
        let store = &self.inner.functions.inner.store;
        let mut batch = store.batch();
        let ks = &self.inner.functions.inner.ks;
        batch.put(ks, index_key(&s.id), crate::encode(s));
        if s.status.is_terminal() {
            batch.delete(ks, unfinished_key(&s.id));
        } else {
            batch.put(ks, unfinished_key(&s.id), Vec::new());
        }
        store.commit(batch).await?;
        Ok(())
    }

    /// Saga `id` with its steps.
    pub fn get(&self, id: &str) -> Result<SagaInfo> {
        let active = self.inner.active.lock().unwrap().get(id).cloned();
        if let Some(a) = active
            && let Ok(a) = a.try_lock()
        {
            return Ok(SagaInfo {
                summary: a.summary.clone(),
                definition: a.definition.clone(),
                saga: a.saga.clone(),
            });
        }
        let raw = self
            .inner
            .functions
            .inner
            .ks
            .get(&index_key(id))?
            .ok_or_else(|| Error::SagaNotFound(id.to_owned()))?;
        let summary: SagaSummary =
            serde_json::from_slice(&raw).map_err(|e| Error::Corrupt(e.to_string()))?;
        let a = self.replay(&summary)?;
        Ok(SagaInfo {
            summary: a.summary,
            definition: a.definition,
            saga: a.saga,
        })
    }

    /// Sagas, filtered by status and definition.
    pub fn list(
        &self,
        status: Option<Status>,
        definition: Option<&str>,
    ) -> Result<Vec<SagaSummary>> {
        Ok(self
            .summaries(false)?
            .into_iter()
            .filter(|s| status.is_none_or(|st| s.status == st))
            .filter(|s| definition.is_none_or(|d| s.definition == d))
            .collect())
    }

    /// Cancels saga `id`: it compensates what completed.
    pub async fn cancel(&self, id: &str) -> Result<SagaInfo> {
        let info = self.get(id)?;
        if info.summary.status.is_terminal() {
            return Err(Error::InvalidSettings(format!(
                "saga {id:?} already ended ({:?})",
                info.summary.status
            )));
        }
        self.feed(id, Event::CancelRequested).await;
        self.get(id)
    }

    /// Records `event` for saga `id` and carries out what it leads to.
    async fn feed(&self, id: &str, event: Event) {
        let Some(active) = self.inner.active.lock().unwrap().get(id).cloned() else {
            return;
        };
        let mut a = active.lock().await;
        if a.saga.status.is_terminal() {
            return;
        }
        let now = self.inner.broker.now_ms();
        let h = HistoryEvent {
            definition: a.summary.definition.clone(),
            version: a.summary.version,
            at_ms: now,
            event,
        };
        // Recorded first: what is carried out is always what the history says.
        match self
            .inner
            .broker
            .append(
                &stream_of(id),
                ExpectedVersion::Exact(a.last),
                vec![history_event(&h)],
            )
            .await
        {
            Ok(r) => a.last = r.last_version,
            Err(e) => {
                tracing::error!(saga = %id, error = %e, "recording a saga event failed; it resumes at the next start");
                return;
            }
        }
        let before = a.saga.status;
        let definition = a.definition.clone();
        let commands = orchestrator::handle(&definition, &mut a.saga, &h.event, now);
        if a.saga.status.is_terminal() && !before.is_terminal() {
            self.count_finished(&a.summary.definition, a.saga.status);
        }
        a.summary.status = a.saga.status;
        a.summary.updated_ms = now;
        if a.saga.status != before
            && let Err(e) = self.put_summary(&a.summary).await
        {
            tracing::error!(saga = %id, error = %e, "updating the saga index failed");
        }
        drop(a);
        self.execute(id, commands);
    }

    fn count_finished(&self, definition: &str, status: Status) {
        *self
            .inner
            .counts
            .lock()
            .unwrap()
            .finished
            .entry((definition.to_owned(), status_name(status)))
            .or_default() += 1;
    }

    /// Sagas started and finished since start, and how many run now.
    pub fn counts(&self) -> (SagaCounts, usize) {
        let counts = self.inner.counts.lock().unwrap().clone();
        (counts, self.inner.active.lock().unwrap().len())
    }

    fn execute(&self, id: &str, commands: Vec<Command>) {
        for c in commands {
            let this = self.clone();
            let id = id.to_owned();
            match c {
                Command::RunAction {
                    step,
                    attempt,
                    action,
                    input,
                    idempotency_key,
                } => self.spawn_run(id, step, attempt, false, action, input, idempotency_key),
                Command::RunCompensation {
                    step,
                    attempt,
                    action,
                    input,
                    idempotency_key,
                } => self.spawn_run(id, step, attempt, true, action, input, idempotency_key),
                Command::SetTimer { timer, at_ms } => {
                    let wait = at_ms.saturating_sub(self.inner.broker.now_ms());
                    let stop = self.inner.cancel.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(wait)) => {
                                this.feed(&id, Event::TimerFired { timer }).await;
                            }
                            _ = stop.cancelled() => {}
                        }
                    });
                }
                Command::Alert { step, error } => {
                    tokio::spawn(async move {
                        let data = json!({"saga": id, "step": step, "error": error});
                        crate::alerts::publish(
                            &this.inner.broker,
                            "/sluice/sagas",
                            "saga.compensation_failed",
                            &id,
                            data,
                        )
                        .await;
                    });
                }
                Command::Finished { status } => {
                    tracing::debug!(saga = %id, ?status, "saga finished");
                    self.inner.active.lock().unwrap().remove(&id);
                }
            }
        }
    }

    /// Runs an action or compensation in a task and feeds its result back (unless a reply
    /// will bring it).
    #[allow(clippy::too_many_arguments)]
    fn spawn_run(
        &self,
        id: String,
        step: usize,
        attempt: u32,
        compensation: bool,
        action: Action,
        input: Value,
        key: String,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            let call = Call {
                id: &id,
                step,
                attempt,
                compensation,
                key: &key,
            };
            let event = match (compensation, this.run(&call, &action, input).await) {
                // Sent: the reply brings the result.
                (_, Ok(None)) => return,
                (false, Ok(Some(output))) => Event::ActionSucceeded {
                    step,
                    attempt,
                    output,
                },
                (false, Err(error)) => Event::ActionFailed {
                    step,
                    attempt,
                    error,
                },
                (true, Ok(Some(_))) => Event::CompensationSucceeded { step, attempt },
                (true, Err(error)) => Event::CompensationFailed {
                    step,
                    attempt,
                    error,
                },
            };
            this.feed(&id, event).await;
        });
    }

    /// Runs an action: its output, `None` when a reply will bring the result, or why it
    /// failed.
    async fn run(
        &self,
        call: &Call<'_>,
        action: &Action,
        input: Value,
    ) -> std::result::Result<Option<Value>, String> {
        let mut e = Map::new();
        e.insert("specversion".into(), "1.0".into());
        e.insert("id".into(), call.key.into());
        e.insert("source".into(), format!("/sluice/sagas/{}", call.id).into());
        e.insert("subject".into(), call.id.into());
        e.insert("datacontenttype".into(), "application/json".into());
        e.insert("data".into(), input);
        e.insert("sagaid".into(), call.id.into());
        e.insert("sagastep".into(), Value::from(call.step as u64));
        e.insert("sagaattempt".into(), Value::from(call.attempt));
        let kind = if call.compensation {
            "compensation"
        } else {
            "action"
        };
        e.insert("sagakind".into(), kind.into());
        e.insert("idempotencykey".into(), call.key.into());
        // The saga is the root of its steps' chains: their handlers are traced and
        // counted from it.
        let root = stream_of(call.id);
        let trace = TraceParent::root(self.inner.broker.random());
        e.insert(context::TRACEPARENT.into(), trace.to_string().into());
        e.insert(context::CORRELATION_ID.into(), root.clone().into());
        e.insert(context::CAUSATION_ID.into(), root.clone().into());
        e.insert(context::HOP_COUNT.into(), 1.into());
        let (ty, target) = match action {
            Action::Invoke { function, .. } => ("sluice.saga.action", function.as_str()),
            Action::Send { queue, .. } => ("sluice.saga.command", queue.as_str()),
            Action::Publish { topic, .. } => ("sluice.saga.command", topic.as_str()),
        };
        self.inner
            .functions
            .note_saga_step(&root, call.key, ty, Some(target));
        e.insert("type".into(), ty.into());
        match action {
            Action::Invoke { function, .. } => {
                let r = self
                    .inner
                    .functions
                    .invoke(function, &Target::Alias(crate::LIVE.into()), &[e], None)
                    .await
                    .map_err(|e| e.to_string())?;
                match r.failed() {
                    Some(why) => Err(why),
                    None if r.outcome_name() == "partial_failure" => {
                        Err("the function failed its event".into())
                    }
                    None => Ok(Some(Value::Null)),
                }
            }
            Action::Send { queue, .. } => {
                e.insert("replyto".into(), REPLIES_TOPIC.into());
                // The message carries the saga's context like a function's sends do.
                let mut attributes = Map::new();
                for k in [
                    context::TRACEPARENT,
                    context::CORRELATION_ID,
                    context::CAUSATION_ID,
                ] {
                    if let Some(v) = e.get(k) {
                        attributes.insert(k.into(), v.clone());
                    }
                }
                attributes.insert(context::HOP_COUNT.into(), "1".into());
                let message = sluice_broker::NewMessage {
                    body: serde_json::to_vec(&e).expect("an event serializes"),
                    attributes: serde_json::to_vec(&attributes).expect("serializes"),
                    ..Default::default()
                };
                let outcome = self
                    .inner
                    .broker
                    .send(queue, vec![message])
                    .await
                    .map_err(|e| format!("sending the command to {queue:?}: {e}"))?;
                match outcome.into_iter().next() {
                    Some(sluice_broker::SendOutcome::Failed(e)) => {
                        Err(format!("sending the command to {queue:?}: {e}"))
                    }
                    _ => Ok(None),
                }
            }
            Action::Publish { topic, .. } => {
                e.insert("replyto".into(), REPLIES_TOPIC.into());
                let outcome = self
                    .inner
                    .broker
                    .publish(topic, vec![e])
                    .await
                    .map_err(|e| format!("publishing the command to {topic:?}: {e}"))?;
                match outcome.into_iter().next() {
                    Some(sluice_broker::PublishOutcome::Failed(e)) => {
                        Err(format!("publishing the command to {topic:?}: {e}"))
                    }
                    _ => Ok(None),
                }
            }
        }
    }
}

/// Who an action call is for.
struct Call<'a> {
    id: &'a str,
    step: usize,
    attempt: u32,
    compensation: bool,
    key: &'a str,
}
