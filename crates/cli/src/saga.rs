//! `sluice saga …`: saga definitions (each define stores the next version), and starting,
//! inspecting, listing and cancelling sagas.

use anyhow::Context;
use reqwest::Method;
use serde_json::Value;

use crate::client::{Client, ClientArgs, Output};
use crate::queue::print_or;

#[derive(clap::Args)]
pub struct SagaArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: SagaCommand,
}

#[derive(clap::Subcommand)]
enum SagaCommand {
    /// Store a definition (JSON, `{"steps": [...]}`) as the next version of NAME.
    Define {
        name: String,
        /// The definition file (- for stdin).
        #[arg(long, short = 'f')]
        file: String,
    },
    /// Show a definition: the latest version, or --version N.
    Definition {
        name: String,
        #[arg(long)]
        version: Option<u32>,
    },
    /// List definitions (their latest versions).
    Definitions,
    /// Delete every version of a definition.
    DeleteDefinition { name: String },
    /// Start a saga; with --id, starting the same id again answers the existing saga.
    Start {
        definition: String,
        #[arg(long)]
        id: Option<String>,
        /// The input, as JSON.
        #[arg(long, default_value = "{}")]
        input: String,
        #[arg(long)]
        version: Option<u32>,
    },
    /// Show a saga and each step's status, attempts and timing.
    Get { id: String },
    /// List sagas, by status and definition.
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        definition: Option<String>,
    },
    /// Print a saga's history, event by event.
    History { id: String },
    /// Cancel a saga: what completed is compensated.
    Cancel { id: String },
}

fn print_saga(v: &Value) {
    println!(
        "{}  {}@{}  {}{}",
        v["id"].as_str().unwrap_or(""),
        v["definition"].as_str().unwrap_or(""),
        v["version"],
        v["status"].as_str().unwrap_or(""),
        v["error"]
            .as_str()
            .map(|e| format!("  ({e})"))
            .unwrap_or_default()
    );
    for s in v["steps"].as_array().into_iter().flatten() {
        let took = match (s["started_ms"].as_u64(), s["ended_ms"].as_u64()) {
            (Some(a), Some(b)) if b >= a => format!("  {} ms", b - a),
            _ => String::new(),
        };
        println!(
            "  {:<20} {:<26} attempts {} compensations {}{}{}",
            s["name"].as_str().unwrap_or(""),
            s["status"].as_str().unwrap_or(""),
            s["attempts"],
            s["compensation_attempts"],
            took,
            s["last_error"]
                .as_str()
                .map(|e| format!("  last error: {e}"))
                .unwrap_or_default()
        );
    }
}

pub async fn run(args: SagaArgs) -> anyhow::Result<()> {
    let c = Client::new(&args.client)?;
    let json_out = c.output == Output::Json;
    match args.command {
        SagaCommand::Define { name, file } => {
            let text = if file == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading stdin")?
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?
            };
            let definition: Value =
                serde_json::from_str(&text).with_context(|| format!("{file} is not JSON"))?;
            let v = c
                .call(
                    Method::PUT,
                    &format!("/v1/sagas/definitions/{name}"),
                    Some(definition),
                )
                .await?;
            print_or(
                json_out,
                &v,
                &format!("defined saga {name} version {}", v["version"]),
            );
        }
        SagaCommand::Definition { name, version } => {
            let path = match version {
                Some(n) => format!("/v1/sagas/definitions/{name}?version={n}"),
                None => format!("/v1/sagas/definitions/{name}"),
            };
            let v = c.call(Method::GET, &path, None).await?;
            println!(
                "{}",
                if json_out {
                    v.to_string()
                } else {
                    serde_json::to_string_pretty(&v)?
                }
            );
        }
        SagaCommand::Definitions => {
            let v = c.call(Method::GET, "/v1/sagas/definitions", None).await?;
            if json_out {
                println!("{v}");
            } else {
                for d in v["definitions"].as_array().into_iter().flatten() {
                    let steps: Vec<&str> = d["definition"]["steps"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|s| s["name"].as_str())
                        .collect();
                    println!(
                        "{}  version {}  steps {}",
                        d["name"].as_str().unwrap_or(""),
                        d["version"],
                        steps.join(" → ")
                    );
                }
            }
        }
        SagaCommand::DeleteDefinition { name } => {
            let v = c
                .call(
                    Method::DELETE,
                    &format!("/v1/sagas/definitions/{name}"),
                    None,
                )
                .await?;
            print_or(json_out, &v, &format!("deleted saga definition {name}"));
        }
        SagaCommand::Start {
            definition,
            id,
            input,
            version,
        } => {
            let input: Value = serde_json::from_str(&input).context("--input is not JSON")?;
            let mut body = serde_json::json!({"definition": definition, "input": input});
            if let Some(id) = id {
                body["id"] = id.into();
            }
            if let Some(v) = version {
                body["version"] = v.into();
            }
            let v = c.call(Method::POST, "/v1/sagas", Some(body)).await?;
            if json_out {
                println!("{v}");
            } else {
                print_saga(&v);
            }
        }
        SagaCommand::Get { id } => {
            let v = c
                .call(Method::GET, &format!("/v1/sagas/{id}"), None)
                .await?;
            if json_out {
                println!("{v}");
            } else {
                print_saga(&v);
            }
        }
        SagaCommand::List { status, definition } => {
            let mut q = Vec::new();
            if let Some(s) = status {
                q.push(format!("status={s}"));
            }
            if let Some(d) = definition {
                q.push(format!("definition={d}"));
            }
            let v = c
                .call(Method::GET, &format!("/v1/sagas?{}", q.join("&")), None)
                .await?;
            if json_out {
                println!("{v}");
            } else {
                for s in v["sagas"].as_array().into_iter().flatten() {
                    println!(
                        "{}  {}@{}  {}",
                        s["id"].as_str().unwrap_or(""),
                        s["definition"].as_str().unwrap_or(""),
                        s["version"],
                        s["status"].as_str().unwrap_or("")
                    );
                }
            }
        }
        SagaCommand::History { id } => {
            let v = c
                .call(Method::GET, &format!("/v1/sagas/{id}/history"), None)
                .await?;
            if json_out {
                println!("{v}");
            } else {
                for e in v["events"].as_array().into_iter().flatten() {
                    println!(
                        "{}  {}  {}",
                        e["version"],
                        e["at"].as_str().unwrap_or(""),
                        e["event"]
                    );
                }
            }
        }
        SagaCommand::Cancel { id } => {
            let v = c
                .call(Method::POST, &format!("/v1/sagas/{id}/cancel"), None)
                .await?;
            if json_out {
                println!("{v}");
            } else {
                print_saga(&v);
            }
        }
    }
    Ok(())
}
