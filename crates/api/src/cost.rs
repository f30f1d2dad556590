//! Cost and budgets: `GET /v1/cost` (usage and estimated cost per function, trigger, queue
//! and topic over a span of time) and `/v1/budgets` (limits that pause triggers).

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_functions::BudgetInfo;
use sluice_functions::budget::{BudgetConfig, Kind, Scope};
use sluice_types::HumanDuration;

use crate::eventstore::query;
use crate::queues::{resource_name, to_json};
use crate::{ApiError, AppState, code, read_json};

/// The longest span `since` may name: usage is kept hourly for 35 days.
const SINCE_MAX: HumanDuration = HumanDuration::from_millis(35 * 24 * 3_600_000);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CostQuery {
    /// How far back, e.g. `24h` (default), `7d`.
    since: Option<HumanDuration>,
    /// Only this kind: `function`, `trigger`, `queue` or `topic`.
    by: Option<Kind>,
}

pub(crate) async fn cost(
    State(state): State<AppState>,
    q: Result<Query<CostQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let since = q
        .since
        .unwrap_or(HumanDuration::from_millis(24 * 3_600_000));
    if since > SINCE_MAX {
        return Err(ApiError::bad_request(
            code::INVALID_REQUEST,
            format!("since: at most {SINCE_MAX} of usage is kept"),
        ));
    }
    let now = state.broker().now_ms();
    let report = state
        .functions()
        .cost(now.saturating_sub(since.as_millis()));
    let items: Vec<Value> = report
        .items
        .iter()
        .filter(|i| q.by.is_none_or(|k| k == i.kind))
        .map(|i| json!({"kind": i.kind, "name": i.name, "usage": i.usage, "cost_usd": i.cost}))
        .collect();
    // Function and trigger usage are the same invocations: the total counts functions.
    let total: f64 = report
        .items
        .iter()
        .filter(|i| i.kind != Kind::Trigger)
        .filter(|i| q.by.is_none_or(|k| k == i.kind))
        .map(|i| i.cost.total)
        .sum();
    Ok(to_json(
        StatusCode::OK,
        &json!({
            "since": sluice_types::format_rfc3339_ms(report.since_ms),
            "until": sluice_types::format_rfc3339_ms(report.until_ms),
            "currency": "USD",
            "estimate": true,
            "prices": report.prices,
            "items": items,
            "total_usd": total,
        }),
    ))
}

fn view(b: &BudgetInfo) -> Value {
    let mut v = serde_json::to_value(b).expect("serializes");
    v["period_start"] = sluice_types::format_rfc3339_ms(b.period_start_ms).into();
    v["period_end"] = sluice_types::format_rfc3339_ms(b.period_end_ms).into();
    v
}

pub(crate) async fn put_budget(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let name = resource_name("budget", &raw)?;
    let config: BudgetConfig = read_json(&state, body).await?;
    let missing = match &config.scope {
        Scope::App => None,
        Scope::Function(f) => state
            .functions()
            .get(f)
            .is_err()
            .then(|| format!("scope: function {f:?} does not exist")),
        Scope::Trigger(t) => state
            .triggers()
            .get(t)
            .is_err()
            .then(|| format!("scope: trigger {t:?} does not exist")),
    };
    if let Some(message) = missing {
        return Err(sluice_functions::Error::InvalidBudget(message).into());
    }
    let created = state.functions().put_budget(name.as_str(), config).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(to_json(
        status,
        &view(&state.functions().budget(name.as_str())?),
    ))
}

pub(crate) async fn get_budget(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(to_json(
        StatusCode::OK,
        &view(&state.functions().budget(name.as_str())?),
    ))
}

pub(crate) async fn list_budgets(State(state): State<AppState>) -> Result<Response, ApiError> {
    let budgets: Vec<Value> = state.functions().budgets().iter().map(view).collect();
    Ok(to_json(StatusCode::OK, &json!({ "budgets": budgets })))
}

pub(crate) async fn delete_budget(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    state.functions().delete_budget(&name).await?;
    Ok(to_json(StatusCode::OK, &json!({ "deleted": name })))
}
