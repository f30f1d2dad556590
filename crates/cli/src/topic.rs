//! `sluice topic …` and `sluice sub …`: topics, publishing, reading, tailing and tables;
//! subscriptions with their filters, seek and delivery, from the command line.

use std::io::BufRead;

use anyhow::{Context, bail};
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::client::{Client, ClientArgs, Output};
use crate::queue::{print_or, print_receipts};

#[derive(clap::Args)]
pub struct TopicArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: TopicCommand,
}

#[derive(clap::Subcommand)]
enum TopicCommand {
    /// Create a topic, or update its configuration.
    Create {
        name: String,
        /// How long events are kept, e.g. 7d.
        #[arg(long)]
        retention: Option<String>,
        /// Upper bound on the log's size, e.g. 10GiB.
        #[arg(long)]
        max_bytes: Option<String>,
        /// Largest event, e.g. 256KiB.
        #[arg(long)]
        max_event_size: Option<String>,
        /// How long (source, id) pairs are remembered for dedup.
        #[arg(long)]
        dedup_window: Option<String>,
        /// Keep only the latest event per key (only at creation).
        #[arg(long)]
        compact: bool,
        /// Compaction key attribute (default subject).
        #[arg(long)]
        compaction_key: Option<String>,
        /// An event of this type deletes its key.
        #[arg(long)]
        tombstone_type: Option<String>,
    },
    /// List topics with their counts.
    List,
    /// Show a topic's configuration and counts.
    Get { name: String },
    /// Delete a topic, its events and its subscriptions.
    Delete { name: String },
    /// Publish one event built from flags, or structured CloudEvents, one JSON object per
    /// line, from --file (- for stdin).
    Publish {
        name: String,
        #[command(flatten)]
        events: EventArgs,
    },
    /// Print a page of events from an offset (or latest, earliest, time:RFC3339).
    Read {
        name: String,
        #[arg(long, default_value = "earliest")]
        from: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Follow the topic's events live (Server-Sent Events), reconnecting where it left off.
    Tail {
        name: String,
        #[arg(long, default_value = "latest")]
        from: String,
        /// An event pattern (JSON) selecting what to show.
        #[arg(long)]
        filter: Option<String>,
    },
    /// A compacted topic's current table, or one key's latest event.
    Table {
        name: String,
        key: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// List keys after this one.
        #[arg(long)]
        after: Option<String>,
    },
}

#[derive(clap::Args)]
pub struct SubArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: SubCommand,
}

#[derive(clap::Subcommand)]
enum SubCommand {
    /// Create a subscription on a topic, or update it.
    Create {
        topic: String,
        name: String,
        /// An EventBridge-style event pattern, as JSON.
        #[arg(long)]
        filter: Option<String>,
        /// latest, earliest, offset:N or time:RFC3339.
        #[arg(long)]
        start: Option<String>,
        /// Forward matching events into this queue instead of pull delivery.
        #[arg(long)]
        to_queue: Option<String>,
        /// FIFO per group (only at creation).
        #[arg(long)]
        fifo: bool,
        /// The attribute whose value is the FIFO group (default subject).
        #[arg(long)]
        group_attribute: Option<String>,
        #[arg(long)]
        lease_timeout: Option<String>,
        #[arg(long)]
        max_attempts: Option<u32>,
        #[arg(long)]
        dead_letter_queue: Option<String>,
    },
    /// List a topic's subscriptions.
    List { topic: String },
    /// Show a subscription's configuration, position and counts.
    Get { topic: String, name: String },
    /// Delete a subscription.
    Delete { topic: String, name: String },
    /// Move a subscription to an offset, a time, earliest or latest.
    Seek {
        topic: String,
        name: String,
        /// offset:N, time:RFC3339, earliest or latest.
        to: String,
    },
    /// Lease events.
    Receive {
        topic: String,
        name: String,
        #[arg(long, default_value_t = 10)]
        max: usize,
        #[arg(long, default_value = "0s")]
        wait: String,
        /// Ack what was received right away.
        #[arg(long)]
        ack: bool,
    },
    /// Ack leased events.
    Ack {
        topic: String,
        name: String,
        receipts: Vec<String>,
    },
    /// Release leased events for another attempt (or the dead-letter queue).
    Nack {
        topic: String,
        name: String,
        receipts: Vec<String>,
        #[arg(long)]
        delay: Option<String>,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Move the subscription's dead-lettered events back.
    Redrive {
        topic: String,
        name: String,
        #[arg(long)]
        max: Option<u64>,
    },
}

/// CloudEvents given on the command line: one built from flags, and any number read from a
/// file of one JSON object per line.
#[derive(clap::Args)]
pub struct EventArgs {
    /// Event type.
    #[arg(long = "type")]
    pub ty: Option<String>,
    /// Event source.
    #[arg(long, default_value = "/sluice/cli")]
    pub source: String,
    #[arg(long)]
    pub subject: Option<String>,
    /// Event id (default: generated by the server; give one so that a retry is
    /// recognised).
    #[arg(long)]
    pub id: Option<String>,
    /// Data: JSON (text that is not JSON is sent as a string).
    #[arg(long)]
    pub data: Option<String>,
    /// CloudEvents, one JSON object per line (- for stdin).
    #[arg(long)]
    pub file: Option<String>,
}

impl EventArgs {
    /// The events, the file's first.
    pub fn collect(self) -> anyhow::Result<Vec<Value>> {
        let mut events = Vec::new();
        if let Some(f) = self.file {
            let reader: Box<dyn BufRead> = if f == "-" {
                Box::new(std::io::stdin().lock())
            } else {
                Box::new(std::io::BufReader::new(
                    std::fs::File::open(&f).with_context(|| format!("opening {f}"))?,
                ))
            };
            for (i, line) in reader.lines().enumerate() {
                let line = line?;
                if line.trim().is_empty() {
                    continue;
                }
                let v: Value = serde_json::from_str(&line)
                    .with_context(|| format!("line {}: not a JSON CloudEvent", i + 1))?;
                events.push(v);
            }
        }
        if let Some(ty) = self.ty {
            let mut e = Map::new();
            e.insert("specversion".into(), "1.0".into());
            e.insert("type".into(), ty.into());
            e.insert("source".into(), self.source.into());
            set(&mut e, "subject", self.subject.map(Value::from));
            set(&mut e, "id", self.id.map(Value::from));
            if let Some(d) = self.data {
                e.insert(
                    "data".into(),
                    serde_json::from_str(&d).unwrap_or(Value::String(d)),
                );
            }
            events.push(Value::Object(e));
        }
        Ok(events)
    }
}

fn set(m: &mut Map<String, Value>, k: &str, v: Option<Value>) {
    if let Some(v) = v {
        m.insert(k.to_owned(), v);
    }
}

fn show(v: &Value, json_out: bool, kind: &str) {
    if json_out {
        println!("{v}");
        return;
    }
    println!("{kind} {}", v["name"].as_str().unwrap_or(""));
    if let Some(m) = v.as_object() {
        for (k, val) in m {
            if k != "name" {
                println!("  {k}: {val}");
            }
        }
    }
}

fn print_event(e: &Value) {
    println!("{}  {}", e["offset"], e["event"]);
}

pub async fn run_topic(args: TopicArgs) -> anyhow::Result<()> {
    let c = Client::new(&args.client)?;
    let json_out = c.output == Output::Json;
    match args.command {
        TopicCommand::Create {
            name,
            retention,
            max_bytes,
            max_event_size,
            dedup_window,
            compact,
            compaction_key,
            tombstone_type,
        } => {
            let mut m = Map::new();
            set(&mut m, "retention", retention.map(Value::from));
            set(&mut m, "max_bytes", max_bytes.map(Value::from));
            set(&mut m, "max_event_size", max_event_size.map(Value::from));
            set(&mut m, "dedup_window", dedup_window.map(Value::from));
            if compact || compaction_key.is_some() || tombstone_type.is_some() {
                let mut cm = Map::new();
                set(&mut cm, "key", compaction_key.map(Value::from));
                set(&mut cm, "tombstone_type", tombstone_type.map(Value::from));
                m.insert("compaction".into(), Value::Object(cm));
            }
            let v = c
                .call(
                    Method::PUT,
                    &format!("/v1/topics/{name}"),
                    Some(Value::Object(m)),
                )
                .await?;
            show(&v, json_out, "topic");
        }
        TopicCommand::List => {
            let v = c.call(Method::GET, "/v1/topics", None).await?;
            if json_out {
                println!("{v}");
            } else {
                println!(
                    "{:<32} {:>12} {:>12} {:>14}  SUBSCRIPTIONS",
                    "NAME", "EVENTS", "NEXT", "BYTES"
                );
                for t in v["topics"].as_array().into_iter().flatten() {
                    let s = &t["stats"];
                    println!(
                        "{:<32} {:>12} {:>12} {:>14}  {}",
                        t["name"].as_str().unwrap_or(""),
                        s["events"].as_u64().unwrap_or(0),
                        s["next_offset"].as_u64().unwrap_or(0),
                        s["bytes"].as_u64().unwrap_or(0),
                        t["subscriptions"]
                    );
                }
            }
        }
        TopicCommand::Get { name } => {
            let v = c
                .call(Method::GET, &format!("/v1/topics/{name}"), None)
                .await?;
            show(&v, json_out, "topic");
        }
        TopicCommand::Delete { name } => {
            let v = c
                .call(Method::DELETE, &format!("/v1/topics/{name}"), None)
                .await?;
            print_or(json_out, &v, &format!("deleted topic {name}"));
        }
        TopicCommand::Publish { name, events } => {
            let events = events.collect()?;
            if events.is_empty() {
                bail!("nothing to publish: give --type (and --data) or --file");
            }
            for chunk in events.chunks(1_000) {
                let v = c
                    .post_bytes(
                        &format!("/v1/topics/{name}/events"),
                        "application/cloudevents-batch+json",
                        serde_json::to_vec(chunk)?,
                    )
                    .await?;
                if json_out {
                    println!("{v}");
                    continue;
                }
                for e in v["events"].as_array().into_iter().flatten() {
                    if !e.is_null() {
                        let dup = if e["duplicate"] == true {
                            "  (duplicate)"
                        } else {
                            ""
                        };
                        println!("{}  {}{dup}", e["offset"], e["id"].as_str().unwrap_or(""));
                    }
                }
                for f in v["failed"].as_array().into_iter().flatten() {
                    eprintln!(
                        "event {}: {}: {}",
                        f["index"],
                        f["code"].as_str().unwrap_or(""),
                        f["detail"].as_str().unwrap_or("")
                    );
                }
            }
        }
        TopicCommand::Read { name, from, limit } => {
            let v = c
                .call(
                    Method::GET,
                    &format!("/v1/topics/{name}/events?from={from}&limit={limit}"),
                    None,
                )
                .await?;
            if json_out {
                println!("{v}");
            } else {
                for e in v["events"].as_array().into_iter().flatten() {
                    print_event(e);
                }
                eprintln!("next offset {}", v["next"]);
            }
        }
        TopicCommand::Tail { name, from, filter } => tail(&c, &name, &from, filter).await?,
        TopicCommand::Table {
            name,
            key,
            limit,
            after,
        } => {
            let path = match (&key, &after) {
                (Some(k), _) => format!("/v1/topics/{name}/table/{k}"),
                (None, Some(a)) => format!("/v1/topics/{name}/table?limit={limit}&after={a}"),
                (None, None) => format!("/v1/topics/{name}/table?limit={limit}"),
            };
            let v = c.call(Method::GET, &path, None).await?;
            if json_out {
                println!("{v}");
            } else if key.is_some() {
                println!("{}", v["entry"]["event"]);
            } else {
                for e in v["entries"].as_array().into_iter().flatten() {
                    println!(
                        "{}  {}",
                        e["key"].as_str().unwrap_or(""),
                        e["entry"]["event"]
                    );
                }
                if !v["next_after"].is_null() {
                    eprintln!("more after {}", v["next_after"]);
                }
            }
        }
    }
    Ok(())
}

/// Prints SSE events as they come; on a dropped connection, reconnects after the last id.
async fn tail(c: &Client, name: &str, from: &str, filter: Option<String>) -> anyhow::Result<()> {
    let mut query = format!("from={from}");
    if let Some(f) = &filter {
        let encoded: String = f
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        query.push_str(&format!("&filter={encoded}"));
    }
    let path = format!("/v1/topics/{name}/stream?{query}");
    let json_out = c.output == Output::Json;
    follow(c, &path, |id, data| {
        if json_out {
            println!("{{\"offset\":{id},\"event\":{data}}}");
        } else {
            println!("{id}  {data}");
        }
    })
    .await
}

/// Follows a Server-Sent Events stream, calling `on_event` with each event's id and data;
/// on a dropped connection, reconnects after the last id seen.
pub async fn follow(
    c: &Client,
    path: &str,
    mut on_event: impl FnMut(u64, &str),
) -> anyhow::Result<()> {
    let mut last: Option<u64> = None;
    loop {
        let mut resp = c.open_stream(path, last).await?;
        let mut buf = String::new();
        loop {
            let chunk = match resp.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) | Err(_) => break,
            };
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let frame: String = buf.drain(..end + 2).collect();
                let mut id = None;
                let mut data = String::new();
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse::<u64>().ok();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if let Some(id) = id {
                    last = Some(id);
                    on_event(id, &data);
                }
            }
        }
        eprintln!("stream closed; reconnecting");
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

pub async fn run_sub(args: SubArgs) -> anyhow::Result<()> {
    let c = Client::new(&args.client)?;
    let json_out = c.output == Output::Json;
    let base = |t: &str, s: &str| format!("/v1/topics/{t}/subscriptions/{s}");
    match args.command {
        SubCommand::Create {
            topic,
            name,
            filter,
            start,
            to_queue,
            fifo,
            group_attribute,
            lease_timeout,
            max_attempts,
            dead_letter_queue,
        } => {
            let mut m = Map::new();
            if let Some(f) = filter {
                let v: Value = serde_json::from_str(&f).context("--filter is not valid JSON")?;
                m.insert("filter".into(), v);
            }
            set(&mut m, "start", start.map(Value::from));
            set(
                &mut m,
                "target",
                to_queue.map(|q| json!({"type": "queue", "queue": q})),
            );
            set(&mut m, "fifo", fifo.then_some(Value::Bool(true)));
            set(&mut m, "group_attribute", group_attribute.map(Value::from));
            set(&mut m, "lease_timeout", lease_timeout.map(Value::from));
            set(&mut m, "max_attempts", max_attempts.map(Value::from));
            set(
                &mut m,
                "dead_letter_queue",
                dead_letter_queue.map(Value::from),
            );
            let v = c
                .call(Method::PUT, &base(&topic, &name), Some(Value::Object(m)))
                .await?;
            show(&v, json_out, "subscription");
        }
        SubCommand::List { topic } => {
            let v = c
                .call(
                    Method::GET,
                    &format!("/v1/topics/{topic}/subscriptions"),
                    None,
                )
                .await?;
            if json_out {
                println!("{v}");
            } else {
                println!(
                    "{:<32} {:>12} {:>12} {:>10} {:>10}  TARGET",
                    "NAME", "CURSOR", "BACKLOG", "LEASED", "DLQ"
                );
                for s in v["subscriptions"].as_array().into_iter().flatten() {
                    println!(
                        "{:<32} {:>12} {:>12} {:>10} {:>10}  {}",
                        s["name"].as_str().unwrap_or(""),
                        s["cursor"].as_u64().unwrap_or(0),
                        s["backlog"].as_u64().unwrap_or(0),
                        s["stats"]["leased"].as_u64().unwrap_or(0),
                        s["stats"]["dead_lettered"].as_u64().unwrap_or(0),
                        s["target"]
                    );
                }
            }
        }
        SubCommand::Get { topic, name } => {
            let v = c.call(Method::GET, &base(&topic, &name), None).await?;
            show(&v, json_out, "subscription");
        }
        SubCommand::Delete { topic, name } => {
            let v = c.call(Method::DELETE, &base(&topic, &name), None).await?;
            print_or(
                json_out,
                &v,
                &format!("deleted subscription {topic}/{name}"),
            );
        }
        SubCommand::Seek { topic, name, to } => {
            let v = c
                .call(
                    Method::POST,
                    &format!("{}/seek", base(&topic, &name)),
                    Some(json!({ "to": to })),
                )
                .await?;
            print_or(
                json_out,
                &v,
                &format!("{topic}/{name} now at offset {}", v["offset"]),
            );
        }
        SubCommand::Receive {
            topic,
            name,
            max,
            wait,
            ack,
        } => {
            let v = c
                .call(
                    Method::POST,
                    &format!("{}/receive", base(&topic, &name)),
                    Some(json!({ "max": max, "wait": wait })),
                )
                .await?;
            let msgs = v["messages"].as_array().cloned().unwrap_or_default();
            if json_out {
                println!("{v}");
            } else {
                for m in &msgs {
                    println!(
                        "{}  attempt {}  receipt {}\n  {}",
                        m["offset"],
                        m["receive_count"],
                        m["receipt"].as_str().unwrap_or(""),
                        m["event"]
                    );
                }
                if msgs.is_empty() {
                    eprintln!("no events");
                }
            }
            if ack && !msgs.is_empty() {
                let receipts: Vec<&Value> = msgs.iter().map(|m| &m["receipt"]).collect();
                c.call(
                    Method::POST,
                    &format!("{}/ack", base(&topic, &name)),
                    Some(json!({ "receipts": receipts })),
                )
                .await?;
            }
        }
        SubCommand::Ack {
            topic,
            name,
            receipts,
        } => {
            let v = c
                .call(
                    Method::POST,
                    &format!("{}/ack", base(&topic, &name)),
                    Some(json!({ "receipts": receipts })),
                )
                .await?;
            print_receipts(json_out, &v, "acked");
        }
        SubCommand::Nack {
            topic,
            name,
            receipts,
            delay,
            reason,
        } => {
            let mut req = json!({ "receipts": receipts });
            if let Some(d) = delay {
                req["delay"] = json!(d);
            }
            if let Some(r) = reason {
                req["reason"] = json!(r);
            }
            let v = c
                .call(
                    Method::POST,
                    &format!("{}/nack", base(&topic, &name)),
                    Some(req),
                )
                .await?;
            print_receipts(json_out, &v, "nacked");
        }
        SubCommand::Redrive { topic, name, max } => {
            let mut req = json!({});
            if let Some(m) = max {
                req["max"] = json!(m);
            }
            let v = c
                .call(
                    Method::POST,
                    &format!("{}/redrive", base(&topic, &name)),
                    Some(req),
                )
                .await?;
            print_or(
                json_out,
                &v,
                &format!(
                    "moved {}, {} still dead-lettered",
                    v["moved"], v["remaining"]
                ),
            );
        }
    }
    Ok(())
}
