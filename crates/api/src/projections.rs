//! Projection routes: create, inspect (position, lag), pause, resume, rebuild and delete
//! projections, and read the state they fold.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;
use serde_json::json;
use sluice_functions::{ProjectionConfig, ProjectionInfo};

use crate::functions::{StateQuery, state_keys_of, state_value_of};
use crate::queues::{resource_name, to_json};
use crate::{ApiError, AppState, put_status, read_json};

#[derive(Serialize)]
struct ProjectionView {
    name: String,
    #[serde(flatten)]
    config: ProjectionConfig,
    created_ms: u64,
    paused: bool,
    rebuilding: bool,
    rebuilds: u64,
    position: u64,
    head: u64,
    lag: u64,
    invocations: u64,
    errors: u64,
    last_error: Option<String>,
}

impl From<ProjectionInfo> for ProjectionView {
    fn from(p: ProjectionInfo) -> Self {
        Self {
            name: p.name,
            config: p.config,
            created_ms: p.created_ms,
            paused: p.paused,
            rebuilding: p.rebuilding,
            rebuilds: p.rebuilds,
            position: p.position,
            head: p.head,
            lag: p.lag,
            invocations: p.invocations,
            errors: p.errors,
            last_error: p.last_error,
        }
    }
}

fn view(p: ProjectionInfo) -> Response {
    to_json(StatusCode::OK, &ProjectionView::from(p))
}

pub(crate) async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let all: Vec<ProjectionView> = state
        .projections()
        .list()?
        .into_iter()
        .map(Into::into)
        .collect();
    Ok(to_json(StatusCode::OK, &json!({ "projections": all })))
}

pub(crate) async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(view(state.projections().get(&name)?))
}

pub(crate) async fn put(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let name = resource_name("projection", &raw)?;
    let config: ProjectionConfig = read_json(&state, body).await?;
    let created = state.projections().put(&name, config).await?;
    let info = state.projections().get(name.as_str())?;
    Ok(to_json(put_status(created), &ProjectionView::from(info)))
}

pub(crate) async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    state.projections().delete(&name).await?;
    Ok(to_json(StatusCode::OK, &json!({ "deleted": name })))
}

pub(crate) async fn rebuild(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(view(state.projections().rebuild(&name).await?))
}

pub(crate) async fn pause(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(view(state.projections().set_paused(&name, true).await?))
}

pub(crate) async fn resume(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(view(state.projections().set_paused(&name, false).await?))
}

pub(crate) async fn state_keys(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<StateQuery>,
) -> Result<Response, ApiError> {
    let function = state.projections().get(&name)?.config.function;
    state_keys_of(&state, &function, &q)
}

pub(crate) async fn state_get(
    State(state): State<AppState>,
    Path((name, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let function = state.projections().get(&name)?.config.function;
    state_value_of(&state, &function, &key)
}
