//! Bad input gets a 4xx problem+json with a stable code, and the server keeps serving.

use serde_json::{Value, json};
use sluice_testkit::TestServer;

/// (method, path, body, expected status, expected code)
type Case = (
    &'static str,
    &'static str,
    Option<Vec<u8>>,
    u16,
    &'static str,
);

#[tokio::test]
async fn every_kind_of_bad_input_gets_its_code() {
    let s = TestServer::start(
        env!("CARGO_BIN_EXE_sluice"),
        &["--max-body-size", "2000000"],
    );
    s.call(
        "PUT",
        "/v1/queues/q",
        Some(json!({"max_message_size": 1024})),
    )
    .await;
    s.call(
        "POST",
        "/v1/queues/q/messages",
        Some(json!({"messages": [{"body": 1}]})),
    )
    .await;
    let (_, got) = s.call("POST", "/v1/queues/q/receive", None).await;
    let receipt = got["messages"][0]["receipt"].clone();
    s.call(
        "POST",
        "/v1/queues/q/ack",
        Some(json!({"receipts": [receipt]})),
    )
    .await;
    s.call("PUT", "/v1/queues/other", None).await;
    s.call(
        "POST",
        "/v1/queues/other/messages",
        Some(json!({"messages": [{"body": 1}]})),
    )
    .await;
    let (_, got) = s.call("POST", "/v1/queues/other/receive", None).await;
    let foreign = got["messages"][0]["receipt"].clone();

    let big = "x".repeat(2_000);
    let many: Vec<Value> = (0..1_001).map(|i| json!({"body": i})).collect();
    let huge = vec![b' '; 2_100_000];
    // (method, path, body, expected status, expected code)
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/v1/queues/q/messages",
            Some(b"{not json".to_vec()),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/v1/queues/q/messages",
            Some(b"{\"messages\": 5}".to_vec()),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/queues/q/messages",
            Some(b"{\"messages\": []}".to_vec()),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/queues/q/messages",
            Some(b"{\"messages\": [{}]}".to_vec()),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/queues/nope/messages",
            Some(br#"{"messages":[{"body":1}]}"#.to_vec()),
            404,
            "queue_not_found",
        ),
        ("GET", "/v1/queues/nope", None, 404, "queue_not_found"),
        ("PUT", "/v1/queues/bad%20name", None, 400, "invalid_name"),
        ("PUT", "/v1/queues/-x", None, 400, "invalid_name"),
        (
            "PUT",
            "/v1/queues/q2",
            Some(br#"{"lease_timeout":"0s"}"#.to_vec()),
            400,
            "invalid_config",
        ),
        (
            "PUT",
            "/v1/queues/q2",
            Some(br#"{"lease_timeout":30}"#.to_vec()),
            400,
            "invalid_request",
        ),
        (
            "PUT",
            "/v1/queues/q2",
            Some(br#"{"lease_timeout":"30 parsecs"}"#.to_vec()),
            400,
            "invalid_request",
        ),
        (
            "PUT",
            "/v1/queues/q2",
            Some(br#"{"colour":"red"}"#.to_vec()),
            400,
            "invalid_request",
        ),
        (
            "PUT",
            "/v1/queues/q2",
            Some(br#"{"max_attempts":3}"#.to_vec()),
            400,
            "invalid_config",
        ),
        (
            "PUT",
            "/v1/queues/q2",
            Some(br#"{"max_attempts":3,"dead_letter_queue":"missing"}"#.to_vec()),
            400,
            "dead_letter_queue_not_found",
        ),
        (
            "PUT",
            "/v1/queues/q2",
            Some(br#"{"dead_letter_queue":"q2"}"#.to_vec()),
            400,
            "dead_letter_queue_invalid",
        ),
        (
            "POST",
            "/v1/queues/q/messages",
            Some(
                json!({"messages": [{"body": big}]})
                    .to_string()
                    .into_bytes(),
            ),
            413,
            "message_too_large",
        ),
        (
            "POST",
            "/v1/queues/q/messages",
            Some(json!({"messages": many}).to_string().into_bytes()),
            413,
            "batch_too_large",
        ),
        (
            "POST",
            "/v1/queues/q/messages",
            Some(huge),
            413,
            "payload_too_large",
        ),
        (
            "POST",
            "/v1/queues/q/messages",
            Some(br#"{"messages":[{"body":1,"delay":"8d"}]}"#.to_vec()),
            400,
            "out_of_range",
        ),
        (
            "POST",
            "/v1/queues/q/messages",
            Some(br#"{"messages":[{"body":1,"group":""}]}"#.to_vec()),
            400,
            "invalid_message",
        ),
        (
            "POST",
            "/v1/queues/q/receive",
            Some(br#"{"wait":"21s"}"#.to_vec()),
            400,
            "out_of_range",
        ),
        (
            "POST",
            "/v1/queues/q/receive",
            Some(br#"{"max":0}"#.to_vec()),
            400,
            "invalid_message",
        ),
        (
            "POST",
            "/v1/queues/q/receive",
            Some(br#"{"lease_timeout":"13h"}"#.to_vec()),
            400,
            "out_of_range",
        ),
        (
            "POST",
            "/v1/queues/q/ack",
            Some(br#"{"receipts":["garbage"]}"#.to_vec()),
            400,
            "receipt_invalid",
        ),
        (
            "POST",
            "/v1/queues/q/ack",
            Some(json!({"receipts": [receipt]}).to_string().into_bytes()),
            409,
            "receipt_stale",
        ),
        (
            "POST",
            "/v1/queues/q/ack",
            Some(json!({"receipts": [foreign]}).to_string().into_bytes()),
            400,
            "receipt_foreign",
        ),
        (
            "POST",
            "/v1/queues/q/ack",
            Some(br#"{"receipts":[]}"#.to_vec()),
            400,
            "invalid_message",
        ),
        (
            "POST",
            "/v1/queues/q/extend",
            Some(br#"{"receipts":["x"],"lease_timeout":"1ms"}"#.to_vec()),
            400,
            "out_of_range",
        ),
        (
            "POST",
            "/v1/queues/q/redrive",
            None,
            409,
            "no_dead_letter_queue",
        ),
        (
            "POST",
            "/v1/queues/q/redrive",
            Some(br#"{"max":0}"#.to_vec()),
            400,
            "out_of_range",
        ),
        ("GET", "/v1/nothing-here", None, 404, "not_found"),
        ("PATCH", "/v1/queues/q", None, 405, "method_not_allowed"),
    ];
    for (method, path, body, status, code) in cases {
        let (got_status, got) = match body {
            Some(b) => s.call_raw(method, path, b).await,
            None => s.call(method, path, None).await,
        };
        assert_eq!(
            (got_status, got["code"].as_str()),
            (status, Some(code)),
            "{method} {path}: {got}"
        );
        assert_eq!(got["status"], status);
    }
    // Still serving, and nothing was lost or added by the bad requests.
    assert_eq!(s.call("GET", "/readyz", None).await.0, 200);
    let (_, q) = s.call("GET", "/v1/queues/q", None).await;
    assert_eq!(q["stats"]["visible"], 0);
    assert_eq!(q["stats"]["sent_total"], 1);
}

#[tokio::test]
async fn a_batch_with_some_bad_entries_reports_them_per_entry() {
    let s = TestServer::start(env!("CARGO_BIN_EXE_sluice"), &[]);
    s.call(
        "PUT",
        "/v1/queues/q",
        Some(json!({"max_message_size": 100})),
    )
    .await;
    let msgs = json!({"messages": [{"body": 1}, {"body": "y".repeat(200)}, {"body": 3}]});
    let (status, out) = s.call("POST", "/v1/queues/q/messages", Some(msgs)).await;
    assert_eq!(status, 200);
    assert!(out["ids"][0].is_string() && out["ids"][1].is_null() && out["ids"][2].is_string());
    assert_eq!(out["failed"][0]["index"], 1);
    assert_eq!(out["failed"][0]["code"], "message_too_large");
}

#[tokio::test]
async fn auth_token_is_required_when_configured_and_public_listen_needs_one() {
    let token = "0123456789abcdef-secret";
    let s = TestServer::start(env!("CARGO_BIN_EXE_sluice"), &["--auth-token", token]);
    let (status, p) = s.call("GET", "/v1/queues", None).await;
    assert_eq!((status, p["code"].as_str()), (401, Some("unauthorized")));
    assert_eq!(s.call("GET", "/healthz", None).await.0, 200);
    let ok = reqwest::Client::new()
        .get(format!("{}/v1/queues", s.url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(s.data_dir().join("other"))
        .env_remove("SLUICE_AUTH_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("without an auth token"));
}
