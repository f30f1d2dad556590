//! Saga routes: saga definitions, stored as immutable versions (a put creates the next
//! one). Starting and inspecting sagas come with the saga runner.

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;
use sluice_functions::sagas::DefinitionVersion;
use sluice_sagas::SagaDefinition;

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
