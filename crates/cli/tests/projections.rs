//! Projections over the real server with the example `order-totals` projection (Python):
//! orders appended while the server is killed with SIGKILL end in exactly the state the
//! test computes itself (each event folded once), a rebuild from scratch ends in the same
//! state, and bad projection settings get clear errors.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};
use sluice_testkit::{TestServer, build_guest};

const ORDERS: u64 = 60;
const SKUS: [&str; 4] = ["tea", "mug", "pot", "cup"];

async fn deploy(s: &TestServer, name: &str, source: &str) {
    let bytes = std::fs::read(build_guest("python", source)).unwrap();
    // A short timeout: leases cut off by a crash end soon after it.
    s.deploy(name, bytes, "timeout=2s").await;
}

/// Appends, retrying the very same append (same ids, same expected version) until it has
/// an answer: the server may be restarting.
async fn append_until_answered(s: &TestServer, stream: &str, expected: Value, events: Value) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for _ in 0..200 {
        let resp = http
            .post(format!("{}/v1/streams/{stream}/events", s.url()))
            .json(&json!({"expected_version": expected, "events": events}))
            .send()
            .await;
        if let Ok(r) = resp {
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            assert_eq!(status, 200, "append to {stream}: {body}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("append to {stream} never answered");
}

fn placed(id: &str, items: &[(&str, u64, f64)]) -> Value {
    let items: Vec<Value> = items
        .iter()
        .map(|(sku, qty, price)| json!({"sku": sku, "qty": qty, "price": price}))
        .collect();
    json!({"specversion": "1.0", "source": "/shop", "id": id, "type": "order.placed",
           "data": {"customer": "c", "items": items}})
}

fn cancelled(id: &str) -> Value {
    json!({"specversion": "1.0", "source": "/shop", "id": id, "type": "order.cancelled",
           "data": {}})
}

fn sluice(s: &TestServer, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .env("SLUICE_SERVER", s.url())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sluice {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn wait_caught_up(s: &TestServer, name: &str, rebuilds: u64) -> Value {
    for _ in 0..1_200 {
        let (status, p) = s
            .call("GET", &format!("/v1/projections/{name}"), None)
            .await;
        assert_eq!(status, 200, "{p}");
        if p["lag"] == 0 && p["rebuilds"] == rebuilds && p["rebuilding"] == false {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("projection {name} did not catch up");
}

/// The projection's whole state, key → JSON value.
async fn state(s: &TestServer, name: &str) -> BTreeMap<String, Value> {
    let (status, v) = s
        .call(
            "GET",
            &format!("/v1/projections/{name}/state?limit=1000"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let mut out = BTreeMap::new();
    for k in v["keys"].as_array().unwrap() {
        let k = k.as_str().unwrap();
        let (status, v) = s
            .call("GET", &format!("/v1/projections/{name}/state/{k}"), None)
            .await;
        assert_eq!(status, 200, "{k}: {v}");
        out.insert(k.to_owned(), v);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_folds_each_event_once_across_crashes_and_rebuilds_to_the_same_state() {
    let seed = sluice_testkit::crash_seed("projection test");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut s = TestServer::start(env!("CARGO_BIN_EXE_sluice"), &[]);
    deploy(
        &s,
        "order-totals",
        "examples/projections/order-totals/order_totals.py",
    )
    .await;
    let (status, p) = s
        .call(
            "PUT",
            "/v1/projections/totals",
            Some(json!({"function": "order-totals", "source": {"category": "order"}})),
        )
        .await;
    assert_eq!(status, 201, "{p}");

    // What the projection must end with, computed here.
    let mut revenue: BTreeMap<&str, f64> = BTreeMap::new();
    let mut open = 0i64;
    for n in 0..ORDERS {
        let stream = format!("order-{n}");
        let lines: Vec<(&str, u64, f64)> = (0..rng.random_range(1..4))
            .map(|_| {
                (
                    SKUS[rng.random_range(0..SKUS.len())],
                    rng.random_range(1..4),
                    rng.random_range(1..20) as f64,
                )
            })
            .collect();
        append_until_answered(
            &s,
            &stream,
            json!("no_stream"),
            json!([placed(&format!("p{n}"), &lines)]),
        )
        .await;
        let cancel = n % 4 == 0;
        if cancel {
            append_until_answered(&s, &stream, json!(0), json!([cancelled(&format!("x{n}"))]))
                .await;
        } else {
            open += 1;
            for (sku, qty, price) in &lines {
                *revenue.entry(sku).or_default() += *qty as f64 * price;
            }
        }
        // Events of another category are not the projection's.
        append_until_answered(
            &s,
            &format!("cart-{n}"),
            json!("no_stream"),
            json!([placed(&format!("c{n}"), &[("tea", 100, 100.0)])]),
        )
        .await;
        if n % 15 == 7 {
            s.crash_and_restart();
        }
    }
    let p = wait_caught_up(&s, "totals", 0).await;
    assert!(p["invocations"].as_u64().unwrap() > 0, "{p}");
    let incremental = state(&s, "totals").await;
    assert_eq!(incremental["orders"], json!(open), "{incremental:?}");
    // Every event folded once: a duplicate or a loss would change this count.
    let cancels = ORDERS.div_ceil(4);
    assert_eq!(
        incremental["events"],
        json!(ORDERS + cancels),
        "{incremental:?}"
    );
    for (sku, amount) in &revenue {
        let got = incremental[&format!("revenue:{sku}")].as_f64().unwrap();
        assert!(
            (got - amount).abs() < 1e-6,
            "revenue of {sku}: {got} != {amount}"
        );
    }
    assert_eq!(
        incremental
            .keys()
            .filter(|k| k.starts_with("order:"))
            .count() as u64,
        ORDERS
    );

    // The command line sees the same.
    let out = sluice(&s, &["projection", "get", "totals", "--output", "json"]);
    let p: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (p["lag"].as_u64(), p["source"]["category"].as_str()),
        (Some(0), Some("order"))
    );
    let out = sluice(&s, &["projection", "state", "totals", "orders"]);
    assert_eq!(out.trim(), open.to_string());
    let out = sluice(&s, &["projection", "list"]);
    assert!(
        out.starts_with("totals  category order → order-totals@live"),
        "{out}"
    );

    // Rebuilt from scratch: the same state.
    let (status, p) = s.call("POST", "/v1/projections/totals/rebuild", None).await;
    assert_eq!(status, 200, "{p}");
    wait_caught_up(&s, "totals", 1).await;
    assert_eq!(state(&s, "totals").await, incremental);
    // And once more across a crash right after the rebuild starts.
    let (status, _) = s.call("POST", "/v1/projections/totals/rebuild", None).await;
    assert_eq!(status, 200);
    s.crash_and_restart();
    wait_caught_up(&s, "totals", 2).await;
    assert_eq!(state(&s, "totals").await, incremental);

    // Deleting the projection drops its state; the function stays.
    let (status, _) = s.call("DELETE", "/v1/projections/totals", None).await;
    assert_eq!(status, 200);
    let (status, body) = s.call("GET", "/v1/projections/totals", None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("projection_not_found"))
    );
    let (status, _) = s.call("GET", "/v1/functions/order-totals", None).await;
    assert_eq!(status, 200);
    let (_, keys) = s
        .call("GET", "/v1/functions/order-totals/state", None)
        .await;
    assert_eq!(keys["keys"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_projection_settings_get_clear_errors() {
    let s = TestServer::start(env!("CARGO_BIN_EXE_sluice"), &[]);
    let cases = [
        (
            json!({"function": "nope", "source": "all"}),
            404,
            "function_not_found",
        ),
        (
            json!({"function": "f", "source": {"category": "a-b"}}),
            400,
            "invalid_config",
        ),
        (
            json!({"function": "f", "source": {"stream": "$all"}}),
            400,
            "invalid_config",
        ),
        (
            json!({"function": "f", "source": "everything"}),
            400,
            "invalid_request",
        ),
        (
            json!({"function": "f", "source": "all", "batch_size": 0}),
            400,
            "invalid_config",
        ),
        (json!({"source": "all"}), 400, "invalid_request"),
    ];
    for (body, status, code) in cases {
        let (got, answer) = s.call("PUT", "/v1/projections/p", Some(body.clone())).await;
        assert_eq!(
            (got, answer["code"].as_str()),
            (status, Some(code)),
            "{body}: {answer}"
        );
    }
    let (status, body) = s.call("POST", "/v1/projections/none/rebuild", None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("projection_not_found"))
    );
}
