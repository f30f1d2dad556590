//! The reference app (`examples/shop`) end to end: `sluice up` builds its functions,
//! applies its manifest and serves its page; the test then runs the shop as a storefront
//! would and checks what each pattern must show: event-carried state transfer, event
//! sourcing with a projection, filtered fan-out, the checkout saga with its compensation,
//! load leveling under a burst of 10,000 orders, the enrichment pipeline into a compacted
//! topic, live updates over SSE, and the page in a real (headless) browser.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_testkit::{Api, KillOnDrop, Lines, workspace};

const CUSTOMERS: [(&str, &str, &str); 3] = [
    ("c-1", "Ada", "gold"),
    ("c-2", "Grace", "standard"),
    ("c-3", "Linus", "gold"),
];
const PRICES: [(&str, f64); 4] = [("tea", 6.5), ("mug", 12.0), ("pot", 30.0), ("cup", 4.25)];
/// Orders the storefront places; the last one is over the payment limit.
const ORDERS: usize = 12;
const BURST: usize = 10_000;

/// The shop's server, with the storefront's own calls beside the API client's.
struct Shop(Api);

impl std::ops::Deref for Shop {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.0
    }
}

impl Shop {
    async fn append(&self, stream: &str, expected: Value, event: Value) -> (u16, Value) {
        self.call(
            "POST",
            &format!("/v1/streams/{stream}/events"),
            Some(json!({"expected_version": expected, "events": [event]})),
        )
        .await
    }

    /// Waits until `check` holds of the answer to GET `path`; returns that answer.
    async fn until(&self, path: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (status, v) = self.call("GET", path, None).await;
            if status == 200 && check(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: GET {path} is still {status} {v}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A function's state value (stored as JSON by the shop's functions).
    async fn state(&self, function: &str, key: &str) -> Value {
        let (status, v) = self
            .call(
                "GET",
                &format!("/v1/functions/{function}/state/{key}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{function} {key}: {v}");
        v
    }
}

fn customer(id: &str, name: &str, tier: &str, version: u32) -> Value {
    json!({"specversion": "1.0", "id": format!("{id}-v{version}"), "source": "/crm",
           "type": "customer.upserted", "subject": id, "data": {"name": name, "tier": tier}})
}

/// Order `i`: its customer, items and total. The last order is over the payment limit.
fn order(i: usize) -> (String, &'static str, Vec<(&'static str, u32)>, f64) {
    let customer = CUSTOMERS[i % CUSTOMERS.len()].0;
    let mut items = vec![(PRICES[i % 4].0, 1 + (i % 3) as u32)];
    if i.is_multiple_of(2) {
        items.push((PRICES[(i + 1) % 4].0, 1));
    }
    if i == ORDERS - 1 {
        items = vec![("pot", 30)];
    }
    let total = items
        .iter()
        .map(|(sku, qty)| price(sku) * *qty as f64)
        .sum();
    (format!("order-{}", 1001 + i), customer, items, total)
}

fn price(sku: &str) -> f64 {
    PRICES.iter().find(|(s, _)| *s == sku).unwrap().1
}

fn placed_event(i: usize) -> Value {
    let (id, customer, items, total) = order(i);
    let items: Vec<Value> = items
        .iter()
        .map(|(sku, qty)| json!({"sku": sku, "qty": qty, "price": price(sku)}))
        .collect();
    json!({"specversion": "1.0", "id": format!("{id}-placed"), "source": "/storefront",
           "type": "order.placed", "data": {"customer": customer, "items": items, "total": total}})
}

/// Places order `i` as the storefront does: appends it to its stream (a new stream
/// only), then starts its checkout saga.
async fn place(shop: &Shop, i: usize) {
    let (id, _, items, total) = order(i);
    let (status, v) = shop.append(&id, json!("no_stream"), placed_event(i)).await;
    assert_eq!((status, &v["appended"]), (200, &json!(true)), "{v}");
    let items: Vec<Value> = items
        .iter()
        .map(|(sku, qty)| json!({"sku": sku, "qty": qty}))
        .collect();
    shop.ok(
        "POST",
        "/v1/sagas",
        Some(json!({"definition": "checkout", "id": id,
                    "input": {"order": id, "amount": total, "items": items}})),
    )
    .await;
}

/// Starts `sluice up` on the shop's manifest; returns the process, its lines and the shop.
fn up(data: &std::path::Path) -> (KillOnDrop, Lines, Shop) {
    let manifest = workspace().join("examples/shop/sluice.toml");
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .arg("-f")
            .arg(&manifest)
            .env("SLUICE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = Lines::of(&mut child);
    let url = lines
        .wait_for_within("listening on ", Duration::from_secs(60))
        .split("listening on ")
        .nth(1)
        .unwrap()
        .trim()
        .to_owned();
    // The first build of the Python component installs its tools if needed.
    let applied =
        lines.wait_for_unless(" created, ", Some("apply failed"), Duration::from_secs(900));
    assert!(applied.contains(" 0 unchanged"), "{applied}");
    lines.wait_for("following the logs of 9 functions");
    (child, lines, Shop(Api::new(&url)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shop_shows_all_five_patterns_end_to_end() {
    let data = tempfile::tempdir().unwrap();
    let (mut child, _lines, shop) = up(data.path());

    // The page is served, and a real browser follows it live (below, once orders flow).
    let page = shop
        .http()
        .get(format!("{}/app/", shop.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("order-status/stream"));

    // Event-carried state transfer: the customers, whole, on a compacted topic.
    let customers: Vec<Value> = CUSTOMERS
        .iter()
        .map(|(id, name, tier)| customer(id, name, tier, 1))
        .collect();
    shop.publish("customers", &customers).await;

    // Live updates: an SSE client on the order-status topic from now on.
    let mut live = shop
        .http()
        .get(format!(
            "{}/v1/topics/order-status/stream?from=latest",
            shop.url()
        ))
        .timeout(Duration::from_secs(600))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);

    // Event sourcing: every order is a stream, appended only as a new stream.
    for i in 0..ORDERS {
        place(&shop, i).await;
    }
    // A retried append (same ids, same expectation) does not duplicate; a stale one is
    // refused with the stream's version.
    let (id0, ..) = order(0);
    let (status, v) = shop.append(&id0, json!("no_stream"), placed_event(0)).await;
    assert_eq!((status, &v["appended"]), (200, &json!(false)), "{v}");
    let (status, v) = shop
        .append(
            &id0,
            json!("no_stream"),
            json!({"specversion": "1.0", "id": "x", "source": "/storefront",
                   "type": "order.note", "data": {}}),
        )
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (409, Some("wrong_expected_version")),
        "{v}"
    );
    assert_eq!(v["current_version"], 0, "{v}");

    // The saga: every order within the limit completes, the last is compensated.
    let mut shipped = Vec::new();
    for i in 0..ORDERS {
        let (id, ..) = order(i);
        let want = if i == ORDERS - 1 {
            "compensated"
        } else {
            "completed"
        };
        let saga = shop
            .until(&format!("/v1/sagas/{id}"), "saga ends", |v| {
                matches!(
                    v["status"].as_str(),
                    Some("completed" | "compensated" | "compensation_failed")
                )
            })
            .await;
        assert_eq!(saga["status"], want, "{saga}");
        if i != ORDERS - 1 {
            shipped.push(i);
        }
    }
    // Stock: what shipped is gone, what the compensated order reserved came back.
    let mut sold: BTreeMap<&str, u32> = BTreeMap::new();
    for &i in &shipped {
        for (sku, qty) in order(i).2 {
            *sold.entry(sku).or_default() += qty;
        }
    }
    for (sku, _) in PRICES {
        let stock = shop.state("inventory", &format!("stock:{sku}")).await;
        let want = 1000 - sold.get(sku).copied().unwrap_or(0);
        assert_eq!(stock, json!(want), "stock of {sku}");
    }

    // The storefront records the declined order's cancellation in its stream, at the
    // version it read.
    let (declined, ..) = order(ORDERS - 1);
    let cancelled = json!({"specversion": "1.0", "id": format!("{declined}-cancelled"),
                           "source": "/storefront", "type": "order.cancelled", "data": {}});
    let (status, v) = shop.append(&declined, json!(0), cancelled).await;
    assert_eq!((status, &v["appended"]), (200, &json!(true)), "{v}");

    // The pipeline: each order's latest status on the compacted topic, enriched with the
    // products' names on the way.
    let table = shop
        .until("/v1/topics/order-status/table", "every order final", |v| {
            let entries = v["entries"].as_array().unwrap();
            entries.len() == ORDERS
                && entries.iter().all(|e| {
                    matches!(
                        e["entry"]["event"]["data"]["status"].as_str(),
                        Some("shipped" | "cancelled")
                    )
                })
        })
        .await;
    for e in table["entries"].as_array().unwrap() {
        let d = &e["entry"]["event"]["data"];
        let i = (d["order"].as_str().unwrap()[6..].parse::<usize>().unwrap()) - 1001;
        let (_, customer_id, items, total) = order(i);
        let name = CUSTOMERS.iter().find(|c| c.0 == customer_id).unwrap().1;
        assert_eq!(d["customer"], name, "{d}");
        assert_eq!(d["total"].as_f64().unwrap(), total, "{d}");
        let first = format!("{} × ", items[0].1);
        assert!(d["summary"].as_str().unwrap().starts_with(&first), "{d}");
        assert!(
            ["Assam tea", "Stoneware mug", "Teapot", "Tea cup"]
                .iter()
                .any(|n| d["summary"].as_str().unwrap().contains(n)),
            "named by the catalog: {d}"
        );
        let want = if i == ORDERS - 1 {
            "cancelled"
        } else {
            "shipped"
        };
        assert_eq!(d["status"], want, "{d}");
    }

    // Event notification with a filter: exactly the gold customers' orders were notified.
    let gold: Vec<String> = (0..ORDERS)
        .filter(|&i| CUSTOMERS.iter().any(|c| c.0 == order(i).1 && c.2 == "gold"))
        .map(|i| order(i).0)
        .collect();
    let notes = shop
        .until(
            "/v1/topics/notifications/events?from=earliest&limit=1000",
            "notifications",
            |v| v["events"].as_array().unwrap().len() >= gold.len(),
        )
        .await;
    let mut notified: Vec<String> = notes["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["data"]["order"].as_str().unwrap().to_owned())
        .collect();
    notified.sort();
    assert_eq!(notified, gold);

    // Event sourcing's read side: the revenue projection folded every order, and the
    // cancellation took the declined order back out.
    let events_folded = (ORDERS + 1) as u64;
    shop.until("/v1/projections/revenue", "projection caught up", |v| {
        v["lag"] == 0
    })
    .await;
    shop.until(
        "/v1/projections/revenue/state/events",
        "every event folded",
        |v| *v == json!(events_folded),
    )
    .await;
    let mut revenue: BTreeMap<&str, f64> = BTreeMap::new();
    for i in 0..ORDERS - 1 {
        for (sku, qty) in order(i).2 {
            *revenue.entry(sku).or_default() += price(sku) * qty as f64;
        }
    }
    for (sku, want) in &revenue {
        let v = shop
            .ok(
                "GET",
                &format!("/v1/projections/revenue/state/revenue:{sku}"),
                None,
            )
            .await;
        let got = v.as_f64().unwrap();
        assert!(
            (got - want).abs() < 1e-6,
            "revenue of {sku}: {got} != {want}"
        );
    }

    // Event-carried state transfer, again: a customer renamed by an event is what the
    // next order carries; the order service never asked anyone.
    shop.publish(
        "customers",
        &[customer("c-2", "Grace Hopper", "standard", 2)],
    )
    .await;
    shop.until(
        "/v1/functions/order-service/state/customer:c-2",
        "replica",
        |v| v["name"] == "Grace Hopper",
    )
    .await;
    let late = ORDERS + 1; // customer index 13 % 3 == 1: c-2
    place(&shop, late).await;
    let (late_id, ..) = order(late);
    let status = shop
        .until(
            &format!("/v1/topics/order-status/table/{late_id}"),
            "late order",
            |v| v["entry"]["event"]["data"]["status"] == "shipped",
        )
        .await;
    assert_eq!(status["entry"]["event"]["data"]["customer"], "Grace Hopper");

    // Live: the SSE client saw the orders' statuses as they were published.
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !seen.contains(&format!("\"order\":\"{late_id}\"")) || !seen.contains("\"shipped\"") {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, live.chunk()).await;
        let chunk = chunk
            .expect("live updates stopped")
            .unwrap()
            .expect("stream open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    for i in 0..ORDERS {
        assert!(
            seen.contains(&format!("\"order\":\"{}\"", order(i).0)),
            "live: {}",
            order(i).0
        );
    }

    // Queue-based load leveling: a burst of 10,000 orders straight into the fulfilment
    // queue waits there; at most 4 invocations ever run at once; every order is packed.
    for chunk in 0..BURST / 1000 {
        let messages: Vec<Value> = (0..1000)
            .map(|k| {
                json!({"body": {"order": format!("burst-{}", chunk * 1000 + k),
                                "items": [{"sku": "cup", "qty": 1}]}})
            })
            .collect();
        shop.ok(
            "POST",
            "/v1/queues/fulfilment/messages",
            Some(json!({"messages": messages})),
        )
        .await;
    }
    let want_packed = BURST + ORDERS + 1;
    let deadline = Instant::now() + Duration::from_secs(300);
    while packed(&shop).await < want_packed {
        assert!(Instant::now() < deadline, "the burst was not packed");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(packed(&shop).await, want_packed);
    let t = shop.ok("GET", "/v1/triggers/fulfil-orders", None).await;
    let max = t["stats"]["max_in_flight"].as_u64().unwrap();
    assert!((1..=4).contains(&max), "concurrency cap held: {t}");
    assert!(
        t["stats"]["throttled_concurrency"].as_u64().unwrap() > 0,
        "the burst waited for the cap: {t}"
    );
    let q = shop.ok("GET", "/v1/queues/fulfilment", None).await;
    assert_eq!(q["stats"]["dead_lettered"], 0, "{q}");

    // The page, in a real browser: it shows the orders and a new one arriving live.
    browser_sees_live_update(&shop, ORDERS + 2).await;

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}

/// How many orders the fulfilment function recorded as packed (one key each).
async fn packed(shop: &Shop) -> usize {
    let mut count = 0;
    let mut after = String::new();
    loop {
        let v = shop
            .ok(
                "GET",
                &format!("/v1/functions/fulfil/state?prefix=packed:&limit=1000&after={after}"),
                None,
            )
            .await;
        let keys = v["keys"].as_array().unwrap();
        count += keys.len();
        match keys.last() {
            Some(k) if keys.len() == 1000 => after = k.as_str().unwrap().to_owned(),
            _ => return count,
        }
    }
}

/// Opens the shop's page in headless Chromium (driven over the DevTools protocol by
/// `tests/browser/live_page.py`), waits for it to show the orders placed so far, places
/// order `i`, and waits for the page to show it shipped.
async fn browser_sees_live_update(shop: &Shop, i: usize) {
    let root = workspace();
    let mut driver = Command::new(root.join(".tools/py/bin/python"))
        .arg(root.join("crates/cli/tests/browser/live_page.py"))
        .arg(format!("{}/app/", shop.url()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdin = driver.stdin.take().unwrap();
    let mut stdout = BufReader::new(driver.stdout.take().unwrap());
    let mut line = String::new();
    let mut read = move || {
        line.clear();
        stdout.read_line(&mut line).unwrap();
        line.trim().to_owned()
    };
    assert_eq!(read(), "ready", "the page went live");
    // Already there when the page opened: an order placed before.
    let (first, ..) = order(0);
    writeln!(stdin, "{first} shipped").unwrap();
    let shown = read();
    assert!(shown.starts_with(&format!("seen {first}")), "{shown}");
    // Arriving while the page is open.
    let (id, ..) = order(i);
    writeln!(stdin, "{id} shipped").unwrap();
    place(shop, i).await;
    let shown = tokio::task::spawn_blocking(read).await.unwrap();
    assert!(shown.starts_with(&format!("seen {id}")), "{shown}");
    assert!(shown.contains("shipped"), "{shown}");
    drop(stdin);
    assert!(driver.wait().unwrap().success());
}
