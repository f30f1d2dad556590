//! `sluice cost` (usage and estimated cost per function, trigger, queue and topic) and
//! `sluice budget …` (limits over an hour, day or month that pause triggers when spent).

use anyhow::bail;
use reqwest::Method;
use serde_json::{Value, json};

use crate::client::{Client, ClientArgs, Output};

#[derive(clap::Args)]
pub struct CostArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Only this kind.
    #[arg(long, value_parser = ["function", "trigger", "queue", "topic"])]
    by: Option<String>,
    /// How far back: 1h, 24h, 7d … (at most 35d).
    #[arg(long, default_value = "24h")]
    since: String,
}

pub async fn run_cost(args: CostArgs) -> anyhow::Result<()> {
    let c = Client::new(&args.client)?;
    let mut path = format!("/v1/cost?since={}", args.since);
    if let Some(by) = &args.by {
        path.push_str(&format!("&by={by}"));
    }
    let v = c.call(Method::GET, &path, None).await?;
    if c.output == Output::Json {
        println!("{v}");
        return Ok(());
    }
    print!("{}", render_cost(&v));
    Ok(())
}

/// The cost report as a table; amounts are estimates from the price table.
pub fn render_cost(v: &Value) -> String {
    let mut out = format!(
        "usage {} → {} (estimated USD, from the price table)\n",
        v["since"].as_str().unwrap_or_default(),
        v["until"].as_str().unwrap_or_default()
    );
    out.push_str(&format!(
        "{:<9} {:<28} {:>11} {:>12} {:>11} {:>12}\n",
        "KIND", "NAME", "INVOCATIONS", "GB-SECONDS", "REQUESTS", "COST"
    ));
    for i in v["items"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let u = &i["usage"];
        out.push_str(&format!(
            "{:<9} {:<28} {:>11} {:>12.4} {:>11} {:>12.6}\n",
            i["kind"].as_str().unwrap_or_default(),
            i["name"].as_str().unwrap_or_default(),
            u["invocations"].as_u64().unwrap_or(0),
            u["gb_seconds"].as_f64().unwrap_or(0.0),
            u["requests"].as_u64().unwrap_or(0),
            i["cost_usd"]["total"].as_f64().unwrap_or(0.0),
        ));
    }
    out.push_str(&format!(
        "total (functions, queues, topics): {:.6} USD\n",
        v["total_usd"].as_f64().unwrap_or(0.0)
    ));
    out
}

#[derive(clap::Args)]
pub struct BudgetArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: BudgetCommand,
}

#[derive(clap::Subcommand)]
enum BudgetCommand {
    /// Create or change a budget. When it is spent, the triggers it governs pause until
    /// the period rolls over, the budget is raised, or `sluice trigger resume`.
    Set {
        name: String,
        /// Govern every trigger of this function.
        #[arg(long, conflicts_with_all = ["trigger", "app"])]
        function: Option<String>,
        /// Govern one trigger.
        #[arg(long, conflicts_with = "app")]
        trigger: Option<String>,
        /// Govern everything.
        #[arg(long)]
        app: bool,
        #[arg(long, value_parser = ["hour", "day", "month"], default_value = "day")]
        period: String,
        #[arg(long, conflicts_with_all = ["gb_seconds", "cost_usd"])]
        invocations: Option<u64>,
        #[arg(long, conflicts_with = "cost_usd")]
        gb_seconds: Option<f64>,
        /// Estimated cost in US dollars, by the server's price table.
        #[arg(long)]
        cost_usd: Option<f64>,
        /// Share of the limit that sends a warning alert.
        #[arg(long, default_value_t = 0.8)]
        soft_threshold: f64,
    },
    List,
    Get {
        name: String,
    },
    Delete {
        name: String,
    },
}

/// A number as people write it: whole numbers without decimals, others to 6 places.
fn num(v: &Value) -> String {
    match v.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{f:.0}"),
        Some(f) => {
            let s = format!("{f:.6}");
            s.trim_end_matches('0').trim_end_matches('.').to_owned()
        }
        None => v.to_string(),
    }
}

fn print_budget(b: &Value) {
    println!(
        "{}  {}  per {}  spent {} of {}  {}{}",
        b["name"].as_str().unwrap_or_default(),
        b["scope"],
        b["period"].as_str().unwrap_or_default(),
        num(&b["spent"]),
        num(&b["limit"]),
        b["standing"].as_str().unwrap_or_default().to_uppercase(),
        match b["resumed_triggers"].as_array() {
            Some(r) if !r.is_empty() => format!("  resumed: {}", Value::Array(r.clone())),
            _ => String::new(),
        }
    );
}

pub async fn run_budget(args: BudgetArgs) -> anyhow::Result<()> {
    let c = Client::new(&args.client)?;
    let json_out = c.output == Output::Json;
    let show = |v: &Value| {
        if json_out {
            println!("{v}");
        } else {
            print_budget(v);
        }
    };
    match args.command {
        BudgetCommand::Set {
            name,
            function,
            trigger,
            app,
            period,
            invocations,
            gb_seconds,
            cost_usd,
            soft_threshold,
        } => {
            let scope = match (function, trigger, app) {
                (Some(f), None, false) => json!({ "function": f }),
                (None, Some(t), false) => json!({ "trigger": t }),
                (None, None, true) => json!("app"),
                _ => bail!("give --function, --trigger or --app"),
            };
            let limit = match (invocations, gb_seconds, cost_usd) {
                (Some(n), None, None) => json!({ "invocations": n }),
                (None, Some(g), None) => json!({ "gb_seconds": g }),
                (None, None, Some(d)) => json!({ "cost_usd": d }),
                _ => bail!("give --invocations, --gb-seconds or --cost-usd"),
            };
            let v = c
                .call(
                    Method::PUT,
                    &format!("/v1/budgets/{name}"),
                    Some(json!({
                        "scope": scope,
                        "period": period,
                        "limit": limit,
                        "soft_threshold": soft_threshold,
                    })),
                )
                .await?;
            show(&v);
        }
        BudgetCommand::List => {
            let v = c.call(Method::GET, "/v1/budgets", None).await?;
            if json_out {
                println!("{v}");
            } else {
                for b in v["budgets"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                    print_budget(b);
                }
            }
        }
        BudgetCommand::Get { name } => {
            show(
                &c.call(Method::GET, &format!("/v1/budgets/{name}"), None)
                    .await?,
            );
        }
        BudgetCommand::Delete { name } => {
            let v = c
                .call(Method::DELETE, &format!("/v1/budgets/{name}"), None)
                .await?;
            if json_out {
                println!("{v}");
            } else {
                println!("deleted budget {name}");
            }
        }
    }
    Ok(())
}
