//! Black-box tests of the HTTP API against a real `sluice serve` process.

use serde_json::{Value, json};
use sluice_testkit::TestServer;

fn server() -> TestServer {
    TestServer::start(env!("CARGO_BIN_EXE_sluice"), &[])
}

async fn create(s: &TestServer, name: &str, config: Value) {
    let (status, body) = s
        .call("PUT", &format!("/v1/queues/{name}"), Some(config))
        .await;
    assert!(status == 201 || status == 200, "{status} {body}");
}

#[tokio::test]
async fn queue_lifecycle_send_receive_ack_nack_extend() {
    let s = server();
    assert_eq!(s.call("GET", "/healthz", None).await.0, 200);
    assert_eq!(s.call("GET", "/readyz", None).await.0, 200);
    let (status, q) = s
        .call(
            "PUT",
            "/v1/queues/orders",
            Some(json!({"lease_timeout": "10s"})),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(q["lease_timeout"], "10s");
    assert_eq!(q["max_message_size"], 1 << 20);
    let (status, _) = s
        .call(
            "PUT",
            "/v1/queues/orders",
            Some(json!({"lease_timeout": "20s"})),
        )
        .await;
    assert_eq!(status, 200, "second PUT updates");

    let msgs = json!({"messages": [
        {"body": {"n": 1}, "attributes": {"kind": "test"}},
        {"body": "two"},
        {"body": [3], "delay": "1h"}
    ]});
    let (status, sent) = s
        .call("POST", "/v1/queues/orders/messages", Some(msgs))
        .await;
    assert_eq!(status, 200, "{sent}");
    assert_eq!(sent["ids"].as_array().unwrap().len(), 3);

    let (_, q) = s.call("GET", "/v1/queues/orders", None).await;
    assert_eq!(q["stats"]["visible"], 2);
    assert_eq!(q["stats"]["delayed"], 1);

    let (status, got) = s
        .call(
            "POST",
            "/v1/queues/orders/receive",
            Some(json!({"max": 10, "wait": "1s"})),
        )
        .await;
    assert_eq!(status, 200);
    let m = got["messages"].as_array().unwrap();
    assert_eq!(m.len(), 2);
    assert_eq!(m[0]["body"], json!({"n": 1}));
    assert_eq!(m[0]["attributes"], json!({"kind": "test"}));
    assert_eq!(m[0]["receive_count"], 1);
    assert!(m[0]["first_receive_ms"].as_u64().unwrap() > 0);
    assert_eq!(m[1]["body"], "two");

    let r0 = m[0]["receipt"].clone();
    let r1 = m[1]["receipt"].clone();
    let (status, ext) = s
        .call(
            "POST",
            "/v1/queues/orders/extend",
            Some(json!({"receipts": [r0], "lease_timeout": "60s"})),
        )
        .await;
    assert_eq!((status, &ext["extended"]), (200, &json!(1)));
    let (status, ack) = s
        .call(
            "POST",
            "/v1/queues/orders/ack",
            Some(json!({"receipts": [r0]})),
        )
        .await;
    assert_eq!((status, &ack["acked"]), (200, &json!(1)));
    let (status, nack) = s
        .call(
            "POST",
            "/v1/queues/orders/nack",
            Some(json!({"receipts": [r1], "delay": "0s"})),
        )
        .await;
    assert_eq!((status, &nack["nacked"]), (200, &json!(1)));
    // The nacked message is back at once, with a second attempt.
    let (_, got) = s
        .call(
            "POST",
            "/v1/queues/orders/receive",
            Some(json!({"max": 10})),
        )
        .await;
    assert_eq!(got["messages"][0]["body"], "two");
    assert_eq!(got["messages"][0]["receive_count"], 2);
    // The old receipt of the nacked message no longer acks anything.
    let (status, p) = s
        .call(
            "POST",
            "/v1/queues/orders/ack",
            Some(json!({"receipts": [r1]})),
        )
        .await;
    assert_eq!((status, p["code"].as_str()), (409, Some("receipt_stale")));

    let (_, purged) = s.call("POST", "/v1/queues/orders/purge", None).await;
    assert_eq!(purged["purged"], 2);
    let (_, list) = s.call("GET", "/v1/queues", None).await;
    assert_eq!(list["queues"][0]["name"], "orders");
    assert_eq!(s.call("DELETE", "/v1/queues/orders", None).await.0, 200);
    assert_eq!(s.call("GET", "/v1/queues/orders", None).await.0, 404);
}

#[tokio::test]
async fn a_receive_acks_the_receipts_it_carries_before_it_receives() {
    let s = server();
    create(&s, "q", json!({})).await;
    let msgs = json!({"messages": [{"body": "a"}, {"body": "b"}, {"body": "c"}]});
    assert_eq!(
        s.call("POST", "/v1/queues/q/messages", Some(msgs)).await.0,
        200
    );
    let receive = |body: Value| {
        let s = &s;
        async move { s.call("POST", "/v1/queues/q/receive", Some(body)).await }
    };
    let (_, got) = receive(json!({"max": 2})).await;
    let first: Vec<Value> = got["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["receipt"].clone())
        .collect();
    assert_eq!(first.len(), 2);

    // Acks for the last batch ride on the next receive.
    let (status, got) = receive(json!({"max": 2, "ack": first})).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["acked"], 2);
    assert!(got.get("failed").is_none(), "{got}");
    assert_eq!(got["messages"][0]["body"], "c");
    let rc = got["messages"][0]["receipt"].clone();
    let (_, q) = s.call("GET", "/v1/queues/q", None).await;
    assert_eq!(
        (q["stats"]["visible"].clone(), q["stats"]["leased"].clone()),
        (json!(0), json!(1))
    );

    // A receipt that no longer acks anything is reported beside the one that did, and the
    // receive still answers (here: nothing left, after its wait).
    let (status, got) = receive(json!({"wait": "100ms", "ack": [rc, first[0]]})).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["acked"], 1);
    assert_eq!(got["messages"], json!([]));
    let failed = got["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{got}");
    assert_eq!(failed[0]["receipt"], first[0]);
    assert!(failed[0]["code"].is_string(), "{got}");
    let (_, q) = s.call("GET", "/v1/queues/q", None).await;
    assert_eq!(q["stats"]["leased"], 0);

    // A receive whose own arguments are bad acks nothing.
    let msgs = json!({"messages": [{"body": "d"}]});
    s.call("POST", "/v1/queues/q/messages", Some(msgs)).await;
    let (_, got) = receive(json!({})).await;
    let rd = got["messages"][0]["receipt"].clone();
    let (status, p) = receive(json!({"max": 0, "ack": [rd]})).await;
    assert_eq!(
        (status, p["code"].as_str()),
        (400, Some("invalid_message")),
        "{p}"
    );
    let (status, ack) = s
        .call("POST", "/v1/queues/q/ack", Some(json!({"receipts": [rd]})))
        .await;
    assert_eq!((status, &ack["acked"]), (200, &json!(1)), "{ack}");
}

#[tokio::test]
async fn long_poll_returns_as_soon_as_a_message_arrives() {
    let s = server();
    create(&s, "q", json!({})).await;
    let url = s.url().to_owned();
    let sender = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        reqwest::Client::new()
            .post(format!("{url}/v1/queues/q/messages"))
            .json(&json!({"messages": [{"body": "late"}]}))
            .send()
            .await
            .unwrap();
    });
    let (status, got) = s
        .call("POST", "/v1/queues/q/receive", Some(json!({"wait": "10s"})))
        .await;
    assert_eq!(status, 200);
    assert_eq!(got["messages"][0]["body"], "late");
    sender.await.unwrap();
    // An empty queue answers an empty list after the wait.
    let (_, got) = s
        .call(
            "POST",
            "/v1/queues/q/receive",
            Some(json!({"wait": "200ms"})),
        )
        .await;
    assert_eq!(got["messages"], json!([]));
}

#[tokio::test]
async fn dead_letter_and_redrive_through_the_api() {
    let s = server();
    create(&s, "dlq", json!({})).await;
    create(
        &s,
        "work",
        json!({"max_attempts": 1, "dead_letter_queue": "dlq"}),
    )
    .await;
    s.call(
        "POST",
        "/v1/queues/work/messages",
        Some(json!({"messages": [{"body": "x"}]})),
    )
    .await;
    let (_, got) = s.call("POST", "/v1/queues/work/receive", None).await;
    let r = got["messages"][0]["receipt"].clone();
    s.call(
        "POST",
        "/v1/queues/work/nack",
        Some(json!({"receipts": [r], "reason": "bad input"})),
    )
    .await;
    let (_, q) = s.call("GET", "/v1/queues/work", None).await;
    assert_eq!(q["stats"]["dead_lettered"], 1);
    let (status, p) = s.call("DELETE", "/v1/queues/dlq", None).await;
    assert_eq!((status, p["code"].as_str()), (409, Some("queue_in_use")));
    let (_, dead) = s.call("POST", "/v1/queues/dlq/receive", None).await;
    let d = &dead["messages"][0];
    assert_eq!(d["dead_letter"]["reason"], "error");
    assert_eq!(d["dead_letter"]["error"], "bad input");
    assert_eq!(d["dead_letter"]["source_queue"], "work");
    s.call(
        "POST",
        "/v1/queues/dlq/nack",
        Some(json!({"receipts": [d["receipt"]], "delay": "0s"})),
    )
    .await;
    let (status, r) = s
        .call("POST", "/v1/queues/work/redrive", Some(json!({"max": 10})))
        .await;
    assert_eq!(
        (status, &r["moved"], &r["remaining"]),
        (200, &json!(1), &json!(0))
    );
    let (_, back) = s.call("POST", "/v1/queues/work/receive", None).await;
    assert_eq!(back["messages"][0]["body"], "x");
}

#[tokio::test]
async fn fifo_and_dedup_through_the_api() {
    let s = server();
    create(&s, "f", json!({"fifo": true, "dedup_window": "1m"})).await;
    let msgs = json!({"messages": [
        {"body": 1, "group": "a", "dedup_id": "one"},
        {"body": 2, "group": "a"},
        {"body": 3, "group": "b"},
        {"body": 1, "group": "a", "dedup_id": "one"}
    ]});
    let (_, sent) = s.call("POST", "/v1/queues/f/messages", Some(msgs)).await;
    assert_eq!(sent["duplicates"], json!([3]));
    assert_eq!(sent["ids"][3], sent["ids"][0]);
    let (_, got) = s
        .call("POST", "/v1/queues/f/receive", Some(json!({"max": 10})))
        .await;
    let bodies: Vec<&Value> = got["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["body"])
        .collect();
    assert_eq!(bodies, [&json!(1), &json!(3)]);
    let (status, p) = s
        .call("PUT", "/v1/queues/f", Some(json!({"fifo": false})))
        .await;
    assert_eq!((status, p["code"].as_str()), (409, Some("fifo_immutable")));
}

#[tokio::test]
async fn graceful_shutdown_answers_long_polls_and_keeps_data() {
    let mut s = server();
    create(&s, "q", json!({})).await;
    s.call(
        "POST",
        "/v1/queues/q/messages",
        Some(json!({"messages": [{"body": "kept"}]})),
    )
    .await;
    assert!(s.terminate(), "SIGTERM exits cleanly");
    s.crash_and_restart();
    let (_, got) = s.call("POST", "/v1/queues/q/receive", None).await;
    assert_eq!(got["messages"][0]["body"], "kept");
}
