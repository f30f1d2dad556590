//! `GET /v1/lineage/{event}`: the causal tree of the chain an event belongs to.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;

use crate::queues::to_json;
use crate::{ApiError, AppState, code};

pub(crate) async fn tree(
    State(state): State<AppState>,
    Path(event): Path<String>,
) -> Result<Response, ApiError> {
    match state.functions().lineage(&event)? {
        Some(tree) => Ok(to_json(StatusCode::OK, &tree)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            code::LINEAGE_NOT_FOUND,
            format!(
                "lineage knows no event {event:?}: no function handled or produced it, or its lineage is past retention"
            ),
        )),
    }
}
