//! `sluice bench`: the standard workloads against a running server, measured from the client.
//!
//! - W1: send N messages in batches, then receive and ack them all; then both at once.
//! - W2: send single messages at a fixed rate and measure send→deliver latency from each
//!   message's intended send time, so a stalled server cannot hide its stall (no coordinated
//!   omission).
//! - W3: publish N CloudEvents to a topic with 4 subscriptions and receive and ack them on
//!   every subscription: all 4 matching every event, then each matching a quarter.
//!
//! - W4: a backlog of N messages in a queue drained by a trigger into a function (queue →
//!   function → ack), at batch sizes 1 and 100; the guest is given with `--guest`.
//! - ES: the event store: single-event appends with exact expected versions from many
//!   clients (throughput and latency), appends of 100 events, reads of a stream and of
//!   `$all`, and a catch-up subscription over SSE; beside them, the disk's own fdatasync
//!   latency, probed in `--fsync-probe-dir`.
//! - SAGAS: three-step sagas of a trivial guest (`--guest`), started by many clients at
//!   once: sagas completed per second, and each saga's time per step (start to end over
//!   three steps), which is what orchestration adds when the steps themselves take
//!   microseconds.
//!
//! - BACKLOG: N messages sent to a queue that nobody receives from, with the server's RSS
//!   after each tenth: the backlog lives on disk, so memory stays flat.
//! - LIMITS: what the machine allows at best: the disk's fdatasync latency, a loopback TCP
//!   round trip, and one HTTP round trip to the server's `/healthz`.
//!
//! Client and server share the machine, so the client's own work (JSON, HTTP) is part of
//! every figure; the report says so.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_types::HumanDuration;
use tokio::sync::{Semaphore, watch};

use crate::client::{ClientArgs, Output};

#[cfg(feature = "nats")]
mod nats;

/// The broker a run measures.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Broker {
    /// The Sluice server at `--server`.
    Sluice,
    /// NATS JetStream at `--nats-url`, W1–W3 only (a build with `--features nats`).
    Nats,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    W1,
    W2,
    W3,
    W4,
    Es,
    Sagas,
    /// The machine's floors beside the figures: the disk's fdatasync, a loopback TCP
    /// round trip, and an HTTP request the server answers without work (`/healthz`).
    Limits,
    /// A backlog of `--messages` sent to one queue and never received, with the server's
    /// RSS (`--server-pid`) after each tenth: memory must not grow with the backlog.
    Backlog,
    All,
}

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Which workload to run.
    #[arg(long, value_enum, default_value = "all")]
    workload: Workload,
    /// Which broker to measure, for side-by-side figures (`scripts/bench --compare nats`).
    #[arg(long, value_enum, default_value = "sluice")]
    broker: Broker,
    /// The NATS server for `--broker nats`.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// W1: messages per phase.
    #[arg(long, default_value_t = 200_000)]
    messages: usize,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// W1: messages per send, receive and ack call.
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// W1: concurrent producers.
    #[arg(long, default_value_t = 2)]
    producers: usize,
    /// Concurrent consumers.
    #[arg(long, default_value_t = 2)]
    consumers: usize,
    /// W2: messages per second.
    #[arg(long, default_value_t = 5_000)]
    rate: u64,
    /// W2: how long to send.
    #[arg(long, default_value = "10s")]
    duration: HumanDuration,
    /// W3: events published per phase.
    #[arg(long, default_value_t = 50_000)]
    events: usize,
    /// W4: the component to deploy (a trivial guest, e.g. built by
    /// `cargo run -p sluice-guests --bin guest -- ok`).
    #[arg(long)]
    guest: Option<std::path::PathBuf>,
    /// W4: messages in the backlog at batch size 100 (a tenth of it at batch size 1).
    #[arg(long, default_value_t = 100_000)]
    pipeline_messages: usize,
    /// W4: the trigger's max concurrency (invocations in flight share the store's fsyncs).
    #[arg(long, default_value_t = 8)]
    pipeline_concurrency: u32,
    /// ES: single-event appends in total.
    #[arg(long, default_value_t = 20_000)]
    es_single: usize,
    /// ES: clients appending single events at once, each to its own stream.
    #[arg(long, default_value_t = 16)]
    es_clients: usize,
    /// ES: events appended in batches of 100.
    #[arg(long, default_value_t = 200_000)]
    es_batched: usize,
    /// ES: clients appending batches at once, each to its own stream.
    #[arg(long, default_value_t = 4)]
    es_batch_clients: usize,
    /// SAGAS: sagas started per run.
    #[arg(long, default_value_t = 2_000)]
    sagas: usize,
    /// SAGAS: clients starting sagas at once.
    #[arg(long, default_value_t = 16)]
    saga_clients: usize,
    /// ES: where to probe the disk's fdatasync latency (the server's disk).
    #[arg(long, default_value = ".")]
    fsync_probe_dir: std::path::PathBuf,
    /// BACKLOG: the server's process id, to read its RSS (client and server share the
    /// machine).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Repetitions of each workload; the report gives the median and the range.
    #[arg(long, default_value_t = 1)]
    runs: usize,
}

struct Http {
    client: reqwest::Client,
    base: String,
    token: Option<String>,
    /// Idle lean connections for [`Http::lean_post`].
    lean: std::sync::Mutex<Vec<Conn>>,
}

impl Http {
    /// Sends `req` with the bearer token; an answer that is not a success is an error
    /// naming `what` and carrying the server's text.
    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> anyhow::Result<reqwest::Response> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().await.context("request to the server")?;
        if !resp.status().is_success() {
            bail!(
                "{what}: HTTP {}: {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
        }
        Ok(resp)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn post(&self, path: &str, body: String) -> anyhow::Result<Vec<u8>> {
        self.post_as(path, "application/json", body).await
    }

    async fn post_as(
        &self,
        path: &str,
        content_type: &str,
        body: String,
    ) -> anyhow::Result<Vec<u8>> {
        let req = self
            .client
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body);
        let resp = self.send(req, path).await?;
        Ok(resp.bytes().await.context("reading the response")?.to_vec())
    }

    /// A POST of a JSON `body` over a lean connection (see [`Conn`]) taken from the idle
    /// ones, or opened when none is idle, and put back once answered: for the requests
    /// of one message or one batch that W2's latencies and the consumers are made of.
    async fn lean_post(&self, path: &str, body: String) -> anyhow::Result<bytes::Bytes> {
        let idle = self.lean.lock().expect("connection pool lock").pop();
        let mut conn = match idle {
            Some(c) if !c.sender.is_closed() => c,
            _ => Conn::open(self).await?,
        };
        let answer = tokio::time::timeout(
            Duration::from_secs(60),
            conn.request(hyper::Method::POST, path, body),
        )
        .await
        .with_context(|| format!("{path}: no answer in 60 s"))??;
        self.lean.lock().expect("connection pool lock").push(conn);
        Ok(answer)
    }

    async fn put(&self, path: &str, body: Value) -> anyhow::Result<()> {
        self.send(self.client.put(self.url(path)).json(&body), path)
            .await?;
        Ok(())
    }

    /// Deploys `wasm` as function `name`, allowing 1,000 invocations at once.
    async fn deploy(&self, name: &str, wasm: &[u8]) -> anyhow::Result<()> {
        let req = self
            .client
            .post(self.url(&format!("/v1/functions/{name}/versions?concurrency=1000")))
            .header("content-type", "application/wasm")
            .body(wasm.to_vec());
        self.send(req, "deploying the benchmark guest").await?;
        Ok(())
    }

    async fn get(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let resp = self.open(path).await?;
        Ok(resp.bytes().await.context("reading the response")?.to_vec())
    }

    /// A GET whose answer is read by the caller (a page, or a stream of events).
    async fn open(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        self.send(self.client.get(self.url(path)), path).await
    }

    async fn delete(&self, path: &str) {
        let mut req = self.client.delete(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let _ = req.send().await;
    }
}

#[derive(Deserialize)]
struct Received<'a> {
    #[serde(borrow)]
    messages: Vec<ReceivedMessage<'a>>,
    /// How many of the receipts the receive carried were acked.
    #[serde(default)]
    acked: Option<usize>,
}

#[derive(Deserialize)]
struct ReceivedMessage<'a> {
    receipt: &'a str,
    /// Queue messages carry a body, subscription deliveries an event.
    #[serde(borrow, default)]
    body: Option<&'a serde_json::value::RawValue>,
}

/// A JSON string body of exactly `size` bytes, quotes included.
fn padding(size: usize) -> String {
    "x".repeat(size.saturating_sub(2))
}

/// An ack's body naming `receipts`, with `rest` (further fields, each after a comma).
fn receipts_body(receipts: &[&str], rest: &str) -> String {
    let mut s = String::with_capacity(16 + receipts.len() * 43 + rest.len());
    s.push_str("{\"receipts\":");
    push_receipts(&mut s, receipts);
    s.push_str(rest);
    s.push('}');
    s
}

/// Appends `receipts` as a JSON array of strings (receipts are hex digits: no escaping).
fn push_receipts(s: &mut String, receipts: &[impl AsRef<str>]) {
    s.push('[');
    for (i, r) in receipts.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push('"');
        s.push_str(r.as_ref());
        s.push('"');
    }
    s.push(']');
}

/// What a group of consumers has acked towards its target; `done` turns true when the
/// target is reached, which ends every consumer of the group at once.
struct Tally {
    acked: AtomicUsize,
    /// Messages received by the group so far (counted only by consumers that carry acks
    /// in their receives, to tell the batch that completes the target).
    received: AtomicUsize,
    target: usize,
    done: watch::Sender<bool>,
}

impl Tally {
    fn new(target: usize) -> Arc<Self> {
        Arc::new(Self {
            acked: AtomicUsize::new(0),
            received: AtomicUsize::new(0),
            target,
            done: watch::channel(target == 0).0,
        })
    }

    fn add(&self, n: usize) {
        if self.acked.fetch_add(n, Ordering::AcqRel) + n >= self.target {
            self.done.send_replace(true);
        }
    }

    /// Counts `n` received messages; whether they complete the group's target.
    fn received(&self, n: usize) -> bool {
        self.received.fetch_add(n, Ordering::AcqRel) + n >= self.target
    }
}

/// How a consumer acks what it received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Acking {
    /// In an ack request of its own per batch.
    Separate,
    /// In its next receive request (`"ack"`: one request a batch carries both). The batch
    /// that completes the group's target is acked on its own, so the clock stops at once.
    WithReceive,
}

/// Receives and acks on `queue` (a queue's or subscription's API path) until the group's
/// `tally` reaches its target; calls `on_body` for each queue message.
///
/// Like the NATS consumers, which ack without waiting, a consumer sends each ack without
/// waiting for its answer before it receives again: an ack request of its own, kept one
/// in flight (the one before is confirmed first), or carried by the next receive
/// (`acking`). It returns once its last ack is confirmed. A long poll still open when the
/// group's target is reached is abandoned, as the NATS consumers stop pulling then: the
/// poll is left to finish on its own, and whatever it still gets is handed back at once
/// (nacked without delay) for whoever receives next.
async fn consume(
    http: Arc<Http>,
    queue: String,
    max: usize,
    tally: Arc<Tally>,
    deadline: Instant,
    acking: Acking,
    on_body: impl Fn(&str),
) -> anyhow::Result<()> {
    let mut done = tally.done.subscribe();
    let mut in_flight: Option<tokio::task::JoinHandle<anyhow::Result<()>>> = None;
    let receive_path = format!("{queue}/receive");
    // Receipts the next receive acks.
    let mut carried: Vec<String> = Vec::new();
    while !*done.borrow() {
        if Instant::now() > deadline {
            bail!(
                "consumer gave up: {} of {} acked",
                tally.acked.load(Ordering::Acquire),
                tally.target
            );
        }
        let carrying = carried.len();
        let mut receiving = Box::pin({
            let body = receive_body(max, &carried);
            let (http, path) = (http.clone(), receive_path.clone());
            async move { http.lean_post(&path, body).await }
        });
        carried.clear();
        let body = tokio::select! {
            body = &mut receiving => body?,
            _ = done.wait_for(|d| *d) => {
                let (http, path) = (http.clone(), format!("{queue}/nack"));
                tokio::spawn(async move {
                    let Ok(body) = receiving.await else { return };
                    let Ok(got) = serde_json::from_slice::<Received>(&body) else { return };
                    if !got.messages.is_empty() {
                        let receipts: Vec<&str> = got.messages.iter().map(|m| m.receipt).collect();
                        let _ = http.lean_post(&path, receipts_body(&receipts, ",\"delay\":\"0s\"")).await;
                    }
                });
                break;
            }
        };
        let got: Received = serde_json::from_slice(&body).context("parsing receive")?;
        if carrying > 0 {
            if got.acked != Some(carrying) {
                bail!(
                    "a receive carrying {carrying} acks answered {}",
                    String::from_utf8_lossy(&body)
                );
            }
            tally.add(carrying);
        }
        if got.messages.is_empty() {
            continue;
        }
        for body in got.messages.iter().filter_map(|m| m.body) {
            on_body(body.get());
        }
        let n = got.messages.len();
        if acking == Acking::WithReceive && !tally.received(n) {
            carried.extend(got.messages.iter().map(|m| m.receipt.to_owned()));
            continue;
        }
        let receipts: Vec<&str> = got.messages.iter().map(|m| m.receipt).collect();
        let ack = receipts_body(&receipts, "");
        if let Some(previous) = in_flight.take() {
            previous.await??;
        }
        let (http, path, tally) = (http.clone(), format!("{queue}/ack"), tally.clone());
        in_flight = Some(tokio::spawn(async move {
            http.lean_post(&path, ack).await?;
            tally.add(n);
            Ok(())
        }));
    }
    if let Some(last) = in_flight {
        last.await??;
    }
    Ok(())
}

/// A receive's body: up to `max` messages, a long poll of 1 s, acking `receipts` first.
fn receive_body(max: usize, receipts: &[String]) -> String {
    let mut s = format!("{{\"max\":{max},\"wait\":\"1s\"");
    if !receipts.is_empty() {
        s.push_str(",\"ack\":");
        push_receipts(&mut s, receipts);
    }
    s.push('}');
    s
}

/// Sends `total` messages in batches of `batch` from `producers` tasks.
async fn produce(
    http: &Arc<Http>,
    queue: &str,
    total: usize,
    batch: usize,
    producers: usize,
    size: usize,
) -> anyhow::Result<()> {
    let entry = format!("{{\"body\":\"{}\"}}", padding(size));
    let full = batch_body(&entry, batch);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..producers {
        let (http, next, full, entry) = (http.clone(), next.clone(), full.clone(), entry.clone());
        let path = format!("/v1/queues/{queue}/messages");
        tasks.push(tokio::spawn(async move {
            loop {
                let start = next.fetch_add(batch, Ordering::AcqRel);
                if start >= total {
                    return anyhow::Ok(());
                }
                let n = batch.min(total - start);
                let body = if n == batch {
                    full.clone()
                } else {
                    batch_body(&entry, n)
                };
                http.post(&path, body).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

fn batch_body(entry: &str, n: usize) -> String {
    let mut s = String::with_capacity(16 + n * (entry.len() + 1));
    s.push_str("{\"messages\":[");
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s.push_str(entry);
    }
    s.push_str("]}");
    s
}

async fn consume_all(
    http: &Arc<Http>,
    queue: &str,
    args: &BenchArgs,
    total: usize,
) -> anyhow::Result<()> {
    let tally = Tally::new(total);
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut tasks = Vec::new();
    for _ in 0..args.consumers {
        let (http, tally, queue, max) = (
            http.clone(),
            tally.clone(),
            format!("/v1/queues/{queue}"),
            args.batch,
        );
        tasks.push(tokio::spawn(async move {
            consume(http, queue, max, tally, deadline, Acking::Separate, |_| {}).await
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

struct W1 {
    produce: f64,
    consume: f64,
    concurrent: f64,
}

async fn w1(http: &Arc<Http>, args: &BenchArgs, run: usize) -> anyhow::Result<W1> {
    let n = args.messages;
    let queue = format!("bench-w1-{}-{run}", std::process::id());
    http.put(&format!("/v1/queues/{queue}"), json!({})).await?;
    let t = Instant::now();
    produce(http, &queue, n, args.batch, args.producers, args.size).await?;
    let produce_rate = rate(n, t.elapsed());
    let t = Instant::now();
    consume_all(http, &queue, args, n).await?;
    let consume_rate = rate(n, t.elapsed());
    // Both at once: the clock stops when the last message is acked.
    let t = Instant::now();
    let (p, c) = tokio::join!(
        produce(http, &queue, n, args.batch, args.producers, args.size),
        consume_all(http, &queue, args, n)
    );
    p?;
    c?;
    let concurrent_rate = rate(n, t.elapsed());
    http.delete(&format!("/v1/queues/{queue}")).await;
    Ok(W1 {
        produce: produce_rate,
        consume: consume_rate,
        concurrent: concurrent_rate,
    })
}

struct W2 {
    sent: usize,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
    /// How late the client's pacer started each send, from its intended time.
    lag_p50_us: u64,
    lag_p99_us: u64,
    /// Intended send time to the send's acknowledgement.
    acked_p50_us: u64,
    acked_p99_us: u64,
}

async fn w2(http: &Arc<Http>, args: &BenchArgs, run: usize) -> anyhow::Result<W2> {
    let queue = format!("bench-w2-{}-{run}", std::process::id());
    http.put(&format!("/v1/queues/{queue}"), json!({})).await?;
    let (total, pad, latencies) = w2_schedule(args)?;
    let origin = latencies.origin;
    let tally = Tally::new(total);
    let deadline = origin + args.duration.to_std() + Duration::from_secs(60);
    let mut consumers = Vec::new();
    for _ in 0..args.consumers {
        let (http, tally, queue, latencies) = (
            http.clone(),
            tally.clone(),
            format!("/v1/queues/{queue}"),
            latencies.clone(),
        );
        consumers.push(tokio::spawn(async move {
            consume(
                http,
                queue,
                100,
                tally,
                deadline,
                Acking::WithReceive,
                move |body| latencies.record(body.as_bytes()),
            )
            .await
        }));
    }
    let (path, sender) = (format!("/v1/queues/{queue}/messages"), http.clone());
    send_paced(args.rate, total, &latencies, move |t| {
        let body = format!("{{\"messages\":[{{\"body\":{{\"t\":{t},\"p\":\"{pad}\"}}}}]}}");
        let (http, path) = (sender.clone(), path.clone());
        async move { http.lean_post(&path, body).await.map(|_| ()) }
    })
    .await?;

    for c in consumers {
        c.await??;
    }
    http.delete(&format!("/v1/queues/{queue}")).await;
    latencies.summary(total)
}

/// W2's schedule: the messages `--rate` and `--duration` give, the padding that makes each
/// body about `--size` bytes, and where their latencies go (counted from 100 ms from now).
fn w2_schedule(args: &BenchArgs) -> anyhow::Result<(usize, String, Arc<Latencies>)> {
    let total = (args.rate as u128 * args.duration.as_millis() as u128 / 1_000) as usize;
    if total == 0 {
        bail!("--rate and --duration give no messages");
    }
    let origin = Instant::now() + Duration::from_millis(100);
    Ok((
        total,
        padding(args.size.saturating_sub(24)),
        Arc::new(Latencies::new(origin, total)),
    ))
}

/// W2's latencies, each from a message's intended send time (`t`, µs since `origin`, in
/// its JSON body) to its delivery; and, to tell the client's share from the broker's,
/// how late the pacer started each send and when each send was acknowledged.
struct Latencies {
    origin: Instant,
    list: std::sync::Mutex<Vec<u64>>,
    lag: std::sync::Mutex<Vec<u64>>,
    acked: std::sync::Mutex<Vec<u64>>,
}

impl Latencies {
    fn new(origin: Instant, total: usize) -> Self {
        let list = || std::sync::Mutex::new(Vec::with_capacity(total));
        Self {
            origin,
            list: list(),
            lag: list(),
            acked: list(),
        }
    }

    /// µs from `t` (µs since `origin`) to now, into `list`.
    fn since(&self, list: &std::sync::Mutex<Vec<u64>>, t: u64) {
        let now = self.origin.elapsed().as_micros() as u64;
        list.lock()
            .expect("latency lock")
            .push(now.saturating_sub(t));
    }

    /// A delivery of `body`, whose `t` is its intended send time.
    fn record(&self, body: &[u8]) {
        if let Ok(v) = serde_json::from_slice::<Value>(body)
            && let Some(t) = v["t"].as_u64()
        {
            self.since(&self.list, t);
        }
    }

    fn summary(&self, total: usize) -> anyhow::Result<W2> {
        let take =
            |l: &std::sync::Mutex<Vec<u64>>| std::mem::take(&mut *l.lock().expect("latency lock"));
        w2_latencies(take(&self.list), take(&self.lag), take(&self.acked), total)
    }
}

/// Calls `send(t)` for messages `0..total` at their intended times, `rate` a second from
/// `latencies.origin` (`t`: the intended time in µs since then), at most 512 at once, and
/// waits for all. Latency counts from the intended time, so a send that had to wait for a
/// permit or a stalled server counts its wait (no coordinated omission). Records each
/// send's start and acknowledgement in `latencies`.
///
/// The pacer is a thread of its own sleeping with the OS timer, not a task on the
/// runtime: the runtime's timer wheel turns in whole milliseconds and fired sends 0–2 ms
/// late (p50 ~1 ms, p99 ~2 ms measured), which W2 then counted as the broker's latency.
async fn send_paced<F, Fut>(
    rate: u64,
    total: usize,
    latencies: &Arc<Latencies>,
    send: F,
) -> anyhow::Result<()>
where
    F: Fn(u64) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let (origin, latencies) = (latencies.origin, latencies.clone());
    let runtime = tokio::runtime::Handle::current();
    let in_flight = Arc::new(Semaphore::new(512));
    let interval_ns = 1_000_000_000 / rate.max(1);
    let senders = tokio::task::spawn_blocking(move || {
        let mut senders = Vec::with_capacity(total);
        for i in 0..total {
            let intended = origin + Duration::from_nanos(interval_ns * i as u64);
            std::thread::sleep(intended.saturating_duration_since(Instant::now()));
            let permit = match in_flight.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => runtime
                    .block_on(in_flight.clone().acquire_owned())
                    .expect("semaphore open"),
            };
            let t = intended.saturating_duration_since(origin).as_micros() as u64;
            latencies.since(&latencies.lag, t);
            let sending = send(t);
            let latencies = latencies.clone();
            senders.push(runtime.spawn(async move {
                let r = sending.await;
                latencies.since(&latencies.acked, t);
                drop(permit);
                r
            }));
        }
        senders
    })
    .await
    .context("the W2 pacer")?;
    for s in senders {
        s.await??;
    }
    Ok(())
}

/// W2's percentiles from every message's latency (`l`), pacer lag and send
/// acknowledgement (one of each per message: a failed send ends the run before this).
fn w2_latencies(
    mut l: Vec<u64>,
    mut lag: Vec<u64>,
    mut acked: Vec<u64>,
    total: usize,
) -> anyhow::Result<W2> {
    if [&l, &lag, &acked].iter().any(|l| l.len() != total) {
        bail!(
            "W2 measured {} of {total} deliveries ({} sends started, {} acknowledged); bodies without a send time?",
            l.len(),
            lag.len(),
            acked.len()
        );
    }
    for l in [&mut l, &mut lag, &mut acked] {
        l.sort_unstable();
    }
    Ok(W2 {
        sent: total,
        p50_us: quantile(&l, 0.50),
        p99_us: quantile(&l, 0.99),
        p999_us: quantile(&l, 0.999),
        max_us: *l.last().unwrap_or(&0),
        lag_p50_us: quantile(&lag, 0.50),
        lag_p99_us: quantile(&lag, 0.99),
        acked_p50_us: quantile(&acked, 0.50),
        acked_p99_us: quantile(&acked, 0.99),
    })
}

struct W3 {
    publish: f64,
    deliveries: f64,
    concurrent: f64,
    quarter: f64,
}

const W3_SUBSCRIPTIONS: usize = 4;

/// A structured CloudEvent of about `size` bytes, with its own id and time so that what is
/// stored is the size published.
fn w3_event(n: usize, size: usize) -> String {
    let head = format!(
        "{{\"specversion\":\"1.0\",\"id\":\"{n:012}\",\"source\":\"/bench\",\"type\":\"bench.tick\",\"time\":\"2026-11-30T00:00:00.000Z\",\"data\":{{\"k\":{},\"p\":\"",
        n % W3_SUBSCRIPTIONS
    );
    format!(
        "{head}{}\"}}}}",
        "x".repeat(size.saturating_sub(head.len() + 3))
    )
}

/// Publishes events `[from, from + total)` to `topic` in batches from `producers` tasks.
async fn publish(
    http: &Arc<Http>,
    topic: &str,
    from: usize,
    total: usize,
    args: &BenchArgs,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..args.producers {
        let (http, next, batch, size) = (http.clone(), next.clone(), args.batch, args.size);
        let path = format!("/v1/topics/{topic}/events");
        tasks.push(tokio::spawn(async move {
            loop {
                let start = next.fetch_add(batch, Ordering::AcqRel);
                if start >= total {
                    return anyhow::Ok(());
                }
                let n = batch.min(total - start);
                let mut body = String::with_capacity(n * (size + 1) + 2);
                body.push('[');
                for i in 0..n {
                    if i > 0 {
                        body.push(',');
                    }
                    body.push_str(&w3_event(from + start + i, size));
                }
                body.push(']');
                http.post_as(&path, "application/cloudevents-batch+json", body)
                    .await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// One consumer per subscription, each until it acked `per_sub`.
async fn consume_subscriptions(
    http: &Arc<Http>,
    topic: &str,
    per_sub: usize,
    args: &BenchArgs,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut tasks = Vec::new();
    for s in 0..W3_SUBSCRIPTIONS {
        let (http, max) = (http.clone(), args.batch);
        let path = format!("/v1/topics/{topic}/subscriptions/s{s}");
        tasks.push(tokio::spawn(async move {
            consume(
                http,
                path,
                max,
                Tally::new(per_sub),
                deadline,
                Acking::Separate,
                |_| {},
            )
            .await
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

async fn w3_topic(http: &Arc<Http>, topic: &str, quarter: bool) -> anyhow::Result<()> {
    http.put(&format!("/v1/topics/{topic}"), json!({})).await?;
    for s in 0..W3_SUBSCRIPTIONS {
        let filter = if quarter {
            json!({"data": {"k": [s]}})
        } else {
            Value::Null
        };
        http.put(
            &format!("/v1/topics/{topic}/subscriptions/s{s}"),
            json!({ "filter": filter }),
        )
        .await?;
    }
    Ok(())
}

async fn w3(http: &Arc<Http>, args: &BenchArgs, run: usize) -> anyhow::Result<W3> {
    let n = args.events - args.events % W3_SUBSCRIPTIONS;
    let topic = format!("bench-w3-{}-{run}", std::process::id());
    w3_topic(http, &topic, false).await?;
    let t = Instant::now();
    publish(http, &topic, 0, n, args).await?;
    let publish_rate = rate(n, t.elapsed());
    let t = Instant::now();
    consume_subscriptions(http, &topic, n, args).await?;
    let deliveries = rate(n * W3_SUBSCRIPTIONS, t.elapsed());
    // Both at once: the clock stops when the last subscription acked its last event.
    let t = Instant::now();
    let (p, c) = tokio::join!(
        publish(http, &topic, n, n, args),
        consume_subscriptions(http, &topic, n, args)
    );
    p?;
    c?;
    let concurrent = rate(n * W3_SUBSCRIPTIONS, t.elapsed());
    http.delete(&format!("/v1/topics/{topic}")).await;
    // Each subscription matches a quarter of the events.
    let topic = format!("bench-w3q-{}-{run}", std::process::id());
    w3_topic(http, &topic, true).await?;
    publish(http, &topic, 0, n, args).await?;
    let t = Instant::now();
    consume_subscriptions(http, &topic, n / W3_SUBSCRIPTIONS, args).await?;
    let quarter = rate(n, t.elapsed());
    http.delete(&format!("/v1/topics/{topic}")).await;
    Ok(W3 {
        publish: publish_rate,
        deliveries,
        concurrent,
        quarter,
    })
}

/// W4 at one batch size: deploy, fill the queue, start the trigger, time the drain.
async fn w4(
    http: &Arc<Http>,
    args: &BenchArgs,
    wasm: &[u8],
    batch: u32,
    n: usize,
    run: usize,
) -> anyhow::Result<f64> {
    let tag = format!("{}-{run}-b{batch}", std::process::id());
    let (queue, function, trigger) = (
        format!("bench-w4-{tag}"),
        format!("bench-w4-{tag}"),
        format!("bench-w4-{tag}"),
    );
    http.deploy(&function, wasm).await?;
    http.put(&format!("/v1/queues/{queue}"), json!({})).await?;
    produce(http, &queue, n, args.batch, args.producers, args.size).await?;
    let t = Instant::now();
    http.put(
        &format!("/v1/triggers/{trigger}"),
        json!({"function": function, "source": {"queue": queue}, "batch_size": batch,
               "max_concurrency": args.pipeline_concurrency}),
    )
    .await?;
    loop {
        let q: Value = serde_json::from_slice(&http.get(&format!("/v1/queues/{queue}")).await?)
            .context("parsing the queue")?;
        let st = &q["stats"];
        if st["visible"] == 0 && st["leased"] == 0 && st["delayed"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let r = rate(n, t.elapsed());
    http.delete(&format!("/v1/triggers/{trigger}")).await;
    http.delete(&format!("/v1/functions/{function}")).await;
    http.delete(&format!("/v1/queues/{queue}")).await;
    Ok(r)
}

struct SagaRun {
    rate: f64,
    /// Per step, under the full load of the throughput phase (queueing included).
    per_step_p50_ms: f64,
    per_step_p99_ms: f64,
    /// Per step, one saga at a time: what orchestration adds without queueing.
    alone_p50_us: u64,
    alone_p99_us: u64,
}

/// Sagas run one at a time: each started and polled until completed; the time per step, in
/// µs, sorted.
async fn sagas_alone(
    http: &Arc<Http>,
    definition: &str,
    tag: &str,
    n: usize,
) -> anyhow::Result<Vec<u64>> {
    let mut conn = Conn::open(http).await?;
    let mut per_step = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("{tag}-alone-{i}");
        let body = json!({"definition": definition, "id": id, "input": {"i": i}});
        let t = Instant::now();
        conn.post("/v1/sagas", body.to_string()).await?;
        loop {
            let v: Value = serde_json::from_slice(&http.get(&format!("/v1/sagas/{id}")).await?)
                .context("parsing a saga")?;
            match v["status"].as_str() {
                Some("completed") => break,
                Some("running") => {}
                other => bail!("saga {id} ended {other:?}"),
            }
            if t.elapsed() > Duration::from_secs(60) {
                bail!("saga {id} did not complete in 60 s");
            }
        }
        per_step.push(t.elapsed().as_micros() as u64 / 3);
    }
    per_step.sort_unstable();
    Ok(per_step)
}

async fn sagas(
    http: &Arc<Http>,
    args: &BenchArgs,
    wasm: &[u8],
    run: usize,
) -> anyhow::Result<SagaRun> {
    let tag = format!("{}-{run}", std::process::id());
    let function = format!("bench-saga-{tag}");
    let definition = format!("bench-saga-{tag}");
    http.deploy(&function, wasm).await?;
    let step = |name: &str| json!({"name": name, "action": {"invoke": {"function": function}}});
    http.put(
        &format!("/v1/sagas/definitions/{definition}"),
        json!({"steps": [step("a"), step("b"), step("c")]}),
    )
    .await?;
    let n = args.sagas;
    let next = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.saga_clients.max(1) {
        let (http, next, definition, tag) =
            (http.clone(), next.clone(), definition.clone(), tag.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&http).await?;
            loop {
                let i = next.fetch_add(1, Ordering::AcqRel);
                if i >= n {
                    return anyhow::Ok(());
                }
                let body = json!({"definition": definition, "id": format!("{tag}-{i}"),
                                  "input": {"i": i}});
                conn.post("/v1/sagas", body.to_string()).await?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    let summaries = loop {
        let body = http
            .get(&format!("/v1/sagas?definition={definition}"))
            .await?;
        let v: Value = serde_json::from_slice(&body).context("parsing the saga list")?;
        let all = v["sagas"].as_array().cloned().unwrap_or_default();
        let done = all.iter().filter(|s| s["status"] == "completed").count();
        if all
            .iter()
            .any(|s| s["status"] != "completed" && s["status"] != "running")
        {
            bail!("a benchmark saga did not complete: {v}");
        }
        if done == n {
            break all;
        }
        if Instant::now() > deadline {
            bail!("{done} of {n} sagas completed in 600 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let elapsed = t.elapsed();
    let mut per_step: Vec<u64> = summaries
        .iter()
        .map(|s| {
            let d = s["updated_ms"].as_u64().unwrap_or(0) - s["started_ms"].as_u64().unwrap_or(0);
            d * 1_000 / 3
        })
        .collect();
    per_step.sort_unstable();
    let alone = sagas_alone(http, &definition, &tag, 200).await?;
    http.delete(&format!("/v1/sagas/definitions/{definition}"))
        .await;
    Ok(SagaRun {
        rate: rate(n, elapsed),
        per_step_p50_ms: quantile(&per_step, 0.50) as f64 / 1_000.0,
        per_step_p99_ms: quantile(&per_step, 0.99) as f64 / 1_000.0,
        alone_p50_us: quantile(&alone, 0.50),
        alone_p99_us: quantile(&alone, 0.99),
    })
}

struct Es {
    single_rate: f64,
    single_p50_us: u64,
    single_p99_us: u64,
    batched_rate: f64,
    read_stream_rate: f64,
    read_all_rate: f64,
    catch_up_rate: f64,
}

/// The p-th quantile of sorted `l`.
fn quantile(l: &[u64], p: f64) -> u64 {
    l[((l.len() as f64 * p).ceil() as usize).clamp(1, l.len()) - 1]
}

/// An append of `events` (structured CloudEvent texts) at exact `expected`.
fn append_body(expected: Option<u64>, events: &[String]) -> String {
    let expected = expected.map_or("\"no_stream\"".to_owned(), |v| v.to_string());
    format!(
        "{{\"expected_version\":{expected},\"events\":[{}]}}",
        events.join(",")
    )
}

/// A lean HTTP/1.1 client on one connection (hyper, no pool, no redirects, no header
/// maps beyond what a request needs), so that a benchmark of many small requests measures
/// the server rather than the client: on the same 2 cores, reqwest cost about 50 µs of
/// CPU per request.
struct Conn {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    host: String,
    token: Option<String>,
}

impl Conn {
    async fn open(http: &Http) -> anyhow::Result<Self> {
        let host = http
            .base
            .strip_prefix("http://")
            .context("the lean benchmark client speaks plain http://")?
            .to_owned();
        let tcp = tokio::net::TcpStream::connect(&host)
            .await
            .with_context(|| format!("connecting to {host}"))?;
        tcp.set_nodelay(true)?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        Ok(Self {
            sender,
            host,
            token: http.token.clone(),
        })
    }

    async fn post(&mut self, path: &str, body: String) -> anyhow::Result<()> {
        self.request(hyper::Method::POST, path, body).await?;
        Ok(())
    }

    async fn get(&mut self, path: &str) -> anyhow::Result<()> {
        self.request(hyper::Method::GET, path, String::new())
            .await?;
        Ok(())
    }

    /// Sends one request and returns the body of its successful answer.
    async fn request(
        &mut self,
        method: hyper::Method,
        path: &str,
        body: String,
    ) -> anyhow::Result<bytes::Bytes> {
        use http_body_util::BodyExt;
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host)
            .header("content-type", "application/json");
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req.body(http_body_util::Full::new(bytes::Bytes::from(body)))?;
        // After a response, the connection may still be finishing it: wait until it can
        // take the next request.
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!("{path}: HTTP {status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(body)
    }
}

/// Appends `per_client` requests of `batch` events from `clients` tasks, each to its own
/// stream with exact expected versions; returns the request latencies in µs.
async fn es_append(
    http: &Arc<Http>,
    prefix: &str,
    clients: usize,
    per_client: usize,
    batch: usize,
    size: usize,
) -> anyhow::Result<Vec<u64>> {
    let mut tasks = Vec::new();
    for c in 0..clients {
        let http = http.clone();
        let path = format!("/v1/streams/{prefix}-{c}/events");
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&http).await?;
            let mut lat = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let events: Vec<String> = (0..batch)
                    .map(|j| w3_event((c * per_client + i) * batch + j, size))
                    .collect();
                let expected = (i > 0).then(|| (i * batch - 1) as u64);
                let body = append_body(expected, &events);
                let t = Instant::now();
                conn.post(&path, body).await?;
                lat.push(t.elapsed().as_micros() as u64);
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort_unstable();
    Ok(all)
}

#[derive(Deserialize)]
struct EsPage<'a> {
    #[serde(borrow)]
    events: Vec<&'a serde_json::value::RawValue>,
    next: Option<u64>,
}

/// Reads `path` (a stream's or `$all`'s events route) from `from` to its end, a page of
/// 1,000 at a time; returns how many events.
async fn es_read(http: &Arc<Http>, path: &str, mut from: u64) -> anyhow::Result<usize> {
    let mut n = 0;
    loop {
        let body = http.get(&format!("{path}?from={from}&limit=1000")).await?;
        let page: EsPage = serde_json::from_slice(&body).context("parsing a page")?;
        n += page.events.len();
        // A stream's last page has no next; `$all` ends with an empty page.
        match page.next {
            Some(next) if !page.events.is_empty() => from = next,
            _ => return Ok(n),
        }
    }
}

/// Follows `path` (an SSE route) until `total` events arrived.
async fn es_catch_up(http: &Arc<Http>, path: &str, total: usize) -> anyhow::Result<()> {
    let mut resp = http.open(path).await?;
    let mut seen = 0;
    let mut tail = Vec::new();
    while seen < total {
        let chunk = resp
            .chunk()
            .await
            .context("reading the stream")?
            .context("the stream ended early")?;
        tail.extend_from_slice(&chunk);
        // Count whole frames: each ends with a blank line.
        let mut start = 0;
        while let Some(i) = tail[start..].windows(2).position(|w| w == b"\n\n") {
            let frame = &tail[start..start + i];
            if frame.starts_with(b"id:") || frame.windows(4).any(|w| w == b"\nid:") {
                seen += 1;
            }
            start += i + 2;
        }
        tail.drain(..start);
    }
    Ok(())
}

async fn es(http: &Arc<Http>, args: &BenchArgs, run: usize) -> anyhow::Result<Es> {
    let prefix = format!("bench{}r{run}", std::process::id());
    let clients = args.es_clients.max(1);
    let per = (args.es_single / clients).max(1);
    // The single-append clients run as one event loop on a thread of their own, as a load
    // generator does: on a small machine shared with the server, clients spread over the
    // runtime's threads compete with the server for the cores and add their own
    // cross-thread wake-ups to every latency they measure.
    let (single, size) = (format!("{prefix}single"), args.size);
    let client = http.clone();
    let t = Instant::now();
    let lat = tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(es_append(&client, &single, clients, per, 1, size))
    })
    .await??;
    let single_rate = rate(clients * per, t.elapsed());
    let batch_clients = args.es_batch_clients.max(1);
    let batches = (args.es_batched / 100 / batch_clients).max(1);
    let t = Instant::now();
    es_append(
        http,
        &format!("{prefix}batch"),
        batch_clients,
        batches,
        100,
        args.size,
    )
    .await?;
    let batched_rate = rate(batch_clients * batches * 100, t.elapsed());
    let stream = format!("/v1/streams/{prefix}batch-0/events");
    let t = Instant::now();
    let n = es_read(http, &stream, 0).await?;
    let read_stream_rate = rate(n, t.elapsed());
    let t = Instant::now();
    // All of `$all`, earlier runs' events included: a rate, whatever the count.
    let n = es_read(http, "/v1/streams/$all/events", 0).await?;
    let read_all_rate = rate(n, t.elapsed());
    let t = Instant::now();
    es_catch_up(
        http,
        &format!("/v1/streams/{prefix}batch-0/stream?from=0"),
        batches * 100,
    )
    .await?;
    let catch_up_rate = rate(batches * 100, t.elapsed());
    Ok(Es {
        single_rate,
        single_p50_us: quantile(&lat, 0.50),
        single_p99_us: quantile(&lat, 0.99),
        batched_rate,
        read_stream_rate,
        read_all_rate,
        catch_up_rate,
    })
}

/// The disk's fdatasync latency in `dir`: 2,000 rounds of a 4 KiB write and a sync, as
/// sorted µs.
fn fsync_probe(dir: &std::path::Path) -> anyhow::Result<Vec<u64>> {
    use std::io::Write;
    let path = dir.join(format!(".sluice-fsync-probe-{}", std::process::id()));
    let mut f =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let block = vec![7u8; 4096];
    let mut lat = Vec::with_capacity(2_000);
    for _ in 0..2_000 {
        f.write_all(&block)?;
        let t = Instant::now();
        f.sync_data()?;
        lat.push(t.elapsed().as_micros() as u64);
    }
    drop(f);
    let _ = std::fs::remove_file(&path);
    lat.sort_unstable();
    Ok(lat)
}

/// Round trips of a 64-byte ping over loopback TCP to an echo task in this process, as
/// sorted µs.
async fn loopback_probe() -> anyhow::Result<Vec<u64>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let echo = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        s.set_nodelay(true)?;
        let mut buf = [0u8; 64];
        while s.read_exact(&mut buf).await.is_ok() {
            s.write_all(&buf).await?;
        }
        anyhow::Ok(())
    });
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let mut buf = [7u8; 64];
    let mut lat = Vec::with_capacity(20_000);
    for _ in 0..20_000 {
        let t = Instant::now();
        s.write_all(&buf).await?;
        s.read_exact(&mut buf).await?;
        lat.push(t.elapsed().as_micros() as u64);
    }
    drop(s);
    echo.await??;
    lat.sort_unstable();
    Ok(lat)
}

/// What a run measures: a Sluice server over HTTP, or NATS JetStream.
enum Target {
    Sluice(Arc<Http>),
    #[cfg(feature = "nats")]
    Nats(nats::Nats),
}

impl Target {
    /// The Sluice server, for the workloads only Sluice runs.
    #[cfg_attr(not(feature = "nats"), allow(unused_variables))]
    fn sluice(&self, workload: &str) -> anyhow::Result<&Arc<Http>> {
        match self {
            Target::Sluice(http) => Ok(http),
            #[cfg(feature = "nats")]
            Target::Nats(_) => bail!("{workload} measures Sluice only; NATS runs W1, W2 and W3"),
        }
    }

    async fn w1(&self, args: &BenchArgs, run: usize) -> anyhow::Result<W1> {
        match self {
            Target::Sluice(http) => w1(http, args, run).await,
            #[cfg(feature = "nats")]
            Target::Nats(n) => nats::w1(n, args, run).await,
        }
    }

    async fn w2(&self, args: &BenchArgs, run: usize) -> anyhow::Result<W2> {
        match self {
            Target::Sluice(http) => w2(http, args, run).await,
            #[cfg(feature = "nats")]
            Target::Nats(n) => nats::w2(n, args, run).await,
        }
    }

    async fn w3(&self, args: &BenchArgs, run: usize) -> anyhow::Result<W3> {
        match self {
            Target::Sluice(http) => w3(http, args, run).await,
            #[cfg(feature = "nats")]
            Target::Nats(n) => nats::w3(n, args, run).await,
        }
    }
}

/// Median, min and max of `v`.
fn summary(v: &[f64]) -> Value {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    json!({
        "median": s[s.len() / 2].round(),
        "min": s[0].round(),
        "max": s[s.len() - 1].round(),
        // In the order they ran: later runs on the same server can be slower.
        "runs": v.iter().map(|x| x.round()).collect::<Vec<_>>(),
    })
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.runs == 0
        || args.batch == 0
        || args.batch > 1_000
        || args.producers == 0
        || args.consumers == 0
    {
        bail!("--runs, --producers and --consumers must be at least 1, --batch 1..=1000");
    }
    let target = match args.broker {
        Broker::Sluice => None,
        #[cfg(feature = "nats")]
        Broker::Nats => Some(Target::Nats(nats::Nats::new(&args.nats_url))),
        #[cfg(not(feature = "nats"))]
        Broker::Nats => {
            bail!("this sluice was built without NATS support: build it with `--features nats`")
        }
    };
    let http = Arc::new(Http {
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(1_024)
            .build()
            .context("building the HTTP client")?,
        base: args.client.server.trim_end_matches('/').to_owned(),
        token: args.client.auth_token.clone(),
        lean: std::sync::Mutex::new(Vec::new()),
    });
    let target = target.unwrap_or_else(|| Target::Sluice(http.clone()));
    let human = args.client.output == Output::Human;
    let mut report = json!({
        "broker": match args.broker { Broker::Sluice => "sluice", Broker::Nats => "nats" },
        "size_bytes": args.size,
        "note": "client and server on the same machine; client work is included",
    });
    if matches!(args.workload, Workload::W1 | Workload::All) {
        let (mut p, mut c, mut b) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..args.runs {
            let r = target.w1(&args, run).await?;
            if human {
                eprintln!(
                    "W1 run {}: produce {:.0} msg/s, consume+ack {:.0} msg/s, concurrent end-to-end {:.0} msg/s",
                    run + 1,
                    r.produce,
                    r.consume,
                    r.concurrent
                );
            }
            p.push(r.produce);
            c.push(r.consume);
            b.push(r.concurrent);
        }
        report["w1"] = json!({
            "messages": args.messages,
            "batch": args.batch,
            "producers": args.producers,
            "consumers": args.consumers,
            "produce_msgs_per_s": summary(&p),
            "consume_msgs_per_s": summary(&c),
            "concurrent_msgs_per_s": summary(&b),
        });
    }
    if matches!(args.workload, Workload::W2 | Workload::All) {
        let mut runs = Vec::new();
        for run in 0..args.runs {
            let r = target.w2(&args, run).await?;
            if human {
                eprintln!(
                    "W2 run {}: {} msgs at {}/s, send→deliver p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs; pacer lag p50 {} µs, p99 {} µs; send acked p50 {} µs, p99 {} µs",
                    run + 1,
                    r.sent,
                    args.rate,
                    r.p50_us,
                    r.p99_us,
                    r.p999_us,
                    r.max_us,
                    r.lag_p50_us,
                    r.lag_p99_us,
                    r.acked_p50_us,
                    r.acked_p99_us,
                );
            }
            runs.push(r);
        }
        let across =
            |f: fn(&W2) -> u64| summary(&runs.iter().map(|r| f(r) as f64).collect::<Vec<_>>());
        report["w2"] = json!({
            "rate_per_s": args.rate,
            "messages": runs.last().map_or(0, |r| r.sent),
            "consumers": args.consumers,
            "p50_us": across(|r| r.p50_us),
            "p99_us": across(|r| r.p99_us),
            "p999_us": across(|r| r.p999_us),
            "max_us": across(|r| r.max_us),
            "pacer_lag_p50_us": across(|r| r.lag_p50_us),
            "pacer_lag_p99_us": across(|r| r.lag_p99_us),
            "send_acked_p50_us": across(|r| r.acked_p50_us),
            "send_acked_p99_us": across(|r| r.acked_p99_us),
        });
    }
    if matches!(args.workload, Workload::W3 | Workload::All) {
        let (mut p, mut d, mut c, mut q) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for run in 0..args.runs {
            let r = target.w3(&args, run).await?;
            if human {
                eprintln!(
                    "W3 run {}: publish {:.0} events/s, 4 subscriptions deliver+ack {:.0}/s, concurrent {:.0}/s, 25% filters {:.0}/s",
                    run + 1,
                    r.publish,
                    r.deliveries,
                    r.concurrent,
                    r.quarter
                );
            }
            p.push(r.publish);
            d.push(r.deliveries);
            c.push(r.concurrent);
            q.push(r.quarter);
        }
        report["w3"] = json!({
            "events": args.events,
            "subscriptions": W3_SUBSCRIPTIONS,
            "batch": args.batch,
            "producers": args.producers,
            "publish_events_per_s": summary(&p),
            "deliveries_per_s": summary(&d),
            "concurrent_deliveries_per_s": summary(&c),
            "quarter_filter_deliveries_per_s": summary(&q),
        });
    }
    if matches!(args.workload, Workload::Backlog) {
        let http = target.sluice("BACKLOG")?;
        let pid = args.server_pid.context("BACKLOG needs --server-pid")?;
        let rss = || -> anyhow::Result<u64> {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .with_context(|| format!("reading the RSS of process {pid}"))?;
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .context("no VmRSS in /proc/PID/status")
        };
        let queue = format!("bench-backlog-{}", std::process::id());
        http.put(&format!("/v1/queues/{queue}"), json!({})).await?;
        let step = args.messages.div_ceil(10).max(1);
        let mut samples = vec![json!({"sent": 0, "rss_kib": rss()?})];
        let mut sent = 0;
        let t = Instant::now();
        while sent < args.messages {
            let n = step.min(args.messages - sent);
            produce(http, &queue, n, args.batch, args.producers, args.size).await?;
            sent += n;
            let q: Value =
                serde_json::from_slice(&http.get(&format!("/v1/queues/{queue}")).await?)?;
            let sample = json!({
                "sent": sent,
                "rss_kib": rss()?,
                "visible": q["stats"]["visible"],
                "seconds": t.elapsed().as_secs_f64().round(),
            });
            if human {
                eprintln!("backlog {sample}");
            }
            samples.push(sample);
        }
        report["backlog"] = json!({
            "messages": args.messages,
            "send_msgs_per_s": rate(args.messages, t.elapsed()).round(),
            "samples": samples,
        });
    }
    if matches!(args.workload, Workload::W4) {
        let path = args.guest.as_ref().context("W4 needs --guest FILE.wasm")?;
        let wasm = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let mut out = json!({
            "guest": path.display().to_string(),
            "concurrency": args.pipeline_concurrency,
        });
        for (batch, n) in [
            (1u32, args.pipeline_messages / 10),
            (100, args.pipeline_messages),
        ] {
            let mut rates = Vec::new();
            for run in 0..args.runs {
                let r = w4(target.sluice("W4")?, &args, &wasm, batch, n, run).await?;
                if human {
                    eprintln!(
                        "W4 run {}: batch {batch}, {n} messages, {r:.0} events/s",
                        run + 1
                    );
                }
                rates.push(r);
            }
            out[format!("batch_{batch}")] = json!({"messages": n, "events_per_s": summary(&rates)});
        }
        report["w4"] = out;
    }
    if matches!(args.workload, Workload::Sagas) {
        let path = args
            .guest
            .as_ref()
            .context("SAGAS needs --guest FILE.wasm")?;
        let wasm = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let (mut r, mut p50, mut p99) = (Vec::new(), Vec::new(), Vec::new());
        let (mut a50, mut a99) = (Vec::new(), Vec::new());
        for run in 0..args.runs {
            let s = sagas(target.sluice("SAGAS")?, &args, &wasm, run).await?;
            if human {
                eprintln!(
                    "SAGAS run {}: {} three-step sagas, {:.0} sagas/s, per step under load p50 {:.2} ms, p99 {:.2} ms; one saga at a time p50 {} µs, p99 {} µs",
                    run + 1,
                    args.sagas,
                    s.rate,
                    s.per_step_p50_ms,
                    s.per_step_p99_ms,
                    s.alone_p50_us,
                    s.alone_p99_us
                );
            }
            r.push(s.rate);
            p50.push(s.per_step_p50_ms);
            p99.push(s.per_step_p99_ms);
            a50.push(s.alone_p50_us as f64);
            a99.push(s.alone_p99_us as f64);
        }
        report["sagas"] = json!({
            "sagas": args.sagas,
            "clients": args.saga_clients,
            "sagas_per_s": summary(&r),
            // Millisecond resolution: the server stamps saga events in milliseconds.
            "per_step_p50_ms": p50,
            "per_step_p99_ms": p99,
            "alone_per_step_p50_us": summary(&a50),
            "alone_per_step_p99_us": summary(&a99),
        });
    }
    if matches!(args.workload, Workload::Limits) {
        let http = target.sluice("LIMITS")?;
        let fsync = fsync_probe(&args.fsync_probe_dir)?;
        let loopback = loopback_probe().await?;
        let mut conn = Conn::open(http).await?;
        let mut requests = Vec::with_capacity(5_000);
        for _ in 0..5_000 {
            let t = Instant::now();
            conn.get("/healthz").await?;
            requests.push(t.elapsed().as_micros() as u64);
        }
        requests.sort_unstable();
        if human {
            eprintln!(
                "fdatasync p50 {} µs, p99 {} µs; loopback round trip p50 {} µs, p99 {} µs; HTTP /healthz p50 {} µs, p99 {} µs",
                quantile(&fsync, 0.5),
                quantile(&fsync, 0.99),
                quantile(&loopback, 0.5),
                quantile(&loopback, 0.99),
                quantile(&requests, 0.5),
                quantile(&requests, 0.99)
            );
        }
        report["limits"] = json!({
            "disk_fdatasync_p50_us": quantile(&fsync, 0.50),
            "disk_fdatasync_p99_us": quantile(&fsync, 0.99),
            "loopback_round_trip_p50_us": quantile(&loopback, 0.50),
            "loopback_round_trip_p99_us": quantile(&loopback, 0.99),
            "http_healthz_p50_us": quantile(&requests, 0.50),
            "http_healthz_p99_us": quantile(&requests, 0.99),
        });
    }
    if matches!(args.workload, Workload::Es) {
        let fsync = fsync_probe(&args.fsync_probe_dir)?;
        let mut m: [Vec<f64>; 7] = Default::default();
        for run in 0..args.runs {
            let r = es(target.sluice("ES")?, &args, run).await?;
            if human {
                eprintln!(
                    "ES run {}: single appends {:.0} events/s (p50 {} µs, p99 {} µs), batched {:.0} events/s, read stream {:.0}/s, read $all {:.0}/s, catch-up {:.0}/s",
                    run + 1,
                    r.single_rate,
                    r.single_p50_us,
                    r.single_p99_us,
                    r.batched_rate,
                    r.read_stream_rate,
                    r.read_all_rate,
                    r.catch_up_rate
                );
            }
            for (v, x) in m.iter_mut().zip([
                r.single_rate,
                r.single_p50_us as f64,
                r.single_p99_us as f64,
                r.batched_rate,
                r.read_stream_rate,
                r.read_all_rate,
                r.catch_up_rate,
            ]) {
                v.push(x);
            }
        }
        report["es"] = json!({
            "single_clients": args.es_clients,
            "single_events": args.es_single,
            "batched_events": args.es_batched,
            "batched_clients": args.es_batch_clients,
            "single_events_per_s": summary(&m[0]),
            "single_p50_us": summary(&m[1]),
            "single_p99_us": summary(&m[2]),
            "batched_events_per_s": summary(&m[3]),
            "read_stream_events_per_s": summary(&m[4]),
            "read_all_events_per_s": summary(&m[5]),
            "catch_up_events_per_s": summary(&m[6]),
            "disk_fdatasync_p50_us": quantile(&fsync, 0.50),
            "disk_fdatasync_p99_us": quantile(&fsync, 0.99),
        });
    }
    println!(
        "{}",
        if human {
            serde_json::to_string_pretty(&report)?
        } else {
            report.to_string()
        }
    );
    Ok(())
}
