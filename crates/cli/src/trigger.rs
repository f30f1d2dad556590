//! `sluice trigger …`: connect a queue or a topic subscription to a function
//! with batching, a concurrency cap and a rate limit; pause and resume.

use anyhow::bail;
use reqwest::Method;
use serde_json::{Value, json};

use crate::client::{Client, ClientArgs, Output};
use crate::queue::print_or;

#[derive(clap::Args)]
pub struct TriggerArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: TriggerCommand,
}

#[derive(clap::Subcommand)]
enum TriggerCommand {
    /// Create a trigger, or replace its settings.
    Create {
        name: String,
        /// The function to invoke.
        #[arg(long)]
        function: String,
        /// The alias invoked.
        #[arg(long, default_value = "live")]
        alias: String,
        /// Consume this queue.
        #[arg(long, conflicts_with = "subscription")]
        queue: Option<String>,
        /// Consume this pull subscription, as TOPIC/SUBSCRIPTION.
        #[arg(long)]
        subscription: Option<String>,
        /// Most events per invocation (1-1000).
        #[arg(long, default_value_t = 1)]
        batch_size: u32,
        /// Wait up to this long to fill a batch, e.g. 50ms.
        #[arg(long, default_value = "0ms")]
        batch_window: String,
        /// Most invocations at once; the rest waits in the source.
        #[arg(long, default_value_t = 4)]
        max_concurrency: u32,
        /// Most invocations started per second.
        #[arg(long)]
        rate_limit: Option<f64>,
        /// Create it paused.
        #[arg(long)]
        paused: bool,
    },
    /// List triggers with their counts.
    List,
    /// Show a trigger's settings and counts.
    Get { name: String },
    /// Delete a trigger; its source keeps its events.
    Delete { name: String },
    /// Stop leasing from the source; events wait durably.
    Pause { name: String },
    /// Start leasing again.
    Resume { name: String },
}

fn print_trigger(v: &Value) {
    let c = &v["config"];
    let s = &v["stats"];
    let source = match c["source"].get("queue") {
        Some(q) => format!("queue {}", q.as_str().unwrap_or("")),
        None => format!(
            "subscription {}/{}",
            c["source"]["subscription"]["topic"].as_str().unwrap_or(""),
            c["source"]["subscription"]["subscription"]
                .as_str()
                .unwrap_or("")
        ),
    };
    println!(
        "{}  {} → {}@{}  batch {} window {} concurrency {} rate {}{}",
        v["name"].as_str().unwrap_or(""),
        source,
        c["function"].as_str().unwrap_or(""),
        c["alias"].as_str().unwrap_or(""),
        c["batch_size"],
        c["batch_window"].as_str().unwrap_or(""),
        c["max_concurrency"],
        c["rate_limit"],
        if c["paused"] == json!(true) {
            "  PAUSED"
        } else {
            ""
        }
    );
    println!(
        "  invocations {} events {} errors {} partial {} in flight {} (max {}) throttled: concurrency {} rate {}",
        s["invocations"],
        s["events"],
        s["errors"],
        s["partial_failures"],
        s["in_flight"],
        s["max_in_flight"],
        s["throttled_concurrency"],
        s["throttled_rate"]
    );
    if let Some(e) = s["last_error"].as_str() {
        println!("  last error: {e}");
    }
}

pub async fn run(args: TriggerArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.client)?;
    let json_out = client.output == Output::Json;
    let show = |v: &Value| {
        if json_out {
            println!("{v}");
        } else {
            print_trigger(v);
        }
    };
    match args.command {
        TriggerCommand::Create {
            name,
            function,
            alias,
            queue,
            subscription,
            batch_size,
            batch_window,
            max_concurrency,
            rate_limit,
            paused,
        } => {
            let source = match (queue, subscription) {
                (Some(q), None) => json!({ "queue": q }),
                (None, Some(s)) => match s.split_once('/') {
                    Some((t, sub)) => json!({"subscription": {"topic": t, "subscription": sub}}),
                    None => bail!("--subscription takes TOPIC/SUBSCRIPTION"),
                },
                _ => bail!("give --queue or --subscription"),
            };
            let body = json!({
                "function": function, "alias": alias, "source": source,
                "batch_size": batch_size, "batch_window": batch_window,
                "max_concurrency": max_concurrency, "rate_limit": rate_limit, "paused": paused,
            });
            let v = client
                .call(Method::PUT, &format!("/v1/triggers/{name}"), Some(body))
                .await?;
            show(&v);
        }
        TriggerCommand::List => {
            let v = client.call(Method::GET, "/v1/triggers", None).await?;
            if json_out {
                println!("{v}");
            } else {
                for t in v["triggers"].as_array().into_iter().flatten() {
                    print_trigger(t);
                }
            }
        }
        TriggerCommand::Get { name } => show(
            &client
                .call(Method::GET, &format!("/v1/triggers/{name}"), None)
                .await?,
        ),
        TriggerCommand::Delete { name } => {
            client
                .call(Method::DELETE, &format!("/v1/triggers/{name}"), None)
                .await?;
            print_or(
                json_out,
                &json!({"deleted": name}),
                &format!("deleted {name}"),
            );
        }
        TriggerCommand::Pause { name } => show(
            &client
                .call(Method::POST, &format!("/v1/triggers/{name}/pause"), None)
                .await?,
        ),
        TriggerCommand::Resume { name } => show(
            &client
                .call(Method::POST, &format!("/v1/triggers/{name}/resume"), None)
                .await?,
        ),
    }
    Ok(())
}
