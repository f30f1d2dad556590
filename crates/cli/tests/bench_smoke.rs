//! The benchmark harness works end to end on a tiny configuration (a smoke test of the
//! harness, not a measurement: figures come from `scripts/bench`, `scripts/bench-eventstore`
//! and `scripts/bench-sagas`).

use serde_json::Value;
use sluice_testkit::TestServer;

#[test]
fn bench_runs_every_workload_and_reports_json() {
    let server = TestServer::start(env!("CARGO_BIN_EXE_sluice"), &[]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["bench", "--server", server.url(), "--output", "json"])
        .args([
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
        ])
        .output()
        .expect("running sluice bench");
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("bench prints JSON");
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

/// Runs `sluice bench` with `args` against `server`; its JSON report.
fn bench(server: &TestServer, args: &[&str]) -> Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["bench", "--server", server.url(), "--output", "json"])
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

/// A fresh directory under the system's temp dir.
fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
