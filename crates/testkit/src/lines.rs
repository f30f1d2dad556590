//! The lines a child process prints on stdout and stderr, for tests that wait for what a
//! long-running command (`sluice up`) says.

use std::time::{Duration, Instant};

/// Lines a child process prints, on either stream, as they come. The two streams are
/// read apart, so lines of one may arrive before earlier lines of the other: a wait takes
/// the first line not yet taken that matches, whenever it arrived.
pub struct Lines {
    rx: std::sync::mpsc::Receiver<String>,
    /// Every line so far, and whether a wait took it.
    seen: Vec<(String, bool)>,
}

impl Lines {
    pub fn of(child: &mut std::process::Child) -> Lines {
        let (tx, rx) = std::sync::mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        for stream in [
            Box::new(out) as Box<dyn std::io::Read + Send>,
            Box::new(err) as Box<dyn std::io::Read + Send>,
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits up to a minute for a line containing `text` that no earlier wait took;
    /// takes and returns it.
    pub fn wait_for(&mut self, text: &str) -> String {
        self.wait_for_within(text, Duration::from_secs(60))
    }

    /// [`Lines::wait_for`], waiting up to `limit`.
    pub fn wait_for_within(&mut self, text: &str, limit: Duration) -> String {
        self.wait_for_unless(text, None, limit)
    }

    /// [`Lines::wait_for_within`], failing at once (with everything seen) if a line with
    /// `failure` comes first.
    pub fn wait_for_unless(
        &mut self,
        text: &str,
        failure: Option<&str>,
        limit: Duration,
    ) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some((line, taken)) = self
                .seen
                .iter_mut()
                .find(|(l, taken)| !*taken && l.contains(text))
            {
                *taken = true;
                return line.clone();
            }
            let all = |seen: &[(String, bool)]| {
                let all: Vec<&str> = seen.iter().map(|(l, _)| l.as_str()).collect();
                all.join("\n")
            };
            if let Some(f) = failure
                && self.seen.iter().any(|(l, _)| l.contains(f))
            {
                panic!(
                    "{f:?} before a line with {text:?}; saw:\n{}",
                    all(&self.seen)
                )
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => self.seen.push((line, false)),
                Err(_) => panic!("no line with {text:?}; saw:\n{}", all(&self.seen)),
            }
        }
    }
}
