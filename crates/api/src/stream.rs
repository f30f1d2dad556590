//! Live push: Server-Sent Events of a topic's events, or of the events a subscription's
//! filter selects, as they are published; and the SSE loop the event store's catch-up
//! streams share. Each SSE `id` is the event's offset, so a client
//! that reconnects with `Last-Event-ID` resumes right after the last event it saw.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_broker::{Filter, Start, Waker};
use tokio::sync::OwnedSemaphorePermit;

use crate::queues::resource_name;
use crate::{ApiError, AppState, code, long_poll_permit};

/// Events read from the log per step.
const STEP: usize = 256;
/// Longest wait for new events before the stream checks again.
const IDLE: Duration = Duration::from_secs(15);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamQuery {
    from: Option<String>,
    /// An event pattern, as JSON text.
    filter: Option<String>,
}

struct Tail<T> {
    state: AppState,
    position: T,
    /// Held while the stream is open: streams count against the long-poll limit.
    _permit: OwnedSemaphorePermit,
    pending: std::vec::IntoIter<Event>,
}

/// The `Last-Event-ID` a reconnecting client sent: the id (offset, version or position) of
/// the last event it saw.
pub(crate) fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(last) = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.trim().is_empty())
    else {
        return Ok(None);
    };
    last.trim().parse().map(Some).map_err(|_| {
        ApiError::bad_request(
            code::INVALID_REQUEST,
            format!("Last-Event-ID {last:?} is not an event id this server sent"),
        )
    })
}

/// `Last-Event-ID` wins over `from`: a reconnecting client resumes after its last event.
fn start_from(headers: &HeaderMap, from: Option<&str>, default: Start) -> Result<Start, ApiError> {
    if let Some(n) = last_event_id(headers)? {
        return Ok(Start::Offset(n + 1));
    }
    match from {
        None => Ok(default),
        Some(f) => match f.trim().parse::<u64>() {
            Ok(n) => Ok(Start::Offset(n)),
            Err(_) => Start::parse(f.trim()).ok_or_else(|| {
                ApiError::bad_request(
                    code::INVALID_REQUEST,
                    format!("from {f:?} is not a position: use earliest, latest, an offset or time:RFC3339"),
                )
                .with_extra(json!({ "field": "from" }))
            }),
        },
    }
}

fn query_filter(filter: Option<&str>) -> Result<Option<Filter>, ApiError> {
    let Some(text) = filter else {
        return Ok(None);
    };
    let pattern: Value = serde_json::from_str(text).map_err(|e| {
        ApiError::bad_request(
            code::INVALID_FILTER,
            format!("filter is not valid JSON: {e}"),
        )
    })?;
    Ok(Some(
        Filter::compile(&pattern).map_err(sluice_broker::Error::from)?,
    ))
}

fn resolve(state: &AppState, topic: &str, at: Start) -> Result<u64, ApiError> {
    let b = state.broker();
    Ok(match at {
        Start::Offset(n) => n,
        Start::Latest => b.get_topic(topic)?.stats.next_offset,
        Start::Earliest => b.get_topic(topic)?.stats.first_offset,
        Start::Time(_) => b.read_events(topic, at, 1)?.events.first().map_or_else(
            || b.get_topic(topic).map(|t| t.stats.next_offset),
            |e| Ok(e.offset),
        )?,
    })
}

pub(crate) async fn topic_stream(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let topic = resource_name("topic", &raw)?;
    let filter = query_filter(q.filter.as_deref())?.unwrap_or_else(Filter::all);
    let at = start_from(&headers, q.from.as_deref(), Start::Latest)?;
    let next = resolve(&state, topic.as_str(), at)?;
    open(state, topic.to_string(), next, filter)
}

pub(crate) async fn subscription_stream(
    State(state): State<AppState>,
    Path((topic, sub)): Path<(String, String)>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let topic = resource_name("topic", &topic)?;
    let sub = resource_name("subscription", &sub)?;
    if q.filter.is_some() {
        return Err(ApiError::bad_request(
            code::INVALID_REQUEST,
            "a subscription's stream uses the subscription's filter",
        ));
    }
    let info = state
        .broker()
        .get_subscription(topic.as_str(), sub.as_str())?;
    let filter = Filter::compile(&info.config.filter).map_err(sluice_broker::Error::from)?;
    let at = start_from(&headers, q.from.as_deref(), Start::Offset(info.cursor))?;
    let next = resolve(&state, topic.as_str(), at)?;
    open(state, topic.to_string(), next, filter)
}

/// Where a topic's live stream stands.
struct TopicTail {
    topic: String,
    next: u64,
    filter: Filter,
}

fn open(state: AppState, topic: String, next: u64, filter: Filter) -> Result<Response, ApiError> {
    let tail = TopicTail {
        topic,
        next,
        filter,
    };
    follow(
        state,
        tail,
        |state, t| state.broker().topic_waker(&t.topic).ok(),
        |state, t| {
            let page = state
                .broker()
                .read_events(&t.topic, Start::Offset(t.next), STEP)
                .ok()?;
            t.next = page.next;
            let full = page.events.len() == STEP;
            let mut batch = Vec::new();
            for e in page.events {
                if t.filter.matches_json(&e.event).unwrap_or(false) {
                    let data = String::from_utf8(e.event).unwrap_or_default();
                    batch.push(Event::default().id(e.offset.to_string()).data(data));
                }
            }
            // Only non-matching events in a full page: more are already in the log.
            Some((batch, full))
        },
    )
}

/// What a live stream reads next: the SSE events it has now, and whether more are already
/// stored (read again at once instead of waiting); `None` ends the stream.
pub(crate) type Step<T> = fn(&AppState, &mut T) -> Option<(Vec<Event>, bool)>;

/// Serves Server-Sent Events: sends what `step` reads, and when it reads nothing, waits for
/// the waker `waker` gives (registered before the read, so a write right after the read
/// still wakes the stream), for `IDLE`, or for shutdown. Holds a long-poll permit while open.
pub(crate) fn follow<T: Send + 'static>(
    state: AppState,
    position: T,
    waker: fn(&AppState, &T) -> Option<Waker>,
    step: Step<T>,
) -> Result<Response, ApiError> {
    let tail = Tail {
        _permit: long_poll_permit(&state)?,
        state,
        position,
        pending: Vec::new().into_iter(),
    };
    let events = stream::unfold(tail, move |mut tail| async move {
        loop {
            if let Some(e) = tail.pending.next() {
                return Some((Ok::<_, Infallible>(e), tail));
            }
            let shutdown = tail.state.inner.shutdown.clone();
            if shutdown.is_cancelled() {
                return None;
            }
            let waker = waker(&tail.state, &tail.position)?;
            let notified = waker.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (batch, more) = step(&tail.state, &mut tail.position)?;
            if !batch.is_empty() {
                tail.pending = batch.into_iter();
                continue;
            }
            if more {
                continue;
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(IDLE) => {}
                _ = shutdown.cancelled() => return None,
            }
        }
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(IDLE))
        .into_response())
}
