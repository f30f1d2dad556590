//! `sluice apply`: brings a running server to what a manifest describes. Each resource
//! whose configuration differs from the manifest's is created or updated, everything
//! else is left alone, and what changed (with `--dry-run`, what would) is printed.
//!
//! The decision is a pure function of the manifest's configuration and the server's
//! answer for the same resource ([`decide`]); fetching, building and writing are the
//! edges around it. Resources the server has and the manifest does not name are never
//! touched: apply adds and updates, it does not delete.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, bail};
use bytes::Bytes;
use reqwest::Method;
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sluice_types::Name;

use crate::client::{Client, ClientArgs, Output, encode};
use crate::manifest::{self, EventSelector, Manifest};

#[derive(clap::Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The manifest.
    #[arg(short = 'f', long = "file", default_value = manifest::DEFAULT_FILE)]
    file: PathBuf,
    /// Print what would change, and change nothing (no function is built either).
    #[arg(long)]
    dry_run: bool,
}

/// The kinds of resource a manifest describes, in the order they are applied: what
/// others refer to comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Queue,
    Topic,
    Subscription,
    EventSubscription,
    Function,
    Saga,
    Trigger,
    Projection,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Queue => "queue",
            Kind::Topic => "topic",
            Kind::Subscription => "subscription",
            Kind::EventSubscription => "event subscription",
            Kind::Function => "function",
            Kind::Saga => "saga",
            Kind::Trigger => "trigger",
            Kind::Projection => "projection",
        }
    }
}

/// One resource as the manifest wants it.
pub struct Desired {
    pub kind: Kind,
    /// As shown: `orders`, or `order-placed/billing` for a subscription.
    pub name: String,
    /// The manifest entry (`queues.orders`) and where its table is.
    pub entry: String,
    pub span: Range<usize>,
    /// The resource's API path.
    pub path: String,
    /// The configuration as the API shows it. For a function: its component's sha256 and
    /// its version settings.
    pub config: Value,
    /// Where and what to PUT, when it is not `config` at `path` (an event subscription is
    /// written at its stream selector's route and read as a subscription of `$all`).
    pub put: Option<(String, Value)>,
    /// A function's component.
    pub wasm: Option<Bytes>,
}

impl Desired {
    fn new(kind: Kind, name: impl ToString, entry: String, span: Range<usize>) -> Desired {
        Desired {
            kind,
            name: name.to_string(),
            entry,
            span,
            path: String::new(),
            config: Value::Null,
            put: None,
            wasm: None,
        }
    }

    /// Read at `path`, compared with `config`, and written there as `config` too unless
    /// `put` says otherwise.
    fn at(mut self, path: String, config: Value) -> Desired {
        self.path = path;
        self.config = config;
        self
    }
}

/// One field whose value changes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldChange {
    pub field: String,
    pub from: Value,
    pub to: Value,
}

/// What applying a resource does.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    Create,
    Update { fields: Vec<FieldChange> },
    Unchanged,
}

/// Fields that take effect only when a resource is created: later, the server ignores a
/// change (a subscription's `start`; use seek) or it is an operation rather than
/// configuration (a trigger's `paused`; use pause and resume), so a difference in them is
/// not a change to apply.
fn creation_only(kind: Kind, field: &str) -> bool {
    matches!(
        (kind, field),
        (Kind::Subscription | Kind::EventSubscription, "start") | (Kind::Trigger, "paused")
    )
}

/// The part of the server's answer for a resource that the manifest describes; `None`
/// when there is nothing to compare with (a function without a live version).
fn current_config(kind: Kind, view: &Value) -> Option<Value> {
    match kind {
        Kind::Trigger => Some(view["config"].clone()),
        Kind::Saga => Some(view["definition"].clone()),
        Kind::Function => {
            let live = view["aliases"][sluice_functions::LIVE].as_u64()?;
            view["versions"]
                .as_array()?
                .iter()
                .find(|v| v["version"].as_u64() == Some(live))
                .cloned()
        }
        _ => Some(view.clone()),
    }
}

/// Decides what applying `desired` (an object of fields) does to a resource the server
/// shows as `current` (`None`: it does not exist).
pub fn decide(kind: Kind, desired: &Value, current: Option<&Value>) -> Action {
    let Some(current) = current.and_then(|c| current_config(kind, c)) else {
        return Action::Create;
    };
    let Some(fields) = desired.as_object() else {
        return Action::Unchanged;
    };
    let changed: Vec<FieldChange> = fields
        .iter()
        .filter(|(k, _)| !creation_only(kind, k))
        .filter_map(|(k, want)| {
            let have = current.get(k).cloned().unwrap_or(Value::Null);
            (have != *want).then(|| FieldChange {
                field: k.clone(),
                from: have,
                to: want.clone(),
            })
        })
        .collect();
    if changed.is_empty() {
        Action::Unchanged
    } else {
        Action::Update { fields: changed }
    }
}

/// Queue names in an order where every dead-letter queue named in the manifest comes
/// before the queues that use it (a cycle is left to the server to refuse).
fn queue_order(m: &Manifest) -> Vec<&Name> {
    let mut done: Vec<&Name> = Vec::new();
    let mut left: Vec<&Name> = m.queues.keys().collect();
    while !left.is_empty() {
        let before = left.len();
        left.retain(|name| {
            let dlq = m.queues[*name].get_ref().dead_letter_queue.as_ref();
            let ready = match dlq {
                Some(d) => !m.queues.contains_key(d) || done.contains(&d) || d == *name,
                None => true,
            };
            if ready {
                done.push(name);
            }
            !ready
        });
        if left.len() == before {
            done.append(&mut left);
        }
    }
    done
}

fn json_of(v: &impl Serialize) -> Value {
    serde_json::to_value(v).expect("configuration types serialize to JSON")
}

/// What a dry run shows as the digest of a component it would build first.
const TO_BE_BUILT: &str = "(to be built)";

/// Every resource of the manifest, in the order to apply them. Reads each function's
/// component from disk, except for the functions in `unbuilt` (a dry run did not build
/// them).
pub fn desired(m: &Manifest, unbuilt: &[PathBuf]) -> anyhow::Result<Vec<Desired>> {
    let mut out = Vec::new();
    for name in queue_order(m) {
        let q = &m.queues[name];
        out.push(
            Desired::new(Kind::Queue, name, format!("queues.{name}"), q.span())
                .at(format!("/v1/queues/{name}"), json_of(q.get_ref())),
        );
    }
    for (name, t) in &m.topics {
        out.push(
            Desired::new(Kind::Topic, name, format!("topics.{name}"), t.span())
                .at(format!("/v1/topics/{name}"), json_of(t.get_ref())),
        );
    }
    for (topic, subs) in &m.subscriptions {
        for (name, s) in subs {
            out.push(
                Desired::new(
                    Kind::Subscription,
                    format!("{topic}/{name}"),
                    format!("subscriptions.{topic}.{name}"),
                    s.span(),
                )
                .at(
                    format!("/v1/topics/{topic}/subscriptions/{name}"),
                    json_of(s.get_ref()),
                ),
            );
        }
    }
    for (name, e) in &m.event_subscriptions {
        let sub = e.get_ref();
        let route = match &sub.selector {
            EventSelector::Category(c) => format!("/v1/categories/{}", encode(c)),
            EventSelector::Stream(st) => format!("/v1/streams/{}", encode(st)),
        };
        // The server adds the selector to the filter, and shows it so.
        let mut config = json_of(&sub.config);
        if !config["filter"].is_object() {
            config["filter"] = json!({});
        }
        config["filter"][sluice_broker::STREAM_ATTRIBUTE] = sub.selector.broker().condition();
        let mut d = Desired::new(
            Kind::EventSubscription,
            name,
            format!("event_subscriptions.{name}"),
            e.span(),
        )
        .at(
            format!(
                "/v1/topics/{}/subscriptions/{name}",
                encode(sluice_broker::ALL)
            ),
            config,
        );
        d.put = Some((
            format!("{route}/subscriptions/{name}"),
            Value::Object(sub.settings.clone()),
        ));
        out.push(d);
    }
    // Functions often share a component (the shop's nine share one): read and hash each
    // file once.
    let mut components: HashMap<PathBuf, (Bytes, String)> = HashMap::new();
    for (name, f) in &m.functions {
        let entry = format!("functions.{name}");
        let path = m.dir().join(&f.get_ref().wasm);
        let component = if unbuilt.contains(&path) {
            None
        } else if let Some(c) = components.get(&path) {
            Some(c.clone())
        } else {
            let bytes = Bytes::from(std::fs::read(&path).map_err(|e| {
                m.error_at(
                    &entry,
                    f.span(),
                    format!("wasm: cannot read {}: {e}", path.display()),
                )
            })?);
            let c = (bytes.clone(), format!("{:x}", Sha256::digest(&bytes)));
            components.insert(path, c.clone());
            Some(c)
        };
        let (wasm, sha256) = match component {
            Some((bytes, sha256)) => (Some(bytes), sha256),
            None => (None, TO_BE_BUILT.to_owned()),
        };
        let settings = f.get_ref().settings();
        let config = json!({
            "sha256": sha256,
            "memory": settings.memory.to_string(),
            "timeout": settings.timeout.to_string(),
            "concurrency": settings.concurrency,
            "env": settings.env,
        });
        let mut d = Desired::new(Kind::Function, name, entry, f.span())
            .at(format!("/v1/functions/{name}"), config);
        d.wasm = wasm;
        out.push(d);
    }
    for (name, s) in &m.sagas {
        out.push(
            Desired::new(Kind::Saga, name, format!("sagas.{name}"), s.span()).at(
                format!("/v1/sagas/definitions/{name}"),
                json_of(s.get_ref()),
            ),
        );
    }
    for (name, t) in &m.triggers {
        out.push(
            Desired::new(Kind::Trigger, name, format!("triggers.{name}"), t.span())
                .at(format!("/v1/triggers/{name}"), json_of(t.get_ref())),
        );
    }
    for (name, p) in &m.projections {
        out.push(
            Desired::new(
                Kind::Projection,
                name,
                format!("projections.{name}"),
                p.span(),
            )
            .at(format!("/v1/projections/{name}"), json_of(p.get_ref())),
        );
    }
    Ok(out)
}

/// Why a function's component must be built before it is applied, if it must: it is
/// missing, or a source is newer than it.
pub fn build_reason(dir: &Path, f: &manifest::Function) -> anyhow::Result<Option<String>> {
    let Some(build) = &f.build else {
        return Ok(None);
    };
    let wasm = dir.join(&f.wasm);
    let built = match std::fs::metadata(&wasm).and_then(|m| m.modified()) {
        Ok(t) => t,
        Err(_) => return Ok(Some(format!("{} does not exist", f.wasm.display()))),
    };
    for source in &build.sources {
        let mut files = 0;
        if let Some(newer) = newest_since(&dir.join(source), built, &mut files)? {
            let shown = newer.strip_prefix(dir).unwrap_or(&newer);
            return Ok(Some(format!("{} changed", shown.display())));
        }
    }
    Ok(None)
}

/// The functions that build a component, one per component: the first by name of those
/// that share it.
pub fn builds(m: &Manifest) -> impl Iterator<Item = (&Name, &manifest::Function)> {
    let mut components = std::collections::HashSet::new();
    m.functions
        .iter()
        .map(|(name, f)| (name, f.get_ref()))
        .filter(move |(_, f)| f.build.is_some() && components.insert(&f.wasm))
}

/// The newest modification time among every function's build sources: when it moves,
/// something was edited.
pub fn sources_stamp(m: &Manifest) -> Option<SystemTime> {
    fn newest(path: &Path, files: &mut usize) -> Option<SystemTime> {
        let meta = std::fs::metadata(path).ok()?;
        if !meta.is_dir() {
            *files += 1;
            return meta.modified().ok();
        }
        let mut latest = None;
        for entry in std::fs::read_dir(path).ok()?.filter_map(|e| e.ok()) {
            if *files > SOURCE_FILES_MAX {
                break;
            }
            latest = latest.max(newest(&entry.path(), files));
        }
        latest
    }
    let mut files = 0;
    builds(m)
        .filter_map(|(_, f)| f.build.as_ref())
        .flat_map(|b| b.sources.iter())
        .filter_map(|s| newest(&m.dir().join(s), &mut files))
        .max()
}

/// Most files looked at under one source directory.
const SOURCE_FILES_MAX: usize = 10_000;

/// A file at or under `path` modified after `since`, if any.
fn newest_since(
    path: &Path,
    since: SystemTime,
    files: &mut usize,
) -> anyhow::Result<Option<PathBuf>> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("build source {} cannot be read", path.display()))?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            let p = entry?.path();
            if let Some(newer) = newest_since(&p, since, files)? {
                return Ok(Some(newer));
            }
        }
        return Ok(None);
    }
    *files += 1;
    if *files > SOURCE_FILES_MAX {
        bail!(
            "build sources under {} hold more than {SOURCE_FILES_MAX} files",
            path.display()
        );
    }
    Ok((meta.modified()? > since).then(|| path.to_owned()))
}

/// Builds every function whose component is missing or older than its sources, running
/// its build command in the manifest's directory; the command's output goes to stderr.
/// Returns the components built (with `dry_run`, that would be, and nothing is run).
/// Functions sharing a component build it once (see [`builds`]).
pub fn build_stale(m: &Manifest, dry_run: bool) -> anyhow::Result<Vec<PathBuf>> {
    let mut built = Vec::new();
    for (name, f) in builds(m) {
        let (Some(reason), Some(build)) = (build_reason(m.dir(), f)?, &f.build) else {
            continue;
        };
        if dry_run {
            eprintln!("would build function {name}: {reason}");
            built.push(m.dir().join(&f.wasm));
            continue;
        }
        eprintln!(
            "building function {name} ({reason}): {}",
            build.command.join(" ")
        );
        // A program named by a relative path is the manifest's, like the paths it reads:
        // resolved from the manifest's directory (made absolute, since the command runs
        // there too). A bare name is looked up on PATH.
        let dir = m
            .dir()
            .canonicalize()
            .with_context(|| format!("the manifest's directory {}", m.dir().display()))?;
        let program = Path::new(&build.command[0]);
        let program = if program.components().count() > 1 && program.is_relative() {
            dir.join(program)
        } else {
            program.to_owned()
        };
        let stderr = std::io::stderr();
        let out = std::os::fd::AsFd::as_fd(&stderr).try_clone_to_owned()?;
        let status = std::process::Command::new(&program)
            .args(&build.command[1..])
            .current_dir(&dir)
            .stdout(out)
            .status()
            .with_context(|| format!("function {name}: running {}", program.display()))?;
        if !status.success() {
            bail!("function {name}: the build command failed ({status})");
        }
        if !m.dir().join(&f.wasm).is_file() {
            bail!(
                "function {name}: the build command succeeded but did not write {}",
                f.wasm.display()
            );
        }
        built.push(m.dir().join(&f.wasm));
    }
    Ok(built)
}

/// What applying one resource did (or, in a dry run, would do).
#[derive(Debug, Serialize)]
pub struct Applied {
    pub kind: Kind,
    pub name: String,
    pub entry: String,
    #[serde(flatten)]
    pub action: Action,
}

/// Applies the manifest to the server. Stops at the first resource the server refuses,
/// with the manifest entry and line in the error; what was applied before stays.
pub async fn apply(client: &Client, m: &Manifest, dry_run: bool) -> anyhow::Result<Vec<Applied>> {
    // An unreachable server is said once, before any build, not as the first entry's error.
    client.call(Method::GET, "/healthz", None).await?;
    // Builds take seconds: off the async workers, which `sluice up`'s server shares.
    let built = tokio::task::block_in_place(|| build_stale(m, dry_run))?;
    let unbuilt = if dry_run { built } else { Vec::new() };
    let mut applied = Vec::new();
    for d in desired(m, &unbuilt)? {
        let at = |e: anyhow::Error| {
            anyhow::anyhow!(m.error_at(&d.entry, d.span.clone(), format!("{e:#}")))
        };
        let current = client.get_optional(&d.path).await.map_err(at)?;
        let action = decide(d.kind, &d.config, current.as_ref());
        if !dry_run && action != Action::Unchanged {
            write(client, &d).await.map_err(at)?;
        }
        applied.push(Applied {
            kind: d.kind,
            name: d.name,
            entry: d.entry,
            action,
        });
    }
    Ok(applied)
}

async fn write(client: &Client, d: &Desired) -> anyhow::Result<()> {
    if let Some(wasm) = &d.wasm {
        let c = &d.config;
        let mut query = vec![
            format!(
                "memory={}",
                encode(c["memory"].as_str().unwrap_or_default())
            ),
            format!(
                "timeout={}",
                encode(c["timeout"].as_str().unwrap_or_default())
            ),
            format!("concurrency={}", c["concurrency"]),
        ];
        for (k, v) in c["env"].as_object().into_iter().flatten() {
            let v = v.as_str().unwrap_or_default();
            query.push(format!("env={}", encode(&format!("{k}={v}"))));
        }
        let path = format!("{}/versions?{}", d.path, query.join("&"));
        client
            .post_bytes(&path, "application/wasm", wasm.clone())
            .await?;
    } else if let Some((path, body)) = &d.put {
        client.call(Method::PUT, path, Some(body.clone())).await?;
    } else {
        client
            .call(Method::PUT, &d.path, Some(d.config.clone()))
            .await?;
    }
    Ok(())
}

/// A value as shown in a change: compact JSON, shortened when long.
fn show(v: &Value) -> String {
    const MAX: usize = 48;
    let s = v.to_string();
    if s.chars().count() <= MAX {
        s
    } else {
        format!("{}…", s.chars().take(MAX).collect::<String>())
    }
}

/// Prints what was created or updated, one line per resource, then the counts (the JSON
/// output lists every resource).
pub fn print(applied: &[Applied], dry_run: bool, output: Output) {
    let count = |f: fn(&Action) -> bool| applied.iter().filter(|a| f(&a.action)).count();
    let created = count(|a| matches!(a, Action::Create));
    let updated = count(|a| matches!(a, Action::Update { .. }));
    let unchanged = count(|a| matches!(a, Action::Unchanged));
    if output == Output::Json {
        println!(
            "{}",
            json!({"dry_run": dry_run, "changes": applied, "created": created,
                   "updated": updated, "unchanged": unchanged})
        );
        return;
    }
    for a in applied {
        let what = format!("{} {}", a.kind.label(), a.name);
        match &a.action {
            Action::Create => println!("  create     {what}"),
            // Counted below: a manifest re-applied on every save would otherwise bury
            // its one change under every resource it did not touch.
            Action::Unchanged => {}
            Action::Update { fields } => {
                let verb = if a.kind == Kind::Function {
                    "deploy"
                } else {
                    "update"
                };
                let fields: Vec<String> = fields
                    .iter()
                    .map(|f| format!("{} {} → {}", f.field, show(&f.from), show(&f.to)))
                    .collect();
                println!("  {verb:<10} {what}: {}", fields.join(", "));
            }
        }
    }
    if dry_run {
        println!(
            "dry run: {created} to create, {updated} to update, {unchanged} unchanged; nothing was changed"
        );
    } else {
        println!("{created} created, {updated} updated, {unchanged} unchanged");
    }
}

pub async fn run(args: ApplyArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.client)?;
    let m = Manifest::load(&args.file)?;
    let applied = apply(&client, &m, args.dry_run).await?;
    print(&applied, args.dry_run, client.output);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decides_create_update_or_nothing() {
        let view = json!({"name": "q", "created_ms": 5, "retention": "4d", "fifo": false,
                          "stats": {"visible": 3}});
        let cases: &[(&str, Kind, Value, Option<Value>, Action)] = &[
            (
                "absent",
                Kind::Queue,
                json!({"fifo": false}),
                None,
                Action::Create,
            ),
            (
                "same fields; the server's own fields are not compared",
                Kind::Queue,
                json!({"retention": "4d", "fifo": false}),
                Some(view.clone()),
                Action::Unchanged,
            ),
            (
                "a changed field",
                Kind::Queue,
                json!({"retention": "1d", "fifo": false}),
                Some(view.clone()),
                Action::Update {
                    fields: vec![FieldChange {
                        field: "retention".into(),
                        from: json!("4d"),
                        to: json!("1d"),
                    }],
                },
            ),
            (
                "a field the server does not show",
                Kind::Topic,
                json!({"compaction": {"key": "subject"}}),
                Some(json!({"retention": "7d"})),
                Action::Update {
                    fields: vec![FieldChange {
                        field: "compaction".into(),
                        from: Value::Null,
                        to: json!({"key": "subject"}),
                    }],
                },
            ),
            (
                "a subscription's start applies at creation only",
                Kind::Subscription,
                json!({"start": "earliest", "fifo": false}),
                Some(json!({"start": "latest", "fifo": false})),
                Action::Unchanged,
            ),
            (
                "a trigger's configuration is under config; paused is an operation",
                Kind::Trigger,
                json!({"batch_size": 10, "paused": false}),
                Some(json!({"config": {"batch_size": 10, "paused": true}, "stats": {}})),
                Action::Unchanged,
            ),
            (
                "a trigger's batch size changes",
                Kind::Trigger,
                json!({"batch_size": 10}),
                Some(json!({"config": {"batch_size": 1}})),
                Action::Update {
                    fields: vec![FieldChange {
                        field: "batch_size".into(),
                        from: json!(1),
                        to: json!(10),
                    }],
                },
            ),
            (
                "a saga's definition",
                Kind::Saga,
                json!({"steps": [1]}),
                Some(json!({"version": 3, "definition": {"steps": [1]}})),
                Action::Unchanged,
            ),
            (
                "a function's live version has the same component and settings",
                Kind::Function,
                json!({"sha256": "ab", "memory": "64MiB"}),
                Some(json!({"aliases": {"live": 2}, "versions": [
                    {"version": 1, "sha256": "00", "memory": "64MiB"},
                    {"version": 2, "sha256": "ab", "memory": "64MiB"}]})),
                Action::Unchanged,
            ),
            (
                "a function whose live version has another component",
                Kind::Function,
                json!({"sha256": "ab"}),
                Some(json!({"aliases": {"live": 1}, "versions": [
                    {"version": 1, "sha256": "00"}, {"version": 2, "sha256": "ab"}]})),
                Action::Update {
                    fields: vec![FieldChange {
                        field: "sha256".into(),
                        from: json!("00"),
                        to: json!("ab"),
                    }],
                },
            ),
            (
                "a function without a live version",
                Kind::Function,
                json!({"sha256": "ab"}),
                Some(json!({"aliases": {}, "versions": []})),
                Action::Create,
            ),
        ];
        for (what, kind, desired, current, want) in cases {
            assert_eq!(&decide(*kind, desired, current.as_ref()), want, "{what}");
        }
    }

    #[test]
    fn dead_letter_queues_come_before_the_queues_using_them() {
        let m = Manifest::parse(
            Path::new("sluice.toml"),
            r#"
[queues.a]
dead_letter_queue = "b"
[queues.b]
dead_letter_queue = "c"
[queues.c]
[queues.d]
dead_letter_queue = "elsewhere"
[queues.e]
dead_letter_queue = "f"
[queues.f]
dead_letter_queue = "e"
"#
            .to_owned(),
        )
        .unwrap();
        let order: Vec<String> = queue_order(&m).iter().map(|n| n.to_string()).collect();
        let pos = |n: &str| order.iter().position(|o| o == n).unwrap();
        assert_eq!(order.len(), 6, "{order:?}");
        assert!(pos("c") < pos("b") && pos("b") < pos("a"), "{order:?}");
        assert!(order.contains(&"e".to_owned()) && order.contains(&"f".to_owned()));
    }

    #[test]
    fn long_values_are_shortened_on_display() {
        assert_eq!(show(&json!("7d")), "\"7d\"");
        let long = json!({"steps": [{"name": "a".repeat(100)}]});
        let shown = show(&long);
        assert!(
            shown.ends_with('…') && shown.chars().count() == 49,
            "{shown}"
        );
    }
}
