//! The HTTP/JSON API of Sluice under `/v1`, with health checks and the OpenAPI document.
//!
//! This crate is the only one that speaks HTTP and JSON to the outside world. Handlers read
//! bodies themselves, under a size limit, so that every malformed, oversized or mistyped
//! request gets a problem+json answer with a stable code instead of a framework default.

mod cost;
mod error;
mod eventstore;
mod functions;
mod lineage;
mod metrics;
mod projections;
mod queues;
mod sagas;
pub mod site;
mod stream;
mod topics;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::de::DeserializeOwned;
use sluice_broker::Broker;
use sluice_functions::saga_runner::Sagas;
use sluice_functions::{Functions, Projections, Triggers};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use error::{ApiError, code};
pub use metrics::Connections;

/// The OpenAPI document served at `/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// API settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Largest accepted request body, in bytes.
    pub body_size_max: usize,
    /// Most long polls waiting at once; more get `429 too_many_long_polls`.
    pub long_polls_max: usize,
    /// Bearer token required on every `/v1` call, if set.
    pub auth_token: Option<String>,
    /// A directory of static pages served under `/app/` (no token needed: pages are
    /// public; the API calls they make are not).
    pub site_dir: Option<std::path::PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            body_size_max: 16 << 20,
            long_polls_max: 1_024,
            auth_token: None,
            site_dir: None,
        }
    }
}

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    broker: Broker,
    functions: Functions,
    triggers: Triggers,
    projections: Projections,
    sagas: Sagas,
    options: Options,
    long_polls: Arc<Semaphore>,
    /// Cancelled at shutdown: long polls answer at once with what they have.
    shutdown: CancellationToken,
    draining: AtomicBool,
    connections: Arc<Connections>,
}

impl AppState {
    pub fn new(
        broker: Broker,
        functions: Functions,
        triggers: Triggers,
        projections: Projections,
        sagas: Sagas,
        options: Options,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                broker,
                functions,
                triggers,
                projections,
                sagas,
                long_polls: Arc::new(Semaphore::new(options.long_polls_max)),
                options,
                shutdown,
                draining: AtomicBool::new(false),
                connections: Arc::default(),
            }),
        }
    }

    /// The connection counts `/metrics` reports; the listener keeps them.
    pub fn connections(&self) -> Arc<Connections> {
        self.inner.connections.clone()
    }

    /// Marks the server as draining: `/readyz` answers 503 from now on.
    pub fn set_draining(&self) {
        self.inner.draining.store(true, Ordering::Release);
    }

    fn broker(&self) -> &Broker {
        &self.inner.broker
    }

    fn functions(&self) -> &Functions {
        &self.inner.functions
    }

    fn triggers(&self) -> &Triggers {
        &self.inner.triggers
    }

    fn projections(&self) -> &Projections {
        &self.inner.projections
    }

    fn sagas(&self) -> &Sagas {
        &self.inner.sagas
    }
}

/// The router with every route.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/openapi.json", get(openapi))
        .route("/queues", get(queues::list))
        .route(
            "/queues/{name}",
            get(queues::get).put(queues::put).delete(queues::delete),
        )
        .route("/queues/{name}/messages", post(queues::send))
        .route("/queues/{name}/receive", post(queues::receive))
        .route("/queues/{name}/ack", post(queues::ack))
        .route("/queues/{name}/nack", post(queues::nack))
        .route("/queues/{name}/extend", post(queues::extend))
        .route("/queues/{name}/purge", post(queues::purge))
        .route("/queues/{name}/redrive", post(queues::redrive))
        .route("/topics", get(topics::list))
        .route(
            "/topics/{topic}",
            get(topics::get).put(topics::put).delete(topics::delete),
        )
        .route(
            "/topics/{topic}/events",
            get(topics::read).post(topics::publish),
        )
        .route("/topics/{topic}/stream", get(stream::topic_stream))
        .route("/topics/{topic}/table", get(topics::table))
        .route("/topics/{topic}/table/{key}", get(topics::table_key))
        .route("/topics/{topic}/subscriptions", get(topics::list_subs))
        .route(
            "/topics/{topic}/subscriptions/{sub}",
            get(topics::get_sub)
                .put(topics::put_sub)
                .delete(topics::delete_sub),
        )
        .route(
            "/topics/{topic}/subscriptions/{sub}/receive",
            post(topics::receive),
        )
        .route("/topics/{topic}/subscriptions/{sub}/ack", post(topics::ack))
        .route(
            "/topics/{topic}/subscriptions/{sub}/nack",
            post(topics::nack),
        )
        .route(
            "/topics/{topic}/subscriptions/{sub}/extend",
            post(topics::extend),
        )
        .route(
            "/topics/{topic}/subscriptions/{sub}/redrive",
            post(topics::redrive),
        )
        .route(
            "/topics/{topic}/subscriptions/{sub}/seek",
            post(topics::seek),
        )
        .route(
            "/topics/{topic}/subscriptions/{sub}/stream",
            get(stream::subscription_stream),
        )
        .route("/functions", get(functions::list))
        .route(
            "/functions/{name}",
            get(functions::get).delete(functions::delete),
        )
        .route("/functions/{name}/versions", post(functions::deploy))
        .route(
            "/functions/{name}/versions/{version}",
            get(functions::get_version).delete(functions::delete_version),
        )
        .route(
            "/functions/{name}/aliases/{alias}",
            put(functions::put_alias).delete(functions::delete_alias),
        )
        .route("/functions/{name}/rollback", post(functions::rollback))
        .route("/functions/{name}/invoke", post(functions::invoke))
        .route("/functions/{name}/logs", get(functions::logs))
        .route("/functions/{name}/state", get(functions::state_keys))
        .route("/functions/{name}/state/{key}", get(functions::state_get))
        .route("/triggers", get(functions::list_triggers))
        .route(
            "/triggers/{name}",
            get(functions::get_trigger)
                .put(functions::put_trigger)
                .delete(functions::delete_trigger),
        )
        .route("/triggers/{name}/pause", post(functions::pause_trigger))
        .route("/triggers/{name}/resume", post(functions::resume_trigger))
        .route(
            "/streams/{stream}",
            get(eventstore::info).delete(eventstore::delete),
        )
        .route(
            "/streams/{stream}/events",
            get(eventstore::read).post(eventstore::append),
        )
        .route("/streams/{stream}/stream", get(eventstore::tail_stream))
        .route(
            "/streams/{stream}/metadata",
            get(eventstore::get_metadata).put(eventstore::put_metadata),
        )
        .route(
            "/streams/{stream}/snapshot",
            get(eventstore::get_snapshot).put(eventstore::put_snapshot),
        )
        .route(
            "/categories/{category}/events",
            get(eventstore::read_category),
        )
        .route(
            "/categories/{category}/stream",
            get(eventstore::tail_category),
        )
        .route("/types/{type}/events", get(eventstore::read_type))
        .route(
            "/streams/{stream}/subscriptions/{sub}",
            put(eventstore::put_stream_subscription),
        )
        .route(
            "/categories/{category}/subscriptions/{sub}",
            put(eventstore::put_category_subscription),
        )
        .route("/sagas", get(sagas::list).post(sagas::start))
        .route("/sagas/{id}", get(sagas::get))
        .route("/sagas/{id}/history", get(sagas::history))
        .route("/sagas/{id}/cancel", post(sagas::cancel))
        .route("/sagas/definitions", get(sagas::list_definitions))
        .route(
            "/sagas/definitions/{name}",
            get(sagas::get_definition)
                .put(sagas::put_definition)
                .delete(sagas::delete_definition),
        )
        .route("/lineage/{event}", get(lineage::tree))
        .route("/cost", get(cost::cost))
        .route("/budgets", get(cost::list_budgets))
        .route(
            "/budgets/{name}",
            get(cost::get_budget)
                .put(cost::put_budget)
                .delete(cost::delete_budget),
        )
        .route("/projections", get(projections::list))
        .route(
            "/projections/{name}",
            get(projections::get)
                .put(projections::put)
                .delete(projections::delete),
        )
        .route("/projections/{name}/rebuild", post(projections::rebuild))
        .route("/projections/{name}/pause", post(projections::pause))
        .route("/projections/{name}/resume", post(projections::resume))
        .route("/projections/{name}/state", get(projections::state_keys))
        .route(
            "/projections/{name}/state/{key}",
            get(projections::state_get),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(site::PREFIX, get(site::serve))
        .route("/app/", get(site::serve))
        .route("/app/{*path}", get(site::serve))
        .route(
            "/metrics",
            get(metrics::metrics)
                .route_layer(middleware::from_fn_with_state(state.clone(), authenticate)),
        )
        .nest("/v1", v1)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn authenticate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(token) = &state.inner.options.auth_token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
            let mut resp = ApiError::new(
                StatusCode::UNAUTHORIZED,
                code::UNAUTHORIZED,
                "a valid bearer token is required",
            )
            .into_response();
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                "Bearer".parse().expect("static header"),
            );
            return resp;
        }
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn healthz() -> Response {
    json_response(StatusCode::OK, r#"{"status":"ok"}"#.to_owned())
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.inner.draining.load(Ordering::Acquire) {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            code::SHUTTING_DOWN,
            "the server is shutting down",
        )
        .into_response();
    }
    if !state.broker().is_healthy() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            code::STORAGE_FAILED,
            "the store failed to persist and takes no more writes",
        )
        .into_response();
    }
    json_response(StatusCode::OK, r#"{"status":"ready"}"#.to_owned())
}

async fn openapi() -> Response {
    json_response(StatusCode::OK, OPENAPI.to_owned())
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, code::NOT_FOUND, "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        code::METHOD_NOT_ALLOWED,
        "the route does not take this method",
    )
}

/// A JSON response from already-serialized text.
fn json_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Reads a body under the size limit.
async fn read_body(state: &AppState, body: Body) -> Result<axum::body::Bytes, ApiError> {
    let limit = state.inner.options.body_size_max;
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            code::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {limit} bytes"),
        )
    })
}

/// A permit to hold a long poll or a stream open; `429 too_many_long_polls` when none is
/// left, so clients back off instead of piling up.
fn long_poll_permit(state: &AppState) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    state
        .inner
        .long_polls
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                code::TOO_MANY_LONG_POLLS,
                "too many long polls and streams are open; retry later or poll without wait",
            )
            .retry_after(1)
        })
}

/// 201 for a created resource, 200 for an updated one.
fn put_status(created: bool) -> StatusCode {
    if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

/// Reads and parses a JSON body under the size limit. An empty body reads as `{}`.
async fn read_json<T: DeserializeOwned>(state: &AppState, body: Body) -> Result<T, ApiError> {
    let bytes = read_body(state, body).await?;
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &bytes
    };
    serde_json::from_slice(text).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => ApiError::bad_request(
                code::INVALID_JSON,
                format!("request body is not valid JSON: {e}"),
            ),
            Category::Data => ApiError::bad_request(code::INVALID_REQUEST, e.to_string()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_document_is_json_and_lists_every_route() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json parses");
        let paths = doc["paths"].as_object().expect("paths");
        for route in [
            "/healthz",
            "/readyz",
            "/app/{path}",
            "/v1/openapi.json",
            "/v1/queues",
            "/v1/queues/{name}",
            "/v1/queues/{name}/messages",
            "/v1/queues/{name}/receive",
            "/v1/queues/{name}/ack",
            "/v1/queues/{name}/nack",
            "/v1/queues/{name}/extend",
            "/v1/queues/{name}/purge",
            "/v1/queues/{name}/redrive",
            "/v1/topics",
            "/v1/topics/{topic}",
            "/v1/topics/{topic}/events",
            "/v1/topics/{topic}/stream",
            "/v1/topics/{topic}/table",
            "/v1/topics/{topic}/table/{key}",
            "/v1/topics/{topic}/subscriptions",
            "/v1/topics/{topic}/subscriptions/{sub}",
            "/v1/topics/{topic}/subscriptions/{sub}/receive",
            "/v1/topics/{topic}/subscriptions/{sub}/ack",
            "/v1/topics/{topic}/subscriptions/{sub}/nack",
            "/v1/topics/{topic}/subscriptions/{sub}/extend",
            "/v1/topics/{topic}/subscriptions/{sub}/redrive",
            "/v1/topics/{topic}/subscriptions/{sub}/seek",
            "/v1/topics/{topic}/subscriptions/{sub}/stream",
            "/v1/functions",
            "/v1/functions/{name}",
            "/v1/functions/{name}/versions",
            "/v1/functions/{name}/versions/{version}",
            "/v1/functions/{name}/aliases/{alias}",
            "/v1/functions/{name}/rollback",
            "/v1/functions/{name}/invoke",
            "/v1/functions/{name}/logs",
            "/v1/functions/{name}/state",
            "/v1/functions/{name}/state/{key}",
            "/v1/triggers",
            "/v1/triggers/{name}",
            "/v1/triggers/{name}/pause",
            "/v1/triggers/{name}/resume",
            "/v1/streams/{stream}",
            "/v1/streams/{stream}/events",
            "/v1/streams/{stream}/stream",
            "/v1/streams/{stream}/metadata",
            "/v1/streams/{stream}/snapshot",
            "/v1/streams/{stream}/subscriptions/{sub}",
            "/v1/categories/{category}/events",
            "/v1/categories/{category}/stream",
            "/v1/categories/{category}/subscriptions/{sub}",
            "/v1/types/{type}/events",
            "/v1/projections",
            "/v1/projections/{name}",
            "/v1/projections/{name}/rebuild",
            "/v1/projections/{name}/pause",
            "/v1/projections/{name}/resume",
            "/v1/projections/{name}/state",
            "/v1/projections/{name}/state/{key}",
            "/v1/sagas/definitions",
            "/v1/sagas/definitions/{name}",
            "/v1/sagas",
            "/v1/sagas/{id}",
            "/v1/sagas/{id}/history",
            "/v1/sagas/{id}/cancel",
            "/v1/lineage/{event}",
            "/v1/cost",
            "/v1/budgets",
            "/v1/budgets/{name}",
            "/metrics",
        ] {
            assert!(
                paths.contains_key(route),
                "{route} missing from openapi.json"
            );
        }
    }

    #[test]
    fn every_error_code_is_documented_and_every_documented_code_exists() {
        let doc = include_str!("../../../docs/errors.md");
        for c in code::ALL {
            assert!(
                doc.contains(&format!("| `{c}` |")),
                "{c} is not in docs/errors.md"
            );
        }
        let documented = doc.lines().filter(|l| l.starts_with("| `")).count();
        assert_eq!(
            documented,
            code::ALL.len(),
            "docs/errors.md lists codes that do not exist"
        );
    }
}
