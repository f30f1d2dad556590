//! `sluice projection …`: fold the events of a stream, a category or `$all` into a
//! function's state; inspect position and lag; pause, resume, rebuild and delete.

use anyhow::bail;
use reqwest::Method;
use serde_json::{Value, json};

use crate::client::{Client, ClientArgs, Output};
use crate::queue::print_or;

#[derive(clap::Args)]
pub struct ProjectionArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: ProjectionCommand,
}

#[derive(clap::Subcommand)]
enum ProjectionCommand {
    /// Create a projection, or change its function, alias or batch size.
    Create {
        name: String,
        /// The function that folds events into its key-value state.
        #[arg(long)]
        function: String,
        #[arg(long, default_value = "live")]
        alias: String,
        /// Fold one stream.
        #[arg(long, conflicts_with_all = ["category", "all"])]
        stream: Option<String>,
        /// Fold every stream of a category (the part of names before the first '-').
        #[arg(long, conflicts_with = "all")]
        category: Option<String>,
        /// Fold every stream.
        #[arg(long)]
        all: bool,
        /// Most events per invocation (at most one per stream).
        #[arg(long, default_value_t = 100)]
        batch_size: u32,
    },
    /// List projections with their position and lag.
    List,
    /// Show a projection's settings, position and lag.
    Get { name: String },
    /// Fold everything again from an empty state.
    Rebuild { name: String },
    /// Stop folding; events wait.
    Pause { name: String },
    /// Fold again.
    Resume { name: String },
    /// Delete a projection with its state (the function stays).
    Delete { name: String },
    /// Print the projection's state: one key's value, or the keys.
    State {
        name: String,
        key: Option<String>,
        #[arg(long, default_value = "")]
        prefix: String,
    },
}

fn print_projection(v: &Value) {
    let source = match &v["source"] {
        Value::String(s) => format!("${s}"),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k} {}", v.as_str().unwrap_or("")))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    };
    println!(
        "{}  {} → {}@{}  position {} of {}  lag {}  invocations {} errors {}{}{}",
        v["name"].as_str().unwrap_or(""),
        source,
        v["function"].as_str().unwrap_or(""),
        v["alias"].as_str().unwrap_or(""),
        v["position"],
        v["head"],
        v["lag"],
        v["invocations"],
        v["errors"],
        if v["paused"] == json!(true) {
            "  PAUSED"
        } else {
            ""
        },
        if v["rebuilding"] == json!(true) {
            "  REBUILDING"
        } else {
            ""
        },
    );
    if let Some(e) = v["last_error"].as_str() {
        println!("  last error: {e}");
    }
}

pub async fn run(args: ProjectionArgs) -> anyhow::Result<()> {
    let c = Client::new(&args.client)?;
    let json_out = c.output == Output::Json;
    let show = |v: &Value| {
        if json_out {
            println!("{v}");
        } else {
            print_projection(v);
        }
    };
    match args.command {
        ProjectionCommand::Create {
            name,
            function,
            alias,
            stream,
            category,
            all,
            batch_size,
        } => {
            let source = match (stream, category, all) {
                (Some(s), None, false) => json!({ "stream": s }),
                (None, Some(c), false) => json!({ "category": c }),
                (None, None, true) => json!("all"),
                _ => bail!("give --stream, --category or --all"),
            };
            let v = c
                .call(
                    Method::PUT,
                    &format!("/v1/projections/{name}"),
                    Some(json!({
                        "function": function,
                        "alias": alias,
                        "source": source,
                        "batch_size": batch_size,
                    })),
                )
                .await?;
            show(&v);
        }
        ProjectionCommand::List => {
            let v = c.call(Method::GET, "/v1/projections", None).await?;
            if json_out {
                println!("{v}");
            } else {
                for p in v["projections"].as_array().into_iter().flatten() {
                    print_projection(p);
                }
            }
        }
        ProjectionCommand::Get { name } => show(
            &c.call(Method::GET, &format!("/v1/projections/{name}"), None)
                .await?,
        ),
        ProjectionCommand::Rebuild { name } => show(
            &c.call(
                Method::POST,
                &format!("/v1/projections/{name}/rebuild"),
                None,
            )
            .await?,
        ),
        ProjectionCommand::Pause { name } => show(
            &c.call(Method::POST, &format!("/v1/projections/{name}/pause"), None)
                .await?,
        ),
        ProjectionCommand::Resume { name } => show(
            &c.call(
                Method::POST,
                &format!("/v1/projections/{name}/resume"),
                None,
            )
            .await?,
        ),
        ProjectionCommand::Delete { name } => {
            let v = c
                .call(Method::DELETE, &format!("/v1/projections/{name}"), None)
                .await?;
            print_or(json_out, &v, &format!("deleted projection {name}"));
        }
        ProjectionCommand::State { name, key, prefix } => match key {
            Some(k) => {
                let v = c
                    .call(
                        Method::GET,
                        &format!("/v1/projections/{name}/state/{k}"),
                        None,
                    )
                    .await?;
                match v {
                    Value::String(s) => println!("{s}"),
                    other => println!("{other}"),
                }
            }
            None => {
                let v = c
                    .call(
                        Method::GET,
                        &format!("/v1/projections/{name}/state?prefix={prefix}&limit=1000"),
                        None,
                    )
                    .await?;
                if json_out {
                    println!("{v}");
                } else {
                    for k in v["keys"].as_array().into_iter().flatten() {
                        println!("{}", k.as_str().unwrap_or(""));
                    }
                }
            }
        },
    }
    Ok(())
}
