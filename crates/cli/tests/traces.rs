//! Trace spans across async hops against a real server exporting OTLP/HTTP (JSON) to a
//! collector this test runs: publish → store → queue → batch invocation → publish →
//! invocation form one trace with the right parents, and the batch links its inputs.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_testkit::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A minimal OTLP/HTTP receiver: keeps every JSON body posted to `/v1/traces`.
async fn collector() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let kept = bodies.clone();
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            let kept = kept.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let body = loop {
                    let n = conn.read(&mut chunk).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                    assert!(head.starts_with("post /v1/traces "), "{head}");
                    assert!(head.contains("content-type: application/json"), "{head}");
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map(|v| v.trim().parse().unwrap())
                        .unwrap();
                    if buf.len() >= end + 4 + len {
                        break buf[end + 4..end + 4 + len].to_vec();
                    }
                };
                kept.lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).unwrap());
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
                    .await;
            });
        }
    });
    (url, bodies)
}

#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace: String,
    id: String,
    parent: String,
    links: Vec<(String, String)>,
}

fn spans(bodies: &[Value]) -> Vec<Span> {
    let mut out = Vec::new();
    for b in bodies {
        for rs in b["resourceSpans"].as_array().unwrap() {
            for ss in rs["scopeSpans"].as_array().unwrap() {
                for s in ss["spans"].as_array().unwrap() {
                    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                    out.push(Span {
                        name: text(&s["name"]),
                        trace: text(&s["traceId"]),
                        id: text(&s["spanId"]),
                        parent: text(&s["parentSpanId"]),
                        links: s["links"]
                            .as_array()
                            .map(Vec::as_slice)
                            .unwrap_or(&[])
                            .iter()
                            .map(|l| (text(&l["traceId"]), text(&l["spanId"])))
                            .collect(),
                    });
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_from_publish_through_a_batch_invocation_to_the_next_function() {
    let (url, bodies) = collector().await;
    let mut s = TestServer::start(
        env!("CARGO_BIN_EXE_sluice"),
        &["--otlp-endpoint", &url, "--otlp-protocol", "http/json"],
    );
    for q in ["work", "q"] {
        s.ok("PUT", &format!("/v1/queues/{q}"), Some(json!({})))
            .await;
    }
    for t in ["orders", "t"] {
        s.ok("PUT", &format!("/v1/topics/{t}"), Some(json!({})))
            .await;
    }
    s.ok(
        "PUT",
        "/v1/topics/orders/subscriptions/to-work",
        Some(json!({"target": {"type": "queue", "queue": "work"}})),
    )
    .await;
    s.ok("PUT", "/v1/topics/t/subscriptions/s", Some(json!({})))
        .await;
    for (name, wasm) in [
        ("ship", sluice_guests::effects()),
        ("noop", sluice_guests::ok()),
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
    s.ok("PUT",
        "/v1/triggers/work-ship",
        Some(json!({"function": "ship", "source": {"queue": "work"}, "batch_size": 2, "batch_window": "3s"})),
    )
    .await;
    s.ok("PUT",
        "/v1/triggers/t-noop",
        Some(json!({"function": "noop", "source": {"subscription": {"topic": "t", "subscription": "s"}}})),
    )
    .await;

    // Two publishes, each carrying its caller's trace in the W3C header.
    let callers = [
        ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"),
        ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"),
    ];
    for (i, (trace, span)) in callers.iter().enumerate() {
        let traceparent = format!("00-{trace}-{span}-01");
        let event = json!({"specversion": "1.0", "source": "/shop", "type": "order.placed", "id": format!("order-{i}")});
        let (status, v) = s
            .call_with(
                "POST",
                "/v1/topics/orders/events",
                &[
                    ("content-type", "application/cloudevents+json"),
                    ("traceparent", &traceparent),
                ],
                serde_json::to_vec(&event).unwrap(),
            )
            .await;
        assert_eq!(status, 200, "{v}");
    }
    // The chain ends with noop handling what ship published.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = s.ok("GET", "/v1/triggers/t-noop", None).await;
        if t["stats"]["invocations"] == 1 && t["stats"]["in_flight"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the chain did not finish: {t}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ship = s.ok("GET", "/v1/triggers/work-ship", None).await;
    assert_eq!(ship["stats"]["invocations"], 1, "one batch of both: {ship}");
    // A graceful stop flushes the last spans.
    assert!(s.terminate(), "the server stops cleanly");

    let all = spans(&bodies.lock().unwrap());
    let one = |name: &str, trace: &str| -> Vec<Span> {
        all.iter()
            .filter(|s| s.name == name && s.trace == trace)
            .cloned()
            .collect()
    };
    let (trace_a, caller_a) = callers[0];
    let (trace_b, caller_b) = callers[1];
    let publish_a = one("publish orders", trace_a);
    let publish_b = one("publish orders", trace_b);
    assert_eq!((publish_a.len(), publish_b.len()), (1, 1), "{all:#?}");
    assert_eq!(
        publish_a[0].parent, caller_a,
        "the caller's span is the parent"
    );
    assert_eq!(publish_b[0].parent, caller_b);
    let stores: Vec<&Span> = all
        .iter()
        .filter(|s| s.name == "store.commit" && s.parent == publish_a[0].id)
        .collect();
    assert_eq!(stores.len(), 1, "the publish's store commit: {all:#?}");
    assert_eq!(stores[0].trace, trace_a);

    let invoke_ship = one("invoke ship", trace_a);
    assert_eq!(invoke_ship.len(), 1, "{all:#?}");
    let ship = &invoke_ship[0];
    assert_eq!(
        ship.parent, publish_a[0].id,
        "the first input's publish is the parent"
    );
    assert_eq!(
        ship.links,
        vec![(trace_b.to_owned(), publish_b[0].id.clone())],
        "the batch links its other input"
    );
    assert!(
        all.iter()
            .any(|s| s.name == "store.commit" && s.parent == ship.id && s.trace == trace_a),
        "the invocation's commit: {all:#?}"
    );
    let invoke_noop = one("invoke noop", trace_a);
    assert_eq!(invoke_noop.len(), 1, "{all:#?}");
    assert_eq!(
        invoke_noop[0].parent, ship.id,
        "what ship published is handled under ship"
    );
    assert!(one("invoke noop", trace_b).is_empty());
}
