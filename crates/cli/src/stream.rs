//! `sluice stream …`: appending to event-store streams with an expected version, reading a
//! stream, `$all`, a category or an event type, following them live, metadata, deletion
//! and snapshots, from the command line.

use anyhow::bail;
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::client::{Client, ClientArgs, Output};
use crate::queue::print_or;
use crate::topic::{EventArgs, follow};

#[derive(clap::Args)]
pub struct StreamArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: StreamCommand,
}

#[derive(clap::Subcommand)]
enum StreamCommand {
    /// Append one event built from flags, or CloudEvents from --file (one JSON object per
    /// line), atomically.
    Append {
        stream: String,
        /// any, no_stream, exists, or the version the stream must be at.
        #[arg(long, default_value = "any")]
        expected_version: String,
        #[command(flatten)]
        events: EventArgs,
    },
    /// Print a page of a stream ('$all' for every stream in commit order), of a category,
    /// or of an event type.
    Read {
        /// The stream, or '$all'.
        stream: Option<String>,
        /// Read a category (the part of stream names before the first '-') instead.
        #[arg(long, conflicts_with_all = ["stream", "event_type"])]
        category: Option<String>,
        /// Read every event of this type instead.
        #[arg(long, conflicts_with = "stream")]
        event_type: Option<String>,
        /// Version (a stream) or position ($all, category, type) to start at.
        #[arg(long)]
        from: Option<u64>,
        /// Read a stream from the end backward.
        #[arg(long)]
        backward: bool,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Follow a stream ('$all') or a category live: everything from --from, then new events
    /// as they are appended, reconnecting where it left off.
    Tail {
        stream: Option<String>,
        #[arg(long, conflicts_with = "stream")]
        category: Option<String>,
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
    /// Show a stream's state, versions and metadata.
    Info { stream: String },
    /// Show a stream's metadata, or replace it when any flag is given.
    Meta {
        stream: String,
        /// Events older than this are no longer read, e.g. 30d.
        #[arg(long)]
        max_age: Option<String>,
        /// Only the latest this many events are read.
        #[arg(long)]
        max_count: Option<u64>,
        /// Versions below this are no longer read.
        #[arg(long)]
        truncate_before: Option<u64>,
        /// The application's own metadata, a JSON object.
        #[arg(long)]
        custom: Option<String>,
    },
    /// Delete a stream: soft (appends continue its versions) or --hard (for good).
    Delete {
        stream: String,
        #[arg(long)]
        hard: bool,
        #[arg(long)]
        expected_version: Option<String>,
    },
    /// Save or load a stream's snapshot.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
}

#[derive(clap::Subcommand)]
enum SnapshotCommand {
    /// Save the aggregate's state as of a version.
    Save {
        stream: String,
        #[arg(long)]
        version: u64,
        /// The state, as JSON.
        #[arg(long)]
        data: String,
    },
    /// Print the latest snapshot.
    Get { stream: String },
}

/// `$` in `$all` is fine in a path, but a shell user may have written it escaped.
fn path_part(s: &str) -> String {
    s.replace('/', "%2F")
}

fn print_event(e: &Value, json_out: bool) {
    if json_out {
        println!("{e}");
    } else {
        println!(
            "{}@{}  #{}  {}",
            e["stream"].as_str().unwrap_or(""),
            e["version"],
            e["position"],
            e["event"]
        );
    }
}

pub async fn run(args: StreamArgs) -> anyhow::Result<()> {
    let c = Client::new(&args.client)?;
    let json_out = c.output == Output::Json;
    match args.command {
        StreamCommand::Append {
            stream,
            expected_version,
            events,
        } => {
            let events = events.collect()?;
            if events.is_empty() {
                bail!("nothing to append: give --type (and --data) or --file");
            }
            let expected = match expected_version.parse::<u64>() {
                Ok(n) => json!(n),
                Err(_) => json!(expected_version),
            };
            let v = c
                .call(
                    Method::POST,
                    &format!("/v1/streams/{}/events", path_part(&stream)),
                    Some(json!({ "expected_version": expected, "events": events })),
                )
                .await?;
            let verb = if v["appended"] == true {
                "appended"
            } else {
                "already appended (a retry)"
            };
            print_or(
                json_out,
                &v,
                &format!(
                    "{verb}: {stream} versions {}..={} (position {})",
                    v["first_version"], v["last_version"], v["first_position"]
                ),
            );
        }
        StreamCommand::Read {
            stream,
            category,
            event_type,
            from,
            backward,
            limit,
        } => {
            let mut q = format!("limit={limit}");
            if let Some(f) = from {
                q.push_str(&format!("&from={f}"));
            }
            let path = match (stream, category, event_type) {
                (Some(s), None, None) => {
                    if backward {
                        q.push_str("&direction=backward");
                    }
                    format!("/v1/streams/{}/events?{q}", path_part(&s))
                }
                (None, Some(cat), None) => format!("/v1/categories/{}/events?{q}", path_part(&cat)),
                (None, None, Some(t)) => format!("/v1/types/{}/events?{q}", path_part(&t)),
                _ => bail!("give a stream ('$all' for all), --category or --event-type"),
            };
            let v = c.call(Method::GET, &path, None).await?;
            if json_out {
                println!("{v}");
            } else {
                for e in v["events"].as_array().into_iter().flatten() {
                    print_event(e, false);
                }
                if !v["next"].is_null() {
                    eprintln!("next: --from {}", v["next"]);
                }
            }
        }
        StreamCommand::Tail {
            stream,
            category,
            from,
        } => {
            let path = match (stream, category) {
                (Some(s), None) => format!("/v1/streams/{}/stream?from={from}", path_part(&s)),
                (None, Some(cat)) => {
                    format!("/v1/categories/{}/stream?from={from}", path_part(&cat))
                }
                _ => bail!("give a stream ('$all' for all) or --category"),
            };
            follow(&c, &path, |_, data| {
                match serde_json::from_str::<Value>(data) {
                    Ok(e) => print_event(&e, json_out),
                    Err(_) => println!("{data}"),
                }
            })
            .await?;
        }
        StreamCommand::Info { stream } => {
            let v = c
                .call(
                    Method::GET,
                    &format!("/v1/streams/{}", path_part(&stream)),
                    None,
                )
                .await?;
            println!(
                "{}",
                if json_out {
                    v.to_string()
                } else {
                    serde_json::to_string_pretty(&v)?
                }
            );
        }
        StreamCommand::Meta {
            stream,
            max_age,
            max_count,
            truncate_before,
            custom,
        } => {
            let path = format!("/v1/streams/{}/metadata", path_part(&stream));
            let v = if max_age.is_none()
                && max_count.is_none()
                && truncate_before.is_none()
                && custom.is_none()
            {
                c.call(Method::GET, &path, None).await?
            } else {
                let mut m = Map::new();
                if let Some(a) = max_age {
                    m.insert("max_age".into(), a.into());
                }
                if let Some(n) = max_count {
                    m.insert("max_count".into(), n.into());
                }
                if let Some(n) = truncate_before {
                    m.insert("truncate_before".into(), n.into());
                }
                if let Some(cj) = custom {
                    let cv: Value = serde_json::from_str(&cj)
                        .map_err(|e| anyhow::anyhow!("--custom is not JSON: {e}"))?;
                    m.insert("custom".into(), cv);
                }
                c.call(Method::PUT, &path, Some(Value::Object(m))).await?
            };
            println!("{v}");
        }
        StreamCommand::Delete {
            stream,
            hard,
            expected_version,
        } => {
            let mut q = format!("hard={hard}");
            if let Some(e) = expected_version {
                q.push_str(&format!("&expected_version={e}"));
            }
            let v = c
                .call(
                    Method::DELETE,
                    &format!("/v1/streams/{}?{q}", path_part(&stream)),
                    None,
                )
                .await?;
            let how = if hard { "hard-deleted" } else { "deleted" };
            print_or(json_out, &v, &format!("{how} stream {stream}"));
        }
        StreamCommand::Snapshot { command } => match command {
            SnapshotCommand::Save {
                stream,
                version,
                data,
            } => {
                let data: Value = serde_json::from_str(&data)
                    .map_err(|e| anyhow::anyhow!("--data is not JSON: {e}"))?;
                let v = c
                    .call(
                        Method::PUT,
                        &format!("/v1/streams/{}/snapshot", path_part(&stream)),
                        Some(json!({ "version": version, "data": data })),
                    )
                    .await?;
                print_or(
                    json_out,
                    &v,
                    &format!("saved the snapshot of {stream} at version {version}"),
                );
            }
            SnapshotCommand::Get { stream } => {
                let v = c
                    .call(
                        Method::GET,
                        &format!("/v1/streams/{}/snapshot", path_part(&stream)),
                        None,
                    )
                    .await?;
                println!("{v}");
            }
        },
    }
    Ok(())
}
