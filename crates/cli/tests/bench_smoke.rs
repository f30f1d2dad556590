//! The benchmark harness works end to end on a tiny configuration (a smoke test of the
//! harness, not a measurement: figures come from `scripts/bench`).

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
