//! `sluice saga …`: saga definitions (each define stores the next version). Starting and
//! inspecting sagas come with the saga runner.

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
    }
    Ok(())
}
