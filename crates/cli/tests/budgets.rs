//! Cost metering and budgets against a real server: a budget pauses a trigger after
//! exactly its limit, nothing is lost, raising it or an operator's resume lets it go on;
//! usage and estimated cost per function, trigger and queue.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_testkit::TestServer;

async fn send(s: &TestServer, queue: &str, n: usize) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let messages: Vec<Value> = chunk.iter().map(|i| json!({"body": {"n": i}})).collect();
        s.ok(
            "POST",
            &format!("/v1/queues/{queue}/messages"),
            Some(json!({ "messages": messages })),
        )
        .await;
    }
}

async fn until<F: std::future::Future<Output = Option<Value>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn invocations(s: &TestServer) -> u64 {
    let (_, m) = s.call("GET", "/metrics", None).await;
    m.as_str()
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("sluice_function_invocations_total{function=\"noop\"} "))
        .map_or(0, |v| v.parse().unwrap())
}

/// Waits for the trigger to be paused by `budget` with nothing in flight, and returns
/// the queue's counts then.
async fn paused_by(s: &TestServer, budget: &str) -> Value {
    until("the trigger to pause", || async {
        let t = s.ok("GET", "/v1/triggers/work", None).await;
        let q = s.ok("GET", "/v1/queues/jobs", None).await;
        (t["stats"]["budget_paused"] == budget
            && t["stats"]["in_flight"] == 0
            && q["stats"]["leased"] == 0)
            .then_some(q)
    })
    .await
}

/// The item of a `/v1/cost` answer for `kind` `name`.
fn cost_item(cost: &Value, kind: &str, name: &str) -> Option<Value> {
    cost["items"]
        .as_array()?
        .iter()
        .find(|i| i["kind"] == kind && i["name"] == name)
        .cloned()
}

#[tokio::test]
async fn a_budget_pauses_its_trigger_after_exactly_its_limit_and_loses_nothing() {
    let s = TestServer::start(env!("CARGO_BIN_EXE_sluice"), &[]);
    s.ok("PUT", "/v1/queues/jobs", Some(json!({}))).await;
    let (status, v) = s
        .call_with(
            "POST",
            "/v1/functions/noop/versions?memory=128MiB",
            &[("content-type", "application/wasm")],
            sluice_guests::ok(),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let cap = |n: u64| json!({"scope": {"function": "noop"}, "period": "day", "limit": {"invocations": n}});
    let b = s.ok("PUT", "/v1/budgets/cap", Some(cap(100))).await;
    assert_eq!(b["standing"], "ok");
    send(&s, "jobs", 500).await;
    s.ok("PUT",
        "/v1/triggers/work",
        Some(json!({"function": "noop", "source": {"queue": "jobs"}, "batch_size": 1, "max_concurrency": 4})),
    )
    .await;

    // Exactly 100 ran; 400 wait in the queue, none leased.
    let q = paused_by(&s, "cap").await;
    assert_eq!(q["stats"]["visible"], 400, "{q}");
    assert_eq!(invocations(&s).await, 100);
    // Longer than a metering tick, so the queue's storage is metered while it holds 400.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(invocations(&s).await, 100, "nothing runs while paused");
    let b = s.ok("GET", "/v1/budgets/cap", None).await;
    assert_eq!(
        (b["spent"].as_f64(), b["standing"].as_str()),
        (Some(100.0), Some("exhausted")),
        "{b}"
    );
    let alerts = s.ok("GET", "/v1/topics/sluice.alerts/events", None).await;
    let kinds: Vec<&str> = alerts["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["sluice.budget.warning", "sluice.budget.exhausted"],
        "{alerts}"
    );
    let (_, m) = s.call("GET", "/metrics", None).await;
    let m = m.as_str().unwrap();
    for line in [
        "sluice_budget_exhausted{budget=\"cap\"} 1\n",
        "sluice_budget_spent{budget=\"cap\"} 100\n",
        "sluice_trigger_budget_paused{trigger=\"work\",function=\"noop\"} 1\n",
        "sluice_trigger_throttled_total{trigger=\"work\",function=\"noop\",cause=\"budget\"} 1\n",
    ] {
        assert!(m.contains(line), "{line} not in\n{m}");
    }

    // Raising the budget resumes it: all 500 complete.
    s.ok("PUT", "/v1/budgets/cap", Some(cap(1000))).await;
    until("the backlog to drain", || async {
        let q = s.ok("GET", "/v1/queues/jobs", None).await;
        let done = q["stats"]["visible"] == 0 && q["stats"]["leased"] == 0;
        done.then_some(q)
    })
    .await;
    assert_eq!(invocations(&s).await, 500);
    let t = s.ok("GET", "/v1/triggers/work", None).await;
    assert_eq!(t["stats"]["budget_paused"], Value::Null);

    // Spent again: an operator's resume lets the trigger run past it for this period.
    s.ok("PUT", "/v1/budgets/cap", Some(cap(600))).await;
    send(&s, "jobs", 200).await;
    let q = paused_by(&s, "cap").await;
    assert_eq!(q["stats"]["visible"], 100, "{q}");
    assert_eq!(invocations(&s).await, 600);
    s.ok("POST", "/v1/triggers/work/resume", None).await;
    until("the resumed trigger to drain", || async {
        let q = s.ok("GET", "/v1/queues/jobs", None).await;
        (q["stats"]["visible"] == 0 && q["stats"]["leased"] == 0).then_some(q)
    })
    .await;
    assert_eq!(invocations(&s).await, 700);
    let b = s.ok("GET", "/v1/budgets/cap", None).await;
    assert_eq!(b["resumed_triggers"], json!(["work"]), "{b}");

    // Usage and cost: 700 invocations of 128 MiB, attributed to function and trigger;
    // the queue's operations are counted on the next metering tick.
    let cost = until("queue usage to be metered", || async {
        let c = s.ok("GET", "/v1/cost?since=1h", None).await;
        let q = cost_item(&c, "queue", "jobs")?;
        // 700 sends, 700 receives, 700 acks.
        (q["usage"]["requests"] == 2100).then_some(c)
    })
    .await;
    let f = &cost_item(&cost, "function", "noop").unwrap();
    assert_eq!(f["usage"]["invocations"], 700);
    let gbs = f["usage"]["gb_seconds"].as_f64().unwrap();
    assert!(gbs > 0.0, "{f}");
    let want = 700.0 * 0.20 / 1e6 + gbs * 0.000_016_666_7;
    assert!(
        (f["cost_usd"]["total"].as_f64().unwrap() - want).abs() < 1e-12,
        "{f}"
    );
    assert_eq!(cost["estimate"], true);
    // The queue held 400 messages of about 11 bytes across a metering tick while paused.
    let q = &cost_item(&cost, "queue", "jobs").unwrap();
    let held = q["usage"]["byte_seconds"].as_f64().unwrap();
    assert!(held >= 400.0 * 8.0 * 0.5, "{q}");
    assert!(q["cost_usd"]["storage"].as_f64().unwrap() > 0.0, "{q}");
    let t = s.ok("GET", "/v1/cost?by=trigger", None).await;
    assert_eq!(t["items"].as_array().unwrap().len(), 1, "{t}");
    assert_eq!(t["items"][0]["usage"]["invocations"], 700);

    // Bad budgets are refused with the field named.
    for (body, field) in [
        (
            json!({"scope": {"function": "nope"}, "period": "day", "limit": {"invocations": 5}}),
            "scope",
        ),
        (
            json!({"scope": "app", "period": "day", "limit": {"invocations": 0}}),
            "limit.invocations",
        ),
        (
            json!({"scope": "app", "period": "day", "limit": {"cost_usd": 5}, "soft_threshold": 2}),
            "soft_threshold",
        ),
    ] {
        let (status, v) = s.call("PUT", "/v1/budgets/bad", Some(body)).await;
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["code"], "invalid_budget");
        assert_eq!(v["field"], field, "{v}");
    }
    let (status, v) = s
        .call(
            "PUT",
            "/v1/budgets/bad",
            Some(json!({"scope": "app", "period": "week", "limit": {"invocations": 5}})),
        )
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("invalid_request")),
        "{v}"
    );
    assert!(v["detail"].as_str().unwrap().contains("`week`"), "{v}");
}

#[tokio::test]
async fn the_cost_and_budget_commands() {
    let s = TestServer::start(env!("CARGO_BIN_EXE_sluice"), &[]);
    let (status, _) = s
        .call_with(
            "POST",
            "/v1/functions/noop/versions",
            &[("content-type", "application/wasm")],
            sluice_guests::ok(),
        )
        .await;
    assert_eq!(status, 201);
    s.invoke("noop", json!(1)).await;
    let sluice = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(args)
            .env("SLUICE_SERVER", s.url())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let out = sluice(&[
        "budget",
        "set",
        "daily",
        "--app",
        "--period",
        "month",
        "--cost-usd",
        "5",
    ]);
    assert!(
        out.starts_with("daily  \"app\"  per month  spent "),
        "{out}"
    );
    assert!(out.contains("of 5  OK"), "{out}");
    assert!(sluice(&["budget", "list"]).contains("daily"));
    let out = sluice(&["cost", "--by", "function", "--since", "1h"]);
    assert!(out.contains("function  noop"), "{out}");
    assert!(out.contains("estimated USD"), "{out}");
    sluice(&["budget", "delete", "daily"]);
    let (status, v) = s.call("GET", "/v1/budgets/daily", None).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (404, Some("budget_not_found"))
    );
}
