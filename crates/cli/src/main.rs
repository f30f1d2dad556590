//! The `sluice` binary: `sluice serve` runs the server; every other command is a client of
//! a running server's HTTP API.

mod apply;
mod bench;
mod client;
mod cost;
mod function;
mod manifest;
mod otlp;
mod projection;
mod queue;
mod saga;
mod stream;
mod topic;
mod trace;
mod trigger;
mod up;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Sluice: durable queues and topics and the operations around them, in one binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server on the embedded store.
    Serve(Box<ServeArgs>),
    /// Manage queues and their messages on a running server.
    Queue(Box<queue::QueueArgs>),
    /// Manage topics: publish CloudEvents, read, tail, compacted tables.
    Topic(Box<topic::TopicArgs>),
    /// Manage subscriptions of topics: filters, seek, receive and ack.
    Sub(Box<topic::SubArgs>),
    /// Deploy, version, alias, invoke and delete functions (WebAssembly components).
    #[command(name = "fn")]
    Fn(Box<function::FnArgs>),
    /// Connect queues and subscriptions to functions: batching, concurrency, rate limits.
    Trigger(Box<trigger::TriggerArgs>),
    /// Event-store streams: append with an expected version, read, follow, metadata,
    /// delete, snapshots.
    Stream(Box<stream::StreamArgs>),
    /// Projections: fold a stream, a category or $all into a function's state.
    Projection(Box<projection::ProjectionArgs>),
    /// Sagas: definitions (versioned) of ordered steps with compensations.
    Saga(Box<saga::SagaArgs>),
    /// Usage and estimated cost per function, trigger, queue and topic.
    Cost(Box<cost::CostArgs>),
    /// Budgets: limits per hour, day or month that pause triggers when spent.
    Budget(Box<cost::BudgetArgs>),
    /// The causal tree of an event's chain: which functions handled it, what they
    /// produced, attempts, dead-letter moves.
    Trace(Box<trace::TraceArgs>),
    /// Create or update everything an app manifest (sluice.toml) describes on a running
    /// server, and print what changed.
    Apply(Box<apply::ApplyArgs>),
    /// Start a local server, build and apply the app manifest (sluice.toml), serve its
    /// pages and follow its functions' logs; changes to the manifest or to a function's
    /// sources are built and applied as they happen.
    Up(Box<up::UpArgs>),
    /// Run the standard workloads (W1 throughput, W2 latency) against a running server.
    Bench(Box<bench::BenchArgs>),
}

#[derive(Clone, Copy, ValueEnum)]
enum DurabilityArg {
    /// Acknowledge writes after fsync.
    Strict,
    /// Acknowledge writes once they reach the OS; see the README for the loss window.
    Relaxed,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Switch {
    On,
    Off,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Directory of the embedded store.
    #[arg(long, env = "SLUICE_DATA_DIR", default_value = ".sluice")]
    data_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "SLUICE_LISTEN", default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// When writes are acknowledged.
    #[arg(long, env = "SLUICE_DURABILITY", value_enum, default_value = "strict")]
    durability: DurabilityArg,
    /// Bearer token required on every API call; needed to listen beyond loopback.
    #[arg(long, env = "SLUICE_AUTH_TOKEN", hide_env_values = true)]
    auth_token: Option<String>,
    /// Most open client connections.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    max_body_size: usize,
    /// Most concurrent long polls.
    #[arg(long, default_value_t = 1024)]
    max_long_polls: usize,
    /// Function instances that may run at once, across all functions.
    #[arg(long, env = "SLUICE_MAX_INSTANCES", default_value_t = 256)]
    max_instances: u32,
    /// Meter fuel (roughly, executed instructions) of every invocation, for cost.
    #[arg(long, env = "SLUICE_FUEL")]
    fuel: bool,
    /// Unload a function version's compiled code after it has not run for this long.
    #[arg(long, env = "SLUICE_UNLOAD_IDLE_AFTER", default_value = "10m")]
    unload_idle_after: sluice_types::HumanDuration,
    /// Log format.
    #[arg(long, value_enum, default_value = "human")]
    log_format: LogFormat,
    /// Most hops an event chain may take from its root event; an event that would go
    /// further is dead-lettered with reason `loop_detected` and an alert is published.
    #[arg(long, env = "SLUICE_MAX_HOPS", default_value_t = 32)]
    max_hops: u32,
    /// Record event lineage (which invocation handled and produced which event) for
    /// `sluice trace`.
    #[arg(long, env = "SLUICE_LINEAGE", value_enum, default_value = "on")]
    lineage: Switch,
    /// How long lineage is kept.
    #[arg(long, env = "SLUICE_LINEAGE_RETENTION", default_value = "24h")]
    lineage_retention: sluice_types::HumanDuration,
    /// Most bytes of lineage kept; the oldest goes first.
    #[arg(long, env = "SLUICE_LINEAGE_MAX_SIZE", default_value = "256MiB")]
    lineage_max_size: sluice_types::ByteSize,
    /// A JSON price table for cost estimates (fields of docs/operations.md; missing
    /// ones keep their defaults, which follow public serverless list prices).
    #[arg(long, env = "SLUICE_PRICES")]
    prices: Option<PathBuf>,
    /// Serve the static pages of this directory under /app/.
    #[arg(long, env = "SLUICE_SITE")]
    site: Option<PathBuf>,
    /// Export trace spans over OTLP/HTTP to this collector (e.g. http://127.0.0.1:4318).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// The OTLP encoding: http/protobuf or http/json.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL", default_value = "http/protobuf",
          value_parser = ["http/protobuf", "http/json"])]
    otlp_protocol: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(*args)),
        Command::Queue(args) => runtime.block_on(queue::run(*args)),
        Command::Topic(args) => runtime.block_on(topic::run_topic(*args)),
        Command::Sub(args) => runtime.block_on(topic::run_sub(*args)),
        Command::Stream(args) => runtime.block_on(stream::run(*args)),
        Command::Projection(args) => runtime.block_on(projection::run(*args)),
        Command::Saga(args) => runtime.block_on(saga::run(*args)),
        Command::Fn(args) => runtime.block_on(function::run(*args)),
        Command::Trigger(args) => runtime.block_on(trigger::run(*args)),
        Command::Trace(args) => runtime.block_on(trace::run(*args)),
        Command::Cost(args) => runtime.block_on(cost::run_cost(*args)),
        Command::Budget(args) => runtime.block_on(cost::run_budget(*args)),
        Command::Apply(args) => runtime.block_on(apply::run(*args)),
        Command::Up(args) => runtime.block_on(up::run(*args)),
        Command::Bench(args) => runtime.block_on(bench::run(*args)),
    }
}

/// Logs to stderr (human or JSON, filtered by `SLUICE_LOG`, else `default_level`), and
/// spans to an OTLP collector when one is given. Returns the span exporter, to flush at
/// exit.
fn init_logging(
    format: LogFormat,
    otlp: Option<(&str, bool)>,
    default_level: &str,
) -> anyhow::Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    // Trace spans are for the span exporter; logs show them only if asked by name.
    let directives = std::env::var("SLUICE_LOG").unwrap_or_else(|_| default_level.into());
    let directives = if directives.contains(sluice_server::TRACE_TARGET) {
        directives
    } else {
        format!("{directives},{}=off", sluice_server::TRACE_TARGET)
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .with_context(|| format!("SLUICE_LOG={directives:?}"))?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let fmt = if format == LogFormat::Json {
        fmt.json().with_filter(filter).boxed()
    } else {
        fmt.with_filter(filter).boxed()
    };
    let provider = otlp
        .map(|(endpoint, json)| otlp::provider(endpoint, json))
        .transpose()?;
    let spans = provider.as_ref().map(otlp::layer);
    tracing_subscriber::registry().with(fmt).with(spans).init();
    Ok(provider)
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let spans = init_server_logging(&args, "info")?;
    let config = server_config(args)?;
    let durability = config.durability;
    let data_dir = config.data_dir.clone();
    let server = sluice_server::Server::bind(config).await?;
    let addr = server.local_addr();
    tracing::info!(%addr, data_dir = %data_dir.display(), ?durability, "sluice is serving");
    // A line for scripts and tests that start the server on port 0.
    println!("listening on http://{addr}");
    server.run(shutdown_signal()).await?;
    flush_spans(spans).await
}

/// Logging as `serve`'s flags ask; returns the span exporter to flush at exit.
/// `default_level` applies when `SLUICE_LOG` is not set.
fn init_server_logging(
    args: &ServeArgs,
    default_level: &str,
) -> anyhow::Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>> {
    let otlp = args
        .otlp_endpoint
        .as_deref()
        .filter(|e| !e.is_empty())
        .map(|e| (e, args.otlp_protocol == "http/json"));
    init_logging(args.log_format, otlp, default_level)
}

/// Sends the last trace spans before the process exits.
async fn flush_spans(
    spans: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
) -> anyhow::Result<()> {
    if let Some(provider) = spans {
        // Blocks while the last spans go out.
        tokio::task::spawn_blocking(move || provider.shutdown())
            .await?
            .context("flushing trace spans")?;
    }
    Ok(())
}

/// The server's configuration from `serve`'s flags.
fn server_config(args: ServeArgs) -> anyhow::Result<sluice_server::Config> {
    Ok(sluice_server::Config {
        data_dir: args.data_dir,
        listen: args.listen,
        durability: match args.durability {
            DurabilityArg::Strict => sluice_server::Durability::Strict,
            DurabilityArg::Relaxed => sluice_server::Durability::Relaxed,
        },
        auth_token: args.auth_token,
        connections_max: args.max_connections,
        api: sluice_server::ApiOptions {
            body_size_max: args.max_body_size,
            long_polls_max: args.max_long_polls,
            auth_token: None,
            site_dir: args.site,
        },
        runtime: sluice_server::RuntimeConfig {
            max_instances: args.max_instances.clamp(1, 10_000),
            fuel: args.fuel,
            ..sluice_server::RuntimeConfig::default()
        },
        unload_idle_after: args.unload_idle_after.to_std(),
        hops_max: args.max_hops.max(1),
        prices: match &args.prices {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading the price table {}", path.display()))?;
                let prices: sluice_server::Prices = serde_json::from_str(&text)
                    .with_context(|| format!("the price table {}", path.display()))?;
                prices
                    .validate()
                    .map_err(|e| anyhow::anyhow!("the price table {}: {e}", path.display()))?;
                prices
            }
            None => sluice_server::Prices::default(),
        },
        lineage: sluice_server::LineageConfig {
            enabled: args.lineage == Switch::On,
            retention_ms: args.lineage_retention.as_millis(),
            bytes_max: args.lineage_max_size.0,
        },
        ..sluice_server::Config::default()
    })
}

/// Resolves on the first SIGINT or SIGTERM; a second one exits at once.
async fn shutdown_signal() {
    wait_for_signal().await;
    tokio::spawn(async {
        wait_for_signal().await;
        eprintln!("second signal: exiting now");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
