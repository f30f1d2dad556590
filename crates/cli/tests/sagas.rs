//! Saga definitions over the real server: a good definition is stored as versions, and bad
//! ones (unknown function, queue or topic, duplicate step names, invalid mappings, missing
//! or unknown fields) are refused with the field named.

use serde_json::{Value, json};
use sluice_testkit::TestServer;

fn checkout() -> Value {
    json!({"steps": [
        {"name": "reserve",
         "action": {"invoke": {"function": "inventory", "input": {"order": "$/input/order_id"}}},
         "compensation": {"invoke": {"function": "inventory",
                                     "input": {"release": "$/steps/reserve/output"}}}},
        {"name": "charge",
         "action": {"send": {"queue": "payments", "reply": "payment.charged",
                             "input": {"hold": "$/steps/reserve/output/hold"}}},
         "retry": {"max_attempts": 5, "initial": "100ms"}},
        {"name": "ship", "action": {"publish": {"topic": "shipping", "reply": "shipped"}}}
    ]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_are_versioned_and_bad_ones_name_the_field() {
    let s = TestServer::start(env!("CARGO_BIN_EXE_sluice"), &[]);
    s.deploy("inventory", sluice_guests::ok(), "").await;
    assert_eq!(s.call("PUT", "/v1/queues/payments", None).await.0, 201);
    assert_eq!(s.call("PUT", "/v1/topics/shipping", None).await.0, 201);

    let (status, v) = s
        .call("PUT", "/v1/sagas/definitions/checkout", Some(checkout()))
        .await;
    assert_eq!((status, v["version"].as_u64()), (201, Some(1)), "{v}");
    let mut second = checkout();
    second["steps"][1]["timeout"] = json!("5s");
    let (status, v) = s
        .call("PUT", "/v1/sagas/definitions/checkout", Some(second))
        .await;
    assert_eq!((status, v["version"].as_u64()), (200, Some(2)), "{v}");
    let (_, v) = s.call("GET", "/v1/sagas/definitions/checkout", None).await;
    assert_eq!(v["version"], 2);
    assert_eq!(v["definition"]["steps"][1]["timeout"], "5s");
    let (_, v) = s
        .call("GET", "/v1/sagas/definitions/checkout?version=1", None)
        .await;
    assert_eq!(v["definition"]["steps"][1]["timeout"], "30s");
    let (_, v) = s.call("GET", "/v1/sagas/definitions", None).await;
    assert_eq!(v["definitions"].as_array().unwrap().len(), 1);

    type Change = fn(&mut Value);
    let cases: Vec<(Change, u16, &str, Option<&str>)> = vec![
        (
            |d| d["steps"][0]["action"]["invoke"]["function"] = json!("nope"),
            400,
            "invalid_saga",
            Some("steps[0].action"),
        ),
        (
            |d| d["steps"][1]["action"]["send"]["queue"] = json!("nope"),
            400,
            "invalid_saga",
            Some("steps[1].action"),
        ),
        (
            |d| d["steps"][2]["action"]["publish"]["topic"] = json!("nope"),
            400,
            "invalid_saga",
            Some("steps[2].action"),
        ),
        (
            |d| d["steps"][2]["name"] = json!("reserve"),
            400,
            "invalid_saga",
            Some("steps[2].name"),
        ),
        (
            |d| d["steps"][0]["action"]["invoke"]["input"] = json!({"x": "$/steps/ship/output"}),
            400,
            "invalid_saga",
            Some("steps[0].action.input/x"),
        ),
        (
            |d| d["steps"][1]["retry"]["max_attempts"] = json!(0),
            400,
            "invalid_saga",
            Some("steps[1].retry.max_attempts"),
        ),
        (
            |d| d["steps"] = json!([]),
            400,
            "invalid_saga",
            Some("steps"),
        ),
        (
            |d| {
                d["steps"][0].as_object_mut().unwrap().remove("action");
            },
            400,
            "invalid_request",
            None,
        ),
        (|d| d["extra"] = json!(1), 400, "invalid_request", None),
    ];
    for (change, status, code, field) in cases {
        let mut d = checkout();
        change(&mut d);
        let (got, v) = s
            .call("PUT", "/v1/sagas/definitions/checkout", Some(d.clone()))
            .await;
        assert_eq!(
            (got, v["code"].as_str(), v["field"].as_str()),
            (status, Some(code), field),
            "{d}: {v}"
        );
    }
    // Nothing of that was stored.
    let (_, v) = s.call("GET", "/v1/sagas/definitions/checkout", None).await;
    assert_eq!(v["version"], 2);
    let (status, v) = s.call("GET", "/v1/sagas/definitions/none", None).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (404, Some("saga_definition_not_found"))
    );
    let (status, v) = s
        .call("GET", "/v1/sagas/definitions/checkout?version=9", None)
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (404, Some("saga_definition_not_found"))
    );
    // A function a definition invokes cannot be deleted under it.
    let (status, v) = s.call("DELETE", "/v1/functions/inventory", None).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (409, Some("function_in_use")),
        "{v}"
    );
    assert_eq!(v["sagas"], json!(["checkout"]));
    assert_eq!(
        s.call("DELETE", "/v1/sagas/definitions/checkout", None)
            .await
            .0,
        200
    );
    assert_eq!(
        s.call("DELETE", "/v1/functions/inventory", None).await.0,
        204
    );
    assert_eq!(
        s.call("GET", "/v1/sagas/definitions/checkout", None)
            .await
            .0,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_saga_command_defines_from_stdin() {
    let s = TestServer::start(env!("CARGO_BIN_EXE_sluice"), &[]);
    s.deploy("inventory", sluice_guests::ok(), "").await;
    let sluice = |args: &[&str], stdin: &str| {
        use std::io::Write;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(args)
            .env("SLUICE_SERVER", s.url())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let good = json!({"steps": [{"name": "reserve",
                                 "action": {"invoke": {"function": "inventory"}}}]});
    let (ok, out) = sluice(&["saga", "define", "reserve", "-f", "-"], &good.to_string());
    assert!(
        ok && out.contains("defined saga reserve version 1"),
        "{out}"
    );
    let (ok, out) = sluice(&["saga", "definitions"], "");
    assert!(
        ok && out.contains("reserve  version 1  steps reserve"),
        "{out}"
    );
    let (ok, out) = sluice(
        &[
            "saga",
            "start",
            "reserve",
            "--id",
            "r1",
            "--input",
            r#"{"n":1}"#,
        ],
        "",
    );
    assert!(ok && out.starts_with("r1  reserve@1"), "{out}");
    for _ in 0..100 {
        let (_, out) = sluice(&["saga", "get", "r1"], "");
        if out.contains("completed") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (ok, out) = sluice(&["saga", "get", "r1"], "");
    assert!(ok && out.contains("r1  reserve@1  completed"), "{out}");
    assert!(
        out.contains("reserve") && out.contains("succeeded"),
        "{out}"
    );
    let (ok, out) = sluice(&["saga", "list", "--status", "completed"], "");
    assert!(ok && out.contains("r1  reserve@1  completed"), "{out}");
    let (ok, out) = sluice(&["saga", "history", "r1"], "");
    assert!(ok && out.lines().count() == 2, "{out}");
    let bad = r#"{"steps": [{"name": "x", "action": {"invoke": {"function": "missing"}}}]}"#;
    let (ok, out) = sluice(&["saga", "define", "reserve", "-f", "-"], bad);
    assert!(!ok && out.contains("invalid_saga"), "{out}");
}

/// Reserve → charge → ship, where charge invokes `charge_fn`, retried once after `retry`.
fn order(charge_fn: &str, retry: &str) -> Value {
    json!({"steps": [
        {"name": "reserve",
         "action": {"invoke": {"function": "inventory", "input": {"order": "$/input/order"}}},
         "compensation": {"invoke": {"function": "release",
                                     "input": {"order": "$/input/order"}}}},
        {"name": "charge", "action": {"invoke": {"function": charge_fn}},
         "retry": {"max_attempts": 2, "initial": retry}},
        {"name": "ship", "action": {"invoke": {"function": "ship"}}}
    ]})
}

async fn wait_terminal(s: &TestServer, id: &str) -> Value {
    for _ in 0..300 {
        let (status, v) = s.call("GET", &format!("/v1/sagas/{id}"), None).await;
        assert_eq!(status, 200, "{v}");
        if !["running", "compensating"].contains(&v["status"].as_str().unwrap()) {
            return v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("saga {id} did not end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_complete_or_compensate_in_reverse_and_starts_are_idempotent() {
    let s = TestServer::start(env!("CARGO_BIN_EXE_sluice"), &[]);
    for f in ["inventory", "release", "ship", "pay"] {
        s.deploy(f, sluice_guests::ok(), "").await;
    }
    s.deploy("decline", sluice_guests::error(), "").await;
    for (name, def) in [
        ("order-ok", order("pay", "100ms")),
        ("order-declined", order("decline", "100ms")),
    ] {
        let (status, v) = s
            .call("PUT", &format!("/v1/sagas/definitions/{name}"), Some(def))
            .await;
        assert_eq!(status, 201, "{v}");
    }

    let (status, v) = s
        .call(
            "POST",
            "/v1/sagas",
            Some(json!({"definition": "order-ok", "id": "o1", "input": {"order": "o1"}})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let v = wait_terminal(&s, "o1").await;
    assert_eq!(v["status"], "completed", "{v}");
    let steps: Vec<&str> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap())
        .collect();
    assert_eq!(steps, vec!["succeeded"; 3]);

    let (status, v) = s
        .call(
            "POST",
            "/v1/sagas",
            Some(json!({"definition": "order-declined", "id": "o2", "input": {"order": "o2"}})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let v = wait_terminal(&s, "o2").await;
    assert_eq!(v["status"], "compensated", "{v}");
    assert_eq!(v["steps"][0]["status"], "compensated");
    assert_eq!(v["steps"][1]["status"], "failed");
    assert_eq!(v["steps"][1]["attempts"], 2);
    assert_eq!(v["steps"][2]["status"], "pending");
    assert!(v["error"].as_str().unwrap().contains("charge"), "{v}");

    // Starting an id again answers the saga that exists.
    let (status, again) = s
        .call(
            "POST",
            "/v1/sagas",
            Some(json!({"definition": "order-ok", "id": "o2", "input": {}})),
        )
        .await;
    assert_eq!((status, &again["status"]), (200, &json!("compensated")));

    // The history is the saga's own stream.
    let (_, h) = s.call("GET", "/v1/sagas/o2/history", None).await;
    let kinds: Vec<&str> = h["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        vec![
            "started",
            "action_succeeded",
            "action_failed",
            "timer_fired",
            "action_failed",
            "compensation_succeeded"
        ]
    );
    let (_, stream) = s.call("GET", "/v1/streams/saga-o2/events", None).await;
    assert_eq!(stream["events"].as_array().unwrap().len(), kinds.len());

    let (_, l) = s.call("GET", "/v1/sagas?status=compensated", None).await;
    let ids: Vec<&str> = l["sagas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["o2"]);
    let (_, l) = s.call("GET", "/v1/sagas?definition=order-ok", None).await;
    assert_eq!(l["sagas"].as_array().unwrap().len(), 1);
    let (status, v) = s.call("POST", "/v1/sagas/o1/cancel", None).await;
    assert_eq!(status, 400, "a finished saga is not cancelled: {v}");
    let (status, v) = s.call("GET", "/v1/sagas/nope", None).await;
    assert_eq!((status, v["code"].as_str()), (404, Some("saga_not_found")));
    let (status, v) = s
        .call("POST", "/v1/sagas", Some(json!({"definition": "none"})))
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (404, Some("saga_definition_not_found"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_resumes_after_a_crash_and_a_cancel_compensates() {
    let mut s = TestServer::start(env!("CARGO_BIN_EXE_sluice"), &[]);
    for f in ["inventory", "release", "ship"] {
        s.deploy(f, sluice_guests::ok(), "").await;
    }
    s.deploy("decline", sluice_guests::error(), "").await;
    let (status, _) = s
        .call(
            "PUT",
            "/v1/sagas/definitions/slow",
            Some(order("decline", "1s")),
        )
        .await;
    assert_eq!(status, 201);
    for id in ["a", "b"] {
        let (status, v) = s
            .call(
                "POST",
                "/v1/sagas",
                Some(json!({"definition": "slow", "id": id, "input": {"order": id}})),
            )
            .await;
        assert_eq!(status, 201, "{v}");
    }
    // Both wait for charge's retry timer; "b" is cancelled, then the server dies.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (status, v) = s.call("POST", "/v1/sagas/b/cancel", None).await;
    assert_eq!(status, 200, "{v}");
    s.crash_and_restart();
    let a = wait_terminal(&s, "a").await;
    assert_eq!(a["status"], "compensated", "{a}");
    assert_eq!(a["steps"][1]["attempts"], 2);
    let b = wait_terminal(&s, "b").await;
    assert_eq!(b["status"], "cancelled", "{b}");
    assert_eq!(b["steps"][0]["status"], "compensated");
}

/// Copies the saga attributes of a command into a reply of type `ty`.
fn reply_to(command: &Value, ty: &str, data: Value) -> Value {
    json!({
        "specversion": "1.0", "source": "/test/responder", "type": ty, "data": data,
        "sagaid": command["sagaid"], "sagastep": command["sagastep"],
        "sagaattempt": command["sagaattempt"], "sagakind": command["sagakind"],
    })
}

async fn publish_reply(s: &TestServer, reply: &Value) {
    s.publish_event("sluice.saga.replies", reply).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_and_publish_steps_wait_for_correlated_replies() {
    let s = TestServer::start(env!("CARGO_BIN_EXE_sluice"), &[]);
    for f in ["inventory", "release"] {
        s.deploy(f, sluice_guests::ok(), "").await;
    }
    assert_eq!(s.call("PUT", "/v1/queues/payments", None).await.0, 201);
    assert_eq!(s.call("PUT", "/v1/topics/shipping", None).await.0, 201);
    assert_eq!(
        s.call("PUT", "/v1/topics/shipping/subscriptions/shipper", None)
            .await
            .0,
        201
    );
    let def = json!({"steps": [
        {"name": "reserve", "action": {"invoke": {"function": "inventory"}},
         "compensation": {"invoke": {"function": "release"}}},
        {"name": "charge",
         "action": {"send": {"queue": "payments", "reply": "payment.charged",
                             "failure": "payment.declined",
                             "input": {"amount": "$/input/amount"}}},
         "retry": {"max_attempts": 1}},
        {"name": "ship", "action": {"publish": {"topic": "shipping", "reply": "shipped"}}}
    ]});
    let (status, v) = s
        .call("PUT", "/v1/sagas/definitions/by-message", Some(def))
        .await;
    assert_eq!(status, 201, "{v}");
    for (id, amount) in [("m1", 100), ("m2", 900)] {
        let (status, v) = s
            .call(
                "POST",
                "/v1/sagas",
                Some(json!({"definition": "by-message", "id": id, "input": {"amount": amount}})),
            )
            .await;
        assert_eq!(status, 201, "{v}");
    }
    // The payment service: charges up to 500.
    let mut charged = 0;
    while charged < 2 {
        let (_, got) = s
            .call(
                "POST",
                "/v1/queues/payments/receive",
                Some(json!({"max": 10, "wait": "2s"})),
            )
            .await;
        for m in got["messages"].as_array().unwrap() {
            let command = &m["body"];
            assert_eq!(command["type"], "sluice.saga.command");
            assert_eq!(command["replyto"], "sluice.saga.replies");
            let reply = if command["data"]["amount"].as_u64().unwrap() <= 500 {
                reply_to(command, "payment.charged", json!({"charge": "c1"}))
            } else {
                reply_to(command, "payment.declined", json!("card declined"))
            };
            publish_reply(&s, &reply).await;
            let (status, _) = s
                .call(
                    "POST",
                    "/v1/queues/payments/ack",
                    Some(json!({"receipts": [m["receipt"]]})),
                )
                .await;
            assert_eq!(status, 200);
            charged += 1;
        }
    }
    // The shipping service: ships what reaches it.
    let (_, got) = s
        .call(
            "POST",
            "/v1/topics/shipping/subscriptions/shipper/receive",
            Some(json!({"max": 10, "wait": "5s"})),
        )
        .await;
    let commands = got["messages"].as_array().unwrap();
    assert_eq!(commands.len(), 1, "only the paid order ships: {got}");
    let command = &commands[0]["event"];
    assert_eq!(command["sagaid"], "m1");
    publish_reply(&s, &reply_to(command, "shipped", json!(null))).await;

    let m1 = wait_terminal(&s, "m1").await;
    assert_eq!(m1["status"], "completed", "{m1}");
    assert_eq!(m1["steps"][1]["output"], json!({"charge": "c1"}));
    let m2 = wait_terminal(&s, "m2").await;
    assert_eq!(m2["status"], "compensated", "{m2}");
    assert_eq!(m2["steps"][1]["last_error"], "card declined");
    assert_eq!(m2["steps"][0]["status"], "compensated");
}
