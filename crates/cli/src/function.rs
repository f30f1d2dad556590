//! `sluice fn …`: deploy components as versions, move aliases, roll back,
//! inspect, delete and invoke functions from the command line.

use anyhow::{Context, bail};
use reqwest::Method;
use serde_json::{Value, json};

use crate::client::{Client, ClientArgs, Output, encode};
use crate::queue::print_or;

#[derive(clap::Args)]
pub struct FnArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: FnCommand,
}

#[derive(clap::Subcommand)]
enum FnCommand {
    /// Deploy a component as a new immutable version and point `live` at it.
    Deploy {
        name: String,
        /// The component (.wasm) built for the `sluice:function` world.
        file: std::path::PathBuf,
        /// Memory limit, summed over the instance's memories (default 128MiB).
        #[arg(long)]
        memory: Option<String>,
        /// Time limit of one invocation (default 30s).
        #[arg(long)]
        timeout: Option<String>,
        /// Configuration value K=V, read with `config.get`; repeatable.
        #[arg(long = "env", value_name = "K=V")]
        env: Vec<String>,
        /// Most invocations of this version at once (default 10).
        #[arg(long)]
        concurrency: Option<u32>,
    },
    /// List functions with their aliases and versions.
    List,
    /// Show a function, its aliases and versions.
    Get { name: String },
    /// Delete a function: every version, alias, artifact and its key-value state.
    Delete { name: String },
    /// Delete one version (no alias may point at it).
    DeleteVersion { name: String, version: u32 },
    /// Point an alias at a version.
    Alias {
        name: String,
        alias: String,
        version: u32,
    },
    /// Move an alias (default live) back to the previous version, or to --to.
    Rollback {
        name: String,
        #[arg(long, default_value = "live")]
        alias: String,
        #[arg(long)]
        to: Option<u32>,
    },
    /// Print the records of recent invocations with their log lines.
    Logs {
        name: String,
        /// Keep printing new invocations as they happen.
        #[arg(long, short)]
        follow: bool,
        /// How many of the latest records to print first.
        #[arg(long, default_value_t = 20)]
        last: u64,
    },
    /// Invoke a function synchronously and print its outcome and logs.
    Invoke {
        name: String,
        /// The event's data, as JSON.
        #[arg(long, default_value = "null")]
        data: String,
        /// Run this alias (default live).
        #[arg(long, conflicts_with = "version")]
        alias: Option<String>,
        /// Run this version.
        #[arg(long)]
        version: Option<u32>,
    },
}

fn print_function(v: &Value) {
    let aliases: Vec<String> = v["aliases"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(a, n)| format!("{a}→{n}"))
        .collect();
    println!(
        "{}  aliases: {}",
        v["name"].as_str().unwrap_or(""),
        aliases.join(" ")
    );
    for ver in v["versions"].as_array().into_iter().flatten() {
        println!(
            "  v{}  {} bytes  memory {}  timeout {}  concurrency {}  sha256 {}",
            ver["version"],
            ver["size"],
            ver["memory"].as_str().unwrap_or(""),
            ver["timeout"].as_str().unwrap_or(""),
            ver["concurrency"],
            &ver["sha256"].as_str().unwrap_or("")
                [..12.min(ver["sha256"].as_str().unwrap_or("").len())]
        );
    }
}

pub async fn run(args: FnArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.client)?;
    let json_out = client.output == Output::Json;
    match args.command {
        FnCommand::Deploy {
            name,
            file,
            memory,
            timeout,
            env,
            concurrency,
        } => {
            let wasm =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let mut query = Vec::new();
            if let Some(m) = memory {
                query.push(format!("memory={}", encode(&m)));
            }
            if let Some(t) = timeout {
                query.push(format!("timeout={}", encode(&t)));
            }
            if let Some(c) = concurrency {
                query.push(format!("concurrency={c}"));
            }
            for e in env {
                if !e.contains('=') {
                    bail!("--env {e:?}: expected K=V");
                }
                query.push(format!("env={}", encode(&e)));
            }
            let path = format!(
                "/v1/functions/{}/versions?{}",
                encode(&name),
                query.join("&")
            );
            let v = client.post_bytes(&path, "application/wasm", wasm).await?;
            print_or(
                json_out,
                &v,
                &format!("deployed {name} version {} (live)", v["version"]),
            );
        }
        FnCommand::List => {
            let v = client.call(Method::GET, "/v1/functions", None).await?;
            if json_out {
                println!("{v}");
            } else {
                for f in v["functions"].as_array().into_iter().flatten() {
                    print_function(f);
                }
            }
        }
        FnCommand::Get { name } => {
            let v = client
                .call(
                    Method::GET,
                    &format!("/v1/functions/{}", encode(&name)),
                    None,
                )
                .await?;
            if json_out {
                println!("{v}");
            } else {
                print_function(&v);
            }
        }
        FnCommand::Delete { name } => {
            client
                .call(
                    Method::DELETE,
                    &format!("/v1/functions/{}", encode(&name)),
                    None,
                )
                .await?;
            print_or(
                json_out,
                &json!({"deleted": name}),
                &format!("deleted {name}"),
            );
        }
        FnCommand::DeleteVersion { name, version } => {
            let path = format!("/v1/functions/{}/versions/{version}", encode(&name));
            client.call(Method::DELETE, &path, None).await?;
            print_or(
                json_out,
                &json!({"deleted": version}),
                &format!("deleted {name} version {version}"),
            );
        }
        FnCommand::Alias {
            name,
            alias,
            version,
        } => {
            let path = format!("/v1/functions/{}/aliases/{}", encode(&name), encode(&alias));
            let v = client
                .call(Method::PUT, &path, Some(json!({"version": version})))
                .await?;
            print_or(
                json_out,
                &v,
                &format!("{name}: {alias} → version {version}"),
            );
        }
        FnCommand::Rollback { name, alias, to } => {
            let path = format!("/v1/functions/{}/rollback", encode(&name));
            let v = client
                .call(Method::POST, &path, Some(json!({"alias": alias, "to": to})))
                .await?;
            print_or(
                json_out,
                &v,
                &format!("{name}: {alias} → version {}", v["aliases"][&alias]),
            );
        }
        FnCommand::Logs { name, follow, last } => {
            let base = format!("/v1/functions/{}/logs", encode(&name));
            // Find where the latest `last` records start.
            let mut after = 0u64;
            loop {
                let path = format!("{base}?after={after}&limit=1000");
                let v = client.call(Method::GET, &path, None).await?;
                let next = v["next"].as_u64().unwrap_or(after);
                if next == after {
                    break;
                }
                after = next;
            }
            after = after.saturating_sub(last);
            loop {
                let path = format!("{base}?after={after}&limit=1000");
                let v = client.call(Method::GET, &path, None).await?;
                for r in v["records"].as_array().into_iter().flatten() {
                    print_record(json_out, r);
                }
                after = v["next"].as_u64().unwrap_or(after);
                if !follow {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
        FnCommand::Invoke {
            name,
            data,
            alias,
            version,
        } => {
            let data: Value = serde_json::from_str(&data).context("--data is not valid JSON")?;
            let mut path = format!("/v1/functions/{}/invoke", encode(&name));
            if let Some(a) = alias {
                path.push_str(&format!("?alias={}", encode(&a)));
            } else if let Some(v) = version {
                path.push_str(&format!("?version={v}"));
            }
            let v = client
                .call(Method::POST, &path, Some(json!({ "data": data })))
                .await?;
            if json_out {
                println!("{v}");
            } else {
                print_lines(&v["logs"], "");
                println!(
                    "{} (version {}, {} µs{})",
                    v["outcome"].as_str().unwrap_or(""),
                    v["version"],
                    v["duration_us"],
                    if v["cold"] == json!(true) {
                        ", cold"
                    } else {
                        ""
                    }
                );
                if let Some(e) = v["error"].as_str() {
                    println!("{e}");
                }
                for f in v["failed"].as_array().into_iter().flatten() {
                    println!(
                        "failed {}: {}",
                        f["id"].as_str().unwrap_or(""),
                        f["reason"].as_str().unwrap_or("")
                    );
                }
            }
            if v["outcome"] == json!("failed") {
                std::process::exit(1);
            }
        }
    }
    Ok(())
}

pub(crate) fn print_record(json_out: bool, r: &Value) {
    if json_out {
        println!("{r}");
        return;
    }
    let when = r["started_ms"]
        .as_u64()
        .map(sluice_types::format_rfc3339_ms)
        .unwrap_or_default();
    println!(
        "{when} #{} {} v{} {}{} attempt {} events {} {} µs{}",
        r["seq"],
        r["invocation_id"].as_str().unwrap_or(""),
        r["version"],
        r["outcome"].as_str().unwrap_or(""),
        r["trigger"]
            .as_str()
            .map(|t| format!(" trigger {t}"))
            .unwrap_or_default(),
        r["attempt"],
        r["events"],
        r["duration_us"],
        if r["cold"] == json!(true) {
            " cold"
        } else {
            ""
        },
    );
    if let Some(e) = r["error"].as_str() {
        println!("  error: {e}");
    }
    print_lines(&r["lines"], "  ");
}

/// Prints an invocation's log lines, each as `[ms] level context: message`.
fn print_lines(lines: &Value, indent: &str) {
    for l in lines.as_array().into_iter().flatten() {
        let context = l["context"].as_str().filter(|c| !c.is_empty());
        println!(
            "{indent}[{:>5} ms] {:<5} {}{}",
            l["at_ms"],
            l["level"].as_str().unwrap_or(""),
            context.map(|c| format!("{c}: ")).unwrap_or_default(),
            l["message"].as_str().unwrap_or("")
        );
    }
}
