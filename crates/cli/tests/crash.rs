//! Crash safety: a real server under concurrent send/receive/ack load is killed with SIGKILL
//! at random moments and restarted on the same data directory, many times. Afterwards every
//! message whose send was acknowledged is delivered or acked, no message whose ack was
//! acknowledged is ever delivered again, and the queue's stats match what is left.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};
use sluice_testkit::TestServer;
use tokio::sync::watch;

const CYCLES: usize = 20;

#[derive(Default)]
struct Ledger {
    /// Bodies whose send was acknowledged.
    sent: HashSet<String>,
    /// Bodies whose ack was acknowledged.
    acked: HashSet<String>,
    /// Bodies whose ack got no answer (the crash may or may not have kept it).
    ack_unknown: HashSet<String>,
    /// Deliveries of bodies already acked: must stay empty.
    redelivered_after_ack: Vec<String>,
}

async fn post(http: &reqwest::Client, url: &str, path: &str, body: Value) -> Option<Value> {
    let resp = http
        .post(format!("{url}{path}"))
        .json(&body)
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.json().await.ok()
}

async fn producer(
    id: usize,
    url: watch::Receiver<String>,
    ledger: Arc<Mutex<Ledger>>,
    stop: watch::Receiver<bool>,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut n = 0;
    while !*stop.borrow() {
        let bodies: Vec<String> = (0..20).map(|i| format!("p{id}-{}", n + i)).collect();
        n += 20;
        let msgs: Vec<Value> = bodies.iter().map(|b| json!({"body": b})).collect();
        let base = url.borrow().clone();
        match post(
            &http,
            &base,
            "/v1/queues/crash/messages",
            json!({"messages": msgs}),
        )
        .await
        {
            Some(_) => ledger.lock().unwrap().sent.extend(bodies),
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn consumer(
    url: watch::Receiver<String>,
    ledger: Arc<Mutex<Ledger>>,
    stop: watch::Receiver<bool>,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    while !*stop.borrow() {
        let base = url.borrow().clone();
        let Some(got) = post(
            &http,
            &base,
            "/v1/queues/crash/receive",
            json!({"max": 50, "wait": "100ms"}),
        )
        .await
        else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let msgs = got["messages"].as_array().cloned().unwrap_or_default();
        if msgs.is_empty() {
            continue;
        }
        let bodies: Vec<String> = msgs
            .iter()
            .map(|m| m["body"].as_str().unwrap().to_owned())
            .collect();
        {
            let mut l = ledger.lock().unwrap();
            for b in &bodies {
                if l.acked.contains(b) {
                    l.redelivered_after_ack.push(b.clone());
                }
            }
        }
        let receipts: Vec<&Value> = msgs.iter().map(|m| &m["receipt"]).collect();
        let outcome = post(
            &http,
            &base,
            "/v1/queues/crash/ack",
            json!({"receipts": receipts}),
        )
        .await;
        let mut l = ledger.lock().unwrap();
        match outcome {
            Some(v) if v.get("failed").is_none() => l.acked.extend(bodies),
            // Some receipts may be stale if a lease expired meanwhile: unknown for all.
            _ => l.ack_unknown.extend(bodies),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_data_survives_repeated_sigkill() {
    let seed = sluice_testkit::crash_seed("crash test");
    let mut rng = StdRng::seed_from_u64(seed);

    let mut server = TestServer::start(env!("CARGO_BIN_EXE_sluice"), &[]);
    let config = json!({"lease_timeout": "2s", "backoff": {"initial": "0s", "max": "0s"}});
    assert_eq!(
        server.call("PUT", "/v1/queues/crash", Some(config)).await.0,
        201
    );

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let (url_tx, url_rx) = watch::channel(server.url().to_owned());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for id in 0..2 {
        tasks.push(tokio::spawn(producer(
            id,
            url_rx.clone(),
            ledger.clone(),
            stop_rx.clone(),
        )));
    }
    for _ in 0..2 {
        tasks.push(tokio::spawn(consumer(
            url_rx.clone(),
            ledger.clone(),
            stop_rx.clone(),
        )));
    }
    for cycle in 0..CYCLES {
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..600))).await;
        server.crash_and_restart();
        url_tx.send(server.url().to_owned()).unwrap();
        let sent = ledger.lock().unwrap().sent.len();
        eprintln!("cycle {cycle}: restarted after SIGKILL, {sent} sends acknowledged so far");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_tx.send(true).unwrap();
    for t in tasks {
        t.await.unwrap();
    }

    // One last crash, then check the stats against a full drain.
    server.crash_and_restart();
    let (_, q) = server.call("GET", "/v1/queues/crash", None).await;
    let s = &q["stats"];
    let held = s["visible"].as_u64().unwrap()
        + s["leased"].as_u64().unwrap()
        + s["delayed"].as_u64().unwrap();
    let mut drained = HashSet::new();
    loop {
        let (_, got) = server
            .call(
                "POST",
                "/v1/queues/crash/receive",
                Some(json!({"max": 1000, "wait": "3s"})),
            )
            .await;
        let msgs = got["messages"].as_array().cloned().unwrap_or_default();
        if msgs.is_empty() {
            break;
        }
        let receipts: Vec<&Value> = msgs.iter().map(|m| &m["receipt"]).collect();
        for m in &msgs {
            assert!(
                drained.insert(m["body"].as_str().unwrap().to_owned()),
                "duplicate in the final drain: {m}"
            );
        }
        let (status, _) = server
            .call(
                "POST",
                "/v1/queues/crash/ack",
                Some(json!({"receipts": receipts})),
            )
            .await;
        assert_eq!(status, 200);
    }
    let l = ledger.lock().unwrap();
    assert!(
        l.sent.len() > 100,
        "the load made progress: {} sends",
        l.sent.len()
    );
    assert!(
        l.redelivered_after_ack.is_empty(),
        "acked messages delivered again: {:?}",
        l.redelivered_after_ack
    );
    let again: Vec<&String> = drained.intersection(&l.acked).collect();
    assert!(
        again.is_empty(),
        "acked messages still in the queue: {again:?}"
    );
    let lost: Vec<&String> = l
        .sent
        .iter()
        .filter(|b| !l.acked.contains(*b) && !l.ack_unknown.contains(*b) && !drained.contains(*b))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged sends lost, e.g. {:?}",
        lost.len(),
        lost.iter().take(5).collect::<Vec<_>>()
    );
    assert_eq!(
        held,
        drained.len() as u64,
        "stats after restart ({s}) match what was drained"
    );
    eprintln!(
        "sent {} acked {} ack-unknown {} drained {}",
        l.sent.len(),
        l.acked.len(),
        l.ack_unknown.len(),
        drained.len()
    );
}
