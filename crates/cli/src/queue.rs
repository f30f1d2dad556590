//! `sluice queue …`: every queue operation of the API from the command line.

use std::io::BufRead;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::client::{Client, ClientArgs, Output};

#[derive(clap::Args)]
pub struct QueueArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: QueueCommand,
}

#[derive(clap::Args, Default)]
struct ConfigFlags {
    /// Lease (visibility) timeout, e.g. 30s.
    #[arg(long)]
    lease_timeout: Option<String>,
    /// Default delivery delay.
    #[arg(long)]
    delay: Option<String>,
    /// How long messages are kept.
    #[arg(long)]
    retention: Option<String>,
    /// Largest message, e.g. 256KiB.
    #[arg(long)]
    max_message_size: Option<String>,
    /// Deliveries before dead-lettering (needs --dead-letter-queue).
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Queue receiving exhausted messages.
    #[arg(long)]
    dead_letter_queue: Option<String>,
    /// FIFO delivery per group (only at creation).
    #[arg(long)]
    fifo: bool,
    /// FIFO: hold a group after one of its messages is dead-lettered.
    #[arg(long)]
    park_group_on_dead_letter: bool,
    /// How long dedup ids are remembered.
    #[arg(long)]
    dedup_window: Option<String>,
    /// Most leased messages at once.
    #[arg(long)]
    max_in_flight: Option<u32>,
    /// First retry delay.
    #[arg(long)]
    backoff_initial: Option<String>,
    /// Retry delay growth factor.
    #[arg(long)]
    backoff_multiplier: Option<f64>,
    /// Largest retry delay.
    #[arg(long)]
    backoff_max: Option<String>,
    /// Fraction of the retry delay randomized away (0..1).
    #[arg(long)]
    backoff_jitter: Option<f64>,
}

impl ConfigFlags {
    /// Applies the given flags onto `config`.
    fn apply(&self, config: &mut Map<String, Value>) {
        let mut set = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                config.insert(k.to_owned(), v);
            }
        };
        set("lease_timeout", self.lease_timeout.clone().map(Value::from));
        set("delay", self.delay.clone().map(Value::from));
        set("retention", self.retention.clone().map(Value::from));
        set(
            "max_message_size",
            self.max_message_size.clone().map(Value::from),
        );
        set("max_attempts", self.max_attempts.map(Value::from));
        set(
            "dead_letter_queue",
            self.dead_letter_queue.clone().map(Value::from),
        );
        set("fifo", self.fifo.then_some(Value::Bool(true)));
        set(
            "park_group_on_dead_letter",
            self.park_group_on_dead_letter.then_some(Value::Bool(true)),
        );
        set("dedup_window", self.dedup_window.clone().map(Value::from));
        set("max_in_flight", self.max_in_flight.map(Value::from));
        let mut backoff = match config.remove("backoff") {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        let mut bset = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                backoff.insert(k.to_owned(), v);
            }
        };
        bset("initial", self.backoff_initial.clone().map(Value::from));
        bset("multiplier", self.backoff_multiplier.map(Value::from));
        bset("max", self.backoff_max.clone().map(Value::from));
        bset("jitter", self.backoff_jitter.map(Value::from));
        if !backoff.is_empty() {
            config.insert("backoff".into(), Value::Object(backoff));
        }
    }
}

#[derive(clap::Subcommand)]
enum QueueCommand {
    /// Create a queue (or replace its whole configuration).
    Create {
        name: String,
        #[command(flatten)]
        config: ConfigFlags,
    },
    /// Change some options of an existing queue, keeping the others.
    Update {
        name: String,
        #[command(flatten)]
        config: ConfigFlags,
    },
    /// List queues with their counts.
    List,
    /// Show a queue's configuration and counts.
    Get { name: String },
    /// Delete a queue and its messages.
    Delete { name: String },
    /// Send messages: each BODY is JSON (text that is not JSON is sent as a string), or
    /// one JSON body per line from --file (- for stdin).
    Send {
        name: String,
        bodies: Vec<String>,
        #[arg(long)]
        file: Option<String>,
        /// FIFO group.
        #[arg(long)]
        group: Option<String>,
        /// Dedup id (only with a single message).
        #[arg(long)]
        dedup_id: Option<String>,
        /// Delivery delay, e.g. 10s.
        #[arg(long)]
        delay: Option<String>,
        /// Attribute key=value; repeatable.
        #[arg(long = "attr", value_name = "KEY=VALUE")]
        attributes: Vec<String>,
    },
    /// Lease messages.
    Receive {
        name: String,
        #[arg(long, default_value_t = 10)]
        max: usize,
        /// Long-poll wait, up to 20s.
        #[arg(long, default_value = "0s")]
        wait: String,
        #[arg(long)]
        lease_timeout: Option<String>,
        /// Ack what was received right away.
        #[arg(long)]
        ack: bool,
    },
    /// Ack leased messages.
    Ack { name: String, receipts: Vec<String> },
    /// Release leased messages for another attempt (or the dead-letter queue).
    Nack {
        name: String,
        receipts: Vec<String>,
        /// Deliver again after this delay (0s = now); default: the queue's backoff.
        #[arg(long)]
        delay: Option<String>,
        /// Error text, kept if the message is dead-lettered.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Extend leases.
    Extend {
        name: String,
        receipts: Vec<String>,
        #[arg(long)]
        lease_timeout: String,
    },
    /// Remove every message.
    Purge { name: String },
    /// Move this queue's dead-lettered messages back into it.
    Redrive {
        name: String,
        /// Move at most this many (default: all).
        #[arg(long)]
        max: Option<u64>,
        /// At most this many messages per second.
        #[arg(long)]
        rate: Option<u64>,
    },
}

fn path(name: &str, op: &str) -> String {
    if op.is_empty() {
        format!("/v1/queues/{name}")
    } else {
        format!("/v1/queues/{name}/{op}")
    }
}

pub async fn run(args: QueueArgs) -> anyhow::Result<()> {
    let c = Client::new(&args.client)?;
    let json_out = c.output == Output::Json;
    match args.command {
        QueueCommand::Create { name, config } => {
            let mut m = Map::new();
            config.apply(&mut m);
            let v = c
                .call(Method::PUT, &path(&name, ""), Some(Value::Object(m)))
                .await?;
            show_queue(&v, json_out);
        }
        QueueCommand::Update { name, config } => {
            let current = c.call(Method::GET, &path(&name, ""), None).await?;
            let mut m = current.as_object().cloned().unwrap_or_default();
            for k in ["name", "created_ms", "stats"] {
                m.remove(k);
            }
            config.apply(&mut m);
            let v = c
                .call(Method::PUT, &path(&name, ""), Some(Value::Object(m)))
                .await?;
            show_queue(&v, json_out);
        }
        QueueCommand::List => {
            let v = c.call(Method::GET, "/v1/queues", None).await?;
            if json_out {
                println!("{v}");
            } else {
                println!(
                    "{:<32} {:>10} {:>10} {:>10} {:>10}  fifo",
                    "NAME", "VISIBLE", "LEASED", "DELAYED", "DLQ"
                );
                for q in v["queues"].as_array().into_iter().flatten() {
                    let s = &q["stats"];
                    println!(
                        "{:<32} {:>10} {:>10} {:>10} {:>10}  {}",
                        q["name"].as_str().unwrap_or(""),
                        s["visible"].as_u64().unwrap_or(0),
                        s["leased"].as_u64().unwrap_or(0),
                        s["delayed"].as_u64().unwrap_or(0),
                        s["dead_lettered"].as_u64().unwrap_or(0),
                        q["fifo"]
                    );
                }
            }
        }
        QueueCommand::Get { name } => {
            let v = c.call(Method::GET, &path(&name, ""), None).await?;
            show_queue(&v, json_out);
        }
        QueueCommand::Delete { name } => {
            let v = c.call(Method::DELETE, &path(&name, ""), None).await?;
            print_or(json_out, &v, &format!("deleted queue {name}"));
        }
        QueueCommand::Send {
            name,
            bodies,
            file,
            group,
            dedup_id,
            delay,
            attributes,
        } => {
            let mut texts = bodies;
            if let Some(f) = file {
                let reader: Box<dyn BufRead> = if f == "-" {
                    Box::new(std::io::stdin().lock())
                } else {
                    Box::new(std::io::BufReader::new(
                        std::fs::File::open(&f).with_context(|| format!("opening {f}"))?,
                    ))
                };
                for line in reader.lines() {
                    let line = line?;
                    if !line.trim().is_empty() {
                        texts.push(line);
                    }
                }
            }
            if texts.is_empty() {
                bail!("nothing to send: give message bodies or --file");
            }
            if dedup_id.is_some() && texts.len() > 1 {
                bail!("--dedup-id applies to a single message");
            }
            let mut attrs = Map::new();
            for a in &attributes {
                let (k, v) = a
                    .split_once('=')
                    .with_context(|| format!("attribute {a:?} is not KEY=VALUE"))?;
                attrs.insert(k.to_owned(), Value::from(v));
            }
            let mut sent = 0usize;
            for chunk in texts.chunks(1_000) {
                let messages: Vec<Value> = chunk
                    .iter()
                    .map(|t| {
                        let body = serde_json::from_str::<Value>(t)
                            .unwrap_or_else(|_| Value::String(t.clone()));
                        let mut m = json!({ "body": body, "attributes": attrs });
                        if let Some(g) = &group {
                            m["group"] = json!(g);
                        }
                        if let Some(d) = &dedup_id {
                            m["dedup_id"] = json!(d);
                        }
                        if let Some(d) = &delay {
                            m["delay"] = json!(d);
                        }
                        m
                    })
                    .collect();
                let v = c
                    .call(
                        Method::POST,
                        &path(&name, "messages"),
                        Some(json!({ "messages": messages })),
                    )
                    .await?;
                if json_out {
                    println!("{v}");
                } else {
                    for id in v["ids"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                    {
                        println!("{id}");
                    }
                    for f in v["failed"].as_array().into_iter().flatten() {
                        eprintln!(
                            "message {}: {}: {}",
                            f["index"],
                            f["code"].as_str().unwrap_or(""),
                            f["detail"].as_str().unwrap_or("")
                        );
                    }
                }
                sent += v["ids"]
                    .as_array()
                    .map_or(0, |a| a.iter().filter(|i| i.is_string()).count());
            }
            if !json_out && texts.len() > 1 {
                eprintln!("sent {sent} of {}", texts.len());
            }
        }
        QueueCommand::Receive {
            name,
            max,
            wait,
            lease_timeout,
            ack,
        } => {
            let mut req = json!({ "max": max, "wait": wait });
            if let Some(l) = lease_timeout {
                req["lease_timeout"] = json!(l);
            }
            let v = c
                .call(Method::POST, &path(&name, "receive"), Some(req))
                .await?;
            let msgs = v["messages"].as_array().cloned().unwrap_or_default();
            if json_out {
                println!("{v}");
            } else {
                for m in &msgs {
                    println!(
                        "{}  attempt {}  receipt {}\n  {}",
                        m["id"].as_str().unwrap_or(""),
                        m["receive_count"],
                        m["receipt"].as_str().unwrap_or(""),
                        m["body"]
                    );
                    if let Some(d) = m.get("dead_letter") {
                        println!(
                            "  dead-lettered from {} ({}): {}",
                            d["source_queue"], d["reason"], d["error"]
                        );
                    }
                }
                if msgs.is_empty() {
                    eprintln!("no messages");
                }
            }
            if ack && !msgs.is_empty() {
                let receipts: Vec<&Value> = msgs.iter().map(|m| &m["receipt"]).collect();
                c.call(
                    Method::POST,
                    &path(&name, "ack"),
                    Some(json!({ "receipts": receipts })),
                )
                .await?;
            }
        }
        QueueCommand::Ack { name, receipts } => {
            let v = c
                .call(
                    Method::POST,
                    &path(&name, "ack"),
                    Some(json!({ "receipts": receipts })),
                )
                .await?;
            print_receipts(json_out, &v, "acked");
        }
        QueueCommand::Nack {
            name,
            receipts,
            delay,
            reason,
        } => {
            let v = c
                .call(
                    Method::POST,
                    &path(&name, "nack"),
                    Some(json!({ "receipts": receipts, "delay": delay, "reason": reason })),
                )
                .await?;
            print_receipts(json_out, &v, "nacked");
        }
        QueueCommand::Extend {
            name,
            receipts,
            lease_timeout,
        } => {
            let v = c
                .call(
                    Method::POST,
                    &path(&name, "extend"),
                    Some(json!({ "receipts": receipts, "lease_timeout": lease_timeout })),
                )
                .await?;
            print_receipts(json_out, &v, "extended");
        }
        QueueCommand::Purge { name } => {
            let v = c.call(Method::POST, &path(&name, "purge"), None).await?;
            print_or(json_out, &v, &format!("purged {} messages", v["purged"]));
        }
        QueueCommand::Redrive { name, max, rate } => redrive(&c, &name, max, rate).await?,
    }
    Ok(())
}

/// Redrives in steps, pacing to `rate` per second and showing progress.
async fn redrive(
    c: &Client,
    name: &str,
    max: Option<u64>,
    rate: Option<u64>,
) -> anyhow::Result<()> {
    let limit = max.unwrap_or(u64::MAX);
    let step = rate.map_or(10_000, |r| r.clamp(1, 10_000));
    let start = Instant::now();
    let mut moved = 0u64;
    loop {
        let want = step.min(limit - moved);
        if want == 0 {
            break;
        }
        let v = c
            .call(
                Method::POST,
                &path(name, "redrive"),
                Some(json!({ "max": want })),
            )
            .await?;
        let n = v["moved"].as_u64().unwrap_or(0);
        let remaining = v["remaining"].as_u64().unwrap_or(0);
        moved += n;
        if c.output == Output::Json {
            println!("{}", json!({ "moved": moved, "remaining": remaining }));
        } else {
            eprint!("\rredriven {moved}, {remaining} left in the dead-letter queue   ");
        }
        if n == 0 || remaining == 0 {
            break;
        }
        if let Some(r) = rate {
            let due = Duration::from_secs_f64(moved as f64 / r as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
    if c.output == Output::Human {
        eprintln!(
            "\rredriven {moved} messages in {:.1}s{:20}",
            start.elapsed().as_secs_f64(),
            ""
        );
    }
    Ok(())
}

pub(crate) fn print_or(json_out: bool, v: &Value, human: &str) {
    if json_out {
        println!("{v}");
    } else {
        println!("{human}");
    }
}

pub(crate) fn print_receipts(json_out: bool, v: &Value, verb: &str) {
    if json_out {
        println!("{v}");
        return;
    }
    println!("{verb} {}", v[verb]);
    for f in v["failed"].as_array().into_iter().flatten() {
        eprintln!(
            "{}: {}: {}",
            f["receipt"].as_str().unwrap_or(""),
            f["code"].as_str().unwrap_or(""),
            f["detail"].as_str().unwrap_or("")
        );
    }
}

fn show_queue(v: &Value, json_out: bool) {
    if json_out {
        println!("{v}");
        return;
    }
    println!("queue {}", v["name"].as_str().unwrap_or(""));
    let s = &v["stats"];
    println!(
        "  visible {}  leased {}  delayed {}  dead-lettered {}  oldest {} ms",
        s["visible"], s["leased"], s["delayed"], s["dead_lettered"], s["oldest_age_ms"]
    );
    if let Some(m) = v.as_object() {
        for (k, val) in m {
            if !matches!(k.as_str(), "name" | "stats") {
                println!("  {k}: {val}");
            }
        }
    }
}
