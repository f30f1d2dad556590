//! The W1–W3 workloads against NATS JetStream (`sluice bench --broker nats`), with
//! `async-nats` doing what a user of it would: pipelined publishes awaited per batch,
//! durable pull consumers with explicit acks, subject filters for W3's quarters.
//!
//! Sizes, batching and concurrency are the Sluice run's: the same `BenchArgs`. Each
//! producer and consumer has its own connection, as each Sluice client task has its own
//! HTTP connection. Acks are NATS's own: sent without waiting, except the last of each
//! consumer, which waits for the server's confirmation (`double_ack`), so the clock stops
//! only when the server has taken every ack.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures_util::StreamExt;

use super::{
    BenchArgs, Tally, W1, W2, W3, W3_SUBSCRIPTIONS, padding, rate, send_paced, w2_schedule,
    w3_event,
};

/// A NATS server to measure.
pub struct Nats {
    url: String,
}

impl Nats {
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
        }
    }

    async fn context(&self) -> anyhow::Result<jetstream::Context> {
        let client = async_nats::connect(&self.url)
            .await
            .with_context(|| format!("connecting to NATS at {}", self.url))?;
        let mut js = jetstream::new(client);
        // With `sync_interval: always` a confirmed ack waits behind every earlier ack's
        // fsync; the default 5 s would fail a run instead of measuring it.
        js.set_timeout(Duration::from_secs(300));
        Ok(js)
    }

    /// A file-backed stream: a work queue (a message goes when acked) or a log (kept).
    async fn stream(
        &self,
        name: &str,
        subjects: Vec<String>,
        work_queue: bool,
    ) -> anyhow::Result<stream::Stream> {
        let js = self.context().await?;
        let _ = js.delete_stream(name).await;
        js.create_stream(stream::Config {
            name: name.to_owned(),
            subjects,
            storage: stream::StorageType::File,
            retention: if work_queue {
                stream::RetentionPolicy::WorkQueue
            } else {
                stream::RetentionPolicy::Limits
            },
            ..Default::default()
        })
        .await
        .with_context(|| format!("creating stream {name}"))
    }

    async fn consumer(
        &self,
        stream: &str,
        name: &str,
        filter: Option<String>,
    ) -> anyhow::Result<()> {
        let js = self.context().await?;
        js.get_stream(stream)
            .await?
            .create_consumer(consumer::pull::Config {
                durable_name: Some(name.to_owned()),
                ack_policy: consumer::AckPolicy::Explicit,
                filter_subject: filter.unwrap_or_default(),
                max_ack_pending: 100_000,
                ..Default::default()
            })
            .await
            .with_context(|| format!("creating consumer {name} on {stream}"))?;
        Ok(())
    }

    async fn delete(&self, stream: &str) {
        if let Ok(js) = self.context().await {
            let _ = js.delete_stream(stream).await;
        }
    }

    /// Publishes messages `[0, total)` from `producers` connections, each sending `batch`
    /// publishes at once and awaiting their acknowledgements before the next batch.
    async fn produce(
        &self,
        total: usize,
        args: &BenchArgs,
        message: impl Fn(usize) -> (String, Bytes) + Send + Sync + 'static,
    ) -> anyhow::Result<()> {
        let next = Arc::new(AtomicUsize::new(0));
        let message = Arc::new(message);
        let mut tasks = Vec::new();
        for _ in 0..args.producers {
            let js = self.context().await?;
            let (next, message, batch) = (next.clone(), message.clone(), args.batch);
            tasks.push(tokio::spawn(async move {
                let mut acks = Vec::with_capacity(batch);
                loop {
                    let start = next.fetch_add(batch, Ordering::AcqRel);
                    if start >= total {
                        return anyhow::Ok(());
                    }
                    for i in start..(start + batch).min(total) {
                        let (subject, payload) = message(i);
                        acks.push(js.publish(subject, payload).await.context("publishing")?);
                    }
                    for ack in acks.drain(..) {
                        ack.await.context("publish acknowledgement")?;
                    }
                }
            }));
        }
        for t in tasks {
            t.await??;
        }
        Ok(())
    }

    /// `consumers` connections pull from the durable consumer `name` until `target`
    /// messages are acked between them; `on_message` sees each payload.
    async fn consume(
        &self,
        stream: &str,
        name: &str,
        consumers: usize,
        target: usize,
        batch: usize,
        on_message: impl Fn(&[u8]) + Send + Sync + 'static,
    ) -> anyhow::Result<()> {
        let tally = Tally::new(target);
        let on_message = Arc::new(on_message);
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut tasks = Vec::new();
        for _ in 0..consumers {
            let js = self.context().await?;
            let consumer: consumer::PullConsumer = js
                .get_stream(stream)
                .await?
                .get_consumer(name)
                .await
                .map_err(|e| anyhow::anyhow!("consumer {name}: {e}"))?;
            let (tally, on_message) = (tally.clone(), on_message.clone());
            tasks.push(tokio::spawn(async move {
                let mut messages = consumer
                    .stream()
                    .max_messages_per_batch(batch)
                    .messages()
                    .await
                    .context("pulling")?;
                let mut last = None;
                // Ends as soon as the consumers have the target between them.
                let mut done = tally.done.subscribe();
                while !*done.borrow() {
                    if Instant::now() > deadline {
                        bail!(
                            "consumer gave up: {} of {target} acked",
                            tally.acked.load(Ordering::Acquire)
                        );
                    }
                    let next = tokio::select! {
                        next = messages.next() => next,
                        _ = done.wait_for(|d| *d) => break,
                    };
                    let m = next
                        .context("the pull stream ended")?
                        .map_err(|e| anyhow::anyhow!("pulling: {e}"))?;
                    on_message(&m.payload);
                    if let Some(previous) = last.replace(m) {
                        ack(&previous).await?;
                    }
                    tally.add(1);
                }
                if let Some(m) = last {
                    m.double_ack()
                        .await
                        .map_err(|e| anyhow::anyhow!("acking: {e}"))?;
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        Ok(())
    }
}

impl Nats {
    /// One connection per W3 subscription (consumer `s0`..`s3`), each until it acked
    /// `per_sub`.
    async fn consume_subscriptions(
        &self,
        stream: &str,
        per_sub: usize,
        batch: usize,
    ) -> anyhow::Result<()> {
        let mut tasks = Vec::new();
        for s in 0..W3_SUBSCRIPTIONS {
            let (nats, stream) = (Nats::new(&self.url), stream.to_owned());
            tasks.push(tokio::spawn(async move {
                nats.consume(&stream, &format!("s{s}"), 1, per_sub, batch, |_| {})
                    .await
            }));
        }
        for t in tasks {
            t.await??;
        }
        Ok(())
    }
}

async fn ack(m: &jetstream::Message) -> anyhow::Result<()> {
    m.ack().await.map_err(|e| anyhow::anyhow!("acking: {e}"))
}

pub async fn w1(nats: &Nats, args: &BenchArgs, run: usize) -> anyhow::Result<W1> {
    let n = args.messages;
    let name = format!("W1_{}_{run}", std::process::id());
    let subject = format!("w1.{}.{run}", std::process::id());
    nats.stream(&name, vec![subject.clone()], true).await?;
    nats.consumer(&name, "c", None).await?;
    let payload = Bytes::from(padding(args.size + 2));
    let message = move |_| (subject.clone(), payload.clone());
    let t = Instant::now();
    nats.produce(n, args, message.clone()).await?;
    let produce = rate(n, t.elapsed());
    let t = Instant::now();
    nats.consume(&name, "c", args.consumers, n, args.batch, |_| {})
        .await?;
    let consume = rate(n, t.elapsed());
    let t = Instant::now();
    let (p, c) = tokio::join!(
        nats.produce(n, args, message),
        nats.consume(&name, "c", args.consumers, n, args.batch, |_| {})
    );
    p?;
    c?;
    let concurrent = rate(n, t.elapsed());
    nats.delete(&name).await;
    Ok(W1 {
        produce,
        consume,
        concurrent,
    })
}

pub async fn w2(nats: &Nats, args: &BenchArgs, run: usize) -> anyhow::Result<W2> {
    let name = format!("W2_{}_{run}", std::process::id());
    let subject = format!("w2.{}.{run}", std::process::id());
    nats.stream(&name, vec![subject.clone()], true).await?;
    nats.consumer(&name, "c", None).await?;
    let (total, pad, latencies) = w2_schedule(args)?;
    let consumers = {
        let (nats, name, consumers) = (Nats::new(&nats.url), name.clone(), args.consumers);
        let latencies = latencies.clone();
        tokio::spawn(async move {
            nats.consume(&name, "c", consumers, total, 100, move |payload| {
                latencies.record(payload)
            })
            .await
        })
    };
    // As for Sluice: each send waits for its acknowledgement.
    let js = nats.context().await?;
    send_paced(args.rate, total, &latencies, move |t| {
        let body = Bytes::from(format!("{{\"t\":{t},\"p\":\"{pad}\"}}"));
        let (js, subject) = (js.clone(), subject.clone());
        async move {
            let ack = js.publish(subject, body).await.context("publishing")?;
            ack.await.context("publish acknowledgement")?;
            anyhow::Ok(())
        }
    })
    .await?;
    consumers.await??;
    nats.delete(&name).await;
    latencies.summary(total)
}

pub async fn w3(nats: &Nats, args: &BenchArgs, run: usize) -> anyhow::Result<W3> {
    let n = args.events - args.events % W3_SUBSCRIPTIONS;
    let pid = std::process::id();
    let size = args.size;
    // W3's quarter filter is on the event's `k`; NATS filters by subject, so `k` is
    // also the last token of the subject.
    let publish = |prefix: String, from: usize| {
        move |i: usize| {
            let n = from + i;
            (
                format!("{prefix}.k{}", n % W3_SUBSCRIPTIONS),
                Bytes::from(w3_event(n, size)),
            )
        }
    };
    let name = format!("W3_{pid}_{run}");
    let prefix = format!("w3.{pid}.{run}");
    nats.stream(&name, vec![format!("{prefix}.>")], false)
        .await?;
    for s in 0..W3_SUBSCRIPTIONS {
        nats.consumer(&name, &format!("s{s}"), None).await?;
    }
    let t = Instant::now();
    nats.produce(n, args, publish(prefix.clone(), 0)).await?;
    let publish_rate = rate(n, t.elapsed());
    let t = Instant::now();
    nats.consume_subscriptions(&name, n, args.batch).await?;
    let deliveries = rate(n * W3_SUBSCRIPTIONS, t.elapsed());
    let t = Instant::now();
    let (p, c) = tokio::join!(
        nats.produce(n, args, publish(prefix, n)),
        nats.consume_subscriptions(&name, n, args.batch)
    );
    p?;
    c?;
    let concurrent = rate(n * W3_SUBSCRIPTIONS, t.elapsed());
    nats.delete(&name).await;

    let name = format!("W3Q_{pid}_{run}");
    let prefix = format!("w3q.{pid}.{run}");
    nats.stream(&name, vec![format!("{prefix}.>")], false)
        .await?;
    for s in 0..W3_SUBSCRIPTIONS {
        nats.consumer(&name, &format!("s{s}"), Some(format!("{prefix}.k{s}")))
            .await?;
    }
    nats.produce(n, args, publish(prefix, 0)).await?;
    let t = Instant::now();
    nats.consume_subscriptions(&name, n / W3_SUBSCRIPTIONS, args.batch)
        .await?;
    let quarter = rate(n, t.elapsed());
    nats.delete(&name).await;
    Ok(W3 {
        publish: publish_rate,
        deliveries,
        concurrent,
        quarter,
    })
}
