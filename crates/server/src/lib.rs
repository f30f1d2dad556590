//! Composition root of Sluice: opens the store, recovers the broker, serves the API, and
//! shuts everything down in order (stop intake, answer long polls, drain, persist, exit).

mod listener;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use sluice_api::Options as ApiOptions;
use sluice_broker::Broker;
use sluice_functions::Functions;
pub use sluice_functions::budget::Prices;
pub use sluice_functions::telemetry::TARGET as TRACE_TARGET;
pub use sluice_functions::{LineageConfig, RuntimeConfig};
pub use sluice_store::Durability;
use sluice_store::Store;
use sluice_types::{SharedClock, SystemClock};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Connections the kernel may hold completed for the server before it accepts them (the
/// kernel caps it at `net.core.somaxconn`). A burst of new clients that overflows it has
/// its handshakes dropped, and each of them waits a second for the retransmission: a
/// client that opens a connection per request in flight does that after any pause.
const LISTEN_BACKLOG: u32 = 4_096;

/// A listening socket on `addr` with [`LISTEN_BACKLOG`] (the runtime's own bind asks for
/// 1,024).
fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As the standard library's bind does: a restarted server can listen again at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Server settings; every limit is a named option.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the store keeps its files.
    pub data_dir: PathBuf,
    /// Address to listen on. A non-loopback address needs `auth_token`.
    pub listen: SocketAddr,
    /// When writes are acknowledged.
    pub durability: Durability,
    /// Bearer token required on every `/v1` call.
    pub auth_token: Option<String>,
    /// Most open client connections; further ones wait in the accept backlog.
    pub connections_max: usize,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// API limits.
    pub api: sluice_api::Options,
    /// Background work settings.
    pub broker: sluice_broker::Options,
    /// Store settings other than durability.
    pub store: sluice_store::Options,
    /// Function runtime settings.
    pub runtime: sluice_functions::RuntimeConfig,
    /// A loaded function version not invoked for this long is unloaded (its compiled
    /// code unmapped); the next invocation loads it again.
    pub unload_idle_after: Duration,
    /// Most hops an event chain may take from its root before it is stopped as a loop.
    pub hops_max: u32,
    /// Whether and for how long event lineage is kept.
    pub lineage: LineageConfig,
    /// The price table of cost estimates.
    pub prices: Prices,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(".sluice"),
            listen: SocketAddr::from(([127, 0, 0, 1], 7700)),
            durability: Durability::Strict,
            auth_token: None,
            connections_max: 1_024,
            shutdown_grace: Duration::from_secs(10),
            api: sluice_api::Options::default(),
            broker: sluice_broker::Options::default(),
            store: sluice_store::Options::default(),
            runtime: sluice_functions::RuntimeConfig::default(),
            unload_idle_after: Duration::from_secs(600),
            hops_max: sluice_broker::context::HOPS_MAX_DEFAULT,
            lineage: LineageConfig::default(),
            prices: Prices::default(),
        }
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "refusing to listen on non-loopback address {0} without an auth token; set --auth-token or SLUICE_AUTH_TOKEN"
    )]
    UnauthenticatedPublicListen(SocketAddr),
    #[error("auth token must be at least 16 characters")]
    WeakAuthToken,
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] sluice_store::Error),
    #[error(transparent)]
    Broker(#[from] sluice_broker::Error),
    #[error(transparent)]
    Functions(#[from] sluice_functions::Error),
    #[error("serving: {0}")]
    Serve(std::io::Error),
}

/// A server bound to its address, not yet serving.
pub struct Server {
    config: Config,
    listener: tokio::net::TcpListener,
    store: Store,
    broker: Broker,
    functions: Functions,
}

impl Server {
    /// Checks the config, opens the store, recovers the broker and binds the listener.
    pub async fn bind(config: Config) -> Result<Self, Error> {
        Self::bind_with_clock(config, Arc::new(SystemClock)).await
    }

    /// As [`Server::bind`], with an injected clock.
    pub async fn bind_with_clock(config: Config, clock: SharedClock) -> Result<Self, Error> {
        match &config.auth_token {
            Some(t) if t.len() < 16 => return Err(Error::WeakAuthToken),
            None if !config.listen.ip().is_loopback() => {
                return Err(Error::UnauthenticatedPublicListen(config.listen));
            }
            _ => {}
        }
        std::fs::create_dir_all(&config.data_dir).map_err(|source| Error::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let store_options = sluice_store::Options {
            durability: config.durability,
            ..config.store.clone()
        };
        let store = Store::open(&config.data_dir, store_options)?;
        let broker = Broker::open(store.clone(), clock.clone(), &config.broker)?;
        let functions = Functions::open_with(
            broker.clone(),
            store.clone(),
            &config.data_dir.join("artifacts"),
            clock,
            config.runtime.clone(),
            sluice_functions::Operations {
                lineage: config.lineage,
                prices: config.prices,
            },
        )?;
        let listener = bind(config.listen).map_err(|source| Error::Listen {
            addr: config.listen,
            source,
        })?;
        Ok(Self {
            config,
            listener,
            store,
            broker,
            functions,
        })
    }

    /// The bound address (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
    }

    /// Serves until `shutdown` resolves, then drains and persists.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let Server {
            config,
            listener,
            store,
            broker,
            functions,
        } = self;
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(
            broker
                .clone()
                .run(config.broker.clone(), cancel.child_token()),
        );

        {
            // Usage metering: queue and topic usage sampled, budget periods rolled and
            // usage persisted every second, and once more at shutdown.
            let functions = functions.clone();
            let stop = cancel.child_token();
            tracker.spawn(async move {
                loop {
                    let stopping = tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => false,
                        _ = stop.cancelled() => true,
                    };
                    if let Err(e) = functions.meter_tick() {
                        tracing::warn!(error = %e, "metering usage failed");
                    }
                    if stopping {
                        return;
                    }
                }
            });
        }
        {
            // Lineage past its retention or size cap goes once a minute.
            let functions = functions.clone();
            let stop = cancel.child_token();
            tracker.spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                        _ = stop.cancelled() => return,
                    }
                    match functions.prune_lineage() {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(removed = n, "pruned lineage"),
                        Err(e) => tracing::warn!(error = %e, "pruning lineage failed"),
                    }
                }
            });
        }
        {
            let functions = functions.clone();
            let idle = config.unload_idle_after;
            let stop = cancel.child_token();
            let every = (idle / 2).clamp(Duration::from_millis(100), Duration::from_secs(30));
            tracker.spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(every) => {}
                        _ = stop.cancelled() => return,
                    }
                    let n = functions.unload_idle(idle);
                    if n > 0 {
                        tracing::debug!(unloaded = n, "unloaded idle function versions");
                    }
                }
            });
        }
        let triggers = sluice_functions::Triggers::start(
            functions.clone(),
            broker.clone(),
            cancel.child_token(),
            config.hops_max,
        )?;
        let projections = sluice_functions::Projections::start(
            functions.clone(),
            triggers.clone(),
            broker.clone(),
        )
        .await?;
        let sagas = sluice_functions::saga_runner::Sagas::start(
            functions.clone(),
            broker.clone(),
            cancel.child_token(),
        )
        .await?;
        let api_mut = config.api.clone();
        let api_options = sluice_api::Options {
            auth_token: config.auth_token.clone(),
            ..api_mut
        };
        let long_polls = cancel.child_token();
        let state = sluice_api::AppState::new(
            broker.clone(),
            functions,
            triggers,
            projections,
            sagas,
            api_options,
            long_polls.clone(),
        );
        let app = sluice_api::router(state.clone());
        let listener =
            listener::Limited::new(listener, config.connections_max, state.connections());

        let stop = cancel.clone();
        let drain_state = state.clone();
        let drain_broker = broker.clone();
        let graceful = async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections, answering long polls");
            drain_state.set_draining();
            // Long polls answer now with what they have; then in-flight requests finish.
            long_polls.cancel();
            drain_broker.wake_all();
            stop.cancel();
        };
        let serve = axum::serve(listener, app).with_graceful_shutdown(graceful);
        let serve = tokio::spawn(async move { serve.await });
        cancel.cancelled().await;
        match tokio::time::timeout(config.shutdown_grace, serve).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(Error::Serve(e)),
            Ok(Err(e)) => tracing::error!(error = %e, "server task failed"),
            Err(_) => tracing::warn!(
                grace = ?config.shutdown_grace,
                "requests still running after the grace period; stopping them"
            ),
        }
        tracker.close();
        tracker.wait().await;
        store.sync_all()?;
        tracing::info!("store persisted; bye");
        Ok(())
    }
}
