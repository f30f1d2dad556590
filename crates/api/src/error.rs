//! API errors as RFC 9457 problem details with a stable `code`, one per failure kind.
//! Every code is listed in `docs/errors.md`; a code is never reused for another meaning.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sluice_broker::Error as BrokerError;

/// The stable error codes. Each is documented in `docs/errors.md`.
pub mod code {
    pub const INVALID_JSON: &str = "invalid_json";
    pub const INVALID_REQUEST: &str = "invalid_request";
    pub const INVALID_NAME: &str = "invalid_name";
    pub const INVALID_CONFIG: &str = "invalid_config";
    pub const INVALID_MESSAGE: &str = "invalid_message";
    pub const OUT_OF_RANGE: &str = "out_of_range";
    pub const DEAD_LETTER_QUEUE_NOT_FOUND: &str = "dead_letter_queue_not_found";
    pub const DEAD_LETTER_QUEUE_INVALID: &str = "dead_letter_queue_invalid";
    pub const RECEIPT_INVALID: &str = "receipt_invalid";
    pub const RECEIPT_FOREIGN: &str = "receipt_foreign";
    pub const UNAUTHORIZED: &str = "unauthorized";
    pub const QUEUE_NOT_FOUND: &str = "queue_not_found";
    pub const NOT_FOUND: &str = "not_found";
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    pub const RECEIPT_STALE: &str = "receipt_stale";
    pub const FIFO_IMMUTABLE: &str = "fifo_immutable";
    pub const QUEUE_IN_USE: &str = "queue_in_use";
    pub const NO_DEAD_LETTER_QUEUE: &str = "no_dead_letter_queue";
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
    pub const MESSAGE_TOO_LARGE: &str = "message_too_large";
    pub const BATCH_TOO_LARGE: &str = "batch_too_large";
    pub const IN_FLIGHT_LIMIT: &str = "in_flight_limit";
    pub const TOO_MANY_LONG_POLLS: &str = "too_many_long_polls";
    pub const CORRUPT_DATA: &str = "corrupt_data";
    pub const STORAGE_FAILED: &str = "storage_failed";
    pub const SHUTTING_DOWN: &str = "shutting_down";
    pub const TOPIC_NOT_FOUND: &str = "topic_not_found";
    pub const SUBSCRIPTION_NOT_FOUND: &str = "subscription_not_found";
    pub const INVALID_FILTER: &str = "invalid_filter";
    pub const INVALID_EVENT: &str = "invalid_event";
    pub const EVENT_TOO_LARGE: &str = "event_too_large";
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "unsupported_media_type";
    pub const COMPACTION_IMMUTABLE: &str = "compaction_immutable";
    pub const NOT_COMPACTED: &str = "not_compacted";
    pub const KEY_NOT_FOUND: &str = "key_not_found";
    pub const POSITION_OUT_OF_RANGE: &str = "position_out_of_range";
    pub const TARGET_QUEUE_NOT_FOUND: &str = "target_queue_not_found";
    pub const NOT_PULL: &str = "subscription_not_pull";
    pub const KV_CONFLICT: &str = "kv_conflict";
    pub const FUNCTION_NOT_FOUND: &str = "function_not_found";
    pub const VERSION_NOT_FOUND: &str = "version_not_found";
    pub const ALIAS_NOT_FOUND: &str = "alias_not_found";
    pub const VERSION_IN_USE: &str = "version_in_use";
    pub const INVALID_COMPONENT: &str = "invalid_component";
    pub const FUNCTION_RUNTIME_FAILED: &str = "function_runtime_failed";
    pub const TRIGGER_NOT_FOUND: &str = "trigger_not_found";
    pub const FUNCTION_IN_USE: &str = "function_in_use";
    pub const INVALID_STREAM: &str = "invalid_stream";
    pub const INVALID_EXPECTED_VERSION: &str = "invalid_expected_version";
    pub const STREAM_NOT_FOUND: &str = "stream_not_found";
    pub const STREAM_DELETED: &str = "stream_deleted";
    pub const WRONG_EXPECTED_VERSION: &str = "wrong_expected_version";
    pub const EVENT_ID_CONFLICT: &str = "event_id_conflict";
    pub const INVALID_SNAPSHOT: &str = "invalid_snapshot";
    pub const SNAPSHOT_STALE: &str = "snapshot_stale";
    pub const SNAPSHOT_NOT_FOUND: &str = "snapshot_not_found";
    pub const PROJECTION_NOT_FOUND: &str = "projection_not_found";
    pub const INVALID_SAGA: &str = "invalid_saga";
    pub const SAGA_DEFINITION_NOT_FOUND: &str = "saga_definition_not_found";
    pub const SAGA_NOT_FOUND: &str = "saga_not_found";
    pub const LINEAGE_NOT_FOUND: &str = "lineage_not_found";
    pub const INVALID_BUDGET: &str = "invalid_budget";
    pub const BUDGET_NOT_FOUND: &str = "budget_not_found";

    /// Every code, for the documentation check.
    pub const ALL: &[&str] = &[
        INVALID_JSON,
        INVALID_REQUEST,
        INVALID_NAME,
        INVALID_CONFIG,
        INVALID_MESSAGE,
        OUT_OF_RANGE,
        DEAD_LETTER_QUEUE_NOT_FOUND,
        DEAD_LETTER_QUEUE_INVALID,
        RECEIPT_INVALID,
        RECEIPT_FOREIGN,
        UNAUTHORIZED,
        QUEUE_NOT_FOUND,
        NOT_FOUND,
        METHOD_NOT_ALLOWED,
        RECEIPT_STALE,
        FIFO_IMMUTABLE,
        QUEUE_IN_USE,
        NO_DEAD_LETTER_QUEUE,
        PAYLOAD_TOO_LARGE,
        MESSAGE_TOO_LARGE,
        BATCH_TOO_LARGE,
        IN_FLIGHT_LIMIT,
        TOO_MANY_LONG_POLLS,
        CORRUPT_DATA,
        STORAGE_FAILED,
        SHUTTING_DOWN,
        TOPIC_NOT_FOUND,
        SUBSCRIPTION_NOT_FOUND,
        INVALID_FILTER,
        INVALID_EVENT,
        EVENT_TOO_LARGE,
        UNSUPPORTED_MEDIA_TYPE,
        COMPACTION_IMMUTABLE,
        NOT_COMPACTED,
        KEY_NOT_FOUND,
        POSITION_OUT_OF_RANGE,
        TARGET_QUEUE_NOT_FOUND,
        NOT_PULL,
        KV_CONFLICT,
        FUNCTION_NOT_FOUND,
        VERSION_NOT_FOUND,
        ALIAS_NOT_FOUND,
        VERSION_IN_USE,
        INVALID_COMPONENT,
        FUNCTION_RUNTIME_FAILED,
        TRIGGER_NOT_FOUND,
        FUNCTION_IN_USE,
        INVALID_STREAM,
        INVALID_EXPECTED_VERSION,
        STREAM_NOT_FOUND,
        STREAM_DELETED,
        WRONG_EXPECTED_VERSION,
        EVENT_ID_CONFLICT,
        INVALID_SNAPSHOT,
        SNAPSHOT_STALE,
        SNAPSHOT_NOT_FOUND,
        PROJECTION_NOT_FOUND,
        INVALID_SAGA,
        SAGA_DEFINITION_NOT_FOUND,
        SAGA_NOT_FOUND,
        LINEAGE_NOT_FOUND,
        INVALID_BUDGET,
        BUDGET_NOT_FOUND,
    ];
}

/// An error answered to a client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    /// Extra members of the problem object.
    pub extra: Option<Value>,
    /// Seconds, for 429 and 503.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            extra: None,
            retry_after: None,
        }
    }

    pub fn with_extra(mut self, extra: Value) -> Self {
        self.extra = Some(extra);
        self
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        use BrokerError::*;
        let detail = e.to_string();
        let (status, code) = match &e {
            QueueNotFound(_) => (StatusCode::NOT_FOUND, code::QUEUE_NOT_FOUND),
            InvalidConfig(_) => (StatusCode::BAD_REQUEST, code::INVALID_CONFIG),
            FifoImmutable => (StatusCode::CONFLICT, code::FIFO_IMMUTABLE),
            DeadLetterQueueNotFound(_) => {
                (StatusCode::BAD_REQUEST, code::DEAD_LETTER_QUEUE_NOT_FOUND)
            }
            DeadLetterQueueInvalid(_) => (StatusCode::BAD_REQUEST, code::DEAD_LETTER_QUEUE_INVALID),
            QueueInUse { .. } => (StatusCode::CONFLICT, code::QUEUE_IN_USE),
            NoDeadLetterQueue(_) => (StatusCode::CONFLICT, code::NO_DEAD_LETTER_QUEUE),
            InvalidMessage(_) => (StatusCode::BAD_REQUEST, code::INVALID_MESSAGE),
            MessageTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, code::MESSAGE_TOO_LARGE),
            BatchTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, code::BATCH_TOO_LARGE),
            OutOfRange { .. } => (StatusCode::BAD_REQUEST, code::OUT_OF_RANGE),
            InFlightLimit(_) => (StatusCode::TOO_MANY_REQUESTS, code::IN_FLIGHT_LIMIT),
            ReceiptInvalid => (StatusCode::BAD_REQUEST, code::RECEIPT_INVALID),
            ReceiptForeign => (StatusCode::BAD_REQUEST, code::RECEIPT_FOREIGN),
            ReceiptStale => (StatusCode::CONFLICT, code::RECEIPT_STALE),
            Store(_) => (StatusCode::SERVICE_UNAVAILABLE, code::STORAGE_FAILED),
            Corrupt(_) => (StatusCode::INTERNAL_SERVER_ERROR, code::CORRUPT_DATA),
            ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, code::SHUTTING_DOWN),
            TopicNotFound(_) => (StatusCode::NOT_FOUND, code::TOPIC_NOT_FOUND),
            SubscriptionNotFound { .. } => (StatusCode::NOT_FOUND, code::SUBSCRIPTION_NOT_FOUND),
            InvalidFilter(_) => (StatusCode::BAD_REQUEST, code::INVALID_FILTER),
            InvalidEvent(_) => (StatusCode::BAD_REQUEST, code::INVALID_EVENT),
            EventTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, code::EVENT_TOO_LARGE),
            CompactionImmutable => (StatusCode::CONFLICT, code::COMPACTION_IMMUTABLE),
            NotCompacted(_) => (StatusCode::CONFLICT, code::NOT_COMPACTED),
            KeyNotFound { .. } => (StatusCode::NOT_FOUND, code::KEY_NOT_FOUND),
            PositionOutOfRange(_) => (StatusCode::BAD_REQUEST, code::POSITION_OUT_OF_RANGE),
            TargetQueueNotFound(_) => (StatusCode::BAD_REQUEST, code::TARGET_QUEUE_NOT_FOUND),
            NotPull { .. } => (StatusCode::CONFLICT, code::NOT_PULL),
            KvConflict(_) => (StatusCode::CONFLICT, code::KV_CONFLICT),
            InvalidStream(_) => (StatusCode::BAD_REQUEST, code::INVALID_STREAM),
            StreamNotFound(_) => (StatusCode::NOT_FOUND, code::STREAM_NOT_FOUND),
            StreamDeleted(_) => (StatusCode::GONE, code::STREAM_DELETED),
            WrongExpectedVersion { .. } => (StatusCode::CONFLICT, code::WRONG_EXPECTED_VERSION),
            EventIdConflict { .. } => (StatusCode::CONFLICT, code::EVENT_ID_CONFLICT),
            InvalidSnapshot(_) => (StatusCode::BAD_REQUEST, code::INVALID_SNAPSHOT),
            SnapshotStale { .. } => (StatusCode::CONFLICT, code::SNAPSHOT_STALE),
        };
        let mut err = ApiError::new(status, code, detail);
        match e {
            InvalidConfig(c) => err = err.with_extra(json!({ "field": c.field })),
            OutOfRange { field, .. } => err = err.with_extra(json!({ "field": field })),
            QueueInUse { used_by, .. } => err = err.with_extra(json!({ "used_by": used_by })),
            InvalidFilter(p) => {
                err = err.with_extra(json!({ "path": format!("filter{}", p.path) }))
            }
            InvalidEvent(e) => err = err.with_extra(json!({ "attribute": e.attribute })),
            InFlightLimit(_) => err = err.retry_after(1),
            WrongExpectedVersion {
                expected, current, ..
            } => {
                err = err
                    .with_extra(json!({ "expected_version": expected, "current_version": current }))
            }
            EventIdConflict { id, at, .. } => {
                err = err.with_extra(json!({ "id": id, "version": at }))
            }
            SnapshotStale { current, .. } => {
                err = err.with_extra(json!({ "current_version": current }))
            }
            Store(_) | ShuttingDown => err = err.retry_after(5),
            _ => {}
        }
        if status.is_server_error() {
            tracing::error!(code, detail = %err.detail, "request failed");
        }
        err
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": format!("https://sluice.dev/errors/{}", self.code),
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "code": self.code,
            "detail": self.detail,
        });
        if let (Some(Value::Object(extra)), Value::Object(map)) = (self.extra, &mut body) {
            map.extend(extra);
        }
        let mut resp = (self.status, body.to_string()).into_response();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}
