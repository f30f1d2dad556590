//! Group commit: writers append to the journal and take a ticket; one syncer thread persists
//! the journal once for every ticket issued so far and wakes all their waiters together.
//!
//! The fsync itself runs outside the storage engine's journal lock (see [`JournalSync`]), so
//! writers keep appending while a sync is in flight instead of queueing behind it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fjall::{Database, PersistMode};
use sluice_types::metrics::{COUNT_BUCKETS, Histogram, SECONDS_BUCKETS};
use tokio::sync::watch;

use crate::{Error, Metrics, Result, Stats};

/// A write that takes this long is logged: every send and receive waited for it.
const SLOW_WRITE: Duration = Duration::from_millis(100);

/// Identifies a write in journal order; durable once the syncer has persisted up to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

/// What the syncer has made durable, or the error that stopped it.
#[derive(Debug, Clone)]
enum Synced {
    UpTo(u64),
    Failed(Error),
}

pub(crate) struct GroupCommit {
    shared: Arc<Shared>,
    durable_rx: watch::Receiver<Synced>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    /// Tickets issued; a write takes its ticket only after its journal append returned.
    written: AtomicU64,
    syncs: AtomicU64,
    /// How long each journal persist took.
    sync_seconds: Histogram,
    /// How long each write took to append (journal and memtables, with whatever the
    /// storage engine made it wait for).
    write_seconds: Histogram,
    /// Batches each persist made durable: the group in group commit.
    sync_batches: Histogram,
    healthy: AtomicBool,
    wake: Mutex<Wake>,
    cond: Condvar,
}

#[derive(Default)]
struct Wake {
    pending: bool,
    stop: bool,
}

impl GroupCommit {
    /// Starts the syncer thread. With `background`, the syncer also persists on that interval
    /// even when nobody waits (relaxed mode bounds its loss window this way).
    pub(crate) fn start(db: Database, dir: PathBuf, background: Option<Duration>) -> Self {
        let shared = Arc::new(Shared {
            written: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            sync_seconds: Histogram::new(SECONDS_BUCKETS),
            write_seconds: Histogram::new(SECONDS_BUCKETS),
            sync_batches: Histogram::new(COUNT_BUCKETS),
            healthy: AtomicBool::new(true),
            wake: Mutex::new(Wake::default()),
            cond: Condvar::new(),
        });
        let (tx, rx) = watch::channel(Synced::UpTo(0));
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-sync".into())
            .spawn(move || sync_loop(JournalSync::new(db, dir), background, thread_shared, tx))
            .expect("spawning the store sync thread");
        Self {
            shared,
            durable_rx: rx,
            thread: Mutex::new(Some(thread)),
        }
    }

    /// Runs `append` (a journal write) and returns its ticket. In relaxed mode the append
    /// already reached the OS, so the ticket is durable at once.
    pub(crate) fn write(
        &self,
        append: impl FnOnce() -> Result<()>,
        relaxed: bool,
    ) -> Result<Ticket> {
        if !self.shared.healthy.load(Ordering::Acquire) {
            return Err(self.failure());
        }
        let started = Instant::now();
        append()?;
        let took = started.elapsed();
        self.shared.write_seconds.observe(took.as_secs_f64());
        if took >= SLOW_WRITE {
            tracing::warn!(
                took_ms = took.as_millis() as u64,
                "a store write took long: the storage engine held it up, and every send and receive waited"
            );
        }
        let ticket = self.shared.written.fetch_add(1, Ordering::AcqRel) + 1;
        if relaxed {
            return Ok(Ticket(0));
        }
        let mut wake = self.shared.wake.lock().expect("sync lock poisoned");
        if !wake.pending {
            wake.pending = true;
            self.shared.cond.notify_one();
        }
        Ok(Ticket(ticket))
    }

    pub(crate) fn last_written(&self) -> Ticket {
        Ticket(self.shared.written.load(Ordering::Acquire))
    }

    pub(crate) async fn durable(&self, ticket: Ticket) -> Result<()> {
        if ticket.0 == 0 {
            return Ok(());
        }
        let mut rx = self.durable_rx.clone();
        let seen = rx
            .wait_for(|s| match s {
                Synced::UpTo(n) => *n >= ticket.0,
                Synced::Failed(_) => true,
            })
            .await
            .map_err(|_| Error::Closed)?;
        match &*seen {
            Synced::UpTo(_) => Ok(()),
            Synced::Failed(e) => Err(e.clone()),
        }
    }

    fn failure(&self) -> Error {
        match &*self.durable_rx.borrow() {
            Synced::Failed(e) => e.clone(),
            Synced::UpTo(_) => Error::Closed,
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        Stats {
            batches: self.shared.written.load(Ordering::Relaxed),
            syncs: self.shared.syncs.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn metrics(&self) -> Metrics {
        Metrics {
            stats: self.stats(),
            sync_seconds: self.shared.sync_seconds.snapshot(),
            write_seconds: self.shared.write_seconds.snapshot(),
            sync_batches: self.shared.sync_batches.snapshot(),
        }
    }

    pub(crate) fn is_healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Acquire)
    }

    pub(crate) fn stop(&self) {
        {
            let mut wake = self.shared.wake.lock().expect("sync lock poisoned");
            wake.stop = true;
            self.shared.cond.notify_one();
        }
        if let Some(t) = self.thread.lock().expect("sync lock poisoned").take() {
            let _ = t.join();
        }
    }
}

/// Makes everything appended to the journal so far durable.
///
/// The engine's own `persist(SyncData)` holds its journal lock through the fsync, which
/// stalls every writer for the length of the fsync. Instead this flushes the journal's
/// buffer to the OS under the lock (`persist(Buffer)`, a `write`), then fdatasyncs the
/// active journal file through its own descriptor, without the lock. That covers every write
/// appended before the flush: it sits either in the active journal, synced here, or in an
/// older one, which the engine fsyncs when it rotates to a new journal file, before the new
/// file takes writes. If no journal file can be found the engine's own persist is used.
struct JournalSync {
    db: Database,
    dir: PathBuf,
    /// The journal file synced last: its number, path and descriptor.
    active: Option<(u64, PathBuf, File)>,
}

impl JournalSync {
    fn new(db: Database, dir: PathBuf) -> Self {
        Self {
            db,
            dir,
            active: None,
        }
    }

    fn sync(&mut self) -> std::result::Result<(), String> {
        self.db
            .persist(PersistMode::Buffer)
            .map_err(|e| e.to_string())?;
        // The engine rotates from `N.jnl` to `N+1.jnl`, creating the new file (after syncing
        // the old one) before anything is written to it. So if `N+1.jnl` does not exist now,
        // after the flush, every write so far is in `N.jnl` or in a journal already synced:
        // one stat instead of listing the directory on every sync.
        let rotated = match &self.active {
            Some((n, _, _)) => self.dir.join(format!("{}.jnl", n + 1)).exists(),
            None => true,
        };
        if rotated {
            let Some((n, newest)) = newest_journal(&self.dir) else {
                return self
                    .db
                    .persist(PersistMode::SyncData)
                    .map_err(|e| e.to_string());
            };
            let file =
                File::open(&newest).map_err(|e| format!("opening {}: {e}", newest.display()))?;
            self.active = Some((n, newest, file));
        }
        let (_, path, file) = self.active.as_ref().expect("set above");
        file.sync_data()
            .map_err(|e| format!("fdatasync {}: {e}", path.display()))
    }
}

/// The journal file with the highest number (`N.jnl`) in `dir`: the one taking writes.
fn newest_journal(dir: &Path) -> Option<(u64, PathBuf)> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name();
            let n: u64 = name.to_str()?.strip_suffix(".jnl")?.parse().ok()?;
            Some((n, e.path()))
        })
        .max_by_key(|(n, _)| *n)
}

fn sync_loop(
    mut journal: JournalSync,
    background: Option<Duration>,
    shared: Arc<Shared>,
    tx: watch::Sender<Synced>,
) {
    let mut synced = 0u64;
    loop {
        {
            let mut wake = shared.wake.lock().expect("sync lock poisoned");
            loop {
                if wake.stop {
                    return;
                }
                if wake.pending {
                    wake.pending = false;
                    break;
                }
                match background {
                    Some(every) => {
                        let (w, timeout) = shared
                            .cond
                            .wait_timeout(wake, every)
                            .expect("sync lock poisoned");
                        wake = w;
                        if timeout.timed_out() {
                            break;
                        }
                    }
                    None => wake = shared.cond.wait(wake).expect("sync lock poisoned"),
                }
            }
        }
        // Every ticket up to `target` was issued after its append returned, so this persist
        // covers all of them.
        let target = shared.written.load(Ordering::Acquire);
        if target == synced && background.is_some() {
            continue;
        }
        let started = std::time::Instant::now();
        match journal.sync() {
            Ok(()) => {
                shared.sync_seconds.observe(started.elapsed().as_secs_f64());
                if target > synced {
                    shared.sync_batches.observe((target - synced) as f64);
                }
                synced = target;
                shared.syncs.fetch_add(1, Ordering::Relaxed);
                let _ = tx.send(Synced::UpTo(target));
            }
            Err(e) => {
                tracing::error!(error = %e, "journal persist failed; the store stops taking writes");
                shared.healthy.store(false, Ordering::Release);
                let _ = tx.send(Synced::Failed(Error::Engine(e.into())));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_engines_active_journal_so_syncs_skip_the_journal_lock() {
        // If the engine ever changed its journal layout, syncs would silently fall back to
        // its own (lock-holding) persist; this test notices that first.
        let dir = tempfile::tempdir().unwrap();
        let _store = crate::Store::open(dir.path(), crate::Options::default()).unwrap();
        let (n, newest) = newest_journal(dir.path()).expect("an active journal file");
        assert_eq!(
            (n, newest.file_name().unwrap().to_str().unwrap()),
            (0, "0.jnl")
        );
        std::fs::write(dir.path().join("7.jnl"), b"").unwrap();
        std::fs::write(dir.path().join("10.jnl.tmp"), b"").unwrap();
        assert_eq!(
            newest_journal(dir.path()).unwrap().1.file_name().unwrap(),
            "7.jnl"
        );
    }

    #[test]
    fn a_sync_follows_the_engine_to_its_next_journal() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::Store::open(dir.path(), crate::Options::default()).unwrap();
        let mut journal = JournalSync::new(store.inner.db.clone(), dir.path().to_path_buf());
        journal.sync().unwrap();
        assert_eq!(journal.active.as_ref().map(|(n, _, _)| *n), Some(0));
        // No N+1 yet: the same file, without listing the directory.
        journal.sync().unwrap();
        assert_eq!(journal.active.as_ref().map(|(n, _, _)| *n), Some(0));
        // A rotation creates N+1 before writing to it; the next sync syncs that one.
        std::fs::write(dir.path().join("1.jnl"), b"").unwrap();
        journal.sync().unwrap();
        assert_eq!(journal.active.as_ref().map(|(n, _, _)| *n), Some(1));
    }
}
