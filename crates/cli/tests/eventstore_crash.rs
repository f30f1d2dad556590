//! Crash safety of the event store: writers append to a few shared streams with expected
//! versions, retrying an unanswered append as it was (same ids, same expected version),
//! while the server is killed with SIGKILL and restarted many times. Afterwards every
//! acknowledged event is in its stream exactly once, stream versions are gapless, and
//! `$all` lists each stream's events in the stream's order.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};
use sluice_testkit::TestServer;
use tokio::sync::watch;

const CYCLES: usize = 20;
const WRITERS: u64 = 4;
const STREAMS: u64 = 3;

#[derive(Default)]
struct Ledger {
    /// Ids of events whose append was acknowledged, by stream.
    acknowledged: HashMap<String, HashSet<String>>,
    appends: u64,
    conflicts: u64,
    retries: u64,
}

enum Answer {
    /// 200: appended now or before (a retry).
    Done,
    /// 409 with the stream's current version.
    Conflict(Option<u64>),
    /// No answer (the server died) or a 5xx: the append may or may not have happened.
    Unknown,
}

async fn try_append(
    http: &reqwest::Client,
    url: &str,
    stream: &str,
    expected: &Value,
    ids: &[String],
) -> Answer {
    let events: Vec<Value> = ids
        .iter()
        .map(|id| json!({"specversion": "1.0", "source": "/crash", "type": "tick", "id": id}))
        .collect();
    let Ok(resp) = http
        .post(format!("{url}/v1/streams/{stream}/events"))
        .json(&json!({"expected_version": expected, "events": events}))
        .send()
        .await
    else {
        return Answer::Unknown;
    };
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    match status {
        200 => Answer::Done,
        409 => {
            assert_eq!(
                body["code"], "wrong_expected_version",
                "a retry with the same expected version is never an id conflict: {body}"
            );
            Answer::Conflict(body["current_version"].as_u64())
        }
        s if s >= 500 => Answer::Unknown,
        s => panic!("unexpected answer {s}: {body}"),
    }
}

async fn writer(
    w: u64,
    seed: u64,
    url: watch::Receiver<String>,
    ledger: Arc<Mutex<Ledger>>,
    stop: watch::Receiver<bool>,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut rng = StdRng::seed_from_u64(seed ^ w);
    // What this writer believes each stream's last version is.
    let mut known: HashMap<String, Option<u64>> = HashMap::new();
    let mut seq = 0u64;
    while !*stop.borrow() {
        let stream = format!("acct-{}", rng.random_range(0..STREAMS));
        let n = rng.random_range(1..=3);
        let ids: Vec<String> = (0..n).map(|j| format!("w{w}-{seq}-{j}")).collect();
        seq += 1;
        let expected = match known.get(&stream).copied().flatten() {
            Some(v) => json!(v),
            None => json!("no_stream"),
        };
        // Retry the very same append until it has a definite answer.
        loop {
            let base = url.borrow().clone();
            match try_append(&http, &base, &stream, &expected, &ids).await {
                Answer::Done => {
                    let last = expected.as_u64().map_or(n - 1, |v| v + n);
                    known.insert(stream.clone(), Some(last));
                    let mut l = ledger.lock().unwrap();
                    l.appends += 1;
                    l.acknowledged
                        .entry(stream.clone())
                        .or_default()
                        .extend(ids.iter().cloned());
                    break;
                }
                Answer::Conflict(current) => {
                    known.insert(stream.clone(), current);
                    ledger.lock().unwrap().conflicts += 1;
                    break;
                }
                Answer::Unknown => {
                    ledger.lock().unwrap().retries += 1;
                    if *stop.borrow() {
                        // Never answered: not acknowledged, whatever happened.
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}

async fn read_all(server: &TestServer) -> Vec<(String, u64, String)> {
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let (status, page) = server
            .call(
                "GET",
                &format!("/v1/streams/$all/events?from={from}&limit=1000"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        let events = page["events"].as_array().unwrap();
        for e in events {
            out.push((
                e["stream"].as_str().unwrap().to_owned(),
                e["version"].as_u64().unwrap(),
                e["event"]["id"].as_str().unwrap().to_owned(),
            ));
        }
        let next = page["next"].as_u64().unwrap();
        if events.is_empty() && next == from {
            return out;
        }
        from = next;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_sigkills_gapless_and_in_order() {
    let seed = sluice_testkit::crash_seed("event store crash test");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut server = TestServer::start(env!("CARGO_BIN_EXE_sluice"), &[]);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let (url_tx, url_rx) = watch::channel(server.url().to_owned());
    let (stop_tx, stop_rx) = watch::channel(false);
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            tokio::spawn(writer(
                w,
                seed,
                url_rx.clone(),
                ledger.clone(),
                stop_rx.clone(),
            ))
        })
        .collect();
    for cycle in 0..CYCLES {
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..400))).await;
        server.crash_and_restart();
        url_tx.send(server.url().to_owned()).unwrap();
        let appends = ledger.lock().unwrap().appends;
        eprintln!("cycle {cycle}: restarted after SIGKILL, {appends} appends acknowledged");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop_tx.send(true).unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    server.crash_and_restart();

    let l = std::mem::take(&mut *ledger.lock().unwrap());
    eprintln!(
        "{} appends acknowledged, {} conflicts, {} retries of unanswered appends",
        l.appends, l.conflicts, l.retries
    );
    assert!(l.appends > 100, "load made progress: {}", l.appends);
    assert!(l.retries > 0, "some appends were cut off by a crash");

    let all = read_all(&server).await;
    let mut seen_ids = HashSet::new();
    for (stream, _, id) in &all {
        assert!(
            seen_ids.insert(id.clone()),
            "{id} is in $all twice ({stream})"
        );
    }
    for s in 0..STREAMS {
        let stream = format!("acct-{s}");
        // The stream itself: gapless from 0.
        let mut events = Vec::new();
        let mut from = 0;
        loop {
            let (status, page) = server
                .call(
                    "GET",
                    &format!("/v1/streams/{stream}/events?from={from}&limit=1000"),
                    None,
                )
                .await;
            if status == 404 {
                break;
            }
            for e in page["events"].as_array().unwrap() {
                events.push((
                    e["version"].as_u64().unwrap(),
                    e["event"]["id"].as_str().unwrap().to_owned(),
                ));
            }
            match page["next"].as_u64() {
                Some(n) => from = n,
                None => break,
            }
        }
        for (i, (v, _)) in events.iter().enumerate() {
            assert_eq!(*v, i as u64, "{stream}: versions are gapless");
        }
        let ids: HashSet<&String> = events.iter().map(|(_, id)| id).collect();
        assert_eq!(ids.len(), events.len(), "{stream}: no event twice");
        let empty = HashSet::new();
        let acked = l.acknowledged.get(&stream).unwrap_or(&empty);
        let lost: Vec<&String> = acked.iter().filter(|id| !ids.contains(id)).collect();
        assert!(
            lost.is_empty(),
            "{stream}: acknowledged events lost: {lost:?}"
        );
        // $all agrees with the stream's order.
        let in_all: Vec<(u64, String)> = all
            .iter()
            .filter(|(st, _, _)| *st == stream)
            .map(|(_, v, id)| (*v, id.clone()))
            .collect();
        assert_eq!(
            in_all, events,
            "{stream}: $all lists the stream in its order"
        );
    }
}
