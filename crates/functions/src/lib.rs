//! Functions: deploying components as immutable versions with aliases,
//! invoking them, and committing what an invocation did (events published,
//! messages sent, state written) atomically through the broker.
//!
//! The runtime runs guests and buffers their effects; this crate owns where
//! artifacts live, which version an alias points at, how many invocations of
//! a version run at once, and the commit.

pub mod alerts;
pub mod budget;
pub mod convert;
mod host;
pub mod lineage;
pub mod logs;
pub mod metering;
pub mod metrics;
pub mod projections;
pub mod registry;
pub mod saga_runner;
pub mod sagas;
pub mod telemetry;
pub mod triggers;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use sluice_broker::context::{EventContext, TraceParent};
use sluice_broker::{Broker, Commit, Error as BrokerError};
use sluice_runtime::{DeployError, Effects, Limits, Loaded, LogLine, Outcome, Runtime};
use sluice_store::{Keyspace, Store};
use sluice_types::{Name, SharedClock};
use tokio::sync::Semaphore;
use tracing::Instrument as _;

pub use lineage::LineageConfig;
pub use metering::{Admission, BudgetInfo};
pub use metrics::FunctionMetricsSnapshot;
pub use projections::{ProjectionConfig, ProjectionInfo, ProjectionSource, Projections};
pub use registry::{FunctionMeta, LIVE, VersionMeta, VersionSettings};
pub use sluice_runtime::{FailedEvent, RuntimeConfig};
pub use triggers::{Source, TriggerConfig, TriggerInfo, TriggerStats, Triggers};

/// Most events in one invocation.
pub const EVENTS_MAX: usize = 1_000;
/// Largest component accepted for deploy.
pub const ARTIFACT_MAX: usize = 128 << 20;
/// Components compiled at once (compiling a Python or JavaScript component
/// takes seconds of all cores).
const COMPILES_MAX: usize = 1;

/// Why a functions call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("function {0:?} does not exist")]
    FunctionNotFound(String),
    #[error("function {name:?} has no version {version}")]
    VersionNotFound { name: String, version: u32 },
    #[error("function {name:?} has no alias {alias:?}")]
    AliasNotFound { name: String, alias: String },
    #[error("version {version} of {name:?} is the target of alias {alias:?}; move the alias first")]
    VersionInUse {
        name: String,
        version: u32,
        alias: String,
    },
    #[error("trigger {0:?} does not exist")]
    TriggerNotFound(String),
    #[error("projection {0:?} does not exist")]
    ProjectionNotFound(String),
    #[error("invalid saga definition: {field}: {message}")]
    InvalidSaga { field: String, message: String },
    #[error("saga definition {0} does not exist")]
    SagaDefinitionNotFound(String),
    #[error("saga {0:?} does not exist")]
    SagaNotFound(String),
    #[error("{0}")]
    InvalidBudget(String),
    #[error("budget {0:?} does not exist")]
    BudgetNotFound(String),
    #[error(
        "function {name:?} is invoked by triggers {triggers:?} and saga definitions {sagas:?}; \
         delete or change them first"
    )]
    FunctionInUse {
        name: String,
        triggers: Vec<String>,
        sagas: Vec<String>,
    },
    #[error("{0}")]
    InvalidSettings(String),
    #[error("{0}")]
    InvalidInvocation(String),
    #[error("cannot deploy: {0}")]
    Deploy(#[from] DeployError),
    #[error("component of {size} bytes is larger than the limit of {max}")]
    ArtifactTooLarge { size: usize, max: usize },
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("storage failed: {0}")]
    Store(#[from] sluice_store::Error),
    #[error("function files: {0}")]
    Io(#[from] std::io::Error),
    #[error("runtime: {0}")]
    Runtime(String),
    #[error("corrupt function record: {0}")]
    Corrupt(String),
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Which version an invocation runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Alias(String),
    Version(u32),
}

impl Default for Target {
    fn default() -> Self {
        Target::Alias(LIVE.to_owned())
    }
}

/// A function with its versions, as answered by get and list.
#[derive(Debug, Clone)]
pub struct FunctionInfo {
    pub meta: FunctionMeta,
    pub versions: Vec<VersionMeta>,
}

/// The result of an invocation, committed or not.
#[derive(Debug)]
pub struct InvocationResult {
    /// A unique id of this invocation.
    pub id: String,
    pub version: u32,
    pub outcome: Outcome,
    /// Why effects were not committed although the function succeeded (a
    /// changed key, a topic deleted meanwhile); the outcome is then a failure.
    pub commit_error: Option<String>,
    /// What was committed (empty unless the outcome is success or partial failure).
    pub effects: Effects,
    pub logs: Vec<LogLine>,
    pub cold: bool,
    pub instantiate: Duration,
    pub duration: Duration,
    pub fuel: Option<u64>,
}

impl InvocationResult {
    /// Whether the invocation failed as a whole.
    pub fn failed(&self) -> Option<String> {
        match (&self.outcome, &self.commit_error) {
            (Outcome::Failed(f), _) => Some(f.to_string()),
            (_, Some(e)) => Some(e.clone()),
            _ => None,
        }
    }

    /// `success`, `partial_failure` or `failed` (a refused commit is a failure).
    pub fn outcome_name(&self) -> &'static str {
        match (&self.outcome, &self.commit_error) {
            (Outcome::Failed(_), _) | (_, Some(_)) => "failed",
            (Outcome::Success, None) => "success",
            (Outcome::PartialFailure(_), None) => "partial_failure",
        }
    }
}

/// Counts an invocation as in flight until dropped, on every way out of `invoke`.
struct InFlight<'a>(&'a std::sync::atomic::AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A function name and version number.
type VersionKey = (String, u32);

/// Functions of one Sluice server.
#[derive(Clone)]
pub struct Functions {
    inner: Arc<Inner>,
}

struct Inner {
    broker: Broker,
    store: Store,
    ks: Keyspace,
    runtime: Arc<Runtime>,
    dir: PathBuf,
    clock: SharedClock,
    /// Function records by name; changed only under `registry_lock`.
    functions: Mutex<HashMap<String, FunctionMeta>>,
    registry_lock: tokio::sync::Mutex<()>,
    /// Loaded versions with the time they were last invoked.
    loaded: Mutex<HashMap<VersionKey, (Arc<Loaded>, u64)>>,
    version_permits: Mutex<HashMap<(String, u32), Arc<Semaphore>>>,
    instance_permits: Arc<Semaphore>,
    compiles: Semaphore,
    rng: Mutex<StdRng>,
    logs: logs::Logs,
    lineage: lineage::Lineage,
    metering: Arc<metering::Metering>,
    metrics: metrics::Registry,
}

/// Usage and estimated cost over a span of time.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CostReport {
    pub since_ms: u64,
    pub until_ms: u64,
    pub prices: budget::Prices,
    pub items: Vec<CostItem>,
}

/// One function's, trigger's, queue's or topic's usage and cost.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CostItem {
    pub kind: budget::Kind,
    pub name: String,
    pub usage: budget::Usage,
    pub cost: budget::Cost,
}

/// Settings of lineage and cost metering.
#[derive(Debug, Clone, Copy, Default)]
pub struct Operations {
    pub lineage: LineageConfig,
    /// The price table cost estimates use.
    pub prices: budget::Prices,
}

impl Functions {
    /// Opens the functions of `store`, keeping artifacts under `dir`, and
    /// removes artifacts no version refers to (left by a crash mid-deploy).
    pub fn open(
        broker: Broker,
        store: Store,
        dir: &Path,
        clock: SharedClock,
        config: RuntimeConfig,
    ) -> Result<Self> {
        Self::open_with(broker, store, dir, clock, config, Operations::default())
    }

    /// As [`Functions::open`], with lineage and cost settings.
    pub fn open_with(
        broker: Broker,
        store: Store,
        dir: &Path,
        clock: SharedClock,
        config: RuntimeConfig,
        ops: Operations,
    ) -> Result<Self> {
        ops.prices.validate().map_err(Error::InvalidInvocation)?;
        std::fs::create_dir_all(dir)?;
        let ks = store.keyspace("functions")?;
        let runtime = Runtime::new(config.clone()).map_err(|e| Error::Runtime(e.to_string()))?;
        let mut functions = HashMap::new();
        for (_, v) in ks.range(b"f\0", b"f\x01", usize::MAX)? {
            let meta: FunctionMeta =
                serde_json::from_slice(&v).map_err(|e| Error::Corrupt(e.to_string()))?;
            functions.insert(meta.name.clone(), meta);
        }
        let logs = logs::Logs::open(store.clone())?;
        let lineage = lineage::Lineage::open(store.clone(), ops.lineage)?;
        let metering = Arc::new(metering::Metering::open(
            store.clone(),
            ops.prices,
            clock.now_ms(),
        )?);
        let inner = Inner {
            broker,
            store,
            ks,
            runtime: Arc::new(runtime),
            dir: dir.to_owned(),
            clock,
            functions: Mutex::new(functions),
            registry_lock: tokio::sync::Mutex::new(()),
            loaded: Mutex::new(HashMap::new()),
            version_permits: Mutex::new(HashMap::new()),
            instance_permits: Arc::new(Semaphore::new(config.max_instances as usize)),
            compiles: Semaphore::new(COMPILES_MAX),
            rng: Mutex::new(StdRng::from_os_rng()),
            logs,
            lineage,
            metering,
            metrics: metrics::Registry::default(),
        };
        let this = Self {
            inner: Arc::new(inner),
        };
        this.remove_orphans()?;
        this.meter_tick()?;
        Ok(this)
    }

    fn artifact_path(&self, name: &str, version: u32) -> PathBuf {
        self.inner.dir.join(name).join(format!("{version}.cwasm"))
    }

    /// The names of every function.
    fn names(&self) -> Vec<String> {
        let functions = self.inner.functions.lock().unwrap();
        functions.keys().cloned().collect()
    }

    /// The compiled code of a stored version whose component has this digest, if there
    /// is one: deploying the same component again (under another name, or with other
    /// settings) then costs a file copy instead of a compile.
    fn compiled(&self, sha256: &str) -> Option<Vec<u8>> {
        self.names().iter().find_map(|name| {
            let versions = self.versions(name).ok()?;
            let v = versions.iter().find(|v| v.sha256 == sha256)?;
            std::fs::read(self.artifact_path(name, v.version)).ok()
        })
    }

    /// Deletes artifact files and folders that no stored version refers to.
    fn remove_orphans(&self) -> Result<()> {
        for entry in std::fs::read_dir(&self.inner.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let known = self.inner.functions.lock().unwrap().contains_key(&name);
            if !known {
                std::fs::remove_dir_all(entry.path())?;
                continue;
            }
            for file in std::fs::read_dir(entry.path())? {
                let file = file?;
                let fname = file.file_name().to_string_lossy().into_owned();
                let version = fname
                    .strip_suffix(".cwasm")
                    .and_then(|v| v.parse::<u32>().ok());
                let keep = match version {
                    Some(v) => self.inner.ks.contains(&registry::version_key(&name, v))?,
                    None => false,
                };
                if !keep {
                    std::fs::remove_file(file.path())?;
                }
            }
        }
        Ok(())
    }

    pub(crate) fn meta(&self, name: &str) -> Result<FunctionMeta> {
        self.inner
            .functions
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::FunctionNotFound(name.to_owned()))
    }

    pub(crate) fn version_meta(&self, name: &str, version: u32) -> Result<VersionMeta> {
        let v = self
            .inner
            .ks
            .get(&registry::version_key(name, version))?
            .ok_or_else(|| Error::VersionNotFound {
                name: name.to_owned(),
                version,
            })?;
        serde_json::from_slice(&v).map_err(|e| Error::Corrupt(e.to_string()))
    }

    fn versions(&self, name: &str) -> Result<Vec<VersionMeta>> {
        let prefix = registry::version_prefix(name);
        let mut end = prefix.clone();
        end.push(0xff);
        self.inner
            .ks
            .range(&prefix, &end, usize::MAX)?
            .into_iter()
            .map(|(_, v)| serde_json::from_slice(&v).map_err(|e| Error::Corrupt(e.to_string())))
            .collect()
    }

    /// Compiles `wasm` and stores it as the next version of `name` (creating
    /// the function), pointing `live` at it.
    pub async fn deploy(
        &self,
        name: &Name,
        wasm: Vec<u8>,
        settings: VersionSettings,
    ) -> Result<VersionMeta> {
        if wasm.len() > ARTIFACT_MAX {
            return Err(Error::ArtifactTooLarge {
                size: wasm.len(),
                max: ARTIFACT_MAX,
            });
        }
        settings.validate().map_err(Error::InvalidSettings)?;
        if settings.memory.0 > self.inner.runtime.config().max_memory {
            return Err(Error::InvalidSettings(format!(
                "memory {} is over this server's limit of {} bytes",
                settings.memory,
                self.inner.runtime.config().max_memory
            )));
        }
        let sha256 = format!("{:x}", Sha256::digest(&wasm));
        let size = wasm.len() as u64;
        let artifact = match self.compiled(&sha256) {
            // The same component was compiled before, by this engine: reuse its code.
            Some(artifact) => artifact,
            None => {
                let _compiling = self.inner.compiles.acquire().await.expect("never closed");
                let runtime = self.inner.runtime.clone();
                tokio::task::spawn_blocking(move || runtime.compile(&wasm))
                    .await
                    .map_err(|e| Error::Runtime(e.to_string()))??
            }
        };
        let _registry = self.inner.registry_lock.lock().await;
        let now = self.inner.clock.now_ms();
        let mut meta = self.meta(name.as_str()).unwrap_or_else(|_| FunctionMeta {
            name: name.to_string(),
            created_ms: now,
            next_version: 1,
            aliases: Default::default(),
        });
        let version = meta.next_version;
        meta.next_version += 1;
        meta.aliases.insert(LIVE.to_owned(), version);
        let path = self.artifact_path(name.as_str(), version);
        write_durably(&path, &artifact)?;
        let vmeta = VersionMeta {
            version,
            created_ms: now,
            sha256,
            size,
            settings,
        };
        let mut batch = self.inner.store.batch();
        batch.put(
            &self.inner.ks,
            registry::function_key(name.as_str()),
            encode(&meta),
        );
        batch.put(
            &self.inner.ks,
            registry::version_key(name.as_str(), version),
            encode(&vmeta),
        );
        self.inner.store.commit(batch).await?;
        self.inner
            .functions
            .lock()
            .unwrap()
            .insert(name.to_string(), meta);
        tracing::info!(function = %name, version, "deployed");
        Ok(vmeta)
    }

    /// A function and its versions.
    pub fn get(&self, name: &str) -> Result<FunctionInfo> {
        let meta = self.meta(name)?;
        let versions = self.versions(name)?;
        Ok(FunctionInfo { meta, versions })
    }

    /// One version.
    pub fn get_version(&self, name: &str, version: u32) -> Result<VersionMeta> {
        self.meta(name)?;
        self.version_meta(name, version)
    }

    /// Every function, by name.
    pub fn list(&self) -> Result<Vec<FunctionInfo>> {
        let mut names = self.names();
        names.sort();
        names.iter().map(|n| self.get(n)).collect()
    }

    /// Points `alias` of `name` at `version`.
    pub async fn set_alias(&self, name: &str, alias: &str, version: u32) -> Result<FunctionMeta> {
        registry::check_alias(alias).map_err(Error::InvalidSettings)?;
        let _registry = self.inner.registry_lock.lock().await;
        let mut meta = self.meta(name)?;
        self.version_meta(name, version)?;
        if !meta.aliases.contains_key(alias) && meta.aliases.len() >= registry::ALIASES_MAX {
            return Err(Error::InvalidSettings(format!(
                "{name:?} has {} aliases, the most a function may have",
                registry::ALIASES_MAX
            )));
        }
        meta.aliases.insert(alias.to_owned(), version);
        self.save_meta(meta).await
    }

    /// Removes `alias` of `name`.
    pub async fn delete_alias(&self, name: &str, alias: &str) -> Result<FunctionMeta> {
        let _registry = self.inner.registry_lock.lock().await;
        let mut meta = self.meta(name)?;
        if meta.aliases.remove(alias).is_none() {
            return Err(Error::AliasNotFound {
                name: name.to_owned(),
                alias: alias.to_owned(),
            });
        }
        self.save_meta(meta).await
    }

    /// Moves `alias` back to the newest version older than the one it points
    /// at, or to `to`.
    pub async fn rollback(&self, name: &str, alias: &str, to: Option<u32>) -> Result<FunctionMeta> {
        let meta = self.meta(name)?;
        let current = *meta
            .aliases
            .get(alias)
            .ok_or_else(|| Error::AliasNotFound {
                name: name.to_owned(),
                alias: alias.to_owned(),
            })?;
        let target = match to {
            Some(v) => v,
            None => self
                .versions(name)?
                .iter()
                .map(|v| v.version)
                .filter(|v| *v < current)
                .max()
                .ok_or_else(|| {
                    Error::InvalidSettings(format!(
                        "alias {alias:?} of {name:?} is at version {current}, and no older version remains"
                    ))
                })?,
        };
        self.set_alias(name, alias, target).await
    }

    async fn save_meta(&self, meta: FunctionMeta) -> Result<FunctionMeta> {
        let mut batch = self.inner.store.batch();
        batch.put(
            &self.inner.ks,
            registry::function_key(&meta.name),
            encode(&meta),
        );
        self.inner.store.commit(batch).await?;
        self.inner
            .functions
            .lock()
            .unwrap()
            .insert(meta.name.clone(), meta.clone());
        Ok(meta)
    }

    /// Deletes one version no alias points at.
    pub async fn delete_version(&self, name: &str, version: u32) -> Result<()> {
        let _registry = self.inner.registry_lock.lock().await;
        let meta = self.meta(name)?;
        self.version_meta(name, version)?;
        if let Some((alias, _)) = meta.aliases.iter().find(|(_, v)| **v == version) {
            return Err(Error::VersionInUse {
                name: name.to_owned(),
                version,
                alias: alias.clone(),
            });
        }
        let mut batch = self.inner.store.batch();
        batch.delete(&self.inner.ks, registry::version_key(name, version));
        self.inner.store.commit(batch).await?;
        self.forget(name, Some(version));
        remove_if_exists(&self.artifact_path(name, version))?;
        Ok(())
    }

    /// Deletes a function: its versions, aliases, artifacts and state.
    pub async fn delete(&self, name: &str) -> Result<()> {
        let _registry = self.inner.registry_lock.lock().await;
        self.meta(name)?;
        let mut batch = self.inner.store.batch();
        batch.delete(&self.inner.ks, registry::function_key(name));
        for v in self.versions(name)? {
            batch.delete(&self.inner.ks, registry::version_key(name, v.version));
        }
        self.inner.store.commit(batch).await?;
        self.inner.functions.lock().unwrap().remove(name);
        self.forget(name, None);
        self.inner.broker.kv_drop(name).await?;
        self.inner.logs.drop_function(name)?;
        self.inner.metrics.remove(name);
        let dir = self.inner.dir.join(name);
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        Ok(())
    }

    fn forget(&self, name: &str, version: Option<u32>) {
        let keep = |(n, v): &(String, u32)| n != name || version.is_some_and(|x| x != *v);
        self.inner.loaded.lock().unwrap().retain(|k, _| keep(k));
        self.inner
            .version_permits
            .lock()
            .unwrap()
            .retain(|k, _| keep(k));
    }

    /// The version `target` of `name` resolves to.
    pub fn resolve(&self, name: &str, target: &Target) -> Result<u32> {
        let meta = self.meta(name)?;
        match target {
            Target::Version(v) => Ok(*v),
            Target::Alias(a) => meta
                .aliases
                .get(a)
                .copied()
                .ok_or_else(|| Error::AliasNotFound {
                    name: name.to_owned(),
                    alias: a.clone(),
                }),
        }
    }

    async fn loaded(
        &self,
        name: &str,
        version: u32,
        settings: &VersionSettings,
    ) -> Result<Arc<Loaded>> {
        let key = (name.to_owned(), version);
        let now = self.inner.clock.now_ms();
        if let Some((l, used)) = self.inner.loaded.lock().unwrap().get_mut(&key) {
            *used = now;
            return Ok(l.clone());
        }
        let runtime = self.inner.runtime.clone();
        let path = self.artifact_path(name, version);
        let env: Vec<(String, String)> = settings.env.clone().into_iter().collect();
        let loaded = tokio::task::spawn_blocking(move || runtime.load(&path, env))
            .await
            .map_err(|e| Error::Runtime(e.to_string()))?
            .map_err(|e| Error::Runtime(e.to_string()))?;
        let loaded = Arc::new(loaded);
        let loaded = self
            .inner
            .loaded
            .lock()
            .unwrap()
            .entry(key)
            .or_insert((loaded, now))
            .0
            .clone();
        Ok(loaded)
    }

    /// Drops loaded versions not invoked for `idle` (their compiled code and the
    /// memory it maps); the next invocation loads the artifact again (cold).
    /// Returns how many were unloaded.
    pub fn unload_idle(&self, idle: Duration) -> usize {
        let cutoff = self
            .inner
            .clock
            .now_ms()
            .saturating_sub(idle.as_millis() as u64);
        let mut loaded = self.inner.loaded.lock().unwrap();
        let before = loaded.len();
        loaded.retain(|_, (_, used)| *used > cutoff);
        before - loaded.len()
    }

    /// How many versions are loaded.
    pub fn loaded_count(&self) -> usize {
        self.inner.loaded.lock().unwrap().len()
    }

    fn permits(&self, name: &str, version: u32, concurrency: u32) -> Arc<Semaphore> {
        self.inner
            .version_permits
            .lock()
            .unwrap()
            .entry((name.to_owned(), version))
            .or_insert_with(|| Arc::new(Semaphore::new(concurrency as usize)))
            .clone()
    }

    /// Runs `target` of `name` on `events` (CloudEvents as stored) and commits
    /// its effects, together with `commit`'s ack and nacks if given: the input
    /// receipts of the events that succeeded are acked, those of failed events
    /// nacked with the function's reason.
    pub async fn invoke(
        &self,
        name: &str,
        target: &Target,
        events: &[Map<String, Value>],
        input: Option<Input>,
    ) -> Result<InvocationResult> {
        if events.is_empty() || events.len() > EVENTS_MAX {
            return Err(Error::InvalidInvocation(format!(
                "an invocation takes 1..={EVENTS_MAX} events, not {}",
                events.len()
            )));
        }
        // The invocation's span: a child of its first input's span, linked to the others'.
        let span = tracing::info_span!(
            target: telemetry::TARGET,
            "invoke",
            otel.name = %format_args!("invoke {name}"),
            otel.kind = "consumer",
            faas.name = name,
            faas.trigger = input.as_ref().and_then(|i| i.trigger.as_deref()).unwrap_or("invoke"),
            messaging.source.name = input.as_ref().map_or("", |i| i.queue.as_str()),
            messaging.batch.message_count = events.len(),
            sluice.attempt = input.as_ref().map_or(1, |i| i.attempt),
        );
        if !span.is_disabled() {
            let contexts: Vec<EventContext> = events
                .iter()
                .map(|e| {
                    EventContext::of(e.get("id").and_then(Value::as_str).unwrap_or_default(), e)
                })
                .collect();
            if let Some(tp) = &contexts[0].trace {
                telemetry::set_parent(&span, tp, contexts[0].tracestate.as_deref());
            }
            let links: Vec<TraceParent> = contexts[1..].iter().filter_map(|c| c.trace).collect();
            telemetry::add_links(&span, &links);
        }
        self.invoke_in_span(name, target, events, input)
            .instrument(span)
            .await
    }

    async fn invoke_in_span(
        &self,
        name: &str,
        target: &Target,
        events: &[Map<String, Value>],
        input: Option<Input>,
    ) -> Result<InvocationResult> {
        let started_ms = self.inner.clock.now_ms();
        let version = self.resolve(name, target)?;
        let vmeta = self.version_meta(name, version)?;
        let loaded = self.loaded(name, version, &vmeta.settings).await?;
        let permits = self.permits(name, version, vmeta.settings.concurrency);
        let _version_permit = permits.acquire_owned().await.expect("never closed");
        let _instance_permit = self
            .inner
            .instance_permits
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let guest_events: Vec<_> = events.iter().map(convert::to_guest).collect();
        let host = Arc::new(host::BrokerHost::new(self.inner.broker.clone(), name));
        let metrics = self.inner.metrics.of(name);
        metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        let in_flight = InFlight(&metrics.in_flight);
        let limits = Limits {
            memory: vmeta.settings.memory.0,
            timeout: vmeta.settings.timeout.to_std(),
        };
        let runtime = self.inner.runtime.clone();
        let inv = tokio::task::spawn_blocking(move || {
            runtime.invoke(&loaded, &guest_events, host, &limits)
        })
        .await
        .map_err(|e| Error::Runtime(e.to_string()))?;
        let id = format!("{:032x}", self.inner.rng.lock().unwrap().random::<u128>());
        let mut result = InvocationResult {
            id,
            version,
            outcome: inv.outcome,
            commit_error: None,
            effects: Effects::default(),
            logs: inv.logs,
            cold: inv.cold,
            instantiate: inv.instantiate,
            duration: inv.duration,
            fuel: inv.fuel,
        };
        let trigger = input.as_ref().and_then(|i| i.trigger.clone());
        let attempt = input.as_ref().map_or(1, |i| i.attempt);
        let source = input.as_ref().map(|i| i.queue.clone());
        let admission = input.as_ref().and_then(|i| i.admission.clone());
        let mut lineage = lineage::Invocation {
            id: result.id.clone(),
            function: name.to_owned(),
            version: result.version,
            trigger: trigger.clone(),
            source,
            attempt,
            outcome: result.outcome_name().to_owned(),
            error: result.failed(),
            started_ms,
            duration_us: result.duration.as_micros() as u64,
            inputs: events
                .iter()
                .filter_map(|e| e.get("id").and_then(Value::as_str).map(str::to_owned))
                .collect(),
            outputs: Vec::new(),
            sent_to: Vec::new(),
        };
        // Whether the lineage went with the commit; if not, it is written on its own.
        let mut lineage_committed = false;
        let failed: Vec<FailedEvent> = match &result.outcome {
            Outcome::PartialFailure(f) => f.clone(),
            _ => Vec::new(),
        };
        if !matches!(result.outcome, Outcome::Failed(_)) {
            match self
                .commit(name, &mut lineage, events, &inv.effects, &failed, input)
                .await
            {
                Ok(()) => {
                    lineage_committed = true;
                    result.effects = inv.effects;
                }
                Err(Error::Broker(e)) if is_retryable_commit(&e) => {
                    result.commit_error = Some(format!("effects not committed: {e}"));
                }
                Err(e) => {
                    metrics.invocations.fetch_add(1, Ordering::Relaxed);
                    metrics.errors.fetch_add(1, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        drop(in_flight);
        metrics.invocations.fetch_add(1, Ordering::Relaxed);
        if result.failed().is_some() {
            metrics.errors.fetch_add(1, Ordering::Relaxed);
        }
        metrics.duration.observe(result.duration.as_secs_f64());
        if result.cold {
            metrics.cold_starts.fetch_add(1, Ordering::Relaxed);
            metrics.cold_start.observe(result.instantiate.as_secs_f64());
        }
        if let Some(fuel) = result.fuel {
            metrics.fuel.fetch_add(fuel, Ordering::Relaxed);
        }
        let usage = budget::Usage::invocation(
            vmeta.settings.memory.0,
            lineage.duration_us,
            result.fuel.unwrap_or(0),
        );
        let alerts = self.inner.metering.record_invocation(
            name,
            trigger.as_deref(),
            admission.as_deref(),
            &usage,
            self.inner.clock.now_ms(),
        );
        self.publish_budget_alerts(alerts);
        if !lineage_committed {
            lineage.outcome = result.outcome_name().to_owned();
            lineage.error = result.failed();
            lineage.outputs.clear();
            lineage.sent_to.clear();
            if let Some(entries) = self.inner.lineage.entries(&lineage, events)
                && let Err(e) = self.inner.lineage.write(entries)
            {
                tracing::warn!(function = name, error = %e, "recording lineage failed");
            }
        }
        self.record(name, &result, trigger, attempt, events.len(), started_ms);
        Ok(result)
    }

    /// The causal tree of the chain `event` belongs to, if lineage knows the event.
    pub fn lineage(&self, event: &str) -> Result<Option<lineage::Tree>> {
        self.inner.lineage.tree(event)
    }

    /// Records a saga step's command event as caused by its saga.
    pub(crate) fn note_saga_step(&self, saga: &str, event: &str, ty: &str, target: Option<&str>) {
        let now = self.inner.clock.now_ms();
        if let Err(e) = self.inner.lineage.saga_step(saga, event, ty, target, now) {
            tracing::warn!(error = %e, "recording a saga step in lineage failed");
        }
    }

    /// Records that `event` was dead-lettered (or removed) from its source.
    pub(crate) fn note_dead_letter(&self, event: &Map<String, Value>, d: &lineage::DeadLettered) {
        if let Err(e) = self.inner.lineage.dead_lettered(event, d) {
            tracing::warn!(error = %e, "recording a dead-letter move in lineage failed");
        }
    }

    fn publish_budget_alerts(&self, alerts: Vec<metering::BudgetAlert>) {
        for a in alerts {
            let broker = self.inner.broker.clone();
            tracing::warn!(budget = %a.budget, kind = a.kind, "budget alert");
            tokio::spawn(async move {
                alerts::publish(&broker, "/sluice/budgets", a.kind, &a.budget, a.data).await;
            });
        }
    }

    /// Whether a trigger may start an invocation under the budgets governing it; `Err`
    /// names the exhausted budget. Dropping the admission ends its reservation.
    pub fn admit(&self, trigger: &str, function: &str) -> std::result::Result<Admission, String> {
        self.inner
            .metering
            .admit(trigger, function, self.inner.clock.now_ms())
    }

    /// Changes whenever budget-paused triggers should check their budgets again.
    pub fn budget_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.metering.subscribe()
    }

    /// An operator's resume: the trigger runs past its exhausted budgets until their
    /// periods end.
    pub fn resume_budgets(&self, trigger: &str, function: &str) {
        self.inner.metering.resume_trigger(trigger, function);
    }

    /// Creates or replaces a budget, durably; returns whether it was created.
    pub async fn put_budget(&self, name: &str, config: budget::BudgetConfig) -> Result<bool> {
        config.validate().map_err(Error::InvalidBudget)?;
        let (created, alert, ticket) =
            self.inner
                .metering
                .put_budget(name, config, self.inner.clock.now_ms())?;
        self.inner.store.durable(ticket).await?;
        self.publish_budget_alerts(alert.into_iter().collect());
        Ok(created)
    }

    /// Deletes a budget, durably.
    pub async fn delete_budget(&self, name: &str) -> Result<()> {
        let (existed, ticket) = self.inner.metering.delete_budget(name)?;
        self.inner.store.durable(ticket).await?;
        if !existed {
            return Err(Error::BudgetNotFound(name.to_owned()));
        }
        Ok(())
    }

    pub fn budgets(&self) -> Vec<BudgetInfo> {
        self.inner.metering.budgets(self.inner.clock.now_ms())
    }

    pub fn budget(&self, name: &str) -> Result<BudgetInfo> {
        self.budgets()
            .into_iter()
            .find(|b| b.name == name)
            .ok_or_else(|| Error::BudgetNotFound(name.to_owned()))
    }

    /// Usage and estimated cost since `since_ms`, per kind and name.
    pub fn cost(&self, since_ms: u64) -> CostReport {
        let prices = self.inner.metering.prices();
        let items = self
            .inner
            .metering
            .usage_since(since_ms)
            .into_iter()
            .map(|((kind, name), usage)| CostItem {
                kind,
                name,
                cost: budget::cost(kind, &usage, &prices),
                usage,
            })
            .collect();
        CostReport {
            since_ms,
            until_ms: self.inner.clock.now_ms(),
            prices,
            items,
        }
    }

    /// Takes queue and topic usage from the broker, rolls budget periods, persists usage.
    pub fn meter_tick(&self) -> Result<()> {
        let m = self.inner.broker.counts()?;
        let alerts = self.inner.metering.tick(&m, self.inner.clock.now_ms())?;
        self.publish_budget_alerts(alerts);
        Ok(())
    }

    /// Removes lineage past its retention or size cap.
    pub fn prune_lineage(&self) -> Result<u64> {
        self.inner.lineage.prune(self.inner.clock.now_ms())
    }

    /// Every function's invocation counts since start, by name.
    pub fn metrics(&self) -> Vec<FunctionMetricsSnapshot> {
        self.inner.metrics.snapshot()
    }

    /// Writes what the invocation did, with the ack of its input and its lineage record,
    /// in one batch. What it publishes and sends inherits the context of its input events
    /// (trace, correlation, causation, hop count); `record` gets its outputs.
    async fn commit(
        &self,
        name: &str,
        record: &mut lineage::Invocation,
        events: &[Map<String, Value>],
        effects: &Effects,
        failed: &[FailedEvent],
        input: Option<Input>,
    ) -> Result<()> {
        let id = record.id.clone();
        let id = id.as_str();
        let mut commit = Commit {
            kv_scope: name.to_owned(),
            ..Commit::default()
        };
        let outputs = &mut record.outputs;
        if !effects.published.is_empty() || !effects.sent.is_empty() {
            let own = telemetry::traceparent_of(&tracing::Span::current());
            let inherited = convert::inherited(events, id, self.inner.broker.random(), own);
            for p in &effects.published {
                let mut event =
                    convert::from_guest(name, &p.event).map_err(Error::InvalidInvocation)?;
                inherited.stamp_event(&mut event);
                // Named here, not at publish, so lineage knows what this invocation made.
                let id = match event.get("id").and_then(Value::as_str) {
                    Some(id) => id.to_owned(),
                    None => {
                        let id = self.inner.broker.new_event_id();
                        event.insert("id".into(), id.clone().into());
                        id
                    }
                };
                outputs.push(lineage::Output {
                    id,
                    ty: p.event.event_type.clone(),
                    topic: p.topic.clone(),
                });
                commit.publish.push((p.topic.clone(), event));
            }
            for s in &effects.sent {
                commit.send.push((
                    s.queue.clone(),
                    convert::to_message(s, Some(&inherited)).map_err(Error::InvalidInvocation)?,
                ));
            }
        }
        commit.writes = effects.writes.clone();
        commit.expected = effects.expected.clone();
        if let Some(input) = input {
            for (event, receipt) in events.iter().zip(input.receipts) {
                let id = event.get("id").and_then(Value::as_str).unwrap_or_default();
                match failed.iter().find(|f| f.id == id) {
                    Some(f) => commit.nack.push((receipt, f.reason.clone())),
                    None => commit.ack.push(receipt),
                }
            }
            commit.input_queue = Some(input.queue);
        }
        record.sent_to = effects.sent.iter().map(|s| s.queue.clone()).collect();
        let lineage = self.inner.lineage.entries(record, events);
        let bytes = lineage.as_ref().map(|l| l.bytes());
        commit.records = lineage.map(|l| (self.inner.lineage.keyspace().clone(), l.puts));
        self.inner
            .broker
            .commit(commit)
            .instrument(tracing::info_span!(target: telemetry::TARGET, "store.commit"))
            .await?;
        if let Some(bytes) = bytes {
            self.inner.lineage.written(bytes);
        }
        Ok(())
    }

    fn record(
        &self,
        name: &str,
        r: &InvocationResult,
        trigger: Option<String>,
        attempt: u32,
        events: usize,
        started_ms: u64,
    ) {
        let record = logs::Record {
            seq: 0,
            invocation_id: r.id.clone(),
            version: r.version,
            trigger,
            attempt,
            events,
            started_ms,
            duration_us: r.duration.as_micros() as u64,
            instantiate_us: r.instantiate.as_micros() as u64,
            cold: r.cold,
            fuel: r.fuel,
            outcome: r.outcome_name().to_owned(),
            error: r.failed(),
            lines: r
                .logs
                .iter()
                .map(|l| logs::Line {
                    at_ms: l.at_ms,
                    level: l.level.as_str().to_owned(),
                    context: l.context.clone(),
                    message: l.message.clone(),
                })
                .collect(),
        };
        if let Err(e) = self.inner.logs.append(name, record) {
            tracing::warn!(function = name, error = %e, "keeping an invocation record failed");
        }
    }

    /// The committed value of `key` in the state of function `name`.
    pub fn state_get(&self, name: &str, key: &str) -> Result<Option<Vec<u8>>> {
        self.meta(name)?;
        Ok(self.inner.broker.kv_get(name, key)?)
    }

    /// Keys of the state of `name` starting with `prefix`, after `after`, at most `limit`.
    pub fn state_keys(
        &self,
        name: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        self.meta(name)?;
        Ok(self.inner.broker.kv_list(name, prefix, after, limit)?)
    }

    /// Invocation records of `name` after `after`, at most `limit`.
    pub fn logs(&self, name: &str, after: u64, limit: usize) -> Result<Vec<logs::Record>> {
        self.meta(name)?;
        self.inner.logs.read(name, after, limit)
    }
}

/// Where an invocation's events came from, so their ack commits with its effects.
#[derive(Debug, Clone)]
pub struct Input {
    /// The queue (or subscription queue) holding the leases.
    pub queue: String,
    /// One receipt per event, in the same order.
    pub receipts: Vec<String>,
    /// The trigger that leased them, if any.
    pub trigger: Option<String>,
    /// The highest delivery attempt among the events.
    pub attempt: u32,
    /// The trigger's admission under its budgets, ended when the usage is recorded.
    pub admission: Option<Arc<Admission>>,
}

/// Commit failures that mean "run it again", not "the server is broken".
fn is_retryable_commit(e: &BrokerError) -> bool {
    !matches!(
        e,
        BrokerError::Store(_) | BrokerError::Corrupt(_) | BrokerError::ShuttingDown
    )
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records serialize")
}

/// Writes `bytes` to `path` so that it is complete and on disk before its
/// name exists: a temporary file, fsync, rename, fsync of the folder.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = path.parent().expect("artifact paths have a folder");
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

fn remove_if_exists(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
