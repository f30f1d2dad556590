//! Crash safety of function effects: a Python function consumes a queue
//! through a trigger, and for each message writes state, bumps a counter by
//! compare-and-set and publishes an event, while producers keep sending and
//! the server is killed with SIGKILL and restarted again and again.
//!
//! Effects commit in one batch with the ack of their input, so afterwards:
//! every acknowledged message has its effects; no message has its effects
//! twice (which a commit of effects without the ack would cause on
//! redelivery); and the counter equals the number of published events.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};
use sluice_testkit::{TestServer, build_guest};
use tokio::sync::watch;

const CYCLES: usize = 10;

async fn producer(
    url: watch::Receiver<String>,
    sent: Arc<Mutex<HashSet<u64>>>,
    stop: watch::Receiver<bool>,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut next = 0u64;
    while !*stop.borrow() {
        let ns: Vec<u64> = (next..next + 10).collect();
        next += 10;
        let messages: Vec<Value> = ns.iter().map(|n| json!({"body": {"i": n}})).collect();
        let base = url.borrow().clone();
        let ok = http
            .post(format!("{base}/v1/queues/in/messages"))
            .json(&json!({ "messages": messages }))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            sent.lock().unwrap().extend(ns);
        }
        tokio::time::sleep(Duration::from_millis(if ok { 20 } else { 50 })).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn effects_and_acks_survive_sigkill_together() {
    let seed = sluice_testkit::crash_seed("function crash test");
    let mut rng = StdRng::seed_from_u64(seed);
    let wasm = build_guest("python", "crates/cli/tests/guests/count.py");

    let mut server = TestServer::start(env!("CARGO_BIN_EXE_sluice"), &[]);
    let bytes = std::fs::read(&wasm).unwrap();
    let (status, v) = server
        .call_with(
            "POST",
            "/v1/functions/count/versions?timeout=2s",
            &[("content-type", "application/wasm")],
            bytes,
        )
        .await;
    assert_eq!(status, 201, "{v}");
    for (path, body) in [
        ("/v1/topics/out", json!({})),
        (
            "/v1/queues/in",
            json!({"backoff": {"initial": "0s", "max": "0s"}}),
        ),
        (
            "/v1/triggers/t",
            json!({"function": "count", "source": {"queue": "in"}, "batch_size": 5, "max_concurrency": 2}),
        ),
    ] {
        let (status, v) = server.call("PUT", path, Some(body)).await;
        assert_eq!(status, 201, "{path}: {v}");
    }

    let sent = Arc::new(Mutex::new(HashSet::new()));
    let (url_tx, url_rx) = watch::channel(server.url().to_owned());
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(producer(url_rx, sent.clone(), stop_rx));
    for _ in 0..CYCLES {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
        server.crash_and_restart();
        url_tx.send(server.url().to_owned()).unwrap();
    }
    stop_tx.send(true).unwrap();
    task.await.unwrap();

    // Let the trigger finish the backlog, including batches whose leases a
    // crash left behind (they come back when the lease runs out).
    let start = Instant::now();
    loop {
        let (_, q) = server.call("GET", "/v1/queues/in", None).await;
        let st = &q["stats"];
        if st["visible"] == 0 && st["leased"] == 0 && st["delayed"] == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "backlog not drained: {st}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut published = Vec::new();
    let mut from = 0u64;
    loop {
        let (_, v) = server
            .call(
                "GET",
                &format!("/v1/topics/out/events?from={from}&limit=1000"),
                None,
            )
            .await;
        let events = v["events"].as_array().unwrap().clone();
        if events.is_empty() {
            break;
        }
        from = v["next"].as_u64().unwrap();
        published.extend(
            events
                .into_iter()
                .map(|e| e["event"]["data"]["i"].as_u64().unwrap()),
        );
    }
    let distinct: HashSet<u64> = published.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        published.len(),
        "a message's effects committed twice"
    );
    let sent = sent.lock().unwrap().clone();
    assert!(
        sent.len() >= 100,
        "the producer got enough through: {}",
        sent.len()
    );
    let missing: Vec<u64> = sent.difference(&distinct).copied().collect();
    assert!(
        missing.is_empty(),
        "acknowledged messages without effects: {missing:?}"
    );
    let (status, count) = server
        .call("GET", "/v1/functions/count/state/count", None)
        .await;
    assert_eq!(status, 200);
    let count: u64 = match count {
        Value::String(s) => s.parse().unwrap(),
        other => other.as_u64().unwrap(),
    };
    assert_eq!(
        count,
        published.len() as u64,
        "the counter moved once per committed message"
    );
    for n in sent.iter().take(50) {
        let (status, _) = server
            .call("GET", &format!("/v1/functions/count/state/done:{n}"), None)
            .await;
        assert_eq!(status, 200, "state of message {n}");
    }
    eprintln!(
        "{} messages sent, {} processed across {CYCLES} crashes",
        sent.len(),
        published.len()
    );
}
