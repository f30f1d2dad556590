//! `sluice trace EVENT_ID`: the causal tree of the chain an event belongs to, from its
//! root: events, the invocations that handled them (trigger, source, attempt, outcome,
//! timing), what each published or sent, and dead-letter moves.

use reqwest::Method;
use serde_json::Value;

use crate::client::{Client, ClientArgs, Output};

#[derive(clap::Args)]
pub struct TraceArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Any event of the chain.
    event: String,
}

pub async fn run(args: TraceArgs) -> anyhow::Result<()> {
    let c = Client::new(&args.client)?;
    let tree = c
        .call(Method::GET, &format!("/v1/lineage/{}", args.event), None)
        .await?;
    if c.output == Output::Json {
        println!("{tree}");
    } else {
        print!("{}", render(&tree));
    }
    Ok(())
}

/// The tree as indented text; the event asked about is marked.
pub fn render(tree: &Value) -> String {
    let asked = tree["event"].as_str().unwrap_or_default();
    let mut out = String::new();
    event(&mut out, &tree["root"], asked, "", "");
    if tree["truncated"] == Value::Bool(true) {
        out.push_str("… (cut: the tree has too many nodes)\n");
    }
    out
}

fn event(out: &mut String, e: &Value, asked: &str, lead: &str, indent: &str) {
    let id = e["id"].as_str().unwrap_or_default();
    let mut line = format!("{lead}event {id}");
    if let Some(ty) = e["type"].as_str() {
        line.push_str(&format!("  {ty}"));
    }
    if let Some(topic) = e["topic"].as_str() {
        line.push_str(&format!(" → {topic}"));
    }
    if let Some(t) = e["time_ms"].as_u64() {
        line.push_str(&format!("  {}", sluice_types::format_rfc3339_ms(t)));
    }
    if id == asked {
        line.push_str("  ◀");
    }
    out.push_str(&line);
    out.push('\n');
    let invocations = e["handled_by"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let caused = e["caused"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let dead = e.get("dead_lettered").filter(|d| d.is_object());
    for (i, inv) in invocations.iter().enumerate() {
        let last = i + 1 == invocations.len() && caused.is_empty() && dead.is_none();
        invocation(out, inv, asked, indent, last);
    }
    // Events it caused directly: a saga's steps.
    child_events(out, caused, asked, indent, dead.is_some());
    if let Some(d) = dead {
        let to = match d["dead_letter_queue"].as_str() {
            Some(q) => format!("to {q}"),
            None => "removed (no dead-letter queue)".to_owned(),
        };
        out.push_str(&format!(
            "{indent}└─ dead-lettered from {} {to}: {} after {} attempt(s)\n",
            d["queue"].as_str().unwrap_or_default(),
            d["reason"].as_str().unwrap_or_default(),
            d["attempts"],
        ));
    }
}

/// Draws `events` as children at `indent`; the last one closes the branch unless more
/// follows it.
fn child_events(out: &mut String, events: &[Value], asked: &str, indent: &str, more: bool) {
    for (i, c) in events.iter().enumerate() {
        let (lead, next) = branch(i + 1 == events.len() && !more);
        event(
            out,
            c,
            asked,
            &format!("{indent}{lead}"),
            &format!("{indent}{next}"),
        );
    }
}

/// The lead of a child line and the indent below it.
fn branch(last: bool) -> (&'static str, &'static str) {
    if last {
        ("└─ ", "   ")
    } else {
        ("├─ ", "│  ")
    }
}

fn invocation(out: &mut String, inv: &Value, asked: &str, indent: &str, last: bool) {
    let (lead, next) = branch(last);
    let mut line = format!(
        "{indent}{lead}{} v{}",
        inv["function"].as_str().unwrap_or_default(),
        inv["version"]
    );
    if let Some(t) = inv["trigger"].as_str() {
        line.push_str(&format!(" · trigger {t}"));
    }
    if let Some(s) = inv["source"].as_str() {
        line.push_str(&format!(" · from {s}"));
    }
    line.push_str(&format!(
        " · attempt {} · {} · {:.1} ms · {}",
        inv["attempt"],
        inv["outcome"].as_str().unwrap_or_default(),
        inv["duration_us"].as_u64().unwrap_or(0) as f64 / 1000.0,
        sluice_types::format_rfc3339_ms(inv["started_ms"].as_u64().unwrap_or(0)),
    ));
    let batch = inv["inputs"].as_array().map_or(0, Vec::len);
    if batch > 1 {
        line.push_str(&format!(" · batch of {batch}"));
    }
    if let Some(e) = inv["error"].as_str() {
        line.push_str(&format!(" · {e}"));
    }
    out.push_str(&line);
    out.push('\n');
    let child_indent = format!("{indent}{next}");
    let sent: Vec<&str> = inv["sent_to"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let caused = inv["caused"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if !sent.is_empty() {
        let lead = if caused.is_empty() {
            "└─ "
        } else {
            "├─ "
        };
        out.push_str(&format!(
            "{child_indent}{lead}sent to {}\n",
            sent.join(", ")
        ));
    }
    child_events(out, caused, asked, &child_indent, false);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn renders_the_tree_with_the_asked_event_marked() {
        let tree = json!({
            "event": "b", "correlation_id": "a", "truncated": false,
            "root": {"id": "a", "type": "seed", "handled_by": [
                {"id": "i1", "function": "f", "version": 1, "trigger": "t1", "source": "q",
                 "attempt": 1, "outcome": "failed", "error": "boom", "started_ms": 0,
                 "duration_us": 1500, "inputs": ["a"], "outputs": [], "sent_to": [], "caused": []},
                {"id": "i2", "function": "f", "version": 1, "trigger": "t1", "source": "q",
                 "attempt": 2, "outcome": "success", "started_ms": 1000,
                 "duration_us": 500, "inputs": ["a"], "outputs": [], "sent_to": ["jobs"],
                 "caused": [{"id": "b", "type": "next", "topic": "t", "handled_by": [],
                             "dead_lettered": {"queue": "t/s", "dead_letter_queue": "dlq",
                                               "reason": "loop_detected", "attempts": 1, "at_ms": 0}}]}
            ]}
        });
        let want = "\
event a  seed
├─ f v1 · trigger t1 · from q · attempt 1 · failed · 1.5 ms · 1970-01-01T00:00:00.000Z · boom
└─ f v1 · trigger t1 · from q · attempt 2 · success · 0.5 ms · 1970-01-01T00:00:01.000Z
   ├─ sent to jobs
   └─ event b  next → t  ◀
      └─ dead-lettered from t/s to dlq: loop_detected after 1 attempt(s)
";
        assert_eq!(render(&tree), want);
    }
}
