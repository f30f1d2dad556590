//! Server logs: JSON lines with `--log-format json`, human lines by default, and the
//! `SLUICE_LOG` filter in `RUST_LOG` syntax.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::Value;

/// Starts `sluice serve` with `args` and `SLUICE_LOG=filter`, stops it with SIGTERM once
/// it listens, and returns what it wrote to stderr.
fn serve_and_stop(args: &[&str], filter: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(args)
        .env("SLUICE_LOG", filter)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("listening on "), "{line}");
    // The signal handler is installed as the server starts serving, just after the line.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn json_lines_human_lines_and_the_filter() {
    let json = serve_and_stop(&["--log-format", "json"], "info");
    let lines: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let serving = lines
        .iter()
        .find(|l| l["fields"]["message"] == "sluice is serving")
        .unwrap_or_else(|| panic!("{json}"));
    assert_eq!(serving["level"], "INFO");
    assert_eq!(serving["target"], "sluice");
    assert!(
        serving["fields"]["addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert!(serving["timestamp"].is_string());

    let human = serve_and_stop(&[], "info");
    let serving = human
        .lines()
        .find(|l| l.contains("sluice is serving"))
        .unwrap_or_else(|| panic!("{human}"));
    assert!(serving.contains(" INFO "), "{serving}");
    assert!(serde_json::from_str::<Value>(serving).is_err());

    // The filter: only warnings and errors, except what a directive lets through.
    let quiet = serve_and_stop(&[], "warn");
    assert!(!quiet.contains("sluice is serving"), "{quiet}");
    let targeted = serve_and_stop(&[], "warn,sluice=info");
    assert!(targeted.contains("sluice is serving"), "{targeted}");
}
