//! Event context across async hops against a real server: what produced events inherit
//! (trace, correlation, causation, hop count), and loops stopped at the hop limit.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_testkit::TestServer;

async fn events(s: &TestServer, topic: &str) -> Vec<Value> {
    let v = s
        .ok(
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
    s.ok("PUT", "/v1/queues/q", Some(json!({}))).await;
    s.ok("PUT", "/v1/queues/loops", Some(json!({}))).await;
    s.ok("PUT", "/v1/topics/t", Some(json!({}))).await;
    s.ok(
        "PUT",
        "/v1/topics/t/subscriptions/s",
        Some(json!({"dead_letter_queue": "loops"})),
    )
    .await;
    s.deploy("echo", sluice_guests::effects(), "").await;
    s.ok("PUT",
        "/v1/triggers/echo-t",
        Some(json!({"function": "echo", "source": {"subscription": {"topic": "t", "subscription": "s"}}})),
    )
    .await;
    s.publish_event(
        "t",
        &json!({"specversion": "1.0", "source": "/test", "type": "seed", "id": "root"}),
    )
    .await;

    wait_for("the loop to be dead-lettered", || async {
        let v = s.ok("GET", "/v1/queues/loops", None).await;
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
    let dead = s
        .ok("POST", "/v1/queues/loops/receive", Some(json!({"max": 10})))
        .await;
    let dead = dead["messages"].as_array().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0]["dead_letter"]["reason"], "loop_detected",
        "{dead:?}"
    );
    assert_eq!(dead[0]["body"]["id"], all[5]["id"]);
    // Sends carry the context in their attributes: five invocations, five messages.
    let sent = s
        .ok("POST", "/v1/queues/q/receive", Some(json!({"max": 10})))
        .await;
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
    s.ok("PUT", "/v1/topics/t", Some(json!({}))).await;
    let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    s.publish_event(
        "t",
        &json!({"specversion": "1.0", "source": "/x", "type": "a", "id": "a1"}),
    )
    .await;
    s.publish_event("t", &json!({"specversion": "1.0", "source": "/x", "type": "a", "id": "a2", "traceparent": given, "correlationid": "order-7"}))
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

/// A tree node reduced to what the test can know ahead: events by type (produced ones
/// with their topic) and invocations by function, trigger, source, attempt and outcome,
/// children sorted so concurrent handlers compare equal in any order.
fn shape(e: &Value) -> Value {
    let mut handled: Vec<Value> = e["handled_by"]
        .as_array()
        .unwrap()
        .iter()
        .map(|inv| {
            let mut caused: Vec<Value> = inv["caused"]
                .as_array()
                .unwrap()
                .iter()
                .map(shape)
                .collect();
            caused.sort_by_key(|c| c.to_string());
            json!({
                "function": inv["function"],
                "trigger": inv["trigger"],
                "source": inv["source"],
                "attempt": inv["attempt"],
                "outcome": inv["outcome"],
                "sent_to": inv["sent_to"],
                "caused": caused,
            })
        })
        .collect();
    handled.sort_by_key(|h| h.to_string());
    json!({
        "type": e["type"],
        "topic": e["topic"],
        "handled_by": handled,
        "dead_lettered": e["dead_lettered"].get("reason").map(|_| json!({
            "queue": e["dead_lettered"]["queue"],
            "to": e["dead_lettered"]["dead_letter_queue"],
            "reason": e["dead_lettered"]["reason"],
            "attempts": e["dead_lettered"]["attempts"],
        })),
    })
}

#[tokio::test]
async fn trace_shows_the_causal_tree_of_a_fan_out_and_a_function_chain() {
    let s = TestServer::start(env!("CARGO_BIN_EXE_sluice"), &[]);
    for q in ["q", "bill-dlq"] {
        s.ok("PUT", &format!("/v1/queues/{q}"), Some(json!({})))
            .await;
    }
    for t in ["orders", "t"] {
        s.ok("PUT", &format!("/v1/topics/{t}"), Some(json!({})))
            .await;
    }
    let fast = json!({"initial": "10ms", "multiplier": 1.0, "max": "10ms", "jitter": 0.0});
    for (sub, extra) in [
        ("orders/audit", json!({})),
        ("orders/ship", json!({})),
        (
            "orders/bill",
            json!({"max_attempts": 2, "dead_letter_queue": "bill-dlq", "backoff": fast}),
        ),
        ("t/s", json!({})),
    ] {
        let (topic, name) = sub.split_once('/').unwrap();
        s.ok(
            "PUT",
            &format!("/v1/topics/{topic}/subscriptions/{name}"),
            Some(extra),
        )
        .await;
    }
    s.deploy("noop", sluice_guests::ok(), "").await;
    s.deploy("ship", sluice_guests::effects(), "").await;
    s.deploy("bill", sluice_guests::error(), "").await;
    let sub =
        |topic: &str, name: &str| json!({"subscription": {"topic": topic, "subscription": name}});
    for (trigger, function, source) in [
        ("audit", "noop", sub("orders", "audit")),
        ("ship", "ship", sub("orders", "ship")),
        ("bill", "bill", sub("orders", "bill")),
        ("t-noop", "noop", sub("t", "s")),
        ("q-noop", "noop", json!({"queue": "q"})),
    ] {
        s.ok(
            "PUT",
            &format!("/v1/triggers/{trigger}"),
            Some(json!({"function": function, "source": source})),
        )
        .await;
    }
    s.publish_event(
        "orders",
        &json!({"specversion": "1.0", "source": "/shop", "type": "order.placed", "id": "order-1"}),
    )
    .await;

    let noop = |trigger: &str, source: &str| {
        json!({"function": "noop", "trigger": trigger, "source": source, "attempt": 1,
               "outcome": "success", "sent_to": [], "caused": []})
    };
    let bill = |attempt: u32| {
        json!({"function": "bill", "trigger": "bill", "source": "orders/bill", "attempt": attempt,
               "outcome": "failed", "sent_to": [], "caused": []})
    };
    let leaf = |ty: &str, topic: Value, handled: Vec<Value>| json!({"type": ty, "topic": topic, "handled_by": handled, "dead_lettered": null});
    let mut ship_caused = vec![
        leaf("derived", json!("t"), vec![noop("t-noop", "t/s")]),
        leaf(
            "sluice.queue.message",
            Value::Null,
            vec![noop("q-noop", "q")],
        ),
    ];
    ship_caused.sort_by_key(|c| c.to_string());
    let mut root_handled = vec![
        noop("audit", "orders/audit"),
        json!({"function": "ship", "trigger": "ship", "source": "orders/ship", "attempt": 1,
               "outcome": "success", "sent_to": ["q"], "caused": ship_caused}),
        bill(1),
        bill(2),
    ];
    root_handled.sort_by_key(|h| h.to_string());
    let want = json!({
        "type": "order.placed",
        "topic": null,
        "handled_by": root_handled,
        "dead_lettered": {"queue": "orders/bill", "to": "bill-dlq", "reason": "error", "attempts": 2},
    });

    let deadline = Instant::now() + Duration::from_secs(30);
    let tree = loop {
        let (status, tree) = s.call("GET", "/v1/lineage/order-1", None).await;
        if status == 200 && shape(&tree["root"]) == want {
            break tree;
        }
        assert!(
            Instant::now() < deadline,
            "the tree never became\n{want:#}\nlast: {status} {:#}",
            if status == 200 {
                shape(&tree["root"])
            } else {
                tree
            }
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(tree["correlation_id"], "order-1");
    assert_eq!(tree["truncated"], false);

    // Any event of the chain leads to the same tree, from the root.
    let ship = tree["root"]["handled_by"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["function"] == "ship")
        .unwrap();
    let derived = ship["caused"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "derived")
        .unwrap();
    let derived_id = derived["id"].as_str().unwrap();
    let (status, again) = s
        .call("GET", &format!("/v1/lineage/{derived_id}"), None)
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["event"], derived_id);
    assert_eq!(shape(&again["root"]), want);

    // The CLI prints it, marking the event asked about.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["trace", derived_id])
        .env("SLUICE_SERVER", s.url())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("event order-1  order.placed"), "{text}");
    assert!(
        text.contains(&format!("event {derived_id}  derived → t")),
        "{text}"
    );
    assert!(text.contains("◀"), "{text}");
    assert!(
        text.contains("ship v1 · trigger ship · from orders/ship · attempt 1 · success"),
        "{text}"
    );
    assert!(text.contains("sent to q"), "{text}");
    assert!(
        text.contains("bill v1 · trigger bill · from orders/bill · attempt 2 · failed"),
        "{text}"
    );
    assert!(
        text.contains("dead-lettered from orders/bill to bill-dlq: error after 2 attempt(s)"),
        "{text}"
    );

    // An unknown event is a clear 404.
    let (status, v) = s.call("GET", "/v1/lineage/nope", None).await;
    assert_eq!(status, 404);
    assert_eq!(v["code"], "lineage_not_found");
}

#[tokio::test]
async fn a_sagas_steps_are_its_children_in_the_trace() {
    let s = TestServer::start(env!("CARGO_BIN_EXE_sluice"), &[]);
    s.deploy("reserve", sluice_guests::ok(), "").await;
    s.deploy("charge", sluice_guests::error(), "").await;
    let definition = json!({"steps": [
        {"name": "reserve",
         "action": {"invoke": {"function": "reserve"}},
         "compensation": {"invoke": {"function": "reserve"}}},
        {"name": "charge",
         "action": {"invoke": {"function": "charge"}},
         "retry": {"max_attempts": 2, "initial": "10ms"}}
    ]});
    s.ok("PUT", "/v1/sagas/definitions/order", Some(definition))
        .await;
    s.ok(
        "POST",
        "/v1/sagas",
        Some(json!({"definition": "order", "id": "o-1", "input": {}})),
    )
    .await;
    wait_for("the saga to compensate", || async {
        let v = s.ok("GET", "/v1/sagas/o-1", None).await;
        v["status"] == "compensated"
    })
    .await;
    // The saga is the root; each step's command is its child, handled by the function.
    let tree = s.ok("GET", "/v1/lineage/saga-o-1", None).await;
    assert_eq!(tree["root"]["id"], "saga-o-1");
    assert_eq!(tree["root"]["type"], "sluice.saga");
    let steps = tree["root"]["caused"].as_array().unwrap();
    let seen: Vec<(String, String, String)> = steps
        .iter()
        .map(|step| {
            let handled = step["handled_by"].as_array().unwrap();
            assert_eq!(handled.len(), 1, "{step}");
            (
                step["topic"].as_str().unwrap().to_owned(),
                handled[0]["function"].as_str().unwrap().to_owned(),
                handled[0]["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut want = vec![
        (
            "reserve".to_owned(),
            "reserve".to_owned(),
            "success".to_owned(),
        ),
        (
            "charge".to_owned(),
            "charge".to_owned(),
            "failed".to_owned(),
        ),
        (
            "charge".to_owned(),
            "charge".to_owned(),
            "failed".to_owned(),
        ),
        (
            "reserve".to_owned(),
            "reserve".to_owned(),
            "success".to_owned(),
        ),
    ];
    let mut got = seen.clone();
    got.sort();
    want.sort();
    assert_eq!(
        got, want,
        "action, two charge attempts, compensation: {tree:#}"
    );
    for step in steps {
        assert_eq!(step["type"], "sluice.saga.action");
    }
    let (_, metrics) = s.call("GET", "/metrics", None).await;
    let metrics = metrics.as_str().unwrap();
    for line in [
        "sluice_sagas_started_total{definition=\"order\"} 1\n",
        "sluice_sagas_finished_total{definition=\"order\",status=\"compensated\"} 1\n",
        "sluice_sagas_active 0\n",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    // Asked about one step, the tree is still the saga's.
    let step_id = steps[0]["id"].as_str().unwrap();
    let again = s.ok("GET", &format!("/v1/lineage/{step_id}"), None).await;
    assert_eq!(again["root"]["id"], "saga-o-1");
}
