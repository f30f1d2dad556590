//! Event-store routes: appending to streams with an expected version, reading a stream,
//! `$all`, a category or an event type, catch-up over Server-Sent Events, stream metadata,
//! deletion and snapshots.
//!
//! Every event is answered in one envelope: `{"stream", "version", "position", "recorded",
//! "event"}`, where `event` is the CloudEvent as stored (with its `stream` and
//! `streamversion` attributes).

use std::fmt::Write as _;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sluice_broker::{
    ALL, Direction, Error as BrokerError, ExpectedVersion, GlobalPage, Index, READ_MAX,
    RecordedEvent, StreamInfo, StreamMetadata, StreamSelector, StreamState,
};

use crate::queues::to_json;
use crate::{ApiError, AppState, code, json_response, read_json};

const PAGE_DEFAULT: usize = 100;
/// Events read per step of a catch-up stream.
const STEP: usize = 256;

/// A query string parsed into `T`, or a problem+json naming what is wrong with it.
pub(crate) fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::bad_request(code::INVALID_REQUEST, e.body_text()))
}

fn expected_version(v: Option<&Value>) -> Result<ExpectedVersion, ApiError> {
    let bad = |detail: String| {
        ApiError::bad_request(code::INVALID_EXPECTED_VERSION, detail)
            .with_extra(json!({ "field": "expected_version" }))
    };
    match v {
        None | Some(Value::Null) => Ok(ExpectedVersion::Any),
        Some(Value::String(s)) => s.parse().map_err(bad),
        Some(Value::Number(n)) => n.as_u64().map(ExpectedVersion::Exact).ok_or_else(|| {
            bad(format!(
                "{n} is not an expected version: versions are whole numbers from 0"
            ))
        }),
        Some(other) => Err(bad(format!(
            "{other} is not an expected version: use \"any\", \"no_stream\", \"exists\" or a version number"
        ))),
    }
}

fn limit(limit: Option<usize>) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(PAGE_DEFAULT);
    if limit == 0 || limit > READ_MAX {
        return Err(ApiError::bad_request(
            code::OUT_OF_RANGE,
            format!("limit must be 1..={READ_MAX}"),
        )
        .with_extra(json!({ "field": "limit" })));
    }
    Ok(limit)
}

fn write_event(out: &mut String, e: &RecordedEvent) {
    let _ = write!(
        out,
        "{{\"stream\":{},\"version\":{},\"position\":{},\"recorded\":\"{}\",\"event\":",
        Value::String(e.stream.clone()),
        e.version,
        e.position,
        sluice_types::format_rfc3339_ms(e.recorded_ms)
    );
    out.push_str(std::str::from_utf8(&e.event).unwrap_or("null"));
    out.push('}');
}

fn write_events(out: &mut String, events: &[RecordedEvent]) {
    out.push_str("\"events\":[");
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_event(out, e);
    }
    out.push(']');
}

fn global_page(page: &GlobalPage) -> Response {
    let mut out = String::from("{");
    write_events(&mut out, &page.events);
    let _ = write!(out, ",\"next\":{}}}", page.next);
    json_response(StatusCode::OK, out)
}

fn state_name(s: StreamState) -> &'static str {
    match s {
        StreamState::Live => "live",
        StreamState::SoftDeleted => "soft_deleted",
        StreamState::Tombstoned => "tombstoned",
    }
}

#[derive(Serialize)]
struct StreamView {
    stream: String,
    state: &'static str,
    last_version: Option<u64>,
    first_visible: u64,
    metadata: StreamMetadata,
    created_ms: u64,
    updated_ms: u64,
}

impl From<StreamInfo> for StreamView {
    fn from(i: StreamInfo) -> Self {
        Self {
            stream: i.stream,
            state: state_name(i.state),
            last_version: i.last_version,
            first_visible: i.first_visible,
            metadata: i.metadata,
            created_ms: i.created_ms,
            updated_ms: i.updated_ms,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppendBody {
    #[serde(default)]
    expected_version: Option<Value>,
    events: Vec<Map<String, Value>>,
}

pub(crate) async fn append(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let body: AppendBody = read_json(&state, body).await?;
    let expected = expected_version(body.expected_version.as_ref())?;
    if stream == ALL {
        return Err(ApiError::bad_request(
            code::INVALID_STREAM,
            "$all is every stream in commit order; append to a stream",
        ));
    }
    let r = state
        .broker()
        .append(&stream, expected, body.events)
        .await?;
    Ok(to_json(
        StatusCode::OK,
        &json!({
            "stream": stream,
            "first_version": r.first_version,
            "last_version": r.last_version,
            "first_position": r.first_position,
            "appended": r.appended,
        }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReadQuery {
    from: Option<u64>,
    direction: Option<String>,
    limit: Option<usize>,
}

pub(crate) async fn read(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    q: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let limit = limit(q.limit)?;
    let direction = match q.direction.as_deref() {
        None | Some("forward") => Direction::Forward,
        Some("backward") => Direction::Backward,
        Some(other) => {
            return Err(ApiError::bad_request(
                code::INVALID_REQUEST,
                format!("direction {other:?} is not forward or backward"),
            )
            .with_extra(json!({ "field": "direction" })));
        }
    };
    if stream == ALL {
        if direction == Direction::Backward {
            return Err(ApiError::bad_request(
                code::INVALID_REQUEST,
                "$all is read forward from a position",
            )
            .with_extra(json!({ "field": "direction" })));
        }
        let page = state.broker().read_all(q.from.unwrap_or(0), limit)?;
        return Ok(global_page(&page));
    }
    let page = state
        .broker()
        .read_stream(&stream, q.from, direction, limit)?;
    let mut out = String::from("{");
    let _ = write!(out, "\"stream\":{},", Value::String(stream));
    write_events(&mut out, &page.events);
    let _ = write!(
        out,
        ",\"next\":{},\"last_version\":{}}}",
        page.next.map_or("null".to_owned(), |n| n.to_string()),
        page.last_version
            .map_or("null".to_owned(), |n| n.to_string())
    );
    Ok(json_response(StatusCode::OK, out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GlobalQuery {
    from: Option<u64>,
    limit: Option<usize>,
}

pub(crate) async fn read_category(
    State(state): State<AppState>,
    Path(category): Path<String>,
    q: Result<Query<GlobalQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    check_category(&category)?;
    let page = state.broker().read_index(
        Index::Category(&category),
        q.from.unwrap_or(0),
        limit(q.limit)?,
    )?;
    Ok(global_page(&page))
}

pub(crate) async fn read_type(
    State(state): State<AppState>,
    Path(ty): Path<String>,
    q: Result<Query<GlobalQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let page = state
        .broker()
        .read_index(Index::Type(&ty), q.from.unwrap_or(0), limit(q.limit)?)?;
    Ok(global_page(&page))
}

fn check_category(category: &str) -> Result<(), ApiError> {
    Ok(StreamSelector::Category(category).validate()?)
}

pub(crate) async fn info(
    State(state): State<AppState>,
    Path(stream): Path<String>,
) -> Result<Response, ApiError> {
    let info = state.broker().stream_info(&stream)?;
    Ok(to_json(StatusCode::OK, &StreamView::from(info)))
}

pub(crate) async fn get_metadata(
    State(state): State<AppState>,
    Path(stream): Path<String>,
) -> Result<Response, ApiError> {
    let info = state.broker().stream_info(&stream)?;
    Ok(to_json(StatusCode::OK, &info.metadata))
}

pub(crate) async fn put_metadata(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let metadata: StreamMetadata = read_json(&state, body).await?;
    state
        .broker()
        .set_stream_metadata(&stream, metadata.clone())
        .await?;
    Ok(to_json(StatusCode::OK, &metadata))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeleteQuery {
    hard: Option<bool>,
    expected_version: Option<String>,
}

pub(crate) async fn delete(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    q: Result<Query<DeleteQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let expected = expected_version(q.expected_version.map(Value::String).as_ref())?;
    let hard = q.hard.unwrap_or(false);
    state
        .broker()
        .delete_stream(&stream, expected, hard)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotBody {
    version: u64,
    data: Value,
}

pub(crate) async fn put_snapshot(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let body: SnapshotBody = read_json(&state, body).await?;
    state
        .broker()
        .save_snapshot(&stream, body.version, body.data)
        .await?;
    Ok(to_json(
        StatusCode::OK,
        &json!({ "stream": stream, "version": body.version }),
    ))
}

pub(crate) async fn get_snapshot(
    State(state): State<AppState>,
    Path(stream): Path<String>,
) -> Result<Response, ApiError> {
    match state.broker().load_snapshot(&stream)? {
        Some(s) => Ok(to_json(
            StatusCode::OK,
            &json!({
                "stream": stream,
                "version": s.version,
                "data": s.data,
                "saved": sluice_types::format_rfc3339_ms(s.saved_ms),
            }),
        )),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            code::SNAPSHOT_NOT_FOUND,
            format!("stream {stream:?} has no snapshot"),
        )),
    }
}

// ---- persistent subscriptions ----

pub(crate) async fn put_stream_subscription(
    State(state): State<AppState>,
    Path((stream, name)): Path<(String, String)>,
    body: Body,
) -> Result<Response, ApiError> {
    let selector = if stream == ALL {
        StreamSelector::All
    } else {
        StreamSelector::Stream(&stream)
    };
    crate::topics::put_event_store_sub(&state, selector, &name, body).await
}

pub(crate) async fn put_category_subscription(
    State(state): State<AppState>,
    Path((category, name)): Path<(String, String)>,
    body: Body,
) -> Result<Response, ApiError> {
    crate::topics::put_event_store_sub(&state, StreamSelector::Category(&category), &name, body)
        .await
}

// ---- catch-up subscriptions over SSE ----

/// What a catch-up stream follows.
enum Source {
    Stream(String),
    All,
    Category(String),
}

/// Where a catch-up stream stands.
struct Tail {
    source: Source,
    /// The next version (a stream) or position (`$all`, a category) to send.
    next: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TailQuery {
    from: Option<u64>,
}

/// `Last-Event-ID` (the last version or position a client saw) wins over `from`.
fn resume_from(headers: &HeaderMap, from: Option<u64>) -> Result<u64, ApiError> {
    Ok(match crate::stream::last_event_id(headers)? {
        Some(n) => n + 1,
        None => from.unwrap_or(0),
    })
}

pub(crate) async fn tail_stream(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    q: Result<Query<TailQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let next = resume_from(&headers, q.from)?;
    let source = if stream == ALL {
        Source::All
    } else {
        // A stream that does not exist yet is followed from its first event; a bad name or
        // a hard-deleted stream is refused now.
        match state.broker().stream_info(&stream) {
            Ok(i) if i.state == StreamState::Tombstoned => {
                return Err(BrokerError::StreamDeleted(stream).into());
            }
            Ok(_) | Err(BrokerError::StreamNotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        Source::Stream(stream)
    };
    open(state, source, next)
}

pub(crate) async fn tail_category(
    State(state): State<AppState>,
    Path(category): Path<String>,
    q: Result<Query<TailQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    check_category(&category)?;
    let next = resume_from(&headers, q.from)?;
    open(state, Source::Category(category), next)
}

/// Reads what is there from `tail.next`; `None` ends the SSE stream. Returns the SSE events
/// and whether more are already stored.
fn step(state: &AppState, tail: &mut Tail) -> Option<(Vec<Event>, bool)> {
    let b = state.broker();
    let (events, more) = match &tail.source {
        Source::Stream(s) => {
            match b.read_stream(s, Some(tail.next), Direction::Forward, STEP) {
                Ok(page) => {
                    if let Some(last) = page.events.last() {
                        tail.next = last.version + 1;
                    } else if let Some(n) = page.next {
                        tail.next = n;
                    }
                    let more = page.next.is_some();
                    (page.events, more)
                }
                // Not written yet, or soft-deleted: wait for its next event.
                Err(BrokerError::StreamNotFound(_)) => (Vec::new(), false),
                Err(_) => return None,
            }
        }
        Source::All | Source::Category(_) => {
            let page = match &tail.source {
                Source::Category(c) => b.read_index(Index::Category(c), tail.next, STEP),
                _ => b.read_all(tail.next, STEP),
            }
            .ok()?;
            let more = page.next > tail.next && page.events.is_empty();
            tail.next = page.next;
            (page.events, more)
        }
    };
    let id_of = |e: &RecordedEvent| match tail.source {
        Source::Stream(_) => e.version,
        _ => e.position,
    };
    let out = events
        .iter()
        .map(|e| {
            let mut data = String::new();
            write_event(&mut data, e);
            Event::default().id(id_of(e).to_string()).data(data)
        })
        .collect();
    Some((out, more))
}

fn open(state: AppState, source: Source, next: u64) -> Result<Response, ApiError> {
    crate::stream::follow(
        state,
        Tail { source, next },
        |state, _| Some(state.broker().streams_waker()),
        step,
    )
}
