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
    let (status, v) = s
        .call_with(
            "POST",
            "/v1/functions/inventory/versions",
            &[("content-type", "application/wasm")],
            sluice_guests::ok(),
        )
        .await;
    assert_eq!(status, 201, "{v}");
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
    let (status, _) = s
        .call_with(
            "POST",
            "/v1/functions/inventory/versions",
            &[("content-type", "application/wasm")],
            sluice_guests::ok(),
        )
        .await;
    assert_eq!(status, 201);
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
    let bad = r#"{"steps": [{"name": "x", "action": {"invoke": {"function": "missing"}}}]}"#;
    let (ok, out) = sluice(&["saga", "define", "reserve", "-f", "-"], bad);
    assert!(!ok && out.contains("invalid_saga"), "{out}");
}
