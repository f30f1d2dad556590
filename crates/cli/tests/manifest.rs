//! `sluice apply` against the real server: a manifest of every kind of resource is planned
//! (`--dry-run` changes nothing), created, applied again without changes, updated field by
//! field (a function gets a new version only when its component or settings change), its
//! functions built only when their sources change, and bad manifests are refused at their
//! line with nothing applied.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use sluice_testkit::{Api, KillOnDrop, Lines, TestServer};

fn sluice(s: &TestServer, dir: &Path, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .current_dir(dir)
        .env("SLUICE_SERVER", s.url())
        .output()
        .unwrap()
}

/// Runs `sluice apply --output json` with `extra` flags; returns its JSON and stderr.
fn apply(s: &TestServer, dir: &Path, extra: &[&str]) -> (Value, String) {
    let mut args = vec!["apply", "--output", "json"];
    args.extend_from_slice(extra);
    let out = sluice(s, dir, &args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "sluice {args:?}: {stderr}");
    (serde_json::from_slice(&out.stdout).unwrap(), stderr)
}

/// The action applied to each resource, as `kind name` → action.
fn actions(v: &Value) -> Vec<(String, String)> {
    v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                format!(
                    "{} {}",
                    c["kind"].as_str().unwrap(),
                    c["name"].as_str().unwrap()
                ),
                c["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

const MANIFEST: &str = r#"
[app]
name = "test-app"

[queues.orders]
max_attempts = 3
dead_letter_queue = "orders-dlq"
retention = "2d"

[queues.orders-dlq]

[queues.big-orders]

[topics.placed]

[topics.customers]
compaction = { key = "subject" }

[subscriptions.placed.big]
filter = { data = { total = [{ numeric = [">", 100] }] } }
target = { type = "queue", queue = "big-orders" }
start = "earliest"

[event_subscriptions.order-feed]
category = "order"
max_attempts = 4
dead_letter_queue = "orders-dlq"

[functions.handler]
wasm = "build/handler.wasm"
memory = "64MiB"
env = { GREETING = "hello world" }
build = { command = ["tools/build.sh", "src/handler.wasm"], sources = ["src"] }

[[sagas.checkout.steps]]
name = "reserve"
action = { invoke = { function = "handler" } }

[triggers.handle-orders]
function = "handler"
source = { queue = "orders" }
batch_size = 10
max_concurrency = 2
"#;

fn set_mtime(path: &Path, t: SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

#[tokio::test]
async fn apply_plans_creates_updates_and_leaves_the_rest_alone() {
    let s = TestServer::start(env!("CARGO_BIN_EXE_sluice"), &[]);
    let dir = tempfile::tempdir().unwrap();
    let d = &dir.path().join("app");
    for sub in ["src", "build", "tools"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    std::fs::write(d.join("src/handler.wasm"), sluice_guests::ok()).unwrap();
    std::fs::write(d.join("sluice.toml"), MANIFEST).unwrap();
    // A build script the manifest names by a path relative to itself.
    let script = d.join("tools/build.sh");
    std::fs::write(&script, "#!/bin/sh\nexec cp \"$1\" build/handler.wasm\n").unwrap();
    let mut perms = std::fs::metadata(&script).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&script, perms).unwrap();

    // The plan: everything is created, in dependency order; nothing is built or written.
    let (plan, stderr) = apply(&s, d, &["--dry-run"]);
    assert_eq!(plan["dry_run"], true);
    assert_eq!(
        actions(&plan),
        [
            ("queue big-orders", "create"),
            ("queue orders-dlq", "create"),
            ("queue orders", "create"),
            ("topic customers", "create"),
            ("topic placed", "create"),
            ("subscription placed/big", "create"),
            ("event_subscription order-feed", "create"),
            ("function handler", "create"),
            ("saga checkout", "create"),
            ("trigger handle-orders", "create"),
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    assert!(stderr.contains("would build function handler"), "{stderr}");
    assert!(!d.join("build/handler.wasm").exists());
    let (status, _) = s.call("GET", "/v1/queues/orders", None).await;
    assert_eq!(status, 404, "a dry run changes nothing");

    // Applied from another directory: built (the build runs in the manifest's directory),
    // then created as described.
    let (v, stderr) = apply(&s, dir.path(), &["-f", "app/sluice.toml"]);
    assert!(stderr.contains("building function handler"), "{stderr}");
    assert_eq!(v["created"], 10, "{v}");
    let q = s.ok("GET", "/v1/queues/orders", None).await;
    assert_eq!(q["max_attempts"], 3);
    assert_eq!(q["dead_letter_queue"], "orders-dlq");
    assert_eq!(q["retention"], "2d");
    let t = s.ok("GET", "/v1/topics/customers", None).await;
    assert_eq!(t["compaction"]["key"], "subject");
    let sub = s
        .ok("GET", "/v1/topics/placed/subscriptions/big", None)
        .await;
    assert_eq!(sub["target"]["queue"], "big-orders");
    assert_eq!(sub["filter"]["data"]["total"][0]["numeric"][1], 100);
    let f = s.ok("GET", "/v1/functions/handler", None).await;
    assert_eq!(f["versions"].as_array().unwrap().len(), 1);
    assert_eq!(f["versions"][0]["memory"], "64MiB");
    assert_eq!(f["versions"][0]["env"]["GREETING"], "hello world");
    let tr = s.ok("GET", "/v1/triggers/handle-orders", None).await;
    assert_eq!(tr["config"]["batch_size"], 10);
    assert_eq!(tr["config"]["max_concurrency"], 2);
    s.ok("GET", "/v1/sagas/definitions/checkout", None).await;
    let feed = s
        .ok("GET", "/v1/topics/$all/subscriptions/order-feed", None)
        .await;
    assert_eq!(feed["max_attempts"], 4);
    assert_eq!(feed["start"], "earliest", "the event store's default start");

    // The subscription works as applied: only the big order reaches its queue.
    let placed = |id: &str, total: u32| {
        json!({"specversion": "1.0", "source": "/shop", "type": "order.placed", "id": id,
               "data": {"total": total}})
    };
    for event in [placed("o1", 20), placed("o2", 500)] {
        s.publish_event("placed", &event).await;
    }
    let mut visible = Value::Null;
    for _ in 0..100 {
        visible = s.ok("GET", "/v1/queues/big-orders", None).await["stats"]["visible"].clone();
        if visible == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(visible, 1);

    // Applied again: nothing changes, nothing is built, no new function version.
    let (v, stderr) = apply(&s, d, &[]);
    assert_eq!(
        (v["created"].clone(), v["updated"].clone()),
        (json!(0), json!(0)),
        "{v}"
    );
    assert_eq!(v["unchanged"], 10);
    assert!(!stderr.contains("building"), "{stderr}");
    let f = s.ok("GET", "/v1/functions/handler", None).await;
    assert_eq!(f["versions"].as_array().unwrap().len(), 1);

    // A trigger paused by an operator stays paused: pausing is not configuration.
    s.ok("POST", "/v1/triggers/handle-orders/pause", None).await;
    let (v, _) = apply(&s, d, &[]);
    assert_eq!(v["updated"], 0, "{v}");
    let tr = s.ok("GET", "/v1/triggers/handle-orders", None).await;
    assert_eq!(tr["config"]["paused"], true);

    // Three edits: each is one update naming its field; a changed function setting is a
    // new version, now live.
    let edited = MANIFEST
        .replace("retention = \"2d\"", "retention = \"1d\"")
        .replace("batch_size = 10", "batch_size = 20")
        .replace("\"hello world\"", "\"bonjour\"");
    std::fs::write(d.join("sluice.toml"), &edited).unwrap();
    let (plan, _) = apply(&s, d, &["--dry-run"]);
    assert_eq!(plan["updated"], 3, "{plan}");
    let q = s.ok("GET", "/v1/queues/orders", None).await;
    assert_eq!(q["retention"], "2d", "a dry run changes nothing");
    let (v, _) = apply(&s, d, &[]);
    assert_eq!(v["updated"], 3, "{v}");
    assert_eq!(v["unchanged"], 7, "{v}");
    let changes = v["changes"].as_array().unwrap();
    let change = |name: &str| changes.iter().find(|c| c["name"] == name).unwrap();
    assert_eq!(change("orders")["fields"][0]["field"], "retention");
    assert_eq!(change("orders")["fields"][0]["from"], "2d");
    assert_eq!(change("orders")["fields"][0]["to"], "1d");
    assert_eq!(change("handle-orders")["fields"][0]["field"], "batch_size");
    assert_eq!(change("handler")["fields"][0]["field"], "env");
    let f = s.ok("GET", "/v1/functions/handler", None).await;
    assert_eq!(f["versions"].as_array().unwrap().len(), 2);
    assert_eq!(f["aliases"]["live"], 2);
    assert_eq!(f["versions"][1]["env"]["GREETING"], "bonjour");
    assert_eq!(
        s.ok("GET", "/v1/queues/orders", None).await["retention"],
        "1d"
    );

    // A changed source is rebuilt; a new component is a new version.
    std::fs::write(d.join("src/handler.wasm"), sluice_guests::error()).unwrap();
    set_mtime(
        &d.join("build/handler.wasm"),
        SystemTime::now() - Duration::from_secs(60),
    );
    let (v, stderr) = apply(&s, d, &[]);
    assert!(
        stderr.contains("building function handler (src/handler.wasm changed)"),
        "{stderr}"
    );
    assert_eq!(change_of(&v, "handler"), "update", "{v}");
    let f = s.ok("GET", "/v1/functions/handler", None).await;
    assert_eq!(f["versions"].as_array().unwrap().len(), 3);

    // The human output names each change, and counts the rest.
    std::fs::write(
        d.join("sluice.toml"),
        edited.replace("retention = \"1d\"", "retention = \"3d\""),
    )
    .unwrap();
    let out = sluice(&s, d, &["apply", "--dry-run"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("  update     queue orders: retention \"1d\" → \"3d\""),
        "{text}"
    );
    assert!(!text.contains("topic placed"), "{text}");
    assert!(
        text.contains("dry run: 0 to create, 1 to update, 9 unchanged"),
        "{text}"
    );
}

fn change_of(v: &Value, name: &str) -> String {
    v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .map(|c| c["action"].as_str().unwrap().to_owned())
        .unwrap()
}

#[tokio::test]
async fn bad_manifests_are_refused_at_their_line_with_nothing_applied() {
    let s = TestServer::start(env!("CARGO_BIN_EXE_sluice"), &[]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: &[(&str, &str, &str)] = &[
        (
            "a misspelt field",
            "[queues.a]\n\n[queues.b]\nmax_atempts = 3\n",
            "sluice.toml:4:1: queues.b: unknown field `max_atempts`",
        ),
        (
            "a value out of range",
            "[queues.a]\n[topics.t]\nmax_event_size = \"1GiB\"\n",
            "sluice.toml:2:1: topics.t: max_event_size",
        ),
        (
            "a missing component",
            "[queues.a]\n[functions.f]\nwasm = \"nowhere.wasm\"\n",
            "sluice.toml:2:1: functions.f: wasm: cannot read",
        ),
    ];
    for (what, text, expect) in cases {
        std::fs::write(d.join("sluice.toml"), text).unwrap();
        let out = sluice(&s, d, &["apply"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}");
        assert!(stderr.contains(expect), "{what}: {stderr}");
        let (status, _) = s.call("GET", "/v1/queues/a", None).await;
        assert_eq!(status, 404, "{what}: nothing is applied");
    }

    // What only the server knows is refused by it, at the entry's line; what came before
    // it stays applied.
    std::fs::write(
        d.join("sluice.toml"),
        "[queues.a]\n\n[triggers.t]\nfunction = \"missing\"\nsource = { queue = \"a\" }\n",
    )
    .unwrap();
    let out = sluice(&s, d, &["apply"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("sluice.toml:3:1: triggers.t: "), "{stderr}");
    assert!(stderr.contains("missing"), "{stderr}");
    s.ok("GET", "/v1/queues/a", None).await;

    // A missing manifest says so.
    let out = sluice(&s, d, &["apply", "-f", "other.toml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("other.toml: cannot read it"), "{stderr}");
}

/// Sends `GET path` as written, without the normalisation an HTTP client does; returns
/// the whole answer.
async fn raw_get(url: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    answer
}

/// Replaces the manifest in one step, as an editor that saves by renaming does.
fn save(dir: &Path, text: &str) {
    std::fs::write(dir.join("sluice.toml.new"), text).unwrap();
    std::fs::rename(dir.join("sluice.toml.new"), dir.join("sluice.toml")).unwrap();
}

const UP_MANIFEST: &str = r#"
[app]
name = "up-test"
site = "web"

[queues.jobs]

[functions.handler]
wasm = "build/handler.wasm"
build = { command = ["cp", "src/handler.wasm", "build/handler.wasm"], sources = ["src"] }

[triggers.run-jobs]
function = "handler"
source = { queue = "jobs" }
batch_size = 1
"#;

#[tokio::test]
async fn up_serves_applies_follows_logs_and_reapplies_changes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for sub in ["src", "build", "web"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    std::fs::write(d.join("src/handler.wasm"), sluice_guests::ok()).unwrap();
    std::fs::write(d.join("web/index.html"), "<h1>orders</h1>").unwrap();
    std::fs::write(d.join("sluice.toml"), UP_MANIFEST).unwrap();
    let mut child = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["up", "--listen", "127.0.0.1:0", "--data-dir", "data"])
            .current_dir(d)
            .env("SLUICE_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = Lines::of(&mut child);
    let url = lines
        .wait_for("listening on ")
        .split("listening on ")
        .nth(1)
        .unwrap()
        .trim()
        .to_owned();
    lines.wait_for("building function handler");
    lines.wait_for("3 created, 0 updated, 0 unchanged");
    lines.wait_for("following the logs of 1 functions");
    let api = Api::new(&url);

    // The app's page (not JSON: read as it is), and nothing outside it.
    let page = api.http().get(format!("{url}/app/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert_eq!(page.text().await.unwrap(), "<h1>orders</h1>");
    for missing in ["/app/nothing.html", "/app/.hidden"] {
        let (status, _) = api.call("GET", missing, None).await;
        assert_eq!(status, 404, "{missing}");
    }
    // HTTP clients resolve `..` before sending; a hostile one does not. The manifest sits
    // one directory above the site.
    let raw = raw_get(&url, "/app/../sluice.toml").await;
    assert!(raw.starts_with("HTTP/1.1 404"), "{raw}");
    assert!(!raw.contains("[app]"), "{raw}");

    // A job runs the function; its invocation shows in the followed log.
    api.ok(
        "POST",
        "/v1/queues/jobs/messages",
        Some(json!({"messages": [{"body": {"job": 1}}]})),
    )
    .await;
    let logged = lines.wait_for("handler | ");
    assert!(logged.contains("trigger run-jobs"), "{logged}");

    // An edited manifest is applied as it is saved; a broken one is reported and the
    // server keeps what was applied.
    save(d, &UP_MANIFEST.replace("batch_size = 1", "batch_size = 5"));
    lines.wait_for("sluice.toml changed: applying");
    lines.wait_for("0 created, 1 updated, 2 unchanged");
    let t = api.ok("GET", "/v1/triggers/run-jobs", None).await;
    assert_eq!(t["config"]["batch_size"], 5);
    save(d, "[queues.jobs]\nbogus = 1\n");
    let refused = lines.wait_for("keeping the manifest applied last");
    assert!(
        refused.contains("sluice.toml:2:1: queues.jobs: unknown field `bogus`"),
        "{refused}"
    );
    save(d, &UP_MANIFEST.replace("batch_size = 1", "batch_size = 5"));
    lines.wait_for("0 created, 0 updated, 3 unchanged");

    // An edited source is rebuilt and deployed as a new version.
    std::fs::write(d.join("src/handler.wasm"), sluice_guests::error()).unwrap();
    set_mtime(
        &d.join("build/handler.wasm"),
        SystemTime::now() - Duration::from_secs(60),
    );
    lines.wait_for("building function handler (src/handler.wasm changed)");
    lines.wait_for("0 created, 1 updated, 2 unchanged");
    let f = api.ok("GET", "/v1/functions/handler", None).await;
    assert_eq!(f["aliases"]["live"], 2, "{f}");

    // Ctrl-C (SIGTERM here) stops it cleanly.
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}
