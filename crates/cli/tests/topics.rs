//! Black-box tests of topics against a real `sluice serve` process: the three CloudEvents
//! HTTP modes, filtered fan-out, seek, compacted tables, live SSE with resume, and bad input.

use std::time::Duration;

use serde_json::{Value, json};
use sluice_testkit::TestServer;

fn server() -> TestServer {
    TestServer::start(env!("CARGO_BIN_EXE_sluice"), &[])
}

async fn put(s: &TestServer, path: &str, config: Value) -> Value {
    let (status, body) = s.call("PUT", path, Some(config)).await;
    assert!(
        status == 201 || status == 200,
        "PUT {path}: {status} {body}"
    );
    body
}

fn ce(ty: &str, subject: &str, data: Value) -> Value {
    json!({"specversion": "1.0", "source": "/shop", "type": ty, "subject": subject, "data": data})
}

async fn receive(s: &TestServer, topic: &str, sub: &str, max: usize) -> Vec<Value> {
    let (status, got) = s
        .call(
            "POST",
            &format!("/v1/topics/{topic}/subscriptions/{sub}/receive"),
            Some(json!({"max": max})),
        )
        .await;
    assert_eq!(status, 200, "{got}");
    got["messages"].as_array().unwrap().clone()
}

async fn ack(s: &TestServer, topic: &str, sub: &str, msgs: &[Value]) {
    let receipts: Vec<&Value> = msgs.iter().map(|m| &m["receipt"]).collect();
    let (status, got) = s
        .call(
            "POST",
            &format!("/v1/topics/{topic}/subscriptions/{sub}/ack"),
            Some(json!({"receipts": receipts})),
        )
        .await;
    assert_eq!(status, 200, "{got}");
}

/// Receives and acks until empty; returns `event.data.n` in delivery order.
async fn drain(s: &TestServer, topic: &str, sub: &str) -> Vec<u64> {
    let mut out = Vec::new();
    loop {
        let msgs = receive(s, topic, sub, 100).await;
        if msgs.is_empty() {
            return out;
        }
        out.extend(
            msgs.iter()
                .map(|m| m["event"]["data"]["n"].as_u64().unwrap()),
        );
        ack(s, topic, sub, &msgs).await;
    }
}

#[tokio::test]
async fn a_subscription_receive_acks_the_receipts_it_carries() {
    let s = server();
    put(&s, "/v1/topics/t", json!({})).await;
    put(&s, "/v1/topics/t/subscriptions/s", json!({})).await;
    for n in 1..=3 {
        let (status, body) = s
            .call_with(
                "POST",
                "/v1/topics/t/events",
                &[("content-type", "application/cloudevents+json")],
                serde_json::to_vec(&ce("x", "s", json!({"n": n}))).unwrap(),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let first = receive(&s, "t", "s", 2).await;
    let receipts: Vec<&Value> = first.iter().map(|m| &m["receipt"]).collect();
    let (status, got) = s
        .call(
            "POST",
            "/v1/topics/t/subscriptions/s/receive",
            Some(json!({"max": 2, "ack": receipts})),
        )
        .await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["acked"], 2);
    assert_eq!(got["messages"][0]["event"]["data"]["n"], 3);
    let (_, sub) = s.call("GET", "/v1/topics/t/subscriptions/s", None).await;
    assert_eq!(sub["stats"]["leased"], 1, "{sub}");
}

#[tokio::test]
async fn publish_in_structured_batch_and_binary_mode_and_read_back() {
    let s = server();
    let t = put(&s, "/v1/topics/orders", json!({})).await;
    assert_eq!(t["retention"], "7d");
    let (status, out) = s
        .call_with(
            "POST",
            "/v1/topics/orders/events",
            &[(
                "content-type",
                "application/cloudevents+json; charset=utf-8",
            )],
            serde_json::to_vec(
                &json!({"specversion": "1.0", "id": "e-1", "source": "/shop",
                "type": "order.placed", "data": {"n": 1}}),
            )
            .unwrap(),
        )
        .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["events"][0], json!({"id": "e-1", "offset": 0}));
    s.publish("orders", &[ce("a", "x", json!(2)), ce("b", "y", json!(3))])
        .await;
    let binary = [
        ("application/json", b"{\"n\": 4}".to_vec()),
        ("text/plain", b"hello".to_vec()),
        ("application/octet-stream", vec![0xff, 0x00, 0x01]),
    ];
    for (ct, body) in binary {
        let (status, out) = s
            .call_with(
                "POST",
                "/v1/topics/orders/events",
                &[
                    ("content-type", ct),
                    ("ce-specversion", "1.0"),
                    ("ce-source", "/binary"),
                    ("ce-type", "order.note"),
                    ("ce-subject", "order%2042"),
                    ("ce-tenant", "acme"),
                ],
                body,
            )
            .await;
        assert_eq!(status, 200, "{ct}: {out}");
    }
    let (status, page) = s
        .call("GET", "/v1/topics/orders/events?from=0&limit=10", None)
        .await;
    assert_eq!(status, 200);
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 6);
    assert_eq!(page["next"], 6);
    let e0 = &events[0]["event"];
    assert_eq!(
        (e0["id"].as_str(), e0["data"]["n"].as_u64()),
        (Some("e-1"), Some(1))
    );
    assert!(
        e0["time"].as_str().unwrap().ends_with('Z'),
        "time filled in: {e0}"
    );
    let e1 = &events[1]["event"];
    assert_eq!(e1["id"].as_str().unwrap().len(), 36, "id filled in: {e1}");
    let json_binary = &events[3]["event"];
    assert_eq!(json_binary["data"], json!({"n": 4}));
    assert_eq!(json_binary["subject"], "order 42");
    assert_eq!(json_binary["tenant"], "acme");
    assert_eq!(json_binary["datacontenttype"], "application/json");
    assert_eq!(events[4]["event"]["data"], "hello");
    assert_eq!(events[5]["event"]["data_base64"], "/wAB");
    let (_, page) = s
        .call(
            "GET",
            "/v1/topics/orders/events?from=offset:4&limit=1",
            None,
        )
        .await;
    assert_eq!(page["events"][0]["offset"], 4);
    assert_eq!(page["next"], 5);
    let (_, t) = s.call("GET", "/v1/topics/orders", None).await;
    assert_eq!(t["stats"]["events"], 6);
    let (_, list) = s.call("GET", "/v1/topics", None).await;
    assert_eq!(list["topics"][0]["name"], "orders");
}

#[tokio::test]
async fn filtered_fan_out_seek_and_dead_letters_over_http() {
    let s = server();
    put(&s, "/v1/topics/orders", json!({})).await;
    put(&s, "/v1/queues/dead", json!({})).await;
    put(&s, "/v1/topics/orders/subscriptions/all", json!({})).await;
    put(
        &s,
        "/v1/topics/orders/subscriptions/big",
        json!({"filter": {"data": {"n": [{"numeric": [">=", 15]}]}},
               "max_attempts": 1, "dead_letter_queue": "dead"}),
    )
    .await;
    let sub = put(
        &s,
        "/v1/topics/orders/subscriptions/eu",
        json!({"filter": {"$or": [{"subject": [{"prefix": "eu-"}]}, {"type": ["order.vip"]}]}}),
    )
    .await;
    assert_eq!(sub["start"], "latest");
    let events: Vec<Value> = (0..20)
        .map(|i| {
            let region = if i % 2 == 0 { "eu" } else { "us" };
            let ty = if i == 5 { "order.vip" } else { "order.placed" };
            ce(ty, &format!("{region}-{i}"), json!({"n": i}))
        })
        .collect();
    s.publish("orders", &events).await;
    assert_eq!(
        drain(&s, "orders", "all").await,
        (0..20).collect::<Vec<_>>()
    );
    assert_eq!(
        drain(&s, "orders", "eu").await,
        vec![0, 2, 4, 5, 6, 8, 10, 12, 14, 16, 18]
    );
    // `big` nacks one event: with max_attempts 1 it goes to the dead-letter queue.
    let msgs = receive(&s, "orders", "big", 10).await;
    assert_eq!(msgs.len(), 5);
    assert_eq!(msgs[0]["offset"], 15);
    assert_eq!(msgs[0]["event"]["type"], "order.placed");
    let (status, _) = s
        .call(
            "POST",
            "/v1/topics/orders/subscriptions/big/nack",
            Some(json!({"receipts": [msgs[0]["receipt"]], "reason": "no stock"})),
        )
        .await;
    assert_eq!(status, 200);
    ack(&s, "orders", "big", &msgs[1..]).await;
    let (_, dead) = s
        .call("POST", "/v1/queues/dead/receive", Some(json!({"max": 10})))
        .await;
    let dl = &dead["messages"][0];
    assert_eq!(dl["dead_letter"]["source_queue"], "orders/big");
    assert_eq!(dl["dead_letter"]["error"], "no stock");
    assert_eq!(dl["body"]["data"]["n"], 15);
    let (_, info) = s
        .call("GET", "/v1/topics/orders/subscriptions/big", None)
        .await;
    assert_eq!(info["stats"]["dead_lettered"], 1);
    assert_eq!(
        (info["cursor"].as_u64(), info["backlog"].as_u64()),
        (Some(20), Some(0))
    );
    // Seek back to an offset: exactly the retained events from there, again.
    let (status, out) = s
        .call(
            "POST",
            "/v1/topics/orders/subscriptions/all/seek",
            Some(json!({"to": "offset:17"})),
        )
        .await;
    assert_eq!((status, out["offset"].as_u64()), (200, Some(17)));
    assert_eq!(drain(&s, "orders", "all").await, vec![17, 18, 19]);
    // And to a time: everything published at or after it.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (_, page) = s
        .call("GET", "/v1/topics/orders/events?from=latest", None)
        .await;
    assert_eq!(page["events"], json!([]));
    let mark = page["next"].as_u64().unwrap();
    let now = s.call("GET", "/v1/topics/orders", None).await.1;
    assert_eq!(now["stats"]["next_offset"].as_u64(), Some(mark));
    let later: Vec<Value> = (20..23)
        .map(|i| ce("order.placed", "eu-x", json!({"n": i})))
        .collect();
    s.publish("orders", &later).await;
    let (_, page) = s
        .call("GET", "/v1/topics/orders/events?from=20", None)
        .await;
    let t20 = page["events"][0]["event"]["time"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, out) = s
        .call(
            "POST",
            "/v1/topics/orders/subscriptions/all/seek",
            Some(json!({"to": format!("time:{t20}")})),
        )
        .await;
    assert_eq!((status, out["offset"].as_u64()), (200, Some(20)), "{out}");
    assert_eq!(drain(&s, "orders", "all").await, vec![20, 21, 22]);
    // Redrive brings the dead-lettered event back to its subscription.
    let (_, dead) = s
        .call(
            "POST",
            "/v1/queues/dead/nack",
            Some(json!({"receipts": [dl["receipt"]], "delay": "0s"})),
        )
        .await;
    assert_eq!(dead["nacked"], 1);
    let (_, r) = s
        .call("POST", "/v1/topics/orders/subscriptions/big/redrive", None)
        .await;
    assert_eq!(r["moved"], 1);
    let again = drain(&s, "orders", "big").await;
    assert!(again.contains(&15), "{again:?}");
}

#[tokio::test]
async fn compacted_topic_serves_its_table_by_key() {
    let s = server();
    put(
        &s,
        "/v1/topics/customers",
        json!({"compaction": {"tombstone_type": "customer.deleted"}}),
    )
    .await;
    for round in 0..2 {
        let events: Vec<Value> = (0..4)
            .map(|k| {
                ce(
                    "customer.updated",
                    &format!("c{k}"),
                    json!({"round": round}),
                )
            })
            .collect();
        s.publish("customers", &events).await;
    }
    s.publish("customers", &[ce("customer.deleted", "c3", json!({}))])
        .await;
    let (status, got) = s.call("GET", "/v1/topics/customers/table/c1", None).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["entry"]["event"]["data"]["round"], 1);
    assert_eq!(got["entry"]["offset"], 5);
    let (status, p) = s.call("GET", "/v1/topics/customers/table/c3", None).await;
    assert_eq!((status, p["code"].as_str()), (404, Some("key_not_found")));
    let (_, page) = s
        .call("GET", "/v1/topics/customers/table?limit=2", None)
        .await;
    let keys: Vec<&str> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, vec!["c0", "c1"]);
    assert_eq!(page["next_after"], "c1");
    let (_, page) = s
        .call("GET", "/v1/topics/customers/table?after=c1", None)
        .await;
    assert_eq!(page["entries"].as_array().unwrap().len(), 1);
    assert_eq!(page["next_after"], Value::Null);
    let (_, t) = s.call("GET", "/v1/topics/customers", None).await;
    assert_eq!(t["stats"]["keys"], 3);
}

/// Reads SSE frames from a streaming response until `n` events arrived; returns
/// `(id, data.n)` of each.
async fn read_sse(resp: &mut reqwest::Response, n: usize) -> Vec<(u64, u64)> {
    let mut buf = String::new();
    let mut out = Vec::new();
    while out.len() < n {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .expect("an event within 10s")
            .unwrap()
            .expect("stream stays open");
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let mut id = None;
            let mut data = None;
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().parse::<u64>().unwrap());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = Some(serde_json::from_str::<Value>(v.trim()).unwrap());
                }
            }
            if let (Some(id), Some(data)) = (id, data) {
                out.push((id, data["data"]["n"].as_u64().unwrap()));
            }
        }
    }
    out
}

#[tokio::test]
async fn sse_clients_resume_after_last_event_id_and_miss_nothing() {
    let s = server();
    put(&s, "/v1/topics/live", json!({})).await;
    put(
        &s,
        "/v1/topics/live/subscriptions/even",
        json!({"filter": {"data": {"n": [{"numeric": ["<", 1000]}]}, "subject": ["even"]},
               "start": "earliest"}),
    )
    .await;
    let http = reqwest::Client::new();
    let batch = |range: std::ops::Range<u64>| -> Vec<Value> {
        range
            .map(|i| {
                ce(
                    "tick",
                    if i % 2 == 0 { "even" } else { "odd" },
                    json!({"n": i}),
                )
            })
            .collect()
    };
    s.publish("live", &batch(0..5)).await;
    let mut resp = http
        .get(format!("{}/v1/topics/live/stream?from=earliest", s.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let first = read_sse(&mut resp, 5).await;
    assert_eq!(first, (0..5).map(|i| (i, i)).collect::<Vec<_>>());
    // Live: an event published now arrives on the open stream.
    s.publish("live", &batch(5..7)).await;
    let live = read_sse(&mut resp, 2).await;
    assert_eq!(live, vec![(5, 5), (6, 6)]);
    drop(resp);
    // Published while disconnected, then resumed after the last id seen.
    s.publish("live", &batch(7..12)).await;
    let mut resp = http
        .get(format!("{}/v1/topics/live/stream", s.url()))
        .header("Last-Event-ID", "6")
        .send()
        .await
        .unwrap();
    let resumed = read_sse(&mut resp, 5).await;
    assert_eq!(resumed, (7..12).map(|i| (i, i)).collect::<Vec<_>>());
    // A subscription's stream carries what its filter selects.
    let mut resp = http
        .get(format!(
            "{}/v1/topics/live/subscriptions/even/stream",
            s.url()
        ))
        .send()
        .await
        .unwrap();
    let even = read_sse(&mut resp, 6).await;
    assert_eq!(
        even.iter().map(|e| e.1).collect::<Vec<_>>(),
        vec![0, 2, 4, 6, 8, 10]
    );
    // And a topic stream with a filter in the query.
    let filter = "%7B%22subject%22%3A%5B%22odd%22%5D%7D";
    let mut resp = http
        .get(format!(
            "{}/v1/topics/live/stream?from=earliest&filter={filter}",
            s.url()
        ))
        .send()
        .await
        .unwrap();
    let odd = read_sse(&mut resp, 2).await;
    assert_eq!(odd, vec![(1, 1), (3, 3)]);
}

#[tokio::test]
async fn bad_topic_input_gets_its_code_and_loses_nothing() {
    let s = server();
    put(&s, "/v1/topics/t", json!({"max_event_size": 300})).await;
    put(&s, "/v1/topics/c", json!({"compaction": {}})).await;
    put(&s, "/v1/queues/q", json!({})).await;
    put(
        &s,
        "/v1/topics/t/subscriptions/fwd",
        json!({"target": {"type": "queue", "queue": "q"}}),
    )
    .await;
    let ce_json = ("content-type", "application/cloudevents+json");
    let batch = ("content-type", "application/cloudevents-batch+json");
    let ev = |v: Value| serde_json::to_vec(&v).unwrap();
    let too_many: Vec<Value> = (0..1_001).map(|i| ce("x", "s", json!(i))).collect();
    type Case<'a> = (
        &'a str,
        &'a str,
        Vec<(&'a str, &'a str)>,
        Vec<u8>,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/v1/topics/t/events",
            vec![ce_json],
            ev(json!({"specversion": "1.0", "type": "x"})),
            400,
            "invalid_event",
        ),
        (
            "POST",
            "/v1/topics/t/events",
            vec![ce_json],
            ev(json!({"specversion": "1.0", "source": "/s"})),
            400,
            "invalid_event",
        ),
        (
            "POST",
            "/v1/topics/t/events",
            vec![ce_json],
            ev(json!({"specversion": "0.3", "source": "/s", "type": "x"})),
            400,
            "invalid_event",
        ),
        (
            "POST",
            "/v1/topics/t/events",
            vec![ce_json],
            ev(json!({"specversion": "1.0", "source": "/s", "type": "x", "time": "noon"})),
            400,
            "invalid_event",
        ),
        (
            "POST",
            "/v1/topics/t/events",
            vec![ce_json],
            ev(json!([1])),
            400,
            "invalid_event",
        ),
        (
            "POST",
            "/v1/topics/t/events",
            vec![ce_json],
            b"{oops".to_vec(),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/v1/topics/t/events",
            vec![batch],
            ev(json!({"not": "an array"})),
            400,
            "invalid_event",
        ),
        (
            "POST",
            "/v1/topics/t/events",
            vec![batch],
            ev(json!([])),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/topics/t/events",
            vec![batch],
            ev(json!(too_many)),
            413,
            "batch_too_large",
        ),
        (
            "POST",
            "/v1/topics/t/events",
            vec![("content-type", "application/json")],
            ev(json!({"a": 1})),
            415,
            "unsupported_media_type",
        ),
        (
            "POST",
            "/v1/topics/t/events",
            vec![
                ("content-type", "application/json"),
                ("ce-specversion", "1.0"),
                ("ce-source", "/s"),
                ("ce-type", "x"),
            ],
            b"{not json".to_vec(),
            400,
            "invalid_event",
        ),
        (
            "POST",
            "/v1/topics/t/events",
            vec![("ce-specversion", "1.0"), ("ce-type", "x")],
            Vec::new(),
            400,
            "invalid_event",
        ),
        (
            "POST",
            "/v1/topics/t/events",
            vec![ce_json],
            ev(json!({"specversion": "1.0", "source": "/s", "type": "x", "data": "y".repeat(400)})),
            413,
            "event_too_large",
        ),
        (
            "POST",
            "/v1/topics/c/events",
            vec![ce_json],
            ev(json!({"specversion": "1.0", "source": "/s", "type": "x"})),
            400,
            "invalid_event",
        ),
        (
            "POST",
            "/v1/topics/nope/events",
            vec![ce_json],
            ev(json!({"specversion": "1.0", "source": "/s", "type": "x"})),
            404,
            "topic_not_found",
        ),
        (
            "PUT",
            "/v1/topics/t/subscriptions/s",
            vec![("content-type", "application/json")],
            ev(json!({"filter": {"type": "x"}})),
            400,
            "invalid_filter",
        ),
        (
            "PUT",
            "/v1/topics/t/subscriptions/s",
            vec![("content-type", "application/json")],
            ev(json!({"filter": {"data": {"n": [{"numeric": [">", "a"]}]}}})),
            400,
            "invalid_filter",
        ),
        (
            "PUT",
            "/v1/topics/t/subscriptions/s",
            vec![("content-type", "application/json")],
            ev(json!({"start": "yesterday"})),
            400,
            "invalid_request",
        ),
        (
            "PUT",
            "/v1/topics/t/subscriptions/s",
            vec![("content-type", "application/json")],
            ev(json!({"start": "offset:99"})),
            400,
            "position_out_of_range",
        ),
        (
            "PUT",
            "/v1/topics/t/subscriptions/s",
            vec![("content-type", "application/json")],
            ev(json!({"target": {"type": "queue", "queue": "missing"}})),
            400,
            "target_queue_not_found",
        ),
        (
            "PUT",
            "/v1/topics/t/subscriptions/s",
            vec![("content-type", "application/json")],
            ev(json!({"max_attempts": 2})),
            400,
            "invalid_config",
        ),
        (
            "PUT",
            "/v1/topics/nope/subscriptions/s",
            vec![("content-type", "application/json")],
            ev(json!({})),
            404,
            "topic_not_found",
        ),
        (
            "PUT",
            "/v1/topics/t",
            vec![("content-type", "application/json")],
            ev(json!({"retention": "1s"})),
            400,
            "invalid_config",
        ),
        (
            "PUT",
            "/v1/topics/t",
            vec![("content-type", "application/json")],
            ev(json!({"compaction": {}})),
            409,
            "compaction_immutable",
        ),
        (
            "PUT",
            "/v1/topics/bad%2Fname",
            vec![("content-type", "application/json")],
            ev(json!({})),
            400,
            "invalid_name",
        ),
        (
            "GET",
            "/v1/topics/nope",
            vec![],
            Vec::new(),
            404,
            "topic_not_found",
        ),
        (
            "GET",
            "/v1/topics/t/subscriptions/nope",
            vec![],
            Vec::new(),
            404,
            "subscription_not_found",
        ),
        (
            "POST",
            "/v1/topics/t/subscriptions/nope/receive",
            vec![],
            Vec::new(),
            404,
            "subscription_not_found",
        ),
        (
            "POST",
            "/v1/topics/t/subscriptions/nope/seek",
            vec![("content-type", "application/json")],
            ev(json!({"to": "earliest"})),
            404,
            "subscription_not_found",
        ),
        (
            "GET",
            "/v1/topics/t/table",
            vec![],
            Vec::new(),
            409,
            "not_compacted",
        ),
        (
            "POST",
            "/v1/topics/t/subscriptions/fwd/receive",
            vec![],
            Vec::new(),
            409,
            "subscription_not_pull",
        ),
        (
            "GET",
            "/v1/topics/t/events?limit=0",
            vec![],
            Vec::new(),
            400,
            "out_of_range",
        ),
        (
            "GET",
            "/v1/topics/t/events?from=soon",
            vec![],
            Vec::new(),
            400,
            "invalid_request",
        ),
        (
            "GET",
            "/v1/topics/t/stream?filter=%7Bbad",
            vec![],
            Vec::new(),
            400,
            "invalid_filter",
        ),
        (
            "GET",
            "/v1/topics/t/stream",
            vec![("last-event-id", "abc")],
            Vec::new(),
            400,
            "invalid_request",
        ),
    ];
    for (method, path, headers, body, status, code) in cases {
        let (got_status, got) = s.call_with(method, path, &headers, body).await;
        assert_eq!(
            (got_status, got["code"].as_str()),
            (status, Some(code)),
            "{method} {path}: {got}"
        );
    }
    // A batch with one bad event stores the others and reports the bad one.
    let out = s
        .publish(
            "t",
            &[
                ce("ok", "a", json!(1)),
                json!({"specversion": "1.0", "source": "/s"}),
                ce("ok", "b", json!(2)),
            ],
        )
        .await;
    assert_eq!(out["events"][1], Value::Null);
    assert_eq!(out["failed"][0]["index"], 1);
    assert_eq!(out["failed"][0]["code"], "invalid_event");
    assert_eq!(s.call("GET", "/readyz", None).await.0, 200);
    let (_, t) = s.call("GET", "/v1/topics/t", None).await;
    assert_eq!(t["stats"]["events"], 2, "only the valid events were stored");
}

/// Runs `sluice ARGS --server URL --output json`; returns stdout as JSON lines.
fn cli(s: &TestServer, args: &[&str]) -> Vec<Value> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .args(["--server", s.url(), "--output", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sluice {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn the_cli_drives_topics_and_subscriptions() {
    let s = server();
    cli(&s, &["topic", "create", "orders", "--retention", "1d"]);
    cli(
        &s,
        &[
            "topic",
            "create",
            "customers",
            "--compact",
            "--tombstone-type",
            "gone",
        ],
    );
    cli(
        &s,
        &[
            "sub",
            "create",
            "orders",
            "big",
            "--filter",
            r#"{"data":{"n":[{"numeric":[">",1]}]}}"#,
            "--start",
            "earliest",
        ],
    );
    for n in 0..4 {
        let data = format!(r#"{{"n":{n}}}"#);
        let out = cli(
            &s,
            &[
                "topic",
                "publish",
                "orders",
                "--type",
                "order.placed",
                "--subject",
                "o",
                "--data",
                &data,
            ],
        );
        assert_eq!(out[0]["events"][0]["offset"], n);
    }
    cli(
        &s,
        &[
            "topic",
            "publish",
            "customers",
            "--type",
            "set",
            "--subject",
            "c1",
            "--data",
            "1",
        ],
    );
    let got = cli(
        &s,
        &["sub", "receive", "orders", "big", "--max", "10", "--ack"],
    );
    let ns: Vec<&Value> = got[0]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["event"]["data"]["n"])
        .collect();
    assert_eq!(ns, vec![&json!(2), &json!(3)]);
    let read = cli(
        &s,
        &["topic", "read", "orders", "--from", "1", "--limit", "2"],
    );
    assert_eq!(read[0]["next"], 3);
    let table = cli(&s, &["topic", "table", "customers", "c1"]);
    assert_eq!(table[0]["entry"]["event"]["data"], 1);
    let seek = cli(&s, &["sub", "seek", "orders", "big", "offset:3"]);
    assert_eq!(seek[0]["offset"], 3);
    let info = cli(&s, &["sub", "get", "orders", "big"]);
    assert_eq!(info[0]["cursor"], 3);
    let list = cli(&s, &["topic", "list"]);
    assert_eq!(list[0]["topics"].as_array().unwrap().len(), 2);
    cli(&s, &["sub", "delete", "orders", "big"]);
    cli(&s, &["topic", "delete", "orders"]);
    let list = cli(&s, &["topic", "list"]);
    assert_eq!(list[0]["topics"][0]["name"], "customers");
}
