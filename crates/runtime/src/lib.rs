//! The WebAssembly function runtime: compiles components at deploy, loads
//! their serialized artifacts, and runs one invocation per fresh instance
//! under a memory limit, a timeout and optional fuel metering.
//!
//! The runtime never sees topics or queues: a function's calls to publish,
//! send and write state are buffered in [`Effects`] and handed back to the
//! caller with the outcome; reads of state go through the [`Host`] trait.

mod effects;
mod host;
mod limiter;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

pub use effects::{
    EffectError, Effects, MAX_KEY_BYTES, MAX_LIST_KEYS, MAX_VALUE_BYTES, OutgoingEvent,
    PublishEffect, SendEffect, Write,
};
pub use host::{Host, LogLevel, LogLine};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "function",
        additional_derives: [PartialEq, Eq],
    });
}

pub use bindings::sluice::function::types::{Event, FailedEvent};

/// The name of the interface every function exports.
pub const HANDLER_INTERFACE: &str = "sluice:function/handler@0.1.0";
/// The WIT package version functions are built against.
pub const WIT_PACKAGE: &str = "sluice:function@0.1.0";

/// Bytes of stdout and of stderr kept per invocation; writes beyond fail.
pub const MAX_OUTPUT_BYTES: usize = 256 << 10;

/// Settings of the runtime shared by all functions.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Instances that may run at once across all functions.
    pub max_instances: u32,
    /// Largest memory limit a function may ask for.
    pub max_memory: u64,
    /// How often the timeout clock ticks; timeouts are rounded up to it.
    pub tick: Duration,
    /// Meter fuel (executed instructions, roughly) for every invocation.
    pub fuel: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            max_instances: 256,
            max_memory: 4 << 30,
            tick: Duration::from_millis(5),
            fuel: false,
        }
    }
}

/// Limits of one invocation, from the function version's settings.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Memory summed over all of the instance's linear memories.
    pub memory: u64,
    /// Wall-clock time from the start of instantiation.
    pub timeout: Duration,
}

/// Why a component cannot be deployed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("the artifact is not WebAssembly: it does not start with the `\\0asm` header")]
    NotWasm,
    #[error(
        "the artifact is a core WebAssembly module, not a component; build it with componentize-py or componentize-js, or wrap it with `wasm-tools component new`"
    )]
    CoreModule,
    #[error("the artifact is not a valid component: {0}")]
    Invalid(String),
    #[error(
        "the component does not export `{HANDLER_INTERFACE}`; it must target the world `function` of `{WIT_PACKAGE}`"
    )]
    MissingExport,
    #[error("the component's `{HANDLER_INTERFACE}` export does not match {WIT_PACKAGE}: {0}")]
    WrongExport(String),
    #[error("the component imports something Sluice does not provide: {0}")]
    UnknownImport(String),
    #[error("the component failed to instantiate: {0}")]
    Instantiate(String),
}

/// The host of the instance made at deploy: it is never called.
struct NoHost;

impl Host for NoHost {
    fn kv_get(&self, _key: &str) -> Result<Option<Vec<u8>>, String> {
        Err("no state at deploy".into())
    }
    fn kv_list(&self, _p: &str, _a: Option<&str>, _l: usize) -> Result<Vec<String>, String> {
        Err("no state at deploy".into())
    }
    fn check_publish(&self, _topic: &str, _event: &OutgoingEvent) -> Result<(), String> {
        Err("no publishing at deploy".into())
    }
    fn check_send(&self, _message: &SendEffect) -> Result<(), String> {
        Err("no sending at deploy".into())
    }
}

/// A failure of the runtime itself, not of a function.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RuntimeError(String);

fn runtime_error(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError(e.to_string())
}

/// The store data of one invocation.
pub(crate) struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: limiter::MemoryLimiter,
    pub(crate) effects: Effects,
    pub(crate) effect_error: Option<String>,
    pub(crate) logs: Vec<LogLine>,
    pub(crate) log_bytes: usize,
    pub(crate) host: Arc<dyn Host>,
    pub(crate) config: Arc<Vec<(String, String)>>,
    pub(crate) started: Instant,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The WebAssembly runtime: one engine, one linker, one epoch ticker.
pub struct Runtime {
    engine: Engine,
    linker: Linker<State>,
    config: RuntimeConfig,
    stop: Arc<AtomicBool>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A deployed version, loaded and pre-instantiated: ready to run.
pub struct Loaded {
    pre: bindings::FunctionPre<State>,
    /// The version's configuration values, given to `config.get`.
    config: Arc<Vec<(String, String)>>,
    /// How long loading took (deserialize and link).
    pub load_time: Duration,
    first: AtomicBool,
}

/// How an invocation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The function processed every event.
    Success,
    /// The listed events failed; the others succeeded.
    PartialFailure(Vec<FailedEvent>),
    /// The function returned an error, trapped, timed out or went over its
    /// memory limit; the message says which.
    Failed(Failure),
}

/// Why an invocation failed as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The function returned `error(message)`.
    Error(String),
    /// The instance trapped (a panic, an exception that escaped, a bug).
    Trap(String),
    /// It ran past its timeout.
    Timeout(Duration),
    /// It tried to grow its memories past the limit.
    MemoryLimit(u64),
    /// A host call was refused in a way the function cannot handle (too many effects).
    Effects(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Error(m) => write!(f, "function error: {m}"),
            Failure::Trap(m) => write!(f, "trap: {m}"),
            Failure::Timeout(t) => write!(f, "timed out after {} ms", t.as_millis()),
            Failure::MemoryLimit(l) => write!(f, "memory limit of {l} bytes exceeded"),
            Failure::Effects(m) => write!(f, "effects refused: {m}"),
        }
    }
}

/// The result of one invocation.
#[derive(Debug)]
pub struct Invocation {
    pub outcome: Outcome,
    /// What the function asked to change; empty unless it succeeded (fully or partly).
    pub effects: Effects,
    /// Log calls, then stdout and stderr lines.
    pub logs: Vec<LogLine>,
    /// Whether this was the first instance of the loaded version.
    pub cold: bool,
    /// Time to create the store and instantiate.
    pub instantiate: Duration,
    /// Time from the start of instantiation to the return of the handler.
    pub duration: Duration,
    /// Fuel consumed, when fuel metering is on.
    pub fuel: Option<u64>,
}

impl Runtime {
    /// Build the engine, the linker with every import a function may use,
    /// and start the epoch ticker.
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(config.max_instances)
            .total_core_instances(config.max_instances * 16)
            .total_memories(config.max_instances * 2)
            .total_tables(config.max_instances * 4)
            .total_stacks(config.max_instances)
            .max_core_instances_per_component(64)
            .max_memories_per_component(4)
            .max_tables_per_component(16)
            .max_memory_size(config.max_memory as usize)
            .table_elements(65_536)
            .max_component_instance_size(1 << 20)
            .max_core_instance_size(4 << 20)
            .max_unused_warm_slots(config.max_instances / 2);
        let mut wasm = Config::new();
        wasm.wasm_component_model(true)
            .epoch_interruption(true)
            .consume_fuel(config.fuel)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wasm).map_err(runtime_error)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(runtime_error)?;
        bindings::Function::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)
            .map_err(runtime_error)?;
        let stop = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = stop.clone();
            let tick = config.tick;
            std::thread::Builder::new()
                .name("sluice-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        engine.increment_epoch();
                    }
                })
                .map_err(runtime_error)?;
        }
        Ok(Self {
            engine,
            linker,
            config,
            stop,
        })
    }

    /// The runtime's settings.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// Compile and check a component: it must be a component, export the
    /// handler with the right type, and import nothing Sluice does not
    /// provide. Returns the serialized artifact to keep on disk.
    pub fn compile(&self, wasm: &[u8]) -> Result<Vec<u8>, DeployError> {
        if wasm.len() < 8 || &wasm[..4] != b"\0asm" {
            return Err(DeployError::NotWasm);
        }
        if wasm[4..8] == [1, 0, 0, 0] {
            return Err(DeployError::CoreModule);
        }
        let component = Component::new(&self.engine, wasm)
            .map_err(|e| DeployError::Invalid(format!("{e:#}")))?;
        let Some(index) = component.get_export_index(None, HANDLER_INTERFACE) else {
            return Err(DeployError::MissingExport);
        };
        if component.get_export_index(Some(&index), "handle").is_none() {
            return Err(DeployError::WrongExport(
                "it has no function `handle`".into(),
            ));
        }
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| DeployError::UnknownImport(format!("{e:#}")))?;
        let pre = bindings::FunctionPre::new(pre)
            .map_err(|e| DeployError::WrongExport(format!("{e:#}")))?;
        // Types of exports are checked when an instance is made: make one,
        // under limits, without calling it.
        let limits = Limits {
            memory: self.config.max_memory,
            timeout: Duration::from_secs(10),
        };
        let mut store = self.store(
            Arc::new(NoHost),
            Arc::default(),
            &limits,
            Instant::now(),
            None,
        );
        if let Err(e) = pre.instantiate(&mut store) {
            let text = format!("{e:#}");
            return Err(
                if text.contains("type mismatch") || text.contains("expected") {
                    DeployError::WrongExport(text)
                } else {
                    DeployError::Instantiate(text)
                },
            );
        }
        component
            .serialize()
            .map_err(|e| DeployError::Invalid(format!("{e:#}")))
    }

    /// Load an artifact written from [`Runtime::compile`]'s output, with the
    /// version's configuration values.
    ///
    /// The file must be one this runtime (the same Sluice build) wrote: it
    /// is machine code, trusted as such.
    pub fn load(
        &self,
        artifact: &Path,
        config: Vec<(String, String)>,
    ) -> Result<Loaded, RuntimeError> {
        let started = Instant::now();
        // SAFETY: artifacts are written only by `compile` of this engine
        // configuration into Sluice's own data directory; wasmtime checks the
        // engine and version header before using the code.
        let component = unsafe { Component::deserialize_file(&self.engine, artifact) }
            .map_err(|e| RuntimeError(format!("loading {}: {e:#}", artifact.display())))?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(runtime_error)?;
        let pre = bindings::FunctionPre::new(pre).map_err(runtime_error)?;
        Ok(Loaded {
            pre,
            config: Arc::new(config),
            load_time: started.elapsed(),
            first: AtomicBool::new(true),
        })
    }

    /// A fresh store for one instance: no filesystem, no network, output
    /// captured when `output` is given, memory limited, the epoch deadline set.
    fn store(
        &self,
        host: Arc<dyn Host>,
        config: Arc<Vec<(String, String)>>,
        limits: &Limits,
        started: Instant,
        output: Option<(MemoryOutputPipe, MemoryOutputPipe)>,
    ) -> Store<State> {
        let mut wasi = WasiCtx::builder();
        wasi.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        if let Some((stdout, stderr)) = output {
            wasi.stdout(stdout).stderr(stderr);
        }
        let state = State {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: limiter::MemoryLimiter::new(limits.memory),
            effects: Effects::default(),
            effect_error: None,
            logs: Vec::new(),
            log_bytes: 0,
            host,
            config,
            started,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        let ticks = limits
            .timeout
            .as_nanos()
            .div_ceil(self.config.tick.as_nanos().max(1)) as u64;
        store.set_epoch_deadline(ticks.max(1) + 1);
        store.epoch_deadline_trap();
        if self.config.fuel {
            // Fuel is metered for cost, not as a limit: the timeout bounds time.
            let _ = store.set_fuel(u64::MAX);
        }
        store
    }

    /// Run one invocation of `function` with `events` in a fresh instance.
    ///
    /// Blocks the calling thread for as long as the function runs (bounded
    /// by `limits.timeout`); call it from a blocking-capable thread.
    pub fn invoke(
        &self,
        function: &Loaded,
        events: &[Event],
        host: Arc<dyn Host>,
        limits: &Limits,
    ) -> Invocation {
        let started = Instant::now();
        let cold = function.first.swap(false, Ordering::Relaxed);
        let stdout = MemoryOutputPipe::new(MAX_OUTPUT_BYTES);
        let stderr = MemoryOutputPipe::new(MAX_OUTPUT_BYTES);
        let mut store = self.store(
            host,
            function.config.clone(),
            limits,
            started,
            Some((stdout.clone(), stderr.clone())),
        );
        let result = function.pre.instantiate(&mut store).map(|instance| {
            let instantiate = started.elapsed();
            (
                instance
                    .sluice_function_handler()
                    .call_handle(&mut store, events),
                instantiate,
            )
        });
        let (called, instantiate) = match result {
            Ok((called, instantiate)) => (called, instantiate),
            Err(e) => (Err(e), started.elapsed()),
        };
        let duration = started.elapsed();
        let fuel = if self.config.fuel {
            store.get_fuel().ok().map(|left| u64::MAX - left)
        } else {
            None
        };
        let state = store.into_data();
        let mut logs = state.logs;
        host::push_output(&mut logs, "stdout", &stdout.contents(), duration);
        host::push_output(&mut logs, "stderr", &stderr.contents(), duration);
        let outcome = match called {
            Ok(bindings::sluice::function::types::Outcome::Success) => Outcome::Success,
            Ok(bindings::sluice::function::types::Outcome::PartialFailure(failed)) => {
                Outcome::PartialFailure(failed)
            }
            // A guest that caught its own out-of-memory error still failed
            // because of the limit; say so.
            Ok(bindings::sluice::function::types::Outcome::Error(_)) if state.limiter.refused() => {
                Outcome::Failed(Failure::MemoryLimit(limits.memory))
            }
            Ok(bindings::sluice::function::types::Outcome::Error(m)) => {
                Outcome::Failed(Failure::Error(m))
            }
            Err(e) => Outcome::Failed(classify(&e, &state.limiter, state.effect_error, limits)),
        };
        let effects = match outcome {
            Outcome::Failed(_) => Effects::default(),
            _ => state.effects,
        };
        Invocation {
            outcome,
            effects,
            logs,
            cold,
            instantiate,
            duration,
            fuel,
        }
    }
}

fn classify(
    e: &wasmtime::Error,
    limiter: &limiter::MemoryLimiter,
    effect_error: Option<String>,
    limits: &Limits,
) -> Failure {
    if let Some(m) = effect_error {
        return Failure::Effects(m);
    }
    if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return Failure::Timeout(limits.timeout);
    }
    if limiter.refused() {
        return Failure::MemoryLimit(limits.memory);
    }
    Failure::Trap(format!("{e:#}"))
}
