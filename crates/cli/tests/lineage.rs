//! Event context across async hops against a real server: what produced events inherit
//! (trace, correlation, causation, hop count), and loops stopped at the hop limit.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_testkit::TestServer;

async fn ok(s: &TestServer, method: &str, path: &str, body: Option<Value>) -> Value {
    let (status, v) = s.call(method, path, body).await;
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {v}"
    );
    v
}

async fn deploy(s: &TestServer, name: &str, wasm: Vec<u8>) {
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

async fn publish(s: &TestServer, topic: &str, event: Value) {
    let (status, v) = s
        .call_with(
            "POST",
            &format!("/v1/topics/{topic}/events"),
            &[("content-type", "application/cloudevents+json")],
            serde_json::to_vec(&event).unwrap(),
        )
        .await;
    assert_eq!(status, 200, "{v}");
}

async fn events(s: &TestServer, topic: &str) -> Vec<Value> {
    let v = ok(
        s,
        "GET",
        &format!("/v1/topics/{topic}/events?limit=1000"),
        None,
    )
    .await;
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].clone())
        .collect()
}

async fn wait_for<F: std::future::Future<Output = bool>>(what: &str, mut done: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn trace_id(tp: &Value) -> &str {
    &tp.as_str().expect("traceparent")[3..35]
}

#[tokio::test]
async fn a_function_that_republishes_its_input_is_stopped_at_the_hop_limit() {
    let s = TestServer::start(env!("CARGO_BIN_EXE_sluice"), &["--max-hops", "5"]);
    // `effects` publishes an event to topic `t` (and sends to `q`) on every invocation:
    // triggered by a subscription of `t`, it feeds itself.
    ok(&s, "PUT", "/v1/queues/q", Some(json!({}))).await;
    ok(&s, "PUT", "/v1/queues/loops", Some(json!({}))).await;
    ok(&s, "PUT", "/v1/topics/t", Some(json!({}))).await;
    ok(
        &s,
        "PUT",
        "/v1/topics/t/subscriptions/s",
        Some(json!({"dead_letter_queue": "loops"})),
    )
    .await;
    deploy(&s, "echo", sluice_guests::effects()).await;
    ok(
        &s,
        "PUT",
        "/v1/triggers/echo-t",
        Some(json!({"function": "echo", "source": {"subscription": {"topic": "t", "subscription": "s"}}})),
    )
    .await;
    publish(
        &s,
        "t",
        json!({"specversion": "1.0", "source": "/test", "type": "seed", "id": "root"}),
    )
    .await;

    wait_for("the loop to be dead-lettered", || async {
        let v = ok(&s, "GET", "/v1/queues/loops", None).await;
        v["stats"]["visible"] == 1
    })
    .await;
    // Hops 0..=4 were handled (5 invocations); the event at hop 5 was stopped.
    let all = events(&s, "t").await;
    assert_eq!(all.len(), 6, "{all:#?}");
    let root_trace = trace_id(&all[0]["traceparent"]).to_owned();
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e["hopcount"], i, "{e}");
        assert_eq!(e["correlationid"], "root", "{e}");
        assert_eq!(trace_id(&e["traceparent"]), root_trace, "one trace: {e}");
        if i > 0 {
            assert_eq!(e["causationid"], all[i - 1]["id"], "{e}");
            assert!(e["invocationid"].is_string(), "{e}");
        }
    }
    let dead = ok(
        &s,
        "POST",
        "/v1/queues/loops/receive",
        Some(json!({"max": 10})),
    )
    .await;
    let dead = dead["messages"].as_array().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0]["dead_letter"]["reason"], "loop_detected",
        "{dead:?}"
    );
    assert_eq!(dead[0]["body"]["id"], all[5]["id"]);
    // Sends carry the context in their attributes: five invocations, five messages.
    let sent = ok(&s, "POST", "/v1/queues/q/receive", Some(json!({"max": 10}))).await;
    let sent = sent["messages"].as_array().unwrap();
    assert_eq!(sent.len(), 5);
    for m in sent {
        assert_eq!(m["attributes"]["correlationid"], "root", "{m}");
        let hops: u64 = m["attributes"]["hopcount"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=5).contains(&hops), "{m}");
    }
    // One alert with the stopped event, and the trigger counts it.
    let alerts = events(&s, "sluice.alerts").await;
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0]["type"], "sluice.loop_detected");
    assert_eq!(alerts[0]["data"]["hops"], 5);
    assert_eq!(alerts[0]["data"]["event"]["id"], all[5]["id"]);
    let (_, metrics) = s.call("GET", "/metrics", None).await;
    assert!(
        metrics.as_str().unwrap().contains(
            "sluice_trigger_loops_stopped_total{trigger=\"echo-t\",function=\"echo\"} 1\n"
        )
    );
    // Nothing runs after the stop.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(events(&s, "t").await.len(), 6);
}

#[tokio::test]
async fn root_events_get_a_context_and_malformed_context_is_refused() {
    let s = TestServer::start(env!("CARGO_BIN_EXE_sluice"), &[]);
    ok(&s, "PUT", "/v1/topics/t", Some(json!({}))).await;
    let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    publish(
        &s,
        "t",
        json!({"specversion": "1.0", "source": "/x", "type": "a", "id": "a1"}),
    )
    .await;
    publish(
        &s,
        "t",
        json!({"specversion": "1.0", "source": "/x", "type": "a", "id": "a2", "traceparent": given, "correlationid": "order-7"}),
    )
    .await;
    let all = events(&s, "t").await;
    assert_eq!(all[0]["correlationid"], "a1");
    assert_eq!(all[0]["hopcount"], 0);
    assert_eq!(all[0]["traceparent"].as_str().unwrap().len(), 55);
    assert_eq!(all[1]["traceparent"], given);
    assert_eq!(all[1]["correlationid"], "order-7");
    for (attr, value) in [
        ("traceparent", json!("00-abc")),
        ("hopcount", json!(-3)),
        ("tracestate", json!("x".repeat(600))),
    ] {
        let mut e = json!({"specversion": "1.0", "source": "/x", "type": "a"});
        e[attr] = value;
        let (status, v) = s
            .call_with(
                "POST",
                "/v1/topics/t/events",
                &[("content-type", "application/cloudevents+json")],
                serde_json::to_vec(&e).unwrap(),
            )
            .await;
        assert_eq!(status, 400, "{attr}: {v}");
        assert_eq!(v["code"], "invalid_event", "{v}");
        assert!(v["detail"].as_str().unwrap().contains(attr), "{v}");
    }
}
