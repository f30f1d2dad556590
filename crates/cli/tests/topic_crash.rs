//! Crash safety of topics: events are published to a topic with three filtered
//! subscriptions (one FIFO) while consumers receive and ack, and the server is killed with
//! SIGKILL and restarted many times. Afterwards every subscription has delivered every
//! acknowledged event its filter matches, no event whose ack was acknowledged came back,
//! and the FIFO subscription delivered each group in publish order.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};
use sluice_testkit::TestServer;
use tokio::sync::watch;

const CYCLES: usize = 10;
/// FIFO groups: a FIFO subscription leases one event per group at a time, so the number
/// of groups bounds how many events one receive returns.
const GROUPS: u64 = 50;

/// (name, config, does an event with `data.n = n` match)
type SubSpec = (&'static str, Value, fn(u64) -> bool);

fn subscriptions() -> Vec<SubSpec> {
    vec![
        ("all", json!({"start": "earliest"}), |_| true),
        (
            "kind-a",
            json!({"start": "earliest", "filter": {"data": {"kind": ["a"]}}}),
            |n| n % 3 == 0,
        ),
        (
            "ordered",
            json!({"start": "earliest", "fifo": true,
                   "filter": {"subject": [{"anything-but": "g0"}]}}),
            |n| n % GROUPS != 0,
        ),
    ]
}

#[derive(Default)]
struct SubLedger {
    /// Event ids in delivery order, with their offset and group.
    delivered: Vec<(String, u64, String)>,
    acked: HashSet<String>,
    ack_unknown: HashSet<String>,
    redelivered_after_ack: Vec<String>,
}

impl SubLedger {
    /// Records a receive's deliveries, noting any of an event whose ack was acknowledged.
    fn record(&mut self, msgs: &[Value]) {
        for m in msgs {
            let id = m["event"]["id"].as_str().unwrap().to_owned();
            if self.acked.contains(&id) {
                self.redelivered_after_ack.push(id.clone());
            }
            let group = m["event"]["subject"].as_str().unwrap().to_owned();
            self.delivered
                .push((id, m["offset"].as_u64().unwrap(), group));
        }
    }
}

#[derive(Default)]
struct Ledger {
    /// `data.n` of every event whose publish was acknowledged.
    published: HashSet<u64>,
    subs: HashMap<&'static str, SubLedger>,
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> Option<Value> {
    let resp = http
        .post(format!("{url}{path}"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.json().await.ok()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

async fn publisher(
    id: u64,
    url: watch::Receiver<String>,
    ledger: Arc<Mutex<Ledger>>,
    stop: watch::Receiver<bool>,
) {
    let http = client();
    let mut i = 0u64;
    while !*stop.borrow() {
        // Two publishers interleave: n = 2 * i + id keeps every n unique.
        let ns: Vec<u64> = (0..20).map(|k| 2 * (i + k) + id).collect();
        i += 20;
        let events: Vec<Value> = ns
            .iter()
            .map(|n| {
                json!({"specversion": "1.0", "source": format!("/p{id}"), "id": format!("e{n}"),
                       "type": "tick", "subject": format!("g{}", n % GROUPS),
                       "data": {"n": n, "kind": if n % 3 == 0 { "a" } else { "b" }}})
            })
            .collect();
        let base = url.borrow().clone();
        let body = serde_json::to_vec(&events).unwrap();
        match post(
            &http,
            &base,
            "/v1/topics/events/events",
            "application/cloudevents-batch+json",
            body,
        )
        .await
        {
            Some(_) => {
                ledger.lock().unwrap().published.extend(ns);
                // A steady rate rather than flat out, so the consumers keep up and the final
                // drain stays short.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn consumer(
    sub: &'static str,
    url: watch::Receiver<String>,
    ledger: Arc<Mutex<Ledger>>,
    stop: watch::Receiver<bool>,
) {
    let http = client();
    while !*stop.borrow() {
        let base = url.borrow().clone();
        let body = serde_json::to_vec(&json!({"max": 50, "wait": "100ms"})).unwrap();
        let path = format!("/v1/topics/events/subscriptions/{sub}");
        let Some(got) = post(
            &http,
            &base,
            &format!("{path}/receive"),
            "application/json",
            body,
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
        let ids: Vec<String> = msgs
            .iter()
            .map(|m| m["event"]["id"].as_str().unwrap().to_owned())
            .collect();
        ledger
            .lock()
            .unwrap()
            .subs
            .entry(sub)
            .or_default()
            .record(&msgs);
        let receipts: Vec<&Value> = msgs.iter().map(|m| &m["receipt"]).collect();
        let body = serde_json::to_vec(&json!({"receipts": receipts})).unwrap();
        let outcome = post(
            &http,
            &base,
            &format!("{path}/ack"),
            "application/json",
            body,
        )
        .await;
        let mut l = ledger.lock().unwrap();
        let sl = l.subs.entry(sub).or_default();
        match outcome {
            Some(v) if v.get("failed").is_none() => sl.acked.extend(ids),
            _ => sl.ack_unknown.extend(ids),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscription_sees_every_acknowledged_match_across_sigkills() {
    let seed = sluice_testkit::crash_seed("topic crash test");
    let mut rng = StdRng::seed_from_u64(seed);

    let mut server = TestServer::start(env!("CARGO_BIN_EXE_sluice"), &[]);
    assert_eq!(server.call("PUT", "/v1/topics/events", None).await.0, 201);
    for (name, config, _) in subscriptions() {
        let mut config = config;
        config["lease_timeout"] = json!("2s");
        config["backoff"] = json!({"initial": "0s", "max": "0s"});
        let (status, body) = server
            .call(
                "PUT",
                &format!("/v1/topics/events/subscriptions/{name}"),
                Some(config),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let (url_tx, url_rx) = watch::channel(server.url().to_owned());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for id in 0..2 {
        tasks.push(tokio::spawn(publisher(
            id,
            url_rx.clone(),
            ledger.clone(),
            stop_rx.clone(),
        )));
    }
    for (name, _, _) in subscriptions() {
        tasks.push(tokio::spawn(consumer(
            name,
            url_rx.clone(),
            ledger.clone(),
            stop_rx.clone(),
        )));
    }
    for cycle in 0..CYCLES {
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..600))).await;
        server.crash_and_restart();
        url_tx.send(server.url().to_owned()).unwrap();
        let published = ledger.lock().unwrap().published.len();
        eprintln!("cycle {cycle}: restarted after SIGKILL, {published} publishes acknowledged");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_tx.send(true).unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    server.crash_and_restart();

    // Every task has ended: the ledger is ours alone now.
    let mut l = std::mem::take(&mut *ledger.lock().unwrap());
    assert!(
        l.published.len() > 100,
        "load made progress: {}",
        l.published.len()
    );
    let published = l.published.clone();
    for (name, _, matches) in subscriptions() {
        // Drain what is left; leases from before the crash end after 2s.
        let sl = l.subs.entry(name).or_default();
        loop {
            let (_, got) = server
                .call(
                    "POST",
                    &format!("/v1/topics/events/subscriptions/{name}/receive"),
                    Some(json!({"max": 1000, "wait": "3s"})),
                )
                .await;
            let msgs = got["messages"].as_array().cloned().unwrap_or_default();
            if msgs.is_empty() {
                break;
            }
            sl.record(&msgs);
            let receipts: Vec<&Value> = msgs.iter().map(|m| &m["receipt"]).collect();
            let (status, _) = server
                .call(
                    "POST",
                    &format!("/v1/topics/events/subscriptions/{name}/ack"),
                    Some(json!({"receipts": receipts})),
                )
                .await;
            assert_eq!(status, 200);
            sl.acked.extend(
                msgs.iter()
                    .map(|m| m["event"]["id"].as_str().unwrap().to_owned()),
            );
        }
        assert!(
            sl.redelivered_after_ack.is_empty(),
            "{name}: acked events delivered again: {:?}",
            sl.redelivered_after_ack
        );
        let seen: HashSet<&str> = sl.delivered.iter().map(|(id, _, _)| id.as_str()).collect();
        let mut lost: Vec<u64> = published
            .iter()
            .copied()
            .filter(|n| matches(*n) && !seen.contains(format!("e{n}").as_str()))
            .collect();
        lost.sort();
        assert!(
            lost.is_empty(),
            "{name}: {} acknowledged matching events never delivered, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
        let foreign: Vec<&str> = seen
            .iter()
            .copied()
            .filter(|id| !matches(id[1..].parse().unwrap()))
            .collect();
        assert!(
            foreign.is_empty(),
            "{name}: delivered non-matching {foreign:?}"
        );
        if name == "ordered" {
            // Per group, each event is first delivered after every earlier one.
            let mut last: HashMap<&str, u64> = HashMap::new();
            let mut first_seen = HashSet::new();
            for (id, offset, group) in &sl.delivered {
                if !first_seen.insert(id.as_str()) {
                    continue;
                }
                let prev = last.insert(group.as_str(), *offset);
                assert!(
                    prev.is_none_or(|p| p < *offset),
                    "group {group}: offset {offset} first delivered after {prev:?}"
                );
            }
        }
        eprintln!(
            "{name}: delivered {} (distinct {}), acked {}, ack unknown {}",
            sl.delivered.len(),
            seen.len(),
            sl.acked.len(),
            sl.ack_unknown.len()
        );
    }
}

/// A compacted topic under SIGKILL: after every restart each key's table entry is its
/// latest acknowledged event or a later one, and compaction, running between the crashes,
/// never loses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_never_loses_the_latest_event_of_a_key_across_sigkills() {
    const KEYS: u64 = 20;
    let seed = sluice_testkit::crash_seed("compaction crash test");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut server = TestServer::start(env!("CARGO_BIN_EXE_sluice"), &[]);
    let (status, _) = server
        .call(
            "PUT",
            "/v1/topics/state",
            Some(json!({"compaction": {"tombstone_retention": "0s"}})),
        )
        .await;
    assert_eq!(status, 201);
    // The highest n acknowledged per key, and whether that publish was a tombstone.
    let acked: Arc<Mutex<HashMap<u64, (u64, bool)>>> = Arc::default();
    // Tombstones whose publish got no answer: the crash may or may not have kept them.
    let unknown_tombstones: Arc<Mutex<HashSet<(u64, u64)>>> = Arc::default();
    let (url_tx, url_rx) = watch::channel(server.url().to_owned());
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = {
        let acked = acked.clone();
        let unknown_tombstones = unknown_tombstones.clone();
        tokio::spawn(async move {
            let http = client();
            let mut n = 0u64;
            while !*stop_rx.borrow() {
                // Every key gets a new value per batch; every 7th value deletes its key.
                let events: Vec<Value> = (0..KEYS)
                    .map(|k| {
                        let v = n + k;
                        let data = if v.is_multiple_of(7) {
                            Value::Null
                        } else {
                            json!({"n": v})
                        };
                        json!({"specversion": "1.0", "source": "/state", "type": "set",
                               "subject": format!("k{k}"), "data": data})
                    })
                    .collect();
                let base = url_rx.borrow().clone();
                let body = serde_json::to_vec(&events).unwrap();
                let ok = post(
                    &http,
                    &base,
                    "/v1/topics/state/events",
                    "application/cloudevents-batch+json",
                    body,
                )
                .await
                .is_some();
                if ok {
                    let mut a = acked.lock().unwrap();
                    for k in 0..KEYS {
                        a.insert(k, (n + k, (n + k).is_multiple_of(7)));
                    }
                } else {
                    let mut u = unknown_tombstones.lock().unwrap();
                    u.extend(
                        (0..KEYS)
                            .filter(|k| (n + k).is_multiple_of(7))
                            .map(|k| (k, n + k)),
                    );
                }
                n += KEYS;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    for cycle in 0..CYCLES {
        // Long enough for compaction passes (one step a second) between some crashes.
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1_500))).await;
        server.crash_and_restart();
        url_tx.send(server.url().to_owned()).unwrap();
        eprintln!("cycle {cycle}: restarted after SIGKILL");
    }
    stop_tx.send(true).unwrap();
    task.await.unwrap();
    server.crash_and_restart();
    let acked = acked.lock().unwrap().clone();
    let unknown_tombstones = unknown_tombstones.lock().unwrap().clone();
    assert_eq!(acked.len() as u64, KEYS, "every key was published");
    for (k, (last, tombstone)) in &acked {
        let (status, got) = server
            .call("GET", &format!("/v1/topics/state/table/k{k}"), None)
            .await;
        if status == 404 {
            // Deleted: by the last acknowledged publish, or by a later one whose answer
            // the crash swallowed.
            let later_tombstone = unknown_tombstones
                .iter()
                .any(|(key, v)| key == k && v > last);
            assert!(
                *tombstone || later_tombstone,
                "k{k}: live value {last} lost: {got}"
            );
            continue;
        }
        assert_eq!(status, 200, "{got}");
        let n = got["entry"]["event"]["data"]["n"].as_u64().unwrap();
        assert!(
            n >= *last,
            "k{k}: table has {n}, but {last} was acknowledged"
        );
        assert_eq!(n % KEYS, *k, "k{k}: table points at another key's event");
    }
    // Compaction finishes on the final state: only the live keys' latest events remain.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, t) = server.call("GET", "/v1/topics/state", None).await;
        if t["stats"]["events"] == t["stats"]["keys"] || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, t) = server.call("GET", "/v1/topics/state", None).await;
    let s = &t["stats"];
    eprintln!("compacted topic after the crashes: {s}");
    assert!(
        s["compacted_total"].as_u64().unwrap() > 0,
        "compaction ran: {s}"
    );
    assert_eq!(
        s["events"], s["keys"],
        "only the latest event of each live key is left: {s}"
    );
}
