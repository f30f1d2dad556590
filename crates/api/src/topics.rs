//! Topic routes: topics and their subscriptions, publishing CloudEvents in the structured,
//! batch and binary HTTP modes, reading the log and the compacted table, seeking, and the
//! delivery routes of subscriptions (the queue handlers, on the subscription's queue).

use std::fmt::Write as _;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sluice_broker::context::{self, TraceParent};
use sluice_broker::{
    ALL, Broker, Delivery, Error as BrokerError, EventError, PublishOutcome, STREAM_ATTRIBUTE,
    Start, StoredEvent, StreamSelector, SubscriptionConfig, SubscriptionInfo, TopicConfig,
    TopicInfo, TopicStats,
};
use sluice_functions::telemetry;
use sluice_types::Name;
use tracing::Instrument as _;

use crate::queues::{self, Failures, StatsView, resource_name, to_json};
use crate::{ApiError, AppState, code, json_response, put_status, read_body, read_json};

/// Most events one read or table page returns.
pub(crate) const PAGE_MAX: usize = 1_000;
const PAGE_DEFAULT: usize = 100;

fn topic_name(raw: &str) -> Result<Name, ApiError> {
    resource_name("topic", raw)
}

/// The topic of a subscription route: a topic, or the event store's `$all`, whose
/// subscriptions are the event store's persistent subscriptions.
pub(crate) fn sub_topic(raw: &str) -> Result<String, ApiError> {
    if raw == ALL {
        return Ok(ALL.to_owned());
    }
    Ok(topic_name(raw)?.to_string())
}

fn sub_queue(topic: &str, sub: &str) -> Result<String, ApiError> {
    let t = sub_topic(topic)?;
    let s = resource_name("subscription", sub)?;
    Ok(Broker::subscription_queue(&t, s.as_str()))
}

#[derive(Serialize)]
struct TopicStatsView {
    first_offset: u64,
    next_offset: u64,
    events: u64,
    bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    keys: Option<u64>,
    published_total: u64,
    dedup_hits_total: u64,
    expired_total: u64,
    compacted_total: u64,
}

impl From<TopicStats> for TopicStatsView {
    fn from(s: TopicStats) -> Self {
        Self {
            first_offset: s.first_offset,
            next_offset: s.next_offset,
            events: s.events,
            bytes: s.bytes,
            keys: s.keys,
            published_total: s.published_total,
            dedup_hits_total: s.dedup_hits_total,
            expired_total: s.expired_total,
            compacted_total: s.compacted_total,
        }
    }
}

#[derive(Serialize)]
struct TopicView {
    name: String,
    created_ms: u64,
    #[serde(flatten)]
    config: TopicConfig,
    subscriptions: Vec<String>,
    stats: TopicStatsView,
}

impl From<TopicInfo> for TopicView {
    fn from(t: TopicInfo) -> Self {
        Self {
            name: t.name,
            created_ms: t.created_ms,
            config: t.config,
            subscriptions: t.subscriptions,
            stats: t.stats.into(),
        }
    }
}

#[derive(Serialize)]
struct SubscriptionView {
    topic: String,
    name: String,
    created_ms: u64,
    #[serde(flatten)]
    config: SubscriptionConfig,
    cursor: u64,
    backlog: u64,
    stats: StatsView,
}

impl From<SubscriptionInfo> for SubscriptionView {
    fn from(s: SubscriptionInfo) -> Self {
        Self {
            topic: s.topic,
            name: s.name,
            created_ms: s.created_ms,
            config: s.config,
            cursor: s.cursor,
            backlog: s.backlog,
            stats: s.stats.into(),
        }
    }
}

// ---- topics ----

pub(crate) async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let topics: Vec<TopicView> = state
        .broker()
        .list_topics()
        .into_iter()
        .map(Into::into)
        .collect();
    Ok(to_json(StatusCode::OK, &json!({ "topics": topics })))
}

pub(crate) async fn get(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let name = topic_name(&raw)?;
    let info = state.broker().get_topic(name.as_str())?;
    Ok(to_json(StatusCode::OK, &TopicView::from(info)))
}

pub(crate) async fn put(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let name = topic_name(&raw)?;
    let config: TopicConfig = read_json(&state, body).await?;
    let created = state.broker().put_topic(&name, config).await?;
    let info = state.broker().get_topic(name.as_str())?;
    Ok(to_json(put_status(created), &TopicView::from(info)))
}

pub(crate) async fn delete(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let name = topic_name(&raw)?;
    state.broker().delete_topic(name.as_str()).await?;
    Ok(to_json(StatusCode::OK, &json!({ "deleted": name })))
}

// ---- publish ----

fn invalid_event(attribute: &str, message: impl Into<String>) -> ApiError {
    BrokerError::InvalidEvent(EventError {
        attribute: attribute.to_owned(),
        message: message.into(),
    })
    .into()
}

fn media_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
}

fn is_json_media(m: &str) -> bool {
    m == "application/json" || m == "text/json" || m.ends_with("+json")
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(BASE64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes `%XX` escapes of a binary-mode header value (CloudEvents HTTP binding 3.1.3.2).
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A binary-mode event: attributes from `ce-*` headers, data from the body.
fn binary_event(
    headers: &HeaderMap,
    media: Option<&str>,
    body: &[u8],
) -> Result<Map<String, Value>, ApiError> {
    let mut obj = Map::new();
    for (name, value) in headers {
        let Some(attr) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        let text = value
            .to_str()
            .ok()
            .and_then(percent_decode)
            .ok_or_else(|| invalid_event(attr, "header value is not valid text"))?;
        obj.insert(attr.to_owned(), Value::String(text));
    }
    if let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        obj.insert("datacontenttype".into(), Value::String(ct.to_owned()));
    }
    if !body.is_empty() {
        let data = match media {
            Some(m) if is_json_media(m) => {
                let v: Value = serde_json::from_slice(body).map_err(|e| {
                    invalid_event(
                        "data",
                        format!("the body is not the JSON its content type says: {e}"),
                    )
                })?;
                ("data", v)
            }
            Some(m) if m.starts_with("text/") => match std::str::from_utf8(body) {
                Ok(t) => ("data", Value::String(t.to_owned())),
                Err(_) => ("data_base64", Value::String(base64(body))),
            },
            _ => ("data_base64", Value::String(base64(body))),
        };
        obj.insert(data.0.into(), data.1);
    }
    Ok(obj)
}

fn parse_events(headers: &HeaderMap, body: &[u8]) -> Result<Vec<Map<String, Value>>, ApiError> {
    let media = media_type(headers);
    let structured = |v: Value, at: &str| match v {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::bad_request(
            code::INVALID_EVENT,
            format!("{at} must be a JSON object (a structured-mode CloudEvent)"),
        )),
    };
    let parse = |body: &[u8]| {
        serde_json::from_slice::<Value>(body).map_err(|e| {
            ApiError::bad_request(
                code::INVALID_JSON,
                format!("request body is not valid JSON: {e}"),
            )
        })
    };
    match media.as_deref() {
        Some("application/cloudevents+json") => Ok(vec![structured(parse(body)?, "the body")?]),
        Some("application/cloudevents-batch+json") => match parse(body)? {
            Value::Array(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| structured(v, &format!("events[{i}]")))
                .collect(),
            _ => Err(ApiError::bad_request(
                code::INVALID_EVENT,
                "a batch is a JSON array of structured-mode CloudEvents",
            )),
        },
        _ if headers.contains_key("ce-specversion") => {
            Ok(vec![binary_event(headers, media.as_deref(), body)?])
        }
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "content type {:?} is not a CloudEvents mode: send application/cloudevents+json, application/cloudevents-batch+json, or the event's ce-* headers (binary mode)",
                other.unwrap_or("(none)")
            ),
        )),
    }
}

pub(crate) async fn publish(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let name = topic_name(&raw)?;
    let bytes = read_body(&state, body).await?;
    let events = parse_events(&headers, &bytes)?;
    if events.is_empty() {
        return Err(ApiError::bad_request(
            code::INVALID_REQUEST,
            "the batch has no events",
        ));
    }
    let span = tracing::info_span!(
        target: telemetry::TARGET,
        "publish",
        otel.name = %format_args!("publish {name}"),
        otel.kind = "producer",
        messaging.destination.name = name.as_str(),
        messaging.batch.message_count = events.len(),
    );
    let mut events = events;
    if !span.is_disabled() {
        trace_publish(&span, &headers, &mut events);
    }
    let outcomes = state
        .broker()
        .publish(name.as_str(), events)
        .instrument(span)
        .await?;
    let mut out = Vec::with_capacity(outcomes.len());
    let mut failures = Failures::default();
    for (i, o) in outcomes.iter().enumerate() {
        match o {
            PublishOutcome::Published { id, offset } => {
                out.push(json!({ "id": id, "offset": offset }))
            }
            PublishOutcome::Duplicate { id, offset } => {
                out.push(json!({ "id": id, "offset": offset, "duplicate": true }))
            }
            PublishOutcome::Failed(e) => {
                out.push(Value::Null);
                failures.push("index", json!(i), e);
            }
        }
    }
    if let Some(problem) = failures.problem_if_all_failed(outcomes.len() - failures.entries.len()) {
        return Err(problem);
    }
    let mut resp = json!({ "events": out });
    failures.add_to(&mut resp);
    Ok(to_json(StatusCode::OK, &resp))
}

/// Makes the publish span a child of the request's W3C `traceparent` header, if any, and
/// gives the events that name no trace of their own the publish span's context: the
/// spans that handle them become its children.
fn trace_publish(span: &tracing::Span, headers: &HeaderMap, events: &mut [Map<String, Value>]) {
    let header = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    let tracestate = header(context::TRACESTATE);
    if let Some(tp) = header(context::TRACEPARENT).and_then(|s| TraceParent::parse(s).ok()) {
        telemetry::set_parent(span, &tp, tracestate);
    }
    let Some(own) = telemetry::traceparent_of(span) else {
        return;
    };
    for e in events {
        if !e.contains_key(context::TRACEPARENT) {
            e.insert(context::TRACEPARENT.into(), own.to_string().into());
            if let Some(ts) = tracestate {
                e.insert(context::TRACESTATE.into(), ts.into());
            }
        }
    }
}

// ---- reading ----

/// Writes `{"offset":..,"published_ms":..,"event":..}`; the event is stored as JSON text and
/// goes out as it is.
fn write_event(out: &mut String, e: &StoredEvent) {
    let _ = write!(
        out,
        "{{\"offset\":{},\"published_ms\":{},\"event\":",
        e.offset, e.published_ms
    );
    out.push_str(std::str::from_utf8(&e.event).unwrap_or("null"));
    out.push('}');
}

fn parse_position(field: &'static str, s: &str) -> Result<Start, ApiError> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u64>() {
        return Ok(Start::Offset(n));
    }
    Start::parse(s).ok_or_else(|| {
        ApiError::bad_request(
            code::INVALID_REQUEST,
            format!("{field} {s:?} is not a position: use earliest, latest, an offset, offset:N or time:RFC3339"),
        )
        .with_extra(json!({ "field": field }))
    })
}

fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(PAGE_DEFAULT);
    if limit == 0 || limit > PAGE_MAX {
        return Err(ApiError::bad_request(
            code::OUT_OF_RANGE,
            format!("limit must be 1..={PAGE_MAX}"),
        )
        .with_extra(json!({ "field": "limit" })));
    }
    Ok(limit)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReadQuery {
    from: Option<String>,
    from_time: Option<String>,
    limit: Option<usize>,
}

pub(crate) async fn read(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<ReadQuery>,
) -> Result<Response, ApiError> {
    let name = topic_name(&raw)?;
    let limit = page_limit(q.limit)?;
    let from = match (&q.from, &q.from_time) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                code::INVALID_REQUEST,
                "give from or from_time, not both",
            ));
        }
        (_, Some(t)) => Start::Time(sluice_types::parse_rfc3339_ms(t).ok_or_else(|| {
            ApiError::bad_request(
                code::INVALID_REQUEST,
                format!("from_time {t:?} is not an RFC 3339 timestamp"),
            )
            .with_extra(json!({ "field": "from_time" }))
        })?),
        (Some(f), None) => parse_position("from", f)?,
        (None, None) => Start::Earliest,
    };
    let page = state.broker().read_events(name.as_str(), from, limit)?;
    let mut out = String::from("{\"events\":[");
    for (i, e) in page.events.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_event(&mut out, e);
    }
    let _ = write!(out, "],\"next\":{}}}", page.next);
    Ok(json_response(StatusCode::OK, out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TableQuery {
    after: Option<String>,
    limit: Option<usize>,
}

pub(crate) async fn table(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<TableQuery>,
) -> Result<Response, ApiError> {
    let name = topic_name(&raw)?;
    let limit = page_limit(q.limit)?;
    let entries = state
        .broker()
        .table_page(name.as_str(), q.after.as_deref(), limit)?;
    let mut out = String::from("{\"entries\":[");
    for (i, (key, e)) in entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{{\"key\":{},\"entry\":", json!(key));
        write_event(&mut out, e);
        out.push('}');
    }
    let next = if entries.len() == limit {
        json!(entries.last().map(|(k, _)| k))
    } else {
        Value::Null
    };
    let _ = write!(out, "],\"next_after\":{next}}}");
    Ok(json_response(StatusCode::OK, out))
}

pub(crate) async fn table_key(
    State(state): State<AppState>,
    Path((raw, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let name = topic_name(&raw)?;
    let e = state.broker().table_get(name.as_str(), &key)?;
    let mut out = format!("{{\"key\":{},\"entry\":", json!(key));
    write_event(&mut out, &e);
    out.push('}');
    Ok(json_response(StatusCode::OK, out))
}

// ---- subscriptions ----

pub(crate) async fn list_subs(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let name = sub_topic(&raw)?;
    let subs: Vec<SubscriptionView> = state
        .broker()
        .list_subscriptions(&name)?
        .into_iter()
        .map(Into::into)
        .collect();
    Ok(to_json(StatusCode::OK, &json!({ "subscriptions": subs })))
}

pub(crate) async fn get_sub(
    State(state): State<AppState>,
    Path((topic, sub)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (t, s) = (sub_topic(&topic)?, resource_name("subscription", &sub)?);
    let info = state.broker().get_subscription(t.as_str(), s.as_str())?;
    Ok(to_json(StatusCode::OK, &SubscriptionView::from(info)))
}

pub(crate) async fn put_sub(
    State(state): State<AppState>,
    Path((topic, sub)): Path<(String, String)>,
    body: Body,
) -> Result<Response, ApiError> {
    let (t, s) = (sub_topic(&topic)?, resource_name("subscription", &sub)?);
    let config: SubscriptionConfig = read_json(&state, body).await?;
    let created = state
        .broker()
        .put_subscription(t.as_str(), &s, config)
        .await?;
    let info = state.broker().get_subscription(t.as_str(), s.as_str())?;
    Ok(to_json(put_status(created), &SubscriptionView::from(info)))
}

/// Creates or updates a persistent subscription of the event store: a subscription of
/// `$all` whose filter also selects `selector` (a stream, a category or all). It starts at
/// the beginning unless the body says otherwise.
pub(crate) async fn put_event_store_sub(
    state: &AppState,
    selector: StreamSelector<'_>,
    sub: &str,
    body: Body,
) -> Result<Response, ApiError> {
    selector.validate()?;
    let s = resource_name("subscription", sub)?;
    let mut raw: Map<String, Value> = read_json(state, body).await?;
    raw.entry("start").or_insert_with(|| json!("earliest"));
    match raw.entry("filter").or_insert_with(|| json!({})) {
        Value::Object(f) => {
            if f.contains_key(STREAM_ATTRIBUTE) {
                return Err(ApiError::bad_request(
                    code::INVALID_FILTER,
                    "the route selects the stream; filter on other attributes",
                )
                .with_extra(json!({ "path": "filter.stream" })));
            }
            f.insert(STREAM_ATTRIBUTE.to_owned(), selector.condition());
        }
        _ => {
            return Err(ApiError::bad_request(
                code::INVALID_FILTER,
                "filter must be a JSON object (an event pattern)",
            ));
        }
    }
    let config: SubscriptionConfig = serde_json::from_value(Value::Object(raw))
        .map_err(|e| ApiError::bad_request(code::INVALID_REQUEST, e.to_string()))?;
    let created = state.broker().put_subscription(ALL, &s, config).await?;
    let info = state.broker().get_subscription(ALL, s.as_str())?;
    Ok(to_json(put_status(created), &SubscriptionView::from(info)))
}

pub(crate) async fn delete_sub(
    State(state): State<AppState>,
    Path((topic, sub)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (t, s) = (sub_topic(&topic)?, resource_name("subscription", &sub)?);
    state
        .broker()
        .delete_subscription(t.as_str(), s.as_str())
        .await?;
    Ok(to_json(StatusCode::OK, &json!({ "deleted": s })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeekRequest {
    to: String,
}

pub(crate) async fn seek(
    State(state): State<AppState>,
    Path((topic, sub)): Path<(String, String)>,
    body: Body,
) -> Result<Response, ApiError> {
    let (t, s) = (sub_topic(&topic)?, resource_name("subscription", &sub)?);
    let req: SeekRequest = read_json(&state, body).await?;
    let to = parse_position("to", &req.to)?;
    let offset = state.broker().seek(t.as_str(), s.as_str(), to).await?;
    Ok(to_json(StatusCode::OK, &json!({ "offset": offset })))
}

/// Renders a subscription's deliveries: the CloudEvent under `event`, its offset beside.
fn render_event_deliveries(deliveries: &[Delivery]) -> String {
    let size: usize = deliveries.iter().map(|d| d.body.len() + 220).sum();
    let mut out = String::with_capacity(size + 16);
    out.push_str("{\"messages\":[");
    for (i, d) in deliveries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            "{{\"id\":\"{}\",\"offset\":{},\"receipt\":\"{}\",\"receive_count\":{},\"first_receive_ms\":{},\"lease_deadline_ms\":{},\"group\":{},\"event\":",
            d.id,
            d.seq,
            d.receipt,
            d.receive_count,
            d.first_receive_ms,
            d.lease_deadline_ms,
            serde_json::to_string(&d.group).expect("string serializes"),
        );
        out.push_str(std::str::from_utf8(&d.body).unwrap_or("null"));
        queues::write_dead_letter(&mut out, d);
        out.push('}');
    }
    out.push_str("]}");
    out
}

pub(crate) async fn receive(
    State(state): State<AppState>,
    Path((topic, sub)): Path<(String, String)>,
    body: Body,
) -> Result<Response, ApiError> {
    let q = sub_queue(&topic, &sub)?;
    queues::receive_from(&state, &q, body, render_event_deliveries).await
}

pub(crate) async fn ack(
    State(state): State<AppState>,
    Path((topic, sub)): Path<(String, String)>,
    body: Body,
) -> Result<Response, ApiError> {
    queues::ack_on(&state, &sub_queue(&topic, &sub)?, body).await
}

pub(crate) async fn nack(
    State(state): State<AppState>,
    Path((topic, sub)): Path<(String, String)>,
    body: Body,
) -> Result<Response, ApiError> {
    queues::nack_on(&state, &sub_queue(&topic, &sub)?, body).await
}

pub(crate) async fn extend(
    State(state): State<AppState>,
    Path((topic, sub)): Path<(String, String)>,
    body: Body,
) -> Result<Response, ApiError> {
    queues::extend_on(&state, &sub_queue(&topic, &sub)?, body).await
}

pub(crate) async fn redrive(
    State(state): State<AppState>,
    Path((topic, sub)): Path<(String, String)>,
    body: Body,
) -> Result<Response, ApiError> {
    queues::redrive_on(&state, &sub_queue(&topic, &sub)?, body).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want);
        }
        assert_eq!(base64(&[0xff, 0xfe]), "//4=");
    }

    #[test]
    fn header_values_are_percent_decoded() {
        assert_eq!(percent_decode("a%20b%C3%A9").as_deref(), Some("a bé"));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("%zz"), None);
    }
}
