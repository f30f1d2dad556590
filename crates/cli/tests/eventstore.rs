//! The event store over the real server: writers racing on expected versions, retried
//! appends, catch-up subscriptions switching to live under concurrent appends, bad input,
//! and the `sluice stream` commands.

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use sluice_testkit::TestServer;

const WRITERS: usize = 8;
const ROUNDS: u64 = 1_000;

fn event(id: &str) -> Value {
    json!({"specversion": "1.0", "source": "/test", "type": "tick", "id": id, "data": {"id": id}})
}

fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder().timeout(timeout).build().unwrap()
}

async fn append(
    http: &reqwest::Client,
    url: &str,
    stream: &str,
    expected: Value,
    ids: &[String],
) -> reqwest::Result<(u16, Value)> {
    let events: Vec<Value> = ids.iter().map(|id| event(id)).collect();
    let resp = http
        .post(format!("{url}/v1/streams/{stream}/events"))
        .json(&json!({"expected_version": expected, "events": events}))
        .send()
        .await?;
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(Value::Null);
    Ok((status, body))
}

/// Every event of `stream`, forward, as (version, id).
async fn read_stream(server: &TestServer, stream: &str) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let (status, page) = server
            .call(
                "GET",
                &format!("/v1/streams/{stream}/events?from={from}&limit=1000"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        for e in page["events"].as_array().unwrap() {
            out.push((
                e["version"].as_u64().unwrap(),
                e["event"]["id"].as_str().unwrap().to_owned(),
            ));
        }
        match page["next"].as_u64() {
            Some(n) => from = n,
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_writers_race_and_exactly_one_wins_each_round() {
    let server = TestServer::start(env!("CARGO_BIN_EXE_sluice"), &[]);
    let url = server.url().to_owned();
    let http = client(Duration::from_secs(30));
    for round in 0..ROUNDS {
        let expected = if round == 0 {
            json!("no_stream")
        } else {
            json!(round - 1)
        };
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let (http, url, expected) = (http.clone(), url.clone(), expected.clone());
            tasks.push(tokio::spawn(async move {
                let ids = vec![format!("r{round}-w{w}")];
                append(&http, &url, "race-1", expected, &ids).await.unwrap()
            }));
        }
        let mut wins = 0;
        for t in tasks {
            let (status, body) = t.await.unwrap();
            match status {
                200 => {
                    wins += 1;
                    assert_eq!(body["first_version"], round, "{body}");
                }
                409 => {
                    assert_eq!(body["code"], "wrong_expected_version", "{body}");
                    assert_eq!(body["current_version"], round, "{body}");
                }
                _ => panic!("round {round}: unexpected answer {status} {body}"),
            }
        }
        assert_eq!(wins, 1, "round {round}: exactly one writer wins");
    }
    let events = read_stream(&server, "race-1").await;
    assert_eq!(events.len() as u64, ROUNDS);
    for (i, (version, id)) in events.iter().enumerate() {
        assert_eq!(*version, i as u64, "versions are gapless");
        assert!(id.starts_with(&format!("r{i}-")), "round {i} wrote {id}");
    }
}

/// Sends an append and hangs up without reading the answer, as a client whose timeout
/// fired would: the server may or may not have appended by then.
async fn append_and_hang_up(url: &str, stream: &str, expected: &Value, ids: &[String]) {
    use tokio::io::AsyncWriteExt;
    let events: Vec<Value> = ids.iter().map(|id| event(id)).collect();
    let body = json!({"expected_version": expected, "events": events}).to_string();
    let addr = url.strip_prefix("http://").unwrap();
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST /v1/streams/{stream}/events HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    tcp.flush().await.unwrap();
    drop(tcp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_retried_after_a_timeout_are_not_duplicated() {
    let server = TestServer::start(env!("CARGO_BIN_EXE_sluice"), &[]);
    let url = server.url().to_owned();
    let http = client(Duration::from_secs(30));
    let mut already = 0;
    for i in 0..50u64 {
        let stream = format!("retry-{}", i % 5);
        let ids: Vec<String> = (0..3).map(|j| format!("e{i}-{j}")).collect();
        let expected = if i < 5 {
            json!("no_stream")
        } else {
            json!(i / 5 * 3 - 1)
        };
        append_and_hang_up(&url, &stream, &expected, &ids).await;
        // Retried after a while (sometimes at once, racing the first attempt).
        tokio::time::sleep(Duration::from_millis(i % 3 * 5)).await;
        let (status, body) = append(&http, &url, &stream, expected.clone(), &ids)
            .await
            .unwrap();
        assert_eq!(status, 200, "retry of append {i} succeeds: {body}");
        assert_eq!(body["first_version"], i / 5 * 3, "{body}");
        if body["appended"] == false {
            already += 1;
        }
        // And once more, after it surely happened.
        let (status, body) = append(&http, &url, &stream, expected, &ids).await.unwrap();
        assert_eq!((status, &body["appended"]), (200, &json!(false)), "{body}");
    }
    eprintln!("{already} of 50 retries found their append already done");
    assert!(
        already > 0,
        "some first attempts were appended before the retry"
    );
    for s in 0..5 {
        let events = read_stream(&server, &format!("retry-{s}")).await;
        assert_eq!(events.len(), 30, "each append once");
        let ids: HashSet<&String> = events.iter().map(|(_, id)| id).collect();
        assert_eq!(ids.len(), 30, "no event twice");
    }
}

/// Reads SSE frames from `resp` until `done` says enough; returns (id, data) pairs.
async fn read_sse(
    resp: &mut reqwest::Response,
    mut done: impl FnMut(&[(u64, Value)]) -> bool,
) -> Vec<(u64, Value)> {
    let mut buf = String::new();
    let mut got = Vec::new();
    while !done(&got) {
        let chunk = tokio::time::timeout(Duration::from_secs(20), resp.chunk())
            .await
            .expect("events keep arriving")
            .unwrap()
            .expect("the stream stays open");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let mut id = None;
            let mut data = String::new();
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse::<u64>().ok();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if let Some(id) = id {
                got.push((id, serde_json::from_str(&data).unwrap()));
            }
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_switches_to_live_without_gap_or_duplicate() {
    let server = TestServer::start(env!("CARGO_BIN_EXE_sluice"), &[]);
    let url = server.url().to_owned();
    let http = client(Duration::from_secs(30));
    // A history to catch up on.
    for b in 0..30 {
        let ids: Vec<String> = (0..10).map(|j| format!("h{b}-{j}")).collect();
        let (status, _) = append(&http, &url, "feed-1", json!("any"), &ids)
            .await
            .unwrap();
        assert_eq!(status, 200);
    }
    const TOTAL: u64 = 600;
    // Appends continue while the subscriber catches up and after it has.
    let writer = {
        let (http, url) = (http.clone(), url.clone());
        tokio::spawn(async move {
            for b in 0..100 {
                let ids: Vec<String> = (0..3).map(|j| format!("l{b}-{j}")).collect();
                append(&http, &url, "feed-1", json!("any"), &ids)
                    .await
                    .unwrap();
                // Other streams interleave in $all.
                let other = vec![format!("o{b}")];
                append(&http, &url, "other-1", json!("any"), &other)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let mut stream = http
        .get(format!("{url}/v1/streams/feed-1/stream?from=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut all = http
        .get(format!("{url}/v1/streams/$all/stream?from=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(all.status(), 200);
    let got = read_sse(&mut stream, |g| g.len() as u64 >= TOTAL).await;
    writer.await.unwrap();
    let versions: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        versions,
        (0..TOTAL).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    for (v, e) in &got {
        assert_eq!(e["version"], *v);
        assert_eq!(e["stream"], "feed-1");
    }
    // $all: every event once, in position order, each stream in version order.
    let total_all = TOTAL + 100;
    let got = read_sse(&mut all, |g| g.len() as u64 >= total_all).await;
    let positions: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    let feed: Vec<u64> = got
        .iter()
        .filter(|(_, e)| e["stream"] == "feed-1")
        .map(|(_, e)| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(feed, (0..TOTAL).collect::<Vec<_>>());
    // Resuming after the last seen version with Last-Event-ID gives only what follows.
    let (status, _) = append(&http, &url, "feed-1", json!(TOTAL - 1), &["z".into()])
        .await
        .unwrap();
    assert_eq!(status, 200);
    let mut resumed = http
        .get(format!("{url}/v1/streams/feed-1/stream"))
        .header("last-event-id", (TOTAL - 1).to_string())
        .send()
        .await
        .unwrap();
    let got = read_sse(&mut resumed, |g| !g.is_empty()).await;
    assert_eq!(got[0].0, TOTAL);
    assert_eq!(got[0].1["event"]["id"], "z");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_loses_nothing() {
    let server = TestServer::start(env!("CARGO_BIN_EXE_sluice"), &[]);
    let ok = json!({"expected_version": "no_stream", "events": [event("a")]});
    assert_eq!(
        server
            .call("POST", "/v1/streams/order-1/events", Some(ok))
            .await
            .0,
        200
    );
    let cases: Vec<(&str, &str, Option<Value>, u16, &str)> = vec![
        (
            "POST",
            "/v1/streams/order-1/events",
            Some(json!({"expected_version": "maybe", "events": [event("b")]})),
            400,
            "invalid_expected_version",
        ),
        (
            "POST",
            "/v1/streams/order-1/events",
            Some(json!({"expected_version": -1, "events": [event("b")]})),
            400,
            "invalid_expected_version",
        ),
        (
            "POST",
            "/v1/streams/order-1/events",
            Some(json!({"expected_version": 1.5, "events": [event("b")]})),
            400,
            "invalid_expected_version",
        ),
        (
            "POST",
            "/v1/streams/order-1/events",
            Some(json!({"expected_version": 7, "events": [event("b")]})),
            409,
            "wrong_expected_version",
        ),
        (
            "POST",
            "/v1/streams/order-1/events",
            Some(json!({"expected_version": 0, "events": [event("a")]})),
            409,
            "event_id_conflict",
        ),
        (
            "POST",
            "/v1/streams/a%20b/events",
            Some(json!({"events": [event("b")]})),
            400,
            "invalid_stream",
        ),
        (
            "POST",
            "/v1/streams/$all/events",
            Some(json!({"events": [event("b")]})),
            400,
            "invalid_stream",
        ),
        (
            "POST",
            "/v1/streams/order-1/events",
            Some(json!({"events": []})),
            400,
            "invalid_message",
        ),
        (
            "POST",
            "/v1/streams/order-1/events",
            Some(json!({"events": [{"specversion": "1.0", "type": "t"}]})),
            400,
            "invalid_event",
        ),
        (
            "POST",
            "/v1/streams/order-1/events",
            Some(json!({"events": "nope"})),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/streams/order-1/events",
            Some(json!({"events": [event("b")], "extra": 1})),
            400,
            "invalid_request",
        ),
        (
            "GET",
            "/v1/streams/order-1/events?direction=sideways",
            None,
            400,
            "invalid_request",
        ),
        (
            "GET",
            "/v1/streams/order-1/events?from=abc",
            None,
            400,
            "invalid_request",
        ),
        (
            "GET",
            "/v1/streams/order-1/events?limit=0",
            None,
            400,
            "out_of_range",
        ),
        (
            "GET",
            "/v1/streams/nope-1/events",
            None,
            404,
            "stream_not_found",
        ),
        (
            "GET",
            "/v1/categories/a-b/events",
            None,
            400,
            "invalid_stream",
        ),
        (
            "PUT",
            "/v1/streams/order-1/metadata",
            Some(json!({"max_count": "many"})),
            400,
            "invalid_request",
        ),
        (
            "PUT",
            "/v1/streams/order-1/snapshot",
            Some(json!({"version": 5, "data": {}})),
            400,
            "invalid_snapshot",
        ),
        (
            "GET",
            "/v1/streams/order-1/snapshot",
            None,
            404,
            "snapshot_not_found",
        ),
        (
            "DELETE",
            "/v1/streams/order-1?expected_version=9",
            None,
            409,
            "wrong_expected_version",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let (got, answer) = server.call(method, path, body).await;
        assert_eq!(
            (got, answer["code"].as_str()),
            (status, Some(code)),
            "{method} {path}: {answer}"
        );
    }
    let (_, body) = server
        .call_raw("POST", "/v1/streams/order-1/events", b"{not json".to_vec())
        .await;
    assert_eq!(body["code"], "invalid_json");
    // Nothing of that was appended.
    assert_eq!(read_stream(&server, "order-1").await.len(), 1);

    // A hard-deleted stream refuses appends for good.
    assert_eq!(
        server
            .call("DELETE", "/v1/streams/order-1?hard=true", None)
            .await
            .0,
        204
    );
    let (status, body) = server
        .call(
            "POST",
            "/v1/streams/order-1/events",
            Some(json!({"events": [event("c")]})),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (410, Some("stream_deleted"))
    );
    let (status, body) = server.call("GET", "/v1/streams/order-1/events", None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (410, Some("stream_deleted"))
    );
    assert_eq!(server.call("GET", "/healthz", None).await.0, 200);
}

fn cli(server: &TestServer, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .env("SLUICE_SERVER", server.url())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sluice {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_commands_append_read_and_manage_streams() {
    let server = TestServer::start(env!("CARGO_BIN_EXE_sluice"), &[]);
    // The same append twice: the second is recognised as a retry.
    for want in ["appended: cart-7 versions 0..=0", "already appended"] {
        let out = cli(
            &server,
            &[
                "stream",
                "append",
                "cart-7",
                "--type",
                "item.added",
                "--id",
                "i1",
                "--data",
                r#"{"sku":"a"}"#,
                "--expected-version",
                "no_stream",
            ],
        );
        assert!(out.contains(want), "{out}");
    }
    cli(
        &server,
        &[
            "stream",
            "append",
            "cart-7",
            "--type",
            "item.removed",
            "--expected-version",
            "0",
        ],
    );
    let out = cli(&server, &["stream", "read", "cart-7", "--output", "json"]);
    let page: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(page["events"].as_array().unwrap().len(), 2);
    let out = cli(
        &server,
        &["stream", "read", "cart-7", "--backward", "--limit", "1"],
    );
    assert!(out.starts_with("cart-7@1"), "{out}");
    let out = cli(&server, &["stream", "read", "--category", "cart"]);
    assert_eq!(out.lines().count(), 2, "{out}");
    let out = cli(&server, &["stream", "read", "--event-type", "item.removed"]);
    assert_eq!(out.lines().count(), 1, "{out}");
    let out = cli(&server, &["stream", "read", "$all"]);
    assert_eq!(out.lines().count(), 2, "{out}");
    let out = cli(&server, &["stream", "meta", "cart-7", "--max-count", "1"]);
    assert!(out.contains("\"max_count\":1"), "{out}");
    let out = cli(&server, &["stream", "read", "cart-7", "--output", "json"]);
    let page: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(page["events"][0]["version"], 1);
    cli(
        &server,
        &[
            "stream",
            "snapshot",
            "save",
            "cart-7",
            "--version",
            "1",
            "--data",
            r#"{"items":0}"#,
        ],
    );
    let out = cli(&server, &["stream", "snapshot", "get", "cart-7"]);
    let snap: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (snap["version"].as_u64(), &snap["data"]),
        (Some(1), &json!({"items": 0}))
    );
    let out = cli(&server, &["stream", "info", "cart-7", "--output", "json"]);
    let info: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(info["last_version"], 1);
    cli(&server, &["stream", "delete", "cart-7"]);
    let out = cli(&server, &["stream", "info", "cart-7", "--output", "json"]);
    let info: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(info["state"], "soft_deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_subscriptions_deliver_with_acks_retries_and_a_dead_letter_queue() {
    let s = TestServer::start(env!("CARGO_BIN_EXE_sluice"), &[]);
    assert_eq!(s.call("PUT", "/v1/queues/es-dlq", None).await.0, 201);
    let (status, body) = s
        .call(
            "PUT",
            "/v1/categories/order/subscriptions/billing",
            Some(json!({"max_attempts": 2, "dead_letter_queue": "es-dlq",
                        "backoff": {"initial": "0s", "max": "0s"}})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = s
        .call(
            "PUT",
            "/v1/streams/order-2/subscriptions/just-two",
            Some(json!({"filter": {"type": ["placed"]}})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    // The route selects the stream; a filter may not.
    let (status, body) = s
        .call(
            "PUT",
            "/v1/streams/order-2/subscriptions/bad",
            Some(json!({"filter": {"stream": ["order-3"]}})),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_filter"))
    );
    let append = |stream: &'static str, ids: &'static [&'static str], ty: &'static str| {
        let events: Vec<Value> = ids
            .iter()
            .map(|id| json!({"specversion": "1.0", "source": "/t", "type": ty, "id": id}))
            .collect();
        let body = json!({"events": events});
        let s = &s;
        async move {
            let (status, b) = s
                .call("POST", &format!("/v1/streams/{stream}/events"), Some(body))
                .await;
            assert_eq!(status, 200, "{b}");
        }
    };
    append("order-1", &["a1", "a2"], "placed").await;
    append("cart-1", &["c1"], "placed").await;
    append("order-2", &["b1"], "placed").await;
    append("order-2", &["b2"], "paid").await;

    let receive = |sub: &'static str| {
        let s = &s;
        async move {
            let (status, got) = s
                .call(
                    "POST",
                    &format!("/v1/topics/$all/subscriptions/{sub}/receive"),
                    Some(json!({"max": 10, "wait": "1s"})),
                )
                .await;
            assert_eq!(status, 200, "{got}");
            got["messages"].as_array().unwrap().clone()
        }
    };
    let got = receive("billing").await;
    let ids: Vec<&str> = got
        .iter()
        .map(|m| m["event"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec!["a1", "a2", "b1", "b2"],
        "the category, in $all order"
    );
    assert_eq!(got[0]["event"]["stream"], "order-1");
    // Ack three, fail one twice: it goes to the dead-letter queue with the reason.
    let receipts: Vec<&Value> = got[..3].iter().map(|m| &m["receipt"]).collect();
    let (status, _) = s
        .call(
            "POST",
            "/v1/topics/$all/subscriptions/billing/ack",
            Some(json!({"receipts": receipts})),
        )
        .await;
    assert_eq!(status, 200);
    for attempt in 0..2 {
        let receipt = if attempt == 0 {
            got[3]["receipt"].clone()
        } else {
            let again = receive("billing").await;
            assert_eq!(again.len(), 1);
            assert_eq!(again[0]["event"]["id"], "b2");
            again[0]["receipt"].clone()
        };
        let (status, _) = s
            .call(
                "POST",
                "/v1/topics/$all/subscriptions/billing/nack",
                Some(json!({"receipts": [receipt], "reason": "card declined"})),
            )
            .await;
        assert_eq!(status, 200);
    }
    let (_, dlq) = s
        .call(
            "POST",
            "/v1/queues/es-dlq/receive",
            Some(json!({"max": 10, "wait": "2s"})),
        )
        .await;
    let dead = dlq["messages"].as_array().unwrap();
    assert_eq!(dead.len(), 1, "{dlq}");
    assert!(dead[0].to_string().contains("card declined"), "{dlq}");
    // The stream subscription sees only its stream, filtered by type.
    let got = receive("just-two").await;
    let ids: Vec<&str> = got
        .iter()
        .map(|m| m["event"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["b1"]);
    let (status, info) = s
        .call("GET", "/v1/topics/$all/subscriptions/billing", None)
        .await;
    assert_eq!(status, 200, "{info}");
}
