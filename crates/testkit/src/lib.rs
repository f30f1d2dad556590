//! Test support: a real `sluice serve` process on port 0 with its own data directory, a
//! JSON client for its API, and the means to kill it (SIGKILL) and restart it on the same
//! data, as a crash would.

mod guests;
mod lines;

pub use guests::{build_guest, workspace};
pub use lines::Lines;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// A server process under test.
pub struct TestServer {
    binary: PathBuf,
    dir: tempfile::TempDir,
    extra_args: Vec<String>,
    child: Option<Child>,
    url: String,
    http: reqwest::Client,
}

impl TestServer {
    /// Starts `binary serve` on 127.0.0.1:0 with a fresh data directory and `extra_args`.
    pub fn start(binary: impl AsRef<Path>, extra_args: &[&str]) -> Self {
        let mut server = Self {
            binary: binary.as_ref().to_path_buf(),
            dir: tempfile::tempdir().expect("temp dir"),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            child: None,
            url: String::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("http client"),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut child = Command::new(&self.binary)
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(self.dir.path())
            .args(&self.extra_args)
            .env("SLUICE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning sluice serve");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("reading the listening line");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("server did not start: {line:?}"))
            .to_owned();
        self.url = url;
        self.child = Some(child);
    }

    /// The base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the process with SIGKILL: no shutdown, no final sync.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits for a clean exit; returns whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        child.wait().map(|s| s.success()).unwrap_or(false)
    }

    /// Kills the process (SIGKILL) and starts it again on the same data directory.
    pub fn crash_and_restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Calls the API with an optional JSON body; returns the status and the parsed body
    /// (a JSON string holding the raw text when the body is not JSON).
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request reaches the server");
        Self::read(resp).await
    }

    /// Calls the API and asserts a 2xx answer; returns its body.
    pub async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method, path, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {v}"
        );
        v
    }

    /// Deploys the component `wasm` as a new version of function `name` with the deploy
    /// query `query` (e.g. `memory=128MiB&env=K%3DV`); asserts it was created.
    pub async fn deploy(&self, name: &str, wasm: Vec<u8>, query: &str) -> Value {
        let path = format!("/v1/functions/{name}/versions?{query}");
        let (status, v) = self
            .call_with("POST", &path, &[("content-type", "application/wasm")], wasm)
            .await;
        assert_eq!(status, 201, "deploy {name}: {v}");
        v
    }

    /// Sends raw bytes as `application/json`.
    pub async fn call_raw(&self, method: &str, path: &str, body: Vec<u8>) -> (u16, Value) {
        self.call_with(method, path, &[("content-type", "application/json")], body)
            .await
    }

    /// Sends raw bytes with the given headers.
    pub async fn call_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req
            .body(body)
            .send()
            .await
            .expect("request reaches the server");
        Self::read(resp).await
    }

    async fn read(resp: reqwest::Response) -> (u16, Value) {
        let status = resp.status().as_u16();
        let problem = resp
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes() == b"application/problem+json");
        let text = resp.text().await.expect("response body");
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status >= 400 {
            assert!(problem, "error answers are problem+json: {status} {value}");
        }
        (status, value)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The seed of a randomized test: `SLUICE_CRASH_SEED` if set, else a fresh one. Printed,
/// with how to rerun with it, so a failure can be replayed.
pub fn crash_seed(test: &str) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let seed = std::env::var("SLUICE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        });
    eprintln!("{test} seed {seed} (rerun with SLUICE_CRASH_SEED={seed})");
    seed
}
