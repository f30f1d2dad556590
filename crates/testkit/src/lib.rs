//! Test support: a real `sluice serve` process on port 0 with its own data directory, a
//! JSON client for its API, and the means to kill it (SIGKILL) and restart it on the same
//! data, as a crash would.

mod api;
mod guests;
mod lines;

pub use api::Api;
pub use guests::{build_guest, workspace};
pub use lines::Lines;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A server process under test; its API client's methods (`call`, `ok`, …) are its own.
pub struct TestServer {
    binary: PathBuf,
    dir: tempfile::TempDir,
    extra_args: Vec<String>,
    child: Option<Child>,
    api: Api,
}

impl std::ops::Deref for TestServer {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl TestServer {
    /// Starts `binary serve` on 127.0.0.1:0 with a fresh data directory and `extra_args`.
    pub fn start(binary: impl AsRef<Path>, extra_args: &[&str]) -> Self {
        let mut server = Self {
            binary: binary.as_ref().to_path_buf(),
            dir: tempfile::tempdir().expect("temp dir"),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            child: None,
            api: Api::new(""),
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
        self.api = Api::new(&url);
        self.child = Some(child);
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
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A child process killed (SIGKILL) when dropped, so that a test that fails part-way
/// leaves no server behind.
pub struct KillOnDrop(pub Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
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
