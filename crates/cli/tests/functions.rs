//! Black-box tests of functions against a real `sluice serve` process with
//! Python, JavaScript and C guests built by the pinned toolchains: triggers with
//! batches, load leveling, partial batch failure, limits and bad deploys.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_testkit::{TestServer, build_guest};

fn server() -> TestServer {
    TestServer::start(env!("CARGO_BIN_EXE_sluice"), &[])
}

async fn deploy(s: &TestServer, name: &str, wasm: &Path, query: &str) -> Value {
    s.deploy(name, std::fs::read(wasm).unwrap(), query).await
}

/// Sends JSON bodies to a queue in batches of up to 1,000.
async fn send_all(s: &TestServer, queue: &str, bodies: &[Value]) {
    for chunk in bodies.chunks(1000) {
        // Orders and tier updates go in their customer's FIFO group.
        let messages: Vec<Value> = chunk
            .iter()
            .map(|b| match b["customer"].as_str() {
                Some(c) => json!({ "body": b, "group": c }),
                None => json!({ "body": b }),
            })
            .collect();
        let v = s
            .ok(
                "POST",
                &format!("/v1/queues/{queue}/messages"),
                Some(json!({ "messages": messages })),
            )
            .await;
        assert!(v["failed"].as_array().is_none_or(|f| f.is_empty()), "{v}");
    }
}

/// Waits until `queue` has nothing visible, leased or delayed.
async fn drained(s: &TestServer, queue: &str, timeout: Duration) {
    let start = Instant::now();
    loop {
        let q = s.ok("GET", &format!("/v1/queues/{queue}"), None).await;
        let st = &q["stats"];
        if st["visible"] == 0 && st["leased"] == 0 && st["delayed"] == 0 {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "{queue} not drained in {timeout:?}: {st}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every event of a topic's log.
async fn read_topic(s: &TestServer, topic: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut from = 0u64;
    loop {
        let v = s
            .ok(
                "GET",
                &format!("/v1/topics/{topic}/events?from={from}&limit=1000"),
                None,
            )
            .await;
        let events = v["events"].as_array().unwrap().clone();
        if events.is_empty() {
            return out;
        }
        from = v["next"].as_u64().unwrap();
        out.extend(events.into_iter().map(|e| e["event"].clone()));
    }
}

async fn state(s: &TestServer, function: &str, key: &str) -> Option<String> {
    let (status, v) = s
        .call(
            "GET",
            &format!("/v1/functions/{function}/state/{key}"),
            None,
        )
        .await;
    match status {
        200 => Some(match v {
            Value::String(s) => s,
            other => other.to_string(),
        }),
        404 => None,
        _ => panic!("state {key}: {status} {v}"),
    }
}

fn order(i: usize, customer: &str) -> Value {
    json!({"order_id": format!("o{i}"), "customer": customer,
           "items": [{"sku": "a", "qty": i % 3 + 1, "price": 2.5}, {"sku": "b", "qty": 1, "price": 10}]})
}

fn expected_total(i: usize) -> f64 {
    ((i % 3 + 1) as f64 * 2.5 + 10.0) * 1.1
}

async fn enrich_pipeline(lang: &str, source: &str) {
    let s = server();
    let wasm = build_guest(lang, source);
    let f = format!("enrich-{lang}");
    let topic = format!("enriched-{lang}");
    deploy(
        &s,
        &f,
        &wasm,
        &format!("env=TAX_RATE%3D0.1&env=OUT_TOPIC%3D{topic}"),
    )
    .await;
    s.ok("PUT", &format!("/v1/topics/{topic}"), Some(json!({})))
        .await;
    s.ok("PUT", "/v1/queues/orders", Some(json!({"fifo": true})))
        .await;
    let trigger = json!({"function": f, "source": {"queue": "orders"}, "batch_size": 10,
                         "batch_window": "20ms", "max_concurrency": 4});
    s.ok("PUT", "/v1/triggers/enrich", Some(trigger)).await;
    // Tiers first, then 1,000 orders from 20 customers, in FIFO groups by customer.
    send_all(&s, "orders", &[json!({"customer": "c0", "tier": "gold"})]).await;
    drained(&s, "orders", Duration::from_secs(60)).await;
    let orders: Vec<Value> = (0..1000)
        .map(|i| order(i, &format!("c{}", i % 20)))
        .collect();
    send_all(&s, "orders", &orders).await;
    drained(&s, "orders", Duration::from_secs(120)).await;

    let events = read_topic(&s, &topic).await;
    assert_eq!(events.len(), 1000, "one enriched event per order");
    let mut seen = HashSet::new();
    let mut numbers: HashMap<String, Vec<u64>> = HashMap::new();
    for e in &events {
        let d = &e["data"];
        let id = d["order_id"].as_str().unwrap().to_owned();
        let i: usize = id[1..].parse().unwrap();
        assert!(seen.insert(id.clone()), "{id} published twice");
        assert_eq!(e["type"], "order.enriched");
        assert_eq!(e["subject"], json!(id));
        assert_eq!(e["source"], json!(format!("sluice://functions/{f}")));
        assert!(
            (d["total"].as_f64().unwrap() - expected_total(i)).abs() < 1e-9,
            "{d}"
        );
        let customer = d["customer"].as_str().unwrap().to_owned();
        let tier = if customer == "c0" { "gold" } else { "standard" };
        assert_eq!(d["tier"], tier, "{d}");
        // FIFO by customer: the k-th order sent for a customer is its k-th counted.
        assert_eq!(d["order_number"], json!(i / 20 + 1), "{d}");
        numbers
            .entry(customer)
            .or_default()
            .push(d["order_number"].as_u64().unwrap());
    }
    // Each customer's orders were counted exactly once each, in the order they
    // were sent (FIFO by customer), although up to four invocations ran at once.
    for c in 0..20 {
        let customer = format!("c{c}");
        let mut n = numbers.remove(&customer).unwrap();
        n.sort_unstable();
        assert_eq!(n, (1..=50).collect::<Vec<u64>>(), "{customer}");
        assert_eq!(
            state(&s, &f, &format!("orders:{customer}"))
                .await
                .as_deref(),
            Some("50")
        );
    }
    assert_eq!(state(&s, &f, "tier:c0").await.as_deref(), Some("gold"));
    let t = s.ok("GET", "/v1/triggers/enrich", None).await;
    assert_eq!(
        t["stats"]["errors"], 0,
        "no conflicts on a FIFO queue grouped by customer: {t}"
    );
    assert_eq!(t["stats"]["events"], 1001, "{t}");
    assert!(t["stats"]["max_in_flight"].as_u64().unwrap() <= 4, "{t}");
    // Every invocation left a record with its log lines.
    let logs = s
        .ok("GET", &format!("/v1/functions/{f}/logs?limit=1000"), None)
        .await;
    let records = logs["records"].as_array().unwrap();
    assert!(!records.is_empty());
    assert!(
        records.iter().all(|r| r["trigger"] == "enrich"),
        "{}",
        records[0]
    );
    assert!(
        records
            .iter()
            .any(|r| r["lines"].as_array().is_some_and(|l| !l.is_empty()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_function_enriches_1000_orders_exactly_once() {
    enrich_pipeline("python", "examples/functions/enrich-python/enrich.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_javascript_function_enriches_1000_orders_exactly_once() {
    enrich_pipeline("js", "examples/functions/enrich-js/enrich.js").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_c_function_counts_600_events_by_type_exactly_once() {
    let s = server();
    let wasm = build_guest("c", "examples/functions/count-c/count.c");
    deploy(&s, "count", &wasm, "env=OUT_TOPIC%3Dcounted").await;
    for t in ["in", "counted"] {
        s.ok("PUT", &format!("/v1/topics/{t}"), Some(json!({})))
            .await;
    }
    s.ok(
        "PUT",
        "/v1/topics/in/subscriptions/count",
        Some(json!({"start": "earliest"})),
    )
    .await;
    // Two invocations at once may race on a counter: compare-and-set fails one
    // batch, which runs again, so every count is still taken exactly once.
    let trigger = json!({"function": "count", "source": {"subscription": {"topic": "in", "subscription": "count"}},
                         "batch_size": 10, "max_concurrency": 2});
    s.ok("PUT", "/v1/triggers/count", Some(trigger)).await;
    let types = ["order.placed", "order.paid", "order.shipped"];
    let events: Vec<Value> = (0..600)
        .map(|i| {
            json!({"specversion": "1.0", "source": "/test", "type": types[i % 3],
                        "id": format!("e{i}"), "data": {"n": i}})
        })
        .collect();
    for chunk in events.chunks(200) {
        s.publish("in", chunk).await;
    }
    let start = Instant::now();
    let mut counted = Vec::new();
    while counted.len() < 600 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} of 600 counted",
            counted.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        counted = read_topic(&s, "counted").await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let counted = read_topic(&s, "counted").await;
    assert_eq!(counted.len(), 600, "one event per input");
    let mut subjects = HashSet::new();
    let mut counts: HashMap<String, Vec<u64>> = HashMap::new();
    for e in &counted {
        let d = &e["data"];
        let ty = d["type"].as_str().unwrap().to_owned();
        assert_eq!(e["type"], json!(format!("{ty}.counted")), "{e}");
        assert_eq!(e["source"], "sluice://functions/count", "{e}");
        let subject = e["subject"].as_str().unwrap().to_owned();
        let i: usize = subject[1..].parse().unwrap();
        assert_eq!(ty, types[i % 3], "{e}");
        assert!(subjects.insert(subject), "{e} counted twice");
        counts
            .entry(ty)
            .or_default()
            .push(d["count"].as_u64().unwrap());
    }
    for ty in types {
        let mut n = counts.remove(ty).unwrap();
        n.sort_unstable();
        assert_eq!(n, (1..=200).collect::<Vec<u64>>(), "{ty}");
        assert_eq!(
            state(&s, "count", &format!("count:{ty}")).await.as_deref(),
            Some("200")
        );
    }
    // Every count was logged by the invocation that took it (failed attempts log too).
    let logs = s
        .ok("GET", "/v1/functions/count/logs?limit=1000", None)
        .await;
    let lines: HashSet<String> = logs["records"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["lines"].as_array().unwrap().clone())
        .map(|l| {
            assert_eq!(l["level"], "info", "{l}");
            l["message"].as_str().unwrap().to_owned()
        })
        .collect();
    for ty in types {
        for n in 1..=200 {
            assert!(lines.contains(&format!("{ty} #{n}")), "{ty} #{n} logged");
        }
    }
    // Partial failure with the function's reason; a refused publish fails the
    // batch with the host's reason.
    let batch = json!({"events": [
        {"specversion": "1.0", "source": "/t", "type": "x", "id": "good", "data": 1},
        {"specversion": "1.0", "source": "/t", "type": "x", "id": "empty"}]});
    let v = s
        .ok("POST", "/v1/functions/count/invoke", Some(batch))
        .await;
    assert_eq!(v["outcome"], "partial_failure", "{v}");
    assert_eq!(
        v["failed"],
        json!([{"id": "empty", "reason": "event has no data"}]),
        "{v}"
    );
    assert_eq!(v["effects"]["published"][0]["type"], "x.counted", "{v}");
    deploy(&s, "count-nowhere", &wasm, "env=OUT_TOPIC%3Dmissing").await;
    let v = s.invoke("count-nowhere", json!(1)).await;
    assert_eq!(v["outcome"], "failed", "{v}");
    assert!(v["error"].as_str().unwrap().contains("missing"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_10000_runs_at_most_3_invocations_at_once_and_loses_nothing() {
    let s = server();
    let wasm = build_guest("python", "crates/cli/tests/guests/slow.py");
    deploy(&s, "slow", &wasm, "concurrency=10").await;
    s.ok("PUT", "/v1/topics/leveled", Some(json!({}))).await;
    s.ok("PUT", "/v1/queues/burst", Some(json!({}))).await;
    let bodies: Vec<Value> = (0..10_000).map(|i| json!({ "i": i })).collect();
    send_all(&s, "burst", &bodies).await;
    let trigger = json!({"function": "slow", "source": {"queue": "burst"}, "batch_size": 10,
                         "max_concurrency": 3});
    s.ok("PUT", "/v1/triggers/level", Some(trigger)).await;
    // While it drains, the backlog waits in the queue, not in the server's memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let q = s.ok("GET", "/v1/queues/burst", None).await;
    assert!(q["stats"]["visible"].as_u64().unwrap() > 1000, "{q}");
    assert!(
        q["stats"]["leased"].as_u64().unwrap() <= 30,
        "at most 3 batches of 10 leased: {q}"
    );
    drained(&s, "burst", Duration::from_secs(300)).await;
    let t = s.ok("GET", "/v1/triggers/level", None).await;
    let max = t["stats"]["max_in_flight"].as_u64().unwrap();
    assert!((1..=3).contains(&max), "observed concurrency {max}: {t}");
    assert!(
        t["stats"]["throttled_concurrency"].as_u64().unwrap() > 0,
        "{t}"
    );
    let events = read_topic(&s, "leveled").await;
    let subjects: HashSet<String> = events
        .iter()
        .map(|e| e["subject"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(events.len(), 10_000);
    assert_eq!(subjects.len(), 10_000, "every message once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_poison_order_is_retried_and_dead_lettered_with_the_error() {
    let s = server();
    let wasm = build_guest("python", "examples/functions/enrich-python/enrich.py");
    deploy(&s, "enrich", &wasm, "").await;
    s.ok("PUT", "/v1/topics/orders-enriched", Some(json!({})))
        .await;
    s.ok("PUT", "/v1/queues/dlq", Some(json!({}))).await;
    let queue = json!({"max_attempts": 3, "dead_letter_queue": "dlq",
                       "backoff": {"initial": "10ms", "max": "50ms"}});
    s.ok("PUT", "/v1/queues/orders", Some(queue)).await;
    let mut orders: Vec<Value> = (0..9).map(|i| order(i, "c1")).collect();
    orders.insert(
        4,
        json!({"order_id": "poison", "customer": "c1", "items": []}),
    );
    send_all(&s, "orders", &orders).await;
    let trigger = json!({"function": "enrich", "source": {"queue": "orders"}, "batch_size": 10,
                         "batch_window": "100ms", "max_concurrency": 1});
    s.ok("PUT", "/v1/triggers/t", Some(trigger)).await;
    drained(&s, "orders", Duration::from_secs(60)).await;
    let events = read_topic(&s, "orders-enriched").await;
    assert_eq!(
        events.len(),
        9,
        "the good orders were processed once, not retried"
    );
    let got = s
        .ok("POST", "/v1/queues/dlq/receive", Some(json!({"max": 10})))
        .await;
    let messages = got["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "{got}");
    assert_eq!(messages[0]["body"]["order_id"], "poison");
    let dl = &messages[0]["dead_letter"];
    assert_eq!(dl["attempts"], 3, "{dl}");
    assert!(
        dl["error"]
            .as_str()
            .unwrap()
            .contains("order poison has no items"),
        "{dl}"
    );
    let logs = s
        .ok("GET", "/v1/functions/enrich/logs?limit=100", None)
        .await;
    let attempts: Vec<u64> = logs["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(attempts.iter().max(), Some(&3), "{attempts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_fail_the_invocation_and_the_server_keeps_serving() {
    let s = server();
    let spin = build_guest("python", "crates/cli/tests/guests/spin.py");
    let hog = build_guest("python", "crates/cli/tests/guests/hog.py");
    let escape = build_guest("python", "crates/cli/tests/guests/escape.py");
    deploy(&s, "spin", &spin, "timeout=500ms").await;
    deploy(&s, "hog", &hog, "memory=128MiB").await;
    deploy(&s, "escape", &escape, "").await;

    let started = Instant::now();
    let v = s.invoke("spin", json!(1)).await;
    assert_eq!(v["outcome"], "failed", "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("timed out after 500 ms"),
        "{v}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    let v = s.invoke("hog", json!(1)).await;
    assert_eq!(v["outcome"], "failed", "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("memory limit of 134217728 bytes exceeded"),
        "{v}"
    );

    let v = s.invoke("escape", json!(1)).await;
    assert_eq!(
        v["outcome"], "success",
        "neither a file nor a socket opened: {v}"
    );
    let lines: Vec<&str> = v["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert!(
        lines.iter().any(|l| l.starts_with("open denied")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("socket denied")),
        "{lines:?}"
    );

    // The server is healthy and a spinning function does not hold others up: while
    // one spins toward a 10 s timeout, another function runs and answers.
    let (status, _) = s.call("GET", "/readyz", None).await;
    assert_eq!(status, 200);
    deploy(&s, "spin-long", &spin, "timeout=10s").await;
    let spinning = tokio::spawn({
        let url = s.url().to_owned();
        async move {
            let http = reqwest::Client::new();
            let r = http
                .post(format!("{url}/v1/functions/spin-long/invoke"))
                .json(&json!({"data": 1}))
                .send()
                .await;
            let v: Value = r.unwrap().json().await.unwrap();
            v
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let other = s.invoke("escape", json!(1)).await;
    assert_eq!(other["outcome"], "success", "{other}");
    assert!(
        !spinning.is_finished(),
        "answered while the other function still spins"
    );
    let spun = spinning.await.unwrap();
    assert_eq!(spun["outcome"], "failed", "{spun}");
    assert!(
        spun["error"].as_str().unwrap().contains("timed out"),
        "{spun}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_deploys_are_refused_with_what_is_wrong() {
    let s = server();
    let good = sluice_guests::ok();
    let other_world =
        wat::parse_str("(component (import \"acme:other/api@1.0.0\" (instance)))").unwrap();
    let core = wat::parse_str("(module)").unwrap();
    // (body, query, content type, status, code, words in the detail)
    type Case<'a> = (Vec<u8>, &'a str, &'a str, u16, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            b"not wasm at all".to_vec(),
            "",
            "application/wasm",
            400,
            "invalid_component",
            "not WebAssembly",
        ),
        (
            core,
            "",
            "application/wasm",
            400,
            "invalid_component",
            "core WebAssembly module",
        ),
        (
            other_world,
            "",
            "application/wasm",
            400,
            "invalid_component",
            "does not export `sluice:function/handler@0.1.0`",
        ),
        (
            good[..good.len() / 2].to_vec(),
            "",
            "application/wasm",
            400,
            "invalid_component",
            "not a valid component",
        ),
        (
            good.clone(),
            "memory=1KiB",
            "application/wasm",
            400,
            "invalid_config",
            "memory",
        ),
        (
            good.clone(),
            "timeout=0s",
            "application/wasm",
            400,
            "invalid_config",
            "timeout",
        ),
        (
            good.clone(),
            "timeout=soon",
            "application/wasm",
            400,
            "invalid_config",
            "timeout",
        ),
        (
            good.clone(),
            "concurrency=0",
            "application/wasm",
            400,
            "invalid_config",
            "concurrency",
        ),
        (
            good.clone(),
            "env=NOEQUALS",
            "application/wasm",
            400,
            "invalid_config",
            "K=V",
        ),
        (
            good.clone(),
            "flavor=spicy",
            "application/wasm",
            400,
            "invalid_request",
            "flavor",
        ),
        (
            good.clone(),
            "",
            "application/json",
            415,
            "unsupported_media_type",
            "application/wasm",
        ),
    ];
    for (body, query, ct, status, code, words) in cases {
        let path = format!("/v1/functions/f/versions?{query}");
        let (got, v) = s
            .call_with("POST", &path, &[("content-type", ct)], body)
            .await;
        assert_eq!(got, status, "{query} {ct}: {v}");
        assert_eq!(v["code"], code, "{v}");
        assert!(
            v["detail"].as_str().unwrap().contains(words),
            "{v} should mention {words:?}"
        );
    }
    let (status, v) = s.call("GET", "/v1/functions/f", None).await;
    assert_eq!(status, 404, "nothing was created: {v}");
    assert_eq!(v["code"], "function_not_found");
    // Names, versions and aliases are checked too; the server stays up throughout.
    let (status, v) = s
        .call_with(
            "POST",
            "/v1/functions/bad%20name/versions",
            &[],
            good.clone(),
        )
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("invalid_name")),
        "{v}"
    );
    let (status, _) = s
        .call_with("POST", "/v1/functions/f/versions", &[], good)
        .await;
    assert_eq!(status, 201);
    for (method, path, body, status, code) in [
        (
            "GET",
            "/v1/functions/f/versions/9",
            None,
            404,
            "version_not_found",
        ),
        (
            "GET",
            "/v1/functions/f/versions/x",
            None,
            400,
            "invalid_request",
        ),
        (
            "PUT",
            "/v1/functions/f/aliases/7",
            Some(json!({"version": 1})),
            400,
            "invalid_config",
        ),
        (
            "PUT",
            "/v1/functions/f/aliases/beta",
            Some(json!({"version": 5})),
            404,
            "version_not_found",
        ),
        (
            "DELETE",
            "/v1/functions/f/versions/1",
            None,
            409,
            "version_in_use",
        ),
        (
            "POST",
            "/v1/functions/f/rollback",
            Some(json!({})),
            400,
            "invalid_config",
        ),
        (
            "POST",
            "/v1/functions/f/invoke?alias=nope",
            Some(json!({})),
            404,
            "alias_not_found",
        ),
        (
            "POST",
            "/v1/functions/f/invoke",
            Some(json!({"events": []})),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/functions/f/invoke",
            Some(json!({"events": [{"type": "x"}]})),
            400,
            "invalid_event",
        ),
        (
            "PUT",
            "/v1/triggers/t",
            Some(json!({"function": "f", "source": {"queue": "none"}})),
            404,
            "queue_not_found",
        ),
        (
            "PUT",
            "/v1/triggers/t",
            Some(json!({"function": "nope", "source": {"queue": "none"}})),
            404,
            "function_not_found",
        ),
        (
            "PUT",
            "/v1/triggers/t",
            Some(json!({"function": "f", "alias": "nope", "source": {"queue": "none"}})),
            404,
            "alias_not_found",
        ),
        (
            "PUT",
            "/v1/triggers/t",
            Some(json!({"function": "f", "source": {"queue": "none"}, "batch_size": 0})),
            400,
            "invalid_config",
        ),
        (
            "PUT",
            "/v1/triggers/t",
            Some(json!({"function": "f", "source": {"bucket": "x"}})),
            400,
            "invalid_request",
        ),
        (
            "GET",
            "/v1/functions/f/state/nokey",
            None,
            404,
            "key_not_found",
        ),
    ] {
        let (got, v) = s.call(method, path, body).await;
        assert_eq!(
            (got, v["code"].as_str()),
            (status, Some(code)),
            "{method} {path}: {v}"
        );
    }
    s.ok("PUT", "/v1/queues/q", Some(json!({}))).await;
    s.ok(
        "PUT",
        "/v1/triggers/t",
        Some(json!({"function": "f", "source": {"queue": "q"}})),
    )
    .await;
    let (status, v) = s.call("DELETE", "/v1/functions/f", None).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (409, Some("function_in_use")),
        "{v}"
    );
    let (status, v) = s
        .call(
            "PUT",
            "/v1/triggers/t2",
            Some(json!({"function": "f", "source": {"queue": "q"}})),
        )
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("invalid_config")),
        "one trigger per source: {v}"
    );
    let (status, _) = s.call("GET", "/readyz", None).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_trigger_pauses_resumes_and_keeps_to_its_rate() {
    let mut s = server();
    let (status, v) = s
        .call_with(
            "POST",
            "/v1/functions/ok/versions",
            &[("content-type", "application/wasm")],
            sluice_guests::ok(),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    s.ok("PUT", "/v1/topics/t", Some(json!({}))).await;
    s.ok(
        "PUT",
        "/v1/topics/t/subscriptions/s",
        Some(json!({"start": "earliest"})),
    )
    .await;
    let trigger = json!({"function": "ok", "source": {"subscription": {"topic": "t", "subscription": "s"}},
                         "rate_limit": 20.0, "paused": true});
    s.ok("PUT", "/v1/triggers/rt", Some(trigger)).await;
    let events: Vec<Value> = (0..40)
        .map(|i| json!({"specversion": "1.0", "source": "/test", "type": "tick", "id": format!("e{i}")}))
        .collect();
    s.publish("t", &events).await;
    // Paused: nothing is leased, the events wait in the subscription.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = s.ok("GET", "/v1/triggers/rt", None).await;
    assert_eq!(t["stats"]["invocations"], 0, "{t}");
    let sub = s.ok("GET", "/v1/topics/t/subscriptions/s", None).await;
    assert_eq!(sub["backlog"], 40, "{sub}");
    // Resumed at 20 invocations a second with a burst of 20: 40 events take about a second.
    let resumed = Instant::now();
    s.ok("POST", "/v1/triggers/rt/resume", None).await;
    loop {
        let t = s.ok("GET", "/v1/triggers/rt", None).await;
        if t["stats"]["invocations"] == 40 {
            break;
        }
        assert!(resumed.elapsed() < Duration::from_secs(30), "{t}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = resumed.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "the rate limit held: {took:?}"
    );
    let t = s.ok("GET", "/v1/triggers/rt", None).await;
    assert!(t["stats"]["throttled_rate"].as_u64().unwrap() > 0, "{t}");
    // Each event was delivered as published, and acked with the invocation. The
    // count above rises as an invocation starts; its log record lands as it ends.
    let mut records = 0;
    for _ in 0..100 {
        let logs = s.ok("GET", "/v1/functions/ok/logs?limit=100", None).await;
        records = logs["records"].as_array().unwrap().len();
        if records >= 40 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(records, 40);
    let mut backlog = Value::Null;
    for _ in 0..50 {
        let sub = s.ok("GET", "/v1/topics/t/subscriptions/s", None).await;
        backlog = sub["backlog"].clone();
        if backlog == 0 && sub["stats"]["leased"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(backlog, 0);
    // Pausing again is durable: after a restart the trigger is still paused.
    s.ok("POST", "/v1/triggers/rt/pause", None).await;
    s.crash_and_restart();
    let t = s.ok("GET", "/v1/triggers/rt", None).await;
    assert_eq!(t["config"]["paused"], true, "{t}");
    assert_eq!(
        t["stats"]["invocations"], 0,
        "counts start again with the process: {t}"
    );
}

/// Deploying a component that is already compiled reuses its code (a copy of it), so the
/// second function outlives the first one's deletion and a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_deployed_twice_keeps_working_after_the_first_is_deleted() {
    let mut s = server();
    let a = s.deploy("a", sluice_guests::ok(), "").await;
    let b = s.deploy("b", sluice_guests::ok(), "memory=64MiB").await;
    assert_eq!(a["sha256"], b["sha256"]);
    assert_eq!(b["memory"], "64MiB");
    let r = s.invoke("b", json!({})).await;
    assert_eq!(r["outcome"], "success", "{r}");
    let (status, _) = s.call("DELETE", "/v1/functions/a", None).await;
    assert_eq!(status, 204);
    s.crash_and_restart();
    let r = s.invoke("b", json!({})).await;
    assert_eq!(r["outcome"], "success", "{r}");
}
