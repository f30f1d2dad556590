//! `GET /metrics`: every counter, gauge and histogram of the server in the Prometheus text
//! format. The one place metric names are spelled; `docs/metrics.md` lists each of them.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use sluice_broker::{BrokerMetrics, QueueMetrics};
use sluice_functions::budget::Standing;
use sluice_functions::saga_runner::SagaCounts;
use sluice_functions::{BudgetInfo, FunctionMetricsSnapshot, ProjectionInfo, TriggerInfo};
use sluice_types::metrics::{Exposition, Kind};

use crate::{ApiError, AppState};

/// A value of one queue's metrics.
type QueueValue = fn(&QueueMetrics) -> f64;
/// A value of one function's metrics.
type FunctionValue = fn(&FunctionMetricsSnapshot) -> u64;

/// Client connections, counted by the server's listener.
#[derive(Debug, Default)]
pub struct Connections {
    /// Open now.
    pub open: AtomicU64,
    /// Accepted since start.
    pub accepted: AtomicU64,
}

pub(crate) async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let broker = state.broker().metrics()?;
    let functions = state.functions().metrics();
    let triggers = state.triggers().list();
    let projections = state.projections().list()?;
    let mut e = Exposition::new();
    write_queues(&mut e, &broker.queues);
    write_topics(&mut e, &broker);
    write_functions(&mut e, &functions);
    write_triggers(&mut e, &triggers);
    write_event_store(&mut e, &broker, &projections);
    write_budgets(&mut e, &state.functions().budgets());
    write_sagas(&mut e, &state.sagas().counts());
    write_store(&mut e, &broker);
    write_process(&mut e, &state.inner.connections);
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        e.into_string(),
    )
        .into_response())
}

/// One family: its header, then one sample per item.
fn each<T>(
    e: &mut Exposition,
    name: &str,
    kind: Kind,
    help: &str,
    items: &[T],
    labels: impl Fn(&T) -> Vec<(&'static str, String)>,
    value: impl Fn(&T) -> f64,
) {
    e.family(name, kind, help);
    for item in items {
        let owned = labels(item);
        let pairs: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
        e.sample(name, &pairs, value(item));
    }
}

fn write_queues(e: &mut Exposition, all: &[QueueMetrics]) {
    let (subs, queues): (Vec<&QueueMetrics>, Vec<&QueueMetrics>) =
        all.iter().partition(|q| q.subscription.is_some());
    let queue_labels = |q: &&QueueMetrics| vec![("queue", q.name.clone())];
    let sub_labels = |q: &&QueueMetrics| {
        let (topic, sub) = q.subscription.clone().unwrap_or_default();
        vec![("topic", topic), ("subscription", sub)]
    };
    for (prefix, what, items, labels) in [
        (
            "sluice_queue",
            "queue",
            &queues,
            &queue_labels as &dyn Fn(&&QueueMetrics) -> Vec<(&'static str, String)>,
        ),
        ("sluice_subscription", "subscription", &subs, &sub_labels),
    ] {
        let name = format!("{prefix}_messages");
        e.family(
            &name,
            Kind::Gauge,
            &format!("Messages of the {what} by state: visible (ready now), leased, delayed."),
        );
        for q in items.iter() {
            let base = labels(q);
            for (state, v) in [
                ("visible", q.stats.visible),
                ("leased", q.stats.leased),
                ("delayed", q.stats.delayed),
            ] {
                let mut pairs: Vec<(&str, &str)> =
                    base.iter().map(|(k, v)| (*k, v.as_str())).collect();
                pairs.push(("state", state));
                e.sample(&name, &pairs, v as f64);
            }
        }
        let families: [(&str, Kind, String, QueueValue); 9] = [
            (
                "dead_lettered_messages",
                Kind::Gauge,
                format!("Messages of the {what} now in its dead-letter queue."),
                |q| q.stats.dead_lettered as f64,
            ),
            (
                "oldest_message_age_seconds",
                Kind::Gauge,
                format!("Age of the {what}'s oldest message; 0 when it has none."),
                |q| q.stats.oldest_age_ms.unwrap_or(0) as f64 / 1000.0,
            ),
            (
                "received_messages_total",
                Kind::Counter,
                format!("Deliveries (leases) from the {what}, redeliveries included."),
                |q| q.stats.activity.received as f64,
            ),
            (
                "redelivered_messages_total",
                Kind::Counter,
                format!("Deliveries from the {what} of messages delivered before."),
                |q| q.stats.activity.redelivered as f64,
            ),
            (
                "acked_messages_total",
                Kind::Counter,
                format!("Messages acknowledged on the {what}."),
                |q| q.stats.activity.acked as f64,
            ),
            (
                "nacked_messages_total",
                Kind::Counter,
                format!("Messages negatively acknowledged on the {what}."),
                |q| q.stats.activity.nacked as f64,
            ),
            (
                "lease_expired_messages_total",
                Kind::Counter,
                format!("Leases on the {what} that ran out before an ack or nack."),
                |q| q.stats.activity.lease_expired as f64,
            ),
            (
                "dead_letter_moves_total",
                Kind::Counter,
                format!("Messages moved from the {what} to its dead-letter queue."),
                |q| q.stats.activity.dead_letter_moves as f64,
            ),
            (
                "expired_messages_total",
                Kind::Counter,
                format!("Messages of the {what} dropped past its retention."),
                |q| q.stats.expired_total as f64,
            ),
        ];
        for (suffix, kind, help, value) in families {
            each(
                e,
                &format!("{prefix}_{suffix}"),
                kind,
                &help,
                items,
                labels,
                |q| value(q),
            );
        }
    }
    each(
        e,
        "sluice_subscription_backlog_events",
        Kind::Gauge,
        "Events of the topic after the subscription's cursor, not yet matched against its filter.",
        &subs,
        sub_labels,
        |q| q.backlog as f64,
    );
    each(
        e,
        "sluice_queue_sent_messages_total",
        Kind::Counter,
        "Messages sent to the queue (duplicates not counted).",
        &queues,
        queue_labels,
        |q| q.stats.sent_total as f64,
    );
    each(
        e,
        "sluice_queue_dedup_hits_total",
        Kind::Counter,
        "Sends to the queue dropped as duplicates of a message id seen within its window.",
        &queues,
        queue_labels,
        |q| q.stats.dedup_hits_total as f64,
    );
}

fn write_topics(e: &mut Exposition, m: &BrokerMetrics) {
    let labels = |t: &sluice_broker::TopicInfo| vec![("topic", t.name.clone())];
    each(
        e,
        "sluice_topic_published_events_total",
        Kind::Counter,
        "Events published to the topic (`$all`: events appended to event-store streams).",
        &m.topics,
        labels,
        |t| t.stats.published_total as f64,
    );
    each(
        e,
        "sluice_topic_published_bytes_total",
        Kind::Counter,
        "Bytes of events published to the topic since the server started.",
        &m.topics,
        labels,
        |t| t.stats.published_bytes as f64,
    );
    each(
        e,
        "sluice_topic_retained_events",
        Kind::Gauge,
        "Events the topic's log retains.",
        &m.topics,
        labels,
        |t| t.stats.events as f64,
    );
    each(
        e,
        "sluice_topic_retained_bytes",
        Kind::Gauge,
        "Bytes of the events the topic's log retains.",
        &m.topics,
        labels,
        |t| t.stats.bytes as f64,
    );
    each(
        e,
        "sluice_topic_dedup_hits_total",
        Kind::Counter,
        "Publishes dropped as duplicates of an event id seen within the topic's window.",
        &m.topics,
        labels,
        |t| t.stats.dedup_hits_total as f64,
    );
}

fn write_functions(e: &mut Exposition, all: &[FunctionMetricsSnapshot]) {
    let labels = |f: &FunctionMetricsSnapshot| vec![("function", f.function.clone())];
    let counters: [(&str, &str, FunctionValue); 4] = [
        (
            "sluice_function_invocations_total",
            "Invocations of the function, direct and by triggers.",
            |f| f.invocations,
        ),
        (
            "sluice_function_errors_total",
            "Invocations that failed as a whole: error, trap, timeout or refused commit.",
            |f| f.errors,
        ),
        (
            "sluice_function_cold_starts_total",
            "Invocations that had to instantiate a version not yet loaded.",
            |f| f.cold_starts,
        ),
        (
            "sluice_function_fuel_consumed_total",
            "WebAssembly fuel the function consumed (when fuel metering is on).",
            |f| f.fuel,
        ),
    ];
    for (name, help, value) in counters {
        each(e, name, Kind::Counter, help, all, labels, |f| {
            value(f) as f64
        });
    }
    each(
        e,
        "sluice_function_in_flight_invocations",
        Kind::Gauge,
        "Invocations of the function running now.",
        all,
        labels,
        |f| f.in_flight as f64,
    );
    e.family(
        "sluice_function_duration_seconds",
        Kind::Histogram,
        "Time in the guest per invocation.",
    );
    for f in all {
        e.histogram(
            "sluice_function_duration_seconds",
            &[("function", &f.function)],
            &f.duration,
        );
    }
    e.family(
        "sluice_function_cold_start_duration_seconds",
        Kind::Histogram,
        "Instantiation time of cold invocations.",
    );
    for f in all {
        e.histogram(
            "sluice_function_cold_start_duration_seconds",
            &[("function", &f.function)],
            &f.cold_start,
        );
    }
}

fn write_triggers(e: &mut Exposition, all: &[TriggerInfo]) {
    let labels = |t: &TriggerInfo| {
        vec![
            ("trigger", t.name.clone()),
            ("function", t.config.function.clone()),
        ]
    };
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
    each(
        e,
        "sluice_trigger_invocations_total",
        Kind::Counter,
        "Invocations the trigger started.",
        all,
        labels,
        |t| load(&t.stats.invocations),
    );
    each(
        e,
        "sluice_trigger_events_total",
        Kind::Counter,
        "Events the trigger passed to its function.",
        all,
        labels,
        |t| load(&t.stats.events),
    );
    each(
        e,
        "sluice_trigger_errors_total",
        Kind::Counter,
        "Invocations of the trigger that failed as a whole; their batch was nacked.",
        all,
        labels,
        |t| load(&t.stats.errors),
    );
    each(
        e,
        "sluice_trigger_partial_failures_total",
        Kind::Counter,
        "Invocations of the trigger that failed some of their events.",
        all,
        labels,
        |t| load(&t.stats.partial_failures),
    );
    e.family(
        "sluice_trigger_throttled_total",
        Kind::Counter,
        "Times the trigger held back an invocation, by cause: concurrency (all slots busy), rate (rate limit), budget (paused by an exhausted budget).",
    );
    for t in all {
        for (cause, a) in [
            ("concurrency", &t.stats.throttled_concurrency),
            ("rate", &t.stats.throttled_rate),
            ("budget", &t.stats.throttled_budget),
        ] {
            e.sample(
                "sluice_trigger_throttled_total",
                &[
                    ("trigger", &t.name),
                    ("function", &t.config.function),
                    ("cause", cause),
                ],
                a.load(Ordering::Relaxed) as f64,
            );
        }
    }
    each(
        e,
        "sluice_trigger_loops_stopped_total",
        Kind::Counter,
        "Events the trigger stopped as loops: past the hop limit, dead-lettered with reason loop_detected.",
        all,
        labels,
        |t| load(&t.stats.loops_stopped),
    );
    each(
        e,
        "sluice_trigger_in_flight_invocations",
        Kind::Gauge,
        "Invocations of the trigger running now.",
        all,
        labels,
        |t| load(&t.stats.in_flight),
    );
    each(
        e,
        "sluice_trigger_paused",
        Kind::Gauge,
        "1 while the trigger is paused, else 0.",
        all,
        labels,
        |t| if t.config.paused { 1.0 } else { 0.0 },
    );
    each(
        e,
        "sluice_trigger_budget_paused",
        Kind::Gauge,
        "1 while an exhausted budget pauses the trigger, else 0.",
        all,
        labels,
        |t| {
            if t.stats.budget_paused.lock().unwrap().is_some() {
                1.0
            } else {
                0.0
            }
        },
    );
    e.family(
        "sluice_trigger_batch_size",
        Kind::Histogram,
        "Events per invocation of the trigger.",
    );
    for t in all {
        e.histogram(
            "sluice_trigger_batch_size",
            &[("trigger", &t.name), ("function", &t.config.function)],
            &t.stats.batch_sizes.snapshot(),
        );
    }
}

fn write_event_store(e: &mut Exposition, m: &BrokerMetrics, projections: &[ProjectionInfo]) {
    let s = m.streams;
    for (name, help, v) in [
        (
            "sluice_eventstore_appends_total",
            "Appends to event-store streams that wrote events.",
            s.appends,
        ),
        (
            "sluice_eventstore_appended_events_total",
            "Events appended to event-store streams.",
            s.appended_events,
        ),
        (
            "sluice_eventstore_idempotent_appends_total",
            "Retried appends answered from the events already appended, writing nothing.",
            s.idempotent_retries,
        ),
        (
            "sluice_eventstore_conflicts_total",
            "Appends refused for a wrong expected version or an event id used elsewhere.",
            s.conflicts,
        ),
    ] {
        e.family(name, Kind::Counter, help);
        e.sample(name, &[], v as f64);
    }
    let labels = |p: &ProjectionInfo| vec![("projection", p.name.clone())];
    each(
        e,
        "sluice_projection_lag_events",
        Kind::Gauge,
        "Events the projection has not folded yet.",
        projections,
        labels,
        |p| p.lag as f64,
    );
    each(
        e,
        "sluice_projection_errors_total",
        Kind::Counter,
        "Failed invocations of the projection's function.",
        projections,
        labels,
        |p| p.errors as f64,
    );
}

fn write_budgets(e: &mut Exposition, all: &[BudgetInfo]) {
    let labels = |b: &BudgetInfo| vec![("budget", b.name.clone())];
    each(
        e,
        "sluice_budget_spent",
        Kind::Gauge,
        "What the budget spent in its current period, in its limit's unit (invocations, GB-seconds or US dollars).",
        all,
        labels,
        |b| b.spent,
    );
    each(
        e,
        "sluice_budget_limit",
        Kind::Gauge,
        "The budget's limit, in its own unit.",
        all,
        labels,
        |b| b.limit,
    );
    each(
        e,
        "sluice_budget_exhausted",
        Kind::Gauge,
        "1 while the budget is exhausted and pauses the triggers it governs, else 0.",
        all,
        labels,
        |b| {
            if b.standing == Standing::Exhausted {
                1.0
            } else {
                0.0
            }
        },
    );
}

fn write_sagas(e: &mut Exposition, (counts, active): &(SagaCounts, usize)) {
    e.family(
        "sluice_sagas_started_total",
        Kind::Counter,
        "Sagas started, by definition.",
    );
    for (definition, n) in &counts.started {
        e.sample(
            "sluice_sagas_started_total",
            &[("definition", definition)],
            *n as f64,
        );
    }
    e.family(
        "sluice_sagas_finished_total",
        Kind::Counter,
        "Sagas that reached a final status (completed, compensated, compensation_failed, cancelled), by definition and status.",
    );
    for ((definition, status), n) in &counts.finished {
        e.sample(
            "sluice_sagas_finished_total",
            &[("definition", definition), ("status", status)],
            *n as f64,
        );
    }
    e.family(
        "sluice_sagas_active",
        Kind::Gauge,
        "Sagas running or compensating in this server now.",
    );
    e.sample("sluice_sagas_active", &[], *active as f64);
}

fn write_store(e: &mut Exposition, m: &BrokerMetrics) {
    let s = &m.store;
    e.family(
        "sluice_store_batches_total",
        Kind::Counter,
        "Atomic batches written to the store's journal.",
    );
    e.sample("sluice_store_batches_total", &[], s.stats.batches as f64);
    e.family(
        "sluice_store_syncs_total",
        Kind::Counter,
        "Journal persists (fdatasync in strict mode) that completed.",
    );
    e.sample("sluice_store_syncs_total", &[], s.stats.syncs as f64);
    e.family(
        "sluice_store_sync_duration_seconds",
        Kind::Histogram,
        "Time each journal persist took.",
    );
    e.histogram("sluice_store_sync_duration_seconds", &[], &s.sync_seconds);
    e.family(
        "sluice_store_write_duration_seconds",
        Kind::Histogram,
        "Time each write took to append to the journal and the in-memory tables (long ones wait on the storage engine, e.g. while it frees a flushed in-memory table).",
    );
    e.histogram("sluice_store_write_duration_seconds", &[], &s.write_seconds);
    e.family(
        "sluice_store_commit_group_batches",
        Kind::Histogram,
        "Batches made durable by one persist (the group of group commit).",
    );
    e.histogram("sluice_store_commit_group_batches", &[], &s.sync_batches);
}

fn write_process(e: &mut Exposition, connections: &Connections) {
    e.family(
        "sluice_process_resident_memory_bytes",
        Kind::Gauge,
        "Resident set size of the server process.",
    );
    if let Some(rss) = resident_bytes() {
        e.sample("sluice_process_resident_memory_bytes", &[], rss as f64);
    }
    e.family(
        "sluice_http_connections",
        Kind::Gauge,
        "Client connections open now.",
    );
    e.sample(
        "sluice_http_connections",
        &[],
        connections.open.load(Ordering::Relaxed) as f64,
    );
    e.family(
        "sluice_http_connections_accepted_total",
        Kind::Counter,
        "Client connections accepted since start.",
    );
    e.sample(
        "sluice_http_connections_accepted_total",
        &[],
        connections.accepted.load(Ordering::Relaxed) as f64,
    );
}

/// The process's resident set size from `/proc/self/status` (Linux).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}
