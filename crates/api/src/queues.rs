//! Queue routes: create, update, inspect and delete queues; send, receive, ack, nack,
//! extend, purge and redrive.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use sluice_broker::{
    Delivery, Error as BrokerError, Nack, NewMessage, QueueConfig, QueueInfo, QueueStats,
    ReceiptOutcome, SendOutcome,
};
use sluice_types::{HumanDuration, Name};

use crate::{ApiError, AppState, code, json_response, long_poll_permit, put_status, read_json};

/// Most attributes on one message.
const ATTRIBUTES_MAX: usize = 64;
/// Most messages one redrive call moves.
const REDRIVE_MAX: u64 = 10_000;

fn name(raw: &str) -> Result<Name, ApiError> {
    resource_name("queue", raw)
}

/// Parses a resource name from a path; `what` names the kind of resource in the error.
pub(crate) fn resource_name(what: &str, raw: &str) -> Result<Name, ApiError> {
    Name::new(raw)
        .map_err(|e| ApiError::bad_request(code::INVALID_NAME, format!("{what} name {raw:?}: {e}")))
}

#[derive(Serialize)]
pub(crate) struct StatsView {
    visible: u64,
    leased: u64,
    delayed: u64,
    dead_lettered: u64,
    oldest_age_ms: Option<u64>,
    sent_total: u64,
    expired_total: u64,
    dedup_hits_total: u64,
}

impl From<QueueStats> for StatsView {
    fn from(s: QueueStats) -> Self {
        Self {
            visible: s.visible,
            leased: s.leased,
            delayed: s.delayed,
            dead_lettered: s.dead_lettered,
            oldest_age_ms: s.oldest_age_ms,
            sent_total: s.sent_total,
            expired_total: s.expired_total,
            dedup_hits_total: s.dedup_hits_total,
        }
    }
}

#[derive(Serialize)]
struct QueueView {
    name: String,
    created_ms: u64,
    #[serde(flatten)]
    config: QueueConfig,
    stats: StatsView,
}

impl From<QueueInfo> for QueueView {
    fn from(q: QueueInfo) -> Self {
        Self {
            name: q.name,
            created_ms: q.created_ms,
            config: q.config,
            stats: q.stats.into(),
        }
    }
}

pub(crate) fn to_json<T: Serialize>(status: StatusCode, v: &T) -> Response {
    json_response(
        status,
        serde_json::to_string(v).expect("response serializes"),
    )
}

pub(crate) async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let queues: Vec<QueueView> = state
        .broker()
        .list_queues()?
        .into_iter()
        .map(Into::into)
        .collect();
    Ok(to_json(StatusCode::OK, &json!({ "queues": queues })))
}

pub(crate) async fn get(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let name = name(&raw)?;
    let info = state.broker().get_queue(name.as_str())?;
    Ok(to_json(StatusCode::OK, &QueueView::from(info)))
}

pub(crate) async fn put(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let name = name(&raw)?;
    let config: QueueConfig = read_json(&state, body).await?;
    let created = state.broker().put_queue(&name, config).await?;
    let info = state.broker().get_queue(name.as_str())?;
    Ok(to_json(put_status(created), &QueueView::from(info)))
}

pub(crate) async fn delete(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let name = name(&raw)?;
    state.broker().delete_queue(name.as_str()).await?;
    Ok(to_json(StatusCode::OK, &json!({ "deleted": name })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendRequest {
    messages: Vec<SendEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendEntry {
    body: Box<RawValue>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    group: Option<String>,
    dedup_id: Option<String>,
    delay: Option<HumanDuration>,
}

/// The failed entries of a batch call, and the problem to answer if none succeeded.
#[derive(Default)]
pub(crate) struct Failures {
    pub(crate) entries: Vec<Value>,
    first: Option<(StatusCode, &'static str, String)>,
}

impl Failures {
    /// Records that the entry identified by `key: at` failed with `e`.
    pub(crate) fn push(&mut self, key: &'static str, at: Value, e: &BrokerError) {
        let api = ApiError::from(e.clone());
        self.first
            .get_or_insert((api.status, api.code, api.detail.clone()));
        self.entries
            .push(json!({ key: at, "code": api.code, "detail": api.detail }));
    }

    /// The first failure's problem listing every failure, when no entry succeeded.
    pub(crate) fn problem_if_all_failed(&self, succeeded: usize) -> Option<ApiError> {
        let (status, code, detail) = self.first.clone()?;
        (succeeded == 0).then(|| {
            ApiError::new(status, code, detail).with_extra(json!({ "failed": self.entries }))
        })
    }

    /// Adds the `failed` list to a 200 answer.
    pub(crate) fn add_to(self, resp: &mut Value) {
        if !self.entries.is_empty() {
            resp["failed"] = Value::Array(self.entries);
        }
    }
}

pub(crate) async fn send(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let name = name(&raw)?;
    let req: SendRequest = read_json(&state, body).await?;
    if req.messages.is_empty() {
        return Err(ApiError::bad_request(
            code::INVALID_REQUEST,
            "messages must not be empty",
        ));
    }
    if req.messages.len() > sluice_broker::BATCH_MAX {
        return Err(BrokerError::BatchTooLarge(req.messages.len()).into());
    }
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.into_iter().enumerate() {
        if m.attributes.len() > ATTRIBUTES_MAX {
            return Err(ApiError::bad_request(
                code::INVALID_MESSAGE,
                format!("messages[{i}]: more than {ATTRIBUTES_MAX} attributes"),
            ));
        }
        let attributes = if m.attributes.is_empty() {
            b"{}".to_vec()
        } else {
            serde_json::to_vec(&m.attributes).expect("attributes serialize")
        };
        messages.push(NewMessage {
            body: m.body.get().as_bytes().to_vec(),
            attributes,
            group: m.group,
            dedup_id: m.dedup_id,
            delay: m.delay,
        });
    }
    let outcomes = state.broker().send(name.as_str(), messages).await?;
    let mut ids = Vec::with_capacity(outcomes.len());
    let mut duplicates = Vec::new();
    let mut failures = Failures::default();
    for (i, o) in outcomes.iter().enumerate() {
        match o {
            SendOutcome::Sent(id) => ids.push(Value::String(id.clone())),
            SendOutcome::Duplicate(id) => {
                ids.push(Value::String(id.clone()));
                duplicates.push(i);
            }
            SendOutcome::Failed(e) => {
                ids.push(Value::Null);
                failures.push("index", json!(i), e);
            }
        }
    }
    if let Some(problem) = failures.problem_if_all_failed(outcomes.len() - failures.entries.len()) {
        return Err(problem);
    }
    let mut resp = json!({ "ids": ids });
    if !duplicates.is_empty() {
        resp["duplicates"] = json!(duplicates);
    }
    failures.add_to(&mut resp);
    Ok(to_json(StatusCode::OK, &resp))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReceiveRequest {
    #[serde(default = "one")]
    max: usize,
    #[serde(default)]
    wait: HumanDuration,
    lease_timeout: Option<HumanDuration>,
    /// Receipts of earlier deliveries to ack before receiving.
    #[serde(default)]
    ack: Vec<String>,
}

fn one() -> usize {
    1
}

pub(crate) async fn receive(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let name = name(&raw)?;
    receive_from(&state, name.as_str(), body, render_deliveries).await
}

/// Receive on a queue of the delivery engine (a queue or a subscription), rendering the
/// deliveries with `render`.
pub(crate) async fn receive_from(
    state: &AppState,
    queue: &str,
    body: Body,
    render: fn(&[Delivery]) -> String,
) -> Result<Response, ApiError> {
    let req: ReceiveRequest = read_json(state, body).await?;
    let _permit = if req.wait > HumanDuration::ZERO {
        Some(long_poll_permit(state)?)
    } else {
        None
    };
    if req.ack.is_empty() {
        let deliveries = state
            .broker()
            .receive(
                queue,
                req.max,
                req.wait,
                req.lease_timeout,
                &state.inner.shutdown,
            )
            .await?;
        return Ok(json_response(StatusCode::OK, render(&deliveries)));
    }
    let (outcomes, deliveries) = state
        .broker()
        .ack_and_receive(
            queue,
            &req.ack,
            req.max,
            req.wait,
            req.lease_timeout,
            &state.inner.shutdown,
        )
        .await?;
    // The acks are answered as the ack endpoint answers them, beside the deliveries; that
    // none of them succeeded is not an error here, since the receive itself did.
    let (acked, failures) = receipt_outcomes(&req.ack, outcomes);
    let mut extra = json!({ "acked": acked });
    failures.add_to(&mut extra);
    let mut out = render(&deliveries);
    // Both renderings are one object: its fields go in before the closing brace.
    let closing = out.pop();
    debug_assert_eq!(closing, Some('}'));
    if let Value::Object(fields) = extra {
        for (key, value) in fields {
            let _ = write!(out, ",\"{key}\":{value}");
        }
    }
    out.push('}');
    Ok(json_response(StatusCode::OK, out))
}

/// Writes the receive response by hand: bodies and attributes are stored as JSON text and
/// go out as they are, without being parsed again.
fn render_deliveries(deliveries: &[Delivery]) -> String {
    let size: usize = deliveries
        .iter()
        .map(|d| d.body.len() + d.attributes.len() + 200)
        .sum();
    let mut out = String::with_capacity(size + 16);
    out.push_str("{\"messages\":[");
    for (i, d) in deliveries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            "{{\"id\":\"{}\",\"receipt\":\"{}\",\"receive_count\":{},\"first_receive_ms\":{},\"sent_ms\":{},\"lease_deadline_ms\":{},\"group\":{},\"body\":",
            d.id,
            d.receipt,
            d.receive_count,
            d.first_receive_ms,
            d.sent_ms,
            d.lease_deadline_ms,
            serde_json::to_string(&d.group).expect("string serializes"),
        );
        out.push_str(std::str::from_utf8(&d.body).unwrap_or("null"));
        out.push_str(",\"attributes\":");
        out.push_str(std::str::from_utf8(&d.attributes).unwrap_or("{}"));
        write_dead_letter(&mut out, d);
        out.push('}');
    }
    out.push_str("]}");
    out
}

/// Appends `,"dead_letter":{...}` for a message that was dead-lettered.
pub(crate) fn write_dead_letter(out: &mut String, d: &Delivery) {
    if let Some(dl) = &d.dead_letter {
        let info = json!({
            "source_queue": dl.source_queue,
            "reason": dl.reason,
            "error": dl.error,
            "attempts": dl.attempts,
            "at_ms": dl.at_ms,
        });
        let _ = write!(out, ",\"dead_letter\":{info}");
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReceiptsRequest {
    receipts: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NackRequest {
    receipts: Vec<String>,
    delay: Option<HumanDuration>,
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtendRequest {
    receipts: Vec<String>,
    lease_timeout: HumanDuration,
}

/// How many receipts succeeded, and the failures of the others.
fn receipt_outcomes(receipts: &[String], outcomes: Vec<ReceiptOutcome>) -> (usize, Failures) {
    let mut ok = 0usize;
    let mut failures = Failures::default();
    for (receipt, outcome) in receipts.iter().zip(outcomes) {
        match outcome {
            Ok(()) => ok += 1,
            Err(e) => failures.push("receipt", json!(receipt), &e),
        }
    }
    (ok, failures)
}

/// Answers a receipt batch: 200 with per-receipt failures if any receipt succeeded, the
/// first failure's problem otherwise.
fn receipts_response(
    verb: &'static str,
    receipts: &[String],
    outcomes: Vec<ReceiptOutcome>,
) -> Result<Response, ApiError> {
    let (ok, failures) = receipt_outcomes(receipts, outcomes);
    if let Some(problem) = failures.problem_if_all_failed(ok) {
        return Err(problem);
    }
    let mut resp = json!({ verb: ok });
    failures.add_to(&mut resp);
    Ok(to_json(StatusCode::OK, &resp))
}

pub(crate) async fn ack(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let name = name(&raw)?;
    ack_on(&state, name.as_str(), body).await
}

pub(crate) async fn ack_on(
    state: &AppState,
    queue: &str,
    body: Body,
) -> Result<Response, ApiError> {
    let req: ReceiptsRequest = read_json(state, body).await?;
    let outcomes = state.broker().ack(queue, &req.receipts).await?;
    receipts_response("acked", &req.receipts, outcomes)
}

pub(crate) async fn nack(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let name = name(&raw)?;
    nack_on(&state, name.as_str(), body).await
}

pub(crate) async fn nack_on(
    state: &AppState,
    queue: &str,
    body: Body,
) -> Result<Response, ApiError> {
    let req: NackRequest = read_json(state, body).await?;
    if req.reason.as_ref().is_some_and(|r| r.len() > 4_096) {
        return Err(ApiError::bad_request(
            code::INVALID_REQUEST,
            "reason is longer than 4096 bytes",
        ));
    }
    let nack = Nack {
        delay: req.delay,
        reason: req.reason,
    };
    let outcomes = state.broker().nack(queue, &req.receipts, nack).await?;
    receipts_response("nacked", &req.receipts, outcomes)
}

pub(crate) async fn extend(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let name = name(&raw)?;
    extend_on(&state, name.as_str(), body).await
}

pub(crate) async fn extend_on(
    state: &AppState,
    queue: &str,
    body: Body,
) -> Result<Response, ApiError> {
    let req: ExtendRequest = read_json(state, body).await?;
    let outcomes = state
        .broker()
        .extend(queue, &req.receipts, req.lease_timeout)
        .await?;
    receipts_response("extended", &req.receipts, outcomes)
}

pub(crate) async fn purge(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let name = name(&raw)?;
    let purged = state.broker().purge(name.as_str()).await?;
    Ok(to_json(StatusCode::OK, &json!({ "purged": purged })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RedriveRequest {
    max: Option<u64>,
}

pub(crate) async fn redrive(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let name = name(&raw)?;
    redrive_on(&state, name.as_str(), body).await
}

pub(crate) async fn redrive_on(
    state: &AppState,
    queue: &str,
    body: Body,
) -> Result<Response, ApiError> {
    let req: RedriveRequest = read_json(state, body).await?;
    let max = req.max.unwrap_or(REDRIVE_MAX);
    if max == 0 || max > REDRIVE_MAX {
        return Err(ApiError::bad_request(
            code::OUT_OF_RANGE,
            format!("max must be 1..={REDRIVE_MAX}; call again for more"),
        ));
    }
    let r = state.broker().redrive(queue, max).await?;
    Ok(to_json(
        StatusCode::OK,
        &json!({ "moved": r.moved, "remaining": r.remaining }),
    ))
}
