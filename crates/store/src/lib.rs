//! The embedded store of Sluice: named keyspaces on fjall, atomic batches across them, and
//! group commit, so many concurrent operations share one fsync.
//!
//! This crate is the only place that decides when data is durable. Callers build a [`Batch`]
//! touching any keyspaces (queue state now; function state and published events later), hand
//! it to [`Store::commit`], and are answered only once the batch is persisted under the
//! configured [`Durability`].

mod group_commit;

use std::path::Path;
use std::sync::Arc;

use fjall::{Database, KeyspaceCreateOptions, PersistMode};

use group_commit::GroupCommit;
pub use group_commit::Ticket;

/// A key or value as stored: cheap to clone, dereferences to bytes.
pub type Bytes = fjall::Slice;

/// When a write counts as acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Acknowledge after the journal holding the write is fsynced. Survives power loss.
    #[default]
    Strict,
    /// Acknowledge after the write reaches the operating system. Survives a crash of the
    /// Sluice process; an OS crash or power loss can lose the writes of the last
    /// `relaxed_sync_interval` (a background fsync runs that often).
    Relaxed,
}

/// Store settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// When writes are acknowledged.
    pub durability: Durability,
    /// Block cache size in bytes.
    pub cache_size_bytes: u64,
    /// In relaxed mode, how often the journal is fsynced in the background, in milliseconds.
    pub relaxed_sync_interval_ms: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            durability: Durability::Strict,
            cache_size_bytes: 16 << 20,
            relaxed_sync_interval_ms: 1_000,
        }
    }
}

/// What went wrong in the store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// An I/O or corruption error from the storage engine. After a failed fsync the store
    /// refuses further writes: what reached the disk is no longer known.
    #[error("storage engine: {0}")]
    Engine(Arc<str>),
    /// The store is shutting down and takes no more writes.
    #[error("store is closed")]
    Closed,
}

impl From<fjall::Error> for Error {
    fn from(e: fjall::Error) -> Self {
        Error::Engine(e.to_string().into())
    }
}

/// Store result.
pub type Result<T> = std::result::Result<T, Error>;

/// Write counters, for metrics and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Batches written.
    pub batches: u64,
    /// Journal persists (fsyncs in strict mode) that completed.
    pub syncs: u64,
}

/// Write counters and the persist histograms, for `/metrics`.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub stats: Stats,
    /// Seconds each journal persist (an fdatasync in strict mode) took.
    pub sync_seconds: sluice_types::metrics::HistogramSnapshot,
    /// Seconds each write took to append to the journal and the in-memory tables.
    pub write_seconds: sluice_types::metrics::HistogramSnapshot,
    /// Batches each persist made durable.
    pub sync_batches: sluice_types::metrics::HistogramSnapshot,
}

/// The embedded store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    durability: Durability,
    commit: GroupCommit,
}

/// One keyspace (an independent ordered key-value tree) of the store.
#[derive(Clone)]
pub struct Keyspace {
    inner: fjall::Keyspace,
}

impl std::fmt::Debug for Keyspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keyspace")
    }
}

/// An atomic set of writes across keyspaces.
pub struct Batch {
    inner: fjall::OwnedWriteBatch,
}

impl Store {
    /// Opens (creating if needed) the store in `path`, recovering its journal.
    pub fn open(path: &Path, options: Options) -> Result<Self> {
        let db = Database::builder(path)
            .cache_size(options.cache_size_bytes)
            .manual_journal_persist(true)
            .open()
            .map_err(|e| match e {
                fjall::Error::Locked => Error::Engine(
                    format!(
                        "the data directory {} is in use by another process (another Sluice \
                         server?); stop it or give another --data-dir",
                        path.display()
                    )
                    .into(),
                ),
                e => e.into(),
            })?;
        let background_interval = match options.durability {
            Durability::Strict => None,
            Durability::Relaxed => Some(std::time::Duration::from_millis(
                options.relaxed_sync_interval_ms.max(1),
            )),
        };
        let commit = GroupCommit::start(db.clone(), path.to_path_buf(), background_interval);
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                durability: options.durability,
                commit,
            }),
        })
    }

    /// Opens or creates the keyspace `name` (letters, digits, `_`, `-`, `.`, `#`, `$`).
    pub fn keyspace(&self, name: &str) -> Result<Keyspace> {
        let inner = self
            .inner
            .db
            .keyspace(name, KeyspaceCreateOptions::default)?;
        Ok(Keyspace { inner })
    }

    /// A new empty batch.
    pub fn batch(&self) -> Batch {
        Batch {
            inner: self.inner.db.batch(),
        }
    }

    /// Applies `batch` atomically: readers see all of it at once, and after a crash either
    /// all of it or none of it is there. Returns a ticket to await durability with
    /// [`Store::durable`]; until then the write may be lost by a crash.
    pub fn write(&self, batch: Batch) -> Result<Ticket> {
        if batch.inner.is_empty() {
            return Ok(self.inner.commit.last_written());
        }
        let relaxed = self.inner.durability == Durability::Relaxed;
        let inner = if relaxed {
            // Relaxed: the write reaches the OS before this returns.
            batch.inner.durability(Some(PersistMode::Buffer))
        } else {
            batch.inner
        };
        self.inner
            .commit
            .write(|| inner.commit().map_err(Error::from), relaxed)
    }

    /// Waits until the write behind `ticket` is durable under the configured durability.
    pub async fn durable(&self, ticket: Ticket) -> Result<()> {
        self.inner.commit.durable(ticket).await
    }

    /// Writes `batch` and waits until it is durable.
    pub async fn commit(&self, batch: Batch) -> Result<()> {
        let ticket = self.write(batch)?;
        self.durable(ticket).await
    }

    /// Fsyncs everything written so far, whatever the durability mode. Used at shutdown.
    pub fn sync_all(&self) -> Result<()> {
        self.inner.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }

    /// The configured durability.
    pub fn durability(&self) -> Durability {
        self.inner.durability
    }

    /// Write counters so far.
    pub fn stats(&self) -> Stats {
        self.inner.commit.stats()
    }

    /// Counters and histograms for `/metrics`.
    pub fn metrics(&self) -> Metrics {
        self.inner.commit.metrics()
    }

    /// Whether the store still accepts writes (false after a failed persist).
    pub fn is_healthy(&self) -> bool {
        self.inner.commit.is_healthy()
    }

    /// Bytes the store occupies on disk.
    pub fn disk_space(&self) -> u64 {
        self.inner.db.disk_space().unwrap_or(0)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.commit.stop();
        if let Err(e) = self.db.persist(PersistMode::SyncAll) {
            tracing::error!(error = %e, "final journal sync failed");
        }
    }
}

impl Keyspace {
    /// The value of `key`, if present.
    pub fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        Ok(self.inner.get(key)?)
    }

    /// Whether `key` is present.
    pub fn contains(&self, key: &[u8]) -> Result<bool> {
        Ok(self.inner.contains_key(key)?)
    }

    /// Key-value pairs with `start <= key < end`, in key order, at most `limit` of them.
    pub fn range(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Bytes, Bytes)>> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        for guard in self.inner.range(start..end) {
            out.push(guard.into_inner()?);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Key-value pairs with `start <= key < end`, in reverse key order, at most `limit`.
    pub fn range_rev(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Bytes, Bytes)>> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        for guard in self.inner.range(start..end).rev() {
            out.push(guard.into_inner()?);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Keys with `start <= key < end`, in key order, at most `limit` of them.
    pub fn keys(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<Bytes>> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        for guard in self.inner.range(start..end) {
            out.push(guard.key()?);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }
}

impl Batch {
    /// Sets `key` to `value` in `keyspace`.
    pub fn put(&mut self, keyspace: &Keyspace, key: impl Into<Bytes>, value: impl Into<Bytes>) {
        self.inner.insert(&keyspace.inner, key.into(), value.into());
    }

    /// Removes `key` from `keyspace`.
    pub fn delete(&mut self, keyspace: &Keyspace, key: impl Into<Bytes>) {
        self.inner.remove(&keyspace.inner, key.into());
    }

    /// Number of writes in the batch.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether the batch holds no writes.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

#[cfg(test)]
mod tests;
