//! `/metrics` against a real server: after a known sequence of operations every counter
//! and gauge equals what was done, exactly; and every metric name is documented.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_testkit::TestServer;

/// The samples of `/metrics`, by `name{labels}` as written.
async fn scrape(s: &TestServer) -> HashMap<String, f64> {
    let (status, body) = s.call("GET", "/metrics", None).await;
    assert_eq!(status, 200);
    let text = body.as_str().expect("text exposition").to_owned();
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (key, value) = line.rsplit_once(' ').expect("sample line");
        let v: f64 = value.parse().expect("sample value");
        assert!(out.insert(key.to_owned(), v).is_none(), "duplicate {key}");
    }
    out
}

fn get(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no sample {key} in {m:#?}"))
}

async fn receive(s: &TestServer, path: &str, max: usize) -> Vec<String> {
    let v = s.ok("POST", path, Some(json!({"max": max}))).await;
    v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["receipt"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn metric_values_equal_the_operations_performed() {
    let s = TestServer::start(env!("CARGO_BIN_EXE_sluice"), &[]);

    // A queue: 10 sent (one a duplicate id), 6 received, 4 acked, 2 nacked and received
    // again, then nacked past max attempts into the dead-letter queue.
    s.ok("PUT", "/v1/queues/jobs-dlq", Some(json!({}))).await;
    s.ok(
        "PUT",
        "/v1/queues/jobs",
        Some(json!({"max_attempts": 2, "dead_letter_queue": "jobs-dlq"})),
    )
    .await;
    let mut messages: Vec<Value> = (0..10).map(|i| json!({"body": {"n": i}})).collect();
    messages.push(json!({"body": {"n": 0}, "dedup_id": "dup"}));
    messages[0] = json!({"body": {"n": 0}, "dedup_id": "dup"});
    s.ok(
        "POST",
        "/v1/queues/jobs/messages",
        Some(json!({ "messages": messages })),
    )
    .await;
    let first = receive(&s, "/v1/queues/jobs/receive", 6).await;
    assert_eq!(first.len(), 6);
    s.ok(
        "POST",
        "/v1/queues/jobs/ack",
        Some(json!({"receipts": &first[..4]})),
    )
    .await;
    s.ok(
        "POST",
        "/v1/queues/jobs/nack",
        Some(json!({"receipts": &first[4..], "delay": "0s"})),
    )
    .await;
    let second = receive(&s, "/v1/queues/jobs/receive", 10).await;
    assert_eq!(second.len(), 6, "4 never delivered and 2 released");

    let m = scrape(&s).await;
    let q = |name: &str| get(&m, &format!("sluice_queue_{name}{{queue=\"jobs\"}}"));
    assert_eq!(q("sent_messages_total"), 10.0);
    assert_eq!(q("dedup_hits_total"), 1.0);
    assert_eq!(q("received_messages_total"), 12.0);
    assert_eq!(q("redelivered_messages_total"), 2.0);
    assert_eq!(q("acked_messages_total"), 4.0);
    assert_eq!(q("nacked_messages_total"), 2.0);
    assert_eq!(q("dead_letter_moves_total"), 0.0);
    let state = |st: &str| {
        get(
            &m,
            &format!("sluice_queue_messages{{queue=\"jobs\",state=\"{st}\"}}"),
        )
    };
    assert_eq!(state("leased"), 6.0);
    assert_eq!(state("visible"), 0.0);
    assert_eq!(state("delayed"), 0.0);

    // All six fail: the two second attempts reach max attempts and move to the DLQ.
    let nack_all = s
        .ok(
            "POST",
            "/v1/queues/jobs/nack",
            Some(json!({"receipts": second, "delay": "0s"})),
        )
        .await;
    assert!(nack_all["failed"].as_array().is_none_or(|f| f.is_empty()));
    let m = scrape(&s).await;
    let q = |name: &str| get(&m, &format!("sluice_queue_{name}{{queue=\"jobs\"}}"));
    assert_eq!(q("nacked_messages_total"), 8.0);
    assert_eq!(q("dead_letter_moves_total"), 2.0);
    assert_eq!(q("dead_lettered_messages"), 2.0);
    assert_eq!(
        get(
            &m,
            "sluice_queue_messages{queue=\"jobs\",state=\"visible\"}"
        ),
        4.0
    );
    assert_eq!(
        get(
            &m,
            "sluice_queue_messages{queue=\"jobs-dlq\",state=\"visible\"}"
        ),
        2.0
    );
    // Sent several round trips ago, so older than zero.
    assert!(q("oldest_message_age_seconds") > 0.0);

    // A topic with two subscriptions: 5 events published, one subscription takes 3 and
    // acks them.
    s.ok("PUT", "/v1/topics/orders", Some(json!({}))).await;
    for sub in ["audit", "mail"] {
        s.ok(
            "PUT",
            &format!("/v1/topics/orders/subscriptions/{sub}"),
            Some(json!({})),
        )
        .await;
    }
    for i in 0..5 {
        let event = json!({"specversion": "1.0", "source": "/t", "type": "order.placed", "id": format!("o-{i}"), "data": {"i": i}});
        s.publish_event("orders", &event).await;
    }
    let got = receive(&s, "/v1/topics/orders/subscriptions/audit/receive", 3).await;
    assert_eq!(got.len(), 3);
    s.ok(
        "POST",
        "/v1/topics/orders/subscriptions/audit/ack",
        Some(json!({"receipts": got})),
    )
    .await;
    let m = scrape(&s).await;
    let t = |name: &str| get(&m, &format!("sluice_topic_{name}{{topic=\"orders\"}}"));
    assert_eq!(t("published_events_total"), 5.0);
    assert_eq!(t("retained_events"), 5.0);
    let info = s.ok("GET", "/v1/topics/orders", None).await;
    assert_eq!(
        t("retained_bytes"),
        info["stats"]["bytes"].as_f64().unwrap()
    );
    assert_eq!(t("published_bytes_total"), t("retained_bytes"));
    let sub = |name: &str, s: &str| {
        get(
            &m,
            &format!("sluice_subscription_{name}{{topic=\"orders\",subscription=\"{s}\"}}"),
        )
    };
    assert_eq!(sub("received_messages_total", "audit"), 3.0);
    assert_eq!(sub("acked_messages_total", "audit"), 3.0);
    assert_eq!(sub("received_messages_total", "mail"), 0.0);
    assert_eq!(
        get(
            &m,
            "sluice_subscription_backlog_events{topic=\"orders\",subscription=\"mail\"}"
        ),
        5.0
    );
    assert_eq!(
        get(
            &m,
            "sluice_subscription_backlog_events{topic=\"orders\",subscription=\"audit\"}"
        ),
        2.0
    );

    // Functions: three direct invocations that succeed and two that fail; a trigger
    // of batch size 1 on a queue of 5 messages.
    for (name, wasm) in [
        ("hello", sluice_guests::ok()),
        ("broken", sluice_guests::error()),
    ] {
        let (status, v) = s
            .call_with(
                "POST",
                &format!("/v1/functions/{name}/versions"),
                &[("content-type", "application/wasm")],
                wasm,
            )
            .await;
        assert_eq!(status, 201, "{v}");
    }
    for _ in 0..3 {
        s.invoke("hello", json!(1)).await;
    }
    for _ in 0..2 {
        let v = s.invoke("broken", json!(1)).await;
        assert_eq!(v["outcome"], "failed", "{v}");
    }
    s.ok("PUT", "/v1/queues/work", Some(json!({}))).await;
    let work: Vec<Value> = (0..5).map(|i| json!({"body": i})).collect();
    s.ok(
        "POST",
        "/v1/queues/work/messages",
        Some(json!({ "messages": work })),
    )
    .await;
    s.ok(
        "PUT",
        "/v1/triggers/work-hello",
        Some(json!({"function": "hello", "source": {"queue": "work"}, "batch_size": 1})),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let m = loop {
        let m = scrape(&s).await;
        if m.get("sluice_queue_acked_messages_total{queue=\"work\"}") == Some(&5.0) {
            break m;
        }
        assert!(Instant::now() < deadline, "the trigger did not drain work");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let f = |name: &str, f: &str| get(&m, &format!("sluice_function_{name}{{function=\"{f}\"}}"));
    assert_eq!(f("invocations_total", "hello"), 8.0);
    assert_eq!(f("errors_total", "hello"), 0.0);
    assert_eq!(f("invocations_total", "broken"), 2.0);
    assert_eq!(f("errors_total", "broken"), 2.0);
    assert_eq!(f("in_flight_invocations", "hello"), 0.0);
    assert_eq!(f("duration_seconds_count", "hello"), 8.0);
    // Each version is loaded once: its first invocation is the cold one.
    assert_eq!(f("cold_starts_total", "hello"), 1.0);
    assert_eq!(f("cold_start_duration_seconds_count", "hello"), 1.0);
    let tr = |name: &str| {
        get(
            &m,
            &format!("sluice_trigger_{name}{{trigger=\"work-hello\",function=\"hello\"}}"),
        )
    };
    assert_eq!(tr("invocations_total"), 5.0);
    assert_eq!(tr("events_total"), 5.0);
    assert_eq!(tr("errors_total"), 0.0);
    assert_eq!(tr("batch_size_count"), 5.0);
    assert_eq!(tr("batch_size_sum"), 5.0);
    assert_eq!(tr("paused"), 0.0);
    assert_eq!(
        get(
            &m,
            "sluice_trigger_batch_size_bucket{trigger=\"work-hello\",function=\"hello\",le=\"1\"}"
        ),
        5.0
    );

    // The event store: two appends (3 events), one retried, one conflicting.
    let append = |expected: Value, ids: &[&str]| {
        let events: Vec<Value> = ids
            .iter()
            .map(|id| json!({"specversion": "1.0", "source": "/t", "type": "placed", "id": id}))
            .collect();
        json!({"expected_version": expected, "events": events})
    };
    s.ok(
        "POST",
        "/v1/streams/order-1/events",
        Some(append(json!("no_stream"), &["a", "b"])),
    )
    .await;
    s.ok(
        "POST",
        "/v1/streams/order-1/events",
        Some(append(json!(1), &["c"])),
    )
    .await;
    s.ok(
        "POST",
        "/v1/streams/order-1/events",
        Some(append(json!(1), &["c"])),
    )
    .await;
    let (status, _) = s
        .call(
            "POST",
            "/v1/streams/order-1/events",
            Some(append(json!(0), &["d"])),
        )
        .await;
    assert_eq!(status, 409);
    let m = scrape(&s).await;
    assert_eq!(get(&m, "sluice_eventstore_appends_total"), 2.0);
    assert_eq!(get(&m, "sluice_eventstore_appended_events_total"), 3.0);
    assert_eq!(get(&m, "sluice_eventstore_idempotent_appends_total"), 1.0);
    assert_eq!(get(&m, "sluice_eventstore_conflicts_total"), 1.0);
    assert_eq!(
        get(&m, "sluice_topic_published_events_total{topic=\"$all\"}"),
        3.0
    );

    // The store and the process.
    let batches = get(&m, "sluice_store_batches_total");
    let syncs = get(&m, "sluice_store_syncs_total");
    assert!(batches >= syncs && syncs > 0.0, "{batches} {syncs}");
    assert_eq!(get(&m, "sluice_store_sync_duration_seconds_count"), syncs);
    // Each write is timed before it is counted, and the count is read first.
    assert!(get(&m, "sluice_store_write_duration_seconds_count") >= batches);
    assert!(get(&m, "sluice_store_commit_group_batches_sum") <= batches);
    assert!(get(&m, "sluice_process_resident_memory_bytes") > 1e6);
    assert!(get(&m, "sluice_http_connections") >= 1.0);
    assert!(get(&m, "sluice_http_connections_accepted_total") >= 1.0);
}

#[tokio::test]
async fn every_metric_is_documented() {
    let s = TestServer::start(env!("CARGO_BIN_EXE_sluice"), &[]);
    let (_, body) = s.call("GET", "/metrics", None).await;
    let docs = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/metrics.md"
    ))
    .unwrap();
    let mut families = 0;
    for line in body.as_str().unwrap().lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap();
            families += 1;
            assert!(
                docs.contains(&format!("`{name}`")),
                "{name} is not in docs/metrics.md"
            );
            assert!(name.starts_with("sluice_"), "{name}");
        }
    }
    assert!(families > 40, "{families} families");
}
