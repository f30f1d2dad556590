//! Function routes: deploy versions, inspect and delete functions and versions,
//! move aliases, roll back, and invoke synchronously.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sluice_functions::{
    Error as FnError, FunctionInfo, FunctionMeta, InvocationResult, Target, TriggerConfig,
    TriggerInfo, VersionMeta, VersionSettings,
};
use sluice_runtime::Outcome;
use sluice_types::{ByteSize, HumanDuration};

use crate::queues::resource_name;
use crate::topics::percent_decode;
use crate::{ApiError, AppState, code, json_response, read_json};

impl From<FnError> for ApiError {
    fn from(e: FnError) -> Self {
        let e = match e {
            FnError::Broker(b) => return b.into(),
            other => other,
        };
        let detail = e.to_string();
        let (status, code) = match &e {
            FnError::FunctionNotFound(_) => (StatusCode::NOT_FOUND, code::FUNCTION_NOT_FOUND),
            FnError::VersionNotFound { .. } => (StatusCode::NOT_FOUND, code::VERSION_NOT_FOUND),
            FnError::AliasNotFound { .. } => (StatusCode::NOT_FOUND, code::ALIAS_NOT_FOUND),
            FnError::VersionInUse { .. } => (StatusCode::CONFLICT, code::VERSION_IN_USE),
            FnError::TriggerNotFound(_) => (StatusCode::NOT_FOUND, code::TRIGGER_NOT_FOUND),
            FnError::ProjectionNotFound(_) => (StatusCode::NOT_FOUND, code::PROJECTION_NOT_FOUND),
            FnError::InvalidSaga { .. } => (StatusCode::BAD_REQUEST, code::INVALID_SAGA),
            FnError::SagaDefinitionNotFound(_) => {
                (StatusCode::NOT_FOUND, code::SAGA_DEFINITION_NOT_FOUND)
            }
            FnError::SagaNotFound(_) => (StatusCode::NOT_FOUND, code::SAGA_NOT_FOUND),
            FnError::InvalidBudget(_) => (StatusCode::BAD_REQUEST, code::INVALID_BUDGET),
            FnError::BudgetNotFound(_) => (StatusCode::NOT_FOUND, code::BUDGET_NOT_FOUND),
            FnError::FunctionInUse { .. } => (StatusCode::CONFLICT, code::FUNCTION_IN_USE),
            FnError::InvalidSettings(_) => (StatusCode::BAD_REQUEST, code::INVALID_CONFIG),
            FnError::InvalidInvocation(_) => (StatusCode::BAD_REQUEST, code::INVALID_REQUEST),
            FnError::Deploy(_) => (StatusCode::BAD_REQUEST, code::INVALID_COMPONENT),
            FnError::ArtifactTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, code::PAYLOAD_TOO_LARGE)
            }
            FnError::Broker(_) => unreachable!("answered above"),
            FnError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, code::STORAGE_FAILED),
            FnError::Io(_) | FnError::Runtime(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                code::FUNCTION_RUNTIME_FAILED,
            ),
            FnError::Corrupt(_) => (StatusCode::INTERNAL_SERVER_ERROR, code::CORRUPT_DATA),
        };
        if status.is_server_error() {
            tracing::error!(code, %detail, "function request failed");
        }
        let err = ApiError::new(status, code, detail);
        match e {
            FnError::FunctionInUse {
                triggers, sagas, ..
            } => err.with_extra(json!({ "triggers": triggers, "sagas": sagas })),
            FnError::InvalidSaga { field, .. } => err.with_extra(json!({ "field": field })),
            FnError::InvalidBudget(message) => {
                let field = message.split(':').next().unwrap_or_default().to_owned();
                err.with_extra(json!({ "field": field }))
            }
            _ => err,
        }
    }
}

fn meta_json(m: &FunctionMeta) -> Value {
    json!({"name": m.name, "created_ms": m.created_ms, "aliases": m.aliases})
}

fn version_json(v: &VersionMeta) -> Value {
    json!({
        "version": v.version,
        "created_ms": v.created_ms,
        "sha256": v.sha256,
        "size": v.size,
        "memory": v.settings.memory.to_string(),
        "timeout": v.settings.timeout.to_string(),
        "concurrency": v.settings.concurrency,
        "env": v.settings.env,
    })
}

fn function_json(f: &FunctionInfo) -> Value {
    let mut v = meta_json(&f.meta);
    v["versions"] = f.versions.iter().map(version_json).collect();
    v
}

fn ok(v: Value) -> Response {
    json_response(StatusCode::OK, v.to_string())
}

pub(crate) async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let all = state.functions().list()?;
    Ok(ok(
        json!({ "functions": all.iter().map(function_json).collect::<Vec<_>>() }),
    ))
}

pub(crate) async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(ok(function_json(&state.functions().get(&name)?)))
}

pub(crate) async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let triggers = state.triggers().of_function(&name);
    let sagas = state.functions().sagas_using(&name)?;
    if !triggers.is_empty() || !sagas.is_empty() {
        return Err(FnError::FunctionInUse {
            name,
            triggers,
            sagas,
        }
        .into());
    }
    state.functions().delete(&name).await?;
    Ok(Response::builder()
        .status(StatusCode::NO_CONTENT)
        .body(Body::empty())
        .expect("static response"))
}

/// The deploy settings from the query string: `memory`, `timeout`,
/// `concurrency`, and `env=K=V` any number of times.
fn settings_from_query(query: Option<&str>) -> Result<VersionSettings, ApiError> {
    let mut s = VersionSettings::default();
    let mut env = BTreeMap::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(&v.replace('+', " ")).ok_or_else(|| {
            ApiError::bad_request(
                code::INVALID_REQUEST,
                format!("query parameter {k} is not valid UTF-8"),
            )
        })?;
        let field = |e: String| {
            ApiError::bad_request(code::INVALID_CONFIG, format!("{k}: {e}"))
                .with_extra(json!({ "field": k }))
        };
        match k {
            "memory" => s.memory = v.parse::<ByteSize>().map_err(|e| field(e.to_string()))?,
            "timeout" => {
                s.timeout = v
                    .parse::<HumanDuration>()
                    .map_err(|e| field(e.to_string()))?
            }
            "concurrency" => s.concurrency = v.parse::<u32>().map_err(|e| field(e.to_string()))?,
            "env" => {
                let (ek, ev) = v
                    .split_once('=')
                    .ok_or_else(|| field(format!("{v:?} is not K=V")))?;
                env.insert(ek.to_owned(), ev.to_owned());
            }
            other => {
                return Err(ApiError::bad_request(
                    code::INVALID_REQUEST,
                    format!(
                        "unknown query parameter {other:?}; expected memory, timeout, concurrency or env"
                    ),
                ));
            }
        }
    }
    s.env = env;
    s.validate()
        .map_err(|e| ApiError::bad_request(code::INVALID_CONFIG, e))?;
    Ok(s)
}

pub(crate) async fn deploy(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let name = resource_name("function", &name)?;
    let settings = settings_from_query(query.as_deref())?;
    if let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        let base = ct.split(';').next().unwrap_or("").trim();
        if !matches!(base, "application/wasm" | "application/octet-stream") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                code::UNSUPPORTED_MEDIA_TYPE,
                format!("a deploy body is a component: application/wasm, not {base}"),
            ));
        }
    }
    let max = sluice_functions::ARTIFACT_MAX;
    let wasm = axum::body::to_bytes(body, max).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            code::PAYLOAD_TOO_LARGE,
            format!("component is larger than {max} bytes"),
        )
    })?;
    let version = state
        .functions()
        .deploy(&name, wasm.to_vec(), settings)
        .await?;
    let mut v = version_json(&version);
    v["function"] = json!(name.as_str());
    Ok(json_response(StatusCode::CREATED, v.to_string()))
}

fn version_number(raw: &str) -> Result<u32, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::bad_request(
            code::INVALID_REQUEST,
            format!("version {raw:?} is not a version number"),
        )
    })
}

pub(crate) async fn get_version(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let v = state
        .functions()
        .get_version(&name, version_number(&version)?)?;
    Ok(ok(version_json(&v)))
}

pub(crate) async fn delete_version(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    state
        .functions()
        .delete_version(&name, version_number(&version)?)
        .await?;
    Ok(Response::builder()
        .status(StatusCode::NO_CONTENT)
        .body(Body::empty())
        .expect("static response"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AliasBody {
    version: u32,
}

pub(crate) async fn put_alias(
    State(state): State<AppState>,
    Path((name, alias)): Path<(String, String)>,
    body: Body,
) -> Result<Response, ApiError> {
    let b: AliasBody = read_json(&state, body).await?;
    let meta = state
        .functions()
        .set_alias(&name, &alias, b.version)
        .await?;
    Ok(ok(meta_json(&meta)))
}

pub(crate) async fn delete_alias(
    State(state): State<AppState>,
    Path((name, alias)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let meta = state.functions().delete_alias(&name, &alias).await?;
    Ok(ok(meta_json(&meta)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    #[serde(default = "live")]
    alias: String,
    to: Option<u32>,
}

fn live() -> String {
    sluice_functions::LIVE.to_owned()
}

pub(crate) async fn rollback(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let b: RollbackBody = read_json(&state, body).await?;
    let meta = state.functions().rollback(&name, &b.alias, b.to).await?;
    Ok(ok(meta_json(&meta)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InvokeBody {
    /// The data of a single event to invoke with.
    data: Option<Value>,
    /// CloudEvents to invoke with, as a batch.
    events: Option<Vec<Map<String, Value>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct InvokeQuery {
    alias: Option<String>,
    version: Option<u32>,
}

/// The JSON form of an invocation's result.
pub(crate) fn invocation_json(name: &str, r: &InvocationResult) -> Value {
    let failed: Vec<Value> = match (&r.outcome, &r.commit_error) {
        (Outcome::PartialFailure(f), None) => f
            .iter()
            .map(|e| json!({"id": e.id, "reason": e.reason}))
            .collect(),
        _ => Vec::new(),
    };
    let (outcome, error) = (r.outcome_name(), r.failed());
    json!({
        "invocation_id": r.id,
        "function": name,
        "version": r.version,
        "outcome": outcome,
        "failed": failed,
        "error": error,
        "cold": r.cold,
        "instantiate_us": r.instantiate.as_micros() as u64,
        "duration_us": r.duration.as_micros() as u64,
        "fuel": r.fuel,
        "effects": {
            "published": r.effects.published.iter().map(|p| json!({"topic": p.topic, "type": p.event.event_type})).collect::<Vec<_>>(),
            "sent": r.effects.sent.iter().map(|s| json!({"queue": s.queue})).collect::<Vec<_>>(),
            "writes": r.effects.writes.keys().collect::<Vec<_>>(),
        },
        "logs": r.logs.iter().map(|l| json!({
            "at_ms": l.at_ms, "level": l.level.as_str(), "context": l.context, "message": l.message,
        })).collect::<Vec<_>>(),
    })
}

pub(crate) async fn invoke(
    State(state): State<AppState>,
    Path(name): Path<String>,
    axum::extract::Query(q): axum::extract::Query<InvokeQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    let target = match (q.alias, q.version) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                code::INVALID_REQUEST,
                "give alias or version, not both",
            ));
        }
        (None, Some(v)) => Target::Version(v),
        (Some(a), None) => Target::Alias(a),
        (None, None) => Target::default(),
    };
    let b: InvokeBody = read_json(&state, body).await?;
    let now = state.broker().now_ms();
    let raw = match (b.data, b.events) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                code::INVALID_REQUEST,
                "give data or events, not both",
            ));
        }
        (None, Some(events)) => events,
        (data, None) => {
            let mut e = Map::new();
            e.insert("specversion".into(), "1.0".into());
            e.insert("source".into(), "sluice://invoke".into());
            e.insert("type".into(), "sluice.invoke".into());
            e.insert("datacontenttype".into(), "application/json".into());
            e.insert("data".into(), data.unwrap_or(Value::Null));
            vec![e]
        }
    };
    let mut events = Vec::with_capacity(raw.len());
    for (i, e) in raw.into_iter().enumerate() {
        let random = state.broker().random();
        let ev = sluice_broker::event::normalize(e, now, || state.broker().new_event_id(), random)
            .map_err(|err| {
                ApiError::bad_request(code::INVALID_EVENT, format!("events[{i}]: {err}"))
                    .with_extra(json!({ "attribute": err.attribute }))
            })?;
        events.push(ev.value);
    }
    let r = state
        .functions()
        .invoke(&name, &target, &events, None)
        .await?;
    Ok(ok(invocation_json(&name, &r)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogsQuery {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

pub(crate) async fn logs(
    State(state): State<AppState>,
    Path(name): Path<String>,
    axum::extract::Query(q): axum::extract::Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let limit = q
        .limit
        .unwrap_or(100)
        .clamp(1, sluice_functions::logs::READ_MAX);
    let records = state.functions().logs(&name, q.after, limit)?;
    let next = records.last().map_or(q.after, |r| r.seq);
    Ok(ok(json!({ "records": records, "next": next })))
}

// ---- triggers ----

fn trigger_json(t: &TriggerInfo) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    let s = &t.stats;
    json!({
        "name": t.name,
        "config": t.config,
        "stats": {
            "invocations": s.invocations.load(Relaxed),
            "events": s.events.load(Relaxed),
            "errors": s.errors.load(Relaxed),
            "partial_failures": s.partial_failures.load(Relaxed),
            "in_flight": s.in_flight.load(Relaxed),
            "max_in_flight": s.max_in_flight.load(Relaxed),
            "throttled_concurrency": s.throttled_concurrency.load(Relaxed),
            "throttled_rate": s.throttled_rate.load(Relaxed),
            "throttled_budget": s.throttled_budget.load(Relaxed),
            "budget_paused": *s.budget_paused.lock().unwrap(),
            "loops_stopped": s.loops_stopped.load(Relaxed),
            "last_error": *s.last_error.lock().unwrap(),
        }
    })
}

pub(crate) async fn put_trigger(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let name = resource_name("trigger", &name)?;
    let config: TriggerConfig = read_json(&state, body).await?;
    let created = state.triggers().put(&name, config).await?;
    let t = state.triggers().get(name.as_str())?;
    Ok(json_response(
        crate::put_status(created),
        trigger_json(&t).to_string(),
    ))
}

pub(crate) async fn get_trigger(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(ok(trigger_json(&state.triggers().get(&name)?)))
}

pub(crate) async fn list_triggers(State(state): State<AppState>) -> Result<Response, ApiError> {
    let all: Vec<Value> = state.triggers().list().iter().map(trigger_json).collect();
    Ok(ok(json!({ "triggers": all })))
}

pub(crate) async fn delete_trigger(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    state.triggers().delete(&name).await?;
    Ok(Response::builder()
        .status(StatusCode::NO_CONTENT)
        .body(Body::empty())
        .expect("static response"))
}

pub(crate) async fn pause_trigger(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(ok(trigger_json(
        &state.triggers().set_paused(&name, true).await?,
    )))
}

pub(crate) async fn resume_trigger(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(ok(trigger_json(
        &state.triggers().set_paused(&name, false).await?,
    )))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct StateQuery {
    #[serde(default)]
    prefix: String,
    after: Option<String>,
    limit: Option<usize>,
}

/// Keys of a function's state, for inspection.
pub(crate) async fn state_keys(
    State(state): State<AppState>,
    Path(name): Path<String>,
    axum::extract::Query(q): axum::extract::Query<StateQuery>,
) -> Result<Response, ApiError> {
    state_keys_of(&state, &name, &q)
}

pub(crate) fn state_keys_of(
    state: &AppState,
    function: &str,
    q: &StateQuery,
) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1_000);
    let keys = state
        .functions()
        .state_keys(function, &q.prefix, q.after.as_deref(), limit)?;
    Ok(ok(json!({ "keys": keys })))
}

/// One value of a function's state, as its raw bytes.
pub(crate) async fn state_get(
    State(state): State<AppState>,
    Path((name, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    state_value_of(&state, &name, &key)
}

pub(crate) fn state_value_of(
    state: &AppState,
    function: &str,
    key: &str,
) -> Result<Response, ApiError> {
    match state.functions().state_get(function, key)? {
        Some(v) => Ok(Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Body::from(v))
            .expect("static response")),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            code::KEY_NOT_FOUND,
            format!("function {function:?} has no state key {key:?}"),
        )),
    }
}
