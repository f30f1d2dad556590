//! Saga routes: saga definitions, stored as immutable versions (a put creates the next
//! one); starting sagas (idempotent by id), inspecting them with their steps and history,
//! listing by status and definition, and cancelling.

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_functions::saga_runner::SagaInfo;
use sluice_functions::sagas::DefinitionVersion;
use sluice_sagas::{SagaDefinition, Status};

use crate::eventstore::query;
use crate::queues::{resource_name, to_json};
use crate::{ApiError, AppState, read_json};

fn view(d: &DefinitionVersion) -> serde_json::Value {
    json!({
        "name": d.name,
        "version": d.version,
        "created_ms": d.created_ms,
        "definition": d.definition,
    })
}

pub(crate) async fn put_definition(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let name = resource_name("saga definition", &raw)?;
    let definition: SagaDefinition = read_json(&state, body).await?;
    let stored = state
        .functions()
        .put_saga_definition(&name, definition)
        .await?;
    let status = if stored.version == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(to_json(status, &view(&stored)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VersionQuery {
    version: Option<u32>,
}

pub(crate) async fn get_definition(
    State(state): State<AppState>,
    Path(name): Path<String>,
    q: Result<Query<VersionQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let d = state.functions().saga_definition(&name, q.version)?;
    Ok(to_json(StatusCode::OK, &view(&d)))
}

pub(crate) async fn list_definitions(State(state): State<AppState>) -> Result<Response, ApiError> {
    let all: Vec<serde_json::Value> = state
        .functions()
        .saga_definitions()?
        .iter()
        .map(view)
        .collect();
    Ok(to_json(StatusCode::OK, &json!({ "definitions": all })))
}

pub(crate) async fn delete_definition(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    state.functions().delete_saga_definition(&name).await?;
    Ok(to_json(StatusCode::OK, &json!({ "deleted": name })))
}

// ---- sagas ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBody {
    definition: String,
    #[serde(default)]
    version: Option<u32>,
    /// A client-supplied id makes the start idempotent.
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    input: Value,
}

fn saga_json(info: &SagaInfo) -> Value {
    let steps: Vec<Value> = info
        .definition
        .steps
        .iter()
        .zip(&info.saga.steps)
        .map(|(d, s)| {
            let mut v = serde_json::to_value(s).expect("step state serializes");
            v["name"] = json!(d.name);
            v
        })
        .collect();
    json!({
        "id": info.summary.id,
        "definition": info.summary.definition,
        "version": info.summary.version,
        "status": info.summary.status,
        "error": info.saga.error,
        "input": info.saga.input,
        "started_ms": info.summary.started_ms,
        "updated_ms": info.summary.updated_ms,
        "steps": steps,
    })
}

pub(crate) async fn start(State(state): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let b: StartBody = read_json(&state, body).await?;
    let (info, created) = state
        .sagas()
        .start_saga(&b.definition, b.version, b.id, b.input)
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(to_json(status, &saga_json(&info)))
}

pub(crate) async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(to_json(
        StatusCode::OK,
        &saga_json(&state.sagas().get(&id)?),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    status: Option<Status>,
    definition: Option<String>,
}

pub(crate) async fn list(
    State(state): State<AppState>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let all = state.sagas().list(q.status, q.definition.as_deref())?;
    Ok(to_json(StatusCode::OK, &json!({ "sagas": all })))
}

pub(crate) async fn history(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let events: Vec<Value> = state
        .sagas()
        .history(&id)?
        .into_iter()
        .map(|(version, h)| {
            json!({
                "version": version,
                "at": sluice_types::format_rfc3339_ms(h.at_ms),
                "event": h.event,
            })
        })
        .collect();
    Ok(to_json(
        StatusCode::OK,
        &json!({ "id": id, "events": events }),
    ))
}

pub(crate) async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(to_json(
        StatusCode::OK,
        &saga_json(&state.sagas().cancel(&id).await?),
    ))
}
