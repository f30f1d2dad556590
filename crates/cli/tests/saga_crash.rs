//! Crash safety of sagas, with the example checkout functions (Python): 200 sagas start
//! while the server is killed with SIGKILL and restarted 10 times. Afterwards every saga has
//! ended as its input decides (declined payments compensated, the others completed), and
//! the idempotency keys the functions recorded show that no action or compensation ran more
//! attempts than its retry policy allows.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};
use sluice_testkit::{TestServer, build_guest, workspace};
use tokio::sync::watch;

const SAGAS: usize = 200;
const CYCLES: usize = 10;

async fn deploy(s: &TestServer, name: &str) {
    let wasm = build_guest("python", &format!("examples/sagas/checkout/{name}.py"));
    s.deploy(name, std::fs::read(wasm).unwrap(), "").await;
}

fn declined(n: usize) -> bool {
    n.is_multiple_of(4)
}

async fn starter(url: watch::Receiver<String>) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for n in 0..SAGAS {
        let body = json!({
            "definition": "checkout",
            "id": format!("o{n}"),
            "input": {"order": format!("o{n}"), "amount": if declined(n) { 900 } else { 100 },
                      "items": [{"sku": format!("s{}", n % 7), "qty": 1}]},
        });
        // The same start until it is answered: starting an id twice is harmless.
        loop {
            let base = url.borrow().clone();
            if let Ok(r) = http
                .post(format!("{base}/v1/sagas"))
                .json(&body)
                .send()
                .await
            {
                let status = r.status().as_u16();
                if status == 200 || status == 201 {
                    break;
                }
                assert!(
                    status >= 500,
                    "start o{n}: {status} {}",
                    r.text().await.unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every key of a function's state starting with `prefix`.
async fn state_keys(s: &TestServer, function: &str, prefix: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    loop {
        let after = out
            .last()
            .map(|k| format!("&after={k}"))
            .unwrap_or_default();
        let (status, v) = s
            .call(
                "GET",
                &format!("/v1/functions/{function}/state?prefix={prefix}&limit=1000{after}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{v}");
        let keys: Vec<String> = v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap().to_owned())
            .collect();
        if keys.is_empty() {
            return out;
        }
        out.extend(keys);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_end_right_across_sigkills_and_no_attempt_runs_beyond_its_policy() {
    let seed = sluice_testkit::crash_seed("saga crash test");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut s = TestServer::start(env!("CARGO_BIN_EXE_sluice"), &[]);
    for f in ["inventory", "payment", "shipping"] {
        deploy(&s, f).await;
    }
    let def: Value = serde_json::from_str(
        &std::fs::read_to_string(workspace().join("examples/sagas/checkout/checkout.json"))
            .unwrap(),
    )
    .unwrap();
    let (status, v) = s
        .call("PUT", "/v1/sagas/definitions/checkout", Some(def.clone()))
        .await;
    assert_eq!(status, 201, "{v}");

    let (url_tx, url_rx) = watch::channel(s.url().to_owned());
    let task = tokio::spawn(starter(url_rx));
    for cycle in 0..CYCLES {
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..400))).await;
        s.crash_and_restart();
        // The starter may have finished (and dropped its receiver) before the last cycle.
        url_tx.send_replace(s.url().to_owned());
        eprintln!("cycle {cycle}: restarted after SIGKILL");
    }
    task.await.unwrap();

    // Every saga ends.
    let mut ended = BTreeMap::new();
    for _ in 0..600 {
        let (status, v) = s.call("GET", "/v1/sagas", None).await;
        assert_eq!(status, 200, "{v}");
        ended = v["sagas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["id"].as_str().unwrap().to_owned(),
                    s["status"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        if ended.len() == SAGAS
            && ended
                .values()
                .all(|st| st != "running" && st != "compensating")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ended.len(), SAGAS, "every saga was started once");
    for n in 0..SAGAS {
        let want = if declined(n) {
            "compensated"
        } else {
            "completed"
        };
        assert_eq!(ended[&format!("o{n}")], want, "saga o{n}");
    }

    // Attempts per (saga, step, action or compensation), from the keys the functions
    // recorded: never more than the policy allows.
    let limits: HashMap<(&str, bool), u64> = [
        (("reserve", false), 3),
        (("reserve", true), 5),
        (("charge", false), 2),
        (("ship", false), 3),
    ]
    .into();
    let mut attempts: HashMap<(String, String, bool), u64> = HashMap::new();
    for f in ["inventory", "payment", "shipping"] {
        for key in state_keys(&s, f, "k:").await {
            let parts: Vec<&str> = key.trim_start_matches("k:").split(':').collect();
            let (saga, step, compensation) = match parts.as_slice() {
                [saga, step, _] => (saga, step, false),
                [saga, step, "compensation", _] => (saga, step, true),
                _ => panic!("unexpected key {key}"),
            };
            *attempts
                .entry((saga.to_string(), step.to_string(), compensation))
                .or_default() += 1;
        }
    }
    // A declined charge commits nothing, so its attempts are counted from the payment
    // function's log lines, which are kept for failed invocations too.
    let mut after = 0;
    let mut charges: HashMap<String, std::collections::HashSet<String>> = HashMap::new();
    loop {
        let (status, v) = s
            .call(
                "GET",
                &format!("/v1/functions/payment/logs?after={after}&limit=1000"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{v}");
        let records = v["records"].as_array().unwrap();
        if records.is_empty() {
            break;
        }
        for r in records {
            for l in r["lines"].as_array().unwrap() {
                if let Some(key) = l["message"].as_str().unwrap().strip_prefix("attempt k:") {
                    let saga = key.split(':').next().unwrap().to_owned();
                    charges.entry(saga).or_default().insert(key.to_owned());
                }
            }
        }
        after = v["next"].as_u64().unwrap();
    }
    for n in 0..SAGAS {
        let saga = format!("o{n}");
        let tried = charges.get(&saga).map_or(0, |k| k.len());
        assert!(
            tried <= 2,
            "{saga}: {tried} charge attempts, the policy allows 2"
        );
        if declined(n) {
            assert!(tried >= 1, "{saga}: its declined charge is on record");
        }
    }
    for ((saga, step, compensation), n) in &attempts {
        let max = limits[&(step.as_str(), *compensation)];
        assert!(
            *n <= max,
            "{saga} {step} (compensation {compensation}): {n} attempts, the policy allows {max}"
        );
    }
    for n in 0..SAGAS {
        let saga = format!("o{n}");
        let ran = |step: &str, c: bool| attempts.contains_key(&(saga.clone(), step.to_owned(), c));
        assert!(ran("reserve", false), "{saga} reserved");
        assert_eq!(
            ran("reserve", true),
            declined(n),
            "{saga} released iff declined"
        );
        assert_eq!(ran("ship", false), !declined(n), "{saga} shipped iff paid");
    }
    eprintln!(
        "{} attempt keys recorded for {SAGAS} sagas",
        attempts.values().sum::<u64>()
    );
}
